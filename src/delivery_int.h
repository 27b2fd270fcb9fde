/*
 * delivery_int.h: the delivery runner's insides, shared by its files only
 * (delivery.c: the loop side; delivery_index.c: the pending-message index;
 * delivery_work.c: the worker thread).  Nothing outside src/delivery*.c
 * includes this.
 */
#ifndef CARRIER_DELIVERY_INT_H
#define CARRIER_DELIVERY_INT_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "counters.h"
#include "delivery.h"
#include "dsn.h"
#include "maildir.h"
#include "route.h"
#include "schedule.h"
#include "smtp_client.h"
#include "spool.h"

#define HOP_BUCKETS 1024

/* The part of the configuration the runner uses (a copy). */
struct dcfg {
	unsigned *schedule;
	size_t n_schedule;
	struct schedule_policy pol;
	unsigned max_deliveries, max_conns;
	char *hostname;
	char *double_bounce_to;
	char *default_domain;     /* for a recipient without '@' */
	char *tls_ca_file;        /* outbound verify: "" = system trust store */
};

/* ---- the index (delivery_index.c) ------------------------------------ */

/* A known pending message.  Heap entries whose due differs from the
 * slot's, or that meet a busy slot, are stale and skipped. */
struct qslot {
	char qid[SPOOL_QID_LEN];  /* not NUL-terminated; qid[0] == 0: empty */
	bool busy;                /* being attempted (loaded or in flight) */
	bool kicked;              /* asked for again while busy */
	int64_t due;              /* its next attempt (the live heap entry) */
	/* The next hop it is queued for (that of its earliest pending
	 * recipient after its last attempt; NULL before the first), with
	 * what it adds to that hop's queue gauges. */
	struct hop *hop;
	int64_t arrival;
	uint64_t size;
};

struct qset {
	struct qslot *v;
	size_t cap, n;            /* cap is a power of two */
};

struct hent {
	int64_t due;
	char qid[SPOOL_QID_SIZE];
};

struct heap {
	struct hent *v;
	size_t n, cap;
};

/* True when qid is SPOOL_QID_LEN characters. */
bool delivery_qid_ok(const char *qid);
/* The slot of qid, or NULL.  Valid until the next add or del. */
struct qslot *delivery_qset_find(struct qset *s, const char *qid);
/* The slot of qid, made (zeroed, *added_r = true) when missing; NULL out
 * of memory.  Valid until the next add or del. */
struct qslot *delivery_qset_add(struct qset *s, const char *qid, bool *added_r);
void delivery_qset_del(struct qset *s, const char *qid);
/* 0, or -1 out of memory. */
int delivery_heap_push(struct heap *h, const char *qid, int64_t due);
/* Pops the earliest entry; h->n must be > 0. */
void delivery_heap_pop(struct heap *h, struct hent *top_r);

/* ---- types of the runner ---------------------------------------------------- */

/* RS_WAIT: not tried, every route's next hop is down: waits until
 * `next` without a record in the spool (no attempt counted). */
enum rs_state { RS_SKIP, RS_TRY, RS_OK, RS_TEMP, RS_PERM, RS_WAIT };

/* One recipient's outcome in this attempt. */
struct rstate {
	enum rs_state st;
	enum rs_state last;       /* class of the latest route tried (TRY) */
	unsigned code;
	char enh[12];
	char text[SMTP_CLIENT_TEXT_MAX];
	char host[SMTP_CLIENT_HOST_MAX];
	const char *hop;          /* into the group's decision; NULL = none */
	/* results */
	enum spool_rcpt_state fin;
	int64_t next;
	bool expired, warn, warned, notified, counted;
	bool success_dsn, relayed, succ;  /* NOTIFY=SUCCESS report: owed, kind, sent */
};

struct hop;
struct dmsg;

struct dgroup {
	struct dmsg *m;
	struct dgroup *next;      /* in the message */
	struct dgroup *wnext;     /* in its hop's wait queue */
	bool attempted;           /* a route was tried (not only skipped: hop down) */
	int64_t wait_until;       /* earliest end of a skipped hop's down time */
	struct route_decision *dec;
	struct route_resolution *res;
	struct route_req *req;
	size_t *idx, n, cap;      /* recipient indices */
	size_t ri;                /* route being tried */
	struct hop *hop;          /* held while a job runs or is about to */
	size_t *job_idx;          /* recipients of the running job */
	size_t job_n;
	struct counters_hop *hop_ctr;  /* counters of the route being tried */
};

struct dmsg {
	struct delivery *d;
	struct dmsg *prev, *next; /* active list */
	struct spool_envelope *env;
	int64_t now;
	struct rstate *rs;
	struct dgroup *groups;
	size_t groups_left;
	size_t notify_left;
	char bounce_qid[SPOOL_QID_SIZE];   /* the failure report, "" = none */
};

/* A next hop: its concurrency and wait queue, its message rate (token
 * bucket, one token, refilled at `rate` per second), its down time after
 * connection-level failures, and its share of the index (queue gauges).
 * Kept while anything of that is live, freed when idle. */
struct hop {
	struct hop *next;         /* bucket chain */
	struct delivery *d;
	char key[ROUTE_KEY_MAX];
	unsigned active, max, draining;
	struct dgroup *whead, *wtail;
	size_t n_wait;
	/* max_rate */
	unsigned rate;            /* messages per second; 0 = unlimited */
	int64_t next_ok_us;       /* monotonic microseconds: next start allowed */
	struct event *rate_ev;    /* drains the queue when a token is due */
	/* backoff */
	unsigned fails;           /* consecutive connection-level failures */
	int64_t down_until;       /* Unix seconds; 0 = up */
	/* queue gauges (published in counters under the hop's slot) */
	struct counters_hop *ctr;
	size_t n_queued;
	uint64_t q_bytes;
	int64_t oldest;           /* earliest arrival of a queued message; 0 = none */
	int64_t scan_oldest;      /* scratch of the recount */
};

enum wj_type { WJ_SCAN, WJ_LOAD, WJ_MAILDIR, WJ_NOTIFY };

struct scan_ent {
	char qid[SPOOL_QID_SIZE];
	int64_t due;
};

struct wjob {
	enum wj_type type;
	struct wjob *next;
	int rc;
	char err[512];
	char qid[SPOOL_QID_SIZE];
	/* WJ_SCAN: one chunk of the walk; `last` ends it */
	struct scan_ent *ents;
	size_t n_ents;
	bool last;
	size_t total;
	int64_t ms;
	/* WJ_LOAD */
	struct spool_envelope *env;
	/* WJ_MAILDIR and WJ_NOTIFY */
	struct dgroup *g;
	struct dmsg *m;
	char *root, *hostname, *domain;   /* copies: a reload may free the cfg */
	enum maildir_result *mres;
	char (*mtext)[SMTP_CLIENT_TEXT_MAX];
	/* WJ_NOTIFY */
	enum dsn_kind kind;
	struct dsn_rcpt *drcpts;
	size_t *didx;
	size_t n_d;
	char *to;
	bool dbl;
	char dsn_qid[SPOOL_QID_SIZE];
};

struct delivery {
	struct event_base *base;
	struct evlog *log;
	struct counters *ctr;
	struct track *track;
	struct spool *spool;
	struct route_table *routes;
	struct dns *dns;
	struct smtp_client *client;
	struct dcfg cfg;
	uint64_t rnd;

	struct qset known;
	struct heap heap;
	struct event *timer;
	bool index_ready, scanning, scan_again;
	int64_t last_scan;

	struct dmsg *active;
	size_t n_active;
	struct hop *hops[HOP_BUCKETS];
	bool oldest_dirty;                /* a hop's oldest message left it */
	int64_t oldest_at;                /* last recount (Unix seconds) */

	/* worker */
	pthread_t thread;
	bool thread_started;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool stop;
	struct wjob *jhead, *jtail;       /* to the worker */
	struct wjob *dhead, *dtail;       /* back to the loop */
	struct event *done_ev;
	uint64_t seq;                     /* Maildir file names; worker only */

	struct delivery_stats st;
	int64_t pub_active, pub_waiting;  /* queue gauges as published */
	struct rec_home *rhome;           /* reached by results' spool callbacks */
};

/* ---- the worker (delivery_work.c) ------------------------------------- */

/* Unix seconds now. */
int64_t delivery_now(void);
/* Frees a job and everything it owns (NULL is fine). */
void delivery_job_free(struct wjob *j);
/* Queues a job for the worker (loop thread). */
void delivery_job_post(struct delivery *d, struct wjob *j);
/* The worker thread: runs jobs until d->stop, hands each back through
 * d->done_ev. */
void *delivery_worker_main(void *arg);

#endif
