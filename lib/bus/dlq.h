/* Dead letters: the one way every role turns a record it cannot use into
 * a `dlq` record (docs/wire.md section 3, "Dead letters").
 *
 * Invariant: a dlq record never needs more than the record size limit. The
 * original's key, value and headers are copied only when they fit under
 * 'max_bytes' and the policy allows copies; otherwise the value is a
 * biomatch.v1.DeadLetterStub (source topic/partition/offset, key, sizes,
 * SHA-256 of the value, error code, reason) of at most a few KiB.
 *
 * Building is pure (no Kafka): the caller sends the result with its own
 * producer path, so the record's offset bookkeeping stays the caller's. */
#ifndef BM_BUS_DLQ_H
#define BM_BUS_DLQ_H

#include <stddef.h>
#include <stdint.h>

#include "biomatch.pb-c.h"
#include "bus/bus.h"

/* Room for the stub: key (up to BM_DLQ_STUB_KEY_MAX bytes of it), reason,
 * topic and fixed fields. */
#define BM_DLQ_STUB_KEY_MAX 256
#define BM_DLQ_STUB_MAX 2048

/* The record to send to `dlq`. Key, value and headers point into the
 * source record or into this struct: valid while both live. */
struct bm_dlq_rec {
    const void *key;
    size_t keylen;
    const void *value;
    size_t valuelen;
    struct bm_bus_headers h;
    int stub;                       /* 1: value is a DeadLetterStub */
    char error[512];                /* the `error` header's value */
    char content_type[96];          /* the stub's content-type */
    uint8_t stub_bytes[BM_DLQ_STUB_MAX];
};

/* Build the dlq record for source record 'm' refused with 'code' and
 * 'why'. 'max_bytes' is the record size limit (conf max_record_bytes); a
 * copy that would exceed it, or any record when 'stub_always', becomes a
 * stub. The stub keeps the original's valid `traceparent` header. Fills
 * 'r' (no allocation; nothing to free). Thread: any. */
void bm_dlq_build(struct bm_dlq_rec *r, const struct bm_bus_msg *m,
                  Biomatch__V1__ErrorCode code, const char *why, size_t max_bytes,
                  int stub_always);

#endif /* BM_BUS_DLQ_H */
