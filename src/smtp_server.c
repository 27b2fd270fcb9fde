/*
 * smtp_server: inbound sessions (interim: banner, QUIT, and 502 for the
 * rest, until the full engine lands).  See smtp_server.h.
 */
#include "smtp_server.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

struct smtp_session;

struct smtp_server {
	struct event_base *base;
	const struct carrier_conf *conf;
	struct evlog *log;
	struct counters *ctr;
	struct spool *spool;
	size_t n_sessions;
	int shutting_down;
	char hostname[256];
	struct smtp_session *sessions;
};

struct smtp_session {
	struct smtp_server *srv;
	struct bufferevent *bev;
	struct smtp_session *next, *prev;
	int closing;
};

struct smtp_server *smtp_server_new(struct event_base *base,
				    const struct carrier_conf *conf,
				    struct evlog *log, struct counters *ctr,
				    struct spool *spool, char *err, size_t errlen)
{
	struct smtp_server *srv = calloc(1, sizeof *srv);

	if (srv == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	srv->base = base;
	srv->conf = conf;
	srv->log = log;
	srv->ctr = ctr;
	srv->spool = spool;
	if (conf->hostname[0])
		snprintf(srv->hostname, sizeof srv->hostname, "%s", conf->hostname);
	else if (gethostname(srv->hostname, sizeof srv->hostname - 1) < 0)
		snprintf(srv->hostname, sizeof srv->hostname, "localhost");
	return srv;
}

static void session_free(struct smtp_session *s)
{
	struct smtp_server *srv = s->srv;

	if (s->prev)
		s->prev->next = s->next;
	else
		srv->sessions = s->next;
	if (s->next)
		s->next->prev = s->prev;
	bufferevent_free(s->bev);
	srv->n_sessions--;
	if (srv->ctr)
		counters_add(counters_block(srv->ctr), COUNTER_CONN_IN_CURRENT, -1);
	free(s);
}

static void session_write_cb(struct bufferevent *bev, void *arg)
{
	struct smtp_session *s = arg;

	if (s->closing)
		session_free(s);
}

static void session_close_after_reply(struct smtp_session *s, const char *reply)
{
	s->closing = 1;
	bufferevent_disable(s->bev, EV_READ);
	bufferevent_write(s->bev, reply, strlen(reply));
}

static void session_read_cb(struct bufferevent *bev, void *arg)
{
	struct smtp_session *s = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	char *line;
	size_t len;

	while (!s->closing && (line = evbuffer_readln(in, &len, EVBUFFER_EOL_CRLF)) != NULL) {
		if (strncasecmp(line, "QUIT", 4) == 0 && len == 4)
			session_close_after_reply(s, "221 2.0.0 Bye\r\n");
		else
			bufferevent_write(bev, "502 5.5.1 Not implemented yet\r\n", 31);
		free(line);
	}
	if (!s->closing && evbuffer_get_length(in) > 4096)
		session_close_after_reply(s, "500 5.5.6 Line too long\r\n");
}

static void session_event_cb(struct bufferevent *bev, short what, void *arg)
{
	session_free(arg);
}

int smtp_server_accept(struct smtp_server *srv, int fd,
		       const struct sockaddr *sa, socklen_t salen)
{
	struct smtp_session *s = calloc(1, sizeof *s);
	char banner[300];

	if (s == NULL) {
		close(fd);
		return -1;
	}
	s->srv = srv;
	s->bev = bufferevent_socket_new(srv->base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (s->bev == NULL) {
		free(s);
		close(fd);
		return -1;
	}
	s->next = srv->sessions;
	if (s->next)
		s->next->prev = s;
	srv->sessions = s;
	srv->n_sessions++;
	if (srv->ctr) {
		counters_add(counters_block(srv->ctr), COUNTER_CONN_IN_CURRENT, 1);
		counters_add(counters_block(srv->ctr), COUNTER_CONN_IN_TOTAL, 1);
	}
	bufferevent_setcb(s->bev, session_read_cb, session_write_cb, session_event_cb, s);
	bufferevent_enable(s->bev, EV_READ | EV_WRITE);
	snprintf(banner, sizeof banner, "220 %s ESMTP carrier\r\n", srv->hostname);
	bufferevent_write(s->bev, banner, strlen(banner));
	return 0;
}

void smtp_server_set_conf(struct smtp_server *srv, const struct carrier_conf *conf)
{
	srv->conf = conf;
}

size_t smtp_server_sessions(const struct smtp_server *srv)
{
	return srv->n_sessions;
}

void smtp_server_shutdown(struct smtp_server *srv)
{
	srv->shutting_down = 1;
	for (struct smtp_session *s = srv->sessions; s; s = s->next)
		if (!s->closing)
			session_close_after_reply(s, "421 4.3.2 Service shutting down\r\n");
}

void smtp_server_free(struct smtp_server **srvp)
{
	struct smtp_server *srv = *srvp;

	if (srv == NULL)
		return;
	while (srv->sessions)
		session_free(srv->sessions);
	free(srv);
	*srvp = NULL;
}
