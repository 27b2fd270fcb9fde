/* Helpers shared by the cmocka unit tests. */
#ifndef CARRIER_TEST_UTIL_H
#define CARRIER_TEST_UTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

#endif
