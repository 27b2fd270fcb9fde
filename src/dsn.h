/*
 * dsn: delivery status notifications (RFC 3464 multipart/report, RFC 3461
 * NOTIFY/RET/ENVID/ORCPT, RFC 3834 Auto-Submitted).
 *
 * A pure builder: envelope facts and per-recipient results in, the text of
 * one notification message out (CRLF line ends).  It does not send or queue
 * it: the delivery runner commits it to the spool like any message, from
 * the null reverse-path.  Must not: do I/O, read the clock.
 *
 * Decisions:
 *  - One report per original message and pass, listing every recipient
 *    given (the caller passes those that failed, or were delayed).
 *  - RET=HDRS: the original's header (text/rfc822-headers).  RET=FULL and
 *    RET unset (RFC 3461 4.3 lets us choose): the whole message
 *    (message/rfc822) when it is at most DSN_FULL_MAX bytes, else its
 *    header only.  Delay warnings and success reports carry the header
 *    only.
 *  - Status: the remote enhanced code when there is one, else X.0.0 from
 *    the reply code's class; expiry uses 4.4.7 with Action: failed.
 *  - ENVID and ORCPT are xtext (RFC 3461 4) in the spool; they are decoded
 *    here, and any byte outside printable ASCII is replaced by '?'.
 *
 * Threads: reentrant.
 */
#ifndef CARRIER_DSN_H
#define CARRIER_DSN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "spool.h"

/* Largest original message returned whole with RET=FULL or no RET. */
#define DSN_FULL_MAX (256u * 1024u)

enum dsn_kind {
	DSN_FAILURE,    /* Action: failed (5xx results, expiry) */
	DSN_DELAY,      /* Action: delayed (delay warning) */
	DSN_SUCCESS,    /* Action: delivered / relayed (NOTIFY=SUCCESS) */
};

struct dsn_rcpt {
	const char *addr;           /* final recipient, never NULL */
	const char *orcpt;          /* ORCPT as stored ("rfc822;a+2Bb@c"), or NULL */
	const char *status;         /* enhanced code "5.1.1", or NULL/"" */
	unsigned code;              /* reply code (550), 0 when none */
	const char *remote_mta;     /* host that answered, or NULL/"" */
	const char *diagnostic;     /* reply text / reason, or NULL */
	bool expired;               /* failed because its lifetime ran out */
	bool relayed;               /* success: passed to a peer without DSN
				     * (Action: relayed), else delivered */
	int64_t last_attempt;       /* unix seconds, 0 = unknown */
	int64_t retry_until;        /* delays: unix seconds of expiry, 0 = none */
};

struct dsn_msg {
	enum dsn_kind kind;
	const char *reporting_mta;  /* our host name */
	const char *qid;            /* the original's queue ID */
	const char *message_id;     /* Message-ID for the report, without <> */
	const char *to;             /* recipient of the report (the sender) */
	const char *envid;          /* ENVID as stored (xtext) or NULL */
	enum spool_dsn_ret ret;
	int64_t arrival;            /* of the original */
	int64_t now;                /* Date: of the report */
	const char *original;       /* the original message bytes (or a prefix
				     * holding at least its header), may be NULL */
	size_t original_len;
	uint64_t original_size;     /* the original's full size */
};

/* True when a recipient's NOTIFY (SPOOL_NOTIFY_* bits) asks for `kind`:
 * failure when NOTIFY is unset or has FAILURE; delay when unset or DELAY;
 * success only when SUCCESS is given; never with NEVER. */
bool dsn_wanted(enum dsn_kind kind, unsigned notify);

/*
 * Where a notification for a message from `sender` goes: the sender, or
 * for a null sender (a failed notification: the double-bounce rule)
 * `double_bounce_to` when set ("" / NULL: nowhere, NULL is returned).
 * *double_r tells which case it was.
 */
const char *dsn_recipient(const char *sender, const char *double_bounce_to,
			  bool *double_r);

/*
 * Builds the notification for the `n` (>= 1) recipients.  Returns 0 with
 * a malloc'd text in *text_r (NUL-terminated; length in *len_r) that the
 * caller frees, or -1 with err (out of memory, n == 0).
 */
int dsn_build(const struct dsn_msg *m, const struct dsn_rcpt *rcpts, size_t n,
	      char **text_r, size_t *len_r, char *err, size_t errlen);

/* Decodes xtext (RFC 3461 4): "+XX" hex pairs; non-printable results and
 * malformed escapes become '?'.  Writes at most outlen-1 bytes + NUL. */
void dsn_xtext_decode(const char *in, char *out, size_t outlen);

/* Formats `t` as an RFC 5322 date-time in UTC ("Tue, 24 Nov 2026
 * 13:57:14 +0000"). */
void dsn_format_date(int64_t t, char *buf, size_t size);

#endif
