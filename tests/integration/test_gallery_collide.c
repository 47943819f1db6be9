/* The segment builder's shard (coordinator/shard.c) against two writer
 * hazards, driven through its API on a real Redis and Kafka:
 *
 *   collision  two subject ids with the same 64-bit key (FNV-1a collisions
 *              can be made on purpose): a change of the second must never
 *              replace or delete the first's row. The key is forged with
 *              bm_gshard_add_keyed instead of searching for a collision.
 *   fence      two writers of one shard (a fenced former owner still
 *              running): the one that lost must not overwrite the blob the
 *              winner published under the same segment id.
 *
 * The shard reads its log only on open and resync, so the test puts real
 * records at the offsets it feeds, keeping every re-read consistent. */
#include "test_gallery_util.h"

#include "obs/metrics.h"
#include "shard.h"

struct ct {
    struct gt g;
    struct bm_bus_conf bc;
    struct bm_metrics *metrics;
    struct bm_gshard_env env;
    Biomatch__V1__GalleryDefinition *def;
    int64_t next_offset;
};

static void ct_setup(struct ct *c)
{
    char err[512];
    memset(c, 0, sizeof *c);
    gt_setup(&c->g, 1, 1 << 20, 600000);
    c->bc = gt_bus();
    c->metrics = bm_metrics_new();
    assert_non_null(c->metrics);
    c->env.redis = c->g.redis;
    c->env.bus = &c->bc;
    c->env.metrics = c->metrics;
    c->env.segment_max_bytes = 1 << 20;
    c->env.segment_max_age_ms = 600000;
    c->env.grace_ms = 60000;
    c->env.compact_quiet_ms = 600000;
    c->def = bm_galdef_from_spec(c->g.gallery, BIOMATCH__V1__MODALITY__MODALITY_FACE, &c->g.spec,
                                 1, 1, err, sizeof err);
    assert_non_null(c->def);
}

static void ct_teardown(struct ct *c)
{
    bm_galdef_free(c->def);
    bm_metrics_destroy(c->metrics);
    gt_teardown(&c->g);
}

static struct bm_gshard *ct_open(struct ct *c)
{
    char err[512];
    /* A topic just created may not have its leader yet: bounded retry. */
    for (int i = 0; i < 60; i++) {
        struct bm_gshard *sh =
            bm_gshard_open(&c->env, c->def, c->g.t_gallery, 0, err, sizeof err);
        if (sh != NULL)
            return sh;
        gt_sleep_ms(500);
    }
    fail_msg("shard open: %s", err);
    return NULL;
}

/* A GalleryChange in storage form whose int8 row is gt_vector(seed). */
static uint8_t *ct_change(const char *id, uint64_t seed, size_t *len)
{
    Biomatch__V1__GalleryChange ch = BIOMATCH__V1__GALLERY_CHANGE__INIT;
    Biomatch__V1__Template t = BIOMATCH__V1__TEMPLATE__INIT;
    Biomatch__V1__DenseEmbedding d = BIOMATCH__V1__DENSE_EMBEDDING__INIT;
    int8_t q[512];
    gt_vector(q, 512, seed);
    ch.subject_id = (char *)id;
    ch.agency = (char *)"test-agency";
    ch.request_id = (char *)"r";
    t.modality = BIOMATCH__V1__MODALITY__MODALITY_FACE;
    t.kind_case = BIOMATCH__V1__TEMPLATE__KIND_DENSE;
    t.dense = &d;
    d.dim = 512;
    d.element_type = BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_INT8;
    d.data.data = (uint8_t *)q;
    d.data.len = sizeof q;
    d.scale = 0.01f;
    ch.template_ = &t;
    uint8_t *buf = bm_wire_encode(&ch.base, len);
    assert_non_null(buf);
    return buf;
}

/* Append one record to the shard's log (so the offset exists) and feed
 * it to 'sh' under the forged key 'key'. value seed 0 = a delete. */
static void ct_feed(struct ct *c, struct bm_gshard *sh, uint64_t key, const char *id,
                    uint64_t seed)
{
    size_t len = 0;
    uint8_t *val = seed != 0 ? ct_change(id, seed, &len) : NULL;
    assert_int_equal(bm_producer_send(c->g.producer, c->g.t_gallery, 0, id, strlen(id), val, len,
                                      NULL, 0, gt_delivery, &gt_failed),
                     BM_OK);
    gt_flush(&c->g);
    assert_int_equal(bm_gshard_add_keyed(sh, c->next_offset++, key, id, strlen(id), val, len),
                     BM_OK);
    free(val);
}

static void ct_expect_row(struct ct *c, const char *id, uint64_t seed, size_t n)
{
    struct gt_view v;
    assert_int_equal(gt_view_read(&c->g, 0, &v), 0);
    assert_int_equal(v.n, n);
    const struct gt_row *r = gt_view_find(&v, id);
    assert_non_null(r);
    int8_t q[512];
    gt_vector(q, 512, seed);
    assert_memory_equal(r->row, q, 512);
    gt_view_free(&v);
}

static void test_collision_refused(void **state)
{
    (void)state;
    struct ct c;
    ct_setup(&c);
    struct bm_gshard *sh = ct_open(&c);
    uint64_t k = bm_subjects_key("alice", 5);

    /* In the buffer: mallory's upsert must not replace alice's. */
    ct_feed(&c, sh, k, "alice", 11);
    ct_feed(&c, sh, k, "mallory", 22);
    assert_int_equal(bm_gshard_seal(sh), BM_OK);
    ct_expect_row(&c, "alice", 11, 1);

    /* Against the sealed index: mallory's upsert and delete are refused,
     * alice's own update still applies. */
    ct_feed(&c, sh, k, "mallory", 33);
    ct_feed(&c, sh, k, "mallory", 0);
    assert_int_equal(bm_gshard_seal(sh), BM_OK);
    ct_expect_row(&c, "alice", 11, 1);
    ct_feed(&c, sh, k, "alice", 44);
    ct_feed(&c, sh, k, "mallory", 0);
    assert_int_equal(bm_gshard_seal(sh), BM_OK);
    ct_expect_row(&c, "alice", 44, 1);

    /* After a reload the ids come from the sealed segments. */
    bm_gshard_free(sh);
    sh = ct_open(&c);
    ct_feed(&c, sh, k, "mallory", 0);
    ct_feed(&c, sh, k, "mallory", 55);
    assert_int_equal(bm_gshard_seal(sh), BM_OK);
    ct_expect_row(&c, "alice", 44, 1);

    /* Alice's own delete still applies. (Taking over a freed key is not
     * checked here: the blob stores ids, and readers re-hash them, so a
     * forged key does not survive sealing.) */
    ct_feed(&c, sh, k, "alice", 0);
    assert_int_equal(bm_gshard_seal(sh), BM_OK);
    struct gt_view v;
    assert_int_equal(gt_view_read(&c.g, 0, &v), 0);
    assert_int_equal(v.n, 0);
    gt_view_free(&v);

    bm_gshard_free(sh);
    ct_teardown(&c);
}

static void test_fenced_writer_cannot_overwrite(void **state)
{
    (void)state;
    struct ct c;
    ct_setup(&c);
    struct bm_gshard *a = ct_open(&c);
    struct bm_gshard *b = ct_open(&c);
    uint64_t k = bm_subjects_key("alice", 5);

    /* Same offset, so the same segment id, different bytes: a publishes
     * first; b built on the older manifest must lose without writing. */
    ct_feed(&c, a, k, "alice", 11);
    size_t len = 0;
    uint8_t *val = ct_change("alice", 22, &len);
    assert_int_equal(bm_gshard_add_keyed(b, 0, k, "alice", 5, val, len), BM_OK);
    free(val);
    assert_int_equal(bm_gshard_seal(a), BM_OK);
    assert_int_equal(bm_gshard_seal(b), BM_ECONFLICT);
    ct_expect_row(&c, "alice", 11, 1);
    /* b's resync found a's blob intact: no rebuild (which would repair an
     * overwritten blob and publish version 3) was needed. */
    struct gt_view v;
    assert_int_equal(gt_view_read(&c.g, 0, &v), 0);
    assert_int_equal(v.version, 2);
    gt_view_free(&v);

    bm_gshard_free(b);
    bm_gshard_free(a);
    ct_teardown(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_collision_refused),
        cmocka_unit_test(test_fenced_writer_cannot_overwrite),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
