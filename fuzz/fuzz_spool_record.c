/*
 * libFuzzer harness for the spool's record decoders (spool_record.c): the
 * bytes a damaged disk could hand back.
 *
 * Input: byte 0 picks the decoder (low 2 bits: envelope, meta, quarantine,
 * plain frame check) and whether to repair the frame first (bit 2: rewrite
 * the length and CRC so mutations reach the TLV parser instead of all
 * failing the CRC).  The rest is the record.  A decoded envelope is
 * re-encoded and decoded again; both must agree.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "spool_record.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_envelope_round_trip(const struct spool_envelope *env)
{
	struct spool_envelope *again = NULL;
	uint8_t *rec;
	size_t len;
	char err[256];

	if (spool_record_encode_envelope(env, &rec, &len) < 0)
		return;
	if (spool_record_decode_envelope(rec, len, &again, err, sizeof err) < 0)
		abort();
	if (strcmp(again->qid, env->qid) != 0 || strcmp(again->sender, env->sender) != 0 ||
	    again->n_rcpts != env->n_rcpts || again->size != env->size ||
	    again->body_crc != env->body_crc)
		abort();
	for (size_t i = 0; i < env->n_rcpts; i++)
		if (strcmp(again->rcpts[i].addr, env->rcpts[i].addr) != 0 ||
		    again->rcpts[i].state != env->rcpts[i].state)
			abort();
	spool_envelope_free(&again);
	free(rec);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct spool_envelope *env = NULL;
	const uint8_t *payload;
	uint8_t *buf;
	size_t plen;
	char err[256], *reason = NULL;
	unsigned version;
	int64_t when;

	if (size < 1)
		return 0;
	buf = malloc(size);   /* exact size so ASan sees any overread */
	if (buf == NULL)
		return 0;
	memcpy(buf, data + 1, size - 1);
	size--;
	if ((data[0] & 4) && size >= SPOOL_RECORD_OVERHEAD) {
		uint32_t n = (uint32_t)(size - SPOOL_RECORD_OVERHEAD);
		uint32_t crc;

		spool_record_put_u32(buf + 4, n);
		crc = spool_record_crc32(0, buf, 8 + (size_t)n);
		spool_record_put_u32(buf + 8 + n, crc);
	}
	switch (data[0] & 3) {
	case 0:
		if (spool_record_decode_envelope(buf, size, &env, err, sizeof err) == 0) {
			check_envelope_round_trip(env);
			spool_envelope_free(&env);
		}
		break;
	case 1:
		spool_record_decode_meta(buf, size, &version, err, sizeof err);
		break;
	case 2:
		if (spool_record_decode_quarantine(buf, size, &reason, &when, err, sizeof err) == 0)
			free(reason);
		break;
	default:
		spool_record_check(buf, size, SPOOL_RECORD_BODY, &payload, &plen, err, sizeof err);
		break;
	}
	free(buf);
	return 0;
}
