/* The versioned in-memory gallery and its batched, multithreaded search.
 *
 * A version is an immutable snapshot: the list of segments (shared between
 * versions by refcount), a dead-row bitmap per segment (tombstoned ids and
 * rows shadowed by a later row with the same id) and a hash index id ->
 * (segment, row) for O(1) verification. bm_gallery_update() builds a new
 * version beside the current one and swaps the pointer under 'lock'; a
 * search pins the version it starts on (refs), so the old one is freed by
 * whoever drops the last reference: the writer or the last search.
 *
 * Search: the rows of all segments are cut into tasks of contiguous rows;
 * the pool's threads take tasks; each task streams its rows one L2-sized
 * tile at a time and scores every probe of the batch against the tile with
 * the register-blocked batch kernels, then offers the scores to that
 * thread's per-probe top-k heaps. The heaps are merged at the end. */
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

struct slot {
    uint64_t id;
    uint32_t seg;            /* UINT32_MAX: empty */
    uint32_t row;
};

struct version {
    atomic_uint refs;        /* the gallery's own + one per running search */
    uint64_t number;
    size_t nseg;
    struct bm_segment **segs;
    uint64_t **dead;         /* per segment bitmap of rows never reported */
    size_t rows;             /* all rows */
    size_t live;             /* rows not dead */
    size_t memory;
    struct slot *index;      /* open addressing, capacity a power of two */
    size_t icap;
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

static struct slot *index_find(const struct version *v, uint64_t id)
{
    if (v->icap == 0)
        return NULL;
    size_t m = v->icap - 1;
    for (size_t i = mix(id) & m;; i = (i + 1) & m) {
        struct slot *s = &v->index[i];
        if (s->seg == UINT32_MAX || s->id == id)
            return s;
    }
}

static int is_dead(const struct version *v, size_t seg, size_t row)
{
    return (v->dead[seg][row >> 6] >> (row & 63)) & 1;
}

static void set_dead(struct version *v, size_t seg, size_t row)
{
    v->dead[seg][row >> 6] |= 1ull << (row & 63);
}

static void version_free(struct version *v)
{
    if (v == NULL)
        return;
    for (size_t i = 0; i < v->nseg; i++) {
        if (v->dead != NULL)
            free(v->dead[i]);
        bm_segment_unref(v->segs[i]);
    }
    free(v->dead);
    free(v->segs);
    free(v->index);
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
    if (v->segs == NULL || v->dead == NULL)
        goto oom;
    /* Take references to the kept segments first so version_free() on an
     * error path releases exactly what was taken. Added segments get their
     * reference only once nothing can fail any more. */
    for (size_t i = 0; i < old->nseg; i++) {
        if (in_list(drop, ndrop, old->segs[i]->id))
            continue;
        bm_segment_ref(old->segs[i]);
        v->segs[v->nseg++] = old->segs[i];
    }
    size_t nkept = v->nseg;
    for (size_t i = 0; i < nadd; i++)
        v->segs[v->nseg + i] = add[i];
    size_t nall = v->nseg + nadd;
    for (size_t i = 0; i < nall; i++) {
        v->dead[i] = calloc((v->segs[i]->count + 63) / 64 + 1, sizeof(uint64_t));
        if (v->dead[i] == NULL) {
            v->nseg = nkept;
            goto oom_v;
        }
        v->rows += v->segs[i]->count;
    }
    v->icap = 16;
    while (v->icap < 2 * v->rows + 16)
        v->icap *= 2;
    v->index = malloc(v->icap * sizeof *v->index);
    if (v->index == NULL) {
        for (size_t i = nkept; i < nall; i++) {
            free(v->dead[i]);
            v->dead[i] = NULL;
        }
        v->nseg = nkept;
        goto oom_v;
    }
    for (size_t i = 0; i < v->icap; i++)
        v->index[i].seg = UINT32_MAX;
    /* Nothing fails from here on: the added segments now belong to us. */
    for (size_t i = 0; i < nadd; i++)
        bm_segment_ref(add[i]);
    v->nseg = nall;
    v->live = v->rows;
    for (size_t s = 0; s < nall; s++) {
        const struct bm_segment *seg = v->segs[s];
        for (size_t r = 0; r < seg->count; r++) {
            struct slot *sl = index_find(v, seg->ids[r]);
            if (sl->seg != UINT32_MAX) {
                /* The later row of an id wins (an upsert). */
                set_dead(v, sl->seg, sl->row);
                v->live--;
            }
            sl->id = seg->ids[r];
            sl->seg = (uint32_t)s;
            sl->row = (uint32_t)r;
        }
    }
    for (size_t i = 0; i < ntombstones; i++) {
        struct slot *sl = index_find(v, tombstones[i]);
        if (sl == NULL || sl->seg == UINT32_MAX || is_dead(v, sl->seg, sl->row))
            continue;
        set_dead(v, sl->seg, sl->row);
        v->live--;
    }
    v->memory = sizeof *v + v->icap * sizeof *v->index;
    for (size_t s = 0; s < nall; s++)
        v->memory += bm_segment_memory(v->segs[s]) + ((v->segs[s]->count + 63) / 64 + 1) * 8;

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
    float threshold;
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
    for (size_t r0 = t->row0; r0 < t->row1; r0 += tile) {
        size_t nr = t->row1 - r0 < tile ? t->row1 - r0 : tile;
        const uint8_t *grow = s->rows + r0 * s->stride;
        for (size_t p0 = 0; p0 < S->nprobes; p0 += PROBE_BLOCK) {
            size_t np = S->nprobes - p0 < PROBE_BLOCK ? S->nprobes - p0 : PROBE_BLOCK;
            if (dt == BM_DTYPE_F32)
                S->k->batch_f32(S->dp.f32 + p0 * S->dp.stride, S->dp.stride, np,
                                (const float *)(const void *)grow, s->stride / 4, nr, dim, fsc, tile);
            else if (dt == BM_DTYPE_F16)
                S->k->batch_f16(S->dp.f32 + p0 * S->dp.stride, S->dp.stride, np,
                                (const uint16_t *)(const void *)grow, s->stride / 2, nr, dim, fsc, tile);
            else
                S->k->batch_i8(S->dp.i8 + p0 * S->dp.stride, S->dp.stride, np,
                               (const int8_t *)grow, s->stride, s->sums + r0, nr, dim, isc, tile);
            for (size_t p = 0; p < np; p++) {
                struct bm_topk *h = &heaps[p0 + p];
                if (dt == BM_DTYPE_INT8) {
                    float ps = S->dp.scale[p0 + p];
                    const int32_t *row = isc + p * tile;
                    for (size_t j = 0; j < nr; j++) {
                        float sc = (float)row[j] * (ps * s->scales[r0 + j]);
                        offer(h, S->v, s, t->seg, r0 + j, sc, S->threshold);
                    }
                } else {
                    const float *row = fsc + p * tile;
                    for (size_t j = 0; j < nr; j++)
                        offer(h, S->v, s, t->seg, r0 + j, row[j], S->threshold);
                }
            }
        }
    }
}

static void iris_task(struct search *S, const struct task *t, unsigned thread)
{
    const struct bm_segment *s = S->v->segs[t->seg];
    struct bm_topk *heaps = S->heaps + (size_t)thread * S->nprobes;
    size_t nb = S->ip.bytes;
    for (size_t r = t->row0; r < t->row1; r++) {
        const uint8_t *row = s->rows + r * s->stride;
        for (size_t p = 0; p < S->nprobes; p++) {
            float sc = bm_iris_score_one(S->k, &S->g->spec, &S->ip, p, row, row + nb, NULL);
            offer(&heaps[p], S->v, s, t->seg, r, sc, S->threshold);
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

static void search_free(struct search *S, unsigned nthreads)
{
    bm_dense_probes_free(&S->dp);
    bm_iris_probes_free(&S->ip);
    free(S->tasks);
    if (S->heaps != NULL && S->k_best > 0)
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
    S.tile = S.tile < 16 ? 16 : S.tile > 1024 ? 1024 : S.tile;
    S.tasks = malloc((ntasks + 1) * sizeof *S.tasks);
    S.heaps = calloc((size_t)nthreads * nprobes, sizeof *S.heaps);
    S.scratch = calloc(nthreads, sizeof *S.scratch);
    struct bm_candidate *store = NULL;
    if (k > 0)
        store = malloc((size_t)nthreads * nprobes * k * sizeof *store);
    rc = BM_OK;
    if (S.tasks == NULL || S.heaps == NULL || S.scratch == NULL || (k > 0 && store == NULL)) {
        free(store);
        rc = bm_seterr(err, errlen, BM_ENOMEM, "search: out of memory");
        goto done;
    }
    for (size_t i = 0; i < (size_t)nthreads * nprobes; i++)
        bm_topk_init(&S.heaps[i], store != NULL ? store + i * k : NULL, k);
    if (g->spec.modality == BM_MODALITY_DENSE) {
        size_t pb = nprobes < PROBE_BLOCK ? nprobes : PROBE_BLOCK;
        for (unsigned i = 0; i < nthreads; i++) {
            S.scratch[i] = bm_alloc64(pb * S.tile * sizeof(float));
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
    if (k > 0 && ntasks > 0)
        bm_pool_run(g->pool, ntasks, run_task, &S);

    /* Merge the per-thread heaps of each probe. */
    for (size_t p = 0; p < nprobes && k > 0; p++) {
        const struct bm_candidate *lists_small[64];
        const struct bm_candidate **lists = lists_small;
        if (nthreads > 64)
            lists = malloc(nthreads * sizeof *lists);
        if (lists == NULL) {
            rc = bm_seterr(err, errlen, BM_ENOMEM, "search: out of memory");
            goto done;
        }
        for (unsigned th = 0; th < nthreads; th++) {
            struct bm_topk *h = &S.heaps[(size_t)th * nprobes + p];
            bm_topk_finish(h, h->items);
            lists[th] = h->items;
        }
        bm_topk_merge(lists, nthreads, k, out + p * k);
        if (lists != lists_small)
            free(lists);
    }
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
    struct slot *sl = index_find(v, id);
    if (sl == NULL || sl->seg == UINT32_MAX || is_dead(v, sl->seg, sl->row)) {
        unpin(v);
        return bm_seterr(err, errlen, BM_ENOTFOUND, "verify: id %llu not in the gallery",
                         (unsigned long long)id);
    }
    const struct bm_segment *s = v->segs[sl->seg];
    const struct bm_kernels *k = bm_kernels_get();
    int rc;
    if (g->spec.modality == BM_MODALITY_DENSE) {
        struct bm_dense_probes dp;
        rc = bm_dense_probes_prepare(&g->spec, probe, 1, &dp, err, errlen);
        if (rc == BM_OK) {
            *score = bm_dense_score_one(k, &dp, 0, s, sl->row);
            bm_dense_probes_free(&dp);
        }
    } else {
        struct bm_iris_probes ip;
        rc = bm_iris_probes_prepare(&g->spec, probe, 1, &ip, err, errlen);
        if (rc == BM_OK) {
            const uint8_t *row = s->rows + (size_t)sl->row * s->stride;
            *score = bm_iris_score_one(k, &g->spec, &ip, 0, row, row + ip.bytes, NULL);
            bm_iris_probes_free(&ip);
        }
    }
    unpin(v);
    return rc;
}
