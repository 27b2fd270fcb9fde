/*
 * evlog: the event catalogue and its sinks.
 *
 * The catalogue is compiled from events.def.  Sinks: stderr (foreground),
 * syslog (facility mail; journald picks it up) and a JSON-lines file.  Any
 * thread may emit; one mutex serialises the sinks so lines never interleave.
 * Field values are untrusted (a HELO, an address): the JSON sink escapes
 * every control character and the text sinks replace them, so no value can
 * split a line or forge another event.
 */
#include "evlog.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#define EVLOG_LINE_MAX 4096

static const struct evlog_def evlog_defs[] = {
#define EVENT(num, sym, sev, cat, tmpl, cause, remedy) \
	{ num, #sym, EVLOG_##sev, EVLOG_CAT_##cat, tmpl, cause, remedy },
#include "events.def"
#undef EVENT
};

#define EVLOG_N_DEFS (sizeof evlog_defs / sizeof evlog_defs[0])

struct evlog {
	pthread_mutex_t mu;
	char ident[32];
	bool to_stderr;
	bool to_syslog;
	int json_fd;
	char *json_path;
	/* Levels are read without the mutex on the hot path; a torn read of
	 * an enum-sized int cannot happen on the platforms we build for. */
	enum evlog_level levels[EVLOG_N_CATEGORIES];
	unsigned long counts[EVLOG_N_DEFS];
};

static const char *const evlog_cat_names[] = {
#define X(sym, name) name,
	EVLOG_CATEGORIES(X)
#undef X
};

static const char *const evlog_sev_names[] = {
	"debug", "info", "notice", "warning", "error", "fatal",
};

static const char *const evlog_level_names[] = {
	"none", "minimum", "medium", "maximum",
};

struct evlog *evlog_new(const char *ident)
{
	struct evlog *log = calloc(1, sizeof *log);

	if (log == NULL)
		return NULL;
	pthread_mutex_init(&log->mu, NULL);
	snprintf(log->ident, sizeof log->ident, "%s", ident ? ident : "carrier");
	log->json_fd = -1;
	for (size_t i = 0; i < EVLOG_N_CATEGORIES; i++)
		log->levels[i] = EVLOG_LEVEL_MINIMUM;
	return log;
}

void evlog_free(struct evlog **logp)
{
	struct evlog *log = *logp;

	if (log == NULL)
		return;
	if (log->json_fd >= 0)
		close(log->json_fd);
	if (log->to_syslog)
		closelog();
	free(log->json_path);
	pthread_mutex_destroy(&log->mu);
	free(log);
	*logp = NULL;
}

void evlog_set_stderr(struct evlog *log, bool on)
{
	pthread_mutex_lock(&log->mu);
	log->to_stderr = on;
	pthread_mutex_unlock(&log->mu);
}

void evlog_set_syslog(struct evlog *log, bool on)
{
	pthread_mutex_lock(&log->mu);
	if (on && !log->to_syslog)
		openlog(log->ident, LOG_PID | LOG_NDELAY, LOG_MAIL);
	else if (!on && log->to_syslog)
		closelog();
	log->to_syslog = on;
	pthread_mutex_unlock(&log->mu);
}

static int evlog_open_fd(const char *path, char *err, size_t errlen)
{
	int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);

	if (fd < 0)
		snprintf(err, errlen, "open %s: %s", path, strerror(errno));
	return fd;
}

int evlog_open_json(struct evlog *log, const char *path, char *err, size_t errlen)
{
	int fd = -1;
	char *copy = NULL;

	if (path != NULL && *path != '\0') {
		fd = evlog_open_fd(path, err, errlen);
		if (fd < 0)
			return -1;
		copy = strdup(path);
		if (copy == NULL) {
			close(fd);
			snprintf(err, errlen, "out of memory");
			return -1;
		}
	}
	pthread_mutex_lock(&log->mu);
	if (log->json_fd >= 0)
		close(log->json_fd);
	free(log->json_path);
	log->json_fd = fd;
	log->json_path = copy;
	pthread_mutex_unlock(&log->mu);
	return 0;
}

int evlog_reopen(struct evlog *log, char *err, size_t errlen)
{
	int rc = 0;

	pthread_mutex_lock(&log->mu);
	if (log->json_path != NULL) {
		int fd = evlog_open_fd(log->json_path, err, errlen);

		if (fd < 0) {
			rc = -1;    /* keep writing to the old file */
		} else {
			close(log->json_fd);
			log->json_fd = fd;
		}
	}
	pthread_mutex_unlock(&log->mu);
	return rc;
}

void evlog_set_level(struct evlog *log, enum evlog_category cat, enum evlog_level lvl)
{
	if ((unsigned)cat < EVLOG_N_CATEGORIES)
		__atomic_store_n(&log->levels[cat], lvl, __ATOMIC_RELAXED);
}

enum evlog_level evlog_get_level(const struct evlog *log, enum evlog_category cat)
{
	if ((unsigned)cat >= EVLOG_N_CATEGORIES)
		return EVLOG_LEVEL_MINIMUM;
	return __atomic_load_n(&log->levels[cat], __ATOMIC_RELAXED);
}

/* ---- catalogue ---------------------------------------------------------- */

const struct evlog_def *evlog_catalogue(size_t *n_r)
{
	*n_r = EVLOG_N_DEFS;
	return evlog_defs;
}

static size_t evlog_index(int id)
{
	size_t lo = 0, hi = EVLOG_N_DEFS;

	/* events.def is kept in ascending ID order (scripts/events.py checks). */
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (evlog_defs[mid].id == id)
			return mid;
		if (evlog_defs[mid].id < id)
			lo = mid + 1;
		else
			hi = mid;
	}
	return EVLOG_N_DEFS;
}

const struct evlog_def *evlog_def_by_id(int id)
{
	size_t i = evlog_index(id);

	return i < EVLOG_N_DEFS ? &evlog_defs[i] : NULL;
}

const struct evlog_def *evlog_def_by_name(const char *name)
{
	for (size_t i = 0; i < EVLOG_N_DEFS; i++)
		if (strcasecmp(evlog_defs[i].name, name) == 0)
			return &evlog_defs[i];
	return NULL;
}

const char *evlog_severity_name(enum evlog_severity sev)
{
	return (unsigned)sev <= EVLOG_FATAL ? evlog_sev_names[sev] : "?";
}

const char *evlog_category_name(enum evlog_category cat)
{
	return (unsigned)cat < EVLOG_N_CATEGORIES ? evlog_cat_names[cat] : "?";
}

const char *evlog_level_name(enum evlog_level lvl)
{
	return (unsigned)lvl <= EVLOG_LEVEL_MAXIMUM ? evlog_level_names[lvl] : "?";
}

int evlog_category_parse(const char *s, enum evlog_category *cat_r)
{
	for (size_t i = 0; i < EVLOG_N_CATEGORIES; i++) {
		if (strcasecmp(s, evlog_cat_names[i]) == 0) {
			*cat_r = (enum evlog_category)i;
			return 0;
		}
	}
	return -1;
}

int evlog_level_parse(const char *s, enum evlog_level *lvl_r)
{
	for (size_t i = 0; i <= EVLOG_LEVEL_MAXIMUM; i++) {
		if (strcasecmp(s, evlog_level_names[i]) == 0) {
			*lvl_r = (enum evlog_level)i;
			return 0;
		}
	}
	return -1;
}

unsigned long evlog_count(const struct evlog *log, enum evlog_id id)
{
	size_t i = evlog_index((int)id);

	if (log == NULL || i >= EVLOG_N_DEFS)
		return 0;
	return __atomic_load_n(&log->counts[i], __ATOMIC_RELAXED);
}

/* ---- rendering ----------------------------------------------------------- */

struct evlog_out {
	char *buf;
	size_t size;
	size_t len;         /* wanted length, may exceed size */
};

static void out_byte(struct evlog_out *o, char c)
{
	if (o->len + 1 < o->size)
		o->buf[o->len] = c;
	o->len++;
}

static void out_str(struct evlog_out *o, const char *s)
{
	while (*s)
		out_byte(o, *s++);
}

/* Text sinks: control characters become '?', so a value cannot start a
 * new log line. */
static void out_value(struct evlog_out *o, const char *s)
{
	for (; *s; s++)
		out_byte(o, ((unsigned char)*s < 0x20 || *s == 0x7f) ? '?' : *s);
}

static void out_finish(struct evlog_out *o)
{
	if (o->size > 0)
		o->buf[o->len < o->size ? o->len : o->size - 1] = '\0';
}

static const struct evlog_field *field_find(const struct evlog_field *f, size_t n,
					    const char *name, size_t namelen)
{
	for (size_t i = 0; i < n; i++)
		if (strlen(f[i].name) == namelen && memcmp(f[i].name, name, namelen) == 0)
			return &f[i];
	return NULL;
}

static void out_field(struct evlog_out *o, const struct evlog_field *f)
{
	char num[24];

	if (f->type == EVLOG_F_INT) {
		snprintf(num, sizeof num, "%lld", f->i);
		out_str(o, num);
	} else {
		out_value(o, f->s ? f->s : "(null)");
	}
}

size_t evlog_render(char *buf, size_t size, const char *tmpl,
		    const struct evlog_field *fields, size_t n)
{
	struct evlog_out o = { buf, size, 0 };

	for (const char *p = tmpl; *p; p++) {
		const char *end = (*p == '{') ? strchr(p, '}') : NULL;

		if (end == NULL) {
			out_byte(&o, *p);
			continue;
		}
		const char *colon = memchr(p + 1, ':', (size_t)(end - p - 1));
		size_t namelen = (size_t)((colon ? colon : end) - (p + 1));
		const struct evlog_field *f = field_find(fields, n, p + 1, namelen);

		if (f != NULL) {
			out_field(&o, f);
		} else {
			out_byte(&o, '<');
			for (size_t i = 0; i < namelen; i++)
				out_byte(&o, p[1 + i]);
			out_str(&o, "?>");
		}
		p = end;
	}
	out_finish(&o);
	return o.len;
}

static void json_escaped(struct evlog_out *o, const char *s)
{
	static const char hex[] = "0123456789abcdef";

	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\') {
			out_byte(o, '\\');
			out_byte(o, (char)c);
		} else if (c < 0x20 || c == 0x7f) {
			out_str(o, "\\u00");
			out_byte(o, hex[c >> 4]);
			out_byte(o, hex[c & 15]);
		} else {
			out_byte(o, (char)c);
		}
	}
}

size_t evlog_json_escape(char *buf, size_t size, const char *s)
{
	struct evlog_out o = { buf, size, 0 };

	json_escaped(&o, s);
	out_finish(&o);
	return o.len;
}

/* ---- emitting ------------------------------------------------------------ */

static bool evlog_wanted(const struct evlog *log, const struct evlog_def *d)
{
	enum evlog_level lvl = evlog_get_level(log, d->category);

	switch (d->severity) {
	case EVLOG_FATAL:
	case EVLOG_ERROR:
		return true;
	case EVLOG_WARNING:
	case EVLOG_NOTICE:
		return lvl >= EVLOG_LEVEL_MINIMUM;
	case EVLOG_INFO:
		return lvl >= EVLOG_LEVEL_MEDIUM;
	case EVLOG_DEBUG:
		return lvl >= EVLOG_LEVEL_MAXIMUM;
	}
	return true;
}

static void iso_time(char *buf, size_t size)
{
	struct timespec ts;
	struct tm tm;

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	snprintf(buf, size, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ",
		 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
		 tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000);
}

static void json_kv(struct evlog_out *o, const char *key, const char *val, bool comma)
{
	if (comma)
		out_byte(o, ',');
	out_byte(o, '"');
	out_str(o, key);
	out_str(o, "\":\"");
	json_escaped(o, val);
	out_byte(o, '"');
}

static size_t evlog_format_json(char *buf, size_t size, const char *ts,
				const struct evlog_def *d, const char *msg,
				const char *cause, const char *remedy,
				const struct evlog_field *f, size_t n)
{
	struct evlog_out o = { buf, size, 0 };
	char num[24];

	out_byte(&o, '{');
	json_kv(&o, "ts", ts, false);
	snprintf(num, sizeof num, "%d", d->id);
	out_str(&o, ",\"id\":");
	out_str(&o, num);
	json_kv(&o, "event", d->name, true);
	json_kv(&o, "severity", evlog_severity_name(d->severity), true);
	json_kv(&o, "category", evlog_category_name(d->category), true);
	json_kv(&o, "msg", msg, true);
	out_str(&o, ",\"fields\":{");
	for (size_t i = 0; i < n; i++) {
		if (f[i].type == EVLOG_F_INT) {
			snprintf(num, sizeof num, "%lld", f[i].i);
			if (i > 0)
				out_byte(&o, ',');
			out_byte(&o, '"');
			json_escaped(&o, f[i].name);
			out_str(&o, "\":");
			out_str(&o, num);
		} else {
			json_kv(&o, f[i].name, f[i].s ? f[i].s : "", i > 0);
		}
	}
	out_byte(&o, '}');
	if (*cause)
		json_kv(&o, "cause", cause, true);
	if (*remedy)
		json_kv(&o, "remedy", remedy, true);
	out_str(&o, "}\n");
	out_finish(&o);
	if (o.len >= size && size > 2) {
		/* Truncated: still one valid-looking line ending in newline. */
		buf[size - 2] = '\n';
		return size - 1;
	}
	return o.len;
}

static int severity_syslog(enum evlog_severity sev)
{
	static const int map[] = { LOG_DEBUG, LOG_INFO, LOG_NOTICE,
				   LOG_WARNING, LOG_ERR, LOG_CRIT };

	return map[sev];
}

static void write_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t w = write(fd, buf, len);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return;     /* a log sink never takes the daemon down */
		buf += w;
		len -= (size_t)w;
	}
}

static void evlog_write_text(struct evlog *log, const char *ts, const struct evlog_def *d,
			     const char *msg, const char *cause, const char *remedy)
{
	char line[EVLOG_LINE_MAX];
	int len;
	bool explain = d->severity >= EVLOG_WARNING;

	len = snprintf(line, sizeof line, "%s %s[%d]: %s %d %s: %s\n", ts, log->ident,
		       (int)getpid(), evlog_severity_name(d->severity), d->id, d->name, msg);
	if (len > 0)
		write_all(STDERR_FILENO, line, (size_t)len < sizeof line ? (size_t)len : sizeof line - 1);
	if (explain && *cause) {
		len = snprintf(line, sizeof line, "    cause: %s\n", cause);
		write_all(STDERR_FILENO, line, (size_t)len < sizeof line ? (size_t)len : sizeof line - 1);
	}
	if (explain && *remedy) {
		len = snprintf(line, sizeof line, "    remedy: %s\n", remedy);
		write_all(STDERR_FILENO, line, (size_t)len < sizeof line ? (size_t)len : sizeof line - 1);
	}
}

void evlog_emit_(struct evlog *log, enum evlog_id id,
		 const struct evlog_field *fields, size_t n)
{
	size_t idx = evlog_index((int)id);
	const struct evlog_def *d;
	char ts[64], msg[1024], cause[1024], remedy[1024], json[EVLOG_LINE_MAX];

	if (log == NULL || idx >= EVLOG_N_DEFS)
		return;
	d = &evlog_defs[idx];
	__atomic_add_fetch(&log->counts[idx], 1, __ATOMIC_RELAXED);
	if (!evlog_wanted(log, d))
		return;
	iso_time(ts, sizeof ts);
	evlog_render(msg, sizeof msg, d->tmpl, fields, n);
	evlog_render(cause, sizeof cause, d->cause, fields, n);
	evlog_render(remedy, sizeof remedy, d->remedy, fields, n);

	pthread_mutex_lock(&log->mu);
	if (log->to_stderr)
		evlog_write_text(log, ts, d, msg, cause, remedy);
	if (log->to_syslog) {
		if (d->severity >= EVLOG_ERROR && *remedy)
			syslog(severity_syslog(d->severity), "%s %d %s: %s (remedy: %s)",
			       evlog_severity_name(d->severity), d->id, d->name, msg, remedy);
		else
			syslog(severity_syslog(d->severity), "%s %d %s: %s",
			       evlog_severity_name(d->severity), d->id, d->name, msg);
	}
	if (log->json_fd >= 0) {
		size_t len = evlog_format_json(json, sizeof json, ts, d, msg, cause,
					       remedy, fields, n);
		write_all(log->json_fd, json, len < sizeof json ? len : sizeof json - 1);
	}
	pthread_mutex_unlock(&log->mu);
}
