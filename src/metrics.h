/*
 * metrics: the Prometheus / OpenMetrics endpoint (libevent's evhttp).
 *
 * Serves GET/HEAD /metrics on an optional listen address; any other path
 * is 404, any other method 405.  The text is the Prometheus exposition
 * format 0.0.4, or OpenMetrics 1.0 when the scraper's Accept header asks
 * for application/openmetrics-text.  Names follow the conventions:
 * "carrier_" prefix, counters end in "_total", units in names
 * ("_bytes", "_seconds"); queue gauges carry state="active|deferred|held";
 * next-hop families are carrier_next_hop_* with next_hop="<key>".
 *
 * Output is bounded: COUNTERS_HOPS hops at most, and METRICS_MAX_BYTES.
 * The endpoint is optional: a failure to listen is a METRICS_LISTEN_FAILED
 * warning and the daemon runs on.
 *
 * Threads: a struct metrics belongs to the thread running its event_base.
 * metrics_render() is pure and may run anywhere.
 */
#ifndef CARRIER_METRICS_H
#define CARRIER_METRICS_H

#include <stdbool.h>
#include <stddef.h>

#include "counters.h"

struct event_base;
struct evbuffer;
struct evlog;
struct metrics;

#define METRICS_MAX_BYTES (2 * 1024 * 1024)
#define METRICS_PATH "/metrics"

/*
 * Listens on `listen` ("127.0.0.1:9125", "[::1]:9125", port 0 = any free
 * port) on `base` and serves the counters of `c` (which must outlive the
 * metrics).  `log` may be NULL.  An empty or NULL `listen` means off:
 * returns NULL with err "".  On failure returns NULL with the reason in
 * err and emits METRICS_LISTEN_FAILED; on success emits METRICS_LISTENING.
 * Free with metrics_free().
 */
struct metrics *metrics_new(struct event_base *base, const char *listen,
			    struct counters *c, struct evlog *log,
			    char *err, size_t errlen);

/* Stops listening, closes connections, frees; clears *mp.  NULL is fine. */
void metrics_free(struct metrics **mp);

/* The port actually bound (useful with port 0). */
int metrics_port(const struct metrics *m);

/*
 * Appends the exposition text of `snap` to `out`: Prometheus text, or
 * OpenMetrics (with "# EOF") when `openmetrics`.  `now` (Unix seconds)
 * computes ages.  Returns 0, or -1 when the text would pass
 * METRICS_MAX_BYTES or on allocation failure (out then holds a prefix).
 */
int metrics_render(const struct counters_shm *snap, bool openmetrics, long long now,
		   struct evbuffer *out);

#endif
