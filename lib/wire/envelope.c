/* Raw vs Schema Registry framing (see envelope.h and docs/wire.md).
 *
 * Invariant: every read goes through the cursor 'p' checked against 'end';
 * varints are at most 5 bytes and must fit 32 bits, so a hostile header can
 * neither overrun the buffer nor wrap a count. */
#include "wire/envelope.h"

#include <stdlib.h>
#include <string.h>

/* Read one zigzag-encoded 32-bit varint (Kafka/Confluent ByteUtils style).
 * Returns BM_OK and advances *pp, or BM_EPROTO on truncation or overflow. */
static int read_zigzag32(const uint8_t **pp, const uint8_t *end, int32_t *out)
{
    const uint8_t *p = *pp;
    uint32_t raw = 0;
    for (unsigned i = 0; i < 5; i++) {
        if (p >= end)
            return BM_EPROTO;
        uint8_t b = *p++;
        if (i == 4 && (b & 0xf0) != 0)
            return BM_EPROTO; /* more than 32 bits, or a 6th byte follows */
        raw |= (uint32_t)(b & 0x7f) << (7 * i);
        if ((b & 0x80) == 0) {
            *pp = p;
            /* zigzag: 0,1,2,3 -> 0,-1,1,-2 */
            *out = (int32_t)(raw >> 1) ^ -(int32_t)(raw & 1);
            return BM_OK;
        }
    }
    return BM_EPROTO;
}

int bm_envelope_unwrap(const uint8_t *buf, size_t len, size_t max_len,
                       struct bm_envelope *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (len > max_len)
        return bm_seterr(err, errlen, BM_ERANGE,
                         "message of %zu bytes is over the %zu-byte limit", len, max_len);
    if (len == 0 || buf[0] != 0x00) {
        out->kind = BM_ENVELOPE_RAW;
        out->payload = buf;
        out->payload_len = len;
        return BM_OK;
    }

    const uint8_t *p = buf + 1, *end = buf + len;
    if ((size_t)(end - p) < 4)
        return bm_seterr(err, errlen, BM_EPROTO,
                         "schema registry header truncated in the schema id");
    uint32_t id = ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) |
                  ((uint32_t)p[2] << 8) | (uint32_t)p[3];
    p += 4;

    int32_t count;
    if (read_zigzag32(&p, end, &count) != BM_OK)
        return bm_seterr(err, errlen, BM_EPROTO,
                         "schema registry header: bad message-index count varint");
    if (count < 0 || count > BM_ENVELOPE_MAX_INDEXES)
        return bm_seterr(err, errlen, BM_EPROTO,
                         "schema registry header: message-index count %ld out of 0..%d",
                         (long)count, BM_ENVELOPE_MAX_INDEXES);
    if (count == 0) {
        /* The short form: a lone 0 means the path [0], the first message. */
        out->nindexes = 1;
        out->indexes[0] = 0;
    } else {
        for (int32_t i = 0; i < count; i++) {
            int32_t idx;
            if (read_zigzag32(&p, end, &idx) != BM_OK)
                return bm_seterr(err, errlen, BM_EPROTO,
                                 "schema registry header: bad message-index varint %ld",
                                 (long)i);
            if (idx < 0)
                return bm_seterr(err, errlen, BM_EPROTO,
                                 "schema registry header: negative message index");
            out->indexes[i] = (uint32_t)idx;
        }
        out->nindexes = (size_t)count;
    }
    out->kind = BM_ENVELOPE_SR;
    out->schema_id = id;
    out->payload = p;
    out->payload_len = (size_t)(end - p);
    return BM_OK;
}

/* Append the zigzag varint of v (v >= 0) at p; returns bytes written. */
static size_t put_zigzag32(uint8_t *p, int32_t v)
{
    uint32_t raw = ((uint32_t)v << 1) ^ (uint32_t)(v >> 31);
    size_t n = 0;
    while (raw >= 0x80) {
        p[n++] = (uint8_t)(raw | 0x80);
        raw >>= 7;
    }
    p[n++] = (uint8_t)raw;
    return n;
}

uint8_t *bm_envelope_wrap_sr(uint32_t schema_id, const uint32_t *indexes,
                             size_t nindexes, const uint8_t *payload, size_t len,
                             size_t *outlen)
{
    if (nindexes > BM_ENVELOPE_MAX_INDEXES)
        return NULL;
    for (size_t i = 0; i < nindexes; i++)
        if (indexes[i] > INT32_MAX)
            return NULL;
    if (len > SIZE_MAX - BM_ENVELOPE_MAX_HEADER)
        return NULL;
    uint8_t *b = malloc(BM_ENVELOPE_MAX_HEADER + len);
    if (b == NULL)
        return NULL;
    size_t n = 0;
    b[n++] = 0x00;
    b[n++] = (uint8_t)(schema_id >> 24);
    b[n++] = (uint8_t)(schema_id >> 16);
    b[n++] = (uint8_t)(schema_id >> 8);
    b[n++] = (uint8_t)schema_id;
    if (nindexes == 0 || (nindexes == 1 && indexes[0] == 0)) {
        b[n++] = 0x00;
    } else {
        n += put_zigzag32(b + n, (int32_t)nindexes);
        for (size_t i = 0; i < nindexes; i++)
            n += put_zigzag32(b + n, (int32_t)indexes[i]);
    }
    if (len > 0)
        memcpy(b + n, payload, len);
    *outlen = n + len;
    return b;
}
