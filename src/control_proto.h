/*
 * control_proto: the control socket protocol, both directions, as pure
 * parsers and formatters.  No sockets, no event loop, no globals: the
 * server (control.c), the client (control_request) the unit tests and
 * the fuzzer all drive the same code.
 *
 * Protocol CARRIER/1 (line-oriented, every line ends in "\n"):
 *
 *   request   "CARRIER/1 <command> [arg ...]\n"
 *             at most CONTROL_LINE_MAX bytes including the "\n"; words are
 *             separated by spaces or tabs; a trailing "\r" is ignored; no
 *             other control character is allowed.  <command> is
 *             [a-z][a-z0-9_-]* (at most CONTROL_NAME_MAX bytes); at most
 *             CONTROL_ARGS_MAX arguments.
 *
 *   response  "CARRIER/1 <code> <text>\n"      status line
 *             "<key>: <value>\n"               zero or more fields
 *             ".\n"                            end of the response
 *             <code> is three digits (CONTROL_CODE_*), 2xx = success.
 *             <key> is [a-z0-9_.-]+; a key may repeat (one "listener"
 *             field per listener).  <value> is escaped: "\\" "\n" "\r"
 *             "\t" and "\xHH" for other control bytes, so any byte string
 *             round-trips and no value can end the response early.
 *
 * A connection may carry several requests, one after the other; the
 * server answers each in order.  It answers and closes the connection on
 * 403 (peer not authorized), 429 (too many connections of this uid), 408
 * (no complete request within the timeout, also between requests), 413
 * (request too long), 505 (unsupported version) and after 10 bad
 * requests.
 *
 * Threads: any; all state lives in the caller's structs.
 */
#ifndef CARRIER_CONTROL_PROTO_H
#define CARRIER_CONTROL_PROTO_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>

#define CONTROL_PROTO_VERSION 1
#define CONTROL_PROTO_NAME "CARRIER/1"
#define CONTROL_LINE_MAX 1024            /* request line, including "\n" */
#define CONTROL_NAME_MAX 32              /* command name */
#define CONTROL_ARGS_MAX 32              /* arguments after the command */
#define CONTROL_KEY_MAX 64               /* field key */
#define CONTROL_TEXT_MAX 512             /* status line text, after escaping */
#define CONTROL_REPLY_MAX (256 * 1024)   /* one formatted response, bytes */
#define CONTROL_RESP_LINE_MAX 16384      /* one response line, client side */
#define CONTROL_RESP_FIELDS_MAX 4096     /* fields per response, client side */
#define CONTROL_RESP_TOTAL_MAX (1024 * 1024) /* one response, client side */

/* Response codes.  The text after the code is for people; programs test
 * the code. */
enum control_code {
	CONTROL_CODE_OK = 200,
	CONTROL_CODE_BAD_REQUEST = 400,  /* syntax; the connection stays */
	CONTROL_CODE_DENIED = 403,       /* peer not authorized; closed */
	CONTROL_CODE_UNKNOWN = 404,      /* unknown command; lists commands */
	CONTROL_CODE_TIMEOUT = 408,      /* no complete request in time; closed */
	CONTROL_CODE_TOO_LONG = 413,     /* request over CONTROL_LINE_MAX; closed */
	CONTROL_CODE_TOO_MANY = 429,     /* control_max_per_uid reached; closed */
	CONTROL_CODE_FAILED = 500,       /* the command failed */
	CONTROL_CODE_UNAVAILABLE = 503,  /* the command exists but cannot run now */
	CONTROL_CODE_VERSION = 505,      /* unsupported protocol version; closed */
};

/* Result of feeding bytes to a parser. */
enum control_parse {
	CONTROL_PARSE_OK,       /* one complete request/response is ready */
	CONTROL_PARSE_MORE,     /* every byte consumed; feed more */
	CONTROL_PARSE_ERROR,    /* malformed; see the code and reason */
};

/* ---- requests (server side parses, client side formats) -------------- */

/* A parsed request.  Every pointer points into `line`, so a request is
 * self-contained and may be copied by value. */
struct control_request {
	char line[CONTROL_LINE_MAX];
	unsigned version;               /* always CONTROL_PROTO_VERSION when OK */
	const char *command;
	size_t argc;
	const char *argv[CONTROL_ARGS_MAX];
};

/* Incremental request parser; bounded, no allocation. */
struct control_req_parser {
	size_t len;                     /* bytes of the current line so far */
	char buf[CONTROL_LINE_MAX];
};

void control_req_parser_init(struct control_req_parser *p);

/*
 * Feeds `len` bytes.  Consumes at most one line: sets *used_r to the bytes
 * consumed (the rest belongs to the next request).
 *   OK     *req_r holds the request; the parser is ready for the next one.
 *   MORE   all bytes consumed, no complete line yet.
 *   ERROR  *code_r is 400 (syntax; the parser is reset and the next line
 *          may be parsed), 413 (line over CONTROL_LINE_MAX: the session
 *          must end) or 505 (version: the session must end); `reason`
 *          (of `reason_size` bytes) says what is wrong, for the reply.
 */
enum control_parse control_req_parse(struct control_req_parser *p,
				     const char *data, size_t len,
				     size_t *used_r,
				     struct control_request *req_r,
				     int *code_r, char *reason,
				     size_t reason_size);

/* Same for one whole line (with or without its "\n"), for tests and the
 * client's own validation. */
enum control_parse control_req_parse_line(const char *line, size_t len,
					  struct control_request *req_r,
					  int *code_r, char *reason,
					  size_t reason_size);

/* Formats "CARRIER/1 <command_line>\n" into buf.  Returns the length, or
 * -1 with a reason when the line is empty, has a control character or
 * would exceed CONTROL_LINE_MAX. */
int control_req_format(char *buf, size_t size, const char *command_line,
		       char *err, size_t errlen);

/* ---- replies (server side builds) ------------------------------------ */

/* A response under construction: a status and the escaped field lines.
 * Opaque; handlers use the functions below. */
struct control_reply;

/* Returns a new reply with code 200 "ok" and no fields, or NULL when out
 * of memory.  Free with control_reply_free(). */
struct control_reply *control_reply_new(void);
void control_reply_free(struct control_reply **repp);
/* Back to 200 "ok" and no fields (reuse between requests). */
void control_reply_reset(struct control_reply *rep);

/*
 * Appends the field "key: value", value printf-formatted and escaped.
 * Returns 0, or -1 when the key is invalid or the reply would exceed
 * CONTROL_REPLY_MAX (the reply then becomes a 500 saying so, and later
 * adds are ignored).
 */
int control_reply_add(struct control_reply *rep, const char *key,
		      const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int control_reply_addv(struct control_reply *rep, const char *key,
		       const char *fmt, va_list ap)
	__attribute__((format(printf, 3, 0)));

/* Sets the status: code (100-599) and text (escaped, truncated to
 * CONTROL_TEXT_MAX).  An error status keeps the fields already added. */
void control_reply_status(struct control_reply *rep, int code,
			  const char *fmt, ...) __attribute__((format(printf, 3, 4)));

int control_reply_code(const struct control_reply *rep);

/* Formats the whole response ("CARRIER/1 ...\n" ... ".\n") into a new
 * malloc'd buffer; *len_r gets its length.  The caller frees.  NULL when
 * out of memory. */
char *control_reply_format(const struct control_reply *rep, size_t *len_r);

/* Formats a response with no fields into buf (for refusals, where no
 * allocation should happen).  Returns the length (truncating the text). */
size_t control_reply_format_short(char *buf, size_t size, int code,
				  const char *text);

/* ---- responses (client side parses) ---------------------------------- */

struct control_field {
	char *key;
	char *value;                    /* unescaped; may contain any byte but NUL */
};

/* A parsed response.  Owns its strings; free with control_response_clear(). */
struct control_response {
	int code;
	char *text;
	struct control_field *fields;
	size_t n_fields;
};

/* First value of `key`, or NULL.  Valid until control_response_clear(). */
const char *control_response_get(const struct control_response *resp,
				 const char *key);
/* Number of fields named `key`. */
size_t control_response_count(const struct control_response *resp,
			      const char *key);
void control_response_clear(struct control_response *resp);

/* Incremental response parser; one line buffer of CONTROL_RESP_LINE_MAX. */
struct control_resp_parser {
	size_t len;                     /* bytes of the current line so far */
	size_t total;                   /* bytes of the current response so far */
	bool have_status;
	char *buf;                      /* CONTROL_RESP_LINE_MAX bytes */
};

/* Returns 0, or -1 when out of memory. */
int control_resp_parser_init(struct control_resp_parser *p);
void control_resp_parser_free(struct control_resp_parser *p);

/*
 * Feeds bytes into *resp (which starts zeroed, and which the caller clears
 * whatever the result).  *used_r as for requests.
 *   OK     *resp is complete.
 *   MORE   feed more.
 *   ERROR  malformed or over the bounds; `reason` says which.
 */
enum control_parse control_resp_parse(struct control_resp_parser *p,
				      const char *data, size_t len,
				      size_t *used_r,
				      struct control_response *resp,
				      char *reason, size_t reason_size);

/* ---- helpers --------------------------------------------------------- */

/* Escapes `len` bytes of `s` for a value; returns the length wanted
 * (like snprintf; NUL-terminates when size > 0). */
size_t control_escape(char *buf, size_t size, const char *s, size_t len);
/* Unescapes in place; returns the new length, or -1 on a bad escape or an
 * escaped NUL. */
long control_unescape(char *s);
/* True when `key` is a valid field key. */
bool control_key_valid(const char *key);

#endif
