/*
 * schedule: when each recipient is tried next.  Pure: no I/O, no clock, no
 * global state; the caller passes `now` and a PRNG state of its own.
 *
 * Owns the retry policy: the backoff schedule with jitter, the queue
 * lifetime (expiry), the one-time delay warning, and how many connections
 * a next hop gets for its backlog.  Must not: open connections, read or
 * write the spool (the runner stores next_attempt in the spool's
 * per-recipient record, so the schedule survives restarts).
 *
 * Named schedule, not sched (DESIGN.md's module name): src/ is on the
 * include path, and a src/sched.h would shadow the system <sched.h> that
 * <pthread.h> includes.
 *
 * Threads: reentrant; a policy is read-only once filled.
 */
#ifndef CARRIER_SCHEDULE_H
#define CARRIER_SCHEDULE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Messages of backlog per connection to one next hop (see schedule_hop_limit). */
#define SCHEDULE_MSGS_PER_CONN 4u
/* Jitter: the delay is moved by up to 1/SCHEDULE_JITTER_DIV either way. */
#define SCHEDULE_JITTER_DIV 10

struct schedule_policy {
	const unsigned *schedule;   /* seconds; the last repeats; n >= 1 */
	size_t n;
	int64_t lifetime;           /* seconds from arrival, then expire */
	int64_t delay_warning;      /* seconds from arrival; 0 = never */
};

/* Seeds a PRNG state (xorshift64*); any seed works, 0 included. */
void schedule_rand_seed(uint64_t *state, uint64_t seed);
/* Next 64-bit pseudo-random value; updates *state. */
uint64_t schedule_rand_next(uint64_t *state);

/*
 * Delay before the next attempt after a temporary failure, when
 * `attempts` attempts were made before the one that just failed:
 * schedule[min(attempts, n-1)] moved by a uniform jitter of up to 10%
 * (never below 1 s).  An empty schedule counts as { 60 }.
 */
int64_t schedule_delay(const struct schedule_policy *p, uint32_t attempts, uint64_t *rnd);

/* Unix time at which a message that arrived at `arrival` expires. */
int64_t schedule_expiry(const struct schedule_policy *p, int64_t arrival);
/* True when it has expired at `now`. */
bool schedule_expired(const struct schedule_policy *p, int64_t arrival, int64_t now);

enum schedule_verdict {
	SCHEDULE_RETRY,    /* defer until *next_r */
	SCHEDULE_EXPIRE,   /* lifetime over: fail the recipient (bounce) */
};

/*
 * What to do with a recipient whose attempt at `now` failed temporarily.
 * SCHEDULE_RETRY sets *next_r to now + schedule_delay(), brought forward to the
 * expiry time when that comes first (so the last try and the bounce come
 * on time, not a backoff step late).
 */
enum schedule_verdict schedule_temp_failure(const struct schedule_policy *p, int64_t arrival,
				      uint32_t attempts, int64_t now, uint64_t *rnd,
				      int64_t *next_r);

/*
 * Whether a delay warning is due for a recipient that is (still) deferred
 * at `now`: a delay_warning is set, arrival + delay_warning has passed,
 * none was sent (`warned`), the sender is not null, and NOTIFY allows it
 * (DELAY given, or no NOTIFY at all: RFC 3461 4.1 leaves the default to
 * us and we use FAILURE,DELAY).  `notify` is SPOOL_NOTIFY_* bits.
 */
bool schedule_delay_warning_due(const struct schedule_policy *p, int64_t arrival,
			     int64_t now, unsigned notify, bool warned,
			     bool null_sender);

/*
 * Connections a next hop may use for a backlog of `backlog` messages
 * (in flight + waiting): one per SCHEDULE_MSGS_PER_CONN, at least 1, at
 * most `max` (>= 1).
 */
unsigned schedule_hop_limit(size_t backlog, unsigned max);

#endif
