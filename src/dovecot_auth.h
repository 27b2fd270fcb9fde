/*
 * dovecot_auth: asks Dovecot's authentication server (its auth-client
 * socket, protocol "VERSION 1") whether a user name and password are good,
 * so that submission can share Dovecot's users ([auth] dovecot_socket).
 *
 * Owns: one request = one connection to the socket: the handshake (wait
 * for DONE), one AUTH PLAIN with the whole response, the answer (OK, FAIL,
 * anything else is a temporary failure), a timeout.
 *
 * Must not: block (libevent, non-blocking), log a password, keep it after
 * the request is written.
 *
 * Threads: the loop thread running `base`.
 */
#ifndef CARRIER_DOVECOT_AUTH_H
#define CARRIER_DOVECOT_AUTH_H

#include <stdbool.h>
#include <stddef.h>

struct event_base;
struct dovecot_auth;

enum dovecot_auth_result {
	DOVECOT_AUTH_OK = 0,       /* good: `user` is the name Dovecot knows */
	DOVECOT_AUTH_FAIL,         /* wrong user or password */
	DOVECOT_AUTH_TEMPFAIL,     /* no answer, protocol error, timeout */
};

/* Called once, on the loop; `user` and `reason` are valid during the call. */
typedef void dovecot_auth_done_fn(void *arg, enum dovecot_auth_result r, const char *user,
				  const char *reason);

/*
 * Starts one request: `user`/`pass` (copied, the password only into the
 * request line), `client` the client's address (rip=), `secured` when the
 * client speaks TLS.  Returns the request, or NULL with a reason (then
 * `done` is never called).  `done` runs once unless dovecot_auth_cancel()
 * comes first.
 */
struct dovecot_auth *dovecot_auth_start(struct event_base *base, const char *socket_path,
					const char *user, const char *pass, const char *client,
					bool secured, unsigned timeout_s,
					dovecot_auth_done_fn *done, void *arg,
					char *err, size_t errlen);

/* Drops a request without calling back; clears *ap. */
void dovecot_auth_cancel(struct dovecot_auth **ap);

#endif
