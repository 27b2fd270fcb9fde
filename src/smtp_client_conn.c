/*
 * smtp_client_conn: one outbound connection (see smtp_client_int.h): made,
 * connected, greeted, EHLO/HELO/LHLO and the capabilities, then handed to
 * the transaction (smtp_client_txn.c) or to STARTTLS (smtp_client_tls.c);
 * the replies read and dispatched by state; the one timer per connection;
 * QUIT, failure (the next destination, or TEMP for the recipients after
 * MAIL) and freeing.  It owns the libevent callbacks of the connection.
 *
 * Threads: the loop thread of the client's base only.
 */
#include "smtp_client_int.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "evlog.h"

#define SC_CLOSE_MS 2000u        /* wait for the reply to QUIT */

static void conn_read_cb(struct bufferevent *bev, void *arg);
static void conn_write_cb(struct bufferevent *bev, void *arg);
static void conn_event_cb(struct bufferevent *bev, short what, void *arg);
static void conn_timer_cb(evutil_socket_t fd, short what, void *arg);

/* ---- connections --------------------------------------------------------- */

void sc_conn_arm(struct sc_conn *conn, unsigned ms)
{
	struct timeval tv = { .tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000 };

	evtimer_add(conn->timer, &tv);
}

int sc_conn_printf(struct sc_conn *conn, const char *fmt, ...)
{
	va_list ap;
	int rc;

	va_start(ap, fmt);
	rc = evbuffer_add_vprintf(bufferevent_get_output(conn->bev), fmt, ap);
	va_end(ap);
	return rc < 0 ? -1 : 0;
}

void sc_conn_setcb(struct sc_conn *conn, struct bufferevent *bev)
{
	bufferevent_setcb(bev, conn_read_cb, conn_write_cb, conn_event_cb, conn);
}

struct sc_conn *sc_conn_new(struct sc_job *job,
			    const struct smtp_client_dest *d,
			    char *err, size_t errlen)
{
	struct smtp_client *c = job->c;
	struct sc_conn *conn = calloc(1, sizeof *conn);
	struct sockaddr_un sun;
	const struct sockaddr *sa;
	socklen_t salen;

	if (conn == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	conn->c = c;
	conn->mode = job->mode;
	snprintf(conn->nexthop, sizeof conn->nexthop, "%s", job->nexthop);
	conn->dest = *d;
	sc_addr_format(d, conn->addr_text, sizeof conn->addr_text);
	conn->state = SC_CONNECTING;
	conn->no_starttls = job->plain_retry;
	job->plain_retry = false;
	conn->bev = bufferevent_socket_new(c->base, -1,
					   BEV_OPT_CLOSE_ON_FREE);
	conn->timer = evtimer_new(c->base, conn_timer_cb, conn);
	if (conn->bev == NULL || conn->timer == NULL) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	sc_conn_setcb(conn, conn->bev);
	if (d->addr_len == 0) {
		memset(&sun, 0, sizeof sun);
		sun.sun_family = AF_UNIX;
		if (strlen(d->unix_path) >= sizeof sun.sun_path) {
			snprintf(err, errlen, "socket path too long");
			goto fail;
		}
		memcpy(sun.sun_path, d->unix_path, strlen(d->unix_path));
		sa = (const struct sockaddr *)&sun;
		salen = (socklen_t)sizeof sun;
	} else {
		sa = (const struct sockaddr *)&d->addr;
		salen = d->addr_len;
	}
	smtp_parse_reply_init(&conn->parser, NULL, &conn->reply);
	/* Link before connecting: an immediate failure calls the event cb. */
	conn->next = c->conns;
	if (c->conns != NULL)
		c->conns->prev = conn;
	c->conns = conn;
	c->stats.open++;
	c->stats.connects++;
	conn->job = job;
	job->conn = conn;
	sc_conn_arm(conn, c->opts.connect_ms);
	if (bufferevent_socket_connect(conn->bev, sa, (int)salen) < 0) {
		int e = EVUTIL_SOCKET_ERROR();

		snprintf(err, errlen, "connect: %s", strerror(e ? e : ECONNREFUSED));
		job->conn = NULL;
		conn->job = NULL;
		sc_conn_free(conn, false);
		return NULL;
	}
	bufferevent_enable(conn->bev, EV_READ | EV_WRITE);
	return conn;
fail:
	if (conn->bev != NULL)
		bufferevent_free(conn->bev);
	if (conn->timer != NULL)
		event_free(conn->timer);
	free(conn);
	return NULL;
}

/* Frees a connection now.  With `dispatch`, a job waiting for a slot of the
 * same next hop gets started. */
void sc_conn_free(struct sc_conn *conn, bool dispatch)
{
	struct smtp_client *c = conn->c;
	char nexthop[SC_NEXTHOP_MAX];
	enum smtp_client_mode mode = conn->mode;
	struct sc_job *w;
	bool counted = conn->state != SC_CLOSING;

	snprintf(nexthop, sizeof nexthop, "%s", conn->nexthop);
	if (conn->job != NULL) {
		/* Callers detach the job first; never leave one orphaned. */
		sc_rcpt_set_rest(conn->job, conn, SMTP_CLIENT_TEMP, 0, "",
				 "connection closed");
		sc_job_finish(conn->job);
	}
	if (conn->prev != NULL)
		conn->prev->next = conn->next;
	else
		c->conns = conn->next;
	if (conn->next != NULL)
		conn->next->prev = conn->prev;
	if (conn->state == SC_IDLE)
		c->stats.idle--;
	c->stats.open--;
	bufferevent_free(conn->bev);
	event_free(conn->timer);
	free(conn->exp);
	if (conn->in_read) {
		/* read_cb still uses the struct: it frees it on return. */
		conn->dead = true;
		conn->bev = NULL;
	} else {
		free(conn);
	}
	if (dispatch && counted && (w = sc_wait_take(c, mode, nexthop)) != NULL)
		sc_job_dispatch(w);
}

/* Sends QUIT and lets the connection go; it no longer counts. */
void sc_conn_quit(struct sc_conn *conn, bool dispatch)
{
	struct smtp_client *c = conn->c;
	struct sc_job *w;

	if (conn->job != NULL) {
		conn->job->conn = NULL;
		conn->job = NULL;
	}
	if (conn->state == SC_IDLE)
		c->stats.idle--;
	conn->state = SC_CLOSING;
	sc_conn_printf(conn, "QUIT\r\n");
	sc_conn_arm(conn, SC_CLOSE_MS);
	if (dispatch && (w = sc_wait_take(c, conn->mode, conn->nexthop)) != NULL)
		sc_job_dispatch(w);
}

/*
 * The connection failed (connect error, timeout, EOF, bad reply, a refusal
 * before MAIL).  Before MAIL: record the attempt and try the next
 * destination (or, on a reused connection, start over on a fresh one).
 * After MAIL: every undecided recipient is TEMP.  Frees conn.
 */
void sc_conn_fail(struct sc_conn *conn, const char *reason, bool polite)
{
	struct sc_job *job = conn->job;
	struct smtp_client *c = conn->c;

	if (job == NULL) {
		if (polite)
			sc_conn_quit(conn, true);
		else
			sc_conn_free(conn, true);
		return;
	}
	job->conn = NULL;
	conn->job = NULL;
	if (conn->state == SC_RSET ||
	    (job->reused && conn->txn_replies == 0 && !job->finished)) {
		/* A pooled connection was dead: not this destination's fault. */
		job->no_reuse = true;
		job->reused = false;
		job->mail_sent = false;
		job->next_rcpt = 0;
		for (size_t i = 0; i < job->n_rcpts; i++)
			job->res[i].dsn_relayed = false;
		sc_conn_free(conn, false);
		sc_job_dispatch(job);
		return;
	}
	if (!job->mail_sent) {
		struct smtp_client_attempt *a = &job->attempts[job->n_attempts++];

		snprintf(a->host, sizeof a->host, "%s", conn->dest.host);
		snprintf(a->addr, sizeof a->addr, "%s", conn->addr_text);
		sc_text_sanitize(a->reason, sizeof a->reason, reason, strlen(reason));
		evlog_emit(c->log, EV_SMTP_OUT_DESTINATION_FAILED,
			   EVF_S("qid", job->qid),
			   EVF_S("host", conn->dest.host[0] ? conn->dest.host : "-"),
			   EVF_S("addr", conn->addr_text), EVF_S("reason", a->reason));
		if (polite)
			sc_conn_quit(conn, false);
		else
			sc_conn_free(conn, false);
		sc_job_connect_next(job);
		return;
	}
	sc_rcpt_set_rest(job, conn, SMTP_CLIENT_TEMP, 0, "", reason);
	sc_job_finish(job);
	if (polite)
		sc_conn_quit(conn, true);
	else
		sc_conn_free(conn, true);
}

void sc_conn_protocol_error(struct sc_conn *conn, const char *what)
{
	char reason[SMTP_CLIENT_TEXT_MAX];

	snprintf(reason, sizeof reason, "%s[%s]: %s", conn->dest.host,
		 conn->addr_text, what);
	evlog_emit(conn->c->log, EV_SMTP_OUT_PROTOCOL_ERROR,
		   EVF_S("host", conn->dest.host[0] ? conn->dest.host : "-"),
		   EVF_S("addr", conn->addr_text), EVF_S("reason", what));
	sc_conn_fail(conn, reason, false);
}

/* ---- up to the transaction ------------------------------------------------ */

static void caps_parse(struct sc_conn *conn, const struct smtp_parse_reply *r)
{
	const char *p = memchr(r->text, '\n', r->text_len);
	const char *end = r->text + r->text_len;

	/* Only the last EHLO counts (after STARTTLS the list may change). */
	conn->pipelining = conn->eightbit = conn->utf8 = conn->dsn = false;
	conn->has_size = conn->starttls = false;
	conn->esmtp = true;
	while (p != NULL && p < end) {
		const char *line = p + 1;
		const char *eol = memchr(line, '\n', (size_t)(end - line));
		size_t len = eol ? (size_t)(eol - line) : (size_t)(end - line);
		char kw[32];
		size_t k = 0;

		while (k < len && k + 1 < sizeof kw && line[k] != ' ') {
			char ch = line[k];

			kw[k++] = (ch >= 'a' && ch <= 'z') ? (char)(ch - 32) : ch;
		}
		kw[k] = '\0';
		if (strcmp(kw, "PIPELINING") == 0) {
			conn->pipelining = true;
		} else if (strcmp(kw, "8BITMIME") == 0) {
			conn->eightbit = true;
		} else if (strcmp(kw, "SMTPUTF8") == 0) {
			conn->utf8 = true;
		} else if (strcmp(kw, "DSN") == 0) {
			conn->dsn = true;
		} else if (strcmp(kw, "STARTTLS") == 0) {
			conn->starttls = true;
		} else if (strcmp(kw, "SIZE") == 0) {
			conn->has_size = true;
			conn->size_max = 0;
			for (size_t j = k + 1; j < len && line[j] >= '0' && line[j] <= '9'; j++) {
				if (conn->size_max > (UINT64_MAX - 9) / 10)
					break;
				conn->size_max = conn->size_max * 10 + (uint64_t)(line[j] - '0');
			}
		}
		p = eol;
	}
}

void sc_send_hello(struct sc_conn *conn, const char *verb)
{
	sc_conn_printf(conn, "%s %s\r\n", verb, conn->c->opts.helo_name);
	sc_conn_arm(conn, conn->c->opts.command_ms);
}

static void handle_reply(struct sc_conn *conn, const struct smtp_parse_reply *r)
{
	char reason[SMTP_CLIENT_TEXT_MAX];
	bool ok = r->code >= 200 && r->code < 300;

	switch (conn->state) {
	case SC_GREETING:
		if (r->code == 220) {
			conn->state = SC_EHLO;
			sc_send_hello(conn, conn->mode == SMTP_CLIENT_LMTP ? "LHLO" : "EHLO");
			return;
		}
		snprintf(reason, sizeof reason, "greeting: %u%s%s %.*s", r->code,
			 r->enhanced[0] ? " " : "", r->enhanced, (int)r->text_len, r->text);
		sc_conn_fail(conn, reason, r->code != 421);
		return;
	case SC_EHLO:
		if (ok) {
			caps_parse(conn, r);
			if (!sc_tls_step(conn))
				sc_txn_start(conn);
			return;
		}
		if (r->code != 421 && conn->mode == SMTP_CLIENT_SMTP) {
			conn->state = SC_HELO;
			sc_send_hello(conn, "HELO");
			return;
		}
		snprintf(reason, sizeof reason, "%s: %u %.*s",
			 conn->mode == SMTP_CLIENT_LMTP ? "LHLO" : "EHLO", r->code,
			 (int)r->text_len, r->text);
		sc_conn_fail(conn, reason, r->code != 421);
		return;
	case SC_HELO:
		if (ok && sc_tls_required(conn)) {
			sc_tls_fail(conn, "the peer does not support EHLO, so no STARTTLS", true);
			return;
		}
		if (ok) {
			sc_txn_start(conn);
			return;
		}
		snprintf(reason, sizeof reason, "HELO: %u %.*s", r->code,
			 (int)r->text_len, r->text);
		sc_conn_fail(conn, reason, r->code != 421);
		return;
	case SC_STARTTLS:
		if (r->code == 220) {
			sc_tls_begin(conn);
			return;
		}
		if (!sc_tls_required(conn) && r->code != 421) {
			sc_txn_start(conn);   /* may: on in plaintext */
			return;
		}
		snprintf(reason, sizeof reason, "STARTTLS refused: %u %.*s", r->code,
			 (int)r->text_len, r->text);
		sc_tls_fail(conn, reason, r->code != 421);
		return;
	case SC_HANDSHAKE:
		sc_conn_fail(conn, "reply during the TLS handshake", false);
		return;
	case SC_RSET:
		if (ok) {
			sc_txn_start(conn);
			return;
		}
		sc_conn_fail(conn, "RSET refused", false);
		return;
	case SC_TXN:
		sc_txn_reply(conn, r);
		return;
	case SC_SENDING:
		/* A reply while we still send the body: the peer gave up. */
		snprintf(reason, sizeof reason, "reply during DATA: %u %.*s", r->code,
			 (int)r->text_len, r->text);
		sc_conn_fail(conn, reason, false);
		return;
	case SC_IDLE:
		/* Usually 421 (the peer's idle timeout): drop it. */
		sc_conn_free(conn, true);
		return;
	case SC_CONNECTING:   /* not reached: read_cb moved it on */
	case SC_CLOSING:
		sc_conn_fail(conn, "unexpected reply", false);
		return;
	}
}

/* ---- libevent callbacks ---------------------------------------------------- */

static void conn_read_cb(struct bufferevent *bev, void *arg)
{
	struct sc_conn *conn = arg;
	struct evbuffer *in = bufferevent_get_input(bev);

	/* libevent may run the read callback before it reports the
	 * connection (both ready in one poll): bytes mean connected. */
	if (conn->state == SC_CONNECTING)
		conn->state = SC_GREETING;
	conn->in_read = true;
	/* STARTTLS replaces the bufferevent: stop reading the old one. */
	while (!conn->dead && conn->bev == bev && evbuffer_get_length(in) > 0) {
		struct evbuffer_iovec v;
		struct smtp_parse_reply reply;
		enum smtp_parse_result res;
		size_t used = 0;

		if (conn->state == SC_CLOSING) {
			sc_conn_free(conn, false);
			break;
		}
		if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
			break;
		res = smtp_parse_reply_feed(&conn->parser, v.iov_base, v.iov_len,
					    &used, &conn->reply);
		evbuffer_drain(in, used);
		if (res == SMTP_PARSE_MORE)
			continue;
		if (res != SMTP_PARSE_OK) {
			sc_conn_protocol_error(conn, smtp_parse_strerror(res));
			break;
		}
		reply = conn->reply;
		smtp_parse_reply_init(&conn->parser, NULL, &conn->reply);
		evtimer_del(conn->timer);
		handle_reply(conn, &reply);
	}
	conn->in_read = false;
	if (conn->dead)
		free(conn);
}

static void conn_write_cb(struct bufferevent *bev, void *arg)
{
	struct sc_conn *conn = arg;

	(void)bev;
	if (conn->state == SC_SENDING && conn->job != NULL)
		sc_body_fill(conn);
}

static void conn_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct sc_conn *conn = arg;
	char reason[SMTP_CLIENT_TEXT_MAX];
	int e = EVUTIL_SOCKET_ERROR();

	(void)bev;
	if (conn->state == SC_HANDSHAKE) {
		sc_tls_handshake_event(conn, what, e);
		return;
	}
	if (what & BEV_EVENT_CONNECTED) {
		/* The greeting may have been read already (read before write
		 * when both are ready): then the state has moved on. */
		if (conn->state == SC_CONNECTING) {
			conn->state = SC_GREETING;
			sc_conn_arm(conn, conn->c->opts.command_ms);
		}
		return;
	}
	if (conn->state == SC_CLOSING) {
		sc_conn_free(conn, false);
		return;
	}
	if (conn->state == SC_IDLE) {
		sc_conn_free(conn, true);
		return;
	}
	/* Connected and closed at once (one event): errno is stale then. */
	if (what & BEV_EVENT_EOF)
		snprintf(reason, sizeof reason, "connection closed by the peer");
	else if (conn->state == SC_CONNECTING)
		snprintf(reason, sizeof reason, "connect: %s",
			 strerror(e != 0 ? e : ECONNREFUSED));
	else
		snprintf(reason, sizeof reason, "connection lost: %s",
			 strerror(e != 0 ? e : EIO));
	sc_conn_fail(conn, reason, false);
}

static const char *state_name(enum sc_state s)
{
	switch (s) {
	case SC_CONNECTING: return "connect";
	case SC_GREETING: return "greeting";
	case SC_EHLO: return "EHLO";
	case SC_STARTTLS: return "STARTTLS";
	case SC_HANDSHAKE: return "TLS handshake";
	case SC_HELO: return "HELO";
	case SC_RSET: return "RSET";
	case SC_TXN: return "transaction reply";
	case SC_SENDING: return "sending data";
	case SC_IDLE: return "idle";
	case SC_CLOSING: return "QUIT";
	}
	return "?";
}

static void conn_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct sc_conn *conn = arg;
	char reason[SMTP_CLIENT_TEXT_MAX];

	(void)fd;
	(void)what;
	if (conn->state == SC_CLOSING) {
		sc_conn_free(conn, false);
		return;
	}
	if (conn->state == SC_IDLE) {
		sc_conn_quit(conn, true);
		return;
	}
	snprintf(reason, sizeof reason, "timeout (%s)", state_name(conn->state));
	evlog_emit(conn->c->log, EV_SMTP_OUT_TIMEOUT,
		   EVF_S("host", conn->dest.host[0] ? conn->dest.host : "-"),
		   EVF_S("addr", conn->addr_text), EVF_S("stage", state_name(conn->state)));
	if (conn->state == SC_HANDSHAKE && sc_tls_fallback(conn, reason))
		return;
	sc_conn_fail(conn, reason, false);
}
