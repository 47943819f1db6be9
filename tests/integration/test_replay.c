/* biomatch-replay against the real broker: record live traffic, replay it,
 * and account for every job.
 *
 * The match pipeline is replaced by a small stand-in responder thread (a
 * consumer of the jobs topic that produces MatchResults), so the test
 * exercises the real record and replay paths, including the results
 * consumer, without depending on coordinator and workers. The responder
 * answers OK, except jobs whose attribute "reply" is "reject" (REJECTED)
 * or "drop" (no answer), so errors and lost jobs are checked exactly.
 *
 * Checks: record -> file holds the produced jobs in order; `run --keep-ids`
 * reproduces the same ids, and (recorded again) the relative send times
 * within 5 ms; `run --rate --json` prints one parseable JSON object with
 * done + lost + errors == jobs. Nothing asserts on speed. The binary is
 * $BIOMATCH_REPLAY_BIN, else ../bin/biomatch-replay next to this test. */
#include "testutil.h"

#include <cjson/cJSON.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "replayfile.h"
#include "bus/bus.h"
#include "wire/decode.h"

#define NJOBS 20

extern char **environ;

static const char *brokers;
static char bin[PATH_MAX];
static char jobs_a[128], jobs_b[128], results[128], tmpdir[64];

/* ------------------------------------------------------------- responder */

struct responder {
    pthread_t thr;
    volatile int stop;
    int answered;
};

static const char *attr(const Biomatch__V1__MatchJob *j, const char *key)
{
    for (size_t i = 0; i < j->n_attributes; i++)
        if (strcmp(j->attributes[i]->key, key) == 0)
            return j->attributes[i]->value;
    return "";
}

static void *responder_main(void *arg)
{
    struct responder *r = arg;
    char err[512];
    /* Answer at once: the default fetch wait would add up to 500 ms. */
    const struct bm_bus_prop fast[] = { { "fetch.wait.max.ms", "5" } };
    struct bm_bus_conf cc = { .bootstrap_servers = brokers, .props = fast, .nprops = 1 };
    struct bm_bus_conf bc = { .bootstrap_servers = brokers };
    struct bm_consumer *c = bm_consumer_new(&cc, NULL, NULL, NULL, err, sizeof err);
    struct bm_producer *p = bm_producer_new(&bc, err, sizeof err);
    assert_non_null(c);
    assert_non_null(p);
    struct bm_bus_tp tps[2] = { { jobs_b, 0, BM_OFFSET_BEGINNING }, { jobs_b, 1, BM_OFFSET_BEGINNING } };
    assert_int_equal(bm_consumer_assign(c, tps, 2, err, sizeof err), BM_OK);
    while (!r->stop) {
        struct bm_bus_msg *m = NULL;
        bm_producer_poll(p, 0);
        if (bm_consumer_poll(c, 50, &m, err, sizeof err) != BM_OK)
            continue;
        Biomatch__V1__MatchJob *j =
            bm_wire_decode_job(m->value, m->valuelen, 1 << 20, err, sizeof err);
        if (j != NULL && strcmp(attr(j, "reply"), "drop") != 0) {
            Biomatch__V1__MatchResult res = BIOMATCH__V1__MATCH_RESULT__INIT;
            Biomatch__V1__Candidate cand = BIOMATCH__V1__CANDIDATE__INIT;
            Biomatch__V1__Candidate *cp = &cand;
            res.job_id = j->job_id;
            res.gallery = j->gallery;
            int reject = strcmp(attr(j, "reply"), "reject") == 0;
            res.status = reject ? BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_REJECTED
                                : BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_OK;
            if (!reject) {
                cand.subject_id = (char *)"s00000001";
                cand.score = 0.9f;
                cand.rank = 1;
                res.n_candidates = 1;
                res.candidates = &cp;
            }
            size_t len;
            uint8_t *buf = bm_wire_encode(&res.base, &len);
            assert_int_equal(bm_producer_send(p, results, BM_PARTITION_ANY, j->job_id,
                                              strlen(j->job_id), buf, len, NULL, 0, NULL, NULL),
                             BM_OK);
            free(buf);
            r->answered++;
        }
        bm_wire_free_job(j);
        bm_bus_msg_free(m);
    }
    bm_producer_flush(p, 10000);
    bm_producer_free(p);
    bm_consumer_close(c, err, sizeof err);
    bm_consumer_free(c);
    return NULL;
}

/* ------------------------------------------------------------- processes */

/* Start biomatch-replay with 'args' (NULL-terminated), stdout to 'out'
 * (NULL: inherit). */
static pid_t spawn(const char *const *args, const char *out)
{
    const char *argv[32];
    size_t n = 0;
    argv[n++] = bin;
    for (; *args && n < 31; args++)
        argv[n++] = *args;
    argv[n] = NULL;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    if (out)
        posix_spawn_file_actions_addopen(&fa, 1, out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    pid_t pid;
    int rc = posix_spawn(&pid, bin, &fa, NULL, (char *const *)argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    assert_int_equal(rc, 0);
    return pid;
}

/* Wait at most 'secs' for 'pid'; kill it and fail the test after that. */
static int wait_exit(pid_t pid, int secs)
{
    int64_t end = bm_test_now_ms() + (int64_t)secs * 1000;
    for (;;) {
        int st;
        pid_t w = waitpid(pid, &st, WNOHANG);
        if (w == pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
        if (bm_test_now_ms() > end) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            fail_msg("biomatch-replay did not finish within %d s", secs);
        }
        struct timespec ts = { 0, 20 * 1000000 };
        nanosleep(&ts, NULL);
    }
}

static cJSON *read_json(const char *path)
{
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char buf[8192];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    cJSON *o = cJSON_Parse(buf);
    if (o == NULL)
        fail_msg("not JSON: %s", buf);
    return o;
}

static double num(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!cJSON_IsNumber(v))
        fail_msg("JSON field %s missing or not a number", k);
    return v->valuedouble;
}

/* ------------------------------------------------------------- setup */

static void produce_source(void)
{
    char err[512];
    struct bm_bus_conf bc = { .bootstrap_servers = brokers };
    struct bm_producer *p = bm_producer_new(&bc, err, sizeof err);
    assert_non_null(p);
    float vec[64];
    for (int i = 0; i < 64; i++)
        vec[i] = (float)(i + 1);
    for (int i = 0; i < NJOBS; i++) {
        char id[32];
        snprintf(id, sizeof id, "job-%02d", i);
        Biomatch__V1__DenseEmbedding d = BIOMATCH__V1__DENSE_EMBEDDING__INIT;
        d.dim = 64;
        d.element_type = BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_F32;
        d.data.data = (uint8_t *)vec;
        d.data.len = sizeof vec;
        Biomatch__V1__Template t = BIOMATCH__V1__TEMPLATE__INIT;
        t.modality = BIOMATCH__V1__MODALITY__MODALITY_FACE;
        t.kind_case = BIOMATCH__V1__TEMPLATE__KIND_DENSE;
        t.dense = &d;
        Biomatch__V1__Template *tp = &t;
        Biomatch__V1__MatchJob__AttributesEntry a = BIOMATCH__V1__MATCH_JOB__ATTRIBUTES_ENTRY__INIT;
        Biomatch__V1__MatchJob__AttributesEntry *ap = &a;
        a.key = (char *)"reply";
        a.value = (char *)(i == 5 ? "drop" : i % 7 == 3 ? "reject" : "ok");
        Biomatch__V1__MatchJob job = BIOMATCH__V1__MATCH_JOB__INIT;
        job.job_id = id;
        job.agency = (char *)"test";
        job.gallery = (char *)"g";
        job.mode = BIOMATCH__V1__MATCH_MODE__MATCH_MODE_IDENTIFY;
        job.n_probes = 1;
        job.probes = &tp;
        job.top_k = 5;
        job.n_attributes = 1;
        job.attributes = &ap;
        job.submitted_unix_ms = 1000;
        job.deadline_unix_ms = 31000;
        size_t len;
        uint8_t *buf = bm_wire_encode(&job.base, &len);
        assert_int_equal(bm_producer_send(p, jobs_a, BM_PARTITION_ANY, id, strlen(id), buf, len,
                                          NULL, 0, NULL, NULL),
                         BM_OK);
        free(buf);
        bm_producer_poll(p, 0);
        /* Uneven gaps (10..45 ms) so timing is actually reproduced. */
        struct timespec ts = { 0, (long)(10 + (i * 7) % 36) * 1000000 };
        nanosleep(&ts, NULL);
    }
    assert_int_equal(bm_producer_flush(p, 30000), BM_OK);
    bm_producer_free(p);
}

static int setup(void **state)
{
    (void)state;
    brokers = bm_test_env("BIOMATCH_KAFKA_BROKERS");
    const char *b = getenv("BIOMATCH_REPLAY_BIN");
    if (b && *b) {
        snprintf(bin, sizeof bin, "%s", b);
    } else {
        char self[PATH_MAX - 32];
        ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
        assert_true(n > 0);
        self[n] = '\0';
        *strrchr(self, '/') = '\0';
        snprintf(bin, sizeof bin, "%s/../bin/biomatch-replay", self);
    }
    if (access(bin, X_OK) != 0)
        fail_msg("biomatch-replay not found at %s (set BIOMATCH_REPLAY_BIN)", bin);
    bm_test_unique(jobs_a, sizeof jobs_a, "replay.src");
    bm_test_unique(jobs_b, sizeof jobs_b, "replay.jobs");
    bm_test_unique(results, sizeof results, "replay.results");
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_replay.XXXXXX");
    assert_non_null(mkdtemp(tmpdir));
    char err[512];
    struct bm_bus_conf bc = { .bootstrap_servers = brokers };
    struct bm_admin *a = bm_admin_new(&bc, err, sizeof err);
    assert_non_null(a);
    struct bm_bus_topic_spec t[3] = {
        { jobs_a, 2, -1, NULL, 0 }, { jobs_b, 2, -1, NULL, 0 }, { results, 3, -1, NULL, 0 },
    };
    assert_int_equal(bm_admin_create_topics(a, t, 3, 30000, err, sizeof err), BM_OK);
    bm_admin_free(a);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        return -1;
    return 0;
}

/* ------------------------------------------------------------- tests */

static void test_record_replay(void **state)
{
    (void)state;
    char f1[128], f2[128], jout[128], jout2[128], hout[128], err[512];
    snprintf(f1, sizeof f1, "%s/src.replay", tmpdir);
    snprintf(f2, sizeof f2, "%s/again.replay", tmpdir);
    snprintf(jout, sizeof jout, "%s/keep.json", tmpdir);
    snprintf(jout2, sizeof jout2, "%s/rate.json", tmpdir);
    snprintf(hout, sizeof hout, "%s/rate.hist", tmpdir);

    produce_source();
    const char *rec1[] = { "record", "--brokers", brokers, "--topic", jobs_a, "--from-beginning",
                           "--count", "20", "--duration", "60", "--out", f1, NULL };
    assert_int_equal(wait_exit(spawn(rec1, NULL), 90), 0);
    struct bm_replay a;
    assert_int_equal(bm_replay_read(f1, &a, err, sizeof err), BM_OK);
    assert_int_equal(a.nrecords, NJOBS);
    assert_string_equal(a.topic, jobs_a);
    for (size_t i = 0; i < NJOBS; i++) {
        char id[32];
        snprintf(id, sizeof id, "job-%02zu", i);
        assert_int_equal(a.records[i].keylen, strlen(id));
        assert_memory_equal(a.records[i].key, id, strlen(id));
    }

    struct responder r = { 0 };
    assert_int_equal(pthread_create(&r.thr, NULL, responder_main, &r), 0);

    /* Replay verbatim (--keep-ids) into jobs_b while recording jobs_b. */
    const char *rec2[] = { "record", "--brokers", brokers, "--topic", jobs_b, "--from-beginning",
                           "--count", "20", "--duration", "90", "--out", f2, NULL };
    pid_t recorder = spawn(rec2, NULL);
    const char *run1[] = { "run", f1, "--keep-ids", "--speedup", "1", "--brokers", brokers,
                           "--jobs-topic", jobs_b, "--results-topic", results, "--grace", "3",
                           "--json", NULL };
    assert_int_equal(wait_exit(spawn(run1, jout), 90), 0);
    assert_int_equal(wait_exit(recorder, 120), 0);

    cJSON *o = read_json(jout);
    /* A send more than 10 ms after its due time is counted late by the
     * engine itself; on a machine too busy to keep the schedule the record
     * times below say nothing about the engine, so they are checked only
     * when no send was late. */
    int on_schedule = num(o, "lateSends") == 0;
    if (!on_schedule)
        printf("replay: %.0f late sends; record times not compared\n", num(o, "lateSends"));
    assert_int_equal((int)num(o, "jobs"), NJOBS);
    assert_int_equal((int)(num(o, "done") + num(o, "lost") + num(o, "errors")), NJOBS);
    assert_int_equal((int)num(o, "lost"), 1);    /* job 5 */
    assert_int_equal((int)num(o, "errors"), 3);  /* jobs 3, 10, 17 */
    assert_true(num(o, "endToEndLatency99pct") >= num(o, "endToEndLatency50pct"));
    assert_true(num(o, "endToEndLatencyMax") >= num(o, "endToEndLatency99pct"));
    cJSON_Delete(o);

    struct bm_replay b;
    assert_int_equal(bm_replay_read(f2, &b, err, sizeof err), BM_OK);
    assert_int_equal(b.nrecords, NJOBS);
    for (size_t i = 0; i < NJOBS; i++) {
        assert_int_equal(b.records[i].keylen, a.records[i].keylen);
        assert_memory_equal(b.records[i].key, a.records[i].key, a.records[i].keylen);
        assert_int_equal(b.records[i].valuelen, a.records[i].valuelen);
        assert_memory_equal(b.records[i].value, a.records[i].value, a.records[i].valuelen);
        /* Every send within [due, due + 10 ms), and Kafka timestamps in
         * whole milliseconds: relative times agree within 12 ms. */
        int64_t d = (int64_t)b.records[i].t_us - (int64_t)a.records[i].t_us;
        if (on_schedule && (d < -12000 || d > 12000))
            fail_msg("record %zu: relative time %llu us replayed as %llu us", i,
                     (unsigned long long)a.records[i].t_us, (unsigned long long)b.records[i].t_us);
    }
    bm_replay_free(&b);

    /* Rewritten ids at a fixed rate: every job accounted for, JSON parses,
     * the histogram file is written. */
    const char *run2[] = { "run", f1, "--rate", "50", "--brokers", brokers, "--jobs-topic", jobs_b,
                           "--results-topic", results, "--grace", "3", "--json", "--hist-out",
                           hout, NULL };
    assert_int_equal(wait_exit(spawn(run2, jout2), 90), 0);
    o = read_json(jout2);
    assert_int_equal((int)num(o, "jobs"), NJOBS);
    assert_int_equal((int)(num(o, "done") + num(o, "lost") + num(o, "errors")), NJOBS);
    assert_int_equal((int)num(o, "done"), NJOBS - 4);
    assert_int_equal((int)num(o, "lost"), 1);
    assert_int_equal((int)num(o, "errors"), 3);
    assert_true(num(o, "publishRate") > 0);
    assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(o, "rank1")));
    cJSON_Delete(o);
    FILE *h = fopen(hout, "r");
    assert_non_null(h);
    char line[64] = "";
    assert_non_null(fgets(line, sizeof line, h));
    fclose(h);
    assert_string_equal(line, "biomatch-hist 1\n");

    r.stop = 1;
    pthread_join(r.thr, NULL);
    /* 20 + 20 jobs, minus the two dropped ones. */
    assert_int_equal(r.answered, 2 * (NJOBS - 1));
    bm_replay_free(&a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_record_replay, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
