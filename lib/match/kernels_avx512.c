/* AVX-512 kernels (F/BW/VL/DQ + VNNI + VPOPCNTDQ); compiled alone with those
 * flags, reached only through the dispatch table when cpu.c says the CPU
 * has them.
 *
 * Tails use masked loads, so no kernel reads past its inputs. Batched
 * kernels are register-blocked: PB probes x RB gallery rows of accumulators,
 * each gallery vector load feeds PB multiply-adds and each probe load RB.
 * int8 uses VPDPBUSD, which needs one unsigned operand: the probe is biased
 * to q + 128 and 128 * sum(g) is subtracted, which is exact in int32. */
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

/* ------------------------------------------------------------ f32 batch */

#define PB 4
#define RB 4

INLINE void mk_f32(const float *q, size_t qs, size_t np, const float *g, size_t gs,
                   size_t nr, size_t n, float *out, size_t ldo)
{
    __m512 acc[PB][RB];
    for (size_t p = 0; p < PB; p++)
        for (size_t r = 0; r < RB; r++)
            acc[p][r] = _mm512_setzero_ps();
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
                if (r < nr)
                    acc[p][r] = _mm512_fmadd_ps(qv, gv[r], acc[p][r]);
        }
    }
    for (size_t p = 0; p < np; p++)
        for (size_t r = 0; r < nr; r++)
            out[p * ldo + r] = _mm512_reduce_add_ps(acc[p][r]);
}

static void batch_f32(const float *q, size_t qstride, size_t nq, const float *g,
                      size_t gstride, size_t ng, size_t n, float *out, size_t ldo)
{
    for (size_t i = 0; i < nq; i += PB) {
        size_t np = nq - i < PB ? nq - i : PB;
        size_t j = 0;
        if (np == PB) {
            for (; j + RB <= ng; j += RB)
                mk_f32(q + i * qstride, qstride, PB, g + j * gstride, gstride, RB, n,
                       out + i * ldo + j, ldo);
        }
        for (; j < ng; j += RB) {
            size_t nr = ng - j < RB ? ng - j : RB;
            mk_f32(q + i * qstride, qstride, np, g + j * gstride, gstride, nr, n,
                   out + i * ldo + j, ldo);
        }
    }
}

/* ------------------------------------------------------------ f16 batch */

INLINE void mk_f16(const float *q, size_t qs, size_t np, const uint16_t *g, size_t gs,
                   size_t nr, size_t n, float *out, size_t ldo)
{
    __m512 acc[PB][RB];
    for (size_t p = 0; p < PB; p++)
        for (size_t r = 0; r < RB; r++)
            acc[p][r] = _mm512_setzero_ps();
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
                if (r < nr)
                    acc[p][r] = _mm512_fmadd_ps(qv, gv[r], acc[p][r]);
        }
    }
    for (size_t p = 0; p < np; p++)
        for (size_t r = 0; r < nr; r++)
            out[p * ldo + r] = _mm512_reduce_add_ps(acc[p][r]);
}

static void batch_f16(const float *q, size_t qstride, size_t nq, const uint16_t *g,
                      size_t gstride, size_t ng, size_t n, float *out, size_t ldo)
{
    for (size_t i = 0; i < nq; i += PB) {
        size_t np = nq - i < PB ? nq - i : PB;
        size_t j = 0;
        if (np == PB) {
            for (; j + RB <= ng; j += RB)
                mk_f16(q + i * qstride, qstride, PB, g + j * gstride, gstride, RB, n,
                       out + i * ldo + j, ldo);
        }
        for (; j < ng; j += RB) {
            size_t nr = ng - j < RB ? ng - j : RB;
            mk_f16(q + i * qstride, qstride, np, g + j * gstride, gstride, nr, n,
                   out + i * ldo + j, ldo);
        }
    }
}

/* ----------------------------------------------------------- int8 batch */

#define IPB 4
#define IRB 4
#define QMAX 4096  /* longest dimension the biased probe buffer holds */

INLINE void mk_i8(const uint8_t *qu, size_t qs, size_t np, const int8_t *g, size_t gs,
                  const int32_t *gsum, size_t nr, size_t n, int32_t *out, size_t ldo)
{
    __m512i acc[IPB][IRB];
    for (size_t p = 0; p < IPB; p++)
        for (size_t r = 0; r < IRB; r++)
            acc[p][r] = _mm512_setzero_si512();
    for (size_t i = 0; i < n; i += 64) {
        __mmask64 m = tail64(n - i);
        __m512i gv[IRB];
        for (size_t r = 0; r < IRB; r++)
            gv[r] = r < nr ? _mm512_maskz_loadu_epi8(m, g + r * gs + i) : _mm512_setzero_si512();
        for (size_t p = 0; p < IPB; p++) {
            if (p >= np)
                break;
            /* The biased buffer is zero past n, so no mask is needed. */
            __m512i qv = _mm512_loadu_si512((const void *)(qu + p * qs + i));
            for (size_t r = 0; r < IRB; r++)
                if (r < nr)
                    acc[p][r] = _mm512_dpbusd_epi32(acc[p][r], qv, gv[r]);
        }
    }
    for (size_t p = 0; p < np; p++)
        for (size_t r = 0; r < nr; r++)
            out[p * ldo + r] = _mm512_reduce_add_epi32(acc[p][r]) - 128 * gsum[r];
}

static void batch_i8(const int8_t *q, size_t qstride, size_t nq, const int8_t *g,
                     size_t gstride, const int32_t *gsum, size_t ng, size_t n,
                     int32_t *out, size_t ldo)
{
    if (n > QMAX) {
        bm_kernels_scalar.batch_i8(q, qstride, nq, g, gstride, gsum, ng, n, out, ldo);
        return;
    }
    size_t qs = (n + 63) & ~(size_t)63;
    _Alignas(64) uint8_t qu[IPB * QMAX];
    for (size_t i = 0; i < nq; i += IPB) {
        size_t np = nq - i < IPB ? nq - i : IPB;
        /* Bias this block of probes once: u = q + 128 = q ^ 0x80, zeros
         * past n so the masked gallery tail multiplies to nothing. */
        for (size_t p = 0; p < np; p++) {
            uint8_t *dst = qu + p * qs;
            const int8_t *src = q + (i + p) * qstride;
            for (size_t k = 0; k < qs; k += 64) {
                __mmask64 m = tail64(n > k ? n - k : 0);
                __m512i v = _mm512_maskz_loadu_epi8(m, src + k);
                v = _mm512_maskz_mov_epi8(m, _mm512_xor_si512(v, _mm512_set1_epi8((char)0x80)));
                _mm512_store_si512((void *)(dst + k), v);
            }
        }
        size_t j = 0;
        if (np == IPB) {
            for (; j + IRB <= ng; j += IRB)
                mk_i8(qu, qs, IPB, g + j * gstride, gstride, gsum + j, IRB, n,
                      out + i * ldo + j, ldo);
        }
        for (; j < ng; j += IRB) {
            size_t nr = ng - j < IRB ? ng - j : IRB;
            mk_i8(qu, qs, np, g + j * gstride, gstride, gsum + j, nr, n,
                  out + i * ldo + j, ldo);
        }
    }
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

const struct bm_kernels bm_kernels_avx512 = {
    .name = "avx512",
    .dot_f32 = dot_f32,
    .dot_f16 = dot_f16,
    .dot_i8 = dot_i8,
    .batch_f32 = batch_f32,
    .batch_f16 = batch_f16,
    .batch_i8 = batch_i8,
    .iris_counts = iris_counts,
};
