/*
 * diag_net: who holds a TCP port (or a Unix socket path), read from /proc.
 *
 * /proc/net/tcp prints each address as the kernel's 32-bit words in host
 * order ("%08X" of a __be32), so reading a word as a host integer and
 * copying its bytes gives network order on any endianness.  No events,
 * no state; any thread.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "diag_net.h"

char *diag_read_file(const char *path, size_t *len_r)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	size_t cap = 16384, len = 0;
	char *buf = malloc(cap);
	if (!buf) {
		close(fd);
		errno = ENOMEM;
		return NULL;
	}
	for (;;) {
		if (cap - len < 4096) {
			char *nb = realloc(buf, cap * 2);
			if (!nb) {
				free(buf);
				close(fd);
				errno = ENOMEM;
				return NULL;
			}
			buf = nb;
			cap *= 2;
		}
		ssize_t r = read(fd, buf + len, cap - len - 1);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			int e = errno;
			free(buf);
			close(fd);
			errno = e;
			return NULL;
		}
		if (r == 0)
			break;
		len += (size_t)r;
	}
	close(fd);
	buf[len] = '\0';
	if (len_r)
		*len_r = len;
	return buf;
}

static int hexword(const char *s, uint32_t *v_r)
{
	uint32_t v = 0;
	for (int i = 0; i < 8; i++) {
		char c = s[i];
		unsigned d;
		if (c >= '0' && c <= '9')
			d = (unsigned)(c - '0');
		else if (c >= 'A' && c <= 'F')
			d = (unsigned)(c - 'A' + 10);
		else if (c >= 'a' && c <= 'f')
			d = (unsigned)(c - 'a' + 10);
		else
			return -1;
		v = v << 4 | d;
	}
	*v_r = v;
	return 0;
}

int diag_tcp_parse_line(const char *line, int family, struct diag_tcp_entry *e_r)
{
	char addr[40];
	unsigned port, state, uid;
	unsigned long inode;
	int n = sscanf(line, " %*u: %39[0-9A-Fa-f]:%x %*s %x %*s %*s %*s %u %*u %lu",
		       addr, &port, &state, &uid, &inode);
	if (n != 5 || port > 65535)
		return -1;
	size_t words = family == AF_INET6 ? 4 : 1;
	if (strlen(addr) != words * 8)
		return -1;
	memset(e_r, 0, sizeof *e_r);
	for (size_t i = 0; i < words; i++) {
		uint32_t w;
		if (hexword(addr + 8 * i, &w) < 0)
			return -1;
		memcpy(e_r->addr + 4 * i, &w, 4);
	}
	e_r->family = family;
	e_r->port = (uint16_t)port;
	e_r->state = state;
	e_r->uid = uid;
	e_r->inode = inode;
	return 0;
}

static const uint8_t v4mapped_prefix[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };

static bool is_zero(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i])
			return false;
	return true;
}

/* Normalises an address to 16 bytes (v4 as v4-mapped) plus a wildcard flag. */
static void norm(int family, const uint8_t *a, uint8_t out[16], bool *wild_r)
{
	if (family == AF_INET) {
		memcpy(out, v4mapped_prefix, 12);
		memcpy(out + 12, a, 4);
		*wild_r = is_zero(a, 4);
	} else {
		memcpy(out, a, 16);
		*wild_r = is_zero(a, 16) ||
			  (!memcmp(a, v4mapped_prefix, 12) && is_zero(a + 12, 4));
	}
}

static bool conflicts(const struct diag_tcp_entry *e, int want_family,
		      const uint8_t *want_addr)
{
	uint8_t ea[16], wa[16];
	bool ew, ww;
	norm(e->family, e->addr, ea, &ew);
	norm(want_family, want_addr, wa, &ww);
	if (ew || ww)
		return true;
	return !memcmp(ea, wa, 16);
}

int diag_tcp_find_listener(const char *text, int family,
			   const struct sockaddr *want, struct diag_tcp_entry *e_r)
{
	const uint8_t *wa;
	uint16_t port;
	if (want->sa_family == AF_INET) {
		const struct sockaddr_in *s = (const struct sockaddr_in *)want;
		wa = (const uint8_t *)&s->sin_addr;
		port = ntohs(s->sin_port);
	} else if (want->sa_family == AF_INET6) {
		const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)want;
		wa = (const uint8_t *)&s->sin6_addr;
		port = ntohs(s->sin6_port);
	} else {
		return -1;
	}
	for (const char *line = text; line && *line;) {
		const char *nl = strchr(line, '\n');
		struct diag_tcp_entry e;
		if (diag_tcp_parse_line(line, family, &e) == 0 &&
		    e.state == DIAG_TCP_LISTEN && e.port == port &&
		    conflicts(&e, want->sa_family, wa)) {
			*e_r = e;
			return 0;
		}
		line = nl ? nl + 1 : NULL;
	}
	return -1;
}

static bool all_digits(const char *s)
{
	if (!*s)
		return false;
	for (; *s; s++)
		if (*s < '0' || *s > '9')
			return false;
	return true;
}

static bool pid_has_inode(const char *proc, const char *pid, const char *want)
{
	char path[PATH_MAX];
	snprintf(path, sizeof path, "%s/%s/fd", proc, pid);
	DIR *d = opendir(path);
	if (!d)
		return false;
	bool found = false;
	struct dirent *de;
	while (!found && (de = readdir(d)) != NULL) {
		char target[64];
		ssize_t n = readlinkat(dirfd(d), de->d_name, target, sizeof target - 1);
		if (n <= 0)
			continue;
		target[n] = '\0';
		found = !strcmp(target, want);
	}
	closedir(d);
	return found;
}

pid_t diag_inode_pid(const char *proc, unsigned long inode, unsigned *n_r)
{
	char want[64];
	snprintf(want, sizeof want, "socket:[%lu]", inode);
	pid_t best = 0;
	unsigned n = 0;
	DIR *d = opendir(proc);
	if (d) {
		struct dirent *de;
		while ((de = readdir(d)) != NULL) {
			if (!all_digits(de->d_name) || !pid_has_inode(proc, de->d_name, want))
				continue;
			pid_t pid = (pid_t)strtol(de->d_name, NULL, 10);
			if (!best || pid < best)
				best = pid;
			n++;
		}
		closedir(d);
	}
	if (n_r)
		*n_r = n;
	return best;
}

void diag_pid_comm(const char *proc, pid_t pid, char *buf, size_t size)
{
	char path[PATH_MAX];
	snprintf(path, sizeof path, "%s/%d/comm", proc, (int)pid);
	buf[0] = '\0';
	char *s = diag_read_file(path, NULL);
	if (!s)
		return;
	s[strcspn(s, "\n")] = '\0';
	snprintf(buf, size, "%s", s);
	free(s);
}

static int find_in(const char *proc, const char *file, int family,
		   const struct sockaddr *want, struct diag_tcp_entry *e_r)
{
	char path[PATH_MAX];
	snprintf(path, sizeof path, "%s/net/%s", proc, file);
	char *text = diag_read_file(path, NULL);
	if (!text)
		return -1;
	int r = diag_tcp_find_listener(text, family, want, e_r);
	free(text);
	return r;
}

int diag_port_holder(const char *proc, const struct sockaddr *want,
		     struct diag_holder *h_r)
{
	memset(h_r, 0, sizeof *h_r);
	struct diag_tcp_entry e;
	/* Own family first: a v4 listener conflicts with a v4 bind before a
	 * dual-stack [::] one does. */
	bool v6 = want->sa_family == AF_INET6;
	if (find_in(proc, v6 ? "tcp6" : "tcp", v6 ? AF_INET6 : AF_INET, want, &e) < 0 &&
	    find_in(proc, v6 ? "tcp" : "tcp6", v6 ? AF_INET : AF_INET6, want, &e) < 0)
		return -1;
	h_r->inode = e.inode;
	h_r->uid = e.uid;
	if (e.inode == 0)
		return 0;
	h_r->pid = diag_inode_pid(proc, e.inode, &h_r->n_pids);
	if (!h_r->pid)
		return 0;
	diag_pid_comm(proc, h_r->pid, h_r->comm, sizeof h_r->comm);
	return 1;
}

unsigned long diag_unix_find_inode(const char *text, const char *path)
{
	unsigned long fallback = 0;
	for (const char *line = text; line && *line;) {
		const char *nl = strchr(line, '\n');
		size_t len = nl ? (size_t)(nl - line) : strlen(line);
		char buf[512];
		if (len < sizeof buf) {
			memcpy(buf, line, len);
			buf[len] = '\0';
			unsigned flags;
			unsigned long inode;
			int off = 0;
			if (sscanf(buf, "%*s %*s %*s %x %*s %*s %lu %n", &flags, &inode, &off) == 2 &&
			    off > 0 && !strcmp(buf + off, path)) {
				if (flags & 0x10000)    /* __SO_ACCEPTCON: the listener */
					return inode;
				if (!fallback)
					fallback = inode;
			}
		}
		line = nl ? nl + 1 : NULL;
	}
	return fallback;
}

int diag_inet6_find(const char *text, const uint8_t addr[16], unsigned *flags_r,
		    char *ifname, size_t ifsize)
{
	for (const char *line = text; line && *line;) {
		char hex[33], name[64];
		unsigned idx, plen, scope, flags;
		uint8_t a[16];
		int ok = sscanf(line, "%32s %x %x %x %x %63s", hex, &idx, &plen, &scope,
				&flags, name) == 6 && strlen(hex) == 32;
		for (size_t i = 0; ok && i < 16; i++) {
			unsigned v;
			ok = sscanf(hex + 2 * i, "%2x", &v) == 1;
			a[i] = (uint8_t)v;
		}
		if (ok && !memcmp(a, addr, 16)) {
			*flags_r = flags;
			snprintf(ifname, ifsize, "%s", name);
			return 0;
		}
		line = strchr(line, '\n');
		if (line)
			line++;
	}
	return -1;
}
