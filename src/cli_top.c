/*
 * cli_top: `carrier top`, a live view of the next hops.
 *
 *   carrier top [-c FILE] [--sort queue|age|failures] [--interval S] [--once]
 *
 * Takes a counters snapshot every interval (shared memory, or the control
 * socket when the counters are private; see cli_stats.h) and redraws: a
 * header with message rates, then one row per next hop with its queue,
 * oldest message, connections, failures and delivery rates computed from
 * the difference between the last two snapshots.  `--once` takes two
 * snapshots one interval apart, prints one frame without clearing the
 * screen, and exits (scripts, tests).
 *
 * Exit status as `carrier stats`.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/select.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "cli_stats.h"

struct top_opts {
	const char *config;
	enum stats_sort sort;
	double interval;
	int once;
};

static void top_usage(FILE *out)
{
	fprintf(out,
		"usage: carrier top [-c FILE] [--sort queue|age|failures] [--interval S] [--once]\n"
		"\n"
		"A live view of carrierd's next hops, refreshed every interval: queue\n"
		"length and bytes, oldest message, connections, failures with the last\n"
		"reason, next retry, and delivery rates.  Ctrl-C (or q, Enter) quits.\n"
		"\n"
		"  -c FILE        configuration file (default: the embedded development one)\n"
		"  --sort KEY     queue (default: longest queue first), age (oldest message\n"
		"                 first) or failures (most failed connections first)\n"
		"  --interval S   seconds between refreshes (default 2; fractions allowed)\n"
		"  --once         print one frame (rates over one interval) and exit\n");
}

static int top_args(int argc, char **argv, struct top_opts *o)
{
	memset(o, 0, sizeof *o);
	o->interval = 2.0;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];

		if (!strcmp(a, "-h") || !strcmp(a, "--help"))
			return 1;
		if (!strcmp(a, "--once")) {
			o->once = 1;
			continue;
		}
		if (strcmp(a, "-c") && strcmp(a, "--config") && strcmp(a, "--sort") &&
		    strcmp(a, "--interval")) {
			fprintf(stderr, "carrier top: unknown option '%s'\n", a);
			return -1;
		}
		if (i + 1 >= argc) {
			fprintf(stderr, "carrier top: %s needs a value\n", a);
			return -1;
		}
		const char *v = argv[++i];

		if (!strcmp(a, "--sort")) {
			if (!strcmp(v, "queue"))
				o->sort = STATS_SORT_QUEUE;
			else if (!strcmp(v, "age"))
				o->sort = STATS_SORT_AGE;
			else if (!strcmp(v, "failures"))
				o->sort = STATS_SORT_FAILURES;
			else {
				fprintf(stderr, "carrier top: --sort takes queue, age or failures, not '%s'\n", v);
				return -1;
			}
		} else if (!strcmp(a, "--interval")) {
			char *end;

			errno = 0;
			o->interval = strtod(v, &end);
			if (errno || *end || end == v || !(o->interval >= 0.05 && o->interval <= 3600)) {
				fprintf(stderr, "carrier top: --interval takes seconds from 0.05 to 3600, not '%s'\n", v);
				return -1;
			}
		} else {
			o->config = v;
		}
	}
	return 0;
}

static double now_mono(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Rate of a counter between two snapshots; 0 when it went backwards (a
 * restarted daemon). */
static double rate(int64_t now_v, int64_t prev_v, double dt)
{
	return dt > 0 && now_v >= prev_v ? (double)(now_v - prev_v) / dt : 0.0;
}

/* The previous snapshot's slot of `key` (slots may differ after a restart
 * or over the control socket). */
static const struct counters_hop *prev_hop(const struct counters_shm *prev, size_t i,
					   const char *key)
{
	if (prev->hops[i].state == COUNTERS_HOP_USED && !strcmp(prev->hops[i].key, key))
		return &prev->hops[i];
	for (size_t k = 0; k < COUNTERS_HOPS; k++)
		if (prev->hops[k].state == COUNTERS_HOP_USED && !strcmp(prev->hops[k].key, key))
			return &prev->hops[k];
	return NULL;
}

static int term_rows(void)
{
	struct winsize ws;

	if (isatty(STDOUT_FILENO) && ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_row > 6)
		return ws.ws_row;
	return 0;
}

static void print_header(FILE *out, const struct counters_shm *cur, const struct counters_shm *prev,
			 double dt, const struct stats_origin *origin, const struct top_opts *o)
{
	static const char *const sorts[] = { "queue", "age", "failures" };
	long long now = (long long)time(NULL);
	int64_t q = cur->v[COUNTER_QUEUE_ACTIVE_MSGS] + cur->v[COUNTER_QUEUE_DEFERRED_MSGS] +
		    cur->v[COUNTER_QUEUE_HELD_MSGS];
	char up[32], tbuf[32];
	struct tm tm;
	time_t t = (time_t)now;

	localtime_r(&t, &tm);
	strftime(tbuf, sizeof tbuf, "%H:%M:%S", &tm);
	fprintf(out, "carrier top  %s  pid %d  up %s  sorted by %s  every %.2gs\n", tbuf,
		(int)cur->pid, stats_fmt_age(up, sizeof up, now - cur->started), sorts[o->sort],
		o->interval);
	if (origin->note[0])
		fprintf(out, "note: %s\n", origin->note);
	fprintf(out, "in: %" PRId64 " conns (%.1f/s), %.1f msg/s   out: %" PRId64
		" conns, %.1f delivered/s, %.1f deferred/s, %.1f bounced/s   queue: %" PRId64 " (%"
		PRId64 " deferred, %" PRId64 " held)\n\n",
		cur->v[COUNTER_CONN_IN_CURRENT],
		rate(cur->v[COUNTER_CONN_IN_TOTAL], prev->v[COUNTER_CONN_IN_TOTAL], dt),
		rate(cur->v[COUNTER_MSG_RECEIVED], prev->v[COUNTER_MSG_RECEIVED], dt),
		cur->v[COUNTER_CONN_OUT_CURRENT],
		rate(cur->v[COUNTER_MSG_DELIVERED], prev->v[COUNTER_MSG_DELIVERED], dt),
		rate(cur->v[COUNTER_MSG_DEFERRED], prev->v[COUNTER_MSG_DEFERRED], dt),
		rate(cur->v[COUNTER_MSG_BOUNCED], prev->v[COUNTER_MSG_BOUNCED], dt), q,
		cur->v[COUNTER_QUEUE_DEFERRED_MSGS], cur->v[COUNTER_QUEUE_HELD_MSGS]);
}

static void print_frame(FILE *out, const struct counters_shm *cur, const struct counters_shm *prev,
			double dt, const struct stats_origin *origin, const struct top_opts *o)
{
	size_t idx[COUNTERS_HOPS], n = stats_sorted_hops(cur, o->sort, idx);
	long long now = (long long)time(NULL);
	int rows = term_rows();
	char b1[32], b2[32], b3[32], b4[32];

	print_header(out, cur, prev, dt, origin, o);
	fprintf(out, "%-32s %6s %7s %7s %4s %6s %7s %7s %8s %8s  %s\n", "NEXT HOP", "QUEUE", "BYTES",
		"OLDEST", "ACT", "FAILED", "DELIV/s", "DEFER/s", "OUT/s", "RETRY", "LAST FAILURE");
	if (n == 0)
		fprintf(out, "(no next hop used yet)\n");
	for (size_t k = 0; k < n; k++) {
		const struct counters_hop *h = &cur->hops[idx[k]];
		const struct counters_hop *p = prev_hop(prev, idx[k], h->key);
		int64_t oldest = h->f[HOP_OLDEST], retry = h->f[HOP_NEXT_RETRY];

		if (rows && (int)k >= rows - 7) {
			fprintf(out, "... %zu more\n", n - k);
			break;
		}
		stats_print_safe(out, h->key, 32);
		fprintf(out, " %6" PRId64 " %7s %7s %4" PRId64 " %6" PRId64 " %7.1f %7.1f %8s %8s  ",
			h->f[HOP_QUEUE_MSGS], stats_fmt_bytes(b1, sizeof b1, h->f[HOP_QUEUE_BYTES]),
			oldest > 0 ? stats_fmt_age(b2, sizeof b2, now - oldest) : "-",
			h->f[HOP_CONN_ACTIVE], h->f[HOP_CONN_FAILED],
			p ? rate(h->f[HOP_MSG_OUT], p->f[HOP_MSG_OUT], dt) : 0.0,
			p ? rate(h->f[HOP_MSG_DEFERRED], p->f[HOP_MSG_DEFERRED], dt) : 0.0,
			stats_fmt_bytes(b3, sizeof b3,
					p ? (long long)rate(h->f[HOP_BYTES_OUT], p->f[HOP_BYTES_OUT], dt) : 0),
			retry <= 0 ? "-" : retry <= now ? "now" : stats_fmt_age(b4, sizeof b4, retry - now));
		stats_print_safe(out, h->reason[0] ? h->reason : "-", 0);
		fputc('\n', out);
	}
}

/* Sleeps `secs`, returning early (1) when the user typed q on a terminal. */
static int wait_or_quit(double secs)
{
	struct timespec ts = { (time_t)secs, (long)((secs - (double)(time_t)secs) * 1e9) };

	if (isatty(STDIN_FILENO)) {
		fd_set rd;
		struct timeval tv = { ts.tv_sec, ts.tv_nsec / 1000 };
		char c;

		FD_ZERO(&rd);
		FD_SET(STDIN_FILENO, &rd);
		if (select(STDIN_FILENO + 1, &rd, NULL, NULL, &tv) > 0 &&
		    read(STDIN_FILENO, &c, 1) == 1 && (c == 'q' || c == 'Q'))
			return 1;
		return 0;
	}
	nanosleep(&ts, NULL);
	return 0;
}

static int top_run(const struct carrier_conf *conf, const struct top_opts *o,
		   struct counters_shm *cur, struct counters_shm *prev)
{
	struct stats_origin origin;
	char err[1024];
	double t_prev, t_cur;
	int rc = stats_load(conf, prev, &origin, err, sizeof err);

	t_prev = now_mono();
	while (rc == STATS_EXIT_OK) {
		if (wait_or_quit(o->interval))
			break;
		rc = stats_load(conf, cur, &origin, err, sizeof err);
		if (rc != STATS_EXIT_OK)
			break;
		t_cur = now_mono();
		if (!o->once)
			fputs("\033[H\033[2J", stdout);
		print_frame(stdout, cur, prev, t_cur - t_prev, &origin, o);
		fflush(stdout);
		if (o->once)
			return STATS_EXIT_OK;
		memcpy(prev, cur, sizeof *cur);
		t_prev = t_cur;
	}
	if (rc != STATS_EXIT_OK)
		fprintf(stderr, "carrier top: %s\n", err);
	return rc;
}

int cli_top_main(int argc, char **argv)
{
	struct top_opts o;
	struct carrier_conf *conf;
	struct counters_shm *cur, *prev;
	int rc = top_args(argc, argv, &o);

	if (rc) {
		top_usage(rc > 0 ? stdout : stderr);
		return rc > 0 ? 0 : STATS_EXIT_USAGE;
	}
	if ((conf = cli_load_conf("carrier top", o.config)) == NULL)
		return STATS_EXIT_ERROR;
	cur = malloc(sizeof *cur);
	prev = malloc(sizeof *prev);
	if (cur == NULL || prev == NULL) {
		fprintf(stderr, "carrier top: out of memory\n");
		rc = STATS_EXIT_ERROR;
	} else {
		rc = top_run(conf, &o, cur, prev);
	}
	free(cur);
	free(prev);
	conf_free(&conf);
	return rc;
}
