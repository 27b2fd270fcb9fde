/*
 * test_diag: the /proc/net parsers, the port holder lookup against a real
 * socket of this process, the listener bind errors, the spool and control
 * socket checks on temporary directories, and the baseline diff on
 * in-memory baselines.  Tests that need root (chown) skip otherwise.
 */
#include "test_util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pwd.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "conf.h"
#include "diag.h"
#include "diag_baseline.h"
#include "diag_net.h"
#include "evlog.h"

/* ---- /proc/net/tcp ---------------------------------------------------- */

/* Captured from an x86-64 host: words are host-order (little-endian). */
static const char tcp_sample[] =
	"  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
	"   0: 0100007F:09C5 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0000000000000000 100 0 0 10 0\n"
	"   1: 00000000:0019 00000000:0000 0A 00000000:00000000 00:00000000 00000000   999        0 222 1 0000000000000000 100 0 0 10 0\n"
	"   2: 0100007F:0050 0100007F:D2A4 01 00000000:00000000 00:00000000 00000000  1000        0 333 1 0000000000000000 20 4 30 10 -1\n"
	"   3: 0201A8C0:0050 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 444 1 0000000000000000 100 0 0 10 0\n";

static const char tcp6_sample[] =
	"  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
	"   0: 00000000000000000000000000000000:024B 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 555 1 0000000000000000 100 0 0 10 0\n"
	"   1: 00000000000000000000000001000000:09C6 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000   101        0 666 1 0000000000000000 100 0 0 10 0\n";

static struct sockaddr_storage sa4(const char *addr, uint16_t port)
{
	struct sockaddr_storage ss;
	memset(&ss, 0, sizeof ss);
	struct sockaddr_in *s = (struct sockaddr_in *)&ss;
	s->sin_family = AF_INET;
	s->sin_port = htons(port);
	assert_int_equal(inet_pton(AF_INET, addr, &s->sin_addr), 1);
	return ss;
}

static struct sockaddr_storage sa6(const char *addr, uint16_t port)
{
	struct sockaddr_storage ss;
	memset(&ss, 0, sizeof ss);
	struct sockaddr_in6 *s = (struct sockaddr_in6 *)&ss;
	s->sin6_family = AF_INET6;
	s->sin6_port = htons(port);
	assert_int_equal(inet_pton(AF_INET6, addr, &s->sin6_addr), 1);
	return ss;
}

static void test_tcp_parse_line(void **state)
{
	struct diag_tcp_entry e;
	const char *row = strchr(tcp_sample, '\n') + 1;
	assert_int_equal(diag_tcp_parse_line(row, AF_INET, &e), 0);
	char a[INET6_ADDRSTRLEN];
	inet_ntop(AF_INET, e.addr, a, sizeof a);
	assert_string_equal(a, "127.0.0.1");
	assert_int_equal(e.port, 2501);
	assert_int_equal(e.state, DIAG_TCP_LISTEN);
	assert_int_equal(e.uid, 0);
	assert_int_equal(e.inode, 111);

	/* The header and garbage are refused, not half-parsed. */
	assert_int_equal(diag_tcp_parse_line(tcp_sample, AF_INET, &e), -1);
	assert_int_equal(diag_tcp_parse_line("   0: zz:0019 00000000:0000 0A", AF_INET, &e), -1);
	assert_int_equal(diag_tcp_parse_line("", AF_INET, &e), -1);
	/* A v6 row read as v4 has the wrong address length. */
	assert_int_equal(diag_tcp_parse_line(strchr(tcp6_sample, '\n') + 1, AF_INET, &e), -1);

	const char *row6 = strchr(strchr(tcp6_sample, '\n') + 1, '\n') + 1;
	assert_int_equal(diag_tcp_parse_line(row6, AF_INET6, &e), 0);
	inet_ntop(AF_INET6, e.addr, a, sizeof a);
	assert_string_equal(a, "::1");
	assert_int_equal(e.port, 2502);
	assert_int_equal(e.uid, 101);
	assert_int_equal(e.inode, 666);
}

struct find_case {
	const char *name;
	int v6;
	const char *addr;
	uint16_t port;
	const char *text;
	int family;
	long want_inode;        /* -1: none */
};

static void test_tcp_find_listener(void **state)
{
	static const struct find_case cases[] = {
		{ "exact v4", 0, "127.0.0.1", 2501, tcp_sample, AF_INET, 111 },
		{ "wildcard holder", 0, "127.0.0.1", 25, tcp_sample, AF_INET, 222 },
		{ "other address, wildcard holder", 0, "10.0.0.1", 25, tcp_sample, AF_INET, 222 },
		{ "we want the wildcard", 0, "0.0.0.0", 2501, tcp_sample, AF_INET, 111 },
		{ "other address, specific holder", 0, "10.0.0.1", 2501, tcp_sample, AF_INET, -1 },
		{ "established is no listener", 0, "127.0.0.1", 80, tcp_sample, AF_INET, -1 },
		{ "bound, not listening", 0, "192.168.1.2", 80, tcp_sample, AF_INET, -1 },
		{ "dual-stack [::] holds v4", 0, "127.0.0.1", 587, tcp6_sample, AF_INET6, 555 },
		{ "v6 exact", 1, "::1", 2502, tcp6_sample, AF_INET6, 666 },
		{ "v6 other address", 1, "fd00::1", 2502, tcp6_sample, AF_INET6, -1 },
		{ "v6 against v4 wildcard", 1, "::1", 25, tcp_sample, AF_INET, 222 },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		const struct find_case *c = &cases[i];
		struct sockaddr_storage ss = c->v6 ? sa6(c->addr, c->port) : sa4(c->addr, c->port);
		struct diag_tcp_entry e;
		int r = diag_tcp_find_listener(c->text, c->family, (struct sockaddr *)&ss, &e);
		long got = r == 0 ? (long)e.inode : -1;
		if (got != c->want_inode)
			fail_msg("%s: got inode %ld, want %ld", c->name, got, c->want_inode);
	}
}

static void test_unix_find_inode(void **state)
{
	static const char text[] =
		"Num       RefCount Protocol Flags    Type St Inode Path\n"
		"0000000000000000: 00000003 00000000 00000000 0001 03 7001 /run/carrier/ctl\n"
		"0000000000000000: 00000002 00000000 00010000 0001 01 7000 /run/carrier/ctl\n"
		"0000000000000000: 00000002 00000000 00010000 0001 01 7002 /run/other\n"
		"0000000000000000: 00000002 00000000 00000000 0002 01 7003\n";
	assert_int_equal(diag_unix_find_inode(text, "/run/carrier/ctl"), 7000);
	assert_int_equal(diag_unix_find_inode(text, "/run/other"), 7002);
	assert_int_equal(diag_unix_find_inode(text, "/run/none"), 0);
	assert_int_equal(diag_unix_find_inode(text, "/run/carrier"), 0);
}

static void test_inet6_find(void **state)
{
	static const char text[] =
		"fd000000000000000000000000000009 03 40 00 40       v0\n"
		"00000000000000000000000000000001 01 80 10 80       lo\n"
		"fd000000000000000000000000000002 04 40 00 08     eth0\n";
	uint8_t a[16];
	unsigned flags;
	char ifname[16];
	assert_int_equal(inet_pton(AF_INET6, "fd00::9", a), 1);
	assert_int_equal(diag_inet6_find(text, a, &flags, ifname, sizeof ifname), 0);
	assert_true(flags & DIAG_IFA_F_TENTATIVE);
	assert_string_equal(ifname, "v0");
	assert_int_equal(inet_pton(AF_INET6, "fd00::2", a), 1);
	assert_int_equal(diag_inet6_find(text, a, &flags, ifname, sizeof ifname), 0);
	assert_true(flags & DIAG_IFA_F_DADFAILED);
	assert_string_equal(ifname, "eth0");
	assert_int_equal(inet_pton(AF_INET6, "::1", a), 1);
	assert_int_equal(diag_inet6_find(text, a, &flags, ifname, sizeof ifname), 0);
	assert_int_equal(flags & (DIAG_IFA_F_TENTATIVE | DIAG_IFA_F_DADFAILED), 0);
	assert_int_equal(inet_pton(AF_INET6, "fd00::3", a), 1);
	assert_int_equal(diag_inet6_find(text, a, &flags, ifname, sizeof ifname), -1);
	assert_int_equal(diag_inet6_find("", a, &flags, ifname, sizeof ifname), -1);
}

/* ---- listeners against real sockets -------------------------------------- */

static int listen_any(struct conf_listen *l)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(fd >= 0);
	struct sockaddr_storage ss = sa4("127.0.0.1", 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&ss, sizeof(struct sockaddr_in)), 0);
	assert_int_equal(listen(fd, 1), 0);
	socklen_t len = sizeof ss;
	assert_int_equal(getsockname(fd, (struct sockaddr *)&ss, &len), 0);
	memset(l, 0, sizeof *l);
	l->addr = ss;
	l->addrlen = sizeof(struct sockaddr_in);
	l->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
	snprintf(l->host, sizeof l->host, "127.0.0.1");
	return fd;
}

static void test_port_holder_is_this_process(void **state)
{
	struct conf_listen l;
	int fd = listen_any(&l);
	struct diag_holder h;
	assert_int_equal(diag_port_holder("/proc", (struct sockaddr *)&l.addr, &h), 1);
	assert_int_equal(h.pid, getpid());
	char comm[64];
	diag_pid_comm("/proc", getpid(), comm, sizeof comm);
	assert_string_equal(h.comm, comm);
	assert_true(h.inode != 0);

	struct evlog *log = evlog_new("test");
	struct diag_report rep = { 0 };
	int lfd = 12345;
	assert_int_equal(diag_bind_listener_rep(&l, log, &rep, &lfd), DIAG_EXIT_LISTEN);
	assert_int_equal(lfd, -1);
	assert_int_equal(evlog_count(log, EV_NET_PORT_IN_USE), 1);
	assert_int_equal(rep.n, 1);
	char want[128];
	snprintf(want, sizeof want, "127.0.0.1:%u is already in use by pid %d (%s)",
		 (unsigned)l.port, (int)getpid(), comm);
	assert_string_equal(rep.v[0].what, want);
	assert_int_equal(rep.v[0].status, DIAG_FAIL);
	assert_int_equal(diag_report_exit(&rep), DIAG_EXIT_LISTEN);
	assert_contains(rep.v[0].remedy, "kill ");
	diag_report_clear(&rep);

	/* Once the holder is gone the same listener binds. */
	close(fd);
	assert_int_equal(diag_bind_listener(&l, log, &lfd), 0);
	assert_true(lfd >= 0);
	int fl = fcntl(lfd, F_GETFL);
	assert_true(fl & O_NONBLOCK);
	assert_true(fcntl(lfd, F_GETFD) & FD_CLOEXEC);
	close(lfd);
	evlog_free(&log);
}

static void test_bind_address_not_local(void **state)
{
	struct conf_listen l;
	memset(&l, 0, sizeof l);
	l.addr = sa4("192.0.2.254", 2525);
	l.addrlen = sizeof(struct sockaddr_in);
	l.port = 2525;
	snprintf(l.host, sizeof l.host, "192.0.2.254");
	struct diag_report rep = { 0 };
	int fd;
	assert_int_equal(diag_bind_listener_rep(&l, NULL, &rep, &fd), DIAG_EXIT_ADDRESS);
	assert_string_equal(rep.v[0].what,
			    "address 192.0.2.254 is not configured on any interface (listener 192.0.2.254:2525)");
	diag_report_clear(&rep);
	assert_int_equal(diag_check_address(&l, NULL, &rep), DIAG_EXIT_ADDRESS);
	assert_int_equal(rep.v[0].event, EV_NET_ADDRESS_NOT_LOCAL);
	diag_report_clear(&rep);

	/* Wildcards and the loopback /8 are always local. */
	l.addr = sa4("0.0.0.0", 2525);
	assert_int_equal(diag_check_address(&l, NULL, &rep), 0);
	diag_report_clear(&rep);
}

/* ---- spool and control socket --------------------------------------------- */

static char *tmpdir(void)
{
	char tmpl[] = "/tmp/test_diag.XXXXXX";
	char *d = mkdtemp(tmpl);
	assert_non_null(d);
	return strdup(d);
}

static void test_spool_checks(void **state)
{
	char *dir = tmpdir();
	char path[512];
	snprintf(path, sizeof path, "%s/a/spool", dir);
	struct carrier_conf conf;
	memset(&conf, 0, sizeof conf);
	conf.spool_path = path;
	conf.user = (char *)"nobody";
	struct diag_report rep = { 0 };
	struct evlog *log = evlog_new("test");

	/* Doctor: a missing spool is fine when it can be created, and is not. */
	assert_int_equal(diag_check_spool(&conf, 0, log, &rep), 0);
	assert_contains(rep.v[0].what, "does not exist yet");
	struct stat st;
	assert_int_equal(stat(path, &st), -1);
	diag_report_clear(&rep);

	/* The daemon creates it, 0700, owned by server.user when root. */
	assert_int_equal(diag_check_spool(&conf, DIAG_F_MODIFY, log, &rep), 0);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0700);
	assert_int_equal(evlog_count(log, EV_NET_SPOOL_DIR_CREATED), 1);
	if (geteuid() == 0)
		assert_int_equal(st.st_uid, getpwnam("nobody")->pw_uid);
	diag_report_clear(&rep);

	if (geteuid() == 0) {
		/* An existing directory of someone else is never chowned. */
		assert_int_equal(chown(path, 0, 0), 0);
		assert_int_equal(diag_check_spool(&conf, DIAG_F_MODIFY, log, &rep), DIAG_EXIT_SPOOL);
		char want[600];
		snprintf(want, sizeof want, "spool directory %s is owned by uid 0, expected user nobody (uid %u)",
			 path, (unsigned)getpwnam("nobody")->pw_uid);
		assert_string_equal(rep.v[0].what, want);
		assert_contains(rep.v[0].remedy, "chown -R nobody:");
		diag_report_clear(&rep);
		assert_int_equal(chown(path, getpwnam("nobody")->pw_uid, 0), 0);
	}

	/* Group/other access warns. */
	assert_int_equal(chmod(path, 0755), 0);
	assert_int_equal(diag_check_spool(&conf, 0, log, &rep), 0);
	assert_int_equal(diag_report_count(&rep, DIAG_WARN), 1);
	assert_int_equal(rep.v[0].event, EV_NET_SPOOL_DIR_MODE);
	assert_contains(rep.v[0].what, "has mode 0755, expected 0700");
	diag_report_clear(&rep);

	/* A file where the directory should be. */
	char file[600];
	snprintf(file, sizeof file, "%s/file", dir);
	FILE *f = fopen(file, "w");
	assert_non_null(f);
	fclose(f);
	conf.spool_path = file;
	assert_int_equal(diag_check_spool(&conf, DIAG_F_MODIFY, log, &rep), DIAG_EXIT_SPOOL);
	assert_contains(rep.v[0].what, "exists and is not a directory");
	diag_report_clear(&rep);

	unlink(file);
	rmdir(path);
	snprintf(path, sizeof path, "%s/a", dir);
	rmdir(path);
	rmdir(dir);
	free(dir);
	evlog_free(&log);
}

static int unix_listener(const char *path, int do_listen)
{
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	struct sockaddr_un sun;
	memset(&sun, 0, sizeof sun);
	sun.sun_family = AF_UNIX;
	snprintf(sun.sun_path, sizeof sun.sun_path, "%s", path);
	assert_int_equal(bind(fd, (struct sockaddr *)&sun, sizeof sun), 0);
	if (do_listen)
		assert_int_equal(listen(fd, 4), 0);
	return fd;
}

static void test_control_checks(void **state)
{
	char *dir = tmpdir();
	char path[512];
	snprintf(path, sizeof path, "%s/ctl.sock", dir);
	struct carrier_conf conf;
	memset(&conf, 0, sizeof conf);
	conf.control_socket = path;
	conf.pidfile = (char *)"";
	struct diag_report rep = { 0 };
	struct evlog *log = evlog_new("test");

	assert_int_equal(diag_check_control(&conf, 0, log, &rep), 0);
	assert_contains(rep.v[0].what, "is free");
	diag_report_clear(&rep);

	/* A live listener: another carrierd, named by pid. */
	int fd = unix_listener(path, 1);
	assert_int_equal(diag_check_control(&conf, DIAG_F_MODIFY, log, &rep), DIAG_EXIT_RUNNING);
	char want[64];
	snprintf(want, sizeof want, "(pid %d, ", (int)getpid());
	assert_contains(rep.v[0].what, want);
	assert_int_equal(rep.v[0].event, EV_NET_CONTROL_RUNNING);
	diag_report_clear(&rep);
	close(fd);

	/* Stale: doctor leaves it, the daemon removes it. */
	struct stat st;
	assert_int_equal(diag_check_control(&conf, 0, log, &rep), 0);
	assert_contains(rep.v[0].what, "stale socket");
	assert_int_equal(lstat(path, &st), 0);
	diag_report_clear(&rep);
	assert_int_equal(diag_check_control(&conf, DIAG_F_MODIFY, log, &rep), 0);
	assert_int_equal(evlog_count(log, EV_NET_CONTROL_STALE), 1);
	assert_int_equal(lstat(path, &st), -1);
	diag_report_clear(&rep);

	/* Not a socket: refused, never removed. */
	FILE *f = fopen(path, "w");
	fclose(f);
	assert_int_equal(diag_check_control(&conf, DIAG_F_MODIFY, log, &rep), DIAG_EXIT_CONTROL);
	assert_int_equal(rep.v[0].event, EV_NET_CONTROL_NOT_SOCKET);
	assert_int_equal(lstat(path, &st), 0);
	diag_report_clear(&rep);
	unlink(path);

	/* Too long for sun_path. */
	char longp[200];
	memset(longp, 'x', sizeof longp - 1);
	longp[0] = '/';
	longp[sizeof longp - 1] = '\0';
	conf.control_socket = longp;
	assert_int_equal(diag_check_control(&conf, 0, log, &rep), DIAG_EXIT_CONTROL);
	assert_int_equal(rep.v[0].event, EV_NET_CONTROL_PATH_TOO_LONG);
	diag_report_clear(&rep);

	rmdir(dir);
	free(dir);
	evlog_free(&log);
}

/* ---- baseline ----------------------------------------------------------------- */

static void load(struct diag_baseline *b, const char *text)
{
	memset(b, 0, sizeof *b);
	assert_int_equal(diag_baseline_parse(text, b), 0);
}

static void assert_drift(const char *old_text, const char *new_text,
			 const char *const *want, size_t n_want)
{
	struct diag_baseline o, n;
	struct diag_drift d = { 0 };
	load(&o, old_text);
	load(&n, new_text);
	assert_int_equal(diag_baseline_diff(&o, &n, &d), 0);
	for (size_t i = 0; i < d.n || i < n_want; i++) {
		const char *got = i < d.n ? d.v[i] : "(none)";
		const char *w = i < n_want ? want[i] : "(none)";
		if (strcmp(got, w))
			fail_msg("drift %zu: got \"%s\", want \"%s\"", i, got, w);
	}
	diag_drift_clear(&d);
	diag_baseline_clear(&o);
	diag_baseline_clear(&n);
}

static void test_baseline_diff(void **state)
{
	static const char old_text[] =
		"# carrier network baseline 1\n"
		"hostname a\n"
		"iface eth0 up\n"
		"iface veth0 up\n"
		"iface lo up\n"
		"addr eth0 10.1.2.3/24\n"
		"addr lo 127.0.0.1/8\n"
		"route4 0.0.0.0/0 via 10.1.2.1 dev eth0\n"
		"route6 fd00::/64 dev eth0\n"
		"resolver 127.0.0.53\n"
		"resolver 10.1.2.53\n";
	static const char new_text[] =
		"hostname b\n"
		"iface eth0 down\n"
		"iface lo up\n"
		"iface veth1 up\n"
		"addr eth0 10.1.2.4/24\n"
		"addr lo 127.0.0.1/8\n"
		"route4 0.0.0.0/0 via 10.1.2.254 dev eth0\n"
		"route6 fd00::/64 dev eth0\n"
		"resolver 10.1.2.53\n"
		"resolver 192.0.2.53\n";
	static const char *const want[] = {
		"host name changed: a -> b",
		"interface eth0: was up, now down",
		"interface veth0: in baseline, now missing",
		"interface veth1: new",
		"address 10.1.2.3/24 on eth0: in baseline, now missing",
		"address 10.1.2.4/24 on eth0: new",
		"route 0.0.0.0/0 via 10.1.2.1 dev eth0: in baseline, now missing",
		"route 0.0.0.0/0 via 10.1.2.254 dev eth0: new",
		"resolver 192.0.2.53: new, 127.0.0.53: missing",
	};
	assert_drift(old_text, new_text, want, sizeof want / sizeof want[0]);
	/* Same facts in another order, with comments and blank lines: no drift. */
	assert_drift(old_text,
		     "resolver 10.1.2.53\n\nresolver 127.0.0.53\n# x\nroute6 fd00::/64 dev eth0\n"
		     "route4 0.0.0.0/0 via 10.1.2.1 dev eth0\naddr lo 127.0.0.1/8\naddr eth0 10.1.2.3/24\n"
		     "iface lo up\niface veth0 up\niface eth0 up\nhostname a\nhostname a\n",
		     NULL, 0);
	static const char *const unknown[] = { "'future thing': new" };
	assert_drift("hostname a\n", "hostname a\nfuture thing\n", unknown, 1);
}

static void test_baseline_file_roundtrip(void **state)
{
	struct diag_baseline b = { 0 }, back = { 0 };
	char err[256] = "";
	char rc[] = "/tmp/test_diag.resolv.XXXXXX";
	int fd = mkstemp(rc);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "search x\nnameserver 192.0.2.53\n nameserver 2001:db8::53\n", 56), 56);
	close(fd);
	assert_int_equal(diag_baseline_collect(&b, rc, err, sizeof err), 0);
	assert_string_equal(err, "");
	int found = 0;
	for (size_t i = 0; i < b.n; i++) {
		found += !strcmp(b.lines[i], "resolver 192.0.2.53") ||
			 !strcmp(b.lines[i], "resolver 2001:db8::53");
		if (i)
			assert_true(strcmp(b.lines[i - 1], b.lines[i]) < 0);
	}
	assert_int_equal(found, 2);

	char *dir = tmpdir(), path[512];
	snprintf(path, sizeof path, "%s/sub/network.baseline", dir);
	assert_int_equal(diag_baseline_save(&b, path, err, sizeof err), 0);
	assert_int_equal(diag_baseline_load(path, &back, err, sizeof err), 0);
	assert_int_equal(back.n, b.n);
	for (size_t i = 0; i < b.n; i++)
		assert_string_equal(back.lines[i], b.lines[i]);
	char *text = test_read_file(path);
	assert_non_null(text);
	assert_true(!strncmp(text, "# carrier network baseline 1\n", 29));
	free(text);

	struct diag_baseline none = { 0 };
	snprintf(path + strlen(path), 8, ".none");
	assert_int_equal(diag_baseline_load(path, &none, err, sizeof err), 1);

	/* Unreadable resolv.conf: no resolvers, and the reason. */
	diag_baseline_clear(&back);
	assert_int_equal(diag_baseline_collect(&back, "/nonexistent/resolv.conf", err, sizeof err), 0);
	assert_string_equal(err, "No such file or directory");

	unlink(rc);
	snprintf(path, sizeof path, "%s/sub/network.baseline", dir);
	unlink(path);
	snprintf(path, sizeof path, "%s/sub", dir);
	rmdir(path);
	rmdir(dir);
	free(dir);
	diag_baseline_clear(&b);
	diag_baseline_clear(&back);
}

/* ---- report -------------------------------------------------------------------- */

static void test_report(void **state)
{
	struct diag_report rep = { 0 };
	assert_int_equal(diag_report_exit(&rep), 0);
	diag_report_add(&rep, "a", DIAG_OK, DIAG_EXIT_SPOOL, "fine %d", 1);
	diag_report_add(&rep, "b", DIAG_WARN, DIAG_EXIT_SPOOL, "meh");
	assert_int_equal(diag_report_exit(&rep), 0);
	const struct evlog_field f[] = { EVF_S("interface", "lo") };
	diag_report_event(&rep, NULL, "loopback", DIAG_FAIL, DIAG_EXIT_LOOPBACK,
			  EV_NET_LOOPBACK_DOWN, f, 1);
	diag_report_add(&rep, "c", DIAG_FAIL, DIAG_EXIT_SPOOL, "later");
	assert_int_equal(diag_report_exit(&rep), DIAG_EXIT_LOOPBACK);
	assert_string_equal(rep.v[0].what, "fine 1");
	assert_int_equal(rep.v[0].exit_status, 0);
	assert_string_equal(rep.v[2].what, "loopback interface lo is down");
	assert_string_equal(rep.v[2].remedy, "ip link set lo up");
	assert_int_equal(diag_report_count(&rep, DIAG_FAIL), 2);
	for (int i = 0; i < 40; i++)
		diag_report_add(&rep, "many", DIAG_OK, 0, "%d", i);
	assert_int_equal(rep.n, 44);
	diag_report_clear(&rep);
	assert_int_equal(rep.n, 0);
	diag_report_add(NULL, "x", DIAG_FAIL, 1, "ignored");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_tcp_parse_line),
		cmocka_unit_test(test_tcp_find_listener),
		cmocka_unit_test(test_unix_find_inode),
		cmocka_unit_test(test_inet6_find),
		cmocka_unit_test(test_port_holder_is_this_process),
		cmocka_unit_test(test_bind_address_not_local),
		cmocka_unit_test(test_spool_checks),
		cmocka_unit_test(test_control_checks),
		cmocka_unit_test(test_baseline_diff),
		cmocka_unit_test(test_baseline_file_roundtrip),
		cmocka_unit_test(test_report),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
