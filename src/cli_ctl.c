/*
 * cli_ctl: small `carrier` subcommands that send one control request and
 * print the answer: `carrier log-level [CATEGORY LEVEL]`, `carrier reload`.
 */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "conf.h"
#include "control.h"

/* Sends `request` and prints the fields; exit 0 on 200, 3 when carrierd
 * is not running, 1 otherwise. */
static int ctl_run(const char *conf_path, const char *request, const char *what)
{
	struct carrier_conf *c = cli_load_conf("carrier", conf_path);
	struct control_response resp;
	char err[512];
	int rc;

	if (c == NULL)
		return 1;
	rc = control_request(c->control_socket, request, &resp, err, sizeof err);
	conf_free(&c);
	if (rc != CONTROL_CLIENT_OK) {
		fprintf(stderr, "carrier %s: %s\n", what, err);
		control_response_clear(&resp);
		return rc == CONTROL_CLIENT_NOT_RUNNING ? 3 : 1;
	}
	for (size_t i = 0; i < resp.n_fields; i++)
		printf("%s: %s\n", resp.fields[i].key, resp.fields[i].value);
	if (resp.code != CONTROL_CODE_OK)
		fprintf(stderr, "carrier %s: %d %s\n", what, resp.code, resp.text ? resp.text : "");
	rc = resp.code == CONTROL_CODE_OK ? 0 : 1;
	control_response_clear(&resp);
	return rc;
}

static int ctl_parse(int argc, char **argv, const char **conf_r, const char *usage)
{
	int c;

	optind = 1;
	while ((c = getopt(argc, argv, "c:h")) != -1) {
		if (c == 'c') {
			*conf_r = optarg;
		} else {
			fprintf(c == 'h' ? stdout : stderr, "usage: %s\n", usage);
			return c == 'h' ? 0 : 2;
		}
	}
	return -1;
}

int cli_log_level_main(int argc, char **argv)
{
	const char *conf = NULL;
	char req[256];
	int rc = ctl_parse(argc, argv, &conf,
			   "carrier log-level [-c FILE] [CATEGORY=LEVEL | CATEGORY LEVEL]  (LEVEL: none, minimum, medium, maximum)");

	if (rc >= 0)
		return rc;
	if (argc - optind == 0) {
		snprintf(req, sizeof req, "log-level");
	} else if (argc - optind == 1 && strchr(argv[optind], '=') != NULL) {
		/* CATEGORY=LEVEL, as in the configuration's level.CATEGORY = LEVEL */
		const char *eq = strchr(argv[optind], '=');

		snprintf(req, sizeof req, "log-level %.*s %s", (int)(eq - argv[optind]),
			 argv[optind], eq + 1);
	} else if (argc - optind == 2) {
		snprintf(req, sizeof req, "log-level %s %s", argv[optind], argv[optind + 1]);
	} else {
		fprintf(stderr, "usage: carrier log-level [-c FILE] [CATEGORY=LEVEL | CATEGORY LEVEL]\n");
		return 2;
	}
	return ctl_run(conf, req, "log-level");
}

int cli_reload_main(int argc, char **argv)
{
	const char *conf = NULL;
	int rc = ctl_parse(argc, argv, &conf, "carrier reload [-c FILE]");

	if (rc >= 0)
		return rc;
	return ctl_run(conf, "reload", "reload");
}
