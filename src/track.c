/*
 * track: the message tracking log (see track.h for the contract and the
 * record format).
 *
 * Recording threads format a whole line (track_line.c) and append it to a
 * bounded queue under a mutex; they never touch the disk.  The writer
 * thread takes the whole queue at once and appends it with writev() to the
 * file of each record's UTC day, opened O_APPEND.  Lines stay whole: a
 * batch is only ever a run of complete lines, a short write is continued
 * where it stopped, and after a failed write that left part of a line the
 * next write starts with '\n' so the damage is one unparsable line (the
 * reader skips it), never two records glued together.
 *
 * Must not be required for delivery: every failure here is counted and
 * reported as an event, and every entry point accepts a NULL handle.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "track.h"
#include "track_line.h"

#define MS_PER_DAY 86400000LL
#define TRACK_IOV 64

struct track_item {
	struct track_item *next;
	int64_t day;
	size_t len;
	char line[];
};

struct track {
	char *dir;
	unsigned retention;
	struct evlog *evlog;
	track_clock_fn clock;
	void *clock_arg;

	pthread_mutex_t mu;
	pthread_cond_t wake;            /* writer: work or stop */
	pthread_cond_t done;            /* flushers: progress */
	struct track_item *head, *tail;
	size_t queued_bytes, queue_max;
	unsigned long enqueued, finished;   /* items; finished = written or lost */
	bool stop, reopen, full_reported;
	pthread_t thread;

	/* Writer thread only (and track_new before the thread starts). */
	int fd;
	int64_t fd_day, max_day;
	bool failing, need_nl;
	unsigned long lost_failing;

	atomic_ulong written, lost;
};

/* ---- files ---------------------------------------------------------------- */

static void day_to_ymd(int64_t day, int *y, int *m, int *d)
{
	time_t t = (time_t)(day * 86400);
	struct tm tm;

	if (gmtime_r(&t, &tm) == NULL)
		memset(&tm, 0, sizeof tm);
	*y = tm.tm_year + 1900;
	*m = tm.tm_mon + 1;
	*d = tm.tm_mday;
}

void track_file_name(char *buf, size_t size, int64_t day)
{
	int y, m, d;

	day_to_ymd(day, &y, &m, &d);
	snprintf(buf, size, "track-%04d-%02d-%02d.jsonl", y, m, d);
}

int64_t track_file_day(const char *name)
{
	char ts[32], again[64];
	int64_t ms, day;

	/* track-YYYY-MM-DD.jsonl, exactly */
	if (strlen(name) != 22 || strncmp(name, "track-", 6) != 0 ||
	    strcmp(name + 16, ".jsonl") != 0)
		return -1;
	snprintf(ts, sizeof ts, "%.10sT00:00:00Z", name + 6);
	if (track_line_time_parse(ts, &ms) < 0 || ms < 0)
		return -1;
	day = ms / MS_PER_DAY;
	track_file_name(again, sizeof again, day);
	return strcmp(again, name) == 0 ? day : -1;   /* no 2026-02-31 */
}

static void file_path(const struct track *t, int64_t day, char *buf, size_t size)
{
	char name[64];

	track_file_name(name, sizeof name, day);
	snprintf(buf, size, "%s/%s", t->dir, name);
}

/* Removes day files older than the retention, relative to `today`. */
static void track_prune(struct track *t, int64_t today)
{
	DIR *d;
	struct dirent *de;

	if (t->retention == 0 || (d = opendir(t->dir)) == NULL)
		return;
	while ((de = readdir(d)) != NULL) {
		int64_t day = track_file_day(de->d_name);
		char path[PATH_MAX];

		if (day < 0 || day >= today - (int64_t)t->retention)
			continue;
		snprintf(path, sizeof path, "%s/%s", t->dir, de->d_name);
		if (unlink(path) == 0)
			evlog_emit(t->evlog, EV_TRACK_PRUNED, EVF_S("path", path),
				   EVF_I("days", t->retention));
		else if (errno != ENOENT)
			evlog_emit(t->evlog, EV_TRACK_PRUNE_FAILED, EVF_S("path", path),
				   EVF_S("reason", strerror(errno)));
	}
	closedir(d);
}

/* Opens the file of `day` for appending; 0, or -1 with errno set. */
static int open_day(struct track *t, int64_t day)
{
	char path[PATH_MAX];
	struct stat st;
	int fd;

	if (t->fd >= 0 && t->fd_day == day)
		return 0;
	if (t->fd >= 0)
		close(t->fd);
	t->fd = -1;
	file_path(t, day, path, sizeof path);
	/* O_NONBLOCK: a FIFO put in the directory must not hang the writer. */
	fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK,
		  0640);
	if (fd < 0)
		return -1;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		errno = EINVAL;         /* "Invalid argument": not a regular file */
		return -1;
	}
	t->fd = fd;
	t->fd_day = day;
	evlog_emit(t->evlog, EV_TRACK_FILE_OPENED, EVF_S("path", path));
	if (day > t->max_day) {
		t->max_day = day;
		track_prune(t, day);
	}
	return 0;
}

/* ---- writer thread ------------------------------------------------------- */

static void write_failed(struct track *t, int64_t day, int err, unsigned long n)
{
	char path[PATH_MAX];

	atomic_fetch_add(&t->lost, n);
	t->lost_failing += n;
	if (t->fd >= 0) {
		close(t->fd);   /* reopen next time: the directory may come back */
		t->fd = -1;
	}
	if (t->failing)
		return;
	t->failing = true;
	file_path(t, day, path, sizeof path);
	evlog_emit(t->evlog, EV_TRACK_WRITE_FAILED, EVF_S("path", path),
		   EVF_S("reason", strerror(err)));
}

static void write_ok(struct track *t, int64_t day, unsigned long n)
{
	char path[PATH_MAX];

	atomic_fetch_add(&t->written, n);
	if (!t->failing)
		return;
	t->failing = false;
	file_path(t, day, path, sizeof path);
	evlog_emit(t->evlog, EV_TRACK_WRITE_RECOVERED, EVF_S("path", path),
		   EVF_I("lost", t->lost_failing));
	t->lost_failing = 0;
}

/* writev() of all of iov, continuing after short writes.  Returns 0, or -1
 * with errno; *partial_r tells whether part of a line went out. */
static int write_all(int fd, struct iovec *iov, int n, bool *partial_r)
{
	*partial_r = false;
	while (n > 0) {
		ssize_t w = writev(fd, iov, n);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (w == 0) {
			errno = ENOSPC;
			return -1;
		}
		while (n > 0 && (size_t)w >= iov->iov_len) {
			w -= (ssize_t)iov->iov_len;
			iov++;
			n--;
			*partial_r = false;
		}
		if (n > 0 && w > 0) {
			iov->iov_base = (char *)iov->iov_base + w;
			iov->iov_len -= (size_t)w;
			*partial_r = true;
		}
	}
	return 0;
}

/* Writes a run of items of one day (at most TRACK_IOV - 1 of them). */
static void write_run(struct track *t, struct track_item **items, int n)
{
	struct iovec iov[TRACK_IOV];
	int k = 0;
	bool partial;
	int64_t day = items[0]->day;

	if (open_day(t, day) < 0) {
		write_failed(t, day, errno, (unsigned long)n);
		return;
	}
	if (t->need_nl)
		iov[k++] = (struct iovec){ .iov_base = "\n", .iov_len = 1 };
	for (int i = 0; i < n; i++)
		iov[k++] = (struct iovec){ .iov_base = items[i]->line, .iov_len = items[i]->len };
	if (write_all(t->fd, iov, k, &partial) < 0) {
		t->need_nl = t->need_nl || partial;
		write_failed(t, day, errno, (unsigned long)n);
		return;
	}
	t->need_nl = false;
	write_ok(t, day, (unsigned long)n);
}

/* Writes a batch in runs of the same day; frees it; returns its length. */
static unsigned long write_batch(struct track *t, struct track_item *it)
{
	struct track_item *run[TRACK_IOV - 1];
	unsigned long total = 0;

	while (it != NULL) {
		int n = 0;

		while (it != NULL && n < TRACK_IOV - 1 && (n == 0 || it->day == run[0]->day)) {
			run[n++] = it;
			it = it->next;
		}
		write_run(t, run, n);
		for (int i = 0; i < n; i++)
			free(run[i]);
		total += (unsigned long)n;
	}
	return total;
}

static void *track_writer(void *arg)
{
	struct track *t = arg;

	pthread_mutex_lock(&t->mu);
	for (;;) {
		struct track_item *batch;
		bool reopen;
		unsigned long n;

		while (t->head == NULL && !t->stop && !t->reopen)
			pthread_cond_wait(&t->wake, &t->mu);
		if (t->head == NULL && t->stop)
			break;
		batch = t->head;
		t->head = t->tail = NULL;
		t->queued_bytes = 0;
		reopen = t->reopen;
		t->reopen = false;
		pthread_mutex_unlock(&t->mu);

		if (reopen && t->fd >= 0) {
			close(t->fd);
			t->fd = -1;
		}
		n = write_batch(t, batch);

		pthread_mutex_lock(&t->mu);
		t->finished += n;
		if (t->head == NULL)
			t->full_reported = false;   /* caught up: report anew */
		pthread_cond_broadcast(&t->done);
	}
	pthread_mutex_unlock(&t->mu);
	return NULL;
}

/* ---- life cycle ------------------------------------------------------------ */

static int64_t real_clock(void *arg)
{
	struct timespec ts;

	(void)arg;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t day_of(int64_t ms)
{
	return ms >= 0 ? ms / MS_PER_DAY : (ms - MS_PER_DAY + 1) / MS_PER_DAY;
}

/* Creates the directory when missing and opens today's file. */
static int track_open_dir(struct track *t, char *err, size_t errlen)
{
	struct stat st;
	int64_t today = day_of(t->clock(t->clock_arg));
	char path[PATH_MAX];

	if (mkdir(t->dir, 0750) < 0 && errno != EEXIST) {
		snprintf(err, errlen, "mkdir %s: %s", t->dir, strerror(errno));
		return -1;
	}
	if (stat(t->dir, &st) < 0) {
		snprintf(err, errlen, "%s: %s", t->dir, strerror(errno));
		return -1;
	}
	if (!S_ISDIR(st.st_mode)) {
		snprintf(err, errlen, "%s: not a directory", t->dir);
		return -1;
	}
	t->max_day = today;
	track_prune(t, today);
	if (open_day(t, today) < 0) {
		file_path(t, today, path, sizeof path);
		snprintf(err, errlen, "open %s: %s", path, strerror(errno));
		return -1;
	}
	return 0;
}

struct track *track_new_with(const char *dir, unsigned retention_days,
			     struct evlog *evlog, const struct track_params *params,
			     char *err, size_t errlen)
{
	static const struct track_params defaults = { NULL, NULL, 0 };
	struct track *t = calloc(1, sizeof *t);
	int rc;

	if (t == NULL || (t->dir = strdup(dir)) == NULL) {
		snprintf(err, errlen, "out of memory");
		free(t);
		return NULL;
	}
	t->retention = retention_days;
	t->evlog = evlog;
	if (params == NULL)
		params = &defaults;
	t->clock = params->clock != NULL ? params->clock : real_clock;
	t->clock_arg = params->clock_arg;
	t->queue_max = params->queue_max != 0 ? params->queue_max : TRACK_QUEUE_MAX;
	t->fd = -1;
	t->fd_day = -1;
	atomic_init(&t->written, 0);
	atomic_init(&t->lost, 0);
	if (track_open_dir(t, err, errlen) < 0) {
		free(t->dir);
		free(t);
		return NULL;
	}
	pthread_mutex_init(&t->mu, NULL);
	pthread_cond_init(&t->wake, NULL);
	pthread_cond_init(&t->done, NULL);
	if ((rc = pthread_create(&t->thread, NULL, track_writer, t)) != 0) {
		snprintf(err, errlen, "cannot start the writer thread: %s", strerror(rc));
		pthread_cond_destroy(&t->done);
		pthread_cond_destroy(&t->wake);
		pthread_mutex_destroy(&t->mu);
		close(t->fd);
		free(t->dir);
		free(t);
		return NULL;
	}
	return t;
}

struct track *track_new(const char *dir, unsigned retention_days,
			struct evlog *evlog, char *err, size_t errlen)
{
	return track_new_with(dir, retention_days, evlog, NULL, err, errlen);
}

void track_free(struct track **tp)
{
	struct track *t = *tp;

	if (t == NULL)
		return;
	*tp = NULL;
	pthread_mutex_lock(&t->mu);
	t->stop = true;
	pthread_cond_signal(&t->wake);
	pthread_mutex_unlock(&t->mu);
	pthread_join(t->thread, NULL);
	if (t->fd >= 0)
		close(t->fd);
	pthread_cond_destroy(&t->done);
	pthread_cond_destroy(&t->wake);
	pthread_mutex_destroy(&t->mu);
	free(t->dir);
	free(t);
}

void track_reopen(struct track *t)
{
	if (t == NULL)
		return;
	pthread_mutex_lock(&t->mu);
	t->reopen = true;
	pthread_cond_signal(&t->wake);
	pthread_mutex_unlock(&t->mu);
}

void track_flush(struct track *t)
{
	if (t == NULL)
		return;
	pthread_mutex_lock(&t->mu);
	unsigned long target = t->enqueued;

	while (t->finished < target)
		pthread_cond_wait(&t->done, &t->mu);
	pthread_mutex_unlock(&t->mu);
}

unsigned long track_written(const struct track *t)
{
	return t == NULL ? 0 : atomic_load(&t->written);
}

unsigned long track_lost(const struct track *t)
{
	return t == NULL ? 0 : atomic_load(&t->lost);
}

/* ---- recording -------------------------------------------------------------- */

/* A record being built: the item and the line builder writing into it. */
struct rec {
	struct track_item *item;
	struct track_line_buf b;
};

static bool rec_begin(struct track *t, struct rec *r, const char *qid, const char *type)
{
	int64_t ms;
	char ts[40];

	if (t == NULL)
		return false;
	r->item = malloc(sizeof *r->item + TRACK_LINE_MAX);
	if (r->item == NULL) {
		atomic_fetch_add(&t->lost, 1);
		return false;
	}
	ms = t->clock(t->clock_arg);
	r->item->day = day_of(ms);
	r->item->next = NULL;
	track_line_time(ts, sizeof ts, ms);
	track_line_begin(&r->b, r->item->line, TRACK_LINE_MAX);
	track_line_str(&r->b, "ts", ts);
	track_line_str(&r->b, "qid", qid);
	track_line_str(&r->b, "type", type);
	return true;
}

static void rec_commit(struct track *t, struct rec *r)
{
	struct track_item *it = r->item, *small;
	bool report = false;
	size_t bytes;

	it->len = track_line_end(&r->b);
	if ((small = realloc(it, sizeof *it + it->len + 1)) != NULL)
		it = small;
	pthread_mutex_lock(&t->mu);
	bytes = t->queued_bytes;
	if (bytes + it->len > t->queue_max) {
		atomic_fetch_add(&t->lost, 1);
		report = !t->full_reported;
		t->full_reported = true;
		pthread_mutex_unlock(&t->mu);
		free(it);
		if (report)
			evlog_emit(t->evlog, EV_TRACK_QUEUE_FULL, EVF_I("bytes", bytes));
		return;
	}
	if (t->tail != NULL)
		t->tail->next = it;
	else
		t->head = it;
	t->tail = it;
	t->queued_bytes += it->len;
	t->enqueued++;
	pthread_cond_signal(&t->wake);
	pthread_mutex_unlock(&t->mu);
}

/* Adds "rcpts" (as many as fit) and "nrcpts". */
static void rec_rcpts(struct rec *r, const char *const *rcpts, size_t n)
{
	track_line_int(&r->b, "nrcpts", (long long)n);
	track_line_array_begin(&r->b, "rcpts");
	for (size_t i = 0; i < n; i++)
		if (!track_line_array_str(&r->b, rcpts[i], 0))
			break;
	track_line_array_end(&r->b);
}

void track_received(struct track *t, const struct track_received *m)
{
	struct rec r;

	if (m == NULL || !rec_begin(t, &r, m->qid, "received"))
		return;
	track_line_str(&r.b, "client", m->client);
	track_line_str(&r.b, "helo", m->helo);
	track_line_str(&r.b, "tls", m->tls != NULL && *m->tls ? m->tls : "none");
	if (m->auth != NULL && *m->auth)
		track_line_str(&r.b, "auth", m->auth);
	track_line_int(&r.b, "size", (long long)m->size);
	track_line_str(&r.b, "msgid", m->msgid);
	track_line_str(&r.b, "from", m->sender);
	rec_rcpts(&r, m->rcpts, m->rcpts != NULL ? m->n_rcpts : 0);
	rec_commit(t, &r);
}

void track_queued(struct track *t, const char *qid, const char *origin,
		  const char *sender, size_t n_rcpts)
{
	struct rec r;

	if (!rec_begin(t, &r, qid, "queued"))
		return;
	track_line_str(&r.b, "origin", origin);
	track_line_str(&r.b, "from", sender);
	track_line_int(&r.b, "nrcpts", (long long)n_rcpts);
	rec_commit(t, &r);
}

void track_routed(struct track *t, const char *qid, const char *rcpt,
		  const char *space, const char *nexthop, unsigned cost)
{
	struct rec r;

	if (!rec_begin(t, &r, qid, "routed"))
		return;
	track_line_str(&r.b, "rcpt", rcpt);
	track_line_str(&r.b, "space", space);
	track_line_str(&r.b, "nexthop", nexthop);
	track_line_int(&r.b, "cost", cost);
	rec_commit(t, &r);
}

void track_attempt(struct track *t, const char *qid, const char *const *rcpts,
		   size_t n_rcpts, const char *nexthop, const char *addr,
		   const char *reply)
{
	struct rec r;

	if (!rec_begin(t, &r, qid, "attempt"))
		return;
	track_line_str(&r.b, "nexthop", nexthop);
	track_line_str(&r.b, "addr", addr);
	track_line_str(&r.b, "reply", reply);
	rec_rcpts(&r, rcpts, rcpts != NULL ? n_rcpts : 0);
	rec_commit(t, &r);
}

void track_delivered(struct track *t, const char *qid, const char *rcpt,
		     const char *nexthop, const char *reply)
{
	struct rec r;

	if (!rec_begin(t, &r, qid, "delivered"))
		return;
	track_line_str(&r.b, "rcpt", rcpt);
	track_line_str(&r.b, "nexthop", nexthop);
	track_line_str(&r.b, "reply", reply);
	rec_commit(t, &r);
}

void track_deferred(struct track *t, const char *qid, const char *rcpt,
		    const char *reason, time_t next_attempt)
{
	struct rec r;
	char next[40] = "";

	if (!rec_begin(t, &r, qid, "deferred"))
		return;
	if (next_attempt > 0)
		track_line_time(next, sizeof next, (int64_t)next_attempt * 1000);
	track_line_str(&r.b, "rcpt", rcpt);
	track_line_str(&r.b, "reason", reason);
	track_line_str(&r.b, "next", next);
	rec_commit(t, &r);
}

void track_bounced(struct track *t, const char *qid, const char *rcpt,
		   const char *reason, const char *bounce_qid)
{
	struct rec r;

	if (!rec_begin(t, &r, qid, "bounced"))
		return;
	track_line_str(&r.b, "rcpt", rcpt);
	track_line_str(&r.b, "reason", reason);
	if (bounce_qid != NULL && *bounce_qid)
		track_line_str(&r.b, "bounce_qid", bounce_qid);
	rec_commit(t, &r);
}

void track_expired(struct track *t, const char *qid, const char *rcpt,
		   const char *reason)
{
	struct rec r;

	if (!rec_begin(t, &r, qid, "expired"))
		return;
	track_line_str(&r.b, "rcpt", rcpt);
	track_line_str(&r.b, "reason", reason);
	rec_commit(t, &r);
}

static void track_admin(struct track *t, const char *qid, const char *type, uid_t uid)
{
	struct rec r;

	if (!rec_begin(t, &r, qid, type))
		return;
	track_line_int(&r.b, "uid", (long long)uid);
	rec_commit(t, &r);
}

void track_held(struct track *t, const char *qid, uid_t uid)
{
	track_admin(t, qid, "held", uid);
}

void track_released(struct track *t, const char *qid, uid_t uid)
{
	track_admin(t, qid, "released", uid);
}

void track_deleted(struct track *t, const char *qid, uid_t uid)
{
	track_admin(t, qid, "deleted", uid);
}

void track_retry(struct track *t, const char *qid, uid_t uid)
{
	track_admin(t, qid, "retry", uid);
}
