/* Open-addressing map from matcher key to subject id (see subjects.h).
 *
 * Memory is the point (a worker holds one table per loaded shard next to
 * the templates, and the goal is <= 1.1x the template bytes in all): a slot
 * is only a 4-byte arena offset (0 = empty; the arena's first byte is a
 * dummy so no record starts at 0), linear probing, load <= 0.8, so about
 * 5 bytes per subject plus the record. A record is one header byte, then
 * the id bytes: header = (length - 1) | EXPLICIT. The key is not stored,
 * because real callers always insert under bm_subjects_key(id): a probe
 * recomputes the key from the record (FNV-1a over the id bytes, a few
 * nanoseconds), paid on inserts while loading and on lookups, which are
 * rare (the ids of a top-k list), in exchange for 8 bytes per subject.
 * A record inserted with any
 * other key (bm_subjects_put_key from tests) has the EXPLICIT bit and its
 * 8-byte key right after the header. Nothing is ever removed: keys of
 * subjects that leave the shard only cost their bytes until the worker
 * rebuilds the table on a full load. The home slot comes from the high
 * bits of a Fibonacci multiply, because FNV-1a's low bits are weak for
 * sequential ids. */
#include "store/subjects.h"

#include <stdlib.h>
#include <string.h>

#define LOAD_NUM 4   /* grow when count + 1 > cap * 4 / 5 */
#define LOAD_DEN 5
#define EXPLICIT 0x80u    /* record header: an 8-byte key follows */
#define LEN_MASK 0x7fu    /* record header: length - 1 */

struct bm_subjects {
    uint32_t *offs;     /* slot arena offsets; 0 = empty */
    size_t cap;         /* slots, a power of two */
    unsigned bits;      /* log2(cap) */
    size_t count;       /* occupied slots */
    uint8_t *arena;     /* records (see above); arena[0] is a dummy */
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

/* The key a record is stored under. */
static uint64_t rec_key(const uint8_t *rec)
{
    size_t len = (size_t)(rec[0] & LEN_MASK) + 1;
    if (rec[0] & EXPLICIT) {
        uint64_t k;
        memcpy(&k, rec + 1, sizeof k);
        return k;
    }
    return bm_subjects_key((const char *)rec + 1, len);
}

static int rehash(struct bm_subjects *t, size_t want, char *err, size_t errlen)
{
    unsigned bits;
    size_t cap = slots_for(want, &bits);
    if (cap == 0)
        return bm_seterr(err, errlen, BM_ERANGE, "subject table: too many subjects");
    if (cap <= t->cap)
        return BM_OK;
    uint32_t *offs = calloc(cap, sizeof *offs);
    if (offs == NULL)
        return bm_seterr(err, errlen, BM_ENOMEM, "subject table: out of memory");
    for (size_t i = 0; i < t->cap; i++) {
        if (t->offs[i] == 0)
            continue;
        size_t j = home(rec_key(t->arena + t->offs[i]), bits);
        while (offs[j] != 0)
            j = (j + 1) & (cap - 1);
        offs[j] = t->offs[i];
    }
    free(t->offs);
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
    while (t->offs[j] != 0 && rec_key(t->arena + t->offs[j]) != key)
        j = (j + 1) & (t->cap - 1);
    return j;
}

/* The id bytes of a record and their length. */
static const uint8_t *rec_id(const uint8_t *rec, size_t *len)
{
    *len = (size_t)(rec[0] & LEN_MASK) + 1;
    return rec + 1 + ((rec[0] & EXPLICIT) ? sizeof(uint64_t) : 0);
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
        size_t have = 0;
        const uint8_t *got = rec_id(t->arena + t->offs[j], &have);
        if (have == len && memcmp(got, id, len) == 0)
            return BM_OK;
        return bm_seterr(err, errlen, BM_ECONFLICT,
                         "subject key collision: two subject ids hash to %016llx",
                         (unsigned long long)key);
    }
    int expl = key != bm_subjects_key(id, len);
    size_t rlen = 1 + (expl ? sizeof key : 0) + len;
    int rc = arena_reserve(t, rlen, 0, err, errlen);
    if (rc != BM_OK)
        return rc;
    if (t->count + 1 > t->cap / LOAD_DEN * LOAD_NUM) {
        rc = rehash(t, t->count + 1, err, errlen);
        if (rc != BM_OK)
            return rc;
        j = find(t, key);
    }
    uint32_t off = (uint32_t)t->used;
    uint8_t *rec = t->arena + off;
    rec[0] = (uint8_t)((len - 1) | (expl ? EXPLICIT : 0));
    if (expl)
        memcpy(rec + 1, &key, sizeof key);
    memcpy(rec + 1 + (expl ? sizeof key : 0), id, len);
    t->used += rlen;
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
    size_t n = 0;
    const uint8_t *id = rec_id(t->arena + t->offs[j], &n);
    if (len != NULL)
        *len = n;
    return (const char *)id;
}

size_t bm_subjects_count(const struct bm_subjects *t)
{
    return t->count;
}

size_t bm_subjects_memory(const struct bm_subjects *t)
{
    return sizeof *t + t->cap * sizeof *t->offs + t->acap;
}
