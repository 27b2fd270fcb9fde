/*
 * cli_doctor: `carrier doctor`, the startup checks without starting
 * anything, and the network baseline.
 *
 *   carrier doctor [-c FILE] [--save-baseline] [--baseline FILE]
 *                  [--resolv-conf FILE] [--json]
 *
 * Loads the configuration (each error printed as FILE:LINE: ...), runs
 * diag_run_startup() with DIAG_F_BIND_TEST (listeners are bound, then
 * closed; nothing is created or removed), then either saves the network
 * baseline (--save-baseline) or reports drift from it.  One line per check,
 * "ok|WARN|FAIL  check: what was observed", and under every warning or
 * failure its event, cause and remedy from the catalogue.
 *
 * Exit status: 0 when no check failed (warnings, drift included, do not
 * fail); otherwise the DIAG_EXIT_* status of the first failed check, the
 * same status carrierd would exit with (10 for the configuration);
 * DIAG_EXIT_USAGE (2) for a bad command line.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "conf.h"
#include "counters.h"
#include "diag.h"
#include "diag_baseline.h"
#include "evlog.h"

struct doctor_opts {
	const char *config;             /* NULL: embedded default */
	const char *baseline;           /* NULL: <spool>/network.baseline */
	const char *resolv_conf;        /* NULL: /etc/resolv.conf */
	int save_baseline;
	int json;
};

static void doctor_usage(FILE *out)
{
	fprintf(out,
		"usage: carrier doctor [-c FILE] [--save-baseline] [--baseline FILE]\n"
		"                      [--resolv-conf FILE] [--json]\n"
		"\n"
		"Runs carrierd's startup checks without starting anything and reports\n"
		"drift of the network configuration from the saved baseline.\n"
		"\n"
		"  -c FILE             configuration file (default: the embedded development one)\n"
		"  --save-baseline     record interfaces, addresses, routes, resolvers, host name\n"
		"  --baseline FILE     baseline file (default: SPOOL/" DIAG_BASELINE_FILE ")\n"
		"  --resolv-conf FILE  read resolvers from FILE (default: " DIAG_RESOLV_CONF ")\n"
		"  --json              print the report as JSON\n"
		"\n"
		"Exit status: 0 when no check failed (warnings allowed); otherwise the\n"
		"status carrierd would exit with for the first failed check (10 config,\n"
		"11 network stack, 12 loopback, 13 address, 14 listener, 15 privilege,\n"
		"17 spool, 18 control socket, 19 already running, 30 baseline).\n");
}

static int parse_args(int argc, char **argv, struct doctor_opts *o)
{
	memset(o, 0, sizeof *o);
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char **val = NULL;
		if (!strcmp(a, "-c") || !strcmp(a, "--config"))
			val = &o->config;
		else if (!strcmp(a, "--baseline"))
			val = &o->baseline;
		else if (!strcmp(a, "--resolv-conf"))
			val = &o->resolv_conf;
		else if (!strcmp(a, "--save-baseline"))
			o->save_baseline = 1;
		else if (!strcmp(a, "--json"))
			o->json = 1;
		else if (!strcmp(a, "-h") || !strcmp(a, "--help"))
			return 1;
		else {
			fprintf(stderr, "carrier doctor: unknown option '%s'\n", a);
			return -1;
		}
		if (val) {
			if (i + 1 >= argc) {
				fprintf(stderr, "carrier doctor: %s needs a value\n", a);
				return -1;
			}
			*val = argv[++i];
		}
	}
	return 0;
}

/* Puts each configuration error in the report as a failed "config" line. */
static void report_conf_errors(const char *config, const struct conf_errors *errs,
			       struct diag_report *rep)
{
	const char *file = config ? config : "<embedded>";
	for (size_t i = 0; i < errs->n; i++) {
		const struct conf_error *e = &errs->v[i];
		char line[1024];
		conf_error_format(e, line, sizeof line);
		const struct evlog_field f[] = {
			EVF_S("file", e->file ? e->file : file), EVF_I("line", e->line),
			EVF_S("key", e->key ? e->key : ""), EVF_S("problem", e->problem ? e->problem : ""),
		};
		diag_report_event(rep, NULL, "config", DIAG_FAIL, DIAG_EXIT_CONFIG,
				  EV_CONFIG_ERROR, f, sizeof f / sizeof f[0]);
		if (rep->n)
			snprintf(rep->v[rep->n - 1].what, sizeof rep->v[rep->n - 1].what, "%s", line);
	}
	if (errs->n == 0)
		diag_report_add(rep, "config", DIAG_FAIL, DIAG_EXIT_CONFIG,
				"%s cannot be loaded", file);
}

static const char *status_label(enum diag_status st)
{
	return st == DIAG_OK ? "ok" : st == DIAG_WARN ? "WARN" : "FAIL";
}

static void print_text(const struct diag_report *rep, int rc)
{
	for (size_t i = 0; i < rep->n; i++) {
		const struct diag_result *r = &rep->v[i];
		printf("%-4s  %s: %s\n", status_label(r->status), r->check, r->what);
		if (r->status == DIAG_OK)
			continue;
		const struct evlog_def *d = r->event ? evlog_def_by_id(r->event) : NULL;
		if (d)
			printf("      event: %d %s\n", d->id, d->name);
		/* Several drifts share one cause and remedy: say them once. */
		const struct diag_result *p = i ? &rep->v[i - 1] : NULL;
		if (p && p->status != DIAG_OK && p->event == r->event &&
		    !strcmp(p->cause, r->cause) && !strcmp(p->remedy, r->remedy))
			continue;
		if (r->cause[0])
			printf("      cause: %s\n", r->cause);
		if (r->remedy[0])
			printf("      remedy: %s\n", r->remedy);
	}
	size_t nf = diag_report_count(rep, DIAG_FAIL), nw = diag_report_count(rep, DIAG_WARN);
	size_t nok = diag_report_count(rep, DIAG_OK);
	if (rc)
		printf("\n%zu failed, %zu warnings, %zu ok: carrierd would not start (exit status %d)\n",
		       nf, nw, nok, rc);
	else
		printf("\n%zu failed, %zu warnings, %zu ok: carrierd can start\n", nf, nw, nok);
}

static void json_str(const char *key, const char *s, const char *sep)
{
	printf("\"%s\":", key);
	cli_json_string(stdout, s);
	fputs(sep, stdout);
}

static void print_json(const struct diag_report *rep, int rc)
{
	printf("{\"exit\":%d,\"checks\":[", rc);
	for (size_t i = 0; i < rep->n; i++) {
		const struct diag_result *r = &rep->v[i];
		const struct evlog_def *d = r->event ? evlog_def_by_id(r->event) : NULL;
		printf("%s{", i ? "," : "");
		json_str("check", r->check, ",");
		json_str("status", r->status == DIAG_OK ? "ok" : r->status == DIAG_WARN ? "warn" : "fail", ",");
		printf("\"exit\":%d,\"event\":%d,", r->exit_status, r->event);
		json_str("name", d ? d->name : "", ",");
		json_str("message", r->what, ",");
		json_str("cause", r->cause, ",");
		json_str("remedy", r->remedy, "}");
	}
	printf("]}\n");
}

/* Shared memory for counters: never fatal, the daemon falls back to
 * private counters, but an admin wants to know why `carrier stats` is slow. */
static void doctor_check_counters(const struct carrier_conf *conf, struct diag_report *rep)
{
	char err[256];

	if (counters_probe(conf->shm_name, err, sizeof err) == 0) {
		diag_report_add(rep, "counters", DIAG_OK, 0, "shared memory %s can be created", conf->shm_name);
		return;
	}
	diag_report_event(rep, NULL, "counters", DIAG_WARN, 0, EV_COUNTERS_PRIVATE,
			  (const struct evlog_field[]){ EVF_S("name", conf->shm_name), EVF_S("reason", err) }, 2);
}

int cli_doctor_main(int argc, char **argv)
{
	struct doctor_opts o;
	int a = parse_args(argc, argv, &o);
	if (a != 0) {
		doctor_usage(a > 0 ? stdout : stderr);
		return a > 0 ? 0 : DIAG_EXIT_USAGE;
	}
	struct diag_report rep = { 0 };
	struct conf_errors errs = { 0 };
	struct carrier_conf *conf = conf_load(o.config, &errs);
	if (!conf) {
		/* Without a configuration only the host-wide checks can run. */
		report_conf_errors(o.config, &errs, &rep);
		diag_check_netstack(NULL, NULL, &rep);
		diag_check_loopback(NULL, &rep);
		diag_check_hostname(NULL, NULL, &rep);
	} else {
		diag_report_add(&rep, "config", DIAG_OK, 0, "%s loaded",
				conf->path ? conf->path : "<embedded>");
		diag_run_startup(conf, DIAG_F_BIND_TEST, NULL, &rep);
		doctor_check_counters(conf, &rep);
	}
	conf_errors_clear(&errs);

	char path[4096];
	if (o.baseline)
		snprintf(path, sizeof path, "%s", o.baseline);
	else if (conf && conf->spool_path)
		snprintf(path, sizeof path, "%s/%s", conf->spool_path, DIAG_BASELINE_FILE);
	else
		path[0] = '\0';
	if (path[0] && o.save_baseline) {
		/* The default baseline lives in the spool: when the spool does
		 * not exist yet, create it as carrierd would (0700, owned by
		 * server.user), not as a root-owned directory that the spool
		 * check would then refuse. */
		struct stat st;
		if (!o.baseline && conf && stat(conf->spool_path, &st) < 0 && errno == ENOENT)
			diag_check_spool(conf, DIAG_F_MODIFY, NULL, &rep);
		diag_save_baseline(path, o.resolv_conf, NULL, &rep);
	}
	else if (path[0])
		diag_check_drift(path, o.resolv_conf, NULL, &rep);
	else if (o.save_baseline)
		diag_report_add(&rep, "baseline", DIAG_FAIL, DIAG_EXIT_BASELINE,
				"no baseline path: the configuration did not load; give --baseline FILE");

	int rc = diag_report_exit(&rep);
	if (o.json)
		print_json(&rep, rc);
	else
		print_text(&rep, rc);
	diag_report_clear(&rep);
	conf_free(&conf);
	return rc;
}
