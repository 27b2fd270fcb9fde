/*
 * sasl: base64 and the PLAIN/LOGIN responses (see sasl.h).
 *
 * Every output has a fixed bound and is checked before each byte is
 * written; a response longer than SASL_LINE_MAX is refused before decoding.
 */
#include "sasl.h"

#include <string.h>
#include <strings.h>

static int b64_value(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

enum sasl_result sasl_base64_decode(const char *in, size_t len, unsigned char *out,
				    size_t size, size_t *n_r)
{
	size_t n = 0;

	*n_r = 0;
	if (len % 4 != 0)
		return SASL_BAD_BASE64;
	for (size_t i = 0; i < len; i += 4) {
		int v[4];
		unsigned pad = 0;

		for (size_t j = 0; j < 4; j++) {
			unsigned char c = (unsigned char)in[i + j];

			if (c == '=' && i + 4 == len && j >= 2) {
				v[j] = 0;
				pad++;
				continue;
			}
			if (pad > 0 || (v[j] = b64_value(c)) < 0)
				return SASL_BAD_BASE64;
		}
		unsigned long w = ((unsigned long)v[0] << 18) | ((unsigned long)v[1] << 12) |
				  ((unsigned long)v[2] << 6) | (unsigned long)v[3];
		unsigned char b[3] = { (unsigned char)(w >> 16), (unsigned char)(w >> 8),
				       (unsigned char)w };

		/* Canonical encoding only: the bits the padding drops are zero. */
		if ((pad == 1 && (w & 0xff) != 0) || (pad == 2 && (w & 0xffff) != 0))
			return SASL_BAD_BASE64;
		for (size_t j = 0; j < 3 - pad; j++) {
			if (n >= size)
				return SASL_TOO_LONG;
			out[n++] = b[j];
		}
	}
	*n_r = n;
	return SASL_OK;
}

size_t sasl_base64_encode(const unsigned char *in, size_t n, char *out, size_t size)
{
	static const char b64[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	size_t o = 0;

	if (size == 0 || (n + 2) / 3 * 4 >= size) {
		if (size)
			out[0] = '\0';
		return 0;
	}
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
	out[o] = '\0';
	return o;
}

enum sasl_mech sasl_mech_parse(const char *name, size_t len)
{
	if (len == 5 && strncasecmp(name, "PLAIN", 5) == 0)
		return SASL_MECH_PLAIN;
	if (len == 5 && strncasecmp(name, "LOGIN", 5) == 0)
		return SASL_MECH_LOGIN;
	return SASL_MECH_NONE;
}

static bool is_cancel(const char *line, size_t len)
{
	return len == 1 && line[0] == '*';
}

/* Copies a NUL-free field; false when it does not fit. */
static bool field(char *dst, size_t size, const unsigned char *src, size_t n)
{
	if (n >= size || memchr(src, '\0', n) != NULL)
		return false;
	memcpy(dst, src, n);
	dst[n] = '\0';
	return true;
}

enum sasl_result sasl_plain(const char *line, size_t len, struct sasl_creds *c)
{
	unsigned char buf[SASL_USER_MAX * 2 + SASL_PASS_MAX + 3];
	const unsigned char *z1, *z2;
	enum sasl_result r;
	size_t n;

	memset(c, 0, sizeof *c);
	if (is_cancel(line, len))
		return SASL_CANCEL;
	if (len > SASL_LINE_MAX)
		return SASL_TOO_LONG;
	if (len == 1 && line[0] == '=')
		return SASL_BAD_FORMAT;
	r = sasl_base64_decode(line, len, buf, sizeof buf, &n);
	if (r != SASL_OK)
		return r;
	z1 = memchr(buf, '\0', n);
	z2 = z1 ? memchr(z1 + 1, '\0', n - (size_t)(z1 + 1 - buf)) : NULL;
	r = SASL_BAD_FORMAT;
	if (z2 == NULL)
		goto out;
	if (!field(c->authzid, sizeof c->authzid, buf, (size_t)(z1 - buf)) ||
	    !field(c->user, sizeof c->user, z1 + 1, (size_t)(z2 - z1 - 1)) ||
	    !field(c->pass, sizeof c->pass, z2 + 1, n - (size_t)(z2 + 1 - buf)) ||
	    c->user[0] == '\0') {
		sasl_creds_wipe(c);
		goto out;
	}
	r = SASL_OK;
out:
	memset(buf, 0, sizeof buf);
	return r;
}

enum sasl_result sasl_login(const char *line, size_t len, unsigned step, struct sasl_creds *c)
{
	unsigned char buf[SASL_PASS_MAX + 1];
	char *dst = step == 0 ? c->user : c->pass;
	size_t size = step == 0 ? sizeof c->user : sizeof c->pass, n;
	enum sasl_result r;

	if (is_cancel(line, len))
		return SASL_CANCEL;
	if (len > SASL_LINE_MAX)
		return SASL_TOO_LONG;
	if (len == 1 && line[0] == '=')
		len = 0;   /* the empty initial response */
	r = sasl_base64_decode(line, len, buf, sizeof buf, &n);
	if (r == SASL_OK && (!field(dst, size, buf, n) || (step == 0 && n == 0)))
		r = SASL_BAD_FORMAT;
	memset(buf, 0, sizeof buf);
	return r;
}

void sasl_creds_wipe(struct sasl_creds *c)
{
	/* explicit_bzero: the compiler may not drop it as a dead store. */
	explicit_bzero(c, sizeof *c);
}
