/*
 * dsn: builds RFC 3464 delivery status notifications (see dsn.h).
 * Pure: writes into a growing buffer, never touches a file or the clock.
 */
#include "dsn.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct buf {
	char *p;
	size_t len, cap;
	bool oom;
};

static void buf_add(struct buf *b, const void *s, size_t n)
{
	if (b->oom)
		return;
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		char *p;

		while (cap < b->len + n + 1)
			cap *= 2;
		if ((p = realloc(b->p, cap)) == NULL) {
			b->oom = true;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static void buf_str(struct buf *b, const char *s)
{
	buf_add(b, s, strlen(s));
}

__attribute__((format(printf, 2, 3)))
static void buf_fmt(struct buf *b, const char *fmt, ...)
{
	char tmp[2048];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(tmp, sizeof tmp, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	buf_add(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* Copies s into out, replacing control and non-ASCII bytes by '?'. */
static void sanitize(const char *s, char *out, size_t outlen)
{
	size_t o = 0;

	for (; s != NULL && *s != '\0' && o + 1 < outlen; s++) {
		unsigned char c = (unsigned char)*s;

		out[o++] = (c < 0x20 || c > 0x7e) ? '?' : (char)c;
	}
	out[o] = '\0';
}

bool dsn_wanted(enum dsn_kind kind, unsigned notify)
{
	if (notify & SPOOL_NOTIFY_NEVER)
		return false;
	if (kind == DSN_SUCCESS)
		return (notify & SPOOL_NOTIFY_SUCCESS) != 0;
	if (notify == 0)
		return true;
	return (notify & (kind == DSN_FAILURE ? SPOOL_NOTIFY_FAILURE : SPOOL_NOTIFY_DELAY)) != 0;
}

const char *dsn_recipient(const char *sender, const char *double_bounce_to,
			  bool *double_r)
{
	*double_r = sender == NULL || sender[0] == '\0';
	if (!*double_r)
		return sender;
	if (double_bounce_to == NULL || double_bounce_to[0] == '\0')
		return NULL;
	return double_bounce_to;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

void dsn_xtext_decode(const char *in, char *out, size_t outlen)
{
	size_t o = 0;

	if (outlen == 0)
		return;
	for (; in != NULL && *in != '\0' && o + 1 < outlen; in++) {
		unsigned char c = (unsigned char)*in;

		if (c == '+') {
			int hi = hexval(in[1]), lo = hi < 0 ? -1 : hexval(in[2]);

			if (hi < 0 || lo < 0) {
				out[o++] = '?';
				continue;
			}
			c = (unsigned char)(hi * 16 + lo);
			in += 2;
		}
		out[o++] = (c < 0x20 || c > 0x7e) ? '?' : (char)c;
	}
	out[o] = '\0';
}

void dsn_format_date(int64_t t, char *buf, size_t size)
{
	time_t tt = (time_t)t;
	struct tm tm;

	if (gmtime_r(&tt, &tm) == NULL || strftime(buf, size, "%a, %d %b %Y %H:%M:%S +0000", &tm) == 0)
		snprintf(buf, size, "Thu, 01 Jan 1970 00:00:00 +0000");
}

/* Length of the original's header, up to and including the blank line
 * (or all of it when there is no body). */
static size_t header_len(const char *p, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		if (p[i] != '\n')
			continue;
		if (i + 1 < len && p[i + 1] == '\n')
			return i + 2;
		if (i + 2 < len && p[i + 1] == '\r' && p[i + 2] == '\n')
			return i + 3;
	}
	return len;
}

/* Picks a boundary that does not occur in the original. */
static void make_boundary(const struct dsn_msg *m, char *out, size_t outlen)
{
	for (unsigned k = 0;; k++) {
		snprintf(out, outlen, "=_carrier/%s/%u", m->qid ? m->qid : "x", k);
		if (m->original == NULL ||
		    memmem(m->original, m->original_len, out, strlen(out)) == NULL || k > 1000)
			return;
	}
}

static void status_of(const struct dsn_rcpt *r, enum dsn_kind kind, char *out, size_t outlen)
{
	if (r->expired && kind == DSN_FAILURE) {
		snprintf(out, outlen, "4.4.7");
		return;
	}
	if (r->status != NULL && r->status[0] != '\0') {
		sanitize(r->status, out, outlen);
		return;
	}
	if (r->code >= 200 && r->code < 600)
		snprintf(out, outlen, "%u.0.0", r->code / 100);
	else
		snprintf(out, outlen, "%s", kind == DSN_FAILURE ? "5.0.0" :
			 kind == DSN_DELAY ? "4.0.0" : "2.0.0");
}

static void human_part(struct buf *b, const struct dsn_msg *m,
		       const struct dsn_rcpt *rcpts, size_t n)
{
	char host[300], diag[700], addr[600], date[64];

	sanitize(m->reporting_mta, host, sizeof host);
	buf_fmt(b, "This is the mail system at host %s.\r\n\r\n", host);
	if (m->kind == DSN_FAILURE) {
		buf_str(b, "Your message could not be delivered to one or more recipients.\r\n"
			   "It is attached below (or its header, when it was large or you\r\n"
			   "asked for the header only).\r\n\r\n");
	} else if (m->kind == DSN_SUCCESS) {
		buf_str(b, "Your message was delivered to the recipients below, or passed on\r\n"
			   "to a system that sends no such reports (relayed), as you asked.\r\n\r\n");
	} else {
		dsn_format_date(rcpts[0].retry_until, date, sizeof date);
		buf_str(b, "This is a warning only: your message has not been delivered yet\r\n"
			   "to the recipients below.  You do not need to send it again: the\r\n");
		buf_fmt(b, "mail system keeps trying until %s.\r\n\r\n", date);
	}
	for (size_t i = 0; i < n; i++) {
		const struct dsn_rcpt *r = &rcpts[i];

		sanitize(r->addr, addr, sizeof addr);
		sanitize(r->diagnostic ? r->diagnostic : "no reason recorded", diag, sizeof diag);
		if (m->kind == DSN_SUCCESS)
			buf_fmt(b, "<%s>: %s\r\n", addr, r->relayed
				? "relayed to a system that sends no delivery reports" : "delivered");
		else if (r->remote_mta != NULL && r->remote_mta[0] != '\0') {
			sanitize(r->remote_mta, host, sizeof host);
			buf_fmt(b, "<%s>: host %s said: %s\r\n", addr, host, diag);
		} else {
			buf_fmt(b, "<%s>: %s%s\r\n", addr, r->expired ? "expired in the queue: " : "", diag);
		}
	}
}

static void status_part(struct buf *b, const struct dsn_msg *m,
			const struct dsn_rcpt *rcpts, size_t n)
{
	char host[300], text[700], date[64], st[16];

	sanitize(m->reporting_mta, host, sizeof host);
	buf_fmt(b, "Reporting-MTA: dns; %s\r\n", host);
	if (m->qid != NULL)
		buf_fmt(b, "X-Carrier-Queue-ID: %s\r\n", m->qid);
	if (m->envid != NULL && m->envid[0] != '\0') {
		dsn_xtext_decode(m->envid, text, sizeof text);
		buf_fmt(b, "Original-Envelope-Id: %s\r\n", text);
	}
	dsn_format_date(m->arrival, date, sizeof date);
	buf_fmt(b, "Arrival-Date: %s\r\n", date);
	for (size_t i = 0; i < n; i++) {
		const struct dsn_rcpt *r = &rcpts[i];

		buf_str(b, "\r\n");
		sanitize(r->addr, text, sizeof text);
		buf_fmt(b, "Final-Recipient: rfc822; %s\r\n", text);
		if (r->orcpt != NULL && r->orcpt[0] != '\0') {
			const char *semi = strchr(r->orcpt, ';');
			char type[64];

			sanitize(r->orcpt, type, sizeof type);
			if (semi != NULL && (size_t)(semi - r->orcpt) < sizeof type) {
				type[semi - r->orcpt] = '\0';
				dsn_xtext_decode(semi + 1, text, sizeof text);
				buf_fmt(b, "Original-Recipient: %s; %s\r\n", type, text);
			}
		}
		buf_fmt(b, "Action: %s\r\n", m->kind == DSN_FAILURE ? "failed" :
			m->kind == DSN_DELAY ? "delayed" : r->relayed ? "relayed" : "delivered");
		status_of(r, m->kind, st, sizeof st);
		buf_fmt(b, "Status: %s\r\n", st);
		if (r->remote_mta != NULL && r->remote_mta[0] != '\0') {
			sanitize(r->remote_mta, host, sizeof host);
			buf_fmt(b, "Remote-MTA: dns; %s\r\n", host);
		}
		if (r->diagnostic != NULL && r->diagnostic[0] != '\0') {
			sanitize(r->diagnostic, text, sizeof text);
			buf_fmt(b, "Diagnostic-Code: %s; %s\r\n", r->code ? "smtp" : "X-Carrier", text);
		}
		if (r->last_attempt > 0) {
			dsn_format_date(r->last_attempt, date, sizeof date);
			buf_fmt(b, "Last-Attempt-Date: %s\r\n", date);
		}
		if (m->kind == DSN_DELAY && r->retry_until > 0) {
			dsn_format_date(r->retry_until, date, sizeof date);
			buf_fmt(b, "Will-Retry-Until: %s\r\n", date);
		}
	}
}

static void original_part(struct buf *b, const struct dsn_msg *m, const char *boundary)
{
	bool full = m->kind == DSN_FAILURE && m->ret != SPOOL_RET_HDRS &&
		    m->original_size <= DSN_FULL_MAX && m->original_len >= m->original_size;
	size_t len;

	if (m->original == NULL)
		return;
	buf_fmt(b, "\r\n--%s\r\n", boundary);
	if (full) {
		buf_str(b, "Content-Description: Undelivered Message\r\n"
			   "Content-Type: message/rfc822\r\n\r\n");
		len = m->original_len;
	} else {
		buf_str(b, "Content-Description: Message Headers\r\n"
			   "Content-Type: text/rfc822-headers\r\n\r\n");
		len = header_len(m->original, m->original_len);
	}
	buf_add(b, m->original, len);
	if (len > 0 && m->original[len - 1] != '\n')
		buf_str(b, "\r\n");
}

int dsn_build(const struct dsn_msg *m, const struct dsn_rcpt *rcpts, size_t n,
	      char **text_r, size_t *len_r, char *err, size_t errlen)
{
	struct buf b = { 0 };
	char boundary[128], date[64], host[300], to[600];

	if (n == 0) {
		snprintf(err, errlen, "dsn: no recipient to report");
		return -1;
	}
	make_boundary(m, boundary, sizeof boundary);
	sanitize(m->reporting_mta, host, sizeof host);
	sanitize(m->to, to, sizeof to);
	dsn_format_date(m->now, date, sizeof date);
	buf_fmt(&b, "From: Mail Delivery System <MAILER-DAEMON@%s>\r\n", host);
	buf_fmt(&b, "To: <%s>\r\n", to);
	buf_fmt(&b, "Subject: %s\r\n", m->kind == DSN_FAILURE
		? "Undelivered Mail Returned to Sender"
		: m->kind == DSN_DELAY ? "Delayed Mail (still being retried)"
		: "Successful Mail Delivery Report");
	buf_fmt(&b, "Date: %s\r\n", date);
	if (m->message_id != NULL)
		buf_fmt(&b, "Message-ID: <%s>\r\n", m->message_id);
	buf_str(&b, "Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n");
	buf_fmt(&b, "Content-Type: multipart/report; report-type=delivery-status;\r\n"
		    "\tboundary=\"%s\"\r\n\r\n", boundary);
	buf_str(&b, "This is a MIME-encapsulated delivery status notification.\r\n");
	buf_fmt(&b, "\r\n--%s\r\n", boundary);
	buf_str(&b, "Content-Description: Notification\r\n"
		    "Content-Type: text/plain; charset=us-ascii\r\n\r\n");
	human_part(&b, m, rcpts, n);
	buf_fmt(&b, "\r\n--%s\r\n", boundary);
	buf_str(&b, "Content-Description: Delivery report\r\n"
		    "Content-Type: message/delivery-status\r\n\r\n");
	status_part(&b, m, rcpts, n);
	original_part(&b, m, boundary);
	buf_fmt(&b, "\r\n--%s--\r\n", boundary);
	if (b.oom) {
		free(b.p);
		snprintf(err, errlen, "dsn: out of memory");
		return -1;
	}
	*text_r = b.p;
	*len_r = b.len;
	return 0;
}
