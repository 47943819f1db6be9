/* Integration test of authentication, replay protection and authorisation
 * on enrollment (label security): a real biomatch-coordinator (gallery
 * role) with security.policy_file in its configuration. Agency
 * "test-agency" may only enroll; agency "other" may enroll and delete;
 * both sign. Requests: unsigned from test-agency (BAD_SIGNATURE), signed
 * (lands in the gallery), a signed delete (UNAUTHORIZED: delete not
 * granted), a signature copied onto other bytes (BAD_SIGNATURE), an agency
 * not in the policy (UNAUTHORIZED); "other" enrolls a subject, deletes it
 * and enrolls it again, then its captured delete is produced again
 * (REPLAYED: the subject stays), and test-agency's upsert is produced
 * again (REPLAYED). Authentication failures go to dlq only; the
 * authenticated agency's denial is an EnrollResult REJECTED on its reply
 * topic; every decision leaves an audit record. */
#include "test_gallery_util.h"

#include "common/clock.h"
#include "conf/policy.h"

static char policy_path[300];
static const char *gallery;

static uint8_t *make_req_id(const char *agency, const char *subject, const char *rid, int op,
                            uint64_t seed, const char *reply, size_t *len)
{
    Biomatch__V1__EnrollRequest req = BIOMATCH__V1__ENROLL_REQUEST__INIT;
    Biomatch__V1__Template t = BIOMATCH__V1__TEMPLATE__INIT;
    Biomatch__V1__DenseEmbedding d = BIOMATCH__V1__DENSE_EMBEDDING__INIT;
    int8_t q[512];
    req.request_id = (char *)rid;
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

static uint8_t *make_req(const char *agency, const char *subject, int op, uint64_t seed,
                         const char *reply, size_t *len)
{
    char rid[160];
    snprintf(rid, sizeof rid, "r-%s", subject);
    return make_req_id(agency, subject, rid, op, seed, reply, len);
}

/* The biomatch-signature header for request 'b' (request id 'rid') of
 * 'agency', keyed by 'subject', produced now to the enroll topic. */
static void sign_req(const struct bm_signer *s, const struct gt *g, const char *subject,
                     const uint8_t *b, size_t len, const char *agency, const char *rid,
                     char sig[BM_POLICY_SIG_MAX])
{
    char err[256];
    struct bm_sig_record r = {biomatch__v1__enroll_request__descriptor.name,
                              g->t_enroll, subject, strlen(subject), b, len, agency, rid};
    assert_int_equal(bm_signer_sign_record(s, &r, bm_wall_ms(), sig, BM_POLICY_SIG_MAX, err,
                                           sizeof err),
                     BM_OK);
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

/* Run g's coordinator under 'policy' (YAML text): written next to its
 * configuration, which names it. */
static void gt_use_policy(struct gt *g, const char *policy)
{
    snprintf(policy_path, sizeof policy_path, "%s.policy.yaml", g->config);
    FILE *f = fopen(policy_path, "w");
    assert_non_null(f);
    fputs(policy, f);
    assert_int_equal(fclose(f), 0);
    f = fopen(g->config, "a");
    assert_non_null(f);
    fprintf(f, "security:\n  policy_file: \"%s\"\n", policy_path);
    assert_int_equal(fclose(f), 0);
}

/* Read g's reply topic: every record must be a REJECTED EnrollResult for
 * 'subject' with 'code'. Waits (bounded) for 'want' of them and 2 s more
 * for any extra; returns how many arrived. */
static int expect_rejections(struct gt *g, const char *subject, Biomatch__V1__ErrorCode code,
                             int want)
{
    char err[512];
    struct bm_bus_conf bc = gt_bus();
    struct bm_consumer *c = bm_consumer_new(&bc, NULL, NULL, NULL, err, sizeof err);
    assert_non_null(c);
    struct bm_bus_tp tp = {g->t_reply, 0, BM_OFFSET_BEGINNING};
    assert_int_equal(bm_consumer_assign(c, &tp, 1, err, sizeof err), BM_OK);
    int n = 0;
    long long end = bm_test_now_ms() + GT_WAIT_MS;
    while (bm_test_now_ms() < end) {
        struct bm_bus_msg *m = NULL;
        if (bm_consumer_poll(c, 200, &m, err, sizeof err) != BM_OK || m == NULL)
            continue;
        Biomatch__V1__EnrollResult *r =
            bm_wire_decode_enroll_result(m->value, m->valuelen, 1 << 20, err, sizeof err);
        assert_non_null(r);
        if (r->status != BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_REJECTED ||
            strcmp(r->subject_id, subject) != 0 || r->error_code != code)
            fail_msg("unexpected reply for %s: %d %s", r->subject_id, r->error_code, r->error);
        bm_wire_free_enroll_result(r);
        bm_bus_msg_free(m);
        if (++n == want)
            end = bm_test_now_ms() + 2000;
    }
    bm_consumer_free(c);
    return n;
}

/* Read up to 'want' records of partition 0 of 'topic' (bounded wait);
 * with 'codes', each record's error code name (from its error header, ""
 * without one). Returns how many arrived. */
static int read_records(const char *topic, int want, char codes[][512])
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
        if (codes != NULL) {
            codes[n][0] = '\0';
            bm_bus_header_get_str(m->headers, m->nheaders, BM_HDR_ERROR, codes[n], 512);
            char *colon = strchr(codes[n], ':');
            if (colon != NULL)
                *colon = '\0';
        }
        n++;
        bm_bus_msg_free(m);
    }
    bm_consumer_free(c);
    return n;
}

static void test_enroll_policy(void **state)
{
    (void)state;
    char pub[BM_POLICY_PUB_B64_LEN], pub2[BM_POLICY_PUB_B64_LEN];
    struct bm_signer *signer = bm_test_signer("k1", pub);
    struct bm_signer *other = bm_test_signer("o1", pub2);

    struct gt g;
    gt_setup(&g, 1, 16 << 20, 200);
    gallery = g.gallery;
    char policy[1024];
    snprintf(policy, sizeof policy,
             "agencies:\n"
             "  test-agency:\n"
             "    keys:\n"
             "      k1: \"%s\"\n"
             "    galleries:\n"
             "      %s: [enroll]\n"
             "  other:\n"
             "    keys:\n"
             "      o1: \"%s\"\n"
             "    galleries:\n"
             "      \"*\": [enroll, delete]\n",
             pub, g.gallery, pub2);
    gt_use_policy(&g, policy);
    gt_start(&g);

    const int UP = BIOMATCH__V1__ENROLL_REQUEST__OP__OP_UPSERT;
    const int DEL = BIOMATCH__V1__ENROLL_REQUEST__OP__OP_DELETE;
    size_t len, slen, dlen;
    uint8_t *b, *signed_up, *del;
    char sig[BM_POLICY_SIG_MAX], sig_up[BM_POLICY_SIG_MAX], sig_del[BM_POLICY_SIG_MAX];

    b = make_req("test-agency", "unsigned", UP, 1, g.t_reply, &len);
    send_signed(&g, "unsigned", b, len, NULL);
    free(b);
    signed_up = make_req("test-agency", "signed", UP, 2, g.t_reply, &slen);
    sign_req(signer, &g, "signed", signed_up, slen, "test-agency", "r-signed", sig_up);
    send_signed(&g, "signed", signed_up, slen, sig_up);
    b = make_req("test-agency", "signed-delete", DEL, 0, g.t_reply, &len);
    sign_req(signer, &g, "signed-delete", b, len, "test-agency", "r-signed-delete", sig);
    send_signed(&g, "signed-delete", b, len, sig);
    free(b);
    /* 'sig' is now the delete's signature: wrong bytes for this request. */
    b = make_req("test-agency", "copied-sig", UP, 3, g.t_reply, &len);
    send_signed(&g, "copied-sig", b, len, sig);
    free(b);
    b = make_req("nobody", "stranger", UP, 4, g.t_reply, &len);
    send_signed(&g, "stranger", b, len, NULL);
    free(b);
    /* "other": enroll, delete, enroll again; then the delete replayed. */
    b = make_req_id("other", "o-subj", "o-1", UP, 5, g.t_reply, &len);
    sign_req(other, &g, "o-subj", b, len, "other", "o-1", sig);
    send_signed(&g, "o-subj", b, len, sig);
    free(b);
    del = make_req_id("other", "o-subj", "o-2", DEL, 0, g.t_reply, &dlen);
    sign_req(other, &g, "o-subj", del, dlen, "other", "o-2", sig_del);
    send_signed(&g, "o-subj", del, dlen, sig_del);
    b = make_req_id("other", "o-subj", "o-3", UP, 6, g.t_reply, &len);
    sign_req(other, &g, "o-subj", b, len, "other", "o-3", sig);
    send_signed(&g, "o-subj", b, len, sig);
    free(b);
    send_signed(&g, "o-subj", del, dlen, sig_del);
    send_signed(&g, "signed", signed_up, slen, sig_up);
    free(del);
    free(signed_up);
    gt_flush(&g);

    /* The authenticated agency's denial: on its reply topic. */
    assert_int_equal(expect_rejections(&g, "signed-delete",
                                       BIOMATCH__V1__ERROR_CODE__ERROR_CODE_UNAUTHORIZED, 1),
                     1);

    /* Authentication failures and replays: dlq only. */
    char codes[8][512];
    assert_int_equal(read_records(g.t_dlq, 5, codes), 5);
    int bad = 0, una = 0, rep = 0;
    for (int i = 0; i < 5; i++) {
        bad += strcmp(codes[i], "ERROR_CODE_BAD_SIGNATURE") == 0;
        una += strcmp(codes[i], "ERROR_CODE_UNAUTHORIZED") == 0;
        rep += strcmp(codes[i], "ERROR_CODE_REPLAYED") == 0;
    }
    assert_int_equal(bad, 2);
    assert_int_equal(una, 1);
    assert_int_equal(rep, 2);

    /* The allowed upserts land, the re-enrolled subject survives its
     * replayed delete; the refused ones never arrive. */
    gt_wait_total(&g, 2, GT_WAIT_MS);
    struct gt_view v;
    assert_int_equal(gt_view_read(&g, 0, &v), 0);
    assert_non_null(gt_view_find(&v, "signed"));
    assert_non_null(gt_view_find(&v, "o-subj"));
    assert_null(gt_view_find(&v, "unsigned"));
    assert_null(gt_view_find(&v, "copied-sig"));
    assert_null(gt_view_find(&v, "stranger"));
    gt_view_free(&v);
    /* One audit record per decision: 5 refused, 1 denied, 4 accepted. */
    assert_int_equal(read_records(g.t_audit, 10, NULL), 10);

    assert_int_equal(gt_stop(&g, SIGTERM), 0);
    gt_teardown(&g);
    unlink(policy_path);
    bm_signer_destroy(signer);
    bm_signer_destroy(other);
}

/* Subject ownership (label security): agency "owner" enrolls s1 and s2;
 * agency "rival", granted enroll and delete on the same gallery, tries to
 * overwrite s1 with its own template (which would let it be matched as
 * that person) and to delete s1: both FORBIDDEN, s1 keeps owner's
 * template. Agency "steward" holds the admin right on the gallery and may
 * delete s2; rival's own subject s3 lands. */
static void test_enroll_ownership(void **state)
{
    (void)state;
    struct bm_signer *k[3];
    char pub[3][BM_POLICY_PUB_B64_LEN];
    const char *ids[3] = {"ko", "kr", "ks"};
    for (int i = 0; i < 3; i++)
        k[i] = bm_test_signer(ids[i], pub[i]);
    struct gt g;
    gt_setup(&g, 1, 16 << 20, 200);
    gallery = g.gallery;
    char policy[1024];
    snprintf(policy, sizeof policy,
             "agencies:\n"
             "  owner:\n    keys:\n      ko: \"%s\"\n    galleries:\n      %s: [enroll, delete]\n"
             "  rival:\n    keys:\n      kr: \"%s\"\n    galleries:\n      %s: [enroll, delete]\n"
             "  steward:\n    keys:\n      ks: \"%s\"\n    galleries:\n      %s: [delete, admin]\n",
             pub[0], g.gallery, pub[1], g.gallery, pub[2], g.gallery);
    gt_use_policy(&g, policy);
    gt_start(&g);

    const int UP = BIOMATCH__V1__ENROLL_REQUEST__OP__OP_UPSERT;
    const int DEL = BIOMATCH__V1__ENROLL_REQUEST__OP__OP_DELETE;
    struct {
        int who;
        const char *subject, *rid;
        int op;
        uint64_t seed;
    } steps[] = {
        {0, "s1", "o-1", UP, 1},  {0, "s2", "o-2", UP, 2},   {1, "s1", "r-1", UP, 9},
        {1, "s1", "r-2", DEL, 0}, {2, "s2", "st-1", DEL, 0}, {1, "s3", "r-3", UP, 3},
    };
    const char *agency[3] = {"owner", "rival", "steward"};
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        size_t len;
        char sig[BM_POLICY_SIG_MAX];
        uint8_t *b = make_req_id(agency[steps[i].who], steps[i].subject, steps[i].rid,
                                 steps[i].op, steps[i].seed, g.t_reply, &len);
        sign_req(k[steps[i].who], &g, steps[i].subject, b, len, agency[steps[i].who],
                 steps[i].rid, sig);
        send_signed(&g, steps[i].subject, b, len, sig);
        free(b);
        gt_flush(&g); /* in order across subjects too */
    }

    /* Two refusals, both FORBIDDEN, both rival's on s1. */
    assert_int_equal(
        expect_rejections(&g, "s1", BIOMATCH__V1__ERROR_CODE__ERROR_CODE_FORBIDDEN, 2), 2);

    /* s1 with owner's template, s2 deleted by the steward, s3 rival's. */
    gt_wait_total(&g, 2, GT_WAIT_MS);
    struct gt_view v;
    assert_int_equal(gt_view_read(&g, 0, &v), 0);
    const struct gt_row *s1 = gt_view_find(&v, "s1");
    assert_non_null(s1);
    uint8_t row[512];
    float scale;
    gt_expected_row(&g, 1, row, &scale);
    assert_memory_equal(s1->row, row, 512);
    assert_null(gt_view_find(&v, "s2"));
    assert_non_null(gt_view_find(&v, "s3"));
    gt_view_free(&v);

    assert_int_equal(gt_stop(&g, SIGTERM), 0);
    gt_teardown(&g);
    unlink(policy_path);
    for (int i = 0; i < 3; i++)
        bm_signer_destroy(k[i]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_enroll_policy),
        cmocka_unit_test(test_enroll_ownership),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
