/* Integration test of the intake role (coordinator/intake.c) against the
 * real broker and Redis: a stream mixing good jobs (raw and Schema Registry
 * framed, with and without a reply topic) with truncated bytes, wrong
 * geometry, NaN probes, an unknown gallery, an oversized record, top-k 0,
 * VERIFY without a subject and a contradicting content-type must yield
 * REJECTED results or dlq records for exactly the bad ones, and for each
 * good one exactly one MatchTask per shard on partition shard + S x replica
 * plus one opened marker carrying the traceparent. Afterwards the intake
 * group's committed offsets cover every job (offsets stored only after
 * delivery), and an audit record exists per bad job.
 *
 * The role runs in-process on a thread (the test links bm_coordinator). */
#include "role.h"

#include "audit.h"
#include "galcache.h"
#include "intake.h"
#include "common/clock.h"
#include "obs/log.h"
#include "wire/headers.h"
#include "wire/shard.h"

#include <math.h>

#include "coord_helpers.h"
#include "store/galdef.h"
#include "store/redis.h"
#include "wire/decode.h"
#include "wire/job.h"

#define S 3
#define R 2
#define DIM 64
#define TP "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

static char gallery[80];

static void put_gallery(struct th_env *e)
{
    th_put_gallery(e, "gi", gallery, sizeof gallery, DIM, S, R);
}

/* A job of 'nprobes' probes of dimension 'dim'; 'nan' poisons one value. */
static uint8_t *make_job(const char *id, const char *gal, Biomatch__V1__MatchMode mode,
                         uint32_t dim, int nan, uint32_t top_k, const char *claimed,
                         const char *reply, size_t *len)
{
    float v[128];
    for (uint32_t i = 0; i < dim; i++)
        v[i] = (float)(i % 7) - 3.0f + 0.5f;
    if (nan)
        v[3] = NAN;
    Biomatch__V1__DenseEmbedding de = BIOMATCH__V1__DENSE_EMBEDDING__INIT;
    de.dim = dim;
    de.element_type = BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_F32;
    de.data.data = (uint8_t *)v;
    de.data.len = dim * sizeof(float);
    Biomatch__V1__Template t = BIOMATCH__V1__TEMPLATE__INIT;
    t.modality = BIOMATCH__V1__MODALITY__MODALITY_FACE;
    t.kind_case = BIOMATCH__V1__TEMPLATE__KIND_DENSE;
    t.dense = &de;
    Biomatch__V1__Template *tp[1] = {&t};
    Biomatch__V1__MatchJob j = BIOMATCH__V1__MATCH_JOB__INIT;
    j.job_id = (char *)id;
    j.agency = (char *)"agency-a";
    j.gallery = (char *)gal;
    j.mode = mode;
    j.n_probes = 1;
    j.probes = tp;
    j.top_k = top_k;
    j.claimed_subject = (char *)(claimed ? claimed : "");
    j.reply_topic = (char *)(reply ? reply : "");
    j.submitted_unix_ms = bm_wall_ms();
    return bm_wire_encode(&j.base, len);
}

struct expect {
    const char *id;
    int kind;                 /* 0 good, 1 rejected, 2 dlq */
    Biomatch__V1__ErrorCode code;
    int seen;
};

static void test_intake_stream(void **state)
{
    (void)state;
    struct th_env e;
    th_setup(&e, "intake", "intake");
    char jobs[256], partials[256], results[256], dlq[256], audit[256], reply[256], tasks[256];
    bm_topic_name(jobs, sizeof jobs, e.prefix, BM_TOPIC_JOBS);
    bm_topic_name(partials, sizeof partials, e.prefix, BM_TOPIC_PARTIALS);
    bm_topic_name(results, sizeof results, e.prefix, BM_TOPIC_RESULTS);
    bm_topic_name(dlq, sizeof dlq, e.prefix, BM_TOPIC_DLQ);
    bm_topic_name(audit, sizeof audit, e.prefix, BM_TOPIC_AUDIT);
    th_topic(&e, reply, sizeof reply, "replies"); /* on the reply allow-list */
    th_create(&e, jobs, 2);
    th_create(&e, partials, 2);
    th_create(&e, results, 1);
    th_create(&e, dlq, 1);
    th_create(&e, audit, 1);
    th_create(&e, reply, 1);
    put_gallery(&e);
    bm_topic_tasks(tasks, sizeof tasks, e.prefix, gallery);

    char err[512];
    struct bm_producer *p = bm_producer_new(&e.bus, err, sizeof err);
    assert_non_null(p);
    struct expect ex[] = {
        {"good-raw", 0, 0, 0},
        {"good-sr", 0, 0, 0},
        {"good-reply", 0, 0, 0},
        {"bad-geometry", 1, BIOMATCH__V1__ERROR_CODE__ERROR_CODE_GEOMETRY_MISMATCH, 0},
        {"bad-nan", 1, BIOMATCH__V1__ERROR_CODE__ERROR_CODE_INVALID_VALUE, 0},
        {"bad-gallery", 1, BIOMATCH__V1__ERROR_CODE__ERROR_CODE_UNKNOWN_GALLERY, 0},
        {"bad-topk", 1, BIOMATCH__V1__ERROR_CODE__ERROR_CODE_INVALID_TOP_K, 0},
        {"bad-verify", 1, BIOMATCH__V1__ERROR_CODE__ERROR_CODE_MISSING_FIELD, 0},
        {"bad-truncated", 2, BIOMATCH__V1__ERROR_CODE__ERROR_CODE_MALFORMED, 0},
        {"bad-oversized", 2, BIOMATCH__V1__ERROR_CODE__ERROR_CODE_TOO_LARGE, 0},
        {"bad-ctype", 2, BIOMATCH__V1__ERROR_CODE__ERROR_CODE_MALFORMED, 0},
        /* A reply topic that is one of ours, or that does not exist: the
         * rejection goes to results and intake keeps running. */
        {"bad-internal-reply", 1, BIOMATCH__V1__ERROR_CODE__ERROR_CODE_INVALID_VALUE, 0},
        {"bad-missing-reply", 1, BIOMATCH__V1__ERROR_CODE__ERROR_CODE_UNKNOWN_GALLERY, 0},
    };
    const size_t nex = sizeof ex / sizeof ex[0];
    const Biomatch__V1__MatchMode ID = BIOMATCH__V1__MATCH_MODE__MATCH_MODE_IDENTIFY;
    const Biomatch__V1__MatchMode VE = BIOMATCH__V1__MATCH_MODE__MATCH_MODE_VERIFY;
    size_t len;
    uint8_t *b;
    struct bm_bus_headers h;

    bm_bus_headers_init(&h);
    bm_bus_headers_add_str(&h, BM_HDR_TRACEPARENT, TP);
    bm_bus_headers_add_str(&h, BM_HDR_CONTENT_TYPE, "application/x-protobuf");
    b = make_job("good-raw", gallery, ID, DIM, 0, 5, NULL, NULL, &len);
    th_send(p, jobs, BM_PARTITION_ANY, "good-raw", b, len, &h);
    free(b);

    /* Schema Registry framing: magic, schema id, index path [4] (MatchJob). */
    b = make_job("good-sr", gallery, VE, DIM, 0, 0, "subject-1", NULL, &len);
    uint32_t path[] = {4};
    size_t srlen;
    uint8_t *sr = bm_envelope_wrap_sr(7, path, 1, b, len, &srlen);
    assert_non_null(sr);
    th_send(p, jobs, BM_PARTITION_ANY, "good-sr", sr, srlen, NULL);
    free(sr);
    free(b);

    b = make_job("good-reply", gallery, ID, DIM, 0, 3, NULL, reply, &len);
    th_send(p, jobs, BM_PARTITION_ANY, "good-reply", b, len, NULL);
    free(b);

    b = make_job("bad-geometry", gallery, ID, 128, 0, 5, NULL, NULL, &len);
    th_send(p, jobs, BM_PARTITION_ANY, "bad-geometry", b, len, NULL);
    free(b);
    b = make_job("bad-nan", gallery, ID, DIM, 1, 5, NULL, NULL, &len);
    th_send(p, jobs, BM_PARTITION_ANY, "bad-nan", b, len, NULL);
    free(b);
    b = make_job("bad-gallery", "no-such-gallery", ID, DIM, 0, 5, NULL, NULL, &len);
    th_send(p, jobs, BM_PARTITION_ANY, "bad-gallery", b, len, NULL);
    free(b);
    b = make_job("bad-topk", gallery, ID, DIM, 0, 0, NULL, NULL, &len);
    th_send(p, jobs, BM_PARTITION_ANY, "bad-topk", b, len, NULL);
    free(b);
    b = make_job("bad-verify", gallery, VE, DIM, 0, 0, NULL, NULL, &len);
    th_send(p, jobs, BM_PARTITION_ANY, "bad-verify", b, len, NULL);
    free(b);

    b = make_job("bad-truncated", gallery, ID, DIM, 0, 5, NULL, NULL, &len);
    th_send(p, jobs, BM_PARTITION_ANY, "bad-truncated", b, len - 20, NULL);
    free(b);
    uint8_t *big = calloc(1, 9000);
    assert_non_null(big);
    big[0] = 0x0a; /* looks like a job; size alone must reject it */
    th_send(p, jobs, BM_PARTITION_ANY, "bad-oversized", big, 9000, NULL);
    free(big);
    bm_bus_headers_init(&h);
    bm_bus_headers_add_str(&h, BM_HDR_CONTENT_TYPE,
                           "application/x-protobuf; proto=biomatch.v1.MatchResult");
    b = make_job("bad-ctype", gallery, ID, DIM, 0, 5, NULL, NULL, &len);
    th_send(p, jobs, BM_PARTITION_ANY, "bad-ctype", b, len, &h);
    free(b);
    b = make_job("bad-internal-reply", gallery, ID, DIM, 0, 5, NULL, jobs, &len);
    th_send(p, jobs, BM_PARTITION_ANY, "bad-internal-reply", b, len, NULL);
    free(b);
    char missing[256];
    th_topic(&e, missing, sizeof missing, "replies.no-such-agency");
    b = make_job("bad-missing-reply", "no-such-gallery", ID, DIM, 0, 5, NULL, missing, &len);
    th_send(p, jobs, BM_PARTITION_ANY, "bad-missing-reply", b, len, NULL);
    free(b);
    assert_int_equal(bm_producer_flush(p, TH_WAIT_MS), BM_OK);

    th_start(&e, bm_role_intake_run);

    /* Rejections: 7 on results (bad-verify and friends), none on reply. */
    static struct th_rec recs[TH_MAX_RECS];
    size_t n = th_collect(&e, results, 1, 7, 0, recs, TH_MAX_RECS);
    assert_int_equal(n, 7);
    for (size_t i = 0; i < n; i++) {
        Biomatch__V1__MatchResult *r = bm_wire_decode_result(recs[i].value, recs[i].len, 1 << 20,
                                                             err, sizeof err);
        assert_non_null(r);
        assert_int_equal(r->status, BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_REJECTED);
        char jkey[BM_WIRE_JOB_KEY_MAX]; /* results are keyed by (agency, job id) */
        bm_wire_job_key(r->agency, r->job_id, jkey, sizeof jkey);
        assert_string_equal(recs[i].key, r->job_id[0] ? jkey : "");
        int found = 0;
        for (size_t k = 0; k < nex; k++)
            if (strcmp(ex[k].id, r->job_id) == 0) {
                assert_int_equal(ex[k].kind, 1);
                assert_int_equal(r->error_code, ex[k].code);
                ex[k].seen++;
                found = 1;
            }
        assert_true(found);
        bm_wire_free_result(r);
    }
    th_free(recs, n);

    n = th_collect(&e, dlq, 1, 3, 0, recs, TH_MAX_RECS);
    assert_int_equal(n, 3);
    for (size_t i = 0; i < n; i++) {
        int found = 0;
        for (size_t k = 0; k < nex; k++)
            if (strcmp(ex[k].id, recs[i].key) == 0) {
                assert_int_equal(ex[k].kind, 2);
                const char *name = bm_wire_error_code_name(ex[k].code);
                assert_memory_equal(recs[i].error, name, strlen(name));
                ex[k].seen++;
                found = 1;
            }
        assert_true(found);
    }
    th_free(recs, n);

    /* Opened markers: one per good job. */
    n = th_collect(&e, partials, 2, 3, 0, recs, TH_MAX_RECS);
    assert_int_equal(n, 3);
    for (size_t i = 0; i < n; i++) {
        Biomatch__V1__PartialResult *o = bm_wire_decode_partial(recs[i].value, recs[i].len,
                                                                1 << 20, err, sizeof err);
        assert_non_null(o);
        assert_int_equal(o->kind, BIOMATCH__V1__PARTIAL_RESULT__KIND__KIND_OPENED);
        assert_int_equal(o->shard_count, S);
        assert_int_equal(o->probe_count, 1);
        assert_string_equal(o->gallery, gallery);
        char okey[BM_WIRE_JOB_KEY_MAX];
        bm_wire_job_key(o->agency, o->job_id, okey, sizeof okey);
        assert_string_equal(recs[i].key, okey);
        assert_true(o->deadline_unix_ms > o->received_unix_ms); /* default filled in */
        if (strcmp(o->job_id, "good-raw") == 0) {
            assert_string_equal(o->traceparent, TP);
            assert_string_equal(recs[i].traceparent, TP);
            assert_int_equal(o->top_k, 5);
        } else if (strcmp(o->job_id, "good-reply") == 0) {
            assert_string_equal(o->reply_topic, reply);
        } else {
            assert_string_equal(o->job_id, "good-sr");
            assert_int_equal(o->mode, VE);
        }
        for (size_t k = 0; k < nex; k++)
            if (strcmp(ex[k].id, o->job_id) == 0)
                ex[k].seen++;
        bm_wire_free_partial(o);
    }
    th_free(recs, n);

    /* Tasks: S per good job, partition = shard + S x replica. */
    n = th_collect(&e, tasks, S * R, 3 * S, 0, recs, TH_MAX_RECS);
    assert_int_equal(n, 3 * S);
    int shards_seen[3][S] = {{0}};
    const char *good[] = {"good-raw", "good-sr", "good-reply"};
    for (size_t i = 0; i < n; i++) {
        Biomatch__V1__MatchTask *t = bm_wire_decode_task(recs[i].value, recs[i].len, 1 << 20, err,
                                                         sizeof err);
        assert_non_null(t);
        assert_int_equal(t->shard_count, S);
        assert_true(t->replica < R);
        char key[BM_WIRE_JOB_KEY_MAX]; /* the replica follows the job's key */
        size_t keylen = bm_wire_job_key(t->agency, t->job_id, key, sizeof key);
        assert_string_equal(recs[i].key, key);
        assert_int_equal(t->replica, bm_subject_key(key, keylen) % R);
        assert_int_equal(recs[i].partition, (int32_t)(t->shard + S * t->replica));
        assert_int_equal(t->n_probes, 1);
        assert_true(t->deadline_unix_ms > 0);
        int g = -1;
        for (int k = 0; k < 3; k++)
            if (strcmp(good[k], t->job_id) == 0)
                g = k;
        assert_true(g >= 0);
        shards_seen[g][t->shard]++;
        if (g == 0)
            assert_string_equal(recs[i].traceparent, TP);
        if (g == 1)
            assert_string_equal(t->claimed_subject, "subject-1");
        bm_wire_free_task(t);
    }
    for (int g = 0; g < 3; g++)
        for (int s = 0; s < S; s++)
            assert_int_equal(shards_seen[g][s], 1);
    th_free(recs, n);

    /* Nothing for the good jobs on results; the reply topic stays empty
     * (rejections of bad jobs without a reply topic go to results). */
    for (size_t k = 0; k < nex; k++)
        assert_int_equal(ex[k].seen, 1);

    /* An audit record per rejected or dead-lettered job (10). */
    n = th_collect(&e, audit, 1, 10, 0, recs, TH_MAX_RECS);
    assert_int_equal(n, 10);
    th_free(recs, n);

    /* Stop; the group's committed offsets cover all 13 jobs. */
    assert_int_equal(th_stop(&e), BM_OK);
    char group[256];
    snprintf(group, sizeof group, "%s%s", e.prefix, BM_INTAKE_GROUP_SUFFIX);
    struct bm_consumer *c = bm_consumer_new(&e.bus, group, NULL, NULL, err, sizeof err);
    assert_non_null(c);
    struct bm_bus_tp tps[2] = {{jobs, 0, BM_OFFSET_INVALID}, {jobs, 1, BM_OFFSET_INVALID}};
    assert_int_equal(bm_consumer_committed(c, tps, 2, TH_WAIT_MS, err, sizeof err), BM_OK);
    int64_t total = (tps[0].offset > 0 ? tps[0].offset : 0) + (tps[1].offset > 0 ? tps[1].offset : 0);
    assert_int_equal(total, (int64_t)nex);
    bm_consumer_free(c);
    bm_producer_free(p);
    th_teardown(&e);
}

int main(void)
{
    bm_log_init("test_intake");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_intake_stream),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
