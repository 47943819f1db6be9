/* Subject ownership in Redis; see owners.h. */
#include "store/owners.h"

#include <stdio.h>
#include <string.h>

#include "store/keys.h"
#include "store/redis.h"

static int owners_key(char *key, size_t len, const char *gallery, char *err, size_t errlen)
{
    char base[BM_KEY_MAX];
    if (bm_key_gallery(base, sizeof base, gallery) != BM_OK)
        return bm_seterr(err, errlen, BM_EINVAL, "owners: bad gallery name");
    snprintf(key, len, "%s:owners", base);
    return BM_OK;
}

/* Run one command on the owners hash of 'gallery'; the reply (caller frees)
 * in *r. */
static int owners_cmd(struct bm_redis *c, const char *cmd, const char *gallery,
                      const char *subject, const char *value, struct bm_redis_reply **r,
                      char *err, size_t errlen)
{
    char key[BM_KEY_MAX + 16];
    int rc = owners_key(key, sizeof key, gallery, err, errlen);
    if (rc != BM_OK)
        return rc;
    const char *argv[4] = {cmd, key, subject, value};
    size_t argvlen[4] = {strlen(cmd), strlen(key), strlen(subject), value ? strlen(value) : 0};
    rc = bm_redis_command(c, value ? 4 : 3, argv, argvlen, r);
    if (rc != BM_OK) {
        bm_seterr(err, errlen, rc, "owners: %s: %s", cmd, bm_redis_errstr(c));
        bm_redis_reply_free(*r);
        *r = NULL;
    }
    return rc;
}

int bm_owner_get(struct bm_redis *c, const char *gallery, const char *subject, char *out,
                 size_t outlen, char *err, size_t errlen)
{
    struct bm_redis_reply *r = NULL;
    if (outlen > 0)
        out[0] = '\0';
    int rc = owners_cmd(c, "HGET", gallery, subject, NULL, &r, err, errlen);
    if (rc != BM_OK)
        return rc;
    if (r->type == BM_REDIS_STRING && r->len < outlen) {
        memcpy(out, r->str, r->len);
        out[r->len] = '\0';
    } else {
        rc = r->type == BM_REDIS_NIL ? BM_ENOTFOUND
                                     : bm_seterr(err, errlen, BM_EPROTO, "owners: bad reply");
    }
    bm_redis_reply_free(r);
    return rc;
}

int bm_owner_claim(struct bm_redis *c, const char *gallery, const char *subject,
                   const char *agency, char *err, size_t errlen)
{
    struct bm_redis_reply *r = NULL;
    int rc = owners_cmd(c, "HSETNX", gallery, subject, agency, &r, err, errlen);
    bm_redis_reply_free(r);
    return rc;
}

int bm_owner_forget(struct bm_redis *c, const char *gallery, const char *subject, char *err,
                    size_t errlen)
{
    struct bm_redis_reply *r = NULL;
    int rc = owners_cmd(c, "HDEL", gallery, subject, NULL, &r, err, errlen);
    bm_redis_reply_free(r);
    return rc;
}
