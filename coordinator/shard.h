/* One shard of one gallery as its writer (the segment builder) sees it:
 * the published manifest, an index of where each live subject's row is,
 * the tombstones, and a buffer of changes not sealed yet.
 *
 * Durability protocol (docs/storage.md section 7): the manifest's
 * log_offset is the truth about what is sealed. Records below it are
 * ignored; records at or above it are buffered (the latest change of a
 * subject wins); sealing writes segment blobs (never over a blob the
 * current manifest references, nor after another writer published), then
 * publishes the
 * next manifest by compare-and-set on its version, and only then may the
 * caller store the gallery.<name> offset (bm_gshard_log_offset). A crash
 * anywhere re-reads the log from log_offset and seals again under the same
 * segment ids, so a re-sealed segment replaces its orphan, never adds.
 *
 * Thread: a shard is used by the builder thread only. */
#ifndef BM_COORD_SHARD_H
#define BM_COORD_SHARD_H

#include <stddef.h>
#include <stdint.h>

#include "biomatch.pb-c.h"
#include "bus/bus.h"
#include "common/err.h"

struct bm_redis;
struct bm_metrics;
struct bm_keyring;
struct bm_gshard;

/* What every shard of a builder shares (all borrowed). */
struct bm_gshard_env {
    struct bm_redis *redis;
    const struct bm_bus_conf *bus;    /* for log reads (rebuild, resync) */
    struct bm_metrics *metrics;
    int64_t segment_max_bytes;        /* seal at this blob size */
    int segment_max_age_ms;           /* or when the oldest change is this old */
    int64_t grace_ms;                 /* dropped segments expire after this */
    int compact_quiet_ms;             /* idle time before compacting small segments */
    const struct bm_keyring *keyring; /* at-rest keys; blobs are sealed under its
                                         current key, if any (NULL: plaintext) */
};

/* Open shard 'partition' of gallery 'def' (copied) whose log is 'topic':
 * load the manifest and an index of its segments from Redis, rebuilding
 * the shard from the log when the manifest or a segment is missing, then
 * buffer the log's tail from the manifest's log_offset.
 * Returns the shard (caller frees with bm_gshard_free) or NULL with the
 * reason in err. */
struct bm_gshard *bm_gshard_open(const struct bm_gshard_env *env,
                                 const Biomatch__V1__GalleryDefinition *def,
                                 const char *topic, int32_t partition, char *err,
                                 size_t errlen);

/* Free; buffered changes are dropped (the log still has them). NULL ok. */
void bm_gshard_free(struct bm_gshard *sh);

/* Buffer one record of the shard's log (key = subject id, value NULL = a
 * delete; the value may be sealed, crypto/atrest.h). Records below the
 * manifest's log_offset, and records older than the buffered change of
 * the same subject, are ignored. A record that does not decode, is not in
 * the gallery's storage form, or does not authenticate is skipped with a
 * warning (BM_OK: it cannot be fixed by reading it again). A record sealed
 * under a key id the keyring lacks is BM_EUNSUPPORTED: the caller stops
 * rather than build shards without it. */
int bm_gshard_add(struct bm_gshard *sh, int64_t offset, const void *key, size_t keylen,
                  const void *value, size_t valuelen);

/* bm_gshard_add with the subject key given instead of hashed from 'id':
 * for tests only, to drive the key collision path (a change whose key is
 * held by another subject id is refused, counted and logged, never
 * applied) without searching for an FNV-1a collision. */
int bm_gshard_add_keyed(struct bm_gshard *sh, int64_t offset, uint64_t subject_key,
                        const char *id, size_t idlen, const void *value, size_t valuelen);

/* 1 when the buffer should be sealed now (size or age reached). */
int bm_gshard_due(const struct bm_gshard *sh, long long now_ms);

/* 1 when changes are buffered. */
int bm_gshard_pending(const struct bm_gshard *sh);

/* Seal the buffer into segments and publish the next manifest. On a lost
 * compare-and-set (another writer published) the shard resyncs from Redis
 * and the log. BM_OK (also when nothing was buffered) or an error; after
 * an error the shard resyncs on the next bm_gshard_check. */
int bm_gshard_seal(struct bm_gshard *sh);

/* Periodic duties: detect a lost manifest or segment (rebuild), a manifest
 * published by someone else (resync), a missing gallery definition (put
 * back from the cached one); compact when worthwhile. BM_OK or an error
 * (logged; call again later). */
int bm_gshard_check(struct bm_gshard *sh, long long now_ms);

/* Compact now if there is anything to gain (also used by check). */
int bm_gshard_compact(struct bm_gshard *sh);

/* The published manifest's log_offset: every offset below it is sealed,
 * so the caller may store it as the group's committed position. */
int64_t bm_gshard_log_offset(const struct bm_gshard *sh);

const char *bm_gshard_topic(const struct bm_gshard *sh);
int32_t bm_gshard_partition(const struct bm_gshard *sh);

#endif /* BM_COORD_SHARD_H */
