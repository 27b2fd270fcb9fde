/*
 * fuzz_smtp_reply: libFuzzer harness for the smtp_parse reply parser.
 *
 * Byte 0 picks the chunk size and a small line / line-count limit; the
 * rest is a stream of server replies, parsed reply after reply (as a
 * pipelining client does) until an error or the end.  The stream is parsed
 * whole and in chunks; both must give the same replies.  Invariants: a
 * complete reply has a code 200..599, bounded NUL-terminated text, an
 * enhanced code of its own class, and lines within the limit.  Violations
 * abort().
 *
 * Threads: single (libFuzzer).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "smtp_parse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_REPLIES 64

struct parsed {
	enum smtp_parse_result res[MAX_REPLIES];
	unsigned code[MAX_REPLIES];
	size_t text_len[MAX_REPLIES];
	unsigned hash[MAX_REPLIES];
	size_t end[MAX_REPLIES];
	size_t n;
};

static void check(int cond)
{
	if (!cond)
		abort();
}

static unsigned hash_text(const struct smtp_parse_reply *r)
{
	unsigned h = 2166136261u;

	for (size_t i = 0; i < r->text_len; i++)
		h = (h ^ (uint8_t)r->text[i]) * 16777619u;
	for (const char *e = r->enhanced; *e != '\0'; e++)
		h = (h ^ (uint8_t)*e) * 16777619u;
	return h;
}

static void check_reply(const struct smtp_parse_reply *r,
			const struct smtp_parse_reply_limits *l)
{
	size_t elen = strlen(r->enhanced);

	check(r->code >= 200 && r->code <= 599);
	check(r->text_len <= SMTP_PARSE_REPLY_TEXT_MAX);
	check(r->text[r->text_len] == '\0');
	check(memchr(r->text, '\0', r->text_len) == NULL);
	check(r->lines >= 1 && r->lines <= l->max_lines);
	check(elen < sizeof(r->enhanced));
	if (elen > 0)
		check((unsigned)(r->enhanced[0] - '0') == r->code / 100);
}

static void parse_stream(const uint8_t *in, size_t len, size_t step,
			 const struct smtp_parse_reply_limits *l,
			 struct parsed *p)
{
	static struct smtp_parse_reply reply;
	struct smtp_parse_reply_parser parser;
	size_t pos = 0;

	p->n = 0;
	while (pos < len && p->n < MAX_REPLIES) {
		enum smtp_parse_result res = SMTP_PARSE_MORE;

		smtp_parse_reply_init(&parser, l, &reply);
		while (pos < len && res == SMTP_PARSE_MORE) {
			size_t n = len - pos < step ? len - pos : step, used;

			res = smtp_parse_reply_feed(&parser, in + pos, n, &used,
						    &reply);
			check(used <= n);
			check(used > 0 || res != SMTP_PARSE_MORE);
			pos += used;
		}
		if (res == SMTP_PARSE_OK)
			check_reply(&reply, l);
		p->res[p->n] = res;
		p->code[p->n] = reply.code;
		p->text_len[p->n] = reply.text_len;
		p->hash[p->n] = hash_text(&reply);
		p->end[p->n] = pos;
		p->n++;
		if (res != SMTP_PARSE_OK)
			break;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct parsed a, b;
	struct smtp_parse_reply_limits l;
	size_t step;

	if (size < 1 || size > 200000)
		return 0;
	smtp_parse_reply_limits_init(&l);
	if (data[0] & 0x80) {
		l.max_line = 3 + (data[0] & 0x1f);
		l.max_lines = 1 + ((data[0] >> 5) & 3);
	}
	step = 1 + (data[0] & 0x0f);
	data++;
	size--;
	parse_stream(data, size, size ? size : 1, &l, &a);
	parse_stream(data, size, step, &l, &b);
	check(a.n == b.n);
	for (size_t i = 0; i < a.n; i++) {
		check(a.res[i] == b.res[i] && a.code[i] == b.code[i]);
		check(a.text_len[i] == b.text_len[i] && a.hash[i] == b.hash[i]);
		check(a.end[i] == b.end[i]);
	}
	return 0;
}
