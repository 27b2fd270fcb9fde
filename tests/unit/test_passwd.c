/* Unit tests for passwd (the AUTH password file) and auth (relay and
 * sender binding for authenticated clients, the failed-AUTH limiter). */
#include "test_util.h"

#include <netinet/in.h>
#include <sys/stat.h>
#include <unistd.h>

#include "auth.h"
#include "conf.h"
#include "passwd.h"

static void tmp_path(char *buf, size_t size)
{
	snprintf(buf, size, "/tmp/carrier-test-passwd-%ld", (long)getpid());
	unlink(buf);
}

static void test_round_trip(void **state)
{
	char path[128], hash[PASSWD_HASH_MAX + 1], err[512];
	struct passwd_db *db;
	struct stat st;

	tmp_path(path, sizeof path);
	assert_int_equal(passwd_hash("s3cret", hash, sizeof hash, err, sizeof err), 0);
	assert_true(strncmp(hash, "$y$", 3) == 0);
	assert_int_equal(passwd_file_set(path, "alice", hash, err, sizeof err), 0);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0640);
	assert_int_equal(passwd_hash("other", hash, sizeof hash, err, sizeof err), 0);
	assert_int_equal(passwd_file_set(path, "bob@example.org", hash, err, sizeof err), 0);

	db = passwd_db_load(path, err, sizeof err);
	assert_non_null(db);
	assert_int_equal(passwd_db_count(db), 2);
	assert_true(passwd_db_verify(db, "alice", "s3cret"));
	assert_false(passwd_db_verify(db, "alice", "s3cret "));
	assert_false(passwd_db_verify(db, "alice", ""));
	assert_true(passwd_db_verify(db, "bob@example.org", "other"));
	assert_false(passwd_db_verify(db, "carol", "s3cret"));
	passwd_db_free(&db);
	assert_null(db);

	/* Changing a password replaces the line. */
	assert_int_equal(passwd_hash("new", hash, sizeof hash, err, sizeof err), 0);
	assert_int_equal(passwd_file_set(path, "alice", hash, err, sizeof err), 0);
	db = passwd_db_load(path, err, sizeof err);
	assert_int_equal(passwd_db_count(db), 2);
	assert_true(passwd_db_verify(db, "alice", "new"));
	assert_false(passwd_db_verify(db, "alice", "s3cret"));
	passwd_db_free(&db);

	assert_int_equal(passwd_file_del(path, "alice", err, sizeof err), 0);
	assert_int_equal(passwd_file_del(path, "alice", err, sizeof err), 1);
	db = passwd_db_load(path, err, sizeof err);
	assert_int_equal(passwd_db_count(db), 1);
	assert_false(passwd_db_verify(db, "alice", "new"));
	passwd_db_free(&db);
	unlink(path);
}

static void test_bad_files(void **state)
{
	char path[128], err[512];
	FILE *f;
	struct passwd_db *db;

	tmp_path(path, sizeof path);
	assert_null(passwd_db_load(path, err, sizeof err));
	assert_contains(err, "No such file");

	f = fopen(path, "w");
	fprintf(f, "# comment\n\nalice:$y$j9T$abc$def\nbroken line\n");
	fclose(f);
	assert_null(passwd_db_load(path, err, sizeof err));
	assert_contains(err, ":4: not USER:HASH");

	f = fopen(path, "w");
	fprintf(f, "alice:$y$a\nalice:$y$b\n");
	fclose(f);
	assert_null(passwd_db_load(path, err, sizeof err));
	assert_contains(err, "twice");

	f = fopen(path, "w");
	fprintf(f, "alice:plaintext\n");
	fclose(f);
	assert_null(passwd_db_load(path, err, sizeof err));

	/* A hash crypt cannot use never verifies. */
	f = fopen(path, "w");
	fprintf(f, "alice:$y$garbage\n");
	fclose(f);
	db = passwd_db_load(path, err, sizeof err);
	assert_non_null(db);
	assert_false(passwd_db_verify(db, "alice", "garbage"));
	passwd_db_free(&db);
	unlink(path);

	assert_false(passwd_user_ok(""));
	assert_false(passwd_user_ok("a:b"));
	assert_false(passwd_user_ok("a b"));
	assert_false(passwd_user_ok("a\nb"));
	assert_true(passwd_user_ok("alice@example.org"));
	assert_int_equal(passwd_file_set(path, "a:b", "$y$x", err, sizeof err), -1);
}

static struct carrier_conf *conf_with(const char *text)
{
	struct conf_errors errs = { 0 };
	struct carrier_conf *c = conf_load_string("t.conf", text, &errs);

	if (c == NULL)
		fail_msg("conf: %s", errs.n ? errs.v[0].problem : "?");
	return c;
}

struct sender_case {
	const char *name, *login, *local, *domain;
	bool null, want_ok;
};

static void test_sender_binding(void **state)
{
	static const struct sender_case cases[] = {
		{ "login at local domain", "alice", "alice", "example.org", false, true },
		{ "domain case", "alice", "alice", "EXAMPLE.org", false, true },
		{ "second local domain", "alice", "alice", "example.net", false, true },
		{ "other local part", "alice", "bob", "example.org", false, false },
		{ "local part case", "alice", "Alice", "example.org", false, false },
		{ "foreign domain", "alice", "alice", "evil.example", false, false },
		{ "no domain", "alice", "alice", "", false, false },
		{ "null sender", "alice", "", "", true, true },
		{ "address login", "bob@remote.example", "bob", "remote.example", false, true },
		{ "address login, domain case", "bob@remote.example", "bob", "Remote.Example", false, true },
		{ "address login, local domain", "bob@remote.example", "bob", "example.org", false, false },
		{ "address login, prefix", "bob@remote.example", "bo", "remote.example", false, false },
	};
	struct carrier_conf *c = conf_with("[server]\nlocal_domains = example.org, example.net\n");
	struct carrier_conf *relaxed = conf_with("[server]\nlocal_domains = example.org\n"
						 "[auth]\nsender_login_match = no\n");
	struct policy_result r;

	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		const struct sender_case *k = &cases[i];

		auth_check_sender(c, k->login, k->null, k->local, k->domain, &r);
		if ((r.verdict == POLICY_ACCEPT) != k->want_ok)
			fail_msg("%s: got verdict %d, want %s", k->name, r.verdict,
				 k->want_ok ? "accept" : "reject");
		if (!k->want_ok) {
			assert_int_equal(r.code, 553);
			assert_string_equal(r.enhanced, "5.7.1");
			assert_int_equal(r.event, EV_AUTH_SENDER_MISMATCH);
		}
		auth_check_sender(relaxed, k->login, k->null, k->local, k->domain, &r);
		assert_int_equal(r.verdict, POLICY_ACCEPT);
	}
	conf_free(&c);
	conf_free(&relaxed);
}

static void test_auth_relay(void **state)
{
	struct carrier_conf *c = conf_with("[server]\nlocal_domains = example.org\n"
					   "relay_networks = 10.255.255.0/24\n");
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001) };
	struct policy_result base, r;

	policy_check_rcpt(c, (struct sockaddr *)&sin, "remote.example", false, 0, 100, &base);
	assert_int_equal(base.verdict, POLICY_REJECT);
	auth_check_rcpt(&base, false, &r);
	assert_int_equal(r.verdict, POLICY_REJECT);
	assert_int_equal(r.code, 554);
	auth_check_rcpt(&base, true, &r);
	assert_int_equal(r.verdict, POLICY_ACCEPT);

	/* Other refusals stand for authenticated clients too. */
	policy_check_rcpt(c, (struct sockaddr *)&sin, "example.org", false, 100, 100, &base);
	assert_int_equal(base.code, 452);
	auth_check_rcpt(&base, true, &r);
	assert_int_equal(r.code, 452);
	conf_free(&c);
}

static void test_limiter(void **state)
{
	struct auth_limiter *l = auth_limiter_new();
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(0xc0000201) };
	struct sockaddr_in b = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(0xc0000202) };
	struct sockaddr_in6 v6 = { .sin6_family = AF_INET6 };

	assert_int_equal(auth_limiter_failures(l, (struct sockaddr *)&a, 1000, 60), 0);
	assert_int_equal(auth_limiter_fail(l, (struct sockaddr *)&a, 1000, 60), 1);
	assert_int_equal(auth_limiter_fail(l, (struct sockaddr *)&a, 1010, 60), 2);
	assert_int_equal(auth_limiter_failures(l, (struct sockaddr *)&a, 1020, 60), 2);
	assert_int_equal(auth_limiter_failures(l, (struct sockaddr *)&b, 1020, 60), 0);
	assert_int_equal(auth_limiter_failures(l, (struct sockaddr *)&v6, 1020, 60), 0);
	/* Forgotten after the window of its last failure. */
	assert_int_equal(auth_limiter_failures(l, (struct sockaddr *)&a, 1070, 60), 0);
	assert_int_equal(auth_limiter_fail(l, (struct sockaddr *)&a, 1070, 60), 1);
	auth_limiter_clear(l, (struct sockaddr *)&a);
	assert_int_equal(auth_limiter_failures(l, (struct sockaddr *)&a, 1071, 60), 0);
	/* A flood of addresses costs no memory beyond the table. */
	for (uint32_t i = 0; i < 100000; i++) {
		struct sockaddr_in x = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(0x0a000000 + i) };

		auth_limiter_fail(l, (struct sockaddr *)&x, 2000, 60);
	}
	auth_limiter_free(&l);
	assert_null(l);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_round_trip),
		cmocka_unit_test(test_bad_files),
		cmocka_unit_test(test_sender_binding),
		cmocka_unit_test(test_auth_relay),
		cmocka_unit_test(test_limiter),
	};

	return cmocka_run_group_tests_name("passwd_auth", tests, NULL, NULL);
}
