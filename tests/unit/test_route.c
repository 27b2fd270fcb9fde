/* Unit tests for route: matching, cost order, load sharing, implicit
 * rules, via syntax with FILE:LINE errors, next-hop keys, and resolution
 * of routes that need no DNS query (literals, lmtp unix, maildir). */
#include "test_util.h"

#include <arpa/inet.h>
#include <event2/event.h>

#include "conf.h"
#include "dns.h"
#include "route.h"

static const char *base_conf =
	"[server]\nlocal_domains = example.org\n"
	"[local]\nmaildir = /var/mail\n";

static struct carrier_conf *load(const char *routes)
{
	struct conf_errors errs = { 0 };
	char text[8192];
	struct carrier_conf *c;

	snprintf(text, sizeof text, "%s%s", base_conf, routes);
	c = conf_load_string("test.conf", text, &errs);
	if (c == NULL) {
		char line[512];
		conf_error_format(&errs.v[0], line, sizeof line);
		fail_msg("conf: %s", line);
	}
	conf_errors_clear(&errs);
	return c;
}

static struct route_table *table(struct carrier_conf **cp, const char *routes)
{
	struct conf_errors errs = { 0 };
	struct route_table *t;

	*cp = load(routes);
	t = route_table_new(*cp, &errs);
	if (t == NULL)
		fail_msg("route_table_new: %zu errors, first: %s", errs.n,
			 errs.n ? errs.v[0].problem : "(none)");
	return t;
}

static void assert_space(struct route_table *t, const char *domain, const char *want)
{
	struct route_decision *d = route_lookup(t, domain);

	if (d == NULL)
		fail_msg("route_lookup(%s) = NULL, want space %s", domain, want);
	if (strcmp(d->space, want) != 0)
		fail_msg("route_lookup(%s): got space %s, want %s", domain, d->space, want);
	route_decision_free(&d);
}

static void test_match_specificity(void **state)
{
	struct carrier_conf *c;
	struct route_table *t = table(&c,
		"[route example.net]\nvia = smtp:[10.0.0.1]:25\n"
		"[route *.example.net]\nvia = smtp:[10.0.0.2]:25\n"
		"[route *.a.example.net]\nvia = smtp:[10.0.0.3]:25\n"
		"[route *.net]\nvia = smtp:[10.0.0.4]:25\n"
		"[route *]\nvia = smtp:[10.0.0.5]:25\n");

	assert_space(t, "example.net", "example.net");
	assert_space(t, "EXAMPLE.net.", "example.net");
	assert_space(t, "b.example.net", "*.example.net");
	assert_space(t, "x.b.example.net", "*.example.net");
	assert_space(t, "x.a.example.net", "*.a.example.net");
	assert_space(t, "a.example.net", "*.example.net");  /* *.a... is for below a */
	assert_space(t, "other.net", "*.net");
	assert_space(t, "net", "*");
	assert_space(t, "example.com", "*");
	assert_space(t, "[192.0.2.1]", "*");
	assert_null(route_lookup(t, "bad..domain"));
	assert_null(route_lookup(t, "[not an address]"));
	route_table_free(&t);
	assert_null(t);
	conf_free(&c);
}

/* A reference outlives the owner's free (a reload while the queue reader
 * walks): the table goes with the last one (ASan checks both ways). */
static void test_table_ref(void **state)
{
	struct carrier_conf *c;
	struct route_table *t = table(&c, "[route example.net]\nvia = smtp:[10.0.0.1]:25\n");
	struct route_table *ref = route_table_ref(t);

	assert_ptr_equal(ref, t);
	route_table_free(&t);
	assert_null(t);
	assert_space(ref, "example.net", "example.net");
	route_table_free(&ref);
	assert_null(route_table_ref(NULL));
	conf_free(&c);
}

static void test_cost_order(void **state)
{
	struct carrier_conf *c;
	struct route_table *t = table(&c,
		"[route example.net]\nvia = smtp:[10.0.0.5]:25\ncost = 5\n"
		"[route example.net]\nvia = smtp:[10.0.0.1]:25\ncost = 1\nmax_connections = 7\n"
		"[route example.net]\nvia = mx\ncost = 3\n");
	struct route_decision *d = route_lookup(t, "example.net");

	assert_non_null(d);
	assert_int_equal(d->n, 3);
	assert_string_equal(d->routes[0].key, "smtp:[10.0.0.1]:25");
	assert_int_equal(d->routes[0].cost, 1);
	assert_int_equal(d->routes[0].max_connections, 7);
	assert_string_equal(d->routes[1].key, "mx:example.net");
	assert_int_equal(d->routes[1].cost, 3);
	assert_string_equal(d->routes[2].key, "smtp:[10.0.0.5]:25");
	assert_false(d->implicit);
	route_decision_free(&d);
	route_table_free(&t);
	conf_free(&c);
}

static void test_equal_cost_sharing(void **state)
{
	struct carrier_conf *c;
	struct route_table *t = table(&c,
		"[route example.net]\nvia = smtp:[10.0.0.1]:25\ncost = 1\n"
		"[route example.net]\nvia = smtp:[10.0.0.2]:25\ncost = 1\n"
		"[route example.net]\nvia = smtp:[10.0.0.9]:25\ncost = 9\n"
		"[route other.net]\nvia = smtp:[10.0.1.1]:25\n"
		"[route other.net]\nvia = smtp:[10.0.1.2]:25\n");
	unsigned first_a = 0, first_b = 0;

	for (int i = 0; i < 1000; i++) {
		struct route_decision *d = route_lookup(t, "example.net");
		/* Lookups of another space in between must not skew this one. */
		struct route_decision *o = route_lookup(t, "other.net");
		assert_int_equal(d->n, 3);
		if (strcmp(d->routes[0].key, "smtp:[10.0.0.1]:25") == 0) {
			first_a++;
			assert_string_equal(d->routes[1].key, "smtp:[10.0.0.2]:25");
		} else {
			first_b++;
			assert_string_equal(d->routes[0].key, "smtp:[10.0.0.2]:25");
			assert_string_equal(d->routes[1].key, "smtp:[10.0.0.1]:25");
		}
		assert_string_equal(d->routes[2].key, "smtp:[10.0.0.9]:25");
		route_decision_free(&d);
		route_decision_free(&o);
	}
	if (first_a < 400 || first_b < 400)
		fail_msg("equal costs not shared: got %u/%u first, want about 500 each", first_a, first_b);
	route_table_free(&t);
	conf_free(&c);
}

static void test_implicit_rules(void **state)
{
	struct carrier_conf *c;
	struct route_table *t = table(&c, "");
	struct route_decision *d = route_lookup(t, "Example.ORG");

	assert_string_equal(d->space, "example.org");
	assert_true(d->implicit);
	assert_int_equal(d->n, 1);
	assert_int_equal(d->routes[0].kind, ROUTE_MAILDIR);
	assert_string_equal(d->routes[0].key, "maildir:/var/mail");
	route_decision_free(&d);

	d = route_lookup(t, "gmail.example");
	assert_string_equal(d->space, "*");
	assert_true(d->implicit);
	assert_int_equal(d->routes[0].kind, ROUTE_MX);
	assert_string_equal(d->routes[0].target, "gmail.example");
	assert_string_equal(d->routes[0].key, "mx:gmail.example");
	route_decision_free(&d);
	route_table_free(&t);
	conf_free(&c);

	/* Explicit routes replace both implicit rules. */
	t = table(&c, "[route example.org]\nvia = lmtp:unix:/run/dovecot/lmtp\n"
		      "[route *]\nvia = smtp:[relay.example]:587\n");
	d = route_lookup(t, "example.org");
	assert_false(d->implicit);
	assert_string_equal(d->routes[0].key, "lmtp:unix:/run/dovecot/lmtp");
	route_decision_free(&d);
	d = route_lookup(t, "x.example");
	assert_false(d->implicit);
	assert_int_equal(d->n, 1);
	assert_string_equal(d->routes[0].key, "smtp:[relay.example]:587");
	route_decision_free(&d);
	route_table_free(&t);
	conf_free(&c);

	/* A *.parent route does not take a local domain's exact rule. */
	t = table(&c, "[route *.org]\nvia = reject\n");
	d = route_lookup(t, "example.org");
	assert_string_equal(d->routes[0].key, "maildir:/var/mail");
	route_decision_free(&d);
	d = route_lookup(t, "x.example.org");
	assert_string_equal(d->routes[0].key, "reject");
	route_decision_free(&d);
	route_table_free(&t);
	conf_free(&c);
}

static void test_via_errors_file_line(void **state)
{
	const char *text =
		"[local]\nmaildir = /var/mail\n"              /* 1-2 */
		"[route a.example]\n"                          /* 3 */
		"via = smtp:[10.0.0.1\n"                       /* 4 */
		"[route b.example]\n"                          /* 5 */
		"cost = 2\n"                                   /* 6 */
		"via = carrier-pigeon\n"                       /* 7 */
		"[route c.example]\n"                          /* 8 */
		"via = lmtp:[10.0.0.7]\n"                      /* 9 */
		"[route d.example]\n"                          /* 10 */
		"via = smtp:[10.0.0.1]:25\n";                  /* 11: fine */
	struct conf_errors errs = { 0 };
	struct carrier_conf *c = conf_load_string("test.conf", text, &errs);
	struct route_table *t;
	char line[512];

	assert_non_null(c);
	t = route_table_new(c, &errs);
	assert_null(t);
	assert_int_equal(errs.n, 3);
	assert_string_equal(errs.v[0].file, "test.conf");
	assert_int_equal(errs.v[0].line, 4);
	assert_string_equal(errs.v[0].key, "route a.example.via");
	assert_contains(errs.v[0].problem, "without ']'");
	assert_int_equal(errs.v[1].line, 7);
	assert_string_equal(errs.v[1].key, "route b.example.via");
	assert_contains(errs.v[1].problem, "unknown next hop 'carrier-pigeon'");
	assert_contains(errs.v[1].problem, "expected mx, smtp:[HOST]:PORT");
	assert_int_equal(errs.v[2].line, 9);
	assert_contains(errs.v[2].problem, "port is required");
	conf_error_format(&errs.v[1], line, sizeof line);
	assert_contains(line, "test.conf:7: route b.example.via: unknown next hop");
	conf_errors_clear(&errs);
	conf_free(&c);
}

struct via_case {
	const char *via;
	int ok;
	enum route_kind kind;
	const char *key;
	unsigned port;
};

static void test_via_syntax_and_keys(void **state)
{
	static const struct via_case cases[] = {
		{ "mx", 1, ROUTE_MX, "mx:", 25 },
		{ "MX", 1, ROUTE_MX, "mx:", 25 },
		{ "smtp:[10.0.0.5]:25", 1, ROUTE_SMTP, "smtp:[10.0.0.5]:25", 25 },
		{ "smtp:[10.0.0.5]", 1, ROUTE_SMTP, "smtp:[10.0.0.5]:25", 25 },
		{ "smtp:[IPv6:2001:DB8:0::1]:2525", 1, ROUTE_SMTP, "smtp:[2001:db8::1]:2525", 2525 },
		{ "smtp:[::1]:25", 1, ROUTE_SMTP, "smtp:[::1]:25", 25 },
		{ "smtp:[Relay.Example.COM]:587", 1, ROUTE_SMTP, "smtp:[relay.example.com]:587", 587 },
		{ "smtp:Example.COM", 1, ROUTE_MX, "mx:example.com", 25 },
		{ "smtp:example.com:2525", 1, ROUTE_MX, "mx:example.com:2525", 2525 },
		{ "lmtp:unix:/run/dovecot/lmtp", 1, ROUTE_LMTP_UNIX, "lmtp:unix:/run/dovecot/lmtp", 25 },
		{ "lmtp:[127.0.0.1]:24", 1, ROUTE_LMTP_INET, "lmtp:[127.0.0.1]:24", 24 },
		{ "lmtp:mailstore.example:24", 1, ROUTE_LMTP_INET, "lmtp:[mailstore.example]:24", 24 },
		{ "maildir:/var/mail", 1, ROUTE_MAILDIR, "maildir:/var/mail", 25 },
		{ "discard", 1, ROUTE_DISCARD, "discard", 25 },
		{ "reject", 1, ROUTE_REJECT, "reject", 25 },
		{ "smtp:[10.0.0.5", 0, 0, NULL, 0 },
		{ "smtp:[10.0.0.5]x", 0, 0, NULL, 0 },
		{ "smtp:[10.0.0.5]:0", 0, 0, NULL, 0 },
		{ "smtp:[10.0.0.5]:65536", 0, 0, NULL, 0 },
		{ "smtp:[10.0.0.5]:2x", 0, 0, NULL, 0 },
		{ "smtp:10.0.0.5", 0, 0, NULL, 0 },
		{ "smtp:bad..name", 0, 0, NULL, 0 },
		{ "smtp:", 0, 0, NULL, 0 },
		{ "smtp:[]:25", 0, 0, NULL, 0 },
		{ "lmtp:[10.0.0.7]", 0, 0, NULL, 0 },
		{ "lmtp:unix:relative/path", 0, 0, NULL, 0 },
		{ "maildir:var/mail", 0, 0, NULL, 0 },
		{ "", 0, 0, NULL, 0 },
		{ "uucp:host", 0, 0, NULL, 0 },
	};

	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		const struct via_case *k = &cases[i];
		struct route r = { 0 };
		char err[512] = "";
		int rc = route_parse_via(k->via, &r, err, sizeof err);
		if (k->ok && rc != 0)
			fail_msg("via '%s': got error '%s', want key %s", k->via, err, k->key);
		if (!k->ok && rc == 0)
			fail_msg("via '%s': got key %s, want an error", k->via, r.key);
		if (!k->ok) {
			if (err[0] == '\0')
				fail_msg("via '%s': error without a reason", k->via);
			continue;
		}
		if (r.kind != k->kind || strcmp(r.key, k->key) != 0 || r.port != k->port)
			fail_msg("via '%s': got kind %s key %s port %u, want %s %s %u", k->via,
				 route_kind_name(r.kind), r.key, r.port, route_kind_name(k->kind),
				 k->key, k->port);
	}
}

static void test_too_many_routes(void **state)
{
	char text[8192] = "";
	struct conf_errors errs = { 0 };
	struct carrier_conf *c;

	for (int i = 0; i < ROUTE_MAX_PER_SPACE + 1; i++)
		snprintf(text + strlen(text), sizeof text - strlen(text),
			 "[route x.example]\nvia = smtp:[10.0.0.%d]\n", i + 1);
	c = load(text);
	assert_null(route_table_new(c, &errs));
	assert_int_equal(errs.n, 1);
	assert_contains(errs.v[0].problem, "more than 16 routes");
	conf_errors_clear(&errs);
	conf_free(&c);
}

/* ---- resolution without a DNS query -------------------------------- */

struct got {
	int calls;
	struct route_resolution *res;
	struct event_base *base;
};

static void on_res(struct route_resolution *res, void *arg)
{
	struct got *g = arg;

	g->calls++;
	g->res = res;
	event_base_loopbreak(g->base);
}

static void test_resolve_literals(void **state)
{
	struct carrier_conf *c;
	struct route_table *t = table(&c,
		"[route example.net]\nvia = smtp:[192.0.2.7]:2525\ncost = 1\n"
		"[route example.net]\nvia = smtp:[IPv6:2001:db8::7]\ncost = 2\n"
		"[route example.net]\nvia = lmtp:unix:/run/lmtp\ncost = 3\n"
		"[route example.net]\nvia = reject\ncost = 4\n"
		"[dns]\nforwarder = 127.0.0.1@1\n");
	struct got g = { 0 };
	struct dns *dns;
	struct route_decision *d = route_lookup(t, "example.net");
	struct route_req *rq;
	char err[256];
	const struct sockaddr_in *s4;
	const struct sockaddr_in6 *s6;
	char buf[INET6_ADDRSTRLEN];

	g.base = event_base_new();
	dns = dns_new(g.base, c, NULL, err, sizeof err);
	assert_non_null(dns);
	rq = route_resolve_async(t, dns, d, on_res, &g, err, sizeof err);
	assert_non_null(rq);
	route_decision_free(&d);        /* the request has its own copy */
	route_table_free(&t);           /* and does not need the table */
	assert_int_equal(g.calls, 0);   /* never from inside the call */
	event_base_dispatch(g.base);
	assert_int_equal(g.calls, 1);
	assert_int_equal(g.res->status, DNS_OK);
	assert_int_equal(g.res->n, 4);
	assert_int_equal(g.res->targets[0].n_addrs, 1);
	s4 = (const struct sockaddr_in *)&g.res->targets[0].addrs[0].ss;
	assert_int_equal(s4->sin_family, AF_INET);
	assert_int_equal(ntohs(s4->sin_port), 2525);
	assert_string_equal(inet_ntop(AF_INET, &s4->sin_addr, buf, sizeof buf), "192.0.2.7");
	s6 = (const struct sockaddr_in6 *)&g.res->targets[1].addrs[0].ss;
	assert_int_equal(s6->sin6_family, AF_INET6);
	assert_int_equal(ntohs(s6->sin6_port), 25);
	assert_string_equal(inet_ntop(AF_INET6, &s6->sin6_addr, buf, sizeof buf), "2001:db8::7");
	assert_int_equal(g.res->targets[2].status, DNS_OK);
	assert_int_equal(g.res->targets[2].n_addrs, 0);
	assert_int_equal(g.res->targets[3].route.kind, ROUTE_REJECT);
	route_resolution_free(&g.res);
	assert_null(g.res);

	/* Cancelled before the loop runs: no callback, nothing leaks. */
	conf_free(&c);
	t = table(&c, "");
	conf_free(&c);
	d = route_lookup(t, "[192.0.2.8]");
	rq = route_resolve_async(t, dns, d, on_res, &g, err, sizeof err);
	assert_non_null(rq);
	route_resolve_cancel(&rq);
	assert_null(rq);
	event_base_loop(g.base, EVLOOP_NONBLOCK);
	assert_int_equal(g.calls, 1);
	route_decision_free(&d);
	route_table_free(&t);
	dns_free(&dns);
	event_base_free(g.base);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_match_specificity),
		cmocka_unit_test(test_table_ref),
		cmocka_unit_test(test_cost_order),
		cmocka_unit_test(test_equal_cost_sharing),
		cmocka_unit_test(test_implicit_rules),
		cmocka_unit_test(test_via_errors_file_line),
		cmocka_unit_test(test_via_syntax_and_keys),
		cmocka_unit_test(test_too_many_routes),
		cmocka_unit_test(test_resolve_literals),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
