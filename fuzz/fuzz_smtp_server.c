/*
 * libFuzzer harness for the inbound SMTP engine: the input is everything a
 * client sends on one connection (commands, DATA, BDAT chunks, garbage),
 * fed over a socketpair to a real server with a real spool on tmpfs.  The
 * server must answer with well-formed reply lines only, never crash, leak
 * or hang, and close the session by itself once the client has finished.
 *
 * The event base, configuration and spool are made once per process (a
 * harness's statics, not the library's); each input gets its own server.
 */
#include <event2/event.h>
#include <event2/thread.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "conf.h"
#include "smtp_server.h"
#include "spool.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct event_base *base;
static struct carrier_conf *conf;
static struct spool *spool;
static char spool_dir[64];

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	remove(path);
	return 0;
}

/* The spool is scratch: close it and remove it when the fuzzer exits. */
static void cleanup(void)
{
	spool_close(&spool);
	if (spool_dir[0])
		nftw(spool_dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static const char conf_text[] =
	"[server]\nhostname = mx.fuzz.example\nlocal_domains = localhost\n"
	"relay_networks = 10.0.0.0/8\n"
	"[smtp]\nmax_message_size = 64k\nmax_recipients = 5\nmax_errors = 50\n"
	"max_received_headers = 10\nidle_timeout = 1s\ncommand_timeout = 1s\n"
	"data_timeout = 1s\n";

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	struct conf_errors errs = { 0 };
	struct spool_opts so;
	char dir[] = "/dev/shm/carrier-fuzz-XXXXXX", err[256];

	(void)argc;
	(void)argv;
	evthread_use_pthreads();
	base = event_base_new();
	conf = conf_load_string("fuzz.conf", conf_text, &errs);
	if (base == NULL || conf == NULL)
		abort();
	if (mkdtemp(dir) == NULL && (snprintf(dir, sizeof dir, "/tmp/cfz-XXXXXX"), mkdtemp(dir)) == NULL)
		abort();
	spool_opts_init(&so);
	so.space_margin = 0;
	snprintf(spool_dir, sizeof spool_dir, "%s", dir);
	spool = spool_open(dir, &so, NULL, err, sizeof err);
	if (spool == NULL) {
		fprintf(stderr, "spool_open %s: %s\n", dir, err);
		abort();
	}
	atexit(cleanup);
	return 0;
}

/* Every reply line: three digits 2xx-5xx, then ' ' or '-', then CRLF. */
static void check_replies(const char *buf, size_t len)
{
	size_t start = 0;

	for (size_t i = 0; i < len; i++) {
		if (buf[i] != '\n')
			continue;
		if (i - start < 5 || buf[i - 1] != '\r' || buf[start] < '2' || buf[start] > '5' ||
		    buf[start + 1] < '0' || buf[start + 1] > '9' || buf[start + 2] < '0' ||
		    buf[start + 2] > '9' || (buf[start + 3] != ' ' && buf[start + 3] != '-'))
			abort();
		start = i + 1;
	}
	if (start != len)
		abort();   /* a partial line left at close */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct sockaddr_in sin = { .sin_family = AF_INET };
	struct smtp_server *srv;
	static char out[1 << 20];
	size_t sent = 0, got = 0;
	bool shut = false;
	char err[256];
	time_t deadline = time(NULL) + 20;
	int sv[2];

	srv = smtp_server_new(base, conf, NULL, NULL, spool, err, sizeof err);
	if (srv == NULL || socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0)
		abort();
	fcntl(sv[1], F_SETFL, O_NONBLOCK);
	sin.sin_addr.s_addr = htonl(0x7f000001);
	if (smtp_server_accept(srv, sv[0], (struct sockaddr *)&sin, sizeof sin) < 0)
		abort();
	while (smtp_server_sessions(srv) > 0) {
		struct pollfd p = { .fd = sv[1], .events = POLLIN };
		ssize_t n;

		if (time(NULL) > deadline)
			abort();   /* the server never closed the session */
		if (sent < size && (n = write(sv[1], data + sent, size - sent)) > 0)
			sent += (size_t)n;
		if (sent == size && !shut) {
			shutdown(sv[1], SHUT_WR);
			shut = true;
		}
		event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
		if (poll(&p, 1, 1) > 0) {
			char tmp[65536];

			n = read(sv[1], tmp, sizeof tmp);
			if (n > 0 && got + (size_t)n <= sizeof out) {
				memcpy(out + got, tmp, (size_t)n);
				got += (size_t)n;
			}
		}
	}
	for (;;) {   /* the rest of the replies */
		ssize_t n = read(sv[1], out + got, sizeof out - got);

		if (n <= 0)
			break;
		got += (size_t)n;
	}
	check_replies(out, got);
	close(sv[1]);
	smtp_server_free(&srv);
	return 0;
}
