/* Manifest MAC (see manifest_mac.h). The MAC input is a canonical byte
 * string built from the decoded manifest, not its protobuf bytes, so two
 * encoders of one manifest agree; every variable field is length-prefixed
 * so no two manifests share an input. Layout (little-endian), documented
 * in docs/storage.md section 8.2:
 *
 *   "BMMANMAC1"  u16 gallery len, gallery  u32 shard  u64 version
 *   16 epoch     i64 log_offset  u32 subjects  i64 updated_unix_ms
 *   u8 mac key id len, mac key id
 *   u32 nsegments, then per segment (ascending id): u64 id, u32 count,
 *     u64 bytes, 32 sha256, u8 key id len, key id
 *   u32 ntombstones, then per tombstone (sorted): u16 len, bytes */
#include "store/manifest_mac.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "crypto/aead.h"
#include "crypto/keyring.h"

static const char MAC_MAGIC[] = "BMMANMAC1";
static const char MAC_LABEL[] = "biomatch manifest mac v1";

struct wbuf {
    uint8_t *p;
    size_t n, cap;
    int oom;
};

static void put(struct wbuf *b, const void *src, size_t len)
{
    if (b->oom)
        return;
    if (b->n + len > b->cap) {
        size_t nc = b->cap ? b->cap : 256;
        while (nc < b->n + len)
            nc *= 2;
        uint8_t *q = realloc(b->p, nc);
        if (q == NULL) {
            b->oom = 1;
            return;
        }
        b->p = q;
        b->cap = nc;
    }
    memcpy(b->p + b->n, src, len);
    b->n += len;
}

static void put_le(struct wbuf *b, uint64_t v, size_t bytes)
{
    uint8_t le[8];
    for (size_t i = 0; i < bytes; i++)
        le[i] = (uint8_t)(v >> (8 * i));
    put(b, le, bytes);
}

static void put_str(struct wbuf *b, const char *s, size_t prefix_bytes)
{
    size_t n = strlen(s);
    put_le(b, n, prefix_bytes);
    put(b, s, n);
}

/* The canonical MAC input of 'm' with MAC key id 'kid'. */
static int mac_input(const struct bm_manifest *m, const char *kid, struct wbuf *b)
{
    put(b, MAC_MAGIC, sizeof MAC_MAGIC - 1);
    put_str(b, m->gallery, 2);
    put_le(b, m->shard, 4);
    put_le(b, m->version, 8);
    put(b, m->epoch, sizeof m->epoch);
    put_le(b, (uint64_t)m->log_offset, 8);
    put_le(b, m->subjects, 4);
    put_le(b, (uint64_t)m->updated_unix_ms, 8);
    put_str(b, kid, 1);
    put_le(b, m->nsegments, 4);
    for (size_t i = 0; i < m->nsegments; i++) {
        const struct bm_segref *s = &m->segments[i];
        put_le(b, s->id, 8);
        put_le(b, s->count, 4);
        put_le(b, s->bytes, 8);
        put(b, s->sha256, sizeof s->sha256);
        put_str(b, s->key_id, 1);
    }
    put_le(b, m->ntombstones, 4);
    for (size_t i = 0; i < m->ntombstones; i++)
        put_str(b, m->tombstones[i], 2);
    return b->oom ? BM_ENOMEM : BM_OK;
}

/* MAC of 'm' under at-rest key 'key' (32 bytes) named 'kid'. */
static int compute(const struct bm_manifest *m, const uint8_t *key, const char *kid,
                   uint8_t out[BM_MANIFEST_MAC_BYTES], char *err, size_t errlen)
{
    uint8_t k[EVP_MAX_MD_SIZE];
    unsigned klen = 0, olen = 0;
    struct wbuf b = {0};
    int rc = mac_input(m, kid, &b);
    if (rc != BM_OK) {
        free(b.p);
        return bm_seterr(err, errlen, rc, "manifest MAC: out of memory");
    }
    int ok = HMAC(EVP_sha256(), key, BM_AEAD_KEY_BYTES, (const uint8_t *)MAC_LABEL,
                  sizeof MAC_LABEL - 1, k, &klen) != NULL &&
             HMAC(EVP_sha256(), k, (int)klen, b.p, b.n, out, &olen) != NULL &&
             olen == BM_MANIFEST_MAC_BYTES;
    OPENSSL_cleanse(k, sizeof k);
    free(b.p);
    if (!ok)
        return bm_seterr(err, errlen, BM_ENOMEM, "manifest MAC: HMAC failed");
    return BM_OK;
}

int bm_manifest_sign(struct bm_manifest *m, const struct bm_keyring *kr, char *err,
                     size_t errlen)
{
    m->has_mac = 0;
    m->mac_key_id[0] = '\0';
    memset(m->mac, 0, sizeof m->mac);
    const char *kid = bm_keyring_current_id(kr);
    if (kid == NULL)
        return BM_OK;
    if (strlen(kid) > BM_KEY_ID_MAX)
        return bm_seterr(err, errlen, BM_EINVAL, "manifest MAC: key id too long");
    int rc = compute(m, bm_keyring_find(kr, kid), kid, m->mac, err, errlen);
    if (rc != BM_OK)
        return rc;
    memcpy(m->mac_key_id, kid, strlen(kid) + 1);
    m->has_mac = 1;
    return BM_OK;
}

int bm_manifest_verify(const struct bm_manifest *m, const struct bm_keyring *kr, char *err,
                       size_t errlen)
{
    int strict = bm_keyring_strict(kr);
    if (!m->has_mac)
        return strict ? bm_seterr(err, errlen, BM_ECHECKSUM,
                                  "manifest %s/%u version %llu has no MAC (strict at-rest mode)",
                                  m->gallery, m->shard, (unsigned long long)m->version)
                      : BM_OK;
    const uint8_t *key = bm_keyring_find(kr, m->mac_key_id);
    if (key == NULL)
        return strict ? bm_seterr(err, errlen, BM_EUNSUPPORTED,
                                  "manifest %s/%u is signed with at-rest key id '%s', which "
                                  "this process does not have",
                                  m->gallery, m->shard, m->mac_key_id)
                      : BM_OK;
    uint8_t want[BM_MANIFEST_MAC_BYTES];
    int rc = compute(m, key, m->mac_key_id, want, err, errlen);
    if (rc != BM_OK)
        return rc;
    if (CRYPTO_memcmp(want, m->mac, sizeof want) != 0)
        return bm_seterr(err, errlen, BM_ECHECKSUM,
                         "manifest %s/%u version %llu: MAC does not verify (forged or altered)",
                         m->gallery, m->shard, (unsigned long long)m->version);
    return BM_OK;
}
