/*
 * verifier: password checks on worker threads (see verifier.h).
 *
 * A job goes loop -> v->wait (FIFO) -> a worker -> v->done -> the loop,
 * which calls back from the event v->done_ev.  v->mu guards the two lists,
 * each job's state and v->stop; a worker reads only its job's strings and
 * table, writes only its result.  The callback, the argument and the
 * place count (v->pending) belong to the loop thread alone, so a cancel
 * needs no handshake with a worker: a job being hashed just loses its
 * callback and is freed when it comes back.
 */
#include "verifier.h"

#include <event2/event.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include "passwd.h"

#define THREADS_MAX 64

enum job_state { JOB_WAITING, JOB_HASHING, JOB_DONE };

struct verifier_job {
	TAILQ_ENTRY(verifier_job) link;   /* in v->wait or v->done */
	struct verifier *v;
	struct passwd_db *db;             /* a reference, dropped on the loop */
	verifier_done_fn *fn;             /* NULL once cancelled (loop only) */
	void *arg;
	uint8_t state;                    /* enum job_state, under v->mu */
	bool ok;                          /* the answer, written by the worker */
	size_t size;                      /* of the whole allocation, to wipe it */
	char *pass;                       /* into user[], after its NUL */
	char user[];                      /* user NUL pass NUL */
};

TAILQ_HEAD(job_list, verifier_job);

struct verifier {
	struct event_base *base;
	struct event *done_ev;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct job_list wait;             /* under mu */
	struct job_list done;             /* under mu */
	bool stop;                        /* under mu */
	size_t pending;                   /* loop thread only */
	unsigned n_threads;               /* started */
	pthread_t threads[THREADS_MAX];
};

/* Loop thread: the job's place, its table reference and its copy of the
 * password go. */
static void job_free(struct verifier_job *j)
{
	j->v->pending--;
	passwd_db_free(&j->db);
	explicit_bzero(j, j->size);
	free(j);
}

static void *worker_main(void *arg)
{
	struct verifier *v = arg;
	struct verifier_job *j;

	pthread_mutex_lock(&v->mu);
	for (;;) {
		while (!v->stop && TAILQ_EMPTY(&v->wait))
			pthread_cond_wait(&v->cv, &v->mu);
		if (v->stop)
			break;
		j = TAILQ_FIRST(&v->wait);
		TAILQ_REMOVE(&v->wait, j, link);
		j->state = JOB_HASHING;
		pthread_mutex_unlock(&v->mu);

		j->ok = passwd_db_verify(j->db, j->user, j->pass);
		explicit_bzero(j->pass, strlen(j->pass));

		pthread_mutex_lock(&v->mu);
		j->state = JOB_DONE;
		TAILQ_INSERT_TAIL(&v->done, j, link);
		/* Before verifier_free's join returns, so done_ev still exists;
		 * libevent drops the base's lock while it runs callbacks, so
		 * holding mu here cannot deadlock with done_cb. */
		event_active(v->done_ev, EV_READ, 0);
	}
	pthread_mutex_unlock(&v->mu);
	return NULL;
}

/* Loop thread: hands the answers back. */
static void done_cb(evutil_socket_t fd, short what, void *arg)
{
	struct verifier *v = arg;
	struct job_list ready = TAILQ_HEAD_INITIALIZER(ready);
	struct verifier_job *j;

	pthread_mutex_lock(&v->mu);
	TAILQ_CONCAT(&ready, &v->done, link);
	pthread_mutex_unlock(&v->mu);
	/* A callback may cancel another job of `ready` (that only clears its
	 * fn) or submit a new one (that goes to v->wait), never free one. */
	while ((j = TAILQ_FIRST(&ready)) != NULL) {
		verifier_done_fn *fn = j->fn;

		TAILQ_REMOVE(&ready, j, link);
		j->fn = NULL;
		if (fn != NULL)
			fn(j->arg, j->ok);
		job_free(j);
	}
}

struct verifier *verifier_new(struct event_base *base, unsigned threads, char *err,
			      size_t errlen)
{
	struct verifier *v = calloc(1, sizeof *v);
	int e;

	if (v == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	v->base = base;
	TAILQ_INIT(&v->wait);
	TAILQ_INIT(&v->done);
	pthread_mutex_init(&v->mu, NULL);
	pthread_cond_init(&v->cv, NULL);
	if ((v->done_ev = event_new(base, -1, 0, done_cb, v)) == NULL) {
		snprintf(err, errlen, "cannot create the verifier's event");
		verifier_free(&v);
		return NULL;
	}
	if (threads == 0)
		threads = 1;
	if (threads > THREADS_MAX)
		threads = THREADS_MAX;
	while (v->n_threads < threads) {
		e = pthread_create(&v->threads[v->n_threads], NULL, worker_main, v);
		if (e != 0) {
			snprintf(err, errlen, "cannot start a verifier thread: %s", strerror(e));
			verifier_free(&v);
			return NULL;
		}
		v->n_threads++;
	}
	return v;
}

struct verifier_job *verifier_submit(struct verifier *v, struct passwd_db *db,
				     const char *user, const char *pass, size_t max,
				     verifier_done_fn *fn, void *arg, bool *full_r)
{
	size_t ulen = strlen(user), plen = strlen(pass);
	size_t size = sizeof(struct verifier_job) + ulen + 1 + plen + 1;
	struct verifier_job *j;

	*full_r = v->pending >= max;
	if (*full_r || (j = calloc(1, size)) == NULL)
		return NULL;
	j->v = v;
	j->db = passwd_db_ref(db);
	j->fn = fn;
	j->arg = arg;
	j->size = size;
	memcpy(j->user, user, ulen + 1);
	j->pass = j->user + ulen + 1;
	memcpy(j->pass, pass, plen + 1);
	j->state = JOB_WAITING;
	v->pending++;
	pthread_mutex_lock(&v->mu);
	TAILQ_INSERT_TAIL(&v->wait, j, link);
	pthread_cond_signal(&v->cv);
	pthread_mutex_unlock(&v->mu);
	return j;
}

void verifier_cancel(struct verifier_job **jobp)
{
	struct verifier_job *j = *jobp;
	struct verifier *v;
	bool waiting;

	*jobp = NULL;
	if (j == NULL)
		return;
	v = j->v;
	j->fn = NULL;
	pthread_mutex_lock(&v->mu);
	waiting = j->state == JOB_WAITING;
	if (waiting)
		TAILQ_REMOVE(&v->wait, j, link);
	pthread_mutex_unlock(&v->mu);
	if (waiting)
		job_free(j);
}

size_t verifier_pending(const struct verifier *v)
{
	return v->pending;
}

static void drop_all(struct job_list *l)
{
	struct verifier_job *j;

	while ((j = TAILQ_FIRST(l)) != NULL) {
		TAILQ_REMOVE(l, j, link);
		job_free(j);
	}
}

void verifier_free(struct verifier **vp)
{
	struct verifier *v = *vp;

	*vp = NULL;
	if (v == NULL)
		return;
	pthread_mutex_lock(&v->mu);
	v->stop = true;
	pthread_cond_broadcast(&v->cv);
	pthread_mutex_unlock(&v->mu);
	for (unsigned i = 0; i < v->n_threads; i++)
		pthread_join(v->threads[i], NULL);
	/* The workers are gone: the lists are ours alone. */
	drop_all(&v->wait);
	drop_all(&v->done);
	if (v->done_ev != NULL)
		event_free(v->done_ev);
	pthread_cond_destroy(&v->cv);
	pthread_mutex_destroy(&v->mu);
	free(v);
}
