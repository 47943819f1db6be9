/* Synthetic data for the benchmark (see gen.h). Generation runs in parallel
 * over templates; each template draws from its own stream, so the result does
 * not depend on how the work was split. */
#include "gen.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "par.h"
#include "rng.h"

/* Stream families, so gallery row i and probe i never share a stream. */
#define STREAM_DENSE_PROBE 0x5000000000000000ULL
#define STREAM_IRIS_ROW    0x6000000000000000ULL
#define STREAM_IRIS_PROBE  0x7000000000000000ULL

static void normalise(float *v, size_t dim)
{
    double ss = 0;
    for (size_t i = 0; i < dim; i++)
        ss += (double)v[i] * v[i];
    float inv = ss > 0 ? (float)(1.0 / sqrt(ss)) : 0.0f;
    for (size_t i = 0; i < dim; i++)
        v[i] *= inv;
}

struct dense_job {
    struct bb_dense *d;
    uint64_t seed;
};

static void dense_rows(void *arg, size_t begin, size_t end, unsigned thread)
{
    struct dense_job *j = arg;
    (void)thread;
    for (size_t i = begin; i < end; i++) {
        struct bb_rng r;
        float *v = j->d->gallery + i * j->d->dim;
        bb_rng_seed(&r, j->seed, i);
        for (size_t k = 0; k < j->d->dim; k++)
            v[k] = bb_rng_normalish(&r);
        normalise(v, j->d->dim);
    }
}

int bb_dense_generate(struct bb_dense *d, size_t n, size_t dim, size_t nprobes,
                      uint64_t seed, unsigned threads)
{
    memset(d, 0, sizeof *d);
    d->n = n;
    d->dim = dim;
    d->nprobes = nprobes;
    d->gallery = aligned_alloc(64, ((n * dim * sizeof(float)) + 63) / 64 * 64);
    d->probes = malloc(nprobes * dim * sizeof(float));
    d->mates = malloc(nprobes * sizeof(uint64_t));
    if (!d->gallery || !d->probes || !d->mates) {
        bb_dense_free(d);
        return -1;
    }
    struct dense_job job = {d, seed};
    bb_parallel(threads, n, dense_rows, &job);

    /* Noise of standard deviation 0.75/sqrt(dim) per element on a unit
     * vector gives |noise| ~ 0.75, so cos(probe, mate) ~ 1/sqrt(1.5625) = 0.8:
     * a clear mate, as a good face or finger embedding would give. */
    float sigma = 0.75f / sqrtf((float)dim);
    for (size_t p = 0; p < nprobes; p++) {
        struct bb_rng r;
        bb_rng_seed(&r, seed, STREAM_DENSE_PROBE + p);
        uint64_t mate = bb_rng_below(&r, n);
        const float *m = d->gallery + mate * dim;
        float *v = d->probes + p * dim;
        for (size_t k = 0; k < dim; k++)
            v[k] = m[k] + sigma * bb_rng_normalish(&r);
        normalise(v, dim);
        d->mates[p] = mate;
    }
    return 0;
}

void bb_dense_free(struct bb_dense *d)
{
    if (!d)
        return;
    free(d->gallery);
    free(d->probes);
    free(d->mates);
    memset(d, 0, sizeof *d);
}

static int get_bit(const uint8_t *b, size_t i)
{
    return (b[i >> 3] >> (i & 7)) & 1;
}

static void put_bit(uint8_t *b, size_t i, int v)
{
    if (v)
        b[i >> 3] = (uint8_t)(b[i >> 3] | (1u << (i & 7)));
    else
        b[i >> 3] = (uint8_t)(b[i >> 3] & ~(1u << (i & 7)));
}

void bb_iris_rotate(const struct bb_iris_geom *g, const uint8_t *src, uint8_t *dst,
                    int shift)
{
    size_t cols = g->columns;
    size_t s = (size_t)(((long)shift % (long)cols + (long)cols) % (long)cols);
    for (size_t fr = 0; fr < (size_t)g->filters * g->rows; fr++)
        for (size_t c = 0; c < cols; c++)
            for (size_t b = 0; b < g->bpc; b++) {
                size_t from = (fr * cols + c) * g->bpc + b;
                size_t to = (fr * cols + (c + s) % cols) * g->bpc + b;
                put_bit(dst, to, get_bit(src, from));
            }
}

/* A byte whose bits are each set with probability 1 - p16/65536. */
static uint8_t random_mask_byte(struct bb_rng *r, uint32_t p16)
{
    uint8_t out = 0;
    for (int half = 0; half < 2; half++) {
        uint64_t v = bb_rng_next(r);
        for (int k = 0; k < 4; k++)
            if (((v >> (16 * k)) & 0xffff) >= p16)
                out = (uint8_t)(out | (1u << (half * 4 + k)));
    }
    return out;
}

struct iris_job {
    struct bb_iris *it;
    uint64_t seed;
};

static void iris_rows(void *arg, size_t begin, size_t end, unsigned thread)
{
    struct iris_job *j = arg;
    size_t bytes = j->it->geom.bytes;
    (void)thread;
    for (size_t i = begin; i < end; i++) {
        struct bb_rng r;
        uint8_t *code = j->it->codes + i * bytes;
        uint8_t *mask = j->it->masks + i * bytes;
        bb_rng_seed(&r, j->seed, STREAM_IRIS_ROW + i);
        /* Masked fraction between 20% and 30%, as eyelids and reflections
         * typically hide. */
        uint32_t p16 = (uint32_t)((0.20 + 0.10 * (double)(bb_rng_next(&r) >> 11) /
                                              9007199254740992.0) * 65536.0);
        for (size_t k = 0; k < bytes; k += 8) {
            uint64_t v = bb_rng_next(&r);
            memcpy(code + k, &v, bytes - k < 8 ? bytes - k : 8);
        }
        for (size_t k = 0; k < bytes; k++)
            mask[k] = random_mask_byte(&r, p16);
    }
}

int bb_iris_generate(struct bb_iris *it, const struct bb_iris_geom *g, size_t n,
                     size_t nprobes, int max_shift, uint64_t seed, unsigned threads)
{
    memset(it, 0, sizeof *it);
    it->geom = *g;
    it->n = n;
    it->nprobes = nprobes;
    size_t bytes = g->bytes;
    it->codes = malloc(n * bytes);
    it->masks = malloc(n * bytes);
    it->pcodes = malloc(nprobes * bytes);
    it->pmasks = malloc(nprobes * bytes);
    it->mates = malloc(nprobes * sizeof(uint64_t));
    it->shifts = malloc(nprobes * sizeof(int));
    if (!it->codes || !it->masks || !it->pcodes || !it->pmasks || !it->mates ||
        !it->shifts) {
        bb_iris_free(it);
        return -1;
    }
    struct iris_job job = {it, seed};
    bb_parallel(threads, n, iris_rows, &job);

    for (size_t p = 0; p < nprobes; p++) {
        struct bb_rng r;
        bb_rng_seed(&r, seed, STREAM_IRIS_PROBE + p);
        uint64_t mate = bb_rng_below(&r, n);
        int shift = max_shift > 0
                        ? (int)bb_rng_below(&r, 2 * (uint64_t)max_shift + 1) - max_shift
                        : 0;
        uint8_t *code = it->pcodes + p * bytes;
        uint8_t *mask = it->pmasks + p * bytes;
        bb_iris_rotate(g, it->codes + mate * bytes, code, shift);
        bb_iris_rotate(g, it->masks + mate * bytes, mask, shift);
        for (size_t k = 0; k < bytes * 8; k++) {
            uint64_t v = bb_rng_next(&r);
            if ((v & 0xffff) < 6554)            /* 10%: sensor noise */
                put_bit(code, k, !get_bit(code, k));
            if (((v >> 16) & 0xffff) < 3277)    /* 5%: extra occlusion */
                put_bit(mask, k, 0);
        }
        it->mates[p] = mate;
        it->shifts[p] = shift;
    }
    return 0;
}

void bb_iris_free(struct bb_iris *it)
{
    if (!it)
        return;
    free(it->codes);
    free(it->masks);
    free(it->pcodes);
    free(it->pmasks);
    free(it->mates);
    free(it->shifts);
    memset(it, 0, sizeof *it);
}

