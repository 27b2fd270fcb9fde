/*
 * smtp_client_int: what the files of the outbound client share; not for
 * other modules (they use smtp_client.h).  smtp_client.c: the public API,
 * jobs, their results and the pool; smtp_client_conn.c: a connection up to
 * the transaction and its libevent callbacks; smtp_client_txn.c: the mail
 * transaction and the body; smtp_client_tls.c: STARTTLS, the TLS policy
 * and may's plaintext memory.  Every function here runs on the loop thread
 * of the client's base.
 */
#ifndef CARRIER_SMTP_CLIENT_INT_H
#define CARRIER_SMTP_CLIENT_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "smtp_client.h"
#include "smtp_parse.h"
#include "spool.h"

struct bufferevent;
struct event;
struct event_base;
struct evlog;
struct tls_client;

#define SC_CHUNK 16384u          /* body bytes read per step */
#define SC_NEXTHOP_MAX 256u

/* What a reply in a transaction answers (smtp_client_txn.c). */
struct sc_exp;

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

/* ---- smtp_client.c: helpers, results, jobs and the pool ------------------- */

/* Formats d as "ip:port", "[ip6]:port" or its socket path into out. */
void sc_addr_format(const struct smtp_client_dest *d, char *out, size_t n);
/* True if a and b are the same address (or socket path). */
bool sc_dest_equal(const struct smtp_client_dest *a,
		   const struct smtp_client_dest *b);
/* Copies len bytes of in into out (size bytes, NUL-terminated), control
 * and non-ASCII bytes as '?', line breaks as "; ". */
void sc_text_sanitize(char *out, size_t size, const char *in, size_t len);

/* Recipient i's result from the peer's reply r (a PERM as TEMP with
 * temp_only); a recipient already decided keeps its result. */
void sc_rcpt_set_reply(struct sc_job *job, size_t i, struct sc_conn *conn,
		       const struct smtp_parse_reply *r, bool temp_only);
/* Every recipient not yet decided gets a local result (conn may be NULL). */
void sc_rcpt_set_rest(struct sc_job *job, struct sc_conn *conn,
		      enum smtp_client_class cls, unsigned code,
		      const char *enhanced, const char *text);
/* Ends the job: detaches it from its connection (which the caller then
 * releases or frees), closes the body, logs the results and schedules the
 * done callback (which frees the job).  Twice is harmless. */
void sc_job_finish(struct sc_job *job);
/* Records that connecting job to d failed with err (an attempt and an
 * event). */
void sc_job_connect_failed(struct sc_job *job, const struct smtp_client_dest *d,
			   const char *err);
/* Connects job to its next untried destination; when none is left, every
 * recipient is TEMP and the job finishes. */
void sc_job_connect_next(struct sc_job *job);
/* Starts a job: a pooled connection, a new one, or the wait queue. */
void sc_job_dispatch(struct sc_job *job);
/* Removes and returns the first job waiting for a slot of (mode, nexthop),
 * or NULL. */
struct sc_job *sc_wait_take(struct smtp_client *c, enum smtp_client_mode mode,
			    const char *nexthop);
/* The transaction ended cleanly (conn->job already finished): the
 * connection goes to a waiting job of the same next hop, idles in the pool,
 * or is closed. */
void sc_conn_release(struct sc_conn *conn);

/* ---- smtp_client_conn.c: a connection ---------------------------------- */

/* (Re)arms the connection's one timer for ms milliseconds. */
void sc_conn_arm(struct sc_conn *conn, unsigned ms);
/* Queues a formatted line on the connection; 0, or -1 out of memory. */
int sc_conn_printf(struct sc_conn *conn, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* Points bev's callbacks at the connection's (bev: conn's, or the TLS one
 * replacing it). */
void sc_conn_setcb(struct sc_conn *conn, struct bufferevent *bev);
/* Opens a connection to d for job and attaches it (the job's plain_retry
 * goes to the connection).  NULL with a reason in err when it could not
 * even start connecting (nothing is left attached then). */
struct sc_conn *sc_conn_new(struct sc_job *job, const struct smtp_client_dest *d,
			    char *err, size_t errlen);
/* Frees a connection now (a job still attached gets TEMP and finishes).
 * With dispatch, a job waiting for a slot of the same next hop starts.
 * Inside the read callback the struct itself lives until it returns. */
void sc_conn_free(struct sc_conn *conn, bool dispatch);
/* Detaches the job, sends QUIT and lets the connection go; it no longer
 * counts against the cap.  With dispatch, a waiting job starts. */
void sc_conn_quit(struct sc_conn *conn, bool dispatch);
/* The connection failed for reason: before MAIL the next destination is
 * tried (a dead pooled connection starts over on a new one), after MAIL
 * every undecided recipient is TEMP.  polite: QUIT rather than close.
 * The connection is gone when it returns. */
void sc_conn_fail(struct sc_conn *conn, const char *reason, bool polite);
/* sc_conn_fail() for a reply that breaks the protocol, with an event. */
void sc_conn_protocol_error(struct sc_conn *conn, const char *what);
/* Sends "verb helo_name" (EHLO, HELO, LHLO) and arms the command timeout. */
void sc_send_hello(struct sc_conn *conn, const char *verb);

/* ---- smtp_client_txn.c: the transaction ---------------------------------- */

/* Runs conn->job's transaction on the ready connection conn: refuses it
 * locally (the connection stays) or sends MAIL (with PIPELINING, the RCPTs
 * and DATA too). */
void sc_txn_start(struct sc_conn *conn);
/* A reply during the transaction (state SC_TXN). */
void sc_txn_reply(struct sc_conn *conn, const struct smtp_parse_reply *r);
/* Queues more of the body while the output is below its high mark; at the
 * end, the final dot.  A read error fails the connection. */
void sc_body_fill(struct sc_conn *conn);

/* ---- smtp_client_tls.c: STARTTLS ----------------------------------------- */

/* True when conn's job requires TLS (encrypt or verify). */
bool sc_tls_required(const struct sc_conn *conn);
/* Fails the connection for a TLS reason why (an event, then
 * sc_conn_fail()). */
void sc_tls_fail(struct sc_conn *conn, const char *why, bool polite);
/* may: the handshake failed (why): the address is remembered and retried
 * once in plaintext on a new connection; conn is freed.  False, touching
 * nothing, when that does not apply: the caller fails the connection. */
bool sc_tls_fallback(struct sc_conn *conn, const char *why);
/* After EHLO: STARTTLS when the policy wants it.  True when the connection
 * was taken over (STARTTLS sent, or failed). */
bool sc_tls_step(struct sc_conn *conn);
/* 220 to STARTTLS: the socket goes to an OpenSSL bufferevent. */
void sc_tls_begin(struct sc_conn *conn);
/* A bufferevent event in SC_HANDSHAKE (e: the socket error then): the
 * handshake finished (certificate check, EHLO again) or failed. */
void sc_tls_handshake_event(struct sc_conn *conn, short what, int e);

#endif
