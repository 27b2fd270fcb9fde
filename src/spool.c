/*
 * spool: the durable queue (see spool.h for the on-disk layout, the
 * durability contract and which threads call what).
 *
 * Owns the LMDB environment, the body files, the group-commit thread and
 * the queue-ID generator.  Must not know about SMTP.
 */
#include "spool.h"

#include <errno.h>
#include <fcntl.h>
#include <lmdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "evlog.h"
#include "spool_record.h"

#define META_KEY "format_version"

static void seterr(char *err, size_t errlen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void seterr(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (err == NULL || errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

void spool_opts_init(struct spool_opts *o)
{
	memset(o, 0, sizeof *o);
	o->map_size = (size_t)1 << 30;
	o->inline_max = 64 * 1024;
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

/* Reads the version inside an open txn: 0 + *found_r (0 = no spool yet), or
 * -1 + err. */
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
	return 0;
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
	if (rc < 0)
		return -1;
	if (*found_r == 0)
		return 0;
	return version_verdict(path, *found_r, err, errlen);
}
