/*
 * policy: inbound acceptance decisions (see policy.h).  Pure: no I/O, no
 * state, no logging; the SMTP server sends the replies and emits the events
 * named here.
 */
#include "policy.h"

#include <string.h>

#define POLICY_DOMAIN_MAX 255   /* RFC 5321 4.5.3.1.2 */

static void result_set(struct policy_result *r, enum policy_verdict v,
		       unsigned code, const char *enhanced, const char *text,
		       int event, const char *reason)
{
	r->verdict = v;
	r->code = code;
	r->enhanced = enhanced;
	r->text = text;
	r->event = event;
	r->reason = reason;
}

static void result_accept(struct policy_result *r)
{
	result_set(r, POLICY_ACCEPT, 0, "", "", 0, "");
}

void policy_check_connection(const struct carrier_conf *conf,
			     const struct policy_conn_counts *counts,
			     struct policy_result *r)
{
	if (counts->shutting_down)
		result_set(r, POLICY_TEMPFAIL, 421, "4.3.2",
			   "Service shutting down, try again later", 0,
			   "shutting down");
	else if (counts->total >= conf->max_connections)
		result_set(r, POLICY_TEMPFAIL, 421, "4.7.0",
			   "Too many connections, try again later",
			   EV_POLICY_CONNECTION_REFUSED, "max_connections");
	else if (counts->from_ip >= conf->max_connections_per_ip)
		result_set(r, POLICY_TEMPFAIL, 421, "4.7.0",
			   "Too many connections from your address, try again later",
			   EV_POLICY_CONNECTION_REFUSED, "max_connections_per_ip");
	else
		result_accept(r);
}

void policy_check_mail(bool null_sender, bool has_size, uint64_t size,
		       uint64_t max_size, struct policy_result *r)
{
	(void)null_sender;   /* RFC 5321 4.5.5: bounces must get through */
	if (has_size && max_size > 0 && size > max_size)
		result_set(r, POLICY_REJECT, 552, "5.3.4",
			   "Message size exceeds fixed maximum message size", 0,
			   "declared size too big");
	else
		result_accept(r);
}

bool policy_domain_is_local(const struct carrier_conf *conf, const char *domain)
{
	char buf[POLICY_DOMAIN_MAX + 1];
	size_t n = strlen(domain);

	if (n > 0 && domain[n - 1] == '.')
		n--;
	if (n == 0 || n > POLICY_DOMAIN_MAX)
		return false;
	memcpy(buf, domain, n);
	buf[n] = '\0';
	return conf_is_local_domain(conf, buf);
}

void policy_check_rcpt(const struct carrier_conf *conf,
		       const struct sockaddr *client, const char *domain,
		       bool postmaster, unsigned n_rcpts, unsigned max_rcpts,
		       struct policy_result *r)
{
	if (n_rcpts >= max_rcpts) {
		result_set(r, POLICY_TEMPFAIL, 452, "4.5.3", "Too many recipients",
			   0, "too many recipients");
		return;
	}
	if (postmaster || policy_domain_is_local(conf, domain)) {
		result_accept(r);
		return;
	}
	if (client != NULL && conf_is_relay_client(conf, client)) {
		result_accept(r);
		return;
	}
	result_set(r, POLICY_REJECT, 554, "5.7.1", "Relay access denied",
		   EV_POLICY_RELAY_DENIED, "relay access denied");
}

void policy_check_received(unsigned received, unsigned max_received,
			   struct policy_result *r)
{
	if (received > max_received)
		result_set(r, POLICY_REJECT, 554, "5.4.6",
			   "Too many Received headers: mail loop detected",
			   EV_POLICY_LOOP, "mail loop");
	else
		result_accept(r);
}
