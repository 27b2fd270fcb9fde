/*
 * counters_ctl: the `stats` control command and its reader.  See
 * counters_ctl.h for the fields.  Owns nothing; never blocks.
 */
#include "counters_ctl.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void counters_control_stats(void *arg, const struct control_call *call,
			    struct control_reply *rep)
{
	struct counters *c = arg;
	struct counters_shm *snap;
	char key[CONTROL_KEY_MAX];

	if (c == NULL) {
		control_reply_status(rep, CONTROL_CODE_UNAVAILABLE, "counters are not available");
		return;
	}
	snap = malloc(sizeof *snap);
	if (snap == NULL) {
		control_reply_status(rep, CONTROL_CODE_FAILED, "out of memory for a counters snapshot");
		return;
	}
	counters_snapshot(counters_block(c), snap);
	control_reply_add(rep, "layout", "%d", COUNTERS_LAYOUT);
	control_reply_add(rep, "shared", "%s", counters_shared(c) ? "yes" : "no");
	control_reply_add(rep, "name", "%s", counters_shm_name(c));
	control_reply_add(rep, "pid", "%d", (int)snap->pid);
	control_reply_add(rep, "started", "%" PRId64, snap->started);
	control_reply_add(rep, "hops_full", "%u", snap->hops_full);
	for (int i = 0; i < COUNTERS_N; i++)
		control_reply_add(rep, counters_name(i), "%" PRId64, snap->v[i]);
	for (size_t i = 0; i < COUNTERS_HOPS; i++) {
		const struct counters_hop *h = &snap->hops[i];

		if (h->state != COUNTERS_HOP_USED)
			continue;
		control_reply_add(rep, "hop", "%s", h->key);
		for (int f = 0; f < COUNTERS_HOP_N; f++) {
			snprintf(key, sizeof key, "hop.%s", counters_hop_field_name(f));
			control_reply_add(rep, key, "%" PRId64, h->f[f]);
		}
		if (h->reason[0])
			control_reply_add(rep, "hop.last_failure_reason", "%s", h->reason);
	}
	free(snap);
}

static int parse_i64(const char *s, int64_t *v)
{
	char *end;
	long long x;

	errno = 0;
	x = strtoll(s, &end, 10);
	if (errno || end == s || *end)
		return -1;
	*v = x;
	return 0;
}

static int global_index(const char *key)
{
	for (int i = 0; i < COUNTERS_N; i++)
		if (!strcmp(key, counters_name(i)))
			return i;
	return -1;
}

static int hop_field_index(const char *key)
{
	for (int f = 0; f < COUNTERS_HOP_N; f++)
		if (!strcmp(key, counters_hop_field_name(f)))
			return f;
	return -1;
}

int counters_ctl_parse(const struct control_response *resp, struct counters_shm *snap_r,
		       int *shared_r, char *err, size_t errlen)
{
	const char *layout = control_response_get(resp, "layout");
	const char *shared = control_response_get(resp, "shared");
	struct counters_hop *h = NULL;
	size_t n_hops = 0;
	int64_t v;

	memset(snap_r, 0, sizeof *snap_r);
	if (layout == NULL || parse_i64(layout, &v) < 0 || v != COUNTERS_LAYOUT) {
		snprintf(err, errlen, "the daemon's counters have layout %s, this carrier reads layout %d "
			 "(carrier and carrierd are different versions)",
			 layout ? layout : "(none)", COUNTERS_LAYOUT);
		return -1;
	}
	*shared_r = shared != NULL && !strcmp(shared, "yes");
	snap_r->magic = COUNTERS_MAGIC;
	snap_r->layout = COUNTERS_LAYOUT;
	snap_r->n_counters = COUNTERS_N;
	snap_r->n_hops = COUNTERS_HOPS;
	snap_r->n_hop_fields = COUNTERS_HOP_N;
	for (size_t i = 0; i < resp->n_fields; i++) {
		const char *k = resp->fields[i].key, *val = resp->fields[i].value;
		int idx;

		if (!strcmp(k, "hop")) {
			h = n_hops < COUNTERS_HOPS ? &snap_r->hops[n_hops++] : NULL;
			if (h) {
				h->state = COUNTERS_HOP_USED;
				snprintf(h->key, sizeof h->key, "%s", val);
			}
		} else if (!strcmp(k, "hop.last_failure_reason")) {
			if (h)
				snprintf(h->reason, sizeof h->reason, "%s", val);
		} else if (!strncmp(k, "hop.", 4)) {
			if (h && (idx = hop_field_index(k + 4)) >= 0 && parse_i64(val, &v) == 0)
				h->f[idx] = v;
		} else if (!strcmp(k, "pid")) {
			if (parse_i64(val, &v) == 0)
				snap_r->pid = (int32_t)v;
		} else if (!strcmp(k, "started")) {
			if (parse_i64(val, &v) == 0)
				snap_r->started = v;
		} else if (!strcmp(k, "hops_full")) {
			snap_r->hops_full = !strcmp(val, "1");
		} else if ((idx = global_index(k)) >= 0 && parse_i64(val, &v) == 0) {
			snap_r->v[idx] = v;
		}
	}
	return 0;
}
