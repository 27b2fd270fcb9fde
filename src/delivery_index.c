/*
 * delivery_index: the runner's index of pending messages (see
 * delivery_int.h): a set of known qids (open addressing, backward-shift
 * deletion) and a min-heap of (next attempt, qid).  Loop thread only.
 */
#include "delivery_int.h"

#include <stdlib.h>
#include <string.h>

/* ---- the index: a qid set and a min-heap ---------------------------------- */

static uint64_t qhash(const char *qid)
{
	uint64_t h = 1469598103934665603ull;

	for (size_t i = 0; i < SPOOL_QID_LEN; i++)
		h = (h ^ (unsigned char)qid[i]) * 1099511628211ull;
	return h;
}

bool delivery_qid_ok(const char *qid)
{
	return qid != NULL && strnlen(qid, SPOOL_QID_SIZE) == SPOOL_QID_LEN;
}

/* Index of qid's slot, or of the empty slot where it would go. */
static size_t qset_find(const struct qset *s, const char *qid)
{
	size_t i = qhash(qid) & (s->cap - 1);

	while (s->v[i].qid[0] != '\0' && memcmp(s->v[i].qid, qid, SPOOL_QID_LEN) != 0)
		i = (i + 1) & (s->cap - 1);
	return i;
}

static int qset_grow(struct qset *s)
{
	size_t cap = s->cap ? s->cap * 2 : 1024;
	struct qslot *old = s->v, *v = calloc(cap, sizeof *v);
	size_t oldcap = s->cap;

	if (v == NULL)
		return -1;
	s->v = v;
	s->cap = cap;
	for (size_t i = 0; i < oldcap; i++)
		if (old[i].qid[0] != '\0')
			s->v[qset_find(s, old[i].qid)] = old[i];
	free(old);
	return 0;
}

struct qslot *delivery_qset_find(struct qset *s, const char *qid)
{
	size_t i;

	if (s->cap == 0)
		return NULL;
	i = qset_find(s, qid);
	return s->v[i].qid[0] != '\0' ? &s->v[i] : NULL;
}

struct qslot *delivery_qset_add(struct qset *s, const char *qid, bool *added_r)
{
	size_t i;

	*added_r = false;
	if ((s->n + 1) * 10 > s->cap * 7 && qset_grow(s) < 0)
		return NULL;
	i = qset_find(s, qid);
	if (s->v[i].qid[0] != '\0')
		return &s->v[i];
	memset(&s->v[i], 0, sizeof s->v[i]);
	memcpy(s->v[i].qid, qid, SPOOL_QID_LEN);
	s->n++;
	*added_r = true;
	return &s->v[i];
}

/* Linear-probing deletion with backward shift (no tombstones). */
void delivery_qset_del(struct qset *s, const char *qid)
{
	size_t mask = s->cap - 1, i, j;

	if (s->cap == 0)
		return;
	i = qset_find(s, qid);
	if (s->v[i].qid[0] == '\0')
		return;
	s->v[i].qid[0] = '\0';
	s->n--;
	for (j = (i + 1) & mask; s->v[j].qid[0] != '\0'; j = (j + 1) & mask) {
		size_t home = qhash(s->v[j].qid) & mask;

		/* Move j into the hole i unless its home lies in (i, j]. */
		if ((j > i && (home <= i || home > j)) || (j < i && home <= i && home > j)) {
			s->v[i] = s->v[j];
			s->v[j].qid[0] = '\0';
			i = j;
		}
	}
}

static void heap_swap(struct heap *h, size_t a, size_t b)
{
	struct hent t = h->v[a];

	h->v[a] = h->v[b];
	h->v[b] = t;
}

int delivery_heap_push(struct heap *h, const char *qid, int64_t due)
{
	size_t i;

	if (h->n == h->cap) {
		size_t cap = h->cap ? h->cap * 2 : 1024;
		struct hent *v = realloc(h->v, cap * sizeof *v);

		if (v == NULL)
			return -1;
		h->v = v;
		h->cap = cap;
	}
	i = h->n++;
	h->v[i].due = due;
	memcpy(h->v[i].qid, qid, SPOOL_QID_SIZE);
	h->v[i].qid[SPOOL_QID_LEN] = '\0';
	while (i > 0 && h->v[(i - 1) / 2].due > h->v[i].due) {
		heap_swap(h, i, (i - 1) / 2);
		i = (i - 1) / 2;
	}
	return 0;
}

void delivery_heap_pop(struct heap *h, struct hent *top_r)
{
	size_t i = 0;

	*top_r = h->v[0];
	h->v[0] = h->v[--h->n];
	for (;;) {
		size_t l = 2 * i + 1, r = l + 1, m = i;

		if (l < h->n && h->v[l].due < h->v[m].due)
			m = l;
		if (r < h->n && h->v[r].due < h->v[m].due)
			m = r;
		if (m == i)
			break;
		heap_swap(h, i, m);
		i = m;
	}
}

