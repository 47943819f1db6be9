/* The iris sweep: open-iris geometry (bm_spec_default), 2r+1 column shifts,
 * for each thread count, SIMD level and batch size, next to the popcount
 * limit measured on the very rows the gallery holds.
 *
 * popcount_fraction = (our comparisons/s x shifts) / (rows x shifts per
 * second of the bare AND/XOR/popcount loop, hw.c), both at the same thread
 * count. Scalar rows scan a prefix of the gallery (opts.scalar_gallery,
 * default a five-hundredth), as for dense. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "gen.h"
#include "hw.h"
#include "match/pool.h"

static int add_iris(void *arg, struct bm_segment *s, size_t row, char *err, size_t errlen)
{
    const struct bb_iris *it = arg;
    size_t b = it->geom.bytes;
    return bm_segment_add_iris(s, row, it->codes + row * b, it->masks + row * b, err, errlen);
}

/* The popcount limit over the rows of 'segs', at 'threads' threads. */
static double pop_limit(struct bb_ctx *c, struct bm_segment **segs, size_t nsegs,
                        const struct bb_iris *it, const uint8_t *pc, const uint8_t *pm,
                        size_t nshift, unsigned threads)
{
    size_t total = 0;
    for (size_t s = 0; s < nsegs; s++)
        total += bm_segment_count(segs[s]);
    const uint8_t **rows = malloc((total ? total : 1) * sizeof *rows);
    if (!rows)
        return -1;
    size_t k = 0;
    for (size_t s = 0; s < nsegs; s++)
        for (size_t r = 0; r < bm_segment_count(segs[s]); r++)
            rows[k++] = bm_segment_row(segs[s], r);
    double rate = bb_popcount_limit(rows, total, it->geom.bytes, pc, pm, nshift, threads,
                                    c->o.bw_runs, &c->m.pop_level);
    free(rows);
    return rate;
}

static void limit_update(struct bb_ctx *c, size_t ti, double rate, size_t tbytes)
{
    if (rate > c->m.pop_rate[ti]) {
        c->m.pop_rate[ti] = rate;
        c->m.pop_gbs[ti] = rate * (double)tbytes / 1e9;
    }
}

int bb_run_iris(struct bb_ctx *c)
{
    const struct bb_opts *o = &c->o;
    struct bm_spec spec;
    struct bb_iris it;
    char err[256];
    enum bm_simd top = bm_simd_detect(), start_level = bm_simd_active();
    bm_spec_default(&spec, BM_MODALITY_IRIS);
    struct bb_iris_geom geom = {spec.iris_filters, spec.iris_rows, spec.iris_columns,
                                spec.iris_bits_per_cell, bm_spec_iris_bytes(&spec)};
    int r = (int)spec.iris_rotations;
    size_t nshift = 2 * (size_t)r + 1;
    size_t tbytes = bm_spec_template_bytes(&spec);
    size_t n = o->iris_gallery, sub = o->scalar_gallery ? o->scalar_gallery : n / 500;
    size_t seg_rows = o->quick ? 200 : 16384;
    size_t nprobes = 64;
    for (size_t i = 0; i < o->nbatches; i++)
        if (o->batches[i] > nprobes)
            nprobes = o->batches[i];
    if (sub < 8)
        sub = 8; /* tiny (--quick) galleries still get a few scalar rows */
    if (sub > n)
        sub = n;
    int want_scalar = o->simd[BM_SIMD_SCALAR];
    int want_simd = (o->simd[BM_SIMD_AVX2] && top >= BM_SIMD_AVX2) ||
                    (o->simd[BM_SIMD_AVX512] && top >= BM_SIMD_AVX512);

    bb_progress(c, "iris: generating %zu templates of %zu bytes", n, tbytes);
    if (bb_iris_generate(&it, &geom, n, nprobes, r * 2 / 3, o->seed, c->m.cores) != 0) {
        fprintf(stderr, "biomatch-bench: out of memory generating the iris gallery\n");
        return -1;
    }
    struct bm_probe *probes = calloc(nprobes, sizeof *probes);
    uint8_t *pc = malloc(nshift * geom.bytes), *pm = malloc(nshift * geom.bytes);
    struct bm_candidate *out = calloc(nprobes * BB_K, sizeof *out);
    int rc = probes && pc && pm && out ? 0 : -1;
    for (size_t p = 0; rc == 0 && p < nprobes; p++) {
        probes[p].iris_code = it.pcodes + p * geom.bytes;
        probes[p].iris_mask = it.pmasks + p * geom.bytes;
    }
    for (size_t s = 0; rc == 0 && s < nshift; s++) {
        bb_iris_rotate(&geom, it.pcodes, pc + s * geom.bytes, (int)s - r);
        bb_iris_rotate(&geom, it.pmasks, pm + s * geom.bytes, (int)s - r);
    }

    double recall_mate[3] = {-1, -1, -1};
    for (size_t ti = 0; ti < o->nthreads && rc == 0; ti++) {
        unsigned t = o->threads[ti];
        struct bm_pool *pool = bm_pool_new(t, err, sizeof err);
        if (!pool) {
            fprintf(stderr, "biomatch-bench: bm_pool_new: %s\n", err);
            rc = -1;
            break;
        }
        bb_progress(c, "iris: building galleries (%u threads)", t);
        struct bm_segment **segs = NULL;
        size_t nsegs = 0;
        struct bm_gallery *full = NULL, *small = NULL;
        if (want_simd)
            full = bb_build(&spec, pool, n, seg_rows, add_iris, &it, c->m.cores, &segs, &nsegs);
        if (want_scalar)
            small = bb_build(&spec, pool, sub, seg_rows, add_iris, &it, c->m.cores,
                             full ? NULL : &segs, full ? NULL : &nsegs);
        if ((want_simd && !full) || (want_scalar && !small))
            rc = -1;
        if (rc == 0) {
            bb_progress(c, "iris: popcount limit (%u threads)", t);
            limit_update(c, ti, pop_limit(c, segs, nsegs, &it, pc, pm, nshift, t), tbytes);
        }
        for (int s = 0; s < 3 && rc == 0; s++) {
            enum bm_simd level = (enum bm_simd)s;
            if (!o->simd[s] || level > top || bm_simd_force(level) != BM_OK)
                continue;
            struct bm_gallery *g = level == BM_SIMD_SCALAR ? small : full;
            size_t gn = bm_gallery_count(g);
            if (level == top)
                bb_refresh_bandwidth(c, ti);
            if (recall_mate[s] < 0 && gn == n &&
                bm_gallery_search(g, probes, nprobes, BB_K, -INFINITY, out, NULL, err,
                                  sizeof err) == BM_OK)
                recall_mate[s] = bb_mate_at_1(out, it.mates, nprobes, BB_K);
            for (size_t bi = 0; bi < o->nbatches && rc == 0; bi++) {
                unsigned b = o->batches[bi];
                bb_progress(c, "iris %s threads=%u batch=%u gallery=%zu", bm_simd_name(level),
                            t, b, gn);
                double rate = bb_measure(c, g, probes, nprobes, b);
                struct bb_row *row = bb_row_add(c);
                if (!row || rate < 0) {
                    rc = -1;
                    break;
                }
                row->modality = "iris";
                row->format = "bits";
                row->simd = bm_simd_name(level);
                row->dim = geom.bytes * 8;
                row->gallery = gn;
                row->batch = b;
                row->threads = t;
                row->shifts = (int)nshift;
                row->comparisons_per_s = rate;
                row->ti = ti;
                if (b == 1)
                    row->stream_bytes_per_s = rate * (double)tbytes;
                row->shift_rate = rate * (double)nshift;
                row->mate_at_1 = recall_mate[s];
            }
        }
        /* Measured again after the rows, keeping the best (see
         * bb_refresh_bandwidth for why). */
        if (rc == 0)
            limit_update(c, ti, pop_limit(c, segs, nsegs, &it, pc, pm, nshift, t), tbytes);
        free(segs);
        bm_gallery_free(full);
        bm_gallery_free(small);
        bm_pool_free(pool);
    }
    bm_simd_force(start_level);
    free(out);
    free(pc);
    free(pm);
    free(probes);
    bb_iris_free(&it);
    return rc;
}
