/*
 * smtp_server: inbound SMTP sessions.
 *
 * This header is the daemon-facing contract: carrierd hands accepted
 * sockets to the server and asks it how many sessions are open and to shut
 * down.  The session engine (state machine, limits, timeouts, DATA/BDAT,
 * Received header) makes no policy or storage decision itself; it calls the
 * policy and spool modules through callbacks wired in smtp_server_new().
 *
 * Threads: every function is called on the thread running `base`.
 */
#ifndef CARRIER_SMTP_SERVER_H
#define CARRIER_SMTP_SERVER_H

#include <stddef.h>
#include <sys/socket.h>

#include "conf.h"
#include "counters.h"
#include "evlog.h"

struct event_base;
struct spool;
struct smtp_server;

/*
 * Creates the server.  `conf`, `log`, `ctr` and `spool` must outlive it
 * (`spool` may be NULL: the server then answers DATA with 451 4.3.0).
 * Returns NULL with a reason in err.
 */
struct smtp_server *smtp_server_new(struct event_base *base,
				    const struct carrier_conf *conf,
				    struct evlog *log, struct counters *ctr,
				    struct spool *spool, char *err, size_t errlen);

/* Takes ownership of the accepted, nonblocking socket `fd` from peer `sa`.
 * Enforces the connection limits (421 4.7.0 and close beyond them).
 * Returns 0, or -1 when the socket was closed. */
int smtp_server_accept(struct smtp_server *srv, int fd,
		       const struct sockaddr *sa, socklen_t salen);

/* Listener roles for smtp_server_accept_on(). */
enum {
	SMTP_SERVER_SUBMISSION = 1,    /* AUTH (and TLS) required before MAIL */
	SMTP_SERVER_IMPLICIT_TLS = 2,  /* TLS from the first byte (RFC 8314) */
};

/* Same as smtp_server_accept, for a listener with `flags` (SMTP_SERVER_*). */
int smtp_server_accept_on(struct smtp_server *srv, int fd, const struct sockaddr *sa,
			  socklen_t salen, unsigned flags);

/* Swaps in TLS contexts (tls.h): takes over the caller's reference and
 * drops the previous one (sessions keep theirs).  NULL: no TLS. */
struct tls;
void smtp_server_set_tls(struct smtp_server *srv, struct tls *tls);

/* Swaps in the AUTH password table (passwd.h), taking ownership and
 * freeing the previous one.  NULL: AUTH not offered. */
struct passwd_db;
void smtp_server_set_passwd(struct smtp_server *srv, struct passwd_db *db);

/* Called on the loop thread after each message is durably queued, so the
 * delivery side can start at once instead of at its next scan. */
typedef void smtp_server_queued_fn(void *arg, const char *qid);
void smtp_server_on_queued(struct smtp_server *srv, smtp_server_queued_fn *fn, void *arg);

/* Records each accepted message in the tracking log (NULL: off). */
struct track;
void smtp_server_set_track(struct smtp_server *srv, struct track *track);

/* Swaps in a reloaded configuration; sessions pick it up at their next
 * transaction.  The old conf must stay valid until this returns. */
void smtp_server_set_conf(struct smtp_server *srv, const struct carrier_conf *conf);

/* Sessions currently open. */
size_t smtp_server_sessions(const struct smtp_server *srv);

/* Begins a graceful stop: idle sessions get 421 4.3.2 and close; sessions
 * inside a transaction finish it and then get 421. */
void smtp_server_shutdown(struct smtp_server *srv);

/* Closes every session (those left after the drain bound) and frees. */
void smtp_server_free(struct smtp_server **srvp);

#endif
