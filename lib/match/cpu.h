/* CPU feature detection and the choice of SIMD level for the matcher.
 *
 * The level is chosen once, by bm_cpu_init(), from what the CPU supports and
 * the BIOMATCH_SIMD environment variable (scalar|avx2|avx512); afterwards the
 * kernel dispatch table (kernels.h) never changes except through
 * bm_simd_force(), which exists for tests and the benchmark comparing levels.
 * Invariant: the active level is always one the CPU supports. */
#ifndef BM_CPU_H
#define BM_CPU_H

#include <stddef.h>

enum bm_simd {
    BM_SIMD_SCALAR = 0,   /* portable C, the reference */
    BM_SIMD_AVX2 = 1,     /* AVX2 + FMA + F16C */
    BM_SIMD_AVX512 = 2,   /* AVX-512 F/BW/VL/DQ + VNNI + VPOPCNTDQ */
};

/* The best level this CPU (and OS, via XGETBV) supports. Thread: any. */
enum bm_simd bm_simd_detect(void);

/* Choose the active level once: BIOMATCH_SIMD if set, else the detected one.
 * Returns BM_OK, BM_EINVAL for an unknown BIOMATCH_SIMD value, or
 * BM_EUNSUPPORTED when it forces a level the CPU lacks (the level then stays
 * at the detected one). Idempotent: later calls return the first result.
 * Thread: any (internally once-only). Search and kernel functions call it
 * lazily, so calling it explicitly is only needed to see the error. */
int bm_cpu_init(void);

/* The level in use (calls bm_cpu_init() if nobody has). Thread: any. */
enum bm_simd bm_simd_active(void);

/* Switch the active level: BM_OK, or BM_EUNSUPPORTED when the CPU lacks it
 * (no change), BM_EINVAL for an out-of-range value. For tests and the
 * benchmark: must not race with running searches. */
int bm_simd_force(enum bm_simd level);

/* "scalar", "avx2", "avx512" ("?" for anything else). Static. */
const char *bm_simd_name(enum bm_simd level);

/* Parse "scalar"|"avx2"|"avx512" into *level: BM_OK or BM_EINVAL. */
int bm_simd_parse(const char *name, enum bm_simd *level);

/* A static, human-readable list of the detected features, for logging, e.g.
 * "avx2 fma f16c avx512f avx512bw avx512vl avx512dq avx512vnni
 * avx512vpopcntdq avx-vnni" (only those present). Thread: any. */
const char *bm_cpu_features(void);

#endif /* BM_CPU_H */
