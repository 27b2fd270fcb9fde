/*
 * Integration tests for the delivery runner against a real spool in a
 * temporary directory: maildir, discard and reject routes, failover across
 * route costs, bounces delivered like any mail, the double-bounce rule,
 * retries, expiry, the delay warning, restart from the spool.  No network:
 * routes that need DNS get no resolver and fail temporarily.
 */
#include <dirent.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "test_util.h"

#include "conf.h"
#include "counters.h"
#include "delivery.h"
#include "evlog.h"
#include "route.h"
#include "spool.h"

struct fx {
	char dir[256];
	char mail[300], mail2[300];
	struct event_base *base;
	struct evlog *log;
	struct spool *spool;
	struct carrier_conf *conf;
	struct route_table *routes;
	struct counters *ctr;
	struct delivery *d;
};

static void fx_conf(struct fx *f, const char *delivery_extra)
{
	char text[4096];
	struct conf_errors errs = { 0 };

	snprintf(text, sizeof text,
		 "[server]\nhostname = mx.test.example\nlocal_domains = local.test\n"
		 "[spool]\npath = %s/spool\n"
		 "[local]\nmaildir = %s\n"
		 "[delivery]\nretry_schedule = 1s\nmax_queue_lifetime = 1h\ndelay_warning = 0\n%s"
		 "[route discard.test]\nvia = discard\n"
		 "[route reject.test]\nvia = reject\n"
		 "[route fo.test]\nvia = maildir:/nonexistent-carrier-test/x\ncost = 1\n"
		 "[route fo.test]\nvia = maildir:%s\ncost = 5\n",
		 f->dir, f->mail, delivery_extra, f->mail2);
	f->conf = conf_load_string("test.conf", text, &errs);
	for (size_t i = 0; i < errs.n; i++)
		fprintf(stderr, "conf: %s: %s\n", errs.v[i].key, errs.v[i].problem);
	assert_non_null(f->conf);
	f->routes = route_table_new(f->conf, &errs);
	assert_non_null(f->routes);
	conf_errors_clear(&errs);
}

static struct fx *fx_new(const char *delivery_extra)
{
	struct fx *f = calloc(1, sizeof *f);
	char err[512];

	snprintf(f->dir, sizeof f->dir, "/tmp/carrier-delivery-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	snprintf(f->mail, sizeof f->mail, "%s/mail", f->dir);
	snprintf(f->mail2, sizeof f->mail2, "%s/mail2", f->dir);
	f->base = event_base_new();
	f->log = evlog_new("test");
	fx_conf(f, delivery_extra);
	f->spool = spool_open(f->conf->spool_path, NULL, f->log, err, sizeof err);
	assert_non_null(f->spool);
	return f;
}

static void fx_start(struct fx *f)
{
	char err[512];

	f->d = delivery_new(f->base, f->conf, f->log, f->ctr, f->spool, f->routes, NULL,
			    err, sizeof err);
	if (f->d == NULL)
		fail_msg("delivery_new: %s", err);
}

static void fx_free(struct fx *f)
{
	delivery_free(&f->d);
	spool_close(&f->spool);
	counters_close(&f->ctr, true);
	/* Results queued before the close arrive now. */
	event_base_loop(f->base, EVLOOP_NONBLOCK);
	route_table_free(&f->routes);
	conf_free(&f->conf);
	evlog_free(&f->log);
	event_base_free(f->base);
	test_rmtree(f->dir);
	free(f);
}

static char *queue(struct fx *f, const char *sender, const char *const *rcpts,
		   const unsigned *notify, int64_t arrival)
{
	static char qid[SPOOL_QID_SIZE];
	char err[512];
	static const char body[] = "From: s@local.test\r\nSubject: test\r\n\r\nhello\r\n";
	struct spool_msg *m = spool_msg_new(f->spool, err, sizeof err);

	assert_non_null(m);
	assert_int_equal(spool_msg_set_sender(m, sender), 0);
	for (size_t i = 0; rcpts[i] != NULL; i++)
		assert_int_equal(spool_msg_add_rcpt(m, rcpts[i], notify ? notify[i] : 0, NULL), 0);
	if (arrival)
		spool_msg_set_arrival(m, arrival);
	assert_int_equal(spool_msg_append(m, body, sizeof body - 1, err, sizeof err), 0);
	assert_int_equal(spool_commit(f->spool, &m, qid, err, sizeof err), 0);
	if (f->d)
		delivery_kick_qid(f->d, qid);
	return qid;
}

static int pending_cb(void *arg, const struct spool_envelope *env)
{
	(*(size_t *)arg)++;
	return 0;
}

static size_t pending(struct fx *f)
{
	size_t n = 0;
	char err[256];

	assert_int_equal(spool_foreach_pending(f->spool, pending_cb, &n, err, sizeof err), 0);
	return n;
}

static size_t files_in(const char *root, const char *user)
{
	char path[600];
	DIR *dir;
	struct dirent *e;
	size_t n = 0;

	snprintf(path, sizeof path, "%s/%s/new", root, user);
	if ((dir = opendir(path)) == NULL)
		return 0;
	while ((e = readdir(dir)) != NULL)
		n += e->d_name[0] != '.';
	closedir(dir);
	return n;
}

/* Concatenation of every file in root/user/new (caller frees). */
static char *mailbox(const char *root, const char *user)
{
	char path[600], file[900];
	DIR *dir;
	struct dirent *e;
	size_t len = 0;
	char *all = calloc(1, 1);

	snprintf(path, sizeof path, "%s/%s/new", root, user);
	if ((dir = opendir(path)) == NULL)
		return all;
	while ((e = readdir(dir)) != NULL) {
		char *t;

		if (e->d_name[0] == '.')
			continue;
		snprintf(file, sizeof file, "%s/%s", path, e->d_name);
		t = test_read_file(file);
		assert_non_null(t);
		all = realloc(all, len + strlen(t) + 2);
		memcpy(all + len, t, strlen(t) + 1);
		len += strlen(t);
		free(t);
	}
	closedir(dir);
	return all;
}

static void stop_cb(evutil_socket_t fd, short w, void *arg)
{
	event_base_loopbreak(arg);
}

/* Runs the loop until `done(f)` holds or `ms` pass; returns done(f). */
static bool run_until(struct fx *f, bool (*done)(struct fx *), unsigned ms)
{
	struct timespec t0, t;
	struct event *tick = event_new(f->base, -1, EV_PERSIST, stop_cb, f->base);
	struct timeval tv = { 0, 20000 };
	bool ok = false;

	event_add(tick, &tv);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		event_base_loop(f->base, 0);
		if ((ok = done(f)))
			break;
		clock_gettime(CLOCK_MONOTONIC, &t);
		if ((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000 > (long)ms)
			break;
	}
	event_free(tick);
	return ok;
}

static bool queue_empty(struct fx *f)
{
	struct delivery_stats st;

	delivery_get_stats(f->d, &st);
	return st.index_ready && st.active == 0 && pending(f) == 0 && st.indexed == 0;
}

static unsigned long evcount(struct fx *f, enum evlog_id id)
{
	return evlog_count(f->log, id);
}

/* Mail queued before the runner starts (a restart) is found by the
 * index scan; maildir, discard and reject in one message; the bounce
 * names only the rejected recipient and is delivered like any mail. */
static void test_delivery_routes_and_bounce(void **state)
{
	struct fx *f = fx_new("");
	const char *rcpts[] = { "user@local.test", "x@discard.test", "y@reject.test", NULL };
	char *box, shm[64];
	struct counters_shm *cb;

	snprintf(shm, sizeof shm, "/carrier-test-delivery-%d", (int)getpid());
	f->ctr = counters_open(shm, NULL);
	assert_non_null(f->ctr);
	queue(f, "sender@local.test", rcpts, NULL, 0);
	fx_start(f);
	assert_true(run_until(f, queue_empty, 10000));
	assert_int_equal(files_in(f->mail, "user"), 1);
	assert_int_equal(files_in(f->mail, "sender"), 1);
	box = mailbox(f->mail, "sender");
	assert_contains(box, "Return-Path: <>");
	assert_contains(box, "Final-Recipient: rfc822; y@reject.test");
	assert_contains(box, "Action: failed");
	assert_contains(box, "Status: 5.7.1");
	assert_contains(box, "Diagnostic-Code: smtp; 550 5.7.1 refused by the routing table");
	assert_null(strstr(box, "Final-Recipient: rfc822; user@local.test"));
	assert_null(strstr(box, "Final-Recipient: rfc822; x@discard.test"));
	free(box);
	assert_int_equal(evcount(f, EV_DELIVERY_DELIVERED), 3);   /* user, discard, bounce */
	assert_int_equal(evcount(f, EV_DELIVERY_BOUNCED), 1);
	assert_int_equal(evcount(f, EV_DELIVERY_NOTIFY_QUEUED), 1);
	assert_int_equal(evcount(f, EV_DELIVERY_INDEX_READY), 1);
	cb = counters_block(f->ctr);
	assert_int_equal(cb->v[COUNTER_RCPT_DELIVERED], 3);
	assert_int_equal(cb->v[COUNTER_RCPT_BOUNCED], 1);
	assert_int_equal(cb->v[COUNTER_MSG_BOUNCED], 1);
	assert_int_equal(cb->v[COUNTER_QUEUE_ACTIVE_MSGS], 0);
	assert_int_equal(cb->v[COUNTER_QUEUE_DEFERRED_MSGS], 0);
	assert_non_null(counters_hop(f->ctr, "reject"));
	assert_int_equal(counters_hop(f->ctr, "reject")->f[HOP_MSG_BOUNCED], 1);
	fx_free(f);
}

static void test_delivery_notify_never(void **state)
{
	struct fx *f = fx_new("");
	const char *rcpts[] = { "y@reject.test", NULL };
	const unsigned notify[] = { SPOOL_NOTIFY_NEVER };

	fx_start(f);
	queue(f, "sender@local.test", rcpts, notify, 0);
	assert_true(run_until(f, queue_empty, 10000));
	assert_int_equal(files_in(f->mail, "sender"), 0);
	assert_int_equal(evcount(f, EV_DELIVERY_BOUNCED), 1);
	assert_int_equal(evcount(f, EV_DELIVERY_NOTIFY_QUEUED), 0);
	fx_free(f);
}

static void test_delivery_notify_success(void **state)
{
	struct fx *f = fx_new("");
	const char *rcpts[] = { "user@local.test", "x@discard.test", NULL };
	const unsigned notify[] = { SPOOL_NOTIFY_SUCCESS, SPOOL_NOTIFY_SUCCESS };
	char *box;

	fx_start(f);
	queue(f, "sender@local.test", rcpts, notify, 0);
	assert_true(run_until(f, queue_empty, 10000));
	assert_int_equal(files_in(f->mail, "user"), 1);
	assert_int_equal(files_in(f->mail, "sender"), 1);
	box = mailbox(f->mail, "sender");
	assert_contains(box, "Final-Recipient: rfc822; user@local.test");
	assert_contains(box, "Action: delivered");
	assert_contains(box, "Status: 2.0.0");
	/* No local path leaks into the report; discard reports nothing. */
	assert_null(strstr(box, f->mail));
	assert_null(strstr(box, "x@discard.test"));
	free(box);
	fx_free(f);
}

static void test_delivery_double_bounce_dropped(void **state)
{
	struct fx *f = fx_new("");
	const char *rcpts[] = { "y@reject.test", NULL };

	fx_start(f);
	queue(f, "", rcpts, NULL, 0);
	assert_true(run_until(f, queue_empty, 10000));
	assert_int_equal(evcount(f, EV_DELIVERY_DOUBLE_BOUNCE_DROPPED), 1);
	assert_int_equal(evcount(f, EV_DELIVERY_NOTIFY_QUEUED), 0);
	fx_free(f);
}

static void test_delivery_double_bounce_to(void **state)
{
	struct fx *f = fx_new("double_bounce_to = postmaster@local.test\n");
	const char *rcpts[] = { "y@reject.test", NULL };
	const char *rcpts2[] = { "postmaster@reject.test", NULL };
	char *box;

	fx_start(f);
	queue(f, "", rcpts, NULL, 0);
	assert_true(run_until(f, queue_empty, 10000));
	assert_int_equal(evcount(f, EV_DELIVERY_DOUBLE_BOUNCE_SENT), 1);
	assert_int_equal(files_in(f->mail, "postmaster"), 1);
	box = mailbox(f->mail, "postmaster");
	assert_contains(box, "Final-Recipient: rfc822; y@reject.test");
	free(box);
	/* A null-sender message to double_bounce_to's own failing address
	 * is dropped, not reported in a loop. */
	fx_free(f);
	f = fx_new("double_bounce_to = postmaster@reject.test\n");
	fx_start(f);
	queue(f, "", rcpts2, NULL, 0);
	assert_true(run_until(f, queue_empty, 10000));
	assert_int_equal(evcount(f, EV_DELIVERY_DOUBLE_BOUNCE_DROPPED), 1);
	fx_free(f);
}

static void test_delivery_failover(void **state)
{
	struct fx *f = fx_new("");
	const char *rcpts[] = { "u@fo.test", NULL };

	fx_start(f);
	queue(f, "sender@local.test", rcpts, NULL, 0);
	assert_true(run_until(f, queue_empty, 10000));
	/* The cost-1 Maildir root cannot be created: the cost-5 one took it
	 * in the same attempt. */
	assert_int_equal(files_in(f->mail2, "u"), 1);
	assert_int_equal(evcount(f, EV_DELIVERY_DEFERRED), 0);
	fx_free(f);
}

static bool deferred_twice(struct fx *f)
{
	return evcount(f, EV_DELIVERY_DEFERRED) >= 2;
}

/* No resolver: the implicit mx route fails temporarily every second
 * until the 3 s lifetime ends; then a bounce with 4.4.7. */
static void test_delivery_retry_then_expire(void **state)
{
	struct fx *f;
	const char *rcpts[] = { "x@remote.test", NULL };
	char *box;

	f = fx_new("");
	f->conf->max_queue_lifetime = 3;
	fx_start(f);
	queue(f, "sender@local.test", rcpts, NULL, 0);
	assert_true(run_until(f, deferred_twice, 5000));
	assert_true(run_until(f, queue_empty, 8000));
	assert_int_equal(evcount(f, EV_DELIVERY_EXPIRED), 1);
	box = mailbox(f->mail, "sender");
	assert_contains(box, "Final-Recipient: rfc822; x@remote.test");
	assert_contains(box, "Status: 4.4.7");
	assert_contains(box, "no DNS resolver");
	free(box);
	fx_free(f);
}

static int last_reply_cb(void *arg, const struct spool_envelope *env)
{
	char *out = arg;

	if (env->n_rcpts > 0 && env->rcpts[0].last_reply != NULL)
		snprintf(out, 600, "%s", env->rcpts[0].last_reply);
	return 0;
}

static bool deferred_thrice(struct fx *f)
{
	return evcount(f, EV_DELIVERY_DEFERRED) >= 3;
}

static void test_delivery_delay_warning_once(void **state)
{
	struct fx *f = fx_new("");
	const char *rcpts[] = { "x@remote.test", NULL };
	char reply[600] = "", err[256];
	char *box;

	f->conf->delay_warning = 1;
	fx_start(f);
	queue(f, "sender@local.test", rcpts, NULL, (int64_t)time(NULL) - 5);
	assert_true(run_until(f, deferred_thrice, 8000));
	/* Let the warning's own delivery finish. */
	run_until(f, deferred_thrice, 300);
	assert_int_equal(files_in(f->mail, "sender"), 1);
	box = mailbox(f->mail, "sender");
	assert_contains(box, "Action: delayed");
	assert_contains(box, "Will-Retry-Until:");
	free(box);
	assert_int_equal(spool_foreach_pending(f->spool, last_reply_cb, reply, err, sizeof err), 0);
	assert_contains(reply, DELIVERY_WARNED_MARK);
	fx_free(f);
}

static bool deferred_once(struct fx *f)
{
	return evcount(f, EV_DELIVERY_DEFERRED) >= 1;
}

static bool never(struct fx *f)
{
	return false;
}

static bool user_has_mail(struct fx *f)
{
	return files_in(f->mail, "user") == 1;
}

/* carrier queue hold/release/retry: the spool's admin changes, then a kick. */
static void test_delivery_hold_release_retry(void **state)
{
	struct fx *f = fx_new("");
	const char *local[] = { "user@local.test", NULL };
	const char *remote[] = { "x@remote.test", NULL };
	char held[SPOOL_QID_SIZE], deferred[SPOOL_QID_SIZE], err[256];
	const char *q[1];

	f->conf->retry_schedule[0] = 3600;
	snprintf(held, sizeof held, "%s", queue(f, "sender@local.test", local, NULL, 0));
	q[0] = held;
	assert_int_equal(spool_admin(f->spool, SPOOL_ADMIN_HOLD, q, 1, NULL, NULL,
				     err, sizeof err), 1);
	fx_start(f);
	snprintf(deferred, sizeof deferred, "%s", queue(f, "sender@local.test", remote, NULL, 0));
	assert_true(run_until(f, deferred_once, 5000));
	run_until(f, never, 500);
	assert_int_equal(files_in(f->mail, "user"), 0);        /* held */
	assert_int_equal(evcount(f, EV_DELIVERY_DEFERRED), 1); /* next in an hour */
	assert_int_equal(spool_admin(f->spool, SPOOL_ADMIN_RELEASE, q, 1, NULL, NULL,
				     err, sizeof err), 1);
	delivery_kick_qid(f->d, held);
	assert_true(run_until(f, user_has_mail, 5000));
	q[0] = deferred;
	assert_int_equal(spool_admin(f->spool, SPOOL_ADMIN_RETRY, q, 1, NULL, NULL,
				     err, sizeof err), 1);
	delivery_kick_qid(f->d, deferred);
	assert_true(run_until(f, deferred_twice, 5000));
	fx_free(f);
}

/* The spool holds nothing and every removal's completion has run: the
 * runner drops a message from its index when it asks for the removal, and
 * DELIVERY_REMOVED follows when the spool thread's answer reaches the loop,
 * which may be after the spool is already empty. */
static bool all_removed(struct fx *f)
{
	return queue_empty(f) && evcount(f, EV_DELIVERY_REMOVED) >= 100;
}

static void test_delivery_many_messages(void **state)
{
	struct fx *f = fx_new("");
	const char *rcpts[] = { "user@local.test", "z@discard.test", NULL };

	for (int i = 0; i < 50; i++)
		queue(f, "sender@local.test", rcpts, NULL, 0);
	fx_start(f);
	for (int i = 0; i < 50; i++)
		queue(f, "sender@local.test", rcpts, NULL, 0);
	assert_true(run_until(f, all_removed, 20000));
	assert_int_equal(files_in(f->mail, "user"), 100);
	assert_int_equal(evcount(f, EV_DELIVERY_REMOVED), 100);
	fx_free(f);
}

/* Freeing with attempts in flight leaves the recipients queued. */
static void test_delivery_free_in_flight(void **state)
{
	struct fx *f = fx_new("");
	const char *rcpts[] = { "x@remote.test", "user@local.test", NULL };

	fx_start(f);
	for (int i = 0; i < 20; i++)
		queue(f, "sender@local.test", rcpts, NULL, 0);
	event_base_loop(f->base, EVLOOP_NONBLOCK);
	delivery_free(&f->d);
	assert_true(pending(f) > 0);
	fx_free(f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_delivery_routes_and_bounce),
		cmocka_unit_test(test_delivery_notify_never),
		cmocka_unit_test(test_delivery_notify_success),
		cmocka_unit_test(test_delivery_double_bounce_dropped),
		cmocka_unit_test(test_delivery_double_bounce_to),
		cmocka_unit_test(test_delivery_failover),
		cmocka_unit_test(test_delivery_retry_then_expire),
		cmocka_unit_test(test_delivery_delay_warning_once),
		cmocka_unit_test(test_delivery_hold_release_retry),
		cmocka_unit_test(test_delivery_many_messages),
		cmocka_unit_test(test_delivery_free_in_flight),
	};

	evthread_use_pthreads();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
