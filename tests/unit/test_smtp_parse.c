/*
 * test_smtp_parse: unit tests for smtp_parse (commands, paths, ESMTP
 * parameters, xtext, the DATA reader, the reply parser).
 *
 * Tables of {name, input, limits, want}.  Command cases run with and
 * without the trailing CRLF; DATA-reader and reply cases run whole, one
 * byte at a time, in a few other chunk sizes and (DATA) with the smallest
 * output buffer, and must give identical results.
 *
 * Owns nothing outside this process; no I/O beyond cmocka's output.
 * Threads: single.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "smtp_parse.h"

#define R(x) SMTP_PARSE_##x

static const char *rname(enum smtp_parse_result r)
{
	static const char *const names[] = {
		"OK", "MORE", "SYNTAX", "UNKNOWN_COMMAND", "LINE_TOO_LONG",
		"BAD_BYTES", "PATH_SYNTAX", "PATH_TOO_LONG", "PATH_UTF8",
		"PARAM_SYNTAX", "PARAM_UNKNOWN", "PARAM_DUPLICATE", "TOO_BIG",
		"BARE_LF", "NUL", "REPLY_SYNTAX", "REPLY_TOO_LONG",
	};

	return (unsigned)r < sizeof(names) / sizeof(names[0]) ? names[r] : "?";
}

static void want_result(const char *name, const char *what,
			enum smtp_parse_result got, enum smtp_parse_result want)
{
	if (got != want)
		fail_msg("%s (%s): result got %s, want %s", name, what,
			 rname(got), rname(want));
}

static void want_u64(const char *name, const char *field, uint64_t got,
		     uint64_t want)
{
	if (got != want)
		fail_msg("%s: %s got %llu, want %llu", name, field,
			 (unsigned long long)got, (unsigned long long)want);
}

static void want_str(const char *name, const char *field, const char *got,
		     size_t got_len, const char *want)
{
	if (want == NULL)
		return;
	if (got_len != strlen(want) || memcmp(got, want, got_len) != 0)
		fail_msg("%s: %s got \"%.*s\" (%zu), want \"%s\"", name, field,
			 (int)got_len, got, got_len, want);
}

/* ---- command table ------------------------------------------------------ */

enum lim { L_DEF = 0, L_UTF8, L_BIGPATH };

struct cmd_case {
	const char *name;
	const char *input;
	size_t len;                 /* 0: strlen(input) */
	enum lim lim;
	enum smtp_parse_result want;
	enum smtp_parse_verb verb;  /* checked when want is OK */
	const char *local;          /* NULL: not checked */
	const char *domain;
	void (*check)(const char *name, const struct smtp_parse_command *c);
};

static void chk_null(const char *n, const struct smtp_parse_command *c)
{
	if (!c->path.null)
		fail_msg("%s: want null path", n);
}

static void chk_postmaster(const char *n, const struct smtp_parse_command *c)
{
	if (!c->path.postmaster || c->path.domain_len != 0)
		fail_msg("%s: want postmaster without domain", n);
}

static void chk_space(const char *n, const struct smtp_parse_command *c)
{
	if (!c->space_after_colon)
		fail_msg("%s: want space_after_colon", n);
}

static void chk_quoted(const char *n, const struct smtp_parse_command *c)
{
	if (!c->path.quoted)
		fail_msg("%s: want quoted", n);
	want_str(n, "local_raw", c->path.local_raw, c->path.local_raw_len,
		 "\"john doe\"");
}

static void chk_qpair(const char *n, const struct smtp_parse_command *c)
{
	want_str(n, "local_raw", c->path.local_raw, c->path.local_raw_len,
		 "\"a\\\"b\\\\c\"");
}

static void chk_route(const char *n, const struct smtp_parse_command *c)
{
	if (!c->path.route)
		fail_msg("%s: want route flag", n);
}

static void chk_ipv4(const char *n, const struct smtp_parse_command *c)
{
	want_u64(n, "kind", c->path.kind, SMTP_PARSE_DOMAIN_IPV4);
}

static void chk_ipv6(const char *n, const struct smtp_parse_command *c)
{
	want_u64(n, "kind", c->path.kind, SMTP_PARSE_DOMAIN_IPV6);
}

static void chk_general(const char *n, const struct smtp_parse_command *c)
{
	want_u64(n, "kind", c->path.kind, SMTP_PARSE_DOMAIN_GENERAL);
}

static void chk_utf8(const char *n, const struct smtp_parse_command *c)
{
	if (!c->path.utf8)
		fail_msg("%s: want utf8 flag", n);
}

static void chk_helo_ok(const char *n, const struct smtp_parse_command *c)
{
	if (!c->helo_valid)
		fail_msg("%s: want helo_valid", n);
	if (c->helo_len != c->arg_len || memcmp(c->helo, c->arg, c->arg_len))
		fail_msg("%s: helo got \"%s\", want \"%.*s\"", n, c->helo,
			 (int)c->arg_len, c->arg);
}

static void chk_helo_bad(const char *n, const struct smtp_parse_command *c)
{
	if (c->helo_valid)
		fail_msg("%s: want helo_valid false", n);
	want_str(n, "helo", c->helo, c->helo_len, "bad_name! x");
}

static void chk_bdat100(const char *n, const struct smtp_parse_command *c)
{
	want_u64(n, "bdat_size", c->bdat_size, 100);
	want_u64(n, "bdat_last", c->bdat_last, 1);
}

static void chk_bdat0(const char *n, const struct smtp_parse_command *c)
{
	want_u64(n, "bdat_size", c->bdat_size, 0);
	want_u64(n, "bdat_last", c->bdat_last, 0);
}

static void chk_arg_hello(const char *n, const struct smtp_parse_command *c)
{
	want_str(n, "arg", c->arg, c->arg_len, "hello  world");
}

static void chk_size_body(const char *n, const struct smtp_parse_command *c)
{
	want_u64(n, "has_size", c->mail.has_size, 1);
	want_u64(n, "size", c->mail.size, 1000);
	want_u64(n, "body", c->mail.body, SMTP_PARSE_BODY_8BITMIME);
}

static void chk_size_max(const char *n, const struct smtp_parse_command *c)
{
	want_u64(n, "size", c->mail.size, UINT64_MAX);
}

static void chk_dsn_mail(const char *n, const struct smtp_parse_command *c)
{
	want_u64(n, "ret", c->mail.ret, SMTP_PARSE_RET_HDRS);
	want_u64(n, "has_envid", c->mail.has_envid, 1);
	want_str(n, "envid", c->mail.envid, strlen(c->mail.envid), "abc+2Bdef");
	want_u64(n, "body", c->mail.body, SMTP_PARSE_BODY_BINARYMIME);
}

static void chk_auth(const char *n, const struct smtp_parse_command *c)
{
	want_u64(n, "has_auth", c->mail.has_auth, 1);
	want_str(n, "auth", c->mail.auth, strlen(c->mail.auth), "<>");
}

static void chk_smtputf8(const char *n, const struct smtp_parse_command *c)
{
	want_u64(n, "smtputf8", c->mail.smtputf8, 1);
	chk_utf8(n, c);
}

static void chk_never(const char *n, const struct smtp_parse_command *c)
{
	want_u64(n, "notify", c->rcpt.notify, SMTP_PARSE_NOTIFY_NEVER);
}

static void chk_notify3(const char *n, const struct smtp_parse_command *c)
{
	want_u64(n, "notify", c->rcpt.notify,
		 SMTP_PARSE_NOTIFY_SUCCESS | SMTP_PARSE_NOTIFY_FAILURE |
		 SMTP_PARSE_NOTIFY_DELAY);
}

static void chk_orcpt(const char *n, const struct smtp_parse_command *c)
{
	want_u64(n, "has_orcpt", c->rcpt.has_orcpt, 1);
	want_str(n, "orcpt_type", c->rcpt.orcpt_type,
		 strlen(c->rcpt.orcpt_type), "rfc822");
	want_str(n, "orcpt_raw", c->rcpt.orcpt_raw,
		 strlen(c->rcpt.orcpt_raw), "joe+2Bfoo@example.org");
	want_str(n, "orcpt_addr", c->rcpt.orcpt_addr, c->rcpt.orcpt_addr_len,
		 "joe+foo@example.org");
}

static void chk_orcpt_utf8(const char *n, const struct smtp_parse_command *c)
{
	want_str(n, "orcpt_addr", c->rcpt.orcpt_addr, c->rcpt.orcpt_addr_len,
		 "j\xc3\xb6" "e@x.org");
}

#define LOCAL63 "123456789012345678901234567890123456789012345678901234567890123"
#define LABEL63 "abcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabc"

static const struct cmd_case cmd_cases[] = {
	/* verbs, mixed case */
	{ "helo", "helo example.org", 0, L_DEF, R(OK), SMTP_PARSE_HELO, NULL, NULL, chk_helo_ok },
	{ "ehlo literal", "EhLo [192.0.2.1]", 0, L_DEF, R(OK), SMTP_PARSE_EHLO, NULL, NULL, chk_helo_ok },
	{ "ehlo v6", "EHLO [IPv6:2001:db8::1]", 0, L_DEF, R(OK), SMTP_PARSE_EHLO, NULL, NULL, chk_helo_ok },
	{ "ehlo bad arg flagged", "EHLO bad_name! x", 0, L_DEF, R(OK), SMTP_PARSE_EHLO, NULL, NULL, chk_helo_bad },
	{ "ehlo no arg", "EHLO", 0, L_DEF, R(SYNTAX), 0, NULL, NULL, NULL },
	{ "mail", "mail FROM:<a@b.example>", 0, L_DEF, R(OK), SMTP_PARSE_MAIL, "a", "b.example", NULL },
	{ "rcpt", "RcPt To:<c@d>", 0, L_DEF, R(OK), SMTP_PARSE_RCPT, "c", "d", NULL },
	{ "data", "dAtA", 0, L_DEF, R(OK), SMTP_PARSE_DATA, NULL, NULL, NULL },
	{ "data arg", "DATA x", 0, L_DEF, R(SYNTAX), 0, NULL, NULL, NULL },
	{ "bdat last", "bDaT 100 last", 0, L_DEF, R(OK), SMTP_PARSE_BDAT, NULL, NULL, chk_bdat100 },
	{ "bdat 0", "BDAT 0", 0, L_DEF, R(OK), SMTP_PARSE_BDAT, NULL, NULL, chk_bdat0 },
	{ "bdat overflow", "BDAT 99999999999999999999", 0, L_DEF, R(TOO_BIG), 0, NULL, NULL, NULL },
	{ "bdat bad marker", "BDAT 12 FIRST", 0, L_DEF, R(SYNTAX), 0, NULL, NULL, NULL },
	{ "bdat no size", "BDAT", 0, L_DEF, R(SYNTAX), 0, NULL, NULL, NULL },
	{ "bdat negative", "BDAT -1", 0, L_DEF, R(SYNTAX), 0, NULL, NULL, NULL },
	{ "rset", "Rset", 0, L_DEF, R(OK), SMTP_PARSE_RSET, NULL, NULL, NULL },
	{ "noop", "nOOp", 0, L_DEF, R(OK), SMTP_PARSE_NOOP, NULL, NULL, NULL },
	{ "noop arg", "NOOP hello  world", 0, L_DEF, R(OK), SMTP_PARSE_NOOP, NULL, NULL, chk_arg_hello },
	{ "quit trailing blanks", "qUIT \t ", 0, L_DEF, R(OK), SMTP_PARSE_QUIT, NULL, NULL, NULL },
	{ "vrfy", "Vrfy user", 0, L_DEF, R(OK), SMTP_PARSE_VRFY, NULL, NULL, NULL },
	{ "vrfy no arg", "VRFY", 0, L_DEF, R(SYNTAX), 0, NULL, NULL, NULL },
	{ "help", "hElP", 0, L_DEF, R(OK), SMTP_PARSE_HELP, NULL, NULL, NULL },
	{ "help arg", "HELP mail", 0, L_DEF, R(OK), SMTP_PARSE_HELP, NULL, NULL, NULL },
	{ "starttls", "StartTLS", 0, L_DEF, R(OK), SMTP_PARSE_STARTTLS, NULL, NULL, NULL },
	{ "starttls arg", "STARTTLS now", 0, L_DEF, R(SYNTAX), 0, NULL, NULL, NULL },
	{ "auth", "auth PLAIN AGZvbwBiYXI=", 0, L_DEF, R(OK), SMTP_PARSE_AUTH, NULL, NULL, NULL },
	{ "auth no arg", "AUTH", 0, L_DEF, R(SYNTAX), 0, NULL, NULL, NULL },
	{ "unknown", "XYZZY", 0, L_DEF, R(UNKNOWN_COMMAND), 0, NULL, NULL, NULL },
	{ "empty", "", 0, L_DEF, R(UNKNOWN_COMMAND), 0, NULL, NULL, NULL },
	{ "no space after verb", "MAILFROM:<a@b>", 0, L_DEF, R(UNKNOWN_COMMAND), 0, NULL, NULL, NULL },
	{ "tab after verb", "NOOP\tx", 0, L_DEF, R(UNKNOWN_COMMAND), 0, NULL, NULL, NULL },
	/* bytes */
	{ "nul", "NOOP\0x", 6, L_DEF, R(BAD_BYTES), 0, NULL, NULL, NULL },
	{ "invalid utf8", "NOOP \xff", 0, L_DEF, R(BAD_BYTES), 0, NULL, NULL, NULL },
	{ "overlong utf8", "NOOP \xc0\xaf", 0, L_DEF, R(BAD_BYTES), 0, NULL, NULL, NULL },
	{ "overlong 3", "NOOP \xe0\x80\xaf", 0, L_DEF, R(BAD_BYTES), 0, NULL, NULL, NULL },
	{ "surrogate", "NOOP \xed\xa0\x80", 0, L_DEF, R(BAD_BYTES), 0, NULL, NULL, NULL },
	{ "above 10FFFF", "NOOP \xf4\x90\x80\x80", 0, L_DEF, R(BAD_BYTES), 0, NULL, NULL, NULL },
	{ "truncated utf8", "NOOP \xe2\x82", 0, L_DEF, R(BAD_BYTES), 0, NULL, NULL, NULL },
	{ "valid utf8 noop", "NOOP \xe2\x82\xac \xf0\x9f\x98\x80", 0, L_DEF, R(OK), SMTP_PARSE_NOOP, NULL, NULL, NULL },
	{ "inner cr", "NO\rOP", 0, L_DEF, R(BAD_BYTES), 0, NULL, NULL, NULL },
	{ "inner lf", "NOOP\nQUIT", 0, L_DEF, R(BAD_BYTES), 0, NULL, NULL, NULL },
	/* paths */
	{ "null reverse", "MAIL FROM:<>", 0, L_DEF, R(OK), SMTP_PARSE_MAIL, "", "", chk_null },
	{ "null forward", "RCPT TO:<>", 0, L_DEF, R(PATH_SYNTAX), 0, NULL, NULL, NULL },
	{ "postmaster", "RCPT TO:<Postmaster>", 0, L_DEF, R(OK), SMTP_PARSE_RCPT, "Postmaster", "", chk_postmaster },
	{ "postmaster case", "RCPT TO:<pOSTMASTER>", 0, L_DEF, R(OK), SMTP_PARSE_RCPT, "pOSTMASTER", "", chk_postmaster },
	{ "postmaster in mail", "MAIL FROM:<Postmaster>", 0, L_DEF, R(PATH_SYNTAX), 0, NULL, NULL, NULL },
	{ "postmaster@domain", "RCPT TO:<Postmaster@example.org>", 0, L_DEF, R(OK), SMTP_PARSE_RCPT, "Postmaster", "example.org", NULL },
	{ "space after colon", "MAIL FROM: <a@b>", 0, L_DEF, R(OK), SMTP_PARSE_MAIL, "a", "b", chk_space },
	{ "no brackets", "MAIL FROM:a@b", 0, L_DEF, R(PATH_SYNTAX), 0, NULL, NULL, NULL },
	{ "no closing bracket", "MAIL FROM:<a@b", 0, L_DEF, R(PATH_SYNTAX), 0, NULL, NULL, NULL },
	{ "no FROM", "MAIL <a@b>", 0, L_DEF, R(SYNTAX), 0, NULL, NULL, NULL },
	{ "TO in mail", "MAIL TO:<a@b>", 0, L_DEF, R(SYNTAX), 0, NULL, NULL, NULL },
	{ "trailing garbage", "MAIL FROM:<a@b>x", 0, L_DEF, R(SYNTAX), 0, NULL, NULL, NULL },
	{ "trailing word", "MAIL FROM:<a@b> x", 0, L_DEF, R(PARAM_UNKNOWN), 0, NULL, NULL, NULL },
	{ "double bracket", "MAIL FROM:<<a@b>>", 0, L_DEF, R(PATH_SYNTAX), 0, NULL, NULL, NULL },
	{ "quoted", "MAIL FROM:<\"john doe\"@example.org>", 0, L_DEF, R(OK), SMTP_PARSE_MAIL, "john doe", "example.org", chk_quoted },
	{ "quoted pairs", "MAIL FROM:<\"a\\\"b\\\\c\"@x.org>", 0, L_DEF, R(OK), SMTP_PARSE_MAIL, "a\"b\\c", "x.org", chk_qpair },
	{ "quoted gt", "RCPT TO:<\"a>b\"@x.org>", 0, L_DEF, R(OK), SMTP_PARSE_RCPT, "a>b", "x.org", NULL },
	{ "quoted empty", "RCPT TO:<\"\"@x.org>", 0, L_DEF, R(OK), SMTP_PARSE_RCPT, "", "x.org", NULL },
	{ "unbalanced quote", "MAIL FROM:<\"unbalanced@x.org>", 0, L_DEF, R(PATH_SYNTAX), 0, NULL, NULL, NULL },
	{ "quote then junk", "MAIL FROM:<\"a\"b@x.org>", 0, L_DEF, R(PATH_SYNTAX), 0, NULL, NULL, NULL },
	{ "quoted ctl", "MAIL FROM:<\"a\tb\"@x.org>", 0, L_DEF, R(PATH_SYNTAX), 0, NULL, NULL, NULL },
	{ "atext specials", "RCPT TO:<a!#$%&'*+-/=?^_`{|}~z@x.org>", 0, L_DEF, R(OK), SMTP_PARSE_RCPT, "a!#$%&'*+-/=?^_`{|}~z", "x.org", NULL },
	{ "dots", "RCPT TO:<first.last@x.org>", 0, L_DEF, R(OK), SMTP_PARSE_RCPT, "first.last", "x.org", NULL },
	{ "double dot", "RCPT TO:<a..b@x.org>", 0, L_DEF, R(PATH_SYNTAX), 0, NULL, NULL, NULL },
	{ "leading dot", "RCPT TO:<.a@x.org>", 0, L_DEF, R(PATH_SYNTAX), 0, NULL, NULL, NULL },
	{ "trailing dot local", "RCPT TO:<a.@x.org>", 0, L_DEF, R(PATH_SYNTAX), 0, NULL, NULL, NULL },
	{ "space in local", "RCPT TO:<a b@x.org>", 0, L_DEF, R(PATH_SYNTAX), 0, NULL, NULL, NULL },
	{ "no at", "RCPT TO:<abc>", 0, L_DEF, R(PATH_SYNTAX), 0, NULL, NULL, NULL },
	{ "two ats", "RCPT TO:<a@b@c>", 0, L_DEF, R(PATH_SYNTAX), 0, NULL, NULL, NULL },
	{ "empty domain", "RCPT TO:<a@>", 0, L_DEF, R(PATH_SYNTAX), 0, NULL, NULL, NULL },
	{ "empty local", "RCPT TO:<@x.org>", 0, L_DEF, R(PATH_SYNTAX), 0, NULL, NULL, NULL },
	{ "hyphen first", "RCPT TO:<a@-x.org>", 0, L_DEF, R(PATH_SYNTAX), 0, NULL, NULL, NULL },
	{ "hyphen last", "RCPT TO:<a@x-.org>", 0, L_DEF, R(PATH_SYNTAX), 0, NULL, NULL, NULL },
	{ "hyphen inside", "RCPT TO:<a@x-y.org>", 0, L_DEF, R(OK), SMTP_PARSE_RCPT, "a", "x-y.org", NULL },
	{ "empty label", "RCPT TO:<a@x..org>", 0, L_DEF, R(PATH_SYNTAX), 0, NULL, NULL, NULL },
	{ "trailing dot domain", "RCPT TO:<a@x.org.>", 0, L_DEF, R(PATH_SYNTAX), 0, NULL, NULL, NULL },
	{ "underscore domain", "RCPT TO:<a@x_y.org>", 0, L_DEF, R(PATH_SYNTAX), 0, NULL, NULL, NULL },
	{ "label 63", "RCPT TO:<a@" LABEL63 ".org>", 0, L_DEF, R(OK), SMTP_PARSE_RCPT, "a", LABEL63 ".org", NULL },
	{ "label 64", "RCPT TO:<a@" LABEL63 "x.org>", 0, L_DEF, R(PATH_SYNTAX), 0, NULL, NULL, NULL },
	{ "local 64", "RCPT TO:<" LOCAL63 "4@x.org>", 0, L_DEF, R(OK), SMTP_PARSE_RCPT, LOCAL63 "4", "x.org", NULL },
	{ "local 65", "RCPT TO:<" LOCAL63 "45@x.org>", 0, L_DEF, R(PATH_TOO_LONG), 0, NULL, NULL, NULL },
	{ "domain 257", "RCPT TO:<a@x." LABEL63 "." LABEL63 "." LABEL63 "." LABEL63 ">", 0, L_BIGPATH, R(PATH_TOO_LONG), 0, NULL, NULL, NULL },
	{ "path over 256", "RCPT TO:<a@" LABEL63 "." LABEL63 "." LABEL63 "." LABEL63 ">", 0, L_DEF, R(PATH_TOO_LONG), 0, NULL, NULL, NULL },
	{ "domain 255 big path", "RCPT TO:<a@" LABEL63 "." LABEL63 "." LABEL63 "." LABEL63 ">", 0, L_BIGPATH, R(OK), SMTP_PARSE_RCPT, "a", NULL, NULL },
	{ "route", "RCPT TO:<@a,@b.example:user@d>", 0, L_DEF, R(OK), SMTP_PARSE_RCPT, "user", "d", chk_route },
	{ "route one", "RCPT TO:<@a:b@c>", 0, L_DEF, R(OK), SMTP_PARSE_RCPT, "b", "c", chk_route },
	{ "route no at", "RCPT TO:<@a,b:c@d>", 0, L_DEF, R(PATH_SYNTAX), 0, NULL, NULL, NULL },
	{ "route no mailbox", "RCPT TO:<@a:>", 0, L_DEF, R(PATH_SYNTAX), 0, NULL, NULL, NULL },
	{ "route bad domain", "RCPT TO:<@-a:b@c>", 0, L_DEF, R(PATH_SYNTAX), 0, NULL, NULL, NULL },
	{ "ipv4 literal", "RCPT TO:<a@[1.2.3.4]>", 0, L_DEF, R(OK), SMTP_PARSE_RCPT, "a", "[1.2.3.4]", chk_ipv4 },
	{ "ipv4 300", "RCPT TO:<a@[300.1.1.1]>", 0, L_DEF, R(PATH_SYNTAX), 0, NULL, NULL, NULL },
	{ "ipv4 short", "RCPT TO:<a@[1.2.3]>", 0, L_DEF, R(PATH_SYNTAX), 0, NULL, NULL, NULL },
	{ "ipv4 long", "RCPT TO:<a@[1.2.3.4.5]>", 0, L_DEF, R(PATH_SYNTAX), 0, NULL, NULL, NULL },
	{ "ipv4 4 digits", "RCPT TO:<a@[1.2.3.0004]>", 0, L_DEF, R(PATH_SYNTAX), 0, NULL, NULL, NULL },
	{ "ipv6 loopback", "RCPT TO:<a@[IPv6:::1]>", 0, L_DEF, R(OK), SMTP_PARSE_RCPT, "a", "[IPv6:::1]", chk_ipv6 },
	{ "ipv6 lower tag", "RCPT TO:<a@[ipv6:2001:db8::1]>", 0, L_DEF, R(OK), SMTP_PARSE_RCPT, "a", "[ipv6:2001:db8::1]", chk_ipv6 },
	{ "ipv6 v4 tail", "RCPT TO:<a@[IPv6:::ffff:1.2.3.4]>", 0, L_DEF, R(OK), SMTP_PARSE_RCPT, "a", NULL, chk_ipv6 },
	{ "ipv6 bad", "RCPT TO:<a@[IPv6:::g]>", 0, L_DEF, R(PATH_SYNTAX), 0, NULL, NULL, NULL },
	{ "ipv6 empty", "RCPT TO:<a@[IPv6:]>", 0, L_DEF, R(PATH_SYNTAX), 0, NULL, NULL, NULL },
	{ "general literal", "RCPT TO:<a@[x-tag:stuff]>", 0, L_DEF, R(OK), SMTP_PARSE_RCPT, "a", "[x-tag:stuff]", chk_general },
	{ "general no content", "RCPT TO:<a@[tag:]>", 0, L_DEF, R(PATH_SYNTAX), 0, NULL, NULL, NULL },
	{ "empty literal", "RCPT TO:<a@[]>", 0, L_DEF, R(PATH_SYNTAX), 0, NULL, NULL, NULL },
	{ "literal no close", "RCPT TO:<a@[1.2.3.4>", 0, L_DEF, R(PATH_SYNTAX), 0, NULL, NULL, NULL },
	/* UTF-8 (RFC 6531) */
	{ "utf8 rcpt allowed", "RCPT TO:<j\xc3\xb6" "e@ex\xc3\xa4mple.org>", 0, L_UTF8, R(OK), SMTP_PARSE_RCPT, "j\xc3\xb6" "e", "ex\xc3\xa4mple.org", chk_utf8 },
	{ "utf8 rcpt refused", "RCPT TO:<j\xc3\xb6" "e@example.org>", 0, L_DEF, R(PATH_UTF8), 0, NULL, NULL, NULL },
	{ "utf8 domain refused", "RCPT TO:<joe@ex\xc3\xa4mple.org>", 0, L_DEF, R(PATH_UTF8), 0, NULL, NULL, NULL },
	{ "utf8 mail with param", "MAIL FROM:<j\xc3\xb6" "e@x.org> SMTPUTF8", 0, L_UTF8, R(OK), SMTP_PARSE_MAIL, "j\xc3\xb6" "e", "x.org", chk_smtputf8 },
	{ "utf8 mail no param", "MAIL FROM:<j\xc3\xb6" "e@x.org>", 0, L_UTF8, R(PATH_UTF8), 0, NULL, NULL, NULL },
	{ "smtputf8 not offered", "MAIL FROM:<a@b> SMTPUTF8", 0, L_DEF, R(PARAM_UNKNOWN), 0, NULL, NULL, NULL },
	{ "smtputf8 with value", "MAIL FROM:<a@b> SMTPUTF8=yes", 0, L_UTF8, R(PARAM_SYNTAX), 0, NULL, NULL, NULL },
	{ "utf8 quoted", "RCPT TO:<\"j\xc3\xb6 e\"@x.org>", 0, L_UTF8, R(OK), SMTP_PARSE_RCPT, "j\xc3\xb6 e", "x.org", NULL },
	{ "utf8 invalid in path", "RCPT TO:<j\xc3" "e@x.org>", 0, L_UTF8, R(BAD_BYTES), 0, NULL, NULL, NULL },
	/* MAIL parameters */
	{ "size body", "MAIL FROM:<a@b> SIZE=1000 body=8bitmime", 0, L_DEF, R(OK), SMTP_PARSE_MAIL, NULL, NULL, chk_size_body },
	{ "two spaces", "MAIL FROM:<a@b>  SIZE=1000  BODY=8BITMIME", 0, L_DEF, R(OK), SMTP_PARSE_MAIL, NULL, NULL, chk_size_body },
	{ "size dup", "MAIL FROM:<a@b> size=1 SIZE=2", 0, L_DEF, R(PARAM_DUPLICATE), 0, NULL, NULL, NULL },
	{ "size overflow", "MAIL FROM:<a@b> SIZE=99999999999999999999", 0, L_DEF, R(TOO_BIG), 0, NULL, NULL, NULL },
	{ "size max", "MAIL FROM:<a@b> SIZE=18446744073709551615", 0, L_DEF, R(OK), SMTP_PARSE_MAIL, NULL, NULL, chk_size_max },
	{ "size max+1", "MAIL FROM:<a@b> SIZE=18446744073709551616", 0, L_DEF, R(TOO_BIG), 0, NULL, NULL, NULL },
	{ "size empty", "MAIL FROM:<a@b> SIZE=", 0, L_DEF, R(PARAM_SYNTAX), 0, NULL, NULL, NULL },
	{ "size no value", "MAIL FROM:<a@b> SIZE", 0, L_DEF, R(PARAM_SYNTAX), 0, NULL, NULL, NULL },
	{ "size letters", "MAIL FROM:<a@b> SIZE=12a", 0, L_DEF, R(PARAM_SYNTAX), 0, NULL, NULL, NULL },
	{ "body bad", "MAIL FROM:<a@b> BODY=9BIT", 0, L_DEF, R(PARAM_SYNTAX), 0, NULL, NULL, NULL },
	{ "dsn mail", "MAIL FROM:<a@b> RET=hdrs ENVID=abc+2Bdef BODY=BINARYMIME", 0, L_DEF, R(OK), SMTP_PARSE_MAIL, NULL, NULL, chk_dsn_mail },
	{ "ret bad", "MAIL FROM:<a@b> RET=NONE", 0, L_DEF, R(PARAM_SYNTAX), 0, NULL, NULL, NULL },
	{ "envid lower hex", "MAIL FROM:<a@b> ENVID=a+2b", 0, L_DEF, R(PARAM_SYNTAX), 0, NULL, NULL, NULL },
	{ "envid short hex", "MAIL FROM:<a@b> ENVID=a+2", 0, L_DEF, R(PARAM_SYNTAX), 0, NULL, NULL, NULL },
	{ "envid 101", "MAIL FROM:<a@b> ENVID=" LOCAL63 "12345678901234567890123456789012345678", 0, L_DEF, R(PARAM_SYNTAX), 0, NULL, NULL, NULL },
	{ "auth null", "MAIL FROM:<a@b> AUTH=<>", 0, L_DEF, R(OK), SMTP_PARSE_MAIL, NULL, NULL, chk_auth },
	{ "auth xtext", "MAIL FROM:<a@b> AUTH=joe+40example.org", 0, L_DEF, R(OK), SMTP_PARSE_MAIL, NULL, NULL, NULL },
	{ "unknown param", "MAIL FROM:<a@b> XFOO=bar", 0, L_DEF, R(PARAM_UNKNOWN), 0, NULL, NULL, NULL },
	{ "rcpt param on mail", "MAIL FROM:<a@b> NOTIFY=NEVER", 0, L_DEF, R(PARAM_UNKNOWN), 0, NULL, NULL, NULL },
	{ "value with =", "MAIL FROM:<a@b> SIZE=1=2", 0, L_DEF, R(PARAM_SYNTAX), 0, NULL, NULL, NULL },
	{ "keyword hyphen first", "MAIL FROM:<a@b> -X=1", 0, L_DEF, R(PARAM_SYNTAX), 0, NULL, NULL, NULL },
	{ "param tab", "MAIL FROM:<a@b> SIZE=1\tBODY=7BIT", 0, L_DEF, R(PARAM_SYNTAX), 0, NULL, NULL, NULL },
	/* RCPT parameters */
	{ "notify never", "RCPT TO:<a@b> NOTIFY=never", 0, L_DEF, R(OK), SMTP_PARSE_RCPT, NULL, NULL, chk_never },
	{ "notify list", "RCPT TO:<a@b> NOTIFY=SUCCESS,FAILURE,DELAY", 0, L_DEF, R(OK), SMTP_PARSE_RCPT, NULL, NULL, chk_notify3 },
	{ "notify never+", "RCPT TO:<a@b> NOTIFY=NEVER,SUCCESS", 0, L_DEF, R(PARAM_SYNTAX), 0, NULL, NULL, NULL },
	{ "notify bad word", "RCPT TO:<a@b> NOTIFY=SOMETIMES", 0, L_DEF, R(PARAM_SYNTAX), 0, NULL, NULL, NULL },
	{ "notify empty item", "RCPT TO:<a@b> NOTIFY=SUCCESS,", 0, L_DEF, R(PARAM_SYNTAX), 0, NULL, NULL, NULL },
	{ "notify dup", "RCPT TO:<a@b> NOTIFY=NEVER NOTIFY=NEVER", 0, L_DEF, R(PARAM_DUPLICATE), 0, NULL, NULL, NULL },
	{ "orcpt", "RCPT TO:<a@b> ORCPT=rfc822;joe+2Bfoo@example.org", 0, L_DEF, R(OK), SMTP_PARSE_RCPT, NULL, NULL, chk_orcpt },
	{ "orcpt control", "RCPT TO:<a@b> ORCPT=rfc822;a+00b", 0, L_DEF, R(PARAM_SYNTAX), 0, NULL, NULL, NULL },
	{ "orcpt crlf smuggle", "RCPT TO:<a@b> ORCPT=rfc822;a+0D+0Ab", 0, L_DEF, R(PARAM_SYNTAX), 0, NULL, NULL, NULL },
	{ "orcpt no type", "RCPT TO:<a@b> ORCPT=;a@b", 0, L_DEF, R(PARAM_SYNTAX), 0, NULL, NULL, NULL },
	{ "orcpt no semi", "RCPT TO:<a@b> ORCPT=rfc822", 0, L_DEF, R(PARAM_SYNTAX), 0, NULL, NULL, NULL },
	{ "orcpt empty addr", "RCPT TO:<a@b> ORCPT=rfc822;", 0, L_DEF, R(PARAM_SYNTAX), 0, NULL, NULL, NULL },
	{ "orcpt utf-8 escape", "RCPT TO:<a@b> ORCPT=utf-8;j\\x{00F6}e@x.org", 0, L_DEF, R(OK), SMTP_PARSE_RCPT, NULL, NULL, chk_orcpt_utf8 },
	{ "orcpt utf-8 raw", "RCPT TO:<a@b> ORCPT=UTF-8;j\xc3\xb6" "e@x.org", 0, L_UTF8, R(OK), SMTP_PARSE_RCPT, NULL, NULL, chk_orcpt_utf8 },
	{ "orcpt utf-8 raw refused", "RCPT TO:<a@b> ORCPT=utf-8;j\xc3\xb6" "e@x.org", 0, L_DEF, R(PARAM_SYNTAX), 0, NULL, NULL, NULL },
	{ "orcpt utf-8 surrogate", "RCPT TO:<a@b> ORCPT=utf-8;\\x{D800}@x", 0, L_DEF, R(PARAM_SYNTAX), 0, NULL, NULL, NULL },
	{ "orcpt utf-8 plus", "RCPT TO:<a@b> ORCPT=utf-8;a+b@x", 0, L_DEF, R(PARAM_SYNTAX), 0, NULL, NULL, NULL },
	{ "mail param on rcpt", "RCPT TO:<a@b> SIZE=1", 0, L_DEF, R(PARAM_UNKNOWN), 0, NULL, NULL, NULL },
};

static void limits_for(enum lim lim, struct smtp_parse_limits *l)
{
	smtp_parse_limits_init(l);
	if (lim == L_UTF8)
		l->smtputf8 = true;
	if (lim == L_BIGPATH) {
		l->max_path = 1000;
		l->max_line = 2000;
	}
}

static void cmd_check(const struct cmd_case *c, const char *what,
		      enum smtp_parse_result got,
		      const struct smtp_parse_command *cmd)
{
	want_result(c->name, what, got, c->want);
	if (c->want != SMTP_PARSE_OK)
		return;
	if (cmd->verb != c->verb)
		fail_msg("%s (%s): verb got %s, want %s", c->name, what,
			 smtp_parse_verb_name(cmd->verb),
			 smtp_parse_verb_name(c->verb));
	if (c->local != NULL)
		want_str(c->name, "local", cmd->path.local,
			 cmd->path.local_len, c->local);
	if (c->domain != NULL)
		want_str(c->name, "domain", cmd->path.domain,
			 cmd->path.domain_len, c->domain);
	if (c->local != NULL && strlen(cmd->path.local) != cmd->path.local_len)
		fail_msg("%s: local not NUL-terminated at its length", c->name);
	if (c->check != NULL)
		c->check(c->name, cmd);
}

static void test_commands(void **state)
{
	static struct smtp_parse_command cmd;
	char buf[4096];

	(void)state;
	for (size_t i = 0; i < sizeof(cmd_cases) / sizeof(cmd_cases[0]); i++) {
		const struct cmd_case *c = &cmd_cases[i];
		size_t len = c->len ? c->len : strlen(c->input);
		struct smtp_parse_limits l;
		enum smtp_parse_result got;

		limits_for(c->lim, &l);
		got = smtp_parse_command(c->input, len, &l, &cmd);
		cmd_check(c, "no CRLF", got, &cmd);
		/* Same line with its CRLF: same result. */
		assert_true(len + 2 <= sizeof(buf));
		memcpy(buf, c->input, len);
		memcpy(buf + len, "\r\n", 2);
		got = smtp_parse_command(buf, len + 2, &l, &cmd);
		cmd_check(c, "with CRLF", got, &cmd);
	}
}

/* max_line counts the CRLF, whether or not it is passed. */
static void test_command_line_length(void **state)
{
	static struct smtp_parse_command cmd;
	char line[1024];
	struct smtp_parse_limits l;

	(void)state;
	smtp_parse_limits_init(&l);
	memset(line, 'x', sizeof(line));
	memcpy(line, "NOOP ", 5);
	want_result("510+CRLF", "no CRLF", smtp_parse_command(line, 510, &l, &cmd), R(OK));
	want_result("511+CRLF", "no CRLF", smtp_parse_command(line, 511, &l, &cmd), R(LINE_TOO_LONG));
	memcpy(line + 510, "\r\n", 2);
	want_result("510+CRLF", "with CRLF", smtp_parse_command(line, 512, &l, &cmd), R(OK));
	memset(line + 510, 'x', 2);
	memcpy(line + 511, "\r\n", 2);
	want_result("511+CRLF", "with CRLF", smtp_parse_command(line, 513, &l, &cmd), R(LINE_TOO_LONG));
	/* NULL limits means the defaults */
	want_result("null limits", "", smtp_parse_command("QUIT", 4, NULL, &cmd), R(OK));
	/* Views point into the caller's line. */
	want_result("views", "", smtp_parse_command("Noop  a b ", 10, NULL, &cmd), R(OK));
	want_str("views", "verb_text", cmd.verb_text, cmd.verb_len, "Noop");
	want_str("views", "arg", cmd.arg, cmd.arg_len, "a b");
}

static void test_path_api(void **state)
{
	static struct smtp_parse_path p;
	struct smtp_parse_limits l;

	(void)state;
	smtp_parse_limits_init(&l);
	want_result("path", "", smtp_parse_path("<a@b>", 5, false, &l, &p), R(OK));
	want_str("path", "local", p.local, p.local_len, "a");
	want_result("path trailing", "", smtp_parse_path("<a@b> ", 6, false, &l, &p), R(PATH_SYNTAX));
	want_result("path null fwd", "", smtp_parse_path("<>", 2, false, &l, &p), R(PATH_SYNTAX));
	want_result("path null rev", "", smtp_parse_path("<>", 2, true, &l, &p), R(OK));
	want_result("path nul", "", smtp_parse_path("<a\0@b>", 6, false, &l, &p), R(BAD_BYTES));
	want_result("path utf8", "", smtp_parse_path("<\xc3\xa4@b>", 6, false, &l, &p), R(PATH_UTF8));
	assert_true(smtp_parse_domain_valid("example.org", 11, false));
	assert_true(smtp_parse_domain_valid("[1.2.3.4]", 9, false));
	assert_false(smtp_parse_domain_valid("ex\xc3\xa4.org", 8, false));
	assert_true(smtp_parse_domain_valid("ex\xc3\xa4.org", 8, true));
	assert_false(smtp_parse_domain_valid("", 0, true));
	{
		/* a general literal of 256 octets is syntax-valid but too long */
		char lit[300];

		memset(lit, 'x', sizeof(lit));
		memcpy(lit, "[tag:", 5);
		lit[254] = ']';
		assert_true(smtp_parse_domain_valid(lit, 255, false));
		lit[254] = 'x';
		lit[255] = ']';
		assert_false(smtp_parse_domain_valid(lit, 256, false));
	}
	assert_true(smtp_parse_utf8_valid("\xf0\x9f\x98\x80", 4));
	assert_false(smtp_parse_utf8_valid("\xf8\x88\x80\x80\x80", 5));
}

static void test_status(void **state)
{
	struct smtp_parse_status st;

	(void)state;
	for (int r = 0; r < SMTP_PARSE_N_RESULTS; r++) {
		smtp_parse_status((enum smtp_parse_result)r, SMTP_PARSE_RCPT, &st);
		assert_non_null(st.text);
		assert_non_null(st.enhanced);
		assert_string_equal(st.text, smtp_parse_strerror((enum smtp_parse_result)r));
		if (r > SMTP_PARSE_MORE && r < SMTP_PARSE_REPLY_SYNTAX &&
		    (st.code < 500 || st.code > 555 || st.enhanced[0] != '5'))
			fail_msg("%s: code %u %s not a 5xx", rname((enum smtp_parse_result)r),
				 st.code, st.enhanced);
	}
	smtp_parse_status(R(PATH_SYNTAX), SMTP_PARSE_MAIL, &st);
	assert_string_equal(st.enhanced, "5.1.7");
	smtp_parse_status(R(PATH_SYNTAX), SMTP_PARSE_RCPT, &st);
	assert_string_equal(st.enhanced, "5.1.3");
	assert_int_equal(st.code, 501);
	smtp_parse_status(R(PARAM_UNKNOWN), SMTP_PARSE_MAIL, &st);
	assert_int_equal(st.code, 555);
	smtp_parse_status(R(TOO_BIG), SMTP_PARSE_BDAT, &st);
	assert_true(st.close);
	smtp_parse_status(R(LINE_TOO_LONG), SMTP_PARSE_UNKNOWN, &st);
	assert_false(st.close);
	assert_string_equal(smtp_parse_strerror((enum smtp_parse_result)999), "unknown result");
	assert_string_equal(smtp_parse_verb_name(SMTP_PARSE_STARTTLS), "STARTTLS");
}

static void test_xtext(void **state)
{
	char out[64];
	size_t n;
	static const unsigned char all[] = { 0, 1, ' ', '+', '=', '~', '!', 0x7f, 0xff };

	(void)state;
	assert_true(smtp_parse_xtext_decode("a+2Bb+3Dc", 9, out, sizeof(out), &n));
	want_str("xtext decode", "out", out, n, "a+b=c");
	assert_false(smtp_parse_xtext_decode("a+2b", 4, out, sizeof(out), &n));
	assert_false(smtp_parse_xtext_decode("a=b", 3, out, sizeof(out), &n));
	assert_false(smtp_parse_xtext_decode("a b", 3, out, sizeof(out), &n));
	assert_false(smtp_parse_xtext_decode("+4", 2, out, sizeof(out), &n));
	assert_false(smtp_parse_xtext_decode("abcd", 4, out, 4, &n));
	assert_int_equal(n, 0);
	assert_true(smtp_parse_xtext_decode("abc", 3, out, 4, &n));
	assert_true(smtp_parse_xtext_encode(all, sizeof(all), out, sizeof(out), &n));
	want_str("xtext encode", "out", out, n, "+00+01+20+2B+3D~!+7F+FF");
	{
		char back[16];
		size_t m;

		assert_true(smtp_parse_xtext_decode(out, n, back, sizeof(back), &m));
		assert_int_equal(m, sizeof(all));
		assert_memory_equal(back, all, sizeof(all));
	}
	assert_false(smtp_parse_xtext_encode("+", 1, out, 3, &n));
	assert_string_equal(out, "");
	assert_true(smtp_parse_xtext_encode("+", 1, out, 4, &n));
}

/* ---- DATA reader table -------------------------------------------------- */

enum dlim { D_DEF = 0, D_NORM, D_NUL, D_SIZE7, D_SIZE8, D_LINE10, D_NORM_LINE10 };

struct data_case {
	const char *name;
	const char *input;
	size_t len;                       /* 0: strlen(input) */
	enum dlim lim;
	enum smtp_parse_result want;
	const char *out;                  /* expected output */
	size_t out_len;                   /* 0: strlen(out) */
	size_t consumed;                  /* 0: the whole input */
	unsigned received;
};

static const struct data_case data_cases[] = {
	{ "simple", "Subject: x\r\n\r\nbody\r\n.\r\n", 0, D_DEF, R(OK), "Subject: x\r\n\r\nbody\r\n", 0, 0, 0 },
	{ "dot first line", ".\r\n", 0, D_DEF, R(OK), "", 0, 0, 0 },
	{ "dot first pipelined", ".\r\nQUIT\r\n", 0, D_DEF, R(OK), "", 0, 3, 0 },
	{ "empty line message", "\r\n.\r\n", 0, D_DEF, R(OK), "\r\n", 0, 0, 0 },
	{ "unstuff", "..a\r\n.b\r\n.\r\n", 0, D_DEF, R(OK), ".a\r\nb\r\n", 0, 0, 0 },
	{ "double dot line", "..\r\n.\r\n", 0, D_DEF, R(OK), ".\r\n", 0, 0, 0 },
	{ "dot mid line", "a.\r\na..b\r\n.\r\n", 0, D_DEF, R(OK), "a.\r\na..b\r\n", 0, 0, 0 },
	{ "pipelined", "a\r\n.\r\nMAIL FROM:<a@b>\r\n", 0, D_DEF, R(OK), "a\r\n", 0, 6, 0 },
	{ "no end", "a\r\nb\r\n", 0, D_DEF, R(MORE), "a\r\nb\r\n", 0, 0, 0 },
	{ "no end dot held", "a\r\n.", 0, D_DEF, R(MORE), "a\r\n", 0, 0, 0 },
	{ "no end dot cr held", "a\r\n.\r", 0, D_DEF, R(MORE), "a\r\n", 0, 0, 0 },
	/* SMTP smuggling: the four sequences never end DATA */
	{ "smuggle LF.LF reject", "a\n.\nb\r\n.\r\n", 0, D_DEF, R(BARE_LF), "a", 0, 0, 0 },
	{ "smuggle CRLF.LF reject", "a\r\n.\nb\r\n.\r\n", 0, D_DEF, R(BARE_LF), "a\r\n.", 0, 0, 0 },
	{ "smuggle LF.CRLF reject", "a\n.\r\nb\r\n.\r\n", 0, D_DEF, R(BARE_LF), "a", 0, 0, 0 },
	{ "smuggle CR.CRLF reject", "a\r.\r\nb\r\n.\r\n", 0, D_DEF, R(BARE_LF), "a", 0, 0, 0 },
	{ "smuggle LF.LF normalize", "a\n.\nb\r\n.\r\n", 0, D_NORM, R(OK), "a\r\n.\r\nb\r\n", 0, 0, 0 },
	{ "smuggle CRLF.LF normalize", "a\r\n.\nb\r\n.\r\n", 0, D_NORM, R(OK), "a\r\n.\r\nb\r\n", 0, 0, 0 },
	{ "smuggle LF.CRLF normalize", "a\n.\r\nb\r\n.\r\n", 0, D_NORM, R(OK), "a\r\n.\r\nb\r\n", 0, 0, 0 },
	{ "smuggle CR.CRLF normalize", "a\r.\r\nb\r\n.\r\n", 0, D_NORM, R(OK), "a\r\n.\r\nb\r\n", 0, 0, 0 },
	{ "smuggled command stays data", "a\r\n.\nMAIL FROM:<x@y>\r\n", 0, D_DEF, R(MORE), "a\r\n.", 0, 0, 0 },
	{ "smuggled command normalize", "a\n.\r\nMAIL FROM:<x@y>\r\n", 0, D_NORM, R(MORE), "a\r\n.\r\nMAIL FROM:<x@y>\r\n", 0, 0, 0 },
	{ "smuggle at start LF", ".\nx\r\n.\r\n", 0, D_NORM, R(OK), ".\r\nx\r\n", 0, 0, 0 },
	{ "smuggle dot CR x", ".\rX\r\n.\r\n", 0, D_NORM, R(OK), ".\r\nX\r\n", 0, 0, 0 },
	{ "dot cr dot crlf", ".\r.\r\n.\r\n", 0, D_NORM, R(OK), ".\r\n.\r\n", 0, 0, 0 },
	{ "soft bol unstuff", "a\n..b\r\n.\r\n", 0, D_NORM, R(OK), "a\r\n.b\r\n", 0, 0, 0 },
	{ "bare cr before crlf", "a\r\r\n.\r\n", 0, D_NORM, R(OK), "a\r\n\r\n", 0, 0, 0 },
	{ "bare cr before crlf reject", "a\r\r\n.\r\n", 0, D_DEF, R(BARE_LF), "a", 0, 0, 0 },
	{ "bare lf only", "a\nb\n.\n", 0, D_NORM, R(MORE), "a\r\nb\r\n.\r\n", 0, 0, 0 },
	{ "bare lf then end", "a\nb\r\n.\r\nX", 0, D_DEF, R(BARE_LF), "a", 0, 8, 0 },
	/* NUL */
	{ "nul allowed", "a\0b\r\n.\r\n", 8, D_DEF, R(OK), "a\0b\r\n", 5, 0, 0 },
	{ "nul rejected", "a\0b\r\n.\r\n", 8, D_NUL, R(NUL), "a", 0, 0, 0 },
	{ "nul at bol rejected", "\0\r\n.\r\n", 6, D_NUL, R(NUL), "", 0, 0, 0 },
	/* Received: counting, header section only */
	{ "received", "Received: a\r\nreceived: b\r\nX-Received: c\r\nRECEIVED:\r\nReceived d\r\n\r\nReceived: body\r\n.\r\n", 0, D_DEF, R(OK), NULL, 0, 0, 3 },
	{ "received normalize", "Received: a\nReceived: b\n\nReceived: c\r\n.\r\n", 0, D_NORM, R(OK), NULL, 0, 0, 2 },
	/* size and line limits */
	{ "size exact", "12345\r\n.\r\n", 0, D_SIZE7, R(OK), "12345\r\n", 0, 0, 0 },
	{ "size over", "123456\r\n.\r\nNOOP\r\n", 0, D_SIZE7, R(TOO_BIG), "123456", 0, 11, 0 },
	{ "size over normalize", "12345\n.\r\n", 0, D_SIZE8, R(MORE), "12345\r\n.", 0, 0, 0 },
	{ "line 10 ok", "12345678\r\n.\r\n", 0, D_LINE10, R(OK), "12345678\r\n", 0, 0, 0 },
	{ "line 11", "123456789\r\n.\r\n", 0, D_LINE10, R(LINE_TOO_LONG), "12345678", 0, 0, 0 },
	{ "line stuffed 10 ok", "..123456\r\n.\r\n", 0, D_LINE10, R(OK), ".123456\r\n", 0, 0, 0 },
	{ "line stuffed 11", "..1234567\r\n.\r\n", 0, D_LINE10, R(LINE_TOO_LONG), ".123456", 0, 0, 0 },
	{ "line resets at bare lf", "1234567\n1234567\r\n.\r\n", 0, D_NORM_LINE10, R(OK), "1234567\r\n1234567\r\n", 0, 0, 0 },
	{ "too long then end", "123456789012345\r\n.\r\nQUIT\r\n", 0, D_LINE10, R(LINE_TOO_LONG), "12345678", 0, 20, 0 },
};

static void data_limits_for(enum dlim lim, struct smtp_parse_data_limits *l)
{
	smtp_parse_data_limits_init(l);
	switch (lim) {
	case D_NORM:
		l->bare = SMTP_PARSE_BARE_NORMALIZE;
		break;
	case D_NUL:
		l->reject_nul = true;
		break;
	case D_SIZE7:
		l->max_size = 7;
		break;
	case D_SIZE8:
		l->max_size = 8;
		l->bare = SMTP_PARSE_BARE_NORMALIZE;
		break;
	case D_LINE10:
		l->max_line = 10;
		break;
	case D_NORM_LINE10:
		l->max_line = 10;
		l->bare = SMTP_PARSE_BARE_NORMALIZE;
		break;
	default:
		break;
	}
}

struct data_got {
	enum smtp_parse_result res;
	unsigned char *out;
	size_t out_len;
	size_t consumed;
	unsigned received;
	uint64_t size;
};

/* Feeds `in` in pieces of `step` bytes with an output buffer of out_size
 * bytes, as a server loop would. */
static void data_drive(const unsigned char *in, size_t len,
		       const struct smtp_parse_data_limits *l, size_t step,
		       size_t out_size, struct data_got *g)
{
	struct smtp_parse_data d;
	unsigned char *tmp = malloc(out_size);
	size_t pos = 0;

	assert_non_null(tmp);
	g->out = malloc(len * 2 + 8);
	assert_non_null(g->out);
	g->out_len = 0;
	g->res = SMTP_PARSE_MORE;
	smtp_parse_data_init(&d, l);
	while (pos < len) {
		size_t n = len - pos < step ? len - pos : step, used, olen;

		g->res = smtp_parse_data_feed(&d, in + pos, n, &used, tmp,
					      out_size, &olen);
		assert_true(used <= n);
		assert_true(olen <= out_size);
		memcpy(g->out + g->out_len, tmp, olen);
		g->out_len += olen;
		pos += used;
		if (g->res != SMTP_PARSE_MORE)
			break;
		assert_true(used > 0 || olen > 0);
	}
	g->consumed = pos;
	g->received = smtp_parse_data_received(&d);
	g->size = smtp_parse_data_size(&d);
	assert_int_equal(g->size, g->out_len);
	free(tmp);
}

static void data_check(const struct data_case *c, const char *how,
		       const struct data_got *g, size_t len)
{
	size_t want_consumed = c->consumed ? c->consumed : len;

	want_result(c->name, how, g->res, c->want);
	if (g->consumed != want_consumed)
		fail_msg("%s (%s): consumed got %zu, want %zu", c->name, how,
			 g->consumed, want_consumed);
	if (c->out != NULL) {
		size_t wl = c->out_len ? c->out_len : strlen(c->out);

		if (g->out_len != wl || memcmp(g->out, c->out, wl) != 0)
			fail_msg("%s (%s): output got \"%.*s\" (%zu), want "
				 "\"%.*s\" (%zu)", c->name, how,
				 (int)g->out_len, g->out, g->out_len, (int)wl,
				 c->out, wl);
	}
	if (g->received != c->received)
		fail_msg("%s (%s): received got %u, want %u", c->name, how,
			 g->received, c->received);
}

static void test_data_reader(void **state)
{
	static const size_t steps[] = { SIZE_MAX, 1, 2, 3, 7 };

	(void)state;
	for (size_t i = 0; i < sizeof(data_cases) / sizeof(data_cases[0]); i++) {
		const struct data_case *c = &data_cases[i];
		size_t len = c->len ? c->len : strlen(c->input);
		struct smtp_parse_data_limits l;

		data_limits_for(c->lim, &l);
		for (size_t s = 0; s < sizeof(steps) / sizeof(steps[0]); s++) {
			struct data_got g;
			char how[48];

			snprintf(how, sizeof(how), "step %zu", steps[s]);
			data_drive((const unsigned char *)c->input, len, &l,
				   steps[s], 4096, &g);
			data_check(c, how, &g, len);
			free(g.out);
		}
		{
			struct data_got g;

			data_drive((const unsigned char *)c->input, len, &l,
				   SIZE_MAX, SMTP_PARSE_DATA_OUT_MIN, &g);
			data_check(c, "tiny out", &g, len);
			free(g.out);
		}
	}
}

/* Runs generated input whole and byte by byte; checks both agree and
 * returns the whole-run result. */
static void data_both(const char *name, const unsigned char *in, size_t len,
		      const struct smtp_parse_data_limits *l,
		      enum smtp_parse_result want, size_t want_out)
{
	struct data_got a, b;

	data_drive(in, len, l, SIZE_MAX, 65536, &a);
	data_drive(in, len, l, 1, SMTP_PARSE_DATA_OUT_MIN, &b);
	want_result(name, "whole", a.res, want);
	want_result(name, "bytewise", b.res, want);
	want_u64(name, "consumed whole", a.consumed, len);
	want_u64(name, "consumed bytewise", b.consumed, len);
	want_u64(name, "out whole", a.out_len, want_out);
	want_u64(name, "out bytewise", b.out_len, want_out);
	assert_memory_equal(a.out, b.out, a.out_len);
	free(a.out);
	free(b.out);
}

static unsigned char *line_input(size_t text, bool stuffed, size_t *len_r)
{
	unsigned char *in = malloc(text + 16);

	assert_non_null(in);
	memset(in, 'x', text);
	if (stuffed)
		in[0] = '.';
	memcpy(in + text, "\r\n.\r\n", 5);
	*len_r = text + 5;
	return in;
}

static void test_data_lines(void **state)
{
	struct smtp_parse_data_limits l;
	unsigned char *in;
	size_t len;

	(void)state;
	smtp_parse_data_limits_init(&l);
	in = line_input(998, false, &len);          /* 1000 with CRLF */
	data_both("line 1000", in, len, &l, R(OK), 1000);
	free(in);
	in = line_input(999, false, &len);          /* 1001 */
	data_both("line 1001", in, len, &l, R(LINE_TOO_LONG), 998);
	free(in);
	in = line_input(998, true, &len);           /* ".xxx" 1000 wire */
	data_both("stuffed 1000", in, len, &l, R(OK), 999);
	free(in);
	in = line_input(999, true, &len);
	data_both("stuffed 1001", in, len, &l, R(LINE_TOO_LONG), 997);
	free(in);
	in = line_input(1024 * 1024, false, &len);  /* 1 MB line */
	data_both("1MB line", in, len, &l, R(LINE_TOO_LONG), 998);
	free(in);
	l.max_size = 100000;                        /* many short lines */
	in = malloc(300000);
	assert_non_null(in);
	for (size_t i = 0; i < 299995; i += 10)
		memcpy(in + i, "123456789\n", 10);
	memcpy(in + 299990, "xx\r\n.\r\n", 7);
	l.bare = SMTP_PARSE_BARE_NORMALIZE;
	data_both("size limit", in, 299997, &l, R(TOO_BIG), 99999);
	free(in);
}

/* Every split of "\r\n.\r\n" into two chunks ends the data at the same
 * place; the bytes after it are left for the command parser. */
static void test_data_boundaries(void **state)
{
	static const char in[] = "hello\r\n.\r\nQUIT\r\n";
	size_t len = sizeof(in) - 1;

	(void)state;
	for (size_t cut = 0; cut <= len; cut++) {
		struct smtp_parse_data d;
		unsigned char out[64];
		size_t used1, used2 = 0, o1, o2 = 0;
		enum smtp_parse_result r;

		smtp_parse_data_init(&d, NULL);
		r = smtp_parse_data_feed(&d, in, cut, &used1, out, sizeof(out), &o1);
		if (r == SMTP_PARSE_MORE) {
			assert_int_equal(used1, cut);
			r = smtp_parse_data_feed(&d, in + cut, len - cut, &used2,
						 out + o1, sizeof(out) - o1, &o2);
		}
		if (r != SMTP_PARSE_OK || used1 + used2 != 10 || o1 + o2 != 7 ||
		    memcmp(out, "hello\r\n", 7) != 0)
			fail_msg("cut %zu: got %s consumed %zu out %zu, want OK 10 7",
				 cut, rname(r), used1 + used2, o1 + o2);
		/* after the end: same result, nothing consumed */
		r = smtp_parse_data_feed(&d, "x", 1, &used1, out, sizeof(out), &o1);
		want_result("after end", "", r, R(OK));
		assert_int_equal(used1, 0);
		assert_int_equal(o1, 0);
	}
}

static void test_data_misc(void **state)
{
	struct smtp_parse_data d;
	unsigned char out[8];
	size_t used, olen;

	(void)state;
	smtp_parse_data_init(&d, NULL);
	/* Too small an output buffer makes no progress rather than overrun. */
	want_result("tiny", "", smtp_parse_data_feed(&d, "abc", 3, &used, out, 3, &olen), R(MORE));
	assert_int_equal(used, 0);
	want_result("bare", "", smtp_parse_data_feed(&d, "a\nb", 3, &used, out, 8, &olen), R(MORE));
	assert_true(smtp_parse_data_bare_seen(&d));
	want_result("early error", "", smtp_parse_data_error(&d), R(BARE_LF));
}

/* ---- reply parser table ------------------------------------------------- */

struct reply_case {
	const char *name;
	const char *input;
	size_t len;
	unsigned max_lines;               /* 0: default */
	enum smtp_parse_result want;
	unsigned code;
	const char *enhanced;
	const char *text;
	unsigned lines;
	size_t consumed;                  /* 0: whole input */
};

static const struct reply_case reply_cases[] = {
	{ "simple", "250 OK\r\n", 0, 0, R(OK), 250, "", "OK", 1, 0 },
	{ "ehlo", "250-mx.example.org\r\n250-SIZE 1000\r\n250 PIPELINING\r\n", 0, 0, R(OK), 250, "", "mx.example.org\nSIZE 1000\nPIPELINING", 3, 0 },
	{ "enhanced", "550 5.1.1 No such user\r\n", 0, 0, R(OK), 550, "5.1.1", "No such user", 1, 0 },
	{ "enhanced multi", "550-5.1.1 a\r\n550 5.1.1 b\r\n", 0, 0, R(OK), 550, "5.1.1", "a\nb", 2, 0 },
	{ "enhanced only", "250 2.0.0\r\n", 0, 0, R(OK), 250, "2.0.0", "", 1, 0 },
	{ "enhanced class mismatch", "450 2.0.0 odd\r\n", 0, 0, R(OK), 450, "", "2.0.0 odd", 1, 0 },
	{ "not enhanced", "250 2.0.0x\r\n", 0, 0, R(OK), 250, "", "2.0.0x", 1, 0 },
	{ "code mismatch", "250-a\r\n251 b\r\n", 0, 0, R(REPLY_SYNTAX), 250, NULL, NULL, 1, 11 },
	{ "code only", "250\r\n", 0, 0, R(OK), 250, "", "", 1, 0 },
	{ "code only multi", "250-a\r\n250\r\n", 0, 0, R(OK), 250, "", "a\n", 2, 0 },
	{ "short code", "25\r\n", 0, 0, R(REPLY_SYNTAX), 0, NULL, NULL, 0, 0 },
	{ "long code", "2500 x\r\n", 0, 0, R(REPLY_SYNTAX), 0, NULL, NULL, 0, 4 },
	{ "bad first digit", "600 x\r\n", 0, 0, R(REPLY_SYNTAX), 0, NULL, NULL, 0, 1 },
	{ "bad second digit", "260 x\r\n", 0, 0, R(REPLY_SYNTAX), 0, NULL, NULL, 0, 2 },
	{ "letters", "abc\r\n", 0, 0, R(REPLY_SYNTAX), 0, NULL, NULL, 0, 1 },
	{ "bare lf", "250 ok\n", 0, 0, R(OK), 250, "", "ok", 1, 0 },
	{ "pipelined", "250 ok\r\n220 next\r\n", 0, 0, R(OK), 250, "", "ok", 1, 8 },
	{ "inner cr", "250 a\rb\r\n", 0, 0, R(OK), 250, "", "a\rb", 1, 0 },
	{ "incomplete", "250-a\r\n250 b", 0, 0, R(MORE), 250, NULL, NULL, 1, 0 },
	{ "nul", "250 a\0b\r\n", 9, 0, R(REPLY_SYNTAX), 250, NULL, NULL, 0, 6 },
	{ "too many lines", "250-a\r\n250-b\r\n250 c\r\n", 0, 2, R(REPLY_TOO_LONG), 250, NULL, NULL, 2, 18 },
	{ "max lines ok", "250-a\r\n250 b\r\n", 0, 2, R(OK), 250, "", "a\nb", 2, 0 },
};

struct reply_got {
	enum smtp_parse_result res;
	struct smtp_parse_reply r;
	size_t consumed;
};

static void reply_drive(const struct reply_case *c, size_t step,
			struct reply_got *g)
{
	struct smtp_parse_reply_parser p;
	struct smtp_parse_reply_limits l;
	size_t len = c->len ? c->len : strlen(c->input), pos = 0;

	smtp_parse_reply_limits_init(&l);
	if (c->max_lines)
		l.max_lines = c->max_lines;
	smtp_parse_reply_init(&p, &l, &g->r);
	g->res = SMTP_PARSE_MORE;
	while (pos < len && g->res == SMTP_PARSE_MORE) {
		size_t n = len - pos < step ? len - pos : step, used;

		g->res = smtp_parse_reply_feed(&p, c->input + pos, n, &used, &g->r);
		assert_true(used <= n);
		pos += used;
	}
	g->consumed = pos;
}

static void test_replies(void **state)
{
	static const size_t steps[] = { SIZE_MAX, 1, 2, 5 };

	(void)state;
	for (size_t i = 0; i < sizeof(reply_cases) / sizeof(reply_cases[0]); i++) {
		const struct reply_case *c = &reply_cases[i];
		size_t len = c->len ? c->len : strlen(c->input);

		for (size_t s = 0; s < sizeof(steps) / sizeof(steps[0]); s++) {
			static struct reply_got g;
			char how[32];

			snprintf(how, sizeof(how), "step %zu", steps[s]);
			reply_drive(c, steps[s], &g);
			want_result(c->name, how, g.res, c->want);
			want_u64(c->name, "consumed", g.consumed,
				 c->consumed ? c->consumed : len);
			want_u64(c->name, "code", g.r.code, c->code);
			want_u64(c->name, "lines", g.r.lines, c->lines);
			if (c->enhanced != NULL)
				want_str(c->name, "enhanced", g.r.enhanced,
					 strlen(g.r.enhanced), c->enhanced);
			want_str(c->name, "text", g.r.text, g.r.text_len, c->text);
		}
	}
}

static void test_reply_limits(void **state)
{
	static char in[8192];
	static struct smtp_parse_reply r;
	struct smtp_parse_reply_parser p;
	size_t used;

	(void)state;
	/* a line of exactly max_line (2048 incl. CRLF) passes, one more fails */
	memset(in, 'x', sizeof(in));
	memcpy(in, "250 ", 4);
	memcpy(in + 2046, "\r\n", 2);
	smtp_parse_reply_init(&p, NULL, &r);
	want_result("line 2048", "", smtp_parse_reply_feed(&p, in, 2048, &used, &r), R(OK));
	assert_int_equal(r.text_len, 2042);
	memset(in + 2046, 'x', 2);
	memcpy(in + 2047, "\r\n", 2);
	smtp_parse_reply_init(&p, NULL, &r);
	want_result("line 2049", "", smtp_parse_reply_feed(&p, in, 2049, &used, &r), R(LINE_TOO_LONG));
	/* text is truncated, not overrun, when many lines fill it */
	{
		size_t pos = 0;

		for (int i = 0; i < 99; i++) {
			memcpy(in + pos, "250-", 4);
			memset(in + pos + 4, 'y', 60);
			memcpy(in + pos + 64, "\r\n", 2);
			pos += 66;
		}
		memcpy(in + pos, "250 end\r\n", 9);
		pos += 9;
		smtp_parse_reply_init(&p, NULL, &r);
		want_result("truncated", "", smtp_parse_reply_feed(&p, in, pos, &used, &r), R(OK));
		assert_true(r.truncated);
		assert_int_equal(r.text_len, SMTP_PARSE_REPLY_TEXT_MAX);
		assert_int_equal(r.lines, 100);
		assert_int_equal(used, pos);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_commands),
		cmocka_unit_test(test_command_line_length),
		cmocka_unit_test(test_path_api),
		cmocka_unit_test(test_status),
		cmocka_unit_test(test_xtext),
		cmocka_unit_test(test_data_reader),
		cmocka_unit_test(test_data_lines),
		cmocka_unit_test(test_data_boundaries),
		cmocka_unit_test(test_data_misc),
		cmocka_unit_test(test_replies),
		cmocka_unit_test(test_reply_limits),
	};

	return cmocka_run_group_tests_name("smtp_parse", tests, NULL, NULL);
}
