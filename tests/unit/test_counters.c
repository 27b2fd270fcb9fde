/*
 * test_counters: the shared-memory counters (counters), the `stats`
 * control command and its reader (counters_ctl), and the metrics
 * endpoint (metrics) on its own libevent loop.
 *
 * Shared objects get unique names (/carrier-unit-<pid>-<n>) and are
 * removed by each test.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <regex.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "test_util.h"

#include "control.h"
#include "control_proto.h"
#include "counters.h"
#include "counters_ctl.h"
#include "metrics.h"

static void shm_name(char *buf, size_t size, const char *tag)
{
	snprintf(buf, size, "/carrier-unit-%d-%s", (int)getpid(), tag);
}

/* ---- shared memory ---------------------------------------------------------- */

static void test_shm_round_trip(void **state)
{
	char name[64], err[256];
	struct counters *c;
	struct counters_shm *snap = malloc(sizeof *snap);
	struct counters_hop *h;

	(void)state;
	shm_name(name, sizeof name, "rt");
	c = counters_open(name, NULL);
	assert_non_null(c);
	assert_true(counters_shared(c));
	assert_string_equal(counters_shm_name(c), name);
	counters_add(counters_block(c), COUNTER_MSG_RECEIVED, 3);
	counters_add(counters_block(c), COUNTER_CONN_IN_CURRENT, 2);
	counters_add(counters_block(c), COUNTER_CONN_IN_CURRENT, -1);
	h = counters_hop(c, "mx:example.com");
	counters_hop_queue(h, +1, 1000);
	counters_hop_set(h, HOP_OLDEST, 1700000000);
	counters_hop_set_failure(h, "connect 192.0.2.1:25: Connection refused", 1700000100);

	assert_int_equal(counters_attach(name, snap, err, sizeof err), COUNTERS_ATTACH_OK);
	assert_int_equal(snap->layout, COUNTERS_LAYOUT);
	assert_int_equal(snap->pid, getpid());
	assert_int_equal(snap->v[COUNTER_MSG_RECEIVED], 3);
	assert_int_equal(snap->v[COUNTER_CONN_IN_CURRENT], 1);
	assert_int_equal(snap->hops[h - counters_block(c)->hops].state, COUNTERS_HOP_USED);
	{
		const struct counters_hop *sh = &snap->hops[h - counters_block(c)->hops];

		assert_string_equal(sh->key, "mx:example.com");
		assert_int_equal(sh->f[HOP_QUEUE_MSGS], 1);
		assert_int_equal(sh->f[HOP_QUEUE_BYTES], 1000);
		assert_int_equal(sh->f[HOP_OLDEST], 1700000000);
		assert_int_equal(sh->f[HOP_LAST_FAILURE], 1700000100);
		assert_string_equal(sh->reason, "connect 192.0.2.1:25: Connection refused");
	}
	counters_close(&c, true);
	assert_null(c);
	assert_int_equal(counters_attach(name, snap, err, sizeof err), COUNTERS_ATTACH_MISSING);
	assert_contains(err, name);
	free(snap);
}

/* A block written by another layout (or not a block at all) is refused
 * with a sentence naming both layouts. */
static void test_layout_mismatch(void **state)
{
	char name[64], err[256];
	struct counters_shm *snap = malloc(sizeof *snap);
	uint32_t old[8] = { COUNTERS_MAGIC, 1, 12, 42 };
	int fd;

	(void)state;
	shm_name(name, sizeof name, "layout");
	fd = shm_open(name, O_RDWR | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, old, sizeof old), (ssize_t)sizeof old);
	assert_int_equal(ftruncate(fd, 128), 0);
	assert_int_equal(counters_attach(name, snap, err, sizeof err), COUNTERS_ATTACH_LAYOUT);
	assert_contains(err, "layout 1");
	assert_contains(err, "reads layout 3");

	old[0] = 0xdeadbeef;
	assert_int_equal(pwrite(fd, old, sizeof old, 0), (ssize_t)sizeof old);
	assert_int_equal(counters_attach(name, snap, err, sizeof err), COUNTERS_ATTACH_LAYOUT);
	assert_contains(err, "not a carrier counters block");

	assert_int_equal(ftruncate(fd, 0), 0);
	assert_int_equal(counters_attach(name, snap, err, sizeof err), COUNTERS_ATTACH_LAYOUT);
	close(fd);
	shm_unlink(name);
	free(snap);
}

/* A name shm_open() refuses: private memory, one warning, still counts. */
static void test_private_fallback(void **state)
{
	struct counters *c = counters_open("/bad/name/with/slashes", NULL);
	struct counters_hop *h;

	(void)state;
	assert_non_null(c);
	assert_false(counters_shared(c));
	counters_add(counters_block(c), COUNTER_BYTES_IN, 500);
	assert_int_equal(counters_block(c)->v[COUNTER_BYTES_IN], 500);
	h = counters_hop(c, "local");
	assert_non_null(h);
	counters_hop_add(h, HOP_MSG_OUT, 1);
	assert_int_equal(h->f[HOP_MSG_OUT], 1);
	counters_close(&c, true);
}

static void test_probe(void **state)
{
	char name[64], err[256];

	(void)state;
	shm_name(name, sizeof name, "probe");
	assert_int_equal(counters_probe(name, err, sizeof err), 0);
	assert_int_equal(counters_probe("/bad/name", err, sizeof err), -1);
	assert_contains(err, "shm_open");
}

/* ---- next-hop table ---------------------------------------------------------- */

static void test_hop_claim(void **state)
{
	struct counters *c = counters_open("/bad/name", NULL);  /* private is enough */
	char longkey[300];
	struct counters_hop *a, *b;

	(void)state;
	a = counters_hop(c, "mx:example.com");
	b = counters_hop(c, "mx:example.com");
	assert_non_null(a);
	assert_ptr_equal(a, b);
	assert_ptr_not_equal(a, counters_hop(c, "mx:example.org"));
	assert_null(counters_hop(c, ""));
	assert_null(counters_hop(c, NULL));
	assert_null(counters_hop(NULL, "x"));
	/* NULL slots are ignored. */
	counters_hop_add(NULL, HOP_MSG_OUT, 1);
	counters_hop_set(NULL, HOP_OLDEST, 1);
	counters_hop_set_failure(NULL, "x", 1);
	counters_hop_set_next_retry(NULL, 1);
	counters_hop_queue(NULL, 1, 1);
	/* Long keys are truncated, consistently. */
	memset(longkey, 'k', sizeof longkey - 1);
	longkey[sizeof longkey - 1] = '\0';
	a = counters_hop(c, longkey);
	assert_ptr_equal(a, counters_hop(c, longkey));
	assert_int_equal(strlen(a->key), COUNTERS_HOP_KEY_MAX - 1);
	/* The reason is bounded and has no control bytes. */
	memset(longkey, 'r', sizeof longkey - 1);
	longkey[3] = '\n';
	counters_hop_set_failure(a, longkey, 5);
	{
		char buf[COUNTERS_REASON_MAX + 10];

		counters_hop_reason(a, buf, sizeof buf);
		assert_int_equal(strlen(buf), COUNTERS_REASON_MAX - 1);
		assert_int_equal(buf[3], '?');
	}
	counters_close(&c, false);
}

static void test_hop_full(void **state)
{
	struct counters *c = counters_open("/bad/name", NULL);
	struct counters_hop *first, *h, *other;
	char key[64];

	(void)state;
	first = counters_hop(c, "hop-0");
	for (int i = 1; i < COUNTERS_HOPS - 1; i++) {
		snprintf(key, sizeof key, "hop-%d", i);
		h = counters_hop(c, key);
		assert_non_null(h);
		assert_string_equal(h->key, key);
	}
	assert_int_equal(counters_block(c)->hops_full, 0);
	other = counters_hop(c, "one-too-many");
	assert_string_equal(other->key, COUNTERS_HOP_OTHER);
	assert_ptr_equal(other, &counters_block(c)->hops[COUNTERS_HOPS - 1]);
	assert_int_equal(counters_block(c)->hops_full, 1);
	assert_ptr_equal(counters_hop(c, "and-another"), other);
	/* Known keys still find their own slots. */
	assert_ptr_equal(counters_hop(c, "hop-0"), first);
	snprintf(key, sizeof key, "hop-%d", COUNTERS_HOPS - 2);
	assert_string_equal(counters_hop(c, key)->key, key);
	counters_close(&c, false);
}

#define N_THREADS 4
#define N_KEYS 40
#define N_ROUNDS 200

static void *hop_worker(void *arg)
{
	struct counters *c = arg;
	char key[32];

	for (int r = 0; r < N_ROUNDS; r++)
		for (int k = 0; k < N_KEYS; k++) {
			snprintf(key, sizeof key, "smtp:[10.0.0.%d]:25", k);
			counters_hop_add(counters_hop(c, key), HOP_MSG_OUT, 1);
			counters_add(counters_block(c), COUNTER_MSG_DELIVERED, 1);
			if (r % 50 == 0)
				counters_hop_set_failure(counters_hop(c, key), "451 4.3.0 busy", r);
		}
	return NULL;
}

/* Threads racing to claim the same keys end with one slot per key and
 * exact sums. */
static void test_hop_threads(void **state)
{
	struct counters *c = counters_open("/bad/name", NULL);
	struct counters_shm *s = counters_block(c);
	pthread_t t[N_THREADS];
	int used = 0;

	(void)state;
	for (int i = 0; i < N_THREADS; i++)
		assert_int_equal(pthread_create(&t[i], NULL, hop_worker, c), 0);
	for (int i = 0; i < N_THREADS; i++)
		pthread_join(t[i], NULL);
	for (int i = 0; i < COUNTERS_HOPS - 1; i++) {
		if (s->hops[i].state != COUNTERS_HOP_USED)
			continue;
		used++;
		assert_int_equal(s->hops[i].f[HOP_MSG_OUT], N_THREADS * N_ROUNDS);
		assert_string_equal(s->hops[i].reason, "451 4.3.0 busy");
	}
	assert_int_equal(used, N_KEYS);
	assert_int_equal(s->v[COUNTER_MSG_DELIVERED], N_THREADS * N_ROUNDS * N_KEYS);
	counters_close(&c, false);
}

/* The outbound helpers move the global counters and the hop's together,
 * and take NULL for either. */
static void test_out_helpers(void **state)
{
	struct counters *c = counters_open("/bad/name", NULL);
	struct counters_shm *s = counters_block(c);
	struct counters_hop *h = counters_hop(c, "mx:example.net");

	(void)state;
	counters_conn_out_open(c, h);
	assert_int_equal(s->v[COUNTER_CONN_OUT_CURRENT], 1);
	assert_int_equal(h->f[HOP_CONN_ACTIVE], 1);
	counters_out_delivered(c, h, 3, 2048);
	counters_out_deferred(c, h, 1, "451 4.7.1 greylisted", 100);
	counters_conn_out_close(c, h);
	counters_conn_out_failed(c, h, "connect 192.0.2.7:25: timed out", 200);
	counters_out_bounced(c, h, 2, "550 5.1.1 no such user", 300);
	counters_conn_out_open(NULL, h);
	counters_conn_out_close(NULL, h);
	counters_out_delivered(c, NULL, 1, 10);
	/* TLS results are per hop only: two sessions, one failure. */
	counters_out_tls(h, true);
	counters_out_tls(h, true);
	counters_out_tls(h, false);
	counters_out_tls(NULL, true);

	assert_int_equal(s->v[COUNTER_CONN_OUT_CURRENT], 0);
	assert_int_equal(s->v[COUNTER_CONN_OUT_TOTAL], 2);
	assert_int_equal(s->v[COUNTER_CONN_OUT_FAILED], 1);
	assert_int_equal(s->v[COUNTER_MSG_DELIVERED], 2);
	assert_int_equal(s->v[COUNTER_RCPT_DELIVERED], 4);
	assert_int_equal(s->v[COUNTER_BYTES_OUT], 2058);
	assert_int_equal(s->v[COUNTER_RCPT_DEFERRED], 1);
	assert_int_equal(s->v[COUNTER_RCPT_BOUNCED], 2);
	assert_int_equal(h->f[HOP_CONN_ACTIVE], 0);
	assert_int_equal(h->f[HOP_CONN_TOTAL], 3);
	assert_int_equal(h->f[HOP_CONN_FAILED], 1);
	assert_int_equal(h->f[HOP_MSG_OUT], 1);
	assert_int_equal(h->f[HOP_BYTES_OUT], 2048);
	assert_int_equal(h->f[HOP_MSG_DEFERRED], 1);
	assert_int_equal(h->f[HOP_MSG_BOUNCED], 1);
	assert_int_equal(h->f[HOP_LAST_FAILURE], 300);
	assert_string_equal(h->reason, "550 5.1.1 no such user");
	assert_int_equal(h->f[HOP_TLS_SESSIONS], 2);
	assert_int_equal(h->f[HOP_TLS_FAILURES], 1);
	assert_string_equal(counters_hop_field_name(HOP_TLS_SESSIONS), "tls_sessions");
	assert_string_equal(counters_hop_field_name(HOP_TLS_FAILURES), "tls_failures");
	assert_int_equal(counters_hop_field_kind(HOP_TLS_FAILURES), COUNTERS_COUNTER);
	counters_close(&c, false);
}

/* ---- the stats control command ------------------------------------------------ */

static void test_control_stats_round_trip(void **state)
{
	struct counters *c = counters_open("/bad/name", NULL);
	struct control_reply *rep = control_reply_new();
	struct control_resp_parser p;
	struct control_response resp = { 0 };
	struct counters_shm *snap = malloc(sizeof *snap);
	struct counters_hop *h;
	char reason[128], err[256];
	size_t len, used;
	char *text;
	int shared = -1;

	(void)state;
	counters_add(counters_block(c), COUNTER_MSG_RECEIVED, 7);
	counters_add(counters_block(c), COUNTER_QUEUE_HELD_BYTES, 12345);
	h = counters_hop(c, "mx:example.com");
	counters_hop_add(h, HOP_CONN_FAILED, 2);
	counters_hop_set_failure(h, "connect: refused\\now", 99);
	counters_hop_set_next_retry(counters_hop(c, "local"), 1800000000);

	counters_control_stats(c, NULL, rep);
	assert_int_equal(control_reply_code(rep), 200);
	text = control_reply_format(rep, &len);
	assert_non_null(text);
	assert_int_equal(control_resp_parser_init(&p), 0);
	assert_int_equal(control_resp_parse(&p, text, len, &used, &resp, reason, sizeof reason),
			 CONTROL_PARSE_OK);
	control_resp_parser_free(&p);
	assert_string_equal(control_response_get(&resp, "shared"), "no");
	assert_int_equal(counters_ctl_parse(&resp, snap, &shared, err, sizeof err), 0);
	assert_int_equal(shared, 0);
	assert_int_equal(snap->v[COUNTER_MSG_RECEIVED], 7);
	assert_int_equal(snap->v[COUNTER_QUEUE_HELD_BYTES], 12345);
	assert_int_equal(snap->pid, getpid());
	{
		bool seen_mx = false, seen_local = false;

		for (int i = 0; i < COUNTERS_HOPS; i++) {
			const struct counters_hop *o = &snap->hops[i];

			if (o->state != COUNTERS_HOP_USED)
				continue;
			if (!strcmp(o->key, "mx:example.com")) {
				seen_mx = true;
				assert_int_equal(o->f[HOP_CONN_FAILED], 2);
				assert_int_equal(o->f[HOP_LAST_FAILURE], 99);
				assert_string_equal(o->reason, "connect: refused\\now");
			} else if (!strcmp(o->key, "local")) {
				seen_local = true;
				assert_int_equal(o->f[HOP_NEXT_RETRY], 1800000000);
			}
		}
		assert_true(seen_mx);
		assert_true(seen_local);
	}
	free(text);
	control_response_clear(&resp);

	/* Another layout is refused. */
	memset(&resp, 0, sizeof resp);
	{
		struct control_field f = { "layout", "1" };

		resp.code = 200;
		resp.fields = &f;
		resp.n_fields = 1;
		assert_int_equal(counters_ctl_parse(&resp, snap, &shared, err, sizeof err), -1);
		assert_contains(err, "layout 1");
	}
	control_reply_free(&rep);
	counters_close(&c, false);
	free(snap);
}

/* ---- metrics ------------------------------------------------------------------ */

static char *render(const struct counters_shm *s, bool om)
{
	struct evbuffer *b = evbuffer_new();
	size_t n;
	char *out;

	assert_int_equal(metrics_render(s, om, 1700000600, b), 0);
	n = evbuffer_get_length(b);
	out = malloc(n + 1);
	evbuffer_remove(b, out, n);
	out[n] = '\0';
	evbuffer_free(b);
	return out;
}

/* Every line is a comment (# HELP/# TYPE/# EOF) or a sample
 * name{label="escaped",...} value. */
static void check_grammar(const char *text, bool om)
{
	regex_t sample, help, type;
	const char *line = text;
	int n_samples = 0;

	assert_int_equal(regcomp(&sample,
				 "^[a-zA-Z_:][a-zA-Z0-9_:]*"
				 "(\\{[a-zA-Z_][a-zA-Z0-9_]*=\"([^\"\\\\\n]|\\\\[\\\\\"n])*\""
				 "(,[a-zA-Z_][a-zA-Z0-9_]*=\"([^\"\\\\\n]|\\\\[\\\\\"n])*\")*\\})?"
				 " -?[0-9]+(\\.[0-9]+)?$", REG_EXTENDED | REG_NOSUB), 0);
	assert_int_equal(regcomp(&help, "^# HELP [a-zA-Z_:][a-zA-Z0-9_:]* [^\n]*$",
				 REG_EXTENDED | REG_NOSUB), 0);
	assert_int_equal(regcomp(&type, "^# TYPE [a-zA-Z_:][a-zA-Z0-9_:]* (counter|gauge)$",
				 REG_EXTENDED | REG_NOSUB), 0);
	while (*line) {
		const char *nl = strchr(line, '\n');
		char buf[1024];
		size_t len;

		assert_non_null(nl);
		len = (size_t)(nl - line);
		assert_true(len < sizeof buf);
		memcpy(buf, line, len);
		buf[len] = '\0';
		if (!strcmp(buf, "# EOF")) {
			assert_true(om);
			assert_string_equal(nl + 1, "");
		} else if (!strncmp(buf, "# HELP", 6)) {
			if (regexec(&help, buf, 0, NULL, 0))
				fail_msg("bad HELP line: %s", buf);
		} else if (!strncmp(buf, "# TYPE", 6)) {
			if (regexec(&type, buf, 0, NULL, 0))
				fail_msg("bad TYPE line: %s", buf);
		} else {
			if (regexec(&sample, buf, 0, NULL, 0))
				fail_msg("bad sample line: %s", buf);
			n_samples++;
		}
		line = nl + 1;
	}
	assert_true(n_samples > COUNTERS_N);
	regfree(&sample);
	regfree(&help);
	regfree(&type);
}

static struct counters *metrics_fixture(void)
{
	struct counters *c = counters_open("/bad/name", NULL);
	struct counters_hop *h;

	counters_add(counters_block(c), COUNTER_MSG_RECEIVED, 3);
	counters_add(counters_block(c), COUNTER_QUEUE_ACTIVE_MSGS, 2);
	counters_add(counters_block(c), COUNTER_BYTES_IN, 4096);
	h = counters_hop(c, "smtp:[127.0.0.1]:2526");
	counters_hop_queue(h, 1, 100);
	counters_hop_set(h, HOP_OLDEST, 1700000000);
	counters_out_tls(h, true);
	counters_out_tls(h, false);
	counters_out_tls(h, false);
	counters_hop_add(counters_hop(c, "weird\"key\\with\nnewline"), HOP_MSG_OUT, 1);
	return c;
}

static void test_metrics_render(void **state)
{
	struct counters *c = metrics_fixture();
	char *text;

	(void)state;
	text = render(counters_block(c), false);
	check_grammar(text, false);
	assert_contains(text, "# TYPE carrier_messages_received_total counter\n");
	assert_contains(text, "\ncarrier_messages_received_total 3\n");
	assert_contains(text, "\ncarrier_connections_in_current 0\n");
	assert_contains(text, "\ncarrier_bytes_in_total 4096\n");
	assert_contains(text, "\ncarrier_queue_messages{state=\"active\"} 2\n");
	assert_contains(text, "\ncarrier_queue_messages{state=\"held\"} 0\n");
	assert_contains(text, "carrier_next_hop_queue_messages{next_hop=\"smtp:[127.0.0.1]:2526\"} 1\n");
	assert_contains(text, "carrier_next_hop_oldest_age_seconds{next_hop=\"smtp:[127.0.0.1]:2526\"} 600\n");
	assert_contains(text, "# TYPE carrier_next_hop_tls_sessions_total counter\n");
	assert_contains(text, "carrier_next_hop_tls_sessions_total{next_hop=\"smtp:[127.0.0.1]:2526\"} 1\n");
	assert_contains(text, "carrier_next_hop_tls_failures_total{next_hop=\"smtp:[127.0.0.1]:2526\"} 2\n");
	assert_contains(text, "carrier_next_hop_messages_delivered_total{next_hop=\"weird\\\"key\\\\with\\nnewline\"} 1\n");
	assert_null(strstr(text, "# EOF"));
	/* One TYPE line per family. */
	assert_null(strstr(strstr(text, "# TYPE carrier_queue_messages gauge") + 1,
			   "# TYPE carrier_queue_messages gauge"));
	free(text);

	text = render(counters_block(c), true);
	check_grammar(text, true);
	assert_contains(text, "# TYPE carrier_messages_received counter\n");
	assert_contains(text, "\ncarrier_messages_received_total 3\n");
	free(text);
	counters_close(&c, false);
}

/* Sends `request` to 127.0.0.1:port, runs `base` until the server closes,
 * returns the whole response (caller frees). */
static char *http_exchange(struct event_base *base, int port, const char *request)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	size_t cap = 1 << 20, len = 0;
	char *buf = malloc(cap);

	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
	assert_int_equal(write(fd, request, strlen(request)), (ssize_t)strlen(request));
	for (int i = 0; i < 2000; i++) {
		struct pollfd pfd = { fd, POLLIN, 0 };
		ssize_t n;

		event_base_loop(base, EVLOOP_NONBLOCK);
		if (poll(&pfd, 1, 5) <= 0)
			continue;
		n = read(fd, buf + len, cap - 1 - len);
		if (n <= 0)
			break;
		len += (size_t)n;
	}
	buf[len] = '\0';
	close(fd);
	return buf;
}

static void test_metrics_server(void **state)
{
	struct event_base *base = event_base_new();
	struct counters *c = metrics_fixture();
	struct metrics *m;
	char err[256];
	char *resp;

	(void)state;
	/* Off, malformed, in use. */
	assert_null(metrics_new(base, "", c, NULL, err, sizeof err));
	assert_string_equal(err, "");
	assert_null(metrics_new(base, "nonsense", c, NULL, err, sizeof err));
	assert_contains(err, "host:port");
	assert_null(metrics_new(base, "127.0.0.1:99999", c, NULL, err, sizeof err));

	m = metrics_new(base, "127.0.0.1:0", c, NULL, err, sizeof err);
	assert_non_null(m);
	assert_true(metrics_port(m) > 0);
	{
		char busy[64];

		snprintf(busy, sizeof busy, "127.0.0.1:%d", metrics_port(m));
		assert_null(metrics_new(base, busy, c, NULL, err, sizeof err));
		assert_contains(err, "bind");
	}

	resp = http_exchange(base, metrics_port(m), "GET /metrics HTTP/1.0\r\n\r\n");
	assert_contains(resp, "HTTP/1.0 200");
	assert_contains(resp, "text/plain; version=0.0.4");
	assert_contains(resp, "\ncarrier_messages_received_total 3\n");
	free(resp);

	counters_add(counters_block(c), COUNTER_MSG_RECEIVED, 1);
	resp = http_exchange(base, metrics_port(m),
			     "GET /metrics HTTP/1.0\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n");
	assert_contains(resp, "application/openmetrics-text");
	assert_contains(resp, "\ncarrier_messages_received_total 4\n");
	assert_contains(resp, "# EOF\n");
	free(resp);

	resp = http_exchange(base, metrics_port(m), "GET / HTTP/1.0\r\n\r\n");
	assert_contains(resp, " 404 ");
	free(resp);
	resp = http_exchange(base, metrics_port(m), "GET /metrics/x HTTP/1.0\r\n\r\n");
	assert_contains(resp, " 404 ");
	free(resp);
	resp = http_exchange(base, metrics_port(m), "POST /metrics HTTP/1.0\r\nContent-Length: 0\r\n\r\n");
	assert_contains(resp, " 405 ");
	free(resp);

	metrics_free(&m);
	assert_null(m);
	metrics_free(&m);
	counters_close(&c, false);
	event_base_free(base);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_shm_round_trip),
		cmocka_unit_test(test_layout_mismatch),
		cmocka_unit_test(test_private_fallback),
		cmocka_unit_test(test_probe),
		cmocka_unit_test(test_hop_claim),
		cmocka_unit_test(test_hop_full),
		cmocka_unit_test(test_hop_threads),
		cmocka_unit_test(test_out_helpers),
		cmocka_unit_test(test_control_stats_round_trip),
		cmocka_unit_test(test_metrics_render),
		cmocka_unit_test(test_metrics_server),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
