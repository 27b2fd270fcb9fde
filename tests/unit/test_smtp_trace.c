/*
 * test_smtp_trace: unit tests for the protocol trace's pure helpers: the
 * line formatting (line ends, escaping, the bound, AUTH redaction) and
 * the address filter's parser.  The trace against a real server is
 * tests/e2e/test_trace.py.
 *
 * Owns nothing outside this process.  Threads: single.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "smtp_trace.h"

struct fcase {
	const char *name;
	const char *in;
	bool command;
	const char *want;
};

static const struct fcase fcases[] = {
	{ "CRLF removed", "EHLO a.example\r\n", true, "EHLO a.example" },
	{ "LF removed", "NOOP\n", true, "NOOP" },
	{ "no line end", "250 Ok", false, "250 Ok" },
	{ "controls escaped", "NOOP \x1b[31m\x7f\r\n", true, "NOOP \\x1b[31m\\x7f" },
	{ "backslash escaped", "NOOP a\\b\r\n", true, "NOOP a\\\\b" },
	{ "bare CR inside", "NOOP a\rb\r\n", true, "NOOP a\\x0db" },
	{ "AUTH initial response", "AUTH PLAIN AGJvYgBzZWNyZXQ=\r\n", true, "AUTH PLAIN <redacted>" },
	{ "AUTH lower case", "auth login Ym9i\r\n", true, "auth login <redacted>" },
	{ "AUTH mechanism only", "AUTH LOGIN\r\n", true, "AUTH LOGIN" },
	{ "AUTH alone", "AUTH\r\n", true, "AUTH" },
	{ "AUTH with a tab", "AUTH\tPLAIN secret\r\n", true, "AUTH <redacted>" },
	{ "AUTH with odd mechanism", "AUTH PL=AIN secret\r\n", true, "AUTH <redacted>" },
	{ "AUTH after blanks", "  AUTH PLAIN secret\r\n", true, "AUTH PLAIN <redacted>" },
	{ "AUTHX is no AUTH", "AUTHX secret\r\n", true, "AUTHX secret" },
	{ "replies are not redacted", "AUTH PLAIN x\r\n", false, "AUTH PLAIN x" },
};

static void test_format_table(void **state)
{
	char buf[SMTP_TRACE_LINE_MAX + 1];

	(void)state;
	for (size_t i = 0; i < sizeof fcases / sizeof fcases[0]; i++) {
		const struct fcase *c = &fcases[i];
		const char *got = smtp_trace_format(buf, sizeof buf, c->in, strlen(c->in), c->command);

		if (strcmp(got, c->want) != 0)
			fail_msg("%s: got \"%s\", want \"%s\"", c->name, got, c->want);
	}
}

/* A NUL inside the line is escaped, not an end. */
static void test_format_nul(void **state)
{
	char buf[SMTP_TRACE_LINE_MAX + 1];
	const char in[] = "NOOP a\0b\r\n";

	(void)state;
	assert_string_equal(smtp_trace_format(buf, sizeof buf, in, sizeof in - 1, true),
			    "NOOP a\\x00b");
}

/* Long lines are cut within the bound and say how much was left out. */
static void test_format_bound(void **state)
{
	char buf[SMTP_TRACE_LINE_MAX + 1], in[2000];

	(void)state;
	memset(in, 'x', sizeof in);
	smtp_trace_format(buf, sizeof buf, in, sizeof in, true);
	assert_true(strlen(buf) <= SMTP_TRACE_LINE_MAX);
	assert_non_null(strstr(buf, " ...(+"));
	assert_non_null(strstr(buf, " bytes)"));

	memset(in, '\x01', sizeof in);
	smtp_trace_format(buf, sizeof buf, in, sizeof in, true);
	assert_true(strlen(buf) <= SMTP_TRACE_LINE_MAX);
	assert_non_null(strstr(buf, " ...(+"));
	/* never half an escape */
	assert_int_equal((strstr(buf, " ...(+") - buf) % 4, 0);

	/* a long AUTH line keeps nothing of its payload */
	memcpy(in, "AUTH PLAIN ", 11);
	memset(in + 11, 'A', sizeof in - 11);
	assert_string_equal(smtp_trace_format(buf, sizeof buf, in, sizeof in, true),
			    "AUTH PLAIN <redacted>");
}

static void test_parse_address(void **state)
{
	uint8_t a[16], want[16];
	int family;

	(void)state;
	assert_int_equal(smtp_trace_parse_address("192.0.2.7", &family, a), 0);
	assert_int_equal(family, AF_INET);
	inet_pton(AF_INET, "192.0.2.7", want);
	assert_memory_equal(a, want, 4);

	assert_int_equal(smtp_trace_parse_address("2001:db8::1", &family, a), 0);
	assert_int_equal(family, AF_INET6);
	inet_pton(AF_INET6, "2001:db8::1", want);
	assert_memory_equal(a, want, 16);

	assert_int_equal(smtp_trace_parse_address("[2001:db8::1]", &family, a), 0);
	assert_int_equal(family, AF_INET6);

	/* IPv4-mapped IPv6 is the IPv4 client, as sessions see it */
	assert_int_equal(smtp_trace_parse_address("::ffff:192.0.2.7", &family, a), 0);
	assert_int_equal(family, AF_INET);
	inet_pton(AF_INET, "192.0.2.7", want);
	assert_memory_equal(a, want, 4);

	assert_int_equal(smtp_trace_parse_address("mx.example", &family, a), -1);
	assert_int_equal(smtp_trace_parse_address("192.0.2.0/24", &family, a), -1);
	assert_int_equal(smtp_trace_parse_address("", &family, a), -1);
	assert_int_equal(smtp_trace_parse_address("[192.0.2.7", &family, a), -1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_format_table),
		cmocka_unit_test(test_format_nul),
		cmocka_unit_test(test_format_bound),
		cmocka_unit_test(test_parse_address),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
