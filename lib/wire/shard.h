/* Subject keys and the stable shard of a subject.
 *
 * key   = FNV-1a 64 over the UTF-8 bytes of the subject id (offset basis
 *         0xcbf29ce484222325, prime 0x100000001b3; for each byte: xor, then
 *         multiply mod 2^64);
 * shard = key mod S.
 *
 * docs/wire.md gives the definition with test vectors, so any client in any
 * language computes the same partition of gallery.<name> as the coordinator,
 * and the matcher uses the same 64-bit key as a subject's numeric id. Both
 * must never change: every stored gallery is partitioned by them.
 * Thread: any (pure functions). */
#ifndef BM_WIRE_SHARD_H
#define BM_WIRE_SHARD_H

#include <stddef.h>
#include <stdint.h>

/* The 64-bit key of the subject id of 'len' bytes (NULL allowed when
 * len == 0). */
uint64_t bm_subject_key(const char *subject_id, size_t len);

/* The shard (0..shards-1) of the subject id: bm_subject_key() % shards.
 * shards == 0 is a caller bug and yields 0. */
uint32_t bm_shard_of(const char *subject_id, size_t len, uint32_t shards);

#endif /* BM_WIRE_SHARD_H */
