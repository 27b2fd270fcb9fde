/*
 * cli_track: `carrier track`, each message's story from the tracking log.
 *
 *   carrier track [-c FILE] [-d DIR] [--json] [--qid ID] [--message-id ID]
 *                 [--from ADDR] [--to ADDR] [--since TIME] [--until TIME]
 *
 * Reads the day files (track.h) of the time range only, in two streaming
 * passes: the first finds the queue IDs of matching messages (following
 * "bounce_qid" to the bounce carrier sent), the second keeps those
 * messages' records, which are then printed message by message in time
 * order.  Memory holds the matched stories only, capped at TRACK_KEEP_MAX
 * bytes.  Lines that do not parse (a torn write, a damaged file) are
 * skipped and counted on stderr.
 *
 * Needs no daemon: it reads the files directly (read access to track.dir).
 * Exit status: 0 something matched, 1 nothing did, 2 usage or errors.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "cli.h"
#include "conf.h"
#include "track.h"
#include "track_line.h"

#define TRACK_EXIT_MATCH 0
#define TRACK_EXIT_NONE 1
#define TRACK_EXIT_ERROR 2
/* Bytes of matched records kept for printing; beyond, output is cut. */
#define TRACK_KEEP_MAX (256u << 20)
#define MS_PER_DAY 86400000LL

struct track_opts {
	const char *config;             /* NULL: embedded default */
	const char *dir;                /* overrides the configuration */
	bool json;
	const char *qid, *msgid, *from, *to;
	int64_t since, until;           /* ms; [since, until) */
};

/* ---- a set of strings (queue IDs of matched messages) ------------------ */

struct strset {
	char **v;
	size_t cap, n;
};

static uint64_t str_hash(const char *s)
{
	uint64_t h = 1469598103934665603ULL;

	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211ULL;
	return h;
}

static bool strset_has(const struct strset *set, const char *s)
{
	if (set->cap == 0)
		return false;
	for (size_t i = str_hash(s) & (set->cap - 1);; i = (i + 1) & (set->cap - 1)) {
		if (set->v[i] == NULL)
			return false;
		if (strcmp(set->v[i], s) == 0)
			return true;
	}
}

static int strset_add(struct strset *set, const char *s)
{
	if (strset_has(set, s))
		return 0;
	if ((set->n + 1) * 2 > set->cap) {
		struct strset bigger = { NULL, set->cap ? set->cap * 2 : 64, 0 };

		if ((bigger.v = calloc(bigger.cap, sizeof *bigger.v)) == NULL)
			return -1;
		for (size_t i = 0; i < set->cap; i++) {
			if (set->v[i] == NULL)
				continue;
			size_t k = str_hash(set->v[i]) & (bigger.cap - 1);

			while (bigger.v[k] != NULL)
				k = (k + 1) & (bigger.cap - 1);
			bigger.v[k] = set->v[i];
			bigger.n++;
		}
		free(set->v);
		*set = bigger;
	}
	size_t i = str_hash(s) & (set->cap - 1);

	while (set->v[i] != NULL)
		i = (i + 1) & (set->cap - 1);
	if ((set->v[i] = strdup(s)) == NULL)
		return -1;
	set->n++;
	return 0;
}

static void strset_clear(struct strset *set)
{
	for (size_t i = 0; i < set->cap; i++)
		free(set->v[i]);
	free(set->v);
	memset(set, 0, sizeof *set);
}

/* ---- command line ------------------------------------------------------- */

static void track_usage(FILE *out)
{
	fprintf(out,
		"usage: carrier track [-c FILE] [-d DIR] [--json] [--qid ID] [--message-id ID]\n"
		"                     [--from ADDR] [--to ADDR] [--since TIME] [--until TIME]\n"
		"\n"
		"Tells each matching message's story from the tracking log: received,\n"
		"queued, routed, each attempt, delivered, deferred, bounced (and the bounce\n"
		"carrier sent), expired, and what administrators did.  A message matches\n"
		"when one of its records satisfies every option given; its whole story is\n"
		"printed.\n"
		"\n"
		"  -c FILE           configuration file (for track.dir)\n"
		"  -d, --dir DIR     read the tracking files in DIR instead\n"
		"  --json            print the records as JSON lines\n"
		"  --qid ID          queue ID (of the message or of its bounce)\n"
		"  --message-id ID   Message-ID header, with or without <>\n"
		"  --from ADDR       envelope sender; @domain matches a whole domain\n"
		"  --to ADDR         a recipient; @domain matches a whole domain\n"
		"  --since TIME      records at or after TIME\n"
		"  --until TIME      records before TIME\n"
		"\n"
		"TIME is UTC unless it says otherwise: 2026-11-24, 2026-11-24T13:02[:11[.123]],\n"
		"'2026-11-24 13:02', 2026-11-24T14:02:11+01:00, "
		"now, or relative to now: -30s, -15m, -2h, -7d, -1w.  A date alone as\n"
		"--until means the end of that day.\n"
		"\n"
		"Exit status: 0 something matched, 1 nothing did, 2 usage or errors.\n");
}

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* "-2h" and friends; returns 0 or -1. */
static int parse_relative(const char *s, int64_t now, int64_t *ms_r)
{
	char *end;
	unsigned long long n;
	int64_t unit;

	if (*s != '-' || !isdigit((unsigned char)s[1]))
		return -1;
	errno = 0;
	n = strtoull(s + 1, &end, 10);
	switch (*end) {
	case 's': unit = 1000; break;
	case 'm': unit = 60000; break;
	case 'h': unit = 3600000; break;
	case 'd': unit = MS_PER_DAY; break;
	case 'w': unit = 7 * MS_PER_DAY; break;
	default: return -1;
	}
	if (errno != 0 || end[1] != '\0' || n > (unsigned long long)(INT64_MAX / unit) / 2)
		return -1;
	*ms_r = now - (int64_t)n * unit;
	return 0;
}

/*
 * Parses TIME (see the usage).  `end_of_day`: a date alone means the end
 * of that day (for --until).  Returns 0 or -1.
 */
static int parse_time(const char *s, int64_t now, bool end_of_day, int64_t *ms_r)
{
	char buf[48];
	size_t n = strlen(s);
	int offset = 0;                 /* minutes east of UTC */

	if (strcmp(s, "now") == 0) {
		*ms_r = now;
		return 0;
	}
	if (*s == '-')
		return parse_relative(s, now, ms_r);
	if (n == 10) {
		snprintf(buf, sizeof buf, "%sT00:00:00Z", s);
		if (track_line_time_parse(buf, ms_r) < 0)
			return -1;
		if (end_of_day)
			*ms_r += MS_PER_DAY;
		return 0;
	}
	if (n < 16 || n > 30 || (s[10] != 'T' && s[10] != ' '))
		return -1;
	/* Normalise to YYYY-MM-DDTHH:MM:SS[.mmm]Z for track_line_time_parse,
	 * taking off a "+01:00" style offset. */
	snprintf(buf, sizeof buf, "%.10sT%s", s, s + 11);
	n = strlen(buf);
	if (n >= 22 && (buf[n - 6] == '+' || buf[n - 6] == '-') && buf[n - 3] == ':') {
		const char *z = buf + n - 5;

		if (!isdigit((unsigned char)z[0]) || !isdigit((unsigned char)z[1]) ||
		    !isdigit((unsigned char)z[3]) || !isdigit((unsigned char)z[4]))
			return -1;
		offset = ((z[0] - '0') * 10 + (z[1] - '0')) * 60 + (z[3] - '0') * 10 + (z[4] - '0');
		if (offset > 18 * 60)
			return -1;
		if (buf[n - 6] == '-')
			offset = -offset;
		n -= 6;
		buf[n] = '\0';
	} else if (buf[n - 1] == 'Z') {
		buf[--n] = '\0';
	}
	if (n == 16)
		strcat(buf, ":00");
	else if (n != 19 && n != 23)
		return -1;
	strcat(buf, "Z");
	if (track_line_time_parse(buf, ms_r) < 0)
		return -1;
	*ms_r -= (int64_t)offset * 60000;
	return 0;
}

static int need_value(int argc, char **argv, int i)
{
	if (i + 1 < argc)
		return 0;
	fprintf(stderr, "carrier track: %s needs a value\n", argv[i]);
	return -1;
}

static int parse_time_opt(const char *opt, const char *val, bool end, int64_t *ms_r)
{
	if (parse_time(val, now_ms(), end, ms_r) == 0)
		return 0;
	fprintf(stderr, "carrier track: %s: bad time '%s' (want 2026-11-24, "
		"2026-11-24T13:02:11, or -2h)\n", opt, val);
	return -1;
}

static int parse_args(int argc, char **argv, struct track_opts *o)
{
	memset(o, 0, sizeof *o);
	o->since = INT64_MIN;
	o->until = INT64_MAX;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char **str = NULL;

		if (!strcmp(a, "-c") || !strcmp(a, "--config"))
			str = &o->config;
		else if (!strcmp(a, "-d") || !strcmp(a, "--dir"))
			str = &o->dir;
		else if (!strcmp(a, "--qid"))
			str = &o->qid;
		else if (!strcmp(a, "--message-id"))
			str = &o->msgid;
		else if (!strcmp(a, "--from"))
			str = &o->from;
		else if (!strcmp(a, "--to"))
			str = &o->to;
		if (str != NULL) {
			if (need_value(argc, argv, i) < 0)
				return -1;
			*str = argv[++i];
		} else if (!strcmp(a, "--since") || !strcmp(a, "--until")) {
			bool until = a[2] == 'u';

			if (need_value(argc, argv, i) < 0 ||
			    parse_time_opt(a, argv[i + 1], until, until ? &o->until : &o->since) < 0)
				return -1;
			i++;
		} else if (!strcmp(a, "--json")) {
			o->json = true;
		} else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			return 1;
		} else {
			fprintf(stderr, "carrier track: unknown option '%s'\n", a);
			return -1;
		}
	}
	return 0;
}

/* ---- matching --------------------------------------------------------------- */

/* Compares addresses without surrounding <>, case-insensitively;
 * "@domain" in `want` matches any address at that domain. */
static bool addr_match(const char *got, const char *want)
{
	size_t gl, wl;

	if (got == NULL)
		return false;
	if (*got == '<')
		got++;
	if (*want == '<')
		want++;
	gl = strlen(got);
	wl = strlen(want);
	if (gl > 0 && got[gl - 1] == '>')
		gl--;
	if (wl > 0 && want[wl - 1] == '>')
		wl--;
	if (*want == '@')
		return gl >= wl && strncasecmp(got + gl - wl, want, wl) == 0;
	return gl == wl && strncasecmp(got, want, wl) == 0;
}

static bool rcpt_match(const struct track_rec *rec, const char *want)
{
	const struct track_field *f = track_rec_get(rec, "rcpts");

	if (addr_match(track_rec_str(rec, "rcpt"), want))
		return true;
	if (f == NULL || f->type != TRACK_V_ARRAY)
		return false;
	for (size_t i = 0; i < f->n; i++)
		if (addr_match(rec->items[f->first + i], want))
			return true;
	return false;
}

/* Message-IDs compare without their <> and exactly otherwise. */
static bool msgid_match(const char *got, const char *want)
{
	size_t gl, wl;

	if (got == NULL)
		return false;
	got += *got == '<';
	want += *want == '<';
	gl = strlen(got);
	wl = strlen(want);
	gl -= gl > 0 && got[gl - 1] == '>';
	wl -= wl > 0 && want[wl - 1] == '>';
	return gl == wl && memcmp(got, want, gl) == 0;
}

static bool in_range(const struct track_opts *o, int64_t ts)
{
	return ts >= o->since && ts < o->until;
}

static bool rec_matches(const struct track_opts *o, const struct track_rec *rec)
{
	const char *qid = track_rec_str(rec, "qid"), *bq = track_rec_str(rec, "bounce_qid");

	if (o->qid != NULL && !(qid != NULL && strcmp(qid, o->qid) == 0) &&
	    !(bq != NULL && strcmp(bq, o->qid) == 0))
		return false;
	if (o->msgid != NULL && !msgid_match(track_rec_str(rec, "msgid"), o->msgid))
		return false;
	if (o->from != NULL && !addr_match(track_rec_str(rec, "from"), o->from))
		return false;
	if (o->to != NULL && !rcpt_match(rec, o->to))
		return false;
	return true;
}

/* ---- reading the files ---------------------------------------------------- */

struct day_file {
	int64_t day;
	char *path;
};

struct reader {
	const struct track_opts *o;
	struct day_file *files;
	size_t n_files;
	char *line;                     /* TRACK_LINE_MAX + 1 */
	unsigned long bad_lines;
	struct strset matched;
	/* pass 2 */
	struct kept *kept;
	size_t n_kept, cap_kept, kept_bytes;
	bool truncated;
};

struct kept {
	char *qid;
	char *line;                     /* the record's line, as written */
	int64_t ts;
	size_t seq;
	int64_t story_ts;               /* first record of its message */
};

static int file_cmp(const void *a, const void *b)
{
	const struct day_file *x = a, *y = b;

	return x->day < y->day ? -1 : x->day > y->day;
}

static int64_t floor_day(int64_t ms)
{
	return ms >= 0 ? ms / MS_PER_DAY : -((-ms + MS_PER_DAY - 1) / MS_PER_DAY);
}

/* Lists the day files overlapping [since, until). */
static int list_files(struct reader *r, const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	int64_t first = r->o->since == INT64_MIN ? INT64_MIN : floor_day(r->o->since);
	int64_t last = r->o->until == INT64_MAX ? INT64_MAX : floor_day(r->o->until - 1);
	size_t cap = 0;

	if (d == NULL) {
		fprintf(stderr, "carrier track: cannot read the tracking log directory %s: %s\n",
			dir, strerror(errno));
		return -1;
	}
	while ((de = readdir(d)) != NULL) {
		int64_t day = track_file_day(de->d_name);
		struct day_file *f;

		if (day < 0 || day < first || day > last)
			continue;
		if (r->n_files == cap) {
			cap = cap ? cap * 2 : 16;
			if ((f = realloc(r->files, cap * sizeof *f)) == NULL)
				goto oom;
			r->files = f;
		}
		f = &r->files[r->n_files];
		if (asprintf(&f->path, "%s/%s", dir, de->d_name) < 0)
			goto oom;
		f->day = day;
		r->n_files++;
	}
	closedir(d);
	if (r->n_files > 1)   /* qsort(NULL, 0, ...) is undefined */
		qsort(r->files, r->n_files, sizeof *r->files, file_cmp);
	return 0;
oom:
	closedir(d);
	fprintf(stderr, "carrier track: out of memory\n");
	return -1;
}

/* Reads one line into r->line (without '\n').  Returns 1 with *len_r, 0 at
 * the end, 2 for a line too long (skipped). */
static int read_line(FILE *f, char *buf, size_t *len_r)
{
	size_t n = 0;
	int c;
	bool too_long = false;

	while ((c = getc_unlocked(f)) != EOF && c != '\n') {
		if (n < TRACK_LINE_MAX)
			buf[n++] = (char)c;
		else
			too_long = true;
	}
	if (c == EOF && n == 0 && !too_long)
		return 0;
	buf[n] = '\0';
	*len_r = n;
	return too_long ? 2 : 1;
}

/* Calls fn on each parsed record of the selected files, in file order. */
static int for_each_rec(struct reader *r,
			int (*fn)(struct reader *r, const struct track_rec *rec,
				  int64_t ts, size_t len))
{
	for (size_t i = 0; i < r->n_files; i++) {
		FILE *f = fopen(r->files[i].path, "r");
		size_t len;
		int got;

		if (f == NULL) {
			fprintf(stderr, "carrier track: %s: %s\n", r->files[i].path, strerror(errno));
			continue;
		}
		while ((got = read_line(f, r->line, &len)) != 0) {
			struct track_rec rec;
			char err[128];
			int64_t ts;
			const char *tss;
			int rc = 0;

			if (got == 2 || track_line_parse(r->line, len, &rec, err, sizeof err) < 0) {
				r->bad_lines++;
				continue;
			}
			if ((tss = track_rec_str(&rec, "ts")) == NULL ||
			    track_line_time_parse(tss, &ts) < 0 || track_rec_str(&rec, "qid") == NULL)
				r->bad_lines++;
			else
				rc = fn(r, &rec, ts, len);
			track_line_clear(&rec);
			if (rc < 0) {
				fclose(f);
				return -1;
			}
		}
		fclose(f);
	}
	return 0;
}

/* Pass 1: collect matching queue IDs and the bounces they caused. */
static int pass_match(struct reader *r, const struct track_rec *rec, int64_t ts, size_t len)
{
	const char *qid = track_rec_str(rec, "qid"), *bq = track_rec_str(rec, "bounce_qid");

	(void)len;
	if (in_range(r->o, ts) && rec_matches(r->o, rec) && strset_add(&r->matched, qid) < 0)
		return -1;
	if (bq != NULL && *bq && strset_has(&r->matched, qid) && strset_add(&r->matched, bq) < 0)
		return -1;
	return 0;
}

/* Pass 2: keep every record of a matched message. */
static int pass_keep(struct reader *r, const struct track_rec *rec, int64_t ts, size_t len)
{
	const char *qid = track_rec_str(rec, "qid");
	struct kept *k;

	if (!strset_has(&r->matched, qid))
		return 0;
	if (r->kept_bytes + len > TRACK_KEEP_MAX) {
		r->truncated = true;
		return 0;
	}
	if (r->n_kept == r->cap_kept) {
		size_t cap = r->cap_kept ? r->cap_kept * 2 : 256;

		if ((k = realloc(r->kept, cap * sizeof *k)) == NULL)
			return -1;
		r->kept = k;
		r->cap_kept = cap;
	}
	k = &r->kept[r->n_kept];
	k->qid = strdup(qid);
	k->line = strndup(r->line, len);
	if (k->qid == NULL || k->line == NULL) {
		free(k->qid);
		free(k->line);
		return -1;
	}
	k->ts = ts;
	k->seq = r->n_kept++;
	r->kept_bytes += len;
	return 0;
}

/* ---- printing -------------------------------------------------------------- */

static int kept_by_qid(const void *a, const void *b)
{
	const struct kept *x = a, *y = b;
	int c = strcmp(x->qid, y->qid);

	if (c != 0)
		return c;
	if (x->ts != y->ts)
		return x->ts < y->ts ? -1 : 1;
	return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static int kept_by_story(const void *a, const void *b)
{
	const struct kept *x = a, *y = b;

	if (x->story_ts != y->story_ts)
		return x->story_ts < y->story_ts ? -1 : 1;
	return kept_by_qid(a, b);
}

/* Orders the kept records message by message, messages by first record. */
static void order_stories(struct reader *r)
{
	if (r->n_kept > 1)    /* qsort(NULL, 0, ...) is undefined */
		qsort(r->kept, r->n_kept, sizeof *r->kept, kept_by_qid);
	for (size_t i = 0, j; i < r->n_kept; i = j) {
		for (j = i; j < r->n_kept && strcmp(r->kept[j].qid, r->kept[i].qid) == 0; j++)
			r->kept[j].story_ts = r->kept[i].ts;
	}
	if (r->n_kept > 1)
		qsort(r->kept, r->n_kept, sizeof *r->kept, kept_by_story);
}

/* Prints s with control characters (C0, DEL, C1) shown as '?'. */
static void print_safe(FILE *out, const char *s)
{
	const unsigned char *u = (const unsigned char *)(s ? s : "");

	for (; *u; u++) {
		if (*u < 0x20 || *u == 0x7f)
			putc('?', out);
		else if (u[0] == 0xc2 && u[1] >= 0x80 && u[1] <= 0x9f) {
			putc('?', out);
			u++;
		} else
			putc(*u, out);
	}
}

static void print_kv(FILE *out, const char *before, const char *val)
{
	fputs(before, out);
	print_safe(out, val);
}

static void print_addr(FILE *out, const char *before, const char *addr)
{
	fputs(before, out);
	putc('<', out);
	print_safe(out, addr);
	putc('>', out);
}

static void print_rcpt_list(FILE *out, const struct track_rec *rec)
{
	const struct track_field *f = track_rec_get(rec, "rcpts");

	if (f == NULL || f->type != TRACK_V_ARRAY)
		return;
	for (size_t i = 0; i < f->n; i++)
		print_addr(out, i ? "," : "", rec->items[f->first + i]);
	if ((long long)f->n < track_rec_int(rec, "nrcpts", 0))
		fprintf(out, ",... (%lld in all)", track_rec_int(rec, "nrcpts", 0));
}

/* "2026-11-24T13:07:11.000Z" as "13:07:11", or with the date when it is
 * not the day of `ts`. */
static void print_next(FILE *out, const char *next, const char *ts)
{
	if (next == NULL || *next == '\0') {
		fputs(", next attempt unknown", out);
		return;
	}
	fputs(", next attempt ", out);
	if (strlen(next) >= 19 && ts != NULL && strncmp(next, ts, 10) == 0)
		fprintf(out, "%.8s", next + 11);
	else if (strlen(next) >= 19)
		fprintf(out, "%.10s %.8s", next, next + 11);
	else
		print_safe(out, next);
}

static void print_received(FILE *out, const struct track_rec *rec)
{
	const char *msgid;

	print_addr(out, "from ", track_rec_str(rec, "from"));
	print_kv(out, " via ", track_rec_str(rec, "client"));
	print_kv(out, " [helo ", track_rec_str(rec, "helo"));
	print_kv(out, "] tls ", track_rec_str(rec, "tls"));
	if (track_rec_str(rec, "auth") != NULL)
		print_kv(out, " auth ", track_rec_str(rec, "auth"));
	fprintf(out, " size %lld", track_rec_int(rec, "size", 0));
	msgid = track_rec_str(rec, "msgid");
	print_kv(out, " msgid ", msgid != NULL && *msgid ? msgid : "none");
	fprintf(out, " rcpts %lld", track_rec_int(rec, "nrcpts", 0));
}

/* Fields other than ts, qid, type as key=value (an unknown type). */
static void print_other(FILE *out, const struct track_rec *rec)
{
	for (size_t i = 0; i < rec->n; i++) {
		const struct track_field *f = &rec->f[i];

		if (!strcmp(f->key, "ts") || !strcmp(f->key, "qid") || !strcmp(f->key, "type"))
			continue;
		print_kv(out, " ", f->key);
		if (f->type == TRACK_V_INT)
			fprintf(out, "=%lld", f->i);
		else if (f->type == TRACK_V_STR)
			print_kv(out, "=", f->s);
		else
			fprintf(out, "=[%zu]", f->n);
	}
}

static void print_details(FILE *out, const char *type, const struct track_rec *rec)
{
	const char *rcpt = track_rec_str(rec, "rcpt");

	if (!strcmp(type, "received")) {
		print_received(out, rec);
	} else if (!strcmp(type, "queued")) {
		print_kv(out, "origin ", track_rec_str(rec, "origin"));
		print_addr(out, " from ", track_rec_str(rec, "from"));
		fprintf(out, " rcpts %lld", track_rec_int(rec, "nrcpts", 0));
	} else if (!strcmp(type, "routed")) {
		print_addr(out, "", rcpt);
		print_kv(out, " route ", track_rec_str(rec, "space"));
		print_kv(out, " via ", track_rec_str(rec, "nexthop"));
		fprintf(out, " cost %lld", track_rec_int(rec, "cost", 0));
	} else if (!strcmp(type, "attempt")) {
		print_rcpt_list(out, rec);
		print_kv(out, " via ", track_rec_str(rec, "nexthop"));
		print_kv(out, " (", track_rec_str(rec, "addr"));
		print_kv(out, ") ", track_rec_str(rec, "reply"));
	} else if (!strcmp(type, "delivered")) {
		print_addr(out, "", rcpt);
		print_kv(out, " via ", track_rec_str(rec, "nexthop"));
		print_kv(out, " ", track_rec_str(rec, "reply"));
	} else if (!strcmp(type, "deferred")) {
		print_addr(out, "", rcpt);
		print_kv(out, " ", track_rec_str(rec, "reason"));
		print_next(out, track_rec_str(rec, "next"), track_rec_str(rec, "ts"));
	} else if (!strcmp(type, "bounced") || !strcmp(type, "expired")) {
		print_addr(out, "", rcpt);
		print_kv(out, " ", track_rec_str(rec, "reason"));
		if (track_rec_str(rec, "bounce_qid") != NULL)
			print_kv(out, ", bounce ", track_rec_str(rec, "bounce_qid"));
	} else if (!strcmp(type, "held") || !strcmp(type, "released") ||
		   !strcmp(type, "deleted") || !strcmp(type, "retry")) {
		fprintf(out, "by uid %lld", track_rec_int(rec, "uid", -1));
	} else {
		print_other(out, rec);
	}
}

static void print_record(FILE *out, const struct kept *k)
{
	struct track_rec rec;
	char err[128];
	const char *ts, *type;

	if (track_line_parse(k->line, strlen(k->line), &rec, err, sizeof err) < 0)
		return;         /* parsed once already; cannot happen */
	ts = track_rec_str(&rec, "ts");
	type = track_rec_str(&rec, "type");
	fprintf(out, "%.10s %.8s  ", ts, ts + 11);
	print_safe(out, type ? type : "?");
	fprintf(out, "%*s", type && strlen(type) < 10 ? (int)(10 - strlen(type)) : 1, "");
	print_details(out, type ? type : "", &rec);
	putc('\n', out);
	track_line_clear(&rec);
}

static void print_stories(const struct reader *r, FILE *out)
{
	for (size_t i = 0; i < r->n_kept; i++) {
		const struct kept *k = &r->kept[i];
		bool first = i == 0 || strcmp(k->qid, r->kept[i - 1].qid) != 0;

		if (r->o->json) {
			fprintf(out, "%s\n", k->line);
			continue;
		}
		if (first) {
			if (i > 0)
				putc('\n', out);
			print_kv(out, "message ", k->qid);
			putc('\n', out);
		}
		print_record(out, k);
	}
}

/* ---- main ------------------------------------------------------------------- */

/* The tracking directory from the configuration: <spool's parent>/track
 * until conf carries track.dir. */
static char *dir_from_conf(const char *config)
{
	struct carrier_conf *conf = cli_load_conf("carrier track", config);
	char *dir = NULL;

	if (conf == NULL)
		return NULL;
	if (conf->track_path[0] == '\0')
		fprintf(stderr, "carrier track: tracking is off in %s ([track] dir = off)\n", conf->path);
	else
		dir = strdup(conf->track_path);
	conf_free(&conf);
	return dir;
}

static void reader_free(struct reader *r)
{
	for (size_t i = 0; i < r->n_files; i++)
		free(r->files[i].path);
	free(r->files);
	for (size_t i = 0; i < r->n_kept; i++) {
		free(r->kept[i].qid);
		free(r->kept[i].line);
	}
	free(r->kept);
	free(r->line);
	strset_clear(&r->matched);
}

int cli_track_main(int argc, char **argv)
{
	struct track_opts o;
	struct reader r;
	char *dir = NULL;
	int rc = parse_args(argc, argv, &o);

	if (rc != 0) {
		track_usage(rc > 0 ? stdout : stderr);
		return rc > 0 ? 0 : TRACK_EXIT_ERROR;
	}
	if (o.dir == NULL && (dir = dir_from_conf(o.config)) == NULL)
		return TRACK_EXIT_ERROR;
	memset(&r, 0, sizeof r);
	r.o = &o;
	rc = TRACK_EXIT_ERROR;
	if ((r.line = malloc(TRACK_LINE_MAX + 1)) == NULL ||
	    list_files(&r, o.dir ? o.dir : dir) < 0)
		goto out;
	if (for_each_rec(&r, pass_match) < 0)
		goto oom;
	r.bad_lines = 0;        /* counted again by pass 2 */
	if (r.matched.n > 0 && for_each_rec(&r, pass_keep) < 0)
		goto oom;
	order_stories(&r);
	print_stories(&r, stdout);
	if (r.bad_lines > 0)
		fprintf(stderr, "carrier track: skipped %lu unreadable lines\n", r.bad_lines);
	if (r.truncated)
		fprintf(stderr, "carrier track: too many matches; output cut at %u MiB of records\n",
			TRACK_KEEP_MAX >> 20);
	rc = r.n_kept > 0 ? TRACK_EXIT_MATCH : TRACK_EXIT_NONE;
	goto out;
oom:
	fprintf(stderr, "carrier track: out of memory\n");
out:
	reader_free(&r);
	free(dir);
	return rc;
}
