/*
 * diag: the startup checks behind "it starts, or it says exactly why not",
 * and `carrier doctor`.
 *
 * Owns the checks of the network stack, the loopback interface, the listen
 * addresses, the listeners (binding them, and naming the process that holds
 * a port), the host name, the spool directory and the control socket path;
 * the mapping of each failing check to a process exit status; and the
 * network baseline with its drift report (diag_baseline.h).  The /proc
 * parsers live in diag_net.h.
 *
 * It starts no service: the daemon runs these checks at its own points and
 * binds its real listeners with diag_bind_listener(); doctor runs them with
 * DIAG_F_BIND_TEST and keeps nothing.  The configuration check (conf) and
 * the counters check (counters) belong to their modules; their exit
 * statuses are listed here so every startup failure has one number.
 *
 * Threads: called from main's thread at startup and from the CLI; the
 * functions block (getaddrinfo, /proc scans) and keep no state of their own.
 */
#ifndef CARRIER_DIAG_H
#define CARRIER_DIAG_H

#include <stdbool.h>
#include <stddef.h>

#include "conf.h"
#include "evlog.h"

/*
 * Process exit statuses, one per failing check.  carrierd exits with the
 * status of the first check that failed; `carrier doctor` exits 0 when no
 * check failed (warnings allowed), otherwise with the status of the first
 * failed check.  Stable: supervisors may key on them
 * (systemd RestartPreventExitStatus=).
 */
enum diag_exit {
	DIAG_EXIT_OK = 0,
	DIAG_EXIT_USAGE = 2,            /* doctor: bad command line */
	DIAG_EXIT_CONFIG = 10,          /* configuration invalid or unreadable (conf) */
	DIAG_EXIT_NETSTACK = 11,        /* no IPv4 socket; no IPv6 with an IPv6 listener */
	DIAG_EXIT_LOOPBACK = 12,        /* loopback interface lo missing or down */
	DIAG_EXIT_ADDRESS = 13,         /* a listen address is on no interface */
	DIAG_EXIT_LISTEN = 14,          /* port in use, or bind/listen failed */
	DIAG_EXIT_PRIVILEGE = 15,       /* port < 1024 and no privilege to bind it */
	DIAG_EXIT_HOSTNAME = 16,        /* reserved: host name checks only warn today */
	DIAG_EXIT_SPOOL = 17,           /* spool directory missing/uncreatable/wrong owner */
	DIAG_EXIT_CONTROL = 18,         /* control socket path unusable */
	DIAG_EXIT_RUNNING = 19,         /* another carrierd answers on the control socket */
	DIAG_EXIT_COUNTERS = 20,        /* reserved (counters): counters degrade, never fail */
	/* 21-24: carrierd's own (user, privilege drop, pidfile, event loop) */
	DIAG_EXIT_TLS = 25,             /* a TLS certificate/key unreadable or not matching */
	DIAG_EXIT_PASSWD = 26,          /* the AUTH password file unreadable or malformed */
	DIAG_EXIT_BASELINE = 30,        /* doctor --save-baseline could not write the file */
};

enum diag_status { DIAG_OK, DIAG_WARN, DIAG_FAIL };

/* One line of the report: a check, what was observed, and for a warning or
 * failure the event emitted with its cause and remedy rendered from the
 * catalogue.  Strings are NUL-terminated, truncated if longer. */
struct diag_result {
	char check[24];                 /* "netstack", "loopback", "listener", ... */
	enum diag_status status;
	int exit_status;                /* DIAG_EXIT_* when failed, else 0 */
	int event;                      /* EV_* emitted, 0 when none */
	char what[512];                 /* what was observed */
	char cause[1024];               /* "" for ok */
	char remedy[1024];              /* "" when the event has none */
};

/* Results in the order the checks ran.  Zero-initialise; free with
 * diag_report_clear().  Every function taking a report accepts NULL. */
struct diag_report {
	struct diag_result *v;
	size_t n, cap;
};

void diag_report_clear(struct diag_report *rep);
/* Exit status of the first failed result, 0 when none failed. */
int diag_report_exit(const struct diag_report *rep);
/* Number of results with status `st`. */
size_t diag_report_count(const struct diag_report *rep, enum diag_status st);

/* Records a result without an event (the conf and counters owners use
 * this to put their checks in the same report).  printf-like `fmt`. */
void diag_report_add(struct diag_report *rep, const char *check,
		     enum diag_status st, int exit_status, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));
/* Emits event `id` on `log` and records it as a result of `check`; what,
 * cause and remedy are rendered from the catalogue with the fields. */
void diag_report_event(struct diag_report *rep, struct evlog *log,
		       const char *check, enum diag_status st, int exit_status,
		       enum evlog_id id, const struct evlog_field *f, size_t n);

/* Flags of diag_run_startup() and the checks that change things. */
enum {
	/* Bind every listener and close it again (doctor).  Without it the
	 * daemon binds its listeners itself with diag_bind_listener(). */
	DIAG_F_BIND_TEST = 1 << 0,
	/* Allowed to change the host: create the spool directory (mode 0700,
	 * chowned to server.user when root), remove a stale control socket.
	 * Without it (doctor) the checks only report what would be done. */
	DIAG_F_MODIFY = 1 << 1,
};

/*
 * Each check below emits its own event for a warning or failure, records
 * its results in `rep` (may be NULL), and returns the DIAG_EXIT_* status of
 * its failure or 0 (warnings return 0).  `log` may be NULL.
 */

/* AF_INET and AF_INET6 sockets can be created; a missing IPv6 fails only
 * when a listener is IPv6. */
int diag_check_netstack(const struct carrier_conf *conf, struct evlog *log,
			struct diag_report *rep);
/* The loopback interface "lo" exists and is up (SIOCGIFFLAGS). */
int diag_check_loopback(struct evlog *log, struct diag_report *rep);
/* Listener `l`'s address is configured on an interface (getifaddrs);
 * wildcards always pass.  With ip_nonlocal_bind=1 a missing address only
 * warns; an address on an interface that is down warns. */
int diag_check_address(const struct conf_listen *l, struct evlog *log,
		       struct diag_report *rep);

/*
 * Creates the listening socket for `l`: SO_REUSEADDR, IPV6_V6ONLY for IPv6,
 * nonblocking and close-on-exec, bind, listen(1024).  Returns 0 and the
 * descriptor in *fd_r (the caller owns it), or a DIAG_EXIT_* status after
 * emitting the precise event: the port's holder (pid and name, or that it
 * is hidden from this user), the missing privilege for ports < 1024, the
 * address configured on no interface, or the failing step and errno.
 */
int diag_bind_listener(const struct conf_listen *l, struct evlog *log, int *fd_r);
/* Same, recording the result in `rep` too. */
int diag_bind_listener_rep(const struct conf_listen *l, struct evlog *log,
			   struct diag_report *rep, int *fd_r);

/* The configured host name (or gethostname()) resolves with getaddrinfo
 * and is fully qualified; either failure is a warning (an MTA with an
 * unresolvable or bare own name still works).  Always returns 0. */
int diag_check_hostname(const struct carrier_conf *conf, struct evlog *log,
			struct diag_report *rep);

/*
 * The spool directory exists (or, with DIAG_F_MODIFY, is created mode 0700
 * and when running as root chowned to server.user; without it, that it can
 * be created), is a directory, is owned by server.user when running as root
 * (an existing directory owned by another uid fails: it is never chowned
 * behind the operator's back), is writable (not on a read-only file
 * system; when not root, access(W_OK) for the current user); warns when
 * its mode gives group/other access or its file system has less than
 * max(2 x spool.min_free_space, DIAG_SPOOL_FREE_MIN) bytes available; when
 * src/spool.h's spool_version_check() refuses the format, fails.
 */
#define DIAG_SPOOL_FREE_MIN (16ull << 20)
int diag_check_spool(const struct carrier_conf *conf, unsigned flags,
		     struct evlog *log, struct diag_report *rep);

/*
 * The control socket's directory exists (or can be created) and is
 * writable; a socket at the path that accepts connect() means another
 * carrierd runs (fails with DIAG_EXIT_RUNNING, naming its pid from
 * /proc/net/unix and /proc/PID/fd, else from server.pidfile); one that
 * refuses is stale and, with DIAG_F_MODIFY, removed; anything else at the
 * path fails and is never removed.
 */
int diag_check_control(const struct carrier_conf *conf, unsigned flags,
		       struct evlog *log, struct diag_report *rep);

/*
 * Runs, in order: netstack, loopback, each listen address (a loopback
 * address while lo is down fails as DIAG_EXIT_LOOPBACK, blaming lo rather
 * than the address), each listener (only with DIAG_F_BIND_TEST, and not
 * for an address that already failed), host name, spool, control socket.  Every check runs, so one
 * start names every problem; returns the exit status of the first failure
 * or 0.  The configuration and counters checks are not included.
 */
int diag_run_startup(const struct carrier_conf *conf, unsigned flags,
		     struct evlog *log, struct diag_report *rep);

#define DIAG_LISTEN_TEXT_MAX (CONF_HOST_MAX + 16)
/* Formats a listener as written in server.listen: "127.0.0.1:2525",
 * "[::1]:2525".  Returns buf. */
char *diag_listen_format(const struct conf_listen *l, char *buf, size_t size);

#endif
