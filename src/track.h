/*
 * track: the message tracking log.
 *
 * Every step of a message's life is one JSON line (track_line.h) in the
 * file of its UTC day, <dir>/track-YYYY-MM-DD.jsonl; `carrier track` reads
 * them back and tells each message's story.  Files older than the
 * retention are removed at start and at each day change.
 *
 * Never required for delivery: every function here accepts t == NULL and
 * then does nothing, and none of them fails.  A write error is counted and
 * reported once as EV_TRACK_WRITE_FAILED (again only after a success).
 *
 * Threads: every track_<record>() may be called from any thread (loop,
 * spool, delivery).  It formats the line and appends it to a bounded
 * in-memory queue (TRACK_QUEUE_MAX bytes; beyond it records are dropped,
 * counted and reported once as EV_TRACK_QUEUE_FULL); a writer thread of
 * the module's own appends the queue to the day's file, each batch in
 * whole lines with O_APPEND, so a caller never waits on the disk.
 * track_reopen() may be called from any thread; track_free() from the
 * thread that created it, after every other caller has stopped.
 *
 * Every record has "ts" (UTC, "2026-11-24T13:02:11.123Z"), "qid" and
 * "type"; string arguments may be NULL (written as "" or left out) and may
 * hold anything a peer sent: they are escaped.
 *
 *   type        fields besides ts, qid, type
 *   received    client, helo, tls, auth (only when set), size, msgid, from,
 *               rcpts (array), nrcpts
 *   queued      origin, from, nrcpts
 *   routed      rcpt, space, nexthop, cost
 *   attempt     rcpts (array), nexthop, addr, reply
 *   delivered   rcpt, nexthop, reply
 *   deferred    rcpt, reason, next (ts of the next attempt)
 *   bounced     rcpt, reason, bounce_qid (only when a bounce was queued)
 *   expired     rcpt, reason
 *   held, released, deleted, retry   uid (the acting administrator)
 *
 * A line that would exceed TRACK_LINE_MAX drops trailing recipients from
 * "rcpts" ("nrcpts" keeps the full count); single values are cut at 2 KiB.
 */
#ifndef CARRIER_TRACK_H
#define CARRIER_TRACK_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "evlog.h"

/* Bytes of formatted lines the queue holds before it drops records. */
#define TRACK_QUEUE_MAX (8u << 20)

struct track;

/* The clock: milliseconds since the epoch, UTC.  Tests inject one. */
typedef int64_t (*track_clock_fn)(void *arg);

/*
 * Opens the tracking log in `dir` (created, mode 0750, when missing; its
 * parent must exist), keeping `retention_days` days of files besides today
 * (0 keeps every file), and starts the writer thread.  Events go to
 * `evlog` (may be NULL).  Removes files older than the retention.
 * Returns the handle, or NULL with a reason in err when the directory is
 * unusable or the thread cannot start: the caller then emits
 * EV_TRACK_DISABLED {dir, reason} and runs on with t == NULL.
 */
struct track *track_new(const char *dir, unsigned retention_days,
			struct evlog *evlog, char *err, size_t errlen);
/* Knobs for tests (and for main, should it want them); zero = default. */
struct track_params {
	track_clock_fn clock;           /* NULL: real time */
	void *clock_arg;
	size_t queue_max;               /* 0: TRACK_QUEUE_MAX */
};

/* track_new with params (may be NULL).  The clock is read by the
 * recording threads, so it must be thread-safe. */
struct track *track_new_with(const char *dir, unsigned retention_days,
			     struct evlog *evlog, const struct track_params *params,
			     char *err, size_t errlen);
/* Writes every queued record, stops the writer, closes, frees; clears *tp. */
void track_free(struct track **tp);
/* Closes the day's file; the next record reopens it (SIGUSR1, rotation). */
void track_reopen(struct track *t);
/* Blocks until every record queued so far is written (tests, shutdown). */
void track_flush(struct track *t);

/* Counters: records written, records lost (queue full or write error). */
unsigned long track_written(const struct track *t);
unsigned long track_lost(const struct track *t);

/* The message as accepted from a client.  Strings may be NULL. */
struct track_received {
	const char *qid;
	const char *client;             /* "192.0.2.1" or "[2001:db8::1]:port" */
	const char *helo;               /* as the client sent it */
	const char *tls;                /* "none" or "TLSv1.3 TLS_AES_256_GCM_SHA384"; NULL = "none" */
	const char *auth;               /* AUTH identity; NULL or "" = none */
	uint64_t size;                  /* octets stored */
	const char *msgid;              /* Message-ID header, "" when none */
	const char *sender;             /* envelope sender, "" for <> */
	const char *const *rcpts;       /* envelope recipients */
	size_t n_rcpts;
};

void track_received(struct track *t, const struct track_received *r);
/* The message is on the queue.  `origin`: "smtp", "submission", "local"
 * (carrier send) or "dsn" (a bounce carrier made). */
void track_queued(struct track *t, const char *qid, const char *origin,
		  const char *sender, size_t n_rcpts);
/* The router chose route `space` ("example.net", "*") and `nexthop`
 * ("smtp:[10.0.0.5]:25", "mx:example.net", "maildir") at `cost`. */
void track_routed(struct track *t, const char *qid, const char *rcpt,
		  const char *space, const char *nexthop, unsigned cost);
/* One attempt at `nexthop`, connected to `addr` ("192.0.2.7:25", "" when
 * no connection); `reply` is the last reply ("451 4.3.0 try later") or
 * the local failure ("connect: Connection refused"). */
void track_attempt(struct track *t, const char *qid, const char *const *rcpts,
		   size_t n_rcpts, const char *nexthop, const char *addr,
		   const char *reply);
void track_delivered(struct track *t, const char *qid, const char *rcpt,
		     const char *nexthop, const char *reply);
/* `next_attempt`: seconds since the epoch of the next try (0 = unknown). */
void track_deferred(struct track *t, const char *qid, const char *rcpt,
		    const char *reason, time_t next_attempt);
/* `bounce_qid`: the queue ID of the bounce carrier queued, NULL or "" when
 * none (null sender, or the bounce itself failed). */
void track_bounced(struct track *t, const char *qid, const char *rcpt,
		   const char *reason, const char *bounce_qid);
/* The recipient outlived delivery.max_queue_lifetime; `reason` is the last
 * temporary failure.  A bounced record follows. */
void track_expired(struct track *t, const char *qid, const char *rcpt,
		   const char *reason);
/* Administrative actions (carrier queue ...), with the acting uid. */
void track_held(struct track *t, const char *qid, uid_t uid);
void track_released(struct track *t, const char *qid, uid_t uid);
void track_deleted(struct track *t, const char *qid, uid_t uid);
void track_retry(struct track *t, const char *qid, uid_t uid);

/*
 * Day files: the name of the file for `day` (days since the epoch) into
 * buf ("track-2026-11-24.jsonl"), and back: returns the day, or -1 when
 * `name` is not a tracking file's name.
 */
void track_file_name(char *buf, size_t size, int64_t day);
int64_t track_file_day(const char *name);

#endif
