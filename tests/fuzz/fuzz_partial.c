/* Fuzz the PartialResult decoder as the aggregator sees shard answers and
 * opened markers. Invariants: decoding never crashes or leaks; the subject
 * id and topic validators the aggregator applies to decoded strings never
 * crash; a decoded partial re-encodes and decodes again with the same
 * candidate count. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "wire/decode.h"
#include "wire/job.h"

int bm_fuzz_partial(const uint8_t *data, size_t size)
{
    char err[256];
    Biomatch__V1__PartialResult *p =
        bm_wire_decode_partial(data, size, BM_WIRE_DEFAULT_MAX_BYTES, err, sizeof err);
    if (p == NULL)
        return 0;
    for (size_t i = 0; i < p->n_candidates; i++)
        if (p->candidates[i] != NULL && p->candidates[i]->subject_id != NULL)
            (void)bm_wire_subject_id_valid(p->candidates[i]->subject_id);
    if (p->reply_topic != NULL)
        (void)bm_wire_topic_valid(p->reply_topic);
    if (p->job_id != NULL)
        (void)bm_wire_utf8_valid(p->job_id, strlen(p->job_id));
    size_t n;
    uint8_t *b = bm_wire_encode(&p->base, &n);
    BM_FUZZ_CHECK(b != NULL);
    Biomatch__V1__PartialResult *again = bm_wire_decode_partial(b, n, n, err, sizeof err);
    BM_FUZZ_CHECK(again != NULL && again->n_candidates == p->n_candidates);
    bm_wire_free_partial(again);
    free(b);
    bm_wire_free_partial(p);
    return 0;
}

#ifndef BM_FUZZ_REPLAY
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return bm_fuzz_partial(data, size);
}
#endif
