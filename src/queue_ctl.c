/*
 * queue_ctl: the `queue` control command (see queue_ctl.h for the
 * grammar).  This file: dispatch, authorization, and the reading commands
 * (list, summary, show, due); queue_ctl_act.c has the changing ones,
 * queue_ctl_read.c the reader thread the reading ones run on.
 *
 * Threads: queue_ctl_handle() on the daemon's loop thread.  The reading
 * commands (the qctl_read_fn functions here) run on the reader thread, or
 * inline when there is none (tests); they use nothing of struct queue_ctl
 * but the spool (whose reads are thread-safe) and the routing table
 * reference in their struct qctl_read.
 */
#include <ctype.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "conf.h"
#include "control.h"
#include "queue_ctl.h"
#include "queue_ctl_int.h"
#include "route.h"
#include "spool.h"

/* ---- helpers shared with queue_ctl_act.c -------------------------------- */

bool qctl_qid_valid(const char *s)
{
	if (strlen(s) != SPOOL_QID_LEN)
		return false;
	for (const char *p = s; *p; p++)
		if (!isdigit((unsigned char)*p) && !isupper((unsigned char)*p))
			return false;
	return true;
}

bool qctl_rcpt_pending(const struct spool_rcpt *r)
{
	return r->state == SPOOL_RCPT_QUEUED || r->state == SPOOL_RCPT_DEFERRED;
}

const char *qctl_msg_state(const struct spool_envelope *env)
{
	bool queued = false, deferred = false;

	for (size_t i = 0; i < env->n_rcpts; i++) {
		queued |= env->rcpts[i].state == SPOOL_RCPT_QUEUED;
		deferred |= env->rcpts[i].state == SPOOL_RCPT_DEFERRED;
	}
	if (env->held)
		return "held";
	return deferred ? "deferred" : queued ? "queued" : "done";
}

static const char *rcpt_state(enum spool_rcpt_state s)
{
	switch (s) {
	case SPOOL_RCPT_QUEUED: return "queued";
	case SPOOL_RCPT_DEFERRED: return "deferred";
	case SPOOL_RCPT_DELIVERED: return "delivered";
	case SPOOL_RCPT_FAILED: return "failed";
	}
	return "unknown";
}

static const char *rcpt_domain(const char *addr)
{
	const char *at = strrchr(addr, '@');

	return at ? at + 1 : "";
}

/* A copy of s with tabs and line ends turned into spaces, at most n-1
 * bytes, so one value never splits a tab-separated field. */
static const char *flat(char *buf, size_t n, const char *s)
{
	size_t i = 0;

	for (; s != NULL && s[i] && i + 1 < n; i++)
		buf[i] = (s[i] == '\t' || s[i] == '\r' || s[i] == '\n') ? ' ' : s[i];
	buf[i] = '\0';
	return buf;
}

/* Bytes `s` (at most its first `max`) takes in a reply, escaped. */
static size_t escaped_len(const char *s, size_t max)
{
	size_t n = s ? strlen(s) : 0;

	return control_escape(NULL, 0, s ? s : "", n < max ? n : max);
}

/* The next-hop key for a domain, cached per request (route_lookup is pure
 * but not free). */
const char *qctl_hop(struct qctl_hops *h, struct route_table *rt, const char *domain)
{
	struct route_decision *dec;
	size_t slot;

	for (size_t i = 0; i < h->n; i++)
		if (strcasecmp(h->e[i].domain, domain) == 0)
			return h->e[i].key;
	slot = h->n < QCTL_HOP_CACHE ? h->n++ : h->next++ % QCTL_HOP_CACHE;
	snprintf(h->e[slot].domain, sizeof h->e[slot].domain, "%s", domain);
	dec = rt != NULL && domain[0] ? route_lookup(rt, domain) : NULL;
	snprintf(h->e[slot].key, sizeof h->e[slot].key, "%s",
		 dec && dec->n > 0 ? dec->routes[0].key : "unroutable");
	route_decision_free(&dec);
	return h->e[slot].key;
}

/* ---- list ------------------------------------------------------------------ */

struct qfilter {
	const char *state, *from, *to, *domain, *hop;
	int64_t older;              /* seconds; -1 = any */
};

struct list_walk {
	struct route_table *rt;
	struct control_reply *rep;
	struct qfilter f;
	struct qctl_hops hops;
	int64_t now;
	size_t offset, limit, matched, shown, scanned, fields, bytes;
	const char *after, *qafter;      /* cursors from the request */
	char last[SPOOL_QID_SIZE];       /* last entry shown */
	bool capped, in_quar;            /* page full; listing quarantined */
};

static bool rcpt_matches(struct list_walk *w, const struct spool_rcpt *r)
{
	struct route_table *rt = w->rt;

	if (w->f.to && !strcasestr(r->addr, w->f.to))
		return false;
	if (w->f.domain && strcasecmp(rcpt_domain(r->addr), w->f.domain) != 0)
		return false;
	if (w->f.hop && strcmp(qctl_hop(&w->hops, rt, rcpt_domain(r->addr)), w->f.hop) != 0)
		return false;
	return true;
}

static bool env_matches(struct list_walk *w, const struct spool_envelope *env)
{
	bool any = false, need_rcpt = w->f.to || w->f.domain || w->f.hop;

	if (w->f.state && strcmp(w->f.state, qctl_msg_state(env)) != 0) {
		bool rs = false;

		for (size_t i = 0; i < env->n_rcpts && !rs; i++)
			rs = strcmp(w->f.state, rcpt_state(env->rcpts[i].state)) == 0;
		if (!rs)
			return false;
	}
	if (w->f.from && !strcasestr(env->sender, w->f.from))
		return false;
	if (w->f.older >= 0 && w->now - env->arrival < w->f.older)
		return false;
	for (size_t i = 0; need_rcpt && i < env->n_rcpts && !any; i++)
		any = rcpt_matches(w, &env->rcpts[i]);
	return !need_rcpt || any;
}

static size_t pending_count(const struct spool_envelope *env)
{
	size_t n = 0;

	for (size_t i = 0; i < env->n_rcpts; i++)
		n += qctl_rcpt_pending(&env->rcpts[i]);
	return n;
}

void qctl_add_rcpt(struct control_reply *rep, struct qctl_hops *hops,
		   struct route_table *rt, const struct spool_envelope *env, size_t i)
{
	const struct spool_rcpt *r = &env->rcpts[i];
	char reply[1024];

	control_reply_add(rep, "rcpt", "%s\t%s\t%u\t%lld\t%s\t%s\t%s", env->qid,
			  rcpt_state(r->state), (unsigned)r->attempts, (long long)r->next_attempt,
			  qctl_rcpt_pending(r) ? qctl_hop(hops, rt, rcpt_domain(r->addr)) : "-",
			  r->addr, flat(reply, sizeof reply, r->last_reply));
}

/* Bytes recipient i adds to a reply, escaped. */
static size_t rcpt_cost(struct list_walk *w, const struct spool_rcpt *r)
{
	return 80 + escaped_len(r->addr, SIZE_MAX) + escaped_len(r->last_reply, 1024) +
	       (qctl_rcpt_pending(r) ? strlen(qctl_hop(&w->hops, w->rt, rcpt_domain(r->addr))) : 1);
}

/* Adds one message and as many of its recipients as the reply bounds take
 * (all of them unless it is alone on its page and larger than a page). */
static void list_add(struct list_walk *w, const struct spool_envelope *env)
{
	char sender[1024];
	size_t i;

	control_reply_add(w->rep, "msg", "%s\t%s\t%lld\t%llu\t%s\t%zu\t%zu", env->qid,
			  qctl_msg_state(env), (long long)env->arrival,
			  (unsigned long long)env->size, flat(sender, sizeof sender, env->sender),
			  pending_count(env), env->n_rcpts);
	w->fields++;
	w->bytes += 96 + escaped_len(env->sender, 1024);
	for (i = 0; i < env->n_rcpts; i++) {
		size_t c = rcpt_cost(w, &env->rcpts[i]);

		if (w->fields + 2 > QCTL_FIELDS_BUDGET || w->bytes + c > QCTL_BYTES_BUDGET)
			break;
		qctl_add_rcpt(w->rep, &w->hops, w->rt, env, i);
		w->fields++;
		w->bytes += c;
	}
	if (i < env->n_rcpts)
		control_reply_add(w->rep, "rcpts_truncated", "%s\t%zu\t%zu", env->qid,
				  env->n_rcpts, i);
	w->shown++;
	snprintf(w->last, sizeof w->last, "%s", env->qid);
}

/* Stops the walk at the first match past a full page: the next page
 * starts after the last one shown (next_after), so paging through a large
 * queue reads it once, not once per page. */
static int list_cb(void *arg, const struct spool_envelope *env)
{
	struct list_walk *w = arg;
	size_t cost;

	w->scanned++;
	if (!env_matches(w, env))
		return 0;
	if (w->matched++ < w->offset)
		return 0;
	/* What this message adds once escaped: stay inside the reply bounds. */
	cost = 96 + escaped_len(env->sender, 1024);
	for (size_t i = 0; i < env->n_rcpts; i++)
		cost += rcpt_cost(w, &env->rcpts[i]);
	if (w->shown > 0 &&
	    (w->shown >= w->limit || w->fields + 1 + env->n_rcpts > QCTL_FIELDS_BUDGET ||
	     w->bytes + cost > QCTL_BYTES_BUDGET)) {
		w->matched--;
		w->capped = true;
		return 1;
	}
	list_add(w, env);
	return 0;
}

static int quar_cb(void *arg, const char *qid, const char *reason, int64_t when)
{
	struct list_walk *w = arg;
	char why[1024];

	if (w->qafter != NULL && strcmp(qid, w->qafter) <= 0)
		return 0;
	if (w->matched++ < w->offset)
		return 0;
	if (w->shown >= w->limit || w->fields + 1 > QCTL_FIELDS_BUDGET) {
		w->matched--;
		w->capped = true;
		return 1;
	}
	control_reply_add(w->rep, "quarantined", "%s\t%lld\t%s", qid, (long long)when,
			  flat(why, sizeof why, reason));
	w->shown++;
	w->fields++;
	w->bytes += 100 + strlen(why);
	snprintf(w->last, sizeof w->last, "%s", qid);
	return 0;
}

static int parse_size(const char *v, size_t max, size_t *out)
{
	char *end;
	unsigned long long n = strtoull(v, &end, 10);

	if (*v == '\0' || *end != '\0' || v[0] == '-' || n > max)
		return -1;
	*out = (size_t)n;
	return 0;
}

/* Parses key=value words into the filter; -1 + a reply on a bad one. */
static int parse_filter(const struct control_request *req, struct list_walk *w,
			struct control_reply *rep)
{
	static const char *const states[] = { "queued", "deferred", "held", "done", "delivered",
					      "failed", "quarantined", NULL };

	w->f.older = -1;
	w->limit = QUEUE_CTL_LIST_MAX;
	for (size_t i = 1; i < req->argc; i++) {
		const char *a = req->argv[i], *v = strchr(a, '=');
		size_t klen = v ? (size_t)(v - a) : 0, n = 0;
		bool ok = v != NULL;

		if (v)
			v++;
		if (ok && klen == 5 && strncmp(a, "state", 5) == 0) {
			ok = false;
			for (size_t k = 0; states[k] && !ok; k++)
				ok = strcmp(v, states[k]) == 0;
			w->f.state = v;
		} else if (ok && klen == 4 && strncmp(a, "from", 4) == 0) {
			w->f.from = v;
		} else if (ok && klen == 2 && strncmp(a, "to", 2) == 0) {
			w->f.to = v;
		} else if (ok && klen == 6 && strncmp(a, "domain", 6) == 0) {
			w->f.domain = v;
		} else if (ok && klen == 3 && strncmp(a, "hop", 3) == 0) {
			w->f.hop = v;
		} else if (ok && klen == 5 && strncmp(a, "older", 5) == 0) {
			ok = parse_size(v, (size_t)INT32_MAX * 100, &n) == 0;
			w->f.older = (int64_t)n;
		} else if (ok && klen == 6 && strncmp(a, "offset", 6) == 0) {
			ok = parse_size(v, SIZE_MAX / 2, &w->offset) == 0;
		} else if (ok && klen == 5 && strncmp(a, "after", 5) == 0) {
			ok = qctl_qid_valid(v) && w->qafter == NULL;
			w->after = v;
		} else if (ok && klen == 6 && strncmp(a, "qafter", 6) == 0) {
			/* A quarantined key need not be a qid (a damaged one). */
			ok = *v != '\0' && w->after == NULL;
			w->qafter = v;
		} else if (ok && klen == 5 && strncmp(a, "limit", 5) == 0) {
			ok = parse_size(v, QUEUE_CTL_LIST_MAX, &w->limit) == 0 && w->limit > 0;
		} else {
			ok = false;
		}
		if (!ok) {
			control_reply_status(rep, 400, "queue list: bad filter \"%s\" (state=queued|deferred|held|done|delivered|failed|quarantined, from=, to=, domain=, hop=, older=SECONDS, after=QID or qafter=QID, offset=N, limit=1..%d)",
					     a, QUEUE_CTL_LIST_MAX);
			return -1;
		}
	}
	return 0;
}

static void cmd_list(struct qctl_read *r, struct control_reply *rep)
{
	struct list_walk *w = calloc(1, sizeof *w);
	char err[512];
	bool quar_only, with_quar;
	int rc = 0;

	if (w == NULL) {
		control_reply_status(rep, 500, "out of memory");
		return;
	}
	w->rt = r->rt;
	w->rep = rep;
	w->now = (int64_t)time(NULL);
	if (parse_filter(r->call->req, w, rep) < 0)
		goto out;
	quar_only = w->f.state && strcmp(w->f.state, "quarantined") == 0;
	with_quar = !w->f.from && !w->f.to && !w->f.domain && !w->f.hop && w->f.older < 0 &&
		    (w->f.state == NULL || quar_only);
	if (!quar_only && w->qafter == NULL)
		rc = qctl_walk(r, w->after, list_cb, w, err, sizeof err);
	if (rc == 0 && with_quar && !w->capped) {
		w->in_quar = true;
		rc = spool_foreach_quarantined(r->q->spool, quar_cb, w, err, sizeof err) < 0 ? -1 : 0;
	}
	if (rc < 0) {
		control_reply_status(rep, rc == QCTL_CANCELLED ? 503 : 500, "%s", err);
		goto out;
	}
	control_reply_add(rep, "matched", "%zu", w->matched);
	control_reply_add(rep, "shown", "%zu", w->shown);
	control_reply_add(rep, "scanned", "%zu", w->scanned);
	if (w->capped) {
		/* The walk stopped at the page's end: go on after its last
		 * entry (next_offset for a client that pages by count). */
		control_reply_add(rep, "next_offset", "%zu", w->offset + w->shown);
		control_reply_add(rep, w->in_quar ? "next_qafter" : "next_after", "%s", w->last);
	}
out:
	free(w);
}

/* ---- summary --------------------------------------------------------------- */

/* qshape's buckets, in minutes: a message of age a goes to the first
 * bucket with a <= limit, else the last. */
static const int64_t bucket_min[QCTL_BUCKETS - 1] = { 5, 10, 20, 40, 80, 160, 320, 640, 1280 };

struct hop_row {
	char key[ROUTE_KEY_MAX];
	size_t total;
	size_t b[QCTL_BUCKETS];
};

struct summary_walk {
	struct route_table *rt;
	struct qctl_hops hops;
	struct hop_row *rows;
	size_t n, cap, scanned, held_msgs, held_rcpts;
	int64_t now;
	bool oom;
};

static struct hop_row *row_for_other(struct summary_walk *s);

static struct hop_row *row_for(struct summary_walk *s, const char *key)
{
	for (size_t i = 0; i < s->n; i++)
		if (strcmp(s->rows[i].key, key) == 0)
			return &s->rows[i];
	if (s->n == QCTL_HOPS_MAX)
		return row_for_other(s);
	if (s->n == s->cap) {
		size_t ncap = s->cap ? s->cap * 2 : 16;
		struct hop_row *nr = realloc(s->rows, ncap * sizeof *nr);

		if (nr == NULL) {
			s->oom = true;
			return NULL;
		}
		s->rows = nr;
		s->cap = ncap;
	}
	memset(&s->rows[s->n], 0, sizeof s->rows[0]);
	snprintf(s->rows[s->n].key, sizeof s->rows[0].key, "%s", key);
	return &s->rows[s->n++];
}

static struct hop_row *row_for_other(struct summary_walk *s)
{
	/* Past QCTL_HOPS_MAX next hops the rest are counted in the last row. */
	snprintf(s->rows[s->n - 1].key, sizeof s->rows[0].key, "(other next hops)");
	return &s->rows[s->n - 1];
}

static int summary_cb(void *arg, const struct spool_envelope *env)
{
	struct summary_walk *s = arg;
	int64_t age = (s->now - env->arrival) / 60;
	size_t b = 0;

	s->scanned++;
	while (b < QCTL_BUCKETS - 1 && age > bucket_min[b])
		b++;
	if (env->held) {
		s->held_msgs++;
		s->held_rcpts += pending_count(env);
		return 0;
	}
	for (size_t i = 0; i < env->n_rcpts; i++) {
		struct hop_row *r;

		if (!qctl_rcpt_pending(&env->rcpts[i]))
			continue;
		r = row_for(s, qctl_hop(&s->hops, s->rt, rcpt_domain(env->rcpts[i].addr)));
		if (r == NULL)
			return 1;
		r->total++;
		r->b[b]++;
	}
	return 0;
}

static int row_cmp(const void *a, const void *b)
{
	const struct hop_row *x = a, *y = b;

	if (x->total != y->total)
		return x->total < y->total ? 1 : -1;
	return strcmp(x->key, y->key);
}

static void add_row(struct control_reply *rep, const char *field, const struct hop_row *r)
{
	const size_t *b = r->b;

	control_reply_add(rep, field, "%s\t%zu\t%zu\t%zu\t%zu\t%zu\t%zu\t%zu\t%zu\t%zu\t%zu\t%zu",
			  r->key, r->total, b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9]);
}

/* Reads the whole queue: on the reader thread that takes as long as the
 * queue is long, with no bound, while the loop goes on serving. */
static void cmd_summary(struct qctl_read *r, struct control_reply *rep)
{
	struct summary_walk *s = calloc(1, sizeof *s);
	struct hop_row total = { .key = "TOTAL" };
	char err[512];
	int rc;

	if (s == NULL) {
		control_reply_status(rep, 500, "out of memory");
		return;
	}
	if (r->call->req->argc != 1) {
		control_reply_status(rep, 400, "usage: queue summary");
		goto out;
	}
	s->rt = r->rt;
	s->now = (int64_t)time(NULL);
	rc = qctl_walk(r, NULL, summary_cb, s, err, sizeof err);
	if (rc < 0 || s->oom) {
		control_reply_status(rep, rc == QCTL_CANCELLED ? 503 : 500, "%s",
				     s->oom ? "out of memory" : err);
		goto out;
	}
	qsort(s->rows, s->n, sizeof *s->rows, row_cmp);
	for (size_t i = 0; i < s->n; i++) {
		total.total += s->rows[i].total;
		for (size_t k = 0; k < QCTL_BUCKETS; k++)
			total.b[k] += s->rows[i].b[k];
	}
	add_row(rep, "total", &total);
	for (size_t i = 0; i < s->n; i++)
		add_row(rep, "hop", &s->rows[i]);
	control_reply_add(rep, "held", "%zu\t%zu", s->held_msgs, s->held_rcpts);
	control_reply_add(rep, "scanned", "%zu", s->scanned);
out:
	free(s->rows);
	free(s);
}

/* ---- show ------------------------------------------------------------------ */

struct quar_find {
	const char *qid;
	char reason[512];
	int64_t when;
	bool found;
};

static int quar_find_cb(void *arg, const char *qid, const char *reason, int64_t when)
{
	struct quar_find *f = arg;

	if (strcmp(qid, f->qid) != 0)
		return 0;
	snprintf(f->reason, sizeof f->reason, "%s", reason);
	f->when = when;
	f->found = true;
	return 1;
}

/* Adds the message text as "header" lines then, with `body`, "body"
 * lines, each part bounded. */
static void add_text(struct spool *sp, const struct spool_envelope *env, bool body,
		     struct control_reply *rep)
{
	struct spool_body *b = NULL;
	size_t max = body ? QCTL_HEADER_MAX + QCTL_BODY_MAX : QCTL_HEADER_MAX, len = 0;
	size_t hbytes = 0, bbytes = 0, fields = 0;
	char *buf, err[512];
	bool in_body = false, cut = false;

	if (spool_body_open(sp, env->qid, &b, err, sizeof err) != 0) {
		control_reply_add(rep, "text_error", "%s", err);
		return;
	}
	if ((buf = malloc(max + 1)) == NULL) {
		spool_body_close(&b);
		return;
	}
	while (len < max) {
		ssize_t r = spool_body_read(b, buf + len, max - len);

		if (r <= 0)
			break;
		len += (size_t)r;
	}
	spool_body_close(&b);
	buf[len] = '\0';
	for (char *p = buf, *nl; p < buf + len && !cut; p = nl + 1) {
		size_t n, e;

		nl = memchr(p, '\n', (size_t)(buf + len - p));
		if (nl == NULL)
			nl = buf + len;
		n = (size_t)(nl - p);
		if (n > 0 && p[n - 1] == '\r')
			n--;
		if (n > QCTL_LINE_MAX)
			n = QCTL_LINE_MAX;
		if (!in_body && n == 0) {
			in_body = true;
			if (!body)
				break;
			continue;
		}
		e = control_escape(NULL, 0, p, n) + 8;
		if (++fields > QCTL_TEXT_FIELDS ||
		    (in_body ? bbytes : hbytes) + e > (in_body ? QCTL_BODY_MAX : QCTL_HEADER_MAX)) {
			cut = true;
			break;
		}
		*(in_body ? &bbytes : &hbytes) += e;
		control_reply_add(rep, in_body ? "body" : "header", "%.*s", (int)n, p);
	}
	if (cut || (body && len < env->size && len == max))
		control_reply_add(rep, "text_truncated", "shown up to %zu of %llu bytes", len,
				  (unsigned long long)env->size);
	free(buf);
}

static void cmd_show(struct qctl_read *r, struct control_reply *rep)
{
	const struct control_request *req = r->call->req;
	struct spool *sp = r->q->spool;
	struct spool_envelope *env = NULL;
	struct qctl_hops *hops;
	char err[512], s[1024];
	size_t i, used = 0;
	int rc;

	if (req->argc < 2 || req->argc > 3 || !qctl_qid_valid(req->argv[1]) ||
	    (req->argc == 3 && strcmp(req->argv[2], "body") != 0)) {
		control_reply_status(rep, 400, "usage: queue show QID [body]");
		return;
	}
	rc = spool_load(sp, req->argv[1], &env, err, sizeof err);
	if (rc == 1) {
		struct quar_find f = { .qid = req->argv[1] };

		if (spool_foreach_quarantined(sp, quar_find_cb, &f, err, sizeof err) >= 0 &&
		    f.found) {
			control_reply_add(rep, "qid", "%s", f.qid);
			control_reply_add(rep, "state", "quarantined");
			control_reply_add(rep, "quarantined", "%lld", (long long)f.when);
			control_reply_add(rep, "reason", "%s", f.reason);
			return;
		}
		control_reply_status(rep, 500, "no message %s in the queue (delivered, deleted or never queued: try `carrier track %s`)",
				     req->argv[1], req->argv[1]);
		return;
	}
	if (rc < 0) {
		control_reply_status(rep, 500, "%s", err);
		return;
	}
	control_reply_add(rep, "qid", "%s", env->qid);
	control_reply_add(rep, "state", "%s", qctl_msg_state(env));
	control_reply_add(rep, "sender", "%s", flat(s, sizeof s, env->sender));
	control_reply_add(rep, "arrival", "%lld", (long long)env->arrival);
	control_reply_add(rep, "size", "%llu", (unsigned long long)env->size);
	control_reply_add(rep, "client", "%s", flat(s, sizeof s, env->client_addr));
	control_reply_add(rep, "helo", "%s", flat(s, sizeof s, env->client_helo));
	if (env->envid)
		control_reply_add(rep, "envid", "%s", flat(s, sizeof s, env->envid));
	control_reply_add(rep, "ret", "%s", env->dsn_ret == SPOOL_RET_FULL ? "full" :
			  env->dsn_ret == SPOOL_RET_HDRS ? "hdrs" : "unset");
	control_reply_add(rep, "body_type", "%s", env->body_type == SPOOL_BODY_8BITMIME ? "8bitmime" :
			  env->body_type == SPOOL_BODY_BINARYMIME ? "binarymime" : "7bit");
	if (env->smtputf8)
		control_reply_add(rep, "smtputf8", "yes");
	hops = calloc(1, sizeof *hops);
	for (i = 0; hops != NULL && i < env->n_rcpts && i < QCTL_SHOW_RCPTS; i++) {
		used += 160 + escaped_len(env->rcpts[i].addr, SIZE_MAX) +
			escaped_len(env->rcpts[i].last_reply, 1024);
		if (used > QCTL_RCPT_BYTES)
			break;
		qctl_add_rcpt(rep, hops, r->rt, env, i);
	}
	if (i < env->n_rcpts)
		control_reply_add(rep, "rcpts_truncated", "%zu recipients, %zu shown (all are in `carrier queue list`)",
				  env->n_rcpts, i);
	free(hops);
	add_text(sp, env, req->argc == 3, rep);
	spool_envelope_free(&env);
}

/* ---- due: progress of a flush --------------------------------------------- */

struct due_walk {
	int64_t now;
	size_t due, pending, held, scanned;
};

static int due_cb(void *arg, const struct spool_envelope *env)
{
	struct due_walk *w = arg;

	w->scanned++;
	for (size_t i = 0; i < env->n_rcpts; i++) {
		const struct spool_rcpt *r = &env->rcpts[i];

		if (!qctl_rcpt_pending(r))
			continue;
		if (env->held) {
			w->held++;
			continue;
		}
		w->pending++;
		w->due += r->state == SPOOL_RCPT_QUEUED || r->next_attempt <= w->now;
	}
	return 0;
}

static void cmd_due(struct qctl_read *r, struct control_reply *rep)
{
	struct due_walk w = { .now = (int64_t)time(NULL) };
	char err[512];
	int rc = qctl_walk(r, NULL, due_cb, &w, err, sizeof err);

	if (rc < 0) {
		control_reply_status(rep, rc == QCTL_CANCELLED ? 503 : 500, "%s", err);
		return;
	}
	control_reply_add(rep, "due", "%zu", w.due);
	control_reply_add(rep, "pending", "%zu", w.pending);
	control_reply_add(rep, "held", "%zu", w.held);
}

/* ---- dispatch -------------------------------------------------------------- */

static const struct {
	const char *name;
	qctl_read_fn *read;         /* a reading command, or */
	void (*change)(struct queue_ctl *, const struct control_call *, struct control_reply *);
} subcommands[] = {
	{ "list", cmd_list, NULL },
	{ "summary", cmd_summary, NULL },
	{ "show", cmd_show, NULL },
	{ "due", cmd_due, NULL },
	{ "hold", NULL, qctl_cmd_hold },
	{ "release", NULL, qctl_cmd_release },
	{ "delete", NULL, qctl_cmd_delete },
	{ "retry", NULL, qctl_cmd_retry },
	{ "flush", NULL, qctl_cmd_flush },
	{ "bounce", NULL, qctl_cmd_bounce },
};

void queue_ctl_handle(void *arg, const struct control_call *call,
		      struct control_reply *rep)
{
	struct queue_ctl *q = arg;
	const struct control_request *req = call->req;
	const char *sub = req->argc > 0 ? req->argv[0] : "list";

	for (size_t i = 0; i < sizeof subcommands / sizeof subcommands[0]; i++) {
		if (strcmp(sub, subcommands[i].name) != 0)
			continue;
		if (subcommands[i].read != NULL) {
			qctl_read_submit(q, subcommands[i].read, call, rep);
			return;
		}
		if (call->uid != 0 && call->uid != q->admin_uid) {
			control_reply_status(rep, 403, "queue %s changes the queue: only root and the daemon's user (uid %u) may; uid %u may only read (queue list, summary, show)",
					     sub, (unsigned)q->admin_uid, (unsigned)call->uid);
			return;
		}
		subcommands[i].change(q, call, rep);
		return;
	}
	control_reply_status(rep, 400, "unknown queue command \"%s\" (list, summary, show, due, hold, release, delete, retry, flush, bounce)",
			     sub);
}
