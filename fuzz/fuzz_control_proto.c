/*
 * fuzz_control_proto: libFuzzer harness for the CARRIER/1 control protocol
 * (control_proto.c), both directions.
 *
 * The first byte picks the chunk size the input is fed in, so incremental
 * parsing is exercised at every split.  The rest is fed to the request
 * parser (what the daemon reads from a local peer) and to the response
 * parser (what the CLI reads from the daemon).  Every parsed request and
 * response is formatted again and must parse back to the same thing; any
 * string must survive escape + unescape.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "control_proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_request_roundtrip(const struct control_request *req)
{
	char line[CONTROL_LINE_MAX + 1], again[CONTROL_LINE_MAX * 2], reason[256];
	struct control_request req2;
	size_t n = 0;
	int code, len;

	if (req->version != CONTROL_PROTO_VERSION || !req->command ||
	    req->argc > CONTROL_ARGS_MAX)
		abort();
	n += (size_t)snprintf(again, sizeof again, "%s", req->command);
	for (size_t i = 0; i < req->argc; i++)
		n += (size_t)snprintf(again + n, sizeof again - n, " %s", req->argv[i]);
	len = control_req_format(line, sizeof line, again, reason, sizeof reason);
	/* Separators collapse, so the canonical form is never longer. */
	if (len < 0)
		abort();
	if (control_req_parse_line(line, (size_t)len, &req2, &code, reason,
				   sizeof reason) != CONTROL_PARSE_OK)
		abort();
	if (strcmp(req->command, req2.command) || req->argc != req2.argc)
		abort();
	for (size_t i = 0; i < req->argc; i++)
		if (strcmp(req->argv[i], req2.argv[i]))
			abort();
}

static void fuzz_requests(const char *in, size_t len, size_t step)
{
	struct control_req_parser p;
	struct control_request req;
	char reason[256];
	size_t off = 0;

	control_req_parser_init(&p);
	while (off < len) {
		size_t chunk = len - off < step ? len - off : step, used = 0;
		int code = 0;
		enum control_parse r = control_req_parse(&p, in + off, chunk, &used,
							 &req, &code, reason,
							 sizeof reason);

		if (used > chunk || (r == CONTROL_PARSE_MORE && used != chunk))
			abort();
		off += used;
		if (r == CONTROL_PARSE_OK)
			check_request_roundtrip(&req);
		else if (r == CONTROL_PARSE_ERROR && code != 400 && code != 413 && code != 505)
			abort();
	}
}

static void check_response_roundtrip(const struct control_response *resp)
{
	struct control_reply *rep = control_reply_new();
	struct control_resp_parser p;
	struct control_response again;
	char reason[256];
	size_t len, used;
	char *out;

	if (!rep)
		return;
	control_reply_status(rep, resp->code, "%s", resp->text);
	for (size_t i = 0; i < resp->n_fields; i++) {
		/* The parser takes responses larger than a reply may be
		 * (CONTROL_RESP_TOTAL_MAX > CONTROL_REPLY_MAX): no round trip. */
		if (control_reply_add(rep, resp->fields[i].key, "%s",
				      resp->fields[i].value) < 0) {
			if (control_reply_code(rep) != CONTROL_CODE_FAILED)
				abort();
			control_reply_free(&rep);
			return;
		}
	}
	out = control_reply_format(rep, &len);
	if (!out || control_resp_parser_init(&p) < 0)
		abort();
	memset(&again, 0, sizeof again);
	if (control_resp_parse(&p, out, len, &used, &again, reason,
			       sizeof reason) != CONTROL_PARSE_OK || used != len)
		abort();
	if (again.code != resp->code || again.n_fields != resp->n_fields)
		abort();
	/* The status text may be cut to CONTROL_TEXT_MAX, never altered. */
	if (strncmp(again.text, resp->text, strlen(again.text)))
		abort();
	for (size_t i = 0; i < resp->n_fields; i++)
		if (strcmp(again.fields[i].key, resp->fields[i].key) ||
		    strcmp(again.fields[i].value, resp->fields[i].value))
			abort();
	control_response_clear(&again);
	control_resp_parser_free(&p);
	free(out);
	control_reply_free(&rep);
}

static void fuzz_responses(const char *in, size_t len, size_t step)
{
	struct control_resp_parser p;
	struct control_response resp;
	char reason[256];
	size_t off = 0;

	if (control_resp_parser_init(&p) < 0)
		return;
	memset(&resp, 0, sizeof resp);
	while (off < len) {
		size_t chunk = len - off < step ? len - off : step, used = 0;
		enum control_parse r = control_resp_parse(&p, in + off, chunk, &used,
							  &resp, reason, sizeof reason);

		if (used > chunk)
			abort();
		off += used;
		if (r == CONTROL_PARSE_OK)
			check_response_roundtrip(&resp);
		if (r != CONTROL_PARSE_MORE)
			break;
	}
	control_response_clear(&resp);
	control_resp_parser_free(&p);
}

static void fuzz_escape(const char *in, size_t len)
{
	size_t want = control_escape(NULL, 0, in, len);
	char *esc = malloc(want + 1), *cut;
	size_t half = want / 2 + 1;

	if (!esc)
		return;
	if (control_escape(esc, want + 1, in, len) != want || strlen(esc) != want)
		abort();
	if (memchr(in, '\0', len) == NULL &&
	    (control_unescape(esc) != (long)len || memcmp(esc, in, len)))
		abort();
	/* A cut escape still unescapes. */
	cut = malloc(half);
	if (cut) {
		control_escape(cut, half, in, len);
		if (memchr(in, '\0', len) == NULL && control_unescape(cut) < 0)
			abort();
		free(cut);
	}
	free(esc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t step;

	if (size < 1)
		return 0;
	step = data[0] ? data[0] : size;
	fuzz_requests((const char *)data + 1, size - 1, step);
	fuzz_responses((const char *)data + 1, size - 1, step);
	fuzz_escape((const char *)data + 1, size - 1 < 4096 ? size - 1 : 4096);
	return 0;
}
