/* Size-checked decoders and encoders (see decode.h).
 *
 * Invariant: protobuf-c only ever sees a payload that passed the size limit
 * and the envelope parser, and it unpacks through an allocator that refuses
 * to hand out more than bm_wire_decode_budget(payload length) bytes in
 * total, so no record costs more heap than a fixed multiple of its own size
 * (an empty sub-message is 2 bytes on the wire but a whole struct in
 * memory: without the budget, 16 MiB of empty probes unpacked into ~704 MiB).
 * The allocator is malloc underneath, and every decoded message is freed
 * through 'heap' below (free). */
#include "wire/decode.h"

#include <stdlib.h>

/* The byte budget of one unpack. Every allocation is charged its size
 * rounded up to 16 plus 16, at least what a malloc chunk of that size takes
 * (glibc: size + 8 rounded up to 16, at least 32), so the budget bounds the
 * real heap and not only the requested bytes. */
struct budget {
    size_t left;
    int exhausted;                 /* an allocation was refused */
};

static void *budget_alloc(void *data, size_t size)
{
    struct budget *b = data;
    size_t cost = (size + 31) & ~(size_t)15;
    if (cost < size || cost > b->left) {
        b->exhausted = 1;
        return NULL;
    }
    void *p = malloc(size);
    if (p != NULL)
        b->left -= cost;
    return p;
}

static void heap_free(void *data, void *p)
{
    (void)data; /* spent budget is not refunded: it bounds the total */
    free(p);
}

/* What frees every decoded message: the same malloc heap, no budget. */
static const ProtobufCAllocator heap = {NULL, heap_free, NULL};

size_t bm_wire_decode_budget(size_t payload_len)
{
    if (payload_len > (SIZE_MAX - BM_WIRE_DECODE_BUDGET_BASE) / BM_WIRE_DECODE_BUDGET_FACTOR)
        return SIZE_MAX;
    return BM_WIRE_DECODE_BUDGET_BASE + payload_len * BM_WIRE_DECODE_BUDGET_FACTOR;
}

/* protobuf-c 1.4 accepts field number 0 when its tag is spelled with a
 * non-minimal varint (0x80 0x00) and keeps it as an unknown field, although
 * field 0 is invalid and other parsers refuse it; re-encoding would then
 * write a bare 0x00 tag that nothing, protobuf-c included, decodes again.
 * Refuse such messages anywhere in the tree. Depth is bounded by the
 * schema, which has no recursive messages. */
static int has_field_zero(const ProtobufCMessage *m)
{
    for (unsigned i = 0; i < m->n_unknown_fields; i++)
        if (m->unknown_fields[i].tag == 0)
            return 1;
    const ProtobufCMessageDescriptor *d = m->descriptor;
    for (unsigned f = 0; f < d->n_fields; f++) {
        const ProtobufCFieldDescriptor *fd = &d->fields[f];
        if (fd->type != PROTOBUF_C_TYPE_MESSAGE)
            continue;
        const char *base = (const char *)m;
        if (fd->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = *(const size_t *)(base + fd->quantifier_offset);
            ProtobufCMessage *const *v = *(ProtobufCMessage *const *const *)(base + fd->offset);
            for (size_t k = 0; k < n; k++)
                if (v[k] != NULL && has_field_zero(v[k]))
                    return 1;
        } else {
            /* Singular and oneof members: a NULL pointer when absent; a
             * oneof member only counts when its case is selected. */
            if ((fd->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
                *(const uint32_t *)(base + fd->quantifier_offset) != fd->id)
                continue;
            const ProtobufCMessage *sub = *(ProtobufCMessage *const *)(base + fd->offset);
            if (sub != NULL && has_field_zero(sub))
                return 1;
        }
    }
    return 0;
}

int bm_wire_decode(const ProtobufCMessageDescriptor *desc, const uint8_t *buf,
                   size_t len, size_t max_len, ProtobufCMessage **out,
                   struct bm_envelope *env, char *err, size_t errlen)
{
    struct bm_envelope e;
    *out = NULL;
    int rc = bm_envelope_unwrap(buf, len, max_len, &e, err, errlen);
    if (env != NULL)
        *env = e;
    if (rc != BM_OK)
        return rc;
    /* protobuf-c dereferences its data pointer even for length 0 on some
     * paths; hand it a valid address. */
    static const uint8_t empty[1];
    const uint8_t *p = e.payload_len ? e.payload : empty;
    struct budget b = {bm_wire_decode_budget(e.payload_len), 0};
    ProtobufCAllocator alloc = {budget_alloc, heap_free, &b};
    ProtobufCMessage *m = protobuf_c_message_unpack(desc, &alloc, e.payload_len, p);
    if (m == NULL && b.exhausted)
        return bm_seterr(err, errlen, BM_ERANGE,
                         "%s: %zu-byte payload would unpack into more than %zu bytes",
                         desc->name, e.payload_len, bm_wire_decode_budget(e.payload_len));
    if (m == NULL)
        return bm_seterr(err, errlen, BM_EPROTO, "%s: %zu-byte %s payload does not decode",
                         desc->name, e.payload_len,
                         e.kind == BM_ENVELOPE_SR ? "schema-registry" : "raw");
    if (has_field_zero(m)) {
        protobuf_c_message_free_unpacked(m, (ProtobufCAllocator *)&heap);
        return bm_seterr(err, errlen, BM_EPROTO, "%s: field number 0 is invalid", desc->name);
    }
    *out = m;
    return BM_OK;
}

Biomatch__V1__ErrorCode bm_wire_error_of(int rc)
{
    switch (rc) {
    case BM_OK:
        return BIOMATCH__V1__ERROR_CODE__ERROR_CODE_NONE;
    case BM_ERANGE:
        return BIOMATCH__V1__ERROR_CODE__ERROR_CODE_TOO_LARGE;
    case BM_EPROTO:
        return BIOMATCH__V1__ERROR_CODE__ERROR_CODE_MALFORMED;
    default:
        return BIOMATCH__V1__ERROR_CODE__ERROR_CODE_INTERNAL;
    }
}

void bm_wire_free(ProtobufCMessage *m)
{
    if (m != NULL)
        protobuf_c_message_free_unpacked(m, (ProtobufCAllocator *)&heap);
}

#define BM_WIRE_DEFINE(name, type, desc)                                          \
    type *bm_wire_decode_##name(const uint8_t *buf, size_t len, size_t max_len,  \
                                char *err, size_t errlen)                         \
    {                                                                             \
        ProtobufCMessage *m;                                                      \
        if (bm_wire_decode(&desc, buf, len, max_len, &m, NULL, err, errlen) != BM_OK) \
            return NULL;                                                          \
        return (type *)m;                                                         \
    }                                                                             \
    void bm_wire_free_##name(type *m)                                             \
    {                                                                             \
        bm_wire_free((ProtobufCMessage *)m);                                      \
    }

BM_WIRE_DEFINE(template, Biomatch__V1__Template, biomatch__v1__template__descriptor)
BM_WIRE_DEFINE(job, Biomatch__V1__MatchJob, biomatch__v1__match_job__descriptor)
BM_WIRE_DEFINE(task, Biomatch__V1__MatchTask, biomatch__v1__match_task__descriptor)
BM_WIRE_DEFINE(partial, Biomatch__V1__PartialResult, biomatch__v1__partial_result__descriptor)
BM_WIRE_DEFINE(result, Biomatch__V1__MatchResult, biomatch__v1__match_result__descriptor)
BM_WIRE_DEFINE(enroll, Biomatch__V1__EnrollRequest, biomatch__v1__enroll_request__descriptor)
BM_WIRE_DEFINE(enroll_result, Biomatch__V1__EnrollResult, biomatch__v1__enroll_result__descriptor)
BM_WIRE_DEFINE(gallery_change, Biomatch__V1__GalleryChange,
               biomatch__v1__gallery_change__descriptor)
BM_WIRE_DEFINE(gallery_def, Biomatch__V1__GalleryDefinition,
               biomatch__v1__gallery_definition__descriptor)
BM_WIRE_DEFINE(manifest, Biomatch__V1__ShardManifest, biomatch__v1__shard_manifest__descriptor)
BM_WIRE_DEFINE(audit, Biomatch__V1__AuditRecord, biomatch__v1__audit_record__descriptor)

uint8_t *bm_wire_encode(const ProtobufCMessage *m, size_t *len)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t *b = malloc(n ? n : 1);
    if (b == NULL)
        return NULL;
    *len = protobuf_c_message_pack(m, b);
    return b;
}

uint8_t *bm_wire_encode_sr(const ProtobufCMessage *m, uint32_t schema_id,
                           const uint32_t *indexes, size_t nindexes, size_t *len)
{
    size_t n;
    uint8_t *raw = bm_wire_encode(m, &n);
    if (raw == NULL)
        return NULL;
    uint8_t *framed = bm_envelope_wrap_sr(schema_id, indexes, nindexes, raw, n, len);
    free(raw);
    return framed;
}
