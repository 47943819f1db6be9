/* End-to-end test of the match pipeline through the real processes (issue
 * 5, "Done when"): one biomatch-coordinator (intake, aggregate, gallery)
 * and a changing pool of biomatch-worker processes, on the real Kafka
 * broker and Redis of the integration fixture.
 *
 * Setup: a unique topic prefix and face gallery (d = 128, int8, S = 4,
 * R = 2), NSUBJ subjects enrolled through the enroll topic as EnrollRequest
 * messages, sealed by the coordinator's gallery role; the test waits for
 * the manifests to cover them, then for two workers to answer warm-up jobs
 * over the whole gallery on both replicas.
 *
 * Reference: every shard loaded back from Redis with the worker's own
 * loader (so the exact stored bytes) under the scalar kernels, searched by
 * brute force over all rows, ordered score desc then subject id asc as the
 * aggregator orders them.
 *
 * Stream: NJOBS jobs at a steady pace (good IDENTIFY jobs with known mates,
 * some with two probes or a threshold, VERIFY jobs, and bad ones: truncated
 * bytes, wrong geometry, a NaN probe, an unknown gallery, an oversized
 * record, top-k 0; raw protobuf and Schema Registry framing; a few with a
 * reply topic) while a third worker starts, one worker gets SIGTERM, one
 * gets SIGKILL and is replaced, and the coordinator is SIGKILLed and
 * restarted.
 *
 * Checks, after deduplicating results by job id: every good job has a
 * final OK result with coverage 1 and the reference's candidates (ids and
 * order; scores within 1e-5; two subjects whose reference scores are
 * within 1e-5 may trade places, as SIMD and scalar kernels round
 * differently); duplicates (allowed: at-least-once) have the same content;
 * every bad job got exactly its REJECTED code or a dlq record and nothing
 * else; results and dlq records carry the job's traceparent, results its
 * attributes, on the reply topic when one was asked for; no job is lost;
 * the SIGTERMed worker exits 0. Every wait is bounded; every child is
 * killed in the teardown even when an assertion fails (pids are tracked,
 * nothing is killed by name). Times are printed, never asserted.
 * With BIOMATCH_TEST_REDIS_FAILOVER=1 (the cluster.test_pipeline_failover
 * CTest, on the Redis Cluster fixture) the stream also survives Redis
 * faults: a CLUSTER FAILOVER of the master holding shard 0's keys, then a
 * SIGKILL of the master holding shard 1's keys (started again later), while
 * a second gallery takes enrollments throughout; every one of those must
 * land (manifests and a full load count them all), on top of every check
 * above. BIOMATCH_BIN_DIR overrides where the programs are (default: ../bin next
 * to the test binary); BIOMATCH_TEST_PIPELINE_LOG sets the children's log
 * level (default warn; their logs are /tmp/<unique>-<node>.log, removed
 * when the test passes). */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"
#include "redis_cluster_util.h"

#include "biomatch.pb-c.h"
#include "bus/bus.h"
#include "common/err.h"
#include "conf/topics.h"
#include "match/cpu.h"
#include "match/gallery.h"
#include "store/galdef.h"
#include "store/keys.h"
#include "store/loader.h"
#include "store/manifest.h"
#include "store/redis.h"
#include "store/subjects.h"
#include "wire/decode.h"
#include "wire/job.h"
#include "wire/shard.h"

#define S 4
#define R 2
#define DIM 128
#define NSUBJ 5000
#define NJOBS 300
#define PACE_MS 50                      /* default gap between jobs */
#define MAX_JOB_BYTES 65536
#define DEADLINE_MS 60000
#define WAIT_MS 90000
#define MAX_PROCS 12
#define MAX_WARM 64
#define SCORE_EPS 1e-5f

enum kind {
    K_IDENTIFY,
    K_VERIFY,
    K_TRUNCATED,   /* dlq, MALFORMED */
    K_GEOMETRY,    /* REJECTED, GEOMETRY_MISMATCH */
    K_NAN,         /* REJECTED, INVALID_VALUE */
    K_UNKNOWN,     /* REJECTED, UNKNOWN_GALLERY */
    K_OVERSIZED,   /* dlq, TOO_LARGE */
    K_TOPK0,       /* REJECTED, INVALID_TOP_K */
};

struct job {
    char id[192];
    enum kind kind;
    size_t nprobes;
    float probe[2][DIM];
    long mate;                         /* subject index of probe 0, or -1 */
    uint32_t top_k;
    int has_thr;
    float thr;
    int sr;                            /* sent with the Schema Registry framing */
    int reply;                         /* asks for its result on t_replies */
    char traceparent[64];              /* sent as a header, must come back */
    int64_t sent_ms, first_ms;
    int results, dlq;                  /* records seen */
    int differing;                     /* duplicates whose content differs */
    int bad_header;                    /* results without the job's traceparent, or on
                                          the wrong topic */
    unsigned shards_seen;              /* bit s: a shard partial for shard s arrived */
    Biomatch__V1__MatchResult *res;    /* first result (owned) */
    char dlq_error[256];
};

struct proc {
    pid_t pid;
    char name[48];
    int exited, status;
};

static const char *brokers, *redis_url;
static char uniq[96], prefix[128], gallery[64], bindir[PATH_MAX - 64];
static char t_enroll[BM_TOPIC_MAX], t_jobs[BM_TOPIC_MAX], t_partials[BM_TOPIC_MAX];
static char t_results[BM_TOPIC_MAX], t_audit[BM_TOPIC_MAX], t_dlq[BM_TOPIC_MAX];
static char t_gallery[BM_TOPIC_MAX], t_tasks[BM_TOPIC_MAX], t_replies[BM_TOPIC_MAX];
static char config_path[256];
static struct bm_redis *redis;
static struct bm_producer *producer;
static struct bm_consumer *results_c, *replies_c, *dlq_c, *partials_c;
static Biomatch__V1__GalleryDefinition *def;
static struct bm_shard *ref[S];

static float (*vecs)[DIM];             /* enrolled vectors, by subject index */
static struct job jobs[NJOBS];
static struct job warm[MAX_WARM];
static size_t nwarm;
static struct proc procs[MAX_PROCS];
static size_t nprocs;
static int unexpected;                 /* records of no job of ours */
static int send_failed;

/* Who answered what, from the partials topic: evidence that the membership
 * changes moved work around (printed, not asserted: the aggregator's
 * output is what the test judges). */
struct tally {
    char worker[64];
    size_t partials;
};
static struct tally tallies[MAX_PROCS];
static size_t ntallies;
static size_t dup_partials;            /* (job, shard) answered more than once */
static int passed;                     /* the test got to its end: drop the logs */
static int failover;                   /* BIOMATCH_TEST_REDIS_FAILOVER: Redis faults */
#define NSUBJ2 (NJOBS * 4)              /* failover: enrollments during the stream */
static char gallery2[64], t_gallery2[BM_TOPIC_MAX], t_tasks2[BM_TOPIC_MAX];
static Biomatch__V1__GalleryDefinition *def2;

/* ------------------------------------------------------------ helpers */

static uint64_t rng = 0x2545f4914f6cdd1dull;
static uint64_t seed_base;             /* per-run seed; job i draws from its own stream */

static float frand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

/* An optional integer knob from the environment (for exploring other
 * seeds and paces by hand); 'fallback' when unset or not a number. */
static long env_long(const char *name, long fallback, long lo, long hi)
{
    const char *v = getenv(name);
    if (v == NULL || v[0] == '\0')
        return fallback;
    char *end = NULL;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno != 0 || end == v || *end != '\0' || x < lo || x > hi)
        return fallback;
    return x;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void subject_id(char *buf, size_t len, long i)
{
    snprintf(buf, len, "subj-%05ld", i);
}

static struct bm_bus_conf bus_conf(void)
{
    struct bm_bus_conf c = {0};
    c.bootstrap_servers = brokers;
    c.client_id = "test_pipeline";
    return c;
}

static void on_delivery(const struct bm_delivery *d, void *opaque)
{
    (void)opaque;
    if (d->err != BM_OK)
        send_failed++;
}

/* Send without waiting; a full local queue is served by polling. 'h' may
 * be NULL. */
static void send_rec(const char *topic, const char *key, const void *val, size_t len,
                     const struct bm_bus_headers *h)
{
    assert_int_equal(bm_producer_send_wait(producer, topic, BM_PARTITION_ANY, key, strlen(key),
                                           val, len, h ? h->v : NULL, h ? h->n : 0,
                                           BM_SEND_SERVE, on_delivery, NULL),
                     BM_OK);
}

/* ------------------------------------------------------------ processes */

static void kill_all(void)
{
    for (size_t i = 0; i < nprocs; i++)
        if (procs[i].pid > 0 && !procs[i].exited) {
            kill(procs[i].pid, SIGKILL);
            waitpid(procs[i].pid, NULL, 0);
            procs[i].exited = 1;
        }
}

/* Spawn bin (in bindir) as node 'name', output to /tmp/<uniq>-<name>.log.
 * The environment is built before fork: librdkafka's threads run in this
 * process, so the child may only call async-signal-safe functions. */
static struct proc *spawn(const char *bin, const char *name)
{
    static int registered;
    if (!registered) {
        atexit(kill_all);
        registered = 1;
    }
    assert_true(nprocs < MAX_PROCS);
    struct proc *p = &procs[nprocs++];
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "%s", name);
    char path[PATH_MAX], logp[256], node[160], pfx[160];
    snprintf(path, sizeof path, "%s/%s", bindir, bin);
    snprintf(logp, sizeof logp, "/tmp/%s-%s.log", uniq, name);
    snprintf(node, sizeof node, "BIOMATCH_NODE_ID=pl-%d-%s", (int)getpid(), name);
    snprintf(pfx, sizeof pfx, "BIOMATCH_TOPIC_PREFIX=%s", prefix);
    extern char **environ;
    size_t n = 0;
    while (environ[n] != NULL)
        n++;
    char **envp = calloc(n + 3, sizeof *envp);
    assert_non_null(envp);
    size_t e = 0;
    for (size_t i = 0; i < n; i++)
        if (strncmp(environ[i], "BIOMATCH_NODE_ID=", 17) != 0 &&
            strncmp(environ[i], "BIOMATCH_TOPIC_PREFIX=", 22) != 0)
            envp[e++] = environ[i];
    envp[e++] = node;
    envp[e++] = pfx;
    envp[e] = NULL;
    char *argv[] = {path, (char *)"--config", config_path, NULL};
    int fd = open(logp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    assert_true(fd >= 0);
    fflush(NULL);
    pid_t parent = getpid();
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        /* Die with the test even when it is killed outright (a ctest
         * timeout), so no child keeps consuming the shared broker. */
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent)
            _exit(126);
        dup2(fd, 1);
        dup2(fd, 2);
        execve(path, argv, envp);
        static const char msg[] = "exec failed\n";
        if (write(2, msg, sizeof msg - 1) < 0)
            _exit(126);
        _exit(127);
    }
    close(fd);
    free(envp);
    p->pid = pid;
    printf("# started %s (pid %d, log %s)\n", name, (int)pid, logp);
    return p;
}

/* Collect the exit of children that ended; fail when one ended that was
 * not asked to (a crash is a finding). */
static void reap(void)
{
    for (size_t i = 0; i < nprocs; i++) {
        struct proc *p = &procs[i];
        if (p->pid <= 0 || p->exited)
            continue;
        int st = 0;
        if (waitpid(p->pid, &st, WNOHANG) == p->pid) {
            p->exited = 1;
            p->status = st;
        }
    }
}

static void kill_now(struct proc *p)
{
    assert_false(p->exited);
    kill(p->pid, SIGKILL);
    int st = 0;
    waitpid(p->pid, &st, 0);
    p->exited = 1;
    p->status = st;
    printf("# SIGKILL %s\n", p->name);
}

static void check_running(const struct proc *p)
{
    if (p->exited)
        fail_msg("%s exited unexpectedly (status 0x%x); see /tmp/%s-%s.log", p->name, p->status,
                 uniq, p->name);
}

/* ------------------------------------------------------------ setup */

static void find_bindir(void)
{
    const char *env = getenv("BIOMATCH_BIN_DIR");
    if (env != NULL && env[0] != '\0') {
        snprintf(bindir, sizeof bindir, "%s", env);
        return;
    }
    char self[PATH_MAX - 128];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    assert_true(n > 0);
    self[n] = '\0';
    char *slash = strrchr(self, '/');
    assert_non_null(slash);
    *slash = '\0';
    /* The test binary lives in <build>/tests; the programs in <build>/bin. */
    snprintf(bindir, sizeof bindir, "%s/../bin", self);
}

static void check_bins(void)
{
    static const char *const progs[] = {"biomatch-coordinator", "biomatch-worker"};
    for (size_t i = 0; i < 2; i++) {
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/%s", bindir, progs[i]);
        if (access(path, X_OK) != 0)
            fail_msg("%s not found: build it, or set BIOMATCH_BIN_DIR", path);
    }
}

static void make_names(void)
{
    bm_test_unique(uniq, sizeof uniq, "pl");
    snprintf(prefix, sizeof prefix, "%s.", uniq);
    /* Gallery names are [A-Za-z0-9_-]{1,64}. */
    size_t gl = 0;
    size_t ul = strlen(uniq);
    const char *src = ul > 58 ? uniq + ul - 58 : uniq;
    gallery[gl++] = 'p';
    gallery[gl++] = '-';
    for (; *src != '\0' && gl < 63; src++)
        gallery[gl++] = *src == '.' ? '_' : *src;
    gallery[gl] = '\0';
    assert_int_equal(bm_topic_name(t_enroll, sizeof t_enroll, prefix, BM_TOPIC_ENROLL), 0);
    assert_int_equal(bm_topic_name(t_jobs, sizeof t_jobs, prefix, BM_TOPIC_JOBS), 0);
    assert_int_equal(bm_topic_name(t_partials, sizeof t_partials, prefix, BM_TOPIC_PARTIALS), 0);
    assert_int_equal(bm_topic_name(t_results, sizeof t_results, prefix, BM_TOPIC_RESULTS), 0);
    assert_int_equal(bm_topic_name(t_audit, sizeof t_audit, prefix, BM_TOPIC_AUDIT), 0);
    assert_int_equal(bm_topic_name(t_dlq, sizeof t_dlq, prefix, BM_TOPIC_DLQ), 0);
    assert_int_equal(bm_topic_gallery(t_gallery, sizeof t_gallery, prefix, gallery), 0);
    assert_int_equal(bm_topic_tasks(t_tasks, sizeof t_tasks, prefix, gallery), 0);
    snprintf(gallery2, sizeof gallery2, "q%s", gallery + 1);
    assert_int_equal(bm_topic_gallery(t_gallery2, sizeof t_gallery2, prefix, gallery2), 0);
    assert_int_equal(bm_topic_tasks(t_tasks2, sizeof t_tasks2, prefix, gallery2), 0);
    /* Outside the prefix: intake refuses replies into its own topics. */
    snprintf(t_replies, sizeof t_replies, "%s-replies", uniq);
}

static void make_gallery_and_topics(void)
{
    char err[512];
    struct bm_spec spec;
    bm_spec_default(&spec, BM_MODALITY_DENSE);
    spec.dim = DIM;
    spec.dtype = BM_DTYPE_INT8;
    def = bm_galdef_from_spec(gallery, BIOMATCH__V1__MODALITY__MODALITY_FACE, &spec, S, R, err,
                              sizeof err);
    if (def == NULL)
        fail_msg("galdef: %s", err);
    if (bm_galdef_put(redis, def, NULL, err, sizeof err) != BM_OK)
        fail_msg("galdef put: %s", err);
    def2 = bm_galdef_from_spec(gallery2, BIOMATCH__V1__MODALITY__MODALITY_FACE, &spec, S, 1, err,
                               sizeof err);
    if (def2 == NULL)
        fail_msg("galdef: %s", err);
    if (failover && bm_galdef_put(redis, def2, NULL, err, sizeof err) != BM_OK)
        fail_msg("galdef put: %s", err);

    struct bm_bus_conf c = bus_conf();
    struct bm_admin *a = bm_admin_new(&c, err, sizeof err);
    assert_non_null(a);
    static const struct bm_bus_prop compact[] = {{"cleanup.policy", "compact"}};
    struct bm_bus_topic_spec t[] = {
        {t_enroll, 4, -1, NULL, 0},   {t_jobs, 4, -1, NULL, 0},
        {t_partials, 4, -1, NULL, 0}, {t_results, 4, -1, NULL, 0},
        {t_audit, 1, -1, NULL, 0},    {t_dlq, 1, -1, NULL, 0},
        {t_gallery, S, -1, compact, 1}, {t_tasks, S * R, -1, NULL, 0},
        {t_replies, 2, -1, NULL, 0},
        {t_gallery2, S, -1, compact, 1}, {t_tasks2, S, -1, NULL, 0},
    };
    size_t nt = sizeof t / sizeof t[0] - (failover ? 0 : 2);
    if (bm_admin_create_topics(a, t, nt, 30000, err, sizeof err) != BM_OK)
        fail_msg("create topics: %s", err);
    bm_admin_free(a);
}

static void write_config(void)
{
    snprintf(config_path, sizeof config_path, "/tmp/%s.yaml", uniq);
    FILE *f = fopen(config_path, "w");
    assert_non_null(f);
    const char *lvl = getenv("BIOMATCH_TEST_PIPELINE_LOG");
    fprintf(f,
            "topic_prefix: \"%s\"\n"
            "brokers: \"%s\"\n"
            "redis:\n  url: \"%s\"\n"
            "http:\n  enabled: false\n"
            "log:\n  level: %s\n"
            "worker:\n  galleries: [%s]\n  threads: 1\n  batch_max_wait_ms: 2\n"
            "  refresh_interval_ms: 200\n  drain_timeout_ms: 15000\n"
            "coordinator:\n  max_job_bytes: %d\n  segment_max_age_ms: 300\n"
            "kafka:\n  session.timeout.ms: \"6000\"\n  heartbeat.interval.ms: \"500\"\n",
            prefix, brokers, redis_url, lvl != NULL ? lvl : "warn", gallery, MAX_JOB_BYTES);
    fclose(f);
}

/* One upsert of subject 'sid' with vector 'v' into gallery 'g'. */
static void enroll_one(const char *g, const char *sid, long i, const float *v)
{
    char rid[64];
    snprintf(rid, sizeof rid, "enroll-%s-%ld", g == gallery ? "p" : "q", i);
    Biomatch__V1__EnrollRequest req = BIOMATCH__V1__ENROLL_REQUEST__INIT;
    Biomatch__V1__Template t = BIOMATCH__V1__TEMPLATE__INIT;
    Biomatch__V1__DenseEmbedding d = BIOMATCH__V1__DENSE_EMBEDDING__INIT;
    d.dim = DIM;
    d.element_type = BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_F32;
    d.data.data = (uint8_t *)v;
    d.data.len = DIM * sizeof *v;
    t.modality = BIOMATCH__V1__MODALITY__MODALITY_FACE;
    t.kind_case = BIOMATCH__V1__TEMPLATE__KIND_DENSE;
    t.dense = &d;
    req.request_id = rid;
    req.agency = (char *)"pipeline-test";
    req.gallery = (char *)g;
    req.op = BIOMATCH__V1__ENROLL_REQUEST__OP__OP_UPSERT;
    req.subject_id = (char *)sid;
    req.template_ = &t;
    req.submitted_unix_ms = wall_ms();
    size_t len = 0;
    uint8_t *buf = bm_wire_encode(&req.base, &len);
    assert_non_null(buf);
    send_rec(t_enroll, sid, buf, len, NULL);
    free(buf);
}

static void enroll_all(void)
{
    vecs = calloc(NSUBJ, sizeof *vecs);
    assert_non_null(vecs);
    for (long i = 0; i < NSUBJ; i++) {
        for (int d = 0; d < DIM; d++)
            vecs[i][d] = frand();
        char sid[32];
        subject_id(sid, sizeof sid, i);
        enroll_one(gallery, sid, i, vecs[i]);
    }
    assert_int_equal(bm_producer_flush(producer, 60000), BM_OK);
    assert_int_equal(send_failed, 0);
}

/* Failover: subject i of the second gallery (its vector is never searched). */
static void enroll_second(long i)
{
    float v[DIM];
    char sid[32];
    for (int d = 0; d < DIM; d++)
        v[d] = frand();
    snprintf(sid, sizeof sid, "late-%05ld", i);
    enroll_one(gallery2, sid, i, v);
}

/* Sum of gallery g's manifests' subject counts, -1 when one is missing. */
static long manifest_subjects(const char *g)
{
    long total = 0;
    for (uint32_t s = 0; s < S; s++) {
        char key[BM_KEY_MAX], err[256];
        bm_key_manifest(key, sizeof key, g, s);
        void *val = NULL;
        size_t len = 0;
        if (bm_redis_get(redis, key, strlen(key), &val, &len) != BM_OK)
            return -1;
        struct bm_manifest *m = NULL;
        int rc = bm_manifest_decode(val, len, 0, &m, err, sizeof err);
        free(val);
        if (rc != BM_OK)
            fail_msg("manifest of shard %u: %s", s, err);
        total += m->subjects;
        bm_manifest_free(m);
    }
    return total;
}

static void wait_sealed(struct proc *coord)
{
    int64_t end = bm_test_now_ms() + WAIT_MS;
    long have = -1;
    while (bm_test_now_ms() < end) {
        reap();
        check_running(coord);
        have = manifest_subjects(gallery);
        if (have == NSUBJ)
            return;
        sleep_ms(200);
    }
    fail_msg("manifests cover %ld subjects, want %d", have, NSUBJ);
}

/* The scalar reference: every shard as the loader builds it from Redis. */
static void load_reference(void)
{
    char err[512];
    size_t total = 0;
    for (uint32_t s = 0; s < S; s++) {
        int rc = 0;
        ref[s] = bm_shard_load(redis, def, s, NULL, &rc, err, sizeof err);
        if (ref[s] == NULL)
            fail_msg("load shard %u: %s (%d)", s, err, rc);
        total += bm_gallery_count(bm_shard_gallery(ref[s]));
    }
    assert_int_equal(total, NSUBJ);
}

static struct bm_consumer *tail(const char *topic, int partitions)
{
    char err[512];
    struct bm_bus_conf c = bus_conf();
    struct bm_consumer *k = bm_consumer_new(&c, NULL, NULL, NULL, err, sizeof err);
    assert_non_null(k);
    struct bm_bus_tp tps[8];
    assert_true(partitions <= 8);
    /* The topics are this run's own, so reading from the beginning sees
     * every record and nothing of anyone else's. */
    for (int i = 0; i < partitions; i++)
        tps[i] = (struct bm_bus_tp){topic, i, BM_OFFSET_BEGINNING};
    assert_int_equal(bm_consumer_assign(k, tps, (size_t)partitions, err, sizeof err), BM_OK);
    return k;
}

/* ------------------------------------------------------------ jobs */

static void make_probe(float *out, long mate)
{
    for (int d = 0; d < DIM; d++)
        out[d] = mate >= 0 ? vecs[mate][d] + 0.3f * frand() : frand();
}

/* Fill job i of the stream: the mix is a pure function of i. */
static void plan_job(struct job *j, size_t i)
{
    memset(j, 0, sizeof *j);
    /* Its own stream, so the probes do not depend on how many warm-up jobs
     * ran before. */
    rng = (seed_base ^ ((uint64_t)(i + 1) * 0xbf58476d1ce4e5b9ull)) | 1;
    for (int k = 0; k < 4; k++)
        frand();
    snprintf(j->id, sizeof j->id, "%sjob-%03zu", prefix, i);
    static const enum kind bad[] = {K_TRUNCATED, K_GEOMETRY, K_NAN,
                                    K_UNKNOWN,   K_OVERSIZED, K_TOPK0};
    if (i % 15 == 7)
        j->kind = bad[(i / 15) % 6];
    else if (i % 10 == 3)
        j->kind = K_VERIFY;
    else
        j->kind = K_IDENTIFY;
    j->mate = (long)((i * 7919u + 13u) % NSUBJ);
    j->nprobes = j->kind == K_IDENTIFY && i % 7 == 0 ? 2 : 1;
    make_probe(j->probe[0], j->mate);
    make_probe(j->probe[1], -1);
    static const uint32_t ks[] = {1, 5, 10, 20};
    j->top_k = j->kind == K_TOPK0 ? 0 : ks[i % 4];
    j->has_thr = j->kind == K_VERIFY || i % 11 == 0;
    j->sr = i % 4 == 1;
    j->reply = i % 13 == 5;
    /* 0.26 is about the 20th best score of a random probe among NSUBJ:
     * such jobs get fewer than top-k candidates now and then. */
    j->thr = j->kind == K_VERIFY ? 0.5f : 0.26f;
}

/* Encode and send job j (with its defects). */
static void send_job(struct job *j)
{
    char claimed[32], wrong_gallery[80];
    subject_id(claimed, sizeof claimed, j->mate);
    snprintf(wrong_gallery, sizeof wrong_gallery, "%s-nope", gallery);
    Biomatch__V1__MatchJob job = BIOMATCH__V1__MATCH_JOB__INIT;
    Biomatch__V1__Template t[2] = {BIOMATCH__V1__TEMPLATE__INIT, BIOMATCH__V1__TEMPLATE__INIT};
    Biomatch__V1__DenseEmbedding d[2] = {BIOMATCH__V1__DENSE_EMBEDDING__INIT,
                                         BIOMATCH__V1__DENSE_EMBEDDING__INIT};
    Biomatch__V1__Template *tp[2] = {&t[0], &t[1]};
    float nanv[DIM];
    for (size_t p = 0; p < j->nprobes; p++) {
        d[p].dim = DIM;
        d[p].element_type = BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_F32;
        d[p].data.data = (uint8_t *)j->probe[p];
        d[p].data.len = DIM * sizeof(float);
        t[p].modality = BIOMATCH__V1__MODALITY__MODALITY_FACE;
        t[p].kind_case = BIOMATCH__V1__TEMPLATE__KIND_DENSE;
        t[p].dense = &d[p];
    }
    if (j->kind == K_GEOMETRY) {
        d[0].dim = DIM / 2;
        d[0].data.len = DIM / 2 * sizeof(float);
    } else if (j->kind == K_NAN) {
        memcpy(nanv, j->probe[0], sizeof nanv);
        nanv[17] = NAN;
        d[0].data.data = (uint8_t *)nanv;
    }
    job.job_id = j->id;
    job.agency = (char *)"pipeline-test";
    job.gallery = j->kind == K_UNKNOWN ? wrong_gallery : gallery;
    job.mode = j->kind == K_VERIFY ? BIOMATCH__V1__MATCH_MODE__MATCH_MODE_VERIFY
                                   : BIOMATCH__V1__MATCH_MODE__MATCH_MODE_IDENTIFY;
    job.n_probes = j->nprobes;
    job.probes = tp;
    job.claimed_subject = j->kind == K_VERIFY ? claimed : (char *)"";
    job.top_k = j->top_k;
    job.has_threshold = j->has_thr;
    job.threshold = j->thr;
    j->sent_ms = bm_test_now_ms();
    job.submitted_unix_ms = wall_ms();
    job.deadline_unix_ms = job.submitted_unix_ms + DEADLINE_MS;
    job.reply_topic = j->reply ? t_replies : (char *)"";
    char *big = NULL;
    Biomatch__V1__MatchJob__AttributesEntry attr = BIOMATCH__V1__MATCH_JOB__ATTRIBUTES_ENTRY__INIT;
    Biomatch__V1__MatchJob__AttributesEntry *attrs[1] = {&attr};
    if (j->kind == K_OVERSIZED) {
        /* Valid in every other way: only the size is wrong. */
        big = malloc(MAX_JOB_BYTES + 1024);
        assert_non_null(big);
        memset(big, 'x', MAX_JOB_BYTES + 1023);
        big[MAX_JOB_BYTES + 1023] = '\0';
        attr.key = (char *)"padding";
        attr.value = big;
        job.n_attributes = 1;
        job.attributes = attrs;
    }
    /* Every job but the oversized one carries an attribute the result must
     * echo; the oversized one's only attribute is its padding. */
    Biomatch__V1__MatchJob__AttributesEntry seq = BIOMATCH__V1__MATCH_JOB__ATTRIBUTES_ENTRY__INIT;
    Biomatch__V1__MatchJob__AttributesEntry *seqs[1] = {&seq};
    if (j->kind != K_OVERSIZED) {
        seq.key = (char *)"case";
        seq.value = j->id;
        job.n_attributes = 1;
        job.attributes = seqs;
    }
    size_t len = 0;
    /* MatchJob is message 4 of proto/biomatch.proto: the SR index path. */
    static const uint32_t sr_path[] = {4};
    uint8_t *buf = j->sr ? bm_wire_encode_sr(&job.base, 42, sr_path, 1, &len)
                         : bm_wire_encode(&job.base, &len);
    assert_non_null(buf);
    free(big);
    if (j->kind == K_OVERSIZED)
        assert_true(len > MAX_JOB_BYTES);
    if (j->kind == K_TRUNCATED) {
        /* Cut inside the probe data, and make sure it really is undecodable. */
        char err[128];
        size_t cut = len / 2;
        Biomatch__V1__MatchJob *dec = NULL;
        while (cut > 1 && (dec = bm_wire_decode_job(buf, cut, len, err, sizeof err)) != NULL) {
            bm_wire_free_job(dec);
            cut--;
        }
        assert_null(dec);
        len = cut;
    }
    /* A traceparent unique to the job: results and dlq records keep it. */
    uint64_t h = bm_subject_key(j->id, strlen(j->id));
    snprintf(j->traceparent, sizeof j->traceparent, "00-%016llx%016llx-%016llx-01",
             (unsigned long long)h, (unsigned long long)(h ^ 0x5bd1e995u),
             (unsigned long long)(h | 1));
    struct bm_bus_headers hd;
    bm_bus_headers_init(&hd);
    bm_bus_headers_add_str(&hd, BM_HDR_TRACEPARENT, j->traceparent);
    bm_bus_headers_add_str(&hd, BM_HDR_CONTENT_TYPE,
                           j->sr ? "application/vnd.confluent.protobuf"
                                 : "application/x-protobuf; proto=biomatch.v1.MatchJob");
    send_rec(t_jobs, j->id, buf, len, &hd);
    free(buf);
}

/* ------------------------------------------------------------ consuming */

static struct job *find_job(const char *id, size_t len)
{
    size_t pl = strlen(prefix);
    if (len > pl + 4 && memcmp(id, prefix, pl) == 0 && memcmp(id + pl, "job-", 4) == 0) {
        char num[8] = "";
        if (len - pl - 4 >= sizeof num)
            return NULL;
        memcpy(num, id + pl + 4, len - pl - 4);
        char *end = NULL;
        long i = strtol(num, &end, 10);
        if (end != NULL && *end == '\0' && i >= 0 && i < NJOBS)
            return &jobs[i];
        return NULL;
    }
    for (size_t i = 0; i < nwarm; i++)
        if (strlen(warm[i].id) == len && memcmp(warm[i].id, id, len) == 0)
            return &warm[i];
    return NULL;
}

static int same_result(const Biomatch__V1__MatchResult *a, const Biomatch__V1__MatchResult *b)
{
    if (a->status != b->status || a->error_code != b->error_code ||
        a->n_candidates != b->n_candidates || a->shards_answered != b->shards_answered)
        return 0;
    for (size_t i = 0; i < a->n_candidates; i++) {
        const Biomatch__V1__Candidate *x = a->candidates[i], *y = b->candidates[i];
        if (strcmp(x->subject_id, y->subject_id) != 0 || x->probe_index != y->probe_index ||
            fabsf(x->score - y->score) > SCORE_EPS)
            return 0;
    }
    return 1;
}

static void on_result(const struct bm_bus_msg *m)
{
    char err[256];
    Biomatch__V1__MatchResult *r =
        bm_wire_decode_result(m->value, m->valuelen, BM_WIRE_DEFAULT_MAX_BYTES, err, sizeof err);
    if (r == NULL)
        fail_msg("undecodable result: %s", err);
    struct job *j = find_job(r->job_id, strlen(r->job_id));
    char jkey[BM_WIRE_JOB_KEY_MAX]; /* results are keyed by (agency, job id) */
    size_t jlen = bm_wire_job_key(r->agency, r->job_id, jkey, sizeof jkey);
    if (j == NULL || m->keylen != jlen || memcmp(m->key, jkey, m->keylen) != 0) {
        printf("# unexpected result for '%s'\n", r->job_id);
        unexpected++;
        bm_wire_free_result(r);
        return;
    }
    j->results++;
    const char *want_topic = j->reply ? t_replies : t_results;
    if (strcmp(m->topic, want_topic) != 0) {
        printf("# %s: result on %s, want %s\n", j->id, m->topic, want_topic);
        j->bad_header++;
    }
    char tp[128];
    if (bm_bus_header_get_str(m->headers, m->nheaders, BM_HDR_TRACEPARENT, tp, sizeof tp) !=
            BM_OK ||
        strcmp(tp, j->traceparent) != 0) {
        printf("# %s: result traceparent '%s', sent '%s'\n", j->id, tp, j->traceparent);
        j->bad_header++;
    }
    if (j->res == NULL) {
        j->res = r;
        j->first_ms = bm_test_now_ms();
        return;
    }
    if (!same_result(j->res, r)) {
        printf("# %s: duplicate result differs (status %d vs %d, %zu vs %zu candidates)\n",
               j->id, j->res->status, r->status, j->res->n_candidates, r->n_candidates);
        j->differing++;
    }
    bm_wire_free_result(r);
}

static void on_dlq(const struct bm_bus_msg *m)
{
    struct job *j = m->key ? find_job(m->key, m->keylen) : NULL;
    if (j == NULL) {
        printf("# unexpected dlq record (key %.*s)\n", (int)m->keylen,
               m->key ? (const char *)m->key : "");
        unexpected++;
        return;
    }
    j->dlq++;
    if (j->first_ms == 0)
        j->first_ms = bm_test_now_ms();
    bm_bus_header_get_str(m->headers, m->nheaders, BM_HDR_ERROR, j->dlq_error,
                          sizeof j->dlq_error);
    char tp[128];
    if (bm_bus_header_get_str(m->headers, m->nheaders, BM_HDR_TRACEPARENT, tp, sizeof tp) !=
            BM_OK ||
        strcmp(tp, j->traceparent) != 0) {
        printf("# %s: dlq traceparent '%s', sent '%s'\n", j->id, tp, j->traceparent);
        j->bad_header++;
    }
}

static void on_partial(const struct bm_bus_msg *m)
{
    char err[256];
    Biomatch__V1__PartialResult *pr =
        bm_wire_decode_partial(m->value, m->valuelen, 8u << 20, err, sizeof err);
    if (pr == NULL)
        fail_msg("undecodable partial: %s", err);
    struct job *j = find_job(pr->job_id, strlen(pr->job_id));
    if (pr->kind == BIOMATCH__V1__PARTIAL_RESULT__KIND__KIND_SHARD && j != NULL && pr->shard < S) {
        if (j->shards_seen & (1u << pr->shard))
            dup_partials++;
        j->shards_seen |= 1u << pr->shard;
        const char *w = pr->worker ? pr->worker : "";
        size_t t = 0;
        while (t < ntallies && strcmp(tallies[t].worker, w) != 0)
            t++;
        if (t == ntallies && ntallies < MAX_PROCS)
            snprintf(tallies[ntallies++].worker, sizeof tallies[0].worker, "%s", w);
        if (t < ntallies)
            tallies[t].partials++;
    }
    bm_wire_free_partial(pr);
}

/* Serve producer reports and the consumers for 'ms'. */
static void pump(int ms)
{
    char err[256];
    int64_t end = bm_test_now_ms() + ms;
    do {
        bm_producer_poll(producer, 0);
        struct bm_bus_msg *m = NULL;
        while (bm_consumer_poll(dlq_c, 0, &m, err, sizeof err) == BM_OK && m != NULL) {
            on_dlq(m);
            bm_bus_msg_free(m);
            m = NULL;
        }
        for (int i = 0; i < 64 && bm_consumer_poll(partials_c, 0, &m, err, sizeof err) == BM_OK &&
                        m != NULL;
             i++) {
            on_partial(m);
            bm_bus_msg_free(m);
            m = NULL;
        }
        while (bm_consumer_poll(replies_c, 0, &m, err, sizeof err) == BM_OK && m != NULL) {
            on_result(m);
            bm_bus_msg_free(m);
            m = NULL;
        }
        if (bm_consumer_poll(results_c, 10, &m, err, sizeof err) == BM_OK && m != NULL) {
            on_result(m);
            bm_bus_msg_free(m);
        }
        reap();
    } while (bm_test_now_ms() < end);
}

static int accounted(const struct job *j)
{
    if (j->kind == K_TRUNCATED || j->kind == K_OVERSIZED)
        return j->dlq > 0;
    return j->res != NULL;
}

/* Warm-up: send IDENTIFY jobs until each replica returned OK over the
 * whole gallery, so the stream starts with every shard loaded. */
static void warm_up(struct proc *coord, struct proc **w, size_t nw)
{
    int ok[R] = {0};
    int64_t end = bm_test_now_ms() + WAIT_MS;
    while (bm_test_now_ms() < end) {
        int all = 1;
        for (int r = 0; r < R; r++)
            all &= ok[r];
        if (all)
            return;
        check_running(coord);
        for (size_t i = 0; i < nw; i++)
            check_running(w[i]);
        /* One new job per replica still missing, then wait a while. */
        for (int r = 0; r < R; r++) {
            if (ok[r])
                continue;
            struct job *j = NULL;
            for (int tries = 0; tries < 100 && j == NULL; tries++) {
                assert_true(nwarm < MAX_WARM);
                struct job *c = &warm[nwarm];
                memset(c, 0, sizeof *c);
                snprintf(c->id, sizeof c->id, "%swarm-%zu-%d", prefix, nwarm, tries);
                if (bm_subject_key(c->id, strlen(c->id)) % R == (uint64_t)r) {
                    nwarm++;
                    j = c;
                }
            }
            assert_non_null(j);
            j->kind = K_IDENTIFY;
            j->nprobes = 1;
            j->mate = 1;
            j->top_k = 1;
            make_probe(j->probe[0], 1);
            send_job(j);
        }
        int64_t wend = bm_test_now_ms() + 8000;
        while (bm_test_now_ms() < wend) {
            pump(100);
            int fresh = 0;
            for (size_t i = 0; i < nwarm; i++) {
                const struct job *j = &warm[i];
                if (j->res == NULL)
                    continue;
                uint64_t r = bm_subject_key(j->id, strlen(j->id)) % R;
                if (j->res->status == BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_OK &&
                    j->res->comparisons == NSUBJ)
                    ok[r] = 1;
                fresh++;
            }
            if (fresh == (int)nwarm)
                break;
        }
    }
    fail_msg("no complete warm-up result on every replica within %d ms", WAIT_MS);
}

/* ------------------------------------------------------------ reference */

struct refc {
    char id[BM_SUBJECT_ID_MAX + 1];
    float score;
};

static int refc_cmp(const void *a, const void *b)
{
    const struct refc *x = a, *y = b;
    if (x->score != y->score)
        return x->score > y->score ? -1 : 1;
    return strcmp(x->id, y->id);
}

/* Brute force: score the probe against every row of every shard, order
 * score desc then id asc. Returns the count (NSUBJ) in *out (caller
 * frees). */
static size_t reference(const float *probe, struct refc **out)
{
    char err[256];
    struct refc *all = calloc(NSUBJ, sizeof *all);
    assert_non_null(all);
    size_t n = 0;
    struct bm_probe p = {0};
    p.dense = probe;
    for (uint32_t s = 0; s < S; s++) {
        struct bm_gallery *g = bm_shard_gallery(ref[s]);
        size_t cnt = bm_gallery_count(g);
        struct bm_candidate *c = calloc(cnt, sizeof *c);
        assert_non_null(c);
        if (bm_gallery_search(g, &p, 1, cnt, -INFINITY, c, NULL, err, sizeof err) != BM_OK)
            fail_msg("reference search: %s", err);
        for (size_t i = 0; i < cnt; i++) {
            if (c[i].id == BM_NO_ID)
                continue;
            assert_true(n < NSUBJ);
            assert_true(bm_shard_subject_id(ref[s], c[i].id, all[n].id, sizeof all[n].id) > 0);
            all[n].score = c[i].score;
            n++;
        }
        free(c);
    }
    qsort(all, n, sizeof *all, refc_cmp);
    *out = all;
    return n;
}

static int tie_swaps;                  /* positions where a near-tie reordered */
static int thr_cut;                    /* probes the threshold left short of top-k */

/* Position of subject 'id' in want[0..n), or -1. */
static long ref_find(const struct refc *want, size_t n, const char *id)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(want[i].id, id) == 0)
            return (long)i;
    return -1;
}

/* The result's candidates of each probe must be the reference's, in its
 * order, scores within SCORE_EPS. Kernels round differently (the workers
 * run the CPU's SIMD kernels, the reference the scalar ones), so two
 * subjects whose reference scores lie within SCORE_EPS of each other may
 * legitimately trade places (also across the top-k cut); anything else is
 * a wrong result. */
static void check_identify(const struct job *j, int *rank1_mate)
{
    const Biomatch__V1__MatchResult *r = j->res;
    if (r->status != BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_OK)
        fail_msg("%s: status %d, error %d '%s'", j->id, r->status, r->error_code, r->error);
    assert_int_equal(r->shards_answered, S);
    assert_int_equal(r->shards_total, S);
    assert_true(r->coverage == 1.0f);
    size_t at = 0;
    for (size_t p = 0; p < j->nprobes; p++) {
        struct refc *want = NULL;
        size_t nall = reference(j->probe[p], &want);
        /* The threshold keeps scores >= thr; a score within SCORE_EPS of it
         * may fall either way. */
        size_t n_lo = 0, n_hi = 0;
        for (size_t i = 0; i < nall; i++) {
            n_lo += !j->has_thr || want[i].score >= j->thr + SCORE_EPS;
            n_hi += !j->has_thr || want[i].score >= j->thr - SCORE_EPS;
        }
        n_lo = n_lo < j->top_k ? n_lo : j->top_k;
        n_hi = n_hi < j->top_k ? n_hi : j->top_k;
        size_t got = 0;
        while (at + got < r->n_candidates && r->candidates[at + got]->probe_index == p)
            got++;
        if (got < n_lo || got > n_hi)
            fail_msg("%s probe %zu: %zu candidates, reference has %zu", j->id, p, got, n_lo);
        size_t n = got;
        thr_cut += got < j->top_k;
        char mate[32];
        subject_id(mate, sizeof mate, j->mate);
        if (p == 0 && n > 0 && strcmp(want[0].id, mate) == 0)
            (*rank1_mate)++;
        for (size_t i = 0; i < n; i++, at++) {
            if (at >= r->n_candidates)
                fail_msg("%s probe %zu: %zu candidates, reference has %zu", j->id, p, i, n);
            const Biomatch__V1__Candidate *c = r->candidates[at];
            if (c->probe_index != p)
                fail_msg("%s: candidate %zu has probe %u, want %zu", j->id, at, c->probe_index, p);
            assert_int_equal(c->rank, i + 1);
            if (fabsf(c->score - want[i].score) > SCORE_EPS)
                fail_msg("%s probe %zu rank %zu: got %s %.9g, reference %s %.9g", j->id, p, i + 1,
                         c->subject_id, (double)c->score, want[i].id, (double)want[i].score);
            if (i > 0) {
                const Biomatch__V1__Candidate *b = r->candidates[at - 1];
                if (b->score < c->score ||
                    (b->score == c->score && strcmp(b->subject_id, c->subject_id) >= 0))
                    fail_msg("%s probe %zu rank %zu: out of order (%s %.9g, %s %.9g)", j->id, p,
                             i + 1, b->subject_id, (double)b->score, c->subject_id,
                             (double)c->score);
                for (size_t q = at - i; q < at; q++)
                    if (strcmp(r->candidates[q]->subject_id, c->subject_id) == 0)
                        fail_msg("%s probe %zu: %s twice", j->id, p, c->subject_id);
            }
            if (strcmp(c->subject_id, want[i].id) == 0)
                continue;
            long w = ref_find(want, nall, c->subject_id);
            if (w < 0 || fabsf(want[w].score - want[i].score) > SCORE_EPS ||
                fabsf(want[w].score - c->score) > SCORE_EPS)
                fail_msg("%s probe %zu rank %zu: got %s %.9g (reference rank %ld), reference "
                         "%s %.9g",
                         j->id, p, i + 1, c->subject_id, (double)c->score, w + 1, want[i].id,
                         (double)want[i].score);
            printf("# %s probe %zu rank %zu: near-tie %s %.9g / reference %s %.9g\n", j->id, p,
                   i + 1, c->subject_id, (double)c->score, want[i].id, (double)want[i].score);
            tie_swaps++;
        }
        free(want);
    }
    if (at != r->n_candidates)
        fail_msg("%s: %zu candidates, reference has %zu", j->id, r->n_candidates, at);
}

/* The job's attribute came back on its result. */
static void check_attributes(const struct job *j)
{
    const Biomatch__V1__MatchResult *r = j->res;
    if (r->n_attributes != 1 || strcmp(r->attributes[0]->key, "case") != 0 ||
        strcmp(r->attributes[0]->value, j->id) != 0)
        fail_msg("%s: attributes not copied to the result (%zu)", j->id, r->n_attributes);
}

static void check_verify(const struct job *j)
{
    char err[256], claimed[32];
    const Biomatch__V1__MatchResult *r = j->res;
    if (r->status != BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_OK)
        fail_msg("%s: VERIFY status %d, error %d '%s'", j->id, r->status, r->error_code,
                 r->error);
    assert_int_equal(r->shards_answered, S);
    assert_true(r->coverage == 1.0f);
    subject_id(claimed, sizeof claimed, j->mate);
    uint32_t shard = bm_shard_of(claimed, strlen(claimed), S);
    struct bm_probe p = {0};
    p.dense = j->probe[0];
    float score = NAN;
    if (bm_gallery_verify(bm_shard_gallery(ref[shard]), &p, bm_subject_key(claimed, strlen(claimed)),
                          &score, err, sizeof err) != BM_OK)
        fail_msg("reference verify: %s", err);
    int pass = score >= j->thr;
    assert_int_equal(r->n_candidates, pass ? 1 : 0);
    if (pass) {
        assert_string_equal(r->candidates[0]->subject_id, claimed);
        if (fabsf(r->candidates[0]->score - score) > SCORE_EPS)
            fail_msg("%s: verify score %.7f, reference %.7f", j->id,
                     (double)r->candidates[0]->score, (double)score);
    }
    assert_int_equal(r->verified, pass);
}

static void check_rejected(const struct job *j, Biomatch__V1__ErrorCode want)
{
    if (j->dlq != 0)
        fail_msg("%s: %d dlq records, want a rejection", j->id, j->dlq);
    if (j->res->status != BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_REJECTED ||
        j->res->error_code != want)
        fail_msg("%s (kind %d): status %d code %d '%s', want REJECTED code %d", j->id, j->kind,
                 j->res->status, j->res->error_code, j->res->error, want);
    assert_int_equal(j->res->n_candidates, 0);
}

static void check_dlq(const struct job *j, const char *code)
{
    if (j->results != 0)
        fail_msg("%s: %d results, want only a dlq record", j->id, j->results);
    if (strncmp(j->dlq_error, code, strlen(code)) != 0)
        fail_msg("%s: dlq error '%s', want %s", j->id, j->dlq_error, code);
}

/* ------------------------------------------------------------ Redis faults */

static unsigned shard_slot(uint32_t shard)
{
    char key[BM_KEY_MAX];
    bm_key_manifest(key, sizeof key, gallery, shard);
    return bm_redis_key_slot(key, strlen(key));
}

/* At fixed points of the stream: a planned failover of shard 0's master,
 * a SIGKILL of shard 1's master, and that node's restart. */
static struct rc_killed killed;

static void redis_faults(size_t i)
{
    if (i == 60) {
        rc_failover(redis, shard_slot(0));
    } else if (i == 180) {
        killed = rc_kill_master(redis, shard_slot(1));
    } else if (i == 260) {
        rc_wait_slot_served(redis, shard_slot(1));
        rc_restart(&killed);
    }
}

/* Every enrollment sent during the faults landed: the manifests count them
 * all and a full load of each shard (every segment's digest checked)
 * holds them all. */
static void check_second_gallery(struct proc *coord)
{
    int64_t end = bm_test_now_ms() + WAIT_MS;
    long have = -1;
    while (bm_test_now_ms() < end && (have = manifest_subjects(gallery2)) != NSUBJ2) {
        check_running(coord);
        sleep_ms(200);
    }
    if (have != NSUBJ2)
        fail_msg("second gallery: manifests cover %ld subjects, want %d", have, NSUBJ2);
    size_t total = 0;
    for (uint32_t s = 0; s < S; s++) {
        char err[512];
        int rc = 0;
        struct bm_shard *sh = bm_shard_load(redis, def2, s, NULL, &rc, err, sizeof err);
        if (sh == NULL)
            fail_msg("second gallery: load shard %u: %s (%d)", s, err, rc);
        total += bm_gallery_count(bm_shard_gallery(sh));
        bm_shard_free(sh);
    }
    assert_int_equal(total, NSUBJ2);
    printf("# second gallery: all %d enrollments sent during the Redis faults are stored\n",
           NSUBJ2);
}

/* ------------------------------------------------------------ test */

static int setup(void **state)
{
    (void)state;
    char err[512];
    brokers = bm_test_env("BIOMATCH_KAFKA_BROKERS");
    redis_url = bm_test_env("BIOMATCH_REDIS_URL");
    failover = getenv("BIOMATCH_TEST_REDIS_FAILOVER") != NULL;
    find_bindir();
    check_bins();
    assert_int_equal(bm_simd_force(BM_SIMD_SCALAR), BM_OK);
    long seed = env_long("BIOMATCH_TEST_PIPELINE_SEED", 1, 1, LONG_MAX);
    seed_base = (uint64_t)seed * 0x9e3779b97f4a7c15ull;
    rng ^= seed_base;
    if (rng == 0)
        rng = 1;
    printf("# seed %ld (BIOMATCH_TEST_PIPELINE_SEED)\n", seed);
    make_names();
    redis = bm_redis_connect(redis_url, NULL, err, sizeof err);
    if (redis == NULL)
        fail_msg("redis: %s", err);
    if (failover && !bm_redis_is_cluster(redis))
        fail_msg("BIOMATCH_TEST_REDIS_FAILOVER needs a Redis Cluster URL, not %s", redis_url);
    struct bm_bus_conf c = bus_conf();
    producer = bm_producer_new(&c, err, sizeof err);
    assert_non_null(producer);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    kill_all();
    bm_consumer_free(results_c);
    bm_consumer_free(dlq_c);
    bm_consumer_free(replies_c);
    bm_consumer_free(partials_c);
    bm_producer_free(producer);
    for (size_t i = 0; i < NJOBS; i++)
        bm_wire_free_result(jobs[i].res);
    for (size_t i = 0; i < nwarm; i++)
        bm_wire_free_result(warm[i].res);
    for (int s = 0; s < S; s++)
        bm_shard_free(ref[s]);
    bm_galdef_free(def);
    bm_galdef_free(def2);
    bm_redis_close(redis);
    free(vecs);
    if (config_path[0] != '\0')
        unlink(config_path);
    /* Children's logs stay for a failed run (their paths were printed). */
    for (size_t i = 0; passed && i < nprocs; i++) {
        char logp[256];
        snprintf(logp, sizeof logp, "/tmp/%s-%s.log", uniq, procs[i].name);
        unlink(logp);
    }
    return 0;
}

static void test_pipeline(void **state)
{
    (void)state;
    int64_t t0 = bm_test_now_ms();
    make_gallery_and_topics();
    write_config();
    results_c = tail(t_results, 4);
    dlq_c = tail(t_dlq, 1);
    replies_c = tail(t_replies, 2);
    partials_c = tail(t_partials, 4);

    struct proc *coord = spawn("biomatch-coordinator", "coord-1");
    enroll_all();
    wait_sealed(coord);
    int64_t t_sealed = bm_test_now_ms();
    load_reference();

    struct proc *w[4];
    w[0] = spawn("biomatch-worker", "worker-1");
    w[1] = spawn("biomatch-worker", "worker-2");
    warm_up(coord, w, 2);
    int64_t t_warm = bm_test_now_ms();
    printf("# %d subjects sealed in %lld ms; workers warm after %lld ms more\n", NSUBJ,
           (long long)(t_sealed - t0), (long long)(t_warm - t_sealed));

    /* The stream, with the membership changes at fixed points. */
    struct proc *w3 = NULL, *w4 = NULL;
    int pace = (int)env_long("BIOMATCH_TEST_PIPELINE_PACE_MS", PACE_MS, 0, 1000);
    for (size_t i = 0; i < NJOBS; i++) {
        plan_job(&jobs[i], i);
        if (i == 50) {
            w3 = spawn("biomatch-worker", "worker-3");
        } else if (i == 100) {
            kill(w[0]->pid, SIGTERM);
            printf("# SIGTERM %s\n", w[0]->name);
        } else if (i == 150) {
            kill_now(w[1]);
            w4 = spawn("biomatch-worker", "worker-4");
        } else if (i == 210) {
            kill_now(coord);
            pump(500);
            coord = spawn("biomatch-coordinator", "coord-2");
        }
        if (failover)
            redis_faults(i);
        for (long e = 0; failover && e < NSUBJ2 / NJOBS; e++)
            enroll_second((long)i * (NSUBJ2 / NJOBS) + e);
        send_job(&jobs[i]);
        pump(pace);
    }
    int64_t t_sent = bm_test_now_ms();
    assert_int_equal(bm_producer_flush(producer, 30000), BM_OK);
    assert_int_equal(send_failed, 0);

    /* Until every job is accounted for (bounded), then a moment more so
     * late duplicates are counted too. */
    int64_t end = bm_test_now_ms() + WAIT_MS;
    size_t missing = NJOBS;
    while (bm_test_now_ms() < end) {
        missing = 0;
        for (size_t i = 0; i < NJOBS; i++)
            missing += !accounted(&jobs[i]);
        if (missing == 0)
            break;
        check_running(coord);
        pump(200);
    }
    pump(1500);
    int64_t t_done = bm_test_now_ms();

    /* Summary first, so a failure below still shows the picture. */
    size_t n_ok = 0, n_rej = 0, n_dlq = 0, dups = 0, differing = 0, bad_headers = 0;
    int64_t max_lat = 0;
    for (size_t i = 0; i < NJOBS; i++) {
        const struct job *j = &jobs[i];
        if (j->res && j->res->status == BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_OK)
            n_ok++;
        if (j->res && j->res->status == BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_REJECTED)
            n_rej++;
        n_dlq += j->dlq > 0;
        dups += j->results > 1 ? (size_t)(j->results - 1) : 0;
        dups += j->dlq > 1 ? (size_t)(j->dlq - 1) : 0;
        differing += (size_t)j->differing;
        bad_headers += (size_t)j->bad_header;
        if (j->first_ms > 0 && j->first_ms - j->sent_ms > max_lat)
            max_lat = j->first_ms - j->sent_ms;
        if (!accounted(j))
            printf("# LOST %s (kind %d): %d results, %d dlq\n", j->id, j->kind, j->results,
                   j->dlq);
    }
    printf("# pipeline: jobs %d, ok %zu, rejected %zu, dlq %zu, duplicates %zu, lost %zu, "
           "max latency %lld ms; stream %lld ms, drained %lld ms after the last send\n",
           NJOBS, n_ok, n_rej, n_dlq, dups, missing, (long long)max_lat,
           (long long)(t_sent - t_warm), (long long)(t_done - t_sent));

    printf("# shard partials by worker:");
    for (size_t t = 0; t < ntallies; t++)
        printf(" %s=%zu", tallies[t].worker, tallies[t].partials);
    printf("; (job, shard) answered more than once (redelivered or replayed): %zu\n",
           dup_partials);
    if (missing != 0)
        fail_msg("%zu jobs lost", missing);
    assert_int_equal(unexpected, 0);
    if (differing != 0)
        fail_msg("%zu duplicate results differ from the first", differing);
    if (bad_headers != 0)
        fail_msg("%zu results without their job's traceparent", bad_headers);

    int rank1 = 0, mated = 0;
    for (size_t i = 0; i < NJOBS; i++) {
        const struct job *j = &jobs[i];
        switch (j->kind) {
        case K_IDENTIFY:
            if (j->dlq != 0)
                fail_msg("%s: good job went to the dlq: %s", j->id, j->dlq_error);
            check_identify(j, &rank1);
            check_attributes(j);
            mated++;
            break;
        case K_VERIFY:
            if (j->dlq != 0)
                fail_msg("%s: good job went to the dlq: %s", j->id, j->dlq_error);
            check_verify(j);
            check_attributes(j);
            break;
        case K_TRUNCATED: check_dlq(j, "ERROR_CODE_MALFORMED"); break;
        case K_OVERSIZED: check_dlq(j, "ERROR_CODE_TOO_LARGE"); break;
        case K_GEOMETRY: check_rejected(j, BIOMATCH__V1__ERROR_CODE__ERROR_CODE_GEOMETRY_MISMATCH); break;
        case K_NAN: check_rejected(j, BIOMATCH__V1__ERROR_CODE__ERROR_CODE_INVALID_VALUE); break;
        case K_UNKNOWN: check_rejected(j, BIOMATCH__V1__ERROR_CODE__ERROR_CODE_UNKNOWN_GALLERY); break;
        case K_TOPK0: check_rejected(j, BIOMATCH__V1__ERROR_CODE__ERROR_CODE_INVALID_TOP_K); break;
        }
    }
    /* The reference itself must be meaningful: mated probes find their mate. */
    printf("# reference rank-1 = mate for %d of %d mated IDENTIFY probes; %d near-tie swaps; "
           "%d probes cut short by a threshold\n",
           rank1, mated, tie_swaps, thr_cut);
    assert_true(rank1 * 10 >= mated * 9);

    /* The SIGTERMed worker drained and left cleanly; the others still run. */
    struct proc *term = w[0];
    int64_t tend = bm_test_now_ms() + 30000;
    while (!term->exited && bm_test_now_ms() < tend) {
        reap();
        sleep_ms(50);
    }
    if (!term->exited)
        fail_msg("%s did not exit within 30 s of SIGTERM", term->name);
    if (!WIFEXITED(term->status) || WEXITSTATUS(term->status) != 0)
        fail_msg("%s exited with status 0x%x after SIGTERM", term->name, term->status);
    check_running(w3);
    check_running(w4);
    check_running(coord);
    if (failover)
        check_second_gallery(coord);
    passed = 1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_pipeline, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
