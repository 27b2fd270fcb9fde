/*
 * hdrscan: an incremental scanner of a message's header section (see
 * hdrscan.h for the rules).  One state byte per position, no lookahead:
 * a chunk boundary anywhere gives the same result as the whole message.
 *
 * Pure: no allocation, no I/O, no globals.
 */
#include "hdrscan.h"

#include <limits.h>
#include <string.h>

enum {
	ST_BOL = 0,     /* start of a line (zero: a fresh scanner) */
	ST_BOL_CR,      /* CR at the start of a line: LF makes it empty */
	ST_NAME,        /* matching a field name */
	ST_NAME_BLANK,  /* "Message-ID" matched, blanks before ':' */
	ST_VALUE,       /* inside the first Message-ID's value */
	ST_SKIP,        /* rest of a line of no interest */
	ST_BODY,        /* the header section has ended */
};

/* Field names still possible while matching (struct hdrscan.cand). */
enum { CAND_RECEIVED = 1, CAND_MSGID = 2 };

static const char received_name[] = "received";      /* then ':' at once */
static const char msgid_name[] = "message-id";       /* blanks, then ':' */
#define RECEIVED_LEN 8u
#define MSGID_LEN 10u

void hdrscan_init(struct hdrscan *h)
{
	memset(h, 0, sizeof *h);
}

static unsigned char lower(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + ('a' - 'A')) : c;
}

static bool blank(unsigned char c)
{
	return c == ' ' || c == '\t';
}

/* Drops a UTF-8 sequence left incomplete at the end of the value by the
 * cut, then any blank before it. */
static void value_cut(struct hdrscan *h)
{
	size_t len = h->msgid_len, i = len;

	h->msgid_cut = true;
	h->blanks = 0;
	while (i > 0 && len - i < 3 && ((unsigned char)h->msgid[i - 1] & 0xC0) == 0x80)
		i--;
	if (i > 0) {
		unsigned char lead = (unsigned char)h->msgid[i - 1];
		size_t need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;

		if (need > 1 && len - (i - 1) < need)
			len = i - 1;
	}
	while (len > 0 && h->msgid[len - 1] == ' ')
		len--;
	h->msgid_len = (uint16_t)len;
	h->msgid[len] = '\0';
}

/* One octet of the Message-ID value (line ends already removed). */
static void value_octet(struct hdrscan *h, unsigned char c)
{
	if (h->msgid_cut)
		return;
	if (blank(c)) {
		/* Held, so leading and trailing blanks never enter the value. */
		if (h->msgid_len > 0 && h->blanks < HDRSCAN_MSGID_MAX)
			h->blanks++;
		return;
	}
	if (c < 0x20 || c == 0x7f)
		return;
	if ((size_t)h->msgid_len + h->blanks + 1 > HDRSCAN_MSGID_MAX) {
		value_cut(h);
		return;
	}
	memset(h->msgid + h->msgid_len, ' ', h->blanks);
	h->msgid_len = (uint16_t)(h->msgid_len + h->blanks);
	h->blanks = 0;
	h->msgid[h->msgid_len++] = (char)c;
	h->msgid[h->msgid_len] = '\0';
}

/* ':' after a field name. */
static void name_end(struct hdrscan *h)
{
	if ((h->cand & CAND_RECEIVED) && h->name_len == RECEIVED_LEN) {
		if (h->received < UINT_MAX)
			h->received++;
	} else if ((h->cand & CAND_MSGID) && h->name_len == MSGID_LEN && !h->msgid_seen) {
		h->msgid_seen = true;
		h->capturing = true;
		h->state = ST_VALUE;
		return;
	}
	h->state = ST_SKIP;
}

/* One octet of a field name (the first one comes from ST_BOL). */
static void name_octet(struct hdrscan *h, unsigned char c)
{
	unsigned char lc = lower(c);
	uint8_t cand = 0;

	if (c == ':') {
		name_end(h);
		return;
	}
	if (blank(c) && (h->cand & CAND_MSGID) && h->name_len == MSGID_LEN) {
		h->state = ST_NAME_BLANK;
		return;
	}
	if ((h->cand & CAND_RECEIVED) && h->name_len < RECEIVED_LEN &&
	    lc == (unsigned char)received_name[h->name_len])
		cand |= CAND_RECEIVED;
	if ((h->cand & CAND_MSGID) && h->name_len < MSGID_LEN &&
	    lc == (unsigned char)msgid_name[h->name_len])
		cand |= CAND_MSGID;
	h->cand = cand;
	h->name_len++;
	h->state = cand ? ST_NAME : ST_SKIP;
}

/* The first octet of a line. */
static void line_start(struct hdrscan *h, unsigned char c)
{
	if (c == '\n') {
		h->capturing = false;
		h->state = ST_BODY;
		return;
	}
	if (c == '\r') {
		h->state = ST_BOL_CR;
		return;
	}
	if (blank(c)) {
		/* A folded line continues the field before it. */
		if (h->capturing) {
			h->state = ST_VALUE;
			value_octet(h, ' ');
		} else {
			h->state = ST_SKIP;
		}
		return;
	}
	h->capturing = false;
	h->cand = CAND_RECEIVED | CAND_MSGID;
	h->name_len = 0;
	name_octet(h, c);
}

enum hdrscan_result hdrscan_feed(struct hdrscan *h, const void *p, size_t n)
{
	const unsigned char *b = p;

	for (size_t i = 0; i < n && h->state != ST_BODY; i++) {
		unsigned char c = b[i];

		if (c == '\n' && h->state != ST_BOL && h->state != ST_BOL_CR) {
			h->state = ST_BOL;
			continue;
		}
		switch (h->state) {
		case ST_BOL:
			line_start(h, c);
			break;
		case ST_BOL_CR:
			/* CR LF: the empty line; CR then anything else: a
			 * malformed line, skipped (it ends a folded field). */
			h->capturing = false;
			h->state = c == '\n' ? ST_BODY : ST_SKIP;
			break;
		case ST_NAME:
			name_octet(h, c);
			break;
		case ST_NAME_BLANK:
			if (c == ':')
				name_end(h);
			else if (!blank(c))
				h->state = ST_SKIP;
			break;
		case ST_VALUE:
			value_octet(h, c);
			break;
		default:   /* ST_SKIP */
			break;
		}
	}
	return h->state == ST_BODY ? HDRSCAN_DONE : HDRSCAN_MORE;
}

unsigned hdrscan_received(const struct hdrscan *h)
{
	return h->received;
}

const char *hdrscan_msgid(const struct hdrscan *h)
{
	return h->msgid;
}

bool hdrscan_msgid_cut(const struct hdrscan *h)
{
	return h->msgid_cut;
}
