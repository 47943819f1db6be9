/* Integration test of authentication, replay protection and authorisation
 * in the intake role (coordinator/intake.c, authn.c, lib/conf/policy.c)
 * against the real broker and Redis (label security). The role reads a
 * policy file through conf->security.policy_file: agency "signer" must sign
 * and may identify on the gallery; agency "open" opted out of signing and
 * may only verify there. Jobs: unsigned from "signer" (BAD_SIGNATURE),
 * signed (fanned out), signed in Schema Registry framing (fanned out: the
 * signature covers the framed bytes), a signature copied onto other bytes
 * (BAD_SIGNATURE), "open" identifying (an ordinary UNAUTHORIZED rejection:
 * it is authenticated), "open" verifying (fanned out), an agency not in the
 * policy (UNAUTHORIZED), the signed job produced again (REPLAYED), a job
 * signed 10 minutes ago (REPLAYED), and an unsigned job claiming "signer"
 * that names a victim's reply topic and a gallery that does not exist.
 * Every authentication failure goes to dlq only: nothing reaches the
 * victim's topic or results, and the missing gallery is never revealed.
 * Every refusal leaves an audit record and counts in
 * biomatch_auth_failures_total.
 *
 * The role runs in-process on a thread (the test links bm_coordinator). */
#include "role.h"

#include "intake.h"
#include "common/clock.h"
#include "obs/log.h"
#include "wire/envelope.h"
#include "wire/headers.h"

#include "coord_helpers.h"
#include "conf/policy.h"
#include "store/galdef.h"
#include "store/redis.h"
#include "wire/decode.h"
#include "wire/job.h"

#define S 2
#define DIM 64

static char gallery[80];

static void put_gallery(struct th_env *e)
{
    th_put_gallery(e, "gp", gallery, sizeof gallery, DIM, S, 1);
}

static uint8_t *make_job(const char *id, const char *agency, Biomatch__V1__MatchMode mode,
                         size_t *len)
{
    float v[DIM];
    Biomatch__V1__DenseEmbedding de;
    Biomatch__V1__Template t;
    th_dense_probe(v, DIM, &de, &t);
    Biomatch__V1__Template *tp[1] = {&t};
    Biomatch__V1__MatchJob j = BIOMATCH__V1__MATCH_JOB__INIT;
    j.job_id = (char *)id;
    j.agency = (char *)agency;
    j.gallery = gallery;
    j.mode = mode;
    j.n_probes = 1;
    j.probes = tp;
    j.top_k = 3;
    j.claimed_subject =
        (char *)(mode == BIOMATCH__V1__MATCH_MODE__MATCH_MODE_VERIFY ? "subject-1" : "");
    j.submitted_unix_ms = bm_wall_ms();
    return bm_wire_encode(&j.base, len);
}

/* Send 'val' with an optional signature header. */
static void send_job(struct bm_producer *p, const char *topic, const char *key,
                     const uint8_t *val, size_t len, const char *sig)
{
    struct bm_bus_headers h;
    bm_bus_headers_init(&h);
    if (sig != NULL)
        bm_bus_headers_add_str(&h, BM_POLICY_SIG_HEADER, sig);
    th_send(p, topic, BM_PARTITION_ANY, key, val, len, &h);
}

struct expect {
    const char *id;
    Biomatch__V1__ErrorCode code; /* NONE: fanned out */
    int seen;
};

/* The biomatch-signature header of a job record as the client produces it. */
static void sign_job(const struct bm_signer *signer, const char *topic, const char *key,
                     const uint8_t *val, size_t len, const char *agency, const char *id,
                     int64_t ts, char sig[BM_POLICY_SIG_MAX])
{
    char err[256];
    struct bm_sig_record r = {biomatch__v1__match_job__descriptor.name, topic, key, strlen(key),
                              val, len, agency, id};
    assert_int_equal(bm_signer_sign_record(signer, &r, ts, sig, BM_POLICY_SIG_MAX, err,
                                           sizeof err),
                     BM_OK);
}

static void test_policy_intake(void **state)
{
    (void)state;
    char err[512];
    /* A fresh signing key; its public half goes into the policy. */
    char pub[BM_POLICY_PUB_B64_LEN];
    struct bm_signer *signer = bm_test_signer("k1", pub);

    struct th_env e;
    th_setup(&e, "policy", "intake");
    put_gallery(&e);
    char path[] = "/tmp/bm-test-policy-XXXXXX", policy[1024];
    snprintf(policy, sizeof policy,
             "agencies:\n"
             "  signer:\n"
             "    keys:\n"
             "      k1: \"%s\"\n"
             "    galleries:\n"
             "      %s: [identify]\n"
             "  open:\n"
             "    require_signature: false\n"
             "    galleries:\n"
             "      %s: [verify]\n",
             pub, gallery, gallery);
    th_use_policy(&e, path, policy);
    assert_string_equal(e.conf->security.policy_file, path);
    assert_false(e.conf->security.dev_mode);

    char jobs[256], partials[256], results[256], dlq[256], audit[256], tasks[256], victim[256];
    bm_topic_name(jobs, sizeof jobs, e.prefix, BM_TOPIC_JOBS);
    bm_topic_name(partials, sizeof partials, e.prefix, BM_TOPIC_PARTIALS);
    bm_topic_name(results, sizeof results, e.prefix, BM_TOPIC_RESULTS);
    bm_topic_name(dlq, sizeof dlq, e.prefix, BM_TOPIC_DLQ);
    bm_topic_name(audit, sizeof audit, e.prefix, BM_TOPIC_AUDIT);
    bm_topic_tasks(tasks, sizeof tasks, e.prefix, gallery);
    th_topic(&e, victim, sizeof victim, "victim-results");
    th_create(&e, jobs, 1);
    th_create(&e, partials, 1);
    th_create(&e, results, 1);
    th_create(&e, dlq, 1);
    th_create(&e, audit, 1);
    th_create(&e, tasks, S);
    th_create(&e, victim, 1);

    const Biomatch__V1__MatchMode ID = BIOMATCH__V1__MATCH_MODE__MATCH_MODE_IDENTIFY;
    const Biomatch__V1__MatchMode VE = BIOMATCH__V1__MATCH_MODE__MATCH_MODE_VERIFY;
    const Biomatch__V1__ErrorCode OK = BIOMATCH__V1__ERROR_CODE__ERROR_CODE_NONE;
    const Biomatch__V1__ErrorCode BAD = BIOMATCH__V1__ERROR_CODE__ERROR_CODE_BAD_SIGNATURE;
    const Biomatch__V1__ErrorCode UNA = BIOMATCH__V1__ERROR_CODE__ERROR_CODE_UNAUTHORIZED;
    const Biomatch__V1__ErrorCode REP = BIOMATCH__V1__ERROR_CODE__ERROR_CODE_REPLAYED;

    struct bm_producer *p = bm_producer_new(&e.bus, err, sizeof err);
    assert_non_null(p);
    size_t len;
    uint8_t *b;
    char sig[BM_POLICY_SIG_MAX];
    int64_t now = bm_wall_ms();

    b = make_job("unsigned", "signer", ID, &len);
    send_job(p, jobs, "unsigned", b, len, NULL);
    free(b);

    b = make_job("signed", "signer", ID, &len);
    sign_job(signer, jobs, "signed", b, len, "signer", "signed", now, sig);
    send_job(p, jobs, "signed", b, len, sig);
    /* Captured and produced again, byte for byte, header included. */
    send_job(p, jobs, "signed", b, len, sig);
    free(b);

    /* The signature is over the framed bytes: what was produced. */
    b = make_job("signed-sr", "signer", ID, &len);
    uint32_t path_idx[] = {4};
    size_t srlen;
    uint8_t *sr = bm_envelope_wrap_sr(3, path_idx, 1, b, len, &srlen);
    assert_non_null(sr);
    sign_job(signer, jobs, "signed-sr", sr, srlen, "signer", "signed-sr", now, sig);
    send_job(p, jobs, "signed-sr", sr, srlen, sig);
    free(sr);
    free(b);

    /* A valid signature of other bytes (the "signed" job's) on this job. */
    uint8_t *orig = make_job("signed", "signer", ID, &len);
    sign_job(signer, jobs, "signed", orig, len, "signer", "signed", now, sig);
    free(orig);
    b = make_job("copied-sig", "signer", ID, &len);
    send_job(p, jobs, "copied-sig", b, len, sig);
    free(b);

    /* Properly signed, but 10 minutes ago (the window is 5). */
    b = make_job("stale", "signer", ID, &len);
    sign_job(signer, jobs, "stale", b, len, "signer", "stale", now - 600000, sig);
    send_job(p, jobs, "stale", b, len, sig);
    free(b);

    b = make_job("open-identify", "open", ID, &len);
    send_job(p, jobs, "open-identify", b, len, NULL);
    free(b);
    b = make_job("open-verify", "open", VE, &len);
    send_job(p, jobs, "open-verify", b, len, NULL);
    free(b);
    b = make_job("stranger", "nobody", ID, &len);
    send_job(p, jobs, "stranger", b, len, NULL);
    free(b);

    /* An outsider posing as "signer": a result planted under this id on
     * the victim's topic would hide the victim's real one; an answer
     * "unknown gallery" would tell it what exists. */
    {
        char saved[80];
        snprintf(saved, sizeof saved, "%s", gallery);
        snprintf(gallery, sizeof gallery, "no-such-gallery");
        b = make_job("hijack", "signer", ID, &len);
        snprintf(gallery, sizeof gallery, "%s", saved);
        Biomatch__V1__MatchJob *j = bm_wire_decode_job(b, len, 1 << 20, err, sizeof err);
        assert_non_null(j);
        j->reply_topic = victim;
        free(b);
        b = bm_wire_encode(&j->base, &len);
        j->reply_topic = NULL;
        bm_wire_free_job(j);
        send_job(p, jobs, "hijack", b, len, NULL);
        free(b);
    }
    assert_int_equal(bm_producer_flush(p, TH_WAIT_MS), BM_OK);

    th_start(&e, bm_role_intake_run);

    /* Accepted jobs: an opened marker each and S tasks each, once. */
    static struct th_rec recs[TH_MAX_RECS];
    const char *accepted[][2] = {{"signer", "signed"}, {"signer", "signed-sr"},
                                 {"open", "open-verify"}};
    size_t n = th_collect(&e, partials, 1, 3, 0, recs, TH_MAX_RECS);
    assert_int_equal(n, 3);
    for (size_t k = 0; k < 3; k++) {
        char key[BM_WIRE_JOB_KEY_MAX];
        bm_wire_job_key(accepted[k][0], accepted[k][1], key, sizeof key);
        int seen = 0;
        for (size_t i = 0; i < n; i++)
            seen += strcmp(key, recs[i].key) == 0;
        if (seen != 1)
            fail_msg("job %s opened %d times", accepted[k][1], seen);
    }
    th_free(recs, n);
    n = th_collect(&e, tasks, S, 3 * S, 0, recs, TH_MAX_RECS);
    assert_int_equal(n, 3 * S);
    th_free(recs, n);

    /* Authentication failures: dlq only, one each, with their codes. */
    struct expect ex[] = {
        {"unsigned", BAD, 0}, {"copied-sig", BAD, 0}, {"stale", REP, 0},
        {"stranger", UNA, 0}, {"signed", REP, 0},     {"hijack", BAD, 0},
    };
    const size_t nex = sizeof ex / sizeof ex[0];
    n = th_collect(&e, dlq, 1, (int)nex, 0, recs, TH_MAX_RECS);
    assert_int_equal(n, nex);
    for (size_t i = 0; i < n; i++) {
        int found = 0;
        for (size_t k = 0; k < nex && !found; k++) {
            char want[64];
            snprintf(want, sizeof want, "%s:", bm_wire_error_code_name(ex[k].code));
            if (ex[k].seen == 0 && strcmp(ex[k].id, recs[i].key) == 0 &&
                strncmp(recs[i].error, want, strlen(want)) == 0) {
                ex[k].seen++;
                found = 1;
            }
        }
        if (!found)
            fail_msg("unexpected dlq record %s: %s", recs[i].key, recs[i].error);
    }
    th_free(recs, n);

    /* The only result is the authenticated agency's authorisation denial. */
    n = th_collect(&e, results, 1, -1, 2000, recs, TH_MAX_RECS);
    assert_int_equal(n, 1);
    Biomatch__V1__MatchResult *r =
        bm_wire_decode_result(recs[0].value, recs[0].len, 1 << 20, err, sizeof err);
    assert_non_null(r);
    assert_string_equal(r->job_id, "open-identify");
    assert_int_equal(r->status, BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_REJECTED);
    assert_int_equal(r->error_code, UNA);
    bm_wire_free_result(r);
    th_free(recs, n);
    n = th_collect(&e, victim, 1, -1, 1000, recs, TH_MAX_RECS);
    assert_int_equal(n, 0);

    /* An audit record per refusal. */
    n = th_collect(&e, audit, 1, (int)nex + 1, 0, recs, TH_MAX_RECS);
    assert_int_equal(n, nex + 1);
    size_t codes[32] = {0};
    for (size_t i = 0; i < n; i++) {
        Biomatch__V1__AuditRecord *a = (Biomatch__V1__AuditRecord *)protobuf_c_message_unpack(
            &biomatch__v1__audit_record__descriptor, NULL, recs[i].len, recs[i].value);
        assert_non_null(a);
        assert_true(a->error_code < 32);
        codes[a->error_code]++;
        protobuf_c_message_free_unpacked(&a->base, NULL);
    }
    assert_int_equal(codes[BAD], 3);
    assert_int_equal(codes[REP], 2);
    assert_int_equal(codes[UNA], 2);
    th_free(recs, n);
    (void)OK;

    /* Counted, by reason (never by agency or id). */
    char *text = NULL;
    size_t tlen = 0;
    assert_int_equal(bm_metrics_render(e.ctx.metrics, &text, &tlen), BM_OK);
    assert_non_null(strstr(text, "biomatch_auth_failures_total{role=\"intake\",reason=\"bad_signature\"} 3"));
    assert_non_null(strstr(text, "biomatch_auth_failures_total{role=\"intake\",reason=\"replayed\"} 2"));
    assert_non_null(strstr(text, "biomatch_auth_failures_total{role=\"intake\",reason=\"unauthorized\"} 1"));
    free(text);

    assert_int_equal(th_stop(&e), BM_OK);
    bm_producer_free(p);
    bm_signer_destroy(signer);
    unlink(path);
    th_teardown(&e);
}

/* The agency's result rules bind every job (label security): at most its
 * max_top_k, and a threshold of at least its min_threshold. */
static void test_policy_result_rules(void **state)
{
    (void)state;
    char err[512];
    char pub[BM_POLICY_PUB_B64_LEN];
    struct bm_signer *signer = bm_test_signer("k1", pub);
    struct th_env e;
    th_setup(&e, "polrules", "intake");
    put_gallery(&e);
    char path[] = "/tmp/bm-test-policy-XXXXXX", policy[512];
    snprintf(policy, sizeof policy,
             "agencies:\n"
             "  lim:\n"
             "    keys:\n      k1: \"%s\"\n"
             "    galleries:\n      %s: [identify]\n"
             "    results:\n      max_top_k: 2\n      min_threshold: 0.5\n",
             pub, gallery);
    th_use_policy(&e, path, policy);
    char jobs[256], partials[256], results[256], dlq[256], audit[256], tasks[256];
    bm_topic_name(jobs, sizeof jobs, e.prefix, BM_TOPIC_JOBS);
    bm_topic_name(partials, sizeof partials, e.prefix, BM_TOPIC_PARTIALS);
    bm_topic_name(results, sizeof results, e.prefix, BM_TOPIC_RESULTS);
    bm_topic_name(dlq, sizeof dlq, e.prefix, BM_TOPIC_DLQ);
    bm_topic_name(audit, sizeof audit, e.prefix, BM_TOPIC_AUDIT);
    bm_topic_tasks(tasks, sizeof tasks, e.prefix, gallery);
    const char *topics[] = {jobs, partials, results, dlq, audit};
    for (int i = 0; i < 5; i++)
        th_create(&e, topics[i], 1);
    th_create(&e, tasks, S);
    struct bm_producer *p = bm_producer_new(&e.bus, err, sizeof err);
    assert_non_null(p);
    struct {
        const char *id;
        uint32_t top_k;
        int has_thr;
        float thr;
        Biomatch__V1__ErrorCode code;
    } cases[] = {
        {"big-k", 3, 1, 0.6f, BIOMATCH__V1__ERROR_CODE__ERROR_CODE_INVALID_TOP_K},
        {"no-thr", 2, 0, 0, BIOMATCH__V1__ERROR_CODE__ERROR_CODE_INVALID_VALUE},
        {"low-thr", 2, 1, 0.4f, BIOMATCH__V1__ERROR_CODE__ERROR_CODE_INVALID_VALUE},
        {"within", 2, 1, 0.5f, BIOMATCH__V1__ERROR_CODE__ERROR_CODE_NONE},
    };
    int64_t now = bm_wall_ms();
    for (size_t i = 0; i < 4; i++) {
        size_t len;
        uint8_t *b = make_job(cases[i].id, "lim", BIOMATCH__V1__MATCH_MODE__MATCH_MODE_IDENTIFY,
                              &len);
        Biomatch__V1__MatchJob *j = bm_wire_decode_job(b, len, 1 << 20, err, sizeof err);
        assert_non_null(j);
        free(b);
        j->top_k = cases[i].top_k;
        j->has_threshold = cases[i].has_thr;
        j->threshold = cases[i].thr;
        b = bm_wire_encode(&j->base, &len);
        bm_wire_free_job(j);
        char sig[BM_POLICY_SIG_MAX];
        sign_job(signer, jobs, cases[i].id, b, len, "lim", cases[i].id, now, sig);
        send_job(p, jobs, cases[i].id, b, len, sig);
        free(b);
    }
    assert_int_equal(bm_producer_flush(p, TH_WAIT_MS), BM_OK);
    th_start(&e, bm_role_intake_run);
    static struct th_rec recs[TH_MAX_RECS];
    size_t n = th_collect(&e, results, 1, 3, 0, recs, TH_MAX_RECS);
    assert_int_equal(n, 3);
    for (size_t i = 0; i < n; i++) {
        Biomatch__V1__MatchResult *r =
            bm_wire_decode_result(recs[i].value, recs[i].len, 1 << 20, err, sizeof err);
        assert_non_null(r);
        int found = 0;
        for (size_t k = 0; k < 4; k++)
            if (strcmp(cases[k].id, r->job_id) == 0) {
                assert_int_equal(r->error_code, cases[k].code);
                assert_int_not_equal(cases[k].code, BIOMATCH__V1__ERROR_CODE__ERROR_CODE_NONE);
                found = 1;
            }
        assert_true(found);
        bm_wire_free_result(r);
    }
    th_free(recs, n);
    n = th_collect(&e, partials, 1, 1, 0, recs, TH_MAX_RECS);
    assert_int_equal(n, 1);
    char key[BM_WIRE_JOB_KEY_MAX];
    bm_wire_job_key("lim", "within", key, sizeof key);
    assert_string_equal(recs[0].key, key);
    th_free(recs, n);
    assert_int_equal(th_stop(&e), BM_OK);
    bm_producer_free(p);
    bm_signer_destroy(signer);
    unlink(path);
    th_teardown(&e);
}

/* Without a policy and without development mode the role refuses to start;
 * in development mode it runs and says so in a metric. */
static void test_no_policy(void **state)
{
    (void)state;
    struct th_env e;
    th_setup(&e, "nopolicy", "intake");
    char err[512];
    snprintf(e.envbuf[7], sizeof e.envbuf[7], "BIOMATCH_SECURITY_DEV_MODE=false");
    bm_conf_destroy(e.conf);
    e.conf = bm_conf_parse(NULL, 0, NULL, e.envp, err, sizeof err);
    assert_non_null(e.conf);
    e.ctx.conf = e.conf;
    assert_int_not_equal(bm_role_intake_run(&e.ctx), BM_OK);
    char *text = NULL;
    size_t tlen = 0;
    assert_int_equal(bm_metrics_render(e.ctx.metrics, &text, &tlen), BM_OK);
    assert_null(strstr(text, "biomatch_security_dev_mode"));
    free(text);
    th_teardown(&e);

    th_setup(&e, "devmode", "intake");
    th_start(&e, bm_role_intake_run);
    int64_t until = bm_test_now_ms() + TH_WAIT_MS;
    int found = 0;
    while (!found && bm_test_now_ms() < until) {
        assert_int_equal(bm_metrics_render(e.ctx.metrics, &text, &tlen), BM_OK);
        found = strstr(text, "biomatch_security_dev_mode 1") != NULL;
        free(text);
        if (!found)
            usleep(50000);
    }
    assert_true(found);
    assert_int_equal(th_stop(&e), BM_OK);
    th_teardown(&e);
}

/* A policy file that does not parse stops the role at start-up instead of
 * running without authorisation. */
static void test_policy_bad_file(void **state)
{
    (void)state;
    struct th_env e;
    th_setup(&e, "policybad", "intake");
    char path[] = "/tmp/bm-test-policy-XXXXXX";
    th_use_policy(&e, path, "agencies:\n  a:\n    galeries: {}\n");
    assert_int_not_equal(bm_role_intake_run(&e.ctx), BM_OK);
    unlink(path);
    th_teardown(&e);
}

int main(void)
{
    bm_log_init("test_policy");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_policy_intake),
        cmocka_unit_test(test_policy_bad_file),
        cmocka_unit_test(test_no_policy),
        cmocka_unit_test(test_policy_result_rules),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
