/*
 * test_control: the CARRIER/1 protocol (control_proto) and the control
 * socket (control), against a real server on a libevent loop in a thread.
 *
 * Parser cases are tables run twice: whole and one byte at a time.  Peer
 * tests fork a child that drops to nobody (uid 65534), so they need root;
 * they skip otherwise.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/thread.h>

#include "cli.h"
#include "control.h"
#include "control_proto.h"
#include "evlog.h"

#define NOBODY 65534
#define TEST_GROUP 4242

/* ---- request parser table ---------------------------------------------- */

struct req_case {
	const char *name;
	const char *input;
	size_t len;                     /* 0: strlen(input) */
	enum control_parse want;
	int want_code;                  /* on ERROR */
	const char *want_command;       /* on OK */
	size_t want_argc;
	const char *want_arg0;
	const char *want_reason;        /* substring, on ERROR */
};

static const struct req_case req_cases[] = {
	{ "plain", "CARRIER/1 status\n", 0, CONTROL_PARSE_OK, 0, "status", 0, NULL, NULL },
	{ "args", "CARRIER/1 queue show  ABC\tdef\n", 0, CONTROL_PARSE_OK, 0, "queue", 3, "show", NULL },
	{ "crlf", "CARRIER/1 ping\r\n", 0, CONTROL_PARSE_OK, 0, "ping", 0, NULL, NULL },
	{ "leading space", "  CARRIER/1 ping \n", 0, CONTROL_PARSE_OK, 0, "ping", 0, NULL, NULL },
	{ "utf8 arg", "CARRIER/1 track j\xc3\xbcrgen@example.org\n", 0, CONTROL_PARSE_OK, 0, "track", 1, "j\xc3\xbcrgen@example.org", NULL },
	{ "version 2", "CARRIER/2 ping\n", 0, CONTROL_PARSE_ERROR, 505, NULL, 0, NULL, "CARRIER/1" },
	{ "version empty", "CARRIER/ ping\n", 0, CONTROL_PARSE_ERROR, 505, NULL, 0, NULL, "CARRIER/1" },
	{ "version 10", "CARRIER/10 ping\n", 0, CONTROL_PARSE_ERROR, 505, NULL, 0, NULL, "CARRIER/1" },
	{ "no version", "status\n", 0, CONTROL_PARSE_ERROR, 400, NULL, 0, NULL, "CARRIER/1" },
	{ "lower-case version", "carrier/1 status\n", 0, CONTROL_PARSE_ERROR, 400, NULL, 0, NULL, "CARRIER/1" },
	{ "missing command", "CARRIER/1\n", 0, CONTROL_PARSE_ERROR, 400, NULL, 0, NULL, "missing command" },
	{ "empty", "\n", 0, CONTROL_PARSE_ERROR, 400, NULL, 0, NULL, "empty" },
	{ "blank", " \t \r\n", 0, CONTROL_PARSE_ERROR, 400, NULL, 0, NULL, "empty" },
	{ "upper-case command", "CARRIER/1 Status\n", 0, CONTROL_PARSE_ERROR, 400, NULL, 0, NULL, "invalid command" },
	{ "digit command", "CARRIER/1 9lives\n", 0, CONTROL_PARSE_ERROR, 400, NULL, 0, NULL, "invalid command" },
	{ "control char", "CARRIER/1 pi\x01ng\n", 0, CONTROL_PARSE_ERROR, 400, NULL, 0, NULL, "control character" },
	{ "nul", "CARRIER/1 ping\0x\n", 17, CONTROL_PARSE_ERROR, 400, NULL, 0, NULL, "control character" },
	{ "bare cr inside", "CARRIER/1 ping\rx\n", 0, CONTROL_PARSE_ERROR, 400, NULL, 0, NULL, "control character" },
	{ "del", "CARRIER/1 ping\x7f\n", 0, CONTROL_PARSE_ERROR, 400, NULL, 0, NULL, "control character" },
};

static enum control_parse feed_request(const char *in, size_t len, bool bytewise,
				       struct control_request *req, int *code,
				       char *reason, size_t rsize, size_t *consumed)
{
	struct control_req_parser p;
	enum control_parse r = CONTROL_PARSE_MORE;
	size_t off = 0;

	control_req_parser_init(&p);
	while (off < len && r == CONTROL_PARSE_MORE) {
		size_t chunk = bytewise ? 1 : len - off, used = 0;

		r = control_req_parse(&p, in + off, chunk, &used, req, code, reason, rsize);
		assert_true(used <= chunk);
		if (r == CONTROL_PARSE_MORE)
			assert_int_equal(used, chunk);
		off += used;
	}
	*consumed = off;
	return r;
}

static void test_request_table(void **state)
{
	for (size_t i = 0; i < sizeof req_cases / sizeof req_cases[0]; i++) {
		const struct req_case *tc = &req_cases[i];
		size_t len = tc->len ? tc->len : strlen(tc->input);

		for (int bytewise = 0; bytewise < 2; bytewise++) {
			struct control_request req;
			char reason[256] = "";
			int code = 0;
			size_t used;
			enum control_parse r = feed_request(tc->input, len, bytewise, &req,
							    &code, reason, sizeof reason, &used);

			if (r != tc->want)
				fail_msg("%s (%s): got result %d, want %d (%s)", tc->name,
					 bytewise ? "bytewise" : "whole", r, tc->want, reason);
			assert_int_equal(used, len);
			if (r == CONTROL_PARSE_ERROR) {
				if (code != tc->want_code)
					fail_msg("%s: got code %d, want %d", tc->name, code, tc->want_code);
				if (!strstr(reason, tc->want_reason))
					fail_msg("%s: reason '%s' lacks '%s'", tc->name, reason, tc->want_reason);
				continue;
			}
			assert_int_equal(req.version, 1);
			assert_string_equal(req.command, tc->want_command);
			if (req.argc != tc->want_argc)
				fail_msg("%s: got argc %zu, want %zu", tc->name, req.argc, tc->want_argc);
			if (tc->want_arg0)
				assert_string_equal(req.argv[0], tc->want_arg0);
		}
	}
}

static void test_request_bounds(void **state)
{
	char line[CONTROL_LINE_MAX + 64], reason[256];
	struct control_request req;
	int code = 0;
	size_t used, n;

	/* Exactly CONTROL_LINE_MAX bytes with the "\n": accepted. */
	n = (size_t)snprintf(line, sizeof line, "CARRIER/1 echo ");
	memset(line + n, 'a', CONTROL_LINE_MAX - 1 - n);
	line[CONTROL_LINE_MAX - 1] = '\n';
	for (int bw = 0; bw < 2; bw++) {
		assert_int_equal(feed_request(line, CONTROL_LINE_MAX, bw, &req, &code,
					      reason, sizeof reason, &used), CONTROL_PARSE_OK);
		assert_int_equal(strlen(req.argv[0]), CONTROL_LINE_MAX - 1 - n);
	}
	/* One more: 413, reported before the newline arrives. */
	memset(line + n, 'a', CONTROL_LINE_MAX - n);
	line[CONTROL_LINE_MAX] = '\n';
	for (int bw = 0; bw < 2; bw++) {
		assert_int_equal(feed_request(line, CONTROL_LINE_MAX + 1, bw, &req, &code,
					      reason, sizeof reason, &used), CONTROL_PARSE_ERROR);
		assert_int_equal(code, CONTROL_CODE_TOO_LONG);
		assert_int_equal(used, CONTROL_LINE_MAX);
	}
	/* CONTROL_ARGS_MAX arguments pass, one more does not. */
	n = (size_t)snprintf(line, sizeof line, "CARRIER/1 x");
	for (int i = 0; i < CONTROL_ARGS_MAX; i++)
		n += (size_t)snprintf(line + n, sizeof line - n, " a");
	assert_int_equal(control_req_parse_line(line, n, &req, &code, reason, sizeof reason),
			 CONTROL_PARSE_OK);
	assert_int_equal(req.argc, CONTROL_ARGS_MAX);
	n += (size_t)snprintf(line + n, sizeof line - n, " a");
	assert_int_equal(control_req_parse_line(line, n, &req, &code, reason, sizeof reason),
			 CONTROL_PARSE_ERROR);
	assert_int_equal(code, CONTROL_CODE_BAD_REQUEST);
}

static void test_request_pipelined(void **state)
{
	const char in[] = "CARRIER/1 ping\nCARRIER/2 x\nCARRIER/1 status now\n";
	struct control_req_parser p;
	struct control_request req;
	char reason[256];
	size_t off = 0, used;
	int code;

	control_req_parser_init(&p);
	assert_int_equal(control_req_parse(&p, in, sizeof in - 1, &used, &req, &code,
					   reason, sizeof reason), CONTROL_PARSE_OK);
	assert_string_equal(req.command, "ping");
	off += used;
	assert_int_equal(control_req_parse(&p, in + off, sizeof in - 1 - off, &used, &req,
					   &code, reason, sizeof reason), CONTROL_PARSE_ERROR);
	assert_int_equal(code, 505);
	off += used;
	assert_int_equal(control_req_parse(&p, in + off, sizeof in - 1 - off, &used, &req,
					   &code, reason, sizeof reason), CONTROL_PARSE_OK);
	assert_string_equal(req.command, "status");
	assert_string_equal(req.argv[0], "now");
	assert_int_equal(off + used, sizeof in - 1);
}

static void test_request_format(void **state)
{
	char buf[CONTROL_LINE_MAX + 1], err[128], big[CONTROL_LINE_MAX];

	assert_int_equal(control_req_format(buf, sizeof buf, "status", err, sizeof err), 17);
	assert_string_equal(buf, "CARRIER/1 status\n");
	assert_int_equal(control_req_format(buf, sizeof buf, "", err, sizeof err), -1);
	assert_int_equal(control_req_format(buf, sizeof buf, "  ", err, sizeof err), -1);
	assert_int_equal(control_req_format(buf, sizeof buf, "a\nb", err, sizeof err), -1);
	memset(big, 'a', sizeof big - 1);
	big[sizeof big - 1] = '\0';
	assert_int_equal(control_req_format(buf, sizeof buf, big, err, sizeof err), -1);
	assert_non_null(strstr(err, "longer"));
}

/* ---- escaping, replies, responses ------------------------------------- */

static void test_escape(void **state)
{
	const char raw[] = "a\\b\nc\rd\te\x01" "f\x7fg\xc3\xa9";
	char esc[128], small[8];
	size_t n = control_escape(esc, sizeof esc, raw, sizeof raw - 1);

	assert_string_equal(esc, "a\\\\b\\nc\\rd\\te\\x01f\\x7fg\xc3\xa9");
	assert_int_equal(n, strlen(esc));
	assert_int_equal(control_unescape(esc), (long)(sizeof raw - 1));
	assert_memory_equal(esc, raw, sizeof raw);
	/* A cut result never ends inside an escape sequence. */
	for (size_t size = 1; size < sizeof small; size++) {
		control_escape(small, size, "\x01\x02\x03", 3);
		assert_true(strlen(small) % 4 == 0);
		assert_true(control_unescape(small) >= 0);
	}
	strcpy(esc, "bad\\q");
	assert_int_equal(control_unescape(esc), -1);
	strcpy(esc, "nul\\x00");
	assert_int_equal(control_unescape(esc), -1);
	strcpy(esc, "short\\x4");
	assert_int_equal(control_unescape(esc), -1);
	strcpy(esc, "trailing\\");
	assert_int_equal(control_unescape(esc), -1);
}

static enum control_parse feed_response(const char *in, size_t len, bool bytewise,
					struct control_response *resp,
					char *reason, size_t rsize)
{
	struct control_resp_parser p;
	enum control_parse r = CONTROL_PARSE_MORE;
	size_t off = 0;

	memset(resp, 0, sizeof *resp);
	assert_int_equal(control_resp_parser_init(&p), 0);
	while (off < len && r == CONTROL_PARSE_MORE) {
		size_t chunk = bytewise ? 1 : len - off, used = 0;

		r = control_resp_parse(&p, in + off, chunk, &used, resp, reason, rsize);
		assert_true(used <= chunk);
		off += used;
	}
	control_resp_parser_free(&p);
	return r;
}

static void test_reply_roundtrip(void **state)
{
	struct control_reply *rep = control_reply_new();
	const char *odd = "line1\nline2\\ tab\t bell\x07 caf\xc3\xa9 \r";
	struct control_response resp;
	char reason[256];
	size_t len;
	char *out;

	assert_non_null(rep);
	assert_int_equal(control_reply_add(rep, "pid", "%d", 4242), 0);
	assert_int_equal(control_reply_add(rep, "listener", "%s", "127.0.0.1:2525"), 0);
	assert_int_equal(control_reply_add(rep, "listener", "%s", "[::1]:2525"), 0);
	assert_int_equal(control_reply_add(rep, "odd", "%s", odd), 0);
	assert_int_equal(control_reply_add(rep, "empty", "%s", ""), 0);
	assert_int_equal(control_reply_add(rep, "Bad", "x"), -1);
	assert_int_equal(control_reply_add(rep, "", "x"), -1);
	assert_int_equal(control_reply_add(rep, "a b", "x"), -1);
	control_reply_status(rep, 503, "not now:\nreally");
	out = control_reply_format(rep, &len);
	assert_non_null(out);
	assert_string_equal(out, "CARRIER/1 503 not now:\\nreally\npid: 4242\n"
			    "listener: 127.0.0.1:2525\nlistener: [::1]:2525\n"
			    "odd: line1\\nline2\\\\ tab\\t bell\\x07 caf\xc3\xa9 \\r\n"
			    "empty: \n.\n");
	for (int bw = 0; bw < 2; bw++) {
		assert_int_equal(feed_response(out, len, bw, &resp, reason, sizeof reason),
				 CONTROL_PARSE_OK);
		assert_int_equal(resp.code, 503);
		assert_string_equal(resp.text, "not now:\nreally");
		assert_int_equal(resp.n_fields, 5);
		assert_string_equal(control_response_get(&resp, "pid"), "4242");
		assert_int_equal(control_response_count(&resp, "listener"), 2);
		assert_string_equal(resp.fields[2].value, "[::1]:2525");
		assert_string_equal(control_response_get(&resp, "odd"), odd);
		assert_string_equal(control_response_get(&resp, "empty"), "");
		assert_null(control_response_get(&resp, "nope"));
		control_response_clear(&resp);
	}
	free(out);
	control_reply_reset(rep);
	out = control_reply_format(rep, &len);
	assert_string_equal(out, "CARRIER/1 200 ok\n.\n");
	free(out);
	control_reply_free(&rep);
	assert_null(rep);
}

static void test_reply_bounds(void **state)
{
	struct control_reply *rep = control_reply_new();
	char *big = malloc(CONTROL_REPLY_MAX / 4), *out;
	struct control_response resp;
	char reason[256], buf[64];
	size_t len;
	int r = 0, i;

	memset(big, 'x', CONTROL_REPLY_MAX / 4 - 1);
	big[CONTROL_REPLY_MAX / 4 - 1] = '\0';
	for (i = 0; i < 8 && r == 0; i++)
		r = control_reply_add(rep, "big", "%s", big);
	assert_int_equal(r, -1);
	assert_int_equal(control_reply_code(rep), 500);
	assert_int_equal(control_reply_add(rep, "small", "x"), -1);
	out = control_reply_format(rep, &len);
	assert_true(len < 200);
	assert_int_equal(feed_response(out, len, false, &resp, reason, sizeof reason),
			 CONTROL_PARSE_OK);
	assert_int_equal(resp.code, 500);
	assert_non_null(strstr(resp.text, "too large"));
	control_response_clear(&resp);
	free(out);
	free(big);
	control_reply_free(&rep);

	/* A short refusal cut to a small buffer stays a valid response. */
	len = control_reply_format_short(buf, sizeof buf, 429,
					 "too many control connections for uid 1000, and more words");
	assert_int_equal(len, sizeof buf - 1);
	assert_int_equal(feed_response(buf, len, false, &resp, reason, sizeof reason),
			 CONTROL_PARSE_OK);
	assert_int_equal(resp.code, 429);
	control_response_clear(&resp);
}

struct resp_case {
	const char *name;
	const char *input;
	enum control_parse want;
	const char *want_reason;
};

static const struct resp_case resp_cases[] = {
	{ "minimal", "CARRIER/1 200\n.\n", CONTROL_PARSE_OK, NULL },
	{ "incomplete", "CARRIER/1 200 ok\npid: 1\n", CONTROL_PARSE_MORE, NULL },
	{ "http", "HTTP/1.1 200 OK\n", CONTROL_PARSE_ERROR, "not a CARRIER/1" },
	{ "other version", "CARRIER/2 200 ok\n.\n", CONTROL_PARSE_ERROR, "CARRIER/1" },
	{ "short code", "CARRIER/1 20 ok\n.\n", CONTROL_PARSE_ERROR, "3-digit" },
	{ "code 600", "CARRIER/1 600 ok\n.\n", CONTROL_PARSE_ERROR, "3-digit" },
	{ "code glued", "CARRIER/1 2000\n.\n", CONTROL_PARSE_ERROR, "3-digit" },
	{ "no colon", "CARRIER/1 200 ok\nbadline\n.\n", CONTROL_PARSE_ERROR, "no ': '" },
	{ "upper key", "CARRIER/1 200 ok\nKey: v\n.\n", CONTROL_PARSE_ERROR, "invalid field key" },
	{ "empty key", "CARRIER/1 200 ok\n: v\n.\n", CONTROL_PARSE_ERROR, "invalid field key" },
	{ "bad escape", "CARRIER/1 200 ok\nk: \\q\n.\n", CONTROL_PARSE_ERROR, "bad escape" },
	{ "escaped nul", "CARRIER/1 200 ok\nk: \\x00\n.\n", CONTROL_PARSE_ERROR, "bad escape" },
	{ "raw tab", "CARRIER/1 200 ok\nk: a\tb\n.\n", CONTROL_PARSE_ERROR, "control character" },
	{ "crlf", "CARRIER/1 200 ok\r\n.\n", CONTROL_PARSE_ERROR, "control character" },
	{ "bad status escape", "CARRIER/1 200 \\\n.\n", CONTROL_PARSE_ERROR, "bad escape" },
};

static void test_response_table(void **state)
{
	for (size_t i = 0; i < sizeof resp_cases / sizeof resp_cases[0]; i++) {
		const struct resp_case *tc = &resp_cases[i];

		for (int bw = 0; bw < 2; bw++) {
			struct control_response resp;
			char reason[256] = "";
			enum control_parse r = feed_response(tc->input, strlen(tc->input), bw,
							     &resp, reason, sizeof reason);

			if (r != tc->want)
				fail_msg("%s (%s): got %d, want %d (%s)", tc->name,
					 bw ? "bytewise" : "whole", r, tc->want, reason);
			if (tc->want_reason && !strstr(reason, tc->want_reason))
				fail_msg("%s: reason '%s' lacks '%s'", tc->name, reason, tc->want_reason);
			control_response_clear(&resp);
		}
	}
}

static void test_response_bounds(void **state)
{
	size_t cap = CONTROL_RESP_LINE_MAX + 64;
	char *in = malloc(CONTROL_RESP_TOTAL_MAX + 2048), reason[256];
	struct control_response resp;
	size_t n;

	/* One line over CONTROL_RESP_LINE_MAX. */
	n = (size_t)snprintf(in, cap, "CARRIER/1 200 ok\nk: ");
	memset(in + n, 'v', CONTROL_RESP_LINE_MAX);
	n += CONTROL_RESP_LINE_MAX;
	in[n++] = '\n';
	assert_int_equal(feed_response(in, n, false, &resp, reason, sizeof reason),
			 CONTROL_PARSE_ERROR);
	assert_non_null(strstr(reason, "line longer"));
	control_response_clear(&resp);

	/* More fields than CONTROL_RESP_FIELDS_MAX. */
	n = (size_t)snprintf(in, cap, "CARRIER/1 200 ok\n");
	for (int i = 0; i <= CONTROL_RESP_FIELDS_MAX; i++)
		n += (size_t)sprintf(in + n, "k: %d\n", i);
	assert_int_equal(feed_response(in, n, false, &resp, reason, sizeof reason),
			 CONTROL_PARSE_ERROR);
	assert_non_null(strstr(reason, "fields"));
	control_response_clear(&resp);

	/* Over CONTROL_RESP_TOTAL_MAX in all. */
	n = (size_t)snprintf(in, cap, "CARRIER/1 200 ok\n");
	while (n < CONTROL_RESP_TOTAL_MAX) {
		memcpy(in + n, "k: ", 3);
		memset(in + n + 3, 'v', 1000);
		n += 1003;
		in[n++] = '\n';
	}
	assert_int_equal(feed_response(in, n, false, &resp, reason, sizeof reason),
			 CONTROL_PARSE_ERROR);
	control_response_clear(&resp);
	free(in);
}

/* ---- a real server ----------------------------------------------------- */

struct server {
	struct event_base *base;
	struct control *c;
	struct evlog *log;
	pthread_t thread;
	char dir[64];
	char path[128];
	atomic_int status_calls;
	struct control_auth auth;
	struct control_deferred *_Atomic later;   /* from h_later, to finish */
};

static void h_status(void *arg, const struct control_call *call,
		     struct control_reply *rep)
{
	struct server *s = arg;

	atomic_fetch_add(&s->status_calls, 1);
	control_reply_add(rep, CONTROL_STATUS_PID, "%d", 4242);
	control_reply_add(rep, CONTROL_STATUS_VERSION, "%s", "9.9.9");
	control_reply_add(rep, CONTROL_STATUS_UPTIME, "%d", 3661);
	control_reply_add(rep, CONTROL_STATUS_LISTENER, "%s", "127.0.0.1:2525");
	control_reply_add(rep, CONTROL_STATUS_LISTENER, "%s", "[::1]:2525");
	control_reply_add(rep, CONTROL_STATUS_SPOOL, "%s", "./var/spool");
	control_reply_add(rep, "caller", "%u", (unsigned)call->uid);
}

static void h_echo(void *arg, const struct control_call *call,
		   struct control_reply *rep)
{
	for (size_t i = 0; i < call->req->argc; i++)
		control_reply_add(rep, "arg", "%s", call->req->argv[i]);
}

static void h_busy(void *arg, const struct control_call *call,
		   struct control_reply *rep)
{
	control_reply_status(rep, CONTROL_CODE_UNAVAILABLE, "spool is busy");
}

/* Defers its answer: the test finishes it from its own thread. */
static void h_later(void *arg, const struct control_call *call,
		    struct control_reply *rep)
{
	struct server *s = arg;
	struct control_deferred *d = control_defer(call);

	if (d == NULL) {
		control_reply_status(rep, CONTROL_CODE_FAILED, "cannot defer");
		return;
	}
	control_reply_status(rep, CONTROL_CODE_FAILED, "must not be sent");
	atomic_store(&s->later, d);
}

static const struct control_command test_commands[] = {
	{ "status", "status", h_status },
	{ "later", "later", h_later },
	{ "echo", "echo [ARG...]", h_echo },
	{ "busy", "busy", h_busy },
	{ "ping", "ping", h_busy },     /* shadowed by the built-in */
};

static const struct control_handlers test_handlers = {
	test_commands, sizeof test_commands / sizeof test_commands[0],
};

static void *server_loop(void *arg)
{
	struct server *s = arg;

	event_base_loop(s->base, EVLOOP_NO_EXIT_ON_EMPTY);
	return NULL;
}

static void server_mkdir(struct server *s)
{
	strcpy(s->dir, "/tmp/test_control.XXXXXX");
	assert_non_null(mkdtemp(s->dir));
	/* Traversable, so the tests' unprivileged children reach the socket. */
	assert_int_equal(chmod(s->dir, 0755), 0);
	snprintf(s->path, sizeof s->path, "%s/carrierd.sock", s->dir);
}

static void server_start(struct server *s)
{
	char err[256] = "";

	s->base = event_base_new();
	assert_non_null(s->base);
	s->log = evlog_new("test_control");
	assert_non_null(s->log);
	s->c = control_new(s->base, s->path, &s->auth, &test_handlers, s, s->log,
			   err, sizeof err);
	if (!s->c)
		fail_msg("control_new: %s", err);
	assert_int_equal(pthread_create(&s->thread, NULL, server_loop, s), 0);
}

/* Starts a server with `auth` in a fresh directory. */
static struct server *server_new(const struct control_auth *auth)
{
	struct server *s = calloc(1, sizeof *s);

	assert_non_null(s);
	s->auth = *auth;
	server_mkdir(s);
	server_start(s);
	return s;
}

static void server_free(struct server *s)
{
	struct stat st;

	event_base_loopbreak(s->base);
	pthread_join(s->thread, NULL);
	control_free(&s->c);
	assert_null(s->c);
	/* control_free removes its socket. */
	assert_int_equal(stat(s->path, &st), -1);
	event_base_free(s->base);
	evlog_free(&s->log);
	rmdir(s->dir);
	free(s);
}

static const struct control_auth default_auth = {
	.owner_uid = (uid_t)-1, .group = (gid_t)-1,
};

/* Waits up to 3 s for evlog_count(id) to reach n. */
static void wait_count(struct server *s, enum evlog_id id, unsigned long n)
{
	for (int i = 0; i < 300 && evlog_count(s->log, id) < n; i++)
		poll(NULL, 0, 10);
	if (evlog_count(s->log, id) < n)
		fail_msg("event %d: got count %lu, want %lu", id, evlog_count(s->log, id), n);
}

static int raw_connect(const char *path)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	assert_true(fd >= 0);
	strcpy(sun.sun_path, path);
	if (connect(fd, (struct sockaddr *)&sun, sizeof sun) < 0)
		fail_msg("connect %s: %s", path, strerror(errno));
	return fd;
}

static void raw_send(int fd, const char *s, size_t len)
{
	assert_int_equal(send(fd, s, len, MSG_NOSIGNAL), (ssize_t)len);
}

/* Reads one response (3 s at most); returns the parse result. */
static enum control_parse raw_response(int fd, struct control_resp_parser *p,
				       struct control_response *resp)
{
	char reason[256];

	memset(resp, 0, sizeof *resp);
	for (;;) {
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		char c;
		size_t used;
		enum control_parse r;

		/* One byte at a time so nothing of a later response is lost. */
		if (poll(&pfd, 1, 3000) != 1 || recv(fd, &c, 1, 0) != 1)
			return CONTROL_PARSE_MORE;
		r = control_resp_parse(p, &c, 1, &used, resp, reason, sizeof reason);
		if (r != CONTROL_PARSE_MORE)
			return r;
	}
}

/* True when the server closes fd within 3 s. */
static bool raw_eof(int fd)
{
	struct pollfd pfd = { .fd = fd, .events = POLLIN };
	char c;

	return poll(&pfd, 1, 3000) == 1 && recv(fd, &c, 1, 0) <= 0;
}

static void expect_request(const char *path, const char *line, int code,
			   struct control_response *resp)
{
	char err[256] = "";
	int rc = control_request(path, line, resp, err, sizeof err);

	if (rc != CONTROL_CLIENT_OK)
		fail_msg("request '%s': got %d (%s), want a response", line, rc, err);
	if (resp->code != code)
		fail_msg("request '%s': got code %d (%s), want %d", line, resp->code,
			 resp->text ? resp->text : "", code);
}

static void test_server_commands(void **state)
{
	struct server *s = server_new(&default_auth);
	struct control_response resp;
	struct stat st;

	assert_int_equal(stat(s->path, &st), 0);
	assert_true(S_ISSOCK(st.st_mode));
	assert_int_equal(st.st_mode & 0777, 0660);
	assert_int_equal(evlog_count(s->log, EV_CONTROL_LISTENING), 1);

	expect_request(s->path, "ping", 200, &resp);
	assert_string_equal(resp.text, "pong");
	control_response_clear(&resp);

	expect_request(s->path, "version", 200, &resp);
	assert_non_null(control_response_get(&resp, "version"));
	assert_string_equal(control_response_get(&resp, "protocol"), "1");
	control_response_clear(&resp);

	expect_request(s->path, "status", 200, &resp);
	assert_int_equal(atomic_load(&s->status_calls), 1);
	assert_string_equal(control_response_get(&resp, "pid"), "4242");
	assert_int_equal(control_response_count(&resp, "listener"), 2);
	assert_string_equal(control_response_get(&resp, "caller"), "0");
	control_response_clear(&resp);

	expect_request(s->path, "echo one  two", 200, &resp);
	assert_int_equal(resp.n_fields, 2);
	assert_string_equal(resp.fields[1].value, "two");
	control_response_clear(&resp);

	expect_request(s->path, "busy", 503, &resp);
	assert_string_equal(resp.text, "spool is busy");
	control_response_clear(&resp);

	expect_request(s->path, "frobnicate", 404, &resp);
	if (!strstr(resp.text, "unknown command 'frobnicate'") ||
	    !strstr(resp.text, "status") || !strstr(resp.text, "ping"))
		fail_msg("404 text '%s' does not list the commands", resp.text);
	control_response_clear(&resp);

	expect_request(s->path, "help", 200, &resp);
	assert_int_equal(control_response_count(&resp, "command"), 3 + 5);
	control_response_clear(&resp);

	wait_count(s, EV_CONTROL_COMMAND, 7);
	server_free(s);
}

/* Waits up to 3 s for h_later to run; returns its handle (and clears it). */
static struct control_deferred *wait_later(struct server *s)
{
	struct control_deferred *d = NULL;

	for (int i = 0; i < 300 && (d = atomic_exchange(&s->later, NULL)) == NULL; i++)
		poll(NULL, 0, 10);
	if (d == NULL)
		fail_msg("the deferring handler did not run");
	return d;
}

/* Finishes d from this (not the loop's) thread with one field. */
static void finish_later(struct control_deferred *d, const char *answer)
{
	struct control_reply *rep = control_reply_new();

	assert_non_null(rep);
	control_reply_add(rep, "answer", "%s", answer);
	control_deferred_finish(d, &rep);
	assert_null(rep);
}

/* True when nothing arrives on fd within ms. */
static bool raw_quiet(int fd, int ms)
{
	struct pollfd pfd = { .fd = fd, .events = POLLIN };

	return poll(&pfd, 1, ms) == 0;
}

/* A deferred answer comes when finished, on another thread, and in order:
 * the request pipelined behind it waits for it. */
static void test_server_deferred(void **state)
{
	struct control_auth auth = default_auth;
	struct server *s = (auth.timeout_ms = 300, server_new(&auth));
	struct control_resp_parser p;
	struct control_response resp;
	const char reqs[] = "CARRIER/1 later\nCARRIER/1 echo next\n";
	struct control_deferred *d;
	int fd = raw_connect(s->path);

	assert_int_equal(control_resp_parser_init(&p), 0);
	raw_send(fd, reqs, sizeof reqs - 1);
	d = wait_later(s);
	assert_false(control_deferred_cancelled(d));
	assert_true(raw_quiet(fd, 100));
	finish_later(d, "first");
	assert_int_equal(raw_response(fd, &p, &resp), CONTROL_PARSE_OK);
	assert_int_equal(resp.code, 200);
	assert_string_equal(control_response_get(&resp, "answer"), "first");
	control_response_clear(&resp);
	assert_int_equal(raw_response(fd, &p, &resp), CONTROL_PARSE_OK);
	assert_string_equal(control_response_get(&resp, "arg"), "next");
	control_response_clear(&resp);

	/* Longer than the request deadline: the deferred one has none. */
	raw_send(fd, "CARRIER/1 later\n", 16);
	d = wait_later(s);
	assert_true(raw_quiet(fd, 1300));
	finish_later(d, "late");
	assert_int_equal(raw_response(fd, &p, &resp), CONTROL_PARSE_OK);
	assert_string_equal(control_response_get(&resp, "answer"), "late");
	control_response_clear(&resp);

	/* Half-closed (shutdown SHUT_WR): still answered, then closed. */
	raw_send(fd, "CARRIER/1 later\n", 16);
	d = wait_later(s);
	assert_int_equal(shutdown(fd, SHUT_WR), 0);
	assert_true(raw_quiet(fd, 100));
	assert_false(control_deferred_cancelled(d));
	finish_later(d, "half");
	assert_int_equal(raw_response(fd, &p, &resp), CONTROL_PARSE_OK);
	assert_string_equal(control_response_get(&resp, "answer"), "half");
	control_response_clear(&resp);
	assert_true(raw_eof(fd));
	close(fd);
	control_resp_parser_free(&p);
	server_free(s);
}

/* The peer goes away before the answer: the handle says so, finishing it
 * later is safe and the reply is dropped; the server goes on. */
static void test_server_deferred_peer_gone(void **state)
{
	struct server *s = server_new(&default_auth);
	struct control_response resp;
	struct control_deferred *d;
	unsigned long before;
	int fd = raw_connect(s->path);

	raw_send(fd, "CARRIER/1 later\n", 16);
	d = wait_later(s);
	close(fd);
	for (int i = 0; i < 300 && !control_deferred_cancelled(d); i++)
		poll(NULL, 0, 10);
	assert_true(control_deferred_cancelled(d));
	before = evlog_count(s->log, EV_CONTROL_COMMAND);
	finish_later(d, "nobody");
	wait_count(s, EV_CONTROL_COMMAND, before + 1);
	expect_request(s->path, "ping", 200, &resp);
	control_response_clear(&resp);

	/* Finished after the loop stopped: control_free() drops the reply. */
	fd = raw_connect(s->path);
	raw_send(fd, "CARRIER/1 later\n", 16);
	d = wait_later(s);
	event_base_loopbreak(s->base);
	pthread_join(s->thread, NULL);
	assert_int_equal(control_deferred_count(s->c), 1);
	finish_later(d, "too late");
	control_free(&s->c);
	close(fd);
	event_base_free(s->base);
	evlog_free(&s->log);
	rmdir(s->dir);
	free(s);
}

static void test_server_pipelined_and_errors(void **state)
{
	struct server *s = server_new(&default_auth);
	struct control_resp_parser p;
	struct control_response resp;
	const char reqs[] = "CARRIER/1 ping\nstatus\nCARRIER/1 Bad\nCARRIER/1 version\n";
	int fd = raw_connect(s->path);

	assert_int_equal(control_resp_parser_init(&p), 0);
	raw_send(fd, reqs, sizeof reqs - 1);
	assert_int_equal(raw_response(fd, &p, &resp), CONTROL_PARSE_OK);
	assert_int_equal(resp.code, 200);
	control_response_clear(&resp);
	assert_int_equal(raw_response(fd, &p, &resp), CONTROL_PARSE_OK);
	assert_int_equal(resp.code, 400);
	assert_non_null(strstr(resp.text, "CARRIER/1"));
	control_response_clear(&resp);
	assert_int_equal(raw_response(fd, &p, &resp), CONTROL_PARSE_OK);
	assert_int_equal(resp.code, 400);
	control_response_clear(&resp);
	assert_int_equal(raw_response(fd, &p, &resp), CONTROL_PARSE_OK);
	assert_int_equal(resp.code, 200);
	assert_non_null(control_response_get(&resp, "version"));
	control_response_clear(&resp);

	/* A version the server does not speak: named, then closed. */
	raw_send(fd, "CARRIER/2 ping\n", 15);
	assert_int_equal(raw_response(fd, &p, &resp), CONTROL_PARSE_OK);
	assert_int_equal(resp.code, 505);
	assert_non_null(strstr(resp.text, "CARRIER/1"));
	control_response_clear(&resp);
	assert_true(raw_eof(fd));
	close(fd);
	wait_count(s, EV_CONTROL_BAD_REQUEST, 3);
	control_resp_parser_free(&p);
	server_free(s);
}

static void test_server_too_long(void **state)
{
	struct server *s = server_new(&default_auth);
	struct control_resp_parser p;
	struct control_response resp;
	char big[4096];
	int fd = raw_connect(s->path);

	memset(big, 'a', sizeof big);
	memcpy(big, "CARRIER/1 echo ", 15);
	assert_int_equal(control_resp_parser_init(&p), 0);
	raw_send(fd, big, sizeof big);
	assert_int_equal(raw_response(fd, &p, &resp), CONTROL_PARSE_OK);
	assert_int_equal(resp.code, CONTROL_CODE_TOO_LONG);
	control_response_clear(&resp);
	assert_true(raw_eof(fd));
	close(fd);
	wait_count(s, EV_CONTROL_REQUEST_TOO_LONG, 1);

	/* The server still answers a new client. */
	expect_request(s->path, "ping", 200, &resp);
	control_response_clear(&resp);
	control_resp_parser_free(&p);
	server_free(s);
}

static void test_server_timeout(void **state)
{
	struct control_auth auth = default_auth;
	struct server *s;
	struct control_resp_parser p;
	struct control_response resp;
	long long t0;
	struct timespec ts;
	int fd;

	auth.timeout_ms = 200;
	s = server_new(&auth);
	fd = raw_connect(s->path);
	assert_int_equal(control_resp_parser_init(&p), 0);
	clock_gettime(CLOCK_MONOTONIC, &ts);
	t0 = ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
	/* A trickling peer: the deadline holds for the whole request. */
	for (int i = 0; i < 3; i++) {
		raw_send(fd, "CA", 2);
		poll(NULL, 0, 80);
	}
	assert_int_equal(raw_response(fd, &p, &resp), CONTROL_PARSE_OK);
	assert_int_equal(resp.code, CONTROL_CODE_TIMEOUT);
	clock_gettime(CLOCK_MONOTONIC, &ts);
	assert_true(ts.tv_sec * 1000LL + ts.tv_nsec / 1000000 - t0 < 1000);
	control_response_clear(&resp);
	assert_true(raw_eof(fd));
	close(fd);
	wait_count(s, EV_CONTROL_REQUEST_TIMEOUT, 1);
	control_resp_parser_free(&p);
	server_free(s);
}

static void test_server_per_uid_cap(void **state)
{
	struct control_auth auth = default_auth;
	struct control_resp_parser p;
	struct control_response resp;
	struct server *s;
	int fds[2];
	bool ok = false;

	auth.max_per_uid = 2;
	s = server_new(&auth);
	assert_int_equal(control_resp_parser_init(&p), 0);
	for (int i = 0; i < 2; i++) {
		/* Answered, so the server holds the connection. */
		fds[i] = raw_connect(s->path);
		raw_send(fds[i], "CARRIER/1 ping\n", 15);
		assert_int_equal(raw_response(fds[i], &p, &resp), CONTROL_PARSE_OK);
		assert_int_equal(resp.code, 200);
		control_response_clear(&resp);
	}
	expect_request(s->path, "ping", CONTROL_CODE_TOO_MANY, &resp);
	assert_non_null(strstr(resp.text, "too many control connections for uid 0"));
	control_response_clear(&resp);
	assert_int_equal(evlog_count(s->log, EV_CONTROL_PER_UID_LIMIT), 1);

	/* One closed: a new one is served again (once the server noticed). */
	close(fds[0]);
	for (int i = 0; i < 100 && !ok; i++) {
		char err[256];

		if (control_request(s->path, "ping", &resp, err, sizeof err) == 0)
			ok = resp.code == 200;
		control_response_clear(&resp);
		if (!ok)
			poll(NULL, 0, 20);
	}
	assert_true(ok);
	close(fds[1]);
	control_resp_parser_free(&p);
	server_free(s);
}

/* Runs fn in a child that dropped to nobody, with `groups` as its
 * supplementary groups; returns the child's exit status. */
static int as_nobody(int (*fn)(const char *path), const char *path,
		     const gid_t *groups, size_t ngroups)
{
	pid_t pid = fork();
	int st;

	assert_true(pid >= 0);
	if (pid == 0) {
		if (setgroups(ngroups, groups) < 0 || setgid(NOBODY) < 0 ||
		    setuid(NOBODY) < 0)
			_exit(90);
		_exit(fn(path));
	}
	assert_int_equal(waitpid(pid, &st, 0), pid);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 99;
}

static int child_ping(const char *path, int want_rc, int want_code,
		      const char *want_text)
{
	struct control_response resp;
	char err[256] = "";
	int rc = control_request(path, "ping", &resp, err, sizeof err), bad = 0;

	if (rc != want_rc) {
		fprintf(stderr, "child: got rc %d (%s), want %d\n", rc, err, want_rc);
		bad = 1;
	} else if (rc == 0 && resp.code != want_code) {
		fprintf(stderr, "child: got code %d (%s), want %d\n", resp.code,
			resp.text, want_code);
		bad = 2;
	} else if (want_text && !strstr(rc == 0 ? resp.text : err, want_text)) {
		fprintf(stderr, "child: '%s' lacks '%s'\n", rc == 0 ? resp.text : err,
			want_text);
		bad = 3;
	}
	control_response_clear(&resp);
	return bad;
}

static int child_refused(const char *path)
{
	return child_ping(path, CONTROL_CLIENT_OK, CONTROL_CODE_DENIED,
			  "permission denied: uid 65534");
}

static int child_allowed(const char *path)
{
	return child_ping(path, CONTROL_CLIENT_OK, 200, "pong");
}

static int child_eacces(const char *path)
{
	return child_ping(path, CONTROL_CLIENT_DENIED, 0, "permission denied on ");
}

static void test_peer_unauthorized(void **state)
{
	struct server *s;

	if (geteuid() != 0)
		skip();
	s = server_new(&default_auth);
	/* The file mode keeps nobody out first ... */
	assert_int_equal(as_nobody(child_eacces, s->path, NULL, 0), 0);
	/* ... and with a careless mode, the credential check still does. */
	assert_int_equal(chmod(s->path, 0666), 0);
	assert_int_equal(as_nobody(child_refused, s->path, NULL, 0), 0);
	wait_count(s, EV_CONTROL_PEER_REFUSED, 1);
	server_free(s);
}

static void test_peer_group_member(void **state)
{
	struct control_auth auth = default_auth;
	const gid_t member[] = { 100, TEST_GROUP };
	struct server *s;
	struct stat st;

	if (geteuid() != 0)
		skip();
	auth.group = TEST_GROUP;
	auth.group_name = "testgroup";
	s = server_new(&auth);
	assert_int_equal(stat(s->path, &st), 0);
	assert_int_equal(st.st_gid, TEST_GROUP);
	/* A supplementary member reaches the socket and is served. */
	assert_int_equal(as_nobody(child_allowed, s->path, member, 2), 0);
	/* A non-member, even with a careless mode, is refused by name. */
	assert_int_equal(chmod(s->path, 0666), 0);
	assert_int_equal(as_nobody(child_refused, s->path, NULL, 0), 0);
	wait_count(s, EV_CONTROL_PEER_REFUSED, 1);
	server_free(s);
}

static void test_client_not_running(void **state)
{
	struct server *s = calloc(1, sizeof *s);
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	struct control_response resp;
	char err[256];
	int fd;

	server_mkdir(s);
	assert_int_equal(control_request(s->path, "status", &resp, err, sizeof err),
			 CONTROL_CLIENT_NOT_RUNNING);
	assert_non_null(strstr(err, "carrierd is not running (no socket at "));
	assert_non_null(strstr(err, s->path));
	control_response_clear(&resp);

	/* A stale socket: bound, nobody listening. */
	fd = socket(AF_UNIX, SOCK_STREAM, 0);
	strcpy(sun.sun_path, s->path);
	assert_int_equal(bind(fd, (struct sockaddr *)&sun, sizeof sun), 0);
	close(fd);
	assert_int_equal(control_request(s->path, "status", &resp, err, sizeof err),
			 CONTROL_CLIENT_NOT_RUNNING);
	assert_non_null(strstr(err, "not running"));
	control_response_clear(&resp);

	/* The server replaces the stale socket and says so. */
	server_start(s);
	assert_int_equal(evlog_count(s->log, EV_CONTROL_STALE_REMOVED), 1);
	expect_request(s->path, "ping", 200, &resp);
	control_response_clear(&resp);
	server_free(s);
}

static void test_server_refuses_live_socket(void **state)
{
	struct server *s = server_new(&default_auth);
	struct event_base *base = event_base_new();
	struct control_response resp;
	struct control *c2;
	char err[256] = "", file[160];
	int fd;

	c2 = control_new(base, s->path, &default_auth, NULL, NULL, NULL, err, sizeof err);
	assert_null(c2);
	assert_non_null(strstr(err, "another carrierd"));
	/* The first server is untouched. */
	expect_request(s->path, "ping", 200, &resp);
	control_response_clear(&resp);

	/* Not a socket: left alone, refused. */
	snprintf(file, sizeof file, "%s/plain", s->dir);
	fd = open(file, O_CREAT | O_WRONLY, 0600);
	assert_true(fd >= 0);
	close(fd);
	c2 = control_new(base, file, &default_auth, NULL, NULL, NULL, err, sizeof err);
	assert_null(c2);
	assert_non_null(strstr(err, "not a socket"));
	assert_int_equal(unlink(file), 0);

	/* A path too long for sun_path. */
	memset(file, 'x', sizeof file - 1);
	file[sizeof file - 1] = '\0';
	assert_null(control_new(base, file, &default_auth, NULL, NULL, NULL, err, sizeof err));
	assert_non_null(strstr(err, "longer than"));
	assert_int_equal(control_request(file, "ping", &resp, err, sizeof err),
			 CONTROL_CLIENT_FAILED);
	control_response_clear(&resp);
	event_base_free(base);
	server_free(s);
}

/* Out of descriptors: the listener pauses (an event) instead of spinning,
 * and serves the waiting client once descriptors are back. */
static void test_server_emfile(void **state)
{
	struct server *s = server_new(&default_auth);
	struct control_resp_parser p;
	struct control_response resp;
	struct rlimit old, low;
	int fillers[512], n = 0, fd;

	assert_int_equal(getrlimit(RLIMIT_NOFILE, &old), 0);
	low = old;
	low.rlim_cur = 128;
	assert_int_equal(setrlimit(RLIMIT_NOFILE, &low), 0);
	while (n < 512 && (fd = dup(0)) >= 0)
		fillers[n++] = fd;
	assert_int_equal(errno, EMFILE);
	if (n < 2) {
		/* Already over 128 descriptors: this runner cannot play. */
		assert_int_equal(setrlimit(RLIMIT_NOFILE, &old), 0);
		while (n > 0)
			close(fillers[--n]);
		server_free(s);
		skip();
	}
	close(fillers[--n]);
	fd = raw_connect(s->path);      /* takes the last descriptor */
	wait_count(s, EV_CONTROL_ACCEPT_PAUSED, 1);
	/* Paused, not spinning: no second pause within a few ms. */
	poll(NULL, 0, 100);
	assert_int_equal(evlog_count(s->log, EV_CONTROL_ACCEPT_PAUSED), 1);
	while (n > 0)
		close(fillers[--n]);
	assert_int_equal(setrlimit(RLIMIT_NOFILE, &old), 0);

	assert_int_equal(control_resp_parser_init(&p), 0);
	raw_send(fd, "CARRIER/1 ping\n", 15);
	assert_int_equal(raw_response(fd, &p, &resp), CONTROL_PARSE_OK);
	assert_int_equal(resp.code, 200);
	control_response_clear(&resp);
	control_resp_parser_free(&p);
	close(fd);
	server_free(s);
}

/* Hostile peers: many bad requests end the session; a peer that never
 * reads its answers is cut off by the write timeout; the server keeps
 * answering others meanwhile. */
static void test_server_hostile(void **state)
{
	struct control_auth auth = default_auth;
	struct control_resp_parser p;
	struct control_response resp;
	struct server *s;
	char *flood;
	size_t n = 0;
	int fd, i;

	auth.timeout_ms = 300;
	s = server_new(&auth);
	assert_int_equal(control_resp_parser_init(&p), 0);
	fd = raw_connect(s->path);
	for (i = 0; i < 20; i++)
		raw_send(fd, "CARRIER/1 NOPE\n", 15);
	for (i = 0; i < 10; i++) {
		assert_int_equal(raw_response(fd, &p, &resp), CONTROL_PARSE_OK);
		assert_int_equal(resp.code, 400);
		if (i == 9)
			assert_non_null(strstr(resp.text, "10 bad requests, closing"));
		control_response_clear(&resp);
	}
	assert_true(raw_eof(fd));
	close(fd);

	/* Pipelines far more answers than it reads. */
	flood = malloc(15 * 20000);
	assert_non_null(flood);
	for (i = 0; i < 20000; i++, n += 15)
		memcpy(flood + n, "CARRIER/1 help\n", 15);
	fd = raw_connect(s->path);
	for (size_t off = 0; off < n;) {
		struct pollfd pfd = { .fd = fd, .events = POLLOUT };
		ssize_t w;

		if (poll(&pfd, 1, 500) != 1)
			break;          /* the server stopped reading: good */
		w = send(fd, flood + off, n - off, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (w <= 0)
			break;
		off += (size_t)w;
	}
	expect_request(s->path, "ping", 200, &resp);
	control_response_clear(&resp);
	/* Not reading past the write timeout: the server hangs up. */
	poll(NULL, 0, 3 * auth.timeout_ms);
	for (int reads = 0;; reads++) {
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		char sink[65536];

		if (reads > 10000 || poll(&pfd, 1, 2000) != 1)
			fail_msg("the server kept a peer that does not read its answers");
		if (recv(fd, sink, sizeof sink, 0) <= 0)
			break;
	}
	close(fd);
	free(flood);
	control_resp_parser_free(&p);
	server_free(s);
}

/* Runs cli_status_main with stdout captured into out (NUL-terminated). */
static int run_status(const char *conf, bool json, char *out, size_t size)
{
	char *argv[] = { "status", "-c", (char *)conf, "--json", NULL };
	char tmpl[] = "/tmp/test_control_out.XXXXXX";
	int tmp = mkstemp(tmpl), saved, rc;
	ssize_t n;

	assert_true(tmp >= 0);
	unlink(tmpl);
	fflush(stdout);
	saved = dup(1);
	assert_int_equal(dup2(tmp, 1), 1);
	rc = cli_status_main(json ? 4 : 3, argv);
	fflush(stdout);
	assert_int_equal(dup2(saved, 1), 1);
	close(saved);
	n = pread(tmp, out, size - 1, 0);
	assert_true(n >= 0);
	out[n] = '\0';
	close(tmp);
	return rc;
}

static void test_cli_status(void **state)
{
	struct server *s = server_new(&default_auth);
	char conf[200], out[4096], want[512], dir[64];
	FILE *f;

	snprintf(conf, sizeof conf, "%s/carrier.conf", s->dir);
	f = fopen(conf, "w");
	assert_non_null(f);
	fprintf(f, "[control]\nsocket = %s\n", s->path);
	fclose(f);

	assert_int_equal(run_status(conf, false, out, sizeof out), 0);
	snprintf(want, sizeof want,
		 "carrierd: running\n"
		 "  pid:       4242\n"
		 "  version:   9.9.9\n"
		 "  uptime:    1h 1m 1s\n"
		 "  listeners: 127.0.0.1:2525, [::1]:2525\n"
		 "  spool:     ./var/spool\n"
		 "  socket:    %s\n"
		 "  caller:    0\n", s->path);
	assert_string_equal(out, want);

	assert_int_equal(run_status(conf, true, out, sizeof out), 0);
	snprintf(want, sizeof want,
		 "{\"running\":true,\"pid\":4242,\"version\":\"9.9.9\",\"uptime\":3661,"
		 "\"spool\":\"./var/spool\",\"listeners\":[\"127.0.0.1:2525\",\"[::1]:2525\"],"
		 "\"socket\":\"%s\",\"caller\":\"0\"}\n", s->path);
	assert_string_equal(out, want);
	assert_int_equal(atomic_load(&s->status_calls), 2);

	/* Stopped: exit 3, and the reason names the socket. */
	strcpy(dir, s->dir);
	server_free(s);
	assert_int_equal(run_status(conf, false, out, sizeof out), 3);
	assert_non_null(strstr(out, "carrierd is not running (no socket at "));
	assert_int_equal(run_status(conf, true, out, sizeof out), 3);
	assert_non_null(strstr(out, "{\"running\":false,\"reason\":\"carrierd is not running"));
	unlink(conf);
	rmdir(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_request_table),
		cmocka_unit_test(test_request_bounds),
		cmocka_unit_test(test_request_pipelined),
		cmocka_unit_test(test_request_format),
		cmocka_unit_test(test_escape),
		cmocka_unit_test(test_reply_roundtrip),
		cmocka_unit_test(test_reply_bounds),
		cmocka_unit_test(test_response_table),
		cmocka_unit_test(test_response_bounds),
		cmocka_unit_test(test_server_commands),
		cmocka_unit_test(test_server_pipelined_and_errors),
		cmocka_unit_test(test_server_deferred),
		cmocka_unit_test(test_server_deferred_peer_gone),
		cmocka_unit_test(test_server_too_long),
		cmocka_unit_test(test_server_timeout),
		cmocka_unit_test(test_server_per_uid_cap),
		cmocka_unit_test(test_peer_unauthorized),
		cmocka_unit_test(test_peer_group_member),
		cmocka_unit_test(test_client_not_running),
		cmocka_unit_test(test_server_refuses_live_socket),
		cmocka_unit_test(test_server_emfile),
		cmocka_unit_test(test_server_hostile),
		cmocka_unit_test(test_cli_status),
	};

	/* The tests stop the loop from the main thread. */
	evthread_use_pthreads();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
