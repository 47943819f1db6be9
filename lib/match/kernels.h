/* The matcher's kernel dispatch table: one entry per primitive, one table
 * per SIMD level (kernels_scalar.c, kernels_avx2.c, kernels_avx512.c).
 *
 * kernels_scalar.c defines what every kernel means; the SIMD twins must give
 * bit-identical results on integer kernels and agree within float rounding
 * (summation order) on float kernels. Every pointer argument may be
 * unaligned and every length may be any value >= 0; kernels never read past
 * the 'n' elements/bytes they are given.
 * Thread: tables are immutable; kernels are pure and thread-safe. */
#ifndef BM_KERNELS_H
#define BM_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "match/cpu.h"

struct bm_kernels {
    const char *name;
    /* sum a[i] * b[i] over n elements */
    float (*dot_f32)(const float *a, const float *b, size_t n);
    /* a is f32, b is IEEE binary16 */
    float (*dot_f16)(const float *a, const uint16_t *b, size_t n);
    /* exact int32 sum of a[i] * b[i] (n <= 65536 so it cannot overflow) */
    int32_t (*dot_i8)(const int8_t *a, const int8_t *b, size_t n);
    /* sum a[i] * b[i] with a in f32 and b int8: the exact re-scoring of an
     * int8 gallery row against the unquantised probe (the caller multiplies
     * by the row's scale). A float kernel: within 1e-5 of the scalar twin
     * relative to sum |a[i] b[i]|. */
    float (*dot_f32i8)(const float *a, const int8_t *b, size_t n);

    /* Batched scores, register-blocked like a small GEMM:
     * out[i * ldo + j] = dot(q + i * qstride, g + j * gstride) for i < nq,
     * j < ng. Strides are in elements. The gallery rows are read about
     * nq / (probe block) times, from cache when ng rows fit L2. */
    void (*batch_f32)(const float *q, size_t qstride, size_t nq,
                      const float *g, size_t gstride, size_t ng, size_t n,
                      float *out, size_t ldo);
    void (*batch_f16)(const float *q, size_t qstride, size_t nq,
                      const uint16_t *g, size_t gstride, size_t ng, size_t n,
                      float *out, size_t ldo);
    /* Exact int32 dots. The VNNI kernel multiplies the unsigned biased
     * gallery bytes (g + 128) by the signed probe and subtracts 128 * sum(q)
     * once per probe, so no per-row sum of the gallery is needed. */
    void (*batch_i8)(const int8_t *q, size_t qstride, size_t nq,
                     const int8_t *g, size_t gstride,
                     size_t ng, size_t n, int32_t *out, size_t ldo);

    /* Iris counts of one gallery template against 'nshift' prepared probe
     * variants (probe variant s at pc + s * pstride, pm + s * pstride):
     * valid[s] = popcount(pm_s & gm), diff[s] = popcount((pc_s ^ gc) & pm_s & gm)
     * over 'nbytes' bytes. */
    void (*iris_counts)(const uint8_t *pc, const uint8_t *pm, size_t pstride,
                        size_t nshift, const uint8_t *gc, const uint8_t *gm,
                        size_t nbytes, uint32_t *diff, uint32_t *valid);

    /* The same counts for 'nrows' gallery templates at once (template r's
     * code at g + r * gstride, its mask 'moff' bytes further):
     * diff[r * nshift + s], valid[r * nshift + s]. SIMD levels block rows x
     * shifts in registers so each loaded gallery and probe vector serves
     * several pairs; callers pass a few rows (a block that stays in L1). */
    void (*iris_rows)(const uint8_t *pc, const uint8_t *pm, size_t pstride, size_t nshift,
                      const uint8_t *g, size_t gstride, size_t moff, size_t nrows,
                      size_t nbytes, uint32_t *diff, uint32_t *valid);

    /* int8 scores: out[j] = (float)dot[j] * (pscale * gscale[j]), exactly
     * this expression (so every level gives the same bits: the int8 scan picks
     * the same candidates everywhere).
     * 'out' may be 'dot' (in place). */
    void (*scale_i8)(const int32_t *dot, const float *gscale, float pscale, size_t n,
                     float *out);
    /* The top-k pre-filter: writes the indexes j (ascending) with
     * s[j] >= floor (NaN never passes) to idx and returns how many. */
    size_t (*select_ge)(const float *s, size_t n, float floor, uint32_t *idx);
};

extern const struct bm_kernels bm_kernels_scalar;
#if defined(__x86_64__)
extern const struct bm_kernels bm_kernels_avx2;
extern const struct bm_kernels bm_kernels_avx512;
#endif

/* The table of the active level (bm_simd_active()). Thread: any. */
const struct bm_kernels *bm_kernels_get(void);

/* The table of a given level, or NULL when the CPU lacks it. For tests. */
const struct bm_kernels *bm_kernels_for(enum bm_simd level);

/* IEEE binary16 <-> binary32, round to nearest even (same as F16C). */
float bm_f16_to_f32(uint16_t h);
uint16_t bm_f32_to_f16(float f);

#endif /* BM_KERNELS_H */
