/* Fuzz the envelope parser and the header parsers.
 *
 * Invariants: unwrap never reads outside the input (ASan), honours max_len
 * before anything else, returns a payload slice inside the input, and an SR
 * envelope re-wrapped with its own schema id and index path unwraps to the
 * same schema id, path and payload. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "fuzz.h"
#include "wire/envelope.h"
#include "wire/headers.h"
#include "biomatch.pb-c.h"

int bm_fuzz_envelope(const uint8_t *data, size_t size)
{
    char err[128];
    struct bm_envelope e;

    if (size > 0)
        BM_FUZZ_CHECK(bm_envelope_unwrap(data, size, size - 1, &e, err, sizeof err) ==
                      BM_ERANGE);
    int rc = bm_envelope_unwrap(data, size, size, &e, err, sizeof err);
    BM_FUZZ_CHECK(rc == BM_OK || rc == BM_EPROTO);
    if (rc == BM_OK) {
        BM_FUZZ_CHECK(e.payload_len <= size);
        if (size > 0)
            BM_FUZZ_CHECK(e.payload >= data && e.payload + e.payload_len == data + size);
        BM_FUZZ_CHECK((e.kind == BM_ENVELOPE_SR) == (size > 0 && data[0] == 0));
        if (e.kind == BM_ENVELOPE_SR) {
            BM_FUZZ_CHECK(e.nindexes >= 1 && e.nindexes <= BM_ENVELOPE_MAX_INDEXES);
            size_t n;
            uint8_t *w = bm_envelope_wrap_sr(e.schema_id, e.indexes, e.nindexes, e.payload,
                                             e.payload_len, &n);
            BM_FUZZ_CHECK(w != NULL);
            struct bm_envelope e2;
            BM_FUZZ_CHECK(bm_envelope_unwrap(w, n, n, &e2, err, sizeof err) == BM_OK);
            BM_FUZZ_CHECK(e2.kind == BM_ENVELOPE_SR && e2.schema_id == e.schema_id);
            BM_FUZZ_CHECK(e2.nindexes == e.nindexes);
            BM_FUZZ_CHECK(memcmp(e2.indexes, e.indexes, e.nindexes * sizeof e.indexes[0]) == 0);
            BM_FUZZ_CHECK(e2.payload_len == e.payload_len);
            BM_FUZZ_CHECK(e.payload_len == 0 ||
                          memcmp(e2.payload, e.payload, e.payload_len) == 0);
            free(w);
        }
    } else {
        BM_FUZZ_CHECK(e.payload == NULL && e.payload_len == 0);
    }

    /* Header values are untrusted, unterminated bytes too. */
    (void)bm_wire_content_type_ok((const char *)data, size, &biomatch__v1__match_job__descriptor);
    (void)bm_wire_traceparent_valid((const char *)data, size);
    return 0;
}

#ifndef BM_FUZZ_REPLAY
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return bm_fuzz_envelope(data, size);
}
#endif
