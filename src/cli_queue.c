/*
 * cli_queue: `carrier queue ...` and `carrier stop`, the client side of
 * the daemon's `queue` and `stop` control commands (queue_ctl.h has the
 * wire grammar).
 *
 *   carrier queue [list] [--state S] [--from A] [--to A] [--domain D]
 *                 [--next-hop K] [--older-than AGE] [--json]
 *   carrier queue summary [--json]
 *   carrier queue show ID [--body]
 *   carrier queue hold ID...|--all      carrier queue release ID...|--all
 *   carrier queue delete ID... [--yes]  carrier queue bounce ID
 *   carrier queue retry ID...|--domain D|--all
 *   carrier queue flush [--wait] [--timeout SECONDS]
 *   carrier stop [--wait] [--timeout SECONDS]
 *
 * Exit status: 0 done; 1 refused or failed; 2 usage (also delete without
 * --yes and no terminal to confirm on); 3 carrierd is not running.
 */
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "conf.h"
#include "control.h"
#include "evlog.h"

#define QUEUE_USAGE \
	"usage: carrier queue [-c FILE] [list] [--state S] [--from A] [--to A] [--domain D]\n" \
	"                     [--next-hop K] [--older-than AGE] [--json]\n" \
	"       carrier queue summary [--json]\n" \
	"       carrier queue show ID [--body]\n" \
	"       carrier queue hold ID...|--all\n" \
	"       carrier queue release ID...|--all\n" \
	"       carrier queue delete ID... [--yes]\n" \
	"       carrier queue retry ID...|--domain D|--all\n" \
	"       carrier queue flush [--wait] [--timeout SECONDS]\n" \
	"       carrier queue bounce ID\n" \
	"states: queued deferred held done delivered failed quarantined;\n" \
	"AGE: seconds, or a number with s, m, h or d (30m, 2h)\n"

#define QUEUE_READ_TIMEOUT_MS 120000

struct qopts {
	const char *conf;
	const char *sub;
	const char *state, *from, *to, *domain, *hop, *older;
	const char *ids[64];
	size_t n_ids;
	bool json, body, all, yes, wait;
	long timeout;
};

/* ---- talking to the daemon ------------------------------------------------- */

struct qclient {
	char socket[1024];
};

static int client_init(struct qclient *c, const char *conf_path)
{
	struct conf_errors errs = { 0 };
	struct carrier_conf *conf = conf_load(conf_path, &errs);
	char line[1024];

	for (size_t i = 0; i < errs.n; i++) {
		conf_error_format(&errs.v[i], line, sizeof line);
		fprintf(stderr, "%s\n", line);
	}
	conf_errors_clear(&errs);
	if (conf == NULL)
		return 1;
	snprintf(c->socket, sizeof c->socket, "%s", conf->control_socket);
	conf_free(&conf);
	return 0;
}

/* How long to wait for an answer: the reading commands walk the whole
 * queue on the daemon's reader thread (about a second per million
 * messages), possibly after other walks. */
static unsigned request_timeout_ms(const char *line)
{
	static const char *const reading[] = { "queue list", "queue summary", "queue show",
					       "queue due" };

	for (size_t i = 0; i < sizeof reading / sizeof reading[0]; i++)
		if (strncmp(line, reading[i], strlen(reading[i])) == 0)
			return QUEUE_READ_TIMEOUT_MS;
	return 30000;
}

/* Sends one request.  Returns -1 with *resp filled on a 200 answer, else
 * the exit status after printing why (resp is cleared). */
static int request(struct qclient *c, const char *line, const char *what,
		   struct control_response *resp)
{
	char err[512];
	int rc = control_request_timeout(c->socket, line, request_timeout_ms(line), resp,
					 err, sizeof err);

	if (rc != CONTROL_CLIENT_OK) {
		fprintf(stderr, "carrier %s: %s\n", what, err);
		control_response_clear(resp);
		return rc == CONTROL_CLIENT_NOT_RUNNING ? 3 : 1;
	}
	if (resp->code != CONTROL_CODE_OK) {
		fprintf(stderr, "carrier %s: %s%s\n", what, resp->text ? resp->text : "refused",
			resp->code == CONTROL_CODE_DENIED ? "" : "");
		control_response_clear(resp);
		return 1;
	}
	return -1;
}

/* Splits a tab-separated value in place into at most n parts (the last
 * keeps any further tabs); returns the count. */
static size_t split(char *s, char **parts, size_t n)
{
	size_t k = 0;

	while (k < n) {
		parts[k++] = s;
		if (k == n || (s = strchr(s, '\t')) == NULL)
			break;
		*s++ = '\0';
	}
	return k;
}

static void json_str(const char *s)
{
	cli_json_string(stdout, s);
}

static void age_text(char *buf, size_t size, long long secs)
{
	if (secs < 0)
		secs = 0;
	if (secs < 120)
		snprintf(buf, size, "%llds", secs);
	else if (secs < 7200)
		snprintf(buf, size, "%lldm", secs / 60);
	else if (secs < 172800)
		snprintf(buf, size, "%lldh", secs / 3600);
	else
		snprintf(buf, size, "%lldd", secs / 86400);
}

/* "90", "30m", "2h", "1d" -> seconds; -1 when malformed. */
static long long parse_age(const char *s)
{
	char *end;
	long long n = strtoll(s, &end, 10);

	if (end == s || n < 0)
		return -1;
	if (*end == '\0' || !strcmp(end, "s"))
		return n;
	if (!strcmp(end, "m"))
		return n * 60;
	if (!strcmp(end, "h"))
		return n * 3600;
	if (!strcmp(end, "d"))
		return n * 86400;
	return -1;
}

static bool word_ok(const char *w, const char *what)
{
	if (w[0] == '\0' || strpbrk(w, " \t\r\n") != NULL || strlen(w) > 400) {
		fprintf(stderr, "carrier queue: %s \"%s\" must be one word (no spaces), at most 400 characters\n",
			what, w);
		return false;
	}
	return true;
}

/* ---- list ------------------------------------------------------------------ */

static void print_rcpt_text(char *v, long long now)
{
	char *p[7], next[32], line[64];

	if (split(v, p, 7) < 7)
		return;
	if (!strcmp(p[1], "deferred") || !strcmp(p[1], "queued")) {
		long long na = atoll(p[3]);

		if (na <= now)
			snprintf(next, sizeof next, "now");
		else {
			age_text(line, sizeof line, na - now);
			snprintf(next, sizeof next, "in %s", line);
		}
		printf("    %-36s %-9s tries %-3s next %-8s via %s\n", p[5], p[1], p[2], next, p[4]);
	} else {
		printf("    %-36s %-9s tries %s\n", p[5], p[1], p[2]);
	}
	if (p[6][0])
		printf("        %s\n", p[6]);
}

static void print_rcpt_json(char *v, bool *first)
{
	char *p[7];

	if (split(v, p, 7) < 7)
		return;
	printf("%s{\"address\":", *first ? "" : ",");
	json_str(p[5]);
	printf(",\"state\":\"%s\",\"attempts\":%s,\"next_attempt\":%s,\"next_hop\":", p[1], p[2], p[3]);
	json_str(p[4]);
	printf(",\"last_reply\":");
	json_str(p[6]);
	printf("}");
	*first = false;
}

struct list_out {
	bool json, first, in_msg, first_rcpt;
	size_t shown;
	long long now;
};

static void list_page(struct list_out *o, struct control_response *r)
{
	for (size_t i = 0; i < r->n_fields; i++) {
		const char *k = r->fields[i].key;
		char *v = r->fields[i].value, *p[7], age[32];

		if (!strcmp(k, "rcpt")) {
			if (o->json)
				print_rcpt_json(v, &o->first_rcpt);
			else
				print_rcpt_text(v, o->now);
			continue;
		}
		if (o->json && o->in_msg) {
			printf("]}");
			o->in_msg = false;
		}
		if (!strcmp(k, "msg") && split(v, p, 7) == 7) {
			o->shown++;
			if (o->json) {
				printf("%s\n{\"qid\":\"%s\",\"state\":\"%s\",\"arrival\":%s,\"size\":%s,\"sender\":",
				       o->first ? "" : ",", p[0], p[1], p[2], p[3]);
				json_str(p[4]);
				printf(",\"pending\":%s,\"recipients\":[", p[5]);
				o->in_msg = true;
				o->first_rcpt = true;
				o->first = false;
			} else {
				age_text(age, sizeof age, o->now - atoll(p[2]));
				printf("%s  %-9s %6s %9s  <%s>\n", p[0], p[1], age, p[3], p[4]);
			}
		} else if (!strcmp(k, "quarantined") && split(v, p, 3) == 3) {
			o->shown++;
			if (o->json) {
				printf("%s\n{\"qid\":\"%s\",\"state\":\"quarantined\",\"quarantined_at\":%s,\"reason\":",
				       o->first ? "" : ",", p[0], p[1]);
				json_str(p[2]);
				printf("}");
				o->first = false;
			} else {
				age_text(age, sizeof age, o->now - atoll(p[1]));
				printf("%s  %-9s %6s  %s\n", p[0], "quarantined", age, p[2]);
			}
		}
	}
	if (o->json && o->in_msg) {
		printf("]}");
		o->in_msg = false;
	}
}

static int do_list(struct qclient *c, const struct qopts *o)
{
	struct list_out out = { .json = o->json, .first = true, .now = (long long)time(NULL) };
	char base[1024], line[1600], cursor[480] = "";
	size_t offset = 0;
	int n = snprintf(base, sizeof base, "queue list");

#define ADD(key, val) \
	if ((val) != NULL) n += snprintf(base + n, sizeof base - (size_t)n, " " key "=%s", (val))
	ADD("state", o->state);
	ADD("from", o->from);
	ADD("to", o->to);
	ADD("domain", o->domain);
	ADD("hop", o->hop);
#undef ADD
	if (o->older != NULL) {
		long long secs = parse_age(o->older);

		if (secs < 0) {
			fprintf(stderr, "carrier queue: bad --older-than \"%s\" (seconds, or 30m, 2h, 1d)\n",
				o->older);
			return 2;
		}
		n += snprintf(base + n, sizeof base - (size_t)n, " older=%lld", secs);
	}
	if ((size_t)n >= sizeof base - 40) {
		fprintf(stderr, "carrier queue: filters too long\n");
		return 2;
	}
	if (o->json)
		printf("[");
	for (;;) {
		struct control_response r;
		const char *next, *after, *qafter;
		int rc;

		/* Each page goes on after the last entry of the one before
		 * (the daemon reads the queue once in all); a daemon that
		 * knows no cursor pages by offset. */
		if (cursor[0])
			snprintf(line, sizeof line, "%s %s", base, cursor);
		else
			snprintf(line, sizeof line, "%s offset=%zu", base, offset);
		if ((rc = request(c, line, "queue", &r)) >= 0) {
			if (o->json)
				printf("]\n");
			return rc;
		}
		list_page(&out, &r);
		if (control_response_get(&r, "partial"))
			fprintf(stderr, "carrier queue: %s\n", control_response_get(&r, "partial"));
		next = control_response_get(&r, "next_offset");
		after = control_response_get(&r, "next_after");
		qafter = control_response_get(&r, "next_qafter");
		offset = next ? (size_t)atoll(next) : 0;
		if (after && word_ok(after, "next_after"))
			snprintf(cursor, sizeof cursor, "after=%s", after);
		else if (qafter && word_ok(qafter, "next_qafter"))
			snprintf(cursor, sizeof cursor, "qafter=%s", qafter);
		else
			cursor[0] = '\0';
		control_response_clear(&r);
		if (next == NULL || (offset == 0 && !cursor[0]))
			break;
	}
	if (o->json)
		printf("\n]\n");
	else if (out.shown == 0)
		printf("queue is empty%s\n", o->state || o->from || o->to || o->domain || o->hop ||
		       o->older ? " (for these filters)" : "");
	else
		printf("-- %zu message%s\n", out.shown, out.shown == 1 ? "" : "s");
	return 0;
}

/* ---- summary --------------------------------------------------------------- */

static const char *const bucket_names[10] = {
	"5m", "10m", "20m", "40m", "80m", "160m", "320m", "640m", "1280m", "1280m+",
};

static void summary_row(char *v, bool json, bool *first)
{
	char *p[12];

	if (split(v, p, 12) < 12)
		return;
	if (json) {
		printf("%s{\"next_hop\":", *first ? "" : ",");
		json_str(p[0]);
		printf(",\"total\":%s,\"ages\":{", p[1]);
		for (size_t b = 0; b < 10; b++)
			printf("%s\"%s\":%s", b ? "," : "", bucket_names[b], p[2 + b]);
		printf("}}");
		*first = false;
		return;
	}
	printf("%-32s %6s", p[0], p[1]);
	for (size_t b = 0; b < 10; b++)
		printf(" %6s", p[2 + b]);
	printf("\n");
}

static int do_summary(struct qclient *c, const struct qopts *o)
{
	struct control_response r;
	const char *held;
	bool first = true;
	int rc = request(c, "queue summary", "queue summary", &r);

	if (rc >= 0)
		return rc;
	held = control_response_get(&r, "held");
	if (o->json) {
		char h[64] = "0\t0", *hp[2];

		printf("{\"buckets\":[");
		for (size_t b = 0; b < 10; b++)
			printf("%s\"%s\"", b ? "," : "", bucket_names[b]);
		printf("],\"total\":");
		for (size_t i = 0; i < r.n_fields; i++)
			if (!strcmp(r.fields[i].key, "total"))
				summary_row(r.fields[i].value, true, &first);
		printf(",\"next_hops\":[");
		first = true;
		for (size_t i = 0; i < r.n_fields; i++)
			if (!strcmp(r.fields[i].key, "hop"))
				summary_row(r.fields[i].value, true, &first);
		snprintf(h, sizeof h, "%s", held ? held : "0\t0");
		if (split(h, hp, 2) < 2)
			hp[1] = "0";
		printf("],\"held_messages\":%s,\"held_recipients\":%s}\n", hp[0], hp[1]);
	} else {
		printf("%-32s %6s", "NEXT HOP (pending recipients)", "TOTAL");
		for (size_t b = 0; b < 10; b++)
			printf(" %6s", bucket_names[b]);
		printf("\n");
		for (size_t i = 0; i < r.n_fields; i++)
			if (!strcmp(r.fields[i].key, "total"))
				summary_row(r.fields[i].value, false, &first);
		for (size_t i = 0; i < r.n_fields; i++)
			if (!strcmp(r.fields[i].key, "hop"))
				summary_row(r.fields[i].value, false, &first);
		if (held) {
			char h[64], *hp[2];

			snprintf(h, sizeof h, "%s", held);
			if (split(h, hp, 2) == 2 && strcmp(hp[0], "0") != 0)
				printf("held: %s messages (%s pending recipients), not counted above\n",
				       hp[0], hp[1]);
		}
	}
	if (control_response_get(&r, "partial"))
		fprintf(stderr, "carrier queue summary: %s\n", control_response_get(&r, "partial"));
	control_response_clear(&r);
	return 0;
}

/* ---- show ------------------------------------------------------------------ */

static int do_show(struct qclient *c, const struct qopts *o)
{
	struct control_response r;
	char line[256];
	bool headers = false, body = false, rcpts = false;
	long long now = (long long)time(NULL);
	int rc;

	if (o->n_ids != 1) {
		fprintf(stderr, "usage: carrier queue show ID [--body]\n");
		return 2;
	}
	snprintf(line, sizeof line, "queue show %s%s", o->ids[0], o->body ? " body" : "");
	if ((rc = request(c, line, "queue show", &r)) >= 0)
		return rc;
	for (size_t i = 0; i < r.n_fields; i++) {
		const char *k = r.fields[i].key;
		char *v = r.fields[i].value, age[32];

		if (!strcmp(k, "rcpt")) {
			if (!rcpts)
				printf("recipients:\n");
			rcpts = true;
			print_rcpt_text(v, now);
		} else if (!strcmp(k, "header")) {
			if (!headers)
				printf("headers:\n");
			headers = true;
			printf("  %s\n", v);
		} else if (!strcmp(k, "body")) {
			if (!body)
				printf("body:\n");
			body = true;
			printf("  %s\n", v);
		} else if (!strcmp(k, "arrival") || !strcmp(k, "quarantined")) {
			age_text(age, sizeof age, now - atoll(v));
			printf("%s: %s (%s ago)\n", k, v, age);
		} else {
			printf("%s: %s\n", k, v);
		}
	}
	control_response_clear(&r);
	return 0;
}

/* ---- changes ----------------------------------------------------------------- */

static void print_counts(const char *what, struct control_response *r)
{
	const char *ch = control_response_get(r, "changed"), *ab = control_response_get(r, "absent"),
		   *un = control_response_get(r, "unchanged");

	for (size_t i = 0; i < r->n_fields; i++)
		if (!strcmp(r->fields[i].key, "result")) {
			char *p[2];

			if (split(r->fields[i].value, p, 2) == 2)
				printf("%s: %s\n", p[0], p[1]);
		}
	printf("%s: %s changed", what, ch ? ch : "0");
	if (un && strcmp(un, "0"))
		printf(", %s unchanged (already so%s)", un,
		       !strcmp(what, "retry") || !strcmp(what, "flush") ? ", due now, or held" : "");
	if (ab && strcmp(ab, "0"))
		printf(", %s not in the queue", ab);
	printf("\n");
}

/* The control protocol takes CONTROL_ARGS_MAX words a request: IDs go in
 * batches of this many. */
#define IDS_PER_REQUEST 24

/* Sends `line`, repeated while the daemon says an `all` request has more. */
static int change_line(struct qclient *c, const char *line, const char *what,
		       const char *sub)
{
	for (int rounds = 0; rounds < 1000; rounds++) {
		struct control_response r;
		int rc = request(c, line, what, &r);
		const char *changed;
		bool more;

		if (rc >= 0)
			return rc;
		print_counts(sub, &r);
		changed = control_response_get(&r, "changed");
		more = control_response_get(&r, "more") != NULL && changed && strcmp(changed, "0") != 0;
		control_response_clear(&r);
		if (!more)
			break;
	}
	return 0;
}

/* "queue hold ID...", "queue hold all" or "queue retry domain=D". */
static int do_change(struct qclient *c, const struct qopts *o, const char *sub)
{
	char line[CONTROL_LINE_MAX], what[32];
	int worst = 0;

	snprintf(what, sizeof what, "queue %s", sub);
	if (o->n_ids == 0) {
		if (o->domain && !strcmp(sub, "retry"))
			snprintf(line, sizeof line, "queue %s domain=%s", sub, o->domain);
		else
			snprintf(line, sizeof line, "queue %s all", sub);
		return change_line(c, line, what, sub);
	}
	for (size_t i = 0; i < o->n_ids; i += IDS_PER_REQUEST) {
		int n = snprintf(line, sizeof line, "queue %s", sub), rc;

		for (size_t k = i; k < o->n_ids && k < i + IDS_PER_REQUEST; k++)
			n += snprintf(line + n, sizeof line - (size_t)n, " %s", o->ids[k]);
		if ((size_t)n >= sizeof line - 1) {
			fprintf(stderr, "carrier %s: IDs too long\n", what);
			return 2;
		}
		rc = change_line(c, line, what, sub);
		if (rc == 3)
			return rc;
		if (rc > worst)
			worst = rc;
	}
	return worst;
}

static bool confirm_delete(const struct qopts *o)
{
	FILE *tty;
	char answer[16] = "";

	if (!isatty(STDIN_FILENO) || (tty = fopen("/dev/tty", "r+")) == NULL)
		return false;
	fprintf(tty, "Delete %zu message%s (", o->n_ids, o->n_ids == 1 ? "" : "s");
	for (size_t i = 0; i < o->n_ids && i < 5; i++)
		fprintf(tty, "%s%s", i ? " " : "", o->ids[i]);
	fprintf(tty, "%s) for good, without a bounce? [y/N] ", o->n_ids > 5 ? " ..." : "");
	fflush(tty);
	if (fgets(answer, sizeof answer, tty) == NULL)
		answer[0] = '\0';
	fclose(tty);
	return answer[0] == 'y' || answer[0] == 'Y';
}

static int do_delete(struct qclient *c, const struct qopts *o)
{
	if (o->n_ids == 0 || o->all) {
		fprintf(stderr, "usage: carrier queue delete ID... [--yes]\n");
		return 2;
	}
	if (!o->yes) {
		if (!isatty(STDIN_FILENO)) {
			fprintf(stderr, "carrier queue delete: not deleting without confirmation: no terminal to ask on; add --yes to delete %zu message%s\n",
				o->n_ids, o->n_ids == 1 ? "" : "s");
			return 2;
		}
		if (!confirm_delete(o)) {
			fprintf(stderr, "carrier queue delete: nothing deleted\n");
			return 1;
		}
	}
	return do_change(c, o, "delete");
}

static void progress(size_t done, size_t total, size_t due)
{
	int width = 30, fill = total ? (int)(done * (size_t)width / total) : width;

	fprintf(stderr, "\r[%.*s%*s] %zu/%zu tried, %zu due ", fill,
		"##############################", width - fill, "", done, total, due);
	fflush(stderr);
}

/* Polls "queue due" until nothing is due or the timeout. */
static int wait_due(struct qclient *c, long timeout)
{
	time_t end = time(NULL) + timeout;
	size_t start = 0;
	bool tty = isatty(STDERR_FILENO);

	for (bool first = true;; first = false) {
		struct control_response r;
		int rc = request(c, "queue due", "queue flush", &r);
		size_t due;

		if (rc >= 0)
			return rc;
		due = (size_t)atoll(control_response_get(&r, "due") ? control_response_get(&r, "due") : "0");
		control_response_clear(&r);
		if (first)
			start = due;
		if (due > start)
			start = due;
		if (tty)
			progress(start - due, start, due);
		if (due == 0) {
			if (tty)
				fprintf(stderr, "\n");
			printf("flush: done, nothing due\n");
			return 0;
		}
		if (time(NULL) >= end) {
			if (tty)
				fprintf(stderr, "\n");
			fprintf(stderr, "carrier queue flush: %zu recipients still due after %lds\n", due,
				timeout);
			return 1;
		}
		nanosleep(&(struct timespec){ 0, 300 * 1000000L }, NULL);
	}
}

static int do_flush(struct qclient *c, const struct qopts *o)
{
	struct control_response r;
	int rc = request(c, "queue flush", "queue flush", &r);

	if (rc >= 0)
		return rc;
	print_counts("flush", &r);
	control_response_clear(&r);
	return o->wait ? wait_due(c, o->timeout) : 0;
}

static int do_bounce(struct qclient *c, const struct qopts *o)
{
	struct control_response r;
	char line[128];
	int rc;

	if (o->n_ids != 1) {
		fprintf(stderr, "usage: carrier queue bounce ID\n");
		return 2;
	}
	snprintf(line, sizeof line, "queue bounce %s", o->ids[0]);
	if ((rc = request(c, line, "queue bounce", &r)) >= 0)
		return rc;
	printf("bounced: %s recipients of %s; report %s\n",
	       control_response_get(&r, "bounced") ? control_response_get(&r, "bounced") : "0",
	       o->ids[0], control_response_get(&r, "report") ? control_response_get(&r, "report") : "none");
	control_response_clear(&r);
	return 0;
}

/* ---- arguments ----------------------------------------------------------------- */

static int parse_opts(int argc, char **argv, struct qopts *o)
{
	static const char *const subs[] = { "list", "summary", "show", "hold", "release", "delete",
					    "retry", "flush", "bounce", NULL };

	o->timeout = 300;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char **val = NULL;

		if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			fputs(QUEUE_USAGE, stdout);
			return 0;
		}
		if (!strcmp(a, "-c")) val = &o->conf;
		else if (!strcmp(a, "--state")) val = &o->state;
		else if (!strcmp(a, "--from")) val = &o->from;
		else if (!strcmp(a, "--to")) val = &o->to;
		else if (!strcmp(a, "--domain")) val = &o->domain;
		else if (!strcmp(a, "--next-hop")) val = &o->hop;
		else if (!strcmp(a, "--older-than")) val = &o->older;
		if (val != NULL) {
			if (++i == argc) {
				fprintf(stderr, "carrier queue: %s needs a value\n%s", a, QUEUE_USAGE);
				return 2;
			}
			if (val != &o->conf && !word_ok(argv[i], a))
				return 2;
			*val = argv[i];
			continue;
		}
		if (!strcmp(a, "--timeout") && i + 1 < argc) {
			o->timeout = atol(argv[++i]);
			continue;
		}
		if (!strcmp(a, "--json")) o->json = true;
		else if (!strcmp(a, "--body")) o->body = true;
		else if (!strcmp(a, "--all")) o->all = true;
		else if (!strcmp(a, "--yes") || !strcmp(a, "-y")) o->yes = true;
		else if (!strcmp(a, "--wait")) o->wait = true;
		else if (a[0] == '-') {
			fprintf(stderr, "carrier queue: unknown option %s\n%s", a, QUEUE_USAGE);
			return 2;
		} else if (o->sub == NULL) {
			for (size_t k = 0; subs[k] && o->sub == NULL; k++)
				if (!strcmp(a, subs[k]))
					o->sub = subs[k];
			if (o->sub == NULL) {
				fprintf(stderr, "carrier queue: unknown command \"%s\"\n%s", a, QUEUE_USAGE);
				return 2;
			}
		} else if (o->n_ids < sizeof o->ids / sizeof o->ids[0] && word_ok(a, "ID")) {
			o->ids[o->n_ids++] = a;
		} else {
			fprintf(stderr, "carrier queue: too many IDs (at most %zu per command)\n",
				sizeof o->ids / sizeof o->ids[0]);
			return 2;
		}
	}
	if (o->sub == NULL)
		o->sub = "list";
	return -1;
}

int cli_queue_main(int argc, char **argv)
{
	struct qopts o = { 0 };
	struct qclient c;
	const char *s;
	int rc = parse_opts(argc, argv, &o);

	if (rc >= 0)
		return rc;
	s = o.sub;
	if ((!strcmp(s, "hold") || !strcmp(s, "release") || !strcmp(s, "retry")) &&
	    (o.n_ids > 0) + o.all + (o.domain != NULL && !strcmp(s, "retry")) != 1) {
		fprintf(stderr, "usage: carrier queue %s ID...|--all%s\n", s,
			!strcmp(s, "retry") ? "|--domain D" : "");
		return 2;
	}
	if (client_init(&c, o.conf) != 0)
		return 1;
	if (!strcmp(s, "list"))
		return do_list(&c, &o);
	if (!strcmp(s, "summary"))
		return do_summary(&c, &o);
	if (!strcmp(s, "show"))
		return do_show(&c, &o);
	if (!strcmp(s, "delete"))
		return do_delete(&c, &o);
	if (!strcmp(s, "flush"))
		return do_flush(&c, &o);
	if (!strcmp(s, "bounce"))
		return do_bounce(&c, &o);
	return do_change(&c, &o, s);
}

/* ---- carrier stop ---------------------------------------------------------------- */

/* True when pid is a zombie: it exited and its parent has not reaped it
 * yet (a service manager or a test harness may be slow to). */
static bool pid_exited(pid_t pid)
{
	char path[64], buf[512], *p;
	FILE *f;
	size_t n;

	snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
	if ((f = fopen(path, "r")) == NULL)
		return false;
	n = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[n] = '\0';
	/* "pid (comm) S ...": the state follows the last ')'. */
	p = strrchr(buf, ')');
	return p != NULL && p[1] == ' ' && (p[2] == 'Z' || p[2] == 'X');
}

int cli_stop_main(int argc, char **argv)
{
	struct qclient c;
	struct control_response r;
	const char *conf = NULL;
	bool wait = false;
	long timeout = -1;
	pid_t pid;
	time_t end;
	int rc;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "-c") && i + 1 < argc)
			conf = argv[++i];
		else if (!strcmp(argv[i], "--wait"))
			wait = true;
		else if (!strcmp(argv[i], "--timeout") && i + 1 < argc)
			timeout = atol(argv[++i]);
		else {
			fprintf(!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help") ? stdout : stderr,
				"usage: carrier stop [-c FILE] [--wait] [--timeout SECONDS]\n");
			return !strcmp(argv[i], "-h") || !strcmp(argv[i], "--help") ? 0 : 2;
		}
	}
	if (client_init(&c, conf) != 0)
		return 1;
	if ((rc = request(&c, "stop", "stop", &r)) >= 0)
		return rc;
	pid = (pid_t)atol(control_response_get(&r, "pid") ? control_response_get(&r, "pid") : "0");
	if (timeout < 0)
		timeout = atol(control_response_get(&r, "timeout") ? control_response_get(&r, "timeout") : "30") + 10;
	control_response_clear(&r);
	printf("carrierd (pid %d) is draining and will stop\n", (int)pid);
	if (!wait || pid <= 0)
		return 0;
	for (end = time(NULL) + timeout; time(NULL) < end;) {
		if ((kill(pid, 0) < 0 && errno == ESRCH) || pid_exited(pid)) {
			printf("carrierd stopped\n");
			return 0;
		}
		nanosleep(&(struct timespec){ 0, 100 * 1000000L }, NULL);
	}
	fprintf(stderr, "carrier stop: carrierd (pid %d) still running after %lds\n", (int)pid, timeout);
	return 1;
}
