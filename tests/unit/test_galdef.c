/* Gallery definitions (store/galdef.h) without Redis: spec <-> definition
 * conversion, defaults for unset iris fields, equality, validation and the
 * size-checked decoder. */
#include "testutil.h"

#include <stdlib.h>
#include <string.h>

#include "store/galdef.h"

static void test_dense_round_trip(void **state)
{
    (void)state;
    char err[256];
    struct bm_spec s, back;
    bm_spec_default(&s, BM_MODALITY_DENSE);
    s.dim = 256;
    s.dtype = BM_DTYPE_F16;
    Biomatch__V1__GalleryDefinition *d =
        bm_galdef_from_spec("faces", BIOMATCH__V1__MODALITY__MODALITY_FACE, &s, 4, 2, err, sizeof err);
    assert_non_null(d);
    assert_int_equal(d->element_type, BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_F16);
    assert_int_equal(d->shards, 4);
    assert_int_equal(d->replicas, 2);
    assert_int_equal(bm_galdef_to_spec(d, &back, err, sizeof err), BM_OK);
    assert_int_equal(back.modality, BM_MODALITY_DENSE);
    assert_int_equal(back.dim, 256);
    assert_int_equal(back.dtype, BM_DTYPE_F16);

    /* Encode/decode keeps it equal; created time does not matter. */
    size_t n = biomatch__v1__gallery_definition__get_packed_size(d);
    uint8_t *buf = malloc(n);
    assert_non_null(buf);
    biomatch__v1__gallery_definition__pack(d, buf);
    int rc = -1;
    Biomatch__V1__GalleryDefinition *e = bm_galdef_decode(buf, n, &rc, err, sizeof err);
    assert_non_null(e);
    assert_int_equal(rc, BM_OK);
    e->created_unix_ms = 12345;
    assert_true(bm_galdef_equal(d, e));
    e->shards = 5;
    assert_false(bm_galdef_equal(d, e));
    e->shards = 4;
    e->dim = 512;
    assert_false(bm_galdef_equal(d, e));
    bm_galdef_free(e);
    free(buf);
    bm_galdef_free(d);
}

static void test_iris_defaults(void **state)
{
    (void)state;
    char err[256];
    struct bm_spec s, def;
    Biomatch__V1__GalleryDefinition d = BIOMATCH__V1__GALLERY_DEFINITION__INIT;
    d.name = (char *)"irises";
    d.modality = BIOMATCH__V1__MODALITY__MODALITY_IRIS;
    d.shards = 2;
    d.replicas = 1;
    /* No geometry at all: the open-iris defaults. */
    assert_int_equal(bm_galdef_validate(&d, err, sizeof err), BM_OK);
    assert_int_equal(bm_galdef_to_spec(&d, &s, err, sizeof err), BM_OK);
    bm_spec_default(&def, BM_MODALITY_IRIS);
    assert_int_equal(s.iris_filters, def.iris_filters);
    assert_int_equal(s.iris_rows, def.iris_rows);
    assert_int_equal(s.iris_columns, def.iris_columns);
    assert_int_equal(s.iris_bits_per_cell, def.iris_bits_per_cell);
    assert_int_equal(s.iris_rotations, 15);
    assert_int_equal(s.iris_scoring, BM_IRIS_FRACTIONAL);

    /* Spelled-out defaults are the same gallery. */
    Biomatch__V1__GalleryDefinition *full =
        bm_galdef_from_spec("irises", BIOMATCH__V1__MODALITY__MODALITY_IRIS, &def, 2, 1, err,
                            sizeof err);
    assert_non_null(full);
    assert_true(bm_galdef_equal(&d, full));
    full->iris_scoring = BIOMATCH__V1__IRIS_SCORING__IRIS_SCORING_OPENIRIS;
    assert_false(bm_galdef_equal(&d, full));
    assert_int_equal(bm_galdef_to_spec(full, &s, err, sizeof err), BM_OK);
    assert_int_equal(s.iris_scoring, BM_IRIS_OPENIRIS);
    bm_galdef_free(full);

    /* A geometry the matcher refuses. */
    Biomatch__V1__IrisGeometry g = BIOMATCH__V1__IRIS_GEOMETRY__INIT;
    g.filters = 1;
    g.rows = 1;
    g.columns = 3;
    g.bits_per_cell = 1;
    d.iris_geometry = &g;
    assert_int_equal(bm_galdef_validate(&d, err, sizeof err), BM_EINVAL);
}

static void test_validation(void **state)
{
    (void)state;
    char err[256];
    struct bm_spec s;
    bm_spec_default(&s, BM_MODALITY_DENSE);
    /* Names: the topic alphabet only. */
    assert_null(bm_galdef_from_spec("a.b", BIOMATCH__V1__MODALITY__MODALITY_FACE, &s, 1, 1, err, sizeof err));
    assert_null(bm_galdef_from_spec("", BIOMATCH__V1__MODALITY__MODALITY_FACE, &s, 1, 1, err, sizeof err));
    assert_null(bm_galdef_from_spec("x{y}", BIOMATCH__V1__MODALITY__MODALITY_FACE, &s, 1, 1, err, sizeof err));
    char longname[80];
    memset(longname, 'a', 65);
    longname[65] = '\0';
    assert_null(bm_galdef_from_spec(longname, BIOMATCH__V1__MODALITY__MODALITY_FACE, &s, 1, 1, err, sizeof err));
    longname[64] = '\0';
    Biomatch__V1__GalleryDefinition *ok =
        bm_galdef_from_spec(longname, BIOMATCH__V1__MODALITY__MODALITY_PALM, &s, 1, 1, err, sizeof err);
    assert_non_null(ok);
    bm_galdef_free(ok);
    /* S and R. */
    assert_null(bm_galdef_from_spec("g", BIOMATCH__V1__MODALITY__MODALITY_FACE, &s, 0, 1, err, sizeof err));
    assert_null(bm_galdef_from_spec("g", BIOMATCH__V1__MODALITY__MODALITY_FACE, &s, 1, 0, err, sizeof err));
    assert_null(bm_galdef_from_spec("g", BIOMATCH__V1__MODALITY__MODALITY_FACE, &s, BM_GALDEF_MAX_SHARDS + 1,
                                    1, err, sizeof err));
    /* Modality must fit the spec. */
    assert_null(bm_galdef_from_spec("g", BIOMATCH__V1__MODALITY__MODALITY_IRIS, &s, 1, 1, err, sizeof err));
    s.dim = 32;
    assert_null(bm_galdef_from_spec("g", BIOMATCH__V1__MODALITY__MODALITY_FACE, &s, 1, 1, err, sizeof err));
    /* Unknown element type. */
    Biomatch__V1__GalleryDefinition d = BIOMATCH__V1__GALLERY_DEFINITION__INIT;
    d.name = (char *)"g";
    d.modality = BIOMATCH__V1__MODALITY__MODALITY_FACE;
    d.dim = 512;
    d.shards = 1;
    d.replicas = 1;
    assert_int_equal(bm_galdef_validate(&d, err, sizeof err), BM_EINVAL);
    d.element_type = BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_INT8;
    assert_int_equal(bm_galdef_validate(&d, err, sizeof err), BM_OK);
    d.modality = BIOMATCH__V1__MODALITY__MODALITY_UNSPECIFIED;
    assert_int_equal(bm_galdef_validate(&d, err, sizeof err), BM_EINVAL);
}

static void test_decode_limits(void **state)
{
    (void)state;
    char err[256];
    int rc = 0;
    uint8_t big[BM_GALDEF_MAX_BYTES + 1];
    memset(big, 0, sizeof big);
    assert_null(bm_galdef_decode(big, sizeof big, &rc, err, sizeof err));
    assert_int_equal(rc, BM_ERANGE);
    static const uint8_t junk[] = { 0xff, 0xff, 0xff, 0xff, 0xff };
    assert_null(bm_galdef_decode(junk, sizeof junk, &rc, err, sizeof err));
    assert_int_equal(rc, BM_EPROTO);
    /* Decodes, but is not a valid definition (empty). */
    assert_null(bm_galdef_decode(big, 0, &rc, err, sizeof err));
    assert_int_equal(rc, BM_EINVAL);
    bm_galdef_free(NULL);
    bm_galdef_list_free(NULL, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dense_round_trip),
        cmocka_unit_test(test_iris_defaults),
        cmocka_unit_test(test_validation),
        cmocka_unit_test(test_decode_limits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
