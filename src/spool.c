/*
 * spool: the durable queue (see spool.h for the on-disk layout, the
 * durability contract and which threads call what).
 *
 * Owns the LMDB environment, the body files, the group-commit thread and
 * the queue-ID generator.  Must not know about SMTP.
 */
#include "spool.h"

#include <dirent.h>
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <lmdb.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "evlog.h"
#include "spool_int.h"
#include "spool_record.h"

#define META_KEY "format_version"

/* One new message (msg) or queue change (msg NULL, upd) waiting for the
 * spool thread. */
struct pending {
	struct pending *next;
	struct spool_msg *msg;
	struct spool_update upd;
	char qid[SPOOL_QID_SIZE];
	struct event_base *base;
	spool_done_fn *done;
	void *arg;
	struct sync_wait *sync;   /* spool_commit(): a waiting caller */
	/* filled by the spool thread */
	int rc;
	bool fault;               /* failed for a spool reason (not a refusal) */
	char err[ERRLEN];
	uint8_t *rec;             /* encoded envelope */
	size_t reclen;
	struct spool_apply res;   /* a change's outcome */
};

struct sync_wait {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool done;
	int rc;
	char qid[SPOOL_QID_SIZE];
	char err[ERRLEN];
};

struct spool_msg {
	struct spool *sp;
	struct spool_envelope env;
	size_t rcap;
	bool sender_set;
	uint8_t *mem;              /* inline body so far */
	size_t memlen, memcap;
	int fd;                    /* body/<qid>.tmp, or -1 */
	char tmpname[SPOOL_QID_SIZE + 8];
};

void spool_opts_init(struct spool_opts *o)
{
	memset(o, 0, sizeof *o);
	o->map_size = (size_t)1 << 30;
	o->inline_max = 256 * 1024;
	o->inline_memory = (size_t)64 << 20;
	o->space_margin = (uint64_t)64 << 20;
	o->commit_delay_us = 0;
	o->max_batch = 1024;
}

/* The verdict on a stored format version: 0 fine, -1 refused + reason. */
static int version_verdict(const char *path, unsigned found, char *err, size_t errlen)
{
	if (found > SPOOL_FORMAT_VERSION) {
		seterr(err, errlen,
		       "spool %s has format version %u, newer than version %u that this carrierd reads; run the carrierd release that wrote it",
		       path, found, SPOOL_FORMAT_VERSION);
		return -1;
	}
	if (found < SPOOL_FORMAT_OLDEST) {
		seterr(err, errlen,
		       "spool %s has format version %u, older than version %u, the oldest this carrierd can upgrade",
		       path, found, SPOOL_FORMAT_OLDEST);
		return -1;
	}
	return 0;
}

/* Reads the version inside an open txn: 1 + *found_r, 0 when there is no
 * spool yet, or -1 + err. */
static int read_version(MDB_txn *txn, const char *path, unsigned *found_r,
			char *err, size_t errlen)
{
	MDB_dbi meta, main_db;
	MDB_val k = { .mv_size = strlen(META_KEY), .mv_data = (void *)META_KEY }, v;
	MDB_stat st;
	char why[200];
	int rc;

	*found_r = 0;
	rc = mdb_dbi_open(txn, "meta", 0, &meta);
	if (rc == MDB_NOTFOUND) {
		rc = mdb_dbi_open(txn, NULL, 0, &main_db);
		if (rc == 0)
			rc = mdb_stat(txn, main_db, &st);
		if (rc != 0) {
			seterr(err, errlen, "mdb_stat %s: %s", path, mdb_strerror(rc));
			return -1;
		}
		if (st.ms_entries == 0)
			return 0;
		seterr(err, errlen, "%s holds an LMDB database without carrier's format record (not a carrier spool?)", path);
		return -1;
	}
	if (rc != 0) {
		seterr(err, errlen, "mdb_dbi_open %s meta: %s", path, mdb_strerror(rc));
		return -1;
	}
	rc = mdb_get(txn, meta, &k, &v);
	if (rc != 0) {
		seterr(err, errlen, "spool %s: reading its format version: %s", path,
		       rc == MDB_NOTFOUND ? "the meta database has no format_version" : mdb_strerror(rc));
		return -1;
	}
	if (spool_record_decode_meta(v.mv_data, v.mv_size, found_r, why, sizeof why) < 0) {
		seterr(err, errlen, "spool %s: format version record damaged: %s", path, why);
		return -1;
	}
	return 1;
}

static int path_exists(const char *dir, const char *name, bool *yes_r,
		       char *err, size_t errlen)
{
	char p[4096];
	struct stat st;

	snprintf(p, sizeof p, "%s/%s", dir, name);
	*yes_r = stat(p, &st) == 0;
	if (!*yes_r && errno != ENOENT) {
		seterr(err, errlen, "stat %s: %s", p, strerror(errno));
		return -1;
	}
	return 0;
}

int spool_version_check(const char *path, unsigned *found_r,
			char *err, size_t errlen)
{
	struct stat st;
	bool have_data, have_lock;
	MDB_env *env = NULL;
	MDB_txn *txn = NULL;
	unsigned flags = MDB_RDONLY | MDB_NOTLS;
	int rc;

	*found_r = 0;
	if (stat(path, &st) < 0) {
		if (errno == ENOENT)
			return 0;
		seterr(err, errlen, "stat %s: %s", path, strerror(errno));
		return -1;
	}
	if (!S_ISDIR(st.st_mode)) {
		seterr(err, errlen, "spool path %s is not a directory", path);
		return -1;
	}
	if (path_exists(path, "data.mdb", &have_data, err, errlen) < 0 ||
	    path_exists(path, "lock.mdb", &have_lock, err, errlen) < 0)
		return -1;
	if (!have_data)
		return 0;
	/* Without a lock file nobody has it open; do not create one. */
	if (!have_lock)
		flags |= MDB_NOLOCK;
	rc = mdb_env_create(&env);
	if (rc == 0)
		rc = mdb_env_set_maxdbs(env, 8);
	if (rc == 0)
		rc = mdb_env_open(env, path, flags, 0600);
	if (rc == 0)
		rc = mdb_txn_begin(env, NULL, MDB_RDONLY, &txn);
	if (rc != 0) {
		seterr(err, errlen, "mdb_env_open %s (read-only): %s", path, mdb_strerror(rc));
		mdb_env_close(env);
		return -1;
	}
	rc = read_version(txn, path, found_r, err, errlen);
	mdb_txn_abort(txn);
	mdb_env_close(env);
	if (rc <= 0)
		return rc;
	return version_verdict(path, *found_r, err, errlen);
}

/* ---- helpers ---------------------------------------------------------- */

static const char b32[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

static void qid_encode(uint64_t us, uint32_t ctr, char buf[SPOOL_QID_SIZE])
{
	for (int i = 10; i >= 0; i--, us >>= 5)
		buf[i] = b32[us & 31];
	for (int i = 15; i >= 11; i--, ctr >>= 5)
		buf[i] = b32[ctr & 31];
	buf[SPOOL_QID_LEN] = '\0';
}

static void qid_decode(const char *q, uint64_t *us_r, uint32_t *ctr_r)
{
	uint64_t us = 0;
	uint32_t ctr = 0;

	for (int i = 0; i < SPOOL_QID_LEN; i++) {
		const char *d = strchr(b32, q[i]);
		unsigned v = d ? (unsigned)(d - b32) : 0;

		if (i < 11)
			us = us << 5 | v;
		else
			ctr = ctr << 5 | v;
	}
	*us_r = us;
	*ctr_r = ctr;
}

/* Makes the generator continue after `q` (an existing qid). */
static void qid_seed(struct spool *sp, const char *q)
{
	uint64_t us;
	uint32_t ctr;

	qid_decode(q, &us, &ctr);
	pthread_mutex_lock(&sp->qid_mu);
	if (us > sp->qid_us || (us == sp->qid_us && ctr > sp->qid_ctr)) {
		sp->qid_us = us;
		sp->qid_ctr = ctr;
	}
	pthread_mutex_unlock(&sp->qid_mu);
}

void spool_qid_new(struct spool *sp, char buf[SPOOL_QID_SIZE])
{
	struct timespec ts;
	uint64_t us;

	clock_gettime(CLOCK_REALTIME, &ts);
	us = (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
	pthread_mutex_lock(&sp->qid_mu);
	if (us > sp->qid_us) {
		sp->qid_us = us;
		sp->qid_ctr = 0;
	} else if (++sp->qid_ctr >= (1u << 25)) {
		/* clock stepped back or 33M IDs in one microsecond */
		sp->qid_us++;
		sp->qid_ctr = 0;
	}
	qid_encode(sp->qid_us, sp->qid_ctr, buf);
	pthread_mutex_unlock(&sp->qid_mu);
}

static int write_all(int fd, const void *p, size_t n)
{
	const uint8_t *b = p;

	while (n > 0) {
		ssize_t w = write(fd, b, n);

		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return -1;
		b += w;
		n -= (size_t)w;
	}
	return 0;
}

/* ---- the builder ------------------------------------------------------ */

struct spool_msg *spool_msg_new(struct spool *sp, char *err, size_t errlen)
{
	struct spool_msg *m = calloc(1, sizeof *m);

	if (m == NULL || (m->env.client_addr = strdup("")) == NULL ||
	    (m->env.client_helo = strdup("")) == NULL) {
		if (m != NULL)
			free(m->env.client_addr);
		free(m);
		seterr(err, errlen, "spool_msg_new: out of memory");
		return NULL;
	}
	m->sp = sp;
	m->fd = -1;
	spool_qid_new(sp, m->env.qid);
	m->env.arrival = now_s();
	return m;
}

const char *spool_msg_qid(const struct spool_msg *m)
{
	return m->env.qid;
}

int spool_msg_set_sender(struct spool_msg *m, const char *addr)
{
	if (set_str(&m->env.sender, addr, false) < 0)
		return -1;
	m->sender_set = true;
	return 0;
}

int spool_msg_set_dsn(struct spool_msg *m, enum spool_dsn_ret ret, const char *envid)
{
	if (ret > SPOOL_RET_HDRS || set_str(&m->env.envid, envid, true) < 0)
		return -1;
	m->env.dsn_ret = ret;
	return 0;
}

void spool_msg_set_body_type(struct spool_msg *m, enum spool_body_type t)
{
	m->env.body_type = t;
}

void spool_msg_set_smtputf8(struct spool_msg *m, bool on)
{
	m->env.smtputf8 = on;
}

int spool_msg_set_client(struct spool_msg *m, const char *addr, const char *helo)
{
	if (set_str(&m->env.client_addr, addr ? addr : "", false) < 0 ||
	    set_str(&m->env.client_helo, helo ? helo : "", false) < 0)
		return -1;
	return 0;
}

void spool_msg_set_arrival(struct spool_msg *m, int64_t unix_seconds)
{
	m->env.arrival = unix_seconds;
}

int spool_msg_add_rcpt(struct spool_msg *m, const char *addr,
		       unsigned notify, const char *orcpt)
{
	struct spool_rcpt *r;

	if (!str_ok(addr) || (orcpt != NULL && !str_ok(orcpt)) || notify > 15)
		return -1;
	if (m->env.n_rcpts == m->rcap) {
		size_t ncap = m->rcap ? m->rcap * 2 : 4;
		struct spool_rcpt *nr = realloc(m->env.rcpts, ncap * sizeof *nr);

		if (nr == NULL)
			return -1;
		m->env.rcpts = nr;
		m->rcap = ncap;
	}
	r = &m->env.rcpts[m->env.n_rcpts];
	memset(r, 0, sizeof *r);
	r->addr = strdup(addr);
	r->orcpt = orcpt ? strdup(orcpt) : NULL;
	if (r->addr == NULL || (orcpt != NULL && r->orcpt == NULL)) {
		free(r->addr);
		free(r->orcpt);
		return -1;
	}
	r->notify = notify;
	r->state = SPOOL_RCPT_QUEUED;
	m->env.n_rcpts++;
	return 0;
}

/* Gives back the memory of m's in-memory body. */
static void msg_mem_release(struct spool_msg *m)
{
	atomic_fetch_sub(&m->sp->mem_held, m->memcap);
	free(m->mem);
	m->mem = NULL;
	m->memlen = m->memcap = 0;
}

/* Moves the in-memory body to body/<qid>.tmp; later bytes go there too. */
static int msg_spill(struct spool_msg *m, char *err, size_t errlen)
{
	struct spool *sp = m->sp;

	snprintf(m->tmpname, sizeof m->tmpname, "%s.tmp", m->env.qid);
	m->fd = openat(sp->bodyfd, m->tmpname,
		       O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (m->fd < 0) {
		seterr(err, errlen, "open %s/body/%s: %s", sp->path, m->tmpname,
		       strerror(errno));
		return -1;
	}
	m->env.body_in_file = true;
	if (write_all(m->fd, m->mem, m->memlen) < 0) {
		seterr(err, errlen, "write %s/body/%s: %s", sp->path, m->tmpname,
		       strerror(errno));
		return -1;
	}
	msg_mem_release(m);
	return 0;
}

static int msg_mem_append(struct spool_msg *m, const void *bytes, size_t len,
			  char *err, size_t errlen)
{
	if (m->memcap - m->memlen < len) {
		size_t ncap = m->memcap ? m->memcap : 4096;
		uint8_t *np;

		while (ncap - m->memlen < len)
			ncap *= 2;
		if (ncap > m->sp->opts.inline_max)
			ncap = m->sp->opts.inline_max;
		np = realloc(m->mem, ncap);
		if (np == NULL) {
			seterr(err, errlen, "out of memory for a %zu-byte body", ncap);
			return -1;
		}
		atomic_fetch_add(&m->sp->mem_held, ncap - m->memcap);
		m->mem = np;
		m->memcap = ncap;
	}
	memcpy(m->mem + m->memlen, bytes, len);
	m->memlen += len;
	return 0;
}

/* Would m's body stay in memory with len more bytes? */
static bool msg_fits_memory(const struct spool_msg *m, size_t len)
{
	const struct spool *sp = m->sp;
	size_t want = m->memlen + len;

	if (want > sp->opts.inline_max)
		return false;
	if (want <= SPOOL_INLINE_ALWAYS || want <= m->memcap)
		return true;
	/* growth: at most doubling, as msg_mem_append does */
	return atomic_load(&sp->mem_held) + want <= sp->opts.inline_memory;
}

int spool_msg_append(struct spool_msg *m, const void *bytes, size_t len,
		     char *err, size_t errlen)
{
	if (len == 0)
		return 0;
	if (m->fd < 0 && !msg_fits_memory(m, len) && msg_spill(m, err, errlen) < 0)
		return -1;
	if (m->fd >= 0) {
		if (write_all(m->fd, bytes, len) < 0) {
			seterr(err, errlen, "write %s/body/%s: %s", m->sp->path,
			       m->tmpname, strerror(errno));
			return -1;
		}
	} else if (msg_mem_append(m, bytes, len, err, errlen) < 0) {
		return -1;
	}
	m->env.body_crc = spool_record_crc32(m->env.body_crc, bytes, len);
	m->env.size += len;
	return 0;
}

uint64_t spool_msg_size(const struct spool_msg *m)
{
	return m->env.size;
}

/* Frees the builder; unlinks `name` in body/ if given. */
static void msg_free(struct spool_msg *m, const char *unlink_name)
{
	if (m->fd >= 0)
		close(m->fd);
	if (unlink_name != NULL && unlink_name[0] != '\0' &&
	    unlinkat(m->sp->bodyfd, unlink_name, 0) < 0 && errno != ENOENT)
		evlog_emit(m->sp->log, EV_SPOOL_FILE_CLEANUP_FAILED,
			   EVF_S("file", unlink_name), EVF_S("reason", strerror(errno)));
	msg_mem_release(m);
	spool_record_envelope_clear(&m->env);
	free(m);
}

void spool_msg_abort(struct spool_msg **mp)
{
	struct spool_msg *m = *mp;

	if (m == NULL)
		return;
	msg_free(m, m->tmpname);
	*mp = NULL;
}

/* ---- the spool thread: group commit ----------------------------------- */

static void env_reopen_if_due(struct spool *sp);

struct done_ctx {
	spool_done_fn *done;
	void *arg;
	int rc;
	char qid[SPOOL_QID_SIZE];
	char err[ERRLEN];
};

static void done_cb(evutil_socket_t fd, short what, void *p)
{
	struct done_ctx *ctx = p;

	ctx->done(ctx->arg, ctx->rc, ctx->qid, ctx->rc == 0 ? NULL : ctx->err);
	free(ctx);
}

/* Reports one entry's result to its waiter and frees it. */
static void complete(struct spool *sp, struct pending *p)
{
	static const struct timeval zero_tv = { 0, 0 };
	struct done_ctx *ctx;

	if (p->sync != NULL) {
		pthread_mutex_lock(&p->sync->mu);
		p->sync->rc = p->rc;
		memcpy(p->sync->qid, p->qid, SPOOL_QID_SIZE);
		memcpy(p->sync->err, p->err, ERRLEN);
		p->sync->done = true;
		pthread_cond_signal(&p->sync->cv);
		pthread_mutex_unlock(&p->sync->mu);
	} else {
		ctx = malloc(sizeof *ctx);
		if (ctx != NULL) {
			ctx->done = p->done;
			ctx->arg = p->arg;
			ctx->rc = p->rc;
			memcpy(ctx->qid, p->qid, SPOOL_QID_SIZE);
			memcpy(ctx->err, p->err, ERRLEN);
		}
		if (ctx == NULL ||
		    event_base_once(p->base, -1, EV_TIMEOUT, done_cb, ctx, &zero_tv) < 0) {
			evlog_emit(sp->log, EV_SPOOL_COMPLETION_LOST,
				   EVF_S("qid", p->qid),
				   EVF_S("reason", ctx ? "event_base_once failed" : "out of memory"));
			free(ctx);
		}
	}
	if (p->msg != NULL)
		msg_free(p->msg, NULL);
	free(p->upd.reply);
	free(p->rec);
	free(p);
}

static void fail(struct pending *p, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void fail(struct pending *p, const char *fmt, ...)
{
	va_list ap;

	if (p->rc != 0)
		return;
	p->rc = -1;
	p->fault = true;
	va_start(ap, fmt);
	vsnprintf(p->err, sizeof p->err, fmt, ap);
	va_end(ap);
}

/* Makes a spilled body durable under its final name body/<qid>. */
static void prepare_file(struct spool *sp, struct pending *p)
{
	struct spool_msg *m = p->msg;
	int rc;

	if (m->fd < 0)
		return;
	stats_add(sp, &sp->stats.fsyncs, 1);
	rc = fdatasync(m->fd);
	if (rc < 0)
		fail(p, "fdatasync %s/body/%s: %s", sp->path, m->tmpname, strerror(errno));
	if (close(m->fd) < 0 && rc == 0)
		fail(p, "close %s/body/%s: %s", sp->path, m->tmpname, strerror(errno));
	m->fd = -1;
	if (p->rc == 0 && renameat(sp->bodyfd, m->tmpname, sp->bodyfd, m->env.qid) < 0)
		fail(p, "rename %s/body/%s: %s", sp->path, m->tmpname, strerror(errno));
	if (p->rc == 0)
		m->tmpname[0] = '\0';   /* now named body/<qid> */
}

/* Refuses the batch when the filesystem is short of margin + its bytes. */
static void check_space(struct spool *sp, struct pending *list)
{
	struct statvfs vs;
	uint64_t need = sp->opts.space_margin, avail;

	for (struct pending *p = list; p; p = p->next)
		if (p->rc == 0 && p->msg != NULL)
			need += p->reclen + p->msg->memlen;
	if (fstatvfs(sp->dirfd, &vs) < 0)
		return;   /* cannot tell; let the write itself fail */
	avail = (uint64_t)vs.f_bavail * vs.f_frsize;
	if (avail >= need)
		return;
	for (struct pending *p = list; p; p = p->next)
		if (p->msg != NULL)   /* updates and removals still go through */
			fail(p, "only %llu bytes free on the filesystem of %s, below spool.space_margin %llu plus this batch",
			     (unsigned long long)avail, sp->path,
			     (unsigned long long)sp->opts.space_margin);
}

static int put_body(struct spool *sp, MDB_txn *txn, struct spool_msg *m)
{
	MDB_val k = { .mv_size = SPOOL_QID_LEN, .mv_data = m->env.qid };
	MDB_val v = { .mv_size = m->memlen + SPOOL_RECORD_OVERHEAD, .mv_data = NULL };
	uint8_t *b;
	uint32_t crc;
	int rc;

	rc = mdb_put(txn, sp->db_body, &k, &v, MDB_NOOVERWRITE | MDB_RESERVE);
	if (rc != 0)
		return rc;
	b = v.mv_data;
	crc = spool_record_header(b, SPOOL_RECORD_BODY, (uint32_t)m->memlen);
	if (m->memlen > 0)
		memcpy(b + 8, m->mem, m->memlen);
	/* from the CRC taken as the bytes arrived: no second pass, and a
	 * byte damaged in memory since then shows at the next read */
	crc = spool_record_crc32_combine(crc, m->env.body_crc, m->memlen);
	spool_record_put_u32(b + 8 + m->memlen, crc);
	return 0;
}

/* Writes the messages of `list` that are still ok (all of them, or only
 * `one`) in one LMDB write transaction: 0 or an LMDB/errno code.
 * *begun_r tells whether the txn began (else nothing was tried). */
static int write_txn(struct spool *sp, struct pending *list, struct pending *one,
		     bool *begun_r)
{
	MDB_txn *txn = NULL;
	int rc;

	rc = mdb_txn_begin(sp->env, NULL, 0, &txn);
	*begun_r = rc == 0;
	for (struct pending *p = list; rc == 0 && p; p = p->next) {
		MDB_val k = { .mv_size = SPOOL_QID_LEN, .mv_data = p->qid };
		MDB_val v = { .mv_size = p->reclen, .mv_data = p->rec };

		if (p->rc != 0 || (one != NULL && p != one))
			continue;
		if (p->msg == NULL) {
			/* a change that is refused writes nothing: the txn goes on */
			int r = spool_read_apply(sp, txn, p->qid, &p->upd, &p->res);

			rc = p->res.lmdb;
			if (rc == 0 && r != 0) {
				p->rc = r;
				memcpy(p->err, p->res.why, ERRLEN);
			}
			continue;
		}
		rc = mdb_put(txn, sp->db_env, &k, &v, MDB_NOOVERWRITE);
		if (rc == 0 && !p->msg->env.body_in_file)
			rc = put_body(sp, txn, p->msg);
	}
	if (rc == 0)
		return mdb_txn_commit(txn);
	if (txn != NULL)
		mdb_txn_abort(txn);
	return rc;
}

/*
 * Commits every entry still ok in the list in one transaction.  If that
 * fails (say MDB_MAP_FULL because of one big message), retries each alone
 * so one entry cannot fail the others.  Returns how many commits were made;
 * afterwards every entry with rc 0 is durable.
 */
static size_t write_batch(struct spool *sp, struct pending *list)
{
	char why[160];
	size_t n_ok = 0, commits = 0;
	bool begun, fatal;
	int rc;

	for (struct pending *p = list; p; p = p->next)
		n_ok += p->rc == 0;
	if (n_ok == 0)
		return 0;
	rc = write_txn(sp, list, NULL, &begun);
	if (rc != 0 && !begun && spool_env_failed(sp, rc)) {
		/* Fatal before this batch wrote anything (another thread's
		 * commit failed): reopen and try once more. */
		env_reopen_if_due(sp);
		if (sp->env != NULL)
			rc = write_txn(sp, list, NULL, &begun);
	}
	if (rc == 0)
		return 1;
	/* After a fatal error every later txn fails: the whole batch gets
	 * its temporary failure now and the thread reopens the environment. */
	fatal = sp->env == NULL || spool_env_failed(sp, rc);
	if (n_ok > 1 && !fatal)
		/* Said out loud: an EIO here is the disk's first warning. */
		evlog_emit(sp->log, EV_SPOOL_COMMIT_RETRIED, EVF_S("path", sp->path),
			   EVF_I("entries", n_ok), EVF_S("reason", mdb_reason(sp, rc, why, sizeof why)));
	for (struct pending *p = list; p; p = p->next) {
		if (p->rc != 0)
			continue;
		if (n_ok > 1 && !fatal)
			rc = write_txn(sp, list, p, &begun);
		if (rc == 0 && p->rc == 0)
			commits++;
		else if (rc != 0)
			fail(p, "spool %s: LMDB commit: %s", sp->path,
			     mdb_reason(sp, rc, why, sizeof why));
	}
	return commits;
}

/* Makes the new messages' body files durable and encodes envelopes. */
static void prepare_messages(struct spool *sp, struct pending *list)
{
	size_t n_files = 0;

	/* start writeback of every body file at once, then wait for each */
	for (struct pending *p = list; p; p = p->next)
		if (p->msg != NULL && p->msg->fd >= 0)
			sync_file_range(p->msg->fd, 0, 0, SYNC_FILE_RANGE_WRITE);
	for (struct pending *p = list; p; p = p->next) {
		if (p->msg == NULL)
			continue;
		prepare_file(sp, p);
		n_files += p->rc == 0 && p->msg->env.body_in_file;
	}
	if (n_files > 0) {
		stats_add(sp, &sp->stats.fsyncs, 1);
		if (fsync(sp->bodyfd) < 0)
			for (struct pending *p = list; p; p = p->next)
				if (p->msg != NULL && p->msg->env.body_in_file)
					fail(p, "fsync %s/body: %s", sp->path, strerror(errno));
	}
	for (struct pending *p = list; p; p = p->next)
		if (p->msg != NULL && p->rc == 0 &&
		    spool_record_encode_envelope(&p->msg->env, &p->rec, &p->reclen) < 0)
			fail(p, "out of memory encoding the envelope");
}

static void count_batch(struct spool *sp, struct pending *list, size_t commits)
{
	size_t n_msg = 0, n_chg = 0, bad_msg = 0, bad_chg = 0;
	const char *why = "";

	for (struct pending *p = list; p; p = p->next) {
		if (p->fault && why[0] == '\0')
			why = p->err;
		if (p->msg != NULL) {
			n_msg += p->rc == 0;
			bad_msg += p->rc != 0;
		} else {
			n_chg += p->rc == 0;
			bad_chg += p->fault;
		}
	}
	pthread_mutex_lock(&sp->mu);
	sp->stats.commits += commits;
	sp->stats.fsyncs += commits;
	sp->stats.messages_committed += n_msg;
	sp->stats.changes_committed += n_chg;
	if (commits == 1 && n_msg + n_chg > sp->stats.max_batch)
		sp->stats.max_batch = n_msg + n_chg;
	sp->stats.commit_failures += bad_msg;
	pthread_mutex_unlock(&sp->mu);
	if (bad_msg + bad_chg > 0)
		evlog_emit(sp->log, EV_SPOOL_COMMIT_FAILED, EVF_S("path", sp->path),
			   EVF_I("messages", bad_msg), EVF_I("changes", bad_chg),
			   EVF_S("reason", why));
}

/* After the commit: remove files of failed messages and of removed ones,
 * quarantine damaged envelopes met by changes, report every result. */
static void finish_batch(struct spool *sp, struct pending *list)
{
	struct pending *next;

	for (struct pending *p = list; p; p = next) {
		next = p->next;
		if (p->msg != NULL && p->rc != 0 && p->msg->env.body_in_file) {
			const char *name = p->msg->tmpname[0] ? p->msg->tmpname : p->msg->env.qid;

			if (unlinkat(sp->bodyfd, name, 0) < 0 && errno != ENOENT)
				evlog_emit(sp->log, EV_SPOOL_FILE_CLEANUP_FAILED,
					   EVF_S("file", name), EVF_S("reason", strerror(errno)));
		}
		if (p->msg == NULL && p->rc == 0 && p->upd.op == SPOOL_OP_REMOVE &&
		    p->res.had_file)
			spool_read_unlink_body(sp, p->qid);
		if (p->msg == NULL && p->res.damaged) {
			MDB_val k = { .mv_size = strlen(p->qid), .mv_data = p->qid };

			spool_read_quarantine_key(sp, &k, p->res.why, NULL, 0);
		}
		complete(sp, p);
	}
}

static void commit_batch(struct spool *sp, struct pending *list)
{
	size_t commits = 0;

	prepare_messages(sp, list);
	check_space(sp, list);
	env_reopen_if_due(sp);
	if (sp->env != NULL) {
		commits = write_batch(sp, list);
	} else {
		for (struct pending *p = list; p; p = p->next)
			fail(p, "spool %s is unavailable: reopening it after a disk error failed, retrying",
			     sp->path);
	}
	count_batch(sp, list, commits);
	finish_batch(sp, list);
	/* After a failed commit made LMDB fatal: reopen now, so the next
	 * message is accepted. */
	env_reopen_if_due(sp);
}

static bool reopen_due_locked(struct spool *sp)
{
	struct timespec now;

	if (!sp->reopen_wanted)
		return false;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return now.tv_sec > sp->reopen_at.tv_sec ||
	       (now.tv_sec == sp->reopen_at.tv_sec && now.tv_nsec >= sp->reopen_at.tv_nsec);
}

/* Waits for work, a reopen that is due, or stopping; sp->mu is held. */
static void thread_wait(struct spool *sp)
{
	while (sp->head == NULL && !sp->stopping && !reopen_due_locked(sp)) {
		if (sp->reopen_wanted)
			pthread_cond_timedwait(&sp->cv, &sp->mu, &sp->reopen_at);
		else
			pthread_cond_wait(&sp->cv, &sp->mu);
	}
}

/* A queue of only results and removals waits up to SPOOL_RESULT_HOLD_US
 * for a message to commit with (or a full batch, or stopping); sp->mu is
 * held. */
static void hold_results(struct spool *sp)
{
	struct timespec until;

	if (sp->n_msgs_queued > 0 || sp->stopping || sp->reopen_wanted)
		return;
	clock_gettime(CLOCK_MONOTONIC, &until);
	until.tv_nsec += SPOOL_RESULT_HOLD_US * 1000L;
	if (until.tv_nsec >= 1000000000L) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000L;
	}
	while (sp->n_msgs_queued == 0 && !sp->stopping &&
	       sp->n_queued < sp->opts.max_batch)
		if (pthread_cond_timedwait(&sp->cv, &sp->mu, &until) == ETIMEDOUT)
			break;
}

static void *spool_thread_main(void *arg)
{
	struct spool *sp = arg;

	pthread_mutex_lock(&sp->mu);
	for (;;) {
		struct pending *batch, **pp;
		unsigned n = 0;

		thread_wait(sp);
		if (sp->head == NULL && !sp->stopping) {   /* a reopen is due */
			pthread_mutex_unlock(&sp->mu);
			env_reopen_if_due(sp);
			pthread_mutex_lock(&sp->mu);
			continue;
		}
		if (sp->head == NULL)
			break;
		hold_results(sp);
		if (sp->opts.commit_delay_us > 0 && !sp->stopping) {
			pthread_mutex_unlock(&sp->mu);
			usleep(sp->opts.commit_delay_us);
			pthread_mutex_lock(&sp->mu);
		}
		batch = sp->head;
		pp = &sp->head;
		while (*pp != NULL && n < sp->opts.max_batch) {
			sp->n_msgs_queued -= (*pp)->msg != NULL;
			pp = &(*pp)->next;
			n++;
		}
		sp->n_queued -= n;
		sp->head = *pp;
		*pp = NULL;
		if (sp->head == NULL)
			sp->tail = &sp->head;
		pthread_mutex_unlock(&sp->mu);
		commit_batch(sp, batch);
		pthread_mutex_lock(&sp->mu);
	}
	pthread_mutex_unlock(&sp->mu);
	return NULL;
}

/* Queues p for the spool thread; on -1 the caller frees p. */
static int enqueue(struct spool *sp, struct pending *p, char *err, size_t errlen)
{
	pthread_mutex_lock(&sp->mu);
	if (sp->stopping) {
		pthread_mutex_unlock(&sp->mu);
		seterr(err, errlen, "spool %s is closing", sp->path);
		return -1;
	}
	*sp->tail = p;
	sp->tail = &p->next;
	sp->n_queued++;
	sp->n_msgs_queued += p->msg != NULL;
	pthread_cond_signal(&sp->cv);
	pthread_mutex_unlock(&sp->mu);
	return 0;
}

static int enqueue_msg(struct spool *sp, struct spool_msg *m, struct event_base *base,
		       spool_done_fn *done, void *arg, struct sync_wait *sync,
		       char *err, size_t errlen)
{
	struct pending *p;

	if (!m->sender_set || m->env.n_rcpts == 0) {
		seterr(err, errlen, "message %s has no %s", m->env.qid,
		       m->sender_set ? "recipient" : "sender");
		msg_free(m, m->tmpname);
		return -1;
	}
	p = calloc(1, sizeof *p);
	if (p == NULL) {
		seterr(err, errlen, "out of memory queueing message %s", m->env.qid);
		msg_free(m, m->tmpname);
		return -1;
	}
	p->msg = m;
	memcpy(p->qid, m->env.qid, SPOOL_QID_SIZE);
	p->base = base;
	p->done = done;
	p->arg = arg;
	p->sync = sync;
	if (enqueue(sp, p, err, errlen) < 0) {
		msg_free(m, m->tmpname);
		free(p);
		return -1;
	}
	return 0;
}

static int enqueue_change(struct spool *sp, const char *qid, const struct spool_update *u,
			  struct event_base *base, spool_done_fn *done, void *arg,
			  char *err, size_t errlen)
{
	struct pending *p;

	if (base == NULL || done == NULL || strlen(qid) >= SPOOL_QID_SIZE) {
		seterr(err, errlen, "no event base, no callback or a bad queue ID");
		return -1;
	}
	p = calloc(1, sizeof *p);
	if (p == NULL || (u->reply != NULL && (p->upd.reply = strdup(u->reply)) == NULL)) {
		seterr(err, errlen, "out of memory queueing a change to %s", qid);
		free(p);
		return -1;
	}
	p->upd.op = u->op;
	p->upd.idx = u->idx;
	p->upd.state = u->state;
	p->upd.next_attempt = u->next_attempt;
	memcpy(p->qid, qid, strlen(qid) + 1);
	p->base = base;
	p->done = done;
	p->arg = arg;
	if (enqueue(sp, p, err, errlen) < 0) {
		free(p->upd.reply);
		free(p);
		return -1;
	}
	return 0;
}

int spool_rcpt_update_async(struct spool *sp, const char *qid, size_t rcpt_index,
			    enum spool_rcpt_state state, const char *reply,
			    int64_t next_attempt, struct event_base *base,
			    spool_done_fn *done, void *arg, char *err, size_t errlen)
{
	struct spool_update u = {
		.op = SPOOL_OP_UPDATE, .idx = rcpt_index, .state = state,
		.reply = (char *)reply, .next_attempt = next_attempt,
	};

	if (state > SPOOL_RCPT_FAILED || (reply != NULL && !str_ok(reply))) {
		seterr(err, errlen, "invalid recipient state %d or reply text", (int)state);
		return -1;
	}
	return enqueue_change(sp, qid, &u, base, done, arg, err, errlen);
}

int spool_remove_async(struct spool *sp, const char *qid, struct event_base *base,
		       spool_done_fn *done, void *arg, char *err, size_t errlen)
{
	struct spool_update u = { .op = SPOOL_OP_REMOVE };

	return enqueue_change(sp, qid, &u, base, done, arg, err, errlen);
}

int spool_commit_async(struct spool *sp, struct spool_msg **msgp,
		       struct event_base *base, spool_done_fn *done, void *arg,
		       char *err, size_t errlen)
{
	struct spool_msg *m = *msgp;

	*msgp = NULL;
	if (base == NULL || done == NULL) {
		seterr(err, errlen, "spool_commit_async: no event base or callback");
		msg_free(m, m->tmpname);
		return -1;
	}
	return enqueue_msg(sp, m, base, done, arg, NULL, err, errlen);
}

int spool_commit(struct spool *sp, struct spool_msg **msgp,
		 char qid_r[SPOOL_QID_SIZE], char *err, size_t errlen)
{
	struct sync_wait w = { .done = false };
	struct spool_msg *m = *msgp;

	*msgp = NULL;
	pthread_mutex_init(&w.mu, NULL);
	pthread_cond_init(&w.cv, NULL);
	if (enqueue_msg(sp, m, NULL, NULL, NULL, &w, err, errlen) < 0) {
		w.rc = -1;
	} else {
		pthread_mutex_lock(&w.mu);
		while (!w.done)
			pthread_cond_wait(&w.cv, &w.mu);
		pthread_mutex_unlock(&w.mu);
		if (w.rc != 0)
			seterr(err, errlen, "%s", w.err);
		else if (qid_r != NULL)
			memcpy(qid_r, w.qid, SPOOL_QID_SIZE);
	}
	pthread_mutex_destroy(&w.mu);
	pthread_cond_destroy(&w.cv);
	return w.rc == 0 ? 0 : -1;
}

void spool_stats(struct spool *sp, struct spool_stats *r)
{
	pthread_mutex_lock(&sp->mu);
	*r = sp->stats;
	pthread_mutex_unlock(&sp->mu);
}

/* ---- open, close ------------------------------------------------------ */

static int mkdir_p(const char *path, char *err, size_t errlen)
{
	char buf[4096];
	size_t len = strlen(path);

	if (len == 0 || len >= sizeof buf) {
		seterr(err, errlen, "spool path '%s' is empty or too long", path);
		return -1;
	}
	memcpy(buf, path, len + 1);
	for (char *p = buf + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(buf, 0755) < 0 && errno != EEXIST) {
			seterr(err, errlen, "mkdir %s: %s", buf, strerror(errno));
			return -1;
		}
		*p = '/';
	}
	if (mkdir(buf, 0700) < 0 && errno != EEXIST) {
		seterr(err, errlen, "mkdir %s: %s", buf, strerror(errno));
		return -1;
	}
	return 0;
}

static int open_subdir(struct spool *sp, const char *name, int *fd_r,
		       char *err, size_t errlen)
{
	if (mkdirat(sp->dirfd, name, 0700) < 0 && errno != EEXIST) {
		seterr(err, errlen, "mkdir %s/%s: %s", sp->path, name, strerror(errno));
		return -1;
	}
	*fd_r = openat(sp->dirfd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (*fd_r < 0) {
		seterr(err, errlen, "open %s/%s: %s", sp->path, name, strerror(errno));
		return -1;
	}
	return 0;
}

static int open_dirs(struct spool *sp, char *err, size_t errlen)
{
	if (mkdir_p(sp->path, err, errlen) < 0)
		return -1;
	sp->dirfd = open(sp->path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (sp->dirfd < 0) {
		seterr(err, errlen, "open %s: %s", sp->path, strerror(errno));
		return -1;
	}
	sp->lockfd = openat(sp->dirfd, "carrier.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (sp->lockfd < 0) {
		seterr(err, errlen, "open %s/carrier.lock: %s", sp->path, strerror(errno));
		return -1;
	}
	if (flock(sp->lockfd, LOCK_EX | LOCK_NB) < 0) {
		seterr(err, errlen, "%s/carrier.lock: %s",
		       sp->path, errno == EWOULDBLOCK ?
		       "the spool is in use by another process" : strerror(errno));
		return -1;
	}
	if (open_subdir(sp, "body", &sp->bodyfd, err, errlen) < 0 ||
	    open_subdir(sp, "quarantine", &sp->quarfd, err, errlen) < 0)
		return -1;
	return 0;
}

static int open_env(struct spool *sp, char *err, size_t errlen)
{
	int rc = mdb_env_create(&sp->env);

	if (rc == 0)
		rc = mdb_env_set_mapsize(sp->env, sp->opts.map_size);
	if (rc == 0)
		rc = mdb_env_set_maxdbs(sp->env, 8);
	if (rc == 0)
		rc = mdb_env_open(sp->env, sp->path, MDB_NOTLS, 0600);
	if (rc != 0) {
		seterr(err, errlen, "mdb_env_open %s: %s", sp->path, mdb_strerror(rc));
		if (sp->env != NULL)
			mdb_env_close(sp->env);
		sp->env = NULL;
		return -1;
	}
	mdb_reader_check(sp->env, NULL);   /* free slots of crashed readers */
	return 0;
}

static int put_meta(struct spool *sp, MDB_txn *txn)
{
	MDB_val k = { .mv_size = strlen(META_KEY), .mv_data = (void *)META_KEY }, v;
	uint8_t *rec;
	size_t len;
	int rc;

	if (spool_record_encode_meta(SPOOL_FORMAT_VERSION, &rec, &len) < 0)
		return ENOMEM;
	v.mv_size = len;
	v.mv_data = rec;
	rc = mdb_put(txn, sp->db_meta, &k, &v, 0);
	free(rec);
	return rc;
}

/* Checks the format version, creates or upgrades, opens the databases.
 * Returns 0, -1 + err, or -2 + err when the version is refused (its own
 * event is emitted already). */
static int setup_dbs(struct spool *sp, bool reopen, char *err, size_t errlen)
{
	MDB_txn *txn;
	unsigned found;
	int rc, present;

	rc = mdb_txn_begin(sp->env, NULL, 0, &txn);
	if (rc != 0) {
		seterr(err, errlen, "mdb_txn_begin %s: %s", sp->path, mdb_strerror(rc));
		return -1;
	}
	present = read_version(txn, sp->path, &found, err, errlen);
	if (present < 0)
		goto fail;
	if (reopen && !present) {
		seterr(err, errlen, "spool %s lost its format record (data.mdb replaced?)", sp->path);
		goto fail;
	}
	if (present && version_verdict(sp->path, found, err, errlen) < 0) {
		evlog_emit(sp->log, EV_SPOOL_VERSION_REFUSED, EVF_S("path", sp->path),
			   EVF_I("found", found), EVF_I("oldest", SPOOL_FORMAT_OLDEST),
			   EVF_I("supported", SPOOL_FORMAT_VERSION));
		mdb_txn_abort(txn);
		return -2;
	}
	rc = mdb_dbi_open(txn, "meta", MDB_CREATE, &sp->db_meta);
	if (rc == 0)
		rc = mdb_dbi_open(txn, "env", MDB_CREATE, &sp->db_env);
	if (rc == 0)
		rc = mdb_dbi_open(txn, "body", MDB_CREATE, &sp->db_body);
	if (rc == 0)
		rc = mdb_dbi_open(txn, "quarantine", MDB_CREATE, &sp->db_quar);
	/* Upgrades from older formats would run here, step by step, in this
	 * same transaction; format 1 is the first, so there are none yet. */
	if (rc == 0 && (!present || found != SPOOL_FORMAT_VERSION))
		rc = put_meta(sp, txn);
	if (rc == 0)
		rc = mdb_txn_commit(txn);
	else
		mdb_txn_abort(txn);
	if (rc != 0) {
		seterr(err, errlen, "creating the databases in %s: %s", sp->path,
		       mdb_strerror(rc));
		return -1;
	}
	if (!present)
		evlog_emit(sp->log, EV_SPOOL_CREATED, EVF_S("path", sp->path),
			   EVF_I("version", SPOOL_FORMAT_VERSION));
	else if (found < SPOOL_FORMAT_VERSION)
		evlog_emit(sp->log, EV_SPOOL_UPGRADED, EVF_S("path", sp->path),
			   EVF_I("from", found), EVF_I("to", SPOOL_FORMAT_VERSION));
	return 0;
fail:
	mdb_txn_abort(txn);
	return -1;
}

/* Checks that the body an envelope points at exists (and, for a file,
 * has the size the envelope records). */
static int body_present(struct spool *sp, MDB_txn *txn,
			const struct spool_envelope *env, char *why, size_t whylen)
{
	MDB_val k = { .mv_size = SPOOL_QID_LEN, .mv_data = (void *)env->qid }, v;
	struct stat st;

	if (env->body_in_file) {
		if (fstatat(sp->bodyfd, env->qid, &st, 0) < 0) {
			seterr(why, whylen, "body file %s/body/%s: %s", sp->path,
			       env->qid, strerror(errno));
			return -1;
		}
		if ((uint64_t)st.st_size != env->size) {
			seterr(why, whylen, "body file %s/body/%s has %lld bytes, the envelope says %llu",
			       sp->path, env->qid, (long long)st.st_size,
			       (unsigned long long)env->size);
			return -1;
		}
		return 0;
	}
	if (mdb_get(txn, sp->db_body, &k, &v) == 0)
		return 0;
	seterr(why, whylen, "its inline body record is missing");
	return -1;
}

/* Messages whose recipients are all final, met by the scan at open. */
struct final_list {
	struct final_msg {
		char qid[SPOOL_QID_SIZE];
		bool file;
	} *v;
	size_t n, cap;
};

static void final_add(struct final_list *f, const struct spool_envelope *env)
{
	if (f->n == f->cap) {
		size_t ncap = f->cap ? f->cap * 2 : 16;
		struct final_msg *nv = realloc(f->v, ncap * sizeof *nv);

		if (nv == NULL)
			return;   /* swept at the next open */
		f->v = nv;
		f->cap = ncap;
	}
	memcpy(f->v[f->n].qid, env->qid, SPOOL_QID_SIZE);
	f->v[f->n].file = env->body_in_file;
	f->n++;
}

/*
 * Removes the listed messages (all recipients DELIVERED or FAILED, but not
 * removed: a crash between the results' commit and the removal's) in one
 * write txn, then their body files.  No notification is lost: the delivery
 * runner commits a report before the results that made it due (delivery.h).
 * Returns how many were removed; frees the list.
 */
static long sweep_final(struct spool *sp, struct final_list *f)
{
	MDB_txn *txn;
	int rc = 0;
	long n = 0;

	if (f->n > 0 && (rc = mdb_txn_begin(sp->env, NULL, 0, &txn)) == 0) {
		for (size_t i = 0; rc == 0 && i < f->n; i++) {
			MDB_val k = { .mv_size = SPOOL_QID_LEN, .mv_data = f->v[i].qid };

			rc = mdb_del(txn, sp->db_env, &k, NULL);
			if (rc == 0 && !f->v[i].file) {
				rc = mdb_del(txn, sp->db_body, &k, NULL);
				rc = rc == MDB_NOTFOUND ? 0 : rc;
			}
		}
		rc = rc == 0 ? mdb_txn_commit(txn) : (mdb_txn_abort(txn), rc);
	}
	if (rc != 0) {
		char why[160];

		evlog_emit(sp->log, EV_SPOOL_COMMIT_FAILED, EVF_S("path", sp->path),
			   EVF_I("messages", 0), EVF_I("changes", f->n),
			   EVF_S("reason", mdb_reason(sp, rc, why, sizeof why)));
	} else if (f->n > 0) {
		for (size_t i = 0; i < f->n; i++)
			if (f->v[i].file)
				spool_read_unlink_body(sp, f->v[i].qid);
		n = (long)f->n;
		evlog_emit(sp->log, EV_SPOOL_FINAL_SWEPT, EVF_S("path", sp->path),
			   EVF_I("messages", n));
	}
	free(f->v);
	memset(f, 0, sizeof *f);
	return n;
}

/* Walks every envelope at open (and reopen): quarantines damaged ones,
 * seeds the qid generator past every stored qid, with `sweep` removes
 * finished ones (sweep_final); returns the number of messages left. */
static long scan_envelopes(struct spool *sp, bool sweep, char *err, size_t errlen)
{
	struct spool_badlist bad = { 0 };
	struct final_list fin = { 0 };
	MDB_txn *txn;
	MDB_cursor *cur;
	MDB_val k, v;
	long good = 0;
	int rc;

	rc = mdb_txn_begin(sp->env, NULL, MDB_RDONLY, &txn);
	if (rc == 0 && (rc = mdb_cursor_open(txn, sp->db_env, &cur)) != 0)
		mdb_txn_abort(txn);
	if (rc != 0) {
		seterr(err, errlen, "reading %s: %s", sp->path, mdb_strerror(rc));
		return -1;
	}
	for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
	     rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		struct spool_envelope *env = NULL;
		char why[ERRLEN];

		if (spool_read_decode_env(&k, &v, &env, why, sizeof why) < 0 ||
		    body_present(sp, txn, env, why, sizeof why) < 0) {
			spool_read_bad_add(&bad, &k, why);
		} else {
			qid_seed(sp, env->qid);
			good++;
			if (sweep && !spool_env_pending(env))
				final_add(&fin, env);
		}
		spool_envelope_free(&env);
	}
	mdb_cursor_close(cur);
	if (mdb_cursor_open(txn, sp->db_quar, &cur) == 0) {
		if (mdb_cursor_get(cur, &k, &v, MDB_LAST) == 0 &&
		    spool_record_qid_valid(k.mv_data, k.mv_size)) {
			char q[SPOOL_QID_SIZE];

			memcpy(q, k.mv_data, SPOOL_QID_LEN);
			q[SPOOL_QID_LEN] = '\0';
			qid_seed(sp, q);
		}
		mdb_cursor_close(cur);
	}
	mdb_txn_abort(txn);
	spool_read_bad_flush(sp, &bad);
	return good - sweep_final(sp, &fin);
}

/* Removes body files no envelope references: *.tmp left by a crash during
 * DATA, or bodies whose commit never happened (never acknowledged). */
static void sweep_orphans(struct spool *sp)
{
	MDB_txn *txn;
	struct dirent *de;
	DIR *d;
	int fd = dup(sp->bodyfd);

	if (fd < 0 || (d = fdopendir(fd)) == NULL) {
		if (fd >= 0)
			close(fd);
		return;
	}
	if (mdb_txn_begin(sp->env, NULL, MDB_RDONLY, &txn) != 0) {
		closedir(d);
		return;
	}
	while ((de = readdir(d)) != NULL) {
		size_t len = strlen(de->d_name);
		bool tmp = len == SPOOL_QID_LEN + 4 && strcmp(de->d_name + SPOOL_QID_LEN, ".tmp") == 0;
		MDB_val k = { .mv_size = SPOOL_QID_LEN, .mv_data = de->d_name }, v;
		char file[4200];

		if (!spool_record_qid_valid(de->d_name, tmp ? SPOOL_QID_LEN : len))
			continue;
		if (!tmp && mdb_get(txn, sp->db_env, &k, &v) == 0)
			continue;
		snprintf(file, sizeof file, "%s/body/%s", sp->path, de->d_name);
		if (unlinkat(sp->bodyfd, de->d_name, 0) == 0)
			evlog_emit(sp->log, EV_SPOOL_ORPHAN_REMOVED, EVF_S("file", file));
		else
			evlog_emit(sp->log, EV_SPOOL_FILE_CLEANUP_FAILED,
				   EVF_S("file", file), EVF_S("reason", strerror(errno)));
	}
	mdb_txn_abort(txn);
	closedir(d);
}

static void spool_free(struct spool *sp)
{
	if (sp->env != NULL)
		mdb_env_close(sp->env);
	if (sp->bodyfd >= 0)
		close(sp->bodyfd);
	if (sp->quarfd >= 0)
		close(sp->quarfd);
	if (sp->dirfd >= 0)
		close(sp->dirfd);
	if (sp->lockfd >= 0)
		close(sp->lockfd);   /* releases the flock last */
	pthread_mutex_destroy(&sp->mu);
	pthread_mutex_destroy(&sp->qid_mu);
	pthread_cond_destroy(&sp->cv);
	pthread_rwlock_destroy(&sp->env_lock);
	free(sp->path);
	free(sp);
}

static struct spool *spool_alloc(const char *path, const struct spool_opts *opts,
				 struct evlog *log)
{
	struct spool *sp = calloc(1, sizeof *sp);
	pthread_condattr_t ca;

	if (sp == NULL)
		return NULL;
	sp->dirfd = sp->bodyfd = sp->quarfd = sp->lockfd = -1;
	spool_opts_init(&sp->opts);
	if (opts != NULL) {
		sp->opts = *opts;
		if (sp->opts.map_size == 0)
			sp->opts.map_size = (size_t)1 << 30;
		if (sp->opts.inline_max == 0)
			sp->opts.inline_max = 256 * 1024;
		if (sp->opts.inline_memory == 0)
			sp->opts.inline_memory = (size_t)64 << 20;
		if (sp->opts.max_batch == 0)
			sp->opts.max_batch = 1024;
	}
	sp->log = log;
	sp->tail = &sp->head;
	pthread_mutex_init(&sp->mu, NULL);
	pthread_mutex_init(&sp->qid_mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&sp->cv, &ca);
	pthread_condattr_destroy(&ca);
	pthread_rwlock_init(&sp->env_lock, NULL);   /* reader-preferring */
	sp->path = strdup(path);
	if (sp->path == NULL) {
		spool_free(sp);
		return NULL;
	}
	return sp;
}

/* ---- reopen after a fatal LMDB error ------------------------------------ */

/* True when LMDB refuses every txn (its MDB_FATAL_ERROR flag is not
 * exported; a read txn's begin tells).  Only on failure paths. */
static bool env_fatal(struct spool *sp)
{
	MDB_txn *txn;
	int rc = mdb_txn_begin(sp->env, NULL, MDB_RDONLY, &txn);

	if (rc == 0)
		mdb_txn_abort(txn);
	return rc == MDB_PANIC;
}

bool spool_env_failed(struct spool *sp, int rc)
{
	if (rc == 0 || rc == MDB_NOTFOUND || rc == MDB_MAP_FULL || sp->env == NULL)
		return false;
	if (rc != MDB_PANIC && !env_fatal(sp))
		return false;
	pthread_mutex_lock(&sp->mu);
	if (!sp->reopen_wanted) {
		sp->reopen_wanted = true;
		sp->reopen_delay_s = 0;
		clock_gettime(CLOCK_MONOTONIC, &sp->reopen_at);   /* at once */
		snprintf(sp->reopen_reason, sizeof sp->reopen_reason, "%s", mdb_strerror(rc));
		pthread_cond_signal(&sp->cv);
	}
	pthread_mutex_unlock(&sp->mu);
	return true;
}

/* Closes and reopens the environment; env_lock is held exclusively. */
static long env_reopen(struct spool *sp, char *err, size_t errlen)
{
	long n;

	if (sp->env != NULL)
		mdb_env_close(sp->env);   /* before the new one: same process */
	sp->env = NULL;
	if (open_env(sp, err, errlen) < 0)
		return -1;
	if (setup_dbs(sp, true, err, errlen) < 0 ||
	    (n = scan_envelopes(sp, false, err, errlen)) < 0) {
		mdb_env_close(sp->env);
		sp->env = NULL;
		return -1;
	}
	return n;
}

/* Spool thread: when a reopen is wanted and due, reopens; on failure
 * leaves env NULL and schedules the next try (1 s, doubling to 60 s). */
static void env_reopen_if_due(struct spool *sp)
{
	char why[ERRLEN + 64], reason[ERRLEN];
	unsigned delay;
	long n;

	pthread_mutex_lock(&sp->mu);
	if (!reopen_due_locked(sp)) {
		pthread_mutex_unlock(&sp->mu);
		return;
	}
	memcpy(reason, sp->reopen_reason, sizeof reason);
	pthread_mutex_unlock(&sp->mu);

	pthread_rwlock_wrlock(&sp->env_lock);
	n = env_reopen(sp, why, sizeof why);
	pthread_rwlock_unlock(&sp->env_lock);

	pthread_mutex_lock(&sp->mu);
	if (n >= 0) {
		sp->reopen_wanted = false;
		sp->reopen_delay_s = 0;
	} else {
		sp->reopen_delay_s = sp->reopen_delay_s ? sp->reopen_delay_s * 2 : 1;
		if (sp->reopen_delay_s > 60)
			sp->reopen_delay_s = 60;
		clock_gettime(CLOCK_MONOTONIC, &sp->reopen_at);
		sp->reopen_at.tv_sec += sp->reopen_delay_s;
	}
	delay = sp->reopen_delay_s;
	pthread_mutex_unlock(&sp->mu);
	if (n >= 0)
		evlog_emit(sp->log, EV_SPOOL_REOPENED, EVF_S("path", sp->path),
			   EVF_S("reason", reason), EVF_I("messages", n));
	else
		evlog_emit(sp->log, EV_SPOOL_REOPEN_FAILED, EVF_S("path", sp->path),
			   EVF_S("reason", why), EVF_I("retry_s", delay));
}

struct spool *spool_open(const char *path, const struct spool_opts *opts,
			 struct evlog *log, char *err, size_t errlen)
{
	struct spool *sp = spool_alloc(path, opts, log);
	char why[ERRLEN + 64];
	long n;
	int rc = 0;

	if (sp == NULL) {
		seterr(err, errlen, "spool_open %s: out of memory", path);
		return NULL;
	}
	if (open_dirs(sp, why, sizeof why) < 0 || open_env(sp, why, sizeof why) < 0 ||
	    (rc = setup_dbs(sp, false, why, sizeof why)) < 0 ||
	    (n = scan_envelopes(sp, true, why, sizeof why)) < 0)
		goto fail;
	sweep_orphans(sp);
	rc = pthread_create(&sp->thread, NULL, spool_thread_main, sp);
	if (rc != 0) {
		seterr(why, sizeof why, "pthread_create: %s", strerror(rc));
		goto fail;
	}
	sp->thread_started = true;
	evlog_emit(log, EV_SPOOL_OPENED, EVF_S("path", path),
		   EVF_I("version", SPOOL_FORMAT_VERSION), EVF_I("messages", n),
		   EVF_I("quarantined", sp->stats.quarantined));
	return sp;
fail:
	if (rc != -2)   /* a refused version has its own event already */
		evlog_emit(log, EV_SPOOL_OPEN_FAILED, EVF_S("path", path), EVF_S("reason", why));
	seterr(err, errlen, "%s", why);
	spool_free(sp);
	return NULL;
}

void spool_close(struct spool **spp)
{
	struct spool *sp = *spp;

	if (sp == NULL)
		return;
	if (sp->thread_started) {
		pthread_mutex_lock(&sp->mu);
		sp->stopping = true;
		pthread_cond_signal(&sp->cv);
		pthread_mutex_unlock(&sp->mu);
		pthread_join(sp->thread, NULL);
	}
	evlog_emit(sp->log, EV_SPOOL_CLOSED, EVF_S("path", sp->path),
		   EVF_I("commits", sp->stats.commits),
		   EVF_I("messages", sp->stats.messages_committed));
	spool_free(sp);
	*spp = NULL;
}

static int chown_dir_files(int dfd, const char *what, uid_t uid, gid_t gid,
			   char *err, size_t errlen)
{
	struct dirent *de;
	int fd = dup(dfd), rc = 0;
	DIR *d;

	if (fd < 0 || (d = fdopendir(fd)) == NULL) {
		seterr(err, errlen, "opendir %s: %s", what, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	while (rc == 0 && (de = readdir(d)) != NULL) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		if (fchownat(dfd, de->d_name, uid, gid, AT_SYMLINK_NOFOLLOW) < 0 &&
		    errno != ENOENT) {
			seterr(err, errlen, "chown %s/%s: %s", what, de->d_name, strerror(errno));
			rc = -1;
		}
	}
	closedir(d);
	return rc;
}

int spool_chown(struct spool *sp, uid_t uid, gid_t gid, char *err, size_t errlen)
{
	char what[4200];

	/* the top directory's entries: data.mdb, lock.mdb, carrier.lock,
	 * body, quarantine */
	if (fchown(sp->dirfd, uid, gid) < 0) {
		seterr(err, errlen, "chown %s: %s", sp->path, strerror(errno));
		return -1;
	}
	if (chown_dir_files(sp->dirfd, sp->path, uid, gid, err, errlen) < 0)
		return -1;
	snprintf(what, sizeof what, "%s/body", sp->path);
	if (chown_dir_files(sp->bodyfd, what, uid, gid, err, errlen) < 0)
		return -1;
	snprintf(what, sizeof what, "%s/quarantine", sp->path);
	return chown_dir_files(sp->quarfd, what, uid, gid, err, errlen);
}

int spool_space_ok(struct spool *sp, uint64_t declared_size,
		   char *err, size_t errlen)
{
	struct statvfs vs;
	uint64_t avail, need;

	if (fstatvfs(sp->dirfd, &vs) < 0) {
		seterr(err, errlen, "fstatvfs %s: %s", sp->path, strerror(errno));
		return -1;
	}
	avail = (uint64_t)vs.f_bavail * vs.f_frsize;
	if (declared_size > UINT64_MAX / 4)
		need = UINT64_MAX;
	else
		need = declared_size + declared_size / 2;
	need = need > UINT64_MAX - sp->opts.space_margin ? UINT64_MAX
							 : need + sp->opts.space_margin;
	if (avail >= need)
		return 0;
	seterr(err, errlen,
	       "only %llu bytes free on the filesystem of %s; a %llu-byte message needs %llu (1.5 x size + spool.space_margin %llu)",
	       (unsigned long long)avail, sp->path, (unsigned long long)declared_size,
	       (unsigned long long)need, (unsigned long long)sp->opts.space_margin);
	evlog_emit(sp->log, EV_SPOOL_SPACE_LOW, EVF_S("path", sp->path),
		   EVF_I("free", avail), EVF_I("size", declared_size), EVF_I("need", need));
	return -1;
}
