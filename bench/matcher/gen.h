/* Synthetic galleries and probes with known mates, for the benchmark.
 *
 * Dense: gallery vectors are normal-ish and L2-normalised; each probe is one
 * gallery vector (its mate) plus noise, renormalised, so its cosine to the
 * mate is about 0.8. Iris: random code bits, 20-30% of mask bits cleared
 * (masked); each probe is its mate rotated by a few columns, with 10% of the
 * code bits flipped and 5% more bits masked. Template i always has id i.
 *
 * Invariant: everything is a pure function of the seed and the sizes (see
 * rng.h), independent of the thread count. */
#ifndef BM_BENCH_GEN_H
#define BM_BENCH_GEN_H

#include <stddef.h>
#include <stdint.h>

struct bb_dense {
    size_t n, dim, nprobes;
    float *gallery;     /* n x dim, L2-normalised, row-major */
    float *probes;      /* nprobes x dim, L2-normalised */
    uint64_t *mates;    /* nprobes: id of each probe's mate */
};

/* Fill 'd' (owned by the caller; free with bb_dense_free). -1 on ENOMEM. */
int bb_dense_generate(struct bb_dense *d, size_t n, size_t dim, size_t nprobes,
                      uint64_t seed, unsigned threads);
void bb_dense_free(struct bb_dense *d);

/* Iris geometry as the benchmark understands the bit layout: bit index
 * ((filter * rows + row) * columns + column) * bpc + bit, stored LSB-first
 * in bytes; a rotation moves whole columns, wrapping around. */
struct bb_iris_geom {
    uint32_t filters, rows, columns, bpc;
    size_t bytes;       /* bytes of a code (= bytes of a mask) */
};

struct bb_iris {
    struct bb_iris_geom geom;
    size_t n, nprobes;
    uint8_t *codes, *masks;     /* n x bytes each */
    uint8_t *pcodes, *pmasks;   /* nprobes x bytes each */
    uint64_t *mates;            /* nprobes */
    int *shifts;                /* nprobes: columns the mate was rotated by */
};

/* Rotate 'src' by 'shift' columns into 'dst' (same geometry, no overlap). */
void bb_iris_rotate(const struct bb_iris_geom *g, const uint8_t *src, uint8_t *dst,
                    int shift);

/* Fill 'it' for geometry 'g'; probes are rotated by up to max_shift columns.
 * -1 on ENOMEM. */
int bb_iris_generate(struct bb_iris *it, const struct bb_iris_geom *g, size_t n,
                     size_t nprobes, int max_shift, uint64_t seed, unsigned threads);
void bb_iris_free(struct bb_iris *it);


#endif /* BM_BENCH_GEN_H */
