/*
 * maildir: the Maildir delivery agent.
 *
 * One call, one attempt, one result: writes one message for one local part
 * into <root>/<localpart>/ (a Maildir with tmp/, new/ and cur/, created
 * 0700 when missing) and says whether it worked, failed for now, or failed
 * for good.  It knows nothing about the spool, SMTP or events: the caller
 * (the local runner) records the result and logs.
 *
 * Delivery (https://cr.yp.to/proto/maildir.html): the file is created in
 * tmp/ as `<sec>.M<usec>P<pid>Q<seq>.<host>` with O_CREAT|O_EXCL|O_NOFOLLOW,
 * written, fsync'd and closed, then hard-linked into new/ (a link fails
 * rather than replaces when the name exists; rename when the file system
 * has no hard links), unlinked from tmp/, and new/ is fsync'd.  Only then
 * is MAILDIR_OK returned.
 *
 * What is written: "Return-Path: <sender>" and "Delivered-To: lp@domain"
 * (folded local part, domain in lower case) at the top, then the message with its CRLF line ends turned into LF (the
 * Unix convention every Maildir reader expects; a lone CR is kept).
 *
 * Local parts are folded to lower case (ASCII) so User@ and user@ share a
 * mailbox, as most sites expect; a quoted local part ("a b") is unquoted.
 * Refused for good: empty, longer than MAILDIR_LOCALPART_MAX, a leading
 * '.', a '/', a control character.
 *
 * Symlink races: the root is opened as configured (the administrator may
 * make it a symlink); below it every directory is opened with
 * O_DIRECTORY|O_NOFOLLOW and every step uses openat()/linkat()/unlinkat()
 * relative to those descriptors, so a user who can write in the root
 * cannot redirect a delivery with a symlink.  A symlink or a non-directory
 * where a directory belongs is a permanent failure with a reason.
 *
 * Results: ENOSPC, EDQUOT, EIO, EACCES, EROFS, EMFILE, ENOMEM and other
 * environment errors are temporary; ENOTDIR, ELOOP (a symlink) and a bad
 * local part are permanent.
 *
 * Threads: reentrant; no shared state.  Blocking (disk I/O, fsync): call it
 * from a worker thread, never from an event loop.
 */
#ifndef CARRIER_MAILDIR_H
#define CARRIER_MAILDIR_H

#include <stddef.h>
#include <stdint.h>

#define MAILDIR_LOCALPART_MAX 200

enum maildir_result {
	MAILDIR_OK = 0,
	MAILDIR_TEMP = 1,   /* try again later (disk full, I/O error, ...) */
	MAILDIR_PERM = 2,   /* will never work (bad local part, not a dir) */
};

/* One message to deliver.  Exactly one body source: `mem` (with `size`
 * bytes) when non-NULL, else `fd`, read with pread() from offset 0 for
 * `size` bytes (its file offset is left alone). */
struct maildir_msg {
	const char *localpart;  /* as in the address; folded and checked here */
	const char *domain;     /* for Delivered-To */
	const char *sender;     /* for Return-Path; "" = null reverse-path */
	const void *mem;
	int fd;
	uint64_t size;
	uint64_t seq;           /* the Q<seq> part of the file name; callers
				 * keep a counter (a name in use is skipped) */
	const char *hostname;   /* for the file name; NULL = gethostname() */
};

/*
 * Delivers `msg` into <root>/<folded localpart>/.  On MAILDIR_OK writes
 * the path of the new file (root/lp/new/name) into path_r when non-NULL.
 * Otherwise err says why ("write .../tmp/NAME: No space left on device").
 */
enum maildir_result maildir_deliver(const char *root, const struct maildir_msg *msg,
				    char *path_r, size_t pathlen,
				    char *err, size_t errlen);

/*
 * Folds and checks a local part (unquoting "..."): writes the mailbox name
 * into out (size >= MAILDIR_LOCALPART_MAX + 1) and returns 0, or -1 with
 * the reason in err.
 */
int maildir_localpart_fold(const char *localpart, char *out, size_t outlen,
			   char *err, size_t errlen);

/* Whether errno value `e` met while delivering is temporary or permanent. */
enum maildir_result maildir_errno_result(int e);

/* "ok", "temporary failure", "permanent failure". */
const char *maildir_result_name(enum maildir_result r);

#endif
