/*
 * schedule: the retry policy (see sched.h).  Pure functions of their inputs.
 */
#include "schedule.h"

#include "spool.h"

void schedule_rand_seed(uint64_t *state, uint64_t seed)
{
	/* splitmix64 step: spreads any seed, and xorshift needs nonzero. */
	uint64_t z = seed + 0x9e3779b97f4a7c15ull;

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	z ^= z >> 31;
	*state = z ? z : 0x2545f4914f6cdd1dull;
}

uint64_t schedule_rand_next(uint64_t *state)
{
	uint64_t x = *state ? *state : 0x2545f4914f6cdd1dull;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*state = x;
	return x * 0x2545f4914f6cdd1dull;
}

int64_t schedule_delay(const struct schedule_policy *p, uint32_t attempts, uint64_t *rnd)
{
	int64_t base = 60, j, d;

	if (p->n > 0)
		base = p->schedule[attempts < p->n ? attempts : p->n - 1];
	if (base < 1)
		base = 1;
	j = base / SCHEDULE_JITTER_DIV;
	d = base;
	if (j > 0)
		d = base - j + (int64_t)(schedule_rand_next(rnd) % (uint64_t)(2 * j + 1));
	return d < 1 ? 1 : d;
}

int64_t schedule_expiry(const struct schedule_policy *p, int64_t arrival)
{
	return arrival + p->lifetime;
}

bool schedule_expired(const struct schedule_policy *p, int64_t arrival, int64_t now)
{
	return now >= schedule_expiry(p, arrival);
}

enum schedule_verdict schedule_temp_failure(const struct schedule_policy *p, int64_t arrival,
				      uint32_t attempts, int64_t now, uint64_t *rnd,
				      int64_t *next_r)
{
	int64_t next, exp = schedule_expiry(p, arrival);

	if (now >= exp)
		return SCHEDULE_EXPIRE;
	next = now + schedule_delay(p, attempts, rnd);
	*next_r = next > exp ? exp : next;
	return SCHEDULE_RETRY;
}

bool schedule_delay_warning_due(const struct schedule_policy *p, int64_t arrival,
			     int64_t now, unsigned notify, bool warned,
			     bool null_sender)
{
	if (p->delay_warning <= 0 || warned || null_sender)
		return false;
	if (notify & SPOOL_NOTIFY_NEVER)
		return false;
	if (notify != 0 && !(notify & SPOOL_NOTIFY_DELAY))
		return false;
	return now >= arrival + p->delay_warning;
}

unsigned schedule_hop_limit(size_t backlog, unsigned max)
{
	size_t n = (backlog + SCHEDULE_MSGS_PER_CONN - 1) / SCHEDULE_MSGS_PER_CONN;

	if (max < 1)
		max = 1;
	if (n < 1)
		n = 1;
	return n > max ? max : (unsigned)n;
}
