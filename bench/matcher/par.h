/* A tiny parallel-for for the benchmark's own work (data generation and the
 * hardware-limit loops), independent of the matcher's pool so the limits are
 * measured with plain threads that the matcher cannot influence.
 *
 * Invariant: bb_parallel() returns only after every range has run; ranges
 * are contiguous, disjoint and cover [0, n). */
#ifndef BM_BENCH_PAR_H
#define BM_BENCH_PAR_H

#include <stddef.h>

/* Called once per thread with its half-open range [begin, end). 'thread' is
 * in [0, nthreads). */
typedef void (*bb_range_fn)(void *arg, size_t begin, size_t end, unsigned thread);

/* Split [0, n) into 'nthreads' ranges and run fn on each in its own thread
 * (range 0 on the caller). Returns 0, or -1 if a thread could not start (then
 * the missing ranges ran on the caller, so the work is still complete). */
int bb_parallel(unsigned nthreads, size_t n, bb_range_fn fn, void *arg);


/* Online CPUs (>= 1). */
unsigned bb_ncpus(void);

#endif /* BM_BENCH_PAR_H */
