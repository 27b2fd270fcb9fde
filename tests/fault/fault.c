/*
 * fault: an LD_PRELOAD shim for the durability campaigns (issue 8).
 *
 * Intercepts write, pwrite, writev, fsync, fdatasync, msync, rename,
 * renameat, renameat2 and linkat on files under FAULT_DIR (matched through
 * /proc/self/fd/N for descriptors) and, by FAULT_MODE:
 *
 *   count  (default, or FAULT_AT=0)  logs every matching call, fails none
 *   fail   fails the FAULT_AT-th matching call (1-based) with FAULT_ERRNO
 *          (ENOSPC, EIO; default EIO) without performing it; FAULT_OP
 *          (comma list of op names) restricts which calls are counted;
 *          FAULT_STICKY=1 fails every matching call from the N-th on
 *   power  keeps, in FAULT_SHADOW, the state a power cut would leave:
 *          on fsync/fdatasync of a file, a copy of its content (by inode,
 *          ino/<ino>) and its name in its directory; on fsync of a
 *          directory, the directory's entries (dirs/<path>, "name ino
 *          type" lines); writes to an O_SYNC/O_DSYNC descriptor are
 *          applied to the copy at once (LMDB writes its meta page so).
 *          tests/e2e/faultlib.py rebuilds a spool from it.
 *
 * FAULT_LOG names a file that gets one line per matching call:
 * "<n> <op> <path> <rc> <errno>".  The log and shadow must be outside
 * FAULT_DIR.  Every entry point is thread-safe (one mutex).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

enum mode { MODE_OFF, MODE_COUNT, MODE_FAIL, MODE_POWER };

static enum mode mode = MODE_OFF;
static char fault_dir[PATH_MAX];
static size_t fault_dir_len;
static char shadow[PATH_MAX];
static char ops[256];
static long fault_at;
static int fault_errno = EIO;
static int sticky;
static int log_fd = -1;
static long seq;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_writev)(int, const struct iovec *, int);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_msync)(void *, size_t, int);
static int (*real_rename)(const char *, const char *);
static int (*real_renameat)(int, const char *, int, const char *);
static int (*real_renameat2)(int, const char *, int, const char *, unsigned);
static int (*real_linkat)(int, const char *, int, const char *, int);

void fault_init(void) __attribute__((constructor));
void fault_init(void)
{
	const char *d = getenv("FAULT_DIR"), *m = getenv("FAULT_MODE");
	const char *at = getenv("FAULT_AT"), *e = getenv("FAULT_ERRNO");
	const char *o = getenv("FAULT_OP"), *l = getenv("FAULT_LOG");
	const char *s = getenv("FAULT_SHADOW"), *st = getenv("FAULT_STICKY");

	real_write = dlsym(RTLD_NEXT, "write");
	real_pwrite = dlsym(RTLD_NEXT, "pwrite");
	real_writev = dlsym(RTLD_NEXT, "writev");
	real_fsync = dlsym(RTLD_NEXT, "fsync");
	real_fdatasync = dlsym(RTLD_NEXT, "fdatasync");
	real_msync = dlsym(RTLD_NEXT, "msync");
	real_rename = dlsym(RTLD_NEXT, "rename");
	real_renameat = dlsym(RTLD_NEXT, "renameat");
	real_renameat2 = dlsym(RTLD_NEXT, "renameat2");
	real_linkat = dlsym(RTLD_NEXT, "linkat");
	if (d == NULL || d[0] != '/')
		return;
	if (realpath(d, fault_dir) == NULL)   /* not made yet: take it as is */
		snprintf(fault_dir, sizeof fault_dir, "%s", d);
	fault_dir_len = strlen(fault_dir);
	fault_at = at ? atol(at) : 0;
	if (e && strcmp(e, "ENOSPC") == 0)
		fault_errno = ENOSPC;
	else if (e && strcmp(e, "EDQUOT") == 0)
		fault_errno = EDQUOT;
	sticky = st && st[0] == '1';
	if (o)
		snprintf(ops, sizeof ops, ",%s,", o);
	if (s)
		snprintf(shadow, sizeof shadow, "%s", s);
	if (m && strcmp(m, "power") == 0 && shadow[0])
		mode = MODE_POWER;
	else if (m && strcmp(m, "fail") == 0 && fault_at > 0)
		mode = MODE_FAIL;
	else if (fault_at > 0)
		mode = MODE_FAIL;
	else
		mode = MODE_COUNT;
	if (l)
		log_fd = open(l, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0666);
	if (log_fd >= 0 && log_fd < 100) {
		/* keep it out of the way of descriptor-number assumptions */
		int hi = fcntl(log_fd, F_DUPFD_CLOEXEC, 900);

		if (hi >= 0) {
			close(log_fd);
			log_fd = hi;
		}
	}
}

static int under(const char *path)
{
	return fault_dir_len > 0 && strncmp(path, fault_dir, fault_dir_len) == 0 &&
	       (path[fault_dir_len] == '/' || path[fault_dir_len] == '\0');
}

static int fd_path(int fd, char *buf, size_t len)
{
	char link[64];
	ssize_t n;

	snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
	n = readlink(link, buf, len - 1);
	if (n < 0)
		return -1;
	buf[n] = '\0';
	return 0;
}

static int at_path(int dirfd, const char *name, char *buf, size_t len)
{
	char dir[PATH_MAX];

	if (name[0] == '/') {
		snprintf(buf, len, "%s", name);
		return 0;
	}
	if (dirfd == AT_FDCWD) {
		if (getcwd(dir, sizeof dir) == NULL)
			return -1;
	} else if (fd_path(dirfd, dir, sizeof dir) < 0) {
		return -1;
	}
	snprintf(buf, len, "%s/%s", dir, name);
	return 0;
}

static int op_selected(const char *op)
{
	char key[40];

	if (ops[0] == '\0')
		return 1;
	snprintf(key, sizeof key, ",%s,", op);
	return strstr(ops, key) != NULL;
}

static void logf_locked(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logf_locked(const char *fmt, ...)
{
	char line[PATH_MAX + 128];
	va_list ap;
	int n;

	if (log_fd < 0)
		return;
	va_start(ap, fmt);
	n = vsnprintf(line, sizeof line, fmt, ap);
	va_end(ap);
	if (n > (int)sizeof line - 1)
		n = (int)sizeof line - 1;
	if (n > 0 && real_write(log_fd, line, (size_t)n) < 0)
		return;
}

/* Decides a matching call: returns the errno to fail it with, or 0.
 * Called with mu held; numbers the call. */
static int decide(const char *op, const char *path, long *n_r)
{
	if (!op_selected(op)) {
		*n_r = 0;
		return 0;
	}
	*n_r = ++seq;
	if (mode == MODE_FAIL && (*n_r == fault_at || (sticky && *n_r > fault_at)))
		return fault_errno;
	return 0;
}

/* ---- power mode: the shadow ------------------------------------------ */

static void rel_escape(const char *path, char *out, size_t len)
{
	const char *rel = path + fault_dir_len;
	size_t j = 0;

	if (*rel == '/')
		rel++;
	if (*rel == '\0')
		rel = "@root";
	for (; *rel && j + 2 < len; rel++)
		out[j++] = *rel == '/' ? '%' : *rel;
	out[j] = '\0';
}

/* Copies the content of the file behind fd to ino/<ino>. */
static void snap_file(int fd, const struct stat *st)
{
	char src[64], dst[PATH_MAX], tmp[PATH_MAX], buf[65536];
	int in, out;
	ssize_t n;

	snprintf(src, sizeof src, "/proc/self/fd/%d", fd);
	in = open(src, O_RDONLY | O_CLOEXEC);
	if (in < 0)
		return;
	snprintf(dst, sizeof dst, "%s/ino/%lu", shadow, (unsigned long)st->st_ino);
	snprintf(tmp, sizeof tmp, "%s.new", dst);
	out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
	if (out >= 0) {
		while ((n = read(in, buf, sizeof buf)) > 0)
			if (real_write(out, buf, (size_t)n) != n)
				break;
		close(out);
		real_rename(tmp, dst);
	}
	close(in);
}

/* Applies a synchronous write to ino/<ino> at offset off. */
static void snap_range(const struct stat *st, const struct iovec *iov, int cnt, off_t off)
{
	char dst[PATH_MAX];
	int out;

	snprintf(dst, sizeof dst, "%s/ino/%lu", shadow, (unsigned long)st->st_ino);
	out = open(dst, O_WRONLY | O_CREAT | O_CLOEXEC, 0666);
	if (out < 0)
		return;
	for (int i = 0; i < cnt; i++) {
		if (real_pwrite(out, iov[i].iov_base, iov[i].iov_len, off) < 0)
			break;
		off += (off_t)iov[i].iov_len;
	}
	close(out);
}

static void write_list(const char *dirpath, const char *text, size_t len)
{
	char esc[PATH_MAX], dst[PATH_MAX], tmp[PATH_MAX];
	int out;

	rel_escape(dirpath, esc, sizeof esc);
	snprintf(dst, sizeof dst, "%s/dirs/%s", shadow, esc);
	snprintf(tmp, sizeof tmp, "%s.new", dst);
	out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
	if (out < 0)
		return;
	if (real_write(out, text, len) == (ssize_t)len) {
		close(out);
		real_rename(tmp, dst);
		return;
	}
	close(out);
}

/* Records the entries of directory `path` (its fsync made them durable). */
static void snap_dir(const char *path)
{
	DIR *d = opendir(path);
	struct dirent *de;
	size_t cap = 4096, len = 0;
	char *text;

	if (d == NULL)
		return;
	text = malloc(cap);
	while (text && (de = readdir(d)) != NULL) {
		struct stat st;
		char line[NAME_MAX + 64];
		int n;

		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
			continue;
		n = snprintf(line, sizeof line, "%s %lu %c\n", de->d_name,
			     (unsigned long)st.st_ino, S_ISDIR(st.st_mode) ? 'd' : 'f');
		if (len + (size_t)n + 1 > cap) {
			char *t = realloc(text, cap * 2);

			if (t == NULL)
				break;
			text = t;
			cap *= 2;
		}
		memcpy(text + len, line, (size_t)n);
		len += (size_t)n;
	}
	closedir(d);
	if (text)
		write_list(path, text, len);
	free(text);
}

/* A file's own fsync makes its current name durable too (what ext4 and
 * xfs do for a newly created file): add it to its directory's list. */
static void add_name(const char *path, const struct stat *st)
{
	char dirpath[PATH_MAX], esc[PATH_MAX], lst[PATH_MAX], line[NAME_MAX + 64];
	char *slash, *text = NULL;
	size_t len = 0;
	FILE *f;

	snprintf(dirpath, sizeof dirpath, "%s", path);
	slash = strrchr(dirpath, '/');
	if (slash == NULL || !under(dirpath))
		return;
	*slash = '\0';
	if (!under(dirpath))
		return;
	snprintf(line, sizeof line, "%s %lu f\n", slash + 1, (unsigned long)st->st_ino);
	rel_escape(dirpath, esc, sizeof esc);
	snprintf(lst, sizeof lst, "%s/dirs/%s", shadow, esc);
	f = fopen(lst, "re");
	if (f != NULL) {
		FILE *m = open_memstream(&text, &len);
		char l[NAME_MAX + 64];
		int found = 0;

		while (m && fgets(l, sizeof l, f)) {
			if (strcmp(l, line) == 0)
				found = 1;
			fputs(l, m);
		}
		fclose(f);
		if (m == NULL)
			return;
		if (!found)
			fputs(line, m);
		fclose(m);
		if (!found)
			write_list(dirpath, text, len);
		free(text);
		return;
	}
	write_list(dirpath, line, strlen(line));
}

static void power_sync(int fd)
{
	char path[PATH_MAX];
	struct stat st;

	if (fd_path(fd, path, sizeof path) < 0 || !under(path) || fstat(fd, &st) < 0)
		return;
	if (S_ISDIR(st.st_mode)) {
		snap_dir(path);
		return;
	}
	snap_file(fd, &st);
	add_name(path, &st);
}

static void power_write(int fd, const struct iovec *iov, int cnt, off_t off, int pos)
{
	char path[PATH_MAX];
	struct stat st;
	int fl = fcntl(fd, F_GETFL);

	if (fl < 0 || !(fl & (O_DSYNC | O_SYNC)))
		return;
	if (fd_path(fd, path, sizeof path) < 0 || !under(path) || fstat(fd, &st) < 0)
		return;
	if (pos)
		off = lseek(fd, 0, SEEK_CUR);   /* after the write: back up */
	if (pos) {
		for (int i = 0; i < cnt; i++)
			off -= (off_t)iov[i].iov_len;
	}
	snap_range(&st, iov, cnt, off);
	add_name(path, &st);
}

/* ---- the interposers -------------------------------------------------- */

/* For a descriptor call: returns errno to fail with or 0; fills path. */
static int fd_begin(int fd, const char *op, char *path, size_t len, long *n_r)
{
	*n_r = 0;
	if (mode == MODE_OFF || mode == MODE_POWER)
		return 0;
	if (fd_path(fd, path, len) < 0 || !under(path))
		return 0;
	return decide(op, path, n_r);
}

static void end(long n, const char *op, const char *path, long rc, int e)
{
	if (n > 0)
		logf_locked("%ld %s %s %ld %d\n", n, op, path, rc, rc < 0 ? e : 0);
}

#define FD_CALL(op, fd, call, ret_t, powerfn)                                   \
	do {                                                                        \
		char path_[PATH_MAX];                                                   \
		long n_;                                                                \
		int e_;                                                                 \
		ret_t r_;                                                               \
		if (mode == MODE_OFF)                                                   \
			return call;                                                        \
		pthread_mutex_lock(&mu);                                                \
		e_ = fd_begin(fd, op, path_, sizeof path_, &n_);                        \
		if (e_ != 0) {                                                          \
			end(n_, op, path_, -1, e_);                                         \
			pthread_mutex_unlock(&mu);                                          \
			errno = e_;                                                         \
			return -1;                                                          \
		}                                                                       \
		r_ = call;                                                              \
		e_ = errno;                                                             \
		end(n_, op, path_, (long)r_, e_);                                       \
		if (mode == MODE_POWER && r_ >= 0)                                      \
			powerfn;                                                            \
		pthread_mutex_unlock(&mu);                                              \
		errno = e_;                                                             \
		return r_;                                                              \
	} while (0)

ssize_t write(int fd, const void *buf, size_t count)
{
	struct iovec v = { .iov_base = (void *)buf, .iov_len = count };

	if (fd == log_fd)
		return real_write(fd, buf, count);
	FD_CALL("write", fd, real_write(fd, buf, count), ssize_t,
		(v.iov_len = (size_t)r_, power_write(fd, &v, 1, 0, 1)));
}

ssize_t pwrite(int fd, const void *buf, size_t count, off_t off)
{
	struct iovec v = { .iov_base = (void *)buf, .iov_len = count };

	FD_CALL("pwrite", fd, real_pwrite(fd, buf, count, off), ssize_t,
		(v.iov_len = (size_t)r_, power_write(fd, &v, 1, off, 0)));
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off_t off)
{
	return pwrite(fd, buf, count, off);
}

ssize_t writev(int fd, const struct iovec *iov, int cnt)
{
	FD_CALL("writev", fd, real_writev(fd, iov, cnt), ssize_t,
		power_write(fd, iov, cnt, 0, 1));
}

int fsync(int fd)
{
	FD_CALL("fsync", fd, real_fsync(fd), int, power_sync(fd));
}

int fdatasync(int fd)
{
	FD_CALL("fdatasync", fd, real_fdatasync(fd), int, power_sync(fd));
}

int msync(void *addr, size_t len, int flags)
{
	/* only logged: carrier's LMDB does not use MDB_WRITEMAP */
	return real_msync(addr, len, flags);
}

static int path_begin(const char *op, int dirfd, const char *name, char *path,
		      size_t len, long *n_r)
{
	*n_r = 0;
	if (mode != MODE_COUNT && mode != MODE_FAIL)
		return 0;
	if (at_path(dirfd, name, path, len) < 0 || !under(path))
		return 0;
	return decide(op, path, n_r);
}

#define PATH_CALL(op, dirfd, name, call)                                        \
	do {                                                                        \
		char path_[PATH_MAX];                                                   \
		long n_;                                                                \
		int e_, r_;                                                             \
		if (mode == MODE_OFF)                                                   \
			return call;                                                        \
		pthread_mutex_lock(&mu);                                                \
		e_ = path_begin(op, dirfd, name, path_, sizeof path_, &n_);             \
		if (e_ != 0) {                                                          \
			end(n_, op, path_, -1, e_);                                         \
			pthread_mutex_unlock(&mu);                                          \
			errno = e_;                                                         \
			return -1;                                                          \
		}                                                                       \
		r_ = call;                                                              \
		e_ = errno;                                                             \
		end(n_, op, path_, r_, e_);                                             \
		pthread_mutex_unlock(&mu);                                              \
		errno = e_;                                                             \
		return r_;                                                              \
	} while (0)

int rename(const char *from, const char *to)
{
	PATH_CALL("rename", AT_FDCWD, from, real_rename(from, to));
}

int renameat(int fd1, const char *from, int fd2, const char *to)
{
	PATH_CALL("rename", fd1, from, real_renameat(fd1, from, fd2, to));
}

int renameat2(int fd1, const char *from, int fd2, const char *to, unsigned flags)
{
	PATH_CALL("rename", fd1, from, real_renameat2(fd1, from, fd2, to, flags));
}

int linkat(int fd1, const char *from, int fd2, const char *to, int flags)
{
	PATH_CALL("link", fd1, from, real_linkat(fd1, from, fd2, to, flags));
}
