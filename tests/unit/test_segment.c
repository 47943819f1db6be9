/* Unit tests of the segment blob (lib/store/segment.h): exact round trips
 * for every dtype and iris geometry, truncation at every length, every
 * header byte flipped, hostile headers with a valid digest, checksum and
 * geometry mismatches, and the encoder's refusals. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "match/gallery.h"
#include "store/segment.h"
#include "store/subjects.h"

static uint64_t rng = 88172645463325252ull;

static uint32_t next_rand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 11);
}

static void dense_spec(struct bm_spec *s, enum bm_dtype dtype, uint32_t dim)
{
    bm_spec_default(s, BM_MODALITY_DENSE);
    s->dtype = dtype;
    s->dim = dim;
}

static void iris_spec(struct bm_spec *s, uint32_t f, uint32_t r, uint32_t c, uint32_t b)
{
    bm_spec_default(s, BM_MODALITY_IRIS);
    s->iris_filters = f;
    s->iris_rows = r;
    s->iris_columns = c;
    s->iris_bits_per_cell = b;
    if (2 * s->iris_rotations + 1 > c)
        s->iris_rotations = (c - 1) / 2;
}

/* A segment of 'n' random templates with ids "subject-<i>" (ids[] and
 * lens[] filled, ids malloc'd). */
static struct bm_segment *make_segment(const struct bm_spec *spec, uint64_t segid, size_t n,
                                       char **ids, size_t *lens)
{
    char err[256];
    struct bm_segment *seg = bm_segment_new(spec, segid, n ? n : 1, err, sizeof err);
    assert_non_null(seg);
    float *vec = malloc(4096 * sizeof *vec);
    size_t ib = bm_spec_iris_bytes(spec);
    uint8_t *code = malloc(ib + 1), *mask = malloc(ib + 1);
    assert_non_null(vec);
    for (size_t i = 0; i < n; i++) {
        char buf[64];
        int l = snprintf(buf, sizeof buf, "subject-%llu-%zu", (unsigned long long)segid, i);
        ids[i] = malloc((size_t)l + 1);
        memcpy(ids[i], buf, (size_t)l + 1);
        lens[i] = (size_t)l;
        uint64_t key = bm_subjects_key(ids[i], lens[i]);
        if (spec->modality == BM_MODALITY_DENSE) {
            for (uint32_t d = 0; d < spec->dim; d++)
                vec[d] = (float)((int)(next_rand() % 2001) - 1000) / 997.0f;
            assert_int_equal(bm_segment_add_dense(seg, key, vec, err, sizeof err), BM_OK);
        } else {
            for (size_t b = 0; b < ib; b++) {
                code[b] = (uint8_t)next_rand();
                mask[b] = (uint8_t)(next_rand() | 0x11);
            }
            assert_int_equal(bm_segment_add_iris(seg, key, code, mask, err, sizeof err), BM_OK);
        }
    }
    free(vec);
    free(code);
    free(mask);
    return seg;
}

static void free_ids(char **ids, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(ids[i]);
}

/* Recompute the digest of a (tampered) blob so the header checks, not the
 * checksum, must catch the tampering. */
static void reseal(uint8_t *b, size_t len)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned int n = 0;
    assert_non_null(ctx);
    assert_int_equal(EVP_DigestInit_ex(ctx, EVP_sha256(), NULL), 1);
    EVP_DigestUpdate(ctx, b, 160);
    EVP_DigestUpdate(ctx, b + 192, len - 192);
    EVP_DigestFinal_ex(ctx, b + 160, &n);
    EVP_MD_CTX_free(ctx);
}

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

static void check_round_trip(const struct bm_spec *spec, size_t n)
{
    char err[256];
    char **ids = calloc(n ? n : 1, sizeof *ids);
    size_t *lens = calloc(n ? n : 1, sizeof *lens);
    struct bm_segment *seg = make_segment(spec, 42, n, ids, lens);

    uint8_t *blob = NULL, sha[32];
    size_t len = 0;
    assert_int_equal(bm_segblob_encode_segment(spec, seg, (const char *const *)ids, lens,
                                               &blob, &len, sha, err, sizeof err),
                     BM_OK);
    assert_memory_equal(blob + 160, sha, 32);

    /* The raw encoder over the same rows gives the same bytes. */
    size_t tb = bm_spec_template_bytes(spec);
    uint8_t *packed = malloc(n * tb + 1);
    float *scales = malloc((n + 1) * sizeof *scales);
    for (size_t i = 0; i < n; i++) {
        memcpy(packed + i * tb, bm_segment_row(seg, i), tb);
        scales[i] = bm_segment_row_scale(seg, i);
    }
    uint8_t *blob2 = NULL;
    size_t len2 = 0;
    assert_int_equal(bm_segblob_encode(spec, 42, n, (const char *const *)ids, lens, packed,
                                       scales, &blob2, &len2, NULL, err, sizeof err),
                     BM_OK);
    assert_int_equal(len2, len);
    assert_memory_equal(blob2, blob, len);
    free(blob2);

    struct bm_segblob_info info;
    assert_int_equal(bm_segblob_peek(blob, len, &info, err, sizeof err), BM_OK);
    assert_int_equal(info.count, n);
    assert_true(info.segment_id == 42);
    assert_int_equal(info.stride % 64, 0);

    struct bm_subjects *subj = bm_subjects_new(0, err, sizeof err);
    struct bm_segment *back = NULL;
    int rc = bm_segblob_decode(blob, len, spec, sha, &back, subj, err, sizeof err);
    if (rc != BM_OK)
        fail_msg("decode: %s", err);
    assert_int_equal(bm_segment_count(back), n);
    assert_true(bm_segment_id(back) == 42);
    for (size_t i = 0; i < n; i++) {
        assert_true(bm_segment_row_id(back, i) == bm_segment_row_id(seg, i));
        assert_memory_equal(bm_segment_row(back, i), bm_segment_row(seg, i), tb);
        float a = bm_segment_row_scale(back, i), b = bm_segment_row_scale(seg, i);
        assert_memory_equal(&a, &b, sizeof a);
        size_t l = 0;
        const char *s = bm_subjects_get(subj, bm_segment_row_id(seg, i), &l);
        assert_non_null(s);
        assert_int_equal(l, lens[i]);
        assert_memory_equal(s, ids[i], l);
    }
    assert_int_equal(bm_subjects_count(subj), n);

    /* Re-encoding the decoded segment gives identical bytes. */
    uint8_t *blob3 = NULL;
    size_t len3 = 0;
    assert_int_equal(bm_segblob_encode_segment(spec, back, (const char *const *)ids, lens,
                                               &blob3, &len3, NULL, err, sizeof err),
                     BM_OK);
    assert_int_equal(len3, len);
    assert_memory_equal(blob3, blob, len);
    free(blob3);

    /* Without an expected spec (tools) it decodes too. */
    struct bm_segment *loose = NULL;
    assert_int_equal(bm_segblob_decode(blob, len, NULL, NULL, &loose, NULL, err, sizeof err),
                     BM_OK);
    bm_segment_free(loose);

    bm_segment_free(back);
    bm_subjects_free(subj);
    bm_segment_free(seg);
    free(blob);
    free(packed);
    free(scales);
    free_ids(ids, n);
    free(ids);
    free(lens);
}

static void test_round_trip_dense(void **state)
{
    (void)state;
    struct bm_spec s;
    const enum bm_dtype dt[] = { BM_DTYPE_F32, BM_DTYPE_F16, BM_DTYPE_INT8 };
    const uint32_t dims[] = { 64, 100, 512 };
    for (size_t i = 0; i < 3; i++)
        for (size_t j = 0; j < 3; j++) {
            dense_spec(&s, dt[i], dims[j]);
            check_round_trip(&s, 37);
        }
    dense_spec(&s, BM_DTYPE_INT8, 512);
    check_round_trip(&s, 0);
    check_round_trip(&s, 1);
}

static void test_round_trip_iris(void **state)
{
    (void)state;
    struct bm_spec s;
    iris_spec(&s, 2, 16, 256, 2);   /* open-iris default */
    check_round_trip(&s, 21);
    iris_spec(&s, 1, 8, 64, 1);     /* 64-byte code: stride has no padding */
    check_round_trip(&s, 5);
    iris_spec(&s, 1, 3, 40, 1);     /* 15-byte code: padded rows */
    check_round_trip(&s, 5);
}

/* A small int8 blob for the corruption loops. */
static uint8_t *small_blob(struct bm_spec *spec, size_t *len, uint8_t sha[32])
{
    char err[256];
    char *ids[3];
    size_t lens[3];
    dense_spec(spec, BM_DTYPE_INT8, 64);
    struct bm_segment *seg = make_segment(spec, 7, 3, ids, lens);
    uint8_t *blob = NULL;
    assert_int_equal(bm_segblob_encode_segment(spec, seg, (const char *const *)ids, lens,
                                               &blob, len, sha, err, sizeof err),
                     BM_OK);
    bm_segment_free(seg);
    free_ids(ids, 3);
    return blob;
}

static int decode_rc(const uint8_t *b, size_t len, const struct bm_spec *spec,
                     const uint8_t *sha, char *err, size_t errlen)
{
    struct bm_segment *seg = (struct bm_segment *)(uintptr_t)1;
    struct bm_subjects *subj = bm_subjects_new(0, NULL, 0);
    int rc = bm_segblob_decode(b, len, spec, sha, &seg, subj, err, errlen);
    if (rc != BM_OK)
        assert_null(seg);
    bm_segment_free(seg);
    bm_subjects_free(subj);
    return rc;
}

static void test_truncation(void **state)
{
    (void)state;
    struct bm_spec spec;
    uint8_t sha[32];
    size_t len;
    uint8_t *blob = small_blob(&spec, &len, sha);
    char err[256];
    for (size_t n = 0; n < len; n++) {
        /* A fresh copy of exactly n bytes, so ASan sees any overread. */
        uint8_t *cut = malloc(n ? n : 1);
        memcpy(cut, blob, n);
        int rc = decode_rc(cut, n, &spec, NULL, err, sizeof err);
        assert_true(rc == BM_EPROTO || rc == BM_ECHECKSUM);
        assert_true(strlen(err) > 0);
        free(cut);
    }
    assert_int_equal(decode_rc(blob, len, &spec, sha, err, sizeof err), BM_OK);
    /* A longer blob (trailing byte) is refused as well. */
    uint8_t *longer = calloc(1, len + 1);
    memcpy(longer, blob, len);
    assert_int_not_equal(decode_rc(longer, len + 1, &spec, NULL, err, sizeof err), BM_OK);
    free(longer);
    free(blob);
}

static void test_header_flips(void **state)
{
    (void)state;
    struct bm_spec spec;
    uint8_t sha[32];
    size_t len;
    uint8_t *blob = small_blob(&spec, &len, sha);
    uint8_t *b = malloc(len);
    char err[256];
    const uint8_t masks[] = { 0x01, 0x02, 0x10, 0x80, 0xff };
    /* The digest covers the header: every flip is refused, whether the
     * header checks or the checksum catch it. */
    for (size_t i = 0; i < 192; i++)
        for (size_t m = 0; m < sizeof masks; m++) {
            memcpy(b, blob, len);
            b[i] ^= masks[m];
            int rc = decode_rc(b, len, &spec, NULL, err, sizeof err);
            if (rc == BM_OK)
                fail_msg("flip of header byte %zu by 0x%02x accepted", i, masks[m]);
        }
    /* Payload flips: checksum. */
    for (size_t i = 192; i < len; i++) {
        memcpy(b, blob, len);
        b[i] ^= 0x40;
        assert_int_equal(decode_rc(b, len, &spec, NULL, err, sizeof err), BM_ECHECKSUM);
    }
    /* Header flips with the digest recomputed: the structural checks alone
     * must keep the decoder safe (refuse, or decode something harmless). */
    for (size_t i = 0; i < 160; i++)
        for (size_t m = 0; m < sizeof masks; m++) {
            memcpy(b, blob, len);
            b[i] ^= masks[m];
            reseal(b, len);
            (void)decode_rc(b, len, &spec, NULL, err, sizeof err);
            (void)decode_rc(b, len, NULL, NULL, err, sizeof err);
        }
    free(b);
    free(blob);
}

static void test_checksum(void **state)
{
    (void)state;
    struct bm_spec spec;
    uint8_t sha[32];
    size_t len;
    uint8_t *blob = small_blob(&spec, &len, sha);
    char err[256];
    uint8_t other[32];
    memcpy(other, sha, 32);
    other[5] ^= 1;
    assert_int_equal(decode_rc(blob, len, &spec, other, err, sizeof err), BM_ECHECKSUM);
    assert_non_null(strstr(err, "manifest"));
    blob[192 + 3] ^= 1;
    assert_int_equal(decode_rc(blob, len, &spec, sha, err, sizeof err), BM_ECHECKSUM);
    assert_non_null(strstr(err, "SHA-256"));
    free(blob);
}

static void test_spec_mismatch(void **state)
{
    (void)state;
    struct bm_spec spec, other;
    uint8_t sha[32];
    size_t len;
    uint8_t *blob = small_blob(&spec, &len, sha);
    char err[256];
    dense_spec(&other, BM_DTYPE_F16, 64);
    assert_int_equal(decode_rc(blob, len, &other, sha, err, sizeof err), BM_ECONFLICT);
    dense_spec(&other, BM_DTYPE_INT8, 128);
    assert_int_equal(decode_rc(blob, len, &other, sha, err, sizeof err), BM_ECONFLICT);
    iris_spec(&other, 2, 16, 256, 2);
    assert_int_equal(decode_rc(blob, len, &other, sha, err, sizeof err), BM_ECONFLICT);
    /* Scoring settings are not storage: a different rotation count is fine. */
    other = spec;
    other.iris_rotations = 3;
    assert_int_equal(decode_rc(blob, len, &other, sha, err, sizeof err), BM_OK);
    free(blob);
}

/* Tampered headers carrying a valid digest (a buggy or hostile writer). */
static void test_hostile_headers(void **state)
{
    (void)state;
    struct bm_spec spec;
    uint8_t sha[32];
    size_t len;
    uint8_t *blob = small_blob(&spec, &len, sha);
    uint8_t *b = malloc(len);
    char err[256];
    struct {
        size_t off;
        int wide;
        uint64_t value;
        int want;
    } cases[] = {
        { 8, 0, 2, BM_EUNSUPPORTED },                /* newer version */
        { 8, 0, 0, BM_EPROTO },                      /* version 0 */
        { 12, 0, 256, BM_EPROTO },                   /* header length */
        { 16, 0, 9, BM_EPROTO },                     /* unknown modality */
        { 20, 0, 7, BM_EPROTO },                     /* unknown dtype */
        { 24, 0, 0xffffffff, BM_EPROTO },            /* absurd dim */
        { 28, 0, 2, BM_EPROTO },                     /* iris field in dense blob */
        { 44, 0, 0xffffffff, BM_ERANGE },            /* absurd count */
        { 44, 0, 4, BM_EPROTO },                     /* count disagrees */
        { 48, 0, 65, BM_EPROTO },                    /* stride */
        { 52, 0, 1, BM_EUNSUPPORTED },               /* encrypted */
        { 52, 0, 4, BM_EPROTO },                     /* unknown flag */
        { 64, 1, UINT64_MAX - 10, BM_EPROTO },       /* offset overflow */
        { 72, 1, UINT64_MAX, BM_EPROTO },            /* length overflow */
        { 64, 1, 0, BM_EPROTO },                     /* templates inside header */
        { 64, 1, 200, BM_EPROTO },                   /* unaligned templates */
        { 80, 1, 192, BM_EPROTO },                   /* scales overlap templates */
        { 96, 1, 0, BM_EPROTO },                     /* ids inside header */
        { 104, 1, 1u << 20, BM_EPROTO },             /* ids past the end */
        { 120, 0, 1, BM_EPROTO },                    /* reserved byte */
        { 150, 0, 1, BM_EPROTO },                    /* reserved byte */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        memcpy(b, blob, len);
        if (cases[i].wide)
            put64(b + cases[i].off, cases[i].value);
        else
            put32(b + cases[i].off, (uint32_t)cases[i].value);
        reseal(b, len);
        int rc = decode_rc(b, len, &spec, NULL, err, sizeof err);
        if (rc != cases[i].want)
            fail_msg("case %zu (offset %zu): got %d (%s), want %d", i, cases[i].off, rc, err,
                     cases[i].want);
    }

    /* Section contents: ids start after templates (192 + 3 * 64) and
     * scales (12 bytes). */
    size_t ids_off = 192 + 3 * 64 + 12;
    memcpy(b, blob, len);
    b[ids_off] = 0;                                  /* empty subject id */
    b[ids_off + 1] = 0;
    reseal(b, len);
    assert_int_equal(decode_rc(b, len, &spec, NULL, err, sizeof err), BM_EPROTO);
    memcpy(b, blob, len);
    b[ids_off] = 0xff;                               /* id runs past the section */
    reseal(b, len);
    assert_int_equal(decode_rc(b, len, &spec, NULL, err, sizeof err), BM_EPROTO);
    memcpy(b, blob, len);
    float nan = NAN;
    memcpy(b + 192 + 3 * 64 + 4, &nan, 4);           /* NaN scale of row 1 */
    reseal(b, len);
    assert_int_equal(decode_rc(b, len, &spec, NULL, err, sizeof err), BM_EPROTO);
    memcpy(b, blob, len);
    put32(b + 192 + 3 * 64, 0);                      /* zero scale of row 0 */
    reseal(b, len);
    assert_int_equal(decode_rc(b, len, &spec, NULL, err, sizeof err), BM_EPROTO);
    free(b);
    free(blob);
}

static void test_duplicates_and_collisions(void **state)
{
    (void)state;
    char err[256];
    struct bm_spec spec;
    dense_spec(&spec, BM_DTYPE_INT8, 64);
    uint8_t rows[2 * 64] = { 1, 2, 3 };
    float scales[2] = { 0.5f, 0.25f };
    const char *ids[2] = { "same", "same" };
    size_t lens[2] = { 4, 4 };
    uint8_t *blob = (uint8_t *)"x";
    size_t len = 9;
    assert_int_equal(bm_segblob_encode(&spec, 1, 2, ids, lens, rows, scales, &blob, &len,
                                       NULL, err, sizeof err),
                     BM_ECONFLICT);
    assert_null(blob);
    assert_int_equal(len, 0);

    /* A hostile blob with a duplicated subject: write "samf", then patch it
     * to "same" and reseal. */
    ids[1] = "samf";
    assert_int_equal(bm_segblob_encode(&spec, 1, 2, ids, lens, rows, scales, &blob, &len,
                                       NULL, err, sizeof err),
                     BM_OK);
    assert_int_equal(blob[len - 1], 'f');
    blob[len - 1] = 'e';
    reseal(blob, len);
    assert_int_equal(decode_rc(blob, len, &spec, NULL, err, sizeof err), BM_EPROTO);
    blob[len - 1] = 'f';
    reseal(blob, len);

    /* A collision with a subject already known from another segment. */
    struct bm_subjects *subj = bm_subjects_new(0, err, sizeof err);
    assert_int_equal(bm_subjects_put_key(subj, bm_subjects_key("samf", 4), "other", 5, err,
                                         sizeof err),
                     BM_OK);
    struct bm_segment *seg = NULL;
    assert_int_equal(bm_segblob_decode(blob, len, &spec, NULL, &seg, subj, err, sizeof err),
                     BM_ECONFLICT);
    assert_null(seg);
    bm_subjects_free(subj);
    free(blob);
}

static void test_encoder_refusals(void **state)
{
    (void)state;
    char err[256];
    struct bm_spec spec;
    uint8_t *blob = NULL;
    size_t len = 0;
    float rows[2 * 64];
    for (size_t i = 0; i < 128; i++)
        rows[i] = 0.1f;
    const char *ids[2] = { "a", "b" };
    size_t lens[2] = { 1, 1 };
    dense_spec(&spec, BM_DTYPE_F32, 64);
    assert_int_equal(bm_segblob_encode(&spec, 1, 2, ids, lens, rows, NULL, &blob, &len, NULL,
                                       err, sizeof err),
                     BM_OK);
    free(blob);
    rows[70] = NAN;
    assert_int_equal(bm_segblob_encode(&spec, 1, 2, ids, lens, rows, NULL, &blob, &len, NULL,
                                       err, sizeof err),
                     BM_EINVAL);
    rows[70] = 0.1f;
    size_t bad[2] = { 1, 0 };
    assert_int_equal(bm_segblob_encode(&spec, 1, 2, ids, bad, rows, NULL, &blob, &len, NULL,
                                       err, sizeof err),
                     BM_EINVAL);
    bad[1] = BM_SUBJECT_ID_MAX + 1;
    assert_int_equal(bm_segblob_encode(&spec, 1, 2, ids, bad, rows, NULL, &blob, &len, NULL,
                                       err, sizeof err),
                     BM_EINVAL);
    dense_spec(&spec, BM_DTYPE_INT8, 64);
    assert_int_equal(bm_segblob_encode(&spec, 1, 2, ids, lens, rows, NULL, &blob, &len, NULL,
                                       err, sizeof err),
                     BM_EINVAL);
    float scales[2] = { 1.0f, -1.0f };
    assert_int_equal(bm_segblob_encode(&spec, 1, 2, ids, lens, rows, scales, &blob, &len,
                                       NULL, err, sizeof err),
                     BM_EINVAL);
    dense_spec(&spec, BM_DTYPE_INT8, 7);   /* invalid spec */
    assert_int_equal(bm_segblob_encode(&spec, 1, 0, NULL, NULL, NULL, NULL, &blob, &len,
                                       NULL, err, sizeof err),
                     BM_EINVAL);

    /* encode_segment: ids must be the subjects of the rows. */
    char *sids[2];
    size_t slens[2];
    dense_spec(&spec, BM_DTYPE_F16, 64);
    struct bm_segment *seg = make_segment(&spec, 3, 2, sids, slens);
    const char *swapped[2] = { sids[1], sids[0] };
    size_t swl[2] = { slens[1], slens[0] };
    assert_int_equal(bm_segblob_encode_segment(&spec, seg, swapped, swl, &blob, &len, NULL,
                                               err, sizeof err),
                     BM_EINVAL);
    assert_null(blob);
    bm_segment_free(seg);
    free_ids(sids, 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_dense),
        cmocka_unit_test(test_round_trip_iris),
        cmocka_unit_test(test_truncation),
        cmocka_unit_test(test_header_flips),
        cmocka_unit_test(test_checksum),
        cmocka_unit_test(test_spec_mismatch),
        cmocka_unit_test(test_hostile_headers),
        cmocka_unit_test(test_duplicates_and_collisions),
        cmocka_unit_test(test_encoder_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
