/*
 * smtp_sec: STARTTLS, implicit TLS and SMTP AUTH for inbound sessions
 * (see smtp_sec.h).
 *
 * STARTTLS (RFC 3207): the 220 is queued and the session stops reading;
 * whatever the client pipelined after the command, in the same read or
 * before the 220 is written, is discarded -- never executed after the
 * handshake (the CVE-2011-0411 class of command injection).  Once the 220
 * is on the wire the plaintext bufferevent lets go of the socket and an
 * OpenSSL socket bufferevent takes it over, and the session forgets the
 * client's EHLO and transaction (RFC 3207 4.2).
 *
 * AUTH (RFC 4954): PLAIN (RFC 4616) and LOGIN, with an initial response or
 * 334 challenges; "*" cancels.  A failure is answered after
 * [auth] failure_delay, with reading paused, and the client address's
 * failures are counted in the server's limiter: at max_failures the answer
 * is 421 and the session closes.  A password is checked off the loop
 * thread, since a yescrypt hash takes tens of milliseconds that every
 * other session of the loop would wait: against [auth] passwd_file by the
 * server's verifier threads (verifier.h), or by Dovecot over its socket.
 * Either way the session keeps a copy of the login, stops reading
 * (SMTP_MODE_AUTH_DELAY) and goes on from the answer's callback; freeing
 * the session cancels the check, so no answer reaches a freed session.
 * Only the verifier's job holds a copy of the password; it is wiped once
 * hashed or dropped.  A full verifier (verify_queue checks in progress)
 * answers 454 4.7.0.
 *
 * Threads: the server's loop thread only.
 */
#include "smtp_sec.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "auth.h"
#include "dovecot_auth.h"
#include "sasl.h"
#include "tls.h"
#include "verifier.h"

struct smtp_sec {
	struct tls *tls;              /* held while the session's SSL exists */
	struct event *delay;          /* a failed AUTH's delayed reply */
	struct dovecot_auth *dovecot; /* a check in progress */
	struct verifier_job *check;   /* a password-file check in progress */
	const char *pending_mech;     /* its mechanism (static) */
	struct sasl_creds creds;      /* the exchange in progress */
	uint8_t mech;                 /* enum sasl_mech in progress */
	uint8_t step;                 /* LOGIN: 0 user name, 1 password */
	bool handshaking;
	bool tls_on;
	bool authed;
	char version[16];
	char cipher[64];
	char login[SASL_USER_MAX + 1];
};

static struct smtp_sec *sec_get(struct smtp_session *s)
{
	if (s->sec == NULL)
		s->sec = calloc(1, sizeof *s->sec);
	return s->sec;
}

void smtp_sec_free(struct smtp_session *s)
{
	struct smtp_sec *sec = s->sec;

	if (sec == NULL)
		return;
	if (sec->delay != NULL)
		event_free(sec->delay);
	dovecot_auth_cancel(&sec->dovecot);
	verifier_cancel(&sec->check);
	tls_unref(&sec->tls);
	explicit_bzero(sec, sizeof *sec);
	free(sec);
	s->sec = NULL;
}

bool smtp_sec_tls_active(const struct smtp_session *s)
{
	return s->sec != NULL && s->sec->tls_on;
}

const char *smtp_sec_login(const struct smtp_session *s)
{
	return s->sec != NULL && s->sec->authed ? s->sec->login : NULL;
}

static bool starttls_offered(const struct smtp_session *s)
{
	return s->srv->tls != NULL && !(s->flags & SMTP_SERVER_IMPLICIT_TLS) &&
	       !smtp_sec_tls_active(s);
}

/* A password file or a Dovecot auth socket to check passwords with. */
static bool auth_backend(const struct smtp_session *s)
{
	return s->srv->passwd != NULL || s->srv->conf->auth_dovecot_socket[0] != '\0';
}

static bool auth_offered(const struct smtp_session *s)
{
	return auth_backend(s) &&
	       (smtp_sec_tls_active(s) || !s->srv->conf->auth_require_tls);
}

void smtp_sec_ehlo(struct smtp_session *s, struct evbuffer *out)
{
	if (starttls_offered(s))
		evbuffer_add_printf(out, "250-STARTTLS\r\n");
	if (auth_offered(s))
		evbuffer_add_printf(out, "250-AUTH PLAIN LOGIN\r\n");
}

/* ---- TLS ----------------------------------------------------------------- */

static struct bufferevent *ssl_bev(struct smtp_session *s, int fd)
{
	struct smtp_sec *sec = sec_get(s);
	struct bufferevent *bev;
	SSL *ssl;

	if (sec == NULL || s->srv->tls == NULL || (ssl = tls_ssl_new(s->srv->tls)) == NULL)
		return NULL;
	bev = bufferevent_openssl_socket_new(s->srv->base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
					     BEV_OPT_CLOSE_ON_FREE);
	if (bev == NULL)
		return NULL;
	/* A client that closes without close_notify is an EOF, not an error. */
	bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
	tls_unref(&sec->tls);
	sec->tls = tls_ref(s->srv->tls);
	sec->handshaking = true;
	return bev;
}

struct bufferevent *smtp_sec_implicit_bev(struct smtp_session *s, int fd)
{
	return ssl_bev(s, fd);
}

void smtp_sec_starttls(struct smtp_session *s)
{
	if (smtp_sec_tls_active(s) || (s->flags & SMTP_SERVER_IMPLICIT_TLS)) {
		smtp_session_refuse(s, "STARTTLS", 554, "5.5.1", "Error: TLS already active");
		return;
	}
	if (s->srv->tls == NULL) {
		smtp_session_refuse(s, "STARTTLS", 502, "5.5.1", "Error: command not implemented");
		return;
	}
	if (sec_get(s) == NULL) {
		smtp_session_refuse(s, "STARTTLS", 454, "4.7.0", "TLS not available due to temporary reason");
		return;
	}
	smtp_session_reply(s, 220, "2.0.0", "Ready to start TLS");
	s->mode = SMTP_MODE_STARTTLS;
}

void smtp_sec_discard(struct smtp_session *s, struct evbuffer *in)
{
	size_t n = evbuffer_get_length(in);

	if (n == 0)
		return;
	evlog_emit(s->srv->log, EV_TLS_PIPELINED_DISCARDED, EVF_S("client", s->addr),
		   EVF_I("bytes", n));
	evbuffer_drain(in, n);
}

void smtp_sec_switch(struct smtp_session *s)
{
	int fd = bufferevent_getfd(s->bev);
	struct bufferevent *bev;

	smtp_sec_discard(s, bufferevent_get_input(s->bev));
	/* The plaintext bufferevent lets go of the socket without closing it. */
	bufferevent_disable(s->bev, EV_READ | EV_WRITE);
	bufferevent_setfd(s->bev, -1);
	bufferevent_free(s->bev);
	s->bev = NULL;
	bev = ssl_bev(s, fd);
	if (bev == NULL) {
		close(fd);
		evlog_emit(s->srv->log, EV_TLS_HANDSHAKE_FAILED, EVF_S("client", s->addr),
			   EVF_S("reason", "cannot create the TLS session (no certificate any more, or out of memory)"));
		smtp_session_end(s, "TLS could not start");
		return;
	}
	s->bev = bev;
	smtp_session_reset(s);   /* RFC 3207 4.2: forget the EHLO; a new one comes */
	s->out_blocked = false;
	s->mode = SMTP_MODE_COMMAND;
	smtp_session_set_callbacks(s);
	smtp_session_update_io(s);
}

bool smtp_sec_event(struct smtp_session *s, short what)
{
	struct smtp_sec *sec = s->sec;
	char reason[256];
	unsigned long e;

	if (sec == NULL || !sec->handshaking || s->bev == NULL)
		return false;
	sec->handshaking = false;
	if (what & BEV_EVENT_CONNECTED) {
		sec->tls_on = true;
		tls_describe(bufferevent_openssl_get_ssl(s->bev), sec->version, sizeof sec->version,
			     sec->cipher, sizeof sec->cipher);
		evlog_emit(s->srv->log, EV_TLS_ESTABLISHED, EVF_S("client", s->addr),
			   EVF_S("version", sec->version), EVF_S("cipher", sec->cipher));
		return true;
	}
	e = bufferevent_get_openssl_error(s->bev);
	if (e != 0)
		ERR_error_string_n(e, reason, sizeof reason);
	else
		snprintf(reason, sizeof reason, "%s",
			 (what & BEV_EVENT_EOF) ? "the client closed the connection" :
			 (what & BEV_EVENT_TIMEOUT) ? "timeout" : "connection error");
	evlog_emit(s->srv->log, EV_TLS_HANDSHAKE_FAILED, EVF_S("client", s->addr),
		   EVF_S("reason", reason));
	smtp_session_end(s, "TLS handshake failed");
	return true;
}

void smtp_sec_close_notify(struct smtp_session *s)
{
	SSL *ssl = s->bev && smtp_sec_tls_active(s) ? bufferevent_openssl_get_ssl(s->bev) : NULL;

	/* Best effort: the alert goes straight to the socket, whose send
	 * buffer has room now that every reply is written. */
	if (ssl != NULL && SSL_shutdown(ssl) < 0)
		ERR_clear_error();
}

void smtp_sec_received_tls(const struct smtp_session *s, char *buf, size_t size)
{
	if (smtp_sec_tls_active(s))
		snprintf(buf, size, "version=%s cipher=%s", s->sec->version, s->sec->cipher);
	else if (size)
		buf[0] = '\0';
}

const char *smtp_sec_track_tls(const struct smtp_session *s, char *buf, size_t size)
{
	if (!smtp_sec_tls_active(s))
		return NULL;
	snprintf(buf, size, "%s %s", s->sec->version, s->sec->cipher);
	return buf;
}

/* ---- AUTH ------------------------------------------------------------------ */

bool smtp_sec_is_auth_line(const unsigned char *p, size_t n)
{
	return n >= 5 && strncasecmp((const char *)p, "AUTH ", 5) == 0;
}

static void auth_reset(struct smtp_session *s)
{
	sasl_creds_wipe(&s->sec->creds);
	s->sec->mech = SASL_MECH_NONE;
	s->sec->step = 0;
	s->mode = SMTP_MODE_COMMAND;
}

static void auth_abort(struct smtp_session *s, enum sasl_result r)
{
	auth_reset(s);
	if (r == SASL_CANCEL)
		smtp_session_refuse(s, "AUTH", 501, "5.0.0", "Authentication cancelled");
	else if (r == SASL_TOO_LONG)
		smtp_session_refuse(s, "AUTH", 500, "5.5.6", "Authentication exchange line is too long");
	else
		smtp_session_refuse(s, "AUTH", 501, "5.5.2", "Cannot decode the response");
}

static void delay_cb(evutil_socket_t fd, short what, void *arg)
{
	struct smtp_session *s = arg;

	s->mode = SMTP_MODE_COMMAND;
	smtp_session_reply(s, 535, "5.7.8", "Authentication credentials invalid");
	if (s->bev != NULL)
		smtp_session_resume(s);
}

/* Failed AUTH of the client's address within failure_window. */
static unsigned auth_failures(const struct smtp_session *s)
{
	return auth_limiter_failures(s->srv->auth_fails, &s->peer.sa, (int64_t)time(NULL),
				     s->srv->conf->auth_failure_window);
}

static void auth_too_many(struct smtp_session *s, unsigned n)
{
	evlog_emit(s->srv->log, EV_AUTH_TOO_MANY_FAILURES, EVF_S("client", s->addr),
		   EVF_I("failures", n));
	smtp_session_close_after(s, 421, "4.7.0",
				 "Too many failed authentication attempts, closing transmission channel");
}

/* A wrong password; `counted` when the attempt was already counted as a
 * failure (auth_ask_verifier), else it is counted now. */
static void auth_failed(struct smtp_session *s, const char *mech, const char *user,
			bool counted)
{
	const struct carrier_conf *conf = s->srv->conf;
	struct smtp_sec *sec = s->sec;
	struct timeval tv = { (time_t)conf->auth_failure_delay, 0 };
	unsigned n = counted ? auth_failures(s) :
		     auth_limiter_fail(s->srv->auth_fails, &s->peer.sa, (int64_t)time(NULL),
				       conf->auth_failure_window);

	if (n == 0)
		n = 1;   /* no limiter, or its entry was reused meanwhile */
	evlog_emit(s->srv->log, EV_AUTH_FAILED, EVF_S("client", s->addr), EVF_S("user", user),
		   EVF_S("mech", mech), EVF_I("failures", n), EVF_I("max", conf->auth_max_failures));
	if (n >= conf->auth_max_failures) {
		auth_too_many(s, n);
		return;
	}
	if (conf->auth_failure_delay == 0 ||
	    (sec->delay == NULL && (sec->delay = evtimer_new(s->srv->base, delay_cb, s)) == NULL) ||
	    evtimer_add(sec->delay, &tv) < 0) {
		smtp_session_reply(s, 535, "5.7.8", "Authentication credentials invalid");
		return;
	}
	s->mode = SMTP_MODE_AUTH_DELAY;
}

static void auth_succeeded(struct smtp_session *s, const char *mech, const char *user)
{
	struct smtp_sec *sec = s->sec;

	sec->authed = true;
	if (user != sec->login)
		snprintf(sec->login, sizeof sec->login, "%s", user);
	auth_limiter_clear(s->srv->auth_fails, &s->peer.sa);
	evlog_emit(s->srv->log, EV_AUTH_SUCCEEDED, EVF_S("client", s->addr), EVF_S("user", user),
		   EVF_S("mech", mech));
	smtp_session_reply(s, 235, "2.7.0", "Authentication successful");
}

/*
 * A password question (to Dovecot or the verifier threads) counts as a
 * failure from when it is asked until its answer says otherwise, and the
 * address's failures are checked again before asking (other sessions may
 * have failed since this one's AUTH command): with questions running side
 * by side, one address still gets no more than max_failures guesses in
 * the window.
 */

/* False (and the session closes with 421) when the address may not ask. */
static bool auth_may_ask(struct smtp_session *s)
{
	unsigned failures = auth_failures(s);

	if (failures < s->srv->conf->auth_max_failures)
		return true;
	auth_reset(s);
	auth_too_many(s, failures);
	return false;
}

static void auth_asked(struct smtp_session *s)
{
	auth_limiter_fail(s->srv->auth_fails, &s->peer.sa, (int64_t)time(NULL),
			  s->srv->conf->auth_failure_window);
	s->mode = SMTP_MODE_AUTH_DELAY;
}

/* After the answer's verdict was given: the session reads again. */
static void auth_answered(struct smtp_session *s)
{
	struct smtp_sec *sec = s->sec;

	if (!sec->authed)
		sec->login[0] = '\0';
	if (s->bev != NULL)
		smtp_session_resume(s);
}

static void dovecot_done(void *arg, enum dovecot_auth_result r, const char *user,
			 const char *reason)
{
	struct smtp_session *s = arg;
	struct smtp_sec *sec = s->sec;
	const char *mech = sec->pending_mech;

	sec->dovecot = NULL;
	s->mode = SMTP_MODE_COMMAND;
	if (r == DOVECOT_AUTH_OK) {
		auth_succeeded(s, mech, user[0] ? user : sec->login);
	} else if (r == DOVECOT_AUTH_FAIL) {
		auth_failed(s, mech, sec->login, true);
	} else {
		/* no verdict: the failure counted when it was asked is taken back */
		auth_limiter_unfail(s->srv->auth_fails, &s->peer.sa);
		evlog_emit(s->srv->log, EV_AUTH_BACKEND_FAILED, EVF_S("client", s->addr),
			   EVF_S("user", sec->login),
			   EVF_S("socket", s->srv->conf->auth_dovecot_socket), EVF_S("reason", reason));
		smtp_session_reply(s, 454, "4.7.0", "Temporary authentication failure");
	}
	auth_answered(s);
}

/* Asks Dovecot; the session waits (reading paused) for dovecot_done. */
static void auth_ask_dovecot(struct smtp_session *s, const char *mech)
{
	struct smtp_sec *sec = s->sec;
	char err[256];

	if (!auth_may_ask(s))
		return;
	snprintf(sec->login, sizeof sec->login, "%s", sec->creds.user);
	sec->pending_mech = mech;
	sec->dovecot = dovecot_auth_start(s->srv->base, s->srv->conf->auth_dovecot_socket,
					  sec->creds.user, sec->creds.pass, s->addr,
					  smtp_sec_tls_active(s), s->srv->conf->command_timeout,
					  dovecot_done, s, err, sizeof err);
	auth_reset(s);
	if (sec->dovecot != NULL) {
		auth_asked(s);
		return;
	}
	evlog_emit(s->srv->log, EV_AUTH_BACKEND_FAILED, EVF_S("client", s->addr),
		   EVF_S("user", sec->login),
		   EVF_S("socket", s->srv->conf->auth_dovecot_socket), EVF_S("reason", err));
	sec->login[0] = '\0';
	smtp_session_reply(s, 454, "4.7.0", "Temporary authentication failure");
}

static void verifier_done(void *arg, bool ok)
{
	struct smtp_session *s = arg;
	struct smtp_sec *sec = s->sec;

	sec->check = NULL;
	s->mode = SMTP_MODE_COMMAND;
	if (ok)
		auth_succeeded(s, sec->pending_mech, sec->login);
	else
		auth_failed(s, sec->pending_mech, sec->login, true);
	auth_answered(s);
}

/* Hands the password to the verifier threads; the session waits (reading
 * paused) for verifier_done. */
static void auth_ask_verifier(struct smtp_session *s, const char *mech)
{
	struct smtp_server *srv = s->srv;
	struct smtp_sec *sec = s->sec;
	struct verifier *v;
	char err[256] = "";
	bool full = false;

	if (!auth_may_ask(s))
		return;
	snprintf(sec->login, sizeof sec->login, "%s", sec->creds.user);
	sec->pending_mech = mech;
	if ((v = smtp_server_verifier(srv, err, sizeof err)) != NULL)
		sec->check = verifier_submit(v, srv->passwd, sec->creds.user, sec->creds.pass,
					     srv->conf->auth_verify_queue, verifier_done, s, &full);
	auth_reset(s);   /* the job has its own copy of the password */
	if (sec->check != NULL) {
		auth_asked(s);
		return;
	}
	if (full)
		evlog_emit(srv->log, EV_AUTH_VERIFY_BUSY, EVF_S("client", s->addr),
			   EVF_S("user", sec->login), EVF_I("pending", verifier_pending(v)));
	else
		evlog_emit(srv->log, EV_AUTH_VERIFY_FAILED, EVF_S("client", s->addr),
			   EVF_S("user", sec->login), EVF_S("reason", v ? "out of memory" : err));
	smtp_session_reply(s, 454, "4.7.0", "Temporary authentication failure");
	sec->login[0] = '\0';
}

static void auth_verify(struct smtp_session *s)
{
	struct smtp_sec *sec = s->sec;
	struct sasl_creds *c = &sec->creds;
	const char *mech = sec->mech == SASL_MECH_PLAIN ? "PLAIN" : "LOGIN";
	char user[SASL_USER_MAX + 1];

	/* No proxy authorization: an authzid, if any, is the user itself. */
	if (c->authzid[0] != '\0' && strcmp(c->authzid, c->user) != 0) {
		memcpy(user, c->user, sizeof user);
		auth_reset(s);
		auth_failed(s, mech, user, false);
		return;
	}
	if (s->srv->conf->auth_dovecot_socket[0] != '\0')
		auth_ask_dovecot(s, mech);
	else
		auth_ask_verifier(s, mech);
}

/* One client response (initial or after a 334). */
static void auth_response(struct smtp_session *s, const char *line, size_t len)
{
	struct smtp_sec *sec = s->sec;
	enum sasl_result r;

	if (sec->mech == SASL_MECH_PLAIN)
		r = sasl_plain(line, len, &sec->creds);
	else
		r = sasl_login(line, len, sec->step, &sec->creds);
	if (r != SASL_OK) {
		auth_abort(s, r);
		return;
	}
	if (sec->mech == SASL_MECH_LOGIN && sec->step == 0) {
		sec->step = 1;
		smtp_session_reply(s, 334, NULL, "UGFzc3dvcmQ6");   /* "Password:" */
		s->mode = SMTP_MODE_AUTH;
		return;
	}
	auth_verify(s);
}

/* Refuses AUTH when it is not in order; returns true when refused. */
static bool auth_refused(struct smtp_session *s)
{
	const struct carrier_conf *conf = s->srv->conf;

	if (!auth_backend(s)) {
		smtp_session_refuse(s, "AUTH", 502, "5.5.1", "Error: command not implemented");
	} else if (!auth_offered(s)) {
		smtp_session_refuse(s, "AUTH", 538, "5.7.11",
				    "Encryption required for requested authentication mechanism");
	} else if (s->greeted != GREETED_EHLO) {
		smtp_session_refuse(s, "AUTH", 503, "5.5.1", "Error: send EHLO first");
	} else if (smtp_sec_login(s) != NULL) {
		smtp_session_refuse(s, "AUTH", 503, "5.5.1", "Error: already authenticated");
	} else if (s->txn != NULL) {
		smtp_session_refuse(s, "AUTH", 503, "5.5.1", "Error: MAIL transaction in progress");
	} else if (auth_failures(s) >= conf->auth_max_failures) {
		auth_too_many(s, conf->auth_max_failures);
	} else if (sec_get(s) == NULL) {
		smtp_session_refuse(s, "AUTH", 454, "4.7.0", "Temporary authentication failure");
	} else {
		return false;
	}
	return true;
}

void smtp_sec_auth(struct smtp_session *s, const struct smtp_parse_command *cmd)
{
	const char *arg = cmd->arg, *sp;
	size_t len = cmd->arg_len, mlen;
	enum sasl_mech mech;

	if (auth_refused(s))
		return;
	sp = memchr(arg, ' ', len);
	mlen = sp ? (size_t)(sp - arg) : len;
	mech = sasl_mech_parse(arg, mlen);
	if (mech == SASL_MECH_NONE) {
		smtp_session_refuse(s, "AUTH", 504, "5.5.4", "Unrecognized authentication type");
		return;
	}
	sasl_creds_wipe(&s->sec->creds);
	s->sec->mech = (uint8_t)mech;
	s->sec->step = 0;
	if (sp != NULL) {
		while (sp < arg + len && *sp == ' ')
			sp++;
		auth_response(s, sp, (size_t)(arg + len - sp));
		return;
	}
	if (mech == SASL_MECH_PLAIN)
		smtp_session_reply(s, 334, NULL, "%s", "");
	else
		smtp_session_reply(s, 334, NULL, "VXNlcm5hbWU6");   /* "Username:" */
	s->mode = SMTP_MODE_AUTH;
}

bool smtp_sec_input(struct smtp_session *s, struct evbuffer *in)
{
	size_t eol_len, len, n;
	struct evbuffer_ptr p = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_LF);
	char *line;

	if (p.pos < 0) {
		if (evbuffer_get_length(in) <= SASL_LINE_MAX + 2)
			return false;
		evbuffer_drain(in, evbuffer_get_length(in));
		auth_abort(s, SASL_TOO_LONG);
		s->mode = SMTP_MODE_DISCARD;   /* the rest of the line */
		return true;
	}
	len = (size_t)p.pos + 1;
	if (len > SASL_LINE_MAX + 2) {
		evbuffer_drain(in, len);
		auth_abort(s, SASL_TOO_LONG);
		return true;
	}
	line = (char *)evbuffer_pullup(in, (ssize_t)len);
	if (line == NULL)
		return false;
	s->mode = SMTP_MODE_COMMAND;
	n = len - 1;
	if (n > 0 && line[n - 1] == '\r')
		n--;
	auth_response(s, line, n);
	explicit_bzero(line, len);   /* the response may hold the password */
	evbuffer_drain(in, len);
	return true;
}

/* ---- MAIL and RCPT ------------------------------------------------------------ */

bool smtp_sec_mail_allowed(struct smtp_session *s, const struct smtp_parse_command *cmd)
{
	const char *login = smtp_sec_login(s);
	struct policy_result pr;
	char sender[SMTP_PARSE_PATH_CAP + SMTP_PARSE_DOMAIN_MAX + 2];

	if ((s->flags & SMTP_SERVER_SUBMISSION) && !smtp_sec_tls_active(s)) {
		smtp_session_refuse(s, "MAIL", 530, "5.7.0", "Must issue a STARTTLS command first");
		return false;
	}
	if ((s->flags & SMTP_SERVER_SUBMISSION) && login == NULL) {
		smtp_session_refuse(s, "MAIL", 530, "5.7.0", "Authentication required");
		return false;
	}
	if (login == NULL)
		return true;
	auth_check_sender(s->srv->conf, login, cmd->path.null, cmd->path.local_raw,
			  cmd->path.domain, &pr);
	if (pr.verdict == POLICY_ACCEPT)
		return true;
	snprintf(sender, sizeof sender, "%s%s%s", cmd->path.local_raw,
		 cmd->path.domain_len ? "@" : "", cmd->path.domain);
	evlog_emit(s->srv->log, EV_AUTH_SENDER_MISMATCH, EVF_S("client", s->addr),
		   EVF_S("user", login), EVF_S("sender", sender));
	smtp_session_refuse(s, "MAIL", pr.code, pr.enhanced, pr.text);
	return false;
}

void smtp_sec_rcpt(struct smtp_session *s, struct policy_result *pr)
{
	struct policy_result r;

	auth_check_rcpt(pr, smtp_sec_login(s) != NULL, &r);
	*pr = r;
}
