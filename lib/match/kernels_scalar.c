/* The reference kernels: plain C that defines the meaning of every entry of
 * struct bm_kernels. The SIMD files must match these (bit for bit on integer
 * kernels). Float sums run in index order in double precision here, so the
 * reference is at least as accurate as any SIMD summation order. */
#include "match/kernels.h"

static float dot_f32(const float *a, const float *b, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += (double)a[i] * (double)b[i];
    return (float)s;
}

static float dot_f16(const float *a, const uint16_t *b, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += (double)a[i] * (double)bm_f16_to_f32(b[i]);
    return (float)s;
}

static int32_t dot_i8(const int8_t *a, const int8_t *b, size_t n)
{
    int32_t s = 0;
    for (size_t i = 0; i < n; i++)
        s += (int32_t)a[i] * (int32_t)b[i];
    return s;
}

/* The int8 rescoring dot: the definition of an int8 gallery's score is
 * dot_f32i8(unit probe, q_row) * scale_row (see gallery.c, "int8 search"). */
static float dot_f32i8(const float *a, const int8_t *b, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += (double)a[i] * (double)b[i];
    return (float)s;
}

static void batch_f32(const float *q, size_t qstride, size_t nq, const float *g,
                      size_t gstride, size_t ng, size_t n, float *out, size_t ldo)
{
    for (size_t i = 0; i < nq; i++)
        for (size_t j = 0; j < ng; j++)
            out[i * ldo + j] = dot_f32(q + i * qstride, g + j * gstride, n);
}

static void batch_f16(const float *q, size_t qstride, size_t nq, const uint16_t *g,
                      size_t gstride, size_t ng, size_t n, float *out, size_t ldo)
{
    for (size_t i = 0; i < nq; i++)
        for (size_t j = 0; j < ng; j++)
            out[i * ldo + j] = dot_f16(q + i * qstride, g + j * gstride, n);
}

static void batch_i8(const int8_t *q, size_t qstride, size_t nq, const int8_t *g,
                     size_t gstride, size_t ng, size_t n,
                     int32_t *out, size_t ldo)
{
    for (size_t i = 0; i < nq; i++)
        for (size_t j = 0; j < ng; j++)
            out[i * ldo + j] = dot_i8(q + i * qstride, g + j * gstride, n);
}

static void iris_counts(const uint8_t *pc, const uint8_t *pm, size_t pstride,
                        size_t nshift, const uint8_t *gc, const uint8_t *gm,
                        size_t nbytes, uint32_t *diff, uint32_t *valid)
{
    for (size_t s = 0; s < nshift; s++) {
        const uint8_t *c = pc + s * pstride, *m = pm + s * pstride;
        uint32_t d = 0, v = 0;
        for (size_t i = 0; i < nbytes; i++) {
            unsigned vb = (unsigned)(m[i] & gm[i]);
            v += (uint32_t)__builtin_popcount(vb);
            d += (uint32_t)__builtin_popcount((unsigned)(c[i] ^ gc[i]) & vb);
        }
        diff[s] = d;
        valid[s] = v;
    }
}

static void iris_rows(const uint8_t *pc, const uint8_t *pm, size_t pstride, size_t nshift,
                      const uint8_t *g, size_t gstride, size_t moff, size_t nrows,
                      size_t nbytes, uint32_t *diff, uint32_t *valid)
{
    for (size_t r = 0; r < nrows; r++) {
        const uint8_t *row = g + r * gstride;
        iris_counts(pc, pm, pstride, nshift, row, row + moff, nbytes, diff + r * nshift,
                    valid + r * nshift);
    }
}

static void scale_i8(const int32_t *dot, const float *gscale, float pscale, size_t n, float *out)
{
    for (size_t j = 0; j < n; j++)
        out[j] = (float)dot[j] * (pscale * gscale[j]);
}

static size_t select_ge(const float *s, size_t n, float floor, uint32_t *idx)
{
    size_t c = 0;
    for (size_t j = 0; j < n; j++)
        if (s[j] >= floor)
            idx[c++] = (uint32_t)j;
    return c;
}

const struct bm_kernels bm_kernels_scalar = {
    .name = "scalar",
    .dot_f32 = dot_f32,
    .dot_f16 = dot_f16,
    .dot_i8 = dot_i8,
    .dot_f32i8 = dot_f32i8,
    .batch_f32 = batch_f32,
    .batch_f16 = batch_f16,
    .batch_i8 = batch_i8,
    .iris_counts = iris_counts,
    .iris_rows = iris_rows,
    .scale_i8 = scale_i8,
    .select_ge = select_ge,
};
