/* Dispatch: maps the active SIMD level (cpu.c) to its kernel table, and the
 * portable binary16 conversions used when encoding f16 galleries.
 *
 * Invariant: bm_kernels_for() never returns a table the CPU cannot run. */
#include "match/kernels.h"

#include <string.h>

const struct bm_kernels *bm_kernels_for(enum bm_simd level)
{
    if (level > bm_simd_detect())
        return NULL;
    switch (level) {
    case BM_SIMD_SCALAR: return &bm_kernels_scalar;
#if defined(__x86_64__)
    case BM_SIMD_AVX2: return &bm_kernels_avx2;
    case BM_SIMD_AVX512: return &bm_kernels_avx512;
#else
    default: break;
#endif
    }
    return NULL;
}

const struct bm_kernels *bm_kernels_get(void)
{
    const struct bm_kernels *k = bm_kernels_for(bm_simd_active());
    return k != NULL ? k : &bm_kernels_scalar;
}

float bm_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else {
            /* Subnormal half: normalise into a float. */
            int e = -1;
            do {
                e++;
                man <<= 1;
            } while ((man & 0x400u) == 0);
            man &= 0x3ffu;
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | (man << 13);
        }
    } else if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

uint16_t bm_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t exp = (x >> 23) & 0xffu;
    uint32_t man = x & 0x7fffffu;
    if (exp == 0xff)
        return (uint16_t)(sign | 0x7c00u | (man ? 0x200u | (man >> 13) : 0));
    int e = (int)exp - 127 + 15;
    if (e >= 0x1f)
        return (uint16_t)(sign | 0x7c00u);
    if (e <= 0) {
        if (e < -10)
            return (uint16_t)sign;
        man |= 0x800000u;
        unsigned shift = (unsigned)(14 - e);
        uint32_t half = man >> shift;
        uint32_t rem = man & ((1u << shift) - 1);
        uint32_t mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1)))
            half++;
        return (uint16_t)(sign | half);
    }
    uint32_t half = ((uint32_t)e << 10) | (man >> 13);
    uint32_t rem = man & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (half & 1)))
        half++; /* may carry into the exponent, up to infinity: correct */
    return (uint16_t)(sign | half);
}
