/*
 * cli: subcommands of the `carrier` admin command.  Each takes the
 * arguments after its own name (argv[0] is the subcommand) and returns the
 * process exit status.  carrier.c dispatches; each subcommand lives in its
 * own cli_*.c file.
 */
#ifndef CARRIER_CLI_H
#define CARRIER_CLI_H

#include <stdio.h>

#include "conf.h"

/* Loads `path` (NULL: the embedded default); on errors prints each as
 * "who: FILE:LINE: key: problem" and returns NULL.  cli_common.c */
struct carrier_conf *cli_load_conf(const char *who, const char *path);
/* Prints configuration (or routing table) errors, prefixed by `who`
 * unless it is NULL. */
void cli_print_conf_errors(const char *who, const struct conf_errors *errs);
/* Writes `s` as a quoted JSON string, every control character escaped. */
void cli_json_string(FILE *out, const char *s);

int cli_doctor_main(int argc, char **argv);   /* cli_doctor.c */
int cli_status_main(int argc, char **argv);   /* cli_status.c */
int cli_send_main(int argc, char **argv);     /* cli_send.c */
int cli_log_level_main(int argc, char **argv); /* cli_ctl.c */
int cli_reload_main(int argc, char **argv);    /* cli_ctl.c */
int cli_route_main(int argc, char **argv);     /* cli_route.c */
int cli_stats_main(int argc, char **argv);     /* cli_stats.c */
int cli_top_main(int argc, char **argv);       /* cli_top.c */
int cli_track_main(int argc, char **argv);     /* cli_track.c */
int cli_passwd_main(int argc, char **argv);    /* cli_passwd.c */
int cli_queue_main(int argc, char **argv);     /* cli_queue.c */
int cli_stop_main(int argc, char **argv);      /* cli_queue.c */
int cli_trace_main(int argc, char **argv);     /* cli_trace.c */

#endif
