/* Segment blob encoder and decoder (format in segment.h, docs/storage.md).
 *
 * The decoder is written for hostile input: it reads the header into
 * integers, checks each section with overflow-checked arithmetic against the
 * blob size, verifies the SHA-256 before parsing ids or scales, and only
 * then copies rows into a matcher segment. The digest covers every byte of
 * the blob except the digest field itself (header bytes 0..159 and the
 * payload from byte 192 on), so a flipped header bit is caught as surely as
 * a flipped template bit. */
#include "store/segment.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "store/subjects.h"

/* Header field offsets (all little-endian). */
enum {
    H_MAGIC = 0,          /* 8 bytes */
    H_VERSION = 8,        /* u32 */
    H_HEADER_LEN = 12,    /* u32, 192 in v1 */
    H_MODALITY = 16,      /* u32: 1 dense, 2 iris (enum bm_modality) */
    H_DTYPE = 20,         /* u32: enum bm_dtype, 0 for iris */
    H_DIM = 24,           /* u32, 0 for iris */
    H_IRIS_FILTERS = 28,  /* u32 each, 0 for dense */
    H_IRIS_ROWS = 32,
    H_IRIS_COLUMNS = 36,
    H_IRIS_BITS = 40,
    H_COUNT = 44,         /* u32 */
    H_STRIDE = 48,        /* u32 */
    H_FLAGS = 52,         /* u32 */
    H_SEGMENT_ID = 56,    /* u64 */
    H_TPL_OFF = 64,       /* u64 offset, u64 length per section */
    H_TPL_LEN = 72,
    H_SCALES_OFF = 80,
    H_SCALES_LEN = 88,
    H_IDS_OFF = 96,
    H_IDS_LEN = 104,
    H_GCM_NONCE = 112,    /* 12 bytes, zero unless encrypted */
    H_RESERVED0 = 124,    /* u32, zero */
    H_GCM_TAG = 128,      /* 16 bytes, zero unless encrypted */
    H_RESERVED1 = 144,    /* 16 bytes, zero */
    H_SHA256 = 160,       /* 32 bytes */
};

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
}

static uint64_t get64(const uint8_t *p)
{
    return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

static float getf32(const uint8_t *p)
{
    uint32_t u = get32(p);
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static void putf32(uint8_t *p, float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    put32(p, u);
}

/* a + b and a * b into *r; 0 on overflow. */
static int add_ok(uint64_t a, uint64_t b, uint64_t *r)
{
    if (a > UINT64_MAX - b)
        return 0;
    *r = a + b;
    return 1;
}

static int mul_ok(uint64_t a, uint64_t b, uint64_t *r)
{
    if (a != 0 && b > UINT64_MAX / a)
        return 0;
    *r = a * b;
    return 1;
}

static int digest(const uint8_t *blob, size_t len, uint8_t out[32])
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned int n = 0;
    int ok = ctx != NULL && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1 &&
             EVP_DigestUpdate(ctx, blob, H_SHA256) == 1 &&
             EVP_DigestUpdate(ctx, blob + BM_SEGBLOB_HEADER_BYTES,
                              len - BM_SEGBLOB_HEADER_BYTES) == 1 &&
             EVP_DigestFinal_ex(ctx, out, &n) == 1 && n == 32;
    EVP_MD_CTX_free(ctx);
    return ok;
}

size_t bm_segblob_stride(const struct bm_spec *spec)
{
    size_t tb = bm_spec_template_bytes(spec);
    return (tb + BM_SEGBLOB_ALIGN - 1) / BM_SEGBLOB_ALIGN * BM_SEGBLOB_ALIGN;
}

static int is_int8(const struct bm_spec *spec)
{
    return spec->modality == BM_MODALITY_DENSE && spec->dtype == BM_DTYPE_INT8;
}

/* BM_OK when the 'n' keys are distinct. A throw-away linear-probing set:
 * O(n), a few hundred KiB for a 16 MiB segment, several times faster than
 * sorting on the shard-load path. */
static int check_unique(const uint64_t *keys, size_t n, int rc_dup, char *err,
                        size_t errlen)
{
    if (n < 2)
        return BM_OK;
    unsigned bits = 4;
    while (((size_t)1 << bits) < 2 * n)
        bits++;
    size_t cap = (size_t)1 << bits;
    uint64_t *set = malloc(cap * sizeof *set);
    uint8_t *used = calloc(cap, 1);
    if (set == NULL || used == NULL) {
        free(set);
        free(used);
        return bm_seterr(err, errlen, BM_ENOMEM, "segment: out of memory");
    }
    int rc = BM_OK;
    for (size_t i = 0; i < n && rc == BM_OK; i++) {
        size_t j = (size_t)((keys[i] * UINT64_C(0x9E3779B97F4A7C15)) >> (64 - bits));
        while (used[j] && set[j] != keys[i])
            j = (j + 1) & (cap - 1);
        if (used[j])
            rc = bm_seterr(err, errlen, rc_dup, "segment: two rows have subject key %016llx",
                           (unsigned long long)keys[i]);
        used[j] = 1;
        set[j] = keys[i];
    }
    free(set);
    free(used);
    return rc;
}

/* ------------------------------------------------------------ encoding */

/* 1 when every element of a dense float row is finite: the matcher refuses
 * NaN/Inf rows on load, so the encoder must never store one. */
static int row_finite(const struct bm_spec *spec, const uint8_t *row)
{
    if (spec->modality != BM_MODALITY_DENSE || spec->dtype == BM_DTYPE_INT8)
        return 1;
    for (uint32_t i = 0; i < spec->dim; i++) {
        if (spec->dtype == BM_DTYPE_F32) {
            float v;
            memcpy(&v, row + 4 * (size_t)i, 4);
            if (!isfinite(v))
                return 0;
        } else {
            uint16_t h = (uint16_t)(row[2 * (size_t)i] | row[2 * (size_t)i + 1] << 8);
            if (((h >> 10) & 0x1f) == 0x1f)
                return 0;
        }
    }
    return 1;
}

/* Row access shared by the two encoders. */
struct rows {
    const uint8_t *packed;            /* contiguous rows, or NULL */
    const float *scales;
    const struct bm_segment *seg;     /* or rows from a segment */
};

static const void *row_at(const struct rows *r, size_t i, size_t tb)
{
    return r->seg != NULL ? bm_segment_row(r->seg, i) : r->packed + i * tb;
}

static float scale_at(const struct rows *r, size_t i)
{
    return r->seg != NULL ? bm_segment_row_scale(r->seg, i) : r->scales[i];
}

static int encode(const struct bm_spec *spec, uint64_t segment_id, size_t count,
                  const char *const *ids, const size_t *lens, const struct rows *r,
                  uint8_t **out, size_t *outlen, uint8_t sha256[32], char *err,
                  size_t errlen)
{
    *out = NULL;
    *outlen = 0;
    int rc = bm_spec_validate(spec, err, errlen);
    if (rc != BM_OK)
        return rc;
    if (count > BM_SEGBLOB_MAX_COUNT)
        return bm_seterr(err, errlen, BM_ERANGE, "segment: %zu templates (max %u)",
                         count, BM_SEGBLOB_MAX_COUNT);
    if (count > 0 && (ids == NULL || lens == NULL))
        return bm_seterr(err, errlen, BM_EINVAL, "segment: subject ids missing");
    size_t tb = bm_spec_template_bytes(spec);
    size_t stride = bm_segblob_stride(spec);
    int int8 = is_int8(spec);

    uint64_t idbytes = 0;
    uint64_t *keys = malloc((count ? count : 1) * sizeof *keys);
    if (keys == NULL)
        return bm_seterr(err, errlen, BM_ENOMEM, "segment: out of memory");
    for (size_t i = 0; i < count; i++) {
        if (ids[i] == NULL || lens[i] == 0 || lens[i] > BM_SUBJECT_ID_MAX) {
            free(keys);
            return bm_seterr(err, errlen, BM_EINVAL,
                             "segment: subject id of row %zu must be 1..%d bytes", i,
                             BM_SUBJECT_ID_MAX);
        }
        keys[i] = bm_subjects_key(ids[i], lens[i]);
        if (r->seg != NULL && bm_segment_row_id(r->seg, i) != keys[i]) {
            free(keys);
            return bm_seterr(err, errlen, BM_EINVAL,
                             "segment: row %zu id is not the key of its subject id", i);
        }
        if (!row_finite(spec, row_at(r, i, tb))) {
            free(keys);
            return bm_seterr(err, errlen, BM_EINVAL,
                             "segment: row %zu has a NaN or infinite element", i);
        }
        if (int8) {
            float s = scale_at(r, i);
            if (!isfinite(s) || !(s > 0.0f)) {
                free(keys);
                return bm_seterr(err, errlen, BM_EINVAL,
                                 "segment: row %zu int8 scale must be finite and > 0", i);
            }
        }
        idbytes += 2 + lens[i];
    }
    rc = check_unique(keys, count, BM_ECONFLICT, err, errlen);
    free(keys);
    if (rc != BM_OK) {
        if (rc == BM_ECONFLICT)
            return bm_seterr(err, errlen, BM_ECONFLICT,
                             "segment: duplicate subject or subject key collision");
        return rc;
    }

    /* Layout: header | templates | scales | ids. count <= 2^24 and stride
     * <= a few KiB keep every size below far under 2^63. */
    uint64_t tpl_off = BM_SEGBLOB_HEADER_BYTES;
    uint64_t tpl_len = (uint64_t)count * stride;
    uint64_t sc_off = tpl_off + tpl_len;
    uint64_t sc_len = int8 ? (uint64_t)count * 4 : 0;
    uint64_t id_off = sc_off + sc_len;
    uint64_t total = id_off + idbytes;
    if (total > BM_SEGBLOB_MAX_BYTES)
        return bm_seterr(err, errlen, BM_ERANGE, "segment: blob of %llu bytes over %zu",
                         (unsigned long long)total, BM_SEGBLOB_MAX_BYTES);

    uint8_t *b = calloc(1, (size_t)total);
    if (b == NULL)
        return bm_seterr(err, errlen, BM_ENOMEM, "segment: out of memory");
    memcpy(b + H_MAGIC, BM_SEGBLOB_MAGIC, 8);
    put32(b + H_VERSION, BM_SEGBLOB_VERSION);
    put32(b + H_HEADER_LEN, BM_SEGBLOB_HEADER_BYTES);
    put32(b + H_MODALITY, (uint32_t)spec->modality);
    if (spec->modality == BM_MODALITY_DENSE) {
        put32(b + H_DTYPE, (uint32_t)spec->dtype);
        put32(b + H_DIM, spec->dim);
    } else {
        put32(b + H_IRIS_FILTERS, spec->iris_filters);
        put32(b + H_IRIS_ROWS, spec->iris_rows);
        put32(b + H_IRIS_COLUMNS, spec->iris_columns);
        put32(b + H_IRIS_BITS, spec->iris_bits_per_cell);
    }
    put32(b + H_COUNT, (uint32_t)count);
    put32(b + H_STRIDE, (uint32_t)stride);
    put32(b + H_FLAGS, 0);
    put64(b + H_SEGMENT_ID, segment_id);
    put64(b + H_TPL_OFF, tpl_off);
    put64(b + H_TPL_LEN, tpl_len);
    put64(b + H_SCALES_OFF, sc_off);
    put64(b + H_SCALES_LEN, sc_len);
    put64(b + H_IDS_OFF, id_off);
    put64(b + H_IDS_LEN, idbytes);

    for (size_t i = 0; i < count; i++) {
        memcpy(b + tpl_off + i * stride, row_at(r, i, tb), tb);
        if (int8)
            putf32(b + sc_off + 4 * i, scale_at(r, i));
    }
    uint8_t *p = b + id_off;
    for (size_t i = 0; i < count; i++) {
        p[0] = (uint8_t)(lens[i] & 0xff);
        p[1] = (uint8_t)(lens[i] >> 8);
        memcpy(p + 2, ids[i], lens[i]);
        p += 2 + lens[i];
    }
    if (!digest(b, (size_t)total, b + H_SHA256)) {
        free(b);
        return bm_seterr(err, errlen, BM_ENOMEM, "segment: SHA-256 failed");
    }
    if (sha256 != NULL)
        memcpy(sha256, b + H_SHA256, 32);
    *out = b;
    *outlen = (size_t)total;
    return BM_OK;
}

int bm_segblob_encode(const struct bm_spec *spec, uint64_t segment_id, size_t count,
                      const char *const *subject_ids, const size_t *subject_lens,
                      const void *packed_templates, const float *scales,
                      uint8_t **out, size_t *outlen, uint8_t sha256[32],
                      char *err, size_t errlen)
{
    *out = NULL;
    *outlen = 0;
    if (spec == NULL || (count > 0 && packed_templates == NULL))
        return bm_seterr(err, errlen, BM_EINVAL, "segment: spec or templates missing");
    if (count > 0 && is_int8(spec) && scales == NULL)
        return bm_seterr(err, errlen, BM_EINVAL, "segment: int8 needs scales");
    struct rows r = { packed_templates, scales, NULL };
    return encode(spec, segment_id, count, subject_ids, subject_lens, &r, out, outlen,
                  sha256, err, errlen);
}

int bm_segblob_encode_segment(const struct bm_spec *spec, const struct bm_segment *seg,
                              const char *const *subject_ids, const size_t *subject_lens,
                              uint8_t **out, size_t *outlen, uint8_t sha256[32],
                              char *err, size_t errlen)
{
    *out = NULL;
    *outlen = 0;
    if (spec == NULL || seg == NULL)
        return bm_seterr(err, errlen, BM_EINVAL, "segment: spec or segment missing");
    struct rows r = { NULL, NULL, seg };
    return encode(spec, bm_segment_id(seg), bm_segment_count(seg), subject_ids,
                  subject_lens, &r, out, outlen, sha256, err, errlen);
}

/* ------------------------------------------------------------ decoding */

/* The sections after bm_segblob_peek()'s checks. */
struct layout {
    uint64_t off[3], len[3];   /* templates, scales, ids */
};

static const char *const section_name[3] = { "templates", "scales", "ids" };

static int check_header(const uint8_t *b, size_t len, struct bm_segblob_info *info,
                        struct layout *lay, char *err, size_t errlen)
{
    if (b == NULL)
        return bm_seterr(err, errlen, BM_EINVAL, "segment: no blob");
    if (len > BM_SEGBLOB_MAX_BYTES)
        return bm_seterr(err, errlen, BM_ERANGE, "segment: blob of %zu bytes over %zu",
                         len, BM_SEGBLOB_MAX_BYTES);
    if (len < BM_SEGBLOB_HEADER_BYTES)
        return bm_seterr(err, errlen, BM_EPROTO,
                         "segment: truncated (%zu bytes, header needs %u)", len,
                         BM_SEGBLOB_HEADER_BYTES);
    if (memcmp(b + H_MAGIC, BM_SEGBLOB_MAGIC, 8) != 0)
        return bm_seterr(err, errlen, BM_EPROTO, "segment: bad magic (not a segment blob)");
    memset(info, 0, sizeof *info);
    info->version = get32(b + H_VERSION);
    if (info->version != BM_SEGBLOB_VERSION)
        return bm_seterr(err, errlen, info->version > BM_SEGBLOB_VERSION ? BM_EUNSUPPORTED
                                                                          : BM_EPROTO,
                         "segment: format version %u (this build reads %u)",
                         info->version, BM_SEGBLOB_VERSION);
    if (get32(b + H_HEADER_LEN) != BM_SEGBLOB_HEADER_BYTES)
        return bm_seterr(err, errlen, BM_EPROTO, "segment: header length %u (want %u)",
                         get32(b + H_HEADER_LEN), BM_SEGBLOB_HEADER_BYTES);
    info->flags = get32(b + H_FLAGS);
    if (info->flags & BM_SEGBLOB_FLAG_ENCRYPTED)
        return bm_seterr(err, errlen, BM_EUNSUPPORTED,
                         "segment: encrypted blob, at-rest decryption is not built");
    if (info->flags != 0)
        return bm_seterr(err, errlen, BM_EPROTO, "segment: unknown flags 0x%x",
                         info->flags);
    for (size_t i = H_GCM_NONCE; i < H_SHA256; i++)
        if (b[i] != 0)
            return bm_seterr(err, errlen, BM_EPROTO,
                             "segment: reserved header byte %zu is not zero", i);

    uint32_t modality = get32(b + H_MODALITY);
    if (modality != BM_MODALITY_DENSE && modality != BM_MODALITY_IRIS)
        return bm_seterr(err, errlen, BM_EPROTO, "segment: unknown modality %u", modality);
    bm_spec_default(&info->spec, (enum bm_modality)modality);
    uint32_t dtype = get32(b + H_DTYPE), dim = get32(b + H_DIM);
    uint32_t f = get32(b + H_IRIS_FILTERS), r = get32(b + H_IRIS_ROWS);
    uint32_t c = get32(b + H_IRIS_COLUMNS), bits = get32(b + H_IRIS_BITS);
    if (modality == BM_MODALITY_DENSE) {
        if (dtype != BM_DTYPE_F32 && dtype != BM_DTYPE_F16 && dtype != BM_DTYPE_INT8)
            return bm_seterr(err, errlen, BM_EPROTO, "segment: unknown dtype %u", dtype);
        if (f != 0 || r != 0 || c != 0 || bits != 0)
            return bm_seterr(err, errlen, BM_EPROTO,
                             "segment: dense blob with iris geometry");
        info->spec.dtype = (enum bm_dtype)dtype;
        info->spec.dim = dim;
    } else {
        if (dtype != 0 || dim != 0)
            return bm_seterr(err, errlen, BM_EPROTO, "segment: iris blob with dense fields");
        info->spec.iris_filters = f;
        info->spec.iris_rows = r;
        info->spec.iris_columns = c;
        info->spec.iris_bits_per_cell = bits;
        /* Rotations are a scoring setting, not storage: pick the default
         * when the columns allow it, so validation judges only geometry. */
        info->spec.iris_rotations = c >= 31 ? 15 : (c > 0 ? (c - 1) / 2 : 0);
    }
    char why[128];
    if (bm_spec_validate(&info->spec, why, sizeof why) != BM_OK)
        return bm_seterr(err, errlen, BM_EPROTO, "segment: bad geometry: %s", why);

    info->count = get32(b + H_COUNT);
    info->stride = get32(b + H_STRIDE);
    info->segment_id = get64(b + H_SEGMENT_ID);
    memcpy(info->sha256, b + H_SHA256, 32);
    if (info->count > BM_SEGBLOB_MAX_COUNT)
        return bm_seterr(err, errlen, BM_ERANGE, "segment: count %u over %u", info->count,
                         BM_SEGBLOB_MAX_COUNT);
    if (info->stride != bm_segblob_stride(&info->spec))
        return bm_seterr(err, errlen, BM_EPROTO, "segment: row stride %u (want %zu)",
                         info->stride, bm_segblob_stride(&info->spec));

    /* Sections: inside the blob, after the header, not overlapping, and of
     * the sizes the count implies. */
    for (int s = 0; s < 3; s++) {
        lay->off[s] = get64(b + H_TPL_OFF + 16 * s);
        lay->len[s] = get64(b + H_TPL_LEN + 16 * s);
        uint64_t end;
        if (lay->off[s] < BM_SEGBLOB_HEADER_BYTES || !add_ok(lay->off[s], lay->len[s], &end) ||
            end > len)
            return bm_seterr(err, errlen, BM_EPROTO,
                             "segment: %s section [%llu, +%llu) outside the blob of %zu bytes",
                             section_name[s], (unsigned long long)lay->off[s],
                             (unsigned long long)lay->len[s], len);
    }
    for (int s = 0; s < 3; s++)
        for (int t = s + 1; t < 3; t++)
            if (lay->len[s] != 0 && lay->len[t] != 0 &&
                lay->off[s] < lay->off[t] + lay->len[t] &&
                lay->off[t] < lay->off[s] + lay->len[s])
                return bm_seterr(err, errlen, BM_EPROTO,
                                 "segment: sections %s and %s overlap", section_name[s],
                                 section_name[t]);
    /* Nothing may follow the last section: stray bytes would be data that
     * no reader looks at but every digest covers. */
    uint64_t last = BM_SEGBLOB_HEADER_BYTES;
    for (int s = 0; s < 3; s++)
        if (lay->off[s] + lay->len[s] > last)
            last = lay->off[s] + lay->len[s];
    if (last != len)
        return bm_seterr(err, errlen, BM_EPROTO,
                         "segment: %llu stray bytes after the last section",
                         (unsigned long long)(len - last));
    uint64_t want;
    if (lay->off[0] % BM_SEGBLOB_ALIGN != 0)
        return bm_seterr(err, errlen, BM_EPROTO, "segment: templates not 64-byte aligned");
    if (!mul_ok(info->count, info->stride, &want) || lay->len[0] != want)
        return bm_seterr(err, errlen, BM_EPROTO,
                         "segment: templates section of %llu bytes for %u rows",
                         (unsigned long long)lay->len[0], info->count);
    want = is_int8(&info->spec) ? (uint64_t)info->count * 4 : 0;
    if (lay->len[1] != want)
        return bm_seterr(err, errlen, BM_EPROTO,
                         "segment: scales section of %llu bytes for %u rows",
                         (unsigned long long)lay->len[1], info->count);
    /* Each id is 2 + 1..128 bytes. */
    if (lay->len[2] < (uint64_t)info->count * 3 ||
        lay->len[2] > (uint64_t)info->count * (2 + BM_SUBJECT_ID_MAX))
        return bm_seterr(err, errlen, BM_EPROTO,
                         "segment: ids section of %llu bytes for %u rows",
                         (unsigned long long)lay->len[2], info->count);
    return BM_OK;
}

int bm_segblob_peek(const uint8_t *blob, size_t len, struct bm_segblob_info *info,
                    char *err, size_t errlen)
{
    struct layout lay;
    return check_header(blob, len, info, &lay, err, errlen);
}

static int same_storage(const struct bm_spec *a, const struct bm_spec *b)
{
    if (a->modality != b->modality)
        return 0;
    if (a->modality == BM_MODALITY_DENSE)
        return a->dtype == b->dtype && a->dim == b->dim;
    return a->iris_filters == b->iris_filters && a->iris_rows == b->iris_rows &&
           a->iris_columns == b->iris_columns &&
           a->iris_bits_per_cell == b->iris_bits_per_cell;
}

int bm_segblob_decode(const uint8_t *blob, size_t len, const struct bm_spec *expect,
                      const uint8_t expect_sha256[32], struct bm_segment **seg_out,
                      struct bm_subjects *subjects_out, char *err, size_t errlen)
{
    *seg_out = NULL;
    struct bm_segblob_info info;
    struct layout lay;
    int rc = check_header(blob, len, &info, &lay, err, errlen);
    if (rc != BM_OK)
        return rc;
    if (expect != NULL && !same_storage(expect, &info.spec))
        return bm_seterr(err, errlen, BM_ECONFLICT,
                         "segment %llu: geometry differs from the gallery's",
                         (unsigned long long)info.segment_id);

    uint8_t sha[32];
    if (!digest(blob, len, sha))
        return bm_seterr(err, errlen, BM_ENOMEM, "segment: SHA-256 failed");
    if (memcmp(sha, info.sha256, 32) != 0)
        return bm_seterr(err, errlen, BM_ECHECKSUM,
                         "segment %llu: SHA-256 does not match its header (corrupt blob)",
                         (unsigned long long)info.segment_id);
    if (expect_sha256 != NULL && memcmp(sha, expect_sha256, 32) != 0)
        return bm_seterr(err, errlen, BM_ECHECKSUM,
                         "segment %llu: SHA-256 differs from the manifest's",
                         (unsigned long long)info.segment_id);

    /* Subject ids: count x (u16 length, bytes), exactly filling the section. */
    const uint8_t *ids = blob + lay.off[2];
    size_t idlen = (size_t)lay.len[2], pos = 0;
    size_t n = info.count;
    size_t *at = malloc((n ? n : 1) * sizeof *at);
    uint64_t *keys = malloc((n ? n : 1) * sizeof *keys);
    if (at == NULL || keys == NULL) {
        rc = bm_seterr(err, errlen, BM_ENOMEM, "segment: out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        if (idlen - pos < 2) {
            rc = bm_seterr(err, errlen, BM_EPROTO, "segment: ids section ends at row %zu", i);
            goto out;
        }
        size_t l = (size_t)ids[pos] | (size_t)ids[pos + 1] << 8;
        if (l == 0 || l > BM_SUBJECT_ID_MAX || l > idlen - pos - 2) {
            rc = bm_seterr(err, errlen, BM_EPROTO,
                           "segment: subject id of row %zu has bad length %zu", i, l);
            goto out;
        }
        at[i] = pos;
        keys[i] = bm_subjects_key((const char *)ids + pos + 2, l);
        pos += 2 + l;
    }
    if (pos != idlen) {
        rc = bm_seterr(err, errlen, BM_EPROTO, "segment: %zu stray bytes after the ids",
                       idlen - pos);
        goto out;
    }
    rc = check_unique(keys, n, BM_EPROTO, err, errlen);
    if (rc != BM_OK)
        goto out;
    int int8 = is_int8(&info.spec);
    for (size_t i = 0; int8 && i < n; i++) {
        float s = getf32(blob + lay.off[1] + 4 * i);
        if (!isfinite(s) || !(s > 0.0f)) {
            rc = bm_seterr(err, errlen, BM_EPROTO, "segment: row %zu has a bad int8 scale", i);
            goto out;
        }
    }

    /* The segment keeps the gallery's scoring fields, the blob's geometry
     * (equal to the expected one when there is one). */
    struct bm_spec spec = expect != NULL ? *expect : info.spec;
    /* Capacity 1 for an empty segment: the matcher refuses capacity 0. */
    struct bm_segment *seg = bm_segment_new(&spec, info.segment_id, n ? n : 1, err, errlen);
    if (seg == NULL) {
        rc = BM_ENOMEM;
        goto out;
    }
    if (subjects_out != NULL) {
        /* idlen - 2n: the id bytes without their u16 length prefixes (the
         * header check guaranteed idlen >= 3n). */
        rc = bm_subjects_reserve(subjects_out, n, idlen - 2 * n, err, errlen);
        if (rc != BM_OK) {
            bm_segment_free(seg);
            goto out;
        }
    }
    for (size_t i = 0; i < n; i++) {
        float s = int8 ? getf32(blob + lay.off[1] + 4 * i) : 1.0f;
        rc = bm_segment_add_packed(seg, keys[i], blob + lay.off[0] + i * (size_t)info.stride,
                                   s, err, errlen);
        if (rc == BM_OK && subjects_out != NULL) {
            size_t l = (size_t)ids[at[i]] | (size_t)ids[at[i] + 1] << 8;
            rc = bm_subjects_put_key(subjects_out, keys[i],
                                     (const char *)ids + at[i] + 2, l, err, errlen);
        }
        if (rc != BM_OK) {
            /* The digest matched, so the writer stored a row the matcher
             * refuses (NaN element, bad scale): the blob is malformed. */
            if (rc == BM_EINVAL) {
                char why[160];
                snprintf(why, sizeof why, "%s", err != NULL && errlen > 0 ? err : "");
                rc = bm_seterr(err, errlen, BM_EPROTO, "segment: row %zu refused: %s", i,
                               why);
            }
            bm_segment_free(seg);
            goto out;
        }
    }
    *seg_out = seg;
out:
    free(at);
    free(keys);
    return rc;
}
