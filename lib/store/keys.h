/* Redis key names of the shard cache (docs/architecture.md §5, docs/storage.md).
 *
 * Every key of one shard carries the hash tag {<gallery>:<shard>}, so a
 * shard's manifest and all its segments live on one Redis Cluster node and a
 * Lua compare-and-set script may touch them together. Invariant: a name
 * that could break the tag (braces, spaces, control bytes) is refused, so
 * two different shards can never map to the same key.
 *
 * Thread: any (pure functions writing into the caller's buffer). */
#ifndef BM_KEYS_H
#define BM_KEYS_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

/* Longest gallery name: a Kafka topic name is at most 249 bytes and the
 * gallery owns "<prefix>gallery.<name>" and "<prefix>tasks.<name>". */
#define BM_GALLERY_NAME_MAX 200
/* Buffer size that fits every key below for valid names. */
#define BM_KEY_MAX 320

/* BM_OK when 'name' is a usable gallery name: 1..BM_GALLERY_NAME_MAX bytes
 * of [A-Za-z0-9._-] (the Kafka topic alphabet). BM_EINVAL otherwise. */
int bm_key_check_gallery(const char *name, char *err, size_t errlen);

/* BM_OK when 'node' is a usable node id: 1..128 bytes of [A-Za-z0-9._:-]. */
int bm_key_check_node(const char *node, char *err, size_t errlen);

/* "bm:{<gallery>:<shard>}:manifest". Each writer fills 'buf' (terminated)
 * and returns BM_OK, BM_EINVAL (bad name; buf gets "") or BM_ERANGE (buf too
 * small; buf gets ""). */
int bm_key_manifest(char *buf, size_t len, const char *gallery, uint32_t shard);

/* "bm:{<gallery>:<shard>}:seg:<segment_id>" (segment id in decimal). */
int bm_key_segment(char *buf, size_t len, const char *gallery, uint32_t shard,
                   uint64_t segment_id);

/* "bm:{<gallery>:<shard>}:attempts:<partition>:<offset>:<tag>": how many
 * times a worker started scoring the task at that offset of tasks.<gallery>
 * (an integer, set with a TTL; worker.max_task_attempts). 'tag' (16 hex
 * digits, a hash of the job id) keeps a recreated topic's offsets from
 * inheriting old counts. */
int bm_key_attempts(char *buf, size_t len, const char *gallery, uint32_t shard,
                    int32_t partition, int64_t offset, uint64_t tag);

/* "bm:job:attempts:<partition>:<offset>:<tag>": how many times an
 * aggregator started producing the result of the job whose first partial
 * is at that offset of partials (coordinator.max_job_attempts); 'tag' as
 * above, a hash of the job id. */
int bm_key_job_attempts(char *buf, size_t len, int32_t partition, int64_t offset, uint64_t tag);

/* "bm:gallery:<name>": the gallery definition. */
int bm_key_gallery(char *buf, size_t len, const char *name);

/* "bm:node:<node_id>": a node's heartbeat (set with a TTL). */
int bm_key_node(char *buf, size_t len, const char *node_id);

#endif /* BM_KEYS_H */
