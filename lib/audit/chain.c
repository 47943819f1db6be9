/* The audit chain of one writer (see chain.h). Invariant: 'seq' and 'prev'
 * always describe the last record handed out (or the head a restart
 * resumed from), so two records of one chain never share a seq and every
 * record's prev_hash is the hash of the record sealed just before it. */
#include "audit/chain.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "common/clock.h"
#include "wire/decode.h"

struct bm_audit_chain {
    char *writer;
    char *key_id;                       /* "" when unkeyed */
    uint8_t key[BM_AUDIT_KEY_BYTES];
    int keyed;
    uint64_t seq;                       /* of the last sealed record; 0 = none yet */
    uint8_t prev[BM_AUDIT_HASH_BYTES];  /* its hash */
};

static char *dup_str(const char *s)
{
    size_t n = strlen(s);
    char *d = malloc(n + 1);
    if (d != NULL)
        memcpy(d, s, n + 1);
    return d;
}

struct bm_audit_chain *bm_audit_chain_new(const char *writer, const char *key_id,
                                          const uint8_t *key, char *err, size_t errlen)
{
    size_t n = writer != NULL ? strlen(writer) : 0;
    if (n == 0 || n > BM_AUDIT_WRITER_MAX) {
        bm_seterr(err, errlen, BM_EINVAL, "audit: writer must be 1..%d bytes",
                  BM_AUDIT_WRITER_MAX);
        return NULL;
    }
    if ((key == NULL) != (key_id == NULL || key_id[0] == '\0')) {
        bm_seterr(err, errlen, BM_EINVAL, "audit: a key needs a key id and a key id a key");
        return NULL;
    }
    struct bm_audit_chain *c = calloc(1, sizeof *c);
    if (c == NULL || (c->writer = dup_str(writer)) == NULL ||
        (c->key_id = dup_str(key != NULL ? key_id : "")) == NULL) {
        bm_audit_chain_free(c);
        bm_seterr(err, errlen, BM_ENOMEM, "audit: out of memory");
        return NULL;
    }
    if (key != NULL) {
        memcpy(c->key, key, BM_AUDIT_KEY_BYTES);
        c->keyed = 1;
    }
    return c;
}

void bm_audit_chain_free(struct bm_audit_chain *c)
{
    if (c == NULL)
        return;
    OPENSSL_cleanse(c->key, sizeof c->key);
    free(c->writer);
    free(c->key_id);
    free(c);
}

void bm_audit_chain_resume(struct bm_audit_chain *c, uint64_t seq,
                           const uint8_t hash[BM_AUDIT_HASH_BYTES])
{
    c->seq = seq;
    if (seq > 0)
        memcpy(c->prev, hash, BM_AUDIT_HASH_BYTES);
    else
        memset(c->prev, 0, sizeof c->prev);
}

void bm_audit_chain_head(const struct bm_audit_chain *c, uint64_t *seq,
                         uint8_t hash[BM_AUDIT_HASH_BYTES])
{
    *seq = c->seq;
    memcpy(hash, c->prev, BM_AUDIT_HASH_BYTES);
}

uint64_t bm_audit_chain_seq(const struct bm_audit_chain *c)
{
    return c->seq;
}

const char *bm_audit_chain_writer(const struct bm_audit_chain *c)
{
    return c->writer;
}

int bm_audit_chain_keyed(const struct bm_audit_chain *c)
{
    return c->keyed;
}

int bm_audit_mac(const Biomatch__V1__AuditRecord *rec, const uint8_t *key,
                 uint8_t out[BM_AUDIT_HASH_BYTES])
{
    Biomatch__V1__AuditRecord tmp = *rec;
    tmp.hash.data = NULL;
    tmp.hash.len = 0;
    size_t len = 0;
    uint8_t *enc = bm_wire_encode(&tmp.base, &len);
    if (enc == NULL)
        return BM_ENOMEM;
    int ok;
    if (key != NULL) {
        unsigned int outlen = 0;
        ok = HMAC(EVP_sha256(), key, BM_AUDIT_KEY_BYTES, enc, len, out, &outlen) != NULL &&
             outlen == BM_AUDIT_HASH_BYTES;
    } else {
        ok = EVP_Digest(enc, len, out, NULL, EVP_sha256(), NULL) == 1;
    }
    free(enc);
    return ok ? BM_OK : BM_ENOMEM;
}

int bm_audit_subject_hash(const uint8_t *key, const char *gallery, const char *id,
                          char out[BM_AUDIT_SUBJECT_HASH_LEN])
{
    out[0] = '\0';
    if (key == NULL)
        return BM_EINVAL;
    static const char label[] = "biomatch-audit-subject";
    size_t lg = strlen(gallery), li = strlen(id);
    size_t n = sizeof label + lg + 1 + li;
    uint8_t *msg = malloc(n);
    if (msg == NULL)
        return BM_ENOMEM;
    memcpy(msg, label, sizeof label);
    memcpy(msg + sizeof label, gallery, lg + 1);
    memcpy(msg + sizeof label + lg + 1, id, li);
    uint8_t mac[BM_AUDIT_HASH_BYTES];
    unsigned int maclen = 0;
    int ok = HMAC(EVP_sha256(), key, BM_AUDIT_KEY_BYTES, msg, n, mac, &maclen) != NULL;
    free(msg);
    if (!ok)
        return BM_ENOMEM;
    static const char hex[] = "0123456789abcdef";
    out[0] = 'h';
    out[1] = ':';
    for (size_t i = 0; i < 16; i++) {
        out[2 + 2 * i] = hex[mac[i] >> 4];
        out[3 + 2 * i] = hex[mac[i] & 15];
    }
    out[BM_AUDIT_SUBJECT_HASH_LEN - 1] = '\0';
    return BM_OK;
}

int bm_audit_chain_seal(struct bm_audit_chain *c, Biomatch__V1__AuditRecord *rec,
                        uint8_t **out, size_t *len, char *err, size_t errlen)
{
    *out = NULL;
    *len = 0;
    if (rec->time_unix_ms == 0)
        rec->time_unix_ms = bm_wall_ms();
    rec->writer = c->writer;
    rec->key_id = c->key_id;
    rec->seq = c->seq + 1;
    /* The first record of a chain has an empty prev_hash. */
    rec->prev_hash.data = c->seq > 0 ? c->prev : NULL;
    rec->prev_hash.len = c->seq > 0 ? BM_AUDIT_HASH_BYTES : 0;
    uint8_t h[BM_AUDIT_HASH_BYTES];
    int rc = bm_audit_mac(rec, c->keyed ? c->key : NULL, h);
    if (rc == BM_OK) {
        rec->hash.data = h;
        rec->hash.len = BM_AUDIT_HASH_BYTES;
        *out = bm_wire_encode(&rec->base, len);
        if (*out == NULL)
            rc = BM_ENOMEM;
    }
    /* h and c->prev are about to change: drop the caller's view. */
    rec->hash.data = NULL;
    rec->hash.len = 0;
    rec->prev_hash.data = NULL;
    rec->prev_hash.len = 0;
    if (rc != BM_OK)
        return bm_seterr(err, errlen, rc, "audit: out of memory");
    memcpy(c->prev, h, BM_AUDIT_HASH_BYTES);
    c->seq++;
    return BM_OK;
}
