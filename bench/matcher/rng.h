/* The benchmark's deterministic pseudo-random numbers: splitmix64 to seed,
 * xoshiro256** to draw (both public-domain algorithms, written from their
 * published definitions).
 *
 * Invariant: every generated template is a pure function of (seed, index),
 * because each template seeds its own generator with bb_rng_seed(seed, i).
 * So data is identical whatever the number of generating threads, and a
 * run with --seed S can be reproduced exactly. */
#ifndef BM_BENCH_RNG_H
#define BM_BENCH_RNG_H

#include <stdint.h>

struct bb_rng {
    uint64_t s[4];
};

static inline uint64_t bb_splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Seed a generator for stream 'stream' of run seed 'seed'. */
static inline void bb_rng_seed(struct bb_rng *r, uint64_t seed, uint64_t stream)
{
    uint64_t x = seed ^ (stream * 0xd1342543de82ef95ULL);
    for (int i = 0; i < 4; i++)
        r->s[i] = bb_splitmix64(&x);
}

static inline uint64_t bb_rotl(uint64_t v, int k)
{
    return (v << k) | (v >> (64 - k));
}

static inline uint64_t bb_rng_next(struct bb_rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = bb_rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = bb_rotl(s[3], 45);
    return result;
}

/* Uniform in [0, n) (n > 0); the tiny modulo bias is irrelevant here. */
static inline uint64_t bb_rng_below(struct bb_rng *r, uint64_t n)
{
    return bb_rng_next(r) % n;
}

/* A cheap normal-ish value (mean 0, variance 1): the sum of four 16-bit
 * uniforms (Irwin-Hall), rescaled. One draw per value keeps generating a
 * 1M x 512 gallery to about a second; the tails are bounded, which does
 * not matter for a throughput and recall benchmark. */
static inline float bb_rng_normalish(struct bb_rng *r)
{
    uint64_t v = bb_rng_next(r);
    double sum = (double)(v & 0xffff) + (double)((v >> 16) & 0xffff) +
                 (double)((v >> 32) & 0xffff) + (double)(v >> 48);
    /* Each 16-bit uniform has mean 32767.5 and variance (65536^2 - 1) / 12. */
    const double mean = 4 * 32767.5;
    const double sd = 37837.22; /* sqrt(4 * (65536^2 - 1) / 12) */
    return (float)((sum - mean) / sd);
}

#endif /* BM_BENCH_RNG_H */
