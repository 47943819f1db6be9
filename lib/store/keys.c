/* Redis key names (see keys.h). The names are part of the storage format:
 * every worker and coordinator of a cluster must agree on them byte for
 * byte, so they are built in one place only. */
#include "store/keys.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

static int check_name(const char *name, size_t max, int allow_colon)
{
    if (name == NULL)
        return 0;
    size_t n = strlen(name);
    if (n == 0 || n > max)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                 (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-' ||
                 (allow_colon && c == ':');
        if (!ok)
            return 0;
    }
    return 1;
}

int bm_key_check_gallery(const char *name, char *err, size_t errlen)
{
    if (!check_name(name, BM_GALLERY_NAME_MAX, 0))
        return bm_seterr(err, errlen, BM_EINVAL,
                         "gallery name must be 1..%d bytes of [A-Za-z0-9._-]",
                         BM_GALLERY_NAME_MAX);
    return BM_OK;
}

int bm_key_check_node(const char *node, char *err, size_t errlen)
{
    if (!check_name(node, 128, 1))
        return bm_seterr(err, errlen, BM_EINVAL,
                         "node id must be 1..128 bytes of [A-Za-z0-9._:-]");
    return BM_OK;
}

/* snprintf into buf, mapping truncation to BM_ERANGE and leaving "" then, so
 * a truncated key can never be used by accident. */
static int finish(char *buf, size_t len, int n)
{
    if (n < 0 || (size_t)n >= len) {
        if (len > 0)
            buf[0] = '\0';
        return BM_ERANGE;
    }
    return BM_OK;
}

static int refuse(char *buf, size_t len)
{
    if (buf != NULL && len > 0)
        buf[0] = '\0';
    return BM_EINVAL;
}

int bm_key_manifest(char *buf, size_t len, const char *gallery, uint32_t shard)
{
    if (buf == NULL || !check_name(gallery, BM_GALLERY_NAME_MAX, 0))
        return refuse(buf, len);
    return finish(buf, len, snprintf(buf, len, "bm:{%s:%" PRIu32 "}:manifest",
                                     gallery, shard));
}

int bm_key_attempts(char *buf, size_t len, const char *gallery, uint32_t shard,
                    int32_t partition, int64_t offset, uint64_t tag)
{
    if (buf == NULL || !check_name(gallery, BM_GALLERY_NAME_MAX, 0) || partition < 0 ||
        offset < 0)
        return refuse(buf, len);
    return finish(buf, len,
                  snprintf(buf, len, "bm:{%s:%" PRIu32 "}:attempts:%" PRId32 ":%" PRId64
                                     ":%016" PRIx64,
                           gallery, shard, partition, offset, tag));
}

int bm_key_job_attempts(char *buf, size_t len, int32_t partition, int64_t offset, uint64_t tag)
{
    if (partition < 0 || offset < 0)
        return refuse(buf, len);
    return finish(buf, len,
                  snprintf(buf, len, "bm:job:attempts:%" PRId32 ":%" PRId64 ":%016" PRIx64,
                           partition, offset, tag));
}

int bm_key_segment(char *buf, size_t len, const char *gallery, uint32_t shard,
                   uint64_t segment_id)
{
    if (buf == NULL || !check_name(gallery, BM_GALLERY_NAME_MAX, 0))
        return refuse(buf, len);
    return finish(buf, len, snprintf(buf, len, "bm:{%s:%" PRIu32 "}:seg:%" PRIu64,
                                     gallery, shard, segment_id));
}

int bm_key_gallery(char *buf, size_t len, const char *name)
{
    if (buf == NULL || !check_name(name, BM_GALLERY_NAME_MAX, 0))
        return refuse(buf, len);
    return finish(buf, len, snprintf(buf, len, "bm:gallery:%s", name));
}

int bm_key_node(char *buf, size_t len, const char *node_id)
{
    if (buf == NULL || !check_name(node_id, 128, 1))
        return refuse(buf, len);
    return finish(buf, len, snprintf(buf, len, "bm:node:%s", node_id));
}
