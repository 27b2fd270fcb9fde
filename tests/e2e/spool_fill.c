/*
 * spool_fill: fills a stopped carrier spool with N queued messages fast,
 * for the large-queue tests and measurements (`carrier queue summary` of a
 * 1,000,000-message queue).  Built by the test against libcarrier.a; it
 * opens the spool with spool_open() (format, databases) and then writes the
 * records itself, 10,000 messages per LMDB transaction, which SMTP could
 * not do in any reasonable time.
 *
 *   spool_fill SPOOL N [DOMAINS [HELD]]
 *
 * Message i: sender fill@example.org, one recipient r<i>@d<i % DOMAINS>.test
 * (DOMAINS default 10), DEFERRED with its next attempt a day away (so the
 * daemon leaves it alone), arrived i % 1440 minutes ago, an inline body of
 * 200 bytes.  The last HELD messages (default 0) are held.  Prints the
 * number written; exit 0, or 1 with a reason.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "spool_int.h"
#include "spool_record.h"

#define PER_TXN 10000

static int put_one(struct spool *sp, MDB_txn *txn, size_t i, size_t domains, bool held,
		   int64_t now)
{
	static const char body[] = "Subject: fill\r\nFrom: fill@example.org\r\n\r\n"
		"0123456789012345678901234567890123456789012345678901234567890123456789\r\n"
		"0123456789012345678901234567890123456789012345678901234567890123456789\r\n";
	char addr[64], reply[] = "451 4.3.0 try later (spool_fill)";
	struct spool_rcpt r = { .addr = addr, .state = SPOOL_RCPT_DEFERRED, .attempts = 1,
				.next_attempt = now + 86400, .last_reply = reply };
	struct spool_envelope env = {
		.sender = "fill@example.org", .rcpts = &r, .n_rcpts = 1, .client_addr = "127.0.0.1",
		.client_helo = "fill", .arrival = now - (int64_t)(i % 1440) * 60,
		.size = sizeof body - 1, .held = held,
	};
	uint8_t *rec = NULL, *bodyrec = NULL;
	size_t reclen = 0, bodylen = 0;
	MDB_val k, v;
	int rc;

	spool_qid_new(sp, env.qid);
	snprintf(addr, sizeof addr, "r%zu@d%zu.test", i, i % domains);
	env.body_crc = spool_record_crc32(0, body, sizeof body - 1);
	if (spool_record_encode_envelope(&env, &rec, &reclen) < 0 ||
	    spool_record_wrap(SPOOL_RECORD_BODY, body, sizeof body - 1, &bodyrec, &bodylen) < 0) {
		free(rec);
		return ENOMEM;
	}
	k = (MDB_val){ .mv_size = SPOOL_QID_LEN, .mv_data = env.qid };
	v = (MDB_val){ .mv_size = reclen, .mv_data = rec };
	rc = mdb_put(txn, sp->db_env, &k, &v, MDB_APPEND);
	v = (MDB_val){ .mv_size = bodylen, .mv_data = bodyrec };
	if (rc == 0)
		rc = mdb_put(txn, sp->db_body, &k, &v, MDB_APPEND);
	free(rec);
	free(bodyrec);
	return rc;
}

int main(int argc, char **argv)
{
	struct spool_opts o;
	struct spool *sp;
	size_t n, domains = 10, held = 0, done = 0;
	int64_t now = (int64_t)time(NULL);
	char err[512];

	if (argc < 3 || argc > 5) {
		fprintf(stderr, "usage: spool_fill SPOOL N [DOMAINS [HELD]]\n");
		return 2;
	}
	n = strtoull(argv[2], NULL, 10);
	if (argc > 3)
		domains = strtoull(argv[3], NULL, 10);
	if (argc > 4)
		held = strtoull(argv[4], NULL, 10);
	if (domains == 0)
		domains = 1;
	spool_opts_init(&o);
	o.map_size = (size_t)64 << 30;
	o.space_margin = 0;
	if ((sp = spool_open(argv[1], &o, NULL, err, sizeof err)) == NULL) {
		fprintf(stderr, "spool_fill: %s\n", err);
		return 1;
	}
	while (done < n) {
		MDB_txn *txn;
		int rc = mdb_txn_begin(sp->env, NULL, 0, &txn);

		for (size_t k = 0; rc == 0 && k < PER_TXN && done < n; k++, done++)
			rc = put_one(sp, txn, done, domains, done >= n - held, now);
		if (rc == 0)
			rc = mdb_txn_commit(txn);
		else
			mdb_txn_abort(txn);
		if (rc != 0) {
			fprintf(stderr, "spool_fill: after %zu messages: %s\n", done, mdb_strerror(rc));
			spool_close(&sp);
			return 1;
		}
	}
	spool_close(&sp);
	printf("%zu\n", done);
	return 0;
}
