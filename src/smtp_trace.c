/*
 * smtp_trace: the SMTP protocol trace of one peer (see smtp_trace.h).
 *
 * Replies are watched with an evbuffer callback on the session's output
 * buffer, added only to the sessions of the traced peer: every writer
 * (replies, the EHLO list, smtp_sec's 334 and 235) appends there, so one
 * hook sees them all, and untraced sessions pay nothing.  The callback
 * reads what was just appended (the last n_added bytes) and logs it line
 * by line; every writer appends whole CRLF-terminated lines.
 *
 * Threads: the thread running the server's event_base only.
 */
#include "smtp_trace.h"

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#include "control.h"
#include "evlog.h"
#include "smtp_session.h"

#define OUT_COPY_MAX 4096u      /* reply bytes read per append */
#define SESSION_ID_MAX (INET6_ADDRSTRLEN + 8)

struct smtp_trace {
	struct smtp_server *srv;
	struct event *timer;          /* expiry */
	bool active;
	int family;
	uint8_t addr[16];
	char text[INET6_ADDRSTRLEN];
	int64_t until;                /* unix seconds */
};

/* ---- pure helpers ---------------------------------------------------------- */

int smtp_trace_parse_address(const char *text, int *family_r, uint8_t addr_r[16])
{
	char buf[INET6_ADDRSTRLEN + 2];
	size_t n = strlen(text);
	struct in6_addr a6;

	memset(addr_r, 0, 16);
	if (inet_pton(AF_INET, text, addr_r) == 1) {
		*family_r = AF_INET;
		return 0;
	}
	if (n >= 2 && text[0] == '[' && text[n - 1] == ']' && n - 2 < sizeof buf) {
		memcpy(buf, text + 1, n - 2);
		buf[n - 2] = '\0';
		text = buf;
	}
	if (inet_pton(AF_INET6, text, &a6) != 1)
		return -1;
	if (IN6_IS_ADDR_V4MAPPED(&a6)) {
		*family_r = AF_INET;
		memcpy(addr_r, &a6.s6_addr[12], 4);
	} else {
		*family_r = AF_INET6;
		memcpy(addr_r, &a6, 16);
	}
	return 0;
}

/* Appends `s` if it fits in the room left before the cut. */
static size_t put(char *buf, size_t at, size_t room, const char *s)
{
	size_t n = strlen(s);

	if (at + n > room)
		return at;
	memcpy(buf + at, s, n);
	return at + n;
}

static bool mech_char(char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
	       c == '-' || c == '_';
}

/* "AUTH PLAIN xxx" -> "AUTH PLAIN <redacted>"; NULL when not AUTH.  Errs
 * on the side of redacting: anything after the verb that is not a lone
 * mechanism name is hidden, even in a line the parser will refuse. */
static const char *auth_redact(char *buf, size_t size, const char *line, size_t len)
{
	size_t m = 0;

	while (len > 0 && (*line == ' ' || *line == '\t')) {
		line++;
		len--;
	}
	if (len < 4 || strncasecmp(line, "AUTH", 4) != 0 || (len > 4 && mech_char(line[4])))
		return NULL;
	if (len == 4) {
		snprintf(buf, size, "%.4s", line);
		return buf;
	}
	/* RFC 4422 3.1: a mechanism name is 1-20 of [A-Z0-9-_]. */
	while (line[4] == ' ' && 5 + m < len && m < 20 && mech_char(line[5 + m]))
		m++;
	if (m > 0 && 5 + m == len)
		snprintf(buf, size, "%.4s %.*s", line, (int)m, line + 5);
	else if (m > 0 && line[5 + m] == ' ')
		snprintf(buf, size, "%.4s %.*s <redacted>", line, (int)m, line + 5);
	else
		snprintf(buf, size, "%.4s <redacted>", line);
	return buf;
}

const char *smtp_trace_format(char *buf, size_t size, const char *line, size_t len,
			      bool command)
{
	size_t room = size - 1 < SMTP_TRACE_LINE_MAX ? size - 1 : SMTP_TRACE_LINE_MAX;
	size_t at = 0, i;
	char tail[48], hex[8];

	if (len > 0 && line[len - 1] == '\n')
		len--;
	if (len > 0 && line[len - 1] == '\r')
		len--;
	if (command && auth_redact(buf, size, line, len) != NULL)
		return buf;
	room -= 24;   /* keeps room for the " ...(+N bytes)" marker */
	for (i = 0; i < len; i++) {
		unsigned char c = (unsigned char)line[i];
		size_t before = at;

		if (c < 0x20 || c == 0x7f || c == '\\') {
			if (c == '\\')
				snprintf(hex, sizeof hex, "\\\\");
			else
				snprintf(hex, sizeof hex, "\\x%02x", c);
			at = put(buf, at, room, hex);
		} else if (at < room) {
			buf[at++] = (char)c;
		}
		if (at == before)
			break;
	}
	if (i < len) {
		snprintf(tail, sizeof tail, " ...(+%zu bytes)", len - i);
		at = put(buf, at, room + 24, tail);
	}
	buf[at] = '\0';
	return buf;
}

/* ---- the filter ------------------------------------------------------------ */

static bool peer_is(const struct smtp_trace *t, const union smtp_peer *p)
{
	if (p->sa.sa_family != t->family)
		return false;
	if (t->family == AF_INET)
		return memcmp(&p->in.sin_addr, t->addr, 4) == 0;
	return memcmp(&p->in6.sin6_addr, t->addr, 16) == 0;
}

static bool traced(const struct smtp_session *s)
{
	const struct smtp_trace *t = s->srv->trace;

	return t != NULL && t->active && peer_is(t, &s->peer) &&
	       (int64_t)time(NULL) < t->until;
}

static void session_id(const struct smtp_session *s, char *buf, size_t size)
{
	if (s->peer.sa.sa_family == AF_INET6)
		snprintf(buf, size, "[%s]:%u", s->addr, (unsigned)ntohs(s->peer.in6.sin6_port));
	else
		snprintf(buf, size, "%s:%u", s->addr, (unsigned)ntohs(s->peer.in.sin_port));
}

static void emit(struct smtp_session *s, enum evlog_id id, const char *line)
{
	char sid[SESSION_ID_MAX];

	session_id(s, sid, sizeof sid);
	evlog_emit(s->srv->log, id, EVF_S("session", sid), EVF_S("client", s->addr),
		   EVF_S("line", line));
}

/* ---- replies ----------------------------------------------------------------- */

static void out_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
	struct smtp_session *s = arg;
	char copy[OUT_COPY_MAX], line[SMTP_TRACE_LINE_MAX + 1];
	size_t total = evbuffer_get_length(buf), n = info->n_added, start, i;
	struct evbuffer_ptr pos;
	struct evbuffer_iovec v[8];
	size_t got = 0;
	int nv;

	if (n == 0 || s->bev == NULL || buf != bufferevent_get_output(s->bev) || !traced(s))
		return;
	if (n > total)
		n = total;
	/* evbuffer_copyout_from refuses an output buffer (its start is
	 * frozen); peeking is allowed. */
	if (evbuffer_ptr_set(buf, &pos, total - n, EVBUFFER_PTR_SET) < 0)
		return;
	nv = evbuffer_peek(buf, (ev_ssize_t)n, &pos, v, sizeof v / sizeof v[0]);
	for (int k = 0; k < nv && k < (int)(sizeof v / sizeof v[0]) && got < sizeof copy; k++) {
		size_t take = v[k].iov_len;

		if (take > n - got)
			take = n - got;
		if (take > sizeof copy - got)
			take = sizeof copy - got;
		memcpy(copy + got, v[k].iov_base, take);
		got += take;
	}
	if (got == 0)
		return;
	for (start = 0, i = 0; i < got; i++)
		if (copy[i] == '\n') {
			emit(s, EV_SMTP_TRACE_OUT,
			     smtp_trace_format(line, sizeof line, copy + start, i + 1 - start, false));
			start = i + 1;
		}
	if (start < got)
		emit(s, EV_SMTP_TRACE_OUT,
		     smtp_trace_format(line, sizeof line, copy + start, got - start, false));
	if (n > got) {
		snprintf(line, sizeof line, "<%zu more bytes>", n - got);
		emit(s, EV_SMTP_TRACE_OUT, line);
	}
}

static void watch(struct smtp_session *s, bool on)
{
	struct evbuffer *out;

	if (s->bev == NULL)
		return;
	out = bufferevent_get_output(s->bev);
	evbuffer_remove_cb(out, out_cb, s);   /* never twice */
	if (on)
		evbuffer_add_cb(out, out_cb, s);   /* NULL on OOM: replies untraced */
}

static void watch_all(struct smtp_trace *t)
{
	for (struct smtp_session *s = t->srv->sessions; s != NULL; s = s->next)
		watch(s, t->active && peer_is(t, &s->peer));
}

/* ---- hooks --------------------------------------------------------------------- */

void smtp_trace_session(struct smtp_session *s)
{
	if (s->srv->trace != NULL && traced(s))
		watch(s, true);
}

void smtp_trace_command(struct smtp_session *s, const char *line, size_t len)
{
	char buf[SMTP_TRACE_LINE_MAX + 1];

	if (s->srv->trace == NULL || !traced(s))
		return;
	emit(s, EV_SMTP_TRACE_IN, smtp_trace_format(buf, sizeof buf, line, len, true));
}

void smtp_trace_auth(struct smtp_session *s, struct evbuffer *in)
{
	size_t eol_len;

	if (s->srv->trace == NULL || !traced(s) ||
	    evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_LF).pos < 0)
		return;
	emit(s, EV_SMTP_TRACE_IN, "<redacted>");
}

void smtp_trace_data(struct smtp_session *s, uint64_t octets)
{
	char buf[64];

	if (s->srv->trace == NULL || !traced(s))
		return;
	snprintf(buf, sizeof buf, "<%llu bytes of message data>", (unsigned long long)octets);
	emit(s, EV_SMTP_TRACE_IN, buf);
}

/* ---- the trace ------------------------------------------------------------------ */

static void expire_cb(evutil_socket_t fd, short what, void *arg)
{
	smtp_trace_stop(arg, "expired");
}

struct smtp_trace *smtp_trace_new(struct smtp_server *srv)
{
	struct smtp_trace *t = calloc(1, sizeof *t);

	if (t == NULL)
		return NULL;
	t->srv = srv;
	t->timer = evtimer_new(srv->base, expire_cb, t);
	if (t->timer == NULL) {
		free(t);
		return NULL;
	}
	srv->trace = t;
	return t;
}

void smtp_trace_free(struct smtp_trace **tp)
{
	struct smtp_trace *t = *tp;

	if (t == NULL)
		return;
	t->active = false;
	watch_all(t);
	if (t->srv->trace == t)
		t->srv->trace = NULL;
	event_free(t->timer);
	free(t);
	*tp = NULL;
}

int smtp_trace_start(struct smtp_trace *t, const char *address, unsigned seconds,
		     uid_t uid, char *err, size_t errlen)
{
	struct timeval tv = { (time_t)seconds, 0 };
	uint8_t addr[16];
	int family;

	if (smtp_trace_parse_address(address, &family, addr) < 0) {
		snprintf(err, errlen, "%s is not an IPv4 or IPv6 address", address);
		return -1;
	}
	if (seconds == 0 || seconds > SMTP_TRACE_SECONDS_MAX) {
		snprintf(err, errlen, "the duration must be 1 to %u seconds", SMTP_TRACE_SECONDS_MAX);
		return -1;
	}
	if (t->active)
		smtp_trace_stop(t, "replaced by a new trace");
	t->family = family;
	memcpy(t->addr, addr, sizeof addr);
	if (inet_ntop(family, addr, t->text, sizeof t->text) == NULL)
		snprintf(t->text, sizeof t->text, "?");
	t->until = (int64_t)time(NULL) + (int64_t)seconds;
	t->active = true;
	evtimer_add(t->timer, &tv);
	evlog_emit(t->srv->log, EV_SMTP_TRACE_STARTED, EVF_S("peer", t->text),
		   EVF_I("uid", uid), EVF_I("seconds", seconds));
	watch_all(t);
	return 0;
}

void smtp_trace_stop(struct smtp_trace *t, const char *reason)
{
	if (t == NULL || !t->active)
		return;
	t->active = false;
	evtimer_del(t->timer);
	watch_all(t);
	evlog_emit(t->srv->log, EV_SMTP_TRACE_ENDED, EVF_S("peer", t->text),
		   EVF_S("reason", reason));
}

/* ---- the control command ---------------------------------------------------------- */

static void control_show(const struct smtp_trace *t, struct control_reply *rep)
{
	int64_t now = (int64_t)time(NULL);

	if (!t->active || now >= t->until) {
		control_reply_add(rep, "trace", "off");
		return;
	}
	control_reply_add(rep, "trace", "on");
	control_reply_add(rep, "peer", "%s", t->text);
	control_reply_add(rep, "until", "%lld", (long long)t->until);
	control_reply_add(rep, "remaining", "%lld", (long long)(t->until - now));
}

static void control_off(struct smtp_trace *t, const struct control_request *req,
			struct control_reply *rep)
{
	uint8_t addr[16];
	int family;

	if (req->argc > 2) {
		control_reply_status(rep, 400, "usage: trace off [ADDRESS]");
		return;
	}
	if (req->argc == 2) {
		if (smtp_trace_parse_address(req->argv[1], &family, addr) < 0) {
			control_reply_status(rep, 400, "trace off: %s is not an IPv4 or IPv6 address",
					     req->argv[1]);
			return;
		}
		if (!t->active || family != t->family || memcmp(addr, t->addr, 16) != 0) {
			control_reply_add(rep, "trace", "%s", t->active ? "on" : "off");
			control_reply_add(rep, "note", "no trace of %s was active", req->argv[1]);
			return;
		}
	}
	smtp_trace_stop(t, "turned off by an administrator");
	control_reply_add(rep, "trace", "off");
}

void smtp_trace_control(struct smtp_trace *t, const struct control_call *call,
			struct control_reply *rep, uid_t admin_uid)
{
	const struct control_request *req = call->req;
	unsigned long secs = SMTP_TRACE_SECONDS_DEFAULT;
	char err[160], *end;

	if (t == NULL) {
		control_reply_status(rep, 503, "trace: the SMTP server is not running");
		return;
	}
	if (req->argc == 0) {
		control_show(t, rep);
		return;
	}
	if (call->uid != 0 && call->uid != admin_uid) {
		control_reply_status(rep, 403, "trace: only root and the daemon's user (uid %u) may start or stop a trace",
				     (unsigned)admin_uid);
		return;
	}
	if (strcmp(req->argv[0], "off") == 0) {
		control_off(t, req, rep);
		return;
	}
	if (req->argc > 2) {
		control_reply_status(rep, 400, "usage: trace ADDRESS [SECONDS] | trace off [ADDRESS]");
		return;
	}
	if (req->argc == 2) {
		secs = strtoul(req->argv[1], &end, 10);
		if (end == req->argv[1] || *end != '\0' || req->argv[1][0] == '-' || secs == 0 ||
		    secs > SMTP_TRACE_SECONDS_MAX) {
			control_reply_status(rep, 400, "trace: SECONDS must be 1 to %u",
					     SMTP_TRACE_SECONDS_MAX);
			return;
		}
	}
	if (smtp_trace_start(t, req->argv[0], (unsigned)secs, call->uid, err, sizeof err) < 0) {
		control_reply_status(rep, 400, "trace: %s", err);
		return;
	}
	control_show(t, rep);
	control_reply_add(rep, "seconds", "%lu", secs);
	if (t->srv->conf->log_json != NULL && t->srv->conf->log_json[0])
		control_reply_add(rep, "log", "%s", t->srv->conf->log_json);
}
