/* Unit tests for sasl: the bounded base64 decoder and the PLAIN and LOGIN
 * responses (tables of {name, input, want}). */
#include "test_util.h"

#include "sasl.h"

struct b64_case {
	const char *name, *in;
	size_t out_size;
	enum sasl_result want;
	const char *want_out;
	size_t want_len;
};

static void test_base64(void **state)
{
	static const struct b64_case cases[] = {
		{ "empty", "", 16, SASL_OK, "", 0 },
		{ "one byte", "YQ==", 16, SASL_OK, "a", 1 },
		{ "two bytes", "YWI=", 16, SASL_OK, "ab", 2 },
		{ "three bytes", "YWJj", 16, SASL_OK, "abc", 3 },
		{ "NULs", "AGEAYg==", 16, SASL_OK, "\0a\0b", 4 },
		{ "all symbols", "+/+/", 16, SASL_OK, "\xfb\xff\xbf", 3 },
		{ "bad length", "YWJ", 16, SASL_BAD_BASE64, NULL, 0 },
		{ "bad char", "YW*j", 16, SASL_BAD_BASE64, NULL, 0 },
		{ "space", "YW j", 16, SASL_BAD_BASE64, NULL, 0 },
		{ "pad in middle", "YQ==YWJj", 16, SASL_BAD_BASE64, NULL, 0 },
		{ "pad first", "=YWJ", 16, SASL_BAD_BASE64, NULL, 0 },
		{ "three pads", "Y===", 16, SASL_BAD_BASE64, NULL, 0 },
		{ "non-canonical", "YR==", 16, SASL_BAD_BASE64, NULL, 0 },
		{ "char after pad", "YQ=a", 16, SASL_BAD_BASE64, NULL, 0 },
		{ "8-bit", "YW\xc3\xa9", 16, SASL_BAD_BASE64, NULL, 0 },
		{ "fits exactly", "YWJj", 3, SASL_OK, "abc", 3 },
		{ "one too many", "YWJj", 2, SASL_TOO_LONG, NULL, 0 },
	};

	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		const struct b64_case *c = &cases[i];
		unsigned char out[16];
		size_t n = 99;
		enum sasl_result r = sasl_base64_decode(c->in, strlen(c->in), out, c->out_size, &n);

		if (r != c->want)
			fail_msg("%s: got result %d, want %d", c->name, r, c->want);
		if (c->want_out != NULL && (n != c->want_len || memcmp(out, c->want_out, n) != 0))
			fail_msg("%s: got %zu bytes, want %zu", c->name, n, c->want_len);
	}
}

struct plain_case {
	const char *name, *in;
	enum sasl_result want;
	const char *authzid, *user, *pass;
};

static void test_plain(void **state)
{
	/* "\0alice\0secret", "alice\0alice\0secret", ... */
	static const struct plain_case cases[] = {
		{ "no authzid", "AGFsaWNlAHNlY3JldA==", SASL_OK, "", "alice", "secret" },
		{ "authzid", "YWxpY2UAYWxpY2UAc2VjcmV0", SASL_OK, "alice", "alice", "secret" },
		{ "empty password", "AGFsaWNlAA==", SASL_OK, "", "alice", "" },
		{ "cancel", "*", SASL_CANCEL, NULL, NULL, NULL },
		{ "empty response", "=", SASL_BAD_FORMAT, NULL, NULL, NULL },
		{ "one NUL", "AGFsaWNl", SASL_BAD_FORMAT, NULL, NULL, NULL },
		{ "no NUL", "YWxpY2U=", SASL_BAD_FORMAT, NULL, NULL, NULL },
		{ "empty user", "AABzZWNyZXQ=", SASL_BAD_FORMAT, NULL, NULL, NULL },
		{ "three NULs", "AGEAYgBj", SASL_BAD_FORMAT, NULL, NULL, NULL },
		{ "not base64", "AGFsaWNl!", SASL_BAD_BASE64, NULL, NULL, NULL },
	};

	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		const struct plain_case *c = &cases[i];
		struct sasl_creds cr;
		enum sasl_result r = sasl_plain(c->in, strlen(c->in), &cr);

		if (r != c->want)
			fail_msg("%s: got result %d, want %d", c->name, r, c->want);
		if (r != SASL_OK)
			continue;
		assert_string_equal(cr.authzid, c->authzid);
		assert_string_equal(cr.user, c->user);
		assert_string_equal(cr.pass, c->pass);
		sasl_creds_wipe(&cr);
		assert_int_equal(cr.pass[0], 0);
	}
}

static void test_plain_bounds(void **state)
{
	static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	unsigned char raw[1024];
	char line[SASL_LINE_MAX + 8];
	struct sasl_creds cr;
	size_t n, o = 0;

	/* A 300-byte user name is over SASL_USER_MAX. */
	memset(raw, 'u', sizeof raw);
	raw[0] = 0;
	raw[301] = 0;
	n = 310;
	for (size_t i = 0; i + 3 <= n; i += 3) {
		unsigned long w = ((unsigned long)raw[i] << 16) | ((unsigned long)raw[i + 1] << 8) | raw[i + 2];

		line[o++] = b64[(w >> 18) & 63];
		line[o++] = b64[(w >> 12) & 63];
		line[o++] = b64[(w >> 6) & 63];
		line[o++] = b64[w & 63];
	}
	assert_int_not_equal(sasl_plain(line, o, &cr), SASL_OK);
	/* A line over SASL_LINE_MAX is refused before decoding. */
	memset(line, 'A', SASL_LINE_MAX + 4);
	assert_int_equal(sasl_plain(line, SASL_LINE_MAX + 4, &cr), SASL_TOO_LONG);
	assert_int_equal(sasl_login(line, SASL_LINE_MAX + 4, 0, &cr), SASL_TOO_LONG);
}

static void test_login(void **state)
{
	struct sasl_creds cr = { 0 };

	assert_int_equal(sasl_login("YWxpY2U=", 8, 0, &cr), SASL_OK);
	assert_string_equal(cr.user, "alice");
	assert_int_equal(sasl_login("c2VjcmV0", 8, 1, &cr), SASL_OK);
	assert_string_equal(cr.pass, "secret");
	assert_int_equal(sasl_login("*", 1, 1, &cr), SASL_CANCEL);
	assert_int_equal(sasl_login("=", 1, 0, &cr), SASL_BAD_FORMAT);   /* empty user */
	assert_int_equal(sasl_login("=", 1, 1, &cr), SASL_OK);           /* empty password */
	assert_int_equal(sasl_login("AGE=", 4, 0, &cr), SASL_BAD_FORMAT); /* NUL */
	assert_int_equal(sasl_login("YW", 2, 0, &cr), SASL_BAD_BASE64);
}

static void test_base64_encode(void **state)
{
	char out[16];

	assert_int_equal(sasl_base64_encode((const unsigned char *)"", 0, out, sizeof out), 0);
	assert_string_equal(out, "");
	assert_int_equal(sasl_base64_encode((const unsigned char *)"a", 1, out, sizeof out), 4);
	assert_string_equal(out, "YQ==");
	assert_int_equal(sasl_base64_encode((const unsigned char *)"\0a\0b", 4, out, sizeof out), 8);
	assert_string_equal(out, "AGEAYg==");
	assert_int_equal(sasl_base64_encode((const unsigned char *)"abc", 3, out, 5), 4);
	assert_string_equal(out, "YWJj");
	assert_int_equal(sasl_base64_encode((const unsigned char *)"abc", 3, out, 4), 0);   /* no room for NUL */
}

static void test_mech(void **state)
{
	assert_int_equal(sasl_mech_parse("PLAIN", 5), SASL_MECH_PLAIN);
	assert_int_equal(sasl_mech_parse("plain", 5), SASL_MECH_PLAIN);
	assert_int_equal(sasl_mech_parse("LOGIN", 5), SASL_MECH_LOGIN);
	assert_int_equal(sasl_mech_parse("CRAM-MD5", 8), SASL_MECH_NONE);
	assert_int_equal(sasl_mech_parse("PLAINX", 6), SASL_MECH_NONE);
	assert_int_equal(sasl_mech_parse("", 0), SASL_MECH_NONE);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_base64),
		cmocka_unit_test(test_plain),
		cmocka_unit_test(test_plain_bounds),
		cmocka_unit_test(test_login),
		cmocka_unit_test(test_base64_encode),
		cmocka_unit_test(test_mech),
	};

	return cmocka_run_group_tests_name("sasl", tests, NULL, NULL);
}
