/* Integration test of authorisation and signatures on enrollment: a real
 * biomatch-coordinator (gallery role) with security.policy_file in its
 * configuration. Agency "test-agency" must sign and may only enroll;
 * agency "other" may enroll and delete unsigned. Requests: unsigned from
 * test-agency (BAD_SIGNATURE), signed (lands in the gallery), a signed
 * delete (UNAUTHORIZED: delete not granted), a signature copied onto other
 * bytes (BAD_SIGNATURE), an agency not in the policy (UNAUTHORIZED), and an
 * unsigned upsert by "other" (lands). Every rejection is an EnrollResult
 * REJECTED on the reply topic, and every decision leaves an audit record. */
#include "test_gallery_util.h"

#include "conf/policy.h"

static char policy_path[300];
static const char *gallery;

static uint8_t *make_req(const char *agency, const char *subject, int op, uint64_t seed,
                         const char *reply, size_t *len)
{
    Biomatch__V1__EnrollRequest req = BIOMATCH__V1__ENROLL_REQUEST__INIT;
    Biomatch__V1__Template t = BIOMATCH__V1__TEMPLATE__INIT;
    Biomatch__V1__DenseEmbedding d = BIOMATCH__V1__DENSE_EMBEDDING__INIT;
    int8_t q[512];
    char rid[160];
    snprintf(rid, sizeof rid, "r-%s", subject);
    req.request_id = rid;
    req.agency = (char *)agency;
    req.gallery = (char *)gallery;
    req.op = op;
    req.subject_id = (char *)subject;
    req.reply_topic = (char *)reply;
    if (op == BIOMATCH__V1__ENROLL_REQUEST__OP__OP_UPSERT) {
        gt_vector(q, 512, seed);
        t.modality = BIOMATCH__V1__MODALITY__MODALITY_FACE;
        t.kind_case = BIOMATCH__V1__TEMPLATE__KIND_DENSE;
        t.dense = &d;
        d.dim = 512;
        d.element_type = BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_INT8;
        d.data.data = (uint8_t *)q;
        d.data.len = 512;
        d.scale = 0.01f;
        req.template_ = &t;
    }
    return bm_wire_encode(&req.base, len);
}

static void send_signed(struct gt *g, const char *key, const uint8_t *val, size_t len,
                        const char *sig)
{
    struct bm_bus_headers h;
    bm_bus_headers_init(&h);
    if (sig != NULL)
        bm_bus_headers_add_str(&h, BM_POLICY_SIG_HEADER, sig);
    assert_int_equal(bm_producer_send(g->producer, g->t_enroll, BM_PARTITION_ANY, key,
                                      strlen(key), val, len, h.v, h.n, gt_delivery, &gt_failed),
                     BM_OK);
}

static int count_records(const char *topic, int want)
{
    char err[512];
    struct bm_bus_conf bc = gt_bus();
    struct bm_consumer *c = bm_consumer_new(&bc, NULL, NULL, NULL, err, sizeof err);
    assert_non_null(c);
    struct bm_bus_tp tp = {topic, 0, BM_OFFSET_BEGINNING};
    assert_int_equal(bm_consumer_assign(c, &tp, 1, err, sizeof err), BM_OK);
    int n = 0;
    long long end = bm_test_now_ms() + GT_WAIT_MS;
    while (n < want && bm_test_now_ms() < end) {
        struct bm_bus_msg *m = NULL;
        if (bm_consumer_poll(c, 200, &m, err, sizeof err) != BM_OK || m == NULL)
            continue;
        n++;
        bm_bus_msg_free(m);
    }
    bm_consumer_free(c);
    return n;
}

static void test_enroll_policy(void **state)
{
    (void)state;
    char err[512];
    char *pem = NULL;
    char pub[BM_POLICY_PUB_B64_LEN];
    assert_int_equal(bm_signer_keygen(&pem, pub, sizeof pub, err, sizeof err), BM_OK);
    struct bm_signer *signer = bm_signer_from_pem(pem, strlen(pem), "k1", err, sizeof err);
    assert_non_null(signer);
    free(pem);

    struct gt g;
    gt_setup(&g, 1, 16 << 20, 200);
    gallery = g.gallery;
    snprintf(policy_path, sizeof policy_path, "%s.policy.yaml", g.config);
    FILE *f = fopen(policy_path, "w");
    assert_non_null(f);
    fprintf(f,
            "agencies:\n"
            "  test-agency:\n"
            "    require_signature: true\n"
            "    keys:\n"
            "      k1: \"%s\"\n"
            "    galleries:\n"
            "      %s: [enroll]\n"
            "  other:\n"
            "    galleries:\n"
            "      \"*\": [enroll, delete]\n",
            pub, g.gallery);
    assert_int_equal(fclose(f), 0);
    f = fopen(g.config, "a");
    assert_non_null(f);
    fprintf(f, "security:\n  policy_file: \"%s\"\n", policy_path);
    assert_int_equal(fclose(f), 0);
    gt_start(&g);

    const int UP = BIOMATCH__V1__ENROLL_REQUEST__OP__OP_UPSERT;
    const int DEL = BIOMATCH__V1__ENROLL_REQUEST__OP__OP_DELETE;
    size_t len;
    uint8_t *b;
    char sig[BM_POLICY_SIG_MAX];

    b = make_req("test-agency", "unsigned", UP, 1, g.t_reply, &len);
    send_signed(&g, "unsigned", b, len, NULL);
    free(b);
    b = make_req("test-agency", "signed", UP, 2, g.t_reply, &len);
    assert_int_equal(bm_signer_sign(signer, b, len, sig, sizeof sig, err, sizeof err), BM_OK);
    send_signed(&g, "signed", b, len, sig);
    free(b);
    b = make_req("test-agency", "signed-delete", DEL, 0, g.t_reply, &len);
    assert_int_equal(bm_signer_sign(signer, b, len, sig, sizeof sig, err, sizeof err), BM_OK);
    send_signed(&g, "signed-delete", b, len, sig);
    free(b);
    /* 'sig' is now the delete's signature: wrong bytes for this request. */
    b = make_req("test-agency", "copied-sig", UP, 3, g.t_reply, &len);
    send_signed(&g, "copied-sig", b, len, sig);
    free(b);
    b = make_req("nobody", "stranger", UP, 4, g.t_reply, &len);
    send_signed(&g, "stranger", b, len, NULL);
    free(b);
    b = make_req("other", "other-up", UP, 5, g.t_reply, &len);
    send_signed(&g, "other-up", b, len, NULL);
    free(b);
    gt_flush(&g);

    struct {
        const char *subject;
        Biomatch__V1__ErrorCode code;
        int seen;
    } want[] = {
        {"unsigned", BIOMATCH__V1__ERROR_CODE__ERROR_CODE_BAD_SIGNATURE, 0},
        {"signed-delete", BIOMATCH__V1__ERROR_CODE__ERROR_CODE_UNAUTHORIZED, 0},
        {"copied-sig", BIOMATCH__V1__ERROR_CODE__ERROR_CODE_BAD_SIGNATURE, 0},
        {"stranger", BIOMATCH__V1__ERROR_CODE__ERROR_CODE_UNAUTHORIZED, 0},
    };
    const int nwant = (int)(sizeof want / sizeof want[0]);
    struct bm_bus_conf bc = gt_bus();
    struct bm_consumer *c = bm_consumer_new(&bc, NULL, NULL, NULL, err, sizeof err);
    assert_non_null(c);
    struct bm_bus_tp tp = {g.t_reply, 0, BM_OFFSET_BEGINNING};
    assert_int_equal(bm_consumer_assign(c, &tp, 1, err, sizeof err), BM_OK);
    int n = 0;
    long long end = bm_test_now_ms() + GT_WAIT_MS;
    while (n < nwant && bm_test_now_ms() < end) {
        struct bm_bus_msg *m = NULL;
        if (bm_consumer_poll(c, 200, &m, err, sizeof err) != BM_OK || m == NULL)
            continue;
        Biomatch__V1__EnrollResult *r =
            bm_wire_decode_enroll_result(m->value, m->valuelen, 1 << 20, err, sizeof err);
        assert_non_null(r);
        assert_int_equal(r->status, BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_REJECTED);
        int found = 0;
        for (int i = 0; i < nwant; i++)
            if (strcmp(want[i].subject, r->subject_id) == 0) {
                if (r->error_code != want[i].code)
                    fail_msg("%s: code %d, want %d (%s)", r->subject_id, r->error_code,
                             want[i].code, r->error);
                want[i].seen++;
                found = 1;
            }
        if (!found)
            fail_msg("unexpected rejection of %s: %s", r->subject_id, r->error);
        bm_wire_free_enroll_result(r);
        bm_bus_msg_free(m);
        n++;
    }
    bm_consumer_free(c);
    for (int i = 0; i < nwant; i++)
        if (want[i].seen != 1)
            fail_msg("%s rejected %d times", want[i].subject, want[i].seen);

    /* The two allowed upserts land; the rejected ones do not. */
    gt_wait_total(&g, 2, GT_WAIT_MS);
    struct gt_view v;
    assert_int_equal(gt_view_read(&g, 0, &v), 0);
    assert_non_null(gt_view_find(&v, "signed"));
    assert_non_null(gt_view_find(&v, "other-up"));
    assert_null(gt_view_find(&v, "unsigned"));
    assert_null(gt_view_find(&v, "copied-sig"));
    assert_null(gt_view_find(&v, "stranger"));
    gt_view_free(&v);
    /* One audit record per decision: 4 rejections + 2 acceptances. */
    assert_int_equal(count_records(g.t_audit, 6), 6);

    assert_int_equal(gt_stop(&g, SIGTERM), 0);
    gt_teardown(&g);
    unlink(policy_path);
    bm_signer_destroy(signer);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_enroll_policy),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
