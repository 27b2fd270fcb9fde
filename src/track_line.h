/*
 * track_line: the line format of the message tracking log, both ways.
 *
 * A tracking record is one JSON object on one line: a flat object whose
 * values are strings, integers or arrays of strings, nothing else.  This
 * module builds such lines (track_line_*: every string escaped, control
 * characters and invalid UTF-8 too, so no value can split a line) and
 * parses them back strictly and within bounds (track_line_parse), for
 * `carrier track` reading files that are, after all, file input.
 *
 * Pure: no I/O, no globals, no threads of its own; safe from any thread.
 */
#ifndef CARRIER_TRACK_LINE_H
#define CARRIER_TRACK_LINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Longest line written or read, newline included.  The writer shortens
 * long string values and recipient arrays to stay under it. */
#define TRACK_LINE_MAX 65536
/* Most fields in one object, most strings in one line's arrays. */
#define TRACK_LINE_FIELDS 32
#define TRACK_LINE_ITEMS 4096

/* ---- building -------------------------------------------------------- */

/* A line under construction in a caller-owned buffer of TRACK_LINE_MAX
 * bytes.  Appends never overflow: once a value does not fit, `full` is set
 * and the line is finished without it (track_line_end still closes it). */
struct track_line_buf {
	char *p;
	size_t len, cap;
	bool full;                      /* something was left out */
	unsigned n_fields;
	bool in_array;
};

void track_line_begin(struct track_line_buf *b, char *buf, size_t cap);
void track_line_str(struct track_line_buf *b, const char *key, const char *val);
void track_line_int(struct track_line_buf *b, const char *key, long long val);
void track_line_array_begin(struct track_line_buf *b, const char *key);
/* Adds one string to the open array; returns false (and adds nothing) when
 * it would not leave room for `reserve` more bytes after it. */
bool track_line_array_str(struct track_line_buf *b, const char *val, size_t reserve);
void track_line_array_end(struct track_line_buf *b);
/* Closes the object and appends '\n'; returns the line's length. */
size_t track_line_end(struct track_line_buf *b);

/* Writes `s` as a JSON string body (no quotes) into buf (NUL-terminated
 * when size > 0): quotes, backslashes and every control character escaped,
 * bytes that are not valid UTF-8 replaced by \ufffd.  Returns the length
 * it wanted, like snprintf. */
size_t track_line_escape(char *buf, size_t size, const char *s);

/* Formats `ms` (milliseconds since the epoch, UTC) as
 * "2026-11-24T13:02:11.123Z" into buf (>= 25 bytes). */
void track_line_time(char *buf, size_t size, int64_t ms);
/* Parses that format back (also without ".mmm"); returns 0 or -1. */
int track_line_time_parse(const char *s, int64_t *ms_r);

/* ---- parsing --------------------------------------------------------- */

enum track_value_type { TRACK_V_STR, TRACK_V_INT, TRACK_V_ARRAY };

struct track_field {
	const char *key;                /* decoded, NUL-terminated */
	enum track_value_type type;
	const char *s;                  /* TRACK_V_STR: decoded, no NUL inside */
	long long i;                    /* TRACK_V_INT */
	size_t first, n;                /* TRACK_V_ARRAY: items[first..first+n) */
};

/* One parsed line.  Strings point into `buf`, which the parser allocates
 * (at most the line's length + 1); free with track_line_clear. */
struct track_rec {
	size_t n;
	struct track_field f[TRACK_LINE_FIELDS];
	const char **items;
	size_t n_items;
	char *buf;
};

/*
 * Parses one line (`len` bytes, without its '\n'; a trailing '\r' is an
 * error).  Strict: one object, unique keys, values only strings, integers
 * (int64, no leading zeros, no fractions) and arrays of strings; strings
 * valid UTF-8 without raw control characters or \u0000; nothing after the
 * object but spaces.  Returns 0, or -1 with a reason in err (rec is then
 * empty).  Call track_line_clear(rec) after either.
 */
int track_line_parse(const char *line, size_t len, struct track_rec *rec,
		     char *err, size_t errlen);
void track_line_clear(struct track_rec *rec);

/* Lookups by key; NULL / fallback when missing or of another type. */
const struct track_field *track_rec_get(const struct track_rec *rec, const char *key);
const char *track_rec_str(const struct track_rec *rec, const char *key);
long long track_rec_int(const struct track_rec *rec, const char *key, long long fallback);

/* Re-encodes a parsed record into a line (fuzz round trip; tests).
 * Returns the length or 0 when it does not fit in `cap`. */
size_t track_line_format(const struct track_rec *rec, char *buf, size_t cap);

#endif
