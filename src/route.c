/*
 * route: the routing table (address spaces -> routes with costs), the
 * next-hop syntax, decisions, and their resolution into addresses.
 *
 * Threads: route_lookup() on any thread (the only mutable state is each
 * space's atomic load-sharing counter); route_resolve_async() and its
 * callbacks on the loop thread of the dns handle.
 */
#include "route.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "conf.h"
#include "evlog.h"

struct route_space {
	char name[DNS_NAME_MAX + 3];    /* "example.net", "*.example.net", "*" */
	bool implicit;
	size_t n;
	struct route routes[ROUTE_MAX_PER_SPACE];  /* by cost, then file order */
	atomic_ulong turn;              /* decisions so far: equal-cost rotation */
};

struct route_table {
	struct route_space *spaces;
	size_t n;
	struct evlog *log;
	char myname[DNS_NAME_MAX + 1];  /* server.hostname: MX loop detection */
	atomic_uint refs;               /* route_table_ref(); freed at 0 */
};

const char *route_kind_name(enum route_kind kind)
{
	switch (kind) {
	case ROUTE_SMTP: return "smtp";
	case ROUTE_MX: return "mx";
	case ROUTE_LMTP_UNIX: return "lmtp-unix";
	case ROUTE_LMTP_INET: return "lmtp";
	case ROUTE_MAILDIR: return "maildir";
	case ROUTE_DISCARD: return "discard";
	case ROUTE_REJECT: return "reject";
	}
	return "?";
}

static void lower(char *s)
{
	for (; *s; s++)
		*s = (char)tolower((unsigned char)*s);
}

/* "25" -> 25; 1..65535 only. */
static int parse_port(const char *s, uint16_t *port_r)
{
	unsigned long v = 0;

	if (*s == '\0' || strlen(s) > 5)
		return -1;
	for (; *s; s++) {
		if (!isdigit((unsigned char)*s))
			return -1;
		v = v * 10 + (unsigned long)(*s - '0');
	}
	if (v == 0 || v > 65535)
		return -1;
	*port_r = (uint16_t)v;
	return 0;
}

/* A host in brackets or bare: an IPv4/IPv6 literal (kept in canonical
 * text form) or a host name (lower case). */
static int parse_host(const char *h, char *out, size_t size)
{
	struct in6_addr a6;
	struct in_addr a4;

	if (strncasecmp(h, "IPv6:", 5) == 0)
		h += 5;
	if (inet_pton(AF_INET, h, &a4) == 1) {
		inet_ntop(AF_INET, &a4, out, (socklen_t)size);
		return 0;
	}
	if (inet_pton(AF_INET6, h, &a6) == 1) {
		inet_ntop(AF_INET6, &a6, out, (socklen_t)size);
		return 0;
	}
	if (!dns_name_ok(h) || strlen(h) >= size)
		return -1;
	snprintf(out, size, "%s", h);
	if (out[strlen(out) - 1] == '.')
		out[strlen(out) - 1] = '\0';
	lower(out);
	return 0;
}

/* "[host]:port", "[host]", "host:port" or "host" (IPv6 only in brackets).
 * need_port: the port is required. */
static int parse_hostport(const char *s, char *host, size_t size, uint16_t *port_r,
			  bool need_port, char *err, size_t errlen)
{
	char buf[ROUTE_TARGET_MAX + 16];
	const char *port = NULL;
	char *h = buf;

	if (strlen(s) >= sizeof buf) {
		snprintf(err, errlen, "host too long");
		return -1;
	}
	snprintf(buf, sizeof buf, "%s", s);
	if (buf[0] == '[') {
		char *close = strchr(buf, ']');
		if (close == NULL) {
			snprintf(err, errlen, "'[' without ']'");
			return -1;
		}
		*close = '\0';
		h = buf + 1;
		if (close[1] == ':')
			port = close + 2;
		else if (close[1] != '\0') {
			snprintf(err, errlen, "unexpected '%s' after ']'", close + 1);
			return -1;
		}
	} else {
		char *colon = strrchr(buf, ':');
		if (colon) {
			*colon = '\0';
			port = colon + 1;
		}
	}
	if (parse_host(h, host, size) < 0) {
		snprintf(err, errlen, "'%s' is neither an IP address nor a host name", h);
		return -1;
	}
	if (port == NULL && need_port) {
		snprintf(err, errlen, "a port is required");
		return -1;
	}
	if (port != NULL && parse_port(port, port_r) < 0) {
		snprintf(err, errlen, "'%s' is not a port from 1 to 65535", port);
		return -1;
	}
	return 0;
}

static bool is_literal(const char *host)
{
	return strchr(host, ':') != NULL || inet_pton(AF_INET, host, &(struct in_addr){ 0 }) == 1;
}

static void make_key(struct route *r)
{
	switch (r->kind) {
	case ROUTE_SMTP:
	case ROUTE_LMTP_INET:
		snprintf(r->key, sizeof r->key, "%s:[%s]:%u",
			 r->kind == ROUTE_SMTP ? "smtp" : "lmtp", r->target, r->port);
		break;
	case ROUTE_MX:
		if (r->port == 25)
			snprintf(r->key, sizeof r->key, "mx:%s", r->target);
		else
			snprintf(r->key, sizeof r->key, "mx:%s:%u", r->target, r->port);
		break;
	case ROUTE_LMTP_UNIX:
		snprintf(r->key, sizeof r->key, "lmtp:unix:%s", r->target);
		break;
	case ROUTE_MAILDIR:
		snprintf(r->key, sizeof r->key, "maildir:%s", r->target);
		break;
	case ROUTE_DISCARD:
	case ROUTE_REJECT:
		snprintf(r->key, sizeof r->key, "%s", route_kind_name(r->kind));
		break;
	}
}

#define VIA_EXPECTED "expected mx, smtp:[HOST]:PORT, smtp:DOMAIN, lmtp:unix:/PATH, lmtp:[HOST]:PORT, maildir:/PATH, discard or reject"

static int parse_path(const char *p, struct route *r, const char *what, char *err, size_t errlen)
{
	if (p[0] != '/' || strlen(p) >= sizeof r->target) {
		snprintf(err, errlen, "%s needs an absolute path, got '%s'", what, p);
		return -1;
	}
	snprintf(r->target, sizeof r->target, "%s", p);
	return 0;
}

int route_parse_via(const char *via, struct route *r, char *err, size_t errlen)
{
	char why[200];

	r->target[0] = '\0';
	r->port = 25;
	snprintf(r->via, sizeof r->via, "%s", via);
	if (strcasecmp(via, "mx") == 0) {
		r->kind = ROUTE_MX;
	} else if (strcasecmp(via, "discard") == 0) {
		r->kind = ROUTE_DISCARD;
	} else if (strcasecmp(via, "reject") == 0) {
		r->kind = ROUTE_REJECT;
	} else if (strncasecmp(via, "smtp:", 5) == 0) {
		const char *rest = via + 5;
		r->kind = rest[0] == '[' ? ROUTE_SMTP : ROUTE_MX;
		if (r->kind == ROUTE_MX && strchr(rest, ':') == NULL && !dns_name_ok(rest)) {
			snprintf(err, errlen, "'%s': '%s' is not a domain (%s)", via, rest, VIA_EXPECTED);
			return -1;
		}
		if (parse_hostport(rest, r->target, sizeof r->target, &r->port, false,
				   why, sizeof why) < 0) {
			snprintf(err, errlen, "'%s': %s (%s)", via, why, VIA_EXPECTED);
			return -1;
		}
		if (r->kind == ROUTE_MX && is_literal(r->target)) {
			snprintf(err, errlen, "'%s': an address needs brackets: smtp:[%s]", via, r->target);
			return -1;
		}
	} else if (strncasecmp(via, "lmtp:unix:", 10) == 0) {
		r->kind = ROUTE_LMTP_UNIX;
		if (parse_path(via + 10, r, "lmtp:unix:", err, errlen) < 0)
			return -1;
	} else if (strncasecmp(via, "lmtp:", 5) == 0) {
		r->kind = ROUTE_LMTP_INET;
		if (parse_hostport(via + 5, r->target, sizeof r->target, &r->port, true,
				   why, sizeof why) < 0) {
			snprintf(err, errlen, "'%s': %s (expected lmtp:[HOST]:PORT or lmtp:unix:/PATH)", via, why);
			return -1;
		}
	} else if (strncasecmp(via, "maildir:", 8) == 0) {
		r->kind = ROUTE_MAILDIR;
		if (parse_path(via + 8, r, "maildir:", err, errlen) < 0)
			return -1;
	} else {
		snprintf(err, errlen, "unknown next hop '%s' (%s)", via, VIA_EXPECTED);
		return -1;
	}
	make_key(r);
	return 0;
}

/* ---- the table -------------------------------------------------------- */

static struct route_space *space_find(const struct route_table *t, const char *name)
{
	for (size_t i = 0; i < t->n; i++)
		if (strcmp(t->spaces[i].name, name) == 0)
			return &t->spaces[i];
	return NULL;
}

static struct route_space *space_add(struct route_table *t, const char *name, bool implicit)
{
	struct route_space *s = space_find(t, name);
	struct route_space *v;

	if (s)
		return s;
	v = realloc(t->spaces, (t->n + 1) * sizeof *v);
	if (v == NULL)
		return NULL;
	t->spaces = v;
	s = &t->spaces[t->n++];
	memset(s, 0, sizeof *s);
	snprintf(s->name, sizeof s->name, "%s", name);
	lower(s->name);
	s->implicit = implicit;
	atomic_init(&s->turn, 0);
	return s;
}

static void push_error_key(struct conf_errors *errs, const struct carrier_conf *conf,
			   unsigned line, const char *space, const char *field,
			   const char *problem)
{
	struct conf_error *v = realloc(errs->v, (errs->n + 1) * sizeof *v);
	char key[DNS_NAME_MAX + 20];

	if (v == NULL)
		return;
	errs->v = v;
	snprintf(key, sizeof key, "route %s.%s", space, field);
	v[errs->n].file = strdup(conf->path ? conf->path : "<embedded>");
	v[errs->n].line = line;
	v[errs->n].key = strdup(key);
	v[errs->n].problem = strdup(problem);
	errs->n++;
}

static void push_error(struct conf_errors *errs, const struct carrier_conf *conf,
		       unsigned line, const char *space, const char *problem)
{
	push_error_key(errs, conf, line, space, "via", problem);
}

/* Outbound TLS policies a route may name ("" = the default, may). */
static bool tls_policy_ok(const char *p)
{
	static const char *const ok[] = { "", "none", "may", "encrypt", "verify" };

	for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
		if (strcmp(p, ok[i]) == 0)
			return true;
	return false;
}

/* Insertion by cost keeps file order among equal costs. */
static void space_insert(struct route_space *s, const struct route *r)
{
	size_t j = s->n++;

	while (j > 0 && s->routes[j - 1].cost > r->cost) {
		s->routes[j] = s->routes[j - 1];
		j--;
	}
	s->routes[j] = *r;
}

static int add_conf_routes(struct route_table *t, const struct carrier_conf *conf,
			   struct conf_errors *errs)
{
	int bad = 0;

	for (size_t i = 0; i < conf->n_routes; i++) {
		const struct conf_route *cr = &conf->routes[i];
		unsigned line = cr->via_line ? cr->via_line : cr->line;
		struct route r = { 0 };
		char err[512];
		struct route_space *s;

		if (route_parse_via(cr->via ? cr->via : "", &r, err, sizeof err) < 0) {
			push_error(errs, conf, line, cr->space, err);
			bad++;
			continue;
		}
		r.cost = cr->cost;
		r.max_connections = cr->max_connections;
		r.max_rate = cr->max_rate;
		snprintf(r.tls, sizeof r.tls, "%s", cr->tls ? cr->tls : "");
		if (!tls_policy_ok(r.tls)) {
			snprintf(err, sizeof err, "'%s' is not a TLS policy (expected none, may, encrypt or verify)",
				 r.tls);
			push_error_key(errs, conf, cr->line, cr->space, "tls", err);
			bad++;
			continue;
		}
		r.line = cr->line;
		if ((s = space_add(t, cr->space, false)) == NULL)
			return -1;
		if (s->n == ROUTE_MAX_PER_SPACE) {
			snprintf(err, sizeof err, "more than %d routes for [route %s]",
				 ROUTE_MAX_PER_SPACE, cr->space);
			push_error(errs, conf, line, cr->space, err);
			bad++;
			continue;
		}
		space_insert(s, &r);
	}
	return bad;
}

/* An implicit rule for `space` unless the configuration has one. */
static int add_implicit(struct route_table *t, const char *space, const struct route *r)
{
	struct route_space *s;

	if (space_find(t, space))
		return 0;
	if ((s = space_add(t, space, true)) == NULL)
		return -1;
	space_insert(s, r);
	return 0;
}

struct route_table *route_table_new(const struct carrier_conf *conf, struct conf_errors *errs)
{
	struct route_table *t = calloc(1, sizeof *t);
	struct route local = { 0 }, mx = { 0 };
	char err[64];
	int bad;

	if (t == NULL)
		return NULL;
	atomic_init(&t->refs, 1);
	if (conf->hostname && conf->hostname[0])
		snprintf(t->myname, sizeof t->myname, "%s", conf->hostname);
	else if (gethostname(t->myname, sizeof t->myname) != 0)
		t->myname[0] = '\0';
	t->myname[sizeof t->myname - 1] = '\0';
	lower(t->myname);
	if (t->myname[0] && t->myname[strlen(t->myname) - 1] == '.')
		t->myname[strlen(t->myname) - 1] = '\0';
	bad = add_conf_routes(t, conf, errs);
	if (bad != 0) {
		route_table_free(&t);
		return NULL;
	}
	/* local.maildir as configured (it may be relative in a developer's
	 * setup), not through the via syntax, which wants an absolute path. */
	local.kind = ROUTE_MAILDIR;
	snprintf(local.target, sizeof local.target, "%s", conf->maildir_path ? conf->maildir_path : "");
	snprintf(local.via, sizeof local.via, "maildir:%s", local.target);
	make_key(&local);
	for (size_t i = 0; i < conf->n_local_domains; i++) {
		char dom[DNS_NAME_MAX + 3];
		snprintf(dom, sizeof dom, "%s", conf->local_domains[i]);
		lower(dom);
		if (add_implicit(t, dom, &local) < 0)
			goto oom;
	}
	route_parse_via("mx", &mx, err, sizeof err);
	if (add_implicit(t, "*", &mx) < 0)
		goto oom;
	return t;
oom:
	route_table_free(&t);
	return NULL;
}

void route_table_free(struct route_table **tp)
{
	struct route_table *t = *tp;

	if (t == NULL)
		return;
	*tp = NULL;
	if (atomic_fetch_sub(&t->refs, 1) != 1)
		return;
	free(t->spaces);
	free(t);
}

struct route_table *route_table_ref(struct route_table *t)
{
	if (t != NULL)
		atomic_fetch_add(&t->refs, 1);
	return t;
}

void route_table_set_log(struct route_table *t, struct evlog *log)
{
	t->log = log;
}

/* Most specific space for `domain`: exact, longest "*.suffix", "*". */
static struct route_space *match(struct route_table *t, const char *domain)
{
	char wild[DNS_NAME_MAX + 5];
	struct route_space *s = space_find(t, domain);

	if (s || domain[0] == '[')
		return s ? s : space_find(t, "*");
	for (const char *p = strchr(domain, '.'); p; p = strchr(p + 1, '.')) {
		snprintf(wild, sizeof wild, "*%s", p);
		if ((s = space_find(t, wild)) != NULL)
			return s;
	}
	return space_find(t, "*");
}

/* Rotates each run of equal cost by `turn` (load sharing). */
static void rotate_equal_costs(struct route *v, size_t n, unsigned long turn)
{
	struct route tmp[ROUTE_MAX_PER_SPACE];

	for (size_t s = 0; s < n;) {
		size_t e = s + 1;
		while (e < n && v[e].cost == v[s].cost)
			e++;
		size_t len = e - s, k = (size_t)(turn % len);
		if (k != 0) {
			for (size_t i = 0; i < len; i++)
				tmp[i] = v[s + (i + k) % len];
			memcpy(&v[s], tmp, len * sizeof *tmp);
		}
		s = e;
	}
}

struct route_decision *route_lookup(struct route_table *t, const char *domain)
{
	struct route_decision *d;
	struct route_space *s;
	struct dns_addr lit;
	size_t len = strlen(domain);

	if (domain[0] == '[' ? dns_parse_literal(domain, &lit) < 0 : !dns_name_ok(domain))
		return NULL;
	if ((d = calloc(1, sizeof *d)) == NULL)
		return NULL;
	snprintf(d->domain, sizeof d->domain, "%.*s", (int)(len > 0 && domain[len - 1] == '.'
							     ? len - 1 : len), domain);
	if (domain[0] != '[')
		lower(d->domain);
	s = match(t, d->domain);
	if (s == NULL) {                /* cannot happen: "*" is always there */
		free(d);
		return NULL;
	}
	snprintf(d->space, sizeof d->space, "%s", s->name);
	d->implicit = s->implicit;
	d->n = s->n;
	memcpy(d->routes, s->routes, s->n * sizeof *s->routes);
	rotate_equal_costs(d->routes, d->n, atomic_fetch_add(&s->turn, 1));
	for (size_t i = 0; i < d->n; i++) {
		struct route *r = &d->routes[i];
		if (r->kind == ROUTE_MX && r->target[0] == '\0') {
			snprintf(r->target, sizeof r->target, "%s", d->domain);
			make_key(r);
		}
	}
	return d;
}

void route_decision_free(struct route_decision **dp)
{
	free(*dp);
	*dp = NULL;
}

/* ---- resolution ------------------------------------------------------- */

struct route_slot {
	struct route_req *req;
	size_t i;
	struct dns_req *dreq;
};

struct route_req {
	struct evlog *log;
	char myname[DNS_NAME_MAX + 1];
	struct dns *dns;
	route_resolved_cb cb;
	void *arg;
	unsigned pending;
	struct event *defer;
	struct route_resolution *res;
	struct route_slot slots[ROUTE_MAX_PER_SPACE];
};

void route_resolution_free(struct route_resolution **resp)
{
	if (*resp == NULL)
		return;
	free((*resp)->targets);
	free(*resp);
	*resp = NULL;
}

/* Flattens the hops into addresses with the route's port. */
static void target_fill(struct route_target *tg, const struct dns_hops *h)
{
	tg->hops = *h;
	tg->status = h->status;
	tg->null_mx = h->null_mx;
	snprintf(tg->reason, sizeof tg->reason, "%s", h->reason);
	tg->n_addrs = 0;
	for (size_t i = 0; i < tg->hops.n_hosts; i++) {
		const struct dns_host *host = &tg->hops.hosts[i];
		for (size_t k = 0; k < host->n_addrs; k++) {
			struct route_addr *a = &tg->addrs[tg->n_addrs++];
			a->len = dns_addr_to_sockaddr(&host->addrs[k], tg->route.port, &a->ss);
			a->host = host->name;
			a->pref = host->pref;
		}
	}
}

static void req_finish(struct route_req *rq)
{
	struct route_resolution *res = rq->res;
	bool ok = false, temp = false;
	size_t addrs = 0;
	char first[DNS_NAME_MAX + 64] = "-";

	for (size_t i = 0; i < res->n; i++) {
		const struct route_target *tg = &res->targets[i];
		ok |= tg->status == DNS_OK;
		temp |= tg->status == DNS_TEMPFAIL;
		if (tg->status != DNS_OK)
			evlog_emit(rq->log, EV_ROUTE_UNRESOLVED, EVF_S("domain", res->decision.domain),
				   EVF_S("hop", tg->route.key), EVF_S("status", dns_status_name(tg->status)),
				   EVF_S("reason", tg->reason));
		if (addrs == 0 && tg->n_addrs > 0) {
			char a[INET6_ADDRSTRLEN] = "?";
			const struct sockaddr_storage *ss = &tg->addrs[0].ss;
			if (ss->ss_family == AF_INET)
				inet_ntop(AF_INET, &((const struct sockaddr_in *)ss)->sin_addr, a, sizeof a);
			else
				inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)ss)->sin6_addr, a, sizeof a);
			snprintf(first, sizeof first, "%s [%s]", tg->addrs[0].host, a);
		}
		addrs += tg->n_addrs;
	}
	res->status = ok ? DNS_OK : temp ? DNS_TEMPFAIL : DNS_PERMFAIL;
	evlog_emit(rq->log, EV_ROUTE_RESOLVED, EVF_S("domain", res->decision.domain),
		   EVF_S("space", res->decision.space), EVF_I("routes", res->n),
		   EVF_I("addrs", addrs), EVF_S("first", first));
	rq->res = NULL;
	rq->cb(res, rq->arg);
	if (rq->defer)
		event_free(rq->defer);
	free(rq);
}

/*
 * RFC 5321 5.1: when this host is one of the exchangers, only those more
 * preferred than it may be tried (the others would send the mail back
 * here); none left means the mail loops (Postfix: "mail for X loops back
 * to myself"), a permanent failure.
 */
static void prune_self(struct dns_hops *h, const char *myname)
{
	unsigned mine = UINT32_MAX;
	size_t o = 0;

	if (myname[0] == '\0' || h->implicit_mx || h->status != DNS_OK)
		return;
	for (size_t i = 0; i < h->n_hosts; i++)
		if (strcmp(h->hosts[i].name, myname) == 0 && h->hosts[i].pref < mine)
			mine = h->hosts[i].pref;
	if (mine == UINT32_MAX)
		return;
	for (size_t i = 0; i < h->n_hosts; i++)
		if (h->hosts[i].pref < mine)
			h->hosts[o++] = h->hosts[i];
	h->n_hosts = o;
	for (size_t i = 0; i < o; i++)
		if (h->hosts[i].n_addrs > 0)
			return;
	if (o == 0) {
		h->status = DNS_PERMFAIL;
		snprintf(h->reason, sizeof h->reason,
			 "mail for %s loops back to myself (%s is its best MX)", h->name, myname);
		return;
	}
	h->status = DNS_PERMFAIL;
	for (size_t i = 0; i < o; i++)
		if (h->hosts[i].status == DNS_TEMPFAIL)
			h->status = DNS_TEMPFAIL;
	snprintf(h->reason, sizeof h->reason,
		 "%s: no exchanger more preferred than myself (%s) has an address", h->name, myname);
}

static void on_hops(const struct dns_hops *h, void *arg)
{
	struct route_slot *sl = arg;
	struct route_req *rq = sl->req;
	struct dns_hops *copy = malloc(sizeof *copy);

	sl->dreq = NULL;
	if (copy != NULL) {
		*copy = *h;
		if (rq->res->targets[sl->i].route.kind == ROUTE_MX)
			prune_self(copy, rq->myname);
		h = copy;
	}
	target_fill(&rq->res->targets[sl->i], h);
	free(copy);
	if (--rq->pending == 0)
		req_finish(rq);
}

static void on_defer(evutil_socket_t fd, short what, void *arg)
{
	req_finish(arg);
}

/* Starts the lookup for target i, or fills it at once. */
static void target_start(struct route_req *rq, size_t i)
{
	struct route_target *tg = &rq->res->targets[i];
	struct route_slot *sl = &rq->slots[i];
	char err[DNS_REASON_MAX];
	char lit[ROUTE_TARGET_MAX + 8];
	struct dns_hops *h;

	tg->status = DNS_OK;
	if (tg->route.kind != ROUTE_SMTP && tg->route.kind != ROUTE_MX &&
	    tg->route.kind != ROUTE_LMTP_INET)
		return;
	sl->req = rq;
	sl->i = i;
	if (tg->route.kind != ROUTE_MX && is_literal(tg->route.target)) {
		snprintf(lit, sizeof lit, "[%s]", tg->route.target);
		if ((h = calloc(1, sizeof *h)) == NULL) {
			tg->status = DNS_TEMPFAIL;
			snprintf(tg->reason, sizeof tg->reason, "out of memory");
			return;
		}
		h->status = DNS_OK;
		h->n_hosts = 1;
		snprintf(h->name, sizeof h->name, "%s", tg->route.target);
		snprintf(h->hosts[0].name, sizeof h->hosts[0].name, "%s", tg->route.target);
		if (dns_parse_literal(lit, &h->hosts[0].addrs[0]) == 0)
			h->hosts[0].n_addrs = 1;
		target_fill(tg, h);
		free(h);
		return;
	}
	if (tg->route.kind == ROUTE_MX)
		sl->dreq = dns_resolve_mail(rq->dns, tg->route.target, on_hops, sl, err, sizeof err);
	else
		sl->dreq = dns_resolve_host(rq->dns, tg->route.target, on_hops, sl, err, sizeof err);
	if (sl->dreq == NULL) {
		tg->status = dns_name_ok(tg->route.target) ? DNS_TEMPFAIL : DNS_PERMFAIL;
		snprintf(tg->reason, sizeof tg->reason, "%s", err);
		return;
	}
	rq->pending++;
}

struct route_req *route_resolve_async(struct route_table *t, struct dns *dns,
				      const struct route_decision *d,
				      route_resolved_cb cb, void *arg,
				      char *err, size_t errlen)
{
	struct route_req *rq = calloc(1, sizeof *rq);
	struct timeval zero = { 0, 0 };

	if (rq == NULL || (rq->res = calloc(1, sizeof *rq->res)) == NULL ||
	    (rq->res->targets = calloc(d->n ? d->n : 1, sizeof *rq->res->targets)) == NULL) {
		if (rq)
			route_resolution_free(&rq->res);
		free(rq);
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	rq->log = t ? t->log : NULL;
	if (t)
		memcpy(rq->myname, t->myname, sizeof rq->myname);
	rq->dns = dns;
	rq->cb = cb;
	rq->arg = arg;
	rq->res->decision = *d;
	rq->res->n = d->n;
	for (size_t i = 0; i < d->n; i++) {
		rq->res->targets[i].route = d->routes[i];
		target_start(rq, i);
	}
	if (rq->pending == 0) {
		rq->defer = evtimer_new(dns_event_base(dns), on_defer, rq);
		if (rq->defer == NULL || evtimer_add(rq->defer, &zero) < 0) {
			route_resolve_cancel(&rq);
			snprintf(err, errlen, "out of memory");
			return NULL;
		}
	}
	return rq;
}

void route_resolve_cancel(struct route_req **reqp)
{
	struct route_req *rq = *reqp;

	if (rq == NULL)
		return;
	*reqp = NULL;
	for (size_t i = 0; i < ROUTE_MAX_PER_SPACE; i++)
		dns_cancel(&rq->slots[i].dreq);
	if (rq->defer)
		event_free(rq->defer);
	route_resolution_free(&rq->res);
	free(rq);
}
