/*
 * smtp_trace: a per-session SMTP protocol trace for one chosen peer, the
 * modern form of the old MTAs' protocol logs (`carrier trace PEER`).
 *
 * Owns: the filter (one client address and an expiry), its expiry timer,
 * the `trace` control command, and the formatting of traced lines.  While
 * a trace is active, sessions from that address log every command line
 * they receive (SMTP_TRACE_IN) and every reply line they send
 * (SMTP_TRACE_OUT), with the session ("addr:port") and the peer.  What
 * must never reach a log is kept out here: an AUTH command's initial
 * response and every line of an AUTH exchange become "<redacted>", and
 * message data (DATA, BDAT) is only counted ("<N bytes of message data>").
 * Lines are cut at SMTP_TRACE_LINE_MAX and their control bytes written as
 * \xNN.
 *
 * The events are NOTICE so that a trace shows at the default diagnostic
 * level: the trace itself is the administrator's opt-in, and nothing is
 * emitted while none is active.
 *
 * Part of the SMTP server (it reads struct smtp_server and struct
 * smtp_session, smtp_session.h); smtp_session.c calls the hooks below,
 * carrierd creates the trace and wires the control command.
 *
 * Threads: everything runs on the thread running the server's event_base.
 */
#ifndef CARRIER_SMTP_TRACE_H
#define CARRIER_SMTP_TRACE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct evbuffer;
struct smtp_server;
struct smtp_session;
struct smtp_trace;
struct control_call;
struct control_reply;

#define SMTP_TRACE_SECONDS_DEFAULT 300u
#define SMTP_TRACE_SECONDS_MAX 3600u
/* Longest traced line as logged (after escaping), without the NUL. */
#define SMTP_TRACE_LINE_MAX 320u

/* Creates the (inactive) trace of `srv` and installs it there; it must be
 * freed before the server.  Returns NULL when out of memory (then no
 * trace can be set, nothing else changes). */
struct smtp_trace *smtp_trace_new(struct smtp_server *srv);

/* Ends an active trace silently, uninstalls and frees; clears *tp. */
void smtp_trace_free(struct smtp_trace **tp);

/* Traces sessions from `address` (IPv4 or IPv6, brackets allowed) for
 * `seconds` (1..SMTP_TRACE_SECONDS_MAX), replacing any trace; sessions
 * already open from that address are traced from their next line.  `uid`
 * is the administrator's, for the event.  Returns 0, or -1 with a reason
 * in err. */
int smtp_trace_start(struct smtp_trace *t, const char *address, unsigned seconds,
		     uid_t uid, char *err, size_t errlen);

/* Ends the active trace (if any) with SMTP_TRACE_ENDED naming `reason`
 * (static text). */
void smtp_trace_stop(struct smtp_trace *t, const char *reason);

/*
 * The control command:
 *   trace                      show: peer, until, remaining (or "off")
 *   trace ADDRESS [SECONDS]    start (default SMTP_TRACE_SECONDS_DEFAULT)
 *   trace off [ADDRESS]        stop (only that address's trace, if given)
 * Starting and stopping are for root and `admin_uid` (the daemon's user):
 * others get 403.  `t` may be NULL (no SMTP server): 503.
 */
void smtp_trace_control(struct smtp_trace *t, const struct control_call *call,
			struct control_reply *rep, uid_t admin_uid);

/* ---- hooks for smtp_session.c (cheap no-ops when nothing is traced) -- */

/* After the session's bufferevent callbacks are set (start, STARTTLS):
 * watches its replies when its peer is traced. */
void smtp_trace_session(struct smtp_session *s);
/* A command line as read, CRLF included or not. */
void smtp_trace_command(struct smtp_session *s, const char *line, size_t len);
/* Before a line of an AUTH exchange is read from `in`: logs
 * "<redacted>" when a complete line is there. */
void smtp_trace_auth(struct smtp_session *s, struct evbuffer *in);
/* Message data received (DATA at its end, each BDAT chunk). */
void smtp_trace_data(struct smtp_session *s, uint64_t octets);

/* ---- pure helpers (unit tests) ---------------------------------------- */

/* Formats one protocol line for the log into buf (size >= 64): line end
 * removed, control bytes as \xNN, cut at SMTP_TRACE_LINE_MAX with
 * " ...(+N bytes)"; with `command`, an AUTH command keeps only its
 * mechanism.  Returns buf. */
const char *smtp_trace_format(char *buf, size_t size, const char *line, size_t len,
			      bool command);

/* Parses a trace address into family (AF_INET, AF_INET6) and 16 bytes
 * (IPv4-mapped IPv6 folded to IPv4).  Returns 0 or -1. */
int smtp_trace_parse_address(const char *text, int *family_r, uint8_t addr_r[16]);

#endif
