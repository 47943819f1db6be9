/* bus/conf: one kafka: map serves every client of a process, so a property
 * of one kind of client (session.timeout.ms for consumers, linger.ms for
 * producers) must reach only that kind. Before, librdkafka logged a
 * CONFWARN for each such property at every start; the test captures
 * librdkafka's log lines and fails on any CONFWARN. No broker is needed:
 * the warning is logged while the handle is created. */
#include "testutil.h"

#include <string.h>

#include "bus/bus.h"
#include "common/err.h"

static int confwarns;

static void on_log(void *opaque, int level, const char *fac, const char *msg)
{
    (void)opaque;
    (void)level;
    if (strcmp(fac, "CONFWARN") == 0) {
        confwarns++;
        print_message("CONFWARN: %s\n", msg);
    }
}

static const struct bm_bus_prop mixed[] = {
    {"session.timeout.ms", "6000"},     /* consumer only */
    {"heartbeat.interval.ms", "500"},   /* consumer only */
    {"fetch.wait.max.ms", "10"},        /* consumer only */
    {"linger.ms", "2"},                 /* producer only */
    {"socket.keepalive.enable", "true"}, /* both */
};

static struct bm_bus_conf conf_with(const struct bm_bus_prop *props, size_t n)
{
    struct bm_bus_conf c = {0};
    c.bootstrap_servers = "127.0.0.1:1";
    c.client_id = "test_bus_conf";
    c.props = props;
    c.nprops = n;
    c.log = on_log;
    return c;
}

static void test_no_confwarn(void **state)
{
    (void)state;
    char err[512];
    struct bm_bus_conf c = conf_with(mixed, sizeof mixed / sizeof mixed[0]);
    confwarns = 0;
    struct bm_producer *p = bm_producer_new(&c, err, sizeof err);
    if (p == NULL)
        fail_msg("producer: %s", err);
    bm_producer_free(p);
    struct bm_consumer *k = bm_consumer_new(&c, "test_bus_conf.group", NULL, NULL, err, sizeof err);
    if (k == NULL)
        fail_msg("consumer: %s", err);
    bm_consumer_free(k);
    struct bm_admin *a = bm_admin_new(&c, err, sizeof err);
    if (a == NULL)
        fail_msg("admin: %s", err);
    bm_admin_free(a);
    assert_int_equal(confwarns, 0);
}

/* Filtering by kind must not hide a typo: an unknown name still fails the
 * constructor of every kind of client. */
static void test_unknown_property_still_fails(void **state)
{
    (void)state;
    char err[512];
    static const struct bm_bus_prop typo[] = {{"session.timeout.msec", "6000"}};
    struct bm_bus_conf c = conf_with(typo, 1);
    assert_null(bm_producer_new(&c, err, sizeof err));
    assert_non_null(strstr(err, "session.timeout.msec"));
    assert_null(bm_consumer_new(&c, "g", NULL, NULL, err, sizeof err));
    assert_null(bm_admin_new(&c, err, sizeof err));
}

/* A value librdkafka refuses for a property of the client's own kind is
 * still refused (it was applied, not skipped). */
static void test_own_kind_applied(void **state)
{
    (void)state;
    char err[512];
    static const struct bm_bus_prop bad_linger[] = {{"linger.ms", "not-a-number"}};
    struct bm_bus_conf c = conf_with(bad_linger, 1);
    assert_null(bm_producer_new(&c, err, sizeof err));
    static const struct bm_bus_prop bad_session[] = {{"session.timeout.ms", "-5"}};
    c = conf_with(bad_session, 1);
    assert_null(bm_consumer_new(&c, "g", NULL, NULL, err, sizeof err));
    /* ...and skipped for the other kind. */
    struct bm_producer *p = bm_producer_new(&c, err, sizeof err);
    if (p == NULL)
        fail_msg("producer with a consumer-only property: %s", err);
    bm_producer_free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_confwarn),
        cmocka_unit_test(test_unknown_property_still_fails),
        cmocka_unit_test(test_own_kind_applied),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
