/* No record and no outage stops a coordinator role (issue: fault-proof
 * pipeline), against the real broker and Redis, roles on threads:
 *
 *  - ~1.01 MB of garbage on `jobs` (and on `enroll`) becomes a bounded dlq
 *    stub and the role keeps consuming;
 *  - a legal job whose result could exceed the record size limit is
 *    REJECTED TOO_LARGE by intake; a result that still does not fit is sent
 *    truncated (RESULT_TRUNCATED, count left out) by the aggregator;
 *  - a reply topic that does not exist gets nothing: the result goes to
 *    `results` with REPLY_TOPIC_REFUSED naming it;
 *  - the broker stopped (SIGSTOP) for longer than the producers'
 *    message.timeout.ms while a result is in flight: delivered afterwards;
 *  - Redis stopped for longer than its I/O timeout during a gallery-cache
 *    miss: intake waits and fans the job out afterwards.
 *
 * Each case checks that the role is still running (the thread has not
 * returned) and stops cleanly. Run serially: it stops the shared services. */
#include "role.h"

#include "aggregate.h"
#include "gallery.h"
#include "intake.h"
#include "common/clock.h"
#include "wire/headers.h"

#include <signal.h>

#include "coord_helpers.h"
#include "store/galdef.h"
#include "store/redis.h"
#include "wire/decode.h"

#define DIM 64
#define BIG 1010000 /* bytes of garbage: over librdkafka's old 1,000,000 */

static char gallery[80];

/* th_setup plus YAML the environment cannot express: a short
 * message.timeout.ms (so an outage outlasts it), a quick verdict on
 * unknown topics, and a record size limit below the garbage's size. The
 * test's own handles may write records up to 2 MiB. */
static void setup(struct th_env *e, const char *name, const char *roles)
{
    th_setup(e, name, roles);
    bm_conf_destroy(e->conf);
    static const char yaml[] = "kafka:\n"
                               "  message.timeout.ms: \"1500\"\n"
                               "  socket.timeout.ms: \"2000\"\n"
                               "  topic.metadata.propagation.max.ms: \"1000\"\n"
                               "topics:\n"
                               "  max_record_bytes: 1000000\n"
                               "redis:\n"
                               "  io_timeout_ms: 300\n"
                               "  connect_timeout_ms: 300\n";
    char err[512];
    e->conf = bm_conf_parse(yaml, sizeof yaml - 1, "test", e->envp, err, sizeof err);
    if (e->conf == NULL)
        fail_msg("conf: %s", err);
    e->ctx.conf = e->conf;
    e->bus.bootstrap_servers = e->conf->brokers; /* the old conf's string is gone */
    e->bus.max_record_bytes = 2 << 20;
}

/* 1 while the role's thread has not returned. */
static int role_alive(struct th_env *e)
{
    return e->running && pthread_kill(e->thread, 0) == 0 && e->rc == BM_OK;
}

static void put_gallery(struct th_env *e, uint32_t shards)
{
    th_put_gallery(e, "gf", gallery, sizeof gallery, DIM, shards, 1);
    char tasks[256];
    bm_topic_tasks(tasks, sizeof tasks, e->prefix, gallery);
    th_create(e, tasks, (int)shards);
}

static uint8_t *make_job(const char *id, size_t nprobes, uint32_t top_k, const char *reply,
                         size_t *len)
{
    float v[DIM];
    Biomatch__V1__DenseEmbedding de;
    Biomatch__V1__Template t;
    th_dense_probe(v, DIM, &de, &t);
    Biomatch__V1__Template *tp[16];
    for (size_t i = 0; i < nprobes && i < 16; i++)
        tp[i] = &t;
    Biomatch__V1__MatchJob j = BIOMATCH__V1__MATCH_JOB__INIT;
    j.job_id = (char *)id;
    j.agency = (char *)"agency-a";
    j.gallery = gallery;
    j.mode = BIOMATCH__V1__MATCH_MODE__MATCH_MODE_IDENTIFY;
    j.n_probes = nprobes;
    j.probes = tp;
    j.top_k = top_k;
    j.reply_topic = (char *)(reply ? reply : "");
    j.submitted_unix_ms = bm_wall_ms();
    return bm_wire_encode(&j.base, len);
}

static void send_garbage(struct bm_producer *p, const char *topic, const char *key, size_t n)
{
    uint8_t *g = malloc(n);
    assert_non_null(g);
    for (size_t i = 0; i < n; i++)
        g[i] = (uint8_t)(i * 131u + 7u);
    g[0] = 0x0a; /* a length-delimited field 1 that runs past the end */
    th_send(p, topic, BM_PARTITION_ANY, key, g, n, NULL);
    free(g);
}

/* The pid of the fixture's "redis" or "kafka" (the single broker), from
 * the pidfiles scripts/services keeps in the services directory; NULL
 * directory (services started elsewhere): the test is skipped. */
static pid_t service_pid(const char *what)
{
    const char *dir = getenv("BIOMATCH_SERVICES_DIR");
    if (dir == NULL || dir[0] == '\0') {
        printf("# no BIOMATCH_SERVICES_DIR: cannot stop %s; skipped\n", what);
        skip();
    }
    char path[1024];
    snprintf(path, sizeof path, "%s/%s/%s.pid", dir, what, what);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        fail_msg("no pidfile %s", path);
    long pid = 0;
    if (fscanf(f, "%ld", &pid) != 1 || pid <= 1)
        fail_msg("bad pidfile %s", path);
    fclose(f);
    return (pid_t)pid;
}

static Biomatch__V1__MatchResult *decode_result(const struct th_rec *r)
{
    char err[256];
    Biomatch__V1__MatchResult *m =
        bm_wire_decode_result(r->value, r->len, 4 << 20, err, sizeof err);
    if (m == NULL)
        fail_msg("result: %s", err);
    return m;
}

/* ------------------------------------------------------------ intake */

struct topics {
    char jobs[256], partials[256], results[256], dlq[256], audit[256];
};

/* What intake reads and writes, and a one-shard gallery. */
static void intake_topics(struct th_env *e, struct topics *t)
{
    bm_topic_name(t->jobs, sizeof t->jobs, e->prefix, BM_TOPIC_JOBS);
    bm_topic_name(t->partials, sizeof t->partials, e->prefix, BM_TOPIC_PARTIALS);
    bm_topic_name(t->results, sizeof t->results, e->prefix, BM_TOPIC_RESULTS);
    bm_topic_name(t->dlq, sizeof t->dlq, e->prefix, BM_TOPIC_DLQ);
    bm_topic_name(t->audit, sizeof t->audit, e->prefix, BM_TOPIC_AUDIT);
    th_create(e, t->jobs, 1);
    th_create(e, t->partials, 1);
    th_create(e, t->results, 1);
    th_create(e, t->dlq, 1);
    th_create(e, t->audit, 1);
    put_gallery(e, 1);
}

static void test_intake_garbage_and_too_large(void **state)
{
    (void)state;
    struct th_env e;
    setup(&e, "fgarb", "intake");
    struct topics t;
    intake_topics(&e, &t);
    char err[512];
    struct bm_producer *p = bm_producer_new(&e.bus, err, sizeof err);
    assert_non_null(p);
    send_garbage(p, t.jobs, "garbage-1", BIG);
    /* 16 probes x top_k 1000 could be ~2.5 MB of candidates. */
    size_t len;
    uint8_t *b = make_job("too-large", 16, 1000, NULL, &len);
    th_send(p, t.jobs, BM_PARTITION_ANY, "too-large", b, len, NULL);
    free(b);
    b = make_job("after", 1, 5, NULL, &len);
    th_send(p, t.jobs, BM_PARTITION_ANY, "after", b, len, NULL);
    free(b);
    assert_int_equal(bm_producer_flush(p, TH_WAIT_MS), BM_OK);
    th_start(&e, bm_role_intake_run);

    static struct th_rec recs[TH_MAX_RECS];
    size_t n = th_collect(&e, t.dlq, 1, 1, 0, recs, TH_MAX_RECS);
    assert_int_equal(n, 1);
    assert_string_equal(recs[0].key, "garbage-1");
    assert_true(strncmp(recs[0].error, "ERROR_CODE_TOO_LARGE", 20) == 0);
    assert_non_null(strstr(recs[0].content_type, "DeadLetterStub"));
    assert_true(recs[0].len < 4096);
    Biomatch__V1__DeadLetterStub *s =
        biomatch__v1__dead_letter_stub__unpack(NULL, recs[0].len, recs[0].value);
    assert_non_null(s);
    assert_string_equal(s->source_topic, t.jobs);
    assert_int_equal(s->source_offset, 0);
    assert_int_equal(s->value_size, BIG);
    assert_int_equal(s->value_sha256.len, 32);
    assert_int_equal(s->error_code, BIOMATCH__V1__ERROR_CODE__ERROR_CODE_TOO_LARGE);
    biomatch__v1__dead_letter_stub__free_unpacked(s, NULL);
    th_free(recs, n);

    n = th_collect(&e, t.results, 1, 1, 0, recs, TH_MAX_RECS);
    assert_int_equal(n, 1);
    Biomatch__V1__MatchResult *r = decode_result(&recs[0]);
    assert_string_equal(r->job_id, "too-large");
    assert_int_equal(r->status, BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_REJECTED);
    assert_int_equal(r->error_code, BIOMATCH__V1__ERROR_CODE__ERROR_CODE_TOO_LARGE);
    printf("# %s\n", r->error);
    bm_wire_free_result(r);
    th_free(recs, n);
    /* The job after them was fanned out: intake went on. */
    n = th_collect(&e, t.partials, 1, 1, 0, recs, TH_MAX_RECS);
    assert_int_equal(n, 1);
    assert_string_equal(recs[0].key, "8:agency-aafter"); /* (agency, job id) */
    th_free(recs, n);
    assert_true(role_alive(&e));
    assert_int_equal(th_stop(&e), BM_OK);
    bm_producer_free(p);
    th_teardown(&e);
}

/* ------------------------------------------------------------ enroll */

/* ~1.01 MB of garbage on `enroll`: a dlq stub, and the requests after it
 * are handled (the batch is not consumed again forever). */
static void test_enroll_garbage(void **state)
{
    (void)state;
    struct th_env e;
    setup(&e, "fenr", "gallery");
    char enroll[256], dlq[256], audit[256];
    bm_topic_name(enroll, sizeof enroll, e.prefix, BM_TOPIC_ENROLL);
    bm_topic_name(dlq, sizeof dlq, e.prefix, BM_TOPIC_DLQ);
    bm_topic_name(audit, sizeof audit, e.prefix, BM_TOPIC_AUDIT);
    th_create(&e, enroll, 1);
    th_create(&e, dlq, 1);
    th_create(&e, audit, 1);
    char err[512];
    struct bm_producer *p = bm_producer_new(&e.bus, err, sizeof err);
    assert_non_null(p);
    send_garbage(p, enroll, "garbage-2", BIG);
    send_garbage(p, enroll, "junk-after", 64);
    assert_int_equal(bm_producer_flush(p, TH_WAIT_MS), BM_OK);
    th_start(&e, bm_enroll_run);
    static struct th_rec recs[TH_MAX_RECS];
    size_t n = th_collect(&e, dlq, 1, 2, 0, recs, TH_MAX_RECS);
    assert_int_equal(n, 2);
    assert_string_equal(recs[0].key, "garbage-2");
    assert_non_null(strstr(recs[0].content_type, "DeadLetterStub"));
    assert_true(recs[0].len < 4096);
    assert_string_equal(recs[1].key, "junk-after");
    assert_int_equal(recs[1].len, 64); /* small: copied whole */
    th_free(recs, n);
    assert_true(role_alive(&e));
    assert_int_equal(th_stop(&e), BM_OK);
    bm_producer_free(p);
    th_teardown(&e);
}

/* Redis stopped for 2 s (I/O timeout 0.3 s) while intake looks up a
 * gallery it has not cached: it waits, then fans the job out. */
static void test_intake_rides_out_redis(void **state)
{
    (void)state;
    struct th_env e;
    setup(&e, "fredis", "intake");
    struct topics t;
    intake_topics(&e, &t);
    char err[512];
    struct bm_producer *p = bm_producer_new(&e.bus, err, sizeof err);
    assert_non_null(p);
    th_start(&e, bm_role_intake_run);
    /* Let intake join its group and connect before Redis goes away. */
    bm_sleep_ms(3000);
    size_t len;
    uint8_t *b;
    pid_t redis = service_pid("redis");
    assert_int_equal(kill(redis, SIGSTOP), 0);
    b = make_job("during-outage", 1, 5, NULL, &len);
    th_send(p, t.jobs, BM_PARTITION_ANY, "during-outage", b, len, NULL);
    free(b);
    assert_int_equal(bm_producer_flush(p, TH_WAIT_MS), BM_OK);
    bm_sleep_ms(2000);
    int alive = role_alive(&e);
    assert_int_equal(kill(redis, SIGCONT), 0);
    assert_true(alive);
    static struct th_rec recs[TH_MAX_RECS];
    size_t n = th_collect(&e, t.partials, 1, 1, 0, recs, TH_MAX_RECS);
    assert_int_equal(n, 1);
    assert_string_equal(recs[0].key, "8:agency-aduring-outage");
    th_free(recs, n);
    assert_true(role_alive(&e));
    assert_int_equal(th_stop(&e), BM_OK);
    bm_producer_free(p);
    th_teardown(&e);
}

/* ------------------------------------------------------------ aggregate */

static void send_opened(struct bm_producer *p, const char *topic, const char *id,
                        uint32_t top_k, uint32_t probes, int64_t deadline, const char *reply)
{
    Biomatch__V1__PartialResult o = BIOMATCH__V1__PARTIAL_RESULT__INIT;
    o.job_id = (char *)id;
    o.kind = BIOMATCH__V1__PARTIAL_RESULT__KIND__KIND_OPENED;
    o.shard_count = 1;
    o.agency = (char *)"agency-a";
    o.gallery = (char *)"faces";
    o.mode = BIOMATCH__V1__MATCH_MODE__MATCH_MODE_IDENTIFY;
    o.top_k = top_k;
    o.deadline_unix_ms = deadline;
    o.reply_topic = (char *)(reply ? reply : "");
    o.probe_count = probes;
    th_send_partial(p, topic, &o);
}

/* One shard's answer: 'probes' x 'per' candidates with 60-byte ids. */
static void send_shard(struct bm_producer *p, const char *topic, const char *id,
                       uint32_t probes, uint32_t per)
{
    size_t n = (size_t)probes * per;
    Biomatch__V1__Candidate *cv = calloc(n, sizeof *cv);
    Biomatch__V1__Candidate **cp = calloc(n, sizeof *cp);
    char (*ids)[64] = calloc(n, sizeof *ids);
    assert_true(cv && cp && ids);
    for (size_t i = 0; i < n; i++) {
        biomatch__v1__candidate__init(&cv[i]);
        snprintf(ids[i], sizeof ids[i], "subject-%052zu", i);
        cv[i].subject_id = ids[i];
        cv[i].score = 1.0f - (float)(i % per) / (float)per;
        cv[i].rank = (uint32_t)(i % per) + 1;
        cv[i].probe_index = (uint32_t)(i / per);
        cp[i] = &cv[i];
    }
    Biomatch__V1__PartialResult m = BIOMATCH__V1__PARTIAL_RESULT__INIT;
    m.job_id = (char *)id;
    m.kind = BIOMATCH__V1__PARTIAL_RESULT__KIND__KIND_SHARD;
    m.shard_count = 1;
    m.status = BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_OK;
    m.n_candidates = n;
    m.candidates = cp;
    m.gallery_version = 1;
    m.worker = (char *)"w1";
    m.agency = (char *)"agency-a"; /* jobs are keyed by (agency, job id) */
    th_send_partial(p, topic, &m);
    free(ids);
    free(cp);
    free(cv);
}

/* The result for job 'id' on 'topic', waiting (bounded) for it to come. */
static Biomatch__V1__MatchResult *result_of(struct th_env *e, const char *topic, const char *id)
{
    static struct th_rec recs[TH_MAX_RECS];
    Biomatch__V1__MatchResult *found = NULL;
    char key[BM_WIRE_JOB_KEY_MAX]; /* results are keyed by (agency, job id) */
    bm_wire_job_key("agency-a", id, key, sizeof key);
    int64_t end = bm_test_now_ms() + TH_WAIT_MS;
    while (found == NULL && bm_test_now_ms() < end) {
        size_t n = th_collect(e, topic, 1, -1, 1500, recs, TH_MAX_RECS);
        for (size_t i = 0; i < n && found == NULL; i++)
            if (strcmp(recs[i].key, key) == 0)
                found = decode_result(&recs[i]);
        th_free(recs, n);
    }
    if (found == NULL)
        fail_msg("no result for %s on %s", id, topic);
    return found;
}

static void test_aggregate_refusals_and_outage(void **state)
{
    (void)state;
    struct th_env e;
    setup(&e, "fagg", "aggregate");
    char partials[256], results[256], dlq[256], audit[256], gone[256];
    bm_topic_name(partials, sizeof partials, e.prefix, BM_TOPIC_PARTIALS);
    bm_topic_name(results, sizeof results, e.prefix, BM_TOPIC_RESULTS);
    bm_topic_name(dlq, sizeof dlq, e.prefix, BM_TOPIC_DLQ);
    bm_topic_name(audit, sizeof audit, e.prefix, BM_TOPIC_AUDIT);
    th_topic(&e, gone, sizeof gone, "agency-replies-gone");
    th_create(&e, partials, 1);
    th_create(&e, results, 1);
    th_create(&e, dlq, 1);
    th_create(&e, audit, 1);
    char err[512];
    struct bm_producer *p = bm_producer_new(&e.bus, err, sizeof err);
    assert_non_null(p);
    int64_t far = bm_wall_ms() + 60000;
    /* 16 x 1000 candidates of 60-byte ids: ~1.3 MB of result. */
    send_opened(p, partials, "huge", 1000, 16, far, NULL);
    send_shard(p, partials, "huge", 16, 1000);
    /* A reply topic that does not exist. */
    send_opened(p, partials, "no-reply", 5, 1, far, gone);
    send_shard(p, partials, "no-reply", 1, 3);
    assert_int_equal(bm_producer_flush(p, TH_WAIT_MS), BM_OK);
    th_start(&e, bm_role_aggregate_run);

    Biomatch__V1__MatchResult *r = result_of(&e, results, "huge");
    assert_int_equal(r->error_code, BIOMATCH__V1__ERROR_CODE__ERROR_CODE_RESULT_TRUNCATED);
    assert_int_equal(r->candidates_left_out, 16000);
    assert_int_equal(r->n_candidates, 0);
    bm_wire_free_result(r);
    r = result_of(&e, results, "no-reply");
    assert_int_equal(r->error_code, BIOMATCH__V1__ERROR_CODE__ERROR_CODE_REPLY_TOPIC_REFUSED);
    assert_non_null(strstr(r->error, gone));
    assert_int_equal(r->n_candidates, 3);
    bm_wire_free_result(r);
    assert_true(role_alive(&e));

    /* The broker stops for 9 s while three results fall due (their jobs'
     * deadlines pass): the first may be in flight, the others wait in the
     * producer past message.timeout.ms (1.5 s), librdkafka having dropped
     * the stalled connection after socket.timeout.ms (2 s). All arrive. */
    int64_t t0 = bm_wall_ms();
    send_opened(p, partials, "outage-1", 5, 1, t0 + 2500, NULL);
    send_opened(p, partials, "outage-2", 5, 1, t0 + 5000, NULL);
    send_opened(p, partials, "outage-3", 5, 1, t0 + 7000, NULL);
    assert_int_equal(bm_producer_flush(p, TH_WAIT_MS), BM_OK);
    bm_sleep_ms(1500); /* consumed; the deadlines pass while stopped */
    pid_t kafka = service_pid("kafka");
    assert_int_equal(kill(kafka, SIGSTOP), 0);
    bm_sleep_ms(9000);
    int alive = role_alive(&e);
    assert_int_equal(kill(kafka, SIGCONT), 0);
    assert_true(alive);
    static const char *const late[] = {"outage-1", "outage-2", "outage-3"};
    for (size_t i = 0; i < 3; i++) {
        r = result_of(&e, results, late[i]);
        assert_int_equal(r->status, BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_TIMEOUT);
        bm_wire_free_result(r);
    }
    assert_true(role_alive(&e));
    assert_int_equal(th_stop(&e), BM_OK);
    bm_producer_free(p);
    th_teardown(&e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_intake_garbage_and_too_large),
        cmocka_unit_test(test_intake_rides_out_redis),
        cmocka_unit_test(test_enroll_garbage),
        cmocka_unit_test(test_aggregate_refusals_and_outage),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
