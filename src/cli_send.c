/*
 * cli_send: `carrier send`, submit a message like sendmail.
 *
 *   carrier send [-c FILE] [-f SENDER] [-t] [-i] [RCPT...] < message
 *
 * Also accepted, for scripts written for sendmail (cron, mail(1)), and
 * without effect: -oX (-oi, -oem, ...), -F NAME, -B TYPE.
 *
 * Reads a message on stdin and submits it over SMTP (EHLO, MAIL, RCPT,
 * DATA) to the daemon's first listen address (0.0.0.0 is reached as
 * 127.0.0.1, :: as ::1) with a plain blocking client.  LF line ends become
 * CRLF; a line starting with '.' is dot-stuffed (a lone '.' never ends the
 * message, so sendmail's -i / -oi are accepted and change nothing).  With
 * -t the recipients are read from the To, Cc and Bcc headers (added to any
 * given as arguments) and Bcc is removed.  The default sender is the
 * invoking user's name at the first local domain.
 *
 * Memory stays bounded: only the header block (1 MiB at most) is held; the
 * rest of stdin goes to an unlinked temporary file first, so nothing is
 * sent before the whole message is read, and MAIL declares SIZE,
 * BODY=8BITMIME (a byte above 127) and SMTPUTF8 (a non-ASCII address) when
 * the server offers them.  No address is ever passed to a shell or a program;
 * addresses with spaces, angle brackets or control characters are refused
 * before anything is sent.  If any recipient is refused, nothing is sent.
 *
 * Prints the queue ID from the final 250 reply on stdout.  Exit status
 * (sysexits.h): 0 queued, 75 EX_TEMPFAIL (4xx reply, connection failure,
 * timeout), 65 EX_DATAERR (5xx reply, bad header block), 64 EX_USAGE,
 * 78 EX_CONFIG (configuration), 74 EX_IOERR (reading stdin).  Errors
 * quote the server's reply.
 */
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "cli.h"
#include "conf.h"

#define EX_OK_ 0
#define EX_USAGE_ 64
#define EX_DATAERR_ 65
#define EX_IOERR_ 74
#define EX_TEMPFAIL_ 75
#define EX_CONFIG_ 78

#define SEND_HEADER_MAX (1024 * 1024)
#define SEND_ADDR_MAX 1024
#define SEND_TIMEOUT 300          /* seconds per read or write */
#define SEND_REPLY_MAX 4096

struct send_opts {
	const char *config;
	const char *sender;
	bool from_headers;
	char **rcpts;
	size_t n_rcpts;
};

/* A growable byte buffer (header block, address lists). */
struct buf {
	char *p;
	size_t n, cap;
};

static int buf_add(struct buf *b, const void *s, size_t n)
{
	if (b->n + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		char *p;

		while (cap < b->n + n + 1)
			cap *= 2;
		if ((p = realloc(b->p, cap)) == NULL)
			return -1;
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->n, s, n);
	b->n += n;
	b->p[b->n] = '\0';
	return 0;
}

static void send_usage(FILE *out)
{
	fprintf(out,
		"usage: carrier send [-c FILE] [-f SENDER] [-t] [-i] [RCPT...] < message\n"
		"\n"
		"Submits the message on stdin over SMTP to carrierd's first listener and\n"
		"prints its queue ID.\n"
		"\n"
		"  -c FILE    configuration file (default: the embedded development one)\n"
		"  -f SENDER  envelope sender (default: your user name @ the first local domain)\n"
		"  -t         also take recipients from To, Cc and Bcc; Bcc is removed\n"
		"  -i, -oX, -F NAME, -B TYPE\n"
		"             accepted for sendmail compatibility, without effect\n"
		"             (a line holding a lone '.' never ends the input)\n"
		"\n"
		"Exit status: 0 queued, 75 temporary failure, 65 refused, 64 bad usage,\n"
		"78 configuration error, 74 cannot read stdin.\n");
}

static int add_rcpt(struct send_opts *o, const char *addr)
{
	char **v = realloc(o->rcpts, (o->n_rcpts + 1) * sizeof *v);

	if (v == NULL)
		return -1;
	o->rcpts = v;
	if ((v[o->n_rcpts] = strdup(addr)) == NULL)
		return -1;
	o->n_rcpts++;
	return 0;
}

static int parse_args(int argc, char **argv, struct send_opts *o)
{
	int i;

	for (i = 1; i < argc; i++) {
		const char *a = argv[i];

		if (!strcmp(a, "--")) {
			i++;
			break;
		}
		if (a[0] != '-' || a[1] == '\0')
			break;
		if (!strcmp(a, "-c") || !strcmp(a, "--config") || !strcmp(a, "-f")) {
			if (i + 1 >= argc) {
				fprintf(stderr, "carrier send: %s needs a value\n", a);
				return -1;
			}
			if (a[1] == 'f')
				o->sender = argv[++i];
			else
				o->config = argv[++i];
		} else if (!strncmp(a, "-f", 2)) {
			o->sender = a + 2;
		} else if (!strcmp(a, "-t")) {
			o->from_headers = true;
		} else if (!strcmp(a, "-i") || !strncmp(a, "-o", 2)) {
			continue;     /* -oi, -oem, -odi...: sendmail's, no effect */
		} else if (!strcmp(a, "-F") || !strcmp(a, "-B")) {
			if (i + 1 >= argc) {
				fprintf(stderr, "carrier send: %s needs a value\n", a);
				return -1;
			}
			i++;          /* full name, body type: accepted, unused */
		} else if (!strncmp(a, "-F", 2) || !strncmp(a, "-B", 2)) {
			continue;
		} else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			return 1;
		} else {
			fprintf(stderr, "carrier send: unknown option '%s'\n", a);
			return -1;
		}
	}
	for (; i < argc; i++)
		if (add_rcpt(o, argv[i]) < 0)
			return -1;
	return 0;
}

/* An address we put between angle brackets in MAIL or RCPT: printable
 * ASCII or UTF-8, no space, no '<', '>' and no control character. */
static bool addr_ok(const char *a, bool may_be_empty)
{
	size_t n = strlen(a);

	if (n == 0)
		return may_be_empty;
	if (n > SEND_ADDR_MAX)
		return false;
	for (; *a; a++) {
		unsigned char c = (unsigned char)*a;

		if (c <= 0x20 || c == 0x7f || c == '<' || c == '>')
			return false;
	}
	return true;
}

/* ---- header block and -t -------------------------------------------------- */

/* Whether `line` starts a header field ("Name:"). */
static bool is_field(const char *line, size_t len)
{
	size_t i = 0;

	while (i < len && line[i] > 0x20 && line[i] < 0x7f && line[i] != ':')
		i++;
	return i > 0 && i < len && line[i] == ':';
}

/* The message read from stdin before anything is sent. */
struct input {
	struct buf hdr;     /* the header fields (Bcc removed with -t) */
	struct buf rest;    /* the line that ended them */
	FILE *body;         /* the rest of stdin, in an unlinked temporary file */
	uint64_t size;      /* bytes on the wire: CRs added, dots stuffed */
	bool eightbit;      /* a byte above 127 anywhere */
	unsigned char prev; /* the last byte counted */
};

/* Counts message bytes as conn_data() will send them (in order). */
static void note_bytes(struct input *m, const void *p, size_t n)
{
	const unsigned char *b = p;

	m->size += n;
	for (size_t i = 0; i < n; i++) {
		if (b[i] & 0x80)
			m->eightbit = true;
		if (b[i] == '\n' && m->prev != '\r')
			m->size++;
		if (b[i] == '.' && m->prev == '\n')
			m->size++;
		m->prev = b[i];
	}
}

/* Reads one line (with its LF) into line, at most `max` bytes: returns its
 * length, 0 at EOF, -1 on a read error, -2 when longer than max. */
static ssize_t read_line(FILE *in, struct buf *line, size_t max)
{
	int c;

	line->n = 0;
	while ((c = getc(in)) != EOF) {
		char ch = (char)c;

		if (line->n >= max)
			return -2;
		if (buf_add(line, &ch, 1) < 0)
			return -1;
		if (ch == '\n')
			break;
	}
	return ferror(in) ? -1 : (ssize_t)line->n;
}

/* Reads the header block: fields up to (not including) the first empty
 * line, a line that is not a field, or EOF.  hdr gets the fields; rest
 * gets the line that ended them (to be sent first in the body).  Memory is
 * bounded by SEND_HEADER_MAX. */
static int read_headers(FILE *in, struct input *m, char *err, size_t errlen)
{
	struct buf line = { 0 };
	ssize_t len;

	while ((len = read_line(in, &line, SEND_HEADER_MAX - m->hdr.n)) > 0) {
		bool cont = (line.p[0] == ' ' || line.p[0] == '\t') && m->hdr.n > 0;
		struct buf *to = cont || is_field(line.p, (size_t)len) ? &m->hdr : &m->rest;

		if (buf_add(to, line.p, (size_t)len) < 0) {
			len = -1;
			break;
		}
		if (to == &m->rest)
			break;
	}
	free(line.p);
	if (len == -2) {
		snprintf(err, errlen, "the header block is longer than %d bytes", SEND_HEADER_MAX);
		return EX_DATAERR_;
	}
	if (len < 0) {
		snprintf(err, errlen, "read stdin: %s", errno ? strerror(errno) : "out of memory");
		return EX_IOERR_;
	}
	return 0;
}

/* Copies the rest of stdin into an unlinked temporary file, so nothing is
 * sent before the whole message is in hand (a read error sends nothing)
 * and MAIL can declare SIZE and BODY=8BITMIME. */
static int read_body(FILE *in, struct input *m, char *err, size_t errlen)
{
	char chunk[16384];
	size_t n;

	m->prev = '\n';
	note_bytes(m, m->hdr.p ? m->hdr.p : "", m->hdr.n);
	note_bytes(m, m->rest.p ? m->rest.p : "", m->rest.n);
	if ((m->body = tmpfile()) == NULL) {
		snprintf(err, errlen, "cannot create a temporary file: %s", strerror(errno));
		return EX_TEMPFAIL_;
	}
	while ((n = fread(chunk, 1, sizeof chunk, in)) > 0) {
		note_bytes(m, chunk, n);
		if (fwrite(chunk, 1, n, m->body) != n) {
			snprintf(err, errlen, "write a temporary file: %s", strerror(errno));
			return EX_TEMPFAIL_;
		}
	}
	if (ferror(in)) {
		snprintf(err, errlen, "read stdin: %s", strerror(errno));
		return EX_IOERR_;
	}
	if (fflush(m->body) != 0 || fseek(m->body, 0, SEEK_SET) != 0) {
		snprintf(err, errlen, "write a temporary file: %s", strerror(errno));
		return EX_TEMPFAIL_;
	}
	if (m->prev != '\n')
		m->size += 2;   /* the CRLF conn_data() adds */
	return 0;
}

/* Adds one address as found in a list element (`s`, n bytes, comments
 * already removed): the part in angle brackets if any, else the whole. */
static int take_addr(struct send_opts *o, const char *s, size_t n, const char *angle)
{
	char addr[SEND_ADDR_MAX + 1];
	size_t k = 0;

	if (angle != NULL) {
		s = angle;
		n = strcspn(angle, ">");
		if (memchr(s, ':', n) && s[0] == '@') {   /* obsolete route */
			const char *c = memchr(s, ':', n);

			n -= (size_t)(c + 1 - s);
			s = c + 1;
		}
	}
	while (n > 0 && isspace((unsigned char)*s)) {
		s++;
		n--;
	}
	while (n > 0 && isspace((unsigned char)s[n - 1]))
		n--;
	for (size_t i = 0; i < n && k < SEND_ADDR_MAX; i++)
		addr[k++] = s[i];
	addr[k] = '\0';
	if (k == 0)
		return 0;
	return add_rcpt(o, addr);
}

/*
 * Extracts the addresses of an address-list header value (RFC 5322 3.4):
 * elements split at ',' outside quotes, comments and angle brackets;
 * group names ("team:") and their ';' are skipped; comments dropped.
 */
static int parse_address_list(struct send_opts *o, const char *v)
{
	struct buf cur = { 0 };
	int depth = 0, rc = 0;
	bool quoted = false, in_angle = false;
	bool has_angle = false;

	for (const char *p = v;; p++) {
		char c = *p;

		if (c == '\0' || (!quoted && depth == 0 && !in_angle && (c == ',' || c == ';'))) {
			if (cur.n > 0 || has_angle)
				rc |= take_addr(o, cur.p ? cur.p : "", cur.n,
						has_angle ? (cur.p ? cur.p : "") : NULL);
			cur.n = 0;
			has_angle = false;
			if (c == '\0')
				break;
			continue;
		}
		if (quoted) {
			if (c == '\\' && p[1] != '\0') {
				rc |= buf_add(&cur, p, 2);
				p++;
				continue;
			}
			if (c == '"')
				quoted = false;
		} else if (depth > 0) {
			if (c == '\\' && p[1] != '\0')
				p++;
			else if (c == '(')
				depth++;
			else if (c == ')')
				depth--;
			continue;
		} else if (c == '(') {
			depth = 1;
			continue;
		} else if (c == '"') {
			quoted = true;
		} else if (c == '<') {
			in_angle = true;
			has_angle = true;
			cur.n = 0;            /* the display name goes */
			continue;
		} else if (c == '>') {
			in_angle = false;
		} else if (c == ':' && !in_angle) {
			cur.n = 0;            /* "group:" starts a group */
			continue;
		}
		if (has_angle && !in_angle)
			continue;            /* text after <...> */
		rc |= buf_add(&cur, &c, 1);
	}
	free(cur.p);
	return rc;
}

/* Length of the header field starting at p (with its continuations). */
static size_t field_len(const char *p, const char *end)
{
	const char *q = p;

	do {
		const char *nl = memchr(q, '\n', (size_t)(end - q));

		q = nl ? nl + 1 : end;
	} while (q < end && (*q == ' ' || *q == '\t'));
	return (size_t)(q - p);
}

static bool field_is(const char *p, size_t len, const char *name)
{
	size_t n = strlen(name);

	return len > n && strncasecmp(p, name, n) == 0 && p[n] == ':';
}

/* -t: collects To, Cc, Bcc recipients; rewrites hdr without Bcc. */
static int headers_recipients(struct send_opts *o, struct buf *hdr)
{
	struct buf out = { 0 };
	const char *p = hdr->p ? hdr->p : "", *end = p + hdr->n;
	int rc = 0;

	while (p < end) {
		size_t len = field_len(p, end);
		bool bcc = field_is(p, len, "Bcc");

		if (bcc || field_is(p, len, "To") || field_is(p, len, "Cc")) {
			char *v = malloc(len + 1);
			size_t k = 0;

			if (v == NULL)
				return -1;
			for (size_t i = (size_t)(strchr(p, ':') - p) + 1; i < len; i++)
				if (p[i] != '\r' && p[i] != '\n')
					v[k++] = p[i];
			v[k] = '\0';
			rc |= parse_address_list(o, v);
			free(v);
		}
		if (!bcc)
			rc |= buf_add(&out, p, len);
		p += len;
	}
	free(hdr->p);
	*hdr = out;
	return rc;
}

/* ---- SMTP client ------------------------------------------------------------ */

struct conn {
	int fd;
	char in[8192];
	size_t in_len, in_off;
	char out[16384];
	size_t out_len;
	bool at_bol, last_cr;
	char reply[SEND_REPLY_MAX];     /* last reply, lines joined by " / " */
	int code;
};

static int conn_flush(struct conn *c, char *err, size_t errlen)
{
	size_t off = 0;

	while (off < c->out_len) {
		ssize_t r = send(c->fd, c->out + off, c->out_len - off, MSG_NOSIGNAL);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			snprintf(err, errlen, "write to the server: %s",
				 r < 0 && errno == EAGAIN ? "timed out" : strerror(errno));
			return -1;
		}
		off += (size_t)r;
	}
	c->out_len = 0;
	return 0;
}

static int conn_put(struct conn *c, const char *s, size_t n, char *err, size_t errlen)
{
	while (n > 0) {
		size_t k = sizeof c->out - c->out_len;

		if (k == 0) {
			if (conn_flush(c, err, errlen) < 0)
				return -1;
			continue;
		}
		if (k > n)
			k = n;
		memcpy(c->out + c->out_len, s, k);
		c->out_len += k;
		s += k;
		n -= k;
	}
	return 0;
}

/* Reads one line (CRLF or LF stripped) into line. */
static int conn_line(struct conn *c, char *line, size_t size, char *err, size_t errlen)
{
	size_t n = 0;

	for (;;) {
		if (c->in_off == c->in_len) {
			ssize_t r = recv(c->fd, c->in, sizeof c->in, 0);

			if (r < 0 && errno == EINTR)
				continue;
			if (r <= 0) {
				snprintf(err, errlen, "read from the server: %s",
					 r == 0 ? "connection closed" :
					 errno == EAGAIN ? "timed out" : strerror(errno));
				return -1;
			}
			c->in_len = (size_t)r;
			c->in_off = 0;
		}
		char ch = c->in[c->in_off++];

		if (ch == '\n')
			break;
		if (n + 1 < size)
			line[n++] = ch;
	}
	if (n > 0 && line[n - 1] == '\r')
		n--;
	line[n] = '\0';
	return 0;
}

/* Reads a whole (possibly multi-line) reply into c->code and c->reply. */
static int conn_reply(struct conn *c, char *err, size_t errlen)
{
	char line[1024];
	size_t n = 0;

	c->reply[0] = '\0';
	for (int lines = 0;; lines++) {
		if (conn_line(c, line, sizeof line, err, errlen) < 0)
			return -1;
		if (strlen(line) < 3 || !isdigit((unsigned char)line[0]) ||
		    !isdigit((unsigned char)line[1]) || !isdigit((unsigned char)line[2]) ||
		    (line[3] != '\0' && line[3] != ' ' && line[3] != '-')) {
			snprintf(err, errlen, "the server sent a malformed reply: %.200s", line);
			return -1;
		}
		c->code = atoi(line);
		for (char *p = line; *p; p++)
			if (iscntrl((unsigned char)*p))
				*p = '?';
		n += (size_t)snprintf(c->reply + n, n < sizeof c->reply ? sizeof c->reply - n : 0,
				      "%s%s", lines ? " / " : "", line);
		if (n >= sizeof c->reply)
			n = sizeof c->reply - 1;
		if (line[3] != '-')
			return 0;
		if (lines > 100) {
			snprintf(err, errlen, "the server sent a reply of more than 100 lines");
			return -1;
		}
	}
}

/* Sends a command line and reads the reply; returns the reply code, or -1
 * (connection problem, err set). */
__attribute__((format(printf, 4, 5)))
static int conn_cmd(struct conn *c, char *err, size_t errlen, const char *fmt, ...)
{
	char line[SEND_ADDR_MAX + 64];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(line, sizeof line - 2, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof line - 2) {
		snprintf(err, errlen, "command too long");
		return -1;
	}
	memcpy(line + n, "\r\n", 2);
	if (conn_put(c, line, (size_t)n + 2, err, errlen) < 0 ||
	    conn_flush(c, err, errlen) < 0 || conn_reply(c, err, errlen) < 0)
		return -1;
	return c->code;
}

/* DATA bytes: LF -> CRLF, dot-stuffing at line starts. */
static int conn_data(struct conn *c, const char *s, size_t n, char *err, size_t errlen)
{
	for (size_t i = 0; i < n; i++) {
		char ch = s[i];

		if (ch == '\n' && !c->last_cr && conn_put(c, "\r", 1, err, errlen) < 0)
			return -1;
		if (c->at_bol && ch == '.' && conn_put(c, ".", 1, err, errlen) < 0)
			return -1;
		if (conn_put(c, &ch, 1, err, errlen) < 0)
			return -1;
		c->at_bol = ch == '\n';
		c->last_cr = ch == '\r';
	}
	return 0;
}

static int conn_open(const struct conf_listen *l, struct conn *c, char *err, size_t errlen)
{
	struct sockaddr_storage ss = l->addr;
	struct timeval tv = { .tv_sec = SEND_TIMEOUT };
	socklen_t len = l->addrlen;

	if (ss.ss_family == AF_INET) {
		struct sockaddr_in *a = (struct sockaddr_in *)&ss;

		if (a->sin_addr.s_addr == htonl(INADDR_ANY))
			a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	} else if (ss.ss_family == AF_INET6) {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;

		if (IN6_IS_ADDR_UNSPECIFIED(&a->sin6_addr))
			a->sin6_addr = in6addr_loopback;
	}
	c->fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c->fd < 0) {
		snprintf(err, errlen, "socket: %s", strerror(errno));
		return -1;
	}
	setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
	if (connect(c->fd, (struct sockaddr *)&ss, len) < 0) {
		snprintf(err, errlen, "connect to %s: %s", l->text, strerror(errno));
		close(c->fd);
		c->fd = -1;
		return -1;
	}
	return 0;
}

/* Maps a refusal to the exit status and prints it. */
static int refused(const struct conn *c, const char *what)
{
	fprintf(stderr, "carrier send: %s refused: %s\n", what, c->reply);
	return c->code >= 500 ? EX_DATAERR_ : EX_TEMPFAIL_;
}

/* Prints the queue ID from "250 2.0.0 Ok: queued as QID". */
static void print_qid(const char *reply)
{
	const char *p = strstr(reply, "queued as ");
	size_t n;

	if (p == NULL) {
		printf("%s\n", reply);
		return;
	}
	p += strlen("queued as ");
	n = strcspn(p, " /");
	printf("%.*s\n", (int)n, p);
}

/* Whether the EHLO reply in c->reply (lines joined by " / ") lists the
 * extension `kw`. */
static bool has_ext(const struct conn *c, const char *kw)
{
	size_t n = strlen(kw);

	for (const char *p = strstr(c->reply, " / "); p != NULL; p = strstr(p + 3, " / ")) {
		const char *k = p + 3 + 4;   /* past " / 250-" */

		if (strlen(p + 3) > 4 && strncasecmp(k, kw, n) == 0 &&
		    (k[n] == '\0' || k[n] == ' ' || k[n] == '/'))
			return true;
	}
	return false;
}

static bool ascii_only(const char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s & 0x80)
			return false;
	return true;
}

/* The MAIL command's parameters: SIZE, BODY=8BITMIME, SMTPUTF8 when the
 * server offers them and the message needs them. */
static void mail_params(const struct conn *c, const struct send_opts *o, const char *sender,
			const struct input *m, char *out, size_t outlen)
{
	bool utf8 = !ascii_only(sender);
	size_t n = 0;

	for (size_t i = 0; i < o->n_rcpts; i++)
		utf8 = utf8 || !ascii_only(o->rcpts[i]);
	out[0] = '\0';
	if (has_ext(c, "SIZE"))
		n += (size_t)snprintf(out + n, outlen - n, " SIZE=%llu",
				      (unsigned long long)m->size);
	if (m->eightbit && has_ext(c, "8BITMIME") && n < outlen)
		n += (size_t)snprintf(out + n, outlen - n, " BODY=8BITMIME");
	if (utf8 && has_ext(c, "SMTPUTF8") && n < outlen)
		snprintf(out + n, outlen - n, " SMTPUTF8");
}

/* The SMTP dialogue after the greeting; returns the exit status. */
static int submit(struct conn *c, const struct send_opts *o, const char *sender,
		  const struct input *m)
{
	char err[512], host[256] = "localhost", chunk[16384], params[128];
	size_t n;
	int code;

	if (gethostname(host, sizeof host) < 0 || !addr_ok(host, false))
		snprintf(host, sizeof host, "localhost");
	host[sizeof host - 1] = '\0';
	if ((code = conn_cmd(c, err, sizeof err, "EHLO %s", host)) >= 500)
		code = conn_cmd(c, err, sizeof err, "HELO %s", host);
	if (code < 0)
		goto io;
	if (code != 250)
		return refused(c, "EHLO");
	mail_params(c, o, sender, m, params, sizeof params);
	if ((code = conn_cmd(c, err, sizeof err, "MAIL FROM:<%s>%s", sender, params)) < 0)
		goto io;
	if (code != 250)
		return refused(c, "sender");
	for (size_t i = 0; i < o->n_rcpts; i++) {
		if ((code = conn_cmd(c, err, sizeof err, "RCPT TO:<%s>", o->rcpts[i])) < 0)
			goto io;
		if (code != 250 && code != 251) {
			char what[SEND_ADDR_MAX + 32];

			snprintf(what, sizeof what, "recipient <%s>", o->rcpts[i]);
			return refused(c, what);
		}
	}
	if ((code = conn_cmd(c, err, sizeof err, "DATA")) < 0)
		goto io;
	if (code != 354)
		return refused(c, "DATA");
	c->at_bol = true;
	if (conn_data(c, m->hdr.p ? m->hdr.p : "", m->hdr.n, err, sizeof err) < 0 ||
	    conn_data(c, m->rest.p ? m->rest.p : "", m->rest.n, err, sizeof err) < 0)
		goto io;
	while ((n = fread(chunk, 1, sizeof chunk, m->body)) > 0)
		if (conn_data(c, chunk, n, err, sizeof err) < 0)
			goto io;
	if (ferror(m->body)) {
		fprintf(stderr, "carrier send: read the temporary file: %s; nothing sent\n",
			strerror(errno));
		return EX_TEMPFAIL_;    /* closing without the final dot aborts */
	}
	if (!c->at_bol && conn_put(c, "\r\n", 2, err, sizeof err) < 0)
		goto io;
	if ((code = conn_cmd(c, err, sizeof err, ".")) < 0)
		goto io;
	if (code != 250)
		return refused(c, "message");
	print_qid(c->reply);
	conn_cmd(c, err, sizeof err, "QUIT");
	return EX_OK_;
io:
	fprintf(stderr, "carrier send: %s\n", err);
	return EX_TEMPFAIL_;
}

static int default_sender(const struct carrier_conf *conf, char *out, size_t outlen)
{
	struct passwd *pw = getpwuid(getuid());
	const char *domain = conf->n_local_domains ? conf->local_domains[0] :
			     conf->hostname && conf->hostname[0] ? conf->hostname : "localhost";

	if (pw == NULL || pw->pw_name == NULL)
		return -1;
	snprintf(out, outlen, "%s@%s", pw->pw_name, domain);
	return 0;
}

static void opts_free(struct send_opts *o)
{
	for (size_t i = 0; i < o->n_rcpts; i++)
		free(o->rcpts[i]);
	free(o->rcpts);
}

static int send_run(struct send_opts *o, const struct carrier_conf *conf)
{
	struct input m = { 0 };
	struct conn *c = NULL;
	char sender[SEND_ADDR_MAX + 1], err[512];
	int rc;

	if (o->sender != NULL)
		snprintf(sender, sizeof sender, "%s", o->sender);
	else if (default_sender(conf, sender, sizeof sender) < 0) {
		fprintf(stderr, "carrier send: who are you (uid %u has no passwd entry)? Use -f\n",
			(unsigned)getuid());
		return EX_USAGE_;
	}
	if (!addr_ok(sender, true)) {
		fprintf(stderr, "carrier send: bad sender address \"%s\"\n", sender);
		return EX_USAGE_;
	}
	rc = read_headers(stdin, &m, err, sizeof err);
	if (rc == 0 && o->from_headers && headers_recipients(o, &m.hdr) < 0) {
		snprintf(err, sizeof err, "out of memory");
		rc = EX_TEMPFAIL_;
	}
	if (rc == 0)
		rc = read_body(stdin, &m, err, sizeof err);
	if (rc != 0) {
		fprintf(stderr, "carrier send: %s\n", err);
		goto out;
	}
	rc = EX_USAGE_;
	if (o->n_rcpts == 0) {
		fprintf(stderr, "carrier send: no recipients (give them as arguments or use -t)\n");
		goto out;
	}
	for (size_t i = 0; i < o->n_rcpts; i++)
		if (!addr_ok(o->rcpts[i], false)) {
			fprintf(stderr, "carrier send: bad recipient address \"%s\"\n", o->rcpts[i]);
			goto out;
		}
	rc = EX_TEMPFAIL_;
	if (conf->n_listen == 0) {
		fprintf(stderr, "carrier send: the configuration has no listen address\n");
		rc = EX_CONFIG_;
		goto out;
	}
	if ((c = calloc(1, sizeof *c)) == NULL)
		goto out;
	if (conn_open(&conf->listen[0], c, err, sizeof err) < 0) {
		fprintf(stderr, "carrier send: %s\n", err);
		goto out;
	}
	if (conn_reply(c, err, sizeof err) < 0)
		fprintf(stderr, "carrier send: %s\n", err);
	else if (c->code != 220)
		rc = refused(c, "connection");
	else
		rc = submit(c, o, sender, &m);
	close(c->fd);
out:
	free(c);
	free(m.hdr.p);
	free(m.rest.p);
	if (m.body != NULL)
		fclose(m.body);
	return rc;
}

int cli_send_main(int argc, char **argv)
{
	struct send_opts o = { 0 };
	struct carrier_conf *conf;
	int rc = parse_args(argc, argv, &o);

	if (rc != 0) {
		send_usage(rc > 0 ? stdout : stderr);
		opts_free(&o);
		return rc > 0 ? EX_OK_ : EX_USAGE_;
	}
	conf = cli_load_conf("carrier send", o.config);
	if (conf == NULL) {
		opts_free(&o);
		return EX_CONFIG_;
	}
	rc = send_run(&o, conf);
	conf_free(&conf);
	opts_free(&o);
	return rc;
}
