/*
 * dovecot_auth: a client of Dovecot's auth-client protocol (see
 * dovecot_auth.h).
 *
 *   C: VERSION\t1\t2          S: VERSION\t1\t2, MECH..., SPID, CUID, COOKIE, DONE
 *   C: CPID\t<pid>
 *   C: AUTH\t1\tPLAIN\tservice=smtp\tnologin\t[secured\t]rip=<ip>\tresp=<base64>
 *   S: OK\t1\tuser=<name>...  |  FAIL\t1\t...  |  CONT\t1\t...
 *
 * Lines from the server are bounded (4 KiB); the request is written only
 * after DONE, and its memory is wiped once libevent has copied it.
 */
#include "dovecot_auth.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "sasl.h"

#define DA_LINE_MAX 4096u

struct dovecot_auth {
	struct bufferevent *bev;
	dovecot_auth_done_fn *done;
	void *arg;
	bool handshaken;
	char request[SASL_LINE_MAX];     /* the AUTH line, sent after DONE */
	size_t request_len;
};

static void da_free(struct dovecot_auth *a)
{
	if (a->bev != NULL)
		bufferevent_free(a->bev);
	explicit_bzero(a, sizeof *a);
	free(a);
}

static void da_finish(struct dovecot_auth *a, enum dovecot_auth_result r, const char *user,
		      const char *reason)
{
	dovecot_auth_done_fn *done = a->done;
	void *arg = a->arg;

	da_free(a);
	done(arg, r, user, reason);
}

/* The value of "key=" among the tab-separated fields of `line`, copied. */
static void field(const char *line, const char *key, char *out, size_t size)
{
	size_t kl = strlen(key);

	out[0] = '\0';
	for (const char *p = line; p != NULL; p = strchr(p, '\t')) {
		if (*p == '\t')
			p++;
		if (strncmp(p, key, kl) == 0 && p[kl] == '=') {
			size_t n = strcspn(p + kl + 1, "\t");

			snprintf(out, size, "%.*s", (int)n, p + kl + 1);
			return;
		}
	}
}

/* Returns false when the request ended (and `a` is gone). */
static bool da_line(struct dovecot_auth *a, char *line)
{
	char user[SASL_USER_MAX + 1], reason[256];

	if (!a->handshaken) {
		if (strcmp(line, "DONE") == 0) {
			a->handshaken = true;
			bufferevent_write(a->bev, a->request, a->request_len);
			explicit_bzero(a->request, sizeof a->request);
		} else if (strncmp(line, "VERSION\t", 8) == 0 && strncmp(line + 8, "1\t", 2) != 0) {
			da_finish(a, DOVECOT_AUTH_TEMPFAIL, "", "unsupported auth protocol version");
			return false;
		}
		return true;
	}
	if (strncmp(line, "OK\t1", 4) == 0 && (line[4] == '\t' || line[4] == '\0')) {
		field(line, "user", user, sizeof user);
		da_finish(a, DOVECOT_AUTH_OK, user, "");
	} else if (strncmp(line, "FAIL\t1", 6) == 0 && (line[6] == '\t' || line[6] == '\0')) {
		field(line, "reason", reason, sizeof reason);
		da_finish(a, DOVECOT_AUTH_FAIL, "", reason[0] ? reason : "authentication failed");
	} else {
		da_finish(a, DOVECOT_AUTH_TEMPFAIL, "", "unexpected answer from the auth server");
	}
	return false;
}

static void da_read_cb(struct bufferevent *bev, void *arg)
{
	struct dovecot_auth *a = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	size_t n;
	char *line;

	while ((line = evbuffer_readln(in, &n, EVBUFFER_EOL_LF)) != NULL) {
		bool more = n < DA_LINE_MAX && da_line(a, line);

		free(line);
		if (!more) {
			if (n >= DA_LINE_MAX)
				da_finish(a, DOVECOT_AUTH_TEMPFAIL, "", "over-long line from the auth server");
			return;
		}
	}
	if (evbuffer_get_length(in) > DA_LINE_MAX)
		da_finish(a, DOVECOT_AUTH_TEMPFAIL, "", "over-long line from the auth server");
}

static void da_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct dovecot_auth *a = arg;

	if (what & BEV_EVENT_CONNECTED)
		return;
	da_finish(a, DOVECOT_AUTH_TEMPFAIL, "", (what & BEV_EVENT_TIMEOUT) ?
		  "the auth server did not answer in time" :
		  (what & BEV_EVENT_EOF) ? "the auth server closed the connection" :
		  "cannot talk to the auth server");
}

/* The AUTH line; false when it does not fit. */
static bool build_request(struct dovecot_auth *a, const char *user, const char *pass,
			  const char *client, bool secured)
{
	unsigned char raw[SASL_USER_MAX + SASL_PASS_MAX + 3];
	char b64[(sizeof raw + 2) / 3 * 4 + 1];
	size_t ul = strlen(user), pl = strlen(pass);
	int n;

	if (ul > SASL_USER_MAX || pl > SASL_PASS_MAX || strchr(client, '\t') != NULL)
		return false;
	raw[0] = '\0';
	memcpy(raw + 1, user, ul);
	raw[1 + ul] = '\0';
	memcpy(raw + 2 + ul, pass, pl);
	sasl_base64_encode(raw, ul + pl + 2, b64, sizeof b64);
	explicit_bzero(raw, sizeof raw);
	n = snprintf(a->request, sizeof a->request,
		     "VERSION\t1\t2\nCPID\t%ld\n", (long)getpid());
	/* The handshake lines go at once; the AUTH line waits for DONE. */
	bufferevent_write(a->bev, a->request, (size_t)n);
	n = snprintf(a->request, sizeof a->request,
		     "AUTH\t1\tPLAIN\tservice=smtp\tnologin\t%srip=%s\tresp=%s\n",
		     secured ? "secured\t" : "", client, b64);
	explicit_bzero(b64, sizeof b64);
	if (n < 0 || (size_t)n >= sizeof a->request)
		return false;
	a->request_len = (size_t)n;
	return true;
}

struct dovecot_auth *dovecot_auth_start(struct event_base *base, const char *socket_path,
					const char *user, const char *pass, const char *client,
					bool secured, unsigned timeout_s,
					dovecot_auth_done_fn *done, void *arg,
					char *err, size_t errlen)
{
	struct dovecot_auth *a = calloc(1, sizeof *a);
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	struct timeval tv = { (time_t)timeout_s, 0 };

	if (a == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	a->done = done;
	a->arg = arg;
	if (strlen(socket_path) >= sizeof sun.sun_path) {
		snprintf(err, errlen, "%s: socket path too long", socket_path);
		free(a);
		return NULL;
	}
	memcpy(sun.sun_path, socket_path, strlen(socket_path));
	a->bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
	if (a->bev == NULL || !build_request(a, user, pass, client, secured)) {
		snprintf(err, errlen, a->bev ? "credentials too long" : "out of memory");
		da_free(a);
		return NULL;
	}
	bufferevent_setcb(a->bev, da_read_cb, NULL, da_event_cb, a);
	bufferevent_set_timeouts(a->bev, &tv, &tv);
	if (bufferevent_socket_connect(a->bev, (struct sockaddr *)&sun, (int)sizeof sun) < 0) {
		snprintf(err, errlen, "%s: cannot connect", socket_path);
		da_free(a);
		return NULL;
	}
	bufferevent_enable(a->bev, EV_READ | EV_WRITE);
	return a;
}

void dovecot_auth_cancel(struct dovecot_auth **ap)
{
	if (*ap != NULL)
		da_free(*ap);
	*ap = NULL;
}
