/* Unit tests for evlog: the catalogue, rendering, levels, and the JSON
 * sink's escaping of hostile field values. */
#include "test_util.h"

#include <stdlib.h>
#include <unistd.h>

#include "evlog.h"

static void test_catalogue_sorted_and_complete(void **state)
{
	size_t n;
	const struct evlog_def *defs = evlog_catalogue(&n);

	assert_true(n > 10);
	for (size_t i = 0; i < n; i++) {
		if (i > 0 && defs[i].id <= defs[i - 1].id)
			fail_msg("event %d (%s) is not after %d", defs[i].id, defs[i].name, defs[i - 1].id);
		if (defs[i].severity >= EVLOG_WARNING && defs[i].cause[0] == '\0')
			fail_msg("event %s has no cause", defs[i].name);
		if (defs[i].severity >= EVLOG_ERROR && defs[i].remedy[0] == '\0')
			fail_msg("event %s has no remedy", defs[i].name);
		assert_ptr_equal(evlog_def_by_id(defs[i].id), &defs[i]);
		assert_ptr_equal(evlog_def_by_name(defs[i].name), &defs[i]);
	}
	assert_null(evlog_def_by_id(1));
	assert_null(evlog_def_by_name("NO_SUCH_EVENT"));
}

static void test_render(void **state)
{
	char buf[128];
	const struct evlog_field f[] = { EVF_S("addr", "127.0.0.1"), EVF_I("port", 2525) };

	evlog_render(buf, sizeof buf, "listen {addr}:{port:int} ok", f, 2);
	assert_string_equal(buf, "listen 127.0.0.1:2525 ok");
	evlog_render(buf, sizeof buf, "missing {nope} here", f, 2);
	assert_string_equal(buf, "missing <nope?> here");
	/* Truncation keeps a terminated string and reports the wanted size. */
	assert_int_equal(evlog_render(buf, 8, "listen {addr}", f, 2), strlen("listen 127.0.0.1"));
	assert_string_equal(buf, "listen ");
	/* A control character in a value cannot start a new line. */
	const struct evlog_field h[] = { EVF_S("addr", "a\r\nb") };

	evlog_render(buf, sizeof buf, "x {addr} y", h, 1);
	assert_string_equal(buf, "x a??b y");
}

static void test_json_escape(void **state)
{
	char buf[64];

	evlog_json_escape(buf, sizeof buf, "q\"b\\\n\x01\x7f");
	assert_string_equal(buf, "q\\\"b\\\\\\u000a\\u0001\\u007f");
}

static void test_levels_and_parse(void **state)
{
	enum evlog_category cat;
	enum evlog_level lvl;

	assert_int_equal(evlog_category_parse("SMTP_IN", &cat), 0);
	assert_int_equal(cat, EVLOG_CAT_SMTP_IN);
	assert_int_equal(evlog_category_parse("smtp", &cat), -1);
	assert_int_equal(evlog_level_parse("maximum", &lvl), 0);
	assert_int_equal(lvl, EVLOG_LEVEL_MAXIMUM);
	assert_int_equal(evlog_level_parse("verbose", &lvl), -1);
	assert_string_equal(evlog_level_name(EVLOG_LEVEL_NONE), "none");
}

/* A hostile value goes through the JSON sink as one line, and levels
 * decide what reaches the sink. */
static void test_json_sink(void **state)
{
	char path[] = "/tmp/carrier-evlog-XXXXXX";
	int fd = mkstemp(path);
	char err[256], *text, *nl;
	struct evlog *log = evlog_new("test");

	assert_true(fd >= 0);
	close(fd);
	assert_int_equal(evlog_open_json(log, path, err, sizeof err), 0);
	/* CONFIG_LOADED is INFO: hidden at minimum, shown at medium. */
	evlog_emit(log, EV_CONFIG_LOADED, EVF_S("file", "a.conf"));
	evlog_set_level(log, EVLOG_CAT_CONFIG, EVLOG_LEVEL_MEDIUM);
	evlog_emit(log, EV_CONFIG_LOADED, EVF_S("file", "evil\r\n{\"id\":1}\x1b[2J"));
	/* Errors show even at none. */
	evlog_set_level(log, EVLOG_CAT_CONFIG, EVLOG_LEVEL_NONE);
	evlog_emit(log, EV_CONFIG_ERROR, EVF_S("file", "b.conf"), EVF_I("line", 3),
		   EVF_S("key", "server.listen"), EVF_S("problem", "bad"));
	evlog_emit(log, EV_CONFIG_LOADED, EVF_S("file", "hidden.conf"));
	assert_int_equal(evlog_count(log, EV_CONFIG_LOADED), 3);
	evlog_free(&log);
	assert_null(log);

	text = test_read_file(path);
	assert_non_null(text);
	unlink(path);
	nl = strchr(text, '\n');
	assert_non_null(nl);
	*nl = '\0';
	assert_contains(text, "\"event\":\"CONFIG_LOADED\"");
	assert_contains(text, "evil\\u000d\\u000a{\\\"id\\\":1}\\u001b[2J");
	assert_contains(nl + 1, "\"event\":\"CONFIG_ERROR\"");
	assert_contains(nl + 1, "\"msg\":\"b.conf:3: server.listen: bad\"");
	assert_contains(nl + 1, "\"line\":3");
	assert_contains(nl + 1, "\"remedy\":");
	/* Exactly two lines: the first and the INFO at none never got out. */
	assert_null(strchr(strchr(nl + 1, '\n') + 1, '\n'));
	assert_null(strstr(nl + 1, "hidden.conf"));
	assert_null(strstr(text, "a.conf"));
	free(text);
}

static void test_null_log_is_quiet(void **state)
{
	evlog_emit(NULL, EV_CORE_READY, EVF_S("version", "x"), EVF_S("listeners", "y"),
		   EVF_S("spool", "z"));
	assert_int_equal(evlog_count(NULL, EV_CORE_READY), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_catalogue_sorted_and_complete),
		cmocka_unit_test(test_render),
		cmocka_unit_test(test_json_escape),
		cmocka_unit_test(test_levels_and_parse),
		cmocka_unit_test(test_json_sink),
		cmocka_unit_test(test_null_log_is_quiet),
	};

	return cmocka_run_group_tests_name("evlog", tests, NULL, NULL);
}
