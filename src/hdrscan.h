/*
 * hdrscan: an incremental scanner of a message's header section.
 *
 * Fed the message bytes (as stored, after DATA unstuffing, or BDAT chunks
 * as sent) in any chunking, it follows the header section, which ends at
 * the first empty line, and keeps two things of it: the number of
 * "Received:" fields (loop detection) and the value of the first
 * "Message-ID:" field (the tracking log), unfolded, trimmed, without
 * control characters and at most HDRSCAN_MSGID_MAX octets.
 *
 * Rules, shared with smtp_parse's DATA reader for Received: a line ends at
 * LF (a CR just before it belongs to the line end); a field name is
 * matched case-insensitively at the start of a line; "Received" must be
 * followed directly by ':', "Message-ID" may have blanks before its ':'
 * (RFC 5322 obs-optional); a line starting with SP or HTAB continues the
 * field before it; other lines without a matching name are skipped.  In
 * the captured value a line break of a folded field disappears, HTAB
 * counts as SP, other control characters (and DEL) are dropped, leading
 * and trailing blanks are removed, and a value longer than the bound is
 * cut there (at a UTF-8 character boundary).
 *
 * Pure and bounded: no allocation, no I/O, state of fixed size; an
 * all-zero struct hdrscan is a fresh scanner.  Any thread, one scanner per
 * thread at a time.
 */
#ifndef CARRIER_HDRSCAN_H
#define CARRIER_HDRSCAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* RFC 5322 2.1.1: a line is at most 998 octets. */
#define HDRSCAN_MSGID_MAX 998

enum hdrscan_result {
	HDRSCAN_MORE = 0,   /* still in the header section: feed more */
	HDRSCAN_DONE,       /* the header section has ended; more bytes are ignored */
};

/* The scanner; its fields are private (read them with the functions). */
struct hdrscan {
	uint8_t state;
	uint8_t name_len;             /* field-name octets matched */
	uint8_t cand;                 /* field names still possible */
	bool capturing;               /* inside the first Message-ID field */
	bool msgid_seen;              /* a Message-ID field began */
	bool msgid_cut;               /* the value was longer than the bound */
	uint16_t msgid_len;           /* octets in msgid (no trailing blank) */
	uint16_t blanks;              /* blanks held until a non-blank follows */
	unsigned received;
	char msgid[HDRSCAN_MSGID_MAX + 1];
};

/* Starts `h` afresh (same as zeroing it). */
void hdrscan_init(struct hdrscan *h);

/* Scans `n` bytes of `p` (p may be NULL when n == 0).  Returns
 * HDRSCAN_DONE once the empty line ending the header section was seen. */
enum hdrscan_result hdrscan_feed(struct hdrscan *h, const void *p, size_t n);

/* "Received:" fields seen so far (saturates at UINT_MAX). */
unsigned hdrscan_received(const struct hdrscan *h);

/* The first Message-ID's value as captured so far ("" when none); valid
 * until the next hdrscan_feed or hdrscan_init on `h`. */
const char *hdrscan_msgid(const struct hdrscan *h);

/* True when the Message-ID value was cut at HDRSCAN_MSGID_MAX. */
bool hdrscan_msgid_cut(const struct hdrscan *h);

#endif
