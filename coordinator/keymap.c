/* Open-addressing u64 -> u64 map (see keymap.h). Invariant: every present
 * key sits in the probe run starting at its home slot with no empty slot in
 * between; deletion shifts later members of the run back to keep it so. */
#include "keymap.h"

#include <stdlib.h>
#include <string.h>

#include "common/err.h"

struct bm_keymap {
    uint64_t *keys;
    uint64_t *vals;
    uint8_t *used;
    size_t cap;     /* power of two */
    size_t n;
};

static size_t home(uint64_t key, size_t cap)
{
    /* FNV keys are already well mixed in the low bits, but a finaliser
     * costs nothing and protects against callers with structured keys. */
    key ^= key >> 33;
    key *= 0xff51afd7ed558ccdULL;
    key ^= key >> 33;
    return (size_t)key & (cap - 1);
}

static int alloc_arrays(struct bm_keymap *m, size_t cap)
{
    m->keys = malloc(cap * sizeof *m->keys);
    m->vals = malloc(cap * sizeof *m->vals);
    m->used = calloc(cap, 1);
    if (m->keys == NULL || m->vals == NULL || m->used == NULL) {
        free(m->keys);
        free(m->vals);
        free(m->used);
        return BM_ENOMEM;
    }
    m->cap = cap;
    return BM_OK;
}

struct bm_keymap *bm_keymap_new(size_t expected)
{
    struct bm_keymap *m = calloc(1, sizeof *m);
    if (m == NULL)
        return NULL;
    size_t cap = 16;
    while (cap * 7 / 10 < expected)
        cap *= 2;
    if (alloc_arrays(m, cap) != BM_OK) {
        free(m);
        return NULL;
    }
    return m;
}

void bm_keymap_free(struct bm_keymap *m)
{
    if (m == NULL)
        return;
    free(m->keys);
    free(m->vals);
    free(m->used);
    free(m);
}

static int grow(struct bm_keymap *m)
{
    struct bm_keymap old = *m;
    if (alloc_arrays(m, old.cap * 2) != BM_OK) {
        *m = old;
        return BM_ENOMEM;
    }
    m->n = 0;
    for (size_t i = 0; i < old.cap; i++) {
        if (!old.used[i])
            continue;
        size_t j = home(old.keys[i], m->cap);
        while (m->used[j])
            j = (j + 1) & (m->cap - 1);
        m->used[j] = 1;
        m->keys[j] = old.keys[i];
        m->vals[j] = old.vals[i];
        m->n++;
    }
    free(old.keys);
    free(old.vals);
    free(old.used);
    return BM_OK;
}

int bm_keymap_put(struct bm_keymap *m, uint64_t key, uint64_t val)
{
    if ((m->n + 1) * 10 > m->cap * 7 && grow(m) != BM_OK)
        return BM_ENOMEM;
    size_t j = home(key, m->cap);
    while (m->used[j]) {
        if (m->keys[j] == key) {
            m->vals[j] = val;
            return BM_OK;
        }
        j = (j + 1) & (m->cap - 1);
    }
    m->used[j] = 1;
    m->keys[j] = key;
    m->vals[j] = val;
    m->n++;
    return BM_OK;
}

static int find(const struct bm_keymap *m, uint64_t key, size_t *slot)
{
    size_t j = home(key, m->cap);
    while (m->used[j]) {
        if (m->keys[j] == key) {
            *slot = j;
            return 1;
        }
        j = (j + 1) & (m->cap - 1);
    }
    return 0;
}

int bm_keymap_get(const struct bm_keymap *m, uint64_t key, uint64_t *val)
{
    size_t j;
    if (!find(m, key, &j))
        return 0;
    if (val != NULL)
        *val = m->vals[j];
    return 1;
}

int bm_keymap_del(struct bm_keymap *m, uint64_t key)
{
    size_t i;
    if (!find(m, key, &i))
        return 0;
    size_t mask = m->cap - 1;
    size_t j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (!m->used[j])
            break;
        size_t h = home(m->keys[j], m->cap);
        /* Move j back into the hole at i unless its home lies cyclically
         * in (i, j], where it must stay to remain reachable. */
        int stays = (i <= j) ? (i < h && h <= j) : (i < h || h <= j);
        if (stays)
            continue;
        m->keys[i] = m->keys[j];
        m->vals[i] = m->vals[j];
        i = j;
    }
    m->used[i] = 0;
    m->n--;
    return 1;
}

size_t bm_keymap_count(const struct bm_keymap *m)
{
    return m->n;
}

void bm_keymap_clear(struct bm_keymap *m)
{
    memset(m->used, 0, m->cap);
    m->n = 0;
}
