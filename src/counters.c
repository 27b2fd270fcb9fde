/*
 * counters: shared-memory counters with a private fallback.
 * See counters.h.  Never fails the daemon.
 */
#include "counters.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct counters {
	struct counters_shm *shm;
	bool shared;
	char name[64];
};

static const char *const counters_names[] = {
#define X(sym, name) name,
	COUNTERS_LIST(X)
#undef X
};

const char *counters_name(enum counters_id id)
{
	return (unsigned)id < COUNTERS_N ? counters_names[id] : "?";
}

static struct counters_shm *counters_map(const char *name, char *err, size_t errlen)
{
	int fd = shm_open(name, O_RDWR | O_CREAT, 0644);
	void *p;

	if (fd < 0) {
		snprintf(err, errlen, "shm_open %s: %s", name, strerror(errno));
		return NULL;
	}
	if (ftruncate(fd, sizeof(struct counters_shm)) < 0) {
		snprintf(err, errlen, "ftruncate %s: %s", name, strerror(errno));
		close(fd);
		shm_unlink(name);
		return NULL;
	}
	p = mmap(NULL, sizeof(struct counters_shm), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	if (p == MAP_FAILED) {
		snprintf(err, errlen, "mmap %s: %s", name, strerror(errno));
		shm_unlink(name);
		return NULL;
	}
	return p;
}

static void counters_init_block(struct counters_shm *s)
{
	memset(s, 0, sizeof *s);
	s->layout = COUNTERS_LAYOUT;
	s->n_counters = COUNTERS_N;
	s->pid = (int32_t)getpid();
	s->started = (int64_t)time(NULL);
	/* Magic last: a reader that sees it sees an initialised block. */
	__atomic_store_n(&s->magic, COUNTERS_MAGIC, __ATOMIC_RELEASE);
}

struct counters *counters_open(const char *name, struct evlog *log)
{
	struct counters *c = calloc(1, sizeof *c);
	char err[256];

	if (c == NULL)
		return NULL;
	snprintf(c->name, sizeof c->name, "%s", name);
	c->shm = counters_map(name, err, sizeof err);
	if (c->shm != NULL) {
		c->shared = true;
		counters_init_block(c->shm);
		evlog_emit(log, EV_COUNTERS_SHARED, EVF_S("name", name),
			   EVF_I("size", sizeof *c->shm), EVF_I("layout", COUNTERS_LAYOUT));
		return c;
	}
	c->shm = calloc(1, sizeof *c->shm);
	if (c->shm == NULL) {
		free(c);
		return NULL;
	}
	counters_init_block(c->shm);
	evlog_emit(log, EV_COUNTERS_PRIVATE, EVF_S("name", name), EVF_S("reason", err));
	return c;
}

void counters_close(struct counters **cp, bool unlink_shm)
{
	struct counters *c = *cp;

	if (c == NULL)
		return;
	if (c->shared) {
		munmap(c->shm, sizeof *c->shm);
		if (unlink_shm)
			shm_unlink(c->name);
	} else {
		free(c->shm);
	}
	free(c);
	*cp = NULL;
}

bool counters_shared(const struct counters *c)
{
	return c->shared;
}

struct counters_shm *counters_block(struct counters *c)
{
	return c->shm;
}

int counters_probe(const char *name, char *err, size_t errlen)
{
	char probe[96];
	struct counters_shm *s;

	/* A name of our own, so a running daemon's block is left alone. */
	snprintf(probe, sizeof probe, "%s-probe-%d", name, (int)getpid());
	s = counters_map(probe, err, errlen);
	if (s == NULL)
		return -1;
	munmap(s, sizeof *s);
	shm_unlink(probe);
	return 0;
}

int counters_attach(const char *name, struct counters_shm *copy_r, char *err, size_t errlen)
{
	int fd = shm_open(name, O_RDONLY, 0);
	struct stat st;
	void *p;

	if (fd < 0) {
		snprintf(err, errlen, "shm_open %s: %s", name, strerror(errno));
		return -1;
	}
	if (fstat(fd, &st) < 0 || (size_t)st.st_size < sizeof *copy_r) {
		snprintf(err, errlen, "%s: too small for counters layout %d", name, COUNTERS_LAYOUT);
		close(fd);
		return -1;
	}
	p = mmap(NULL, sizeof *copy_r, PROT_READ, MAP_SHARED, fd, 0);
	close(fd);
	if (p == MAP_FAILED) {
		snprintf(err, errlen, "mmap %s: %s", name, strerror(errno));
		return -1;
	}
	memcpy(copy_r, p, sizeof *copy_r);
	munmap(p, sizeof *copy_r);
	if (copy_r->magic != COUNTERS_MAGIC || copy_r->layout != COUNTERS_LAYOUT) {
		snprintf(err, errlen, "%s: layout %u, this carrier reads layout %d",
			 name, copy_r->layout, COUNTERS_LAYOUT);
		return -1;
	}
	return 0;
}
