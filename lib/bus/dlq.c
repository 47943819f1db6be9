/* Dead-letter records: a copy of the original when it fits, else a stub.
 * See dlq.h. */
#include "bus/dlq.h"

#include <stdio.h>
#include <string.h>

#include <openssl/evp.h>

#include "common/err.h"
#include "wire/headers.h"

/* Bytes the copy would need beyond key and value: header names and values
 * plus Kafka's per-record and per-header framing (varints, attributes;
 * generously rounded) and our own `error` header. */
static size_t copy_bytes(const struct bm_bus_msg *m, size_t errlen)
{
    size_t n = m->keylen + m->valuelen + 64 + strlen(BM_HDR_ERROR) + errlen;
    for (size_t i = 0; i < m->nheaders; i++)
        n += strlen(m->headers[i].name) + m->headers[i].len + 16;
    return n;
}

static void build_stub(struct bm_dlq_rec *r, const struct bm_bus_msg *m,
                       Biomatch__V1__ErrorCode code, const char *why)
{
    Biomatch__V1__DeadLetterStub s = BIOMATCH__V1__DEAD_LETTER_STUB__INIT;
    uint8_t digest[32];
    unsigned dlen = 0;
    if (EVP_Digest(m->value ? m->value : "", m->valuelen, digest, &dlen, EVP_sha256(), NULL) !=
            1 ||
        dlen != sizeof digest)
        dlen = 0; /* defensive: leave the digest out rather than lie */
    size_t hbytes = 0;
    for (size_t i = 0; i < m->nheaders; i++)
        hbytes += strlen(m->headers[i].name) + m->headers[i].len;
    char reason[512];
    snprintf(reason, sizeof reason, "%s", why ? why : "");
    s.source_topic = (char *)(m->topic ? m->topic : "");
    s.source_partition = m->partition;
    s.source_offset = m->offset;
    size_t klen = m->keylen < BM_DLQ_STUB_KEY_MAX ? m->keylen : BM_DLQ_STUB_KEY_MAX;
    s.key.data = (uint8_t *)m->key;
    s.key.len = m->key ? klen : 0;
    s.key_size = m->keylen;
    s.value_size = m->valuelen;
    s.value_sha256.data = digest;
    s.value_sha256.len = dlen;
    s.headers_size = hbytes;
    s.error_code = code;
    s.reason = reason;
    /* Fixed fields, a topic name (<= 249), 256 key bytes and a 511-byte
     * reason stay far below BM_DLQ_STUB_MAX. */
    r->valuelen = biomatch__v1__dead_letter_stub__pack(&s, r->stub_bytes);
    r->value = r->stub_bytes;
    r->key = m->key;
    r->keylen = m->key ? klen : 0;
    r->stub = 1;
    bm_wire_content_type(&biomatch__v1__dead_letter_stub__descriptor, r->content_type,
                         sizeof r->content_type);
    bm_bus_headers_add_str(&r->h, BM_HDR_CONTENT_TYPE, r->content_type);
    const struct bm_bus_header *tp =
        bm_bus_header_find(m->headers, m->nheaders, BM_HDR_TRACEPARENT);
    if (tp != NULL && tp->value != NULL && tp->len <= 128)
        bm_bus_headers_add(&r->h, BM_HDR_TRACEPARENT, tp->value, tp->len);
}

void bm_dlq_build(struct bm_dlq_rec *r, const struct bm_bus_msg *m,
                  Biomatch__V1__ErrorCode code, const char *why, size_t max_bytes,
                  int stub_always)
{
    bm_bus_headers_init(&r->h);
    r->stub = 0;
    bm_wire_dlq_error(code, why, r->error, sizeof r->error);
    if (stub_always || copy_bytes(m, strlen(r->error)) > max_bytes) {
        build_stub(r, m, code, why);
    } else {
        r->key = m->key;
        r->keylen = m->keylen;
        r->value = m->value;
        r->valuelen = m->valuelen;
        /* Keep the record's own headers (room is left for `error`). */
        for (size_t i = 0; i < m->nheaders && r->h.n + 1 < BM_BUS_MAX_HEADERS; i++)
            if (strcmp(m->headers[i].name, BM_HDR_ERROR) != 0)
                bm_bus_headers_add(&r->h, m->headers[i].name, m->headers[i].value,
                                   m->headers[i].len);
    }
    bm_bus_headers_add_str(&r->h, BM_HDR_ERROR, r->error);
}
