/*
 * cli_trace: `carrier trace [-c FILE] [--no-follow] ADDRESS [SECONDS]`,
 * `carrier trace off [ADDRESS]` and `carrier trace` (show).
 *
 * Starting a trace sends the control command, then follows the daemon's
 * JSON event log ([log] json) like `tail -f`, printing the trace's lines
 * as they come, until the trace ends (expiry, `trace off` elsewhere) or
 * Ctrl-C, which turns the trace off.  --no-follow only starts it.  The log
 * is opened (and its end noted) before the command is sent, so no line of
 * the trace is missed; a rotated or truncated log is reopened.
 *
 * The log lines are the daemon's own JSON (evlog.c); only the few string
 * values needed are decoded, each bounded.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "conf.h"
#include "control.h"

#define USAGE "usage: carrier trace [-c FILE] [--no-follow] ADDRESS [SECONDS]\n" \
	      "       carrier trace [-c FILE] off [ADDRESS]\n"                    \
	      "       carrier trace [-c FILE]            (show the active trace)\n"
#define LINE_MAX_LOG 8192       /* longer log lines are skipped */
#define VALUE_MAX 1024

struct follow {
	const char *path;
	int fd;
	ino_t ino;
	off_t off;
	char buf[LINE_MAX_LOG];
	size_t len;
	bool skipping;          /* inside an over-long line */
	bool started;           /* our SMTP_TRACE_STARTED was seen */
	char peer[64];
};

/* ---- the JSON values we need ------------------------------------------- */

static void put_utf8(char *out, size_t size, size_t *n, unsigned cp)
{
	char tmp[4];
	size_t k = 0;

	if (cp < 0x20 || cp == 0x7f) {
		cp = '?';
	}
	if (cp < 0x80) {
		tmp[k++] = (char)cp;
	} else if (cp < 0x800) {
		tmp[k++] = (char)(0xC0 | cp >> 6);
		tmp[k++] = (char)(0x80 | (cp & 0x3F));
	} else {
		tmp[k++] = (char)(0xE0 | cp >> 12);
		tmp[k++] = (char)(0x80 | ((cp >> 6) & 0x3F));
		tmp[k++] = (char)(0x80 | (cp & 0x3F));
	}
	if (*n + k < size) {
		memcpy(out + *n, tmp, k);
		*n += k;
	}
}

/* The string value of "key" at or after `from` in `line`, decoded into out.
 * Returns 0, or -1 when absent or not a string. */
static int json_str(const char *line, const char *from, const char *key, char *out, size_t size)
{
	char pat[64];
	const char *p;
	size_t n = 0;

	snprintf(pat, sizeof pat, "\"%s\":\"", key);
	p = strstr(from ? from : line, pat);
	if (p == NULL)
		return -1;
	for (p += strlen(pat); *p && *p != '"'; p++) {
		if (*p != '\\') {
			if (n + 1 < size)
				out[n++] = *p;
			continue;
		}
		p++;
		switch (*p) {
		case 'n': put_utf8(out, size, &n, '\n'); break;
		case 't': put_utf8(out, size, &n, '\t'); break;
		case 'r': put_utf8(out, size, &n, '\r'); break;
		case 'b': put_utf8(out, size, &n, '\b'); break;
		case 'f': put_utf8(out, size, &n, '\f'); break;
		case 'u': {
			unsigned cp = 0;

			for (int i = 1; i <= 4; i++) {
				char c = p[i];

				cp = cp * 16 + (unsigned)(c >= '0' && c <= '9' ? c - '0' :
							  c >= 'a' && c <= 'f' ? c - 'a' + 10 :
							  c >= 'A' && c <= 'F' ? c - 'A' + 10 : 0);
				if (c == '\0')
					return -1;
			}
			p += 4;
			put_utf8(out, size, &n, cp);
			break;
		}
		case '\0':
			return -1;
		default:
			if (n + 1 < size)
				out[n++] = *p;
			break;
		}
	}
	out[n] = '\0';
	return *p == '"' ? 0 : -1;
}

/* One complete log line: prints it when it belongs to the trace.
 * Returns true when the trace has ended. */
static bool follow_line(struct follow *f, const char *line)
{
	char event[64], ts[64], client[64], session[96], text[VALUE_MAX];
	const char *fields = strstr(line, "\"fields\":{"), *clock;

	if (fields == NULL || json_str(line, NULL, "event", event, sizeof event) < 0 ||
	    strncmp(event, "SMTP_TRACE_", 11) != 0)
		return false;
	if (strcmp(event, "SMTP_TRACE_STARTED") == 0 || strcmp(event, "SMTP_TRACE_ENDED") == 0) {
		if (json_str(line, fields, "peer", client, sizeof client) < 0 ||
		    strcmp(client, f->peer) != 0)
			return false;
		/* The end of a trace this one replaced comes before its start. */
		if (event[11] == 'S' || !f->started) {
			f->started = f->started || event[11] == 'S';
			return false;
		}
		if (json_str(line, fields, "reason", text, sizeof text) < 0)
			snprintf(text, sizeof text, "?");
		printf("trace of %s ended: %s\n", f->peer, text);
		return true;
	}
	if (strcmp(event, "SMTP_TRACE_IN") != 0 && strcmp(event, "SMTP_TRACE_OUT") != 0)
		return false;
	if (json_str(line, fields, "client", client, sizeof client) < 0 ||
	    strcmp(client, f->peer) != 0 ||
	    json_str(line, fields, "session", session, sizeof session) < 0 ||
	    json_str(line, fields, "line", text, sizeof text) < 0)
		return false;
	if (json_str(line, NULL, "ts", ts, sizeof ts) < 0)
		ts[0] = '\0';
	clock = strchr(ts, 'T') ? strchr(ts, 'T') + 1 : ts;
	printf("%.12s %s %s %s\n", clock, session,
	       strcmp(event, "SMTP_TRACE_IN") == 0 ? "C:" : "S:", text);
	return false;
}

/* ---- following the log --------------------------------------------------- */

static int follow_open(struct follow *f, bool at_end)
{
	struct stat st;

	f->fd = open(f->path, O_RDONLY | O_CLOEXEC);
	if (f->fd < 0 || fstat(f->fd, &st) < 0)
		return -1;
	f->ino = st.st_ino;
	f->off = at_end ? st.st_size : 0;
	f->len = 0;
	f->skipping = false;
	return 0;
}

/* Reopens after a rotation (new file at the path) or a truncation. */
static void follow_check_rotation(struct follow *f)
{
	struct stat st, cur;

	if (stat(f->path, &st) < 0 || fstat(f->fd, &cur) < 0)
		return;
	if (st.st_ino != f->ino) {
		close(f->fd);
		if (follow_open(f, false) < 0)
			f->fd = -1;
	} else if (cur.st_size < f->off) {
		f->off = 0;
		f->len = 0;
	}
}

/* Reads what was appended; returns true when the trace has ended. */
static bool follow_read(struct follow *f)
{
	ssize_t got;

	if (f->fd < 0) {
		if (follow_open(f, false) < 0)
			return false;
	}
	for (;;) {
		got = pread(f->fd, f->buf + f->len, sizeof f->buf - 1 - f->len, f->off);
		if (got <= 0)
			break;
		f->off += got;
		f->len += (size_t)got;
		for (;;) {
			char *nl = memchr(f->buf, '\n', f->len);
			size_t used;

			if (nl == NULL) {
				if (f->len == sizeof f->buf - 1) {
					f->skipping = true;   /* not one of ours: too long */
					f->len = 0;
				}
				break;
			}
			*nl = '\0';
			used = (size_t)(nl - f->buf) + 1;
			if (!f->skipping && follow_line(f, f->buf))
				return true;
			f->skipping = false;
			memmove(f->buf, nl + 1, f->len - used);
			f->len -= used;
		}
	}
	fflush(stdout);
	follow_check_rotation(f);
	return false;
}

/* ---- the command ------------------------------------------------------------ */

/* Sends `request`; prints the fields unless `quiet`.  Returns 0 on 200, 3
 * when carrierd is not running, 1 otherwise; *resp is left for the caller
 * to read and clear. */
static int send_request(const char *sock, const char *request, bool quiet,
			struct control_response *resp)
{
	char err[512];
	int rc = control_request(sock, request, resp, err, sizeof err);

	if (rc != CONTROL_CLIENT_OK) {
		fprintf(stderr, "carrier trace: %s\n", err);
		return rc == CONTROL_CLIENT_NOT_RUNNING ? 3 : 1;
	}
	if (resp->code != CONTROL_CODE_OK) {
		fprintf(stderr, "carrier trace: %d %s\n", resp->code, resp->text ? resp->text : "");
		return 1;
	}
	for (size_t i = 0; i < resp->n_fields && !quiet; i++)
		printf("%s: %s\n", resp->fields[i].key, resp->fields[i].value);
	return 0;
}

static const char *field(const struct control_response *resp, const char *key)
{
	for (size_t i = 0; i < resp->n_fields; i++)
		if (strcmp(resp->fields[i].key, key) == 0)
			return resp->fields[i].value;
	return NULL;
}

/* Follows until the trace ends, `until` (+ a grace second) or Ctrl-C. */
static int follow_trace(struct follow *f, const char *sock, long long until)
{
	struct pollfd pfd;
	struct signalfd_siginfo si;
	struct control_response resp;
	char req[128];
	sigset_t mask;
	int sfd;

	sigemptyset(&mask);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGTERM);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	sfd = signalfd(-1, &mask, SFD_CLOEXEC);
	pfd = (struct pollfd){ .fd = sfd, .events = POLLIN };
	for (;;) {
		if (follow_read(f))
			break;
		if ((long long)time(NULL) > until + 1) {
			printf("trace of %s ended: expired\n", f->peer);
			break;
		}
		if (sfd >= 0 && poll(&pfd, 1, 200) > 0) {
			if (read(sfd, &si, sizeof si) < 0)
				(void)0;
			follow_read(f);   /* what came before the signal */
			snprintf(req, sizeof req, "trace off %s", f->peer);
			if (send_request(sock, req, true, &resp) == 0)
				printf("trace of %s turned off\n", f->peer);
			control_response_clear(&resp);
			break;
		} else if (sfd < 0) {
			usleep(200 * 1000);
		}
	}
	fflush(stdout);
	if (sfd >= 0)
		close(sfd);
	return 0;
}

static int trace_start(const struct carrier_conf *c, const char *addr, const char *secs,
		       bool follow_log)
{
	struct follow *f = NULL;
	struct control_response resp;
	const char *peer, *until;
	char req[256];
	int rc;

	if (follow_log) {
		if (c->log_json == NULL || c->log_json[0] == '\0') {
			fprintf(stderr, "carrier trace: no JSON event log ([log] json) to follow; "
				"use --no-follow and read the trace in syslog\n");
			return 1;
		}
		f = calloc(1, sizeof *f);
		if (f == NULL) {
			fprintf(stderr, "carrier trace: out of memory\n");
			return 1;
		}
		f->path = c->log_json;
		if (follow_open(f, true) < 0) {
			fprintf(stderr, "carrier trace: cannot read the event log %s: %s "
				"(run as root or the daemon's user, or use --no-follow)\n",
				c->log_json, strerror(errno));
			free(f);
			return 1;
		}
	}
	snprintf(req, sizeof req, "trace %s%s%s", addr, secs ? " " : "", secs ? secs : "");
	rc = send_request(c->control_socket, req, follow_log, &resp);
	if (rc != 0 || !follow_log) {
		control_response_clear(&resp);
		if (f != NULL)
			close(f->fd);
		free(f);
		return rc;
	}
	peer = field(&resp, "peer");
	until = field(&resp, "until");
	snprintf(f->peer, sizeof f->peer, "%s", peer ? peer : addr);
	printf("tracing SMTP sessions from %s for %ss; Ctrl-C turns the trace off\n", f->peer,
	       field(&resp, "seconds") ? field(&resp, "seconds") : "?");
	fflush(stdout);
	rc = follow_trace(f, c->control_socket, until ? atoll(until) : (long long)time(NULL) + 3600);
	control_response_clear(&resp);
	close(f->fd);
	free(f);
	return rc;
}

int cli_trace_main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "no-follow", no_argument, NULL, 'n' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *conf_path = NULL;
	struct control_response resp;
	struct carrier_conf *c;
	bool follow_log = true;
	char req[256];
	int opt, rc, nargs;

	optind = 1;
	while ((opt = getopt_long(argc, argv, "c:h", longopts, NULL)) != -1) {
		if (opt == 'c') {
			conf_path = optarg;
		} else if (opt == 'n') {
			follow_log = false;
		} else {
			fputs(USAGE, opt == 'h' ? stdout : stderr);
			return opt == 'h' ? 0 : 2;
		}
	}
	nargs = argc - optind;
	if (nargs > 2 || (nargs == 2 && strcmp(argv[optind], "off") != 0 &&
			  strspn(argv[optind + 1], "0123456789") != strlen(argv[optind + 1]))) {
		fputs(USAGE, stderr);
		return 2;
	}
	c = cli_load_conf("carrier trace", conf_path);
	if (c == NULL)
		return 1;
	if (nargs == 0 || strcmp(argv[optind], "off") == 0) {
		snprintf(req, sizeof req, "trace%s%s%s", nargs ? " off" : "",
			 nargs == 2 ? " " : "", nargs == 2 ? argv[optind + 1] : "");
		rc = send_request(c->control_socket, req, false, &resp);
		control_response_clear(&resp);
	} else {
		rc = trace_start(c, argv[optind], nargs == 2 ? argv[optind + 1] : NULL, follow_log);
	}
	conf_free(&c);
	return rc;
}
