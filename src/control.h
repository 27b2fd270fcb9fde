/*
 * control: the control socket, both ends.
 *
 * Server side (carrierd): a Unix stream socket served on the daemon's
 * libevent loop.  It authorizes every connection by the peer's kernel
 * credentials, caps connections per uid, reads requests with a timeout and
 * a bounded buffer, and dispatches each command to a handler the daemon
 * supplies.  It knows nothing of the other modules: main wires the
 * handlers (status, queue, ...) in.  Protocol: control_proto.h.
 *
 * Client side (the `carrier` CLI): control_request() sends one request and
 * parses the response, with a timeout, and words its errors so a person
 * can act on them.
 *
 * Threads: a struct control belongs to the thread running its event_base;
 * handlers are called on that thread.  A deferred reply may be finished on
 * any thread (control_deferred_finish(), which needs libevent's threading:
 * evthread_use_pthreads() before the base is made).  control_request() is
 * blocking and may be called from any thread.
 */
#ifndef CARRIER_CONTROL_H
#define CARRIER_CONTROL_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "control_proto.h"

struct event_base;
struct evlog;
struct control;

#define CONTROL_MAX_PER_UID_DEFAULT 8
#define CONTROL_TIMEOUT_MS_DEFAULT 5000

/*
 * Who may connect, and how much a connection may hold.
 *
 * A peer is authorized when its uid (SO_PEERCRED) is 0, is the daemon's
 * effective uid at accept time (the user it dropped to), is `owner_uid`,
 * or when `group` is set and the peer's gid or one of its supplementary
 * groups is `group`.  Supplementary groups are read with SO_PEERGROUPS:
 * the groups of the connecting process at connect() time, race-free and
 * without a user database lookup on the loop (not getgrouplist(), which
 * reports the database, not the process, and may block on NSS; not
 * /proc/<pid>/status, which races with pid reuse).  On kernels before
 * 4.13 (no SO_PEERGROUPS) only the peer's primary gid is checked.
 *
 * The file itself is created mode 0660, owner owner_uid:group (either
 * left as is when -1), so the file mode already keeps other users out;
 * the credential check is the second lock.
 */
struct control_auth {
	uid_t owner_uid;        /* chown target and allowed uid; (uid_t)-1 = unchanged */
	gid_t group;            /* allowed group and chown target; (gid_t)-1 = none */
	const char *group_name; /* for messages ("carrier"); NULL = none */
	unsigned max_per_uid;   /* connections per uid; 0 = CONTROL_MAX_PER_UID_DEFAULT */
	unsigned timeout_ms;    /* to send a complete request, and to take the
				   reply; 0 = CONTROL_TIMEOUT_MS_DEFAULT */
};

struct control_conn;
struct control_deferred;

/* The request a handler runs for: the parsed words and the peer. */
struct control_call {
	const struct control_request *req;  /* command, argc, argv */
	uid_t uid;
	pid_t pid;
	struct control_conn *conn;          /* for control_defer(); NULL when
					       the call comes from no connection
					       (tests) */
};

/*
 * A command handler.  Fills `rep` with control_reply_add() and, on
 * failure, control_reply_status(rep, code, "what went wrong").  The reply
 * starts as 200 "ok" with no fields; returning without touching the
 * status keeps it.  Runs on the loop thread and must not block, and must
 * not call control_free() (schedule a stop on the loop instead).  `call`
 * and everything it points to are valid only during the call.  Work that
 * would block (a walk of a large queue) is deferred: control_defer().
 */
typedef void control_handler_fn(void *arg, const struct control_call *call,
				struct control_reply *rep);

struct control_command {
	const char *name;       /* [a-z][a-z0-9_-]* */
	const char *usage;      /* "status", "queue list [FILTER]" (for help) */
	control_handler_fn *fn;
};

/* The daemon's command table.  Built-in commands (ping, version, help)
 * answer first; a handler of the same name is never called. */
struct control_handlers {
	const struct control_command *commands;
	size_t n_commands;
};

/*
 * The `status` command, as `carrier status` reads it.  carrierd's handler
 * adds these fields (values are plain text, integers in decimal):
 *
 *   pid         carrierd's process id                      "4242"
 *   version     carrierd's version (CARRIER_VERSION)       "0.1.0"
 *   uptime      seconds since carrierd started             "3600"
 *   started     start time, Unix seconds (optional)        "1795000000"
 *   listener    one field per SMTP listener, as configured "127.0.0.1:2525"
 *               (repeat the key; none = no listener)
 *   spool       spool directory                            "./var/spool"
 *   config      configuration file or "<embedded>"         "/etc/carrier/carrier.conf"
 *   user        user the daemon runs as (optional)         "carrier"
 *
 * `carrier status` prints pid, version, uptime, listener(s) and spool,
 * then any other field as is, so the daemon may add fields freely.
 */
#define CONTROL_STATUS_PID "pid"
#define CONTROL_STATUS_VERSION "version"
#define CONTROL_STATUS_UPTIME "uptime"
#define CONTROL_STATUS_STARTED "started"
#define CONTROL_STATUS_LISTENER "listener"
#define CONTROL_STATUS_SPOOL "spool"
#define CONTROL_STATUS_CONFIG "config"
#define CONTROL_STATUS_USER "user"

/*
 * Creates the socket at `path` and starts accepting on `base`.
 *
 * A stale socket at `path` (nobody accepts on it) is removed; a live one
 * (another carrierd) or a file that is not a socket is an error.  The new
 * socket is mode 0660 and chowned per `auth` (so call this before dropping
 * root when the owner differs; a non-root daemon passes -1, -1 or its own
 * ids).  `auth` and `h` are copied, but the strings and the command table
 * they point to must outlive the control.  `log` may be NULL.
 *
 * Returns the control, or NULL with a reason in err (and the event
 * CONTROL_SOCKET_FAILED emitted).  Free with control_free().
 */
struct control *control_new(struct event_base *base, const char *path,
			    const struct control_auth *auth,
			    const struct control_handlers *h, void *h_arg,
			    struct evlog *log, char *err, size_t errlen);

/* Closes every connection and the socket, and removes the socket file if
 * it is still the one control_new() created (a successor's is left).
 * Every deferred reply must have been finished first (control_defer());
 * those finished but not sent yet are dropped.  Clears *cp; NULL is fine. */
void control_free(struct control **cp);

/*
 * Deferred replies, for a handler whose answer takes long to make: it calls
 * control_defer(call) and returns (what it put in `rep` is not sent), hands
 * the handle to another thread, and that thread calls
 * control_deferred_finish() with the reply once it has it.  The control
 * sends it on its loop thread.  Meanwhile the connection takes no other
 * request (its answers stay in order) and its request deadline is off; if
 * the peer goes away first, the reply is dropped when it comes, and
 * control_deferred_cancelled() turns true so the worker may stop early.
 *
 * control_defer() runs on the loop thread during a handler call; it
 * returns NULL when the call has no connection (call->conn NULL) or memory
 * runs out: the handler then answers in `rep` as usual.
 */
struct control_deferred *control_defer(const struct control_call *call);

/* True once the peer of a deferred request has gone (its reply will be
 * dropped).  Any thread. */
bool control_deferred_cancelled(const struct control_deferred *d);

/*
 * Finishes a deferred request: takes *repp (clears it; NULL sends a 500
 * "no answer") and the handle, which is invalid afterwards.  Any thread,
 * exactly once per handle, and before control_free().
 */
void control_deferred_finish(struct control_deferred *d, struct control_reply **repp);

/* Deferred requests not sent yet, finished or not (tests). */
size_t control_deferred_count(const struct control *c);

/* Number of open control connections (tests, counters). */
size_t control_connections(const struct control *c);

/* ---- client ------------------------------------------------------------ */

/* control_request() results. */
enum control_client_result {
	CONTROL_CLIENT_OK = 0,            /* a response was parsed (any code) */
	CONTROL_CLIENT_FAILED = -1,       /* anything else: see err */
	CONTROL_CLIENT_NOT_RUNNING = -2,  /* no socket, or nobody accepting */
	CONTROL_CLIENT_DENIED = -3,       /* EACCES on the socket */
};

/*
 * Connects to `path`, sends "CARRIER/1 <command_line>\n" and reads one
 * response into *resp (zeroed first; clear it with
 * control_response_clear() whatever the result).  Connecting, sending
 * and reading are bounded by CONTROL_TIMEOUT_MS_DEFAULT in all.
 *
 * Returns a control_client_result; on failure err holds a sentence for a
 * person, e.g. "carrierd is not running (no socket at ./var/carrierd.sock)"
 * or "permission denied on /run/carrier/control.sock: run as root or as a
 * member of group carrier".  A refusal by the daemon (403, 429) is a
 * response, not a failure: check resp->code.
 */
int control_request(const char *path, const char *command_line,
		    struct control_response *resp, char *err, size_t errlen);

/* Same with an explicit overall timeout in milliseconds. */
int control_request_timeout(const char *path, const char *command_line,
			    unsigned timeout_ms, struct control_response *resp,
			    char *err, size_t errlen);

#endif
