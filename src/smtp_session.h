/*
 * smtp_session: one inbound SMTP session, internal to smtp_server.
 *
 * Owns: the per-connection state machine (commands, DATA and BDAT reading,
 * pipelining, limits, timeouts, the Received header, the commit hand-off to
 * the spool).  smtp_server.c owns the server object, the session list and
 * the connection accounting; this header is the contract between the two
 * files and is not used by any other module.
 *
 * Must not: decide routing or acceptance (policy does), touch the spool's
 * insides (it uses spool.h), block the loop.
 *
 * Threads: everything runs on the thread running the server's event_base.
 */
#ifndef CARRIER_SMTP_SESSION_H
#define CARRIER_SMTP_SESSION_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "conf.h"
#include "counters.h"
#include "evlog.h"
#include "smtp_server.h"

struct bufferevent;
struct smtp_txn;
struct smtp_commit;
struct smtp_ipent;
struct smtp_sec;
struct tls;
struct passwd_db;
struct auth_limiter;
struct smtp_trace;
struct verifier;

/* A client address, IPv4-mapped IPv6 folded to IPv4. */
union smtp_peer {
	struct sockaddr sa;
	struct sockaddr_in in;
	struct sockaddr_in6 in6;
};

struct smtp_server {
	struct event_base *base;
	const struct carrier_conf *conf;   /* live: re-read at each use */
	struct evlog *log;
	struct counters *ctr;
	struct spool *spool;
	size_t n_sessions;
	bool shutting_down;
	char hostname[CONF_HOST_MAX];
	struct smtp_session *sessions;
	struct smtp_ipent **ip_table;      /* per-address session counts */
	size_t ip_buckets;
	struct track *track;               /* tracking log, NULL = off */
	smtp_server_queued_fn *on_queued;  /* after each durable commit */
	void *on_queued_arg;
	struct tls *tls;                   /* NULL: no certificate, no TLS */
	struct passwd_db *passwd;          /* NULL: AUTH not offered */
	struct auth_limiter *auth_fails;   /* failed AUTH per client address */
	struct verifier *verifier;         /* password-file checks, NULL until the first */
	struct smtp_trace *trace;          /* protocol trace (smtp_trace.h), NULL = none */
};

/* The client's greeting (struct smtp_session.greeted). */
enum { GREETED_NONE = 0, GREETED_HELO = 1, GREETED_EHLO = 2 };

/* What the session is doing with its input. */
enum smtp_mode {
	SMTP_MODE_COMMAND = 0,  /* reading command lines */
	SMTP_MODE_DISCARD,      /* discarding the rest of an over-long line */
	SMTP_MODE_DATA,         /* reading DATA text */
	SMTP_MODE_BDAT,         /* reading a BDAT chunk into the message */
	SMTP_MODE_SKIP,         /* skipping a refused BDAT chunk */
	SMTP_MODE_COMMIT,       /* paused: a spool commit is pending */
	SMTP_MODE_CLOSING,      /* last reply queued; close when written */
	SMTP_MODE_LINGER,       /* written; reading until EOF, then free */
	SMTP_MODE_STARTTLS,     /* 220 queued: input discarded, TLS once written */
	SMTP_MODE_AUTH,         /* reading SASL responses */
	SMTP_MODE_AUTH_DELAY,   /* paused before a failed AUTH's reply */
};

struct smtp_session {
	struct smtp_server *srv;
	struct bufferevent *bev;           /* NULL once the client is gone */
	struct smtp_session *next, *prev;
	struct smtp_ipent *ip;
	struct smtp_txn *txn;              /* NULL outside a transaction */
	struct smtp_commit *commit;        /* pending commit, or NULL */
	char *helo;                        /* HELO/EHLO argument, or NULL */
	union smtp_peer peer;
	uint64_t skip;                     /* refused BDAT bytes left */
	int64_t linger_until;              /* unix seconds */
	int64_t line_since;                /* first byte of a partial line, or 0 */
	const char *close_reason;          /* static text, for the event */
	unsigned errors;
	unsigned messages;
	uint8_t mode;                      /* enum smtp_mode */
	uint8_t greeted;                   /* 0, 1 HELO, 2 EHLO */
	bool helo_valid;
	bool out_blocked;                  /* replies not read: input paused */
	bool gone;                         /* peer gone while committing */
	uint8_t flags;                     /* SMTP_SERVER_* of its listener */
	struct smtp_sec *sec;              /* TLS/AUTH state, NULL until used */
	char addr[INET6_ADDRSTRLEN];       /* "192.0.2.1", "2001:db8::1" */
};

/* Starts a session on the accepted socket `fd` (takes it over): sends the
 * greeting.  The caller has linked nothing yet; on success the session is
 * linked into srv->sessions and counted by smtp_server_link().  Returns the
 * session, or NULL when it could not be set up (fd closed, event emitted). */
struct smtp_session *smtp_session_start(struct smtp_server *srv, int fd,
					const union smtp_peer *peer,
					struct smtp_ipent *ip, unsigned flags);

/* Graceful stop: an idle session gets 421 4.3.2 and closes; one inside a
 * transaction finishes it first. */
void smtp_session_shutdown(struct smtp_session *s);

/* Frees a session at once (server teardown): aborts its transaction and
 * detaches a pending commit, whose completion then does nothing. */
void smtp_session_destroy(struct smtp_session *s);

/* Provided by smtp_server.c: links a new session, and unlinks and uncounts
 * one that is being freed (before its memory goes). */
void smtp_server_link(struct smtp_server *srv, struct smtp_session *s);
void smtp_server_unlink(struct smtp_server *srv, struct smtp_session *s);

/* Shared with smtp_sec.c: a reply line; a refusal (reply, error count,
 * event); the last reply before closing; processing buffered input;
 * reading and timeouts for the current mode; the libevent callbacks on a
 * new bufferevent (after STARTTLS). */
void smtp_session_reply(struct smtp_session *s, unsigned code, const char *enh,
			const char *fmt, ...) __attribute__((format(printf, 4, 5)));
void smtp_session_refuse(struct smtp_session *s, const char *command, unsigned code,
			 const char *enh, const char *text);
void smtp_session_close_after(struct smtp_session *s, unsigned code, const char *enh,
			      const char *text);
void smtp_session_resume(struct smtp_session *s);
/* Frees the session now with a close event naming `reason` (static). */
void smtp_session_end(struct smtp_session *s, const char *reason);
void smtp_session_update_io(struct smtp_session *s);
void smtp_session_set_callbacks(struct smtp_session *s);
/* Forgets the client's EHLO and transaction (after the TLS handshake). */
void smtp_session_reset(struct smtp_session *s);

/* Provided by smtp_server.c: the server's password verifier threads
 * (verifier.h), started at the first password-file check with [auth]
 * verify_threads and kept until the server is freed.  NULL with a reason
 * when they cannot start (the next call tries again). */
struct verifier *smtp_server_verifier(struct smtp_server *srv, char *err, size_t errlen);

/* Formats `peer` as text ("192.0.2.1", "2001:db8::1"). */
void smtp_peer_text(const union smtp_peer *peer, char *buf, size_t size);

#endif
