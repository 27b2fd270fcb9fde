/*
 * local: the local delivery runner (see local.h for the contract).
 *
 * Owns a worker thread, a refcounted copy of the configuration it needs and
 * a short list of results the spool could not store yet.  Must not change
 * the spool other than through spool.h, nor block the event loop: every
 * spool and Maildir call runs on the worker.
 */
#include "local.h"

#include <errno.h>
#include <event2/event.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "conf.h"
#include "counters.h"
#include "evlog.h"
#include "maildir.h"
#include "schedule.h"
#include "spool.h"

#define LOCAL_BATCH 1024          /* messages collected per scan at most */
#define LOCAL_MAX_SLEEP 300       /* seconds between scans at most */
#define LOCAL_ERROR_RETRY 60      /* seconds after a spool read error */
#define LOCAL_UNRECORDED_MAX 4096 /* results kept when the spool refuses */
#define LOCAL_INFLIGHT_MAX 1024   /* spool changes queued but not answered */
/* Delivery threads: fsyncs from several threads overlap (the file system
 * journals them together): 1 thread ~1,750 deliveries/s, 4 ~3,600 on the
 * development VM's ext4. */
#define LOCAL_THREADS 4
#define LOCAL_KICK_QIDS 4096      /* qids kept between scans; more: a walk */

/* The part of the configuration the worker uses, shared by refcount. */
struct local_cfg {
	unsigned refs;            /* under local.mu */
	char *root;
	char *hostname;
	char **domains;
	size_t n_domains;
	unsigned *schedule;       /* [delivery] retry_schedule */
	struct schedule_policy policy;
};

/* A result the spool refused to store; recorded again before new work. */
struct unrecorded {
	char qid[SPOOL_QID_SIZE];
	size_t index;
	enum spool_rcpt_state state;
	char *reply;
	int64_t next_attempt;
};

struct local {
	struct event_base *base;
	struct evlog *log;
	struct counters *ctr;
	struct spool *spool;

	pthread_mutex_t mu;
	pthread_cond_t wake;      /* worker waits for a kick or a deadline */
	pthread_cond_t idle_cv;   /* local_wait_idle waits for the worker */
	pthread_t thread;
	bool kicked, stop, busy;
	bool walk;                /* the next scan walks the whole spool */
	char (*kq)[SPOOL_QID_SIZE]; /* else it looks at these (local_kick_qid) */
	size_t n_kq;
	struct local_cfg *cfg;

	/* The worker scans and runs wbase, where the spool's answers come;
	 * the pool threads deliver the messages of the scan in parallel. */
	struct event_base *wbase;
	struct event *tick;       /* bounds each wbase wait */
	struct event *job_ev;     /* activated when the pool finishes a scan */
	uint64_t seq;             /* atomic: Maildir file names */
	pthread_t pool[LOCAL_THREADS];
	size_t n_pool;

	pthread_mutex_t pmu;      /* guards the fields below */
	pthread_cond_t job_cv;    /* pool threads wait for a scan */
	pthread_cond_t room_cv;   /* pool threads wait for inflight to drop */
	bool pool_stop;
	struct scan *job;         /* the scan being delivered, or NULL */
	size_t job_next, job_active;
	bool job_done;
	size_t inflight;          /* spool changes not answered yet */
	struct unrecorded *unrec;
	size_t n_unrec;
};

/* One queued spool change, until its answer. */
struct change {
	struct local *l;
	bool remove;
	size_t index;
	enum spool_rcpt_state state;
	int64_t next_attempt;
	char *reply;
	char *rcpt;
};

/* What one scan collected. */
struct scan {
	struct local *l;
	const struct local_cfg *cfg;
	int64_t now;
	int64_t next_due;         /* earliest future next_attempt, 0 = none */
	char (*qids)[SPOOL_QID_SIZE];
	size_t n, cap;
	bool more;                /* stopped at LOCAL_BATCH */
};

/* ---- configuration copies ----------------------------------------------- */

static void cfg_free(struct local_cfg *c)
{
	if (c == NULL)
		return;
	for (size_t i = 0; i < c->n_domains; i++)
		free(c->domains[i]);
	free(c->domains);
	free(c->root);
	free(c->hostname);
	free(c->schedule);
	free(c);
}

static struct local_cfg *cfg_new(const struct carrier_conf *conf)
{
	struct local_cfg *c = calloc(1, sizeof *c);

	if (c == NULL)
		return NULL;
	c->refs = 1;
	c->root = strdup(conf->maildir_path ? conf->maildir_path : "");
	c->hostname = strdup(conf->hostname ? conf->hostname : "");
	c->domains = calloc(conf->n_local_domains + 1, sizeof *c->domains);
	c->schedule = calloc(conf->n_retry_schedule + 1, sizeof *c->schedule);
	if (c->root == NULL || c->hostname == NULL || c->domains == NULL || c->schedule == NULL)
		goto fail;
	if (conf->n_retry_schedule > 0)
		memcpy(c->schedule, conf->retry_schedule,
		       conf->n_retry_schedule * sizeof *c->schedule);
	c->policy.schedule = c->schedule;
	c->policy.n = conf->n_retry_schedule;
	c->policy.lifetime = conf->max_queue_lifetime;
	c->policy.delay_warning = conf->delay_warning;
	for (size_t i = 0; i < conf->n_local_domains; i++) {
		if ((c->domains[i] = strdup(conf->local_domains[i])) == NULL)
			goto fail;
		c->n_domains++;
	}
	return c;
fail:
	cfg_free(c);
	return NULL;
}

static struct local_cfg *cfg_get(struct local *l)
{
	struct local_cfg *c;

	pthread_mutex_lock(&l->mu);
	c = l->cfg;
	c->refs++;
	pthread_mutex_unlock(&l->mu);
	return c;
}

static void cfg_put(struct local *l, struct local_cfg *c)
{
	bool last;

	pthread_mutex_lock(&l->mu);
	last = --c->refs == 0;
	pthread_mutex_unlock(&l->mu);
	if (last)
		cfg_free(c);
}

/*
 * Splits `addr` at its last '@' into the local part (into lp) and the
 * domain (pointer into addr).  An address without '@' (postmaster) is in
 * the first local domain.  Returns true when the recipient is local.
 */
static bool rcpt_local(const struct local_cfg *c, const char *addr,
		       char *lp, size_t lplen, const char **domain_r)
{
	const char *at = strrchr(addr, '@');
	size_t n = at ? (size_t)(at - addr) : strlen(addr);

	if (n >= lplen)
		n = lplen - 1;
	memcpy(lp, addr, n);
	lp[n] = '\0';
	if (at == NULL) {
		*domain_r = c->n_domains ? c->domains[0] : "";
		return c->n_domains > 0;
	}
	*domain_r = at + 1;
	for (size_t i = 0; i < c->n_domains; i++)
		if (strcasecmp(at + 1, c->domains[i]) == 0)
			return true;
	return false;
}

static bool is_unrecorded(struct local *l, const char *qid, size_t index)
{
	bool found = false;

	pthread_mutex_lock(&l->pmu);
	for (size_t i = 0; i < l->n_unrec && !found; i++)
		if (l->unrec[i].index == index && !strcmp(l->unrec[i].qid, qid))
			found = true;
	pthread_mutex_unlock(&l->pmu);
	return found;
}

/* Whether recipient i of env is local and due now; updates next_due. */
static bool rcpt_due(struct local *l, const struct local_cfg *c,
		     const struct spool_envelope *env, size_t i, int64_t now,
		     int64_t *next_due)
{
	const struct spool_rcpt *r = &env->rcpts[i];
	char lp[1024];
	const char *domain;

	if (r->state != SPOOL_RCPT_QUEUED && r->state != SPOOL_RCPT_DEFERRED)
		return false;
	if (!rcpt_local(c, r->addr, lp, sizeof lp, &domain))
		return false;
	if (is_unrecorded(l, env->qid, i))
		return false;
	if (r->state == SPOOL_RCPT_DEFERRED && r->next_attempt > now) {
		if (*next_due == 0 || r->next_attempt < *next_due)
			*next_due = r->next_attempt;
		return false;
	}
	return true;
}

static int scan_cb(void *arg, const struct spool_envelope *env)
{
	struct scan *s = arg;
	bool due = false;

	for (size_t i = 0; i < env->n_rcpts; i++)
		if (rcpt_due(s->l, s->cfg, env, i, s->now, &s->next_due))
			due = true;
	if (!due)
		return 0;
	if (s->n == s->cap) {
		size_t cap = s->cap ? s->cap * 2 : 64;
		void *v = realloc(s->qids, cap * sizeof *s->qids);

		if (v == NULL)
			return -2;
		s->qids = v;
		s->cap = cap;
	}
	memcpy(s->qids[s->n++], env->qid, SPOOL_QID_SIZE);
	if (s->n >= LOCAL_BATCH) {
		s->more = true;
		return 1;
	}
	return 0;
}

/* ---- recording results ---------------------------------------------------- */

static void keep_unrecorded(struct local *l, const char *qid, size_t index,
			    enum spool_rcpt_state state, const char *reply,
			    int64_t next_attempt)
{
	struct unrecorded *u;

	pthread_mutex_lock(&l->pmu);
	/* When full, it will be delivered again: the documented window. */
	if (l->n_unrec < LOCAL_UNRECORDED_MAX &&
	    (u = realloc(l->unrec, (l->n_unrec + 1) * sizeof *u)) != NULL) {
		l->unrec = u;
		u = &l->unrec[l->n_unrec];
		snprintf(u->qid, sizeof u->qid, "%s", qid);
		u->index = index;
		u->state = state;
		u->reply = reply ? strdup(reply) : NULL;
		u->next_attempt = next_attempt;
		l->n_unrec++;
	}
	pthread_mutex_unlock(&l->pmu);
}

static const char *state_name(enum spool_rcpt_state s)
{
	switch (s) {
	case SPOOL_RCPT_QUEUED:
		return "queued";
	case SPOOL_RCPT_DEFERRED:
		return "deferred";
	case SPOOL_RCPT_DELIVERED:
		return "delivered";
	case SPOOL_RCPT_FAILED:
		return "failed";
	}
	return "?";
}

static void change_free(struct change *c)
{
	free(c->reply);
	free(c->rcpt);
	free(c);
}

static void record_failed(struct local *l, const char *qid, size_t index, const char *rcpt,
			  enum spool_rcpt_state state, const char *reply,
			  int64_t next_attempt, const char *err)
{
	evlog_emit(l->log, EV_LOCAL_RECORD_FAILED, EVF_S("qid", qid), EVF_S("rcpt", rcpt),
		   EVF_S("result", state_name(state)), EVF_S("reason", err));
	keep_unrecorded(l, qid, index, state, reply, next_attempt);
}

/* The spool's answer to a change (on the worker, inside wbase's loop). */
static void change_done(void *arg, int rc, const char *qid, const char *err)
{
	struct change *c = arg;
	struct local *l = c->l;

	pthread_mutex_lock(&l->pmu);
	if (--l->inflight < LOCAL_INFLIGHT_MAX / 2)
		pthread_cond_broadcast(&l->room_cv);
	pthread_mutex_unlock(&l->pmu);
	if (c->remove && rc == 0)
		evlog_emit(l->log, EV_LOCAL_REMOVED, EVF_S("qid", qid));
	else if (c->remove && rc < 0)
		evlog_emit(l->log, EV_LOCAL_SPOOL_FAILED, EVF_S("reason", err ? err : "?"));
	else if (rc < 0)
		record_failed(l, qid, c->index, c->rcpt, c->state, c->reply, c->next_attempt,
			      err ? err : "?");
	change_free(c);
}

/* Lets the spool's answers run (worker only) until every one has come. */
static void reap_all(struct local *l)
{
	pthread_mutex_lock(&l->pmu);
	while (l->inflight > 0) {
		pthread_mutex_unlock(&l->pmu);
		event_base_loop(l->wbase, EVLOOP_ONCE);
		pthread_mutex_lock(&l->pmu);
	}
	pthread_mutex_unlock(&l->pmu);
}

/* Counts a change about to be queued (before, so its answer never comes
 * first); a pool thread first waits while too many are unanswered (the
 * worker keeps running wbase meanwhile). */
static void inflight_add(struct local *l, bool may_wait)
{
	pthread_mutex_lock(&l->pmu);
	while (may_wait && l->inflight >= LOCAL_INFLIGHT_MAX)
		pthread_cond_wait(&l->room_cv, &l->pmu);
	l->inflight++;
	pthread_mutex_unlock(&l->pmu);
}

/* Uncounts a change the spool refused to queue. */
static void inflight_undo(struct local *l)
{
	pthread_mutex_lock(&l->pmu);
	l->inflight--;
	pthread_mutex_unlock(&l->pmu);
}

/*
 * Queues one result for the spool's next group commit (the answer comes
 * back to change_done).  Returns 0 when queued; -1 after logging and
 * keeping the result for the next scan.
 */
static int record(struct local *l, const char *qid, size_t index, const char *rcpt,
		  enum spool_rcpt_state state, const char *reply, int64_t next_attempt)
{
	struct change *c = calloc(1, sizeof *c);
	char err[512] = "out of memory";

	if (c != NULL) {
		c->l = l;
		c->index = index;
		c->state = state;
		c->next_attempt = next_attempt;
		c->reply = reply ? strdup(reply) : NULL;
		c->rcpt = strdup(rcpt);
	}
	if (c == NULL || c->rcpt == NULL || (reply != NULL && c->reply == NULL)) {
		if (c != NULL)
			change_free(c);
		record_failed(l, qid, index, rcpt, state, reply, next_attempt, err);
		return -1;
	}
	inflight_add(l, true);
	if (spool_rcpt_update_async(l->spool, qid, index, state, reply, next_attempt,
				    l->wbase, change_done, c, err, sizeof err) < 0) {
		inflight_undo(l);
		change_free(c);
		record_failed(l, qid, index, rcpt, state, reply, next_attempt, err);
		return -1;
	}
	return 0;
}

static void remove_async(struct local *l, const char *qid, bool may_wait)
{
	struct change *c = calloc(1, sizeof *c);
	char err[512] = "out of memory";

	if (c != NULL) {
		c->l = l;
		c->remove = true;
	}
	if (c != NULL) {
		inflight_add(l, may_wait);
		if (spool_remove_async(l->spool, qid, l->wbase, change_done, c,
				       err, sizeof err) == 0)
			return;
		inflight_undo(l);
		free(c);
	}
	evlog_emit(l->log, EV_LOCAL_SPOOL_FAILED, EVF_S("reason", err));
}

/* Removes qid when all its recipients are final (after a late record). */
static void remove_if_all_final(struct local *l, const char *qid)
{
	struct spool_envelope *env = NULL;
	char err[512];

	if (spool_load(l->spool, qid, &env, err, sizeof err) != 0)
		return;
	for (size_t i = 0; i < env->n_rcpts; i++)
		if (env->rcpts[i].state != SPOOL_RCPT_DELIVERED &&
		    env->rcpts[i].state != SPOOL_RCPT_FAILED) {
			spool_envelope_free(&env);
			return;
		}
	spool_envelope_free(&env);
	remove_async(l, qid, false);
}

/* Worker only, between scans (the pool is idle). */
static void retry_unrecorded(struct local *l)
{
	struct unrecorded *v;
	size_t n, kept = 0;
	char err[512];

	pthread_mutex_lock(&l->pmu);
	v = l->unrec;
	n = l->n_unrec;
	l->unrec = NULL;
	l->n_unrec = 0;
	pthread_mutex_unlock(&l->pmu);
	for (size_t i = 0; i < n; i++) {
		struct unrecorded *u = &v[i];

		if (spool_rcpt_update(l->spool, u->qid, u->index, u->state, u->reply,
				      u->next_attempt, err, sizeof err) >= 0) {
			remove_if_all_final(l, u->qid);
			free(u->reply);
			continue;
		}
		v[kept++] = *u;
	}
	pthread_mutex_lock(&l->pmu);
	if (l->n_unrec == 0 && kept > 0) {
		free(l->unrec);
		l->unrec = v;
		l->n_unrec = kept;
		v = NULL;
	}
	pthread_mutex_unlock(&l->pmu);
	for (size_t i = 0; v != NULL && i < kept; i++)
		free(v[i].reply);   /* cannot happen: nothing records between scans */
	free(v);
}

static void count(struct local *l, enum counters_id id)
{
	if (l->ctr != NULL)
		counters_add(counters_block(l->ctr), id, 1);
}

/* ---- delivering one message ------------------------------------------------ */

struct msgctx {
	struct local *l;
	const struct local_cfg *cfg;
	const struct spool_envelope *env;
	struct spool_body *body;
	enum spool_rcpt_state *states;  /* per recipient, as now known */
};

/* True when another recipient of the message with the same address is
 * (now) delivered: this one is then a duplicate. */
static bool duplicate_of(const struct msgctx *m, size_t i)
{
	for (size_t k = 0; k < m->env->n_rcpts; k++)
		if (k != i && m->states[k] == SPOOL_RCPT_DELIVERED &&
		    strcasecmp(m->env->rcpts[k].addr, m->env->rcpts[i].addr) == 0)
			return true;
	return false;
}

/*
 * Records, logs and counts the result of one attempt: `text` is the file's
 * path on success, else the reason.  A temporary failure is deferred by the
 * [delivery] retry schedule (schedule), or fails once the message has been
 * queued longer than max_queue_lifetime.
 */
static void record_result(struct msgctx *m, size_t i, enum maildir_result res,
			  const char *text, int64_t now, uint64_t seq)
{
	struct local *l = m->l;
	const struct spool_rcpt *r = &m->env->rcpts[i];
	const char *qid = m->env->qid;
	char reply[1200];
	uint64_t rnd;
	int64_t next = 0;

	if (res == MAILDIR_OK) {
		snprintf(reply, sizeof reply, "2.0.0 delivered to %s", text);
		if (record(l, qid, i, r->addr, SPOOL_RCPT_DELIVERED, reply, 0) == 0)
			m->states[i] = SPOOL_RCPT_DELIVERED;
		evlog_emit(l->log, EV_LOCAL_DELIVERED, EVF_S("qid", qid),
			   EVF_S("rcpt", r->addr), EVF_S("path", text));
		count(l, COUNTER_MSG_DELIVERED);
		return;
	}
	schedule_rand_seed(&rnd, (uint64_t)now ^ (seq * 0x9e3779b97f4a7c15ull));
	if (res == MAILDIR_TEMP &&
	    schedule_temp_failure(&m->cfg->policy, m->env->arrival, r->attempts, now, &rnd,
			       &next) == SCHEDULE_RETRY) {
		snprintf(reply, sizeof reply, "4.2.0 %s", text);
		record(l, qid, i, r->addr, SPOOL_RCPT_DEFERRED, reply, next);
		m->states[i] = SPOOL_RCPT_DEFERRED;
		evlog_emit(l->log, EV_LOCAL_DEFERRED, EVF_S("qid", qid), EVF_S("rcpt", r->addr),
			   EVF_I("attempt", r->attempts + 1), EVF_I("delay", next - now),
			   EVF_S("reason", text));
		count(l, COUNTER_MSG_DEFERRED);
		return;
	}
	if (res == MAILDIR_TEMP) {
		snprintf(reply, sizeof reply, "4.4.7 queued too long; last attempt: %s", text);
		evlog_emit(l->log, EV_LOCAL_EXPIRED, EVF_S("qid", qid), EVF_S("rcpt", r->addr),
			   EVF_I("lifetime", m->cfg->policy.lifetime), EVF_S("reason", text));
	} else {
		snprintf(reply, sizeof reply, "5.2.0 %s", text);
		evlog_emit(l->log, EV_LOCAL_FAILED, EVF_S("qid", qid), EVF_S("rcpt", r->addr),
			   EVF_S("reason", text));
	}
	if (record(l, qid, i, r->addr, SPOOL_RCPT_FAILED, reply, 0) == 0)
		m->states[i] = SPOOL_RCPT_FAILED;
	count(l, COUNTER_MSG_BOUNCED);
}

static void deliver_rcpt(struct msgctx *m, size_t i, int64_t now)
{
	struct local *l = m->l;
	const struct spool_rcpt *r = &m->env->rcpts[i];
	const char *qid = m->env->qid, *domain;
	char lp[1024], path[4096], err[1024];
	struct maildir_msg msg = { .fd = -1 };
	enum maildir_result res;
	size_t len = 0;

	rcpt_local(m->cfg, r->addr, lp, sizeof lp, &domain);
	if (duplicate_of(m, i)) {
		if (record(l, qid, i, r->addr, SPOOL_RCPT_DELIVERED,
			   "2.0.0 duplicate recipient, delivered once", 0) == 0)
			m->states[i] = SPOOL_RCPT_DELIVERED;
		return;
	}
	msg.localpart = lp;
	msg.domain = domain;
	msg.sender = m->env->sender;
	msg.mem = spool_body_mem(m->body, &len);
	msg.fd = spool_body_fd(m->body);
	msg.size = msg.mem ? len : spool_body_size(m->body);
	msg.seq = __atomic_fetch_add(&l->seq, 1, __ATOMIC_RELAXED);
	msg.hostname = m->cfg->hostname;
	if (m->cfg->root[0] == '\0') {
		snprintf(err, sizeof err, "no Maildir root configured (local.maildir)");
		res = MAILDIR_TEMP;
	} else {
		res = maildir_deliver(m->cfg->root, &msg, path, sizeof path, err, sizeof err);
	}
	record_result(m, i, res, res == MAILDIR_OK ? path : err, now, msg.seq);
}

/* Queues the removal after the updates (the spool applies changes to one
 * qid in order; if an update fails, the removal is refused). */
static void remove_if_final(struct local *l, const struct msgctx *m)
{
	for (size_t i = 0; i < m->env->n_rcpts; i++)
		if (m->states[i] != SPOOL_RCPT_DELIVERED && m->states[i] != SPOOL_RCPT_FAILED)
			return;
	remove_async(l, m->env->qid, true);
}

/* Loads qid afresh and delivers its due local recipients.  Returns 0, or
 * -1 after a spool read error (already logged). */
static int deliver_message(struct local *l, const struct local_cfg *cfg,
			   const char *qid, int64_t *next_due)
{
	struct spool_envelope *env = NULL;
	struct msgctx m = { .l = l, .cfg = cfg };
	char err[512], why[640];
	int64_t now = (int64_t)time(NULL);
	int rc;

	rc = spool_load(l->spool, qid, &env, err, sizeof err);
	if (rc == 1)
		return 0;  /* removed meanwhile */
	if (rc == 0)
		rc = spool_body_open(l->spool, qid, &m.body, err, sizeof err);
	if (rc != 0) {
		spool_envelope_free(&env);
		if (rc == 1)
			return 0;
		snprintf(why, sizeof why, "%s: %s", qid, err);
		evlog_emit(l->log, EV_LOCAL_SPOOL_FAILED, EVF_S("reason", why));
		return -1;
	}
	m.env = env;
	m.states = calloc(env->n_rcpts ? env->n_rcpts : 1, sizeof *m.states);
	if (m.states != NULL) {
		for (size_t i = 0; i < env->n_rcpts; i++)
			m.states[i] = env->rcpts[i].state;
		for (size_t i = 0; i < env->n_rcpts; i++)
			if (rcpt_due(l, cfg, env, i, now, next_due))
				deliver_rcpt(&m, i, now);
		remove_if_final(l, &m);
	}
	free(m.states);
	spool_body_close(&m.body);
	spool_envelope_free(&env);
	return 0;
}

static int qid_cmp(const void *a, const void *b)
{
	return strcmp(a, b);
}

/* Sorts and removes repeats (a qid kicked twice must not be delivered by
 * two threads at once); returns the new count. */
static size_t qids_unique(char (*q)[SPOOL_QID_SIZE], size_t n)
{
	size_t k = 0;

	qsort(q, n, sizeof *q, qid_cmp);
	for (size_t i = 0; i < n; i++)
		if (k == 0 || strcmp(q[k - 1], q[i]) != 0)
			memmove(q[k++], q[i], SPOOL_QID_SIZE);
	return k;
}

/* Keeps the earlier of two deadlines (0 = none). */
static void merge_due(int64_t *due, int64_t t)
{
	if (t > 0 && (*due == 0 || t < *due))
		*due = t;
}

static bool stopping(struct local *l)
{
	bool s;

	pthread_mutex_lock(&l->mu);
	s = l->stop;
	pthread_mutex_unlock(&l->mu);
	return s;
}

/*
 * One scan: stores results kept from earlier, collects the due messages,
 * delivers them.  With `qids` (n_qids of them, freed here), looks at those
 * messages only (kicks naming them) and lowers *next_due when one of them
 * is deferred; else walks the spool's pending messages and sets *next_due
 * to the earliest future attempt (0 = none).  Returns true when it should
 * walk again at once.
 */
static bool run_scan(struct local *l, int64_t *next_due,
		     char (*qids)[SPOOL_QID_SIZE], size_t n_qids)
{
	struct local_cfg *cfg = cfg_get(l);
	struct scan s = { .l = l, .cfg = cfg, .now = (int64_t)time(NULL) };
	char err[512];
	int rc = 0;

	retry_unrecorded(l);
	if (qids != NULL) {
		s.qids = qids;
		s.n = s.cap = qids_unique(qids, n_qids);
		s.next_due = *next_due;
	} else {
		rc = spool_foreach_pending(l->spool, scan_cb, &s, err, sizeof err);
	}
	if (rc == -1 || rc == -2) {
		evlog_emit(l->log, EV_LOCAL_SPOOL_FAILED,
			   EVF_S("reason", rc == -1 ? err : "out of memory"));
		merge_due(&s.next_due, s.now + LOCAL_ERROR_RETRY);
	}
	pthread_mutex_lock(&l->pmu);
	if (s.n > 0) {
		/* The pool delivers; the worker runs wbase for the answers. */
		l->job = &s;
		l->job_next = 0;
		l->job_active = 0;
		l->job_done = false;
		pthread_cond_broadcast(&l->job_cv);
		while (!l->job_done) {
			pthread_mutex_unlock(&l->pmu);
			event_base_loop(l->wbase, EVLOOP_ONCE);
			pthread_mutex_lock(&l->pmu);
		}
		l->job = NULL;
	}
	pthread_mutex_unlock(&l->pmu);
	/* Every result is in the spool before the next scan reads it. */
	reap_all(l);
	pthread_mutex_lock(&l->pmu);
	if (l->n_unrec > 0)
		merge_due(&s.next_due, s.now + LOCAL_ERROR_RETRY);
	pthread_mutex_unlock(&l->pmu);
	free(s.qids);
	cfg_put(l, cfg);
	*next_due = s.next_due;
	return s.more;
}

/* A pool thread: delivers messages of the current scan, one at a time. */
static void *pool_main(void *arg)
{
	struct local *l = arg;

	pthread_mutex_lock(&l->pmu);
	for (;;) {
		struct scan *s;
		int64_t due = 0;
		size_t i;
		int rc = 0;

		while (!l->pool_stop && (l->job == NULL || l->job_next >= l->job->n))
			pthread_cond_wait(&l->job_cv, &l->pmu);
		if (l->pool_stop)
			break;
		s = l->job;
		i = l->job_next++;
		l->job_active++;
		pthread_mutex_unlock(&l->pmu);
		if (!stopping(l))   /* local_free: finish the current message only */
			rc = deliver_message(l, s->cfg, s->qids[i], &due);
		pthread_mutex_lock(&l->pmu);
		merge_due(&s->next_due, due);
		if (rc < 0)
			merge_due(&s->next_due, (int64_t)time(NULL) + LOCAL_ERROR_RETRY);
		l->job_active--;
		if (l->job_next >= s->n && l->job_active == 0) {
			l->job_done = true;
			event_active(l->job_ev, EV_TIMEOUT, 1);
		}
	}
	pthread_mutex_unlock(&l->pmu);
	return NULL;
}

static void *worker(void *arg)
{
	struct local *l = arg;
	int64_t next_due = 0;
	bool again = false;

	pthread_mutex_lock(&l->mu);
	while (!l->stop) {
		char (*qids)[SPOOL_QID_SIZE];
		size_t n_qids;
		bool walk;

		if (!l->kicked && !again) {
			int64_t now = (int64_t)time(NULL), until = now + LOCAL_MAX_SLEEP;
			struct timespec ts = { 0 };

			if (next_due > 0 && next_due < until)
				until = next_due;
			l->busy = false;
			pthread_cond_broadcast(&l->idle_cv);
			ts.tv_sec = (time_t)until;
			if (until > now)
				pthread_cond_timedwait(&l->wake, &l->mu, &ts);
			if (l->stop)
				break;
			if (!l->kicked && (int64_t)time(NULL) < until)
				continue;  /* spurious wake-up */
			if ((int64_t)time(NULL) >= until)
				l->walk = true;   /* a deferral is due, or the 5 minutes */
		}
		walk = l->walk || again;
		qids = l->kq;
		n_qids = l->n_kq;
		l->kq = NULL;
		l->n_kq = 0;
		l->walk = false;
		l->kicked = false;
		l->busy = true;
		pthread_mutex_unlock(&l->mu);
		if (walk) {
			free(qids);
			again = run_scan(l, &next_due, NULL, 0);
		} else if (n_qids > 0) {
			again = run_scan(l, &next_due, qids, n_qids);
		} else {
			free(qids);
		}
		pthread_mutex_lock(&l->mu);
	}
	l->busy = false;
	pthread_cond_broadcast(&l->idle_cv);
	pthread_mutex_unlock(&l->mu);
	return NULL;
}

/* ---- public API ------------------------------------------------------------ */

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
}

static void pool_join(struct local *l)
{
	pthread_mutex_lock(&l->pmu);
	l->pool_stop = true;
	pthread_cond_broadcast(&l->job_cv);
	pthread_mutex_unlock(&l->pmu);
	for (size_t i = 0; i < l->n_pool; i++)
		pthread_join(l->pool[i], NULL);
	l->n_pool = 0;
}

static void local_destroy(struct local *l)
{
	for (size_t i = 0; i < l->n_unrec; i++)
		free(l->unrec[i].reply);
	free(l->unrec);
	cfg_free(l->cfg);
	if (l->tick != NULL)
		event_free(l->tick);
	if (l->job_ev != NULL)
		event_free(l->job_ev);
	if (l->wbase != NULL)
		event_base_free(l->wbase);
	pthread_cond_destroy(&l->wake);
	pthread_cond_destroy(&l->idle_cv);
	pthread_mutex_destroy(&l->mu);
	pthread_cond_destroy(&l->job_cv);
	pthread_cond_destroy(&l->room_cv);
	pthread_mutex_destroy(&l->pmu);
	free(l);
}

struct local *local_new(struct event_base *base, const struct carrier_conf *conf,
			struct evlog *log, struct counters *ctr, struct spool *spool,
			char *err, size_t errlen)
{
	struct local *l = calloc(1, sizeof *l);
	struct timeval tv = { 0, 100 * 1000 };
	int e;

	if (l == NULL || (l->cfg = cfg_new(conf)) == NULL) {
		snprintf(err, errlen, "local delivery: out of memory");
		free(l);
		return NULL;
	}
	pthread_mutex_init(&l->mu, NULL);
	pthread_cond_init(&l->wake, NULL);
	pthread_cond_init(&l->idle_cv, NULL);
	pthread_mutex_init(&l->pmu, NULL);
	pthread_cond_init(&l->job_cv, NULL);
	pthread_cond_init(&l->room_cv, NULL);
	/* The worker's own base receives the spool's answers.  The tick
	 * bounds each wait should libevent's cross-thread wake-up be off. */
	l->wbase = event_base_new();
	if (l->wbase != NULL) {
		l->tick = event_new(l->wbase, -1, EV_PERSIST, tick_cb, NULL);
		l->job_ev = event_new(l->wbase, -1, 0, tick_cb, NULL);
	}
	if (l->tick == NULL || l->job_ev == NULL || event_add(l->tick, &tv) < 0) {
		snprintf(err, errlen, "local delivery: cannot create its event base");
		local_destroy(l);
		return NULL;
	}
	l->base = base;
	l->log = log;
	l->ctr = ctr;
	l->spool = spool;
	l->kicked = true;   /* walk at start: mail queued before a restart */
	l->walk = true;
	l->busy = true;
	for (e = 0; e == 0 && l->n_pool < LOCAL_THREADS; )
		if ((e = pthread_create(&l->pool[l->n_pool], NULL, pool_main, l)) == 0)
			l->n_pool++;
	if (e == 0)
		e = pthread_create(&l->thread, NULL, worker, l);
	if (e != 0) {
		snprintf(err, errlen, "local delivery: cannot start its threads: %s", strerror(e));
		pool_join(l);
		local_destroy(l);
		return NULL;
	}
	return l;
}

void local_kick(struct local *l)
{
	if (l == NULL)
		return;
	pthread_mutex_lock(&l->mu);
	l->kicked = true;
	l->walk = true;
	l->busy = true;
	pthread_cond_signal(&l->wake);
	pthread_mutex_unlock(&l->mu);
}

void local_kick_qid(struct local *l, const char *qid)
{
	void *v = NULL;

	if (l == NULL)
		return;
	pthread_mutex_lock(&l->mu);
	if (l->walk || strlen(qid) >= SPOOL_QID_SIZE)
		;                       /* a walk finds it anyway */
	else if (l->n_kq < LOCAL_KICK_QIDS &&
		 (v = realloc(l->kq, (l->n_kq + 1) * sizeof *l->kq)) != NULL) {
		l->kq = v;
		memcpy(l->kq[l->n_kq++], qid, strlen(qid) + 1);
	} else {
		l->walk = true;         /* too many (or no memory): walk */
	}
	l->kicked = true;
	l->busy = true;
	pthread_cond_signal(&l->wake);
	pthread_mutex_unlock(&l->mu);
}

void local_set_conf(struct local *l, const struct carrier_conf *conf)
{
	struct local_cfg *c = cfg_new(conf), *old;
	bool last;

	if (l == NULL || c == NULL) {
		cfg_free(c);
		return;    /* keep the old copy rather than none */
	}
	pthread_mutex_lock(&l->mu);
	old = l->cfg;
	l->cfg = c;
	last = --old->refs == 0;
	pthread_mutex_unlock(&l->mu);
	if (last)
		cfg_free(old);
	local_kick(l);   /* new local domains may make queued mail local */
}

bool local_wait_idle(struct local *l, unsigned timeout_ms)
{
	struct timespec ts;
	bool idle;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += timeout_ms / 1000;
	ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&l->mu);
	while (l->busy || l->kicked)
		if (pthread_cond_timedwait(&l->idle_cv, &l->mu, &ts) == ETIMEDOUT)
			break;
	idle = !l->busy && !l->kicked;
	pthread_mutex_unlock(&l->mu);
	return idle;
}

void local_free(struct local **lp)
{
	struct local *l;

	if (lp == NULL || (l = *lp) == NULL)
		return;
	*lp = NULL;
	pthread_mutex_lock(&l->mu);
	l->stop = true;
	pthread_cond_signal(&l->wake);
	pthread_mutex_unlock(&l->mu);
	pthread_join(l->thread, NULL);
	pool_join(l);
	free(l->kq);
	local_destroy(l);
}
