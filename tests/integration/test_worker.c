/* Integration test of biomatch-worker against the real Kafka broker and
 * Redis: a small f32 face gallery (S = 2 shards, R = 2 replicas) is written
 * straight to Redis with the segment and manifest codecs, the worker binary
 * is spawned as a child process, MatchTasks are produced to tasks.<g> and
 * the partials are checked against an in-process scalar search of the same
 * segments (ids and order; scores within 1e-5).
 *
 * Covered, in order (the tests share one gallery and run in sequence):
 * identify and verify answers (a shard without the claimed subject answers
 * SUBJECT_NOT_FOUND); a malformed task goes to the dlq and the
 * next task is still answered; a newly published manifest version is
 * followed (min_gallery_version) and an unreachable version answers
 * GALLERY_VERSION_UNAVAILABLE; a shard whose manifest is gone shows its
 * backlog in the lag gauge and answers it once the manifest is back;
 * SIGTERM exits 0 with every answered offset
 * committed (the next worker answers nothing twice); SIGKILL with tasks
 * polled but unanswered loses nothing and repeats nothing committed (a new
 * worker redelivers exactly the uncommitted ones). Every wait is bounded. */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"

#include "biomatch.pb-c.h"
#include "bus/bus.h"
#include "common/err.h"
#include "conf/topics.h"
#include "match/cpu.h"
#include "match/gallery.h"
#include "store/galdef.h"
#include "store/keys.h"
#include "store/manifest.h"
#include "store/redis.h"
#include "store/segment.h"
#include "wire/decode.h"
#include "wire/job.h"
#include "wire/shard.h"

#include "childproc.h"

#define S 2
#define R 2
#define DIM 64
#define NSUBJ 120
#define WAIT_MS 60000
#define MAX_JOBS 256
#define MAX_PARTIALS 1024
#define TRACEPARENT "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

static const char *brokers;
static const char *redis_url;
static char prefix[128];
static char gallery[64];
static char tasks_topic[BM_TOPIC_MAX], partials_topic[BM_TOPIC_MAX], dlq_topic[BM_TOPIC_MAX];
static char config_path[256];
static char worker_bin[PATH_MAX];
static struct bm_spec spec;
static struct bm_redis *redis;
static struct bm_producer *producer;
static struct bm_consumer *partials_c, *dlq_c;

/* Reference data: every enrolled vector, by subject index. */
static float vecs[NSUBJ + 8][DIM];
static char ids[NSUBJ + 8][32];
static size_t nvec;
static struct bm_gallery *ref[S];       /* scalar reference, one per shard */
static struct bm_manifest *manifest[S];
static uint64_t next_segment_id = 1;

/* Produced tasks and received partials. */
struct job {
    char id[64];
    Biomatch__V1__MatchTask *task;      /* as produced (owned) */
    int32_t partition;
    int answers;                        /* partials received */
    Biomatch__V1__PartialResult *first; /* first partial (owned) */
    int traceparent_ok;
};
static struct job jobs[MAX_JOBS];
static size_t njobs;
static int64_t produced_per_partition[S * R];
static pid_t worker_pid = -1;
static int worker_seq;

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static float frand(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((rng_state >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

/* ------------------------------------------------------------ gallery */

/* Seal 'n' subjects (indexes 'idx') of one shard into a new segment and
 * publish the next manifest version; the reference gallery gets the same
 * segment decoded back from the blob. */
static void publish_segment(uint32_t shard, const size_t *idx, size_t n)
{
    char err[512];
    uint64_t seg_id = next_segment_id++;
    struct bm_segment *seg = bm_segment_new(&spec, seg_id, n, err, sizeof err);
    assert_non_null(seg);
    const char *names[NSUBJ];
    size_t lens[NSUBJ];
    for (size_t i = 0; i < n; i++) {
        names[i] = ids[idx[i]];
        lens[i] = strlen(ids[idx[i]]);
        uint64_t key = bm_subject_key(names[i], lens[i]);
        assert_int_equal(bm_segment_add_dense(seg, key, vecs[idx[i]], err, sizeof err), BM_OK);
    }
    uint8_t *blob = NULL, sha[32];
    size_t bloblen = 0;
    int rc = bm_segblob_encode_segment(&spec, seg, names, lens, &blob, &bloblen, sha, err,
                                       sizeof err);
    if (rc != BM_OK)
        fail_msg("encode: %s", err);
    bm_segment_free(seg);

    char key[BM_KEY_MAX];
    assert_int_equal(bm_key_segment(key, sizeof key, gallery, shard, seg_id), BM_OK);
    assert_int_equal(bm_redis_set(redis, key, strlen(key), blob, bloblen, 0), BM_OK);

    struct bm_segment *dec = NULL;
    assert_int_equal(bm_segblob_decode(blob, bloblen, &spec, sha, &dec, NULL, err, sizeof err),
                     BM_OK);
    assert_int_equal(bm_gallery_update(ref[shard], &dec, 1, NULL, 0, NULL, 0, err, sizeof err),
                     BM_OK);

    struct bm_segref sr;
    memset(&sr, 0, sizeof sr);
    sr.id = seg_id;
    sr.count = (uint32_t)n;
    sr.bytes = bloblen;
    memcpy(sr.sha256, sha, 32);
    struct bm_manifest_change ch;
    memset(&ch, 0, sizeof ch);
    ch.add = &sr;
    ch.nadd = 1;
    ch.log_offset = manifest[shard]->log_offset + (int64_t)n;
    ch.subjects = manifest[shard]->subjects + (uint32_t)n;
    struct bm_manifest *next = NULL;
    rc = bm_manifest_next(manifest[shard], &ch, &next, err, sizeof err);
    if (rc != BM_OK)
        fail_msg("manifest next: %s", err);
    uint8_t *mbuf = NULL;
    size_t mlen = 0;
    assert_int_equal(bm_manifest_encode(next, &mbuf, &mlen, err, sizeof err), BM_OK);
    assert_int_equal(bm_key_manifest(key, sizeof key, gallery, shard), BM_OK);
    assert_int_equal(bm_redis_set(redis, key, strlen(key), mbuf, mlen, 0), BM_OK);
    free(mbuf);
    free(blob);
    bm_manifest_free(manifest[shard]);
    manifest[shard] = next;
}

static size_t add_subject(const char *id)
{
    size_t i = nvec++;
    snprintf(ids[i], sizeof ids[i], "%s", id);
    for (int d = 0; d < DIM; d++)
        vecs[i][d] = frand();
    return i;
}

static void make_gallery(void)
{
    char err[512];
    bm_spec_default(&spec, BM_MODALITY_DENSE);
    spec.dim = DIM;
    spec.dtype = BM_DTYPE_F32;
    Biomatch__V1__GalleryDefinition *def = bm_galdef_from_spec(
        gallery, BIOMATCH__V1__MODALITY__MODALITY_FACE, &spec, S, R, err, sizeof err);
    if (def == NULL)
        fail_msg("galdef: %s", err);
    assert_int_equal(bm_galdef_put(redis, def, NULL, err, sizeof err), BM_OK);
    bm_galdef_free(def);

    size_t per[S][NSUBJ], nper[S] = {0};
    for (int i = 0; i < NSUBJ; i++) {
        char id[32];
        snprintf(id, sizeof id, "subject-%d", i);
        size_t k = add_subject(id);
        uint32_t sh = bm_shard_of(id, strlen(id), S);
        per[sh][nper[sh]++] = k;
    }
    for (uint32_t s = 0; s < S; s++) {
        ref[s] = bm_gallery_new(&spec, NULL, err, sizeof err);
        assert_non_null(ref[s]);
        manifest[s] = bm_manifest_new(gallery, s, err, sizeof err);
        assert_non_null(manifest[s]);
        /* Two segments per shard, so the loader assembles several. */
        size_t half = nper[s] / 2;
        publish_segment(s, per[s], half);
        publish_segment(s, per[s] + half, nper[s] - half);
    }
}

/* ------------------------------------------------------------ kafka */

static struct bm_bus_conf bus_conf(void)
{
    struct bm_bus_conf c = {0};
    c.bootstrap_servers = brokers;
    c.client_id = "test_worker";
    return c;
}

static void create_topics(void)
{
    char err[512];
    struct bm_bus_conf c = bus_conf();
    struct bm_admin *a = bm_admin_new(&c, err, sizeof err);
    assert_non_null(a);
    struct bm_bus_topic_spec t[3] = {
        {tasks_topic, S * R, 1, NULL, 0},
        {partials_topic, 1, 1, NULL, 0},
        {dlq_topic, 1, 1, NULL, 0},
    };
    if (bm_admin_create_topics(a, t, 3, WAIT_MS, err, sizeof err) != BM_OK)
        fail_msg("create topics: %s", err);
    bm_admin_free(a);
}

static struct bm_consumer *tail(const char *topic)
{
    char err[512];
    struct bm_bus_conf c = bus_conf();
    struct bm_consumer *k = bm_consumer_new(&c, NULL, NULL, NULL, err, sizeof err);
    assert_non_null(k);
    struct bm_bus_tp tp = {topic, 0, BM_OFFSET_BEGINNING};
    assert_int_equal(bm_consumer_assign(k, &tp, 1, err, sizeof err), BM_OK);
    return k;
}

static void on_sent(const struct bm_delivery *d, void *opaque)
{
    int *ok = opaque;
    *ok = d->err == BM_OK ? 1 : -1;
}

static void produce_raw(int32_t partition, const char *key, const void *val, size_t len,
                        int with_tp)
{
    struct bm_bus_headers h;
    bm_bus_headers_init(&h);
    if (with_tp)
        bm_bus_headers_add_str(&h, BM_HDR_TRACEPARENT, TRACEPARENT);
    int ok = 0;
    assert_int_equal(bm_producer_send(producer, tasks_topic, partition, key, strlen(key), val,
                                      len, h.v, h.n, on_sent, &ok),
                     BM_OK);
    assert_int_equal(bm_producer_flush(producer, WAIT_MS), BM_OK);
    assert_int_equal(ok, 1);
    produced_per_partition[partition]++;
}

/* Build and produce one task. 'probe_of' >= 0 makes probe 0 a noisy copy
 * of that subject; the other probes are random. */
static struct job *submit(uint32_t shard, uint32_t replica, Biomatch__V1__MatchMode mode,
                          size_t nprobes, long probe_of, uint32_t top_k, int has_thr, float thr,
                          const char *claimed, uint64_t min_version, int noise)
{
    assert_true(njobs < MAX_JOBS);
    struct job *j = &jobs[njobs];
    snprintf(j->id, sizeof j->id, "job-%zu", njobs);
    njobs++;
    Biomatch__V1__MatchTask *t = calloc(1, sizeof *t);
    biomatch__v1__match_task__init(t);
    t->job_id = j->id;
    t->gallery = gallery;
    t->shard = shard;
    t->shard_count = S;
    t->replica = replica;
    t->mode = mode;
    t->top_k = top_k;
    t->has_threshold = has_thr;
    t->threshold = thr;
    t->claimed_subject = (char *)(claimed != NULL ? claimed : "");
    t->deadline_unix_ms = 0;
    t->min_gallery_version = min_version;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    t->submitted_unix_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    t->n_probes = nprobes;
    t->probes = calloc(nprobes, sizeof *t->probes);
    for (size_t p = 0; p < nprobes; p++) {
        Biomatch__V1__Template *tp = calloc(1, sizeof *tp);
        Biomatch__V1__DenseEmbedding *d = calloc(1, sizeof *d);
        biomatch__v1__template__init(tp);
        biomatch__v1__dense_embedding__init(d);
        float *v = calloc(DIM, sizeof *v);
        for (int k = 0; k < DIM; k++) {
            if (p == 0 && probe_of >= 0)
                v[k] = vecs[probe_of][k] + (noise ? 0.3f * frand() : 0.0f);
            else
                v[k] = frand();
        }
        d->dim = DIM;
        d->element_type = BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_F32;
        d->data.data = (uint8_t *)v;
        d->data.len = DIM * sizeof(float);
        tp->modality = BIOMATCH__V1__MODALITY__MODALITY_FACE;
        tp->kind_case = BIOMATCH__V1__TEMPLATE__KIND_DENSE;
        tp->dense = d;
        t->probes[p] = tp;
    }
    j->task = t;
    j->partition = (int32_t)(shard + S * replica);
    size_t len = 0;
    uint8_t *buf = bm_wire_encode(&t->base, &len);
    assert_non_null(buf);
    produce_raw(j->partition, j->id, buf, len, 1);
    free(buf);
    return j;
}

static void free_task(Biomatch__V1__MatchTask *t)
{
    for (size_t p = 0; p < t->n_probes; p++) {
        free(t->probes[p]->dense->data.data);
        free(t->probes[p]->dense);
        free(t->probes[p]);
    }
    free(t->probes);
    free(t);
}

static struct job *job_by_id(const char *id, size_t len)
{
    for (size_t i = 0; i < njobs; i++)
        if (strlen(jobs[i].id) == len && memcmp(jobs[i].id, id, len) == 0)
            return &jobs[i];
    return NULL;
}

/* Consume partials until every job in [from, to) has an answer. */
static void await_answers(size_t from, size_t to, int timeout_ms)
{
    char err[512];
    int64_t end = bm_test_now_ms() + timeout_ms;
    for (;;) {
        size_t missing = 0;
        for (size_t i = from; i < to; i++)
            missing += jobs[i].answers == 0;
        if (missing == 0)
            return;
        if (bm_test_now_ms() > end)
            fail_msg("%zu of %zu jobs unanswered after %d ms", missing, to - from, timeout_ms);
        struct bm_bus_msg *m = NULL;
        if (bm_consumer_poll(partials_c, 100, &m, err, sizeof err) != BM_OK)
            continue;
        Biomatch__V1__PartialResult *pr =
            bm_wire_decode_partial(m->value, m->valuelen, BM_WIRE_DEFAULT_MAX_BYTES, err, sizeof err);
        assert_non_null(pr);
        struct job *j = job_by_id(pr->job_id, strlen(pr->job_id));
        assert_non_null(j);
        char jkey[BM_WIRE_JOB_KEY_MAX]; /* partials are keyed by (agency, job id) */
        size_t jlen = bm_wire_job_key(pr->agency, j->id, jkey, sizeof jkey);
        assert_int_equal(m->keylen, jlen);
        assert_memory_equal(m->key, jkey, m->keylen);
        char tp[128];
        j->traceparent_ok = bm_bus_header_get_str(m->headers, m->nheaders, BM_HDR_TRACEPARENT,
                                                  tp, sizeof tp) == BM_OK &&
                            strcmp(tp, TRACEPARENT) == 0;
        j->answers++;
        if (j->first == NULL)
            j->first = pr;
        else
            bm_wire_free_partial(pr);
        bm_bus_msg_free(m);
    }
}

/* Read partials for 'ms' milliseconds, counting answers per job. */
static void count_answers(int ms)
{
    char err[512];
    int64_t end = bm_test_now_ms() + ms;
    while (bm_test_now_ms() < end) {
        struct bm_bus_msg *m = NULL;
        if (bm_consumer_poll(partials_c, 100, &m, err, sizeof err) != BM_OK)
            continue;
        Biomatch__V1__PartialResult *pr =
            bm_wire_decode_partial(m->value, m->valuelen, BM_WIRE_DEFAULT_MAX_BYTES, err, sizeof err);
        assert_non_null(pr);
        struct job *j = job_by_id(pr->job_id, strlen(pr->job_id));
        assert_non_null(j);
        j->answers++;
        bm_wire_free_partial(pr);
        bm_bus_msg_free(m);
    }
}

/* Read partials for a while and fail on any second answer to a job. */
static void expect_no_duplicates(int ms)
{
    count_answers(ms);
    for (size_t i = 0; i < njobs; i++)
        if (jobs[i].answers > 1)
            fail_msg("%s answered %d times", jobs[i].id, jobs[i].answers);
}

/* ------------------------------------------------------------ checks */

static const char *id_of_key(uint64_t key)
{
    for (size_t i = 0; i < nvec; i++)
        if (bm_subject_key(ids[i], strlen(ids[i])) == key)
            return ids[i];
    return NULL;
}

static void check_identify(const struct job *j)
{
    char err[256];
    const Biomatch__V1__MatchTask *t = j->task;
    const Biomatch__V1__PartialResult *pr = j->first;
    assert_non_null(pr);
    if (pr->status != BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_OK)
        fail_msg("%s: status %d (%s)", j->id, pr->status, pr->error);
    assert_int_equal(pr->kind, BIOMATCH__V1__PARTIAL_RESULT__KIND__KIND_SHARD);
    assert_int_equal(pr->shard, t->shard);
    assert_int_equal(pr->shard_count, S);
    assert_true(pr->gallery_version >= manifest[t->shard]->version ||
                t->min_gallery_version == 0);
    assert_true(pr->worker[0] != '\0');
    assert_true(j->traceparent_ok);
    size_t np = t->n_probes, k = t->top_k;
    struct bm_probe probes[16];
    assert_true(np <= 16);
    for (size_t p = 0; p < np; p++) {
        memset(&probes[p], 0, sizeof probes[p]);
        probes[p].dense = (const float *)t->probes[p]->dense->data.data;
    }
    struct bm_candidate *out = calloc(np * k, sizeof *out);
    assert_int_equal(bm_gallery_search(ref[t->shard], probes, np, k,
                                       t->has_threshold ? t->threshold : -INFINITY, out, NULL,
                                       err, sizeof err),
                     BM_OK);
    size_t c = 0;
    for (size_t p = 0; p < np; p++) {
        for (size_t r = 0; r < k; r++) {
            const struct bm_candidate *e = &out[p * k + r];
            if (e->id == BM_NO_ID)
                break;
            if (c >= pr->n_candidates)
                fail_msg("%s: %zu candidates, expected more", j->id, pr->n_candidates);
            const Biomatch__V1__Candidate *got = pr->candidates[c++];
            const char *want = id_of_key(e->id);
            assert_non_null(want);
            assert_string_equal(got->subject_id, want);
            assert_int_equal(got->probe_index, p);
            assert_int_equal(got->rank, r + 1);
            assert_int_equal(got->shard, t->shard);
            if (fabsf(got->score - e->score) > 1e-5f)
                fail_msg("%s: score %.7f vs scalar %.7f", j->id, got->score, e->score);
        }
    }
    assert_int_equal(c, pr->n_candidates);
    free(out);
}

/* ------------------------------------------------------------ worker */

static void start_worker(void)
{
    char node[48], err[256];
    snprintf(node, sizeof node, "BIOMATCH_NODE_ID=test-worker-%d", ++worker_seq);
    const char *extra[] = {node};
    char **env = bm_spawn_env(extra, 1, NULL);
    assert_non_null(env);
    char *argv[] = {worker_bin, (char *)"--config", config_path, NULL};
    worker_pid = bm_spawn(argv, env, NULL, err, sizeof err);
    free(env);
    if (worker_pid < 0)
        fail_msg("start %s: %s", worker_bin, err);
}

/* Wait for the worker to exit; returns its wait status or -1 on timeout. */
static int wait_worker(int timeout_ms)
{
    int st = bm_spawn_wait(worker_pid, timeout_ms);
    if (st != -1)
        worker_pid = -1;
    return st;
}

static void kill_worker(void)
{
    if (worker_pid > 0) {
        bm_spawn_stop(worker_pid, SIGKILL, 0);
        worker_pid = -1;
    }
}

static void find_worker_bin(void)
{
    const char *env = getenv("BIOMATCH_WORKER_BIN");
    if (env != NULL && env[0] != '\0') {
        snprintf(worker_bin, sizeof worker_bin, "%s", env);
        return;
    }
    /* The test binary lives in <build>/tests; the worker in <build>/bin. */
    if (bm_spawn_sibling(worker_bin, sizeof worker_bin, "../bin", "biomatch-worker") != 0)
        fail_msg("biomatch-worker not found next to the tests: build it");
}

static int setup(void **state)
{
    (void)state;
    char err[512];
    brokers = bm_test_env("BIOMATCH_KAFKA_BROKERS");
    redis_url = bm_test_env("BIOMATCH_REDIS_URL");
    find_worker_bin();
    assert_int_equal(bm_simd_force(BM_SIMD_SCALAR), BM_OK);

    char u[96];
    bm_test_unique(u, sizeof u, "wt");
    snprintf(prefix, sizeof prefix, "%s.", u);
    snprintf(gallery, sizeof gallery, "wg_%ld_%lx", (long)getpid(), (unsigned long)time(NULL));
    assert_int_equal(bm_topic_tasks(tasks_topic, sizeof tasks_topic, prefix, gallery), 0);
    assert_int_equal(bm_topic_name(partials_topic, sizeof partials_topic, prefix, BM_TOPIC_PARTIALS), 0);
    assert_int_equal(bm_topic_name(dlq_topic, sizeof dlq_topic, prefix, BM_TOPIC_DLQ), 0);

    redis = bm_redis_connect(redis_url, NULL, err, sizeof err);
    if (redis == NULL)
        fail_msg("redis: %s", err);
    make_gallery();
    create_topics();
    struct bm_bus_conf c = bus_conf();
    producer = bm_producer_new(&c, err, sizeof err);
    assert_non_null(producer);
    partials_c = tail(partials_topic);
    dlq_c = tail(dlq_topic);

    snprintf(config_path, sizeof config_path, "/tmp/%s.yaml", u);
    FILE *f = fopen(config_path, "w");
    assert_non_null(f);
    /* A short session so a SIGKILLed member leaves the group within seconds. */
    fputs("kafka:\n  session.timeout.ms: 6000\n  heartbeat.interval.ms: 500\n", f);
    fclose(f);
    setenv("BIOMATCH_TOPIC_PREFIX", prefix, 1);
    setenv("BIOMATCH_WORKER_GALLERIES", gallery, 1);
    setenv("BIOMATCH_HTTP_PORT", "0", 1);
    setenv("BIOMATCH_HTTP_BIND", "127.0.0.1", 1);
    setenv("BIOMATCH_WORKER_THREADS", "2", 1);
    setenv("BIOMATCH_WORKER_BATCH_MAX_WAIT_MS", "5", 1);
    setenv("BIOMATCH_WORKER_MIN_VERSION_WAIT_MS", "3000", 1);
    setenv("BIOMATCH_WORKER_DRAIN_TIMEOUT_MS", "15000", 1);
    setenv("BIOMATCH_WORKER_REFRESH_INTERVAL_MS", "200", 1);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    kill_worker();
    for (size_t i = 0; i < njobs; i++) {
        free_task(jobs[i].task);
        bm_wire_free_partial(jobs[i].first);
    }
    bm_consumer_free(partials_c);
    bm_consumer_free(dlq_c);
    bm_producer_free(producer);
    for (int s = 0; s < S; s++) {
        bm_gallery_free(ref[s]);
        bm_manifest_free(manifest[s]);
    }
    bm_redis_close(redis);
    unlink(config_path);
    return 0;
}

/* ------------------------------------------------------------ tests */

static void test_identify_and_verify(void **state)
{
    (void)state;
    start_worker();
    size_t from = njobs;
    for (uint32_t i = 0; i < 8; i++) {
        uint32_t shard = i % S;
        /* a probe near a subject of this shard (mated) plus a random one */
        long subj = -1;
        for (size_t k = 0; k < nvec; k++)
            if (bm_shard_of(ids[k], strlen(ids[k]), S) == shard && (k % 7) == i) {
                subj = (long)k;
                break;
            }
        submit(shard, (i / S) % R, BIOMATCH__V1__MATCH_MODE__MATCH_MODE_IDENTIFY, 2, subj,
               i == 3 ? 1 : 5, 0, 0.0f, NULL, 0, 1);
    }
    /* A threshold that cuts the list. */
    submit(0, 1, BIOMATCH__V1__MATCH_MODE__MATCH_MODE_IDENTIFY, 1, 0, 10, 1, 0.1f, NULL, 0, 1);
    /* Verify: the claimed subject's shard finds it, the other does not. */
    uint32_t home = bm_shard_of(ids[5], strlen(ids[5]), S);
    struct job *v1 = submit(home, 0, BIOMATCH__V1__MATCH_MODE__MATCH_MODE_VERIFY, 1, 5, 0, 0,
                            0.0f, ids[5], 0, 1);
    struct job *v2 = submit(1 - home, 0, BIOMATCH__V1__MATCH_MODE__MATCH_MODE_VERIFY, 1, 5, 0, 0,
                            0.0f, ids[5], 0, 1);
    size_t to = njobs;
    await_answers(from, to, WAIT_MS);
    for (size_t i = from; i < to; i++)
        if (jobs[i].task->mode == BIOMATCH__V1__MATCH_MODE__MATCH_MODE_IDENTIFY)
            check_identify(&jobs[i]);

    char err[128];
    float want = 0;
    struct bm_probe p = {(const float *)v1->task->probes[0]->dense->data.data, NULL, NULL};
    assert_int_equal(bm_gallery_verify(ref[home], &p, bm_subject_key(ids[5], strlen(ids[5])),
                                       &want, err, sizeof err),
                     BM_OK);
    assert_int_equal(v1->first->status, BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_OK);
    assert_int_equal(v1->first->n_candidates, 1);
    assert_string_equal(v1->first->candidates[0]->subject_id, ids[5]);
    assert_true(fabsf(v1->first->candidates[0]->score - want) <= 1e-5f);
    /* Not in this shard: SUBJECT_NOT_FOUND, which the aggregator turns
     * into the job's answer when no shard holds the subject. */
    assert_int_equal(v2->first->status, BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_ERROR);
    assert_int_equal(v2->first->error_code,
                     BIOMATCH__V1__ERROR_CODE__ERROR_CODE_SUBJECT_NOT_FOUND);
    assert_int_equal(v2->first->n_candidates, 0);
    assert_int_equal(v2->first->comparisons, 0);
}

static void test_malformed_goes_to_dlq(void **state)
{
    (void)state;
    char err[512];
    static const uint8_t junk[] = {0x0a, 0xff, 0xff, 0xff, 0x7f, 0x01};
    produce_raw(0, "junk-1", junk, sizeof junk, 1);
    size_t from = njobs;
    submit(0, 0, BIOMATCH__V1__MATCH_MODE__MATCH_MODE_IDENTIFY, 1, 3, 3, 0, 0.0f, NULL, 0, 1);
    await_answers(from, njobs, WAIT_MS);
    check_identify(&jobs[from]);

    int64_t end = bm_test_now_ms() + WAIT_MS;
    struct bm_bus_msg *m = NULL;
    while (m == NULL && bm_test_now_ms() < end)
        if (bm_consumer_poll(dlq_c, 100, &m, err, sizeof err) != BM_OK)
            m = NULL;
    assert_non_null(m);
    assert_int_equal(m->keylen, 6);
    assert_memory_equal(m->key, "junk-1", 6);
    assert_int_equal(m->valuelen, sizeof junk);
    assert_memory_equal(m->value, junk, sizeof junk);
    char hdr[512];
    assert_int_equal(bm_bus_header_get_str(m->headers, m->nheaders, BM_HDR_ERROR, hdr, sizeof hdr),
                     BM_OK);
    assert_true(strncmp(hdr, "ERROR_CODE_MALFORMED", 20) == 0);
    /* The record's own headers travel with it. */
    assert_int_equal(bm_bus_header_get_str(m->headers, m->nheaders, BM_HDR_TRACEPARENT, hdr,
                                           sizeof hdr),
                     BM_OK);
    assert_string_equal(hdr, TRACEPARENT);
    bm_bus_msg_free(m);
}

static void test_follows_manifest(void **state)
{
    (void)state;
    /* Enrol a new subject after the worker loaded its shards. */
    size_t k = add_subject("late-subject-1");
    uint32_t shard = bm_shard_of(ids[k], strlen(ids[k]), S);
    publish_segment(shard, &k, 1);
    uint64_t v = manifest[shard]->version;
    size_t from = njobs;
    struct job *j = submit(shard, 1, BIOMATCH__V1__MATCH_MODE__MATCH_MODE_IDENTIFY, 1, (long)k,
                           3, 0, 0.0f, NULL, v, 0);
    /* A version nobody will publish: bounded wait, then a clear error. */
    struct job *never = submit(1 - shard, 0, BIOMATCH__V1__MATCH_MODE__MATCH_MODE_IDENTIFY, 1, 0,
                               3, 0, 0.0f, NULL, 1000, 1);
    await_answers(from, njobs, WAIT_MS);
    check_identify(j);
    assert_true(j->first->gallery_version >= v);
    assert_true(j->first->n_candidates >= 1);
    assert_string_equal(j->first->candidates[0]->subject_id, "late-subject-1");
    assert_int_equal(never->first->status, BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_ERROR);
    assert_int_equal(never->first->error_code,
                     BIOMATCH__V1__ERROR_CODE__ERROR_CODE_GALLERY_VERSION_UNAVAILABLE);
}

/* biomatch_worker_consumer_lag{shard} read from the worker's /metrics on
 * 'port'; -1 when the series is not there (yet). */
static double lag_of(int port, uint32_t shard)
{
    static char body[1 << 20];
    if (bm_test_http(port, "GET", "/metrics", body, sizeof body) != 200)
        return -1;
    char series[256];
    snprintf(series, sizeof series, "biomatch_worker_consumer_lag{gallery=\"%s\",shard=\"%u\"} ",
             gallery, shard);
    const char *at = strstr(body, series);
    return at != NULL ? strtod(at + strlen(series), NULL) : -1;
}

/* Wait (bounded: lag is sampled every 5 s) until the shard's lag is 'want'. */
static void await_lag(int port, uint32_t shard, double want)
{
    double lag = -1;
    int64_t end = bm_test_now_ms() + WAIT_MS;
    while ((lag = lag_of(port, shard)) != want && bm_test_now_ms() < end) {
        struct timespec ts = {0, 250 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    if (lag != want)
        fail_msg("shard %u: lag %g, expected %g", shard, lag, want);
}

static void rename_key(const char *from, const char *to)
{
    struct bm_redis_reply *r = NULL;
    assert_int_equal(bm_redis_cmd(redis, &r, "RENAME", from, to, NULL), BM_OK);
    bm_redis_reply_free(r);
}

/* A shard that cannot be loaded (its manifest gone from Redis) keeps its
 * partitions silent, and their backlog shows in the lag gauge, counted
 * from the group's committed offset since nothing was polled; once the
 * manifest is back the backlog is answered and the lag drops to 0. */
static void test_lag_shows_a_stuck_shard(void **state)
{
    (void)state;
    assert_true(worker_pid > 0);
    kill(worker_pid, SIGTERM);
    int st = wait_worker(30000);
    assert_true(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0);

    char key[256], hidden[300], portstr[16];
    assert_int_equal(bm_key_manifest(key, sizeof key, gallery, 1), BM_OK);
    snprintf(hidden, sizeof hidden, "%s.hidden", key);
    rename_key(key, hidden);
    int port = bm_test_free_port();
    snprintf(portstr, sizeof portstr, "%d", port);
    setenv("BIOMATCH_HTTP_PORT", portstr, 1);
    start_worker();
    setenv("BIOMATCH_HTTP_PORT", "0", 1);

    size_t from = njobs;
    for (int i = 0; i < 5; i++)
        submit(1, 0, BIOMATCH__V1__MATCH_MODE__MATCH_MODE_IDENTIFY, 1, -1, 3, 0, 0.0f, NULL, 0,
               0);
    /* 5, not 0: had the worker polled them, the gauge would count from
     * its own position, past them. */
    await_lag(port, 1, 5);

    rename_key(hidden, key);
    await_answers(from, njobs, WAIT_MS);
    for (size_t i = from; i < njobs; i++)
        assert_int_equal(jobs[i].first->status, BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_OK);
    await_lag(port, 1, 0);
}

/* The offsets the worker group has committed on every task partition. */
static void group_committed(int64_t out[S * R])
{
    char err[512], group[BM_TOPIC_MAX + 16];
    snprintf(group, sizeof group, "%sworkers.%s", prefix, gallery);
    struct bm_bus_conf c = bus_conf();
    struct bm_consumer *k = bm_consumer_new(&c, group, NULL, NULL, err, sizeof err);
    assert_non_null(k);
    struct bm_bus_tp tps[S * R];
    for (int p = 0; p < S * R; p++) {
        tps[p].topic = tasks_topic;
        tps[p].partition = p;
        tps[p].offset = BM_OFFSET_INVALID;
    }
    if (bm_consumer_committed(k, tps, S * R, WAIT_MS, err, sizeof err) != BM_OK)
        fail_msg("committed: %s", err);
    for (int p = 0; p < S * R; p++)
        out[p] = tps[p].offset;
    bm_consumer_free(k);
}

/* Wait (bounded: the worker commits stored offsets every 5 s) until shard
 * 0's partitions are committed up to everything produced to them. */
static void await_shard0_committed(void)
{
    int64_t got[S * R];
    int64_t end = bm_test_now_ms() + WAIT_MS;
    for (;;) {
        group_committed(got);
        int done = 1;
        for (uint32_t r = 0; r < R; r++)
            done &= got[r * S] == produced_per_partition[r * S];
        if (done)
            return;
        if (bm_test_now_ms() > end)
            fail_msg("shard 0 not committed: partition 0 at %lld of %lld",
                     (long long)got[0], (long long)produced_per_partition[0]);
        struct timespec ts = {0, 250 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

static void test_sigterm_commits(void **state)
{
    (void)state;
    assert_true(worker_pid > 0);
    kill(worker_pid, SIGTERM);
    int st = wait_worker(30000);
    assert_true(st != -1);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);

    /* Every answered task's offset is committed for the group. */
    int64_t got[S * R];
    group_committed(got);
    for (int p = 0; p < S * R; p++)
        if (got[p] != produced_per_partition[p])
            fail_msg("partition %d: committed %lld, produced %lld", p, (long long)got[p],
                     (long long)produced_per_partition[p]);

    /* A new worker answers new tasks and none of the old ones again. */
    start_worker();
    size_t from = njobs;
    for (uint32_t i = 0; i < S * R; i++)
        submit(i % S, i / S, BIOMATCH__V1__MATCH_MODE__MATCH_MODE_IDENTIFY, 1, (long)i, 4, 0,
               0.0f, NULL, 0, 1);
    await_answers(from, njobs, WAIT_MS);
    for (size_t i = from; i < njobs; i++)
        check_identify(&jobs[i]);
    expect_no_duplicates(1500);
}

/* SIGKILL with work in flight. To make "in flight" certain on any machine,
 * the first tasks of shard 1's partitions ask for a gallery version that is
 * not published yet: the worker polls them and parks them
 * (worker.min_version_wait_ms is long here). Tasks behind them on the same
 * partitions need no version and are answered, which proves the parked
 * ones were polled (a partition delivers in order); shard 0's tasks are
 * answered and committed. Before the kill the test checks that mid-stream
 * state: shard 1's committed offsets have not moved past the parked tasks
 * (offsets are stored in order, only after delivery), nothing parked was
 * answered. Then it publishes the version, starts a new worker and checks
 * that every parked task is redelivered and answered, and nothing of shard
 * 0 answered twice. A worker that stored an offset before the task's
 * partial was delivered would commit past the parked tasks and lose them. */
static void test_sigkill_redelivers(void **state)
{
    (void)state;
    assert_true(worker_pid > 0);
    kill(worker_pid, SIGTERM);
    int st = wait_worker(30000);
    assert_true(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    int64_t before[S * R];
    group_committed(before);

    setenv("BIOMATCH_WORKER_MIN_VERSION_WAIT_MS", "300000", 1);
    start_worker();
    setenv("BIOMATCH_WORKER_MIN_VERSION_WAIT_MS", "3000", 1);

    uint64_t next_version = manifest[1]->version + 1;
    size_t parked_from = njobs;
    for (uint32_t i = 0; i < 4 * R; i++)
        submit(1, i % R, BIOMATCH__V1__MATCH_MODE__MATCH_MODE_IDENTIFY, 1 + i % 3,
               (long)(i % NSUBJ), 5, 0, 0.0f, NULL, next_version, 1);
    size_t behind_from = njobs;
    for (uint32_t i = 0; i < 4 * R; i++)
        submit(1, i % R, BIOMATCH__V1__MATCH_MODE__MATCH_MODE_IDENTIFY, 1, (long)i, 5, 0, 0.0f,
               NULL, 0, 1);
    size_t shard0_from = njobs;
    for (uint32_t i = 0; i < 20; i++)
        submit(0, i % R, BIOMATCH__V1__MATCH_MODE__MATCH_MODE_IDENTIFY, 1 + i % 3,
               (long)(i % NSUBJ), 5, 0, 0.0f, NULL, 0, 1);
    size_t shard0_to = njobs;
    await_answers(behind_from, shard0_to, WAIT_MS);
    await_shard0_committed();

    int64_t mid[S * R];
    group_committed(mid);
    for (uint32_t r = 0; r < R; r++)
        if (mid[1 + r * S] != before[1 + r * S])
            fail_msg("partition %u committed %lld past its parked tasks (was %lld)", 1 + r * S,
                     (long long)mid[1 + r * S], (long long)before[1 + r * S]);
    for (size_t i = parked_from; i < behind_from; i++)
        if (jobs[i].answers != 0)
            fail_msg("%s answered before its version exists", jobs[i].id);

    kill_worker();

    size_t k = add_subject("after-kill-subject");
    publish_segment(1, &k, 1);
    assert_int_equal(manifest[1]->version, next_version);
    start_worker();
    await_answers(parked_from, behind_from, WAIT_MS);
    for (size_t i = parked_from; i < behind_from; i++)
        check_identify(&jobs[i]);
    /* The tasks behind the parked ones were answered but not committed:
     * they come again (at-least-once); shard 0's were committed: never. */
    count_answers(1500);
    for (size_t i = shard0_from; i < shard0_to; i++)
        if (jobs[i].answers != 1)
            fail_msg("%s (committed) answered %d times", jobs[i].id, jobs[i].answers);
    for (size_t i = parked_from; i < behind_from; i++)
        assert_int_equal(jobs[i].answers, 1);
    kill(worker_pid, SIGTERM);
    st = wait_worker(30000);
    assert_true(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_identify_and_verify),
        cmocka_unit_test(test_malformed_goes_to_dlq),
        cmocka_unit_test(test_follows_manifest),
        cmocka_unit_test(test_lag_shows_a_stuck_shard),
        cmocka_unit_test(test_sigterm_commits),
        cmocka_unit_test(test_sigkill_redelivers),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
