/* AVX-512 kernels (F/BW/VL/DQ + VNNI + VPOPCNTDQ); compiled alone with those
 * flags, reached only through the dispatch table when cpu.c says the CPU
 * has them.
 *
 * Tails use masked loads, so no kernel reads past its inputs. Batched
 * kernels are register-blocked: PB probes x RB gallery rows of accumulators,
 * each gallery vector load feeds PB multiply-adds and each probe load RB,
 * and the 16 accumulators are reduced by one transpose-and-add tree. A lone
 * probe streams the rows sequentially instead (memory is its limit). Iris
 * blocks rows x probe variants the same way.
 * int8 uses VPDPBUSD, which needs one unsigned operand: the gallery bytes
 * are biased to g + 128 and 128 * sum(q) of the probe is subtracted, which
 * is exact in int32 and needs no per-row sum. */
#include "match/kernels.h"

#include <immintrin.h>
#include <string.h>

#define INLINE static inline __attribute__((always_inline))

INLINE __mmask16 tail16(size_t left)
{
    return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
}

INLINE __mmask64 tail64(size_t left)
{
    return left >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << left) - 1);
}

static float dot_f32(const float *a, const float *b, size_t n)
{
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
    }
    for (; i < n; i += 16) {
        __mmask16 m = tail16(n - i);
        s0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), s0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

INLINE __m512 load_f16(const uint16_t *p, __mmask16 m)
{
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
}

static float dot_f16(const float *a, const uint16_t *b, size_t n)
{
    __m512 s0 = _mm512_setzero_ps();
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 m = tail16(n - i);
        s0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), load_f16(b + i, m), s0);
    }
    return _mm512_reduce_add_ps(s0);
}

static int32_t dot_i8(const int8_t *a, const int8_t *b, size_t n)
{
    /* Sign-extend to int16 and VPMADDWD: exact, and needs no row sum. */
    __m512i s = _mm512_setzero_si512();
    for (size_t i = 0; i < n; i += 32) {
        __mmask32 m = n - i >= 32 ? ~(__mmask32)0 : (__mmask32)((1u << (n - i)) - 1);
        __m512i x = _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(m, a + i));
        __m512i y = _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(m, b + i));
        s = _mm512_add_epi32(s, _mm512_madd_epi16(x, y));
    }
    return _mm512_reduce_add_epi32(s);
}

/* f32 x int8: 16 bytes sign-extended to int32 and converted (exact), then
 * FMA; two accumulators hide the FMA latency. */
static float dot_f32i8(const float *a, const int8_t *b, size_t n)
{
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m512 y0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(const void *)(b + i))));
        __m512 y1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(const void *)(b + i + 16))));
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), y0, s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), y1, s1);
    }
    for (; i < n; i += 16) {
        __mmask16 m = tail16(n - i);
        __m512 y = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, b + i)));
        s0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), y, s0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

/* ------------------------------------------------- horizontal reductions */

/* Lane k of the result is the sum of the 16 lanes of v[k]: a transpose-and-
 * add tree (unpack 32, unpack 64, two 128-bit lane shuffles) that costs 45
 * instructions for 16 sums instead of ~10 per sum for separate reductions.
 * Integer sums are exact in any order. */
INLINE __m512i hsum16_i32(const __m512i *v)
{
    __m512i a[8], b[4], c[2];
    for (int k = 0; k < 8; k++)
        a[k] = _mm512_add_epi32(_mm512_unpacklo_epi32(v[2 * k], v[2 * k + 1]),
                                _mm512_unpackhi_epi32(v[2 * k], v[2 * k + 1]));
    for (int k = 0; k < 4; k++)
        b[k] = _mm512_add_epi32(_mm512_unpacklo_epi64(a[2 * k], a[2 * k + 1]),
                                _mm512_unpackhi_epi64(a[2 * k], a[2 * k + 1]));
    for (int k = 0; k < 2; k++)
        c[k] = _mm512_add_epi32(_mm512_shuffle_i32x4(b[2 * k], b[2 * k + 1], 0x88),
                                _mm512_shuffle_i32x4(b[2 * k], b[2 * k + 1], 0xdd));
    return _mm512_add_epi32(_mm512_shuffle_i32x4(c[0], c[1], 0x88),
                            _mm512_shuffle_i32x4(c[0], c[1], 0xdd));
}

/* The same tree on floats (the summation order differs from a sequential
 * sum; the tests bound the difference). */
INLINE __m512 hsum16_ps(const __m512 *v)
{
    __m512 a[8], b[4], c[2];
    for (int k = 0; k < 8; k++)
        a[k] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * k], v[2 * k + 1]),
                             _mm512_unpackhi_ps(v[2 * k], v[2 * k + 1]));
    for (int k = 0; k < 4; k++) {
        __m512d x = _mm512_castps_pd(a[2 * k]), y = _mm512_castps_pd(a[2 * k + 1]);
        b[k] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)),
                             _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
    }
    for (int k = 0; k < 2; k++)
        c[k] = _mm512_add_ps(_mm512_shuffle_f32x4(b[2 * k], b[2 * k + 1], 0x88),
                             _mm512_shuffle_f32x4(b[2 * k], b[2 * k + 1], 0xdd));
    return _mm512_add_ps(_mm512_shuffle_f32x4(c[0], c[1], 0x88),
                         _mm512_shuffle_f32x4(c[0], c[1], 0xdd));
}

/* Store lanes 4p..4p+3 of s (probe p's scores for rows j..j+3) to
 * out + p * ldo, the first nr of them. */
INLINE void store4x4_ps(float *out, size_t ldo, size_t np, size_t nr, __m512 s)
{
    __mmask8 m = (__mmask8)((1u << nr) - 1);
    _mm_mask_storeu_ps(out, m, _mm512_castps512_ps128(s));
    if (np > 1)
        _mm_mask_storeu_ps(out + ldo, m, _mm512_extractf32x4_ps(s, 1));
    if (np > 2)
        _mm_mask_storeu_ps(out + 2 * ldo, m, _mm512_extractf32x4_ps(s, 2));
    if (np > 3)
        _mm_mask_storeu_ps(out + 3 * ldo, m, _mm512_extractf32x4_ps(s, 3));
}

INLINE void store4x4_i32(int32_t *out, size_t ldo, size_t np, size_t nr, __m512i s)
{
    __mmask8 m = (__mmask8)((1u << nr) - 1);
    _mm_mask_storeu_epi32(out, m, _mm512_castsi512_si128(s));
    if (np > 1)
        _mm_mask_storeu_epi32(out + ldo, m, _mm512_extracti32x4_epi32(s, 1));
    if (np > 2)
        _mm_mask_storeu_epi32(out + 2 * ldo, m, _mm512_extracti32x4_epi32(s, 2));
    if (np > 3)
        _mm_mask_storeu_epi32(out + 3 * ldo, m, _mm512_extracti32x4_epi32(s, 3));
}

/* --------------------------------------------------------- float dense */

/* One probe against up to 16 consecutive rows, one row at a time so the
 * gallery is read strictly sequentially (the hardware prefetcher sees one
 * stream); each row's partial vector waits in part[] for the tree. Rows
 * past nr are not read; their lanes are not stored. */
INLINE void stream16_f32(const float *q, const float *g, size_t gs, size_t nr, size_t n,
                         float *out)
{
    __m512 part[16];
    for (size_t r = 0; r < 16; r++) {
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
        if (r < nr) {
            const float *row = g + r * gs;
            size_t i = 0;
            for (; i + 32 <= n; i += 32) {
                a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), _mm512_loadu_ps(row + i), a0);
                a1 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i + 16), _mm512_loadu_ps(row + i + 16), a1);
            }
            for (; i < n; i += 16) {
                __mmask16 m = tail16(n - i);
                a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q + i), _mm512_maskz_loadu_ps(m, row + i), a0);
            }
        }
        part[r] = _mm512_add_ps(a0, a1);
    }
    _mm512_mask_storeu_ps(out, tail16(nr), hsum16_ps(part));
}

INLINE void stream16_f16(const float *q, const uint16_t *g, size_t gs, size_t nr, size_t n,
                         float *out)
{
    __m512 part[16];
    for (size_t r = 0; r < 16; r++) {
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
        if (r < nr) {
            const uint16_t *row = g + r * gs;
            size_t i = 0;
            for (; i + 32 <= n; i += 32) {
                a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i),
                                     _mm512_cvtph_ps(_mm256_loadu_si256((const void *)(row + i))), a0);
                a1 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i + 16),
                                     _mm512_cvtph_ps(_mm256_loadu_si256((const void *)(row + i + 16))), a1);
            }
            for (; i < n; i += 16) {
                __mmask16 m = tail16(n - i);
                a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q + i), load_f16(row + i, m), a0);
            }
        }
        part[r] = _mm512_add_ps(a0, a1);
    }
    _mm512_mask_storeu_ps(out, tail16(nr), hsum16_ps(part));
}

/* 4 probes x 4 rows: 16 accumulators, each gallery load feeds 4 FMAs and
 * each probe load 4; one tree reduces all 16 at the end. */
#define PB 4
#define RB 4

INLINE void mk_f32(const float *q, size_t qs, size_t np, const float *g, size_t gs,
                   size_t nr, size_t n, float *out, size_t ldo)
{
    __m512 acc[PB * RB];
    for (size_t k = 0; k < PB * RB; k++)
        acc[k] = _mm512_setzero_ps();
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 m = tail16(n - i);
        __m512 gv[RB];
        for (size_t r = 0; r < RB; r++)
            gv[r] = r < nr ? _mm512_maskz_loadu_ps(m, g + r * gs + i) : _mm512_setzero_ps();
        for (size_t p = 0; p < PB; p++) {
            if (p >= np)
                break;
            __m512 qv = _mm512_maskz_loadu_ps(m, q + p * qs + i);
            for (size_t r = 0; r < RB; r++)
                acc[p * RB + r] = _mm512_fmadd_ps(qv, gv[r], acc[p * RB + r]);
        }
    }
    store4x4_ps(out, ldo, np, nr, hsum16_ps(acc));
}

INLINE void mk_f16(const float *q, size_t qs, size_t np, const uint16_t *g, size_t gs,
                   size_t nr, size_t n, float *out, size_t ldo)
{
    __m512 acc[PB * RB];
    for (size_t k = 0; k < PB * RB; k++)
        acc[k] = _mm512_setzero_ps();
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 m = tail16(n - i);
        __m512 gv[RB];
        for (size_t r = 0; r < RB; r++)
            gv[r] = r < nr ? load_f16(g + r * gs + i, m) : _mm512_setzero_ps();
        for (size_t p = 0; p < PB; p++) {
            if (p >= np)
                break;
            __m512 qv = _mm512_maskz_loadu_ps(m, q + p * qs + i);
            for (size_t r = 0; r < RB; r++)
                acc[p * RB + r] = _mm512_fmadd_ps(qv, gv[r], acc[p * RB + r]);
        }
    }
    store4x4_ps(out, ldo, np, nr, hsum16_ps(acc));
}

static void batch_f32(const float *q, size_t qstride, size_t nq, const float *g,
                      size_t gstride, size_t ng, size_t n, float *out, size_t ldo)
{
    for (size_t i = 0; i < nq; i += PB) {
        size_t np = nq - i < PB ? nq - i : PB;
        const float *qi = q + i * qstride;
        float *oi = out + i * ldo;
        size_t j = 0;
        if (np == 1) {
            /* A lone probe streams the rows (the gallery read is the cost). */
            for (; j + 16 <= ng; j += 16)
                stream16_f32(qi, g + j * gstride, gstride, 16, n, oi + j);
            if (j < ng)
                stream16_f32(qi, g + j * gstride, gstride, ng - j, n, oi + j);
            continue;
        }
        if (np == PB)
            for (; j + RB <= ng; j += RB)
                mk_f32(qi, qstride, PB, g + j * gstride, gstride, RB, n, oi + j, ldo);
        for (; j < ng; j += RB) {
            size_t nr = ng - j < RB ? ng - j : RB;
            mk_f32(qi, qstride, np, g + j * gstride, gstride, nr, n, oi + j, ldo);
        }
    }
}

static void batch_f16(const float *q, size_t qstride, size_t nq, const uint16_t *g,
                      size_t gstride, size_t ng, size_t n, float *out, size_t ldo)
{
    for (size_t i = 0; i < nq; i += PB) {
        size_t np = nq - i < PB ? nq - i : PB;
        const float *qi = q + i * qstride;
        float *oi = out + i * ldo;
        size_t j = 0;
        if (np == 1) {
            for (; j + 16 <= ng; j += 16)
                stream16_f16(qi, g + j * gstride, gstride, 16, n, oi + j);
            if (j < ng)
                stream16_f16(qi, g + j * gstride, gstride, ng - j, n, oi + j);
            continue;
        }
        if (np == PB)
            for (; j + RB <= ng; j += RB)
                mk_f16(qi, qstride, PB, g + j * gstride, gstride, RB, n, oi + j, ldo);
        for (; j < ng; j += RB) {
            size_t nr = ng - j < RB ? ng - j : RB;
            mk_f16(qi, qstride, np, g + j * gstride, gstride, nr, n, oi + j, ldo);
        }
    }
}

/* ----------------------------------------------------------- int8 dense */

#define QMAX 4096  /* longest dimension the biased probe buffer holds */

/* The VNNI formulation: VPDPBUSD multiplies unsigned by signed bytes, so
 * the gallery bytes are biased, u = g + 128 = g ^ 0x80 (one XOR per
 * gallery load, shared by every probe of the block), the probe stays
 * signed, and sum(u * q) = dot(g, q) + 128 * sum(q): the correction is one
 * constant per probe, so no per-row gallery sum is kept. Exact in int32
 * (|sum| <= 255 * 128 * 4096 < 2^31). Masked-off gallery lanes load 0 and
 * bias to 128, but the probe buffer is zero past n, so they add nothing. */
INLINE __m512i load_gu(__mmask64 m, const int8_t *p)
{
    return _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, p), _mm512_set1_epi8((char)0x80));
}

INLINE __m512i loadu_gu(const int8_t *p)
{
    return _mm512_xor_si512(_mm512_loadu_si512((const void *)p), _mm512_set1_epi8((char)0x80));
}

/* One probe (zero past n; 'qbias' = 128 * its sum) against up to 16
 * consecutive rows. */
INLINE void stream16_i8(const int8_t *qs_, int32_t qbias, const int8_t *g, size_t gs, size_t nr,
                        size_t n, int32_t *out)
{
    __m512i part[16];
    for (size_t r = 0; r < 16; r++) {
        __m512i a0 = _mm512_setzero_si512(), a1 = _mm512_setzero_si512();
        if (r < nr) {
            const int8_t *row = g + r * gs;
            size_t i = 0;
            for (; i + 128 <= n; i += 128) {
                a0 = _mm512_dpbusd_epi32(a0, loadu_gu(row + i),
                                         _mm512_load_si512((const void *)(qs_ + i)));
                a1 = _mm512_dpbusd_epi32(a1, loadu_gu(row + i + 64),
                                         _mm512_load_si512((const void *)(qs_ + i + 64)));
            }
            for (; i < n; i += 64)
                a0 = _mm512_dpbusd_epi32(a0, load_gu(tail64(n - i), row + i),
                                         _mm512_load_si512((const void *)(qs_ + i)));
        }
        part[r] = _mm512_add_epi32(a0, a1);
    }
    __mmask16 m = tail16(nr);
    __m512i s = _mm512_sub_epi32(hsum16_i32(part), _mm512_set1_epi32(qbias));
    _mm512_mask_storeu_epi32(out, m, s);
}

INLINE void mk_i8(const int8_t *qb, size_t qs, const int32_t *qbias, size_t np, const int8_t *g,
                  size_t gs, size_t nr, size_t n, int32_t *out, size_t ldo)
{
    __m512i acc[PB * RB];
    for (size_t k = 0; k < PB * RB; k++)
        acc[k] = _mm512_setzero_si512();
    for (size_t i = 0; i < n; i += 64) {
        __mmask64 m = tail64(n - i);
        __m512i gv[RB];
        for (size_t r = 0; r < RB; r++)
            gv[r] = r < nr ? load_gu(m, g + r * gs + i) : _mm512_setzero_si512();
        for (size_t p = 0; p < PB; p++) {
            if (p >= np)
                break;
            /* The probe buffer is zero past n, so no mask is needed. */
            __m512i qv = _mm512_load_si512((const void *)(qb + p * qs + i));
            for (size_t r = 0; r < RB; r++)
                acc[p * RB + r] = _mm512_dpbusd_epi32(acc[p * RB + r], gv[r], qv);
        }
    }
    /* Lane 4p + r needs probe p's correction. */
    __m512i bias = _mm512_setr_epi32(qbias[0], qbias[0], qbias[0], qbias[0],
                                     qbias[1], qbias[1], qbias[1], qbias[1],
                                     qbias[2], qbias[2], qbias[2], qbias[2],
                                     qbias[3], qbias[3], qbias[3], qbias[3]);
    store4x4_i32(out, ldo, np, nr, _mm512_sub_epi32(hsum16_i32(acc), bias));
}

static void batch_i8(const int8_t *q, size_t qstride, size_t nq, const int8_t *g,
                     size_t gstride, size_t ng, size_t n, int32_t *out, size_t ldo)
{
    if (n > QMAX) {
        bm_kernels_scalar.batch_i8(q, qstride, nq, g, gstride, ng, n, out, ldo);
        return;
    }
    size_t qs = (n + 63) & ~(size_t)63;
    _Alignas(64) int8_t qb[PB * QMAX];
    int32_t qbias[PB];
    for (size_t i = 0; i < nq; i += PB) {
        size_t np = nq - i < PB ? nq - i : PB;
        /* Copy this block of probes once, aligned and zero past n, and
         * take 128 * sum(q) of each (VPDPBUSD of 0x01 bytes by q). */
        for (size_t p = 0; p < PB; p++) {
            qbias[p] = 0;
            if (p >= np)
                continue;
            int8_t *dst = qb + p * qs;
            const int8_t *src = q + (i + p) * qstride;
            __m512i sum = _mm512_setzero_si512();
            for (size_t k = 0; k < qs; k += 64) {
                __m512i v = _mm512_maskz_loadu_epi8(tail64(n > k ? n - k : 0), src + k);
                sum = _mm512_dpbusd_epi32(sum, _mm512_set1_epi8(1), v);
                _mm512_store_si512((void *)(dst + k), v);
            }
            qbias[p] = _mm512_reduce_add_epi32(sum) * 128;
        }
        int32_t *oi = out + i * ldo;
        size_t j = 0;
        if (np == 1) {
            for (; j + 16 <= ng; j += 16)
                stream16_i8(qb, qbias[0], g + j * gstride, gstride, 16, n, oi + j);
            if (j < ng)
                stream16_i8(qb, qbias[0], g + j * gstride, gstride, ng - j, n, oi + j);
            continue;
        }
        if (np == PB)
            for (; j + RB <= ng; j += RB)
                mk_i8(qb, qs, qbias, PB, g + j * gstride, gstride, RB, n, oi + j, ldo);
        for (; j < ng; j += RB) {
            size_t nr = ng - j < RB ? ng - j : RB;
            mk_i8(qb, qs, qbias, np, g + j * gstride, gstride, nr, n, oi + j, ldo);
        }
    }
}

/* ---------------------------------------------------------- score filter */

static void scale_i8(const int32_t *dot, const float *gscale, float pscale, size_t n, float *out)
{
    __m512 ps = _mm512_set1_ps(pscale);
    for (size_t j = 0; j < n; j += 16) {
        __mmask16 m = tail16(n - j);
        __m512 d = _mm512_cvtepi32_ps(_mm512_maskz_loadu_epi32(m, dot + j));
        __m512 s = _mm512_mul_ps(d, _mm512_mul_ps(ps, _mm512_maskz_loadu_ps(m, gscale + j)));
        _mm512_mask_storeu_ps(out + j, m, s);
    }
}

static size_t select_ge(const float *s, size_t n, float floor, uint32_t *idx)
{
    __m512 f = _mm512_set1_ps(floor);
    size_t c = 0;
    for (size_t j = 0; j < n; j += 16) {
        __mmask16 m = tail16(n - j);
        /* Ordered compare: NaN never passes. */
        unsigned hit = _mm512_mask_cmp_ps_mask(m, _mm512_maskz_loadu_ps(m, s + j), f, _CMP_GE_OQ);
        while (hit != 0) {
            idx[c++] = (uint32_t)(j + (size_t)__builtin_ctz(hit));
            hit &= hit - 1;
        }
    }
    return c;
}

/* ---------------------------------------------------------------- iris */

static void iris_counts(const uint8_t *pc, const uint8_t *pm, size_t pstride,
                        size_t nshift, const uint8_t *gc, const uint8_t *gm,
                        size_t nbytes, uint32_t *diff, uint32_t *valid)
{
    for (size_t s = 0; s < nshift; s++) {
        const uint8_t *c = pc + s * pstride, *mk = pm + s * pstride;
        __m512i d0 = _mm512_setzero_si512(), v0 = _mm512_setzero_si512();
        __m512i d1 = _mm512_setzero_si512(), v1 = _mm512_setzero_si512();
        size_t i = 0;
        for (; i + 128 <= nbytes; i += 128) {
            __m512i va = _mm512_and_si512(_mm512_loadu_si512((const void *)(mk + i)),
                                          _mm512_loadu_si512((const void *)(gm + i)));
            __m512i vb = _mm512_and_si512(_mm512_loadu_si512((const void *)(mk + i + 64)),
                                          _mm512_loadu_si512((const void *)(gm + i + 64)));
            /* 0x28 = (a ^ b) & c */
            __m512i da = _mm512_ternarylogic_epi64(_mm512_loadu_si512((const void *)(c + i)),
                                                   _mm512_loadu_si512((const void *)(gc + i)), va, 0x28);
            __m512i db = _mm512_ternarylogic_epi64(_mm512_loadu_si512((const void *)(c + i + 64)),
                                                   _mm512_loadu_si512((const void *)(gc + i + 64)), vb, 0x28);
            v0 = _mm512_add_epi64(v0, _mm512_popcnt_epi64(va));
            d0 = _mm512_add_epi64(d0, _mm512_popcnt_epi64(da));
            v1 = _mm512_add_epi64(v1, _mm512_popcnt_epi64(vb));
            d1 = _mm512_add_epi64(d1, _mm512_popcnt_epi64(db));
        }
        for (; i < nbytes; i += 64) {
            __mmask64 m = tail64(nbytes - i);
            __m512i va = _mm512_and_si512(_mm512_maskz_loadu_epi8(m, mk + i),
                                          _mm512_maskz_loadu_epi8(m, gm + i));
            __m512i da = _mm512_ternarylogic_epi64(_mm512_maskz_loadu_epi8(m, c + i),
                                                   _mm512_maskz_loadu_epi8(m, gc + i), va, 0x28);
            v0 = _mm512_add_epi64(v0, _mm512_popcnt_epi64(va));
            d0 = _mm512_add_epi64(d0, _mm512_popcnt_epi64(da));
        }
        diff[s] = (uint32_t)_mm512_reduce_add_epi64(_mm512_add_epi64(d0, d1));
        valid[s] = (uint32_t)_mm512_reduce_add_epi64(_mm512_add_epi64(v0, v1));
    }
}

/* Rows x shifts register blocking: IR gallery rows against IS probe
 * variants, 2 * IR * IS accumulators (diff and valid per pair), so per
 * 64-byte step 2 * (IR + IS) loads serve IR * IS pairs. One hsum16 tree
 * reduces all 16 accumulators (the 64-bit popcount lanes have zero upper
 * halves, so summing 32-bit lanes is exact). */
#define IR 4
#define IS 2

INLINE void iris_step(const uint8_t *pc, const uint8_t *pm, size_t pstride, size_t ns,
                      const uint8_t *g, size_t gstride, size_t moff, size_t nr, size_t i,
                      __mmask64 m, __m512i *acc)
{
    __m512i c[IS], k[IS];
    for (size_t s = 0; s < IS; s++) {
        c[s] = s < ns ? _mm512_maskz_loadu_epi8(m, pc + s * pstride + i) : _mm512_setzero_si512();
        k[s] = s < ns ? _mm512_maskz_loadu_epi8(m, pm + s * pstride + i) : _mm512_setzero_si512();
    }
    for (size_t r = 0; r < IR; r++) {
        if (r >= nr)
            break;
        const uint8_t *row = g + r * gstride + i;
        __m512i gc = _mm512_maskz_loadu_epi8(m, row);
        __m512i gm = _mm512_maskz_loadu_epi8(m, row + moff);
        for (size_t s = 0; s < IS; s++) {
            if (s >= ns)
                break;
            __m512i va = _mm512_and_si512(k[s], gm);
            acc[2 * (r * IS + s) + 1] =
                _mm512_add_epi64(acc[2 * (r * IS + s) + 1], _mm512_popcnt_epi64(va));
            /* 0x60 = a & (b ^ c): overwrites va, which is dead by now, so
             * no register copy is needed. */
            __m512i da = _mm512_ternarylogic_epi64(va, c[s], gc, 0x60);
            acc[2 * (r * IS + s)] = _mm512_add_epi64(acc[2 * (r * IS + s)], _mm512_popcnt_epi64(da));
        }
    }
}

INLINE void iris_blk(const uint8_t *pc, const uint8_t *pm, size_t pstride, size_t ns,
                     const uint8_t *g, size_t gstride, size_t moff, size_t nr, size_t nbytes,
                     uint32_t *diff, uint32_t *valid, size_t ldo)
{
    __m512i acc[16];
    for (size_t k = 0; k < 16; k++)
        acc[k] = _mm512_setzero_si512();
    /* The partial step first, so the accumulators leave the main loop
     * straight into the reduction. */
    size_t full = nbytes & ~(size_t)63;
    if (full < nbytes)
        iris_step(pc, pm, pstride, ns, g, gstride, moff, nr, full, tail64(nbytes - full), acc);
    for (size_t i = 0; i < full; i += 64)
        iris_step(pc, pm, pstride, ns, g, gstride, moff, nr, i, ~(__mmask64)0, acc);
    _Alignas(64) uint32_t sum[16];
    _mm512_store_si512((void *)sum, hsum16_i32(acc));
    for (size_t r = 0; r < nr; r++)
        for (size_t s = 0; s < ns; s++) {
            diff[r * ldo + s] = sum[2 * (r * IS + s)];
            valid[r * ldo + s] = sum[2 * (r * IS + s) + 1];
        }
}

static void iris_rows(const uint8_t *pc, const uint8_t *pm, size_t pstride, size_t nshift,
                      const uint8_t *g, size_t gstride, size_t moff, size_t nrows,
                      size_t nbytes, uint32_t *diff, uint32_t *valid)
{
    /* Shift groups outside: the group's variants stay in L1 while the
     * caller's few rows (also L1) pass under them. */
    for (size_t s0 = 0; s0 < nshift; s0 += IS) {
        size_t ns = nshift - s0 < IS ? nshift - s0 : IS;
        const uint8_t *c = pc + s0 * pstride, *k = pm + s0 * pstride;
        for (size_t r0 = 0; r0 < nrows; r0 += IR) {
            size_t nr = nrows - r0 < IR ? nrows - r0 : IR;
            const uint8_t *row = g + r0 * gstride;
            uint32_t *d = diff + r0 * nshift + s0, *v = valid + r0 * nshift + s0;
            if (ns == IS && nr == IR)
                iris_blk(c, k, pstride, IS, row, gstride, moff, IR, nbytes, d, v, nshift);
            else if (ns == 1 && nr == IR)
                iris_blk(c, k, pstride, 1, row, gstride, moff, IR, nbytes, d, v, nshift);
            else
                iris_blk(c, k, pstride, ns, row, gstride, moff, nr, nbytes, d, v, nshift);
        }
    }
}

const struct bm_kernels bm_kernels_avx512 = {
    .name = "avx512",
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
