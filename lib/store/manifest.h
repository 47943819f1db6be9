/* Shard manifests: the versioned list of a shard's sealed segments and
 * tombstones, stored as a biomatch.v1.ShardManifest at
 * bm:{<gallery>:<shard>}:manifest (docs/storage.md).
 *
 * A manifest is immutable once published; the gallery role derives the next
 * version with bm_manifest_next() and publishes it by compare-and-set on the
 * version, and workers apply the difference between the version they hold
 * and a newer one with bm_manifest_diff(). Invariants of every manifest this
 * module hands out: a valid gallery name, unique segment ids sorted
 * ascending, 32-byte digests, tombstones of 1..128 bytes.
 *
 * Ownership: every struct bm_manifest returned here is the caller's, freed
 * with bm_manifest_free(); encoded buffers are malloc'd, freed with free().
 * Thread: any; no shared state (a manifest may be read by many threads). */
#ifndef BM_MANIFEST_H
#define BM_MANIFEST_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "store/keys.h"

/* Default decode limit. A manifest is small (a shard of a million subjects
 * has ~30 segments) except for tombstones, which compaction bounds; 64 MiB
 * allows 500k tombstones of maximal length. */
#define BM_MANIFEST_MAX_BYTES ((size_t)64 << 20)
#define BM_KEY_ID_MAX 64
#define BM_MANIFEST_EPOCH_BYTES 16
#define BM_MANIFEST_MAC_BYTES 32

/* One sealed segment (SegmentRef). */
struct bm_segref {
    uint64_t id;                       /* bm:{<gallery>:<shard>}:seg:<id> */
    uint32_t count;                    /* templates in it */
    uint64_t bytes;                    /* blob size */
    uint8_t sha256[32];                /* the blob's digest (segment.h) */
    char key_id[BM_KEY_ID_MAX + 1];    /* at-rest key id; "" = not encrypted */
};

struct bm_manifest {
    char gallery[BM_GALLERY_NAME_MAX + 1];
    uint32_t shard;
    uint64_t version;                  /* +1 per publish; 0 = nothing published */
    int64_t log_offset;                /* next gallery.<name> offset not covered */
    struct bm_segref *segments;        /* sorted by id, ids unique */
    size_t nsegments;
    char **tombstones;                 /* NUL-terminated subject ids, sorted, unique */
    size_t ntombstones;
    uint32_t subjects;                 /* live subjects */
    int64_t updated_unix_ms;
    uint8_t epoch[BM_MANIFEST_EPOCH_BYTES]; /* the shard history's random id;
                                        * all zero: unknown (an old writer) */
    uint8_t mac[BM_MANIFEST_MAC_BYTES];/* store/manifest_mac.h; valid if has_mac */
    int has_mac;
    char mac_key_id[BM_KEY_ID_MAX + 1];/* at-rest key of the MAC; "" = none */
};

/* An empty manifest of version 0 (what a shard has before its first
 * publish), with a fresh random epoch: every version derived from it by
 * bm_manifest_next keeps that epoch. NULL with the reason in err on a bad
 * name, ENOMEM or a failing random source. */
struct bm_manifest *bm_manifest_new(const char *gallery, uint32_t shard, char *err,
                                    size_t errlen);

/* Free a manifest and everything in it. Accepts NULL. */
void bm_manifest_free(struct bm_manifest *m);

/* A deep copy of 'm'; NULL on ENOMEM. */
struct bm_manifest *bm_manifest_dup(const struct bm_manifest *m, char *err, size_t errlen);

/* Decode 'len' bytes of a ShardManifest. 'max_len' (0 = BM_MANIFEST_MAX_BYTES)
 * is checked before any byte is parsed. On BM_OK *out is a new manifest
 * (segments sorted by id, tombstones sorted and deduplicated). On failure
 * *out is NULL and the result is BM_ERANGE (too large), BM_EPROTO (not a
 * ShardManifest, or invalid: bad gallery name, duplicate segment id, digest
 * not 32 bytes, tombstone length) or BM_ENOMEM. */
int bm_manifest_decode(const uint8_t *buf, size_t len, size_t max_len,
                       struct bm_manifest **out, char *err, size_t errlen);

/* Encode 'm' as a ShardManifest into a malloc'd buffer. BM_OK, BM_EINVAL
 * (m breaks an invariant above) or BM_ENOMEM; *out is NULL on failure. */
int bm_manifest_encode(const struct bm_manifest *m, uint8_t **out, size_t *len,
                       char *err, size_t errlen);

/* One publication step, applied by bm_manifest_next(). */
struct bm_manifest_change {
    const struct bm_segref *add;       /* new segments (ids not in the old version) */
    size_t nadd;
    const uint64_t *drop;              /* ids of old segments to remove */
    size_t ndrop;
    int set_tombstones;                /* 1: replace the tombstones with the list below */
    const char *const *tombstones;     /* the full new set (NUL-terminated ids) */
    size_t ntombstones;
    int64_t log_offset;                /* the new version's covered offset */
    uint32_t subjects;                 /* live subjects after the change */
    int64_t updated_unix_ms;
};

/* The successor of 'old': version old->version + 1, old's epoch, old's
 * segments minus 'drop' plus 'add', tombstones replaced when asked, the
 * scalar fields from 'c', and no MAC (sign it before publishing). On BM_OK *out is new (old is unchanged). Fails, with *out NULL, with
 * BM_ECONFLICT (an added id already exists, or is added twice), BM_ENOTFOUND
 * (a dropped id is absent), BM_EINVAL (bad tombstone or key id, log offset
 * going backwards) or BM_ENOMEM. */
int bm_manifest_next(const struct bm_manifest *old, const struct bm_manifest_change *c,
                     struct bm_manifest **out, char *err, size_t errlen);

/* What a worker holding 'from' must do to reach 'to'. Arrays are malloc'd
 * (free with bm_manifest_diff_free()); strings are borrowed from the two
 * manifests, which must outlive the diff. */
struct bm_manifest_diff {
    const struct bm_segref **added;    /* segments of 'to' to load, ascending id:
                                        * add them to the matcher in this order */
    size_t nadded;
    uint64_t *removed;                 /* segment ids of 'from' to drop */
    size_t nremoved;
    const char **new_tombstones;       /* in 'to', not in 'from' */
    size_t nnew_tombstones;
    const char **gone_tombstones;      /* in 'from', not in 'to' */
    size_t ngone_tombstones;
};

/* Diff two manifests of one shard. 'from' may be NULL (a worker with
 * nothing loaded: everything in 'to' is added). A segment id present in both
 * with a different digest or size is listed as removed and added (reload).
 * Manifests of different epochs (bm_manifest_same_epoch) belong to two
 * histories of the shard (Redis lost it and it was rebuilt): every segment
 * and tombstone of 'from' is removed and every one of 'to' added, whatever
 * the versions. BM_OK, BM_EINVAL (different gallery or shard, or, in one
 * epoch, 'to' older than 'from') or BM_ENOMEM; *d is zeroed on failure. */
int bm_manifest_diff(const struct bm_manifest *from, const struct bm_manifest *to,
                     struct bm_manifest_diff *d, char *err, size_t errlen);

/* Free the arrays of a diff and zero it. Accepts NULL. */
void bm_manifest_diff_free(struct bm_manifest_diff *d);

/* The matcher keys (subjects.h) of m's tombstones, for bm_gallery_update():
 * a malloc'd array of m->ntombstones keys in *keys (NULL when there are
 * none). BM_OK or BM_ENOMEM. */
int bm_manifest_tombstone_keys(const struct bm_manifest *m, uint64_t **keys,
                               char *err, size_t errlen);

/* 1 when 'a' and 'b' carry the same epoch, so their versions compare. */
int bm_manifest_same_epoch(const struct bm_manifest *a, const struct bm_manifest *b);

/* Give 'm' a fresh random epoch (a rebuild starts a new history).
 * BM_OK or BM_EIO (no random bytes). */
int bm_manifest_new_epoch(struct bm_manifest *m, char *err, size_t errlen);

/* The segment of 'm' with 'id', or NULL. */
const struct bm_segref *bm_manifest_segment(const struct bm_manifest *m, uint64_t id);

/* The compare-and-set publication script (Redis EVAL/EVALSHA, Lua 5.1),
 * documented in docs/storage.md:
 *   KEYS[1]      the manifest key (bm_key_manifest())
 *   KEYS[2..n]   keys of segments the new version drops (same hash tag)
 *   ARGV[1]      the version the writer built on, decimal ("0": none yet)
 *   ARGV[2]      the new encoded manifest; its version must be ARGV[1] + 1
 *   ARGV[3]      grace in ms before dropped segments expire (workers still
 *                loading the old version can read them meanwhile)
 * Replies 1 (published) or 0 (the stored version is not ARGV[1]: another
 * writer won; re-read, rebuild, retry), or an error reply when the stored
 * manifest is unreadable or the new version is not ARGV[1] + 1. The script
 * reads the version out of the protobuf bytes (field 3, varint), so the
 * manifest stays a plain string value that workers GET. */
extern const char bm_manifest_cas_lua[];

#endif /* BM_MANIFEST_H */
