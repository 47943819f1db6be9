/* Issue 4 "Done when", against the real broker and Redis with a real
 * biomatch-coordinator process (gallery role): 100k enrollments (face,
 * d=512 int8, 4 shards) land in the right shards with the right counts and
 * the stored bytes intake derives; updates replace; deletes vanish after
 * compaction; a FLUSHALL (ctest sets BIOMATCH_TEST_FLUSHALL=1 and runs this
 * test alone; without it only the gallery's own keys are deleted, for runs
 * that share a Redis) is followed by a rebuild with identical content;
 * SIGTERM stops the coordinator cleanly. */
#include "test_gallery_util.h"

#define N 100000
#define NUPD 200
#define NDEL 300
#define SHARDS 4

static void subject(char *buf, size_t len, int i)
{
    snprintf(buf, len, "subj-%06d", i);
}

static int flushall_node(struct bm_redis *node, void *arg)
{
    (void)arg;
    return bm_redis_cmd(node, NULL, "FLUSHALL", (char *)NULL);
}

/* Delete one node's keys that match the pattern 'arg' (SCAN is per node:
 * on Redis Cluster this runs once per master). */
static int delete_matching(struct bm_redis *node, void *arg)
{
    const char *pattern = arg;
    char cursor[32] = "0";
    do {
        struct bm_redis_reply *r = NULL;
        assert_int_equal(bm_redis_cmd(node, &r, "SCAN", cursor, "MATCH", pattern, "COUNT",
                                      "1000", (char *)NULL),
                         BM_OK);
        assert_int_equal(r->type, BM_REDIS_ARRAY);
        snprintf(cursor, sizeof cursor, "%s", r->element[0]->str);
        for (size_t i = 0; i < r->element[1]->elements; i++)
            bm_redis_del(node, r->element[1]->element[i]->str, r->element[1]->element[i]->len);
        bm_redis_reply_free(r);
    } while (strcmp(cursor, "0") != 0);
    return BM_OK;
}

/* Remove every key of the gallery, as a flush would. */
static void flush_gallery(struct gt *g)
{
    if (getenv("BIOMATCH_TEST_FLUSHALL") != NULL) {
        assert_int_equal(bm_redis_each_master(g->redis, flushall_node, NULL), BM_OK);
        return;
    }
    char pattern[BM_KEY_MAX], gkey[BM_KEY_MAX];
    snprintf(pattern, sizeof pattern, "bm:{%s:*", g->gallery);
    bm_key_gallery(gkey, sizeof gkey, g->gallery);
    assert_int_equal(bm_redis_del(g->redis, gkey, strlen(gkey)), BM_OK);
    assert_int_equal(bm_redis_each_master(g->redis, delete_matching, pattern), BM_OK);
}

static int deleted(int i)
{
    return i % (N / NDEL) == 1 && i / (N / NDEL) < NDEL;
}

static int updated(int i)
{
    return i % (N / NUPD) == 2 && i / (N / NUPD) < NUPD;
}

static void test_gallery_lifecycle(void **state)
{
    (void)state;
    struct gt g;
    gt_setup(&g, SHARDS, 16 << 20, 1000);
    gt_start(&g);
    char id[64];

    /* 100k enrollments. */
    size_t want[SHARDS] = {0};
    for (int i = 0; i < N; i++) {
        subject(id, sizeof id, i);
        gt_enroll(&g, g.gallery, id, BIOMATCH__V1__ENROLL_REQUEST__OP__OP_UPSERT, (uint64_t)i,
                  0, NULL);
        want[bm_shard_of(id, strlen(id), SHARDS)]++;
        if (i % 10000 == 0)
            bm_producer_poll(g.producer, 0);
    }
    gt_flush(&g);
    gt_wait_total(&g, N, 150000);
    uint8_t row[512];
    float scale;
    for (uint32_t s = 0; s < SHARDS; s++) {
        struct gt_view v;
        assert_int_equal(gt_view_read(&g, s, &v), 0);
        assert_int_equal(v.n, want[s]);
        assert_int_equal(v.copies, 0);
        for (size_t r = 0; r < v.n; r++)
            assert_int_equal(bm_shard_of(v.rows[r].id, strlen(v.rows[r].id), SHARDS), s);
        /* Spot-check stored bytes against intake's conversion. */
        for (size_t r = 0; r < v.n; r += 997) {
            int i = (int)strtol(v.rows[r].id + 5, NULL, 10);
            gt_expected_row(&g, (uint64_t)i, row, &scale);
            assert_memory_equal(v.rows[r].row, row, 512);
            assert_true(v.rows[r].scale == scale);
        }
        gt_view_free(&v);
    }

    /* Updates replace, deletes vanish (after compaction). */
    for (int i = 0; i < N; i++) {
        subject(id, sizeof id, i);
        if (updated(i))
            gt_enroll(&g, g.gallery, id, BIOMATCH__V1__ENROLL_REQUEST__OP__OP_UPSERT,
                      (uint64_t)i + 1000000, 0, NULL);
        if (deleted(i))
            gt_enroll(&g, g.gallery, id, BIOMATCH__V1__ENROLL_REQUEST__OP__OP_DELETE, 0, 0,
                      NULL);
    }
    gt_flush(&g);
    gt_wait_total(&g, N - NDEL, 60000);
    /* Compaction: no tombstones, no shadowed copies left. */
    long long end = bm_test_now_ms() + 60000;
    int clean = 0;
    while (!clean && bm_test_now_ms() < end) {
        clean = 1;
        for (uint32_t s = 0; s < SHARDS && clean; s++) {
            struct gt_view v;
            if (gt_view_read(&g, s, &v) != 0 || v.ntombstones != 0 || v.copies != 0 ||
                v.nsegments != 1)
                clean = 0;
            gt_view_free(&v);
        }
        if (!clean)
            gt_sleep_ms(250);
    }
    assert_true(clean);
    struct gt_view before[SHARDS];
    size_t total = 0;
    for (uint32_t s = 0; s < SHARDS; s++) {
        assert_int_equal(gt_view_read(&g, s, &before[s]), 0);
        total += before[s].n;
        for (int i = 0; i < N; i++) {
            subject(id, sizeof id, i);
            if (bm_shard_of(id, strlen(id), SHARDS) != s)
                continue;
            const struct gt_row *x = gt_view_find(&before[s], id);
            if (deleted(i)) {
                assert_null(x);
                continue;
            }
            assert_non_null(x);
            if (updated(i)) {
                gt_expected_row(&g, (uint64_t)i + 1000000, row, &scale);
                assert_memory_equal(x->row, row, 512);
            }
        }
    }
    assert_int_equal(total, N - NDEL);

    /* Lose Redis; the owner rebuilds identical content from the log. */
    flush_gallery(&g);
    end = bm_test_now_ms() + 60000;
    int ok = 0;
    while (!ok && bm_test_now_ms() < end) {
        gt_sleep_ms(250);
        ok = 1;
        for (uint32_t s = 0; s < SHARDS && ok; s++) {
            struct gt_view v;
            if (gt_view_read(&g, s, &v) != 0 || v.n != before[s].n)
                ok = 0;
            gt_view_free(&v);
        }
    }
    assert_true(ok);
    for (uint32_t s = 0; s < SHARDS; s++) {
        struct gt_view v;
        assert_int_equal(gt_view_read(&g, s, &v), 0);
        assert_int_equal(v.n, before[s].n);
        for (size_t r = 0; r < v.n; r++) {
            assert_string_equal(v.rows[r].id, before[s].rows[r].id);
            assert_memory_equal(v.rows[r].row, before[s].rows[r].row, 512);
            assert_true(v.rows[r].scale == before[s].rows[r].scale);
        }
        gt_view_free(&v);
        gt_view_free(&before[s]);
    }
    /* The cached definition was put back. */
    char gkey[BM_KEY_MAX];
    bm_key_gallery(gkey, sizeof gkey, g.gallery);
    void *val = NULL;
    size_t len = 0;
    assert_int_equal(bm_redis_get(g.redis, gkey, strlen(gkey), &val, &len), BM_OK);
    free(val);

    assert_int_equal(gt_stop(&g, SIGTERM), 0);
    gt_teardown(&g);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gallery_lifecycle),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
