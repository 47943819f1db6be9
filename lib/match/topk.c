/* Bounded top-k heap and k-way merge of sorted candidate lists.
 *
 * Invariant: items[0..n) is a binary heap whose root is the worst kept
 * candidate under bm_topk_better(), so the kept set is always the best n
 * offered so far. */
#include "match/topk.h"

#include "common/assert.h"

#include <math.h>
#include <stdlib.h>

/* Heap order: the parent is worse than (or equal to) its children. */
static int worse(const struct bm_candidate *a, const struct bm_candidate *b)
{
    return bm_topk_better(b->score, b->id, a->score, a->id);
}

static void sift_down(struct bm_candidate *v, size_t n, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && worse(&v[l], &v[m]))
            m = l;
        if (r < n && worse(&v[r], &v[m]))
            m = r;
        if (m == i)
            return;
        struct bm_candidate t = v[i];
        v[i] = v[m];
        v[m] = t;
        i = m;
    }
}

static void sift_up(struct bm_candidate *v, size_t i)
{
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!worse(&v[i], &v[parent]))
            return;
        struct bm_candidate t = v[i];
        v[i] = v[parent];
        v[parent] = t;
        i = parent;
    }
}

void bm_topk_init(struct bm_topk *h, struct bm_candidate *storage, size_t k)
{
    BM_ASSERT(h != NULL && (storage != NULL || k == 0));
    h->items = storage;
    h->k = k;
    h->n = 0;
}

void bm_topk_push(struct bm_topk *h, uint64_t id, float score)
{
    BM_ASSERT(h->n <= h->k);
    if (h->k == 0 || isnan(score))
        return;
    if (h->n < h->k) {
        h->items[h->n].id = id;
        h->items[h->n].score = score;
        sift_up(h->items, h->n);
        h->n++;
        return;
    }
    if (!bm_topk_better(score, id, h->items[0].score, h->items[0].id))
        return;
    h->items[0].id = id;
    h->items[0].score = score;
    sift_down(h->items, h->n, 0);
}

void bm_topk_finish(struct bm_topk *h, struct bm_candidate *out)
{
    /* Heap-sort in place: repeatedly move the worst to the end. */
    size_t n = h->n;
    for (size_t end = n; end > 1; end--) {
        struct bm_candidate t = h->items[0];
        h->items[0] = h->items[end - 1];
        h->items[end - 1] = t;
        sift_down(h->items, end - 1, 0);
    }
    for (size_t i = 0; i < n; i++)
        out[i] = h->items[i];
    for (size_t i = n; i < h->k; i++) {
        out[i].id = BM_NO_ID;
        out[i].score = -INFINITY;
    }
    h->n = 0;
}

void bm_topk_merge(const struct bm_candidate *const *lists, size_t nlists, size_t k,
                   struct bm_candidate *out)
{
    /* Lists are short (k) and few (threads), so a linear pick of the best
     * head per output slot is simplest and fast enough. 'pos' is tiny. */
    size_t pos_small[64];
    size_t *pos = nlists <= 64 ? pos_small : calloc(nlists, sizeof *pos);
    if (pos == NULL) {
        /* Out of memory on a pathological list count: fall back to the
         * first list only, which is still a valid (if partial) answer. */
        for (size_t i = 0; i < k; i++)
            out[i] = lists[0][i];
        return;
    }
    for (size_t j = 0; j < nlists; j++)
        pos[j] = 0;
    for (size_t i = 0; i < k; i++) {
        size_t best = SIZE_MAX;
        for (size_t j = 0; j < nlists; j++) {
            if (pos[j] >= k || lists[j][pos[j]].id == BM_NO_ID)
                continue;
            const struct bm_candidate *c = &lists[j][pos[j]];
            if (best == SIZE_MAX ||
                bm_topk_better(c->score, c->id, lists[best][pos[best]].score,
                               lists[best][pos[best]].id))
                best = j;
        }
        if (best == SIZE_MAX) {
            out[i].id = BM_NO_ID;
            out[i].score = -INFINITY;
        } else {
            out[i] = lists[best][pos[best]++];
        }
    }
    if (pos != pos_small)
        free(pos);
}
