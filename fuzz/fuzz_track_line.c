/*
 * libFuzzer harness for the tracking log's line format (track_line.c):
 * the lines `carrier track` reads back from files.
 *
 * The input is one line.  It is parsed strictly; a parsed record is
 * re-encoded, and the encoding must parse again to the same record and
 * re-encode to the same bytes.  The input is also escaped as a string value
 * (the writer's path for hostile HELOs and addresses): the line built from
 * it must be a single line that parses, and its value must escape to the
 * same text again.  Timestamps are parsed too.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "track_line.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void same_record(const struct track_rec *a, const struct track_rec *b)
{
	if (a->n != b->n)
		abort();
	for (size_t i = 0; i < a->n; i++) {
		const struct track_field *x = &a->f[i], *y = &b->f[i];

		if (strcmp(x->key, y->key) != 0 || x->type != y->type)
			abort();
		if (x->type == TRACK_V_STR && strcmp(x->s, y->s) != 0)
			abort();
		if (x->type == TRACK_V_INT && x->i != y->i)
			abort();
		if (x->type == TRACK_V_ARRAY) {
			if (x->n != y->n)
				abort();
			for (size_t k = 0; k < x->n; k++)
				if (strcmp(a->items[x->first + k], b->items[y->first + k]) != 0)
					abort();
		}
	}
}

static void round_trip(const char *line, size_t len)
{
	struct track_rec rec, again;
	char err[128];
	size_t cap = 6 * len + 64, n, n2;
	char *out, *out2;

	if (track_line_parse(line, len, &rec, err, sizeof err) < 0) {
		track_line_clear(&rec);
		return;
	}
	out = malloc(cap);
	out2 = malloc(cap);
	if (out == NULL || out2 == NULL)
		abort();
	n = track_line_format(&rec, out, cap);
	if (n == 0 || out[n - 1] != '\n' || memchr(out, '\n', n - 1) != NULL)
		abort();
	if (n - 1 < TRACK_LINE_MAX) {
		if (track_line_parse(out, n - 1, &again, err, sizeof err) < 0)
			abort();
		same_record(&rec, &again);
		n2 = track_line_format(&again, out2, cap);
		if (n2 != n || memcmp(out, out2, n) != 0)
			abort();
		track_line_clear(&again);
	}
	track_line_clear(&rec);
	free(out);
	free(out2);
}

/* Builds a line holding s as a string and as an array item; it must be one
 * line that parses.  Returns the decoded value (caller frees) or NULL. */
static char *line_of(const char *s)
{
	struct track_line_buf b;
	struct track_rec rec;
	char *line = malloc(TRACK_LINE_MAX), err[128], *v = NULL;
	const struct track_field *a;
	size_t len;

	if (line == NULL)
		abort();
	track_line_begin(&b, line, TRACK_LINE_MAX);
	track_line_str(&b, "v", s);
	track_line_array_begin(&b, "a");
	track_line_array_str(&b, s, 0);
	track_line_array_end(&b);
	len = track_line_end(&b);
	if (memchr(line, '\n', len - 1) != NULL || strlen(line) != len)
		abort();
	if (track_line_parse(line, len - 1, &rec, err, sizeof err) < 0)
		abort();
	a = track_rec_get(&rec, "a");
	if (track_rec_str(&rec, "v") != NULL) {
		v = strdup(track_rec_str(&rec, "v"));
		/* The array item is escaped the same way. */
		if (a == NULL || a->n != 1 || strcmp(rec.items[a->first], v) != 0)
			abort();
	}
	track_line_clear(&rec);
	free(line);
	return v;
}

/* Escaping is stable: what decodes from an escaped value escapes and
 * decodes to itself (invalid UTF-8 became U+FFFD the first time). */
static void escape_value(const char *s)
{
	char *v = line_of(s), *v2;

	if (v == NULL)
		return;
	v2 = line_of(v);
	/* Values over 2 KiB are cut (at a character boundary) each time. */
	if (v2 == NULL || (strlen(v) <= 2048 && strcmp(v, v2) != 0) ||
	    strncmp(v, v2, strlen(v2)) != 0)
		abort();
	free(v);
	free(v2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *buf = malloc(size + 1);   /* exact size so ASan sees any overread */
	int64_t ms;

	if (buf == NULL)
		return 0;
	memcpy(buf, data, size);
	buf[size] = '\0';
	round_trip(buf, size);
	if (size < TRACK_LINE_MAX / 8)
		escape_value(buf);      /* up to the first NUL */
	track_line_time_parse(buf, &ms);
	free(buf);
	return 0;
}
