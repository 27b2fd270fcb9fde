/*
 * spool_admin: administrative queue changes and the full walk (the
 * `carrier queue` commands): hold, release, retry now, fail, delete, and
 * spool_foreach() over every envelope including held ones.
 *
 * Part of the spool module (shares spool_int.h).  Must not: know about the
 * control socket or the CLI.  Threads: any (the daemon calls the changes
 * on its loop thread, the walks on its queue reader thread); each call has
 * its own LMDB transaction.
 */
#include <errno.h>
#include <unistd.h>

#include "evlog.h"
#include "spool_int.h"
#include "spool_record.h"

/* Like the other readers, under the environment lock: a reopen after
 * MDB_PANIC must never pull the environment from under a walk. */
int spool_foreach(struct spool *sp, spool_env_fn *cb, void *arg,
		  char *err, size_t errlen)
{
	int rc;

	if (spool_env_enter(sp, err, errlen) < 0)
		return -1;
	rc = spool_read_walk(sp, false, NULL, cb, arg, err, errlen);
	spool_env_leave(sp);
	return rc;
}

void spool_walk_init(struct spool_walk *w, const char *after, size_t max)
{
	size_t n = after != NULL ? strlen(after) : 0;

	memset(w, 0, sizeof *w);
	w->max = max;
	w->pos_len = n < sizeof w->pos ? n : sizeof w->pos;
	memcpy(w->pos, after != NULL ? after : "", w->pos_len);
}

int spool_foreach_step(struct spool *sp, struct spool_walk *w, spool_env_fn *cb,
		       void *arg, char *err, size_t errlen)
{
	int rc;

	if (spool_env_enter(sp, err, errlen) < 0)
		return -1;
	rc = spool_read_walk(sp, false, w, cb, arg, err, errlen);
	spool_env_leave(sp);
	return rc;
}

static bool rcpt_pending(const struct spool_rcpt *r)
{
	return r->state == SPOOL_RCPT_QUEUED || r->state == SPOOL_RCPT_DEFERRED;
}

/* Changes env in memory per op: true when something changed. */
static bool admin_change(struct spool_envelope *env, enum spool_admin_op op,
			 const char *reason, bool *oom)
{
	bool changed = false;

	switch (op) {
	case SPOOL_ADMIN_HOLD:
	case SPOOL_ADMIN_RELEASE:
		changed = env->held != (op == SPOOL_ADMIN_HOLD);
		env->held = op == SPOOL_ADMIN_HOLD;
		break;
	case SPOOL_ADMIN_RETRY:
		/* A held message is not delivered: nothing to retry. */
		for (size_t i = 0; !env->held && i < env->n_rcpts; i++)
			if (rcpt_pending(&env->rcpts[i]) && env->rcpts[i].next_attempt != 0) {
				env->rcpts[i].next_attempt = 0;
				changed = true;
			}
		break;
	case SPOOL_ADMIN_FAIL:
		for (size_t i = 0; i < env->n_rcpts; i++) {
			if (!rcpt_pending(&env->rcpts[i]))
				continue;
			env->rcpts[i].state = SPOOL_RCPT_FAILED;
			if (set_str(&env->rcpts[i].last_reply, reason, false) < 0)
				*oom = true;
			changed = true;
		}
		break;
	case SPOOL_ADMIN_DELETE:
		changed = true;
		break;
	}
	return changed;
}

/* Applies op to one qid inside txn: a spool_admin_result, or -1 with an
 * LMDB error in *lmdb_r (the txn must be aborted).  *had_file_r tells a
 * deleted message had a body file; a damaged one goes onto `bad`. */
static int admin_one(struct spool *sp, MDB_txn *txn, const char *qid,
		     enum spool_admin_op op, const char *reason,
		     struct spool_badlist *bad, bool *had_file_r, int *lmdb_r)
{
	MDB_val k = { .mv_size = strlen(qid), .mv_data = (void *)qid }, v;
	struct spool_envelope *env = NULL;
	char why[ERRLEN];
	uint8_t *rec = NULL;
	bool oom = false;
	int rc, res = SPOOL_ADMIN_DONE;

	*had_file_r = false;
	rc = mdb_get(txn, sp->db_env, &k, &v);
	if (rc == MDB_NOTFOUND)
		return SPOOL_ADMIN_ABSENT;
	if (rc != 0) {
		*lmdb_r = rc;
		return -1;
	}
	if (spool_read_decode_env(&k, &v, &env, why, sizeof why) < 0) {
		spool_read_bad_add(bad, &k, why);
		return SPOOL_ADMIN_DAMAGED;
	}
	if (!admin_change(env, op, reason, &oom)) {
		res = SPOOL_ADMIN_NOOP;
	} else if (op == SPOOL_ADMIN_DELETE) {
		*had_file_r = env->body_in_file;
		rc = mdb_del(txn, sp->db_env, &k, NULL);
		if (rc == 0 && !env->body_in_file) {
			rc = mdb_del(txn, sp->db_body, &k, NULL);
			rc = rc == MDB_NOTFOUND ? 0 : rc;
		}
	} else if (oom || spool_record_encode_envelope(env, &rec, &v.mv_size) < 0) {
		rc = ENOMEM;
	} else {
		v.mv_data = rec;
		rc = mdb_put(txn, sp->db_env, &k, &v, 0);
	}
	free(rec);
	spool_envelope_free(&env);
	if (rc != 0) {
		*lmdb_r = rc;
		return -1;
	}
	return res;
}

static int admin_locked(struct spool *sp, enum spool_admin_op op, const char *const *qids,
			size_t n, const char *reason, int *results, char *err, size_t errlen)
{
	struct spool_badlist bad = { 0 };
	bool *files;
	MDB_txn *txn;
	int rc, changed = 0, lmdb = 0;
	char why[ERRLEN];

	if (reason == NULL)
		reason = "failed by administrator";
	if (!str_ok(reason) || n > (size_t)INT32_MAX) {
		seterr(err, errlen, "reason too long or too many messages");
		return -1;
	}
	files = calloc(n ? n : 1, sizeof *files);
	if (files == NULL) {
		seterr(err, errlen, "out of memory");
		return -1;
	}
	rc = mdb_txn_begin(sp->env, NULL, 0, &txn);
	if (rc != 0) {
		seterr(err, errlen, "spool %s: mdb_txn_begin: %s", sp->path, mdb_strerror(rc));
		free(files);
		return -1;
	}
	for (size_t i = 0; i < n && lmdb == 0; i++) {
		int r = admin_one(sp, txn, qids[i], op, reason, &bad, &files[i], &lmdb);

		if (results != NULL)
			results[i] = r;
		changed += r == SPOOL_ADMIN_DONE;
	}
	if (lmdb == 0)
		lmdb = mdb_txn_commit(txn);
	else
		mdb_txn_abort(txn);
	if (lmdb != 0) {
		seterr(err, errlen, "changing spool %s: %s", sp->path,
		       mdb_reason(sp, lmdb, why, sizeof why));
		changed = -1;
	} else if (op == SPOOL_ADMIN_DELETE) {
		for (size_t i = 0; i < n; i++)
			if (files[i])
				spool_read_unlink_body(sp, qids[i]);
	}
	free(files);
	spool_read_bad_flush(sp, &bad);
	return changed;
}

int spool_admin(struct spool *sp, enum spool_admin_op op, const char *const *qids,
		size_t n, const char *reason, int *results, char *err, size_t errlen)
{
	int rc;

	if (spool_env_enter(sp, err, errlen) < 0)
		return -1;
	rc = admin_locked(sp, op, qids, n, reason, results, err, errlen);
	spool_env_leave(sp);
	return rc;
}
