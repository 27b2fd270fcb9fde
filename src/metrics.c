/*
 * metrics: /metrics over evhttp.  See metrics.h.  Owns its evhttp and the
 * listening socket; reads the counters with snapshots; never fails the
 * daemon.
 */
#include "metrics.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#define METRICS_TIMEOUT_S 10
#define METRICS_MAX_HEADERS 8192

struct metrics {
	struct evhttp *http;
	struct evhttp_bound_socket *bound;
	struct counters *ctr;
	struct evlog *log;
	int port;
};

/* ---- rendering ----------------------------------------------------------- */

struct render {
	struct evbuffer *out;
	bool om;                        /* OpenMetrics */
	int failed;
};

static void emit(struct render *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void emit(struct render *r, const char *fmt, ...)
{
	va_list ap;

	if (r->failed)
		return;
	if (evbuffer_get_length(r->out) > METRICS_MAX_BYTES) {
		r->failed = 1;
		return;
	}
	va_start(ap, fmt);
	if (evbuffer_add_vprintf(r->out, fmt, ap) < 0)
		r->failed = 1;
	va_end(ap);
}

/* A label value, escaped per the exposition formats: \\ \" \n; other
 * control bytes and non-ASCII bytes become '?' (keys are ASCII next hops). */
static void label_escape(char *buf, size_t size, const char *s)
{
	size_t o = 0;

	for (; *s && o + 3 < size; s++) {
		unsigned char ch = (unsigned char)*s;

		if (ch == '\\' || ch == '"') {
			buf[o++] = '\\';
			buf[o++] = (char)ch;
		} else if (ch == '\n') {
			buf[o++] = '\\';
			buf[o++] = 'n';
		} else {
			buf[o++] = ch < 0x20 || ch >= 0x7f ? '?' : (char)ch;
		}
	}
	buf[o] = '\0';
}

/* "# HELP" and "# TYPE" of a family.  Counters: OpenMetrics names the
 * family without "_total", Prometheus text with it. */
static void family_header(struct render *r, const char *name, enum counters_kind kind,
			  const char *help)
{
	const char *sfx = kind == COUNTERS_COUNTER && !r->om ? "_total" :
			  kind == COUNTERS_TIME ? "_timestamp_seconds" : "";
	const char *type = kind == COUNTERS_COUNTER ? "counter" : "gauge";

	emit(r, "# HELP carrier_%s%s %s.\n", name, sfx, help);
	emit(r, "# TYPE carrier_%s%s %s\n", name, sfx, type);
}

static const char *sample_suffix(enum counters_kind kind)
{
	return kind == COUNTERS_COUNTER ? "_total" : kind == COUNTERS_TIME ? "_timestamp_seconds" : "";
}

static void render_globals(struct render *r, const struct counters_shm *s)
{
	for (int i = 0; i < COUNTERS_N; i++) {
		const char *fam = counters_family(i), *state = counters_state(i);
		enum counters_kind kind = counters_kind_of(i);

		if (i == 0 || strcmp(fam, counters_family(i - 1)))
			family_header(r, fam, kind, counters_help(i));
		if (*state)
			emit(r, "carrier_%s%s{state=\"%s\"} %" PRId64 "\n", fam,
			     sample_suffix(kind), state, s->v[i]);
		else
			emit(r, "carrier_%s%s %" PRId64 "\n", fam, sample_suffix(kind), s->v[i]);
	}
	family_header(r, "start_time_seconds", COUNTERS_GAUGE, "Unix time carrierd started");
	emit(r, "carrier_start_time_seconds %" PRId64 "\n", s->started);
}

static void render_hops(struct render *r, const struct counters_shm *s, long long now)
{
	char (*labels)[COUNTERS_HOP_KEY_MAX * 2 + 1] = malloc(COUNTERS_HOPS * sizeof *labels);
	char name[96];

	if (labels == NULL) {
		r->failed = 1;
		return;
	}
	for (size_t i = 0; i < COUNTERS_HOPS; i++)
		if (s->hops[i].state == COUNTERS_HOP_USED)
			label_escape(labels[i], sizeof labels[i], s->hops[i].key);
	for (int f = 0; f < COUNTERS_HOP_N; f++) {
		enum counters_kind kind = counters_hop_field_kind(f);

		if (f == HOP_LAST_USED)
			continue;       /* bookkeeping, not a metric */
		snprintf(name, sizeof name, "next_hop_%s", counters_hop_field_name(f));
		family_header(r, name, kind, counters_hop_field_help(f));
		for (size_t i = 0; i < COUNTERS_HOPS; i++)
			if (s->hops[i].state == COUNTERS_HOP_USED)
				emit(r, "carrier_%s%s{next_hop=\"%s\"} %" PRId64 "\n", name,
				     sample_suffix(kind), labels[i], s->hops[i].f[f]);
	}
	family_header(r, "next_hop_oldest_age_seconds", COUNTERS_GAUGE,
		      "Age of the oldest message queued for the next hop (0 = none)");
	for (size_t i = 0; i < COUNTERS_HOPS; i++) {
		int64_t t = s->hops[i].f[HOP_OLDEST];

		if (s->hops[i].state == COUNTERS_HOP_USED)
			emit(r, "carrier_next_hop_oldest_age_seconds{next_hop=\"%s\"} %lld\n",
			     labels[i], t > 0 && now > t ? now - (long long)t : 0LL);
	}
	free(labels);
}

int metrics_render(const struct counters_shm *snap, bool openmetrics, long long now,
		   struct evbuffer *out)
{
	struct render r = { out, openmetrics, 0 };

	render_globals(&r, snap);
	render_hops(&r, snap, now);
	if (openmetrics)
		emit(&r, "# EOF\n");
	return r.failed ? -1 : 0;
}

/* ---- serving ---------------------------------------------------------------- */

static bool wants_openmetrics(struct evhttp_request *req)
{
	const char *accept = evhttp_find_header(evhttp_request_get_input_headers(req), "Accept");

	return accept != NULL && strstr(accept, "application/openmetrics-text") != NULL;
}

static void metrics_serve(struct metrics *m, struct evhttp_request *req)
{
	struct counters_shm *snap = malloc(sizeof *snap);
	struct evbuffer *body = evbuffer_new();
	bool om = wants_openmetrics(req);

	if (snap == NULL || body == NULL) {
		evhttp_send_error(req, HTTP_INTERNAL, "out of memory");
		goto out;
	}
	counters_snapshot(counters_block(m->ctr), snap);
	if (metrics_render(snap, om, (long long)time(NULL), body) < 0) {
		evhttp_send_error(req, HTTP_INTERNAL, "metrics too large or out of memory");
		goto out;
	}
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
			  om ? "application/openmetrics-text; version=1.0.0; charset=utf-8" :
			       "text/plain; version=0.0.4; charset=utf-8");
	evhttp_add_header(evhttp_request_get_output_headers(req), "Cache-Control", "no-store");
	evhttp_send_reply(req, HTTP_OK, "OK", body);
out:
	if (body)
		evbuffer_free(body);
	free(snap);
}

static void metrics_request(struct evhttp_request *req, void *arg)
{
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = uri ? evhttp_uri_get_path(uri) : NULL;

	enum evhttp_cmd_type cmd = evhttp_request_get_command(req);

	if (path == NULL || strcmp(path, METRICS_PATH) != 0) {
		evhttp_send_error(req, HTTP_NOTFOUND, "only " METRICS_PATH " is served here");
		return;
	}
	if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
		evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD");
		evhttp_send_error(req, HTTP_BADMETHOD, "only GET and HEAD");
		return;
	}
	metrics_serve(arg, req);
}

/* "host:port" or "[v6]:port" -> host (no brackets) and port. */
static int split_listen(const char *listen, char *host, size_t hostlen, unsigned *port,
			char *err, size_t errlen)
{
	const char *colon, *h = listen, *hend;
	char *end;
	unsigned long p;

	if (*listen == '[') {
		hend = strchr(listen, ']');
		if (hend == NULL || hend[1] != ':') {
			snprintf(err, errlen, "\"%s\" is not [address]:port", listen);
			return -1;
		}
		h = listen + 1;
		colon = hend + 1;
	} else {
		colon = strrchr(listen, ':');
		hend = colon;
		if (colon == NULL || memchr(listen, ':', (size_t)(colon - listen))) {
			snprintf(err, errlen, "\"%s\" is not host:port (IPv6 goes in brackets)", listen);
			return -1;
		}
	}
	errno = 0;
	p = strtoul(colon + 1, &end, 10);
	if (colon[1] == '\0' || *end || errno || p > 65535 || hend == h ||
	    (size_t)(hend - h) >= hostlen) {
		snprintf(err, errlen, "\"%s\" is not host:port with a port 0-65535", listen);
		return -1;
	}
	memcpy(host, h, (size_t)(hend - h));
	host[hend - h] = '\0';
	*port = (unsigned)p;
	return 0;
}

static int bound_port(struct evhttp_bound_socket *b)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof ss;

	if (getsockname(evhttp_bound_socket_get_fd(b), (struct sockaddr *)&ss, &len) < 0)
		return -1;
	if (ss.ss_family == AF_INET)
		return ntohs(((struct sockaddr_in *)&ss)->sin_port);
	if (ss.ss_family == AF_INET6)
		return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
	return -1;
}

static struct metrics *metrics_fail(struct metrics *m, struct evlog *log, const char *listen,
				    char *err)
{
	evlog_emit(log, EV_METRICS_LISTEN_FAILED, EVF_S("address", listen), EVF_S("reason", err));
	metrics_free(&m);
	return NULL;
}

struct metrics *metrics_new(struct event_base *base, const char *listen,
			    struct counters *c, struct evlog *log,
			    char *err, size_t errlen)
{
	struct metrics *m;
	char host[128], addr[160];
	unsigned port;

	if (errlen)
		err[0] = '\0';
	if (listen == NULL || *listen == '\0')
		return NULL;
	if (split_listen(listen, host, sizeof host, &port, err, errlen) < 0)
		return metrics_fail(NULL, log, listen, err);
	if ((m = calloc(1, sizeof *m)) == NULL || (m->http = evhttp_new(base)) == NULL) {
		snprintf(err, errlen, "out of memory");
		return metrics_fail(m, log, listen, err);
	}
	m->ctr = c;
	m->log = log;
	/* Let the common methods reach us, to answer 405 (libevent says 501). */
	evhttp_set_allowed_methods(m->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST |
				   EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS |
				   EVHTTP_REQ_PATCH);
	evhttp_set_timeout(m->http, METRICS_TIMEOUT_S);
	evhttp_set_max_headers_size(m->http, METRICS_MAX_HEADERS);
	evhttp_set_max_body_size(m->http, 0);
	evhttp_set_gencb(m->http, metrics_request, m);
	errno = 0;
	m->bound = evhttp_bind_socket_with_handle(m->http, host, (ev_uint16_t)port);
	if (m->bound == NULL) {
		snprintf(err, errlen, "bind %s: %s", listen,
			 errno ? strerror(errno) : "address not usable");
		return metrics_fail(m, log, listen, err);
	}
	m->port = bound_port(m->bound);
	snprintf(addr, sizeof addr, strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, m->port);
	evlog_emit(log, EV_METRICS_LISTENING, EVF_S("address", addr));
	return m;
}

void metrics_free(struct metrics **mp)
{
	struct metrics *m = *mp;

	if (m == NULL)
		return;
	if (m->http)
		evhttp_free(m->http);
	free(m);
	*mp = NULL;
}

int metrics_port(const struct metrics *m)
{
	return m ? m->port : -1;
}
