/* The versioned in-memory gallery and its batched, multithreaded search.
 *
 * A version is an immutable snapshot: the list of segments (shared between
 * versions by refcount), per segment a shadow bitmap (rows superseded by a
 * later row with the same id) and a dead bitmap (shadow | tombstoned), and
 * an id -> (segment, row) index for O(1) verification, in two layers: a
 * base shared between versions and a small per-version delta, so an update
 * costs O(added) most of the time. bm_gallery_update() builds a new
 * version beside the current one and swaps the pointer under 'lock'; a
 * search pins the version it starts on (refs), so the old one is freed by
 * whoever drops the last reference: the writer or the last search.
 *
 * The id index stores 8-byte slots (segment position, row, hash bits) at
 * load <= 0.75 with any capacity (multiply-shift range reduction); ids are
 * compared through the segments' id arrays.
 *
 * Search: the rows of all segments are cut into tasks of contiguous rows;
 * the pool's threads take tasks; each task streams its rows one L2-sized
 * tile at a time and scores every probe of the batch against the tile with
 * the register-blocked batch kernels (prefetching the next tile meanwhile),
 * then passes the scores through a vector pre-filter against each probe's
 * threshold and heap floor, so only possible entrants reach that thread's
 * per-probe top-k heaps. Iris rows are scored in L1-sized blocks against
 * every probe's rotated variants. The heaps are merged at the end. For
 * int8 galleries the scan only generates candidates, which are re-scored
 * with the f32 probe before the final top-k (see "int8 search" below). */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "match/internal.h"
#include "match/pool.h"
#include "match/topk.h"

#define TASK_ROWS_DENSE 4096   /* rows per task: enough work to amortise a claim */
#define TASK_ROWS_IRIS 256
#define TILE_BYTES (96 * 1024) /* gallery bytes per tile: stays in L2 */
#define PROBE_BLOCK 64         /* probes scored per tile pass */
#define PROBE_GROUP 8          /* probes per kernel call (one prefetch slice each) */
#define TILE_MAX 1024          /* most rows in a tile */
#define IRIS_BLOCK 8           /* iris rows scored together (8 x 4 KiB: L1) */
#define IRIS_TILE 128          /* iris rows per probe pass (512 KiB: L2) */

/* An id index slot: 0 = empty, else row (bits 0-31), segment position + 1
 * (bits 32-51) and 12 bits of the id's hash (52-63). The id itself is not
 * stored: it is read from the segment's id array, and the hash bits skip
 * almost every foreign slot without that extra memory access. 8 bytes a
 * slot instead of 16 (id, segment, row). */
typedef uint64_t slot_t;
#define SLOT_SEG_BITS 20
#define MAX_SEGMENTS ((1u << SLOT_SEG_BITS) - 1) /* positions a slot can name */
#define TAG_BITS 12

/* An open-addressing (linear probing) hash index id -> (segment position,
 * row) of the id's latest row. The capacity is any number >= ids / 0.75
 * (+16), reached by multiply-shift range reduction of the hash, so the load
 * stays near 0.75 instead of between 0.25 and 0.5 with powers of two. A
 * base index is shared by refcount between versions and never changes once
 * built; it names segments by position, which stays valid in every version
 * sharing it (those drop no segment). */
struct index {
    atomic_uint refs;
    size_t cap;
    size_t n;                /* ids stored */
    slot_t *slots;
};

struct version {
    atomic_uint refs;        /* the gallery's own + one per running search */
    uint64_t number;
    size_t nseg;
    struct bm_segment **segs;
    uint64_t **shadow;       /* per segment: rows shadowed by a later row of the id */
    uint64_t **dead;         /* per segment: shadow | tombstoned, never reported */
    size_t rows;             /* all rows */
    size_t live;             /* rows not dead */
    size_t memory;
    /* id -> latest row: look in 'delta' (ids added since 'base' was built,
     * owned by this version) first, then in the shared 'base'. An update
     * that drops no segment copies the small delta and adds the new rows
     * to it (O(delta + added)); when the delta outgrows its budget (see
     * bm_gallery_update), or a segment is dropped (positions shift,
     * shadowed rows may revive), the base is rebuilt from every row. */
    struct index *base;
    struct index *delta;
};

struct bm_gallery {
    struct bm_spec spec;
    struct bm_pool *pool;    /* borrowed */
    pthread_mutex_t lock;    /* guards 'cur' swaps and pins */
    struct version *cur;
};

static uint64_t mix(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

__extension__ typedef unsigned __int128 u128;

static struct index *index_new(size_t ids)
{
    struct index *x = calloc(1, sizeof *x);
    if (x == NULL)
        return NULL;
    x->cap = ids + ids / 3 + 16;
    x->slots = calloc(x->cap, sizeof *x->slots);
    if (x->slots == NULL) {
        free(x);
        return NULL;
    }
    atomic_init(&x->refs, 1);
    return x;
}

static void index_unref(struct index *x)
{
    if (x != NULL && atomic_fetch_sub(&x->refs, 1) == 1) {
        free(x->slots);
        free(x);
    }
}

static slot_t slot_make(uint64_t h, uint32_t seg, uint32_t row)
{
    return (h >> (64 - TAG_BITS) << (64 - TAG_BITS)) | ((uint64_t)(seg + 1) << 32) | row;
}

static uint32_t slot_seg(slot_t s) { return (uint32_t)((s >> 32) & MAX_SEGMENTS) - 1; }
static uint32_t slot_row(slot_t s) { return (uint32_t)s; }

/* The slot of 'id' (its entry, or the empty slot where it would go); ids
 * are compared through segs[position]->ids[row]. */
static slot_t *slot_find(const struct index *x, struct bm_segment *const *segs, uint64_t id)
{
    uint64_t h = mix(id);
    uint64_t tag = h >> (64 - TAG_BITS);
    size_t i = (size_t)(((u128)h * x->cap) >> 64); /* uniform in [0, cap) */
    for (;;) {
        slot_t *s = &x->slots[i];
        if (*s == 0)
            return s;
        if (*s >> (64 - TAG_BITS) == tag && segs[slot_seg(*s)]->ids[slot_row(*s)] == id)
            return s;
        if (++i == x->cap)
            i = 0;
    }
}

/* Insert or overwrite; the caller sized the index for every id it puts. */
static void index_put(struct index *x, struct bm_segment *const *segs, uint64_t id, uint32_t seg,
                      uint32_t row)
{
    slot_t *s = slot_find(x, segs, id);
    if (*s == 0)
        x->n++;
    *s = slot_make(mix(id), seg, row);
}

/* The latest row of 'id' in a version: 1 and (*seg, *row), or 0. */
static int lookup(const struct version *v, uint64_t id, uint32_t *seg, uint32_t *row)
{
    const struct index *layers[2] = {v->delta, v->base};
    for (int l = 0; l < 2; l++) {
        if (layers[l] == NULL)
            continue;
        slot_t s = *slot_find(layers[l], v->segs, id);
        if (s != 0) {
            *seg = slot_seg(s);
            *row = slot_row(s);
            return 1;
        }
    }
    return 0;
}

static int is_dead(const struct version *v, size_t seg, size_t row)
{
    return (v->dead[seg][row >> 6] >> (row & 63)) & 1;
}

static void set_bit(uint64_t **map, size_t seg, size_t row)
{
    map[seg][row >> 6] |= 1ull << (row & 63);
}

static size_t map_words(const struct bm_segment *s)
{
    return (s->count + 63) / 64 + 1;
}

static void version_free(struct version *v)
{
    if (v == NULL)
        return;
    for (size_t i = 0; i < v->nseg; i++) {
        if (v->dead != NULL)
            free(v->dead[i]);
        if (v->shadow != NULL)
            free(v->shadow[i]);
        bm_segment_unref(v->segs[i]);
    }
    free(v->dead);
    free(v->shadow);
    free(v->segs);
    index_unref(v->base);
    index_unref(v->delta);
    free(v);
}

static void unpin(struct version *v)
{
    if (atomic_fetch_sub(&v->refs, 1) == 1)
        version_free(v);
}

static struct version *pin(struct bm_gallery *g)
{
    pthread_mutex_lock(&g->lock);
    struct version *v = g->cur;
    atomic_fetch_add(&v->refs, 1);
    pthread_mutex_unlock(&g->lock);
    return v;
}

struct bm_gallery *bm_gallery_new(const struct bm_spec *spec, struct bm_pool *pool, char *err,
                                  size_t errlen)
{
    if (bm_spec_validate(spec, err, errlen) != BM_OK)
        return NULL;
    int rc = bm_cpu_init();
    (void)rc; /* a bad BIOMATCH_SIMD falls back to the detected level */
    struct bm_gallery *g = calloc(1, sizeof *g);
    struct version *v = calloc(1, sizeof *v);
    if (g == NULL || v == NULL) {
        free(g);
        free(v);
        bm_seterr(err, errlen, BM_ENOMEM, "gallery: out of memory");
        return NULL;
    }
    g->spec = *spec;
    g->pool = pool;
    pthread_mutex_init(&g->lock, NULL);
    atomic_init(&v->refs, 1);
    v->memory = sizeof *v;
    g->cur = v;
    return g;
}

void bm_gallery_free(struct bm_gallery *g)
{
    if (g == NULL)
        return;
    unpin(g->cur);
    pthread_mutex_destroy(&g->lock);
    free(g);
}

static int in_list(const uint64_t *list, size_t n, uint64_t x)
{
    for (size_t i = 0; i < n; i++)
        if (list[i] == x)
            return 1;
    return 0;
}

/* Record row (s, r) as the latest of its id: a previous latest row of the
 * id becomes shadowed (an upsert). */
static void index_row(struct version *v, struct index *into, size_t s, size_t r)
{
    uint64_t id = v->segs[s]->ids[r];
    uint32_t os, orow;
    if (lookup(v, id, &os, &orow))
        set_bit(v->shadow, os, orow);
    index_put(into, v->segs, id, (uint32_t)s, (uint32_t)r);
}

int bm_gallery_update(struct bm_gallery *g, struct bm_segment **add, size_t nadd,
                      const uint64_t *drop, size_t ndrop, const uint64_t *tombstones,
                      size_t ntombstones, char *err, size_t errlen)
{
    struct version *old = g->cur; /* one writer at a time: no pin needed */
    for (size_t i = 0; i < nadd; i++) {
        if (add[i] == NULL || !bm_spec_same(&add[i]->spec, &g->spec))
            return bm_seterr(err, errlen, BM_EINVAL, "gallery: segment %zu is missing or of another spec", i);
        for (size_t j = 0; j < old->nseg; j++)
            if (old->segs[j]->id == add[i]->id && !in_list(drop, ndrop, add[i]->id))
                return bm_seterr(err, errlen, BM_EINVAL, "gallery: segment id %llu already present",
                                 (unsigned long long)add[i]->id);
        for (size_t j = 0; j < i; j++)
            if (add[j]->id == add[i]->id || add[j] == add[i])
                return bm_seterr(err, errlen, BM_EINVAL, "gallery: segment id %llu added twice",
                                 (unsigned long long)add[i]->id);
    }
    struct version *v = calloc(1, sizeof *v);
    if (v == NULL)
        goto oom;
    atomic_init(&v->refs, 1);
    v->number = old->number + 1;
    v->segs = calloc(old->nseg + nadd + 1, sizeof *v->segs);
    v->dead = calloc(old->nseg + nadd + 1, sizeof *v->dead);
    v->shadow = calloc(old->nseg + nadd + 1, sizeof *v->shadow);
    if (v->segs == NULL || v->dead == NULL || v->shadow == NULL)
        goto oom;
    /* Take references to the kept segments first so version_free() on an
     * error path releases exactly what was taken. Added segments get their
     * reference only once nothing can fail any more. */
    int dropped = 0;
    for (size_t i = 0; i < old->nseg; i++) {
        if (in_list(drop, ndrop, old->segs[i]->id)) {
            dropped = 1;
            continue;
        }
        bm_segment_ref(old->segs[i]);
        v->segs[v->nseg++] = old->segs[i];
    }
    size_t nkept = v->nseg;
    size_t added_rows = 0;
    for (size_t i = 0; i < nadd; i++) {
        v->segs[v->nseg + i] = add[i];
        added_rows += add[i]->count;
    }
    size_t nall = v->nseg + nadd;
    if (nall > MAX_SEGMENTS) {
        version_free(v); /* holds references to the kept segments only */
        return bm_seterr(err, errlen, BM_EINVAL, "gallery: more than %u segments", MAX_SEGMENTS);
    }
    for (size_t i = 0; i < nall; i++) {
        v->dead[i] = malloc(map_words(v->segs[i]) * sizeof(uint64_t));
        v->shadow[i] = calloc(map_words(v->segs[i]), sizeof(uint64_t));
        if (v->dead[i] == NULL || v->shadow[i] == NULL) {
            /* version_free() frees maps of the first nseg entries only. */
            for (size_t j = nkept; j <= i; j++) {
                free(v->dead[j]);
                free(v->shadow[j]);
                v->dead[j] = v->shadow[j] = NULL;
            }
            goto oom_v;
        }
        v->rows += v->segs[i]->count;
    }
    size_t old_delta = old->delta != NULL ? old->delta->n : 0;
    size_t base_n = old->base != NULL ? old->base->n : 0;
    size_t grown = old_delta + added_rows;
    /* Each update re-inserts the whole delta, a rebuild costs every row:
     * letting the delta grow to about sqrt(2 * rows * added) balances the
     * two (the total per added row is then O(sqrt(rows / added))). */
    double budget = 1024.0 + sqrt(2.0 * (double)base_n * (double)(added_rows > 64 ? added_rows : 64));
    int rebuild = dropped || old->base == NULL || (double)grown > budget;
    if (rebuild) {
        v->base = index_new(v->rows);
        v->delta = NULL;
    } else {
        v->base = old->base;
        atomic_fetch_add(&v->base->refs, 1);
        v->delta = index_new(grown);
    }
    if (v->base == NULL || (!rebuild && v->delta == NULL)) {
        for (size_t j = nkept; j < nall; j++) {
            free(v->dead[j]);
            free(v->shadow[j]);
            v->dead[j] = v->shadow[j] = NULL;
        }
        goto oom_v;
    }
    /* Nothing fails from here on: the added segments now belong to us. */
    for (size_t i = 0; i < nadd; i++)
        bm_segment_ref(add[i]);
    v->nseg = nall;
    if (rebuild) {
        for (size_t s = 0; s < nall; s++)
            for (size_t r = 0; r < v->segs[s]->count; r++)
                index_row(v, v->base, s, r);
    } else {
        /* Kept segments keep their positions (no drop), so the old
         * version's shadows and index entries stay valid. */
        for (size_t s = 0; s < nkept; s++)
            memcpy(v->shadow[s], old->shadow[s], map_words(v->segs[s]) * sizeof(uint64_t));
        if (old->delta != NULL)
            for (size_t i = 0; i < old->delta->cap; i++) {
                slot_t sl = old->delta->slots[i];
                if (sl != 0)
                    index_put(v->delta, v->segs, v->segs[slot_seg(sl)]->ids[slot_row(sl)],
                              slot_seg(sl), slot_row(sl));
            }
        for (size_t s = nkept; s < nall; s++)
            for (size_t r = 0; r < v->segs[s]->count; r++)
                index_row(v, v->delta, s, r);
    }
    for (size_t s = 0; s < nall; s++)
        memcpy(v->dead[s], v->shadow[s], map_words(v->segs[s]) * sizeof(uint64_t));
    for (size_t i = 0; i < ntombstones; i++) {
        uint32_t ts, tr;
        if (lookup(v, tombstones[i], &ts, &tr))
            set_bit(v->dead, ts, tr);
    }
    size_t ndead = 0;
    for (size_t s = 0; s < nall; s++)
        for (size_t w = 0; w < map_words(v->segs[s]); w++)
            ndead += (size_t)__builtin_popcountll(v->dead[s][w]);
    v->live = v->rows - ndead;
    v->memory = sizeof *v + v->base->cap * sizeof(slot_t) +
                (v->delta != NULL ? v->delta->cap * sizeof(slot_t) : 0);
    for (size_t s = 0; s < nall; s++)
        v->memory += bm_segment_memory(v->segs[s]) + 2 * map_words(v->segs[s]) * 8;

    pthread_mutex_lock(&g->lock);
    g->cur = v;
    pthread_mutex_unlock(&g->lock);
    unpin(old);
    return BM_OK;
oom_v:
    version_free(v);
    return bm_seterr(err, errlen, BM_ENOMEM, "gallery: out of memory building version");
oom:
    if (v != NULL) {
        free(v->segs);
        free(v->dead);
        free(v->shadow);
        free(v);
    }
    return bm_seterr(err, errlen, BM_ENOMEM, "gallery: out of memory building version");
}

uint64_t bm_gallery_version(const struct bm_gallery *g)
{
    struct bm_gallery *mg = (struct bm_gallery *)(uintptr_t)g;
    struct version *v = pin(mg);
    uint64_t n = v->number;
    unpin(v);
    return n;
}

size_t bm_gallery_count(const struct bm_gallery *g)
{
    struct bm_gallery *mg = (struct bm_gallery *)(uintptr_t)g;
    struct version *v = pin(mg);
    size_t n = v->live;
    unpin(v);
    return n;
}

size_t bm_gallery_memory(const struct bm_gallery *g)
{
    struct bm_gallery *mg = (struct bm_gallery *)(uintptr_t)g;
    struct version *v = pin(mg);
    size_t n = v->memory;
    unpin(v);
    return n;
}

const struct bm_spec *bm_gallery_spec(const struct bm_gallery *g)
{
    return &g->spec;
}

/* ------------------------------------------------------------- search */

struct task {
    uint32_t seg;
    uint32_t row0, row1;
};

struct search {
    const struct bm_gallery *g;
    const struct version *v;
    const struct bm_kernels *k;
    size_t nprobes, k_best;
    size_t k_scan;           /* heap size of the scan: k, or the int8 candidates */
    float threshold;
    float *scan_thr;         /* int8: per probe, threshold - safe margin */
    struct bm_dense_probes dp;
    struct bm_iris_probes ip;
    struct task *tasks;
    struct bm_topk *heaps;   /* nthreads * nprobes */
    void **scratch;          /* per thread tile scores */
    size_t tile;             /* rows per tile */
};

static inline void offer(struct bm_topk *h, const struct version *v, const struct bm_segment *s,
                         size_t seg, size_t row, float score, float threshold)
{
    if (!(score >= threshold))
        return; /* also drops NaN (no decision) */
    uint64_t id = s->ids[row];
    if (h->n == h->k) {
        if (h->k == 0 || !bm_topk_better(score, id, h->items[0].score, h->items[0].id))
            return;
    }
    if (is_dead(v, seg, row))
        return;
    bm_topk_push(h, id, score);
}

static void dense_task(struct search *S, const struct task *t, unsigned thread)
{
    const struct bm_segment *s = S->v->segs[t->seg];
    struct bm_topk *heaps = S->heaps + (size_t)thread * S->nprobes;
    float *fsc = S->scratch[thread];
    int32_t *isc = S->scratch[thread];
    size_t dim = S->g->spec.dim;
    enum bm_dtype dt = S->g->spec.dtype;
    size_t tile = S->tile;
    uint32_t sel[TILE_MAX];
    for (size_t r0 = t->row0; r0 < t->row1; r0 += tile) {
        size_t nr = t->row1 - r0 < tile ? t->row1 - r0 : tile;
        const uint8_t *grow = s->rows + r0 * s->stride;
        /* With several probes the kernels are compute-bound on a tile that
         * is already in cache, so the next tile of the task is prefetched
         * into L2 in slices, one before each group of probes, instead of
         * being waited for by the first group. A lone probe is a stream
         * the hardware prefetcher follows by itself. */
        size_t nnext = t->row1 - (r0 + nr) < tile ? t->row1 - (r0 + nr) : tile;
        const uint8_t *pf = grow + nr * s->stride;
        size_t pf_left = S->nprobes > 1 ? nnext * s->stride : 0;
        size_t ngroups = (S->nprobes + PROBE_GROUP - 1) / PROBE_GROUP;
        size_t pf_slice = ((pf_left + ngroups - 1) / ngroups + 63) & ~(size_t)63;
        for (size_t p0 = 0; p0 < S->nprobes; p0 += PROBE_BLOCK) {
            size_t np = S->nprobes - p0 < PROBE_BLOCK ? S->nprobes - p0 : PROBE_BLOCK;
            for (size_t q0 = 0; q0 < np; q0 += PROBE_GROUP) {
                size_t nq = np - q0 < PROBE_GROUP ? np - q0 : PROBE_GROUP;
                size_t slice = pf_left < pf_slice ? pf_left : pf_slice;
                for (size_t off = 0; off < slice; off += 64)
                    __builtin_prefetch(pf + off, 0, 2);
                pf += slice;
                pf_left -= slice;
                size_t qi = p0 + q0;
                if (dt == BM_DTYPE_F32)
                    S->k->batch_f32(S->dp.f32 + qi * S->dp.stride, S->dp.stride, nq,
                                    (const float *)(const void *)grow, s->stride / 4, nr, dim,
                                    fsc + q0 * tile, tile);
                else if (dt == BM_DTYPE_F16)
                    S->k->batch_f16(S->dp.f32 + qi * S->dp.stride, S->dp.stride, nq,
                                    (const uint16_t *)(const void *)grow, s->stride / 2, nr, dim,
                                    fsc + q0 * tile, tile);
                else
                    S->k->batch_i8(S->dp.i8 + qi * S->dp.stride, S->dp.stride, nq,
                                   (const int8_t *)grow, s->stride, nr, dim,
                                   isc + q0 * tile, tile);
            }
            for (size_t p = 0; p < np; p++) {
                struct bm_topk *h = &heaps[p0 + p];
                float *row = fsc + p * tile;
                if (dt == BM_DTYPE_INT8)
                    S->k->scale_i8(isc + p * tile, s->scales + r0, S->dp.scale[p0 + p], nr, row);
                /* Vector pre-filter: only scores that could enter the heap
                 * (>= the threshold and >= its current worst) reach offer(),
                 * which re-checks them exactly (ties, dead rows). */
                float floor = bm_topk_floor(h);
                float thr = S->scan_thr != NULL ? S->scan_thr[p0 + p] : S->threshold;
                if (thr > floor)
                    floor = thr;
                size_t nc = S->k->select_ge(row, nr, floor, sel);
                for (size_t c = 0; c < nc; c++)
                    offer(h, S->v, s, t->seg, r0 + sel[c], row[sel[c]], thr);
            }
        }
    }
}

static void iris_task(struct search *S, const struct task *t, unsigned thread)
{
    const struct bm_segment *s = S->v->segs[t->seg];
    struct bm_topk *heaps = S->heaps + (size_t)thread * S->nprobes;
    const struct bm_iris_probes *ip = &S->ip;
    size_t nb = ip->bytes, nvar = ip->nvar;
    uint32_t *diff = S->scratch[thread], *valid = diff + IRIS_BLOCK * nvar;
    /* A tile of rows stays in L2 while every probe's variants (124 KiB
     * each at the default geometry) pass over it, so rows come from memory
     * once per batch and variants from L3 once per tile; within the tile a
     * block of rows stays in L1 under each pair of variants. */
    for (size_t r0 = t->row0; r0 < t->row1; r0 += IRIS_TILE) {
        size_t r1 = t->row1 - r0 < IRIS_TILE ? t->row1 : r0 + IRIS_TILE;
        for (size_t p = 0; p < S->nprobes; p++) {
            size_t v0 = p * nvar;
            for (size_t b0 = r0; b0 < r1; b0 += IRIS_BLOCK) {
                size_t nr = r1 - b0 < IRIS_BLOCK ? r1 - b0 : IRIS_BLOCK;
                S->k->iris_rows(ip->code + v0 * ip->vstride, ip->mask + v0 * ip->vstride,
                                ip->vstride, nvar, s->rows + b0 * s->stride, s->stride, nb, nr,
                                nb, diff, valid);
                for (size_t r = 0; r < nr; r++) {
                    float sc = bm_iris_score(&S->g->spec, ip, diff + r * nvar, valid + r * nvar, NULL);
                    offer(&heaps[p], S->v, s, t->seg, b0 + r, sc, S->threshold);
                }
            }
        }
    }
}

static void run_task(void *arg, size_t task, unsigned thread)
{
    struct search *S = arg;
    if (S->g->spec.modality == BM_MODALITY_DENSE)
        dense_task(S, &S->tasks[task], thread);
    else
        iris_task(S, &S->tasks[task], thread);
}

/* int8 search. The score of an int8 gallery row is the normalised f32
 * probe against the dequantised row, R = dot_f32i8(p, q) * scale (the
 * same as bm_gallery_verify). Scoring every row that way would forgo the
 * VNNI int8 x int8 scan, so the scan only generates candidates: it keeps,
 * per probe, the top K = bm_dense_i8_candidates(k) live rows by the int8 x
 * int8 score I = (float)dot(qp, q) * (scale_p * scale) (ties: lower id),
 * and the result is the top k of those K by R with R >= threshold (ties:
 * lower id). This is the definition the tests' brute force uses too.
 *
 * Threshold pruning in the scan must not change that result: it drops
 * only rows with I < threshold - margin, where margin bounds |R - I|.
 * R - I = scale * dot(p - scale_p qp, q) up to rounding, so by
 * Cauchy-Schwarz |R - I| <= |p - scale_p qp|_2 * |scale q|_2 = qerr_p * N
 * with N = the version's largest scale * |q|_2 (i8_norm_max, ~1 for
 * enrolled unit vectors); the float rounding of both scores (kernels agree
 * within 1e-5 of sum |p_i q_i| scale <= N) is covered by 4e-5 * N. A
 * dropped row therefore has R < threshold, and as the K best rows by I
 * with I >= x are the K best rows by I cut at x, the candidates that reach
 * the threshold are the same with or without pruning. */
static void scan_thresholds(struct search *S, const struct version *v)
{
    float n = 0;
    for (size_t s = 0; s < v->nseg; s++)
        if (v->segs[s]->i8_norm_max > n)
            n = v->segs[s]->i8_norm_max;
    for (size_t p = 0; p < S->nprobes; p++) {
        float margin = (S->dp.qerr[p] + 4e-5f) * n * 1.001f + 1e-6f;
        S->scan_thr[p] = S->threshold - margin;
    }
}

/* Re-score probe p's 'n' scan candidates exactly and keep the best k. */
static void rescore_i8(struct search *S, const struct version *v, size_t p,
                       const struct bm_candidate *cand, size_t n, struct bm_candidate *out)
{
    struct bm_topk h;
    bm_topk_init(&h, out, S->k_best);
    for (size_t i = 0; i < n && cand[i].id != BM_NO_ID; i++) {
        /* Candidates are live rows, and a live row is its id's latest. */
        uint32_t cs, cr;
        if (!lookup(v, cand[i].id, &cs, &cr))
            continue;
        float sc = bm_dense_score_one(S->k, &S->dp, p, v->segs[cs], cr);
        if (sc >= S->threshold)
            bm_topk_push(&h, cand[i].id, sc);
    }
    bm_topk_finish(&h, out);
}

static void search_free(struct search *S, unsigned nthreads)
{
    bm_dense_probes_free(&S->dp);
    bm_iris_probes_free(&S->ip);
    free(S->tasks);
    free(S->scan_thr);
    if (S->heaps != NULL && S->k_scan > 0)
        free(S->heaps[0].items);
    free(S->heaps);
    if (S->scratch != NULL)
        for (unsigned i = 0; i < nthreads; i++)
            free(S->scratch[i]);
    free(S->scratch);
}

int bm_gallery_search(struct bm_gallery *g, const struct bm_probe *probes, size_t nprobes,
                      size_t k, float threshold, struct bm_candidate *out,
                      uint64_t *comparisons, char *err, size_t errlen)
{
    if (comparisons != NULL)
        *comparisons = 0;
    if (nprobes == 0)
        return BM_OK;
    if (probes == NULL || (out == NULL && k > 0))
        return bm_seterr(err, errlen, BM_EINVAL, "search: probes or out missing");
    if (isnan(threshold))
        return bm_seterr(err, errlen, BM_EINVAL, "search: threshold is NaN");
    for (size_t i = 0; i < nprobes; i++) {
        char why[160];
        if (bm_probe_validate(&g->spec, &probes[i], why, sizeof why) != BM_OK)
            return bm_seterr(err, errlen, BM_EINVAL, "search: probe %zu: %s", i, why);
    }
    unsigned nthreads = bm_pool_size(g->pool);
    struct search S;
    memset(&S, 0, sizeof S);
    S.g = g;
    S.k = bm_kernels_get();
    S.nprobes = nprobes;
    S.k_best = k;
    S.threshold = threshold;
    int rc;
    if (g->spec.modality == BM_MODALITY_DENSE)
        rc = bm_dense_probes_prepare(&g->spec, probes, nprobes, &S.dp, err, errlen);
    else
        rc = bm_iris_probes_prepare(&g->spec, probes, nprobes, &S.ip, err, errlen);
    if (rc != BM_OK)
        return rc;

    struct version *v = pin(g);
    S.v = v;
    size_t per = g->spec.modality == BM_MODALITY_DENSE ? TASK_ROWS_DENSE : TASK_ROWS_IRIS;
    size_t ntasks = 0;
    for (size_t s = 0; s < v->nseg; s++)
        ntasks += (v->segs[s]->count + per - 1) / per;
    size_t stride = (bm_spec_template_bytes(&g->spec) + 63) & ~(size_t)63;
    S.tile = TILE_BYTES / stride;
    S.tile = S.tile < 16 ? 16 : S.tile > TILE_MAX ? TILE_MAX : S.tile;
    S.tasks = malloc((ntasks + 1) * sizeof *S.tasks);
    S.heaps = calloc((size_t)nthreads * nprobes, sizeof *S.heaps);
    S.scratch = calloc(nthreads, sizeof *S.scratch);
    int i8 = g->spec.modality == BM_MODALITY_DENSE && g->spec.dtype == BM_DTYPE_INT8;
    size_t ks = k;
    struct bm_candidate *cand = NULL;
    if (i8 && k > 0) {
        /* int8: the scan keeps more candidates than asked for; they are
         * re-scored exactly below (see rescore_i8). */
        ks = bm_dense_i8_candidates(k, v->live);
        cand = malloc((ks + 1) * sizeof *cand);
        S.scan_thr = malloc(nprobes * sizeof *S.scan_thr);
        if (cand != NULL && S.scan_thr != NULL)
            scan_thresholds(&S, v);
    }
    S.k_scan = ks;
    struct bm_candidate *store = NULL;
    if (ks > 0)
        store = malloc((size_t)nthreads * nprobes * ks * sizeof *store);
    rc = BM_OK;
    if (S.tasks == NULL || S.heaps == NULL || S.scratch == NULL || (ks > 0 && store == NULL) ||
        (i8 && k > 0 && (cand == NULL || S.scan_thr == NULL))) {
        free(store);
        free(cand);
        S.k_scan = 0;
        rc = bm_seterr(err, errlen, BM_ENOMEM, "search: out of memory");
        goto done;
    }
    for (size_t i = 0; i < (size_t)nthreads * nprobes; i++)
        bm_topk_init(&S.heaps[i], store != NULL ? store + i * ks : NULL, ks);
    {
        size_t pb = nprobes < PROBE_BLOCK ? nprobes : PROBE_BLOCK;
        size_t bytes = g->spec.modality == BM_MODALITY_DENSE
                           ? pb * S.tile * sizeof(float)
                           : 2 * IRIS_BLOCK * S.ip.nvar * sizeof(uint32_t);
        for (unsigned i = 0; i < nthreads; i++) {
            S.scratch[i] = bm_alloc64(bytes);
            if (S.scratch[i] == NULL) {
                rc = bm_seterr(err, errlen, BM_ENOMEM, "search: out of memory");
                goto done;
            }
        }
    }
    size_t t = 0;
    for (size_t s = 0; s < v->nseg; s++)
        for (size_t r = 0; r < v->segs[s]->count; r += per) {
            size_t end = r + per < v->segs[s]->count ? r + per : v->segs[s]->count;
            S.tasks[t].seg = (uint32_t)s;
            S.tasks[t].row0 = (uint32_t)r;
            S.tasks[t].row1 = (uint32_t)end;
            t++;
        }
    if (ks > 0 && ntasks > 0)
        bm_pool_run(g->pool, ntasks, run_task, &S);

    /* Merge the per-thread heaps of each probe. */
    for (size_t p = 0; p < nprobes && k > 0; p++) {
        const struct bm_candidate *lists_small[64];
        const struct bm_candidate **lists = lists_small;
        if (nthreads > 64)
            lists = malloc(nthreads * sizeof *lists);
        if (lists == NULL) {
            free(cand);
            rc = bm_seterr(err, errlen, BM_ENOMEM, "search: out of memory");
            goto done;
        }
        for (unsigned th = 0; th < nthreads; th++) {
            struct bm_topk *h = &S.heaps[(size_t)th * nprobes + p];
            bm_topk_finish(h, h->items);
            lists[th] = h->items;
        }
        if (i8) {
            bm_topk_merge(lists, nthreads, ks, cand);
            rescore_i8(&S, v, p, cand, ks, out + p * k);
        } else {
            bm_topk_merge(lists, nthreads, k, out + p * k);
        }
        if (lists != lists_small)
            free(lists);
    }
    free(cand);
    if (comparisons != NULL && k > 0)
        *comparisons = (uint64_t)v->rows * nprobes;
done:
    search_free(&S, nthreads);
    unpin(v);
    return rc;
}

int bm_gallery_verify(struct bm_gallery *g, const struct bm_probe *probe, uint64_t id,
                      float *score, char *err, size_t errlen)
{
    char why[160];
    if (score == NULL)
        return bm_seterr(err, errlen, BM_EINVAL, "verify: score missing");
    if (bm_probe_validate(&g->spec, probe, why, sizeof why) != BM_OK)
        return bm_seterr(err, errlen, BM_EINVAL, "verify: %s", why);
    struct version *v = pin(g);
    uint32_t vs, vr;
    if (!lookup(v, id, &vs, &vr) || is_dead(v, vs, vr)) {
        unpin(v);
        return bm_seterr(err, errlen, BM_ENOTFOUND, "verify: id %llu not in the gallery",
                         (unsigned long long)id);
    }
    const struct bm_segment *s = v->segs[vs];
    const struct bm_kernels *k = bm_kernels_get();
    int rc;
    if (g->spec.modality == BM_MODALITY_DENSE) {
        struct bm_dense_probes dp;
        rc = bm_dense_probes_prepare(&g->spec, probe, 1, &dp, err, errlen);
        if (rc == BM_OK) {
            *score = bm_dense_score_one(k, &dp, 0, s, vr);
            bm_dense_probes_free(&dp);
        }
    } else {
        struct bm_iris_probes ip;
        rc = bm_iris_probes_prepare(&g->spec, probe, 1, &ip, err, errlen);
        if (rc == BM_OK) {
            const uint8_t *row = s->rows + (size_t)vr * s->stride;
            *score = bm_iris_score_one(k, &g->spec, &ip, 0, row, row + ip.bytes, NULL);
            bm_iris_probes_free(&ip);
        }
    }
    unpin(v);
    return rc;
}
