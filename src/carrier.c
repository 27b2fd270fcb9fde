/*
 * carrier: the administrator's command.  Dispatches to subcommands
 * (cli.h); each one reads the configuration itself, talks to the daemon
 * over the control socket or reads shared memory, and never needs the
 * daemon to be healthy to report that it is not.
 */
#include <stdio.h>
#include <string.h>

#include "cli.h"

struct cli_cmd {
	const char *name;
	int (*main)(int argc, char **argv);
	const char *help;
};

static const struct cli_cmd cli_cmds[] = {
	{ "doctor", cli_doctor_main, "run the startup checks and report drift from the saved baseline" },
	{ "status", cli_status_main, "is carrierd running: pid, uptime, version, listeners, spool" },
	{ "log-level", cli_log_level_main, "show or change a category's diagnostic level at runtime" },
	{ "stop", cli_stop_main, "ask carrierd to drain its sessions and stop (like SIGTERM); --wait until it has" },
	{ "reload", cli_reload_main, "reload the configuration (like SIGHUP); errors keep the running one" },
	{ "route", cli_route_main, "show how an address is routed: space, routes by cost, and with --dns the hosts in try order" },
	{ "stats", cli_stats_main, "print the counters: connections, messages, queue, spool, DNS, next hops (--json)" },
	{ "top", cli_top_main, "live view of the next hops: queue, age, failures, rates" },
	{ "queue", cli_queue_main, "list, summarize, show, hold, release, delete, retry, flush and bounce queued mail" },
	{ "trace", cli_trace_main, "trace a peer's SMTP sessions: every command and reply, live (AUTH data redacted)" },
	{ "track", cli_track_main, "tell messages' stories from the tracking log (by queue ID, Message-ID, sender, recipient, time)" },
	{ "passwd", cli_passwd_main, "manage the SMTP AUTH password file: add, del, list users (yescrypt hashes)" },
	{ "send", cli_send_main, "submit a message read from stdin (like sendmail; -t reads recipients from the headers)" },
};

static void usage(FILE *out)
{
	fprintf(out, "usage: carrier COMMAND [options]   (carrier COMMAND --help)\n\ncommands:\n");
	for (size_t i = 0; i < sizeof cli_cmds / sizeof cli_cmds[0]; i++)
		fprintf(out, "  %-10s %s\n", cli_cmds[i].name, cli_cmds[i].help);
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
		usage(stdout);
		return 0;
	}
	if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "version")) {
		printf("carrier %s\n", CARRIER_VERSION);
		return 0;
	}
	for (size_t i = 0; i < sizeof cli_cmds / sizeof cli_cmds[0]; i++)
		if (!strcmp(argv[1], cli_cmds[i].name))
			return cli_cmds[i].main(argc - 1, argv + 1);
	fprintf(stderr, "carrier: unknown command '%s'\n", argv[1]);
	usage(stderr);
	return 2;
}
