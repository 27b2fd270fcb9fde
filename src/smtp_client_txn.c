/*
 * smtp_client_txn: the mail transaction on a ready connection (see
 * smtp_client_int.h): the checks that refuse a job before MAIL, MAIL, RCPT
 * and DATA (pipelined or one at a time), the body streamed dot-stuffed in
 * bounded chunks, and the replies matched to their commands through the
 * connection's queue of expectations, which decide the recipients.
 *
 * Threads: the loop thread of the client's base only.  The body is read
 * there, in chunks of SC_CHUNK, when the socket can take more.
 */
#include "smtp_client_int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "evlog.h"

#define SC_OUT_HIGH 65536u       /* keep at most this much queued */
#define SC_OUT_LOW 32768u        /* refill below this */
#define SC_LINE_MAX 2048u        /* our own command lines */

enum sc_exp_kind {
	EXP_MAIL,
	EXP_RCPT,
	EXP_DATA,
	EXP_DOT,        /* SMTP: one reply for every accepted recipient */
	EXP_DOT_LMTP,   /* LMTP: the reply for recipient idx */
	EXP_DOT_EMPTY,  /* "." after a 354 with no recipient accepted */
};

struct sc_exp {
	enum sc_exp_kind kind;
	size_t idx;
};

/* xtext values (ENVID, ORCPT) we pass on only if they are plain printable
 * ASCII without space or '='; anything else is dropped. */
static bool xtext_safe(const char *s, size_t max)
{
	size_t n = 0;

	for (; s[n] != '\0'; n++)
		if ((unsigned char)s[n] < 33 || (unsigned char)s[n] > 126 ||
		    (s[n] == '=' ))
			return false;
	return n > 0 && n <= max;
}

static bool exp_push(struct sc_conn *conn, enum sc_exp_kind kind, size_t idx)
{
	if (conn->exp_tail == conn->exp_cap) {
		size_t ncap = conn->exp_cap ? conn->exp_cap * 2 : 16;
		struct sc_exp *n = realloc(conn->exp, ncap * sizeof *n);

		if (n == NULL)
			return false;
		conn->exp = n;
		conn->exp_cap = ncap;
	}
	conn->exp[conn->exp_tail].kind = kind;
	conn->exp[conn->exp_tail].idx = idx;
	conn->exp_tail++;
	return true;
}

/* ---- commands, body and replies --------------------------------------------- */

static const char *ret_name(enum spool_dsn_ret ret)
{
	return ret == SPOOL_RET_FULL ? "FULL" : "HDRS";
}

static void send_mail(struct sc_conn *conn)
{
	struct sc_job *job = conn->job;
	char line[SC_LINE_MAX];
	int n;

	n = snprintf(line, sizeof line, "MAIL FROM:<%s>", job->sender);
	if (conn->esmtp && conn->has_size)
		n += snprintf(line + n, sizeof line - (size_t)n, " SIZE=%" PRIu64, job->size);
	if (conn->esmtp && conn->eightbit && job->body_type == SPOOL_BODY_8BITMIME)
		n += snprintf(line + n, sizeof line - (size_t)n, " BODY=8BITMIME");
	if (job->smtputf8 && conn->utf8)
		n += snprintf(line + n, sizeof line - (size_t)n, " SMTPUTF8");
	if (conn->dsn && job->dsn_ret != SPOOL_RET_UNSPEC)
		n += snprintf(line + n, sizeof line - (size_t)n, " RET=%s", ret_name(job->dsn_ret));
	if (conn->dsn && job->envid != NULL && xtext_safe(job->envid, SMTP_PARSE_ENVID_MAX))
		n += snprintf(line + n, sizeof line - (size_t)n, " ENVID=%s", job->envid);
	sc_conn_printf(conn, "%s\r\n", line);
	exp_push(conn, EXP_MAIL, 0);
}

static void send_rcpt(struct sc_conn *conn, size_t i)
{
	struct sc_job *job = conn->job;
	const struct sc_rcpt *r = &job->rcpts[i];
	char line[SC_LINE_MAX];
	int n;

	n = snprintf(line, sizeof line, "RCPT TO:<%s>", r->addr);
	if (conn->dsn && r->notify != 0) {
		if (r->notify & SPOOL_NOTIFY_NEVER) {
			n += snprintf(line + n, sizeof line - (size_t)n, " NOTIFY=NEVER");
		} else {
			const char *sep = " NOTIFY=";

			if (r->notify & SPOOL_NOTIFY_SUCCESS) {
				n += snprintf(line + n, sizeof line - (size_t)n, "%sSUCCESS", sep);
				sep = ",";
			}
			if (r->notify & SPOOL_NOTIFY_FAILURE) {
				n += snprintf(line + n, sizeof line - (size_t)n, "%sFAILURE", sep);
				sep = ",";
			}
			if (r->notify & SPOOL_NOTIFY_DELAY)
				n += snprintf(line + n, sizeof line - (size_t)n, "%sDELAY", sep);
		}
	}
	if (conn->dsn && r->orcpt != NULL && strchr(r->orcpt, ';') != NULL &&
	    xtext_safe(r->orcpt, SMTP_PARSE_ORCPT_MAX + SMTP_PARSE_ADDR_TYPE_MAX + 1))
		n += snprintf(line + n, sizeof line - (size_t)n, " ORCPT=%s", r->orcpt);
	if (!conn->dsn && (r->notify & SPOOL_NOTIFY_SUCCESS))
		job->res[i].dsn_relayed = true;
	sc_conn_printf(conn, "%s\r\n", line);
	exp_push(conn, EXP_RCPT, i);
}

static void send_data(struct sc_conn *conn)
{
	sc_conn_printf(conn, "DATA\r\n");
	exp_push(conn, EXP_DATA, 0);
}

/* Refuses the whole job before MAIL (PERM, local); the connection stays. */
static void txn_refuse(struct sc_conn *conn, unsigned code, const char *enh,
		       const char *text)
{
	struct sc_job *job = conn->job;

	sc_rcpt_set_rest(job, conn, code >= 500 ? SMTP_CLIENT_PERM : SMTP_CLIENT_TEMP,
			 code, enh, text);
	sc_job_finish(job);
	conn->need_rset = false;
	sc_conn_release(conn);
}

void sc_txn_start(struct sc_conn *conn)
{
	struct sc_job *job = conn->job;
	struct smtp_client *c = conn->c;
	char err[256];

	conn->state = SC_TXN;
	conn->exp_head = conn->exp_tail = 0;
	conn->txn_replies = 0;
	job->connected = true;
	snprintf(job->host, sizeof job->host, "%s", conn->dest.host);
	snprintf(job->addr, sizeof job->addr, "%s", conn->addr_text);
	snprintf(job->tls_text, sizeof job->tls_text, "%s", conn->tls_on ? conn->tls_text : "");
	if (job->body_type == SPOOL_BODY_BINARYMIME) {
		txn_refuse(conn, 554, "5.6.3", "binary MIME message cannot be relayed: BDAT is not supported");
		return;
	}
	if (job->body_type == SPOOL_BODY_8BITMIME && !conn->eightbit) {
		txn_refuse(conn, 554, "5.6.3", "8-bit message and the destination does not offer 8BITMIME (RFC 6152)");
		return;
	}
	if (job->smtputf8 && !conn->utf8) {
		txn_refuse(conn, 553, "5.6.7", "internationalized message (SMTPUTF8) and the destination does not offer SMTPUTF8 (RFC 6531)");
		return;
	}
	if (conn->has_size && conn->size_max > 0 && job->size > conn->size_max) {
		char text[160];

		snprintf(text, sizeof text, "message size %" PRIu64 " exceeds the destination's limit of %" PRIu64,
			 job->size, conn->size_max);
		txn_refuse(conn, 552, "5.3.4", text);
		return;
	}
	if (job->spool != NULL && job->body == NULL &&
	    spool_body_open(job->spool, job->qid, &job->body, err, sizeof err) != 0) {
		char text[320];

		evlog_emit(c->log, EV_SMTP_OUT_BODY_FAILED, EVF_S("qid", job->qid),
			   EVF_S("reason", err));
		snprintf(text, sizeof text, "cannot read the message body: %s", err);
		txn_refuse(conn, 451, "4.3.0", text);
		return;
	}
	job->mail_sent = true;
	send_mail(conn);
	if (conn->pipelining) {
		for (size_t i = 0; i < job->n_rcpts; i++)
			send_rcpt(conn, i);
		send_data(conn);
	}
	sc_conn_arm(conn, c->opts.command_ms);
}

/* Writes body bytes dot-stuffed with CRLF line ends into out (room for
 * 2 * n + 2); returns the length. */
static size_t body_stuff(struct sc_job *job, const char *in, size_t n, char *out)
{
	size_t o = 0, i = 0;

	while (i < n) {
		char ch = in[i];
		const char *nl, *cr;
		size_t end;

		if (job->cr) {
			job->cr = false;
			out[o++] = '\r';
			out[o++] = '\n';
			job->bol = true;
			if (ch == '\n') {
				i++;
				continue;
			}
		}
		if (ch == '\r') {
			if (i + 1 < n && in[i + 1] == '\n') {
				out[o++] = '\r';
				out[o++] = '\n';
				job->bol = true;
				i += 2;
			} else {
				job->cr = true;
				i++;
			}
			continue;
		}
		if (ch == '\n') {
			out[o++] = '\r';
			out[o++] = '\n';
			job->bol = true;
			i++;
			continue;
		}
		if (job->bol && ch == '.')
			out[o++] = '.';
		job->bol = false;
		/* the rest of the line up to its CR or LF, copied whole */
		nl = memchr(in + i, '\n', n - i);
		end = nl != NULL ? (size_t)(nl - in) : n;
		cr = memchr(in + i, '\r', end - i);
		if (cr != NULL)
			end = (size_t)(cr - in);
		memcpy(out + o, in + i, end - i);
		o += end - i;
		i = end;
	}
	return o;
}

void sc_body_fill(struct sc_conn *conn)
{
	struct sc_job *job = conn->job;
	struct smtp_client *c = conn->c;
	struct evbuffer *out = bufferevent_get_output(conn->bev);

	while (!job->body_eof && evbuffer_get_length(out) < SC_OUT_HIGH) {
		ssize_t n = job->read != NULL ? job->read(job->read_arg, c->inbuf, sizeof c->inbuf)
					      : spool_body_read(job->body, c->inbuf, sizeof c->inbuf);

		if (n < 0) {
			evlog_emit(c->log, EV_SMTP_OUT_BODY_FAILED, EVF_S("qid", job->qid),
				   EVF_S("reason", "read error"));
			/* Closing without the final dot: the peer drops it. */
			sc_conn_fail(conn, "reading the message body failed", false);
			return;
		}
		if (n == 0) {
			job->body_eof = true;
			break;
		}
		evbuffer_add(out, c->scratch, body_stuff(job, c->inbuf, (size_t)n, c->scratch));
	}
	if (!job->body_eof) {
		sc_conn_arm(conn, c->opts.command_ms);
		return;
	}
	if (job->cr || !job->bol)
		evbuffer_add(out, "\r\n", 2);
	evbuffer_add(out, ".\r\n", 3);
	conn->state = SC_TXN;
	if (job->mode == SMTP_CLIENT_LMTP) {
		for (size_t i = 0; i < job->n_rcpts; i++)
			if (job->accepted[i]) {
				exp_push(conn, EXP_DOT_LMTP, i);
				job->n_dot_pending++;
			}
	} else {
		exp_push(conn, EXP_DOT, 0);
	}
	sc_conn_arm(conn, c->opts.data_ms);
}

static void body_start(struct sc_conn *conn)
{
	struct sc_job *job = conn->job;

	conn->state = SC_SENDING;
	job->bol = true;
	job->cr = false;
	job->body_eof = false;
	bufferevent_setwatermark(conn->bev, EV_WRITE, SC_OUT_LOW, 0);
	sc_body_fill(conn);
}

/* The transaction is over (the job got its results): keep or close.
 * `clean`: it ended with the reply to the dot (the server has reset). */
static void txn_end(struct sc_conn *conn, unsigned code, bool clean)
{
	sc_job_finish(conn->job);
	conn->need_rset = !clean;
	if (code == 421)
		sc_conn_free(conn, true);
	else
		sc_conn_release(conn);
}

void sc_txn_reply(struct sc_conn *conn, const struct smtp_parse_reply *r)
{
	struct sc_job *job = conn->job;
	struct sc_exp e;
	bool ok = r->code >= 200 && r->code < 300;
	char reason[SMTP_CLIENT_TEXT_MAX];

	conn->txn_replies++;
	if (conn->exp_head == conn->exp_tail) {
		sc_conn_protocol_error(conn, "reply without a command");
		return;
	}
	e = conn->exp[conn->exp_head++];
	if (conn->exp_head == conn->exp_tail)
		conn->exp_head = conn->exp_tail = 0;
	snprintf(reason, sizeof reason, "%u %s", r->code, r->text);
	switch (e.kind) {
	case EXP_MAIL:
		if (ok) {
			if (!conn->pipelining)
				send_rcpt(conn, job->next_rcpt++);
			break;
		}
		job->mail_failed = true;
		for (size_t i = 0; i < job->n_rcpts; i++)
			sc_rcpt_set_reply(job, i, conn, r, false);
		if (r->code == 421 || !conn->pipelining) {
			txn_end(conn, r->code, false);
			return;
		}
		break;
	case EXP_RCPT:
		if (!job->mail_failed) {
			if (ok || r->code == 251) {
				if (!job->accepted[e.idx]) {
					job->accepted[e.idx] = true;
					job->n_accepted++;
				}
			} else {
				sc_rcpt_set_reply(job, e.idx, conn, r, false);
			}
		}
		if (r->code == 421) {
			sc_conn_fail(conn, reason, false);
			return;
		}
		if (!conn->pipelining) {
			if (job->next_rcpt < job->n_rcpts) {
				send_rcpt(conn, job->next_rcpt++);
			} else if (job->n_accepted > 0) {
				send_data(conn);
			} else {
				txn_end(conn, 0, false);
				return;
			}
		}
		break;
	case EXP_DATA:
		if (job->mail_failed || job->n_accepted == 0) {
			if (r->code == 354 && job->mode == SMTP_CLIENT_LMTP) {
				/* How many replies would follow the dot is
				 * unknown: out of sync, hang up. */
				txn_end(conn, 421, false);
				return;
			}
			if (r->code == 354) {
				sc_conn_printf(conn, ".\r\n");
				exp_push(conn, EXP_DOT_EMPTY, 0);
				break;
			}
			txn_end(conn, r->code, false);
			return;
		}
		if (r->code == 354) {
			body_start(conn);
			return;
		}
		for (size_t i = 0; i < job->n_rcpts; i++)
			if (job->accepted[i])
				sc_rcpt_set_reply(job, i, conn, r, ok);
		/* a 2xx to DATA is nonsense: sc_rcpt_set_reply made it TEMP... */
		txn_end(conn, r->code, false);
		return;
	case EXP_DOT:
		for (size_t i = 0; i < job->n_rcpts; i++)
			if (job->accepted[i])
				sc_rcpt_set_reply(job, i, conn, r, false);
		txn_end(conn, r->code, true);
		return;
	case EXP_DOT_LMTP:
		sc_rcpt_set_reply(job, e.idx, conn, r, false);
		if (r->code == 421) {
			sc_conn_fail(conn, reason, false);
			return;
		}
		if (--job->n_dot_pending == 0) {
			txn_end(conn, 0, true);
			return;
		}
		break;
	case EXP_DOT_EMPTY:
		txn_end(conn, r->code, false);
		return;
	}
	if (conn->exp_head != conn->exp_tail) {
		enum sc_exp_kind k = conn->exp[conn->exp_head].kind;

		sc_conn_arm(conn, (k == EXP_DOT || k == EXP_DOT_LMTP)
					  ? conn->c->opts.data_ms : conn->c->opts.command_ms);
	}
}
