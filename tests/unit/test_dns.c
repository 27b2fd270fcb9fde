/* Unit tests for dns: the pure decoders (names, MX rdata, MX sets,
 * literals) and the asynchronous machinery against a loopback socket that
 * never answers (timeouts, cancellation, freeing with lookups in flight).
 * Answers from a real server are tested end to end (tests/e2e). */
#include "test_util.h"

#include <arpa/inet.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conf.h"
#include "counters.h"
#include "dns.h"

static void test_name_ok(void **state)
{
	static const struct { const char *name; bool ok; } cases[] = {
		{ "example.com", true }, { "example.com.", true }, { "a", true },
		{ "_dmarc.example.com", true }, { "xn--bcher-kva.example", true },
		{ "", false }, { ".", false }, { "a..b", false }, { ".a", false },
		{ "a b.example", false }, { "a/b", false }, { "[1.2.3.4]", false },
		{ "exa\xc3\xa9mple.com", false },
	};
	char long_label[80], long_name[300];

	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
		if (dns_name_ok(cases[i].name) != cases[i].ok)
			fail_msg("dns_name_ok(\"%s\"): got %d, want %d", cases[i].name,
				 !cases[i].ok, cases[i].ok);
	memset(long_label, 'a', 64);
	long_label[64] = '\0';
	assert_false(dns_name_ok(long_label));
	long_label[63] = '\0';
	assert_true(dns_name_ok(long_label));
	memset(long_name, 'a', sizeof long_name);
	for (size_t i = 50; i < sizeof long_name; i += 51)
		long_name[i] = '.';
	long_name[254] = '\0';
	assert_false(dns_name_ok(long_name));
	long_name[253] = '\0';
	if (long_name[252] == '.')
		long_name[252] = 'a';
	assert_true(dns_name_ok(long_name));
}

struct mx_case {
	const char *label;
	const char *rdata;
	size_t len;
	int rc;
	unsigned pref;
	const char *name;
};

static void test_mx_rdata(void **state)
{
	static const struct mx_case cases[] = {
		{ "plain", "\x00\x0a\x03mx1\x07""example\x03""com\x00", 19, 0, 10, "mx1.example.com" },
		{ "upper case lowered", "\x01\x00\x02MX\x02""Ex\x00", 9, 0, 256, "mx.ex" },
		{ "null MX", "\x00\x00\x00", 3, 0, 0, "" },
		{ "compression pointer", "\x00\x0a\xc0\x0c", 4, -1, 0, NULL },
		{ "trailing garbage", "\x00\x0a\x02mx\x00X", 7, -1, 0, NULL },
		{ "label past the end", "\x00\x0a\x05mx\x00", 6, -1, 0, NULL },
		{ "no terminating root", "\x00\x0a\x02mx", 5, -1, 0, NULL },
		{ "too short", "\x00\x0a", 2, -1, 0, NULL },
		{ "dot inside a label", "\x00\x0a\x03m.x\x00", 7, -1, 0, NULL },
		{ "control character", "\x00\x0a\x02m\n\x00", 6, -1, 0, NULL },
	};

	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		const struct mx_case *k = &cases[i];
		uint16_t pref = 0;
		char name[DNS_NAME_MAX + 1] = "unset";
		int rc = dns_parse_mx_rdata((const uint8_t *)k->rdata, k->len, &pref, name, sizeof name);
		if (rc != k->rc)
			fail_msg("%s: got rc %d, want %d", k->label, rc, k->rc);
		if (rc == 0 && (pref != k->pref || strcmp(name, k->name) != 0))
			fail_msg("%s: got %u %s, want %u %s", k->label, pref, name, k->pref, k->name);
	}
	/* A label of 64 octets is refused. */
	uint8_t big[70] = { 0, 1, 64 };
	memset(big + 3, 'a', 64);
	big[67] = 0;
	uint16_t p;
	char n[DNS_NAME_MAX + 1];
	assert_int_equal(dns_parse_mx_rdata(big, 68, &p, n, sizeof n), -1);
	/* A name that does not fit the buffer is refused, not cut. */
	assert_int_equal(dns_parse_mx_rdata((const uint8_t *)"\x00\x0a\x03mx1\x00", 7, &p, n, 3), -1);
}

/* Builds MX rdata for "pref name" into buf; returns its length. */
static int mx_rdata(char *buf, unsigned pref, const char *name)
{
	int o = 2;

	buf[0] = (char)(pref >> 8);
	buf[1] = (char)pref;
	while (*name) {
		const char *dot = strchr(name, '.');
		size_t l = dot ? (size_t)(dot - name) : strlen(name);
		buf[o++] = (char)l;
		memcpy(buf + o, name, l);
		o += (int)l;
		name += l + (dot ? 1 : 0);
	}
	buf[o++] = 0;
	return o;
}

static void build(struct dns_mx_result *res, const unsigned *prefs, const char *const *names,
		  size_t n, uint64_t *rnd)
{
	static char store[32][300];
	char *data[33];
	int len[33];

	for (size_t i = 0; i < n; i++) {
		len[i] = mx_rdata(store[i], prefs[i], names[i]);
		data[i] = store[i];
	}
	data[n] = NULL;
	memset(res, 0, sizeof *res);
	dns_mx_build(res, data, len, n, rnd);
}

static void test_mx_build_order(void **state)
{
	static const unsigned prefs[] = { 30, 10, 20, 10 };
	static const char *const names[] = { "c.example", "a1.example", "b.example", "a2.example" };
	struct dns_mx_result res;
	uint64_t rnd = 12345;
	unsigned a1_first = 0;

	for (int i = 0; i < 200; i++) {
		build(&res, prefs, names, 4, &rnd);
		assert_int_equal(res.status, DNS_OK);
		assert_int_equal(res.n, 4);
		assert_int_equal(res.mx[0].pref, 10);
		assert_int_equal(res.mx[1].pref, 10);
		assert_int_equal(res.mx[2].pref, 20);
		assert_string_equal(res.mx[2].name, "b.example");
		assert_int_equal(res.mx[3].pref, 30);
		a1_first += strcmp(res.mx[0].name, "a1.example") == 0;
	}
	/* Equal preferences are shuffled: both orders show up. */
	if (a1_first < 50 || a1_first > 150)
		fail_msg("ties not shuffled: a1 first %u times of 200, want about 100", a1_first);
}

static void test_mx_build_limits_and_null(void **state)
{
	unsigned prefs[15];
	const char *names[15];
	static char namebuf[15][32];
	struct dns_mx_result res;
	uint64_t rnd = 1;

	for (unsigned i = 0; i < 15; i++) {
		prefs[i] = 100 - i;             /* given highest first */
		snprintf(namebuf[i], sizeof namebuf[i], "mx%u.example", i);
		names[i] = namebuf[i];
	}
	build(&res, prefs, names, 15, &rnd);
	assert_int_equal(res.n, DNS_MAX_MX);
	assert_int_equal(res.mx[0].pref, 86);   /* the lowest kept, in order */
	assert_int_equal(res.mx[DNS_MAX_MX - 1].pref, 95);

	static const unsigned np[] = { 0 };
	static const char *const nn[] = { "" };
	build(&res, np, nn, 1, &rnd);
	assert_int_equal(res.status, DNS_PERMFAIL);
	assert_true(res.null_mx);
	assert_contains(res.reason, "null MX");

	/* A stray "." among real exchangers is ignored (RFC 7505 says a null
	 * MX stands alone). */
	static const unsigned mp[] = { 0, 10 };
	static const char *const mn[] = { "", "mx.example" };
	build(&res, mp, mn, 2, &rnd);
	assert_int_equal(res.status, DNS_OK);
	assert_false(res.null_mx);
	assert_int_equal(res.n, 1);
	assert_string_equal(res.mx[0].name, "mx.example");

	/* Only malformed records: nothing usable. */
	char bad[] = "\x00\x0a\xc0\x0c";
	char *data[] = { bad, NULL };
	int len[] = { 4 };
	memset(&res, 0, sizeof res);
	dns_mx_build(&res, data, len, 1, &rnd);
	assert_int_equal(res.status, DNS_PERMFAIL);
	assert_false(res.null_mx);
	assert_int_equal(res.n, 0);
}

static void test_literals_and_addrs(void **state)
{
	struct dns_addr a;
	char buf[64];
	struct sockaddr_storage ss;

	assert_int_equal(dns_parse_literal("[192.0.2.1]", &a), 0);
	assert_int_equal(a.family, AF_INET);
	dns_addr_format(&a, buf, sizeof buf);
	assert_string_equal(buf, "192.0.2.1");
	assert_int_equal(dns_addr_to_sockaddr(&a, 25, &ss), sizeof(struct sockaddr_in));
	assert_int_equal(ntohs(((struct sockaddr_in *)&ss)->sin_port), 25);
	assert_int_equal(dns_parse_literal("[IPv6:2001:db8::1]", &a), 0);
	assert_int_equal(a.family, AF_INET6);
	dns_addr_format(&a, buf, sizeof buf);
	assert_string_equal(buf, "2001:db8::1");
	assert_int_equal(dns_parse_literal("[::1]", &a), 0);
	assert_int_equal(dns_parse_literal("192.0.2.1", &a), -1);
	assert_int_equal(dns_parse_literal("[192.0.2.256]", &a), -1);
	assert_int_equal(dns_parse_literal("[]", &a), -1);
	assert_int_equal(dns_parse_literal("[IPv6:192.0.2.1]", &a), -1);
	assert_int_equal(dns_parse_addr_rdata((const uint8_t *)"\x7f\0\0\x01", 4, AF_INET, &a), 0);
	assert_int_equal(dns_parse_addr_rdata((const uint8_t *)"\x7f\0\0\x01", 4, AF_INET6, &a), -1);
	assert_int_equal(dns_parse_addr_rdata((const uint8_t *)"\x7f\0\0", 3, AF_INET, &a), -1);
	assert_true(dns_status_permanent(DNS_NXDOMAIN));
	assert_true(dns_status_permanent(DNS_PERMFAIL));
	assert_false(dns_status_permanent(DNS_TEMPFAIL));
}

/* ---- async, against a socket that never answers ---------------------- */

struct fixture {
	struct event_base *base;
	struct carrier_conf *conf;
	struct dns *dns;
	int hole;                       /* bound UDP socket that reads nothing */
	int calls;
	struct dns_hops hops;
};

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof *f);
	struct sockaddr_in sin = { .sin_family = AF_INET };
	socklen_t len = sizeof sin;
	struct conf_errors errs = { 0 };
	char text[256], err[256];

	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	f->hole = socket(AF_INET, SOCK_DGRAM, 0);
	assert_int_equal(bind(f->hole, (struct sockaddr *)&sin, sizeof sin), 0);
	assert_int_equal(getsockname(f->hole, (struct sockaddr *)&sin, &len), 0);
	snprintf(text, sizeof text, "[dns]\nforwarder = 127.0.0.1@%u\n", ntohs(sin.sin_port));
	f->conf = conf_load_string("test.conf", text, &errs);
	assert_non_null(f->conf);
	f->base = event_base_new();
	f->dns = dns_new(f->base, f->conf, NULL, err, sizeof err);
	if (f->dns == NULL)
		fail_msg("dns_new: %s", err);
	dns_set_timeout(f->dns, 300);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	dns_free(&f->dns);
	event_base_free(f->base);
	conf_free(&f->conf);
	close(f->hole);
	free(f);
	return 0;
}

static void on_hops(const struct dns_hops *h, void *arg)
{
	struct fixture *f = arg;

	f->calls++;
	f->hops = *h;
	event_base_loopbreak(f->base);
}

static void test_timeout_is_temporary(void **state)
{
	struct fixture *f = *state;
	struct dns_stats st;
	char err[256];
	struct counters_shm *shm = calloc(1, sizeof *shm);
	struct dns_req *r;
	struct timeval limit = { 5, 0 };

	dns_set_counters(f->dns, shm);
	r = dns_resolve_mail(f->dns, "slow.example", on_hops, f, err, sizeof err);
	assert_non_null(r);
	event_base_loopexit(f->base, &limit);
	event_base_dispatch(f->base);
	assert_int_equal(f->calls, 1);
	assert_int_equal(f->hops.status, DNS_TEMPFAIL);
	assert_false(dns_status_permanent(f->hops.status));
	assert_contains(f->hops.reason, "timeout");
	assert_contains(f->hops.reason, "MX slow.example");
	dns_get_stats(f->dns, &st);
	assert_int_equal(st.lookups, 1);
	assert_int_equal(st.timeouts, 1);
	assert_int_equal(st.in_flight, 0);
	assert_int_equal(shm->v[COUNTER_DNS_LOOKUPS], 1);
	assert_int_equal(shm->v[COUNTER_DNS_FAILURES], 1);
	dns_set_counters(f->dns, NULL);
	free(shm);
}

static void test_cancel_and_free_in_flight(void **state)
{
	struct fixture *f = *state;
	char err[256];
	struct dns_req *r1 = dns_resolve_mail(f->dns, "a.example", on_hops, f, err, sizeof err);
	struct dns_req *r2 = dns_resolve_host(f->dns, "b.example", on_hops, f, err, sizeof err);
	struct timeval wait = { 0, 500000 };
	struct dns_stats st;

	assert_non_null(r1);
	assert_non_null(r2);
	dns_get_stats(f->dns, &st);
	assert_int_equal(st.in_flight, 3);      /* MX; A and AAAA */
	dns_cancel(&r1);
	assert_null(r1);
	dns_cancel(&r1);                        /* harmless twice */
	event_base_loopexit(f->base, &wait);    /* past the 300 ms deadline */
	dns_cancel(&r2);
	event_base_dispatch(f->base);
	assert_int_equal(f->calls, 0);
	/* Freed with a lookup in flight: no callback, no leak (ASan). */
	assert_non_null(dns_lookup_mx(f->dns, "c.example", NULL, f, err, sizeof err));
}

static void test_invalid_names_refused(void **state)
{
	struct fixture *f = *state;
	char err[256];

	assert_null(dns_resolve_mail(f->dns, "bad..name", on_hops, f, err, sizeof err));
	assert_contains(err, "not a valid domain name");
	assert_null(dns_resolve_host(f->dns, "", on_hops, f, err, sizeof err));
	assert_null(dns_resolve_mail(f->dns, "[999.1.1.1]", on_hops, f, err, sizeof err));
	assert_contains(err, "not a valid address literal");
	assert_int_equal(f->calls, 0);
}

static void test_literal_domain(void **state)
{
	struct fixture *f = *state;
	char err[256];

	assert_non_null(dns_resolve_mail(f->dns, "[IPv6:::1]", on_hops, f, err, sizeof err));
	assert_int_equal(f->calls, 0);          /* never from inside the call */
	event_base_dispatch(f->base);
	assert_int_equal(f->calls, 1);
	assert_int_equal(f->hops.status, DNS_OK);
	assert_int_equal(f->hops.n_hosts, 1);
	assert_int_equal(f->hops.hosts[0].n_addrs, 1);
	assert_int_equal(f->hops.hosts[0].addrs[0].family, AF_INET6);
}

static void test_bad_forwarder(void **state)
{
	struct conf_errors errs = { 0 };
	struct carrier_conf *c = conf_load_string("test.conf", "[dns]\nforwarder = not-an-address\n", &errs);
	struct event_base *base = event_base_new();
	char err[256] = "";

	assert_non_null(c);
	assert_null(dns_new(base, c, NULL, err, sizeof err));
	assert_contains(err, "forwarder 'not-an-address'");
	conf_free(&c);
	c = conf_load_string("test.conf", "[dns]\nresolv_conf = /nonexistent/resolv.conf\n", &errs);
	assert_non_null(c);
	assert_null(dns_new(base, c, NULL, err, sizeof err));
	assert_contains(err, "/nonexistent/resolv.conf");
	conf_free(&c);
	event_base_free(base);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_name_ok),
		cmocka_unit_test(test_mx_rdata),
		cmocka_unit_test(test_mx_build_order),
		cmocka_unit_test(test_mx_build_limits_and_null),
		cmocka_unit_test(test_literals_and_addrs),
		cmocka_unit_test_setup_teardown(test_timeout_is_temporary, setup, teardown),
		cmocka_unit_test_setup_teardown(test_cancel_and_free_in_flight, setup, teardown),
		cmocka_unit_test_setup_teardown(test_invalid_names_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_literal_domain, setup, teardown),
		cmocka_unit_test(test_bad_forwarder),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
