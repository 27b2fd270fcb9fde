/*
 * smtp_client: the outbound SMTP and LMTP delivery agent (RFC 5321, 2920
 * PIPELINING, 1870 SIZE, 6152 8BITMIME, 6531 SMTPUTF8, 3461 DSN, 2033 LMTP).
 *
 * Owns: outbound connections, their pool (idle connections kept and reused
 * for the next job to the same next hop), the per-destination connection
 * cap, the client state machine and the streaming of the body (dot-stuffed,
 * in bounded chunks).  One attempt per job: it tries the job's destinations
 * in order and reports one result per recipient.
 *
 * Must not: change the spool (it only reads bodies; the caller records the
 * results), decide routing or retries, block the loop on the network.
 *
 * Signals: writes to a peer that hung up raise SIGPIPE; the process must
 * ignore it (carrierd does; tests and tools must too).
 *
 * Threads: a client belongs to one event loop (`base`); every call and
 * every callback happens on the thread running that loop.  N loops use N
 * clients.  The body is read with spool_body_read() (or the caller's
 * reader) on the loop thread in chunks of at most 16 KiB when the socket
 * can take more: small synchronous reads of a local file, never the
 * network.
 *
 * Decisions (documented contract):
 *  - Destinations are tried in order.  Next destination on: connect
 *    failure or timeout, a greeting other than 220 (421 and 554 alike,
 *    RFC 5321 3.1/5.1: a 5xx greeting means "not this host", as Postfix's
 *    smtp_skip_5xx_greeting), a failed EHLO+HELO / LHLO, or the connection
 *    lost / timing out / a malformed reply before MAIL was answered.  When
 *    every destination failed so, every recipient is TEMP (never PERM: a
 *    greeting refusal does not speak for the recipient).
 *  - After MAIL was sent, the outcome is final for this attempt: no
 *    failover.  4xx to MAIL: TEMP for all; 5xx to MAIL: PERM for all.
 *    Each RCPT reply decides its recipient (2xx accepted, 4xx TEMP, 5xx
 *    PERM).  DATA is sent only when a RCPT was accepted (with PIPELINING,
 *    DATA goes with the RCPTs; a 354 with none accepted is answered with an
 *    empty message "." and the transaction dropped).  The reply to DATA and
 *    to the final dot applies to every accepted recipient (LMTP: one reply
 *    per accepted recipient after the dot, in RCPT order).  A connection
 *    lost, a timeout or a malformed reply after MAIL: TEMP for every
 *    recipient not yet decided (the message may have been delivered when
 *    the dot's reply was lost: RFC 1047 duplicates, as every MTA).
 *  - Refused before sending anything (PERM, the connection stays usable):
 *    size over the peer's SIZE limit: 552 5.3.4; SMTPUTF8 message to a peer
 *    without SMTPUTF8: 553 5.6.7 (RFC 6531 3.2); 8BITMIME body to a peer
 *    without 8BITMIME: 554 5.6.3 (RFC 6152 3 allows bouncing instead of
 *    converting; no conversion is done); BINARYMIME body: 554 5.6.3
 *    always (BDAT is not implemented).
 *  - DSN: with the peer's DSN extension, RET/ENVID go on MAIL and
 *    NOTIFY/ORCPT on RCPT.  Without it they are dropped and the result's
 *    `dsn_relayed` is set so the caller can send a "relayed" DSN to a
 *    recipient that asked for NOTIFY=SUCCESS (RFC 3461 5.2.2).
 *  - EHLO: a reply other than 2xx or 421 falls back to HELO (no
 *    extensions).  LMTP sends LHLO only (RFC 2033 4.1).
 *  - Reuse: after a transaction the connection (if still in sync) goes to
 *    the pool under (next-hop key, address); a job for the same key whose
 *    destinations include that address takes it.  It sends RSET first only
 *    when the last transaction was cut short (no DATA, refused MAIL); after
 *    the reply to the dot the server has reset itself (RFC 5321 4.1.1.4)
 *    and MAIL goes at once.  If the pooled connection turns out dead (EOF,
 *    error or timeout before its first reply in the new transaction, or a
 *    failed RSET) the job starts over on a new connection without counting
 *    a failure, at most once.  Idle connections are closed
 *    (QUIT) after idle_timeout.  At most max_conns connections (connecting,
 *    busy or idle) exist per next-hop key; further jobs wait in submission
 *    order for one.
 *  - Timeouts (RFC 5321 4.5.3.2 gives minimums; smtp_client_opts_from_conf
 *    maps [delivery]): connect = connect_timeout; greeting, EHLO, MAIL,
 *    RCPT, RSET, DATA initiation and each data block = command_timeout
 *    (default 5m, above the 2m/3m minimums); the final dot = data_timeout
 *    (default 10m).  A timeout is a connection failure (see above).
 *  - Peer input is bounded: reply lines up to 2048 octets, 100 lines per
 *    reply (smtp_parse); reply text in results is at most
 *    SMTP_CLIENT_TEXT_MAX bytes, control and non-ASCII bytes replaced by
 *    '?', lines joined by "; ".
 *  - Body: lines are sent with CRLF; a bare LF or bare CR becomes CRLF, a
 *    leading "." is doubled, and a missing final CRLF is added before
 *    ".".  Lines longer than 998 octets are sent as they are (the peer
 *    decides).
 *  - TLS (RFC 3207), per job (`tls`): none never sends STARTTLS; may sends
 *    it when offered and goes on in plaintext when it is not offered or is
 *    refused (any certificate is accepted); encrypt requires TLS (any
 *    certificate) and verify requires TLS with the chain checked against
 *    `tls_ca_file` (NULL: the system trust store) and the name against
 *    `tls_name` (NULL: the destination's host).  A required-TLS failure
 *    (no STARTTLS, refused, handshake failed, certificate not verified)
 *    fails that destination -- the next one is tried, never plaintext --
 *    and every recipient is TEMP when none is left.  With may, a reply
 *    other than 220 (and 421) to STARTTLS goes on in plaintext on the same
 *    connection (RFC 3207 4); a failed TLS handshake (error, EOF, timeout)
 *    closes the connection and retries the same address once on a new
 *    connection that never sends STARTTLS (as Postfix does for
 *    opportunistic TLS): the result lists the failed handshake as an
 *    attempt whose reason starts "TLS may:", and the client remembers the
 *    address for `tls_plain_ms` (at most SMTP_CLIENT_PLAIN_MAX addresses,
 *    the oldest forgotten first) so that its next may connections go
 *    plaintext at once.  Data pipelined by the peer
 *    after its 220 to STARTTLS is a protocol error (command injection,
 *    CVE-2011-0411 class).  After TLS, EHLO is sent again and only its
 *    capabilities count.  A pooled connection serves a job that requires
 *    TLS only when it runs TLS (verified, for verify).  LMTP and Unix
 *    sockets never use TLS.  AUTH is not offered.
 */
#ifndef CARRIER_SMTP_CLIENT_H
#define CARRIER_SMTP_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "spool.h"

struct event_base;
struct evlog;
struct carrier_conf;
struct smtp_client;

#define SMTP_CLIENT_TEXT_MAX 512        /* result reply text, incl. NUL */
#define SMTP_CLIENT_HOST_MAX 256        /* host names, incl. NUL */
#define SMTP_CLIENT_ADDR_MAX 128        /* "[addr]:port" or a socket path */
#define SMTP_CLIENT_UNIX_MAX 108        /* sun_path */
#define SMTP_CLIENT_PLAIN_MAX 64        /* addresses remembered as TLS-broken */

enum smtp_client_mode {
	SMTP_CLIENT_SMTP = 0,
	SMTP_CLIENT_LMTP,
};

struct smtp_client_opts {
	/* All times in milliseconds (tests use short ones). */
	unsigned connect_ms;
	unsigned command_ms;   /* greeting, EHLO, MAIL, RCPT, RSET, DATA, blocks */
	unsigned data_ms;      /* final dot */
	unsigned idle_ms;      /* pooled idle connection lifetime; 0 = no pool */
	unsigned max_conns;    /* per next-hop key; >= 1 */
	unsigned tls_plain_ms; /* may: plaintext to an address whose handshake
				* failed, for this long; 0 = not remembered */
	char helo_name[SMTP_CLIENT_HOST_MAX]; /* EHLO/HELO/LHLO argument */
};

/* Fills defaults: 30 s, 5 min, 10 min, 5 s idle, 20 connections,
 * 1 h plaintext after a failed may handshake, helo "localhost". */
void smtp_client_opts_init(struct smtp_client_opts *o);

/* Fills `o` from [delivery] (connect_timeout, command_timeout,
 * data_timeout, max_connections_per_destination, helo_name, else
 * server.hostname); idle stays 5 s, tls_plain_ms 1 h. */
void smtp_client_opts_from_conf(struct smtp_client_opts *o,
				const struct carrier_conf *conf);

/* One concrete destination.  For TCP set addr/addr_len (IPv4 or IPv6, port
 * included) and host (the name it came from, for logs and results, e.g.
 * the MX name; "" is allowed).  For an LMTP Unix socket set unix_path and
 * leave addr_len 0. */
struct smtp_client_dest {
	struct sockaddr_storage addr;
	socklen_t addr_len;
	char host[SMTP_CLIENT_HOST_MAX];
	char unix_path[SMTP_CLIENT_UNIX_MAX];
};

/* Outbound TLS policy.  The zero value is none, so jobs that do not ask
 * keep the plaintext behaviour; a route's "" means may (see
 * smtp_client_tls_parse). */
enum smtp_client_tls {
	SMTP_CLIENT_TLS_NONE = 0,
	SMTP_CLIENT_TLS_MAY,
	SMTP_CLIENT_TLS_ENCRYPT,
	SMTP_CLIENT_TLS_VERIFY,
};

/* "none", "may" (or ""), "encrypt", "verify" -> 0, else -1. */
int smtp_client_tls_parse(const char *s, enum smtp_client_tls *r);
const char *smtp_client_tls_name(enum smtp_client_tls t);

#define SMTP_CLIENT_TLS_TEXT_MAX 96     /* "TLSv1.3 TLS_AES_256_GCM_SHA384" */

struct smtp_client_rcpt {
	const char *addr;       /* mailbox without <>; never NULL */
	unsigned notify;        /* SPOOL_NOTIFY_*; 0 = not given */
	const char *orcpt;      /* "rfc822;x@y" as in the spool (xtext), or NULL */
};

/* Caller-supplied body: returns bytes read (up to n), 0 at the end, -1 on
 * error.  Called on the loop thread. */
typedef ssize_t smtp_client_read_fn(void *arg, void *buf, size_t n);

/*
 * One job: one message to a batch of its recipients that share one next
 * hop.  Everything is copied by smtp_client_submit(): the struct and every
 * string it points to may be freed when submit returns.
 */
struct smtp_client_job {
	enum smtp_client_mode mode;
	/* Pool key: connections are reused only between jobs with the same
	 * key (e.g. "smtp:example.net" or "lmtp:unix:/run/dovecot/lmtp");
	 * the connection cap is per key.  Up to 255 bytes. */
	const char *nexthop;
	const char *qid;                  /* for events and results */
	const char *sender;               /* "" = null reverse-path */
	enum spool_body_type body_type;
	bool smtputf8;
	enum spool_dsn_ret dsn_ret;
	const char *envid;                /* xtext or NULL */
	uint64_t size;                    /* body octets, for SIZE= and the check */
	const struct smtp_client_rcpt *rcpts;
	size_t n_rcpts;                   /* >= 1, at most 1000 */
	const struct smtp_client_dest *dests;
	size_t n_dests;                   /* >= 1, at most 32 */
	/* Body: either `spool` (opened by qid when DATA is reached, closed
	 * before the callback) or `read` (+ read_arg, which must stay valid
	 * until the callback). */
	struct spool *spool;
	smtp_client_read_fn *read;
	void *read_arg;
	/* TLS policy (see the contract above) */
	enum smtp_client_tls tls;
	const char *tls_ca_file;          /* verify: NULL = system trust store */
	const char *tls_name;             /* verify: NULL = the destination's host */
};

enum smtp_client_class {
	SMTP_CLIENT_OK = 0,     /* delivered (accepted by the peer) */
	SMTP_CLIENT_TEMP,       /* try again later */
	SMTP_CLIENT_PERM,       /* bounce */
};

struct smtp_client_rcpt_result {
	enum smtp_client_class cls;
	/* The peer's reply that decided it; code 0 when there was none (e.g.
	 * no connection: text says why).  Our own refusals (SIZE, SMTPUTF8,
	 * 8BITMIME) use the codes above with `local` set. */
	unsigned code;
	char enhanced[12];               /* "5.1.1" or "" */
	char text[SMTP_CLIENT_TEXT_MAX]; /* sanitized, see above */
	bool local;                      /* decided here, not by the peer */
	bool dsn_relayed;                /* NOTIFY could not be passed on */
	char host[SMTP_CLIENT_HOST_MAX]; /* who answered; "" when none */
	char addr[SMTP_CLIENT_ADDR_MAX]; /* "1.2.3.4:25", "[::1]:25", path */
};

/* One failed destination (connect refused, timeout, greeting refused). */
struct smtp_client_attempt {
	char host[SMTP_CLIENT_HOST_MAX];
	char addr[SMTP_CLIENT_ADDR_MAX];
	char reason[SMTP_CLIENT_TEXT_MAX];
};

struct smtp_client_result {
	const char *qid;
	bool connected;                  /* a session reached MAIL */
	char host[SMTP_CLIENT_HOST_MAX]; /* the destination that took it */
	char addr[SMTP_CLIENT_ADDR_MAX];
	bool reused;                     /* on a pooled connection */
	/* "TLSv1.3 TLS_AES_256_GCM_SHA384" when the transaction ran under
	 * TLS, else "" */
	char tls[SMTP_CLIENT_TLS_TEXT_MAX];
	/* Destinations that failed before this one (or all of them when
	 * !connected), in the order tried; a may handshake that failed
	 * before the plaintext retry to the same address is one too. */
	const struct smtp_client_attempt *attempts;
	size_t n_attempts;
	/* rcpts[i] is the result for job->rcpts[i]. */
	const struct smtp_client_rcpt_result *rcpts;
	size_t n_rcpts;
};

/* Called once per submitted job, on the loop, never from inside
 * smtp_client_submit().  `res` and everything in it is valid during the
 * call only.  The callback may submit more jobs. */
typedef void smtp_client_done_fn(void *arg, const struct smtp_client_result *res);

/* Creates a client on `base`.  `opts` NULL = defaults; copied.  `log` may
 * be NULL and must outlive the client.  NULL + err on failure. */
struct smtp_client *smtp_client_new(struct event_base *base,
				    const struct smtp_client_opts *opts,
				    struct evlog *log, char *err, size_t errlen);

/*
 * Starts one job (copies it).  `done(arg, res)` runs exactly once later
 * unless the client is freed first.  Returns 0, or -1 with err (bad job:
 * no recipient or destination, too many, no body source; allocation) and
 * then `done` is never called.
 */
int smtp_client_submit(struct smtp_client *c, const struct smtp_client_job *job,
		       smtp_client_done_fn *done, void *arg,
		       char *err, size_t errlen);

/* Replaces the options (reload); used by new connections and jobs. */
void smtp_client_set_opts(struct smtp_client *c, const struct smtp_client_opts *o);

struct smtp_client_stats {
	uint64_t connects;      /* TCP/Unix connections opened */
	uint64_t reuses;        /* jobs started on a pooled connection */
	uint64_t jobs;          /* callbacks run */
	unsigned open;          /* connections now open (any state) */
	unsigned idle;          /* of them, idle in the pool */
	unsigned waiting;       /* jobs waiting for a connection slot */
};
void smtp_client_stats(const struct smtp_client *c, struct smtp_client_stats *r);

/* Closes idle pooled connections now (with QUIT, not waited for). */
void smtp_client_flush_idle(struct smtp_client *c);

/* Closes every connection at once and drops every job without calling its
 * callback; frees; clears *cp.  NULL and *cp == NULL are fine.  Not from
 * inside a done callback of this client. */
void smtp_client_free(struct smtp_client **cp);

/* "TEMP" etc. */
const char *smtp_client_class_name(enum smtp_client_class cls);

#endif
