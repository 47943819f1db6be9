/* AVX-512 kernel of the iris popcount limit (compiled alone with -mavx512f
 * -mavx512vpopcntdq): 512-bit VPTERNLOG and VPOPCNTQ, register-blocked so
 * that the loads do not limit it. Only called after the CPU was checked
 * (hw.c).
 *
 * Blocking: 2 gallery rows x 4 probe variants per pass. Each 64-byte chunk
 * of a row is loaded once for 4 variants and each chunk of a variant once
 * for 2 rows: 12 loads for 8 (row, variant) pairs instead of 32, leaving the
 * AND/XOR/popcount work itself as the bound. */
#include <immintrin.h>

#include "hw.h"

#define NV 4 /* probe variants per pass (all L1-resident, see hw.h) */
#define NR 2 /* gallery rows per pass */

static inline __attribute__((always_inline)) void
pop_block(const uint8_t *const *g, size_t nr, const uint8_t *pcodes, const uint8_t *pmasks,
          size_t nv, size_t code_bytes, uint64_t *d, uint64_t *v)
{
    __m512i dacc[NR][NV], vacc[NR][NV];
    for (size_t r = 0; r < NR; r++)
        for (size_t k = 0; k < NV; k++)
            dacc[r][k] = vacc[r][k] = _mm512_setzero_si512();
    for (size_t i = 0; i + 64 <= code_bytes; i += 64) {
        __m512i gc[NR], gm[NR];
        for (size_t r = 0; r < nr; r++) {
            gc[r] = _mm512_loadu_si512(g[r] + i);
            gm[r] = _mm512_loadu_si512(g[r] + code_bytes + i);
        }
        for (size_t k = 0; k < nv; k++) {
            __m512i pc = _mm512_loadu_si512(pcodes + k * code_bytes + i);
            __m512i pm = _mm512_loadu_si512(pmasks + k * code_bytes + i);
            for (size_t r = 0; r < nr; r++) {
                __m512i valid = _mm512_and_si512(pm, gm[r]);
                /* 0x28 is (a ^ b) & c in one instruction. */
                __m512i diff = _mm512_ternarylogic_epi64(pc, gc[r], valid, 0x28);
                dacc[r][k] = _mm512_add_epi64(dacc[r][k], _mm512_popcnt_epi64(diff));
                vacc[r][k] = _mm512_add_epi64(vacc[r][k], _mm512_popcnt_epi64(valid));
            }
        }
    }
    for (size_t r = 0; r < nr; r++)
        for (size_t k = 0; k < nv; k++) {
            d[r * NV + k] = (uint64_t)_mm512_reduce_add_epi64(dacc[r][k]);
            v[r * NV + k] = (uint64_t)_mm512_reduce_add_epi64(vacc[r][k]);
        }
}

uint64_t bb_iris_pop_avx512(const uint8_t *const *rows, size_t nrows, const uint8_t *pcodes,
                            const uint8_t *pmasks, size_t nshift, size_t code_bytes)
{
    uint64_t sink = 0;
    for (size_t r0 = 0; r0 < nrows; r0 += NR) {
        size_t nr = nrows - r0 < NR ? nrows - r0 : NR;
        uint64_t best_d[NR] = {1, 1}, best_v[NR] = {0, 0}; /* d/v = +inf */
        for (size_t s0 = 0; s0 < nshift; s0 += NV) {
            size_t nv = nshift - s0 < NV ? nshift - s0 : NV;
            uint64_t d[NR * NV], v[NR * NV];
            /* Constant block sizes in the common case let the compiler keep
             * all 16 accumulators in registers. */
            if (nr == NR && nv == NV)
                pop_block(rows + r0, NR, pcodes, pmasks, NV, code_bytes, d, v);
            else
                pop_block(rows + r0, nr, pcodes, pmasks, nv, code_bytes, d, v);
            for (size_t r = 0; r < nr; r++)
                for (size_t k = 0; k < nv; k++) {
                    uint64_t dd = d[r * NV + k], vv = v[r * NV + k];
                    /* Keep the smallest d/v by cross-multiplying, as a
                     * kernel would. */
                    if (vv && dd * best_v[r] < best_d[r] * vv) {
                        best_d[r] = dd;
                        best_v[r] = vv;
                    }
                }
        }
        for (size_t r = 0; r < nr; r++)
            sink += best_d[r] + best_v[r];
    }
    return sink;
}
