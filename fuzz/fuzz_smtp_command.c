/*
 * fuzz_smtp_command: libFuzzer harness for smtp_parse command lines, paths
 * and ESMTP parameters (smtp_parse_command, smtp_parse_path, xtext).
 *
 * Byte 0 picks the limits (SMTPUTF8, a small or large max_line/max_path);
 * the rest is one command line.  Invariants: the result is the same with
 * a CRLF appended; every output string is NUL-terminated at its length
 * and within its bound; views point into the input; a parsed mailbox
 * rebuilt from local_raw and domain parses back to the same parts; xtext
 * encode then decode is the identity.  Violations abort().
 *
 * Threads: single (libFuzzer).
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "smtp_parse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int cond)
{
	if (!cond)
		abort();
}

static void check_str(const char *s, size_t len, size_t max)
{
	check(len <= max);
	check(s[len] == '\0');
	check(strlen(s) == len);
}

static void check_view(const char *v, size_t len, const uint8_t *in,
		       size_t in_len)
{
	if (len == 0)
		return;
	check((const uint8_t *)v >= in &&
	      (const uint8_t *)v + len <= in + in_len);
}

/* "<" local_raw "@" domain ">" must parse back to the same parts. */
static void check_rebuild(const struct smtp_parse_path *p,
			  const struct smtp_parse_limits *l)
{
	static struct smtp_parse_path again;
	static char buf[SMTP_PARSE_PATH_CAP * 2 + 8];
	struct smtp_parse_limits big = *l;
	size_t n = 0;

	if (p->null || p->postmaster)
		return;
	buf[n++] = '<';
	memcpy(buf + n, p->local_raw, p->local_raw_len);
	n += p->local_raw_len;
	buf[n++] = '@';
	memcpy(buf + n, p->domain, p->domain_len);
	n += p->domain_len;
	buf[n++] = '>';
	big.smtputf8 = true;
	big.max_path = SMTP_PARSE_PATH_CAP;
	check(smtp_parse_path(buf, n, false, &big, &again) == SMTP_PARSE_OK);
	check(again.local_len == p->local_len &&
	      memcmp(again.local, p->local, p->local_len) == 0);
	check(again.domain_len == p->domain_len &&
	      memcmp(again.domain, p->domain, p->domain_len) == 0);
	check(again.kind == p->kind && again.quoted == p->quoted);
}

static void check_command(const struct smtp_parse_command *c,
			  enum smtp_parse_result res, const uint8_t *in,
			  size_t len, const struct smtp_parse_limits *l)
{
	struct smtp_parse_status st;

	smtp_parse_status(res, c->verb, &st);
	check(st.text != NULL && st.enhanced != NULL);
	check(res != SMTP_PARSE_MORE);
	check_view(c->verb_text, c->verb_len, in, len);
	check_view(c->arg, c->arg_len, in, len);
	check_str(c->helo, c->helo_len, SMTP_PARSE_DOMAIN_MAX);
	check_str(c->path.local, c->path.local_len, SMTP_PARSE_PATH_CAP);
	check_str(c->path.local_raw, c->path.local_raw_len, SMTP_PARSE_PATH_CAP);
	check_str(c->path.domain, c->path.domain_len, SMTP_PARSE_DOMAIN_MAX);
	check(strlen(c->mail.envid) <= SMTP_PARSE_ENVID_MAX);
	check(strlen(c->mail.auth) <= SMTP_PARSE_AUTH_MAX);
	check(strlen(c->rcpt.orcpt_raw) <= SMTP_PARSE_ORCPT_MAX);
	check(c->rcpt.orcpt_addr_len <= SMTP_PARSE_ORCPT_MAX);
	if (res != SMTP_PARSE_OK)
		return;
	check(c->verb != SMTP_PARSE_UNKNOWN);
	if (c->verb == SMTP_PARSE_MAIL || c->verb == SMTP_PARSE_RCPT) {
		check(c->path.local_raw_len <= l->max_local);
		if (c->path.utf8)
			check(l->smtputf8);
		check_rebuild(&c->path, l);
	}
	if (c->rcpt.notify & SMTP_PARSE_NOTIFY_NEVER)
		check(c->rcpt.notify == SMTP_PARSE_NOTIFY_NEVER);
	if (c->helo_valid)
		check(c->helo_len == c->arg_len);
}

static void check_xtext(const uint8_t *in, size_t len)
{
	static char enc[3 * 600 + 1], dec[601];
	size_t n, m;

	if (len > 600)
		len = 600;
	check(smtp_parse_xtext_encode(in, len, enc, sizeof(enc), &n));
	check(smtp_parse_xtext_decode(enc, n, dec, sizeof(dec), &m));
	check(m == len && memcmp(dec, in, len) == 0);
	/* decoding arbitrary input never overruns and stays terminated */
	if (smtp_parse_xtext_decode(in, len, dec, sizeof(dec), &m))
		check(m <= len && dec[m] == '\0');
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct smtp_parse_command cmd, cmd2;
	static struct smtp_parse_path path;
	static uint8_t buf[8192];
	struct smtp_parse_limits l;
	enum smtp_parse_result r1, r2;
	bool reverse;

	if (size < 1 || size > sizeof(buf) - 2)
		return 0;
	smtp_parse_limits_init(&l);
	l.smtputf8 = data[0] & 1;
	if (data[0] & 2) {
		l.max_line = 4096;
		l.max_path = 2000;
		l.max_local = 500;
	}
	if (data[0] & 4)
		l.max_line = 1 + data[0] / 8;
	reverse = (data[0] & 8) != 0;
	data++;
	size--;
	r1 = smtp_parse_command(data, size, &l, &cmd);
	check_command(&cmd, r1, data, size, &l);
	memcpy(buf, data, size);
	memcpy(buf + size, "\r\n", 2);
	r2 = smtp_parse_command(buf, size + 2, &l, &cmd2);
	check_command(&cmd2, r2, buf, size + 2, &l);
	/* a line already ending in CRLF has it stripped once, then a second
	 * CRLF is a stray CR/LF: only then may the two differ */
	if (!(size >= 2 && data[size - 2] == '\r' && data[size - 1] == '\n'))
		check(r1 == r2 && cmd.verb == cmd2.verb);
	r1 = smtp_parse_path(data, size, reverse, &l, &path);
	if (r1 == SMTP_PARSE_OK)
		check_rebuild(&path, &l);
	check_xtext(data, size);
	return 0;
}
