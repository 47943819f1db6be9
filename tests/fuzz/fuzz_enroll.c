/* Fuzz an enrollment record as the gallery role reads it: the envelope
 * (raw or Schema Registry framed), the EnrollRequest decoder, and the
 * template and id checks applied to what decoded. Invariants: nothing
 * crashes or leaks; the payload of an envelope lies inside the input; a
 * template that validates against a gallery shaped like it converts to
 * finite floats. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "fuzz.h"
#include "wire/decode.h"
#include "wire/envelope.h"
#include "wire/job.h"
#include "wire/template.h"

int bm_fuzz_enroll(const uint8_t *data, size_t size)
{
    char err[256];
    struct bm_envelope env;
    if (bm_envelope_unwrap(data, size, BM_WIRE_DEFAULT_MAX_BYTES, &env, err, sizeof err) !=
        BM_OK)
        return 0;
    BM_FUZZ_CHECK(env.payload_len <= size);
    BM_FUZZ_CHECK(env.payload_len == 0 ||
                  (env.payload >= data && env.payload + env.payload_len <= data + size));
    Biomatch__V1__EnrollRequest *r = bm_wire_decode_enroll(env.payload, env.payload_len,
                                                           BM_WIRE_DEFAULT_MAX_BYTES, err,
                                                           sizeof err);
    if (r == NULL)
        return 0;
    if (r->subject_id != NULL)
        (void)bm_wire_subject_id_valid(r->subject_id);
    if (r->reply_topic != NULL)
        (void)bm_wire_topic_valid(r->reply_topic);
    if (r->template_ != NULL && r->template_->kind_case == BIOMATCH__V1__TEMPLATE__KIND_DENSE &&
        r->template_->dense != NULL) {
        const Biomatch__V1__DenseEmbedding *d = r->template_->dense;
        Biomatch__V1__GalleryDefinition g = BIOMATCH__V1__GALLERY_DEFINITION__INIT;
        g.name = (char *)"g";
        g.modality = r->template_->modality;
        g.dim = d->dim;
        g.element_type = d->element_type;
        g.shards = 1;
        g.replicas = 1;
        if (bm_wire_validate_gallery_def(&g, err, sizeof err) ==
                BIOMATCH__V1__ERROR_CODE__ERROR_CODE_NONE &&
            bm_wire_validate_template(r->template_, &g, err, sizeof err) ==
                BIOMATCH__V1__ERROR_CODE__ERROR_CODE_NONE) {
            float *v = malloc(sizeof(float) * d->dim);
            BM_FUZZ_CHECK(v != NULL);
            BM_FUZZ_CHECK(bm_wire_dense_to_f32(d, v, d->dim, err, sizeof err) == BM_OK);
            for (size_t k = 0; k < d->dim; k++)
                BM_FUZZ_CHECK(isfinite(v[k]));
            free(v);
        }
    }
    bm_wire_free_enroll(r);
    return 0;
}

#ifndef BM_FUZZ_REPLAY
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return bm_fuzz_enroll(data, size);
}
#endif
