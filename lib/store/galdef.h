/* Gallery definitions: what a gallery is (modality, geometry, storage
 * format, shards S, replicas R), kept in Redis at bm:gallery:<name> as the
 * protobuf bytes of a biomatch.v1.GalleryDefinition (docs/architecture.md §5).
 *
 * Invariant: a definition is immutable once created. bm_galdef_put() either
 * creates the key, or succeeds without writing when the stored definition is
 * identical (ignoring created_unix_ms), or refuses with BM_ECONFLICT. The
 * create is a single SET NX, so two concurrent creators cannot both "win"
 * with different definitions; the loser compares against the winner.
 *
 * Conversions to and from the matcher's struct bm_spec live here too, so
 * every program maps the proto enums the same way.
 *
 * Errors: enum bm_err (common/err.h) with a message in the caller's err.
 * Thread: the functions share no state; a struct bm_redis is used by one
 * thread at a time (store/redis.h). */
#ifndef BM_GALDEF_H
#define BM_GALDEF_H

#include <stddef.h>
#include <stdint.h>

#include "biomatch.pb-c.h"
#include "common/err.h"
#include "match/gallery.h"

struct bm_redis;

/* Largest encoded definition we accept from Redis (decoder size limit). */
#define BM_GALDEF_MAX_BYTES 4096
/* Limits on S and R: Kafka partitions of tasks.<name> are S x R. */
#define BM_GALDEF_MAX_SHARDS 4096
#define BM_GALDEF_MAX_REPLICAS 64

/* Check a definition: valid name (1..64 bytes of [A-Za-z0-9_-], the rule of
 * conf/topics.h, so gallery.<name> and tasks.<name> are legal topics and
 * the Redis keys of store/keys.h are too), known modality, geometry
 * valid for the matcher (bm_spec_validate), 1 <= S <= BM_GALDEF_MAX_SHARDS,
 * 1 <= R <= BM_GALDEF_MAX_REPLICAS, S x R <= 100000. BM_OK or BM_EINVAL. */
int bm_galdef_validate(const Biomatch__V1__GalleryDefinition *def, char *err,
                       size_t errlen);

/* The matcher spec of a definition. Iris fields left 0 in the definition
 * take the matcher defaults (open-iris 2x16x256x2, 15 rotations,
 * fractional scoring). FACE, FINGERPRINT and PALM map to BM_MODALITY_DENSE.
 * BM_OK or BM_EINVAL (spec then undefined). Thread: any. */
int bm_galdef_to_spec(const Biomatch__V1__GalleryDefinition *def,
                      struct bm_spec *spec, char *err, size_t errlen);

/* Build a definition from a spec. 'modality' is the proto modality (dense
 * specs need FACE, FINGERPRINT or PALM; iris specs need IRIS).
 * Returns a heap definition owned by the caller (bm_galdef_free), with
 * created_unix_ms = 0, or NULL (BM_EINVAL / BM_ENOMEM reason in err). */
Biomatch__V1__GalleryDefinition *bm_galdef_from_spec(const char *name,
                                                     Biomatch__V1__Modality modality,
                                                     const struct bm_spec *spec,
                                                     uint32_t shards, uint32_t replicas,
                                                     char *err, size_t errlen);

/* 1 when a and b describe the same gallery (every field but
 * created_unix_ms; unset iris fields compare as their defaults), else 0. */
int bm_galdef_equal(const Biomatch__V1__GalleryDefinition *a,
                    const Biomatch__V1__GalleryDefinition *b);

/* The protobuf bytes of 'def' (as stored in Redis and in the galleries
 * topic) in a malloc'd *out of *len bytes (caller frees). BM_OK or
 * BM_ENOMEM (*out NULL). */
int bm_galdef_encode(const Biomatch__V1__GalleryDefinition *def, uint8_t **out, size_t *len,
                     char *err, size_t errlen);

/* A deep copy of 'def' (owned by the caller, bm_galdef_free), or NULL
 * with *rc (may be NULL) BM_ENOMEM, or the decoder's refusal of a
 * definition that does not validate. */
Biomatch__V1__GalleryDefinition *bm_galdef_dup(const Biomatch__V1__GalleryDefinition *def,
                                               int *rc, char *err, size_t errlen);

/* Free a definition returned by this module (bm_galdef_from_spec,
 * bm_galdef_get, bm_galdef_decode). Accepts NULL. */
void bm_galdef_free(Biomatch__V1__GalleryDefinition *def);

/* Decode 'len' bytes (at most BM_GALDEF_MAX_BYTES, checked before parsing)
 * and validate. Returns a definition owned by the caller, or NULL with
 * *rc = BM_ERANGE / BM_EPROTO / BM_EINVAL / BM_ENOMEM. 'rc' may be NULL. */
Biomatch__V1__GalleryDefinition *bm_galdef_decode(const void *buf, size_t len,
                                                  int *rc, char *err, size_t errlen);

/* Create the definition at bm:gallery:<def->name> (validated first).
 * BM_OK when created or when an identical definition already exists
 * (*created, if not NULL, says which: 1 = written now, 0 = already there);
 * BM_ECONFLICT when a different definition exists (nothing written; err
 * names the first differing field); BM_EINVAL; BM_EPROTO when the stored
 * value does not decode; Redis errors (BM_EIO, ...). 'def' is borrowed.
 * Atomicity: SET NX creates; only when it did not, the stored (immutable)
 * value is read and compared, so concurrent creators agree on one winner. */
int bm_galdef_put(struct bm_redis *r, const Biomatch__V1__GalleryDefinition *def,
                  int *created, char *err, size_t errlen);

/* Load the definition of gallery 'name'. Returns it (caller frees with
 * bm_galdef_free) and *rc = BM_OK, or NULL with *rc = BM_ENOTFOUND (no such
 * gallery), BM_EPROTO/BM_ERANGE/BM_EINVAL (stored bytes are bad), or a
 * Redis error. 'rc' must not be NULL. */
Biomatch__V1__GalleryDefinition *bm_galdef_get(struct bm_redis *r, const char *name,
                                               int *rc, char *err, size_t errlen);

/* Every gallery definition in Redis (SCAN MATCH bm:gallery:*, then GET
 * each), sorted by name. On BM_OK *defs is a malloc'd array of *ndefs
 * definitions (caller frees with bm_galdef_list_free; *defs may be NULL when
 * *ndefs is 0). Keys whose value does not decode (or vanished meanwhile) are
 * skipped; *nbad (may be NULL) counts the undecodable ones. On failure *defs
 * is NULL and *ndefs 0. */
int bm_galdef_list(struct bm_redis *r, Biomatch__V1__GalleryDefinition ***defs,
                   size_t *ndefs, size_t *nbad, char *err, size_t errlen);
void bm_galdef_list_free(Biomatch__V1__GalleryDefinition **defs, size_t ndefs);

#endif /* BM_GALDEF_H */
