/*
 * queue_ctl_int: what queue_ctl.c and queue_ctl_act.c share; not for
 * other modules (they use queue_ctl.h).
 */
#ifndef CARRIER_QUEUE_CTL_INT_H
#define CARRIER_QUEUE_CTL_INT_H

#include <stdbool.h>
#include <stddef.h>

#include "route.h"
#include "spool.h"

struct queue_ctl;
struct qctl_reader;
struct control_call;
struct control_deferred;
struct control_reply;

/* Reply budgets: below CONTROL_REPLY_MAX (256 KiB) and the client's
 * CONTROL_RESP_FIELDS_MAX (4096 fields). */
#define QCTL_FIELDS_BUDGET 3800
#define QCTL_BYTES_BUDGET (200 * 1024)
#define QCTL_HEADER_MAX (48 * 1024)   /* header bytes `show` returns (escaped) */
#define QCTL_BODY_MAX (96 * 1024)     /* body bytes `show body` returns (escaped) */
#define QCTL_LINE_MAX 4000            /* one header or body line */
#define QCTL_TEXT_FIELDS 3000         /* header + body lines */
#define QCTL_SHOW_RCPTS 500           /* recipients `show` lists */
#define QCTL_RCPT_BYTES (64 * 1024)   /* and the bytes they take */
#define QCTL_BUCKETS 10               /* summary age columns */
#define QCTL_HOPS_MAX 2000            /* summary rows */
#define QCTL_HOP_CACHE 64

/* Next-hop keys of recently seen domains, per request. */
struct qctl_hops {
	struct {
		char domain[DNS_NAME_MAX + 3];
		char key[ROUTE_KEY_MAX];
	} e[QCTL_HOP_CACHE];
	size_t n, next;
};

bool qctl_qid_valid(const char *s);
bool qctl_rcpt_pending(const struct spool_rcpt *r);
/* "held", "deferred", "queued" or "done". */
const char *qctl_msg_state(const struct spool_envelope *env);
/* The next-hop key of `domain` ("unroutable" when none); valid until the
 * next call with the same cache. */
const char *qctl_hop(struct qctl_hops *h, struct route_table *rt, const char *domain);
/* Adds recipient i of env as a "rcpt" field. */
void qctl_add_rcpt(struct control_reply *rep, struct qctl_hops *hops,
		   struct route_table *rt, const struct spool_envelope *env, size_t i);

/* ---- reading commands and their thread (queue_ctl_read.c) ---------------- */

/* Keys one step of a walk reads (one read transaction, a few ms). */
#define QCTL_STEP_KEYS 10000
/* Reading requests waiting for the reader at most; more get 503. */
#define QCTL_JOBS_MAX 64
/* qctl_walk(): the request was cancelled (peer gone, daemon stopping). */
#define QCTL_CANCELLED (-2)

/* What a reading command runs with, on the reader thread or inline. */
struct qctl_read {
	struct queue_ctl *q;              /* only q->spool is used */
	struct route_table *rt;           /* a reference taken on the loop, or NULL */
	const struct control_call *call;  /* req, uid, pid (conn is NULL) */
	struct control_deferred *d;       /* the deferred reply, or NULL inline */
	struct qctl_reader *reader;       /* NULL inline */
};

/* A reading command: fills rep from the spool. */
typedef void qctl_read_fn(struct qctl_read *r, struct control_reply *rep);

/*
 * Runs `fn` for the request: on the reader thread with a deferred reply
 * when q has one, else inline (tests, or 503 when the reader failed to
 * start).  Loop thread.
 */
void qctl_read_submit(struct queue_ctl *q, qctl_read_fn *fn, const struct control_call *call,
		      struct control_reply *rep);

/*
 * Walks every envelope after the qid `after` (NULL: all) in steps of
 * QCTL_STEP_KEYS keys (spool_foreach_step), checking between steps that
 * the request is still wanted.  Returns 0, cb's stop value, -1 + err, or
 * QCTL_CANCELLED + err.
 */
int qctl_walk(struct qctl_read *r, const char *after, spool_env_fn *cb, void *arg,
	      char *err, size_t errlen);

/* queue_ctl_act.c: the changing subcommands (authorized by the caller). */
void qctl_cmd_hold(struct queue_ctl *q, const struct control_call *call,
		   struct control_reply *rep);
void qctl_cmd_release(struct queue_ctl *q, const struct control_call *call,
		      struct control_reply *rep);
void qctl_cmd_delete(struct queue_ctl *q, const struct control_call *call,
		     struct control_reply *rep);
void qctl_cmd_retry(struct queue_ctl *q, const struct control_call *call,
		    struct control_reply *rep);
void qctl_cmd_flush(struct queue_ctl *q, const struct control_call *call,
		    struct control_reply *rep);
void qctl_cmd_bounce(struct queue_ctl *q, const struct control_call *call,
		     struct control_reply *rep);

#endif
