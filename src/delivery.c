/*
 * delivery: the delivery runner (see delivery.h for the contract).
 *
 * Owns the pending-message index (a set of known qids and a min-heap of
 * their next attempt times: every known message has exactly one heap
 * entry unless it is being attempted), the next-hop table, the messages in
 * flight, the SMTP client and one worker thread.  The loop thread does
 * routing, DNS, SMTP and the bookkeeping; the worker does what blocks on
 * disk (spool walks and loads, Maildir writes, notification commits) and
 * hands each finished job back through one event.
 */
#include "delivery.h"
#include "delivery_int.h"

#include <errno.h>
#include <event2/event.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "conf.h"
#include "counters.h"
#include "dsn.h"
#include "evlog.h"
#include "maildir.h"
#include "route.h"
#include "schedule.h"
#include "smtp_client.h"
#include "spool.h"
#include "track.h"

#define RESCAN_SECS 1800          /* safety walk of the spool */
#define ERROR_RETRY 60            /* seconds after a spool error */
#define MAX_TIMER 300             /* the timer fires at least this often */
#define REPLY_MAX 600
#define GROUP_MAX 1000            /* recipients per job (smtp_client's cap) */

/* ---- configuration copy ------------------------------------------------- */

static void dcfg_free(struct dcfg *c)
{
	free(c->schedule);
	free(c->hostname);
	free(c->double_bounce_to);
	free(c->default_domain);
	free(c->tls_ca_file);
	memset(c, 0, sizeof *c);
}

static int dcfg_init(struct dcfg *c, const struct carrier_conf *conf)
{
	char host[256] = "localhost";

	memset(c, 0, sizeof *c);
	c->n_schedule = conf->n_retry_schedule ? conf->n_retry_schedule : 1;
	c->schedule = calloc(c->n_schedule, sizeof *c->schedule);
	if (c->schedule == NULL)
		return -1;
	for (size_t i = 0; i < conf->n_retry_schedule; i++)
		c->schedule[i] = conf->retry_schedule[i];
	if (conf->n_retry_schedule == 0)
		c->schedule[0] = 300;
	c->pol.schedule = c->schedule;
	c->pol.n = c->n_schedule;
	c->pol.lifetime = conf->max_queue_lifetime ? conf->max_queue_lifetime : 5 * 86400;
	c->pol.delay_warning = conf->delay_warning;
	c->max_deliveries = conf->max_deliveries ? conf->max_deliveries : 200;
	c->max_conns = conf->max_connections_per_destination ?
		       conf->max_connections_per_destination : 20;
	if (conf->hostname != NULL && conf->hostname[0] != '\0')
		snprintf(host, sizeof host, "%s", conf->hostname);
	else if (gethostname(host, sizeof host) < 0)
		snprintf(host, sizeof host, "localhost");
	host[sizeof host - 1] = '\0';
	c->hostname = strdup(host);
	c->double_bounce_to = strdup(conf->double_bounce_to ? conf->double_bounce_to : "");
	c->default_domain = strdup(conf->n_local_domains ? conf->local_domains[0] : host);
	c->tls_ca_file = strdup(conf->out_tls_ca_file ? conf->out_tls_ca_file : "");
	if (c->hostname == NULL || c->double_bounce_to == NULL || c->default_domain == NULL ||
	    c->tls_ca_file == NULL) {
		dcfg_free(c);
		return -1;
	}
	return 0;
}

static void pump(struct delivery *d);
static void group_route(struct dgroup *g);
static void group_done(struct dgroup *g);
static void msg_results(struct dmsg *m);
static void index_forget(struct delivery *d, const char *qid);

static void count(struct delivery *d, enum counters_id id)
{
	struct counters_shm *b = d->ctr ? counters_block(d->ctr) : NULL;

	if (b != NULL)
		counters_add(b, id, 1);
}

static int64_t now_s(void)
{
	return delivery_now();
}

/*
 * Indexes qid with `due`: a new message, or a known one due earlier than
 * planned (an administrator's retry found by a walk or a kick).  A message
 * being attempted is marked and put back soon after its attempt.  Returns
 * 1 when the index changed.
 */
static int index_add(struct delivery *d, const char *qid, int64_t due)
{
	bool added;
	struct qslot *sl;

	if (!delivery_qid_ok(qid) || (sl = delivery_qset_add(&d->known, qid, &added)) == NULL)
		return 0;
	if (!added && sl->busy) {
		sl->kicked = true;
		return 0;
	}
	if (!added && due >= sl->due)
		return 0;
	sl->due = due;
	if (delivery_heap_push(&d->heap, qid, due) < 0) {
		if (added)
			delivery_qset_del(&d->known, qid);
		return 0;
	}
	return 1;
}

/* Puts a message back after its attempt with its next due time. */
static void index_requeue(struct delivery *d, const char *qid, int64_t due)
{
	struct qslot *sl = delivery_qset_find(&d->known, qid);

	if (sl == NULL)
		return;
	if (sl->kicked && due > now_s() + 1)
		due = now_s() + 1;
	sl->busy = sl->kicked = false;
	sl->due = due;
	if (delivery_heap_push(&d->heap, qid, due) < 0)
		index_forget(d, qid);   /* found again by the next walk */
}

/* ---- next hops ------------------------------------------------------------- */

static int64_t mono_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static size_t hop_bucket(const char *key)
{
	size_t b = 0;

	for (const char *p = key; *p; p++)
		b = b * 31 + (unsigned char)*p;
	return b % HOP_BUCKETS;
}

static struct hop *hop_find(struct delivery *d, const char *key)
{
	for (struct hop *h = d->hops[hop_bucket(key)]; h != NULL; h = h->next)
		if (strcmp(h->key, key) == 0)
			return h;
	return NULL;
}

static struct hop *hop_get(struct delivery *d, const char *key)
{
	size_t b = hop_bucket(key);
	struct hop *h = hop_find(d, key);

	if (h != NULL)
		return h;
	if ((h = calloc(1, sizeof *h)) == NULL)
		return NULL;
	h->d = d;
	snprintf(h->key, sizeof h->key, "%s", key);
	h->ctr = counters_hop(d->ctr, h->key);
	h->next = d->hops[b];
	d->hops[b] = h;
	return h;
}

static void hop_destroy(struct hop *h)
{
	if (h->rate_ev != NULL)
		event_free(h->rate_ev);
	free(h);
}

/* Frees h when nothing of it is live: no slot held or awaited, no rate
 * spacing or failure state to remember, no queued message counted. */
static void hop_drop_if_idle(struct delivery *d, struct hop *h)
{
	struct hop **pp;

	if (h->active > 0 || h->n_wait > 0 || h->draining > 0 || h->fails > 0 ||
	    h->n_queued > 0 || (h->rate > 0 && h->next_ok_us > mono_us()))
		return;
	for (pp = &d->hops[hop_bucket(h->key)]; *pp != NULL; pp = &(*pp)->next)
		if (*pp == h) {
			*pp = h->next;
			hop_destroy(h);
			return;
		}
}

static bool hop_is_down(const struct hop *h, int64_t now)
{
	return h != NULL && h->down_until > now;
}

static void hop_rate_cb(evutil_socket_t fd, short what, void *arg);

/* True when the hop's rate lets one more message start now (and takes
 * its token); otherwise arms the hop's timer for the next token. */
static bool hop_rate_take(struct delivery *d, struct hop *h)
{
	int64_t now, wait;
	struct timeval tv;

	if (h->rate == 0)
		return true;
	now = mono_us();
	if (h->next_ok_us <= now) {
		h->next_ok_us = (h->next_ok_us + 1000000 / h->rate > now ? h->next_ok_us : now) +
				1000000 / h->rate;
		return true;
	}
	if (h->rate_ev == NULL && (h->rate_ev = evtimer_new(d->base, hop_rate_cb, h)) == NULL)
		return true;   /* no timer: no limit rather than a stall */
	if (!evtimer_pending(h->rate_ev, NULL)) {
		wait = h->next_ok_us - now;
		tv.tv_sec = (time_t)(wait / 1000000);
		tv.tv_usec = (suseconds_t)(wait % 1000000);
		evtimer_add(h->rate_ev, &tv);
	}
	return false;
}

/* Starts waiting groups while the hop's limit for its backlog and its
 * rate allow (one at a time while it has failed, to probe it); when the
 * hop is down, hands every waiting group back to its routes (they skip
 * the hop).  Returns true when `self` was among the started (its caller
 * goes on with it). */
static bool hop_drain(struct delivery *d, struct hop *h, struct dgroup *self)
{
	bool got = false;

	h->draining++;
	if (hop_is_down(h, now_s())) {
		while (h->whead != NULL) {
			struct dgroup *w = h->whead;

			h->whead = w->wnext;
			if (h->whead == NULL)
				h->wtail = NULL;
			h->n_wait--;
			w->hop = NULL;
			if (w != self)
				group_route(w);
		}
		h->draining--;
		hop_drop_if_idle(d, h);
		return false;
	}
	while (h->whead != NULL &&
	       h->active < (h->fails > 0 ? 1 : schedule_hop_limit(h->active + h->n_wait, h->max)) &&
	       hop_rate_take(d, h)) {
		struct dgroup *w = h->whead;

		h->whead = w->wnext;
		if (h->whead == NULL)
			h->wtail = NULL;
		h->n_wait--;
		h->active++;
		w->hop = h;
		if (w == self)
			got = true;
		else
			group_route(w);
	}
	h->draining--;
	hop_drop_if_idle(d, h);
	return got;
}

static void hop_rate_cb(evutil_socket_t fd, short what, void *arg)
{
	struct hop *h = arg;

	if (!h->d->stop)
		hop_drain(h->d, h, NULL);
}

/*
 * Takes a slot of the route's next hop for g (in arrival order).  Returns
 * true when g holds one now; false when g waits in the hop's queue
 * (group_route runs again for it when a slot frees or a token of the
 * hop's rate is due).  Out of memory for the hop table: true, without a
 * limit.
 */
static bool hop_acquire(struct dgroup *g, const struct route *r)
{
	struct delivery *d = g->m->d;
	struct hop *h = hop_get(d, r->key);

	if (h == NULL)
		return true;
	h->max = r->max_connections ? r->max_connections : d->cfg.max_conns;
	h->rate = r->max_rate;
	g->wnext = NULL;
	if (h->wtail)
		h->wtail->wnext = g;
	else
		h->whead = g;
	h->wtail = g;
	h->n_wait++;
	return hop_drain(d, h, g);
}

static void hop_release(struct dgroup *g)
{
	struct hop *h = g->hop;

	if (h == NULL)
		return;
	g->hop = NULL;
	h->active--;
	hop_drain(g->m->d, h, NULL);
}

/*
 * The outcome of an SMTP/LMTP job for its next hop (before the slot is
 * released): a session reached MAIL: the hop is up; every destination
 * failed before MAIL and every recipient is deferred: a connection-level
 * failure, the hop is down for its own backoff (shared by every message
 * for it) and later messages skip it until then.
 */
static void hop_outcome(struct dgroup *g, const struct route *r,
			const struct smtp_client_result *res)
{
	struct delivery *d = g->m->d;
	struct hop *h = g->hop;
	bool all_temp = res->n_rcpts > 0;
	int64_t now = now_s(), delay;
	char reason[SMTP_CLIENT_TEXT_MAX + SMTP_CLIENT_ADDR_MAX + 4];
	const struct smtp_client_attempt *a;

	for (size_t k = 0; k < res->n_rcpts; k++)
		if (res->rcpts[k].cls != SMTP_CLIENT_TEMP)
			all_temp = false;
	if (res->connected) {
		if (h == NULL && (h = hop_find(d, r->key)) == NULL)
			return;
		if (h->fails > 0)
			evlog_emit(d->log, EV_DELIVERY_HOP_UP, EVF_S("hop", h->key),
				   EVF_I("failures", h->fails));
		h->fails = 0;
		h->down_until = 0;
		return;
	}
	if (res->n_attempts == 0 || !all_temp)
		return;
	if (h == NULL && (h = hop_get(d, r->key)) == NULL)
		return;
	/* Jobs in flight together when it went down fail together: once. */
	if (hop_is_down(h, now))
		return;
	a = &res->attempts[res->n_attempts - 1];
	snprintf(reason, sizeof reason, "%s: %s", a->addr[0] ? a->addr : a->host, a->reason);
	delay = schedule_delay(&d->cfg.pol, h->fails, &d->rnd);
	h->fails++;
	h->down_until = now + delay;
	counters_hop_set_failure(h->ctr, reason, now);
	counters_hop_set_next_retry(h->ctr, h->down_until);
	evlog_emit(d->log, EV_DELIVERY_HOP_DOWN, EVF_S("hop", h->key),
		   EVF_I("failures", h->fails), EVF_I("delay", delay), EVF_S("reason", reason));
}

/* ---- the queue gauges per next hop ------------------------------------------ */

static void hop_unqueue(struct delivery *d, struct qslot *sl)
{
	struct hop *h = sl->hop;

	if (h == NULL)
		return;
	sl->hop = NULL;
	h->n_queued--;
	h->q_bytes -= sl->size;
	counters_hop_add(h->ctr, HOP_QUEUE_MSGS, -1);
	counters_hop_add(h->ctr, HOP_QUEUE_BYTES, -(int64_t)sl->size);
	if (h->n_queued == 0) {
		h->oldest = 0;
		counters_hop_set(h->ctr, HOP_OLDEST, 0);
	} else if (sl->arrival <= h->oldest) {
		d->oldest_dirty = true;   /* recounted by pump, at most once a second */
	}
	hop_drop_if_idle(d, h);
}

/* Counts qid's message in the queue of next hop `key` (moving it from the
 * hop it was counted for). */
static void hop_enqueue(struct delivery *d, const char *qid, const char *key,
			int64_t arrival, uint64_t size)
{
	struct qslot *sl = delivery_qset_find(&d->known, qid);
	struct hop *h;

	if (sl == NULL || (sl->hop != NULL && strcmp(sl->hop->key, key) == 0))
		return;
	if ((h = hop_get(d, key)) == NULL)
		return;
	h->n_queued++;        /* first: keeps h alive through the unqueue */
	hop_unqueue(d, sl);
	sl->hop = h;
	sl->arrival = arrival;
	sl->size = size;
	h->q_bytes += size;
	counters_hop_add(h->ctr, HOP_QUEUE_MSGS, 1);
	counters_hop_add(h->ctr, HOP_QUEUE_BYTES, (int64_t)size);
	if (h->oldest == 0 || arrival < h->oldest) {
		h->oldest = arrival;
		counters_hop_set(h->ctr, HOP_OLDEST, arrival);
	}
}

/* Takes qid out of the index (and of its hop's queue). */
static void index_forget(struct delivery *d, const char *qid)
{
	struct qslot *sl = delivery_qset_find(&d->known, qid);

	if (sl != NULL)
		hop_unqueue(d, sl);
	delivery_qset_del(&d->known, qid);
}

/* Recomputes the oldest arrival of every hop after one left (a walk of
 * the index: bounded to once a second). */
static void hops_recount_oldest(struct delivery *d, int64_t now)
{
	if (!d->oldest_dirty || now == d->oldest_at)
		return;
	d->oldest_dirty = false;
	d->oldest_at = now;
	for (size_t b = 0; b < HOP_BUCKETS; b++)
		for (struct hop *h = d->hops[b]; h != NULL; h = h->next)
			h->scan_oldest = 0;
	for (size_t i = 0; i < d->known.cap; i++) {
		struct qslot *sl = &d->known.v[i];

		if (sl->qid[0] != '\0' && sl->hop != NULL &&
		    (sl->hop->scan_oldest == 0 || sl->arrival < sl->hop->scan_oldest))
			sl->hop->scan_oldest = sl->arrival;
	}
	for (size_t b = 0; b < HOP_BUCKETS; b++)
		for (struct hop *h = d->hops[b]; h != NULL; h = h->next)
			if (h->scan_oldest != h->oldest) {
				h->oldest = h->scan_oldest;
				counters_hop_set(h->ctr, HOP_OLDEST, h->oldest);
			}
}

/* ---- one group: routes in cost order -------------------------------------- */

static void rs_set(struct rstate *r, enum rs_state cls, unsigned code, const char *enh,
		   const char *text, const char *host, const char *hop)
{
	r->last = cls;
	r->code = code;
	snprintf(r->enh, sizeof r->enh, "%s", enh ? enh : "");
	snprintf(r->text, sizeof r->text, "%s", text ? text : "");
	snprintf(r->host, sizeof r->host, "%s", host ? host : "");
	r->hop = hop;
	/* OK and PERM are final for this attempt; TEMP is final only when
	 * the caller says so (rs_final). */
	if (cls == RS_OK || cls == RS_PERM)
		r->st = cls;
}

/* Sets every recipient still being tried in g. */
static void group_set_all(struct dgroup *g, enum rs_state cls, unsigned code,
			  const char *enh, const char *text, const char *hop)
{
	for (size_t k = 0; k < g->n; k++) {
		struct rstate *r = &g->m->rs[g->idx[k]];

		if (r->st == RS_TRY)
			rs_set(r, cls, code, enh, text, "", hop);
	}
}

static bool group_trying(const struct dgroup *g)
{
	for (size_t k = 0; k < g->n; k++)
		if (g->m->rs[g->idx[k]].st == RS_TRY)
			return true;
	return false;
}

/* The recipients of g still being tried, for a job. */
static int group_job_rcpts(struct dgroup *g)
{
	free(g->job_idx);
	g->job_n = 0;
	if ((g->job_idx = calloc(g->n ? g->n : 1, sizeof *g->job_idx)) == NULL)
		return -1;
	for (size_t k = 0; k < g->n; k++)
		if (g->m->rs[g->idx[k]].st == RS_TRY)
			g->job_idx[g->job_n++] = g->idx[k];
	return 0;
}

/* Tracking record of one attempt of g's running job. */
static void track_job(struct dgroup *g, const char *nexthop, const char *addr,
		      const char *reply)
{
	struct delivery *d = g->m->d;
	const char **rcpts;

	if (d->track == NULL || (rcpts = calloc(g->job_n + 1, sizeof *rcpts)) == NULL)
		return;
	for (size_t k = 0; k < g->job_n; k++)
		rcpts[k] = g->m->env->rcpts[g->job_idx[k]].addr;
	track_attempt(d->track, g->m->env->qid, rcpts, g->job_n, nexthop, addr, reply);
	free(rcpts);
}

static void start_maildir(struct dgroup *g, const struct route *r)
{
	struct delivery *d = g->m->d;
	struct wjob *j = calloc(1, sizeof *j);

	if (j == NULL || group_job_rcpts(g) < 0 ||
	    (j->mres = calloc(g->job_n, sizeof *j->mres)) == NULL ||
	    (j->mtext = calloc(g->job_n, sizeof *j->mtext)) == NULL ||
	    (j->root = strdup(r->target)) == NULL ||
	    (j->hostname = strdup(d->cfg.hostname)) == NULL ||
	    (j->domain = strdup(d->cfg.default_domain)) == NULL) {
		delivery_job_free(j);
		hop_release(g);
		group_set_all(g, RS_TEMP, 0, "4.3.0", "out of memory", r->key);
		g->ri++;
		group_route(g);
		return;
	}
	j->type = WJ_MAILDIR;
	j->g = g;
	delivery_job_post(d, j);
}

static void maildir_done(struct delivery *d, struct wjob *j)
{
	struct dgroup *g = j->g;
	const struct route *r = &g->dec->routes[g->ri];
	static const char *const enh[] = { "2.0.0", "4.2.0", "5.2.0" };
	bool all_temp = true;

	hop_release(g);
	track_job(g, r->key, "", j->mtext[0]);
	for (size_t k = 0; k < g->job_n; k++) {
		struct rstate *rs = &g->m->rs[g->job_idx[k]];
		enum maildir_result mr = j->mres[k];

		rs_set(rs, mr == MAILDIR_OK ? RS_OK : mr == MAILDIR_PERM ? RS_PERM : RS_TEMP,
		       0, enh[mr], j->mtext[k], r->key, r->key);
		rs->success_dsn = mr == MAILDIR_OK;
		rs->relayed = false;
		if (mr != MAILDIR_TEMP)
			all_temp = false;
	}
	/* The whole route failed for now: the next one may do. */
	if (!all_temp)
		for (size_t k = 0; k < g->job_n; k++)
			if (g->m->rs[g->job_idx[k]].st == RS_TRY)
				g->m->rs[g->job_idx[k]].st = RS_TEMP;
	g->ri++;
	group_route(g);
}

static void smtp_done(void *arg, const struct smtp_client_result *res)
{
	struct dgroup *g = arg;
	const struct route *r = &g->dec->routes[g->ri];
	char reason[SMTP_CLIENT_TEXT_MAX + SMTP_CLIENT_HOST_MAX + 8];

	hop_outcome(g, r, res);
	hop_release(g);
	if (res->n_rcpts > 0) {
		char first[SMTP_CLIENT_TEXT_MAX + 32];

		snprintf(first, sizeof first, "%u%s%s %s", res->rcpts[0].code,
			 res->rcpts[0].enhanced[0] ? " " : "", res->rcpts[0].enhanced,
			 res->rcpts[0].text);
		track_job(g, r->key, res->addr, first);
	}
	/* Each destination that failed before MAIL is a failed connection. */
	for (size_t k = 0; k < res->n_attempts; k++) {
		counters_conn_out_failed(g->m->d->ctr, g->hop_ctr, res->attempts[k].reason,
					 now_s());
		/* smtp_client words its TLS failures "TLS <policy>: <why>". */
		if (strncmp(res->attempts[k].reason, "TLS ", 4) == 0)
			counters_out_tls(g->hop_ctr, false);
	}
	if (res->tls[0])
		counters_out_tls(g->hop_ctr, true);
	for (size_t k = 0; k < g->job_n && k < res->n_rcpts; k++) {
		struct rstate *rs = &g->m->rs[g->job_idx[k]];
		const struct smtp_client_rcpt_result *rr = &res->rcpts[k];
		enum rs_state cls = rr->cls == SMTP_CLIENT_OK ? RS_OK :
				    rr->cls == SMTP_CLIENT_PERM ? RS_PERM : RS_TEMP;
		const char *text = rr->text;

		if (!res->connected && cls == RS_TEMP && res->n_attempts > 0) {
			const struct smtp_client_attempt *a = &res->attempts[res->n_attempts - 1];

			snprintf(reason, sizeof reason, "%s (%s): %s", a->host[0] ? a->host : a->addr,
				 a->addr, a->reason);
			text = reason;
		}
		rs_set(rs, cls, rr->code, rr->enhanced, text, rr->host[0] ? rr->host : rr->addr,
		       r->key);
		/* NOTIFY=SUCCESS could not be passed on: we report. */
		rs->success_dsn = cls == RS_OK && rr->dsn_relayed;
		rs->relayed = r->kind != ROUTE_LMTP_UNIX && r->kind != ROUTE_LMTP_INET;
		/* A session reached MAIL: its temporary answers are final for
		 * this attempt (no failover after MAIL). */
		if (res->connected && cls == RS_TEMP)
			rs->st = RS_TEMP;
	}
	g->ri++;
	group_route(g);
}

static void start_smtp(struct dgroup *g, const struct route *r, const struct route_target *t)
{
	struct delivery *d = g->m->d;
	const struct spool_envelope *env = g->m->env;
	struct smtp_client_rcpt *cr = NULL;
	struct smtp_client_dest *dests = NULL;
	struct smtp_client_job job = { 0 };
	size_t nd = 0, na = t ? t->n_addrs : 0;
	char err[512] = "out of memory";

	if (group_job_rcpts(g) < 0 ||
	    (cr = calloc(g->job_n ? g->job_n : 1, sizeof *cr)) == NULL ||
	    (dests = calloc(1 + (na < 32 ? na : 32), sizeof *dests)) == NULL)
		goto fail;
	for (size_t k = 0; k < g->job_n; k++) {
		const struct spool_rcpt *sr = &env->rcpts[g->job_idx[k]];

		cr[k].addr = sr->addr;
		cr[k].notify = sr->notify;
		cr[k].orcpt = sr->orcpt;
	}
	if (r->kind == ROUTE_LMTP_UNIX) {
		snprintf(dests[0].unix_path, sizeof dests[0].unix_path, "%s", r->target);
		snprintf(dests[0].host, sizeof dests[0].host, "%s", r->target);
		nd = 1;
	}
	for (size_t a = 0; a < na && nd < 32; a++, nd++) {
		memcpy(&dests[nd].addr, &t->addrs[a].ss, sizeof dests[nd].addr);
		dests[nd].addr_len = t->addrs[a].len;
		snprintf(dests[nd].host, sizeof dests[nd].host, "%s",
			 t->addrs[a].host ? t->addrs[a].host : r->target);
	}
	job.mode = (r->kind == ROUTE_LMTP_UNIX || r->kind == ROUTE_LMTP_INET) ?
		   SMTP_CLIENT_LMTP : SMTP_CLIENT_SMTP;
	job.nexthop = r->key;
	job.qid = env->qid;
	job.sender = env->sender;
	job.body_type = env->body_type;
	job.smtputf8 = env->smtputf8;
	job.dsn_ret = env->dsn_ret;
	job.envid = env->envid;
	job.size = env->size;
	job.rcpts = cr;
	job.n_rcpts = g->job_n;
	job.dests = dests;
	job.n_dests = nd;
	job.spool = d->spool;
	/* SMTP routes default to opportunistic TLS; LMTP (a local mailbox
	 * server) only when its route asks.  Required TLS never falls back. */
	if (job.mode == SMTP_CLIENT_LMTP && r->tls[0] == '\0')
		job.tls = SMTP_CLIENT_TLS_NONE;
	else if (smtp_client_tls_parse(r->tls, &job.tls) < 0)
		job.tls = SMTP_CLIENT_TLS_MAY;
	job.tls_ca_file = d->cfg.tls_ca_file[0] ? d->cfg.tls_ca_file : NULL;
	if (nd == 0) {
		snprintf(err, sizeof err, "%s: no address to connect to", r->key);
		goto fail;
	}
	if (smtp_client_submit(d->client, &job, smtp_done, g, err, sizeof err) < 0)
		goto fail;
	free(cr);
	free(dests);
	return;
fail:
	free(cr);
	free(dests);
	hop_release(g);
	evlog_emit(d->log, EV_DELIVERY_START_FAILED, EVF_S("qid", env->qid),
		   EVF_S("hop", r->key), EVF_S("reason", err));
	group_set_all(g, RS_TEMP, 0, "4.3.0", err, r->key);
	g->ri++;
	group_route(g);
}

static bool needs_dns(enum route_kind k)
{
	return k == ROUTE_SMTP || k == ROUTE_MX || k == ROUTE_LMTP_INET;
}

/* When route r's next hop is down (and g holds no slot of it), marks g's
 * recipients as waiting for it and returns true: the caller skips the
 * route (the next one may still take them). */
static bool group_skip_down(struct dgroup *g, const struct route *r)
{
	struct delivery *d = g->m->d;
	struct hop *h;
	int64_t now = now_s();
	char text[SMTP_CLIENT_TEXT_MAX];

	if (g->hop != NULL || (h = hop_find(d, r->key)) == NULL || !hop_is_down(h, now))
		return false;
	snprintf(text, sizeof text, "%s: next hop down after %u failed connections, retried in %llds",
		 r->key, h->fails, (long long)(h->down_until - now));
	group_set_all(g, RS_TEMP, 0, "4.4.1", text, r->key);
	if (g->wait_until == 0 || h->down_until < g->wait_until)
		g->wait_until = h->down_until;
	return true;
}

/* Tries g's routes from g->ri on until one is started or all are done. */
static void group_route(struct dgroup *g)
{
	char text[SMTP_CLIENT_TEXT_MAX];

	while (g->ri < g->dec->n && group_trying(g)) {
		const struct route *r = &g->dec->routes[g->ri];
		const struct route_target *t = NULL;

		if (g->res != NULL && g->ri < g->res->n)
			t = &g->res->targets[g->ri];
		switch (r->kind) {
		case ROUTE_DISCARD:
			snprintf(text, sizeof text, "discarded by route %s", g->dec->space);
			group_set_all(g, RS_OK, 0, "2.0.0", text, r->key);
			continue;
		case ROUTE_REJECT:
			snprintf(text, sizeof text, "refused by the routing table (route %s)",
				 g->dec->space);
			group_set_all(g, RS_PERM, 550, "5.7.1", text, r->key);
			continue;
		case ROUTE_MAILDIR:
			if (g->hop == NULL && !hop_acquire(g, r))
				return;
			g->hop_ctr = counters_hop(g->m->d->ctr, r->key);
			g->attempted = true;
			start_maildir(g, r);
			return;
		case ROUTE_LMTP_UNIX:
			if (group_skip_down(g, r)) {
				g->ri++;
				continue;
			}
			if (g->hop == NULL && !hop_acquire(g, r))
				return;
			g->hop_ctr = counters_hop(g->m->d->ctr, r->key);
			g->attempted = true;
			start_smtp(g, r, t);
			return;
		case ROUTE_SMTP:
		case ROUTE_MX:
		case ROUTE_LMTP_INET:
			break;
		}
		if (group_skip_down(g, r)) {
			g->ri++;
			continue;
		}
		if (t == NULL) {
			g->attempted = true;
			group_set_all(g, RS_TEMP, 0, "4.4.3", "no DNS resolver", r->key);
			g->ri++;
			continue;
		}
		if (t->status != DNS_OK || t->n_addrs == 0) {
			bool perm = dns_status_permanent(t->status);

			g->attempted = true;
			snprintf(text, sizeof text, "%s: %s", r->key,
				 t->reason[0] ? t->reason : dns_status_name(t->status));
			if (t->null_mx) {
				group_set_all(g, RS_PERM, 556, "5.1.10",
					      "domain does not accept mail (null MX)", r->key);
				return group_done(g);
			}
			group_set_all(g, RS_TEMP, 0, perm ? "5.1.2" : "4.4.3", text, r->key);
			/* A permanent DNS answer fails the recipient unless a
			 * dearer route can still take it. */
			if (perm && g->ri + 1 == g->dec->n)
				group_set_all(g, RS_PERM, 0, "5.1.2", text, r->key);
			g->ri++;
			continue;
		}
		if (g->hop == NULL && !hop_acquire(g, r))
			return;
		g->hop_ctr = counters_hop(g->m->d->ctr, r->key);
		g->attempted = true;
		start_smtp(g, r, t);
		return;
	}
	group_done(g);
}

static void resolved_cb(struct route_resolution *res, void *arg)
{
	struct dgroup *g = arg;

	g->req = NULL;
	g->res = res;
	group_route(g);
}

static void group_start(struct dgroup *g)
{
	struct delivery *d = g->m->d;
	bool dns = false;
	char err[256];

	for (size_t i = 0; i < g->dec->n; i++)
		dns |= needs_dns(g->dec->routes[i].kind);
	if (dns && d->dns != NULL) {
		g->req = route_resolve_async(d->routes, d->dns, g->dec, resolved_cb, g,
					     err, sizeof err);
		if (g->req != NULL)
			return;
		group_set_all(g, RS_TEMP, 0, "4.3.0", err, g->dec->routes[0].key);
		return group_done(g);
	}
	group_route(g);
}

static void group_free(struct dgroup *g)
{
	route_resolve_cancel(&g->req);
	route_resolution_free(&g->res);
	route_decision_free(&g->dec);
	free(g->idx);
	free(g->job_idx);
	free(g);
}

static void group_done(struct dgroup *g)
{
	struct dmsg *m = g->m;

	for (size_t k = 0; k < g->n; k++) {
		struct rstate *r = &m->rs[g->idx[k]];

		if (r->st != RS_TRY)
			continue;
		/* Every route it had was skipped, its hop down: it waits for
		 * the hop without an attempt. */
		if (!g->attempted && g->wait_until > 0) {
			r->st = RS_WAIT;
			r->next = g->wait_until;
			continue;
		}
		r->st = r->last == RS_PERM ? RS_PERM : RS_TEMP;
		if (r->text[0] == '\0')
			snprintf(r->text, sizeof r->text, "no route could be tried");
	}
	if (--m->groups_left == 0)
		msg_results(m);
}

/* ---- one message ------------------------------------------------------------ */

static const char *domain_of(const struct delivery *d, const char *addr)
{
	const char *at = strrchr(addr, '@');

	return at ? at + 1 : d->cfg.default_domain;
}

static bool same_routes(const struct route_decision *a, const struct route_decision *b)
{
	if (a->n != b->n)
		return false;
	for (size_t i = 0; i < a->n; i++)
		if (strcmp(a->routes[i].key, b->routes[i].key) != 0 ||
		    a->routes[i].cost != b->routes[i].cost)
			return false;
	return true;
}

static int group_add(struct dgroup *g, size_t i)
{
	if (g->n == g->cap) {
		size_t cap = g->cap ? g->cap * 2 : 8;
		size_t *v = realloc(g->idx, cap * sizeof *v);

		if (v == NULL)
			return -1;
		g->idx = v;
		g->cap = cap;
	}
	g->idx[g->n++] = i;
	return 0;
}

/* Finds or makes the group for recipient i; NULL when its domain cannot
 * be routed (the recipient is then failed) or out of memory (deferred). */
static struct dgroup *group_for(struct dmsg *m, size_t i, struct dgroup **of)
{
	struct delivery *d = m->d;
	const char *dom = domain_of(d, m->env->rcpts[i].addr);
	struct route_decision *dec;
	struct dgroup *g;

	for (size_t j = 0; j < i; j++)
		if (of[j] != NULL && of[j]->n < GROUP_MAX &&
		    strcasecmp(domain_of(d, m->env->rcpts[j].addr), dom) == 0)
			return of[j];
	if ((dec = route_lookup(d->routes, dom)) == NULL) {
		rs_set(&m->rs[i], RS_PERM, 0, "5.1.2", "invalid or unroutable domain", "", NULL);
		return NULL;
	}
	for (g = m->groups; g != NULL; g = g->next)
		if (g->n < GROUP_MAX && same_routes(g->dec, dec)) {
			route_decision_free(&dec);
			return g;
		}
	if ((g = calloc(1, sizeof *g)) == NULL) {
		route_decision_free(&dec);
		rs_set(&m->rs[i], RS_TEMP, 0, "4.3.0", "out of memory", "", NULL);
		m->rs[i].st = RS_TEMP;
		return NULL;
	}
	g->m = m;
	g->dec = dec;
	g->next = m->groups;
	m->groups = g;
	m->groups_left++;
	return g;
}

static void msg_free(struct dmsg *m)
{
	struct delivery *d = m->d;

	while (m->groups != NULL) {
		struct dgroup *g = m->groups;

		m->groups = g->next;
		group_free(g);
	}
	if (m->prev)
		m->prev->next = m->next;
	else if (d->active == m)
		d->active = m->next;
	if (m->next)
		m->next->prev = m->prev;
	spool_envelope_free(&m->env);
	free(m->rs);
	free(m);
	d->n_active--;
}

static void msg_start(struct dmsg *m)
{
	const struct spool_envelope *env = m->env;
	struct dgroup **of = calloc(env->n_rcpts ? env->n_rcpts : 1, sizeof *of);
	bool any = false;

	m->now = now_s();
	if (of == NULL) {
		msg_results(m);   /* nothing tried: back in the index */
		return;
	}
	for (size_t i = 0; i < env->n_rcpts; i++) {
		const struct spool_rcpt *r = &env->rcpts[i];
		bool dup = false;

		if (r->state != SPOOL_RCPT_QUEUED &&
		    (r->state != SPOOL_RCPT_DEFERRED || r->next_attempt > m->now))
			continue;
		for (size_t j = 0; j < i && !dup; j++)
			dup = m->rs[j].st != RS_SKIP && strcasecmp(env->rcpts[j].addr, r->addr) == 0;
		if (dup) {
			rs_set(&m->rs[i], RS_OK, 0, "2.0.0", "duplicate recipient, delivered once",
			       "", NULL);
			continue;
		}
		m->rs[i].st = RS_TRY;
		if ((of[i] = group_for(m, i, of)) != NULL && group_add(of[i], i) < 0) {
			rs_set(&m->rs[i], RS_TEMP, 0, "4.3.0", "out of memory", "", NULL);
			m->rs[i].st = RS_TEMP;
			of[i] = NULL;
		}
		if (of[i] != NULL && of[i]->dec->n > 0)
			track_routed(m->d->track, env->qid, r->addr, of[i]->dec->space,
				     of[i]->dec->routes[0].key, of[i]->dec->routes[0].cost);
		any = true;
	}
	free(of);
	if (!any || m->groups == NULL) {
		msg_results(m);
		return;
	}
	/* Hold one reference so a group that finishes at once does not
	 * end the message before the others started. */
	m->groups_left++;
	for (struct dgroup *g = m->groups; g != NULL; g = g->next)
		group_start(g);
	if (--m->groups_left == 0)
		msg_results(m);
}

/* ---- results, notifications, records ---------------------------------------- */

/* What a result's spool callback may reach of the runner: it can arrive
 * after delivery_free (delivery.h), which clears d.  Loop thread only. */
struct rec_home {
	struct delivery *d;
	size_t refs;              /* the runner's + one per rec in flight */
};

struct rec {
	struct evlog *log;
	struct rec_home *home;
	char qid[SPOOL_QID_SIZE];
	char rcpt[256];
	const char *result;
	bool remove;
};

static void rec_home_put(struct rec_home **hp)
{
	if (*hp != NULL && --(*hp)->refs == 0)
		free(*hp);
	*hp = NULL;
}

static void rec_free(struct rec *r)
{
	if (r == NULL)
		return;
	rec_home_put(&r->home);
	free(r);
}

/* The removal of a finished message failed (a spool write error; the
 * results queued with it failed too, or are moot): msg_record already
 * dropped it from the index, and without this it would wait for the next
 * walk of the spool (RESCAN_SECS) or a restart.  Put it back: it is
 * attempted again after the first retry step, at most ERROR_RETRY (a
 * recipient already delivered may get a second copy, as
 * DELIVERY_RECORD_FAILED says; never a lost one). */
static void rec_retry(struct delivery *d, const char *qid)
{
	int64_t delay = schedule_delay(&d->cfg.pol, 0, &d->rnd);

	if (delay > ERROR_RETRY)
		delay = ERROR_RETRY;
	if (index_add(d, qid, now_s() + delay))
		pump(d);
}

static void rec_done(void *arg, int rc, const char *qid, const char *err)
{
	struct rec *r = arg;

	if (r->remove && rc == 0)
		evlog_emit(r->log, EV_DELIVERY_REMOVED, EVF_S("qid", r->qid));
	else if (r->remove && rc < 0)
		evlog_emit(r->log, EV_DELIVERY_SPOOL_FAILED, EVF_S("reason", err ? err : "?"));
	else if (rc < 0)
		evlog_emit(r->log, EV_DELIVERY_RECORD_FAILED, EVF_S("qid", r->qid),
			   EVF_S("rcpt", r->rcpt), EVF_S("result", r->result),
			   EVF_S("reason", err ? err : "?"));
	if (r->remove && rc < 0 && r->home->d != NULL)
		rec_retry(r->home->d, r->qid);
	rec_free(r);
}

static struct rec *rec_new(struct delivery *d, const char *qid, const char *rcpt,
			   const char *result, bool remove)
{
	struct rec *r = calloc(1, sizeof *r);

	if (r == NULL)
		return NULL;
	r->log = d->log;
	r->home = d->rhome;
	r->home->refs++;
	snprintf(r->qid, sizeof r->qid, "%s", qid);
	snprintf(r->rcpt, sizeof r->rcpt, "%s", rcpt ? rcpt : "");
	r->result = result;
	r->remove = remove;
	return r;
}

static void reply_of(const struct rstate *r, char *out, size_t len)
{
	char code[16] = "";

	if (r->code)
		snprintf(code, sizeof code, "%u ", r->code);
	snprintf(out, len, "%s%s%s%s%s%s%s", code, r->enh, r->enh[0] ? " " : "", r->text,
		 r->host[0] && r->hop && strcmp(r->host, r->hop) ? " (" : "",
		 r->host[0] && r->hop && strcmp(r->host, r->hop) ? r->host : "",
		 r->host[0] && r->hop && strcmp(r->host, r->hop) ? ")" : "");
}

static void emit_result(struct delivery *d, struct dmsg *m, size_t i, const char *reply)
{
	const struct spool_envelope *env = m->env;
	const struct rstate *r = &m->rs[i];
	const char *hop = r->hop ? r->hop : "none";

	switch (r->fin) {
	case SPOOL_RCPT_DELIVERED:
		evlog_emit(d->log, EV_DELIVERY_DELIVERED, EVF_S("qid", env->qid),
			   EVF_S("rcpt", env->rcpts[i].addr), EVF_S("hop", hop),
			   EVF_S("relay", r->host[0] ? r->host : hop), EVF_S("reply", reply));
		track_delivered(d->track, env->qid, env->rcpts[i].addr, hop, reply);
		d->st.delivered++;
		break;
	case SPOOL_RCPT_DEFERRED:
		evlog_emit(d->log, EV_DELIVERY_DEFERRED, EVF_S("qid", env->qid),
			   EVF_S("rcpt", env->rcpts[i].addr), EVF_S("hop", hop),
			   EVF_I("attempt", env->rcpts[i].attempts + 1),
			   EVF_I("delay", r->next - m->now), EVF_S("reply", reply));
		track_deferred(d->track, env->qid, env->rcpts[i].addr, reply, (time_t)r->next);
		d->st.deferred++;
		break;
	case SPOOL_RCPT_FAILED:
		if (r->expired) {
			evlog_emit(d->log, EV_DELIVERY_EXPIRED, EVF_S("qid", env->qid),
				   EVF_S("rcpt", env->rcpts[i].addr),
				   EVF_I("age", m->now - env->arrival),
				   EVF_I("lifetime", d->cfg.pol.lifetime), EVF_S("reply", reply));
			track_expired(d->track, env->qid, env->rcpts[i].addr, reply);
			count(d, COUNTER_RCPT_EXPIRED);
		} else
			evlog_emit(d->log, EV_DELIVERY_BOUNCED, EVF_S("qid", env->qid),
				   EVF_S("rcpt", env->rcpts[i].addr), EVF_S("hop", hop),
				   EVF_S("reply", reply));
		track_bounced(d->track, env->qid, env->rcpts[i].addr, reply,
			      r->notified ? m->bounce_qid : NULL);
		d->st.failed++;
		break;
	case SPOOL_RCPT_QUEUED:
		break;
	}
}

/* Counters, per message and next hop as counters.h asks: one call per
 * (hop, outcome) with its number of recipients. */
static void count_results(struct delivery *d, struct dmsg *m)
{
	const struct spool_envelope *env = m->env;
	bool expired = false;

	for (size_t i = 0; i < env->n_rcpts; i++) {
		struct rstate *r = &m->rs[i];
		struct counters_hop *h;
		unsigned n = 0;
		char reply[REPLY_MAX];

		if (r->st == RS_SKIP || r->st == RS_WAIT || r->counted)
			continue;
		for (size_t k = i; k < env->n_rcpts; k++) {
			struct rstate *o = &m->rs[k];

			if (o->st != RS_SKIP && o->st != RS_WAIT && !o->counted && o->fin == r->fin &&
			    (o->hop == r->hop || (o->hop && r->hop && !strcmp(o->hop, r->hop)))) {
				o->counted = true;
				n++;
			}
		}
		expired |= r->expired;
		h = counters_hop(d->ctr, r->hop ? r->hop : "none");
		reply_of(r, reply, sizeof reply);
		if (r->fin == SPOOL_RCPT_DELIVERED)
			counters_out_delivered(d->ctr, h, n, env->size);
		else if (r->fin == SPOOL_RCPT_DEFERRED)
			counters_out_deferred(d->ctr, h, n, reply, m->now);
		else if (r->fin == SPOOL_RCPT_FAILED)
			counters_out_bounced(d->ctr, h, n, reply, m->now);
		if (r->fin == SPOOL_RCPT_DEFERRED) {
			/* A hop that is down is retried at its own time. */
			struct hop *hp = r->hop ? hop_find(d, r->hop) : NULL;

			counters_hop_set_next_retry(h, hop_is_down(hp, m->now) ? hp->down_until :
						    r->next);
		}
	}
	if (expired)
		count(d, COUNTER_MSG_EXPIRED);
}

static const char *state_name(enum spool_rcpt_state s)
{
	return s == SPOOL_RCPT_DELIVERED ? "delivered" : s == SPOOL_RCPT_FAILED ? "failed" :
	       s == SPOOL_RCPT_DEFERRED ? "deferred" : "queued";
}

/* Queues every result of m, then the removal when all are final, and puts
 * m back in the index otherwise.  Frees m. */
static void msg_record(struct dmsg *m)
{
	struct delivery *d = m->d;
	const struct spool_envelope *env = m->env;
	int64_t due = INT64_MAX;
	bool all_final = true, failed = false;
	char reply[REPLY_MAX + sizeof DELIVERY_WARNED_MARK], err[512];
	const char *qhop = NULL, *whop = NULL;   /* hop of the earliest pending; of a wait */
	int64_t qdue = INT64_MAX;
	size_t n_wait = 0;

	for (size_t i = 0; i < env->n_rcpts; i++) {
		struct rstate *r = &m->rs[i];
		const struct spool_rcpt *sr = &env->rcpts[i];
		struct rec *rc;

		if ((r->st == RS_WAIT || r->fin == SPOOL_RCPT_DEFERRED) && r->st != RS_SKIP &&
		    r->hop != NULL && r->next < qdue) {
			qdue = r->next;
			qhop = r->hop;
		}
		if (r->st == RS_WAIT) {
			all_final = false;
			if (r->next < due)
				due = r->next;
			whop = r->hop;
			n_wait++;
			continue;
		}
		if (r->st == RS_SKIP) {
			if (sr->state == SPOOL_RCPT_QUEUED || sr->state == SPOOL_RCPT_DEFERRED) {
				all_final = false;
				if (sr->next_attempt < due)
					due = sr->next_attempt;
			}
			continue;
		}
		reply_of(r, reply, REPLY_MAX);
		if (r->fin == SPOOL_RCPT_DEFERRED && r->warned)
			strcat(reply, DELIVERY_WARNED_MARK);
		emit_result(d, m, i, reply);
		if (r->fin == SPOOL_RCPT_DEFERRED) {
			all_final = false;
			if (r->next < due)
				due = r->next;
		}
		rc = rec_new(d, env->qid, sr->addr, state_name(r->fin), false);
		snprintf(err, sizeof err, "out of memory");
		if (rc == NULL ||
		    spool_rcpt_update_async(d->spool, env->qid, i, r->fin, reply,
					    r->fin == SPOOL_RCPT_DEFERRED ? r->next : 0,
					    d->base, rec_done, rc, err, sizeof err) < 0) {
			rec_free(rc);
			evlog_emit(d->log, EV_DELIVERY_RECORD_FAILED, EVF_S("qid", env->qid),
				   EVF_S("rcpt", sr->addr), EVF_S("result", state_name(r->fin)),
				   EVF_S("reason", err));
			failed = true;
		}
	}
	count_results(d, m);
	if (n_wait > 0)
		evlog_emit(d->log, EV_DELIVERY_POSTPONED, EVF_S("qid", env->qid),
			   EVF_I("rcpts", n_wait), EVF_S("hop", whop ? whop : "none"),
			   EVF_I("delay", due - m->now));
	if (qhop != NULL && !all_final)
		hop_enqueue(d, env->qid, qhop, env->arrival, env->size);
	if (failed) {
		/* Attempted again later; a delivered recipient may be
		 * delivered twice (logged above). */
		index_requeue(d, env->qid, m->now + ERROR_RETRY);
	} else if (all_final) {
		struct rec *rc = rec_new(d, env->qid, NULL, "removed", true);

		snprintf(err, sizeof err, "out of memory");
		if (rc == NULL || spool_remove_async(d->spool, env->qid, d->base, rec_done, rc,
						     err, sizeof err) < 0) {
			rec_free(rc);
			evlog_emit(d->log, EV_DELIVERY_SPOOL_FAILED, EVF_S("reason", err));
		}
		index_forget(d, env->qid);
		d->st.removed++;
	} else {
		/* Results reach the spool within one group commit; never
		 * load the message again before that. */
		index_requeue(d, env->qid, due < m->now + 1 ? m->now + 1 : due);
	}
	msg_free(m);
	/* A slot is free and the index changed: start more, re-arm the
	 * timer (results of SMTP jobs arrive outside done_cb). */
	pump(d);
}

static const char *dsn_kind_name(enum dsn_kind k)
{
	return k == DSN_FAILURE ? "failure" : k == DSN_DELAY ? "delay" : "success";
}

static void notify_done(struct delivery *d, struct wjob *j)
{
	struct dmsg *m = j->m;
	const char *kind = dsn_kind_name(j->kind);

	if (j->rc < 0) {
		evlog_emit(d->log, EV_DELIVERY_BOUNCE_FAILED, EVF_S("qid", m->env->qid),
			   EVF_S("kind", kind), EVF_S("reason", j->err));
		for (size_t k = 0; k < j->n_d; k++) {
			struct rstate *r = &m->rs[j->didx[k]];

			if (j->kind == DSN_DELAY) {
				r->warned = r->warn = false;
				continue;
			}
			/* Keep it queued: failed again later, reported then. */
			r->fin = SPOOL_RCPT_DEFERRED;
			r->next = m->now + schedule_delay(&d->cfg.pol, m->env->rcpts[j->didx[k]].attempts,
						       &d->rnd);
		}
	} else {
		index_add(d, j->dsn_qid, 0);
		track_queued(d->track, j->dsn_qid, "dsn", "", 1);
		if (j->kind == DSN_FAILURE)
			memcpy(m->bounce_qid, j->dsn_qid, SPOOL_QID_SIZE);
		if (j->dbl)
			evlog_emit(d->log, EV_DELIVERY_DOUBLE_BOUNCE_SENT, EVF_S("qid", m->env->qid),
				   EVF_I("rcpts", j->n_d), EVF_S("dsn_qid", j->dsn_qid),
				   EVF_S("to", j->to));
		else
			evlog_emit(d->log, EV_DELIVERY_NOTIFY_QUEUED, EVF_S("qid", m->env->qid),
				   EVF_S("kind", kind), EVF_S("dsn_qid", j->dsn_qid),
				   EVF_S("to", j->to), EVF_I("rcpts", j->n_d));
		if (j->kind == DSN_FAILURE)
			d->st.bounces++;
		else if (j->kind == DSN_DELAY)
			d->st.delays++;
		else
			d->st.successes++;
	}
	if (--m->notify_left == 0)
		msg_record(m);
	pump(d);
}

/* Posts one notification job for the recipients of m marked by `pick`. */
static void notify_post(struct dmsg *m, enum dsn_kind kind, const char *to, bool dbl)
{
	struct delivery *d = m->d;
	const struct spool_envelope *env = m->env;
	struct wjob *j = calloc(1, sizeof *j);
	size_t n = 0;

	if (j == NULL || (j->drcpts = calloc(env->n_rcpts, sizeof *j->drcpts)) == NULL ||
	    (j->didx = calloc(env->n_rcpts, sizeof *j->didx)) == NULL ||
	    (j->mtext = calloc(env->n_rcpts, sizeof *j->mtext)) == NULL ||
	    (j->to = strdup(to)) == NULL || (j->hostname = strdup(d->cfg.hostname)) == NULL)
		goto oom;
	for (size_t i = 0; i < env->n_rcpts; i++) {
		struct rstate *r = &m->rs[i];
		struct dsn_rcpt *dr = &j->drcpts[n];

		if (kind == DSN_FAILURE ? !r->notified : kind == DSN_DELAY ? !r->warn : !r->succ)
			continue;
		dr->addr = env->rcpts[i].addr;
		dr->orcpt = env->rcpts[i].orcpt;
		dr->status = r->enh;
		dr->code = r->code;
		dr->remote_mta = r->code ? r->host : NULL;
		reply_of(r, j->mtext[n], sizeof j->mtext[n]);
		/* A success report names no local path or reply. */
		dr->diagnostic = kind == DSN_SUCCESS && !r->code ? NULL : j->mtext[n];
		if (kind == DSN_SUCCESS && dr->status[0] != '2')
			dr->status = "2.0.0";
		dr->expired = r->expired;
		dr->relayed = r->relayed;
		dr->last_attempt = m->now;
		dr->retry_until = schedule_expiry(&d->cfg.pol, env->arrival);
		j->didx[n++] = i;
	}
	j->type = WJ_NOTIFY;
	j->m = m;
	j->kind = kind;
	j->n_d = n;
	j->dbl = dbl;
	m->notify_left++;
	delivery_job_post(d, j);
	return;
oom:
	delivery_job_free(j);
	evlog_emit(d->log, EV_DELIVERY_BOUNCE_FAILED, EVF_S("qid", env->qid),
		   EVF_S("kind", dsn_kind_name(kind)),
		   EVF_S("reason", "out of memory"));
	for (size_t i = 0; i < env->n_rcpts; i++) {
		struct rstate *r = &m->rs[i];

		if (kind == DSN_DELAY && r->warn)
			r->warn = r->warned = false;
		if (kind == DSN_FAILURE && r->notified) {
			r->fin = SPOOL_RCPT_DEFERRED;
			r->next = m->now + ERROR_RETRY;
		}
	}
}

/* Decides each tried recipient's new state, then sends notifications
 * (committed before the results are recorded), then records. */
static void msg_results(struct dmsg *m)
{
	struct delivery *d = m->d;
	const struct spool_envelope *env = m->env;
	size_t n_fail = 0, n_warn = 0, n_dropped = 0, n_succ = 0;
	bool dbl;
	const char *to = dsn_recipient(env->sender, d->cfg.double_bounce_to, &dbl);

	m->now = now_s();
	for (size_t i = 0; i < env->n_rcpts; i++) {
		struct rstate *r = &m->rs[i];
		const struct spool_rcpt *sr = &env->rcpts[i];

		if (r->st == RS_SKIP)
			continue;
		/* Waiting for a hop that is down: no attempt, unless its
		 * lifetime ran out meanwhile (then it expires now). */
		if (r->st == RS_WAIT) {
			if (!schedule_expired(&d->cfg.pol, env->arrival, m->now)) {
				if (r->next > schedule_expiry(&d->cfg.pol, env->arrival))
					r->next = schedule_expiry(&d->cfg.pol, env->arrival);
				continue;
			}
			r->st = RS_TEMP;
		}
		r->warned = sr->last_reply != NULL && strstr(sr->last_reply, DELIVERY_WARNED_MARK);
		if (r->st == RS_OK) {
			r->fin = SPOOL_RCPT_DELIVERED;
			if (r->success_dsn && !dbl && dsn_wanted(DSN_SUCCESS, sr->notify)) {
				r->succ = true;
				n_succ++;
			}
			continue;
		}
		if (r->st == RS_TEMP || r->st == RS_TRY) {
			if (schedule_temp_failure(&d->cfg.pol, env->arrival, sr->attempts, m->now,
					       &d->rnd, &r->next) == SCHEDULE_RETRY) {
				r->fin = SPOOL_RCPT_DEFERRED;
				if (schedule_delay_warning_due(&d->cfg.pol, env->arrival, m->now,
							    sr->notify, r->warned, dbl)) {
					r->warn = r->warned = true;
					n_warn++;
				}
				continue;
			}
			r->expired = true;
		}
		r->fin = SPOOL_RCPT_FAILED;
		if (!dsn_wanted(DSN_FAILURE, sr->notify))
			continue;
		/* A report to double_bounce_to that fails is not reported
		 * again (it would loop). */
		if (to == NULL || (dbl && strcasecmp(sr->addr, to) == 0)) {
			n_dropped++;
			continue;
		}
		r->notified = true;
		n_fail++;
	}
	if (n_dropped > 0)
		evlog_emit(d->log, EV_DELIVERY_DOUBLE_BOUNCE_DROPPED, EVF_S("qid", env->qid),
			   EVF_I("rcpts", n_dropped));
	m->notify_left = 1;
	if (n_fail > 0)
		notify_post(m, DSN_FAILURE, to, dbl);
	if (n_warn > 0 && !dbl)
		notify_post(m, DSN_DELAY, env->sender, false);
	if (n_succ > 0)
		notify_post(m, DSN_SUCCESS, env->sender, false);
	if (--m->notify_left == 0)
		msg_record(m);
}

/* ---- the loop side ------------------------------------------------------------ */

static void post_scan(struct delivery *d)
{
	struct wjob *j;

	if (d->scanning) {
		d->scan_again = true;
		return;
	}
	if ((j = calloc(1, sizeof *j)) == NULL)
		return;
	j->type = WJ_SCAN;
	d->scanning = true;
	d->scan_again = false;
	d->last_scan = now_s();
	delivery_job_post(d, j);
}

static void scan_done(struct delivery *d, struct wjob *j)
{
	for (size_t i = 0; i < j->n_ents; i++)
		index_add(d, j->ents[i].qid, j->ents[i].due);
	if (!j->last)
		return;
	d->scanning = false;
	if (j->rc < 0)
		evlog_emit(d->log, EV_DELIVERY_SPOOL_FAILED, EVF_S("reason", j->err));
	if (!d->index_ready) {
		d->index_ready = true;
		evlog_emit(d->log, EV_DELIVERY_INDEX_READY, EVF_I("messages", j->total),
			   EVF_I("ms", j->ms));
	}
	if (d->scan_again)
		post_scan(d);
}

static void load_done(struct delivery *d, struct wjob *j)
{
	struct dmsg *m;

	if (j->rc == 1) {
		index_forget(d, j->qid);
		d->n_active--;
		return;
	}
	if (j->rc < 0) {
		char why[600];

		snprintf(why, sizeof why, "%s: %s", j->qid, j->err);
		evlog_emit(d->log, EV_DELIVERY_SPOOL_FAILED, EVF_S("reason", why));
		index_requeue(d, j->qid, now_s() + ERROR_RETRY);
		d->n_active--;
		return;
	}
	if (j->env->held) {
		/* Held by an administrator: out of the index until released
		 * (delivery_kick_qid, or the next walk). */
		index_forget(d, j->qid);
		d->n_active--;
		return;
	}
	m = calloc(1, sizeof *m);
	if (m == NULL || (m->rs = calloc(j->env->n_rcpts ? j->env->n_rcpts : 1,
					 sizeof *m->rs)) == NULL) {
		free(m);
		index_requeue(d, j->qid, now_s() + ERROR_RETRY);
		d->n_active--;
		return;
	}
	m->d = d;
	m->env = j->env;
	j->env = NULL;
	m->next = d->active;
	if (d->active)
		d->active->prev = m;
	d->active = m;
	msg_start(m);
}

static void done_cb(evutil_socket_t fd, short what, void *arg)
{
	struct delivery *d = arg;
	struct wjob *list;

	pthread_mutex_lock(&d->mu);
	list = d->dhead;
	d->dhead = d->dtail = NULL;
	pthread_mutex_unlock(&d->mu);
	while (list != NULL) {
		struct wjob *j = list;

		list = j->next;
		switch (j->type) {
		case WJ_SCAN:
			scan_done(d, j);
			break;
		case WJ_LOAD:
			load_done(d, j);
			break;
		case WJ_MAILDIR:
			maildir_done(d, j);
			break;
		case WJ_NOTIFY:
			notify_done(d, j);
			break;
		}
		delivery_job_free(j);
	}
	pump(d);
}

static void arm_timer(struct delivery *d, int64_t now)
{
	struct timeval tv = { MAX_TIMER, 0 };

	if (d->heap.n > 0 && d->heap.v[0].due - now < MAX_TIMER)
		tv.tv_sec = d->heap.v[0].due > now ? (time_t)(d->heap.v[0].due - now) : 0;
	if (tv.tv_sec == 0)
		tv.tv_usec = 100 * 1000;   /* due now but every slot is busy */
	evtimer_add(d->timer, &tv);
}

/* Starts due messages up to max_deliveries; bounded work per call. */
/* Publishes the queue gauges: messages being attempted (active) and
 * waiting for their next attempt (deferred, new mail included). */
static void gauges(struct delivery *d, int64_t active, int64_t waiting)
{
	struct counters_shm *b = d->ctr ? counters_block(d->ctr) : NULL;

	if (b != NULL) {
		counters_add(b, COUNTER_QUEUE_ACTIVE_MSGS, active - d->pub_active);
		counters_add(b, COUNTER_QUEUE_DEFERRED_MSGS, waiting - d->pub_waiting);
	}
	d->pub_active = active;
	d->pub_waiting = waiting;
}

static void pump(struct delivery *d)
{
	int64_t now = now_s();

	if (d->stop)
		return;
	while (d->heap.n > 0 && d->heap.v[0].due <= now &&
	       d->n_active < d->cfg.max_deliveries) {
		struct hent e;
		struct wjob *j;
		struct qslot *sl;

		delivery_heap_pop(&d->heap, &e);
		sl = delivery_qset_find(&d->known, e.qid);
		if (sl == NULL || sl->busy || sl->due != e.due)
			continue;   /* stale: removed, in flight, or due at another time */
		sl->busy = true;
		if ((j = calloc(1, sizeof *j)) == NULL) {
			index_requeue(d, e.qid, now + ERROR_RETRY);
			break;
		}
		j->type = WJ_LOAD;
		memcpy(j->qid, e.qid, SPOOL_QID_SIZE);
		d->n_active++;
		delivery_job_post(d, j);
	}
	if (now - d->last_scan >= RESCAN_SECS)
		post_scan(d);
	hops_recount_oldest(d, now);
	arm_timer(d, now);
	gauges(d, (int64_t)d->n_active, (int64_t)(d->known.n - d->n_active));
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
	pump(arg);
}

/* ---- public API ------------------------------------------------------------ */

static void delivery_destroy(struct delivery *d)
{
	struct wjob *lists[2];

	if (d->thread_started) {
		pthread_mutex_lock(&d->mu);
		d->stop = true;
		pthread_cond_broadcast(&d->cv);
		pthread_mutex_unlock(&d->mu);
		pthread_join(d->thread, NULL);
	}
	d->stop = true;
	gauges(d, 0, 0);
	/* Results still queued to the spool no longer reach the runner. */
	if (d->rhome != NULL)
		d->rhome->d = NULL;
	rec_home_put(&d->rhome);
	/* Dropping the client drops its jobs without their callbacks. */
	smtp_client_free(&d->client);
	if (d->done_ev)
		event_free(d->done_ev);
	if (d->timer)
		event_free(d->timer);
	lists[0] = d->jhead;
	lists[1] = d->dhead;
	for (int k = 0; k < 2; k++)
		while (lists[k] != NULL) {
			struct wjob *j = lists[k];

			lists[k] = j->next;
			delivery_job_free(j);
		}
	while (d->active != NULL)
		msg_free(d->active);
	for (size_t b = 0; b < HOP_BUCKETS; b++)
		while (d->hops[b] != NULL) {
			struct hop *h = d->hops[b];

			d->hops[b] = h->next;
			/* The gauges leave with the runner (as the global ones). */
			counters_hop_add(h->ctr, HOP_QUEUE_MSGS, -(int64_t)h->n_queued);
			counters_hop_add(h->ctr, HOP_QUEUE_BYTES, -(int64_t)h->q_bytes);
			counters_hop_set(h->ctr, HOP_OLDEST, 0);
			hop_destroy(h);
		}
	free(d->known.v);
	free(d->heap.v);
	dcfg_free(&d->cfg);
	pthread_cond_destroy(&d->cv);
	pthread_mutex_destroy(&d->mu);
	free(d);
}

struct delivery *delivery_new(struct event_base *base, const struct carrier_conf *conf,
			      struct evlog *log, struct counters *ctr, struct spool *spool,
			      struct route_table *routes, struct dns *dns,
			      char *err, size_t errlen)
{
	struct delivery *d = calloc(1, sizeof *d);
	struct smtp_client_opts o;
	struct timespec ts;
	int e;

	if (d == NULL) {
		snprintf(err, errlen, "delivery: out of memory");
		return NULL;
	}
	pthread_mutex_init(&d->mu, NULL);
	pthread_cond_init(&d->cv, NULL);
	d->base = base;
	d->log = log;
	d->ctr = ctr;
	d->spool = spool;
	d->routes = routes;
	d->dns = dns;
	clock_gettime(CLOCK_REALTIME, &ts);
	schedule_rand_seed(&d->rnd, (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^
				 (uint64_t)getpid());
	if (dcfg_init(&d->cfg, conf) < 0 || (d->rhome = calloc(1, sizeof *d->rhome)) == NULL) {
		snprintf(err, errlen, "delivery: out of memory");
		goto fail;
	}
	d->rhome->d = d;
	d->rhome->refs = 1;
	smtp_client_opts_from_conf(&o, conf);
	if ((d->client = smtp_client_new(base, &o, log, err, errlen)) == NULL)
		goto fail;
	d->done_ev = event_new(base, -1, 0, done_cb, d);
	d->timer = evtimer_new(base, timer_cb, d);
	if (d->done_ev == NULL || d->timer == NULL) {
		snprintf(err, errlen, "delivery: cannot create its events");
		goto fail;
	}
	if ((e = pthread_create(&d->thread, NULL, delivery_worker_main, d)) != 0) {
		snprintf(err, errlen, "delivery: cannot start its thread: %s", strerror(e));
		goto fail;
	}
	d->thread_started = true;
	post_scan(d);
	arm_timer(d, now_s());
	return d;
fail:
	delivery_destroy(d);
	return NULL;
}

/* An administrator's flush or retry: a hop that is down is tried again
 * at once (one probe first: it keeps its failure count until it works). */
static void hop_wake(struct delivery *d, struct hop *h)
{
	if (h->down_until == 0)
		return;
	h->down_until = 0;
	counters_hop_set_next_retry(h->ctr, now_s());
}

void delivery_kick(struct delivery *d)
{
	if (d == NULL)
		return;
	for (size_t b = 0; b < HOP_BUCKETS; b++)
		for (struct hop *h = d->hops[b]; h != NULL; h = h->next)
			hop_wake(d, h);
	post_scan(d);
}

void delivery_kick_qid(struct delivery *d, const char *qid)
{
	struct qslot *sl;

	if (d == NULL)
		return;
	if (delivery_qid_ok(qid) && (sl = delivery_qset_find(&d->known, qid)) != NULL &&
	    sl->hop != NULL)
		hop_wake(d, sl->hop);
	if (index_add(d, qid, 0))
		pump(d);
}

void delivery_set_conf(struct delivery *d, const struct carrier_conf *conf,
		       struct route_table *routes)
{
	struct dcfg c;
	struct smtp_client_opts o;

	if (d == NULL)
		return;
	if (routes != NULL)
		d->routes = routes;
	if (dcfg_init(&c, conf) == 0) {
		dcfg_free(&d->cfg);
		d->cfg = c;
	}
	smtp_client_opts_from_conf(&o, conf);
	smtp_client_set_opts(d->client, &o);
	/* Queued mail keeps its schedule and meets the new routes at its
	 * next attempt: nothing is lost or re-bounced. */
	pump(d);
}

void delivery_set_track(struct delivery *d, struct track *t)
{
	if (d != NULL)
		d->track = t;
}

void delivery_get_stats(const struct delivery *d, struct delivery_stats *st_r)
{
	*st_r = d->st;
	st_r->indexed = d->known.n;
	st_r->active = d->n_active;
	st_r->index_ready = d->index_ready;
}

void delivery_free(struct delivery **dp)
{
	if (dp == NULL || *dp == NULL)
		return;
	delivery_destroy(*dp);
	*dp = NULL;
}
