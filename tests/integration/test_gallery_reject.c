/* Issue 4 "Done when": malformed enrollments (bytes that do not decode, a
 * NaN, the wrong dimension, an unknown gallery, an over-long subject id,
 * a missing op) are rejected with a clear error -- an EnrollResult on the
 * request's reply topic, or the original record on dlq with an `error`
 * header when there is no reply topic -- while the good requests around
 * them land in the gallery. Every decision leaves an audit record. */
#include "test_gallery_util.h"

struct got {
    int n;
    Biomatch__V1__ErrorCode codes[16];
    char errors[16][256];
};

/* Read every record of partition 0 of 'topic' until 'want' arrived. */
static void read_topic(const char *topic, int want, struct got *out, int dlq)
{
    char err[512];
    struct bm_bus_conf bc = gt_bus();
    struct bm_consumer *c = bm_consumer_new(&bc, NULL, NULL, NULL, err, sizeof err);
    assert_non_null(c);
    struct bm_bus_tp tp = {topic, 0, BM_OFFSET_BEGINNING};
    assert_int_equal(bm_consumer_assign(c, &tp, 1, err, sizeof err), BM_OK);
    memset(out, 0, sizeof *out);
    long long end = bm_test_now_ms() + GT_WAIT_MS;
    while (out->n < want && bm_test_now_ms() < end) {
        struct bm_bus_msg *m = NULL;
        if (bm_consumer_poll(c, 200, &m, err, sizeof err) != BM_OK)
            continue;
        if (dlq) {
            char hv[256];
            assert_int_equal(bm_bus_header_get_str(m->headers, m->nheaders, BM_HDR_ERROR, hv,
                                                   sizeof hv),
                             BM_OK);
            snprintf(out->errors[out->n], sizeof out->errors[0], "%s", hv);
        } else {
            Biomatch__V1__EnrollResult *r =
                bm_wire_decode_enroll_result(m->value, m->valuelen, 1 << 20, err, sizeof err);
            assert_non_null(r);
            assert_int_equal(r->status, BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_REJECTED);
            out->codes[out->n] = r->error_code;
            snprintf(out->errors[out->n], sizeof out->errors[0], "%s", r->error);
            assert_true(strlen(r->error) > 0);
            bm_wire_free_enroll_result(r);
        }
        out->n++;
        bm_bus_msg_free(m);
    }
    bm_consumer_free(c);
}

static void test_malformed_rejected(void **state)
{
    (void)state;
    struct gt g;
    gt_setup(&g, 2, 16 << 20, 200);
    gt_start(&g);
    const int upsert = BIOMATCH__V1__ENROLL_REQUEST__OP__OP_UPSERT;
    char longid[201];
    memset(longid, 'x', 200);
    longid[200] = '\0';

    gt_enroll(&g, g.gallery, "good-1", upsert, 1, 0, g.t_reply);
    static const uint8_t garbage[] = {0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01};
    gt_send_raw(&g, "bad-bytes", garbage, sizeof garbage);          /* -> dlq */
    gt_enroll(&g, g.gallery, "bad-nan", upsert, 2, 1, g.t_reply);    /* INVALID_VALUE */
    gt_enroll(&g, g.gallery, "good-2", upsert, 3, 0, NULL);
    gt_enroll(&g, g.gallery, "bad-dim", upsert, 4, 2, g.t_reply);    /* GEOMETRY_MISMATCH */
    gt_enroll(&g, "no_such_gallery", "bad-gal", upsert, 5, 0, g.t_reply); /* UNKNOWN_GALLERY */
    gt_enroll(&g, g.gallery, longid, upsert, 6, 0, g.t_reply);       /* INVALID_VALUE */
    gt_enroll(&g, g.gallery, "bad-op", 0, 7, 0, g.t_reply);          /* MISSING_FIELD */
    gt_enroll(&g, g.gallery, "good-3", upsert, 8, 0, g.t_reply);
    /* ".." is made of topic characters but is no topic Kafka allows: the
     * request is refused and answered through dlq. */
    gt_enroll(&g, g.gallery, "bad-reply", upsert, 9, 0, "..");
    gt_flush(&g);

    gt_wait_total(&g, 3, GT_WAIT_MS);
    struct gt_view v0, v1;
    assert_int_equal(gt_view_read(&g, 0, &v0), 0);
    assert_int_equal(gt_view_read(&g, 1, &v1), 0);
    const char *good[] = {"good-1", "good-2", "good-3"};
    for (int i = 0; i < 3; i++)
        assert_true((gt_view_find(&v0, good[i]) != NULL) + (gt_view_find(&v1, good[i]) != NULL) ==
                    1);
    gt_view_free(&v0);
    gt_view_free(&v1);

    struct got replies, dlq;
    read_topic(g.t_reply, 5, &replies, 0);
    assert_int_equal(replies.n, 5);
    const Biomatch__V1__ErrorCode want[] = {
        BIOMATCH__V1__ERROR_CODE__ERROR_CODE_INVALID_VALUE,
        BIOMATCH__V1__ERROR_CODE__ERROR_CODE_GEOMETRY_MISMATCH,
        BIOMATCH__V1__ERROR_CODE__ERROR_CODE_UNKNOWN_GALLERY,
        BIOMATCH__V1__ERROR_CODE__ERROR_CODE_INVALID_VALUE,
        BIOMATCH__V1__ERROR_CODE__ERROR_CODE_MISSING_FIELD,
    };
    /* One reply partition, requests on four enroll partitions: compare as
     * multisets. */
    int seen[5] = {0};
    for (int i = 0; i < replies.n; i++) {
        int found = 0;
        for (int j = 0; j < 5 && !found; j++)
            if (!seen[j] && want[j] == replies.codes[i])
                seen[j] = found = 1;
        if (!found)
            fail_msg("unexpected rejection code %d: %s", replies.codes[i], replies.errors[i]);
    }
    read_topic(g.t_dlq, 2, &dlq, 1);
    assert_int_equal(dlq.n, 2);
    int malformed = 0, bad_reply = 0;
    for (int i = 0; i < dlq.n; i++) {
        malformed += strstr(dlq.errors[i], "ERROR_CODE_MALFORMED") != NULL;
        bad_reply += strstr(dlq.errors[i], "reply_topic is not a valid topic name") != NULL;
    }
    assert_int_equal(malformed, 1);
    assert_int_equal(bad_reply, 1);

    /* 10 requests, 10 audit records. */
    struct bm_bus_conf bc = gt_bus();
    char err[256];
    struct bm_consumer *c = bm_consumer_new(&bc, NULL, NULL, NULL, err, sizeof err);
    assert_non_null(c);
    struct bm_bus_tp tp = {g.t_audit, 0, BM_OFFSET_BEGINNING};
    assert_int_equal(bm_consumer_assign(c, &tp, 1, err, sizeof err), BM_OK);
    int n = 0;
    uint64_t maxseq = 0;
    long long end = bm_test_now_ms() + GT_WAIT_MS;
    while (n < 10 && bm_test_now_ms() < end) {
        struct bm_bus_msg *m = NULL;
        if (bm_consumer_poll(c, 200, &m, err, sizeof err) != BM_OK)
            continue;
        Biomatch__V1__AuditRecord *a =
            bm_wire_decode_audit(m->value, m->valuelen, 1 << 20, err, sizeof err);
        assert_non_null(a);
        assert_int_equal(a->hash.len, 32);
        if (a->seq > maxseq)
            maxseq = a->seq;
        bm_wire_free_audit(a);
        bm_bus_msg_free(m);
        n++;
    }
    bm_consumer_free(c);
    assert_int_equal(n, 10);
    assert_int_equal(maxseq, 10);

    assert_int_equal(gt_stop(&g, SIGTERM), 0);
    gt_teardown(&g);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_malformed_rejected),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
