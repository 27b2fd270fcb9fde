/*
 * control_proto: pure parsers and formatters of the CARRIER/1 control
 * protocol (see control_proto.h for the grammar).
 *
 * Owns no I/O and no global state; every bound is checked before a byte is
 * appended, and an over-long line is answered, never buffered further.
 * Called from the daemon's loop thread, the CLI, tests and the fuzzer.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "control_proto.h"

#define PROTO_PREFIX "CARRIER/"

static void set_reason(char *reason, size_t size, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void set_reason(char *reason, size_t size, const char *fmt, ...)
{
	va_list ap;

	if (!reason || !size)
		return;
	va_start(ap, fmt);
	vsnprintf(reason, size, fmt, ap);
	va_end(ap);
}

static bool is_ctl(unsigned char c)
{
	return c < 0x20 || c == 0x7f;
}

static bool is_space(char c)
{
	return c == ' ' || c == '\t';
}

/* ---- escaping ---------------------------------------------------------- */

size_t control_escape(char *buf, size_t size, const char *s, size_t len)
{
	static const char hex[] = "0123456789abcdef";
	size_t o = 0, w = 0;               /* wanted, written */
	bool cut = false;

	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		char e[4];
		size_t n = 0;

		switch (c) {
		case '\\': e[n++] = '\\'; e[n++] = '\\'; break;
		case '\n': e[n++] = '\\'; e[n++] = 'n'; break;
		case '\r': e[n++] = '\\'; e[n++] = 'r'; break;
		case '\t': e[n++] = '\\'; e[n++] = 't'; break;
		default:
			if (is_ctl(c)) {
				e[n++] = '\\';
				e[n++] = 'x';
				e[n++] = hex[c >> 4];
				e[n++] = hex[c & 15];
			} else {
				e[n++] = (char)c;
			}
		}
		/* Whole sequences only, so a cut result still unescapes. */
		if (!cut && o + n < size) {
			memcpy(buf + o, e, n);
			w = o + n;
		} else {
			cut = true;
		}
		o += n;
	}
	if (size)
		buf[w] = '\0';
	return o;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

long control_unescape(char *s)
{
	char *w = s;

	for (const char *r = s; *r; r++) {
		if (*r != '\\') {
			*w++ = *r;
			continue;
		}
		r++;
		switch (*r) {
		case '\\': *w++ = '\\'; break;
		case 'n': *w++ = '\n'; break;
		case 'r': *w++ = '\r'; break;
		case 't': *w++ = '\t'; break;
		case 'x': {
			int hi = hexval(r[1]), lo = hi < 0 ? -1 : hexval(r[2]);

			if (hi < 0 || lo < 0 || (hi | lo) == 0)
				return -1;
			*w++ = (char)(hi << 4 | lo);
			r += 2;
			break;
		}
		default:                /* includes the NUL after a final '\' */
			return -1;
		}
	}
	*w = '\0';
	return (long)(w - s);
}

bool control_key_valid(const char *key)
{
	size_t n = 0;

	if (!key)
		return false;
	for (; key[n]; n++) {
		char c = key[n];

		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		      c == '_' || c == '.' || c == '-'))
			return false;
	}
	return n > 0 && n < CONTROL_KEY_MAX;
}

static bool command_name_valid(const char *s)
{
	size_t n = 0;

	if (!(s[0] >= 'a' && s[0] <= 'z'))
		return false;
	for (; s[n]; n++) {
		char c = s[n];

		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		      c == '_' || c == '-'))
			return false;
	}
	return n <= CONTROL_NAME_MAX;
}

/* ---- requests ---------------------------------------------------------- */

void control_req_parser_init(struct control_req_parser *p)
{
	p->len = 0;
}

/* Splits req->line into words in place.  Returns the number of words, or
 * CONTROL_ARGS_MAX + 3 when there are more than fit. */
static size_t split_words(char *line, char **words, size_t max)
{
	size_t n = 0;
	char *s = line;

	for (;;) {
		while (is_space(*s))
			*s++ = '\0';
		if (!*s)
			return n;
		if (n == max)
			return max + 1;
		words[n++] = s;
		while (*s && !is_space(*s))
			s++;
	}
}

static enum control_parse req_error(int *code_r, int code)
{
	*code_r = code;
	return CONTROL_PARSE_ERROR;
}

/* Checks the first word: "CARRIER/1". */
static enum control_parse check_version(const char *w, int *code_r,
					char *reason, size_t rsize)
{
	const char *v;

	if (strncmp(w, PROTO_PREFIX, strlen(PROTO_PREFIX)) != 0) {
		set_reason(reason, rsize,
			   "request must start with %s, as in '%s status'",
			   CONTROL_PROTO_NAME, CONTROL_PROTO_NAME);
		return req_error(code_r, CONTROL_CODE_BAD_REQUEST);
	}
	v = w + strlen(PROTO_PREFIX);
	if (strcmp(v, "1") != 0) {
		set_reason(reason, rsize,
			   "unsupported protocol version '%.32s'; this carrierd speaks %s",
			   w, CONTROL_PROTO_NAME);
		return req_error(code_r, CONTROL_CODE_VERSION);
	}
	return CONTROL_PARSE_OK;
}

enum control_parse control_req_parse_line(const char *line, size_t len,
					  struct control_request *req,
					  int *code_r, char *reason,
					  size_t rsize)
{
	char *words[CONTROL_ARGS_MAX + 2];
	size_t n;
	enum control_parse r;

	if (len && line[len - 1] == '\n')
		len--;
	if (len >= CONTROL_LINE_MAX) {
		set_reason(reason, rsize, "request longer than %d bytes",
			   CONTROL_LINE_MAX);
		return req_error(code_r, CONTROL_CODE_TOO_LONG);
	}
	if (len && line[len - 1] == '\r')
		len--;
	for (size_t i = 0; i < len; i++) {
		if (is_ctl((unsigned char)line[i]) && line[i] != '\t') {
			set_reason(reason, rsize,
				   "control character 0x%02x in request at byte %zu",
				   (unsigned char)line[i], i + 1);
			return req_error(code_r, CONTROL_CODE_BAD_REQUEST);
		}
	}
	memset(req, 0, sizeof *req);
	memcpy(req->line, line, len);
	req->line[len] = '\0';

	n = split_words(req->line, words, CONTROL_ARGS_MAX + 2);
	if (n == 0) {
		set_reason(reason, rsize, "empty request; expected '%s <command> [args]'",
			   CONTROL_PROTO_NAME);
		return req_error(code_r, CONTROL_CODE_BAD_REQUEST);
	}
	r = check_version(words[0], code_r, reason, rsize);
	if (r != CONTROL_PARSE_OK)
		return r;
	if (n == 1) {
		set_reason(reason, rsize, "missing command after %s",
			   CONTROL_PROTO_NAME);
		return req_error(code_r, CONTROL_CODE_BAD_REQUEST);
	}
	if (n > CONTROL_ARGS_MAX + 2) {
		set_reason(reason, rsize, "too many arguments (at most %d)",
			   CONTROL_ARGS_MAX);
		return req_error(code_r, CONTROL_CODE_BAD_REQUEST);
	}
	if (!command_name_valid(words[1])) {
		set_reason(reason, rsize,
			   "invalid command name '%.32s' (lower-case letters, digits, '_' and '-')",
			   words[1]);
		return req_error(code_r, CONTROL_CODE_BAD_REQUEST);
	}
	req->version = CONTROL_PROTO_VERSION;
	req->command = words[1];
	req->argc = n - 2;
	for (size_t i = 2; i < n; i++)
		req->argv[i - 2] = words[i];
	*code_r = CONTROL_CODE_OK;
	return CONTROL_PARSE_OK;
}

enum control_parse control_req_parse(struct control_req_parser *p,
				     const char *data, size_t len,
				     size_t *used_r,
				     struct control_request *req_r,
				     int *code_r, char *reason,
				     size_t rsize)
{
	for (size_t i = 0; i < len; i++) {
		if (data[i] == '\n') {
			size_t n = p->len;

			p->len = 0;
			*used_r = i + 1;
			return control_req_parse_line(p->buf, n, req_r, code_r,
						      reason, rsize);
		}
		/* Room for this byte and the "\n" that must follow. */
		if (p->len + 1 >= CONTROL_LINE_MAX) {
			p->len = 0;
			*used_r = i + 1;
			set_reason(reason, rsize, "request longer than %d bytes",
				   CONTROL_LINE_MAX);
			return req_error(code_r, CONTROL_CODE_TOO_LONG);
		}
		p->buf[p->len++] = data[i];
	}
	*used_r = len;
	return CONTROL_PARSE_MORE;
}

int control_req_format(char *buf, size_t size, const char *command_line,
		       char *err, size_t errlen)
{
	size_t n = strlen(command_line);
	bool blank = true;
	int len;

	for (size_t i = 0; i < n; i++) {
		if (is_ctl((unsigned char)command_line[i]) && command_line[i] != '\t') {
			set_reason(err, errlen, "control character in command");
			return -1;
		}
		if (!is_space(command_line[i]))
			blank = false;
	}
	if (blank) {
		set_reason(err, errlen, "empty command");
		return -1;
	}
	len = snprintf(buf, size, "%s %s\n", CONTROL_PROTO_NAME, command_line);
	if (len < 0 || (size_t)len >= size || len > CONTROL_LINE_MAX) {
		set_reason(err, errlen, "command longer than %d bytes",
			   CONTROL_LINE_MAX - (int)sizeof CONTROL_PROTO_NAME - 1);
		return -1;
	}
	return len;
}

/* ---- replies ----------------------------------------------------------- */

struct control_reply {
	int code;
	bool full;                      /* went over CONTROL_REPLY_MAX */
	char text[CONTROL_TEXT_MAX];    /* escaped */
	char *body;                     /* escaped "key: value\n" lines */
	size_t len, cap;
};

struct control_reply *control_reply_new(void)
{
	struct control_reply *rep = calloc(1, sizeof *rep);

	if (rep)
		control_reply_reset(rep);
	return rep;
}

void control_reply_free(struct control_reply **repp)
{
	if (!repp || !*repp)
		return;
	free((*repp)->body);
	free(*repp);
	*repp = NULL;
}

void control_reply_reset(struct control_reply *rep)
{
	rep->code = CONTROL_CODE_OK;
	rep->full = false;
	strcpy(rep->text, "ok");
	rep->len = 0;
}

int control_reply_code(const struct control_reply *rep)
{
	return rep->code;
}

static void reply_set_text(struct control_reply *rep, const char *text)
{
	control_escape(rep->text, sizeof rep->text, text, strlen(text));
}

void control_reply_status(struct control_reply *rep, int code,
			  const char *fmt, ...)
{
	char text[CONTROL_TEXT_MAX];
	va_list ap;

	if (rep->full)
		return;
	if (code < 100 || code > 599)
		code = CONTROL_CODE_FAILED;
	va_start(ap, fmt);
	vsnprintf(text, sizeof text, fmt, ap);
	va_end(ap);
	rep->code = code;
	reply_set_text(rep, text);
}

static int reply_grow(struct control_reply *rep, size_t more)
{
	size_t cap = rep->cap ? rep->cap : 512;
	char *p;

	if (rep->len + more <= rep->cap)
		return 0;
	while (cap < rep->len + more)
		cap *= 2;
	p = realloc(rep->body, cap);
	if (!p)
		return -1;
	rep->body = p;
	rep->cap = cap;
	return 0;
}

static int reply_overflow(struct control_reply *rep, const char *why)
{
	control_reply_status(rep, CONTROL_CODE_FAILED, "%s", why);
	rep->full = true;
	rep->len = 0;
	return -1;
}

int control_reply_addv(struct control_reply *rep, const char *key,
		       const char *fmt, va_list ap)
{
	char small[256], *value = small;
	size_t klen, elen, line;
	va_list ap2;
	int n;

	if (rep->full || !control_key_valid(key))
		return -1;
	va_copy(ap2, ap);
	n = vsnprintf(small, sizeof small, fmt, ap2);
	va_end(ap2);
	if (n < 0)
		return -1;
	if ((size_t)n >= sizeof small) {
		if ((size_t)n >= CONTROL_REPLY_MAX)
			return reply_overflow(rep, "reply too large");
		value = malloc((size_t)n + 1);
		if (!value)
			return reply_overflow(rep, "out of memory building the reply");
		vsnprintf(value, (size_t)n + 1, fmt, ap);
	}
	klen = strlen(key);
	elen = control_escape(NULL, 0, value, (size_t)n);
	line = klen + 2 + elen + 1;
	if (rep->len + line > CONTROL_REPLY_MAX) {
		if (value != small)
			free(value);
		return reply_overflow(rep, "reply too large");
	}
	if (reply_grow(rep, line + 1) < 0) {
		if (value != small)
			free(value);
		return reply_overflow(rep, "out of memory building the reply");
	}
	memcpy(rep->body + rep->len, key, klen);
	memcpy(rep->body + rep->len + klen, ": ", 2);
	control_escape(rep->body + rep->len + klen + 2, elen + 1, value, (size_t)n);
	rep->len += line;
	rep->body[rep->len - 1] = '\n';
	if (value != small)
		free(value);
	return 0;
}

int control_reply_add(struct control_reply *rep, const char *key,
		      const char *fmt, ...)
{
	va_list ap;
	int r;

	va_start(ap, fmt);
	r = control_reply_addv(rep, key, fmt, ap);
	va_end(ap);
	return r;
}

char *control_reply_format(const struct control_reply *rep, size_t *len_r)
{
	char head[CONTROL_TEXT_MAX + 32];
	int hn = snprintf(head, sizeof head, "%s %03d %s\n", CONTROL_PROTO_NAME,
			  rep->code, rep->text);
	size_t total;
	char *out;

	if (hn < 0)
		return NULL;
	total = (size_t)hn + rep->len + 2;
	out = malloc(total + 1);
	if (!out)
		return NULL;
	memcpy(out, head, (size_t)hn);
	if (rep->len)
		memcpy(out + hn, rep->body, rep->len);
	memcpy(out + (size_t)hn + rep->len, ".\n", 3);
	*len_r = total;
	return out;
}

size_t control_reply_format_short(char *buf, size_t size, int code,
				  const char *text)
{
	char esc[CONTROL_TEXT_MAX];
	int n;

	control_escape(esc, sizeof esc, text, strlen(text));
	n = snprintf(buf, size, "%s %03d %s\n.\n", CONTROL_PROTO_NAME, code, esc);
	if (n < 0)
		return 0;
	if ((size_t)n >= size) {
		/* Keep the response well-formed even when cut. */
		if (size < 4)
			return 0;
		memcpy(buf + size - 4, "\n.\n", 4);
		return size - 1;
	}
	return (size_t)n;
}

/* ---- responses --------------------------------------------------------- */

const char *control_response_get(const struct control_response *resp,
				 const char *key)
{
	for (size_t i = 0; i < resp->n_fields; i++)
		if (!strcmp(resp->fields[i].key, key))
			return resp->fields[i].value;
	return NULL;
}

size_t control_response_count(const struct control_response *resp,
			      const char *key)
{
	size_t n = 0;

	for (size_t i = 0; i < resp->n_fields; i++)
		if (!strcmp(resp->fields[i].key, key))
			n++;
	return n;
}

void control_response_clear(struct control_response *resp)
{
	for (size_t i = 0; i < resp->n_fields; i++) {
		free(resp->fields[i].key);
		free(resp->fields[i].value);
	}
	free(resp->fields);
	free(resp->text);
	memset(resp, 0, sizeof *resp);
}

int control_resp_parser_init(struct control_resp_parser *p)
{
	memset(p, 0, sizeof *p);
	p->buf = malloc(CONTROL_RESP_LINE_MAX);
	return p->buf ? 0 : -1;
}

void control_resp_parser_free(struct control_resp_parser *p)
{
	free(p->buf);
	p->buf = NULL;
}

static enum control_parse resp_status(struct control_response *resp,
				      char *line, char *reason, size_t rsize)
{
	const char *v = line + strlen(PROTO_PREFIX);
	char *text;
	long n;

	if (strncmp(line, PROTO_PREFIX, strlen(PROTO_PREFIX)) != 0) {
		set_reason(reason, rsize, "not a %s response", CONTROL_PROTO_NAME);
		return CONTROL_PARSE_ERROR;
	}
	if (strncmp(v, "1 ", 2) != 0) {
		set_reason(reason, rsize,
			   "carrierd answered with protocol %.16s; this carrier speaks %s (are the daemon and the CLI the same version?)",
			   line, CONTROL_PROTO_NAME);
		return CONTROL_PARSE_ERROR;
	}
	v += 2;
	if (!(v[0] >= '1' && v[0] <= '5' && v[1] >= '0' && v[1] <= '9' &&
	      v[2] >= '0' && v[2] <= '9' && (v[3] == ' ' || v[3] == '\0'))) {
		set_reason(reason, rsize, "malformed status line (no 3-digit code)");
		return CONTROL_PARSE_ERROR;
	}
	text = (char *)v + (v[3] ? 4 : 3);
	n = control_unescape(text);
	if (n < 0) {
		set_reason(reason, rsize, "bad escape in the status text");
		return CONTROL_PARSE_ERROR;
	}
	resp->text = strdup(text);
	if (!resp->text) {
		set_reason(reason, rsize, "out of memory");
		return CONTROL_PARSE_ERROR;
	}
	resp->code = (v[0] - '0') * 100 + (v[1] - '0') * 10 + (v[2] - '0');
	return CONTROL_PARSE_MORE;
}

static enum control_parse resp_field(struct control_response *resp,
				     char *line, char *reason, size_t rsize)
{
	char *colon = strstr(line, ": ");
	struct control_field *f;

	if (!colon) {
		set_reason(reason, rsize, "malformed field line (no ': ')");
		return CONTROL_PARSE_ERROR;
	}
	*colon = '\0';
	if (!control_key_valid(line)) {
		set_reason(reason, rsize, "invalid field key");
		return CONTROL_PARSE_ERROR;
	}
	if (control_unescape(colon + 2) < 0) {
		set_reason(reason, rsize, "bad escape in field %s", line);
		return CONTROL_PARSE_ERROR;
	}
	if (resp->n_fields >= CONTROL_RESP_FIELDS_MAX) {
		set_reason(reason, rsize, "more than %d fields",
			   CONTROL_RESP_FIELDS_MAX);
		return CONTROL_PARSE_ERROR;
	}
	/* Grow by powers of two: 1, 2, 4, ... */
	if ((resp->n_fields & (resp->n_fields - 1)) == 0) {
		size_t cap = resp->n_fields ? resp->n_fields * 2 : 1;

		f = realloc(resp->fields, cap * sizeof *f);
		if (!f)
			goto oom;
		resp->fields = f;
	}
	f = &resp->fields[resp->n_fields];
	f->key = strdup(line);
	f->value = strdup(colon + 2);
	if (!f->key || !f->value) {
		free(f->key);
		free(f->value);
		goto oom;
	}
	resp->n_fields++;
	return CONTROL_PARSE_MORE;
oom:
	set_reason(reason, rsize, "out of memory");
	return CONTROL_PARSE_ERROR;
}

static enum control_parse resp_line(struct control_resp_parser *p,
				    struct control_response *resp,
				    size_t n, char *reason, size_t rsize)
{
	char *line = p->buf;

	line[n] = '\0';
	for (size_t i = 0; i < n; i++) {
		if (is_ctl((unsigned char)line[i])) {
			set_reason(reason, rsize, "control character in response");
			return CONTROL_PARSE_ERROR;
		}
	}
	if (!p->have_status) {
		p->have_status = true;
		return resp_status(resp, line, reason, rsize);
	}
	if (n == 1 && line[0] == '.')
		return CONTROL_PARSE_OK;
	return resp_field(resp, line, reason, rsize);
}

enum control_parse control_resp_parse(struct control_resp_parser *p,
				      const char *data, size_t len,
				      size_t *used_r,
				      struct control_response *resp,
				      char *reason, size_t rsize)
{
	for (size_t i = 0; i < len; i++) {
		if (++p->total > CONTROL_RESP_TOTAL_MAX) {
			*used_r = i + 1;
			set_reason(reason, rsize, "response larger than %d bytes",
				   CONTROL_RESP_TOTAL_MAX);
			return CONTROL_PARSE_ERROR;
		}
		if (data[i] == '\n') {
			size_t n = p->len;
			enum control_parse r;

			p->len = 0;
			*used_r = i + 1;
			r = resp_line(p, resp, n, reason, rsize);
			if (r != CONTROL_PARSE_MORE) {
				p->have_status = false;
				p->total = 0;
				return r;
			}
			continue;
		}
		if (p->len + 1 >= CONTROL_RESP_LINE_MAX) {
			*used_r = i + 1;
			set_reason(reason, rsize, "response line longer than %d bytes",
				   CONTROL_RESP_LINE_MAX);
			return CONTROL_PARSE_ERROR;
		}
		p->buf[p->len++] = data[i];
	}
	*used_r = len;
	return CONTROL_PARSE_MORE;
}
