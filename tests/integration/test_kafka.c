/* Integration tests of lib/bus against the real Apache Kafka broker at
 * BIOMATCH_KAFKA_BROKERS (KRaft, auto topic creation off,
 * group.initial.rebalance.delay.ms=0): admin topic creation, a protobuf
 * round trip with headers, a cooperative-sticky handover between two group
 * members with offsets stored after processing, committed offsets that
 * survive a restart, partitions paused in on_assign that all deliver
 * after their resume, and watermark queries. Every wait is bounded; nothing asserts on speed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#include "biomatch.pb-c.h"
#include "bus/bus.h"
#include "common/err.h"

#define WAIT_MS 30000
#define DIM 512

static const char *brokers;

/* Short session and heartbeat so a joining member triggers the rebalance
 * within a second instead of the default 3 s heartbeat. */
static const struct bm_bus_prop group_props[] = {
    {"session.timeout.ms", "6000"},
    {"heartbeat.interval.ms", "500"},
    /* Small fetches (a broker returns at least one whole record batch) so
     * messages of all partitions interleave in the consumer and a handover
     * happens in the middle of partitions, not between them. */
    {"max.partition.fetch.bytes", "256"},
    {"fetch.max.bytes", "1024"},
    {"message.max.bytes", "1024"},
};

static struct bm_bus_conf conf_plain(void)
{
    struct bm_bus_conf c = {0};
    c.bootstrap_servers = brokers;
    c.client_id = "test_kafka";
    return c;
}

/* The same with enable.auto.commit=false: the handover must then rest on
 * the wrapper's own commits (on revoke and on close), not librdkafka's. */
static const struct bm_bus_prop group_props_manual[] = {
    {"session.timeout.ms", "6000"},
    {"heartbeat.interval.ms", "500"},
    {"max.partition.fetch.bytes", "256"},
    {"fetch.max.bytes", "1024"},
    {"message.max.bytes", "1024"},
    {"enable.auto.commit", "false"},
};

static int auto_commit = 1; /* which of the two the group members use */

static struct bm_bus_conf conf_group(void)
{
    struct bm_bus_conf c = conf_plain();
    if (auto_commit) {
        c.props = group_props;
        c.nprops = sizeof group_props / sizeof group_props[0];
    } else {
        c.props = group_props_manual;
        c.nprops = sizeof group_props_manual / sizeof group_props_manual[0];
    }
    return c;
}

static void create_topic(const char *name, int partitions,
                         const struct bm_bus_prop *cfg, size_t ncfg)
{
    char err[512];
    struct bm_bus_conf c = conf_plain();
    struct bm_admin *a = bm_admin_new(&c, err, sizeof err);
    assert_non_null(a);
    struct bm_bus_topic_spec spec = {name, partitions, 1, cfg, ncfg};
    int rc = bm_admin_create_topics(a, &spec, 1, WAIT_MS, err, sizeof err);
    if (rc != BM_OK)
        fail_msg("create %s: %s", name, err);
    bm_admin_free(a);
}

struct dr {
    int ok, failed;
    int64_t offset;
};

static void on_dr(const struct bm_delivery *d, void *opaque)
{
    struct dr *r = opaque;
    if (d->err == BM_OK) {
        r->ok++;
        r->offset = d->offset;
    } else {
        r->failed++;
        fprintf(stderr, "delivery failed: %s\n", d->errstr);
    }
}

static void test_broker_version(void **state)
{
    (void)state;
    char err[512], info[512];
    struct bm_bus_conf c = conf_plain();
    struct bm_admin *a = bm_admin_new(&c, err, sizeof err);
    assert_non_null(a);
    int rc = bm_admin_cluster_info(a, WAIT_MS, info, sizeof info, err, sizeof err);
    if (rc != BM_OK)
        fail_msg("cluster info: %s", err);
    /* The Kafka protocol has no version string; the fixture knows the
     * release from the jar it started. */
    const char *v = getenv("BIOMATCH_KAFKA_VERSION");
    printf("kafka broker: version %s; %s\n", v != NULL && *v ? v : "(unknown)", info);
    /* The broker must be the real one: it answered with its API versions,
     * and a Kafka 4.x broker serves Fetch up to at least v17. */
    assert_non_null(strstr(info, "brokers=1"));
    const char *fetch = strstr(info, "fetch=");
    assert_non_null(fetch);
    const char *dots = strstr(fetch, "..");
    assert_non_null(dots);
    assert_true(strtol(dots + 2, NULL, 10) >= 17);
    bm_admin_free(a);
}

static void test_admin_topics(void **state)
{
    (void)state;
    char err[512], name[128];
    bm_test_unique(name, sizeof name, "bm.test.admin");
    struct bm_bus_prop cfg[] = {{"cleanup.policy", "compact"}};
    struct bm_bus_conf c = conf_plain();
    struct bm_admin *a = bm_admin_new(&c, err, sizeof err);
    assert_non_null(a);
    struct bm_bus_topic_spec spec = {name, 3, 1, cfg, 1};
    int rc = bm_admin_create_topics(a, &spec, 1, WAIT_MS, err, sizeof err);
    if (rc != BM_OK)
        fail_msg("create: %s", err);
    int n = 0;
    assert_int_equal(bm_admin_topic_partitions(a, name, WAIT_MS, &n, err, sizeof err), BM_OK);
    assert_int_equal(n, 3);
    /* Same definition again: already there, fine. */
    assert_int_equal(bm_admin_create_topics(a, &spec, 1, WAIT_MS, err, sizeof err), BM_OK);
    /* Different partition count: a conflict, never silently accepted. */
    spec.partitions = 5;
    assert_int_equal(bm_admin_create_topics(a, &spec, 1, WAIT_MS, err, sizeof err),
                     BM_ECONFLICT);
    assert_non_null(strstr(err, name));
    /* A bad topic config is refused by the broker. */
    char bad[128];
    bm_test_unique(bad, sizeof bad, "bm.test.bad");
    struct bm_bus_prop badcfg[] = {{"cleanup.policy", "no-such-policy"}};
    struct bm_bus_topic_spec bspec = {bad, 1, 1, badcfg, 1};
    rc = bm_admin_create_topics(a, &bspec, 1, WAIT_MS, err, sizeof err);
    assert_true(rc == BM_EINVAL || rc == BM_EKAFKA);
    assert_int_equal(bm_admin_topic_partitions(a, bad, WAIT_MS, &n, err, sizeof err),
                     BM_ENOTFOUND);
    bm_admin_free(a);
}

/* The configured replication reaches the broker: on this one-broker
 * cluster a spec that leaves replication to the configuration gets the
 * admin conf's 2 and is refused (INVALID_REPLICATION_FACTOR), while an
 * explicit 1 in the spec still wins. min.insync.replicas from the
 * configuration is accepted as a topic config. (tests/fault/matrix checks
 * the replicas and the config on the 3-broker cluster.) */
static void test_admin_configured_replication(void **state)
{
    (void)state;
    char err[512], name[128];
    bm_test_unique(name, sizeof name, "bm.test.rf");
    struct bm_bus_conf c = conf_plain();
    c.topic_replication = 2;
    c.topic_min_insync = 1;
    struct bm_admin *a = bm_admin_new(&c, err, sizeof err);
    assert_non_null(a);
    struct bm_bus_topic_spec spec = {name, 1, -1, NULL, 0};
    assert_int_equal(bm_admin_create_topics(a, &spec, 1, WAIT_MS, err, sizeof err), BM_EINVAL);
    assert_non_null(strstr(err, name));
    int n = 0;
    assert_int_equal(bm_admin_topic_partitions(a, name, WAIT_MS, &n, err, sizeof err),
                     BM_ENOTFOUND);
    spec.replication = 1;
    if (bm_admin_create_topics(a, &spec, 1, WAIT_MS, err, sizeof err) != BM_OK)
        fail_msg("explicit replication 1: %s", err);
    bm_admin_free(a);
}

/* A MatchJob with a 512-float face embedding travels through the broker with
 * headers and comes back identical, field by field. */
static void test_protobuf_round_trip(void **state)
{
    (void)state;
    char err[512], topic[128];
    bm_test_unique(topic, sizeof topic, "bm.test.jobs");
    create_topic(topic, 1, NULL, 0);

    float vec[DIM];
    for (int i = 0; i < DIM; i++)
        vec[i] = (float)((i * 37) % 101) / 101.0f - 0.5f;
    Biomatch__V1__DenseEmbedding de = BIOMATCH__V1__DENSE_EMBEDDING__INIT;
    de.dim = DIM;
    de.element_type = BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_F32;
    de.data.data = (uint8_t *)vec; /* little-endian host, as the wire says */
    de.data.len = sizeof vec;
    Biomatch__V1__Template tpl = BIOMATCH__V1__TEMPLATE__INIT;
    tpl.modality = BIOMATCH__V1__MODALITY__MODALITY_FACE;
    tpl.kind_case = BIOMATCH__V1__TEMPLATE__KIND_DENSE;
    tpl.dense = &de;
    Biomatch__V1__Template *probes[] = {&tpl};
    Biomatch__V1__MatchJob__AttributesEntry attr = BIOMATCH__V1__MATCH_JOB__ATTRIBUTES_ENTRY__INIT;
    attr.key = (char *)"case";
    attr.value = (char *)"A-17";
    Biomatch__V1__MatchJob__AttributesEntry *attrs[] = {&attr};
    Biomatch__V1__MatchJob job = BIOMATCH__V1__MATCH_JOB__INIT;
    job.job_id = (char *)"job-0001";
    job.agency = (char *)"border";
    job.gallery = (char *)"faces";
    job.mode = BIOMATCH__V1__MATCH_MODE__MATCH_MODE_IDENTIFY;
    job.n_probes = 1;
    job.probes = probes;
    job.top_k = 10;
    job.threshold = 0.25f;
    job.has_threshold = 1;
    job.deadline_unix_ms = 1700000000123;
    job.min_gallery_version = 42;
    job.n_attributes = 1;
    job.attributes = attrs;
    job.submitted_unix_ms = 1700000000000;
    size_t len = biomatch__v1__match_job__get_packed_size(&job);
    uint8_t *buf = malloc(len);
    assert_non_null(buf);
    assert_int_equal(biomatch__v1__match_job__pack(&job, buf), len);

    struct bm_bus_conf c = conf_plain();
    struct bm_producer *p = bm_producer_new(&c, err, sizeof err);
    assert_non_null(p);
    struct bm_bus_headers h;
    bm_bus_headers_init(&h);
    const char *tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    assert_int_equal(bm_bus_headers_add_str(&h, BM_HDR_CONTENT_TYPE,
                                            "application/x-protobuf"), BM_OK);
    assert_int_equal(bm_bus_headers_add_str(&h, BM_HDR_TRACEPARENT, tp), BM_OK);
    struct dr r = {0};
    assert_int_equal(bm_producer_send(p, topic, BM_PARTITION_ANY, job.job_id,
                                      strlen(job.job_id), buf, len, h.v, h.n, on_dr, &r),
                     BM_OK);
    free(buf); /* the producer copied it */
    assert_int_equal(bm_producer_flush(p, WAIT_MS), BM_OK);
    assert_int_equal(r.ok, 1);
    assert_int_equal(r.offset, 0);
    assert_int_equal(bm_producer_fatal(p, err, sizeof err), BM_OK);
    bm_producer_free(p);

    struct bm_consumer *cons = bm_consumer_new(&c, NULL, NULL, NULL, err, sizeof err);
    assert_non_null(cons);
    struct bm_bus_tp at = {topic, 0, BM_OFFSET_BEGINNING};
    assert_int_equal(bm_consumer_assign(cons, &at, 1, err, sizeof err), BM_OK);
    struct bm_bus_msg *m = NULL;
    int64_t deadline = bm_test_now_ms() + WAIT_MS;
    while (m == NULL && bm_test_now_ms() < deadline)
        bm_consumer_poll(cons, 200, &m, err, sizeof err);
    assert_non_null(m);
    assert_int_equal(m->offset, 0);
    assert_int_equal(m->keylen, strlen("job-0001"));
    assert_memory_equal(m->key, "job-0001", m->keylen);
    char hv[128];
    assert_int_equal(bm_bus_header_get_str(m->headers, m->nheaders, BM_HDR_CONTENT_TYPE,
                                           hv, sizeof hv), BM_OK);
    assert_string_equal(hv, "application/x-protobuf");
    assert_int_equal(bm_bus_header_get_str(m->headers, m->nheaders, BM_HDR_TRACEPARENT,
                                           hv, sizeof hv), BM_OK);
    assert_string_equal(hv, tp);
    assert_true(m->timestamp_ms > 0);

    Biomatch__V1__MatchJob *got = biomatch__v1__match_job__unpack(NULL, m->valuelen, m->value);
    assert_non_null(got);
    assert_string_equal(got->job_id, job.job_id);
    assert_string_equal(got->agency, job.agency);
    assert_string_equal(got->gallery, job.gallery);
    assert_int_equal(got->mode, job.mode);
    assert_int_equal(got->top_k, job.top_k);
    assert_true(got->threshold == job.threshold);
    assert_int_equal(got->has_threshold, 1);
    assert_int_equal(got->deadline_unix_ms, job.deadline_unix_ms);
    assert_int_equal(got->min_gallery_version, job.min_gallery_version);
    assert_int_equal(got->submitted_unix_ms, job.submitted_unix_ms);
    assert_string_equal(got->claimed_subject, "");
    assert_string_equal(got->reply_topic, "");
    assert_int_equal(got->n_attributes, 1);
    assert_string_equal(got->attributes[0]->key, "case");
    assert_string_equal(got->attributes[0]->value, "A-17");
    assert_int_equal(got->n_probes, 1);
    assert_int_equal(got->probes[0]->modality, BIOMATCH__V1__MODALITY__MODALITY_FACE);
    assert_int_equal(got->probes[0]->kind_case, BIOMATCH__V1__TEMPLATE__KIND_DENSE);
    const Biomatch__V1__DenseEmbedding *gd = got->probes[0]->dense;
    assert_int_equal(gd->dim, DIM);
    assert_int_equal(gd->element_type, BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_F32);
    assert_int_equal(gd->data.len, sizeof vec);
    float back[DIM];
    memcpy(back, gd->data.data, sizeof back);
    for (int i = 0; i < DIM; i++)
        assert_true(back[i] == vec[i]);
    biomatch__v1__match_job__free_unpacked(got, NULL);
    bm_bus_msg_free(m);
    bm_consumer_free(cons);
}

/* ---------------------------------------------------------- rebalance */

#define NREB 400
#define NPART 4

struct member {
    const char *name;
    struct bm_consumer *c;
    int owned[NPART];  /* current ownership from on_assign / on_revoke */
    int assigns, revokes;
    int processed;
    int per_part[NPART]; /* messages processed per partition */
};

static int times_done[NREB + 20]; /* processing count per message index */

/* The message's value as the decimal index it carries, checked to be in
 * [0, limit). */
static long value_index(const struct bm_bus_msg *msg, long limit)
{
    char v[32];
    assert_true(msg->valuelen > 0 && msg->valuelen < sizeof v);
    memcpy(v, msg->value, msg->valuelen);
    v[msg->valuelen] = '\0';
    char *end;
    long idx = strtol(v, &end, 10);
    assert_true(*end == '\0' && idx >= 0 && idx < limit);
    return idx;
}

static void m_assign(struct bm_consumer *c, const struct bm_bus_tp *tps, size_t n,
                     void *opaque)
{
    (void)c;
    struct member *m = opaque;
    m->assigns++;
    for (size_t i = 0; i < n; i++) {
        assert_true(tps[i].partition >= 0 && tps[i].partition < NPART);
        assert_int_equal(m->owned[tps[i].partition], 0);
        m->owned[tps[i].partition] = 1;
    }
}

static void m_revoke(struct bm_consumer *c, const struct bm_bus_tp *tps, size_t n,
                     int lost, void *opaque)
{
    (void)c;
    struct member *m = opaque;
    assert_int_equal(lost, 0); /* nobody timed out in this test */
    m->revokes++;
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(m->owned[tps[i].partition], 1);
        m->owned[tps[i].partition] = 0;
    }
}

static int owned_count(const struct member *m)
{
    int n = 0;
    for (int p = 0; p < NPART; p++)
        n += m->owned[p];
    return n;
}

static struct bm_consumer *join(struct member *m, const char *group, const char *instance,
                                const char *topic)
{
    char err[512];
    struct bm_bus_conf c = conf_group();
    struct bm_consumer_callbacks cbs = {m_assign, m_revoke, m};
    m->c = bm_consumer_new(&c, group, instance, &cbs, err, sizeof err);
    if (m->c == NULL)
        fail_msg("consumer %s: %s", m->name, err);
    const char *topics[] = {topic};
    assert_int_equal(bm_consumer_subscribe(m->c, topics, 1, err, sizeof err), BM_OK);
    return m->c;
}

/* One poll of 'm': "process" a message (count it) and only then store its
 * offset, as a worker does after its result's delivery report. */
static void step(struct member *m, int timeout_ms, int *total)
{
    char err[512];
    struct bm_bus_msg *msg = NULL;
    int rc = bm_consumer_poll(m->c, timeout_ms, &msg, err, sizeof err);
    if (rc == BM_ETIMEDOUT)
        return;
    if (rc != BM_OK) {
        fprintf(stderr, "%s poll: %s\n", m->name, err);
        return;
    }
    long idx = value_index(msg, NREB + 20);
    assert_int_equal(m->owned[msg->partition], 1); /* only from owned partitions */
    times_done[idx]++;
    m->processed++;
    m->per_part[msg->partition]++;
    (*total)++;
    assert_int_equal(bm_consumer_store(m->c, msg), BM_OK);
    bm_bus_msg_free(msg);
}

static void produce_range(const char *topic, int from, int to)
{
    char err[512];
    struct bm_bus_conf c = conf_plain();
    struct bm_producer *p = bm_producer_new(&c, err, sizeof err);
    assert_non_null(p);
    struct dr r = {0};
    for (int i = from; i < to; i++) {
        char k[32], v[32];
        snprintf(k, sizeof k, "subject-%d", i);
        snprintf(v, sizeof v, "%d", i);
        assert_int_equal(bm_producer_send(p, topic, i % NPART, k, strlen(k), v, strlen(v),
                                          NULL, 0, on_dr, &r), BM_OK);
        /* Flushing every few messages keeps record batches small. */
        if (i % (2 * NPART) == 2 * NPART - 1)
            assert_int_equal(bm_producer_flush(p, WAIT_MS), BM_OK);
    }
    assert_int_equal(bm_producer_flush(p, WAIT_MS), BM_OK);
    assert_int_equal(r.ok, to - from);
    bm_producer_free(p);
}

static void run_handover(void)
{
    char err[512], topic[128], group[128];
    bm_test_unique(topic, sizeof topic, "bm.test.tasks");
    bm_test_unique(group, sizeof group, "bm.test.workers");
    create_topic(topic, NPART, NULL, 0);
    produce_range(topic, 0, NREB);
    memset(times_done, 0, sizeof times_done);
    int total = 0;

    /* A alone: owns all four partitions and works through part of the log. */
    struct member a = {.name = "A"}, b = {.name = "B"};
    join(&a, group, NULL, topic);
    int64_t deadline = bm_test_now_ms() + WAIT_MS;
    int started = 0;
    while ((owned_count(&a) < NPART || total < NREB / 3 || started < NPART) &&
           bm_test_now_ms() < deadline) {
        step(&a, 100, &total);
        started = 0;
        for (int p = 0; p < NPART; p++)
            started += a.per_part[p] > 0;
    }
    assert_int_equal(owned_count(&a), NPART);
    assert_true(total >= NREB / 3);
    int before[NPART];
    memcpy(before, a.per_part, sizeof before);
    printf("before handover A processed per partition: %d %d %d %d\n", before[0],
           before[1], before[2], before[3]);

    /* B joins while A still has work: cooperative-sticky moves some of A's
     * partitions to B without stopping A's others. Both keep processing. */
    join(&b, group, NULL, topic);
    deadline = bm_test_now_ms() + 60000;
    while ((total < NREB || owned_count(&a) + owned_count(&b) != NPART ||
            owned_count(&b) == 0) && bm_test_now_ms() < deadline) {
        step(&a, 20, &total);
        step(&b, 20, &total);
    }
    printf("handover (auto commit %s): A processed %d, B %d; A owns %d, B owns %d; "
           "A assigns %d revokes %d, B assigns %d\n",
           auto_commit ? "on" : "off", a.processed, b.processed, owned_count(&a),
           owned_count(&b), a.assigns, a.revokes, b.assigns);
    assert_int_equal(total, NREB);
    for (int i = 0; i < NREB; i++)
        if (times_done[i] != 1)
            fail_msg("message %d processed %d times", i, times_done[i]);
    /* A disjoint split covering all partitions, checked against
     * librdkafka's own view too. */
    for (int p = 0; p < NPART; p++)
        assert_int_equal(a.owned[p] + b.owned[p], 1);
    assert_true(owned_count(&b) > 0);
    /* The point of the test: at least one partition changed hands half
     * done, and B started exactly where A's stored offsets ended. */
    int mid = 0;
    for (int p = 0; p < NPART; p++)
        if (b.owned[p] && before[p] > 0 && before[p] < NREB / NPART) {
            mid++;
            assert_int_equal(a.per_part[p] + b.per_part[p], NREB / NPART);
        }
    assert_true(mid > 0);
    assert_int_equal(a.revokes, 1); /* incremental: A gave up only B's share */
    struct bm_bus_tp *as = NULL;
    size_t nas = 0;
    assert_int_equal(bm_consumer_assignment(a.c, &as, &nas), BM_OK);
    assert_int_equal((int)nas, owned_count(&a));
    free(as);

    /* Close both cleanly (commits what they stored), then a restarted
     * member, this time with static membership, finds the committed
     * offsets and receives only new messages. */
    assert_int_equal(bm_consumer_close(a.c, err, sizeof err), BM_OK);
    assert_int_equal(bm_consumer_close(b.c, err, sizeof err), BM_OK);
    bm_consumer_free(a.c);
    bm_consumer_free(b.c);

    struct member r = {.name = "R"};
    join(&r, group, "worker-0", topic);
    struct bm_bus_tp tps[NPART];
    for (int p = 0; p < NPART; p++)
        tps[p] = (struct bm_bus_tp){topic, p, BM_OFFSET_INVALID};
    assert_int_equal(bm_consumer_committed(r.c, tps, NPART, WAIT_MS, err, sizeof err), BM_OK);
    for (int p = 0; p < NPART; p++)
        assert_int_equal(tps[p].offset, NREB / NPART);
    deadline = bm_test_now_ms() + WAIT_MS;
    while (owned_count(&r) < NPART && bm_test_now_ms() < deadline)
        step(&r, 100, &total);
    assert_int_equal(owned_count(&r), NPART);
    assert_int_equal(total, NREB); /* nothing old came back */
    produce_range(topic, NREB, NREB + 20);
    deadline = bm_test_now_ms() + WAIT_MS;
    while (total < NREB + 20 && bm_test_now_ms() < deadline)
        step(&r, 100, &total);
    assert_int_equal(total, NREB + 20);
    for (int i = 0; i < NREB + 20; i++)
        assert_int_equal(times_done[i], 1);
    assert_int_equal(bm_consumer_fatal(r.c, err, sizeof err), BM_OK);
    bm_consumer_free(r.c);
}

static void test_cooperative_handover(void **state)
{
    (void)state;
    auto_commit = 1;
    run_handover();
}

static void test_cooperative_handover_no_auto_commit(void **state)
{
    (void)state;
    auto_commit = 0;
    run_handover();
}

/* --------------------------------------------------------- watermarks */

/* Watermarks of a partition the consumer does not own (the worker's lag
 * gauge asks for them this way): high is the next offset, per partition;
 * a partition that does not exist is an error, not a zero. */
static void test_watermarks(void **state)
{
    (void)state;
    char err[512], topic[128];
    bm_test_unique(topic, sizeof topic, "bm.test.wm");
    create_topic(topic, 2, NULL, 0);
    struct bm_bus_conf pc = conf_plain();
    struct bm_producer *prod = bm_producer_new(&pc, err, sizeof err);
    assert_non_null(prod);
    struct dr r = {0};
    for (int i = 0; i < 5; i++)
        assert_int_equal(bm_producer_send(prod, topic, 0, "k", 1, "v", 1, NULL, 0, on_dr, &r),
                         BM_OK);
    assert_int_equal(bm_producer_flush(prod, WAIT_MS), BM_OK);
    assert_int_equal(r.ok, 5);
    bm_producer_free(prod);

    struct bm_consumer *c = bm_consumer_new(&pc, NULL, NULL, NULL, err, sizeof err);
    assert_non_null(c);
    int64_t lo = -1, hi = -1;
    int rc = bm_consumer_watermarks(c, topic, 0, WAIT_MS, &lo, &hi, err, sizeof err);
    if (rc != BM_OK)
        fail_msg("watermarks: %s", err);
    assert_int_equal(lo, 0);
    assert_int_equal(hi, 5);
    assert_int_equal(bm_consumer_watermarks(c, topic, 1, WAIT_MS, &lo, &hi, err, sizeof err),
                     BM_OK);
    assert_int_equal(lo, 0);
    assert_int_equal(hi, 0);
    lo = hi = -7;
    assert_int_not_equal(bm_consumer_watermarks(c, topic, 9, 3000, &lo, &hi, err, sizeof err),
                         BM_OK);
    assert_true(lo == -7 && hi == -7); /* untouched on error */
    bm_consumer_free(c);
}

/* ------------------------------------------------- pause in on_assign */

#define PA_PARTS 16
#define PA_ROUNDS 6
#define PA_LEAVE 2

struct pauser {
    int assigned;
    const char *topic;
};

static void pa_assign(struct bm_consumer *c, const struct bm_bus_tp *tps, size_t n, void *opaque)
{
    struct pauser *p = opaque;
    for (size_t i = 0; i < n; i++)
        assert_int_equal(bm_consumer_pause(c, tps[i].topic, tps[i].partition), BM_OK);
    p->assigned += (int)n;
}

/* The worker's pattern, many partitions at a time: a new member pauses
 * every partition in on_assign (its shard is loading), resumes them all a
 * moment later, and must then get every message of every partition
 * exactly once. Round 0 starts without committed offsets (the offset
 * reset path), later rounds from the offsets the previous member stored
 * and committed on close. The member of round PA_LEAVE leaves without
 * resuming: what it held back goes, unstored, to the next member.
 * librdkafka 2.0.2 alone, pausing before the fetch had started, now and
 * then left a partition that never fetched again. */
static void test_pause_on_assign_every_partition_delivers(void **state)
{
    (void)state;
    char err[512], topic[128], group[128];
    bm_test_unique(topic, sizeof topic, "bm.test.pause");
    bm_test_unique(group, sizeof group, "bm.test.pausers");
    create_topic(topic, PA_PARTS, NULL, 0);
    struct bm_bus_conf pc = conf_plain();
    struct bm_producer *prod = bm_producer_new(&pc, err, sizeof err);
    assert_non_null(prod);
    static int seen[PA_ROUNDS * PA_PARTS];
    memset(seen, 0, sizeof seen);
    auto_commit = 1;
    for (int round = 0; round < PA_ROUNDS; round++) {
        struct dr r = {0};
        for (int p = 0; p < PA_PARTS; p++) {
            char v[32];
            snprintf(v, sizeof v, "%d", round * PA_PARTS + p);
            assert_int_equal(bm_producer_send(prod, topic, p, v, strlen(v), v, strlen(v), NULL,
                                              0, on_dr, &r), BM_OK);
        }
        assert_int_equal(bm_producer_flush(prod, WAIT_MS), BM_OK);
        assert_int_equal(r.ok, PA_PARTS);

        struct pauser ps = {0, topic};
        struct bm_bus_conf c = conf_group();
        struct bm_consumer_callbacks cbs = {pa_assign, NULL, &ps};
        struct bm_consumer *k = bm_consumer_new(&c, group, NULL, &cbs, err, sizeof err);
        assert_non_null(k);
        const char *topics[] = {topic};
        assert_int_equal(bm_consumer_subscribe(k, topics, 1, err, sizeof err), BM_OK);
        int64_t deadline = bm_test_now_ms() + WAIT_MS;
        struct bm_bus_msg *m = NULL;
        while (ps.assigned < PA_PARTS && bm_test_now_ms() < deadline)
            assert_int_not_equal(bm_consumer_poll(k, 50, &m, err, sizeof err), BM_OK);
        assert_int_equal(ps.assigned, PA_PARTS);
        /* Paused: nothing reaches the application meanwhile (long enough
         * for the first messages to be fetched and held back). */
        for (int i = 0; i < (round == PA_LEAVE ? 20 : 4); i++)
            assert_int_not_equal(bm_consumer_poll(k, 50, &m, err, sizeof err), BM_OK);
        if (round == PA_LEAVE) {
            assert_int_equal(bm_consumer_close(k, err, sizeof err), BM_OK);
            bm_consumer_free(k);
            continue;
        }
        for (int p = 0; p < PA_PARTS; p++)
            assert_int_equal(bm_consumer_resume(k, topic, p), BM_OK);
        int got = 0, want = round == PA_LEAVE + 1 ? 2 * PA_PARTS : PA_PARTS;
        deadline = bm_test_now_ms() + WAIT_MS;
        while (got < want && bm_test_now_ms() < deadline) {
            if (bm_consumer_poll(k, 100, &m, err, sizeof err) != BM_OK)
                continue;
            long idx = value_index(m, (round + 1) * PA_PARTS);
            assert_int_equal(idx % PA_PARTS, m->partition);
            seen[idx]++;
            got++;
            assert_int_equal(bm_consumer_store(k, m), BM_OK);
            bm_bus_msg_free(m);
        }
        if (got < want) {
            for (int p = 0; p < PA_PARTS; p++)
                if (seen[round * PA_PARTS + p] == 0)
                    fprintf(stderr, "round %d: partition %d delivered nothing\n", round, p);
            fail_msg("round %d: %d of %d messages delivered", round, got, want);
        }
        assert_int_equal(bm_consumer_close(k, err, sizeof err), BM_OK);
        bm_consumer_free(k);
    }
    for (int i = 0; i < PA_ROUNDS * PA_PARTS; i++)
        if (seen[i] != 1)
            fail_msg("message %d seen %d times", i, seen[i]);
    bm_producer_free(prod);
}

/* A partition paused (and holding a message) when it is revoked, then
 * assigned back to the same member: paused again in on_assign and
 * resumed, it delivers. (A pause left on the partition by the revoke
 * would survive into the new assignment, where the deferred pause never
 * lifts it.) B takes half the partitions, stores nothing and leaves, so A
 * gets them back with nothing committed. */
static void test_paused_partition_comes_back(void **state)
{
    (void)state;
    char err[512], topic[128], group[128];
    bm_test_unique(topic, sizeof topic, "bm.test.back");
    bm_test_unique(group, sizeof group, "bm.test.back");
    create_topic(topic, 4, NULL, 0);
    struct bm_bus_conf pc = conf_plain();
    struct bm_producer *prod = bm_producer_new(&pc, err, sizeof err);
    assert_non_null(prod);
    struct dr r = {0};
    for (int p = 0; p < 4; p++) {
        char v[8];
        snprintf(v, sizeof v, "%d", p);
        assert_int_equal(bm_producer_send(prod, topic, p, v, strlen(v), v, strlen(v), NULL, 0,
                                          on_dr, &r), BM_OK);
    }
    assert_int_equal(bm_producer_flush(prod, WAIT_MS), BM_OK);
    assert_int_equal(r.ok, 4);
    bm_producer_free(prod);

    auto_commit = 1;
    struct bm_bus_conf c = conf_group();
    struct pauser pa = {0, topic};
    struct bm_consumer_callbacks cbs = {pa_assign, NULL, &pa};
    struct bm_consumer *a = bm_consumer_new(&c, group, NULL, &cbs, err, sizeof err);
    assert_non_null(a);
    const char *topics[] = {topic};
    assert_int_equal(bm_consumer_subscribe(a, topics, 1, err, sizeof err), BM_OK);
    struct bm_bus_msg *m = NULL;
    int64_t deadline = bm_test_now_ms() + WAIT_MS;
    while (pa.assigned < 4 && bm_test_now_ms() < deadline)
        assert_int_not_equal(bm_consumer_poll(a, 50, &m, err, sizeof err), BM_OK);
    assert_int_equal(pa.assigned, 4);
    for (int i = 0; i < 20; i++) /* the first messages arrive and are held */
        assert_int_not_equal(bm_consumer_poll(a, 50, &m, err, sizeof err), BM_OK);

    struct member b = {.name = "B"};
    join(&b, group, NULL, topic);
    deadline = bm_test_now_ms() + WAIT_MS;
    while (owned_count(&b) == 0 && bm_test_now_ms() < deadline) {
        assert_int_not_equal(bm_consumer_poll(a, 20, &m, err, sizeof err), BM_OK);
        if (bm_consumer_poll(b.c, 20, &m, err, sizeof err) == BM_OK)
            bm_bus_msg_free(m); /* B neither processes nor stores */
    }
    assert_true(owned_count(&b) > 0);
    int back = owned_count(&b);
    assert_int_equal(bm_consumer_close(b.c, err, sizeof err), BM_OK);
    bm_consumer_free(b.c);
    deadline = bm_test_now_ms() + WAIT_MS;
    while (pa.assigned < 4 + back && bm_test_now_ms() < deadline)
        assert_int_not_equal(bm_consumer_poll(a, 50, &m, err, sizeof err), BM_OK);
    assert_int_equal(pa.assigned, 4 + back);

    for (int p = 0; p < 4; p++)
        assert_int_equal(bm_consumer_resume(a, topic, p), BM_OK);
    int seen[4] = {0}, got = 0;
    deadline = bm_test_now_ms() + WAIT_MS;
    while (got < 4 && bm_test_now_ms() < deadline) {
        if (bm_consumer_poll(a, 100, &m, err, sizeof err) != BM_OK)
            continue;
        long idx = value_index(m, 4);
        assert_int_equal(idx, m->partition);
        seen[idx]++;
        got++;
        bm_bus_msg_free(m);
    }
    for (int p = 0; p < 4; p++)
        if (seen[p] != 1)
            fail_msg("partition %d delivered %d times", p, seen[p]);
    bm_consumer_free(a);
}

int main(void)
{
    brokers = getenv("BIOMATCH_KAFKA_BROKERS");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_broker_version),
        cmocka_unit_test(test_admin_topics),
        cmocka_unit_test(test_admin_configured_replication),
        cmocka_unit_test(test_protobuf_round_trip),
        cmocka_unit_test(test_cooperative_handover),
        cmocka_unit_test(test_cooperative_handover_no_auto_commit),
        cmocka_unit_test(test_pause_on_assign_every_partition_delivers),
        cmocka_unit_test(test_paused_partition_comes_back),
        cmocka_unit_test(test_watermarks),
    };
    if (brokers == NULL || *brokers == '\0') {
        fprintf(stderr, "BIOMATCH_KAFKA_BROKERS is not set: run integration "
                        "tests through ctest (the bm_services fixture sets it)\n");
        return 1;
    }
    return cmocka_run_group_tests(tests, NULL, NULL);
}
