/* obs/metrics: exact exposition text, bucket assignment at bounds, label
 * rules, and lock-free updates from many threads summing correctly. */
#include "testutil.h"

#include "common/err.h"
#include "obs/metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char errbuf[256];

static char *render(struct bm_metrics *m)
{
    char *text = NULL;
    size_t len = 0;
    assert_int_equal(bm_metrics_render(m, &text, &len), BM_OK);
    assert_non_null(text);
    assert_int_equal(strlen(text), len);
    return text;
}

static void test_exposition_exact(void **state)
{
    (void)state;
    struct bm_metrics *m = bm_metrics_new();
    assert_non_null(m);
    const char *l_ok[] = {"gallery", "eu", "status", "ok", NULL};
    const char *l_err[] = {"gallery", "eu", "status", "a\"b\\c\nd", NULL};
    struct bm_counter *c1 = bm_metrics_counter(m, "bm_jobs_total", "Jobs seen.\nSecond \\ line",
                                               l_ok, errbuf, sizeof errbuf);
    struct bm_counter *c2 = bm_metrics_counter(m, "bm_jobs_total", "ignored", l_err,
                                               errbuf, sizeof errbuf);
    struct bm_gauge *g = bm_metrics_gauge(m, "bm_shards_loaded", "Shards in memory.", NULL,
                                          errbuf, sizeof errbuf);
    const double bounds[] = {0.1, 1, 2.5};
    const char *l_h[] = {"shard", "3", NULL};
    struct bm_histogram *h = bm_metrics_histogram(m, "bm_batch_seconds", "Batch time.",
                                                  l_h, bounds, 3, errbuf, sizeof errbuf);
    struct bm_histogram *h2 = bm_metrics_histogram(m, "bm_plain_seconds", "No labels.",
                                                   NULL, bounds, 1, errbuf, sizeof errbuf);
    assert_non_null(c1);
    assert_non_null(c2);
    assert_non_null(g);
    assert_non_null(h);
    assert_non_null(h2);
    /* Same name and labels: the same metric back. */
    assert_ptr_equal(bm_metrics_counter(m, "bm_jobs_total", "x", l_ok, errbuf, sizeof errbuf), c1);

    bm_counter_add(c1, 5);
    bm_counter_inc(c2);
    bm_gauge_set(g, 7);
    bm_gauge_add(g, -0.5);
    bm_histogram_observe(h, 0.05);
    bm_histogram_observe(h, 1);
    bm_histogram_observe(h, 100);
    bm_histogram_observe(h2, 0.5);

    char *text = render(m);
    const char *want =
        "# HELP bm_jobs_total Jobs seen.\\nSecond \\\\ line\n"
        "# TYPE bm_jobs_total counter\n"
        "bm_jobs_total{gallery=\"eu\",status=\"ok\"} 5\n"
        "bm_jobs_total{gallery=\"eu\",status=\"a\\\"b\\\\c\\nd\"} 1\n"
        "# HELP bm_shards_loaded Shards in memory.\n"
        "# TYPE bm_shards_loaded gauge\n"
        "bm_shards_loaded 6.5\n"
        "# HELP bm_batch_seconds Batch time.\n"
        "# TYPE bm_batch_seconds histogram\n"
        "bm_batch_seconds_bucket{shard=\"3\",le=\"0.1\"} 1\n"
        "bm_batch_seconds_bucket{shard=\"3\",le=\"1\"} 2\n"
        "bm_batch_seconds_bucket{shard=\"3\",le=\"2.5\"} 2\n"
        "bm_batch_seconds_bucket{shard=\"3\",le=\"+Inf\"} 3\n"
        "bm_batch_seconds_sum{shard=\"3\"} 101.05\n"
        "bm_batch_seconds_count{shard=\"3\"} 3\n"
        "# HELP bm_plain_seconds No labels.\n"
        "# TYPE bm_plain_seconds histogram\n"
        "bm_plain_seconds_bucket{le=\"0.1\"} 0\n"
        "bm_plain_seconds_bucket{le=\"+Inf\"} 1\n"
        "bm_plain_seconds_sum 0.5\n"
        "bm_plain_seconds_count 1\n";
    assert_string_equal(text, want);
    free(text);
    bm_metrics_destroy(m);
}

static void test_empty_and_special_values(void **state)
{
    (void)state;
    struct bm_metrics *m = bm_metrics_new();
    char *text = render(m);
    assert_string_equal(text, "");
    free(text);
    struct bm_gauge *g = bm_metrics_gauge(m, "g", "", NULL, errbuf, sizeof errbuf);
    bm_gauge_set(g, INFINITY);
    text = render(m);
    assert_string_equal(text, "# HELP g \n# TYPE g gauge\ng +Inf\n");
    free(text);
    bm_gauge_set(g, -INFINITY);
    text = render(m);
    assert_non_null(strstr(text, "g -Inf\n"));
    free(text);
    bm_gauge_set(g, NAN);
    text = render(m);
    assert_non_null(strstr(text, "g NaN\n"));
    free(text);
    bm_gauge_set(g, 0.1);
    text = render(m);
    assert_non_null(strstr(text, "g 0.1\n"));
    free(text);
    bm_metrics_destroy(m);
    bm_metrics_destroy(NULL);
    /* NULL metrics are ignored on the hot path. */
    bm_counter_inc(NULL);
    bm_gauge_add(NULL, 1);
    bm_histogram_observe(NULL, 1);
}

static void test_bucket_bounds(void **state)
{
    (void)state;
    struct bm_metrics *m = bm_metrics_new();
    const double b[] = {1, 2, 3};
    struct bm_histogram *h = bm_metrics_histogram(m, "h", "", NULL, b, 3, errbuf, sizeof errbuf);
    assert_non_null(h);
    /* le semantics: a value equal to a bound lands in that bound's bucket. */
    const double vals[] = {-5, 0.999, 1, 1.0000001, 2, 3, 3.0000001, NAN};
    for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++)
        bm_histogram_observe(h, vals[i]);
    char *text = render(m);
    assert_non_null(strstr(text, "h_bucket{le=\"1\"} 3\n"));
    assert_non_null(strstr(text, "h_bucket{le=\"2\"} 5\n"));
    assert_non_null(strstr(text, "h_bucket{le=\"3\"} 6\n"));
    assert_non_null(strstr(text, "h_bucket{le=\"+Inf\"} 8\n"));
    assert_non_null(strstr(text, "h_count 8\n"));
    assert_int_equal(bm_histogram_count(h), 8);
    free(text);

    /* Default latency buckets. */
    struct bm_histogram *d = bm_metrics_histogram(m, "lat_seconds", "", NULL, NULL, 0,
                                                  errbuf, sizeof errbuf);
    assert_non_null(d);
    bm_histogram_observe(d, 0.0005);
    text = render(m);
    assert_non_null(strstr(text, "lat_seconds_bucket{le=\"0.0005\"} 1\n"));
    assert_non_null(strstr(text, "lat_seconds_bucket{le=\"10\"} 1\n"));
    free(text);
    bm_metrics_destroy(m);
}

static void expect_reject(struct bm_metrics *m, const char *name, const char *const *labels,
                          const char *needle)
{
    errbuf[0] = '\0';
    assert_null(bm_metrics_counter(m, name, "", labels, errbuf, sizeof errbuf));
    if (strstr(errbuf, needle) == NULL)
        fail_msg("error '%s' lacks '%s'", errbuf, needle);
}

static void test_label_rules(void **state)
{
    (void)state;
    struct bm_metrics *m = bm_metrics_new();
    const char *job[] = {"job", "x", NULL};
    const char *job_id[] = {"gallery", "g", "job_id", "x", NULL};
    const char *subject[] = {"subject", "x", NULL};
    const char *subject_id[] = {"Subject_ID", "x", NULL};
    const char *le[] = {"le", "1", NULL};
    const char *under[] = {"__x", "1", NULL};
    const char *digit[] = {"1x", "1", NULL};
    const char *dup[] = {"a", "1", "a", "2", NULL};
    const char *noval[] = {"a", NULL};
    expect_reject(m, "c", job, "forbidden");
    expect_reject(m, "c", job_id, "forbidden");
    expect_reject(m, "c", subject, "forbidden");
    expect_reject(m, "c", subject_id, "forbidden");
    expect_reject(m, "c", le, "invalid label");
    expect_reject(m, "c", under, "invalid label");
    expect_reject(m, "c", digit, "invalid label");
    expect_reject(m, "c", dup, "duplicate");
    expect_reject(m, "c", noval, "no value");
    expect_reject(m, "9bad", NULL, "invalid metric name");
    expect_reject(m, "bad-name", NULL, "invalid metric name");
    expect_reject(m, "", NULL, "invalid metric name");
    /* Type conflicts and bound conflicts. */
    assert_non_null(bm_metrics_gauge(m, "g", "", NULL, errbuf, sizeof errbuf));
    expect_reject(m, "g", NULL, "already a gauge");
    const double b1[] = {1, 2}, b2[] = {1, 3}, bad[] = {2, 1};
    assert_non_null(bm_metrics_histogram(m, "h", "", NULL, b1, 2, errbuf, sizeof errbuf));
    assert_null(bm_metrics_histogram(m, "h", "", NULL, b2, 2, errbuf, sizeof errbuf));
    assert_non_null(strstr(errbuf, "other bounds"));
    assert_null(bm_metrics_histogram(m, "h2", "", NULL, bad, 2, errbuf, sizeof errbuf));
    assert_non_null(strstr(errbuf, "increasing"));
    /* Rejected registrations leave nothing behind. */
    char *text = render(m);
    assert_null(strstr(text, "\nc "));
    assert_null(strstr(text, "h2"));
    free(text);
    bm_metrics_destroy(m);
}

#define THREADS 4
#define ITERS 100000

struct shared {
    struct bm_counter *c;
    struct bm_gauge *g;
    struct bm_histogram *h;
};

static void *hammer(void *arg)
{
    struct shared *s = arg;
    for (int i = 0; i < ITERS; i++) {
        bm_counter_inc(s->c);
        bm_gauge_add(s->g, 1);
        bm_histogram_observe(s->h, (i % 2) ? 0.5 : 2.0);
    }
    return NULL;
}

static void test_concurrent_updates(void **state)
{
    (void)state;
    struct bm_metrics *m = bm_metrics_new();
    const double b[] = {1};
    struct shared s = {
        bm_metrics_counter(m, "c_total", "", NULL, errbuf, sizeof errbuf),
        bm_metrics_gauge(m, "g", "", NULL, errbuf, sizeof errbuf),
        bm_metrics_histogram(m, "h", "", NULL, b, 1, errbuf, sizeof errbuf),
    };
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, hammer, &s), 0);
    /* Render while others update: must not crash or tear. */
    for (int i = 0; i < 20; i++)
        free(render(m));
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    assert_int_equal(bm_counter_get(s.c), (uint64_t)THREADS * ITERS);
    assert_true(bm_gauge_get(s.g) == (double)THREADS * ITERS);
    assert_int_equal(bm_histogram_count(s.h), (uint64_t)THREADS * ITERS);
    char *text = render(m);
    char want[128];
    snprintf(want, sizeof want, "h_bucket{le=\"1\"} %d\n", THREADS * ITERS / 2);
    assert_non_null(strstr(text, want));
    snprintf(want, sizeof want, "h_sum %d\n", THREADS * ITERS / 2 * 2 + THREADS * ITERS / 4);
    assert_non_null(strstr(text, want));
    free(text);
    bm_metrics_destroy(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exposition_exact),
        cmocka_unit_test(test_empty_and_special_values),
        cmocka_unit_test(test_bucket_bounds),
        cmocka_unit_test(test_label_rules),
        cmocka_unit_test(test_concurrent_updates),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
