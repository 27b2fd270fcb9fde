/*
 * smtp_parse: pure SMTP parsing: results and their replies, commands,
 * paths, ESMTP parameters, xtext, domains.  The DATA reader lives in
 * smtp_parse_data.c and the reply parser in smtp_parse_reply.c; helpers
 * the three share are in smtp_parse_int.h.  See smtp_parse.h for the
 * contracts.
 *
 * Owns: nothing beyond the caller's structs; no allocation, no globals
 * except constant tables.
 * Must not: do I/O, log, allocate, or keep state outside its arguments.
 * Threads: reentrant; one parser state per thread at a time.
 */
#include "smtp_parse.h"
#include "smtp_parse_int.h"

#include <arpa/inet.h>
#include <string.h>

/* ---- results ---------------------------------------------------------- */

struct result_info {
	const char *text;
	unsigned code;
	const char *enhanced;
};

static const struct result_info result_table[SMTP_PARSE_N_RESULTS] = {
	[SMTP_PARSE_OK] = { "ok", 0, "" },
	[SMTP_PARSE_MORE] = { "more input needed", 0, "" },
	[SMTP_PARSE_SYNTAX] = { "syntax error in arguments", 501, "5.5.2" },
	[SMTP_PARSE_UNKNOWN_COMMAND] = { "command not recognized", 500, "5.5.1" },
	[SMTP_PARSE_LINE_TOO_LONG] = { "line too long", 500, "5.5.6" },
	[SMTP_PARSE_BAD_BYTES] = { "NUL, CR, LF or invalid UTF-8 in command",
				   500, "5.5.2" },
	[SMTP_PARSE_PATH_SYNTAX] = { "bad address syntax", 501, "5.1.3" },
	[SMTP_PARSE_PATH_TOO_LONG] = { "path too long", 501, "5.1.3" },
	[SMTP_PARSE_PATH_UTF8] = { "non-ASCII address requires SMTPUTF8",
				   553, "5.6.7" },
	[SMTP_PARSE_PARAM_SYNTAX] = { "bad parameter value", 501, "5.5.4" },
	[SMTP_PARSE_PARAM_UNKNOWN] = { "parameter not recognized", 555, "5.5.4" },
	[SMTP_PARSE_PARAM_DUPLICATE] = { "duplicate parameter", 501, "5.5.4" },
	[SMTP_PARSE_TOO_BIG] = { "message size exceeds limit", 552, "5.3.4" },
	[SMTP_PARSE_BARE_LF] = { "bare LF or bare CR in message", 550, "5.5.2" },
	[SMTP_PARSE_NUL] = { "NUL byte in message", 550, "5.6.0" },
	[SMTP_PARSE_REPLY_SYNTAX] = { "malformed reply", 0, "" },
	[SMTP_PARSE_REPLY_TOO_LONG] = { "reply has too many lines", 0, "" },
};

const char *smtp_parse_strerror(enum smtp_parse_result res)
{
	if ((unsigned)res >= SMTP_PARSE_N_RESULTS)
		return "unknown result";
	return result_table[res].text;
}

void smtp_parse_status(enum smtp_parse_result res, enum smtp_parse_verb verb,
		       struct smtp_parse_status *status_r)
{
	if ((unsigned)res >= SMTP_PARSE_N_RESULTS)
		res = SMTP_PARSE_SYNTAX;
	status_r->code = result_table[res].code;
	status_r->enhanced = result_table[res].enhanced;
	status_r->text = result_table[res].text;
	status_r->close = false;
	/* RFC 3463: 5.1.7 is the sender's address, 5.1.3 a recipient's. */
	if (verb == SMTP_PARSE_MAIL && (res == SMTP_PARSE_PATH_SYNTAX ||
					res == SMTP_PARSE_PATH_TOO_LONG))
		status_r->enhanced = "5.1.7";
	/* A refused BDAT leaves its chunk's bytes unread and uncountable. */
	if (verb == SMTP_PARSE_BDAT && res != SMTP_PARSE_OK &&
	    res != SMTP_PARSE_MORE)
		status_r->close = true;
	if (res == SMTP_PARSE_REPLY_SYNTAX || res == SMTP_PARSE_REPLY_TOO_LONG)
		status_r->close = true;
}

static const char *const verb_names[SMTP_PARSE_N_VERBS] = {
	[SMTP_PARSE_UNKNOWN] = "UNKNOWN", [SMTP_PARSE_HELO] = "HELO",
	[SMTP_PARSE_EHLO] = "EHLO",       [SMTP_PARSE_MAIL] = "MAIL",
	[SMTP_PARSE_RCPT] = "RCPT",       [SMTP_PARSE_DATA] = "DATA",
	[SMTP_PARSE_BDAT] = "BDAT",       [SMTP_PARSE_RSET] = "RSET",
	[SMTP_PARSE_NOOP] = "NOOP",       [SMTP_PARSE_QUIT] = "QUIT",
	[SMTP_PARSE_VRFY] = "VRFY",       [SMTP_PARSE_HELP] = "HELP",
	[SMTP_PARSE_STARTTLS] = "STARTTLS", [SMTP_PARSE_AUTH] = "AUTH",
};

const char *smtp_parse_verb_name(enum smtp_parse_verb verb)
{
	if ((unsigned)verb >= SMTP_PARSE_N_VERBS)
		return "UNKNOWN";
	return verb_names[verb];
}

void smtp_parse_limits_init(struct smtp_parse_limits *limits_r)
{
	limits_r->max_line = SMTP_PARSE_LINE_DEFAULT;
	limits_r->max_path = SMTP_PARSE_PATH_DEFAULT;
	limits_r->max_local = SMTP_PARSE_LOCAL_DEFAULT;
	limits_r->smtputf8 = false;
}

/* ---- character classes (ASCII only: no locale) ------------------------ */

/* is_digit() and to_lower() are in smtp_parse_int.h (shared). */
static bool is_alpha(uchar c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* RFC 5322 atext, plus UTF-8 bytes (whole sequences are guaranteed by the
 * line-level UTF-8 check; whether non-ASCII is allowed is checked later). */
static bool is_atext(uchar c)
{
	if (is_alpha(c) || is_digit(c) || c >= 0x80)
		return true;
	return c != 0 && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL;
}

/* Case-insensitive compare of s/len against a NUL-terminated ASCII word. */
static bool eq_ci(const uchar *s, size_t len, const char *word)
{
	size_t wlen = strlen(word);

	if (len != wlen)
		return false;
	for (size_t i = 0; i < len; i++)
		if (to_lower(s[i]) != to_lower((uchar)word[i]))
			return false;
	return true;
}

static int hex_value(uchar c, bool upper_only)
{
	if (is_digit(c))
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	if (!upper_only && c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* ---- UTF-8 ------------------------------------------------------------ */

/* Length of the valid UTF-8 sequence at s (1..4), or 0 if invalid.
 * Bounds on the second byte exclude overlongs (E0, F0), surrogates (ED)
 * and code points above U+10FFFF (F4). */
static size_t utf8_seq(const uchar *s, size_t len)
{
	uchar c = s[0], lo = 0x80, hi = 0xBF;
	size_t n;

	if (c < 0x80)
		return 1;
	if (c >= 0xC2 && c <= 0xDF)
		n = 2;
	else if (c >= 0xE0 && c <= 0xEF)
		n = 3;
	else if (c >= 0xF0 && c <= 0xF4)
		n = 4;
	else
		return 0;
	if (c == 0xE0)
		lo = 0xA0;
	else if (c == 0xED)
		hi = 0x9F;
	else if (c == 0xF0)
		lo = 0x90;
	else if (c == 0xF4)
		hi = 0x8F;
	if (len < n || s[1] < lo || s[1] > hi)
		return 0;
	for (size_t i = 2; i < n; i++)
		if (s[i] < 0x80 || s[i] > 0xBF)
			return 0;
	return n;
}

bool smtp_parse_utf8_valid(const void *s, size_t len)
{
	const uchar *p = s;

	for (size_t i = 0; i < len;) {
		size_t n = utf8_seq(p + i, len - i);

		if (n == 0)
			return false;
		i += n;
	}
	return true;
}

/* Appends code point cp as UTF-8 to out (room checked by the caller:
 * 4 bytes). */
static size_t utf8_put(uint32_t cp, uchar *out)
{
	if (cp < 0x80) {
		out[0] = (uchar)cp;
		return 1;
	}
	if (cp < 0x800) {
		out[0] = (uchar)(0xC0 | (cp >> 6));
		out[1] = (uchar)(0x80 | (cp & 0x3F));
		return 2;
	}
	if (cp < 0x10000) {
		out[0] = (uchar)(0xE0 | (cp >> 12));
		out[1] = (uchar)(0x80 | ((cp >> 6) & 0x3F));
		out[2] = (uchar)(0x80 | (cp & 0x3F));
		return 3;
	}
	out[0] = (uchar)(0xF0 | (cp >> 18));
	out[1] = (uchar)(0x80 | ((cp >> 12) & 0x3F));
	out[2] = (uchar)(0x80 | ((cp >> 6) & 0x3F));
	out[3] = (uchar)(0x80 | (cp & 0x3F));
	return 4;
}

/* ---- xtext (RFC 3461 4) ----------------------------------------------- */

static bool is_xchar(uchar c)
{
	return c >= 33 && c <= 126 && c != '+' && c != '=';
}

bool smtp_parse_xtext_decode(const void *in, size_t in_len, char *out,
			     size_t out_size, size_t *len_r)
{
	const uchar *s = in;
	size_t o = 0;

	*len_r = 0;
	if (out_size == 0)
		return false;
	out[0] = '\0';
	for (size_t i = 0; i < in_len; i++) {
		int c = s[i];

		if (c == '+') {
			/* RFC 3461: exactly two upper-case hex digits. */
			int hi = in_len - i >= 3 ? hex_value(s[i + 1], true) : -1;
			int lo = in_len - i >= 3 ? hex_value(s[i + 2], true) : -1;

			if (hi < 0 || lo < 0) {
				out[0] = '\0';
				return false;
			}
			c = hi * 16 + lo;
			i += 2;
		} else if (!is_xchar((uchar)c)) {
			out[0] = '\0';
			return false;
		}
		if (o + 1 >= out_size) {
			out[0] = '\0';
			return false;
		}
		out[o++] = (char)c;
	}
	out[o] = '\0';
	*len_r = o;
	return true;
}

bool smtp_parse_xtext_encode(const void *in, size_t in_len, char *out,
			     size_t out_size, size_t *len_r)
{
	static const char hex[] = "0123456789ABCDEF";
	const uchar *s = in;
	size_t o = 0;

	*len_r = 0;
	if (out_size == 0)
		return false;
	for (size_t i = 0; i < in_len; i++) {
		size_t need = is_xchar(s[i]) ? 1 : 3;

		if (out_size - o <= need) {
			out[0] = '\0';
			return false;
		}
		if (need == 1) {
			out[o++] = (char)s[i];
		} else {
			out[o++] = '+';
			out[o++] = hex[s[i] >> 4];
			out[o++] = hex[s[i] & 0xF];
		}
	}
	out[o] = '\0';
	*len_r = o;
	return true;
}

/* ---- domains and address literals (RFC 5321 4.1.2, 4.1.3) ------------- */

/* Validates one sub-domain label: Let-dig [Ldh-str], or a U-label
 * (non-ASCII bytes count as letters; full IDNA is the resolver's job). */
static bool label_valid(const uchar *s, size_t len, bool *utf8_r)
{
	if (len == 0 || len > SMTP_PARSE_LABEL_MAX)
		return false;
	if (s[0] == '-' || s[len - 1] == '-')
		return false;
	for (size_t i = 0; i < len; i++) {
		if (s[i] >= 0x80)
			*utf8_r = true;
		else if (!is_alpha(s[i]) && !is_digit(s[i]) && s[i] != '-')
			return false;
	}
	return true;
}

/* Domain = sub-domain *("." sub-domain).  PATH_TOO_LONG over 255 octets,
 * PATH_SYNTAX otherwise when bad; *utf8_r set if any U-label. */
static enum smtp_parse_result domain_check(const uchar *s, size_t len,
					   bool *utf8_r)
{
	size_t start = 0;

	if (len > SMTP_PARSE_DOMAIN_MAX)
		return SMTP_PARSE_PATH_TOO_LONG;
	for (size_t i = 0; i <= len; i++) {
		if (i < len && s[i] != '.')
			continue;
		if (!label_valid(s + start, i - start, utf8_r))
			return SMTP_PARSE_PATH_SYNTAX;
		start = i + 1;
	}
	return SMTP_PARSE_OK;
}

/* IPv4-address-literal = Snum 3("." Snum), Snum = 1*3DIGIT <= 255. */
static bool ipv4_valid(const uchar *s, size_t len)
{
	size_t i = 0;

	for (int part = 0; part < 4; part++) {
		unsigned v = 0;
		size_t digits = 0;

		if (part > 0) {
			if (i >= len || s[i] != '.')
				return false;
			i++;
		}
		while (i < len && is_digit(s[i]) && digits < 3) {
			v = v * 10 + (unsigned)(s[i] - '0');
			i++;
			digits++;
		}
		if (digits == 0 || v > 255)
			return false;
	}
	return i == len;
}

static bool ipv6_valid(const uchar *s, size_t len)
{
	char buf[64];
	struct in6_addr addr;

	/* RFC 5321 IPv6-addr is at most 45 characters. */
	if (len == 0 || len > 45)
		return false;
	memcpy(buf, s, len);
	buf[len] = '\0';
	return inet_pton(AF_INET6, buf, &addr) == 1;
}

/* General-address-literal = Standardized-tag ":" 1*dcontent. */
static bool general_literal_valid(const uchar *s, size_t len)
{
	size_t i = 0;

	while (i < len && (is_alpha(s[i]) || is_digit(s[i]) || s[i] == '-'))
		i++;
	if (i == 0 || i >= len || s[i] != ':' || s[i - 1] == '-')
		return false;
	if (++i == len)
		return false;
	for (; i < len; i++)
		if (s[i] < 33 || s[i] > 126 || (s[i] >= 91 && s[i] <= 93))
			return false;
	return true;
}

/* s/len is "[...]" including the brackets. */
static enum smtp_parse_result literal_check(const uchar *s, size_t len,
					    enum smtp_parse_domain_kind *kind_r)
{
	if (len < 3 || s[0] != '[' || s[len - 1] != ']')
		return SMTP_PARSE_PATH_SYNTAX;
	s++;
	len -= 2;
	if (is_digit(s[0])) {
		*kind_r = SMTP_PARSE_DOMAIN_IPV4;
		return ipv4_valid(s, len) ? SMTP_PARSE_OK : SMTP_PARSE_PATH_SYNTAX;
	}
	if (len >= 5 && eq_ci(s, 5, "IPv6:")) {
		*kind_r = SMTP_PARSE_DOMAIN_IPV6;
		return ipv6_valid(s + 5, len - 5) ? SMTP_PARSE_OK
						   : SMTP_PARSE_PATH_SYNTAX;
	}
	*kind_r = SMTP_PARSE_DOMAIN_GENERAL;
	return general_literal_valid(s, len) ? SMTP_PARSE_OK
					     : SMTP_PARSE_PATH_SYNTAX;
}

bool smtp_parse_domain_valid(const void *s, size_t len, bool utf8)
{
	const uchar *p = s;
	enum smtp_parse_domain_kind kind;
	bool seen = false;

	/* also bounds literals, which have no length rule of their own */
	if (len > SMTP_PARSE_DOMAIN_MAX)
		return false;
	if (len > 0 && p[0] == '[')
		return literal_check(p, len, &kind) == SMTP_PARSE_OK;
	if (!smtp_parse_utf8_valid(p, len))
		return false;
	return domain_check(p, len, &seen) == SMTP_PARSE_OK && (utf8 || !seen);
}

/* ---- paths (RFC 5321 4.1.2) ------------------------------------------- */

/* Index of the '>' closing a path that starts with '<' at s[0], skipping
 * quoted strings (a '>' may sit inside "a>b"@c); len if none. */
static size_t path_close(const uchar *s, size_t len)
{
	bool quoted = false;

	for (size_t i = 1; i < len; i++) {
		if (quoted && s[i] == '\\')
			i++;
		else if (s[i] == '"')
			quoted = !quoted;
		else if (!quoted && s[i] == '>')
			return i;
	}
	return len;
}

/* A-d-l = At-domain *( "," At-domain ) ":"; returns octets used, 0 on a
 * syntax error.  Route domains are checked, then dropped. */
static size_t route_skip(const uchar *s, size_t len)
{
	size_t i = 0;

	for (;;) {
		size_t start;
		bool utf8 = false;

		if (i >= len || s[i] != '@')
			return 0;
		start = ++i;
		while (i < len && s[i] != ',' && s[i] != ':')
			i++;
		if (i >= len ||
		    domain_check(s + start, i - start, &utf8) != SMTP_PARSE_OK)
			return 0;
		if (s[i++] == ':')
			return i;
	}
}

static bool path_append(char *buf, size_t *len, uchar c)
{
	if (*len >= SMTP_PARSE_PATH_CAP)
		return false;
	buf[(*len)++] = (char)c;
	buf[*len] = '\0';
	return true;
}

/* Quoted-string = DQUOTE *QcontentSMTP DQUOTE; fills local (unquoted).
 * Returns octets used including both quotes, 0 on error. */
static size_t local_quoted(const uchar *s, size_t len,
			   struct smtp_parse_path *p)
{
	for (size_t i = 1; i < len; i++) {
		uchar c = s[i];

		if (c == '"')
			return i + 1;
		if (c == '\\') {
			if (++i >= len || s[i] < 32 || s[i] > 126)
				return 0;
			c = s[i];
		} else if (c < 32 || c == 127) {
			return 0;
		}
		if (c >= 0x80)
			p->utf8 = true;
		if (!path_append(p->local, &p->local_len, c))
			return 0;
	}
	return 0;
}

/* Dot-string = Atom *("." Atom).  Returns octets used, 0 on error. */
static size_t local_dot_string(const uchar *s, size_t len,
			       struct smtp_parse_path *p)
{
	size_t i = 0;

	for (;;) {
		size_t start = i;

		while (i < len && is_atext(s[i])) {
			if (s[i] >= 0x80)
				p->utf8 = true;
			if (!path_append(p->local, &p->local_len, s[i]))
				return 0;
			i++;
		}
		if (i == start)
			return 0;
		if (i >= len || s[i] != '.')
			return i;
		if (!path_append(p->local, &p->local_len, '.'))
			return 0;
		i++;
	}
}

/* Mailbox = Local-part "@" ( Domain / address-literal ), all of s/len. */
static enum smtp_parse_result mailbox_parse(const uchar *s, size_t len,
					    const struct smtp_parse_limits *l,
					    struct smtp_parse_path *p)
{
	enum smtp_parse_result res;
	size_t used;

	if (len > 0 && s[0] == '"') {
		p->quoted = true;
		used = local_quoted(s, len, p);
	} else {
		used = local_dot_string(s, len, p);
	}
	if (used == 0 || used >= len || s[used] != '@')
		return SMTP_PARSE_PATH_SYNTAX;
	if (used > l->max_local)
		return SMTP_PARSE_PATH_TOO_LONG;
	memcpy(p->local_raw, s, used);
	p->local_raw[used] = '\0';
	p->local_raw_len = used;
	s += used + 1;
	len -= used + 1;
	if (len > 0 && s[0] == '[') {
		res = literal_check(s, len, &p->kind);
	} else {
		p->kind = SMTP_PARSE_DOMAIN_NAME;
		res = domain_check(s, len, &p->utf8);
	}
	if (res != SMTP_PARSE_OK)
		return res;
	if (len > SMTP_PARSE_DOMAIN_MAX)
		return SMTP_PARSE_PATH_TOO_LONG;
	memcpy(p->domain, s, len);
	p->domain[len] = '\0';
	p->domain_len = len;
	return SMTP_PARSE_OK;
}

/* Parses "<...>" at the start of s; *used_r gets its length.  UTF-8 is
 * accepted here and flagged; callers decide with p->utf8. */
static enum smtp_parse_result path_parse(const uchar *s, size_t len,
					 bool reverse,
					 const struct smtp_parse_limits *l,
					 struct smtp_parse_path *p,
					 size_t *used_r)
{
	size_t max = l->max_path < SMTP_PARSE_PATH_CAP ? l->max_path
						       : SMTP_PARSE_PATH_CAP;
	size_t end, route = 0;

	memset(p, 0, sizeof(*p));
	*used_r = 0;
	if (len == 0 || s[0] != '<')
		return SMTP_PARSE_PATH_SYNTAX;
	end = path_close(s, len);
	if (end == len)
		return SMTP_PARSE_PATH_SYNTAX;
	if (end + 1 > max)
		return SMTP_PARSE_PATH_TOO_LONG;
	*used_r = end + 1;
	s++;
	len = end - 1;
	if (len == 0) {
		p->null = true;
		return reverse ? SMTP_PARSE_OK : SMTP_PARSE_PATH_SYNTAX;
	}
	if (!reverse && eq_ci(s, len, "postmaster")) {
		p->postmaster = true;
		memcpy(p->local, s, len);
		memcpy(p->local_raw, s, len);
		p->local_len = p->local_raw_len = len;
		return SMTP_PARSE_OK;
	}
	if (s[0] == '@') {
		route = route_skip(s, len);
		if (route == 0)
			return SMTP_PARSE_PATH_SYNTAX;
		p->route = true;
	}
	return mailbox_parse(s + route, len - route, l, p);
}

static const struct smtp_parse_limits *limits_or_default(
	const struct smtp_parse_limits *l, struct smtp_parse_limits *def)
{
	if (l != NULL)
		return l;
	smtp_parse_limits_init(def);
	return def;
}

enum smtp_parse_result smtp_parse_path(const void *s, size_t len, bool reverse,
				       const struct smtp_parse_limits *limits,
				       struct smtp_parse_path *path_r)
{
	struct smtp_parse_limits def;
	const struct smtp_parse_limits *l = limits_or_default(limits, &def);
	enum smtp_parse_result res;
	size_t used;

	memset(path_r, 0, sizeof(*path_r));
	if (memchr(s, '\0', len) != NULL || !smtp_parse_utf8_valid(s, len))
		return SMTP_PARSE_BAD_BYTES;
	res = path_parse(s, len, reverse, l, path_r, &used);
	if (res == SMTP_PARSE_OK && used != len)
		res = SMTP_PARSE_PATH_SYNTAX;
	if (res == SMTP_PARSE_OK && path_r->utf8 && !l->smtputf8)
		res = SMTP_PARSE_PATH_UTF8;
	return res;
}

/* ---- ESMTP parameters (RFC 5321 4.1.2 esmtp-param) -------------------- */

enum param_kw {
	KW_SIZE, KW_BODY, KW_SMTPUTF8, KW_RET, KW_ENVID, KW_AUTH,
	KW_NOTIFY, KW_ORCPT, KW_N
};

static const char *const kw_names[KW_N] = {
	"SIZE", "BODY", "SMTPUTF8", "RET", "ENVID", "AUTH", "NOTIFY", "ORCPT",
};

/* One "keyword[=value]" as views into the line. */
struct param {
	const uchar *kw;
	size_t kw_len;
	const uchar *val;   /* NULL when there is no '=' */
	size_t val_len;
};

static enum smtp_parse_result size_parse(const uchar *s, size_t len,
					 uint64_t *v_r)
{
	uint64_t v = 0;

	if (len == 0)
		return SMTP_PARSE_SYNTAX;
	for (size_t i = 0; i < len; i++) {
		unsigned d;

		if (!is_digit(s[i]))
			return SMTP_PARSE_SYNTAX;
		d = (unsigned)(s[i] - '0');
		if (v > (UINT64_MAX - d) / 10)
			return SMTP_PARSE_TOO_BIG;
		v = v * 10 + d;
	}
	*v_r = v;
	return SMTP_PARSE_OK;
}

static bool xtext_valid(const uchar *s, size_t len)
{
	char buf[SMTP_PARSE_ORCPT_MAX + 1];
	size_t n;

	return len <= SMTP_PARSE_ORCPT_MAX &&
	       smtp_parse_xtext_decode(s, len, buf, sizeof(buf), &n);
}

static enum smtp_parse_result notify_parse(const uchar *s, size_t len,
					   unsigned *notify_r)
{
	unsigned bits = 0;
	size_t start = 0;

	for (size_t i = 0; i <= len; i++) {
		const uchar *w = s + start;
		size_t n = i - start;

		if (i < len && s[i] != ',')
			continue;
		if (eq_ci(w, n, "NEVER"))
			bits |= SMTP_PARSE_NOTIFY_NEVER;
		else if (eq_ci(w, n, "SUCCESS"))
			bits |= SMTP_PARSE_NOTIFY_SUCCESS;
		else if (eq_ci(w, n, "FAILURE"))
			bits |= SMTP_PARSE_NOTIFY_FAILURE;
		else if (eq_ci(w, n, "DELAY"))
			bits |= SMTP_PARSE_NOTIFY_DELAY;
		else
			return SMTP_PARSE_PARAM_SYNTAX;
		start = i + 1;
	}
	/* RFC 3461 4.1: NEVER excludes the others. */
	if ((bits & SMTP_PARSE_NOTIFY_NEVER) && bits != SMTP_PARSE_NOTIFY_NEVER)
		return SMTP_PARSE_PARAM_SYNTAX;
	*notify_r = bits;
	return SMTP_PARSE_OK;
}

/* RFC 6533 utf-8-addr-xtext / utf-8-addr-unitext: QCHAR (printable ASCII
 * but '+', '=', '\'), raw UTF-8 only with SMTPUTF8, and \x{HEX} escapes
 * (2..6 hex digits, a scalar value, not a control character). */
static bool utf8_addr_decode(const uchar *s, size_t len, bool utf8,
			     struct smtp_parse_rcpt_params *r)
{
	uchar *out = (uchar *)r->orcpt_addr;
	size_t o = 0;

	for (size_t i = 0; i < len;) {
		uchar tmp[4];
		size_t n = 1;
		uint32_t cp = 0;

		if (s[i] == '\\') {
			size_t j = i + 3, digits = 0;

			if (len - i < 5 || s[i + 1] != 'x' || s[i + 2] != '{')
				return false;
			while (j < len && hex_value(s[j], false) >= 0 &&
			       digits < 6) {
				cp = cp * 16 + (uint32_t)hex_value(s[j], false);
				j++;
				digits++;
			}
			if (digits < 2 || j >= len || s[j] != '}' ||
			    cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF) ||
			    cp < 0x20 || cp == 0x7F)
				return false;
			n = utf8_put(cp, tmp);
			i = j + 1;
		} else if (s[i] >= 0x80) {
			n = utf8_seq(s + i, len - i);
			if (!utf8 || n == 0)
				return false;
			memcpy(tmp, s + i, n);
			i += n;
		} else {
			if (s[i] < 33 || s[i] > 126 || s[i] == '+' || s[i] == '=')
				return false;
			tmp[0] = s[i++];
		}
		if (o + n > SMTP_PARSE_ORCPT_MAX)
			return false;
		memcpy(out + o, tmp, n);
		o += n;
	}
	out[o] = '\0';
	r->orcpt_addr_len = o;
	return o > 0;
}

/* xtext-decoded address: printable ASCII only, so a "+00" or "+0D" cannot
 * smuggle control bytes into DSNs and logs. */
static bool xtext_addr_decode(const uchar *s, size_t len,
			      struct smtp_parse_rcpt_params *r)
{
	size_t n;

	if (!smtp_parse_xtext_decode(s, len, r->orcpt_addr,
				     sizeof(r->orcpt_addr), &n) || n == 0)
		return false;
	for (size_t i = 0; i < n; i++) {
		uchar c = (uchar)r->orcpt_addr[i];

		if (c < 32 || c > 126)
			return false;
	}
	r->orcpt_addr_len = n;
	return true;
}

/* ORCPT=addr-type ";" xtext (RFC 3461 4.2). */
static enum smtp_parse_result orcpt_parse(const uchar *s, size_t len, bool utf8,
					  struct smtp_parse_rcpt_params *r)
{
	const uchar *semi = memchr(s, ';', len);
	size_t tlen;
	bool ok;

	if (len > SMTP_PARSE_ORCPT_MAX || semi == NULL)
		return SMTP_PARSE_PARAM_SYNTAX;
	tlen = (size_t)(semi - s);
	if (tlen == 0 || tlen > SMTP_PARSE_ADDR_TYPE_MAX)
		return SMTP_PARSE_PARAM_SYNTAX;
	for (size_t i = 0; i < tlen; i++)
		if (s[i] >= 0x80 || !is_atext(s[i]))
			return SMTP_PARSE_PARAM_SYNTAX;
	memcpy(r->orcpt_type, s, tlen);
	r->orcpt_type[tlen] = '\0';
	s += tlen + 1;
	len -= tlen + 1;
	if (tlen == 5 && eq_ci((const uchar *)r->orcpt_type, 5, "utf-8"))
		ok = utf8_addr_decode(s, len, utf8, r);
	else
		ok = xtext_addr_decode(s, len, r);
	if (!ok)
		return SMTP_PARSE_PARAM_SYNTAX;
	memcpy(r->orcpt_raw, s, len);
	r->orcpt_raw[len] = '\0';
	r->has_orcpt = true;
	return SMTP_PARSE_OK;
}

/* Copies a validated value into a bounded field. */
static void copy_value(char *dst, const struct param *p)
{
	memcpy(dst, p->val, p->val_len);
	dst[p->val_len] = '\0';
}

static enum smtp_parse_result mail_param(enum param_kw kw,
					 const struct param *p,
					 const struct smtp_parse_limits *l,
					 struct smtp_parse_mail_params *m)
{
	enum smtp_parse_result res;

	if (kw == KW_SMTPUTF8) {
		if (!l->smtputf8)
			return SMTP_PARSE_PARAM_UNKNOWN;
		m->smtputf8 = true;
		return p->val == NULL ? SMTP_PARSE_OK : SMTP_PARSE_PARAM_SYNTAX;
	}
	if (p->val == NULL)
		return SMTP_PARSE_PARAM_SYNTAX;
	switch (kw) {
	case KW_SIZE:
		res = size_parse(p->val, p->val_len, &m->size);
		m->has_size = res == SMTP_PARSE_OK;
		return res == SMTP_PARSE_SYNTAX ? SMTP_PARSE_PARAM_SYNTAX : res;
	case KW_BODY:
		if (eq_ci(p->val, p->val_len, "7BIT"))
			m->body = SMTP_PARSE_BODY_7BIT;
		else if (eq_ci(p->val, p->val_len, "8BITMIME"))
			m->body = SMTP_PARSE_BODY_8BITMIME;
		else if (eq_ci(p->val, p->val_len, "BINARYMIME"))
			m->body = SMTP_PARSE_BODY_BINARYMIME;
		else
			return SMTP_PARSE_PARAM_SYNTAX;
		return SMTP_PARSE_OK;
	case KW_RET:
		if (eq_ci(p->val, p->val_len, "FULL"))
			m->ret = SMTP_PARSE_RET_FULL;
		else if (eq_ci(p->val, p->val_len, "HDRS"))
			m->ret = SMTP_PARSE_RET_HDRS;
		else
			return SMTP_PARSE_PARAM_SYNTAX;
		return SMTP_PARSE_OK;
	case KW_ENVID:
		if (p->val_len > SMTP_PARSE_ENVID_MAX ||
		    !xtext_valid(p->val, p->val_len))
			return SMTP_PARSE_PARAM_SYNTAX;
		copy_value(m->envid, p);
		m->has_envid = true;
		return SMTP_PARSE_OK;
	case KW_AUTH:
		/* RFC 4954 5: AUTH=<> or AUTH=xtext. */
		if (p->val_len > SMTP_PARSE_AUTH_MAX ||
		    (!eq_ci(p->val, p->val_len, "<>") &&
		     !xtext_valid(p->val, p->val_len)))
			return SMTP_PARSE_PARAM_SYNTAX;
		copy_value(m->auth, p);
		m->has_auth = true;
		return SMTP_PARSE_OK;
	default:
		return SMTP_PARSE_PARAM_UNKNOWN;
	}
}

static enum smtp_parse_result rcpt_param(enum param_kw kw,
					 const struct param *p,
					 const struct smtp_parse_limits *l,
					 struct smtp_parse_rcpt_params *r)
{
	if (p->val == NULL)
		return SMTP_PARSE_PARAM_SYNTAX;
	if (kw == KW_NOTIFY)
		return notify_parse(p->val, p->val_len, &r->notify);
	if (kw == KW_ORCPT)
		return orcpt_parse(p->val, p->val_len, l->smtputf8, r);
	return SMTP_PARSE_PARAM_UNKNOWN;
}

/* Splits one "keyword[=value]" ending at SP or end of s; returns its length
 * or 0 on a syntax error. */
static size_t param_split(const uchar *s, size_t len, struct param *p)
{
	size_t i = 0;

	memset(p, 0, sizeof(*p));
	if (len == 0 || !(is_alpha(s[0]) || is_digit(s[0])))
		return 0;
	while (i < len && (is_alpha(s[i]) || is_digit(s[i]) || s[i] == '-'))
		i++;
	p->kw = s;
	p->kw_len = i;
	if (i == len || s[i] == ' ')
		return i;
	if (s[i] != '=')
		return 0;
	p->val = s + ++i;
	while (i < len && s[i] != ' ') {
		/* esmtp-value = 1*(%d33-60 / %d62-126), UTF-8 per RFC 6531 */
		if (s[i] < 33 || s[i] == '=' || s[i] == 127)
			return 0;
		i++;
	}
	p->val_len = (size_t)(s + i - p->val);
	return p->val_len == 0 ? 0 : i;
}

static int kw_lookup(const struct param *p, bool mail)
{
	int first = mail ? KW_SIZE : KW_NOTIFY;
	int last = mail ? KW_AUTH : KW_ORCPT;

	for (int k = first; k <= last; k++)
		if (eq_ci(p->kw, p->kw_len, kw_names[k]))
			return k;
	return -1;
}

/* s/len: everything after the path; params separated by one or more SP. */
static enum smtp_parse_result params_parse(const uchar *s, size_t len,
					   bool mail,
					   const struct smtp_parse_limits *l,
					   struct smtp_parse_command *cmd)
{
	unsigned seen = 0;
	size_t i = 0;

	if (len > 0 && s[0] != ' ')
		return SMTP_PARSE_SYNTAX;
	while (i < len) {
		struct param p;
		enum smtp_parse_result res;
		size_t n;
		int kw;

		while (i < len && s[i] == ' ')
			i++;
		if (i == len)
			break;
		n = param_split(s + i, len - i, &p);
		if (n == 0)
			return SMTP_PARSE_PARAM_SYNTAX;
		i += n;
		kw = kw_lookup(&p, mail);
		if (kw < 0)
			return SMTP_PARSE_PARAM_UNKNOWN;
		if (seen & (1u << kw))
			return SMTP_PARSE_PARAM_DUPLICATE;
		seen |= 1u << kw;
		res = mail ? mail_param((enum param_kw)kw, &p, l, &cmd->mail)
			   : rcpt_param((enum param_kw)kw, &p, l, &cmd->rcpt);
		if (res != SMTP_PARSE_OK)
			return res;
	}
	return SMTP_PARSE_OK;
}

/* ---- command lines (RFC 5321 4.1.1) ----------------------------------- */

/* Line-level byte check: no NUL, CR or LF (the final CRLF is already
 * stripped) and strict UTF-8. */
static bool line_bytes_ok(const uchar *s, size_t len)
{
	for (size_t i = 0; i < len;) {
		size_t n;

		if (s[i] == '\0' || s[i] == '\r' || s[i] == '\n')
			return false;
		if (s[i] < 0x80) {
			i++;
			continue;
		}
		n = utf8_seq(s + i, len - i);
		if (n == 0)
			return false;
		i += n;
	}
	return true;
}

static enum smtp_parse_verb verb_lookup(const uchar *s, size_t len)
{
	for (int v = SMTP_PARSE_HELO; v < SMTP_PARSE_N_VERBS; v++)
		if (eq_ci(s, len, verb_names[v]))
			return (enum smtp_parse_verb)v;
	return SMTP_PARSE_UNKNOWN;
}

/* "MAIL FROM:<path> [params]" / "RCPT TO:<path> [params]". */
static enum smtp_parse_result mail_rcpt_parse(const uchar *s, size_t len,
					      bool mail,
					      const struct smtp_parse_limits *l,
					      struct smtp_parse_command *cmd)
{
	const char *prefix = mail ? "FROM:" : "TO:";
	size_t plen = strlen(prefix), used;
	enum smtp_parse_result res;
	bool utf8_ok;

	if (len < plen || !eq_ci(s, plen, prefix))
		return SMTP_PARSE_SYNTAX;
	s += plen;
	len -= plen;
	/* Common client bug "MAIL FROM: <a@b>": tolerated, flagged. */
	while (len > 0 && s[0] == ' ') {
		cmd->space_after_colon = true;
		s++;
		len--;
	}
	res = path_parse(s, len, mail, l, &cmd->path, &used);
	if (res != SMTP_PARSE_OK)
		return res;
	res = params_parse(s + used, len - used, mail, l, cmd);
	if (res != SMTP_PARSE_OK)
		return res;
	/* RFC 6531 3.4: non-ASCII needs SMTPUTF8 on the MAIL line. */
	utf8_ok = l->smtputf8 && (!mail || cmd->mail.smtputf8);
	if (cmd->path.utf8 && !utf8_ok)
		return SMTP_PARSE_PATH_UTF8;
	return SMTP_PARSE_OK;
}

/* "BDAT" SP chunk-size [ SP end-marker ] (RFC 3030 2). */
static enum smtp_parse_result bdat_parse(const uchar *s, size_t len,
					 struct smtp_parse_command *cmd)
{
	size_t i = 0;
	enum smtp_parse_result res;

	while (i < len && s[i] != ' ')
		i++;
	res = size_parse(s, i, &cmd->bdat_size);
	if (res != SMTP_PARSE_OK)
		return res;
	while (i < len && s[i] == ' ')
		i++;
	if (i == len)
		return SMTP_PARSE_OK;
	if (!eq_ci(s + i, len - i, "LAST"))
		return SMTP_PARSE_SYNTAX;
	cmd->bdat_last = true;
	return SMTP_PARSE_OK;
}

static void helo_parse(const uchar *s, size_t len,
		       const struct smtp_parse_limits *l,
		       struct smtp_parse_command *cmd)
{
	size_t n = len < SMTP_PARSE_DOMAIN_MAX ? len : SMTP_PARSE_DOMAIN_MAX;

	memcpy(cmd->helo, s, n);
	cmd->helo[n] = '\0';
	cmd->helo_len = n;
	cmd->helo_valid = smtp_parse_domain_valid(s, len, l->smtputf8);
}

static enum smtp_parse_result verb_args(const uchar *s, size_t len,
					const struct smtp_parse_limits *l,
					struct smtp_parse_command *cmd)
{
	switch (cmd->verb) {
	case SMTP_PARSE_HELO:
	case SMTP_PARSE_EHLO:
		if (len == 0)
			return SMTP_PARSE_SYNTAX;
		helo_parse(s, len, l, cmd);
		return SMTP_PARSE_OK;
	case SMTP_PARSE_MAIL:
	case SMTP_PARSE_RCPT:
		return mail_rcpt_parse(s, len, cmd->verb == SMTP_PARSE_MAIL, l,
				       cmd);
	case SMTP_PARSE_BDAT:
		return bdat_parse(s, len, cmd);
	case SMTP_PARSE_DATA:
	case SMTP_PARSE_RSET:
	case SMTP_PARSE_QUIT:
	case SMTP_PARSE_STARTTLS:
		return len == 0 ? SMTP_PARSE_OK : SMTP_PARSE_SYNTAX;
	case SMTP_PARSE_VRFY:
	case SMTP_PARSE_AUTH:
		return len == 0 ? SMTP_PARSE_SYNTAX : SMTP_PARSE_OK;
	case SMTP_PARSE_NOOP:
	case SMTP_PARSE_HELP:
		return SMTP_PARSE_OK;
	default:
		return SMTP_PARSE_UNKNOWN_COMMAND;
	}
}

enum smtp_parse_result smtp_parse_command(const void *line, size_t len,
					  const struct smtp_parse_limits *limits,
					  struct smtp_parse_command *cmd_r)
{
	struct smtp_parse_limits def;
	const struct smtp_parse_limits *l = limits_or_default(limits, &def);
	const uchar *s = line;
	size_t vlen = 0, a;

	memset(cmd_r, 0, sizeof(*cmd_r));
	if (len >= 2 && s[len - 2] == '\r' && s[len - 1] == '\n')
		len -= 2;
	if (len > (l->max_line >= 2 ? l->max_line - 2 : 0))
		return SMTP_PARSE_LINE_TOO_LONG;
	if (!line_bytes_ok(s, len))
		return SMTP_PARSE_BAD_BYTES;
	/* Trailing blanks are a harmless and common client habit. */
	while (len > 0 && (s[len - 1] == ' ' || s[len - 1] == '\t'))
		len--;
	while (vlen < len && s[vlen] != ' ')
		vlen++;
	cmd_r->verb_text = (const char *)s;
	cmd_r->verb_len = vlen;
	a = vlen;
	while (a < len && s[a] == ' ')
		a++;
	cmd_r->arg = (const char *)s + a;
	cmd_r->arg_len = len - a;
	cmd_r->verb = verb_lookup(s, vlen);
	if (cmd_r->verb == SMTP_PARSE_UNKNOWN)
		return SMTP_PARSE_UNKNOWN_COMMAND;
	return verb_args(s + a, len - a, l, cmd_r);
}
