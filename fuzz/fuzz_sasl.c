/*
 * fuzz_sasl: libFuzzer harness for the SMTP AUTH response parsers
 * (sasl_base64_decode, sasl_plain, sasl_login).
 *
 * Byte 0 picks the parser and, for base64, the output size (so the bound
 * check is exercised at every size); the rest is one response line.
 * Invariants: the decoder never writes past its output size and its
 * result matches a simple reference decoder; PLAIN and LOGIN outputs are
 * NUL-terminated within their bounds and contain no NUL; a PLAIN
 * response re-encoded from its parts decodes to the same parts.
 * Violations abort().
 *
 * Threads: single (libFuzzer).
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sasl.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int cond)
{
	if (!cond)
		abort();
}

static void check_field(const char *s, size_t cap)
{
	check(memchr(s, '\0', cap + 1) != NULL);
}

static size_t encode(const unsigned char *in, size_t n, char *out)
{
	static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	size_t o = 0;

	for (size_t i = 0; i < n; i += 3) {
		unsigned long w = (unsigned long)in[i] << 16;
		size_t left = n - i;

		if (left > 1)
			w |= (unsigned long)in[i + 1] << 8;
		if (left > 2)
			w |= in[i + 2];
		out[o++] = b64[(w >> 18) & 63];
		out[o++] = b64[(w >> 12) & 63];
		out[o++] = left > 1 ? b64[(w >> 6) & 63] : '=';
		out[o++] = left > 2 ? b64[w & 63] : '=';
	}
	return o;
}

static void fuzz_base64(const char *in, size_t len, size_t cap)
{
	unsigned char out[SASL_LINE_MAX], guard[SASL_LINE_MAX];
	char again[SASL_LINE_MAX + 8];
	size_t n = 0;

	if (cap > sizeof out)
		cap = sizeof out;
	memset(out, 0xa5, sizeof out);
	memset(guard, 0xa5, sizeof guard);
	enum sasl_result r = sasl_base64_decode(in, len, out, cap, &n);

	/* Nothing written past the bound. */
	check(memcmp(out + cap, guard + cap, sizeof out - cap) == 0);
	if (r != SASL_OK)
		return;
	check(n <= cap);
	check(n == len / 4 * 3 - (len && in[len - 1] == '=') - (len > 1 && in[len - 2] == '='));
	/* Canonical: re-encoding gives the input back. */
	check(encode(out, n, again) == len && memcmp(again, in, len) == 0);
}

static void fuzz_plain(const char *in, size_t len)
{
	struct sasl_creds c;
	unsigned char raw[SASL_USER_MAX * 2 + SASL_PASS_MAX + 3];
	char line[sizeof raw * 2];
	size_t a, u, p, n;
	struct sasl_creds c2;

	if (sasl_plain(in, len, &c) != SASL_OK)
		return;
	check_field(c.authzid, SASL_USER_MAX);
	check_field(c.user, SASL_USER_MAX);
	check_field(c.pass, SASL_PASS_MAX);
	check(c.user[0] != '\0');
	a = strlen(c.authzid);
	u = strlen(c.user);
	p = strlen(c.pass);
	memcpy(raw, c.authzid, a);
	raw[a] = 0;
	memcpy(raw + a + 1, c.user, u);
	raw[a + 1 + u] = 0;
	memcpy(raw + a + u + 2, c.pass, p);
	n = encode(raw, a + u + p + 2, line);
	check(sasl_plain(line, n, &c2) == SASL_OK);
	check(!strcmp(c.authzid, c2.authzid) && !strcmp(c.user, c2.user) && !strcmp(c.pass, c2.pass));
	sasl_creds_wipe(&c);
	check(c.pass[0] == '\0');
}

static void fuzz_login(const char *in, size_t len, unsigned step)
{
	struct sasl_creds c = { 0 };

	if (sasl_login(in, len, step, &c) != SASL_OK)
		return;
	check_field(c.user, SASL_USER_MAX);
	check_field(c.pass, SASL_PASS_MAX);
	if (step == 0)
		check(c.user[0] != '\0');
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *in = (const char *)data + 1;
	size_t len;

	if (size < 1)
		return 0;
	len = size - 1;
	switch (data[0] & 3) {
	case 0:
		fuzz_base64(in, len, (size_t)(data[0] >> 2) * 7);
		break;
	case 1:
		fuzz_plain(in, len);
		break;
	default:
		fuzz_login(in, len, data[0] & 1 ? 0 : 1);
		break;
	}
	return 0;
}
