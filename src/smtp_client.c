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
 * The module is four files sharing smtp_client_int.h.  This one holds the
 * public API, the jobs (checking, copying, their per-recipient results and
 * the callback that hands them over) and the pool: which connection a job
 * gets, the per-next-hop cap and the queue of jobs waiting for a slot.
 * smtp_client_conn.c runs a connection up to the transaction,
 * smtp_client_txn.c the transaction and the body, smtp_client_tls.c
 * STARTTLS.
 *
 * Threads: the loop thread of the client's base only.
 */
#include "smtp_client.h"
#include "smtp_client_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#include <event2/event.h>

#include "conf.h"
#include "evlog.h"
#include "tls.h"

#define SC_MAX_RCPTS 1000u
#define SC_MAX_DESTS 32u

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

void sc_addr_format(const struct smtp_client_dest *d, char *out, size_t n)
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

bool sc_dest_equal(const struct smtp_client_dest *a,
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
void sc_text_sanitize(char *out, size_t size, const char *in, size_t len)
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

/* ---- results and the end of a job ---------------------------------------- */

void sc_rcpt_set_reply(struct sc_job *job, size_t i, struct sc_conn *conn,
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
	sc_text_sanitize(rr->text, sizeof rr->text, r->text, r->text_len);
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
	sc_text_sanitize(rr->text, sizeof rr->text, text, strlen(text));
	rr->local = true;
	if (conn != NULL) {
		snprintf(rr->host, sizeof rr->host, "%s", conn->dest.host);
		snprintf(rr->addr, sizeof rr->addr, "%s", conn->addr_text);
	}
}

/* Every recipient not yet decided gets a local result. */
void sc_rcpt_set_rest(struct sc_job *job, struct sc_conn *conn,
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
void sc_job_finish(struct sc_job *job)
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

/* ---- jobs: connecting and the pool --------------------------------------- */

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

/* Removes and returns the first job waiting for a slot of (mode, nexthop),
 * or NULL. */
struct sc_job *sc_wait_take(struct smtp_client *c, enum smtp_client_mode mode,
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

static bool job_can_use(const struct sc_job *job, const struct sc_conn *conn)
{
	if (conn->mode != job->mode || strcmp(conn->nexthop, job->nexthop) != 0)
		return false;
	if ((job->tls >= SMTP_CLIENT_TLS_ENCRYPT && !conn->tls_on) ||
	    (job->tls == SMTP_CLIENT_TLS_VERIFY && !conn->tls_verified))
		return false;
	for (size_t i = 0; i < job->n_dests; i++)
		if (sc_dest_equal(&job->dests[i], &conn->dest))
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
		 * A dead connection shows as no reply at all: sc_conn_fail()
		 * then starts over. */
		sc_txn_start(conn);
		return;
	}
	conn->state = SC_RSET;
	sc_conn_printf(conn, "RSET\r\n");
	sc_conn_arm(conn, c->opts.command_ms);
}

void sc_job_connect_failed(struct sc_job *job, const struct smtp_client_dest *d,
			   const char *err)
{
	struct smtp_client_attempt *a = &job->attempts[job->n_attempts++];

	snprintf(a->host, sizeof a->host, "%s", d->host);
	sc_addr_format(d, a->addr, sizeof a->addr);
	snprintf(a->reason, sizeof a->reason, "%s", err);
	evlog_emit(job->c->log, EV_SMTP_OUT_DESTINATION_FAILED,
		   EVF_S("qid", job->qid),
		   EVF_S("host", d->host[0] ? d->host : "-"),
		   EVF_S("addr", a->addr), EVF_S("reason", err));
}

void sc_job_connect_next(struct sc_job *job)
{
	char err[256];

	while (job->dest_i < job->n_dests) {
		const struct smtp_client_dest *d = &job->dests[job->dest_i++];

		if (sc_conn_new(job, d, err, sizeof err) != NULL)
			return;
		sc_job_connect_failed(job, d, err);
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
		sc_rcpt_set_rest(job, NULL, SMTP_CLIENT_TEMP, 0, "", text);
		sc_job_finish(job);
	}
}

/* Starts a job: a pooled connection, a new one, or the wait queue. */
void sc_job_dispatch(struct sc_job *job)
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
			sc_conn_quit(idle_other, false);
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
	sc_job_connect_next(job);
}

/* The transaction ended cleanly: give the connection to a waiting job of
 * the same next hop, keep it idle, or close it. */
void sc_conn_release(struct sc_conn *conn)
{
	struct smtp_client *c = conn->c;
	struct sc_job *w;

	conn->job = NULL;
	conn->used = true;
	conn->exp_head = conn->exp_tail = 0;
	evtimer_del(conn->timer);
	if ((w = sc_wait_take(c, conn->mode, conn->nexthop)) != NULL) {
		if (job_can_use(w, conn) && !w->no_reuse) {
			job_attach_reused(w, conn);
		} else {
			sc_conn_quit(conn, false);
			w->dest_i = 0;
			w->n_attempts = 0;
			sc_job_connect_next(w);
		}
		return;
	}
	if (c->opts.idle_ms == 0) {
		sc_conn_quit(conn, false);
		return;
	}
	conn->state = SC_IDLE;
	c->stats.idle++;
	sc_conn_arm(conn, c->opts.idle_ms);
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
	sc_job_dispatch(job);
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
			sc_conn_quit(k, false);
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
		sc_conn_free(k, false);
	}
	while (c->jobs != NULL) {
		struct sc_job *job = c->jobs;

		c->jobs = job->next;
		job_free(job);
	}
	tls_client_free(&c->tls);
	free(c);
}
