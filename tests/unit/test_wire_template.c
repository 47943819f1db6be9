/* Template validation against a gallery definition (one case per ErrorCode
 * rule), dense conversion including portable f16, gallery-definition
 * checks, and the FNV-1a subject key and shard test vectors of docs/wire.md. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "wire/shard.h"
#include "wire/template.h"

#define EC(x) BIOMATCH__V1__ERROR_CODE__ERROR_CODE_##x
#define DIM 64

static char err[256];

/* A dense face gallery of DIM dims, or the default open-iris gallery. */
static void face_gallery(Biomatch__V1__GalleryDefinition *g)
{
    Biomatch__V1__GalleryDefinition init = BIOMATCH__V1__GALLERY_DEFINITION__INIT;
    *g = init;
    g->name = (char *)"faces";
    g->modality = BIOMATCH__V1__MODALITY__MODALITY_FACE;
    g->dim = DIM;
    g->element_type = BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_F16;
    g->shards = 4;
    g->replicas = 1;
}

static Biomatch__V1__IrisGeometry default_geo = {
    PROTOBUF_C_MESSAGE_INIT(&biomatch__v1__iris_geometry__descriptor), 2, 16, 256, 2};

static void iris_gallery(Biomatch__V1__GalleryDefinition *g)
{
    Biomatch__V1__GalleryDefinition init = BIOMATCH__V1__GALLERY_DEFINITION__INIT;
    *g = init;
    g->name = (char *)"irises";
    g->modality = BIOMATCH__V1__MODALITY__MODALITY_IRIS;
    g->iris_geometry = &default_geo;
    g->iris_rotations = 15;
    g->iris_min_valid_bits = 100;
    g->shards = 2;
    g->replicas = 2;
}

struct dense_probe {
    Biomatch__V1__Template t;
    Biomatch__V1__DenseEmbedding d;
    uint8_t data[DIM * 4];
};

static void put_le32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v, p[1] = (uint8_t)(v >> 8), p[2] = (uint8_t)(v >> 16),
    p[3] = (uint8_t)(v >> 24);
}

static void put_f32(uint8_t *p, float f)
{
    uint32_t b;
    memcpy(&b, &f, 4);
    put_le32(p, b);
}

/* A valid probe of element type 'et' with values (i % 7) - 3 (+0.5). */
static void dense_probe(struct dense_probe *p, Biomatch__V1__ElementType et)
{
    Biomatch__V1__Template ti = BIOMATCH__V1__TEMPLATE__INIT;
    Biomatch__V1__DenseEmbedding di = BIOMATCH__V1__DENSE_EMBEDDING__INIT;
    p->t = ti, p->d = di;
    p->t.modality = BIOMATCH__V1__MODALITY__MODALITY_FACE;
    p->t.kind_case = BIOMATCH__V1__TEMPLATE__KIND_DENSE;
    p->t.dense = &p->d;
    p->d.dim = DIM;
    p->d.element_type = et;
    p->d.data.data = p->data;
    for (size_t i = 0; i < DIM; i++) {
        float v = (float)((int)(i % 7) - 3) + 0.5f;
        if (et == BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_F32) {
            put_f32(p->data + 4 * i, v);
        } else if (et == BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_F16) {
            uint16_t h = bm_wire_f32_to_f16(v);
            p->data[2 * i] = (uint8_t)h, p->data[2 * i + 1] = (uint8_t)(h >> 8);
        } else {
            p->data[i] = (uint8_t)(int8_t)((int)(i % 7) - 3);
        }
    }
    p->d.data.len = DIM * bm_wire_element_size(et);
    p->d.scale = et == BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_INT8 ? 0.25f : 0.0f;
}

static Biomatch__V1__ErrorCode check(const Biomatch__V1__Template *t,
                                     const Biomatch__V1__GalleryDefinition *g)
{
    err[0] = '\0';
    Biomatch__V1__ErrorCode c = bm_wire_validate_template(t, g, err, sizeof err);
    if (c != EC(NONE))
        assert_true(strlen(err) > 0);
    return c;
}

static void test_dense_valid_each_type(void **state)
{
    (void)state;
    Biomatch__V1__GalleryDefinition g;
    face_gallery(&g);
    assert_int_equal(bm_wire_validate_gallery_def(&g, err, sizeof err), EC(NONE));
    const Biomatch__V1__ElementType types[] = {BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_F32,
                                               BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_F16,
                                               BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_INT8};
    for (size_t k = 0; k < 3; k++) {
        struct dense_probe p;
        dense_probe(&p, types[k]);
        assert_int_equal(check(&p.t, &g), EC(NONE));
        float out[DIM];
        assert_int_equal(bm_wire_dense_to_f32(&p.d, out, DIM, err, sizeof err), BM_OK);
        for (size_t i = 0; i < DIM; i++) {
            float want = k == 2 ? (float)((int)(i % 7) - 3) * 0.25f
                                : (float)((int)(i % 7) - 3) + 0.5f;
            assert_true(out[i] == want);
        }
        assert_int_equal(bm_wire_dense_to_f32(&p.d, out, DIM - 1, err, sizeof err), BM_EINVAL);
    }
}

static void test_dense_nan_inf_zero(void **state)
{
    (void)state;
    Biomatch__V1__GalleryDefinition g;
    face_gallery(&g);
    struct dense_probe p;

    dense_probe(&p, BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_F32);
    put_f32(p.data + 4 * 17, NAN);
    assert_int_equal(check(&p.t, &g), EC(INVALID_VALUE));
    assert_non_null(strstr(err, "NaN"));
    dense_probe(&p, BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_F32);
    put_f32(p.data + 4 * (DIM - 1), -INFINITY);
    assert_int_equal(check(&p.t, &g), EC(INVALID_VALUE));
    assert_non_null(strstr(err, "infinite"));

    /* f16 NaN (0x7e00) and Inf (0x7c00), checked after decoding. */
    dense_probe(&p, BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_F16);
    p.data[2 * 5] = 0x00, p.data[2 * 5 + 1] = 0x7e;
    assert_int_equal(check(&p.t, &g), EC(INVALID_VALUE));
    assert_non_null(strstr(err, "NaN"));
    dense_probe(&p, BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_F16);
    p.data[0] = 0x00, p.data[1] = 0xfc; /* -Inf */
    assert_int_equal(check(&p.t, &g), EC(INVALID_VALUE));
    assert_non_null(strstr(err, "infinite"));

    /* Zero vectors, including negative zeros. */
    dense_probe(&p, BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_F32);
    for (size_t i = 0; i < DIM; i++)
        put_f32(p.data + 4 * i, (i & 1) ? -0.0f : 0.0f);
    assert_int_equal(check(&p.t, &g), EC(INVALID_VALUE));
    assert_non_null(strstr(err, "zero"));
    dense_probe(&p, BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_INT8);
    memset(p.data, 0, DIM);
    assert_int_equal(check(&p.t, &g), EC(INVALID_VALUE));

    /* Norm outside [1e-18, 1e18]: a lone subnormal, and huge values. */
    dense_probe(&p, BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_F32);
    for (size_t i = 0; i < DIM; i++)
        put_f32(p.data + 4 * i, 0.0f);
    put_le32(p.data, 1); /* smallest subnormal */
    assert_int_equal(check(&p.t, &g), EC(INVALID_VALUE));
    put_f32(p.data, 1e30f);
    assert_int_equal(check(&p.t, &g), EC(INVALID_VALUE));
    put_f32(p.data, 1e10f);
    assert_int_equal(check(&p.t, &g), EC(NONE));
}

static void test_dense_shape_and_scale(void **state)
{
    (void)state;
    Biomatch__V1__GalleryDefinition g;
    face_gallery(&g);
    struct dense_probe p;

    dense_probe(&p, BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_F32);
    p.d.dim = DIM * 2; /* wrong dim */
    assert_int_equal(check(&p.t, &g), EC(GEOMETRY_MISMATCH));
    dense_probe(&p, BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_F32);
    p.d.data.len -= 1; /* wrong length */
    assert_int_equal(check(&p.t, &g), EC(MALFORMED));
    dense_probe(&p, BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_F16);
    p.d.data.len = DIM * 4; /* f32-sized data declared f16 */
    assert_int_equal(check(&p.t, &g), EC(MALFORMED));
    dense_probe(&p, BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_F32);
    p.d.element_type = (Biomatch__V1__ElementType)9;
    assert_int_equal(check(&p.t, &g), EC(UNSUPPORTED));
    p.d.element_type = BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_UNSPECIFIED;
    assert_int_equal(check(&p.t, &g), EC(UNSUPPORTED));

    const float bad_scales[] = {0.0f, -1.0f, NAN, INFINITY};
    for (size_t i = 0; i < 4; i++) {
        dense_probe(&p, BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_INT8);
        p.d.scale = bad_scales[i];
        assert_int_equal(check(&p.t, &g), EC(INVALID_VALUE));
        assert_non_null(strstr(err, "scale"));
    }

    /* Modality and kind. */
    dense_probe(&p, BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_F32);
    p.t.modality = BIOMATCH__V1__MODALITY__MODALITY_PALM;
    assert_int_equal(check(&p.t, &g), EC(GEOMETRY_MISMATCH));
    p.t.modality = BIOMATCH__V1__MODALITY__MODALITY_UNSPECIFIED;
    assert_int_equal(check(&p.t, &g), EC(MISSING_FIELD));
    p.t.modality = BIOMATCH__V1__MODALITY__MODALITY_FACE;
    p.t.kind_case = BIOMATCH__V1__TEMPLATE__KIND__NOT_SET;
    p.t.dense = NULL;
    assert_int_equal(check(&p.t, &g), EC(MISSING_FIELD));
    assert_int_equal(check(NULL, &g), EC(MISSING_FIELD));
    dense_probe(&p, BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_F32);
    assert_int_equal(check(&p.t, NULL), EC(UNKNOWN_GALLERY));
}

struct iris_probe {
    Biomatch__V1__Template t;
    Biomatch__V1__IrisCode c;
    Biomatch__V1__IrisGeometry geo;
    uint8_t code[2048], mask[2048];
};

static void iris_probe(struct iris_probe *p)
{
    Biomatch__V1__Template ti = BIOMATCH__V1__TEMPLATE__INIT;
    Biomatch__V1__IrisCode ci = BIOMATCH__V1__IRIS_CODE__INIT;
    p->t = ti, p->c = ci, p->geo = default_geo;
    p->t.modality = BIOMATCH__V1__MODALITY__MODALITY_IRIS;
    p->t.kind_case = BIOMATCH__V1__TEMPLATE__KIND_IRIS;
    p->t.iris = &p->c;
    p->c.geometry = &p->geo;
    for (size_t i = 0; i < sizeof p->code; i++)
        p->code[i] = (uint8_t)(i * 31), p->mask[i] = 0xff;
    p->c.code.data = p->code, p->c.code.len = sizeof p->code;
    p->c.mask.data = p->mask, p->c.mask.len = sizeof p->mask;
}

static void test_iris(void **state)
{
    (void)state;
    Biomatch__V1__GalleryDefinition g;
    iris_gallery(&g);
    assert_int_equal(bm_wire_validate_gallery_def(&g, err, sizeof err), EC(NONE));
    assert_int_equal(bm_wire_iris_bits(&default_geo), 16384);
    assert_int_equal(bm_wire_iris_bytes(&default_geo), 2048);
    struct iris_probe p;
    iris_probe(&p);
    assert_int_equal(check(&p.t, &g), EC(NONE));

    iris_probe(&p);
    p.geo.columns = 128; /* geometry mismatch */
    assert_int_equal(check(&p.t, &g), EC(GEOMETRY_MISMATCH));
    iris_probe(&p);
    p.geo.bits_per_cell = 1;
    assert_int_equal(check(&p.t, &g), EC(GEOMETRY_MISMATCH));
    iris_probe(&p);
    p.c.geometry = NULL;
    assert_int_equal(check(&p.t, &g), EC(MISSING_FIELD));
    iris_probe(&p);
    p.c.code.len = 2047;
    assert_int_equal(check(&p.t, &g), EC(MALFORMED));
    iris_probe(&p);
    p.c.mask.len = 0;
    assert_int_equal(check(&p.t, &g), EC(MALFORMED));
    /* Too few valid bits to ever decide: 99 < iris_min_valid_bits 100. */
    iris_probe(&p);
    memset(p.mask, 0, sizeof p.mask);
    memset(p.mask, 0xff, 12);
    p.mask[12] = 0x07;
    assert_int_equal(check(&p.t, &g), EC(INVALID_VALUE));
    p.mask[12] = 0x0f; /* exactly 100 */
    assert_int_equal(check(&p.t, &g), EC(NONE));
    /* A dense probe against an iris gallery. */
    struct dense_probe d;
    dense_probe(&d, BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_F32);
    assert_int_equal(check(&d.t, &g), EC(GEOMETRY_MISMATCH));
    /* An iris-tagged template carrying a dense part. */
    d.t.modality = BIOMATCH__V1__MODALITY__MODALITY_IRIS;
    assert_int_equal(check(&d.t, &g), EC(MISSING_FIELD));
}

static void test_gallery_def(void **state)
{
    (void)state;
    Biomatch__V1__GalleryDefinition g;
    face_gallery(&g);
    g.name = (char *)"bad name";
    assert_int_equal(bm_wire_validate_gallery_def(&g, err, sizeof err), EC(INVALID_VALUE));
    face_gallery(&g);
    g.dim = 63;
    assert_int_equal(bm_wire_validate_gallery_def(&g, err, sizeof err), EC(INVALID_VALUE));
    face_gallery(&g);
    g.shards = 0;
    assert_int_equal(bm_wire_validate_gallery_def(&g, err, sizeof err), EC(INVALID_VALUE));
    face_gallery(&g);
    g.modality = BIOMATCH__V1__MODALITY__MODALITY_UNSPECIFIED;
    assert_int_equal(bm_wire_validate_gallery_def(&g, err, sizeof err), EC(MISSING_FIELD));
    iris_gallery(&g);
    Biomatch__V1__IrisGeometry huge = default_geo;
    huge.filters = 0xffffffffu, huge.rows = 0xffffffffu;
    g.iris_geometry = &huge;
    assert_int_equal(bm_wire_iris_bytes(&huge), 0);
    assert_int_equal(bm_wire_validate_gallery_def(&g, err, sizeof err), EC(INVALID_VALUE));
    iris_gallery(&g);
    g.iris_rotations = 256;
    assert_int_equal(bm_wire_validate_gallery_def(&g, err, sizeof err), EC(INVALID_VALUE));
    iris_gallery(&g);
    g.iris_geometry = NULL;
    assert_int_equal(bm_wire_validate_gallery_def(&g, err, sizeof err), EC(MISSING_FIELD));
}

static void test_f16(void **state)
{
    (void)state;
    assert_true(bm_wire_f16_to_f32(0x3c00) == 1.0f);
    assert_true(bm_wire_f16_to_f32(0xc000) == -2.0f);
    assert_true(bm_wire_f16_to_f32(0x7bff) == 65504.0f);
    assert_true(bm_wire_f16_to_f32(0x0001) == ldexpf(1.0f, -24));
    assert_true(bm_wire_f16_to_f32(0x0400) == ldexpf(1.0f, -14));
    assert_true(isinf(bm_wire_f16_to_f32(0x7c00)));
    assert_true(isnan(bm_wire_f16_to_f32(0x7e00)));
    assert_true(signbit(bm_wire_f16_to_f32(0x8000)));
    /* Every finite half survives f16 -> f32 -> f16 exactly. */
    for (uint32_t h = 0; h < 0x10000; h++) {
        uint16_t x = (uint16_t)h;
        if ((x & 0x7c00) == 0x7c00)
            continue;
        assert_int_equal(bm_wire_f32_to_f16(bm_wire_f16_to_f32(x)), x);
    }
    /* Rounding: ties to even, overflow to Inf, underflow to zero. */
    assert_int_equal(bm_wire_f32_to_f16(1.0f + ldexpf(1.0f, -11)), 0x3c00);
    assert_int_equal(bm_wire_f32_to_f16(1.0f + 3 * ldexpf(1.0f, -11)), 0x3c02);
    assert_int_equal(bm_wire_f32_to_f16(65520.0f), 0x7c00);
    assert_int_equal(bm_wire_f32_to_f16(65519.0f), 0x7bff);
    assert_int_equal(bm_wire_f32_to_f16(ldexpf(1.0f, -26)), 0x0000);
    assert_int_equal(bm_wire_f32_to_f16(ldexpf(1.5f, -25)), 0x0001);
    assert_int_equal(bm_wire_f32_to_f16(-INFINITY), 0xfc00);
    assert_true((bm_wire_f32_to_f16(NAN) & 0x7fff) > 0x7c00);
}

static void test_fnv_vectors(void **state)
{
    (void)state;
    /* The vectors of docs/wire.md; any client must reproduce them. */
    static const struct {
        const char *id;
        uint64_t hash;
        uint32_t s4, s16, s1024;
    } v[] = {
        {"", UINT64_C(0xcbf29ce484222325), 1, 5, 805},
        {"a", UINT64_C(0xaf63dc4c8601ec8c), 0, 12, 140},
        {"foobar", UINT64_C(0x85944171f73967e8), 0, 8, 1000},
        {"subject-0", UINT64_C(0x1c75613a8c596902), 2, 2, 258},
        {"subject-1", UINT64_C(0x1c75623a8c596ab5), 1, 5, 693},
        {"subject-42", UINT64_C(0xb4cf6e7c7be18ccc), 0, 12, 204},
        {"P-0001234", UINT64_C(0x7bda53215f8bfb36), 2, 6, 822},
        {"\xc3\x86r\xc3\xb8sk\xc3\xb8" "bing-7", UINT64_C(0x3e7e8c3e3b3faaaa), 2, 10, 682},
        {"\xe6\x9d\xb1\xe4\xba\xac-1", UINT64_C(0x2f8b1b2d4fb87655), 1, 5, 597},
    };
    for (size_t i = 0; i < sizeof v / sizeof *v; i++) {
        size_t n = strlen(v[i].id);
        assert_int_equal(bm_subject_key(v[i].id, n), v[i].hash);
        assert_int_equal(bm_shard_of(v[i].id, n, 4), v[i].s4);
        assert_int_equal(bm_shard_of(v[i].id, n, 16), v[i].s16);
        assert_int_equal(bm_shard_of(v[i].id, n, 1024), v[i].s1024);
        assert_int_equal(bm_shard_of(v[i].id, n, 1), 0);
    }
    assert_int_equal(bm_shard_of("a", 1, 0), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dense_valid_each_type),
        cmocka_unit_test(test_dense_nan_inf_zero),
        cmocka_unit_test(test_dense_shape_and_scale),
        cmocka_unit_test(test_iris),
        cmocka_unit_test(test_gallery_def),
        cmocka_unit_test(test_f16),
        cmocka_unit_test(test_fnv_vectors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
