/* The two hardware limits the matcher is measured against, measured in the
 * same run: memory read bandwidth (the limit of a single-probe scan) and the
 * AND/XOR/popcount throughput of the iris operation on the gallery's own
 * bytes (the limit of the iris kernel).
 *
 * Both are best-of-N measurements with plain threads, using the widest SIMD
 * the CPU has; neither touches the matcher. */
#ifndef BM_BENCH_HW_H
#define BM_BENCH_HW_H

#include <stddef.h>
#include <stdint.h>

/* Read 'bytes' (rounded down to 4 KiB; should be far larger than the last
 * level cache) with 'threads' threads, each streaming its slice with AVX2
 * loads summed into a checksum; best of 'runs'. Returns GB/s (1e9 bytes per
 * second), or a negative value if the buffer could not be allocated. */
double bb_read_bandwidth(size_t bytes, unsigned threads, int runs);

/* The iris limit: the AND/XOR/popcount work of an iris comparison with
 * every operand in L1, i.e. the compute ceiling of the iris kernel (memory
 * is the bandwidth figure's business). Each thread does the work of its
 * share of the 'nrows' rows (code bytes then mask bytes, at rows[i]) on the
 * first two rows of that share, each evaluated 'nshift' times against
 * BB_POP_VARIANTS cycling probe variants (probe code k at pcodes + k *
 * code_bytes, mask likewise, k = shift mod BB_POP_VARIANTS): valid = pm &
 * gm, differing = (pc ^ gc) & valid, both popcounted, the best shift kept.
 * The AVX-512 loop is register-blocked (hw_avx512.c). Best of 'runs'.
 * Returns rows x shifts evaluated per second; '*level' receives the
 * instruction set used ("avx512-vpopcntdq", "avx2-pshufb" or "scalar"). */
#define BB_POP_VARIANTS 4
double bb_popcount_limit(const uint8_t *const *rows, size_t nrows, size_t code_bytes,
                         const uint8_t *pcodes, const uint8_t *pmasks, size_t nshift,
                         unsigned threads, int runs, const char **level);

/* Per-ISA kernels over rows[0..nrows) (hw_avx2.c, hw_avx512.c, hw.c);
 * callers go through the functions above, which check the CPU first. Each
 * returns a checksum that keeps the work observable. */
uint64_t bb_read_avx2(const void *p, size_t bytes);
uint64_t bb_iris_pop_avx2(const uint8_t *const *rows, size_t nrows, const uint8_t *pcodes,
                          const uint8_t *pmasks, size_t nshift, size_t code_bytes);
uint64_t bb_iris_pop_avx512(const uint8_t *const *rows, size_t nrows, const uint8_t *pcodes,
                            const uint8_t *pmasks, size_t nshift, size_t code_bytes);

#endif /* BM_BENCH_HW_H */
