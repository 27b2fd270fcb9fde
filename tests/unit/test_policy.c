/* Unit tests for policy: relay and local-domain decisions, <Postmaster>,
 * the null sender, SIZE, recipient count, loop detection and connection
 * limits.  Decisions are tables of {name, input, want}. */
#include "test_util.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include "conf.h"
#include "policy.h"

static struct carrier_conf *load(const char *text)
{
	struct conf_errors errs = { 0 };
	struct carrier_conf *c = conf_load_string("test.conf", text, &errs);

	if (c == NULL) {
		char buf[512];

		conf_error_format(&errs.v[0], buf, sizeof buf);
		fail_msg("conf: %s", buf);
	}
	conf_errors_clear(&errs);
	return c;
}

static struct sockaddr_storage addr_of(const char *text)
{
	struct sockaddr_storage ss;

	memset(&ss, 0, sizeof ss);
	if (strchr(text, ':')) {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;

		a->sin6_family = AF_INET6;
		assert_int_equal(inet_pton(AF_INET6, text, &a->sin6_addr), 1);
	} else {
		struct sockaddr_in *a = (struct sockaddr_in *)&ss;

		a->sin_family = AF_INET;
		assert_int_equal(inet_pton(AF_INET, text, &a->sin_addr), 1);
	}
	return ss;
}

struct rcpt_case {
	const char *name;
	const char *client;     /* NULL: unknown client */
	const char *domain;
	bool postmaster;
	unsigned n_rcpts;
	enum policy_verdict want;
	unsigned code;
	const char *enhanced;
};

static const char relay_conf[] =
	"[server]\n"
	"relay_networks = 10.255.255.0/24, 2001:db8::/32\n"
	"local_domains = example.org, localhost\n"
	"[smtp]\n"
	"max_recipients = 3\n";

static const struct rcpt_case rcpt_cases[] = {
	{ "local from outside", "192.0.2.1", "example.org", false, 0, POLICY_ACCEPT, 0, "" },
	{ "local any case", "192.0.2.1", "EXAMPLE.Org", false, 0, POLICY_ACCEPT, 0, "" },
	{ "local trailing dot", "192.0.2.1", "example.org.", false, 0, POLICY_ACCEPT, 0, "" },
	{ "localhost from outside", "127.0.0.1", "localhost", false, 0, POLICY_ACCEPT, 0, "" },
	{ "remote from outside", "127.0.0.1", "remote.example", false, 0, POLICY_REJECT, 554, "5.7.1" },
	{ "remote from v6 outside", "2001:db9::1", "remote.example", false, 0, POLICY_REJECT, 554, "5.7.1" },
	{ "remote from relay net", "10.255.255.7", "remote.example", false, 0, POLICY_ACCEPT, 0, "" },
	{ "remote from relay v6", "2001:db8::5", "remote.example", false, 0, POLICY_ACCEPT, 0, "" },
	{ "remote unknown client", NULL, "remote.example", false, 0, POLICY_REJECT, 554, "5.7.1" },
	{ "address literal needs relay", "192.0.2.1", "[192.0.2.9]", false, 0, POLICY_REJECT, 554, "5.7.1" },
	{ "subdomain is not local", "192.0.2.1", "sub.example.org", false, 0, POLICY_REJECT, 554, "5.7.1" },
	{ "postmaster from outside", "192.0.2.1", "", true, 0, POLICY_ACCEPT, 0, "" },
	{ "empty domain not local", "192.0.2.1", "", false, 0, POLICY_REJECT, 554, "5.7.1" },
	{ "third recipient ok", "192.0.2.1", "example.org", false, 2, POLICY_ACCEPT, 0, "" },
	{ "fourth recipient", "192.0.2.1", "example.org", false, 3, POLICY_TEMPFAIL, 452, "4.5.3" },
	{ "fourth even postmaster", "192.0.2.1", "", true, 3, POLICY_TEMPFAIL, 452, "4.5.3" },
};

static void test_rcpt_table(void **state)
{
	struct carrier_conf *c = load(relay_conf);

	for (size_t i = 0; i < sizeof rcpt_cases / sizeof rcpt_cases[0]; i++) {
		const struct rcpt_case *k = &rcpt_cases[i];
		struct sockaddr_storage ss;
		struct policy_result r;

		if (k->client)
			ss = addr_of(k->client);
		policy_check_rcpt(c, k->client ? (struct sockaddr *)&ss : NULL, k->domain,
				  k->postmaster, k->n_rcpts, c->max_recipients, &r);
		if (r.verdict != k->want || r.code != k->code ||
		    strcmp(r.enhanced, k->enhanced) != 0)
			fail_msg("%s: got %d %u %s, want %d %u %s", k->name, r.verdict,
				 r.code, r.enhanced, k->want, k->code, k->enhanced);
		if (k->code == 554) {
			assert_int_equal(r.event, EV_POLICY_RELAY_DENIED);
			assert_string_equal(r.text, "Relay access denied");
		}
	}
	conf_free(&c);
}

static void test_default_conf_relays_loopback(void **state)
{
	struct carrier_conf *c = load("");
	struct sockaddr_storage lo = addr_of("127.0.0.1"), lo6 = addr_of("::1");
	struct sockaddr_storage out = addr_of("192.0.2.1");
	struct policy_result r;

	policy_check_rcpt(c, (struct sockaddr *)&lo, "remote.example", false, 0, 100, &r);
	assert_int_equal(r.verdict, POLICY_ACCEPT);
	policy_check_rcpt(c, (struct sockaddr *)&lo6, "remote.example", false, 0, 100, &r);
	assert_int_equal(r.verdict, POLICY_ACCEPT);
	policy_check_rcpt(c, (struct sockaddr *)&out, "remote.example", false, 0, 100, &r);
	assert_int_equal(r.verdict, POLICY_REJECT);
	assert_true(policy_domain_is_local(c, "localhost"));
	assert_false(policy_domain_is_local(c, "."));
	conf_free(&c);
}

static void test_mail(void **state)
{
	struct policy_result r;

	policy_check_mail(true, false, 0, 1000, &r);
	assert_int_equal(r.verdict, POLICY_ACCEPT);    /* null sender allowed */
	policy_check_mail(false, true, 1000, 1000, &r);
	assert_int_equal(r.verdict, POLICY_ACCEPT);
	policy_check_mail(false, true, 1001, 1000, &r);
	assert_int_equal(r.verdict, POLICY_REJECT);
	assert_int_equal(r.code, 552);
	assert_string_equal(r.enhanced, "5.3.4");
	policy_check_mail(true, true, UINT64_MAX, 1000, &r);
	assert_int_equal(r.code, 552);
}

static void test_received(void **state)
{
	struct policy_result r;

	policy_check_received(0, 100, &r);
	assert_int_equal(r.verdict, POLICY_ACCEPT);
	policy_check_received(100, 100, &r);
	assert_int_equal(r.verdict, POLICY_ACCEPT);
	policy_check_received(101, 100, &r);
	assert_int_equal(r.verdict, POLICY_REJECT);
	assert_int_equal(r.code, 554);
	assert_string_equal(r.enhanced, "5.4.6");
	assert_int_equal(r.event, EV_POLICY_LOOP);
}

static void test_connection(void **state)
{
	struct carrier_conf *c = load("[smtp]\nmax_connections = 10\nmax_connections_per_ip = 3\n");
	struct policy_conn_counts n = { .total = 0, .from_ip = 0 };
	struct policy_result r;

	policy_check_connection(c, &n, &r);
	assert_int_equal(r.verdict, POLICY_ACCEPT);
	n.total = 9;
	n.from_ip = 2;
	policy_check_connection(c, &n, &r);
	assert_int_equal(r.verdict, POLICY_ACCEPT);
	n.from_ip = 3;
	policy_check_connection(c, &n, &r);
	assert_int_equal(r.code, 421);
	assert_string_equal(r.enhanced, "4.7.0");
	assert_string_equal(r.reason, "max_connections_per_ip");
	assert_int_equal(r.event, EV_POLICY_CONNECTION_REFUSED);
	n.total = 10;
	n.from_ip = 0;
	policy_check_connection(c, &n, &r);
	assert_string_equal(r.reason, "max_connections");
	n.total = 0;
	n.shutting_down = true;
	policy_check_connection(c, &n, &r);
	assert_int_equal(r.code, 421);
	assert_string_equal(r.enhanced, "4.3.2");
	assert_int_equal(r.event, 0);
	conf_free(&c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_rcpt_table),
		cmocka_unit_test(test_default_conf_relays_loopback),
		cmocka_unit_test(test_mail),
		cmocka_unit_test(test_received),
		cmocka_unit_test(test_connection),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
