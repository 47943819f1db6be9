/* Private to coordinator/shard*.c: the state of one shard as its writer
 * sees it, and the helpers the shard's files share. Nothing outside
 * coordinator/shard*.c includes this; the API is shard.h.
 *
 * Files, one concern each:
 *   shard.c          open, free, seal, the periodic check, metrics
 *   shard_state.c    buffer, tombstone set, segment stats, the index
 *   shard_records.c  one log record into a buffer (decode, open, collide)
 *   shard_publish.c  segment writes and the compare-and-set publication
 *   shard_load.c     manifest read, index load, rebuild, resync
 *   shard_compact.c  compaction of small and dead-heavy segments
 *
 * State, all mirroring the published manifest 'man':
 *   index   subject key -> id of the segment holding its live row
 *           (absent: never enrolled, or deleted)
 *   segs    per segment: rows, and rows no longer live (shadowed by a
 *           newer row or deleted), which drive compaction
 *   tombs   subjects whose latest change is a delete while some segment
 *           still holds a row of theirs (the manifest's tombstones)
 *   names   subject key -> subject id of every indexed subject, so a
 *           change whose key is another id's (an FNV-1a collision) is
 *           refused instead of replacing or deleting that subject
 *   buf     changes at offsets >= man->log_offset, one per subject
 * Invariant: outside a call, index/segs/tombs describe exactly 'man'. A
 * call that changed them and then failed to publish marks the shard
 * 'stale', and the next call reloads everything from Redis and the log
 * before doing anything else.
 *
 * Thread: the builder thread only, like shard.h. */
#ifndef BM_COORD_SHARD_INT_H
#define BM_COORD_SHARD_INT_H

#include <stddef.h>
#include <stdint.h>

#include "biomatch.pb-c.h"
#include "match/gallery.h"
#include "shard.h"
#include "store/keys.h"
#include "store/manifest.h"
#include "store/subjects.h"
#include "wire/decode.h"

struct bm_keymap;
struct bm_subjects;
struct bm_segment;
struct bm_gauge;
struct bm_counter;
struct bm_histogram;

#define LOGREAD_TIMEOUT_MS 30000
/* Segment ids: (first log offset of the segment) << 16 | generation. */
#define SEG_GEN_BITS 16
#define SEG_GEN_MASK ((UINT64_C(1) << SEG_GEN_BITS) - 1)
#define COMPACT_MAX_SEGMENTS 32
/* A buffer of at least segment_max_bytes / SEAL_IDLE_MIN_FRACTION that got
 * no change for SEAL_IDLE_MS is sealed without waiting for its age. */
#define SEAL_IDLE_MS 100
#define SEAL_IDLE_MIN_FRACTION 32

/* One buffered change of one subject (the latest wins). */
struct bent {
    uint64_t key;
    int64_t offset;
    float scale;
    uint8_t del;
    uint8_t idlen;
    char id[BM_SUBJECT_ID_MAX + 1];
};

/* Changes not sealed yet, one per subject. */
struct sbuf {
    struct bent *e;
    uint8_t *rows;          /* cap x tbytes; row i belongs to e[i] */
    size_t n, cap, tbytes;
    struct bm_keymap *idx;  /* key -> slot */
    int64_t est_bytes;      /* blob bytes the upserts would take */
    long long first_ms;     /* when the oldest buffered change arrived */
    long long last_ms;      /* when the newest buffered change arrived */
    int64_t last_offset;
};

/* A set of (subject key, subject id): the tombstones, and the ids of
 * indexed subjects. */
struct tombset {
    struct bm_keymap *idx;  /* key -> slot */
    char **s;
    uint64_t *keys;
    size_t n, cap;
};

/* Per published segment: rows, and rows no longer live. */
struct segstat {
    uint64_t id;
    uint32_t rows;
    uint32_t dead;
    uint64_t bytes;
};

struct bm_gshard {
    struct bm_gshard_env env;
    Biomatch__V1__GalleryDefinition *def;
    struct bm_spec spec;
    size_t tbytes, stride;
    int int8;
    char gallery[BM_GALLERY_NAME_MAX + 1];
    uint32_t shard;
    char topic[256];
    char mkey[BM_KEY_MAX];
    struct bm_manifest *man;
    struct bm_keymap *index;
    struct segstat *segs;
    size_t nsegs, capsegs;
    struct tombset tombs;
    struct tombset names;      /* key -> subject id of every indexed subject */
    struct sbuf buf;
    int stale;                 /* state may differ from 'man': reload first */
    long long last_publish_ms;
    long long last_check_ms;
    uint8_t *row;              /* scratch row of tbytes */
    struct bm_gauge *g_version, *g_subjects, *g_segments, *g_tombstones;
    struct bm_counter *c_sealed, *c_rebuilds, *c_compactions, *c_skipped, *c_collisions;
    struct bm_counter *c_refused_manifest, *c_refused_segment, *c_refused_record;
    struct bm_histogram *h_seal;
};

/* One output segment being assembled. */
struct outseg {
    uint64_t id;
    size_t n;
    const char **ids;
    size_t *lens;
    uint64_t *keys;
    uint8_t *rows;
    float *scales;
};


/* ---- shard_state.c */

/* Empty buffer for rows of 'tbytes'. BM_OK or BM_ENOMEM (then
 * gs_sbuf_free it). */
int gs_sbuf_init(struct sbuf *b, size_t tbytes);
/* Forget the buffered changes; keeps the allocations. */
void gs_sbuf_clear(struct sbuf *b);
/* Release everything 'b' holds; 'b' itself is the caller's. */
void gs_sbuf_free(struct sbuf *b);
/* Blob bytes one row takes (template, int8 scale, id length and id). */
int64_t gs_row_cost(size_t stride, int int8, size_t idlen);

/* Add (key, copy of id) unless 'key' is present. BM_OK or BM_ENOMEM. */
int gs_tomb_add(struct tombset *t, uint64_t key, const char *id, size_t len);
void gs_tomb_del(struct tombset *t, uint64_t key);
void gs_tomb_clear(struct tombset *t);

struct segstat *gs_segstat_find(struct bm_gshard *sh, uint64_t id);
int gs_segstat_add(struct bm_gshard *sh, uint64_t id, uint32_t rows, uint64_t bytes);
/* Empty index, segment stats, tombstones and names (not 'man'). */
void gs_state_reset(struct bm_gshard *sh);
const char *gs_name_get(const struct bm_gshard *sh, uint64_t key, size_t *len);
int gs_name_set(struct bm_gshard *sh, uint64_t key, const char *id, size_t len);
void gs_update_gauges(struct bm_gshard *sh);
int gs_index_upsert(struct bm_gshard *sh, uint64_t key, uint64_t id, const char *sid,
                    size_t len);
int gs_index_delete(struct bm_gshard *sh, uint64_t key, const char *id, size_t len);

/* ---- shard_records.c */

/* Parse one log record into buffer 'b' (sh->buf, or a rebuild's own).
 * Contract as bm_gshard_add. */
int gs_buffer_record(struct bm_gshard *sh, struct sbuf *b, int64_t offset, const void *key,
                     size_t keylen, const void *value, size_t valuelen);

/* ---- shard_publish.c */

/* Zeroed 'o' with room for 'cap' rows. BM_OK or BM_ENOMEM ('o' empty). */
int gs_outseg_alloc(struct outseg *o, size_t cap, size_t tbytes);
/* Free what 'o' holds and zero it; an empty 'o' is fine. */
void gs_outseg_free(struct outseg *o);
/* Encode 'o', seal it when an at-rest key is current, store it without
 * ever replacing a blob 'base' publishes (unless 'reuse'). On BM_OK 'ref'
 * describes the stored blob; BM_ECONFLICT: another writer moved on. */
int gs_write_segment(struct bm_gshard *sh, const struct outseg *o,
                     const struct bm_manifest *base, int reuse, struct bm_segref *ref,
                     char *err, size_t errlen);
/* Open (when sealed) and decode stored segment 'ref' into *seg (caller
 * frees), its ids into 'names'. */
int gs_decode_stored(struct bm_gshard *sh, const struct bm_segref *ref, const void *val,
                     size_t len, struct bm_segment **seg, struct bm_subjects *names,
                     char *err, size_t errlen);
/* Sign 'next' (store/manifest_mac.h, under the current at-rest key if
 * any) and compare-and-set it over version 'base', expiring the 'drop'
 * segments after the grace period. BM_OK, BM_ECONFLICT or an error. */
int gs_cas_publish(struct bm_gshard *sh, uint64_t base, struct bm_manifest *next,
                   const uint64_t *drop, size_t ndrop, char *err, size_t errlen);
/* Seal buffer 'b' and publish the manifest that follows 'base' (see its
 * definition for 'replace' and 'end'). 'base' is borrowed, on success and
 * on failure; when it is sh->man, a success replaces (and frees) it. */
int gs_publish(struct bm_gshard *sh, struct sbuf *b, int replace, struct bm_manifest *base,
               int64_t end, char *err, size_t errlen);

/* ---- shard_load.c */

/* The stored manifest: BM_OK with *m (caller frees), BM_ENOTFOUND, or an
 * error. With 'verify' its MAC is checked (store/manifest_mac.h): a
 * manifest refused under strict at-rest mode is counted and is
 * BM_ECHECKSUM (forged, altered or unsigned) or BM_EUNSUPPORTED (signed
 * under a key this process lacks); both mean "rebuild from the log".
 * Without 'verify' (the rebuild's compare-and-set base only: its content
 * is never used) the MAC is ignored. */
int gs_read_manifest(struct bm_gshard *sh, struct bm_manifest **m, int verify, char *err,
                     size_t errlen);
/* Rebuild the shard from its whole log into fresh segments. */
int gs_rebuild(struct bm_gshard *sh, const char *why, char *err, size_t errlen);
/* Load the stored manifest and index (rebuilding what is lost), then
 * buffer the log's unsealed tail. On failure the shard is stale. */
int gs_sync_shard(struct bm_gshard *sh, char *err, size_t errlen);

/* ---- shard_compact.c */

/* 1 when compacting now would pay (dead rows, many small segments, or a
 * quiet shard with something to tidy). */
int gs_compact_worthwhile(const struct bm_gshard *sh, long long now_ms);

#endif /* BM_COORD_SHARD_INT_H */
