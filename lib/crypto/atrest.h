/* The at-rest envelope: how a segment blob is stored in Redis, and a
 * gallery change in the gallery's Kafka log, when a key is configured
 * (docs/storage.md "Encryption at rest", byte by byte).
 *
 * The value at bm:{<gallery>:<shard>}:seg:<id> is either a plaintext
 * segment blob (it starts with "BMSEG\r\n\x1a") or an envelope (it starts
 * with "BMENC\r\n\x1a"): magic, version, key id, then AES-256-GCM
 * nonce | ciphertext | tag whose plaintext is the whole segment blob. The
 * AAD binds the envelope header (magic, version, key id) and the blob's
 * place -- gallery, shard, segment id -- so a blob copied to another key
 * does not authenticate. The segment format itself is unchanged, and the
 * manifest's SegmentRef.sha256 stays the digest of the plaintext blob,
 * checked by the segment decoder after opening.
 *
 * A gallery log record's value (an encoded GalleryChange) is sealed the
 * same way, its AAD binding gallery, shard and the record's subject id
 * (its Kafka key), so a sealed template moved to another subject or shard
 * does not authenticate. A delete (tombstone) has no value to seal.
 *
 * Invariant: bm_atrest_open returns plaintext only after the tag verified
 * under the key the envelope names, for the place the caller expects.
 *
 * Thread: any; the functions keep no state (the keyring is read-only). */
#ifndef BM_ATREST_H
#define BM_ATREST_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "crypto/keyring.h"

#define BM_ATREST_MAGIC "BMENC\r\n\x1a" /* 8 bytes, no NUL stored */
#define BM_ATREST_VERSION 1u
/* Envelope bytes around a blob sealed under a key id of 'idlen' bytes. */
#define BM_ATREST_OVERHEAD(idlen) (13u + (idlen) + BM_AEAD_OVERHEAD)

/* 1 when the stored value 'val' ('len' bytes) starts with the envelope
 * magic (it may still be malformed), else 0. */
int bm_atrest_is_sealed(const void *val, size_t len);

/* 1 when strict at-rest mode (bm_keyring_strict) refuses 'val' because it
 * is not an envelope: callers count the refusal before opening (the open
 * functions refuse it too, with BM_ECHECKSUM). */
int bm_atrest_plaintext_refused(const struct bm_keyring *kr, const void *val, size_t len);

/* The key id an envelope names, copied into 'id' (NUL-terminated) without
 * opening it. BM_OK; BM_ENOTFOUND when 'val' is not an envelope (a
 * plaintext blob); BM_EPROTO or BM_EUNSUPPORTED (newer version) when it is
 * malformed. */
int bm_atrest_key_id(const void *val, size_t len, char id[BM_KEYRING_ID_MAX + 1], char *err,
                     size_t errlen);

/* Seal segment blob 'blob' ('len' bytes) of segment 'segment_id' of shard
 * 'shard' of gallery 'gallery' under the keyring's current key.
 * On BM_OK *out is a malloc'd envelope of *outlen bytes (caller frees with
 * free()); the key id used is bm_keyring_current_id(kr) (record it in
 * SegmentRef.key_id). On failure *out is NULL: BM_EINVAL (no keyring or no
 * current key, bad gallery), BM_ENOMEM, or the errors of bm_aead_seal. */
int bm_atrest_seal(const struct bm_keyring *kr, const char *gallery, uint32_t shard,
                   uint64_t segment_id, const uint8_t *blob, size_t len, uint8_t **out,
                   size_t *outlen, char *err, size_t errlen);

/* Open the stored value 'val' ('len' bytes) of segment 'segment_id' of
 * shard 'shard' of 'gallery'. 'expect_key_id' is the manifest's
 * SegmentRef.key_id: "" means the manifest says "not encrypted", any other
 * value must equal the envelope's key id; NULL skips that check (tools).
 *
 * On BM_OK *plain / *plainlen give the segment blob and *owned is either
 * NULL (the value was a plaintext blob: *plain == val, borrowed) or a
 * malloc'd buffer holding the decrypted blob (*plain == *owned); the caller
 * always calls free(*owned). On failure *plain and *owned are NULL and the
 * result is BM_EPROTO (malformed envelope, or it disagrees with the
 * manifest about encryption or key id), BM_ECHECKSUM also for a plaintext
 * blob under strict mode (bm_keyring_strict), BM_EUNSUPPORTED (newer envelope
 * version, or the keyring -- possibly NULL -- lacks the key id the
 * envelope names; err names the key id), BM_ECHECKSUM (authentication
 * failed: wrong key bytes, altered bytes, or a blob stored at another
 * gallery/shard/segment), BM_ENOMEM. */
int bm_atrest_open(const struct bm_keyring *kr, const char *gallery, uint32_t shard,
                   uint64_t segment_id, const char *expect_key_id, const void *val, size_t len,
                   const uint8_t **plain, size_t *plainlen, uint8_t **owned, char *err,
                   size_t errlen);

/* The same for the value of a gallery log record of subject id 'subject'
 * ('subject_len' bytes, 1..1024: the record's key) in partition 'shard' of
 * gallery 'gallery'. Same results as bm_atrest_seal. */
int bm_atrest_seal_record(const struct bm_keyring *kr, const char *gallery, uint32_t shard,
                          const char *subject, size_t subject_len, const uint8_t *val,
                          size_t len, uint8_t **out, size_t *outlen, char *err, size_t errlen);

/* Open a gallery log record's value: a plaintext value (not an envelope,
 * as written without a key) is returned as is (borrowed, *owned NULL),
 * except under strict mode (BM_ECHECKSUM);
 * an envelope is opened as bm_atrest_open does, with the same results
 * (BM_EUNSUPPORTED: the keyring lacks the key id it names; BM_ECHECKSUM:
 * it does not authenticate for this gallery, shard and subject). */
int bm_atrest_open_record(const struct bm_keyring *kr, const char *gallery, uint32_t shard,
                          const char *subject, size_t subject_len, const void *val, size_t len,
                          const uint8_t **plain, size_t *plainlen, uint8_t **owned, char *err,
                          size_t errlen);

#endif /* BM_ATREST_H */
