/* The replay histogram (bench/replay/hist.c, compiled in): percentiles
 * against the exact order statistics of the same values, merge equals
 * recording everything into one, the text form round-trips, and every
 * damaged file is refused. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hist.h"
#include "synth.h"

static struct bm_synth rng = {12345};

static uint64_t rnd(void)
{
    return bm_synth_next(&rng);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Log-uniform values from 1 us to about an hour. */
static uint64_t sample(void)
{
    unsigned bits = (unsigned)(rnd() % 32);
    return (rnd() & ((1ull << bits) - 1)) | (1ull << bits);
}

static void test_layout(void **state)
{
    (void)state;
    char err[256];
    struct bm_hist *h = bm_hist_new(2, (uint64_t)1 << 36, err, sizeof err);
    assert_non_null(h);
    assert_int_equal(h->sub_bits, 8);
    /* Every value maps into a counter whose range holds it, and ranges are
     * contiguous and narrow enough for the promised precision. */
    uint64_t prev_hi = 0;
    for (size_t i = 0; i < h->ncounts; i++) {
        uint64_t lo, hi;
        bm_hist_range(h, i, &lo, &hi);
        assert_true(lo <= hi);
        if (i > 0)
            assert_int_equal(lo, prev_hi + 1);
        assert_true(hi - lo + 1 <= (lo < 256 ? 1 : lo / 128));
        assert_int_equal(bm_hist_index(h, lo), i);
        assert_int_equal(bm_hist_index(h, hi), i);
        prev_hi = hi;
    }
    assert_true(prev_hi >= ((uint64_t)1 << 36));
    bm_hist_free(h);
    assert_null(bm_hist_new(0, 100, err, sizeof err));
    assert_null(bm_hist_new(6, 100, err, sizeof err));
    assert_null(bm_hist_new(2, 0, err, sizeof err));
    bm_hist_free(NULL);
}

static void check_percentiles(unsigned digits, size_t n)
{
    char err[256];
    struct bm_hist *h = bm_hist_new(digits, (uint64_t)1 << 36, err, sizeof err);
    assert_non_null(h);
    uint64_t *v = malloc(n * sizeof *v);
    assert_non_null(v);
    for (size_t i = 0; i < n; i++) {
        v[i] = sample();
        bm_hist_record(h, v[i]);
    }
    qsort(v, n, sizeof *v, cmp_u64);
    double rel = 2.0 / (double)((size_t)1 << h->sub_bits);
    static const double ps[] = { 0, 1, 10, 50, 75, 90, 99, 99.9, 99.99, 100 };
    for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++) {
        double want = ps[i] / 100.0 * (double)n;
        size_t rank = (size_t)want;
        if ((double)rank < want)
            rank++;
        if (rank < 1)
            rank = 1;
        uint64_t exact = v[rank - 1], got = bm_hist_percentile(h, ps[i]);
        assert_true(got >= exact);
        assert_true((double)got <= (double)exact * (1.0 + rel) + 1.0);
    }
    assert_int_equal(bm_hist_percentile(h, 100), v[n - 1]);
    assert_int_equal(h->min, v[0]);
    assert_int_equal(h->total, n);
    free(v);
    bm_hist_free(h);
}

static void test_percentiles(void **state)
{
    (void)state;
    for (unsigned d = 1; d <= 4; d++) {
        check_percentiles(d, 1);
        check_percentiles(d, 7);
        check_percentiles(d, 1000);
        check_percentiles(d, 100000);
    }
}

static void test_small_exact(void **state)
{
    (void)state;
    char err[256];
    struct bm_hist *h = bm_hist_new(2, 1000000, err, sizeof err);
    assert_int_equal(bm_hist_percentile(h, 50), 0); /* empty */
    assert_true(bm_hist_mean(h) == 0.0);
    for (uint64_t i = 1; i <= 100; i++)
        bm_hist_record(h, i);
    assert_int_equal(bm_hist_percentile(h, 50), 50);
    assert_int_equal(bm_hist_percentile(h, 99), 99);
    assert_int_equal(bm_hist_percentile(h, 100), 100);
    assert_true(bm_hist_mean(h) == 50.5);
    bm_hist_record(h, 5000000); /* clamped */
    assert_int_equal(h->clamped, 1);
    assert_int_equal(h->max, 1000000);
    bm_hist_reset(h);
    assert_int_equal(h->total, 0);
    bm_hist_free(h);
}

static int same(const struct bm_hist *a, const struct bm_hist *b)
{
    return a->digits == b->digits && a->max_value == b->max_value && a->total == b->total &&
           a->clamped == b->clamped && a->min == b->min && a->max == b->max && a->sum == b->sum &&
           memcmp(a->counts, b->counts, a->ncounts * sizeof *a->counts) == 0;
}

static void test_merge(void **state)
{
    (void)state;
    char err[256];
    struct bm_hist *a = bm_hist_new(3, 1u << 30, err, sizeof err);
    struct bm_hist *b = bm_hist_new(3, 1u << 30, err, sizeof err);
    struct bm_hist *all = bm_hist_new(3, 1u << 30, err, sizeof err);
    for (int i = 0; i < 50000; i++) {
        uint64_t v = sample();
        bm_hist_record(i % 3 ? a : b, v);
        bm_hist_record(all, v);
    }
    assert_int_equal(bm_hist_merge(a, b), BM_OK);
    assert_true(same(a, all));
    struct bm_hist *other = bm_hist_new(2, 1u << 30, err, sizeof err);
    assert_int_equal(bm_hist_merge(a, other), BM_EINVAL);
    assert_true(same(a, all));
    bm_hist_free(a);
    bm_hist_free(b);
    bm_hist_free(all);
    bm_hist_free(other);
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    char *buf = malloc(1 << 20);
    assert_non_null(buf);
    *len = fread(buf, 1, 1 << 20, f);
    fclose(f);
    return buf;
}

static void test_roundtrip_and_bad(void **state)
{
    (void)state;
    char err[256], path[] = "/tmp/test_hist.XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    struct bm_hist *h = bm_hist_new(2, (uint64_t)1 << 36, err, sizeof err);
    for (int i = 0; i < 20000; i++)
        bm_hist_record(h, sample());
    assert_int_equal(bm_hist_save(h, path, err, sizeof err), BM_OK);
    int rc = -1;
    struct bm_hist *g = bm_hist_load(path, &rc, err, sizeof err);
    assert_non_null(g);
    assert_int_equal(rc, BM_OK);
    assert_true(same(h, g));
    bm_hist_free(g);

    /* An empty histogram round-trips too. */
    bm_hist_reset(h);
    assert_int_equal(bm_hist_save(h, path, err, sizeof err), BM_OK);
    g = bm_hist_load(path, &rc, err, sizeof err);
    assert_non_null(g);
    assert_true(same(h, g));
    bm_hist_free(g);

    for (int i = 0; i < 300; i++)
        bm_hist_record(h, sample());
    assert_int_equal(bm_hist_save(h, path, err, sizeof err), BM_OK);
    size_t len;
    char *text = slurp(path, &len);
    /* Every truncation is refused. */
    for (size_t cut = 0; cut < len; cut++) {
        g = bm_hist_parse(text, cut, &rc, err, sizeof err);
        assert_null(g);
        assert_int_equal(rc, BM_EPROTO);
    }
    /* Targeted damage: each variant must be refused. */
    static const char *const bad[] = {
        "biomatch-hist 2\n",                                   /* version */
        "nothist 1\n",
        "biomatch-hist 1\ndigits 9\nmax_value 100\ncount 0\nclamped 0\nmin 0\nmax 0\nsum 0\nend\n",
        "biomatch-hist 1\ndigits 2\nmax_value 100\ncount 1\nclamped 0\nmin 5\nmax 5\nsum 5\nend\n",
        "biomatch-hist 1\ndigits 2\nmax_value 100\ncount 1\nclamped 0\nmin 5\nmax 5\nsum 5\nc 999999 1\nend\n",
        "biomatch-hist 1\ndigits 2\nmax_value 100\ncount 2\nclamped 0\nmin 5\nmax 6\nsum 11\nc 6 1\nc 5 1\nend\n",
        "biomatch-hist 1\ndigits 2\nmax_value 100\ncount 1\nclamped 0\nmin 5\nmax 5\nsum 5\nc 5 -1\nend\n",
        "biomatch-hist 1\ndigits 2\nmax_value 100\ncount 1\nclamped 0\nmin 5\nmax 5\nsum 5\nc 5 1\nend\nextra\n",
        "biomatch-hist 1\ndigits 2\nmax_value 100\ncount 1\nclamped 0\nmin 5\nmax 500\nsum 5\nc 5 1\nend\n",
        "biomatch-hist 1\ndigits 2\nmax_value 100\ncount 1\nclamped 0\nmin 5\nmax 5\nsum 5\nc 5 0\nend\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        g = bm_hist_parse(bad[i], strlen(bad[i]), &rc, err, sizeof err);
        assert_null(g);
        assert_int_equal(rc, BM_EPROTO);
    }
    /* The good form of the last one parses, so the variants above fail for
     * the damage and not for something else. */
    const char *good =
        "biomatch-hist 1\ndigits 2\nmax_value 100\ncount 1\nclamped 0\nmin 5\nmax 5\nsum 5\nc 5 1\nend\n";
    g = bm_hist_parse(good, strlen(good), &rc, err, sizeof err);
    assert_non_null(g);
    assert_int_equal(bm_hist_percentile(g, 50), 5);
    bm_hist_free(g);
    assert_null(bm_hist_load("/nonexistent/dir/hist", &rc, err, sizeof err));
    assert_int_equal(rc, BM_EIO);
    free(text);
    bm_hist_free(h);
    unlink(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layout),
        cmocka_unit_test(test_percentiles),
        cmocka_unit_test(test_small_exact),
        cmocka_unit_test(test_merge),
        cmocka_unit_test(test_roundtrip_and_bad),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
