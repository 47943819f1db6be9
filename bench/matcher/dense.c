/* The dense-embedding sweep: generate the gallery once, hand the same f32
 * data to the FAISS peer, then for each storage format, thread count, SIMD
 * level and batch size measure our search and compare.
 *
 * Scalar rows use a prefix of the gallery (opts.scalar_gallery rows, default
 * a fortieth) so the reference kernels do not dominate the run time; the row's
 * "gallery" field says how many templates it scanned, and its recall is
 * against FAISS's exact top-10 over that same prefix. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"
#include "gen.h"
#include "match/pool.h"
#include "npy.h"
#include "par.h"

static const struct {
    enum bm_dtype dtype;
    const char *name;
    size_t extra;   /* bytes streamed per template besides the vector */
} formats[3] = {
    {BM_DTYPE_INT8, "int8", sizeof(float)},
    {BM_DTYPE_F16, "f16", 0},
    {BM_DTYPE_F32, "f32", 0},
};

static int add_dense(void *arg, struct bm_segment *s, size_t row, char *err, size_t errlen)
{
    const struct bb_dense *d = arg;
    return bm_segment_add_dense(s, row, d->gallery + row * d->dim, err, errlen);
}

static void list_str(char *buf, size_t len, const unsigned *v, size_t n)
{
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < n && used < len; i++) {
        int w = snprintf(buf + used, len - used, "%s%u", i ? "," : "", v[i]);
        if (w < 0)
            break;
        used += (size_t)w;
    }
}

/* Write the f32 data and run the FAISS peer; c->peer_ok tells the outcome. */
static void run_peer(struct bb_ctx *c, const struct bb_dense *d, size_t subset)
{
    char dir[512], gpath[600], ppath[600], err[256], batches[64], threads[64];
    snprintf(dir, sizeof dir, "%s/biomatch-bench.XXXXXX", c->o.workdir);
    if (!mkdtemp(dir)) {
        snprintf(c->peer.error, sizeof c->peer.error, "cannot create a directory in %s",
                 c->o.workdir);
        return;
    }
    snprintf(gpath, sizeof gpath, "%s/gallery.npy", dir);
    snprintf(ppath, sizeof ppath, "%s/probes.npy", dir);
    if (bm_npy_write(gpath, d->gallery, d->n, d->dim, err, sizeof err) != BM_OK ||
        bm_npy_write(ppath, d->probes, d->nprobes, d->dim, err, sizeof err) != BM_OK) {
        snprintf(c->peer.error, sizeof c->peer.error, "writing data for faiss: %s", err);
    } else {
        list_str(batches, sizeof batches, c->o.batches, c->o.nbatches);
        list_str(threads, sizeof threads, c->o.threads, c->o.nthreads);
        struct bb_peer_args a = {c->o.python, c->o.faiss_script, gpath, ppath, batches,
                                 threads, subset, c->o.min_time, c->o.reps,
                                 c->o.quick ? 120 : 900};
        bb_progress(c, "running FAISS peer: %s %s", c->o.python, c->o.faiss_script);
        c->peer_ok = bb_peer_run(&c->peer, &a) == 0;
    }
    if (c->o.keep_data) {
        bb_note(c, "data kept in %s (gallery.npy, probes.npy: float32, L2-normalised)", dir);
    } else {
        unlink(gpath);
        unlink(ppath);
        rmdir(dir);
    }
}

/* Top-k of every probe, as ids, from our own exact f32 search with the
 * scalar reference kernels (the recall reference when FAISS is unavailable).
 * NULL on failure. */
static int64_t *own_reference(struct bb_ctx *c, const struct bb_dense *d, size_t n,
                              const struct bm_probe *probes, struct bm_pool *pool)
{
    struct bm_spec spec;
    char err[256];
    bm_spec_default(&spec, BM_MODALITY_DENSE);
    spec.dim = (uint32_t)d->dim;
    spec.dtype = BM_DTYPE_F32;
    struct bm_gallery *g = bb_build(&spec, pool, n, 65536, add_dense, (void *)d, c->m.cores,
                                    NULL, NULL);
    int64_t *ref = calloc(d->nprobes * BB_K, sizeof *ref);
    struct bm_candidate *out = calloc(d->nprobes * BB_K, sizeof *out);
    enum bm_simd level = bm_simd_active();
    bm_simd_force(BM_SIMD_SCALAR);
    int ok = g && ref && out &&
             bm_gallery_search(g, probes, d->nprobes, BB_K, -INFINITY, out, NULL, err,
                               sizeof err) == BM_OK;
    bm_simd_force(level);
    if (ok)
        for (size_t i = 0; i < d->nprobes * BB_K; i++)
            ref[i] = out[i].id == BM_NO_ID ? -1 : (int64_t)out[i].id;
    bm_gallery_free(g);
    free(out);
    if (!ok) {
        free(ref);
        return NULL;
    }
    return ref;
}

int bb_run_dense(struct bb_ctx *c)
{
    const struct bb_opts *o = &c->o;
    struct bb_dense d;
    char err[256];
    enum bm_simd top = bm_simd_detect(), start_level = bm_simd_active();
    size_t n = o->gallery, sub = o->scalar_gallery ? o->scalar_gallery : n / 40;
    size_t seg_rows = o->quick ? 1000 : 65536;
    size_t nprobes = 64;
    for (size_t i = 0; i < o->nbatches; i++)
        if (o->batches[i] > nprobes)
            nprobes = o->batches[i];
    if (sub < 50)
        sub = 50; /* tiny (--quick) galleries still get a few scalar rows */
    if (sub > n)
        sub = n;
    int want_scalar = o->simd[BM_SIMD_SCALAR];
    int want_simd = (o->simd[BM_SIMD_AVX2] && top >= BM_SIMD_AVX2) ||
                    (o->simd[BM_SIMD_AVX512] && top >= BM_SIMD_AVX512);

    bb_progress(c, "dense: generating %zu x %u (seed %llu)", n, o->dim,
                (unsigned long long)o->seed);
    if (bb_dense_generate(&d, n, o->dim, nprobes, o->seed, c->m.cores) != 0) {
        fprintf(stderr, "biomatch-bench: out of memory generating the dense gallery\n");
        return -1;
    }
    struct bm_probe *probes = calloc(nprobes, sizeof *probes);
    if (!probes) {
        bb_dense_free(&d);
        return -1;
    }
    for (size_t p = 0; p < nprobes; p++)
        probes[p].dense = d.probes + p * d.dim;

    if (o->no_faiss)
        snprintf(c->peer.error, sizeof c->peer.error, "disabled by --no-faiss");
    else
        run_peer(c, &d, want_scalar ? sub : 0);
    const int64_t *ref_full = NULL, *ref_sub = NULL;
    int64_t *own_full = NULL, *own_sub = NULL;
    if (c->peer_ok && c->peer.ntop >= nprobes && c->peer.k == BB_K) {
        ref_full = c->peer.top;
        ref_sub = c->peer.top_subset;
        c->recall_reference = "faiss";
    } else {
        bb_progress(c, "FAISS unavailable (%s); recall is against our own f32 scalar search",
                    c->peer.error);
        struct bm_pool *pool = bm_pool_new(c->m.cores, err, sizeof err);
        ref_full = own_full = own_reference(c, &d, n, probes, pool);
        ref_sub = own_sub = want_scalar ? own_reference(c, &d, sub, probes, pool) : NULL;
        bm_pool_free(pool);
        c->recall_reference = ref_full ? "ours-f32-scalar" : NULL;
    }

    struct bm_candidate *out = calloc(nprobes * BB_K, sizeof *out);
    int rc = out ? 0 : -1;
    for (size_t f = 0; f < 3 && rc == 0; f++) {
        if (!o->formats[f])
            continue;
        struct bm_spec spec;
        bm_spec_default(&spec, BM_MODALITY_DENSE);
        spec.dim = o->dim;
        spec.dtype = formats[f].dtype;
        size_t tbytes = bm_spec_template_bytes(&spec) + formats[f].extra;
        double recall[3] = {-1, -1, -1}, mate[3] = {-1, -1, -1};
        for (size_t ti = 0; ti < o->nthreads && rc == 0; ti++) {
            unsigned t = o->threads[ti];
            struct bm_pool *pool = bm_pool_new(t, err, sizeof err);
            if (!pool) {
                fprintf(stderr, "biomatch-bench: bm_pool_new: %s\n", err);
                rc = -1;
                break;
            }
            bb_progress(c, "dense %s: building galleries (%u threads)", formats[f].name, t);
            struct bm_gallery *full = NULL, *small = NULL;
            if (want_simd)
                full = bb_build(&spec, pool, n, seg_rows, add_dense, &d, c->m.cores, NULL,
                                NULL);
            if (want_scalar)
                small = bb_build(&spec, pool, sub, seg_rows, add_dense, &d, c->m.cores,
                                 NULL, NULL);
            if ((want_simd && !full) || (want_scalar && !small))
                rc = -1;
            for (int s = 0; s < 3 && rc == 0; s++) {
                enum bm_simd level = (enum bm_simd)s;
                if (!o->simd[s] || level > top)
                    continue;
                if (bm_simd_force(level) != BM_OK)
                    continue;
                struct bm_gallery *g = level == BM_SIMD_SCALAR ? small : full;
                size_t gn = bm_gallery_count(g);
                if (level == top)
                    bb_refresh_bandwidth(c, ti);
                const int64_t *ref = level == BM_SIMD_SCALAR ? ref_sub : ref_full;
                if (recall[s] < 0 &&
                    bm_gallery_search(g, probes, nprobes, BB_K, -INFINITY, out, NULL, err,
                                      sizeof err) == BM_OK) {
                    recall[s] = ref ? bb_recall(out, ref, nprobes, BB_K) : -1;
                    mate[s] = gn == n ? bb_mate_at_1(out, d.mates, nprobes, BB_K) : -1;
                }
                for (size_t bi = 0; bi < o->nbatches && rc == 0; bi++) {
                    unsigned b = o->batches[bi];
                    bb_progress(c, "dense %s %s threads=%u batch=%u gallery=%zu",
                                formats[f].name, bm_simd_name(level), t, b, gn);
                    double rate = bb_measure(c, g, probes, nprobes, b);
                    struct bb_row *r = bb_row_add(c);
                    if (!r || rate < 0) {
                        rc = -1;
                        break;
                    }
                    r->modality = "dense";
                    r->format = formats[f].name;
                    r->simd = bm_simd_name(level);
                    r->dim = o->dim;
                    r->gallery = gn;
                    r->batch = b;
                    r->threads = t;
                    r->comparisons_per_s = rate;
                    r->ti = ti;
                    if (b == 1)
                        r->stream_bytes_per_s = rate * (double)tbytes;
                    r->recall_at_10 = recall[s];
                    r->mate_at_1 = mate[s];
                    double fr = c->peer_ok ? bb_peer_rate(&c->peer, b, t) : -1;
                    if (fr > 0) {
                        r->faiss_comparisons_per_s = fr;
                        r->ratio_vs_faiss = rate / fr;
                    }
                }
            }
            bm_gallery_free(full);
            bm_gallery_free(small);
            bm_pool_free(pool);
        }
    }
    bm_simd_force(start_level);
    free(out);
    free(own_full);
    free(own_sub);
    free(probes);
    bb_dense_free(&d);
    return rc;
}
