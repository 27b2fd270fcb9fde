/* Unit tests for dsn: the report parses as MIME multipart/report with the
 * RFC 3464 fields; RET=HDRS vs FULL; NOTIFY; the double-bounce rule. */
#include "test_util.h"

#include "dsn.h"

#define ORIG "From: a@example.org\r\nTo: b@example.net\r\nSubject: hi\r\n\r\nbody line\r\n"

struct part {
	char hdr[4096];
	char body[1 << 16];
};

struct mime {
	char hdr[8192];
	size_t n;
	struct part parts[8];
};

/* Unfolded value of header `name` in a header block ("" when absent). */
static void header_value(const char *hdr, const char *name, char *out, size_t outlen)
{
	size_t nl = strlen(name), o = 0;
	const char *p = hdr;

	out[0] = '\0';
	while (*p) {
		if (strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
			p += nl + 1;
			while (*p == ' ')
				p++;
			for (; *p && o + 1 < outlen; p++) {
				if (p[0] == '\r' && p[1] == '\n' && (p[2] == ' ' || p[2] == '\t')) {
					p += 2;
					continue;
				}
				if (*p == '\r' || *p == '\n')
					break;
				out[o++] = *p;
			}
			out[o] = '\0';
			return;
		}
		p = strchr(p, '\n');
		if (p == NULL)
			return;
		p++;
	}
}

static void split_hdr(const char *s, size_t len, char *hdr, size_t hl, char *body, size_t bl)
{
	const char *e = memmem(s, len, "\r\n\r\n", 4);
	size_t h = e ? (size_t)(e - s) + 2 : len, b = e ? len - h - 2 : 0;

	assert_true(h < hl);
	memcpy(hdr, s, h);
	hdr[h] = '\0';
	if (b >= bl)
		b = bl - 1;
	if (e)
		memcpy(body, e + 4, b);
	body[b] = '\0';
}

/* Parses a multipart message: headers, boundary, parts. */
static void mime_parse(const char *text, size_t len, struct mime *m)
{
	static char body[1 << 18];
	char ct[1024], delim[300], *bp, *p;
	const char *b;

	memset(m, 0, sizeof *m);
	split_hdr(text, len, m->hdr, sizeof m->hdr, body, sizeof body);
	header_value(m->hdr, "Content-Type", ct, sizeof ct);
	assert_contains(ct, "multipart/report");
	assert_contains(ct, "report-type=delivery-status");
	b = strstr(ct, "boundary=\"");
	assert_non_null(b);
	b += 10;
	snprintf(delim, sizeof delim, "\r\n--%.*s", (int)(strchr(b, '"') - b), b);
	/* Every part starts after a delimiter line; the last one ends with "--". */
	p = strstr(body, delim);
	assert_non_null(p);
	while (p != NULL) {
		char *next;

		p += strlen(delim);
		if (p[0] == '-' && p[1] == '-')
			break;
		assert_true(p[0] == '\r' && p[1] == '\n');
		p += 2;
		next = strstr(p, delim);
		assert_non_null(next);   /* the closing delimiter must exist */
		bp = p;
		assert_true(m->n < 8);
		split_hdr(bp, (size_t)(next - bp), m->parts[m->n].hdr, sizeof m->parts[m->n].hdr,
			  m->parts[m->n].body, sizeof m->parts[m->n].body);
		m->n++;
		p = next;
	}
	assert_non_null(p);
}

/* The n-th blank-line separated block of a delivery-status body. */
static void ds_block(const char *body, size_t n, char *out, size_t outlen)
{
	const char *p = body;

	for (size_t k = 0; k < n && p; k++) {
		p = strstr(p, "\r\n\r\n");
		if (p)
			p += 4;
	}
	assert_non_null(p);
	{
		const char *e = strstr(p, "\r\n\r\n");
		size_t l = e ? (size_t)(e - p) + 2 : strlen(p);

		assert_true(l < outlen);
		memcpy(out, p, l);
		out[l] = '\0';
	}
}

static struct dsn_msg base_msg(void)
{
	struct dsn_msg m = {
		.kind = DSN_FAILURE, .reporting_mta = "mx.test.example",
		.qid = "0123456789ABCDEF", .message_id = "X.bounce@mx.test.example",
		.to = "a@example.org", .envid = "env+2Bid", .ret = SPOOL_RET_UNSPEC,
		.arrival = 1700000000, .now = 1700000100,
		.original = ORIG, .original_len = sizeof ORIG - 1,
		.original_size = sizeof ORIG - 1,
	};
	return m;
}

static const struct dsn_rcpt two[] = {
	{ .addr = "x@example.net", .orcpt = "rfc822;X+2Bplus@example.net", .status = "5.1.1",
	  .code = 550, .remote_mta = "mx1.example.net",
	  .diagnostic = "550 5.1.1 no such user", .last_attempt = 1700000090 },
	{ .addr = "y@example.net", .code = 0, .expired = true,
	  .diagnostic = "connection refused" },
};

static char *build(const struct dsn_msg *m, const struct dsn_rcpt *r, size_t n, size_t *len)
{
	char *text = NULL, err[256];

	assert_int_equal(dsn_build(m, r, n, &text, len, err, sizeof err), 0);
	assert_int_equal(strlen(text), *len);
	return text;
}

static void test_dsn_failure_structure(void **state)
{
	struct dsn_msg m = base_msg();
	static struct mime mm;
	char v[1024], blk[4096];
	size_t len;
	char *text = build(&m, two, 2, &len);

	mime_parse(text, len, &mm);
	header_value(mm.hdr, "From", v, sizeof v);
	assert_contains(v, "MAILER-DAEMON@mx.test.example");
	header_value(mm.hdr, "To", v, sizeof v);
	assert_string_equal(v, "<a@example.org>");
	header_value(mm.hdr, "Auto-Submitted", v, sizeof v);
	assert_string_equal(v, "auto-replied");
	header_value(mm.hdr, "MIME-Version", v, sizeof v);
	assert_string_equal(v, "1.0");
	header_value(mm.hdr, "Message-ID", v, sizeof v);
	assert_string_equal(v, "<X.bounce@mx.test.example>");
	header_value(mm.hdr, "Date", v, sizeof v);
	assert_contains(v, "2023 22:15:00 +0000");
	assert_int_equal(mm.n, 3);
	header_value(mm.parts[0].hdr, "Content-Type", v, sizeof v);
	assert_contains(v, "text/plain");
	assert_contains(mm.parts[0].body, "<x@example.net>: host mx1.example.net said: 550 5.1.1 no such user");
	header_value(mm.parts[1].hdr, "Content-Type", v, sizeof v);
	assert_string_equal(v, "message/delivery-status");
	/* Per-message fields. */
	ds_block(mm.parts[1].body, 0, blk, sizeof blk);
	header_value(blk, "Reporting-MTA", v, sizeof v);
	assert_string_equal(v, "dns; mx.test.example");
	header_value(blk, "Original-Envelope-Id", v, sizeof v);
	assert_string_equal(v, "env+id");
	header_value(blk, "Arrival-Date", v, sizeof v);
	assert_string_equal(v, "Tue, 14 Nov 2023 22:13:20 +0000");
	/* First recipient: remote 5xx. */
	ds_block(mm.parts[1].body, 1, blk, sizeof blk);
	header_value(blk, "Final-Recipient", v, sizeof v);
	assert_string_equal(v, "rfc822; x@example.net");
	header_value(blk, "Original-Recipient", v, sizeof v);
	assert_string_equal(v, "rfc822; X+plus@example.net");
	header_value(blk, "Action", v, sizeof v);
	assert_string_equal(v, "failed");
	header_value(blk, "Status", v, sizeof v);
	assert_string_equal(v, "5.1.1");
	header_value(blk, "Remote-MTA", v, sizeof v);
	assert_string_equal(v, "dns; mx1.example.net");
	header_value(blk, "Diagnostic-Code", v, sizeof v);
	assert_string_equal(v, "smtp; 550 5.1.1 no such user");
	header_value(blk, "Last-Attempt-Date", v, sizeof v);
	assert_contains(v, "2023");
	/* Second: expired, no remote host. */
	ds_block(mm.parts[1].body, 2, blk, sizeof blk);
	header_value(blk, "Final-Recipient", v, sizeof v);
	assert_string_equal(v, "rfc822; y@example.net");
	header_value(blk, "Status", v, sizeof v);
	assert_string_equal(v, "4.4.7");
	header_value(blk, "Action", v, sizeof v);
	assert_string_equal(v, "failed");
	header_value(blk, "Remote-MTA", v, sizeof v);
	assert_string_equal(v, "");
	header_value(blk, "Original-Recipient", v, sizeof v);
	assert_string_equal(v, "");
	/* RET unset: the whole message. */
	header_value(mm.parts[2].hdr, "Content-Type", v, sizeof v);
	assert_string_equal(v, "message/rfc822");
	assert_contains(mm.parts[2].body, "Subject: hi");
	assert_contains(mm.parts[2].body, "body line");
	free(text);
}

static void test_dsn_ret_hdrs_and_cap(void **state)
{
	struct dsn_msg m = base_msg();
	static struct mime mm;
	char v[256];
	size_t len;
	char *text;

	m.ret = SPOOL_RET_HDRS;
	text = build(&m, two, 1, &len);
	mime_parse(text, len, &mm);
	assert_int_equal(mm.n, 3);
	header_value(mm.parts[2].hdr, "Content-Type", v, sizeof v);
	assert_string_equal(v, "text/rfc822-headers");
	assert_contains(mm.parts[2].body, "Subject: hi");
	assert_null(strstr(mm.parts[2].body, "body line"));
	free(text);

	/* RET=FULL but over the cap: the header only. */
	m.ret = SPOOL_RET_FULL;
	m.original_size = DSN_FULL_MAX + 1;
	text = build(&m, two, 1, &len);
	mime_parse(text, len, &mm);
	header_value(mm.parts[2].hdr, "Content-Type", v, sizeof v);
	assert_string_equal(v, "text/rfc822-headers");
	assert_null(strstr(mm.parts[2].body, "body line"));
	free(text);

	/* RET=FULL within the cap. */
	m.original_size = sizeof ORIG - 1;
	text = build(&m, two, 1, &len);
	mime_parse(text, len, &mm);
	header_value(mm.parts[2].hdr, "Content-Type", v, sizeof v);
	assert_string_equal(v, "message/rfc822");
	free(text);
}

static void test_dsn_delay(void **state)
{
	struct dsn_msg m = base_msg();
	struct dsn_rcpt r = { .addr = "z@example.net", .code = 451, .status = "4.3.0",
			      .remote_mta = "mx.example.net", .diagnostic = "451 4.3.0 try later",
			      .retry_until = 1700432000 };
	static struct mime mm;
	char v[256], blk[2048];
	size_t len;
	char *text;

	m.kind = DSN_DELAY;
	text = build(&m, &r, 1, &len);
	mime_parse(text, len, &mm);
	header_value(mm.hdr, "Subject", v, sizeof v);
	assert_contains(v, "Delayed");
	ds_block(mm.parts[1].body, 1, blk, sizeof blk);
	header_value(blk, "Action", v, sizeof v);
	assert_string_equal(v, "delayed");
	header_value(blk, "Status", v, sizeof v);
	assert_string_equal(v, "4.3.0");
	header_value(blk, "Will-Retry-Until", v, sizeof v);
	assert_contains(v, "2023");
	/* Delay warnings carry the header only. */
	header_value(mm.parts[2].hdr, "Content-Type", v, sizeof v);
	assert_string_equal(v, "text/rfc822-headers");
	free(text);
}

static void test_dsn_success(void **state)
{
	struct dsn_msg m = base_msg();
	struct dsn_rcpt r[] = {
		{ .addr = "a@example.net", .status = "2.0.0" },
		{ .addr = "b@example.net", .status = "2.0.0", .code = 250, .relayed = true,
		  .remote_mta = "mx.example.net", .diagnostic = "250 2.0.0 ok" },
	};
	static struct mime mm;
	char v[256], blk[2048];
	size_t len;
	char *text;

	m.kind = DSN_SUCCESS;
	m.ret = SPOOL_RET_FULL;
	text = build(&m, r, 2, &len);
	mime_parse(text, len, &mm);
	header_value(mm.hdr, "Subject", v, sizeof v);
	assert_contains(v, "Successful");
	ds_block(mm.parts[1].body, 1, blk, sizeof blk);
	header_value(blk, "Action", v, sizeof v);
	assert_string_equal(v, "delivered");
	header_value(blk, "Status", v, sizeof v);
	assert_string_equal(v, "2.0.0");
	header_value(blk, "Diagnostic-Code", v, sizeof v);
	assert_string_equal(v, "");
	ds_block(mm.parts[1].body, 2, blk, sizeof blk);
	header_value(blk, "Action", v, sizeof v);
	assert_string_equal(v, "relayed");
	/* Success reports carry the header only, whatever RET says. */
	header_value(mm.parts[2].hdr, "Content-Type", v, sizeof v);
	assert_string_equal(v, "text/rfc822-headers");
	free(text);
}

static void test_dsn_boundary_avoids_original(void **state)
{
	struct dsn_msg m = base_msg();
	static struct mime mm;
	static const char evil[] = "Subject: x\r\n\r\n--=_carrier/0123456789ABCDEF/0\r\nhello\r\n";
	size_t len;
	char *text;

	m.original = evil;
	m.original_len = m.original_size = sizeof evil - 1;
	text = build(&m, two, 1, &len);
	mime_parse(text, len, &mm);
	assert_int_equal(mm.n, 3);
	assert_contains(mm.parts[2].body, "hello");
	free(text);
}

static void test_dsn_sanitizes(void **state)
{
	struct dsn_msg m = base_msg();
	struct dsn_rcpt r = { .addr = "x@example.net", .code = 550,
			      .diagnostic = "550 bad\r\nInjected: yes" };
	size_t len;
	char *text;

	text = build(&m, &r, 1, &len);
	assert_null(strstr(text, "\r\nInjected: yes"));
	assert_contains(text, "550 bad??Injected: yes");
	free(text);
}

static void test_dsn_notify_rules(void **state)
{
	assert_true(dsn_wanted(DSN_FAILURE, 0));
	assert_true(dsn_wanted(DSN_DELAY, 0));
	assert_false(dsn_wanted(DSN_FAILURE, SPOOL_NOTIFY_NEVER));
	assert_false(dsn_wanted(DSN_DELAY, SPOOL_NOTIFY_NEVER));
	assert_false(dsn_wanted(DSN_FAILURE, SPOOL_NOTIFY_SUCCESS));
	assert_false(dsn_wanted(DSN_FAILURE, SPOOL_NOTIFY_DELAY));
	assert_true(dsn_wanted(DSN_FAILURE, SPOOL_NOTIFY_FAILURE | SPOOL_NOTIFY_DELAY));
	assert_false(dsn_wanted(DSN_DELAY, SPOOL_NOTIFY_FAILURE));
	assert_true(dsn_wanted(DSN_DELAY, SPOOL_NOTIFY_DELAY));
	assert_false(dsn_wanted(DSN_SUCCESS, 0));
	assert_false(dsn_wanted(DSN_SUCCESS, SPOOL_NOTIFY_FAILURE | SPOOL_NOTIFY_DELAY));
	assert_true(dsn_wanted(DSN_SUCCESS, SPOOL_NOTIFY_SUCCESS));
	assert_false(dsn_wanted(DSN_SUCCESS, SPOOL_NOTIFY_NEVER));
}

static void test_dsn_double_bounce(void **state)
{
	bool dbl;

	assert_string_equal(dsn_recipient("a@example.org", "pm@example.org", &dbl), "a@example.org");
	assert_false(dbl);
	/* A failed report (null sender) is never bounced to its sender. */
	assert_null(dsn_recipient("", "", &dbl));
	assert_true(dbl);
	assert_null(dsn_recipient("", NULL, &dbl));
	assert_string_equal(dsn_recipient("", "postmaster@example.org", &dbl),
			    "postmaster@example.org");
	assert_true(dbl);
}

static void test_dsn_xtext_and_errors(void **state)
{
	char out[64], err[128], *text = NULL;
	size_t len;
	struct dsn_msg m = base_msg();

	dsn_xtext_decode("a+2Bb+3Dc", out, sizeof out);
	assert_string_equal(out, "a+b=c");
	dsn_xtext_decode("bad+zz+0A", out, sizeof out);
	assert_string_equal(out, "bad?zz?");
	dsn_xtext_decode("abcdef", out, 4);
	assert_string_equal(out, "abc");
	assert_int_equal(dsn_build(&m, two, 0, &text, &len, err, sizeof err), -1);
	assert_null(text);
	/* No original at all: two parts. */
	m.original = NULL;
	m.original_len = 0;
	{
		static struct mime mm;

		text = build(&m, two, 1, &len);
		mime_parse(text, len, &mm);
		assert_int_equal(mm.n, 2);
		free(text);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_dsn_failure_structure),
		cmocka_unit_test(test_dsn_ret_hdrs_and_cap),
		cmocka_unit_test(test_dsn_delay),
		cmocka_unit_test(test_dsn_success),
		cmocka_unit_test(test_dsn_boundary_avoids_original),
		cmocka_unit_test(test_dsn_sanitizes),
		cmocka_unit_test(test_dsn_notify_rules),
		cmocka_unit_test(test_dsn_double_bounce),
		cmocka_unit_test(test_dsn_xtext_and_errors),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
