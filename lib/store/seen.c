/* The replay seen-set; see seen.h. One Lua script per claim makes the
 * check and the insert atomic (two coordinators consuming a replayed pair
 * of records cannot both see "new") and works on Redis 6 as well as 7. */
#include "store/seen.h"

#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>

#include "store/redis.h"

/* KEYS[1] the seen key, ARGV[1] the record, ARGV[2] the expiry in ms.
 * Returns the earlier record when the key exists, else sets it (nil). */
static const char CLAIM_LUA[] =
    "local v = redis.call('GET', KEYS[1])\n"
    "if v then return v end\n"
    "redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])\n"
    "return false\n";

static void put_len(EVP_MD_CTX *h, const char *s)
{
    size_t n = strlen(s);
    unsigned char b[8];
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)((uint64_t)n >> (8 * (7 - i)));
    EVP_DigestUpdate(h, b, sizeof b);
    EVP_DigestUpdate(h, s, n);
}

int bm_seen_claim(struct bm_redis *c, const char *kind, const char *topic, const char *agency,
                  const char *id, const char *record, int64_t ttl_ms, enum bm_seen *out,
                  char *err, size_t errlen)
{
    unsigned char md[32];
    unsigned int mdlen = 0;
    EVP_MD_CTX *h = EVP_MD_CTX_new();
    int ok = h != NULL && EVP_DigestInit_ex(h, EVP_sha256(), NULL) == 1;
    if (ok) {
        put_len(h, topic ? topic : "");
        put_len(h, agency ? agency : "");
        put_len(h, id ? id : "");
        ok = EVP_DigestFinal_ex(h, md, &mdlen) == 1 && mdlen == sizeof md;
    }
    EVP_MD_CTX_free(h);
    if (!ok)
        return bm_seterr(err, errlen, BM_ENOMEM, "seen-set: hashing failed");
    char key[128];
    int n = snprintf(key, sizeof key, "bm:seen:%.16s:", kind);
    for (size_t i = 0; i < sizeof md; i++)
        n += snprintf(key + n, sizeof key - (size_t)n, "%02x", md[i]);
    char ttl[24];
    snprintf(ttl, sizeof ttl, "%lld", (long long)(ttl_ms > 0 ? ttl_ms : 1));
    const char *argv[] = {key, record, ttl};
    size_t argvlen[] = {strlen(key), strlen(record), strlen(ttl)};
    struct bm_redis_reply *r = NULL;
    int rc = bm_redis_eval(c, CLAIM_LUA, 1, 3, argv, argvlen, &r);
    if (rc != BM_OK) {
        bm_seterr(err, errlen, rc, "seen-set: %s", bm_redis_errstr(c));
        bm_redis_reply_free(r);
        return rc;
    }
    if (r->type == BM_REDIS_NIL)
        *out = BM_SEEN_NEW;
    else if (r->type == BM_REDIS_STRING && r->len == strlen(record) &&
             memcmp(r->str, record, r->len) == 0)
        *out = BM_SEEN_SAME;
    else
        *out = BM_SEEN_REPLAY;
    bm_redis_reply_free(r);
    return BM_OK;
}
