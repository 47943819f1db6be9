/* A bounded top-k selection of (id, score) candidates.
 *
 * Order: higher score first; equal scores put the lower id first. NaN scores
 * are never admitted. The heap keeps the current worst candidate at the root
 * so a candidate that cannot enter is rejected with one comparison.
 * Thread: a heap belongs to one thread at a time; no locking inside. */
#ifndef BM_TOPK_H
#define BM_TOPK_H

#include <stddef.h>
#include <stdint.h>

#include "match/gallery.h"

struct bm_topk {
    struct bm_candidate *items;  /* borrowed storage of 'k' slots */
    size_t k;                    /* capacity */
    size_t n;                    /* used */
};

/* Nonzero when a ranks before b (better). */
static inline int bm_topk_better(float sa, uint64_t ia, float sb, uint64_t ib)
{
    return sa > sb || (sa == sb && ia < ib);
}

/* Initialise over caller-owned storage of k slots (k may be 0). */
void bm_topk_init(struct bm_topk *h, struct bm_candidate *storage, size_t k);

/* Offer one candidate; kept if there is room or it beats the worst. */
void bm_topk_push(struct bm_topk *h, uint64_t id, float score);

/* The score a candidate must beat (or tie with a lower id) to enter:
 * -INFINITY while the heap is not full. */
static inline float bm_topk_floor(const struct bm_topk *h)
{
    return h->n < h->k ? -__builtin_inff() : h->items[0].score;
}

/* Sort the kept candidates best first into out[0..k) and pad the rest with
 * {BM_NO_ID, -INFINITY}. The heap is left empty. 'out' may be h->items. */
void bm_topk_finish(struct bm_topk *h, struct bm_candidate *out);

/* Merge 'nlists' lists of 'k' candidates each (best first, padded) into the
 * best k, best first, padded. Duplicated ids are not removed. */
void bm_topk_merge(const struct bm_candidate *const *lists, size_t nlists, size_t k,
                   struct bm_candidate *out);

#endif /* BM_TOPK_H */
