/* Seeded synthetic data for the `biomatch` command, the benchmarks and the
 * tests: one splitmix64 stream (Steele, Lea and Flood) and the draws built
 * on it. The same seed gives the same numbers on every machine, which is
 * what makes `biomatch gen`, the demo and the replay tool reproducible.
 *
 * Not for anything secret: splitmix64 is predictable from its output.
 * Thread: a stream is used by one thread at a time. */
#ifndef BM_SYNTH_H
#define BM_SYNTH_H

#include <stdint.h>

struct bm_synth {
    uint64_t s; /* the state: set it to the seed */
};

/* The next 64 random bits. */
uint64_t bm_synth_next(struct bm_synth *r);

/* Uniform in [0, 1), with 53 random bits. */
double bm_synth_uniform(struct bm_synth *r);

/* Uniform in 0..n-1 (n >= 1). */
uint64_t bm_synth_below(struct bm_synth *r, uint64_t n);

/* A standard normal by Box-Muller, one value per call (two uniforms each),
 * which keeps the stream simple to reason about. */
double bm_synth_normal(struct bm_synth *r);

/* Two independent standard normals from one Box-Muller pair (two uniforms
 * for two values): half the draws of bm_synth_normal, for bulk data. */
void bm_synth_normal2(struct bm_synth *r, double *a, double *b);

#endif /* BM_SYNTH_H */
