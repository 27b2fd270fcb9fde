/*
 * smtp_parse_int: what smtp_parse.c, smtp_parse_data.c and
 * smtp_parse_reply.c share; not for other modules (they use
 * smtp_parse.h).  Pure like the rest of the module: no state, no I/O.
 */
#ifndef CARRIER_SMTP_PARSE_INT_H
#define CARRIER_SMTP_PARSE_INT_H

#include <stdbool.h>

typedef unsigned char uchar;

/* ---- character classes (ASCII only: no locale) ------------------------ */

static inline bool is_digit(uchar c)
{
	return c >= '0' && c <= '9';
}

static inline uchar to_lower(uchar c)
{
	return (c >= 'A' && c <= 'Z') ? (uchar)(c + 32) : c;
}

#endif
