/*
 * counters: the daemon's counters, in POSIX shared memory when it can be
 * had, in private memory otherwise.
 *
 * Shared memory lets `carrier stats` read counters without the daemon's
 * help (even when it is stopped or wedged).  It is never essential: when
 * the object cannot be created the daemon counts privately, logs one
 * warning, and serves the counters over the control socket instead.
 *
 * Layout: a versioned header followed by 64-bit counters indexed by
 * enum counters_id.  Writers update with relaxed atomics from any thread.
 */
#ifndef CARRIER_COUNTERS_H
#define CARRIER_COUNTERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "evlog.h"

#define COUNTERS_MAGIC 0x43415252u      /* "CARR" */
#define COUNTERS_LAYOUT 1

#define COUNTERS_LIST(X)                           \
	X(CONN_IN_CURRENT, "connections_in_current")   \
	X(CONN_IN_TOTAL, "connections_in_total")       \
	X(CONN_IN_REJECTED, "connections_in_rejected") \
	X(MSG_RECEIVED, "messages_received")           \
	X(RCPT_RECEIVED, "recipients_received")        \
	X(BYTES_IN, "bytes_in")                        \
	X(MSG_DELIVERED, "messages_delivered")         \
	X(MSG_DEFERRED, "messages_deferred")           \
	X(MSG_BOUNCED, "messages_bounced")             \
	X(SPOOL_COMMITS, "spool_commits")              \
	X(SPOOL_FSYNCS, "spool_fsyncs")                \
	X(LOOPS_DETECTED, "loops_detected")

enum counters_id {
#define X(sym, name) COUNTER_##sym,
	COUNTERS_LIST(X)
#undef X
	COUNTERS_N
};

/* The shared layout.  Readers check magic and layout before trusting it. */
struct counters_shm {
	uint32_t magic;
	uint32_t layout;
	uint32_t n_counters;
	int32_t pid;
	int64_t started;                /* unix seconds */
	uint64_t v[COUNTERS_N];
};

struct counters;

/*
 * Opens the shared object `name` (e.g. "/carrier"), creating it, or falls
 * back to private memory with one EV_COUNTERS_PRIVATE warning.  Returns
 * NULL only when even private memory cannot be had.
 */
struct counters *counters_open(const char *name, struct evlog *log);
/* Unmaps; unlinks the shared object when `unlink_shm`.  Clears *cp. */
void counters_close(struct counters **cp, bool unlink_shm);

bool counters_shared(const struct counters *c);

static inline void counters_add(struct counters_shm *s, enum counters_id id, int64_t d)
{
	__atomic_add_fetch(&s->v[id], (uint64_t)d, __ATOMIC_RELAXED);
}

/* The live block, valid until counters_close(). */
struct counters_shm *counters_block(struct counters *c);

const char *counters_name(enum counters_id id);

/*
 * Tries to create and map a shared object like counters_open() would,
 * then removes it.  Returns 0, or -1 with the reason (doctor's check).
 */
int counters_probe(const char *name, char *err, size_t errlen);

/* Maps a daemon's block read-only (the CLI).  Returns 0 or -1 + err. */
int counters_attach(const char *name, struct counters_shm *copy_r, char *err, size_t errlen);

#endif
