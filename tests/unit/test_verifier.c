/* Unit tests for verifier: password checks on worker threads, answered on
 * the loop; the queue bound, cancels (waiting, hashing, from a callback),
 * the table outliving a reload, and a free with checks in progress. */
#include "test_util.h"

#include <event2/event.h>
#include <event2/thread.h>
#include <time.h>

#include "passwd.h"
#include "verifier.h"

struct fixture {
	struct test_dir *dir;
	struct event_base *base;
	struct passwd_db *db;
	struct verifier *v;
};

/* What one check's callback saw. */
struct answer {
	struct fixture *f;
	int calls;
	bool ok;
	int *done;                     /* counts answers of the test */
	struct verifier_job **cancel;  /* cancelled from this callback */
	struct answer *resubmit;       /* submitted from this callback */
	struct verifier_job *job;
};

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void answered(void *arg, bool ok)
{
	struct answer *a = arg;

	a->calls++;
	a->ok = ok;
	a->job = NULL;
	(*a->done)++;
	if (a->cancel != NULL)
		verifier_cancel(a->cancel);
	if (a->resubmit != NULL) {
		bool full;

		a->resubmit->job = verifier_submit(a->f->v, a->f->db, "alice", "s3cret", 8,
						   answered, a->resubmit, &full);
		assert_non_null(a->resubmit->job);
	}
}

static struct verifier_job *submit(struct fixture *f, const char *user, const char *pass,
				   struct answer *a, int *done)
{
	bool full = true;

	memset(a, 0, sizeof *a);
	a->f = f;
	a->done = done;
	a->job = verifier_submit(f->v, f->db, user, pass, 8, answered, a, &full);
	assert_non_null(a->job);
	assert_false(full);
	return a->job;
}

/* Runs the loop until *done reaches `want` (30 s at most). */
static void run_until(struct fixture *f, int *done, int want)
{
	double until = now_s() + 30;

	while (*done < want) {
		assert_true(now_s() < until);
		assert_int_not_equal(event_base_loop(f->base, EVLOOP_ONCE), -1);
	}
}

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof *f);
	char hash[PASSWD_HASH_MAX + 1], err[512];

	assert_non_null(f);
	f->dir = test_dir_new("verifier", "passwd");
	assert_int_equal(passwd_hash("s3cret", hash, sizeof hash, err, sizeof err), 0);
	assert_int_equal(passwd_file_set(f->dir->path, "alice", hash, err, sizeof err), 0);
	f->db = passwd_db_load(f->dir->path, err, sizeof err);
	assert_non_null(f->db);
	f->base = event_base_new();
	assert_non_null(f->base);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	verifier_free(&f->v);
	passwd_db_free(&f->db);
	event_base_free(f->base);
	test_dir_free(f->dir);
	free(f);
	return 0;
}

static void start(struct fixture *f, unsigned threads)
{
	char err[256];

	f->v = verifier_new(f->base, threads, err, sizeof err);
	assert_non_null(f->v);
}

static void test_answers(void **state)
{
	struct fixture *f = *state;
	struct answer good, bad, unknown, none;
	struct passwd_db *db;
	bool full;
	int done = 0;

	start(f, 2);
	submit(f, "alice", "s3cret", &good, &done);
	submit(f, "alice", "s3cret ", &bad, &done);
	submit(f, "nobody", "s3cret", &unknown, &done);
	/* No table: nothing matches. */
	memset(&none, 0, sizeof none);
	none.done = &done;
	db = f->db;
	f->db = NULL;
	none.job = verifier_submit(f->v, NULL, "alice", "s3cret", 8, answered, &none, &full);
	f->db = db;
	assert_non_null(none.job);
	assert_int_equal(verifier_pending(f->v), 4);
	/* Never answered from inside submit: only from the loop. */
	assert_int_equal(done, 0);
	run_until(f, &done, 4);
	assert_int_equal(good.calls, 1);
	assert_true(good.ok);
	assert_int_equal(bad.calls, 1);
	assert_false(bad.ok);
	assert_int_equal(unknown.calls, 1);
	assert_false(unknown.ok);
	assert_int_equal(none.calls, 1);
	assert_false(none.ok);
	assert_int_equal(verifier_pending(f->v), 0);
}

/* The loop only queues: submitting costs far less than the hashes (a
 * woken worker may take the CPU from the loop for a moment on a busy
 * machine, hence the loose bound). */
static void test_submit_does_not_hash(void **state)
{
	struct fixture *f = *state;
	struct answer a[4];
	double t0, hash = 1e9, queue;
	int done = 0;

	start(f, 1);
	for (int i = 0; i < 2; i++) {
		t0 = now_s();
		assert_true(passwd_db_verify(f->db, "alice", "s3cret"));
		if (now_s() - t0 < hash)
			hash = now_s() - t0;
	}
	t0 = now_s();
	for (size_t i = 0; i < 4; i++)
		submit(f, "alice", "s3cret", &a[i], &done);
	queue = now_s() - t0;
	if (queue >= 2 * hash)
		fail_msg("4 submits took %.3f ms, one hash %.3f ms: want them under 2 hashes "
			 "(hashing on the caller's thread takes 4)", queue * 1e3, hash * 1e3);
	run_until(f, &done, 4);
	for (size_t i = 0; i < 4; i++)
		assert_true(a[i].ok);
}

/* A reload drops the server's reference while checks hold theirs. */
static void test_table_outlives_reload(void **state)
{
	struct fixture *f = *state;
	struct answer a[3];
	int done = 0;

	start(f, 1);
	for (size_t i = 0; i < 3; i++)
		submit(f, "alice", "s3cret", &a[i], &done);
	passwd_db_free(&f->db);   /* the jobs' references are the last */
	run_until(f, &done, 3);
	for (size_t i = 0; i < 3; i++)
		assert_true(a[i].ok);
}

static void test_queue_bound(void **state)
{
	struct fixture *f = *state;
	struct answer a, b, c;
	bool full = true;
	int done = 0;

	start(f, 1);
	submit(f, "alice", "x", &a, &done);
	submit(f, "alice", "x", &b, &done);
	/* Two in progress (one hashed, one waiting) with a bound of 2. */
	memset(&c, 0, sizeof c);
	c.done = &done;
	c.job = verifier_submit(f->v, f->db, "alice", "s3cret", 2, answered, &c, &full);
	assert_null(c.job);
	assert_true(full);
	assert_int_equal(verifier_pending(f->v), 2);
	run_until(f, &done, 2);
	assert_int_equal(verifier_pending(f->v), 0);
	c.job = verifier_submit(f->v, f->db, "alice", "s3cret", 2, answered, &c, &full);
	assert_non_null(c.job);
	assert_false(full);
	run_until(f, &done, 3);
	assert_int_equal(c.calls, 1);
	assert_true(c.ok);
	assert_false(a.ok);
}

static void test_cancel(void **state)
{
	struct fixture *f = *state;
	struct answer a[6];
	struct verifier_job *none = NULL;
	int done = 0;

	start(f, 1);
	for (size_t i = 0; i < 6; i++)
		submit(f, "alice", "s3cret", &a[i], &done);
	/* The last one still waits behind five hashes: it goes at once. */
	verifier_cancel(&a[5].job);
	assert_null(a[5].job);
	assert_int_equal(verifier_pending(f->v), 5);
	/* The first is being hashed (or about to be): it keeps its place
	 * until it comes back, and is then dropped. */
	verifier_cancel(&a[0].job);
	verifier_cancel(&none);
	run_until(f, &done, 4);
	assert_int_equal(a[0].calls, 0);
	assert_int_equal(a[5].calls, 0);
	for (size_t i = 1; i < 5; i++)
		assert_int_equal(a[i].calls, 1);
	/* One thread, first in first out: a[0] came back before a[4]. */
	assert_int_equal(verifier_pending(f->v), 0);
}

/* A callback cancels another check (perhaps answered in the same batch)
 * and submits a new one. */
static void test_cancel_and_submit_from_callback(void **state)
{
	struct fixture *f = *state;
	struct answer a, b, c, again;
	int done = 0;

	start(f, 2);
	submit(f, "alice", "s3cret", &a, &done);
	submit(f, "alice", "s3cret", &b, &done);
	submit(f, "alice", "s3cret", &c, &done);
	a.cancel = &b.job;
	b.cancel = &a.job;   /* whichever comes first cancels the other */
	a.resubmit = &again;
	b.resubmit = &again;
	memset(&again, 0, sizeof again);
	again.f = f;
	again.done = &done;
	run_until(f, &done, 3);   /* a or b, c, again */
	assert_int_equal(a.calls + b.calls, 1);
	assert_int_equal(c.calls, 1);
	assert_int_equal(again.calls, 1);
	assert_true(again.ok);
	/* Whatever is left is the cancelled one coming back. */
	while (verifier_pending(f->v) > 0)
		assert_int_not_equal(event_base_loop(f->base, EVLOOP_ONCE), -1);
	assert_int_equal(a.calls + b.calls, 1);
}

/* Freed with checks waiting and being hashed: no callback, and every
 * table reference is given back (ASan's leak check would see the table). */
static void test_free_with_checks_in_progress(void **state)
{
	struct fixture *f = *state;
	struct answer a[6];
	int done = 0;

	start(f, 2);
	for (size_t i = 0; i < 6; i++)
		submit(f, "alice", "s3cret", &a[i], &done);
	verifier_free(&f->v);
	assert_null(f->v);
	event_base_loop(f->base, EVLOOP_NONBLOCK);
	assert_int_equal(done, 0);
	verifier_free(&f->v);   /* NULL is ignored */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_answers, setup, teardown),
		cmocka_unit_test_setup_teardown(test_submit_does_not_hash, setup, teardown),
		cmocka_unit_test_setup_teardown(test_table_outlives_reload, setup, teardown),
		cmocka_unit_test_setup_teardown(test_queue_bound, setup, teardown),
		cmocka_unit_test_setup_teardown(test_cancel, setup, teardown),
		cmocka_unit_test_setup_teardown(test_cancel_and_submit_from_callback, setup, teardown),
		cmocka_unit_test_setup_teardown(test_free_with_checks_in_progress, setup, teardown),
	};

	evthread_use_pthreads();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
