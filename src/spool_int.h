/*
 * spool_int: what spool.c and spool_read.c share; not for other modules
 * (they use spool.h).  Holds struct spool and small helpers.
 */
#ifndef CARRIER_SPOOL_INT_H
#define CARRIER_SPOOL_INT_H

#include <lmdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "spool.h"

#define MAX_STR (64 * 1024)
/*
 * How long the spool thread holds a queue of only recipient results and
 * removals before committing it alone.  They acknowledge nothing to a
 * client: losing them in a crash repeats a delivery (the documented
 * duplicate window), so they wait for the next message commit to ride
 * along with, for at most this long.
 */
#define SPOOL_RESULT_HOLD_US 10000
#define ERRLEN 256

struct pending;

struct spool {
	char *path;
	struct spool_opts opts;
	struct evlog *log;
	/*
	 * env and the DB handles are replaced by a reopen after MDB_PANIC
	 * (spool thread, env_lock taken exclusively; env stays NULL while
	 * reopening fails).  Every other thread holds env_lock shared while it
	 * uses them (spool_env_enter/leave); the spool thread, their only
	 * writer, reads them without it.  Reader-preferring, so a thread may
	 * take it shared again (a foreach callback calling spool_load).
	 */
	pthread_rwlock_t env_lock;
	MDB_env *env;
	MDB_dbi db_meta, db_env, db_body, db_quar;
	int dirfd, bodyfd, quarfd, lockfd;

	pthread_mutex_t mu;        /* queue, stopping, stats, reopen_* */
	pthread_cond_t cv;         /* CLOCK_MONOTONIC */
	struct pending *head, **tail;
	size_t n_queued, n_msgs_queued; /* in head..tail; messages of them */
	bool stopping, thread_started;
	pthread_t thread;
	struct spool_stats stats;
	bool reopen_wanted;        /* LMDB went fatal: the spool thread reopens */
	char reopen_reason[ERRLEN];
	struct timespec reopen_at; /* next attempt (monotonic) */
	unsigned reopen_delay_s;   /* backoff after a failed reopen */

	/* Capacity of every builder's in-memory body (loop threads grow it,
	 * the spool thread frees it after the commit): checked against
	 * opts.inline_memory. */
	atomic_size_t mem_held;

	pthread_mutex_t qid_mu;    /* queue-ID generator */
	uint64_t qid_us;
	uint32_t qid_ctr;
};

static inline void seterr(char *err, size_t errlen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static inline void seterr(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (err == NULL || errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

static inline int64_t now_s(void)
{
	return (int64_t)time(NULL);
}

static inline void stats_add(struct spool *sp, uint64_t *field, uint64_t n)
{
	pthread_mutex_lock(&sp->mu);
	*field += n;
	pthread_mutex_unlock(&sp->mu);
}

static inline bool str_ok(const char *s)
{
	return s != NULL && strlen(s) <= MAX_STR;
}

/* Replaces *dst by a copy of s (NULL allowed when `nullable`). */
static inline int set_str(char **dst, const char *s, bool nullable)
{
	char *c = NULL;

	if (s == NULL && !nullable)
		return -1;
	if (s != NULL) {
		if (!str_ok(s) || (c = strdup(s)) == NULL)
			return -1;
	}
	free(*dst);
	*dst = c;
	return 0;
}

static inline const char *mdb_reason(struct spool *sp, int rc, char *buf, size_t len)
{
	if (rc == MDB_MAP_FULL)
		snprintf(buf, len, "LMDB map full (spool.map_size is %zu bytes)",
			 sp->opts.map_size);
	else
		snprintf(buf, len, "%s", mdb_strerror(rc));
	return buf;
}

static inline bool spool_env_pending(const struct spool_envelope *env)
{
	for (size_t i = 0; i < env->n_rcpts; i++)
		if (env->rcpts[i].state == SPOOL_RCPT_QUEUED ||
		    env->rcpts[i].state == SPOOL_RCPT_DEFERRED)
			return true;
	return false;
}

/* Takes env_lock shared for a call on a thread other than the spool
 * thread: 0, or -1 + err when the environment is closed because reopening
 * it failed (the spool thread retries).  Pair with spool_env_leave(). */
static inline int spool_env_enter(struct spool *sp, char *err, size_t errlen)
{
	pthread_rwlock_rdlock(&sp->env_lock);
	if (sp->env != NULL)
		return 0;
	pthread_rwlock_unlock(&sp->env_lock);
	seterr(err, errlen, "spool %s is unavailable: reopening it after a disk error failed, retrying",
	       sp->path);
	return -1;
}

static inline void spool_env_leave(struct spool *sp)
{
	pthread_rwlock_unlock(&sp->env_lock);
}

/* spool.c */
/* After an LMDB call failed with rc (the caller holds env_lock shared, or
 * is the spool thread): when the environment is fatal (MDB_PANIC, or a
 * failed commit left it so), asks the spool thread to reopen it.  Returns
 * true in that case. */
bool spool_env_failed(struct spool *sp, int rc);

/* Damaged keys met while walking a read transaction, quarantined after. */
struct spool_badlist {
	struct spool_bad {
		uint8_t key[512];
		size_t keylen;
		char reason[ERRLEN];
	} *v;
	size_t n, cap;
};

/* spool_read.c */
void spool_read_bad_add(struct spool_badlist *b, const MDB_val *k, const char *reason);
/* Quarantines every listed key, then empties the list. */
void spool_read_bad_flush(struct spool *sp, struct spool_badlist *b);
/* Walks every envelope (or, with pending_only, those not held and with a
 * pending recipient) in one read txn, quarantining damaged ones; the
 * caller holds the environment lock.  With `step` (else NULL), one step of
 * a stepwise walk as spool_foreach_step() describes.  Returns cb's stop
 * value or -1. */
int spool_read_walk(struct spool *sp, bool pending_only, struct spool_walk *step,
		    spool_env_fn *cb, void *arg, char *err, size_t errlen);
/* Decodes the envelope under k and checks it is stored under its qid;
 * 0, or -1 with the reason in why. */
int spool_read_decode_env(const MDB_val *k, const MDB_val *v,
			  struct spool_envelope **env_r, char *why, size_t whylen);
/* Moves the message under `key` to quarantine (event included): 0, 1 if
 * absent, -1 + err. */
int spool_read_quarantine_key(struct spool *sp, const MDB_val *key,
			      const char *reason, char *err, size_t errlen);

/* A queue change applied by spool_read_apply(). */
enum spool_op { SPOOL_OP_UPDATE, SPOOL_OP_REMOVE };
struct spool_update {
	enum spool_op op;
	size_t idx;                  /* SPOOL_OP_UPDATE: recipient index, */
	enum spool_rcpt_state state; /* new state, */
	char *reply;                 /* reply text (NULL keeps the old one), */
	int64_t next_attempt;        /* next attempt time */
};
struct spool_apply {
	int lmdb;                    /* LMDB/errno code that broke the txn, or 0 */
	bool damaged;                /* the envelope failed its checks */
	bool had_file;               /* removed message had a body file */
	char why[ERRLEN];
};
/* Applies u to the envelope of qid inside the write txn.  Returns 0 when
 * applied, 1 when there is no such qid or recipient, -1 when refused,
 * damaged (res->damaged) or on an LMDB error (res->lmdb: the txn must be
 * aborted); the reason is in res->why.  On 1 or a refusal without an LMDB
 * error nothing was written, so the txn can go on. */
int spool_read_apply(struct spool *sp, MDB_txn *txn, const char *qid,
		     const struct spool_update *u, struct spool_apply *res);
/* Unlinks body/<qid> after its removal was committed (event on failure). */
void spool_read_unlink_body(struct spool *sp, const char *qid);

#endif
