/*
 * Unit tests for the message tracking log: track.c (the writer) and
 * track_line.c (the line format and its strict parser).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include "test_util.h"

#include "evlog.h"
#include "track.h"
#include "track_line.h"

#define DAY_MS 86400000LL
/* 2026-11-24T13:02:11.250Z */
#define T0 1795525331250LL

struct fake_clock {
	int64_t ms;
};

static int64_t fake_now(void *arg)
{
	return ((struct fake_clock *)arg)->ms;
}

static char *make_dir(void)
{
	char tmpl[] = "/tmp/test-track-XXXXXX";
	char *d = mkdtemp(tmpl);

	assert_non_null(d);
	return strdup(d);
}

static void remove_dir(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	char path[4096];

	if (d == NULL)
		return;
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
		unlink(path);
	}
	closedir(d);
	rmdir(dir);
}

static void day_path(char *buf, size_t size, const char *dir, int64_t ms)
{
	char name[64];

	track_file_name(name, sizeof name, ms / DAY_MS);
	snprintf(buf, size, "%s/%s", dir, name);
}

/* Reads a day file and parses each line into recs (at most max). */
static size_t read_day(const char *dir, int64_t ms, struct track_rec *recs, size_t max)
{
	char path[4096], err[128];
	char *text, *line, *nl;
	size_t n = 0;

	day_path(path, sizeof path, dir, ms);
	text = test_read_file(path);
	if (text == NULL)
		return 0;
	for (line = text; (nl = strchr(line, '\n')) != NULL; line = nl + 1) {
		if (n >= max)
			fail_msg("more than %zu lines in %s", max, path);
		if (track_line_parse(line, (size_t)(nl - line), &recs[n], err, sizeof err) < 0)
			fail_msg("line %zu of %s does not parse (%s): %.*s", n + 1, path, err,
				 (int)(nl - line), line);
		n++;
	}
	assert_string_equal(line, "");   /* ends with a newline */
	free(text);
	return n;
}

static void clear_recs(struct track_rec *recs, size_t n)
{
	for (size_t i = 0; i < n; i++)
		track_line_clear(&recs[i]);
}

static bool file_exists(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0;
}

/* ---- writer --------------------------------------------------------------- */

static void test_every_record_type(void **state)
{
	struct fake_clock clk = { T0 };
	char *dir = make_dir(), err[256];
	struct track *t = track_new_with(dir, 30, NULL, &(struct track_params){ fake_now, &clk, 0 }, err, sizeof err);
	const char *rcpts[] = { "c@d.example", "e@f.example" };
	struct track_received rcv = {
		.qid = "Q1", .client = "127.0.0.1", .helo = "client.example",
		.tls = "TLSv1.3 TLS_AES_256_GCM_SHA384", .auth = "alice", .size = 4096,
		.msgid = "<m1@a.example>", .sender = "a@b.example", .rcpts = rcpts, .n_rcpts = 2,
	};
	struct track_rec r[16];
	static const char *const types[] = {
		"received", "queued", "routed", "attempt", "delivered", "deferred",
		"bounced", "expired", "held", "released", "deleted", "retry",
	};
	size_t n;

	(void)state;
	assert_non_null(t);
	track_received(t, &rcv);
	track_queued(t, "Q1", "smtp", "a@b.example", 2);
	track_routed(t, "Q1", "c@d.example", "d.example", "smtp:[127.0.0.1]:2526", 5);
	track_attempt(t, "Q1", rcpts, 2, "smtp:[127.0.0.1]:2526", "127.0.0.1:2526",
		      "451 4.3.0 try later");
	track_delivered(t, "Q1", "c@d.example", "smtp:[127.0.0.1]:2526", "250 2.0.0 Ok");
	track_deferred(t, "Q1", "e@f.example", "451 4.3.0 try later", (time_t)(T0 / 1000 + 300));
	track_bounced(t, "Q1", "e@f.example", "550 5.1.1 no such user", "Q2");
	track_expired(t, "Q1", "e@f.example", "451 4.3.0 try later");
	track_held(t, "Q1", 0);
	track_released(t, "Q1", 1000);
	track_deleted(t, "Q1", 1001);
	track_retry(t, "Q1", 1002);
	track_flush(t);
	assert_int_equal(track_written(t), 12);
	assert_int_equal(track_lost(t), 0);

	n = read_day(dir, T0, r, 16);
	assert_int_equal(n, 12);
	for (size_t i = 0; i < n; i++) {
		assert_string_equal(track_rec_str(&r[i], "type"), types[i]);
		assert_string_equal(track_rec_str(&r[i], "qid"), "Q1");
		assert_string_equal(track_rec_str(&r[i], "ts"), "2026-11-24T13:02:11.250Z");
	}
	assert_string_equal(track_rec_str(&r[0], "client"), "127.0.0.1");
	assert_string_equal(track_rec_str(&r[0], "helo"), "client.example");
	assert_string_equal(track_rec_str(&r[0], "tls"), "TLSv1.3 TLS_AES_256_GCM_SHA384");
	assert_string_equal(track_rec_str(&r[0], "auth"), "alice");
	assert_int_equal(track_rec_int(&r[0], "size", -1), 4096);
	assert_string_equal(track_rec_str(&r[0], "msgid"), "<m1@a.example>");
	assert_string_equal(track_rec_str(&r[0], "from"), "a@b.example");
	assert_int_equal(track_rec_int(&r[0], "nrcpts", -1), 2);
	{
		const struct track_field *f = track_rec_get(&r[0], "rcpts");

		assert_non_null(f);
		assert_int_equal(f->type, TRACK_V_ARRAY);
		assert_int_equal(f->n, 2);
		assert_string_equal(r[0].items[f->first + 1], "e@f.example");
	}
	assert_string_equal(track_rec_str(&r[1], "origin"), "smtp");
	assert_string_equal(track_rec_str(&r[2], "space"), "d.example");
	assert_int_equal(track_rec_int(&r[2], "cost", -1), 5);
	assert_string_equal(track_rec_str(&r[3], "addr"), "127.0.0.1:2526");
	assert_string_equal(track_rec_str(&r[3], "reply"), "451 4.3.0 try later");
	assert_string_equal(track_rec_str(&r[4], "reply"), "250 2.0.0 Ok");
	assert_string_equal(track_rec_str(&r[5], "next"), "2026-11-24T13:07:11.000Z");
	assert_string_equal(track_rec_str(&r[6], "bounce_qid"), "Q2");
	assert_string_equal(track_rec_str(&r[7], "reason"), "451 4.3.0 try later");
	assert_int_equal(track_rec_int(&r[8], "uid", -1), 0);
	assert_int_equal(track_rec_int(&r[11], "uid", -1), 1002);
	clear_recs(r, n);

	track_free(&t);
	assert_null(t);
	remove_dir(dir);
	free(dir);
}

static void test_null_handle_and_missing_values(void **state)
{
	struct fake_clock clk = { T0 };
	char *dir = make_dir(), err[256];
	struct track *t = NULL;
	struct track_received rcv = { 0 };
	struct track_rec r[4];

	(void)state;
	/* A NULL handle is tracking switched off: nothing happens. */
	track_received(NULL, &rcv);
	track_delivered(NULL, "Q", "r", "h", "250");
	track_reopen(NULL);
	track_flush(NULL);
	track_free(&t);

	t = track_new_with(dir, 0, NULL, &(struct track_params){ fake_now, &clk, 0 }, err, sizeof err);
	assert_non_null(t);
	track_received(t, &rcv);                        /* every field NULL */
	track_bounced(t, NULL, NULL, NULL, NULL);
	track_flush(t);
	assert_int_equal(read_day(dir, T0, r, 4), 2);
	assert_string_equal(track_rec_str(&r[0], "qid"), "");
	assert_string_equal(track_rec_str(&r[0], "tls"), "none");
	assert_null(track_rec_get(&r[0], "auth"));
	assert_null(track_rec_get(&r[1], "bounce_qid"));
	clear_recs(r, 2);
	track_free(&t);
	remove_dir(dir);
	free(dir);
}

static void test_day_rollover(void **state)
{
	/* 2026-11-24T23:59:59.900Z */
	struct fake_clock clk = { (T0 / DAY_MS + 1) * DAY_MS - 100 };
	int64_t before = clk.ms;
	char *dir = make_dir(), err[256];
	struct track *t = track_new_with(dir, 30, NULL, &(struct track_params){ fake_now, &clk, 0 }, err, sizeof err);
	struct track_rec r[4];

	(void)state;
	assert_non_null(t);
	track_queued(t, "QA", "smtp", "a@b", 1);
	track_flush(t);
	clk.ms += 200;                                  /* 00:00:00.100 next day */
	track_delivered(t, "QA", "c@d", "maildir", "ok");
	track_flush(t);

	assert_int_equal(read_day(dir, before, r, 4), 1);
	assert_string_equal(track_rec_str(&r[0], "type"), "queued");
	assert_string_equal(track_rec_str(&r[0], "ts"), "2026-11-24T23:59:59.900Z");
	clear_recs(r, 1);
	assert_int_equal(read_day(dir, clk.ms, r, 4), 1);
	assert_string_equal(track_rec_str(&r[0], "type"), "delivered");
	assert_string_equal(track_rec_str(&r[0], "ts"), "2026-11-25T00:00:00.100Z");
	clear_recs(r, 1);
	track_free(&t);
	remove_dir(dir);
	free(dir);
}

static void touch(const char *dir, const char *name)
{
	char path[4096];
	int fd;

	snprintf(path, sizeof path, "%s/%s", dir, name);
	fd = open(path, O_WRONLY | O_CREAT, 0640);
	assert_true(fd >= 0);
	close(fd);
}

static void touch_day(const char *dir, int64_t day)
{
	char name[64];

	track_file_name(name, sizeof name, day);
	touch(dir, name);
}

static bool day_exists(const char *dir, int64_t day)
{
	char path[4096];

	day_path(path, sizeof path, dir, day * DAY_MS);
	return file_exists(path);
}

static void test_retention(void **state)
{
	struct fake_clock clk = { T0 };
	int64_t today = T0 / DAY_MS;
	char *dir = make_dir(), err[256], path[4096];
	struct evlog *log = evlog_new("test");
	struct track *t;

	(void)state;
	touch_day(dir, today - 40);
	touch_day(dir, today - 31);
	touch_day(dir, today - 30);
	touch_day(dir, today - 29);
	touch_day(dir, today - 1);
	touch(dir, "notes.txt");
	touch(dir, "track-2026-02-31.jsonl");          /* not a real day: kept */
	t = track_new_with(dir, 30, log, &(struct track_params){ fake_now, &clk, 0 }, err, sizeof err);
	assert_non_null(t);
	assert_false(day_exists(dir, today - 40));
	assert_false(day_exists(dir, today - 31));
	assert_true(day_exists(dir, today - 30));
	assert_true(day_exists(dir, today - 29));
	assert_true(day_exists(dir, today - 1));
	assert_true(day_exists(dir, today));            /* opened at start */
	snprintf(path, sizeof path, "%s/notes.txt", dir);
	assert_true(file_exists(path));
	snprintf(path, sizeof path, "%s/track-2026-02-31.jsonl", dir);
	assert_true(file_exists(path));
	assert_int_equal(evlog_count(log, EV_TRACK_PRUNED), 2);

	/* At the day change the next oldest goes. */
	clk.ms += DAY_MS;
	track_queued(t, "Q", "smtp", "", 1);
	track_flush(t);
	assert_false(day_exists(dir, today - 30));
	assert_true(day_exists(dir, today - 29));
	assert_true(day_exists(dir, today + 1));
	assert_int_equal(evlog_count(log, EV_TRACK_PRUNED), 3);
	track_free(&t);

	/* Retention 0 keeps everything. */
	touch_day(dir, today - 400);
	t = track_new_with(dir, 0, log, &(struct track_params){ fake_now, &clk, 0 }, err, sizeof err);
	assert_non_null(t);
	assert_true(day_exists(dir, today - 400));
	track_free(&t);
	evlog_free(&log);
	remove_dir(dir);
	free(dir);
}

static void test_hostile_helo_stays_one_line(void **state)
{
	struct fake_clock clk = { T0 };
	char *dir = make_dir(), err[256], path[4096];
	struct track *t = track_new_with(dir, 30, NULL, &(struct track_params){ fake_now, &clk, 0 }, err, sizeof err);
	/* Every control character but NUL, quotes, backslashes, DEL, UTF-8. */
	char helo[64], *text;
	const char *hostile_rcpt[] = { "x\"}\n{\"type\":\"delivered\"@evil" };
	struct track_received rcv = {
		.qid = "QH", .client = "192.0.2.1", .helo = helo, .sender = "a\r\nb@c",
		.msgid = "<\x1b[2J@x>", .rcpts = hostile_rcpt, .n_rcpts = 1,
	};
	struct track_rec r[2];
	size_t k = 0, lines = 0;

	(void)state;
	assert_non_null(t);
	for (int c = 1; c < 0x20; c++)
		helo[k++] = (char)c;
	memcpy(helo + k, "\"q\\\x7f\xc3\xa9", 7);
	k += 7;
	helo[k] = '\0';
	track_received(t, &rcv);
	track_flush(t);

	day_path(path, sizeof path, dir, T0);
	text = test_read_file(path);
	assert_non_null(text);
	for (const char *p = text; *p; p++) {
		lines += *p == '\n';
		if (*p != '\n')
			assert_true((unsigned char)*p >= 0x20 && *p != 0x7f);
	}
	assert_int_equal(lines, 1);
	free(text);

	assert_int_equal(read_day(dir, T0, r, 2), 1);
	assert_string_equal(track_rec_str(&r[0], "helo"), helo);
	assert_string_equal(track_rec_str(&r[0], "from"), "a\r\nb@c");
	assert_string_equal(track_rec_str(&r[0], "msgid"), "<\x1b[2J@x>");
	assert_string_equal(track_rec_str(&r[0], "type"), "received");
	assert_string_equal(r[0].items[track_rec_get(&r[0], "rcpts")->first], hostile_rcpt[0]);
	clear_recs(r, 1);
	track_free(&t);
	remove_dir(dir);
	free(dir);
}

static void test_invalid_utf8_replaced(void **state)
{
	char buf[64];

	(void)state;
	track_line_escape(buf, sizeof buf, "a\xff" "b\xc3");
	assert_string_equal(buf, "a\\ufffdb\\ufffd");
	track_line_escape(buf, sizeof buf, "\xed\xa0\x80");        /* a surrogate */
	assert_string_equal(buf, "\\ufffd\\ufffd\\ufffd");
	track_line_escape(buf, sizeof buf, "\xf0\x9f\x93\xa7 ok");
	assert_string_equal(buf, "\xf0\x9f\x93\xa7 ok");
}

static void test_many_recipients_fit_one_line(void **state)
{
	struct fake_clock clk = { T0 };
	char *dir = make_dir(), err[256];
	struct track *t = track_new_with(dir, 30, NULL, &(struct track_params){ fake_now, &clk, 0 }, err, sizeof err);
	enum { N = 3000 };
	char (*addrs)[96] = calloc(N, sizeof *addrs);
	const char **rcpts = calloc(N, sizeof *rcpts);
	struct track_received rcv = { .qid = "QM", .sender = "a@b" };
	struct track_rec r[2];
	const struct track_field *f;

	(void)state;
	assert_non_null(t);
	for (int i = 0; i < N; i++) {
		snprintf(addrs[i], sizeof addrs[i], "recipient-number-%05d@a-rather-long-domain.example", i);
		rcpts[i] = addrs[i];
	}
	rcv.rcpts = rcpts;
	rcv.n_rcpts = N;
	track_received(t, &rcv);
	track_attempt(t, "QM", rcpts, N, "mx", "", "connect: refused");
	track_flush(t);
	assert_int_equal(read_day(dir, T0, r, 2), 2);
	for (int i = 0; i < 2; i++) {
		assert_int_equal(track_rec_int(&r[i], "nrcpts", -1), N);
		f = track_rec_get(&r[i], "rcpts");
		assert_non_null(f);
		assert_true(f->n > 100 && f->n < N);
		assert_string_equal(r[i].items[f->first], addrs[0]);
	}
	assert_string_equal(track_rec_str(&r[1], "reply"), "connect: refused");
	clear_recs(r, 2);
	track_free(&t);
	free(addrs);
	free(rcpts);
	remove_dir(dir);
	free(dir);
}

static void test_write_error_is_an_event(void **state)
{
	struct fake_clock clk = { T0 };
	char *dir = make_dir(), err[256], path[4096];
	struct evlog *log = evlog_new("test");
	struct track *t = track_new_with(dir, 30, log, &(struct track_params){ fake_now, &clk, 0 }, err, sizeof err);
	struct track_rec r[4];

	(void)state;
	assert_non_null(t);
	/* The directory disappears under the daemon: the next day's file
	 * cannot be created. */
	remove_dir(dir);
	clk.ms += DAY_MS;
	for (int i = 0; i < 5; i++) {
		track_delivered(t, "QE", "c@d", "mx", "250 ok");
		track_flush(t);
	}
	assert_int_equal(evlog_count(log, EV_TRACK_WRITE_FAILED), 1);
	assert_int_equal(track_lost(t), 5);
	assert_int_equal(evlog_count(log, EV_TRACK_WRITE_RECOVERED), 0);

	/* It comes back: writing resumes with one recovery event. */
	assert_int_equal(mkdir(dir, 0750), 0);
	track_delivered(t, "QE", "c@d", "mx", "250 ok");
	track_flush(t);
	assert_int_equal(evlog_count(log, EV_TRACK_WRITE_RECOVERED), 1);
	assert_int_equal(track_written(t), 1);
	assert_int_equal(read_day(dir, clk.ms, r, 4), 1);
	clear_recs(r, 1);

	/* Rotation: the file is renamed away, reopen makes a new one. */
	day_path(path, sizeof path, dir, clk.ms);
	{
		char moved[4200];

		snprintf(moved, sizeof moved, "%s.1", path);
		assert_int_equal(rename(path, moved), 0);
		track_reopen(t);
		track_queued(t, "QR", "smtp", "", 1);
		track_flush(t);
		assert_int_equal(read_day(dir, clk.ms, r, 4), 1);
		assert_string_equal(track_rec_str(&r[0], "qid"), "QR");
		clear_recs(r, 1);
		unlink(moved);
	}
	track_free(&t);
	evlog_free(&log);
	remove_dir(dir);
	free(dir);
}

static void test_unusable_directory(void **state)
{
	char err[256], path[4096];
	char *dir = make_dir();
	struct track *t;

	(void)state;
	snprintf(path, sizeof path, "%s/no/such/parent", dir);
	t = track_new(path, 30, NULL, err, sizeof err);
	assert_null(t);
	assert_contains(err, "No such file or directory");

	touch(dir, "plainfile");
	snprintf(path, sizeof path, "%s/plainfile", dir);
	t = track_new(path, 30, NULL, err, sizeof err);
	assert_null(t);
	assert_contains(err, "plainfile");

	/* A missing last component is created. */
	snprintf(path, sizeof path, "%s/track", dir);
	t = track_new(path, 30, NULL, err, sizeof err);
	assert_non_null(t);
	track_free(&t);
	remove_dir(path);
	remove_dir(dir);
	free(dir);
}

static void test_file_names(void **state)
{
	char name[64];

	(void)state;
	track_file_name(name, sizeof name, T0 / DAY_MS);
	assert_string_equal(name, "track-2026-11-24.jsonl");
	assert_int_equal(track_file_day(name), T0 / DAY_MS);
	assert_int_equal(track_file_day("track-1970-01-01.jsonl"), 0);
	assert_int_equal(track_file_day("track-2026-02-31.jsonl"), -1);
	assert_int_equal(track_file_day("track-2026-11-24.jsonl.1"), -1);
	assert_int_equal(track_file_day("track-2026-1-24.jsonl"), -1);
	assert_int_equal(track_file_day("track-2026-11-24.json"), -1);
	assert_int_equal(track_file_day("x"), -1);
}

static void test_queue_full_drops_and_reports_once(void **state)
{
	struct fake_clock clk = { T0 };
	char *dir = make_dir(), err[256];
	struct evlog *log = evlog_new("test");
	/* A queue smaller than any record: every record is dropped, as when
	 * the disk stalls the writer and the queue fills. */
	struct track *t = track_new_with(dir, 30, log, &(struct track_params){ fake_now, &clk, 16 },
					 err, sizeof err);

	(void)state;
	assert_non_null(t);
	for (int i = 0; i < 10; i++)
		track_queued(t, "QQ", "smtp", "a@b", 1);
	track_flush(t);
	assert_int_equal(track_lost(t), 10);
	assert_int_equal(track_written(t), 0);
	assert_int_equal(evlog_count(log, EV_TRACK_QUEUE_FULL), 1);
	track_free(&t);
	evlog_free(&log);
	remove_dir(dir);
	free(dir);
}

struct writer_arg {
	struct track *t;
	int id;
};

static void *write_many(void *arg)
{
	struct writer_arg *w = arg;
	char qid[32], rcpt[64];

	for (int i = 0; i < 2000; i++) {
		snprintf(qid, sizeof qid, "T%d-%d", w->id, i);
		snprintf(rcpt, sizeof rcpt, "r%d@example.org", i);
		track_delivered(w->t, qid, rcpt, "smtp:[192.0.2.1]:25", "250 2.0.0 Ok");
	}
	return NULL;
}

/* Loop, spool and delivery threads record at once: every line is whole. */
static void test_concurrent_writers(void **state)
{
	struct fake_clock clk = { T0 };
	char *dir = make_dir(), err[256], path[4096], *text;
	struct track *t = track_new_with(dir, 30, NULL, &(struct track_params){ fake_now, &clk, 0 }, err, sizeof err);
	pthread_t th[4];
	struct writer_arg args[4];
	size_t lines = 0;

	(void)state;
	assert_non_null(t);
	for (int i = 0; i < 4; i++) {
		args[i] = (struct writer_arg){ t, i };
		assert_int_equal(pthread_create(&th[i], NULL, write_many, &args[i]), 0);
	}
	for (int i = 0; i < 4; i++)
		pthread_join(th[i], NULL);
	track_free(&t);         /* flushes */

	day_path(path, sizeof path, dir, T0);
	text = test_read_file(path);
	assert_non_null(text);
	for (char *line = text, *nl; (nl = strchr(line, '\n')) != NULL; line = nl + 1) {
		struct track_rec rec;

		if (track_line_parse(line, (size_t)(nl - line), &rec, err, sizeof err) < 0)
			fail_msg("line %zu does not parse: %s", lines + 1, err);
		assert_string_equal(track_rec_str(&rec, "type"), "delivered");
		track_line_clear(&rec);
		lines++;
	}
	assert_int_equal(lines, 8000);
	free(text);
	remove_dir(dir);
	free(dir);
}

static void test_fifo_does_not_hang(void **state)
{
	struct fake_clock clk = { T0 };
	char *dir = make_dir(), err[256], path[4096];
	struct evlog *log = evlog_new("test");
	struct track *t;

	(void)state;
	day_path(path, sizeof path, dir, T0);
	assert_int_equal(mkfifo(path, 0600), 0);
	t = track_new_with(dir, 30, log, &(struct track_params){ fake_now, &clk, 0 }, err, sizeof err);
	assert_null(t);
	assert_contains(err, "track-2026-11-24.jsonl");   /* ENXIO: no reader */
	unlink(path);

	/* Same when it appears later, at the day change. */
	t = track_new_with(dir, 30, log, &(struct track_params){ fake_now, &clk, 0 }, err, sizeof err);
	assert_non_null(t);
	day_path(path, sizeof path, dir, T0 + DAY_MS);
	assert_int_equal(mkfifo(path, 0600), 0);
	clk.ms += DAY_MS;
	track_queued(t, "QF", "smtp", "", 1);
	track_flush(t);
	assert_int_equal(evlog_count(log, EV_TRACK_WRITE_FAILED), 1);
	assert_int_equal(track_lost(t), 1);
	track_free(&t);
	evlog_free(&log);
	remove_dir(dir);
	free(dir);
}

/* ---- parser ------------------------------------------------------------ */

struct parse_case {
	const char *name;
	const char *line;
	int want;                       /* 0 ok, -1 error */
	const char *why;                /* part of the error */
};

static const struct parse_case parse_cases[] = {
	{ "empty object", "{}", 0, NULL },
	{ "spaces", " { \"a\" : \"b\" , \"n\" : -12 } ", 0, NULL },
	{ "array", "{\"r\":[\"x\",\"y\"],\"e\":[]}", 0, NULL },
	{ "escapes", "{\"a\":\"\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\ud83d\\udce7\"}", 0, NULL },
	{ "int64 min", "{\"n\":-9223372036854775808}", 0, NULL },
	{ "empty line", "", -1, "not a JSON object" },
	{ "array top", "[]", -1, "not a JSON object" },
	{ "unterminated", "{\"a\":\"b", -1, "unterminated" },
	{ "no close", "{\"a\":\"b\"", -1, "expected ',' or '}'" },
	{ "trailing", "{\"a\":\"b\"}x", -1, "trailing" },
	{ "two objects", "{}{}", -1, "trailing" },
	{ "duplicate key", "{\"a\":1,\"a\":2}", -1, "duplicate" },
	{ "empty key", "{\"\":1}", -1, "empty key" },
	{ "nested object", "{\"a\":{}}", -1, "expected a value" },
	{ "nested array", "{\"a\":[[]]}", -1, "expected a string" },
	{ "number in array", "{\"a\":[1]}", -1, "expected a string" },
	{ "float", "{\"a\":1.5}", -1, "expected ','" },
	{ "exponent", "{\"a\":1e5}", -1, "expected ','" },
	{ "leading zero", "{\"a\":01}", -1, "leading zero" },
	{ "overflow", "{\"a\":9223372036854775808}", -1, "out of range" },
	{ "true", "{\"a\":true}", -1, "expected a value" },
	{ "null", "{\"a\":null}", -1, "expected a value" },
	{ "raw newline", "{\"a\":\"x\ny\"}", -1, "control character" },
	{ "raw tab", "{\"a\":\"x\ty\"}", -1, "control character" },
	{ "u0000", "{\"a\":\"\\u0000\"}", -1, "\\u0000" },
	{ "bad escape", "{\"a\":\"\\x\"}", -1, "bad escape" },
	{ "short u", "{\"a\":\"\\u12\"}", -1, "bad \\u escape" },
	{ "lone high", "{\"a\":\"\\ud800x\"}", -1, "lone high" },
	{ "lone low", "{\"a\":\"\\udc00\"}", -1, "lone low" },
	{ "bad utf8", "{\"a\":\"\xff\"}", -1, "invalid UTF-8" },
	{ "overlong utf8", "{\"a\":\"\xc0\xaf\"}", -1, "invalid UTF-8" },
	{ "trailing comma", "{\"a\":1,}", -1, "expected a string" },
	{ "missing colon", "{\"a\" 1}", -1, "expected ':'" },
	{ "carriage return", "{}\r", -1, "trailing" },
};

static void test_parse_table(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof parse_cases / sizeof parse_cases[0]; i++) {
		const struct parse_case *c = &parse_cases[i];
		struct track_rec rec;
		char err[128] = "";
		int got = track_line_parse(c->line, strlen(c->line), &rec, err, sizeof err);

		if (got != c->want)
			fail_msg("%s: got %d (%s), want %d", c->name, got, err, c->want);
		if (c->why != NULL && strstr(err, c->why) == NULL)
			fail_msg("%s: got error \"%s\", want it to contain \"%s\"", c->name, err, c->why);
		track_line_clear(&rec);
	}
}

static void test_parse_values(void **state)
{
	const char *line = "{\"a\":\"\\u00e9\\ud83d\\udce7\\/\",\"n\":-9223372036854775808,"
			   "\"r\":[\"x\",\"\"],\"z\":0}";
	struct track_rec rec;
	char err[128], out[256];
	const struct track_field *f;

	(void)state;
	assert_int_equal(track_line_parse(line, strlen(line), &rec, err, sizeof err), 0);
	assert_string_equal(track_rec_str(&rec, "a"), "\xc3\xa9\xf0\x9f\x93\xa7/");
	assert_true(track_rec_int(&rec, "n", 0) == INT64_MIN);
	assert_int_equal(track_rec_int(&rec, "z", 7), 0);
	assert_int_equal(track_rec_int(&rec, "a", 7), 7);   /* wrong type */
	assert_null(track_rec_str(&rec, "missing"));
	f = track_rec_get(&rec, "r");
	assert_int_equal(f->n, 2);
	assert_string_equal(rec.items[f->first + 1], "");
	assert_true(track_line_format(&rec, out, sizeof out) > 0);
	assert_string_equal(out, "{\"a\":\"\xc3\xa9\xf0\x9f\x93\xa7/\",\"n\":-9223372036854775808,"
			    "\"r\":[\"x\",\"\"],\"z\":0}\n");
	track_line_clear(&rec);

	/* An embedded NUL is a control character, not the end. */
	assert_int_equal(track_line_parse("{\"a\":\"\0\"}", 9, &rec, err, sizeof err), -1);
	track_line_clear(&rec);
}

static void test_time_format(void **state)
{
	char buf[40];
	int64_t ms;

	(void)state;
	track_line_time(buf, sizeof buf, T0);
	assert_string_equal(buf, "2026-11-24T13:02:11.250Z");
	assert_int_equal(track_line_time_parse(buf, &ms), 0);
	assert_true(ms == T0);
	assert_int_equal(track_line_time_parse("2026-11-24T13:02:11Z", &ms), 0);
	assert_true(ms == T0 - 250);
	assert_int_equal(track_line_time_parse("2026-11-24T13:02:11", &ms), -1);
	assert_int_equal(track_line_time_parse("2026-13-24T13:02:11Z", &ms), -1);
	assert_int_equal(track_line_time_parse("2026-11-24T13:02:11.1Z", &ms), -1);
	assert_int_equal(track_line_time_parse("", &ms), -1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_every_record_type),
		cmocka_unit_test(test_null_handle_and_missing_values),
		cmocka_unit_test(test_day_rollover),
		cmocka_unit_test(test_retention),
		cmocka_unit_test(test_hostile_helo_stays_one_line),
		cmocka_unit_test(test_invalid_utf8_replaced),
		cmocka_unit_test(test_many_recipients_fit_one_line),
		cmocka_unit_test(test_write_error_is_an_event),
		cmocka_unit_test(test_unusable_directory),
		cmocka_unit_test(test_concurrent_writers),
		cmocka_unit_test(test_queue_full_drops_and_reports_once),
		cmocka_unit_test(test_fifo_does_not_hang),
		cmocka_unit_test(test_file_names),
		cmocka_unit_test(test_parse_table),
		cmocka_unit_test(test_parse_values),
		cmocka_unit_test(test_time_format),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
