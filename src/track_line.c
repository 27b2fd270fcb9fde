/*
 * track_line: build and parse the tracking log's JSON lines (see
 * track_line.h).  Pure code, no I/O; called by the tracking writer thread,
 * by `carrier track` and by the fuzzer.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "track_line.h"

/* Longest string value the builder keeps (input bytes); longer values are
 * cut.  A reply or a HELO is far shorter; this bounds hostile input. */
#define TRACK_VALUE_MAX 2048
/* Bytes kept free to close a line: "]}\n" and the NUL. */
#define TRACK_CLOSE_RESERVE 4

/* ---- UTF-8 ------------------------------------------------------------ */

/* Length of the valid UTF-8 sequence at s (n bytes available), or 0. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
	unsigned char c = s[0];
	size_t len;
	unsigned char lo = 0x80, hi = 0xbf;

	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf)
		len = 2;
	else if (c >= 0xe0 && c <= 0xef)
		len = 3;
	else if (c >= 0xf0 && c <= 0xf4)
		len = 4;
	else
		return 0;
	if (c == 0xe0)
		lo = 0xa0;
	else if (c == 0xed)
		hi = 0x9f;
	else if (c == 0xf0)
		lo = 0x90;
	else if (c == 0xf4)
		hi = 0x8f;
	if (n < len || s[1] < lo || s[1] > hi)
		return 0;
	for (size_t i = 2; i < len; i++)
		if (s[i] < 0x80 || s[i] > 0xbf)
			return 0;
	return len;
}

/* ---- escaping --------------------------------------------------------- */

struct out {
	char *p;
	size_t cap, len;                /* len counts even what did not fit */
};

static void out_mem(struct out *o, const void *s, size_t n)
{
	if (o->len < o->cap) {
		size_t room = o->cap - o->len;

		memcpy(o->p + o->len, s, n < room ? n : room);
	}
	o->len += n;
}

/* Escapes at most `max` input bytes of s (stops at NUL). */
static void escape_into(struct out *o, const char *s, size_t max)
{
	static const char hex[] = "0123456789abcdef";
	const unsigned char *u = (const unsigned char *)s;
	size_t n = strnlen(s, max);

	/* A cut value ends on a character boundary, not inside a sequence. */
	if (n == max)
		while (n > 0 && (u[n] & 0xc0) == 0x80)
			n--;
	for (size_t i = 0; i < n;) {
		unsigned char c = u[i];
		size_t seq;

		if (c == '"' || c == '\\') {
			char e[2] = { '\\', (char)c };

			out_mem(o, e, 2);
			i++;
		} else if (c < 0x20 || c == 0x7f) {
			char e[6] = { '\\', 'u', '0', '0', hex[c >> 4], hex[c & 15] };

			out_mem(o, e, 6);
			i++;
		} else if ((seq = utf8_seq(u + i, n - i)) == 0) {
			out_mem(o, "\\ufffd", 6);
			i++;
		} else {
			out_mem(o, u + i, seq);
			i += seq;
		}
	}
}

size_t track_line_escape(char *buf, size_t size, const char *s)
{
	struct out o = { buf, size, 0 };

	escape_into(&o, s, (size_t)-1);
	if (size > 0)
		buf[o.len < size ? o.len : size - 1] = '\0';
	return o.len;
}

/* ---- building --------------------------------------------------------- */

void track_line_begin(struct track_line_buf *b, char *buf, size_t cap)
{
	memset(b, 0, sizeof *b);
	b->p = buf;
	b->cap = cap;
	b->p[b->len++] = '{';
}

/* Appends `n` bytes when they fit with `reserve` to spare. */
static bool put(struct track_line_buf *b, const char *s, size_t n, size_t reserve)
{
	if (b->len + n + reserve + TRACK_CLOSE_RESERVE > b->cap)
		return false;
	memcpy(b->p + b->len, s, n);
	b->len += n;
	return true;
}

/* Appends a quoted, escaped string (at most `max` input bytes of it). */
static bool put_quoted(struct track_line_buf *b, const char *val, size_t max,
		       size_t reserve)
{
	struct out o = { NULL, 0, 0 };

	escape_into(&o, val, max);
	if (b->len + o.len + 2 + reserve + TRACK_CLOSE_RESERVE > b->cap)
		return false;
	b->p[b->len++] = '"';
	o.p = b->p + b->len;
	o.cap = o.len;
	o.len = 0;
	escape_into(&o, val, max);
	b->len += o.len;
	b->p[b->len++] = '"';
	return true;
}

/* Appends `"key":` (with a leading comma after the first field). */
static bool put_key(struct track_line_buf *b, const char *key, size_t reserve)
{
	size_t mark = b->len;

	if (b->n_fields >= TRACK_LINE_FIELDS ||
	    (b->n_fields > 0 && !put(b, ",", 1, reserve)) ||
	    !put_quoted(b, key, (size_t)-1, reserve) || !put(b, ":", 1, reserve)) {
		b->len = mark;
		b->full = true;
		return false;
	}
	b->n_fields++;
	return true;
}

static void line_str(struct track_line_buf *b, const char *key, const char *val,
		     size_t max)
{
	size_t mark = b->len;
	unsigned nf = b->n_fields;

	if (b->in_array || !put_key(b, key, 2))
		return;
	if (!put_quoted(b, val ? val : "", max, 0)) {
		b->len = mark;
		b->n_fields = nf;
		b->full = true;
	}
}

void track_line_str(struct track_line_buf *b, const char *key, const char *val)
{
	if (val != NULL && strnlen(val, TRACK_VALUE_MAX + 1) > TRACK_VALUE_MAX)
		b->full = true;
	line_str(b, key, val, TRACK_VALUE_MAX);
}

void track_line_int(struct track_line_buf *b, const char *key, long long val)
{
	char num[32];
	size_t mark = b->len;
	unsigned nf = b->n_fields;
	int n = snprintf(num, sizeof num, "%lld", val);

	if (b->in_array || !put_key(b, key, (size_t)n))
		return;
	if (!put(b, num, (size_t)n, 0)) {
		b->len = mark;
		b->n_fields = nf;
		b->full = true;
	}
}

void track_line_array_begin(struct track_line_buf *b, const char *key)
{
	if (b->in_array || !put_key(b, key, 1))
		return;
	b->p[b->len++] = '[';   /* room: the close reserve keeps "]}\n" */
	b->in_array = true;
}

static bool array_str(struct track_line_buf *b, const char *val, size_t max,
		      size_t reserve)
{
	size_t mark = b->len;

	if (!b->in_array)
		return false;
	if (b->p[b->len - 1] != '[' && !put(b, ",", 1, reserve))
		return false;
	if (!put_quoted(b, val ? val : "", max, reserve)) {
		b->len = mark;
		b->full = true;
		return false;
	}
	return true;
}

bool track_line_array_str(struct track_line_buf *b, const char *val, size_t reserve)
{
	return array_str(b, val, TRACK_VALUE_MAX, reserve);
}

void track_line_array_end(struct track_line_buf *b)
{
	if (!b->in_array)
		return;
	b->p[b->len++] = ']';
	b->in_array = false;
}

size_t track_line_end(struct track_line_buf *b)
{
	track_line_array_end(b);
	b->p[b->len++] = '}';
	b->p[b->len++] = '\n';
	b->p[b->len] = '\0';
	return b->len;
}

/* ---- time --------------------------------------------------------------- */

void track_line_time(char *buf, size_t size, int64_t ms)
{
	int64_t sec = ms / 1000, frac = ms % 1000;
	time_t t;
	struct tm tm;

	if (frac < 0) {
		frac += 1000;
		sec--;
	}
	t = (time_t)sec;
	if (gmtime_r(&t, &tm) == NULL)
		memset(&tm, 0, sizeof tm);
	snprintf(buf, size, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
		 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)frac);
}

/* Reads exactly `n` digits at *s; returns -1 when they are not digits. */
static int digits(const char **s, int n)
{
	int v = 0;

	for (int i = 0; i < n; i++) {
		if ((*s)[i] < '0' || (*s)[i] > '9')
			return -1;
		v = v * 10 + ((*s)[i] - '0');
	}
	*s += n;
	return v;
}

int track_line_time_parse(const char *s, int64_t *ms_r)
{
	struct tm tm;
	int y, mo, d, h, mi, se, ms = 0;
	time_t t;

	memset(&tm, 0, sizeof tm);
	if ((y = digits(&s, 4)) < 0 || *s++ != '-' || (mo = digits(&s, 2)) < 1 || mo > 12 ||
	    *s++ != '-' || (d = digits(&s, 2)) < 1 || d > 31 || *s++ != 'T' ||
	    (h = digits(&s, 2)) < 0 || h > 23 || *s++ != ':' || (mi = digits(&s, 2)) < 0 ||
	    mi > 59 || *s++ != ':' || (se = digits(&s, 2)) < 0 || se > 60)
		return -1;
	if (*s == '.') {
		s++;
		if ((ms = digits(&s, 3)) < 0)
			return -1;
	}
	if (strcmp(s, "Z") != 0)
		return -1;
	tm.tm_year = y - 1900;
	tm.tm_mon = mo - 1;
	tm.tm_mday = d;
	tm.tm_hour = h;
	tm.tm_min = mi;
	tm.tm_sec = se;
	t = timegm(&tm);
	*ms_r = (int64_t)t * 1000 + ms;
	return 0;
}

/* ---- parsing ------------------------------------------------------------ */

struct parser {
	const unsigned char *p, *end;
	char *out;                      /* next free byte of rec->buf */
	size_t items_cap;
	struct track_rec *rec;
	const char *why;
};

static void skip_ws(struct parser *ps)
{
	while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t'))
		ps->p++;
}

static int hex4(const unsigned char *p, unsigned *v_r)
{
	unsigned v = 0;

	for (int i = 0; i < 4; i++) {
		unsigned c = p[i], d;

		if (c >= '0' && c <= '9')
			d = c - '0';
		else if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f')
			d = (c | 0x20) - 'a' + 10;
		else
			return -1;
		v = v << 4 | d;
	}
	*v_r = v;
	return 0;
}

static void put_utf8(struct parser *ps, unsigned cp)
{
	char *o = ps->out;

	if (cp < 0x80) {
		*o++ = (char)cp;
	} else if (cp < 0x800) {
		*o++ = (char)(0xc0 | cp >> 6);
		*o++ = (char)(0x80 | (cp & 0x3f));
	} else if (cp < 0x10000) {
		*o++ = (char)(0xe0 | cp >> 12);
		*o++ = (char)(0x80 | (cp >> 6 & 0x3f));
		*o++ = (char)(0x80 | (cp & 0x3f));
	} else {
		*o++ = (char)(0xf0 | cp >> 18);
		*o++ = (char)(0x80 | (cp >> 12 & 0x3f));
		*o++ = (char)(0x80 | (cp >> 6 & 0x3f));
		*o++ = (char)(0x80 | (cp & 0x3f));
	}
	ps->out = o;
}

/* \uXXXX (and a following low surrogate) at ps->p, just after the 'u'. */
static int parse_u_escape(struct parser *ps)
{
	unsigned cp, lo;

	if (ps->end - ps->p < 4 || hex4(ps->p, &cp) < 0)
		return ps->why = "bad \\u escape", -1;
	ps->p += 4;
	if (cp == 0)
		return ps->why = "\\u0000 in a string", -1;
	if (cp >= 0xdc00 && cp <= 0xdfff)
		return ps->why = "lone low surrogate", -1;
	if (cp >= 0xd800 && cp <= 0xdbff) {
		if (ps->end - ps->p < 6 || ps->p[0] != '\\' || ps->p[1] != 'u' ||
		    hex4(ps->p + 2, &lo) < 0 || lo < 0xdc00 || lo > 0xdfff)
			return ps->why = "lone high surrogate", -1;
		ps->p += 6;
		cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
	}
	put_utf8(ps, cp);
	return 0;
}

static int parse_escape(struct parser *ps)
{
	static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
	const char *k;

	if (ps->p >= ps->end)
		return ps->why = "unterminated string", -1;
	if (*ps->p == 'u') {
		ps->p++;
		return parse_u_escape(ps);
	}
	if (*ps->p == '\0' || (k = strchr(from, *ps->p)) == NULL)
		return ps->why = "bad escape", -1;
	*ps->out++ = to[k - from];
	ps->p++;
	return 0;
}

/* A string at ps->p (the opening quote); decoded into ps->out. */
static const char *parse_string(struct parser *ps)
{
	char *start = ps->out;

	if (ps->p >= ps->end || *ps->p != '"')
		return ps->why = "expected a string", NULL;
	ps->p++;
	for (;;) {
		unsigned char c;
		size_t seq;

		if (ps->p >= ps->end)
			return ps->why = "unterminated string", NULL;
		c = *ps->p;
		if (c == '"')
			break;
		if (c == '\\') {
			ps->p++;
			if (parse_escape(ps) < 0)
				return NULL;
		} else if (c < 0x20) {
			return ps->why = "control character in a string", NULL;
		} else if ((seq = utf8_seq(ps->p, (size_t)(ps->end - ps->p))) == 0) {
			return ps->why = "invalid UTF-8", NULL;
		} else {
			memcpy(ps->out, ps->p, seq);
			ps->out += seq;
			ps->p += seq;
		}
	}
	ps->p++;
	*ps->out++ = '\0';
	return start;
}

static int parse_int(struct parser *ps, long long *v_r)
{
	bool neg = false;
	unsigned long long v = 0, lim;

	if (ps->p < ps->end && *ps->p == '-') {
		neg = true;
		ps->p++;
	}
	if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9')
		return ps->why = "expected a value", -1;
	if (*ps->p == '0' && ps->end - ps->p > 1 && ps->p[1] >= '0' && ps->p[1] <= '9')
		return ps->why = "leading zero", -1;
	lim = neg ? (unsigned long long)INT64_MAX + 1 : (unsigned long long)INT64_MAX;
	while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') {
		unsigned d = (unsigned)(*ps->p - '0');

		if (v > (lim - d) / 10)
			return ps->why = "integer out of range", -1;
		v = v * 10 + d;
		ps->p++;
	}
	if (neg)
		*v_r = v == (unsigned long long)INT64_MAX + 1 ? INT64_MIN : -(long long)v;
	else
		*v_r = (long long)v;
	return 0;
}

static int parse_array(struct parser *ps, struct track_field *f)
{
	struct track_rec *rec = ps->rec;

	ps->p++;                        /* '[' */
	f->type = TRACK_V_ARRAY;
	f->first = rec->n_items;
	f->n = 0;
	skip_ws(ps);
	if (ps->p < ps->end && *ps->p == ']') {
		ps->p++;
		return 0;
	}
	for (;;) {
		const char *s;

		skip_ws(ps);
		if ((s = parse_string(ps)) == NULL)
			return -1;
		if (rec->n_items >= ps->items_cap)
			return ps->why = "too many array items", -1;
		rec->items[rec->n_items++] = s;
		f->n++;
		skip_ws(ps);
		if (ps->p < ps->end && *ps->p == ',') {
			ps->p++;
			continue;
		}
		if (ps->p < ps->end && *ps->p == ']') {
			ps->p++;
			return 0;
		}
		return ps->why = "expected ',' or ']' in an array", -1;
	}
}

static int parse_value(struct parser *ps, struct track_field *f)
{
	if (ps->p >= ps->end)
		return ps->why = "expected a value", -1;
	if (*ps->p == '"') {
		f->type = TRACK_V_STR;
		return (f->s = parse_string(ps)) == NULL ? -1 : 0;
	}
	if (*ps->p == '[')
		return parse_array(ps, f);
	f->type = TRACK_V_INT;
	return parse_int(ps, &f->i);
}

static int parse_member(struct parser *ps)
{
	struct track_rec *rec = ps->rec;
	struct track_field *f;
	const char *key;

	if (rec->n >= TRACK_LINE_FIELDS)
		return ps->why = "too many fields", -1;
	if ((key = parse_string(ps)) == NULL)
		return -1;
	if (*key == '\0')
		return ps->why = "empty key", -1;
	for (size_t i = 0; i < rec->n; i++)
		if (strcmp(rec->f[i].key, key) == 0)
			return ps->why = "duplicate key", -1;
	f = &rec->f[rec->n];
	memset(f, 0, sizeof *f);
	f->key = key;
	skip_ws(ps);
	if (ps->p >= ps->end || *ps->p != ':')
		return ps->why = "expected ':'", -1;
	ps->p++;
	skip_ws(ps);
	if (parse_value(ps, f) < 0)
		return -1;
	rec->n++;
	return 0;
}

static int parse_object(struct parser *ps)
{
	skip_ws(ps);
	if (ps->p >= ps->end || *ps->p != '{')
		return ps->why = "not a JSON object", -1;
	ps->p++;
	skip_ws(ps);
	if (ps->p < ps->end && *ps->p == '}') {
		ps->p++;
	} else {
		for (;;) {
			skip_ws(ps);
			if (parse_member(ps) < 0)
				return -1;
			skip_ws(ps);
			if (ps->p < ps->end && *ps->p == ',') {
				ps->p++;
				continue;
			}
			if (ps->p < ps->end && *ps->p == '}') {
				ps->p++;
				break;
			}
			return ps->why = "expected ',' or '}'", -1;
		}
	}
	skip_ws(ps);
	if (ps->p != ps->end)
		return ps->why = "trailing bytes after the object", -1;
	return 0;
}

int track_line_parse(const char *line, size_t len, struct track_rec *rec,
		     char *err, size_t errlen)
{
	struct parser ps;

	memset(rec, 0, sizeof *rec);
	if (len >= TRACK_LINE_MAX) {
		snprintf(err, errlen, "line longer than %d bytes", TRACK_LINE_MAX);
		return -1;
	}
	memset(&ps, 0, sizeof ps);
	ps.p = (const unsigned char *)line;
	ps.end = ps.p + len;
	ps.rec = rec;
	ps.items_cap = len / 3 + 1;
	if (ps.items_cap > TRACK_LINE_ITEMS)
		ps.items_cap = TRACK_LINE_ITEMS;
	rec->buf = malloc(len + 1);
	rec->items = malloc(ps.items_cap * sizeof *rec->items);
	if (rec->buf == NULL || rec->items == NULL) {
		track_line_clear(rec);
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	ps.out = rec->buf;
	if (parse_object(&ps) < 0) {
		snprintf(err, errlen, "%s at byte %zu", ps.why,
			 (size_t)(ps.p - (const unsigned char *)line));
		track_line_clear(rec);
		return -1;
	}
	return 0;
}

void track_line_clear(struct track_rec *rec)
{
	free(rec->buf);
	free(rec->items);
	memset(rec, 0, sizeof *rec);
}

const struct track_field *track_rec_get(const struct track_rec *rec, const char *key)
{
	for (size_t i = 0; i < rec->n; i++)
		if (strcmp(rec->f[i].key, key) == 0)
			return &rec->f[i];
	return NULL;
}

const char *track_rec_str(const struct track_rec *rec, const char *key)
{
	const struct track_field *f = track_rec_get(rec, key);

	return f != NULL && f->type == TRACK_V_STR ? f->s : NULL;
}

long long track_rec_int(const struct track_rec *rec, const char *key, long long fallback)
{
	const struct track_field *f = track_rec_get(rec, key);

	return f != NULL && f->type == TRACK_V_INT ? f->i : fallback;
}

size_t track_line_format(const struct track_rec *rec, char *buf, size_t cap)
{
	struct track_line_buf b;

	if (cap < 16)
		return 0;
	track_line_begin(&b, buf, cap);
	for (size_t i = 0; i < rec->n && !b.full; i++) {
		const struct track_field *f = &rec->f[i];

		switch (f->type) {
		case TRACK_V_STR:
			line_str(&b, f->key, f->s, (size_t)-1);
			break;
		case TRACK_V_INT:
			track_line_int(&b, f->key, f->i);
			break;
		case TRACK_V_ARRAY:
			track_line_array_begin(&b, f->key);
			for (size_t k = 0; k < f->n && !b.full; k++)
				array_str(&b, rec->items[f->first + k], (size_t)-1, 0);
			track_line_array_end(&b);
			break;
		}
	}
	if (b.full)
		return 0;
	return track_line_end(&b);
}
