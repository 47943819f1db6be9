/* Intake's cache of gallery definitions and topic checks.
 *
 * Gallery definitions are immutable once created (store/galdef.h), so a
 * found definition is kept for 'ttl_ms' only to notice a gallery that was
 * deleted and recreated; an unknown gallery is remembered for a short
 * 'negative_ttl_ms' so a flood of jobs for a missing gallery costs one Redis
 * GET per period while a gallery created a moment ago is found quickly.
 * Topic checks (does a reply topic exist, does tasks.<g> have S x R
 * partitions) go through the admin API and are cached the same way.
 *
 * Invariant: at most BM_GALCACHE_MAX entries each; when full, the whole
 * cache is dropped (cheap, and correct: it is only a cache).
 * Thread: one thread (intake's loop). */
#ifndef BM_GALCACHE_H
#define BM_GALCACHE_H

#include <stddef.h>
#include <stdint.h>

#include "biomatch.pb-c.h"

struct bm_redis;
struct bm_admin;
struct bm_galreg;

#define BM_GALCACHE_MAX 1024

struct bm_galcache;

/* A cache over 'r' and 'a' (both borrowed, must outlive it). NULL on ENOMEM. */
struct bm_galcache *bm_galcache_new(struct bm_redis *r, struct bm_admin *a,
                                    int64_t ttl_ms, int64_t negative_ttl_ms);
void bm_galcache_free(struct bm_galcache *c);

/* Consult 'reg' (borrowed, must outlive the cache; NULL = none) when
 * Redis has no definition: a gallery the galleries topic knows is put
 * back into Redis and found, so a Redis that lost its data never turns
 * valid jobs into UNKNOWN_GALLERY (docs/storage.md §7.8). */
void bm_galcache_set_registry(struct bm_galcache *c, struct bm_galreg *reg);

/* The definition of gallery 'name' at 'now_ms' (monotonic ms). BM_OK with
 * *def borrowed from the cache (valid until the next call), BM_ENOTFOUND
 * (no such gallery, or the stored definition does not decode: *def NULL),
 * or a Redis error (*def NULL; not cached). */
int bm_galcache_get(struct bm_galcache *c, const char *name, int64_t now_ms,
                    const Biomatch__V1__GalleryDefinition **def, char *err, size_t errlen);

/* Check that 'topic' exists with at least 'min_partitions' partitions.
 * When 'create' is set and it does not exist, create it with exactly
 * min_partitions. BM_OK, BM_ENOTFOUND (missing and not created), BM_ERANGE
 * (too few partitions), or a Kafka error (not cached). */
int bm_galcache_topic(struct bm_galcache *c, const char *topic, int min_partitions,
                      int create, int64_t now_ms, char *err, size_t errlen);

#endif /* BM_GALCACHE_H */
