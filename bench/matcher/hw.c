/* Measurement drivers for the hardware limits (see hw.h): allocation, page
 * touching, thread split and best-of-N timing. The inner loops live in the
 * per-ISA files; the choice among them is made here, once per call, from
 * CPUID (GCC's __builtin_cpu_supports also checks that the OS saves the
 * wide registers). */
#include "hw.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "par.h"
#include "common/clock.h"

/* Keeps every checksum observable, so no loop is optimised away; atomic
 * because every measuring thread adds to it. */
static _Atomic uint64_t bb_sink;

static uint64_t read_scalar(const void *p, size_t bytes)
{
    const uint64_t *v = p;
    uint64_t a = 0, b = 0;
    for (size_t i = 0; i + 2 <= bytes / 8; i += 2) {
        a += v[i];
        b += v[i + 1];
    }
    return a + b;
}

struct read_job {
    const uint8_t *buf;
    int avx2;
};

static void read_range(void *arg, size_t begin, size_t end, unsigned thread)
{
    struct read_job *j = arg;
    (void)thread;
    /* Ranges are in 4 KiB pages, so every slice stays 32-byte aligned. */
    const uint8_t *p = j->buf + begin * 4096;
    size_t len = (end - begin) * 4096;
    atomic_fetch_add_explicit(&bb_sink, j->avx2 ? bb_read_avx2(p, len) : read_scalar(p, len),
                              memory_order_relaxed);
}

static void touch_range(void *arg, size_t begin, size_t end, unsigned thread)
{
    uint8_t *buf = arg;
    (void)thread;
    /* Non-zero bytes, so no page can stay mapped to the shared zero page. */
    memset(buf + begin * 4096, 0x5a, (end - begin) * 4096);
}

double bb_read_bandwidth(size_t bytes, unsigned threads, int runs)
{
    size_t pages = bytes / 4096;
    if (pages == 0)
        return -1;
    uint8_t *buf = aligned_alloc(4096, pages * 4096);
    if (!buf)
        return -1;
    bb_parallel(threads, pages, touch_range, buf);
    struct read_job job = {buf, __builtin_cpu_supports("avx2")};
    double best = 0;
    for (int r = 0; r < (runs < 1 ? 1 : runs); r++) {
        double t0 = bm_mono_s();
        bb_parallel(threads, pages, read_range, &job);
        double dt = bm_mono_s() - t0;
        double gbs = (double)(pages * 4096) / dt / 1e9;
        if (gbs > best)
            best = gbs;
    }
    free(buf);
    return best;
}

static uint64_t pop_row_scalar(const uint8_t *g, const uint8_t *pcodes, const uint8_t *pmasks,
                               size_t nshift, size_t code_bytes)
{
    const uint8_t *gc = g, *gm = g + code_bytes;
    uint64_t best_d = 1, best_v = 0; /* d/v = +inf */
    for (size_t s = 0; s < nshift; s++) {
        size_t k = s % BB_POP_VARIANTS;
        const uint8_t *pc = pcodes + k * code_bytes, *pm = pmasks + k * code_bytes;
        uint64_t d = 0, v = 0;
        for (size_t i = 0; i + 8 <= code_bytes; i += 8) {
            uint64_t a, b, c, e;
            memcpy(&a, pc + i, 8);
            memcpy(&b, gc + i, 8);
            memcpy(&c, pm + i, 8);
            memcpy(&e, gm + i, 8);
            d += (uint64_t)__builtin_popcountll((a ^ b) & c & e);
            v += (uint64_t)__builtin_popcountll(c & e);
        }
        /* Keep the smallest d/v by cross-multiplying, as a kernel would. */
        if (v && d * best_v < best_d * v) {
            best_d = d;
            best_v = v;
        }
    }
    return best_d + best_v;
}

static uint64_t iris_pop_scalar(const uint8_t *const *rows, size_t nrows,
                                const uint8_t *pcodes, const uint8_t *pmasks, size_t nshift,
                                size_t code_bytes)
{
    uint64_t sink = 0;
    for (size_t r = 0; r < nrows; r++)
        sink += pop_row_scalar(rows[r], pcodes, pmasks, nshift, code_bytes);
    return sink;
}

typedef uint64_t (*iris_pop_fn)(const uint8_t *const *, size_t, const uint8_t *,
                                const uint8_t *, size_t, size_t);

struct pop_job {
    const uint8_t *const *rows;
    const uint8_t *pcodes, *pmasks;
    size_t nshift, code_bytes;
    iris_pop_fn fn;
};

static void pop_range(void *arg, size_t begin, size_t end, unsigned thread)
{
    struct pop_job *j = arg;
    (void)thread;
    if (end <= begin)
        return;
    /* The same amount of work as the range, on the range's first two rows
     * only, so rows stay in L1 with the probe variants: the limit is the
     * bit work, never memory (the bandwidth figure covers memory). */
    size_t n = end - begin;
    const uint8_t **cyc = malloc(n * sizeof *cyc);
    if (!cyc)
        return;
    for (size_t i = 0; i < n; i++)
        cyc[i] = j->rows[begin + (n > 1 ? i % 2 : 0)];
    uint64_t acc = j->fn(cyc, n, j->pcodes, j->pmasks, j->nshift, j->code_bytes);
    free(cyc);
    atomic_fetch_add_explicit(&bb_sink, acc, memory_order_relaxed);
}

double bb_popcount_limit(const uint8_t *const *rows, size_t nrows, size_t code_bytes,
                         const uint8_t *pcodes, const uint8_t *pmasks, size_t nshift,
                         unsigned threads, int runs, const char **level)
{
    struct pop_job job = {rows, pcodes, pmasks, nshift, code_bytes, iris_pop_scalar};
    *level = "scalar";
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vpopcntdq")) {
        job.fn = bb_iris_pop_avx512;
        *level = "avx512-vpopcntdq";
    } else if (__builtin_cpu_supports("avx2")) {
        job.fn = bb_iris_pop_avx2;
        *level = "avx2-pshufb";
    }
    if (nrows == 0 || nshift == 0)
        return 0;
    double best = 0;
    for (int r = 0; r < (runs < 1 ? 1 : runs); r++) {
        double t0 = bm_mono_s();
        bb_parallel(threads, nrows, pop_range, &job);
        double dt = bm_mono_s() - t0;
        double rate = (double)nrows * (double)nshift / dt;
        if (rate > best)
            best = rate;
    }
    return best;
}
