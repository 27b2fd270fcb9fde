/*
 * dns: asynchronous lookups with libunbound inside the libevent loop.
 *
 * libunbound resolves on a thread of its own (ub_ctx_async(ctx, 1)); its
 * answers come back through a pipe (ub_fd) that a persistent read event on
 * the loop drains with ub_process(), which calls our callbacks on the loop
 * thread.  Each query (struct dns_q) has a deadline timer; a request
 * (struct dns_req: MX, host or mail) groups the queries it needs and calls
 * its user callback once they are all done.
 *
 * Threads: the loop thread of the event_base only.
 */
#include "dns.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <unbound.h>

#include "conf.h"
#include "counters.h"
#include "evlog.h"

#define RR_A 1
#define RR_MX 15
#define RR_AAAA 28
#define RR_CLASS_IN 1
#define MX_COLLECT_MAX 128      /* records looked at before sorting */

enum req_kind { REQ_MX, REQ_HOST, REQ_MAIL };

/* Addresses of one host while its A and AAAA lookups run. */
struct host_tmp {
	struct dns_addr v4[DNS_MAX_ADDRS], v6[DNS_MAX_ADDRS];
	size_t n4, n6;
	enum dns_status st4, st6;
	char why4[DNS_REASON_MAX], why6[DNS_REASON_MAX];
	unsigned pending;
};

struct dns_req {
	struct dns *dns;
	struct dns_req *prev, *next;    /* dns->reqs */
	enum req_kind kind;
	unsigned pending;               /* queries in flight */
	dns_mx_cb mx_cb;
	dns_hops_cb hops_cb;
	void *arg;
	struct event *defer;            /* literal answers, delivered from the loop */
	struct dns_mx_result mx;
	struct dns_hops hops;
	struct host_tmp tmp[DNS_MAX_MX];
};

struct dns_q {
	struct dns *dns;
	struct dns_req *req;            /* NULL once cancelled */
	struct dns_q *prev, *next;      /* dns->queries */
	struct event *timer;
	int ub_id;
	int rrtype;
	size_t slot;                    /* host index for A/AAAA */
	char name[DNS_NAME_MAX + 2];
};

struct dns {
	struct event_base *base;
	struct evlog *log;
	struct ub_ctx *ub;
	struct event *ev;
	unsigned timeout_ms;
	uint64_t rnd;
	struct dns_q *queries;
	struct dns_req *reqs;
	struct dns_stats st;
	struct counters_shm *shm;       /* NULL: private stats only */
};

/* ---- pure helpers ----------------------------------------------------- */

static uint64_t rnd_next(uint64_t *s)
{
	uint64_t x = *s ? *s : 0x9e3779b97f4a7c15ULL;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	*s = x;
	return x;
}

const char *dns_status_name(enum dns_status st)
{
	switch (st) {
	case DNS_OK: return "ok";
	case DNS_NODATA: return "no data";
	case DNS_NXDOMAIN: return "no such domain";
	case DNS_PERMFAIL: return "permanent failure";
	case DNS_TEMPFAIL: return "temporary failure";
	}
	return "?";
}

static bool label_char_ok(unsigned char c)
{
	return isalnum(c) || c == '-' || c == '_';
}

bool dns_name_ok(const char *name)
{
	size_t len = strlen(name), label = 0;

	if (len > 0 && name[len - 1] == '.')
		len--;
	if (len == 0 || len > DNS_NAME_MAX)
		return false;
	for (size_t i = 0; i < len; i++) {
		if (name[i] == '.') {
			if (label == 0)
				return false;
			label = 0;
			continue;
		}
		if (!label_char_ok((unsigned char)name[i]) || ++label > 63)
			return false;
	}
	return label > 0;
}

/* Wire name (uncompressed) at p[0..len) to text; must use every byte. */
static int wire_name(const uint8_t *p, size_t len, char *name, size_t namesz)
{
	size_t i = 0, o = 0;

	if (namesz == 0)
		return -1;
	for (;;) {
		if (i >= len)
			return -1;
		size_t l = p[i++];
		if (l == 0)
			break;
		if (l > 63 || i + l > len)
			return -1;     /* also refuses compression pointers */
		if (o != 0) {
			if (o + 1 >= namesz)
				return -1;
			name[o++] = '.';
		}
		for (size_t k = 0; k < l; k++) {
			if (!label_char_ok(p[i + k]) || o + 1 >= namesz)
				return -1;
			name[o++] = (char)tolower(p[i + k]);
		}
		i += l;
	}
	name[o] = '\0';
	if (i != len || o > DNS_NAME_MAX)
		return -1;
	return 0;
}

int dns_parse_mx_rdata(const uint8_t *rdata, size_t len, uint16_t *pref_r,
		       char *name, size_t namesz)
{
	if (rdata == NULL || len < 3)
		return -1;
	*pref_r = (uint16_t)(rdata[0] << 8 | rdata[1]);
	return wire_name(rdata + 2, len - 2, name, namesz);
}

int dns_parse_addr_rdata(const uint8_t *rdata, size_t len, int family,
			 struct dns_addr *addr_r)
{
	memset(addr_r, 0, sizeof *addr_r);
	if (rdata == NULL)
		return -1;
	if (family == AF_INET && len == 4) {
		memcpy(&addr_r->u.v4, rdata, 4);
	} else if (family == AF_INET6 && len == 16) {
		memcpy(&addr_r->u.v6, rdata, 16);
	} else {
		return -1;
	}
	addr_r->family = family;
	return 0;
}

void dns_mx_build(struct dns_mx_result *res, char *const *data, const int *len,
		  size_t n, uint64_t *rnd)
{
	static const struct dns_mx zero;
	struct dns_mx *all = calloc(MX_COLLECT_MAX, sizeof *all);
	size_t m = 0, roots = 0, bad = 0;

	res->n = 0;
	res->null_mx = false;
	if (all == NULL) {
		res->status = DNS_TEMPFAIL;
		snprintf(res->reason, sizeof res->reason, "out of memory");
		return;
	}
	for (size_t i = 0; i < n && m < MX_COLLECT_MAX; i++) {
		all[m] = zero;
		if (len[i] < 0 || dns_parse_mx_rdata((const uint8_t *)data[i], (size_t)len[i],
						     &all[m].pref, all[m].name,
						     sizeof all[m].name) < 0) {
			bad++;
			continue;
		}
		if (all[m].name[0] == '\0') {
			roots++;        /* "." : null MX, or a stray one among others */
			continue;
		}
		m++;
	}
	/* Insertion sort by preference (stable; m is small), then shuffle
	 * each run of equal preference (RFC 5321 5.1: spread the load). */
	for (size_t i = 1; i < m; i++) {
		struct dns_mx t = all[i];
		size_t j = i;
		while (j > 0 && all[j - 1].pref > t.pref) {
			all[j] = all[j - 1];
			j--;
		}
		all[j] = t;
	}
	for (size_t s = 0; s < m;) {
		size_t e = s + 1;
		while (e < m && all[e].pref == all[s].pref)
			e++;
		for (size_t i = e - 1; i > s; i--) {
			size_t j = s + (size_t)(rnd_next(rnd) % (i - s + 1));
			struct dns_mx t = all[i];
			all[i] = all[j];
			all[j] = t;
		}
		s = e;
	}
	res->n = m < DNS_MAX_MX ? m : DNS_MAX_MX;
	memcpy(res->mx, all, res->n * sizeof *all);
	free(all);
	if (res->n > 0) {
		res->status = DNS_OK;
	} else if (roots > 0) {
		res->status = DNS_PERMFAIL;
		res->null_mx = true;
		snprintf(res->reason, sizeof res->reason,
			 "domain does not accept mail (null MX, RFC 7505)");
	} else {
		res->status = DNS_PERMFAIL;
		snprintf(res->reason, sizeof res->reason,
			 "no usable MX record (%zu malformed)", bad);
	}
}

int dns_parse_literal(const char *s, struct dns_addr *addr_r)
{
	char buf[64];
	size_t len = strlen(s);
	const char *in;
	int family = AF_INET;

	memset(addr_r, 0, sizeof *addr_r);
	if (len < 3 || s[0] != '[' || s[len - 1] != ']' || len - 2 >= sizeof buf)
		return -1;
	memcpy(buf, s + 1, len - 2);
	buf[len - 2] = '\0';
	in = buf;
	if (strncasecmp(in, "IPv6:", 5) == 0) {
		in += 5;
		family = AF_INET6;
	} else if (strchr(in, ':') != NULL) {
		family = AF_INET6;
	}
	if (inet_pton(family, in, family == AF_INET ? (void *)&addr_r->u.v4
						    : (void *)&addr_r->u.v6) != 1)
		return -1;
	addr_r->family = family;
	return 0;
}

void dns_addr_format(const struct dns_addr *a, char *buf, size_t size)
{
	if (size == 0)
		return;
	if (inet_ntop(a->family, a->family == AF_INET ? (const void *)&a->u.v4
						      : (const void *)&a->u.v6,
		      buf, (socklen_t)size) == NULL)
		snprintf(buf, size, "?");
}

socklen_t dns_addr_to_sockaddr(const struct dns_addr *a, uint16_t port,
			       struct sockaddr_storage *ss)
{
	memset(ss, 0, sizeof *ss);
	if (a->family == AF_INET) {
		struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
		s4->sin_family = AF_INET;
		s4->sin_port = htons(port);
		s4->sin_addr = a->u.v4;
		return sizeof *s4;
	}
	struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
	s6->sin6_family = AF_INET6;
	s6->sin6_port = htons(port);
	s6->sin6_addr = a->u.v6;
	return sizeof *s6;
}

/* Lower case, without the trailing dot. */
static void name_copy(char *dst, size_t size, const char *src)
{
	size_t o = 0;

	for (; *src && o + 1 < size; src++)
		dst[o++] = (char)tolower((unsigned char)*src);
	if (o > 0 && dst[o - 1] == '.')
		o--;
	dst[o] = '\0';
}

static const char *rr_name(int rrtype)
{
	return rrtype == RR_MX ? "MX" : rrtype == RR_A ? "A" : rrtype == RR_AAAA ? "AAAA" : "?";
}

/* ---- resolver context ----------------------------------------------- */

static void on_ub_readable(evutil_socket_t fd, short what, void *arg)
{
	struct dns *dns = arg;
	int rc = ub_process(dns->ub);

	if (rc != 0)
		evlog_emit(dns->log, EV_DNS_PROCESS_FAILED, EVF_S("reason", ub_strerror(rc)));
}

struct dns *dns_new(struct event_base *base, const struct carrier_conf *conf,
		    struct evlog *log, char *err, size_t errlen)
{
	struct dns *dns = calloc(1, sizeof *dns);
	const char *fwd = conf->dns_forwarder ? conf->dns_forwarder : "";
	int rc, fd;

	if (dns == NULL) {
		snprintf(err, errlen, "dns: out of memory");
		return NULL;
	}
	dns->base = base;
	dns->log = log;
	dns->timeout_ms = DNS_DEFAULT_TIMEOUT_MS;
	if (getrandom(&dns->rnd, sizeof dns->rnd, GRND_NONBLOCK) != sizeof dns->rnd)
		dns->rnd = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
	dns->ub = ub_ctx_create();
	if (dns->ub == NULL) {
		snprintf(err, errlen, "dns: cannot create the libunbound context");
		goto fail;
	}
	/* A thread, not a forked process: answers return through ub_fd. */
	if ((rc = ub_ctx_async(dns->ub, 1)) != 0 ||
	    /* Forwarders on loopback (a local cache, the test server) are normal. */
	    (rc = ub_ctx_set_option(dns->ub, "do-not-query-localhost:", "no")) != 0) {
		snprintf(err, errlen, "dns: libunbound setup: %s", ub_strerror(rc));
		goto fail;
	}
	if (fwd[0] != '\0') {
		if ((rc = ub_ctx_set_fwd(dns->ub, fwd)) != 0) {
			snprintf(err, errlen, "dns: forwarder '%s': %s (expected ADDRESS or ADDRESS@PORT)",
				 fwd, ub_strerror(rc));
			goto fail;
		}
	} else {
		const char *path = conf->dns_resolv_conf && conf->dns_resolv_conf[0]
					   ? conf->dns_resolv_conf : "/etc/resolv.conf";
		if ((rc = ub_ctx_resolvconf(dns->ub, path)) != 0) {
			snprintf(err, errlen, "dns: cannot read nameservers from %s: %s",
				 path, rc > 0 ? strerror(rc) : ub_strerror(rc));
			goto fail;
		}
	}
	fd = ub_fd(dns->ub);
	if (fd < 0) {
		snprintf(err, errlen, "dns: libunbound has no result descriptor");
		goto fail;
	}
	dns->ev = event_new(base, fd, EV_READ | EV_PERSIST, on_ub_readable, dns);
	if (dns->ev == NULL || event_add(dns->ev, NULL) < 0) {
		snprintf(err, errlen, "dns: cannot watch the resolver descriptor");
		goto fail;
	}
	evlog_emit(log, EV_DNS_READY,
		   EVF_S("source", fwd[0] ? fwd : (conf->dns_resolv_conf ? conf->dns_resolv_conf : "")));
	return dns;
fail:
	dns_free(&dns);
	return NULL;
}

static void q_free(struct dns_q *q)
{
	struct dns *dns = q->dns;

	if (q->prev)
		q->prev->next = q->next;
	else
		dns->queries = q->next;
	if (q->next)
		q->next->prev = q->prev;
	if (q->timer)
		event_free(q->timer);
	if (dns->st.in_flight > 0)
		dns->st.in_flight--;
	free(q);
}

/* Cancels a query: libunbound drops it, or (when the answer is already on
 * its way) our callback frees it on arrival since q->req is NULL. */
static void q_cancel(struct dns_q *q)
{
	q->req = NULL;
	if (q->timer)
		event_del(q->timer);
	if (ub_cancel(q->dns->ub, q->ub_id) == 0)
		q_free(q);
}

static void req_unlink_free(struct dns_req *req)
{
	struct dns *dns = req->dns;

	if (req->prev)
		req->prev->next = req->next;
	else
		dns->reqs = req->next;
	if (req->next)
		req->next->prev = req->prev;
	if (req->defer)
		event_free(req->defer);
	free(req);
}

void dns_free(struct dns **dnsp)
{
	struct dns *dns = *dnsp;

	if (dns == NULL)
		return;
	*dnsp = NULL;
	if (dns->ev)
		event_free(dns->ev);
	/* Deleting the context stops its thread; no callback runs after. */
	if (dns->ub)
		ub_ctx_delete(dns->ub);
	while (dns->queries)
		q_free(dns->queries);
	while (dns->reqs)
		req_unlink_free(dns->reqs);
	free(dns);
}

void dns_set_timeout(struct dns *dns, unsigned ms)
{
	dns->timeout_ms = ms ? ms : DNS_DEFAULT_TIMEOUT_MS;
}

struct event_base *dns_event_base(const struct dns *dns)
{
	return dns->base;
}

void dns_set_counters(struct dns *dns, struct counters_shm *shm)
{
	dns->shm = shm;
}

static void count(struct dns *dns, enum counters_id id)
{
	if (dns->shm)
		counters_add(dns->shm, id, 1);
}

void dns_get_stats(const struct dns *dns, struct dns_stats *st_r)
{
	*st_r = dns->st;
}

void dns_cancel(struct dns_req **reqp)
{
	struct dns_req *req = *reqp;

	if (req == NULL)
		return;
	*reqp = NULL;
	for (struct dns_q *q = req->dns->queries, *nx; q; q = nx) {
		nx = q->next;
		if (q->req == req)
			q_cancel(q);
	}
	req_unlink_free(req);
}

/* ---- queries ---------------------------------------------------------- */

/* What one answer means, with the raw result for the data. */
struct answer {
	enum dns_status st;
	char reason[DNS_REASON_MAX];
	struct ub_result *res;          /* NULL on error or timeout */
};

static void req_on_answer(struct dns_req *req, int rrtype, size_t slot, const struct answer *a);

static void classify(struct dns *dns, struct dns_q *q, int err, struct ub_result *res,
		     struct answer *a)
{
	const char *type = rr_name(q->rrtype);

	a->res = res;
	a->reason[0] = '\0';
	if (err != 0 || res == NULL) {
		a->st = DNS_TEMPFAIL;
		snprintf(a->reason, sizeof a->reason, "%s %s: resolver error: %s",
			 type, q->name, ub_strerror(err));
	} else if (res->bogus) {
		a->st = DNS_TEMPFAIL;
		snprintf(a->reason, sizeof a->reason, "%s %s: DNSSEC validation failed: %s",
			 type, q->name, res->why_bogus ? res->why_bogus : "bogus");
		evlog_emit(dns->log, EV_DNS_BOGUS, EVF_S("type", type), EVF_S("name", q->name),
			   EVF_S("reason", res->why_bogus ? res->why_bogus : "bogus"));
	} else if (res->rcode == 0 && res->havedata) {
		a->st = DNS_OK;
	} else if (res->nxdomain || res->rcode == 3) {
		a->st = DNS_NXDOMAIN;
		snprintf(a->reason, sizeof a->reason, "%s does not exist (NXDOMAIN)", q->name);
	} else if (res->rcode == 0) {
		a->st = DNS_NODATA;
		snprintf(a->reason, sizeof a->reason, "%s has no %s record", q->name, type);
	} else {
		a->st = DNS_TEMPFAIL;
		snprintf(a->reason, sizeof a->reason, "%s %s: %s (rcode %d)", type, q->name,
			 res->rcode == 2 ? "SERVFAIL" : res->rcode == 5 ? "REFUSED" : "server error",
			 res->rcode);
	}
	if (a->st == DNS_OK || a->st == DNS_NODATA)
		dns->st.answered++;
	else if (a->st == DNS_NXDOMAIN)
		dns->st.nxdomain++;
	else
		dns->st.tempfail++;
	if (a->st == DNS_TEMPFAIL) {
		count(dns, COUNTER_DNS_FAILURES);
		evlog_emit(dns->log, EV_DNS_TEMPFAIL, EVF_S("reason", a->reason));
	}
}

static void on_ub_answer(void *arg, int err, struct ub_result *res)
{
	struct dns_q *q = arg;
	struct dns_req *req = q->req;
	struct answer a;

	if (req == NULL) {              /* cancelled while the answer travelled */
		if (res)
			ub_resolve_free(res);
		q_free(q);
		return;
	}
	event_del(q->timer);
	/* Detached first: the user callback may free req and start (or cancel)
	 * a new request that lands at the same address. */
	q->req = NULL;
	classify(q->dns, q, err, res, &a);
	req_on_answer(req, q->rrtype, q->slot, &a); /* may finish (and free) req */
	if (res)
		ub_resolve_free(res);
	q_free(q);
}

static void on_q_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct dns_q *q = arg;
	struct dns_req *req = q->req;
	struct dns *dns = q->dns;
	struct answer a = { .st = DNS_TEMPFAIL, .res = NULL };
	int rrtype = q->rrtype;
	size_t slot = q->slot;

	snprintf(a.reason, sizeof a.reason, "%s %s: no answer within %u ms (timeout)",
		 rr_name(q->rrtype), q->name, dns->timeout_ms);
	dns->st.timeouts++;
	count(dns, COUNTER_DNS_FAILURES);
	evlog_emit(dns->log, EV_DNS_TIMEOUT, EVF_S("type", rr_name(q->rrtype)),
		   EVF_S("name", q->name), EVF_I("ms", dns->timeout_ms));
	q->req = NULL;
	if (ub_cancel(dns->ub, q->ub_id) == 0)
		q_free(q);
	/* else: the answer is in the pipe; on_ub_answer frees q. */
	if (req)
		req_on_answer(req, rrtype, slot, &a);
}

static struct dns_q *q_start(struct dns_req *req, const char *name, int rrtype,
			     size_t slot, char *err, size_t errlen)
{
	struct dns *dns = req->dns;
	struct dns_q *q = calloc(1, sizeof *q);
	struct timeval tv = { dns->timeout_ms / 1000, (dns->timeout_ms % 1000) * 1000 };
	int rc;

	if (q == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	q->dns = dns;
	q->req = req;
	q->rrtype = rrtype;
	q->slot = slot;
	snprintf(q->name, sizeof q->name, "%s", name);
	q->timer = evtimer_new(dns->base, on_q_timeout, q);
	if (q->timer == NULL) {
		free(q);
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	rc = ub_resolve_async(dns->ub, name, rrtype, RR_CLASS_IN, q, on_ub_answer, &q->ub_id);
	if (rc != 0) {
		event_free(q->timer);
		free(q);
		snprintf(err, errlen, "%s %s: %s", rr_name(rrtype), name, ub_strerror(rc));
		evlog_emit(dns->log, EV_DNS_START_FAILED, EVF_S("reason", err));
		return NULL;
	}
	evtimer_add(q->timer, &tv);
	q->next = dns->queries;
	if (q->next)
		q->next->prev = q;
	dns->queries = q;
	dns->st.lookups++;
	dns->st.in_flight++;
	count(dns, COUNTER_DNS_LOOKUPS);
	req->pending++;
	return q;
}

/* ---- requests --------------------------------------------------------- */

static struct dns_req *req_new(struct dns *dns, enum req_kind kind, const char *name,
			       void *arg, char *err, size_t errlen)
{
	struct dns_req *req;

	if (!dns_name_ok(name)) {
		snprintf(err, errlen, "'%s' is not a valid domain name", name);
		return NULL;
	}
	req = calloc(1, sizeof *req);
	if (req == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	req->dns = dns;
	req->kind = kind;
	req->arg = arg;
	name_copy(req->mx.name, sizeof req->mx.name, name);
	memcpy(req->hops.name, req->mx.name, sizeof req->hops.name);
	memcpy(req->mx.canonname, req->mx.name, sizeof req->mx.canonname);
	memcpy(req->hops.canonname, req->mx.name, sizeof req->hops.canonname);
	req->next = dns->reqs;
	if (req->next)
		req->next->prev = req;
	dns->reqs = req;
	return req;
}

/* Merges a host's two families, IPv6 first, interleaved. */
static void host_finish(struct dns_host *h, const struct host_tmp *t)
{
	size_t i4 = 0, i6 = 0;

	h->n_addrs = 0;
	while (h->n_addrs < DNS_MAX_ADDRS && (i4 < t->n4 || i6 < t->n6)) {
		if (i6 < t->n6)
			h->addrs[h->n_addrs++] = t->v6[i6++];
		if (h->n_addrs < DNS_MAX_ADDRS && i4 < t->n4)
			h->addrs[h->n_addrs++] = t->v4[i4++];
	}
	if (h->n_addrs > 0) {
		h->status = DNS_OK;
	} else if (t->st4 == DNS_TEMPFAIL || t->st6 == DNS_TEMPFAIL) {
		h->status = DNS_TEMPFAIL;
		snprintf(h->reason, sizeof h->reason, "%s",
			 t->st6 == DNS_TEMPFAIL ? t->why6 : t->why4);
	} else if (t->st4 == DNS_NXDOMAIN && t->st6 == DNS_NXDOMAIN) {
		h->status = DNS_NXDOMAIN;
		snprintf(h->reason, sizeof h->reason, "%s", t->why4);
	} else {
		h->status = DNS_PERMFAIL;
		snprintf(h->reason, sizeof h->reason, "%s has no A or AAAA record", h->name);
	}
}

static void hops_finish(struct dns_hops *hp)
{
	bool temp = false, nx = true;

	if (hp->status != DNS_OK)
		return;                 /* decided before the address stage */
	for (size_t i = 0; i < hp->n_hosts; i++) {
		const struct dns_host *h = &hp->hosts[i];
		if (h->n_addrs > 0)
			return;
		temp |= h->status == DNS_TEMPFAIL;
		nx &= h->status == DNS_NXDOMAIN;
	}
	if (hp->n_hosts == 1) {
		hp->status = hp->hosts[0].status;
		snprintf(hp->reason, sizeof hp->reason, "%s", hp->hosts[0].reason);
		return;
	}
	hp->status = temp ? DNS_TEMPFAIL : nx ? DNS_NXDOMAIN : DNS_PERMFAIL;
	snprintf(hp->reason, sizeof hp->reason, "%s: no exchanger has an address%s",
		 hp->name, temp ? " (lookups failed temporarily)" : "");
}

static void req_complete(struct dns_req *req)
{
	if (req->kind == REQ_MX) {
		req->mx_cb(&req->mx, req->arg);
	} else {
		hops_finish(&req->hops);
		req->hops_cb(&req->hops, req->arg);
	}
	req_unlink_free(req);
}

static void start_host(struct dns_req *req, size_t slot)
{
	struct host_tmp *t = &req->tmp[slot];
	const char *name = req->hops.hosts[slot].name;
	char err[DNS_REASON_MAX];

	t->st4 = t->st6 = DNS_TEMPFAIL;
	if (q_start(req, name, RR_AAAA, slot, err, sizeof err))
		t->pending++;
	else
		snprintf(t->why6, sizeof t->why6, "%s", err);
	if (q_start(req, name, RR_A, slot, err, sizeof err))
		t->pending++;
	else
		snprintf(t->why4, sizeof t->why4, "%s", err);
	if (t->pending == 0)
		host_finish(&req->hops.hosts[slot], t);
}

static void mail_on_mx(struct dns_req *req, const struct answer *a)
{
	struct dns_hops *hp = &req->hops;

	if (a->res && a->res->canonname)
		name_copy(hp->canonname, sizeof hp->canonname, a->res->canonname);
	if (a->st == DNS_TEMPFAIL || a->st == DNS_NXDOMAIN) {
		hp->status = a->st;
		snprintf(hp->reason, sizeof hp->reason, "%s", a->reason);
		return;
	}
	hp->status = DNS_OK;
	if (a->st == DNS_OK) {
		size_t n = 0;
		while (a->res->data[n])
			n++;
		dns_mx_build(&req->mx, a->res->data, a->res->len, n, &req->dns->rnd);
		if (req->mx.status != DNS_OK) {
			hp->status = req->mx.status;
			hp->null_mx = req->mx.null_mx;
			snprintf(hp->reason, sizeof hp->reason, "%s: %s", hp->name, req->mx.reason);
			if (hp->null_mx)
				evlog_emit(req->dns->log, EV_DNS_NULL_MX, EVF_S("domain", hp->name));
			return;
		}
		for (size_t i = 0; i < req->mx.n; i++) {
			struct dns_host *h = &hp->hosts[hp->n_hosts++];
			snprintf(h->name, sizeof h->name, "%s", req->mx.mx[i].name);
			h->pref = req->mx.mx[i].pref;
		}
	} else {                        /* NODATA: RFC 5321 5.1 implicit MX */
		hp->implicit_mx = true;
		hp->n_hosts = 1;
		snprintf(hp->hosts[0].name, sizeof hp->hosts[0].name, "%s", hp->name);
	}
	for (size_t i = 0; i < hp->n_hosts; i++)
		start_host(req, i);
}

static void host_on_addr(struct dns_req *req, int rrtype, size_t slot, const struct answer *a)
{
	struct host_tmp *t = &req->tmp[slot];
	bool v6 = rrtype == RR_AAAA;
	struct dns_addr *out = v6 ? t->v6 : t->v4;
	size_t *n = v6 ? &t->n6 : &t->n4;

	*(v6 ? &t->st6 : &t->st4) = a->st;
	snprintf(v6 ? t->why6 : t->why4, DNS_REASON_MAX, "%s", a->reason);
	for (size_t i = 0; a->st == DNS_OK && a->res->data[i] && *n < DNS_MAX_ADDRS; i++)
		if (a->res->len[i] >= 0 &&
		    dns_parse_addr_rdata((const uint8_t *)a->res->data[i], (size_t)a->res->len[i],
					 v6 ? AF_INET6 : AF_INET, &out[*n]) == 0)
			(*n)++;
	if (--t->pending == 0)
		host_finish(&req->hops.hosts[slot], t);
}

/* A query of `req` (type rrtype, host slot) ended.  Runs the next stage,
 * and completes req when nothing is left in flight. */
static void req_on_answer(struct dns_req *req, int rrtype, size_t slot, const struct answer *a)
{
	req->pending--;
	if (rrtype == RR_MX && req->kind == REQ_MX) {
		if (a->res && a->res->canonname)
			name_copy(req->mx.canonname, sizeof req->mx.canonname, a->res->canonname);
		if (a->st == DNS_OK) {
			size_t n = 0;
			while (a->res->data[n])
				n++;
			dns_mx_build(&req->mx, a->res->data, a->res->len, n, &req->dns->rnd);
		} else {
			req->mx.status = a->st;
			snprintf(req->mx.reason, sizeof req->mx.reason, "%s", a->reason);
		}
	} else if (rrtype == RR_MX) {
		mail_on_mx(req, a);
	} else {
		host_on_addr(req, rrtype, slot, a);
	}
	if (req->pending == 0)
		req_complete(req);
}

struct dns_req *dns_lookup_mx(struct dns *dns, const char *domain, dns_mx_cb cb,
			      void *arg, char *err, size_t errlen)
{
	struct dns_req *req = req_new(dns, REQ_MX, domain, arg, err, errlen);

	if (req == NULL)
		return NULL;
	req->mx_cb = cb;
	if (!q_start(req, req->mx.name, RR_MX, 0, err, errlen)) {
		req_unlink_free(req);
		return NULL;
	}
	return req;
}

struct dns_req *dns_resolve_host(struct dns *dns, const char *host, dns_hops_cb cb,
				 void *arg, char *err, size_t errlen)
{
	struct dns_req *req = req_new(dns, REQ_HOST, host, arg, err, errlen);

	if (req == NULL)
		return NULL;
	req->hops_cb = cb;
	req->hops.status = DNS_OK;
	req->hops.n_hosts = 1;
	snprintf(req->hops.hosts[0].name, sizeof req->hops.hosts[0].name, "%s", req->hops.name);
	start_host(req, 0);
	if (req->pending == 0) {
		snprintf(err, errlen, "%s", req->tmp[0].why6);
		req_unlink_free(req);
		return NULL;
	}
	return req;
}

static void on_literal(evutil_socket_t fd, short what, void *arg)
{
	req_complete(arg);
}

static struct dns_req *mail_literal(struct dns *dns, const char *domain, dns_hops_cb cb,
				    void *arg, char *err, size_t errlen)
{
	struct dns_req *req = calloc(1, sizeof *req);
	struct timeval zero = { 0, 0 };
	struct dns_addr a;

	if (dns_parse_literal(domain, &a) < 0) {
		free(req);
		snprintf(err, errlen, "'%s' is not a valid address literal", domain);
		return NULL;
	}
	if (req == NULL || (req->defer = evtimer_new(dns->base, on_literal, req)) == NULL) {
		free(req);
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	req->dns = dns;
	req->kind = REQ_MAIL;
	req->hops_cb = cb;
	req->arg = arg;
	snprintf(req->hops.name, sizeof req->hops.name, "%s", domain);
	memcpy(req->hops.canonname, req->hops.name, sizeof req->hops.canonname);
	req->hops.status = DNS_OK;
	req->hops.n_hosts = 1;
	snprintf(req->hops.hosts[0].name, sizeof req->hops.hosts[0].name, "%s", domain);
	req->hops.hosts[0].n_addrs = 1;
	req->hops.hosts[0].addrs[0] = a;
	req->next = dns->reqs;
	if (req->next)
		req->next->prev = req;
	dns->reqs = req;
	evtimer_add(req->defer, &zero);
	return req;
}

struct dns_req *dns_resolve_mail(struct dns *dns, const char *domain, dns_hops_cb cb,
				 void *arg, char *err, size_t errlen)
{
	struct dns_req *req;

	if (domain[0] == '[')
		return mail_literal(dns, domain, cb, arg, err, errlen);
	req = req_new(dns, REQ_MAIL, domain, arg, err, errlen);
	if (req == NULL)
		return NULL;
	req->hops_cb = cb;
	if (!q_start(req, req->hops.name, RR_MX, 0, err, errlen)) {
		req_unlink_free(req);
		return NULL;
	}
	return req;
}
