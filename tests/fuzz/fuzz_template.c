/* Fuzz template validation and dense conversion.
 *
 * Byte 0 picks the route. Route 0: the rest is a Template in protobuf,
 * checked against a gallery shaped like it. Routes 1-3: the rest is the
 * raw element data of an f32 / f16 / int8 embedding (bytes 1-4 the int8
 * scale), so the fuzzer reaches the NaN/Inf/norm checks directly.
 * Invariant: a template that validates converts to dim finite floats with
 * a norm inside [BM_WIRE_MIN_NORM, BM_WIRE_MAX_NORM]. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "fuzz.h"
#include "wire/decode.h"
#include "wire/template.h"

static void check_valid_dense(const Biomatch__V1__DenseEmbedding *d)
{
    char err[128];
    float *v = malloc(sizeof(float) * (d->dim ? d->dim : 1));
    BM_FUZZ_CHECK(v != NULL);
    BM_FUZZ_CHECK(bm_wire_dense_to_f32(d, v, d->dim, err, sizeof err) == BM_OK);
    double ss = 0;
    for (size_t k = 0; k < d->dim; k++) {
        BM_FUZZ_CHECK(isfinite(v[k]));
        ss += (double)v[k] * v[k];
    }
    BM_FUZZ_CHECK(ss >= BM_WIRE_MIN_NORM * BM_WIRE_MIN_NORM);
    BM_FUZZ_CHECK(ss <= BM_WIRE_MAX_NORM * BM_WIRE_MAX_NORM);
    free(v);
}

static void route_protobuf(const uint8_t *data, size_t size)
{
    char err[256];
    Biomatch__V1__Template *t = bm_wire_decode_template(data, size, 1 << 20, err, sizeof err);
    if (t == NULL)
        return;
    Biomatch__V1__GalleryDefinition g = BIOMATCH__V1__GALLERY_DEFINITION__INIT;
    g.name = (char *)"fuzz";
    g.modality = t->modality;
    g.shards = 1, g.replicas = 1;
    g.element_type = BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_F16;
    if (t->kind_case == BIOMATCH__V1__TEMPLATE__KIND_DENSE)
        g.dim = t->dense->dim;
    if (t->kind_case == BIOMATCH__V1__TEMPLATE__KIND_IRIS) {
        g.iris_geometry = t->iris->geometry;
        g.iris_min_valid_bits = 1;
    }
    /* Validate against the gallery only if the gallery itself is valid,
     * as intake does; also against a NULL gallery, which must be safe. */
    (void)bm_wire_validate_template(t, NULL, err, sizeof err);
    if (bm_wire_validate_gallery_def(&g, err, sizeof err) ==
            BIOMATCH__V1__ERROR_CODE__ERROR_CODE_NONE &&
        bm_wire_validate_template(t, &g, err, sizeof err) ==
            BIOMATCH__V1__ERROR_CODE__ERROR_CODE_NONE &&
        t->kind_case == BIOMATCH__V1__TEMPLATE__KIND_DENSE)
        check_valid_dense(t->dense);
    bm_wire_free_template(t);
}

static void route_raw(int route, const uint8_t *data, size_t size)
{
    static const Biomatch__V1__ElementType types[] = {
        BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_F32, BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_F16,
        BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_INT8};
    Biomatch__V1__DenseEmbedding d = BIOMATCH__V1__DENSE_EMBEDDING__INIT;
    d.element_type = types[route - 1];
    if (d.element_type == BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_INT8) {
        if (size < 4)
            return;
        memcpy(&d.scale, data, 4);
        data += 4, size -= 4;
    }
    size_t es = bm_wire_element_size(d.element_type);
    d.dim = (uint32_t)(size / es);
    if (d.dim < BM_WIRE_MIN_DIM)
        d.dim = BM_WIRE_MIN_DIM; /* then the length check must refuse it */
    if (d.dim > BM_WIRE_MAX_DIM)
        d.dim = BM_WIRE_MAX_DIM;
    d.data.data = (uint8_t *)data;
    d.data.len = size;
    Biomatch__V1__Template t = BIOMATCH__V1__TEMPLATE__INIT;
    t.modality = BIOMATCH__V1__MODALITY__MODALITY_FACE;
    t.kind_case = BIOMATCH__V1__TEMPLATE__KIND_DENSE;
    t.dense = &d;
    Biomatch__V1__GalleryDefinition g = BIOMATCH__V1__GALLERY_DEFINITION__INIT;
    g.name = (char *)"fuzz";
    g.modality = BIOMATCH__V1__MODALITY__MODALITY_FACE;
    g.dim = d.dim;
    g.element_type = BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_INT8;
    g.shards = 1, g.replicas = 1;
    char err[256];
    Biomatch__V1__ErrorCode c = bm_wire_validate_template(&t, &g, err, sizeof err);
    if (size != (size_t)d.dim * es)
        BM_FUZZ_CHECK(c == BIOMATCH__V1__ERROR_CODE__ERROR_CODE_MALFORMED);
    if (c == BIOMATCH__V1__ERROR_CODE__ERROR_CODE_NONE)
        check_valid_dense(&d);
}

int bm_fuzz_template(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int route = data[0] & 3;
    if (route == 0)
        route_protobuf(data + 1, size - 1);
    else
        route_raw(route, data + 1, size - 1);
    return 0;
}

#ifndef BM_FUZZ_REPLAY
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return bm_fuzz_template(data, size);
}
#endif
