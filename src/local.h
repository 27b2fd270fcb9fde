/*
 * local: the local delivery runner.
 *
 * Takes the spool's pending recipients whose domain is local (or that have
 * no domain), delivers each into its Maildir with the maildir agent, and
 * records each result in the spool: DELIVERED, DEFERRED with the next
 * attempt from the schedule module's policy ([delivery] retry_schedule, 1m, 5m, 15m,
 * 30m, 1h, 2h, 4h by default, with jitter), or FAILED (permanent failure,
 * or temporary failures for longer than [delivery] max_queue_lifetime).  A
 * message whose recipients are all final is removed from the spool.
 * Recipients in other domains are left as they are (remote delivery is not
 * this module's).  A recipient listed twice in a message is delivered
 * once.  Bounces and delay warnings (DSN) are not sent from here yet.
 *
 * Threads: a worker thread of its own scans the spool and hands the due
 * messages to 4 delivery threads, which read them and write and fsync the
 * Maildir files in parallel (the file system journals concurrent fsyncs
 * together: 1.3 to 2 times the deliveries per second of one thread).  All
 * of it blocks, none of it on the event loop, which only calls
 * local_kick() and local_set_conf() (a mutex held for a few instructions).
 * Results go to the spool with spool_rcpt_update_async() and
 * spool_remove_async(), so they share the spool thread's group commit with
 * incoming mail (one fsync for many results); the answers come back to an
 * event base the worker owns and runs while the delivery threads work, and
 * every answer of a scan is in before the next scan reads the spool.
 * Events and counters are emitted from any of these threads (both are
 * thread-safe).  libevent threading must be on (evthread_use_pthreads())
 * before local_new(), as carrierd does.  The worker scans at start (mail
 * queued before a restart), after each kick, when the earliest deferred
 * local recipient is due, and at least every 5 minutes; a kick naming a
 * qid (local_kick_qid) looks at that message only.
 *
 * Exactly once: the runner queues DELIVERED for a recipient right after
 * its Maildir file and new/ are fsync'd.  A crash (kill -9, power cut)
 * after that fsync and before the spool's next group commit (normally a
 * few milliseconds) leaves the recipient QUEUED/DEFERRED, and it is
 * delivered a second time after the restart: the one window of duplicate
 * delivery (the message is never lost).  When the spool update itself
 * fails while the daemon runs, the runner keeps the result in memory and
 * retries recording it, without delivering again.
 *
 * Wiring: create after spool_open(), free before spool_close().
 */
#ifndef CARRIER_LOCAL_H
#define CARRIER_LOCAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct local;
struct event_base;
struct carrier_conf;
struct evlog;
struct counters;
struct spool;

/*
 * Starts the runner and its worker thread (which scans the spool at once).
 * Copies what it needs from `conf` (maildir_path, local_domains, hostname,
 * retry_schedule, max_queue_lifetime),
 * so `conf` may be freed after the call.  `log` and `ctr` may be NULL;
 * `spool`, `log` and `ctr` must outlive the runner.  `base` is the loop the
 * runner belongs to (kept for wiring; the worker needs nothing from it).
 * Returns NULL with the reason in err (allocation, thread creation).
 */
struct local *local_new(struct event_base *base, const struct carrier_conf *conf,
			struct evlog *log, struct counters *ctr, struct spool *spool,
			char *err, size_t errlen);

/* Asks for a walk of the spool's pending messages soon.  Never blocks on
 * disk; any thread. */
void local_kick(struct local *l);

/*
 * Asks for the committed message `qid` to be looked at soon, without a
 * walk of the spool (whose cost grows with the queue, remote mail
 * included): prefer it after a commit when the qid is known.  Kicks are
 * coalesced; past 4096 waiting qids it becomes a walk.  Never blocks on
 * disk; any thread.
 */
void local_kick_qid(struct local *l, const char *qid);

/* Swaps in a new configuration (reload): copied, used from the next
 * message on; `conf` may be freed after the call.  Any thread. */
void local_set_conf(struct local *l, const struct carrier_conf *conf);

/*
 * Tests and tools: waits until the worker is idle (no kick pending, no scan
 * running) for at most timeout_ms.  Returns true when idle.  Blocks: never
 * call it from an event loop.
 */
bool local_wait_idle(struct local *l, unsigned timeout_ms);

/* Stops the threads after the messages they are delivering, waits for the
 * spool's answers to those results, joins, frees; clears *lp.  NULL and
 * *lp == NULL are fine. */
void local_free(struct local **lp);

#endif
