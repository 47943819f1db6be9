/* The matcher's public interface: template geometry, segments of packed
 * templates, the versioned in-memory gallery and its batched search.
 *
 * Pure computation: no I/O, no global state beyond the SIMD dispatch table
 * chosen once by bm_cpu_init() (see cpu.h). A gallery is a list of immutable
 * segments plus a set of tombstoned ids; every change publishes a new
 * version, and a search pins the version it started on, so updates never
 * disturb a search in flight and memory of an old version is freed when its
 * last search ends.
 *
 * Scores are similarities, higher is better: cosine in [-1, 1] for dense
 * embeddings, 1 - HD in [0, 1] for iris codes. */
#ifndef BM_GALLERY_H
#define BM_GALLERY_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

struct bm_pool;

enum bm_modality {
    BM_MODALITY_DENSE = 1,   /* face, fingerprint, palm embeddings */
    BM_MODALITY_IRIS = 2,    /* iris code + mask bits */
};

/* Storage format of a dense gallery. */
enum bm_dtype {
    BM_DTYPE_F32 = 1,
    BM_DTYPE_F16 = 2,
    BM_DTYPE_INT8 = 3,       /* symmetric, one float scale per vector */
};

enum bm_iris_scoring {
    BM_IRIS_FRACTIONAL = 1,  /* min over shifts of popcount(diff)/popcount(valid) */
    BM_IRIS_NORMALISED = 2,  /* open-iris normalised HD per shift, then min */
    BM_IRIS_OPENIRIS = 3,    /* open-iris HammingDistanceMatcher defaults */
};

/* What every template of one gallery looks like. */
struct bm_spec {
    enum bm_modality modality;
    /* dense */
    uint32_t dim;                  /* 64..4096 */
    enum bm_dtype dtype;
    /* iris: filters x rows x columns cells of bits_per_cell bits */
    uint32_t iris_filters;         /* default 2 */
    uint32_t iris_rows;            /* default 16 */
    uint32_t iris_columns;         /* default 256 */
    uint32_t iris_bits_per_cell;   /* default 2 */
    uint32_t iris_rotations;       /* shifts -r..+r, default 15 */
    enum bm_iris_scoring iris_scoring;
    uint32_t iris_min_valid_bits;  /* fewer valid bits: no decision */
};

#define BM_NO_ID UINT64_MAX

/* One result slot. Unused slots have id BM_NO_ID and score -INFINITY. */
struct bm_candidate {
    uint64_t id;
    float score;
};

/* A probe as a client sends it. Dense: 'dense' points at dim floats (not
 * necessarily normalised; the search normalises and, for int8 galleries,
 * quantises it). Iris: code and mask, each bm_spec_iris_bytes() long. */
struct bm_probe {
    const float *dense;
    const uint8_t *iris_code;
    const uint8_t *iris_mask;
};

/* Fill 'spec' with the defaults for a modality (open-iris geometry for iris,
 * d=512 int8 for dense). */
void bm_spec_default(struct bm_spec *spec, enum bm_modality modality);

/* Check a spec; BM_OK or BM_EINVAL with the reason in err. */
int bm_spec_validate(const struct bm_spec *spec, char *err, size_t errlen);

/* Bytes of one packed template in storage layout (dense: dim * element
 * size; iris: code bytes + mask bytes), excluding the per-vector scale. */
size_t bm_spec_template_bytes(const struct bm_spec *spec);

/* Bytes of an iris code (= bytes of its mask). */
size_t bm_spec_iris_bytes(const struct bm_spec *spec);

/* Check one dense vector (finite, not zero) or iris probe (right sizes)
 * before it is encoded or searched. BM_OK or BM_EINVAL with the reason. */
int bm_probe_validate(const struct bm_spec *spec, const struct bm_probe *p,
                      char *err, size_t errlen);

/* ------------------------------------------------------------ segments */

/* An immutable batch of templates in storage layout: ids, packed templates
 * (64-byte aligned rows), and per-vector scales for int8. */
struct bm_segment;

/* A new segment with room for 'capacity' templates, filled by the setters
 * below. Returns NULL on ENOMEM/EINVAL with the reason in err.
 * Ownership: the caller owns it until it hands it to bm_gallery_update(). */
struct bm_segment *bm_segment_new(const struct bm_spec *spec, uint64_t segment_id,
                                  size_t capacity, char *err, size_t errlen);

/* Append a template: dense vectors are L2-normalised and converted to the
 * storage format; NaN/Inf and zero vectors are refused (BM_EINVAL).
 * BM_ERANGE when the segment is full. */
int bm_segment_add_dense(struct bm_segment *s, uint64_t id, const float *vec,
                         char *err, size_t errlen);
int bm_segment_add_iris(struct bm_segment *s, uint64_t id, const uint8_t *code,
                        const uint8_t *mask, char *err, size_t errlen);

/* Append a template already in storage layout (as read back from a stored
 * segment): 'packed' is bm_spec_template_bytes() long; 'scale' is used for
 * int8 only. No normalisation happens, so bytes round-trip exactly. */
int bm_segment_add_packed(struct bm_segment *s, uint64_t id, const void *packed,
                          float scale, char *err, size_t errlen);

size_t bm_segment_count(const struct bm_segment *s);
uint64_t bm_segment_id(const struct bm_segment *s);
uint64_t bm_segment_row_id(const struct bm_segment *s, size_t row);
/* Pointer to row 'row' in storage layout, and its int8 scale (1 otherwise). */
const void *bm_segment_row(const struct bm_segment *s, size_t row);
float bm_segment_row_scale(const struct bm_segment *s, size_t row);
/* Resident bytes of the segment (templates + ids + scales + header). */
size_t bm_segment_memory(const struct bm_segment *s);

/* Free a segment the caller still owns. Accepts NULL. */
void bm_segment_free(struct bm_segment *s);

/* ------------------------------------------------------------- gallery */

struct bm_gallery;

/* A new, empty gallery (version 0). 'pool' is borrowed and must outlive the
 * gallery; NULL searches on the calling thread only. NULL on error. */
struct bm_gallery *bm_gallery_new(const struct bm_spec *spec, struct bm_pool *pool,
                                  char *err, size_t errlen);

/* Publish a new version atomically: add 'nadd' segments (ownership moves to
 * the gallery on success; on failure the caller still owns them), drop the
 * segments whose ids are in 'drop', and replace the tombstone set with
 * 'tombstones' (ids skipped by every search; pass the full set).
 * Thread: one writer at a time (external serialisation); searches may run
 * concurrently. Returns BM_OK or BM_ENOMEM/BM_EINVAL (no change made). */
int bm_gallery_update(struct bm_gallery *g, struct bm_segment **add, size_t nadd,
                      const uint64_t *drop, size_t ndrop,
                      const uint64_t *tombstones, size_t ntombstones,
                      char *err, size_t errlen);

uint64_t bm_gallery_version(const struct bm_gallery *g);
/* Live templates in the current version (rows minus tombstoned ones). */
size_t bm_gallery_count(const struct bm_gallery *g);
/* Resident bytes of the current version. */
size_t bm_gallery_memory(const struct bm_gallery *g);
const struct bm_spec *bm_gallery_spec(const struct bm_gallery *g);

/* Score 'nprobes' probes against every live template and keep, for each
 * probe, the 'k' best candidates with score >= threshold (pass -INFINITY for
 * none), best first, ties broken by lower id. 'out' holds nprobes * k
 * entries, probe-major. The gallery is streamed once per batch of probes,
 * split across the pool's threads.
 * Thread: any; concurrent searches are fine. Pins the current version for
 * the duration of the call. Returns BM_OK, or BM_EINVAL (invalid probe; out
 * is untouched). 'comparisons' (may be NULL) receives templates scored.
 * int8 galleries: a score is the normalised f32 probe against the
 * dequantised row (scale * q), as bm_gallery_verify reports it; the int8 x
 * int8 scan keeps max(4k, k + 32) candidates per probe and the k best of
 * them after exact re-scoring are returned (docs/internals/match.md). */
int bm_gallery_search(struct bm_gallery *g, const struct bm_probe *probes,
                      size_t nprobes, size_t k, float threshold,
                      struct bm_candidate *out, uint64_t *comparisons,
                      char *err, size_t errlen);

/* 1:1 verification: O(1) lookup of 'id' and one comparison. BM_ENOTFOUND
 * when the id is absent or tombstoned; iris with too few valid bits gives
 * BM_OK with *score = NAN (no decision). */
int bm_gallery_verify(struct bm_gallery *g, const struct bm_probe *probe,
                      uint64_t id, float *score, char *err, size_t errlen);

/* Free the gallery once no search is running. Accepts NULL. */
void bm_gallery_free(struct bm_gallery *g);

#endif /* BM_GALLERY_H */
