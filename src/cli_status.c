/*
 * cli_status: `carrier status`, is carrierd running and how.
 *
 *   carrier status [-c FILE] [--json]
 *
 * Loads the configuration (NULL = the embedded default) for the control
 * socket's path, asks the daemon `status` over it (control_request) and
 * prints pid, version, uptime, listeners and spool, then any other field
 * the daemon sent, as a table or as one JSON object.  The fields are
 * documented in control.h (CONTROL_STATUS_*).
 *
 * Exit status, like `systemctl status` and LSB: 0 running, 3 not running
 * (no socket, or nobody accepting on it), 1 any other error (permission,
 * a wedged or refusing daemon, a bad configuration), 2 bad command line.
 */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "conf.h"
#include "control.h"
#include "evlog.h"

#define STATUS_EXIT_RUNNING 0
#define STATUS_EXIT_ERROR 1
#define STATUS_EXIT_USAGE 2
#define STATUS_EXIT_NOT_RUNNING 3

struct status_opts {
	const char *config;             /* NULL: embedded default */
	int json;
};

static void status_usage(FILE *out)
{
	fprintf(out,
		"usage: carrier status [-c FILE] [--json]\n"
		"\n"
		"Asks carrierd over its control socket whether it runs, and prints its\n"
		"pid, version, uptime, listeners and spool.\n"
		"\n"
		"  -c FILE   configuration file (default: the embedded development one)\n"
		"  --json    print one JSON object\n"
		"\n"
		"Exit status: 0 running, 3 not running, 1 other errors, 2 bad usage.\n");
}

static int parse_args(int argc, char **argv, struct status_opts *o)
{
	memset(o, 0, sizeof *o);
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];

		if (!strcmp(a, "-c") || !strcmp(a, "--config")) {
			if (i + 1 >= argc) {
				fprintf(stderr, "carrier status: %s needs a value\n", a);
				return -1;
			}
			o->config = argv[++i];
		} else if (!strcmp(a, "--json")) {
			o->json = 1;
		} else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			return 1;
		} else {
			fprintf(stderr, "carrier status: unknown option '%s'\n", a);
			return -1;
		}
	}
	return 0;
}

/* ---- output helpers ---------------------------------------------------- */

/* Prints s with control characters shown as '?', so a value cannot drive
 * the terminal. */
static void print_safe(FILE *out, const char *s)
{
	for (; *s; s++)
		fputc(iscntrl((unsigned char)*s) ? '?' : *s, out);
}

static bool all_digits(const char *s)
{
	if (!*s || strlen(s) > 18)
		return false;
	for (; *s; s++)
		if (!isdigit((unsigned char)*s))
			return false;
	return true;
}

/* A JSON number when the value is a plain decimal, else a string. */
static void json_value(FILE *out, const char *s)
{
	if (all_digits(s) && (s[0] != '0' || !s[1]))
		fputs(s, out);
	else
		cli_json_string(out, s);
}

static void format_uptime(char *buf, size_t size, const char *secs)
{
	unsigned long long t, d, h, m;

	if (!all_digits(secs)) {
		snprintf(buf, size, "%s", secs);
		return;
	}
	t = strtoull(secs, NULL, 10);
	d = t / 86400;
	h = t % 86400 / 3600;
	m = t % 3600 / 60;
	if (d)
		snprintf(buf, size, "%llud %lluh %llum %llus", d, h, m, t % 60);
	else if (h)
		snprintf(buf, size, "%lluh %llum %llus", h, m, t % 60);
	else if (m)
		snprintf(buf, size, "%llum %llus", m, t % 60);
	else
		snprintf(buf, size, "%llus", t);
}

/* Keys printed in a fixed order before the rest. */
static const char *const known_keys[] = {
	CONTROL_STATUS_PID, CONTROL_STATUS_VERSION, CONTROL_STATUS_UPTIME,
	CONTROL_STATUS_STARTED, CONTROL_STATUS_LISTENER, CONTROL_STATUS_SPOOL,
	CONTROL_STATUS_CONFIG, CONTROL_STATUS_USER,
};

static bool is_known(const char *key)
{
	for (size_t i = 0; i < sizeof known_keys / sizeof known_keys[0]; i++)
		if (!strcmp(key, known_keys[i]))
			return true;
	return false;
}

static void row(FILE *out, const char *label, const char *value)
{
	fprintf(out, "  %-10s ", label);
	print_safe(out, value);
	fputc('\n', out);
}

static void print_table(FILE *out, const struct control_response *resp,
			const char *socket_path)
{
	const char *v;
	char buf[128];

	fprintf(out, "carrierd: running\n");
	if ((v = control_response_get(resp, CONTROL_STATUS_PID)))
		row(out, "pid:", v);
	if ((v = control_response_get(resp, CONTROL_STATUS_VERSION)))
		row(out, "version:", v);
	if ((v = control_response_get(resp, CONTROL_STATUS_UPTIME))) {
		const char *started = control_response_get(resp, CONTROL_STATUS_STARTED);

		format_uptime(buf, sizeof buf, v);
		if (started && all_digits(started)) {
			time_t t = (time_t)strtoll(started, NULL, 10);
			struct tm tm;
			size_t n = strlen(buf);

			if (gmtime_r(&t, &tm))
				strftime(buf + n, sizeof buf - n,
					 " (since %Y-%m-%d %H:%M:%S UTC)", &tm);
		}
		row(out, "uptime:", buf);
	}
	fprintf(out, "  %-10s ", "listeners:");
	if (!control_response_count(resp, CONTROL_STATUS_LISTENER))
		fputs("none", out);
	for (size_t i = 0, k = 0; i < resp->n_fields; i++) {
		if (strcmp(resp->fields[i].key, CONTROL_STATUS_LISTENER))
			continue;
		fputs(k++ ? ", " : "", out);
		print_safe(out, resp->fields[i].value);
	}
	fputc('\n', out);
	if ((v = control_response_get(resp, CONTROL_STATUS_SPOOL)))
		row(out, "spool:", v);
	if ((v = control_response_get(resp, CONTROL_STATUS_CONFIG)))
		row(out, "config:", v);
	if ((v = control_response_get(resp, CONTROL_STATUS_USER)))
		row(out, "user:", v);
	row(out, "socket:", socket_path);
	for (size_t i = 0; i < resp->n_fields; i++) {
		if (is_known(resp->fields[i].key))
			continue;
		snprintf(buf, sizeof buf, "%s:", resp->fields[i].key);
		row(out, buf, resp->fields[i].value);
	}
}

static void print_json(FILE *out, const struct control_response *resp,
		       const char *socket_path)
{
	const char *v;

	fputs("{\"running\":true", out);
	for (size_t i = 0; i < sizeof known_keys / sizeof known_keys[0]; i++) {
		const char *k = known_keys[i];

		if (!strcmp(k, CONTROL_STATUS_LISTENER) || !(v = control_response_get(resp, k)))
			continue;
		fprintf(out, ",\"%s\":", k);
		if (!strcmp(k, CONTROL_STATUS_PID) || !strcmp(k, CONTROL_STATUS_UPTIME) ||
		    !strcmp(k, CONTROL_STATUS_STARTED))
			json_value(out, v);
		else
			cli_json_string(out, v);
	}
	fputs(",\"listeners\":[", out);
	for (size_t i = 0, k = 0; i < resp->n_fields; i++) {
		if (strcmp(resp->fields[i].key, CONTROL_STATUS_LISTENER))
			continue;
		fputs(k++ ? "," : "", out);
		cli_json_string(out, resp->fields[i].value);
	}
	fputs("],\"socket\":", out);
	cli_json_string(out, socket_path);
	/* Other fields, first occurrence of each key (JSON keys are unique). */
	for (size_t i = 0; i < resp->n_fields; i++) {
		const char *k = resp->fields[i].key;

		if (is_known(k) || !strcmp(k, "running") || !strcmp(k, "listeners") ||
		    !strcmp(k, "socket") || control_response_get(resp, k) != resp->fields[i].value)
			continue;
		fprintf(out, ",\"%s\":", k);     /* keys are [a-z0-9_.-] */
		cli_json_string(out, resp->fields[i].value);
	}
	fputs("}\n", out);
}

static void print_not_running(FILE *out, int json, const char *why,
			      const char *socket_path)
{
	if (json) {
		fputs("{\"running\":false,\"reason\":", out);
		cli_json_string(out, why);
		fputs(",\"socket\":", out);
		cli_json_string(out, socket_path);
		fputs("}\n", out);
		return;
	}
	/* `why` already says "carrierd is not running (...)". */
	print_safe(out, why);
	fputc('\n', out);
}

/* Reports an error: a sentence on stderr and, with --json, an object on
 * stdout so scripts always get one. */
static int status_error(int json, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static int status_error(int json, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	fprintf(stderr, "carrier status: %s\n", msg);
	if (json) {
		fputs("{\"running\":null,\"error\":", stdout);
		cli_json_string(stdout, msg);
		fputs("}\n", stdout);
	}
	return STATUS_EXIT_ERROR;
}

static struct carrier_conf *load_conf(const char *path, int json)
{
	struct conf_errors errs = { 0 };
	struct carrier_conf *conf = conf_load(path, &errs);

	if (conf)
		return conf;
	cli_print_conf_errors("carrier status", &errs);
	status_error(json, "cannot load the configuration %s: fix the errors above",
		     path ? path : "<embedded>");
	conf_errors_clear(&errs);
	return NULL;
}

int cli_status_main(int argc, char **argv)
{
	struct control_response resp = { 0 };
	struct carrier_conf *conf;
	struct status_opts o;
	char err[512] = "";
	int rc, r = parse_args(argc, argv, &o);

	if (r) {
		status_usage(r > 0 ? stdout : stderr);
		return r > 0 ? 0 : STATUS_EXIT_USAGE;
	}
	conf = load_conf(o.config, o.json);
	if (!conf)
		return STATUS_EXIT_ERROR;
	r = control_request(conf->control_socket, "status", &resp, err, sizeof err);
	if (r == CONTROL_CLIENT_NOT_RUNNING) {
		print_not_running(stdout, o.json, err, conf->control_socket);
		rc = STATUS_EXIT_NOT_RUNNING;
	} else if (r != CONTROL_CLIENT_OK) {
		rc = status_error(o.json, "%s", err);
	} else if (resp.code != CONTROL_CODE_OK) {
		rc = status_error(o.json, "carrierd at %s refused `status` with %d: %s",
				  conf->control_socket, resp.code, resp.text);
	} else {
		if (o.json)
			print_json(stdout, &resp, conf->control_socket);
		else
			print_table(stdout, &resp, conf->control_socket);
		rc = STATUS_EXIT_RUNNING;
	}
	fflush(stdout);
	control_response_clear(&resp);
	conf_free(&conf);
	return rc;
}
