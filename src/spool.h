/*
 * spool: the durable queue.
 *
 * Owns the messages carrier has accepted: envelopes, per-recipient state,
 * bodies, the group-commit thread and the on-disk format version.  It knows
 * nothing about SMTP: callers hand it addresses and bytes.
 *
 * On disk, `<path>/` (mode 0700) holds:
 *   data.mdb, lock.mdb  one LMDB environment (MDB_NOTLS), named databases:
 *     "meta"        "format_version" -> META record (u32 version).  The META
 *                   record layout is frozen forever so any carrierd can read
 *                   the version of any spool.
 *     "env"         qid -> ENVELOPE record (sender, recipients and their
 *                   state, DSN, body type, client, arrival, size, body CRC,
 *                   and the administrator's hold flag when set)
 *     "body"        qid -> BODY record (the raw message) for inline bodies
 *     "quarantine"  qid -> QUARANTINE record (reason, time, the raw bytes of
 *                   the damaged envelope record)
 *   body/<qid>          bodies larger than inline_max; body/<qid>.tmp while
 *                       being received (removed at open if left by a crash)
 *   quarantine/<qid>    body files of quarantined messages
 *   carrier.lock        flock()ed by the process that has the spool open
 * Every record is framed (magic, type, version, length, CRC32 trailer) so a
 * partial or damaged one is detected; see spool_record.h.  A record that
 * fails its check at open or at read is moved to "quarantine" with event
 * SPOOL_QUARANTINED; the daemon goes on.
 *
 * Durability: a message is durable when its completion reports rc 0: its
 * body file (if any) was fsync'd and renamed, the body directory fsync'd,
 * then one LMDB write transaction holding every queued message was
 * committed (LMDB fsyncs).  Only then may a session reply 250.
 *
 * Format version: a new spool gets SPOOL_FORMAT_VERSION; a newer one is
 * never opened (event SPOOL_VERSION_REFUSED names both numbers); one between
 * SPOOL_FORMAT_OLDEST and the current version would be upgraded in place in
 * one write transaction (format 1 is the first, so there is no upgrade step
 * yet); an older one is refused.
 *
 * Crash recovery: nothing to replay.  At open, body files no envelope
 * references (a crash between writing the body and its commit: never
 * acknowledged) are removed, damaged envelopes are quarantined, and
 * messages whose recipients are all DELIVERED or FAILED but which were
 * not removed (a crash between the results' commit and the removal's) are
 * removed in one transaction (SPOOL_FINAL_SWEPT; their notifications were
 * committed before their results, see delivery.h).
 *
 * Disk errors: after a failed write LMDB refuses every transaction
 * (MDB_PANIC).  The spool thread then closes and reopens the environment in
 * place (SPOOL_REOPENED; the last durable commit is intact), retrying with
 * a backoff while that fails (SPOOL_REOPEN_FAILED); meanwhile commits get a
 * temporary failure and reads return -1.
 *
 * Privileges: spool_open() may run as root.  The LMDB environment stays
 * usable after setuid(), but body files are created in body/ later, so call
 * spool_chown() before dropping privileges (it chowns the directory tree and
 * the LMDB files to the daemon user).
 *
 * Threads: spool_open() starts one spool thread that runs every commit.
 * The builder (spool_msg_*) is used by one thread at a time (the session's
 * loop thread).  spool_commit_async() may be called from any thread; the
 * completion runs on the thread running the given event_base (delivered
 * with event_base_once(), so libevent threading must be enabled with
 * evthread_use_pthreads() before that base is created).  The read and update
 * calls (load, foreach, body, rcpt_update, remove) run synchronously on the
 * calling thread with their own LMDB transactions; rcpt_update and remove
 * take LMDB's writer lock and so may wait for one in-progress commit, then
 * fsync: loop threads should prefer the _async forms, which join the group
 * commit.
 */
#ifndef CARRIER_SPOOL_H
#define CARRIER_SPOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* The on-disk format this code writes; spools with a newer one are refused. */
#define SPOOL_FORMAT_VERSION 1u
/* The oldest format spool_open() can still open (upgrading it in place). */
#define SPOOL_FORMAT_OLDEST 1u

/* Queue IDs: 11 Crockford base32 digits of microseconds since the epoch and
 * 5 of a counter: sortable as strings, unique and increasing within a spool
 * (also across restarts and when the clock steps back). */
#define SPOOL_QID_LEN 16
#define SPOOL_QID_SIZE (SPOOL_QID_LEN + 1)

struct spool;
struct spool_msg;
struct spool_body;
struct evlog;
struct event_base;

/* Bodies up to this size stay in memory whatever inline_memory says. */
#define SPOOL_INLINE_ALWAYS ((size_t)64 * 1024)

struct spool_opts {
	size_t map_size;          /* LMDB map size; default 1 GiB */
	size_t inline_max;        /* bodies above this go to a file; 256 KiB */
	size_t inline_memory;     /* all bodies in memory together; 64 MiB */
	uint64_t space_margin;    /* bytes always left free; default 64 MiB */
	unsigned commit_delay_us; /* wait this long to batch more; default 0 */
	unsigned max_batch;       /* messages per commit at most; 1024 */
};

/* Fills `o` with the defaults above. */
void spool_opts_init(struct spool_opts *o);

enum spool_rcpt_state {
	SPOOL_RCPT_QUEUED = 0,    /* never tried */
	SPOOL_RCPT_DEFERRED = 1,  /* tried, temporary failure, will retry */
	SPOOL_RCPT_DELIVERED = 2, /* final */
	SPOOL_RCPT_FAILED = 3,    /* final (bounced) */
};

enum spool_body_type {
	SPOOL_BODY_7BIT = 0,
	SPOOL_BODY_8BITMIME = 1,
	SPOOL_BODY_BINARYMIME = 2,
};

enum spool_dsn_ret {
	SPOOL_RET_UNSPEC = 0,
	SPOOL_RET_FULL = 1,
	SPOOL_RET_HDRS = 2,
};

/* DSN NOTIFY flags (RFC 3461); 0 means NOTIFY was not given. */
#define SPOOL_NOTIFY_NEVER 0x1u
#define SPOOL_NOTIFY_SUCCESS 0x2u
#define SPOOL_NOTIFY_FAILURE 0x4u
#define SPOOL_NOTIFY_DELAY 0x8u

struct spool_rcpt {
	char *addr;                 /* never NULL */
	char *orcpt;                /* DSN ORCPT as given ("rfc822;x@y"), or NULL */
	unsigned notify;            /* SPOOL_NOTIFY_* */
	enum spool_rcpt_state state;
	uint32_t attempts;
	int64_t next_attempt;       /* unix seconds; 0 = as soon as possible */
	char *last_reply;           /* last reply text, or NULL */
};

/* A decoded envelope.  Strings are NUL-terminated, never NULL unless noted. */
struct spool_envelope {
	char qid[SPOOL_QID_SIZE];
	char *sender;               /* "" for the null reverse-path */
	struct spool_rcpt *rcpts;
	size_t n_rcpts;
	enum spool_dsn_ret dsn_ret;
	char *envid;                /* DSN ENVID or NULL */
	enum spool_body_type body_type;
	bool smtputf8;
	char *client_addr;          /* "" when unknown */
	char *client_helo;          /* "" when unknown */
	int64_t arrival;            /* unix seconds */
	uint64_t size;              /* body bytes */
	bool body_in_file;          /* body/<qid> rather than the "body" DB */
	uint32_t body_crc;          /* CRC32 of the body bytes */
	bool held;                  /* held by an administrator: not pending */
};

/* Frees an envelope from spool_load() or the record decoder; clears *envp. */
void spool_envelope_free(struct spool_envelope **envp);

struct spool_stats {
	uint64_t commits;             /* LMDB write txns committed (= fsync cycles) */
	uint64_t messages_committed;  /* messages made durable */
	uint64_t max_batch;           /* most messages in one commit */
	uint64_t fsyncs;              /* commits + body file and dir fsyncs */
	uint64_t changes_committed;   /* async recipient updates and removals */
	uint64_t commit_failures;     /* messages that got a temp failure */
	uint64_t quarantined;
};

/*
 * Reads the format version of the spool at `path` without creating or
 * changing anything.  Returns 0 when this carrierd can open it (also when
 * `path` does not exist or holds no spool yet: *found_r = 0), -1 when it
 * must be refused or cannot be read, with the reason in err (both version
 * numbers when it is too new or too old).  Do not call it while this process
 * has the same spool open (LMDB's locks are per process).
 */
int spool_version_check(const char *path, unsigned *found_r,
			char *err, size_t errlen);

/*
 * Opens (creating if needed) the spool at `path`, checks or writes its
 * format version, quarantines damaged envelopes, removes orphan body files,
 * and starts the spool thread.  `opts` may be NULL (defaults).  `log` may be
 * NULL.  Returns the handle, or NULL with the reason in err and an event.
 */
struct spool *spool_open(const char *path, const struct spool_opts *opts,
			 struct evlog *log, char *err, size_t errlen);

/* Drains every queued commit and change (their completions are posted to
 * their bases, so run those loops afterwards to receive them), stops the
 * thread, closes the environment; clears *spp. */
void spool_close(struct spool **spp);

/* Chowns the spool directory, its subdirectories, files and the LMDB files
 * to uid:gid, so the daemon can go on after dropping root.  0 or -1 + err. */
int spool_chown(struct spool *sp, uid_t uid, gid_t gid, char *err, size_t errlen);

/* Writes a new queue ID (SPOOL_QID_SIZE bytes incl. NUL) into `buf`.
 * Thread-safe. */
void spool_qid_new(struct spool *sp, char buf[SPOOL_QID_SIZE]);

/*
 * Free space check before accepting a message of `declared_size` bytes
 * (0 if unknown): refuses (-1 + reason) when the filesystem holding the
 * spool has less than space_margin + 1.5 * declared_size bytes available.
 */
int spool_space_ok(struct spool *sp, uint64_t declared_size,
		   char *err, size_t errlen);

/* ---- writing a message ------------------------------------------------ */

/* Starts a message with a fresh qid.  NULL + err on allocation failure. */
struct spool_msg *spool_msg_new(struct spool *sp, char *err, size_t errlen);
/* The message's qid; valid until it is committed or aborted. */
const char *spool_msg_qid(const struct spool_msg *m);
/* Setters copy their strings; they return 0, or -1 on allocation failure
 * or a string holding a NUL or longer than 64 KiB. */
int spool_msg_set_sender(struct spool_msg *m, const char *addr);
int spool_msg_set_dsn(struct spool_msg *m, enum spool_dsn_ret ret, const char *envid);
void spool_msg_set_body_type(struct spool_msg *m, enum spool_body_type t);
void spool_msg_set_smtputf8(struct spool_msg *m, bool on);
int spool_msg_set_client(struct spool_msg *m, const char *addr, const char *helo);
void spool_msg_set_arrival(struct spool_msg *m, int64_t unix_seconds);
int spool_msg_add_rcpt(struct spool_msg *m, const char *addr,
		       unsigned notify, const char *orcpt);
/*
 * Appends body bytes.  Up to inline_max they stay in memory; past that the
 * builder writes them (as they come) to body/<qid>.tmp.  Past
 * SPOOL_INLINE_ALWAYS, a body also goes to its file when the bodies held
 * in memory by every builder and uncommitted message together would pass
 * inline_memory, so many large transfers at once cannot exhaust memory.  Returns 0, or -1
 * with a reason (write error, ENOSPC); the caller then aborts the message.
 */
int spool_msg_append(struct spool_msg *m, const void *bytes, size_t len,
		     char *err, size_t errlen);
/* Body bytes appended so far. */
uint64_t spool_msg_size(const struct spool_msg *m);
/* Discards the message and any partial body file; clears *mp. */
void spool_msg_abort(struct spool_msg **mp);

/*
 * Completion of a commit: rc 0 means durable (reply 250); otherwise a
 * temporary failure (reply 452 4.3.1) with `err` saying why, and nothing of
 * the message remains.  `qid` and `err` are valid during the call only.
 */
typedef void spool_done_fn(void *arg, int rc, const char *qid, const char *err);

/*
 * Hands `msg` to the spool thread (always takes ownership of it, clearing
 * *msgp).  The thread commits every queued message in one transaction and
 * then runs `done(arg, ...)` on the thread running `base` (so that loop
 * must keep running, with some event pending, until it comes; a daemon's
 * listener does that).  Returns 0, or -1
 * (spool closing, message refused before queueing: no sender or no
 * recipient) with err, in which case `done` is never called.
 */
int spool_commit_async(struct spool *sp, struct spool_msg **msgp,
		       struct event_base *base, spool_done_fn *done, void *arg,
		       char *err, size_t errlen);

/* Like spool_commit_async() but waits for the commit (tools, DSN, tests).
 * Returns 0 with the qid in qid_r (may be NULL), or -1 + err. */
int spool_commit(struct spool *sp, struct spool_msg **msgp,
		 char qid_r[SPOOL_QID_SIZE], char *err, size_t errlen);

void spool_stats(struct spool *sp, struct spool_stats *r);

/* ---- reading and updating -------------------------------------------- */

/*
 * Calls cb for every message with at least one recipient QUEUED or
 * DEFERRED, in qid order.  `env` is valid during the call only.  cb returns
 * 0 to go on, anything else to stop (that value is returned).  Damaged
 * envelopes met on the way are quarantined after the walk.  Returns 0, the
 * callback's stop value, or -1 + err.  cb must not write to the spool.
 */
typedef int spool_env_fn(void *arg, const struct spool_envelope *env);
int spool_foreach_pending(struct spool *sp, spool_env_fn *cb, void *arg,
			  char *err, size_t errlen);

/* Loads one envelope; caller frees with spool_envelope_free().  Returns 0,
 * 1 when there is no such qid, or -1 + err (a damaged one is quarantined). */
int spool_load(struct spool *sp, const char *qid,
	       struct spool_envelope **env_r, char *err, size_t errlen);

/*
 * Opens a message body for reading.  Inline bodies are copied into memory
 * (spool_body_mem), file bodies are an fd (spool_body_fd); spool_body_read
 * reads either sequentially.  The body's CRC (inline) or size (file) is
 * checked; a damaged message is quarantined and -1 returned.  Returns 0,
 * 1 when there is no such qid, or -1 + err.
 */
int spool_body_open(struct spool *sp, const char *qid,
		    struct spool_body **b_r, char *err, size_t errlen);
/* The body bytes for an inline body (valid until close), else NULL. */
const void *spool_body_mem(const struct spool_body *b, size_t *len_r);
/* The fd of a file body (owned by the body; do not close), else -1. */
int spool_body_fd(const struct spool_body *b);
uint64_t spool_body_size(const struct spool_body *b);
/* Reads up to n bytes at the current position: bytes read, 0 at end, -1. */
ssize_t spool_body_read(struct spool_body *b, void *buf, size_t n);
void spool_body_close(struct spool_body **bp);

/*
 * Records an attempt's result for recipient `rcpt_index` (synchronous, its
 * own write transaction on the calling thread): sets state, reply (copied;
 * NULL keeps the previous one), next_attempt, and counts the attempt.
 * Returns 0, 1 when there is no such qid/recipient, or -1 + err.
 */
int spool_rcpt_update(struct spool *sp, const char *qid, size_t rcpt_index,
		      enum spool_rcpt_state state, const char *reply,
		      int64_t next_attempt, char *err, size_t errlen);

/* Removes a message whose recipients are all DELIVERED or FAILED (else -1,
 * "recipients pending"), including its body file.  0, 1 if no such qid, -1. */
int spool_remove(struct spool *sp, const char *qid, char *err, size_t errlen);

/*
 * The same two changes, queued for the spool thread so they share the group
 * commit with new messages instead of costing the caller's loop one fsync
 * each.  done(arg, rc, qid, err) then runs on base's thread with rc 0
 * (durable), 1 (no such qid or recipient) or -1 (refused, e.g. "recipients
 * pending", or a spool failure; err says which).  Returns 0 when queued, or
 * -1 + err (done is then never called).  Changes to the same qid are
 * applied in the order they were queued.  They still go through when space
 * is short (they free space rather than take it).
 */
int spool_rcpt_update_async(struct spool *sp, const char *qid, size_t rcpt_index,
			    enum spool_rcpt_state state, const char *reply,
			    int64_t next_attempt, struct event_base *base,
			    spool_done_fn *done, void *arg, char *err, size_t errlen);
int spool_remove_async(struct spool *sp, const char *qid, struct event_base *base,
		       spool_done_fn *done, void *arg, char *err, size_t errlen);

/* Moves a message to quarantine with `reason` (also used internally). */
int spool_quarantine(struct spool *sp, const char *qid, const char *reason,
		     char *err, size_t errlen);

/* Lists quarantined messages in qid order: cb(arg, qid, reason, when).
 * Returns 0, the callback's nonzero stop value, or -1 + err. */
typedef int spool_quarantine_fn(void *arg, const char *qid,
				const char *reason, int64_t when);
int spool_foreach_quarantined(struct spool *sp, spool_quarantine_fn *cb,
			      void *arg, char *err, size_t errlen);

/* ---- administration (carrier queue) ---------------------------------- */

/*
 * Calls cb for every envelope in the spool, in qid order: pending, held,
 * and those whose recipients are all final but not yet removed.  Same
 * contract as spool_foreach_pending() otherwise.
 */
int spool_foreach(struct spool *sp, spool_env_fn *cb, void *arg,
		  char *err, size_t errlen);

/*
 * A walk in steps, each step its own read transaction holding the
 * environment lock only for its length: a long walk (a summary of a
 * million messages) neither pins the pages commits free meanwhile (LMDB
 * cannot reuse them while a reader is open, so the file would grow) nor
 * keeps a reopen after MDB_PANIC waiting.  Messages are met in qid order,
 * each step after the last key the previous one read; new messages (higher
 * qids) are met if they arrive before the walk gets there, removed ones
 * are not: every message present for the whole walk is met exactly once.
 */
struct spool_walk {
	size_t max;                  /* keys one step reads at most; 0 = all */
	bool done;                   /* the last step reached the end */
	unsigned char pos[512];      /* private: the last key read */
	size_t pos_len;
};

/* Starts a walk after the qid `after` (NULL or "": at the first message),
 * reading at most `max` keys per step. */
void spool_walk_init(struct spool_walk *w, const char *after, size_t max);

/*
 * One step: calls cb for the envelopes of the next w->max keys (damaged
 * ones are quarantined, not passed), as spool_foreach().  Sets w->done when
 * the step reached the end.  Returns 0, cb's stop value (the next step
 * goes on after the envelope that stopped), or -1 + err.  Any thread.
 */
int spool_foreach_step(struct spool *sp, struct spool_walk *w, spool_env_fn *cb,
		       void *arg, char *err, size_t errlen);

/*
 * Administrative changes.  A held message (envelope flag `held`, an
 * optional field of the envelope record, so format 1 is unchanged: a
 * carrierd older than the flag would ignore it) is skipped by
 * spool_foreach_pending(), so the delivery runner leaves it alone until it
 * is released.  An attempt already running when the hold lands still
 * records its result.
 */
enum spool_admin_op {
	SPOOL_ADMIN_HOLD,       /* set the hold flag */
	SPOOL_ADMIN_RELEASE,    /* clear it */
	SPOOL_ADMIN_RETRY,      /* next_attempt = 0 on QUEUED/DEFERRED recipients
				 * (no attempt is counted); a held message is
				 * left as it is (SPOOL_ADMIN_NOOP) */
	SPOOL_ADMIN_FAIL,       /* QUEUED/DEFERRED recipients -> FAILED with
				 * `reason` as their last reply */
	SPOOL_ADMIN_DELETE,     /* remove the message (and its body) whatever
				 * its recipients' state */
};

/* Per-qid results of spool_admin(). */
enum spool_admin_result {
	SPOOL_ADMIN_DONE = 0,   /* changed */
	SPOOL_ADMIN_ABSENT = 1, /* no such qid */
	SPOOL_ADMIN_NOOP = 2,   /* nothing to change (already held, released,
				 * or no pending recipient) */
	SPOOL_ADMIN_DAMAGED = 3,/* the envelope was damaged and is now quarantined */
};

/*
 * Applies `op` to the `n` messages in `qids` in one write transaction (one
 * fsync) on the calling thread (it takes LMDB's writer lock, so it may wait
 * for one in-progress group commit).  `reason` is used by SPOOL_ADMIN_FAIL
 * (NULL: "failed by administrator").  results[i] (an array of n, may be
 * NULL) gets an enum spool_admin_result per qid.  Returns the number of
 * messages changed, or -1 + err (nothing was changed).
 */
int spool_admin(struct spool *sp, enum spool_admin_op op, const char *const *qids,
		size_t n, const char *reason, int *results, char *err, size_t errlen);

#endif
