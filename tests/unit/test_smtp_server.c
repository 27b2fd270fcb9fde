/* Unit tests for the SMTP server engine driven over a socketpair with a
 * real spool in a temporary directory: what is stored (envelope, DSN
 * parameters, the Received header), the no-spool answer, and the size of an
 * idle session. */
#include "test_util.h"

#include <event2/event.h>
#include <event2/thread.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "conf.h"
#include "smtp_server.h"
#include "smtp_session.h"
#include "spool.h"

struct fixture {
	char dir[64];
	struct event_base *base;
	struct carrier_conf *conf;
	struct spool *spool;
	struct smtp_server *srv;
	int fd;                 /* client end */
	char buf[65536];        /* replies read, not yet consumed */
	size_t len;
};

static struct fixture *fixture_new(bool with_spool, const char *conf_text)
{
	struct fixture *f = calloc(1, sizeof *f);
	struct conf_errors errs = { 0 };
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons(40000) };
	char err[256];
	int sv[2];

	assert_non_null(f);
	snprintf(f->dir, sizeof f->dir, "/tmp/carrier-smtp-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	f->base = event_base_new();
	assert_non_null(f->base);
	f->conf = conf_load_string("test.conf", conf_text, &errs);
	assert_non_null(f->conf);
	if (with_spool) {
		f->spool = spool_open(f->dir, NULL, NULL, err, sizeof err);
		if (f->spool == NULL)
			fail_msg("spool_open: %s", err);
	}
	f->srv = smtp_server_new(f->base, f->conf, NULL, NULL, f->spool, err, sizeof err);
	assert_non_null(f->srv);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	fcntl(sv[0], F_SETFL, O_NONBLOCK);
	sin.sin_addr.s_addr = htonl(0x7f000001);
	assert_int_equal(smtp_server_accept(f->srv, sv[0], (struct sockaddr *)&sin, sizeof sin), 0);
	f->fd = sv[1];
	return f;
}

static void fixture_free(struct fixture *f)
{
	char cmd[128];

	close(f->fd);
	smtp_server_free(&f->srv);
	spool_close(&f->spool);
	event_base_free(f->base);
	conf_free(&f->conf);
	snprintf(cmd, sizeof cmd, "rm -rf %s", f->dir);
	if (system(cmd) != 0)
		(void)0;
	free(f);
}

/* Runs the loop until one whole reply (possibly multi-line) is buffered and
 * returns it (NUL-terminated, static until the next call). */
static const char *next_reply(struct fixture *f)
{
	static char out[8192];
	time_t deadline = time(NULL) + 10;

	for (;;) {
		/* a complete reply: lines up to one whose 4th char is ' ' */
		size_t start = 0;

		for (size_t i = 0; i < f->len; i++) {
			if (f->buf[i] != '\n')
				continue;
			if (i - start >= 3 && f->buf[start + 3] != '-') {
				size_t n = i + 1;

				assert_true(n < sizeof out);
				memcpy(out, f->buf, n);
				out[n] = '\0';
				memmove(f->buf, f->buf + n, f->len - n);
				f->len -= n;
				return out;
			}
			start = i + 1;
		}
		if (time(NULL) > deadline)
			fail_msg("no complete reply; have \"%.*s\"", (int)f->len, f->buf);
		event_base_loop(f->base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
		{
			struct pollfd p = { .fd = f->fd, .events = POLLIN };

			if (poll(&p, 1, 10) > 0) {
				ssize_t r = read(f->fd, f->buf + f->len, sizeof f->buf - f->len);

				if (r <= 0)
					fail_msg("server closed; have \"%.*s\"", (int)f->len, f->buf);
				f->len += (size_t)r;
			}
		}
	}
}

static void send_str(struct fixture *f, const char *s)
{
	assert_int_equal(write(f->fd, s, strlen(s)), (ssize_t)strlen(s));
}

static void expect(struct fixture *f, const char *send, const char *want_prefix)
{
	const char *got;

	if (send != NULL)
		send_str(f, send);
	got = next_reply(f);
	if (strncmp(got, want_prefix, strlen(want_prefix)) != 0)
		fail_msg("after \"%s\": got \"%s\", want \"%s...\"", send ? send : "", got,
			 want_prefix);
}

static void qid_of(const char *reply, char qid[SPOOL_QID_SIZE])
{
	const char *p = strstr(reply, "queued as ");

	assert_non_null(p);
	memcpy(qid, p + 10, SPOOL_QID_LEN);
	qid[SPOOL_QID_LEN] = '\0';
}

static void test_stored_envelope_and_received(void **state)
{
	struct fixture *f = fixture_new(true, "[server]\nhostname = mx.unit.example\n");
	struct spool_envelope *env = NULL;
	struct spool_body *b = NULL;
	char qid[SPOOL_QID_SIZE], err[256];
	const char *r, *body;
	size_t len;

	expect(f, NULL, "220 mx.unit.example ESMTP");
	expect(f, "EHLO client.example\r\n", "250-mx.unit.example");
	expect(f, "MAIL FROM:<a@sender.example> RET=HDRS ENVID=e+2B1 BODY=8BITMIME\r\n", "250 2.1.0");
	expect(f, "RCPT TO:<u@localhost> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;orig@x.example\r\n",
	       "250 2.1.5");
	expect(f, "DATA\r\n", "354 ");
	send_str(f, "Subject: t\r\n\r\n..dot\r\nbody\r\n.\r\n");
	r = next_reply(f);
	assert_contains(r, "250 2.0.0 Ok: queued as ");
	qid_of(r, qid);

	assert_int_equal(spool_load(f->spool, qid, &env, err, sizeof err), 0);
	assert_string_equal(env->sender, "a@sender.example");
	assert_int_equal(env->n_rcpts, 1);
	assert_string_equal(env->rcpts[0].addr, "u@localhost");
	assert_string_equal(env->rcpts[0].orcpt, "rfc822;orig@x.example");
	assert_int_equal(env->rcpts[0].notify, SPOOL_NOTIFY_SUCCESS | SPOOL_NOTIFY_DELAY);
	assert_int_equal(env->dsn_ret, SPOOL_RET_HDRS);
	assert_string_equal(env->envid, "e+2B1");
	assert_int_equal(env->body_type, SPOOL_BODY_8BITMIME);
	assert_string_equal(env->client_addr, "127.0.0.1");
	assert_string_equal(env->client_helo, "client.example");
	spool_envelope_free(&env);

	assert_int_equal(spool_body_open(f->spool, qid, &b, err, sizeof err), 0);
	body = spool_body_mem(b, &len);
	assert_non_null(body);
	{
		char *copy = strndup(body, len);

		assert_true(strncmp(copy, "Received: from client.example ([127.0.0.1])\r\n"
				    "\tby mx.unit.example (carrier) with ESMTP id ", 89) == 0);
		assert_contains(copy, qid);
		assert_contains(copy, "\r\n\tfor <u@localhost>;\r\n\t");
		assert_contains(copy, " +0000\r\nSubject: t\r\n\r\n.dot\r\nbody\r\n");
		assert_true(len >= 6 && memcmp(copy + len - 6, "body\r\n", 6) == 0);
		free(copy);
	}
	spool_body_close(&b);
	expect(f, "QUIT\r\n", "221 2.0.0");
	fixture_free(f);
}

static void test_received_helo_and_utf8(void **state)
{
	struct fixture *f = fixture_new(true, "[server]\nhostname = mx.unit.example\n");
	struct spool_body *b = NULL;
	char qid[SPOOL_QID_SIZE], err[256], *copy;
	const char *r, *body;
	size_t len;

	expect(f, NULL, "220 ");
	expect(f, "EHLO bad(helo)\r\n", "250-");
	expect(f, "MAIL FROM:<a@b.example> SMTPUTF8\r\n", "250 2.1.0");
	expect(f, "RCPT TO:<x@localhost>\r\n", "250 2.1.5");
	expect(f, "RCPT TO:<y@localhost>\r\n", "250 2.1.5");
	send_str(f, "BDAT 8 LAST\r\nSubj: x\n");
	r = next_reply(f);
	assert_contains(r, "250 2.0.0 Ok: queued as ");
	qid_of(r, qid);
	assert_int_equal(spool_body_open(f->spool, qid, &b, err, sizeof err), 0);
	body = spool_body_mem(b, &len);
	assert_non_null(body);
	copy = strndup(body, len);
	/* An invalid HELO goes in a comment, defused; two recipients: no "for". */
	assert_contains(copy, "Received: from [127.0.0.1] ([127.0.0.1] helo=bad?helo?)\r\n");
	assert_contains(copy, "with UTF8SMTP id ");
	assert_null(strstr(copy, "for <"));
	assert_true(len >= 8 && memcmp(copy + len - 8, "Subj: x\n", 8) == 0);
	free(copy);
	spool_body_close(&b);
	fixture_free(f);
}

static void test_no_spool_answers_451(void **state)
{
	struct fixture *f = fixture_new(false, "");

	expect(f, NULL, "220 ");
	expect(f, "HELO c.example\r\n", "250 ");
	expect(f, "MAIL FROM:<a@b.example>\r\n", "250 2.1.0");
	expect(f, "RCPT TO:<u@localhost>\r\n", "250 2.1.5");
	expect(f, "DATA\r\n", "451 4.3.0");
	expect(f, "NOOP\r\n", "250 2.0.0");
	fixture_free(f);
}

static void test_idle_session_is_small(void **state)
{
	/* The engine's own per-connection state; libevent's bufferevent and
	 * its two evbuffers come on top (measured in the report). */
	assert_true(sizeof(struct smtp_session) <= 256);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_stored_envelope_and_received),
		cmocka_unit_test(test_received_helo_and_utf8),
		cmocka_unit_test(test_no_spool_answers_451),
		cmocka_unit_test(test_idle_session_is_small),
	};

	evthread_use_pthreads();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
