/*
 * carrierd: the daemon's main.  Wires the modules together and owns the
 * lifecycle: arguments, configuration, startup checks in a fixed order
 * (configuration, network stack, host name, spool, counters, control
 * socket), binding, dropping root, readiness, signals (TERM/INT drain,
 * HUP reload, USR1 reopen logs) and the drain on exit.
 *
 * Every startup failure is an event from events.def and its own exit
 * status (diag.h): carrierd starts, or it says exactly why not.
 *
 * Threads: main's thread runs the event loop; modules start their own
 * workers (the spool's commit thread, the delivery worker, the SMTP
 * server's password verifiers at the first AUTH against a password file).
 */
#include <errno.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/thread.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "conf.h"
#include "control.h"
#include "counters.h"
#include "counters_ctl.h"
#include "queue_ctl.h"
#include "diag.h"
#include "dns.h"
#include "evlog.h"
#include "delivery.h"
#include "metrics.h"
#include "passwd.h"
#include "route.h"
#include "smtp_server.h"
#include "smtp_trace.h"
#include "spool.h"
#include "tls.h"
#include "track.h"

/* Exit statuses beyond diag.h's checks. */
enum {
	CARRIERD_EXIT_USER = 21,        /* server.user missing or root */
	CARRIERD_EXIT_PRIVDROP = 22,    /* setuid/setgid failed */
	CARRIERD_EXIT_PIDFILE = 23,     /* pidfile unwritable or held */
	CARRIERD_EXIT_LOOP = 24,        /* event loop or daemonizing failed */
};

struct options {
	const char *conf_path;          /* NULL: embedded default */
	bool foreground;
	bool check_only;
	bool print_conf;
};

struct daemon {
	struct options opt;
	struct event_base *base;
	struct evlog *log;
	struct carrier_conf *conf;
	struct counters *ctr;
	struct spool *spool;
	struct control *control;
	struct control_auth auth;
	struct smtp_server *smtp;
	struct smtp_trace *trace;       /* `carrier trace`; NULL on OOM */
	struct delivery *delivery;
	struct metrics *metrics;
	struct route_table *routes;
	struct dns *dns;
	struct track *track;
	struct queue_ctl qctl;
	struct evconnlistener **listeners;
	unsigned *listener_flags;       /* SMTP_SERVER_* per listener */
	size_t n_listeners;
	struct tls *tls;                /* until handed to the server */
	struct passwd_db *passwd;       /* until handed to the server */
	struct event *signals[4];
	struct event *drain_timer;
	time_t started;
	time_t drain_deadline;
	int pidfile_fd;
	int ready_fd;                   /* parent waits on it when daemonizing */
	char start_dir[PATH_MAX];
	uid_t run_uid;
	gid_t run_gid;
	bool drop_privileges;
};

static void usage(FILE *out)
{
	fprintf(out,
		"usage: carrierd [-f] [-c FILE] [-n] [-p] [-d] [-V]\n"
		"  -c FILE  configuration file (default: the embedded development default)\n"
		"  -f       stay in the foreground, events also on stderr\n"
		"  -n       check the configuration and exit (0 when valid)\n"
		"  -p       print the effective configuration and exit\n"
		"  -d       print the embedded default configuration and exit\n"
		"  -V       print the version and exit\n");
}

static int parse_args(int argc, char **argv, struct options *o)
{
	int c;

	while ((c = getopt(argc, argv, "c:fnpdVh")) != -1) {
		switch (c) {
		case 'c': o->conf_path = optarg; break;
		case 'f': o->foreground = true; break;
		case 'n': o->check_only = true; break;
		case 'p': o->print_conf = true; break;
		case 'd': fputs(conf_embedded_default(), stdout); exit(0);
		case 'V': printf("carrierd %s\n", CARRIER_VERSION); exit(0);
		case 'h': usage(stdout); exit(0);
		default: usage(stderr); return -1;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "carrierd: unexpected argument '%s'\n", argv[optind]);
		usage(stderr);
		return -1;
	}
	return 0;
}

/* ---- configuration -------------------------------------------------------- */

static void report_conf_errors(struct daemon *d, const struct conf_errors *errs,
			       const char *file)
{
	for (size_t i = 0; i < errs->n; i++) {
		const struct conf_error *e = &errs->v[i];

		if (e->line == 0 && e->key[0] == '\0')
			evlog_emit(d->log, EV_CONFIG_UNREADABLE, EVF_S("file", e->file),
				   EVF_S("reason", e->problem));
		else
			evlog_emit(d->log, EV_CONFIG_ERROR, EVF_S("file", e->file),
				   EVF_I("line", e->line), EVF_S("key", e->key),
				   EVF_S("problem", e->problem));
	}
	(void)file;
}

static void apply_log_conf(struct daemon *d, const struct carrier_conf *c)
{
	char err[512];

	for (size_t i = 0; i < EVLOG_N_CATEGORIES; i++)
		evlog_set_level(d->log, (enum evlog_category)i, c->levels[i]);
	evlog_set_syslog(d->log, c->log_syslog);
	if (evlog_open_json(d->log, c->log_json, err, sizeof err) < 0)
		evlog_emit(d->log, EV_CORE_LOG_OPEN_FAILED, EVF_S("path", c->log_json),
			   EVF_S("reason", err));
}

/* -n: plain FILE:LINE lines on stderr, for people and editors. */
static int check_only(const struct options *o)
{
	struct conf_errors errs = { 0 };
	struct carrier_conf *c = conf_load(o->conf_path, &errs);
	struct route_table *rt;
	char line[1024];

	if (c == NULL) {
		for (size_t i = 0; i < errs.n; i++) {
			conf_error_format(&errs.v[i], line, sizeof line);
			fprintf(stderr, "%s\n", line);
		}
		fprintf(stderr, "%s: %zu error%s\n", o->conf_path ? o->conf_path : "<embedded>",
			errs.n, errs.n == 1 ? "" : "s");
		conf_errors_clear(&errs);
		return DIAG_EXIT_CONFIG;
	}
	rt = route_table_new(c, &errs);
	if (rt == NULL) {
		for (size_t i = 0; i < errs.n; i++) {
			conf_error_format(&errs.v[i], line, sizeof line);
			fprintf(stderr, "%s\n", line);
		}
		fprintf(stderr, "%s: %zu error%s\n", c->path, errs.n, errs.n == 1 ? "" : "s");
		conf_errors_clear(&errs);
		conf_free(&c);
		return DIAG_EXIT_CONFIG;
	}
	route_table_free(&rt);
	if (o->print_conf)
		conf_dump(c, stdout);
	else
		printf("%s: configuration OK\n", c->path);
	conf_free(&c);
	return 0;
}

/*
 * Loads the configuration and builds its routing table: both are the
 * configuration, and both report FILE:LINE errors.  Returns 0, or the
 * number of errors (each already emitted as an event).
 */
static size_t load_conf(struct daemon *d, struct carrier_conf **conf_r,
			struct route_table **routes_r)
{
	struct conf_errors errs = { 0 };
	size_t n = 0;

	*routes_r = NULL;
	*conf_r = conf_load(d->opt.conf_path, &errs);
	if (*conf_r != NULL && (*routes_r = route_table_new(*conf_r, &errs)) == NULL)
		conf_free(conf_r);
	if (*conf_r == NULL) {
		report_conf_errors(d, &errs, d->opt.conf_path);
		n = errs.n ? errs.n : 1;
	} else {
		route_table_set_log(*routes_r, d->log);
	}
	conf_errors_clear(&errs);
	return n;
}

/* ---- identity ----------------------------------------------------------- */

static int resolve_user(struct daemon *d)
{
	struct passwd *pw;

	if (geteuid() != 0) {
		d->drop_privileges = false;
		d->run_uid = geteuid();
		d->run_gid = getegid();
		evlog_emit(d->log, EV_CORE_NOT_ROOT, EVF_I("uid", d->run_uid),
			   EVF_S("user", d->conf->user));
		return 0;
	}
	pw = getpwnam(d->conf->user);
	if (pw == NULL) {
		evlog_emit(d->log, EV_CORE_USER_UNKNOWN, EVF_S("user", d->conf->user));
		return CARRIERD_EXIT_USER;
	}
	if (pw->pw_uid == 0) {
		evlog_emit(d->log, EV_CORE_USER_IS_ROOT, EVF_S("user", d->conf->user));
		return CARRIERD_EXIT_USER;
	}
	d->drop_privileges = true;
	d->run_uid = pw->pw_uid;
	d->run_gid = pw->pw_gid;
	return 0;
}

static int privdrop_fail(struct daemon *d, const char *step)
{
	evlog_emit(d->log, EV_CORE_PRIVDROP_FAILED, EVF_S("user", d->conf->user),
		   EVF_S("step", step), EVF_S("reason", strerror(errno)));
	return CARRIERD_EXIT_PRIVDROP;
}

static int drop_privileges(struct daemon *d)
{
	if (!d->drop_privileges)
		return 0;
	if (setgroups(1, &d->run_gid) < 0)
		return privdrop_fail(d, "setgroups");
	if (setresgid(d->run_gid, d->run_gid, d->run_gid) < 0)
		return privdrop_fail(d, "setresgid");
	if (setresuid(d->run_uid, d->run_uid, d->run_uid) < 0)
		return privdrop_fail(d, "setresuid");
	/* Belt and braces: getting root back must be impossible now. */
	if (setuid(0) == 0 || geteuid() == 0) {
		errno = EPERM;
		return privdrop_fail(d, "verify that root cannot be regained");
	}
	return 0;
}

/* ---- pidfile and readiness ------------------------------------------------ */

static int mkdir_parent(const char *path)
{
	char dir[PATH_MAX];
	char *slash;

	snprintf(dir, sizeof dir, "%s", path);
	slash = strrchr(dir, '/');
	if (slash == NULL || slash == dir)
		return 0;
	*slash = '\0';
	for (char *p = dir + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(dir, 0755) < 0 && errno != EEXIST)
			return -1;
		*p = '/';
	}
	return mkdir(dir, 0755) < 0 && errno != EEXIST ? -1 : 0;
}

static int pidfile_open(struct daemon *d)
{
	const char *path = d->conf->pidfile;
	char reason[320], old[32] = "";
	ssize_t n;

	d->pidfile_fd = -1;
	if (path[0] == '\0')
		return 0;
	if (mkdir_parent(path) < 0) {
		snprintf(reason, sizeof reason, "cannot create its directory: %s", strerror(errno));
		goto fail;
	}
	d->pidfile_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
	if (d->pidfile_fd < 0) {
		snprintf(reason, sizeof reason, "cannot open: %s", strerror(errno));
		goto fail;
	}
	if (flock(d->pidfile_fd, LOCK_EX | LOCK_NB) < 0) {
		n = pread(d->pidfile_fd, old, sizeof old - 1, 0);
		old[n > 0 ? n : 0] = '\0';
		old[strcspn(old, "\n")] = '\0';
		snprintf(reason, sizeof reason, "locked by a running carrierd (pid %s)",
			 old[0] ? old : "unknown");
		goto fail;
	}
	return 0;
fail:
	evlog_emit(d->log, EV_CORE_PIDFILE_FAILED, EVF_S("path", path), EVF_S("reason", reason));
	if (d->pidfile_fd >= 0)
		close(d->pidfile_fd);
	d->pidfile_fd = -1;
	return CARRIERD_EXIT_PIDFILE;
}

static void pidfile_write(struct daemon *d)
{
	char buf[32];
	int len;

	if (d->pidfile_fd < 0)
		return;
	len = snprintf(buf, sizeof buf, "%d\n", (int)getpid());
	if (ftruncate(d->pidfile_fd, 0) < 0 || pwrite(d->pidfile_fd, buf, (size_t)len, 0) != len)
		evlog_emit(d->log, EV_CORE_PIDFILE_FAILED, EVF_S("path", d->conf->pidfile),
			   EVF_S("reason", strerror(errno)));
	if (d->drop_privileges && fchown(d->pidfile_fd, d->run_uid, d->run_gid) < 0)
		return;     /* only needed to empty it at exit; harmless */
}

static void pidfile_remove(struct daemon *d)
{
	if (d->pidfile_fd < 0)
		return;
	/* After dropping root the directory may not be ours: empty the file
	 * instead, the lock (not the content) tells whether we run. */
	if (unlink(d->conf->pidfile) < 0 && ftruncate(d->pidfile_fd, 0) < 0)
		(void)0;
	close(d->pidfile_fd);
	d->pidfile_fd = -1;
}

/* sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET. */
static void notify_service_manager(struct daemon *d, const char *msg)
{
	const char *path = getenv("NOTIFY_SOCKET");
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	size_t len;
	int fd;

	if (path == NULL || (path[0] != '/' && path[0] != '@'))
		return;
	len = strlen(path);
	if (len >= sizeof sun.sun_path)
		return;
	memcpy(sun.sun_path, path, len);
	if (sun.sun_path[0] == '@')
		sun.sun_path[0] = '\0';
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || sendto(fd, msg, strlen(msg), MSG_NOSIGNAL, (struct sockaddr *)&sun,
			     (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len)) < 0)
		evlog_emit(d->log, EV_CORE_NOTIFY_FAILED, EVF_S("socket", path),
			   EVF_S("reason", strerror(errno)));
	if (fd >= 0)
		close(fd);
}

/*
 * Daemonizing: the parent stays until the child is ready or has failed,
 * and exits with the child's status, so `carrierd` in a shell or an init
 * script reports a failed start instead of a false success.  The child
 * keeps stderr until ready so startup events reach the terminal.
 */
static int daemonize(struct daemon *d)
{
	int pfd[2];
	pid_t pid;
	char c;

	if (pipe2(pfd, O_CLOEXEC) < 0 || (pid = fork()) < 0) {
		evlog_emit(d->log, EV_CORE_DAEMONIZE_FAILED, EVF_S("reason", strerror(errno)));
		return CARRIERD_EXIT_LOOP;
	}
	if (pid > 0) {
		int status;

		close(pfd[1]);
		if (read(pfd[0], &c, 1) == 1)
			_exit(0);
		if (waitpid(pid, &status, 0) == pid && WIFEXITED(status))
			_exit(WEXITSTATUS(status));
		_exit(1);
	}
	close(pfd[0]);
	d->ready_fd = pfd[1];
	if (setsid() < 0) {
		evlog_emit(d->log, EV_CORE_DAEMONIZE_FAILED, EVF_S("reason", strerror(errno)));
		return CARRIERD_EXIT_LOOP;
	}
	return 0;
}

static void detach_stdio(struct daemon *d)
{
	int fd;

	if (d->ready_fd < 0)
		return;
	if (write(d->ready_fd, "r", 1) < 0)
		(void)0;
	close(d->ready_fd);
	d->ready_fd = -1;
	evlog_set_stderr(d->log, false);
	fd = open("/dev/null", O_RDWR);
	if (fd >= 0) {
		dup2(fd, STDIN_FILENO);
		dup2(fd, STDOUT_FILENO);
		dup2(fd, STDERR_FILENO);
		if (fd > STDERR_FILENO)
			close(fd);
	}
}

/* ---- listeners ---------------------------------------------------------- */

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd,
		      struct sockaddr *sa, int salen, void *arg)
{
	struct daemon *d = arg;
	unsigned flags = 0;

	for (size_t i = 0; i < d->n_listeners; i++)
		if (d->listeners[i] == l)
			flags = d->listener_flags[i];
	smtp_server_accept_on(d->smtp, fd, sa, (socklen_t)salen, flags);
}

static void listener_resume_cb(evutil_socket_t fd, short what, void *arg)
{
	evconnlistener_enable(arg);
}

/* Out of descriptors: pause accepting for a second rather than spin on an
 * accept() that keeps failing; sessions that close make room. */
static void accept_error_cb(struct evconnlistener *l, void *arg)
{
	struct daemon *d = arg;
	struct timeval tv = { 1, 0 };
	int err = EVUTIL_SOCKET_ERROR();

	if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) {
		const char *name = "?";

		for (size_t i = 0; i < d->n_listeners; i++)
			if (d->listeners[i] == l)
				name = d->conf->listen[i].text;
		evlog_emit(d->log, EV_CORE_ACCEPT_PAUSED, EVF_S("listen", name),
			   EVF_S("reason", strerror(err)), EVF_I("seconds", tv.tv_sec));
		evconnlistener_disable(l);
		event_base_once(d->base, -1, EV_TIMEOUT, listener_resume_cb, l, &tv);
	}
}

static int open_listeners(struct daemon *d, int *fds)
{
	int rc = 0;

	for (size_t i = 0; i < d->conf->n_listen; i++) {
		fds[i] = -1;
		int r = diag_bind_listener(&d->conf->listen[i], d->log, &fds[i]);

		if (r != 0 && rc == 0)
			rc = r;     /* go on: one start names every bad listener */
	}
	return rc;
}

static int start_listeners(struct daemon *d, int *fds)
{
	d->listeners = calloc(d->conf->n_listen, sizeof *d->listeners);
	d->listener_flags = calloc(d->conf->n_listen, sizeof *d->listener_flags);
	if (d->listeners == NULL || d->listener_flags == NULL)
		return -1;
	for (size_t i = 0; i < d->conf->n_listen; i++) {
		const struct conf_listen *cl = &d->conf->listen[i];

		d->listener_flags[i] = (cl->role == CONF_ROLE_SUBMISSION ? SMTP_SERVER_SUBMISSION : 0) |
				       (cl->implicit_tls ? SMTP_SERVER_IMPLICIT_TLS : 0);
		d->listeners[i] = evconnlistener_new(d->base, accept_cb, d,
						     LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC,
						     0, fds[i]);   /* 0: already listening (diag, backlog 1024); -1 would re-listen at 128 */
		if (d->listeners[i] == NULL)
			return -1;
		fds[i] = -1;
		d->n_listeners++;
		evconnlistener_set_error_cb(d->listeners[i], accept_error_cb);
	}
	return 0;
}

static void stop_listeners(struct daemon *d)
{
	for (size_t i = 0; i < d->n_listeners; i++)
		evconnlistener_free(d->listeners[i]);
	free(d->listeners);
	free(d->listener_flags);
	d->listeners = NULL;
	d->listener_flags = NULL;
	d->n_listeners = 0;
}

static void listeners_text(const struct carrier_conf *c, char *buf, size_t size)
{
	size_t off = 0;

	buf[0] = '\0';
	for (size_t i = 0; i < c->n_listen && off < size; i++)
		off += (size_t)snprintf(buf + off, size - off, "%s%s", i ? ", " : "",
					c->listen[i].text);
}

/* ---- reload -------------------------------------------------------------- */

static bool restart_key_changed(const struct carrier_conf *a, const struct carrier_conf *b,
				char *what, size_t size)
{
	char la[1024], lb[1024];

	listeners_text(a, la, sizeof la);
	listeners_text(b, lb, sizeof lb);
	snprintf(what, size, "%s%s%s%s%s%s",
		 strcmp(la, lb) ? "server.listen " : "",
		 strcmp(a->user, b->user) ? "server.user " : "",
		 strcmp(a->pidfile, b->pidfile) ? "server.pidfile " : "",
		 strcmp(a->spool_path, b->spool_path) ? "spool.path " : "",
		 strcmp(a->control_socket, b->control_socket) ? "control.socket " : "",
		 strcmp(a->shm_name, b->shm_name) ? "counters.shm_name " : "");
	return what[0] != '\0';
}

/* Descriptors besides the SMTP sessions: listeners, the spool, the event
 * and tracking logs, control and metrics clients, Maildir files being
 * written.  Outbound deliveries come on top (max_deliveries). */
#define FD_RESERVE 64
/* A soft limit carrierd never raises itself beyond: an "unlimited" or huge
 * hard limit does not make a million sessions sensible. */
#define FD_LIMIT_CAP 1048576

static long long rlim_int(rlim_t v)
{
	return v == RLIM_INFINITY ? -1 : (long long)v;
}

/* Warns when the open files limit is too low for the connection limits:
 * past it, accept() fails and the listener pauses (CORE_ACCEPT_PAUSED). */
static void fd_limit_check(struct daemon *d, const struct carrier_conf *c)
{
	struct rlimit rl;
	unsigned long long reserve = FD_RESERVE + (unsigned long long)c->max_deliveries;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY)
		return;
	if ((unsigned long long)rl.rlim_cur < c->max_connections + reserve)
		evlog_emit(d->log, EV_CORE_FD_LIMIT_LOW, EVF_I("limit", rl.rlim_cur),
			   EVF_I("max", c->max_connections), EVF_I("reserve", reserve));
}

/* What a server is expected to do: raise the soft limit on open files to
 * the hard one (systemd's default soft limit is 1024, far below
 * smtp.max_connections). */
static void raise_fd_limit(struct daemon *d)
{
	struct rlimit rl;
	rlim_t was, want;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return;
	was = rl.rlim_cur;
	want = rl.rlim_max;
	if (want == RLIM_INFINITY || want > FD_LIMIT_CAP)
		want = FD_LIMIT_CAP;
	if (was != RLIM_INFINITY && was < want) {
		rl.rlim_cur = want;
		if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
			rl.rlim_cur = was;
	}
	evlog_emit(d->log, EV_CORE_FD_LIMIT, EVF_I("limit", rlim_int(rl.rlim_cur)),
		   EVF_I("was", rlim_int(was)), EVF_I("hard", rlim_int(rl.rlim_max)));
	fd_limit_check(d, d->conf);
}

/* Certificates and passwords are re-read on every reload; a failure keeps
 * the ones in use (sessions keep their own SSL objects either way). */
static void reload_tls_auth(struct daemon *d, const struct carrier_conf *nc)
{
	char err[1024], path[PATH_MAX];
	struct tls *t = tls_new(nc, path, sizeof path, err, sizeof err);
	struct passwd_db *db = NULL;

	if (t == NULL && err[0])
		evlog_emit(d->log, EV_TLS_RELOAD_FAILED, EVF_S("path", path), EVF_S("reason", err));
	else {
		if (t != NULL)
			evlog_emit(d->log, EV_TLS_RELOADED, EVF_S("cert", nc->tls_cert),
				   EVF_I("sni", tls_sni_count(t)));
		smtp_server_set_tls(d->smtp, t);
	}
	if (nc->auth_passwd_file[0] && (db = passwd_db_load(nc->auth_passwd_file, err, sizeof err)) == NULL) {
		evlog_emit(d->log, EV_AUTH_PASSWD_RELOAD_FAILED, EVF_S("reason", err));
		return;
	}
	if (db != NULL)
		evlog_emit(d->log, EV_AUTH_PASSWD_LOADED, EVF_S("path", nc->auth_passwd_file),
			   EVF_I("users", passwd_db_count(db)));
	smtp_server_set_passwd(d->smtp, db);
}

/* Returns 0 when the new configuration is in force, else the error count. */
static size_t reload(struct daemon *d)
{
	struct carrier_conf *nc, *old;
	struct route_table *nr;
	char what[256];
	size_t n;
	int moved = chdir(d->start_dir);

	/* Relative paths in the file mean what they meant at start. */
	n = load_conf(d, &nc, &nr);
	if (moved == 0 && !d->opt.foreground && chdir("/") < 0)
		(void)0;
	if (n > 0) {
		evlog_emit(d->log, EV_CORE_RELOAD_REFUSED, EVF_S("config", d->conf->path),
			   EVF_I("errors", n));
		return n;
	}
	if (restart_key_changed(d->conf, nc, what, sizeof what))
		evlog_emit(d->log, EV_CORE_RELOAD_PARTIAL, EVF_S("keys", what));
	apply_log_conf(d, nc);
	old = d->conf;
	d->conf = nc;
	if (d->smtp) {
		reload_tls_auth(d, nc);
		smtp_server_set_conf(d->smtp, nc);
	}
	/* Queued recipients keep only addresses; the next attempt routes them
	 * with the new table, so nothing is lost or bounced by a reload.  The
	 * runner lets go of the old table before it is freed. */
	if (d->delivery)
		delivery_set_conf(d->delivery, nc, nr);
	route_table_free(&d->routes);
	d->routes = nr;
	/* Keys that need a restart keep their running values in effect;
	 * the modules holding them copied what they needed at start. */
	conf_free(&old);
	evlog_emit(d->log, EV_CORE_RELOADED, EVF_S("config", d->conf->path));
	fd_limit_check(d, d->conf);
	return 0;
}

/* ---- control commands ----------------------------------------------------- */

static void ctl_status(void *arg, const struct control_call *call, struct control_reply *rep)
{
	struct daemon *d = arg;

	control_reply_add(rep, CONTROL_STATUS_PID, "%d", (int)getpid());
	control_reply_add(rep, CONTROL_STATUS_VERSION, "%s", CARRIER_VERSION);
	control_reply_add(rep, CONTROL_STATUS_UPTIME, "%lld", (long long)(time(NULL) - d->started));
	control_reply_add(rep, CONTROL_STATUS_STARTED, "%lld", (long long)d->started);
	for (size_t i = 0; i < d->conf->n_listen; i++)
		control_reply_add(rep, CONTROL_STATUS_LISTENER, "%s", d->conf->listen[i].text);
	control_reply_add(rep, CONTROL_STATUS_SPOOL, "%s", d->conf->spool_path);
	control_reply_add(rep, CONTROL_STATUS_CONFIG, "%s", d->conf->path);
	control_reply_add(rep, CONTROL_STATUS_USER, "%s",
			  d->drop_privileges ? d->conf->user : "(not dropped: not started as root)");
	control_reply_add(rep, "sessions", "%zu", d->smtp ? smtp_server_sessions(d->smtp) : 0);
	control_reply_add(rep, "counters", "%s",
			  counters_shared(d->ctr) ? d->conf->shm_name : "private (shared memory unavailable)");
	control_reply_add(rep, "state", "%s", d->drain_timer ? "draining" : "running");
}

/* log-level [CATEGORY LEVEL]: show or change a diagnostic level. */
static void ctl_log_level(void *arg, const struct control_call *call, struct control_reply *rep)
{
	struct daemon *d = arg;
	const struct control_request *req = call->req;
	enum evlog_category cat;
	enum evlog_level lvl;

	if (req->argc == 0) {
		for (size_t i = 0; i < EVLOG_N_CATEGORIES; i++)
			control_reply_add(rep, evlog_category_name((enum evlog_category)i), "%s",
					  evlog_level_name(evlog_get_level(d->log, (enum evlog_category)i)));
		return;
	}
	if (req->argc != 2 || evlog_category_parse(req->argv[0], &cat) < 0 ||
	    evlog_level_parse(req->argv[1], &lvl) < 0) {
		control_reply_status(rep, 400, "usage: log-level [CATEGORY none|minimum|medium|maximum]");
		return;
	}
	evlog_set_level(d->log, cat, lvl);
	evlog_emit(d->log, EV_CORE_LEVEL_CHANGED, EVF_S("category", evlog_category_name(cat)),
		   EVF_S("level", evlog_level_name(lvl)));
	control_reply_add(rep, evlog_category_name(cat), "%s", evlog_level_name(lvl));
}

static void ctl_reload(void *arg, const struct control_call *call, struct control_reply *rep)
{
	struct daemon *d = arg;
	size_t n = reload(d);

	if (n > 0)
		control_reply_status(rep, 500, "reload refused: the configuration has errors (see the event log); the running one stays");
}

static void ctl_stats(void *arg, const struct control_call *call, struct control_reply *rep)
{
	struct daemon *d = arg;

	counters_control_stats(d->ctr, call, rep);
}

static void begin_stop(struct daemon *d, const char *signame);

static void ctl_queue(void *arg, const struct control_call *call, struct control_reply *rep)
{
	struct daemon *d = arg;

	queue_ctl_handle(&d->qctl, call, rep);
}

/* stop: drain and stop, as SIGTERM; for root and the daemon's user. */
static void ctl_stop(void *arg, const struct control_call *call, struct control_reply *rep)
{
	struct daemon *d = arg;

	if (call->uid != 0 && call->uid != geteuid()) {
		control_reply_status(rep, 403, "stop: only root and the daemon's user (uid %u) may stop carrierd",
				     (unsigned)geteuid());
		return;
	}
	evlog_emit(d->log, EV_QUEUE_STOP_REQUESTED, EVF_I("uid", call->uid));
	control_reply_add(rep, "pid", "%d", (int)getpid());
	control_reply_add(rep, "state", "draining");
	control_reply_add(rep, "timeout", "%u", (unsigned)d->conf->drain_timeout);
	begin_stop(d, "carrier stop");
}

/* trace [ADDRESS [SECONDS] | off [ADDRESS]]: the SMTP protocol trace. */
static void ctl_trace(void *arg, const struct control_call *call, struct control_reply *rep)
{
	struct daemon *d = arg;

	smtp_trace_control(d->trace, call, rep, d->drop_privileges ? d->run_uid : geteuid());
}

/* Delivery for the queue commands (retry, release, flush, bounce). */
static void qctl_kick(void *arg, const char *qid)
{
	struct daemon *d = arg;

	if (d->delivery != NULL && qid != NULL)
		delivery_kick_qid(d->delivery, qid);
	else if (d->delivery != NULL)
		delivery_kick(d->delivery);
}

static const struct control_command ctl_commands[] = {
	{ "queue", "queue [list|summary|show|due|hold|release|delete|retry|flush|bounce] ...", ctl_queue },
	{ "stop", "stop", ctl_stop },
	{ "stats", "stats", ctl_stats },
	{ "status", "status", ctl_status },
	{ "log-level", "log-level [CATEGORY LEVEL]", ctl_log_level },
	{ "reload", "reload", ctl_reload },
	{ "trace", "trace [ADDRESS [SECONDS] | off [ADDRESS]]", ctl_trace },
};

static const struct control_handlers ctl_handlers = {
	ctl_commands, sizeof ctl_commands / sizeof ctl_commands[0],
};

static int start_control(struct daemon *d)
{
	char err[512];
	struct group *gr = NULL;

	d->auth.owner_uid = d->drop_privileges ? d->run_uid : (uid_t)-1;
	d->auth.group = (gid_t)-1;
	d->auth.max_per_uid = d->conf->control_max_per_uid;
	if (d->conf->control_group[0] && (gr = getgrnam(d->conf->control_group)) != NULL) {
		d->auth.group = gr->gr_gid;
		d->auth.group_name = d->conf->control_group;
	}
	d->qctl = (struct queue_ctl){
		.spool = d->spool, .log = d->log, .track = &d->track, .conf = &d->conf,
		.routes = &d->routes, .kick = qctl_kick, .kick_arg = d,
		.admin_uid = d->drop_privileges ? d->run_uid : geteuid(),
	};
	if (mkdir_parent(d->conf->control_socket) < 0)
		(void)0;    /* control_new reports the path problem */
	d->control = control_new(d->base, d->conf->control_socket, &d->auth, &ctl_handlers,
				 d, d->log, err, sizeof err);
	/* Reading queue commands walk the spool on a thread of their own;
	 * without it they answer 503 (event emitted), the daemon goes on. */
	if (d->control != NULL)
		(void)queue_ctl_start(&d->qctl, err, sizeof err);
	return d->control ? 0 : DIAG_EXIT_CONTROL;
}

/* ---- signals and drain -------------------------------------------------------- */

static void drain_tick(evutil_socket_t fd, short what, void *arg)
{
	struct daemon *d = arg;
	size_t n = smtp_server_sessions(d->smtp);

	if (n == 0) {
		event_base_loopbreak(d->base);
		return;
	}
	if (time(NULL) >= d->drain_deadline) {
		evlog_emit(d->log, EV_CORE_DRAIN_TIMEOUT, EVF_I("sessions", n),
			   EVF_I("timeout", d->conf->drain_timeout));
		event_base_loopbreak(d->base);
	}
}

static void begin_stop(struct daemon *d, const char *signame)
{
	struct timeval tick = { 0, 100000 };

	if (d->drain_timer != NULL) {
		/* A second stop signal: stop waiting for sessions. */
		event_base_loopbreak(d->base);
		return;
	}
	notify_service_manager(d, "STOPPING=1");
	evlog_emit(d->log, EV_CORE_STOPPING, EVF_S("signal", signame),
		   EVF_I("sessions", smtp_server_sessions(d->smtp)),
		   EVF_I("timeout", d->conf->drain_timeout));
	stop_listeners(d);
	smtp_server_shutdown(d->smtp);
	d->drain_deadline = time(NULL) + d->conf->drain_timeout;
	d->drain_timer = event_new(d->base, -1, EV_PERSIST, drain_tick, d);
	if (d->drain_timer == NULL || event_add(d->drain_timer, &tick) < 0)
		event_base_loopbreak(d->base);
}

static void signal_cb(evutil_socket_t sig, short what, void *arg)
{
	struct daemon *d = arg;
	char err[512];

	switch (sig) {
	case SIGTERM:
		begin_stop(d, "SIGTERM");
		break;
	case SIGINT:
		begin_stop(d, "SIGINT");
		break;
	case SIGHUP:
		notify_service_manager(d, "RELOADING=1");
		reload(d);
		notify_service_manager(d, "READY=1");
		break;
	case SIGUSR1:
		if (evlog_reopen(d->log, err, sizeof err) < 0)
			evlog_emit(d->log, EV_CORE_LOG_OPEN_FAILED, EVF_S("path", d->conf->log_json),
				   EVF_S("reason", err));
		else
			evlog_emit0(d->log, EV_CORE_LOGS_REOPENED);
		track_reopen(d->track);
		break;
	}
}

static int start_signals(struct daemon *d)
{
	static const int sigs[4] = { SIGTERM, SIGINT, SIGHUP, SIGUSR1 };

	signal(SIGPIPE, SIG_IGN);
	for (size_t i = 0; i < 4; i++) {
		d->signals[i] = evsignal_new(d->base, sigs[i], signal_cb, d);
		if (d->signals[i] == NULL || event_add(d->signals[i], NULL) < 0)
			return -1;
	}
	return 0;
}

/* ---- startup ------------------------------------------------------------------ */

static int open_spool(struct daemon *d)
{
	struct spool_opts so;
	char err[512];

	spool_opts_init(&so);
	so.map_size = d->conf->spool_map_size;
	so.inline_max = d->conf->spool_inline_max;
	so.inline_memory = d->conf->spool_inline_memory;
	so.space_margin = d->conf->spool_min_free;
	so.commit_delay_us = d->conf->commit_delay_us;
	d->spool = spool_open(d->conf->spool_path, &so, d->log, err, sizeof err);
	if (d->spool == NULL)
		return DIAG_EXIT_SPOOL;
	if (d->drop_privileges && spool_chown(d->spool, d->run_uid, d->run_gid, err, sizeof err) < 0) {
		evlog_emit(d->log, EV_CORE_PRIVDROP_FAILED, EVF_S("user", d->conf->user),
			   EVF_S("step", "give the spool to the user"), EVF_S("reason", err));
		return CARRIERD_EXIT_PRIVDROP;
	}
	return 0;
}

/* True when `uid`/`gid` may create files in the directory of `path`. */
static bool dir_writable_by(const char *path, uid_t uid, gid_t gid)
{
	char dir[PATH_MAX];
	char *slash;
	struct stat st;

	snprintf(dir, sizeof dir, "%s", path);
	slash = strrchr(dir, '/');
	if (slash == NULL)
		return true;
	*slash = '\0';
	if (stat(dir[0] ? dir : "/", &st) < 0)
		return false;
	if (st.st_uid == uid)
		return st.st_mode & S_IWUSR;
	if (st.st_gid == gid)
		return st.st_mode & S_IWGRP;
	return st.st_mode & S_IWOTH;
}

/* Files the daemon keeps writing after it drops root must be the user's. */
static void hand_over_files(struct daemon *d)
{
	if (!d->drop_privileges)
		return;
	if (d->conf->log_json[0]) {
		if (chown(d->conf->log_json, d->run_uid, d->run_gid) < 0)
			(void)0;    /* the reopen reports it, if it matters */
		if (!dir_writable_by(d->conf->log_json, d->run_uid, d->run_gid))
			evlog_emit(d->log, EV_CORE_LOG_DIR_NOT_WRITABLE,
				   EVF_S("path", d->conf->log_json), EVF_S("user", d->conf->user));
	}
	/* The tracking directory: readable by the daemon's group (admins). */
	if (d->conf->track_path[0] && mkdir_parent(d->conf->track_path) == 0 &&
	    mkdir(d->conf->track_path, 0750) == 0 &&
	    chown(d->conf->track_path, d->run_uid, d->run_gid) < 0)
		(void)0;    /* track_new reports an unusable directory */
	if (mkdir_parent(d->conf->maildir_path) == 0 &&
	    (mkdir(d->conf->maildir_path, 0700) == 0 || errno == EEXIST)) {
		struct stat st;

		/* Only a directory we own or just made is handed over. */
		if (lstat(d->conf->maildir_path, &st) == 0 && S_ISDIR(st.st_mode) && st.st_uid == 0 &&
		    chown(d->conf->maildir_path, d->run_uid, d->run_gid) < 0)
			(void)0;
	}
}

static int loop_fail(struct daemon *d, const char *what)
{
	evlog_emit(d->log, EV_CORE_LOOP_FAILED, EVF_S("reason", what));
	return CARRIERD_EXIT_LOOP;
}

static void message_queued(void *arg, const char *qid)
{
	struct daemon *d = arg;

	delivery_kick_qid(d->delivery, qid);
}

/* Optional services: each failure is a warning and mail flows on. */
static void start_optional(struct daemon *d)
{
	char err[512];

	d->dns = dns_new(d->base, d->conf, d->log, err, sizeof err);
	if (d->dns == NULL)
		evlog_emit(d->log, EV_DNS_INIT_FAILED, EVF_S("reason", err));
	else {
		dns_set_counters(d->dns, counters_block(d->ctr));
		dns_set_timeout(d->dns, d->conf->dns_timeout * 1000);
	}
	if (d->conf->track_path[0]) {
		d->track = track_new(d->conf->track_path, (d->conf->track_retention + 86399) / 86400,
				     d->log, err, sizeof err);
		if (d->track == NULL)
			evlog_emit(d->log, EV_TRACK_DISABLED, EVF_S("dir", d->conf->track_path),
				   EVF_S("reason", err));
	}
}

/* Startup check: certificates and keys (as root, before dropping it), and
 * the password file.  Each failure names the path and the reason. */
static int load_tls_auth(struct daemon *d)
{
	char err[1024], path[PATH_MAX];

	d->tls = tls_new(d->conf, path, sizeof path, err, sizeof err);
	if (d->tls == NULL && err[0]) {
		evlog_emit(d->log, EV_TLS_CERT_FAILED, EVF_S("path", path), EVF_S("reason", err));
		return DIAG_EXIT_TLS;
	}
	if (d->tls != NULL)
		evlog_emit(d->log, EV_TLS_RELOADED, EVF_S("cert", d->conf->tls_cert),
			   EVF_I("sni", tls_sni_count(d->tls)));
	if (d->conf->auth_passwd_file[0]) {
		d->passwd = passwd_db_load(d->conf->auth_passwd_file, err, sizeof err);
		if (d->passwd == NULL) {
			evlog_emit(d->log, EV_AUTH_PASSWD_UNREADABLE, EVF_S("reason", err));
			return DIAG_EXIT_PASSWD;
		}
		evlog_emit(d->log, EV_AUTH_PASSWD_LOADED, EVF_S("path", d->conf->auth_passwd_file),
			   EVF_I("users", passwd_db_count(d->passwd)));
	}
	return 0;
}

static int start_serving(struct daemon *d, int *fds)
{
	char err[512];

	start_optional(d);
	d->smtp = smtp_server_new(d->base, d->conf, d->log, d->ctr, d->spool, err, sizeof err);
	if (d->smtp == NULL)
		return loop_fail(d, err);
	smtp_server_set_track(d->smtp, d->track);
	d->trace = smtp_trace_new(d->smtp);
	smtp_server_set_tls(d->smtp, d->tls);
	smtp_server_set_passwd(d->smtp, d->passwd);
	d->tls = NULL;
	d->passwd = NULL;
	/* After dropping root: Maildir files are created as the user. */
	d->delivery = delivery_new(d->base, d->conf, d->log, d->ctr, d->spool, d->routes,
				   d->dns, err, sizeof err);
	if (d->delivery == NULL)
		return loop_fail(d, err);
	delivery_set_track(d->delivery, d->track);
	smtp_server_on_queued(d->smtp, message_queued, d);
	if (start_listeners(d, fds) < 0)
		return loop_fail(d, "evconnlistener_new failed");
	if (start_signals(d) < 0)
		return loop_fail(d, "cannot install signal handlers");
	return 0;
}

static void announce_ready(struct daemon *d)
{
	char listeners[1024];

	listeners_text(d->conf, listeners, sizeof listeners);
	pidfile_write(d);
	evlog_emit(d->log, EV_CORE_READY, EVF_S("version", CARRIER_VERSION),
		   EVF_S("listeners", listeners), EVF_S("spool", d->conf->spool_path));
	notify_service_manager(d, "READY=1");
	detach_stdio(d);
}

static int startup(struct daemon *d)
{
	int rc, *fds;

	evlog_emit(d->log, EV_CORE_STARTING, EVF_S("version", CARRIER_VERSION),
		   EVF_I("pid", getpid()), EVF_S("config", d->conf->path));
	raise_fd_limit(d);
	if ((rc = resolve_user(d)) != 0)
		return rc;
	if ((rc = diag_run_startup(d->conf, DIAG_F_MODIFY, d->log, NULL)) != 0)
		return rc;
	if ((rc = load_tls_auth(d)) != 0)
		return rc;
	if ((rc = open_spool(d)) != 0)
		return rc;
	d->ctr = counters_open(d->conf->shm_name, d->log);
	if (d->ctr == NULL)
		return loop_fail(d, "out of memory for counters");
	fds = calloc(d->conf->n_listen, sizeof *fds);
	if (fds == NULL)
		return loop_fail(d, "out of memory");
	rc = open_listeners(d, fds);
	if (rc == 0 && (d->base = event_base_new()) == NULL)
		rc = loop_fail(d, "event_base_new failed");
	if (rc == 0)
		rc = start_control(d);
	if (rc == 0 && d->conf->metrics_listen[0]) {
		char err[512];

		/* Optional: a failure is a warning (logged by metrics_new). */
		d->metrics = metrics_new(d->base, d->conf->metrics_listen, d->ctr, d->log,
					 err, sizeof err);
	}
	if (rc == 0)
		rc = pidfile_open(d);
	if (rc == 0) {
		hand_over_files(d);
		rc = drop_privileges(d);
	}
	if (rc == 0)
		rc = start_serving(d, fds);
	for (size_t i = 0; i < d->conf->n_listen; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	free(fds);
	return rc;
}

static void shutdown_daemon(struct daemon *d)
{
	long uptime = (long)(time(NULL) - d->started);

	stop_listeners(d);
	smtp_trace_free(&d->trace);
	smtp_server_free(&d->smtp);
	tls_unref(&d->tls);
	passwd_db_free(&d->passwd);
	delivery_free(&d->delivery);
	track_free(&d->track);
	dns_free(&d->dns);
	queue_ctl_stop(&d->qctl);   /* reads the spool, finishes control replies */
	spool_close(&d->spool);
	control_free(&d->control);
	for (size_t i = 0; i < 4; i++)
		if (d->signals[i])
			event_free(d->signals[i]);
	if (d->drain_timer)
		event_free(d->drain_timer);
	metrics_free(&d->metrics);
	counters_close(&d->ctr, true);
	if (d->base)
		event_base_free(d->base);
	evlog_emit(d->log, EV_CORE_STOPPED, EVF_I("uptime", uptime));
	pidfile_remove(d);
	route_table_free(&d->routes);
	conf_free(&d->conf);
}

int main(int argc, char **argv)
{
	struct daemon d = { .pidfile_fd = -1, .ready_fd = -1 };
	size_t n_errors;
	int rc;

	if (parse_args(argc, argv, &d.opt) < 0)
		return 2;
	if (d.opt.check_only || d.opt.print_conf)
		return check_only(&d.opt);
	d.started = time(NULL);
	if (getcwd(d.start_dir, sizeof d.start_dir) == NULL)
		snprintf(d.start_dir, sizeof d.start_dir, "/");
	d.log = evlog_new("carrierd");
	if (d.log == NULL)
		return CARRIERD_EXIT_LOOP;
	evlog_set_stderr(d.log, true);
	n_errors = load_conf(&d, &d.conf, &d.routes);
	if (n_errors > 0) {
		if (d.opt.conf_path == NULL || access(d.opt.conf_path, R_OK) == 0)
			evlog_emit(d.log, EV_CONFIG_INVALID,
				   EVF_S("file", d.opt.conf_path ? d.opt.conf_path : "<embedded>"),
				   EVF_I("errors", n_errors));
		evlog_free(&d.log);
		return DIAG_EXIT_CONFIG;
	}
	apply_log_conf(&d, d.conf);
	/* after apply_log_conf, so that the configured sinks get it too */
	evlog_emit(d.log, EV_CONFIG_LOADED,
		   EVF_S("file", d.opt.conf_path ? d.opt.conf_path : "<embedded>"));
	evthread_use_pthreads();
	if (!d.opt.foreground && (rc = daemonize(&d)) != 0)
		goto out;
	rc = startup(&d);
	if (rc == 0) {
		if (!d.opt.foreground && chdir("/") < 0)
			(void)0;
		announce_ready(&d);
		event_base_dispatch(d.base);
	}
out:
	shutdown_daemon(&d);
	evlog_free(&d.log);
	return rc;
}
