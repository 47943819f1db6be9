/* Open-addressing map from matcher key to subject id (see subjects.h).
 *
 * Slots are two parallel arrays, keys[] and offs[]; offs[i] == 0 marks an
 * empty slot, which is why the arena never hands out offset 0 (its first
 * byte is a dummy). Every key is a 64-bit hash already, but FNV-1a's low
 * bits are weak for sequential ids, so the home slot is taken from the high
 * bits of a Fibonacci multiply. Strings are stored as one length byte plus
 * the bytes. Nothing is ever removed: keys of subjects that leave the shard
 * only cost their bytes until the worker rebuilds the table on a full load. */
#include "store/subjects.h"

#include <stdlib.h>
#include <string.h>

#define LOAD_NUM 4   /* grow when count + 1 > cap * 4 / 5 */
#define LOAD_DEN 5

struct bm_subjects {
    uint64_t *keys;     /* slot keys, valid where offs[i] != 0 */
    uint32_t *offs;     /* slot arena offsets; 0 = empty */
    size_t cap;         /* slots, a power of two */
    unsigned bits;      /* log2(cap) */
    size_t count;       /* occupied slots */
    uint8_t *arena;     /* [len u8][bytes] records; arena[0] is a dummy */
    size_t used;        /* arena bytes in use, >= 1 */
    size_t acap;        /* arena capacity */
};

uint64_t bm_subjects_key(const char *id, size_t len)
{
    const unsigned char *p = (const unsigned char *)id;
    uint64_t h = UINT64_C(0xcbf29ce484222325);
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= UINT64_C(0x100000001b3);
    }
    return h;
}

static size_t home(uint64_t key, unsigned bits)
{
    return (size_t)((key * UINT64_C(0x9E3779B97F4A7C15)) >> (64 - bits));
}

/* Smallest power-of-two slot count that holds n subjects under the load
 * limit (at least 16). 0 when that would overflow. */
static size_t slots_for(size_t n, unsigned *bits)
{
    size_t cap = 16;
    unsigned b = 4;
    while (n > cap / LOAD_DEN * LOAD_NUM) {
        if (cap > SIZE_MAX / 4 || b >= 62)
            return 0;
        cap *= 2;
        b++;
    }
    *bits = b;
    return cap;
}

static int rehash(struct bm_subjects *t, size_t want, char *err, size_t errlen)
{
    unsigned bits;
    size_t cap = slots_for(want, &bits);
    if (cap == 0)
        return bm_seterr(err, errlen, BM_ERANGE, "subject table: too many subjects");
    if (cap <= t->cap)
        return BM_OK;
    uint64_t *keys = malloc(cap * sizeof *keys);
    uint32_t *offs = calloc(cap, sizeof *offs);
    if (keys == NULL || offs == NULL) {
        free(keys);
        free(offs);
        return bm_seterr(err, errlen, BM_ENOMEM, "subject table: out of memory");
    }
    for (size_t i = 0; i < t->cap; i++) {
        if (t->offs[i] == 0)
            continue;
        size_t j = home(t->keys[i], bits);
        while (offs[j] != 0)
            j = (j + 1) & (cap - 1);
        keys[j] = t->keys[i];
        offs[j] = t->offs[i];
    }
    free(t->keys);
    free(t->offs);
    t->keys = keys;
    t->offs = offs;
    t->cap = cap;
    t->bits = bits;
    return BM_OK;
}

static int arena_reserve(struct bm_subjects *t, size_t more, int exact, char *err,
                         size_t errlen)
{
    if (more <= t->acap - t->used)
        return BM_OK;
    /* Offsets are 32-bit: 4 GiB of ids is ~30 million subjects per shard,
     * far above any shard the design targets (a shard is a few GiB of
     * templates at most). */
    if (more > (size_t)UINT32_MAX - t->used)
        return bm_seterr(err, errlen, BM_ERANGE, "subject table: arena over 4 GiB");
    size_t need = t->used + more;
    size_t ncap = need;
    if (!exact) {
        /* Grow by 1.5x, not 2x: the arena dominates the table's overhead. */
        size_t grown = t->acap + t->acap / 2;
        if (grown > need)
            ncap = grown;
        if (ncap > (size_t)UINT32_MAX)
            ncap = (size_t)UINT32_MAX;
        if (ncap < 256)
            ncap = 256;
    }
    uint8_t *a = realloc(t->arena, ncap);
    if (a == NULL)
        return bm_seterr(err, errlen, BM_ENOMEM, "subject table: out of memory");
    t->arena = a;
    t->acap = ncap;
    return BM_OK;
}

struct bm_subjects *bm_subjects_new(size_t expected, char *err, size_t errlen)
{
    struct bm_subjects *t = calloc(1, sizeof *t);
    if (t == NULL) {
        bm_seterr(err, errlen, BM_ENOMEM, "subject table: out of memory");
        return NULL;
    }
    /* Offset 0 means "empty slot", so the arena starts with a dummy byte. */
    t->arena = malloc(256);
    t->acap = 256;
    t->used = 1;
    if (t->arena == NULL) {
        bm_subjects_free(t);
        bm_seterr(err, errlen, BM_ENOMEM, "subject table: out of memory");
        return NULL;
    }
    if (rehash(t, expected, err, errlen) != BM_OK) {
        bm_subjects_free(t);
        return NULL;
    }
    t->arena[0] = 0;
    return t;
}

void bm_subjects_free(struct bm_subjects *t)
{
    if (t == NULL)
        return;
    free(t->keys);
    free(t->offs);
    free(t->arena);
    free(t);
}

int bm_subjects_reserve(struct bm_subjects *t, size_t nsubjects, size_t nbytes,
                        char *err, size_t errlen)
{
    if (nsubjects > SIZE_MAX / 2 - t->count || nbytes > SIZE_MAX / 2 - nsubjects)
        return bm_seterr(err, errlen, BM_ERANGE, "subject table: reserve too large");
    /* Arena first: if the rehash then fails, only spare capacity changed. */
    int rc = arena_reserve(t, nbytes + nsubjects, 1, err, errlen);
    if (rc != BM_OK)
        return rc;
    return rehash(t, t->count + nsubjects, err, errlen);
}

/* Slot of 'key', or the empty slot where it would go. */
static size_t find(const struct bm_subjects *t, uint64_t key)
{
    size_t j = home(key, t->bits);
    while (t->offs[j] != 0 && t->keys[j] != key)
        j = (j + 1) & (t->cap - 1);
    return j;
}

int bm_subjects_put_key(struct bm_subjects *t, uint64_t key, const char *id,
                        size_t len, char *err, size_t errlen)
{
    if (id == NULL || len == 0 || len > BM_SUBJECT_ID_MAX)
        return bm_seterr(err, errlen, BM_EINVAL,
                         "subject id must be 1..%d bytes (got %zu)",
                         BM_SUBJECT_ID_MAX, len);
    size_t j = find(t, key);
    if (t->offs[j] != 0) {
        const uint8_t *rec = t->arena + t->offs[j];
        if (rec[0] == len && memcmp(rec + 1, id, len) == 0)
            return BM_OK;
        return bm_seterr(err, errlen, BM_ECONFLICT,
                         "subject key collision: two subject ids hash to %016llx",
                         (unsigned long long)key);
    }
    int rc = arena_reserve(t, len + 1, 0, err, errlen);
    if (rc != BM_OK)
        return rc;
    if (t->count + 1 > t->cap / LOAD_DEN * LOAD_NUM) {
        rc = rehash(t, t->count + 1, err, errlen);
        if (rc != BM_OK)
            return rc;
        j = find(t, key);
    }
    uint32_t off = (uint32_t)t->used;
    t->arena[off] = (uint8_t)len;
    memcpy(t->arena + off + 1, id, len);
    t->used += len + 1;
    t->keys[j] = key;
    t->offs[j] = off;
    t->count++;
    return BM_OK;
}

int bm_subjects_put(struct bm_subjects *t, const char *id, size_t len,
                    uint64_t *key, char *err, size_t errlen)
{
    uint64_t k = bm_subjects_key(id, id == NULL ? 0 : len);
    int rc = bm_subjects_put_key(t, k, id, len, err, errlen);
    if (rc == BM_OK && key != NULL)
        *key = k;
    return rc;
}

const char *bm_subjects_get(const struct bm_subjects *t, uint64_t key, size_t *len)
{
    size_t j = find(t, key);
    if (t->offs[j] == 0)
        return NULL;
    const uint8_t *rec = t->arena + t->offs[j];
    if (len != NULL)
        *len = rec[0];
    return (const char *)(rec + 1);
}

size_t bm_subjects_count(const struct bm_subjects *t)
{
    return t->count;
}

size_t bm_subjects_memory(const struct bm_subjects *t)
{
    return sizeof *t + t->cap * (sizeof *t->keys + sizeof *t->offs) + t->acap;
}
