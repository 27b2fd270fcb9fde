/*
 * queue_ctl_read: the queue reader, the thread the reading `queue`
 * commands (list, summary, show, due) run on, so a walk of a large queue
 * never holds up the daemon's loop (no blocking call on a loop thread).
 *
 * Owns the reader thread and its FIFO of requests.  On the loop thread,
 * qctl_read_submit() copies the request, takes a reference of the routing
 * table (a reload may swap the daemon's meanwhile: the walk keeps the table
 * it started with), defers the control reply and queues the job; the
 * reader runs jobs one at a time, in order, and finishes each deferred
 * reply, which the control sends on its loop.  A request whose peer has
 * gone is skipped or stopped between walk steps; queue_ctl_stop() stops
 * the one under way, answers those waiting and joins the thread.  The
 * thread runs at nice QCTL_READER_NICE, so on busy cores the loops go
 * first and a walk takes the time left over.
 *
 * Must not: touch the daemon's fields (conf, routes, track), change the
 * queue, or call into control but for control_deferred_*.
 *
 * Threads: qctl_read_submit(), queue_ctl_start() and queue_ctl_stop() on
 * the loop thread; jobs, qctl_walk() and the commands on the reader thread.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "control.h"
#include "evlog.h"
#include "queue_ctl.h"
#include "queue_ctl_int.h"
#include "route.h"
#include "spool.h"

/* The reader thread's nice value (a walk is a background job). */
#define QCTL_READER_NICE 10

struct qctl_job {
	struct qctl_job *next;
	qctl_read_fn *fn;
	struct control_request req;     /* the words, copied */
	struct control_call call;       /* .req = &req */
	struct control_deferred *d;
	struct route_table *rt;         /* our reference */
};

struct qctl_reader {
	struct queue_ctl *q;
	pthread_t thread;
	pthread_mutex_t mu;             /* head, tail, n_jobs */
	pthread_cond_t cv;
	struct qctl_job *head, **tail;
	size_t n_jobs;                  /* waiting, not counting the running one */
	atomic_bool stopping;
};

/* ---- jobs ------------------------------------------------------------------ */

/* Copies the request's words into the job (they point into the
 * connection's buffer, which the next request reuses). */
static int job_copy_req(struct qctl_job *j, const struct control_request *req)
{
	char *p = j->req.line, *end = j->req.line + sizeof j->req.line;
	size_t n = strlen(req->command) + 1;

	if (n > (size_t)(end - p))
		return -1;
	j->req.version = req->version;
	j->req.command = memcpy(p, req->command, n);
	p += n;
	for (size_t i = 0; i < req->argc; i++) {
		n = strlen(req->argv[i]) + 1;
		if (n > (size_t)(end - p))
			return -1;
		j->req.argv[i] = memcpy(p, req->argv[i], n);
		p += n;
	}
	j->req.argc = req->argc;
	return 0;
}

static void job_free(struct qctl_job **jp)
{
	struct qctl_job *j = *jp;

	if (j == NULL)
		return;
	*jp = NULL;
	route_table_free(&j->rt);
	free(j);
}

/* Finishes the job's reply with `code` and a text (the peer may be gone:
 * the control drops it then). */
static void job_refuse(struct qctl_job *j, int code, const char *text)
{
	struct control_reply *rep = control_reply_new();

	if (rep != NULL)
		control_reply_status(rep, code, "%s", text);
	control_deferred_finish(j->d, &rep);
}

static void job_run(struct qctl_reader *rd, struct qctl_job *j)
{
	struct qctl_read r = { .q = rd->q, .rt = j->rt, .call = &j->call, .d = j->d,
			       .reader = rd };
	struct control_reply *rep;

	if (control_deferred_cancelled(j->d)) {
		control_deferred_finish(j->d, NULL);
		return;
	}
	if ((rep = control_reply_new()) == NULL) {
		control_deferred_finish(j->d, NULL);
		return;
	}
	j->fn(&r, rep);
	control_deferred_finish(j->d, &rep);
}

/* ---- the thread ---------------------------------------------------------- */

static void *reader_main(void *arg)
{
	struct qctl_reader *rd = arg;

	/* Background work: when the cores are busy the loops come first. */
	(void)setpriority(PRIO_PROCESS, (id_t)gettid(), QCTL_READER_NICE);
	for (;;) {
		struct qctl_job *j;

		pthread_mutex_lock(&rd->mu);
		while (rd->head == NULL && !atomic_load(&rd->stopping))
			pthread_cond_wait(&rd->cv, &rd->mu);
		if (rd->head == NULL) {
			pthread_mutex_unlock(&rd->mu);
			return NULL;
		}
		j = rd->head;
		rd->head = j->next;
		if (rd->head == NULL)
			rd->tail = &rd->head;
		rd->n_jobs--;
		pthread_mutex_unlock(&rd->mu);
		if (atomic_load(&rd->stopping))
			job_refuse(j, CONTROL_CODE_UNAVAILABLE, "carrierd is stopping");
		else
			job_run(rd, j);
		job_free(&j);
	}
}

int queue_ctl_start(struct queue_ctl *q, char *err, size_t errlen)
{
	struct qctl_reader *rd = calloc(1, sizeof *rd);
	int rc = ENOMEM;

	if (rd != NULL) {
		rd->q = q;
		rd->tail = &rd->head;
		atomic_init(&rd->stopping, false);
		pthread_mutex_init(&rd->mu, NULL);
		pthread_cond_init(&rd->cv, NULL);
		rc = pthread_create(&rd->thread, NULL, reader_main, rd);
		if (rc == 0) {
			q->reader = rd;
			q->reader_failed = false;
			return 0;
		}
		pthread_mutex_destroy(&rd->mu);
		pthread_cond_destroy(&rd->cv);
		free(rd);
	}
	snprintf(err, errlen, "cannot start the queue reader thread: %s", strerror(rc));
	evlog_emit(q->log, EV_QUEUE_READER_FAILED, EVF_S("reason", strerror(rc)));
	q->reader_failed = true;
	return -1;
}

void queue_ctl_stop(struct queue_ctl *q)
{
	struct qctl_reader *rd = q->reader;

	if (rd == NULL)
		return;
	q->reader = NULL;
	pthread_mutex_lock(&rd->mu);
	atomic_store(&rd->stopping, true);
	pthread_cond_signal(&rd->cv);
	pthread_mutex_unlock(&rd->mu);
	/* The reader answers what waits (503) and stops the walk under way
	 * at its next step. */
	pthread_join(rd->thread, NULL);
	pthread_mutex_destroy(&rd->mu);
	pthread_cond_destroy(&rd->cv);
	free(rd);
}

/* ---- submitting and walking ------------------------------------------------ */

/* Queues the request for the reader; false (rep says why) when it cannot. */
static bool reader_queue(struct queue_ctl *q, qctl_read_fn *fn, const struct control_call *call,
			 struct control_reply *rep)
{
	struct qctl_reader *rd = q->reader;
	struct qctl_job *j;
	size_t waiting;

	pthread_mutex_lock(&rd->mu);
	waiting = rd->n_jobs;
	pthread_mutex_unlock(&rd->mu);
	if (waiting >= QCTL_JOBS_MAX) {
		evlog_emit(q->log, EV_QUEUE_READER_BUSY, EVF_S("command", call->req->argc ? call->req->argv[0] : "list"),
			   EVF_I("uid", call->uid), EVF_I("waiting", (long long)waiting));
		control_reply_status(rep, CONTROL_CODE_UNAVAILABLE,
				     "carrierd is busy: %zu queue requests are waiting for the queue reader; try again shortly",
				     waiting);
		return true;
	}
	if ((j = calloc(1, sizeof *j)) == NULL || job_copy_req(j, call->req) < 0) {
		free(j);
		return false;
	}
	if ((j->d = control_defer(call)) == NULL) {
		free(j);
		return false;
	}
	j->fn = fn;
	j->call = (struct control_call){ .req = &j->req, .uid = call->uid, .pid = call->pid };
	j->rt = route_table_ref(q->routes ? *q->routes : NULL);
	pthread_mutex_lock(&rd->mu);
	*rd->tail = j;
	rd->tail = &j->next;
	rd->n_jobs++;
	pthread_cond_signal(&rd->cv);
	pthread_mutex_unlock(&rd->mu);
	return true;
}

void qctl_read_submit(struct queue_ctl *q, qctl_read_fn *fn, const struct control_call *call,
		      struct control_reply *rep)
{
	struct qctl_read r = { .q = q, .rt = q->routes ? *q->routes : NULL, .call = call };

	if (q->reader != NULL && reader_queue(q, fn, call, rep))
		return;
	if (q->reader_failed) {
		control_reply_status(rep, CONTROL_CODE_UNAVAILABLE,
				     "the queue reader thread is not running (event QUEUE_READER_FAILED): restart carrierd");
		return;
	}
	/* No reader (tests), or no connection to defer on: inline. */
	fn(&r, rep);
}

static bool read_cancelled(const struct qctl_read *r)
{
	return (r->reader != NULL && atomic_load(&r->reader->stopping)) ||
	       (r->d != NULL && control_deferred_cancelled(r->d));
}

int qctl_walk(struct qctl_read *r, const char *after, spool_env_fn *cb, void *arg,
	      char *err, size_t errlen)
{
	struct spool_walk w;
	int rc;

	spool_walk_init(&w, after, QCTL_STEP_KEYS);
	do {
		if (read_cancelled(r)) {
			snprintf(err, errlen, "cancelled: %s",
				 r->reader && atomic_load(&r->reader->stopping) ?
				 "carrierd is stopping" : "the client went away");
			return QCTL_CANCELLED;
		}
		rc = spool_foreach_step(r->q->spool, &w, cb, arg, err, errlen);
	} while (rc == 0 && !w.done);
	return rc;
}
