/* Helpers shared by the tests/integration/test_gallery_*.c tests of the
 * coordinator's gallery role (issue 4): a unique gallery with its topics,
 * a real biomatch-coordinator process (spawned, signalled, killed),
 * enrollment requests, and a shard's content as a worker would see it
 * (latest row of a subject wins, tombstones hide). Header-only (static
 * functions) because tests/CMakeLists.txt builds one file per test. */
#ifndef BM_TEST_GALLERY_UTIL_H
#define BM_TEST_GALLERY_UTIL_H

#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <libgen.h>
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
#include "match/gallery.h"
#include "store/galdef.h"
#include "store/keys.h"
#include "store/manifest.h"
#include "store/redis.h"
#include "store/segment.h"
#include "store/subjects.h"
#include "wire/decode.h"
#include "wire/shard.h"
#include "wire/template.h"

#include "childproc.h"

#define GT_WAIT_MS 30000

struct gt {
    char prefix[128];          /* topic prefix, ends in '.' */
    char gallery[64];
    char t_enroll[BM_TOPIC_MAX], t_dlq[BM_TOPIC_MAX], t_audit[BM_TOPIC_MAX];
    char t_gallery[BM_TOPIC_MAX], t_reply[BM_TOPIC_MAX];
    char config[256];
    uint32_t shards;
    struct bm_spec spec;
    struct bm_redis *redis;
    struct bm_producer *producer;
    pid_t pid;
};

static __attribute__((unused)) struct bm_bus_conf gt_bus(void)
{
    struct bm_bus_conf c = {0};
    c.bootstrap_servers = bm_test_env("BIOMATCH_KAFKA_BROKERS");
    c.client_id = "test_gallery";
    return c;
}

static __attribute__((unused)) void gt_sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Create gallery + topics + a config for the coordinator. */
static __attribute__((unused)) void gt_setup(struct gt *g, uint32_t shards, long long seg_bytes, int seg_age_ms)
{
    char err[512];
    memset(g, 0, sizeof *g);
    g->pid = -1;
    g->shards = shards;
    char u[96];
    bm_test_unique(u, sizeof u, "gt");
    snprintf(g->prefix, sizeof g->prefix, "%s.", u);
    /* Gallery names are [A-Za-z0-9_-]: replace the dots. */
    /* Gallery names are at most 64 bytes; keep the unique tail. */
    size_t ul = strlen(u), gl = 0;
    const char *src = ul > 60 ? u + ul - 60 : u;
    g->gallery[gl++] = 'g';
    g->gallery[gl++] = '-';
    for (; *src != '\0' && gl < 63; src++)
        g->gallery[gl++] = *src == '.' ? '_' : *src;
    g->gallery[gl] = '\0';
    assert_int_equal(bm_topic_name(g->t_enroll, sizeof g->t_enroll, g->prefix, BM_TOPIC_ENROLL), 0);
    assert_int_equal(bm_topic_name(g->t_dlq, sizeof g->t_dlq, g->prefix, BM_TOPIC_DLQ), 0);
    assert_int_equal(bm_topic_name(g->t_audit, sizeof g->t_audit, g->prefix, BM_TOPIC_AUDIT), 0);
    assert_int_equal(bm_topic_gallery(g->t_gallery, sizeof g->t_gallery, g->prefix, g->gallery), 0);
    snprintf(g->t_reply, sizeof g->t_reply, "%sreplies", g->prefix);

    g->redis = bm_redis_connect(bm_test_env("BIOMATCH_REDIS_URL"), NULL, err, sizeof err);
    assert_non_null(g->redis);
    bm_spec_default(&g->spec, BM_MODALITY_DENSE);
    g->spec.dim = 512;
    g->spec.dtype = BM_DTYPE_INT8;
    Biomatch__V1__GalleryDefinition *def = bm_galdef_from_spec(
        g->gallery, BIOMATCH__V1__MODALITY__MODALITY_FACE, &g->spec, shards, 1, err, sizeof err);
    assert_non_null(def);
    int created = 0;
    if (bm_galdef_put(g->redis, def, &created, err, sizeof err) != BM_OK)
        fail_msg("galdef put: %s", err);
    bm_galdef_free(def);

    struct bm_bus_conf bc = gt_bus();
    struct bm_admin *a = bm_admin_new(&bc, err, sizeof err);
    assert_non_null(a);
    static const struct bm_bus_prop compact[] = {{"cleanup.policy", "compact"}};
    struct bm_bus_topic_spec topics[] = {
        {g->t_enroll, 4, -1, NULL, 0},
        {g->t_dlq, 1, -1, NULL, 0},
        {g->t_audit, 1, -1, NULL, 0},
        {g->t_reply, 1, -1, NULL, 0},
        {g->t_gallery, (int)shards, -1, compact, 1},
    };
    if (bm_admin_create_topics(a, topics, 5, GT_WAIT_MS, err, sizeof err) != BM_OK)
        fail_msg("create topics: %s", err);
    bm_admin_free(a);
    g->producer = bm_producer_new(&bc, err, sizeof err);
    assert_non_null(g->producer);

    snprintf(g->config, sizeof g->config, "/tmp/%s.yaml", u);
    FILE *f = fopen(g->config, "w");
    assert_non_null(f);
    const char *lvl = getenv("BIOMATCH_TEST_COORD_LOG");
    fprintf(f,
            "node_id: test-%d\n"
            "topic_prefix: \"%s\"\n"
            "brokers: \"%s\"\n"
            "redis:\n  url: \"%s\"\n"
            "http:\n  enabled: false\n"
            "log:\n  level: %s\n"
            "coordinator:\n  roles: [gallery]\n  segment_max_bytes: %lld\n"
            "  segment_max_age_ms: %d\n"
            "kafka:\n  session.timeout.ms: \"6000\"\n  heartbeat.interval.ms: \"500\"\n",
            (int)getpid(), g->prefix, bm_test_env("BIOMATCH_KAFKA_BROKERS"),
            bm_test_env("BIOMATCH_REDIS_URL"), lvl != NULL ? lvl : "warn", seg_bytes,
            seg_age_ms);
    fclose(f);
}

/* A failed assertion skips the test's teardown: never leave a spawned
 * coordinator behind (it would keep consuming the shared broker). */
static pid_t gt_child = -1;

static void gt_kill_child(void)
{
    if (gt_child > 0) {
        kill(gt_child, SIGKILL);
        waitpid(gt_child, NULL, 0);
        gt_child = -1;
    }
}

/* Spawn the coordinator program 'name' in 'dir' (relative to the test
 * program's directory, build/tests) on g's config. */
static __attribute__((unused)) void gt_start_bin(struct gt *g, const char *dir, const char *name)
{
    static int registered;
    if (!registered) {
        atexit(gt_kill_child);
        registered = 1;
    }
    char bin[PATH_MAX + 64], err[256];
    if (bm_spawn_sibling(bin, sizeof bin, dir, name) != 0)
        fail_msg("%s not found next to the tests: build it", name);
    /* The file's addresses are the same as the environment's. */
    char *args[] = {bin, (char *)"--config", g->config, NULL};
    pid_t pid = bm_spawn(args, NULL, NULL, err, sizeof err);
    if (pid < 0)
        fail_msg("start %s: %s", bin, err);
    g->pid = pid;
    gt_child = pid;
}

static __attribute__((unused)) void gt_start(struct gt *g)
{
    gt_start_bin(g, "../bin", "biomatch-coordinator");
}

/* Send 'sig' and wait (bounded) for the exit; returns the exit status
 * (or 128 + signal). */
static __attribute__((unused)) int gt_stop(struct gt *g, int sig)
{
    if (g->pid <= 0)
        return -1;
    kill(g->pid, sig);
    int st = bm_spawn_wait(g->pid, 60000);
    int stopped = st != -1;
    if (!stopped)
        bm_spawn_stop(g->pid, SIGKILL, 0);
    g->pid = -1;
    gt_child = -1;
    if (!stopped)
        fail_msg("coordinator did not stop within 60 s");
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static __attribute__((unused)) void gt_teardown(struct gt *g)
{
    if (g->pid > 0)
        gt_stop(g, SIGKILL);
    bm_producer_free(g->producer);
    bm_redis_close(g->redis);
    unlink(g->config);
}

/* ------------------------------------------------------------ requests */

static __attribute__((unused)) uint64_t gt_rng(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* An int8 embedding of 'dim' elements from 'seed' into q[]. */
static __attribute__((unused)) void gt_vector(int8_t *q, size_t dim, uint64_t seed)
{
    uint64_t s = seed * 0x9E3779B97F4A7C15ULL + 1;
    for (size_t i = 0; i < dim; i++)
        q[i] = (int8_t)((int)(gt_rng(&s) % 255) - 127);
    q[0] = 100; /* never the zero vector */
}

static __attribute__((unused)) void gt_delivery(const struct bm_delivery *d, void *opaque)
{
    int *failed = opaque;
    if (d->err != BM_OK)
        (*failed)++;
}

static int gt_failed;

static __attribute__((unused)) void gt_send_raw(struct gt *g, const char *key, const void *val, size_t len)
{
    for (int i = 0; i < 1000; i++) {
        int rc = bm_producer_send(g->producer, g->t_enroll, BM_PARTITION_ANY, key,
                                  key ? strlen(key) : 0, val, len, NULL, 0, gt_delivery,
                                  &gt_failed);
        if (rc == BM_OK)
            return;
        assert_int_equal(rc, BM_ERANGE);
        bm_producer_poll(g->producer, 50);
    }
    fail_msg("producer queue stayed full");
}

/* An EnrollRequest. tmpl_kind: 0 int8 vector from 'seed', 1 f32 with a NaN,
 * 2 int8 of the wrong dim. */
static __attribute__((unused)) void gt_enroll(struct gt *g, const char *gallery, const char *subject, int op,
                      uint64_t seed, int tmpl_kind, const char *reply)
{
    Biomatch__V1__EnrollRequest req = BIOMATCH__V1__ENROLL_REQUEST__INIT;
    Biomatch__V1__Template t = BIOMATCH__V1__TEMPLATE__INIT;
    Biomatch__V1__DenseEmbedding d = BIOMATCH__V1__DENSE_EMBEDDING__INIT;
    int8_t q[512];
    float f[512];
    char rid[160];
    snprintf(rid, sizeof rid, "r-%s-%llu", subject, (unsigned long long)seed);
    rid[127] = '\0';
    req.request_id = rid;
    req.agency = (char *)"test-agency";
    req.gallery = (char *)gallery;
    req.op = op;
    req.subject_id = (char *)subject;
    req.reply_topic = (char *)(reply != NULL ? reply : "");
    if (op == BIOMATCH__V1__ENROLL_REQUEST__OP__OP_UPSERT) {
        t.modality = BIOMATCH__V1__MODALITY__MODALITY_FACE;
        t.kind_case = BIOMATCH__V1__TEMPLATE__KIND_DENSE;
        t.dense = &d;
        d.dim = 512;
        if (tmpl_kind == 1) {
            for (int i = 0; i < 512; i++)
                f[i] = (float)i / 512.0f;
            f[7] = NAN;
            d.element_type = BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_F32;
            d.data.data = (uint8_t *)f;
            d.data.len = sizeof f;
        } else {
            gt_vector(q, 512, seed);
            d.element_type = BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_INT8;
            d.data.data = (uint8_t *)q;
            d.data.len = tmpl_kind == 2 ? 256 : 512;
            d.dim = tmpl_kind == 2 ? 256 : 512;
            d.scale = 0.01f;
        }
        req.template_ = &t;
    }
    size_t len = 0;
    uint8_t *buf = bm_wire_encode(&req.base, &len);
    assert_non_null(buf);
    gt_send_raw(g, subject, buf, len);
    free(buf);
}

static __attribute__((unused)) void gt_flush(struct gt *g)
{
    assert_int_equal(bm_producer_flush(g->producer, 60000), BM_OK);
    assert_int_equal(gt_failed, 0);
}

/* The stored row intake derives from gt_vector(seed): int8 -> f32 ->
 * L2-normalised -> int8 with a scale, by the matcher's own conversion. */
static __attribute__((unused)) void gt_expected_row(const struct gt *g, uint64_t seed, uint8_t *row, float *scale)
{
    int8_t q[512];
    float f[512];
    char err[128];
    gt_vector(q, 512, seed);
    for (int i = 0; i < 512; i++)
        f[i] = (float)q[i] * 0.01f;
    struct bm_segment *s = bm_segment_new(&g->spec, 0, 1, err, sizeof err);
    assert_non_null(s);
    assert_int_equal(bm_segment_add_dense(s, 1, f, err, sizeof err), BM_OK);
    memcpy(row, bm_segment_row(s, 0), 512);
    *scale = bm_segment_row_scale(s, 0);
    bm_segment_free(s);
}

/* ------------------------------------------------------------ shard views */

struct gt_row {
    uint64_t key;
    char id[BM_SUBJECT_ID_MAX + 1];
    uint8_t row[512];
    float scale;
    size_t order;      /* position of its segment in the manifest */
};

/* A shard as a worker sees it: rows sorted by id; 'copies' counts rows of
 * subjects present in more than one referenced segment. */
struct gt_view {
    int present;          /* manifest exists */
    uint64_t version;
    size_t nsegments, ntombstones;
    uint32_t subjects;    /* manifest's count */
    struct gt_row *rows;
    size_t n;
    size_t copies;
};

static __attribute__((unused)) int gt_row_cmp_key(const void *a, const void *b)
{
    const struct gt_row *x = a, *y = b;
    if (x->key != y->key)
        return x->key < y->key ? -1 : 1;
    return (x->order > y->order) - (x->order < y->order);
}

static __attribute__((unused)) int gt_row_cmp_id(const void *a, const void *b)
{
    return strcmp(((const struct gt_row *)a)->id, ((const struct gt_row *)b)->id);
}

static __attribute__((unused)) void gt_view_free(struct gt_view *v)
{
    free(v->rows);
    memset(v, 0, sizeof *v);
}

/* Read shard 'shard'. Returns 0 when the view is consistent (manifest and
 * every segment present and valid), -1 when something is missing (a
 * rebuild in progress). */
static __attribute__((unused)) int gt_view_read(struct gt *g, uint32_t shard, struct gt_view *v)
{
    char err[512], key[BM_KEY_MAX];
    memset(v, 0, sizeof *v);
    bm_key_manifest(key, sizeof key, g->gallery, shard);
    void *val = NULL;
    size_t len = 0;
    if (bm_redis_get(g->redis, key, strlen(key), &val, &len) != BM_OK)
        return -1;
    struct bm_manifest *m = NULL;
    assert_int_equal(bm_manifest_decode(val, len, 0, &m, err, sizeof err), BM_OK);
    free(val);
    v->present = 1;
    v->version = m->version;
    v->nsegments = m->nsegments;
    v->ntombstones = m->ntombstones;
    v->subjects = m->subjects;
    struct bm_subjects *names = bm_subjects_new(0, err, sizeof err);
    size_t cap = 0;
    for (size_t s = 0; s < m->nsegments; s++) {
        bm_key_segment(key, sizeof key, g->gallery, shard, m->segments[s].id);
        if (bm_redis_get(g->redis, key, strlen(key), &val, &len) != BM_OK) {
            bm_subjects_free(names);
            bm_manifest_free(m);
            gt_view_free(v);
            return -1;
        }
        struct bm_segment *seg = NULL;
        int rc = bm_segblob_decode(val, len, &g->spec, m->segments[s].sha256, &seg, names, err,
                                   sizeof err);
        free(val);
        if (rc != BM_OK)
            fail_msg("segment %zu of shard %u: %s", s, shard, err);
        size_t n = bm_segment_count(seg);
        if (v->n + n > cap) {
            cap = (v->n + n) * 2;
            v->rows = realloc(v->rows, cap * sizeof *v->rows);
            assert_non_null(v->rows);
        }
        for (size_t r = 0; r < n; r++) {
            struct gt_row *x = &v->rows[v->n++];
            x->key = bm_segment_row_id(seg, r);
            size_t idlen = 0;
            const char *id = bm_subjects_get(names, x->key, &idlen);
            assert_non_null(id);
            memcpy(x->id, id, idlen);
            x->id[idlen] = '\0';
            memcpy(x->row, bm_segment_row(seg, r), 512);
            x->scale = bm_segment_row_scale(seg, r);
            x->order = s;
        }
        bm_segment_free(seg);
    }
    /* Latest row wins, then tombstones hide. */
    qsort(v->rows, v->n, sizeof *v->rows, gt_row_cmp_key);
    size_t out = 0;
    for (size_t i = 0; i < v->n; i++) {
        if (i + 1 < v->n && v->rows[i + 1].key == v->rows[i].key) {
            v->copies++;
            continue;
        }
        int dead = 0;
        for (size_t t = 0; t < m->ntombstones; t++)
            dead |= strcmp(m->tombstones[t], v->rows[i].id) == 0;
        if (!dead)
            v->rows[out++] = v->rows[i];
    }
    v->n = out;
    qsort(v->rows, v->n, sizeof *v->rows, gt_row_cmp_id);
    bm_subjects_free(names);
    bm_manifest_free(m);
    return 0;
}

static __attribute__((unused)) const struct gt_row *gt_view_find(const struct gt_view *v, const char *id)
{
    struct gt_row k;
    snprintf(k.id, sizeof k.id, "%s", id);
    return bsearch(&k, v->rows, v->n, sizeof *v->rows, gt_row_cmp_id);
}

/* The stored manifest of 'shard' (caller frees), or NULL when absent. */
static __attribute__((unused)) struct bm_manifest *gt_manifest_get(struct gt *g, uint32_t shard)
{
    char key[BM_KEY_MAX], err[256];
    bm_key_manifest(key, sizeof key, g->gallery, shard);
    void *val = NULL;
    size_t len = 0;
    if (bm_redis_get(g->redis, key, strlen(key), &val, &len) != BM_OK)
        return NULL;
    struct bm_manifest *m = NULL;
    assert_int_equal(bm_manifest_decode(val, len, 0, &m, err, sizeof err), BM_OK);
    free(val);
    return m;
}

/* Sum of the manifests' live subject counts (-1 when one is missing). */
static __attribute__((unused)) long gt_total_subjects(struct gt *g)
{
    long total = 0;
    for (uint32_t s = 0; s < g->shards; s++) {
        char key[BM_KEY_MAX], err[256];
        bm_key_manifest(key, sizeof key, g->gallery, s);
        void *val = NULL;
        size_t len = 0;
        if (bm_redis_get(g->redis, key, strlen(key), &val, &len) != BM_OK)
            return -1;
        struct bm_manifest *m = NULL;
        assert_int_equal(bm_manifest_decode(val, len, 0, &m, err, sizeof err), BM_OK);
        free(val);
        total += m->subjects;
        bm_manifest_free(m);
    }
    return total;
}

/* Wait until the manifests count 'want' subjects in total. */
static __attribute__((unused)) void gt_wait_total(struct gt *g, long want, int timeout_ms)
{
    long long end = bm_test_now_ms() + timeout_ms;
    long have = -1;
    while (bm_test_now_ms() < end) {
        have = gt_total_subjects(g);
        if (have == want)
            return;
        gt_sleep_ms(200);
    }
    fail_msg("gallery holds %ld subjects, want %ld", have, want);
}

#endif /* BM_TEST_GALLERY_UTIL_H */
