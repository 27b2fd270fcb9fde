/*
 * diag_baseline: record the host's network configuration as sorted text
 * lines, and describe how the present differs from a saved baseline.
 * See diag_baseline.h for the format.  No state; any thread.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <libgen.h>
#include <limits.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "diag_baseline.h"
#include "diag_net.h"

#define BASELINE_HEADER "# carrier network baseline 1\n"

/* Route flags of <linux/route.h> and <linux/ipv6_route.h>. */
#define RT_UP 0x0001u
#define RT_REJECT 0x0200u
#define RT6_CACHE 0x01000000u
#define RT6_LOCAL 0x80000000u

/* ---- line sets ------------------------------------------------------------ */

void diag_baseline_clear(struct diag_baseline *b)
{
	for (size_t i = 0; i < b->n; i++)
		free(b->lines[i]);
	free(b->lines);
	b->lines = NULL;
	b->n = b->cap = 0;
}

static int push(char ***v, size_t *n, size_t *cap, char *s)
{
	if (!s)
		return -1;
	if (*n == *cap) {
		size_t c = *cap ? *cap * 2 : 32;
		char **nv = realloc(*v, c * sizeof *nv);
		if (!nv) {
			free(s);
			return -1;
		}
		*v = nv;
		*cap = c;
	}
	(*v)[(*n)++] = s;
	return 0;
}

int diag_baseline_add(struct diag_baseline *b, const char *fmt, ...)
{
	va_list ap;
	char *s = NULL;
	va_start(ap, fmt);
	int r = vasprintf(&s, fmt, ap);
	va_end(ap);
	if (r < 0)
		return -1;
	return push(&b->lines, &b->n, &b->cap, s);
}

static int cmp_lines(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

void diag_baseline_sort(struct diag_baseline *b)
{
	if (b->n == 0)
		return;
	qsort(b->lines, b->n, sizeof *b->lines, cmp_lines);
	size_t w = 1;
	for (size_t i = 1; i < b->n; i++) {
		if (!strcmp(b->lines[i], b->lines[w - 1]))
			free(b->lines[i]);
		else
			b->lines[w++] = b->lines[i];
	}
	b->n = w;
}

/* ---- collecting ------------------------------------------------------------- */

static unsigned prefix_of(const uint8_t *m, size_t len)
{
	unsigned n = 0;
	for (size_t i = 0; i < len; i++)
		for (int bit = 7; bit >= 0; bit--) {
			if (!(m[i] >> bit & 1))
				return n;
			n++;
		}
	return n;
}

static int collect_ifaces(struct diag_baseline *b, char *err, size_t errlen)
{
	struct ifaddrs *ifs;
	if (getifaddrs(&ifs) < 0) {
		snprintf(err, errlen, "getifaddrs: %s", strerror(errno));
		return -1;
	}
	int rc = 0;
	for (const struct ifaddrs *i = ifs; i && rc == 0; i = i->ifa_next) {
		rc = diag_baseline_add(b, "iface %s %s", i->ifa_name,
				       (i->ifa_flags & IFF_UP) ? "up" : "down");
		if (rc || !i->ifa_addr)
			continue;
		char a[INET6_ADDRSTRLEN];
		unsigned prefix;
		if (i->ifa_addr->sa_family == AF_INET) {
			inet_ntop(AF_INET, &((struct sockaddr_in *)i->ifa_addr)->sin_addr, a, sizeof a);
			prefix = i->ifa_netmask
					 ? prefix_of((uint8_t *)&((struct sockaddr_in *)i->ifa_netmask)->sin_addr, 4)
					 : 32;
		} else if (i->ifa_addr->sa_family == AF_INET6) {
			inet_ntop(AF_INET6, &((struct sockaddr_in6 *)i->ifa_addr)->sin6_addr, a, sizeof a);
			prefix = i->ifa_netmask
					 ? prefix_of((uint8_t *)&((struct sockaddr_in6 *)i->ifa_netmask)->sin6_addr, 16)
					 : 128;
		} else {
			continue;
		}
		rc = diag_baseline_add(b, "addr %s %s/%u", i->ifa_name, a, prefix);
	}
	freeifaddrs(ifs);
	if (rc)
		snprintf(err, errlen, "out of memory");
	return rc;
}

static int hexbytes(const char *s, uint8_t *out, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		unsigned v;
		if (sscanf(s + 2 * i, "%2x", &v) != 1)
			return -1;
		out[i] = (uint8_t)v;
	}
	return 0;
}

/* /proc/net/route: words printed as host-order integers of network-order
 * values; copying the integer's bytes gives the address. */
static int collect_routes4(struct diag_baseline *b, const char *text)
{
	const char *line = text ? strchr(text, '\n') : NULL;   /* skip the header */
	while (line && *++line) {
		char dev[IF_NAMESIZE + 1];
		unsigned dst, gw, flags, mask;
		if (sscanf(line, "%16s %x %x %x %*s %*s %*s %x", dev, &dst, &gw, &flags, &mask) == 5 &&
		    (flags & RT_UP) && !(flags & RT_REJECT)) {
			uint32_t d32 = dst, g32 = gw, m32 = mask;
			char ds[INET_ADDRSTRLEN], gs[INET_ADDRSTRLEN];
			inet_ntop(AF_INET, &d32, ds, sizeof ds);
			inet_ntop(AF_INET, &g32, gs, sizeof gs);
			unsigned plen = prefix_of((const uint8_t *)&m32, 4);
			int r = gw ? diag_baseline_add(b, "route4 %s/%u via %s dev %s", ds, plen, gs, dev)
				   : diag_baseline_add(b, "route4 %s/%u dev %s", ds, plen, dev);
			if (r)
				return -1;
		}
		line = strchr(line, '\n');
	}
	return 0;
}

static int collect_routes6(struct diag_baseline *b, const char *text)
{
	for (const char *line = text; line && *line;) {
		char dst[33], gw[33], dev[IF_NAMESIZE + 1];
		unsigned plen, flags;
		uint8_t d[16], g[16];
		if (sscanf(line, "%32s %x %*s %*s %32s %*s %*s %*s %x %16s",
			   dst, &plen, gw, &flags, dev) == 5 &&
		    hexbytes(dst, d, 16) == 0 && hexbytes(gw, g, 16) == 0 &&
		    (flags & RT_UP) && !(flags & (RT_REJECT | RT6_CACHE | RT6_LOCAL))) {
			char ds[INET6_ADDRSTRLEN], gs[INET6_ADDRSTRLEN];
			inet_ntop(AF_INET6, d, ds, sizeof ds);
			inet_ntop(AF_INET6, g, gs, sizeof gs);
			bool has_gw = !IN6_IS_ADDR_UNSPECIFIED((struct in6_addr *)g);
			int r = has_gw ? diag_baseline_add(b, "route6 %s/%u via %s dev %s", ds, plen, gs, dev)
				       : diag_baseline_add(b, "route6 %s/%u dev %s", ds, plen, dev);
			if (r)
				return -1;
		}
		line = strchr(line, '\n');
		if (line)
			line++;
	}
	return 0;
}

static int collect_resolvers(struct diag_baseline *b, const char *text)
{
	for (const char *line = text; line && *line;) {
		char addr[128];
		if (sscanf(line, " nameserver %127s", addr) == 1 && diag_baseline_add(b, "resolver %s", addr))
			return -1;
		line = strchr(line, '\n');
		if (line)
			line++;
	}
	return 0;
}

int diag_baseline_collect(struct diag_baseline *b, const char *resolv_conf,
			  char *resolv_err, size_t errlen)
{
	resolv_err[0] = '\0';
	if (collect_ifaces(b, resolv_err, errlen) < 0)
		return -1;
	char *t = diag_read_file("/proc/net/route", NULL);
	int r = collect_routes4(b, t);
	free(t);
	t = diag_read_file("/proc/net/ipv6_route", NULL);
	r |= collect_routes6(b, t);
	free(t);
	char host[HOST_NAME_MAX + 1];
	if (gethostname(host, sizeof host) == 0) {
		host[sizeof host - 1] = '\0';
		r |= diag_baseline_add(b, "hostname %s", host);
	}
	if (!resolv_conf)
		resolv_conf = DIAG_RESOLV_CONF;
	t = diag_read_file(resolv_conf, NULL);
	if (t)
		r |= collect_resolvers(b, t);
	else
		snprintf(resolv_err, errlen, "%s", strerror(errno));
	free(t);
	if (r) {
		snprintf(resolv_err, errlen, "out of memory");
		return -1;
	}
	diag_baseline_sort(b);
	return 0;
}

/* ---- file ------------------------------------------------------------------- */

int diag_baseline_parse(const char *text, struct diag_baseline *b)
{
	for (const char *line = text; line && *line;) {
		const char *nl = strchr(line, '\n');
		size_t len = nl ? (size_t)(nl - line) : strlen(line);
		while (len && (line[len - 1] == '\r' || line[len - 1] == ' ' || line[len - 1] == '\t'))
			len--;
		if (len && line[0] != '#' &&
		    diag_baseline_add(b, "%.*s", (int)len, line) < 0)
			return -1;
		line = nl ? nl + 1 : NULL;
	}
	diag_baseline_sort(b);
	return 0;
}

char *diag_baseline_format(const struct diag_baseline *b)
{
	size_t len = strlen(BASELINE_HEADER) + 1;
	for (size_t i = 0; i < b->n; i++)
		len += strlen(b->lines[i]) + 1;
	char *s = malloc(len), *p = s;
	if (!s)
		return NULL;
	p = stpcpy(p, BASELINE_HEADER);
	for (size_t i = 0; i < b->n; i++) {
		p = stpcpy(p, b->lines[i]);
		*p++ = '\n';
	}
	*p = '\0';
	return s;
}

static int mkdir_parents(const char *dir)
{
	char buf[PATH_MAX];
	if (snprintf(buf, sizeof buf, "%s", dir) >= (int)sizeof buf) {
		errno = ENAMETOOLONG;
		return -1;
	}
	for (char *p = buf + 1;; p++) {
		if (*p == '/' || !*p) {
			char c = *p;
			*p = '\0';
			if (mkdir(buf, 0700) < 0 && errno != EEXIST)
				return -1;
			*p = c;
			if (!c)
				return 0;
		}
	}
}

static int write_all(int fd, const char *s, size_t len)
{
	while (len) {
		ssize_t w = write(fd, s, len);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		s += w;
		len -= (size_t)w;
	}
	return 0;
}

int diag_baseline_save(const struct diag_baseline *b, const char *path,
		       char *err, size_t errlen)
{
	char dbuf[PATH_MAX], tmp[PATH_MAX + 16];
	snprintf(dbuf, sizeof dbuf, "%s", path);
	const char *dir = dirname(dbuf);
	if (mkdir_parents(dir) < 0) {
		snprintf(err, errlen, "cannot create directory %s: %s", dir, strerror(errno));
		return -1;
	}
	char *text = diag_baseline_format(b);
	if (!text) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	snprintf(tmp, sizeof tmp, "%s.tmp", path);
	const char *step = "open";
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	int rc = fd < 0 ? -1 : 0;
	if (rc == 0 && (step = "write", write_all(fd, text, strlen(text))) < 0)
		rc = -1;
	if (rc == 0 && (step = "fsync", fsync(fd)) < 0)
		rc = -1;
	if (fd >= 0 && close(fd) < 0 && rc == 0) {
		step = "close";
		rc = -1;
	}
	if (rc == 0 && (step = "rename", rename(tmp, path)) < 0)
		rc = -1;
	free(text);
	if (rc < 0) {
		snprintf(err, errlen, "%s %s: %s", step, tmp, strerror(errno));
		unlink(tmp);
		return -1;
	}
	int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd >= 0) {
		if (fsync(dfd) < 0) {
			snprintf(err, errlen, "fsync %s: %s", dir, strerror(errno));
			close(dfd);
			return -1;
		}
		close(dfd);
	}
	return 0;
}

int diag_baseline_load(const char *path, struct diag_baseline *b, char *err, size_t errlen)
{
	char *text = diag_read_file(path, NULL);
	if (!text) {
		if (errno == ENOENT)
			return 1;
		snprintf(err, errlen, "%s", strerror(errno));
		return -1;
	}
	int r = diag_baseline_parse(text, b);
	free(text);
	if (r < 0) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	return 0;
}

/* ---- diff ------------------------------------------------------------------- */

void diag_drift_clear(struct diag_drift *d)
{
	for (size_t i = 0; i < d->n; i++)
		free(d->v[i]);
	free(d->v);
	d->v = NULL;
	d->n = d->cap = 0;
}

__attribute__((format(printf, 2, 3)))
static int drift_add(struct diag_drift *d, const char *fmt, ...)
{
	va_list ap;
	char *s = NULL;
	va_start(ap, fmt);
	int r = vasprintf(&s, fmt, ap);
	va_end(ap);
	return r < 0 ? -1 : push(&d->v, &d->n, &d->cap, s);
}

/* The lines of `a` that are not in `b` (both sorted), kept as pointers. */
static int minus(const struct diag_baseline *a, const struct diag_baseline *b,
		 const char ***out, size_t *n_r)
{
	*out = calloc(a->n ? a->n : 1, sizeof **out);
	if (!*out)
		return -1;
	size_t i = 0, j = 0, n = 0;
	while (i < a->n) {
		int c = j < b->n ? strcmp(a->lines[i], b->lines[j]) : -1;
		if (c < 0)
			(*out)[n++] = a->lines[i++];
		else if (c > 0)
			j++;
		else
			i++, j++;
	}
	*n_r = n;
	return 0;
}

static bool has_kind(const char *line, const char *kind)
{
	size_t k = strlen(kind);
	return !strncmp(line, kind, k) && line[k] == ' ';
}

/* Second word of "kind word rest" (the interface of iface/addr lines). */
static size_t word_at(const char *line, int idx, const char **w_r)
{
	const char *p = line;
	for (int i = 0; i < idx && p; i++) {
		p = strchr(p, ' ');
		if (p)
			p++;
	}
	if (!p) {
		*w_r = "";
		return 0;
	}
	*w_r = p;
	return strcspn(p, " ");
}

/* The one in `v` whose word `idx` equals that of `line`, or NULL. */
static const char *same_key(const char **v, size_t n, const char *kind, const char *line, int idx)
{
	const char *w;
	size_t wl = word_at(line, idx, &w);
	for (size_t i = 0; i < n; i++) {
		const char *o;
		size_t ol = word_at(v[i], idx, &o);
		if (has_kind(v[i], kind) && ol == wl && !strncmp(o, w, wl))
			return v[i];
	}
	return NULL;
}

static int diff_hostname(const char **gone, size_t ng, const char **added, size_t na,
			 struct diag_drift *d)
{
	const char *o = NULL, *n = NULL;
	for (size_t i = 0; i < ng; i++)
		if (has_kind(gone[i], "hostname"))
			o = gone[i] + 9;
	for (size_t i = 0; i < na; i++)
		if (has_kind(added[i], "hostname"))
			n = added[i] + 9;
	if (o && n)
		return drift_add(d, "host name changed: %s -> %s", o, n);
	if (o)
		return drift_add(d, "host name %s: in baseline, now unknown", o);
	if (n)
		return drift_add(d, "host name %s: new", n);
	return 0;
}

static int diff_ifaces(const char **gone, size_t ng, const char **added, size_t na,
		       struct diag_drift *d)
{
	int r = 0;
	for (size_t i = 0; i < ng && !r; i++) {
		if (!has_kind(gone[i], "iface"))
			continue;
		const char *name, *now = same_key(added, na, "iface", gone[i], 1);
		int nl = (int)word_at(gone[i], 1, &name);
		const char *was, *is;
		word_at(gone[i], 2, &was);
		if (now) {
			word_at(now, 2, &is);
			r = drift_add(d, "interface %.*s: was %s, now %s", nl, name, was, is);
		} else {
			r = drift_add(d, "interface %.*s: in baseline, now missing", nl, name);
		}
	}
	for (size_t i = 0; i < na && !r; i++) {
		if (!has_kind(added[i], "iface") || same_key(gone, ng, "iface", added[i], 1))
			continue;
		const char *name;
		int nl = (int)word_at(added[i], 1, &name);
		r = drift_add(d, "interface %.*s: new", nl, name);
	}
	return r;
}

static int diff_addrs(const char **v, size_t n, const char *what, struct diag_drift *d)
{
	for (size_t i = 0; i < n; i++) {
		if (!has_kind(v[i], "addr"))
			continue;
		const char *name, *addr;
		int nl = (int)word_at(v[i], 1, &name);
		word_at(v[i], 2, &addr);
		if (drift_add(d, "address %s on %.*s: %s", addr, nl, name, what))
			return -1;
	}
	return 0;
}

static int diff_routes(const char **v, size_t n, const char *what, struct diag_drift *d)
{
	for (size_t i = 0; i < n; i++)
		if ((has_kind(v[i], "route4") || has_kind(v[i], "route6")) &&
		    drift_add(d, "route %s: %s", v[i] + 7, what))
			return -1;
	return 0;
}

static int diff_resolvers(const char **gone, size_t ng, const char **added, size_t na,
			  struct diag_drift *d)
{
	char buf[2048] = "resolver ";
	size_t len = strlen(buf), items = 0;
	for (int pass = 0; pass < 2; pass++) {
		const char **v = pass ? gone : added;
		size_t n = pass ? ng : na;
		for (size_t i = 0; i < n; i++) {
			if (!has_kind(v[i], "resolver"))
				continue;
			int w = snprintf(buf + len, sizeof buf - len, "%s%s: %s", items ? ", " : "",
					 v[i] + 9, pass ? "missing" : "new");
			if (w > 0 && (size_t)w < sizeof buf - len)
				len += (size_t)w;
			items++;
		}
	}
	return items ? drift_add(d, "%s", buf) : 0;
}

static int diff_other(const char **v, size_t n, const char *what, struct diag_drift *d)
{
	static const char *const known[] = { "hostname", "iface", "addr", "route4", "route6", "resolver" };
	for (size_t i = 0; i < n; i++) {
		bool k = false;
		for (size_t j = 0; j < sizeof known / sizeof known[0]; j++)
			k |= has_kind(v[i], known[j]);
		if (!k && drift_add(d, "'%s': %s", v[i], what))
			return -1;
	}
	return 0;
}

int diag_baseline_diff(const struct diag_baseline *old, const struct diag_baseline *now,
		       struct diag_drift *d)
{
	const char **gone = NULL, **added = NULL;
	size_t ng = 0, na = 0;
	int r = -1;
	if (minus(old, now, &gone, &ng) < 0 || minus(now, old, &added, &na) < 0)
		goto out;
	if (diff_hostname(gone, ng, added, na, d) || diff_ifaces(gone, ng, added, na, d) ||
	    diff_addrs(gone, ng, "in baseline, now missing", d) ||
	    diff_addrs(added, na, "new", d) ||
	    diff_routes(gone, ng, "in baseline, now missing", d) ||
	    diff_routes(added, na, "new", d) ||
	    diff_resolvers(gone, ng, added, na, d) ||
	    diff_other(gone, ng, "in baseline, now missing", d) ||
	    diff_other(added, na, "new", d))
		goto out;
	r = 0;
out:
	free(gone);
	free(added);
	return r;
}

/* ---- doctor's checks -------------------------------------------------------- */

static void resolv_warning(const char *resolv_conf, const char *err, struct evlog *log,
			   struct diag_report *rep)
{
	const struct evlog_field f[] = {
		EVF_S("path", resolv_conf ? resolv_conf : DIAG_RESOLV_CONF),
		EVF_S("reason", err),
	};
	diag_report_event(rep, log, "baseline", DIAG_WARN, 0, EV_NET_RESOLV_UNREADABLE, f, 2);
}

void diag_check_drift(const char *path, const char *resolv_conf, struct evlog *log,
		      struct diag_report *rep)
{
	struct diag_baseline old = { 0 }, now = { 0 };
	struct diag_drift d = { 0 };
	char err[512];
	int r = diag_baseline_load(path, &old, err, sizeof err);
	if (r == 1) {
		diag_report_add(rep, "drift", DIAG_OK, 0,
				"no baseline at %s (save one with `carrier doctor --save-baseline`)", path);
		return;
	}
	if (r == 0 && diag_baseline_collect(&now, resolv_conf, err, sizeof err) < 0)
		r = -1;
	else if (r == 0 && err[0])
		resolv_warning(resolv_conf, err, log, rep);
	if (r == 0 && diag_baseline_diff(&old, &now, &d) < 0) {
		snprintf(err, sizeof err, "out of memory");
		r = -1;
	}
	if (r < 0) {
		const struct evlog_field f[] = { EVF_S("path", path), EVF_S("reason", err) };
		diag_report_event(rep, log, "drift", DIAG_WARN, 0, EV_NET_BASELINE_UNREADABLE, f, 2);
	} else if (d.n == 0) {
		diag_report_add(rep, "drift", DIAG_OK, 0, "no change since the baseline %s (%zu facts)",
				path, old.n);
	}
	for (size_t i = 0; r == 0 && i < d.n; i++) {
		const struct evlog_field f[] = { EVF_S("path", path), EVF_S("change", d.v[i]) };
		diag_report_event(rep, log, "drift", DIAG_WARN, 0, EV_NET_DRIFT, f, 2);
		/* doctor shows the change itself on the line; the path is in the cause */
		if (rep && rep->n && rep->v[rep->n - 1].event == EV_NET_DRIFT)
			snprintf(rep->v[rep->n - 1].what, sizeof rep->v[rep->n - 1].what, "%s", d.v[i]);
	}
	diag_drift_clear(&d);
	diag_baseline_clear(&old);
	diag_baseline_clear(&now);
}

int diag_save_baseline(const char *path, const char *resolv_conf, struct evlog *log,
		       struct diag_report *rep)
{
	struct diag_baseline b = { 0 };
	char err[512];
	int r = diag_baseline_collect(&b, resolv_conf, err, sizeof err);
	if (r == 0 && err[0])
		resolv_warning(resolv_conf, err, log, rep);
	if (r == 0)
		r = diag_baseline_save(&b, path, err, sizeof err);
	if (r < 0) {
		const struct evlog_field f[] = { EVF_S("path", path), EVF_S("reason", err) };
		diag_report_event(rep, log, "baseline", DIAG_FAIL, DIAG_EXIT_BASELINE,
				  EV_NET_BASELINE_SAVE_FAILED, f, 2);
	} else {
		const struct evlog_field f[] = { EVF_S("path", path), EVF_I("lines", b.n) };
		diag_report_event(rep, log, "baseline", DIAG_OK, 0, EV_NET_BASELINE_SAVED, f, 2);
	}
	diag_baseline_clear(&b);
	return r < 0 ? DIAG_EXIT_BASELINE : 0;
}
