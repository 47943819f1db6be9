/* Helpers shared by the coordinator role tests (test_intake.c,
 * test_aggregate.c): a coordinator context over the real services with a
 * unique topic prefix, topic creation, synchronous sends, reading a whole
 * topic back, and running a role on a thread. Every wait is bounded. */
#ifndef BM_TEST_COORD_HELPERS_H
#define BM_TEST_COORD_HELPERS_H

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"

#include "biomatch.pb-c.h"
#include "bus/bus.h"
#include "common/err.h"
#include "conf/conf.h"
#include "conf/topics.h"
#include "obs/metrics.h"
#include "wire/job.h"
#include "role.h"
#include "store/galdef.h"
#include "store/redis.h"
#include "wire/decode.h"

#define TH_WAIT_MS 30000
#define TH_MAX_RECS 512

struct th_env {
    char prefix[128];
    char envbuf[8][512];
    const char *envp[9];
    struct bm_conf *conf;
    struct bm_coord_ctx ctx;
    struct bm_bus_conf bus;
    pthread_t thread;
    int running;
    int rc;
};

static inline void th_setup(struct th_env *e, const char *name, const char *roles)
{
    memset(e, 0, sizeof *e);
    char u[96];
    bm_test_unique(u, sizeof u, name);
    snprintf(e->prefix, sizeof e->prefix, "%s.", u);
    snprintf(e->envbuf[0], sizeof e->envbuf[0], "BIOMATCH_KAFKA_BROKERS=%s",
             bm_test_env("BIOMATCH_KAFKA_BROKERS"));
    snprintf(e->envbuf[1], sizeof e->envbuf[1], "BIOMATCH_REDIS_URL=%s",
             bm_test_env("BIOMATCH_REDIS_URL"));
    snprintf(e->envbuf[2], sizeof e->envbuf[2], "BIOMATCH_TOPIC_PREFIX=%s", e->prefix);
    snprintf(e->envbuf[3], sizeof e->envbuf[3], "BIOMATCH_NODE_ID=test-%s", name);
    snprintf(e->envbuf[4], sizeof e->envbuf[4], "BIOMATCH_COORDINATOR_MAX_JOB_BYTES=8192");
    snprintf(e->envbuf[5], sizeof e->envbuf[5], "BIOMATCH_COORDINATOR_ROLES=%s", roles);
    snprintf(e->envbuf[6], sizeof e->envbuf[6], "BIOMATCH_HTTP_ENABLED=false");
    /* Development mode (no policy); a test with a policy puts
     * BIOMATCH_SECURITY_POLICY_FILE in slot 7 instead. */
    snprintf(e->envbuf[7], sizeof e->envbuf[7], "BIOMATCH_SECURITY_DEV_MODE=true");
    for (int i = 0; i < 8; i++)
        e->envp[i] = e->envbuf[i];
    e->envp[8] = NULL;
    char err[512];
    e->conf = bm_conf_parse(NULL, 0, NULL, e->envp, err, sizeof err);
    if (e->conf == NULL)
        fail_msg("conf: %s", err);
    e->ctx.conf = e->conf;
    e->ctx.metrics = bm_metrics_new();
    atomic_store(&e->ctx.stop, 0);
    e->bus.bootstrap_servers = e->conf->brokers;
    e->bus.client_id = "coord-test";
}

/* Run e's roles under 'policy' (YAML text) instead of the development
 * mode: the text goes to a fresh temporary file whose name lands in 'path'
 * (a "/tmp/...XXXXXX" template; the caller unlinks it) and the
 * configuration is loaded again with BIOMATCH_SECURITY_POLICY_FILE, as the
 * process would from its environment. */
static inline void th_use_policy(struct th_env *e, char *path, const char *policy)
{
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    size_t n = strlen(policy);
    assert_int_equal(write(fd, policy, n), (ssize_t)n);
    assert_int_equal(close(fd), 0);
    snprintf(e->envbuf[7], sizeof e->envbuf[7], "BIOMATCH_SECURITY_POLICY_FILE=%s", path);
    char err[512];
    bm_conf_destroy(e->conf);
    e->conf = bm_conf_parse(NULL, 0, NULL, e->envp, err, sizeof err);
    if (e->conf == NULL)
        fail_msg("conf: %s", err);
    e->ctx.conf = e->conf;
    e->bus.bootstrap_servers = e->conf->brokers;
}

static inline void th_teardown(struct th_env *e)
{
    bm_metrics_destroy(e->ctx.metrics);
    bm_conf_destroy(e->conf);
}

static inline void th_topic(struct th_env *e, char *out, size_t len, const char *base)
{
    snprintf(out, len, "%s%s", e->prefix, base);
}

static inline void th_create(struct th_env *e, const char *topic, int partitions)
{
    char err[512];
    struct bm_admin *a = bm_admin_new(&e->bus, err, sizeof err);
    assert_non_null(a);
    struct bm_bus_topic_spec spec = {topic, partitions, 1, NULL, 0};
    if (bm_admin_create_topics(a, &spec, 1, TH_WAIT_MS, err, sizeof err) != BM_OK)
        fail_msg("create %s: %s", topic, err);
    bm_admin_free(a);
}

struct th_role_arg {
    struct th_env *e;
    bm_role_run_fn fn;
};

static inline void *th_role_main(void *arg)
{
    struct th_role_arg *a = arg;
    a->e->rc = a->fn(&a->e->ctx);
    free(a);
    return NULL;
}

static inline void th_start(struct th_env *e, bm_role_run_fn fn)
{
    struct th_role_arg *a = malloc(sizeof *a);
    assert_non_null(a);
    a->e = e;
    a->fn = fn;
    atomic_store(&e->ctx.stop, 0);
    assert_int_equal(pthread_create(&e->thread, NULL, th_role_main, a), 0);
    e->running = 1;
}

static inline int th_stop(struct th_env *e)
{
    if (!e->running)
        return BM_OK;
    atomic_store(&e->ctx.stop, 1);
    pthread_join(e->thread, NULL);
    e->running = 0;
    return e->rc;
}

/* Send and wait for the delivery report. */
static inline void th_send(struct bm_producer *p, const char *topic, int32_t part,
                           const char *key, const void *val, size_t len,
                           const struct bm_bus_headers *h)
{
    int rc = bm_producer_send(p, topic, part, key, key ? strlen(key) : 0, val, len,
                              h ? h->v : NULL, h ? h->n : 0, NULL, NULL);
    assert_int_equal(rc, BM_OK);
}

/* Encode 'm' and send it keyed by its job id. */
static inline void th_send_partial(struct bm_producer *p, const char *topic,
                                   const Biomatch__V1__PartialResult *m)
{
    size_t len;
    uint8_t *b = bm_wire_encode(&m->base, &len);
    assert_non_null(b);
    /* Keyed by the job key, (agency, job id), as intake and workers do. */
    char key[BM_WIRE_JOB_KEY_MAX];
    assert_true(bm_wire_job_key(m->agency, m->job_id, key, sizeof key) > 0);
    th_send(p, topic, BM_PARTITION_ANY, key, b, len, NULL);
    free(b);
}

/* Store the definition of a dense f32 face gallery of 'dim' with 'shards'
 * x 'replicas' in the test's Redis under a fresh name made from 'tag'
 * (gallery names are [A-Za-z0-9_-] only), written to 'name'. */
static inline void th_put_gallery(struct th_env *e, const char *tag, char *name, size_t namelen,
                                  uint32_t dim, uint32_t shards, uint32_t replicas)
{
    char err[512];
    struct bm_redis *r = bm_coord_redis(&e->ctx, err, sizeof err);
    assert_non_null(r);
    char u[64];
    bm_test_unique(u, sizeof u, tag);
    size_t k = 0;
    for (size_t i = 0; u[i] && k + 1 < namelen; i++)
        name[k++] = u[i] == '.' ? '-' : u[i];
    name[k] = '\0';
    Biomatch__V1__GalleryDefinition d = BIOMATCH__V1__GALLERY_DEFINITION__INIT;
    d.name = name;
    d.modality = BIOMATCH__V1__MODALITY__MODALITY_FACE;
    d.dim = dim;
    d.element_type = BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_F32;
    d.shards = shards;
    d.replicas = replicas;
    if (bm_galdef_put(r, &d, NULL, err, sizeof err) != BM_OK)
        fail_msg("galdef put: %s", err);
    bm_redis_close(r);
}

/* A probe template over 'v' (dim f32 values, filled with a fixed pattern):
 * 'de' and 't' are the caller's, and 't' points at 'de' and 'v'. */
static inline void th_dense_probe(float *v, uint32_t dim, Biomatch__V1__DenseEmbedding *de,
                                  Biomatch__V1__Template *t)
{
    for (uint32_t i = 0; i < dim; i++)
        v[i] = (float)(i % 5) - 2.0f + 0.25f;
    biomatch__v1__dense_embedding__init(de);
    de->dim = dim;
    de->element_type = BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_F32;
    de->data.data = (uint8_t *)v;
    de->data.len = dim * sizeof *v;
    biomatch__v1__template__init(t);
    t->modality = BIOMATCH__V1__MODALITY__MODALITY_FACE;
    t->kind_case = BIOMATCH__V1__TEMPLATE__KIND_DENSE;
    t->dense = de;
}

/* One record read back from a topic: copies of what the tests look at. */
struct th_rec {
    int32_t partition;
    char key[256];
    uint8_t *value;
    size_t len;
    char traceparent[128];
    char error[512];
    char content_type[160];
};

/* Read every partition of 'topic' from the beginning until 'want' records
 * arrived (or, with want < 0, until the topic is quiet for 'quiet_ms'),
 * bounded by TH_WAIT_MS. Returns the count; recs[] owns values (th_free). */
static inline size_t th_collect(struct th_env *e, const char *topic, int partitions, int want,
                                int quiet_ms, struct th_rec *recs, size_t max)
{
    char err[512];
    struct bm_consumer *c = bm_consumer_new(&e->bus, NULL, NULL, NULL, err, sizeof err);
    assert_non_null(c);
    struct bm_bus_tp tps[64];
    assert_true(partitions <= 64);
    for (int i = 0; i < partitions; i++)
        tps[i] = (struct bm_bus_tp){topic, i, BM_OFFSET_BEGINNING};
    assert_int_equal(bm_consumer_assign(c, tps, (size_t)partitions, err, sizeof err), BM_OK);
    size_t n = 0;
    int64_t start = bm_test_now_ms(), last = start;
    while (bm_test_now_ms() - start < TH_WAIT_MS) {
        if (want >= 0 && n >= (size_t)want)
            break;
        if (want < 0 && bm_test_now_ms() - last > quiet_ms)
            break;
        struct bm_bus_msg *m = NULL;
        if (bm_consumer_poll(c, 100, &m, err, sizeof err) != BM_OK || m == NULL)
            continue;
        last = bm_test_now_ms();
        if (n < max) {
            struct th_rec *r = &recs[n];
            memset(r, 0, sizeof *r);
            r->partition = m->partition;
            if (m->key && m->keylen < sizeof r->key)
                memcpy(r->key, m->key, m->keylen);
            r->len = m->valuelen;
            r->value = malloc(m->valuelen ? m->valuelen : 1);
            assert_non_null(r->value);
            if (m->valuelen)
                memcpy(r->value, m->value, m->valuelen);
            bm_bus_header_get_str(m->headers, m->nheaders, BM_HDR_TRACEPARENT, r->traceparent,
                                  sizeof r->traceparent);
            bm_bus_header_get_str(m->headers, m->nheaders, BM_HDR_ERROR, r->error,
                                  sizeof r->error);
            bm_bus_header_get_str(m->headers, m->nheaders, BM_HDR_CONTENT_TYPE,
                                  r->content_type, sizeof r->content_type);
            n++;
        }
        bm_bus_msg_free(m);
    }
    bm_consumer_close(c, err, sizeof err);
    bm_consumer_free(c);
    return n;
}

static inline void th_free(struct th_rec *recs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(recs[i].value);
}

#endif /* BM_TEST_COORD_HELPERS_H */
