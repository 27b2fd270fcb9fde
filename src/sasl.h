/*
 * sasl: pure parsing for SMTP AUTH (RFC 4954) with the PLAIN (RFC 4616)
 * and LOGIN mechanisms: a bounded base64 decoder and the decoding of each
 * client response.  No I/O, no allocation: bytes and lengths in, a result
 * and fixed-size outputs out, so the session, the tests and the fuzzer
 * drive the same code.
 *
 * Threads: any; reentrant.
 */
#ifndef CARRIER_SASL_H
#define CARRIER_SASL_H

#include <stdbool.h>
#include <stddef.h>

#define SASL_USER_MAX 255     /* longest authcid / authzid / LOGIN name */
#define SASL_PASS_MAX 255     /* longest password */
#define SASL_LINE_MAX 12288   /* longest client response line (RFC 4954: 12288) */

enum sasl_result {
	SASL_OK = 0,
	SASL_CANCEL,        /* the client sent "*": 501 5.0.0 */
	SASL_BAD_BASE64,    /* not base64: 501 5.5.2 */
	SASL_BAD_FORMAT,    /* decoded, but not a valid response: 501 5.5.2 */
	SASL_TOO_LONG,      /* over a bound: 500 5.5.6 */
};

enum sasl_mech { SASL_MECH_NONE = 0, SASL_MECH_PLAIN, SASL_MECH_LOGIN };

struct sasl_creds {
	char authzid[SASL_USER_MAX + 1];   /* "" when absent */
	char user[SASL_USER_MAX + 1];
	char pass[SASL_PASS_MAX + 1];
};

/*
 * Decodes base64 `in` (`len` bytes; padding required as in RFC 4648,
 * whitespace refused) into `out` of `size` bytes.  Returns SASL_OK with the
 * length in *n_r, SASL_BAD_BASE64 or SASL_TOO_LONG (output would not fit).
 */
enum sasl_result sasl_base64_decode(const char *in, size_t len, unsigned char *out,
				    size_t size, size_t *n_r);

/* Encodes `n` bytes as base64 (with padding) into `out` of `size` bytes,
 * NUL-terminated; returns the length, or 0 when it does not fit. */
size_t sasl_base64_encode(const unsigned char *in, size_t n, char *out, size_t size);

/* The mechanism named by `name` (case-insensitive), or SASL_MECH_NONE. */
enum sasl_mech sasl_mech_parse(const char *name, size_t len);

/*
 * A PLAIN response (a continuation line or the initial response, without
 * CRLF): "*" cancels, "=" is the empty response (invalid for PLAIN),
 * otherwise base64 of authzid NUL authcid NUL passwd.  Fills `c`.
 */
enum sasl_result sasl_plain(const char *line, size_t len, struct sasl_creds *c);

/*
 * One LOGIN response: base64 of the user name (step 0) or the password
 * (step 1), stored in c->user or c->pass.  "*" cancels.  NUL bytes are
 * refused.
 */
enum sasl_result sasl_login(const char *line, size_t len, unsigned step, struct sasl_creds *c);

/* Overwrites the password (and the rest) so it does not linger. */
void sasl_creds_wipe(struct sasl_creds *c);

#endif
