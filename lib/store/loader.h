/* Shard loading for workers (docs/architecture.md §3): read a
 * shard's manifest and sealed segments from Redis, verify every blob's
 * SHA-256 against the manifest, and build the matcher's in-memory gallery
 * plus the key -> subject id table; later, follow newer manifest versions
 * incrementally.
 *
 * Invariant: a struct bm_shard always mirrors exactly one published manifest
 * version: its gallery holds the segments of that version (added in
 * ascending segment id, so the latest row of a subject wins) and its
 * tombstone set. A load or refresh that fails leaves the shard as it was.
 *
 * Memory: blobs are fetched with pipelined GETs in bounded batches (at most
 * BM_SHARD_BATCH_BYTES of blob data and BM_SHARD_BATCH_SEGMENTS replies in
 * flight) and each blob is freed as soon as it is decoded, so a load never
 * holds more than one batch of raw blobs next to the gallery. The subject
 * table is reserved once for the whole manifest, so it does not grow by
 * doubling. For an int8 d=512 shard the resident total (gallery + subject
 * table) stays near 1.07x the raw template bytes (count x 512).
 *
 * Errors: enum bm_err with a message in the caller's err. BM_ENOTFOUND
 * means Redis lost the manifest or a segment it references (a flushed
 * cache): wait for the coordinator's rebuild and retry. BM_ECHECKSUM means a
 * stored blob does not match its manifest digest.
 *
 * Thread: bm_shard_load and bm_shard_refresh use the caller's Redis
 * connection (one thread at a time, store/redis.h). Any number of threads
 * may search bm_shard_gallery() and call bm_shard_subject_id() while one
 * thread runs bm_shard_refresh(): the gallery publishes the new version
 * atomically (searches in flight finish on the old one) and the subject
 * table is guarded by an internal read-write lock. Refreshes must be
 * serialised by the caller. bm_shard_free needs exclusive access. */
#ifndef BM_LOADER_H
#define BM_LOADER_H

#include <stddef.h>
#include <stdint.h>

#include "biomatch.pb-c.h"
#include "common/err.h"

struct bm_redis;
struct bm_pool;
struct bm_gallery;
struct bm_manifest;
struct bm_keyring;

/* Bounds on blob data in flight during one pipelined batch. A single
 * segment larger than the byte bound is fetched alone. */
#define BM_SHARD_BATCH_BYTES ((size_t)64 << 20)
#define BM_SHARD_BATCH_SEGMENTS 16

struct bm_shard;

/* Counters of one shard, for logs, metrics and `biomatch gallery load`. */
struct bm_shard_stats {
    uint64_t version;          /* manifest version held */
    size_t segments;           /* segments in the gallery */
    size_t subjects;           /* live templates (rows minus tombstoned) */
    size_t tombstones;         /* tombstones of the held manifest */
    uint64_t last_bytes;       /* blob bytes fetched by the last load/refresh */
    uint64_t last_segments;    /* segments fetched by the last load/refresh */
    double last_ms;            /* wall time of the last load/refresh */
    uint64_t total_bytes;      /* blob bytes fetched since bm_shard_load */
    size_t gallery_memory;     /* bm_gallery_memory() of the current version */
    size_t subjects_memory;    /* bm_subjects_memory() of the subject table */
    size_t template_bytes;     /* rows x bm_spec_template_bytes(): the raw size */
};

/* Load shard 'shard' of gallery 'def' (borrowed; must be valid, see
 * store/galdef.h) from Redis. 'pool' is borrowed for the gallery's searches
 * and must outlive the shard (NULL: search on the calling thread).
 * A shard whose manifest was never published is BM_ENOTFOUND as well: a
 * worker cannot tell "empty" from "lost" without the manifest.
 *
 * Returns the shard (caller owns; bm_shard_free) with *rc = BM_OK, or NULL
 * with *rc = BM_ENOTFOUND (manifest or a segment missing), BM_ECHECKSUM
 * (blob digest differs from the manifest), BM_EPROTO (a blob or the manifest
 * is malformed), BM_ECONFLICT (a blob of another geometry, or a subject key
 * collision), BM_EINVAL, BM_ENOMEM or a Redis error (BM_EIO, BM_ETIMEDOUT,
 * BM_EREDIS, BM_ERANGE). 'rc' may be NULL. Nothing to free on failure. */
struct bm_shard *bm_shard_load(struct bm_redis *r, const Biomatch__V1__GalleryDefinition *def,
                               uint32_t shard, struct bm_pool *pool, int *rc, char *err,
                               size_t errlen);

/* bm_shard_load with the at-rest keyring 'kr' (crypto/keyring.h;
 * borrowed, read-only, must outlive the shard; NULL = no keys), used by
 * this load and every later bm_shard_refresh to open encrypted segments
 * and check manifest MACs (docs/storage.md §8). Additional errors:
 * BM_EUNSUPPORTED when a segment or the manifest's MAC uses a key id 'kr'
 * lacks (err names the key id), BM_ECHECKSUM when authentication fails or,
 * under strict mode (bm_keyring_strict), for a plaintext segment or a
 * manifest without a valid MAC (store/manifest_mac.h), BM_EPROTO when the
 * stored value and the manifest disagree about its key id. bm_shard_load(...) is
 * bm_shard_load_keyring(..., NULL, ...). */
struct bm_shard *bm_shard_load_keyring(struct bm_redis *r,
                                       const Biomatch__V1__GalleryDefinition *def, uint32_t shard,
                                       struct bm_pool *pool, const struct bm_keyring *kr, int *rc,
                                       char *err, size_t errlen);

/* Follow the shard's manifest: when the version in Redis is newer than the
 * one held, or of another epoch (the shard was rebuilt after Redis lost
 * it: everything is replaced, whatever the version numbers say), fetch only the segments it adds, drop the segments it removes
 * and replace the tombstone set, publishing one new gallery version (the
 * old one stays alive for searches that pinned it). *changed (may be NULL)
 * is 1 when a new version was applied, 0 when Redis holds the same or an
 * older version of the held epoch (nothing done).
 * Returns BM_OK or the errors of bm_shard_load; on failure the shard keeps
 * its current version and remains usable. Thread: see the file comment. */
int bm_shard_refresh(struct bm_shard *s, struct bm_redis *r, int *changed, char *err,
                     size_t errlen);

/* The matcher gallery (borrowed; valid until bm_shard_free). Search it
 * directly; it always holds the latest applied version. */
struct bm_gallery *bm_shard_gallery(const struct bm_shard *s);

/* The manifest version held (0 never happens for a loaded shard). */
uint64_t bm_shard_version(const struct bm_shard *s);

/* The held manifest (borrowed; replaced, and the old one freed, by the next
 * successful refresh, so only the refreshing thread may keep it). */
const struct bm_manifest *bm_shard_manifest(const struct bm_shard *s);

uint32_t bm_shard_index(const struct bm_shard *s);

/* Copy the subject id of matcher key 'key' into buf (NUL-terminated; at
 * most BM_SUBJECT_ID_MAX + 1 bytes needed). Returns the id length, or
 * BM_ENOTFOUND (unknown key) or BM_ERANGE (buf too small; buf = "").
 * Thread: any, concurrently with a refresh (takes the read lock). */
int bm_shard_subject_id(struct bm_shard *s, uint64_t key, char *buf, size_t len);

/* Fill *st. Thread: any, but the memory figures are only consistent when no
 * refresh runs. */
void bm_shard_stats(struct bm_shard *s, struct bm_shard_stats *st);

/* Free the shard, its gallery (no search may still run) and its tables.
 * Accepts NULL. */
void bm_shard_free(struct bm_shard *s);

#endif /* BM_LOADER_H */
