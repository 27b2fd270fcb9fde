/*
 * spool_read: the spool's read and update side (see spool.h): walking
 * pending messages, loading envelopes and bodies, per-recipient results,
 * removal, and quarantine of damaged records.
 *
 * The public calls run synchronously on the calling thread (delivery,
 * scheduler, control) with their own LMDB transactions, holding env_lock
 * shared so a reopen never closes the environment under them.  The
 * spool_read_* helpers are also used by the spool thread and by
 * open/reopen (which hold no lock, or hold it exclusively).
 */
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "evlog.h"
#include "spool_int.h"
#include "spool_record.h"

struct spool_body {
	uint8_t *mem;
	int fd;
	uint64_t size, pos;
};

/* ---- quarantine ------------------------------------------------------- */

/* Printable form of an LMDB key for events and reasons. */
static void key_text(const MDB_val *k, char *buf, size_t len)
{
	const uint8_t *p = k->mv_data;
	size_t o = 0;

	for (size_t i = 0; i < k->mv_size && o + 5 < len; i++) {
		if (p[i] >= 0x21 && p[i] < 0x7f)
			buf[o++] = (char)p[i];
		else
			o += (size_t)snprintf(buf + o, len - o, "\\x%02x", p[i]);
	}
	buf[o] = '\0';
}

/* Moves the body file of `qid` between body/ and quarantine/. */
static int move_body(struct spool *sp, const char *qid, bool to_quarantine)
{
	int from = to_quarantine ? sp->bodyfd : sp->quarfd;
	int to = to_quarantine ? sp->quarfd : sp->bodyfd;

	if (renameat(from, qid, to, qid) < 0)
		return errno == ENOENT ? 0 : -1;
	fsync(to);
	fsync(from);
	return 1;
}

static int quarantine_txn(struct spool *sp, const MDB_val *key, const char *reason,
			  char *err, size_t errlen)
{
	MDB_txn *txn;
	MDB_val v, qv;
	uint8_t *rec = NULL;
	size_t reclen = 0;
	int rc;

	if (sp->env == NULL) {
		seterr(err, errlen, "the spool is being reopened");
		return -1;
	}
	rc = mdb_txn_begin(sp->env, NULL, 0, &txn);
	if (rc != 0)
		goto out;
	rc = mdb_get(txn, sp->db_env, (MDB_val *)key, &v);
	if (rc == MDB_NOTFOUND) {
		mdb_txn_abort(txn);
		return 1;
	}
	if (rc == 0 && spool_record_encode_quarantine(reason, now_s(), v.mv_data,
						      v.mv_size, &rec, &reclen) < 0)
		rc = ENOMEM;
	qv.mv_data = rec;
	qv.mv_size = reclen;
	if (rc == 0)
		rc = mdb_put(txn, sp->db_quar, (MDB_val *)key, &qv, 0);
	if (rc == 0)
		rc = mdb_del(txn, sp->db_env, (MDB_val *)key, NULL);
	if (rc == 0) {
		rc = mdb_del(txn, sp->db_body, (MDB_val *)key, NULL);
		if (rc == MDB_NOTFOUND)
			rc = 0;
	}
	if (rc == 0)
		rc = mdb_txn_commit(txn);
	else
		mdb_txn_abort(txn);
	free(rec);
out:
	if (rc != 0) {
		spool_env_failed(sp, rc);
		seterr(err, errlen, "LMDB: %s", mdb_strerror(rc));
		return -1;
	}
	return 0;
}

/* Quarantines the envelope stored under `key`: body file first (so a crash
 * never leaves a committed quarantine entry whose body the orphan sweep
 * would delete), then one transaction moving the record. */
int spool_read_quarantine_key(struct spool *sp, const MDB_val *key,
			      const char *reason, char *err, size_t errlen)
{
	char qid[SPOOL_QID_SIZE * 5], why[ERRLEN];
	bool is_qid = spool_record_qid_valid(key->mv_data, key->mv_size);
	int moved = 0, rc;

	key_text(key, qid, sizeof qid);
	if (is_qid && (moved = move_body(sp, qid, true)) < 0) {
		seterr(why, sizeof why, "rename %s/body/%s to quarantine/: %s",
		       sp->path, qid, strerror(errno));
		rc = -1;
	} else {
		rc = quarantine_txn(sp, key, reason, why, sizeof why);
		if (rc < 0 && moved > 0)
			move_body(sp, qid, false);
	}
	if (rc < 0) {
		evlog_emit(sp->log, EV_SPOOL_QUARANTINE_FAILED, EVF_S("qid", qid),
			   EVF_S("reason", why), EVF_S("path", sp->path));
		seterr(err, errlen, "quarantining %s: %s", qid, why);
		return -1;
	}
	if (rc == 0) {
		stats_add(sp, &sp->stats.quarantined, 1);
		evlog_emit(sp->log, EV_SPOOL_QUARANTINED, EVF_S("qid", qid),
			   EVF_S("reason", reason), EVF_S("path", sp->path));
	}
	return rc;
}

int spool_quarantine(struct spool *sp, const char *qid, const char *reason,
		     char *err, size_t errlen)
{
	MDB_val k = { .mv_size = strlen(qid), .mv_data = (void *)qid };
	int rc;

	if (spool_env_enter(sp, err, errlen) < 0)
		return -1;
	rc = spool_read_quarantine_key(sp, &k, reason ? reason : "", err, errlen);
	spool_env_leave(sp);
	return rc;
}

void spool_read_bad_add(struct spool_badlist *b, const MDB_val *k, const char *reason)
{
	if (b->n == b->cap) {
		size_t ncap = b->cap ? b->cap * 2 : 4;
		struct spool_bad *nv = realloc(b->v, ncap * sizeof *nv);

		if (nv == NULL)
			return;   /* found again at the next walk */
		b->v = nv;
		b->cap = ncap;
	}
	b->v[b->n].keylen = k->mv_size < 512 ? k->mv_size : 512;
	memcpy(b->v[b->n].key, k->mv_data, b->v[b->n].keylen);
	snprintf(b->v[b->n].reason, ERRLEN, "%s", reason);
	b->n++;
}

void spool_read_bad_flush(struct spool *sp, struct spool_badlist *b)
{
	for (size_t i = 0; i < b->n; i++) {
		MDB_val k = { .mv_size = b->v[i].keylen, .mv_data = b->v[i].key };

		spool_read_quarantine_key(sp, &k, b->v[i].reason, NULL, 0);
	}
	free(b->v);
	memset(b, 0, sizeof *b);
}

int spool_read_decode_env(const MDB_val *k, const MDB_val *v,
		      struct spool_envelope **env_r, char *why, size_t whylen)
{
	char kt[SPOOL_QID_SIZE * 5];

	if (spool_record_decode_envelope(v->mv_data, v->mv_size, env_r, why, whylen) < 0)
		return -1;
	if (k->mv_size != SPOOL_QID_LEN || memcmp(k->mv_data, (*env_r)->qid, SPOOL_QID_LEN) != 0) {
		key_text(k, kt, sizeof kt);
		seterr(why, whylen, "envelope of %s stored under key %s", (*env_r)->qid, kt);
		spool_envelope_free(env_r);
		return -1;
	}
	return 0;
}

static int foreach_quarantined(struct spool *sp, spool_quarantine_fn *cb,
			       void *arg, char *err, size_t errlen)
{
	MDB_txn *txn;
	MDB_cursor *cur;
	MDB_val k, v;
	int rc, stop = 0;

	rc = mdb_txn_begin(sp->env, NULL, MDB_RDONLY, &txn);
	if (rc == 0 && (rc = mdb_cursor_open(txn, sp->db_quar, &cur)) != 0)
		mdb_txn_abort(txn);
	if (rc != 0) {
		spool_env_failed(sp, rc);
		seterr(err, errlen, "spool %s: %s", sp->path, mdb_strerror(rc));
		return -1;
	}
	for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0 && stop == 0;
	     rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		char qid[SPOOL_QID_SIZE * 5], why[ERRLEN], *reason = NULL;
		int64_t when = 0;

		key_text(&k, qid, sizeof qid);
		if (spool_record_decode_quarantine(v.mv_data, v.mv_size, &reason,
						   &when, why, sizeof why) < 0)
			stop = cb(arg, qid, why, 0);
		else
			stop = cb(arg, qid, reason, when);
		free(reason);
	}
	mdb_cursor_close(cur);
	mdb_txn_abort(txn);
	return stop;
}

int spool_foreach_quarantined(struct spool *sp, spool_quarantine_fn *cb,
			      void *arg, char *err, size_t errlen)
{
	int rc;

	if (spool_env_enter(sp, err, errlen) < 0)
		return -1;
	rc = foreach_quarantined(sp, cb, arg, err, errlen);
	spool_env_leave(sp);
	return rc;
}


/* ---- reading and updating --------------------------------------------- */

/* Positions cur at the first key after step's position (the first key
 * when it has none). */
static int walk_first(MDB_cursor *cur, const struct spool_walk *step, MDB_val *k, MDB_val *v)
{
	int rc;

	if (step == NULL || step->pos_len == 0)
		return mdb_cursor_get(cur, k, v, MDB_FIRST);
	k->mv_size = step->pos_len;
	k->mv_data = (void *)step->pos;
	rc = mdb_cursor_get(cur, k, v, MDB_SET_RANGE);
	if (rc == 0 && k->mv_size == step->pos_len &&
	    memcmp(k->mv_data, step->pos, step->pos_len) == 0)
		rc = mdb_cursor_get(cur, k, v, MDB_NEXT);
	return rc;
}

int spool_read_walk(struct spool *sp, bool pending_only, struct spool_walk *step,
		    spool_env_fn *cb, void *arg, char *err, size_t errlen)
{
	struct spool_badlist bad = { 0 };
	MDB_txn *txn;
	MDB_cursor *cur;
	MDB_val k, v;
	size_t seen = 0;
	int rc, stop = 0;

	rc = mdb_txn_begin(sp->env, NULL, MDB_RDONLY, &txn);
	if (rc == 0 && (rc = mdb_cursor_open(txn, sp->db_env, &cur)) != 0)
		mdb_txn_abort(txn);
	if (rc != 0) {
		spool_env_failed(sp, rc);
		seterr(err, errlen, "reading spool %s: %s", sp->path, mdb_strerror(rc));
		return -1;
	}
	for (rc = walk_first(cur, step, &k, &v); rc == 0 && stop == 0;
	     rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		struct spool_envelope *env = NULL;
		char why[ERRLEN];

		if (step != NULL && step->max > 0 && seen++ == step->max)
			break;
		if (step != NULL && k.mv_size <= sizeof step->pos) {
			memcpy(step->pos, k.mv_data, k.mv_size);
			step->pos_len = k.mv_size;
		}
		if (spool_read_decode_env(&k, &v, &env, why, sizeof why) < 0)
			spool_read_bad_add(&bad, &k, why);
		else if (!pending_only || (!env->held && spool_env_pending(env)))
			stop = cb(arg, env);
		spool_envelope_free(&env);
	}
	if (step != NULL)
		step->done = rc == MDB_NOTFOUND;
	mdb_cursor_close(cur);
	mdb_txn_abort(txn);
	spool_read_bad_flush(sp, &bad);
	return stop;
}

int spool_foreach_pending(struct spool *sp, spool_env_fn *cb, void *arg,
			  char *err, size_t errlen)
{
	int rc;

	if (spool_env_enter(sp, err, errlen) < 0)
		return -1;
	rc = spool_read_walk(sp, true, NULL, cb, arg, err, errlen);
	spool_env_leave(sp);
	return rc;
}

/* Gets and decodes the envelope of `qid` in txn: 0, 1 if absent, -1 when
 * damaged (reason in why; the caller quarantines after its txn) or on an
 * LMDB error (*lmdb_r set). */
static int get_env(struct spool *sp, MDB_txn *txn, const char *qid,
		   struct spool_envelope **env_r, int *lmdb_r, char *why, size_t whylen)
{
	MDB_val k = { .mv_size = strlen(qid), .mv_data = (void *)qid }, v;
	int rc = mdb_get(txn, sp->db_env, &k, &v);

	*env_r = NULL;
	*lmdb_r = rc == MDB_NOTFOUND ? 0 : rc;
	if (rc == MDB_NOTFOUND)
		return 1;
	if (rc != 0) {
		seterr(why, whylen, "%s", mdb_strerror(rc));
		return -1;
	}
	return spool_read_decode_env(&k, &v, env_r, why, whylen);
}

/* After a damaged record was met: quarantine it and explain in err. */
static int damaged(struct spool *sp, const char *qid, const char *why,
		   char *err, size_t errlen)
{
	spool_read_quarantine_key(sp, &(MDB_val){ .mv_size = strlen(qid), .mv_data = (void *)qid },
		       why, NULL, 0);
	seterr(err, errlen, "message %s is damaged and was quarantined: %s", qid, why);
	return -1;
}

static int load(struct spool *sp, const char *qid,
		struct spool_envelope **env_r, char *err, size_t errlen)
{
	MDB_txn *txn;
	char why[ERRLEN];
	int rc, lrc;

	rc = mdb_txn_begin(sp->env, NULL, MDB_RDONLY, &txn);
	if (rc != 0) {
		spool_env_failed(sp, rc);
		seterr(err, errlen, "reading spool %s: %s", sp->path, mdb_strerror(rc));
		return -1;
	}
	rc = get_env(sp, txn, qid, env_r, &lrc, why, sizeof why);
	mdb_txn_abort(txn);
	if (rc < 0 && lrc != 0) {
		seterr(err, errlen, "reading %s from spool %s: %s", qid, sp->path, why);
		return -1;
	}
	if (rc < 0)
		return damaged(sp, qid, why, err, errlen);
	return rc;
}

int spool_load(struct spool *sp, const char *qid,
	       struct spool_envelope **env_r, char *err, size_t errlen)
{
	int rc;

	*env_r = NULL;
	if (spool_env_enter(sp, err, errlen) < 0)
		return -1;
	rc = load(sp, qid, env_r, err, errlen);
	spool_env_leave(sp);
	return rc;
}

/* Copies and checks the inline body record of env: 0, -1 damaged, -2 a
 * transient failure (both with why). */
static int body_inline(struct spool *sp, MDB_txn *txn, const struct spool_envelope *env,
		       struct spool_body *b, char *why, size_t whylen)
{
	MDB_val k = { .mv_size = SPOOL_QID_LEN, .mv_data = (void *)env->qid }, v;
	const uint8_t *p;
	size_t n;
	int rc = mdb_get(txn, sp->db_body, &k, &v);

	if (rc != 0) {
		seterr(why, whylen, "inline body: %s", mdb_strerror(rc));
		return rc == MDB_NOTFOUND ? -1 : -2;
	}
	if (spool_record_check(v.mv_data, v.mv_size, SPOOL_RECORD_BODY, &p, &n, why, whylen) < 0)
		return -1;
	/* the record's CRC, just checked against its bytes, must be the one
	 * the envelope's body CRC makes: the same test without a second pass */
	if (n != env->size ||
	    spool_record_crc32_combine(spool_record_crc32(0, v.mv_data, 8), env->body_crc, n) !=
	    spool_record_get_u32(p + n)) {
		seterr(why, whylen, "inline body of %zu bytes does not match the envelope's size %llu and CRC",
		       n, (unsigned long long)env->size);
		return -1;
	}
	b->mem = malloc(n ? n : 1);
	if (b->mem == NULL) {
		seterr(why, whylen, "out of memory for a %zu-byte body", n);
		return -2;
	}
	memcpy(b->mem, p, n);
	return 0;
}

/* Opens and checks the body file of env: 0, -1 damaged, -2 transient. */
static int body_file(struct spool *sp, const struct spool_envelope *env,
		     struct spool_body *b, char *why, size_t whylen)
{
	struct stat st;

	b->fd = openat(sp->bodyfd, env->qid, O_RDONLY | O_CLOEXEC);
	if (b->fd < 0 || fstat(b->fd, &st) < 0) {
		seterr(why, whylen, "open %s/body/%s: %s", sp->path, env->qid, strerror(errno));
		return errno == ENOENT ? -1 : -2;   /* missing: damaged; else transient */
	}
	if ((uint64_t)st.st_size != env->size) {
		seterr(why, whylen, "body file %s/body/%s has %lld bytes, the envelope says %llu",
		       sp->path, env->qid, (long long)st.st_size,
		       (unsigned long long)env->size);
		return -1;
	}
	return 0;
}

static int body_open(struct spool *sp, const char *qid,
		     struct spool_body **b_r, char *err, size_t errlen)
{
	struct spool_envelope *env = NULL;
	struct spool_body *b;
	MDB_txn *txn;
	char why[ERRLEN];
	int rc, lrc = 0;

	b = calloc(1, sizeof *b);
	if (b == NULL) {
		seterr(err, errlen, "out of memory");
		return -1;
	}
	b->fd = -1;
	rc = mdb_txn_begin(sp->env, NULL, MDB_RDONLY, &txn);
	if (rc != 0) {
		spool_env_failed(sp, rc);
		seterr(err, errlen, "reading spool %s: %s", sp->path, mdb_strerror(rc));
		free(b);
		return -1;
	}
	rc = get_env(sp, txn, qid, &env, &lrc, why, sizeof why);
	if (rc == 0) {
		b->size = env->size;
		rc = env->body_in_file ? body_file(sp, env, b, why, sizeof why)
				       : body_inline(sp, txn, env, b, why, sizeof why);
	}
	mdb_txn_abort(txn);
	spool_envelope_free(&env);
	if (rc == 0) {
		*b_r = b;
		return 0;
	}
	spool_body_close(&b);
	if (rc > 0)
		return 1;
	if (lrc != 0 || rc == -2) {
		spool_env_failed(sp, lrc);
		seterr(err, errlen, "reading %s from spool %s: %s", qid, sp->path, why);
		return -1;
	}
	return damaged(sp, qid, why, err, errlen);
}

int spool_body_open(struct spool *sp, const char *qid,
		    struct spool_body **b_r, char *err, size_t errlen)
{
	int rc;

	*b_r = NULL;
	if (spool_env_enter(sp, err, errlen) < 0)
		return -1;
	rc = body_open(sp, qid, b_r, err, errlen);
	spool_env_leave(sp);
	return rc;
}

const void *spool_body_mem(const struct spool_body *b, size_t *len_r)
{
	*len_r = b->mem ? (size_t)b->size : 0;
	return b->mem;
}

int spool_body_fd(const struct spool_body *b)
{
	return b->fd;
}

uint64_t spool_body_size(const struct spool_body *b)
{
	return b->size;
}

ssize_t spool_body_read(struct spool_body *b, void *buf, size_t n)
{
	ssize_t r;

	if (b->pos >= b->size)
		return 0;
	if (n > b->size - b->pos)
		n = (size_t)(b->size - b->pos);
	if (b->mem != NULL) {
		memcpy(buf, b->mem + b->pos, n);
		r = (ssize_t)n;
	} else {
		do
			r = pread(b->fd, buf, n, (off_t)b->pos);
		while (r < 0 && errno == EINTR);
		if (r < 0)
			return -1;
	}
	b->pos += (uint64_t)r;
	return r;
}

void spool_body_close(struct spool_body **bp)
{
	struct spool_body *b = *bp;

	if (b == NULL)
		return;
	if (b->fd >= 0)
		close(b->fd);
	free(b->mem);
	free(b);
	*bp = NULL;
}

int spool_read_apply(struct spool *sp, MDB_txn *txn, const char *qid,
		     const struct spool_update *u, struct spool_apply *res)
{
	MDB_val k = { .mv_size = strlen(qid), .mv_data = (void *)qid }, v;
	struct spool_envelope *env = NULL;
	struct spool_rcpt *r;
	uint8_t *rec = NULL;
	int rc;

	memset(res, 0, sizeof *res);
	rc = get_env(sp, txn, qid, &env, &res->lmdb, res->why, sizeof res->why);
	if (rc != 0) {
		res->damaged = rc < 0 && res->lmdb == 0;
		return rc;
	}
	res->had_file = env->body_in_file;
	if (u->op == SPOOL_OP_REMOVE) {
		if (spool_env_pending(env)) {
			seterr(res->why, sizeof res->why, "recipients pending");
			rc = -1;
		} else {
			rc = res->lmdb = mdb_del(txn, sp->db_env, &k, NULL);
			if (rc == 0 && !env->body_in_file) {
				rc = mdb_del(txn, sp->db_body, &k, NULL);
				res->lmdb = rc = rc == MDB_NOTFOUND ? 0 : rc;
			}
		}
		goto out;
	}
	if (u->idx >= env->n_rcpts) {
		seterr(res->why, sizeof res->why, "no recipient #%zu (the message has %zu)",
		       u->idx, env->n_rcpts);
		rc = 1;
		goto out;
	}
	r = &env->rcpts[u->idx];
	if (u->reply != NULL && set_str(&r->last_reply, u->reply, false) < 0) {
		seterr(res->why, sizeof res->why, "reply text too long or out of memory");
		rc = -1;
		goto out;
	}
	r->state = u->state;
	r->next_attempt = u->next_attempt;
	if (r->attempts < UINT32_MAX)
		r->attempts++;
	if (spool_record_encode_envelope(env, &rec, &v.mv_size) < 0) {
		seterr(res->why, sizeof res->why, "out of memory encoding the envelope");
		rc = -1;
		goto out;
	}
	v.mv_data = rec;
	rc = res->lmdb = mdb_put(txn, sp->db_env, &k, &v, 0);
out:
	if (res->lmdb != 0) {
		mdb_reason(sp, res->lmdb, res->why, sizeof res->why);
		rc = -1;
	}
	free(rec);
	spool_envelope_free(&env);
	return rc;
}

void spool_read_unlink_body(struct spool *sp, const char *qid)
{
	char file[4200];

	if (unlinkat(sp->bodyfd, qid, 0) == 0 || errno == ENOENT)
		return;
	snprintf(file, sizeof file, "%s/body/%s", sp->path, qid);
	evlog_emit(sp->log, EV_SPOOL_FILE_CLEANUP_FAILED,
		   EVF_S("file", file), EVF_S("reason", strerror(errno)));
}

/* Applies u in a write transaction of its own; env_lock is held. */
static int apply_txn(struct spool *sp, const char *qid, const struct spool_update *u,
		     char *err, size_t errlen)
{
	struct spool_apply res;
	MDB_txn *txn;
	int rc;

	rc = mdb_txn_begin(sp->env, NULL, 0, &txn);
	if (rc != 0) {
		spool_env_failed(sp, rc);
		seterr(err, errlen, "spool %s: mdb_txn_begin: %s", sp->path, mdb_strerror(rc));
		return -1;
	}
	rc = spool_read_apply(sp, txn, qid, u, &res);
	if (rc == 0 && (res.lmdb = mdb_txn_commit(txn)) != 0) {
		mdb_reason(sp, res.lmdb, res.why, sizeof res.why);
		rc = -1;
	} else if (rc != 0) {
		mdb_txn_abort(txn);
	}
	spool_env_failed(sp, res.lmdb);
	if (res.damaged)
		return damaged(sp, qid, res.why, err, errlen);
	if (rc < 0)
		seterr(err, errlen, "updating %s in spool %s: %s", qid, sp->path, res.why);
	if (rc == 0 && u->op == SPOOL_OP_REMOVE && res.had_file)
		spool_read_unlink_body(sp, qid);
	return rc;
}

/* Applies u on the calling thread (its own write transaction). */
static int apply_sync(struct spool *sp, const char *qid, const struct spool_update *u,
		      char *err, size_t errlen)
{
	int rc;

	if (spool_env_enter(sp, err, errlen) < 0)
		return -1;
	rc = apply_txn(sp, qid, u, err, errlen);
	spool_env_leave(sp);
	return rc;
}

int spool_rcpt_update(struct spool *sp, const char *qid, size_t rcpt_index,
		      enum spool_rcpt_state state, const char *reply,
		      int64_t next_attempt, char *err, size_t errlen)
{
	struct spool_update u = {
		.op = SPOOL_OP_UPDATE, .idx = rcpt_index, .state = state,
		.reply = (char *)reply, .next_attempt = next_attempt,
	};

	if (state > SPOOL_RCPT_FAILED) {
		seterr(err, errlen, "invalid recipient state %d", (int)state);
		return -1;
	}
	return apply_sync(sp, qid, &u, err, errlen);
}

int spool_remove(struct spool *sp, const char *qid, char *err, size_t errlen)
{
	struct spool_update u = { .op = SPOOL_OP_REMOVE };

	return apply_sync(sp, qid, &u, err, errlen);
}
