/* Template and gallery-definition validation, f16 conversion (template.h).
 *
 * Invariant: every byte read from a template is inside a length that was
 * checked against dim/geometry first, and multi-byte elements are assembled
 * from little-endian bytes explicitly, so the result does not depend on the
 * host's byte order or on the alignment of the protobuf buffers. */
#include "wire/template.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define EC(x) BIOMATCH__V1__ERROR_CODE__ERROR_CODE_##x

static Biomatch__V1__ErrorCode fail(char *err, size_t errlen, Biomatch__V1__ErrorCode code,
                                    const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* Write the reason into err and return the wire ErrorCode, so each check
 * reads "return fail(...)". */
static Biomatch__V1__ErrorCode fail(char *err, size_t errlen, Biomatch__V1__ErrorCode code,
                                    const char *fmt, ...)
{
    if (err != NULL && errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}

size_t bm_wire_element_size(Biomatch__V1__ElementType t)
{
    switch (t) {
    case BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_F32:
        return 4;
    case BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_F16:
        return 2;
    case BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_INT8:
        return 1;
    default:
        return 0;
    }
}

uint64_t bm_wire_iris_bits(const Biomatch__V1__IrisGeometry *g)
{
    if (g == NULL || g->filters == 0 || g->rows == 0 || g->columns == 0 ||
        g->bits_per_cell == 0)
        return 0;
    /* Each factor < 2^32; saturate instead of wrapping once over 2^40. */
    uint64_t n = (uint64_t)g->filters * g->rows;
    if (n > (UINT64_C(1) << 40))
        return UINT64_MAX;
    n *= g->columns;
    if (n > (UINT64_C(1) << 40))
        return UINT64_MAX;
    n *= g->bits_per_cell;
    return n;
}

size_t bm_wire_iris_bytes(const Biomatch__V1__IrisGeometry *g)
{
    uint64_t bits = bm_wire_iris_bits(g);
    if (bits == UINT64_MAX || bits > BM_WIRE_MAX_IRIS_BITS)
        return 0;
    return (size_t)((bits + 7) / 8);
}

static int is_dense_modality(Biomatch__V1__Modality m)
{
    return m == BIOMATCH__V1__MODALITY__MODALITY_FACE ||
           m == BIOMATCH__V1__MODALITY__MODALITY_FINGERPRINT ||
           m == BIOMATCH__V1__MODALITY__MODALITY_PALM;
}

static int valid_gallery_name(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > 64)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

Biomatch__V1__ErrorCode bm_wire_validate_gallery_def(const Biomatch__V1__GalleryDefinition *g,
                                                     char *err, size_t errlen)
{
    if (g == NULL)
        return fail(err, errlen, EC(UNKNOWN_GALLERY), "no gallery definition");
    if (!valid_gallery_name(g->name))
        return fail(err, errlen, EC(INVALID_VALUE),
                    "gallery name must be 1..64 of [A-Za-z0-9_-]");
    if (g->shards < 1 || g->shards > BM_WIRE_MAX_SHARDS)
        return fail(err, errlen, EC(INVALID_VALUE), "gallery shards %u not in 1..%d",
                    (unsigned)g->shards, BM_WIRE_MAX_SHARDS);
    if (g->replicas < 1 || g->replicas > BM_WIRE_MAX_REPLICAS)
        return fail(err, errlen, EC(INVALID_VALUE), "gallery replicas %u not in 1..%d",
                    (unsigned)g->replicas, BM_WIRE_MAX_REPLICAS);
    if (is_dense_modality(g->modality)) {
        if (g->dim < BM_WIRE_MIN_DIM || g->dim > BM_WIRE_MAX_DIM)
            return fail(err, errlen, EC(INVALID_VALUE), "gallery dim %u not in %d..%d",
                        (unsigned)g->dim, BM_WIRE_MIN_DIM, BM_WIRE_MAX_DIM);
        if (bm_wire_element_size(g->element_type) == 0)
            return fail(err, errlen, EC(UNSUPPORTED), "gallery element type %lu unknown", (unsigned long)g->element_type);
        return EC(NONE);
    }
    if (g->modality != BIOMATCH__V1__MODALITY__MODALITY_IRIS)
        return fail(err, errlen, g->modality == 0 ? EC(MISSING_FIELD) : EC(UNSUPPORTED),
                    "gallery modality %lu unknown", (unsigned long)g->modality);
    uint64_t bits = bm_wire_iris_bits(g->iris_geometry);
    if (bits == 0)
        return fail(err, errlen, EC(MISSING_FIELD),
                    "iris gallery needs a geometry with every factor >= 1");
    if (bits > BM_WIRE_MAX_IRIS_BITS)
        return fail(err, errlen, EC(INVALID_VALUE), "iris geometry over %lu bits", (unsigned long)BM_WIRE_MAX_IRIS_BITS);
    if (g->iris_rotations >= g->iris_geometry->columns)
        return fail(err, errlen, EC(INVALID_VALUE), "iris rotations %u >= columns %u",
                    (unsigned)g->iris_rotations, (unsigned)g->iris_geometry->columns);
    if ((unsigned)g->iris_scoring > BIOMATCH__V1__IRIS_SCORING__IRIS_SCORING_OPENIRIS)
        return fail(err, errlen, EC(UNSUPPORTED), "iris scoring %lu unknown", (unsigned long)g->iris_scoring);
    if (g->iris_min_valid_bits > bits)
        return fail(err, errlen, EC(INVALID_VALUE), "iris min valid bits %u > %lu bits",
                    (unsigned)g->iris_min_valid_bits, (unsigned long)bits);
    return EC(NONE);
}

float bm_wire_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    uint32_t bits;
    float f;
    if (exp == 0) {
        /* Zero or subnormal: mant * 2^-24 is exact in binary32. */
        f = (float)mant * (1.0f / 16777216.0f);
        return sign ? -f : f;
    }
    if (exp == 31)
        bits = sign | 0x7f800000u | (mant << 13);
    else
        bits = sign | ((exp + 112u) << 23) | (mant << 13);
    memcpy(&f, &bits, sizeof f);
    return f;
}

uint16_t bm_wire_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) /* NaN: keep it quiet and non-zero */
        return (uint16_t)(sign | 0x7e00u | ((ax >> 13) & 0x1ffu));
    if (ax >= 0x47800000u) /* >= 65536 (or Inf): overflows */
        return (uint16_t)(sign | 0x7c00u);
    if (ax < 0x38800000u) { /* below 2^-14: subnormal half or zero */
        if (ax < 0x33000000u) /* <= 2^-25 rounds to zero */
            return sign;
        uint32_t e = ax >> 23;
        uint32_t m24 = (ax & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126u - e; /* 14..24 */
        uint32_t m = m24 >> shift;
        uint32_t rem = m24 & ((1u << shift) - 1u), half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (m & 1u)))
            m++;
        return (uint16_t)(sign | m);
    }
    uint32_t h = (ax - 0x38000000u) >> 13;
    uint32_t rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u)))
        h++; /* may carry into the exponent, up to Inf: that is correct */
    return (uint16_t)(sign | h);
}

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

/* Element i of a dense embedding whose length was checked. */
static float dense_at(const Biomatch__V1__DenseEmbedding *d, size_t i)
{
    const uint8_t *p = d->data.data;
    switch (d->element_type) {
    case BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_F32: {
        uint32_t b = le32(p + 4 * i);
        float f;
        memcpy(&f, &b, sizeof f);
        return f;
    }
    case BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_F16:
        return bm_wire_f16_to_f32((uint16_t)(p[2 * i] | (p[2 * i + 1] << 8)));
    default:
        return (float)(int8_t)p[i] * d->scale;
    }
}

static Biomatch__V1__ErrorCode validate_dense(const Biomatch__V1__DenseEmbedding *d,
                                              const Biomatch__V1__GalleryDefinition *g,
                                              char *err, size_t errlen)
{
    if (d->dim != g->dim)
        return fail(err, errlen, EC(GEOMETRY_MISMATCH), "dense dim %u, gallery has %u",
                    (unsigned)d->dim, (unsigned)g->dim);
    size_t es = bm_wire_element_size(d->element_type);
    if (es == 0)
        return fail(err, errlen, EC(UNSUPPORTED), "element type %lu unknown", (unsigned long)d->element_type);
    if (d->data.len != (size_t)d->dim * es)
        return fail(err, errlen, EC(MALFORMED), "dense data has %lu bytes, dim needs %lu",
                    (unsigned long)d->data.len, (unsigned long)((size_t)d->dim * es));
    if (d->element_type == BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_INT8 &&
        !(isfinite(d->scale) && d->scale > 0.0f))
        return fail(err, errlen, EC(INVALID_VALUE),
                    "int8 scale must be finite and > 0");
    double ss = 0.0;
    for (size_t i = 0; i < d->dim; i++) {
        float v = dense_at(d, i);
        if (isnan(v))
            return fail(err, errlen, EC(INVALID_VALUE), "element %lu is NaN", (unsigned long)i);
        if (isinf(v))
            return fail(err, errlen, EC(INVALID_VALUE), "element %lu is infinite", (unsigned long)i);
        ss += (double)v * (double)v;
    }
    if (ss == 0.0)
        return fail(err, errlen, EC(INVALID_VALUE), "zero vector");
    /* Norm bounds compared squared: no sqrt, no rounding surprises. */
    if (ss < BM_WIRE_MIN_NORM * BM_WIRE_MIN_NORM || ss > BM_WIRE_MAX_NORM * BM_WIRE_MAX_NORM)
        return fail(err, errlen, EC(INVALID_VALUE),
                    "vector norm outside [1e-18, 1e18]");
    return EC(NONE);
}

static unsigned popcount8(uint8_t b)
{
    unsigned n = 0;
    for (; b; b &= (uint8_t)(b - 1))
        n++;
    return n;
}

static int same_geometry(const Biomatch__V1__IrisGeometry *a, const Biomatch__V1__IrisGeometry *b)
{
    return a->filters == b->filters && a->rows == b->rows && a->columns == b->columns &&
           a->bits_per_cell == b->bits_per_cell;
}

static Biomatch__V1__ErrorCode validate_iris(const Biomatch__V1__IrisCode *c,
                                             const Biomatch__V1__GalleryDefinition *g,
                                             char *err, size_t errlen)
{
    if (c->geometry == NULL)
        return fail(err, errlen, EC(MISSING_FIELD), "iris code without geometry");
    if (g->iris_geometry == NULL || !same_geometry(c->geometry, g->iris_geometry))
        return fail(err, errlen, EC(GEOMETRY_MISMATCH),
                    "iris geometry differs from the gallery's");
    size_t nb = bm_wire_iris_bytes(g->iris_geometry);
    if (nb == 0)
        return fail(err, errlen, EC(INTERNAL), "gallery iris geometry invalid");
    if (c->code.len != nb || c->mask.len != nb)
        return fail(err, errlen, EC(MALFORMED), "iris code/mask lengths %lu/%lu bytes",
                    (unsigned long)c->code.len, (unsigned long)c->mask.len);
    uint64_t valid = 0;
    for (size_t i = 0; i < nb; i++)
        valid += popcount8(c->mask.data[i]);
    uint64_t need = g->iris_min_valid_bits ? g->iris_min_valid_bits : 1;
    if (valid < need)
        return fail(err, errlen, EC(INVALID_VALUE), "iris mask has %lu valid bits, need %lu",
                    (unsigned long)valid, (unsigned long)need);
    return EC(NONE);
}

Biomatch__V1__ErrorCode bm_wire_validate_template(const Biomatch__V1__Template *t,
                                                  const Biomatch__V1__GalleryDefinition *g,
                                                  char *err, size_t errlen)
{
    if (g == NULL)
        return fail(err, errlen, EC(UNKNOWN_GALLERY), "no gallery definition");
    if (t == NULL)
        return fail(err, errlen, EC(MISSING_FIELD), "template missing");
    if (t->modality == BIOMATCH__V1__MODALITY__MODALITY_UNSPECIFIED)
        return fail(err, errlen, EC(MISSING_FIELD), "template modality unspecified");
    if (t->modality != g->modality)
        return fail(err, errlen, EC(GEOMETRY_MISMATCH), "template modality %lu, gallery has %lu",
                    (unsigned long)t->modality, (unsigned long)g->modality);
    if (is_dense_modality(t->modality)) {
        if (t->kind_case != BIOMATCH__V1__TEMPLATE__KIND_DENSE || t->dense == NULL)
            return fail(err, errlen, EC(MISSING_FIELD),
                        "dense modality needs a dense embedding");
        return validate_dense(t->dense, g, err, errlen);
    }
    if (t->modality == BIOMATCH__V1__MODALITY__MODALITY_IRIS) {
        if (t->kind_case != BIOMATCH__V1__TEMPLATE__KIND_IRIS || t->iris == NULL)
            return fail(err, errlen, EC(MISSING_FIELD), "iris modality needs an iris code");
        return validate_iris(t->iris, g, err, errlen);
    }
    return fail(err, errlen, EC(UNSUPPORTED), "modality %lu unknown", (unsigned long)t->modality);
}

int bm_wire_dense_to_f32(const Biomatch__V1__DenseEmbedding *d, float *out, size_t n,
                         char *err, size_t errlen)
{
    size_t es = bm_wire_element_size(d->element_type);
    if (n != d->dim || es == 0 || d->data.len != (size_t)d->dim * es)
        return bm_seterr(err, errlen, BM_EINVAL,
                         "dense embedding shape does not match %zu floats", n);
    for (size_t i = 0; i < n; i++)
        out[i] = dense_at(d, i);
    return BM_OK;
}
