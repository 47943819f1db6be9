/* FNV-1a 64 shard hash (see shard.h). The definition is part of the wire
 * contract: changing it would move every enrolled subject to another shard. */
#include "wire/shard.h"

#include <string.h>

uint64_t bm_fnv1a64(const void *data, size_t len)
{
    const unsigned char *p = data;
    uint64_t h = BM_FNV1A64_OFFSET;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= BM_FNV1A64_PRIME;
    }
    return h;
}

uint32_t bm_shard_of(const char *subject_id, size_t len, uint32_t shards)
{
    if (shards == 0)
        return 0;
    return (uint32_t)(bm_fnv1a64(subject_id, len) % shards);
}

const void *bm_subject_key(const char *subject_id, size_t *len)
{
    *len = strlen(subject_id);
    return subject_id;
}
