/* Unit tests of lib/bus against librdkafka's in-process mock cluster: no
 * network beyond loopback sockets inside this process. What the mock cannot
 * emulate (static membership, compaction, a real cooperative handover) is
 * tested against the real broker in tests/integration/test_kafka.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#include "bus/bus.h"
#include "bus/mock.h"
#include "common/err.h"

#define WAIT_MS 30000 /* bound on every wait; generous for a loaded CI box */

struct dr_count {
    int ok, failed, closed;
    int64_t last_offset;
};

static void on_delivery(const struct bm_delivery *d, void *opaque)
{
    struct dr_count *c = opaque;
    if (d->err == BM_OK) {
        c->ok++;
        c->last_offset = d->offset;
    } else if (d->err == BM_ECLOSED) {
        c->closed++;
    } else {
        c->failed++;
    }
}

static void must_not_be_called(const struct bm_delivery *d, void *opaque)
{
    (void)d;
    (void)opaque;
    fail_msg("delivery callback called for a refused send");
}

static struct bm_bus_conf conf_for(const char *bootstraps)
{
    struct bm_bus_conf c = {0};
    c.bootstrap_servers = bootstraps;
    c.client_id = "test_bus_mock";
    return c;
}

struct fixture {
    struct bm_mock_cluster *mc;
    struct bm_bus_conf conf;
};

static int setup(void **state)
{
    char err[256];
    struct fixture *f = calloc(1, sizeof *f);
    f->mc = bm_mock_cluster_new(3, err, sizeof err);
    if (f->mc == NULL) {
        fprintf(stderr, "mock cluster: %s\n", err);
        free(f);
        return -1;
    }
    f->conf = conf_for(bm_mock_cluster_bootstraps(f->mc));
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    bm_mock_cluster_free(f->mc);
    free(f);
    return 0;
}

static void test_headers_helpers(void **state)
{
    (void)state;
    struct bm_bus_headers h;
    char buf[64];
    bm_bus_headers_init(&h);
    assert_int_equal(bm_bus_headers_add_str(&h, BM_HDR_CONTENT_TYPE,
                                            "application/x-protobuf"), BM_OK);
    assert_int_equal(bm_bus_headers_add_str(&h, BM_HDR_TRACEPARENT, "tp-1"), BM_OK);
    assert_int_equal(bm_bus_headers_add_str(&h, BM_HDR_TRACEPARENT, "tp-2"), BM_OK);
    assert_int_equal(bm_bus_headers_add(&h, "bin", "a\0b", 3), BM_OK);
    assert_int_equal(bm_bus_headers_add(&h, "null", NULL, 0), BM_OK);
    assert_int_equal(bm_bus_headers_add(&h, "bad", NULL, 4), BM_EINVAL);
    /* The last of repeated headers wins. */
    assert_int_equal(bm_bus_header_get_str(h.v, h.n, BM_HDR_TRACEPARENT, buf,
                                           sizeof buf), BM_OK);
    assert_string_equal(buf, "tp-2");
    assert_int_equal(bm_bus_header_get_str(h.v, h.n, BM_HDR_ERROR, buf, sizeof buf),
                     BM_ENOTFOUND);
    assert_string_equal(buf, "");
    assert_int_equal(bm_bus_header_get_str(h.v, h.n, "bin", buf, sizeof buf),
                     BM_ERANGE);
    assert_int_equal(bm_bus_header_get_str(h.v, h.n, BM_HDR_CONTENT_TYPE, buf, 5),
                     BM_ERANGE);
    assert_int_equal(bm_bus_header_get_str(h.v, h.n, "null", buf, sizeof buf), BM_OK);
    assert_string_equal(buf, "");
    while (h.n < BM_BUS_MAX_HEADERS)
        assert_int_equal(bm_bus_headers_add_str(&h, "x", "y"), BM_OK);
    assert_int_equal(bm_bus_headers_add_str(&h, "x", "y"), BM_ERANGE);
    assert_int_equal((int)h.n, BM_BUS_MAX_HEADERS);
}

static void test_bad_config(void **state)
{
    (void)state;
    char err[256] = "";
    struct bm_bus_prop props[] = {{"no.such.property", "1"}};
    struct bm_bus_conf c = conf_for("127.0.0.1:1");
    c.props = props;
    c.nprops = 1;
    assert_null(bm_producer_new(&c, err, sizeof err));
    assert_non_null(strstr(err, "no.such.property"));
    assert_null(bm_consumer_new(&c, "g", NULL, NULL, err, sizeof err));
    struct bm_bus_conf none = {0};
    assert_null(bm_producer_new(&none, err, sizeof err));
    assert_null(bm_consumer_new(&none, NULL, "inst", NULL, err, sizeof err));
    bm_producer_free(NULL);
    bm_consumer_free(NULL);
    bm_admin_free(NULL);
    bm_mock_cluster_free(NULL);
    bm_bus_msg_free(NULL);
}

/* A refused send never calls back; an accepted one calls back exactly once,
 * even when the producer is freed before the message could be delivered. */
static void test_callback_contract(void **state)
{
    (void)state;
    char err[256];
    struct bm_bus_conf c = conf_for("127.0.0.1:1"); /* nothing listens there */
    struct bm_producer *p = bm_producer_new(&c, err, sizeof err);
    assert_non_null(p);
    assert_int_equal(bm_producer_send(p, "t", -7, "k", 1, "v", 1, NULL, 0,
                                      must_not_be_called, NULL), BM_EINVAL);
    assert_int_equal(bm_producer_send(p, NULL, 0, "k", 1, "v", 1, NULL, 0,
                                      must_not_be_called, NULL), BM_EINVAL);
    struct bm_bus_header bad = {NULL, "v", 1};
    assert_int_equal(bm_producer_send(p, "t", 0, "k", 1, "v", 1, &bad, 1,
                                      must_not_be_called, NULL), BM_EINVAL);
    struct dr_count dc = {0};
    for (int i = 0; i < 3; i++)
        assert_int_equal(bm_producer_send(p, "t", BM_PARTITION_ANY, "k", 1, "v", 1,
                                          NULL, 0, on_delivery, &dc), BM_OK);
    assert_int_equal(bm_producer_poll(p, 0) >= 0, 1);
    assert_int_equal(bm_producer_fatal(p, err, sizeof err), BM_OK);
    bm_producer_free(p);
    assert_int_equal(dc.ok + dc.failed, 0);
    assert_int_equal(dc.closed, 3);
}

#define NMSG 40

struct seen {
    int count;
    int times[NMSG]; /* how often message i was processed */
    int assigned, revoked;
    int pause_on_assign;
};

/* Check one message of the NMSG-message batch and return its index. */
static int check_msg(const struct bm_bus_msg *m, const char *topic)
{
    char buf[32], want[32];
    assert_string_equal(m->topic, topic);
    assert_true(m->valuelen > 4 && m->valuelen < sizeof buf);
    memcpy(buf, m->value, m->valuelen);
    buf[m->valuelen] = '\0';
    assert_memory_equal(buf, "msg-", 4);
    char *end = NULL;
    long idx = strtol(buf + 4, &end, 10);
    assert_true(*end == '\0' && idx >= 0 && idx < NMSG);
    snprintf(want, sizeof want, "key-%ld", idx);
    assert_int_equal(m->keylen, strlen(want));
    assert_memory_equal(m->key, want, m->keylen);
    assert_int_equal(bm_bus_header_get_str(m->headers, m->nheaders,
                                           BM_HDR_TRACEPARENT, buf, sizeof buf),
                     BM_OK);
    snprintf(want, sizeof want, "tp-%ld", idx);
    assert_string_equal(buf, want);
    assert_int_equal(bm_bus_header_get_str(m->headers, m->nheaders,
                                           BM_HDR_CONTENT_TYPE, buf, sizeof buf),
                     BM_OK);
    assert_string_equal(buf, "text/plain");
    assert_true(m->timestamp_ms > 0);
    return (int)idx;
}

/* Poll until 'want' messages in total were processed or the bound passes.
 * With 'store', each message's offset is stored after it was counted, as a
 * worker stores after its result was delivered. */
static void consume_until(struct bm_consumer *c, struct seen *s, int want,
                          const char *topic, int store)
{
    char err[256];
    int64_t deadline = bm_test_now_ms() + WAIT_MS;
    while (s->count < want && bm_test_now_ms() < deadline) {
        struct bm_bus_msg *m = NULL;
        int rc = bm_consumer_poll(c, 100, &m, err, sizeof err);
        if (rc == BM_ETIMEDOUT)
            continue;
        if (rc != BM_OK) {
            fprintf(stderr, "poll: %s\n", err);
            continue;
        }
        int idx = check_msg(m, topic);
        s->times[idx]++;
        s->count++;
        if (store)
            assert_int_equal(bm_consumer_store(c, m), BM_OK);
        bm_bus_msg_free(m);
    }
    assert_int_equal(s->count, want);
}

static void produce_batch(const struct bm_bus_conf *conf, const char *topic,
                          int32_t partition)
{
    char err[256];
    struct bm_producer *p = bm_producer_new(conf, err, sizeof err);
    assert_non_null(p);
    struct dr_count dc = {0};
    for (int i = 0; i < NMSG; i++) {
        char key[32], val[32], tp[32];
        snprintf(key, sizeof key, "key-%d", i);
        snprintf(val, sizeof val, "msg-%d", i);
        snprintf(tp, sizeof tp, "tp-%d", i);
        struct bm_bus_headers h;
        bm_bus_headers_init(&h);
        assert_int_equal(bm_bus_headers_add_str(&h, BM_HDR_CONTENT_TYPE, "text/plain"), BM_OK);
        assert_int_equal(bm_bus_headers_add_str(&h, BM_HDR_TRACEPARENT, tp), BM_OK);
        /* The stack buffers change right after the call: send must copy. */
        assert_int_equal(bm_producer_send(p, topic, partition, key, strlen(key), val,
                                          strlen(val), h.v, h.n, on_delivery, &dc),
                         BM_OK);
        memset(val, 'X', sizeof val - 1);
        bm_producer_poll(p, 0);
    }
    assert_int_equal(bm_producer_flush(p, WAIT_MS), BM_OK);
    assert_int_equal(bm_producer_outstanding(p), 0);
    assert_int_equal(dc.ok, NMSG);
    assert_int_equal(dc.failed + dc.closed, 0);
    assert_int_equal(bm_producer_fatal(p, err, sizeof err), BM_OK);
    bm_producer_free(p);
}

static void on_assign(struct bm_consumer *c, const struct bm_bus_tp *tps, size_t n,
                      void *opaque)
{
    struct seen *s = opaque;
    s->assigned += (int)n;
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(tps[i].offset, BM_OFFSET_INVALID);
        if (s->pause_on_assign)
            assert_int_equal(bm_consumer_pause(c, tps[i].topic, tps[i].partition),
                             BM_OK);
    }
}

static void on_revoke(struct bm_consumer *c, const struct bm_bus_tp *tps, size_t n,
                      int lost, void *opaque)
{
    (void)c;
    (void)tps;
    (void)lost;
    struct seen *s = opaque;
    s->revoked += (int)n;
}

/* Produce with headers, consume in a group, store offsets after processing,
 * commit, and find the commit both in committed() and in a restarted
 * member that gets nothing again. */
static void test_round_trip_store_commit(void **state)
{
    struct fixture *f = *state;
    char err[256], topic[96], group[96];
    bm_test_unique(topic, sizeof topic, "rt");
    bm_test_unique(group, sizeof group, "g");
    assert_int_equal(bm_mock_cluster_create_topic(f->mc, topic, 3, err, sizeof err), BM_OK);
    produce_batch(&f->conf, topic, BM_PARTITION_ANY);

    struct seen s = {0};
    struct bm_consumer_callbacks cbs = {on_assign, on_revoke, &s};
    struct bm_consumer *c = bm_consumer_new(&f->conf, group, NULL, &cbs, err, sizeof err);
    assert_non_null(c);
    const char *topics[] = {topic};
    assert_int_equal(bm_consumer_subscribe(c, topics, 1, err, sizeof err), BM_OK);
    consume_until(c, &s, NMSG, topic, 1);
    for (int i = 0; i < NMSG; i++)
        assert_int_equal(s.times[i], 1);
    assert_int_equal(s.assigned, 3);

    struct bm_bus_tp *as = NULL;
    size_t nas = 0;
    assert_int_equal(bm_consumer_assignment(c, &as, &nas), BM_OK);
    assert_int_equal((int)nas, 3);
    free(as);

    assert_int_equal(bm_consumer_commit(c, 1, err, sizeof err), BM_OK);
    struct bm_bus_tp tps[3];
    for (int p = 0; p < 3; p++)
        tps[p] = (struct bm_bus_tp){topic, p, BM_OFFSET_INVALID};
    assert_int_equal(bm_consumer_committed(c, tps, 3, WAIT_MS, err, sizeof err), BM_OK);
    int64_t total = 0;
    for (int p = 0; p < 3; p++)
        total += tps[p].offset == BM_OFFSET_INVALID ? 0 : tps[p].offset;
    assert_int_equal((int)total, NMSG); /* every partition committed up to its end */

    assert_int_equal(bm_consumer_close(c, err, sizeof err), BM_OK);
    assert_int_equal(bm_consumer_close(c, err, sizeof err), BM_OK); /* idempotent */
    assert_int_equal(s.revoked, 3);
    bm_consumer_free(c);

    /* Storing for a partition we do not own is refused, not silently lost. */
    struct bm_consumer *c2 = bm_consumer_new(&f->conf, group, NULL, NULL, err, sizeof err);
    assert_non_null(c2);
    assert_int_equal(bm_consumer_store_offset(c2, topic, 0, 1), BM_ECONFLICT);
    bm_consumer_free(c2);
}

/* Poll until 'want' messages arrived, checking that each partition's
 * offsets come in order from 0 with no gap and no repeat. */
static void consume_in_order(struct bm_consumer *c, const char *topic, int want,
                             int64_t *next, int nparts)
{
    char err[256];
    int got = 0;
    int64_t deadline = bm_test_now_ms() + WAIT_MS;
    while (got < want && bm_test_now_ms() < deadline) {
        struct bm_bus_msg *m = NULL;
        if (bm_consumer_poll(c, 100, &m, err, sizeof err) != BM_OK)
            continue;
        check_msg(m, topic);
        assert_true(m->partition >= 0 && m->partition < nparts);
        assert_int_equal(m->offset, next[m->partition]);
        next[m->partition]++;
        got++;
        bm_bus_msg_free(m);
    }
    assert_int_equal(got, want);
}

/* The worker pattern: pause every partition in on_assign (loading a
 * shard), see nothing while paused, resume and get everything exactly
 * once. The pause is deferred until each partition's first message, which
 * is held back; the resume hands the held messages out first, so each
 * partition still arrives in order, nothing lost or doubled. */
static void test_held_messages_come_first_in_order(void **state)
{
    struct fixture *f = *state;
    char err[256], topic[96], group[96];
    bm_test_unique(topic, sizeof topic, "held");
    bm_test_unique(group, sizeof group, "g");
    assert_int_equal(bm_mock_cluster_create_topic(f->mc, topic, 2, err, sizeof err), BM_OK);
    produce_batch(&f->conf, topic, BM_PARTITION_ANY);

    struct seen s = {0};
    s.pause_on_assign = 1;
    struct bm_consumer_callbacks cbs = {on_assign, on_revoke, &s};
    struct bm_consumer *c = bm_consumer_new(&f->conf, group, NULL, &cbs, err, sizeof err);
    assert_non_null(c);
    const char *topics[] = {topic};
    assert_int_equal(bm_consumer_subscribe(c, topics, 1, err, sizeof err), BM_OK);
    struct bm_bus_msg *m = NULL;
    int64_t deadline = bm_test_now_ms() + WAIT_MS;
    while (s.assigned < 2 && bm_test_now_ms() < deadline)
        assert_int_not_equal(bm_consumer_poll(c, 50, &m, err, sizeof err), BM_OK);
    assert_int_equal(s.assigned, 2);
    /* Long enough for the first messages to be fetched and held. */
    for (int i = 0; i < 20; i++)
        assert_int_not_equal(bm_consumer_poll(c, 50, &m, err, sizeof err), BM_OK);
    /* Pausing again changes nothing; resuming twice is harmless. */
    assert_int_equal(bm_consumer_pause(c, topic, 0), BM_OK);
    for (int p = 0; p < 2; p++)
        assert_int_equal(bm_consumer_resume(c, topic, p), BM_OK);
    assert_int_equal(bm_consumer_resume(c, topic, 0), BM_OK);
    /* Paused again before the held messages were polled: they are held
     * again, not lost and not handed out while paused. */
    for (int p = 0; p < 2; p++)
        assert_int_equal(bm_consumer_pause(c, topic, p), BM_OK);
    for (int i = 0; i < 5; i++)
        assert_int_not_equal(bm_consumer_poll(c, 50, &m, err, sizeof err), BM_OK);
    for (int p = 0; p < 2; p++)
        assert_int_equal(bm_consumer_resume(c, topic, p), BM_OK);
    int64_t next[2] = {0, 0};
    consume_in_order(c, topic, NMSG, next, 2);
    assert_int_equal((int)(next[0] + next[1]), NMSG);
    for (int i = 0; i < 3; i++)
        assert_int_equal(bm_consumer_poll(c, 50, &m, err, sizeof err), BM_ETIMEDOUT);
    bm_consumer_free(c);
}

/* Outside on_assign too: a partition paused before it delivered anything
 * (here right after a manual assign) is held, then resumed in order. */
static void test_pause_before_first_message(void **state)
{
    struct fixture *f = *state;
    char err[256], topic[96];
    bm_test_unique(topic, sizeof topic, "fresh");
    assert_int_equal(bm_mock_cluster_create_topic(f->mc, topic, 1, err, sizeof err), BM_OK);
    produce_batch(&f->conf, topic, 0);
    struct bm_consumer *c = bm_consumer_new(&f->conf, NULL, NULL, NULL, err, sizeof err);
    assert_non_null(c);
    struct bm_bus_tp tp = {topic, 0, BM_OFFSET_BEGINNING};
    assert_int_equal(bm_consumer_assign(c, &tp, 1, err, sizeof err), BM_OK);
    assert_int_equal(bm_consumer_pause(c, topic, 0), BM_OK);
    struct bm_bus_msg *m = NULL;
    for (int i = 0; i < 10; i++)
        assert_int_not_equal(bm_consumer_poll(c, 100, &m, err, sizeof err), BM_OK);
    assert_int_equal(bm_consumer_resume(c, topic, 0), BM_OK);
    int64_t next[1] = {0};
    consume_in_order(c, topic, NMSG, next, 1);
    bm_consumer_free(c);
}

/* Manual (group-less) mode: read one partition from the beginning, pause in
 * the middle, resume, and get every message exactly once, in order. */
static void test_manual_assign_pause_resume(void **state)
{
    struct fixture *f = *state;
    char err[256], topic[96];
    bm_test_unique(topic, sizeof topic, "tail");
    assert_int_equal(bm_mock_cluster_create_topic(f->mc, topic, 1, err, sizeof err), BM_OK);
    produce_batch(&f->conf, topic, 0);

    struct bm_consumer *c = bm_consumer_new(&f->conf, NULL, NULL, NULL, err, sizeof err);
    assert_non_null(c);
    const char *topics[] = {topic};
    assert_int_equal(bm_consumer_subscribe(c, topics, 1, err, sizeof err), BM_EINVAL);
    struct bm_bus_tp tp = {topic, 0, BM_OFFSET_BEGINNING};
    { int arc = bm_consumer_assign(c, &tp, 1, err, sizeof err); if (arc != BM_OK) fail_msg("assign: %s", err); }

    struct seen s = {0};
    int64_t next = 0;
    int64_t deadline = bm_test_now_ms() + WAIT_MS;
    int paused_once = 0;
    while (s.count < NMSG && bm_test_now_ms() < deadline) {
        struct bm_bus_msg *m = NULL;
        int rc = bm_consumer_poll(c, 100, &m, err, sizeof err);
        if (rc != BM_OK)
            continue;
        assert_int_equal(m->offset, next); /* in order, no gap, no repeat */
        assert_int_equal(check_msg(m, topic), (int)next);
        next++;
        s.count++;
        bm_bus_msg_free(m);
        if (s.count == NMSG / 2 && !paused_once) {
            paused_once = 1;
            assert_int_equal(bm_consumer_pause(c, topic, 0), BM_OK);
            for (int i = 0; i < 3; i++)
                assert_int_equal(bm_consumer_poll(c, 100, &m, err, sizeof err),
                                 BM_ETIMEDOUT);
            assert_int_equal(bm_consumer_resume(c, topic, 0), BM_OK);
        }
    }
    assert_int_equal(s.count, NMSG);
    assert_int_equal(bm_consumer_pause(c, "not-assigned", 0), BM_EKAFKA);
    int rc = bm_consumer_close(c, err, sizeof err);
    if (rc != BM_OK)
        fail_msg("close: %s", err);
    bm_consumer_free(c);
}

/* An idempotence failure the producer cannot recover from is reported as
 * fatal, and later sends are refused without calling back. */
static void test_fatal_error(void **state)
{
    struct fixture *f = *state;
    char err[256], topic[96];
    bm_test_unique(topic, sizeof topic, "fatal");
    assert_int_equal(bm_mock_cluster_create_topic(f->mc, topic, 1, err, sizeof err), BM_OK);
    /* 22 = InitProducerId, 31 = CLUSTER_AUTHORIZATION_FAILED. */
    assert_int_equal(bm_mock_cluster_fail_requests(f->mc, 22, 31, 1), BM_OK);
    struct bm_producer *p = bm_producer_new(&f->conf, err, sizeof err);
    assert_non_null(p);
    struct dr_count dc = {0};
    assert_int_equal(bm_producer_send(p, topic, 0, "k", 1, "v", 1, NULL, 0,
                                      on_delivery, &dc), BM_OK);
    int64_t deadline = bm_test_now_ms() + WAIT_MS;
    while (bm_producer_fatal(p, err, sizeof err) == BM_OK && bm_test_now_ms() < deadline)
        bm_producer_poll(p, 100);
    assert_int_equal(bm_producer_fatal(p, err, sizeof err), BM_EKAFKA);
    printf("fatal: %s\n", err);
    assert_int_equal(bm_producer_send(p, topic, 0, "k", 1, "v", 1, NULL, 0,
                                      must_not_be_called, NULL), BM_ECLOSED);
    struct bm_bus_headers h;
    bm_bus_headers_init(&h);
    assert_int_equal(bm_bus_headers_add_str(&h, BM_HDR_ERROR, "x"), BM_OK);
    /* Refused with headers: they are freed here, not leaked (ASan). */
    assert_int_equal(bm_producer_send(p, topic, 0, "k", 1, "v", 1, h.v, h.n,
                                      must_not_be_called, NULL), BM_ECLOSED);
    bm_producer_free(p);
    assert_int_equal(dc.ok, 0);
    assert_int_equal(dc.failed + dc.closed, 1); /* the accepted one reported once */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_headers_helpers),
        cmocka_unit_test(test_bad_config),
        cmocka_unit_test(test_callback_contract),
        cmocka_unit_test_setup_teardown(test_round_trip_store_commit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_held_messages_come_first_in_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pause_before_first_message, setup, teardown),
        cmocka_unit_test_setup_teardown(test_manual_assign_pause_resume, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fatal_error, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
