/* Helpers shared by the cmocka unit tests. */
#ifndef CARRIER_TEST_UTIL_H
#define CARRIER_TEST_UTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ftw.h>
#include <sys/stat.h>

#include <cmocka.h>

/* Reads a whole file into a NUL-terminated buffer (caller frees). */
static inline char *test_read_file(const char *path)
{
	FILE *f = fopen(path, "rb");
	char *buf;
	long n;

	if (f == NULL)
		return NULL;
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	buf = calloc(1, (size_t)n + 1);
	if (buf != NULL && fread(buf, 1, (size_t)n, f) != (size_t)n) {
		free(buf);
		buf = NULL;
	}
	fclose(f);
	return buf;
}

/* Fails with got/want when `got` does not contain `want`. */
#define assert_contains(got, want)                                              \
	do {                                                                    \
		const char *g_ = (got), *w_ = (want);                           \
		if (g_ == NULL || strstr(g_, w_) == NULL)                       \
			fail_msg("got \"%s\", want it to contain \"%s\"",       \
				 g_ ? g_ : "(null)", w_);                        \
	} while (0)

static inline int test_rm_entry(const char *p, const struct stat *st, int flag,
				struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(p);
}

/* Removes a tree the test made (never follows symlinks out of it). */
static inline void test_rmtree(const char *dir)
{
	nftw(dir, test_rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* A scratch directory under /tmp and a path inside it that does not exist
 * yet (the spool or Maildir root the code under test creates). */
struct test_dir {
	char dir[64];
	char path[128];
};

static inline struct test_dir *test_dir_new(const char *tag, const char *sub)
{
	struct test_dir *t = calloc(1, sizeof *t);

	assert_non_null(t);
	snprintf(t->dir, sizeof t->dir, "/tmp/carrier-%s-XXXXXX", tag);
	assert_non_null(mkdtemp(t->dir));
	snprintf(t->path, sizeof t->path, "%s/%s", t->dir, sub);
	return t;
}

static inline void test_dir_free(struct test_dir *t)
{
	test_rmtree(t->dir);
	free(t);
}

#endif
