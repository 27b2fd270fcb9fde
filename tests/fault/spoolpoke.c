/*
 * spoolpoke: damages one entry of a stopped carrier spool, for the
 * corrupt-entry tests (issue 8).  Raw LMDB, independent of the spool code
 * on purpose: it writes what a bad disk would leave.
 *
 *   spoolpoke list SPOOL [DB]         keys in the env (or DB) database
 *   spoolpoke flip SPOOL QID OFFSET   xor 0xff into the envelope at OFFSET
 *   spoolpoke version SPOOL QID V     set the envelope's record version to
 *                                     V and fix its CRC (only the version
 *                                     is wrong)
 *   spoolpoke flipbody SPOOL QID OFF  xor 0xff into the inline body record
 *
 * Exit 0 on success, 1 on a failure (message on stderr).
 */
#include <lmdb.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint32_t crc32_ieee(const uint8_t *p, size_t n)
{
	uint32_t c = 0xffffffffu;

	for (size_t i = 0; i < n; i++) {
		c ^= p[i];
		for (int k = 0; k < 8; k++)
			c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1u)));
	}
	return c ^ 0xffffffffu;
}

static int die(const char *what, int rc)
{
	fprintf(stderr, "spoolpoke: %s: %s\n", what, mdb_strerror(rc));
	return 1;
}

static int poke(MDB_txn *txn, MDB_dbi dbi, const char *cmd, const char *qid,
		const char *arg)
{
	MDB_val k = { .mv_size = strlen(qid), .mv_data = (void *)qid }, v;
	uint8_t *b;
	long n = atol(arg);
	int rc = mdb_get(txn, dbi, &k, &v);

	if (rc != 0)
		return die(qid, rc);
	b = malloc(v.mv_size);
	if (b == NULL)
		return 1;
	memcpy(b, v.mv_data, v.mv_size);
	if (strcmp(cmd, "version") == 0) {
		uint32_t c;

		b[2] = (uint8_t)n;
		c = crc32_ieee(b, v.mv_size - 4);
		for (int i = 0; i < 4; i++)
			b[v.mv_size - 4 + (size_t)i] = (uint8_t)(c >> (8 * i));
	} else {
		if (n < 0 || (size_t)n >= v.mv_size) {
			fprintf(stderr, "spoolpoke: offset %ld outside %zu bytes\n", n, v.mv_size);
			free(b);
			return 1;
		}
		b[n] ^= 0xff;
	}
	v.mv_data = b;
	rc = mdb_put(txn, dbi, &k, &v, 0);
	free(b);
	return rc != 0 ? die("mdb_put", rc) : 0;
}

int main(int argc, char **argv)
{
	MDB_env *env;
	MDB_txn *txn;
	MDB_dbi dbi;
	const char *db = "env";
	int rc, bad = 0;

	if (argc < 3) {
		fprintf(stderr, "usage: spoolpoke list|flip|version|flipbody SPOOL [QID ARG]\n");
		return 2;
	}
	if (strcmp(argv[1], "flipbody") == 0)
		db = "body";
	if (strcmp(argv[1], "list") == 0 && argc == 4)
		db = argv[3];
	if ((rc = mdb_env_create(&env)) != 0 || (rc = mdb_env_set_maxdbs(env, 8)) != 0 ||
	    (rc = mdb_env_set_mapsize(env, (size_t)1 << 30)) != 0 ||
	    (rc = mdb_env_open(env, argv[2], 0, 0600)) != 0)
		return die(argv[2], rc);
	if ((rc = mdb_txn_begin(env, NULL, 0, &txn)) != 0 ||
	    (rc = mdb_dbi_open(txn, db, 0, &dbi)) != 0)
		return die(db, rc);
	if (strcmp(argv[1], "list") == 0) {
		MDB_cursor *cur;
		MDB_val k, v;

		mdb_cursor_open(txn, dbi, &cur);
		while (mdb_cursor_get(cur, &k, &v, MDB_NEXT) == 0)
			printf("%.*s %zu\n", (int)k.mv_size, (char *)k.mv_data, v.mv_size);
		mdb_cursor_close(cur);
		mdb_txn_abort(txn);
	} else if (argc == 5) {
		bad = poke(txn, dbi, argv[1], argv[3], argv[4]);
		rc = bad ? 0 : mdb_txn_commit(txn);
		if (bad)
			mdb_txn_abort(txn);
		else if (rc != 0)
			bad = die("commit", rc);
	} else {
		fprintf(stderr, "spoolpoke: %s needs QID and ARG\n", argv[1]);
		mdb_txn_abort(txn);
		bad = 2;
	}
	mdb_env_close(env);
	return bad;
}
