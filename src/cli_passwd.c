/*
 * carrier passwd: manages the SMTP AUTH password file ([auth] passwd_file).
 *
 *   carrier passwd add  [-c CONFIG | -f FILE] USER   (password from stdin or the tty)
 *   carrier passwd del  [-c CONFIG | -f FILE] USER
 *   carrier passwd list [-c CONFIG | -f FILE]
 *
 * The file is rewritten atomically (passwd.c); the daemon reads it at
 * start and on reload, so a change applies after `carrier reload`.  The
 * password never appears on the command line (visible in ps) nor in any
 * output.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#include "cli.h"
#include "conf.h"
#include "passwd.h"
#include "sasl.h"

struct passwd_opts {
	const char *config;
	const char *file;
	const char *verb;
	const char *user;
};

static void usage(FILE *out)
{
	fprintf(out, "usage: carrier passwd add|del|list [-c CONFIG | -f FILE] [USER]\n"
		"  add USER   add or change USER's password (read from stdin, or asked on the tty)\n"
		"  del USER   remove USER\n"
		"  list       print the user names\n"
		"  -c CONFIG  take the file from [auth] passwd_file of CONFIG\n"
		"  -f FILE    use this password file\n"
		"Apply a change to the running daemon with: carrier reload\n");
}

static int parse(int argc, char **argv, struct passwd_opts *o)
{
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];

		if ((!strcmp(a, "-c") || !strcmp(a, "--config")) && i + 1 < argc)
			o->config = argv[++i];
		else if ((!strcmp(a, "-f") || !strcmp(a, "--file")) && i + 1 < argc)
			o->file = argv[++i];
		else if (!strcmp(a, "-h") || !strcmp(a, "--help"))
			return 1;
		else if (a[0] == '-')
			return -1;
		else if (o->verb == NULL)
			o->verb = a;
		else if (o->user == NULL)
			o->user = a;
		else
			return -1;
	}
	if (o->verb == NULL)
		return -1;
	if (!strcmp(o->verb, "list"))
		return o->user == NULL ? 0 : -1;
	if (strcmp(o->verb, "add") && strcmp(o->verb, "del"))
		return -1;
	return o->user != NULL ? 0 : -1;
}

/* The file from -f, or from the configuration; NULL after a message. */
static char *file_of(const struct passwd_opts *o)
{
	struct conf_errors errs = { 0 };
	struct carrier_conf *conf;
	char *path = NULL, buf[1024];

	if (o->file != NULL)
		return strdup(o->file);
	conf = conf_load(o->config, &errs);
	if (conf == NULL) {
		for (size_t i = 0; i < errs.n; i++) {
			conf_error_format(&errs.v[i], buf, sizeof buf);
			fprintf(stderr, "%s\n", buf);
		}
		conf_errors_clear(&errs);
		return NULL;
	}
	if (conf->auth_passwd_file[0] == '\0')
		fprintf(stderr, "carrier passwd: %s sets no [auth] passwd_file (set it, or use -f FILE)\n",
			conf->path);
	else
		path = strdup(conf->auth_passwd_file);
	conf_free(&conf);
	return path;
}

/* Reads one line without its newline; false at EOF or when too long. */
static bool read_secret(FILE *in, char *buf, size_t size)
{
	size_t n;

	if (fgets(buf, (int)size, in) == NULL)
		return false;
	n = strlen(buf);
	if (n > 0 && buf[n - 1] == '\n')
		buf[--n] = '\0';
	else if (!feof(in))
		return false;
	if (n > 0 && buf[n - 1] == '\r')
		buf[--n] = '\0';
	return true;
}

/* Asks on the terminal without echo. */
static bool ask_tty(const char *prompt, char *buf, size_t size)
{
	struct termios old, quiet;
	bool ok;

	fputs(prompt, stderr);
	fflush(stderr);
	if (tcgetattr(STDIN_FILENO, &old) < 0)
		return false;
	quiet = old;
	quiet.c_lflag &= ~(tcflag_t)ECHO;
	tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet);
	ok = read_secret(stdin, buf, size);
	tcsetattr(STDIN_FILENO, TCSAFLUSH, &old);
	fputc('\n', stderr);
	return ok;
}

static int get_password(char *buf, size_t size)
{
	char again[SASL_PASS_MAX + 2];

	if (isatty(STDIN_FILENO)) {
		if (!ask_tty("Password: ", buf, size) || !ask_tty("Again: ", again, sizeof again))
			return -1;
		if (strcmp(buf, again) != 0) {
			explicit_bzero(again, sizeof again);
			fprintf(stderr, "carrier passwd: the passwords differ\n");
			return -1;
		}
		explicit_bzero(again, sizeof again);
	} else if (!read_secret(stdin, buf, size)) {
		fprintf(stderr, "carrier passwd: no password on stdin (one line, at most %d bytes)\n",
			SASL_PASS_MAX);
		return -1;
	}
	if (buf[0] == '\0' || strlen(buf) > SASL_PASS_MAX) {
		fprintf(stderr, "carrier passwd: the password must have 1 to %d bytes\n", SASL_PASS_MAX);
		return -1;
	}
	return 0;
}

static int do_add(const char *path, const char *user)
{
	char pass[SASL_PASS_MAX + 2], hash[PASSWD_HASH_MAX + 1], err[512];
	int rc;

	if (!passwd_user_ok(user)) {
		fprintf(stderr, "carrier passwd: '%s' is not a valid user name (1-255 printable bytes, no ':' or space)\n",
			user);
		return 2;
	}
	if (get_password(pass, sizeof pass) < 0) {
		explicit_bzero(pass, sizeof pass);
		return 1;
	}
	rc = passwd_hash(pass, hash, sizeof hash, err, sizeof err);
	explicit_bzero(pass, sizeof pass);
	if (rc == 0)
		rc = passwd_file_set(path, user, hash, err, sizeof err);
	if (rc < 0) {
		fprintf(stderr, "carrier passwd: %s\n", err);
		return 1;
	}
	printf("%s: password set for %s (apply with: carrier reload)\n", path, user);
	return 0;
}

int cli_passwd_main(int argc, char **argv)
{
	struct passwd_opts o = { 0 };
	char err[512], *path;
	int r = parse(argc, argv, &o);

	if (r != 0) {
		usage(r > 0 ? stdout : stderr);
		return r > 0 ? 0 : 2;
	}
	if ((path = file_of(&o)) == NULL)
		return 1;
	if (!strcmp(o.verb, "add")) {
		r = do_add(path, o.user);
	} else if (!strcmp(o.verb, "del")) {
		r = passwd_file_del(path, o.user, err, sizeof err);
		if (r < 0)
			fprintf(stderr, "carrier passwd: %s\n", err);
		else if (r > 0)
			fprintf(stderr, "carrier passwd: no user '%s' in %s\n", o.user, path);
		else
			printf("%s: %s removed (apply with: carrier reload)\n", path, o.user);
		r = r == 0 ? 0 : 1;
	} else {
		r = passwd_file_list(path, stdout, err, sizeof err);
		if (r < 0)
			fprintf(stderr, "carrier passwd: %s\n", err);
		r = r < 0 ? 1 : 0;
	}
	free(path);
	return r;
}
