/*
 * fuzz_smtp_client_replies: libFuzzer harness for the smtp_client state
 * machine fed by a hostile peer.
 *
 * Byte 0 picks the job: SMTP or LMTP, 1-4 recipients, the body type and
 * SMTPUTF8, a small or a big size.  The rest is everything the peer says:
 * a scripted server on a Unix socket (on the same loop) writes it all at
 * once after accepting, then shuts its side down (the client reads the
 * replies in order, as with pipelining).  There are two destinations (the
 * same socket), so failover runs too.
 *
 * Invariants (abort() on violation): the done callback runs exactly once,
 * within the time bound; every recipient result has a class and a code that
 * agree (0, or 200..599 with OK only for 2xx/3xx), bounded NUL-terminated
 * printable text, and the session result lists at most two attempts.
 *
 * Threads: single (libFuzzer).
 */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/listener.h>

#include "smtp_client.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct peer {
	const uint8_t *data;
	size_t size;
	int fds[4];
	size_t n_fds;
};

struct run {
	int done;
};

static void check(int cond)
{
	if (!cond)
		abort();
}

static void accept_cb(struct evconnlistener *lis, evutil_socket_t fd,
		      struct sockaddr *sa, int salen, void *arg)
{
	struct peer *p = arg;
	size_t off = 0;

	(void)lis;
	(void)sa;
	(void)salen;
	while (off < p->size) {
		ssize_t n = write(fd, p->data + off, p->size - off);

		if (n <= 0)
			break;
		off += (size_t)n;
	}
	shutdown(fd, SHUT_WR);
	if (p->n_fds < sizeof p->fds / sizeof p->fds[0])
		p->fds[p->n_fds++] = fd;
	else
		close(fd);
}

static void done_cb(void *arg, const struct smtp_client_result *res)
{
	struct run *r = arg;

	r->done++;
	check(res->n_attempts <= 2);
	for (size_t i = 0; i < res->n_rcpts; i++) {
		const struct smtp_client_rcpt_result *rr = &res->rcpts[i];
		size_t len = strnlen(rr->text, sizeof rr->text);

		check(len < sizeof rr->text);
		for (size_t k = 0; k < len; k++)
			check(rr->text[k] >= 32 && rr->text[k] < 127);
		check(rr->code == 0 || (rr->code >= 200 && rr->code <= 599));
		if (rr->cls == SMTP_CLIENT_OK)
			check(rr->code >= 200 && rr->code < 400);
		if (rr->cls == SMTP_CLIENT_PERM)
			check(rr->code >= 500);
		check(strnlen(rr->enhanced, sizeof rr->enhanced) < sizeof rr->enhanced);
	}
}

static ssize_t body_read(void *arg, void *buf, size_t n)
{
	static const char body[] = "Subject: x\r\n\r\n.dot\r\nline\n\rend";
	size_t *pos = arg;
	size_t k = sizeof body - 1 - *pos;

	if (k > n)
		k = n;
	memcpy(buf, body + *pos, k);
	*pos += k;
	return (ssize_t)k;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *addrs[4] = { "ok1@x.test", "ok2@x.test", "a@b.test", "c@d.test" };
	struct smtp_client_rcpt rcpts[4];
	struct smtp_client_dest dests[2];
	struct smtp_client_opts opts;
	struct smtp_client_job job;
	struct peer p = { 0 };
	struct run r = { 0 };
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	struct event_base *base;
	struct evconnlistener *lis;
	struct smtp_client *c;
	char err[128];
	size_t pos = 0;
	uint8_t sel;

	signal(SIGPIPE, SIG_IGN);
	if (size < 1)
		return 0;
	sel = data[0];
	p.data = data + 1;
	p.size = size - 1;
	snprintf(sun.sun_path, sizeof sun.sun_path, "/tmp/fuzz-smtp-client-%d.sock", (int)getpid());
	unlink(sun.sun_path);
	base = event_base_new();
	lis = evconnlistener_new_bind(base, accept_cb, &p, LEV_OPT_CLOSE_ON_FREE, 8,
				      (struct sockaddr *)&sun, sizeof sun);
	check(lis != NULL);

	smtp_client_opts_init(&opts);
	opts.connect_ms = opts.command_ms = opts.data_ms = 300;
	opts.idle_ms = 0;
	c = smtp_client_new(base, &opts, NULL, err, sizeof err);
	check(c != NULL);

	memset(&job, 0, sizeof job);
	memset(dests, 0, sizeof dests);
	for (int i = 0; i < 2; i++)
		snprintf(dests[i].unix_path, sizeof dests[i].unix_path, "%s", sun.sun_path);
	memset(rcpts, 0, sizeof rcpts);
	for (int i = 0; i < 4; i++) {
		rcpts[i].addr = addrs[i];
		rcpts[i].notify = (sel & 0x80) ? SPOOL_NOTIFY_SUCCESS : 0;
		rcpts[i].orcpt = (sel & 0x80) ? "rfc822;o@x.test" : NULL;
	}
	job.mode = (sel & 1) ? SMTP_CLIENT_LMTP : SMTP_CLIENT_SMTP;
	job.nexthop = "fuzz";
	job.qid = "FUZZ";
	job.sender = "s@x.test";
	job.rcpts = rcpts;
	job.n_rcpts = 1 + ((sel >> 1) & 3);
	job.dests = dests;
	job.n_dests = 2;
	job.body_type = (enum spool_body_type)((sel >> 3) % 3);
	job.smtputf8 = (sel >> 5) & 1;
	job.size = (sel & 0x40) ? 100000000u : 30;
	job.dsn_ret = SPOOL_RET_FULL;
	job.envid = "ENV";
	job.read = body_read;
	job.read_arg = &pos;
	check(smtp_client_submit(c, &job, done_cb, &r, err, sizeof err) == 0);

	{
		struct timeval tv = { 5, 0 };
		struct timeval start, now;

		evutil_gettimeofday(&start, NULL);
		while (r.done == 0) {
			event_base_loopexit(base, &tv);
			event_base_loop(base, EVLOOP_ONCE);
			evutil_gettimeofday(&now, NULL);
			check(now.tv_sec - start.tv_sec < 5); /* the client hung */
		}
	}
	check(r.done == 1);
	smtp_client_free(&c);
	evconnlistener_free(lis);
	for (size_t i = 0; i < p.n_fds; i++)
		close(p.fds[i]);
	event_base_free(base);
	unlink(sun.sun_path);
	return 0;
}
