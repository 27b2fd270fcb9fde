/*
 * smtp_client_tls: STARTTLS for the outbound client (see smtp_client_int.h
 * and the TLS decisions in smtp_client.h): the step after EHLO that the
 * policy (none, may, encrypt, verify) asks for, the switch of the socket
 * to an OpenSSL bufferevent, the handshake's end (the certificate check,
 * then EHLO again), TLS failures, and may's fallback to plaintext with the
 * client's bounded memory of addresses whose handshake failed.
 *
 * Threads: the loop thread of the client's base only.
 */
#include "smtp_client.h"
#include "smtp_client_int.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "evlog.h"
#include "tls.h"

/* ---- STARTTLS ------------------------------------------------------------- */

bool sc_tls_required(const struct sc_conn *conn)
{
	return conn->job != NULL && conn->job->tls >= SMTP_CLIENT_TLS_ENCRYPT;
}

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* True while `d` is remembered as failing the handshake (see plain_add). */
static bool plain_known(const struct smtp_client *c, const struct smtp_client_dest *d)
{
	uint64_t now = now_ms();

	for (size_t i = 0; i < SMTP_CLIENT_PLAIN_MAX; i++)
		if (c->plain[i].until > now && sc_dest_equal(&c->plain[i].dest, d))
			return true;
	return false;
}

/* Remembers `d` for opts.tls_plain_ms: its entry, else a free or expired
 * one, else the one that expires first.  The table is fixed: no
 * allocation, and a flood of broken peers only forgets the oldest. */
static void plain_add(struct smtp_client *c, const struct smtp_client_dest *d)
{
	struct sc_plain *slot = &c->plain[0];

	if (c->opts.tls_plain_ms == 0)
		return;
	for (size_t i = 0; i < SMTP_CLIENT_PLAIN_MAX; i++) {
		struct sc_plain *p = &c->plain[i];

		if (p->until != 0 && sc_dest_equal(&p->dest, d)) {
			slot = p;
			break;
		}
		if (p->until < slot->until)
			slot = p;
	}
	memset(slot, 0, sizeof *slot);
	memcpy(&slot->dest.addr, &d->addr, d->addr_len);
	slot->dest.addr_len = d->addr_len;
	slot->until = now_ms() + c->opts.tls_plain_ms;
}

void sc_tls_fail(struct sc_conn *conn, const char *why, bool polite)
{
	char reason[SMTP_CLIENT_TEXT_MAX];
	enum smtp_client_tls t = conn->job ? conn->job->tls : SMTP_CLIENT_TLS_NONE;

	snprintf(reason, sizeof reason, "TLS %s: %s", smtp_client_tls_name(t), why);
	evlog_emit(conn->c->log, EV_SMTP_OUT_TLS_FAILED,
		   EVF_S("host", conn->dest.host[0] ? conn->dest.host : "-"),
		   EVF_S("addr", conn->addr_text), EVF_S("policy", smtp_client_tls_name(t)),
		   EVF_S("reason", why));
	sc_conn_fail(conn, reason, polite);
}

/*
 * may: the TLS handshake failed (`why`).  Opportunistic TLS promises no
 * encryption, so, as Postfix does, the same address is tried once more on a
 * new connection that never sends STARTTLS, and the address is remembered
 * (plain_add) so the next deliveries skip the failing handshake.  The
 * failed handshake is recorded as an attempt "TLS may: ..." (the caller's
 * per-hop counters count it as a TLS failure; the delivery itself has no
 * TLS).  Frees conn.  Returns false, touching nothing, when it does not
 * apply (not may, or already the plaintext retry): the caller fails.
 */
bool sc_tls_fallback(struct sc_conn *conn, const char *why)
{
	struct sc_job *job = conn->job;
	struct smtp_client *c = conn->c;
	struct smtp_client_dest dest = conn->dest;
	struct smtp_client_attempt *a;
	char reason[SMTP_CLIENT_TEXT_MAX], err[256];

	if (job == NULL || job->tls != SMTP_CLIENT_TLS_MAY || conn->no_starttls ||
	    job->mail_sent || job->finished)
		return false;
	plain_add(c, &dest);
	snprintf(reason, sizeof reason, "TLS may: %s; retried in plaintext", why);
	a = &job->attempts[job->n_attempts++];
	snprintf(a->host, sizeof a->host, "%s", dest.host);
	snprintf(a->addr, sizeof a->addr, "%s", conn->addr_text);
	sc_text_sanitize(a->reason, sizeof a->reason, reason, strlen(reason));
	evlog_emit(c->log, EV_SMTP_OUT_TLS_PLAINTEXT, EVF_S("qid", job->qid),
		   EVF_S("host", dest.host[0] ? dest.host : "-"),
		   EVF_S("addr", conn->addr_text), EVF_S("reason", why),
		   EVF_I("hold", c->opts.tls_plain_ms / 1000u));
	job->conn = NULL;
	conn->job = NULL;
	sc_conn_free(conn, false);   /* its slot goes to the retry */
	job->plain_retry = true;
	if (sc_conn_new(job, &dest, err, sizeof err) != NULL)
		return true;
	job->plain_retry = false;
	sc_job_connect_failed(job, &dest, err);
	sc_job_connect_next(job);
	return true;
}

/* After EHLO: STARTTLS when the policy wants it.  Returns true when the
 * connection was taken over (STARTTLS sent, or failed). */
bool sc_tls_step(struct sc_conn *conn)
{
	struct sc_job *job = conn->job;

	if (job == NULL || job->tls == SMTP_CLIENT_TLS_NONE || conn->tls_on ||
	    conn->mode != SMTP_CLIENT_SMTP || conn->dest.addr_len == 0)
		return false;
	/* may, and the handshake failed here lately: plaintext at once. */
	if (job->tls == SMTP_CLIENT_TLS_MAY &&
	    (conn->no_starttls || plain_known(conn->c, &conn->dest)))
		return false;
	if (!conn->starttls) {
		if (!sc_tls_required(conn))
			return false;
		sc_tls_fail(conn, "the peer does not offer STARTTLS", true);
		return true;
	}
	conn->state = SC_STARTTLS;
	sc_conn_printf(conn, "STARTTLS\r\n");
	sc_conn_arm(conn, conn->c->opts.command_ms);
	return true;
}

/* 220 to STARTTLS: the socket goes to an OpenSSL bufferevent. */
void sc_tls_begin(struct sc_conn *conn)
{
	struct smtp_client *c = conn->c;
	struct sc_job *job = conn->job;
	const char *verify = NULL;
	struct bufferevent *bev;
	char err[SMTP_CLIENT_TEXT_MAX];
	SSL *ssl;
	int fd;

	if (evbuffer_get_length(bufferevent_get_input(conn->bev)) > 0) {
		/* Plaintext after the 220 would be read as if it came under
		 * TLS: the CVE-2011-0411 class.  Never go on. */
		sc_tls_fail(conn, "the peer sent data after the STARTTLS reply", false);
		return;
	}
	if (job->tls == SMTP_CLIENT_TLS_VERIFY)
		verify = job->tls_name ? job->tls_name : conn->dest.host;
	if (c->tls == NULL && (c->tls = tls_client_new(err, sizeof err)) == NULL) {
		sc_tls_fail(conn, err, true);
		return;
	}
	ssl = tls_client_ssl(c->tls, job->tls_ca_file, conn->dest.host, verify, err, sizeof err);
	if (ssl == NULL) {
		sc_tls_fail(conn, err, true);
		return;
	}
	fd = bufferevent_getfd(conn->bev);
	bufferevent_disable(conn->bev, EV_READ | EV_WRITE);
	bufferevent_setfd(conn->bev, -1);
	bev = bufferevent_openssl_socket_new(c->base, fd, ssl, BUFFEREVENT_SSL_CONNECTING,
					     BEV_OPT_CLOSE_ON_FREE);
	if (bev == NULL) {
		close(fd);
		sc_tls_fail(conn, "out of memory", false);
		return;
	}
	bufferevent_free(conn->bev);
	conn->bev = bev;
	bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
	sc_conn_setcb(conn, bev);
	bufferevent_enable(bev, EV_READ | EV_WRITE);
	conn->state = SC_HANDSHAKE;
	sc_conn_arm(conn, c->opts.command_ms);
}

/* The handshake finished: check the certificate, then EHLO again. */
static void tls_established(struct sc_conn *conn)
{
	SSL *ssl = bufferevent_openssl_get_ssl(conn->bev);
	struct sc_job *job = conn->job;
	char version[16], cipher[64], why[SMTP_CLIENT_TEXT_MAX];

	evtimer_del(conn->timer);
	if (job != NULL && job->tls == SMTP_CLIENT_TLS_VERIFY) {
		if (!tls_client_check(ssl, why, sizeof why)) {
			sc_tls_fail(conn, why, true);
			return;
		}
		conn->tls_verified = true;
	}
	tls_describe(ssl, version, sizeof version, cipher, sizeof cipher);
	snprintf(conn->tls_text, sizeof conn->tls_text, "%s %s", version, cipher);
	conn->tls_on = true;
	evlog_emit(conn->c->log, EV_SMTP_OUT_TLS_ESTABLISHED,
		   EVF_S("host", conn->dest.host[0] ? conn->dest.host : "-"),
		   EVF_S("addr", conn->addr_text), EVF_S("version", version),
		   EVF_S("cipher", cipher),
		   EVF_S("policy", smtp_client_tls_name(job ? job->tls : SMTP_CLIENT_TLS_MAY)));
	conn->state = SC_EHLO;
	sc_send_hello(conn, "EHLO");
}

void sc_tls_handshake_event(struct sc_conn *conn, short what, int e)
{
	char reason[SMTP_CLIENT_TEXT_MAX];
	unsigned long oe;

	if (what & BEV_EVENT_CONNECTED) {
		tls_established(conn);
		return;
	}
	oe = bufferevent_get_openssl_error(conn->bev);
	if (oe != 0)
		ERR_error_string_n(oe, reason, sizeof reason);
	else
		snprintf(reason, sizeof reason, "handshake failed: %s",
			 (what & BEV_EVENT_EOF) ? "connection closed by the peer" :
			 strerror(e != 0 ? e : EIO));
	if (!sc_tls_fallback(conn, reason))
		sc_tls_fail(conn, reason, false);
}

/* ---- public ------------------------------------------------------------------ */

int smtp_client_tls_parse(const char *s, enum smtp_client_tls *r)
{
	if (s[0] == '\0' || strcmp(s, "may") == 0)
		*r = SMTP_CLIENT_TLS_MAY;
	else if (strcmp(s, "none") == 0)
		*r = SMTP_CLIENT_TLS_NONE;
	else if (strcmp(s, "encrypt") == 0)
		*r = SMTP_CLIENT_TLS_ENCRYPT;
	else if (strcmp(s, "verify") == 0)
		*r = SMTP_CLIENT_TLS_VERIFY;
	else
		return -1;
	return 0;
}

const char *smtp_client_tls_name(enum smtp_client_tls t)
{
	switch (t) {
	case SMTP_CLIENT_TLS_NONE: return "none";
	case SMTP_CLIENT_TLS_MAY: return "may";
	case SMTP_CLIENT_TLS_ENCRYPT: return "encrypt";
	case SMTP_CLIENT_TLS_VERIFY: return "verify";
	}
	return "?";
}
