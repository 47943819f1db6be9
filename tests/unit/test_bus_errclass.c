/* The error classification of lib/bus (bm_bus_err_map + bm_err_transient):
 * every librdkafka code a produce call or a delivery report can carry is
 * either per-record permanent (an outcome for that record) or transient
 * (waited out), and "queue full" is no longer the same code as "too large".
 * Then the two paths through a real (mock) cluster: a permanent refusal
 * reaches the callback once, a transient one is waited out and reported
 * to on_wait. */
#include <stdio.h>
#include <string.h>

#include "testutil.h"

#include "bus/bus.h"
#include "bus/internal.h"
#include "bus/mock.h"
#include "common/err.h"

#define WAIT_MS 30000

struct cls {
    rd_kafka_resp_err_t rd;
    int err;
    int transient;
};

static void test_classification(void **state)
{
    (void)state;
    static const struct cls table[] = {
        {RD_KAFKA_RESP_ERR_NO_ERROR, BM_OK, 0},
        /* per-record permanent */
        {RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE, BM_ERANGE, 0},
        {RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE, BM_ERANGE, 0},
        {RD_KAFKA_RESP_ERR_INVALID_MSG_SIZE, BM_ERANGE, 0},
        {RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED, BM_EDENIED, 0},
        {RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED, BM_EDENIED, 0},
        {RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC, BM_ENOTFOUND, 0},
        {RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION, BM_ENOTFOUND, 0},
        {RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART, BM_ENOTFOUND, 0},
        {RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION, BM_EINVAL, 0},
        {RD_KAFKA_RESP_ERR_INVALID_RECORD, BM_EINVAL, 0},
        {RD_KAFKA_RESP_ERR__INVALID_ARG, BM_EINVAL, 0},
        {RD_KAFKA_RESP_ERR_INVALID_MSG, BM_EPROTO, 0},
        {RD_KAFKA_RESP_ERR__BAD_MSG, BM_EPROTO, 0},
        /* transient */
        {RD_KAFKA_RESP_ERR__QUEUE_FULL, BM_EFULL, 1},
        {RD_KAFKA_RESP_ERR__MSG_TIMED_OUT, BM_ETIMEDOUT, 1},
        {RD_KAFKA_RESP_ERR__TIMED_OUT, BM_ETIMEDOUT, 1},
        {RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT, BM_ETIMEDOUT, 1},
        {RD_KAFKA_RESP_ERR__TRANSPORT, BM_EUNAVAIL, 1},
        {RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN, BM_EUNAVAIL, 1},
        {RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS, BM_EUNAVAIL, 1},
        {RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS_AFTER_APPEND, BM_EUNAVAIL, 1},
        {RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE, BM_EUNAVAIL, 1},
        {RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION, BM_EUNAVAIL, 1},
        {RD_KAFKA_RESP_ERR_BROKER_NOT_AVAILABLE, BM_EUNAVAIL, 1},
        {RD_KAFKA_RESP_ERR_KAFKA_STORAGE_ERROR, BM_EUNAVAIL, 1},
        {RD_KAFKA_RESP_ERR_NETWORK_EXCEPTION, BM_EUNAVAIL, 1},
        /* unnamed: waited out loudly rather than dropped */
        {RD_KAFKA_RESP_ERR_UNKNOWN, BM_EKAFKA, 1},
        /* the handle, not the record */
        {RD_KAFKA_RESP_ERR__PURGE_QUEUE, BM_ECLOSED, 0},
        {RD_KAFKA_RESP_ERR__FATAL, BM_ECLOSED, 0},
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        int err = bm_bus_err_map(table[i].rd);
        if (err != table[i].err || bm_err_transient(err) != table[i].transient)
            fail_msg("%s: got %s (transient %d), want %s (transient %d)",
                     rd_kafka_err2name(table[i].rd), bm_strerror(err), bm_err_transient(err),
                     bm_strerror(table[i].err), table[i].transient);
    }
    /* Redis: a dropped connection or a timeout is waited out; an error
     * reply naming the request is not. */
    assert_true(bm_err_transient(BM_EIO));
    assert_true(bm_err_transient(BM_ETIMEDOUT));
    assert_false(bm_err_transient(BM_EREDIS));
    assert_int_not_equal(BM_EFULL, BM_ERANGE);
}

struct outcome {
    int calls, err;
};

static void on_delivery(const struct bm_delivery *d, void *opaque)
{
    struct outcome *o = opaque;
    o->calls++;
    o->err = d->err;
}

struct waits {
    int begun, ended;
};

static void on_wait(void *opaque, int waiting, int err, const char *why)
{
    (void)err;
    (void)why;
    struct waits *w = opaque;
    if (waiting)
        w->begun++;
    else
        w->ended++;
}

static int wait_outcome(struct bm_producer *p, const struct outcome *o)
{
    int64_t deadline = bm_test_now_ms() + WAIT_MS;
    while (o->calls == 0 && bm_test_now_ms() < deadline)
        bm_producer_poll(p, 50);
    return o->calls;
}

/* Produce API key 0. Not enough replicas past message.timeout.ms: re-sent
 * until it lands, and on_wait hears the wait begin and end. Authorisation
 * refused: reported once, not re-sent. */
static void test_permanent_and_transient(void **state)
{
    (void)state;
    char err[256], topic[96];
    struct bm_mock_cluster *mc = bm_mock_cluster_new(1, err, sizeof err);
    assert_non_null(mc);
    bm_test_unique(topic, sizeof topic, "errclass");
    assert_int_equal(bm_mock_cluster_create_topic(mc, topic, 1, err, sizeof err), BM_OK);
    struct waits w = {0};
    static const struct bm_bus_prop props[] = {{"message.timeout.ms", "300"},
                                               {"retry.backoff.ms", "100"}};
    struct bm_bus_conf c = {0};
    c.bootstrap_servers = bm_mock_cluster_bootstraps(mc);
    c.props = props;
    c.nprops = 2;
    c.on_wait = on_wait;
    c.wait_opaque = &w;
    struct bm_producer *p = bm_producer_new(&c, err, sizeof err);
    assert_non_null(p);

    struct outcome ok = {0};
    assert_int_equal(bm_producer_send_wait(p, topic, 0, "k", 1, "v", 1, NULL, 0, BM_SEND_SERVE,
                                           on_delivery, &ok), BM_OK);
    assert_int_equal(wait_outcome(p, &ok), 1);
    assert_int_equal(ok.err, BM_OK);

    /* 19 = NOT_ENOUGH_REPLICAS, for longer than message.timeout.ms */
    assert_int_equal(bm_mock_cluster_fail_requests(mc, 0, 19, 20), BM_OK);
    struct outcome later = {0};
    assert_int_equal(bm_producer_send_wait(p, topic, 0, "k", 1, "v", 1, NULL, 0, BM_SEND_SERVE,
                                           on_delivery, &later), BM_OK);
    assert_int_equal(wait_outcome(p, &later), 1);
    assert_int_equal(later.err, BM_OK);
    assert_true(w.begun >= 1);
    assert_int_equal(w.begun, w.ended);

    /* 29 = TOPIC_AUTHORIZATION_FAILED */
    assert_int_equal(bm_mock_cluster_fail_requests(mc, 0, 29, 1), BM_OK);
    struct outcome denied = {0};
    assert_int_equal(bm_producer_send_wait(p, topic, 0, "k", 1, "v", 1, NULL, 0, BM_SEND_SERVE,
                                           on_delivery, &denied), BM_OK);
    assert_int_equal(wait_outcome(p, &denied), 1);
    assert_int_equal(denied.err, BM_EDENIED);
    /* librdkafka now holds the topic as refused: a send is refused at
     * once, with the same permanent code and no callback. */
    assert_int_equal(bm_producer_send_wait(p, topic, 0, "k", 1, "v", 1, NULL, 0, BM_SEND_SERVE,
                                           on_delivery, &denied), BM_EDENIED);
    assert_int_equal(denied.calls, 1);

    assert_int_equal(bm_producer_flush(p, WAIT_MS), BM_OK);
    bm_producer_free(p);
    bm_mock_cluster_free(mc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_classification),
        cmocka_unit_test(test_permanent_and_transient),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
