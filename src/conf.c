/*
 * conf: configuration model, parser (inih) and validation.
 *
 * Every key lives in one table (conf_keys) with its type, bounds, default
 * and the text that says what is expected; the parser, the defaults, the
 * dump and the did-you-mean all read that table, so a key cannot exist in
 * one place and be missing in another.  Errors are collected, never
 * printed: every error of a file is reported at once as
 * FILE:LINE: section.key: problem (expected ...).
 *
 * Touches no socket and no file other than the configuration.  Not
 * thread-safe while loading; a loaded conf is read-only.
 */
#include "conf.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

enum conf_type {
	CT_STRING,      /* free text */
	CT_PATH,        /* made absolute against the working directory */
	CT_BOOL,
	CT_UINT,        /* bounded integer */
	CT_SIZE,        /* bytes with k/M/G suffix */
	CT_DURATION,    /* seconds with s/m/h/d suffix */
	CT_LISTEN,      /* list of host:port */
	CT_NETS,        /* list of CIDR networks */
	CT_DOMAINS,     /* list of domain names */
	CT_DURATIONS,   /* list of durations (retry schedule) */
};

struct conf_key {
	const char *section;
	const char *name;
	enum conf_type type;
	size_t offset;
	const char *def;        /* default, in the file's syntax */
	unsigned long long min, max;
	const char *expect;     /* what a valid value looks like */
};

#define OFF(f) offsetof(struct carrier_conf, f)
#define KB 1024ULL
#define MB (1024ULL * KB)
#define GB (1024ULL * MB)

static const struct conf_key conf_keys[] = {
	{ "server", "hostname", CT_STRING, OFF(hostname), "", 0, 0, "a fully qualified host name, or empty for the system's" },
	{ "server", "listen", CT_LISTEN, OFF(listen), "0.0.0.0:25", 0, 0, "a comma-separated list of ADDRESS:PORT, IPv6 as [ADDRESS]:PORT" },
	{ "server", "relay_networks", CT_NETS, OFF(relay_networks), "127.0.0.0/8, ::1", 0, 0, "a comma-separated list of networks such as 127.0.0.0/8, 192.0.2.0/24, ::1" },
	{ "server", "local_domains", CT_DOMAINS, OFF(local_domains), "localhost", 0, 0, "a comma-separated list of domain names" },
	{ "server", "user", CT_STRING, OFF(user), "carrier", 0, 0, "the name of an unprivileged system user" },
	{ "server", "pidfile", CT_PATH, OFF(pidfile), "/run/carrier/carrierd.pid", 0, 0, "a file path, or empty for none" },
	{ "server", "drain_timeout", CT_DURATION, OFF(drain_timeout), "30s", 0, 3600, "a duration such as 30s or 2m (at most 1h)" },

	{ "smtp", "max_message_size", CT_SIZE, OFF(max_message_size), "50M", 1 * KB, 4 * GB, "a size such as 10M or 50M (1k to 4G)" },
	{ "smtp", "max_recipients", CT_UINT, OFF(max_recipients), "1000", 1, 100000, "a number from 1 to 100000 (RFC 5321 requires at least 100)" },
	{ "smtp", "max_errors", CT_UINT, OFF(max_errors), "10", 1, 1000, "a number from 1 to 1000" },
	{ "smtp", "max_connections", CT_UINT, OFF(max_connections), "10000", 1, 1000000, "a number from 1 to 1000000" },
	{ "smtp", "max_connections_per_ip", CT_UINT, OFF(max_connections_per_ip), "50", 1, 1000000, "a number from 1 to 1000000" },
	{ "smtp", "max_received_headers", CT_UINT, OFF(max_received_headers), "100", 10, 1000, "a number from 10 to 1000" },
	{ "smtp", "command_timeout", CT_DURATION, OFF(command_timeout), "5m", 1, 3600, "a duration from 1s to 1h (RFC 5321 suggests 5m)" },
	{ "smtp", "data_timeout", CT_DURATION, OFF(data_timeout), "10m", 1, 3600, "a duration from 1s to 1h (RFC 5321 suggests 10m for DATA)" },
	{ "smtp", "idle_timeout", CT_DURATION, OFF(idle_timeout), "5m", 1, 3600, "a duration from 1s to 1h" },
	{ "smtp", "command_line_max", CT_UINT, OFF(command_line_max), "512", 512, 65536, "a length in octets from 512 (RFC 5321 minimum) to 65536" },
	{ "smtp", "text_line_max", CT_UINT, OFF(text_line_max), "1000", 1000, 1000000, "a length in octets from 1000 (RFC 5321 minimum) to 1000000" },
	{ "smtp", "bare_lf_normalize", CT_BOOL, OFF(bare_lf_normalize), "no", 0, 0, "yes or no (no refuses bare LF/CR with 550 5.5.2)" },

	{ "spool", "path", CT_PATH, OFF(spool_path), "/var/spool/carrier", 0, 0, "a directory path" },
	{ "spool", "min_free_space", CT_SIZE, OFF(spool_min_free), "100M", 0, 1024 * GB, "a size such as 100M or 1G" },
	{ "spool", "inline_max", CT_SIZE, OFF(spool_inline_max), "256k", 1 * KB, 64 * MB, "a size from 1k to 64M" },
	{ "spool", "inline_memory", CT_SIZE, OFF(spool_inline_memory), "64M", 1 * MB, 64 * GB, "a size from 1M to 64G" },
	{ "spool", "map_size", CT_SIZE, OFF(spool_map_size), "64G", 16 * MB, 1024 * GB, "a size from 16M to 1T (LMDB map size, address space only)" },
	{ "spool", "commit_delay", CT_UINT, OFF(commit_delay_us), "2000", 0, 100000, "microseconds from 0 to 100000 to wait for more messages per commit" },

	{ "local", "maildir", CT_PATH, OFF(maildir_path), "/var/lib/carrier/mail", 0, 0, "a directory path; mail for USER@local-domain goes to PATH/USER/" },

	{ "log", "syslog", CT_BOOL, OFF(log_syslog), "yes", 0, 0, "yes or no" },
	{ "log", "json", CT_PATH, OFF(log_json), "", 0, 0, "a file path for JSON-lines events, or empty for none" },

	{ "control", "socket", CT_PATH, OFF(control_socket), "/run/carrier/carrierd.sock", 0, 0, "a path for the control socket" },
	{ "control", "group", CT_STRING, OFF(control_group), "", 0, 0, "a group whose members may use the control socket, or empty" },
	{ "control", "max_per_uid", CT_UINT, OFF(control_max_per_uid), "8", 1, 1024, "a number from 1 to 1024" },

	{ "counters", "shm_name", CT_STRING, OFF(shm_name), "/carrier", 0, 0, "a POSIX shared memory name starting with '/'" },

	{ "track", "dir", CT_STRING, OFF(track_dir), "", 0, 0, "a directory for the daily tracking files, empty for a 'track' directory beside the spool, or off" },
	{ "track", "retention", CT_DURATION, OFF(track_retention), "30d", 0, 3650 * 86400ULL, "a duration in days such as 30d, or 0 to keep every file" },

	{ "metrics", "listen", CT_STRING, OFF(metrics_listen), "", 0, 0, "ADDRESS:PORT for the Prometheus/OpenMetrics endpoint (IPv6 as [ADDRESS]:PORT), or empty for none" },

	{ "delivery", "retry_schedule", CT_DURATIONS, OFF(retry_schedule), "1m, 5m, 15m, 30m, 1h, 2h, 4h", 1, 7 * 86400, "a comma-separated list of durations from 1s to 7d; the last one repeats" },
	{ "delivery", "max_queue_lifetime", CT_DURATION, OFF(max_queue_lifetime), "5d", 1, 60 * 86400, "a duration from 1s to 60d" },
	{ "delivery", "delay_warning", CT_DURATION, OFF(delay_warning), "4h", 0, 60 * 86400, "a duration, or 0 for no delay warnings" },
	{ "delivery", "max_deliveries", CT_UINT, OFF(max_deliveries), "200", 1, 100000, "a number from 1 to 100000" },
	{ "delivery", "max_connections_per_destination", CT_UINT, OFF(max_connections_per_destination), "20", 1, 10000, "a number from 1 to 10000" },
	{ "delivery", "connect_timeout", CT_DURATION, OFF(connect_timeout), "30s", 1, 600, "a duration from 1s to 10m" },
	{ "delivery", "command_timeout", CT_DURATION, OFF(out_command_timeout), "5m", 1, 3600, "a duration from 1s to 1h (RFC 5321 suggests 5m)" },
	{ "delivery", "data_timeout", CT_DURATION, OFF(out_data_timeout), "10m", 1, 3600, "a duration from 1s to 1h (RFC 5321 suggests 10m for the final dot)" },
	{ "delivery", "helo_name", CT_STRING, OFF(helo_name), "", 0, 0, "a host name for EHLO, or empty for server.hostname" },
	{ "delivery", "double_bounce_to", CT_STRING, OFF(double_bounce_to), "", 0, 0, "an address that receives bounces that could not be delivered, or empty to drop them with an event" },

	{ "delivery", "tls_ca_file", CT_PATH, OFF(out_tls_ca_file), "", 0, 0, "a PEM file of CA certificates for routes with tls = verify, or empty for the system trust store" },

	{ "dns", "forwarder", CT_STRING, OFF(dns_forwarder), "", 0, 0, "empty for the resolvers of resolv_conf, or ADDRESS@PORT of a forwarder such as 127.0.0.1@5353" },
	{ "dns", "resolv_conf", CT_PATH, OFF(dns_resolv_conf), "/etc/resolv.conf", 0, 0, "a resolv.conf path" },
	{ "dns", "timeout", CT_DURATION, OFF(dns_timeout), "10s", 1, 300, "a duration from 1s to 5m" },

	{ "tls", "cert", CT_PATH, OFF(tls_cert), "", 0, 0, "a PEM certificate file (leaf first, may hold the chain), or empty for no TLS" },
	{ "tls", "key", CT_PATH, OFF(tls_key), "", 0, 0, "the PEM private key file of tls.cert" },
	{ "tls", "chain", CT_PATH, OFF(tls_chain), "", 0, 0, "a PEM file of intermediate certificates, or empty" },
	{ "tls", "min_version", CT_STRING, OFF(tls_min_version), "TLSv1.2", 0, 0, "TLSv1.2 or TLSv1.3" },
	{ "tls", "ciphers", CT_STRING, OFF(tls_ciphers), "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL", 0, 0, "an OpenSSL cipher list for TLS 1.2" },
	{ "tls", "ciphersuites", CT_STRING, OFF(tls_ciphersuites), "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256", 0, 0, "an OpenSSL TLS 1.3 ciphersuite list" },
	{ "tls", "sni", CT_STRING, OFF(tls_sni), "", 0, 0, "a comma-separated list of NAME:/CERT:/KEY (NAME may be *.domain), or empty" },

	{ "auth", "passwd_file", CT_PATH, OFF(auth_passwd_file), "", 0, 0, "a file of USER:HASH lines (carrier passwd), or empty" },
	{ "auth", "dovecot_socket", CT_PATH, OFF(auth_dovecot_socket), "", 0, 0, "the path of Dovecot's auth-client socket (checked instead of passwd_file), or empty" },
	{ "auth", "require_tls", CT_BOOL, OFF(auth_require_tls), "yes", 0, 0, "yes or no (no offers AUTH in plaintext too)" },
	{ "auth", "sender_login_match", CT_BOOL, OFF(auth_sender_login_match), "yes", 0, 0, "yes or no (yes: MAIL FROM must be LOGIN@a-local-domain, or the login itself when it has an @)" },
	{ "auth", "received_header", CT_BOOL, OFF(auth_received), "no", 0, 0, "yes or no (yes names the login in the Received header)" },
	{ "auth", "max_failures", CT_UINT, OFF(auth_max_failures), "5", 1, 1000, "a number from 1 to 1000 (failed AUTH per client address before 421)" },
	{ "auth", "failure_delay", CT_DURATION, OFF(auth_failure_delay), "2s", 0, 60, "a duration from 0s to 60s before each failure reply" },
	{ "auth", "failure_window", CT_DURATION, OFF(auth_failure_window), "15m", 1, 86400, "a duration from 1s to 1d for which a failure counts" },
	{ "auth", "verify_threads", CT_UINT, OFF(auth_verify_threads), "2", 1, 64, "a number from 1 to 64 (threads hashing passwords of passwd_file)" },
	{ "auth", "verify_queue", CT_UINT, OFF(auth_verify_queue), "64", 1, 100000, "a number from 1 to 100000 (password checks in progress before 454)" },
};

#define CONF_N_KEYS (sizeof conf_keys / sizeof conf_keys[0])

static const char conf_embedded[] =
	"; carrier's embedded development default (carrierd without -c).\n"
	"; Everything lives under ./var of the directory carrierd starts in.\n"
	"[server]\n"
	"listen = 127.0.0.1:2525\n"
	"local_domains = localhost\n"
	"relay_networks = 127.0.0.0/8, ::1\n"
	"pidfile = ./var/carrierd.pid\n"
	"[spool]\n"
	"path = ./var/spool\n"
	"min_free_space = 10M\n"
	"[local]\n"
	"maildir = ./var/mail\n"
	"[control]\n"
	"socket = ./var/carrierd.sock\n"
	"[counters]\n"
	"shm_name = /carrier-dev\n";

const char *conf_embedded_default(void)
{
	return conf_embedded;
}

/* ---- parse state ---------------------------------------------------------- */

struct conf_parse {
	struct carrier_conf *conf;
	struct conf_errors *errs;
	const char *file;
	unsigned line;                  /* line the reader handed out last */
	unsigned set_line[CONF_N_KEYS]; /* where each key was set, 0 = default */
	bool bad[CONF_N_KEYS];          /* already reported: no second error */
	unsigned level_line[EVLOG_N_CATEGORIES];
	/* reader state */
	FILE *fp;
	const char *text;
	char bad_section[64];           /* last unknown section, reported once */
	unsigned section_line;          /* line of the current [section] header */
	unsigned route_line;            /* header line of the route being filled */
};

static char *xstrdup(const char *s)
{
	char *p = strdup(s ? s : "");

	if (p == NULL)
		abort();    /* configuration is loaded at startup/reload only */
	return p;
}

static void conf_err(struct conf_parse *p, unsigned line, const char *key,
		     const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static void conf_err(struct conf_parse *p, unsigned line, const char *key,
		     const char *fmt, ...)
{
	struct conf_errors *e = p->errs;
	struct conf_error *v = realloc(e->v, (e->n + 1) * sizeof *v);
	char buf[512];
	va_list ap;

	if (v == NULL)
		abort();
	va_start(ap, fmt);
	vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	e->v = v;
	v[e->n].file = xstrdup(p->file);
	v[e->n].line = line;
	v[e->n].key = xstrdup(key);
	v[e->n].problem = xstrdup(buf);
	e->n++;
}

void conf_error_format(const struct conf_error *e, char *buf, size_t size)
{
	if (e->key[0])
		snprintf(buf, size, "%s:%u: %s: %s", e->file, e->line, e->key, e->problem);
	else
		snprintf(buf, size, "%s:%u: %s", e->file, e->line, e->problem);
}

void conf_errors_clear(struct conf_errors *errs)
{
	for (size_t i = 0; i < errs->n; i++) {
		free(errs->v[i].file);
		free(errs->v[i].key);
		free(errs->v[i].problem);
	}
	free(errs->v);
	errs->v = NULL;
	errs->n = 0;
}

/* ---- value parsers: each returns 0, or -1 with the problem in `why` ------- */

static const char *skip_ws(const char *s)
{
	while (*s == ' ' || *s == '\t')
		s++;
	return s;
}

static int parse_uint(const char *v, unsigned long long *r, char *why, size_t wl)
{
	char *end;

	if (!isdigit((unsigned char)*v)) {
		snprintf(why, wl, "'%s' is not a number", v);
		return -1;
	}
	errno = 0;
	*r = strtoull(v, &end, 10);
	if (errno == ERANGE || *end != '\0') {
		snprintf(why, wl, "'%s' is not a number", v);
		return -1;
	}
	return 0;
}

/* Number with a unit suffix from `units` (suffix letter -> multiplier). */
static int parse_scaled(const char *v, const char *letters, const unsigned long long *mult,
			unsigned long long *r, char *why, size_t wl)
{
	char *end;
	unsigned long long n;

	if (!isdigit((unsigned char)*v)) {
		snprintf(why, wl, "'%s' is not a number", v);
		return -1;
	}
	errno = 0;
	n = strtoull(v, &end, 10);
	if (errno == ERANGE) {
		snprintf(why, wl, "'%s' is too large", v);
		return -1;
	}
	if (*end != '\0') {
		const char *l = strchr(letters, tolower((unsigned char)*end));

		if (l == NULL || end[1] != '\0' || (end[1] == '\0' && *end == '\0')) {
			snprintf(why, wl, "'%s' has an unknown unit '%s'", v, end);
			return -1;
		}
		unsigned long long m = mult[l - letters];

		if (n > ULLONG_MAX / m) {
			snprintf(why, wl, "'%s' is too large", v);
			return -1;
		}
		n *= m;
	}
	*r = n;
	return 0;
}

static int parse_size(const char *v, unsigned long long *r, char *why, size_t wl)
{
	static const unsigned long long mult[] = { KB, MB, GB, 1024 * GB, 1 };

	return parse_scaled(v, "kmgtb", mult, r, why, wl);
}

static int parse_duration(const char *v, unsigned long long *r, char *why, size_t wl)
{
	static const unsigned long long mult[] = { 1, 60, 3600, 86400, 604800 };

	return parse_scaled(v, "smhdw", mult, r, why, wl);
}

static int parse_bool(const char *v, bool *r, char *why, size_t wl)
{
	static const char *const yes[] = { "yes", "true", "on", "1" };
	static const char *const no[] = { "no", "false", "off", "0" };

	for (size_t i = 0; i < 4; i++) {
		if (strcasecmp(v, yes[i]) == 0) {
			*r = true;
			return 0;
		}
		if (strcasecmp(v, no[i]) == 0) {
			*r = false;
			return 0;
		}
	}
	snprintf(why, wl, "'%s' is not yes or no", v);
	return -1;
}

/* Splits a comma-separated list into trimmed items; calls `fn` for each. */
static int for_each_item(const char *v, int (*fn)(const char *item, void *arg, char *why, size_t wl),
			 void *arg, char *why, size_t wl)
{
	char item[CONF_HOST_MAX + 32];
	const char *p = v;

	while (*p) {
		const char *comma = strchr(p, ',');
		size_t len = comma ? (size_t)(comma - p) : strlen(p);

		p = skip_ws(p);
		len = comma ? (size_t)(comma - p) : strlen(p);
		while (len > 0 && (p[len - 1] == ' ' || p[len - 1] == '\t'))
			len--;
		if (len == 0) {
			snprintf(why, wl, "empty item in list '%s'", v);
			return -1;
		}
		if (len >= sizeof item) {
			snprintf(why, wl, "item '%.40s...' is too long", p);
			return -1;
		}
		memcpy(item, p, len);
		item[len] = '\0';
		if (fn(item, arg, why, wl) < 0)
			return -1;
		p = comma ? comma + 1 : p + strlen(p);
	}
	return 0;
}

static void *grow(void *v, size_t n, size_t size)
{
	void *r = realloc(v, (n + 1) * size);

	if (r == NULL)
		abort();
	return r;
}

static int add_listen(const char *item, void *arg, char *why, size_t wl)
{
	struct carrier_conf *c = arg;
	struct conf_listen l = { 0 };
	const char *colon;
	unsigned long long port;
	size_t hostlen;
	char addr[CONF_HOST_MAX + 16];
	const char *slash = strchr(item, '/');

	if (slash != NULL) {
		if (strcmp(slash, "/submission") == 0) {
			l.role = CONF_ROLE_SUBMISSION;
		} else if (strcmp(slash, "/smtps") == 0 || strcmp(slash, "/submissions") == 0) {
			l.role = CONF_ROLE_SUBMISSION;
			l.implicit_tls = true;
		} else if (strcmp(slash, "/smtp") != 0) {
			snprintf(why, wl, "'%s' has an unknown role '%s' (/smtp, /submission or /smtps)",
				 item, slash + 1);
			return -1;
		}
		snprintf(addr, sizeof addr, "%.*s", (int)(slash - item), item);
	} else {
		snprintf(addr, sizeof addr, "%s", item);
	}
	snprintf(l.text, sizeof l.text, "%s", item);
	item = addr;
	if (item[0] == '[') {
		const char *close = strchr(item, ']');

		if (close == NULL || close[1] != ':') {
			snprintf(why, wl, "'%s' is not [IPV6]:PORT", item);
			return -1;
		}
		hostlen = (size_t)(close - item - 1);
		memcpy(l.host, item + 1, hostlen < sizeof l.host ? hostlen : 0);
		colon = close + 1;
	} else {
		colon = strrchr(item, ':');
		if (colon == NULL || strchr(item, ':') != colon) {
			snprintf(why, wl, "'%s' is not ADDRESS:PORT", item);
			return -1;
		}
		hostlen = (size_t)(colon - item);
		memcpy(l.host, item, hostlen < sizeof l.host ? hostlen : 0);
	}
	if (parse_uint(colon + 1, &port, why, wl) < 0 || port == 0 || port > 65535) {
		snprintf(why, wl, "'%s' has no valid port (1-65535)", item);
		return -1;
	}
	l.port = (uint16_t)port;
	struct sockaddr_in *s4 = (struct sockaddr_in *)&l.addr;
	struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&l.addr;

	if (inet_pton(AF_INET, l.host, &s4->sin_addr) == 1) {
		s4->sin_family = AF_INET;
		s4->sin_port = htons(l.port);
		l.addrlen = sizeof *s4;
	} else if (inet_pton(AF_INET6, l.host, &s6->sin6_addr) == 1) {
		s6->sin6_family = AF_INET6;
		s6->sin6_port = htons(l.port);
		l.addrlen = sizeof *s6;
	} else {
		snprintf(why, wl, "'%s' is not a numeric IPv4 or IPv6 address", l.host);
		return -1;
	}
	c->listen = grow(c->listen, c->n_listen, sizeof l);
	c->listen[c->n_listen++] = l;
	return 0;
}

static int add_net(const char *item, void *arg, char *why, size_t wl)
{
	struct carrier_conf *c = arg;
	struct conf_net n = { 0 };
	char addr[64];
	const char *slash = strchr(item, '/');
	size_t alen = slash ? (size_t)(slash - item) : strlen(item);
	unsigned long long prefix;

	if (alen >= sizeof addr) {
		snprintf(why, wl, "'%s' is not a network", item);
		return -1;
	}
	memcpy(addr, item, alen);
	addr[alen] = '\0';
	if (inet_pton(AF_INET, addr, n.addr) == 1)
		n.family = AF_INET;
	else if (inet_pton(AF_INET6, addr, n.addr) == 1)
		n.family = AF_INET6;
	else {
		snprintf(why, wl, "'%s' is not an IPv4 or IPv6 address", addr);
		return -1;
	}
	unsigned maxp = n.family == AF_INET ? 32 : 128;

	prefix = maxp;
	if (slash && (parse_uint(slash + 1, &prefix, why, wl) < 0 || prefix > maxp)) {
		snprintf(why, wl, "'%s' has a prefix length outside 0-%u", item, maxp);
		return -1;
	}
	n.prefix = (unsigned)prefix;
	snprintf(n.text, sizeof n.text, "%s", item);
	c->relay_networks = grow(c->relay_networks, c->n_relay_networks, sizeof n);
	c->relay_networks[c->n_relay_networks++] = n;
	return 0;
}

static bool domain_ok(const char *d)
{
	size_t label = 0, len = strlen(d);

	if (len == 0 || len > 253 || d[0] == '.' || d[0] == '-')
		return false;
	for (const char *p = d; *p; p++) {
		if (*p == '.') {
			if (label == 0)
				return false;
			label = 0;
		} else if (isalnum((unsigned char)*p) || *p == '-') {
			if (++label > 63)
				return false;
		} else {
			return false;
		}
	}
	return true;
}

static int add_domain(const char *item, void *arg, char *why, size_t wl)
{
	struct carrier_conf *c = arg;

	if (!domain_ok(item)) {
		snprintf(why, wl, "'%s' is not a domain name", item);
		return -1;
	}
	c->local_domains = grow(c->local_domains, c->n_local_domains, sizeof(char *));
	c->local_domains[c->n_local_domains++] = xstrdup(item);
	return 0;
}

struct durations {
	struct carrier_conf *c;
	const struct conf_key *k;
	unsigned **v;
	size_t *n;
};

static int add_duration(const char *item, void *arg, char *why, size_t wl)
{
	struct durations *d = arg;
	unsigned long long secs;

	if (parse_duration(item, &secs, why, wl) < 0)
		return -1;
	if (secs < d->k->min || secs > d->k->max) {
		snprintf(why, wl, "%s is out of range", item);
		return -1;
	}
	*d->v = grow(*d->v, *d->n, sizeof **d->v);
	(*d->v)[(*d->n)++] = (unsigned)secs;
	return 0;
}

static int make_path(const char *v, char **r, char *why, size_t wl)
{
	char cwd[PATH_MAX];
	size_t need;

	if (*v == '\0' || *v == '/') {
		*r = xstrdup(v);
		return 0;
	}
	/* Relative paths are taken against the starting directory and made
	 * absolute now, because a daemon changes its directory to /. */
	if (getcwd(cwd, sizeof cwd) == NULL) {
		snprintf(why, wl, "relative path '%s' but the working directory is unknown (%s)",
			 v, strerror(errno));
		return -1;
	}
	while (v[0] == '.' && v[1] == '/')
		v += 2;
	need = strlen(cwd) + 1 + strlen(v) + 1;
	*r = malloc(need);
	if (*r == NULL)
		abort();
	snprintf(*r, need, "%s/%s", strcmp(cwd, "/") ? cwd : "", v);
	return 0;
}

/* ---- applying a key ---------------------------------------------------------- */

static void clear_list(struct carrier_conf *c, enum conf_type t)
{
	if (t == CT_LISTEN) {
		free(c->listen);
		c->listen = NULL;
		c->n_listen = 0;
	} else if (t == CT_NETS) {
		free(c->relay_networks);
		c->relay_networks = NULL;
		c->n_relay_networks = 0;
	} else if (t == CT_DOMAINS) {
		for (size_t i = 0; i < c->n_local_domains; i++)
			free(c->local_domains[i]);
		free(c->local_domains);
		c->local_domains = NULL;
		c->n_local_domains = 0;
	} else if (t == CT_DURATIONS) {
		free(c->retry_schedule);
		c->retry_schedule = NULL;
		c->n_retry_schedule = 0;
	}
}

static int set_number(const struct conf_key *k, void *field, unsigned long long n,
		      char *why, size_t wl)
{
	if (n < k->min || n > k->max) {
		snprintf(why, wl, "%llu is out of range", n);
		return -1;
	}
	if (k->type == CT_SIZE)
		*(uint64_t *)field = n;
	else
		*(unsigned *)field = (unsigned)n;
	return 0;
}

static int apply_key(struct carrier_conf *c, const struct conf_key *k, const char *v,
		     char *why, size_t wl)
{
	void *field = (char *)c + k->offset;
	unsigned long long n;

	switch (k->type) {
	case CT_STRING:
		free(*(char **)field);
		*(char **)field = xstrdup(v);
		return 0;
	case CT_PATH:
		free(*(char **)field);
		*(char **)field = NULL;
		return make_path(v, (char **)field, why, wl);
	case CT_BOOL:
		return parse_bool(v, (bool *)field, why, wl);
	case CT_UINT:
		if (parse_uint(v, &n, why, wl) < 0)
			return -1;
		return set_number(k, field, n, why, wl);
	case CT_SIZE:
		if (parse_size(v, &n, why, wl) < 0)
			return -1;
		return set_number(k, field, n, why, wl);
	case CT_DURATION:
		if (parse_duration(v, &n, why, wl) < 0)
			return -1;
		return set_number(k, field, n, why, wl);
	case CT_LISTEN:
		clear_list(c, k->type);
		return for_each_item(v, add_listen, c, why, wl);
	case CT_NETS:
		clear_list(c, k->type);
		return for_each_item(v, add_net, c, why, wl);
	case CT_DOMAINS:
		clear_list(c, k->type);
		return for_each_item(v, add_domain, c, why, wl);
	case CT_DURATIONS: {
		struct durations d = { c, k, &c->retry_schedule, &c->n_retry_schedule };

		clear_list(c, k->type);
		if (for_each_item(v, add_duration, &d, why, wl) < 0)
			return -1;
		if (c->n_retry_schedule == 0) {
			snprintf(why, wl, "empty list");
			return -1;
		}
		return 0;
	}
	}
	return -1;
}

/* ---- did you mean ------------------------------------------------------------ */

static size_t edit_distance(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b), prev[64], cur[64];

	if (la >= 63 || lb >= 63)
		return 99;
	for (size_t j = 0; j <= lb; j++)
		prev[j] = j;
	for (size_t i = 1; i <= la; i++) {
		cur[0] = i;
		for (size_t j = 1; j <= lb; j++) {
			size_t sub = prev[j - 1] + (tolower((unsigned char)a[i - 1]) != tolower((unsigned char)b[j - 1]));
			size_t del = prev[j] + 1, ins = cur[j - 1] + 1;

			cur[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
		}
		memcpy(prev, cur, (lb + 1) * sizeof *prev);
	}
	return prev[lb];
}

/* Suggests a key for an unknown `name` in `section`: a near miss in the same
 * section, or the same name in another section. */
static void suggest_key(const char *section, const char *name, char *out, size_t size)
{
	size_t best = 3;

	*out = '\0';
	for (size_t i = 0; i < CONF_N_KEYS; i++) {
		const struct conf_key *k = &conf_keys[i];

		if (strcasecmp(k->section, section) != 0 && strcasecmp(k->name, name) == 0) {
			snprintf(out, size, " (did you mean '%s' in section [%s]?)", k->name, k->section);
			return;
		}
	}
	for (size_t i = 0; i < CONF_N_KEYS; i++) {
		const struct conf_key *k = &conf_keys[i];
		size_t d;

		if (strcasecmp(k->section, section) != 0)
			continue;
		d = edit_distance(name, k->name);
		if (d < best || (strstr(k->name, name) && best > 2 && strlen(name) >= 4)) {
			best = d < best ? d : 2;
			snprintf(out, size, " (did you mean '%s'?)", k->name);
		}
	}
}

static void suggest_section(const char *section, char *out, size_t size)
{
	static const char *const sections[] = { "server", "smtp", "spool", "local",
						"log", "control", "counters", "track", "metrics", "delivery",
						"dns", "tls", "auth", "route" };
	size_t best = 3;

	snprintf(out, size, " (expected one of [server], [smtp], [spool], [local], [log], [control], [counters], [track], [metrics], [delivery], [dns], [tls], [auth], [route DOMAIN])");
	for (size_t i = 0; i < sizeof sections / sizeof sections[0]; i++) {
		size_t d = edit_distance(section, sections[i]);

		if (d < best) {
			best = d;
			snprintf(out, size, " (did you mean [%s]?)", sections[i]);
		}
	}
}

/* ---- inih glue -------------------------------------------------------------------- */

static int conf_set_level(struct conf_parse *p, const char *name, const char *value)
{
	char key[96];
	enum evlog_category cat;
	enum evlog_level lvl;

	snprintf(key, sizeof key, "log.%s", name);
	if (evlog_category_parse(name + 6, &cat) < 0) {
		conf_err(p, p->line, key, "unknown category '%s' (expected level.CATEGORY with a category of events.def: core, config, net, spool, smtp_in, ...)", name + 6);
		return 1;
	}
	if (evlog_level_parse(value, &lvl) < 0) {
		conf_err(p, p->line, key, "'%s' is not a level (expected none, minimum, medium or maximum)", value);
		return 1;
	}
	if (p->level_line[cat])
		conf_err(p, p->line, key, "set twice (first at line %u); expected once", p->level_line[cat]);
	p->level_line[cat] = p->line;
	p->conf->levels[cat] = lvl;
	return 1;
}

static bool route_space_ok(const char *space)
{
	if (strcmp(space, "*") == 0)
		return true;
	if (space[0] == '*' && space[1] == '.')
		space += 2;
	return domain_ok(space);
}

static struct conf_route *route_current(struct conf_parse *p, const char *space)
{
	struct carrier_conf *c = p->conf;
	struct conf_route *r;

	if (c->n_routes > 0 && p->route_line == p->section_line)
		return &c->routes[c->n_routes - 1];
	c->routes = grow(c->routes, c->n_routes, sizeof *c->routes);
	r = &c->routes[c->n_routes++];
	memset(r, 0, sizeof *r);
	snprintf(r->space, sizeof r->space, "%s", space);
	for (char *q = r->space; *q; q++)
		*q = (char)tolower((unsigned char)*q);
	r->cost = 10;
	r->via = xstrdup("");
	r->tls = xstrdup("");
	r->line = p->section_line;
	p->route_line = p->section_line;
	if (!route_space_ok(r->space))
		conf_err(p, r->line, "route", "'%s' is not an address space (expected [route DOMAIN], [route *.DOMAIN] or [route *])", space);
	return r;
}

/* [route SPACE] sections: several may share a space (failover by cost). */
static int conf_set_route(struct conf_parse *p, const char *space, const char *name,
			  const char *value)
{
	struct conf_route *r;
	char key[300], why[256];
	unsigned long long n;

	while (*space == ' ')
		space++;
	r = route_current(p, space);
	snprintf(key, sizeof key, "route %s.%s", r->space, name);
	if (strcasecmp(name, "via") == 0) {
		if (r->via_line)
			conf_err(p, p->line, key, "set twice (first at line %u); expected once", r->via_line);
		free(r->via);
		r->via = xstrdup(value);
		r->via_line = p->line;
	} else if (strcasecmp(name, "tls") == 0) {
		free(r->tls);
		r->tls = xstrdup(value);
	} else if (strcasecmp(name, "cost") == 0 || strcasecmp(name, "max_connections") == 0 ||
		   strcasecmp(name, "max_rate") == 0) {
		if (parse_uint(value, &n, why, sizeof why) < 0 || n > 1000000) {
			conf_err(p, p->line, key, "'%s' is not a number from 0 to 1000000", value);
			return 1;
		}
		if (strcasecmp(name, "cost") == 0)
			r->cost = (unsigned)n;
		else if (strcasecmp(name, "max_connections") == 0)
			r->max_connections = (unsigned)n;
		else
			r->max_rate = (unsigned)n;
	} else {
		const char *hint = edit_distance(name, "via") <= 2 ? " (did you mean 'via'?)" :
				   edit_distance(name, "cost") <= 2 ? " (did you mean 'cost'?)" :
				   " (expected via, cost, max_connections, max_rate or tls)";

		conf_err(p, p->line, key, "unknown key%s", hint);
	}
	return 1;
}

static int conf_handler(void *user, const char *section, const char *name, const char *value)
{
	struct conf_parse *p = user;
	char key[160], why[400], hint[160];

	snprintf(key, sizeof key, "%s.%s", section, name);
	if (strcasecmp(section, "log") == 0 && strncasecmp(name, "level.", 6) == 0)
		return conf_set_level(p, name, value);
	if (strncasecmp(section, "route", 5) == 0 && (section[5] == ' ' || section[5] == '\0'))
		return conf_set_route(p, section + 5, name, value);
	for (size_t i = 0; i < CONF_N_KEYS; i++) {
		const struct conf_key *k = &conf_keys[i];

		if (strcasecmp(k->section, section) != 0 || strcasecmp(k->name, name) != 0)
			continue;
		if (p->set_line[i])
			conf_err(p, p->line, key, "set twice (first at line %u); expected once", p->set_line[i]);
		p->set_line[i] = p->line;
		if (apply_key(p->conf, k, value, why, sizeof why) < 0) {
			p->bad[i] = true;
			conf_err(p, p->line, key, "%s (expected %s)", why, k->expect);
		}
		return 1;
	}
	if (*section == '\0') {
		conf_err(p, p->line, name, "key outside any section (expected a [section] line first, such as [server])");
		return 1;
	}
	bool known_section = false;

	for (size_t i = 0; i < CONF_N_KEYS; i++)
		known_section |= strcasecmp(conf_keys[i].section, section) == 0;
	if (!known_section) {
		/* One error per unknown section, at its first key. */
		if (strcmp(p->bad_section, section) != 0) {
			snprintf(p->bad_section, sizeof p->bad_section, "%s", section);
			suggest_section(section, hint, sizeof hint);
			conf_err(p, p->line, "section", "unknown section [%s]%s", section, hint);
		}
		return 1;
	}
	suggest_key(section, name, hint, sizeof hint);
	conf_err(p, p->line, key, "unknown key%s", hint);
	return 1;
}

/*
 * inih reads through this function so that we know the line of every
 * callback, and so that lines inih would reject (or split, when longer than
 * its buffer) are reported by us with their number.
 */
static char *conf_reader(char *str, int num, void *stream)
{
	struct conf_parse *p = stream;
	char line[4096];
	size_t len;

	for (;;) {
		if (p->fp != NULL) {
			if (fgets(line, sizeof line, p->fp) == NULL)
				return NULL;
		} else {
			const char *nl;

			if (*p->text == '\0')
				return NULL;
			nl = strchr(p->text, '\n');
			len = nl ? (size_t)(nl - p->text + 1) : strlen(p->text);
			if (len >= sizeof line)
				len = sizeof line - 1;
			memcpy(line, p->text, len);
			line[len] = '\0';
			p->text += len;
		}
		p->line++;
		len = strlen(line);
		if (len > 0 && line[len - 1] != '\n' && p->fp != NULL && !feof(p->fp)) {
			int c;

			while ((c = fgetc(p->fp)) != EOF && c != '\n')
				;
			conf_err(p, p->line, "syntax", "line too long (expected at most %d characters)", num - 3);
			continue;
		}
		if (len + 1 > (size_t)num) {
			conf_err(p, p->line, "syntax", "line too long (expected at most %d characters)", num - 3);
			continue;
		}
		const char *s = skip_ws(line);

		if (*s && *s != '\n' && *s != '\r' && *s != ';' && *s != '#' && *s != '[' &&
		    strchr(s, '=') == NULL) {
			char shown[64];

			snprintf(shown, sizeof shown, "%.*s", (int)strcspn(s, "\r\n"), s);
			conf_err(p, p->line, "syntax", "'%s' is not a setting (expected KEY = VALUE, [section] or a ; comment)", shown);
			continue;
		}
		if (*s == '[' && strchr(s, ']') == NULL) {
			conf_err(p, p->line, "syntax", "section header without ']' (expected [name])");
			continue;
		}
		if (*s == '[')
			p->section_line = p->line;  /* tells apart two [route x] */
		memcpy(str, line, len + 1);
		return str;
	}
}

static void conf_defaults(struct carrier_conf *c)
{
	char why[256];

	for (size_t i = 0; i < CONF_N_KEYS; i++)
		if (apply_key(c, &conf_keys[i], conf_keys[i].def, why, sizeof why) < 0)
			abort();    /* a bad default is a bug caught by the unit tests */
	for (size_t i = 0; i < EVLOG_N_CATEGORIES; i++)
		c->levels[i] = EVLOG_LEVEL_MINIMUM;
}

/* Checks that involve more than one key, or that a list may not be empty. */
static void conf_validate(struct conf_parse *p)
{
	struct carrier_conf *c = p->conf;

	for (size_t i = 0; i < c->n_routes; i++) {
		char key[300];

		snprintf(key, sizeof key, "route %s.via", c->routes[i].space);
		if (c->routes[i].via[0] == '\0')
			conf_err(p, c->routes[i].line, key, "missing (expected via = smtp:[HOST]:PORT, mx, lmtp:unix:/PATH, lmtp:[HOST]:PORT, maildir:/PATH, discard or reject)");
	}

	for (size_t i = 0; i < CONF_N_KEYS; i++) {
		const struct conf_key *k = &conf_keys[i];
		char key[96];

		if (p->bad[i])
			continue;
		snprintf(key, sizeof key, "%s.%s", k->section, k->name);
		if (k->type == CT_LISTEN && c->n_listen == 0)
			conf_err(p, p->set_line[i], key, "no listen address (expected %s)", k->expect);
		if (k->offset == OFF(spool_path) && c->spool_path[0] == '\0')
			conf_err(p, p->set_line[i], key, "empty (expected %s)", k->expect);
		if (k->offset == OFF(control_socket) &&
		    strlen(c->control_socket) >= 108)
			conf_err(p, p->set_line[i], key, "path longer than 107 bytes, the limit of a Unix socket (expected a shorter path)");
		if (k->offset == OFF(shm_name) && (c->shm_name[0] != '/' || strchr(c->shm_name + 1, '/')))
			conf_err(p, p->set_line[i], key, "'%s' is not a shared memory name (expected %s)", c->shm_name, k->expect);
	}
}

static unsigned key_line(const struct conf_parse *p, size_t offset)
{
	for (size_t i = 0; i < CONF_N_KEYS; i++)
		if (conf_keys[i].offset == offset)
			return p->set_line[i];
	return 0;
}

/* One tls.sni item: NAME:/CERT:/KEY. */
static bool sni_item_ok(const char *item, size_t len)
{
	const char *c1 = memchr(item, ':', len), *c2;

	if (c1 == NULL || c1 == item || c1 + 1 >= item + len || c1[1] != '/')
		return false;
	c2 = memchr(c1 + 1, ':', (size_t)(item + len - c1 - 1));
	return c2 != NULL && c2 + 1 < item + len && c2[1] == '/' &&
	       memchr(c2 + 1, ':', (size_t)(item + len - c2 - 1)) == NULL;
}

/* [tls] and [auth] against the listeners that need them. */
static void conf_validate_tls(struct conf_parse *p)
{
	struct carrier_conf *c = p->conf;
	unsigned ll = key_line(p, OFF(listen));
	const char *v;

	if (c->tls_cert[0] && !c->tls_key[0])
		conf_err(p, key_line(p, OFF(tls_cert)), "tls.cert", "set without tls.key (expected both, or neither)");
	if (c->tls_key[0] && !c->tls_cert[0])
		conf_err(p, key_line(p, OFF(tls_key)), "tls.key", "set without tls.cert (expected both, or neither)");
	if (strcmp(c->tls_min_version, "TLSv1.2") && strcmp(c->tls_min_version, "TLSv1.3"))
		conf_err(p, key_line(p, OFF(tls_min_version)), "tls.min_version",
			 "'%s' is not a supported version (expected TLSv1.2 or TLSv1.3)", c->tls_min_version);
	for (v = c->tls_sni; *v;) {
		size_t n = strcspn(v, ","), a = 0;

		while (a < n && v[a] == ' ')
			a++;
		while (n > a && v[n - 1] == ' ')
			n--;
		if (n > a && !sni_item_ok(v + a, n - a))
			conf_err(p, key_line(p, OFF(tls_sni)), "tls.sni", "'%.*s' is not NAME:/CERT:/KEY (expected %s)",
				 (int)(n - a), v + a, "absolute paths, such as mail.example.org:/etc/carrier/mail.pem:/etc/carrier/mail.key");
		if (c->tls_sni[0] && !c->tls_cert[0] && v == c->tls_sni)
			conf_err(p, key_line(p, OFF(tls_sni)), "tls.sni", "set without tls.cert (expected a default certificate too)");
		v += strcspn(v, ",");
		if (*v == ',')
			v++;
	}
	for (size_t i = 0; i < c->n_listen; i++) {
		const struct conf_listen *l = &c->listen[i];

		if (l->role != CONF_ROLE_SUBMISSION)
			continue;
		if (!c->tls_cert[0])
			conf_err(p, ll, "server.listen", "'%s' needs TLS but no certificate is configured (expected [tls] cert and key)", l->text);
		if (!c->auth_passwd_file[0] && !c->auth_dovecot_socket[0])
			conf_err(p, ll, "server.listen", "'%s' needs AUTH but no password file is configured (expected [auth] passwd_file or dovecot_socket)", l->text);
	}
}

/* [track] dir: empty means a "track" directory beside the spool (not in
 * it: the spool is 0700 and admins read the tracking files); "off" turns
 * tracking off. */
static void conf_resolve_track(struct conf_parse *p, struct carrier_conf *c)
{
	char why[256], *dir, *slash;
	size_t len = strlen(c->spool_path);

	free(c->track_path);
	c->track_path = NULL;
	if (strcmp(c->track_dir, "off") == 0) {
		c->track_path = xstrdup("");
		return;
	}
	if (c->track_dir[0] != '\0') {
		if (make_path(c->track_dir, &c->track_path, why, sizeof why) < 0) {
			c->track_path = xstrdup("");
			conf_err(p, 0, "track.dir", "%s", why);
		}
		return;
	}
	dir = malloc(len + 8);
	if (dir == NULL)
		abort();
	memcpy(dir, c->spool_path, len + 1);
	while (len > 1 && dir[len - 1] == '/')
		dir[--len] = '\0';
	slash = strrchr(dir, '/');
	snprintf(slash ? slash + 1 : dir, 8, "track");
	c->track_path = dir;
}

static struct carrier_conf *conf_parse_with(struct conf_parse *p, const char *name)
{
	struct carrier_conf *c = calloc(1, sizeof *c);

	if (c == NULL)
		abort();
	p->conf = c;
	p->file = name;
	c->path = xstrdup(name);
	conf_defaults(c);
	/* Indented lines are settings, never continuations of the previous one. */
	ini_allow_multiline = false;
	ini_parse_stream(conf_reader, p, conf_handler, p);
	conf_validate(p);
	conf_resolve_track(p, c);
	conf_validate_tls(p);
	if (p->errs->n > 0) {
		conf_free(&c);
		return NULL;
	}
	return c;
}

struct carrier_conf *conf_load_string(const char *name, const char *text,
				      struct conf_errors *errs)
{
	struct conf_parse p = { .errs = errs, .text = text };

	return conf_parse_with(&p, name);
}

struct carrier_conf *conf_load(const char *path, struct conf_errors *errs)
{
	struct conf_parse p = { .errs = errs };
	struct carrier_conf *c;

	if (path == NULL)
		return conf_load_string("<embedded>", conf_embedded, errs);
	p.fp = fopen(path, "r");
	if (p.fp == NULL) {
		p.file = path;
		conf_err(&p, 0, "", "cannot open: %s (expected a readable configuration file)",
			 strerror(errno));
		return NULL;
	}
	c = conf_parse_with(&p, path);
	fclose(p.fp);
	return c;
}

void conf_free(struct carrier_conf **confp)
{
	struct carrier_conf *c = *confp;

	if (c == NULL)
		return;
	for (size_t i = 0; i < CONF_N_KEYS; i++) {
		enum conf_type t = conf_keys[i].type;

		if (t == CT_STRING || t == CT_PATH)
			free(*(char **)((char *)c + conf_keys[i].offset));
		else
			clear_list(c, t);
	}
	for (size_t i = 0; i < c->n_routes; i++) {
		free(c->routes[i].via);
		free(c->routes[i].tls);
	}
	free(c->routes);
	free(c->track_path);
	free(c->path);
	free(c);
	*confp = NULL;
}

/* ---- queries -------------------------------------------------------------------- */

static bool net_contains(const struct conf_net *n, const uint8_t *a)
{
	unsigned full = n->prefix / 8, rest = n->prefix % 8;

	if (memcmp(n->addr, a, full) != 0)
		return false;
	if (rest == 0)
		return true;
	uint8_t mask = (uint8_t)(0xff << (8 - rest));

	return (n->addr[full] & mask) == (a[full] & mask);
}

bool conf_is_relay_client(const struct carrier_conf *conf, const struct sockaddr *addr)
{
	uint8_t a[16];
	int family = addr->sa_family;

	if (family == AF_INET) {
		memcpy(a, &((const struct sockaddr_in *)addr)->sin_addr, 4);
	} else if (family == AF_INET6) {
		const struct in6_addr *a6 = &((const struct sockaddr_in6 *)addr)->sin6_addr;

		if (IN6_IS_ADDR_V4MAPPED(a6)) {
			family = AF_INET;
			memcpy(a, &a6->s6_addr[12], 4);
		} else {
			memcpy(a, a6, 16);
		}
	} else {
		return false;
	}
	for (size_t i = 0; i < conf->n_relay_networks; i++)
		if (conf->relay_networks[i].family == family &&
		    net_contains(&conf->relay_networks[i], a))
			return true;
	return false;
}

bool conf_is_local_domain(const struct carrier_conf *conf, const char *domain)
{
	for (size_t i = 0; i < conf->n_local_domains; i++)
		if (strcasecmp(conf->local_domains[i], domain) == 0)
			return true;
	return false;
}

static void dump_value(const struct carrier_conf *c, const struct conf_key *k, FILE *out)
{
	const void *field = (const char *)c + k->offset;

	switch (k->type) {
	case CT_STRING:
	case CT_PATH:
		fputs(*(char *const *)field, out);
		break;
	case CT_BOOL:
		fputs(*(const bool *)field ? "yes" : "no", out);
		break;
	case CT_UINT:
	case CT_DURATION:
		fprintf(out, "%u%s", *(const unsigned *)field, k->type == CT_DURATION ? "s" : "");
		break;
	case CT_SIZE:
		fprintf(out, "%llu", (unsigned long long)*(const uint64_t *)field);
		break;
	case CT_LISTEN:
		for (size_t i = 0; i < c->n_listen; i++)
			fprintf(out, "%s%s", i ? ", " : "", c->listen[i].text);
		break;
	case CT_NETS:
		for (size_t i = 0; i < c->n_relay_networks; i++)
			fprintf(out, "%s%s", i ? ", " : "", c->relay_networks[i].text);
		break;
	case CT_DOMAINS:
		for (size_t i = 0; i < c->n_local_domains; i++)
			fprintf(out, "%s%s", i ? ", " : "", c->local_domains[i]);
		break;
	case CT_DURATIONS:
		for (size_t i = 0; i < c->n_retry_schedule; i++)
			fprintf(out, "%s%us", i ? ", " : "", c->retry_schedule[i]);
		break;
	}
}

void conf_dump(const struct carrier_conf *conf, FILE *out)
{
	const char *section = "";

	fprintf(out, "; effective configuration from %s\n", conf->path);
	for (size_t i = 0; i < CONF_N_KEYS; i++) {
		const struct conf_key *k = &conf_keys[i];

		if (strcmp(section, k->section) != 0) {
			section = k->section;
			fprintf(out, "\n[%s]\n", section);
			if (strcmp(section, "log") == 0)
				for (size_t c = 0; c < EVLOG_N_CATEGORIES; c++)
					fprintf(out, "level.%s = %s\n", evlog_category_name((enum evlog_category)c),
						evlog_level_name(conf->levels[c]));
		}
		fprintf(out, "%s = ", k->name);
		dump_value(conf, k, out);
		fputc('\n', out);
	}
	for (size_t i = 0; i < conf->n_routes; i++) {
		const struct conf_route *r = &conf->routes[i];

		fprintf(out, "\n[route %s]\nvia = %s\ncost = %u\n", r->space, r->via, r->cost);
		if (r->max_connections)
			fprintf(out, "max_connections = %u\n", r->max_connections);
		if (r->max_rate)
			fprintf(out, "max_rate = %u\n", r->max_rate);
		if (r->tls[0])
			fprintf(out, "tls = %s\n", r->tls);
	}
}
