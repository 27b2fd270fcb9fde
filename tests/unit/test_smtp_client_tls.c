/* Unit tests for outbound TLS in smtp_client (issue 7, item 3): the client
 * delivers to carrier's own SMTP server, in process, on a loopback
 * listener with a certificate from a test CA made with the openssl
 * command (run without a shell).  Policies none, may, encrypt, verify;
 * a required-TLS failure defers with the reason; a STARTTLS reply with
 * injected data after it is refused, and a failed handshake under may is
 * retried in plaintext and remembered (fake servers in a thread). */
#include "test_util.h"

#include <arpa/inet.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/thread.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "conf.h"
#include "smtp_client.h"
#include "smtp_server.h"
#include "spool.h"
#include "tls.h"

extern char **environ;

struct fixture {
	char dir[64];
	struct event_base *base;
	struct carrier_conf *conf;
	struct spool *spool;
	struct smtp_server *srv;
	struct evconnlistener *lis;
	struct smtp_client *c;
	struct sockaddr_in addr;
	/* last result */
	bool done;
	enum smtp_client_class cls;
	char text[SMTP_CLIENT_TEXT_MAX];
	char tls[SMTP_CLIENT_TLS_TEXT_MAX];
	size_t n_attempts;
	char attempt[SMTP_CLIENT_TEXT_MAX];   /* the first attempt's reason */
};

static void run(const char *dir, char *const argv[])
{
	pid_t pid;
	int st;
	posix_spawn_file_actions_t fa;

	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", 0, 0);
	posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", 0, 0);
	if (chdir(dir) != 0)
		fail_msg("chdir %s", dir);
	assert_int_equal(posix_spawnp(&pid, "openssl", &fa, NULL, argv, environ), 0);
	posix_spawn_file_actions_destroy(&fa);
	assert_int_equal(waitpid(pid, &st, 0), pid);
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
		fail_msg("openssl %s failed", argv[1]);
}

/* A test CA and a certificate for mx.test.example (and 127.0.0.1). */
static void make_pki(const char *dir)
{
	char *ca[] = { "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
		       "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "ca.key", "-out",
		       "ca.pem", "-days", "2", "-subj", "/CN=test CA", NULL };
	char *csr[] = { "openssl", "req", "-newkey", "ec", "-pkeyopt",
			"ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "mx.key", "-out",
			"mx.csr", "-subj", "/CN=mx.test.example", NULL };
	char *sign[] = { "openssl", "x509", "-req", "-in", "mx.csr", "-CA", "ca.pem", "-CAkey",
			 "ca.key", "-CAcreateserial", "-days", "2", "-out", "mx.pem", "-extfile",
			 "mx.ext", NULL };
	char cwd[512], path[128];
	FILE *f;

	assert_non_null(getcwd(cwd, sizeof cwd));
	snprintf(path, sizeof path, "%s/mx.ext", dir);
	f = fopen(path, "w");
	assert_non_null(f);
	fputs("subjectAltName=DNS:mx.test.example,IP:127.0.0.1\n", f);
	fclose(f);
	run(dir, ca);
	run(dir, csr);
	run(dir, sign);
	assert_int_equal(chdir(cwd), 0);
}

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
		      int salen, void *arg)
{
	struct fixture *f = arg;

	smtp_server_accept(f->srv, fd, sa, (socklen_t)salen);
}

static struct fixture *fixture_new(bool server_tls)
{
	struct fixture *f = calloc(1, sizeof *f);
	struct conf_errors errs = { 0 };
	char err[512], text[1024];
	socklen_t len = sizeof f->addr;
	struct tls *t;

	assert_non_null(f);
	snprintf(f->dir, sizeof f->dir, "/tmp/carrier-ctls-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	make_pki(f->dir);
	snprintf(text, sizeof text,
		 "[server]\nhostname = mx.test.example\nlocal_domains = test.example\n"
		 "[tls]\ncert = %s/mx.pem\nkey = %s/mx.key\n", f->dir, f->dir);
	f->conf = conf_load_string("test.conf", text, &errs);
	assert_non_null(f->conf);
	f->base = event_base_new();
	f->spool = spool_open(f->dir, NULL, NULL, err, sizeof err);
	if (f->spool == NULL)
		fail_msg("spool_open: %s", err);
	f->srv = smtp_server_new(f->base, f->conf, NULL, NULL, f->spool, err, sizeof err);
	assert_non_null(f->srv);
	if (server_tls) {
		t = tls_new(f->conf, NULL, 0, err, sizeof err);
		if (t == NULL)
			fail_msg("tls_new: %s", err);
		smtp_server_set_tls(f->srv, t);
	}
	f->addr.sin_family = AF_INET;
	f->addr.sin_addr.s_addr = htonl(0x7f000001);
	f->lis = evconnlistener_new_bind(f->base, accept_cb, f, LEV_OPT_CLOSE_ON_FREE |
					 LEV_OPT_REUSEABLE, 16, (struct sockaddr *)&f->addr,
					 sizeof f->addr);
	assert_non_null(f->lis);
	getsockname(evconnlistener_get_fd(f->lis), (struct sockaddr *)&f->addr, &len);
	f->c = smtp_client_new(f->base, NULL, NULL, err, sizeof err);
	assert_non_null(f->c);
	return f;
}

static void fixture_free(struct fixture *f)
{
	char *rm[] = { "rm", "-rf", f->dir, NULL };
	pid_t pid;

	smtp_client_free(&f->c);
	evconnlistener_free(f->lis);
	smtp_server_free(&f->srv);
	spool_close(&f->spool);
	event_base_free(f->base);
	conf_free(&f->conf);
	if (posix_spawnp(&pid, "rm", NULL, NULL, rm, environ) == 0)
		waitpid(pid, NULL, 0);
	free(f);
}

static void done_cb(void *arg, const struct smtp_client_result *res)
{
	struct fixture *f = arg;

	f->done = true;
	f->cls = res->rcpts[0].cls;
	if (res->rcpts[0].code != 0)
		snprintf(f->text, sizeof f->text, "%u %s", res->rcpts[0].code, res->rcpts[0].text);
	else
		snprintf(f->text, sizeof f->text, "%s", res->rcpts[0].text);
	snprintf(f->tls, sizeof f->tls, "%s", res->tls);
	f->n_attempts = res->n_attempts;
	snprintf(f->attempt, sizeof f->attempt, "%s",
		 res->n_attempts > 0 ? res->attempts[0].reason : "");
}

static ssize_t body_read(void *arg, void *buf, size_t n)
{
	static const char body[] = "Subject: tls\r\n\r\nhello\r\n";
	size_t *off = arg, left = sizeof body - 1 - *off;

	if (n > left)
		n = left;
	memcpy(buf, body + *off, n);
	*off += n;
	return (ssize_t)n;
}

static void deliver(struct fixture *f, enum smtp_client_tls policy, const char *ca,
		    const char *name, uint16_t port)
{
	struct smtp_client_rcpt rcpt = { .addr = "alice@test.example" };
	struct smtp_client_dest dest = { 0 };
	struct smtp_client_job j = { 0 };
	size_t off = 0;
	char err[256], ca_path[128];

	memcpy(&dest.addr, &f->addr, sizeof f->addr);
	((struct sockaddr_in *)&dest.addr)->sin_port = port ? htons(port) : f->addr.sin_port;
	dest.addr_len = sizeof f->addr;
	snprintf(dest.host, sizeof dest.host, "mx.test.example");
	snprintf(ca_path, sizeof ca_path, "%s/ca.pem", f->dir);
	j.mode = SMTP_CLIENT_SMTP;
	j.nexthop = policy == SMTP_CLIENT_TLS_NONE ? "smtp:none" : "smtp:tls";
	j.qid = "TEST";
	j.sender = "bob@remote.example";
	j.size = 24;
	j.rcpts = &rcpt;
	j.n_rcpts = 1;
	j.dests = &dest;
	j.n_dests = 1;
	j.read = body_read;
	j.read_arg = &off;
	j.tls = policy;
	j.tls_ca_file = ca ? ca_path : NULL;
	j.tls_name = name;
	f->done = false;
	assert_int_equal(smtp_client_submit(f->c, &j, done_cb, f, err, sizeof err), 0);
	for (int i = 0; i < 200 && !f->done; i++) {
		struct timeval tv = { 0, 50000 };

		event_base_loopexit(f->base, &tv);
		event_base_dispatch(f->base);
	}
	assert_true(f->done);
	smtp_client_flush_idle(f->c);
}

static void test_policies_against_a_tls_server(void **state)
{
	struct fixture *f = fixture_new(true);

	deliver(f, SMTP_CLIENT_TLS_NONE, NULL, NULL, 0);
	assert_int_equal(f->cls, SMTP_CLIENT_OK);
	assert_string_equal(f->tls, "");

	deliver(f, SMTP_CLIENT_TLS_MAY, NULL, NULL, 0);
	assert_int_equal(f->cls, SMTP_CLIENT_OK);
	assert_contains(f->tls, "TLSv1.3 TLS_");

	deliver(f, SMTP_CLIENT_TLS_ENCRYPT, NULL, NULL, 0);
	assert_int_equal(f->cls, SMTP_CLIENT_OK);
	assert_contains(f->tls, "TLSv1.3");

	deliver(f, SMTP_CLIENT_TLS_VERIFY, "ca", NULL, 0);   /* the MX name */
	if (f->cls != SMTP_CLIENT_OK)
		fail_msg("verify with the test CA: %s", f->text);
	assert_contains(f->tls, "TLSv1.3");

	/* A wrong name, and an unknown CA, defer with the reason. */
	deliver(f, SMTP_CLIENT_TLS_VERIFY, "ca", "wrong.example", 0);
	assert_int_equal(f->cls, SMTP_CLIENT_TEMP);
	assert_contains(f->text, "certificate verify failed: hostname mismatch");
	deliver(f, SMTP_CLIENT_TLS_VERIFY, NULL, NULL, 0);
	assert_int_equal(f->cls, SMTP_CLIENT_TEMP);
	assert_contains(f->text, "certificate verify failed: unable to get local issuer");
	fixture_free(f);
}

static void test_required_tls_without_starttls_defers(void **state)
{
	struct fixture *f = fixture_new(false);

	deliver(f, SMTP_CLIENT_TLS_MAY, NULL, NULL, 0);
	assert_int_equal(f->cls, SMTP_CLIENT_OK);   /* opportunistic: plaintext */
	assert_string_equal(f->tls, "");
	deliver(f, SMTP_CLIENT_TLS_ENCRYPT, NULL, NULL, 0);
	assert_int_equal(f->cls, SMTP_CLIENT_TEMP);
	assert_contains(f->text, "does not offer STARTTLS");
	deliver(f, SMTP_CLIENT_TLS_VERIFY, "ca", NULL, 0);
	assert_int_equal(f->cls, SMTP_CLIENT_TEMP);
	fixture_free(f);
}

/* A peer that pipelines a reply after its 220 to STARTTLS. */
static void *injecting_peer(void *arg)
{
	int lfd = *(int *)arg, fd = accept(lfd, NULL, NULL);
	char buf[512];
	static const char *const script[] = {
		"220 fake ESMTP\r\n", "250-fake\r\n250 STARTTLS\r\n",
		"220 2.0.0 go ahead\r\n250 2.0.0 injected\r\n",
	};

	for (size_t i = 0; fd >= 0 && i < 3; i++) {
		if (i > 0 && read(fd, buf, sizeof buf) <= 0)
			break;
		if (write(fd, script[i], strlen(script[i])) < 0)
			break;
	}
	while (fd >= 0 && read(fd, buf, sizeof buf) > 0)
		;
	if (fd >= 0)
		close(fd);
	return NULL;
}

static void test_injection_after_starttls_reply(void **state)
{
	struct fixture *f = fixture_new(false);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001) };
	socklen_t len = sizeof a;
	int lfd = socket(AF_INET, SOCK_STREAM, 0);
	pthread_t th;

	assert_int_equal(bind(lfd, (struct sockaddr *)&a, sizeof a), 0);
	assert_int_equal(listen(lfd, 1), 0);
	getsockname(lfd, (struct sockaddr *)&a, &len);
	pthread_create(&th, NULL, injecting_peer, &lfd);
	deliver(f, SMTP_CLIENT_TLS_MAY, NULL, NULL, ntohs(a.sin_port));
	assert_int_equal(f->cls, SMTP_CLIENT_TEMP);
	assert_contains(f->text, "after the STARTTLS reply");
	smtp_client_free(&f->c);   /* closes the connection: the peer ends */
	pthread_join(th, NULL);
	close(lfd);
	fixture_free(f);
}

/* A peer whose TLS is broken: it offers STARTTLS, answers 220, then
 * answers the ClientHello with a fatal handshake_failure alert and closes.
 * In plaintext it takes mail.  Serves `conns_max` connections one at a
 * time, then returns. */
struct broken_peer {
	int lfd;
	int conns_max;
	int conns, starttls, mails;
};

static bool peer_write(int fd, const char *s)
{
	return write(fd, s, strlen(s)) == (ssize_t)strlen(s);
}

static void broken_peer_conn(struct broken_peer *p, int fd)
{
	static const char alert[] = { 0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x28 };
	char buf[8192];
	size_t len = 0;
	bool data = false;

	peer_write(fd, "220 fake ESMTP\r\n");
	for (;;) {
		char *end = data ? memmem(buf, len, "\r\n.\r\n", 5) : memchr(buf, '\n', len);
		size_t used;
		ssize_t n;

		if (end == NULL) {
			if (len == sizeof buf || (n = read(fd, buf + len, sizeof buf - len)) <= 0)
				return;
			len += (size_t)n;
			continue;
		}
		used = (size_t)(end - buf) + (data ? 5 : 1);
		if (data) {
			data = false;
			p->mails++;
			peer_write(fd, "250 2.0.0 queued\r\n");
		} else if (strncasecmp(buf, "EHLO", 4) == 0) {
			peer_write(fd, "250-fake\r\n250 STARTTLS\r\n");
		} else if (strncasecmp(buf, "STARTTLS", 8) == 0) {
			p->starttls++;
			peer_write(fd, "220 2.0.0 go ahead\r\n");
			if (read(fd, buf, sizeof buf) > 0 && write(fd, alert, sizeof alert) < 0)
				return;
			return;
		} else if (strncasecmp(buf, "DATA", 4) == 0) {
			data = true;
			peer_write(fd, "354 go on\r\n");
		} else if (strncasecmp(buf, "QUIT", 4) == 0) {
			peer_write(fd, "221 bye\r\n");
			return;
		} else {
			peer_write(fd, "250 ok\r\n");   /* MAIL, RCPT, RSET */
		}
		memmove(buf, buf + used, len - used);
		len -= used;
	}
}

static void *broken_peer_run(void *arg)
{
	struct broken_peer *p = arg;

	while (p->conns < p->conns_max) {
		int fd = accept(p->lfd, NULL, NULL);

		if (fd < 0)
			break;
		p->conns++;
		broken_peer_conn(p, fd);
		close(fd);
	}
	return NULL;
}

static uint16_t broken_peer_start(struct broken_peer *p, int conns_max, pthread_t *th)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001) };
	socklen_t len = sizeof a;

	memset(p, 0, sizeof *p);
	p->conns_max = conns_max;
	p->lfd = socket(AF_INET, SOCK_STREAM, 0);
	assert_int_equal(bind(p->lfd, (struct sockaddr *)&a, sizeof a), 0);
	assert_int_equal(listen(p->lfd, 4), 0);
	getsockname(p->lfd, (struct sockaddr *)&a, &len);
	assert_int_equal(pthread_create(th, NULL, broken_peer_run, p), 0);
	return ntohs(a.sin_port);
}

/* may: the failed handshake is retried in plaintext on a new connection
 * to the same address; the address is remembered (no STARTTLS next time);
 * encrypt never falls back, remembered or not. */
static void test_may_handshake_failure_falls_back(void **state)
{
	struct fixture *f = fixture_new(false);
	struct broken_peer p;
	pthread_t th;
	uint16_t port = broken_peer_start(&p, 4, &th);

	deliver(f, SMTP_CLIENT_TLS_MAY, NULL, NULL, port);
	if (f->cls != SMTP_CLIENT_OK)
		fail_msg("may, broken TLS: got %s, want OK in plaintext", f->text);
	assert_string_equal(f->tls, "");
	assert_int_equal(f->n_attempts, 1);   /* the handshake, for the counters */
	assert_contains(f->attempt, "TLS may: ");
	assert_contains(f->attempt, "handshake failure; retried in plaintext");

	deliver(f, SMTP_CLIENT_TLS_MAY, NULL, NULL, port);   /* a new connection */
	assert_int_equal(f->cls, SMTP_CLIENT_OK);
	assert_int_equal(f->n_attempts, 0);

	deliver(f, SMTP_CLIENT_TLS_ENCRYPT, NULL, NULL, port);
	assert_int_equal(f->cls, SMTP_CLIENT_TEMP);
	assert_contains(f->text, "TLS encrypt: ");
	smtp_client_free(&f->c);
	/* libevent closes the freed sockets from the loop: run it once. */
	event_base_loop(f->base, EVLOOP_NONBLOCK);
	pthread_join(th, NULL);
	close(p.lfd);
	assert_int_equal(p.conns, 4);
	assert_int_equal(p.starttls, 2);      /* the first may, then encrypt */
	assert_int_equal(p.mails, 2);
	fixture_free(f);
}

/* tls_plain_ms = 0: nothing remembered, every may delivery pays the failed
 * handshake and still goes through. */
static void test_may_fallback_unremembered(void **state)
{
	struct fixture *f = fixture_new(false);
	struct smtp_client_opts o;
	struct broken_peer p;
	pthread_t th;
	uint16_t port = broken_peer_start(&p, 4, &th);

	smtp_client_opts_init(&o);
	o.tls_plain_ms = 0;
	smtp_client_set_opts(f->c, &o);
	for (int i = 0; i < 2; i++) {
		deliver(f, SMTP_CLIENT_TLS_MAY, NULL, NULL, port);
		assert_int_equal(f->cls, SMTP_CLIENT_OK);
		assert_int_equal(f->n_attempts, 1);
	}
	smtp_client_free(&f->c);
	/* libevent closes the freed sockets from the loop: run it once. */
	event_base_loop(f->base, EVLOOP_NONBLOCK);
	pthread_join(th, NULL);
	close(p.lfd);
	assert_int_equal(p.starttls, 2);
	assert_int_equal(p.mails, 2);
	fixture_free(f);
}

static void test_policy_names(void **state)
{
	enum smtp_client_tls t;

	assert_int_equal(smtp_client_tls_parse("", &t), 0);
	assert_int_equal(t, SMTP_CLIENT_TLS_MAY);
	assert_int_equal(smtp_client_tls_parse("none", &t), 0);
	assert_int_equal(t, SMTP_CLIENT_TLS_NONE);
	assert_int_equal(smtp_client_tls_parse("may", &t), 0);
	assert_int_equal(t, SMTP_CLIENT_TLS_MAY);
	assert_int_equal(smtp_client_tls_parse("encrypt", &t), 0);
	assert_int_equal(t, SMTP_CLIENT_TLS_ENCRYPT);
	assert_int_equal(smtp_client_tls_parse("verify", &t), 0);
	assert_int_equal(t, SMTP_CLIENT_TLS_VERIFY);
	assert_int_equal(smtp_client_tls_parse("secure", &t), -1);
	assert_string_equal(smtp_client_tls_name(SMTP_CLIENT_TLS_VERIFY), "verify");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_policy_names),
		cmocka_unit_test(test_policies_against_a_tls_server),
		cmocka_unit_test(test_required_tls_without_starttls_defers),
		cmocka_unit_test(test_injection_after_starttls_reply),
		cmocka_unit_test(test_may_handshake_failure_falls_back),
		cmocka_unit_test(test_may_fallback_unremembered),
	};

	signal(SIGPIPE, SIG_IGN);
	evthread_use_pthreads();
	return cmocka_run_group_tests_name("smtp_client_tls", tests, NULL, NULL);
}
