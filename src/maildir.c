/*
 * maildir: the Maildir delivery agent (see maildir.h for the contract).
 *
 * Owns nothing between calls.  Must not touch the spool or log events.
 * Called from the local runner's worker thread; every call blocks on disk.
 */
#include "maildir.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#define MAILDIR_NAME_MAX 255
#define MAILDIR_TRIES 64
#define MAILDIR_BUF (64 * 1024)

const char *maildir_result_name(enum maildir_result r)
{
	switch (r) {
	case MAILDIR_OK:
		return "ok";
	case MAILDIR_TEMP:
		return "temporary failure";
	case MAILDIR_PERM:
		return "permanent failure";
	}
	return "?";
}

enum maildir_result maildir_errno_result(int e)
{
	switch (e) {
	case ENOTDIR:  /* a file where a directory belongs */
	case ELOOP:    /* a symlink where a directory belongs (O_NOFOLLOW) */
	case ENAMETOOLONG:
		return MAILDIR_PERM;
	default:       /* ENOSPC, EDQUOT, EIO, EACCES, EROFS, EMFILE, ... */
		return MAILDIR_TEMP;
	}
}

int maildir_localpart_fold(const char *lp, char *out, size_t outlen,
			   char *err, size_t errlen)
{
	size_t n = 0, len = strlen(lp);
	const char *p = lp, *end = lp + len;

	if (len >= 2 && lp[0] == '"' && lp[len - 1] == '"') {
		p = lp + 1;
		end = lp + len - 1;
	}
	for (; p < end; p++) {
		unsigned char c = (unsigned char)*p;

		if (lp[0] == '"' && c == '\\' && p + 1 < end)
			c = (unsigned char)*++p;
		if (c < 0x20 || c == 0x7f) {
			snprintf(err, errlen, "local part \"%s\" holds a control character", lp);
			return -1;
		}
		if (c == '/') {
			snprintf(err, errlen, "local part \"%s\" holds a '/'", lp);
			return -1;
		}
		if (n + 1 >= outlen || n >= MAILDIR_LOCALPART_MAX) {
			snprintf(err, errlen, "local part is longer than %d octets",
				 MAILDIR_LOCALPART_MAX);
			return -1;
		}
		out[n++] = (char)(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
	}
	out[n] = '\0';
	if (n == 0) {
		snprintf(err, errlen, "empty local part");
		return -1;
	}
	if (out[0] == '.') {
		snprintf(err, errlen, "local part \"%s\" starts with '.'", lp);
		return -1;
	}
	return 0;
}

/* Sets err from errno `e` for `what` on `path` and maps the result. */
static enum maildir_result fail_errno(int e, const char *what, const char *path,
				      char *err, size_t errlen)
{
	const char *why = strerror(e);

	if (e == ELOOP)
		why = "is a symbolic link (refused)";
	else if (e == ENOTDIR)
		why = "is not a directory";
	snprintf(err, errlen, "%s %s: %s", what, path, why);
	return maildir_errno_result(e);
}

/*
 * Opens directory `name` under `dfd` without following a symlink, creating
 * it (0700) when missing; *created_r tells whether it did.  Returns the fd
 * or -1 with errno set.
 */
static int open_dir_at(int dfd, const char *name, bool *created_r)
{
	int fd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);

	if (fd < 0 && errno == ENOENT) {
		if (mkdirat(dfd, name, 0700) < 0 && errno != EEXIST)
			return -1;
		*created_r = true;
		fd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	}
	if (fd < 0 && errno == ENOTDIR) {
		/* Linux says ENOTDIR for a symlink with O_NOFOLLOW|O_DIRECTORY:
		 * tell the two apart for the reason. */
		struct stat st;

		if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode))
			errno = ELOOP;
		else
			errno = ENOTDIR;
	}
	return fd;
}

static int open_root(const char *root)
{
	int fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd >= 0 || errno != ENOENT)
		return fd;
	if (mkdir(root, 0700) < 0 && errno != EEXIST)
		return -1;
	return open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
}

/* The host part of unique names: '/' and ':' are written as \057, \072. */
static void host_part(const char *hostname, char *out, size_t outlen)
{
	char host[256];
	size_t n = 0;

	if (hostname == NULL || hostname[0] == '\0') {
		if (gethostname(host, sizeof host) < 0 || host[0] == '\0')
			snprintf(host, sizeof host, "localhost");
		host[sizeof host - 1] = '\0';
		hostname = host;
	}
	for (const char *p = hostname; *p != '\0' && n + 5 < outlen; p++) {
		if (*p == '/' || *p == ':' || *p == '\\') {
			n += (size_t)snprintf(out + n, outlen - n, "\\%03o",
					      (unsigned)(unsigned char)*p);
		} else if ((unsigned char)*p > 0x20 && (unsigned char)*p < 0x7f) {
			out[n++] = *p;
		}
	}
	out[n] = '\0';
}

static void unique_name(char *out, size_t outlen, uint64_t seq, const char *host)
{
	struct timeval tv;

	gettimeofday(&tv, NULL);
	snprintf(out, outlen, "%lld.M%ldP%ldQ%llu.%s", (long long)tv.tv_sec,
		 (long)tv.tv_usec, (long)getpid(), (unsigned long long)seq, host);
}

/* ---- buffered writer with CRLF -> LF ------------------------------------ */

struct writer {
	int fd;
	int error;          /* errno of the first failed write, or 0 */
	bool pending_cr;
	size_t n;
	char *buf;
};

static void w_flush(struct writer *w)
{
	size_t off = 0;

	while (off < w->n && w->error == 0) {
		ssize_t r = write(w->fd, w->buf + off, w->n - off);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			w->error = r < 0 ? errno : EIO;
		else
			off += (size_t)r;
	}
	w->n = 0;
}

static inline void w_byte(struct writer *w, char c)
{
	if (w->n == MAILDIR_BUF)
		w_flush(w);
	w->buf[w->n++] = c;
}

static void w_raw(struct writer *w, const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++)
		w_byte(w, s[i]);
}

/* Body bytes: CRLF becomes LF, a CR that is not followed by LF is kept. */
static void w_body(struct writer *w, const char *p, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		char c = p[i];

		if (w->pending_cr) {
			w->pending_cr = false;
			if (c != '\n')
				w_byte(w, '\r');
		}
		if (c == '\r')
			w->pending_cr = true;
		else
			w_byte(w, c);
	}
}

/* Header text with control characters (a CR or LF in an address would
 * start a new header) dropped; ASCII folded to lower case with `lower`. */
static void w_clean(struct writer *w, const char *s, bool lower)
{
	for (; *s != '\0'; s++) {
		char c = *s;

		if ((unsigned char)c < 0x20 || c == 0x7f)
			continue;
		w_byte(w, lower && c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c);
	}
}

static int write_message(int fd, const struct maildir_msg *msg, const char *lp,
			 char *err, size_t errlen)
{
	struct writer w = { .fd = fd };

	w.buf = malloc(MAILDIR_BUF);
	if (w.buf == NULL) {
		snprintf(err, errlen, "out of memory");
		return ENOMEM;
	}
	w_raw(&w, "Return-Path: <", 14);
	w_clean(&w, msg->sender ? msg->sender : "", false);
	w_raw(&w, ">\nDelivered-To: ", 16);
	w_clean(&w, lp, false);
	w_byte(&w, '@');
	w_clean(&w, msg->domain ? msg->domain : "", true);
	w_byte(&w, '\n');
	if (msg->mem != NULL) {
		w_body(&w, msg->mem, (size_t)msg->size);
	} else {
		char *in = malloc(MAILDIR_BUF);
		uint64_t off = 0;

		if (in == NULL)
			w.error = ENOMEM;
		while (w.error == 0 && off < msg->size) {
			size_t want = msg->size - off < MAILDIR_BUF ? (size_t)(msg->size - off) : MAILDIR_BUF;
			ssize_t r = pread(msg->fd, in, want, (off_t)off);

			if (r < 0 && errno == EINTR)
				continue;
			if (r <= 0) {
				snprintf(err, errlen, "read the message body: %s",
					 r < 0 ? strerror(errno) : "shorter than its size");
				free(in);
				free(w.buf);
				return EIO;
			}
			w_body(&w, in, (size_t)r);
			off += (uint64_t)r;
		}
		free(in);
	}
	if (w.pending_cr)
		w_byte(&w, '\r');
	w_flush(&w);
	free(w.buf);
	return w.error;
}

/* ---- delivery ----------------------------------------------------------- */

struct dirs {
	int root, user, tmp, new;
};

static void dirs_close(struct dirs *d)
{
	int *v[] = { &d->root, &d->user, &d->tmp, &d->new };

	for (size_t i = 0; i < sizeof v / sizeof v[0]; i++)
		if (*v[i] >= 0) {
			close(*v[i]);
			*v[i] = -1;
		}
}

/* Opens root, root/lp and its tmp/ and new/, creating what is missing
 * (with cur/), and fsyncs a parent whose entries it created. */
static enum maildir_result open_dirs(const char *root, const char *lp, struct dirs *d,
				     char *err, size_t errlen)
{
	char path[4096];
	bool made_user = false, made_sub = false;
	int e;

	d->root = open_root(root);
	if (d->root < 0) {
		/* The root is configuration: a problem with it is the
		 * administrator's to fix, so mail waits rather than bounces. */
		fail_errno(errno, "open Maildir root", root, err, errlen);
		return MAILDIR_TEMP;
	}
	snprintf(path, sizeof path, "%s/%s", root, lp);
	d->user = open_dir_at(d->root, lp, &made_user);
	if (d->user < 0)
		return fail_errno(errno, "open mailbox", path, err, errlen);
	if (made_user && fsync(d->root) < 0)
		return fail_errno(errno, "fsync", root, err, errlen);
	d->tmp = open_dir_at(d->user, "tmp", &made_sub);
	if (d->tmp < 0) {
		e = errno;
		snprintf(path, sizeof path, "%s/%s/tmp", root, lp);
		return fail_errno(e, "open", path, err, errlen);
	}
	d->new = open_dir_at(d->user, "new", &made_sub);
	if (d->new < 0) {
		e = errno;
		snprintf(path, sizeof path, "%s/%s/new", root, lp);
		return fail_errno(e, "open", path, err, errlen);
	}
	if (mkdirat(d->user, "cur", 0700) == 0)
		made_sub = true;
	if (made_sub && fsync(d->user) < 0)
		return fail_errno(errno, "fsync", path, err, errlen);
	return MAILDIR_OK;
}

/* Creates tmp/<name>, trying the next seq when the name is taken. */
static int create_tmp(const struct dirs *d, uint64_t seq, const char *host,
		      char *name, size_t namelen)
{
	for (int i = 0; i < MAILDIR_TRIES; i++) {
		int fd;

		unique_name(name, namelen, seq + (uint64_t)i, host);
		fd = openat(d->tmp, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
		if (fd >= 0 || errno != EEXIST)
			return fd;
	}
	errno = EEXIST;
	return -1;
}

/* Moves tmp/<name> into new/, under `name` or the next free unique name
 * (written back into newname).  Returns 0 or -1 with errno. */
static int link_into_new(const struct dirs *d, const char *name, uint64_t seq,
			 const char *host, char *newname, size_t newlen)
{
	snprintf(newname, newlen, "%s", name);
	for (int i = 1; i <= MAILDIR_TRIES; i++) {
		if (linkat(d->tmp, name, d->new, newname, 0) == 0) {
			unlinkat(d->tmp, name, 0);
			return 0;
		}
		if (errno == EPERM || errno == EOPNOTSUPP || errno == EMLINK) {
			/* No hard links here: rename, which must not replace. */
			if (renameat2(d->tmp, name, d->new, newname, RENAME_NOREPLACE) == 0)
				return 0;
			if (errno == EINVAL && faccessat(d->new, newname, F_OK, AT_SYMLINK_NOFOLLOW) < 0 &&
			    renameat(d->tmp, name, d->new, newname) == 0)
				return 0;
		}
		if (errno != EEXIST)
			return -1;
		unique_name(newname, newlen, seq + (uint64_t)MAILDIR_TRIES + (uint64_t)i, host);
	}
	errno = EEXIST;
	return -1;
}

enum maildir_result maildir_deliver(const char *root, const struct maildir_msg *msg,
				    char *path_r, size_t pathlen,
				    char *err, size_t errlen)
{
	char lp[MAILDIR_LOCALPART_MAX + 1], host[MAILDIR_NAME_MAX / 2];
	char name[MAILDIR_NAME_MAX + 1], newname[MAILDIR_NAME_MAX + 1], path[4096];
	struct dirs d = { -1, -1, -1, -1 };
	enum maildir_result res;
	int fd, e;

	if (err != NULL && errlen > 0)
		err[0] = '\0';
	if (maildir_localpart_fold(msg->localpart, lp, sizeof lp, err, errlen) < 0)
		return MAILDIR_PERM;
	if (msg->mem == NULL && msg->fd < 0 && msg->size > 0) {
		snprintf(err, errlen, "no message body given");
		return MAILDIR_TEMP;
	}
	res = open_dirs(root, lp, &d, err, errlen);
	if (res != MAILDIR_OK)
		goto out;
	host_part(msg->hostname, host, sizeof host);
	fd = create_tmp(&d, msg->seq, host, name, sizeof name);
	if (fd < 0) {
		e = errno;
		snprintf(path, sizeof path, "%s/%s/tmp", root, lp);
		res = fail_errno(e, "create a file in", path, err, errlen);
		goto out;
	}
	snprintf(path, sizeof path, "%s/%s/tmp/%s", root, lp, name);
	e = write_message(fd, msg, lp, err, errlen);
	if (e != 0) {
		close(fd);
		if (err[0] == '\0')
			fail_errno(e, "write", path, err, errlen);
		res = maildir_errno_result(e);
		goto out_unlink;
	}
	if (fsync(fd) < 0) {
		e = errno;
		close(fd);
		res = fail_errno(e, "fsync", path, err, errlen);
		goto out_unlink;
	}
	if (close(fd) < 0) {
		res = fail_errno(errno, "close", path, err, errlen);
		goto out_unlink;
	}
	if (link_into_new(&d, name, msg->seq, host, newname, sizeof newname) < 0) {
		e = errno;
		snprintf(path, sizeof path, "%s/%s/new", root, lp);
		res = fail_errno(e, "move the message into", path, err, errlen);
		goto out_unlink;
	}
	if (fsync(d.new) < 0) {
		/* Not durable: take it back so a retry does not duplicate it. */
		e = errno;
		unlinkat(d.new, newname, 0);
		snprintf(path, sizeof path, "%s/%s/new", root, lp);
		res = fail_errno(e, "fsync", path, err, errlen);
		goto out;
	}
	if (path_r != NULL)
		snprintf(path_r, pathlen, "%s/%s/new/%s", root, lp, newname);
	res = MAILDIR_OK;
	goto out;
out_unlink:
	unlinkat(d.tmp, name, 0);
out:
	dirs_close(&d);
	return res;
}
