/*
 * diag_baseline: the host's network configuration as a sorted list of text
 * lines, saved once (`carrier doctor --save-baseline`) and compared later
 * to report drift.  Part of the diag module.
 *
 * File format (stable, diffable, one fact per line, sorted bytewise; lines
 * starting with '#' and blank lines are ignored):
 *
 *   # carrier network baseline 1
 *   addr eth0 192.0.2.2/24
 *   hostname mx
 *   iface eth0 up
 *   resolver 127.0.0.53
 *   route4 0.0.0.0/0 via 192.0.2.1 dev eth0
 *   route6 fd00::/64 dev eth0
 *
 * Sources: getifaddrs (interfaces, their up/down state and addresses with
 * prefix), /proc/net/route and /proc/net/ipv6_route (without local, cache
 * and reject routes), the nameserver lines of resolv.conf, gethostname().
 * Drift is a warning: the host changed, which may be intended.
 * Threads: any; no state.
 */
#ifndef CARRIER_DIAG_BASELINE_H
#define CARRIER_DIAG_BASELINE_H

#include <stddef.h>

#include "diag.h"

#define DIAG_BASELINE_FILE "network.baseline"   /* under spool.path */
#define DIAG_RESOLV_CONF "/etc/resolv.conf"

/* A set of lines; zero-initialise, free with diag_baseline_clear(). */
struct diag_baseline {
	char **lines;
	size_t n, cap;
};

void diag_baseline_clear(struct diag_baseline *b);
/* Appends a printf-formatted line (copied).  0, or -1 when out of memory. */
int diag_baseline_add(struct diag_baseline *b, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* Sorts bytewise and drops duplicates. */
void diag_baseline_sort(struct diag_baseline *b);

/*
 * Records this host's network configuration into `b` (sorted).  The
 * resolvers come from `resolv_conf` (DIAG_RESOLV_CONF when NULL); when it
 * cannot be read, resolv_err gets the reason (else "") and no resolver is
 * recorded.  Returns 0, or -1 with the reason in resolv_err when out of
 * memory or getifaddrs fails.
 */
int diag_baseline_collect(struct diag_baseline *b, const char *resolv_conf,
			  char *resolv_err, size_t errlen);

/* Parses baseline text (as written by diag_baseline_format) into `b`
 * (sorted).  0, or -1 when out of memory. */
int diag_baseline_parse(const char *text, struct diag_baseline *b);
/* Returns the file text for `b` (header and one line per fact), malloc'd,
 * or NULL when out of memory. */
char *diag_baseline_format(const struct diag_baseline *b);
/* Writes `b` to `path` durably (temporary file, fsync, rename, fsync of the
 * directory), creating the directory (0700) if missing.  0 or -1 + err. */
int diag_baseline_save(const struct diag_baseline *b, const char *path,
		       char *err, size_t errlen);
/* Loads `path`.  0; 1 when it does not exist; -1 + err otherwise. */
int diag_baseline_load(const char *path, struct diag_baseline *b,
		       char *err, size_t errlen);

/* Drift messages, each a sentence such as
 * "address 10.1.2.3/24 on eth0: in baseline, now missing". */
struct diag_drift {
	char **v;
	size_t n, cap;
};
void diag_drift_clear(struct diag_drift *d);
/* Compares a baseline with the present (both sorted).  Order of messages:
 * host name, interfaces, addresses, routes, resolvers (one message for all
 * resolver changes: "resolver 192.0.2.53: new, 127.0.0.53: missing").
 * 0, or -1 when out of memory. */
int diag_baseline_diff(const struct diag_baseline *old, const struct diag_baseline *now,
		       struct diag_drift *d);

/*
 * doctor's checks.  diag_check_drift loads `path` and, when it exists,
 * reports each drift as a warning (event NET_DRIFT) or "no drift"; a
 * missing baseline is ok.  diag_save_baseline collects and saves; returns
 * 0, or DIAG_EXIT_BASELINE when it could not save (the report says why).
 * `resolv_conf` may be NULL (DIAG_RESOLV_CONF).
 */
void diag_check_drift(const char *path, const char *resolv_conf, struct evlog *log,
		      struct diag_report *rep);
int diag_save_baseline(const char *path, const char *resolv_conf, struct evlog *log,
		       struct diag_report *rep);

#endif
