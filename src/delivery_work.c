/*
 * delivery_work: the runner's worker thread (see delivery_int.h).  Every
 * step here blocks on disk: the walk of the spool that builds the index,
 * envelope loads, Maildir deliveries, building and committing reports.
 * Jobs come from the loop through d->jhead and go back through d->dhead
 * and the event d->done_ev; the worker touches nothing else of the runner
 * but the read-only configuration copy and the message it was handed
 * (which the loop leaves alone until the job comes back).
 */
#include "delivery_int.h"

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SCAN_CHUNK 16384          /* index entries handed over per job */
#define HDR_READ_MAX 65536        /* bytes read to find a header */

int64_t delivery_now(void)
{
	return (int64_t)time(NULL);
}

/* ---- worker ----------------------------------------------------------------- */

void delivery_job_free(struct wjob *j)
{
	if (j == NULL)
		return;
	free(j->ents);
	spool_envelope_free(&j->env);
	free(j->root);
	free(j->hostname);
	free(j->domain);
	free(j->mres);
	free(j->mtext);
	free(j->drcpts);
	free(j->didx);
	free(j->to);
	free(j);
}

void delivery_job_post(struct delivery *d, struct wjob *j)
{
	pthread_mutex_lock(&d->mu);
	j->next = NULL;
	if (d->jtail)
		d->jtail->next = j;
	else
		d->jhead = j;
	d->jtail = j;
	pthread_cond_signal(&d->cv);
	pthread_mutex_unlock(&d->mu);
}

static void job_done(struct delivery *d, struct wjob *j)
{
	pthread_mutex_lock(&d->mu);
	j->next = NULL;
	if (d->dtail)
		d->dtail->next = j;
	else
		d->dhead = j;
	d->dtail = j;
	pthread_mutex_unlock(&d->mu);
	event_active(d->done_ev, EV_READ, 0);
}

static bool worker_stopping(struct delivery *d)
{
	bool s;

	pthread_mutex_lock(&d->mu);
	s = d->stop;
	pthread_mutex_unlock(&d->mu);
	return s;
}

struct scan_ctx {
	struct delivery *d;
	struct wjob *chunk;
	size_t total;
};

static int64_t env_due(const struct spool_envelope *env)
{
	int64_t due = INT64_MAX;

	for (size_t i = 0; i < env->n_rcpts; i++) {
		const struct spool_rcpt *r = &env->rcpts[i];

		if (r->state == SPOOL_RCPT_QUEUED)
			due = 0;
		else if (r->state == SPOOL_RCPT_DEFERRED && r->next_attempt < due)
			due = r->next_attempt;
	}
	return due;
}

static int scan_cb(void *arg, const struct spool_envelope *env)
{
	struct scan_ctx *s = arg;
	struct wjob *c = s->chunk;

	if (c->ents == NULL && (c->ents = calloc(SCAN_CHUNK, sizeof *c->ents)) == NULL)
		return -2;
	memcpy(c->ents[c->n_ents].qid, env->qid, SPOOL_QID_SIZE);
	c->ents[c->n_ents++].due = env_due(env);
	s->total++;
	if (c->n_ents == SCAN_CHUNK) {
		struct wjob *n = calloc(1, sizeof *n);

		if (n == NULL)
			return -2;
		n->type = WJ_SCAN;
		job_done(s->d, c);
		s->chunk = n;
		if (worker_stopping(s->d))
			return 1;
	}
	return 0;
}

static void work_scan(struct delivery *d, struct wjob *j)
{
	struct scan_ctx s = { .d = d, .chunk = j };
	struct timespec a, b;
	int rc;

	clock_gettime(CLOCK_MONOTONIC, &a);
	rc = spool_foreach_pending(d->spool, scan_cb, &s, j->err, sizeof j->err);
	clock_gettime(CLOCK_MONOTONIC, &b);
	j = s.chunk;
	j->last = true;
	j->total = s.total;
	j->ms = (b.tv_sec - a.tv_sec) * 1000 + (b.tv_nsec - a.tv_nsec) / 1000000;
	j->rc = rc < 0 ? -1 : 0;
	if (rc == -2)
		snprintf(j->err, sizeof j->err, "out of memory");
	job_done(d, j);
}

static void work_maildir(struct delivery *d, struct wjob *j)
{
	struct dgroup *g = j->g;
	const struct spool_envelope *env = g->m->env;
	struct spool_body *body = NULL;
	size_t n = g->job_n;
	int rc;

	rc = spool_body_open(d->spool, env->qid, &body, j->err, sizeof j->err);
	for (size_t k = 0; k < n; k++) {
		const char *addr = env->rcpts[g->job_idx[k]].addr, *at = strrchr(addr, '@');
		char lp[MAILDIR_LOCALPART_MAX * 4 + 8], path[4096];
		struct maildir_msg msg = { .fd = -1 };
		size_t len = 0, lpn = at ? (size_t)(at - addr) : strlen(addr);

		if (rc != 0) {
			j->mres[k] = MAILDIR_TEMP;
			snprintf(j->mtext[k], sizeof j->mtext[k], "cannot read the message: %s",
				 rc == 1 ? "no such message" : j->err);
			continue;
		}
		if (lpn >= sizeof lp)
			lpn = sizeof lp - 1;
		memcpy(lp, addr, lpn);
		lp[lpn] = '\0';
		msg.localpart = lp;
		msg.domain = at ? at + 1 : j->domain;
		msg.sender = env->sender;
		msg.mem = spool_body_mem(body, &len);
		msg.fd = spool_body_fd(body);
		msg.size = msg.mem ? len : spool_body_size(body);
		msg.seq = d->seq++;
		msg.hostname = j->hostname;
		j->mres[k] = maildir_deliver(j->root, &msg, path, sizeof path,
					     j->mtext[k], sizeof j->mtext[k]);
		if (j->mres[k] == MAILDIR_OK)
			snprintf(j->mtext[k], sizeof j->mtext[k], "delivered to %s", path);
	}
	spool_body_close(&body);
	job_done(d, j);
}

/* Reads up to `max` bytes of the body of qid.  Returns a malloc'd buffer
 * (length in *len_r), or NULL with err. */
static char *read_body(struct delivery *d, const char *qid, size_t max, size_t *len_r,
		       char *err, size_t errlen)
{
	struct spool_body *b = NULL;
	char *buf;
	size_t len = 0;
	int rc = spool_body_open(d->spool, qid, &b, err, errlen);

	if (rc != 0) {
		if (rc == 1)
			snprintf(err, errlen, "no such message");
		return NULL;
	}
	if (max > spool_body_size(b))
		max = (size_t)spool_body_size(b);
	if ((buf = malloc(max + 1)) == NULL) {
		spool_body_close(&b);
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	while (len < max) {
		ssize_t r = spool_body_read(b, buf + len, max - len);

		if (r <= 0)
			break;
		len += (size_t)r;
	}
	spool_body_close(&b);
	buf[len] = '\0';
	*len_r = len;
	return buf;
}

static void work_notify(struct delivery *d, struct wjob *j)
{
	const struct spool_envelope *env = j->m->env;
	struct dsn_msg dm = { 0 };
	struct spool_msg *msg = NULL;
	char *orig = NULL, *text = NULL, mid[SPOOL_QID_SIZE + 300];
	size_t olen = 0, tlen = 0, want = HDR_READ_MAX;
	bool full = j->kind == DSN_FAILURE && env->dsn_ret != SPOOL_RET_HDRS &&
		    env->body_type != SPOOL_BODY_BINARYMIME && env->size <= DSN_FULL_MAX;

	if (full)
		want = (size_t)env->size;
	orig = read_body(d, env->qid, want, &olen, j->err, sizeof j->err);
	/* A report without the original is better than none. */
	if ((msg = spool_msg_new(d->spool, j->err, sizeof j->err)) == NULL)
		goto fail;
	snprintf(mid, sizeof mid, "%s.%s@%s", spool_msg_qid(msg),
		 j->kind == DSN_FAILURE ? "bounce" : j->kind == DSN_DELAY ? "delay" : "success",
		 j->hostname);
	dm.kind = j->kind;
	dm.reporting_mta = j->hostname;
	dm.qid = env->qid;
	dm.message_id = mid;
	dm.to = j->to;
	dm.envid = env->envid;
	dm.ret = full ? SPOOL_RET_FULL : SPOOL_RET_HDRS;
	dm.arrival = env->arrival;
	dm.now = delivery_now();
	dm.original = orig;
	dm.original_len = olen;
	dm.original_size = env->size;
	if (dsn_build(&dm, j->drcpts, j->n_d, &text, &tlen, j->err, sizeof j->err) < 0)
		goto fail;
	spool_msg_set_arrival(msg, dm.now);
	if (full && env->body_type == SPOOL_BODY_8BITMIME)
		spool_msg_set_body_type(msg, SPOOL_BODY_8BITMIME);
	spool_msg_set_smtputf8(msg, env->smtputf8);
	if (spool_msg_set_sender(msg, "") < 0 ||
	    spool_msg_set_client(msg, "", j->hostname) < 0 ||
	    spool_msg_add_rcpt(msg, j->to, 0, NULL) < 0) {
		snprintf(j->err, sizeof j->err, "cannot build the envelope (out of memory or bad address)");
		goto fail;
	}
	if (spool_msg_append(msg, text, tlen, j->err, sizeof j->err) < 0)
		goto fail;
	if (spool_commit(d->spool, &msg, j->dsn_qid, j->err, sizeof j->err) < 0)
		goto fail;
	j->rc = 0;
	goto out;
fail:
	j->rc = -1;
	spool_msg_abort(&msg);
out:
	free(orig);
	free(text);
	job_done(d, j);
}

static void work_load(struct delivery *d, struct wjob *j)
{
	j->rc = spool_load(d->spool, j->qid, &j->env, j->err, sizeof j->err);
	job_done(d, j);
}

void *delivery_worker_main(void *arg)
{
	struct delivery *d = arg;

	for (;;) {
		struct wjob *j;

		pthread_mutex_lock(&d->mu);
		while (!d->stop && d->jhead == NULL)
			pthread_cond_wait(&d->cv, &d->mu);
		if (d->stop) {
			pthread_mutex_unlock(&d->mu);
			return NULL;
		}
		j = d->jhead;
		d->jhead = j->next;
		if (d->jhead == NULL)
			d->jtail = NULL;
		pthread_mutex_unlock(&d->mu);
		switch (j->type) {
		case WJ_SCAN:
			work_scan(d, j);
			break;
		case WJ_LOAD:
			work_load(d, j);
			break;
		case WJ_MAILDIR:
			work_maildir(d, j);
			break;
		case WJ_NOTIFY:
			work_notify(d, j);
			break;
		}
	}
}

