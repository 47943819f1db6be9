/* Fuzz the size-checked decoders and MatchJob validation.
 *
 * The input is a record value as intake sees it. Invariants: decoding
 * never crashes or leaks (ASan/LSan); a decoded job re-encodes and decodes
 * again; validation never crashes whatever the decoded fields hold; a job
 * that validates converts to finite floats. Every other message type is
 * decoded from the same bytes too, so all decoders are exercised. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "fuzz.h"
#include "wire/decode.h"
#include "wire/job.h"
#include "wire/template.h"

#define NOW INT64_C(1700000000000)

static const ProtobufCMessageDescriptor *const others[] = {
    &biomatch__v1__template__descriptor,         &biomatch__v1__match_task__descriptor,
    &biomatch__v1__partial_result__descriptor,   &biomatch__v1__match_result__descriptor,
    &biomatch__v1__enroll_request__descriptor,   &biomatch__v1__enroll_result__descriptor,
    &biomatch__v1__gallery_change__descriptor,   &biomatch__v1__gallery_definition__descriptor,
    &biomatch__v1__shard_manifest__descriptor,   &biomatch__v1__audit_record__descriptor,
};

static void check_job(const Biomatch__V1__MatchJob *job)
{
    static Biomatch__V1__IrisGeometry geo = {
        PROTOBUF_C_MESSAGE_INIT(&biomatch__v1__iris_geometry__descriptor), 1, 2, 8, 2};
    Biomatch__V1__GalleryDefinition g = BIOMATCH__V1__GALLERY_DEFINITION__INIT;
    g.name = job->gallery; /* so validation reaches the probes */
    g.shards = 2, g.replicas = 1;
    for (int kind = 0; kind < 2; kind++) {
        if (kind == 0) {
            g.modality = job->n_probes ? job->probes[0]->modality
                                       : BIOMATCH__V1__MODALITY__MODALITY_FACE;
            g.dim = (job->n_probes && job->probes[0]->kind_case == BIOMATCH__V1__TEMPLATE__KIND_DENSE)
                        ? job->probes[0]->dense->dim
                        : 64;
            g.element_type = BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_F32;
        } else {
            g.modality = BIOMATCH__V1__MODALITY__MODALITY_IRIS;
            g.iris_geometry = &geo;
            g.iris_rotations = 3;
        }
        char err[256];
        Biomatch__V1__ErrorCode code;
        int rc = bm_wire_validate_job(job, &g, NOW, NULL, &code, err, sizeof err);
        BM_FUZZ_CHECK((rc == BM_OK) == (code == BIOMATCH__V1__ERROR_CODE__ERROR_CODE_NONE));
        if (rc != BM_OK)
            continue;
        for (size_t i = 0; i < job->n_probes; i++) {
            const Biomatch__V1__Template *t = job->probes[i];
            if (t->kind_case != BIOMATCH__V1__TEMPLATE__KIND_DENSE)
                continue;
            float *v = malloc(sizeof(float) * t->dense->dim);
            BM_FUZZ_CHECK(v != NULL);
            BM_FUZZ_CHECK(bm_wire_dense_to_f32(t->dense, v, t->dense->dim, err, sizeof err) ==
                          BM_OK);
            double ss = 0;
            for (size_t k = 0; k < t->dense->dim; k++) {
                BM_FUZZ_CHECK(isfinite(v[k]));
                ss += (double)v[k] * v[k];
            }
            BM_FUZZ_CHECK(ss > 0);
            free(v);
        }
    }
}

int bm_fuzz_decode_job(const uint8_t *data, size_t size)
{
    char err[256];
    Biomatch__V1__MatchJob *job =
        bm_wire_decode_job(data, size, BM_WIRE_DEFAULT_MAX_BYTES, err, sizeof err);
    if (job != NULL) {
        check_job(job);
        size_t n;
        uint8_t *b = bm_wire_encode(&job->base, &n);
        BM_FUZZ_CHECK(b != NULL);
        Biomatch__V1__MatchJob *again = bm_wire_decode_job(b, n, n, err, sizeof err);
        BM_FUZZ_CHECK(again != NULL);
        BM_FUZZ_CHECK(again->n_probes == job->n_probes);
        bm_wire_free_job(again);
        free(b);
        bm_wire_free_job(job);
    }
    for (size_t i = 0; i < sizeof others / sizeof *others; i++) {
        ProtobufCMessage *m;
        int rc = bm_wire_decode(others[i], data, size, BM_WIRE_DEFAULT_MAX_BYTES, &m, NULL, err,
                                sizeof err);
        BM_FUZZ_CHECK((rc == BM_OK) == (m != NULL));
        bm_wire_free(m);
    }
    return 0;
}

#ifndef BM_FUZZ_REPLAY
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return bm_fuzz_decode_job(data, size);
}
#endif
