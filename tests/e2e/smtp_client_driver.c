/*
 * smtp_client_driver: a small command-line front end to smtp_client for
 * the end-to-end tests (until the scheduler drives the agent).  Built by
 * tests/e2e/test_smtp_client.py against build/libcarrier.a.
 *
 *   smtp_client_driver [--lmtp] [--conns N] [--count N] [--timeout MS]
 *       [--spool DIR] [--8bit] [--utf8] [--ret full|hdrs] [--envid X]
 *       --dest HOST:PORT | --dest unix:PATH  (repeatable, in order)
 *       --from ADDR --to ADDR[,notify=success+failure|never][,orcpt=X] ...
 *       --body FILE
 *
 * Submits --count copies of the message at once (each its own job, same
 * next hop), runs the loop until every job is done and prints one JSON
 * line per job, then a line {"stats": ...}.  With --spool the message is
 * first committed to a fresh spool in DIR and the body read from there;
 * otherwise it is read from FILE by a reader callback.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "smtp_client.h"
#include "spool.h"

#define MAX_RCPTS 64
#define MAX_DESTS 8

struct file_body {
	FILE *f;
};

static ssize_t file_read(void *arg, void *buf, size_t n)
{
	struct file_body *b = arg;
	size_t k = fread(buf, 1, n, b->f);

	return ferror(b->f) ? -1 : (ssize_t)k;
}

static int pending;

static void json_str(const char *s)
{
	putchar('"');
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;

		if (ch == '"' || ch == '\\')
			printf("\\%c", ch);
		else if (ch < 32)
			printf("\\u%04x", ch);
		else
			putchar(ch);
	}
	putchar('"');
}

static void done_cb(void *arg, const struct smtp_client_result *res)
{
	(void)arg;
	printf("{\"qid\":");
	json_str(res->qid);
	printf(",\"connected\":%s,\"reused\":%s,\"host\":", res->connected ? "true" : "false",
	       res->reused ? "true" : "false");
	json_str(res->host);
	printf(",\"addr\":");
	json_str(res->addr);
	printf(",\"attempts\":[");
	for (size_t i = 0; i < res->n_attempts; i++) {
		printf("%s{\"host\":", i ? "," : "");
		json_str(res->attempts[i].host);
		printf(",\"addr\":");
		json_str(res->attempts[i].addr);
		printf(",\"reason\":");
		json_str(res->attempts[i].reason);
		printf("}");
	}
	printf("],\"rcpts\":[");
	for (size_t i = 0; i < res->n_rcpts; i++) {
		const struct smtp_client_rcpt_result *r = &res->rcpts[i];

		printf("%s{\"class\":\"%s\",\"code\":%u,\"enhanced\":", i ? "," : "",
		       smtp_client_class_name(r->cls), r->code);
		json_str(r->enhanced);
		printf(",\"text\":");
		json_str(r->text);
		printf(",\"local\":%s,\"dsn_relayed\":%s,\"host\":", r->local ? "true" : "false",
		       r->dsn_relayed ? "true" : "false");
		json_str(r->host);
		printf("}");
	}
	printf("]}\n");
	pending--;
}

static int parse_dest(const char *s, struct smtp_client_dest *d)
{
	char host[128];
	const char *colon;

	memset(d, 0, sizeof *d);
	if (strncmp(s, "unix:", 5) == 0) {
		snprintf(d->unix_path, sizeof d->unix_path, "%s", s + 5);
		snprintf(d->host, sizeof d->host, "localhost");
		return 0;
	}
	colon = strrchr(s, ':');
	if (colon == NULL || (size_t)(colon - s) >= sizeof host)
		return -1;
	memcpy(host, s, (size_t)(colon - s));
	host[colon - s] = '\0';
	if (host[0] == '[') {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&d->addr;
		size_t n = strlen(host);

		if (n < 2 || host[n - 1] != ']')
			return -1;
		host[n - 1] = '\0';
		s6->sin6_family = AF_INET6;
		s6->sin6_port = htons((unsigned short)atoi(colon + 1));
		if (inet_pton(AF_INET6, host + 1, &s6->sin6_addr) != 1)
			return -1;
		d->addr_len = sizeof *s6;
	} else {
		struct sockaddr_in *s4 = (struct sockaddr_in *)&d->addr;

		s4->sin_family = AF_INET;
		s4->sin_port = htons((unsigned short)atoi(colon + 1));
		if (inet_pton(AF_INET, host, &s4->sin_addr) != 1)
			return -1;
		d->addr_len = sizeof *s4;
	}
	snprintf(d->host, sizeof d->host, "%s", s);
	return 0;
}

/* ADDR[,notify=success+failure|never][,orcpt=TYPE;XTEXT] */
static void parse_rcpt(char *s, struct smtp_client_rcpt *r)
{
	char *save = NULL;

	memset(r, 0, sizeof *r);
	r->addr = strtok_r(s, ",", &save);
	for (char *opt; (opt = strtok_r(NULL, ",", &save)) != NULL;) {
		if (strncmp(opt, "notify=", 7) == 0) {
			if (strstr(opt, "never"))
				r->notify |= SPOOL_NOTIFY_NEVER;
			if (strstr(opt, "success"))
				r->notify |= SPOOL_NOTIFY_SUCCESS;
			if (strstr(opt, "failure"))
				r->notify |= SPOOL_NOTIFY_FAILURE;
			if (strstr(opt, "delay"))
				r->notify |= SPOOL_NOTIFY_DELAY;
		} else if (strncmp(opt, "orcpt=", 6) == 0) {
			r->orcpt = opt + 6;
		}
	}
}

static void usage(void)
{
	fprintf(stderr, "usage: smtp_client_driver [options] --dest D --from S --to R --body F\n");
	exit(2);
}

int main(int argc, char **argv)
{
	struct smtp_client_dest dests[MAX_DESTS];
	struct smtp_client_rcpt rcpts[MAX_RCPTS];
	size_t n_dests = 0, n_rcpts = 0;
	const char *from = NULL, *body = NULL, *spool_dir = NULL;
	struct smtp_client_job job;
	struct smtp_client_opts opts;
	struct spool *sp = NULL;
	char qid[SPOOL_QID_SIZE] = "DRIVER";
	char err[256];
	int count = 1;
	long size;
	FILE *f;

	setvbuf(stdout, NULL, _IOLBF, 0);
	signal(SIGPIPE, SIG_IGN);
	memset(&job, 0, sizeof job);
	smtp_client_opts_init(&opts);
	opts.connect_ms = opts.command_ms = opts.data_ms = 5000;
	snprintf(opts.helo_name, sizeof opts.helo_name, "driver.test");
	job.nexthop = "driver";
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;

		if (strcmp(a, "--lmtp") == 0) {
			job.mode = SMTP_CLIENT_LMTP;
			continue;
		}
		if (strcmp(a, "--8bit") == 0) {
			job.body_type = SPOOL_BODY_8BITMIME;
			continue;
		}
		if (strcmp(a, "--utf8") == 0) {
			job.smtputf8 = true;
			continue;
		}
		if (v == NULL)
			usage();
		i++;
		if (strcmp(a, "--dest") == 0 && n_dests < MAX_DESTS) {
			if (parse_dest(v, &dests[n_dests++]) != 0)
				usage();
		} else if (strcmp(a, "--to") == 0 && n_rcpts < MAX_RCPTS) {
			parse_rcpt(argv[i], &rcpts[n_rcpts++]);
		} else if (strcmp(a, "--from") == 0) {
			from = v;
		} else if (strcmp(a, "--body") == 0) {
			body = v;
		} else if (strcmp(a, "--spool") == 0) {
			spool_dir = v;
		} else if (strcmp(a, "--count") == 0) {
			count = atoi(v);
		} else if (strcmp(a, "--conns") == 0) {
			opts.max_conns = (unsigned)atoi(v);
		} else if (strcmp(a, "--timeout") == 0) {
			opts.connect_ms = opts.command_ms = opts.data_ms = (unsigned)atoi(v);
		} else if (strcmp(a, "--ret") == 0) {
			job.dsn_ret = strcmp(v, "full") == 0 ? SPOOL_RET_FULL : SPOOL_RET_HDRS;
		} else if (strcmp(a, "--envid") == 0) {
			job.envid = v;
		} else if (strcmp(a, "--nexthop") == 0) {
			job.nexthop = v;
		} else {
			usage();
		}
	}
	if (from == NULL || body == NULL || n_dests == 0 || n_rcpts == 0)
		usage();
	f = fopen(body, "rb");
	if (f == NULL) {
		perror(body);
		return 1;
	}
	fseek(f, 0, SEEK_END);
	size = ftell(f);
	fseek(f, 0, SEEK_SET);
	if (spool_dir != NULL) {
		struct spool_msg *m;
		char buf[8192];
		size_t n;

		sp = spool_open(spool_dir, NULL, NULL, err, sizeof err);
		if (sp == NULL) {
			fprintf(stderr, "spool: %s\n", err);
			return 1;
		}
		m = spool_msg_new(sp, err, sizeof err);
		spool_msg_set_sender(m, from);
		for (size_t i = 0; i < n_rcpts; i++)
			spool_msg_add_rcpt(m, rcpts[i].addr, rcpts[i].notify, rcpts[i].orcpt);
		while ((n = fread(buf, 1, sizeof buf, f)) > 0)
			if (spool_msg_append(m, buf, n, err, sizeof err) != 0) {
				fprintf(stderr, "spool: %s\n", err);
				return 1;
			}
		if (spool_commit(sp, &m, qid, err, sizeof err) != 0) {
			fprintf(stderr, "spool: %s\n", err);
			return 1;
		}
		job.spool = sp;
	}

	struct event_base *base = event_base_new();
	struct smtp_client *c = smtp_client_new(base, &opts, NULL, err, sizeof err);
	struct file_body *fb = calloc((size_t)count, sizeof *fb);

	job.qid = qid;
	job.sender = from;
	job.size = (uint64_t)size;
	job.rcpts = rcpts;
	job.n_rcpts = n_rcpts;
	job.dests = dests;
	job.n_dests = n_dests;
	for (int i = 0; i < count; i++) {
		if (sp == NULL) {
			fb[i].f = fopen(body, "rb");
			job.read = file_read;
			job.read_arg = &fb[i];
		}
		if (smtp_client_submit(c, &job, done_cb, NULL, err, sizeof err) != 0) {
			fprintf(stderr, "submit: %s\n", err);
			return 1;
		}
		pending++;
	}
	while (pending > 0)
		event_base_loop(base, EVLOOP_ONCE);

	struct smtp_client_stats st;

	smtp_client_stats(c, &st);
	printf("{\"stats\":{\"connects\":%llu,\"reuses\":%llu,\"jobs\":%llu}}\n",
	       (unsigned long long)st.connects, (unsigned long long)st.reuses,
	       (unsigned long long)st.jobs);
	smtp_client_flush_idle(c);
	{
		struct timeval tv = { 0, 200000 };

		event_base_loopexit(base, &tv);
		event_base_dispatch(base);
	}
	smtp_client_free(&c);
	event_base_free(base);
	for (int i = 0; i < count; i++)
		if (fb[i].f != NULL)
			fclose(fb[i].f);
	free(fb);
	fclose(f);
	if (sp != NULL)
		spool_close(&sp);
	return 0;
}
