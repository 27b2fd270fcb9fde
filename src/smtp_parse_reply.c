/*
 * smtp_parse_reply: the incremental reply parser of smtp_parse, for the
 * SMTP/LMTP client (multi-line replies, enhanced status codes).  See
 * smtp_parse.h for the contracts.
 *
 * Owns: nothing beyond the caller's parser and reply structs; no
 * allocation, no globals except constant tables.
 * Must not: do I/O, log, allocate, or keep state outside its arguments.
 * Threads: reentrant; one struct smtp_parse_reply_parser per thread at a
 * time.
 */
#include "smtp_parse.h"
#include "smtp_parse_int.h"

#include <string.h>

/* ---- replies (RFC 5321 4.2, RFC 2034 enhanced codes) ------------------ */

void smtp_parse_reply_limits_init(struct smtp_parse_reply_limits *limits_r)
{
	limits_r->max_line = SMTP_PARSE_REPLY_LINE_DEFAULT;
	limits_r->max_lines = SMTP_PARSE_REPLY_LINES_DEFAULT;
}

void smtp_parse_reply_init(struct smtp_parse_reply_parser *parser,
			   const struct smtp_parse_reply_limits *limits,
			   struct smtp_parse_reply *reply_r)
{
	memset(parser, 0, sizeof(*parser));
	if (limits != NULL)
		parser->limits = *limits;
	else
		smtp_parse_reply_limits_init(&parser->limits);
	parser->result = SMTP_PARSE_MORE;
	memset(reply_r, 0, sizeof(*reply_r));
}

static void reply_text_add(struct smtp_parse_reply *r, uchar c)
{
	if (r->text_len >= SMTP_PARSE_REPLY_TEXT_MAX) {
		r->truncated = true;
		return;
	}
	r->text[r->text_len++] = (char)c;
	r->text[r->text_len] = '\0';
}

/* Length of an enhanced status code "c.sss.ddd" at the start of s/len
 * when followed by SP or the end, else 0. */
static size_t enhanced_len(const char *s, size_t len)
{
	size_t i = 1;

	if (len < 5 || (s[0] != '2' && s[0] != '4' && s[0] != '5'))
		return 0;
	for (int part = 0; part < 2; part++) {
		size_t digits = 0;

		if (i >= len || s[i] != '.')
			return 0;
		i++;
		while (i < len && is_digit((uchar)s[i]) && digits < 3) {
			i++;
			digits++;
		}
		if (digits == 0)
			return 0;
	}
	return (i == len || s[i] == ' ') ? i : 0;
}

/* Takes the enhanced code off this line's text; records the first line's
 * when its class matches the reply code (RFC 3463 2). */
static void reply_enhanced(struct smtp_parse_reply_parser *p,
			   struct smtp_parse_reply *r)
{
	char *t = r->text + p->text_start;
	size_t len = r->text_len - p->text_start;
	size_t n = enhanced_len(t, len), cut;

	if (n == 0)
		return;
	if (r->lines == 0 && (unsigned)(t[0] - '0') == r->code / 100) {
		memcpy(r->enhanced, t, n);
		r->enhanced[n] = '\0';
	}
	if (r->enhanced[0] == '\0' || strlen(r->enhanced) != n ||
	    memcmp(t, r->enhanced, n) != 0)
		return;
	cut = n < len ? n + 1 : n;
	memmove(t, t + cut, len - cut);
	r->text_len -= cut;
	r->text[r->text_len] = '\0';
}

static void reply_fail(struct smtp_parse_reply_parser *p,
		       enum smtp_parse_result res)
{
	p->result = res;
}

/* The code of a line is complete: check it, start the line's text. */
static void reply_line_begin(struct smtp_parse_reply_parser *p,
			     struct smtp_parse_reply *r)
{
	unsigned code = (unsigned)(p->line_head[0] - '0') * 100 +
			(unsigned)(p->line_head[1] - '0') * 10 +
			(unsigned)(p->line_head[2] - '0');

	if (r->lines >= p->limits.max_lines) {
		reply_fail(p, SMTP_PARSE_REPLY_TOO_LONG);
		return;
	}
	if (r->lines == 0)
		r->code = code;
	else if (code != r->code)
		reply_fail(p, SMTP_PARSE_REPLY_SYNTAX);
	if (r->lines > 0)
		reply_text_add(r, '\n');
	p->text_start = r->text_len;
}

static void reply_octet(struct smtp_parse_reply_parser *p,
			struct smtp_parse_reply *r, uchar c)
{
	static const char lo[3] = { '2', '0', '0' }, hi[3] = { '5', '5', '9' };

	p->line_len++;
	if (c == '\0') {
		reply_fail(p, SMTP_PARSE_REPLY_SYNTAX);
		return;
	}
	if (p->limits.max_line < 3 || p->line_len > p->limits.max_line - 2) {
		reply_fail(p, SMTP_PARSE_LINE_TOO_LONG);
		return;
	}
	if (p->head_len < 3) {
		if (c < (uchar)lo[p->head_len] || c > (uchar)hi[p->head_len]) {
			reply_fail(p, SMTP_PARSE_REPLY_SYNTAX);
			return;
		}
		p->line_head[p->head_len++] = (char)c;
		return;
	}
	if (p->head_len == 3) {
		if (c != '-' && c != ' ') {
			reply_fail(p, SMTP_PARSE_REPLY_SYNTAX);
			return;
		}
		p->line_head[p->head_len++] = (char)c;
		reply_line_begin(p, r);
		return;
	}
	reply_text_add(r, c);
}

static void reply_line_end(struct smtp_parse_reply_parser *p,
			   struct smtp_parse_reply *r)
{
	bool last;

	p->had_cr = false;
	if (p->head_len < 3) {
		reply_fail(p, SMTP_PARSE_REPLY_SYNTAX);
		return;
	}
	if (p->head_len == 3) {
		/* "250" CRLF: a last line without text */
		reply_line_begin(p, r);
		if (p->result != SMTP_PARSE_MORE)
			return;
		last = true;
	} else {
		last = p->line_head[3] == ' ';
	}
	reply_enhanced(p, r);
	r->lines++;
	p->head_len = 0;
	p->line_len = 0;
	if (last)
		p->result = SMTP_PARSE_OK;
}

static void reply_byte(struct smtp_parse_reply_parser *p,
		       struct smtp_parse_reply *r, uchar c)
{
	if (c == '\n') {
		reply_line_end(p, r);
		return;
	}
	if (p->had_cr) {
		/* the held CR was text, not the start of CRLF */
		p->had_cr = false;
		reply_octet(p, r, '\r');
		if (p->result != SMTP_PARSE_MORE)
			return;
	}
	if (c == '\r') {
		p->had_cr = true;
		return;
	}
	reply_octet(p, r, c);
}

enum smtp_parse_result smtp_parse_reply_feed(struct smtp_parse_reply_parser *parser,
					     const void *in, size_t in_len,
					     size_t *consumed_r,
					     struct smtp_parse_reply *reply_r)
{
	const uchar *s = in;
	size_t i = 0;

	while (i < in_len && parser->result == SMTP_PARSE_MORE)
		reply_byte(parser, reply_r, s[i++]);
	*consumed_r = i;
	return parser->result;
}
