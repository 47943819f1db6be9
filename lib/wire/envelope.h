/* Envelopes: how a protobuf payload is framed inside a Kafka record value.
 *
 * Two framings are accepted on every biomatch topic, told apart by the first
 * byte alone (docs/wire.md, "Envelopes"):
 *
 *   raw      the protobuf encoding of the message, nothing else;
 *   SR       Confluent Schema Registry framing: 0x00 magic, 4-byte big-endian
 *            schema id, the message-index array (zigzag varints: a count,
 *            then that many indexes; a single 0 byte stands for [0]), then
 *            the protobuf payload.
 *
 * The choice is unambiguous because a protobuf encoding never starts with
 * 0x00: its first byte opens a field tag (field_number << 3 | wire_type), and
 * field number 0 is invalid, so a 0x00 first byte cannot open a valid raw
 * message. An empty value is a valid raw encoding (every field default).
 *
 * Main invariant: unwrap never reads outside [buf, buf + len), never looks at
 * a value longer than max_len, and on success the payload slice lies inside
 * the input. Nothing is allocated. Thread: any (no shared state). */
#ifndef BM_WIRE_ENVELOPE_H
#define BM_WIRE_ENVELOPE_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

/* Message indexes kept by unwrap. Deeper paths (a message nested more than
 * this many levels in the registered schema) are refused as malformed. */
#define BM_ENVELOPE_MAX_INDEXES 8

/* The SR header is at most 1 + 4 + 5 * (1 + BM_ENVELOPE_MAX_INDEXES) bytes. */
#define BM_ENVELOPE_MAX_HEADER (1 + 4 + 5 * (1 + BM_ENVELOPE_MAX_INDEXES))

enum bm_envelope_kind {
    BM_ENVELOPE_RAW = 0,      /* plain protobuf */
    BM_ENVELOPE_SR = 1,       /* Confluent Schema Registry framing */
};

struct bm_envelope {
    enum bm_envelope_kind kind;
    uint32_t schema_id;       /* SR: registry schema id; RAW: 0 */
    size_t nindexes;          /* SR: length of the index path (>= 1); RAW: 0 */
    uint32_t indexes[BM_ENVELOPE_MAX_INDEXES]; /* SR: message index path */
    const uint8_t *payload;   /* protobuf bytes, a slice of the input buffer */
    size_t payload_len;
};

/* Parse the framing of 'buf' (len bytes) into 'out'.
 *
 * 'len' is checked against 'max_len' before any byte is read: a value over
 * the limit returns BM_ERANGE. A malformed SR header (truncated, a varint
 * longer than 5 bytes or over 32 bits, a negative count or index, more than
 * BM_ENVELOPE_MAX_INDEXES indexes) returns BM_EPROTO. 'buf' may be NULL only
 * when len == 0. On success out->payload points into 'buf' (borrowed: valid
 * as long as 'buf' is). On failure 'out' is zeroed and 'err' says why. */
int bm_envelope_unwrap(const uint8_t *buf, size_t len, size_t max_len,
                       struct bm_envelope *out, char *err, size_t errlen);

/* Frame 'payload' (len bytes) with the SR header for 'schema_id' and the
 * index path 'indexes' (nindexes entries; NULL/0 or the path [0] give the
 * one-byte short form). Returns a malloc'd buffer of *outlen bytes that the
 * caller frees with free(), or NULL on ENOMEM or when nindexes is over
 * BM_ENVELOPE_MAX_INDEXES or an index is over INT32_MAX. Thread: any. */
uint8_t *bm_envelope_wrap_sr(uint32_t schema_id, const uint32_t *indexes,
                             size_t nindexes, const uint8_t *payload, size_t len,
                             size_t *outlen);

#endif /* BM_WIRE_ENVELOPE_H */
