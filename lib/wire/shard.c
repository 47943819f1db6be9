/* FNV-1a 64 subject keys and shards (see shard.h). The definition is part
 * of the wire contract: changing it would move every enrolled subject to
 * another shard and change its key. */
#include "wire/shard.h"

#define FNV1A64_OFFSET UINT64_C(0xcbf29ce484222325)
#define FNV1A64_PRIME UINT64_C(0x00000100000001b3)

uint64_t bm_subject_key(const char *subject_id, size_t len)
{
    const unsigned char *p = (const unsigned char *)subject_id;
    uint64_t h = FNV1A64_OFFSET;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= FNV1A64_PRIME;
    }
    return h;
}

uint32_t bm_shard_of(const char *subject_id, size_t len, uint32_t shards)
{
    if (shards == 0)
        return 0;
    return (uint32_t)(bm_subject_key(subject_id, len) % shards);
}
