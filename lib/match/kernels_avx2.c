/* AVX2 + FMA + F16C kernels; compiled alone with -mavx2 -mfma -mf16c and
 * reached only through the dispatch table.
 *
 * Tails: float kernels use VMASKMOV (never faults on masked-off lanes);
 * byte kernels copy the last partial block into a zeroed stack buffer, so
 * nothing reads past its inputs. int8 sign-extends to int16 and uses
 * VPMADDWD, exact with int32 accumulation (VPMADDUBSW would saturate). Iris
 * popcount is the nibble-lookup (VPSHUFB) method with byte counters folded
 * into 64-bit lanes by VPSADBW. */
#include "match/kernels.h"

#include <immintrin.h>
#include <string.h>

#define INLINE static inline __attribute__((always_inline))

INLINE __m256i tail8(size_t left)
{
    int k = left >= 8 ? 8 : (int)left;
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(k), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

INLINE float hsum(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

INLINE int32_t hsum_i32(__m256i v)
{
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

INLINE __m256 load_f32(const float *p, size_t left)
{
    if (left >= 8)
        return _mm256_loadu_ps(p);
    return _mm256_maskload_ps(p, tail8(left));
}

INLINE __m256 load_f16(const uint16_t *p, size_t left)
{
    if (left >= 8)
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)p));
    uint16_t buf[8] = {0};
    memcpy(buf, p, left * sizeof *p);
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)buf));
}

/* 16 int8 -> 16 int16 */
INLINE __m256i load_i8(const int8_t *p, size_t left)
{
    if (left >= 16)
        return _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(const void *)p));
    int8_t buf[16] = {0};
    memcpy(buf, p, left);
    return _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(const void *)buf));
}

static float dot_f32(const float *a, const float *b, size_t n)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    for (; i < n; i += 8)
        s0 = _mm256_fmadd_ps(load_f32(a + i, n - i), load_f32(b + i, n - i), s0);
    return hsum(_mm256_add_ps(s0, s1));
}

/* f32 x int8: 8 bytes sign-extended to int32 and converted (exact), then
 * FMA; the last partial block goes through a zeroed stack copy. */
static float dot_f32i8(const float *a, const int8_t *b, size_t n)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m128i x = _mm_loadu_si128((const __m128i *)(const void *)(b + i));
        __m256 y0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(x));
        __m256 y1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(x, 8)));
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), y0, s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), y1, s1);
    }
    for (; i < n; i += 8) {
        size_t left = n - i < 8 ? n - i : 8;
        int8_t buf[16] = {0};
        memcpy(buf, b + i, left);
        __m256 y = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(const void *)buf)));
        s0 = _mm256_fmadd_ps(load_f32(a + i, n - i), y, s0);
    }
    return hsum(_mm256_add_ps(s0, s1));
}

static float dot_f16(const float *a, const uint16_t *b, size_t n)
{
    __m256 s0 = _mm256_setzero_ps();
    for (size_t i = 0; i < n; i += 8)
        s0 = _mm256_fmadd_ps(load_f32(a + i, n - i), load_f16(b + i, n - i), s0);
    return hsum(s0);
}

static int32_t dot_i8(const int8_t *a, const int8_t *b, size_t n)
{
    __m256i s = _mm256_setzero_si256();
    for (size_t i = 0; i < n; i += 16)
        s = _mm256_add_epi32(s, _mm256_madd_epi16(load_i8(a + i, n - i), load_i8(b + i, n - i)));
    return hsum_i32(s);
}

/* --------------------------------------------------------------- batches */

#define PB 4
#define RB 3

INLINE void mk_f32(const float *q, size_t qs, size_t np, const float *g, size_t gs,
                   size_t nr, size_t n, float *out, size_t ldo)
{
    __m256 acc[PB][RB];
    for (size_t p = 0; p < PB; p++)
        for (size_t r = 0; r < RB; r++)
            acc[p][r] = _mm256_setzero_ps();
    for (size_t i = 0; i < n; i += 8) {
        __m256 gv[RB];
        for (size_t r = 0; r < RB; r++)
            gv[r] = r < nr ? load_f32(g + r * gs + i, n - i) : _mm256_setzero_ps();
        for (size_t p = 0; p < PB; p++) {
            if (p >= np)
                break;
            __m256 qv = load_f32(q + p * qs + i, n - i);
            for (size_t r = 0; r < RB; r++)
                if (r < nr)
                    acc[p][r] = _mm256_fmadd_ps(qv, gv[r], acc[p][r]);
        }
    }
    for (size_t p = 0; p < np; p++)
        for (size_t r = 0; r < nr; r++)
            out[p * ldo + r] = hsum(acc[p][r]);
}

INLINE void mk_f16(const float *q, size_t qs, size_t np, const uint16_t *g, size_t gs,
                   size_t nr, size_t n, float *out, size_t ldo)
{
    __m256 acc[PB][RB];
    for (size_t p = 0; p < PB; p++)
        for (size_t r = 0; r < RB; r++)
            acc[p][r] = _mm256_setzero_ps();
    for (size_t i = 0; i < n; i += 8) {
        __m256 gv[RB];
        for (size_t r = 0; r < RB; r++)
            gv[r] = r < nr ? load_f16(g + r * gs + i, n - i) : _mm256_setzero_ps();
        for (size_t p = 0; p < PB; p++) {
            if (p >= np)
                break;
            __m256 qv = load_f32(q + p * qs + i, n - i);
            for (size_t r = 0; r < RB; r++)
                if (r < nr)
                    acc[p][r] = _mm256_fmadd_ps(qv, gv[r], acc[p][r]);
        }
    }
    for (size_t p = 0; p < np; p++)
        for (size_t r = 0; r < nr; r++)
            out[p * ldo + r] = hsum(acc[p][r]);
}

INLINE void mk_i8(const int8_t *q, size_t qs, size_t np, const int8_t *g, size_t gs,
                  size_t nr, size_t n, int32_t *out, size_t ldo)
{
    __m256i acc[PB][RB];
    for (size_t p = 0; p < PB; p++)
        for (size_t r = 0; r < RB; r++)
            acc[p][r] = _mm256_setzero_si256();
    for (size_t i = 0; i < n; i += 16) {
        __m256i gv[RB];
        for (size_t r = 0; r < RB; r++)
            gv[r] = r < nr ? load_i8(g + r * gs + i, n - i) : _mm256_setzero_si256();
        for (size_t p = 0; p < PB; p++) {
            if (p >= np)
                break;
            __m256i qv = load_i8(q + p * qs + i, n - i);
            for (size_t r = 0; r < RB; r++)
                if (r < nr)
                    acc[p][r] = _mm256_add_epi32(acc[p][r], _mm256_madd_epi16(qv, gv[r]));
        }
    }
    for (size_t p = 0; p < np; p++)
        for (size_t r = 0; r < nr; r++)
            out[p * ldo + r] = hsum_i32(acc[p][r]);
}

/* ------------------------------------------------------ lone probe path */

/* Lane k of the result is the sum of the 8 lanes of v[k] (horizontal adds
 * and one 128-bit lane swap: 7 instructions for 8 sums). */
INLINE __m256 hsum8_ps(const __m256 *v)
{
    __m256 a0 = _mm256_hadd_ps(v[0], v[1]), a1 = _mm256_hadd_ps(v[2], v[3]);
    __m256 a2 = _mm256_hadd_ps(v[4], v[5]), a3 = _mm256_hadd_ps(v[6], v[7]);
    __m256 b0 = _mm256_hadd_ps(a0, a1), b1 = _mm256_hadd_ps(a2, a3);
    return _mm256_add_ps(_mm256_permute2f128_ps(b0, b1, 0x20), _mm256_permute2f128_ps(b0, b1, 0x31));
}

INLINE __m256i hsum8_i32(const __m256i *v)
{
    __m256i a0 = _mm256_hadd_epi32(v[0], v[1]), a1 = _mm256_hadd_epi32(v[2], v[3]);
    __m256i a2 = _mm256_hadd_epi32(v[4], v[5]), a3 = _mm256_hadd_epi32(v[6], v[7]);
    __m256i b0 = _mm256_hadd_epi32(a0, a1), b1 = _mm256_hadd_epi32(a2, a3);
    return _mm256_add_epi32(_mm256_permute2x128_si256(b0, b1, 0x20),
                            _mm256_permute2x128_si256(b0, b1, 0x31));
}

/* One probe against up to 8 consecutive rows, read one after another (a
 * single sequential stream); rows past nr are neither read nor stored. */
INLINE void stream8_f32(const float *q, const float *g, size_t gs, size_t nr, size_t n, float *out)
{
    __m256 part[8];
    for (size_t r = 0; r < 8; r++) {
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        if (r < nr) {
            const float *row = g + r * gs;
            size_t i = 0;
            for (; i + 16 <= n; i += 16) {
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_loadu_ps(row + i), a0);
                a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 8), _mm256_loadu_ps(row + i + 8), a1);
            }
            for (; i < n; i += 8)
                a0 = _mm256_fmadd_ps(load_f32(q + i, n - i), load_f32(row + i, n - i), a0);
        }
        part[r] = _mm256_add_ps(a0, a1);
    }
    _mm256_maskstore_ps(out, tail8(nr), hsum8_ps(part));
}

INLINE void stream8_f16(const float *q, const uint16_t *g, size_t gs, size_t nr, size_t n,
                        float *out)
{
    __m256 part[8];
    for (size_t r = 0; r < 8; r++) {
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        if (r < nr) {
            const uint16_t *row = g + r * gs;
            size_t i = 0;
            for (; i + 16 <= n; i += 16) {
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), load_f16(row + i, 8), a0);
                a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 8), load_f16(row + i + 8, 8), a1);
            }
            for (; i < n; i += 8)
                a0 = _mm256_fmadd_ps(load_f32(q + i, n - i), load_f16(row + i, n - i), a0);
        }
        part[r] = _mm256_add_ps(a0, a1);
    }
    _mm256_maskstore_ps(out, tail8(nr), hsum8_ps(part));
}

INLINE void stream8_i8(const int8_t *q, const int8_t *g, size_t gs, size_t nr, size_t n,
                       int32_t *out)
{
    __m256i part[8];
    for (size_t r = 0; r < 8; r++) {
        __m256i a0 = _mm256_setzero_si256(), a1 = _mm256_setzero_si256();
        if (r < nr) {
            const int8_t *row = g + r * gs;
            size_t i = 0;
            for (; i + 32 <= n; i += 32) {
                a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(load_i8(q + i, 16), load_i8(row + i, 16)));
                a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(load_i8(q + i + 16, 16),
                                                            load_i8(row + i + 16, 16)));
            }
            for (; i < n; i += 16)
                a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(load_i8(q + i, n - i), load_i8(row + i, n - i)));
        }
        part[r] = _mm256_add_epi32(a0, a1);
    }
    _mm256_maskstore_epi32(out, tail8(nr), hsum8_i32(part));
}

/* The common blocking loop: a lone probe streams; otherwise full PB x RB
 * blocks, then the ragged edges. */
#define BATCH_LOOP(MK, STREAM)                                                     \
    for (size_t i = 0; i < nq; i += PB) {                                         \
        size_t np = nq - i < PB ? nq - i : PB;                                    \
        if (np == 1) {                                                            \
            for (size_t j = 0; j < ng; j += 8)                                    \
                STREAM(q + i * qstride, g + j * gstride, gstride,                 \
                       ng - j < 8 ? ng - j : 8, n, out + i * ldo + j);            \
            continue;                                                             \
        }                                                                         \
        for (size_t j = 0; j < ng; j += RB) {                                     \
            size_t nr = ng - j < RB ? ng - j : RB;                                \
            if (np == PB && nr == RB)                                             \
                MK(q + i * qstride, qstride, PB, g + j * gstride, gstride, RB,    \
                   n, out + i * ldo + j, ldo);                                    \
            else                                                                  \
                MK(q + i * qstride, qstride, np, g + j * gstride, gstride, nr,    \
                   n, out + i * ldo + j, ldo);                                    \
        }                                                                         \
    }

static void batch_f32(const float *q, size_t qstride, size_t nq, const float *g,
                      size_t gstride, size_t ng, size_t n, float *out, size_t ldo)
{
    BATCH_LOOP(mk_f32, stream8_f32)
}

static void batch_f16(const float *q, size_t qstride, size_t nq, const uint16_t *g,
                      size_t gstride, size_t ng, size_t n, float *out, size_t ldo)
{
    BATCH_LOOP(mk_f16, stream8_f16)
}

static void batch_i8(const int8_t *q, size_t qstride, size_t nq, const int8_t *g,
                     size_t gstride, size_t ng, size_t n,
                     int32_t *out, size_t ldo)
{
    BATCH_LOOP(mk_i8, stream8_i8)
}

/* ---------------------------------------------------------------- iris */

INLINE __m256i popcnt8(__m256i x, __m256i lut, __m256i low)
{
    __m256i lo = _mm256_and_si256(x, low);
    __m256i hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), low);
    return _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
}

static void iris_counts(const uint8_t *pc, const uint8_t *pm, size_t pstride,
                        size_t nshift, const uint8_t *gc, const uint8_t *gm,
                        size_t nbytes, uint32_t *diff, uint32_t *valid)
{
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0f);
    const __m256i zero = _mm256_setzero_si256();
    size_t full = nbytes & ~(size_t)31;
    for (size_t s = 0; s < nshift; s++) {
        const uint8_t *c = pc + s * pstride, *mk = pm + s * pstride;
        __m256i dsum = zero, vsum = zero;
        size_t i = 0;
        while (i < full) {
            /* Byte counters hold at most 8 per block: flush every 31. */
            size_t end = i + 31 * 32 < full ? i + 31 * 32 : full;
            __m256i db = zero, vb = zero;
            for (; i < end; i += 32) {
                __m256i v = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(const void *)(mk + i)),
                                             _mm256_loadu_si256((const __m256i *)(const void *)(gm + i)));
                __m256i x = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(const void *)(c + i)),
                                             _mm256_loadu_si256((const __m256i *)(const void *)(gc + i)));
                vb = _mm256_add_epi8(vb, popcnt8(v, lut, low));
                db = _mm256_add_epi8(db, popcnt8(_mm256_and_si256(x, v), lut, low));
            }
            vsum = _mm256_add_epi64(vsum, _mm256_sad_epu8(vb, zero));
            dsum = _mm256_add_epi64(dsum, _mm256_sad_epu8(db, zero));
        }
        uint64_t d = 0, v = 0;
        uint64_t lanes[4];
        _mm256_storeu_si256((__m256i *)(void *)lanes, dsum);
        d = lanes[0] + lanes[1] + lanes[2] + lanes[3];
        _mm256_storeu_si256((__m256i *)(void *)lanes, vsum);
        v = lanes[0] + lanes[1] + lanes[2] + lanes[3];
        for (; i < nbytes; i++) {
            unsigned vbits = (unsigned)(mk[i] & gm[i]);
            v += (uint64_t)__builtin_popcount(vbits);
            d += (uint64_t)__builtin_popcount((unsigned)(c[i] ^ gc[i]) & vbits);
        }
        diff[s] = (uint32_t)d;
        valid[s] = (uint32_t)v;
    }
}

/* ---------------------------------------------------------- score filter */

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
    __m256 ps = _mm256_set1_ps(pscale);
    size_t j = 0;
    for (; j + 8 <= n; j += 8) {
        __m256 d = _mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i *)(const void *)(dot + j)));
        _mm256_storeu_ps(out + j, _mm256_mul_ps(d, _mm256_mul_ps(ps, _mm256_loadu_ps(gscale + j))));
    }
    for (; j < n; j++)
        out[j] = (float)dot[j] * (pscale * gscale[j]);
}

static size_t select_ge(const float *s, size_t n, float floor, uint32_t *idx)
{
    __m256 f = _mm256_set1_ps(floor);
    size_t c = 0, j = 0;
    for (; j + 8 <= n; j += 8) {
        /* Ordered compare: NaN never passes. */
        unsigned hit = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(s + j), f, _CMP_GE_OQ));
        while (hit != 0) {
            idx[c++] = (uint32_t)(j + (size_t)__builtin_ctz(hit));
            hit &= hit - 1;
        }
    }
    for (; j < n; j++)
        if (s[j] >= floor)
            idx[c++] = (uint32_t)j;
    return c;
}

const struct bm_kernels bm_kernels_avx2 = {
    .name = "avx2",
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
