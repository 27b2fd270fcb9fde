/*
 * spool_record: framing, CRC and TLV encoding of the spool's records.
 * Pure functions on byte buffers; any thread.  See spool_record.h.
 */
#include "spool_record.h"
#include "crc32_table.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REC_MAGIC 0xC5u

enum env_tag {
	ENV_QID = 1, ENV_SENDER, ENV_RCPT, ENV_DSN_RET, ENV_ENVID,
	ENV_BODY_TYPE, ENV_SMTPUTF8, ENV_CLIENT_ADDR, ENV_CLIENT_HELO,
	ENV_ARRIVAL, ENV_SIZE, ENV_BODY_IN_FILE, ENV_BODY_CRC,
	ENV_HELD,        /* written only when held: older records stay identical */
};
enum rcpt_tag {
	RCPT_ADDR = 1, RCPT_ORCPT, RCPT_NOTIFY, RCPT_STATE, RCPT_ATTEMPTS,
	RCPT_NEXT_ATTEMPT, RCPT_LAST_REPLY,
};
enum quar_tag { QUAR_REASON = 1, QUAR_WHEN, QUAR_RAW };

/*
 * CRC-32 (IEEE), slicing-by-8: eight bytes per step through the eight
 * static tables of crc32_table.h (scripts/gen-crc32-table.py), then the tail
 * a byte at a time.  Loads are byte-wise little-endian, so any alignment and
 * any host order give the same value (the compiler makes them one load).
 */
static inline uint32_t load_le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
	       (uint32_t)p[3] << 24;
}

/* The table-driven loop on the inverted register. */
static uint32_t crc_tables(uint32_t crc, const uint8_t *b, size_t n)
{
	for (; n >= 8; n -= 8, b += 8) {
		uint32_t lo = load_le32(b) ^ crc, hi = load_le32(b + 4);

		crc = crc32_table[7][lo & 0xFF] ^ crc32_table[6][(lo >> 8) & 0xFF] ^
		      crc32_table[5][(lo >> 16) & 0xFF] ^ crc32_table[4][lo >> 24] ^
		      crc32_table[3][hi & 0xFF] ^ crc32_table[2][(hi >> 8) & 0xFF] ^
		      crc32_table[1][(hi >> 16) & 0xFF] ^ crc32_table[0][hi >> 24];
	}
	while (n-- > 0)
		crc = (crc >> 8) ^ crc32_table[0][(crc ^ *b++) & 0xFF];
	return crc;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define CRC_CLMUL 1

/*
 * Carry-less multiplication folding (Intel, "Fast CRC Computation for
 * Generic Polynomials Using PCLMULQDQ", bit-reflected form): four 128-bit
 * lanes are folded 64 bytes at a time, then into one lane, then reduced to
 * 32 bits by Barrett reduction.  Constants are x^k mod P for the IEEE
 * polynomial; the tests compare every length and alignment with the table
 * loop.  Takes n >= 64, a multiple of 16; returns the inverted register.
 */
__attribute__((target("pclmul,sse4.1")))
static uint32_t crc_clmul(uint32_t crc, const uint8_t *b, size_t n)
{
	const __m128i k1k2 = _mm_set_epi64x(0x1c6e41596, 0x154442bd4);
	const __m128i k3k4 = _mm_set_epi64x(0x0ccaa009e, 0x1751997d0);
	const __m128i k5 = _mm_set_epi64x(0, 0x163cd6124);
	const __m128i poly = _mm_set_epi64x(0x1f7011641, 0x1db710641);
	const __m128i mask32 = _mm_set_epi32(0, 0, 0, -1);
	__m128i x1 = _mm_loadu_si128((const __m128i *)b);
	__m128i x2 = _mm_loadu_si128((const __m128i *)(b + 16));
	__m128i x3 = _mm_loadu_si128((const __m128i *)(b + 32));
	__m128i x4 = _mm_loadu_si128((const __m128i *)(b + 48));
	__m128i t;

#define FOLD(x, k, next) \
	_mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128((x), (k), 0x00), \
				    _mm_clmulepi64_si128((x), (k), 0x11)), (next))
	x1 = _mm_xor_si128(x1, _mm_cvtsi32_si128((int)crc));
	for (b += 64, n -= 64; n >= 64; b += 64, n -= 64) {
		x1 = FOLD(x1, k1k2, _mm_loadu_si128((const __m128i *)b));
		x2 = FOLD(x2, k1k2, _mm_loadu_si128((const __m128i *)(b + 16)));
		x3 = FOLD(x3, k1k2, _mm_loadu_si128((const __m128i *)(b + 32)));
		x4 = FOLD(x4, k1k2, _mm_loadu_si128((const __m128i *)(b + 48)));
	}
	x1 = FOLD(x1, k3k4, x2);
	x1 = FOLD(x1, k3k4, x3);
	x1 = FOLD(x1, k3k4, x4);
	for (; n >= 16; b += 16, n -= 16)
		x1 = FOLD(x1, k3k4, _mm_loadu_si128((const __m128i *)b));
#undef FOLD
	/* 128 -> 64 bits (appending 32 zero bits), then 64 -> 32 */
	t = _mm_clmulepi64_si128(k3k4, x1, 0x01);
	x1 = _mm_xor_si128(_mm_srli_si128(x1, 8), t);
	t = _mm_srli_si128(x1, 4);
	x1 = _mm_clmulepi64_si128(_mm_and_si128(x1, mask32), k5, 0x00);
	x1 = _mm_xor_si128(x1, t);
	/* Barrett reduction */
	t = x1;
	x1 = _mm_clmulepi64_si128(_mm_and_si128(x1, mask32), poly, 0x10);
	x1 = _mm_clmulepi64_si128(_mm_and_si128(x1, mask32), poly, 0x00);
	x1 = _mm_xor_si128(x1, t);
	return (uint32_t)_mm_extract_epi32(x1, 1);
}

/* Reads the CPU model that libgcc filled in at startup: no state here. */
static bool crc_clmul_usable(void)
{
	return __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
}
#endif

uint32_t spool_record_crc32(uint32_t crc, const void *p, size_t n)
{
	const uint8_t *b = p;

	crc = ~crc;
#ifdef CRC_CLMUL
	if (n >= 64 && crc_clmul_usable()) {
		size_t bulk = n & ~(size_t)15;

		crc = crc_clmul(crc, b, bulk);
		b += bulk;
		n -= bulk;
	}
#endif
	return ~crc_tables(crc, b, n);
}

/*
 * CRC combination works in GF(2) polynomials modulo the CRC polynomial
 * (reflected bit order: bit 31 is x^0).  Appending len_b zero bytes to A
 * multiplies its register by x^(8 * len_b); B's CRC then adds in, as the
 * pre- and post-inversions of both cancel out.
 */
#define CRC32_POLY 0xEDB88320u

/* a * b modulo the polynomial */
static uint32_t crc_mulmod(uint32_t a, uint32_t b)
{
	uint32_t m = (uint32_t)1 << 31, p = 0;

	for (; m != 0; m >>= 1) {
		if (a & m)
			p ^= b;
		b = (b & 1) ? (b >> 1) ^ CRC32_POLY : b >> 1;
	}
	return p;
}

/* x^(8 * n) modulo the polynomial, by squaring */
static uint32_t crc_x8n(uint64_t n)
{
	uint32_t result = (uint32_t)1 << 31;   /* x^0 */
	uint32_t sq = (uint32_t)1 << 23;       /* x^8 */

	for (; n != 0; n >>= 1) {
		if (n & 1)
			result = crc_mulmod(sq, result);
		sq = crc_mulmod(sq, sq);
	}
	return result;
}

uint32_t spool_record_crc32_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b)
{
	return crc_mulmod(crc_x8n(len_b), crc_a) ^ crc_b;
}

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

void spool_record_put_u32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

uint32_t spool_record_get_u32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
	       (uint32_t)p[3] << 24;
}

static uint64_t get_u64(const uint8_t *p)
{
	return (uint64_t)spool_record_get_u32(p) | (uint64_t)spool_record_get_u32(p + 4) << 32;
}

uint32_t spool_record_header(uint8_t hdr[8], enum spool_record_type type,
			     uint32_t plen)
{
	hdr[0] = REC_MAGIC;
	hdr[1] = (uint8_t)type;
	hdr[2] = SPOOL_RECORD_VERSION;
	hdr[3] = 0;
	spool_record_put_u32(hdr + 4, plen);
	return spool_record_crc32(0, hdr, 8);
}

int spool_record_wrap(enum spool_record_type type, const void *payload,
		      size_t plen, uint8_t **buf_r, size_t *len_r)
{
	uint8_t *buf;
	uint32_t crc;

	if (plen > SPOOL_RECORD_MAX)
		return -1;
	buf = malloc(plen + SPOOL_RECORD_OVERHEAD);
	if (buf == NULL)
		return -1;
	crc = spool_record_header(buf, type, (uint32_t)plen);
	if (plen > 0)
		memcpy(buf + 8, payload, plen);
	crc = spool_record_crc32(crc, buf + 8, plen);
	spool_record_put_u32(buf + 8 + plen, crc);
	*buf_r = buf;
	*len_r = plen + SPOOL_RECORD_OVERHEAD;
	return 0;
}

int spool_record_check(const void *buf, size_t len, enum spool_record_type want,
		       const uint8_t **payload_r, size_t *plen_r,
		       char *err, size_t errlen)
{
	const uint8_t *b = buf;
	uint32_t plen, stored, crc;

	if (len < SPOOL_RECORD_OVERHEAD) {
		seterr(err, errlen, "record truncated: %zu bytes, a record has at least %u",
		       len, SPOOL_RECORD_OVERHEAD);
		return -1;
	}
	if (b[0] != REC_MAGIC) {
		seterr(err, errlen, "bad record magic 0x%02x (want 0x%02x)", b[0], REC_MAGIC);
		return -1;
	}
	if (b[1] != (uint8_t)want) {
		seterr(err, errlen, "record type %u, expected %u", b[1], (unsigned)want);
		return -1;
	}
	if (b[2] != SPOOL_RECORD_VERSION) {
		seterr(err, errlen, "record version %u, this carrierd reads version %u",
		       b[2], SPOOL_RECORD_VERSION);
		return -1;
	}
	plen = spool_record_get_u32(b + 4);
	if ((size_t)plen != len - SPOOL_RECORD_OVERHEAD) {
		seterr(err, errlen, "record length %u does not match stored size %zu (partial or extended record)",
		       plen, len - SPOOL_RECORD_OVERHEAD);
		return -1;
	}
	stored = spool_record_get_u32(b + 8 + plen);
	crc = spool_record_crc32(0, b, 8 + (size_t)plen);
	if (stored != crc) {
		seterr(err, errlen, "record CRC mismatch: stored 0x%08x, computed 0x%08x",
		       stored, crc);
		return -1;
	}
	*payload_r = b + 8;
	*plen_r = plen;
	return 0;
}

/* ---- TLV writer ------------------------------------------------------- */

struct wbuf {
	uint8_t *p;
	size_t len, cap;
	int failed;
};

static void wb_reserve(struct wbuf *w, size_t n)
{
	size_t ncap;
	uint8_t *np;

	if (w->failed || w->cap - w->len >= n)
		return;
	if (n > SPOOL_RECORD_MAX || w->len > SPOOL_RECORD_MAX - n) {
		w->failed = 1;
		return;
	}
	ncap = w->cap ? w->cap : 256;
	while (ncap - w->len < n)
		ncap *= 2;
	np = realloc(w->p, ncap);
	if (np == NULL) {
		w->failed = 1;
		return;
	}
	w->p = np;
	w->cap = ncap;
}

static void wb_field(struct wbuf *w, unsigned tag, const void *v, size_t n)
{
	wb_reserve(w, 5 + n);
	if (w->failed)
		return;
	w->p[w->len] = (uint8_t)tag;
	spool_record_put_u32(w->p + w->len + 1, (uint32_t)n);
	if (n > 0)
		memcpy(w->p + w->len + 5, v, n);
	w->len += 5 + n;
}

static void wb_str(struct wbuf *w, unsigned tag, const char *s)
{
	if (s != NULL)
		wb_field(w, tag, s, strlen(s));
}

static void wb_u64(struct wbuf *w, unsigned tag, uint64_t v)
{
	uint8_t b[8];

	spool_record_put_u32(b, (uint32_t)v);
	spool_record_put_u32(b + 4, (uint32_t)(v >> 32));
	wb_field(w, tag, b, 8);
}

static int wb_finish(struct wbuf *w, enum spool_record_type type,
		     uint8_t **buf_r, size_t *len_r)
{
	int rc = -1;

	if (!w->failed)
		rc = spool_record_wrap(type, w->p, w->len, buf_r, len_r);
	free(w->p);
	return rc;
}

int spool_record_encode_meta(unsigned version, uint8_t **buf_r, size_t *len_r)
{
	uint8_t v[4];

	spool_record_put_u32(v, version);
	return spool_record_wrap(SPOOL_RECORD_META, v, 4, buf_r, len_r);
}

int spool_record_decode_meta(const void *buf, size_t len, unsigned *version_r,
			     char *err, size_t errlen)
{
	const uint8_t *p;
	size_t n;

	if (spool_record_check(buf, len, SPOOL_RECORD_META, &p, &n, err, errlen) < 0)
		return -1;
	if (n != 4) {
		seterr(err, errlen, "meta record payload is %zu bytes, want 4", n);
		return -1;
	}
	*version_r = spool_record_get_u32(p);
	return 0;
}

static void encode_rcpt(struct wbuf *w, const struct spool_rcpt *r)
{
	struct wbuf in = { 0 };

	wb_str(&in, RCPT_ADDR, r->addr);
	wb_str(&in, RCPT_ORCPT, r->orcpt);
	wb_u64(&in, RCPT_NOTIFY, r->notify);
	wb_u64(&in, RCPT_STATE, (uint64_t)r->state);
	wb_u64(&in, RCPT_ATTEMPTS, r->attempts);
	wb_u64(&in, RCPT_NEXT_ATTEMPT, (uint64_t)r->next_attempt);
	wb_str(&in, RCPT_LAST_REPLY, r->last_reply);
	if (in.failed)
		w->failed = 1;
	else
		wb_field(w, ENV_RCPT, in.p, in.len);
	free(in.p);
}

int spool_record_encode_envelope(const struct spool_envelope *env,
				 uint8_t **buf_r, size_t *len_r)
{
	struct wbuf w = { 0 };

	wb_field(&w, ENV_QID, env->qid, strlen(env->qid));
	wb_str(&w, ENV_SENDER, env->sender ? env->sender : "");
	for (size_t i = 0; i < env->n_rcpts; i++)
		encode_rcpt(&w, &env->rcpts[i]);
	wb_u64(&w, ENV_DSN_RET, (uint64_t)env->dsn_ret);
	wb_str(&w, ENV_ENVID, env->envid);
	wb_u64(&w, ENV_BODY_TYPE, (uint64_t)env->body_type);
	wb_u64(&w, ENV_SMTPUTF8, env->smtputf8);
	wb_str(&w, ENV_CLIENT_ADDR, env->client_addr ? env->client_addr : "");
	wb_str(&w, ENV_CLIENT_HELO, env->client_helo ? env->client_helo : "");
	wb_u64(&w, ENV_ARRIVAL, (uint64_t)env->arrival);
	wb_u64(&w, ENV_SIZE, env->size);
	wb_u64(&w, ENV_BODY_IN_FILE, env->body_in_file);
	wb_u64(&w, ENV_BODY_CRC, env->body_crc);
	if (env->held)
		wb_u64(&w, ENV_HELD, 1);
	return wb_finish(&w, SPOOL_RECORD_ENVELOPE, buf_r, len_r);
}

/* ---- TLV reader ------------------------------------------------------- */

struct tlv {
	unsigned tag;
	const uint8_t *v;
	size_t n;
};

/* Next field at *off; 1 when one was read, 0 at the end, -1 if damaged. */
static int tlv_next(const uint8_t *p, size_t len, size_t *off, struct tlv *t,
		    char *err, size_t errlen)
{
	uint32_t n;

	if (*off == len)
		return 0;
	if (len - *off < 5) {
		seterr(err, errlen, "field header truncated at offset %zu", *off);
		return -1;
	}
	n = spool_record_get_u32(p + *off + 1);
	if (n > len - *off - 5) {
		seterr(err, errlen, "field %u at offset %zu claims %u bytes, only %zu left",
		       p[*off], *off, n, len - *off - 5);
		return -1;
	}
	t->tag = p[*off];
	t->v = p + *off + 5;
	t->n = n;
	*off += 5 + (size_t)n;
	return 1;
}

static int tlv_str(const struct tlv *t, char **dst, const char *what,
		   char *err, size_t errlen)
{
	if (*dst != NULL) {
		seterr(err, errlen, "duplicate %s field", what);
		return -1;
	}
	if (memchr(t->v, '\0', t->n) != NULL) {
		seterr(err, errlen, "%s field holds a NUL byte", what);
		return -1;
	}
	*dst = malloc(t->n + 1);
	if (*dst == NULL) {
		seterr(err, errlen, "out of memory decoding %s", what);
		return -1;
	}
	memcpy(*dst, t->v, t->n);
	(*dst)[t->n] = '\0';
	return 0;
}

static int tlv_u64(const struct tlv *t, uint64_t max, uint64_t *v,
		   const char *what, char *err, size_t errlen)
{
	if (t->n != 8) {
		seterr(err, errlen, "%s field is %zu bytes, want 8", what, t->n);
		return -1;
	}
	*v = get_u64(t->v);
	if (*v > max) {
		seterr(err, errlen, "%s value %llu out of range (max %llu)", what,
		       (unsigned long long)*v, (unsigned long long)max);
		return -1;
	}
	return 0;
}

static int decode_rcpt(const struct tlv *outer, struct spool_rcpt *r,
		       char *err, size_t errlen)
{
	size_t off = 0;
	struct tlv t;
	uint64_t v;
	int k;

	while ((k = tlv_next(outer->v, outer->n, &off, &t, err, errlen)) > 0) {
		int rc = 0;

		switch (t.tag) {
		case RCPT_ADDR:
			rc = tlv_str(&t, &r->addr, "recipient address", err, errlen);
			break;
		case RCPT_ORCPT:
			rc = tlv_str(&t, &r->orcpt, "ORCPT", err, errlen);
			break;
		case RCPT_LAST_REPLY:
			rc = tlv_str(&t, &r->last_reply, "last reply", err, errlen);
			break;
		case RCPT_NOTIFY:
			rc = tlv_u64(&t, 15, &v, "NOTIFY", err, errlen);
			r->notify = (unsigned)v;
			break;
		case RCPT_STATE:
			rc = tlv_u64(&t, SPOOL_RCPT_FAILED, &v, "recipient state", err, errlen);
			r->state = (enum spool_rcpt_state)v;
			break;
		case RCPT_ATTEMPTS:
			rc = tlv_u64(&t, UINT32_MAX, &v, "attempts", err, errlen);
			r->attempts = (uint32_t)v;
			break;
		case RCPT_NEXT_ATTEMPT:
			rc = tlv_u64(&t, UINT64_MAX, &v, "next attempt", err, errlen);
			r->next_attempt = (int64_t)v;
			break;
		default:
			break;
		}
		if (rc < 0)
			return -1;
	}
	if (k < 0)
		return -1;
	if (r->addr == NULL) {
		seterr(err, errlen, "recipient without an address");
		return -1;
	}
	return 0;
}

static int env_add_rcpt(struct spool_envelope *env, size_t *cap,
			const struct tlv *t, char *err, size_t errlen)
{
	if (env->n_rcpts == *cap) {
		size_t ncap = *cap ? *cap * 2 : 4;
		struct spool_rcpt *nr = realloc(env->rcpts, ncap * sizeof *nr);

		if (nr == NULL) {
			seterr(err, errlen, "out of memory decoding recipients");
			return -1;
		}
		env->rcpts = nr;
		*cap = ncap;
	}
	memset(&env->rcpts[env->n_rcpts], 0, sizeof env->rcpts[0]);
	env->n_rcpts++;
	return decode_rcpt(t, &env->rcpts[env->n_rcpts - 1], err, errlen);
}

static int decode_env_field(struct spool_envelope *env, const struct tlv *t,
			    size_t *rcap, char *err, size_t errlen)
{
	uint64_t v;
	int rc = 0;

	switch (t->tag) {
	case ENV_QID:
		if (env->qid[0] != '\0' || !spool_record_qid_valid((const char *)t->v, t->n)) {
			seterr(err, errlen, "bad or duplicate queue ID field");
			return -1;
		}
		memcpy(env->qid, t->v, SPOOL_QID_LEN);
		env->qid[SPOOL_QID_LEN] = '\0';
		return 0;
	case ENV_SENDER:
		return tlv_str(t, &env->sender, "sender", err, errlen);
	case ENV_RCPT:
		return env_add_rcpt(env, rcap, t, err, errlen);
	case ENV_ENVID:
		return tlv_str(t, &env->envid, "ENVID", err, errlen);
	case ENV_CLIENT_ADDR:
		return tlv_str(t, &env->client_addr, "client address", err, errlen);
	case ENV_CLIENT_HELO:
		return tlv_str(t, &env->client_helo, "client HELO", err, errlen);
	case ENV_DSN_RET:
		rc = tlv_u64(t, SPOOL_RET_HDRS, &v, "DSN RET", err, errlen);
		env->dsn_ret = (enum spool_dsn_ret)v;
		return rc;
	case ENV_BODY_TYPE:
		rc = tlv_u64(t, SPOOL_BODY_BINARYMIME, &v, "body type", err, errlen);
		env->body_type = (enum spool_body_type)v;
		return rc;
	case ENV_SMTPUTF8:
		rc = tlv_u64(t, 1, &v, "SMTPUTF8", err, errlen);
		env->smtputf8 = v != 0;
		return rc;
	case ENV_ARRIVAL:
		rc = tlv_u64(t, UINT64_MAX, &v, "arrival", err, errlen);
		env->arrival = (int64_t)v;
		return rc;
	case ENV_SIZE:
		return tlv_u64(t, UINT64_MAX, &env->size, "size", err, errlen);
	case ENV_BODY_IN_FILE:
		rc = tlv_u64(t, 1, &v, "body location", err, errlen);
		env->body_in_file = v != 0;
		return rc;
	case ENV_BODY_CRC:
		rc = tlv_u64(t, UINT32_MAX, &v, "body CRC", err, errlen);
		env->body_crc = (uint32_t)v;
		return rc;
	case ENV_HELD:
		rc = tlv_u64(t, 1, &v, "hold flag", err, errlen);
		env->held = v != 0;
		return rc;
	default:
		return 0;
	}
}

static int dup_empty(char **s)
{
	if (*s == NULL)
		*s = strdup("");
	return *s == NULL ? -1 : 0;
}

int spool_record_decode_envelope(const void *buf, size_t len,
				 struct spool_envelope **env_r,
				 char *err, size_t errlen)
{
	struct spool_envelope *env;
	const uint8_t *p;
	size_t n, off = 0, rcap = 0;
	struct tlv t;
	int k;

	*env_r = NULL;
	if (spool_record_check(buf, len, SPOOL_RECORD_ENVELOPE, &p, &n, err, errlen) < 0)
		return -1;
	env = calloc(1, sizeof *env);
	if (env == NULL) {
		seterr(err, errlen, "out of memory");
		return -1;
	}
	while ((k = tlv_next(p, n, &off, &t, err, errlen)) > 0)
		if (decode_env_field(env, &t, &rcap, err, errlen) < 0)
			goto fail;
	if (k < 0)
		goto fail;
	if (env->qid[0] == '\0' || env->sender == NULL || env->n_rcpts == 0) {
		seterr(err, errlen, "envelope lacks %s",
		       env->qid[0] == '\0' ? "a queue ID" :
		       env->sender == NULL ? "a sender" : "recipients");
		goto fail;
	}
	if (dup_empty(&env->client_addr) < 0 || dup_empty(&env->client_helo) < 0) {
		seterr(err, errlen, "out of memory");
		goto fail;
	}
	*env_r = env;
	return 0;
fail:
	spool_envelope_free(&env);
	return -1;
}

void spool_record_envelope_clear(struct spool_envelope *env)
{
	for (size_t i = 0; i < env->n_rcpts; i++) {
		free(env->rcpts[i].addr);
		free(env->rcpts[i].orcpt);
		free(env->rcpts[i].last_reply);
	}
	free(env->rcpts);
	free(env->sender);
	free(env->envid);
	free(env->client_addr);
	free(env->client_helo);
	memset(env, 0, sizeof *env);
}

void spool_envelope_free(struct spool_envelope **envp)
{
	if (*envp == NULL)
		return;
	spool_record_envelope_clear(*envp);
	free(*envp);
	*envp = NULL;
}

int spool_record_encode_quarantine(const char *reason, int64_t when,
				   const void *raw, size_t rawlen,
				   uint8_t **buf_r, size_t *len_r)
{
	struct wbuf w = { 0 };

	wb_str(&w, QUAR_REASON, reason);
	wb_u64(&w, QUAR_WHEN, (uint64_t)when);
	wb_field(&w, QUAR_RAW, raw, rawlen);
	return wb_finish(&w, SPOOL_RECORD_QUARANTINE, buf_r, len_r);
}

int spool_record_decode_quarantine(const void *buf, size_t len,
				   char **reason_r, int64_t *when_r,
				   char *err, size_t errlen)
{
	const uint8_t *p;
	size_t n, off = 0;
	struct tlv t;
	char *reason = NULL;
	uint64_t v = 0;
	int k;

	*reason_r = NULL;
	*when_r = 0;
	if (spool_record_check(buf, len, SPOOL_RECORD_QUARANTINE, &p, &n, err, errlen) < 0)
		return -1;
	while ((k = tlv_next(p, n, &off, &t, err, errlen)) > 0) {
		if (t.tag == QUAR_REASON && tlv_str(&t, &reason, "reason", err, errlen) < 0)
			goto fail;
		if (t.tag == QUAR_WHEN && tlv_u64(&t, UINT64_MAX, &v, "time", err, errlen) < 0)
			goto fail;
	}
	if (k < 0)
		goto fail;
	if (reason == NULL && (reason = strdup("")) == NULL)
		goto fail;
	*reason_r = reason;
	*when_r = (int64_t)v;
	return 0;
fail:
	free(reason);
	return -1;
}

int spool_record_qid_valid(const char *s, size_t len)
{
	static const char digits[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

	if (len != SPOOL_QID_LEN)
		return 0;
	for (size_t i = 0; i < len; i++)
		if (s[i] == '\0' || strchr(digits, s[i]) == NULL)
			return 0;
	return 1;
}
