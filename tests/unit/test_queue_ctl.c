/*
 * Unit tests for queue_ctl, the daemon side of `carrier queue`, driven
 * without a daemon: a real spool, requests parsed as the control socket
 * parses them, replies formatted and parsed back as the CLI reads them.
 * Paging past QUEUE_CTL_LIST_MAX (by cursor and by offset), filters,
 * authorization (403 for a reader on a change), hold/release/delete
 * through the handler, summary without a routing table, and the reply
 * bound on a large show.  Then the queue reader thread behind a real
 * control socket: summary and list of a queue longer than one walk step,
 * a client that hangs up mid-walk, and a stop with a walk under way.
 */
#include <ftw.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <event2/event.h>
#include <event2/thread.h>

#include "test_util.h"

#include "control.h"
#include "control_proto.h"
#include "queue_ctl.h"
#include "queue_ctl_int.h"
#include "spool.h"

struct fixture {
	char dir[64];
	struct spool *sp;
	struct route_table *routes;
	struct carrier_conf *conf;
	struct track *track;
	struct queue_ctl q;
	int kicks;
};

static void kick(void *arg, const char *qid)
{
	((struct fixture *)arg)->kicks++;
}

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof *f);
	struct spool_opts o;
	char path[128], err[256];

	assert_non_null(f);
	snprintf(f->dir, sizeof f->dir, "/tmp/carrier-qctl-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	snprintf(path, sizeof path, "%s/spool", f->dir);
	spool_opts_init(&o);
	o.space_margin = 0;
	f->sp = spool_open(path, &o, NULL, err, sizeof err);
	if (f->sp == NULL)
		fail_msg("spool_open: %s", err);
	f->q = (struct queue_ctl){ .spool = f->sp, .track = &f->track, .conf = &f->conf,
				   .routes = &f->routes, .kick = kick, .kick_arg = f,
				   .admin_uid = 4242 };
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	spool_close(&f->sp);
	test_rmtree(f->dir);
	free(f);
	return 0;
}

static void queue_n(struct fixture *f, size_t n, const char *sender, size_t body_size)
{
	char err[256], rcpt[64];

	for (size_t i = 0; i < n; i++) {
		struct spool_msg *m = spool_msg_new(f->sp, err, sizeof err);
		char *body = malloc(body_size + 32);

		assert_non_null(m);
		assert_non_null(body);
		assert_int_equal(spool_msg_set_sender(m, sender), 0);
		snprintf(rcpt, sizeof rcpt, "r%zu@%s.example", i, i % 2 ? "odd" : "even");
		assert_int_equal(spool_msg_add_rcpt(m, rcpt, 0, NULL), 0);
		size_t hlen = (size_t)snprintf(body, 32, "Subject: s%zu\r\n\r\n", i);

		memset(body + hlen, '\x01', body_size);
		if (spool_msg_append(m, body, hlen + body_size, err, sizeof err) != 0)
			fail_msg("append: %s", err);
		free(body);
		if (spool_commit(f->sp, &m, NULL, err, sizeof err) != 0)
			fail_msg("commit: %s", err);
	}
}

/* Runs one request line as `uid` and parses the reply as the CLI does. */
static void call(struct fixture *f, unsigned uid, const char *line, struct control_response *resp)
{
	struct control_request req;
	struct control_reply *rep = control_reply_new();
	struct control_resp_parser p;
	struct control_call c = { .req = &req, .uid = uid, .pid = 1 };
	char reason[256], full[CONTROL_LINE_MAX + 16];
	enum control_parse r = CONTROL_PARSE_MORE;
	size_t len, off = 0;
	char *out;
	int code;

	snprintf(full, sizeof full, "CARRIER/1 %s\n", line);
	assert_int_equal(control_req_parse_line(full, strlen(full), &req, &code, reason,
						sizeof reason), CONTROL_PARSE_OK);
	assert_non_null(rep);
	queue_ctl_handle(&f->q, &c, rep);
	out = control_reply_format(rep, &len);
	assert_non_null(out);
	assert_true(len <= CONTROL_REPLY_MAX + CONTROL_TEXT_MAX + 64);
	memset(resp, 0, sizeof *resp);
	assert_int_equal(control_resp_parser_init(&p), 0);
	while (off < len && r == CONTROL_PARSE_MORE) {
		size_t used = 0;

		r = control_resp_parse(&p, out + off, len - off, &used, resp, reason, sizeof reason);
		off += used;
	}
	if (r != CONTROL_PARSE_OK)
		fail_msg("reply to \"%s\" does not parse: %s", line, reason);
	control_resp_parser_free(&p);
	free(out);
	control_reply_free(&rep);
}

static long field_num(const struct control_response *r, const char *key)
{
	const char *v = control_response_get(r, key);

	return v ? atol(v) : -1;
}

static void test_list_pages_past_the_cap(void **state)
{
	struct fixture *f = *state;
	struct control_response r;

	char line[64], last[SPOOL_QID_SIZE] = "";
	long offset = 0, seen = 0, pages = 0;

	queue_n(f, QUEUE_CTL_LIST_MAX + 50, "page@example.org", 10);
	/* Every message once, in qid order, over pages that each fit: by
	 * offset=, as older clients page. */
	do {
		long shown;

		snprintf(line, sizeof line, "queue list offset=%ld", offset);
		call(f, 1000, line, &r);
		assert_int_equal(r.code, 200);
		shown = field_num(&r, "shown");
		/* The walk stops at a full page: matched counts up to there. */
		assert_int_equal(field_num(&r, "matched"), offset + shown);
		assert_true(shown > 0 && shown <= QUEUE_CTL_LIST_MAX);
		assert_int_equal((long)control_response_count(&r, "msg"), shown);
		for (size_t i = 0; i < r.n_fields; i++) {
			if (strcmp(r.fields[i].key, "msg") != 0)
				continue;
			assert_true(strncmp(r.fields[i].value, last, SPOOL_QID_LEN) > 0);
			memcpy(last, r.fields[i].value, SPOOL_QID_LEN);
			last[SPOOL_QID_LEN] = '\0';
		}
		seen += shown;
		pages++;
		offset = field_num(&r, "next_offset");
		control_response_clear(&r);
	} while (offset > 0);
	assert_int_equal(seen, QUEUE_CTL_LIST_MAX + 50);
	assert_true(pages >= 2);

	/* By cursor (after=, as the CLI pages), with a filter. */
	seen = pages = 0;
	snprintf(line, sizeof line, "queue list domain=odd.example limit=300");
	for (;;) {
		const char *next;

		call(f, 1000, line, &r);
		assert_int_equal(r.code, 200);
		seen += field_num(&r, "shown");
		pages++;
		next = control_response_get(&r, "next_after");
		if (next == NULL) {
			assert_null(control_response_get(&r, "next_offset"));
			control_response_clear(&r);
			break;
		}
		assert_int_equal(field_num(&r, "shown"), 300);
		snprintf(line, sizeof line, "queue list domain=odd.example limit=300 after=%s", next);
		control_response_clear(&r);
	}
	assert_int_equal(seen, (QUEUE_CTL_LIST_MAX + 50) / 2);
	assert_int_equal(pages, 2);

	call(f, 1000, "queue list after=nonsense", &r);
	assert_int_equal(r.code, 400);
	control_response_clear(&r);

	call(f, 1000, "queue list older=3600", &r);
	assert_int_equal(field_num(&r, "matched"), 0);
	control_response_clear(&r);

	call(f, 1000, "queue list colour=red", &r);
	assert_int_equal(r.code, 400);
	control_response_clear(&r);
}

static void test_changes_need_root_or_the_daemon_user(void **state)
{
	struct fixture *f = *state;
	struct control_response r;
	const char *qid;
	char line[128], id[SPOOL_QID_SIZE];

	queue_n(f, 3, "perm@example.org", 10);
	call(f, 1000, "queue list", &r);
	qid = control_response_get(&r, "msg");
	assert_non_null(qid);
	memcpy(id, qid, SPOOL_QID_LEN);
	id[SPOOL_QID_LEN] = '\0';
	control_response_clear(&r);

	snprintf(line, sizeof line, "queue hold %s", id);
	call(f, 1000, line, &r);
	assert_int_equal(r.code, 403);
	assert_non_null(strstr(r.text, "only root and the daemon's user"));
	control_response_clear(&r);

	call(f, 4242, line, &r);          /* the daemon's user */
	assert_int_equal(r.code, 200);
	assert_int_equal(field_num(&r, "changed"), 1);
	control_response_clear(&r);

	call(f, 0, "queue list state=held", &r);
	assert_int_equal(field_num(&r, "matched"), 1);
	control_response_clear(&r);

	call(f, 0, "queue hold all", &r);
	assert_int_equal(field_num(&r, "changed"), 2);
	control_response_clear(&r);
	call(f, 0, "queue release all", &r);
	assert_int_equal(field_num(&r, "changed"), 3);
	assert_true(f->kicks >= 3);
	control_response_clear(&r);

	snprintf(line, sizeof line, "queue delete %s 0000000000000000", id);
	call(f, 0, line, &r);
	assert_int_equal(field_num(&r, "changed"), 1);
	assert_int_equal(field_num(&r, "absent"), 1);
	control_response_clear(&r);

	call(f, 0, "queue delete not-a-qid", &r);
	assert_int_equal(r.code, 400);
	control_response_clear(&r);
}

static void test_summary_and_show_bounds(void **state)
{
	struct fixture *f = *state;
	struct control_response r;
	char line[128], id[SPOOL_QID_SIZE];

	queue_n(f, 2, "big@example.org", 400 * 1024);   /* control bytes: 4x escaped */
	call(f, 1000, "queue summary", &r);
	assert_int_equal(r.code, 200);
	assert_non_null(control_response_get(&r, "total"));
	assert_int_equal(strncmp(control_response_get(&r, "total"), "TOTAL\t2\t2\t", 10), 0);
	assert_int_equal(strncmp(control_response_get(&r, "hop"), "unroutable\t2", 12), 0);
	control_response_clear(&r);

	call(f, 1000, "queue list limit=1", &r);
	memcpy(id, control_response_get(&r, "msg"), SPOOL_QID_LEN);
	id[SPOOL_QID_LEN] = '\0';
	control_response_clear(&r);
	snprintf(line, sizeof line, "queue show %s body", id);
	call(f, 1000, line, &r);
	assert_int_equal(r.code, 200);
	assert_non_null(control_response_get(&r, "text_truncated"));
	assert_non_null(control_response_get(&r, "header"));
	control_response_clear(&r);

	call(f, 1000, "queue due", &r);
	assert_int_equal(field_num(&r, "due"), 2);
	control_response_clear(&r);
	call(f, 1000, "queue frobnicate", &r);
	assert_int_equal(r.code, 400);
	control_response_clear(&r);
}

/* ---- the reader thread behind a control socket ----------------------------- */

struct served {
	struct event_base *base;
	struct control *c;
	pthread_t loop;
	char path[128];
};

static void *serve_loop(void *arg)
{
	event_base_loop(((struct served *)arg)->base, EVLOOP_NO_EXIT_ON_EMPTY);
	return NULL;
}

static const struct control_command queue_cmd[] = {
	{ "queue", "queue ...", queue_ctl_handle },
};
static const struct control_handlers queue_handlers = { queue_cmd, 1 };

static void serve(struct fixture *f, struct served *sv)
{
	struct control_auth auth = { .owner_uid = (uid_t)-1, .group = (gid_t)-1 };
	char err[256];

	snprintf(sv->path, sizeof sv->path, "%s/control.sock", f->dir);
	sv->base = event_base_new();
	assert_non_null(sv->base);
	sv->c = control_new(sv->base, sv->path, &auth, &queue_handlers, &f->q, NULL,
			    err, sizeof err);
	if (sv->c == NULL)
		fail_msg("control_new: %s", err);
	assert_int_equal(queue_ctl_start(&f->q, err, sizeof err), 0);
	assert_int_equal(pthread_create(&sv->loop, NULL, serve_loop, sv), 0);
}

/* As the daemon stops: loop first, then the reader, then the control.
 * loopexit, not loopbreak: a break before the loop thread got to run is
 * forgotten when it starts; the exit is an event that waits for it. */
static void unserve(struct fixture *f, struct served *sv)
{
	event_base_loopexit(sv->base, NULL);
	pthread_join(sv->loop, NULL);
	queue_ctl_stop(&f->q);
	assert_null(f->q.reader);
	control_free(&sv->c);
	event_base_free(sv->base);
}

static void request(struct served *sv, const char *line, struct control_response *r)
{
	char err[256];

	if (control_request_timeout(sv->path, line, 60000, r, err, sizeof err) != CONTROL_CLIENT_OK)
		fail_msg("%s: %s", line, err);
}

/* Sends one request on a raw connection and returns the fd. */
static int send_raw(struct served *sv, const char *line)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	char buf[256];
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), n;

	assert_true(fd >= 0);
	snprintf(sun.sun_path, sizeof sun.sun_path, "%s", sv->path);
	assert_int_equal(connect(fd, (struct sockaddr *)&sun, sizeof sun), 0);
	n = snprintf(buf, sizeof buf, "CARRIER/1 %s\n", line);
	assert_int_equal(send(fd, buf, (size_t)n, MSG_NOSIGNAL), n);
	return fd;
}

struct many {
	int done, failed;
};

static void many_done(void *arg, int rc, const char *qid, const char *err)
{
	struct many *m = arg;

	m->done++;
	m->failed += rc != 0;
}

/* Queues n one-recipient messages in group commits (spool_commit() would
 * fsync each). */
static void queue_many(struct fixture *f, size_t n)
{
	struct event_base *base = event_base_new();
	struct many m = { 0 };
	char err[256], rcpt[64];

	assert_non_null(base);
	for (size_t i = 0; i < n; i++) {
		struct spool_msg *msg = spool_msg_new(f->sp, err, sizeof err);

		assert_non_null(msg);
		snprintf(rcpt, sizeof rcpt, "m%zu@d%zu.example", i, i % 7);
		assert_int_equal(spool_msg_set_sender(msg, "many@example.org"), 0);
		assert_int_equal(spool_msg_add_rcpt(msg, rcpt, 0, NULL), 0);
		assert_int_equal(spool_msg_append(msg, "Subject: m\r\n\r\nx\r\n", 18, err, sizeof err), 0);
		if (spool_commit_async(f->sp, &msg, base, many_done, &m, err, sizeof err) != 0)
			fail_msg("commit: %s", err);
	}
	while (m.done < (int)n)
		event_base_loop(base, EVLOOP_ONCE);
	assert_int_equal(m.failed, 0);
	event_base_free(base);
}

/* More than two walk steps' worth. */
#define MANY (QCTL_STEP_KEYS * 2 + 500)

static void test_reader_thread(void **state)
{
	struct fixture *f = *state;
	struct control_response r;
	struct served sv;
	char line[128], last[SPOOL_QID_SIZE] = "";
	long seen = 0;

	queue_many(f, MANY);
	serve(f, &sv);

	request(&sv, "queue summary", &r);
	assert_int_equal(r.code, 200);
	assert_int_equal(field_num(&r, "scanned"), MANY);
	assert_null(control_response_get(&r, "partial"));
	snprintf(line, sizeof line, "TOTAL\t%d\t", MANY);
	assert_int_equal(strncmp(control_response_get(&r, "total"), line, strlen(line)), 0);
	control_response_clear(&r);

	/* The whole queue by cursor, each message once, in order. */
	snprintf(line, sizeof line, "queue list");
	for (;;) {
		const char *next;

		request(&sv, line, &r);
		assert_int_equal(r.code, 200);
		for (size_t i = 0; i < r.n_fields; i++) {
			if (strcmp(r.fields[i].key, "msg") != 0)
				continue;
			assert_true(strncmp(r.fields[i].value, last, SPOOL_QID_LEN) > 0);
			memcpy(last, r.fields[i].value, SPOOL_QID_LEN);
			seen++;
		}
		if ((next = control_response_get(&r, "next_after")) == NULL) {
			control_response_clear(&r);
			break;
		}
		snprintf(line, sizeof line, "queue list after=%s", next);
		control_response_clear(&r);
	}
	assert_int_equal(seen, MANY);

	/* A client that hangs up mid-walk: dropped; the next ones are served. */
	for (int i = 0; i < 3; i++)
		close(send_raw(&sv, "queue summary"));
	request(&sv, "queue due", &r);
	assert_int_equal(r.code, 200);
	assert_int_equal(field_num(&r, "due"), MANY);
	control_response_clear(&r);
	unserve(f, &sv);
}

/* Stopping with a walk under way and more waiting: nothing leaks (ASan),
 * nothing is used after it is freed. */
static void test_reader_stop_mid_walk(void **state)
{
	struct fixture *f = *state;
	struct served sv;
	int fd[4];

	queue_many(f, MANY);
	serve(f, &sv);
	for (int i = 0; i < 4; i++)
		fd[i] = send_raw(&sv, i % 2 ? "queue list" : "queue summary");
	poll(NULL, 0, 20);
	unserve(f, &sv);
	for (int i = 0; i < 4; i++)
		close(fd[i]);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_list_pages_past_the_cap, setup, teardown),
		cmocka_unit_test_setup_teardown(test_changes_need_root_or_the_daemon_user, setup, teardown),
		cmocka_unit_test_setup_teardown(test_summary_and_show_bounds, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reader_thread, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reader_stop_mid_walk, setup, teardown),
	};

	/* Deferred replies are finished on the reader thread. */
	evthread_use_pthreads();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
