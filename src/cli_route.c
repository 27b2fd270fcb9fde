/*
 * carrier route [-c FILE] [--dns] [--timeout SECONDS] ADDRESS
 *
 * Prints the routing decision for ADDRESS (or a bare domain): the matched
 * address space and its routes in try order with their costs and keys.
 * With --dns it also resolves them as a delivery would (MX, A/AAAA, with
 * the configured resolver) and prints every address in try order.  DNS is
 * opt-in so the plain command is instant, needs no network and shows the
 * table alone.
 *
 * Exit: 0 deliverable, 1 rejected (route reject) or would bounce (no such
 * domain, null MX), 75 temporary DNS failure (would be deferred), 2 usage
 * or configuration error.
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "cli.h"
#include "conf.h"
#include "dns.h"
#include "route.h"

#define EXIT_TEMPFAIL 75

struct route_opts {
	const char *config;
	bool dns;
	unsigned timeout_ms;
	const char *address;
};

static void route_usage(FILE *out)
{
	fprintf(out, "usage: carrier route [-c FILE] [--dns] [--timeout SECONDS] ADDRESS\n"
		     "  prints the address space, the routes in try order with costs and,\n"
		     "  with --dns, the hosts and addresses a delivery would try in order\n");
}

static int parse_opts(int argc, char **argv, struct route_opts *o)
{
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if ((!strcmp(a, "-c") || !strcmp(a, "--config")) && i + 1 < argc) {
			o->config = argv[++i];
		} else if (!strcmp(a, "--dns")) {
			o->dns = true;
		} else if (!strcmp(a, "--timeout") && i + 1 < argc) {
			char *end;
			double s = strtod(argv[++i], &end);
			if (*end != '\0' || s <= 0 || s > 600) {
				fprintf(stderr, "carrier route: --timeout wants seconds from 0 to 600\n");
				return -1;
			}
			o->timeout_ms = (unsigned)(s * 1000);
		} else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			route_usage(stdout);
			exit(0);
		} else if (a[0] == '-' || o->address != NULL) {
			route_usage(stderr);
			return -1;
		} else {
			o->address = a;
		}
	}
	if (o->address == NULL) {
		route_usage(stderr);
		return -1;
	}
	return 0;
}

static void print_decision(const char *address, const struct route_decision *d)
{
	printf("address: %s\n", address);
	printf("domain: %s\n", d->domain);
	if (!d->implicit)
		printf("space: %s\n", d->space);
	else if (strcmp(d->space, "*") == 0)
		printf("space: * (implicit: no [route *], mail goes by MX)\n");
	else
		printf("space: %s (implicit: local domain)\n", d->space);
	for (size_t i = 0; i < d->n; i++) {
		const struct route *r = &d->routes[i];
		printf("route %zu: cost %u %s (via %s", i + 1, r->cost, r->key, r->via);
		if (r->line)
			printf(", line %u", r->line);
		printf(")\n");
	}
}

static void print_addr(const struct route_addr *a, size_t n)
{
	char buf[INET6_ADDRSTRLEN] = "?";
	unsigned port;

	if (a->ss.ss_family == AF_INET) {
		const struct sockaddr_in *s4 = (const struct sockaddr_in *)&a->ss;
		inet_ntop(AF_INET, &s4->sin_addr, buf, sizeof buf);
		port = ntohs(s4->sin_port);
	} else {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&a->ss;
		inet_ntop(AF_INET6, &s6->sin6_addr, buf, sizeof buf);
		port = ntohs(s6->sin6_port);
	}
	if (a->pref)
		printf("  try %zu: %s (MX %u) %s%s%s:%u\n", n + 1, a->host, a->pref,
		       a->ss.ss_family == AF_INET6 ? "[" : "", buf,
		       a->ss.ss_family == AF_INET6 ? "]" : "", port);
	else
		printf("  try %zu: %s %s%s%s:%u\n", n + 1, a->host,
		       a->ss.ss_family == AF_INET6 ? "[" : "", buf,
		       a->ss.ss_family == AF_INET6 ? "]" : "", port);
}

static void print_target(size_t i, const struct route_target *tg, size_t *n_tries)
{
	const struct dns_hops *h = &tg->hops;

	printf("route %zu: %s: %s", i + 1, tg->route.key, dns_status_name(tg->status));
	if (tg->status != DNS_OK)
		printf(": %s", tg->reason);
	printf("\n");
	if (h->implicit_mx)
		printf("  no MX for %s: its own A/AAAA (RFC 5321 5.1)\n", h->name);
	if (strcmp(h->canonname, h->name) != 0 && h->canonname[0])
		printf("  %s is an alias (CNAME) of %s\n", h->name, h->canonname);
	for (size_t k = 0; k < h->n_hosts; k++) {
		const struct dns_host *host = &h->hosts[k];
		if (host->n_addrs > 0)
			continue;
		if (tg->route.kind == ROUTE_MX && !h->implicit_mx)
			printf("  host %s (MX %u): %s: %s\n", host->name, host->pref,
			       dns_status_name(host->status), host->reason);
		else
			printf("  host %s: %s: %s\n", host->name, dns_status_name(host->status),
			       host->reason);
	}
	for (size_t k = 0; k < tg->n_addrs; k++)
		print_addr(&tg->addrs[k], (*n_tries)++);
}

struct route_wait {
	struct event_base *base;
	struct route_resolution *res;
};

static void on_resolved(struct route_resolution *res, void *arg)
{
	struct route_wait *w = arg;

	w->res = res;
	event_base_loopbreak(w->base);
}

/* Exit status and the result line for a resolution. */
static int print_result(const struct route_resolution *res)
{
	size_t tries = 0;

	for (size_t i = 0; i < res->n; i++)
		print_target(i, &res->targets[i], &tries);
	for (size_t i = 0; i < res->n; i++) {
		const struct route_target *tg = &res->targets[i];
		if (tg->status != DNS_OK)
			continue;
		if (tg->route.kind == ROUTE_REJECT) {
			printf("result: rejected by route %zu (reject)\n", i + 1);
			return 1;
		}
		printf("result: deliverable by route %zu (%s)\n", i + 1, tg->route.key);
		return 0;
	}
	for (size_t i = 0; i < res->n; i++)
		if (res->targets[i].status == DNS_TEMPFAIL) {
			printf("result: temporary failure, delivery would be deferred: %s\n",
			       res->targets[i].reason);
			return EXIT_TEMPFAIL;
		}
	printf("result: permanent failure, %s: %s\n",
	       res->n && res->targets[0].null_mx ? "556 5.1.10 the domain accepts no mail"
						 : "the recipient would bounce",
	       res->n ? res->targets[0].reason : "no route");
	return 1;
}

static int resolve_and_print(const struct carrier_conf *conf, struct route_table *t,
			     const struct route_decision *d, unsigned timeout_ms)
{
	struct route_wait w = { 0 };
	struct dns *dns = NULL;
	struct route_req *rq;
	char err[512];
	int rc = 2;

	w.base = event_base_new();
	if (w.base == NULL) {
		fprintf(stderr, "carrier route: cannot create an event loop\n");
		return 2;
	}
	dns = dns_new(w.base, conf, NULL, err, sizeof err);
	if (dns == NULL) {
		fprintf(stderr, "carrier route: %s\n", err);
		goto out;
	}
	if (timeout_ms)
		dns_set_timeout(dns, timeout_ms);
	rq = route_resolve_async(t, dns, d, on_resolved, &w, err, sizeof err);
	if (rq == NULL) {
		fprintf(stderr, "carrier route: %s\n", err);
		goto out;
	}
	event_base_dispatch(w.base);
	if (w.res == NULL) {
		route_resolve_cancel(&rq);
		fprintf(stderr, "carrier route: the event loop stopped before the answer\n");
		goto out;
	}
	rc = print_result(w.res);
	route_resolution_free(&w.res);
out:
	dns_free(&dns);
	event_base_free(w.base);
	return rc;
}

int cli_route_main(int argc, char **argv)
{
	struct route_opts o = { 0 };
	struct conf_errors errs = { 0 };
	struct carrier_conf *conf;
	struct route_table *t = NULL;
	struct route_decision *d = NULL;
	const char *at;
	int rc = 2;

	if (parse_opts(argc, argv, &o) < 0)
		return 2;
	conf = conf_load(o.config, &errs);
	if (conf == NULL) {
		cli_print_conf_errors(NULL, &errs);
		conf_errors_clear(&errs);
		return 2;
	}
	t = route_table_new(conf, &errs);
	if (t == NULL) {
		cli_print_conf_errors(NULL, &errs);
		if (errs.n == 0)
			fprintf(stderr, "carrier route: out of memory\n");
		goto out;
	}
	at = strrchr(o.address, '@');
	d = route_lookup(t, at ? at + 1 : o.address);
	if (d == NULL) {
		fprintf(stderr, "carrier route: '%s' has no valid domain\n", o.address);
		goto out;
	}
	print_decision(o.address, d);
	if (o.dns) {
		rc = resolve_and_print(conf, t, d, o.timeout_ms);
	} else {
		rc = d->n > 0 && d->routes[0].kind == ROUTE_REJECT ? 1 : 0;
		printf("result: %s (add --dns to resolve the hosts)\n",
		       rc ? "rejected by route 1 (reject)" : "routed");
	}
out:
	route_decision_free(&d);
	route_table_free(&t);
	conf_errors_clear(&errs);
	conf_free(&conf);
	return rc;
}
