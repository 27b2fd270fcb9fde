/*
 * policy: the inbound acceptance decisions.
 *
 * Owns: who may connect (connection limits), which recipients are accepted
 * (local domains from anyone, other domains only from relay clients,
 * <Postmaster> always), message limits that are policy rather than protocol
 * (declared SIZE, recipients per message, Received-header loop detection).
 *
 * Must not: do I/O, log, keep state.  Every function is pure: it reads the
 * configuration and its arguments and fills a struct policy_result, which
 * names the reply and the event the caller (smtp_server) sends and emits.
 *
 * Threads: any; reentrant.
 */
#ifndef CARRIER_POLICY_H
#define CARRIER_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "conf.h"
#include "evlog.h"

enum policy_verdict {
	POLICY_ACCEPT = 0,
	POLICY_TEMPFAIL,   /* 4xx: try again later */
	POLICY_REJECT,     /* 5xx: permanent */
};

/*
 * A decision.  For ACCEPT, code is 0 and the strings are "".  Otherwise
 * code/enhanced/text are the reply ("554", "5.7.1", "Relay access
 * denied"); strings are static.  `event` is the event the caller emits for
 * the refusal (0 when none is due) and `reason` a short text for its
 * fields ("relay access denied").
 */
struct policy_result {
	enum policy_verdict verdict;
	unsigned code;
	const char *enhanced;
	const char *text;
	int event;            /* enum evlog_id, or 0 */
	const char *reason;
};

/* Which connection limit refused a client (for the event's fields). */
struct policy_conn_counts {
	size_t total;         /* sessions open now, not counting this one */
	size_t from_ip;       /* of those, from the same client address */
	bool shutting_down;   /* the server is draining */
};

/*
 * A new connection: 421 4.7.0 when `total` has reached max_connections or
 * `from_ip` has reached max_connections_per_ip; 421 4.3.2 while shutting
 * down.  Event POLICY_CONNECTION_REFUSED for the limits.
 */
void policy_check_connection(const struct carrier_conf *conf,
			     const struct policy_conn_counts *counts,
			     struct policy_result *r);

/*
 * MAIL FROM: the null reverse-path is always allowed (bounces must get
 * through); a declared SIZE= above `max_size` (the transaction's snapshot of
 * max_message_size) gives 552 5.3.4.  No other sender check yet.
 */
void policy_check_mail(bool null_sender, bool has_size, uint64_t size,
		       uint64_t max_size, struct policy_result *r);

/*
 * RCPT TO: `n_rcpts` recipients are already accepted in this transaction;
 * at `max_rcpts` the answer is 452 4.5.3 (RFC 5321 4.5.3.1.10: a
 * temporary failure, the client sends the rest in another transaction).
 * <Postmaster> (`postmaster`) is always accepted.  A `domain` (as sent; a
 * trailing dot and case are ignored) that is a local domain is accepted
 * from anyone; any other domain, address literals included, only when
 * `client` is in relay_networks; otherwise 554 5.7.1 "Relay access denied"
 * with event POLICY_RELAY_DENIED.  `client` may be NULL (never a relay
 * client).
 */
void policy_check_rcpt(const struct carrier_conf *conf,
		       const struct sockaddr *client, const char *domain,
		       bool postmaster, unsigned n_rcpts, unsigned max_rcpts,
		       struct policy_result *r);

/*
 * End of data: the message arrived carrying `received` Received: header
 * lines.  More than `max_received` (the snapshot of max_received_headers)
 * means a mail loop: 554 5.4.6, event POLICY_LOOP.
 */
void policy_check_received(unsigned received, unsigned max_received,
			   struct policy_result *r);

/* True when `domain` (trailing dot and case ignored) is local. */
bool policy_domain_is_local(const struct carrier_conf *conf, const char *domain);

#endif
