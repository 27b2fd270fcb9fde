/*
 * Unit tests for queue_ctl, the daemon side of `carrier queue`, driven
 * without a daemon: a real spool, requests parsed as the control socket
 * parses them, replies formatted and parsed back as the CLI reads them.
 * Paging past QUEUE_CTL_LIST_MAX, filters, authorization (403 for a
 * reader on a change), hold/release/delete through the handler, summary
 * without a routing table, and the reply bound on a large show.
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

#include "test_util.h"

#include "control.h"
#include "control_proto.h"
#include "queue_ctl.h"
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
	/* Every message once, in qid order, over pages that each fit. */
	do {
		long shown;

		snprintf(line, sizeof line, "queue list offset=%ld", offset);
		call(f, 1000, line, &r);
		assert_int_equal(r.code, 200);
		assert_int_equal(field_num(&r, "matched"), QUEUE_CTL_LIST_MAX + 50);
		shown = field_num(&r, "shown");
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

	call(f, 1000, "queue list domain=odd.example limit=5", &r);
	assert_int_equal(field_num(&r, "matched"), (QUEUE_CTL_LIST_MAX + 50) / 2);
	assert_int_equal(field_num(&r, "shown"), 5);
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

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_list_pages_past_the_cap, setup, teardown),
		cmocka_unit_test_setup_teardown(test_changes_need_root_or_the_daemon_user, setup, teardown),
		cmocka_unit_test_setup_teardown(test_summary_and_show_bounds, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
