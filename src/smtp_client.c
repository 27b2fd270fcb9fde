/*
 * smtp_client: the outbound SMTP/LMTP agent.  See smtp_client.h for the
 * contract and the protocol decisions.
 *
 * Shape: a job (one message, a batch of recipients, a list of
 * destinations) is attached to one connection at a time.  A connection
 * runs: CONNECTING -> GREETING -> EHLO (-> HELO) | LHLO -> READY; a job on
 * a READY connection runs a transaction (MAIL, RCPT..., DATA, body, dot);
 * then the connection goes back to the pool (IDLE) or to a waiting job
 * (which first sends RSET).  Replies are matched to commands through a
 * queue of expectations, so pipelined and one-at-a-time transactions share
 * the same code.  One timer per connection covers every wait.
 *
 * Threads: the loop thread of the client's base only.
 */
#include "smtp_client.h"

#include <errno.h>
#include <stdarg.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <time.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <unistd.h>

#include "conf.h"
#include "evlog.h"
#include "smtp_parse.h"
#include "tls.h"

#define SC_CHUNK 16384u          /* body bytes read per step */
#define SC_OUT_HIGH 65536u       /* keep at most this much queued */
#define SC_OUT_LOW 32768u        /* refill below this */
#define SC_MAX_RCPTS 1000u
#define SC_MAX_DESTS 32u
#define SC_NEXTHOP_MAX 256u
#define SC_LINE_MAX 2048u        /* our own command lines */
#define SC_CLOSE_MS 2000u        /* wait for the reply to QUIT */

enum sc_state {
	SC_CONNECTING,
	SC_GREETING,
	SC_EHLO,
	SC_STARTTLS,    /* STARTTLS sent, waiting for 220 */
	SC_HANDSHAKE,   /* TLS handshake running */
	SC_HELO,
	SC_RSET,        /* reused: RSET before the job */
	SC_TXN,         /* a transaction is running */
	SC_SENDING,     /* body being sent (part of the transaction) */
	SC_IDLE,
	SC_CLOSING,     /* QUIT sent; not counted against the cap */
};

enum sc_exp_kind {
	EXP_MAIL,
	EXP_RCPT,
	EXP_DATA,
	EXP_DOT,        /* SMTP: one reply for every accepted recipient */
	EXP_DOT_LMTP,   /* LMTP: the reply for recipient idx */
	EXP_DOT_EMPTY,  /* "." after a 354 with no recipient accepted */
};

struct sc_exp {
	enum sc_exp_kind kind;
	size_t idx;
};

struct sc_rcpt {
	char *addr;
	unsigned notify;
	char *orcpt;
};

struct sc_conn;

struct sc_job {
	struct smtp_client *c;
	struct sc_job *prev, *next;      /* all jobs of the client */
	struct sc_job *wnext;            /* wait queue */
	bool waiting;
	enum smtp_client_mode mode;
	char *nexthop, *qid, *sender, *envid;
	enum spool_body_type body_type;
	bool smtputf8;
	enum spool_dsn_ret dsn_ret;
	uint64_t size;
	struct sc_rcpt *rcpts;
	size_t n_rcpts;
	struct smtp_client_dest *dests;
	size_t n_dests;
	size_t dest_i;                   /* next destination to try */
	struct spool *spool;
	smtp_client_read_fn *read;
	void *read_arg;
	struct spool_body *body;
	smtp_client_done_fn *done;
	void *done_arg;
	struct event *done_ev;
	bool finished;
	bool no_reuse;                   /* a pooled connection was dead */
	bool plain_retry;                /* may: the next connection skips STARTTLS */
	enum smtp_client_tls tls;
	char *tls_ca_file, *tls_name;
	char tls_text[SMTP_CLIENT_TLS_TEXT_MAX];
	/* results */
	struct smtp_client_rcpt_result *res;
	bool *decided;
	bool *accepted;
	size_t n_accepted;
	size_t n_dot_pending;
	struct smtp_client_attempt *attempts;
	size_t n_attempts;
	bool connected, reused;
	char host[SMTP_CLIENT_HOST_MAX];
	char addr[SMTP_CLIENT_ADDR_MAX];
	/* transaction */
	bool mail_sent, mail_failed;
	size_t next_rcpt;                /* unpipelined: next RCPT to send */
	bool body_eof, bol, cr;
	struct sc_conn *conn;
};

struct sc_conn {
	struct smtp_client *c;
	struct sc_conn *prev, *next;
	enum smtp_client_mode mode;
	char nexthop[SC_NEXTHOP_MAX];
	struct smtp_client_dest dest;
	char addr_text[SMTP_CLIENT_ADDR_MAX];
	struct bufferevent *bev;
	struct event *timer;
	enum sc_state state;
	bool used;                       /* had a transaction */
	bool need_rset;                  /* last transaction was cut short */
	unsigned txn_replies;            /* replies seen in this transaction */
	/* capabilities */
	bool esmtp, pipelining, has_size, eightbit, utf8, dsn, starttls;
	bool tls_on, tls_verified;
	bool no_starttls;                /* may: the retry after a failed handshake */
	char tls_text[SMTP_CLIENT_TLS_TEXT_MAX];
	uint64_t size_max;
	struct smtp_parse_reply_parser parser;
	struct smtp_parse_reply reply;
	struct sc_exp *exp;
	size_t exp_cap, exp_head, exp_tail;
	struct sc_job *job;
	bool in_read;                    /* inside read_cb */
	bool dead;                       /* freed while in_read */
};

/* An address whose TLS handshake failed under may: plaintext until `until`
 * (CLOCK_MONOTONIC ms). */
struct sc_plain {
	struct smtp_client_dest dest;    /* only addr and addr_len count */
	uint64_t until;
};

struct smtp_client {
	struct event_base *base;
	struct evlog *log;
	struct smtp_client_opts opts;
	struct sc_conn *conns;
	struct sc_job *jobs;
	struct sc_job *wait_head, *wait_tail;
	struct smtp_client_stats stats;
	struct tls_client *tls;          /* made at the first STARTTLS */
	struct sc_plain plain[SMTP_CLIENT_PLAIN_MAX];
	char scratch[2 * SC_CHUNK + 8];
	char inbuf[SC_CHUNK];
};

static void conn_read_cb(struct bufferevent *bev, void *arg);
static void conn_write_cb(struct bufferevent *bev, void *arg);
static void conn_event_cb(struct bufferevent *bev, short what, void *arg);
static void conn_timer_cb(evutil_socket_t fd, short what, void *arg);
static void conn_free(struct sc_conn *conn, bool dispatch);
static void job_dispatch(struct sc_job *job);
static void job_connect_next(struct sc_job *job);
static void txn_start(struct sc_conn *conn);
static void conn_release(struct sc_conn *conn);
static void job_free(struct sc_job *job);

/* ---- small helpers ----------------------------------------------------- */

const char *smtp_client_class_name(enum smtp_client_class cls)
{
	switch (cls) {
	case SMTP_CLIENT_OK: return "OK";
	case SMTP_CLIENT_TEMP: return "TEMP";
	case SMTP_CLIENT_PERM: return "PERM";
	}
	return "UNKNOWN";
}

void smtp_client_opts_init(struct smtp_client_opts *o)
{
	memset(o, 0, sizeof *o);
	o->connect_ms = 30000;
	o->command_ms = 300000;
	o->data_ms = 600000;
	o->idle_ms = 5000;
	o->max_conns = 20;
	o->tls_plain_ms = 3600000;
	snprintf(o->helo_name, sizeof o->helo_name, "localhost");
}

void smtp_client_opts_from_conf(struct smtp_client_opts *o,
				const struct carrier_conf *conf)
{
	const char *helo;

	smtp_client_opts_init(o);
	o->connect_ms = conf->connect_timeout * 1000u;
	o->command_ms = conf->out_command_timeout * 1000u;
	o->data_ms = conf->out_data_timeout * 1000u;
	if (conf->max_connections_per_destination > 0)
		o->max_conns = conf->max_connections_per_destination;
	helo = conf->helo_name;
	if (helo == NULL || helo[0] == '\0')
		helo = conf->hostname;
	if (helo != NULL && helo[0] != '\0')
		snprintf(o->helo_name, sizeof o->helo_name, "%s", helo);
}

static char *xstrdup(const char *s)
{
	return s == NULL ? NULL : strdup(s);
}

/* True if s holds no CR, LF or NUL and is at most max bytes. */
static bool line_safe(const char *s, size_t max)
{
	size_t n = strlen(s);

	return n <= max && strpbrk(s, "\r\n") == NULL;
}

/* xtext values (ENVID, ORCPT) we pass on only if they are plain printable
 * ASCII without space or '='; anything else is dropped. */
static bool xtext_safe(const char *s, size_t max)
{
	size_t n = 0;

	for (; s[n] != '\0'; n++)
		if ((unsigned char)s[n] < 33 || (unsigned char)s[n] > 126 ||
		    (s[n] == '=' ))
			return false;
	return n > 0 && n <= max;
}

static void addr_format(const struct smtp_client_dest *d, char *out, size_t n)
{
	char ip[INET6_ADDRSTRLEN] = "?";

	if (d->addr_len == 0) {
		snprintf(out, n, "%s", d->unix_path);
	} else if (d->addr.ss_family == AF_INET) {
		const struct sockaddr_in *s4 = (const struct sockaddr_in *)&d->addr;

		inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof ip);
		snprintf(out, n, "%s:%u", ip, (unsigned)ntohs(s4->sin_port));
	} else if (d->addr.ss_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&d->addr;

		inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof ip);
		snprintf(out, n, "[%s]:%u", ip, (unsigned)ntohs(s6->sin6_port));
	} else {
		snprintf(out, n, "(unknown family)");
	}
}

static bool dest_equal(const struct smtp_client_dest *a,
		       const struct smtp_client_dest *b)
{
	if (a->addr_len != b->addr_len)
		return false;
	if (a->addr_len == 0)
		return strcmp(a->unix_path, b->unix_path) == 0;
	return memcmp(&a->addr, &b->addr, a->addr_len) == 0;
}

/* Copies reply text, bounded, control and non-ASCII bytes as '?', line
 * breaks as "; ". */
static void text_sanitize(char *out, size_t size, const char *in, size_t len)
{
	size_t o = 0;

	for (size_t i = 0; i < len && o + 1 < size; i++) {
		unsigned char ch = (unsigned char)in[i];

		if (ch == '\n') {
			if (o + 3 >= size)
				break;
			out[o++] = ';';
			out[o++] = ' ';
			continue;
		}
		out[o++] = (ch < 32 || ch > 126) ? '?' : (char)ch;
	}
	out[o] = '\0';
}

static enum smtp_client_class class_of(unsigned code)
{
	if (code >= 200 && code < 400)
		return SMTP_CLIENT_OK;
	if (code >= 500)
		return SMTP_CLIENT_PERM;
	return SMTP_CLIENT_TEMP;
}

/* ---- results ------------------------------------------------------------ */

static void rcpt_set_reply(struct sc_job *job, size_t i, struct sc_conn *conn,
			   const struct smtp_parse_reply *r, bool temp_only)
{
	struct smtp_client_rcpt_result *rr = &job->res[i];

	if (job->decided[i])
		return;
	job->decided[i] = true;
	rr->cls = class_of(r->code);
	if (temp_only && rr->cls == SMTP_CLIENT_PERM)
		rr->cls = SMTP_CLIENT_TEMP;
	rr->code = r->code;
	snprintf(rr->enhanced, sizeof rr->enhanced, "%s", r->enhanced);
	text_sanitize(rr->text, sizeof rr->text, r->text, r->text_len);
	rr->local = false;
	snprintf(rr->host, sizeof rr->host, "%s", conn->dest.host);
	snprintf(rr->addr, sizeof rr->addr, "%s", conn->addr_text);
}

static void rcpt_set_local(struct sc_job *job, size_t i, struct sc_conn *conn,
			   enum smtp_client_class cls, unsigned code,
			   const char *enhanced, const char *text)
{
	struct smtp_client_rcpt_result *rr = &job->res[i];

	if (job->decided[i])
		return;
	job->decided[i] = true;
	rr->cls = cls;
	rr->code = code;
	snprintf(rr->enhanced, sizeof rr->enhanced, "%s", enhanced);
	text_sanitize(rr->text, sizeof rr->text, text, strlen(text));
	rr->local = true;
	if (conn != NULL) {
		snprintf(rr->host, sizeof rr->host, "%s", conn->dest.host);
		snprintf(rr->addr, sizeof rr->addr, "%s", conn->addr_text);
	}
}

/* Every recipient not yet decided gets a local result. */
static void rcpt_set_rest(struct sc_job *job, struct sc_conn *conn,
			  enum smtp_client_class cls, unsigned code,
			  const char *enhanced, const char *text)
{
	for (size_t i = 0; i < job->n_rcpts; i++)
		rcpt_set_local(job, i, conn, cls, code, enhanced, text);
}

static void job_emit_results(struct sc_job *job)
{
	struct evlog *log = job->c->log;

	for (size_t i = 0; i < job->n_rcpts; i++) {
		const struct smtp_client_rcpt_result *rr = &job->res[i];
		char reply[SMTP_CLIENT_TEXT_MAX + 32];
		enum evlog_id id = rr->cls == SMTP_CLIENT_OK ? EV_SMTP_OUT_DELIVERED
				 : rr->cls == SMTP_CLIENT_TEMP ? EV_SMTP_OUT_DEFERRED
				 : EV_SMTP_OUT_REJECTED;

		if (rr->code != 0)
			snprintf(reply, sizeof reply, "%u%s%s %s", rr->code,
				 rr->enhanced[0] ? " " : "", rr->enhanced, rr->text);
		else
			snprintf(reply, sizeof reply, "%s", rr->text);
		evlog_emit(log, id, EVF_S("qid", job->qid),
			   EVF_S("rcpt", job->rcpts[i].addr),
			   EVF_S("host", rr->host[0] ? rr->host : "-"),
			   EVF_S("addr", rr->addr[0] ? rr->addr : "-"),
			   EVF_S("reply", reply),
			   EVF_S("by", rr->local ? "carrier" : "peer"));
	}
}

static void job_done_cb(evutil_socket_t fd, short what, void *arg)
{
	struct sc_job *job = arg;
	struct smtp_client *c = job->c;
	struct smtp_client_result res;

	(void)fd;
	(void)what;
	memset(&res, 0, sizeof res);
	res.qid = job->qid;
	res.connected = job->connected;
	snprintf(res.host, sizeof res.host, "%s", job->host);
	snprintf(res.addr, sizeof res.addr, "%s", job->addr);
	res.reused = job->reused;
	snprintf(res.tls, sizeof res.tls, "%s", job->tls_text);
	res.attempts = job->attempts;
	res.n_attempts = job->n_attempts;
	res.rcpts = job->res;
	res.n_rcpts = job->n_rcpts;
	/* Unlink first: the callback may submit (and the client stays valid
	 * because freeing it inside a callback is not allowed). */
	if (job->prev != NULL)
		job->prev->next = job->next;
	else
		c->jobs = job->next;
	if (job->next != NULL)
		job->next->prev = job->prev;
	c->stats.jobs++;
	job->done(job->done_arg, &res);
	job_free(job);
}

/* Ends the job: detaches it from its connection (which the caller then
 * releases or frees), closes the body, schedules the callback. */
static void job_finish(struct sc_job *job)
{
	if (job->finished)
		return;
	job->finished = true;
	if (job->conn != NULL) {
		job->conn->job = NULL;
		job->conn = NULL;
	}
	if (job->body != NULL)
		spool_body_close(&job->body);
	job_emit_results(job);
	event_active(job->done_ev, 0, 0);
}

/* ---- connections --------------------------------------------------------- */

static void conn_arm(struct sc_conn *conn, unsigned ms)
{
	struct timeval tv = { .tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000 };

	evtimer_add(conn->timer, &tv);
}

static int conn_printf(struct sc_conn *conn, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static int conn_printf(struct sc_conn *conn, const char *fmt, ...)
{
	va_list ap;
	int rc;

	va_start(ap, fmt);
	rc = evbuffer_add_vprintf(bufferevent_get_output(conn->bev), fmt, ap);
	va_end(ap);
	return rc < 0 ? -1 : 0;
}

static bool exp_push(struct sc_conn *conn, enum sc_exp_kind kind, size_t idx)
{
	if (conn->exp_tail == conn->exp_cap) {
		size_t ncap = conn->exp_cap ? conn->exp_cap * 2 : 16;
		struct sc_exp *n = realloc(conn->exp, ncap * sizeof *n);

		if (n == NULL)
			return false;
		conn->exp = n;
		conn->exp_cap = ncap;
	}
	conn->exp[conn->exp_tail].kind = kind;
	conn->exp[conn->exp_tail].idx = idx;
	conn->exp_tail++;
	return true;
}

static unsigned count_conns(struct smtp_client *c, const char *nexthop,
			    enum smtp_client_mode mode)
{
	unsigned n = 0;

	for (struct sc_conn *k = c->conns; k != NULL; k = k->next)
		if (k->state != SC_CLOSING && k->mode == mode &&
		    strcmp(k->nexthop, nexthop) == 0)
			n++;
	return n;
}

static struct sc_conn *conn_new(struct sc_job *job,
				const struct smtp_client_dest *d,
				char *err, size_t errlen)
{
	struct smtp_client *c = job->c;
	struct sc_conn *conn = calloc(1, sizeof *conn);
	struct sockaddr_un sun;
	const struct sockaddr *sa;
	socklen_t salen;

	if (conn == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	conn->c = c;
	conn->mode = job->mode;
	snprintf(conn->nexthop, sizeof conn->nexthop, "%s", job->nexthop);
	conn->dest = *d;
	addr_format(d, conn->addr_text, sizeof conn->addr_text);
	conn->state = SC_CONNECTING;
	conn->no_starttls = job->plain_retry;
	job->plain_retry = false;
	conn->bev = bufferevent_socket_new(c->base, -1,
					   BEV_OPT_CLOSE_ON_FREE);
	conn->timer = evtimer_new(c->base, conn_timer_cb, conn);
	if (conn->bev == NULL || conn->timer == NULL) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	bufferevent_setcb(conn->bev, conn_read_cb, conn_write_cb, conn_event_cb, conn);
	if (d->addr_len == 0) {
		memset(&sun, 0, sizeof sun);
		sun.sun_family = AF_UNIX;
		if (strlen(d->unix_path) >= sizeof sun.sun_path) {
			snprintf(err, errlen, "socket path too long");
			goto fail;
		}
		memcpy(sun.sun_path, d->unix_path, strlen(d->unix_path));
		sa = (const struct sockaddr *)&sun;
		salen = (socklen_t)sizeof sun;
	} else {
		sa = (const struct sockaddr *)&d->addr;
		salen = d->addr_len;
	}
	smtp_parse_reply_init(&conn->parser, NULL, &conn->reply);
	/* Link before connecting: an immediate failure calls the event cb. */
	conn->next = c->conns;
	if (c->conns != NULL)
		c->conns->prev = conn;
	c->conns = conn;
	c->stats.open++;
	c->stats.connects++;
	conn->job = job;
	job->conn = conn;
	conn_arm(conn, c->opts.connect_ms);
	if (bufferevent_socket_connect(conn->bev, sa, (int)salen) < 0) {
		int e = EVUTIL_SOCKET_ERROR();

		snprintf(err, errlen, "connect: %s", strerror(e ? e : ECONNREFUSED));
		job->conn = NULL;
		conn->job = NULL;
		conn_free(conn, false);
		return NULL;
	}
	bufferevent_enable(conn->bev, EV_READ | EV_WRITE);
	return conn;
fail:
	if (conn->bev != NULL)
		bufferevent_free(conn->bev);
	if (conn->timer != NULL)
		event_free(conn->timer);
	free(conn);
	return NULL;
}

/* Removes and returns the first job waiting for a slot of (mode, nexthop),
 * or NULL. */
static struct sc_job *wait_take(struct smtp_client *c, enum smtp_client_mode mode,
				const char *nexthop)
{
	for (struct sc_job *w = c->wait_head, *prev = NULL; w != NULL;
	     prev = w, w = w->wnext) {
		if (w->mode != mode || strcmp(w->nexthop, nexthop) != 0)
			continue;
		if (prev != NULL)
			prev->wnext = w->wnext;
		else
			c->wait_head = w->wnext;
		if (c->wait_tail == w)
			c->wait_tail = prev;
		w->waiting = false;
		c->stats.waiting--;
		return w;
	}
	return NULL;
}

/* Frees a connection now.  With `dispatch`, a job waiting for a slot of the
 * same next hop gets started. */
static void conn_free(struct sc_conn *conn, bool dispatch)
{
	struct smtp_client *c = conn->c;
	char nexthop[SC_NEXTHOP_MAX];
	enum smtp_client_mode mode = conn->mode;
	struct sc_job *w;
	bool counted = conn->state != SC_CLOSING;

	snprintf(nexthop, sizeof nexthop, "%s", conn->nexthop);
	if (conn->job != NULL) {
		/* Callers detach the job first; never leave one orphaned. */
		rcpt_set_rest(conn->job, conn, SMTP_CLIENT_TEMP, 0, "",
			      "connection closed");
		job_finish(conn->job);
	}
	if (conn->prev != NULL)
		conn->prev->next = conn->next;
	else
		c->conns = conn->next;
	if (conn->next != NULL)
		conn->next->prev = conn->prev;
	if (conn->state == SC_IDLE)
		c->stats.idle--;
	c->stats.open--;
	bufferevent_free(conn->bev);
	event_free(conn->timer);
	free(conn->exp);
	if (conn->in_read) {
		/* read_cb still uses the struct: it frees it on return. */
		conn->dead = true;
		conn->bev = NULL;
	} else {
		free(conn);
	}
	if (dispatch && counted && (w = wait_take(c, mode, nexthop)) != NULL)
		job_dispatch(w);
}

/* Sends QUIT and lets the connection go; it no longer counts. */
static void conn_quit(struct sc_conn *conn, bool dispatch)
{
	struct smtp_client *c = conn->c;
	struct sc_job *w;

	if (conn->job != NULL) {
		conn->job->conn = NULL;
		conn->job = NULL;
	}
	if (conn->state == SC_IDLE)
		c->stats.idle--;
	conn->state = SC_CLOSING;
	conn_printf(conn, "QUIT\r\n");
	conn_arm(conn, SC_CLOSE_MS);
	if (dispatch && (w = wait_take(c, conn->mode, conn->nexthop)) != NULL)
		job_dispatch(w);
}

/*
 * The connection failed (connect error, timeout, EOF, bad reply, a refusal
 * before MAIL).  Before MAIL: record the attempt and try the next
 * destination (or, on a reused connection, start over on a fresh one).
 * After MAIL: every undecided recipient is TEMP.  Frees conn.
 */
static void conn_fail(struct sc_conn *conn, const char *reason, bool polite)
{
	struct sc_job *job = conn->job;
	struct smtp_client *c = conn->c;

	if (job == NULL) {
		if (polite)
			conn_quit(conn, true);
		else
			conn_free(conn, true);
		return;
	}
	job->conn = NULL;
	conn->job = NULL;
	if (conn->state == SC_RSET ||
	    (job->reused && conn->txn_replies == 0 && !job->finished)) {
		/* A pooled connection was dead: not this destination's fault. */
		job->no_reuse = true;
		job->reused = false;
		job->mail_sent = false;
		job->next_rcpt = 0;
		for (size_t i = 0; i < job->n_rcpts; i++)
			job->res[i].dsn_relayed = false;
		conn_free(conn, false);
		job_dispatch(job);
		return;
	}
	if (!job->mail_sent) {
		struct smtp_client_attempt *a = &job->attempts[job->n_attempts++];

		snprintf(a->host, sizeof a->host, "%s", conn->dest.host);
		snprintf(a->addr, sizeof a->addr, "%s", conn->addr_text);
		text_sanitize(a->reason, sizeof a->reason, reason, strlen(reason));
		evlog_emit(c->log, EV_SMTP_OUT_DESTINATION_FAILED,
			   EVF_S("qid", job->qid),
			   EVF_S("host", conn->dest.host[0] ? conn->dest.host : "-"),
			   EVF_S("addr", conn->addr_text), EVF_S("reason", a->reason));
		if (polite)
			conn_quit(conn, false);
		else
			conn_free(conn, false);
		job_connect_next(job);
		return;
	}
	rcpt_set_rest(job, conn, SMTP_CLIENT_TEMP, 0, "", reason);
	job_finish(job);
	if (polite)
		conn_quit(conn, true);
	else
		conn_free(conn, true);
}

static void conn_protocol_error(struct sc_conn *conn, const char *what)
{
	char reason[SMTP_CLIENT_TEXT_MAX];

	snprintf(reason, sizeof reason, "%s[%s]: %s", conn->dest.host,
		 conn->addr_text, what);
	evlog_emit(conn->c->log, EV_SMTP_OUT_PROTOCOL_ERROR,
		   EVF_S("host", conn->dest.host[0] ? conn->dest.host : "-"),
		   EVF_S("addr", conn->addr_text), EVF_S("reason", what));
	conn_fail(conn, reason, false);
}

/* ---- jobs: connecting and the pool --------------------------------------- */

static bool job_can_use(const struct sc_job *job, const struct sc_conn *conn)
{
	if (conn->mode != job->mode || strcmp(conn->nexthop, job->nexthop) != 0)
		return false;
	if ((job->tls >= SMTP_CLIENT_TLS_ENCRYPT && !conn->tls_on) ||
	    (job->tls == SMTP_CLIENT_TLS_VERIFY && !conn->tls_verified))
		return false;
	for (size_t i = 0; i < job->n_dests; i++)
		if (dest_equal(&job->dests[i], &conn->dest))
			return true;
	return false;
}

/* Puts `job` on a pooled connection: RSET first. */
static void job_attach_reused(struct sc_job *job, struct sc_conn *conn)
{
	struct smtp_client *c = job->c;

	if (conn->state == SC_IDLE)
		c->stats.idle--;
	evtimer_del(conn->timer);
	conn->job = job;
	job->conn = conn;
	job->reused = true;
	c->stats.reuses++;
	conn->exp_head = conn->exp_tail = 0;
	if (!conn->need_rset) {
		/* The last transaction ended with the dot's reply, which
		 * resets the server (RFC 5321 4.1.1.4): no RSET round trip.
		 * A dead connection shows as no reply at all: conn_fail()
		 * then starts over. */
		txn_start(conn);
		return;
	}
	conn->state = SC_RSET;
	conn_printf(conn, "RSET\r\n");
	conn_arm(conn, c->opts.command_ms);
}

static void job_connect_next(struct sc_job *job)
{
	char err[256];

	while (job->dest_i < job->n_dests) {
		const struct smtp_client_dest *d = &job->dests[job->dest_i++];

		if (conn_new(job, d, err, sizeof err) != NULL)
			return;
		struct smtp_client_attempt *a = &job->attempts[job->n_attempts++];
		snprintf(a->host, sizeof a->host, "%s", d->host);
		addr_format(d, a->addr, sizeof a->addr);
		snprintf(a->reason, sizeof a->reason, "%s", err);
		evlog_emit(job->c->log, EV_SMTP_OUT_DESTINATION_FAILED,
			   EVF_S("qid", job->qid),
			   EVF_S("host", d->host[0] ? d->host : "-"),
			   EVF_S("addr", a->addr), EVF_S("reason", err));
	}
	/* Every destination failed before MAIL. */
	{
		char text[SMTP_CLIENT_TEXT_MAX];

		if (job->n_attempts > 0) {
			const struct smtp_client_attempt *a =
				&job->attempts[job->n_attempts - 1];

			snprintf(text, sizeof text, "no destination accepted a session; last: %s[%s]: %s",
				 a->host, a->addr, a->reason);
		} else {
			snprintf(text, sizeof text, "no destination accepted a session");
		}
		rcpt_set_rest(job, NULL, SMTP_CLIENT_TEMP, 0, "", text);
		job_finish(job);
	}
}

/* Starts a job: a pooled connection, a new one, or the wait queue. */
static void job_dispatch(struct sc_job *job)
{
	struct smtp_client *c = job->c;
	struct sc_conn *idle_other = NULL;

	if (!job->no_reuse) {
		for (struct sc_conn *k = c->conns; k != NULL; k = k->next) {
			if (k->state != SC_IDLE)
				continue;
			if (job_can_use(job, k)) {
				job_attach_reused(job, k);
				return;
			}
			if (k->mode == job->mode && strcmp(k->nexthop, job->nexthop) == 0)
				idle_other = k;
		}
	}
	if (count_conns(c, job->nexthop, job->mode) >= c->opts.max_conns) {
		if (idle_other == NULL && job->no_reuse) {
			for (struct sc_conn *k = c->conns; k != NULL; k = k->next)
				if (k->state == SC_IDLE && k->mode == job->mode &&
				    strcmp(k->nexthop, job->nexthop) == 0)
					idle_other = k;
		}
		if (idle_other != NULL) {
			conn_quit(idle_other, false);
		} else {
			job->waiting = true;
			job->wnext = NULL;
			if (c->wait_tail != NULL)
				c->wait_tail->wnext = job;
			else
				c->wait_head = job;
			c->wait_tail = job;
			c->stats.waiting++;
			return;
		}
	}
	job->dest_i = 0;
	job->n_attempts = 0;
	job_connect_next(job);
}

/* The transaction ended cleanly: give the connection to a waiting job of
 * the same next hop, keep it idle, or close it. */
static void conn_release(struct sc_conn *conn)
{
	struct smtp_client *c = conn->c;
	struct sc_job *w;

	conn->job = NULL;
	conn->used = true;
	conn->exp_head = conn->exp_tail = 0;
	evtimer_del(conn->timer);
	if ((w = wait_take(c, conn->mode, conn->nexthop)) != NULL) {
		if (job_can_use(w, conn) && !w->no_reuse) {
			job_attach_reused(w, conn);
		} else {
			conn_quit(conn, false);
			w->dest_i = 0;
			w->n_attempts = 0;
			job_connect_next(w);
		}
		return;
	}
	if (c->opts.idle_ms == 0) {
		conn_quit(conn, false);
		return;
	}
	conn->state = SC_IDLE;
	c->stats.idle++;
	conn_arm(conn, c->opts.idle_ms);
}

/* ---- the protocol ---------------------------------------------------------- */

static void caps_parse(struct sc_conn *conn, const struct smtp_parse_reply *r)
{
	const char *p = memchr(r->text, '\n', r->text_len);
	const char *end = r->text + r->text_len;

	/* Only the last EHLO counts (after STARTTLS the list may change). */
	conn->pipelining = conn->eightbit = conn->utf8 = conn->dsn = false;
	conn->has_size = conn->starttls = false;
	conn->esmtp = true;
	while (p != NULL && p < end) {
		const char *line = p + 1;
		const char *eol = memchr(line, '\n', (size_t)(end - line));
		size_t len = eol ? (size_t)(eol - line) : (size_t)(end - line);
		char kw[32];
		size_t k = 0;

		while (k < len && k + 1 < sizeof kw && line[k] != ' ') {
			char ch = line[k];

			kw[k++] = (ch >= 'a' && ch <= 'z') ? (char)(ch - 32) : ch;
		}
		kw[k] = '\0';
		if (strcmp(kw, "PIPELINING") == 0) {
			conn->pipelining = true;
		} else if (strcmp(kw, "8BITMIME") == 0) {
			conn->eightbit = true;
		} else if (strcmp(kw, "SMTPUTF8") == 0) {
			conn->utf8 = true;
		} else if (strcmp(kw, "DSN") == 0) {
			conn->dsn = true;
		} else if (strcmp(kw, "STARTTLS") == 0) {
			conn->starttls = true;
		} else if (strcmp(kw, "SIZE") == 0) {
			conn->has_size = true;
			conn->size_max = 0;
			for (size_t j = k + 1; j < len && line[j] >= '0' && line[j] <= '9'; j++) {
				if (conn->size_max > (UINT64_MAX - 9) / 10)
					break;
				conn->size_max = conn->size_max * 10 + (uint64_t)(line[j] - '0');
			}
		}
		p = eol;
	}
}

static const char *ret_name(enum spool_dsn_ret ret)
{
	return ret == SPOOL_RET_FULL ? "FULL" : "HDRS";
}

static void send_mail(struct sc_conn *conn)
{
	struct sc_job *job = conn->job;
	char line[SC_LINE_MAX];
	int n;

	n = snprintf(line, sizeof line, "MAIL FROM:<%s>", job->sender);
	if (conn->esmtp && conn->has_size)
		n += snprintf(line + n, sizeof line - (size_t)n, " SIZE=%" PRIu64, job->size);
	if (conn->esmtp && conn->eightbit && job->body_type == SPOOL_BODY_8BITMIME)
		n += snprintf(line + n, sizeof line - (size_t)n, " BODY=8BITMIME");
	if (job->smtputf8 && conn->utf8)
		n += snprintf(line + n, sizeof line - (size_t)n, " SMTPUTF8");
	if (conn->dsn && job->dsn_ret != SPOOL_RET_UNSPEC)
		n += snprintf(line + n, sizeof line - (size_t)n, " RET=%s", ret_name(job->dsn_ret));
	if (conn->dsn && job->envid != NULL && xtext_safe(job->envid, SMTP_PARSE_ENVID_MAX))
		n += snprintf(line + n, sizeof line - (size_t)n, " ENVID=%s", job->envid);
	conn_printf(conn, "%s\r\n", line);
	exp_push(conn, EXP_MAIL, 0);
}

static void send_rcpt(struct sc_conn *conn, size_t i)
{
	struct sc_job *job = conn->job;
	const struct sc_rcpt *r = &job->rcpts[i];
	char line[SC_LINE_MAX];
	int n;

	n = snprintf(line, sizeof line, "RCPT TO:<%s>", r->addr);
	if (conn->dsn && r->notify != 0) {
		if (r->notify & SPOOL_NOTIFY_NEVER) {
			n += snprintf(line + n, sizeof line - (size_t)n, " NOTIFY=NEVER");
		} else {
			const char *sep = " NOTIFY=";

			if (r->notify & SPOOL_NOTIFY_SUCCESS) {
				n += snprintf(line + n, sizeof line - (size_t)n, "%sSUCCESS", sep);
				sep = ",";
			}
			if (r->notify & SPOOL_NOTIFY_FAILURE) {
				n += snprintf(line + n, sizeof line - (size_t)n, "%sFAILURE", sep);
				sep = ",";
			}
			if (r->notify & SPOOL_NOTIFY_DELAY)
				n += snprintf(line + n, sizeof line - (size_t)n, "%sDELAY", sep);
		}
	}
	if (conn->dsn && r->orcpt != NULL && strchr(r->orcpt, ';') != NULL &&
	    xtext_safe(r->orcpt, SMTP_PARSE_ORCPT_MAX + SMTP_PARSE_ADDR_TYPE_MAX + 1))
		n += snprintf(line + n, sizeof line - (size_t)n, " ORCPT=%s", r->orcpt);
	if (!conn->dsn && (r->notify & SPOOL_NOTIFY_SUCCESS))
		job->res[i].dsn_relayed = true;
	conn_printf(conn, "%s\r\n", line);
	exp_push(conn, EXP_RCPT, i);
}

static void send_data(struct sc_conn *conn)
{
	conn_printf(conn, "DATA\r\n");
	exp_push(conn, EXP_DATA, 0);
}

/* Refuses the whole job before MAIL (PERM, local); the connection stays. */
static void txn_refuse(struct sc_conn *conn, unsigned code, const char *enh,
		       const char *text)
{
	struct sc_job *job = conn->job;

	rcpt_set_rest(job, conn, code >= 500 ? SMTP_CLIENT_PERM : SMTP_CLIENT_TEMP,
		      code, enh, text);
	job_finish(job);
	conn->need_rset = false;
	conn_release(conn);
}

static void txn_start(struct sc_conn *conn)
{
	struct sc_job *job = conn->job;
	struct smtp_client *c = conn->c;
	char err[256];

	conn->state = SC_TXN;
	conn->exp_head = conn->exp_tail = 0;
	conn->txn_replies = 0;
	job->connected = true;
	snprintf(job->host, sizeof job->host, "%s", conn->dest.host);
	snprintf(job->addr, sizeof job->addr, "%s", conn->addr_text);
	snprintf(job->tls_text, sizeof job->tls_text, "%s", conn->tls_on ? conn->tls_text : "");
	if (job->body_type == SPOOL_BODY_BINARYMIME) {
		txn_refuse(conn, 554, "5.6.3", "binary MIME message cannot be relayed: BDAT is not supported");
		return;
	}
	if (job->body_type == SPOOL_BODY_8BITMIME && !conn->eightbit) {
		txn_refuse(conn, 554, "5.6.3", "8-bit message and the destination does not offer 8BITMIME (RFC 6152)");
		return;
	}
	if (job->smtputf8 && !conn->utf8) {
		txn_refuse(conn, 553, "5.6.7", "internationalized message (SMTPUTF8) and the destination does not offer SMTPUTF8 (RFC 6531)");
		return;
	}
	if (conn->has_size && conn->size_max > 0 && job->size > conn->size_max) {
		char text[160];

		snprintf(text, sizeof text, "message size %" PRIu64 " exceeds the destination's limit of %" PRIu64,
			 job->size, conn->size_max);
		txn_refuse(conn, 552, "5.3.4", text);
		return;
	}
	if (job->spool != NULL && job->body == NULL &&
	    spool_body_open(job->spool, job->qid, &job->body, err, sizeof err) != 0) {
		char text[320];

		evlog_emit(c->log, EV_SMTP_OUT_BODY_FAILED, EVF_S("qid", job->qid),
			   EVF_S("reason", err));
		snprintf(text, sizeof text, "cannot read the message body: %s", err);
		txn_refuse(conn, 451, "4.3.0", text);
		return;
	}
	job->mail_sent = true;
	send_mail(conn);
	if (conn->pipelining) {
		for (size_t i = 0; i < job->n_rcpts; i++)
			send_rcpt(conn, i);
		send_data(conn);
	}
	conn_arm(conn, c->opts.command_ms);
}

/* Writes body bytes dot-stuffed with CRLF line ends into out (room for
 * 2 * n + 2); returns the length. */
static size_t body_stuff(struct sc_job *job, const char *in, size_t n, char *out)
{
	size_t o = 0, i = 0;

	while (i < n) {
		char ch = in[i];
		const char *nl, *cr;
		size_t end;

		if (job->cr) {
			job->cr = false;
			out[o++] = '\r';
			out[o++] = '\n';
			job->bol = true;
			if (ch == '\n') {
				i++;
				continue;
			}
		}
		if (ch == '\r') {
			if (i + 1 < n && in[i + 1] == '\n') {
				out[o++] = '\r';
				out[o++] = '\n';
				job->bol = true;
				i += 2;
			} else {
				job->cr = true;
				i++;
			}
			continue;
		}
		if (ch == '\n') {
			out[o++] = '\r';
			out[o++] = '\n';
			job->bol = true;
			i++;
			continue;
		}
		if (job->bol && ch == '.')
			out[o++] = '.';
		job->bol = false;
		/* the rest of the line up to its CR or LF, copied whole */
		nl = memchr(in + i, '\n', n - i);
		end = nl != NULL ? (size_t)(nl - in) : n;
		cr = memchr(in + i, '\r', end - i);
		if (cr != NULL)
			end = (size_t)(cr - in);
		memcpy(out + o, in + i, end - i);
		o += end - i;
		i = end;
	}
	return o;
}

static void body_fill(struct sc_conn *conn)
{
	struct sc_job *job = conn->job;
	struct smtp_client *c = conn->c;
	struct evbuffer *out = bufferevent_get_output(conn->bev);

	while (!job->body_eof && evbuffer_get_length(out) < SC_OUT_HIGH) {
		ssize_t n = job->read != NULL ? job->read(job->read_arg, c->inbuf, sizeof c->inbuf)
					      : spool_body_read(job->body, c->inbuf, sizeof c->inbuf);

		if (n < 0) {
			evlog_emit(c->log, EV_SMTP_OUT_BODY_FAILED, EVF_S("qid", job->qid),
				   EVF_S("reason", "read error"));
			/* Closing without the final dot: the peer drops it. */
			conn_fail(conn, "reading the message body failed", false);
			return;
		}
		if (n == 0) {
			job->body_eof = true;
			break;
		}
		evbuffer_add(out, c->scratch, body_stuff(job, c->inbuf, (size_t)n, c->scratch));
	}
	if (!job->body_eof) {
		conn_arm(conn, c->opts.command_ms);
		return;
	}
	if (job->cr || !job->bol)
		evbuffer_add(out, "\r\n", 2);
	evbuffer_add(out, ".\r\n", 3);
	conn->state = SC_TXN;
	if (job->mode == SMTP_CLIENT_LMTP) {
		for (size_t i = 0; i < job->n_rcpts; i++)
			if (job->accepted[i]) {
				exp_push(conn, EXP_DOT_LMTP, i);
				job->n_dot_pending++;
			}
	} else {
		exp_push(conn, EXP_DOT, 0);
	}
	conn_arm(conn, c->opts.data_ms);
}

static void body_start(struct sc_conn *conn)
{
	struct sc_job *job = conn->job;

	conn->state = SC_SENDING;
	job->bol = true;
	job->cr = false;
	job->body_eof = false;
	bufferevent_setwatermark(conn->bev, EV_WRITE, SC_OUT_LOW, 0);
	body_fill(conn);
}

/* The transaction is over (the job got its results): keep or close.
 * `clean`: it ended with the reply to the dot (the server has reset). */
static void txn_end(struct sc_conn *conn, unsigned code, bool clean)
{
	job_finish(conn->job);
	conn->need_rset = !clean;
	if (code == 421)
		conn_free(conn, true);
	else
		conn_release(conn);
}

static void reply_txn(struct sc_conn *conn, const struct smtp_parse_reply *r)
{
	struct sc_job *job = conn->job;
	struct sc_exp e;
	bool ok = r->code >= 200 && r->code < 300;
	char reason[SMTP_CLIENT_TEXT_MAX];

	conn->txn_replies++;
	if (conn->exp_head == conn->exp_tail) {
		conn_protocol_error(conn, "reply without a command");
		return;
	}
	e = conn->exp[conn->exp_head++];
	if (conn->exp_head == conn->exp_tail)
		conn->exp_head = conn->exp_tail = 0;
	snprintf(reason, sizeof reason, "%u %s", r->code, r->text);
	switch (e.kind) {
	case EXP_MAIL:
		if (ok) {
			if (!conn->pipelining)
				send_rcpt(conn, job->next_rcpt++);
			break;
		}
		job->mail_failed = true;
		for (size_t i = 0; i < job->n_rcpts; i++)
			rcpt_set_reply(job, i, conn, r, false);
		if (r->code == 421 || !conn->pipelining) {
			txn_end(conn, r->code, false);
			return;
		}
		break;
	case EXP_RCPT:
		if (!job->mail_failed) {
			if (ok || r->code == 251) {
				if (!job->accepted[e.idx]) {
					job->accepted[e.idx] = true;
					job->n_accepted++;
				}
			} else {
				rcpt_set_reply(job, e.idx, conn, r, false);
			}
		}
		if (r->code == 421) {
			conn_fail(conn, reason, false);
			return;
		}
		if (!conn->pipelining) {
			if (job->next_rcpt < job->n_rcpts) {
				send_rcpt(conn, job->next_rcpt++);
			} else if (job->n_accepted > 0) {
				send_data(conn);
			} else {
				txn_end(conn, 0, false);
				return;
			}
		}
		break;
	case EXP_DATA:
		if (job->mail_failed || job->n_accepted == 0) {
			if (r->code == 354 && job->mode == SMTP_CLIENT_LMTP) {
				/* How many replies would follow the dot is
				 * unknown: out of sync, hang up. */
				txn_end(conn, 421, false);
				return;
			}
			if (r->code == 354) {
				conn_printf(conn, ".\r\n");
				exp_push(conn, EXP_DOT_EMPTY, 0);
				break;
			}
			txn_end(conn, r->code, false);
			return;
		}
		if (r->code == 354) {
			body_start(conn);
			return;
		}
		for (size_t i = 0; i < job->n_rcpts; i++)
			if (job->accepted[i])
				rcpt_set_reply(job, i, conn, r, ok);
		/* a 2xx to DATA is nonsense: rcpt_set_reply made it TEMP... */
		txn_end(conn, r->code, false);
		return;
	case EXP_DOT:
		for (size_t i = 0; i < job->n_rcpts; i++)
			if (job->accepted[i])
				rcpt_set_reply(job, i, conn, r, false);
		txn_end(conn, r->code, true);
		return;
	case EXP_DOT_LMTP:
		rcpt_set_reply(job, e.idx, conn, r, false);
		if (r->code == 421) {
			conn_fail(conn, reason, false);
			return;
		}
		if (--job->n_dot_pending == 0) {
			txn_end(conn, 0, true);
			return;
		}
		break;
	case EXP_DOT_EMPTY:
		txn_end(conn, r->code, false);
		return;
	}
	if (conn->exp_head != conn->exp_tail) {
		enum sc_exp_kind k = conn->exp[conn->exp_head].kind;

		conn_arm(conn, (k == EXP_DOT || k == EXP_DOT_LMTP)
				       ? conn->c->opts.data_ms : conn->c->opts.command_ms);
	}
}

static void send_hello(struct sc_conn *conn, const char *verb)
{
	conn_printf(conn, "%s %s\r\n", verb, conn->c->opts.helo_name);
	conn_arm(conn, conn->c->opts.command_ms);
}

/* ---- STARTTLS ------------------------------------------------------------- */

static bool tls_required(const struct sc_conn *conn)
{
	return conn->job != NULL && conn->job->tls >= SMTP_CLIENT_TLS_ENCRYPT;
}

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* True while `d` is remembered as failing the handshake (see plain_add). */
static bool plain_known(const struct smtp_client *c, const struct smtp_client_dest *d)
{
	uint64_t now = now_ms();

	for (size_t i = 0; i < SMTP_CLIENT_PLAIN_MAX; i++)
		if (c->plain[i].until > now && dest_equal(&c->plain[i].dest, d))
			return true;
	return false;
}

/* Remembers `d` for opts.tls_plain_ms: its entry, else a free or expired
 * one, else the one that expires first.  The table is fixed: no
 * allocation, and a flood of broken peers only forgets the oldest. */
static void plain_add(struct smtp_client *c, const struct smtp_client_dest *d)
{
	struct sc_plain *slot = &c->plain[0];

	if (c->opts.tls_plain_ms == 0)
		return;
	for (size_t i = 0; i < SMTP_CLIENT_PLAIN_MAX; i++) {
		struct sc_plain *p = &c->plain[i];

		if (p->until != 0 && dest_equal(&p->dest, d)) {
			slot = p;
			break;
		}
		if (p->until < slot->until)
			slot = p;
	}
	memset(slot, 0, sizeof *slot);
	memcpy(&slot->dest.addr, &d->addr, d->addr_len);
	slot->dest.addr_len = d->addr_len;
	slot->until = now_ms() + c->opts.tls_plain_ms;
}

static void tls_fail(struct sc_conn *conn, const char *why, bool polite)
{
	char reason[SMTP_CLIENT_TEXT_MAX];
	enum smtp_client_tls t = conn->job ? conn->job->tls : SMTP_CLIENT_TLS_NONE;

	snprintf(reason, sizeof reason, "TLS %s: %s", smtp_client_tls_name(t), why);
	evlog_emit(conn->c->log, EV_SMTP_OUT_TLS_FAILED,
		   EVF_S("host", conn->dest.host[0] ? conn->dest.host : "-"),
		   EVF_S("addr", conn->addr_text), EVF_S("policy", smtp_client_tls_name(t)),
		   EVF_S("reason", why));
	conn_fail(conn, reason, polite);
}

/*
 * may: the TLS handshake failed (`why`).  Opportunistic TLS promises no
 * encryption, so, as Postfix does, the same address is tried once more on a
 * new connection that never sends STARTTLS, and the address is remembered
 * (plain_add) so the next deliveries skip the failing handshake.  The
 * failed handshake is recorded as an attempt "TLS may: ..." (the caller's
 * per-hop counters count it as a TLS failure; the delivery itself has no
 * TLS).  Frees conn.  Returns false, touching nothing, when it does not
 * apply (not may, or already the plaintext retry): the caller fails.
 */
static bool tls_fallback(struct sc_conn *conn, const char *why)
{
	struct sc_job *job = conn->job;
	struct smtp_client *c = conn->c;
	struct smtp_client_dest dest = conn->dest;
	struct smtp_client_attempt *a;
	char reason[SMTP_CLIENT_TEXT_MAX], err[256];

	if (job == NULL || job->tls != SMTP_CLIENT_TLS_MAY || conn->no_starttls ||
	    job->mail_sent || job->finished)
		return false;
	plain_add(c, &dest);
	snprintf(reason, sizeof reason, "TLS may: %s; retried in plaintext", why);
	a = &job->attempts[job->n_attempts++];
	snprintf(a->host, sizeof a->host, "%s", dest.host);
	snprintf(a->addr, sizeof a->addr, "%s", conn->addr_text);
	text_sanitize(a->reason, sizeof a->reason, reason, strlen(reason));
	evlog_emit(c->log, EV_SMTP_OUT_TLS_PLAINTEXT, EVF_S("qid", job->qid),
		   EVF_S("host", dest.host[0] ? dest.host : "-"),
		   EVF_S("addr", conn->addr_text), EVF_S("reason", why),
		   EVF_I("hold", c->opts.tls_plain_ms / 1000u));
	job->conn = NULL;
	conn->job = NULL;
	conn_free(conn, false);   /* its slot goes to the retry */
	job->plain_retry = true;
	if (conn_new(job, &dest, err, sizeof err) != NULL)
		return true;
	job->plain_retry = false;
	a = &job->attempts[job->n_attempts++];
	snprintf(a->host, sizeof a->host, "%s", dest.host);
	addr_format(&dest, a->addr, sizeof a->addr);
	snprintf(a->reason, sizeof a->reason, "%s", err);
	evlog_emit(c->log, EV_SMTP_OUT_DESTINATION_FAILED, EVF_S("qid", job->qid),
		   EVF_S("host", dest.host[0] ? dest.host : "-"),
		   EVF_S("addr", a->addr), EVF_S("reason", err));
	job_connect_next(job);
	return true;
}

/* After EHLO: STARTTLS when the policy wants it.  Returns true when the
 * connection was taken over (STARTTLS sent, or failed). */
static bool tls_step(struct sc_conn *conn)
{
	struct sc_job *job = conn->job;

	if (job == NULL || job->tls == SMTP_CLIENT_TLS_NONE || conn->tls_on ||
	    conn->mode != SMTP_CLIENT_SMTP || conn->dest.addr_len == 0)
		return false;
	/* may, and the handshake failed here lately: plaintext at once. */
	if (job->tls == SMTP_CLIENT_TLS_MAY &&
	    (conn->no_starttls || plain_known(conn->c, &conn->dest)))
		return false;
	if (!conn->starttls) {
		if (!tls_required(conn))
			return false;
		tls_fail(conn, "the peer does not offer STARTTLS", true);
		return true;
	}
	conn->state = SC_STARTTLS;
	conn_printf(conn, "STARTTLS\r\n");
	conn_arm(conn, conn->c->opts.command_ms);
	return true;
}

/* 220 to STARTTLS: the socket goes to an OpenSSL bufferevent. */
static void tls_begin(struct sc_conn *conn)
{
	struct smtp_client *c = conn->c;
	struct sc_job *job = conn->job;
	const char *verify = NULL;
	struct bufferevent *bev;
	char err[SMTP_CLIENT_TEXT_MAX];
	SSL *ssl;
	int fd;

	if (evbuffer_get_length(bufferevent_get_input(conn->bev)) > 0) {
		/* Plaintext after the 220 would be read as if it came under
		 * TLS: the CVE-2011-0411 class.  Never go on. */
		tls_fail(conn, "the peer sent data after the STARTTLS reply", false);
		return;
	}
	if (job->tls == SMTP_CLIENT_TLS_VERIFY)
		verify = job->tls_name ? job->tls_name : conn->dest.host;
	if (c->tls == NULL && (c->tls = tls_client_new(err, sizeof err)) == NULL) {
		tls_fail(conn, err, true);
		return;
	}
	ssl = tls_client_ssl(c->tls, job->tls_ca_file, conn->dest.host, verify, err, sizeof err);
	if (ssl == NULL) {
		tls_fail(conn, err, true);
		return;
	}
	fd = bufferevent_getfd(conn->bev);
	bufferevent_disable(conn->bev, EV_READ | EV_WRITE);
	bufferevent_setfd(conn->bev, -1);
	bev = bufferevent_openssl_socket_new(c->base, fd, ssl, BUFFEREVENT_SSL_CONNECTING,
					     BEV_OPT_CLOSE_ON_FREE);
	if (bev == NULL) {
		close(fd);
		tls_fail(conn, "out of memory", false);
		return;
	}
	bufferevent_free(conn->bev);
	conn->bev = bev;
	bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
	bufferevent_setcb(bev, conn_read_cb, conn_write_cb, conn_event_cb, conn);
	bufferevent_enable(bev, EV_READ | EV_WRITE);
	conn->state = SC_HANDSHAKE;
	conn_arm(conn, c->opts.command_ms);
}

/* The handshake finished: check the certificate, then EHLO again. */
static void tls_established(struct sc_conn *conn)
{
	SSL *ssl = bufferevent_openssl_get_ssl(conn->bev);
	struct sc_job *job = conn->job;
	char version[16], cipher[64], why[SMTP_CLIENT_TEXT_MAX];

	evtimer_del(conn->timer);
	if (job != NULL && job->tls == SMTP_CLIENT_TLS_VERIFY) {
		if (!tls_client_check(ssl, why, sizeof why)) {
			tls_fail(conn, why, true);
			return;
		}
		conn->tls_verified = true;
	}
	tls_describe(ssl, version, sizeof version, cipher, sizeof cipher);
	snprintf(conn->tls_text, sizeof conn->tls_text, "%s %s", version, cipher);
	conn->tls_on = true;
	evlog_emit(conn->c->log, EV_SMTP_OUT_TLS_ESTABLISHED,
		   EVF_S("host", conn->dest.host[0] ? conn->dest.host : "-"),
		   EVF_S("addr", conn->addr_text), EVF_S("version", version),
		   EVF_S("cipher", cipher),
		   EVF_S("policy", smtp_client_tls_name(job ? job->tls : SMTP_CLIENT_TLS_MAY)));
	conn->state = SC_EHLO;
	send_hello(conn, "EHLO");
}

static void handle_reply(struct sc_conn *conn, const struct smtp_parse_reply *r)
{
	char reason[SMTP_CLIENT_TEXT_MAX];
	bool ok = r->code >= 200 && r->code < 300;

	switch (conn->state) {
	case SC_GREETING:
		if (r->code == 220) {
			conn->state = SC_EHLO;
			send_hello(conn, conn->mode == SMTP_CLIENT_LMTP ? "LHLO" : "EHLO");
			return;
		}
		snprintf(reason, sizeof reason, "greeting: %u%s%s %.*s", r->code,
			 r->enhanced[0] ? " " : "", r->enhanced, (int)r->text_len, r->text);
		conn_fail(conn, reason, r->code != 421);
		return;
	case SC_EHLO:
		if (ok) {
			caps_parse(conn, r);
			if (!tls_step(conn))
				txn_start(conn);
			return;
		}
		if (r->code != 421 && conn->mode == SMTP_CLIENT_SMTP) {
			conn->state = SC_HELO;
			send_hello(conn, "HELO");
			return;
		}
		snprintf(reason, sizeof reason, "%s: %u %.*s",
			 conn->mode == SMTP_CLIENT_LMTP ? "LHLO" : "EHLO", r->code,
			 (int)r->text_len, r->text);
		conn_fail(conn, reason, r->code != 421);
		return;
	case SC_HELO:
		if (ok && tls_required(conn)) {
			tls_fail(conn, "the peer does not support EHLO, so no STARTTLS", true);
			return;
		}
		if (ok) {
			txn_start(conn);
			return;
		}
		snprintf(reason, sizeof reason, "HELO: %u %.*s", r->code,
			 (int)r->text_len, r->text);
		conn_fail(conn, reason, r->code != 421);
		return;
	case SC_STARTTLS:
		if (r->code == 220) {
			tls_begin(conn);
			return;
		}
		if (!tls_required(conn) && r->code != 421) {
			txn_start(conn);   /* may: on in plaintext */
			return;
		}
		snprintf(reason, sizeof reason, "STARTTLS refused: %u %.*s", r->code,
			 (int)r->text_len, r->text);
		tls_fail(conn, reason, r->code != 421);
		return;
	case SC_HANDSHAKE:
		conn_fail(conn, "reply during the TLS handshake", false);
		return;
	case SC_RSET:
		if (ok) {
			txn_start(conn);
			return;
		}
		conn_fail(conn, "RSET refused", false);
		return;
	case SC_TXN:
		reply_txn(conn, r);
		return;
	case SC_SENDING:
		/* A reply while we still send the body: the peer gave up. */
		snprintf(reason, sizeof reason, "reply during DATA: %u %.*s", r->code,
			 (int)r->text_len, r->text);
		conn_fail(conn, reason, false);
		return;
	case SC_IDLE:
		/* Usually 421 (the peer's idle timeout): drop it. */
		conn_free(conn, true);
		return;
	case SC_CONNECTING:   /* not reached: read_cb moved it on */
	case SC_CLOSING:
		conn_fail(conn, "unexpected reply", false);
		return;
	}
}

/* ---- libevent callbacks ---------------------------------------------------- */

static void conn_read_cb(struct bufferevent *bev, void *arg)
{
	struct sc_conn *conn = arg;
	struct evbuffer *in = bufferevent_get_input(bev);

	/* libevent may run the read callback before it reports the
	 * connection (both ready in one poll): bytes mean connected. */
	if (conn->state == SC_CONNECTING)
		conn->state = SC_GREETING;
	conn->in_read = true;
	/* STARTTLS replaces the bufferevent: stop reading the old one. */
	while (!conn->dead && conn->bev == bev && evbuffer_get_length(in) > 0) {
		struct evbuffer_iovec v;
		struct smtp_parse_reply reply;
		enum smtp_parse_result res;
		size_t used = 0;

		if (conn->state == SC_CLOSING) {
			conn_free(conn, false);
			break;
		}
		if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
			break;
		res = smtp_parse_reply_feed(&conn->parser, v.iov_base, v.iov_len,
					    &used, &conn->reply);
		evbuffer_drain(in, used);
		if (res == SMTP_PARSE_MORE)
			continue;
		if (res != SMTP_PARSE_OK) {
			conn_protocol_error(conn, smtp_parse_strerror(res));
			break;
		}
		reply = conn->reply;
		smtp_parse_reply_init(&conn->parser, NULL, &conn->reply);
		evtimer_del(conn->timer);
		handle_reply(conn, &reply);
	}
	conn->in_read = false;
	if (conn->dead)
		free(conn);
}

static void conn_write_cb(struct bufferevent *bev, void *arg)
{
	struct sc_conn *conn = arg;

	(void)bev;
	if (conn->state == SC_SENDING && conn->job != NULL)
		body_fill(conn);
}

static void conn_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct sc_conn *conn = arg;
	char reason[SMTP_CLIENT_TEXT_MAX];
	int e = EVUTIL_SOCKET_ERROR();

	(void)bev;
	if ((what & BEV_EVENT_CONNECTED) && conn->state == SC_HANDSHAKE) {
		tls_established(conn);
		return;
	}
	if (conn->state == SC_HANDSHAKE) {
		unsigned long oe = bufferevent_get_openssl_error(conn->bev);

		if (oe != 0)
			ERR_error_string_n(oe, reason, sizeof reason);
		else
			snprintf(reason, sizeof reason, "handshake failed: %s",
				 (what & BEV_EVENT_EOF) ? "connection closed by the peer" :
				 strerror(e != 0 ? e : EIO));
		if (!tls_fallback(conn, reason))
			tls_fail(conn, reason, false);
		return;
	}
	if (what & BEV_EVENT_CONNECTED) {
		/* The greeting may have been read already (read before write
		 * when both are ready): then the state has moved on. */
		if (conn->state == SC_CONNECTING) {
			conn->state = SC_GREETING;
			conn_arm(conn, conn->c->opts.command_ms);
		}
		return;
	}
	if (conn->state == SC_CLOSING) {
		conn_free(conn, false);
		return;
	}
	if (conn->state == SC_IDLE) {
		conn_free(conn, true);
		return;
	}
	/* Connected and closed at once (one event): errno is stale then. */
	if (what & BEV_EVENT_EOF)
		snprintf(reason, sizeof reason, "connection closed by the peer");
	else if (conn->state == SC_CONNECTING)
		snprintf(reason, sizeof reason, "connect: %s",
			 strerror(e != 0 ? e : ECONNREFUSED));
	else
		snprintf(reason, sizeof reason, "connection lost: %s",
			 strerror(e != 0 ? e : EIO));
	conn_fail(conn, reason, false);
}

static const char *state_name(enum sc_state s)
{
	switch (s) {
	case SC_CONNECTING: return "connect";
	case SC_GREETING: return "greeting";
	case SC_EHLO: return "EHLO";
	case SC_STARTTLS: return "STARTTLS";
	case SC_HANDSHAKE: return "TLS handshake";
	case SC_HELO: return "HELO";
	case SC_RSET: return "RSET";
	case SC_TXN: return "transaction reply";
	case SC_SENDING: return "sending data";
	case SC_IDLE: return "idle";
	case SC_CLOSING: return "QUIT";
	}
	return "?";
}

static void conn_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct sc_conn *conn = arg;
	char reason[SMTP_CLIENT_TEXT_MAX];

	(void)fd;
	(void)what;
	if (conn->state == SC_CLOSING) {
		conn_free(conn, false);
		return;
	}
	if (conn->state == SC_IDLE) {
		conn_quit(conn, true);
		return;
	}
	snprintf(reason, sizeof reason, "timeout (%s)", state_name(conn->state));
	evlog_emit(conn->c->log, EV_SMTP_OUT_TIMEOUT,
		   EVF_S("host", conn->dest.host[0] ? conn->dest.host : "-"),
		   EVF_S("addr", conn->addr_text), EVF_S("stage", state_name(conn->state)));
	if (conn->state == SC_HANDSHAKE && tls_fallback(conn, reason))
		return;
	conn_fail(conn, reason, false);
}

/* ---- public ------------------------------------------------------------------ */

struct smtp_client *smtp_client_new(struct event_base *base,
				    const struct smtp_client_opts *opts,
				    struct evlog *log, char *err, size_t errlen)
{
	struct smtp_client *c = calloc(1, sizeof *c);

	if (c == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	c->base = base;
	c->log = log;
	if (opts != NULL)
		smtp_client_set_opts(c, opts);
	else
		smtp_client_opts_init(&c->opts);
	return c;
}

void smtp_client_set_opts(struct smtp_client *c, const struct smtp_client_opts *o)
{
	c->opts = *o;
	c->opts.helo_name[sizeof c->opts.helo_name - 1] = '\0';
	if (c->opts.max_conns == 0)
		c->opts.max_conns = 1;
	if (c->opts.connect_ms == 0)
		c->opts.connect_ms = 1;
	if (c->opts.command_ms == 0)
		c->opts.command_ms = 1;
	if (c->opts.data_ms == 0)
		c->opts.data_ms = 1;
}

static void job_free(struct sc_job *job)
{
	if (job->body != NULL)
		spool_body_close(&job->body);
	if (job->done_ev != NULL)
		event_free(job->done_ev);
	if (job->rcpts != NULL)
		for (size_t i = 0; i < job->n_rcpts; i++) {
			free(job->rcpts[i].addr);
			free(job->rcpts[i].orcpt);
		}
	free(job->rcpts);
	free(job->dests);
	free(job->res);
	free(job->decided);
	free(job->accepted);
	free(job->attempts);
	free(job->nexthop);
	free(job->qid);
	free(job->sender);
	free(job->envid);
	free(job->tls_ca_file);
	free(job->tls_name);
	free(job);
}

static int job_check(const struct smtp_client_job *j, char *err, size_t errlen)
{
	if (j->n_rcpts == 0 || j->n_rcpts > SC_MAX_RCPTS || j->rcpts == NULL) {
		snprintf(err, errlen, "a job needs 1 to %u recipients", SC_MAX_RCPTS);
		return -1;
	}
	if (j->n_dests == 0 || j->n_dests > SC_MAX_DESTS || j->dests == NULL) {
		snprintf(err, errlen, "a job needs 1 to %u destinations", SC_MAX_DESTS);
		return -1;
	}
	if ((j->spool == NULL) == (j->read == NULL)) {
		snprintf(err, errlen, "a job needs one body source (spool or reader)");
		return -1;
	}
	if (j->nexthop == NULL || strlen(j->nexthop) >= SC_NEXTHOP_MAX ||
	    j->qid == NULL || !line_safe(j->qid, 64) ||
	    j->sender == NULL || !line_safe(j->sender, 1000)) {
		snprintf(err, errlen, "bad next hop, qid or sender");
		return -1;
	}
	for (size_t i = 0; i < j->n_rcpts; i++)
		if (j->rcpts[i].addr == NULL || j->rcpts[i].addr[0] == '\0' ||
		    !line_safe(j->rcpts[i].addr, 1000) ||
		    (j->rcpts[i].orcpt != NULL && !line_safe(j->rcpts[i].orcpt, 1000))) {
			snprintf(err, errlen, "bad recipient address #%zu", i);
			return -1;
		}
	for (size_t i = 0; i < j->n_dests; i++)
		if (j->dests[i].addr_len == 0 && j->dests[i].unix_path[0] == '\0') {
			snprintf(err, errlen, "destination #%zu has no address", i);
			return -1;
		}
	return 0;
}

int smtp_client_submit(struct smtp_client *c, const struct smtp_client_job *j,
		       smtp_client_done_fn *done, void *arg,
		       char *err, size_t errlen)
{
	struct sc_job *job;
	bool oom = false;

	if (job_check(j, err, errlen) != 0)
		return -1;
	job = calloc(1, sizeof *job);
	if (job == NULL) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	job->c = c;
	job->mode = j->mode;
	job->nexthop = xstrdup(j->nexthop);
	job->qid = xstrdup(j->qid);
	job->sender = xstrdup(j->sender);
	job->envid = xstrdup(j->envid);
	oom |= job->nexthop == NULL || job->qid == NULL || job->sender == NULL ||
	       (j->envid != NULL && job->envid == NULL);
	job->body_type = j->body_type;
	job->smtputf8 = j->smtputf8;
	job->dsn_ret = j->dsn_ret;
	job->size = j->size;
	job->spool = j->spool;
	job->read = j->read;
	job->read_arg = j->read_arg;
	job->tls = j->tls;
	job->tls_ca_file = xstrdup(j->tls_ca_file);
	job->tls_name = xstrdup(j->tls_name);
	oom |= (j->tls_ca_file != NULL && job->tls_ca_file == NULL) ||
	       (j->tls_name != NULL && job->tls_name == NULL);
	job->done = done;
	job->done_arg = arg;
	job->rcpts = calloc(j->n_rcpts, sizeof *job->rcpts);
	job->res = calloc(j->n_rcpts, sizeof *job->res);
	job->decided = calloc(j->n_rcpts, sizeof *job->decided);
	job->accepted = calloc(j->n_rcpts, sizeof *job->accepted);
	job->dests = calloc(j->n_dests, sizeof *job->dests);
	/* Each destination may fail twice: a may handshake, then plaintext. */
	job->attempts = calloc(2 * j->n_dests, sizeof *job->attempts);
	job->done_ev = event_new(c->base, -1, 0, job_done_cb, job);
	oom |= job->rcpts == NULL || job->res == NULL || job->decided == NULL ||
	       job->accepted == NULL || job->dests == NULL ||
	       job->attempts == NULL || job->done_ev == NULL;
	if (!oom) {
		job->n_rcpts = j->n_rcpts;
		for (size_t i = 0; i < j->n_rcpts; i++) {
			job->rcpts[i].addr = xstrdup(j->rcpts[i].addr);
			job->rcpts[i].orcpt = xstrdup(j->rcpts[i].orcpt);
			job->rcpts[i].notify = j->rcpts[i].notify;
			oom |= job->rcpts[i].addr == NULL ||
			       (j->rcpts[i].orcpt != NULL && job->rcpts[i].orcpt == NULL);
		}
		job->n_dests = j->n_dests;
		memcpy(job->dests, j->dests, j->n_dests * sizeof *job->dests);
		for (size_t i = 0; i < j->n_dests; i++) {
			job->dests[i].host[SMTP_CLIENT_HOST_MAX - 1] = '\0';
			job->dests[i].unix_path[SMTP_CLIENT_UNIX_MAX - 1] = '\0';
		}
	}
	if (oom) {
		job_free(job);
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	job->next = c->jobs;
	if (c->jobs != NULL)
		c->jobs->prev = job;
	c->jobs = job;
	job_dispatch(job);
	return 0;
}

void smtp_client_stats(const struct smtp_client *c, struct smtp_client_stats *r)
{
	*r = c->stats;
}

void smtp_client_flush_idle(struct smtp_client *c)
{
	for (struct sc_conn *k = c->conns; k != NULL; k = k->next)
		if (k->state == SC_IDLE)
			conn_quit(k, false);
}

void smtp_client_free(struct smtp_client **cp)
{
	struct smtp_client *c;

	if (cp == NULL || *cp == NULL)
		return;
	c = *cp;
	*cp = NULL;
	while (c->conns != NULL) {
		struct sc_conn *k = c->conns;

		if (k->job != NULL) {
			k->job->conn = NULL;
			k->job = NULL;
		}
		k->state = SC_CLOSING;
		conn_free(k, false);
	}
	while (c->jobs != NULL) {
		struct sc_job *job = c->jobs;

		c->jobs = job->next;
		job_free(job);
	}
	tls_client_free(&c->tls);
	free(c);
}

int smtp_client_tls_parse(const char *s, enum smtp_client_tls *r)
{
	if (s[0] == '\0' || strcmp(s, "may") == 0)
		*r = SMTP_CLIENT_TLS_MAY;
	else if (strcmp(s, "none") == 0)
		*r = SMTP_CLIENT_TLS_NONE;
	else if (strcmp(s, "encrypt") == 0)
		*r = SMTP_CLIENT_TLS_ENCRYPT;
	else if (strcmp(s, "verify") == 0)
		*r = SMTP_CLIENT_TLS_VERIFY;
	else
		return -1;
	return 0;
}

const char *smtp_client_tls_name(enum smtp_client_tls t)
{
	switch (t) {
	case SMTP_CLIENT_TLS_NONE: return "none";
	case SMTP_CLIENT_TLS_MAY: return "may";
	case SMTP_CLIENT_TLS_ENCRYPT: return "encrypt";
	case SMTP_CLIENT_TLS_VERIFY: return "verify";
	}
	return "?";
}
