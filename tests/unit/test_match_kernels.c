/* match/kernels: every SIMD kernel against its scalar twin at every length
 * (1..300 plus the real dimensions) and every misalignment, on random and
 * adversarial inputs: bit-exact on integer kernels, within 1e-5 (relative
 * to the sum of |products|) on float kernels. Also the cpu.h basics. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "match/cpu.h"
#include "match/kernels.h"

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint64_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static float frand(void)
{
    return (float)((double)(next() >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

enum fill { RANDOM, ONES, INT8_MIN_ALL, INT8_MAX_ALL, INT8_MIXED_EXTREME, DENORMAL, ZERO };

static void fill_f32(float *p, size_t n, enum fill f)
{
    for (size_t i = 0; i < n; i++) {
        switch (f) {
        case ONES: p[i] = 1.0f; break;
        case DENORMAL: p[i] = (i & 1) ? 1e-40f : -3e-39f; break;
        case ZERO: p[i] = 0; break;
        default: p[i] = frand(); break;
        }
    }
}

static void fill_i8(int8_t *p, size_t n, enum fill f)
{
    for (size_t i = 0; i < n; i++) {
        switch (f) {
        case INT8_MIN_ALL: p[i] = -128; break;
        case INT8_MAX_ALL: p[i] = 127; break;
        case INT8_MIXED_EXTREME: p[i] = (next() & 1) ? 127 : -128; break;
        case ONES: p[i] = 1; break;
        case ZERO: p[i] = 0; break;
        default: p[i] = (int8_t)(next() & 0xff); break;
        }
    }
}

static const size_t real_dims[] = {512, 1024, 2048, 4096};

static double abs_dot(const float *a, const float *b, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += fabs((double)a[i] * (double)b[i]);
    return s;
}

static void check_close(float got, float want, double mag)
{
    double tol = 1e-5 * mag + 1e-30;
    if (fabs((double)got - (double)want) > tol) {
        print_error("got %.9g want %.9g tol %.3g\n", (double)got, (double)want, tol);
        fail();
    }
}

/* Exact-size heap copies at a byte offset so ASan catches any over-read. */
static void *place(const void *src, size_t bytes, size_t offset, void **base)
{
    *base = malloc(bytes + offset + 1);
    assert_non_null(*base);
    memcpy((uint8_t *)*base + offset, src, bytes);
    return (uint8_t *)*base + offset;
}

static void run_dots(const struct bm_kernels *k)
{
    const struct bm_kernels *ref = &bm_kernels_scalar;
    size_t nmax = 4096;
    float *a = malloc(nmax * sizeof *a), *b = malloc(nmax * sizeof *b);
    int8_t *qa = malloc(nmax), *qb = malloc(nmax);
    uint16_t *h = malloc(nmax * sizeof *h);
    assert_non_null(a);
    assert_non_null(b);
    assert_non_null(qa);
    assert_non_null(qb);
    assert_non_null(h);
    for (size_t li = 0; li < 300 + 4; li++) {
        size_t n = li < 300 ? li + 1 : real_dims[li - 300];
        for (int f = RANDOM; f <= ZERO; f++) {
            fill_f32(a, n, (enum fill)f);
            fill_f32(b, n, f == DENORMAL ? DENORMAL : RANDOM);
            fill_i8(qa, n, (enum fill)f);
            fill_i8(qb, n, f == INT8_MIXED_EXTREME ? INT8_MIXED_EXTREME : (enum fill)f);
            for (size_t i = 0; i < n; i++)
                h[i] = bm_f32_to_f16(b[i]);
            /* Offsets: every byte for int8, every element for floats. */
            size_t noff = (n <= 80 || li >= 300) ? 64 : 3;
            for (size_t off = 0; off < noff; off++) {
                void *b1, *b2;
                const int8_t *x = place(qa, n, off, &b1);
                const int8_t *y = place(qb, n, (off * 7) % 64, &b2);
                assert_int_equal(k->dot_i8(x, y, n), ref->dot_i8(x, y, n));
                free(b1);
                free(b2);
                if (off % 4 != 0)
                    continue;
                const float *fa = place(a, n * 4, off, &b1);
                const float *fb = place(b, n * 4, (off * 3) % 64 & ~(size_t)3, &b2);
                check_close(k->dot_f32(fa, fb, n), ref->dot_f32(fa, fb, n), abs_dot(fa, fb, n));
                free(b2);
                const uint16_t *fh = place(h, n * 2, (off / 2) % 64 & ~(size_t)1, &b2);
                float want = ref->dot_f16(fa, fh, n);
                float hb[4096];
                for (size_t i = 0; i < n; i++)
                    hb[i] = bm_f16_to_f32(fh[i]);
                check_close(k->dot_f16(fa, fh, n), want, abs_dot(fa, hb, n));
                free(b2);
                /* f32 x int8 (the int8 rescoring dot): int8 row at any byte offset. */
                const int8_t *qy = place(qb, n, (off * 5 + 1) % 64, &b2);
                for (size_t i = 0; i < n; i++)
                    hb[i] = (float)qy[i];
                check_close(k->dot_f32i8(fa, qy, n), ref->dot_f32i8(fa, qy, n), abs_dot(fa, hb, n));
                free(b1);
                free(b2);
            }
        }
    }
    free(a);
    free(b);
    free(qa);
    free(qb);
    free(h);
}

static void run_batches(const struct bm_kernels *k)
{
    const struct bm_kernels *ref = &bm_kernels_scalar;
    static const size_t dims[] = {1, 2, 15, 16, 17, 31, 63, 64, 65, 100, 129, 512};
    for (size_t di = 0; di < sizeof dims / sizeof dims[0]; di++) {
        size_t n = dims[di];
        /* Row counts cross the 4-row blocks and the 16-row streaming
         * blocks (with tails); probe counts cross the 4-probe blocks. */
        static const size_t ngs[] = {1, 4, 7, 10, 13, 16, 17, 31, 35};
        for (size_t nq = 1; nq <= 9; nq += 2)
            for (size_t gi_ = 0; gi_ < sizeof ngs / sizeof ngs[0]; gi_++) {
                size_t ng = ngs[gi_];
                size_t qs = n + 3, gs = n + 5; /* odd strides: misaligned rows */
                float *q = malloc(nq * qs * 4), *g = malloc(ng * gs * 4);
                uint16_t *gh = malloc(ng * gs * 2);
                int8_t *qi = malloc(nq * qs), *gi = malloc(ng * gs);
                float *o1 = malloc(nq * ng * 4), *o2 = malloc(nq * ng * 4);
                int32_t *i1 = malloc(nq * ng * 4), *i2 = malloc(nq * ng * 4);
                fill_f32(q, nq * qs, RANDOM);
                fill_f32(g, ng * gs, RANDOM);
                fill_i8(qi, nq * qs, (n & 1) ? INT8_MIXED_EXTREME : RANDOM);
                fill_i8(gi, ng * gs, (n & 2) ? INT8_MIXED_EXTREME : RANDOM);
                for (size_t i = 0; i < ng * gs; i++)
                    gh[i] = bm_f32_to_f16(g[i]);
                ref->batch_f32(q, qs, nq, g, gs, ng, n, o1, ng);
                k->batch_f32(q, qs, nq, g, gs, ng, n, o2, ng);
                for (size_t i = 0; i < nq * ng; i++)
                    check_close(o2[i], o1[i], abs_dot(q + (i / ng) * qs, g + (i % ng) * gs, n));
                ref->batch_f16(q, qs, nq, gh, gs, ng, n, o1, ng);
                k->batch_f16(q, qs, nq, gh, gs, ng, n, o2, ng);
                for (size_t i = 0; i < nq * ng; i++)
                    check_close(o2[i], o1[i], 2 * abs_dot(q + (i / ng) * qs, g + (i % ng) * gs, n));
                ref->batch_i8(qi, qs, nq, gi, gs, ng, n, i1, ng);
                k->batch_i8(qi, qs, nq, gi, gs, ng, n, i2, ng);
                assert_memory_equal(i1, i2, nq * ng * 4);
                free(q); free(g); free(gh); free(qi); free(gi);
                free(o1); free(o2); free(i1); free(i2);
            }
    }
}

static void run_iris(const struct bm_kernels *k)
{
    const struct bm_kernels *ref = &bm_kernels_scalar;
    size_t maxn = 2048;
    uint8_t *buf[4];
    for (int i = 0; i < 4; i++) {
        buf[i] = malloc(3 * maxn + 8);
        assert_non_null(buf[i]);
    }
    for (size_t li = 0; li < 301; li++) {
        size_t n = li < 300 ? li : maxn;
        for (int f = 0; f < 4; f++) {
            for (int i = 0; i < 4; i++)
                for (size_t j = 0; j < 3 * maxn + 8; j++) {
                    uint8_t x = (uint8_t)next();
                    if (f == 1) x = 0xff;                 /* all ones */
                    if (f == 2 && (i == 1)) x = 0;        /* probe all masked */
                    if (f == 3 && (i == 3)) x = (uint8_t)(x & 0x0f);
                    buf[i][j] = x;
                }
            size_t noff = n <= 130 || li == 300 ? 64 : 5;
            for (size_t off = 0; off < noff; off++) {
                size_t nshift = 1 + off % 3;
                size_t pstride = n + 1;
                uint32_t d1[3], v1[3], d2[3], v2[3];
                void *b[4];
                const uint8_t *pc = place(buf[0], nshift * pstride, off, &b[0]);
                const uint8_t *pm = place(buf[1], nshift * pstride, (off + 17) % 64, &b[1]);
                const uint8_t *gc = place(buf[2], n, (off + 33) % 64, &b[2]);
                const uint8_t *gm = place(buf[3], n, (off + 5) % 64, &b[3]);
                ref->iris_counts(pc, pm, pstride, nshift, gc, gm, n, d1, v1);
                k->iris_counts(pc, pm, pstride, nshift, gc, gm, n, d2, v2);
                assert_memory_equal(d1, d2, nshift * 4);
                assert_memory_equal(v1, v2, nshift * 4);
                if (f == 2)
                    assert_int_equal(v1[0], 0);
                for (int i = 0; i < 4; i++)
                    free(b[i]);
            }
        }
    }
    for (int i = 0; i < 4; i++)
        free(buf[i]);
}

/* iris_rows against the scalar twin: row and shift counts that cross the
 * register blocks, byte lengths with and without a partial 64-byte step,
 * odd strides, inputs ending at the end of their heap blocks. */
static void run_iris_rows(const struct bm_kernels *k)
{
    const struct bm_kernels *ref = &bm_kernels_scalar;
    static const size_t lens[] = {0, 1, 63, 64, 65, 130, 200, 2048};
    for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
        size_t n = lens[li];
        for (size_t nrows = 1; nrows <= 9; nrows++)
            for (size_t nshift = 1; nshift <= 7; nshift += 2) {
                size_t pstride = n + 3, gstride = 2 * n + 7, moff = n + 1;
                size_t pbytes = (nshift - 1) * pstride + n, gbytes = (nrows - 1) * gstride + moff + n;
                uint8_t *src = malloc(3 * pbytes + gbytes + 1);
                assert_non_null(src);
                for (size_t i = 0; i < 3 * pbytes + gbytes + 1; i++)
                    src[i] = (uint8_t)next();
                void *b[3];
                const uint8_t *pc = place(src, pbytes, nrows % 64, &b[0]);
                const uint8_t *pm = place(src + pbytes, pbytes, (nrows * 7) % 64, &b[1]);
                const uint8_t *g = place(src + 2 * pbytes, gbytes, (nshift * 5) % 64, &b[2]);
                uint32_t d1[9 * 7], v1[9 * 7], d2[9 * 7], v2[9 * 7];
                ref->iris_rows(pc, pm, pstride, nshift, g, gstride, moff, nrows, n, d1, v1);
                k->iris_rows(pc, pm, pstride, nshift, g, gstride, moff, nrows, n, d2, v2);
                assert_memory_equal(d1, d2, nrows * nshift * 4);
                assert_memory_equal(v1, v2, nrows * nshift * 4);
                for (int i = 0; i < 3; i++)
                    free(b[i]);
                free(src);
            }
    }
}

/* scale_i8 bit for bit, select_ge exactly (NaN never selected, ties at the
 * floor selected), at every length 0..80 and misalignment. */
static void run_filter(const struct bm_kernels *k)
{
    const struct bm_kernels *ref = &bm_kernels_scalar;
    enum { NMAX = 80 };
    int32_t dot[NMAX];
    float gs[NMAX], s[NMAX], o1[NMAX], o2[NMAX + 16];
    uint32_t i1[NMAX], i2[NMAX];
    for (size_t n = 0; n <= NMAX; n++) {
        for (size_t i = 0; i < n; i++) {
            dot[i] = (int32_t)(next() % 4000001) - 2000000;
            gs[i] = (float)(next() % 1000 + 1) / 1e5f;
            switch (next() % 6) {
            case 0: s[i] = NAN; break;
            case 1: s[i] = 0.25f; break;       /* equal to the floor below */
            case 2: s[i] = -INFINITY; break;
            case 3: s[i] = INFINITY; break;
            default: s[i] = frand(); break;
            }
        }
        ref->scale_i8(dot, gs, 0.0123f, n, o1);
        for (size_t off = 0; off < 4; off++) {
            k->scale_i8(dot, gs, 0.0123f, n, o2 + off);
            if (n > 0)
                assert_memory_equal(o1, o2 + off, n * sizeof *o1);
        }
        /* In place, as the search uses it. */
        int32_t inplace[NMAX];
        memcpy(inplace, dot, sizeof dot);
        k->scale_i8(inplace, gs, 0.0123f, n, (float *)(void *)inplace);
        if (n > 0)
            assert_memory_equal(o1, inplace, n * sizeof *o1);
        const float floors[] = {0.25f, -INFINITY, INFINITY, -0.5f};
        for (size_t f = 0; f < 4; f++) {
            size_t c1 = ref->select_ge(s, n, floors[f], i1);
            size_t c2 = k->select_ge(s, n, floors[f], i2);
            assert_int_equal(c1, c2);
            if (c1 > 0)
                assert_memory_equal(i1, i2, c1 * sizeof *i1);
            for (size_t c = 0; c < c1; c++)
                assert_true(s[i1[c]] >= floors[f]);
        }
    }
}

/* Levels this CPU lacks, so their kernels went untested; counted over the
 * whole run and reported by main, so a runner without AVX-512 says so. */
static int skipped_levels[BM_SIMD_AVX512 + 1];

static void for_each_level(void (*fn)(const struct bm_kernels *))
{
    int ran = 0;
    for (int l = BM_SIMD_SCALAR; l <= BM_SIMD_AVX512; l++) {
        const struct bm_kernels *k = bm_kernels_for((enum bm_simd)l);
        if (k == NULL) {
            skipped_levels[l]++;
            continue;
        }
        assert_int_equal(bm_simd_force((enum bm_simd)l), BM_OK);
        assert_ptr_equal(bm_kernels_get(), k);
        fn(k);
        ran++;
    }
    assert_true(ran >= 1);
    bm_simd_force(bm_simd_detect());
}

/* Print which levels were tested and which were skipped; returns how many
 * were skipped. BIOMATCH_TEST_REQUIRE_SIMD=<level> makes a skipped level
 * at or below <level> a failure, for runners that must test it. */
static int report_levels(void)
{
    int skipped = 0;
    enum bm_simd required = BM_SIMD_SCALAR;
    const char *req = getenv("BIOMATCH_TEST_REQUIRE_SIMD");
    if (req != NULL && req[0] != '\0' && bm_simd_parse(req, &required) != BM_OK) {
        fprintf(stderr, "BIOMATCH_TEST_REQUIRE_SIMD=%s: not a SIMD level\n", req);
        return -1;
    }
    for (int l = BM_SIMD_SCALAR; l <= BM_SIMD_AVX512; l++) {
        if (skipped_levels[l] == 0) {
            printf("SIMD level %s: tested\n", bm_simd_name((enum bm_simd)l));
            continue;
        }
        skipped++;
        printf("SIMD level %s: SKIPPED (this CPU lacks it; %d kernel groups untested)\n",
               bm_simd_name((enum bm_simd)l), skipped_levels[l]);
        if (l <= (int)required) {
            fprintf(stderr, "SIMD level %s is required (BIOMATCH_TEST_REQUIRE_SIMD) but was "
                            "skipped\n", bm_simd_name((enum bm_simd)l));
            return -1;
        }
    }
    printf("SIMD levels skipped: %d (CPU features: %s)\n", skipped, bm_cpu_features());
    return skipped;
}

static void test_dots(void **state) { (void)state; for_each_level(run_dots); }
static void test_batches(void **state) { (void)state; for_each_level(run_batches); }
static void test_iris_counts(void **state) { (void)state; for_each_level(run_iris); }
static void test_iris_rows(void **state) { (void)state; for_each_level(run_iris_rows); }
static void test_filter(void **state) { (void)state; for_each_level(run_filter); }

static void test_known_dots(void **state)
{
    (void)state;
    float a[3] = {1, 2, 3}, b[3] = {4, -5, 6};
    int8_t qa[4] = {-128, 127, 1, 0}, qb[4] = {-128, -128, 5, 9};
    for (int l = BM_SIMD_SCALAR; l <= BM_SIMD_AVX512; l++) {
        const struct bm_kernels *k = bm_kernels_for((enum bm_simd)l);
        if (k == NULL)
            continue;
        assert_true(k->dot_f32(a, b, 3) == 12.0f);
        assert_int_equal(k->dot_i8(qa, qb, 4), 16384 - 16256 + 5);
        assert_true(k->dot_f32(a, b, 0) == 0.0f);
    }
}

static void test_f16_conversion(void **state)
{
    (void)state;
    assert_int_equal(bm_f32_to_f16(1.0f), 0x3c00);
    assert_int_equal(bm_f32_to_f16(-2.0f), 0xc000);
    assert_int_equal(bm_f32_to_f16(65504.0f), 0x7bff);
    assert_int_equal(bm_f32_to_f16(1e6f), 0x7c00);
    assert_int_equal(bm_f32_to_f16(5.960464477539063e-08f), 0x0001);
    assert_true(bm_f16_to_f32(0x3555) > 0.333f && bm_f16_to_f32(0x3555) < 0.3334f);
    /* Round trip of every finite half. */
    for (uint32_t h = 0; h < 0x10000; h++) {
        if ((h & 0x7c00) == 0x7c00)
            continue;
        assert_int_equal(bm_f32_to_f16(bm_f16_to_f32((uint16_t)h)), h);
    }
    /* Ties round to even: 1 + 2^-11 is halfway between 1 and 1 + 2^-10. */
    assert_int_equal(bm_f32_to_f16(1.0f + 0.00048828125f), 0x3c00);
}

static void test_cpu(void **state)
{
    (void)state;
    enum bm_simd l;
    assert_int_equal(bm_simd_parse("avx2", &l), BM_OK);
    assert_int_equal(l, BM_SIMD_AVX2);
    assert_int_equal(bm_simd_parse("sse", &l), BM_EINVAL);
    assert_string_equal(bm_simd_name(BM_SIMD_AVX512), "avx512");
    assert_non_null(bm_cpu_features());
    assert_true(strlen(bm_cpu_features()) > 0);
    assert_int_equal(bm_simd_force((enum bm_simd)7), BM_EINVAL);
    if (bm_simd_detect() < BM_SIMD_AVX512)
        assert_int_equal(bm_simd_force(BM_SIMD_AVX512), BM_EUNSUPPORTED);
    assert_true(bm_simd_active() <= bm_simd_detect());
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cpu),
        cmocka_unit_test(test_f16_conversion),
        cmocka_unit_test(test_known_dots),
        cmocka_unit_test(test_dots),
        cmocka_unit_test(test_batches),
        cmocka_unit_test(test_iris_counts),
        cmocka_unit_test(test_iris_rows),
        cmocka_unit_test(test_filter),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    if (report_levels() < 0)
        return 1;
    return failed;
}
