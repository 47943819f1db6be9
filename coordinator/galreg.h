/* The gallery registry: gallery definitions as the compacted Kafka topic
 * <prefix>galleries holds them (key = gallery name, value = an encoded
 * GalleryDefinition, a tombstone deletes), so a definition survives Redis
 * losing its data (docs/storage.md §7.8). Redis stays where every process
 * looks first; the registry is what puts a missing definition back
 * (bm_galreg_restore) and what tells "missing for now" from "unknown".
 *
 * The topic is read once from its beginning to its end (bm_logread), then
 * followed by a group-less consumer polled without waiting on every call,
 * so a lookup never blocks on Kafka once the first read is done. While the
 * first read fails (Kafka down, topic not created yet) the registry is
 * empty and retried at most every few seconds.
 *
 * Thread: one thread per registry (each role that needs one owns one). */
#ifndef BM_COORD_GALREG_H
#define BM_COORD_GALREG_H

#include <stddef.h>

#include "biomatch.pb-c.h"
#include "bus/bus.h"

struct bm_redis;
struct bm_galreg;

/* A registry of topic 'topic' read with 'bus', which is copied with its
 * props array (the strings they point to are borrowed: the
 * configuration's, which outlives every role). Nothing is read yet.
 * NULL on ENOMEM. */
struct bm_galreg *bm_galreg_new(const struct bm_bus_conf *bus, const char *topic);

/* Free; NULL ok. */
void bm_galreg_free(struct bm_galreg *g);

/* Catch up with the topic: the first read (bounded wait) when it has not
 * succeeded yet and its retry time came, then whatever the follower has
 * without waiting. BM_OK once the first read succeeded, else the reason
 * of the last failure (the registry stays usable, maybe empty). */
int bm_galreg_sync(struct bm_galreg *g, long long now_ms, char *err, size_t errlen);

/* The definition of 'name' after a sync, borrowed until the next call, or
 * NULL when the topic has none. */
const Biomatch__V1__GalleryDefinition *bm_galreg_find(struct bm_galreg *g, const char *name,
                                                      long long now_ms);

/* Put every known definition missing from Redis back (bm_galdef_put).
 * Returns how many were written, or a negative enum bm_err when Redis
 * failed (logged). */
int bm_galreg_restore(struct bm_galreg *g, struct bm_redis *r);

#endif /* BM_COORD_GALREG_H */
