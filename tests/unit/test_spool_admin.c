/*
 * Unit tests for the spool's administrative changes (spool_admin.c):
 * hold and release (a held message is not pending, and stays held across
 * a reopen), retry now, fail, delete of a pending message (inline and file
 * bodies), absent and repeated changes, spool_foreach() seeing held
 * messages, and the stepwise walk (spool_foreach_step) meeting each message
 * once across steps while messages come and go.  Each test uses its own
 * mkdtemp spool.
 */
#include <ftw.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "test_util.h"

#include "spool.h"

static int setup(void **state)
{
	*state = test_dir_new("spadm", "spool");
	return 0;
}

static int teardown(void **state)
{
	test_dir_free(*state);
	return 0;
}

static struct spool *open_spool(const char *path)
{
	struct spool_opts o;
	char err[512] = "";
	struct spool *sp;

	spool_opts_init(&o);
	o.space_margin = 0;
	o.inline_max = 1024;
	sp = spool_open(path, &o, NULL, err, sizeof err);
	if (sp == NULL)
		fail_msg("spool_open %s: %s", path, err);
	return sp;
}

/* Commits a message with two recipients and `size` body bytes. */
static void queue_msg(struct spool *sp, size_t size, char qid[SPOOL_QID_SIZE])
{
	char err[256], chunk[512];
	struct spool_msg *m = spool_msg_new(sp, err, sizeof err);

	assert_non_null(m);
	assert_int_equal(spool_msg_set_sender(m, "alice@example.org"), 0);
	assert_int_equal(spool_msg_add_rcpt(m, "a@example.net", 0, NULL), 0);
	assert_int_equal(spool_msg_add_rcpt(m, "b@example.net", 0, NULL), 0);
	memset(chunk, 'x', sizeof chunk);
	for (size_t off = 0; off < size; off += sizeof chunk)
		assert_int_equal(spool_msg_append(m, chunk, size - off < sizeof chunk ?
						  size - off : sizeof chunk, err, sizeof err), 0);
	if (spool_commit(sp, &m, qid, err, sizeof err) != 0)
		fail_msg("commit: %s", err);
}

struct seen {
	int n;
	int held;
	char qids[8][SPOOL_QID_SIZE];
};

static int collect(void *arg, const struct spool_envelope *env)
{
	struct seen *s = arg;

	if (s->n < 8)
		memcpy(s->qids[s->n], env->qid, SPOOL_QID_SIZE);
	s->n++;
	s->held += env->held;
	return 0;
}

static struct seen pending(struct spool *sp)
{
	struct seen s = { 0 };
	char err[256];

	assert_int_equal(spool_foreach_pending(sp, collect, &s, err, sizeof err), 0);
	return s;
}

static struct seen all(struct spool *sp)
{
	struct seen s = { 0 };
	char err[256];

	assert_int_equal(spool_foreach(sp, collect, &s, err, sizeof err), 0);
	return s;
}

static int admin1(struct spool *sp, enum spool_admin_op op, const char *qid, int *res)
{
	const char *q[1] = { qid };
	char err[256] = "";
	int n = spool_admin(sp, op, q, 1, NULL, res, err, sizeof err);

	if (n < 0)
		fail_msg("spool_admin op %d on %s: %s", (int)op, qid, err);
	return n;
}

static void test_hold_release_survives_reopen(void **state)
{
	struct test_dir *f = *state;
	struct spool *sp = open_spool(f->path);
	char q1[SPOOL_QID_SIZE], q2[SPOOL_QID_SIZE];
	struct spool_envelope *env = NULL;
	char err[256];
	int res = -1;

	queue_msg(sp, 10, q1);
	queue_msg(sp, 10, q2);
	assert_int_equal(pending(sp).n, 2);

	assert_int_equal(admin1(sp, SPOOL_ADMIN_HOLD, q1, &res), 1);
	assert_int_equal(res, SPOOL_ADMIN_DONE);
	assert_int_equal(admin1(sp, SPOOL_ADMIN_HOLD, q1, &res), 0);
	assert_int_equal(res, SPOOL_ADMIN_NOOP);
	/* A held message is not retried. */
	assert_int_equal(admin1(sp, SPOOL_ADMIN_RETRY, q1, &res), 0);
	assert_int_equal(res, SPOOL_ADMIN_NOOP);
	{
		struct seen p = pending(sp), a = all(sp);

		assert_int_equal(p.n, 1);
		assert_string_equal(p.qids[0], q2);
		assert_int_equal(a.n, 2);
		assert_int_equal(a.held, 1);
	}
	spool_close(&sp);

	sp = open_spool(f->path);
	assert_int_equal(pending(sp).n, 1);
	assert_int_equal(spool_load(sp, q1, &env, err, sizeof err), 0);
	assert_true(env->held);
	spool_envelope_free(&env);
	/* A delivery result recorded while held keeps the hold. */
	assert_int_equal(spool_rcpt_update(sp, q1, 0, SPOOL_RCPT_DEFERRED, "451 later", 99,
					   err, sizeof err), 0);
	assert_int_equal(pending(sp).n, 1);

	assert_int_equal(admin1(sp, SPOOL_ADMIN_RELEASE, q1, &res), 1);
	assert_int_equal(res, SPOOL_ADMIN_DONE);
	assert_int_equal(pending(sp).n, 2);
	assert_int_equal(spool_load(sp, q1, &env, err, sizeof err), 0);
	assert_false(env->held);
	assert_int_equal(env->rcpts[0].state, SPOOL_RCPT_DEFERRED);
	assert_int_equal(env->rcpts[0].next_attempt, 99);
	spool_envelope_free(&env);
	spool_close(&sp);
}

static void test_retry_fail_delete(void **state)
{
	struct test_dir *f = *state;
	struct spool *sp = open_spool(f->path);
	char q1[SPOOL_QID_SIZE], q2[SPOOL_QID_SIZE], bodyfile[256];
	struct spool_envelope *env = NULL;
	const char *both[3];
	int res[3];
	char err[256];

	queue_msg(sp, 10, q1);
	queue_msg(sp, 4000, q2);          /* body in a file */
	assert_int_equal(spool_rcpt_update(sp, q1, 0, SPOOL_RCPT_DEFERRED, "451 x", 5000,
					   err, sizeof err), 0);
	assert_int_equal(admin1(sp, SPOOL_ADMIN_RETRY, q1, res), 1);
	assert_int_equal(spool_load(sp, q1, &env, err, sizeof err), 0);
	assert_int_equal(env->rcpts[0].next_attempt, 0);
	assert_int_equal(env->rcpts[0].attempts, 1);   /* a retry is no attempt */
	spool_envelope_free(&env);
	assert_int_equal(admin1(sp, SPOOL_ADMIN_RETRY, q1, res), 0);
	assert_int_equal(res[0], SPOOL_ADMIN_NOOP);

	assert_int_equal(admin1(sp, SPOOL_ADMIN_FAIL, q1, res), 1);
	assert_int_equal(spool_load(sp, q1, &env, err, sizeof err), 0);
	assert_int_equal(env->rcpts[1].state, SPOOL_RCPT_FAILED);
	assert_string_equal(env->rcpts[1].last_reply, "failed by administrator");
	spool_envelope_free(&env);
	assert_int_equal(pending(sp).n, 1);
	assert_int_equal(all(sp).n, 2);

	/* Delete a pending message with a body file, an absent qid, and q1. */
	snprintf(bodyfile, sizeof bodyfile, "%s/body/%s", f->path, q2);
	assert_int_equal(access(bodyfile, F_OK), 0);
	both[0] = q2;
	both[1] = "0000000000000000";
	both[2] = q1;
	assert_int_equal(spool_admin(sp, SPOOL_ADMIN_DELETE, both, 3, NULL, res,
				     err, sizeof err), 2);
	assert_int_equal(res[0], SPOOL_ADMIN_DONE);
	assert_int_equal(res[1], SPOOL_ADMIN_ABSENT);
	assert_int_equal(res[2], SPOOL_ADMIN_DONE);
	assert_int_equal(access(bodyfile, F_OK), -1);
	assert_int_equal(all(sp).n, 0);
	assert_int_equal(spool_load(sp, q2, &env, err, sizeof err), 1);
	spool_close(&sp);
}

/* A stepwise walk's callback: records qids in order. */
struct stepper {
	char qids[64][SPOOL_QID_SIZE];
	size_t n;
	size_t stop_at;              /* return 7 at this call (0: never) */
};

static int step_cb(void *arg, const struct spool_envelope *env)
{
	struct stepper *st = arg;

	assert_true(st->n < 64);
	memcpy(st->qids[st->n++], env->qid, SPOOL_QID_SIZE);
	return st->n == st->stop_at ? 7 : 0;
}

static void test_foreach_step(void **state)
{
	struct test_dir *f = *state;
	struct spool *sp = open_spool(f->path);
	char q[20][SPOOL_QID_SIZE], added[SPOOL_QID_SIZE], err[256];
	const char *victim[1];
	struct stepper st = { 0 };
	struct spool_walk w;
	size_t steps = 0;

	for (size_t i = 0; i < 20; i++)
		queue_msg(sp, 10, q[i]);
	/* Steps of 3 keys; after the first, one message comes and one goes:
	 * 20 - 1 + 1 messages, in order, each once, the new one at the end. */
	spool_walk_init(&w, NULL, 3);
	do {
		assert_int_equal(spool_foreach_step(sp, &w, step_cb, &st, err, sizeof err), 0);
		if (++steps == 1) {
			queue_msg(sp, 10, added);
			victim[0] = q[19];
			assert_int_equal(spool_admin(sp, SPOOL_ADMIN_DELETE, victim, 1, NULL, NULL,
						     err, sizeof err), 1);
		}
	} while (!w.done);
	assert_int_equal(st.n, 20);
	assert_true(steps >= 7);
	for (size_t i = 0; i < 19; i++)
		assert_string_equal(st.qids[i], q[i]);
	assert_string_equal(st.qids[19], added);

	/* From after a qid, no step bound; a stop value ends the step and the
	 * next one goes on after the message that stopped it. */
	memset(&st, 0, sizeof st);
	st.stop_at = 2;
	spool_walk_init(&w, q[9], 0);
	assert_int_equal(spool_foreach_step(sp, &w, step_cb, &st, err, sizeof err), 7);
	assert_string_equal(st.qids[0], q[10]);
	assert_string_equal(st.qids[1], q[11]);
	assert_int_equal(spool_foreach_step(sp, &w, step_cb, &st, err, sizeof err), 0);
	assert_true(w.done);
	assert_string_equal(st.qids[2], q[12]);
	assert_int_equal(st.n, 10);     /* q[10..18] and the one added */
	spool_close(&sp);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_hold_release_survives_reopen, setup, teardown),
		cmocka_unit_test_setup_teardown(test_retry_fail_delete, setup, teardown),
		cmocka_unit_test_setup_teardown(test_foreach_step, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
