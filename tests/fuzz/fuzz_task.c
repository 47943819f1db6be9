/* Fuzz the MatchTask decoder and bm_wire_validate_task, as a worker sees
 * tasks. Invariants: decoding never crashes or leaks; validation never
 * crashes whatever the fields hold and sets a code exactly when it fails;
 * a decoded task re-encodes and decodes again with the same probes. */
#include <stdio.h>
#include <stdlib.h>

#include "common/err.h"
#include "fuzz.h"
#include "wire/decode.h"
#include "wire/job.h"

int bm_fuzz_task(const uint8_t *data, size_t size)
{
    char err[256];
    Biomatch__V1__MatchTask *t =
        bm_wire_decode_task(data, size, BM_WIRE_DEFAULT_MAX_BYTES, err, sizeof err);
    if (t == NULL)
        return 0;
    static Biomatch__V1__IrisGeometry geo = {
        PROTOBUF_C_MESSAGE_INIT(&biomatch__v1__iris_geometry__descriptor), 1, 2, 8, 2};
    Biomatch__V1__GalleryDefinition g = BIOMATCH__V1__GALLERY_DEFINITION__INIT;
    g.name = t->gallery;
    g.shards = t->shard_count ? t->shard_count : 1;
    g.replicas = 1;
    for (int kind = 0; kind < 2; kind++) {
        if (kind == 0) {
            g.modality = BIOMATCH__V1__MODALITY__MODALITY_FACE;
            g.dim = (t->n_probes && t->probes[0] &&
                     t->probes[0]->kind_case == BIOMATCH__V1__TEMPLATE__KIND_DENSE)
                        ? t->probes[0]->dense->dim
                        : 64;
            g.element_type = BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_F32;
        } else {
            g.modality = BIOMATCH__V1__MODALITY__MODALITY_IRIS;
            g.iris_geometry = &geo;
            g.iris_rotations = 3;
        }
        Biomatch__V1__ErrorCode code;
        int rc = bm_wire_validate_task(t, &g, t->shard, NULL, &code, err, sizeof err);
        BM_FUZZ_CHECK((rc == BM_OK) == (code == BIOMATCH__V1__ERROR_CODE__ERROR_CODE_NONE));
    }
    size_t n;
    uint8_t *b = bm_wire_encode(&t->base, &n);
    BM_FUZZ_CHECK(b != NULL);
    Biomatch__V1__MatchTask *again = bm_wire_decode_task(b, n, n, err, sizeof err);
    BM_FUZZ_CHECK(again != NULL && again->n_probes == t->n_probes);
    bm_wire_free_task(again);
    free(b);
    bm_wire_free_task(t);
    return 0;
}

#ifndef BM_FUZZ_REPLAY
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return bm_fuzz_task(data, size);
}
#endif
