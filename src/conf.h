/*
 * conf: the configuration model, its parser (inih), defaults and
 * validation with FILE:LINE errors.
 *
 * Owns struct carrier_conf.  Touches no socket and no file other than the
 * configuration itself.  A conf is immutable once loaded; a reload builds a
 * new one and swaps it in (main's job), so readers on any thread may keep a
 * pointer for as long as they hold a reference through main's wiring.
 */
#ifndef CARRIER_CONF_H
#define CARRIER_CONF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>

#include "evlog.h"

#define CONF_HOST_MAX 256

/* Listener roles: plain SMTP (port 25 style) or submission. */
enum conf_listen_role { CONF_ROLE_SMTP, CONF_ROLE_SUBMISSION };

struct conf_listen {
	char text[CONF_HOST_MAX + 16];  /* as written: "127.0.0.1:2525", "[::]:25" */
	char host[CONF_HOST_MAX];       /* "127.0.0.1", "::", "0.0.0.0" */
	uint16_t port;
	struct sockaddr_storage addr;   /* resolved numeric address */
	socklen_t addrlen;
	enum conf_listen_role role;
	bool implicit_tls;              /* "/smtps": TLS from the first byte (RFC 8314) */
};

/*
 * One [route SPACE] section, as written.  The route module validates `via`
 * and builds the table (route_table_new), reporting errors against `file`
 * and the lines below in the same FILE:LINE format.
 */
struct conf_route {
	char space[CONF_HOST_MAX];      /* "example.net", "*.example.net", "*" */
	char *via;                      /* "smtp:[10.0.0.5]:25", "mx", "lmtp:unix:/p", ... */
	unsigned cost;                  /* lower is tried first; default 10 */
	unsigned max_connections;       /* per next hop; 0 = delivery default */
	unsigned max_rate;              /* messages per second; 0 = unlimited */
	char *tls;                      /* outbound TLS policy; "" = default */
	unsigned line;                  /* of the [route ...] header */
	unsigned via_line;              /* of via =, 0 when missing */
};

/* A network in CIDR form, for relay_networks. */
struct conf_net {
	int family;                     /* AF_INET or AF_INET6 */
	uint8_t addr[16];
	unsigned prefix;
	char text[64];
};

struct carrier_conf {
	char *path;                     /* file it came from, or "<embedded>" */

	/* [server] */
	char *hostname;                 /* "" means the system's host name */
	struct conf_listen *listen;
	size_t n_listen;
	struct conf_net *relay_networks;
	size_t n_relay_networks;
	char **local_domains;
	size_t n_local_domains;
	char *user;
	char *pidfile;                  /* "" = none */
	unsigned drain_timeout;         /* seconds */

	/* [smtp] limits */
	uint64_t max_message_size;      /* bytes */
	unsigned max_recipients;
	unsigned max_errors;
	unsigned max_connections;
	unsigned max_connections_per_ip;
	unsigned max_received_headers;
	unsigned command_timeout;       /* seconds */
	unsigned data_timeout;          /* seconds */
	unsigned idle_timeout;          /* seconds */
	unsigned command_line_max;      /* octets incl. CRLF, >= 512 */
	unsigned text_line_max;         /* octets incl. CRLF, >= 1000 */
	bool bare_lf_normalize;         /* false: refuse with 550 5.5.2 */

	/* [spool] */
	char *spool_path;
	uint64_t spool_min_free;        /* bytes kept free besides 1.5 x size */
	uint64_t spool_inline_max;      /* bodies larger go to files */
	uint64_t spool_inline_memory;   /* all in-memory bodies together */
	uint64_t spool_map_size;        /* LMDB map size */
	unsigned commit_delay_us;       /* group commit window */

	/* [local] */
	char *maildir_path;             /* Maildir root: <path>/<localpart>/ */

	/* [log] */
	bool log_syslog;
	char *log_json;                 /* "" = off */
	enum evlog_level levels[EVLOG_N_CATEGORIES];

	/* [control] */
	char *control_socket;
	char *control_group;            /* "" = none */
	unsigned control_max_per_uid;

	/* [counters] */
	char *shm_name;                 /* POSIX shm object, e.g. "/carrier" */

	/* [track] */
	char *track_dir;                /* as written: "", "off" or a path */
	char *track_path;               /* resolved directory; "" = tracking off */
	unsigned track_retention;       /* seconds; 0 = keep forever */

	/* [metrics] */
	char *metrics_listen;           /* "" = off; "127.0.0.1:9025" */

	/* [delivery] */
	unsigned *retry_schedule;       /* seconds between attempts; the last repeats */
	size_t n_retry_schedule;
	unsigned max_queue_lifetime;    /* seconds; then the recipient bounces */
	unsigned delay_warning;         /* seconds; 0 = never warn */
	unsigned max_deliveries;        /* outbound deliveries in progress, in all */
	unsigned max_connections_per_destination;
	unsigned connect_timeout;       /* seconds */
	unsigned out_command_timeout;   /* seconds, RFC 5321 4.5.3.2 */
	unsigned out_data_timeout;      /* seconds, for the final dot */
	char *helo_name;                /* "" = server.hostname */
	char *double_bounce_to;         /* "" = drop failed bounces with an event */
	char *out_tls_ca_file;          /* CA for routes with tls = verify; "" = system store */

	/* [dns] */
	char *dns_forwarder;            /* "" = resolv.conf; "127.0.0.1@5353" */
	char *dns_resolv_conf;
	unsigned dns_timeout;           /* seconds per lookup */

	/* [tls] inbound certificates and policy */
	char *tls_cert;                 /* "" = no TLS */
	char *tls_key;
	char *tls_chain;                /* "" = none besides the cert file's */
	char *tls_min_version;          /* "TLSv1.2" or "TLSv1.3" */
	char *tls_ciphers;              /* TLS 1.2 cipher list */
	char *tls_ciphersuites;         /* TLS 1.3 suites */
	char *tls_sni;                  /* "NAME:CERT:KEY, ..." */

	/* [auth] SMTP AUTH for submission */
	char *auth_passwd_file;         /* "" = none */
	char *auth_dovecot_socket;      /* Dovecot auth-client socket; "" = none */
	bool auth_require_tls;          /* AUTH only under TLS */
	bool auth_sender_login_match;   /* MAIL FROM bound to the login */
	bool auth_received;             /* login in the Received header */
	unsigned auth_max_failures;     /* per client address, then 421 */
	unsigned auth_failure_delay;    /* seconds before each failure reply */
	unsigned auth_failure_window;   /* seconds a failure is remembered */
	unsigned auth_verify_threads;   /* password-file hashing threads */
	unsigned auth_verify_queue;     /* password checks in progress at most */

	/* [route ...] sections, in file order */
	struct conf_route *routes;
	size_t n_routes;
};

/* One configuration error, FILE:LINE: key: problem (expected ...). */
struct conf_error {
	char *file;
	unsigned line;
	char *key;
	char *problem;
};

struct conf_errors {
	struct conf_error *v;
	size_t n;
};

/*
 * Loads `path`, or the embedded development default when `path` is NULL.
 * Returns a new conf (free with conf_free) when there are no errors.  On
 * errors returns NULL and fills `errs` with every error in the file, not
 * only the first; an unreadable file is one error with line 0.  The caller
 * frees `errs` with conf_errors_clear().
 */
struct carrier_conf *conf_load(const char *path, struct conf_errors *errs);

/* Same, from a string (tests; `name` is used as the file name). */
struct carrier_conf *conf_load_string(const char *name, const char *text,
				      struct conf_errors *errs);

void conf_free(struct carrier_conf **confp);
void conf_errors_clear(struct conf_errors *errs);

/* Formats one error as "FILE:LINE: key: problem". */
void conf_error_format(const struct conf_error *e, char *buf, size_t size);

/* True when `addr` (AF_INET/AF_INET6 sockaddr) is in relay_networks. */
bool conf_is_relay_client(const struct carrier_conf *conf,
			  const struct sockaddr *addr);
/* True when `domain` (case-insensitive) is a local domain. */
bool conf_is_local_domain(const struct carrier_conf *conf, const char *domain);

/* Text of the embedded development default (for `carrierd -d`). */
const char *conf_embedded_default(void);

/* Writes every key with its effective value, as INI (for `carrierd -p`). */
void conf_dump(const struct carrier_conf *conf, FILE *out);

#endif
