/*
 * smtp_server: the inbound SMTP server object (see smtp_server.h).
 *
 * Owns: the list of sessions, connection accounting (in total and per
 * client address, checked by policy at accept), the host name we announce,
 * the graceful shutdown, the AUTH password table and the verifier threads
 * that check passwords against it.  The per-connection engine is
 * smtp_session.c.
 *
 * Threads: every function runs on the thread running the server's base;
 * the verifier's workers (verifier.h) hash passwords and hand the answers
 * back to that thread.
 */
#include "smtp_server.h"

#include <event2/util.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "auth.h"
#include "passwd.h"
#include "policy.h"
#include "smtp_session.h"
#include "tls.h"
#include "verifier.h"

#define IP_BUCKETS 1024u

/* Sessions open from one client address. */
struct smtp_ipent {
	struct smtp_ipent *next;
	int family;
	uint8_t addr[16];
	size_t sessions;
};

/* ---- per-address accounting ------------------------------------------- */

/* Folds an IPv4-mapped IPv6 address to IPv4 so both count as one client. */
static void peer_from(const struct sockaddr *sa, socklen_t salen, union smtp_peer *p)
{
	memset(p, 0, sizeof *p);
	if (sa != NULL && sa->sa_family == AF_INET && salen >= (socklen_t)sizeof p->in) {
		memcpy(&p->in, sa, sizeof p->in);
	} else if (sa != NULL && sa->sa_family == AF_INET6 &&
		   salen >= (socklen_t)sizeof p->in6) {
		memcpy(&p->in6, sa, sizeof p->in6);
		if (IN6_IS_ADDR_V4MAPPED(&p->in6.sin6_addr)) {
			struct sockaddr_in in = { .sin_family = AF_INET,
						  .sin_port = p->in6.sin6_port };

			memcpy(&in.sin_addr, &p->in6.sin6_addr.s6_addr[12], 4);
			memset(p, 0, sizeof *p);
			p->in = in;
		}
	} else {
		p->sa.sa_family = AF_UNSPEC;
	}
}

static void peer_key(const union smtp_peer *p, int *family, uint8_t addr[16])
{
	memset(addr, 0, 16);
	*family = p->sa.sa_family;
	if (*family == AF_INET)
		memcpy(addr, &p->in.sin_addr, 4);
	else if (*family == AF_INET6)
		memcpy(addr, &p->in6.sin6_addr, 16);
}

static size_t ip_hash(int family, const uint8_t addr[16])
{
	uint64_t h = 1469598103934665603ull ^ (uint64_t)family;

	for (size_t i = 0; i < 16; i++)
		h = (h ^ addr[i]) * 1099511628211ull;
	return (size_t)(h % IP_BUCKETS);
}

static struct smtp_ipent *ip_find(struct smtp_server *srv, const union smtp_peer *p,
				  bool create)
{
	struct smtp_ipent *e;
	uint8_t addr[16];
	int family;
	size_t h;

	peer_key(p, &family, addr);
	h = ip_hash(family, addr);
	for (e = srv->ip_table[h]; e != NULL; e = e->next)
		if (e->family == family && memcmp(e->addr, addr, 16) == 0)
			return e;
	if (!create || (e = calloc(1, sizeof *e)) == NULL)
		return NULL;
	e->family = family;
	memcpy(e->addr, addr, 16);
	e->next = srv->ip_table[h];
	srv->ip_table[h] = e;
	return e;
}

static void ip_release(struct smtp_server *srv, struct smtp_ipent *ent)
{
	struct smtp_ipent **pp;
	size_t h;

	if (ent == NULL || --ent->sessions > 0)
		return;
	h = ip_hash(ent->family, ent->addr);
	for (pp = &srv->ip_table[h]; *pp != NULL; pp = &(*pp)->next)
		if (*pp == ent) {
			*pp = ent->next;
			free(ent);
			return;
		}
}

/* ---- the server ---------------------------------------------------------- */

static void set_hostname(struct smtp_server *srv, const struct carrier_conf *conf)
{
	if (conf->hostname != NULL && conf->hostname[0])
		snprintf(srv->hostname, sizeof srv->hostname, "%s", conf->hostname);
	else if (gethostname(srv->hostname, sizeof srv->hostname - 1) < 0 ||
		 srv->hostname[0] == '\0')
		snprintf(srv->hostname, sizeof srv->hostname, "localhost");
}

struct smtp_server *smtp_server_new(struct event_base *base,
				    const struct carrier_conf *conf,
				    struct evlog *log, struct counters *ctr,
				    struct spool *spool, char *err, size_t errlen)
{
	struct smtp_server *srv = calloc(1, sizeof *srv);

	if (srv == NULL || (srv->ip_table = calloc(IP_BUCKETS, sizeof *srv->ip_table)) == NULL) {
		free(srv);
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	srv->ip_buckets = IP_BUCKETS;
	srv->base = base;
	srv->conf = conf;
	srv->log = log;
	srv->ctr = ctr;
	srv->spool = spool;
	set_hostname(srv, conf);
	return srv;
}

void smtp_server_link(struct smtp_server *srv, struct smtp_session *s)
{
	s->next = srv->sessions;
	s->prev = NULL;
	if (s->next)
		s->next->prev = s;
	srv->sessions = s;
	srv->n_sessions++;
	if (s->ip != NULL)
		s->ip->sessions++;
	if (srv->ctr) {
		counters_add(counters_block(srv->ctr), COUNTER_CONN_IN_CURRENT, 1);
		counters_add(counters_block(srv->ctr), COUNTER_CONN_IN_TOTAL, 1);
	}
}

void smtp_server_unlink(struct smtp_server *srv, struct smtp_session *s)
{
	if (s->prev)
		s->prev->next = s->next;
	else
		srv->sessions = s->next;
	if (s->next)
		s->next->prev = s->prev;
	s->next = s->prev = NULL;
	ip_release(srv, s->ip);
	s->ip = NULL;
	srv->n_sessions--;
	if (srv->ctr)
		counters_add(counters_block(srv->ctr), COUNTER_CONN_IN_CURRENT, -1);
}

/* Refuses a connection with one reply line; the socket is fresh, so the
 * short write goes into its empty send buffer. */
static void refuse(struct smtp_server *srv, int fd, const struct policy_result *pr)
{
	char buf[256];
	int n = snprintf(buf, sizeof buf, "%u %s %s\r\n", pr->code, pr->enhanced, pr->text);

	if (n > 0 && write(fd, buf, (size_t)n) < 0)
		(void)0;   /* the client is gone already: nothing to tell */
	shutdown(fd, SHUT_WR);
	close(fd);
	if (srv->ctr)
		counters_add(counters_block(srv->ctr), COUNTER_CONN_IN_REJECTED, 1);
}

int smtp_server_accept(struct smtp_server *srv, int fd,
		       const struct sockaddr *sa, socklen_t salen)
{
	return smtp_server_accept_on(srv, fd, sa, salen, 0);
}

int smtp_server_accept_on(struct smtp_server *srv, int fd, const struct sockaddr *sa,
			  socklen_t salen, unsigned flags)
{
	struct policy_conn_counts counts = { 0 };
	struct policy_result pr;
	struct smtp_ipent *ip;
	union smtp_peer peer;
	char addr[INET6_ADDRSTRLEN];

	evutil_make_socket_nonblocking(fd);
	peer_from(sa, salen, &peer);
	ip = ip_find(srv, &peer, false);
	counts.total = srv->n_sessions;
	counts.from_ip = ip ? ip->sessions : 0;
	counts.shutting_down = srv->shutting_down;
	policy_check_connection(srv->conf, &counts, &pr);
	if (pr.verdict != POLICY_ACCEPT) {
		if (pr.event == EV_POLICY_CONNECTION_REFUSED) {
			bool total = strcmp(pr.reason, "max_connections") == 0;

			smtp_peer_text(&peer, addr, sizeof addr);
			evlog_emit(srv->log, EV_POLICY_CONNECTION_REFUSED, EVF_S("client", addr),
				   EVF_S("limit", pr.reason),
				   EVF_I("count", total ? counts.total : counts.from_ip),
				   EVF_I("max", total ? srv->conf->max_connections :
					 srv->conf->max_connections_per_ip));
		}
		refuse(srv, fd, &pr);
		return -1;
	}
	ip = ip_find(srv, &peer, true);   /* NULL on OOM: the session goes uncounted */
	if (smtp_session_start(srv, fd, &peer, ip, flags) != NULL)
		return 0;
	if (ip != NULL && ip->sessions == 0) {
		ip->sessions = 1;   /* made for this session: drop it again */
		ip_release(srv, ip);
	}
	return -1;
}

void smtp_server_set_conf(struct smtp_server *srv, const struct carrier_conf *conf)
{
	srv->conf = conf;
	set_hostname(srv, conf);
}

size_t smtp_server_sessions(const struct smtp_server *srv)
{
	return srv->n_sessions;
}

void smtp_server_shutdown(struct smtp_server *srv)
{
	srv->shutting_down = true;
	for (struct smtp_session *s = srv->sessions; s; s = s->next)
		smtp_session_shutdown(s);
}

void smtp_server_free(struct smtp_server **srvp)
{
	struct smtp_server *srv = *srvp;

	if (srv == NULL)
		return;
	while (srv->sessions)
		smtp_session_destroy(srv->sessions);
	for (size_t i = 0; i < srv->ip_buckets; i++)
		while (srv->ip_table[i]) {
			struct smtp_ipent *e = srv->ip_table[i];

			srv->ip_table[i] = e->next;
			free(e);
		}
	free(srv->ip_table);
	verifier_free(&srv->verifier);   /* after the sessions: none waits for it */
	tls_unref(&srv->tls);
	passwd_db_free(&srv->passwd);
	auth_limiter_free(&srv->auth_fails);
	free(srv);
	*srvp = NULL;
}

void smtp_server_on_queued(struct smtp_server *srv, smtp_server_queued_fn *fn, void *arg)
{
	srv->on_queued = fn;
	srv->on_queued_arg = arg;
}

void smtp_server_set_track(struct smtp_server *srv, struct track *track)
{
	srv->track = track;
}

void smtp_server_set_tls(struct smtp_server *srv, struct tls *tls)
{
	tls_unref(&srv->tls);
	srv->tls = tls;
}

void smtp_server_set_passwd(struct smtp_server *srv, struct passwd_db *db)
{
	passwd_db_free(&srv->passwd);
	srv->passwd = db;
	if (db != NULL && srv->auth_fails == NULL)
		srv->auth_fails = auth_limiter_new();   /* NULL: failures only delayed */
}

struct verifier *smtp_server_verifier(struct smtp_server *srv, char *err, size_t errlen)
{
	if (srv->verifier == NULL)
		srv->verifier = verifier_new(srv->base, srv->conf->auth_verify_threads, err, errlen);
	return srv->verifier;
}
