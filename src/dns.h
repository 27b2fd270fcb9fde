/*
 * dns: asynchronous DNS lookups with libunbound inside the libevent loop.
 *
 * Owns the resolver context (resolv.conf or a forwarder), the in-flight
 * queries, their deadlines and the lookup counters.  Offers MX, A and AAAA
 * lookups and the RFC 5321 section 5.1 "where does mail for DOMAIN go"
 * expansion (MX -> addresses, or the domain's own addresses when it has no
 * MX; null MX per RFC 7505).  It never blocks the loop: libunbound resolves
 * on its own thread (ub_ctx_async(ctx, 1)) and hands answers back through
 * ub_fd(), which an event on the loop reads with ub_process().
 *
 * Threads: a struct dns belongs to the loop thread of its event_base; every
 * function here, and every callback, runs on that thread.  A daemon with N
 * loops creates N of them.  Must not: open connections, decide routing.
 *
 * Failure classes (what the caller does with them):
 *   DNS_OK        data
 *   DNS_NODATA    the name exists, no record of that type
 *   DNS_NXDOMAIN  the name does not exist: permanent
 *   DNS_PERMFAIL  can never work (null MX, no address at all): permanent
 *   DNS_TEMPFAIL  SERVFAIL, REFUSED, timeout, resolver error, DNSSEC bogus:
 *                 a temporary delivery failure, never a bounce
 */
#ifndef CARRIER_DNS_H
#define CARRIER_DNS_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct event_base;
struct carrier_conf;
struct counters_shm;
struct evlog;

#define DNS_NAME_MAX 253        /* text form, without the trailing dot */
#define DNS_MAX_MX 10           /* exchangers kept per domain (lowest preferences) */
#define DNS_MAX_ADDRS 8         /* addresses kept per host, both families */
#define DNS_REASON_MAX 200
#define DNS_DEFAULT_TIMEOUT_MS 10000

enum dns_status {
	DNS_OK,
	DNS_NODATA,
	DNS_NXDOMAIN,
	DNS_PERMFAIL,
	DNS_TEMPFAIL,
};

/* One address of a host: AF_INET or AF_INET6, no port. */
struct dns_addr {
	int family;
	union {
		struct in_addr v4;
		struct in6_addr v6;
	} u;
};

struct dns_mx {
	uint16_t pref;
	char name[DNS_NAME_MAX + 1];    /* lower case, no trailing dot; "" = null MX */
};

/* Result of dns_lookup_mx().  MX records sorted by preference ascending,
 * records of equal preference shuffled (RFC 5321 5.1), at most DNS_MAX_MX. */
struct dns_mx_result {
	enum dns_status status;
	bool null_mx;                   /* the only MX is "0 ." (RFC 7505) */
	char name[DNS_NAME_MAX + 1];    /* asked for */
	char canonname[DNS_NAME_MAX + 1]; /* after CNAMEs; == name without one */
	char reason[DNS_REASON_MAX];    /* for every status but DNS_OK */
	size_t n;
	struct dns_mx mx[DNS_MAX_MX];
};

/* A host to try, with its addresses in try order. */
struct dns_host {
	char name[DNS_NAME_MAX + 1];
	unsigned pref;                  /* MX preference; 0 for implicit MX and host lookups */
	enum dns_status status;         /* of its A/AAAA lookups together */
	char reason[DNS_REASON_MAX];
	size_t n_addrs;
	struct dns_addr addrs[DNS_MAX_ADDRS];
};

/*
 * Result of dns_resolve_mail() and dns_resolve_host(): the hosts in try
 * order.  Per host, addresses interleave the families starting with IPv6
 * (v6, v4, v6, v4, ...; a family that runs out leaves the rest to the
 * other), so a broken IPv6 path costs one attempt, not all of them.
 *
 * status: DNS_OK when at least one host has an address (hosts without one
 * carry their own status); otherwise DNS_TEMPFAIL when any part failed
 * temporarily, else DNS_NXDOMAIN or DNS_PERMFAIL.  null_mx marks the RFC
 * 7505 refusal ("556 5.1.10 domain does not accept mail").
 */
struct dns_hops {
	enum dns_status status;
	bool null_mx;
	bool implicit_mx;               /* no MX: the domain's own A/AAAA */
	char name[DNS_NAME_MAX + 1];
	char canonname[DNS_NAME_MAX + 1];
	char reason[DNS_REASON_MAX];
	size_t n_hosts;
	struct dns_host hosts[DNS_MAX_MX];
};

/* Counters since dns_new(). */
struct dns_stats {
	unsigned long lookups;          /* queries sent (MX, A, AAAA) */
	unsigned long answered;         /* with data or NODATA */
	unsigned long nxdomain;
	unsigned long tempfail;         /* SERVFAIL, REFUSED, errors, bogus */
	unsigned long timeouts;
	unsigned long in_flight;
};

struct dns;
struct dns_req;

typedef void (*dns_mx_cb)(const struct dns_mx_result *res, void *arg);
typedef void (*dns_hops_cb)(const struct dns_hops *res, void *arg);

/*
 * Creates a resolver on `base`: forwarder conf->dns_forwarder
 * ("ADDRESS" or "ADDRESS@PORT"), or the nameservers of conf->dns_resolv_conf
 * when the forwarder is "".  `log` may be NULL.  Returns NULL with a reason
 * in err ("dns: forwarder '...': syntax error") on failure; the caller
 * emits DNS_INIT_FAILED.  Free with dns_free().
 */
struct dns *dns_new(struct event_base *base, const struct carrier_conf *conf,
		    struct evlog *log, char *err, size_t errlen);
/* Cancels every lookup in progress (no callback runs) and frees; clears
 * *dnsp.  Must not be called from inside a dns callback. */
void dns_free(struct dns **dnsp);

/* Deadline of each query (default DNS_DEFAULT_TIMEOUT_MS); after it the
 * query is cancelled and reported DNS_TEMPFAIL "timeout". */
void dns_set_timeout(struct dns *dns, unsigned ms);
struct event_base *dns_event_base(const struct dns *dns);
/* Also counts into the shared counters: DNS_LOOKUPS for every query sent,
 * DNS_FAILURES for every temporary failure or timeout (not NXDOMAIN).
 * `shm` (counters_block()) must outlive dns; NULL stops. */
void dns_set_counters(struct dns *dns, struct counters_shm *shm);
void dns_get_stats(const struct dns *dns, struct dns_stats *st_r);

/*
 * Lookups.  Each returns a handle, or NULL with err when it cannot start
 * (invalid name, resolver error); then `cb` is never called.  Otherwise
 * `cb` runs exactly once, later, on the loop thread, unless the handle is
 * cancelled first; the result it gets is valid during the call only.  The
 * handle is invalid once `cb` has started.
 *
 * dns_lookup_mx     the MX set of `domain`
 * dns_resolve_host  A and AAAA of `host` (one dns_host; no MX)
 * dns_resolve_mail  RFC 5321 5.1: MX -> each exchanger's A/AAAA; no MX
 *                   (NODATA) -> the domain's own A/AAAA; null MX ->
 *                   DNS_PERMFAIL with null_mx; NXDOMAIN -> DNS_NXDOMAIN.
 *                   A domain literal "[192.0.2.1]" / "[IPv6:2001:db8::1]"
 *                   gives that address without a query.
 */
struct dns_req *dns_lookup_mx(struct dns *dns, const char *domain, dns_mx_cb cb,
			      void *arg, char *err, size_t errlen);
struct dns_req *dns_resolve_host(struct dns *dns, const char *host, dns_hops_cb cb,
				 void *arg, char *err, size_t errlen);
struct dns_req *dns_resolve_mail(struct dns *dns, const char *domain, dns_hops_cb cb,
				 void *arg, char *err, size_t errlen);
/* Cancels a lookup whose callback has not run yet; clears *reqp. */
void dns_cancel(struct dns_req **reqp);

/* ---- pure helpers (no I/O; tests and fuzzers drive them) ------------- */

/* Decodes MX rdata (preference + uncompressed wire name).  Writes the name
 * in lower case without the trailing dot ("" for the root).  Returns 0, or
 * -1 when the rdata is malformed or the name is not a host name. */
int dns_parse_mx_rdata(const uint8_t *rdata, size_t len, uint16_t *pref_r,
		       char *name, size_t namesz);
/* Decodes A (len 4) or AAAA (len 16) rdata.  Returns 0 or -1. */
int dns_parse_addr_rdata(const uint8_t *rdata, size_t len, int family,
			 struct dns_addr *addr_r);
/*
 * Builds an MX result from rdata items as libunbound gives them (`data`,
 * `len`, `n` items): keeps the valid records, sorts by preference, shuffles
 * ties with `rnd` (xorshift state, updated), keeps DNS_MAX_MX, detects the
 * null MX.  Sets res->n, res->mx, res->null_mx, and res->status (DNS_OK,
 * or DNS_PERMFAIL when no record is usable or for a null MX).
 */
void dns_mx_build(struct dns_mx_result *res, char *const *data, const int *len,
		  size_t n, uint64_t *rnd);
/* True when `name` is a syntactically valid host/domain name (LDH labels,
 * underscores tolerated, 1..63 per label, <= 253, one trailing dot ok). */
bool dns_name_ok(const char *name);
/* Parses a domain literal "[1.2.3.4]" or "[IPv6:...]" (also "[::1]").
 * Returns 0 or -1. */
int dns_parse_literal(const char *s, struct dns_addr *addr_r);
/* "192.0.2.1" / "2001:db8::1". */
void dns_addr_format(const struct dns_addr *a, char *buf, size_t size);
/* Fills a sockaddr_in/in6 with `a` and `port`; returns its length. */
socklen_t dns_addr_to_sockaddr(const struct dns_addr *a, uint16_t port,
			       struct sockaddr_storage *ss);
const char *dns_status_name(enum dns_status st);
/* True for the failures that bounce (NXDOMAIN, PERMFAIL). */
static inline bool dns_status_permanent(enum dns_status st)
{
	return st == DNS_NXDOMAIN || st == DNS_PERMFAIL;
}

#endif
