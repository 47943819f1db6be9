/* Definitions shared by the matcher's own files (segment.c, dense.c,
 * iris.c, gallery.c); not part of the public interface.
 *
 * Invariant: a segment's rows are 'stride' bytes apart, stride a multiple
 * of 64, and rows[] is 64-byte aligned, so every row starts on a cache line. */
#ifndef BM_MATCH_INTERNAL_H
#define BM_MATCH_INTERNAL_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "match/gallery.h"
#include "match/kernels.h"

struct bm_segment {
    struct bm_spec spec;
    uint64_t id;             /* segment id, unique within a gallery */
    size_t capacity;         /* rows allocated */
    size_t count;            /* rows filled */
    size_t stride;           /* bytes from one row to the next (64k) */
    size_t tbytes;           /* meaningful bytes per row */
    uint8_t *rows;           /* capacity * stride bytes, 64-byte aligned */
    uint64_t *ids;           /* capacity subject ids */
    float *scales;           /* int8: per-row dequantisation scale */
    int32_t *sums;           /* int8: per-row element sum (VNNI bias fix) */
    atomic_uint refs;        /* gallery versions holding the segment */
};

/* ---- dense.c */

size_t bm_dtype_size(enum bm_dtype t);
/* NaN/Inf/zero check, then out = v / |v| (double accumulation). */
int bm_dense_normalise(const float *v, uint32_t dim, float *out, char *err, size_t errlen);
/* Symmetric int8 quantisation: q = round(x / scale), scale = max|x| / 127. */
float bm_dense_quantise(const float *x, uint32_t dim, int8_t *q);
/* Encode a normalised vector into storage layout; *scale and *sum are set
 * for int8 (scale 1, sum 0 otherwise). */
void bm_dense_encode(const struct bm_spec *spec, const float *unit, void *row,
                     float *scale, int32_t *sum);
/* Sum of the elements of an int8 row. */
int32_t bm_dense_sum_i8(const int8_t *q, uint32_t dim);

/* A probe batch prepared for one dense gallery: normalised f32 rows, and
 * for int8 galleries the quantised rows with their scales. */
struct bm_dense_probes {
    size_t n;
    size_t stride;           /* elements between probe rows (64-byte multiple) */
    float *f32;              /* n * stride */
    int8_t *i8;              /* int8 galleries: n * stride */
    float *scale;            /* int8 galleries: n */
};
int bm_dense_probes_prepare(const struct bm_spec *spec, const struct bm_probe *p, size_t n,
                            struct bm_dense_probes *out, char *err, size_t errlen);
void bm_dense_probes_free(struct bm_dense_probes *dp);
/* Score probe i against row j of segment s with single-vector kernels. */
float bm_dense_score_one(const struct bm_kernels *k, const struct bm_dense_probes *dp,
                         size_t i, const struct bm_segment *s, size_t row);

/* ---- iris.c */

/* Probe variants for one iris gallery: per probe, for each shift in scan
 * order, the rotated code and mask (openiris mode: two masks per shift, the
 * low and the high column half). Variant v of probe i is at
 * code + (i * nvar + v) * vstride (same for mask). */
struct bm_iris_probes {
    size_t n;
    size_t nshift;           /* 2r + 1 */
    size_t nvar;             /* nshift, or 2 * nshift in openiris mode */
    size_t bytes;            /* code bytes */
    size_t vstride;          /* bytes between variants (64-byte multiple) */
    uint8_t *code;
    uint8_t *mask;
    int *shift;              /* nshift shifts in scan order */
};
int bm_iris_probes_prepare(const struct bm_spec *spec, const struct bm_probe *p, size_t n,
                           struct bm_iris_probes *out, char *err, size_t errlen);
void bm_iris_probes_free(struct bm_iris_probes *ip);
/* Similarity 1 - HD from the kernel counts of one probe (diff/valid per
 * variant), or NAN for no decision. *best_shift (may be NULL) gets the
 * winning shift. */
float bm_iris_score(const struct bm_spec *spec, const struct bm_iris_probes *ip,
                    const uint32_t *diff, const uint32_t *valid, int *best_shift);
/* Score probe i against one gallery code/mask. */
float bm_iris_score_one(const struct bm_kernels *k, const struct bm_spec *spec,
                        const struct bm_iris_probes *ip, size_t i,
                        const uint8_t *gcode, const uint8_t *gmask, int *best_shift);
/* Rotate a code by 'shift' columns (numpy roll semantics on the column
 * axis: out column c = in column (c - shift) mod columns). */
void bm_iris_rotate(const struct bm_spec *spec, const uint8_t *in, int shift, uint8_t *out);

/* ---- segment.c */
void bm_segment_ref(struct bm_segment *s);
void bm_segment_unref(struct bm_segment *s);
int bm_spec_same(const struct bm_spec *a, const struct bm_spec *b);

/* 64-byte aligned allocation of at least n bytes (rounded up), zeroed. */
void *bm_alloc64(size_t n);

#endif /* BM_MATCH_INTERNAL_H */
