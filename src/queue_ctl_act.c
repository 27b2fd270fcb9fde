/*
 * queue_ctl_act: the `queue` subcommands that change the queue: hold,
 * release, delete, retry, flush, bounce.  The caller (queue_ctl.c) has
 * checked that the peer may change the queue.  Every change goes through
 * spool_admin() (one transaction per request), is one event and one
 * tracking record per message with the acting uid.
 *
 * Threads: the daemon's loop thread only.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "conf.h"
#include "control.h"
#include "dsn.h"
#include "evlog.h"
#include "queue_ctl.h"
#include "queue_ctl_int.h"
#include "spool.h"
#include "track.h"

#define BOUNCE_REASON "bounced by administrator"
/* More qids than this in one change and the daemon is kicked once for the
 * whole queue rather than per message. */
#define KICK_EACH_MAX 100

typedef char qid_t[SPOOL_QID_SIZE];

struct collect {
	enum spool_admin_op op;
	const char *domain;         /* retry domain=D */
	qid_t *qids;
	size_t n, cap;
	bool more, oom;
};

static bool any_pending(const struct spool_envelope *env, const char *domain)
{
	for (size_t i = 0; i < env->n_rcpts; i++) {
		const char *at = strrchr(env->rcpts[i].addr, '@');

		if (!qctl_rcpt_pending(&env->rcpts[i]))
			continue;
		if (domain == NULL || (at && strcasecmp(at + 1, domain) == 0))
			return true;
	}
	return false;
}

static bool needs_retry(const struct spool_envelope *env, const char *domain)
{
	if (env->held)
		return false;
	for (size_t i = 0; i < env->n_rcpts; i++)
		if (qctl_rcpt_pending(&env->rcpts[i]) && env->rcpts[i].next_attempt != 0)
			return any_pending(env, domain);
	return false;
}

static int collect_cb(void *arg, const struct spool_envelope *env)
{
	struct collect *c = arg;
	bool want = false;

	switch (c->op) {
	case SPOOL_ADMIN_HOLD: want = !env->held && any_pending(env, NULL); break;
	case SPOOL_ADMIN_RELEASE: want = env->held; break;
	case SPOOL_ADMIN_RETRY: want = needs_retry(env, c->domain); break;
	default: break;
	}
	if (!want)
		return 0;
	if (c->n == QUEUE_CTL_BATCH_MAX) {
		c->more = true;
		return 1;
	}
	if (c->n == c->cap) {
		size_t ncap = c->cap ? c->cap * 2 : 64;
		qid_t *nq = realloc(c->qids, ncap * sizeof *nq);

		if (nq == NULL) {
			c->oom = true;
			return 1;
		}
		c->qids = nq;
		c->cap = ncap;
	}
	memcpy(c->qids[c->n++], env->qid, SPOOL_QID_SIZE);
	return 0;
}

/* Fills c from the request's words after the subcommand: QIDs, or `all`
 * (and for retry `domain=D`) when allowed.  -1 + a reply on bad input. */
static int gather(struct queue_ctl *q, const struct control_request *req, bool allow_all,
		  struct collect *c, struct control_reply *rep, const char *usage)
{
	char err[512];
	bool all = req->argc == 2 && strcmp(req->argv[1], "all") == 0;

	if (allow_all && req->argc == 2 && c->op == SPOOL_ADMIN_RETRY &&
	    strncmp(req->argv[1], "domain=", 7) == 0 && req->argv[1][7] != '\0') {
		c->domain = req->argv[1] + 7;
		all = true;
	}
	if (req->argc < 2 || (all && !allow_all)) {
		control_reply_status(rep, 400, "usage: %s", usage);
		return -1;
	}
	if (all) {
		if (spool_foreach(q->spool, collect_cb, c, err, sizeof err) < 0 || c->oom) {
			control_reply_status(rep, 500, "%s", c->oom ? "out of memory" : err);
			return -1;
		}
		return 0;
	}
	c->qids = calloc(req->argc - 1, sizeof *c->qids);
	if (c->qids == NULL) {
		control_reply_status(rep, 500, "out of memory");
		return -1;
	}
	for (size_t i = 1; i < req->argc; i++) {
		if (!qctl_qid_valid(req->argv[i])) {
			control_reply_status(rep, 400, "\"%s\" is not a queue ID (16 characters 0-9 A-Z, as `carrier queue` lists them)",
					     req->argv[i]);
			return -1;
		}
		memcpy(c->qids[c->n++], req->argv[i], SPOOL_QID_SIZE);
	}
	return 0;
}

static const char *result_name(int r)
{
	switch (r) {
	case SPOOL_ADMIN_DONE: return "changed";
	case SPOOL_ADMIN_ABSENT: return "absent";
	case SPOOL_ADMIN_NOOP: return "unchanged";
	case SPOOL_ADMIN_DAMAGED: return "damaged (quarantined)";
	}
	return "?";
}

static void record(struct queue_ctl *q, enum spool_admin_op op, const char *qid, uid_t uid)
{
	struct track *t = q->track ? *q->track : NULL;

	switch (op) {
	case SPOOL_ADMIN_HOLD: track_held(t, qid, uid); break;
	case SPOOL_ADMIN_RELEASE: track_released(t, qid, uid); break;
	case SPOOL_ADMIN_DELETE: track_deleted(t, qid, uid); break;
	case SPOOL_ADMIN_RETRY: track_retry(t, qid, uid); break;
	case SPOOL_ADMIN_FAIL: break;
	}
}

static const char *op_name(enum spool_admin_op op)
{
	static const char *const names[] = { "hold", "release", "retry", "bounce", "delete" };

	return names[op];
}

/* Applies c->op to the collected qids, reports, logs, tracks and kicks. */
static void apply(struct queue_ctl *q, const struct control_call *call, struct collect *c,
		  bool per_qid, struct control_reply *rep)
{
	int *res = calloc(c->n ? c->n : 1, sizeof *res);
	const char **ids = calloc(c->n ? c->n : 1, sizeof *ids);
	size_t count[4] = { 0 };
	const char *first = NULL;
	char err[512];
	int n;

	if (res == NULL || ids == NULL) {
		control_reply_status(rep, 500, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < c->n; i++)
		ids[i] = c->qids[i];
	n = c->n ? spool_admin(q->spool, c->op, ids, c->n, NULL, res, err, sizeof err) : 0;
	if (n < 0) {
		evlog_emit(q->log, EV_QUEUE_ADMIN_FAILED, EVF_S("action", op_name(c->op)),
			   EVF_I("uid", call->uid), EVF_S("reason", err));
		control_reply_status(rep, 500, "queue %s: %s", op_name(c->op), err);
		goto out;
	}
	for (size_t i = 0; i < c->n; i++) {
		count[res[i] & 3]++;
		if (per_qid)
			control_reply_add(rep, "result", "%s\t%s", ids[i], result_name(res[i]));
		if (res[i] != SPOOL_ADMIN_DONE)
			continue;
		first = first ? first : ids[i];
		record(q, c->op, ids[i], call->uid);
		if ((c->op == SPOOL_ADMIN_RETRY || c->op == SPOOL_ADMIN_RELEASE) &&
		    q->kick && n <= KICK_EACH_MAX)
			q->kick(q->kick_arg, ids[i]);
	}
	if ((c->op == SPOOL_ADMIN_RETRY || c->op == SPOOL_ADMIN_RELEASE) && q->kick &&
	    n > KICK_EACH_MAX)
		q->kick(q->kick_arg, NULL);
	if (n > 0) {
		static const enum evlog_id ev[] = {
			[SPOOL_ADMIN_HOLD] = EV_QUEUE_HELD, [SPOOL_ADMIN_RELEASE] = EV_QUEUE_RELEASED,
			[SPOOL_ADMIN_RETRY] = EV_QUEUE_RETRY, [SPOOL_ADMIN_FAIL] = EV_QUEUE_BOUNCED,
			[SPOOL_ADMIN_DELETE] = EV_QUEUE_DELETED,
		};

		evlog_emit(q->log, ev[c->op], EVF_I("count", n), EVF_I("uid", call->uid),
			   EVF_S("qid", first));
	}
	control_reply_add(rep, "changed", "%zu", count[SPOOL_ADMIN_DONE]);
	control_reply_add(rep, "absent", "%zu", count[SPOOL_ADMIN_ABSENT]);
	control_reply_add(rep, "unchanged", "%zu", count[SPOOL_ADMIN_NOOP]);
	if (count[SPOOL_ADMIN_DAMAGED])
		control_reply_add(rep, "damaged", "%zu", count[SPOOL_ADMIN_DAMAGED]);
	if (c->more)
		control_reply_add(rep, "more", "%d messages changed per request: repeat for the rest",
				  QUEUE_CTL_BATCH_MAX);
	if (per_qid && count[SPOOL_ADMIN_ABSENT] == c->n && c->n > 0)
		control_reply_status(rep, 500, "no such message in the queue: %s", ids[0]);
out:
	free(res);
	free(ids);
	free(c->qids);
}

static void simple(struct queue_ctl *q, const struct control_call *call,
		   struct control_reply *rep, enum spool_admin_op op, bool allow_all,
		   const char *usage)
{
	struct collect c = { .op = op };

	if (gather(q, call->req, allow_all, &c, rep, usage) < 0) {
		free(c.qids);
		return;
	}
	apply(q, call, &c, c.domain == NULL && strcmp(call->req->argv[1], "all") != 0, rep);
}

void qctl_cmd_hold(struct queue_ctl *q, const struct control_call *call,
		   struct control_reply *rep)
{
	simple(q, call, rep, SPOOL_ADMIN_HOLD, true, "queue hold QID...|all");
}

void qctl_cmd_release(struct queue_ctl *q, const struct control_call *call,
		      struct control_reply *rep)
{
	simple(q, call, rep, SPOOL_ADMIN_RELEASE, true, "queue release QID...|all");
}

void qctl_cmd_delete(struct queue_ctl *q, const struct control_call *call,
		     struct control_reply *rep)
{
	simple(q, call, rep, SPOOL_ADMIN_DELETE, false, "queue delete QID...");
}

void qctl_cmd_retry(struct queue_ctl *q, const struct control_call *call,
		    struct control_reply *rep)
{
	simple(q, call, rep, SPOOL_ADMIN_RETRY, true, "queue retry QID...|all|domain=D");
}

void qctl_cmd_flush(struct queue_ctl *q, const struct control_call *call,
		    struct control_reply *rep)
{
	struct collect c = { .op = SPOOL_ADMIN_RETRY };
	char err[512];

	if (call->req->argc != 1) {
		control_reply_status(rep, 400, "usage: queue flush");
		return;
	}
	if (spool_foreach(q->spool, collect_cb, &c, err, sizeof err) < 0 || c.oom) {
		control_reply_status(rep, 500, "%s", c.oom ? "out of memory" : err);
		free(c.qids);
		return;
	}
	apply(q, call, &c, false, rep);
	/* Recipients never tried are due already: look at the whole queue. */
	if (q->kick)
		q->kick(q->kick_arg, NULL);
}

/* ---- bounce ----------------------------------------------------------------- */

/* Reads at most `max` bytes of the body (NULL on failure: the report
 * goes without the original). */
static char *read_original(struct queue_ctl *q, const char *qid, size_t max, size_t *len_r)
{
	struct spool_body *b = NULL;
	char *buf, err[256];
	size_t len = 0;

	*len_r = 0;
	if (spool_body_open(q->spool, qid, &b, err, sizeof err) != 0)
		return NULL;
	if (max > spool_body_size(b))
		max = (size_t)spool_body_size(b);
	if ((buf = malloc(max + 1)) != NULL) {
		while (len < max) {
			ssize_t r = spool_body_read(b, buf + len, max - len);

			if (r <= 0)
				break;
			len += (size_t)r;
		}
		buf[len] = '\0';
	}
	spool_body_close(&b);
	*len_r = len;
	return buf;
}

/* Builds and commits the failure report for the pending recipients of
 * env that asked for one.  0 (also when none is due), -1 + err. */
static int send_report(struct queue_ctl *q, const struct spool_envelope *env,
		       char dsn_qid[SPOOL_QID_SIZE], char *err, size_t errlen)
{
	const struct carrier_conf *conf = *q->conf;
	struct dsn_rcpt *dr = calloc(env->n_rcpts, sizeof *dr);
	struct dsn_msg dm = { .kind = DSN_FAILURE };
	struct spool_msg *msg = NULL;
	char host[256], mid[SPOOL_QID_SIZE + 300], *orig = NULL, *text = NULL;
	size_t n = 0, olen = 0, tlen = 0;
	bool dbl;
	const char *to = dsn_recipient(env->sender, conf->double_bounce_to, &dbl);
	int rc = -1;

	dsn_qid[0] = '\0';
	if (dr == NULL) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	for (size_t i = 0; i < env->n_rcpts; i++) {
		const struct spool_rcpt *r = &env->rcpts[i];

		if (!qctl_rcpt_pending(r) || !dsn_wanted(DSN_FAILURE, r->notify))
			continue;
		dr[n++] = (struct dsn_rcpt){ .addr = r->addr, .orcpt = r->orcpt, .status = "5.0.0",
					     .diagnostic = BOUNCE_REASON, .last_attempt = 0 };
	}
	if (n == 0 || to == NULL) {
		rc = 0;
		goto out;
	}
	if (conf->hostname[0])
		snprintf(host, sizeof host, "%s", conf->hostname);
	else if (gethostname(host, sizeof host) < 0)
		snprintf(host, sizeof host, "localhost");
	host[sizeof host - 1] = '\0';
	orig = read_original(q, env->qid, DSN_FULL_MAX, &olen);
	if ((msg = spool_msg_new(q->spool, err, errlen)) == NULL)
		goto out;
	snprintf(mid, sizeof mid, "%s.bounce@%s", spool_msg_qid(msg), host);
	dm.reporting_mta = host;
	dm.qid = env->qid;
	dm.message_id = mid;
	dm.to = to;
	dm.envid = env->envid;
	dm.ret = env->dsn_ret == SPOOL_RET_HDRS || env->size > DSN_FULL_MAX ||
		 env->body_type == SPOOL_BODY_BINARYMIME ? SPOOL_RET_HDRS : SPOOL_RET_FULL;
	dm.arrival = env->arrival;
	dm.now = (int64_t)time(NULL);
	dm.original = orig;
	dm.original_len = olen;
	dm.original_size = env->size;
	if (dsn_build(&dm, dr, n, &text, &tlen, err, errlen) < 0)
		goto out;
	spool_msg_set_arrival(msg, dm.now);
	if (spool_msg_set_sender(msg, "") < 0 || spool_msg_set_client(msg, "", host) < 0 ||
	    spool_msg_add_rcpt(msg, to, 0, NULL) < 0) {
		snprintf(err, errlen, "cannot build the report's envelope");
		goto out;
	}
	if (spool_msg_append(msg, text, tlen, err, errlen) < 0 ||
	    spool_commit(q->spool, &msg, dsn_qid, err, errlen) < 0)
		goto out;
	rc = 0;
out:
	spool_msg_abort(&msg);
	free(orig);
	free(text);
	free(dr);
	return rc;
}

void qctl_cmd_bounce(struct queue_ctl *q, const struct control_call *call,
		     struct control_reply *rep)
{
	const struct control_request *req = call->req;
	struct spool_envelope *env = NULL;
	struct track *t = q->track ? *q->track : NULL;
	char err[512], dsn_qid[SPOOL_QID_SIZE];
	const char *ids[1];
	size_t n_pending = 0;
	int rc;

	if (req->argc != 2 || !qctl_qid_valid(req->argv[1])) {
		control_reply_status(rep, 400, "usage: queue bounce QID");
		return;
	}
	rc = spool_load(q->spool, req->argv[1], &env, err, sizeof err);
	if (rc != 0) {
		control_reply_status(rep, 500, "%s", rc == 1 ? "no such message in the queue" : err);
		return;
	}
	for (size_t i = 0; i < env->n_rcpts; i++)
		n_pending += qctl_rcpt_pending(&env->rcpts[i]);
	if (n_pending == 0) {
		control_reply_status(rep, 500, "%s has no pending recipient to bounce", env->qid);
		goto out;
	}
	/* The report first (durable), then the recipients' failure and the
	 * removal, as the delivery runner orders them. */
	ids[0] = env->qid;
	if (send_report(q, env, dsn_qid, err, sizeof err) < 0 ||
	    spool_admin(q->spool, SPOOL_ADMIN_FAIL, ids, 1, BOUNCE_REASON, NULL, err, sizeof err) < 0 ||
	    spool_admin(q->spool, SPOOL_ADMIN_DELETE, ids, 1, NULL, NULL, err, sizeof err) < 0) {
		evlog_emit(q->log, EV_QUEUE_ADMIN_FAILED, EVF_S("action", "bounce"),
			   EVF_I("uid", call->uid), EVF_S("reason", err));
		control_reply_status(rep, 500, "queue bounce %s: %s", env->qid, err);
		goto out;
	}
	for (size_t i = 0; i < env->n_rcpts; i++)
		if (qctl_rcpt_pending(&env->rcpts[i]))
			track_bounced(t, env->qid, env->rcpts[i].addr, BOUNCE_REASON,
				      dsn_qid[0] ? dsn_qid : "");
	track_deleted(t, env->qid, call->uid);
	evlog_emit(q->log, EV_QUEUE_BOUNCED, EVF_S("qid", env->qid), EVF_I("rcpts", n_pending),
		   EVF_I("uid", call->uid));
	control_reply_add(rep, "bounced", "%zu", n_pending);
	control_reply_add(rep, "report", "%s", dsn_qid[0] ? dsn_qid : "none (NOTIFY, or null sender)");
	if (dsn_qid[0] && q->kick)
		q->kick(q->kick_arg, dsn_qid);
out:
	spool_envelope_free(&env);
}
