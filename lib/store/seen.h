/* The replay seen-set: which (agency, id) pairs were accepted recently
 * (docs/security.md "Replay", docs/storage.md "Redis keys").
 *
 * A signed record is fresh for the replay window; an id claimed here is
 * remembered in Redis for twice that window, longer than any signed
 * timestamp stays acceptable, so a captured record produced again is
 * caught for as long as its signature would pass. Redis is the store (not
 * process memory) so the set survives a coordinator restart and is shared
 * by every coordinator replica.
 *
 * Invariant: a claim remembers the Kafka record that made it
 * ("<topic>:<partition>:<offset>"), so the same record consumed again
 * (a crash replays uncommitted offsets) is told apart from a second record
 * reusing the id: only the latter is a replay.
 *
 * Thread: as for the connection. */
#ifndef BM_SEEN_H
#define BM_SEEN_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

struct bm_redis;

enum bm_seen {
    BM_SEEN_NEW = 0,      /* first claim of the id: go ahead */
    BM_SEEN_SAME = 1,     /* claimed before by this very record (redelivery) */
    BM_SEEN_REPLAY = 2,   /* claimed before by another record */
};

/* Claim (topic, agency, id) for the Kafka record 'record' ("<topic>:<partition>:
 * <offset>", at most 300 bytes) for 'ttl_ms'. 'kind' ("job", "enroll")
 * names the id space in the key; the topic (prefix included) keeps
 * deployments that share a Redis apart. The Redis key is
 * "bm:seen:<kind>:<hex SHA-256 of the length-prefixed topic, agency and
 * id>", so no client string reaches a key name.
 * Returns BM_OK with the outcome in *out, or the Redis error (transient:
 * nothing is decided, the caller waits and retries) with the reason in err. */
int bm_seen_claim(struct bm_redis *c, const char *kind, const char *topic, const char *agency,
                  const char *id, const char *record, int64_t ttl_ms, enum bm_seen *out,
                  char *err, size_t errlen);

#endif /* BM_SEEN_H */
