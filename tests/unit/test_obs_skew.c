/* The clock skew estimate (lib/obs/skew.h): the smallest local - record
 * difference of the current 30 s window, positive when the local clock is
 * ahead, forgotten when a new window starts, and exported as
 * biomatch_clock_skew_seconds. */
#include "testutil.h"

#include <stdlib.h>
#include <string.h>

#include "obs/metrics.h"
#include "obs/skew.h"

#define T0 INT64_C(1700000000000)

static double rendered(struct bm_metrics *m)
{
    char *out = NULL;
    size_t len = 0;
    assert_int_equal(bm_metrics_render(m, &out, &len), 0);
    const char *p = strstr(out, "\nbiomatch_clock_skew_seconds ");
    assert_non_null(p);
    double v = strtod(p + strlen("\nbiomatch_clock_skew_seconds "), NULL);
    free(out);
    return v;
}

static void test_estimate(void **state)
{
    (void)state;
    char err[128];
    struct bm_metrics *m = bm_metrics_new();
    struct bm_skew *s = bm_skew_new(m, err, sizeof err);
    assert_non_null(s);
    assert_int_equal(bm_skew_ms(s), 0);

    /* Local clock 1.5 s ahead; deliveries take 5..300 ms: the minimum
     * is the skew plus the fastest delivery. */
    bm_skew_observe(s, T0, T0 + 1800);
    bm_skew_observe(s, T0 + 100, T0 + 100 + 1505);
    bm_skew_observe(s, T0 + 200, T0 + 200 + 1700);
    assert_int_equal(bm_skew_ms(s), 1505);
    assert_true(rendered(m) > 1.50 && rendered(m) < 1.51);

    /* Records without a timestamp change nothing. */
    bm_skew_observe(s, -1, T0 + 300);
    bm_skew_observe(s, 0, T0 + 300);
    assert_int_equal(bm_skew_ms(s), 1505);

    /* A new window forgets the old minimum: the clock was fixed and now
     * lags by 0.2 s. */
    int64_t later = T0 + BM_SKEW_WINDOW_MS + 1000;
    bm_skew_observe(s, later + 250, later + 60);
    assert_int_equal(bm_skew_ms(s), -190);
    assert_true(rendered(m) < -0.18 && rendered(m) > -0.20);

    bm_skew_observe(NULL, T0, T0); /* accepted, ignored */
    bm_skew_free(s);
    bm_skew_free(NULL);
    bm_metrics_destroy(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_estimate),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
