/*
 * spool_record: the spool's on-disk record encoding (pure, no I/O).
 *
 * Every value the spool stores in LMDB is one framed record:
 *
 *   offset 0  u8   magic 0xC5
 *          1  u8   type (SPOOL_RECORD_*)
 *          2  u8   record version (1)
 *          3  u8   flags (0)
 *          4  u32  payload length, little-endian
 *          8  ...  payload
 *        8+n  u32  CRC32 (IEEE) of bytes 0 .. 8+n-1, little-endian
 *
 * so a truncated, extended or bit-flipped record fails its check.  Payloads
 * are TLV fields: u8 tag, u32 LE length, value; integers are u64 LE; unknown
 * tags are skipped.  A recipient is one RCPT field whose value is itself a
 * TLV list.  Decoders take untrusted bytes (a damaged disk) and never read
 * outside them; the fuzz harness drives them.
 */
#ifndef CARRIER_SPOOL_RECORD_H
#define CARRIER_SPOOL_RECORD_H

#include <stddef.h>
#include <stdint.h>

#include "spool.h"

enum spool_record_type {
	SPOOL_RECORD_META = 1,       /* frozen: payload is u32 LE format version */
	SPOOL_RECORD_ENVELOPE = 2,
	SPOOL_RECORD_BODY = 3,       /* payload: raw message bytes */
	SPOOL_RECORD_QUARANTINE = 4,
};

#define SPOOL_RECORD_VERSION 1u
#define SPOOL_RECORD_OVERHEAD 12u
/* No record is larger than this (bodies past inline_max go to files). */
#define SPOOL_RECORD_MAX ((size_t)256 << 20)

/* CRC32 (IEEE 802.3, reflected); start with crc = 0. */
uint32_t spool_record_crc32(uint32_t crc, const void *p, size_t n);

/* The CRC of A followed by B from crc_a = crc32(0, A), crc_b = crc32(0, B)
 * and B's length, without reading B (O(log len_b)): a body's CRC, taken as
 * it arrived, then frames it without a second pass. */
uint32_t spool_record_crc32_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b);

/*
 * Frames a payload: writes SPOOL_RECORD_OVERHEAD + plen bytes into a new
 * buffer (*buf_r, caller frees).  Returns 0 or -1 (allocation, too large).
 */
int spool_record_wrap(enum spool_record_type type, const void *payload,
		      size_t plen, uint8_t **buf_r, size_t *len_r);

/* Writes the 8-byte header for a payload of plen bytes into hdr, and returns
 * the CRC state after it (continue with spool_record_crc32 over the payload,
 * then store the trailer with spool_record_put_u32). */
uint32_t spool_record_header(uint8_t hdr[8], enum spool_record_type type,
			     uint32_t plen);
void spool_record_put_u32(uint8_t *p, uint32_t v);
/* Reads a little-endian u32 (record trailers, as put_u32 writes them). */
uint32_t spool_record_get_u32(const uint8_t *p);

/*
 * Checks a framed record of `want` type: magic, type, version, length and
 * CRC.  On success returns 0 and points *payload_r and *plen_r into buf.
 * Returns -1 with a reason ("CRC mismatch: stored 0x.., computed 0x..").
 */
int spool_record_check(const void *buf, size_t len, enum spool_record_type want,
		       const uint8_t **payload_r, size_t *plen_r,
		       char *err, size_t errlen);

/* META record with the spool format version. */
int spool_record_encode_meta(unsigned version, uint8_t **buf_r, size_t *len_r);
int spool_record_decode_meta(const void *buf, size_t len, unsigned *version_r,
			     char *err, size_t errlen);

/* ENVELOPE record.  Decoding validates the qid, requires a sender field and
 * at least one recipient, and rejects strings holding NUL. */
int spool_record_encode_envelope(const struct spool_envelope *env,
				 uint8_t **buf_r, size_t *len_r);
int spool_record_decode_envelope(const void *buf, size_t len,
				 struct spool_envelope **env_r,
				 char *err, size_t errlen);

/* Frees the members of an envelope (not the struct) and zeroes it. */
void spool_record_envelope_clear(struct spool_envelope *env);

/* QUARANTINE record: reason, time, and the damaged raw bytes. */
int spool_record_encode_quarantine(const char *reason, int64_t when,
				   const void *raw, size_t rawlen,
				   uint8_t **buf_r, size_t *len_r);
/* *reason_r is malloc'd (caller frees). */
int spool_record_decode_quarantine(const void *buf, size_t len,
				   char **reason_r, int64_t *when_r,
				   char *err, size_t errlen);

/* True when `s` is SPOOL_QID_LEN Crockford base32 digits. */
int spool_record_qid_valid(const char *s, size_t len);

#endif
