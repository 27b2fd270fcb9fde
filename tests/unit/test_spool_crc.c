/*
 * Unit tests for spool_record_crc32 (PCLMULQDQ folding from 64 bytes on
 * CPUs that have it, slicing-by-8 for the rest): known vectors, and
 * equality with the former nibble-table implementation (kept here only) over
 * random buffers of every length 0..4096 at every alignment, whole and split
 * in two, so the spool's on-disk CRCs are unchanged; and CRC combination.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "spool_record.h"

/* The implementation spool_record.c had before slicing-by-8: the reference. */
static const uint32_t crc_nibble[16] = {
	0x00000000, 0x1DB71064, 0x3B6E20C8, 0x26D930AC,
	0x76DC4190, 0x6B6B51F4, 0x4DB26158, 0x5005713C,
	0xEDB88320, 0xF00F9344, 0xD6D6A3E8, 0xCB61B38C,
	0x9B64C2B0, 0x86D3D2D4, 0xA00AE278, 0xBDBDF21C,
};

static uint32_t old_crc32(uint32_t crc, const void *p, size_t n)
{
	const uint8_t *b = p;

	crc = ~crc;
	for (size_t i = 0; i < n; i++) {
		crc ^= b[i];
		crc = (crc >> 4) ^ crc_nibble[crc & 15];
		crc = (crc >> 4) ^ crc_nibble[crc & 15];
	}
	return ~crc;
}

/* xorshift64: reproducible random bytes without touching rand()'s state. */
static uint64_t rng_state = 0x9E3779B97F4A7C15u;

static uint64_t rng(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return rng_state;
}

static void test_known_vectors(void **state)
{
	static const uint8_t zeros[32], ones[32] = {
		0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
		0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
		0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
		0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
	};
	const char *fox = "The quick brown fox jumps over the lazy dog";

	(void)state;
	assert_int_equal(spool_record_crc32(0, "", 0), 0x00000000u);
	assert_int_equal(spool_record_crc32(0, NULL, 0), 0x00000000u);
	assert_int_equal(spool_record_crc32(0, "a", 1), 0xE8B7BE43u);
	assert_int_equal(spool_record_crc32(0, "123456789", 9), 0xCBF43926u);
	assert_int_equal(spool_record_crc32(0, fox, strlen(fox)), 0x414FA339u);
	assert_int_equal(spool_record_crc32(0, zeros, 32), 0x190A55ADu);
	assert_int_equal(spool_record_crc32(0, ones, 32), 0xFF6CAB0Bu);
	/* chaining: CRC of a prefix continues over the rest */
	assert_int_equal(spool_record_crc32(spool_record_crc32(0, "1234", 4), "56789", 5),
			 0xCBF43926u);
}

static void test_same_as_nibble_table(void **state)
{
	enum { MAXLEN = 4096, ALIGN = 16 };
	uint8_t *buf = malloc(MAXLEN + ALIGN);

	(void)state;
	assert_non_null(buf);
	for (size_t i = 0; i < MAXLEN + ALIGN; i++)
		buf[i] = (uint8_t)rng();
	for (size_t len = 0; len <= MAXLEN; len++) {
		/* every alignment for short buffers, a random one beyond */
		size_t nalign = len <= 64 ? ALIGN : 2;

		for (size_t a = 0; a < nalign; a++) {
			size_t off = len <= 64 || a == 0 ? a : (size_t)(rng() % ALIGN);
			const uint8_t *p = buf + off;
			uint32_t seed = a & 1 ? (uint32_t)rng() : 0;
			uint32_t want = old_crc32(seed, p, len);
			size_t cut = len ? (size_t)(rng() % (len + 1)) : 0;

			if (spool_record_crc32(seed, p, len) != want)
				fail_msg("length %zu at offset %zu, seed 0x%08x: 0x%08x, want 0x%08x",
					 len, off, seed, spool_record_crc32(seed, p, len), want);
			if (spool_record_crc32(spool_record_crc32(seed, p, cut), p + cut, len - cut) != want)
				fail_msg("length %zu at offset %zu split at %zu differs", len, off, cut);
		}
		/* fresh bytes now and then, so the lengths do not all share one prefix */
		if (len % 97 == 0)
			for (size_t i = 0; i < MAXLEN + ALIGN; i++)
				buf[i] = (uint8_t)rng();
	}
	free(buf);
}

static void test_record_frame_crc(void **state)
{
	/* a framed record checks out, and its trailer is the nibble-table CRC */
	uint8_t payload[300], *rec = NULL;
	const uint8_t *p;
	size_t len, n;
	char err[128];

	(void)state;
	for (size_t i = 0; i < sizeof payload; i++)
		payload[i] = (uint8_t)rng();
	assert_int_equal(spool_record_wrap(SPOOL_RECORD_BODY, payload, sizeof payload, &rec, &len), 0);
	assert_int_equal(len, sizeof payload + SPOOL_RECORD_OVERHEAD);
	{
		uint32_t want = old_crc32(0, rec, len - 4);
		const uint8_t *t = rec + len - 4;

		assert_int_equal((uint32_t)t[0] | (uint32_t)t[1] << 8 | (uint32_t)t[2] << 16 |
				 (uint32_t)t[3] << 24, want);
	}
	assert_int_equal(spool_record_check(rec, len, SPOOL_RECORD_BODY, &p, &n, err, sizeof err), 0);
	assert_int_equal(n, sizeof payload);
	assert_memory_equal(p, payload, n);
	rec[100] ^= 0x10;
	assert_int_equal(spool_record_check(rec, len, SPOOL_RECORD_BODY, &p, &n, err, sizeof err), -1);
	free(rec);
}

static void test_combine(void **state)
{
	/* CRC(A || B) from CRC(A), CRC(B) and |B|, against the reference over
	 * the joined bytes: empty parts, every small length, large ones */
	enum { N = 300 * 1024 };
	uint8_t *buf = malloc(N);

	(void)state;
	assert_non_null(buf);
	for (size_t i = 0; i < N; i++)
		buf[i] = (uint8_t)rng();
	for (size_t t = 0; t < 600; t++) {
		size_t a = t < 300 ? t % 20 : (size_t)(rng() % 5000);
		size_t b = t < 300 ? t / 20 : (size_t)(rng() % (N - a));
		uint32_t ca = old_crc32(0, buf, a), cb = old_crc32(0, buf + a, b);

		assert_int_equal(spool_record_crc32_combine(ca, cb, b), old_crc32(0, buf, a + b));
	}
	free(buf);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_known_vectors),
		cmocka_unit_test(test_same_as_nibble_table),
		cmocka_unit_test(test_record_frame_crc),
		cmocka_unit_test(test_combine),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
