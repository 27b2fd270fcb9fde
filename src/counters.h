/*
 * counters: the daemon's counters, in POSIX shared memory when it can be
 * had, in private memory otherwise.
 *
 * Shared memory lets `carrier stats` and `carrier top` read counters
 * without the daemon's help (even when it is stopped or wedged).  It is
 * never essential: when the object cannot be created the daemon counts
 * privately, logs one COUNTERS_PRIVATE warning, and serves the counters
 * over the control socket instead (counters_ctl.h).
 *
 * Layout (COUNTERS_LAYOUT): a versioned header, the global counters
 * indexed by enum counters_id, then a fixed table of COUNTERS_HOPS next-hop
 * slots (RFC 1566 MTA-MIB group table spirit).  Any change to the structs
 * or lists below bumps COUNTERS_LAYOUT; readers refuse a layout they do not
 * know.  Names in the lists are stable: they are the JSON keys of
 * `carrier stats --json`, the control socket fields and (with "carrier_"
 * and "_total" for counters) the metric names.
 *
 * Threads: writers update with relaxed atomics from any thread, no locks;
 * counters_hop() claims a slot lock-free.  Readers (another process, or
 * the metrics endpoint) take a snapshot with counters_snapshot().
 *
 * Who counts what (the contract for the modules):
 *   smtp_server   CONN_IN_*, MSG/RCPT_RECEIVED, BYTES_IN, LOOPS_DETECTED
 *   agents        CONN_OUT_*, BYTES_OUT, MSG/RCPT_DELIVERED/DEFERRED/
 *                 BOUNCED (local delivery counts its own), and per hop
 *   sched/spool   QUEUE_* gauges (+ when a message enters a state, - when
 *                 it leaves), MSG/RCPT_EXPIRED, SPOOL_*
 *   dns           DNS_LOOKUPS, DNS_FAILURES
 */
#ifndef CARRIER_COUNTERS_H
#define CARRIER_COUNTERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "evlog.h"

#define COUNTERS_MAGIC 0x43415252u      /* "CARR" */
#define COUNTERS_LAYOUT 3

/* What a value means, for readers: a counter only goes up (rates are
 * deltas), a gauge goes up and down, a time is Unix seconds (0 = never;
 * metrics name it <name>_timestamp_seconds). */
enum counters_kind { COUNTERS_COUNTER, COUNTERS_GAUGE, COUNTERS_TIME };

/*
 * Global counters: X(SYM, name, kind, family, state, help).  `family` is
 * the metric name without "carrier_"; entries of one family differ by the
 * label state="..." (empty: no label) and stay adjacent.
 */
#define COUNTERS_LIST(X)                                                                     \
	X(CONN_IN_CURRENT, "connections_in_current", GAUGE, "connections_in_current", "",      \
	  "Inbound SMTP connections open now")                                                 \
	X(CONN_IN_TOTAL, "connections_in", COUNTER, "connections_in", "",                      \
	  "Inbound SMTP connections accepted")                                                 \
	X(CONN_IN_REJECTED, "connections_in_rejected", COUNTER, "connections_in_rejected", "", \
	  "Inbound connections refused by limits or policy")                                   \
	X(CONN_OUT_CURRENT, "connections_out_current", GAUGE, "connections_out_current", "",   \
	  "Outbound SMTP/LMTP connections open now")                                           \
	X(CONN_OUT_TOTAL, "connections_out", COUNTER, "connections_out", "",                   \
	  "Outbound connections attempted")                                                    \
	X(CONN_OUT_FAILED, "connections_out_failed", COUNTER, "connections_out_failed", "",    \
	  "Outbound connections that failed (connect, TLS, greeting)")                          \
	X(MSG_RECEIVED, "messages_received", COUNTER, "messages_received", "",                 \
	  "Messages accepted (250 after DATA/BDAT)")                                           \
	X(RCPT_RECEIVED, "recipients_received", COUNTER, "recipients_received", "",            \
	  "Recipients of accepted messages")                                                   \
	X(MSG_DELIVERED, "messages_delivered", COUNTER, "messages_delivered", "",              \
	  "Message deliveries that succeeded")                                                 \
	X(RCPT_DELIVERED, "recipients_delivered", COUNTER, "recipients_delivered", "",         \
	  "Recipients delivered")                                                              \
	X(MSG_DEFERRED, "messages_deferred", COUNTER, "messages_deferred", "",                 \
	  "Delivery attempts deferred (temporary failure)")                                    \
	X(RCPT_DEFERRED, "recipients_deferred", COUNTER, "recipients_deferred", "",            \
	  "Recipients deferred")                                                               \
	X(MSG_BOUNCED, "messages_bounced", COUNTER, "messages_bounced", "",                    \
	  "Messages that failed permanently")                                                  \
	X(RCPT_BOUNCED, "recipients_bounced", COUNTER, "recipients_bounced", "",               \
	  "Recipients that failed permanently")                                                \
	X(MSG_EXPIRED, "messages_expired", COUNTER, "messages_expired", "",                    \
	  "Messages bounced at the end of their queue lifetime")                               \
	X(RCPT_EXPIRED, "recipients_expired", COUNTER, "recipients_expired", "",               \
	  "Recipients bounced at the end of their queue lifetime")                             \
	X(BYTES_IN, "bytes_in", COUNTER, "bytes_in", "",                                       \
	  "Message bytes received")                                                            \
	X(BYTES_OUT, "bytes_out", COUNTER, "bytes_out", "",                                    \
	  "Message bytes sent to next hops")                                                   \
	X(QUEUE_ACTIVE_MSGS, "queue_active_messages", GAUGE, "queue_messages", "active",       \
	  "Messages in the queue, by state")                                                   \
	X(QUEUE_DEFERRED_MSGS, "queue_deferred_messages", GAUGE, "queue_messages", "deferred", \
	  "Messages in the queue, by state")                                                   \
	X(QUEUE_HELD_MSGS, "queue_held_messages", GAUGE, "queue_messages", "held",             \
	  "Messages in the queue, by state")                                                   \
	X(QUEUE_ACTIVE_BYTES, "queue_active_bytes", GAUGE, "queue_bytes", "active",            \
	  "Bytes of the messages in the queue, by state")                                      \
	X(QUEUE_DEFERRED_BYTES, "queue_deferred_bytes", GAUGE, "queue_bytes", "deferred",      \
	  "Bytes of the messages in the queue, by state")                                      \
	X(QUEUE_HELD_BYTES, "queue_held_bytes", GAUGE, "queue_bytes", "held",                  \
	  "Bytes of the messages in the queue, by state")                                      \
	X(SPOOL_COMMITS, "spool_commits", COUNTER, "spool_commits", "",                        \
	  "Spool group commits")                                                               \
	X(SPOOL_COMMIT_MSGS, "spool_committed_messages", COUNTER, "spool_committed_messages", "", \
	  "Messages and updates made durable by group commits")                                \
	X(SPOOL_FSYNCS, "spool_fsyncs", COUNTER, "spool_fsyncs", "",                           \
	  "fsync calls made by the spool")                                                     \
	X(DNS_LOOKUPS, "dns_lookups", COUNTER, "dns_lookups", "",                              \
	  "DNS lookups started")                                                               \
	X(DNS_FAILURES, "dns_failures", COUNTER, "dns_failures", "",                           \
	  "DNS lookups that failed or timed out (not NXDOMAIN)")                               \
	X(LOOPS_DETECTED, "loops_detected", COUNTER, "loops_detected", "",                     \
	  "Messages refused for too many Received headers")

enum counters_id {
#define X(sym, name, kind, family, state, help) COUNTER_##sym,
	COUNTERS_LIST(X)
#undef X
	COUNTERS_N
};

/*
 * Per next hop fields: X(SYM, name, kind, help).  Gauges and times are
 * kept by the caller (add +1/-1 or set); counters only go up.
 */
#define COUNTERS_HOP_LIST(X)                                                               \
	X(QUEUE_MSGS, "queue_messages", GAUGE, "Messages queued for the next hop")             \
	X(QUEUE_BYTES, "queue_bytes", GAUGE, "Bytes queued for the next hop")                   \
	X(OLDEST, "oldest_arrival", TIME, "Arrival time of the oldest queued message")          \
	X(CONN_ACTIVE, "connections_active", GAUGE, "Outbound connections open to the next hop") \
	X(CONN_TOTAL, "connections", COUNTER, "Outbound connections made to the next hop")      \
	X(CONN_FAILED, "connections_failed", COUNTER, "Failed connections to the next hop")     \
	X(MSG_OUT, "messages_delivered", COUNTER, "Messages delivered to the next hop")         \
	X(MSG_DEFERRED, "messages_deferred", COUNTER, "Deliveries to the next hop deferred")    \
	X(MSG_BOUNCED, "messages_bounced", COUNTER, "Deliveries to the next hop failed permanently") \
	X(BYTES_OUT, "bytes_out", COUNTER, "Message bytes sent to the next hop")                \
	X(TLS_SESSIONS, "tls_sessions", COUNTER, "Deliveries to the next hop made under TLS")    \
	X(TLS_FAILURES, "tls_failures", COUNTER,                                                 \
	  "Connections to the next hop that failed in STARTTLS, the handshake or the certificate check") \
	X(LAST_FAILURE, "last_failure", TIME, "Time of the last failure")                  \
	X(NEXT_RETRY, "next_retry", TIME, "Next scheduled attempt")                        \
	X(LAST_USED, "last_used", TIME, "Last time the slot was looked up")

enum counters_hop_field {
#define X(sym, name, kind, help) HOP_##sym,
	COUNTERS_HOP_LIST(X)
#undef X
	COUNTERS_HOP_N
};

#define COUNTERS_HOPS 256               /* slots, the last one is "other" */
#define COUNTERS_HOP_KEY_MAX 128        /* key bytes incl. NUL; longer keys are truncated */
#define COUNTERS_REASON_MAX 160         /* failure reason incl. NUL; truncated */
#define COUNTERS_HOP_OTHER "other"      /* key of the overflow slot */

enum counters_hop_state { COUNTERS_HOP_FREE, COUNTERS_HOP_CLAIMING, COUNTERS_HOP_USED };

/* One next hop.  Writers use the functions below, never the fields. */
struct counters_hop {
	uint32_t state;                 /* enum counters_hop_state */
	uint32_t reason_seq;            /* odd while `reason` is being written */
	int64_t f[COUNTERS_HOP_N];
	char key[COUNTERS_HOP_KEY_MAX];
	char reason[COUNTERS_REASON_MAX];
};

/* The shared layout.  Readers check magic and layout before trusting it. */
struct counters_shm {
	uint32_t magic;
	uint32_t layout;
	uint32_t n_counters;            /* COUNTERS_N */
	int32_t pid;
	int64_t started;                /* unix seconds */
	uint32_t n_hops;                /* COUNTERS_HOPS */
	uint32_t n_hop_fields;          /* COUNTERS_HOP_N */
	uint32_t hops_full;             /* a key went to "other" (warned once) */
	uint32_t reserved;
	int64_t v[COUNTERS_N];
	struct counters_hop hops[COUNTERS_HOPS];
};

struct counters;

/*
 * Opens the shared object `name` (e.g. "/carrier"), creating it, or falls
 * back to private memory with one EV_COUNTERS_PRIVATE warning.  Returns
 * NULL only when even private memory cannot be had.  `log` (may be NULL)
 * must outlive the counters: it gets COUNTERS_HOPS_FULL later.
 */
struct counters *counters_open(const char *name, struct evlog *log);
/* Unmaps; unlinks the shared object when `unlink_shm`.  Clears *cp. */
void counters_close(struct counters **cp, bool unlink_shm);

bool counters_shared(const struct counters *c);
/* The shared object's name as given to counters_open(). */
const char *counters_shm_name(const struct counters *c);

/* Adds `d` (may be negative, for gauges) to global counter `id`.  Any
 * thread, lock-free. */
static inline void counters_add(struct counters_shm *s, enum counters_id id, int64_t d)
{
	__atomic_add_fetch(&s->v[id], d, __ATOMIC_RELAXED);
}

/* The live block, valid until counters_close(). */
struct counters_shm *counters_block(struct counters *c);

/* "messages_received"; "?" for an unknown id. */
const char *counters_name(enum counters_id id);
enum counters_kind counters_kind_of(enum counters_id id);
const char *counters_family(enum counters_id id);  /* "queue_messages" */
const char *counters_state(enum counters_id id);   /* "active" or "" */
const char *counters_help(enum counters_id id);
const char *counters_hop_field_name(enum counters_hop_field f);
enum counters_kind counters_hop_field_kind(enum counters_hop_field f);
const char *counters_hop_field_help(enum counters_hop_field f);

/* ---- per next hop (writers) ------------------------------------------- */

/*
 * The slot of next hop `key` ("mx:example.com", "smtp:[127.0.0.1]:2526",
 * "local"), claimed on first use.  When every slot is taken the key shares
 * the "other" slot (one COUNTERS_HOPS_FULL warning).  Slots are never
 * freed or reused while the daemon runs, so the pointer stays valid until
 * counters_close(): look it up once per destination and keep it.  Cost: a
 * hash and usually one string compare; lock-free, any thread.  Returns
 * NULL when c or key is NULL or key is empty; every function below
 * accepts a NULL slot and does nothing.
 */
struct counters_hop *counters_hop(struct counters *c, const char *key);

/* Adds n (may be negative, for gauges) to `field`. */
void counters_hop_add(struct counters_hop *h, enum counters_hop_field field, int64_t n);
/* Sets `field` (gauges and times: HOP_OLDEST, HOP_NEXT_RETRY, ...). */
void counters_hop_set(struct counters_hop *h, enum counters_hop_field field, int64_t v);

/*
 * Records the last failure: `reason` (copied, truncated to
 * COUNTERS_REASON_MAX - 1 bytes, control characters replaced by '?'), e.g.
 * "connect 192.0.2.1:25: Connection refused" or "451 4.3.0 try later", and
 * its time (Unix seconds) into HOP_LAST_FAILURE.  It does not count: add
 * HOP_CONN_FAILED (a connection failed) or HOP_MSG_DEFERRED yourself.
 */
void counters_hop_set_failure(struct counters_hop *h, const char *reason, int64_t t);
/* Sets HOP_NEXT_RETRY (Unix seconds; 0 = none scheduled). */
void counters_hop_set_next_retry(struct counters_hop *h, int64_t t);

/* A message for the hop was queued (sign > 0) or left its queue (< 0). */
void counters_hop_queue(struct counters_hop *h, int sign, uint64_t bytes);

/*
 * Outbound events, global and per hop in one call (each a few relaxed
 * atomics; c and h may be NULL).  An agent calls, per connection:
 * conn_out_open() once it has a socket (then conn_out_close() when it
 * closes), or conn_out_failed() when connecting/greeting/TLS failed; and
 * per message and next hop, one of delivered/deferred/bounced with the
 * number of recipients it concerns.  `reason` is the reply or the error;
 * `now` Unix seconds.
 */
void counters_conn_out_open(struct counters *c, struct counters_hop *h);
void counters_conn_out_close(struct counters *c, struct counters_hop *h);
void counters_conn_out_failed(struct counters *c, struct counters_hop *h,
			      const char *reason, int64_t now);
void counters_out_delivered(struct counters *c, struct counters_hop *h,
			    unsigned rcpts, uint64_t bytes);
void counters_out_deferred(struct counters *c, struct counters_hop *h,
			   unsigned rcpts, const char *reason, int64_t now);
void counters_out_bounced(struct counters *c, struct counters_hop *h,
			  unsigned rcpts, const char *reason, int64_t now);

/*
 * Outbound TLS results per next hop (issue 7): `ok` = one delivery job ran
 * under TLS (the SMTP client's result names a TLS version and cipher):
 * HOP_TLS_SESSIONS; !ok = one connection failed because of TLS (no
 * STARTTLS where required, STARTTLS refused, handshake or certificate
 * check failed): HOP_TLS_FAILURES.  The failure itself is counted by
 * counters_conn_out_failed() as usual; this only says it was TLS.
 */
void counters_out_tls(struct counters_hop *h, bool ok);

/* ---- readers ----------------------------------------------------------- */

/*
 * Copies a live block (shared or private, being written by other threads)
 * into *copy_r with atomic loads; the failure reasons are read
 * consistently (retrying while a writer is in the middle) and always
 * NUL-terminated.
 */
void counters_snapshot(const struct counters_shm *live, struct counters_shm *copy_r);

/* Reads slot `h`'s failure reason into buf (always terminated). */
void counters_hop_reason(const struct counters_hop *h, char *buf, size_t size);

/*
 * Tries to create and map a shared object like counters_open() would,
 * then removes it.  Returns 0, or -1 with the reason (doctor's check).
 */
int counters_probe(const char *name, char *err, size_t errlen);

/* counters_attach() results. */
enum counters_attach_result {
	COUNTERS_ATTACH_OK = 0,
	COUNTERS_ATTACH_FAILED = -1,    /* permission, mmap, ...: see err */
	COUNTERS_ATTACH_MISSING = -2,   /* no such object (daemon down or private) */
	COUNTERS_ATTACH_LAYOUT = -3,    /* another layout or not a counters block */
};

/*
 * Maps a daemon's block read-only and takes a snapshot into *copy_r (the
 * CLI; the struct is large: allocate it).  Returns a counters_attach_result
 * with err a sentence, e.g. "/carrier: counters layout 1, this carrier
 * reads layout 2 (carrier and carrierd are different versions)".
 */
int counters_attach(const char *name, struct counters_shm *copy_r, char *err, size_t errlen);

#endif
