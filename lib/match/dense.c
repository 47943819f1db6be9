/* Dense embeddings: validation, L2 normalisation, storage encoding
 * (f32, f16, symmetric int8) and probe preparation.
 *
 * Invariant: everything stored or searched is a finite unit vector (before
 * rounding to the storage format), so a dot product is a cosine. int8 rows
 * and probes carry their own scale: value = q * scale, |q| <= 127. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "match/internal.h"

size_t bm_dtype_size(enum bm_dtype t)
{
    switch (t) {
    case BM_DTYPE_F32: return 4;
    case BM_DTYPE_F16: return 2;
    case BM_DTYPE_INT8: return 1;
    }
    return 0;
}

int bm_dense_normalise(const float *v, uint32_t dim, float *out, char *err, size_t errlen)
{
    double ss = 0;
    for (uint32_t i = 0; i < dim; i++) {
        if (!isfinite(v[i]))
            return bm_seterr(err, errlen, BM_EINVAL, "dense: element %u is NaN or infinite", i);
        ss += (double)v[i] * (double)v[i];
    }
    if (!(ss > 0) || !isfinite(ss))
        return bm_seterr(err, errlen, BM_EINVAL, "dense: zero vector cannot be normalised");
    double inv = 1.0 / sqrt(ss);
    for (uint32_t i = 0; i < dim; i++)
        out[i] = (float)((double)v[i] * inv);
    return BM_OK;
}

float bm_dense_quantise(const float *x, uint32_t dim, int8_t *q)
{
    float amax = 0;
    for (uint32_t i = 0; i < dim; i++)
        if (fabsf(x[i]) > amax)
            amax = fabsf(x[i]);
    if (amax == 0) {
        memset(q, 0, dim);
        return 1.0f;
    }
    float scale = amax / 127.0f;
    float inv = 127.0f / amax;
    for (uint32_t i = 0; i < dim; i++) {
        long r = lrintf(x[i] * inv);
        q[i] = (int8_t)(r > 127 ? 127 : r < -127 ? -127 : r);
    }
    return scale;
}

double bm_dense_norm_i8(const int8_t *q, uint32_t dim)
{
    /* int32 lanes (q^2 <= 2^14, dim <= 4096: no overflow) so the loop
     * vectorises. */
    int32_t ss = 0;
    for (uint32_t i = 0; i < dim; i++)
        ss += (int32_t)q[i] * q[i];
    return sqrt((double)ss);
}

size_t bm_dense_i8_candidates(size_t k, size_t live)
{
    if (k >= live)
        return live;
    size_t c = k > SIZE_MAX / 4 ? SIZE_MAX : 4 * k;
    if (c < k + 32)
        c = k + 32;
    return c < live ? c : live;
}

void bm_dense_encode(const struct bm_spec *spec, const float *unit, void *row, float *scale)
{
    *scale = 1.0f;
    switch (spec->dtype) {
    case BM_DTYPE_F32:
        memcpy(row, unit, spec->dim * sizeof(float));
        break;
    case BM_DTYPE_F16: {
        uint16_t *h = row;
        for (uint32_t i = 0; i < spec->dim; i++)
            h[i] = bm_f32_to_f16(unit[i]);
        break;
    }
    case BM_DTYPE_INT8:
        *scale = bm_dense_quantise(unit, spec->dim, row);
        break;
    }
}

int bm_dense_probes_prepare(const struct bm_spec *spec, const struct bm_probe *p, size_t n,
                            struct bm_dense_probes *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    out->n = n;
    out->stride = ((size_t)spec->dim + 63) & ~(size_t)63;
    out->f32 = bm_alloc64(n * out->stride * sizeof(float));
    if (out->f32 == NULL)
        goto oom;
    if (spec->dtype == BM_DTYPE_INT8) {
        out->i8 = bm_alloc64(n * out->stride);
        out->scale = malloc((n ? n : 1) * sizeof *out->scale);
        out->qerr = malloc((n ? n : 1) * sizeof *out->qerr);
        if (out->i8 == NULL || out->scale == NULL || out->qerr == NULL)
            goto oom;
    }
    for (size_t i = 0; i < n; i++) {
        float *f = out->f32 + i * out->stride;
        if (p[i].dense == NULL) {
            bm_dense_probes_free(out);
            return bm_seterr(err, errlen, BM_EINVAL, "probe %zu: no dense vector", i);
        }
        char why[128];
        if (bm_dense_normalise(p[i].dense, spec->dim, f, why, sizeof why) != BM_OK) {
            bm_dense_probes_free(out);
            return bm_seterr(err, errlen, BM_EINVAL, "probe %zu: %s", i, why);
        }
        if (out->i8 != NULL) {
            int8_t *q = out->i8 + i * out->stride;
            float sc = bm_dense_quantise(f, spec->dim, q);
            double e = 0;
            for (uint32_t j = 0; j < spec->dim; j++) {
                double d = (double)f[j] - (double)sc * q[j];
                e += d * d;
            }
            out->scale[i] = sc;
            out->qerr[i] = (float)sqrt(e);
        }
    }
    return BM_OK;
oom:
    bm_dense_probes_free(out);
    return bm_seterr(err, errlen, BM_ENOMEM, "probe: out of memory for %zu probes", n);
}

void bm_dense_probes_free(struct bm_dense_probes *dp)
{
    if (dp == NULL)
        return;
    free(dp->f32);
    free(dp->i8);
    free(dp->scale);
    free(dp->qerr);
    memset(dp, 0, sizeof *dp);
}

float bm_dense_score_one(const struct bm_kernels *k, const struct bm_dense_probes *dp,
                         size_t i, const struct bm_segment *s, size_t row)
{
    const void *g = s->rows + row * s->stride;
    switch (s->spec.dtype) {
    case BM_DTYPE_F32:
        return k->dot_f32(dp->f32 + i * dp->stride, g, s->spec.dim);
    case BM_DTYPE_F16:
        return k->dot_f16(dp->f32 + i * dp->stride, g, s->spec.dim);
    case BM_DTYPE_INT8:
        return k->dot_f32i8(dp->f32 + i * dp->stride, g, s->spec.dim) * s->scales[row];
    }
    return NAN;
}
