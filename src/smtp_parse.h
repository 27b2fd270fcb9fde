/*
 * smtp_parse: pure parsing of the SMTP protocol (RFC 5321 and the
 * extensions SIZE 1870, 8BITMIME 6152, CHUNKING/BINARYMIME 3030, DSN 3461,
 * SMTPUTF8 6531/6533, AUTH 4954 parameter).
 *
 * Owns: the command-line parser (verbs, paths, ESMTP parameters, BDAT and
 * EHLO arguments), xtext helpers, the incremental DATA reader (dot
 * unstuffing, end-of-data detection, smuggling defence, limits) and the
 * incremental reply parser for the SMTP/LMTP client.
 *
 * Must not: do I/O, touch sessions or sockets, log, keep global mutable
 * state, or allocate memory.  Every output goes to caller-provided storage
 * with fixed bounds, or is a pointer+length view into the caller's input.
 * It returns reasons (enum smtp_parse_result); the server maps them to
 * replies with one switch over smtp_parse_status().
 *
 * Threads: every function is reentrant; a parser state (struct
 * smtp_parse_data, struct smtp_parse_reply_parser) must be used by one
 * thread at a time.
 */
#ifndef CARRIER_SMTP_PARSE_H
#define CARRIER_SMTP_PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- results ----------------------------------------------------------
 *
 * One enum for every parser.  Reply mapping (see smtp_parse_status(); the
 * verb changes only the cases marked *):
 *
 *   result              code enhanced  meaning
 *   OK                     0  ""       parsed / message accepted
 *   MORE                   0  ""       incremental parser wants more bytes
 *   SYNTAX               501  5.5.2    bad or missing argument
 *   UNKNOWN_COMMAND      500  5.5.1    verb not recognised
 *   LINE_TOO_LONG        500  5.5.6    command line > max_line, or a DATA
 *                                      text line > 1000 (RFC 5321 4.5.3.1.6
 *                                      names 500 "Line too long"); for the
 *                                      client, a reply line > max_line
 *   BAD_BYTES            500  5.5.2    NUL, stray CR/LF or invalid UTF-8
 *   PATH_SYNTAX          501  5.1.3*   bad mailbox syntax (5.1.7 for MAIL)
 *   PATH_TOO_LONG        501  5.1.3*   path > max_path, local part >
 *                                      max_local or domain > 255 (5.1.7
 *                                      for MAIL; RFC 5321 4.5.3.1.10)
 *   PATH_UTF8            553  5.6.7    non-ASCII address without SMTPUTF8
 *                                      (RFC 6531 3.5)
 *   PARAM_SYNTAX         501  5.5.4    bad ESMTP parameter value
 *   PARAM_UNKNOWN        555  5.5.4    unknown ESMTP parameter (RFC 5321
 *                                      4.1.1.11)
 *   PARAM_DUPLICATE      501  5.5.4    the same parameter twice
 *   TOO_BIG              552  5.3.4    SIZE=/BDAT size not representable in
 *                                      64 bits; DATA over max_size
 *   BARE_LF              550  5.5.2    DATA held a bare LF or bare CR
 *                                      (REJECT policy; SMTP smuggling)
 *   NUL                  550  5.6.0    DATA held a NUL and reject_nul is set
 *   REPLY_SYNTAX           0  ""       (client) malformed reply
 *   REPLY_TOO_LONG         0  ""       (client) reply over max_lines
 *
 * "close" (smtp_parse_status): the session cannot resynchronise and must
 * reply then close.  True for every error on a BDAT line (the chunk's size
 * is unknown, so its bytes cannot be skipped) and for the client-side reply
 * errors.  A command LINE_TOO_LONG does not close: the server discards the
 * rest of the line itself.
 */
enum smtp_parse_result {
	SMTP_PARSE_OK = 0,
	SMTP_PARSE_MORE,
	SMTP_PARSE_SYNTAX,
	SMTP_PARSE_UNKNOWN_COMMAND,
	SMTP_PARSE_LINE_TOO_LONG,
	SMTP_PARSE_BAD_BYTES,
	SMTP_PARSE_PATH_SYNTAX,
	SMTP_PARSE_PATH_TOO_LONG,
	SMTP_PARSE_PATH_UTF8,
	SMTP_PARSE_PARAM_SYNTAX,
	SMTP_PARSE_PARAM_UNKNOWN,
	SMTP_PARSE_PARAM_DUPLICATE,
	SMTP_PARSE_TOO_BIG,
	SMTP_PARSE_BARE_LF,
	SMTP_PARSE_NUL,
	SMTP_PARSE_REPLY_SYNTAX,
	SMTP_PARSE_REPLY_TOO_LONG,
	SMTP_PARSE_N_RESULTS
};

enum smtp_parse_verb {
	SMTP_PARSE_UNKNOWN = 0,
	SMTP_PARSE_HELO,
	SMTP_PARSE_EHLO,
	SMTP_PARSE_MAIL,
	SMTP_PARSE_RCPT,
	SMTP_PARSE_DATA,
	SMTP_PARSE_BDAT,
	SMTP_PARSE_RSET,
	SMTP_PARSE_NOOP,
	SMTP_PARSE_QUIT,
	SMTP_PARSE_VRFY,
	SMTP_PARSE_HELP,
	SMTP_PARSE_STARTTLS,
	SMTP_PARSE_AUTH,
	SMTP_PARSE_N_VERBS
};

/* Suggested reply for a result; see the table above. */
struct smtp_parse_status {
	unsigned code;        /* 500..555; 0 for OK, MORE and client results */
	const char *enhanced; /* "5.5.2"; "" when code is 0 */
	const char *text;     /* same string as smtp_parse_strerror() */
	bool close;           /* reply, then end the session */
};

/* Short reason, e.g. "path too long"; static storage, never NULL (an
 * out-of-range value gives "unknown result"). */
const char *smtp_parse_strerror(enum smtp_parse_result res);

/* Fills *status_r for `res` as the reply to a command `verb` (use
 * SMTP_PARSE_DATA for DATA reader results).  Pure; all strings static. */
void smtp_parse_status(enum smtp_parse_result res, enum smtp_parse_verb verb,
		       struct smtp_parse_status *status_r);

/* Upper-case verb name ("MAIL"), "UNKNOWN" for anything else. */
const char *smtp_parse_verb_name(enum smtp_parse_verb verb);

/* ---- command lines -------------------------------------------------- */

#define SMTP_PARSE_LINE_DEFAULT 512   /* RFC 5321 4.5.3.1.4, incl. CRLF */
#define SMTP_PARSE_PATH_DEFAULT 256   /* RFC 5321 4.5.3.1.3, incl. < > */
#define SMTP_PARSE_LOCAL_DEFAULT 64   /* RFC 5321 4.5.3.1.1 */
#define SMTP_PARSE_PATH_CAP 1024      /* hard cap: storage size of paths */
#define SMTP_PARSE_DOMAIN_MAX 255     /* RFC 5321 4.5.3.1.2 */
#define SMTP_PARSE_LABEL_MAX 63
#define SMTP_PARSE_ENVID_MAX 100      /* RFC 3461 4.4 */
#define SMTP_PARSE_ORCPT_MAX 500      /* RFC 3461 4.2 */
#define SMTP_PARSE_ADDR_TYPE_MAX 32
#define SMTP_PARSE_AUTH_MAX 500

struct smtp_parse_limits {
	/* Longest command line in octets including CRLF (whether or not the
	 * CRLF is passed).  Default 512, the RFC minimum; a server that
	 * offers several MAIL parameters may want more (Postfix: 2048). */
	size_t max_line;
	/* Longest path in octets including < and > (and a source route).
	 * Default 256; values above SMTP_PARSE_PATH_CAP act as the cap. */
	size_t max_path;
	/* Longest local part on the wire (quotes included).  Default 64. */
	size_t max_local;
	/* SMTPUTF8 is offered (for MAIL) / in force for this transaction (for
	 * RCPT, set it when the MAIL had SMTPUTF8).  For MAIL a non-ASCII
	 * reverse-path also needs the SMTPUTF8 parameter on the same line;
	 * the SMTPUTF8 parameter when this is false is PARAM_UNKNOWN.  Also
	 * allows U-labels in the HELO/EHLO argument. */
	bool smtputf8;
};

/* Fills *limits_r with the defaults above (smtputf8 false). */
void smtp_parse_limits_init(struct smtp_parse_limits *limits_r);

enum smtp_parse_domain_kind {
	SMTP_PARSE_DOMAIN_NONE = 0,  /* null path or <Postmaster> */
	SMTP_PARSE_DOMAIN_NAME,      /* LDH labels (or U-labels) */
	SMTP_PARSE_DOMAIN_IPV4,      /* [1.2.3.4] */
	SMTP_PARSE_DOMAIN_IPV6,      /* [IPv6:...], checked with inet_pton */
	SMTP_PARSE_DOMAIN_GENERAL,   /* [tag:content], syntax only */
};

/*
 * A parsed path.  All strings are NUL-terminated and cannot contain NUL,
 * CR or LF.  A source route (<@a,@b:u@d>) is validated, flagged and
 * otherwise dropped (RFC 5321 4.1.1.3 / appendix C).
 */
struct smtp_parse_path {
	bool null;            /* <> (MAIL only) */
	bool postmaster;      /* <Postmaster> (RCPT only; any case); local
			       * is "Postmaster" as sent, domain is "" */
	bool quoted;          /* local part was a quoted-string */
	bool utf8;            /* local part or domain has non-ASCII */
	bool route;           /* a source route was present and ignored */
	enum smtp_parse_domain_kind kind;
	/* Local part for delivery: quotes removed, quoted-pairs resolved
	 * ("a\"b"@x gives a"b).  Compare and deliver with this one. */
	char local[SMTP_PARSE_PATH_CAP + 1];
	size_t local_len;
	/* Local part exactly as sent (with quotes): relay with this one. */
	char local_raw[SMTP_PARSE_PATH_CAP + 1];
	size_t local_raw_len;
	/* Domain as sent (case kept); an address literal keeps its brackets
	 * ("[IPv6:::1]"). */
	char domain[SMTP_PARSE_DOMAIN_MAX + 1];
	size_t domain_len;
};

enum smtp_parse_body {
	SMTP_PARSE_BODY_NONE = 0,    /* no BODY= parameter */
	SMTP_PARSE_BODY_7BIT,
	SMTP_PARSE_BODY_8BITMIME,
	SMTP_PARSE_BODY_BINARYMIME,
};

enum smtp_parse_ret {
	SMTP_PARSE_RET_NONE = 0,
	SMTP_PARSE_RET_FULL,
	SMTP_PARSE_RET_HDRS,
};

/* MAIL parameters.  The parser checks syntax only; whether an extension
 * was offered (8BITMIME, CHUNKING, DSN, AUTH) and whether SIZE fits is the
 * server's decision. */
struct smtp_parse_mail_params {
	bool has_size;
	uint64_t size;                 /* SIZE=, any value up to 2^64-1 */
	enum smtp_parse_body body;
	bool smtputf8;
	enum smtp_parse_ret ret;
	bool has_envid;
	char envid[SMTP_PARSE_ENVID_MAX + 1]; /* raw xtext, validated */
	bool has_auth;
	char auth[SMTP_PARSE_AUTH_MAX + 1];   /* raw: "<>" or xtext */
};

#define SMTP_PARSE_NOTIFY_NEVER   0x1u
#define SMTP_PARSE_NOTIFY_SUCCESS 0x2u
#define SMTP_PARSE_NOTIFY_FAILURE 0x4u
#define SMTP_PARSE_NOTIFY_DELAY   0x8u

/* RCPT parameters (RFC 3461). */
struct smtp_parse_rcpt_params {
	unsigned notify;        /* 0 = absent; NEVER alone or a mix of the
				 * other three bits */
	bool has_orcpt;
	/* addr-type as sent ("rfc822", "utf-8", ...). */
	char orcpt_type[SMTP_PARSE_ADDR_TYPE_MAX + 1];
	/* The value after ';' exactly as sent (put it back in DSNs). */
	char orcpt_raw[SMTP_PARSE_ORCPT_MAX + 1];
	/* Decoded address: xtext decoded (printable ASCII only), or for
	 * addr-type utf-8 (RFC 6533, needs SMTPUTF8 to carry raw UTF-8)
	 * with \x{HEX} escapes decoded to UTF-8. */
	char orcpt_addr[SMTP_PARSE_ORCPT_MAX + 1];
	size_t orcpt_addr_len;
};

/*
 * One parsed command.  Fields are filled per verb; every other field is
 * zero.  verb and verb_text are filled even when a later check fails
 * (UNKNOWN when the verb itself failed), so the server can pick replies
 * and its state by verb.  Views (verb_text, arg) point into the caller's
 * line and live as long as it.  About 4.4 KB: fine on a stack.
 */
struct smtp_parse_command {
	enum smtp_parse_verb verb;
	const char *verb_text;   /* view: the verb as sent */
	size_t verb_len;
	/* View: everything after the verb and its SP, trailing SP/HTAB
	 * trimmed; for HELO, EHLO, VRFY, HELP, NOOP, AUTH, UNKNOWN (and also
	 * set for MAIL/RCPT/BDAT, for logging). */
	const char *arg;
	size_t arg_len;
	/* MAIL and RCPT */
	struct smtp_parse_path path;
	bool space_after_colon;  /* "MAIL FROM: <a@b>" (tolerated client bug) */
	struct smtp_parse_mail_params mail;
	struct smtp_parse_rcpt_params rcpt;
	/* BDAT */
	uint64_t bdat_size;
	bool bdat_last;
	/* HELO, EHLO: bounded copy of the argument (truncated to
	 * SMTP_PARSE_DOMAIN_MAX) and whether it is a valid domain or address
	 * literal; many MTAs accept anything, so the server decides. */
	char helo[SMTP_PARSE_DOMAIN_MAX + 1];
	size_t helo_len;
	bool helo_valid;
};

/*
 * Parses one command line.
 *
 * `line`/`len`: the line WITH or WITHOUT its trailing CRLF (one final CRLF
 * is stripped if present; any other CR or LF is BAD_BYTES).  The bytes
 * may be anything: NUL or invalid UTF-8 give BAD_BYTES, checked before the
 * verb.  Over-length (len without CRLF, plus 2, > max_line) gives
 * LINE_TOO_LONG before anything else.  Trailing SP/HTAB are ignored.
 *
 * Grammar (RFC 5321 4.1.1): verbs case-insensitive; MAIL FROM:<path>
 * [SP params], RCPT TO:<path> [SP params] (also <Postmaster>); spaces after
 * the colon are tolerated and flagged; DATA, RSET, QUIT, STARTTLS take no
 * argument; HELO, EHLO, VRFY, AUTH need one; NOOP, HELP take any;
 * BDAT <size> [LAST].  Parameters per struct smtp_parse_mail_params /
 * smtp_parse_rcpt_params; keywords are case-insensitive, a repeated one
 * is PARAM_DUPLICATE, others PARAM_UNKNOWN.
 *
 * Returns OK with *cmd_r filled, or an error (see the table).  *cmd_r is
 * always fully overwritten.  `limits` NULL means the defaults.
 */
enum smtp_parse_result smtp_parse_command(const void *line, size_t len,
					  const struct smtp_parse_limits *limits,
					  struct smtp_parse_command *cmd_r);

/*
 * Parses a bare path "<...>" (the whole of s/len, nothing after it) with
 * the MAIL rules when `reverse` (null path allowed) or else the RCPT rules
 * (<Postmaster> allowed).  UTF-8 is allowed when limits->smtputf8.  For
 * tests, VRFY handling and the client's own checks.
 */
enum smtp_parse_result smtp_parse_path(const void *s, size_t len, bool reverse,
				       const struct smtp_parse_limits *limits,
				       struct smtp_parse_path *path_r);

/* True if s/len is a valid domain (LDH labels, each <= 63, total <= 255,
 * U-labels only if `utf8`) or address literal. */
bool smtp_parse_domain_valid(const void *s, size_t len, bool utf8);

/* True if s/len is strictly valid UTF-8 (no overlongs, no surrogates, at
 * most U+10FFFF).  NUL is valid UTF-8; callers check it separately. */
bool smtp_parse_utf8_valid(const void *s, size_t len);

/* ---- xtext (RFC 3461 4) ---------------------------------------------- */

/*
 * Decodes xtext in/in_len into out (out_size bytes, NUL-terminated; the
 * decoded text may itself contain NUL when +00 was sent, so use *len_r).
 * Returns false if the input is not xtext (chars 33..126 except '+' and
 * '=', or '+' and two UPPER-case hex digits) or the output does not fit;
 * *len_r is then 0 and out holds "".  out_size >= 1.
 */
bool smtp_parse_xtext_decode(const void *in, size_t in_len, char *out,
			     size_t out_size, size_t *len_r);

/*
 * Encodes in/in_len as xtext into out (NUL-terminated).  Returns false if
 * it does not fit (out holds ""); *len_r gets the encoded length on
 * success, 0 otherwise.  Output is at most 3 * in_len + 1 bytes.
 */
bool smtp_parse_xtext_encode(const void *in, size_t in_len, char *out,
			     size_t out_size, size_t *len_r);

/* ---- DATA reader ------------------------------------------------------ */

enum smtp_parse_bare_policy {
	SMTP_PARSE_BARE_REJECT = 0,  /* note it, end result BARE_LF */
	SMTP_PARSE_BARE_NORMALIZE,   /* a bare LF or bare CR becomes CRLF */
};

#define SMTP_PARSE_DATA_LINE_DEFAULT 1000        /* RFC 5321 4.5.3.1.6 */
#define SMTP_PARSE_DATA_SIZE_DEFAULT (50u * 1024u * 1024u)
/* Output room the reader needs to make progress: one input byte yields at
 * most 4 output bytes (a held ".", a normalised CRLF and the byte). */
#define SMTP_PARSE_DATA_OUT_MIN 4

struct smtp_parse_data_limits {
	uint64_t max_size;   /* output octets; 0 = no limit */
	size_t max_line;     /* wire octets per line incl. CRLF (the
			      * stuffing dot counts); 0 = no limit */
	enum smtp_parse_bare_policy bare;
	bool reject_nul;     /* false (default): NUL passes through, as in
			      * Postfix; true: end result NUL */
};

/* Defaults: 50 MiB, 1000, REJECT, NUL allowed. */
void smtp_parse_data_limits_init(struct smtp_parse_data_limits *limits_r);

/* State of one DATA transfer.  Embed it anywhere (64 bytes on x86-64);
 * its fields are private: read them through the functions below. */
struct smtp_parse_data {
	struct smtp_parse_data_limits limits;
	int state;
	int header_state;
	enum smtp_parse_result error;  /* first noted problem, or OK */
	bool done;
	uint64_t size;       /* output octets so far */
	size_t line_len;     /* wire octets of the current line, no EOL */
	unsigned received;
	bool bare_seen;
};

/* Starts a DATA transfer (state "after CRLF").  `limits` NULL means the
 * defaults; it is copied. */
void smtp_parse_data_init(struct smtp_parse_data *data,
			  const struct smtp_parse_data_limits *limits);

/*
 * Feeds in/in_len bytes (any split, from one byte up).  Writes the
 * unstuffed message to out (out_size >= SMTP_PARSE_DATA_OUT_MIN) and
 * stores in *out_len_r how many bytes were written, in *consumed_r how
 * many input bytes were used.  The reader itself buffers nothing beyond
 * its state; a "." at the start of a line is held (in the state) until the
 * next byte.
 *
 * Output: the message as it will be stored: lines end in CRLF, the final
 * CRLF before "." CRLF is part of it, stuffing dots are removed, the
 * terminator is not output.  After the first noted problem (any error
 * below) nothing more is output: the reader only looks for the end, so
 * the server stops spooling (smtp_parse_data_error() says why early).
 *
 * End of data is exactly CRLF "." CRLF, the start counting as after
 * CRLF (so ".\r\n" first ends an empty message).  "\n.\n", "\r\n.\n",
 * "\n.\r\n", "\r.\r\n" never end it.  Bare LF / bare CR: REJECT notes
 * BARE_LF; NORMALIZE outputs CRLF for each, and a "." just after a bare
 * line end is unstuffed only if text follows it on the line.  A "."
 * followed by CR or LF that does not end DATA is kept as text.
 *
 * Returns:
 *   MORE   end not seen; *consumed_r < in_len only when out was full
 *          (call again with the rest after draining out);
 *   OK     end seen, message fine; *consumed_r counts up to and
 *          including the final LF: bytes after it are the next command
 *          (pipelining);
 *   LINE_TOO_LONG, TOO_BIG, BARE_LF, NUL
 *          end seen, message rejected (the first problem noted);
 *          the session is in sync, as with OK.
 * Once ended, further calls return the same result and consume nothing.
 */
enum smtp_parse_result smtp_parse_data_feed(struct smtp_parse_data *data,
					    const void *in, size_t in_len,
					    size_t *consumed_r, void *out,
					    size_t out_size, size_t *out_len_r);

/* First problem noted so far (OK if none), before or after the end. */
enum smtp_parse_result smtp_parse_data_error(const struct smtp_parse_data *data);

/* Octets output so far (the message size as stored). */
uint64_t smtp_parse_data_size(const struct smtp_parse_data *data);

/* Number of header lines starting with "Received:" (any case) before the
 * first empty line, for loop detection; saturates at UINT_MAX. */
unsigned smtp_parse_data_received(const struct smtp_parse_data *data);

/* True if a bare LF or bare CR was seen (in either policy). */
bool smtp_parse_data_bare_seen(const struct smtp_parse_data *data);

/* ---- replies (client side) ------------------------------------------- */

#define SMTP_PARSE_REPLY_TEXT_MAX 2048
#define SMTP_PARSE_REPLY_LINE_DEFAULT 2048
#define SMTP_PARSE_REPLY_LINES_DEFAULT 100

struct smtp_parse_reply_limits {
	size_t max_line;   /* octets per line incl. CRLF; default 2048 */
	unsigned max_lines;/* lines per reply; default 100 */
};

/* A complete reply. */
struct smtp_parse_reply {
	unsigned code;           /* 200..599 */
	/* Enhanced status code of the first line ("5.1.1"), "" when absent
	 * or when its class does not match the code's first digit. */
	char enhanced[12];
	/* Text of all lines joined with '\n', each without code, separator
	 * and (when equal to the first line's) the enhanced code; bytes as
	 * received except NUL (rejected).  Truncated at
	 * SMTP_PARSE_REPLY_TEXT_MAX (flag set); EHLO keywords are here. */
	char text[SMTP_PARSE_REPLY_TEXT_MAX + 1];
	size_t text_len;
	bool truncated;
	unsigned lines;
};

/* State of one reply being parsed; fields are private. */
struct smtp_parse_reply_parser {
	struct smtp_parse_reply_limits limits;
	size_t line_len;      /* octets of the current line, no EOL */
	char line_head[4];    /* "ddd" and the separator */
	size_t head_len;
	size_t text_start;    /* where this line's text begins in reply text */
	bool had_cr;          /* a CR is held: CRLF or a CR in the text */
	enum smtp_parse_result result;  /* MORE until complete or failed */
};

/* Fills defaults. */
void smtp_parse_reply_limits_init(struct smtp_parse_reply_limits *limits_r);

/* Starts parsing one reply; also call it again before the next reply.
 * `limits` NULL means the defaults. */
void smtp_parse_reply_init(struct smtp_parse_reply_parser *parser,
			   const struct smtp_parse_reply_limits *limits,
			   struct smtp_parse_reply *reply_r);

/*
 * Feeds in/in_len bytes of server output.  Lines end in CRLF; a bare LF is
 * tolerated as a line end (the CR before it is dropped).  Lines are
 * "ddd-text" (more follow) or "ddd text" / "ddd" (last); every line must
 * carry the same code; code 200..599.
 *
 * Returns MORE (all input consumed, reply incomplete), OK (reply complete
 * in *reply_r, *consumed_r counts through its last LF; the rest is the
 * next reply), or REPLY_SYNTAX / LINE_TOO_LONG / REPLY_TOO_LONG (the
 * connection is out of sync: close it).  After OK or an error, further
 * calls return the same and consume nothing until smtp_parse_reply_init().
 */
enum smtp_parse_result smtp_parse_reply_feed(struct smtp_parse_reply_parser *parser,
					     const void *in, size_t in_len,
					     size_t *consumed_r,
					     struct smtp_parse_reply *reply_r);

#endif
