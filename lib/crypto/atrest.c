/* The at-rest envelope (see atrest.h and docs/storage.md "Encryption at
 * rest").
 *
 *   0      8   magic "BMENC\r\n\x1a"
 *   8      4   version, u32 LE (1)
 *   12     1   key id length k (1..64)
 *   13     k   key id
 *   13+k   12  nonce            \
 *   25+k   n   ciphertext        > bm_aead_seal output
 *   25+k+n 16  tag              /
 *
 * AAD = bytes 0..13+k of the envelope | the place:
 *   segment blob:       u16 LE gallery length | gallery | u32 LE shard |
 *                       u64 LE segment id
 *   gallery log record: u16 LE 0xFFFF | u16 LE gallery length | gallery |
 *                       u32 LE shard | u16 LE subject id length | subject id
 * Every variable-length field carries its length, and a gallery is at most
 * 255 bytes, so the 0xFFFF mark cannot start a segment's place: no two
 * different places produce the same AAD.
 *
 * Invariant: nothing after the header is interpreted before the tag
 * verifies; the plaintext buffer is wiped and freed when it does not. */
#include "crypto/atrest.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#define MAGIC_LEN 8u
#define HDR_FIXED 13u   /* magic, version, key id length */
#define GALLERY_MAX 255u /* store/keys.h allows 200; the AAD length is a u16 anyway */

static void put_u16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Where a sealed value lives; its AAD binds it there. */
struct place {
    const char *gallery;
    uint32_t shard;
    uint64_t segment_id;     /* segment blobs */
    const char *subject;     /* gallery log records (NULL for a segment) */
    size_t subject_len;
};

#define RECORD_MARK 0xFFFFu
#define SUBJECT_MAX 1024u

/* Build the AAD into 'aad' (at least AAD_MAX bytes) and return its
 * length. 'hdr' is the envelope header of 'hdrlen' bytes. */
static size_t build_aad(uint8_t *aad, const uint8_t *hdr, size_t hdrlen, const struct place *pl)
{
    size_t glen = strlen(pl->gallery), n = 0;
    memcpy(aad, hdr, hdrlen);
    n += hdrlen;
    if (pl->subject != NULL) {
        put_u16(aad + n, RECORD_MARK);
        n += 2;
    }
    put_u16(aad + n, (uint16_t)glen);
    n += 2;
    memcpy(aad + n, pl->gallery, glen);
    n += glen;
    put_u32(aad + n, pl->shard);
    n += 4;
    if (pl->subject != NULL) {
        put_u16(aad + n, (uint16_t)pl->subject_len);
        memcpy(aad + n + 2, pl->subject, pl->subject_len);
        return n + 2 + pl->subject_len;
    }
    put_u64(aad + n, pl->segment_id);
    return n + 8;
}

/* "segment 7" or "the record of subject <n bytes>" for messages (no
 * subject ids in logs). */
static void place_name(const struct place *pl, char *buf, size_t len)
{
    if (pl->subject != NULL)
        snprintf(buf, len, "gallery log record (shard %u, %zu-byte subject id)", pl->shard,
                 pl->subject_len);
    else
        snprintf(buf, len, "segment %llu", (unsigned long long)pl->segment_id);
}

static int place_ok(const struct place *pl)
{
    return pl->gallery != NULL && strlen(pl->gallery) <= GALLERY_MAX &&
           (pl->subject == NULL || (pl->subject_len > 0 && pl->subject_len <= SUBJECT_MAX));
}

#define AAD_MAX (HDR_FIXED + BM_KEYRING_ID_MAX + 2 + 2 + GALLERY_MAX + 4 + 2 + SUBJECT_MAX)

int bm_atrest_is_sealed(const void *val, size_t len)
{
    return val != NULL && len >= MAGIC_LEN && memcmp(val, BM_ATREST_MAGIC, MAGIC_LEN) == 0;
}

/* Check the header; on BM_OK *hdrlen = 13 + k and 'id' holds the key id. */
static int parse_header(const uint8_t *v, size_t len, size_t *hdrlen,
                        char id[BM_KEYRING_ID_MAX + 1], char *err, size_t errlen)
{
    if (!bm_atrest_is_sealed(v, len))
        return bm_seterr(err, errlen, BM_ENOTFOUND, "not an at-rest envelope");
    if (len < HDR_FIXED)
        return bm_seterr(err, errlen, BM_EPROTO, "envelope truncated in its header");
    uint32_t version = get_u32(v + 8);
    if (version != BM_ATREST_VERSION)
        return bm_seterr(err, errlen, version > BM_ATREST_VERSION ? BM_EUNSUPPORTED : BM_EPROTO,
                         "envelope version %u (this build reads %u)", version,
                         BM_ATREST_VERSION);
    size_t k = v[12];
    if (k == 0 || k > BM_KEYRING_ID_MAX || len < HDR_FIXED + k + BM_AEAD_OVERHEAD)
        return bm_seterr(err, errlen, BM_EPROTO,
                         k == 0 || k > BM_KEYRING_ID_MAX ? "envelope key id length %zu"
                                                         : "envelope truncated (key id %zu bytes)",
                         k);
    memcpy(id, v + HDR_FIXED, k);
    id[k] = '\0';
    if (!bm_keyring_valid_id(id))
        return bm_seterr(err, errlen, BM_EPROTO, "envelope key id is not 1-64 of [A-Za-z0-9._-]");
    *hdrlen = HDR_FIXED + k;
    return BM_OK;
}

int bm_atrest_key_id(const void *val, size_t len, char id[BM_KEYRING_ID_MAX + 1], char *err,
                     size_t errlen)
{
    size_t hdrlen = 0;
    return parse_header(val, len, &hdrlen, id, err, errlen);
}

static int seal(const struct bm_keyring *kr, const struct place *pl, const uint8_t *blob,
                size_t len, uint8_t **out, size_t *outlen, char *err, size_t errlen)
{
    *out = NULL;
    *outlen = 0;
    const char *id = bm_keyring_current_id(kr);
    if (id == NULL)
        return bm_seterr(err, errlen, BM_EINVAL, "at-rest seal: no current key");
    if (!place_ok(pl) || (len > 0 && blob == NULL))
        return bm_seterr(err, errlen, BM_EINVAL, "at-rest seal: bad gallery, subject or value");
    if (len > BM_AEAD_MAX_BYTES)
        return bm_seterr(err, errlen, BM_ERANGE, "at-rest seal: value of %zu bytes", len);
    size_t k = strlen(id), hdrlen = HDR_FIXED + k;
    size_t total = hdrlen + len + BM_AEAD_OVERHEAD;
    uint8_t *env = malloc(total);
    if (env == NULL)
        return bm_seterr(err, errlen, BM_ENOMEM, "at-rest seal: out of memory");
    memcpy(env, BM_ATREST_MAGIC, MAGIC_LEN);
    put_u32(env + 8, BM_ATREST_VERSION);
    env[12] = (uint8_t)k;
    memcpy(env + HDR_FIXED, id, k);
    uint8_t aad[AAD_MAX];
    size_t aadlen = build_aad(aad, env, hdrlen, pl);
    int rc = bm_aead_seal(bm_keyring_find(kr, id), aad, aadlen, blob, len, env + hdrlen, err,
                          errlen);
    if (rc != BM_OK) {
        free(env);
        return rc;
    }
    *out = env;
    *outlen = total;
    return BM_OK;
}

int bm_atrest_seal(const struct bm_keyring *kr, const char *gallery, uint32_t shard,
                   uint64_t segment_id, const uint8_t *blob, size_t len, uint8_t **out,
                   size_t *outlen, char *err, size_t errlen)
{
    struct place pl = {gallery, shard, segment_id, NULL, 0};
    return seal(kr, &pl, blob, len, out, outlen, err, errlen);
}

int bm_atrest_seal_record(const struct bm_keyring *kr, const char *gallery, uint32_t shard,
                          const char *subject, size_t subject_len, const uint8_t *val,
                          size_t len, uint8_t **out, size_t *outlen, char *err, size_t errlen)
{
    struct place pl = {gallery, shard, 0, subject, subject_len};
    if (subject == NULL) {
        *out = NULL;
        *outlen = 0;
        return bm_seterr(err, errlen, BM_EINVAL, "at-rest seal: no subject id");
    }
    return seal(kr, &pl, val, len, out, outlen, err, errlen);
}

/* Open 'val' stored at 'pl'. 'expect_key_id' as for bm_atrest_open. */
int bm_atrest_plaintext_refused(const struct bm_keyring *kr, const void *val, size_t len)
{
    return bm_keyring_strict(kr) && !bm_atrest_is_sealed(val, len);
}

static int open_at(const struct bm_keyring *kr, const struct place *pl,
                   const char *expect_key_id, const void *val, size_t len,
                   const uint8_t **plain, size_t *plainlen, uint8_t **owned, char *err,
                   size_t errlen)
{
    *plain = NULL;
    *plainlen = 0;
    *owned = NULL;
    if (val == NULL || !place_ok(pl))
        return bm_seterr(err, errlen, BM_EINVAL, "at-rest open: bad gallery, subject or value");
    char what[96];
    place_name(pl, what, sizeof what);
    const uint8_t *v = val;
    if (!bm_atrest_is_sealed(v, len)) {
        if (bm_keyring_strict(kr))
            return bm_seterr(err, errlen, BM_ECHECKSUM,
                             "%s: plaintext refused: an at-rest key is configured (strict "
                             "mode)", what);
        if (expect_key_id != NULL && expect_key_id[0] != '\0')
            return bm_seterr(err, errlen, BM_EPROTO,
                             "%s: the manifest says key '%s' but the stored blob is not "
                             "encrypted",
                             what, expect_key_id);
        *plain = v;
        *plainlen = len;
        return BM_OK;
    }
    char id[BM_KEYRING_ID_MAX + 1];
    size_t hdrlen = 0;
    char why[160];
    int rc = parse_header(v, len, &hdrlen, id, why, sizeof why);
    if (rc != BM_OK)
        return bm_seterr(err, errlen, rc, "%s: %s", what, why);
    if (expect_key_id != NULL && strcmp(expect_key_id, id) != 0)
        return bm_seterr(err, errlen, BM_EPROTO,
                         "%s: the manifest says %s%s%s but the blob is sealed under key '%s'",
                         what, expect_key_id[0] ? "key '" : "not encrypted",
                         expect_key_id[0] ? expect_key_id : "", expect_key_id[0] ? "'" : "", id);
    const uint8_t *key = bm_keyring_find(kr, id);
    if (key == NULL)
        return bm_seterr(err, errlen, BM_EUNSUPPORTED,
                         "%s is encrypted with at-rest key id '%s', which this process does "
                         "not have (configure it as security.at_rest_key_file/at_rest_key_id "
                         "or in security.at_rest_previous_keys)",
                         what, id);
    size_t n = len - hdrlen - BM_AEAD_OVERHEAD;
    uint8_t *buf = malloc(n ? n : 1);
    if (buf == NULL)
        return bm_seterr(err, errlen, BM_ENOMEM, "at-rest open: out of memory");
    uint8_t aad[AAD_MAX];
    size_t aadlen = build_aad(aad, v, hdrlen, pl);
    rc = bm_aead_open(key, aad, aadlen, v + hdrlen, len - hdrlen, buf, why, sizeof why);
    if (rc != BM_OK) {
        free(buf); /* bm_aead_open wiped it */
        if (rc == BM_ECHECKSUM)
            return bm_seterr(err, errlen, rc,
                             "%s of %s/%u under key '%s': authentication failed (altered "
                             "bytes, wrong key bytes, or a value stored at another place)",
                             what, pl->gallery, pl->shard, id);
        return bm_seterr(err, errlen, rc, "%s: %s", what, why);
    }
    *plain = buf;
    *plainlen = n;
    *owned = buf;
    return BM_OK;
}

int bm_atrest_open(const struct bm_keyring *kr, const char *gallery, uint32_t shard,
                   uint64_t segment_id, const char *expect_key_id, const void *val, size_t len,
                   const uint8_t **plain, size_t *plainlen, uint8_t **owned, char *err,
                   size_t errlen)
{
    struct place pl = {gallery, shard, segment_id, NULL, 0};
    return open_at(kr, &pl, expect_key_id, val, len, plain, plainlen, owned, err, errlen);
}

int bm_atrest_open_record(const struct bm_keyring *kr, const char *gallery, uint32_t shard,
                          const char *subject, size_t subject_len, const void *val, size_t len,
                          const uint8_t **plain, size_t *plainlen, uint8_t **owned, char *err,
                          size_t errlen)
{
    struct place pl = {gallery, shard, 0, subject, subject_len};
    if (subject == NULL) {
        *plain = NULL;
        *plainlen = 0;
        *owned = NULL;
        return bm_seterr(err, errlen, BM_EINVAL, "at-rest open: no subject id");
    }
    return open_at(kr, &pl, NULL, val, len, plain, plainlen, owned, err, errlen);
}
