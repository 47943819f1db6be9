/* Template specs and segments: immutable batches of templates in storage
 * layout (see docs/internals/match.md for the byte layout).
 *
 * Invariant: rows [0, count) are filled; rows are 64-byte aligned and
 * zero-padded to 'stride' (rows past count are uninitialised and never
 * read), and for int8 'scales' describe each row and i8_norm_max
 * bounds scale * |q|_2 over them.
 * Once handed to a gallery a segment is never written again; its lifetime
 * is the longest-lived gallery version holding it (refs). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "match/internal.h"

void bm_spec_default(struct bm_spec *spec, enum bm_modality modality)
{
    memset(spec, 0, sizeof *spec);
    spec->modality = modality;
    spec->dim = 512;
    spec->dtype = BM_DTYPE_INT8;
    spec->iris_filters = 2;
    spec->iris_rows = 16;
    spec->iris_columns = 256;
    spec->iris_bits_per_cell = 2;
    spec->iris_rotations = 15;
    spec->iris_scoring = BM_IRIS_FRACTIONAL;
    spec->iris_min_valid_bits = 1;
}

int bm_spec_validate(const struct bm_spec *s, char *err, size_t errlen)
{
    if (s == NULL)
        return bm_seterr(err, errlen, BM_EINVAL, "spec: missing");
    if (s->modality == BM_MODALITY_DENSE) {
        if (s->dim < 64 || s->dim > 4096)
            return bm_seterr(err, errlen, BM_EINVAL, "spec: dense dim %u outside 64..4096", s->dim);
        if (s->dtype != BM_DTYPE_F32 && s->dtype != BM_DTYPE_F16 && s->dtype != BM_DTYPE_INT8)
            return bm_seterr(err, errlen, BM_EINVAL, "spec: unknown dense dtype %d", (int)s->dtype);
        return BM_OK;
    }
    if (s->modality != BM_MODALITY_IRIS)
        return bm_seterr(err, errlen, BM_EINVAL, "spec: unknown modality %d", (int)s->modality);
    uint64_t f = s->iris_filters, r = s->iris_rows, c = s->iris_columns, b = s->iris_bits_per_cell;
    if (f == 0 || r == 0 || c == 0 || b == 0 || f > 64 || r > 1024 || c > 4096 || b > 16)
        return bm_seterr(err, errlen, BM_EINVAL,
                         "spec: iris geometry %ux%ux%ux%u out of range (1..64 x 1..1024 x 1..4096 x 1..16)",
                         s->iris_filters, s->iris_rows, s->iris_columns, s->iris_bits_per_cell);
    uint64_t bits = f * r * c * b;
    if (bits % 8 != 0)
        return bm_seterr(err, errlen, BM_EINVAL, "spec: iris code has %llu bits, not a whole number of bytes",
                         (unsigned long long)bits);
    if (bits > (1u << 20))
        return bm_seterr(err, errlen, BM_EINVAL, "spec: iris code of %llu bits is over 2^20",
                         (unsigned long long)bits);
    if (2ull * s->iris_rotations + 1 > c)
        return bm_seterr(err, errlen, BM_EINVAL, "spec: %u rotations need more than %u columns",
                         s->iris_rotations, s->iris_columns);
    if (s->iris_scoring != BM_IRIS_FRACTIONAL && s->iris_scoring != BM_IRIS_NORMALISED &&
        s->iris_scoring != BM_IRIS_OPENIRIS)
        return bm_seterr(err, errlen, BM_EINVAL, "spec: unknown iris scoring %d", (int)s->iris_scoring);
    if (s->iris_scoring == BM_IRIS_OPENIRIS && c % 2 != 0)
        return bm_seterr(err, errlen, BM_EINVAL, "spec: openiris scoring needs an even column count");
    if (s->iris_min_valid_bits > bits)
        return bm_seterr(err, errlen, BM_EINVAL, "spec: min valid bits %u over the %llu bits of a code",
                         s->iris_min_valid_bits, (unsigned long long)bits);
    return BM_OK;
}

size_t bm_spec_iris_bytes(const struct bm_spec *s)
{
    return (size_t)s->iris_filters * s->iris_rows * s->iris_columns * s->iris_bits_per_cell / 8;
}

size_t bm_spec_template_bytes(const struct bm_spec *s)
{
    if (s->modality == BM_MODALITY_DENSE)
        return (size_t)s->dim * bm_dtype_size(s->dtype);
    return 2 * bm_spec_iris_bytes(s);
}

int bm_spec_same(const struct bm_spec *a, const struct bm_spec *b)
{
    if (a->modality != b->modality)
        return 0;
    if (a->modality == BM_MODALITY_DENSE)
        return a->dim == b->dim && a->dtype == b->dtype;
    return a->iris_filters == b->iris_filters && a->iris_rows == b->iris_rows &&
           a->iris_columns == b->iris_columns && a->iris_bits_per_cell == b->iris_bits_per_cell;
}

int bm_probe_validate(const struct bm_spec *spec, const struct bm_probe *p, char *err,
                      size_t errlen)
{
    if (p == NULL)
        return bm_seterr(err, errlen, BM_EINVAL, "probe: missing");
    if (spec->modality == BM_MODALITY_DENSE) {
        if (p->dense == NULL)
            return bm_seterr(err, errlen, BM_EINVAL, "probe: no dense vector for a dense gallery");
        double ss = 0;
        for (uint32_t i = 0; i < spec->dim; i++) {
            if (!isfinite(p->dense[i]))
                return bm_seterr(err, errlen, BM_EINVAL, "probe: element %u is NaN or infinite", i);
            ss += (double)p->dense[i] * p->dense[i];
        }
        if (!(ss > 0) || !isfinite(ss))
            return bm_seterr(err, errlen, BM_EINVAL, "probe: zero (or unnormalisable) vector");
        return BM_OK;
    }
    if (p->iris_code == NULL || p->iris_mask == NULL)
        return bm_seterr(err, errlen, BM_EINVAL, "probe: iris code and mask are both required");
    return BM_OK;
}

struct bm_segment *bm_segment_new(const struct bm_spec *spec, uint64_t segment_id,
                                  size_t capacity, char *err, size_t errlen)
{
    if (bm_spec_validate(spec, err, errlen) != BM_OK)
        return NULL;
    if (capacity == 0 || capacity > ((size_t)1 << 32)) {
        bm_seterr(err, errlen, BM_EINVAL, "segment: capacity %zu outside 1..2^32", capacity);
        return NULL;
    }
    struct bm_segment *s = calloc(1, sizeof *s);
    if (s == NULL)
        goto oom;
    s->spec = *spec;
    s->id = segment_id;
    s->capacity = capacity;
    s->tbytes = bm_spec_template_bytes(spec);
    s->stride = (s->tbytes + 63) & ~(size_t)63;
    atomic_init(&s->refs, 0);
    /* Not zeroed: every add writes its whole row (template, then zero
     * padding), and rows past 'count' are never read, so a large segment
     * only becomes resident as it fills. capacity * stride is a nonzero
     * multiple of 64, as aligned_alloc wants. */
    s->rows = aligned_alloc(64, capacity * s->stride);
    s->ids = malloc(capacity * sizeof *s->ids);
    if (s->rows == NULL || s->ids == NULL)
        goto oom;
    if (spec->modality == BM_MODALITY_DENSE && spec->dtype == BM_DTYPE_INT8) {
        s->scales = malloc(capacity * sizeof *s->scales);
        if (s->scales == NULL)
            goto oom;
    }
    return s;
oom:
    bm_seterr(err, errlen, BM_ENOMEM, "segment: out of memory for %zu templates", capacity);
    bm_segment_free(s);
    return NULL;
}

static int room(struct bm_segment *s, uint64_t id, char *err, size_t errlen)
{
    if (s->count >= s->capacity)
        return bm_seterr(err, errlen, BM_ERANGE, "segment: full (%zu templates)", s->capacity);
    if (id == BM_NO_ID)
        return bm_seterr(err, errlen, BM_EINVAL, "segment: id %llu is reserved",
                         (unsigned long long)id);
    return BM_OK;
}

/* Zero the bytes between the template and the next row (the layout's
 * padding); the template bytes themselves are written by the caller. */
static void pad_row(struct bm_segment *s, uint8_t *row)
{
    if (s->stride > s->tbytes)
        memset(row + s->tbytes, 0, s->stride - s->tbytes);
}

/* The segment's bound on scale * |q|_2, which the int8 scan's threshold
 * margin uses (gallery.c, scan_thresholds); rounded up slightly. */
static void note_i8_row(struct bm_segment *s, const int8_t *q, float scale)
{
    float norm = (float)((double)scale * bm_dense_norm_i8(q, s->spec.dim) * (1.0 + 1e-6));
    if (norm > s->i8_norm_max)
        s->i8_norm_max = norm;
}

int bm_segment_add_dense(struct bm_segment *s, uint64_t id, const float *vec, char *err,
                         size_t errlen)
{
    if (s->spec.modality != BM_MODALITY_DENSE || vec == NULL)
        return bm_seterr(err, errlen, BM_EINVAL, "segment: not a dense segment or no vector");
    int rc = room(s, id, err, errlen);
    if (rc != BM_OK)
        return rc;
    float *unit = malloc(s->spec.dim * sizeof *unit);
    if (unit == NULL)
        return bm_seterr(err, errlen, BM_ENOMEM, "segment: out of memory");
    rc = bm_dense_normalise(vec, s->spec.dim, unit, err, errlen);
    if (rc == BM_OK) {
        float scale;
        uint8_t *row = s->rows + s->count * s->stride;
        bm_dense_encode(&s->spec, unit, row, &scale);
        pad_row(s, row);
        if (s->scales != NULL) {
            s->scales[s->count] = scale;
            note_i8_row(s, (const int8_t *)row, scale);
        }
        s->ids[s->count++] = id;
    }
    free(unit);
    return rc;
}

int bm_segment_add_iris(struct bm_segment *s, uint64_t id, const uint8_t *code,
                        const uint8_t *mask, char *err, size_t errlen)
{
    if (s->spec.modality != BM_MODALITY_IRIS || code == NULL || mask == NULL)
        return bm_seterr(err, errlen, BM_EINVAL, "segment: not an iris segment or no code/mask");
    int rc = room(s, id, err, errlen);
    if (rc != BM_OK)
        return rc;
    size_t nb = bm_spec_iris_bytes(&s->spec);
    uint8_t *row = s->rows + s->count * s->stride;
    memcpy(row, code, nb);
    memcpy(row + nb, mask, nb);
    pad_row(s, row);
    s->ids[s->count++] = id;
    return BM_OK;
}

int bm_segment_add_packed(struct bm_segment *s, uint64_t id, const void *packed, float scale,
                          char *err, size_t errlen)
{
    if (packed == NULL)
        return bm_seterr(err, errlen, BM_EINVAL, "segment: no template bytes");
    int rc = room(s, id, err, errlen);
    if (rc != BM_OK)
        return rc;
    if (s->scales != NULL && !(isfinite(scale) && scale > 0))
        return bm_seterr(err, errlen, BM_EINVAL, "segment: int8 scale must be finite and > 0");
    if (s->spec.modality == BM_MODALITY_DENSE && s->spec.dtype != BM_DTYPE_INT8) {
        /* Stored floats must still be finite: a NaN row would poison ranks. */
        for (uint32_t i = 0; i < s->spec.dim; i++) {
            float v;
            if (s->spec.dtype == BM_DTYPE_F32)
                memcpy(&v, (const uint8_t *)packed + 4 * (size_t)i, 4);
            else {
                uint16_t h;
                memcpy(&h, (const uint8_t *)packed + 2 * (size_t)i, 2);
                v = bm_f16_to_f32(h);
            }
            if (!isfinite(v))
                return bm_seterr(err, errlen, BM_EINVAL, "segment: element %u is NaN or infinite", i);
        }
    }
    uint8_t *row = s->rows + s->count * s->stride;
    memcpy(row, packed, s->tbytes);
    pad_row(s, row);
    if (s->scales != NULL) {
        s->scales[s->count] = scale;
        note_i8_row(s, (const int8_t *)row, scale);
    }
    s->ids[s->count++] = id;
    return BM_OK;
}

size_t bm_segment_count(const struct bm_segment *s) { return s->count; }
uint64_t bm_segment_id(const struct bm_segment *s) { return s->id; }
uint64_t bm_segment_row_id(const struct bm_segment *s, size_t row) { return s->ids[row]; }

const void *bm_segment_row(const struct bm_segment *s, size_t row)
{
    return s->rows + row * s->stride;
}

float bm_segment_row_scale(const struct bm_segment *s, size_t row)
{
    return s->scales != NULL ? s->scales[row] : 1.0f;
}

size_t bm_segment_memory(const struct bm_segment *s)
{
    size_t m = sizeof *s + s->capacity * (s->stride + sizeof *s->ids);
    if (s->scales != NULL)
        m += s->capacity * sizeof *s->scales;
    return m;
}

void bm_segment_free(struct bm_segment *s)
{
    if (s == NULL)
        return;
    free(s->rows);
    free(s->ids);
    free(s->scales);
    free(s);
}

void bm_segment_ref(struct bm_segment *s)
{
    atomic_fetch_add(&s->refs, 1);
}

void bm_segment_unref(struct bm_segment *s)
{
    if (s != NULL && atomic_fetch_sub(&s->refs, 1) == 1)
        bm_segment_free(s);
}
