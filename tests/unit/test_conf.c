/* Unit tests for conf: defaults, the embedded default, every error with
 * its line, did-you-mean, value syntaxes, and the relay check. */
#include "test_util.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include "conf.h"

static struct carrier_conf *load(const char *text, struct conf_errors *errs)
{
	memset(errs, 0, sizeof *errs);
	return conf_load_string("test.conf", text, errs);
}

static const char *error_line(const struct conf_errors *errs, size_t i, char *buf, size_t size)
{
	conf_error_format(&errs->v[i], buf, size);
	return buf;
}

static void test_embedded_default(void **state)
{
	struct conf_errors errs = { 0 };
	struct carrier_conf *c = conf_load(NULL, &errs);

	assert_non_null(c);
	assert_int_equal(errs.n, 0);
	assert_int_equal(c->n_listen, 1);
	assert_string_equal(c->listen[0].text, "127.0.0.1:2525");
	assert_int_equal(c->listen[0].port, 2525);
	assert_true(conf_is_local_domain(c, "localhost"));
	assert_true(conf_is_local_domain(c, "LOCALHOST"));
	assert_false(conf_is_local_domain(c, "example.org"));
	assert_contains(c->spool_path, "/var/spool");
	assert_true(c->spool_path[0] == '/');   /* made absolute */
	assert_contains(c->maildir_path, "/var/mail");
	assert_string_equal(c->path, "<embedded>");
	conf_free(&c);
	assert_null(c);
}

static void test_every_key_has_a_default(void **state)
{
	struct conf_errors errs;
	struct carrier_conf *c = load("", &errs);

	assert_non_null(c);
	assert_int_equal(c->max_message_size, 50ull << 20);
	assert_int_equal(c->command_line_max, 512);
	assert_int_equal(c->text_line_max, 1000);
	assert_int_equal(c->max_received_headers, 100);
	assert_int_equal(c->command_timeout, 300);
	assert_string_equal(c->spool_path, "/var/spool/carrier");
	assert_int_equal(c->levels[EVLOG_CAT_SMTP_IN], EVLOG_LEVEL_MINIMUM);
	conf_free(&c);
}

static void test_three_mistakes_all_reported(void **state)
{
	struct conf_errors errs;
	char buf[512];
	struct carrier_conf *c = load(
		"[server]\n"                            /* 1 */
		"listen = 127.0.0.1:99999\n"            /* 2: bad port */
		"; a comment\n"                         /* 3 */
		"lisen = 127.0.0.1:25\n"                /* 4: typo */
		"[smtp]\n"                              /* 5 */
		"max_message_size = lots\n",            /* 6: not a size */
		&errs);

	assert_null(c);
	assert_int_equal(errs.n, 3);
	assert_contains(error_line(&errs, 0, buf, sizeof buf), "test.conf:2: server.listen: ");
	assert_contains(buf, "expected");
	assert_contains(error_line(&errs, 1, buf, sizeof buf), "test.conf:4: server.lisen: unknown key");
	assert_contains(buf, "did you mean 'listen'?");
	assert_contains(error_line(&errs, 2, buf, sizeof buf), "test.conf:6: smtp.max_message_size: 'lots' is not a number");
	assert_contains(buf, "(expected a size");
	conf_errors_clear(&errs);
	assert_int_equal(errs.n, 0);
}

static void test_key_in_wrong_section(void **state)
{
	struct conf_errors errs;
	char buf[512];
	struct carrier_conf *c = load("[server]\nmax_message_size = 10M\n", &errs);

	assert_null(c);
	assert_int_equal(errs.n, 1);
	assert_contains(error_line(&errs, 0, buf, sizeof buf), "test.conf:2: server.max_message_size: unknown key");
	assert_contains(buf, "in section [smtp]");
	conf_errors_clear(&errs);
}

static void test_syntax_and_sections(void **state)
{
	struct conf_errors errs;
	char buf[512];
	struct carrier_conf *c = load(
		"[servr]\n"
		"listen = 127.0.0.1:25\n"
		"hostname = a\n"
		"[smtp]\n"
		"this line has no equals sign\n"
		"max_errors = 5\n"
		"max_errors = 6\n"
		"[spool\n",
		&errs);

	assert_null(c);
	assert_int_equal(errs.n, 4);
	assert_contains(error_line(&errs, 0, buf, sizeof buf), "test.conf:2: ");
	assert_contains(buf, "unknown section [servr] (did you mean [server]?)");
	assert_contains(error_line(&errs, 1, buf, sizeof buf), "test.conf:5: syntax: ");
	assert_contains(buf, "expected KEY = VALUE");
	assert_contains(error_line(&errs, 2, buf, sizeof buf), "test.conf:7: smtp.max_errors: set twice (first at line 6)");
	assert_contains(error_line(&errs, 3, buf, sizeof buf), "test.conf:8: syntax: section header without ']'");
	conf_errors_clear(&errs);
}

static void test_values(void **state)
{
	struct conf_errors errs;
	struct carrier_conf *c = load(
		"[server]\n"
		"listen = 127.0.0.1:2525, [::1]:2526   ; inline comment\n"
		"relay_networks = 10.0.0.0/8, 2001:db8::/32, 192.0.2.7\n"
		"local_domains = example.org, Example.NET\n"
		"drain_timeout = 2m\n"
		"  user = mail\n"
		"[smtp]\n"
		"max_message_size = 10M\n"
		"bare_lf_normalize = yes\n"
		"[log]\n"
		"level.smtp_in = maximum\n",
		&errs);

	assert_non_null(c);
	assert_int_equal(c->n_listen, 2);
	assert_int_equal(c->listen[1].port, 2526);
	assert_string_equal(c->listen[1].host, "::1");
	assert_int_equal(c->listen[1].addr.ss_family, AF_INET6);
	assert_int_equal(c->drain_timeout, 120);
	assert_string_equal(c->user, "mail");
	assert_int_equal(c->max_message_size, 10ull << 20);
	assert_true(c->bare_lf_normalize);
	assert_int_equal(c->levels[EVLOG_CAT_SMTP_IN], EVLOG_LEVEL_MAXIMUM);
	assert_true(conf_is_local_domain(c, "example.net"));

	struct sockaddr_in in = { .sin_family = AF_INET };
	struct sockaddr_in6 in6 = { .sin6_family = AF_INET6 };

	inet_pton(AF_INET, "10.1.2.3", &in.sin_addr);
	assert_true(conf_is_relay_client(c, (struct sockaddr *)&in));
	inet_pton(AF_INET, "11.1.2.3", &in.sin_addr);
	assert_false(conf_is_relay_client(c, (struct sockaddr *)&in));
	inet_pton(AF_INET, "192.0.2.7", &in.sin_addr);
	assert_true(conf_is_relay_client(c, (struct sockaddr *)&in));
	inet_pton(AF_INET6, "2001:db8:ffff::1", &in6.sin6_addr);
	assert_true(conf_is_relay_client(c, (struct sockaddr *)&in6));
	inet_pton(AF_INET6, "::ffff:10.9.9.9", &in6.sin6_addr);   /* v4-mapped */
	assert_true(conf_is_relay_client(c, (struct sockaddr *)&in6));
	inet_pton(AF_INET6, "2001:db9::1", &in6.sin6_addr);
	assert_false(conf_is_relay_client(c, (struct sockaddr *)&in6));
	conf_free(&c);
}

static void test_bad_values(void **state)
{
	static const struct {
		const char *text, *want;
	} cases[] = {
		{ "[server]\nlisten = localhost:25\n", "'localhost' is not a numeric IPv4 or IPv6 address" },
		{ "[server]\nlisten = 127.0.0.1\n", "is not ADDRESS:PORT" },
		{ "[server]\nlisten =\n", "no listen address" },
		{ "[server]\nrelay_networks = 10.0.0.0/33\n", "prefix length outside 0-32" },
		{ "[server]\nlocal_domains = exa mple.org\n", "is not a domain name" },
		{ "[server]\ndrain_timeout = 5 minutes\n", "unknown unit" },
		{ "[smtp]\nmax_recipients = 0\n", "0 is out of range" },
		{ "[smtp]\ncommand_line_max = 100\n", "out of range (expected a length in octets from 512" },
		{ "[smtp]\nbare_lf_normalize = maybe\n", "'maybe' is not yes or no" },
		{ "[smtp]\nmax_message_size = 99999999999999999999999\n", "too large" },
		{ "[log]\nlevel.smtp = medium\n", "unknown category 'smtp'" },
		{ "[log]\nlevel.smtp_in = loud\n", "'loud' is not a level" },
		{ "[counters]\nshm_name = carrier\n", "is not a shared memory name" },
		{ "listen = 1.2.3.4:25\n", "key outside any section" },
	};

	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		struct conf_errors errs;
		char buf[512];
		struct carrier_conf *c = load(cases[i].text, &errs);

		if (c != NULL || errs.n != 1)
			fail_msg("case %zu (%s): got %zu errors, want 1", i, cases[i].text, errs.n);
		assert_contains(error_line(&errs, 0, buf, sizeof buf), cases[i].want);
		conf_errors_clear(&errs);
	}
}

static void test_long_line(void **state)
{
	struct conf_errors errs;
	char text[1200];
	char buf[512];

	snprintf(text, sizeof text, "[server]\nhostname = %0900d\n", 7);
	assert_null(load(text, &errs));
	assert_int_equal(errs.n, 1);
	assert_contains(error_line(&errs, 0, buf, sizeof buf), "test.conf:2: syntax: line too long");
	conf_errors_clear(&errs);
}

static void test_unreadable_file(void **state)
{
	struct conf_errors errs = { 0 };

	assert_null(conf_load("/nonexistent/carrier.conf", &errs));
	assert_int_equal(errs.n, 1);
	assert_int_equal(errs.v[0].line, 0);
	assert_contains(errs.v[0].problem, "No such file or directory");
	conf_errors_clear(&errs);
}

/* The dump is valid configuration that loads to the same values. */
static void test_dump_round_trip(void **state)
{
	struct conf_errors errs = { 0 };
	struct carrier_conf *a = conf_load(NULL, &errs), *b;
	char *text = NULL, *text2 = NULL;
	size_t len = 0, len2 = 0;
	FILE *f = open_memstream(&text, &len);

	conf_dump(a, f);
	fclose(f);
	b = load(text, &errs);
	if (b == NULL)
		fail_msg("dump does not reload: %s", errs.n ? errs.v[0].problem : "?");
	f = open_memstream(&text2, &len2);
	conf_dump(b, f);
	fclose(f);
	/* Only the first line (the source) differs. */
	assert_string_equal(strchr(text, '\n'), strchr(text2, '\n'));
	free(text);
	free(text2);
	conf_free(&a);
	conf_free(&b);
}

static void test_routes(void **state)
{
	struct conf_errors errs;
	char buf[512];
	struct carrier_conf *c = load(
		"[route Example.NET]\n"
		"via = smtp:[192.0.2.5]:25\n"
		"cost = 1\n"
		"[route example.net]\n"
		"via = smtp:[192.0.2.6]:25\n"
		"cost = 5\n"
		"[route *]\n"
		"via = mx\n"
		"[delivery]\n"
		"retry_schedule = 10s, 1m\n",
		&errs);

	assert_non_null(c);
	assert_int_equal(c->n_routes, 3);
	assert_string_equal(c->routes[0].space, "example.net");
	assert_int_equal(c->routes[0].cost, 1);
	assert_int_equal(c->routes[0].line, 1);
	assert_string_equal(c->routes[1].via, "smtp:[192.0.2.6]:25");
	assert_int_equal(c->routes[1].line, 4);
	assert_int_equal(c->routes[2].cost, 10);
	assert_int_equal(c->n_retry_schedule, 2);
	assert_int_equal(c->retry_schedule[1], 60);
	conf_free(&c);

	c = load("[route *.x..y]\nvai = mx\n[route a.example]\ncost = lots\n", &errs);
	assert_null(c);
	assert_int_equal(errs.n, 5);
	assert_contains(error_line(&errs, 0, buf, sizeof buf), "test.conf:1: route: '*.x..y' is not an address space");
	assert_contains(error_line(&errs, 1, buf, sizeof buf), "test.conf:2: route *.x..y.vai: unknown key (did you mean 'via'?)");
	assert_contains(error_line(&errs, 2, buf, sizeof buf), "test.conf:4: route a.example.cost: 'lots' is not a number");
	assert_contains(error_line(&errs, 3, buf, sizeof buf), "test.conf:1: route *.x..y.via: missing");
	assert_contains(error_line(&errs, 4, buf, sizeof buf), "test.conf:3: route a.example.via: missing");
	conf_errors_clear(&errs);
}

static void test_tls_auth_keys(void **state)
{
	struct conf_errors errs;
	char buf[512];
	struct carrier_conf *c = load(
		"[server]\n"
		"listen = 127.0.0.1:25, 127.0.0.1:587/submission, [::1]:465/smtps, 127.0.0.1:26/smtp\n"
		"[tls]\n"
		"cert = /etc/c.pem\n"
		"key = /etc/c.key\n"
		"sni = a.example:/a.pem:/a.key, *.b.example:/b.pem:/b.key\n"
		"[auth]\n"
		"passwd_file = /etc/carrier/passwd\n"
		"sender_login_match = no\n"
		"failure_delay = 0\n", &errs);

	if (c == NULL)
		fail_msg("%s", error_line(&errs, 0, buf, sizeof buf));
	assert_int_equal(c->n_listen, 4);
	assert_int_equal(c->listen[0].role, CONF_ROLE_SMTP);
	assert_int_equal(c->listen[1].role, CONF_ROLE_SUBMISSION);
	assert_false(c->listen[1].implicit_tls);
	assert_int_equal(c->listen[1].port, 587);
	assert_string_equal(c->listen[1].text, "127.0.0.1:587/submission");
	assert_int_equal(c->listen[2].role, CONF_ROLE_SUBMISSION);
	assert_true(c->listen[2].implicit_tls);
	assert_string_equal(c->listen[2].host, "::1");
	assert_int_equal(c->listen[3].role, CONF_ROLE_SMTP);
	assert_string_equal(c->tls_cert, "/etc/c.pem");
	assert_string_equal(c->tls_min_version, "TLSv1.2");
	assert_true(c->auth_require_tls);
	assert_false(c->auth_sender_login_match);
	assert_int_equal(c->auth_failure_delay, 0);
	assert_int_equal(c->auth_max_failures, 5);
	conf_free(&c);

	/* Defaults: no TLS, no AUTH. */
	c = load("", &errs);
	assert_string_equal(c->tls_cert, "");
	assert_string_equal(c->auth_passwd_file, "");
	conf_free(&c);
}

static void test_tls_auth_errors(void **state)
{
	struct conf_errors errs;
	char buf[512];
	struct carrier_conf *c = load(
		"[server]\n"                                         /* 1 */
		"listen = 127.0.0.1:587/submission\n"                /* 2 */
		"[tls]\n"                                            /* 3 */
		"key = /etc/c.key\n"                                 /* 4 */
		"min_version = TLSv1.1\n"                            /* 5 */
		"sni = a.example:/a.pem\n"                           /* 6 */
		"[auth]\n"                                           /* 7 */
		"max_failures = 0\n", &errs);                        /* 8 */

	assert_null(c);
	assert_int_equal(errs.n, 7);
	assert_contains(error_line(&errs, 0, buf, sizeof buf), "test.conf:8: auth.max_failures: 0 is out of range");
	assert_contains(error_line(&errs, 1, buf, sizeof buf), "test.conf:4: tls.key: set without tls.cert");
	assert_contains(error_line(&errs, 2, buf, sizeof buf), "test.conf:5: tls.min_version: 'TLSv1.1' is not a supported version (expected TLSv1.2 or TLSv1.3)");
	assert_contains(error_line(&errs, 3, buf, sizeof buf), "test.conf:6: tls.sni: 'a.example:/a.pem' is not NAME:/CERT:/KEY");
	assert_contains(error_line(&errs, 4, buf, sizeof buf), "test.conf:6: tls.sni: set without tls.cert");
	assert_contains(error_line(&errs, 5, buf, sizeof buf), "test.conf:2: server.listen: '127.0.0.1:587/submission' needs TLS");
	assert_contains(error_line(&errs, 6, buf, sizeof buf), "test.conf:2: server.listen: '127.0.0.1:587/submission' needs AUTH");
	conf_errors_clear(&errs);

	c = load("[server]\nlisten = 127.0.0.1:25/lmtp\n", &errs);
	assert_null(c);
	assert_contains(error_line(&errs, 0, buf, sizeof buf), "test.conf:2: server.listen: '127.0.0.1:25/lmtp' has an unknown role 'lmtp'");
	conf_errors_clear(&errs);

	c = load("[tls]\ncert = /c.pem\n[tsl]\nkey = x\n", &errs);
	assert_null(c);
	assert_contains(error_line(&errs, 0, buf, sizeof buf), "did you mean [tls]?");
	assert_contains(error_line(&errs, 1, buf, sizeof buf), "test.conf:2: tls.cert: set without tls.key");
	conf_errors_clear(&errs);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_embedded_default),
		cmocka_unit_test(test_every_key_has_a_default),
		cmocka_unit_test(test_three_mistakes_all_reported),
		cmocka_unit_test(test_key_in_wrong_section),
		cmocka_unit_test(test_syntax_and_sections),
		cmocka_unit_test(test_values),
		cmocka_unit_test(test_bad_values),
		cmocka_unit_test(test_long_line),
		cmocka_unit_test(test_unreadable_file),
		cmocka_unit_test(test_dump_round_trip),
		cmocka_unit_test(test_routes),
		cmocka_unit_test(test_tls_auth_keys),
		cmocka_unit_test(test_tls_auth_errors),
	};

	return cmocka_run_group_tests_name("conf", tests, NULL, NULL);
}
