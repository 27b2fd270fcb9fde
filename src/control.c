/*
 * control: the control socket server (on carrierd's libevent loop) and the
 * blocking client the `carrier` CLI uses.  See control.h.
 *
 * Owns the socket file, the listener and every control connection.  It
 * parses with control_proto (pure) and dispatches to the daemon's handler
 * table; it must not know any other module.  Server functions run on the
 * thread of the event_base given to control_new(); the client runs
 * anywhere.
 */
#include <errno.h>
#include <grp.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "control.h"
#include "evlog.h"

#ifndef CARRIER_VERSION
#define CARRIER_VERSION "0.0.0"
#endif

#define CONTROL_BACKLOG 16
#define CONTROL_OUTPUT_HIGH (64 * 1024)   /* stop reading above this */
#define CONTROL_PAUSE_SECONDS 1            /* after EMFILE and friends */
#define CONTROL_PEER_GROUPS 64             /* SO_PEERGROUPS on the stack */
#define CONTROL_MAX_ERRORS 10              /* bad requests before we hang up */
#define CONTROL_INPUT_HIGH (4 * CONTROL_LINE_MAX) /* read no more while a
						      reply is deferred */

struct control_conn {
	LIST_ENTRY(control_conn) link;
	struct control *c;
	struct bufferevent *bev;
	struct event *deadline;         /* complete request due by then */
	uid_t uid;
	pid_t pid;
	bool closing;                   /* free once the output is sent */
	bool eof;                       /* the peer sent EOF while deferred */
	unsigned errors;                /* bad requests so far */
	struct control_deferred *deferred; /* the request being answered later */
	struct control_req_parser parser;
};

/*
 * A request answered later (control_defer).  Owned by the control: the
 * connection may go (conn = NULL, cancelled) while a worker still holds the
 * handle, and only the loop thread frees it, in deferred_done_cb() after
 * control_deferred_finish() activated `done`.  The worker touches rep,
 * finished and done only; everything else is the loop thread's.
 */
struct control_deferred {
	LIST_ENTRY(control_deferred) link;  /* c->deferred */
	struct control *c;                  /* NULL after control_free() */
	struct control_conn *conn;          /* NULL once the peer is gone */
	struct event *done;                 /* activated by the finisher */
	struct control_reply *rep;          /* set by the finisher */
	atomic_bool cancelled, finished;
	char command[64];
	uid_t uid;
	pid_t pid;
};

struct control {
	struct event_base *base;
	struct evconnlistener *lev;
	struct event *resume;           /* re-enables lev after a pause */
	char *path;
	dev_t dev;                      /* identity of the socket we made */
	ino_t ino;
	struct control_auth auth;
	struct control_handlers h;
	void *h_arg;
	struct evlog *log;
	struct control_reply *rep;      /* reused for every request */
	LIST_HEAD(, control_conn) conns;
	size_t n_conns;
	LIST_HEAD(, control_deferred) deferred;
	size_t n_deferred;
};

static void set_err(char *err, size_t errlen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (!err || !errlen)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

static int unix_addr(struct sockaddr_un *sun, const char *path,
		     char *err, size_t errlen)
{
	memset(sun, 0, sizeof *sun);
	sun->sun_family = AF_UNIX;
	if (!*path || strlen(path) >= sizeof sun->sun_path) {
		set_err(err, errlen, "socket path '%s' is empty or longer than %zu bytes",
			path, sizeof sun->sun_path - 1);
		return -1;
	}
	strcpy(sun->sun_path, path);
	return 0;
}

/* ---- socket setup ------------------------------------------------------ */

/* Removes a stale socket at `path`; fails on a live one or a non-socket. */
static int control_clear_path(const char *path, const struct sockaddr_un *sun,
			      struct evlog *log, char *err, size_t errlen)
{
	struct stat st;
	int fd, r, e;

	if (lstat(path, &st) < 0) {
		if (errno == ENOENT)
			return 0;
		set_err(err, errlen, "lstat: %s", strerror(errno));
		return -1;
	}
	if (!S_ISSOCK(st.st_mode)) {
		set_err(err, errlen, "the path exists and is not a socket; remove it or change control.socket");
		return -1;
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0) {
		set_err(err, errlen, "socket: %s", strerror(errno));
		return -1;
	}
	r = connect(fd, (const struct sockaddr *)sun, sizeof *sun);
	e = errno;
	close(fd);
	if (r == 0 || e == EAGAIN) {
		set_err(err, errlen, "another carrierd is already listening on it (check with `carrier status`)");
		return -1;
	}
	if (e != ECONNREFUSED) {
		set_err(err, errlen, "cannot probe the existing socket: %s", strerror(e));
		return -1;
	}
	if (unlink(path) < 0 && errno != ENOENT) {
		set_err(err, errlen, "cannot remove the stale socket: %s", strerror(errno));
		return -1;
	}
	evlog_emit(log, EV_CONTROL_STALE_REMOVED, EVF_S("path", path));
	return 0;
}

/* Creates, binds, chmods, chowns and listens.  Returns the fd or -1. */
static int control_open_socket(struct control *c, char *err, size_t errlen)
{
	struct sockaddr_un sun;
	struct stat st;
	const char *step;
	int fd;

	if (unix_addr(&sun, c->path, err, errlen) < 0 ||
	    control_clear_path(c->path, &sun, c->log, err, errlen) < 0)
		return -1;
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0) {
		set_err(err, errlen, "socket: %s", strerror(errno));
		return -1;
	}
	if (bind(fd, (struct sockaddr *)&sun, sizeof sun) < 0) {
		set_err(err, errlen, "bind: %s", strerror(errno));
		close(fd);
		return -1;
	}
	/* Nobody can connect before listen(), so the mode and owner are in
	 * place before the first peer can arrive. */
	step = "chmod 0660";
	if (chmod(c->path, 0660) < 0)
		goto fail;
	step = "chown";
	if ((c->auth.owner_uid != (uid_t)-1 || c->auth.group != (gid_t)-1) &&
	    chown(c->path, c->auth.owner_uid, c->auth.group) < 0)
		goto fail;
	step = "stat";
	if (stat(c->path, &st) < 0)
		goto fail;
	c->dev = st.st_dev;
	c->ino = st.st_ino;
	step = "listen";
	if (listen(fd, CONTROL_BACKLOG) < 0)
		goto fail;
	return fd;
fail:
	set_err(err, errlen, "%s: %s", step, strerror(errno));
	unlink(c->path);
	close(fd);
	return -1;
}

/* ---- authorization ----------------------------------------------------- */

/* True when the peer on `fd` has `group` among its supplementary groups. */
static bool peer_in_group(int fd, gid_t group)
{
	gid_t stack[CONTROL_PEER_GROUPS], *gids = stack;
	socklen_t len = sizeof stack;
	bool found = false;

	if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, gids, &len) < 0) {
		if (errno != ERANGE || !(gids = malloc(len)))
			return false;
		if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, gids, &len) < 0)
			len = 0;
	}
	for (size_t i = 0; i < len / sizeof *gids; i++)
		if (gids[i] == group)
			found = true;
	if (gids != stack)
		free(gids);
	return found;
}

static bool control_authorized(const struct control *c, int fd,
			       const struct ucred *cred)
{
	if (cred->uid == 0 || cred->uid == geteuid() ||
	    (c->auth.owner_uid != (uid_t)-1 && cred->uid == c->auth.owner_uid))
		return true;
	if (c->auth.group == (gid_t)-1)
		return false;
	return cred->gid == c->auth.group || peer_in_group(fd, c->auth.group);
}

static size_t control_count_uid(const struct control *c, uid_t uid)
{
	const struct control_conn *k;
	size_t n = 0;

	LIST_FOREACH(k, &c->conns, link)
		if (k->uid == uid)
			n++;
	return n;
}

/* Answers a peer we will not serve, without allocating, and closes. */
static void control_refuse_fd(int fd, int code, const char *text)
{
	char buf[CONTROL_TEXT_MAX + 32];
	size_t n = control_reply_format_short(buf, sizeof buf, code, text);
	ssize_t w = send(fd, buf, n, MSG_NOSIGNAL | MSG_DONTWAIT);

	(void)w;
	/* Drain what the peer already sent: closing with unread input would
	 * reset the connection before it reads our answer. */
	while (recv(fd, buf, sizeof buf, MSG_DONTWAIT) > 0)
		;
	close(fd);
}

/* ---- connections ------------------------------------------------------- */

static void conn_free(struct control_conn *conn)
{
	struct control *c = conn->c;

	if (conn->deferred != NULL) {
		/* The worker still holds the handle: the reply is dropped
		 * when it comes. */
		conn->deferred->conn = NULL;
		atomic_store(&conn->deferred->cancelled, true);
	}
	LIST_REMOVE(conn, link);
	c->n_conns--;
	if (conn->deadline)
		event_free(conn->deadline);
	bufferevent_free(conn->bev);
	free(conn);
}

/* Queues a short answer and ends the session once it is written. */
static void conn_close_with(struct control_conn *conn, int code,
			    const char *text)
{
	char buf[CONTROL_TEXT_MAX + 32];
	size_t n = control_reply_format_short(buf, sizeof buf, code, text);

	bufferevent_write(conn->bev, buf, n);
	bufferevent_disable(conn->bev, EV_READ);
	event_del(conn->deadline);
	conn->closing = true;
}

static void conn_arm_deadline(struct control_conn *conn)
{
	unsigned ms = conn->c->auth.timeout_ms;
	struct timeval tv = { .tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000 };

	event_add(conn->deadline, &tv);
}

static void reply_builtin_help(const struct control *c, struct control_reply *rep)
{
	static const char *const builtin[] = { "help", "ping", "version" };

	for (size_t i = 0; i < sizeof builtin / sizeof builtin[0]; i++)
		control_reply_add(rep, "command", "%s", builtin[i]);
	for (size_t i = 0; i < c->h.n_commands; i++)
		control_reply_add(rep, "command", "%s",
				  c->h.commands[i].usage ? c->h.commands[i].usage
							 : c->h.commands[i].name);
}

static void reply_unknown(const struct control *c, const char *name,
			  struct control_reply *rep)
{
	char list[CONTROL_TEXT_MAX] = "help, ping, version";
	size_t n = strlen(list);

	for (size_t i = 0; i < c->h.n_commands && n < sizeof list; i++)
		n += (size_t)snprintf(list + n, sizeof list - n, ", %s",
				      c->h.commands[i].name);
	control_reply_status(rep, CONTROL_CODE_UNKNOWN,
			     "unknown command '%s'; commands: %s", name, list);
	reply_builtin_help(c, rep);
}

/* Runs one request into c->rep. */
static void control_run(struct control *c, const struct control_call *call)
{
	const char *name = call->req->command;
	struct control_reply *rep = c->rep;

	control_reply_reset(rep);
	if (!strcmp(name, "ping")) {
		control_reply_status(rep, CONTROL_CODE_OK, "pong");
		return;
	}
	if (!strcmp(name, "version")) {
		control_reply_add(rep, "version", "%s", CARRIER_VERSION);
		control_reply_add(rep, "protocol", "%d", CONTROL_PROTO_VERSION);
		return;
	}
	if (!strcmp(name, "help")) {
		reply_builtin_help(c, rep);
		return;
	}
	for (size_t i = 0; i < c->h.n_commands; i++) {
		if (!strcmp(name, c->h.commands[i].name)) {
			c->h.commands[i].fn(c->h_arg, call, rep);
			return;
		}
	}
	reply_unknown(c, name, rep);
}

/* Sends the answer to `command` and waits for the next request. */
static void conn_send(struct control_conn *conn, const char *command,
		      const struct control_reply *rep)
{
	struct control *c = conn->c;
	size_t len;
	char *out;

	evlog_emit(c->log, EV_CONTROL_COMMAND, EVF_S("command", command),
		   EVF_I("uid", conn->uid), EVF_I("pid", conn->pid),
		   EVF_I("code", control_reply_code(rep)));
	out = control_reply_format(rep, &len);
	if (!out) {
		conn_close_with(conn, CONTROL_CODE_FAILED, "out of memory");
		return;
	}
	bufferevent_write(conn->bev, out, len);
	free(out);
	conn_arm_deadline(conn);
}

static void conn_dispatch(struct control_conn *conn,
			  const struct control_request *req)
{
	struct control *c = conn->c;
	struct control_call call = { .req = req, .uid = conn->uid, .pid = conn->pid,
				     .conn = conn };

	control_run(c, &call);
	if (conn->deferred != NULL) {
		/* Answered later: no deadline for the next request yet. */
		event_del(conn->deadline);
		return;
	}
	conn_send(conn, req->command, c->rep);
}

static void conn_bad_request(struct control_conn *conn, int code,
			     const char *reason)
{
	struct control *c = conn->c;

	if (code == CONTROL_CODE_TOO_LONG) {
		evlog_emit(c->log, EV_CONTROL_REQUEST_TOO_LONG,
			   EVF_I("uid", conn->uid), EVF_I("pid", conn->pid),
			   EVF_I("max", CONTROL_LINE_MAX));
	} else {
		evlog_emit(c->log, EV_CONTROL_BAD_REQUEST,
			   EVF_I("uid", conn->uid), EVF_I("pid", conn->pid),
			   EVF_I("code", code), EVF_S("reason", reason));
	}
	if (code == CONTROL_CODE_TOO_LONG || code == CONTROL_CODE_VERSION) {
		conn_close_with(conn, code, reason);
		return;
	}
	if (++conn->errors >= CONTROL_MAX_ERRORS) {
		char text[CONTROL_TEXT_MAX];

		snprintf(text, sizeof text, "%.400s; %u bad requests, closing",
			 reason, conn->errors);
		conn_close_with(conn, code, text);
		return;
	}
	{
		char buf[CONTROL_TEXT_MAX + 32];
		size_t n = control_reply_format_short(buf, sizeof buf, code, reason);

		bufferevent_write(conn->bev, buf, n);
		conn_arm_deadline(conn);
	}
}

/* Parses and answers every complete request in the input, one at a time,
 * while the output stays under CONTROL_OUTPUT_HIGH. */
static void conn_process(struct control_conn *conn)
{
	struct evbuffer *in = bufferevent_get_input(conn->bev);
	struct evbuffer *out = bufferevent_get_output(conn->bev);
	char chunk[CONTROL_LINE_MAX], reason[CONTROL_TEXT_MAX];
	struct control_request req;

	while (!conn->closing && conn->deferred == NULL &&
	       evbuffer_get_length(out) < CONTROL_OUTPUT_HIGH) {
		ev_ssize_t n = evbuffer_copyout(in, chunk, sizeof chunk);
		enum control_parse r;
		size_t used = 0;
		int code = 0;

		if (n <= 0)
			break;
		r = control_req_parse(&conn->parser, chunk, (size_t)n, &used,
				      &req, &code, reason, sizeof reason);
		evbuffer_drain(in, used);
		if (r == CONTROL_PARSE_OK)
			conn_dispatch(conn, &req);
		else if (r == CONTROL_PARSE_ERROR)
			conn_bad_request(conn, code, reason);
	}
	if (!conn->closing && evbuffer_get_length(out) >= CONTROL_OUTPUT_HIGH)
		bufferevent_disable(conn->bev, EV_READ);
}

static void conn_read_cb(struct bufferevent *bev, void *arg)
{
	(void)bev;
	conn_process(arg);
}

static void conn_write_cb(struct bufferevent *bev, void *arg)
{
	struct control_conn *conn = arg;

	if (conn->closing) {
		conn_free(conn);
		return;
	}
	/* Output drained: take the requests we stopped reading. */
	bufferevent_enable(bev, EV_READ);
	conn_process(conn);
}

/* True when the peer closed its socket (POLLHUP), not just its sending
 * side (shutdown(SHUT_WR), which still waits for the answer). */
static bool peer_gone(struct bufferevent *bev)
{
	struct pollfd pfd = { .fd = bufferevent_getfd(bev), .events = POLLOUT };

	return poll(&pfd, 1, 0) == 1 && (pfd.revents & (POLLHUP | POLLERR)) != 0;
}

static void conn_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct control_conn *conn = arg;

	if ((what & BEV_EVENT_EOF) && !(what & BEV_EVENT_WRITING) &&
	    conn->deferred != NULL && !peer_gone(bev)) {
		/* Half-closed while a reply is deferred: send it, then close. */
		bufferevent_disable(bev, EV_READ);
		conn->eof = true;
		return;
	}
	if ((what & BEV_EVENT_EOF) && !(what & BEV_EVENT_WRITING) &&
	    evbuffer_get_length(bufferevent_get_output(bev)) > 0) {
		/* The peer stopped sending; let it have its answers. */
		bufferevent_disable(bev, EV_READ);
		event_del(conn->deadline);
		conn->closing = true;
		return;
	}
	conn_free(conn);
}

static void conn_deadline_cb(evutil_socket_t fd, short what, void *arg)
{
	struct control_conn *conn = arg;
	struct control *c = conn->c;
	char text[96];

	(void)fd;
	(void)what;

	evlog_emit(c->log, EV_CONTROL_REQUEST_TIMEOUT, EVF_I("uid", conn->uid),
		   EVF_I("pid", conn->pid), EVF_I("timeout", c->auth.timeout_ms));
	snprintf(text, sizeof text, "no complete request within %u ms",
		 c->auth.timeout_ms);
	conn_close_with(conn, CONTROL_CODE_TIMEOUT, text);
}

static struct control_conn *conn_new(struct control *c, int fd,
				     const struct ucred *cred)
{
	struct control_conn *conn = calloc(1, sizeof *conn);
	struct timeval wtv = { .tv_sec = c->auth.timeout_ms / 1000,
			       .tv_usec = (c->auth.timeout_ms % 1000) * 1000 };

	if (!conn)
		return NULL;
	conn->c = c;
	conn->uid = cred->uid;
	conn->pid = cred->pid;
	control_req_parser_init(&conn->parser);
	conn->bev = bufferevent_socket_new(c->base, fd, BEV_OPT_CLOSE_ON_FREE);
	conn->deadline = evtimer_new(c->base, conn_deadline_cb, conn);
	if (!conn->bev || !conn->deadline) {
		if (conn->deadline)
			event_free(conn->deadline);
		if (conn->bev)
			bufferevent_free(conn->bev);  /* closes fd */
		else
			close(fd);
		free(conn);
		return NULL;
	}
	bufferevent_setcb(conn->bev, conn_read_cb, conn_write_cb, conn_event_cb, conn);
	/* Bounds what a peer can pile up while its request is deferred. */
	bufferevent_setwatermark(conn->bev, EV_READ, 0, CONTROL_INPUT_HIGH);
	/* The request deadline is our own timer (a read timeout restarts on
	 * every byte, so a trickling peer would never time out); the write
	 * timeout bounds a peer that does not read its answer. */
	bufferevent_set_timeouts(conn->bev, NULL, &wtv);
	bufferevent_enable(conn->bev, EV_READ | EV_WRITE);
	LIST_INSERT_HEAD(&c->conns, conn, link);
	c->n_conns++;
	conn_arm_deadline(conn);
	return conn;
}

/* ---- listener ---------------------------------------------------------- */

static void control_accept_cb(struct evconnlistener *lev, evutil_socket_t fd,
			      struct sockaddr *sa, int salen, void *arg)
{
	struct control *c = arg;
	struct ucred cred;
	socklen_t len = sizeof cred;
	char text[CONTROL_TEXT_MAX];
	size_t have;

	(void)lev;
	(void)sa;
	(void)salen;

	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
		evlog_emit(c->log, EV_CONTROL_PEERCRED_FAILED,
			   EVF_S("reason", strerror(errno)));
		close(fd);
		return;
	}
	if (!control_authorized(c, fd, &cred)) {
		const char *g = c->auth.group_name ? c->auth.group_name : "(none configured)";

		evlog_emit(c->log, EV_CONTROL_PEER_REFUSED, EVF_I("uid", cred.uid),
			   EVF_I("pid", cred.pid), EVF_S("group", g));
		snprintf(text, sizeof text,
			 "permission denied: uid %u is not root, carrierd's user or a member of group %s",
			 (unsigned)cred.uid, g);
		control_refuse_fd(fd, CONTROL_CODE_DENIED, text);
		return;
	}
	have = control_count_uid(c, cred.uid);
	if (have >= c->auth.max_per_uid) {
		evlog_emit(c->log, EV_CONTROL_PER_UID_LIMIT, EVF_I("uid", cred.uid),
			   EVF_I("pid", cred.pid), EVF_I("count", have),
			   EVF_I("max", c->auth.max_per_uid));
		snprintf(text, sizeof text,
			 "too many control connections for uid %u (%zu open, control.max_per_uid %u)",
			 (unsigned)cred.uid, have, c->auth.max_per_uid);
		control_refuse_fd(fd, CONTROL_CODE_TOO_MANY, text);
		return;
	}
	if (!conn_new(c, fd, &cred))
		evlog_emit(c->log, EV_CONTROL_ACCEPT_FAILED,
			   EVF_S("path", c->path), EVF_S("reason", "out of memory"));
}

static void control_accept_error_cb(struct evconnlistener *lev, void *arg)
{
	struct control *c = arg;
	int e = EVUTIL_SOCKET_ERROR();
	struct timeval tv = { .tv_sec = CONTROL_PAUSE_SECONDS };

	if (e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM) {
		/* The pending connection stays readable: accepting again now
		 * would spin the loop.  Pause, then try again. */
		evconnlistener_disable(lev);
		event_add(c->resume, &tv);
		evlog_emit(c->log, EV_CONTROL_ACCEPT_PAUSED, EVF_S("path", c->path),
			   EVF_S("reason", strerror(e)),
			   EVF_I("seconds", CONTROL_PAUSE_SECONDS));
		return;
	}
	evlog_emit(c->log, EV_CONTROL_ACCEPT_FAILED, EVF_S("path", c->path),
		   EVF_S("reason", strerror(e)));
}

static void control_resume_cb(evutil_socket_t fd, short what, void *arg)
{
	struct control *c = arg;

	(void)fd;
	(void)what;
	evconnlistener_enable(c->lev);
}

struct control *control_new(struct event_base *base, const char *path,
			    const struct control_auth *auth,
			    const struct control_handlers *h, void *h_arg,
			    struct evlog *log, char *err, size_t errlen)
{
	struct control *c = calloc(1, sizeof *c);
	int fd = -1;

	if (!c || !(c->path = strdup(path)) || !(c->rep = control_reply_new())) {
		set_err(err, errlen, "out of memory");
		goto fail;
	}
	c->base = base;
	c->log = log;
	c->auth = *auth;
	if (!c->auth.max_per_uid)
		c->auth.max_per_uid = CONTROL_MAX_PER_UID_DEFAULT;
	if (!c->auth.timeout_ms)
		c->auth.timeout_ms = CONTROL_TIMEOUT_MS_DEFAULT;
	if (h)
		c->h = *h;
	c->h_arg = h_arg;
	LIST_INIT(&c->conns);
	LIST_INIT(&c->deferred);
	fd = control_open_socket(c, err, errlen);
	if (fd < 0)
		goto fail;
	c->resume = evtimer_new(base, control_resume_cb, c);
	c->lev = evconnlistener_new(base, control_accept_cb, c,
				    LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC,
				    -1, fd);
	if (!c->resume || !c->lev) {
		set_err(err, errlen, "cannot set up the listener on the event loop");
		if (!c->lev)
			close(fd);
		unlink(c->path);
		goto fail;
	}
	evconnlistener_set_error_cb(c->lev, control_accept_error_cb);
	evlog_emit(log, EV_CONTROL_LISTENING, EVF_S("path", path),
		   EVF_I("uid", auth->owner_uid == (uid_t)-1 ? (long long)geteuid()
							       : (long long)auth->owner_uid),
		   EVF_I("gid", auth->group == (gid_t)-1 ? (long long)getegid()
							   : (long long)auth->group));
	return c;
fail:
	evlog_emit(log, EV_CONTROL_SOCKET_FAILED, EVF_S("path", path),
		   EVF_S("reason", err && errlen ? err : "unknown"));
	if (c) {
		if (c->lev)
			evconnlistener_free(c->lev);
		if (c->resume)
			event_free(c->resume);
		control_reply_free(&c->rep);
		free(c->path);
		free(c);
	}
	return NULL;
}

static void deferred_release(struct control_deferred *d);

void control_free(struct control **cp)
{
	struct control *c;
	struct stat st;

	if (!cp || !*cp)
		return;
	c = *cp;
	*cp = NULL;
	while (!LIST_EMPTY(&c->conns))
		conn_free(LIST_FIRST(&c->conns));
	while (!LIST_EMPTY(&c->deferred))
		deferred_release(LIST_FIRST(&c->deferred));
	evconnlistener_free(c->lev);
	event_free(c->resume);
	/* Only our own socket: a successor may already have replaced it. */
	if (stat(c->path, &st) == 0 && st.st_dev == c->dev && st.st_ino == c->ino)
		unlink(c->path);
	control_reply_free(&c->rep);
	free(c->path);
	free(c);
}

size_t control_connections(const struct control *c)
{
	return c->n_conns;
}

/* ---- deferred replies -------------------------------------------------- */

static void deferred_free(struct control_deferred *d)
{
	if (d->c != NULL) {
		LIST_REMOVE(d, link);
		d->c->n_deferred--;
	}
	control_reply_free(&d->rep);
	event_free(d->done);
	free(d);
}

/* control_free(): frees a finished handle; an unfinished one (a broken
 * promise of the caller) is left to its finisher, detached. */
static void deferred_release(struct control_deferred *d)
{
	if (atomic_load(&d->finished)) {
		deferred_free(d);
		return;
	}
	LIST_REMOVE(d, link);
	d->c->n_deferred--;
	d->c = NULL;
	d->conn = NULL;
	atomic_store(&d->cancelled, true);
}

/* Loop thread: the finisher's reply is in; send it unless the peer left. */
static void deferred_done_cb(evutil_socket_t fd, short what, void *arg)
{
	struct control_deferred *d = arg;
	struct control_conn *conn = d->conn;

	(void)fd;
	(void)what;
	if (d->c != NULL && conn == NULL)
		evlog_emit(d->c->log, EV_CONTROL_COMMAND, EVF_S("command", d->command),
			   EVF_I("uid", d->uid), EVF_I("pid", d->pid),
			   EVF_I("code", d->rep ? control_reply_code(d->rep) : CONTROL_CODE_FAILED));
	if (conn != NULL) {
		conn->deferred = NULL;
		if (d->rep != NULL)
			conn_send(conn, d->command, d->rep);
		else
			conn_close_with(conn, CONTROL_CODE_FAILED, "out of memory");
		if (conn->eof) {
			conn->closing = true;
			event_del(conn->deadline);
		}
	}
	deferred_free(d);
	/* Requests the peer sent meanwhile. */
	if (conn != NULL && !conn->eof)
		conn_process(conn);
}

struct control_deferred *control_defer(const struct control_call *call)
{
	struct control_conn *conn = call->conn;
	struct control_deferred *d;

	if (conn == NULL || conn->deferred != NULL || (d = calloc(1, sizeof *d)) == NULL)
		return NULL;
	d->done = event_new(conn->c->base, -1, 0, deferred_done_cb, d);
	if (d->done == NULL) {
		free(d);
		return NULL;
	}
	d->c = conn->c;
	d->conn = conn;
	atomic_init(&d->cancelled, false);
	atomic_init(&d->finished, false);
	snprintf(d->command, sizeof d->command, "%s", call->req->command);
	d->uid = conn->uid;
	d->pid = conn->pid;
	LIST_INSERT_HEAD(&d->c->deferred, d, link);
	d->c->n_deferred++;
	conn->deferred = d;
	return d;
}

bool control_deferred_cancelled(const struct control_deferred *d)
{
	return atomic_load(&((struct control_deferred *)d)->cancelled);
}

void control_deferred_finish(struct control_deferred *d, struct control_reply **repp)
{
	d->rep = repp != NULL ? *repp : NULL;
	if (repp != NULL)
		*repp = NULL;
	if (d->rep == NULL && (d->rep = control_reply_new()) != NULL)
		control_reply_status(d->rep, CONTROL_CODE_FAILED, "no answer (out of memory)");
	atomic_store(&d->finished, true);
	/* event_active() is thread-safe with libevent's threading on, and
	 * hands d->rep over to the loop thread under the base's lock. */
	event_active(d->done, 0, 0);
}

size_t control_deferred_count(const struct control *c)
{
	return c->n_deferred;
}

/* ---- client ------------------------------------------------------------ */

static long long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits for `events` on fd until the deadline.  Returns 1 ready, 0 timed
 * out, -1 error. */
static int wait_fd(int fd, short events, long long deadline)
{
	for (;;) {
		struct pollfd pfd = { .fd = fd, .events = events };
		long long left = deadline - now_ms();
		int r;

		if (left <= 0)
			return 0;
		r = poll(&pfd, 1, (int)left);
		if (r < 0 && errno == EINTR)
			continue;
		return r < 0 ? -1 : r > 0;
	}
}

static int client_denied(const char *path, char *err, size_t errlen)
{
	struct group grb, *gr = NULL;
	char buf[4096];
	struct stat st;

	/* The socket's group is the one that may use it (control.group). */
	if (stat(path, &st) == 0 && st.st_gid != 0 &&
	    getgrgid_r(st.st_gid, &grb, buf, sizeof buf, &gr) == 0 && gr)
		set_err(err, errlen, "permission denied on %s: run as root or as a member of group %s",
			path, gr->gr_name);
	else
		set_err(err, errlen, "permission denied on %s: run as root or as a member of the socket's group",
			path);
	return CONTROL_CLIENT_DENIED;
}

static int client_connect(int fd, const char *path, long long deadline,
			  char *err, size_t errlen)
{
	struct sockaddr_un sun;

	if (unix_addr(&sun, path, err, errlen) < 0)
		return CONTROL_CLIENT_FAILED;
	/* A full backlog gives EAGAIN on a Unix socket, with no completion
	 * to wait for: retry until the deadline. */
	while (connect(fd, (struct sockaddr *)&sun, sizeof sun) < 0) {
		switch (errno) {
		case EINTR:
			continue;
		case EAGAIN:
			if (now_ms() >= deadline) {
				set_err(err, errlen, "carrierd at %s accepts no connection (backlog full); it may be wedged",
					path);
				return CONTROL_CLIENT_FAILED;
			}
			poll(NULL, 0, 10);
			continue;
		case ENOENT:
			set_err(err, errlen, "carrierd is not running (no socket at %s)", path);
			return CONTROL_CLIENT_NOT_RUNNING;
		case ECONNREFUSED:
			set_err(err, errlen, "carrierd is not running (%s exists but nobody accepts on it: left by a carrierd that stopped uncleanly)",
				path);
			return CONTROL_CLIENT_NOT_RUNNING;
		case EACCES:
		case EPERM:
			return client_denied(path, err, errlen);
		default:
			set_err(err, errlen, "cannot connect to carrierd at %s: %s",
				path, strerror(errno));
			return CONTROL_CLIENT_FAILED;
		}
	}
	return CONTROL_CLIENT_OK;
}

/* Sends the whole request; a peer that closed first (a refusal) is not an
 * error here: its answer is waiting to be read. */
static int client_send(int fd, const char *buf, size_t len, long long deadline,
		       const char *path, unsigned timeout_ms,
		       char *err, size_t errlen)
{
	size_t off = 0;

	while (off < len) {
		ssize_t n = send(fd, buf + off, len - off, MSG_NOSIGNAL);

		if (n > 0) {
			off += (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EPIPE || errno == ECONNRESET))
			return CONTROL_CLIENT_OK;
		if (n < 0 && errno == EAGAIN && wait_fd(fd, POLLOUT, deadline) > 0)
			continue;
		if (n < 0 && errno != EAGAIN) {
			set_err(err, errlen, "cannot send to carrierd at %s: %s",
				path, strerror(errno));
			return CONTROL_CLIENT_FAILED;
		}
		set_err(err, errlen, "carrierd at %s did not take the request within %u ms; it may be wedged",
			path, timeout_ms);
		return CONTROL_CLIENT_FAILED;
	}
	return CONTROL_CLIENT_OK;
}

static int client_read(int fd, const char *path, unsigned timeout_ms,
		       long long deadline, struct control_response *resp,
		       char *err, size_t errlen)
{
	struct control_resp_parser p;
	char buf[4096], reason[256];
	int rc = CONTROL_CLIENT_FAILED;

	if (control_resp_parser_init(&p) < 0) {
		set_err(err, errlen, "out of memory");
		return rc;
	}
	for (;;) {
		int w = wait_fd(fd, POLLIN, deadline);
		ssize_t n;

		if (w == 0) {
			set_err(err, errlen, "carrierd at %s did not answer within %u ms; it may be wedged",
				path, timeout_ms);
			break;
		}
		if (w < 0) {
			set_err(err, errlen, "poll on %s: %s", path, strerror(errno));
			break;
		}
		n = recv(fd, buf, sizeof buf, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			set_err(err, errlen, "carrierd at %s closed the connection before answering%s%s",
				path, n < 0 ? ": " : "", n < 0 ? strerror(errno) : "");
			break;
		}
		for (size_t off = 0; off < (size_t)n;) {
			size_t used = 0;
			enum control_parse r = control_resp_parse(&p, buf + off, (size_t)n - off,
								  &used, resp, reason, sizeof reason);

			off += used;
			if (r == CONTROL_PARSE_OK) {
				rc = CONTROL_CLIENT_OK;
				goto out;
			}
			if (r == CONTROL_PARSE_ERROR) {
				set_err(err, errlen, "bad answer from carrierd at %s: %s", path, reason);
				goto out;
			}
		}
	}
out:
	control_resp_parser_free(&p);
	return rc;
}

int control_request_timeout(const char *path, const char *command_line,
			    unsigned timeout_ms, struct control_response *resp,
			    char *err, size_t errlen)
{
	long long deadline = now_ms() + timeout_ms;
	char line[CONTROL_LINE_MAX + 1];
	int len, fd, rc;

	memset(resp, 0, sizeof *resp);
	len = control_req_format(line, sizeof line, command_line, err, errlen);
	if (len < 0)
		return CONTROL_CLIENT_FAILED;
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0) {
		set_err(err, errlen, "socket: %s", strerror(errno));
		return CONTROL_CLIENT_FAILED;
	}
	rc = client_connect(fd, path, deadline, err, errlen);
	if (rc == CONTROL_CLIENT_OK)
		rc = client_send(fd, line, (size_t)len, deadline, path, timeout_ms,
				 err, errlen);
	if (rc == CONTROL_CLIENT_OK)
		rc = client_read(fd, path, timeout_ms, deadline, resp, err, errlen);
	close(fd);
	return rc;
}

int control_request(const char *path, const char *command_line,
		    struct control_response *resp, char *err, size_t errlen)
{
	return control_request_timeout(path, command_line,
				       CONTROL_TIMEOUT_MS_DEFAULT, resp, err, errlen);
}
