/* Helpers shared by the sweeps: result rows, notes, progress, gallery
 * building, the time-boxed measurement loop and recall.
 *
 * Measurement rule: a row is the best of up to opts.reps repetitions, each
 * at least opts.min_time seconds of back-to-back searches; repetitions stop
 * early once the row has used opts.row_budget seconds, so slow levels
 * (scalar) cannot blow the run's time limit. */
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "hw.h"
#include "par.h"
#include "common/clock.h"

struct bb_row *bb_row_add(struct bb_ctx *c)
{
    if (c->nrows == c->caprows) {
        size_t cap = c->caprows ? c->caprows * 2 : 64;
        struct bb_row *r = realloc(c->rows, cap * sizeof *r);
        if (!r)
            return NULL;
        c->rows = r;
        c->caprows = cap;
    }
    struct bb_row *r = &c->rows[c->nrows++];
    memset(r, 0, sizeof *r);
    r->bandwidth_fraction = r->recall_at_10 = r->faiss_comparisons_per_s = -1;
    r->ratio_vs_faiss = r->popcount_fraction = r->mate_at_1 = -1;
    r->shifts = -1;
    return r;
}

void bb_note(struct bb_ctx *c, const char *fmt, ...)
{
    if (c->nnotes >= sizeof c->notes / sizeof c->notes[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->notes[c->nnotes++], sizeof c->notes[0], fmt, ap);
    va_end(ap);
}

void bb_progress(const struct bb_ctx *c, const char *fmt, ...)
{
    if (c->o.quiet)
        return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "biomatch-bench [%6.1fs]: ", bm_mono_s() - c->t0);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

struct build_job {
    const struct bm_spec *spec;
    size_t n, seg_rows;
    bb_add_fn add;
    void *arg;
    struct bm_segment **segs;
    pthread_mutex_t lock;    /* guards failed and err */
    int failed;
    char err[256];           /* the first failure's reason */
};

static void build_range(void *arg, size_t begin, size_t end, unsigned thread)
{
    struct build_job *j = arg;
    char err[256];
    (void)thread;
    for (size_t s = begin; s < end; s++) {
        size_t first = s * j->seg_rows;
        size_t count = j->n - first < j->seg_rows ? j->n - first : j->seg_rows;
        j->segs[s] = bm_segment_new(j->spec, s + 1, count, err, sizeof err);
        for (size_t r = 0; j->segs[s] && r < count; r++)
            if (j->add(j->arg, j->segs[s], first + r, err, sizeof err) != BM_OK) {
                bm_segment_free(j->segs[s]);
                j->segs[s] = NULL;
            }
        if (!j->segs[s]) {
            pthread_mutex_lock(&j->lock);
            if (!j->failed)
                snprintf(j->err, sizeof j->err, "%s", err);
            j->failed = 1;
            pthread_mutex_unlock(&j->lock);
        }
    }
}

struct bm_gallery *bb_build(const struct bm_spec *spec, struct bm_pool *pool, size_t n,
                            size_t seg_rows, bb_add_fn add, void *arg, unsigned threads,
                            struct bm_segment ***segs_out, size_t *nsegs_out)
{
    char err[256];
    size_t nsegs = (n + seg_rows - 1) / seg_rows;
    struct build_job job = {spec, n, seg_rows, add, arg, NULL, PTHREAD_MUTEX_INITIALIZER, 0, ""};
    job.segs = calloc(nsegs ? nsegs : 1, sizeof *job.segs);
    if (!job.segs) {
        fprintf(stderr, "biomatch-bench: out of memory\n");
        return NULL;
    }
    bb_parallel(threads, nsegs, build_range, &job);
    struct bm_gallery *g = NULL;
    if (job.failed) {
        fprintf(stderr, "biomatch-bench: building segments: %s\n", job.err);
        goto fail;
    }
    g = bm_gallery_new(spec, pool, err, sizeof err);
    if (!g) {
        fprintf(stderr, "biomatch-bench: bm_gallery_new: %s\n", err);
        goto fail;
    }
    if (bm_gallery_update(g, job.segs, nsegs, NULL, 0, NULL, 0, err, sizeof err) != BM_OK) {
        fprintf(stderr, "biomatch-bench: bm_gallery_update: %s\n", err);
        bm_gallery_free(g);
        g = NULL;
        goto fail;
    }
    if (segs_out) {
        *segs_out = job.segs;
        *nsegs_out = nsegs;
    } else {
        free(job.segs);
    }
    return g;
fail:
    for (size_t s = 0; s < nsegs; s++)
        bm_segment_free(job.segs[s]);
    free(job.segs);
    return NULL;
}

double bb_measure(const struct bb_ctx *c, struct bm_gallery *g, const struct bm_probe *probes,
                  size_t nprobes, unsigned batch)
{
    char err[256];
    if (batch > nprobes)
        batch = (unsigned)nprobes;
    struct bm_candidate *out = malloc((size_t)batch * BB_K * sizeof *out);
    if (!out)
        return -1;
    double best = -1, row_t0 = bm_mono_s();
    size_t start = 0;
    int reps = c->o.reps < 1 ? 1 : c->o.reps;
    for (int rep = 0; rep < reps; rep++) {
        uint64_t comps = 0;
        double t0 = bm_mono_s(), dt;
        do {
            if (start + batch > nprobes)
                start = 0;
            uint64_t n = 0;
            if (bm_gallery_search(g, probes + start, batch, BB_K, -INFINITY, out, &n, err,
                                  sizeof err) != BM_OK) {
                fprintf(stderr, "biomatch-bench: bm_gallery_search: %s\n", err);
                free(out);
                return -1;
            }
            comps += n ? n : (uint64_t)batch * bm_gallery_count(g);
            start += batch;
            dt = bm_mono_s() - t0;
        } while (dt < c->o.min_time);
        double rate = (double)comps / dt;
        if (rate > best)
            best = rate;
        if (bm_mono_s() - row_t0 > c->o.row_budget)
            break;
    }
    free(out);
    return best;
}

double bb_recall(const struct bm_candidate *got, const int64_t *ref, size_t nprobes, size_t k)
{
    size_t hit = 0, total = 0;
    for (size_t p = 0; p < nprobes; p++)
        for (size_t i = 0; i < k; i++) {
            if (ref[p * k + i] < 0)
                continue;
            total++;
            for (size_t j = 0; j < k; j++)
                if (got[p * k + j].id == (uint64_t)ref[p * k + i]) {
                    hit++;
                    break;
                }
        }
    return total ? (double)hit / (double)total : -1;
}

double bb_mate_at_1(const struct bm_candidate *got, const uint64_t *mates, size_t nprobes,
                    size_t k)
{
    size_t hit = 0;
    for (size_t p = 0; p < nprobes; p++)
        hit += got[p * k].id == mates[p];
    return nprobes ? (double)hit / (double)nprobes : -1;
}

void bb_refresh_bandwidth(struct bb_ctx *c, size_t ti)
{
    double bw = bb_read_bandwidth(c->o.bw_bytes, c->o.threads[ti], c->o.bw_runs);
    if (bw > c->m.bw_gbs[ti])
        c->m.bw_gbs[ti] = bw;
}

void bb_finish_fractions(struct bb_ctx *c)
{
    /* More threads can always do what fewer did (opts.threads is sorted),
     * so a limit measured lower at a larger thread count was measured while
     * other processes held a core; the smaller count's figure is then the
     * better estimate. */
    for (size_t i = 1; i < c->o.nthreads; i++) {
        if (c->m.bw_gbs[i] < c->m.bw_gbs[i - 1])
            c->m.bw_gbs[i] = c->m.bw_gbs[i - 1];
        if (c->m.pop_rate[i] < c->m.pop_rate[i - 1]) {
            c->m.pop_rate[i] = c->m.pop_rate[i - 1];
            c->m.pop_gbs[i] = c->m.pop_gbs[i - 1];
        }
    }
    for (size_t i = 0; i < c->nrows; i++) {
        struct bb_row *r = &c->rows[i];
        if (r->stream_bytes_per_s > 0 && c->m.bw_gbs[r->ti] > 0)
            r->bandwidth_fraction = r->stream_bytes_per_s / (c->m.bw_gbs[r->ti] * 1e9);
        if (r->shift_rate > 0 && c->m.pop_rate[r->ti] > 0)
            r->popcount_fraction = r->shift_rate / c->m.pop_rate[r->ti];
    }
}
