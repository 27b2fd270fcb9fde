/*
 * test_hdrscan: unit tests for the message header scanner.
 *
 * A table of {name, input, want}; each case runs whole, one byte at a
 * time, and split in two at every point, and all runs must agree with
 * the table.  Long values are built at run time.
 *
 * Owns nothing outside this process.  Threads: single.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hdrscan.h"

struct hcase {
	const char *name;
	const char *in;
	unsigned received;
	const char *msgid;
	enum hdrscan_result res;
};

static const struct hcase cases[] = {
	{ "empty input", "", 0, "", HDRSCAN_MORE },
	{ "empty header section", "\r\nbody\r\n", 0, "", HDRSCAN_DONE },
	{ "bare LF empty line", "\nReceived: x\n", 0, "", HDRSCAN_DONE },
	{ "simple", "Received: a\r\nMessage-ID: <1@x>\r\n\r\nbody\r\n", 1, "<1@x>", HDRSCAN_DONE },
	{ "case-insensitive names", "RECEIVED: a\r\nreceived: b\r\nmessage-id:<a@b>\r\n\r\n",
	  2, "<a@b>", HDRSCAN_DONE },
	{ "Received needs ':' at once", "Received : a\r\nReceivedX: b\r\nReceive: c\r\n\r\n",
	  0, "", HDRSCAN_DONE },
	{ "Received not at line start", "X-Received: a\r\nX: Received: b\r\n\r\n", 0, "", HDRSCAN_DONE },
	{ "Received in the body", "Subject: s\r\n\r\nReceived: x\r\n", 0, "", HDRSCAN_DONE },
	{ "Message-ID blank before ':'", "Message-ID \t: <s@x>\r\n\r\n", 0, "<s@x>", HDRSCAN_DONE },
	{ "Message-ID trimmed", "Message-ID:   <t@x>  \t \r\n\r\n", 0, "<t@x>", HDRSCAN_DONE },
	{ "Message-ID folded", "Message-ID:\r\n <f@x>\r\nSubject: s\r\n\r\n", 0, "<f@x>", HDRSCAN_DONE },
	{ "Message-ID folded twice, inner blanks kept",
	  "Message-Id: <a\r\n\t@b> (c\r\n  d)\r\n\r\n", 0, "<a @b> (c  d)", HDRSCAN_DONE },
	{ "first Message-ID wins", "Message-ID: <1@x>\r\nMessage-ID: <2@x>\r\n\r\n", 0, "<1@x>",
	  HDRSCAN_DONE },
	{ "empty first Message-ID still wins", "Message-ID:\r\nMessage-ID: <2@x>\r\n\r\n", 0, "",
	  HDRSCAN_DONE },
	{ "Message-IDs prefix is not it", "Message-IDs: <1@x>\r\nMessage-ID: <2@x>\r\n\r\n", 0,
	  "<2@x>", HDRSCAN_DONE },
	{ "Message-ID in the body", "Subject: s\r\n\r\nMessage-ID: <b@x>\r\n", 0, "", HDRSCAN_DONE },
	{ "control characters dropped", "Message-ID: <c\x01\x7f@\x1bx>\r\n\r\n", 0, "<c@x>",
	  HDRSCAN_DONE },
	{ "bare CR inside the value dropped", "Message-ID: <c\r@x>\r\n\r\n", 0, "<c@x>", HDRSCAN_DONE },
	{ "UTF-8 kept", "Message-ID: <\xc3\xa9@x>\r\n\r\n", 0, "<\xc3\xa9@x>", HDRSCAN_DONE },
	{ "no empty line: still in headers", "Received: a\r\nMessage-ID: <n@x>", 1, "<n@x>",
	  HDRSCAN_MORE },
	{ "bare LF line ends", "Received: a\nMessage-ID: <l@x>\n\nReceived: b\n", 1, "<l@x>",
	  HDRSCAN_DONE },
	{ "CR at line start is not an empty line",
	  "Message-ID: <a@x>\r\n\rX\r\nReceived: r\r\n\r\n", 1, "<a@x>", HDRSCAN_DONE },
	{ "malformed line ends the folded field",
	  "Message-ID: <a@x>\r\nno colon here\r\n more\r\n\r\n", 0, "<a@x>", HDRSCAN_DONE },
	{ "continuation of another field ignored",
	  "Subject: s\r\n Message-ID: <no@x>\r\n\r\n", 0, "", HDRSCAN_DONE },
	{ "NUL in a name", "Rece\0ived: a\r\n\r\n", 0, "", HDRSCAN_DONE },
	{ "only blanks after the name", "Message-ID: \t \r\n\r\n", 0, "", HDRSCAN_DONE },
};

/* Inputs with NULs: the table's length comes from sizeof, not strlen. */
static size_t case_len(const struct hcase *c)
{
	if (strcmp(c->name, "NUL in a name") == 0)
		return sizeof "Rece\0ived: a\r\n\r\n" - 1;
	return strlen(c->in);
}

static void check_run(const char *name, const char *how, const struct hdrscan *h,
		      enum hdrscan_result res, unsigned received, const char *msgid,
		      enum hdrscan_result want_res)
{
	if (res != want_res)
		fail_msg("%s (%s): result got %d, want %d", name, how, (int)res, (int)want_res);
	if (hdrscan_received(h) != received)
		fail_msg("%s (%s): received got %u, want %u", name, how, hdrscan_received(h),
			 received);
	if (strcmp(hdrscan_msgid(h), msgid) != 0)
		fail_msg("%s (%s): msgid got \"%s\", want \"%s\"", name, how, hdrscan_msgid(h),
			 msgid);
}

/* Feeds `len` bytes: the first `split`, then the rest `step` at a time. */
static enum hdrscan_result feed(struct hdrscan *h, const char *in, size_t len, size_t split,
				size_t step)
{
	enum hdrscan_result res = hdrscan_feed(h, NULL, 0);
	size_t off = split < len ? split : len;

	res = hdrscan_feed(h, in, off);
	while (off < len) {
		size_t n = len - off < step ? len - off : step;

		res = hdrscan_feed(h, in + off, n);
		off += n;
	}
	return res;
}

static void run_case(const char *name, const char *in, size_t len, unsigned received,
		     const char *msgid, enum hdrscan_result want_res)
{
	struct hdrscan *h = malloc(sizeof *h);
	enum hdrscan_result res;
	char how[64];

	assert_non_null(h);
	hdrscan_init(h);
	res = feed(h, in, len, len, 1);
	check_run(name, "whole", h, res, received, msgid, want_res);
	hdrscan_init(h);
	res = feed(h, in, len, 0, 1);
	check_run(name, "byte by byte", h, res, received, msgid, want_res);
	for (size_t split = 1; split < len && len < 4096; split++) {
		hdrscan_init(h);
		res = feed(h, in, len, split, len);
		snprintf(how, sizeof how, "split at %zu", split);
		check_run(name, how, h, res, received, msgid, want_res);
	}
	free(h);
}

static void test_table(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
		run_case(cases[i].name, cases[i].in, case_len(&cases[i]), cases[i].received,
			 cases[i].msgid, cases[i].res);
}

/* A zeroed struct is a fresh scanner (the session's calloc'd transaction). */
static void test_zero_is_fresh(void **state)
{
	struct hdrscan *h = calloc(1, sizeof *h);
	const char in[] = "Received: a\r\nMessage-ID: <z@x>\r\n\r\n";

	(void)state;
	assert_non_null(h);
	assert_int_equal(hdrscan_feed(h, in, sizeof in - 1), HDRSCAN_DONE);
	assert_string_equal(hdrscan_msgid(h), "<z@x>");
	assert_int_equal(hdrscan_received(h), 1);
	free(h);
}

/* Values longer than the bound are cut at it, not at a UTF-8 middle. */
static void test_long_values(void **state)
{
	size_t cap = 64 + 2 * HDRSCAN_MSGID_MAX;
	char *in = malloc(cap), *want = malloc(HDRSCAN_MSGID_MAX + 1);
	size_t n;

	(void)state;
	assert_non_null(in);
	assert_non_null(want);

	/* exactly the bound: kept whole */
	memset(want, 'a', HDRSCAN_MSGID_MAX);
	want[HDRSCAN_MSGID_MAX] = '\0';
	n = (size_t)snprintf(in, cap, "Message-ID: %s\r\n\r\n", want);
	run_case("value of exactly 998 octets", in, n, 0, want, HDRSCAN_DONE);

	/* one more: cut */
	n = (size_t)snprintf(in, cap, "Message-ID: %sb\r\nReceived: x\r\n\r\n", want);
	run_case("value of 999 octets", in, n, 1, want, HDRSCAN_DONE);

	/* a 2-octet character straddling the bound is dropped whole */
	memset(want, 'a', HDRSCAN_MSGID_MAX - 1);
	want[HDRSCAN_MSGID_MAX - 1] = '\0';
	n = (size_t)snprintf(in, cap, "Message-ID: %s\xc3\xa9tail\r\n\r\n", want);
	run_case("UTF-8 character at the bound", in, n, 0, want, HDRSCAN_DONE);

	/* a blank before the cut point does not end the value */
	memset(want, 'a', HDRSCAN_MSGID_MAX - 2);
	want[HDRSCAN_MSGID_MAX - 2] = '\0';
	n = (size_t)snprintf(in, cap, "Message-ID: %s  bbbb\r\n\r\n", want);
	run_case("blanks at the bound", in, n, 0, want, HDRSCAN_DONE);

	/* a long folded value: unfolded before it is bounded */
	n = (size_t)snprintf(in, cap, "Message-ID: <%.*s\r\n %.*s>\r\n\r\n", 600,
			     want, 600, want);
	{
		struct hdrscan *h = calloc(1, sizeof *h);

		assert_non_null(h);
		hdrscan_feed(h, in, n);
		assert_int_equal(strlen(hdrscan_msgid(h)), HDRSCAN_MSGID_MAX);
		assert_true(hdrscan_msgid_cut(h));
		assert_int_equal(hdrscan_msgid(h)[601], ' ');
		free(h);
	}
	free(in);
	free(want);
}

/* Bytes after the header section change nothing. */
static void test_done_ignores_rest(void **state)
{
	struct hdrscan h;
	const char a[] = "Message-ID: <d@x>\r\n\r\n", b[] = "Message-ID: <e@x>\r\nReceived: r\r\n";

	(void)state;
	hdrscan_init(&h);
	assert_int_equal(hdrscan_feed(&h, a, sizeof a - 1), HDRSCAN_DONE);
	assert_int_equal(hdrscan_feed(&h, b, sizeof b - 1), HDRSCAN_DONE);
	assert_string_equal(hdrscan_msgid(&h), "<d@x>");
	assert_int_equal(hdrscan_received(&h), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_table),
		cmocka_unit_test(test_zero_is_fresh),
		cmocka_unit_test(test_long_values),
		cmocka_unit_test(test_done_ignores_rest),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
