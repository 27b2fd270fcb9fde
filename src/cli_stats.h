/*
 * cli_stats: what `carrier stats` and `carrier top` share: getting a
 * counters snapshot from shared memory or, failing that, from the daemon
 * over the control socket, and formatting helpers.
 */
#ifndef CARRIER_CLI_STATS_H
#define CARRIER_CLI_STATS_H

#include <stddef.h>
#include <stdio.h>

#include "conf.h"
#include "counters.h"

#define STATS_EXIT_OK 0
#define STATS_EXIT_ERROR 1
#define STATS_EXIT_USAGE 2
#define STATS_EXIT_NOT_RUNNING 3

enum stats_source {
	STATS_FROM_SHM,                 /* read straight from shared memory */
	STATS_FROM_CONTROL,             /* asked the daemon (`stats`) */
	STATS_FROM_STALE_SHM,           /* the block of a daemon no longer running */
};

struct stats_origin {
	enum stats_source source;
	int shared;                     /* the daemon counts in shared memory */
	char note[512];                 /* a sentence for the reader, or "" */
};

/*
 * Fills *snap (large: allocate it) with the daemon's counters.  Tries the
 * shared memory object conf->shm_name; when it is missing, unreadable or
 * left by a dead daemon, asks over conf->control_socket.  Returns
 * STATS_EXIT_OK, or STATS_EXIT_NOT_RUNNING / STATS_EXIT_ERROR with err a
 * sentence.
 */
int stats_load(const struct carrier_conf *conf, struct counters_shm *snap,
	       struct stats_origin *origin, char *err, size_t errlen);


/* Formatting helpers; each writes into buf and returns it. */
const char *stats_fmt_bytes(char *buf, size_t size, long long n);   /* "1.5M" */
const char *stats_fmt_age(char *buf, size_t size, long long secs);  /* "3h12m" */
/* Prints s with control bytes as '?', padded/truncated to `width` (0 =
 * as is). */
void stats_print_safe(FILE *out, const char *s, int width);

/* Next hops in use, sorted: by queue length (desc), age (oldest first) or
 * failures (desc); ties by key.  Writes up to COUNTERS_HOPS indexes into
 * idx; returns how many. */
enum stats_sort { STATS_SORT_QUEUE, STATS_SORT_AGE, STATS_SORT_FAILURES };
size_t stats_sorted_hops(const struct counters_shm *s, enum stats_sort by, size_t *idx);

#endif
