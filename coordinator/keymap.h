/* A hash map from 64-bit subject keys (FNV-1a of the subject id,
 * store/subjects.h) to 64-bit values, for the segment builder's per-shard
 * index (key -> segment holding the live row) and buffers (key -> slot).
 *
 * Open addressing with linear probing and backward-shift deletion, so
 * deletes leave no tombstone slots and lookups stay short under churn; the
 * table doubles at 70% load. Every key value is allowed (occupancy is a
 * separate byte array). Thread: not synchronised; one owner. */
#ifndef BM_COORD_KEYMAP_H
#define BM_COORD_KEYMAP_H

#include <stddef.h>
#include <stdint.h>

struct bm_keymap;

/* An empty map; NULL on ENOMEM. Free with bm_keymap_free (accepts NULL). */
struct bm_keymap *bm_keymap_new(size_t expected);
void bm_keymap_free(struct bm_keymap *m);

/* Insert or replace. BM_OK or BM_ENOMEM (map unchanged). */
int bm_keymap_put(struct bm_keymap *m, uint64_t key, uint64_t val);

/* 1 and *val set when present, else 0. 'val' may be NULL. */
int bm_keymap_get(const struct bm_keymap *m, uint64_t key, uint64_t *val);

/* Remove; 1 when it was present, else 0. */
int bm_keymap_del(struct bm_keymap *m, uint64_t key);

size_t bm_keymap_count(const struct bm_keymap *m);

/* Remove everything, keeping the allocation. */
void bm_keymap_clear(struct bm_keymap *m);

#endif /* BM_COORD_KEYMAP_H */
