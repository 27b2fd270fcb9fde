/*
 * smtp_session: one inbound SMTP session (RFC 5321 with PIPELINING 2920,
 * SIZE 1870, 8BITMIME 6152, ENHANCEDSTATUSCODES 2034/3463, SMTPUTF8 6531,
 * DSN 3461 and CHUNKING 3030).  See smtp_session.h.
 *
 * Input is processed in order, every complete command in the buffer in one
 * pass; replies are appended to the bufferevent's output and leave in one
 * write when the loop next polls (batched).  At end of data the message is
 * handed to the spool and the session pauses (reading disabled) until the
 * commit completes: commands pipelined after it are then processed, so
 * replies never reorder.  250 is sent only for a completion with rc == 0.
 *
 * Memory: an idle session is struct smtp_session plus libevent's
 * bufferevent; the transaction (struct smtp_txn) is allocated at MAIL, and
 * parsing uses the stack.  Input held per session is bounded by the line
 * limit (over-long lines are discarded as they arrive) and by pausing reads
 * while a commit is pending or the client does not read its replies.
 *
 * Threads: the thread running the server's event_base only.
 */
#include "smtp_session.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "hdrscan.h"
#include "policy.h"
#include "sasl.h"
#include "smtp_parse.h"
#include "smtp_sec.h"
#include "smtp_trace.h"
#include "spool.h"
#include "track.h"

#define OUT_HIGH (64u * 1024u)        /* unread replies: stop reading */
#define DATA_CHUNK 16384u             /* DATA output buffer (stack) */
#define LINGER_SECONDS 2              /* read-and-discard after the last reply */
#define RECEIVED_MAX 2048u            /* our Received header */
#define RCPT_FOR_MAX 900u             /* longest address put in "for <>" */
#define ADDR_MAX (SMTP_PARSE_PATH_CAP + 1 + SMTP_PARSE_DOMAIN_MAX + 1)


struct smtp_txn {
	struct spool_msg *msg;        /* NULL without a spool or after a failure */
	char *sender;                 /* "" for <> */
	char *first_rcpt;
	unsigned n_rcpts;
	char **rcpts;                 /* kept only for the tracking log */
	size_t n_kept;
	enum spool_body_type body;
	bool smtputf8;
	bool bdat;                    /* BDAT used: DATA and RCPT refused */
	bool write_failed;            /* appending failed: 452 at the end */
	/* limits, copied at MAIL (a reload applies to the next transaction) */
	uint64_t max_size;
	unsigned max_rcpts;
	unsigned max_received;
	size_t text_line_max;
	bool normalize;
	/* DATA */
	struct smtp_parse_data data;
	/* BDAT */
	uint64_t bdat_total;
	uint64_t chunk_left;
	bool chunk_last;
	struct hdrscan hdr;           /* DATA output and BDAT chunks */
	char qid[SPOOL_QID_SIZE];
	char fail_reason[160];
};

/* The completion's handle on a session; outlives it if the session is
 * destroyed while the commit is pending (s is then NULL). */
struct smtp_commit {
	struct smtp_session *s;
};

static void session_process(struct smtp_session *s);
static void session_update_io(struct smtp_session *s);
static void session_free(struct smtp_session *s, const char *reason);

/* ---- helpers --------------------------------------------------------- */

static const struct carrier_conf *conf_of(const struct smtp_session *s)
{
	return s->srv->conf;
}

static void count(struct smtp_session *s, enum counters_id id, int64_t n)
{
	if (s->srv->ctr != NULL)
		counters_add(counters_block(s->srv->ctr), id, n);
}

static struct evbuffer *out_of(struct smtp_session *s)
{
	return bufferevent_get_output(s->bev);
}

/* Queues one reply line; `enh` NULL means none (greeting, HELO, EHLO, 354,
 * RFC 2034 3). */
static void vreply(struct smtp_session *s, unsigned code, const char *enh,
		   const char *fmt, va_list ap) __attribute__((format(printf, 4, 0)));
static void vreply(struct smtp_session *s, unsigned code, const char *enh,
		   const char *fmt, va_list ap)
{
	char text[512];

	if (s->bev == NULL)
		return;
	vsnprintf(text, sizeof text, fmt, ap);
	if (enh != NULL && enh[0])
		evbuffer_add_printf(out_of(s), "%u %s %s\r\n", code, enh, text);
	else
		evbuffer_add_printf(out_of(s), "%u %s\r\n", code, text);
}

static void reply(struct smtp_session *s, unsigned code, const char *enh,
		  const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void reply(struct smtp_session *s, unsigned code, const char *enh,
		  const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vreply(s, code, enh, fmt, ap);
	va_end(ap);
}

void smtp_session_reply(struct smtp_session *s, unsigned code, const char *enh,
			const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vreply(s, code, enh, fmt, ap);
	va_end(ap);
}

/* A refusal: the reply, the error count and the (info) event. */
static void reply_err(struct smtp_session *s, const char *command, unsigned code,
		      const char *enh, const char *text)
{
	reply(s, code, enh, "%s", text);
	s->errors++;
	evlog_emit(s->srv->log, EV_SMTP_IN_REJECTED, EVF_S("command", command),
		   EVF_S("client", s->addr), EVF_I("code", code),
		   EVF_S("enhanced", enh), EVF_S("reason", text));
}

/* Queues the last reply and closes once it is written. */
static void close_after(struct smtp_session *s, unsigned code, const char *enh,
			const char *text)
{
	reply(s, code, enh, "%s", text);
	s->mode = SMTP_MODE_CLOSING;
	s->close_reason = text;
}

void smtp_session_refuse(struct smtp_session *s, const char *command, unsigned code,
			 const char *enh, const char *text)
{
	reply_err(s, command, code, enh, text);
}

void smtp_session_close_after(struct smtp_session *s, unsigned code, const char *enh,
			      const char *text)
{
	close_after(s, code, enh, text);
}

/* ---- transactions ----------------------------------------------------- */

static void txn_end(struct smtp_session *s)
{
	struct smtp_txn *t = s->txn;

	if (t == NULL)
		return;
	spool_msg_abort(&t->msg);
	free(t->sender);
	free(t->first_rcpt);
	for (size_t i = 0; i < t->n_kept; i++)
		free(t->rcpts[i]);
	free(t->rcpts);
	free(t);
	s->txn = NULL;
}

/* The tracking log names every recipient; without it nothing is kept.
 * Out of memory only shortens the tracked list. */
static void txn_keep_rcpt(struct smtp_session *s, const char *addr)
{
	struct smtp_txn *t = s->txn;
	char **v, *copy;

	if (s->srv->track == NULL || (copy = strdup(addr)) == NULL)
		return;
	v = realloc(t->rcpts, (t->n_kept + 1) * sizeof *v);
	if (v == NULL) {
		free(copy);
		return;
	}
	t->rcpts = v;
	t->rcpts[t->n_kept++] = copy;
}

static void txn_track(struct smtp_session *s, const char *qid, uint64_t size)
{
	struct smtp_txn *t = s->txn;
	char tls[160];
	struct track_received r = {
		.qid = qid, .client = s->addr, .helo = s->helo ? s->helo : "",
		.size = size, .msgid = hdrscan_msgid(&t->hdr), .sender = t->sender,
		.rcpts = (const char *const *)t->rcpts, .n_rcpts = t->n_kept,
		.tls = smtp_sec_track_tls(s, tls, sizeof tls), .auth = smtp_sec_login(s),
	};

	track_received(s->srv->track, &r);
	track_queued(s->srv->track, qid, "smtp", t->sender, t->n_rcpts);
}

static void txn_fail_write(struct smtp_session *s, const char *why)
{
	struct smtp_txn *t = s->txn;

	if (!t->write_failed)
		snprintf(t->fail_reason, sizeof t->fail_reason, "%s", why);
	t->write_failed = true;
	spool_msg_abort(&t->msg);
}

static void txn_append(struct smtp_session *s, const void *p, size_t n)
{
	struct smtp_txn *t = s->txn;
	char err[160];

	if (t->msg == NULL || n == 0)
		return;
	if (spool_msg_append(t->msg, p, n, err, sizeof err) < 0)
		txn_fail_write(s, err);
}

/* Copies `in` into `out`, replacing what could break a header comment. */
static void sanitize(const char *in, char *out, size_t size)
{
	size_t i;

	for (i = 0; in[i] && i + 1 < size; i++) {
		unsigned char c = (unsigned char)in[i];

		out[i] = (c < 0x21 || c > 0x7e || c == '(' || c == ')' ||
			  c == '\\' || c == ';') ? '?' : (char)c;
	}
	out[i] = '\0';
}

static void peer_literal(const struct smtp_session *s, char *buf, size_t size)
{
	if (s->peer.sa.sa_family == AF_INET6)
		snprintf(buf, size, "[IPv6:%s]", s->addr);
	else
		snprintf(buf, size, "[%s]", s->addr);
}

/* RFC 5321 4.4 trace field; rDNS is not looked up, so the TCP-info is the
 * address literal.  Prepended before the first body byte. */
static void txn_add_received(struct smtp_session *s)
{
	struct smtp_txn *t = s->txn;
	char hdr[RECEIVED_MAX], lit[INET6_ADDRSTRLEN + 8], helo[SMTP_PARSE_DOMAIN_MAX + 1];
	char date[64], forpart[RCPT_FOR_MAX + 16] = "", with[16], tls[160], who[300] = "";
	const char *login = smtp_sec_login(s);
	struct tm tm;
	time_t now = time(NULL);
	int n;

	peer_literal(s, lit, sizeof lit);
	sanitize(s->helo ? s->helo : "", helo, sizeof helo);
	gmtime_r(&now, &tm);
	strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S +0000", &tm);
	/* RFC 3848 / 6531: ESMTP, ESMTPS, ESMTPA, ESMTPSA, UTF8SMTPSA... */
	if (s->greeted == GREETED_EHLO)
		snprintf(with, sizeof with, "%s%s%s", t->smtputf8 ? "UTF8SMTP" : "ESMTP",
			 smtp_sec_tls_active(s) ? "S" : "", login ? "A" : "");
	else
		snprintf(with, sizeof with, "SMTP");
	smtp_sec_received_tls(s, tls, sizeof tls);
	if (login != NULL && conf_of(s)->auth_received) {
		char safe[SASL_USER_MAX + 1];

		sanitize(login, safe, sizeof safe);
		snprintf(who, sizeof who, "\r\n\t(Authenticated sender: %s)", safe);
	}
	if (t->n_rcpts == 1 && strlen(t->first_rcpt) <= RCPT_FOR_MAX)
		snprintf(forpart, sizeof forpart, "\r\n\tfor <%s>", t->first_rcpt);
	if (s->helo_valid && strcmp(helo, s->helo) == 0)
		n = snprintf(hdr, sizeof hdr, "Received: from %s (%s)", helo, lit);
	else
		n = snprintf(hdr, sizeof hdr, "Received: from %s (%s helo=%s)", lit, lit, helo);
	if (tls[0])
		n += snprintf(hdr + n, sizeof hdr - (size_t)n, "\r\n\t(%s)", tls);
	n += snprintf(hdr + n, sizeof hdr - (size_t)n,
		      "%s\r\n\tby %s (carrier) with %s id %s%s;\r\n\t%s\r\n",
		      who, s->srv->hostname, with, t->qid, forpart, date);
	txn_append(s, hdr, strlen(hdr));
}

/* ---- the commit -------------------------------------------------------- */

static void commit_done(void *arg, int rc, const char *qid, const char *err)
{
	struct smtp_commit *c = arg;
	struct smtp_session *s = c->s;
	struct smtp_txn *t;

	free(c);
	/* A client that left before its 250 is not told, but its message is
	 * queued all the same; delivery finds it at its next scan. */
	if (rc == 0 && s != NULL && s->srv->on_queued != NULL)
		s->srv->on_queued(s->srv->on_queued_arg, qid);
	if (s == NULL)
		return;
	s->commit = NULL;
	t = s->txn;
	if (rc == 0) {
		reply(s, 250, "2.0.0", "Ok: queued as %s", qid);
		s->messages++;
		count(s, COUNTER_MSG_RECEIVED, 1);
		count(s, COUNTER_RCPT_RECEIVED, t->n_rcpts);
		count(s, COUNTER_BYTES_IN, (int64_t)(t->bdat ? t->bdat_total :
					      smtp_parse_data_size(&t->data)));
		evlog_emit(s->srv->log, EV_SMTP_IN_ACCEPTED, EVF_S("qid", qid),
			   EVF_S("client", s->addr), EVF_S("sender", t->sender),
			   EVF_I("rcpts", t->n_rcpts),
			   EVF_I("size", t->bdat ? t->bdat_total : smtp_parse_data_size(&t->data)));
		txn_track(s, qid, t->bdat ? t->bdat_total : smtp_parse_data_size(&t->data));
	} else {
		evlog_emit(s->srv->log, EV_SMTP_IN_COMMIT_FAILED, EVF_S("qid", qid),
			   EVF_S("client", s->addr), EVF_S("reason", err ? err : "?"));
		reply_err(s, t->bdat ? "BDAT" : "DATA", 452, "4.3.1",
			  "Insufficient system storage, try again later");
	}
	txn_end(s);
	if (s->gone) {
		session_free(s, "client vanished before the commit completed");
		return;
	}
	s->mode = SMTP_MODE_COMMAND;
	session_process(s);
}

/* End of a message: loop check, then the hand-off to the spool. */
static void txn_finish(struct smtp_session *s, const char *command, unsigned received)
{
	struct smtp_txn *t = s->txn;
	struct policy_result pr;
	struct smtp_commit *c;
	char err[256];

	policy_check_received(received, t->max_received, &pr);
	if (pr.verdict != POLICY_ACCEPT) {
		count(s, COUNTER_LOOPS_DETECTED, 1);
		evlog_emit(s->srv->log, EV_POLICY_LOOP, EVF_S("client", s->addr),
			   EVF_S("sender", t->sender), EVF_I("received", received),
			   EVF_I("max", t->max_received));
		reply_err(s, command, pr.code, pr.enhanced, pr.text);
		txn_end(s);
		return;
	}
	if (t->write_failed || t->msg == NULL) {
		evlog_emit(s->srv->log, EV_SMTP_IN_SPOOL_WRITE_FAILED, EVF_S("client", s->addr),
			   EVF_S("reason", t->write_failed ? t->fail_reason : "no message"));
		reply_err(s, command, 452, "4.3.1", "Insufficient system storage, try again later");
		txn_end(s);
		return;
	}
	c = malloc(sizeof *c);
	if (c == NULL) {
		reply_err(s, command, 451, "4.3.0", "Local error: out of memory");
		txn_end(s);
		return;
	}
	c->s = s;
	if (spool_commit_async(s->srv->spool, &t->msg, s->srv->base, commit_done, c,
			       err, sizeof err) < 0) {
		free(c);
		evlog_emit(s->srv->log, EV_SMTP_IN_COMMIT_FAILED, EVF_S("qid", t->qid),
			   EVF_S("client", s->addr), EVF_S("reason", err));
		reply_err(s, command, 452, "4.3.1", "Insufficient system storage, try again later");
		txn_end(s);
		return;
	}
	s->commit = c;
	s->mode = SMTP_MODE_COMMIT;
}

/* ---- commands ---------------------------------------------------------- */

static void cmd_helo(struct smtp_session *s, const struct smtp_parse_command *cmd)
{
	bool ehlo = cmd->verb == SMTP_PARSE_EHLO;
	char *helo = strndup(cmd->helo, cmd->helo_len);
	struct evbuffer *out;

	if (helo == NULL) {
		reply_err(s, smtp_parse_verb_name(cmd->verb), 451, "4.3.0", "Local error: out of memory");
		return;
	}
	txn_end(s);   /* RFC 5321 4.1.4: HELO/EHLO reset the state */
	free(s->helo);
	s->helo = helo;
	s->helo_valid = cmd->helo_valid;
	s->greeted = ehlo ? GREETED_EHLO : GREETED_HELO;
	if (!ehlo) {
		reply(s, 250, NULL, "%s", s->srv->hostname);
		return;
	}
	if (s->bev == NULL)
		return;
	out = out_of(s);
	evbuffer_add_printf(out, "250-%s Hello [%s]\r\n", s->srv->hostname, s->addr);
	smtp_sec_ehlo(s, out);
	evbuffer_add_printf(out, "250-PIPELINING\r\n250-SIZE %llu\r\n250-8BITMIME\r\n"
			    "250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250-DSN\r\n"
			    "250 CHUNKING\r\n",
			    (unsigned long long)conf_of(s)->max_message_size);
}

/* "local@domain" as sent (quotes kept), "" for <>. */
static void path_text(const struct smtp_parse_path *p, char *buf, size_t size)
{
	if (p->null)
		buf[0] = '\0';
	else if (p->domain_len == 0)
		snprintf(buf, size, "%s", p->local_raw);
	else
		snprintf(buf, size, "%s@%s", p->local_raw, p->domain);
}

static bool mail_has_params(const struct smtp_parse_mail_params *m)
{
	return m->has_size || m->body != SMTP_PARSE_BODY_NONE || m->smtputf8 ||
	       m->ret != SMTP_PARSE_RET_NONE || m->has_envid || m->has_auth;
}

static int txn_new(struct smtp_session *s, const struct smtp_parse_command *cmd)
{
	const struct carrier_conf *conf = conf_of(s);
	const struct smtp_parse_mail_params *mp = &cmd->mail;
	struct smtp_txn *t = calloc(1, sizeof *t);
	char addr[ADDR_MAX], err[160];

	if (t == NULL)
		return -1;
	s->txn = t;
	t->max_size = conf->max_message_size;
	t->max_rcpts = conf->max_recipients;
	t->max_received = conf->max_received_headers;
	t->text_line_max = conf->text_line_max;
	t->normalize = conf->bare_lf_normalize;
	t->smtputf8 = mp->smtputf8;
	t->body = mp->body == SMTP_PARSE_BODY_8BITMIME ? SPOOL_BODY_8BITMIME : SPOOL_BODY_7BIT;
	path_text(&cmd->path, addr, sizeof addr);
	t->sender = strdup(addr);
	if (t->sender == NULL)
		return -1;
	if (s->srv->spool == NULL)
		return 0;
	t->msg = spool_msg_new(s->srv->spool, err, sizeof err);
	if (t->msg == NULL)
		return -1;
	snprintf(t->qid, sizeof t->qid, "%s", spool_msg_qid(t->msg));
	if (spool_msg_set_sender(t->msg, addr) < 0 ||
	    spool_msg_set_dsn(t->msg, mp->ret == SMTP_PARSE_RET_FULL ? SPOOL_RET_FULL :
			      mp->ret == SMTP_PARSE_RET_HDRS ? SPOOL_RET_HDRS : SPOOL_RET_UNSPEC,
			      mp->has_envid ? mp->envid : NULL) < 0 ||
	    spool_msg_set_client(t->msg, s->addr, s->helo ? s->helo : "") < 0)
		return -1;
	spool_msg_set_body_type(t->msg, t->body);
	spool_msg_set_smtputf8(t->msg, t->smtputf8);
	spool_msg_set_arrival(t->msg, (int64_t)time(NULL));
	return 0;
}

static void cmd_mail(struct smtp_session *s, const struct smtp_parse_command *cmd)
{
	const struct smtp_parse_mail_params *mp = &cmd->mail;
	struct policy_result pr;
	char err[256];

	if (s->greeted == GREETED_NONE) {
		reply_err(s, "MAIL", 503, "5.5.1", "Error: send HELO/EHLO first");
		return;
	}
	if (s->txn != NULL) {
		reply_err(s, "MAIL", 503, "5.5.1", "Error: nested MAIL command");
		return;
	}
	if (s->srv->shutting_down) {
		close_after(s, 421, "4.3.2", "Service shutting down, closing transmission channel");
		return;
	}
	if (!smtp_sec_mail_allowed(s, cmd))
		return;
	if (s->greeted != GREETED_EHLO && mail_has_params(mp)) {
		reply_err(s, "MAIL", 555, "5.5.4", "MAIL parameters need EHLO");
		return;
	}
	if (mp->body == SMTP_PARSE_BODY_BINARYMIME) {
		reply_err(s, "MAIL", 555, "5.5.4", "BODY=BINARYMIME is not supported");
		return;
	}
	policy_check_mail(cmd->path.null, mp->has_size, mp->size,
			  conf_of(s)->max_message_size, &pr);
	if (pr.verdict != POLICY_ACCEPT) {
		reply_err(s, "MAIL", pr.code, pr.enhanced, pr.text);
		return;
	}
	if (s->srv->spool != NULL &&
	    spool_space_ok(s->srv->spool, mp->has_size ? mp->size : 0, err, sizeof err) < 0) {
		evlog_emit(s->srv->log, EV_SMTP_IN_SPACE_LOW, EVF_S("client", s->addr),
			   EVF_S("reason", err));
		reply_err(s, "MAIL", 452, "4.3.1", "Insufficient system storage, try again later");
		return;
	}
	if (txn_new(s, cmd) < 0) {
		txn_end(s);
		reply_err(s, "MAIL", 451, "4.3.0", "Local error: cannot start the transaction");
		return;
	}
	reply(s, 250, "2.1.0", "Ok");
}

static unsigned notify_to_spool(unsigned n)
{
	return ((n & SMTP_PARSE_NOTIFY_NEVER) ? SPOOL_NOTIFY_NEVER : 0) |
	       ((n & SMTP_PARSE_NOTIFY_SUCCESS) ? SPOOL_NOTIFY_SUCCESS : 0) |
	       ((n & SMTP_PARSE_NOTIFY_FAILURE) ? SPOOL_NOTIFY_FAILURE : 0) |
	       ((n & SMTP_PARSE_NOTIFY_DELAY) ? SPOOL_NOTIFY_DELAY : 0);
}

/* The recipient as stored: as sent, <Postmaster> qualified with the first
 * local domain (or our host name). */
static void rcpt_text(const struct smtp_session *s, const struct smtp_parse_path *p,
		      char *buf, size_t size)
{
	const struct carrier_conf *conf = conf_of(s);

	if (p->postmaster)
		snprintf(buf, size, "%s@%s", p->local_raw,
			 conf->n_local_domains ? conf->local_domains[0] : s->srv->hostname);
	else
		path_text(p, buf, size);
}

static void cmd_rcpt(struct smtp_session *s, const struct smtp_parse_command *cmd)
{
	const struct smtp_parse_rcpt_params *rp = &cmd->rcpt;
	struct smtp_txn *t = s->txn;
	struct policy_result pr;
	char addr[ADDR_MAX], orcpt[SMTP_PARSE_ADDR_TYPE_MAX + SMTP_PARSE_ORCPT_MAX + 2];

	if (t == NULL) {
		reply_err(s, "RCPT", 503, "5.5.1", "Error: need MAIL command");
		return;
	}
	if (t->bdat) {
		reply_err(s, "RCPT", 503, "5.5.1", "Error: RCPT after BDAT");
		return;
	}
	if (s->greeted != GREETED_EHLO && (rp->notify || rp->has_orcpt)) {
		reply_err(s, "RCPT", 555, "5.5.4", "RCPT parameters need EHLO");
		return;
	}
	policy_check_rcpt(conf_of(s), &s->peer.sa, cmd->path.domain, cmd->path.postmaster,
			  t->n_rcpts, t->max_rcpts, &pr);
	smtp_sec_rcpt(s, &pr);
	rcpt_text(s, &cmd->path, addr, sizeof addr);
	if (pr.verdict != POLICY_ACCEPT) {
		if (pr.event == EV_POLICY_RELAY_DENIED)
			evlog_emit(s->srv->log, EV_POLICY_RELAY_DENIED,
				   EVF_S("client", s->addr), EVF_S("rcpt", addr));
		reply_err(s, "RCPT", pr.code, pr.enhanced, pr.text);
		return;
	}
	if (rp->has_orcpt)
		snprintf(orcpt, sizeof orcpt, "%s;%s", rp->orcpt_type, rp->orcpt_raw);
	if (t->msg != NULL &&
	    spool_msg_add_rcpt(t->msg, addr, notify_to_spool(rp->notify),
			       rp->has_orcpt ? orcpt : NULL) < 0) {
		reply_err(s, "RCPT", 451, "4.3.0", "Local error: cannot add the recipient");
		return;
	}
	if (t->first_rcpt == NULL && (t->first_rcpt = strdup(addr)) == NULL) {
		reply_err(s, "RCPT", 451, "4.3.0", "Local error: out of memory");
		return;
	}
	txn_keep_rcpt(s, addr);
	t->n_rcpts++;
	reply(s, 250, "2.1.5", "Ok");
}

/* Checks common to DATA and BDAT; replies and returns false when refused. */
static bool body_allowed(struct smtp_session *s, const char *command)
{
	struct smtp_txn *t = s->txn;

	if (t == NULL) {
		reply_err(s, command, 503, "5.5.1", "Error: need MAIL command");
		return false;
	}
	if (t->n_rcpts == 0) {
		reply_err(s, command, 554, "5.5.1", "Error: no valid recipients");
		txn_end(s);
		return false;
	}
	if (s->srv->spool == NULL) {
		reply_err(s, command, 451, "4.3.0", "Local error: no spool, try again later");
		txn_end(s);
		return false;
	}
	return true;
}

static void cmd_data(struct smtp_session *s)
{
	struct smtp_parse_data_limits dl;
	struct smtp_txn *t = s->txn;

	if (t != NULL && t->bdat) {
		reply_err(s, "DATA", 503, "5.5.1", "Error: DATA after BDAT");
		return;
	}
	if (!body_allowed(s, "DATA"))
		return;
	txn_add_received(s);
	smtp_parse_data_limits_init(&dl);
	dl.max_size = t->max_size;
	dl.max_line = t->text_line_max;
	dl.bare = t->normalize ? SMTP_PARSE_BARE_NORMALIZE : SMTP_PARSE_BARE_REJECT;
	dl.reject_nul = true;   /* no BINARYMIME: NUL is never valid text */
	smtp_parse_data_init(&t->data, &dl);
	s->mode = SMTP_MODE_DATA;
	reply(s, 354, NULL, "End data with <CR><LF>.<CR><LF>");
}

static void skip_chunk(struct smtp_session *s, uint64_t size)
{
	smtp_trace_data(s, size);
	s->skip = size;
	if (size > 0)
		s->mode = SMTP_MODE_SKIP;
}

static void bdat_chunk_done(struct smtp_session *s)
{
	struct smtp_txn *t = s->txn;

	s->mode = SMTP_MODE_COMMAND;
	if (t->write_failed) {
		evlog_emit(s->srv->log, EV_SMTP_IN_SPOOL_WRITE_FAILED, EVF_S("client", s->addr),
			   EVF_S("reason", t->fail_reason));
		reply_err(s, "BDAT", 452, "4.3.1", "Insufficient system storage, try again later");
		txn_end(s);
	} else if (!t->chunk_last) {
		reply(s, 250, "2.0.0", "%llu octets received",
		      (unsigned long long)t->bdat_total);
	} else {
		txn_finish(s, "BDAT", hdrscan_received(&t->hdr));
	}
}

static void cmd_bdat(struct smtp_session *s, const struct smtp_parse_command *cmd)
{
	struct smtp_txn *t = s->txn;

	if (s->greeted == GREETED_NONE) {
		reply_err(s, "BDAT", 503, "5.5.1", "Error: send HELO/EHLO first");
		skip_chunk(s, cmd->bdat_size);
		return;
	}
	if (!body_allowed(s, "BDAT")) {
		skip_chunk(s, cmd->bdat_size);
		return;
	}
	if (!t->bdat) {
		t->bdat = true;
		txn_add_received(s);
	}
	if (cmd->bdat_size > t->max_size || t->bdat_total + cmd->bdat_size > t->max_size) {
		reply_err(s, "BDAT", 552, "5.3.4", "Message size exceeds fixed maximum message size");
		txn_end(s);
		skip_chunk(s, cmd->bdat_size);
		return;
	}
	t->chunk_left = cmd->bdat_size;
	t->chunk_last = cmd->bdat_last;
	smtp_trace_data(s, cmd->bdat_size);
	if (t->chunk_left == 0)
		bdat_chunk_done(s);
	else
		s->mode = SMTP_MODE_BDAT;
}

static void command_dispatch(struct smtp_session *s, const struct smtp_parse_command *cmd)
{
	switch (cmd->verb) {
	case SMTP_PARSE_HELO:
	case SMTP_PARSE_EHLO:
		cmd_helo(s, cmd);
		break;
	case SMTP_PARSE_MAIL:
		cmd_mail(s, cmd);
		break;
	case SMTP_PARSE_RCPT:
		cmd_rcpt(s, cmd);
		break;
	case SMTP_PARSE_DATA:
		cmd_data(s);
		break;
	case SMTP_PARSE_BDAT:
		cmd_bdat(s, cmd);
		break;
	case SMTP_PARSE_RSET:
		txn_end(s);
		reply(s, 250, "2.0.0", "Ok");
		break;
	case SMTP_PARSE_NOOP:
		reply(s, 250, "2.0.0", "Ok");
		break;
	case SMTP_PARSE_QUIT:
		txn_end(s);
		close_after(s, 221, "2.0.0", "Bye");
		break;
	case SMTP_PARSE_VRFY:
		reply(s, 252, "2.5.2", "Cannot VRFY user, but will accept message and attempt delivery");
		break;
	case SMTP_PARSE_HELP:
		reply(s, 214, "2.0.0", "Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH");
		break;
	case SMTP_PARSE_STARTTLS:
		smtp_sec_starttls(s);
		break;
	case SMTP_PARSE_AUTH:
		smtp_sec_auth(s, cmd);
		break;
	default:
		reply_err(s, smtp_parse_verb_name(cmd->verb), 502, "5.5.1",
			  "Error: command not implemented");
		break;
	}
}

/* One command line (with its CRLF or LF). */
static void session_command(struct smtp_session *s, const char *line, size_t len)
{
	struct smtp_parse_command cmd;
	struct smtp_parse_limits lim;
	struct smtp_parse_status st;
	enum smtp_parse_result res;

	if (len >= 1 && line[len - 1] == '\n' && !(len >= 2 && line[len - 2] == '\r'))
		len--;   /* a bare LF ends a command line too (as in Postfix) */
	smtp_parse_limits_init(&lim);
	lim.max_line = conf_of(s)->command_line_max;
	if (smtp_sec_is_auth_line((const unsigned char *)line, len) && lim.max_line < SASL_LINE_MAX)
		lim.max_line = SASL_LINE_MAX;   /* RFC 4954 4: 12288 octets */
	if (len >= 4 && strncasecmp(line, "RCPT", 4) == 0)
		lim.smtputf8 = s->txn != NULL && s->txn->smtputf8;
	else
		lim.smtputf8 = s->greeted == GREETED_EHLO;
	res = smtp_parse_command(line, len, &lim, &cmd);
	if (res == SMTP_PARSE_OK) {
		command_dispatch(s, &cmd);
		return;
	}
	smtp_parse_status(res, cmd.verb, &st);
	reply_err(s, smtp_parse_verb_name(cmd.verb), st.code, st.enhanced, st.text);
	if (st.close) {
		/* A bad BDAT line: its chunk cannot be skipped, so the input
		 * cannot be resynchronised.  The reply above is the last. */
		txn_end(s);
		s->mode = SMTP_MODE_CLOSING;
		s->close_reason = "unparsable BDAT command";
	}
}

/* ---- input ------------------------------------------------------------- */

/* Returns true when it made progress and processing may go on. */
static bool input_command(struct smtp_session *s, struct evbuffer *in)
{
	size_t max = conf_of(s)->command_line_max, eol_len, len;
	struct evbuffer_ptr p = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_LF);
	unsigned char *line, head[5];

	if (max < SASL_LINE_MAX && evbuffer_copyout(in, head, sizeof head) == (ssize_t)sizeof head &&
	    smtp_sec_is_auth_line(head, sizeof head))
		max = SASL_LINE_MAX;

	if (p.pos < 0) {
		if (evbuffer_get_length(in) <= max)
			return false;
		reply_err(s, "UNKNOWN", 500, "5.5.6", "Line too long");
		evbuffer_drain(in, evbuffer_get_length(in));
		s->mode = SMTP_MODE_DISCARD;
		return true;
	}
	len = (size_t)p.pos + 1;
	if (len > max + 1) {
		reply_err(s, "UNKNOWN", 500, "5.5.6", "Line too long");
		evbuffer_drain(in, len);
		return true;
	}
	line = evbuffer_pullup(in, (ssize_t)len);
	if (line == NULL)
		return false;
	smtp_trace_command(s, (const char *)line, len);
	session_command(s, (const char *)line, len);
	if (max == SASL_LINE_MAX)
		explicit_bzero(line, len);   /* an initial response holds a password */
	evbuffer_drain(in, len);
	s->line_since = 0;   /* the next line's clock starts now */
	return true;
}

static bool input_discard(struct smtp_session *s, struct evbuffer *in)
{
	size_t eol_len;
	struct evbuffer_ptr p = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_LF);

	if (p.pos < 0) {
		evbuffer_drain(in, evbuffer_get_length(in));
		return false;
	}
	evbuffer_drain(in, (size_t)p.pos + 1);
	s->mode = SMTP_MODE_COMMAND;
	return true;
}

static void data_end(struct smtp_session *s, enum smtp_parse_result res)
{
	struct smtp_txn *t = s->txn;
	struct smtp_parse_status st;

	s->mode = SMTP_MODE_COMMAND;
	smtp_trace_data(s, smtp_parse_data_size(&t->data));
	if (res != SMTP_PARSE_OK) {
		if (res == SMTP_PARSE_BARE_LF)
			evlog_emit(s->srv->log, EV_SMTP_IN_BARE_LINE_END, EVF_S("client", s->addr));
		smtp_parse_status(res, SMTP_PARSE_DATA, &st);
		reply_err(s, "DATA", st.code, st.enhanced, st.text);
		txn_end(s);
		return;
	}
	txn_finish(s, "DATA", smtp_parse_data_received(&t->data));
}

static bool input_data(struct smtp_session *s, struct evbuffer *in)
{
	struct smtp_txn *t = s->txn;
	unsigned char out[DATA_CHUNK];
	struct evbuffer_iovec v;
	enum smtp_parse_result res;
	size_t used, n;

	while (evbuffer_peek(in, -1, NULL, &v, 1) > 0 && v.iov_len > 0) {
		res = smtp_parse_data_feed(&t->data, v.iov_base, v.iov_len, &used,
					   out, sizeof out, &n);
		txn_append(s, out, n);
		hdrscan_feed(&t->hdr, out, n);
		if (t->msg != NULL && smtp_parse_data_error(&t->data) != SMTP_PARSE_OK)
			spool_msg_abort(&t->msg);   /* refused anyway: free the disk now */
		evbuffer_drain(in, used);
		if (res != SMTP_PARSE_MORE) {
			data_end(s, res);
			return true;
		}
	}
	return false;
}

/* The header scanner counts a BDAT message's Received: fields (DATA has
 * the parser's count, by the same rules). */
static bool input_bdat(struct smtp_session *s, struct evbuffer *in)
{
	struct smtp_txn *t = s->txn;
	struct evbuffer_iovec v;
	size_t n;

	while (t->chunk_left > 0 && evbuffer_peek(in, -1, NULL, &v, 1) > 0 && v.iov_len > 0) {
		n = v.iov_len < t->chunk_left ? v.iov_len : (size_t)t->chunk_left;
		hdrscan_feed(&t->hdr, v.iov_base, n);
		txn_append(s, v.iov_base, n);
		evbuffer_drain(in, n);
		t->chunk_left -= n;
		t->bdat_total += n;
	}
	if (t->chunk_left > 0)
		return false;
	bdat_chunk_done(s);
	return true;
}

static bool input_skip(struct smtp_session *s, struct evbuffer *in)
{
	size_t have = evbuffer_get_length(in);
	size_t n = have < s->skip ? have : (size_t)s->skip;

	evbuffer_drain(in, n);
	s->skip -= n;
	if (s->skip > 0)
		return false;
	s->mode = SMTP_MODE_COMMAND;
	return true;
}

/* After each step: the error limit and a pending shutdown. */
static void session_check(struct smtp_session *s)
{
	if (s->mode != SMTP_MODE_COMMAND && s->mode != SMTP_MODE_DISCARD)
		return;
	if (s->errors >= conf_of(s)->max_errors) {
		evlog_emit(s->srv->log, EV_SMTP_IN_TOO_MANY_ERRORS, EVF_S("client", s->addr),
			   EVF_I("errors", s->errors));
		txn_end(s);
		close_after(s, 421, "4.7.0", "Too many errors, closing transmission channel");
	} else if (s->srv->shutting_down && s->txn == NULL) {
		close_after(s, 421, "4.3.2", "Service shutting down, closing transmission channel");
	}
}

/* A command line must be complete within command_timeout of its first
 * byte: reads reset the bufferevent's timeout, so without this a client
 * trickling one byte at a time could hold a session indefinitely. */
static void line_deadline(struct smtp_session *s, struct evbuffer *in)
{
	int64_t now;

	if (s->mode != SMTP_MODE_COMMAND || evbuffer_get_length(in) == 0) {
		s->line_since = 0;
		return;
	}
	now = (int64_t)time(NULL);
	if (s->line_since == 0) {
		s->line_since = now;
	} else if (now - s->line_since >= (int64_t)conf_of(s)->command_timeout) {
		evlog_emit(s->srv->log, EV_SMTP_IN_TIMEOUT, EVF_S("client", s->addr),
			   EVF_I("seconds", conf_of(s)->command_timeout),
			   EVF_S("waiting", "the end of a command line"));
		txn_end(s);
		close_after(s, 421, "4.4.2", "Timeout, closing transmission channel");
	}
}

/* Processes every complete command in the input, in order, until the input
 * runs dry or the session pauses or closes. */
static void session_process(struct smtp_session *s)
{
	struct evbuffer *in = bufferevent_get_input(s->bev);
	bool more = true;

	session_check(s);
	while (more && evbuffer_get_length(in) > 0) {
		if (evbuffer_get_length(out_of(s)) > OUT_HIGH) {
			s->out_blocked = true;
			break;
		}
		switch (s->mode) {
		case SMTP_MODE_COMMAND:
			more = input_command(s, in);
			break;
		case SMTP_MODE_DISCARD:
			more = input_discard(s, in);
			break;
		case SMTP_MODE_DATA:
			more = input_data(s, in);
			break;
		case SMTP_MODE_BDAT:
			more = input_bdat(s, in);
			break;
		case SMTP_MODE_SKIP:
			more = input_skip(s, in);
			break;
		case SMTP_MODE_LINGER:
			evbuffer_drain(in, evbuffer_get_length(in));
			more = false;
			break;
		case SMTP_MODE_STARTTLS:
			smtp_sec_discard(s, in);
			more = false;
			break;
		case SMTP_MODE_AUTH:
			smtp_trace_auth(s, in);
			more = smtp_sec_input(s, in);
			break;
		default:   /* COMMIT, CLOSING, AUTH_DELAY: wait */
			more = false;
			break;
		}
		session_check(s);
	}
	line_deadline(s, in);
	session_update_io(s);
}

/* Reading on or off, and the timeout for what the session waits for. */
static void session_update_io(struct smtp_session *s)
{
	const struct carrier_conf *conf = conf_of(s);
	struct timeval rt = { 0, 0 }, wt = { (time_t)conf->command_timeout, 0 };
	bool want;

	if (s->bev == NULL)
		return;
	switch (s->mode) {
	case SMTP_MODE_DATA:
	case SMTP_MODE_BDAT:
	case SMTP_MODE_SKIP:
		rt.tv_sec = conf->data_timeout;
		break;
	case SMTP_MODE_LINGER:
		rt.tv_sec = LINGER_SECONDS;
		break;
	default:
		rt.tv_sec = s->txn ? conf->command_timeout : conf->idle_timeout;
		break;
	}
	want = !s->out_blocked && s->mode != SMTP_MODE_COMMIT && s->mode != SMTP_MODE_CLOSING &&
	       s->mode != SMTP_MODE_STARTTLS && s->mode != SMTP_MODE_AUTH_DELAY;
	bufferevent_set_timeouts(s->bev, &rt, &wt);
	if (want)
		bufferevent_enable(s->bev, EV_READ);
	else
		bufferevent_disable(s->bev, EV_READ);
}

/* ---- libevent callbacks -------------------------------------------------- */

static const char *waiting_for(const struct smtp_session *s)
{
	switch (s->mode) {
	case SMTP_MODE_DATA:
	case SMTP_MODE_BDAT:
	case SMTP_MODE_SKIP:
		return "message data";
	case SMTP_MODE_LINGER:
		return "the client to close";
	default:
		return s->txn ? "a command" : "a command (idle)";
	}
}

static void read_cb(struct bufferevent *bev, void *arg)
{
	struct smtp_session *s = arg;

	if (s->mode == SMTP_MODE_LINGER &&
	    (int64_t)time(NULL) >= s->linger_until) {
		session_free(s, s->close_reason);
		return;
	}
	session_process(s);
}

static void write_cb(struct bufferevent *bev, void *arg)
{
	struct smtp_session *s = arg;

	if (s->mode == SMTP_MODE_STARTTLS) {
		smtp_sec_switch(s);
		return;
	}
	if (s->mode == SMTP_MODE_CLOSING) {
		/* Half-close and read what the client still sends, so unread
		 * input does not turn our last reply into a reset. */
		smtp_sec_close_notify(s);
		if (shutdown(bufferevent_getfd(bev), SHUT_WR) < 0) {
			session_free(s, s->close_reason);
			return;
		}
		s->mode = SMTP_MODE_LINGER;
		s->linger_until = (int64_t)time(NULL) + LINGER_SECONDS;
		evbuffer_drain(bufferevent_get_input(bev),
			       evbuffer_get_length(bufferevent_get_input(bev)));
		session_update_io(s);
		return;
	}
	if (s->out_blocked) {
		s->out_blocked = false;
		session_process(s);
	}
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct smtp_session *s = arg;
	const struct carrier_conf *conf = conf_of(s);
	unsigned secs;

	if (smtp_sec_event(s, what))
		return;
	if (s->mode == SMTP_MODE_LINGER || s->mode == SMTP_MODE_CLOSING) {
		session_free(s, s->close_reason);
		return;
	}
	if ((what & BEV_EVENT_TIMEOUT) && (what & BEV_EVENT_READING)) {
		secs = (s->mode == SMTP_MODE_DATA || s->mode == SMTP_MODE_BDAT ||
			s->mode == SMTP_MODE_SKIP) ? conf->data_timeout :
		       s->txn ? conf->command_timeout : conf->idle_timeout;
		evlog_emit(s->srv->log, EV_SMTP_IN_TIMEOUT, EVF_S("client", s->addr),
			   EVF_I("seconds", secs), EVF_S("waiting", waiting_for(s)));
		txn_end(s);
		close_after(s, 421, "4.4.2", "Timeout, closing transmission channel");
		session_update_io(s);
		return;
	}
	if ((what & BEV_EVENT_EOF) && s->commit == NULL &&
	    evbuffer_get_length(out_of(s)) > 0) {
		/* A half-close: the client may still read; flush its replies
		 * before closing (its transaction cannot finish any more). */
		s->close_reason = (s->mode == SMTP_MODE_DATA || s->mode == SMTP_MODE_BDAT) ?
				  "client vanished during DATA" : "client closed the connection";
		txn_end(s);
		s->mode = SMTP_MODE_CLOSING;
		session_update_io(s);
		return;
	}
	if (s->commit != NULL) {
		/* The message may still become durable; keep the session
		 * until the completion, without its socket. */
		bufferevent_free(s->bev);
		s->bev = NULL;
		s->gone = true;
		return;
	}
	session_free(s, (what & BEV_EVENT_EOF) ?
		     (s->mode == SMTP_MODE_DATA || s->mode == SMTP_MODE_BDAT ?
		      "client vanished during DATA" : "client closed the connection") :
		     (what & BEV_EVENT_TIMEOUT) ? "client does not read its replies" :
		     "connection error");
}

/* ---- lifecycle ----------------------------------------------------------- */

static void session_free(struct smtp_session *s, const char *reason)
{
	evlog_emit(s->srv->log, EV_SMTP_IN_CLOSE, EVF_S("client", s->addr),
		   EVF_S("reason", reason), EVF_I("messages", s->messages),
		   EVF_I("errors", s->errors));
	smtp_session_destroy(s);
}

void smtp_session_destroy(struct smtp_session *s)
{
	if (s->commit != NULL)
		s->commit->s = NULL;   /* the completion frees it */
	txn_end(s);
	smtp_server_unlink(s->srv, s);
	if (s->bev != NULL)
		bufferevent_free(s->bev);
	smtp_sec_free(s);
	free(s->helo);
	free(s);
}

struct smtp_session *smtp_session_start(struct smtp_server *srv, int fd,
					const union smtp_peer *peer,
					struct smtp_ipent *ip, unsigned flags)
{
	struct smtp_session *s = calloc(1, sizeof *s);
	char addr[INET6_ADDRSTRLEN];

	smtp_peer_text(peer, addr, sizeof addr);
	if (s == NULL) {
		evlog_emit(srv->log, EV_SMTP_IN_SESSION_FAILED, EVF_S("client", addr),
			   EVF_S("reason", "out of memory"));
		close(fd);
		return NULL;
	}
	s->srv = srv;
	s->peer = *peer;
	s->ip = ip;
	s->flags = (uint8_t)flags;
	memcpy(s->addr, addr, sizeof s->addr);
	if (flags & SMTP_SERVER_IMPLICIT_TLS)
		s->bev = smtp_sec_implicit_bev(s, fd);
	else
		s->bev = bufferevent_socket_new(srv->base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (s->bev == NULL) {
		evlog_emit(srv->log, EV_SMTP_IN_SESSION_FAILED, EVF_S("client", addr),
			   EVF_S("reason", (flags & SMTP_SERVER_IMPLICIT_TLS) ?
				 "no TLS certificate or out of memory" : "bufferevent_socket_new failed"));
		smtp_sec_free(s);
		free(s);
		close(fd);
		return NULL;
	}
	smtp_server_link(srv, s);
	evlog_emit(srv->log, EV_SMTP_IN_CONNECT, EVF_S("client", s->addr),
		   EVF_I("sessions", srv->n_sessions));
	smtp_session_set_callbacks(s);
	reply(s, 220, NULL, "%s ESMTP carrier", srv->hostname);
	session_update_io(s);
	return s;
}

void smtp_session_shutdown(struct smtp_session *s)
{
	if (s->bev == NULL || s->txn != NULL)
		return;   /* finishes its transaction; session_check closes it */
	if (s->mode == SMTP_MODE_COMMAND || s->mode == SMTP_MODE_DISCARD) {
		close_after(s, 421, "4.3.2", "Service shutting down, closing transmission channel");
		session_update_io(s);
	}
}

void smtp_peer_text(const union smtp_peer *peer, char *buf, size_t size)
{
	const void *a = NULL;

	if (peer->sa.sa_family == AF_INET)
		a = &peer->in.sin_addr;
	else if (peer->sa.sa_family == AF_INET6)
		a = &peer->in6.sin6_addr;
	if (a == NULL || inet_ntop(peer->sa.sa_family, a, buf, (socklen_t)size) == NULL)
		snprintf(buf, size, "unknown");
}

/* ---- shared with smtp_sec.c ------------------------------------------------ */

void smtp_session_set_callbacks(struct smtp_session *s)
{
	bufferevent_setcb(s->bev, read_cb, write_cb, event_cb, s);
	bufferevent_enable(s->bev, EV_WRITE);
	smtp_trace_session(s);
}

void smtp_session_end(struct smtp_session *s, const char *reason)
{
	session_free(s, reason);
}

void smtp_session_resume(struct smtp_session *s)
{
	session_process(s);
}

void smtp_session_update_io(struct smtp_session *s)
{
	session_update_io(s);
}

void smtp_session_reset(struct smtp_session *s)
{
	txn_end(s);
	free(s->helo);
	s->helo = NULL;
	s->helo_valid = false;
	s->greeted = GREETED_NONE;
}
