/* CPU feature detection (CPUID + XGETBV) and the once-only choice of the
 * matcher's SIMD level.
 *
 * Invariant: 'active' only ever holds a level that bm_simd_detect() allows,
 * so a kernel compiled for that level never faults with SIGILL. The
 * dispatch table in kernels.c follows 'active'. */
#include "match/cpu.h"

#include <cpuid.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"

struct features {
    int avx2, fma, f16c, avx512f, avx512bw, avx512vl, avx512dq;
    int avx512vnni, vpopcntdq, avxvnni;
    int os_ymm, os_zmm;
};

static struct features feat;
static char feat_desc[256];
static pthread_once_t detect_once = PTHREAD_ONCE_INIT;
static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static int init_result = BM_OK;
static _Atomic int active = -1;

static uint64_t xgetbv0(void)
{
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

static void append(const char *name, int present)
{
    if (!present)
        return;
    size_t len = strlen(feat_desc);
    size_t n = strlen(name);
    if (len + n + 2 >= sizeof feat_desc)
        return;
    if (len > 0)
        feat_desc[len++] = ' ';
    memcpy(feat_desc + len, name, n + 1);
}

static void detect(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return;
    int osxsave = (c >> 27) & 1;
    feat.fma = (c >> 12) & 1;
    feat.f16c = (c >> 29) & 1;
    if (osxsave) {
        /* The OS must save the wide registers, or using them corrupts state
         * on context switches: XCR0 bits 1-2 for YMM, 5-7 for ZMM. */
        uint64_t xcr0 = xgetbv0();
        feat.os_ymm = (xcr0 & 0x6) == 0x6;
        feat.os_zmm = feat.os_ymm && (xcr0 & 0xe0) == 0xe0;
    }
    if (__get_cpuid_max(0, NULL) >= 7) {
        __cpuid_count(7, 0, a, b, c, d);
        feat.avx2 = (b >> 5) & 1;
        feat.avx512f = (b >> 16) & 1;
        feat.avx512dq = (b >> 17) & 1;
        feat.avx512bw = (b >> 30) & 1;
        feat.avx512vl = (b >> 31) & 1;
        feat.avx512vnni = (c >> 11) & 1;
        feat.vpopcntdq = (c >> 14) & 1;
        __cpuid_count(7, 1, a, b, c, d);
        feat.avxvnni = (a >> 4) & 1;
    }
    if (!feat.os_ymm) {
        feat.avx2 = feat.fma = feat.f16c = feat.avxvnni = 0;
    }
    if (!feat.os_zmm) {
        feat.avx512f = feat.avx512bw = feat.avx512vl = feat.avx512dq = 0;
        feat.avx512vnni = feat.vpopcntdq = 0;
    }
    append("avx2", feat.avx2);
    append("fma", feat.fma);
    append("f16c", feat.f16c);
    append("avx512f", feat.avx512f);
    append("avx512bw", feat.avx512bw);
    append("avx512vl", feat.avx512vl);
    append("avx512dq", feat.avx512dq);
    append("avx512vnni", feat.avx512vnni);
    append("avx512vpopcntdq", feat.vpopcntdq);
    append("avx-vnni", feat.avxvnni);
    if (feat_desc[0] == '\0')
        append("none", 1);
}

enum bm_simd bm_simd_detect(void)
{
    pthread_once(&detect_once, detect);
    if (feat.avx2 && feat.fma && feat.f16c && feat.avx512f && feat.avx512bw &&
        feat.avx512vl && feat.avx512dq && feat.avx512vnni && feat.vpopcntdq)
        return BM_SIMD_AVX512;
    if (feat.avx2 && feat.fma && feat.f16c)
        return BM_SIMD_AVX2;
    return BM_SIMD_SCALAR;
}

const char *bm_cpu_features(void)
{
    pthread_once(&detect_once, detect);
    return feat_desc;
}

const char *bm_simd_name(enum bm_simd level)
{
    switch (level) {
    case BM_SIMD_SCALAR: return "scalar";
    case BM_SIMD_AVX2: return "avx2";
    case BM_SIMD_AVX512: return "avx512";
    }
    return "?";
}

int bm_simd_parse(const char *name, enum bm_simd *level)
{
    if (name == NULL)
        return BM_EINVAL;
    for (int l = BM_SIMD_SCALAR; l <= BM_SIMD_AVX512; l++) {
        if (strcmp(name, bm_simd_name((enum bm_simd)l)) == 0) {
            *level = (enum bm_simd)l;
            return BM_OK;
        }
    }
    return BM_EINVAL;
}

static void init(void)
{
    enum bm_simd best = bm_simd_detect();
    enum bm_simd want = best;
    const char *env = getenv("BIOMATCH_SIMD");
    if (env != NULL && env[0] != '\0') {
        if (bm_simd_parse(env, &want) != BM_OK)
            init_result = BM_EINVAL;
        else if (want > best)
            init_result = BM_EUNSUPPORTED;
        if (init_result != BM_OK)
            want = best;
    }
    atomic_store(&active, (int)want);
}

int bm_cpu_init(void)
{
    pthread_once(&init_once, init);
    return init_result;
}

enum bm_simd bm_simd_active(void)
{
    int a = atomic_load_explicit(&active, memory_order_acquire);
    if (a < 0) {
        bm_cpu_init();
        a = atomic_load(&active);
    }
    return (enum bm_simd)a;
}

int bm_simd_force(enum bm_simd level)
{
    if ((int)level < BM_SIMD_SCALAR || (int)level > BM_SIMD_AVX512)
        return BM_EINVAL;
    bm_cpu_init();
    if (level > bm_simd_detect())
        return BM_EUNSUPPORTED;
    atomic_store(&active, (int)level);
    return BM_OK;
}
