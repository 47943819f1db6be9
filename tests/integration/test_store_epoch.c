/* A shard rebuilt after Redis lost its data is reloaded by the workers
 * whatever its version number (docs/storage.md §5.3, manifest epochs),
 * through real processes: a biomatch-coordinator (gallery role) and a
 * biomatch-worker on the fixture's broker and Redis.
 *
 * Five subjects are enrolled one seal at a time, so the worker holds
 * manifest version 5 or more; then FLUSHALL (Redis restarted empty, as far
 * as biomatch can tell), subject 0 is deleted and a new subject enrolled.
 * The coordinator rebuilds the shard from the log, so its versions restart
 * at 1. The worker must follow the new epoch: subject 0 is no longer
 * matched and the new subject is found. Before epochs existed the worker
 * ignored every version at or below the one it held, so both checks
 * failed. FLUSHALL makes this test RUN_SERIAL (tests/CMakeLists.txt). */
#include "test_gallery_util.h"

#define WAIT_MS 60000
#define NFIRST 5

static char tasks_topic[BM_TOPIC_MAX], partials_topic[BM_TOPIC_MAX];
static char worker_bin[PATH_MAX];
static pid_t worker_pid = -1;
static struct bm_consumer *partials_c;
static int njobs;

static void kill_worker(void)
{
    if (worker_pid > 0) {
        kill(worker_pid, SIGKILL);
        waitpid(worker_pid, NULL, 0);
        worker_pid = -1;
    }
}

static void start_worker(struct gt *g)
{
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    assert_true(n > 0);
    self[n] = '\0';
    snprintf(worker_bin, sizeof worker_bin, "%s/../bin/biomatch-worker", dirname(self));
    atexit(kill_worker);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        setenv("BIOMATCH_NODE_ID", "test-epoch-worker", 1);
        setenv("BIOMATCH_TOPIC_PREFIX", g->prefix, 1);
        setenv("BIOMATCH_WORKER_GALLERIES", g->gallery, 1);
        setenv("BIOMATCH_HTTP_ENABLED", "false", 1);
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
    Biomatch__V1__Template tp = BIOMATCH__V1__TEMPLATE__INIT;
    Biomatch__V1__DenseEmbedding d = BIOMATCH__V1__DENSE_EMBEDDING__INIT;
    Biomatch__V1__Template *probes[1] = {&tp};
    d.dim = 512;
    d.element_type = BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_F32;
    d.data.data = (uint8_t *)v;
    d.data.len = sizeof v;
    tp.modality = BIOMATCH__V1__MODALITY__MODALITY_FACE;
    tp.kind_case = BIOMATCH__V1__TEMPLATE__KIND_DENSE;
    tp.dense = &d;
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

static void test_rebuilt_shard_is_reloaded(void **state)
{
    (void)state;
    char err[512], id[64];
    struct gt g;
    gt_setup(&g, 1, 1 << 20, 100);
    assert_int_equal(bm_topic_tasks(tasks_topic, sizeof tasks_topic, g.prefix, g.gallery), 0);
    assert_int_equal(bm_topic_name(partials_topic, sizeof partials_topic, g.prefix,
                                   BM_TOPIC_PARTIALS), 0);
    struct bm_bus_conf bc = gt_bus();
    struct bm_admin *a = bm_admin_new(&bc, err, sizeof err);
    assert_non_null(a);
    struct bm_bus_topic_spec topics[] = {{tasks_topic, 1, -1, NULL, 0},
                                         {partials_topic, 1, -1, NULL, 0}};
    if (bm_admin_create_topics(a, topics, 2, WAIT_MS, err, sizeof err) != BM_OK)
        fail_msg("create topics: %s", err);
    bm_admin_free(a);
    partials_c = bm_consumer_new(&bc, NULL, NULL, NULL, err, sizeof err);
    assert_non_null(partials_c);
    struct bm_bus_tp tp = {partials_topic, 0, BM_OFFSET_BEGINNING};
    assert_int_equal(bm_consumer_assign(partials_c, &tp, 1, err, sizeof err), BM_OK);

    gt_start(&g);
    /* One seal per subject: the held version ends at NFIRST or more. */
    for (int i = 0; i < NFIRST; i++) {
        snprintf(id, sizeof id, "epoch-%d", i);
        gt_enroll(&g, g.gallery, id, BIOMATCH__V1__ENROLL_REQUEST__OP__OP_UPSERT, (uint64_t)i,
                  0, NULL);
        gt_flush(&g);
        gt_wait_total(&g, i + 1, WAIT_MS);
    }
    await_version_at_least(&g, NFIRST);
    start_worker(&g);
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
    bm_consumer_free(partials_c);
    gt_teardown(&g);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rebuilt_shard_is_reloaded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
