/* Redis losing its data or going away, through real processes: a
 * biomatch-coordinator (gallery role) and a biomatch-worker on the
 * fixture's broker and a redis-server of this test's own (so it can be
 * flushed, killed and restarted empty without touching other tests).
 *
 * test_rebuilt_shard_is_reloaded (docs/storage.md §4.1, manifest epochs):
 * five subjects are enrolled one seal at a time, so the worker holds
 * manifest version 5 or more; then FLUSHALL, subject 0 is deleted and a
 * new subject enrolled. The coordinator rebuilds the shard from the log,
 * so its versions restart at 1. The worker must follow the new epoch:
 * subject 0 is no longer matched and the new subject is found. Before
 * epochs existed the worker ignored every version at or below the one it
 * held, so both checks failed.
 *
 * test_outage_is_waited_out (docs/storage.md §7.7): Redis is killed under
 * a loaded coordinator and worker; both stay up, report /readyz 503 and
 * biomatch_outage_waiting >= 1; a subject enrolled meanwhile waits in the
 * log; Redis comes back empty; both become ready again by themselves and
 * the worker finds the new subject.
 *
 * test_definition_survives_redis_loss (docs/storage.md §7.8): the gallery
 * is created with `biomatch gallery create` (definition in Redis and in
 * the compacted galleries topic); a coordinator with every role and a
 * worker answer a job; the coordinator stops, Redis restarts empty, the
 * coordinator starts again: the first jobs are answered OK, never
 * REJECTED UNKNOWN_GALLERY, and the definition is back in Redis. Before
 * the galleries topic the restarted coordinator knew the definition
 * nowhere: intake rejected the jobs and the builder waited for ever. */
#include "test_gallery_util.h"

#include <fcntl.h>

#define WAIT_MS 60000
#define NFIRST 5

static char tasks_topic[BM_TOPIC_MAX], partials_topic[BM_TOPIC_MAX];
static char worker_bin[PATH_MAX];
static pid_t worker_pid = -1, redis_pid = -1;
static int redis_port;
static char redis_url[64];
static struct bm_consumer *partials_c;
static int njobs;

static void stop_redis(void)
{
    if (redis_pid > 0) {
        kill(redis_pid, SIGKILL);
        waitpid(redis_pid, NULL, 0);
        redis_pid = -1;
    }
}

/* Start (or restart, empty) this test's redis-server and wait for PING. */
static void start_redis(void)
{
    char port[16], err[256];
    snprintf(port, sizeof port, "%d", redis_port);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        if (null >= 0)
            dup2(null, 1);
        execlp("redis-server", "redis-server", "--bind", "127.0.0.1", "--port", port, "--save",
               "", "--appendonly", "no", (char *)NULL);
        _exit(127);
    }
    redis_pid = pid;
    int64_t end = bm_test_now_ms() + 10000;
    while (bm_test_now_ms() < end) {
        struct bm_redis *r = bm_redis_connect(redis_url, NULL, err, sizeof err);
        int ok = r != NULL && bm_redis_ping(r) == BM_OK;
        bm_redis_close(r);
        if (ok)
            return;
        gt_sleep_ms(50);
    }
    fail_msg("redis-server on port %d did not answer", redis_port);
}

static void kill_worker(void)
{
    if (worker_pid > 0) {
        kill(worker_pid, SIGKILL);
        waitpid(worker_pid, NULL, 0);
        worker_pid = -1;
    }
}

static void start_worker(struct gt *g, int http_port)
{
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    assert_true(n > 0);
    self[n] = '\0';
    snprintf(worker_bin, sizeof worker_bin, "%s/../bin/biomatch-worker", dirname(self));
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        setenv("BIOMATCH_NODE_ID", "test-store-worker", 1);
        setenv("BIOMATCH_TOPIC_PREFIX", g->prefix, 1);
        setenv("BIOMATCH_WORKER_GALLERIES", g->gallery, 1);
        char port[16];
        snprintf(port, sizeof port, "%d", http_port);
        setenv("BIOMATCH_HTTP_ENABLED", http_port > 0 ? "true" : "false", 1);
        setenv("BIOMATCH_HTTP_PORT", port, 1);
        setenv("BIOMATCH_WORKER_THREADS", "1", 1);
        setenv("BIOMATCH_WORKER_BATCH_MAX_WAIT_MS", "5", 1);
        setenv("BIOMATCH_WORKER_REFRESH_INTERVAL_MS", "200", 1);
        setenv("BIOMATCH_LOG_LEVEL", "warn", 1);
        execl(worker_bin, worker_bin, (char *)NULL);
        _exit(127);
    }
    worker_pid = pid;
}

/* The probe for subject 'seed': the same vector intake stored. */
static void probe_of(float *v, uint64_t seed)
{
    int8_t q[512];
    gt_vector(q, 512, seed);
    for (int i = 0; i < 512; i++)
        v[i] = (float)q[i] * 0.01f;
}

/* A face probe of 'v' (512 f32, borrowed) in tp/d. */
static void make_probe(Biomatch__V1__Template *tp, Biomatch__V1__DenseEmbedding *d, float *v)
{
    biomatch__v1__template__init(tp);
    biomatch__v1__dense_embedding__init(d);
    d->dim = 512;
    d->element_type = BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_F32;
    d->data.data = (uint8_t *)v;
    d->data.len = 512 * sizeof *v;
    tp->modality = BIOMATCH__V1__MODALITY__MODALITY_FACE;
    tp->kind_case = BIOMATCH__V1__TEMPLATE__KIND_DENSE;
    tp->dense = d;
}

/* Send one IDENTIFY task for 'seed' to shard 0 and return the best
 * candidate's id (into 'best', "" when none) once the answer arrives;
 * -1 when no answer came within 'ms'. */
static int identify(struct gt *g, uint64_t seed, char *best, size_t bestlen, int ms)
{
    char err[512], id[64];
    float v[512];
    probe_of(v, seed);
    snprintf(id, sizeof id, "epoch-job-%d", njobs++);
    Biomatch__V1__MatchTask t = BIOMATCH__V1__MATCH_TASK__INIT;
    Biomatch__V1__Template tp;
    Biomatch__V1__DenseEmbedding d;
    Biomatch__V1__Template *probes[1] = {&tp};
    make_probe(&tp, &d, v);
    t.job_id = id;
    t.gallery = g->gallery;
    t.shard = 0;
    t.shard_count = 1;
    t.mode = BIOMATCH__V1__MATCH_MODE__MATCH_MODE_IDENTIFY;
    t.top_k = 5;
    t.claimed_subject = (char *)"";
    t.submitted_unix_ms = (int64_t)time(NULL) * 1000;
    t.n_probes = 1;
    t.probes = probes;
    size_t len = 0;
    uint8_t *buf = bm_wire_encode(&t.base, &len);
    assert_non_null(buf);
    int ok = 0;
    assert_int_equal(bm_producer_send(g->producer, tasks_topic, 0, id, strlen(id), buf, len,
                                      NULL, 0, gt_delivery, &ok),
                     BM_OK);
    free(buf);
    assert_int_equal(bm_producer_flush(g->producer, WAIT_MS), BM_OK);
    assert_int_equal(ok, 0);
    int64_t end = bm_test_now_ms() + ms;
    while (bm_test_now_ms() < end) {
        struct bm_bus_msg *m = NULL;
        if (bm_consumer_poll(partials_c, 100, &m, err, sizeof err) != BM_OK)
            continue;
        Biomatch__V1__PartialResult *pr = bm_wire_decode_partial(
            m->value, m->valuelen, BM_WIRE_DEFAULT_MAX_BYTES, err, sizeof err);
        bm_bus_msg_free(m);
        assert_non_null(pr);
        int mine = strcmp(pr->job_id, id) == 0;
        if (mine)
            snprintf(best, bestlen, "%s",
                     pr->n_candidates > 0 ? pr->candidates[0]->subject_id : "");
        bm_wire_free_partial(pr);
        if (mine)
            return 0;
    }
    return -1;
}

/* Ask until the best candidate for 'seed' is (want 1) or is not (want 0)
 * subject 'id'; fail after WAIT_MS. */
static void await_best(struct gt *g, uint64_t seed, const char *id, int want)
{
    char best[BM_SUBJECT_ID_MAX + 1] = "";
    int64_t end = bm_test_now_ms() + WAIT_MS;
    while (bm_test_now_ms() < end) {
        if (identify(g, seed, best, sizeof best, 5000) == 0 && (strcmp(best, id) == 0) == want)
            return;
        gt_sleep_ms(200);
    }
    fail_msg("after %d ms the worker's best match for %s is '%s' (wanted it %s)", WAIT_MS, id,
             best, want ? "found" : "gone");
}

static void await_version_at_least(struct gt *g, uint64_t version)
{
    int64_t end = bm_test_now_ms() + WAIT_MS;
    while (bm_test_now_ms() < end) {
        struct gt_view v;
        int ok = gt_view_read(g, 0, &v) == 0 && v.version >= version;
        gt_view_free(&v);
        if (ok)
            return;
        gt_sleep_ms(100);
    }
    fail_msg("manifest version %llu not reached", (unsigned long long)version);
}

/* Run `biomatch gallery create` for g's gallery (S = 1, 512-d int8 face,
 * as gt_setup defines it) with g's topic prefix. */
static void cli_gallery_create(struct gt *g)
{
    char self[PATH_MAX], bin[PATH_MAX + 32];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    assert_true(n > 0);
    self[n] = '\0';
    snprintf(bin, sizeof bin, "%s/../bin/biomatch", dirname(self));
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        setenv("BIOMATCH_TOPIC_PREFIX", g->prefix, 1);
        execl(bin, bin, "gallery", "create", g->gallery, "--modality", "face", "--dim", "512",
              "--format", "int8", "--shards", "1", "--replicas", "1", "--partitions", "1",
              (char *)NULL);
        _exit(127);
    }
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* A gallery of one shard, its tasks and partials topics, a tail of the
 * partials and a running coordinator (HTTP on 'http_port' when > 0);
 * with 'cli' the gallery is also created by `biomatch gallery create`. */
static void start_gallery(struct gt *g, int http_port, int cli)
{
    char err[512], port[16];
    gt_setup(g, 1, 1 << 20, 100);
    assert_int_equal(bm_topic_tasks(tasks_topic, sizeof tasks_topic, g->prefix, g->gallery), 0);
    assert_int_equal(bm_topic_name(partials_topic, sizeof partials_topic, g->prefix,
                                   BM_TOPIC_PARTIALS), 0);
    struct bm_bus_conf bc = gt_bus();
    struct bm_admin *a = bm_admin_new(&bc, err, sizeof err);
    assert_non_null(a);
    struct bm_bus_topic_spec topics[] = {{tasks_topic, 1, -1, NULL, 0},
                                         {partials_topic, 1, -1, NULL, 0}};
    if (bm_admin_create_topics(a, topics, 2, WAIT_MS, err, sizeof err) != BM_OK)
        fail_msg("create topics: %s", err);
    bm_admin_free(a);
    bm_consumer_free(partials_c);
    partials_c = bm_consumer_new(&bc, NULL, NULL, NULL, err, sizeof err);
    assert_non_null(partials_c);
    struct bm_bus_tp tp = {partials_topic, 0, BM_OFFSET_BEGINNING};
    assert_int_equal(bm_consumer_assign(partials_c, &tp, 1, err, sizeof err), BM_OK);
    /* The environment overrides gt_setup's file (http disabled). */
    snprintf(port, sizeof port, "%d", http_port);
    setenv("BIOMATCH_HTTP_ENABLED", http_port > 0 ? "true" : "false", 1);
    setenv("BIOMATCH_HTTP_PORT", port, 1);
    setenv("BIOMATCH_HTTP_BIND", "127.0.0.1", 1);
    if (cli)
        cli_gallery_create(g);
    gt_start(g);
}

static void test_rebuilt_shard_is_reloaded(void **state)
{
    (void)state;
    char id[64];
    struct gt g;
    start_gallery(&g, 0, 0);
    /* One seal per subject: the held version ends at NFIRST or more. */
    for (int i = 0; i < NFIRST; i++) {
        snprintf(id, sizeof id, "epoch-%d", i);
        gt_enroll(&g, g.gallery, id, BIOMATCH__V1__ENROLL_REQUEST__OP__OP_UPSERT, (uint64_t)i,
                  0, NULL);
        gt_flush(&g);
        gt_wait_total(&g, i + 1, WAIT_MS);
    }
    await_version_at_least(&g, NFIRST);
    start_worker(&g, 0);
    await_best(&g, 0, "epoch-0", 1);
    await_best(&g, NFIRST - 1, "epoch-4", 1);

    /* Redis loses everything; the gallery log still has it all. */
    struct bm_redis_reply *r = NULL;
    assert_int_equal(bm_redis_cmd(g.redis, &r, "FLUSHALL", (char *)NULL), BM_OK);
    bm_redis_reply_free(r);
    gt_enroll(&g, g.gallery, "epoch-0", BIOMATCH__V1__ENROLL_REQUEST__OP__OP_DELETE, 0, 0, NULL);
    gt_enroll(&g, g.gallery, "epoch-new", BIOMATCH__V1__ENROLL_REQUEST__OP__OP_UPSERT, 100, 0,
              NULL);
    gt_flush(&g);
    /* The rebuilt shard: NFIRST - 1 + 1 subjects, at a version below the
     * one the worker holds. */
    gt_wait_total(&g, NFIRST, WAIT_MS);
    struct gt_view v;
    assert_int_equal(gt_view_read(&g, 0, &v), 0);
    assert_null(gt_view_find(&v, "epoch-0"));
    assert_non_null(gt_view_find(&v, "epoch-new"));
    printf("rebuilt manifest version %llu (worker held %d or more)\n",
           (unsigned long long)v.version, NFIRST);
    gt_view_free(&v);

    await_best(&g, 100, "epoch-new", 1);
    await_best(&g, 0, "epoch-0", 0);
    await_best(&g, 3, "epoch-3", 1);
    kill_worker();
    gt_teardown(&g);
}

/* The value of series 'series' (name and labels, exactly as exported) in
 * the /metrics of 'port', or -1 when it cannot be read. */
static double metric(int port, const char *series)
{
    static char body[1 << 17];
    if (bm_test_http(port, "GET", "/metrics", body, sizeof body) != 200)
        return -1;
    size_t n = strlen(series);
    for (const char *p = body; (p = strstr(p, series)) != NULL; p += n)
        if ((p == body || p[-1] == '\n') && p[n] == ' ')
            return strtod(p + n + 1, NULL);
    return -1;
}

/* Wait until the process on 'port' waits out an outage (want_ready 0:
 * /readyz not 200, biomatch_outage_waiting of 'component' >= 1) or not
 * (1: /readyz 200, the gauge 0). */
static void await_state(int port, const char *component, int want_ready)
{
    char body[512], series[128];
    snprintf(series, sizeof series, "biomatch_outage_waiting{component=\"%s\"}", component);
    int64_t end = bm_test_now_ms() + WAIT_MS;
    int code = -1;
    double g = -1;
    while (bm_test_now_ms() < end) {
        code = bm_test_http(port, "GET", "/readyz", body, sizeof body);
        g = metric(port, series);
        if (want_ready ? code == 200 && g == 0 : code != 200 && g >= 1)
            return;
        gt_sleep_ms(100);
    }
    fail_msg("port %d: /readyz %d and %s %g, wanted %s", port, code, series, g,
             want_ready ? "ready, 0" : "not ready, >= 1");
}

static int alive(pid_t pid)
{
    return pid > 0 && waitpid(pid, NULL, WNOHANG) == 0;
}

static void test_outage_is_waited_out(void **state)
{
    (void)state;
    char id[64];
    struct gt g;
    int cport = bm_test_free_port(), wport = bm_test_free_port();
    start_gallery(&g, cport, 0);
    for (int i = 0; i < 3; i++) {
        snprintf(id, sizeof id, "out-%d", i);
        gt_enroll(&g, g.gallery, id, BIOMATCH__V1__ENROLL_REQUEST__OP__OP_UPSERT,
                  (uint64_t)(200 + i), 0, NULL);
    }
    gt_flush(&g);
    gt_wait_total(&g, 3, WAIT_MS);
    start_worker(&g, wport);
    await_best(&g, 200, "out-0", 1);
    await_state(cport, "coordinator", 1);
    await_state(wport, "worker", 1);

    stop_redis();
    await_state(cport, "coordinator", 0);
    await_state(wport, "worker", 0);
    /* Enrolled during the outage: it waits in the log. */
    gt_enroll(&g, g.gallery, "out-new", BIOMATCH__V1__ENROLL_REQUEST__OP__OP_UPSERT, 300, 0,
              NULL);
    gt_flush(&g);
    gt_sleep_ms(3000);
    assert_true(alive(g.pid));
    assert_true(alive(worker_pid));

    start_redis(); /* back, and empty */
    await_state(cport, "coordinator", 1);
    await_state(wport, "worker", 1);
    gt_wait_total(&g, 4, WAIT_MS);
    await_best(&g, 300, "out-new", 1);
    await_best(&g, 201, "out-1", 1);
    assert_true(alive(g.pid));
    assert_true(alive(worker_pid));
    kill_worker();
    gt_teardown(&g);
}

static char results_topic[BM_TOPIC_MAX];

/* Submit an IDENTIFY job for subject 'seed' and wait for its result:
 * its status, and the best candidate in 'best'. -1 when no result came. */
static int submit_job(struct gt *g, struct bm_consumer *results, uint64_t seed, char *best,
                      size_t bestlen, int *error_code)
{
    char err[512], id[64], jobs[BM_TOPIC_MAX];
    float v[512];
    probe_of(v, seed);
    snprintf(id, sizeof id, "def-job-%d", njobs++);
    assert_int_equal(bm_topic_name(jobs, sizeof jobs, g->prefix, BM_TOPIC_JOBS), 0);
    Biomatch__V1__MatchJob j = BIOMATCH__V1__MATCH_JOB__INIT;
    Biomatch__V1__Template tp;
    Biomatch__V1__DenseEmbedding d;
    Biomatch__V1__Template *probes[1] = {&tp};
    make_probe(&tp, &d, v);
    j.job_id = id;
    j.agency = (char *)"test-agency";
    j.gallery = g->gallery;
    j.mode = BIOMATCH__V1__MATCH_MODE__MATCH_MODE_IDENTIFY;
    j.top_k = 3;
    j.submitted_unix_ms = (int64_t)time(NULL) * 1000;
    j.deadline_unix_ms = j.submitted_unix_ms + 30000;
    j.n_probes = 1;
    j.probes = probes;
    size_t len = 0;
    uint8_t *buf = bm_wire_encode(&j.base, &len);
    assert_non_null(buf);
    int ok = 0;
    assert_int_equal(bm_producer_send(g->producer, jobs, BM_PARTITION_ANY, id, strlen(id), buf,
                                      len, NULL, 0, gt_delivery, &ok),
                     BM_OK);
    free(buf);
    assert_int_equal(bm_producer_flush(g->producer, WAIT_MS), BM_OK);
    int64_t end = bm_test_now_ms() + 40000;
    while (bm_test_now_ms() < end) {
        struct bm_bus_msg *m = NULL;
        if (bm_consumer_poll(results, 100, &m, err, sizeof err) != BM_OK)
            continue;
        Biomatch__V1__MatchResult *r =
            biomatch__v1__match_result__unpack(NULL, m->valuelen, m->value);
        bm_bus_msg_free(m);
        assert_non_null(r);
        int mine = strcmp(r->job_id, id) == 0;
        int status = r->status;
        if (mine) {
            snprintf(best, bestlen, "%s", r->n_candidates > 0 ? r->candidates[0]->subject_id : "");
            *error_code = r->error_code;
        }
        biomatch__v1__match_result__free_unpacked(r, NULL);
        if (mine)
            return status;
    }
    return -1;
}

static void test_definition_survives_redis_loss(void **state)
{
    (void)state;
    char err[512], best[BM_SUBJECT_ID_MAX + 1];
    struct gt g;
    int code = 0;
    setenv("BIOMATCH_COORDINATOR_ROLES", "gallery,intake,aggregate", 1);
    start_gallery(&g, 0, 1);
    assert_int_equal(bm_topic_name(results_topic, sizeof results_topic, g.prefix,
                                   BM_TOPIC_RESULTS), 0);
    struct bm_bus_conf bc = gt_bus();
    struct bm_consumer *results = bm_consumer_new(&bc, NULL, NULL, NULL, err, sizeof err);
    assert_non_null(results);
    struct bm_bus_tp tp = {results_topic, 0, BM_OFFSET_BEGINNING};
    assert_int_equal(bm_consumer_assign(results, &tp, 1, err, sizeof err), BM_OK);
    for (int i = 0; i < 3; i++) {
        char id[32];
        snprintf(id, sizeof id, "def-%d", i);
        gt_enroll(&g, g.gallery, id, BIOMATCH__V1__ENROLL_REQUEST__OP__OP_UPSERT,
                  (uint64_t)(400 + i), 0, NULL);
    }
    gt_flush(&g);
    gt_wait_total(&g, 3, WAIT_MS);
    start_worker(&g, 0);
    int64_t end = bm_test_now_ms() + WAIT_MS;
    int st = -1;
    while (bm_test_now_ms() < end &&
           (st = submit_job(&g, results, 401, best, sizeof best, &code)) !=
               BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_OK)
        gt_sleep_ms(500);
    assert_int_equal(st, BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_OK);
    assert_string_equal(best, "def-1");

    /* The coordinator goes, Redis comes back empty, the coordinator
     * comes back: it knows the gallery only from the galleries topic. */
    assert_int_equal(gt_stop(&g, SIGTERM), 0);
    stop_redis();
    start_redis();
    gt_start(&g);
    for (int k = 0; k < 3; k++) {
        st = submit_job(&g, results, 402, best, sizeof best, &code);
        assert_int_not_equal(st, BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_REJECTED);
        if (st == BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_OK)
            break;
    }
    printf("first jobs after the restart: status %d, error code %d, best '%s'\n", st, code,
           best);
    assert_int_equal(st, BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_OK);
    assert_string_equal(best, "def-2");
    int rc = BM_OK;
    Biomatch__V1__GalleryDefinition *def = bm_galdef_get(g.redis, g.gallery, &rc, err, sizeof err);
    assert_non_null(def);
    bm_galdef_free(def);
    gt_wait_total(&g, 3, WAIT_MS); /* and the shard is rebuilt */
    bm_consumer_free(results);
    kill_worker();
    gt_teardown(&g);
    unsetenv("BIOMATCH_COORDINATOR_ROLES");
}

static int setup(void **state)
{
    (void)state;
    redis_port = bm_test_free_port();
    snprintf(redis_url, sizeof redis_url, "redis://127.0.0.1:%d", redis_port);
    /* gt_setup, the coordinator and the worker all take Redis from here. */
    setenv("BIOMATCH_REDIS_URL", redis_url, 1);
    atexit(stop_redis);
    atexit(kill_worker);
    start_redis();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    kill_worker();
    bm_consumer_free(partials_c);
    partials_c = NULL;
    stop_redis();
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rebuilt_shard_is_reloaded),
        cmocka_unit_test(test_outage_is_waited_out),
        cmocka_unit_test(test_definition_survives_redis_loss),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
