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
#include "maildir.h"
#include "spool.h"

static int setup(void **state)
{
	*state = test_dir_new("maildir", "mail");
	return 0;
}

static int teardown(void **state)
{
	test_dir_free(*state);
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
	struct test_dir *f = *state;
	char path[1024], err[512] = "", dir[512];
	struct stat st;
	char *got;

	assert_int_equal(deliver_mem(f->path, "Bob", "Subject: hi\r\n\r\nline 1\r\nbare\rcr\r\n",
				     path, sizeof path, err, sizeof err), MAILDIR_OK);
	assert_string_equal(err, "");
	assert_int_equal(count_in(f->path, "bob", "new"), 1);
	assert_int_equal(count_in(f->path, "bob", "tmp"), 0);
	assert_int_equal(count_in(f->path, "bob", "cur"), 0);
	snprintf(dir, sizeof dir, "%s/bob/new/", f->path);
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
	snprintf(dir, sizeof dir, "%s/bob", f->path);
	assert_int_equal(stat(dir, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0700);

	/* A second delivery with the same seq gets its own file. */
	assert_int_equal(deliver_mem(f->path, "bob", "x\r\n", path, sizeof path, err, sizeof err),
			 MAILDIR_OK);
	assert_int_equal(count_in(f->path, "bob", "new"), 2);
}

static void test_deliver_from_fd(void **state)
{
	struct test_dir *f = *state;
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
	assert_int_equal(maildir_deliver(f->path, &m, path, sizeof path, err, sizeof err),
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
	assert_int_equal(maildir_deliver(f->path, &m, path, sizeof path, err, sizeof err),
			 MAILDIR_TEMP);
	assert_contains(err, "shorter than its size");
	close(fd);
	assert_int_equal(count_in(f->path, "carol", "new"), 1);
	assert_int_equal(count_in(f->path, "carol", "tmp"), 0);
}

static void test_symlinks_refused(void **state)
{
	struct test_dir *f = *state;
	char path[1024], err[512], p[512], elsewhere[512];

	snprintf(elsewhere, sizeof elsewhere, "%s/elsewhere", f->dir);
	assert_int_equal(mkdir(elsewhere, 0700), 0);
	assert_int_equal(mkdir(f->path, 0700), 0);

	/* The user directory itself is a symlink. */
	snprintf(p, sizeof p, "%s/eve", f->path);
	assert_int_equal(symlink(elsewhere, p), 0);
	assert_int_equal(deliver_mem(f->path, "eve", "x\r\n", path, sizeof path, err, sizeof err),
			 MAILDIR_PERM);
	assert_contains(err, "symbolic link");
	assert_int_equal(count_files(elsewhere, NULL, 0), 0);

	/* tmp/ is a symlink. */
	snprintf(p, sizeof p, "%s/bob", f->path);
	assert_int_equal(mkdir(p, 0700), 0);
	snprintf(p, sizeof p, "%s/bob/tmp", f->path);
	assert_int_equal(symlink(elsewhere, p), 0);
	assert_int_equal(deliver_mem(f->path, "bob", "x\r\n", path, sizeof path, err, sizeof err),
			 MAILDIR_PERM);
	assert_contains(err, "bob/tmp: is a symbolic link");
	assert_int_equal(count_files(elsewhere, NULL, 0), 0);

	/* new/ is a symlink: the file never leaves tmp/ and is removed. */
	snprintf(p, sizeof p, "%s/dan", f->path);
	assert_int_equal(mkdir(p, 0700), 0);
	snprintf(p, sizeof p, "%s/dan/new", f->path);
	assert_int_equal(symlink(elsewhere, p), 0);
	assert_int_equal(deliver_mem(f->path, "dan", "x\r\n", path, sizeof path, err, sizeof err),
			 MAILDIR_PERM);
	assert_int_equal(count_files(elsewhere, NULL, 0), 0);

	/* A file where the mailbox directory belongs. */
	snprintf(p, sizeof p, "%s/fay", f->path);
	close(open(p, O_WRONLY | O_CREAT, 0600));
	assert_int_equal(deliver_mem(f->path, "fay", "x\r\n", path, sizeof path, err, sizeof err),
			 MAILDIR_PERM);
	assert_contains(err, "is not a directory");
}

static void test_bad_localparts(void **state)
{
	struct test_dir *f = *state;
	static const char *bad[] = { "", ".", "..", ".hidden", "a/b", "../etc", "a\nb",
				     "\"\"", "\"../x\"", "\"a/b\"" };
	char path[1024], err[512], out[MAILDIR_LOCALPART_MAX + 1], lng[300];

	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		if (deliver_mem(f->path, bad[i], "x\r\n", path, sizeof path, err, sizeof err) !=
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
	struct test_dir *f = *state;
	char path[1024], err[512], root[256];

	/* The root is a file: configuration, so mail waits. */
	snprintf(root, sizeof root, "%s/file", f->dir);
	close(open(root, O_WRONLY | O_CREAT, 0600));
	assert_int_equal(deliver_mem(root, "bob", "x\r\n", path, sizeof path, err, sizeof err),
			 MAILDIR_TEMP);
	assert_contains(err, "Maildir root");
	/* A missing root is created (one level). */
	assert_int_equal(deliver_mem(f->path, "bob", "x\r\n", path, sizeof path, err, sizeof err),
			 MAILDIR_OK);
}

/* A real full disk: a 64 KiB tmpfs in a private mount namespace (root). */
static void test_enospc_tmpfs(void **state)
{
	struct test_dir *f = *state;
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
		    mkdir(f->path, 0700) < 0 ||
		    mount("tmpfs", f->path, "tmpfs", 0, "size=64k,mode=0700") < 0)
			_exit(77);
		memset(body, 'x', size);
		body[size] = '\0';
		r = deliver_mem(f->path, "bob", body, path, sizeof path, err, sizeof err);
		if (r != MAILDIR_TEMP)
			_exit(10 + (int)r);
		if (strstr(err, "No space left") == NULL)
			_exit(20);
		if (count_in(f->path, "bob", "tmp") != 0 || count_in(f->path, "bob", "new") != 0)
			_exit(21);
		/* A small message still fits afterwards. */
		if (deliver_mem(f->path, "bob", "small\r\n", path, sizeof path, err, sizeof err) !=
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
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
