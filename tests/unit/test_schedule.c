/* Unit tests for schedule: backoff with jitter, expiry, delay warning
 * once, per-hop concurrency. */
#include "test_util.h"

#include "schedule.h"
#include "spool.h"

static const unsigned steps[] = { 60, 300, 900, 3600 };
static const struct schedule_policy pol = {
	.schedule = steps, .n = 4, .lifetime = 5 * 86400, .delay_warning = 4 * 3600,
};

static void test_schedule_steps_and_jitter_bounds(void **state)
{
	uint64_t rnd;

	schedule_rand_seed(&rnd, 42);
	for (uint32_t attempts = 0; attempts < 10; attempts++) {
		int64_t base = steps[attempts < 4 ? attempts : 3];
		int64_t lo = base - base / 10, hi = base + base / 10;
		bool seen_lo = false, seen_hi = false;

		for (int k = 0; k < 2000; k++) {
			int64_t d = schedule_delay(&pol, attempts, &rnd);

			if (d < lo || d > hi)
				fail_msg("attempts %u: delay %lld outside [%lld, %lld]",
					 attempts, (long long)d, (long long)lo, (long long)hi);
			seen_lo |= d < base;
			seen_hi |= d > base;
		}
		/* The jitter goes both ways. */
		assert_true(seen_lo);
		assert_true(seen_hi);
	}
}

static void test_schedule_seed_reproducible(void **state)
{
	uint64_t a, b;

	schedule_rand_seed(&a, 7);
	schedule_rand_seed(&b, 7);
	for (int k = 0; k < 100; k++)
		assert_int_equal(schedule_delay(&pol, 2, &a), schedule_delay(&pol, 2, &b));
	schedule_rand_seed(&b, 8);
	{
		bool differ = false;

		for (int k = 0; k < 100; k++)
			differ |= schedule_delay(&pol, 2, &a) != schedule_delay(&pol, 2, &b);
		assert_true(differ);
	}
}

static void test_schedule_short_steps(void **state)
{
	static const unsigned one[] = { 1 };
	struct schedule_policy p = { .schedule = one, .n = 1, .lifetime = 3 };
	uint64_t rnd;

	schedule_rand_seed(&rnd, 0);
	/* 1 s has no room for jitter and never becomes 0. */
	for (int k = 0; k < 100; k++)
		assert_int_equal(schedule_delay(&p, (uint32_t)k, &rnd), 1);
	p.n = 0;   /* empty schedule: 60 s */
	assert_in_range(schedule_delay(&p, 0, &rnd), 54, 66);
}

static void test_schedule_expiry(void **state)
{
	uint64_t rnd;
	int64_t next = 0, arrival = 1000000;

	schedule_rand_seed(&rnd, 1);
	assert_false(schedule_expired(&pol, arrival, arrival + 5 * 86400 - 1));
	assert_true(schedule_expired(&pol, arrival, arrival + 5 * 86400));
	assert_int_equal(schedule_temp_failure(&pol, arrival, 0, arrival + 10, &rnd, &next),
			 SCHEDULE_RETRY);
	assert_in_range(next, arrival + 10 + 54, arrival + 10 + 66);
	/* The last retry is brought forward to the expiry time. */
	assert_int_equal(schedule_temp_failure(&pol, arrival, 9, arrival + 5 * 86400 - 100,
					       &rnd, &next), SCHEDULE_RETRY);
	assert_int_equal(next, arrival + 5 * 86400);
	assert_int_equal(schedule_temp_failure(&pol, arrival, 9, arrival + 5 * 86400, &rnd, &next),
			 SCHEDULE_EXPIRE);
}

static void test_schedule_delay_warning_once(void **state)
{
	int64_t a = 5000, late = a + 4 * 3600;
	struct schedule_policy off = pol;

	assert_false(schedule_delay_warning_due(&pol, a, late - 1, 0, false, false));
	assert_true(schedule_delay_warning_due(&pol, a, late, 0, false, false));
	/* Once: not after it was sent. */
	assert_false(schedule_delay_warning_due(&pol, a, late + 10, 0, true, false));
	/* NOTIFY: DELAY allows, FAILURE alone or NEVER does not. */
	assert_true(schedule_delay_warning_due(&pol, a, late, SPOOL_NOTIFY_DELAY, false, false));
	assert_true(schedule_delay_warning_due(&pol, a, late,
					       SPOOL_NOTIFY_DELAY | SPOOL_NOTIFY_FAILURE, false, false));
	assert_false(schedule_delay_warning_due(&pol, a, late, SPOOL_NOTIFY_FAILURE, false, false));
	assert_false(schedule_delay_warning_due(&pol, a, late, SPOOL_NOTIFY_NEVER, false, false));
	/* Never to the null sender; never when switched off. */
	assert_false(schedule_delay_warning_due(&pol, a, late, 0, false, true));
	off.delay_warning = 0;
	assert_false(schedule_delay_warning_due(&off, a, late * 10, 0, false, false));
}

static void test_schedule_hop_limit(void **state)
{
	assert_int_equal(schedule_hop_limit(0, 20), 1);
	assert_int_equal(schedule_hop_limit(1, 20), 1);
	assert_int_equal(schedule_hop_limit(SCHEDULE_MSGS_PER_CONN, 20), 1);
	assert_int_equal(schedule_hop_limit(SCHEDULE_MSGS_PER_CONN + 1, 20), 2);
	assert_int_equal(schedule_hop_limit(10 * SCHEDULE_MSGS_PER_CONN, 20), 10);
	assert_int_equal(schedule_hop_limit(1000000, 20), 20);
	assert_int_equal(schedule_hop_limit(1000000, 0), 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_schedule_steps_and_jitter_bounds),
		cmocka_unit_test(test_schedule_seed_reproducible),
		cmocka_unit_test(test_schedule_short_steps),
		cmocka_unit_test(test_schedule_expiry),
		cmocka_unit_test(test_schedule_delay_warning_once),
		cmocka_unit_test(test_schedule_hop_limit),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
