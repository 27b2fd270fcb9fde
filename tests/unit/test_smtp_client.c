/*
 * Unit tests for smtp_client: the client runs on a real libevent loop
 * against a small scripted SMTP/LMTP server living on the same loop (a
 * loopback listener).  The server answers by recipient local part:
 *   ok*    250 at RCPT (and at the dot)
 *   temp*  451 4.3.0 at RCPT
 *   perm*  550 5.1.1 at RCPT
 *   dtemp* 250 at RCPT, 452 4.2.2 at the dot (LMTP only)
 * and records everything it receives (the transcript) for assertions.
 */
#include <arpa/inet.h>
#include <signal.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "test_util.h"

#include "conf.h"
#include "smtp_client.h"

/* ---- the scripted server --------------------------------------------------- */

struct srv_opts {
	bool lmtp;
	bool no_pipelining;
	bool no_8bitmime;
	bool no_smtputf8;
	bool no_dsn;
	bool ehlo_fails;          /* 500 to EHLO */
	bool silent;              /* never greet */
	unsigned greeting;        /* 0 = 220 */
	const char *raw_greeting; /* sent as is instead of a greeting */
	const char *mail_raw;     /* sent as is as the reply to MAIL */
	unsigned mail_code;       /* 0 = 250 */
	uint64_t size;            /* SIZE limit advertised (0 = "SIZE") */
	bool close_after_dot;     /* hang up right after the dot's reply */
};

struct srv {
	struct srv_opts o;
	struct evconnlistener *lis;
	struct event_base *base;
	unsigned short port;
	unsigned accepted;
	char transcript[65536];
	size_t tlen;
	struct srv_conn *conns;
};

struct srv_conn {
	struct srv *s;
	struct srv_conn *next;
	struct bufferevent *bev;
	bool in_data;
	bool closing;
	char rcpts[16][64];
	size_t n_rcpts;
};

static void srv_log(struct srv *s, const char *line, size_t len)
{
	if (s->tlen + len + 2 < sizeof s->transcript) {
		memcpy(s->transcript + s->tlen, line, len);
		s->tlen += len;
		s->transcript[s->tlen++] = '\n';
		s->transcript[s->tlen] = '\0';
	}
}

static bool prefix(const char *s, const char *p)
{
	return strncmp(s, p, strlen(p)) == 0;
}

static void srv_command(struct srv_conn *sc, struct bufferevent *bev, char *line)
{
	struct srv *s = sc->s;
	struct evbuffer *out = bufferevent_get_output(bev);

	if (prefix(line, "EHLO") || prefix(line, "LHLO")) {
		if (s->o.ehlo_fails) {
			evbuffer_add_printf(out, "500 5.5.1 what\r\n");
			return;
		}
		evbuffer_add_printf(out, "250-test.example\r\n");
		if (!s->o.no_pipelining)
			evbuffer_add_printf(out, "250-PIPELINING\r\n");
		if (!s->o.no_8bitmime)
			evbuffer_add_printf(out, "250-8BITMIME\r\n");
		if (!s->o.no_smtputf8)
			evbuffer_add_printf(out, "250-SMTPUTF8\r\n");
		if (!s->o.no_dsn)
			evbuffer_add_printf(out, "250-DSN\r\n");
		if (s->o.size)
			evbuffer_add_printf(out, "250-SIZE %llu\r\n", (unsigned long long)s->o.size);
		else
			evbuffer_add_printf(out, "250-SIZE\r\n");
		evbuffer_add_printf(out, "250 ENHANCEDSTATUSCODES\r\n");
	} else if (prefix(line, "HELO")) {
		evbuffer_add_printf(out, "250 test.example\r\n");
	} else if (prefix(line, "MAIL")) {
		sc->n_rcpts = 0;
		if (s->o.mail_raw)
			evbuffer_add(out, s->o.mail_raw, strlen(s->o.mail_raw));
		else if (s->o.mail_code)
			evbuffer_add_printf(out, "%u 4.3.2 not now\r\n", s->o.mail_code);
		else
			evbuffer_add_printf(out, "250 2.1.0 ok\r\n");
	} else if (prefix(line, "RCPT TO:<")) {
		const char *lp = line + 9;

		if (prefix(lp, "temp")) {
			evbuffer_add_printf(out, "451 4.3.0 try later\r\n");
		} else if (prefix(lp, "perm")) {
			evbuffer_add_printf(out, "550 5.1.1 no such user\r\n");
		} else {
			if (sc->n_rcpts < 16)
				snprintf(sc->rcpts[sc->n_rcpts++], 64, "%s", lp);
			evbuffer_add_printf(out, "250 2.1.5 ok\r\n");
		}
	} else if (prefix(line, "DATA")) {
		if (sc->n_rcpts == 0) {
			evbuffer_add_printf(out, "554 5.5.1 no valid recipients\r\n");
		} else {
			sc->in_data = true;
			evbuffer_add_printf(out, "354 go ahead\r\n");
		}
	} else if (prefix(line, "RSET") || prefix(line, "NOOP")) {
		sc->n_rcpts = 0;
		evbuffer_add_printf(out, "250 2.0.0 ok\r\n");
	} else if (prefix(line, "QUIT")) {
		evbuffer_add_printf(out, "221 2.0.0 bye\r\n");
	} else {
		evbuffer_add_printf(out, "500 5.5.2 unknown\r\n");
	}
}

static void srv_read_cb(struct bufferevent *bev, void *arg)
{
	struct srv_conn *sc = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	struct evbuffer *out = bufferevent_get_output(bev);
	size_t len;
	char *line;

	while ((line = evbuffer_readln(in, &len, EVBUFFER_EOL_CRLF_STRICT)) != NULL) {
		srv_log(sc->s, line, len);
		if (sc->in_data) {
			if (strcmp(line, ".") == 0) {
				sc->in_data = false;
				if (!sc->s->o.lmtp) {
					evbuffer_add_printf(out, "250 2.0.0 queued as X\r\n");
				} else {
					for (size_t i = 0; i < sc->n_rcpts; i++)
						if (prefix(sc->rcpts[i], "dtemp"))
							evbuffer_add_printf(out, "452 4.2.2 mailbox full\r\n");
						else
							evbuffer_add_printf(out, "250 2.0.0 delivered\r\n");
				}
				sc->n_rcpts = 0;
				sc->closing = sc->s->o.close_after_dot;
			}
		} else {
			srv_command(sc, bev, line);
		}
		free(line);
	}
}

static void srv_event_cb(struct bufferevent *bev, short what, void *arg);

static void srv_write_cb(struct bufferevent *bev, void *arg)
{
	struct srv_conn *sc = arg;

	if (sc->closing)
		srv_event_cb(bev, BEV_EVENT_EOF, sc);
}

static void srv_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct srv_conn *sc = arg;

	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
		for (struct srv_conn **p = &sc->s->conns; *p != NULL; p = &(*p)->next)
			if (*p == sc) {
				*p = sc->next;
				break;
			}
		free(sc);
		bufferevent_free(bev);
	}
}

static void srv_accept_cb(struct evconnlistener *lis, evutil_socket_t fd,
			  struct sockaddr *sa, int salen, void *arg)
{
	struct srv *s = arg;
	struct bufferevent *bev = bufferevent_socket_new(s->base, fd, BEV_OPT_CLOSE_ON_FREE);
	struct srv_conn *sc = calloc(1, sizeof *sc);

	(void)lis;
	(void)sa;
	(void)salen;
	sc->s = s;
	sc->bev = bev;
	sc->next = s->conns;
	s->conns = sc;
	s->accepted++;
	bufferevent_setcb(bev, srv_read_cb, srv_write_cb, srv_event_cb, sc);
	bufferevent_enable(bev, EV_READ | EV_WRITE);
	if (s->o.raw_greeting) {
		evbuffer_add(bufferevent_get_output(bev), s->o.raw_greeting,
			     strlen(s->o.raw_greeting));
	} else if (!s->o.silent) {
		if (s->o.greeting)
			evbuffer_add_printf(bufferevent_get_output(bev), "%u 5.7.1 go away\r\n",
					    s->o.greeting);
		else
			evbuffer_add_printf(bufferevent_get_output(bev), "220 test.example ESMTP\r\n");
	}
}

static struct srv *srv_new(struct event_base *base, const struct srv_opts *o)
{
	struct srv *s = calloc(1, sizeof *s);
	struct sockaddr_in sin = { .sin_family = AF_INET };
	socklen_t len = sizeof sin;

	s->base = base;
	if (o != NULL)
		s->o = *o;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	s->lis = evconnlistener_new_bind(base, srv_accept_cb, s,
					 LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, 16,
					 (struct sockaddr *)&sin, sizeof sin);
	assert_non_null(s->lis);
	getsockname(evconnlistener_get_fd(s->lis), (struct sockaddr *)&sin, &len);
	s->port = ntohs(sin.sin_port);
	return s;
}

static void srv_free(struct srv *s)
{
	while (s->conns != NULL) {
		struct srv_conn *sc = s->conns;

		s->conns = sc->next;
		bufferevent_free(sc->bev);
		free(sc);
	}
	evconnlistener_free(s->lis);
	free(s);
}

/* A loopback port nobody listens on. */
static unsigned short closed_port(void)
{
	struct sockaddr_in sin = { .sin_family = AF_INET };
	socklen_t len = sizeof sin;
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	bind(fd, (struct sockaddr *)&sin, sizeof sin);
	getsockname(fd, (struct sockaddr *)&sin, &len);
	close(fd);
	return ntohs(sin.sin_port);
}

/* ---- client side helpers --------------------------------------------------------- */

struct mem_body {
	const char *data;
	size_t len, pos, chunk;
};

static ssize_t mem_read(void *arg, void *buf, size_t n)
{
	struct mem_body *b = arg;
	size_t k = b->len - b->pos;

	if (k > n)
		k = n;
	if (b->chunk && k > b->chunk)
		k = b->chunk;
	memcpy(buf, b->data + b->pos, k);
	b->pos += k;
	return (ssize_t)k;
}

struct outcome {
	bool done;
	struct smtp_client_result res;
	struct smtp_client_rcpt_result rcpts[8];
	struct smtp_client_attempt attempts[4];
	struct event_base *base;
};

static void done_cb(void *arg, const struct smtp_client_result *res)
{
	struct outcome *o = arg;

	o->done = true;
	o->res = *res;
	memcpy(o->rcpts, res->rcpts, res->n_rcpts * sizeof *res->rcpts);
	memcpy(o->attempts, res->attempts, res->n_attempts * sizeof *res->attempts);
	o->res.rcpts = o->rcpts;
	o->res.attempts = o->attempts;
}

static void dest_port(struct smtp_client_dest *d, unsigned short port, const char *host)
{
	struct sockaddr_in *sin = (struct sockaddr_in *)&d->addr;

	memset(d, 0, sizeof *d);
	sin->sin_family = AF_INET;
	sin->sin_port = htons(port);
	sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	d->addr_len = sizeof *sin;
	snprintf(d->host, sizeof d->host, "%s", host);
}

/* Runs the loop until every outcome is done (or 5 s pass). */
static void run_until(struct event_base *base, struct outcome **os, size_t n)
{
	for (int spins = 0; spins < 5000; spins++) {
		bool all = true;
		struct timeval tv = { 0, 1000 };

		for (size_t i = 0; i < n; i++)
			all &= os[i]->done;
		if (all)
			return;
		event_base_loopexit(base, &tv);
		event_base_dispatch(base);
	}
	fail_msg("jobs not done within 5 s");
}

struct fixture {
	struct event_base *base;
	struct smtp_client *c;
	struct smtp_client_opts opts;
};

static struct fixture *fx_new(void)
{
	struct fixture *f = calloc(1, sizeof *f);
	char err[128];

	f->base = event_base_new();
	smtp_client_opts_init(&f->opts);
	f->opts.connect_ms = 1000;
	f->opts.command_ms = 1000;
	f->opts.data_ms = 1000;
	snprintf(f->opts.helo_name, sizeof f->opts.helo_name, "client.test");
	f->c = smtp_client_new(f->base, &f->opts, NULL, err, sizeof err);
	assert_non_null(f->c);
	return f;
}

static void fx_free(struct fixture *f)
{
	smtp_client_free(&f->c);
	event_base_free(f->base);
	free(f);
}

static void job_init(struct smtp_client_job *j, struct smtp_client_rcpt *r,
		     size_t n, struct smtp_client_dest *d, size_t nd,
		     struct mem_body *b)
{
	memset(j, 0, sizeof *j);
	j->mode = SMTP_CLIENT_SMTP;
	j->nexthop = "test";
	j->qid = "QID1";
	j->sender = "sender@example.org";
	j->rcpts = r;
	j->n_rcpts = n;
	j->dests = d;
	j->n_dests = nd;
	j->read = mem_read;
	j->read_arg = b;
	j->size = b->len;
}

static void submit(struct fixture *f, struct smtp_client_job *j, struct outcome *o)
{
	char err[128];

	assert_int_equal(smtp_client_submit(f->c, j, done_cb, o, err, sizeof err), 0);
	assert_false(o->done); /* never from inside submit */
}

static void assert_rcpt(const struct outcome *o, size_t i,
			enum smtp_client_class cls, unsigned code)
{
	const struct smtp_client_rcpt_result *r = &o->res.rcpts[i];

	if (r->cls != cls || r->code != code)
		fail_msg("rcpt %zu: got %s %u \"%s\", want %s %u", i,
			 smtp_client_class_name(r->cls), r->code, r->text,
			 smtp_client_class_name(cls), code);
}

/* ---- tests -------------------------------------------------------------------------- */

static void test_pipelined_mixed(void **state)
{
	struct fixture *f = fx_new();
	struct srv *s = srv_new(f->base, NULL);
	struct mem_body b = { .data = "Subject: hi\r\n\r\nbody\r\n", .len = 21 };
	struct smtp_client_rcpt r[3] = { { "ok1@x.test", 0, NULL },
					 { "temp1@x.test", 0, NULL },
					 { "perm1@x.test", 0, NULL } };
	struct smtp_client_dest d;
	struct smtp_client_job j;
	struct outcome o = { 0 }, *os[] = { &o };

	(void)state;
	dest_port(&d, s->port, "mx.test");
	job_init(&j, r, 3, &d, 1, &b);
	submit(f, &j, &o);
	run_until(f->base, os, 1);
	assert_true(o.res.connected);
	assert_rcpt(&o, 0, SMTP_CLIENT_OK, 250);
	assert_rcpt(&o, 1, SMTP_CLIENT_TEMP, 451);
	assert_string_equal(o.res.rcpts[1].enhanced, "4.3.0");
	assert_rcpt(&o, 2, SMTP_CLIENT_PERM, 550);
	assert_string_equal(o.res.rcpts[2].enhanced, "5.1.1");
	assert_string_equal(o.res.rcpts[0].host, "mx.test");
	assert_contains(o.res.rcpts[0].addr, "127.0.0.1:");
	assert_contains(s->transcript, "EHLO client.test\nMAIL FROM:<sender@example.org> SIZE=21\n");
	assert_contains(s->transcript, "RCPT TO:<perm1@x.test>\nDATA\nSubject: hi\n\nbody\n.\n");
	srv_free(s);
	fx_free(f);
}

static void test_ehlo_helo_fallback(void **state)
{
	struct fixture *f = fx_new();
	struct srv_opts so = { .ehlo_fails = true };
	struct srv *s = srv_new(f->base, &so);
	struct mem_body b = { .data = "x\r\n", .len = 3 };
	struct smtp_client_rcpt r[2] = { { "ok1@x.test", 0, NULL }, { "ok2@x.test", 0, NULL } };
	struct smtp_client_dest d;
	struct smtp_client_job j;
	struct outcome o = { 0 }, *os[] = { &o };

	(void)state;
	dest_port(&d, s->port, "mx.test");
	job_init(&j, r, 2, &d, 1, &b);
	submit(f, &j, &o);
	run_until(f->base, os, 1);
	assert_rcpt(&o, 0, SMTP_CLIENT_OK, 250);
	assert_rcpt(&o, 1, SMTP_CLIENT_OK, 250);
	/* No extensions after HELO: plain MAIL, one command at a time. */
	assert_contains(s->transcript, "EHLO client.test\nHELO client.test\nMAIL FROM:<sender@example.org>\nRCPT");
	srv_free(s);
	fx_free(f);
}

static void test_refusals_before_sending(void **state)
{
	struct fixture *f = fx_new();
	struct srv_opts so = { .size = 10, .no_smtputf8 = true, .no_8bitmime = true };
	struct srv *s = srv_new(f->base, &so);
	struct mem_body b = { .data = "0123456789abcdef\r\n", .len = 18 };
	struct smtp_client_rcpt r[1] = { { "ok1@x.test", 0, NULL } };
	struct smtp_client_dest d;
	struct smtp_client_job j;
	struct outcome o1 = { 0 }, o2 = { 0 }, o3 = { 0 };
	struct outcome *os1[] = { &o1 }, *os2[] = { &o2 }, *os3[] = { &o3 };

	(void)state;
	dest_port(&d, s->port, "mx.test");
	job_init(&j, r, 1, &d, 1, &b);
	submit(f, &j, &o1);
	run_until(f->base, os1, 1);
	assert_rcpt(&o1, 0, SMTP_CLIENT_PERM, 552);
	assert_string_equal(o1.res.rcpts[0].enhanced, "5.3.4");
	assert_true(o1.res.rcpts[0].local);

	j.size = 5;
	j.smtputf8 = true;
	submit(f, &j, &o2);
	run_until(f->base, os2, 1);
	assert_rcpt(&o2, 0, SMTP_CLIENT_PERM, 553);
	assert_string_equal(o2.res.rcpts[0].enhanced, "5.6.7");

	j.smtputf8 = false;
	j.body_type = SPOOL_BODY_8BITMIME;
	submit(f, &j, &o3);
	run_until(f->base, os3, 1);
	assert_rcpt(&o3, 0, SMTP_CLIENT_PERM, 554);
	assert_string_equal(o3.res.rcpts[0].enhanced, "5.6.3");
	assert_null(strstr(s->transcript, "MAIL"));
	srv_free(s);
	fx_free(f);
}

static void test_dot_stuffing(void **state)
{
	struct fixture *f = fx_new();
	struct srv *s = srv_new(f->base, NULL);
	static const char body[] = ".lead\r\n..two\r\nmid.dle\r\n.\r\nbare\nlf\r\nlast";
	struct mem_body b = { .data = body, .len = sizeof body - 1, .chunk = 3 };
	struct smtp_client_rcpt r[1] = { { "ok1@x.test", 0, NULL } };
	struct smtp_client_dest d;
	struct smtp_client_job j;
	struct outcome o = { 0 }, *os[] = { &o };

	(void)state;
	dest_port(&d, s->port, "mx.test");
	job_init(&j, r, 1, &d, 1, &b);
	submit(f, &j, &o);
	run_until(f->base, os, 1);
	assert_rcpt(&o, 0, SMTP_CLIENT_OK, 250);
	assert_contains(s->transcript, "DATA\n..lead\n...two\nmid.dle\n..\nbare\nlf\nlast\n.\n");
	srv_free(s);
	fx_free(f);
}

static void test_timeout(void **state)
{
	struct fixture *f = fx_new();
	struct srv_opts so = { .silent = true };
	struct srv *s = srv_new(f->base, &so);
	struct mem_body b = { .data = "x\r\n", .len = 3 };
	struct smtp_client_rcpt r[1] = { { "ok1@x.test", 0, NULL } };
	struct smtp_client_dest d;
	struct smtp_client_job j;
	struct outcome o = { 0 }, *os[] = { &o };

	(void)state;
	f->opts.command_ms = 150;
	smtp_client_set_opts(f->c, &f->opts);
	dest_port(&d, s->port, "slow.test");
	job_init(&j, r, 1, &d, 1, &b);
	submit(f, &j, &o);
	run_until(f->base, os, 1);
	assert_false(o.res.connected);
	assert_rcpt(&o, 0, SMTP_CLIENT_TEMP, 0);
	assert_int_equal(o.res.n_attempts, 1);
	assert_contains(o.res.attempts[0].reason, "timeout (greeting)");
	assert_contains(o.res.rcpts[0].text, "timeout");
	srv_free(s);
	fx_free(f);
}

static void test_failover(void **state)
{
	struct fixture *f = fx_new();
	struct srv_opts bad = { .greeting = 554 };
	struct srv *s1 = srv_new(f->base, &bad);
	struct srv *s2 = srv_new(f->base, NULL);
	struct mem_body b = { .data = "x\r\n", .len = 3 };
	struct smtp_client_rcpt r[1] = { { "ok1@x.test", 0, NULL } };
	struct smtp_client_dest d[3];
	struct smtp_client_job j;
	struct outcome o = { 0 }, *os[] = { &o };

	(void)state;
	dest_port(&d[0], closed_port(), "refused.test");
	dest_port(&d[1], s1->port, "busy.test");
	dest_port(&d[2], s2->port, "good.test");
	job_init(&j, r, 1, d, 3, &b);
	submit(f, &j, &o);
	run_until(f->base, os, 1);
	assert_rcpt(&o, 0, SMTP_CLIENT_OK, 250);
	assert_string_equal(o.res.host, "good.test");
	assert_int_equal(o.res.n_attempts, 2);
	assert_contains(o.res.attempts[0].reason, "connect:");
	assert_contains(o.res.attempts[1].reason, "greeting: 554 5.7.1 go away");
	assert_string_equal(o.res.rcpts[0].host, "good.test");

	/* All destinations fail: TEMP, never PERM. */
	{
		struct outcome o2 = { 0 }, *os2[] = { &o2 };

		j.n_dests = 2;
		submit(f, &j, &o2);
		run_until(f->base, os2, 1);
		assert_false(o2.res.connected);
		assert_rcpt(&o2, 0, SMTP_CLIENT_TEMP, 0);
		assert_contains(o2.res.rcpts[0].text, "554");
	}
	srv_free(s1);
	srv_free(s2);
	fx_free(f);
}

static void test_reuse(void **state)
{
	struct fixture *f = fx_new();
	struct srv *s = srv_new(f->base, NULL);
	struct mem_body b1 = { .data = "one\r\n", .len = 5 }, b2 = { .data = "two\r\n", .len = 5 };
	struct smtp_client_rcpt r[1] = { { "ok1@x.test", 0, NULL } };
	struct smtp_client_dest d;
	struct smtp_client_job j;
	struct outcome o1 = { 0 }, o2 = { 0 }, *os1[] = { &o1 }, *os2[] = { &o2 };
	struct smtp_client_stats st;

	(void)state;
	dest_port(&d, s->port, "mx.test");
	job_init(&j, r, 1, &d, 1, &b1);
	submit(f, &j, &o1);
	run_until(f->base, os1, 1);
	job_init(&j, r, 1, &d, 1, &b2);
	submit(f, &j, &o2);
	run_until(f->base, os2, 1);
	assert_rcpt(&o1, 0, SMTP_CLIENT_OK, 250);
	assert_rcpt(&o2, 0, SMTP_CLIENT_OK, 250);
	assert_false(o1.res.reused);
	assert_true(o2.res.reused);
	assert_int_equal(s->accepted, 1);
	/* A clean end (the dot's reply) needs no RSET before the next MAIL. */
	assert_contains(s->transcript, "one\n.\nMAIL");
	smtp_client_stats(f->c, &st);
	assert_int_equal(st.connects, 1);
	assert_int_equal(st.reuses, 1);
	assert_int_equal(st.idle, 1);
	srv_free(s);
	fx_free(f);
}

/* After a transaction that was cut short (every RCPT refused) the next
 * job on the connection sends RSET first. */
static void test_reuse_rset(void **state)
{
	struct fixture *f = fx_new();
	struct srv *s = srv_new(f->base, NULL);
	struct mem_body b = { .data = "x\r\n", .len = 3 };
	struct smtp_client_rcpt r1[1] = { { "perm1@x.test", 0, NULL } };
	struct smtp_client_rcpt r2[1] = { { "ok1@x.test", 0, NULL } };
	struct smtp_client_dest d;
	struct smtp_client_job j;
	struct outcome o1 = { 0 }, o2 = { 0 }, *os1[] = { &o1 }, *os2[] = { &o2 };

	(void)state;
	dest_port(&d, s->port, "mx.test");
	job_init(&j, r1, 1, &d, 1, &b);
	submit(f, &j, &o1);
	run_until(f->base, os1, 1);
	job_init(&j, r2, 1, &d, 1, &b);
	submit(f, &j, &o2);
	run_until(f->base, os2, 1);
	assert_rcpt(&o1, 0, SMTP_CLIENT_PERM, 550);
	assert_rcpt(&o2, 0, SMTP_CLIENT_OK, 250);
	assert_true(o2.res.reused);
	assert_int_equal(s->accepted, 1);
	assert_contains(s->transcript, "RCPT TO:<perm1@x.test>\nDATA\nRSET\nMAIL");
	srv_free(s);
	fx_free(f);
}

/* A pooled connection the peer closed before the client noticed: the job
 * starts over on a new connection, with no failure reported. */
struct chain {
	struct fixture *f;
	struct smtp_client_job *j;
	struct outcome *next;
	struct outcome first;
};

static void chain_cb(void *arg, const struct smtp_client_result *res)
{
	struct chain *ch = arg;
	char err[128];

	done_cb(&ch->first, res);
	/* Submitted before the loop reads the peer's EOF. */
	assert_int_equal(smtp_client_submit(ch->f->c, ch->j, done_cb, ch->next,
					    err, sizeof err), 0);
}

static void test_reuse_dead_connection(void **state)
{
	struct fixture *f = fx_new();
	struct srv_opts so = { .close_after_dot = true };
	struct srv *s = srv_new(f->base, &so);
	struct mem_body b1 = { .data = "one\r\n", .len = 5 }, b2 = { .data = "two\r\n", .len = 5 };
	struct smtp_client_rcpt r[1] = { { "ok1@x.test", 0, NULL } };
	struct smtp_client_dest d;
	struct smtp_client_job j1, j2;
	struct outcome o2 = { 0 }, *os[] = { &o2 };
	struct chain ch = { .f = f, .j = &j2, .next = &o2 };
	char err[128];

	(void)state;
	dest_port(&d, s->port, "mx.test");
	job_init(&j1, r, 1, &d, 1, &b1);
	job_init(&j2, r, 1, &d, 1, &b2);
	assert_int_equal(smtp_client_submit(f->c, &j1, chain_cb, &ch, err, sizeof err), 0);
	run_until(f->base, os, 1);
	assert_rcpt(&ch.first, 0, SMTP_CLIENT_OK, 250);
	assert_rcpt(&o2, 0, SMTP_CLIENT_OK, 250);
	assert_int_equal(o2.res.n_attempts, 0);
	assert_false(o2.res.reused);
	assert_int_equal(s->accepted, 2);
	{
		struct smtp_client_stats st;

		smtp_client_stats(f->c, &st);
		assert_int_equal(st.reuses, 1);   /* tried the pooled one first */
		assert_int_equal(st.connects, 2);
	}
	assert_contains(s->transcript, "two\n.\n");
	srv_free(s);
	fx_free(f);
}

static void test_cap_queues_jobs(void **state)
{
	struct fixture *f = fx_new();
	struct srv *s = srv_new(f->base, NULL);
	struct mem_body b[3] = { { .data = "a\r\n", .len = 3 }, { .data = "b\r\n", .len = 3 },
				 { .data = "c\r\n", .len = 3 } };
	struct smtp_client_rcpt r[1] = { { "ok1@x.test", 0, NULL } };
	struct smtp_client_dest d;
	struct smtp_client_job j;
	struct outcome o[3] = { { 0 } }, *os[] = { &o[0], &o[1], &o[2] };
	struct smtp_client_stats st;

	(void)state;
	f->opts.max_conns = 1;
	smtp_client_set_opts(f->c, &f->opts);
	dest_port(&d, s->port, "mx.test");
	for (int i = 0; i < 3; i++) {
		job_init(&j, r, 1, &d, 1, &b[i]);
		submit(f, &j, &o[i]);
	}
	smtp_client_stats(f->c, &st);
	assert_int_equal(st.waiting, 2);
	run_until(f->base, os, 3);
	for (int i = 0; i < 3; i++)
		assert_rcpt(&o[i], 0, SMTP_CLIENT_OK, 250);
	assert_int_equal(s->accepted, 1);
	srv_free(s);
	fx_free(f);
}

static void test_mail_temp_and_dsn(void **state)
{
	struct fixture *f = fx_new();
	struct srv_opts so = { .mail_code = 452 };
	struct srv *s = srv_new(f->base, &so);
	struct mem_body b = { .data = "x\r\n", .len = 3 };
	struct smtp_client_rcpt r[2] = {
		{ "ok1@x.test", SPOOL_NOTIFY_SUCCESS | SPOOL_NOTIFY_FAILURE, "rfc822;orig@x.test" },
		{ "ok2@x.test", SPOOL_NOTIFY_NEVER, NULL } };
	struct smtp_client_dest d;
	struct smtp_client_job j;
	struct outcome o = { 0 }, *os[] = { &o };

	(void)state;
	dest_port(&d, s->port, "mx.test");
	job_init(&j, r, 2, &d, 1, &b);
	j.dsn_ret = SPOOL_RET_HDRS;
	j.envid = "ENV+2B1";
	submit(f, &j, &o);
	run_until(f->base, os, 1);
	assert_rcpt(&o, 0, SMTP_CLIENT_TEMP, 452);
	assert_rcpt(&o, 1, SMTP_CLIENT_TEMP, 452);
	assert_contains(s->transcript, "SIZE=3 RET=HDRS ENVID=ENV+2B1\n");
	assert_contains(s->transcript, "RCPT TO:<ok1@x.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;orig@x.test\n");
	assert_contains(s->transcript, "RCPT TO:<ok2@x.test> NOTIFY=NEVER\n");
	/* MAIL failed: no body was sent (a 354 is answered with an empty message) */
	assert_null(strstr(s->transcript, "\nx\n"));
	srv_free(s);
	fx_free(f);
}

static void test_no_dsn_relayed(void **state)
{
	struct fixture *f = fx_new();
	struct srv_opts so = { .no_dsn = true, .no_pipelining = true };
	struct srv *s = srv_new(f->base, &so);
	struct mem_body b = { .data = "x\r\n", .len = 3 };
	struct smtp_client_rcpt r[2] = {
		{ "perm1@x.test", 0, NULL },
		{ "ok1@x.test", SPOOL_NOTIFY_SUCCESS, "rfc822;orig@x.test" } };
	struct smtp_client_dest d;
	struct smtp_client_job j;
	struct outcome o = { 0 }, *os[] = { &o };

	(void)state;
	dest_port(&d, s->port, "mx.test");
	job_init(&j, r, 2, &d, 1, &b);
	submit(f, &j, &o);
	run_until(f->base, os, 1);
	assert_rcpt(&o, 0, SMTP_CLIENT_PERM, 550);
	assert_rcpt(&o, 1, SMTP_CLIENT_OK, 250);
	assert_true(o.res.rcpts[1].dsn_relayed);
	assert_contains(s->transcript, "RCPT TO:<ok1@x.test>\nDATA\nx\n.\n");
	srv_free(s);
	fx_free(f);
}

static void test_lmtp(void **state)
{
	struct fixture *f = fx_new();
	struct srv_opts so = { .lmtp = true };
	struct srv *s = srv_new(f->base, &so);
	struct mem_body b = { .data = "x\r\n", .len = 3 };
	struct smtp_client_rcpt r[4] = { { "ok1@x.test", 0, NULL },
					 { "dtemp1@x.test", 0, NULL },
					 { "perm1@x.test", 0, NULL },
					 { "ok2@x.test", 0, NULL } };
	struct smtp_client_dest d;
	struct smtp_client_job j;
	struct outcome o = { 0 }, *os[] = { &o };

	(void)state;
	dest_port(&d, s->port, "lmtp.test");
	job_init(&j, r, 4, &d, 1, &b);
	j.mode = SMTP_CLIENT_LMTP;
	j.nexthop = "lmtp:test";
	submit(f, &j, &o);
	run_until(f->base, os, 1);
	assert_contains(s->transcript, "LHLO client.test\n");
	assert_rcpt(&o, 0, SMTP_CLIENT_OK, 250);
	assert_rcpt(&o, 1, SMTP_CLIENT_TEMP, 452);
	assert_string_equal(o.res.rcpts[1].text, "mailbox full");
	assert_rcpt(&o, 2, SMTP_CLIENT_PERM, 550);
	assert_rcpt(&o, 3, SMTP_CLIENT_OK, 250);
	srv_free(s);
	fx_free(f);
}

/* Hostile peers: an over-long greeting line fails that destination; a
 * malformed reply after MAIL makes every recipient TEMP; the text that
 * reaches the result is bounded and printable. */
static void test_hostile_replies(void **state)
{
	struct fixture *f = fx_new();
	static char longline[4000];
	struct srv_opts o1 = { .raw_greeting = longline };
	struct srv_opts o2 = { .mail_raw = "25x broken\r\n" };
	struct srv_opts o3 = { .mail_raw = "451-4.3.0 a\x01\x7f\xff\r\n451 second line\r\n" };
	struct srv *s1, *s2, *s3;
	struct mem_body b = { .data = "x\r\n", .len = 3 };
	struct smtp_client_rcpt r[2] = { { "ok1@x.test", 0, NULL }, { "ok2@x.test", 0, NULL } };
	struct smtp_client_dest d;
	struct smtp_client_job j;
	struct outcome a = { 0 }, c = { 0 }, e = { 0 };
	struct outcome *osa[] = { &a }, *osc[] = { &c }, *ose[] = { &e };

	(void)state;
	memset(longline, 'A', sizeof longline - 3);
	memcpy(longline, "220 ", 4);
	memcpy(longline + sizeof longline - 3, "\r\n", 2);
	s1 = srv_new(f->base, &o1);
	s2 = srv_new(f->base, &o2);
	s3 = srv_new(f->base, &o3);
	dest_port(&d, s1->port, "long.test");
	job_init(&j, r, 2, &d, 1, &b);
	submit(f, &j, &a);
	run_until(f->base, osa, 1);
	assert_false(a.res.connected);
	assert_rcpt(&a, 0, SMTP_CLIENT_TEMP, 0);
	assert_contains(a.res.attempts[0].reason, "too long");

	dest_port(&d, s2->port, "broken.test");
	submit(f, &j, &c);
	run_until(f->base, osc, 1);
	assert_true(c.res.connected);
	assert_rcpt(&c, 0, SMTP_CLIENT_TEMP, 0);
	assert_rcpt(&c, 1, SMTP_CLIENT_TEMP, 0);

	dest_port(&d, s3->port, "odd.test");
	submit(f, &j, &e);
	run_until(f->base, ose, 1);
	assert_rcpt(&e, 0, SMTP_CLIENT_TEMP, 451);
	assert_string_equal(e.res.rcpts[0].text, "a???; second line");
	srv_free(s1);
	srv_free(s2);
	srv_free(s3);
	fx_free(f);
}

static void test_opts_from_conf(void **state)
{
	struct conf_errors errs = { 0 };
	struct carrier_conf *conf = conf_load_string("t.conf",
		"[server]\nhostname = mx.example.org\n"
		"[delivery]\nconnect_timeout = 7s\ncommand_timeout = 2m\n"
		"data_timeout = 9m\nmax_connections_per_destination = 3\n", &errs);
	struct smtp_client_opts o;

	(void)state;
	assert_non_null(conf);
	smtp_client_opts_from_conf(&o, conf);
	assert_int_equal(o.connect_ms, 7000);
	assert_int_equal(o.command_ms, 120000);
	assert_int_equal(o.data_ms, 540000);
	assert_int_equal(o.max_conns, 3);
	assert_string_equal(o.helo_name, "mx.example.org");
	conf_free(&conf);
}

static void test_bad_jobs(void **state)
{
	struct fixture *f = fx_new();
	struct mem_body b = { .data = "x", .len = 1 };
	struct smtp_client_rcpt r[1] = { { "a\r\nRSET@x", 0, NULL } };
	struct smtp_client_dest d;
	struct smtp_client_job j;
	char err[128];

	(void)state;
	dest_port(&d, 25, "x");
	job_init(&j, r, 1, &d, 1, &b);
	assert_int_equal(smtp_client_submit(f->c, &j, done_cb, NULL, err, sizeof err), -1);
	r[0].addr = "ok@x";
	j.n_dests = 0;
	assert_int_equal(smtp_client_submit(f->c, &j, done_cb, NULL, err, sizeof err), -1);
	j.n_dests = 1;
	j.read = NULL;
	assert_int_equal(smtp_client_submit(f->c, &j, done_cb, NULL, err, sizeof err), -1);
	fx_free(f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_pipelined_mixed),
		cmocka_unit_test(test_ehlo_helo_fallback),
		cmocka_unit_test(test_refusals_before_sending),
		cmocka_unit_test(test_dot_stuffing),
		cmocka_unit_test(test_timeout),
		cmocka_unit_test(test_failover),
		cmocka_unit_test(test_reuse),
		cmocka_unit_test(test_reuse_rset),
		cmocka_unit_test(test_reuse_dead_connection),
		cmocka_unit_test(test_cap_queues_jobs),
		cmocka_unit_test(test_mail_temp_and_dsn),
		cmocka_unit_test(test_no_dsn_relayed),
		cmocka_unit_test(test_lmtp),
		cmocka_unit_test(test_hostile_replies),
		cmocka_unit_test(test_opts_from_conf),
		cmocka_unit_test(test_bad_jobs),
	};

	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
