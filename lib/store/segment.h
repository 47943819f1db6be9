/* The segment blob: one sealed, immutable segment of a shard as stored in
 * Redis at bm:{<gallery>:<shard>}:seg:<id> (docs/storage.md, byte by byte).
 *
 * A blob is a 192-byte little-endian header (magic, format version,
 * geometry, count, section table, flags, segment id, SHA-256) followed by
 * three sections: packed templates (64-byte aligned rows, so SIMD loads
 * need no fix-up), int8 scales, and the subject ids. Matcher keys are not
 * stored; the decoder recomputes them from the ids (subjects.h), so ids and
 * keys can never disagree.
 *
 * Invariant of the decoder: no byte of a blob is trusted before it is
 * checked. Every offset and length is checked against the blob size with
 * overflow-safe arithmetic before use, the digest is verified before any
 * section is parsed, and a blob that decodes yields exactly the bytes that
 * were encoded (bm_segment_add_packed, no renormalisation).
 *
 * Thread: any; the functions keep no state. */
#ifndef BM_SEGMENT_H
#define BM_SEGMENT_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "match/gallery.h"

struct bm_subjects;

#define BM_SEGBLOB_MAGIC "BMSEG\r\n\x1a"   /* 8 bytes, no NUL stored */
#define BM_SEGBLOB_VERSION 1u
#define BM_SEGBLOB_HEADER_BYTES 192u
#define BM_SEGBLOB_ALIGN 64u               /* template section and row alignment */
/* Flags. ENCRYPTED is reserved for AES-256-GCM (AAD = gallery, shard,
 * segment id, key id); v1 decoders refuse it with BM_EUNSUPPORTED. */
#define BM_SEGBLOB_FLAG_ENCRYPTED 0x1u
/* Hard limits of the decoder, far above the 16 MiB sealing size, so a
 * corrupt header can never make it allocate gigabytes. */
#define BM_SEGBLOB_MAX_BYTES ((size_t)1 << 30)
#define BM_SEGBLOB_MAX_COUNT (1u << 24)

/* What a blob's header says, after the header checks of bm_segblob_peek(). */
struct bm_segblob_info {
    uint32_t version;
    struct bm_spec spec;     /* storage fields only; the rest are defaults */
    uint32_t count;          /* templates */
    uint32_t stride;         /* bytes per template row in the blob */
    uint32_t flags;
    uint64_t segment_id;
    uint8_t sha256[32];      /* as stored; the value SegmentRef.sha256 holds */
};

/* Row stride of 'spec' in a blob: template bytes rounded up to 64. */
size_t bm_segblob_stride(const struct bm_spec *spec);

/* Encode a segment of 'count' templates.
 *
 * 'subject_ids[i]' ('subject_lens[i]' bytes, 1..128, no NUL needed) names
 * row i. 'packed_templates' holds 'count' rows in storage layout, each
 * bm_spec_template_bytes(spec) bytes, contiguous. 'scales' holds 'count'
 * floats (finite, > 0) for int8 galleries and is ignored (may be NULL)
 * otherwise. Two rows with the same subject id, or with ids whose keys
 * collide, are refused.
 *
 * On BM_OK, *out is a malloc'd blob of *outlen bytes (caller frees with
 * free()) and 'sha256' (may be NULL) gets its digest, the value to record in
 * SegmentRef.sha256. On failure *out is NULL and the result is BM_EINVAL,
 * BM_ECONFLICT (key collision), BM_ERANGE (over the limits) or BM_ENOMEM. */
int bm_segblob_encode(const struct bm_spec *spec, uint64_t segment_id, size_t count,
                      const char *const *subject_ids, const size_t *subject_lens,
                      const void *packed_templates, const float *scales,
                      uint8_t **out, size_t *outlen, uint8_t sha256[32],
                      char *err, size_t errlen);

/* Encode a matcher segment as built by the segment builder: rows, scales and
 * segment id come from 'seg' (borrowed, unchanged); 'subject_ids[i]' must
 * be the subject whose key is bm_segment_row_id(seg, i) (BM_EINVAL
 * otherwise). Results and ownership as bm_segblob_encode(). */
int bm_segblob_encode_segment(const struct bm_spec *spec, const struct bm_segment *seg,
                              const char *const *subject_ids, const size_t *subject_lens,
                              uint8_t **out, size_t *outlen, uint8_t sha256[32],
                              char *err, size_t errlen);

/* Check and read the header of a blob of 'len' bytes without hashing or
 * parsing the sections (for `gallery stats` and quick checks). BM_OK and
 * *info filled, or BM_EPROTO/BM_ERANGE/BM_EUNSUPPORTED with the reason. */
int bm_segblob_peek(const uint8_t *blob, size_t len, struct bm_segblob_info *info,
                    char *err, size_t errlen);

/* Verify and decode a blob into a new matcher segment.
 *
 * 'expect' is the gallery's spec: a blob of another geometry is refused with
 * BM_ECONFLICT (NULL accepts the blob's own geometry, for tools).
 * 'expect_sha256' (may be NULL) is the manifest's SegmentRef.sha256; the
 * digest is always recomputed and compared with the header, and with it.
 * When 'subjects_out' is not NULL, each row's key -> subject id is added to
 * it (a key collision with a different id gives BM_ECONFLICT).
 *
 * On BM_OK, *seg_out is a new segment (id = the header's segment id) owned
 * by the caller (hand it to bm_gallery_update() or bm_segment_free()). On
 * failure *seg_out is NULL and the result is BM_EPROTO (malformed:
 * truncated, bad magic, bad offsets, bad ids), BM_ECHECKSUM (digest
 * mismatch), BM_ECONFLICT (wrong geometry or key collision), BM_ERANGE (over
 * the limits), BM_EUNSUPPORTED (newer format version or encrypted) or
 * BM_ENOMEM; err says which check failed and never contains template bytes.
 * Subjects added before a failure stay in 'subjects_out' (they are correct
 * key -> id pairs; the table never holds a wrong mapping). */
int bm_segblob_decode(const uint8_t *blob, size_t len, const struct bm_spec *expect,
                      const uint8_t expect_sha256[32], struct bm_segment **seg_out,
                      struct bm_subjects *subjects_out, char *err, size_t errlen);

#endif /* BM_SEGMENT_H */
