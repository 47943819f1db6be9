/* AVX2 kernels of the hardware-limit measurements (compiled alone with
 * -mavx2 -mpopcnt): the streaming read and the iris AND/XOR/popcount loop
 * with the nibble-table popcount (vpshufb), which is the fastest popcount
 * AVX2 has. Only called after the CPU was checked (hw.c). */
#include <immintrin.h>

#include "hw.h"

uint64_t bb_read_avx2(const void *p, size_t bytes)
{
    const __m256i *v = p;
    size_t n = bytes / 32;
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    size_t i = 0;
    /* Four independent accumulators keep the adds off the critical path, so
     * only the loads (and so memory) limit the loop. */
    for (; i + 4 <= n; i += 4) {
        a0 = _mm256_add_epi64(a0, _mm256_load_si256(v + i));
        a1 = _mm256_add_epi64(a1, _mm256_load_si256(v + i + 1));
        a2 = _mm256_add_epi64(a2, _mm256_load_si256(v + i + 2));
        a3 = _mm256_add_epi64(a3, _mm256_load_si256(v + i + 3));
    }
    for (; i < n; i++)
        a0 = _mm256_add_epi64(a0, _mm256_load_si256(v + i));
    a0 = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
    uint64_t out[4];
    _mm256_storeu_si256((__m256i *)out, a0);
    return out[0] + out[1] + out[2] + out[3];
}

static __m256i popcount_bytes(__m256i v)
{
    const __m256i table = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                           0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0f);
    __m256i lo = _mm256_shuffle_epi8(table, _mm256_and_si256(v, low));
    __m256i hi = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(v, 4), low));
    return _mm256_add_epi8(lo, hi);
}

static uint64_t hsum64(__m256i v)
{
    uint64_t out[4];
    _mm256_storeu_si256((__m256i *)out, v);
    return out[0] + out[1] + out[2] + out[3];
}

static uint64_t pop_row(const uint8_t *g, const uint8_t *pcodes, const uint8_t *pmasks,
                        size_t nshift, size_t code_bytes)
{
    const uint8_t *gc = g, *gm = g + code_bytes;
    uint64_t best_d = 1, best_v = 0; /* d/v = +inf */
    size_t n = code_bytes / 32;
    for (size_t s = 0; s < nshift; s++) {
        /* Cycling L1-resident probe variants (hw.h). */
        size_t k = s % BB_POP_VARIANTS;
        const uint8_t *pc = pcodes + k * code_bytes, *pm = pmasks + k * code_bytes;
        __m256i dsum = _mm256_setzero_si256(), vsum = dsum;
        for (size_t i = 0; i < n; i++) {
            __m256i valid = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(pm + 32 * i)),
                                             _mm256_loadu_si256((const __m256i *)(gm + 32 * i)));
            __m256i diff = _mm256_and_si256(
                _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(pc + 32 * i)),
                                 _mm256_loadu_si256((const __m256i *)(gc + 32 * i))),
                valid);
            dsum = _mm256_add_epi64(dsum, _mm256_sad_epu8(popcount_bytes(diff),
                                                          _mm256_setzero_si256()));
            vsum = _mm256_add_epi64(vsum, _mm256_sad_epu8(popcount_bytes(valid),
                                                          _mm256_setzero_si256()));
        }
        uint64_t d = hsum64(dsum), v = hsum64(vsum);
        for (size_t i = n * 32; i < code_bytes; i++) {
            unsigned va = (unsigned)(pm[i] & gm[i]);
            d += (uint64_t)__builtin_popcount((pc[i] ^ gc[i]) & va);
            v += (uint64_t)__builtin_popcount(va);
        }
        /* Keep the smallest d/v by cross-multiplying, as a kernel would. */
        if (v && d * best_v < best_d * v) {
            best_d = d;
            best_v = v;
        }
    }
    return best_d + best_v;
}

uint64_t bb_iris_pop_avx2(const uint8_t *const *rows, size_t nrows, const uint8_t *pcodes,
                          const uint8_t *pmasks, size_t nshift, size_t code_bytes)
{
    uint64_t sink = 0;
    for (size_t r = 0; r < nrows; r++)
        sink += pop_row(rows[r], pcodes, pmasks, nshift, code_bytes);
    return sink;
}
