/*
 * counters: shared-memory counters with a private fallback, and the
 * next-hop table.  See counters.h.  Never fails the daemon.
 *
 * Threads: any thread writes (relaxed atomics); slots are claimed with a
 * compare-and-swap; only the failure reason uses a per-slot sequence (a
 * writer spins only against another writer of the same slot's reason).
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
	struct evlog *log;
	bool shared;
	char name[64];
};

struct counters_meta {
	const char *name;
	enum counters_kind kind;
	const char *family;
	const char *state;
	const char *help;
};

static const struct counters_meta counters_meta[] = {
#define X(sym, name, kind, family, state, help) { name, COUNTERS_##kind, family, state, help },
	COUNTERS_LIST(X)
#undef X
};

static const struct counters_meta hop_meta[] = {
#define X(sym, name, kind, help) { name, COUNTERS_##kind, NULL, NULL, help },
	COUNTERS_HOP_LIST(X)
#undef X
};

const char *counters_name(enum counters_id id)
{
	return (unsigned)id < COUNTERS_N ? counters_meta[id].name : "?";
}

enum counters_kind counters_kind_of(enum counters_id id)
{
	return (unsigned)id < COUNTERS_N ? counters_meta[id].kind : COUNTERS_GAUGE;
}

const char *counters_family(enum counters_id id)
{
	return (unsigned)id < COUNTERS_N ? counters_meta[id].family : "?";
}

const char *counters_state(enum counters_id id)
{
	return (unsigned)id < COUNTERS_N ? counters_meta[id].state : "";
}

const char *counters_help(enum counters_id id)
{
	return (unsigned)id < COUNTERS_N ? counters_meta[id].help : "";
}

const char *counters_hop_field_name(enum counters_hop_field f)
{
	return (unsigned)f < COUNTERS_HOP_N ? hop_meta[f].name : "?";
}

enum counters_kind counters_hop_field_kind(enum counters_hop_field f)
{
	return (unsigned)f < COUNTERS_HOP_N ? hop_meta[f].kind : COUNTERS_GAUGE;
}

const char *counters_hop_field_help(enum counters_hop_field f)
{
	return (unsigned)f < COUNTERS_HOP_N ? hop_meta[f].help : "";
}

/* ---- the block ----------------------------------------------------------- */

static struct counters_shm *counters_map(const char *name, char *err, size_t errlen)
{
	int fd = shm_open(name, O_RDWR | O_CREAT, 0644);
	void *p;

	if (fd < 0) {
		snprintf(err, errlen, "shm_open %s: %s", name, strerror(errno));
		return NULL;
	}
	/* A block left by an older layout is resized; init rewrites it all. */
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
	s->n_hops = COUNTERS_HOPS;
	s->n_hop_fields = COUNTERS_HOP_N;
	s->pid = (int32_t)getpid();
	s->started = (int64_t)time(NULL);
	/* The overflow slot exists from the start. */
	snprintf(s->hops[COUNTERS_HOPS - 1].key, COUNTERS_HOP_KEY_MAX, "%s", COUNTERS_HOP_OTHER);
	s->hops[COUNTERS_HOPS - 1].state = COUNTERS_HOP_USED;
	/* Magic last: a reader that sees it sees an initialised block. */
	__atomic_store_n(&s->magic, COUNTERS_MAGIC, __ATOMIC_RELEASE);
}

struct counters *counters_open(const char *name, struct evlog *log)
{
	struct counters *c = calloc(1, sizeof *c);
	char err[256];

	if (c == NULL)
		return NULL;
	c->log = log;
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

const char *counters_shm_name(const struct counters *c)
{
	return c->name;
}

struct counters_shm *counters_block(struct counters *c)
{
	return c->shm;
}

/* ---- next hops ------------------------------------------------------------- */

/* Lets another thread finish a few stores.  (Not sched_yield(): src/sched.h
 * shadows <sched.h> under -Isrc.) */
static void counters_relax(void)
{
	struct timespec ts = { 0, 1000 };

	nanosleep(&ts, NULL);
}

static uint32_t hop_hash(const char *key, size_t len)
{
	uint32_t h = 2166136261u;       /* FNV-1a */

	for (size_t i = 0; i < len; i++)
		h = (h ^ (unsigned char)key[i]) * 16777619u;
	return h;
}

/* Waits out a claim in progress (a memcpy on another thread) and returns
 * the slot's settled state. */
static uint32_t hop_settle(struct counters_hop *h)
{
	uint32_t st;

	while ((st = __atomic_load_n(&h->state, __ATOMIC_ACQUIRE)) == COUNTERS_HOP_CLAIMING)
		counters_relax();
	return st;
}

static bool hop_key_is(const struct counters_hop *h, const char *key, size_t len)
{
	return memcmp(h->key, key, len) == 0 && h->key[len] == '\0';
}

static struct counters_hop *hop_other(struct counters *c)
{
	struct counters_shm *s = c->shm;

	if (__atomic_exchange_n(&s->hops_full, 1, __ATOMIC_RELAXED) == 0)
		evlog_emit(c->log, EV_COUNTERS_HOPS_FULL, EVF_I("slots", COUNTERS_HOPS - 1),
			   EVF_S("other", COUNTERS_HOP_OTHER));
	return &s->hops[COUNTERS_HOPS - 1];
}

struct counters_hop *counters_hop(struct counters *c, const char *key)
{
	const size_t n = COUNTERS_HOPS - 1;     /* the last slot is "other" */
	struct counters_hop *h;
	size_t len, i0;

	if (c == NULL || key == NULL || *key == '\0')
		return NULL;
	len = strnlen(key, COUNTERS_HOP_KEY_MAX - 1);
	i0 = hop_hash(key, len) % n;
	for (size_t k = 0; k < n; k++) {
		uint32_t expect = COUNTERS_HOP_FREE;

		h = &c->shm->hops[(i0 + k) % n];
		if (hop_settle(h) == COUNTERS_HOP_USED) {
			if (hop_key_is(h, key, len))
				goto found;
			continue;
		}
		if (__atomic_compare_exchange_n(&h->state, &expect, COUNTERS_HOP_CLAIMING, false,
						__ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
			memcpy(h->key, key, len);
			h->key[len] = '\0';
			__atomic_store_n(&h->state, COUNTERS_HOP_USED, __ATOMIC_RELEASE);
			goto found;
		}
		/* Lost the race for this slot: look at what the winner put there. */
		if (hop_settle(h) == COUNTERS_HOP_USED && hop_key_is(h, key, len))
			goto found;
	}
	h = hop_other(c);
found:
	__atomic_store_n(&h->f[HOP_LAST_USED], (int64_t)time(NULL), __ATOMIC_RELAXED);
	return h;
}

void counters_hop_add(struct counters_hop *h, enum counters_hop_field field, int64_t n)
{
	if (h != NULL && (unsigned)field < COUNTERS_HOP_N)
		__atomic_add_fetch(&h->f[field], n, __ATOMIC_RELAXED);
}

void counters_hop_set(struct counters_hop *h, enum counters_hop_field field, int64_t v)
{
	if (h != NULL && (unsigned)field < COUNTERS_HOP_N)
		__atomic_store_n(&h->f[field], v, __ATOMIC_RELAXED);
}

void counters_hop_set_next_retry(struct counters_hop *h, int64_t t)
{
	counters_hop_set(h, HOP_NEXT_RETRY, t);
}

void counters_hop_queue(struct counters_hop *h, int sign, uint64_t bytes)
{
	int64_t s = sign < 0 ? -1 : 1;

	counters_hop_add(h, HOP_QUEUE_MSGS, s);
	counters_hop_add(h, HOP_QUEUE_BYTES, s * (int64_t)bytes);
}

void counters_hop_set_failure(struct counters_hop *h, const char *reason, int64_t t)
{
	uint32_t seq;
	size_t i;

	if (h == NULL)
		return;
	/* Take the writer side: even -> odd.  Only writers of a reason meet here. */
	for (;;) {
		seq = __atomic_load_n(&h->reason_seq, __ATOMIC_RELAXED);
		if ((seq & 1) == 0 &&
		    __atomic_compare_exchange_n(&h->reason_seq, &seq, seq + 1, false,
						__ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
			break;
		counters_relax();
	}
	__atomic_thread_fence(__ATOMIC_RELEASE);
	for (i = 0; reason != NULL && reason[i] && i < COUNTERS_REASON_MAX - 1; i++) {
		unsigned char ch = (unsigned char)reason[i];

		__atomic_store_n(&h->reason[i], (char)(ch < 0x20 || ch == 0x7f ? '?' : ch),
				 __ATOMIC_RELAXED);
	}
	__atomic_store_n(&h->reason[i], '\0', __ATOMIC_RELAXED);
	__atomic_store_n(&h->f[HOP_LAST_FAILURE], t, __ATOMIC_RELAXED);
	__atomic_store_n(&h->reason_seq, seq + 2, __ATOMIC_RELEASE);
}

static void add_global(struct counters *c, enum counters_id id, int64_t n)
{
	if (c != NULL && n != 0)
		counters_add(c->shm, id, n);
}

void counters_conn_out_open(struct counters *c, struct counters_hop *h)
{
	add_global(c, COUNTER_CONN_OUT_CURRENT, 1);
	add_global(c, COUNTER_CONN_OUT_TOTAL, 1);
	counters_hop_add(h, HOP_CONN_ACTIVE, 1);
	counters_hop_add(h, HOP_CONN_TOTAL, 1);
}

void counters_conn_out_close(struct counters *c, struct counters_hop *h)
{
	add_global(c, COUNTER_CONN_OUT_CURRENT, -1);
	counters_hop_add(h, HOP_CONN_ACTIVE, -1);
}

void counters_conn_out_failed(struct counters *c, struct counters_hop *h,
			      const char *reason, int64_t now)
{
	add_global(c, COUNTER_CONN_OUT_TOTAL, 1);
	add_global(c, COUNTER_CONN_OUT_FAILED, 1);
	counters_hop_add(h, HOP_CONN_TOTAL, 1);
	counters_hop_add(h, HOP_CONN_FAILED, 1);
	counters_hop_set_failure(h, reason, now);
}

void counters_out_delivered(struct counters *c, struct counters_hop *h,
			    unsigned rcpts, uint64_t bytes)
{
	add_global(c, COUNTER_MSG_DELIVERED, 1);
	add_global(c, COUNTER_RCPT_DELIVERED, rcpts);
	add_global(c, COUNTER_BYTES_OUT, (int64_t)bytes);
	counters_hop_add(h, HOP_MSG_OUT, 1);
	counters_hop_add(h, HOP_BYTES_OUT, (int64_t)bytes);
}

void counters_out_deferred(struct counters *c, struct counters_hop *h,
			   unsigned rcpts, const char *reason, int64_t now)
{
	add_global(c, COUNTER_MSG_DEFERRED, 1);
	add_global(c, COUNTER_RCPT_DEFERRED, rcpts);
	counters_hop_add(h, HOP_MSG_DEFERRED, 1);
	counters_hop_set_failure(h, reason, now);
}

void counters_out_bounced(struct counters *c, struct counters_hop *h,
			  unsigned rcpts, const char *reason, int64_t now)
{
	add_global(c, COUNTER_MSG_BOUNCED, 1);
	add_global(c, COUNTER_RCPT_BOUNCED, rcpts);
	counters_hop_add(h, HOP_MSG_BOUNCED, 1);
	counters_hop_set_failure(h, reason, now);
}

void counters_out_tls(struct counters_hop *h, bool ok)
{
	counters_hop_add(h, ok ? HOP_TLS_SESSIONS : HOP_TLS_FAILURES, 1);
}

/* ---- readers --------------------------------------------------------------- */

void counters_hop_reason(const struct counters_hop *h, char *buf, size_t size)
{
	char tmp[COUNTERS_REASON_MAX];

	if (size == 0)
		return;
	/* Retry a few times while a writer is in the middle; a writer stopped
	 * there (SIGSTOP) leaves us the best effort, still terminated. */
	for (int tries = 0; tries < 100; tries++) {
		uint32_t s1 = __atomic_load_n(&h->reason_seq, __ATOMIC_ACQUIRE), s2;

		for (size_t i = 0; i < sizeof tmp; i++)
			tmp[i] = __atomic_load_n(&h->reason[i], __ATOMIC_RELAXED);
		__atomic_thread_fence(__ATOMIC_ACQUIRE);
		s2 = __atomic_load_n(&h->reason_seq, __ATOMIC_RELAXED);
		if (s1 == s2 && (s1 & 1) == 0)
			break;
		counters_relax();
	}
	tmp[sizeof tmp - 1] = '\0';
	snprintf(buf, size, "%s", tmp);
}

void counters_snapshot(const struct counters_shm *live, struct counters_shm *copy_r)
{
	copy_r->magic = __atomic_load_n(&live->magic, __ATOMIC_ACQUIRE);
	copy_r->layout = live->layout;
	copy_r->n_counters = live->n_counters;
	copy_r->pid = live->pid;
	copy_r->started = live->started;
	copy_r->n_hops = live->n_hops;
	copy_r->n_hop_fields = live->n_hop_fields;
	copy_r->hops_full = __atomic_load_n(&live->hops_full, __ATOMIC_RELAXED);
	copy_r->reserved = 0;
	for (size_t i = 0; i < COUNTERS_N; i++)
		copy_r->v[i] = __atomic_load_n(&live->v[i], __ATOMIC_RELAXED);
	for (size_t i = 0; i < COUNTERS_HOPS; i++) {
		const struct counters_hop *h = &live->hops[i];
		struct counters_hop *o = &copy_r->hops[i];

		memset(o, 0, sizeof *o);
		o->state = __atomic_load_n(&h->state, __ATOMIC_ACQUIRE);
		if (o->state != COUNTERS_HOP_USED) {
			o->state = COUNTERS_HOP_FREE;
			continue;
		}
		memcpy(o->key, h->key, sizeof o->key);
		o->key[sizeof o->key - 1] = '\0';
		for (size_t f = 0; f < COUNTERS_HOP_N; f++)
			o->f[f] = __atomic_load_n(&h->f[f], __ATOMIC_RELAXED);
		counters_hop_reason(h, o->reason, sizeof o->reason);
	}
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

/* Checks the header of a mapped object of `size` bytes. */
static int attach_check(const char *name, const struct counters_shm *p, size_t size,
			char *err, size_t errlen)
{
	uint32_t magic, layout;

	if (size < offsetof(struct counters_shm, v)) {
		snprintf(err, errlen, "%s: %zu bytes, not a carrier counters block", name, size);
		return COUNTERS_ATTACH_LAYOUT;
	}
	magic = __atomic_load_n(&p->magic, __ATOMIC_ACQUIRE);
	layout = p->layout;
	if (magic != COUNTERS_MAGIC) {
		snprintf(err, errlen, "%s: not a carrier counters block (or not initialised yet)", name);
		return COUNTERS_ATTACH_LAYOUT;
	}
	if (layout != COUNTERS_LAYOUT || size < sizeof *p || p->n_counters != COUNTERS_N ||
	    p->n_hops != COUNTERS_HOPS || p->n_hop_fields != COUNTERS_HOP_N) {
		snprintf(err, errlen,
			 "%s: counters layout %u, this carrier reads layout %d "
			 "(carrier and carrierd are different versions)",
			 name, layout, COUNTERS_LAYOUT);
		return COUNTERS_ATTACH_LAYOUT;
	}
	return COUNTERS_ATTACH_OK;
}

int counters_attach(const char *name, struct counters_shm *copy_r, char *err, size_t errlen)
{
	int fd = shm_open(name, O_RDONLY, 0);
	struct stat st;
	size_t size;
	void *p;
	int rc;

	if (fd < 0) {
		rc = errno == ENOENT ? COUNTERS_ATTACH_MISSING : COUNTERS_ATTACH_FAILED;
		snprintf(err, errlen, "shm_open %s: %s", name, strerror(errno));
		return rc;
	}
	if (fstat(fd, &st) < 0) {
		snprintf(err, errlen, "fstat %s: %s", name, strerror(errno));
		close(fd);
		return COUNTERS_ATTACH_FAILED;
	}
	size = (size_t)st.st_size;
	if (size == 0) {
		close(fd);
		snprintf(err, errlen, "%s: empty, not a carrier counters block", name);
		return COUNTERS_ATTACH_LAYOUT;
	}
	p = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
	close(fd);
	if (p == MAP_FAILED) {
		snprintf(err, errlen, "mmap %s: %s", name, strerror(errno));
		return COUNTERS_ATTACH_FAILED;
	}
	rc = attach_check(name, p, size, err, errlen);
	if (rc == COUNTERS_ATTACH_OK)
		counters_snapshot(p, copy_r);
	munmap(p, size);
	return rc;
}
