/*
 * cli_stats: `carrier stats`, a snapshot of carrierd's counters.
 *
 *   carrier stats [-c FILE] [--json]
 *
 * Reads the counters straight from shared memory, so it works while the
 * daemon is stopped (SIGSTOP) or wedged.  When the shared object is
 * missing or unreadable (the daemon counts privately because /dev/shm is
 * unavailable) it asks the daemon with the control command `stats` and
 * says so.  Prints groups (connections, messages, queue, spool, dns) and
 * the next hops sorted by queue length, or one JSON object.
 *
 * Exit status: 0 printed, 3 carrierd not running (no counters, no
 * socket), 1 other errors, 2 bad command line.
 */
#include "cli_stats.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "control.h"
#include "counters_ctl.h"
#include "evlog.h"

/* ---- shared with carrier top ------------------------------------------------- */


static bool pid_alive(int32_t pid)
{
	return pid > 0 && (kill((pid_t)pid, 0) == 0 || errno == EPERM);
}

/* Asks the daemon.  Returns a control_client_result, or 1 when the daemon
 * answered with an error or unparseable counters (err says). */
static int load_over_control(const struct carrier_conf *conf, struct counters_shm *snap,
			     int *shared_r, char *err, size_t errlen)
{
	struct control_response resp = { 0 };
	int r = control_request(conf->control_socket, COUNTERS_CTL_COMMAND, &resp, err, errlen);

	if (r == CONTROL_CLIENT_OK && resp.code != CONTROL_CODE_OK) {
		snprintf(err, errlen, "carrierd at %s refused `stats` with %d: %s",
			 conf->control_socket, resp.code, resp.text ? resp.text : "");
		r = 1;
	} else if (r == CONTROL_CLIENT_OK && counters_ctl_parse(&resp, snap, shared_r, err, errlen) < 0) {
		r = 1;
	}
	control_response_clear(&resp);
	return r;
}

int stats_load(const struct carrier_conf *conf, struct counters_shm *snap,
	       struct stats_origin *origin, char *err, size_t errlen)
{
	char shm_err[256], ctl_err[512];
	int a, r;

	memset(origin, 0, sizeof *origin);
	a = counters_attach(conf->shm_name, snap, shm_err, sizeof shm_err);
	if (a == COUNTERS_ATTACH_OK && pid_alive(snap->pid)) {
		origin->source = STATS_FROM_SHM;
		origin->shared = 1;
		return STATS_EXIT_OK;
	}
	if (a == COUNTERS_ATTACH_LAYOUT) {
		snprintf(err, errlen, "%s", shm_err);
		return STATS_EXIT_ERROR;
	}
	r = load_over_control(conf, snap, &origin->shared, ctl_err, sizeof ctl_err);
	if (r == CONTROL_CLIENT_OK) {
		origin->source = STATS_FROM_CONTROL;
		if (!origin->shared)
			snprintf(origin->note, sizeof origin->note,
				 "counters are private: shared memory unavailable; read over the control socket");
		else
			snprintf(origin->note, sizeof origin->note,
				 "cannot read shared memory (%s); read over the control socket", shm_err);
		return STATS_EXIT_OK;
	}
	if (a == COUNTERS_ATTACH_OK) {
		/* The block of a daemon that is gone: still worth showing. */
		counters_attach(conf->shm_name, snap, shm_err, sizeof shm_err);
		origin->source = STATS_FROM_STALE_SHM;
		origin->shared = 1;
		snprintf(origin->note, sizeof origin->note,
			 "carrierd (pid %d) is not running: these are the counters it left in %s",
			 (int)snap->pid, conf->shm_name);
		return STATS_EXIT_OK;
	}
	if (a == COUNTERS_ATTACH_MISSING && r == CONTROL_CLIENT_NOT_RUNNING) {
		snprintf(err, errlen, "%s, and no counters in shared memory %s", ctl_err, conf->shm_name);
		return STATS_EXIT_NOT_RUNNING;
	}
	snprintf(err, errlen, "cannot read the counters: %s; and over the control socket: %s",
		 shm_err, ctl_err);
	return STATS_EXIT_ERROR;
}

const char *stats_fmt_bytes(char *buf, size_t size, long long n)
{
	static const char units[] = "KMGTP";
	double v = (double)n;
	int u = -1;

	if (n < 1024 && n > -1024) {
		snprintf(buf, size, "%lld", n);
		return buf;
	}
	while ((v >= 1024 || v <= -1024) && u < 4) {
		v /= 1024;
		u++;
	}
	snprintf(buf, size, "%.1f%c", v, units[u]);
	return buf;
}

const char *stats_fmt_age(char *buf, size_t size, long long s)
{
	if (s < 0)
		s = 0;
	if (s < 60)
		snprintf(buf, size, "%llds", s);
	else if (s < 3600)
		snprintf(buf, size, "%lldm%02llds", s / 60, s % 60);
	else if (s < 86400)
		snprintf(buf, size, "%lldh%02lldm", s / 3600, s % 3600 / 60);
	else
		snprintf(buf, size, "%lldd%02lldh", s / 86400, s % 86400 / 3600);
	return buf;
}

void stats_print_safe(FILE *out, const char *s, int width)
{
	int n = 0;

	for (; *s && (width <= 0 || n < width); s++, n++)
		fputc(iscntrl((unsigned char)*s) || (unsigned char)*s >= 0x7f ? '?' : *s, out);
	for (; n < width; n++)
		fputc(' ', out);
}

static bool hop_is_empty(const struct counters_hop *h)
{
	for (int f = 0; f < COUNTERS_HOP_N; f++)
		if (f != HOP_LAST_USED && h->f[f] != 0)
			return false;
	return true;
}

struct sort_ctx {
	const struct counters_shm *s;
	enum stats_sort by;
};

static int cmp_i64_desc(int64_t a, int64_t b)
{
	return a < b ? 1 : a > b ? -1 : 0;
}

static int hop_cmp(const struct counters_hop *a, const struct counters_hop *b, enum stats_sort by)
{
	int c = 0;
	int64_t oa = a->f[HOP_OLDEST], ob = b->f[HOP_OLDEST];

	switch (by) {
	case STATS_SORT_QUEUE:
		c = cmp_i64_desc(a->f[HOP_QUEUE_MSGS], b->f[HOP_QUEUE_MSGS]);
		break;
	case STATS_SORT_AGE:    /* oldest arrival first; none last */
		c = (oa > 0) != (ob > 0) ? (oa > 0 ? -1 : 1) : -cmp_i64_desc(oa, ob);
		break;
	case STATS_SORT_FAILURES:
		c = cmp_i64_desc(a->f[HOP_CONN_FAILED], b->f[HOP_CONN_FAILED]);
		if (c == 0)
			c = cmp_i64_desc(a->f[HOP_LAST_FAILURE], b->f[HOP_LAST_FAILURE]);
		break;
	}
	return c ? c : strcmp(a->key, b->key);
}

size_t stats_sorted_hops(const struct counters_shm *s, enum stats_sort by, size_t *idx)
{
	size_t n = 0;

	for (size_t i = 0; i < COUNTERS_HOPS; i++) {
		const struct counters_hop *h = &s->hops[i];

		if (h->state != COUNTERS_HOP_USED)
			continue;
		if (!strcmp(h->key, COUNTERS_HOP_OTHER) && hop_is_empty(h))
			continue;
		idx[n++] = i;
	}
	/* Insertion sort: at most COUNTERS_HOPS rows, no qsort context needed. */
	for (size_t i = 1; i < n; i++) {
		size_t v = idx[i], j = i;

		for (; j > 0 && hop_cmp(&s->hops[v], &s->hops[idx[j - 1]], by) < 0; j--)
			idx[j] = idx[j - 1];
		idx[j] = v;
	}
	return n;
}

/* ---- carrier stats ------------------------------------------------------------- */

struct stats_opts {
	const char *config;
	int json;
};

static void stats_usage(FILE *out)
{
	fprintf(out,
		"usage: carrier stats [-c FILE] [--json]\n"
		"\n"
		"Prints carrierd's counters: connections, messages, queue, spool, DNS, and\n"
		"the next hops by queue length.  Reads shared memory, so it works while the\n"
		"daemon is stopped or wedged; asks the daemon when the counters are private.\n"
		"\n"
		"  -c FILE   configuration file (default: the embedded development one)\n"
		"  --json    print one JSON object\n"
		"\n"
		"Exit status: 0 printed, 3 not running, 1 other errors, 2 bad usage.\n");
}

static int stats_args(int argc, char **argv, struct stats_opts *o)
{
	memset(o, 0, sizeof *o);
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "-c") || !strcmp(argv[i], "--config")) {
			if (i + 1 >= argc) {
				fprintf(stderr, "carrier stats: %s needs a value\n", argv[i]);
				return -1;
			}
			o->config = argv[++i];
		} else if (!strcmp(argv[i], "--json")) {
			o->json = 1;
		} else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
			return 1;
		} else {
			fprintf(stderr, "carrier stats: unknown option '%s'\n", argv[i]);
			return -1;
		}
	}
	return 0;
}

static const char *const groups[][2] = {
	{ "connections", "connections_" },
	{ "messages", "messages_" },
	{ "recipients", "recipients_" },
	{ "bytes", "bytes_" },
	{ "queue", "queue_" },
	{ "spool", "spool_" },
	{ "dns", "dns_" },
};

static const char *group_of(const char *name)
{
	for (size_t g = 0; g < sizeof groups / sizeof groups[0]; g++)
		if (!strncmp(name, groups[g][1], strlen(groups[g][1])))
			return groups[g][0];
	return "other";
}

static double per_commit(const struct counters_shm *s)
{
	return s->v[COUNTER_SPOOL_COMMITS] ?
	       (double)s->v[COUNTER_SPOOL_COMMIT_MSGS] / (double)s->v[COUNTER_SPOOL_COMMITS] : 0.0;
}

static void print_group(FILE *out, const struct counters_shm *s, const char *group)
{
	fprintf(out, "%s\n", group);
	for (int i = 0; i < COUNTERS_N; i++)
		if (!strcmp(group_of(counters_name(i)), group))
			fprintf(out, "  %-28s %" PRId64 "\n", counters_name(i), s->v[i]);
	if (!strcmp(group, "queue")) {
		fprintf(out, "  %-28s %" PRId64 "\n", "queue_messages",
			s->v[COUNTER_QUEUE_ACTIVE_MSGS] + s->v[COUNTER_QUEUE_DEFERRED_MSGS] +
			s->v[COUNTER_QUEUE_HELD_MSGS]);
		fprintf(out, "  %-28s %" PRId64 "\n", "queue_bytes",
			s->v[COUNTER_QUEUE_ACTIVE_BYTES] + s->v[COUNTER_QUEUE_DEFERRED_BYTES] +
			s->v[COUNTER_QUEUE_HELD_BYTES]);
	}
	if (!strcmp(group, "spool"))
		fprintf(out, "  %-28s %.2f\n", "spool_messages_per_commit", per_commit(s));
}

static void print_hops_table(FILE *out, const struct counters_shm *s, long long now)
{
	size_t idx[COUNTERS_HOPS], n = stats_sorted_hops(s, STATS_SORT_QUEUE, idx);
	char b1[32], b2[32], b3[32], b4[32];

	fprintf(out, "next hops (by queue length)\n");
	if (n == 0) {
		fprintf(out, "  none yet\n");
		return;
	}
	fprintf(out, "  %-32s %6s %7s %7s %4s %6s %6s %7s %6s %6s %7s %6s %6s %8s  %s\n", "NEXT HOP",
		"QUEUE", "BYTES", "OLDEST", "ACT", "CONNS", "FAILED", "DELIV", "DEFER", "BOUNCE", "OUT",
		"TLS", "TLSERR", "RETRY", "LAST FAILURE");
	for (size_t k = 0; k < n; k++) {
		const struct counters_hop *h = &s->hops[idx[k]];
		int64_t oldest = h->f[HOP_OLDEST], retry = h->f[HOP_NEXT_RETRY];

		fputs("  ", out);
		stats_print_safe(out, h->key, 32);
		fprintf(out, " %6" PRId64 " %7s %7s %4" PRId64 " %6" PRId64 " %6" PRId64 " %7" PRId64
			" %6" PRId64 " %6" PRId64 " %7s %6" PRId64 " %6" PRId64 " %8s  ",
			h->f[HOP_QUEUE_MSGS], stats_fmt_bytes(b1, sizeof b1, h->f[HOP_QUEUE_BYTES]),
			oldest > 0 ? stats_fmt_age(b2, sizeof b2, now - oldest) : "-",
			h->f[HOP_CONN_ACTIVE], h->f[HOP_CONN_TOTAL], h->f[HOP_CONN_FAILED],
			h->f[HOP_MSG_OUT], h->f[HOP_MSG_DEFERRED], h->f[HOP_MSG_BOUNCED],
			stats_fmt_bytes(b3, sizeof b3, h->f[HOP_BYTES_OUT]),
			h->f[HOP_TLS_SESSIONS], h->f[HOP_TLS_FAILURES],
			retry <= 0 ? "-" : retry <= now ? "now" : stats_fmt_age(b4, sizeof b4, retry - now));
		if (h->reason[0]) {
			stats_print_safe(out, h->reason, 0);
			fprintf(out, " (%s ago)", stats_fmt_age(b1, sizeof b1, now - h->f[HOP_LAST_FAILURE]));
		} else {
			fputs("-", out);
		}
		fputc('\n', out);
	}
}

static void print_table(FILE *out, const struct counters_shm *s, const struct stats_origin *o,
			const struct carrier_conf *conf)
{
	long long now = (long long)time(NULL);
	char up[32];

	if (o->note[0])
		fprintf(out, "note: %s\n", o->note);
	fprintf(out, "carrierd pid %d, up %s, counters %s\n\n", (int)s->pid,
		stats_fmt_age(up, sizeof up, now - s->started),
		o->shared ? conf->shm_name : "private (shared memory unavailable)");
	for (size_t g = 0; g < sizeof groups / sizeof groups[0]; g++) {
		print_group(out, s, groups[g][0]);
		fputc('\n', out);
	}
	print_group(out, s, "other");
	fputc('\n', out);
	print_hops_table(out, s, now);
	if (s->hops_full)
		fprintf(out, "  (table full: later next hops are counted under \"%s\")\n", COUNTERS_HOP_OTHER);
}

static void json_str(FILE *out, const char *s)
{
	size_t n = evlog_json_escape(NULL, 0, s);
	char *buf = malloc(n + 1);

	fputc('"', out);
	if (buf) {
		evlog_json_escape(buf, n + 1, s);
		fputs(buf, out);
		free(buf);
	}
	fputc('"', out);
}

static const char *source_name(enum stats_source src)
{
	return src == STATS_FROM_SHM ? "shared_memory" :
	       src == STATS_FROM_CONTROL ? "control_socket" : "stale_shared_memory";
}

static void print_json(FILE *out, const struct counters_shm *s, const struct stats_origin *o,
		       const struct carrier_conf *conf)
{
	size_t idx[COUNTERS_HOPS], n = stats_sorted_hops(s, STATS_SORT_QUEUE, idx);

	fprintf(out, "{\"source\":\"%s\",\"shared\":%s,\"shm_name\":", source_name(o->source),
		o->shared ? "true" : "false");
	json_str(out, conf->shm_name);
	fputs(",\"note\":", out);
	json_str(out, o->note);
	fprintf(out, ",\"layout\":%d,\"pid\":%d,\"started\":%" PRId64 ",\"counters\":{",
		COUNTERS_LAYOUT, (int)s->pid, s->started);
	for (int i = 0; i < COUNTERS_N; i++)
		fprintf(out, "%s\"%s\":%" PRId64, i ? "," : "", counters_name(i), s->v[i]);
	fprintf(out, "},\"spool_messages_per_commit\":%.3f,\"hops_full\":%s,\"next_hops\":[",
		per_commit(s), s->hops_full ? "true" : "false");
	for (size_t k = 0; k < n; k++) {
		const struct counters_hop *h = &s->hops[idx[k]];

		fputs(k ? ",{\"key\":" : "{\"key\":", out);
		json_str(out, h->key);
		for (int f = 0; f < COUNTERS_HOP_N; f++)
			fprintf(out, ",\"%s\":%" PRId64, counters_hop_field_name(f), h->f[f]);
		fputs(",\"last_failure_reason\":", out);
		json_str(out, h->reason);
		fputc('}', out);
	}
	fputs("]}\n", out);
}

int cli_stats_main(int argc, char **argv)
{
	struct stats_opts o;
	struct carrier_conf *conf;
	struct counters_shm *snap;
	struct stats_origin origin;
	char err[1024];
	int rc = stats_args(argc, argv, &o);

	if (rc) {
		stats_usage(rc > 0 ? stdout : stderr);
		return rc > 0 ? 0 : STATS_EXIT_USAGE;
	}
	if ((conf = cli_load_conf("carrier stats", o.config)) == NULL)
		return STATS_EXIT_ERROR;
	if ((snap = malloc(sizeof *snap)) == NULL) {
		fprintf(stderr, "carrier stats: out of memory\n");
		conf_free(&conf);
		return STATS_EXIT_ERROR;
	}
	rc = stats_load(conf, snap, &origin, err, sizeof err);
	if (rc != STATS_EXIT_OK) {
		fprintf(stderr, "carrier stats: %s\n", err);
		if (o.json) {
			fputs("{\"error\":", stdout);
			json_str(stdout, err);
			fputs("}\n", stdout);
		}
	} else {
		if (origin.note[0] && o.json)
			fprintf(stderr, "carrier stats: %s\n", origin.note);
		if (o.json)
			print_json(stdout, snap, &origin, conf);
		else
			print_table(stdout, snap, &origin, conf);
	}
	fflush(stdout);
	free(snap);
	conf_free(&conf);
	return rc;
}
