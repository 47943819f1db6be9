/* match iris scoring: hand-computed cases pin the definition (rotation
 * direction and wrap-around, multi-bit cells, line independence, empty
 * masks, all-masked shifts, minimum valid bits, tie order, the normalised
 * HD and the open-iris HammingDistanceMatcher defaults), then a per-bit
 * reference written straight from the definition is compared with the
 * gallery's verify and search on the default open-iris geometry at every
 * SIMD level. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "match/cpu.h"
#include "match/gallery.h"
#include "match/internal.h"
#include "match/pool.h"

static struct bm_spec tiny(uint32_t f, uint32_t r, uint32_t c, uint32_t b, uint32_t rot,
                           enum bm_iris_scoring sc)
{
    struct bm_spec s;
    bm_spec_default(&s, BM_MODALITY_IRIS);
    s.iris_filters = f;
    s.iris_rows = r;
    s.iris_columns = c;
    s.iris_bits_per_cell = b;
    s.iris_rotations = rot;
    s.iris_scoring = sc;
    s.iris_min_valid_bits = 1;
    return s;
}

/* Score one probe against one gallery code with the library. */
static float score(const struct bm_spec *spec, const uint8_t *pc, const uint8_t *pm,
                   const uint8_t *gc, const uint8_t *gm, int *shift)
{
    struct bm_probe p = {.iris_code = pc, .iris_mask = pm};
    struct bm_iris_probes ip;
    char err[128];
    assert_int_equal(bm_iris_probes_prepare(spec, &p, 1, &ip, err, sizeof err), BM_OK);
    float s = bm_iris_score_one(bm_kernels_get(), spec, &ip, 0, gc, gm, shift);
    bm_iris_probes_free(&ip);
    return s;
}

static void near(float got, double want)
{
    if (fabs((double)got - want) > 1e-6) {
        print_error("got %.9g want %.9g\n", (double)got, want);
        fail();
    }
}

static void test_rotation_direction_and_wrap(void **state)
{
    (void)state;
    struct bm_spec s = tiny(1, 1, 8, 1, 1, BM_IRIS_FRACTIONAL);
    uint8_t full = 0xff;
    int shift = 99;
    /* Probe column 0 set, gallery column 1: shift +1 moves probe column c
     * to c + 1 (numpy roll), HD 0. */
    uint8_t p = 0x01, g = 0x02;
    near(score(&s, &p, &full, &g, &full, &shift), 1.0);
    assert_int_equal(shift, 1);
    /* Wrap-around: probe column 7 lands on column 0. */
    p = 0x80;
    g = 0x01;
    near(score(&s, &p, &full, &g, &full, &shift), 1.0);
    assert_int_equal(shift, 1);
    /* And the other way. */
    p = 0x01;
    g = 0x80;
    near(score(&s, &p, &full, &g, &full, &shift), 1.0);
    assert_int_equal(shift, -1);
    /* No shift helps: probe 0x0f vs gallery 0x00 -> HD 4/8 at every shift. */
    p = 0x0f;
    g = 0x00;
    near(score(&s, &p, &full, &g, &full, &shift), 0.5);
    assert_int_equal(shift, -1); /* ties: the earliest shift of -r..+r */
}

static void test_cells_and_lines(void **state)
{
    (void)state;
    /* 2 bits per cell: a shift of one column moves 2 bits. Cell 0 bit 0 =
     * bit 0; cell 1 bit 0 = bit 2. */
    struct bm_spec s = tiny(1, 1, 4, 2, 1, BM_IRIS_FRACTIONAL);
    uint8_t full = 0xff, p = 0x01, g = 0x04;
    int shift;
    near(score(&s, &p, &full, &g, &full, &shift), 1.0);
    assert_int_equal(shift, 1);
    /* Each (filter, row) line rotates on its own: 2 x 2 lines of 8 columns.
     * Line 0 column 7 wraps to line 0 column 0, never into line 1. */
    struct bm_spec s2 = tiny(2, 2, 8, 1, 1, BM_IRIS_FRACTIONAL);
    uint8_t pc[4] = {0x80, 0, 0, 0x40}, gc[4] = {0x01, 0, 0, 0x80}, m[4];
    memset(m, 0xff, 4);
    near(score(&s2, pc, m, gc, m, &shift), 1.0);
    assert_int_equal(shift, 1);
    /* The same bits without the wrap inside the line would differ. */
    uint8_t rot[4];
    bm_iris_rotate(&s2, pc, 1, rot);
    assert_int_equal(rot[0], 0x01);
    assert_int_equal(rot[1], 0x00);
    assert_int_equal(rot[3], 0x80);
    bm_iris_rotate(&s2, pc, -1, rot);
    assert_int_equal(rot[0], 0x40);
    assert_int_equal(rot[3], 0x20);
}

static void test_masks(void **state)
{
    (void)state;
    struct bm_spec s = tiny(1, 1, 8, 1, 1, BM_IRIS_FRACTIONAL);
    uint8_t full = 0xff, none = 0x00, p = 0x01, g = 0x00;
    int shift;
    /* Empty probe mask: no shift has a valid bit -> no decision. */
    assert_true(isnan(score(&s, &p, &none, &g, &full, &shift)));
    assert_true(isnan(score(&s, &p, &full, &g, &none, &shift)));
    /* Probe valid only in column 0, gallery only in column 1: shifts 0 and
     * -1 have no valid bit and are skipped; shift +1 has one valid bit
     * where the probe says 1 and the gallery 0 -> HD 1, similarity 0. */
    uint8_t pm = 0x01, gm = 0x02;
    near(score(&s, &p, &pm, &g, &gm, &shift), 0.0);
    assert_int_equal(shift, 1);
    /* Masked bits never count: differing codes under a zero mask. */
    uint8_t pm2 = 0x0f, pc2 = 0xf0, gc2 = 0x00;
    struct bm_spec s0 = tiny(1, 1, 8, 1, 0, BM_IRIS_FRACTIONAL);
    near(score(&s0, &pc2, &pm2, &gc2, &full, &shift), 1.0);
    /* Minimum valid bits: 1 valid bit is below a minimum of 2. */
    s.iris_min_valid_bits = 2;
    assert_true(isnan(score(&s, &p, &pm, &g, &gm, &shift)));
}

static void test_normalised(void **state)
{
    (void)state;
    /* HD = 2/8 with 8 valid bits:
     * nHD = 0.45 - (0.45 - 0.25) * (0.00005 * 8 + 0.5) = 0.34992. */
    struct bm_spec s = tiny(1, 1, 8, 1, 0, BM_IRIS_NORMALISED);
    uint8_t full = 0xff, p = 0x03, g = 0x00;
    near(score(&s, &p, &full, &g, &full, NULL), 1.0 - 0.34992);
    /* Identical codes: nHD = 0.45 - 0.45 * 0.5004 = 0.22482, not 0: the
     * normalisation pulls low-evidence scores toward 0.45. */
    near(score(&s, &g, &full, &g, &full, NULL), 1.0 - 0.22482);
}

static void test_openiris(void **state)
{
    (void)state;
    /* 1 x 1 x 8 x 1, no rotation. Halves: columns 0-3 (low, open-iris index
     * 1) and 4-7 (high, index 0); open-iris doubles each half's counts. */
    struct bm_spec s = tiny(1, 1, 8, 1, 0, BM_IRIS_OPENIRIS);
    uint8_t full = 0xff, zero = 0x00;
    /* Probe 0x03, gallery 0: low half t=2 v=4, high half t=0 v=4.
     * whole = nHD(4, 16) = 0.45 - 0.2 * 0.5008 = 0.34984
     * n0 = nHD(0, 8) = 0.45 - 0.45 * 0.5004 = 0.22482
     * n1 = nHD(4, 8) = 0.45 + 0.05 * 0.5004 = 0.47502
     * halves = (0.22482 * 8 + 0.47502 * 8) / 16 = 0.34992
     * HD = (0.34984 + 0.34992) / 2 = 0.34988 */
    uint8_t p = 0x03;
    near(score(&s, &p, &full, &zero, &full, NULL), 1.0 - 0.34988);
    /* High half fully masked (v0 = 0): open-iris uses norm_mean for both
     * halves. whole = nHD(4, 8) = 0.47502, halves = 0.45,
     * HD = 0.46251. */
    uint8_t pm = 0x0f;
    near(score(&s, &p, &pm, &zero, &full, NULL), 1.0 - 0.46251);
    /* Low half fully masked (v1 = 0): n1 is 0/0 -> NaN -> max(0, NaN) = 0,
     * weighted by 0. Probe 0x30: high half t=2 v=4 -> whole = nHD(4, 8)
     * = 0.47502, halves = n0 = 0.47502, HD = 0.47502. */
    uint8_t p2 = 0x30, pm2 = 0xf0;
    near(score(&s, &p2, &pm2, &zero, &full, NULL), 1.0 - 0.47502);
    /* Everything masked: no decision. */
    assert_true(isnan(score(&s, &p, &zero, &zero, &full, NULL)));
    /* Scan order 0, -1, +1: all shifts tie -> shift 0 wins. */
    struct bm_spec s1 = tiny(1, 1, 8, 1, 2, BM_IRIS_OPENIRIS);
    int shift = 99;
    score(&s1, &zero, &full, &zero, &full, &shift);
    assert_int_equal(shift, 0);
}

/* ---- per-bit reference straight from the definition */

static int bit(const uint8_t *p, const struct bm_spec *s, size_t f, size_t r, size_t c, size_t b)
{
    size_t i = ((f * s->iris_rows + r) * s->iris_columns + c) * s->iris_bits_per_cell + b;
    return (p[i / 8] >> (i % 8)) & 1;
}

static double nhd(double t, double v)
{
    double x = 0.45 - (0.45 - t / v) * (0.00005 * v + 0.5);
    return x > 0 ? x : 0;
}

static float reference(const struct bm_spec *s, const uint8_t *pc, const uint8_t *pm,
                       const uint8_t *gc, const uint8_t *gm)
{
    int R = (int)s->iris_rotations, C = (int)s->iris_columns;
    double best = INFINITY;
    for (int sh = -R; sh <= R; sh++) {
        double t[2] = {0, 0}, v[2] = {0, 0}; /* [0] high half, [1] low half */
        for (size_t f = 0; f < s->iris_filters; f++)
            for (size_t r = 0; r < s->iris_rows; r++)
                for (int c = 0; c < C; c++)
                    for (size_t b = 0; b < s->iris_bits_per_cell; b++) {
                        size_t src = (size_t)(((c - sh) % C + C) % C);
                        int valid = bit(pm, s, f, r, src, b) & bit(gm, s, f, r, (size_t)c, b);
                        int d = valid & (bit(pc, s, f, r, src, b) ^ bit(gc, s, f, r, (size_t)c, b));
                        int h = c >= C / 2 ? 0 : 1;
                        t[h] += d;
                        v[h] += valid;
                    }
        double T = t[0] + t[1], V = v[0] + v[1];
        if (V < (s->iris_min_valid_bits ? s->iris_min_valid_bits : 1))
            continue;
        double hd;
        if (s->iris_scoring == BM_IRIS_FRACTIONAL)
            hd = T / V;
        else if (s->iris_scoring == BM_IRIS_NORMALISED)
            hd = nhd(T, V);
        else {
            double t0 = 2 * t[0], v0 = 2 * v[0], t1 = 2 * t[1], v1 = 2 * v[1];
            double n0 = v0 > 0 ? nhd(t0, v0) : 0.45;
            double n1 = v0 > 0 ? (v1 > 0 ? nhd(t1, v1) : 0) : 0.45;
            hd = (nhd(2 * T, 2 * V) + (n0 * v0 + n1 * v1) / (v0 + v1)) / 2;
        }
        if (hd < best)
            best = hd;
    }
    return best == INFINITY ? NAN : (float)(1.0 - best);
}

static uint64_t rng = 12345;
static uint8_t rbyte(void)
{
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return (uint8_t)(rng >> 56);
}

static void test_default_geometry_vs_reference(void **state)
{
    (void)state;
    char err[256];
    struct bm_pool *pool = bm_pool_new(3, err, sizeof err);
    assert_non_null(pool);
    for (int mode = BM_IRIS_FRACTIONAL; mode <= BM_IRIS_OPENIRIS; mode++) {
        struct bm_spec s;
        bm_spec_default(&s, BM_MODALITY_IRIS);
        s.iris_scoring = (enum bm_iris_scoring)mode;
        size_t nb = bm_spec_iris_bytes(&s);
        assert_int_equal(nb, 2048);
        enum { N = 40 };
        uint8_t *codes = malloc(N * nb), *masks = malloc(N * nb);
        for (size_t i = 0; i < N * nb; i++) {
            codes[i] = rbyte();
            masks[i] = (uint8_t)(rbyte() | rbyte()); /* ~75% valid */
        }
        /* A rotated mate of template 0, and a template masked in its
         * whole high half. */
        bm_iris_rotate(&s, codes, 5, codes + nb);
        bm_iris_rotate(&s, masks, 5, masks + nb);
        for (size_t line = 0; line < 32; line++)
            memset(masks + 2 * nb + line * 64 + 32, 0, 32);
        memset(masks + 3 * nb, 0, nb); /* no valid bits at all */
        struct bm_segment *seg = bm_segment_new(&s, 1, N, err, sizeof err);
        assert_non_null(seg);
        for (size_t i = 0; i < N; i++)
            assert_int_equal(bm_segment_add_iris(seg, 100 + i, codes + i * nb, masks + i * nb,
                                                 err, sizeof err), BM_OK);
        struct bm_gallery *g = bm_gallery_new(&s, pool, err, sizeof err);
        assert_non_null(g);
        assert_int_equal(bm_gallery_update(g, &seg, 1, NULL, 0, NULL, 0, err, sizeof err), BM_OK);
        float want[N];
        for (size_t i = 0; i < N; i++)
            want[i] = reference(&s, codes, masks, codes + i * nb, masks + i * nb);
        assert_true(want[0] == 1.0f || mode != BM_IRIS_FRACTIONAL);
        assert_true(isnan(want[3]));
        for (int l = BM_SIMD_SCALAR; l <= BM_SIMD_AVX512; l++) {
            if (bm_simd_force((enum bm_simd)l) != BM_OK)
                continue;
            struct bm_probe p = {.iris_code = codes, .iris_mask = masks};
            for (size_t i = 0; i < N; i++) {
                float got;
                assert_int_equal(bm_gallery_verify(g, &p, 100 + i, &got, err, sizeof err), BM_OK);
                if (isnan(want[i]))
                    assert_true(isnan(got));
                else
                    near(got, want[i]);
            }
            /* The rotated mate scores like the original (shift -5 undoes it). */
            float a, b;
            bm_gallery_verify(g, &p, 100, &a, err, sizeof err);
            bm_gallery_verify(g, &p, 101, &b, err, sizeof err);
            near(b, a);
            struct bm_candidate out[N + 5];
            uint64_t cmp;
            assert_int_equal(bm_gallery_search(g, &p, 1, N + 5, -INFINITY, out, &cmp, err,
                                               sizeof err), BM_OK);
            assert_int_equal(cmp, N);
            size_t nres = 0;
            for (size_t i = 0; i < N + 5; i++)
                if (out[i].id != BM_NO_ID) {
                    nres++;
                    near(out[i].score, want[out[i].id - 100]);
                    if (i > 0)
                        assert_true(out[i - 1].score > out[i].score ||
                                    (out[i - 1].score == out[i].score && out[i - 1].id < out[i].id));
                }
            assert_int_equal(nres, N - 1); /* the all-masked one is never a candidate */
        }
        bm_simd_force(bm_simd_detect());
        bm_gallery_free(g);
        free(codes);
        free(masks);
    }
    bm_pool_free(pool);
}

/* bm_iris_rotate against the per-bit definition (out column c = in column
 * (c - shift) mod columns, line by line) for every shift in -c..+c, on
 * geometries with whole-byte lines (the byte-window path: 64-byte lines,
 * 3-byte lines, 1 bit per cell, 4 bits per cell) and with lines that
 * straddle bytes (the bit-loop path). */
static void test_rotate_vs_bits(void **state)
{
    (void)state;
    static const uint32_t geo[][4] = {
        {2, 16, 256, 2}, {1, 2, 12, 2}, {3, 1, 8, 1}, {1, 3, 10, 4}, {1, 4, 6, 1}, {2, 2, 5, 4}};
    for (size_t gi = 0; gi < sizeof geo / sizeof geo[0]; gi++) {
        struct bm_spec s = tiny(geo[gi][0], geo[gi][1], geo[gi][2], geo[gi][3], 1,
                                BM_IRIS_FRACTIONAL);
        size_t nb = bm_spec_iris_bytes(&s);
        uint8_t *in = malloc(nb), *out = malloc(nb);
        assert_non_null(in);
        assert_non_null(out);
        for (size_t i = 0; i < nb; i++)
            in[i] = rbyte();
        int cols = (int)s.iris_columns;
        for (int sh = -cols; sh <= cols; sh++) {
            bm_iris_rotate(&s, in, sh, out);
            for (size_t f = 0; f < s.iris_filters; f++)
                for (size_t r = 0; r < s.iris_rows; r++)
                    for (size_t c = 0; c < s.iris_columns; c++)
                        for (size_t b = 0; b < s.iris_bits_per_cell; b++) {
                            size_t from = (size_t)(((int)c - sh) % cols + cols) % (size_t)cols;
                            assert_int_equal(bit(out, &s, f, r, c, b), bit(in, &s, f, r, from, b));
                        }
        }
        free(in);
        free(out);
    }
}

static void test_spec_checks(void **state)
{
    (void)state;
    char err[128];
    struct bm_spec s = tiny(1, 1, 7, 1, 1, BM_IRIS_FRACTIONAL);
    assert_int_equal(bm_spec_validate(&s, err, sizeof err), BM_EINVAL); /* 7 bits */
    s = tiny(1, 1, 8, 1, 4, BM_IRIS_FRACTIONAL);
    assert_int_equal(bm_spec_validate(&s, err, sizeof err), BM_EINVAL); /* 9 shifts > 8 cols */
    s = tiny(1, 1, 8, 1, 3, BM_IRIS_OPENIRIS);
    assert_int_equal(bm_spec_validate(&s, err, sizeof err), BM_OK);
    bm_spec_default(&s, BM_MODALITY_IRIS);
    assert_int_equal(bm_spec_validate(&s, err, sizeof err), BM_OK);
    assert_int_equal(bm_spec_template_bytes(&s), 4096);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_spec_checks),
        cmocka_unit_test(test_rotation_direction_and_wrap),
        cmocka_unit_test(test_cells_and_lines),
        cmocka_unit_test(test_masks),
        cmocka_unit_test(test_normalised),
        cmocka_unit_test(test_openiris),
        cmocka_unit_test(test_default_geometry_vs_reference),
        cmocka_unit_test(test_rotate_vs_bits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
