/*
 * delivery: the delivery runner, the one place that decides what to
 * deliver, when, and through which agent.
 *
 * Owns: the in-memory index of pending messages (qid -> next attempt
 * time, built at start from the spool by a worker thread so a restart with
 * a large queue serves at once), the per-next-hop concurrency and wait
 * queues, the SMTP/LMTP client, and a worker thread for every blocking
 * disk step (index scan, envelope loads, Maildir writes, building and
 * committing notifications).  Must not: change the spool other than
 * through spool.h; block the loop.
 *
 * Flow, per due message: load the envelope (worker) -> group its due
 * recipients by routing decision (route_lookup) -> per group, routes in
 * cost order: discard (delivered), reject (permanent failure), maildir
 * (worker, maildir_deliver), smtp/mx/lmtp (route_resolve_async, then an
 * smtp_client job).  When every host of a route failed temporarily (no
 * session reached MAIL, DNS temporary failure), the next-cost route is
 * tried in the same attempt.  Then the results: DELIVERED; FAILED (5xx, or
 * the queue lifetime ran out); DEFERRED with the next attempt from sched.
 *
 * Per next hop (the route's key): concurrency grows with the backlog up to
 * max_connections; max_rate spaces message starts (a token bucket of one
 * token: over the rate a message waits in the hop's queue, no attempt
 * counted).  When every destination of a hop fails before MAIL with only
 * temporary results, the hop is down until its own retry time (the retry
 * schedule by its consecutive failures, DELIVERY_HOP_DOWN): messages for it
 * skip it (failover to a dearer route still happens) and, with no route
 * left, wait until then without an attempt or a spool write
 * (DELIVERY_POSTPONED); when it is due one message probes it (concurrency
 * 1 until a session reaches MAIL, DELIVERY_HOP_UP).  delivery_kick (queue
 * flush) and delivery_kick_qid (retry, release) wake a down hop at once.
 * Each indexed message is counted in the queue gauges of the hop of its
 * earliest pending recipient after its last attempt (queue_messages,
 * queue_bytes, oldest_arrival; not before its first attempt).
 *
 * Notifications (dsn): a failure report for the recipients that failed in
 * this pass (NOTIFY permitting), a delay warning once, and with
 * NOTIFY=SUCCESS a success report ("delivered" for Maildir, "relayed" for
 * an SMTP peer without DSN, "delivered" for an LMTP server without it; a
 * peer with DSN gets NOTIFY passed on and reports itself).  A message from the
 * null sender is never bounced (double-bounce rule): the report goes to
 * delivery.double_bounce_to, or is dropped with an event.
 *
 * Order and crash windows: the notification is committed to the spool
 * (fsync'd) first, then the recipients' results and the message's removal
 * are queued together (spool_rcpt_update_async, spool_remove_async: the
 * same group commit, applied in order).  A crash after the notification's
 * commit and before the results' commit repeats the attempt after the
 * restart: at worst a duplicate delivery and a duplicate bounce, never a
 * lost one.  A Maildir or SMTP delivery that succeeded just before a crash
 * is likewise repeated (RFC 1047 duplicates, as every MTA).  So is one
 * whose results' commit fails (a spool write error): the message is
 * attempted again after the first retry_schedule step, at most a minute.
 *
 * The delay-warning flag: the spool has no per-recipient flag for it, so a
 * recipient warned about carries DELIVERY_WARNED_MARK at the end of its
 * last_reply (kept on every later deferral).  This survives restarts.
 *
 * Threads: every function here is called on the thread running `base`;
 * callbacks come back to it.  libevent threading must be on
 * (evthread_use_pthreads()) before `base` is created.
 */
#ifndef CARRIER_DELIVERY_H
#define CARRIER_DELIVERY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct delivery;
struct event_base;
struct carrier_conf;
struct evlog;
struct counters;
struct spool;
struct route_table;
struct dns;
struct track;

#define DELIVERY_WARNED_MARK " [delay warning sent]"

/*
 * Starts the runner: creates its SMTP client and worker thread, and starts
 * the index scan.  Copies what it needs of `conf` (delivery.*, hostname,
 * local domains).  `log` and `ctr` may be NULL; `spool`, `log`, `ctr`,
 * `routes` and `dns` must outlive the runner (or, for `routes`, until the
 * next delivery_set_conf).  `dns` may be NULL when no route needs DNS
 * (tests): such routes then defer.  Returns NULL with err on failure.
 */
struct delivery *delivery_new(struct event_base *base, const struct carrier_conf *conf,
			      struct evlog *log, struct counters *ctr, struct spool *spool,
			      struct route_table *routes, struct dns *dns,
			      char *err, size_t errlen);

/* A message was committed: find new pending mail soon (a walk of the
 * spool on the worker, coalesced; prefer delivery_kick_qid). */
void delivery_kick(struct delivery *d);

/* A message with this qid was committed, released from hold, or asked to
 * be retried now (carrier queue retry): index it or bring its next attempt
 * forward, and deliver promptly, without a walk of the spool.  Held
 * messages are dropped from the index when met. */
void delivery_kick_qid(struct delivery *d, const char *qid);

/*
 * Reload: copies the new delivery settings and uses `routes` for every
 * routing decision from now on (attempts in flight finish on the
 * decisions they made; nothing queued is lost or re-bounced).  The old
 * table is no longer used when this returns: the caller may free it.
 */
void delivery_set_conf(struct delivery *d, const struct carrier_conf *conf,
		       struct route_table *routes);

/* Tracking log for routed/attempt/delivered/deferred/bounced/expired and
 * the queued reports (origin "dsn"); NULL (the default) = none.  `t` must
 * outlive the runner. */
void delivery_set_track(struct delivery *d, struct track *t);

struct delivery_stats {
	size_t indexed;        /* pending messages known */
	size_t active;         /* messages being attempted */
	bool index_ready;      /* the start-up scan is finished */
	uint64_t delivered, deferred, failed, bounces, delays, successes, removed;
};
void delivery_get_stats(const struct delivery *d, struct delivery_stats *st_r);

/*
 * Stops: the worker finishes the step it is on and stops, attempts in
 * flight are abandoned (their recipients stay queued as they are in the
 * spool; they are retried after the restart), DNS lookups cancelled,
 * connections closed.  Results already queued to the spool still arrive
 * on `base` (run it, or spool_close() then free the base).  Call before
 * spool_close() and dns_free().  Clears *dp; NULL is fine.
 */
void delivery_free(struct delivery **dp);

#endif
