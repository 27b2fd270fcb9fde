/*
 * cli_common: what every `carrier` subcommand needs: the configuration
 * loaded with its errors printed the way carrierd -n prints them.
 */
#include <stdio.h>
#include <stdlib.h>

#include "cli.h"
#include "evlog.h"

void cli_json_string(FILE *out, const char *s)
{
	size_t n = evlog_json_escape(NULL, 0, s);
	char *buf = malloc(n + 1);

	fputc('"', out);
	if (buf != NULL) {
		evlog_json_escape(buf, n + 1, s);
		fputs(buf, out);
		free(buf);
	}
	fputc('"', out);
}

void cli_print_conf_errors(const char *who, const struct conf_errors *errs)
{
	char line[1024];

	for (size_t i = 0; i < errs->n; i++) {
		conf_error_format(&errs->v[i], line, sizeof line);
		if (who != NULL)
			fprintf(stderr, "%s: %s\n", who, line);
		else
			fprintf(stderr, "%s\n", line);
	}
}

struct carrier_conf *cli_load_conf(const char *who, const char *path)
{
	struct conf_errors errs = { 0 };
	struct carrier_conf *conf = conf_load(path, &errs);

	if (conf != NULL)
		return conf;
	cli_print_conf_errors(who, &errs);
	fprintf(stderr, "%s: cannot load the configuration %s: fix the errors above\n", who,
		path ? path : "<embedded>");
	conf_errors_clear(&errs);
	return NULL;
}
