/*
 * auth: submission decisions and the failed-AUTH memory (see auth.h).
 *
 * The limiter is an open table of AUTH_LIMITER_SLOTS addresses; a full
 * table replaces its oldest entry, so a flood of addresses costs a fixed
 * amount of memory (and at worst forgets some failures early).
 */
#include "auth.h"

#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define AUTH_LIMITER_SLOTS 4096u

struct auth_slot {
	uint8_t addr[16];
	uint8_t family;
	unsigned failures;
	int64_t last;                 /* 0 = free */
};

struct auth_limiter {
	struct auth_slot slot[AUTH_LIMITER_SLOTS];
};

static void accept_result(struct policy_result *r)
{
	*r = (struct policy_result){ .verdict = POLICY_ACCEPT, .enhanced = "", .text = "",
				     .reason = "" };
}

void auth_check_rcpt(const struct policy_result *base, bool authenticated,
		     struct policy_result *r)
{
	if (authenticated && base->verdict != POLICY_ACCEPT &&
	    base->event == EV_POLICY_RELAY_DENIED)
		accept_result(r);
	else
		*r = *base;
}

void auth_check_sender(const struct carrier_conf *conf, const char *login, bool null,
		       const char *local, const char *domain, struct policy_result *r)
{
	const char *at = strrchr(login, '@');
	bool ok;

	accept_result(r);
	if (!conf->auth_sender_login_match || null)
		return;
	if (at != NULL)
		ok = domain[0] && strlen(local) == (size_t)(at - login) &&
		     strncmp(local, login, (size_t)(at - login)) == 0 &&
		     strcasecmp(domain, at + 1) == 0;
	else
		ok = domain[0] && strcmp(local, login) == 0 && conf_is_local_domain(conf, domain);
	if (ok)
		return;
	*r = (struct policy_result){
		.verdict = POLICY_REJECT, .code = 553, .enhanced = "5.7.1",
		.text = "Sender address rejected: not owned by the authenticated user",
		.event = EV_AUTH_SENDER_MISMATCH, .reason = "sender not owned by login",
	};
}

/* ---- limiter ---------------------------------------------------------------- */

static void key_of(const struct sockaddr *sa, uint8_t addr[16], uint8_t *family)
{
	memset(addr, 0, 16);
	*family = (uint8_t)sa->sa_family;
	if (sa->sa_family == AF_INET)
		memcpy(addr, &((const struct sockaddr_in *)sa)->sin_addr, 4);
	else if (sa->sa_family == AF_INET6)
		memcpy(addr, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
}

static size_t hash_of(const uint8_t addr[16], uint8_t family)
{
	uint64_t h = 1469598103934665603ull ^ family;

	for (size_t i = 0; i < 16; i++)
		h = (h ^ addr[i]) * 1099511628211ull;
	return (size_t)(h % AUTH_LIMITER_SLOTS);
}

/* Linear probing over 8 slots: the address's slot, else a free or stale
 * one, else the oldest of the 8. */
static struct auth_slot *find(struct auth_limiter *l, const struct sockaddr *sa,
			      int64_t now, unsigned window, bool create)
{
	uint8_t addr[16], family;
	struct auth_slot *victim = NULL;
	size_t h;

	key_of(sa, addr, &family);
	h = hash_of(addr, family);
	for (size_t i = 0; i < 8; i++) {
		struct auth_slot *s = &l->slot[(h + i) % AUTH_LIMITER_SLOTS];

		if (s->last != 0 && now - s->last >= (int64_t)window)
			s->last = 0;   /* expired */
		if (s->last != 0 && s->family == family && memcmp(s->addr, addr, 16) == 0)
			return s;
		if (victim == NULL || (victim->last != 0 && s->last < victim->last))
			victim = s;
	}
	if (!create)
		return NULL;
	memset(victim, 0, sizeof *victim);
	memcpy(victim->addr, addr, 16);
	victim->family = family;
	victim->last = now;
	return victim;
}

struct auth_limiter *auth_limiter_new(void)
{
	return calloc(1, sizeof(struct auth_limiter));
}

void auth_limiter_free(struct auth_limiter **lp)
{
	free(*lp);
	*lp = NULL;
}

unsigned auth_limiter_failures(struct auth_limiter *l, const struct sockaddr *addr,
			       int64_t now, unsigned window)
{
	struct auth_slot *s = l ? find(l, addr, now, window, false) : NULL;

	return s ? s->failures : 0;
}

unsigned auth_limiter_fail(struct auth_limiter *l, const struct sockaddr *addr,
			   int64_t now, unsigned window)
{
	struct auth_slot *s;

	if (l == NULL)
		return 1;
	s = find(l, addr, now, window, true);
	s->last = now > 0 ? now : 1;
	return ++s->failures;
}

void auth_limiter_unfail(struct auth_limiter *l, const struct sockaddr *addr)
{
	struct auth_slot *s = l ? find(l, addr, 1, UINT32_MAX, false) : NULL;

	if (s != NULL && s->failures > 0)
		s->failures--;
}

void auth_limiter_clear(struct auth_limiter *l, const struct sockaddr *addr)
{
	struct auth_slot *s = l ? find(l, addr, 1, UINT32_MAX, false) : NULL;

	if (s != NULL)
		s->last = 0;
}
