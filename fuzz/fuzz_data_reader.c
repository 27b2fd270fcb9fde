/*
 * fuzz_data_reader: libFuzzer harness for the smtp_parse DATA reader.
 *
 * Byte 0 picks the limits (bare LF policy, NUL policy, small line and
 * size limits); bytes 1-2 a split point.  The rest is fed whole with a
 * large output buffer, then split in two at the split point with the
 * smallest output buffer, then one byte at a time.  Invariants: all runs
 * agree (result, bytes consumed, output, Received: count); output never
 * exceeds input (REJECT) or twice the input (NORMALIZE); the end is found
 * exactly after the first CRLF "." CRLF (input start counting as CRLF);
 * an accepted message is canonical CRLF text, and in REJECT mode its
 * input had no bare CR or LF.  Violations abort().
 *
 * Threads: single (libFuzzer).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "smtp_parse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct run {
	enum smtp_parse_result res;
	size_t consumed;
	uint8_t *out;
	size_t out_len;
	unsigned received;
};

static void check(int cond)
{
	if (!cond)
		abort();
}

/* Feeds `len` bytes in chunks: first `first` bytes, then `step` at a time. */
static void drive(const uint8_t *in, size_t len,
		  const struct smtp_parse_data_limits *l, size_t first,
		  size_t step, size_t out_size, struct run *r)
{
	struct smtp_parse_data d;
	uint8_t tmp[65536];
	size_t pos = 0;

	r->out = malloc(len * 2 + 8);
	check(r->out != NULL);
	r->out_len = 0;
	r->res = SMTP_PARSE_MORE;
	smtp_parse_data_init(&d, l);
	while (pos < len) {
		size_t want = pos < first ? first - pos : step;
		size_t n = len - pos < want ? len - pos : want, used, olen;

		r->res = smtp_parse_data_feed(&d, in + pos, n, &used, tmp,
					      out_size, &olen);
		check(used <= n && olen <= out_size);
		check(used > 0 || olen > 0 || r->res != SMTP_PARSE_MORE);
		memcpy(r->out + r->out_len, tmp, olen);
		r->out_len += olen;
		pos += used;
		if (r->res != SMTP_PARSE_MORE)
			break;
	}
	r->consumed = pos;
	r->received = smtp_parse_data_received(&d);
	check(smtp_parse_data_size(&d) == r->out_len);
	if (r->res != SMTP_PARSE_MORE)
		check(smtp_parse_data_error(&d) == r->res);
}

static void same(const struct run *a, const struct run *b)
{
	check(a->res == b->res && a->consumed == b->consumed);
	check(a->out_len == b->out_len);
	check(memcmp(a->out, b->out, a->out_len) == 0);
	check(a->received == b->received);
}

/* Where DATA must end: after the first CRLF "." CRLF, the start of the
 * input counting as CRLF; 0 if nowhere. */
static size_t expected_end(const uint8_t *in, size_t len)
{
	if (len >= 3 && memcmp(in, ".\r\n", 3) == 0)
		return 3;
	for (size_t i = 0; i + 5 <= len; i++)
		if (memcmp(in + i, "\r\n.\r\n", 5) == 0)
			return i + 5;
	return 0;
}

static void check_canonical(const uint8_t *s, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		if (s[i] == '\r')
			check(i + 1 < len && s[i + 1] == '\n');
		if (s[i] == '\n')
			check(i > 0 && s[i - 1] == '\r');
	}
	check(len == 0 || (len >= 2 && s[len - 1] == '\n'));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct smtp_parse_data_limits l;
	struct run whole, split, bytes;
	size_t cut, end;

	if (size < 3 || size > 100000)
		return 0;
	smtp_parse_data_limits_init(&l);
	if (data[0] & 1)
		l.bare = SMTP_PARSE_BARE_NORMALIZE;
	l.reject_nul = (data[0] & 2) != 0;
	if (data[0] & 4)
		l.max_line = 3 + (data[0] >> 4);
	if (data[0] & 8)
		l.max_size = data[0] >> 3;
	cut = (size_t)data[1] | (size_t)data[2] << 8;
	data += 3;
	size -= 3;
	cut = size ? cut % (size + 1) : 0;

	drive(data, size, &l, size, size, 65536, &whole);
	drive(data, size, &l, cut, size, SMTP_PARSE_DATA_OUT_MIN, &split);
	drive(data, size, &l, 1, 1, SMTP_PARSE_DATA_OUT_MIN, &bytes);
	same(&whole, &split);
	same(&whole, &bytes);

	if (l.bare == SMTP_PARSE_BARE_REJECT)
		check(whole.out_len <= whole.consumed);
	else
		check(whole.out_len <= 2 * whole.consumed);
	end = expected_end(data, size);
	if (end == 0) {
		check(whole.res == SMTP_PARSE_MORE && whole.consumed == size);
	} else {
		check(whole.res != SMTP_PARSE_MORE && whole.consumed == end);
	}
	if (whole.res == SMTP_PARSE_OK) {
		check_canonical(whole.out, whole.out_len);
		if (l.bare == SMTP_PARSE_BARE_REJECT)
			check_canonical(data, end);
	}
	free(whole.out);
	free(split.out);
	free(bytes.out);
	return 0;
}
