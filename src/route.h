/*
 * route: the routing table.  Address spaces (an exact domain, "*.parent"
 * for every subdomain, "*") map to routes, each a next hop with a cost:
 * cheapest first, equal costs share the load, a dearer route is the
 * failover.  The most specific space wins: exact, then the longest
 * "*.suffix", then "*".  Implicit rules: a local domain without a route of
 * its own goes to maildir:<local.maildir>; without a [route *], "*" is mx.
 *
 * Owns the table built from conf->routes and the next-hop syntax.
 * route_lookup() is pure (no I/O); route_resolve_async() turns a decision
 * into addresses with `dns`.  Must not: deliver, touch the spool.
 *
 * Threads: a table is immutable once built except for the per-space
 * load-sharing counters, which are atomic: route_lookup() may run on any
 * thread at once.  route_resolve_async() runs on the loop thread of its
 * `dns`.  A reload builds a new table; decisions and resolutions are
 * copies and outlive the table they came from.
 */
#ifndef CARRIER_ROUTE_H
#define CARRIER_ROUTE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "dns.h"

struct carrier_conf;
struct conf_errors;
struct evlog;

#define ROUTE_MAX_PER_SPACE 16
#define ROUTE_TARGET_MAX 256
#define ROUTE_KEY_MAX 300

enum route_kind {
	ROUTE_SMTP,             /* smtp:[host]:port  host literal or A/AAAA, no MX */
	ROUTE_MX,               /* mx, smtp:domain   MX of target (or the recipient's domain) */
	ROUTE_LMTP_UNIX,        /* lmtp:unix:/path */
	ROUTE_LMTP_INET,        /* lmtp:[host]:port */
	ROUTE_MAILDIR,          /* maildir:/path */
	ROUTE_DISCARD,
	ROUTE_REJECT,
};

/* One route of a decision: a next hop with its cost and limits. */
struct route {
	enum route_kind kind;
	char target[ROUTE_TARGET_MAX];  /* host, address literal "[..]", domain or path;
					 * for mx: the domain whose MX to use */
	uint16_t port;                  /* smtp/mx: 25 unless given; lmtp inet: given */
	unsigned cost;
	unsigned max_connections;       /* 0 = delivery default */
	unsigned max_rate;              /* messages per second; 0 = unlimited */
	char tls[32];                   /* as configured; "" = default */
	char via[ROUTE_TARGET_MAX + 16];/* as written ("mx" for the implicit one) */
	/* Stable name of the next hop for per-destination queues, limits and
	 * counters: "smtp:[10.0.0.5]:25", "smtp:[relay.example]:587",
	 * "mx:example.com" (":port" appended when not 25),
	 * "lmtp:unix:/run/dovecot/lmtp", "lmtp:[10.0.0.7]:24",
	 * "maildir:/var/mail", "discard", "reject". */
	char key[ROUTE_KEY_MAX];
	unsigned line;                  /* [route] header line; 0 = implicit */
};

/* The routes for one domain, in try order. */
struct route_decision {
	char domain[DNS_NAME_MAX + 3];  /* lower case; may be a literal "[..]" */
	char space[DNS_NAME_MAX + 3];   /* the matched space: "example.net", "*.net", "*" */
	bool implicit;                  /* an implicit rule matched (local domain, default *) */
	size_t n;
	struct route routes[ROUTE_MAX_PER_SPACE];
};

struct route_table;

/*
 * Builds the table from conf->routes and the implicit rules.  Every `via`
 * error is pushed onto `errs` (file = conf->path, line = the via line,
 * key = "route SPACE.via") and the table is not built: returns NULL.
 * Returns NULL with errs empty only when memory runs out.  Free with
 * route_table_free().  The table keeps no pointer into `conf`.
 */
struct route_table *route_table_new(const struct carrier_conf *conf,
				    struct conf_errors *errs);
/* Drops the caller's reference (clears *tp); the last one frees the table.
 * NULL is fine. */
void route_table_free(struct route_table **tp);
/* Takes one more reference (any thread) and returns t, so a reader on
 * another thread keeps the table while a reload swaps the daemon's; drop
 * it with route_table_free().  NULL gives NULL. */
struct route_table *route_table_ref(struct route_table *t);
/* Events of route_resolve_async() go to `log` (may be NULL). */
void route_table_set_log(struct route_table *t, struct evlog *log);

/*
 * Decides the routes for `domain` (a domain, or an address literal):
 * matched space, routes sorted by cost, each group of equal cost rotated
 * by one per decision (load sharing).  Pure: no I/O.  Returns a new
 * decision (free with route_decision_free), or NULL for an invalid domain
 * or out of memory.  A decision with no route cannot happen: "*" always
 * exists.
 */
struct route_decision *route_lookup(struct route_table *t, const char *domain);
void route_decision_free(struct route_decision **dp);

/* Parses one `via` (also for tests): fills kind, target, port, key (for
 * mx with no domain the key is "mx:" until a decision fills it).  Returns 0,
 * or -1 with the problem in err. */
int route_parse_via(const char *via, struct route *r, char *err, size_t errlen);
const char *route_kind_name(enum route_kind kind);

/* ---- resolution ------------------------------------------------------- */

/* One address to try. */
struct route_addr {
	struct sockaddr_storage ss;     /* with the port */
	socklen_t len;
	const char *host;               /* into the route_target's hops */
	unsigned pref;                  /* MX preference (0 when none) */
};

/* One route of a decision, resolved. */
struct route_target {
	struct route route;
	/* DNS_OK: addrs ready (none for lmtp unix, maildir, discard, reject).
	 * Otherwise why the route cannot be used now: DNS_TEMPFAIL (try the
	 * next route, or later), DNS_NXDOMAIN / DNS_PERMFAIL (null_mx: the
	 * domain accepts no mail; 556 5.1.10). */
	enum dns_status status;
	bool null_mx;
	char reason[DNS_REASON_MAX];
	struct dns_hops hops;           /* hosts and addresses behind addrs */
	size_t n_addrs;
	struct route_addr addrs[DNS_MAX_MX * DNS_MAX_ADDRS];
};

struct route_resolution {
	struct route_decision decision;
	/* DNS_OK when some route is usable; else DNS_TEMPFAIL when any route
	 * failed temporarily (defer, never bounce), else permanent. */
	enum dns_status status;
	size_t n;
	struct route_target *targets;   /* n, in try order (decision order) */
};

struct route_req;
/* Receives the resolution and owns it: free with route_resolution_free. */
typedef void (*route_resolved_cb)(struct route_resolution *res, void *arg);

/*
 * Resolves every route of `d` (copied; `d` may be freed on return) in
 * parallel: smtp:[host] by A/AAAA (a literal without a query), mx by RFC
 * 5321 5.1 (dns_resolve_mail), lmtp:[host]:port by A/AAAA.  When this host
 * (server.hostname, or the system's name) is among the exchangers, only
 * the more preferred ones are kept; none left is DNS_PERMFAIL "mail for D
 * loops back to myself".  Returns a
 * handle, or NULL with err (out of memory); then cb never runs.  Otherwise
 * cb runs once, later, on the loop thread, unless the handle is cancelled.
 * The table is not used after the call returns.
 */
struct route_req *route_resolve_async(struct route_table *t, struct dns *dns,
				      const struct route_decision *d,
				      route_resolved_cb cb, void *arg,
				      char *err, size_t errlen);
void route_resolve_cancel(struct route_req **reqp);
void route_resolution_free(struct route_resolution **resp);

#endif
