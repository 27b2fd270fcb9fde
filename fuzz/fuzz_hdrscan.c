/*
 * fuzz_hdrscan: libFuzzer harness for the message header scanner.
 *
 * Bytes 0-1 pick a split point.  The rest is scanned whole, split in two
 * at the split point, and one byte at a time; all runs must agree (result,
 * Received: count, Message-ID).  The Received: count must equal a simple
 * line-by-line reference; the Message-ID must be within its bound, hold
 * no control character and no leading or trailing blank.  Violations
 * abort().
 *
 * Threads: single (libFuzzer).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "hdrscan.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int cond)
{
	if (!cond)
		abort();
}

/* Lines (ending at LF) before the first empty one that start with
 * "received:", case-insensitively. */
static unsigned reference_received(const uint8_t *p, size_t n)
{
	unsigned count = 0;
	size_t i = 0;

	while (i < n) {
		const uint8_t *lf = memchr(p + i, '\n', n - i);
		size_t len = lf ? (size_t)(lf - (p + i)) : n - i;

		if (lf != NULL && (len == 0 || (len == 1 && p[i] == '\r')))
			break;
		if (len >= 9 && strncasecmp((const char *)p + i, "received:", 9) == 0)
			count++;
		i += len + 1;
	}
	return count;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct hdrscan a, b, c;
	enum hdrscan_result ra, rb, rc = HDRSCAN_MORE;
	size_t split, len;
	const char *id;

	if (size < 2)
		return 0;
	split = (size_t)data[0] | (size_t)data[1] << 8;
	data += 2;
	size -= 2;
	if (split > size)
		split = size;

	hdrscan_init(&a);
	ra = hdrscan_feed(&a, data, size);
	hdrscan_init(&b);
	hdrscan_feed(&b, data, split);
	rb = hdrscan_feed(&b, data + split, size - split);
	hdrscan_init(&c);
	for (size_t i = 0; i < size; i++)
		rc = hdrscan_feed(&c, data + i, 1);
	if (size == 0)
		rc = hdrscan_feed(&c, NULL, 0);

	check(ra == rb && rb == rc);
	check(hdrscan_received(&a) == hdrscan_received(&b));
	check(hdrscan_received(&a) == hdrscan_received(&c));
	check(hdrscan_received(&a) == reference_received(data, size));
	check(strcmp(hdrscan_msgid(&a), hdrscan_msgid(&b)) == 0);
	check(strcmp(hdrscan_msgid(&a), hdrscan_msgid(&c)) == 0);
	id = hdrscan_msgid(&a);
	len = strlen(id);
	check(len <= HDRSCAN_MSGID_MAX);
	for (size_t i = 0; i < len; i++)
		check((unsigned char)id[i] >= 0x20 && (unsigned char)id[i] != 0x7f);
	check(len == 0 || (id[0] != ' ' && id[len - 1] != ' '));
	return 0;
}
