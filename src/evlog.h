/*
 * evlog: the event log.
 *
 * Owns the event catalogue (events.def: ID, name, severity, category,
 * message template, cause, remedy), the sinks (stderr in the foreground,
 * syslog, an optional JSON-lines file) and the per-category diagnostic
 * levels.  It knows nothing about SMTP or any other module.
 *
 * Threads: evlog_emit() may be called from any thread; sinks are serialised
 * by an internal mutex.  Configuration calls (evlog_set_*, evlog_open_json,
 * evlog_reopen) may also be called from any thread.
 */
#ifndef CARRIER_EVLOG_H
#define CARRIER_EVLOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum evlog_severity {
	EVLOG_DEBUG,
	EVLOG_INFO,
	EVLOG_NOTICE,
	EVLOG_WARNING,
	EVLOG_ERROR,
	EVLOG_FATAL,
};

/* Categories group events for per-category diagnostic levels. */
#define EVLOG_CATEGORIES(X) \
	X(CORE, "core")         \
	X(CONFIG, "config")     \
	X(NET, "net")           \
	X(SPOOL, "spool")       \
	X(COUNTERS, "counters") \
	X(CONTROL, "control")   \
	X(SMTP_IN, "smtp_in")   \
	X(SMTP_OUT, "smtp_out") \
	X(POLICY, "policy")     \
	X(DELIVERY, "delivery") \
	X(DNS, "dns")           \
	X(ROUTE, "route")       \
	X(SCHED, "sched")       \
	X(TLS, "tls")           \
	X(AUTH, "auth")

enum evlog_category {
#define X(sym, name) EVLOG_CAT_##sym,
	EVLOG_CATEGORIES(X)
#undef X
	EVLOG_N_CATEGORIES
};

/*
 * Diagnostic level of a category: which severities reach the sinks.
 *   none     fatal and error only (they can never be hidden)
 *   minimum  + warning and notice (the default)
 *   medium   + info
 *   maximum  + debug
 */
enum evlog_level {
	EVLOG_LEVEL_NONE,
	EVLOG_LEVEL_MINIMUM,
	EVLOG_LEVEL_MEDIUM,
	EVLOG_LEVEL_MAXIMUM,
};

enum evlog_id {
#define EVENT(num, sym, sev, cat, tmpl, cause, remedy) EV_##sym = num,
#include "events.def"
#undef EVENT
};

enum evlog_field_type { EVLOG_F_STR, EVLOG_F_INT };

/* One typed field of an event; names match the {placeholders} of the
 * event's template in events.def ({name} is a string, {name:int} an int). */
struct evlog_field {
	const char *name;
	enum evlog_field_type type;
	const char *s;
	long long i;
};

#define EVF_S(n, v) ((struct evlog_field){ .name = (n), .type = EVLOG_F_STR, .s = (v) })
#define EVF_I(n, v) ((struct evlog_field){ .name = (n), .type = EVLOG_F_INT, .i = (long long)(v) })

/* Catalogue entry, as compiled from events.def. */
struct evlog_def {
	int id;
	const char *name;
	enum evlog_severity severity;
	enum evlog_category category;
	const char *tmpl;
	const char *cause;
	const char *remedy;
};

struct evlog;

/* Creates a log with no sinks enabled and every category at minimum.
 * `ident` (e.g. "carrierd") is copied.  Returns NULL on allocation failure. */
struct evlog *evlog_new(const char *ident);
/* Closes sinks and frees; clears *logp. */
void evlog_free(struct evlog **logp);

void evlog_set_stderr(struct evlog *log, bool on);
void evlog_set_syslog(struct evlog *log, bool on);
/* Opens (append, create 0640) the JSON-lines sink at `path`; NULL or ""
 * closes it.  Returns 0, or -1 with a reason in err. */
int evlog_open_json(struct evlog *log, const char *path, char *err, size_t errlen);
/* Reopens the JSON file (log rotation, SIGUSR1).  Returns 0 or -1 + err. */
int evlog_reopen(struct evlog *log, char *err, size_t errlen);
void evlog_set_level(struct evlog *log, enum evlog_category cat, enum evlog_level lvl);
enum evlog_level evlog_get_level(const struct evlog *log, enum evlog_category cat);

/* Emits event `id` with `n` fields.  A NULL log drops the event (handy in
 * unit tests).  Never fails: a sink error is counted, not reported. */
void evlog_emit_(struct evlog *log, enum evlog_id id,
		 const struct evlog_field *fields, size_t n);

#define evlog_emit(log, id, ...)                                          \
	do {                                                              \
		const struct evlog_field evf_[] = { __VA_ARGS__ };        \
		evlog_emit_((log), (id), evf_, sizeof evf_ / sizeof evf_[0]); \
	} while (0)
#define evlog_emit0(log, id) evlog_emit_((log), (id), NULL, 0)

/* Number of events emitted with `id` since creation (tests, counters). */
unsigned long evlog_count(const struct evlog *log, enum evlog_id id);

/* Catalogue lookups; NULL when unknown. */
const struct evlog_def *evlog_def_by_id(int id);
const struct evlog_def *evlog_def_by_name(const char *name);
const struct evlog_def *evlog_catalogue(size_t *n_r);

const char *evlog_severity_name(enum evlog_severity sev);
const char *evlog_category_name(enum evlog_category cat);
const char *evlog_level_name(enum evlog_level lvl);
/* Parse names; return 0 or -1 when unknown. */
int evlog_category_parse(const char *s, enum evlog_category *cat_r);
int evlog_level_parse(const char *s, enum evlog_level *lvl_r);

/*
 * Renders `tmpl`, replacing {placeholders} by the fields.  Writes at most
 * `size` bytes including the NUL; returns the length it wanted (like
 * snprintf).  A placeholder with no field renders as "<name?>".
 */
size_t evlog_render(char *buf, size_t size, const char *tmpl,
		    const struct evlog_field *fields, size_t n);

/* Writes `s` as a JSON string body (no quotes), escaping quotes,
 * backslashes and every control character; returns bytes wanted. */
size_t evlog_json_escape(char *buf, size_t size, const char *s);

#endif
