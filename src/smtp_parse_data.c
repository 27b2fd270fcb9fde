/*
 * smtp_parse_data: the incremental DATA reader of smtp_parse (dot
 * unstuffing, end-of-data detection, smuggling defence, size and line
 * limits, Received: counting).  See smtp_parse.h for the contracts.
 *
 * Owns: nothing beyond the caller's struct smtp_parse_data and output
 * buffer; no allocation, no globals except constant tables.
 * Must not: do I/O, log, allocate, or keep state outside its arguments.
 * Threads: reentrant; one struct smtp_parse_data per thread at a time.
 */
#include "smtp_parse.h"
#include "smtp_parse_int.h"

#include <limits.h>
#include <string.h>

/* ---- DATA reader (RFC 5321 4.1.1.4, 4.5.2) ---------------------------- */

/*
 * States.  "Hard" BOL follows CRLF (or the start): only there can "."
 * CRLF end the data.  "Soft" BOL follows a bare LF or bare CR, so that
 * none of the smuggling sequences ("\n.\n", "\r\n.\n", "\n.\r\n",
 * "\r.\r\n") can ever end it.
 */
enum data_state {
	D_BOL = 0,    /* hard beginning of line */
	D_SOFT_BOL,   /* after a bare line end */
	D_DOT,        /* "." held at a hard BOL */
	D_SOFT_DOT,   /* "." held at a soft BOL */
	D_DOT_CR,     /* ".\r" held at a hard BOL: end if LF follows */
	D_TEXT,       /* inside a line */
	D_CR,         /* CR held: CRLF or a bare CR */
};

/* header_state: H_BODY after the first empty line, H_SKIP for the rest of
 * a header line that is not Received:, else chars of "received:" matched. */
enum { H_BODY = -1, H_SKIP = 100 };
static const char received_word[] = "received:";
#define RECEIVED_LEN 9

struct data_out {
	uchar *buf;
	size_t len;
};

void smtp_parse_data_limits_init(struct smtp_parse_data_limits *limits_r)
{
	limits_r->max_size = SMTP_PARSE_DATA_SIZE_DEFAULT;
	limits_r->max_line = SMTP_PARSE_DATA_LINE_DEFAULT;
	limits_r->bare = SMTP_PARSE_BARE_REJECT;
	limits_r->reject_nul = false;
}

void smtp_parse_data_init(struct smtp_parse_data *data,
			  const struct smtp_parse_data_limits *limits)
{
	memset(data, 0, sizeof(*data));
	if (limits != NULL)
		data->limits = *limits;
	else
		smtp_parse_data_limits_init(&data->limits);
	/* A line needs room for CRLF plus one octet; keeps "- 2" safe. */
	if (data->limits.max_line != 0 && data->limits.max_line < 3)
		data->limits.max_line = 3;
	data->state = D_BOL;
	data->header_state = 0;
	data->error = SMTP_PARSE_OK;
}

static void data_note(struct smtp_parse_data *d, enum smtp_parse_result res)
{
	if (d->error == SMTP_PARSE_OK)
		d->error = res;
}

/* Output stops at the first problem: the message is refused anyway, and
 * the server must not spool an oversized or endless stream. */
static void data_emit(struct smtp_parse_data *d, struct data_out *o,
		      const uchar *b, size_t n)
{
	if (d->error != SMTP_PARSE_OK)
		return;
	if (d->limits.max_size != 0 && n > d->limits.max_size - d->size) {
		data_note(d, SMTP_PARSE_TOO_BIG);
		return;
	}
	memcpy(o->buf + o->len, b, n);
	o->len += n;
	d->size += n;
}

/* One wire octet joins the current line (the limit counts CRLF too). */
static void data_line_octet(struct smtp_parse_data *d)
{
	if (d->line_len < SIZE_MAX)
		d->line_len++;
	if (d->limits.max_line != 0 && d->line_len > d->limits.max_line - 2)
		data_note(d, SMTP_PARSE_LINE_TOO_LONG);
}

static void data_header_track(struct smtp_parse_data *d, uchar c)
{
	if (d->header_state < 0 || d->header_state >= RECEIVED_LEN)
		return;
	if (to_lower(c) != (uchar)received_word[d->header_state]) {
		d->header_state = H_SKIP;
		return;
	}
	if (++d->header_state == RECEIVED_LEN) {
		if (d->received < UINT_MAX)
			d->received++;
		d->header_state = H_SKIP;
	}
}

static void data_line_end(struct smtp_parse_data *d, struct data_out *o,
			  bool bare)
{
	static const uchar crlf[2] = { '\r', '\n' };

	if (bare) {
		d->bare_seen = true;
		if (d->limits.bare == SMTP_PARSE_BARE_REJECT)
			data_note(d, SMTP_PARSE_BARE_LF);
	}
	data_emit(d, o, crlf, 2);
	if (d->header_state != H_BODY)
		d->header_state = d->line_len == 0 ? H_BODY : 0;
	d->line_len = 0;
}

/* A "." that turned out not to be a stuffing dot nor the end (". CR" or
 * ". LF" that does not end DATA): it is message text.  Its wire octet was
 * counted when it was held. */
static void data_kept_dot(struct smtp_parse_data *d, struct data_out *o)
{
	static const uchar dot = '.';

	data_header_track(d, dot);
	data_emit(d, o, &dot, 1);
}

static void data_plain(struct smtp_parse_data *d, struct data_out *o, uchar c)
{
	if (c == '\r') {
		d->state = D_CR;
		return;
	}
	if (c == '\n') {
		data_line_end(d, o, true);
		d->state = D_SOFT_BOL;
		return;
	}
	if (c == '\0' && d->limits.reject_nul)
		data_note(d, SMTP_PARSE_NUL);
	data_line_octet(d);
	data_header_track(d, c);
	data_emit(d, o, &c, 1);
	d->state = D_TEXT;
}

static void data_step(struct smtp_parse_data *d, struct data_out *o, uchar c)
{
	switch (d->state) {
	case D_BOL:
	case D_SOFT_BOL:
		if (c == '.') {
			data_line_octet(d);
			d->state = d->state == D_BOL ? D_DOT : D_SOFT_DOT;
			return;
		}
		data_plain(d, o, c);
		return;
	case D_DOT:
		if (c == '\r') {
			d->state = D_DOT_CR;
			return;
		}
		if (c == '\n')
			data_kept_dot(d, o);
		/* otherwise the dot was stuffing and is dropped */
		data_plain(d, o, c);
		return;
	case D_SOFT_DOT:
		if (c == '\r' || c == '\n')
			data_kept_dot(d, o);
		data_plain(d, o, c);
		return;
	case D_DOT_CR:
		if (c == '\n') {
			d->done = true;
			return;
		}
		data_kept_dot(d, o);
		data_line_end(d, o, true);
		d->state = D_SOFT_BOL;
		data_step(d, o, c);
		return;
	case D_CR:
		if (c == '\n') {
			data_line_end(d, o, false);
			d->state = D_BOL;
			return;
		}
		data_line_end(d, o, true);
		d->state = D_SOFT_BOL;
		data_step(d, o, c);
		return;
	default:
		data_plain(d, o, c);
		return;
	}
}

/* Length of the run of s[0..max) before the first CR, LF (or NUL when
 * stop_nul).  memchr is vectorised; a byte loop here was the reader's
 * whole cost on large messages. */
static size_t text_span(const uchar *s, size_t max, bool stop_nul)
{
	const uchar *hit = memchr(s, '\n', max);
	size_t n = hit != NULL ? (size_t)(hit - s) : max;

	hit = memchr(s, '\r', n);
	if (hit != NULL)
		n = (size_t)(hit - s);
	if (stop_nul && (hit = memchr(s, '\0', n)) != NULL)
		n = (size_t)(hit - s);
	return n;
}

/* Fast path inside a body line (or the rest of a non-Received header
 * line): copies a run of ordinary bytes at once.  Returns bytes used; 0
 * means "take the byte-wise path" (which also notes the limits). */
static size_t data_run(struct smtp_parse_data *d, struct data_out *o,
		       const uchar *s, size_t len, size_t room)
{
	size_t n = 0, max = len;
	/* a body line may start here too, unless it starts with "." */
	bool bol = (d->state == D_BOL || d->state == D_SOFT_BOL) &&
		   d->header_state == H_BODY && s[0] != '.';

	if (!bol && (d->state != D_TEXT || (d->header_state != H_BODY &&
					    d->header_state != H_SKIP)))
		return 0;
	if (d->error == SMTP_PARSE_OK) {
		size_t line_room = SIZE_MAX;

		if (d->limits.max_line != 0)
			line_room = d->limits.max_line - 2 > d->line_len ?
				    d->limits.max_line - 2 - d->line_len : 0;
		if (max > room)
			max = room;
		if (max > line_room)
			max = line_room;
		if (d->limits.max_size != 0 &&
		    max > d->limits.max_size - d->size)
			max = (size_t)(d->limits.max_size - d->size);
	}
	n = text_span(s, max, d->limits.reject_nul);
	if (d->error == SMTP_PARSE_OK) {
		memcpy(o->buf + o->len, s, n);
		o->len += n;
		d->size += n;
	}
	d->line_len = SIZE_MAX - d->line_len > n ? d->line_len + n : SIZE_MAX;
	if (n > 0)
		d->state = D_TEXT;
	return n;
}

enum smtp_parse_result smtp_parse_data_feed(struct smtp_parse_data *data,
					    const void *in, size_t in_len,
					    size_t *consumed_r, void *out,
					    size_t out_size, size_t *out_len_r)
{
	struct data_out o = { out, 0 };
	const uchar *s = in;
	size_t i = 0;

	while (i < in_len && !data->done &&
	       out_size - o.len >= SMTP_PARSE_DATA_OUT_MIN) {
		size_t n = data_run(data, &o, s + i, in_len - i,
				    out_size - o.len);

		if (n > 0) {
			i += n;
			continue;
		}
		if (data->state == D_TEXT && s[i] == '\r' && in_len - i >= 2 &&
		    s[i + 1] == '\n') {
			/* the common line end, as data_step would take it */
			data_line_end(data, &o, false);
			data->state = D_BOL;
			i += 2;
			continue;
		}
		data_step(data, &o, s[i++]);
	}
	*consumed_r = i;
	*out_len_r = o.len;
	if (!data->done)
		return SMTP_PARSE_MORE;
	return data->error;
}

enum smtp_parse_result smtp_parse_data_error(const struct smtp_parse_data *data)
{
	return data->error;
}

uint64_t smtp_parse_data_size(const struct smtp_parse_data *data)
{
	return data->size;
}

unsigned smtp_parse_data_received(const struct smtp_parse_data *data)
{
	return data->received;
}

bool smtp_parse_data_bare_seen(const struct smtp_parse_data *data)
{
	return data->bare_seen;
}
