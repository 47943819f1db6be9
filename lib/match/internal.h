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
    float i8_norm_max;       /* int8: max over rows of scale * |q|_2 (~1; bounds
                              * the int8 scan's error, see gallery.c) */
    atomic_uint refs;        /* gallery versions holding the segment */
};

/* ---- dense.c */

size_t bm_dtype_size(enum bm_dtype t);
/* NaN/Inf/zero check, then out = v / |v| (double accumulation). */
int bm_dense_normalise(const float *v, uint32_t dim, float *out, char *err, size_t errlen);
/* Symmetric int8 quantisation: q = round(x / scale), scale = max|x| / 127. */
float bm_dense_quantise(const float *x, uint32_t dim, int8_t *q);
/* Encode a normalised vector into storage layout; *scale is set for int8
 * (1 otherwise). */
void bm_dense_encode(const struct bm_spec *spec, const float *unit, void *row,
                     float *scale);
/* |q|_2 of an int8 row (one vectorisable pass). */
double bm_dense_norm_i8(const int8_t *q, uint32_t dim);

/* int8 search: how many candidates the int8 x int8 scan keeps per probe
 * before they are re-scored exactly (f32 probe x dequantised row):
 * max(4k, k + 32), at most 'live'. */
size_t bm_dense_i8_candidates(size_t k, size_t live);

/* A probe batch prepared for one dense gallery: normalised f32 rows, and
 * for int8 galleries the quantised rows with their scales. */
struct bm_dense_probes {
    size_t n;
    size_t stride;           /* elements between probe rows (64-byte multiple) */
    float *f32;              /* n * stride */
    int8_t *i8;              /* int8 galleries: n * stride */
    float *scale;            /* int8 galleries: n */
    float *qerr;             /* int8 galleries: n, |f32 - scale * i8|_2 */
};
int bm_dense_probes_prepare(const struct bm_spec *spec, const struct bm_probe *p, size_t n,
                            struct bm_dense_probes *out, char *err, size_t errlen);
void bm_dense_probes_free(struct bm_dense_probes *dp);
/* Score probe i against row j of segment s with single-vector kernels.
 * This is the score both search and verify report; for int8 galleries it
 * is dot_f32i8(normalised f32 probe, q_row) * scale_row (the probe is not
 * quantised: the int8 x int8 scan only picks the candidates). */
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

/* ---- alloc.c */
/* 64-byte aligned allocation of at least n bytes (rounded up to 64), zeroed;
 * free() releases it. NULL on ENOMEM or when n is too large to round. */
void *bm_alloc64(size_t n);

#endif /* BM_MATCH_INTERNAL_H */
