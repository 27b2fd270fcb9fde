/*
 * diag: the startup checks and their report.
 *
 * Each check observes one thing (a socket, an interface flag, an address,
 * a bind, a name lookup, a directory, a socket path), emits the event
 * that names what it saw and what to do, and records the same text in the
 * report `carrier doctor` prints.  Nothing here starts a service; changes
 * to the host (creating the spool, removing a stale control socket) are
 * made only with DIAG_F_MODIFY, which the daemon passes and doctor does
 * not.  Called from main's thread and the CLI; blocking is fine.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <libgen.h>
#include <limits.h>
#include <net/if.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/un.h>
#include <unistd.h>

#include "diag.h"
#include "diag_net.h"
#include "spool.h"

#define DIAG_BACKLOG 1024

/* Emits `id` with the given fields and records it in the report. */
#define diag_event(rep, log, check, st, ex, id, ...)                           \
	do {                                                                   \
		const struct evlog_field df_[] = { __VA_ARGS__ };              \
		diag_report_event((rep), (log), (check), (st), (ex), (id), df_, \
				  sizeof df_ / sizeof df_[0]);                 \
	} while (0)

/* ---- report ------------------------------------------------------------ */

void diag_report_clear(struct diag_report *rep)
{
	if (!rep)
		return;
	free(rep->v);
	rep->v = NULL;
	rep->n = rep->cap = 0;
}

int diag_report_exit(const struct diag_report *rep)
{
	if (!rep)
		return 0;
	for (size_t i = 0; i < rep->n; i++)
		if (rep->v[i].status == DIAG_FAIL && rep->v[i].exit_status)
			return rep->v[i].exit_status;
	return 0;
}

size_t diag_report_count(const struct diag_report *rep, enum diag_status st)
{
	size_t n = 0;
	for (size_t i = 0; rep && i < rep->n; i++)
		n += rep->v[i].status == st;
	return n;
}

static struct diag_result *report_push(struct diag_report *rep, const char *check,
				       enum diag_status st, int exit_status)
{
	if (!rep)
		return NULL;
	if (rep->n == rep->cap) {
		size_t cap = rep->cap ? rep->cap * 2 : 16;
		struct diag_result *v = realloc(rep->v, cap * sizeof *v);
		if (!v)
			return NULL;    /* the event was emitted; only the line is lost */
		rep->v = v;
		rep->cap = cap;
	}
	struct diag_result *r = &rep->v[rep->n++];
	memset(r, 0, sizeof *r);
	snprintf(r->check, sizeof r->check, "%s", check);
	r->status = st;
	r->exit_status = st == DIAG_FAIL ? exit_status : 0;
	return r;
}

void diag_report_add(struct diag_report *rep, const char *check,
		     enum diag_status st, int exit_status, const char *fmt, ...)
{
	struct diag_result *r = report_push(rep, check, st, exit_status);
	if (!r)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(r->what, sizeof r->what, fmt, ap);
	va_end(ap);
}

void diag_report_event(struct diag_report *rep, struct evlog *log,
		       const char *check, enum diag_status st, int exit_status,
		       enum evlog_id id, const struct evlog_field *f, size_t n)
{
	evlog_emit_(log, id, f, n);
	struct diag_result *r = report_push(rep, check, st, exit_status);
	if (!r)
		return;
	r->event = (int)id;
	const struct evlog_def *d = evlog_def_by_id((int)id);
	if (!d) {
		snprintf(r->what, sizeof r->what, "event %d (not in the catalogue)", (int)id);
		return;
	}
	evlog_render(r->what, sizeof r->what, d->tmpl, f, n);
	evlog_render(r->cause, sizeof r->cause, d->cause, f, n);
	evlog_render(r->remedy, sizeof r->remedy, d->remedy, f, n);
}

/* ---- helpers ------------------------------------------------------------ */

char *diag_listen_format(const struct conf_listen *l, char *buf, size_t size)
{
	char host[CONF_HOST_MAX] = "";
	if (l->addr.ss_family == AF_INET)
		inet_ntop(AF_INET, &((const struct sockaddr_in *)&l->addr)->sin_addr,
			  host, sizeof host);
	else if (l->addr.ss_family == AF_INET6)
		inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)&l->addr)->sin6_addr,
			  host, sizeof host);
	else
		snprintf(host, sizeof host, "%s", l->host);
	if (l->addr.ss_family == AF_INET6)
		snprintf(buf, size, "[%s]:%u", host, (unsigned)l->port);
	else
		snprintf(buf, size, "%s:%u", host, (unsigned)l->port);
	return buf;
}

static void listen_address(const struct conf_listen *l, char *buf, size_t size)
{
	buf[0] = '\0';
	if (l->addr.ss_family == AF_INET)
		inet_ntop(AF_INET, &((const struct sockaddr_in *)&l->addr)->sin_addr, buf,
			  (socklen_t)size);
	else if (l->addr.ss_family == AF_INET6)
		inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)&l->addr)->sin6_addr,
			  buf, (socklen_t)size);
	if (!buf[0])
		snprintf(buf, size, "%s", l->host);
}

static bool listen_is_wildcard(const struct conf_listen *l)
{
	if (l->addr.ss_family == AF_INET)
		return ((const struct sockaddr_in *)&l->addr)->sin_addr.s_addr == htonl(INADDR_ANY);
	if (l->addr.ss_family == AF_INET6)
		return IN6_IS_ADDR_UNSPECIFIED(&((const struct sockaddr_in6 *)&l->addr)->sin6_addr);
	return false;
}

static bool listen_is_loopback(const struct conf_listen *l)
{
	if (l->addr.ss_family == AF_INET)
		return (ntohl(((const struct sockaddr_in *)&l->addr)->sin_addr.s_addr) >> 24) == 127;
	if (l->addr.ss_family == AF_INET6)
		return IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)&l->addr)->sin6_addr);
	return false;
}

/* Reads a small integer from a /proc/sys file; `def` when unreadable. */
static long read_sysctl(const char *path, long def)
{
	char *s = diag_read_file(path, NULL);
	if (!s)
		return def;
	char *end;
	long v = strtol(s, &end, 10);
	if (end == s)
		v = def;
	free(s);
	return v;
}

static void human_size(unsigned long long b, char *buf, size_t size)
{
	static const char *const units[] = { "bytes", "KiB", "MiB", "GiB", "TiB", "PiB" };
	double v = (double)b;
	size_t u = 0;
	while (v >= 1024 && u + 1 < sizeof units / sizeof units[0]) {
		v /= 1024;
		u++;
	}
	if (u == 0)
		snprintf(buf, size, "%llu bytes", b);
	else
		snprintf(buf, size, "%.1f %s", v, units[u]);
}

/* ---- network stack -------------------------------------------------------- */

static int try_socket(int family)
{
	int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return errno;
	close(fd);
	return 0;
}

int diag_check_netstack(const struct carrier_conf *conf, struct evlog *log,
			struct diag_report *rep)
{
	int rc = 0;
	int e4 = try_socket(AF_INET);
	if (e4) {
		diag_event(rep, log, "netstack", DIAG_FAIL, DIAG_EXIT_NETSTACK,
			   EV_NET_SOCKET_FAILED, EVF_S("family", "IPv4"),
			   EVF_S("reason", strerror(e4)));
		rc = DIAG_EXIT_NETSTACK;
	}
	int e6 = try_socket(AF_INET6);
	const struct conf_listen *v6 = NULL;
	for (size_t i = 0; conf && i < conf->n_listen && !v6; i++)
		if (conf->listen[i].addr.ss_family == AF_INET6)
			v6 = &conf->listen[i];
	if (e6 && v6) {
		char lt[DIAG_LISTEN_TEXT_MAX];
		diag_event(rep, log, "netstack", DIAG_FAIL, DIAG_EXIT_NETSTACK,
			   EV_NET_IPV6_UNAVAILABLE, EVF_S("reason", strerror(e6)),
			   EVF_S("listen", diag_listen_format(v6, lt, sizeof lt)));
		return rc ? rc : DIAG_EXIT_NETSTACK;
	}
	if (rc)
		return rc;
	if (e6)
		diag_report_add(rep, "netstack", DIAG_OK, 0,
				"IPv4 sockets work; IPv6 unavailable (%s), no IPv6 listener configured",
				strerror(e6));
	else
		diag_report_add(rep, "netstack", DIAG_OK, 0, "IPv4 and IPv6 sockets work");
	return 0;
}

int diag_check_loopback(struct evlog *log, struct diag_report *rep)
{
	/* An AF_UNIX socket answers interface ioctls without needing IPv4. */
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	struct ifreq ifr;
	memset(&ifr, 0, sizeof ifr);
	snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "lo");
	int err = 0;
	if (fd < 0)
		err = errno;
	else if (ioctl(fd, SIOCGIFFLAGS, &ifr) < 0)
		err = errno;
	if (fd >= 0)
		close(fd);
	if (err) {
		diag_event(rep, log, "loopback", DIAG_FAIL, DIAG_EXIT_LOOPBACK,
			   EV_NET_LOOPBACK_MISSING, EVF_S("interface", "lo"),
			   EVF_S("reason", err == ENODEV ? "no such interface" : strerror(err)));
		return DIAG_EXIT_LOOPBACK;
	}
	if (!(ifr.ifr_flags & IFF_UP)) {
		diag_event(rep, log, "loopback", DIAG_FAIL, DIAG_EXIT_LOOPBACK,
			   EV_NET_LOOPBACK_DOWN, EVF_S("interface", "lo"));
		return DIAG_EXIT_LOOPBACK;
	}
	diag_report_add(rep, "loopback", DIAG_OK, 0, "interface lo is up");
	return 0;
}

/* ---- listen addresses ----------------------------------------------------- */

static unsigned mask_prefix(const uint8_t *m, size_t len)
{
	unsigned n = 0;
	for (size_t i = 0; i < len; i++)
		for (int b = 7; b >= 0; b--) {
			if (!(m[i] >> b & 1))
				return n;
			n++;
		}
	return n;
}

static bool in_prefix(const uint8_t *a, const uint8_t *net, unsigned prefix)
{
	for (unsigned i = 0; i < prefix; i++) {
		unsigned byte = i / 8, bit = 7 - i % 8;
		if ((a[byte] >> bit & 1) != (net[byte] >> bit & 1))
			return false;
	}
	return true;
}

/* Does interface address `ifa` make `want` (same family) local?  Exact
 * match, or (IPv4) inside the prefix of a loopback interface, whose local
 * route covers the whole prefix (127.0.0.2 works with 127.0.0.1/8). */
static bool ifa_covers(const struct ifaddrs *ifa, const struct sockaddr *want)
{
	if (!ifa->ifa_addr || ifa->ifa_addr->sa_family != want->sa_family)
		return false;
	if (want->sa_family == AF_INET) {
		const uint8_t *a = (const uint8_t *)&((const struct sockaddr_in *)ifa->ifa_addr)->sin_addr;
		const uint8_t *w = (const uint8_t *)&((const struct sockaddr_in *)want)->sin_addr;
		if (!memcmp(a, w, 4))
			return true;
		if ((ifa->ifa_flags & IFF_LOOPBACK) && ifa->ifa_netmask) {
			const uint8_t *m = (const uint8_t *)&((const struct sockaddr_in *)ifa->ifa_netmask)->sin_addr;
			return in_prefix(w, a, mask_prefix(m, 4));
		}
		return false;
	}
	const uint8_t *a = (const uint8_t *)&((const struct sockaddr_in6 *)ifa->ifa_addr)->sin6_addr;
	const uint8_t *w = (const uint8_t *)&((const struct sockaddr_in6 *)want)->sin6_addr;
	return !memcmp(a, w, 16);
}

/* An IPv6 address the kernel knows but will not bind yet (DAD tentative
 * or failed): emits NET_ADDRESS_TENTATIVE and returns DIAG_EXIT_ADDRESS;
 * 0 when the address is usable or unknown. */
static int check_inet6_usable(const struct conf_listen *l, const char *lt, const char *addr,
			      const char *check, struct evlog *log, struct diag_report *rep)
{
	if (l->addr.ss_family != AF_INET6)
		return 0;
	char *text = diag_read_file("/proc/net/if_inet6", NULL);
	unsigned flags = 0;
	char ifname[64];
	const uint8_t *a = (const uint8_t *)&((const struct sockaddr_in6 *)&l->addr)->sin6_addr;
	int found = text && diag_inet6_find(text, a, &flags, ifname, sizeof ifname) == 0;
	free(text);
	const char *reason = NULL;
	if (found && (flags & DIAG_IFA_F_DADFAILED))
		reason = "IPv6 duplicate address detection failed: another host on the link uses it (dadfailed)";
	else if (found && (flags & DIAG_IFA_F_TENTATIVE))
		reason = "IPv6 duplicate address detection has not finished (tentative)";
	if (!reason)
		return 0;
	diag_event(rep, log, check, DIAG_FAIL, DIAG_EXIT_ADDRESS, EV_NET_ADDRESS_TENTATIVE,
		   EVF_S("address", addr), EVF_S("listen", lt), EVF_S("interface", ifname),
		   EVF_S("reason", reason));
	return DIAG_EXIT_ADDRESS;
}

int diag_check_address(const struct conf_listen *l, struct evlog *log,
		       struct diag_report *rep)
{
	char lt[DIAG_LISTEN_TEXT_MAX], addr[CONF_HOST_MAX];
	diag_listen_format(l, lt, sizeof lt);
	listen_address(l, addr, sizeof addr);
	if (listen_is_wildcard(l)) {
		diag_report_add(rep, "address", DIAG_OK, 0,
				"%s: wildcard, every local address", lt);
		return 0;
	}
	struct ifaddrs *ifs;
	if (getifaddrs(&ifs) < 0) {
		diag_event(rep, log, "address", DIAG_WARN, 0, EV_NET_IFADDRS_FAILED,
			   EVF_S("reason", strerror(errno)));
		return 0;
	}
	const struct ifaddrs *found = NULL;
	for (const struct ifaddrs *i = ifs; i && !found; i = i->ifa_next)
		if (ifa_covers(i, (const struct sockaddr *)&l->addr))
			found = i;
	int rc = 0;
	if (found && !(found->ifa_flags & IFF_UP)) {
		diag_event(rep, log, "address", DIAG_WARN, 0, EV_NET_ADDRESS_IFACE_DOWN,
			   EVF_S("address", addr), EVF_S("listen", lt),
			   EVF_S("interface", found->ifa_name));
	} else if (found) {
		rc = check_inet6_usable(l, lt, addr, "address", log, rep);
		if (!rc)
			diag_report_add(rep, "address", DIAG_OK, 0, "%s: address %s is on %s",
					lt, addr, found->ifa_name);
	} else {
		const char *sysctl = l->addr.ss_family == AF_INET6
					     ? "net.ipv6.ip_nonlocal_bind"
					     : "net.ipv4.ip_nonlocal_bind";
		long nonlocal = read_sysctl(l->addr.ss_family == AF_INET6
						    ? "/proc/sys/net/ipv6/ip_nonlocal_bind"
						    : "/proc/sys/net/ipv4/ip_nonlocal_bind",
					    0);
		if (nonlocal == 1) {
			diag_event(rep, log, "address", DIAG_WARN, 0, EV_NET_ADDRESS_NONLOCAL,
				   EVF_S("address", addr), EVF_S("listen", lt),
				   EVF_S("sysctl", sysctl));
		} else {
			diag_event(rep, log, "address", DIAG_FAIL, DIAG_EXIT_ADDRESS,
				   EV_NET_ADDRESS_NOT_LOCAL, EVF_S("address", addr),
				   EVF_S("listen", lt));
			rc = DIAG_EXIT_ADDRESS;
		}
	}
	freeifaddrs(ifs);
	return rc;
}

/* ---- listeners ------------------------------------------------------------ */

static int bind_failed(const struct conf_listen *l, const char *lt, const char *step,
		       int err, struct evlog *log, struct diag_report *rep)
{
	diag_event(rep, log, "listener", DIAG_FAIL, DIAG_EXIT_LISTEN, EV_NET_BIND_FAILED,
		   EVF_S("listen", lt), EVF_S("step", step), EVF_S("reason", strerror(err)));
	return DIAG_EXIT_LISTEN;
}

static int port_in_use(const struct conf_listen *l, const char *lt,
		       struct evlog *log, struct diag_report *rep)
{
	struct diag_holder h;
	int r = diag_port_holder("/proc", (const struct sockaddr *)&l->addr, &h);
	if (r == 1) {
		diag_event(rep, log, "listener", DIAG_FAIL, DIAG_EXIT_LISTEN, EV_NET_PORT_IN_USE,
			   EVF_S("listen", lt), EVF_I("pid", h.pid),
			   EVF_S("process", h.comm[0] ? h.comm : "name unknown"),
			   EVF_I("port", l->port));
		return DIAG_EXIT_LISTEN;
	}
	char reason[256];
	if (r == 0)
		snprintf(reason, sizeof reason,
			 "socket inode %lu of uid %u is listening, but no process visible to uid %u holds it",
			 h.inode, h.uid, (unsigned)geteuid());
	else
		snprintf(reason, sizeof reason,
			 "no listening socket on port %u is visible in /proc/net/tcp or tcp6; it may be bound without listening",
			 (unsigned)l->port);
	diag_event(rep, log, "listener", DIAG_FAIL, DIAG_EXIT_LISTEN, EV_NET_PORT_IN_USE_HIDDEN,
		   EVF_S("listen", lt), EVF_S("reason", reason), EVF_I("port", l->port));
	return DIAG_EXIT_LISTEN;
}

static int bind_error(const struct conf_listen *l, const char *lt, const char *step,
		      int err, struct evlog *log, struct diag_report *rep)
{
	if (err == EADDRINUSE)
		return port_in_use(l, lt, log, rep);
	if (err == EADDRNOTAVAIL) {
		char addr[CONF_HOST_MAX];
		listen_address(l, addr, sizeof addr);
		int r = check_inet6_usable(l, lt, addr, "listener", log, rep);
		if (r)
			return r;
		diag_event(rep, log, "listener", DIAG_FAIL, DIAG_EXIT_ADDRESS,
			   EV_NET_ADDRESS_NOT_LOCAL, EVF_S("address", addr), EVF_S("listen", lt));
		return DIAG_EXIT_ADDRESS;
	}
	if (err == EACCES) {
		long limit = read_sysctl("/proc/sys/net/ipv4/ip_unprivileged_port_start", 1024);
		if (l->port < limit) {
			diag_event(rep, log, "listener", DIAG_FAIL, DIAG_EXIT_PRIVILEGE,
				   EV_NET_PORT_PRIVILEGED, EVF_S("listen", lt),
				   EVF_I("port", l->port), EVF_I("limit", limit),
				   EVF_I("uid", geteuid()));
			return DIAG_EXIT_PRIVILEGE;
		}
	}
	return bind_failed(l, lt, step, err, log, rep);
}

static int bind_listener(const struct conf_listen *l, bool test, struct evlog *log,
			 struct diag_report *rep, int *fd_r)
{
	char lt[DIAG_LISTEN_TEXT_MAX];
	diag_listen_format(l, lt, sizeof lt);
	*fd_r = -1;
	int family = l->addr.ss_family;
	int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return bind_failed(l, lt, "socket", errno, log, rep);
	int one = 1;
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0) {
		int e = errno;
		close(fd);
		return bind_failed(l, lt, "setsockopt SO_REUSEADDR", e, log, rep);
	}
	if (family == AF_INET6 &&
	    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one) < 0) {
		int e = errno;
		close(fd);
		return bind_failed(l, lt, "setsockopt IPV6_V6ONLY", e, log, rep);
	}
	socklen_t len = l->addrlen ? l->addrlen
				   : (socklen_t)(family == AF_INET6 ? sizeof(struct sockaddr_in6)
								    : sizeof(struct sockaddr_in));
	const char *step = "bind";
	int rc = bind(fd, (const struct sockaddr *)&l->addr, len);
	if (rc == 0) {
		step = "listen";
		rc = listen(fd, DIAG_BACKLOG);
	}
	if (rc < 0) {
		int e = errno;
		close(fd);
		return bind_error(l, lt, step, e, log, rep);
	}
	diag_report_add(rep, "listener", DIAG_OK, 0,
			test ? "%s is free (bound, listened, closed again)" : "listening on %s", lt);
	*fd_r = fd;
	return 0;
}

int diag_bind_listener_rep(const struct conf_listen *l, struct evlog *log,
			   struct diag_report *rep, int *fd_r)
{
	return bind_listener(l, false, log, rep, fd_r);
}

int diag_bind_listener(const struct conf_listen *l, struct evlog *log, int *fd_r)
{
	return bind_listener(l, false, log, NULL, fd_r);
}

/* ---- host name ------------------------------------------------------------ */

int diag_check_hostname(const struct carrier_conf *conf, struct evlog *log,
			struct diag_report *rep)
{
	char sys[HOST_NAME_MAX + 1];
	const char *name = conf && conf->hostname && conf->hostname[0] ? conf->hostname : NULL;
	if (!name) {
		if (gethostname(sys, sizeof sys) < 0) {
			diag_event(rep, log, "hostname", DIAG_WARN, 0, EV_NET_HOSTNAME_UNKNOWN,
				   EVF_S("reason", strerror(errno)));
			return 0;
		}
		sys[sizeof sys - 1] = '\0';
		name = sys;
	}
	struct addrinfo hints, *res = NULL;
	memset(&hints, 0, sizeof hints);
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	int r = getaddrinfo(name, NULL, &hints, &res);
	if (r != 0) {
		char reason[256];
		if (r == EAI_SYSTEM)
			snprintf(reason, sizeof reason, "%s", strerror(errno));
		else
			snprintf(reason, sizeof reason, "%s", gai_strerror(r));
		diag_event(rep, log, "hostname", DIAG_WARN, 0, EV_NET_HOSTNAME_UNRESOLVED,
			   EVF_S("hostname", name), EVF_S("reason", reason));
		return 0;
	}
	char addr[INET6_ADDRSTRLEN] = "?";
	if (res->ai_family == AF_INET)
		inet_ntop(AF_INET, &((struct sockaddr_in *)res->ai_addr)->sin_addr, addr, sizeof addr);
	else if (res->ai_family == AF_INET6)
		inet_ntop(AF_INET6, &((struct sockaddr_in6 *)res->ai_addr)->sin6_addr, addr, sizeof addr);
	freeaddrinfo(res);
	if (!strchr(name, '.')) {
		diag_event(rep, log, "hostname", DIAG_WARN, 0, EV_NET_HOSTNAME_NOT_FQDN,
			   EVF_S("hostname", name));
		return 0;
	}
	diag_report_add(rep, "hostname", DIAG_OK, 0, "%s resolves to %s", name, addr);
	return 0;
}

/* ---- directories ------------------------------------------------------------ */

/* mkdir -p: intermediate directories 0755, the last one `mode`. */
static int mkdir_p(const char *path, mode_t mode)
{
	char buf[PATH_MAX];
	if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf) {
		errno = ENAMETOOLONG;
		return -1;
	}
	for (char *p = buf + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(buf, 0755) < 0 && errno != EEXIST)
			return -1;
		*p = '/';
	}
	if (mkdir(buf, mode) < 0 && errno != EEXIST)
		return -1;
	return 0;
}

/* For a path that does not exist: can it be created?  Finds the nearest
 * existing ancestor; 0 when it is a writable directory, else -1 with the
 * reason. */
static int creatable(const char *path, char *reason, size_t size)
{
	char buf[PATH_MAX];
	snprintf(buf, sizeof buf, "%s", path);
	for (;;) {
		char *slash = strrchr(buf, '/');
		if (!slash)
			snprintf(buf, sizeof buf, ".");
		else if (slash == buf)
			buf[1] = '\0';
		else
			*slash = '\0';
		struct stat st;
		if (stat(buf, &st) == 0) {
			if (!S_ISDIR(st.st_mode)) {
				snprintf(reason, size, "does not exist and cannot be created: %s is not a directory", buf);
				return -1;
			}
			if (access(buf, W_OK | X_OK) < 0) {
				snprintf(reason, size, "does not exist and cannot be created: %s: %s",
					 buf, strerror(errno));
				return -1;
			}
			return 0;
		}
		if (errno != ENOENT) {
			snprintf(reason, size, "does not exist and cannot be created: %s: %s",
				 buf, strerror(errno));
			return -1;
		}
		if (!strcmp(buf, "/") || !strcmp(buf, "."))
			return 0;
	}
}

/* ---- spool directory -------------------------------------------------------- */

/* Who must own the spool: server.user when root, else ourselves.  Fills
 * the uid, gid and name; returns -1 (after reporting) when the user
 * does not exist. */
static int spool_owner(const struct carrier_conf *conf, uid_t *uid_r, gid_t *gid_r,
		       char *name, size_t size, struct evlog *log, struct diag_report *rep)
{
	*uid_r = geteuid();
	*gid_r = getegid();
	const struct passwd *pw;
	if (*uid_r == 0 && conf->user && conf->user[0]) {
		pw = getpwnam(conf->user);
		if (!pw) {
			diag_event(rep, log, "spool", DIAG_FAIL, DIAG_EXIT_SPOOL,
				   EV_CORE_USER_UNKNOWN, EVF_S("user", conf->user));
			return -1;
		}
		if (pw->pw_uid != 0) {
			*uid_r = pw->pw_uid;
			*gid_r = pw->pw_gid;
			snprintf(name, size, "%s", conf->user);
			return 0;
		}
	}
	pw = getpwuid(*uid_r);
	if (pw)
		snprintf(name, size, "%s", pw->pw_name);
	else
		snprintf(name, size, "uid %u", (unsigned)*uid_r);
	return 0;
}

static int spool_create(const struct carrier_conf *conf, unsigned flags, uid_t uid,
			gid_t gid, const char *user, struct evlog *log,
			struct diag_report *rep)
{
	const char *path = conf->spool_path;
	char reason[PATH_MAX + 128];
	if (!(flags & DIAG_F_MODIFY)) {
		if (creatable(path, reason, sizeof reason) < 0) {
			diag_event(rep, log, "spool", DIAG_FAIL, DIAG_EXIT_SPOOL,
				   EV_NET_SPOOL_DIR_FAILED, EVF_S("path", path),
				   EVF_S("reason", reason));
			return DIAG_EXIT_SPOOL;
		}
		diag_report_add(rep, "spool", DIAG_OK, 0,
				"%s does not exist yet; carrierd will create it (mode 0700, owner %s)",
				path, user);
		return 0;
	}
	if (mkdir_p(path, 0700) < 0 ||
	    (geteuid() == 0 && uid != 0 && chown(path, uid, gid) < 0)) {
		snprintf(reason, sizeof reason, "cannot create it: %s", strerror(errno));
		diag_event(rep, log, "spool", DIAG_FAIL, DIAG_EXIT_SPOOL, EV_NET_SPOOL_DIR_FAILED,
			   EVF_S("path", path), EVF_S("reason", reason));
		return DIAG_EXIT_SPOOL;
	}
	diag_event(rep, log, "spool", DIAG_OK, 0, EV_NET_SPOOL_DIR_CREATED,
		   EVF_S("path", path), EVF_S("user", user));
	return -1;      /* created: go on with the other checks */
}

static void spool_space(const char *path, const struct carrier_conf *conf,
			const struct statvfs *vfs, struct evlog *log,
			struct diag_report *rep, char *free_text, size_t size)
{
	unsigned long long avail = (unsigned long long)vfs->f_bavail * vfs->f_frsize;
	unsigned long long threshold = 2 * (unsigned long long)conf->spool_min_free;
	if (threshold < DIAG_SPOOL_FREE_MIN)
		threshold = DIAG_SPOOL_FREE_MIN;
	human_size(avail, free_text, size);
	if (avail < threshold) {
		char th[32];
		human_size(threshold, th, sizeof th);
		diag_event(rep, log, "spool", DIAG_WARN, 0, EV_NET_SPOOL_LOW_SPACE,
			   EVF_S("path", path), EVF_S("free", free_text), EVF_S("threshold", th));
	}
}

int diag_check_spool(const struct carrier_conf *conf, unsigned flags,
		     struct evlog *log, struct diag_report *rep)
{
	const char *path = conf->spool_path ? conf->spool_path : "";
	uid_t uid;
	gid_t gid;
	char user[64];
	if (spool_owner(conf, &uid, &gid, user, sizeof user, log, rep) < 0)
		return DIAG_EXIT_SPOOL;
	struct stat st;
	if (stat(path, &st) < 0) {
		if (errno != ENOENT) {
			diag_event(rep, log, "spool", DIAG_FAIL, DIAG_EXIT_SPOOL,
				   EV_NET_SPOOL_DIR_FAILED, EVF_S("path", path),
				   EVF_S("reason", strerror(errno)));
			return DIAG_EXIT_SPOOL;
		}
		int r = spool_create(conf, flags, uid, gid, user, log, rep);
		if (r >= 0)
			return r;
		if (stat(path, &st) < 0) {
			diag_event(rep, log, "spool", DIAG_FAIL, DIAG_EXIT_SPOOL,
				   EV_NET_SPOOL_DIR_FAILED, EVF_S("path", path),
				   EVF_S("reason", strerror(errno)));
			return DIAG_EXIT_SPOOL;
		}
	}
	if (!S_ISDIR(st.st_mode)) {
		diag_event(rep, log, "spool", DIAG_FAIL, DIAG_EXIT_SPOOL, EV_NET_SPOOL_DIR_FAILED,
			   EVF_S("path", path), EVF_S("reason", "exists and is not a directory"));
		return DIAG_EXIT_SPOOL;
	}
	if (st.st_uid != uid && geteuid() == 0) {
		diag_event(rep, log, "spool", DIAG_FAIL, DIAG_EXIT_SPOOL, EV_NET_SPOOL_DIR_OWNER,
			   EVF_S("path", path), EVF_I("uid", st.st_uid), EVF_S("user", user),
			   EVF_I("expected", uid));
		return DIAG_EXIT_SPOOL;
	}
	struct statvfs vfs;
	int vfs_ok = statvfs(path, &vfs) == 0;
	const char *ro = NULL;
	if (vfs_ok && (vfs.f_flag & ST_RDONLY))
		ro = "read-only file system";
	else if (geteuid() != 0 && access(path, W_OK | X_OK) < 0)
		ro = strerror(errno);
	if (ro) {
		diag_event(rep, log, "spool", DIAG_FAIL, DIAG_EXIT_SPOOL,
			   EV_NET_SPOOL_DIR_NOT_WRITABLE, EVF_S("path", path),
			   EVF_S("reason", ro), EVF_S("user", user));
		return DIAG_EXIT_SPOOL;
	}
	unsigned found = 0;
	char err[512] = "";
	if (spool_version_check(path, &found, err, sizeof err) < 0) {
		diag_event(rep, log, "spool", DIAG_FAIL, DIAG_EXIT_SPOOL,
			   EV_NET_SPOOL_VERSION_REFUSED, EVF_S("path", path), EVF_S("reason", err));
		return DIAG_EXIT_SPOOL;
	}
	if (st.st_mode & 077) {
		char mode[8];
		snprintf(mode, sizeof mode, "%04o", (unsigned)(st.st_mode & 07777));
		diag_event(rep, log, "spool", DIAG_WARN, 0, EV_NET_SPOOL_DIR_MODE,
			   EVF_S("path", path), EVF_S("mode", mode));
	}
	char free_text[32] = "unknown";
	if (vfs_ok)
		spool_space(path, conf, &vfs, log, rep, free_text, sizeof free_text);
	char version[32];
	if (found)
		snprintf(version, sizeof version, "format version %u", found);
	else
		snprintf(version, sizeof version, "no queue yet");
	diag_report_add(rep, "spool", DIAG_OK, 0, "%s: owner %s, %s free, %s",
			path, user, free_text, version);
	return 0;
}

/* ---- control socket ----------------------------------------------------------- */

/* Pid from the pidfile, 0 when none or unreadable. */
static pid_t pidfile_pid(const struct carrier_conf *conf)
{
	if (!conf->pidfile || !conf->pidfile[0])
		return 0;
	long v = read_sysctl(conf->pidfile, 0);
	return v > 0 && v < INT32_MAX ? (pid_t)v : 0;
}

static int control_answers(const struct carrier_conf *conf, const char *path,
			   struct evlog *log, struct diag_report *rep)
{
	char reason[128] = "not found in /proc/net/unix";
	pid_t pid = 0;
	char *text = diag_read_file("/proc/net/unix", NULL);
	if (text) {
		unsigned long inode = diag_unix_find_inode(text, path);
		if (inode)
			pid = diag_inode_pid("/proc", inode, NULL);
		if (inode && !pid)
			snprintf(reason, sizeof reason,
				 "socket inode %lu is held by no process this user can see", inode);
		free(text);
	} else {
		snprintf(reason, sizeof reason, "/proc/net/unix: %s", strerror(errno));
	}
	if (!pid)
		pid = pidfile_pid(conf);
	if (!pid) {
		diag_event(rep, log, "control", DIAG_FAIL, DIAG_EXIT_RUNNING,
			   EV_NET_CONTROL_RUNNING_UNKNOWN, EVF_S("path", path),
			   EVF_S("reason", reason));
		return DIAG_EXIT_RUNNING;
	}
	char comm[64];
	diag_pid_comm("/proc", pid, comm, sizeof comm);
	diag_event(rep, log, "control", DIAG_FAIL, DIAG_EXIT_RUNNING, EV_NET_CONTROL_RUNNING,
		   EVF_S("path", path), EVF_I("pid", pid),
		   EVF_S("process", comm[0] ? comm : "name unknown"));
	return DIAG_EXIT_RUNNING;
}

static int control_existing(const struct carrier_conf *conf, unsigned flags,
			    const char *path, struct evlog *log, struct diag_report *rep)
{
	struct sockaddr_un sun;
	memset(&sun, 0, sizeof sun);
	sun.sun_family = AF_UNIX;
	snprintf(sun.sun_path, sizeof sun.sun_path, "%s", path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0) {
		diag_event(rep, log, "control", DIAG_FAIL, DIAG_EXIT_CONTROL,
			   EV_NET_CONTROL_DIR_FAILED, EVF_S("path", path),
			   EVF_S("reason", strerror(errno)));
		return DIAG_EXIT_CONTROL;
	}
	int r = connect(fd, (struct sockaddr *)&sun, sizeof sun);
	int e = r < 0 ? errno : 0;
	close(fd);
	/* EAGAIN: the listener's backlog is full, so someone is listening. */
	if (r == 0 || e == EAGAIN || e == EINPROGRESS)
		return control_answers(conf, path, log, rep);
	if (e != ECONNREFUSED) {
		char reason[256];
		snprintf(reason, sizeof reason, "connect to the existing socket: %s", strerror(e));
		diag_event(rep, log, "control", DIAG_FAIL, DIAG_EXIT_CONTROL,
			   EV_NET_CONTROL_DIR_FAILED, EVF_S("path", path), EVF_S("reason", reason));
		return DIAG_EXIT_CONTROL;
	}
	if (!(flags & DIAG_F_MODIFY)) {
		diag_report_add(rep, "control", DIAG_OK, 0,
				"%s is a stale socket (nothing answers); carrierd will remove it", path);
		return 0;
	}
	if (unlink(path) < 0 && errno != ENOENT) {
		char reason[256];
		snprintf(reason, sizeof reason, "cannot remove the stale socket: %s", strerror(errno));
		diag_event(rep, log, "control", DIAG_FAIL, DIAG_EXIT_CONTROL,
			   EV_NET_CONTROL_DIR_FAILED, EVF_S("path", path), EVF_S("reason", reason));
		return DIAG_EXIT_CONTROL;
	}
	diag_event(rep, log, "control", DIAG_OK, 0, EV_NET_CONTROL_STALE, EVF_S("path", path),
		   EVF_S("reason", strerror(ECONNREFUSED)));
	return 0;
}

static int control_dir(const char *dir, unsigned flags, struct evlog *log,
		       struct diag_report *rep)
{
	char reason[PATH_MAX + 128];
	struct stat st;
	if (stat(dir, &st) < 0) {
		if (errno != ENOENT) {
			snprintf(reason, sizeof reason, "%s", strerror(errno));
		} else if (!(flags & DIAG_F_MODIFY)) {
			if (creatable(dir, reason, sizeof reason) == 0)
				return 1;       /* will be created */
		} else if (mkdir_p(dir, 0755) == 0) {
			return 0;
		} else {
			snprintf(reason, sizeof reason, "cannot create it: %s", strerror(errno));
		}
	} else if (!S_ISDIR(st.st_mode)) {
		snprintf(reason, sizeof reason, "exists and is not a directory");
	} else if (access(dir, W_OK | X_OK) < 0) {
		snprintf(reason, sizeof reason, "not writable: %s", strerror(errno));
	} else {
		return 0;
	}
	diag_event(rep, log, "control", DIAG_FAIL, DIAG_EXIT_CONTROL, EV_NET_CONTROL_DIR_FAILED,
		   EVF_S("path", dir), EVF_S("reason", reason));
	return -1;
}

int diag_check_control(const struct carrier_conf *conf, unsigned flags,
		       struct evlog *log, struct diag_report *rep)
{
	const char *path = conf->control_socket;
	if (!path || !path[0]) {
		diag_report_add(rep, "control", DIAG_OK, 0, "no control socket configured");
		return 0;
	}
	struct sockaddr_un sun;
	size_t len = strlen(path);
	if (len >= sizeof sun.sun_path) {
		diag_event(rep, log, "control", DIAG_FAIL, DIAG_EXIT_CONTROL,
			   EV_NET_CONTROL_PATH_TOO_LONG, EVF_S("path", path),
			   EVF_I("length", len), EVF_I("limit", sizeof sun.sun_path - 1));
		return DIAG_EXIT_CONTROL;
	}
	char dbuf[PATH_MAX];
	snprintf(dbuf, sizeof dbuf, "%s", path);
	const char *dir = dirname(dbuf);
	int d = control_dir(dir, flags, log, rep);
	if (d < 0)
		return DIAG_EXIT_CONTROL;
	if (d == 1) {
		diag_report_add(rep, "control", DIAG_OK, 0,
				"%s: directory %s does not exist yet; carrierd will create it", path, dir);
		return 0;
	}
	struct stat st;
	if (lstat(path, &st) < 0) {
		if (errno == ENOENT) {
			diag_report_add(rep, "control", DIAG_OK, 0, "%s is free", path);
			return 0;
		}
		diag_event(rep, log, "control", DIAG_FAIL, DIAG_EXIT_CONTROL,
			   EV_NET_CONTROL_DIR_FAILED, EVF_S("path", path),
			   EVF_S("reason", strerror(errno)));
		return DIAG_EXIT_CONTROL;
	}
	if (!S_ISSOCK(st.st_mode)) {
		diag_event(rep, log, "control", DIAG_FAIL, DIAG_EXIT_CONTROL,
			   EV_NET_CONTROL_NOT_SOCKET, EVF_S("path", path));
		return DIAG_EXIT_CONTROL;
	}
	return control_existing(conf, flags, path, log, rep);
}

/* ---- all of them ------------------------------------------------------------ */

static int first(int rc, int r)
{
	return rc ? rc : r;
}

int diag_run_startup(const struct carrier_conf *conf, unsigned flags,
		     struct evlog *log, struct diag_report *rep)
{
	int rc = 0;
	int net = diag_check_netstack(conf, log, rep);
	rc = first(rc, net);
	int lo = diag_check_loopback(log, rep);
	rc = first(rc, lo);
	bool *addr_failed = calloc(conf->n_listen ? conf->n_listen : 1, sizeof *addr_failed);
	for (size_t i = 0; i < conf->n_listen; i++) {
		int r;
		if (lo && listen_is_loopback(&conf->listen[i])) {
			/* The loopback failure above is the cause; saying the
			 * address is "not configured" would send the operator
			 * looking in the wrong place. */
			char lt[DIAG_LISTEN_TEXT_MAX];
			diag_report_add(rep, "address", DIAG_FAIL, lo,
					"%s: a loopback address, unusable until interface lo is up",
					diag_listen_format(&conf->listen[i], lt, sizeof lt));
			if (rep && rep->n)
				snprintf(rep->v[rep->n - 1].remedy, sizeof rep->v[rep->n - 1].remedy,
					 "ip link set lo up");
			r = lo;
		} else {
			r = diag_check_address(&conf->listen[i], log, rep);
		}
		if (addr_failed)
			addr_failed[i] = r != 0;
		rc = first(rc, r);
	}
	for (size_t i = 0; (flags & DIAG_F_BIND_TEST) && !net && i < conf->n_listen; i++) {
		if (!addr_failed || addr_failed[i])
			continue;       /* already reported; a bind would only repeat it */
		int fd;
		int r = bind_listener(&conf->listen[i], true, log, rep, &fd);
		if (fd >= 0)
			close(fd);
		rc = first(rc, r);
	}
	free(addr_failed);
	rc = first(rc, diag_check_hostname(conf, log, rep));
	rc = first(rc, diag_check_spool(conf, flags, log, rep));
	rc = first(rc, diag_check_control(conf, flags, log, rep));
	return rc;
}
