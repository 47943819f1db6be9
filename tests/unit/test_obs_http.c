/* obs/http: the in-process server answers /metrics, /livez and /readyz over
 * loopback; a plain socket client (bm_test_http) speaks HTTP/1.0 to it. */
#include "testutil.h"

#include "common/err.h"
#include "obs/http.h"
#include "obs/metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Like bm_test_http, but a failure to connect or to get an answer fails
 * the test. */
static int http_get(int port, const char *method, const char *path, char *body, size_t bodylen)
{
    int status = bm_test_http(port, method, path, body, bodylen);
    if (status < 0)
        fail_msg("%s %s on port %d: no answer", method, path, port);
    return status;
}

static void test_endpoints(void **state)
{
    (void)state;
    char err[256], body[65536];
    struct bm_metrics *m = bm_metrics_new();
    const char *labels[] = {"gallery", "eu", NULL};
    struct bm_counter *c = bm_metrics_counter(m, "bm_tasks_total", "Tasks.", labels,
                                              err, sizeof err);
    bm_counter_add(c, 3);
    struct bm_http_opts o = {"127.0.0.1", 0, m, 60000};
    struct bm_http *h = bm_http_start(&o, err, sizeof err);
    if (h == NULL)
        fail_msg("start: %s", err);
    int port = bm_http_port(h);
    assert_true(port > 0 && port < 65536);

    assert_int_equal(http_get(port, "GET", "/metrics", body, sizeof body), 200);
    assert_non_null(strstr(body, "# TYPE bm_tasks_total counter\n"));
    assert_non_null(strstr(body, "bm_tasks_total{gallery=\"eu\"} 3\n"));

    assert_int_equal(http_get(port, "GET", "/livez", body, sizeof body), 200);

    assert_int_equal(http_get(port, "GET", "/readyz", body, sizeof body), 503);
    assert_non_null(strstr(body, "starting"));
    bm_http_set_ready(h, false, "loading shard 3 of 8");
    assert_int_equal(http_get(port, "GET", "/readyz", body, sizeof body), 503);
    assert_non_null(strstr(body, "loading shard 3 of 8"));
    bm_http_set_ready(h, true, NULL);
    assert_int_equal(http_get(port, "GET", "/readyz", body, sizeof body), 200);

    assert_int_equal(http_get(port, "GET", "/nope", body, sizeof body), 404);
    assert_int_equal(http_get(port, "GET", "/metrics/x", body, sizeof body), 404);
    assert_int_equal(http_get(port, "POST", "/metrics", body, sizeof body), 405);
    assert_int_equal(http_get(port, "HEAD", "/livez", body, sizeof body), 200);

    /* A second server cannot take the same port. */
    struct bm_http_opts o2 = {"127.0.0.1", port, m, 0};
    assert_null(bm_http_start(&o2, err, sizeof err));
    assert_non_null(strstr(err, "cannot listen"));

    bm_http_stop(h);
    bm_metrics_destroy(m);
}

static void test_livez_stale(void **state)
{
    (void)state;
    char err[256], body[1024];
    struct bm_http_opts o = {NULL, 0, NULL, 50};
    struct bm_http *h = bm_http_start(&o, err, sizeof err);
    assert_non_null(h);
    int port = bm_http_port(h);
    /* Without heartbeats the stamp ages past 50 ms; sleeping 200 ms only
     * bounds the wait, the assertion is on the state, not on speed. */
    struct timespec ts = {0, 200 * 1000 * 1000};
    nanosleep(&ts, NULL);
    assert_int_equal(http_get(port, "GET", "/livez", body, sizeof body), 503);
    assert_non_null(strstr(body, "stale"));
    /* A beat makes it live again; retry in case the host stalls for 50 ms
     * between the beat and the request (bounded). */
    int status = 0;
    for (int i = 0; i < 50 && status != 200; i++) {
        bm_http_heartbeat(h);
        status = http_get(port, "GET", "/livez", body, sizeof body);
    }
    assert_int_equal(status, 200);
    /* /metrics with no registry is an empty 200. */
    assert_int_equal(http_get(port, "GET", "/metrics", body, sizeof body), 200);
    assert_string_equal(body, "");
    bm_http_stop(h);
    bm_http_stop(NULL);
}

static void test_bad_options(void **state)
{
    (void)state;
    char err[256];
    struct bm_http_opts o = {"not-an-ip", 0, NULL, 0};
    assert_null(bm_http_start(&o, err, sizeof err));
    assert_non_null(strstr(err, "not a numeric IP"));
    struct bm_http_opts o2 = {"127.0.0.1", 70000, NULL, 0};
    assert_null(bm_http_start(&o2, err, sizeof err));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_endpoints),
        cmocka_unit_test(test_livez_stale),
        cmocka_unit_test(test_bad_options),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
