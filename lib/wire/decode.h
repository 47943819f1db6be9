/* Size-checked decoding and encoding of every biomatch.v1 message.
 *
 * Decoding is always: check the size limit, unwrap the envelope (raw or
 * Schema Registry framing, envelope.h), then protobuf-c unpack of the
 * payload as the message type the topic carries. The schema id and message
 * indexes of an SR envelope are reported but not used to pick the type: a
 * topic carries one message type (docs/wire.md, "Topics").
 *
 * protobuf-c accepts unknown enum values and does not check UTF-8, so a
 * decoded message is only well-formed, not valid: intake validates with
 * job.h and template.h before it trusts any field.
 *
 * Ownership: a decoded message belongs to the caller, who frees it with the
 * matching bm_wire_free_*() (or bm_wire_free()). Encoded buffers are malloc'd
 * and freed with free(). Thread: any; no shared state. */
#ifndef BM_WIRE_DECODE_H
#define BM_WIRE_DECODE_H

#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "biomatch.pb-c.h"
#include "common/err.h"
#include "wire/envelope.h"

/* Default limit on one record value (1 MiB, Kafka's default
 * message.max.bytes): 16 probes of 4096 f32 elements are 256 KiB. */
#define BM_WIRE_DEFAULT_MAX_BYTES (1024u * 1024u)

/* Unpacking a payload of n bytes may allocate at most
 * BM_WIRE_DECODE_BUDGET_BASE + n * BM_WIRE_DECODE_BUDGET_FACTOR bytes
 * (each allocation charged at least its malloc chunk). The factor covers,
 * with room, the densest legitimate shape: a partial or result of
 * candidates with 1-byte ids takes ~7.4x its size in heap (structs,
 * strings, pointer arrays and protobuf-c's scan of each field); an empty
 * sub-message costs 40x and more, so a record made of them is refused
 * (docs/wire.md, "Size limit"). The base covers the fixed structs of a
 * short message. */
#define BM_WIRE_DECODE_BUDGET_FACTOR 16u
#define BM_WIRE_DECODE_BUDGET_BASE (64u * 1024u)

/* The allocation budget of unpacking 'payload_len' bytes (saturates at
 * SIZE_MAX). */
size_t bm_wire_decode_budget(size_t payload_len);

/* Decode 'len' bytes at 'buf' as a 'desc' message.
 *
 * Returns BM_OK and stores the message in *out (caller owns it), and, when
 * 'env' is not NULL, the envelope (its payload slice borrows 'buf').
 * On failure *out is NULL, nothing stays allocated and the result is
 * BM_ERANGE (len > max_len, checked before any byte is read, or the payload
 * would unpack into more than bm_wire_decode_budget() bytes, checked as it
 * unpacks), BM_EPROTO (bad framing or protobuf) or BM_ENOMEM. 'err' gets a
 * message that never contains payload bytes. */
int bm_wire_decode(const ProtobufCMessageDescriptor *desc, const uint8_t *buf,
                   size_t len, size_t max_len, ProtobufCMessage **out,
                   struct bm_envelope *env, char *err, size_t errlen);

/* The ErrorCode that a bm_wire_decode() result stands for on the wire:
 * BM_ERANGE -> TOO_LARGE, BM_EPROTO -> MALFORMED, BM_OK -> NONE, others
 * -> INTERNAL. */
Biomatch__V1__ErrorCode bm_wire_error_of(int rc);

/* Typed wrappers: NULL and a message in 'err' on any failure (use
 * bm_wire_decode() to tell "too large" from "malformed"). */
#define BM_WIRE_DECLARE(name, type)                                              \
    type *bm_wire_decode_##name(const uint8_t *buf, size_t len, size_t max_len, \
                                char *err, size_t errlen);                       \
    void bm_wire_free_##name(type *m);

BM_WIRE_DECLARE(template, Biomatch__V1__Template)
BM_WIRE_DECLARE(job, Biomatch__V1__MatchJob)
BM_WIRE_DECLARE(task, Biomatch__V1__MatchTask)
BM_WIRE_DECLARE(partial, Biomatch__V1__PartialResult)
BM_WIRE_DECLARE(result, Biomatch__V1__MatchResult)
BM_WIRE_DECLARE(enroll, Biomatch__V1__EnrollRequest)
BM_WIRE_DECLARE(enroll_result, Biomatch__V1__EnrollResult)
BM_WIRE_DECLARE(gallery_change, Biomatch__V1__GalleryChange)
BM_WIRE_DECLARE(gallery_def, Biomatch__V1__GalleryDefinition)
BM_WIRE_DECLARE(manifest, Biomatch__V1__ShardManifest)
BM_WIRE_DECLARE(audit, Biomatch__V1__AuditRecord)

/* Free any decoded message. Accepts NULL. */
void bm_wire_free(ProtobufCMessage *m);

/* Encode 'm' as raw protobuf into a malloc'd buffer of *len bytes (never
 * NULL for an empty message: a 1-byte allocation with *len = 0). Returns
 * NULL on ENOMEM. The caller frees the buffer with free(). */
uint8_t *bm_wire_encode(const ProtobufCMessage *m, size_t *len);

/* Encode 'm' with the SR framing (schema_id, index path; see
 * bm_envelope_wrap_sr()). Malloc'd; NULL on ENOMEM or a bad path. */
uint8_t *bm_wire_encode_sr(const ProtobufCMessage *m, uint32_t schema_id,
                           const uint32_t *indexes, size_t nindexes, size_t *len);

#endif /* BM_WIRE_DECODE_H */
