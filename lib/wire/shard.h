/* The stable shard of a subject, and its Kafka key.
 *
 * shard = FNV-1a-64(UTF-8 bytes of the subject id) mod S, exactly as
 * docs/wire.md defines it with test vectors, so any client in any language
 * computes the same partition of gallery.<name> as the coordinator. The hash
 * must never change: every stored gallery is partitioned by it.
 * Thread: any (pure functions). */
#ifndef BM_SHARD_H
#define BM_SHARD_H

#include <stddef.h>
#include <stdint.h>

#define BM_FNV1A64_OFFSET UINT64_C(0xcbf29ce484222325)
#define BM_FNV1A64_PRIME UINT64_C(0x00000100000001b3)

/* FNV-1a 64 of 'len' bytes at 'data' (NULL allowed when len == 0). */
uint64_t bm_fnv1a64(const void *data, size_t len);

/* The shard (0..shards-1) of the subject id of 'len' bytes. shards == 0 is a
 * caller bug and yields 0. */
uint32_t bm_shard_of(const char *subject_id, size_t len, uint32_t shards);

/* The Kafka record key of a subject on enroll and gallery.<name>: the bytes
 * of the id itself, nothing else (no prefix, no terminating NUL). Returns
 * 'subject_id' (borrowed) and stores strlen(subject_id) in *len. */
const void *bm_subject_key(const char *subject_id, size_t *len);

#endif /* BM_SHARD_H */
