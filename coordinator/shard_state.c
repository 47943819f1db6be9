/* The shard's in-memory state (shard_int.h): the change buffer, the
 * tombstone and name sets, segment statistics and the subject index.
 * Pure bookkeeping: no Redis, no Kafka. */
#define _POSIX_C_SOURCE 200809L
#include "shard_int.h"

#include <stdlib.h>
#include <string.h>
#include "common/clock.h"
#include "keymap.h"
#include "obs/metrics.h"

int gs_sbuf_init(struct sbuf *b, size_t tbytes)
{
    memset(b, 0, sizeof *b);
    b->tbytes = tbytes;
    b->idx = bm_keymap_new(1024);
    return b->idx != NULL ? BM_OK : BM_ENOMEM;
}

void gs_sbuf_clear(struct sbuf *b)
{
    b->n = 0;
    b->est_bytes = 0;
    b->first_ms = 0;
    b->last_ms = 0;
    b->last_offset = -1;
    if (b->idx != NULL)
        bm_keymap_clear(b->idx);
}

void gs_sbuf_free(struct sbuf *b)
{
    free(b->e);
    free(b->rows);
    bm_keymap_free(b->idx);
    memset(b, 0, sizeof *b);
}

int64_t gs_row_cost(size_t stride, int int8, size_t idlen)
{
    return (int64_t)(stride + (int8 ? 4 : 0) + 2 + idlen);
}

int gs_tomb_add(struct tombset *t, uint64_t key, const char *id, size_t len)
{
    if (bm_keymap_get(t->idx, key, NULL))
        return BM_OK;
    if (t->n == t->cap) {
        size_t nc = t->cap ? t->cap * 2 : 64;
        char **s = realloc(t->s, nc * sizeof *s);
        if (s == NULL)
            return BM_ENOMEM;
        t->s = s;
        uint64_t *k = realloc(t->keys, nc * sizeof *k);
        if (k == NULL)
            return BM_ENOMEM;
        t->keys = k;
        t->cap = nc;
    }
    char *c = malloc(len + 1);
    if (c == NULL || bm_keymap_put(t->idx, key, t->n) != BM_OK) {
        free(c);
        return BM_ENOMEM;
    }
    memcpy(c, id, len);
    c[len] = '\0';
    t->s[t->n] = c;
    t->keys[t->n] = key;
    t->n++;
    return BM_OK;
}

void gs_tomb_del(struct tombset *t, uint64_t key)
{
    uint64_t slot;
    if (!bm_keymap_get(t->idx, key, &slot))
        return;
    bm_keymap_del(t->idx, key);
    free(t->s[slot]);
    t->n--;
    if (slot != t->n) {
        t->s[slot] = t->s[t->n];
        t->keys[slot] = t->keys[t->n];
        bm_keymap_put(t->idx, t->keys[slot], slot);
    }
}

void gs_tomb_clear(struct tombset *t)
{
    for (size_t i = 0; i < t->n; i++)
        free(t->s[i]);
    t->n = 0;
    if (t->idx != NULL)
        bm_keymap_clear(t->idx);
}

struct segstat *gs_segstat_find(struct bm_gshard *sh, uint64_t id)
{
    for (size_t i = 0; i < sh->nsegs; i++)
        if (sh->segs[i].id == id)
            return &sh->segs[i];
    return NULL;
}

int gs_segstat_add(struct bm_gshard *sh, uint64_t id, uint32_t rows, uint64_t bytes)
{
    if (sh->nsegs == sh->capsegs) {
        size_t nc = sh->capsegs ? sh->capsegs * 2 : 16;
        struct segstat *s = realloc(sh->segs, nc * sizeof *s);
        if (s == NULL)
            return BM_ENOMEM;
        sh->segs = s;
        sh->capsegs = nc;
    }
    sh->segs[sh->nsegs++] = (struct segstat){id, rows, 0, bytes};
    return BM_OK;
}

void gs_state_reset(struct bm_gshard *sh)
{
    bm_keymap_clear(sh->index);
    sh->nsegs = 0;
    gs_tomb_clear(&sh->tombs);
    gs_tomb_clear(&sh->names);
}

/* The subject id indexed under 'key' (its length in *len), or NULL. */
const char *gs_name_get(const struct bm_gshard *sh, uint64_t key, size_t *len)
{
    uint64_t slot;
    if (!bm_keymap_get(sh->names.idx, key, &slot))
        return NULL;
    *len = strlen(sh->names.s[slot]);
    return sh->names.s[slot];
}

/* Record 'id' as the subject indexed under 'key' (replacing a deleted
 * subject's id, the only way a key changes hands). */
int gs_name_set(struct bm_gshard *sh, uint64_t key, const char *id, size_t len)
{
    size_t have = 0;
    const char *cur = gs_name_get(sh, key, &have);
    if (cur != NULL && have == len && memcmp(cur, id, len) == 0)
        return BM_OK;
    gs_tomb_del(&sh->names, key);
    return gs_tomb_add(&sh->names, key, id, len);
}

void gs_update_gauges(struct bm_gshard *sh)
{
    bm_gauge_set(sh->g_version, (double)sh->man->version);
    bm_gauge_set(sh->g_subjects, (double)bm_keymap_count(sh->index));
    bm_gauge_set(sh->g_segments, (double)sh->man->nsegments);
    bm_gauge_set(sh->g_tombstones, (double)sh->man->ntombstones);
}

/* Make subject 'sid' ('len' bytes)'s row in segment 'id' the live row of
 * 'key'. BM_OK or BM_ENOMEM. */
int gs_index_upsert(struct bm_gshard *sh, uint64_t key, uint64_t id, const char *sid,
                    size_t len)
{
    uint64_t old;
    if (bm_keymap_get(sh->index, key, &old)) {
        struct segstat *s = gs_segstat_find(sh, old);
        if (s != NULL)
            s->dead++;
    }
    if (bm_keymap_put(sh->index, key, id) != BM_OK)
        return BM_ENOMEM;
    gs_tomb_del(&sh->tombs, key);
    return gs_name_set(sh, key, sid, len);
}

int gs_index_delete(struct bm_gshard *sh, uint64_t key, const char *id, size_t len)
{
    uint64_t old;
    if (!bm_keymap_get(sh->index, key, &old))
        return BM_OK; /* no live row: nothing to hide */
    struct segstat *s = gs_segstat_find(sh, old);
    if (s != NULL)
        s->dead++;
    bm_keymap_del(sh->index, key);
    gs_tomb_del(&sh->names, key);
    return gs_tomb_add(&sh->tombs, key, id, len);
}
