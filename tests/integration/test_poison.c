/* The pipeline's answers when a task or a clock misbehaves, through the
 * real processes: one biomatch-coordinator (intake, aggregate, gallery) and
 * one build/tests/biomatch-worker-fault (the worker with the test-only fault
 * hooks of worker/fault.h), on the real broker and Redis of the integration fixture.
 *
 * Setup: a unique int8 face gallery (d = 512, S = 2, R = 1) enrolled
 * through the enroll topic and sealed by the coordinator.
 *
 * Covered, in order (the tests share the processes):
 *  - VERIFY against a subject no shard holds ends ERROR/SUBJECT_NOT_FOUND
 *    (each shard answers "not here"; the aggregator maps it), and VERIFY of
 *    an enrolled subject still ends OK;
 *  - a poison task: a job whose shard-1 task aborts the worker as it starts
 *    scoring, submitted right before valid jobs (batched with it, and
 *    redelivered with it after each crash) and followed by more valid jobs
 *    once it crashed the worker. The test restarts the worker after each
 *    crash, as a supervisor would. The worker crashes exactly
 *    worker.max_task_attempts (3) times, then shard 1 answers POISON and the
 *    job ends PARTIAL with POISON naming shard 1 (shard 0's candidates
 *    kept), while every valid job ends OK with its mate first: only the
 *    task that crashes is quarantined. The worker stays up and answers the
 *    next job;
 *  - a poison job in the aggregator: a job whose result aborts the
 *    coordinator as the aggregator starts producing it (a crash replays its
 *    partials, so it would crash forever). The test restarts the
 *    coordinator after each crash; it crashes exactly
 *    coordinator.max_job_attempts (3) times, then the job ends ERROR/POISON
 *    and the coordinator stays up and answers the next job;
 *  - a worker whose clock runs 10 s ahead (BIOMATCH_FAULT_CLOCK_OFFSET_MS)
 *    still answers a job whose deadline is 8 s away, because its deadline
 *    check allows max_clock_skew_ms (15 s here), and its
 *    biomatch_clock_skew_seconds shows about +10 s.
 * Every wait is bounded; every child is killed at exit. Times are printed,
 * never asserted. */
#include "test_gallery_util.h"

#define S 2
#define NSUBJ 24
#define MAX_ATTEMPTS 3
#define CLOCK_AHEAD_MS 10000
#define WAIT_MS 120000
#define VALID_WITH 5                 /* valid jobs submitted right after the poison one */
#define VALID_AFTER 4                /* valid jobs submitted once it crashed the worker */

static struct gt g;
static char t_jobs[BM_TOPIC_MAX], t_tasks[BM_TOPIC_MAX], t_partials[BM_TOPIC_MAX];
static char t_results[BM_TOPIC_MAX];
static char wconfig[300], wlog[300];
static int http_port;
static pid_t worker = -1;
static int64_t clock_offset_ms;
static int crashes;                  /* worker exits seen by the supervisor */
static int coord_crashes;            /* coordinator exits seen by the supervisor */
static struct bm_consumer *results_c;
static int seq;

/* Signal the worker this test started and reap it. Only ever a positive
 * pid: kill(-1, sig) would signal every process on the machine. */
static void stop_worker(int sig)
{
    if (worker <= 0)
        return;
    kill(worker, sig);
    waitpid(worker, NULL, 0);
    worker = -1;
}

static void kill_worker_at_exit(void)
{
    stop_worker(SIGKILL);
}

static void start_worker(void)
{
    char bin[PATH_MAX + 64], off[64], err[256];
    if (bm_spawn_sibling(bin, sizeof bin, ".", "biomatch-worker-fault") != 0) /* build/tests */
        fail_msg("biomatch-worker-fault not found next to the tests: build it");
    snprintf(off, sizeof off, "BIOMATCH_FAULT_CLOCK_OFFSET_MS=%lld", (long long)clock_offset_ms);
    const char *extra[] = {off};
    char **env = bm_spawn_env(extra, 1, NULL);
    assert_non_null(env);
    char *args[] = {bin, (char *)"--config", wconfig, NULL};
    struct bm_spawn_opts o = {.log_path = wlog};
    pid_t pid = bm_spawn(args, env, &o, err, sizeof err);
    free(env);
    if (pid < 0)
        fail_msg("start %s: %s", bin, err);
    worker = pid;
}

#define COORD_BIN "biomatch-coordinator-fault"

/* The supervisor: a worker or coordinator that exited is counted and
 * started again. */
static void supervise(void)
{
    int st = 0;
    if (g.pid > 0 && waitpid(g.pid, &st, WNOHANG) == g.pid) {
        coord_crashes++;
        printf("# coordinator exited (%s %d); restarting\n",
               WIFSIGNALED(st) ? "signal" : "status",
               WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
        g.pid = -1;
        if (coord_crashes > MAX_ATTEMPTS)
            fail_msg("the coordinator crashed %d times on one job: it was never quarantined",
                     coord_crashes);
        gt_start_bin(&g, ".", COORD_BIN);
        assert_true(g.pid > 0);
    }
    if (worker > 0 && waitpid(worker, &st, WNOHANG) == worker) {
        crashes++;
        printf("# worker exited (%s %d); restarting\n",
               WIFSIGNALED(st) ? "signal" : "status",
               WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
        worker = -1;
        if (crashes > MAX_ATTEMPTS)
            fail_msg("the worker crashed %d times on one task: it was never quarantined",
                     crashes);
        start_worker();
        assert_true(worker > 0);
    }
}

static void write_configs(void)
{
    /* The coordinator: all three roles, the file gt_setup made rewritten. */
    FILE *f = fopen(g.config, "w");
    assert_non_null(f);
    const char *lvl = getenv("BIOMATCH_TEST_COORD_LOG");
    fprintf(f,
            "node_id: poison-coord-%d\n"
            "topic_prefix: \"%s\"\nbrokers: \"%s\"\nredis:\n  url: \"%s\"\n"
            "http:\n  enabled: false\nlog:\n  level: %s\n"
            "coordinator:\n  roles: [intake, aggregate, gallery]\n  segment_max_age_ms: 200\n"
            "  max_job_attempts: %d\n"
            "kafka:\n  session.timeout.ms: \"6000\"\n  heartbeat.interval.ms: \"500\"\n",
            (int)getpid(), g.prefix, bm_test_env("BIOMATCH_KAFKA_BROKERS"),
            bm_test_env("BIOMATCH_REDIS_URL"), lvl != NULL ? lvl : "warn", MAX_ATTEMPTS);
    fclose(f);
    snprintf(wconfig, sizeof wconfig, "%s.worker.yaml", g.config);
    snprintf(wlog, sizeof wlog, "%s.worker.log", g.config);
    http_port = bm_test_free_port();
    f = fopen(wconfig, "w");
    assert_non_null(f);
    fprintf(f,
            "node_id: poison-worker-%d\n"
            "topic_prefix: \"%s\"\nbrokers: \"%s\"\nredis:\n  url: \"%s\"\n"
            "http:\n  enabled: true\n  bind: 127.0.0.1\n  port: %d\nlog:\n  level: info\n"
            "max_clock_skew_ms: 15000\n"
            "worker:\n  galleries: [%s]\n  threads: 1\n  max_task_attempts: %d\n"
            "  refresh_interval_ms: 200\n  drain_timeout_ms: 5000\n  batch_max_wait_ms: 100\n"
            "kafka:\n  session.timeout.ms: \"6000\"\n  heartbeat.interval.ms: \"500\"\n",
            (int)getpid(), g.prefix, bm_test_env("BIOMATCH_KAFKA_BROKERS"),
            bm_test_env("BIOMATCH_REDIS_URL"), http_port, g.gallery, MAX_ATTEMPTS);
    fclose(f);
}

static int setup(void **state)
{
    (void)state;
    char err[512];
    atexit(kill_worker_at_exit);
    gt_setup(&g, S, 1 << 20, 200);
    assert_int_equal(bm_topic_name(t_jobs, sizeof t_jobs, g.prefix, BM_TOPIC_JOBS), 0);
    assert_int_equal(bm_topic_name(t_partials, sizeof t_partials, g.prefix, BM_TOPIC_PARTIALS), 0);
    assert_int_equal(bm_topic_name(t_results, sizeof t_results, g.prefix, BM_TOPIC_RESULTS), 0);
    assert_int_equal(bm_topic_tasks(t_tasks, sizeof t_tasks, g.prefix, g.gallery), 0);
    struct bm_bus_conf bc = gt_bus();
    struct bm_admin *a = bm_admin_new(&bc, err, sizeof err);
    assert_non_null(a);
    struct bm_bus_topic_spec topics[] = {
        {t_jobs, 1, -1, NULL, 0},
        {t_partials, 1, -1, NULL, 0},
        {t_results, 1, -1, NULL, 0},
        {t_tasks, S, -1, NULL, 0},
    };
    if (bm_admin_create_topics(a, topics, 4, GT_WAIT_MS, err, sizeof err) != BM_OK)
        fail_msg("create topics: %s", err);
    bm_admin_free(a);
    write_configs();

    for (int i = 0; i < NSUBJ; i++) {
        char id[32];
        snprintf(id, sizeof id, "person-%d", i);
        gt_enroll(&g, g.gallery, id, BIOMATCH__V1__ENROLL_REQUEST__OP__OP_UPSERT,
                  (uint64_t)i + 1, 0, NULL);
    }
    gt_flush(&g);
    gt_start_bin(&g, ".", COORD_BIN);
    gt_wait_total(&g, NSUBJ, 60000);

    results_c = bm_consumer_new(&bc, NULL, NULL, NULL, err, sizeof err);
    assert_non_null(results_c);
    struct bm_bus_tp tp = {t_results, 0, BM_OFFSET_BEGINNING};
    assert_int_equal(bm_consumer_assign(results_c, &tp, 1, err, sizeof err), BM_OK);
    start_worker();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    stop_worker(SIGTERM);
    bm_consumer_free(results_c);
    gt_teardown(&g);
    unlink(wconfig);
    unlink(wlog);
    return 0;
}

/* Submit a job: probe = the enrolled vector of person-<mate>; VERIFY when
 * 'claimed' is not NULL; deadline_in_ms 0 = the coordinator's default. */
static void submit(const char *job_id, const char *claimed, int mate, int64_t deadline_in_ms)
{
    Biomatch__V1__MatchJob job = BIOMATCH__V1__MATCH_JOB__INIT;
    Biomatch__V1__Template t = BIOMATCH__V1__TEMPLATE__INIT;
    Biomatch__V1__DenseEmbedding d = BIOMATCH__V1__DENSE_EMBEDDING__INIT;
    Biomatch__V1__Template *probes[1] = {&t};
    int8_t q[512];
    gt_vector(q, 512, (uint64_t)mate + 1);
    d.dim = 512;
    d.element_type = BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_INT8;
    d.scale = 0.01f;
    d.data.data = (uint8_t *)q;
    d.data.len = sizeof q;
    t.modality = BIOMATCH__V1__MODALITY__MODALITY_FACE;
    t.kind_case = BIOMATCH__V1__TEMPLATE__KIND_DENSE;
    t.dense = &d;
    job.job_id = (char *)job_id;
    job.agency = (char *)"test-agency";
    job.gallery = g.gallery;
    job.mode = claimed != NULL ? BIOMATCH__V1__MATCH_MODE__MATCH_MODE_VERIFY
                               : BIOMATCH__V1__MATCH_MODE__MATCH_MODE_IDENTIFY;
    job.claimed_subject = (char *)(claimed != NULL ? claimed : "");
    job.top_k = 5;
    job.has_threshold = claimed != NULL;
    job.threshold = 0.5f;
    job.n_probes = 1;
    job.probes = probes;
    if (deadline_in_ms > 0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        job.deadline_unix_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000 + deadline_in_ms;
    }
    size_t len = 0;
    uint8_t *buf = bm_wire_encode(&job.base, &len);
    assert_non_null(buf);
    int failed = 0;
    assert_int_equal(bm_producer_send(g.producer, t_jobs, 0, job_id, strlen(job_id), buf, len,
                                      NULL, 0, gt_delivery, &failed),
                     BM_OK);
    free(buf);
    assert_int_equal(bm_producer_flush(g.producer, 30000), BM_OK);
    assert_int_equal(failed, 0);
}

/* The first result of each of the 'n' jobs 'ids' into 'out' (caller frees
 * them), restarting a crashed worker while waiting. */
static void await_results(const char *const *ids, size_t n, Biomatch__V1__MatchResult **out,
                          int timeout_ms)
{
    char err[256];
    size_t missing = n;
    for (size_t i = 0; i < n; i++)
        out[i] = NULL;
    int64_t end = bm_test_now_ms() + timeout_ms;
    while (missing > 0 && bm_test_now_ms() < end) {
        supervise();
        struct bm_bus_msg *m = NULL;
        if (bm_consumer_poll(results_c, 200, &m, err, sizeof err) != BM_OK)
            continue;
        Biomatch__V1__MatchResult *r =
            bm_wire_decode_result(m->value, m->valuelen, 1 << 20, err, sizeof err);
        bm_bus_msg_free(m);
        for (size_t i = 0; r != NULL && i < n; i++) {
            if (out[i] == NULL && strcmp(r->job_id, ids[i]) == 0) {
                out[i] = r;
                r = NULL;
                missing--;
            }
        }
        bm_wire_free_result(r);
    }
    for (size_t i = 0; i < n; i++)
        if (out[i] == NULL)
            fail_msg("no result for %s within %d ms", ids[i], timeout_ms);
}

/* The first result of 'job_id' (caller frees), restarting a crashed worker
 * while waiting. */
static Biomatch__V1__MatchResult *await_result(const char *job_id, int timeout_ms)
{
    Biomatch__V1__MatchResult *r = NULL;
    await_results(&job_id, 1, &r, timeout_ms);
    return r;
}

static void job_id(char *buf, size_t len, const char *what)
{
    snprintf(buf, len, "%s-%s-%d", what, g.gallery, seq++);
}

/* An IDENTIFY job answered OK by both shards: the worker is up and serving. */
static void expect_served(void)
{
    char id[160];
    job_id(id, sizeof id, "warm");
    submit(id, NULL, 3, 0);
    Biomatch__V1__MatchResult *r = await_result(id, WAIT_MS);
    if (r->status != BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_OK)
        fail_msg("%s: status %d code %d '%s'", id, r->status, r->error_code, r->error);
    assert_true(r->n_candidates > 0);
    assert_string_equal(r->candidates[0]->subject_id, "person-3");
    bm_wire_free_result(r);
}

static void test_verify_unknown_subject(void **state)
{
    (void)state;
    expect_served();
    char id[160];
    job_id(id, sizeof id, "verify-unknown");
    submit(id, "nobody-enrolled-this", 3, 0);
    Biomatch__V1__MatchResult *r = await_result(id, WAIT_MS);
    printf("# %s: status %d code %d '%s'\n", id, r->status, r->error_code, r->error);
    assert_int_equal(r->status, BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_ERROR);
    assert_int_equal(r->error_code, BIOMATCH__V1__ERROR_CODE__ERROR_CODE_SUBJECT_NOT_FOUND);
    assert_false(r->verified);
    assert_int_equal(r->n_candidates, 0);
    bm_wire_free_result(r);

    job_id(id, sizeof id, "verify-known");
    submit(id, "person-5", 5, 0);
    r = await_result(id, WAIT_MS);
    assert_int_equal(r->status, BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_OK);
    assert_true(r->verified);
    assert_int_equal(r->n_candidates, 1);
    assert_string_equal(r->candidates[0]->subject_id, "person-5");
    bm_wire_free_result(r);
}

/* The value of an unlabelled series in the worker's /metrics, or NAN. */
static double scrape(const char *series)
{
    static char body[1 << 16];
    if (bm_test_http(http_port, "GET", "/metrics", body, sizeof body) != 200)
        return NAN;
    char needle[160];
    snprintf(needle, sizeof needle, "\n%s ", series);
    const char *p = strstr(body, needle);
    return p != NULL ? strtod(p + strlen(needle), NULL) : NAN;
}

/* Submit the poison job 'id' and return its result (caller frees) once
 * the supervisor saw *crash_count reach MAX_ATTEMPTS: the process that runs
 * it crashed exactly that often before the job was quarantined. */
static Biomatch__V1__MatchResult *await_quarantined(const char *id, int *crash_count)
{
    *crash_count = 0;
    int64_t t0 = bm_test_now_ms();
    submit(id, NULL, 7, 90000);
    Biomatch__V1__MatchResult *r = await_result(id, WAIT_MS);
    printf("# %s: status %d code %d '%s' after %d crashes, %lld ms\n", id, r->status,
           r->error_code, r->error, *crash_count, (long long)(bm_test_now_ms() - t0));
    assert_int_equal(*crash_count, MAX_ATTEMPTS);
    assert_int_equal(r->error_code, BIOMATCH__V1__ERROR_CODE__ERROR_CODE_POISON);
    return r;
}

/* The process that quarantined a job (*pid) is still up, crashed no more,
 * and the pipeline serves the next job. */
static void expect_still_up(const pid_t *pid, const int *crash_count)
{
    expect_served();
    supervise();
    assert_int_equal(*crash_count, MAX_ATTEMPTS);
    assert_true(*pid > 0);
    assert_int_equal(waitpid(*pid, NULL, WNOHANG), 0); /* still running */
}

/* Submit a valid IDENTIFY job whose probe is person-<mate>'s vector. */
static void submit_valid(char *id, size_t len, int mate)
{
    job_id(id, len, "valid");
    submit(id, NULL, mate, 90000);
}

static void test_poison_task_quarantined(void **state)
{
    (void)state;
    enum { NVALID = VALID_WITH + VALID_AFTER };
    char id[160], valid[NVALID][160];
    const char *ids[1 + NVALID];
    Biomatch__V1__MatchResult *res[1 + NVALID];
    /* fault.h: "bm-fault-abort-s1" aborts the worker on shard 1's task only. */
    snprintf(id, sizeof id, "bm-fault-abort-s1-%s", g.gallery);
    ids[0] = id;
    crashes = 0;
    int64_t t0 = bm_test_now_ms();
    submit(id, NULL, 7, 90000);
    for (int i = 0; i < VALID_WITH; i++)
        submit_valid(valid[i], sizeof valid[i], 10 + i);
    int64_t end = bm_test_now_ms() + WAIT_MS;
    while (crashes == 0 && bm_test_now_ms() < end) {
        supervise();
        usleep(50 * 1000);
    }
    assert_true(crashes > 0);
    for (int i = VALID_WITH; i < NVALID; i++)
        submit_valid(valid[i], sizeof valid[i], 10 + i);
    for (int i = 0; i < NVALID; i++)
        ids[1 + i] = valid[i];
    await_results(ids, 1 + NVALID, res, WAIT_MS);

    Biomatch__V1__MatchResult *r = res[0];
    printf("# %s: status %d code %d '%s' after %d crashes, %lld ms\n", id, r->status,
           r->error_code, r->error, crashes, (long long)(bm_test_now_ms() - t0));
    assert_int_equal(crashes, MAX_ATTEMPTS);
    assert_int_equal(r->error_code, BIOMATCH__V1__ERROR_CODE__ERROR_CODE_POISON);
    assert_int_equal(r->status, BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_PARTIAL);
    assert_non_null(strstr(r->error, "shard 1"));
    assert_int_equal(r->shards_answered, 1);
    assert_int_equal(r->shards_total, S);
    /* Shard 0 scored: person-7 is found if it lives there. */
    if (bm_shard_of("person-7", 8, S) == 0) {
        assert_true(r->n_candidates > 0);
        assert_string_equal(r->candidates[0]->subject_id, "person-7");
    }
    bm_wire_free_result(r);

    /* Batched or redelivered with the poison task, never charged for it. */
    int bad = 0;
    for (int i = 0; i < NVALID; i++) {
        r = res[1 + i];
        char mate[32];
        snprintf(mate, sizeof mate, "person-%d", 10 + i);
        int ok = r->status == BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_OK &&
                 r->shards_answered == S && r->n_candidates > 0 &&
                 strcmp(r->candidates[0]->subject_id, mate) == 0;
        if (!ok) {
            printf("# %s: status %d code %d '%s', %u of %u shards\n", r->job_id, r->status,
                   r->error_code, r->error, r->shards_answered, r->shards_total);
            bad++;
        }
        bm_wire_free_result(r);
    }
    if (bad > 0)
        fail_msg("%d of %d valid jobs submitted with the poison one did not end OK with their "
                 "mate", bad, NVALID);

    /* The worker that answered POISON is still up, and serves. */
    expect_still_up(&worker, &crashes);
    double poison = NAN;
    static char body[1 << 16];
    if (bm_test_http(http_port, "GET", "/metrics", body, sizeof body) == 200) {
        const char *p = strstr(body, "status=\"poison\"} ");
        if (p != NULL)
            poison = strtod(p + strlen("status=\"poison\"} "), NULL);
    }
    assert_true(poison >= 1.0);
}

static void test_poison_job_in_aggregator(void **state)
{
    (void)state;
    char id[160];
    /* coordinator/fault.h: "bm-fault-agg-abort" aborts the aggregator as it
     * starts producing the job's result. */
    snprintf(id, sizeof id, "bm-fault-agg-abort-%s", g.gallery);
    Biomatch__V1__MatchResult *r = await_quarantined(id, &coord_crashes);
    assert_int_equal(r->status, BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_ERROR);
    assert_non_null(strstr(r->error, "aggregator gave up"));
    assert_int_equal(r->n_candidates, 0);
    bm_wire_free_result(r);

    /* The coordinator that answered POISON is still up, and serves. */
    expect_still_up(&g.pid, &coord_crashes);
}

static void test_clock_ahead_within_tolerance(void **state)
{
    (void)state;
    stop_worker(SIGTERM);
    clock_offset_ms = CLOCK_AHEAD_MS;
    start_worker();
    expect_served();

    char id[160];
    job_id(id, sizeof id, "skewed");
    /* 8 s away for everyone else, 2 s past for the worker's clock. */
    submit(id, NULL, 9, 8000);
    Biomatch__V1__MatchResult *r = await_result(id, WAIT_MS);
    printf("# %s: status %d code %d '%s'\n", id, r->status, r->error_code, r->error);
    assert_int_equal(r->status, BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_OK);
    assert_int_equal(r->shards_answered, S);
    bm_wire_free_result(r);

    double skew = scrape("biomatch_clock_skew_seconds");
    printf("# worker clock %d ms ahead: biomatch_clock_skew_seconds %.3f\n", CLOCK_AHEAD_MS,
           skew);
    assert_true(skew >= CLOCK_AHEAD_MS / 1000.0 - 0.5 && skew <= CLOCK_AHEAD_MS / 1000.0 + 3.0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_verify_unknown_subject),
        cmocka_unit_test(test_poison_task_quarantined),
        cmocka_unit_test(test_poison_job_in_aggregator),
        cmocka_unit_test(test_clock_ahead_within_tolerance),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
