/*
 * passwd: the SMTP AUTH password file (see passwd.h).
 *
 * The table is a sorted array searched by binary search; the file is small
 * (users of one relay), so a reload reads it whole.
 */
#include "passwd.h"

#include <crypt.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define LINE_MAX_LEN (PASSWD_USER_MAX + 1 + PASSWD_HASH_MAX + 2)

struct passwd_ent {
	char *user;
	char *hash;
};

struct passwd_db {
	struct passwd_ent *v;
	size_t n;
	atomic_uint refs;   /* the loader's, plus one per passwd_db_ref */
};

/* A fixed yescrypt hash verified for unknown users (of no password anyone
 * knows), so that both paths do the same work. */
static const char dummy_hash[] =
	"$y$j9T$v/F6Oz7DhL8lROsOl3LUK1$JXV8F2tMtEVC3jKn3Zh3qDy.XBHeMDEWUeWqYjE2t55";

bool passwd_user_ok(const char *user)
{
	size_t n = strlen(user);

	if (n == 0 || n > PASSWD_USER_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)user[i];

		if (c <= 0x20 || c == 0x7f || c == ':')
			return false;
	}
	return true;
}

static int ent_cmp(const void *a, const void *b)
{
	return strcmp(((const struct passwd_ent *)a)->user, ((const struct passwd_ent *)b)->user);
}

struct passwd_db *passwd_db_ref(struct passwd_db *db)
{
	if (db != NULL)
		atomic_fetch_add_explicit(&db->refs, 1, memory_order_relaxed);
	return db;
}

void passwd_db_free(struct passwd_db **dbp)
{
	struct passwd_db *db = *dbp;

	*dbp = NULL;
	if (db == NULL || atomic_fetch_sub_explicit(&db->refs, 1, memory_order_acq_rel) > 1)
		return;
	for (size_t i = 0; i < db->n; i++) {
		free(db->v[i].user);
		free(db->v[i].hash);
	}
	free(db->v);
	free(db);
}

/* Splits one line (newline removed) into user and hash; false if bad. */
static bool split_line(char *line, char **user_r, char **hash_r)
{
	char *colon = strchr(line, ':');

	if (colon == NULL)
		return false;
	*colon = '\0';
	*user_r = line;
	*hash_r = colon + 1;
	return passwd_user_ok(line) && (*hash_r)[0] == '$' && strlen(*hash_r) <= PASSWD_HASH_MAX &&
	       strchr(*hash_r, ':') == NULL;
}

static bool skip_line(const char *line)
{
	return line[0] == '\0' || line[0] == '#';
}

/* Reads one line into buf; returns 1, 0 at EOF, -1 when too long. */
static int read_line(FILE *f, char *buf, size_t size)
{
	size_t n;

	if (fgets(buf, (int)size, f) == NULL)
		return 0;
	n = strlen(buf);
	if (n > 0 && buf[n - 1] == '\n')
		buf[--n] = '\0';
	else if (!feof(f))
		return -1;
	if (n > 0 && buf[n - 1] == '\r')
		buf[--n] = '\0';
	return 1;
}

struct passwd_db *passwd_db_load(const char *path, char *err, size_t errlen)
{
	struct passwd_db *db = calloc(1, sizeof *db);
	FILE *f = fopen(path, "re");
	char line[LINE_MAX_LEN + 2], *user, *hash;
	unsigned lineno = 0;
	int r;

	if (db == NULL || f == NULL) {
		snprintf(err, errlen, "%s: %s", path, db ? strerror(errno) : "out of memory");
		free(db);
		if (f)
			fclose(f);
		return NULL;
	}
	atomic_init(&db->refs, 1);
	while ((r = read_line(f, line, sizeof line)) != 0) {
		lineno++;
		if (r < 0) {
			snprintf(err, errlen, "%s:%u: line too long", path, lineno);
			goto fail;
		}
		if (skip_line(line))
			continue;
		if (!split_line(line, &user, &hash)) {
			snprintf(err, errlen, "%s:%u: not USER:HASH (a crypt hash starting with $)",
				 path, lineno);
			goto fail;
		}
		struct passwd_ent *v = realloc(db->v, (db->n + 1) * sizeof *v);

		if (v == NULL || (user = strdup(user)) == NULL) {
			if (v)
				db->v = v;
			snprintf(err, errlen, "%s: out of memory", path);
			goto fail;
		}
		db->v = v;
		db->v[db->n].user = user;
		if ((db->v[db->n].hash = strdup(hash)) == NULL) {
			free(user);
			snprintf(err, errlen, "%s: out of memory", path);
			goto fail;
		}
		db->n++;
	}
	fclose(f);
	qsort(db->v, db->n, sizeof *db->v, ent_cmp);
	for (size_t i = 1; i < db->n; i++)
		if (strcmp(db->v[i - 1].user, db->v[i].user) == 0) {
			snprintf(err, errlen, "%s: user '%s' appears twice", path, db->v[i].user);
			passwd_db_free(&db);
			return NULL;
		}
	return db;
fail:
	fclose(f);
	passwd_db_free(&db);
	return NULL;
}

size_t passwd_db_count(const struct passwd_db *db)
{
	return db ? db->n : 0;
}

/* Compares without an early exit, so the time does not depend on where
 * the strings differ. */
static bool same(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	unsigned char d = la != lb;

	for (size_t i = 0; i < la && i < lb; i++)
		d |= (unsigned char)(a[i] ^ b[i]);
	return d == 0;
}

bool passwd_db_verify(const struct passwd_db *db, const char *user, const char *pass)
{
	struct passwd_ent key = { .user = (char *)user }, *e = NULL;
	struct crypt_data *cd;
	bool ok = false;
	char *out;

	if (db != NULL && db->n > 0)
		e = bsearch(&key, db->v, db->n, sizeof *db->v, ent_cmp);
	cd = calloc(1, sizeof *cd);
	if (cd == NULL)
		return false;
	out = crypt_rn(pass, e ? e->hash : dummy_hash, cd, (int)sizeof *cd);
	if (out != NULL && out[0] != '*' && e != NULL)
		ok = same(out, e->hash);
	explicit_bzero(cd, sizeof *cd);
	free(cd);
	return ok;
}

int passwd_hash(const char *pass, char *out, size_t size, char *err, size_t errlen)
{
	char salt[CRYPT_GENSALT_OUTPUT_SIZE];
	struct crypt_data *cd;
	char *h;
	int rc = -1;

	if (crypt_gensalt_rn("$y$", 0, NULL, 0, salt, (int)sizeof salt) == NULL) {
		snprintf(err, errlen, "crypt_gensalt: %s", strerror(errno));
		return -1;
	}
	cd = calloc(1, sizeof *cd);
	if (cd == NULL) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	h = crypt_rn(pass, salt, cd, (int)sizeof *cd);
	if (h == NULL || h[0] == '*' || strlen(h) >= size)
		snprintf(err, errlen, "crypt: %s", h ? "hashing failed" : strerror(errno));
	else {
		memcpy(out, h, strlen(h) + 1);
		rc = 0;
	}
	explicit_bzero(cd, sizeof *cd);
	free(cd);
	return rc;
}

/* ---- editing the file ----------------------------------------------------- */

static int fsync_dir(const char *path)
{
	char copy[PATH_MAX];
	int fd, rc;

	snprintf(copy, sizeof copy, "%s", path);
	fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	rc = fsync(fd);
	close(fd);
	return rc;
}

/*
 * Rewrites `path` with every line except `user`'s, then `user:hash` when
 * `hash` is not NULL.  *found_r tells whether `user` was there.
 */
static int rewrite(const char *path, const char *user, const char *hash, bool *found_r,
		   char *err, size_t errlen)
{
	char tmp[PATH_MAX], line[LINE_MAX_LEN + 2], copy[LINE_MAX_LEN + 2], *u, *h;
	FILE *in = fopen(path, "re"), *out;
	struct stat st;
	mode_t mode = 0640;
	int fd, r;

	*found_r = false;
	if (in == NULL && errno != ENOENT) {
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		return -1;
	}
	if (in != NULL && fstat(fileno(in), &st) == 0)
		mode = st.st_mode & 07777;
	snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
	if (fd < 0 || (out = fdopen(fd, "w")) == NULL) {
		snprintf(err, errlen, "%s: %s", tmp, strerror(errno));
		if (fd >= 0)
			close(fd);
		if (in)
			fclose(in);
		return -1;
	}
	if (in != NULL && fstat(fileno(in), &st) == 0 && fchown(fd, st.st_uid, st.st_gid) < 0)
		(void)0;   /* not root: the file stays ours */
	while (in != NULL && (r = read_line(in, line, sizeof line)) != 0) {
		snprintf(copy, sizeof copy, "%s", line);
		if (r > 0 && !skip_line(copy) && split_line(copy, &u, &h) && strcmp(u, user) == 0) {
			*found_r = true;
			continue;
		}
		fprintf(out, "%s\n", line);
	}
	if (hash != NULL)
		fprintf(out, "%s:%s\n", user, hash);
	if (in)
		fclose(in);
	if (fflush(out) != 0 || fsync(fd) != 0) {
		snprintf(err, errlen, "%s: %s", tmp, strerror(errno));
		fclose(out);
		unlink(tmp);
		return -1;
	}
	if (fclose(out) != 0 || rename(tmp, path) != 0) {
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		unlink(tmp);
		return -1;
	}
	if (fsync_dir(path) < 0) {
		snprintf(err, errlen, "%s: directory fsync: %s", path, strerror(errno));
		return -1;
	}
	return 0;
}

int passwd_file_set(const char *path, const char *user, const char *hash,
		    char *err, size_t errlen)
{
	bool found;

	if (!passwd_user_ok(user)) {
		snprintf(err, errlen, "'%s' is not a valid user name (1-255 printable bytes, no ':' or space)",
			 user);
		return -1;
	}
	return rewrite(path, user, hash, &found, err, errlen);
}

int passwd_file_del(const char *path, const char *user, char *err, size_t errlen)
{
	bool found;

	if (rewrite(path, user, NULL, &found, err, errlen) < 0)
		return -1;
	return found ? 0 : 1;
}

int passwd_file_list(const char *path, FILE *out, char *err, size_t errlen)
{
	struct passwd_db *db = passwd_db_load(path, err, errlen);

	if (db == NULL)
		return -1;
	for (size_t i = 0; i < db->n; i++)
		fprintf(out, "%s\n", db->v[i].user);
	passwd_db_free(&db);
	return 0;
}
