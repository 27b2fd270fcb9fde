/*
 * Unit tests for the spool: records, round trips, spilled bodies, format
 * version, group commit from a libevent loop, abort, quarantine, reopen,
 * free-space check and queue IDs.  Each test uses its own mkdtemp spool.
 */
#include <dirent.h>
#include <errno.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <fcntl.h>
#include <ftw.h>
#include <grp.h>
#include <lmdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "test_util.h"

#include "evlog.h"
#include "spool.h"
#include "spool_record.h"

/*
 * MDB_PANIC in-process, with no hook in the spool: LMDB (a shared library)
 * calls pwrite() through the PLT, so this definition interposes it.  While
 * meta_failures > 0, each pwrite() to an O_DSYNC descriptor (LMDB's
 * meta-page write, the one the e2e fault shim fails) fails with EIO without
 * writing and counts it down; LMDB then flags the environment fatal and
 * every later txn begins with MDB_PANIC.  Everything else is passed on.
 * Test-only state; the spool itself has no global.
 */
static atomic_int meta_failures;

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off)
{
	int left = atomic_load(&meta_failures);

	if (left > 0 && (fcntl(fd, F_GETFL) & O_DSYNC) == O_DSYNC &&
	    atomic_compare_exchange_strong(&meta_failures, &left, left - 1)) {
		errno = EIO;
		return -1;
	}
	return (ssize_t)syscall(SYS_pwrite64, fd, buf, n, off);
}

static int setup(void **state)
{
	*state = test_dir_new("spool", "spool");
	return 0;
}

static int teardown(void **state)
{
	test_dir_free(*state);
	return 0;
}

static struct spool *open_spool(const char *path, size_t inline_max)
{
	struct spool_opts o;
	char err[512] = "";
	struct spool *sp;

	spool_opts_init(&o);
	o.space_margin = 0;
	if (inline_max)
		o.inline_max = inline_max;
	sp = spool_open(path, &o, NULL, err, sizeof err);
	if (sp == NULL)
		fail_msg("spool_open %s: %s", path, err);
	return sp;
}

/* A message with `n_rcpts` recipients and a body of `size` pattern bytes. */
static struct spool_msg *make_msg(struct spool *sp, size_t n_rcpts, size_t size)
{
	char err[256], addr[64];
	struct spool_msg *m = spool_msg_new(sp, err, sizeof err);
	uint8_t chunk[4096];

	assert_non_null(m);
	assert_int_equal(spool_msg_set_sender(m, "alice@example.org"), 0);
	for (size_t i = 0; i < n_rcpts; i++) {
		snprintf(addr, sizeof addr, "rcpt%zu@example.net", i);
		assert_int_equal(spool_msg_add_rcpt(m, addr, 0, NULL), 0);
	}
	for (size_t off = 0; off < size;) {
		size_t n = size - off < sizeof chunk ? size - off : sizeof chunk;

		for (size_t i = 0; i < n; i++)
			chunk[i] = (uint8_t)((off + i) * 7 + 3);
		assert_int_equal(spool_msg_append(m, chunk, n, err, sizeof err), 0);
		off += n;
	}
	return m;
}

static void check_body(struct spool *sp, const char *qid, size_t size, bool in_file)
{
	struct spool_body *b = NULL;
	char err[512] = "";
	uint8_t buf[3000];
	size_t off = 0, memlen;
	ssize_t r;

	assert_int_equal(spool_body_open(sp, qid, &b, err, sizeof err), 0);
	assert_int_equal(spool_body_size(b), size);
	if (in_file) {
		assert_true(spool_body_fd(b) >= 0);
		assert_null(spool_body_mem(b, &memlen));
	} else {
		assert_int_equal(spool_body_fd(b), -1);
		assert_non_null(spool_body_mem(b, &memlen));
		assert_int_equal(memlen, size);
	}
	while ((r = spool_body_read(b, buf, sizeof buf)) > 0) {
		for (ssize_t i = 0; i < r; i++)
			if (buf[i] != (uint8_t)((off + (size_t)i) * 7 + 3))
				fail_msg("body byte %zu: got %u want %u", off + (size_t)i,
					 buf[i], (uint8_t)((off + (size_t)i) * 7 + 3));
		off += (size_t)r;
	}
	assert_int_equal(r, 0);
	assert_int_equal(off, size);
	spool_body_close(&b);
	assert_null(b);
}

/* ---- records ---------------------------------------------------------- */

static void test_record_crc(void **state)
{
	assert_int_equal(spool_record_crc32(0, "123456789", 9), 0xCBF43926u);
	assert_int_equal(spool_record_crc32(spool_record_crc32(0, "1234", 4), "56789", 5),
			 0xCBF43926u);
}

static void test_record_damage_detected(void **state)
{
	struct spool_rcpt r = { .addr = "bob@example.net", .notify = SPOOL_NOTIFY_FAILURE };
	struct spool_envelope env = {
		.qid = "0123456789ABCDEF", .sender = "", .rcpts = &r, .n_rcpts = 1,
		.client_addr = "192.0.2.1", .client_helo = "client.example",
	};
	struct spool_envelope *got = NULL;
	uint8_t *rec;
	size_t len;
	char err[256];

	assert_int_equal(spool_record_encode_envelope(&env, &rec, &len), 0);
	assert_int_equal(spool_record_decode_envelope(rec, len, &got, err, sizeof err), 0);
	assert_string_equal(got->sender, "");
	assert_string_equal(got->rcpts[0].addr, "bob@example.net");
	spool_envelope_free(&got);
	/* every truncation and every single-bit flip is refused */
	for (size_t n = 0; n < len; n++) {
		if (spool_record_decode_envelope(rec, n, &got, err, sizeof err) == 0)
			fail_msg("truncated to %zu of %zu bytes: accepted", n, len);
	}
	for (size_t i = 0; i < len; i++) {
		for (int bit = 0; bit < 8; bit++) {
			rec[i] ^= (uint8_t)(1u << bit);
			if (spool_record_decode_envelope(rec, len, &got, err, sizeof err) == 0)
				fail_msg("bit %d of byte %zu flipped: accepted", bit, i);
			rec[i] ^= (uint8_t)(1u << bit);
		}
	}
	free(rec);
}

/* ---- messages --------------------------------------------------------- */

static void test_round_trip(void **state)
{
	struct test_dir *f = *state;
	struct spool *sp = open_spool(f->path, 0);
	struct spool_envelope *env = NULL;
	char err[256] = "", qid[SPOOL_QID_SIZE];
	struct spool_msg *m = spool_msg_new(sp, err, sizeof err);
	const char body[] = "Received: from x\r\nSubject: hi\r\n\r\nhello\r\n";

	assert_int_equal(spool_msg_set_sender(m, "alice@example.org"), 0);
	assert_int_equal(spool_msg_set_dsn(m, SPOOL_RET_HDRS, "env-42"), 0);
	spool_msg_set_body_type(m, SPOOL_BODY_8BITMIME);
	spool_msg_set_smtputf8(m, true);
	assert_int_equal(spool_msg_set_client(m, "2001:db8::1", "mx.example.org"), 0);
	spool_msg_set_arrival(m, 1700000000);
	assert_int_equal(spool_msg_add_rcpt(m, "bob@example.net",
					    SPOOL_NOTIFY_SUCCESS | SPOOL_NOTIFY_FAILURE,
					    "rfc822;bob@example.net"), 0);
	assert_int_equal(spool_msg_add_rcpt(m, "carol@example.net", SPOOL_NOTIFY_NEVER, NULL), 0);
	assert_int_equal(spool_msg_add_rcpt(m, "dave@example.net", 0, "utf-8;dave@example.net"), 0);
	assert_int_equal(spool_msg_append(m, body, sizeof body - 1, err, sizeof err), 0);
	assert_int_equal(spool_commit(sp, &m, qid, err, sizeof err), 0);
	assert_null(m);

	assert_int_equal(spool_load(sp, qid, &env, err, sizeof err), 0);
	assert_string_equal(env->qid, qid);
	assert_string_equal(env->sender, "alice@example.org");
	assert_int_equal(env->dsn_ret, SPOOL_RET_HDRS);
	assert_string_equal(env->envid, "env-42");
	assert_int_equal(env->body_type, SPOOL_BODY_8BITMIME);
	assert_true(env->smtputf8);
	assert_string_equal(env->client_addr, "2001:db8::1");
	assert_string_equal(env->client_helo, "mx.example.org");
	assert_int_equal(env->arrival, 1700000000);
	assert_int_equal(env->size, sizeof body - 1);
	assert_false(env->body_in_file);
	assert_int_equal(env->n_rcpts, 3);
	assert_string_equal(env->rcpts[0].addr, "bob@example.net");
	assert_int_equal(env->rcpts[0].notify, SPOOL_NOTIFY_SUCCESS | SPOOL_NOTIFY_FAILURE);
	assert_string_equal(env->rcpts[0].orcpt, "rfc822;bob@example.net");
	assert_int_equal(env->rcpts[1].notify, SPOOL_NOTIFY_NEVER);
	assert_null(env->rcpts[1].orcpt);
	assert_string_equal(env->rcpts[2].orcpt, "utf-8;dave@example.net");
	for (size_t i = 0; i < 3; i++) {
		assert_int_equal(env->rcpts[i].state, SPOOL_RCPT_QUEUED);
		assert_int_equal(env->rcpts[i].attempts, 0);
		assert_null(env->rcpts[i].last_reply);
	}
	spool_envelope_free(&env);

	struct spool_body *b = NULL;
	size_t len;
	assert_int_equal(spool_body_open(sp, qid, &b, err, sizeof err), 0);
	assert_memory_equal(spool_body_mem(b, &len), body, sizeof body - 1);
	spool_body_close(&b);
	assert_int_equal(spool_load(sp, "0000000000000000", &env, err, sizeof err), 1);
	spool_close(&sp);
	assert_null(sp);
}

static void test_large_body_spills(void **state)
{
	struct test_dir *f = *state;
	struct spool *sp = open_spool(f->path, 0);   /* default inline_max 256 KiB */
	size_t size = 3 * 1024 * 1024 + 17;
	struct spool_msg *m = make_msg(sp, 1, size);
	char err[256] = "", qid[SPOOL_QID_SIZE], p[256];
	struct stat st;

	snprintf(p, sizeof p, "%s/body/%s.tmp", f->path, spool_msg_qid(m));
	assert_int_equal(stat(p, &st), 0);   /* spilled while appending */
	assert_int_equal(spool_commit(sp, &m, qid, err, sizeof err), 0);
	assert_int_not_equal(stat(p, &st), 0);
	snprintf(p, sizeof p, "%s/body/%s", f->path, qid);
	assert_int_equal(stat(p, &st), 0);
	assert_int_equal(st.st_size, size);
	check_body(sp, qid, size, true);

	/* exactly inline_max stays inline, one byte more does not */
	m = make_msg(sp, 1, 256 * 1024);
	assert_int_equal(spool_commit(sp, &m, qid, err, sizeof err), 0);
	check_body(sp, qid, 256 * 1024, false);
	m = make_msg(sp, 1, 256 * 1024 + 1);
	assert_int_equal(spool_commit(sp, &m, qid, err, sizeof err), 0);
	check_body(sp, qid, 256 * 1024 + 1, true);
	spool_close(&sp);
}

static bool has_tmp_file(const char *dir, struct spool_msg *m)
{
	char p[512];
	struct stat st;

	snprintf(p, sizeof p, "%s/body/%s.tmp", dir, spool_msg_qid(m));
	return stat(p, &st) == 0;
}

/* Many large bodies in transfer at once: past inline_memory, a body over
 * 64 KiB goes to its file although it is under inline_max; small ones stay
 * in memory; memory given back by a commit is usable again. */
static void test_inline_memory_budget(void **state)
{
	struct test_dir *f = *state;
	struct spool_opts o;
	char err[512] = "", qid[SPOOL_QID_SIZE];
	struct spool_msg *big[8], *small, *m;
	struct spool *sp;
	size_t n_file = 0;

	spool_opts_init(&o);
	o.space_margin = 0;
	o.inline_memory = 1 << 20;   /* 1 MiB: room for about four 200 KiB bodies */
	sp = spool_open(f->path, &o, NULL, err, sizeof err);
	assert_non_null(sp);
	for (size_t i = 0; i < 8; i++) {
		big[i] = make_msg(sp, 1, 200 * 1024);
		n_file += has_tmp_file(f->path, big[i]);
	}
	assert_false(has_tmp_file(f->path, big[0]));
	assert_true(has_tmp_file(f->path, big[7]));
	assert_in_range(n_file, 3, 6);
	small = make_msg(sp, 1, 60 * 1024);   /* under 64 KiB: always in memory */
	assert_false(has_tmp_file(f->path, small));
	assert_int_equal(spool_commit(sp, &small, qid, err, sizeof err), 0);
	check_body(sp, qid, 60 * 1024, false);
	for (size_t i = 0; i < 8; i++) {
		bool in_file = has_tmp_file(f->path, big[i]);

		assert_int_equal(spool_commit(sp, &big[i], qid, err, sizeof err), 0);
		check_body(sp, qid, 200 * 1024, in_file);
	}
	/* every builder's memory was given back: a large body fits again */
	m = make_msg(sp, 1, 200 * 1024);
	assert_false(has_tmp_file(f->path, m));
	spool_msg_abort(&m);
	spool_close(&sp);
}

static void test_abort_removes_partial(void **state)
{
	struct test_dir *f = *state;
	struct spool *sp = open_spool(f->path, 1024);
	struct spool_msg *m = make_msg(sp, 2, 5000);
	char p[256];
	struct stat st;

	snprintf(p, sizeof p, "%s/body/%s.tmp", f->path, spool_msg_qid(m));
	assert_int_equal(stat(p, &st), 0);
	spool_msg_abort(&m);
	assert_null(m);
	assert_int_equal(stat(p, &st), -1);
	assert_int_equal(errno, ENOENT);
	spool_close(&sp);
}

static void test_refused_before_queueing(void **state)
{
	struct test_dir *f = *state;
	struct spool *sp = open_spool(f->path, 1024);
	struct spool_msg *m = make_msg(sp, 0, 5000);
	char err[256] = "";

	assert_int_equal(spool_commit(sp, &m, NULL, err, sizeof err), -1);
	assert_non_null(strstr(err, "no recipient"));
	spool_close(&sp);
}

/* ---- format version ---------------------------------------------------- */

static void raw_put(const char *path, const char *dbname, const void *key, size_t klen,
		    const void *val, size_t vlen)
{
	MDB_env *env;
	MDB_txn *txn;
	MDB_dbi dbi;
	MDB_val k = { klen, (void *)key }, v = { vlen, (void *)val };

	assert_int_equal(mdb_env_create(&env), 0);
	assert_int_equal(mdb_env_set_maxdbs(env, 8), 0);
	assert_int_equal(mdb_env_open(env, path, 0, 0600), 0);
	assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
	assert_int_equal(mdb_dbi_open(txn, dbname, 0, &dbi), 0);
	assert_int_equal(mdb_put(txn, dbi, &k, &v, 0), 0);
	assert_int_equal(mdb_txn_commit(txn), 0);
	mdb_env_close(env);
}

/* Flips one byte of the value stored under key, through raw LMDB. */
static void raw_flip(const char *path, const char *dbname, const char *key, size_t at)
{
	MDB_env *env;
	MDB_txn *txn;
	MDB_dbi dbi;
	MDB_val k = { strlen(key), (void *)key }, v;
	uint8_t *copy;

	assert_int_equal(mdb_env_create(&env), 0);
	assert_int_equal(mdb_env_set_maxdbs(env, 8), 0);
	assert_int_equal(mdb_env_open(env, path, 0, 0600), 0);
	assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
	assert_int_equal(mdb_dbi_open(txn, dbname, 0, &dbi), 0);
	assert_int_equal(mdb_get(txn, dbi, &k, &v), 0);
	assert_true(at < v.mv_size);
	copy = malloc(v.mv_size);
	memcpy(copy, v.mv_data, v.mv_size);
	copy[at] ^= 0x40;
	v.mv_data = copy;
	assert_int_equal(mdb_put(txn, dbi, &k, &v, 0), 0);
	assert_int_equal(mdb_txn_commit(txn), 0);
	free(copy);
	mdb_env_close(env);
}

static void test_version(void **state)
{
	struct test_dir *f = *state;
	char err[512] = "";
	unsigned found = 77;
	struct stat st;
	struct spool *sp;
	uint8_t *rec;
	size_t len;

	/* absent directory: fine, and nothing is created */
	assert_int_equal(spool_version_check(f->path, &found, err, sizeof err), 0);
	assert_int_equal(found, 0);
	assert_int_equal(stat(f->path, &st), -1);
	/* a new spool gets the current version */
	sp = open_spool(f->path, 0);
	spool_close(&sp);
	assert_int_equal(spool_version_check(f->path, &found, err, sizeof err), 0);
	assert_int_equal(found, SPOOL_FORMAT_VERSION);
	/* a newer one is refused, by the check and by open, naming both */
	assert_int_equal(spool_record_encode_meta(SPOOL_FORMAT_VERSION + 98, &rec, &len), 0);
	raw_put(f->path, "meta", "format_version", 14, rec, len);
	free(rec);
	assert_int_equal(spool_version_check(f->path, &found, err, sizeof err), -1);
	assert_int_equal(found, SPOOL_FORMAT_VERSION + 98);
	assert_non_null(strstr(err, "format version 99"));
	assert_non_null(strstr(err, "version 1 "));
	assert_null(spool_open(f->path, NULL, NULL, err, sizeof err));
	assert_non_null(strstr(err, "format version 99, newer than version 1"));
	/* older than supported: refused with the exact reason */
	assert_int_equal(spool_record_encode_meta(0, &rec, &len), 0);
	raw_put(f->path, "meta", "format_version", 14, rec, len);
	free(rec);
	assert_int_equal(spool_version_check(f->path, &found, err, sizeof err), -1);
	assert_non_null(strstr(err, "format version 0, older than version 1"));
}

static void test_version_empty_dir(void **state)
{
	struct test_dir *f = *state;
	char err[256] = "";
	unsigned found = 5;

	assert_int_equal(mkdir(f->path, 0700), 0);
	assert_int_equal(spool_version_check(f->path, &found, err, sizeof err), 0);
	assert_int_equal(found, 0);
}

/* ---- group commit from a libevent loop ------------------------------- */

static int count_pending(void *arg, const struct spool_envelope *env)
{
	(*(int *)arg)++;
	return 0;
}


struct gc_state {
	struct event_base *base;
	struct spool *sp;
	struct event *tick;
	int done, failed, want, submitted;
	char last_qid[SPOOL_QID_SIZE];
	bool order_ok;
};

static void gc_done(void *arg, int rc, const char *qid, const char *err)
{
	struct gc_state *s = arg;

	if (rc != 0) {
		s->failed++;
		print_error("commit %s failed: %s\n", qid, err);
	}
	if (strcmp(qid, s->last_qid) <= 0)
		s->order_ok = false;
	snprintf(s->last_qid, sizeof s->last_qid, "%s", qid);
	if (++s->done == s->want)
		event_base_loopbreak(s->base);
}

static void gc_timeout(evutil_socket_t fd, short what, void *arg)
{
	event_base_loopbreak(arg);
}

/* Submits 8 messages per tick, like sessions finishing DATA while earlier
 * commits are still in flight. */
static void gc_submit(evutil_socket_t fd, short what, void *arg)
{
	struct gc_state *s = arg;
	char err[256] = "";

	for (int k = 0; k < 8 && s->submitted < s->want; k++, s->submitted++) {
		int i = s->submitted;
		/* every 10th message spills to a file */
		struct spool_msg *m = make_msg(s->sp, 1 + (size_t)i % 3, i % 10 ? 300 : 10000);

		assert_int_equal(spool_commit_async(s->sp, &m, s->base, gc_done, s,
						    err, sizeof err), 0);
	}
	if (s->submitted == s->want)
		event_del(s->tick);
}

static void test_group_commit(void **state)
{
	struct test_dir *f = *state;
	struct gc_state s = { .want = 200, .order_ok = true };
	struct spool *sp = open_spool(f->path, 4096);
	struct spool_stats st;
	struct timeval limit = { 30, 0 }, tick = { 0, 200 };
	struct event *timer;
	char err[256] = "";

	assert_int_equal(evthread_use_pthreads(), 0);
	s.base = event_base_new();
	assert_non_null(s.base);
	s.sp = sp;
	timer = evtimer_new(s.base, gc_timeout, s.base);
	evtimer_add(timer, &limit);
	s.tick = event_new(s.base, -1, EV_PERSIST, gc_submit, &s);
	event_add(s.tick, &tick);
	event_base_dispatch(s.base);
	event_free(s.tick);
	assert_int_equal(s.done, s.want);
	assert_int_equal(s.failed, 0);
	assert_true(s.order_ok);
	spool_stats(sp, &st);
	assert_int_equal(st.messages_committed, 200);
	print_message("group commit: %llu messages in %llu commits (%.1f per commit, max batch %llu, %llu fsyncs)\n",
		      (unsigned long long)st.messages_committed,
		      (unsigned long long)st.commits,
		      (double)st.messages_committed / (double)st.commits,
		      (unsigned long long)st.max_batch, (unsigned long long)st.fsyncs);
	assert_true(st.commits < st.messages_committed);
	assert_true(st.max_batch > 1);

	/* all 200 are pending and readable */
	int count = 0;
	assert_int_equal(spool_foreach_pending(sp, count_pending, &count, err, sizeof err), 0);
	assert_int_equal(count, 200);
	spool_close(&sp);
	event_free(timer);
	event_base_free(s.base);
}

/* ---- quarantine -------------------------------------------------------- */

struct qlist {
	int n;
	char qid[4][64];
	char reason[4][256];
};

static int collect_quarantined(void *arg, const char *qid, const char *reason, int64_t when)
{
	struct qlist *q = arg;

	if (q->n < 4) {
		snprintf(q->qid[q->n], sizeof q->qid[0], "%s", qid);
		snprintf(q->reason[q->n], sizeof q->reason[0], "%s", reason);
	}
	q->n++;
	return 0;
}

static void test_corrupt_quarantined(void **state)
{
	struct test_dir *f = *state;
	struct spool *sp = open_spool(f->path, 1024);
	char err[512] = "", qid[5][SPOOL_QID_SIZE], p[256];
	struct spool_envelope *env = NULL;
	struct spool_stats st;
	struct qlist q = { 0 };
	struct stat sb;
	int n = 0;

	for (int i = 0; i < 5; i++) {
		struct spool_msg *m = make_msg(sp, 2, i == 3 ? 5000 : 100);

		assert_int_equal(spool_commit(sp, &m, qid[i], err, sizeof err), 0);
	}
	spool_close(&sp);
	raw_flip(f->path, "env", qid[1], 30);      /* envelope: found at open */
	raw_flip(f->path, "env", qid[3], 40);      /* envelope with a body file */
	raw_flip(f->path, "body", qid[2], 20);     /* inline body: found at read */

	sp = open_spool(f->path, 1024);
	spool_stats(sp, &st);
	assert_int_equal(st.quarantined, 2);
	assert_int_equal(spool_foreach_quarantined(sp, collect_quarantined, &q, err, sizeof err), 0);
	assert_int_equal(q.n, 2);
	assert_string_equal(q.qid[0], qid[1]);
	assert_string_equal(q.qid[1], qid[3]);
	assert_non_null(strstr(q.reason[0], "CRC mismatch"));
	snprintf(p, sizeof p, "%s/quarantine/%s", f->path, qid[3]);
	assert_int_equal(stat(p, &sb), 0);         /* body moved along */
	snprintf(p, sizeof p, "%s/body/%s", f->path, qid[3]);
	assert_int_equal(stat(p, &sb), -1);

	assert_int_equal(spool_load(sp, qid[1], &env, err, sizeof err), 1);
	assert_int_equal(spool_load(sp, qid[0], &env, err, sizeof err), 0);
	spool_envelope_free(&env);
	check_body(sp, qid[0], 100, false);
	check_body(sp, qid[4], 100, false);

	struct spool_body *b = NULL;
	assert_int_equal(spool_body_open(sp, qid[2], &b, err, sizeof err), -1);
	assert_non_null(strstr(err, "quarantined"));
	assert_int_equal(spool_load(sp, qid[2], &env, err, sizeof err), 1);
	q.n = 0;
	assert_int_equal(spool_foreach_quarantined(sp, collect_quarantined, &q, err, sizeof err), 0);
	assert_int_equal(q.n, 3);
	assert_int_equal(spool_foreach_pending(sp, count_pending, &n, err, sizeof err), 0);
	assert_int_equal(n, 2);
	spool_close(&sp);
}

/* ---- reopen, update, remove ------------------------------------------- */

static void test_reopen_update_remove(void **state)
{
	struct test_dir *f = *state;
	struct spool *sp = open_spool(f->path, 1024);
	char err[512] = "", qid[10][SPOOL_QID_SIZE], next[SPOOL_QID_SIZE], p[256];
	struct spool_envelope *env = NULL;
	struct stat sb;
	int n = 0;

	for (int i = 0; i < 10; i++) {
		struct spool_msg *m = make_msg(sp, 2, i == 0 ? 4000 : 10 * (size_t)i);

		assert_int_equal(spool_commit(sp, &m, qid[i], err, sizeof err), 0);
	}
	spool_close(&sp);
	sp = open_spool(f->path, 1024);
	assert_int_equal(spool_foreach_pending(sp, count_pending, &n, err, sizeof err), 0);
	assert_int_equal(n, 10);
	check_body(sp, qid[0], 4000, true);
	check_body(sp, qid[9], 90, false);
	/* queue IDs keep increasing across a reopen */
	spool_qid_new(sp, next);
	assert_true(strcmp(next, qid[9]) > 0);

	assert_int_equal(spool_rcpt_update(sp, qid[0], 0, SPOOL_RCPT_DELIVERED,
					   "250 2.0.0 ok", 0, err, sizeof err), 0);
	assert_int_equal(spool_remove(sp, qid[0], err, sizeof err), -1);
	assert_non_null(strstr(err, "recipients pending"));
	assert_int_equal(spool_rcpt_update(sp, qid[0], 1, SPOOL_RCPT_DEFERRED,
					   "451 4.3.0 later", 1800000000, err, sizeof err), 0);
	assert_int_equal(spool_rcpt_update(sp, qid[0], 2, SPOOL_RCPT_FAILED,
					   "x", 0, err, sizeof err), 1);
	assert_int_equal(spool_load(sp, qid[0], &env, err, sizeof err), 0);
	assert_int_equal(env->rcpts[0].state, SPOOL_RCPT_DELIVERED);
	assert_string_equal(env->rcpts[0].last_reply, "250 2.0.0 ok");
	assert_int_equal(env->rcpts[1].state, SPOOL_RCPT_DEFERRED);
	assert_int_equal(env->rcpts[1].attempts, 1);
	assert_int_equal(env->rcpts[1].next_attempt, 1800000000);
	spool_envelope_free(&env);
	assert_int_equal(spool_rcpt_update(sp, qid[0], 1, SPOOL_RCPT_FAILED,
					   "550 5.1.1 no such user", 0, err, sizeof err), 0);
	assert_int_equal(spool_remove(sp, qid[0], err, sizeof err), 0);
	assert_int_equal(spool_load(sp, qid[0], &env, err, sizeof err), 1);
	snprintf(p, sizeof p, "%s/body/%s", f->path, qid[0]);
	assert_int_equal(stat(p, &sb), -1);
	n = 0;
	assert_int_equal(spool_foreach_pending(sp, count_pending, &n, err, sizeof err), 0);
	assert_int_equal(n, 9);
	spool_close(&sp);
}

static void test_orphans_swept(void **state)
{
	struct test_dir *f = *state;
	struct spool *sp = open_spool(f->path, 1024);
	char p1[256], p2[256], q[SPOOL_QID_SIZE];
	struct stat sb;
	int fd;

	spool_qid_new(sp, q);
	spool_close(&sp);
	snprintf(p1, sizeof p1, "%s/body/%s", f->path, q);
	snprintf(p2, sizeof p2, "%s/body/%s.tmp", f->path, q);
	assert_true((fd = open(p1, O_CREAT | O_WRONLY, 0600)) >= 0);
	close(fd);
	assert_true((fd = open(p2, O_CREAT | O_WRONLY, 0600)) >= 0);
	close(fd);
	sp = open_spool(f->path, 1024);
	assert_int_equal(stat(p1, &sb), -1);
	assert_int_equal(stat(p2, &sb), -1);
	spool_close(&sp);
}

/* ---- finished messages swept at open ---------------------------------- */

static struct spool *open_spool_log(const char *path, size_t inline_max, struct evlog *log)
{
	struct spool_opts o;
	char err[512] = "";
	struct spool *sp;

	spool_opts_init(&o);
	o.space_margin = 0;
	o.inline_max = inline_max;
	sp = spool_open(path, &o, log, err, sizeof err);
	if (sp == NULL)
		fail_msg("spool_open %s: %s", path, err);
	return sp;
}

/* A crash between the last results' commit and the removal's leaves a
 * message with every recipient final: the next open removes it (body file
 * too) in one txn, and leaves pending and half-done ones alone. */
static void test_final_swept(void **state)
{
	struct test_dir *f = *state;
	struct evlog *log = evlog_new("test_spool");
	struct spool *sp = open_spool_log(f->path, 1024, log);
	struct spool_envelope *env = NULL;
	char err[512] = "", q[4][SPOOL_QID_SIZE], p[256];
	struct stat sb;
	int n = 0;

	assert_non_null(log);
	for (int i = 0; i < 4; i++) {
		struct spool_msg *m = make_msg(sp, 2, i % 2 ? 100 : 5000);

		assert_int_equal(spool_commit(sp, &m, q[i], err, sizeof err), 0);
	}
	/* q0 (body file) and q1 (inline): all final, not removed */
	for (int i = 0; i < 2; i++) {
		assert_int_equal(spool_rcpt_update(sp, q[i], 0, SPOOL_RCPT_DELIVERED, "250 ok", 0,
						   err, sizeof err), 0);
		assert_int_equal(spool_rcpt_update(sp, q[i], 1, SPOOL_RCPT_FAILED, "550 no", 0,
						   err, sizeof err), 0);
	}
	/* q2: one recipient still deferred; q3 untouched */
	assert_int_equal(spool_rcpt_update(sp, q[2], 0, SPOOL_RCPT_DELIVERED, "250 ok", 0,
					   err, sizeof err), 0);
	assert_int_equal(spool_rcpt_update(sp, q[2], 1, SPOOL_RCPT_DEFERRED, "451 later", 0,
					   err, sizeof err), 0);
	spool_close(&sp);
	assert_int_equal(evlog_count(log, EV_SPOOL_FINAL_SWEPT), 0);

	sp = open_spool_log(f->path, 1024, log);
	assert_int_equal(evlog_count(log, EV_SPOOL_FINAL_SWEPT), 1);
	for (int i = 0; i < 4; i++) {
		int rc = spool_load(sp, q[i], &env, err, sizeof err);

		if (rc != (i < 2 ? 1 : 0))
			fail_msg("%s (#%d): spool_load got %d, want %d (%s)", q[i], i, rc,
				 i < 2 ? 1 : 0, err);
		spool_envelope_free(&env);
	}
	snprintf(p, sizeof p, "%s/body/%s", f->path, q[0]);
	assert_int_equal(stat(p, &sb), -1);
	snprintf(p, sizeof p, "%s/body/%s", f->path, q[2]);
	assert_int_equal(stat(p, &sb), 0);
	check_body(sp, q[2], 5000, true);
	check_body(sp, q[3], 100, false);
	assert_int_equal(spool_foreach_pending(sp, count_pending, &n, err, sizeof err), 0);
	assert_int_equal(n, 2);
	spool_close(&sp);
	/* nothing left to sweep: no second event */
	sp = open_spool_log(f->path, 1024, log);
	assert_int_equal(evlog_count(log, EV_SPOOL_FINAL_SWEPT), 1);
	spool_close(&sp);
	evlog_free(&log);
}

/* ---- reopen after MDB_PANIC ------------------------------------------- */

/* Reads on another thread while the spool thread replaces the environment
 * (ASan would catch a use of the closed one). */
struct reader {
	struct spool *sp;
	char qid[SPOOL_QID_SIZE];
	atomic_bool stop;
	atomic_int loads, failures;
};

static void *reader_main(void *arg)
{
	struct reader *r = arg;
	char err[512];

	while (!atomic_load(&r->stop)) {
		struct spool_envelope *env = NULL;
		int n = 0, rc = spool_load(r->sp, r->qid, &env, err, sizeof err);

		if (rc == 0 && strcmp(env->qid, r->qid) != 0)
			rc = -2;
		spool_envelope_free(&env);
		if (rc == 0)
			rc = spool_foreach_pending(r->sp, count_pending, &n, err, sizeof err);
		atomic_fetch_add(rc == 0 ? &r->loads : &r->failures, 1);
		if (rc < -1)
			fail_msg("reader: envelope of the wrong message");
	}
	return NULL;
}

static int count_body_files(const char *path)
{
	struct dirent *de;
	char p[256];
	DIR *d;
	int n = 0;

	snprintf(p, sizeof p, "%s/body", path);
	assert_non_null(d = opendir(p));
	while ((de = readdir(d)) != NULL)
		n += de->d_name[0] != '.';
	closedir(d);
	return n;
}

/* A failed meta-page write makes LMDB fatal: that batch gets a temporary
 * failure and leaves nothing, the spool thread reopens in place
 * (SPOOL_REOPENED), the next message commits, readers on another thread
 * go on, and the last durable commit is intact. */
static void test_panic_reopens(void **state)
{
	struct test_dir *f = *state;
	struct evlog *log = evlog_new("test_spool");
	struct spool *sp = open_spool_log(f->path, 1024, log);
	struct spool_envelope *env = NULL;
	char err[512] = "", qa[SPOOL_QID_SIZE], qc[SPOOL_QID_SIZE];
	struct reader r = { .sp = sp };
	struct spool_msg *m;
	pthread_t th;
	int n = 0;

	assert_non_null(log);
	m = make_msg(sp, 1, 3000);
	assert_int_equal(spool_commit(sp, &m, qa, err, sizeof err), 0);
	memcpy(r.qid, qa, SPOOL_QID_SIZE);
	assert_int_equal(pthread_create(&th, NULL, reader_main, &r), 0);

	atomic_store(&meta_failures, 1);
	m = make_msg(sp, 1, 3000);      /* a body file that must not stay */
	assert_int_equal(spool_commit(sp, &m, NULL, err, sizeof err), -1);
	assert_non_null(strstr(err, "LMDB commit"));
	assert_int_equal(atomic_load(&meta_failures), 0);
	m = make_msg(sp, 1, 100);
	if (spool_commit(sp, &m, qc, err, sizeof err) != 0)
		fail_msg("the commit after the reopen failed: %s", err);
	assert_int_equal(evlog_count(log, EV_SPOOL_REOPENED), 1);
	assert_int_equal(evlog_count(log, EV_SPOOL_REOPEN_FAILED), 0);

	atomic_store(&r.stop, true);
	pthread_join(th, NULL);
	assert_true(atomic_load(&r.loads) > 0);
	assert_int_equal(count_body_files(f->path), 1);
	assert_int_equal(spool_load(sp, qa, &env, err, sizeof err), 0);
	spool_envelope_free(&env);
	check_body(sp, qa, 3000, true);
	check_body(sp, qc, 100, false);
	assert_int_equal(spool_foreach_pending(sp, count_pending, &n, err, sizeof err), 0);
	assert_int_equal(n, 2);
	assert_int_equal(spool_rcpt_update(sp, qa, 0, SPOOL_RCPT_DELIVERED, "250 ok", 0,
					   err, sizeof err), 0);
	assert_int_equal(spool_remove(sp, qa, err, sizeof err), 0);
	spool_close(&sp);
	sp = open_spool_log(f->path, 1024, log);
	n = 0;
	assert_int_equal(spool_foreach_pending(sp, count_pending, &n, err, sizeof err), 0);
	assert_int_equal(n, 1);
	assert_int_equal(count_body_files(f->path), 0);
	spool_close(&sp);
	evlog_free(&log);
}

/* When reopening fails too (here: the spool directory is away), commits
 * and reads fail (temporary), nothing crashes, and the spool thread
 * retries with a backoff until it succeeds. */
static void test_panic_reopen_retries(void **state)
{
	struct test_dir *f = *state;
	struct evlog *log = evlog_new("test_spool");
	struct spool *sp = open_spool_log(f->path, 1024, log);
	struct spool_envelope *env = NULL;
	char err[512] = "", qa[SPOOL_QID_SIZE], away[128];
	struct spool_msg *m;
	int i;

	assert_non_null(log);
	m = make_msg(sp, 1, 100);
	assert_int_equal(spool_commit(sp, &m, qa, err, sizeof err), 0);
	snprintf(away, sizeof away, "%s.away", f->path);
	assert_int_equal(rename(f->path, away), 0);
	atomic_store(&meta_failures, 1);
	m = make_msg(sp, 1, 100);
	assert_int_equal(spool_commit(sp, &m, NULL, err, sizeof err), -1);
	m = make_msg(sp, 1, 100);
	assert_int_equal(spool_commit(sp, &m, NULL, err, sizeof err), -1);
	assert_non_null(strstr(err, "unavailable"));
	assert_true(evlog_count(log, EV_SPOOL_REOPEN_FAILED) >= 1);
	assert_int_equal(spool_load(sp, qa, &env, err, sizeof err), -1);
	assert_non_null(strstr(err, "unavailable"));
	assert_int_equal(spool_rcpt_update(sp, qa, 0, SPOOL_RCPT_DELIVERED, "250 ok", 0,
					   err, sizeof err), -1);

	assert_int_equal(rename(away, f->path), 0);
	for (i = 0; i < 500 && evlog_count(log, EV_SPOOL_REOPENED) == 0; i++)
		usleep(10000);   /* the retry comes 1 s later, by itself */
	assert_int_equal(evlog_count(log, EV_SPOOL_REOPENED), 1);
	assert_int_equal(spool_load(sp, qa, &env, err, sizeof err), 0);
	spool_envelope_free(&env);
	m = make_msg(sp, 1, 100);
	assert_int_equal(spool_commit(sp, &m, NULL, err, sizeof err), 0);
	spool_close(&sp);
	evlog_free(&log);
}

static void test_in_use_refused(void **state)
{
	struct test_dir *f = *state;
	struct spool *sp = open_spool(f->path, 0);
	char err[512] = "";

	assert_null(spool_open(f->path, NULL, NULL, err, sizeof err));
	assert_non_null(strstr(err, "in use"));
	spool_close(&sp);
}


/* ---- failures are temporary and leave nothing behind ----------------- */

struct fail_state {
	struct event_base *base;
	int done, want;
	int rc[4];
	char err[4][256];
	char qid[4][SPOOL_QID_SIZE];
};

static void fail_done(void *arg, int rc, const char *qid, const char *err)
{
	struct fail_state *s = arg;

	for (int i = 0; i < s->want; i++)
		if (strcmp(s->qid[i], qid) == 0) {
			s->rc[i] = rc;
			snprintf(s->err[i], sizeof s->err[i], "%s", err ? err : "");
		}
	if (++s->done == s->want)
		event_base_loopbreak(s->base);
}

static int count_dir(const char *path)
{
	DIR *d = opendir(path);
	struct dirent *de;
	int n = 0;

	assert_non_null(d);
	while ((de = readdir(d)) != NULL)
		n += de->d_name[0] != '.';
	closedir(d);
	return n;
}

/* One message too big for the LMDB map fails alone (MDB_MAP_FULL, temp
 * failure); the others in its batch still commit; the spool goes on. */
static void test_map_full_isolated(void **state)
{
	struct test_dir *f = *state;
	struct fail_state s = { .want = 3 };
	struct spool_opts o;
	struct spool_envelope *env = NULL;
	struct spool_stats st;
	char err[512] = "", qid[SPOOL_QID_SIZE];
	struct spool *sp;

	assert_int_equal(evthread_use_pthreads(), 0);
	spool_opts_init(&o);
	o.space_margin = 0;
	o.map_size = 512 * 1024;
	o.inline_max = 4 * 1024 * 1024;
	o.commit_delay_us = 100000;   /* gather all three in one batch */
	sp = spool_open(f->path, &o, NULL, err, sizeof err);
	assert_non_null(sp);
	s.base = event_base_new();
	for (int i = 0; i < 3; i++) {
		struct spool_msg *m = make_msg(sp, 1, i == 1 ? 2 * 1024 * 1024 : 500);

		snprintf(s.qid[i], sizeof s.qid[i], "%s", spool_msg_qid(m));
		assert_int_equal(spool_commit_async(sp, &m, s.base, fail_done, &s,
						    err, sizeof err), 0);
	}
	/* a pending timer keeps the loop running until the completions come */
	struct timeval limit = { 30, 0 };
	struct event *timer = evtimer_new(s.base, gc_timeout, s.base);
	evtimer_add(timer, &limit);
	event_base_dispatch(s.base);
	event_free(timer);
	assert_int_equal(s.done, 3);
	assert_int_equal(s.rc[0], 0);
	assert_int_not_equal(s.rc[1], 0);
	assert_non_null(strstr(s.err[1], "map full"));
	assert_int_equal(s.rc[2], 0);
	assert_int_equal(spool_load(sp, s.qid[1], &env, err, sizeof err), 1);
	spool_stats(sp, &st);
	assert_int_equal(st.commit_failures, 1);
	assert_int_equal(st.messages_committed, 2);
	/* and the spool goes on */
	struct spool_msg *m = make_msg(sp, 1, 100);
	assert_int_equal(spool_commit(sp, &m, qid, err, sizeof err), 0);
	check_body(sp, qid, 100, false);
	spool_close(&sp);
	event_base_free(s.base);
}

/* Too little space: temp failure with a reason, the spilled body removed. */
static void test_no_space_removes_body(void **state)
{
	struct test_dir *f = *state;
	struct spool_opts o;
	char err[512] = "", p[256];
	struct spool *sp;
	struct spool_msg *m;

	spool_opts_init(&o);
	o.inline_max = 1024;
	o.space_margin = (uint64_t)1 << 62;
	sp = spool_open(f->path, &o, NULL, err, sizeof err);
	assert_non_null(sp);
	m = make_msg(sp, 1, 50000);
	assert_int_equal(spool_commit(sp, &m, NULL, err, sizeof err), -1);
	assert_non_null(strstr(err, "bytes free"));
	snprintf(p, sizeof p, "%s/body", f->path);
	assert_int_equal(count_dir(p), 0);
	spool_close(&sp);
}

/* Opened as root, chowned, then used after setuid (root only). */
static void test_chown_then_drop_privileges(void **state)
{
	struct test_dir *f = *state;
	pid_t pid;
	int status;

	if (geteuid() != 0)
		skip();
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		char err[512] = "", qid[SPOOL_QID_SIZE];
		struct spool *sp = open_spool(f->path, 1024);
		struct spool_msg *m;
		struct spool_body *b = NULL;

		if (spool_chown(sp, 65534, 65534, err, sizeof err) < 0)
			_exit(2);
		if (setgroups(0, NULL) < 0 || setgid(65534) < 0 || setuid(65534) < 0)
			_exit(3);
		m = make_msg(sp, 1, 5000);   /* spills to body/ as the new user */
		if (spool_commit(sp, &m, qid, err, sizeof err) < 0)
			_exit(4);
		if (spool_body_open(sp, qid, &b, err, sizeof err) != 0)
			_exit(5);
		spool_body_close(&b);
		if (spool_rcpt_update(sp, qid, 0, SPOOL_RCPT_DELIVERED, "250 ok", 0,
				      err, sizeof err) != 0 ||
		    spool_remove(sp, qid, err, sizeof err) != 0)
			_exit(6);
		spool_close(&sp);
		_exit(0);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
}

/* kill -9 while commits are in flight: every acknowledged message is still
 * there, complete, after reopening; partial bodies are swept. */
static void test_kill9_loses_nothing_acked(void **state)
{
	struct test_dir *f = *state;
	char qid[SPOOL_QID_SIZE], err[512] = "", p[256];
	struct spool_envelope *env = NULL;
	struct spool *sp;
	int fds[2], status, acked = 0, n = 0;
	pid_t pid;

	assert_int_equal(pipe(fds), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		close(fds[0]);
		sp = open_spool(f->path, 4096);
		for (int i = 0;; i++) {
			struct spool_msg *m = make_msg(sp, 2, i % 4 ? 1000 : 20000);

			if (spool_commit(sp, &m, qid, err, sizeof err) < 0)
				_exit(1);
			/* the "250": only now is the qid reported */
			if (write(fds[1], qid, SPOOL_QID_LEN) != SPOOL_QID_LEN)
				_exit(2);
			if (i % 4 == 1) {   /* leave a partial body behind */
				struct spool_msg *part = make_msg(sp, 1, 9000);
				(void)part;
			}
		}
	}
	close(fds[1]);
	/* kill it mid-stream, after 20 acknowledgements */
	static char got[4096][SPOOL_QID_SIZE];
	int n_got = 0;
	while (n_got < 4096 && read(fds[0], got[n_got], SPOOL_QID_LEN) == SPOOL_QID_LEN) {
		got[n_got][SPOOL_QID_LEN] = '\0';
		if (++n_got == 20)
			kill(pid, SIGKILL);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFSIGNALED(status));
	close(fds[0]);
	sp = open_spool(f->path, 4096);
	for (int i = 0; i < n_got; i++) {
		uint64_t size;

		memcpy(qid, got[i], SPOOL_QID_SIZE);
		if (spool_load(sp, qid, &env, err, sizeof err) != 0)
			fail_msg("acknowledged %s lost: %s", qid, err);
		size = env->size;
		spool_envelope_free(&env);
		check_body(sp, qid, (size_t)size, size > 4096);
		acked++;
	}
	assert_true(acked >= 20);
	assert_int_equal(spool_foreach_pending(sp, count_pending, &n, err, sizeof err), 0);
	assert_true(n >= acked && n <= acked + 1);   /* at most one committed, unacknowledged */
	snprintf(p, sizeof p, "%s/body", f->path);
	DIR *d = opendir(p);
	struct dirent *de;
	while ((de = readdir(d)) != NULL)
		if (strstr(de->d_name, ".tmp") != NULL)
			fail_msg("partial body %s survived reopening", de->d_name);
	closedir(d);
	print_message("kill -9: %d acknowledged messages, all intact after reopen\n", acked);
	spool_close(&sp);
}

/* ---- async changes share the group commit ------------------------------ */

struct chg_state {
	struct event_base *base;
	int done, want, ok, missing, refused;
	char last_err[256];
};

static void chg_done(void *arg, int rc, const char *qid, const char *err)
{
	struct chg_state *s = arg;

	if (rc == 0)
		s->ok++;
	else if (rc == 1)
		s->missing++;
	else {
		s->refused++;
		snprintf(s->last_err, sizeof s->last_err, "%s", err ? err : "");
	}
	if (++s->done == s->want)
		event_base_loopbreak(s->base);
}

static void test_async_update_remove(void **state)
{
	struct test_dir *f = *state;
	struct spool *sp = open_spool(f->path, 1024);
	struct chg_state s = { 0 };
	struct spool_stats st0, st;
	struct timeval limit = { 30, 0 };
	char err[256] = "", qid[40][SPOOL_QID_SIZE], p[256];
	int n = 0;

	assert_int_equal(evthread_use_pthreads(), 0);
	s.base = event_base_new();
	for (int i = 0; i < 40; i++) {
		struct spool_msg *m = make_msg(sp, 2, i % 5 ? 100 : 3000);

		assert_int_equal(spool_commit(sp, &m, qid[i], err, sizeof err), 0);
	}
	spool_stats(sp, &st0);
	/* 39 messages: both recipients delivered, then removed; the last one
	 * keeps a deferred recipient, so its removal is refused */
	for (int i = 0; i < 40; i++) {
		assert_int_equal(spool_rcpt_update_async(sp, qid[i], 0, SPOOL_RCPT_DELIVERED,
							 "250 2.0.0 ok", 0, s.base, chg_done, &s,
							 err, sizeof err), 0);
		assert_int_equal(spool_rcpt_update_async(sp, qid[i], 1,
							 i == 39 ? SPOOL_RCPT_DEFERRED : SPOOL_RCPT_FAILED,
							 "550 5.1.1 unknown", 0, s.base, chg_done, &s,
							 err, sizeof err), 0);
		assert_int_equal(spool_remove_async(sp, qid[i], s.base, chg_done, &s,
						    err, sizeof err), 0);
		s.want += 3;
	}
	assert_int_equal(spool_rcpt_update_async(sp, "0000000000000000", 0, SPOOL_RCPT_FAILED,
						 NULL, 0, s.base, chg_done, &s, err, sizeof err), 0);
	assert_int_equal(spool_rcpt_update_async(sp, qid[39], 7, SPOOL_RCPT_FAILED,
						 NULL, 0, s.base, chg_done, &s, err, sizeof err), 0);
	s.want += 2;
	struct event *timer = evtimer_new(s.base, gc_timeout, s.base);
	evtimer_add(timer, &limit);
	event_base_dispatch(s.base);
	event_free(timer);
	assert_int_equal(s.done, s.want);
	assert_int_equal(s.ok, 40 * 3 - 1);
	assert_int_equal(s.missing, 2);
	assert_int_equal(s.refused, 1);
	assert_non_null(strstr(s.last_err, "recipients pending"));
	spool_stats(sp, &st);
	assert_int_equal(st.changes_committed - st0.changes_committed, 40 * 3 - 1);
	print_message("async changes: %llu in %llu commits\n",
		      (unsigned long long)(st.changes_committed - st0.changes_committed),
		      (unsigned long long)(st.commits - st0.commits));
	assert_true(st.commits - st0.commits < 40);
	assert_int_equal(spool_foreach_pending(sp, count_pending, &n, err, sizeof err), 0);
	assert_int_equal(n, 1);
	snprintf(p, sizeof p, "%s/body", f->path);
	assert_int_equal(count_dir(p), 0);   /* qid[0..35 step 5] had files */
	spool_close(&sp);
	event_base_free(s.base);
}

/* ---- space, queue IDs ------------------------------------------------- */

static void test_space_check(void **state)
{
	struct test_dir *f = *state;
	struct spool *sp = open_spool(f->path, 0);
	char err[512] = "";

	struct statvfs vs;

	assert_int_equal(statvfs(f->path, &vs), 0);
	assert_int_equal(spool_space_ok(sp, 1000, err, sizeof err), 0);
	/* one byte more than the whole filesystem */
	assert_int_equal(spool_space_ok(sp, (uint64_t)vs.f_blocks * vs.f_frsize + 1,
					err, sizeof err), -1);
	assert_non_null(strstr(err, "bytes free on the filesystem of"));
	assert_int_equal(spool_space_ok(sp, UINT64_MAX, err, sizeof err), -1);
	spool_close(&sp);
}

static void test_qids_unique_sorted(void **state)
{
	struct test_dir *f = *state;
	struct spool *sp = open_spool(f->path, 0);
	char prev[SPOOL_QID_SIZE] = "", cur[SPOOL_QID_SIZE];

	for (int i = 0; i < 100000; i++) {
		spool_qid_new(sp, cur);
		assert_int_equal(strlen(cur), SPOOL_QID_LEN);
		assert_true(spool_record_qid_valid(cur, SPOOL_QID_LEN));
		if (strcmp(prev, cur) >= 0)
			fail_msg("qid %d: %s after %s", i, cur, prev);
		memcpy(prev, cur, sizeof cur);
	}
	spool_close(&sp);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_record_crc),
		cmocka_unit_test(test_record_damage_detected),
		cmocka_unit_test_setup_teardown(test_round_trip, setup, teardown),
		cmocka_unit_test_setup_teardown(test_large_body_spills, setup, teardown),
		cmocka_unit_test_setup_teardown(test_abort_removes_partial, setup, teardown),
		cmocka_unit_test_setup_teardown(test_refused_before_queueing, setup, teardown),
		cmocka_unit_test_setup_teardown(test_version, setup, teardown),
		cmocka_unit_test_setup_teardown(test_version_empty_dir, setup, teardown),
		cmocka_unit_test_setup_teardown(test_group_commit, setup, teardown),
		cmocka_unit_test_setup_teardown(test_corrupt_quarantined, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reopen_update_remove, setup, teardown),
		cmocka_unit_test_setup_teardown(test_orphans_swept, setup, teardown),
		cmocka_unit_test_setup_teardown(test_final_swept, setup, teardown),
		cmocka_unit_test_setup_teardown(test_panic_reopens, setup, teardown),
		cmocka_unit_test_setup_teardown(test_panic_reopen_retries, setup, teardown),
		cmocka_unit_test_setup_teardown(test_in_use_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_inline_memory_budget, setup, teardown),
		cmocka_unit_test_setup_teardown(test_map_full_isolated, setup, teardown),
		cmocka_unit_test_setup_teardown(test_no_space_removes_body, setup, teardown),
		cmocka_unit_test_setup_teardown(test_chown_then_drop_privileges, setup, teardown),
		cmocka_unit_test_setup_teardown(test_async_update_remove, setup, teardown),
		cmocka_unit_test_setup_teardown(test_kill9_loses_nothing_acked, setup, teardown),
		cmocka_unit_test_setup_teardown(test_space_check, setup, teardown),
		cmocka_unit_test_setup_teardown(test_qids_unique_sorted, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
