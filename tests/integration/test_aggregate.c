/* Integration test of the aggregate role (coordinator/aggregate.c) against
 * the real broker: opened markers and shard partials (early, out of order,
 * duplicated, missing, failed) become exactly one MatchResult per job with
 * the documented status, candidates, coverage and timings; and a
 * coordinator process running only the aggregate role, SIGKILLed in the
 * middle of a stream and restarted, still emits a result for every job
 * (partials offsets are committed only up to the oldest unfinished job).
 *
 * The first test runs the role in-process on a thread (the test links
 * bm_coordinator); the second
 * runs build/bin/biomatch-coordinator. */
#include "role.h"

#include "aggregate.h"
#include "audit.h"
#include "jobtable.h"
#include "merge.h"
#include "common/clock.h"
#include "obs/log.h"

#include <signal.h>
#include <sys/wait.h>

#include "coord_helpers.h"
#include "childproc.h"
#include "wire/decode.h"
#include "wire/job.h"

#define TP "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

struct topics {
    char partials[256], results[256], dlq[256], audit[256], reply[256];
};

static void make_topics(struct th_env *e, struct topics *t)
{
    bm_topic_name(t->partials, sizeof t->partials, e->prefix, BM_TOPIC_PARTIALS);
    bm_topic_name(t->results, sizeof t->results, e->prefix, BM_TOPIC_RESULTS);
    bm_topic_name(t->dlq, sizeof t->dlq, e->prefix, BM_TOPIC_DLQ);
    bm_topic_name(t->audit, sizeof t->audit, e->prefix, BM_TOPIC_AUDIT);
    th_topic(e, t->reply, sizeof t->reply, "reply");
    th_create(e, t->partials, 2);
    th_create(e, t->results, 1);
    th_create(e, t->dlq, 1);
    th_create(e, t->audit, 1);
    th_create(e, t->reply, 1);
}

static void send_opened_as(struct bm_producer *p, const char *topic, const char *agency,
                           const char *id, uint32_t S, Biomatch__V1__MatchMode mode,
                           uint32_t top_k, int has_thr, float thr, int64_t deadline,
                           const char *reply, const char *tp)
{
    Biomatch__V1__PartialResult o = BIOMATCH__V1__PARTIAL_RESULT__INIT;
    o.job_id = (char *)id;
    o.kind = BIOMATCH__V1__PARTIAL_RESULT__KIND__KIND_OPENED;
    o.shard_count = S;
    o.agency = (char *)agency;
    o.gallery = (char *)"faces";
    o.mode = mode;
    o.top_k = top_k;
    o.has_threshold = has_thr;
    o.threshold = thr;
    o.deadline_unix_ms = deadline;
    o.reply_topic = (char *)(reply ? reply : "");
    o.submitted_unix_ms = bm_wall_ms() - 5;
    o.received_unix_ms = bm_wall_ms() - 3;
    o.fanned_out_unix_ms = bm_wall_ms() - 2;
    o.traceparent = (char *)(tp ? tp : "");
    o.probe_count = 1;
    th_send_partial(p, topic, &o);
}

static void send_opened(struct bm_producer *p, const char *topic, const char *id, uint32_t S,
                        Biomatch__V1__MatchMode mode, uint32_t top_k, int has_thr, float thr,
                        int64_t deadline, const char *reply, const char *tp)
{
    send_opened_as(p, topic, "agency-a", id, S, mode, top_k, has_thr, thr, deadline, reply, tp);
}

/* A shard partial of 'agency''s job 'id' with candidates "id:score" pairs
 * (probe 0), as a worker sends it. */
static void send_shard_as(struct bm_producer *p, const char *topic, const char *agency,
                          const char *id, uint32_t S, uint32_t shard,
                          Biomatch__V1__ErrorCode code, uint64_t version,
                          const char *const *ids, const float *scores, size_t n)
{
    Biomatch__V1__Candidate cv[8], *cp[8];
    assert_true(n <= 8);
    for (size_t i = 0; i < n; i++) {
        biomatch__v1__candidate__init(&cv[i]);
        cv[i].subject_id = (char *)ids[i];
        cv[i].score = scores[i];
        cv[i].rank = (uint32_t)i + 1;
        cv[i].shard = shard;
        cp[i] = &cv[i];
    }
    Biomatch__V1__PartialResult m = BIOMATCH__V1__PARTIAL_RESULT__INIT;
    m.job_id = (char *)id;
    m.agency = (char *)agency;
    m.kind = BIOMATCH__V1__PARTIAL_RESULT__KIND__KIND_SHARD;
    m.shard = shard;
    m.shard_count = S;
    m.status = code ? BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_ERROR
                    : BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_OK;
    m.error_code = code;
    m.error = (char *)(code ? "shard failed on purpose" : "");
    m.n_candidates = n;
    m.candidates = cp;
    m.gallery_version = version;
    m.comparisons = 100;
    m.queue_us = 10 + shard;
    m.scoring_us = 20 + shard;
    m.worker = (char *)"w1";
    th_send_partial(p, topic, &m);
}

static void send_shard(struct bm_producer *p, const char *topic, const char *id, uint32_t S,
                       uint32_t shard, Biomatch__V1__ErrorCode code, uint64_t version,
                       const char *const *ids, const float *scores, size_t n)
{
    send_shard_as(p, topic, "agency-a", id, S, shard, code, version, ids, scores, n);
}

static Biomatch__V1__MatchResult *find_result(Biomatch__V1__MatchResult **rs, size_t n,
                                              const char *id)
{
    Biomatch__V1__MatchResult *hit = NULL;
    for (size_t i = 0; i < n; i++)
        if (strcmp(rs[i]->job_id, id) == 0) {
            assert_null(hit); /* exactly one per job in one run */
            hit = rs[i];
        }
    if (hit == NULL)
        fail_msg("no result for %s", id);
    return hit;
}

static void test_aggregate_rules(void **state)
{
    (void)state;
    struct th_env e;
    th_setup(&e, "aggr", "aggregate");
    struct topics t;
    make_topics(&e, &t);
    char err[512];
    struct bm_producer *p = bm_producer_new(&e.bus, err, sizeof err);
    assert_non_null(p);
    th_start(&e, bm_role_aggregate_run);

    const Biomatch__V1__MatchMode ID = BIOMATCH__V1__MATCH_MODE__MATCH_MODE_IDENTIFY;
    const Biomatch__V1__MatchMode VE = BIOMATCH__V1__MATCH_MODE__MATCH_MODE_VERIFY;
    int64_t far = bm_wall_ms() + 60000, near = bm_wall_ms() + 2500;

    /* A: a shard before its marker, out of order, a duplicate, threshold. */
    const char *a2[] = {"s-20", "s-21"};
    const float a2s[] = {0.9f, 0.1f};
    send_shard(p, t.partials, "job-A", 3, 2, 0, 7, a2, a2s, 2);
    send_opened(p, t.partials, "job-A", 3, ID, 3, 1, 0.2f, far, NULL, TP);
    const char *a0[] = {"s-01", "s-00"};
    const float a0s[] = {0.9f, 0.5f};
    send_shard(p, t.partials, "job-A", 3, 0, 0, 5, a0, a0s, 2);
    const char *a1[] = {"s-10"};
    const float a1s[] = {0.8f};
    const float a1dup[] = {0.99f};
    send_shard(p, t.partials, "job-A", 3, 1, 0, 6, a1, a1s, 1);
    send_shard(p, t.partials, "job-A", 3, 1, 0, 6, a1, a1dup, 1); /* redelivery: dropped */

    /* B: one shard never answers -> PARTIAL at the deadline. */
    send_opened(p, t.partials, "job-B", 3, ID, 5, 0, 0, near, NULL, NULL);
    send_shard(p, t.partials, "job-B", 3, 0, 0, 3, a0, a0s, 2);
    send_shard(p, t.partials, "job-B", 3, 2, 0, 4, a2, a2s, 2);
    /* C: nobody answers -> TIMEOUT. */
    send_opened(p, t.partials, "job-C", 2, ID, 5, 0, 0, near, NULL, NULL);
    /* D: a failed shard -> ERROR with its code. */
    send_opened(p, t.partials, "job-D", 2, ID, 5, 0, 0, far, NULL, NULL);
    send_shard(p, t.partials, "job-D", 2, 0, 0, 3, a0, a0s, 2);
    send_shard(p, t.partials, "job-D", 2, 1,
               BIOMATCH__V1__ERROR_CODE__ERROR_CODE_GALLERY_VERSION_UNAVAILABLE, 0, NULL, NULL,
               0);
    /* E: VERIFY on the reply topic; the other shard does not hold the
     * subject. */
    send_opened(p, t.partials, "job-E", 2, VE, 0, 1, 0.5f, far, t.reply, TP);
    const char *e1[] = {"claimed"};
    const float e1s[] = {0.7f};
    send_shard(p, t.partials, "job-E", 2, 1, 0, 9, e1, e1s, 1);
    send_shard(p, t.partials, "job-E", 2, 0,
               BIOMATCH__V1__ERROR_CODE__ERROR_CODE_SUBJECT_NOT_FOUND, 0, NULL, NULL, 0);
    /* Garbage on partials goes to dlq and blocks nothing. */
    th_send(p, t.partials, BM_PARTITION_ANY, "junk", "\x0a\xff\xff", 3, NULL);
    assert_int_equal(bm_producer_flush(p, TH_WAIT_MS), BM_OK);

    static struct th_rec recs[TH_MAX_RECS];
    /* Wait for the four, then stay a while to catch any duplicate. */
    size_t n = th_collect(&e, t.results, 1, 4, 0, recs, TH_MAX_RECS);
    assert_int_equal(n, 4);
    th_free(recs, n);
    sleep(2);
    n = th_collect(&e, t.results, 1, -1, 1500, recs, TH_MAX_RECS);
    assert_int_equal(n, 4);
    Biomatch__V1__MatchResult *rs[8];
    for (size_t i = 0; i < n; i++) {
        rs[i] = bm_wire_decode_result(recs[i].value, recs[i].len, 1 << 20, err, sizeof err);
        assert_non_null(rs[i]);
        char key[BM_WIRE_JOB_KEY_MAX]; /* results are keyed by (agency, job id) */
        bm_wire_job_key(rs[i]->agency, rs[i]->job_id, key, sizeof key);
        assert_string_equal(recs[i].key, key);
        assert_non_null(strstr(recs[i].content_type, "biomatch.v1.MatchResult"));
    }
    Biomatch__V1__MatchResult *r = find_result(rs, n, "job-A");
    assert_int_equal(r->status, BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_OK);
    assert_int_equal(r->shards_answered, 3);
    assert_int_equal(r->shards_total, 3);
    assert_true(r->coverage == 1.0f);
    assert_int_equal(r->gallery_version, 5);
    assert_int_equal(r->comparisons, 300);
    assert_int_equal(r->n_candidates, 3); /* top 3 above 0.2 */
    assert_string_equal(r->candidates[0]->subject_id, "s-01"); /* 0.9 tie: by id */
    assert_string_equal(r->candidates[1]->subject_id, "s-20");
    assert_string_equal(r->candidates[2]->subject_id, "s-10");
    assert_true(r->candidates[2]->score == 0.8f); /* the first copy, not the duplicate */
    for (uint32_t i = 0; i < 3; i++)
        assert_int_equal(r->candidates[i]->rank, i + 1);
    assert_non_null(r->timings);
    assert_int_equal(r->timings->max_queue_us, 12);
    assert_int_equal(r->timings->max_scoring_us, 22);
    assert_true(r->timings->completed_unix_ms >= r->timings->fanned_out_unix_ms);

    r = find_result(rs, n, "job-B");
    assert_int_equal(r->status, BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_PARTIAL);
    assert_int_equal(r->shards_answered, 2);
    assert_true(r->coverage > 0.66f && r->coverage < 0.67f);
    assert_int_equal(r->n_candidates, 4);
    r = find_result(rs, n, "job-C");
    assert_int_equal(r->status, BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_TIMEOUT);
    assert_int_equal(r->shards_answered, 0);
    assert_true(r->coverage == 0.0f);
    r = find_result(rs, n, "job-D");
    assert_int_equal(r->status, BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_ERROR);
    assert_int_equal(r->error_code,
                     BIOMATCH__V1__ERROR_CODE__ERROR_CODE_GALLERY_VERSION_UNAVAILABLE);
    for (size_t i = 0; i < n; i++)
        if (strcmp(rs[i]->job_id, "job-A") == 0)
            assert_string_equal(recs[i].traceparent, TP);
    for (size_t i = 0; i < n; i++)
        bm_wire_free_result(rs[i]);
    th_free(recs, n);

    n = th_collect(&e, t.reply, 1, 1, 0, recs, TH_MAX_RECS);
    assert_int_equal(n, 1);
    r = bm_wire_decode_result(recs[0].value, recs[0].len, 1 << 20, err, sizeof err);
    assert_non_null(r);
    assert_string_equal(r->job_id, "job-E");
    assert_int_equal(r->status, BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_OK);
    assert_true(r->verified);
    assert_int_equal(r->shards_answered, 2);
    assert_string_equal(recs[0].traceparent, TP);
    bm_wire_free_result(r);
    th_free(recs, n);

    n = th_collect(&e, t.dlq, 1, 1, 0, recs, TH_MAX_RECS);
    assert_int_equal(n, 1);
    assert_string_equal(recs[0].key, "junk");
    th_free(recs, n);
    /* One audit record per job. */
    n = th_collect(&e, t.audit, 1, 5, 0, recs, TH_MAX_RECS);
    assert_int_equal(n, 5);
    th_free(recs, n);

    assert_int_equal(th_stop(&e), BM_OK);
    bm_producer_free(p);
    th_teardown(&e);
}

/* Two agencies use the same job id at the same time (label security):
 * each must get its own result, with its own candidates, on its own reply
 * topic. Keyed by job id alone, the second marker was taken for a replay
 * of the first and its shards for duplicates: one agency's job vanished
 * and the other's answer could carry the wrong candidates. */
static void test_same_job_id_two_agencies(void **state)
{
    (void)state;
    struct th_env e;
    th_setup(&e, "aggns", "aggregate");
    struct topics t;
    make_topics(&e, &t);
    char reply_b[256];
    th_topic(&e, reply_b, sizeof reply_b, "reply-b");
    th_create(&e, reply_b, 1);
    char err[512];
    struct bm_producer *p = bm_producer_new(&e.bus, err, sizeof err);
    assert_non_null(p);
    th_start(&e, bm_role_aggregate_run);

    const Biomatch__V1__MatchMode ID = BIOMATCH__V1__MATCH_MODE__MATCH_MODE_IDENTIFY;
    int64_t far = bm_wall_ms() + 60000;
    const char *a_ids[] = {"a-subject"}, *b_ids[] = {"b-subject"};
    const float a_sc[] = {0.9f}, b_sc[] = {0.8f};
    send_opened_as(p, t.partials, "agency-a", "same-id", 2, ID, 5, 0, 0, far, t.reply, NULL);
    send_opened_as(p, t.partials, "agency-b", "same-id", 2, ID, 5, 0, 0, far, reply_b, NULL);
    for (uint32_t s = 0; s < 2; s++) {
        send_shard_as(p, t.partials, "agency-a", "same-id", 2, s, 0, 1, a_ids, a_sc, s == 0);
        send_shard_as(p, t.partials, "agency-b", "same-id", 2, s, 0, 1, b_ids, b_sc, s == 1);
    }
    assert_int_equal(bm_producer_flush(p, TH_WAIT_MS), BM_OK);

    const char *topic[2] = {t.reply, reply_b};
    const char *agency[2] = {"agency-a", "agency-b"};
    const char *subject[2] = {"a-subject", "b-subject"};
    static struct th_rec recs[TH_MAX_RECS];
    for (int k = 0; k < 2; k++) {
        size_t n = th_collect(&e, topic[k], 1, 1, 2000, recs, TH_MAX_RECS);
        if (n != 1)
            fail_msg("%s: %zu results on its reply topic", agency[k], n);
        Biomatch__V1__MatchResult *r =
            bm_wire_decode_result(recs[0].value, recs[0].len, 1 << 20, err, sizeof err);
        assert_non_null(r);
        assert_string_equal(r->job_id, "same-id");
        assert_string_equal(r->agency, agency[k]);
        assert_int_equal(r->status, BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_OK);
        assert_int_equal(r->n_candidates, 1);
        assert_string_equal(r->candidates[0]->subject_id, subject[k]);
        /* The result's key is the job's key, (agency, job id). */
        char key[BM_WIRE_JOB_KEY_MAX];
        bm_wire_job_key(agency[k], "same-id", key, sizeof key);
        assert_string_equal(recs[0].key, key);
        bm_wire_free_result(r);
        th_free(recs, n);
    }
    assert_int_equal(th_stop(&e), BM_OK);
    bm_producer_free(p);
    th_teardown(&e);
}

/* Result minimisation by policy (label security): the aggregator applies
 * each agency's `results` rules. "lean": at most 2 candidates, ids without
 * scores, no internal fields; "hitonly": hit/no-hit only; "rounded": one
 * decimal, internal fields allowed; "plain" (no rules): everything but the
 * internal fields. Without minimisation every result carried up to top_k
 * candidates with raw scores, comparisons, versions, shards and timings. */
static void test_minimised_results(void **state)
{
    (void)state;
    struct th_env e;
    th_setup(&e, "aggmin", "aggregate");
    const char *pol =
        "agencies:\n"
        "  lean:\n    require_signature: false\n    galleries: {faces: [identify]}\n"
        "    results: {max_top_k: 2, detail: ids, internal_fields: false}\n"
        "  hitonly:\n    require_signature: false\n    galleries: {faces: [identify]}\n"
        "    results: {detail: hit_nohit}\n"
        "  rounded:\n    require_signature: false\n    galleries: {faces: [identify]}\n"
        "    results: {score_decimals: 1, internal_fields: true}\n"
        "  plain:\n    require_signature: false\n    galleries: {faces: [identify]}\n";
    char path[] = "/tmp/bm-test-minpol-XXXXXX";
    th_use_policy(&e, path, pol);
    char err[512];
    struct topics t;
    make_topics(&e, &t);
    struct bm_producer *p = bm_producer_new(&e.bus, err, sizeof err);
    assert_non_null(p);
    th_start(&e, bm_role_aggregate_run);

    const char *agencies[] = {"lean", "hitonly", "rounded", "plain"};
    const char *ids0[] = {"s-1", "s-2"}, *ids1[] = {"s-3"};
    const float sc0[] = {0.8765f, 0.5432f}, sc1[] = {0.7123f};
    int64_t far = bm_wall_ms() + 60000;
    for (int a = 0; a < 4; a++) {
        send_opened_as(p, t.partials, agencies[a], "mj", 2,
                       BIOMATCH__V1__MATCH_MODE__MATCH_MODE_IDENTIFY, 5, 0, 0, far, t.reply,
                       NULL);
        send_shard_as(p, t.partials, agencies[a], "mj", 2, 0, 0, 7, ids0, sc0, 2);
        send_shard_as(p, t.partials, agencies[a], "mj", 2, 1, 0, 8, ids1, sc1, 1);
    }
    assert_int_equal(bm_producer_flush(p, TH_WAIT_MS), BM_OK);
    static struct th_rec recs[TH_MAX_RECS];
    size_t n = th_collect(&e, t.reply, 1, 4, 0, recs, TH_MAX_RECS);
    assert_int_equal(n, 4);
    for (size_t i = 0; i < n; i++) {
        Biomatch__V1__MatchResult *r =
            bm_wire_decode_result(recs[i].value, recs[i].len, 1 << 20, err, sizeof err);
        assert_non_null(r);
        assert_int_equal(r->status, BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_OK);
        assert_true(r->hit);
        int internal = r->comparisons != 0 || r->gallery_version != 0 ||
                       r->timings->max_queue_us != 0 || r->timings->max_scoring_us != 0;
        for (size_t c = 0; c < r->n_candidates; c++)
            internal |= r->candidates[c]->shard != 0;
        if (strcmp(r->agency, "lean") == 0) {
            assert_int_equal(r->n_candidates, 2);
            assert_string_equal(r->candidates[0]->subject_id, "s-1");
            assert_string_equal(r->candidates[1]->subject_id, "s-3");
            assert_true(r->candidates[0]->score == 0.0f && r->candidates[1]->score == 0.0f);
            assert_int_equal(r->candidates[1]->rank, 2);
            assert_false(internal);
        } else if (strcmp(r->agency, "hitonly") == 0) {
            assert_int_equal(r->n_candidates, 0);
            assert_false(internal);
        } else if (strcmp(r->agency, "rounded") == 0) {
            assert_int_equal(r->n_candidates, 3);
            assert_true(r->candidates[0]->score == 0.9f);
            assert_true(r->candidates[1]->score == 0.7f);
            assert_true(r->candidates[2]->score == 0.5f);
            assert_int_equal(r->comparisons, 200);
            assert_int_equal(r->gallery_version, 7);
            assert_true(internal);
        } else {
            assert_string_equal(r->agency, "plain");
            assert_int_equal(r->n_candidates, 3);
            assert_true(r->candidates[0]->score == 0.8765f);
            assert_false(internal);
        }
        bm_wire_free_result(r);
    }
    th_free(recs, n);
    assert_int_equal(th_stop(&e), BM_OK);
    bm_producer_free(p);
    unlink(path);
    th_teardown(&e);
}

/* ------------------------------------------------- crash and restart */

/* A short session so the restarted process gets the dead one's
 * partitions in seconds instead of librdkafka's default 45 s. */
static const char *write_config(void)
{
    static char path[128];
    snprintf(path, sizeof path, "/tmp/bm-test-aggk-%ld.yaml", (long)getpid());
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("kafka:\n  session.timeout.ms: \"6000\"\n  heartbeat.interval.ms: \"500\"\n  auto.commit.interval.ms: \"200\"\n", f);
    fclose(f);
    return path;
}

/* The coordinator child, killed by the teardown if a check fails while
 * it runs (cmocka longjmps out of the test). */
static pid_t child = -1;

static int kill_child(void **state)
{
    (void)state;
    if (child > 0) {
        kill(child, SIGKILL);
        waitpid(child, NULL, 0);
        child = -1;
    }
    return 0;
}

static pid_t spawn_coordinator(struct th_env *e)
{
    const char *cfg = write_config();
    char exe[4096], err[256];
    if (bm_spawn_sibling(exe, sizeof exe, "../bin", "biomatch-coordinator") != 0)
        fail_msg("biomatch-coordinator not built");
    const char *extra[10];
    size_t n = 0;
    for (int i = 0; e->envp[i] && n < 9; i++)
        extra[n++] = e->envp[i];
    extra[n++] = "BIOMATCH_LOG_LEVEL=warn";
    char **env = bm_spawn_env(extra, n, NULL);
    assert_non_null(env);
    char *argv[] = {exe, (char *)"--config", (char *)cfg, NULL};
    pid_t pid = bm_spawn(argv, env, NULL, err, sizeof err);
    free(env);
    if (pid < 0)
        fail_msg("start %s: %s", exe, err);
    child = pid;
    return pid;
}

static void send_job(struct bm_producer *p, const char *topic, int i, int last_shard)
{
    char id[32];
    snprintf(id, sizeof id, "crash-%03d", i);
    const char *ids[] = {"x"};
    const float sc[] = {0.5f};
    if (last_shard) {
        send_shard(p, topic, id, 3, 2, 0, 1, ids, sc, 1);
        return;
    }
    send_opened(p, topic, id, 3, BIOMATCH__V1__MATCH_MODE__MATCH_MODE_IDENTIFY, 1, 0, 0,
                bm_wall_ms() + 120000, NULL, NULL);
    send_shard(p, topic, id, 3, 0, 0, 1, ids, sc, 1);
    send_shard(p, topic, id, 3, 1, 0, 1, ids, sc, 1);
}

static size_t distinct_results(struct th_env *e, const char *topic, int want, int *seen,
                               int nseen)
{
    static struct th_rec recs[TH_MAX_RECS];
    size_t n = th_collect(e, topic, 1, want, 1500, recs, TH_MAX_RECS);
    size_t distinct = 0;
    memset(seen, 0, sizeof *seen * (size_t)nseen);
    for (size_t i = 0; i < n; i++) {
        int k;
        /* Keys are "<agency length>:<agency><job id>" (agency-a here). */
        if (sscanf(recs[i].key, "8:agency-acrash-%d", &k) == 1 && k >= 0 && k < nseen &&
            !seen[k]++)
            distinct++;
    }
    th_free(recs, n);
    return distinct;
}

static void test_aggregate_crash_restart(void **state)
{
    (void)state;
    struct th_env e;
    th_setup(&e, "aggk", "aggregate");
    struct topics t;
    make_topics(&e, &t);
    char err[512];
    struct bm_producer *p = bm_producer_new(&e.bus, err, sizeof err);
    assert_non_null(p);
    enum { DONE_FIRST = 10, OPEN_AT_KILL = 20, AFTER = 10, TOTAL = 40 };
    int seen[TOTAL];

    pid_t pid = spawn_coordinator(&e);
    /* Jobs that complete before the crash. */
    for (int i = 0; i < DONE_FIRST; i++) {
        send_job(p, t.partials, i, 0);
        send_job(p, t.partials, i, 1);
    }
    /* Jobs still open at the crash: the last shard comes later. */
    for (int i = DONE_FIRST; i < DONE_FIRST + OPEN_AT_KILL; i++)
        send_job(p, t.partials, i, 0);
    assert_int_equal(bm_producer_flush(p, TH_WAIT_MS), BM_OK);
    assert_int_equal(distinct_results(&e, t.results, DONE_FIRST, seen, TOTAL), DONE_FIRST);
    /* Give it time to consume (and commit what it may) the open jobs. */
    sleep(2);
    assert_int_equal(kill(pid, SIGKILL), 0);
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    child = -1;

    for (int i = DONE_FIRST; i < DONE_FIRST + OPEN_AT_KILL; i++)
        send_job(p, t.partials, i, 1);
    for (int i = DONE_FIRST + OPEN_AT_KILL; i < TOTAL; i++) {
        send_job(p, t.partials, i, 0);
        send_job(p, t.partials, i, 1);
    }
    assert_int_equal(bm_producer_flush(p, TH_WAIT_MS), BM_OK);
    (void)AFTER;

    pid = spawn_coordinator(&e);
    size_t got = 0;
    int64_t start = bm_test_now_ms();
    while (got < TOTAL && bm_test_now_ms() - start < 60000) {
        got = distinct_results(&e, t.results, -1, seen, TOTAL);
        if (got < TOTAL)
            sleep(1);
    }
    for (int i = 0; i < TOTAL; i++)
        if (!seen[i])
            print_error("no result for crash-%03d\n", i);
    assert_int_equal(got, TOTAL);
    assert_int_equal(kill(pid, SIGTERM), 0);
    assert_int_equal(waitpid(pid, &st, 0), pid);
    child = -1;
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    bm_producer_free(p);
    unlink(write_config());
    th_teardown(&e);
}

int main(void)
{
    bm_log_init("test_aggregate");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_aggregate_rules),
        cmocka_unit_test(test_same_job_id_two_agencies),
        cmocka_unit_test(test_minimised_results),
        cmocka_unit_test_teardown(test_aggregate_crash_restart, kill_child),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
