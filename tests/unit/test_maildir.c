/*
 * Unit tests for the maildir agent and the local delivery runner: one file
 * in new/ with headers and LF line ends, bodies from memory and from a
 * file, symlinks and files where directories belong, bad local parts, the
 * errno mapping, a real ENOSPC (tmpfs in a private mount namespace, root
 * only), and the runner against a real spool (local and remote recipients,
 * states, removal, duplicates, deferral with backoff, no second delivery
 * after a restart).  Each test uses its own mkdtemp directory.
 */
#include "test_util.h"

#include <dirent.h>
#include <errno.h>
#include <event2/thread.h>
#include <fcntl.h>
#include <ftw.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "conf.h"
#include "evlog.h"
#include "local.h"
#include "maildir.h"
#include "spool.h"

struct fixture {
	char dir[64];
	char root[128];
};

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof *f);

	assert_non_null(f);
	snprintf(f->dir, sizeof f->dir, "/tmp/carrier-maildir-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	snprintf(f->root, sizeof f->root, "%s/mail", f->dir);
	*state = f;
	return 0;
}

static int rm_cb(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(p);
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	nftw(f->dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
	free(f);
	return 0;
}

/* Number of entries (not . or ..) in `path`; -1 when it cannot be read.
 * The last name seen goes into last (may be NULL). */
static int count_files(const char *path, char *last, size_t lastlen)
{
	DIR *d = opendir(path);
	struct dirent *e;
	int n = 0;

	if (d == NULL)
		return -1;
	while ((e = readdir(d)) != NULL) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		if (last != NULL)
			snprintf(last, lastlen, "%s/%s", path, e->d_name);
		n++;
	}
	closedir(d);
	return n;
}

static int count_in(const char *root, const char *lp, const char *sub)
{
	char path[512];

	snprintf(path, sizeof path, "%s/%s/%s", root, lp, sub);
	return count_files(path, NULL, 0);
}

static enum maildir_result deliver_mem(const char *root, const char *lp, const char *body,
				       char *path, size_t pathlen, char *err, size_t errlen)
{
	struct maildir_msg m = {
		.localpart = lp, .domain = "Example.ORG", .sender = "alice@example.net",
		.mem = body, .fd = -1, .size = strlen(body), .seq = 1,
		.hostname = "mx.example.org",
	};

	return maildir_deliver(root, &m, path, pathlen, err, errlen);
}

/* ---- maildir agent -------------------------------------------------------- */

static void test_deliver_one_file(void **state)
{
	struct fixture *f = *state;
	char path[1024], err[512] = "", dir[512];
	struct stat st;
	char *got;

	assert_int_equal(deliver_mem(f->root, "Bob", "Subject: hi\r\n\r\nline 1\r\nbare\rcr\r\n",
				     path, sizeof path, err, sizeof err), MAILDIR_OK);
	assert_string_equal(err, "");
	assert_int_equal(count_in(f->root, "bob", "new"), 1);
	assert_int_equal(count_in(f->root, "bob", "tmp"), 0);
	assert_int_equal(count_in(f->root, "bob", "cur"), 0);
	snprintf(dir, sizeof dir, "%s/bob/new/", f->root);
	assert_contains(path, dir);
	/* The unique name: time.M<usec>P<pid>Q<seq>.host */
	assert_contains(path, ".M");
	assert_contains(path, "Q1.mx.example.org");
	got = test_read_file(path);
	assert_non_null(got);
	assert_string_equal(got, "Return-Path: <alice@example.net>\n"
				 "Delivered-To: bob@example.org\n"
				 "Subject: hi\n\nline 1\nbare\rcr\n");
	free(got);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	snprintf(dir, sizeof dir, "%s/bob", f->root);
	assert_int_equal(stat(dir, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0700);

	/* A second delivery with the same seq gets its own file. */
	assert_int_equal(deliver_mem(f->root, "bob", "x\r\n", path, sizeof path, err, sizeof err),
			 MAILDIR_OK);
	assert_int_equal(count_in(f->root, "bob", "new"), 2);
}

static void test_deliver_from_fd(void **state)
{
	struct fixture *f = *state;
	char src[256], path[1024], err[512] = "";
	size_t size = 300 * 1000, off = 0;
	char *body = malloc(size), *want, *got;
	struct maildir_msg m = { .localpart = "carol", .domain = "example.org",
				 .sender = "", .seq = 7 };
	int fd;

	assert_non_null(body);
	/* CRLF pairs fall on every kind of 64 KiB chunk boundary. */
	for (size_t i = 0; i < size; i++)
		body[i] = (i % 100 == 98) ? '\r' : (i % 100 == 99) ? '\n' : (char)('a' + i % 26);
	snprintf(src, sizeof src, "%s/body", f->dir);
	fd = open(src, O_RDWR | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, body, size), (ssize_t)size);
	assert_int_equal(lseek(fd, 5, SEEK_SET), 5);
	m.fd = fd;
	m.size = size;
	assert_int_equal(maildir_deliver(f->root, &m, path, sizeof path, err, sizeof err),
			 MAILDIR_OK);
	assert_int_equal(lseek(fd, 0, SEEK_CUR), 5);   /* offset left alone */
	close(fd);
	want = malloc(size + 100);
	assert_non_null(want);
	off = (size_t)sprintf(want, "Return-Path: <>\nDelivered-To: carol@example.org\n");
	for (size_t i = 0; i < size; i++)
		if (body[i] != '\r')
			want[off++] = body[i];
	want[off] = '\0';
	got = test_read_file(path);
	assert_non_null(got);
	assert_int_equal(strlen(got), off);
	assert_true(strcmp(got, want) == 0);
	free(got);
	free(want);
	free(body);

	/* A body file shorter than its size: temporary, nothing left behind. */
	fd = open(src, O_RDONLY);
	m.fd = fd;
	m.size = size + 10;
	assert_int_equal(maildir_deliver(f->root, &m, path, sizeof path, err, sizeof err),
			 MAILDIR_TEMP);
	assert_contains(err, "shorter than its size");
	close(fd);
	assert_int_equal(count_in(f->root, "carol", "new"), 1);
	assert_int_equal(count_in(f->root, "carol", "tmp"), 0);
}

static void test_symlinks_refused(void **state)
{
	struct fixture *f = *state;
	char path[1024], err[512], p[512], elsewhere[512];

	snprintf(elsewhere, sizeof elsewhere, "%s/elsewhere", f->dir);
	assert_int_equal(mkdir(elsewhere, 0700), 0);
	assert_int_equal(mkdir(f->root, 0700), 0);

	/* The user directory itself is a symlink. */
	snprintf(p, sizeof p, "%s/eve", f->root);
	assert_int_equal(symlink(elsewhere, p), 0);
	assert_int_equal(deliver_mem(f->root, "eve", "x\r\n", path, sizeof path, err, sizeof err),
			 MAILDIR_PERM);
	assert_contains(err, "symbolic link");
	assert_int_equal(count_files(elsewhere, NULL, 0), 0);

	/* tmp/ is a symlink. */
	snprintf(p, sizeof p, "%s/bob", f->root);
	assert_int_equal(mkdir(p, 0700), 0);
	snprintf(p, sizeof p, "%s/bob/tmp", f->root);
	assert_int_equal(symlink(elsewhere, p), 0);
	assert_int_equal(deliver_mem(f->root, "bob", "x\r\n", path, sizeof path, err, sizeof err),
			 MAILDIR_PERM);
	assert_contains(err, "bob/tmp: is a symbolic link");
	assert_int_equal(count_files(elsewhere, NULL, 0), 0);

	/* new/ is a symlink: the file never leaves tmp/ and is removed. */
	snprintf(p, sizeof p, "%s/dan", f->root);
	assert_int_equal(mkdir(p, 0700), 0);
	snprintf(p, sizeof p, "%s/dan/new", f->root);
	assert_int_equal(symlink(elsewhere, p), 0);
	assert_int_equal(deliver_mem(f->root, "dan", "x\r\n", path, sizeof path, err, sizeof err),
			 MAILDIR_PERM);
	assert_int_equal(count_files(elsewhere, NULL, 0), 0);

	/* A file where the mailbox directory belongs. */
	snprintf(p, sizeof p, "%s/fay", f->root);
	close(open(p, O_WRONLY | O_CREAT, 0600));
	assert_int_equal(deliver_mem(f->root, "fay", "x\r\n", path, sizeof path, err, sizeof err),
			 MAILDIR_PERM);
	assert_contains(err, "is not a directory");
}

static void test_bad_localparts(void **state)
{
	struct fixture *f = *state;
	static const char *bad[] = { "", ".", "..", ".hidden", "a/b", "../etc", "a\nb",
				     "\"\"", "\"../x\"", "\"a/b\"" };
	char path[1024], err[512], out[MAILDIR_LOCALPART_MAX + 1], lng[300];

	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		if (deliver_mem(f->root, bad[i], "x\r\n", path, sizeof path, err, sizeof err) !=
		    MAILDIR_PERM)
			fail_msg("local part \"%s\": got not PERM, want PERM", bad[i]);
	}
	memset(lng, 'a', sizeof lng - 1);
	lng[sizeof lng - 1] = '\0';
	assert_int_equal(maildir_localpart_fold(lng, out, sizeof out, err, sizeof err), -1);
	assert_contains(err, "longer than");
	/* Nothing was created for any of them, not even the root. */
	assert_int_equal(count_files(f->dir, NULL, 0), 0);

	assert_int_equal(maildir_localpart_fold("John.Doe", out, sizeof out, err, sizeof err), 0);
	assert_string_equal(out, "john.doe");
	assert_int_equal(maildir_localpart_fold("\"A B\"", out, sizeof out, err, sizeof err), 0);
	assert_string_equal(out, "a b");
	assert_int_equal(maildir_localpart_fold("\"a\\\"b\"", out, sizeof out, err, sizeof err), 0);
	assert_string_equal(out, "a\"b");
	assert_int_equal(maildir_localpart_fold("user+tag", out, sizeof out, err, sizeof err), 0);
	assert_string_equal(out, "user+tag");
}

static void test_errno_mapping(void **state)
{
	static const int temp[] = { ENOSPC, EDQUOT, EIO, EACCES, EROFS, EMFILE, ENOMEM, EAGAIN };
	static const int perm[] = { ENOTDIR, ELOOP };

	for (size_t i = 0; i < sizeof temp / sizeof temp[0]; i++)
		if (maildir_errno_result(temp[i]) != MAILDIR_TEMP)
			fail_msg("%s: got %s, want temporary", strerror(temp[i]),
				 maildir_result_name(maildir_errno_result(temp[i])));
	for (size_t i = 0; i < sizeof perm / sizeof perm[0]; i++)
		if (maildir_errno_result(perm[i]) != MAILDIR_PERM)
			fail_msg("%s: got %s, want permanent", strerror(perm[i]),
				 maildir_result_name(maildir_errno_result(perm[i])));
}

static void test_root_problems_are_temporary(void **state)
{
	struct fixture *f = *state;
	char path[1024], err[512], root[256];

	/* The root is a file: configuration, so mail waits. */
	snprintf(root, sizeof root, "%s/file", f->dir);
	close(open(root, O_WRONLY | O_CREAT, 0600));
	assert_int_equal(deliver_mem(root, "bob", "x\r\n", path, sizeof path, err, sizeof err),
			 MAILDIR_TEMP);
	assert_contains(err, "Maildir root");
	/* A missing root is created (one level). */
	assert_int_equal(deliver_mem(f->root, "bob", "x\r\n", path, sizeof path, err, sizeof err),
			 MAILDIR_OK);
}

/* A real full disk: a 64 KiB tmpfs in a private mount namespace (root). */
static void test_enospc_tmpfs(void **state)
{
	struct fixture *f = *state;
	pid_t pid;
	int status;

	if (geteuid() != 0)
		skip();
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		size_t size = 256 * 1024;
		char *body = malloc(size + 1), path[1024], err[512];
		enum maildir_result r;

		if (unshare(CLONE_NEWNS) < 0 ||
		    mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0 ||
		    mkdir(f->root, 0700) < 0 ||
		    mount("tmpfs", f->root, "tmpfs", 0, "size=64k,mode=0700") < 0)
			_exit(77);
		memset(body, 'x', size);
		body[size] = '\0';
		r = deliver_mem(f->root, "bob", body, path, sizeof path, err, sizeof err);
		if (r != MAILDIR_TEMP)
			_exit(10 + (int)r);
		if (strstr(err, "No space left") == NULL)
			_exit(20);
		if (count_in(f->root, "bob", "tmp") != 0 || count_in(f->root, "bob", "new") != 0)
			_exit(21);
		/* A small message still fits afterwards. */
		if (deliver_mem(f->root, "bob", "small\r\n", path, sizeof path, err, sizeof err) !=
		    MAILDIR_OK)
			_exit(22);
		_exit(0);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	if (WEXITSTATUS(status) == 77)
		skip();
	if (WEXITSTATUS(status) != 0)
		fail_msg("child: got exit %d, want 0 (10+r: wrong result, 20: reason, "
			 "21: leftovers, 22: small delivery)", WEXITSTATUS(status));
}

/* ---- local runner against a real spool ------------------------------------ */

static struct carrier_conf *load_conf_extra(const char *root, const char *extra)
{
	struct conf_errors errs = { 0 };
	char text[1024];
	struct carrier_conf *c;

	snprintf(text, sizeof text,
		 "[server]\nlocal_domains = example.org, localhost\nhostname = mx.test\n"
		 "[local]\nmaildir = %s\n%s", root, extra);
	c = conf_load_string("test.conf", text, &errs);
	if (c == NULL) {
		char buf[512];

		conf_error_format(&errs.v[0], buf, sizeof buf);
		fail_msg("conf: %s", buf);
	}
	conf_errors_clear(&errs);
	return c;
}

static struct carrier_conf *load_conf(const char *root)
{
	return load_conf_extra(root, "");
}

static struct spool *open_spool(const struct fixture *f, size_t inline_max)
{
	struct spool_opts o;
	char err[512] = "", path[256];
	struct spool *sp;

	snprintf(path, sizeof path, "%s/spool", f->dir);
	spool_opts_init(&o);
	o.space_margin = 0;
	if (inline_max)
		o.inline_max = inline_max;
	sp = spool_open(path, &o, NULL, err, sizeof err);
	if (sp == NULL)
		fail_msg("spool_open %s: %s", path, err);
	return sp;
}

/* Commits a message that arrived at `arrival` (0: now) to the given
 * recipients (NULL-terminated). */
static void commit_at(struct spool *sp, char qid[SPOOL_QID_SIZE], const char *body,
		      const char *const *rcpts, int64_t arrival)
{
	char err[512] = "";
	struct spool_msg *m = spool_msg_new(sp, err, sizeof err);

	assert_non_null(m);
	if (arrival)
		spool_msg_set_arrival(m, arrival);
	assert_int_equal(spool_msg_set_sender(m, "alice@example.net"), 0);
	for (size_t i = 0; rcpts[i] != NULL; i++)
		assert_int_equal(spool_msg_add_rcpt(m, rcpts[i], 0, NULL), 0);
	assert_int_equal(spool_msg_append(m, body, strlen(body), err, sizeof err), 0);
	if (spool_commit(sp, &m, qid, err, sizeof err) != 0)
		fail_msg("commit: %s", err);
}

static void commit(struct spool *sp, char qid[SPOOL_QID_SIZE], const char *body,
		   const char *const *rcpts)
{
	commit_at(sp, qid, body, rcpts, 0);
}

static struct spool_envelope *load(struct spool *sp, const char *qid, int want_rc)
{
	struct spool_envelope *env = NULL;
	char err[512] = "";

	assert_int_equal(spool_load(sp, qid, &env, err, sizeof err), want_rc);
	return env;
}

static struct local *start(const struct carrier_conf *c, struct evlog *log, struct spool *sp)
{
	char err[512] = "";
	struct local *l = local_new(NULL, c, log, NULL, sp, err, sizeof err);

	if (l == NULL)
		fail_msg("local_new: %s", err);
	if (!local_wait_idle(l, 10000))
		fail_msg("local runner not idle after 10s");
	return l;
}

static void test_runner_delivers(void **state)
{
	struct fixture *f = *state;
	struct carrier_conf *c = load_conf(f->root);
	struct spool *sp = open_spool(f, 1024);
	struct evlog *log = evlog_new("test");
	char q1[SPOOL_QID_SIZE], q2[SPOOL_QID_SIZE], q3[SPOOL_QID_SIZE], q4[SPOOL_QID_SIZE];
	char q5[SPOOL_QID_SIZE];
	char big[4000], last[1024], *got;
	struct spool_envelope *env;
	struct local *l;

	memset(big, 'b', sizeof big - 3);
	memcpy(big + sizeof big - 3, "\r\n", 3);
	commit(sp, q1, "Subject: one\r\n\r\nhello\r\n",
	       (const char *[]){ "alice@example.org", "Bob@EXAMPLE.ORG", NULL });
	commit(sp, q2, "Subject: two\r\n\r\nhi\r\n", /* no domain: the first local one */
	       (const char *[]){ "alice@example.org", "carol@remote.net", "Postmaster", NULL });
	commit(sp, q3, big, /* a body in a file (inline_max 1024) */
	       (const char *[]){ "dave@localhost", "x/y@example.org", "dave@localhost", NULL });

	l = start(c, log, sp);
	assert_int_equal(count_in(f->root, "alice", "new"), 2);
	assert_int_equal(count_in(f->root, "bob", "new"), 1);
	assert_int_equal(count_in(f->root, "dave", "new"), 1);   /* listed twice, once */
	assert_int_equal(count_in(f->root, "carol", "new"), -1);
	assert_int_equal(count_in(f->root, "postmaster", "new"), 1);
	assert_int_equal(evlog_count(log, EV_LOCAL_DELIVERED), 5);
	assert_int_equal(evlog_count(log, EV_LOCAL_FAILED), 1);
	assert_int_equal(evlog_count(log, EV_LOCAL_REMOVED), 2);

	/* q1: all delivered, removed.  q3: delivered + failed, removed. */
	assert_null(load(sp, q1, 1));
	assert_null(load(sp, q3, 1));
	/* q2: the local recipient delivered, the remote one left queued. */
	env = load(sp, q2, 0);
	assert_int_equal(env->rcpts[0].state, SPOOL_RCPT_DELIVERED);
	assert_int_equal(env->rcpts[0].attempts, 1);
	assert_contains(env->rcpts[0].last_reply, "2.0.0 delivered to ");
	assert_int_equal(env->rcpts[1].state, SPOOL_RCPT_QUEUED);
	assert_int_equal(env->rcpts[1].attempts, 0);
	assert_int_equal(env->rcpts[2].state, SPOOL_RCPT_DELIVERED);
	spool_envelope_free(&env);

	assert_int_equal(count_files(f->root, NULL, 0), 4);  /* alice bob dave postmaster */
	{
		char p[512];

		snprintf(p, sizeof p, "%s/dave/new", f->root);
		count_files(p, last, sizeof last);
	}
	got = test_read_file(last);
	assert_non_null(got);
	assert_contains(got, "Return-Path: <alice@example.net>\nDelivered-To: dave@localhost\nbbb");
	assert_int_equal(strlen(got), strlen("Return-Path: <alice@example.net>\n"
					     "Delivered-To: dave@localhost\n") + sizeof big - 3 + 1);
	free(got);

	/* A kick naming a qid looks at that message only (no walk): q5, not
	 * kicked, waits for the next walk. */
	commit(sp, q5, "Subject: five\r\n\r\n", (const char *[]){ "fred@example.org", NULL });
	commit(sp, q4, "Subject: four\r\n\r\n", (const char *[]){ "alice@example.org", NULL });
	local_kick_qid(l, q4);
	local_kick_qid(l, q4);   /* twice: still one delivery */
	assert_true(local_wait_idle(l, 10000));
	assert_int_equal(count_in(f->root, "alice", "new"), 3);
	assert_null(load(sp, q4, 1));
	assert_int_equal(count_in(f->root, "fred", "new"), -1);
	env = load(sp, q5, 0);
	assert_int_equal(env->rcpts[0].state, SPOOL_RCPT_QUEUED);
	spool_envelope_free(&env);
	/* A plain kick walks the spool; nothing is delivered twice. */
	local_kick(l);
	assert_true(local_wait_idle(l, 10000));
	assert_int_equal(count_in(f->root, "fred", "new"), 1);
	assert_int_equal(count_in(f->root, "alice", "new"), 3);
	local_kick_qid(l, q4);   /* gone: nothing happens */
	local_kick_qid(l, "not-a-qid");
	assert_true(local_wait_idle(l, 10000));

	/* A restart delivers nothing again. */
	local_free(&l);
	assert_null(l);
	l = start(c, log, sp);
	assert_int_equal(count_in(f->root, "alice", "new"), 3);
	assert_int_equal(count_in(f->root, "bob", "new"), 1);
	assert_int_equal(count_in(f->root, "dave", "new"), 1);
	assert_int_equal(evlog_count(log, EV_LOCAL_DELIVERED), 7);
	local_free(&l);
	spool_close(&sp);
	evlog_free(&log);
	conf_free(&c);
}

static void test_runner_defers_then_delivers(void **state)
{
	struct fixture *f = *state;
	char bad_root[256], q[SPOOL_QID_SIZE];
	struct carrier_conf *bad, *good = load_conf(f->root);
	struct spool *sp = open_spool(f, 0);
	struct evlog *log = evlog_new("test");
	struct spool_envelope *env;
	struct local *l;
	int64_t before = (int64_t)time(NULL);

	/* The root lies under a regular file: a temporary failure. */
	snprintf(bad_root, sizeof bad_root, "%s/file/mail", f->dir);
	snprintf(q, sizeof q, "%s/file", f->dir);
	close(open(q, O_WRONLY | O_CREAT, 0600));
	bad = load_conf(bad_root);
	commit(sp, q, "Subject: x\r\n\r\n", (const char *[]){ "bob@example.org", NULL });
	l = start(bad, log, sp);
	assert_int_equal(evlog_count(log, EV_LOCAL_DEFERRED), 1);
	env = load(sp, q, 0);
	assert_int_equal(env->rcpts[0].state, SPOOL_RCPT_DEFERRED);
	assert_int_equal(env->rcpts[0].attempts, 1);
	/* retry_schedule's first step, 1m, with up to 10% jitter */
	assert_true(env->rcpts[0].next_attempt >= before + 54);
	assert_true(env->rcpts[0].next_attempt <= (int64_t)time(NULL) + 66);
	assert_contains(env->rcpts[0].last_reply, "4.2.0 open Maildir root");
	spool_envelope_free(&env);

	/* Not due yet: a kick (also after a reload) does not try again. */
	local_set_conf(l, good);
	assert_true(local_wait_idle(l, 10000));
	assert_int_equal(evlog_count(log, EV_LOCAL_DEFERRED), 1);
	assert_int_equal(count_in(f->root, "bob", "new"), -1);
	local_free(&l);

	/* Due (the backoff is recorded in the spool): a runner delivers it. */
	{
		char err[256];

		assert_int_equal(spool_rcpt_update(sp, q, 0, SPOOL_RCPT_DEFERRED, NULL,
						   (int64_t)time(NULL) - 1, err, sizeof err), 0);
	}
	l = start(good, log, sp);
	assert_int_equal(count_in(f->root, "bob", "new"), 1);
	assert_null(load(sp, q, 1));
	local_free(&l);

	spool_close(&sp);
	evlog_free(&log);
	conf_free(&bad);
	conf_free(&good);
}

/* Many messages, more arriving while the pool delivers: each recipient
 * exactly once, every local-only message removed. */
static void test_runner_many(void **state)
{
	struct fixture *f = *state;
	struct carrier_conf *c = load_conf(f->root);
	struct spool *sp = open_spool(f, 0);
	struct evlog *log = evlog_new("test");
	char q[SPOOL_QID_SIZE], a[64], b[64], keep[SPOOL_QID_SIZE];
	struct spool_envelope *env;
	struct local *l;
	int total = 0;

	for (int i = 0; i < 150; i++) {
		snprintf(a, sizeof a, "u%d@example.org", i % 10);
		snprintf(b, sizeof b, "v%d@localhost", i % 7);
		commit(sp, q, "Subject: many\r\n\r\nx\r\n", (const char *[]){ a, b, NULL });
	}
	commit(sp, keep, "Subject: r\r\n\r\n", (const char *[]){ "u0@example.org", "r@remote.example", NULL });
	l = local_new(NULL, c, log, NULL, sp, q, sizeof q);
	assert_non_null(l);
	for (int i = 0; i < 150; i++) {   /* while the first scan runs */
		snprintf(a, sizeof a, "u%d@example.org", i % 10);
		commit(sp, q, "Subject: more\r\n\r\ny\r\n", (const char *[]){ a, NULL });
		if (i % 2)
			local_kick_qid(l, q);
		else
			local_kick(l);
	}
	assert_true(local_wait_idle(l, 30000));
	for (int u = 0; u < 10; u++) {
		snprintf(a, sizeof a, "u%d", u);
		assert_int_equal(count_in(f->root, a, "new"), 15 + 15 + (u == 0));
		total += count_in(f->root, a, "new");
	}
	for (int u = 0; u < 7; u++) {
		snprintf(b, sizeof b, "v%d", u);
		total += count_in(f->root, b, "new");
		assert_int_equal(count_in(f->root, b, "tmp"), 0);
	}
	assert_int_equal(total, 150 * 2 + 150 + 1);
	assert_int_equal(evlog_count(log, EV_LOCAL_DELIVERED), 451);
	assert_int_equal(evlog_count(log, EV_LOCAL_REMOVED), 300);
	env = load(sp, keep, 0);
	assert_int_equal(env->rcpts[0].state, SPOOL_RCPT_DELIVERED);
	assert_int_equal(env->rcpts[1].state, SPOOL_RCPT_QUEUED);
	spool_envelope_free(&env);
	local_free(&l);
	spool_close(&sp);
	evlog_free(&log);
	conf_free(&c);
}

/* Temporary failures past max_queue_lifetime fail the recipient (4.4.7). */
static void test_runner_expires(void **state)
{
	struct fixture *f = *state;
	char bad_root[256], q[SPOOL_QID_SIZE], fresh[SPOOL_QID_SIZE];
	struct carrier_conf *c;
	struct spool *sp = open_spool(f, 0);
	struct evlog *log = evlog_new("test");
	struct spool_envelope *env;
	struct local *l;

	snprintf(q, sizeof q, "%s/file", f->dir);
	close(open(q, O_WRONLY | O_CREAT, 0600));
	snprintf(bad_root, sizeof bad_root, "%s/file/mail", f->dir);
	c = load_conf_extra(bad_root, "[delivery]\nmax_queue_lifetime = 1h\n");
	commit_at(sp, q, "Subject: old\r\n\r\n", (const char *[]){ "bob@example.org", NULL },
		  (int64_t)time(NULL) - 7200);
	commit(sp, fresh, "Subject: new\r\n\r\n", (const char *[]){ "bob@example.org", NULL });
	l = start(c, log, sp);
	assert_int_equal(evlog_count(log, EV_LOCAL_EXPIRED), 1);
	assert_int_equal(evlog_count(log, EV_LOCAL_DEFERRED), 1);
	assert_null(load(sp, q, 1));          /* failed, so final: removed */
	env = load(sp, fresh, 0);
	assert_int_equal(env->rcpts[0].state, SPOOL_RCPT_DEFERRED);
	spool_envelope_free(&env);
	local_free(&l);
	spool_close(&sp);
	evlog_free(&log);
	conf_free(&c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_deliver_one_file, setup, teardown),
		cmocka_unit_test_setup_teardown(test_deliver_from_fd, setup, teardown),
		cmocka_unit_test_setup_teardown(test_symlinks_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bad_localparts, setup, teardown),
		cmocka_unit_test_setup_teardown(test_errno_mapping, setup, teardown),
		cmocka_unit_test_setup_teardown(test_root_problems_are_temporary, setup, teardown),
		cmocka_unit_test_setup_teardown(test_enospc_tmpfs, setup, teardown),
		cmocka_unit_test_setup_teardown(test_runner_delivers, setup, teardown),
		cmocka_unit_test_setup_teardown(test_runner_defers_then_delivers, setup, teardown),
		cmocka_unit_test_setup_teardown(test_runner_many, setup, teardown),
		cmocka_unit_test_setup_teardown(test_runner_expires, setup, teardown),
	};

	/* As carrierd does: the spool posts answers to the runner's base. */
	evthread_use_pthreads();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
