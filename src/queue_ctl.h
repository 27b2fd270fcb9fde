/*
 * queue_ctl: the `queue` control command, the daemon side of
 * `carrier queue`: list (with filters), summary (per next hop, qshape-like
 * age buckets), show, hold, release, delete, retry, flush, bounce, due.
 *
 * Owns: the request grammar below and the reply fields the CLI reads.  It
 * changes the queue only through spool.h (spool_admin), logs every change
 * as an event and in the tracking log with the acting uid, and asks the
 * daemon to deliver through a kick callback.  Must not: deliver, touch the
 * runner's insides.  The reading commands (list, summary, show, due) run
 * on the queue reader thread (queue_ctl_start()) and answer through a
 * deferred control reply, so walking a queue of any length never holds up
 * the loop; they read the whole queue, with no cap.
 *
 * Authorization: the control socket lets in root, the daemon's user and
 * the control group; reading commands (list, summary, show, due) are for
 * all of them, changing ones only for uid 0 and the daemon's effective uid
 * (refused with 403 otherwise).
 *
 * Request (after "queue"):
 *   list [state=S] [from=A] [to=A] [domain=D] [hop=K] [older=SECONDS]
 *        [after=QID | qafter=KEY] [offset=N] [limit=N]
 *   summary
 *   show QID [body]
 *   hold QID...|all     release QID...|all     delete QID...
 *   retry QID...|all|domain=D     flush     bounce QID     due
 * Reply fields (values tab-separated where several):
 *   msg          qid state arrival size sender pending_rcpts rcpts
 *   rcpt         qid state attempts next_attempt hop addr last_reply
 *   quarantined  qid when reason
 *   hop          key total b5 b10 b20 b40 b80 b160 b320 b640 b1280 b1280+
 *   matched, shown, scanned, next_after / next_qafter and next_offset (a
 *                list page is full: ask again with after= / qafter= the
 *                value, or offset=; the walk stops at a full page, so
 *                matched counts up to there), rcpts_truncated (qid total
 *                shown: a message larger than a page)
 *   changed, absent, unchanged, more (an `all` request hit its cap: repeat)
 * States: queued, deferred, held, done (all recipients final) for a
 * message; queued, deferred, delivered, failed for a recipient.
 *
 * Threads: queue_ctl_handle(), queue_ctl_start() and queue_ctl_stop() on
 * the daemon's loop thread; the reading commands on the reader thread.
 */
#ifndef CARRIER_QUEUE_CTL_H
#define CARRIER_QUEUE_CTL_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

struct spool;
struct evlog;
struct track;
struct carrier_conf;
struct route_table;
struct control_call;
struct control_reply;
struct qctl_reader;

/* Messages listed per reply at most (the CLI pages with after=). */
#define QUEUE_CTL_LIST_MAX 1000
/* Messages one hold/release/retry/flush request changes at most. */
#define QUEUE_CTL_BATCH_MAX 10000

/* Asks for delivery of `qid` now (NULL: look at the whole queue). */
typedef void queue_ctl_kick_fn(void *arg, const char *qid);

/*
 * What the handler works with.  The pointers to pointers follow the
 * daemon's fields, which a reload swaps (conf, routes) or which start
 * later (track); *track and *routes may be NULL.  `admin_uid` is the
 * daemon's effective uid (allowed to change the queue, with root).
 */
struct queue_ctl {
	struct spool *spool;
	struct evlog *log;
	struct track *const *track;
	struct carrier_conf *const *conf;
	struct route_table *const *routes;
	queue_ctl_kick_fn *kick;
	void *kick_arg;
	uid_t admin_uid;
	/* Set by queue_ctl_start(); with none the reading commands run
	 * inline on the caller's thread (tests), or answer 503 when the
	 * thread failed to start. */
	struct qctl_reader *reader;
	bool reader_failed;
};

/*
 * Starts the queue reader thread for q (whose spool and log must outlive
 * it).  Returns 0, or -1 + err with the event QUEUE_READER_FAILED: the
 * daemon goes on and the reading commands answer 503.
 */
int queue_ctl_start(struct queue_ctl *q, char *err, size_t errlen);

/*
 * Stops the reader: the walk under way stops at its next step, waiting
 * requests are answered 503 (the control drops what it can no longer
 * send), and the thread is joined.  Call on the loop thread before
 * control_free() and spool_close().  Without a reader, does nothing.
 */
void queue_ctl_stop(struct queue_ctl *q);

/* The `queue` command handler (control_handler_fn); arg is a struct
 * queue_ctl. */
void queue_ctl_handle(void *arg, const struct control_call *call,
		      struct control_reply *rep);

#endif
