/*
 * verifier: password checks against the AUTH password table (passwd.h) on
 * worker threads, so that a yescrypt hash (tens of milliseconds) never
 * runs on an event-loop thread.
 *
 * Owns: a few worker threads, the bounded list of checks waiting for them
 * (each with a copy of the login and password, wiped as soon as the hash
 * is done, and a reference to the table it was submitted with, so that a
 * reload swapping the table never frees it under a worker), and the event
 * that hands the answers back to the loop.
 *
 * Must not: touch the caller's objects from a worker (a worker sees only
 * its job), log or keep a password.
 *
 * Threads: every function is called on the thread running `base`, and the
 * answers are delivered there; the workers run passwd_db_verify only.
 */
#ifndef CARRIER_VERIFIER_H
#define CARRIER_VERIFIER_H

#include <stdbool.h>
#include <stddef.h>

struct event_base;
struct passwd_db;
struct verifier;
struct verifier_job;

/* The answer, on the loop thread: `ok` when the password matched. */
typedef void verifier_done_fn(void *arg, bool ok);

/*
 * Starts `threads` workers (at least 1) answering on `base` (libevent
 * threading must be on: evthread_use_pthreads before the base is made).
 * Returns NULL with a reason in err.  Free with verifier_free.
 */
struct verifier *verifier_new(struct event_base *base, unsigned threads, char *err,
			      size_t errlen);

/*
 * Queues a check of `user`/`pass` (both copied) against `db` (a reference
 * is taken; NULL checks against nothing: always false).  `fn` is called
 * once, on the loop thread, from a later loop pass, unless the job is
 * cancelled first.  Returns the job, or NULL when `max` checks are already
 * in progress (waiting or being hashed: *full_r is true) or memory ran out
 * (*full_r false); `fn` is then never called.  The returned pointer stays
 * valid until `fn` is called or verifier_cancel.
 */
struct verifier_job *verifier_submit(struct verifier *v, struct passwd_db *db,
				     const char *user, const char *pass, size_t max,
				     verifier_done_fn *fn, void *arg, bool *full_r);

/* The caller goes away: `fn` is never called for *jobp, a check still
 * waiting is dropped at once, one being hashed is discarded when done.
 * Clears *jobp; NULL is ignored. */
void verifier_cancel(struct verifier_job **jobp);

/* Checks holding a place against `max`: waiting, being hashed (even when
 * cancelled: the thread is busy all the same), or hashed and not yet
 * handed back. */
size_t verifier_pending(const struct verifier *v);

/* Stops the workers (each finishes the hash it is on), drops the checks
 * left without calling back, frees, and clears *vp.  NULL is ignored. */
void verifier_free(struct verifier **vp);

#endif
