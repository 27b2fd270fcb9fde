/*
 * fuzz_dns: libFuzzer harness for the DNS data decoders and the next-hop
 * syntax.  carrier reads answers through libunbound's parsed ub_result
 * (rdata items), so the untrusted bytes it decodes itself are MX rdata
 * (preference + wire name), A/AAAA rdata, and address literals; the via
 * parser reads the configuration.
 *
 * Byte 0 picks the mode:
 *   even  the rest is a list of rdata items, each [length byte][bytes],
 *         fed as an MX set to dns_mx_build() and one by one to the MX and
 *         address decoders
 *   odd   the rest is a string for route_parse_via(), dns_parse_literal()
 *         and dns_name_ok()
 * Invariants (abort on violation): decoded names are valid lower-case host
 * names; MX sets are sorted, bounded, and a null MX has no exchanger; a
 * parsed via has a key that names its kind.
 *
 * Threads: single (libFuzzer).
 */
#include <ctype.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dns.h"
#include "route.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_ITEMS 64

static void check(int cond)
{
	if (!cond)
		abort();
}

static void check_name(const char *name)
{
	if (name[0] == '\0')
		return;
	check(dns_name_ok(name));
	for (const char *p = name; *p; p++)
		check(!isupper((unsigned char)*p));
}

static void fuzz_rdata(const uint8_t *data, size_t size)
{
	char *items[MAX_ITEMS + 1];
	int lens[MAX_ITEMS];
	size_t n = 0, i = 0;
	struct dns_mx_result *res = calloc(1, sizeof *res);
	uint64_t rnd = 42;

	while (i < size && n < MAX_ITEMS) {
		size_t l = data[i++];
		if (l > size - i)
			l = size - i;
		/* Separate copies so ASan sees any read past an item. */
		items[n] = malloc(l ? l : 1);
		memcpy(items[n], data + i, l);
		lens[n++] = (int)l;
		i += l;
	}
	items[n] = NULL;
	for (size_t k = 0; k < n; k++) {
		uint16_t pref;
		char name[DNS_NAME_MAX + 1];
		struct dns_addr a;
		if (dns_parse_mx_rdata((const uint8_t *)items[k], (size_t)lens[k], &pref, name,
				       sizeof name) == 0)
			check_name(name);
		if (dns_parse_addr_rdata((const uint8_t *)items[k], (size_t)lens[k], AF_INET, &a) == 0)
			check(lens[k] == 4);
		if (dns_parse_addr_rdata((const uint8_t *)items[k], (size_t)lens[k], AF_INET6, &a) == 0)
			check(lens[k] == 16);
	}
	dns_mx_build(res, items, lens, n, &rnd);
	check(res->n <= DNS_MAX_MX);
	check(res->status == DNS_OK ? res->n > 0 : res->n == 0);
	check(!res->null_mx || (res->n == 0 && res->status == DNS_PERMFAIL));
	for (size_t k = 0; k < res->n; k++) {
		check(res->mx[k].name[0] != '\0');
		check_name(res->mx[k].name);
		if (k > 0)
			check(res->mx[k - 1].pref <= res->mx[k].pref);
	}
	for (size_t k = 0; k < n; k++)
		free(items[k]);
	free(res);
}

static void fuzz_text(const uint8_t *data, size_t size)
{
	char *s = malloc(size + 1);
	struct route *r = calloc(1, sizeof *r);
	struct dns_addr a;
	char err[512], buf[64];

	memcpy(s, data, size);
	s[size] = '\0';
	(void)dns_name_ok(s);
	if (dns_parse_literal(s, &a) == 0) {
		check(a.family == AF_INET || a.family == AF_INET6);
		dns_addr_format(&a, buf, sizeof buf);
	}
	if (route_parse_via(s, r, err, sizeof err) == 0) {
		const char *kind = route_kind_name(r->kind);
		check(r->key[0] != '\0');
		check(strlen(r->key) < sizeof r->key);
		if (r->kind == ROUTE_SMTP || r->kind == ROUTE_LMTP_INET)
			check(r->port != 0 && r->target[0] != '\0');
		if (r->kind == ROUTE_MAILDIR || r->kind == ROUTE_LMTP_UNIX)
			check(r->target[0] == '/');
		check(strncmp(r->key, r->kind == ROUTE_LMTP_UNIX ? "lmtp" : kind,
			      strlen(r->kind == ROUTE_LMTP_UNIX ? "lmtp" : kind)) == 0);
	} else {
		check(err[0] != '\0');
	}
	free(r);
	free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size == 0)
		return 0;
	if (data[0] % 2 == 0)
		fuzz_rdata(data + 1, size - 1);
	else
		fuzz_text(data + 1, size - 1);
	return 0;
}
