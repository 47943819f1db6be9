/* Hash-chained audit records (see audit.h). Invariant: under the mutex,
 * 'seq' and 'prev' always describe the last record handed out, so two
 * records never share a seq and every record's prev_hash is the hash of the
 * record sealed just before it. */
#include "audit.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>

#include "wire/decode.h"

struct bm_audit {
    pthread_mutex_t mu;
    char *writer;
    uint64_t seq;          /* of the last sealed record; 0 = none yet */
    uint8_t prev[32];      /* its hash */
};

struct bm_audit *bm_audit_new(const char *writer, char *err, size_t errlen)
{
    size_t n = writer != NULL ? strlen(writer) : 0;
    if (n == 0 || n > 128) {
        bm_seterr(err, errlen, BM_EINVAL, "audit: writer must be 1..128 bytes");
        return NULL;
    }
    struct bm_audit *a = calloc(1, sizeof *a);
    if (a == NULL || (a->writer = malloc(n + 1)) == NULL) {
        free(a);
        bm_seterr(err, errlen, BM_ENOMEM, "audit: out of memory");
        return NULL;
    }
    memcpy(a->writer, writer, n + 1);
    pthread_mutex_init(&a->mu, NULL);
    return a;
}

void bm_audit_free(struct bm_audit *a)
{
    if (a == NULL)
        return;
    pthread_mutex_destroy(&a->mu);
    free(a->writer);
    free(a);
}

uint64_t bm_audit_seq(const struct bm_audit *a)
{
    return a->seq;
}

int bm_audit_hash(const Biomatch__V1__AuditRecord *rec, uint8_t hash[32])
{
    Biomatch__V1__AuditRecord tmp = *rec;
    tmp.hash.data = NULL;
    tmp.hash.len = 0;
    size_t len = 0;
    uint8_t *enc = bm_wire_encode(&tmp.base, &len);
    if (enc == NULL)
        return BM_ENOMEM;
    int rc = BM_OK;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned int outlen = 0;
    if (md == NULL || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1 ||
        EVP_DigestUpdate(md, rec->prev_hash.data, rec->prev_hash.len) != 1 ||
        EVP_DigestUpdate(md, enc, len) != 1 || EVP_DigestFinal_ex(md, hash, &outlen) != 1)
        rc = BM_ENOMEM;
    EVP_MD_CTX_free(md);
    free(enc);
    return rc;
}

int bm_audit_seal(struct bm_audit *a, Biomatch__V1__AuditRecord *rec, uint8_t **out,
                  size_t *len, char *err, size_t errlen)
{
    *out = NULL;
    *len = 0;
    if (rec->time_unix_ms == 0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        rec->time_unix_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    }
    pthread_mutex_lock(&a->mu);
    rec->writer = a->writer;
    rec->seq = a->seq + 1;
    /* The first record of a chain has an empty prev_hash. */
    rec->prev_hash.data = a->seq > 0 ? a->prev : NULL;
    rec->prev_hash.len = a->seq > 0 ? 32 : 0;
    rec->hash.data = NULL;
    rec->hash.len = 0;
    uint8_t h[32];
    int rc = bm_audit_hash(rec, h);
    if (rc == BM_OK) {
        rec->hash.data = h;
        rec->hash.len = 32;
        *out = bm_wire_encode(&rec->base, len);
        if (*out == NULL)
            rc = BM_ENOMEM;
    }
    if (rc == BM_OK) {
        memcpy(a->prev, h, 32);
        a->seq++;
        /* h and a->prev are about to change: drop the caller's view. */
        rec->hash.data = NULL;
        rec->hash.len = 0;
        rec->prev_hash.data = NULL;
        rec->prev_hash.len = 0;
    }
    pthread_mutex_unlock(&a->mu);
    if (rc != BM_OK)
        return bm_seterr(err, errlen, rc, "audit: out of memory");
    return BM_OK;
}
