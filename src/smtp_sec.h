/*
 * smtp_sec: TLS and AUTH for an inbound SMTP session, internal to
 * smtp_server (like smtp_session.h).
 *
 * Owns: the session's side state for STARTTLS (RFC 3207), implicit TLS
 * (RFC 8314) and SMTP AUTH (RFC 4954) -- allocated only when a session
 * uses them, so an idle plaintext session stays small -- and the commands
 * and checks that need it: STARTTLS with the injection defence, AUTH
 * PLAIN/LOGIN with the failure delay and limit, the submission role's
 * requirements at MAIL, relay and sender binding for authenticated
 * clients, and the TLS/AUTH parts of the Received header and tracking.
 *
 * Must not: decide policy itself (auth.h does), log a password.
 *
 * Threads: the server's loop thread only.
 */
#ifndef CARRIER_SMTP_SEC_H
#define CARRIER_SMTP_SEC_H

#include <stdbool.h>
#include <stddef.h>

#include "policy.h"
#include "smtp_parse.h"
#include "smtp_session.h"

struct evbuffer;

/* Frees the side state (session teardown). */
void smtp_sec_free(struct smtp_session *s);

/* Implicit TLS: the session's bufferevent for the accepted `fd`, or NULL
 * (no certificate, out of memory).  The handshake starts at once. */
struct bufferevent *smtp_sec_implicit_bev(struct smtp_session *s, int fd);

/* The STARTTLS command: 220 and the switch once it is written. */
void smtp_sec_starttls(struct smtp_session *s);

/* SMTP_MODE_STARTTLS: discards what the client pipelined after STARTTLS. */
void smtp_sec_discard(struct smtp_session *s, struct evbuffer *in);

/* The 220 is written: wraps the socket in TLS (from write_cb). */
void smtp_sec_switch(struct smtp_session *s);

/* A bufferevent event under TLS; returns true when handled here. */
bool smtp_sec_event(struct smtp_session *s, short what);

/* The AUTH command, and each response line in SMTP_MODE_AUTH (returns
 * false when no complete line is buffered yet). */
void smtp_sec_auth(struct smtp_session *s, const struct smtp_parse_command *cmd);
bool smtp_sec_input(struct smtp_session *s, struct evbuffer *in);

/* EHLO keywords: STARTTLS and AUTH when offered (appended to `out`). */
void smtp_sec_ehlo(struct smtp_session *s, struct evbuffer *out);

/* MAIL: the submission role's requirements and sender binding; replies
 * and returns false when refused. */
bool smtp_sec_mail_allowed(struct smtp_session *s, const struct smtp_parse_command *cmd);

/* RCPT: an authenticated client may relay. */
void smtp_sec_rcpt(struct smtp_session *s, struct policy_result *pr);

/* The last reply is written: sends TLS close_notify before the half-close. */
void smtp_sec_close_notify(struct smtp_session *s);

/* True once the session runs under TLS / has authenticated. */
bool smtp_sec_tls_active(const struct smtp_session *s);
const char *smtp_sec_login(const struct smtp_session *s);   /* NULL: none */

/* "version=TLSv1.3 cipher=..." for the Received header, "" without TLS;
 * "TLSv1.3 TLS_AES_..." for the tracking log (NULL without TLS). */
void smtp_sec_received_tls(const struct smtp_session *s, char *buf, size_t size);
const char *smtp_sec_track_tls(const struct smtp_session *s, char *buf, size_t size);

/* An AUTH command line may be longer than command_line_max. */
bool smtp_sec_is_auth_line(const unsigned char *p, size_t n);

#endif
