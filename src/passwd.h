/*
 * passwd: the SMTP AUTH password file ([auth] passwd_file): lines of
 * USER:HASH where HASH is a crypt(3) string, yescrypt ("$y$...") by
 * default; blank lines and lines starting with '#' are ignored.
 *
 * Owns: reading the file into a lookup table, verifying a password
 * (crypt_rn from libxcrypt), hashing a new one, and the edits behind
 * `carrier passwd` (written atomically: temporary file, fsync, rename,
 * directory fsync).
 *
 * Must not: log or keep a clear-text password (callers wipe theirs).
 *
 * Threads: a loaded table is read-only and may be shared between threads
 * (the SMTP server's verifier threads check passwords against the table a
 * reload is replacing); its reference count is atomic.  Verification is
 * CPU-bound (tens of milliseconds for yescrypt) and reentrant.
 */
#ifndef CARRIER_PASSWD_H
#define CARRIER_PASSWD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#define PASSWD_USER_MAX 255
#define PASSWD_HASH_MAX 383

struct passwd_db;

/* Reads `path`.  NULL with "FILE:LINE: problem" or "FILE: reason" in err.
 * The caller holds the one reference; free with passwd_db_free. */
struct passwd_db *passwd_db_load(const char *path, char *err, size_t errlen);

/* Takes another reference to `db` (may be NULL) and returns it: the table
 * stays valid until every holder has called passwd_db_free. */
struct passwd_db *passwd_db_ref(struct passwd_db *db);

/* Drops the caller's reference and clears *dbp; the last one frees. */
void passwd_db_free(struct passwd_db **dbp);

/* Users in the table. */
size_t passwd_db_count(const struct passwd_db *db);

/* True when `user` exists and `pass` matches its hash.  An unknown user
 * costs the same hashing work, so timing does not reveal who exists. */
bool passwd_db_verify(const struct passwd_db *db, const char *user, const char *pass);

/* True when `user` is usable as a login: 1-255 bytes, printable, no ':'. */
bool passwd_user_ok(const char *user);

/* Hashes `pass` with a fresh yescrypt salt into `out` (PASSWD_HASH_MAX+1).
 * Returns 0, or -1 with a reason. */
int passwd_hash(const char *pass, char *out, size_t size, char *err, size_t errlen);

/* Adds or replaces `user` in the file at `path` (created 0640 if missing).
 * Returns 0, or -1 with a reason. */
int passwd_file_set(const char *path, const char *user, const char *hash,
		    char *err, size_t errlen);

/* Removes `user`.  Returns 0, 1 when there was no such user, -1 on error. */
int passwd_file_del(const char *path, const char *user, char *err, size_t errlen);

/* Writes the user names, one a line, to `out`.  Returns 0 or -1. */
int passwd_file_list(const char *path, FILE *out, char *err, size_t errlen);

#endif
