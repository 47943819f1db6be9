/* coordinator/jobtable: the aggregator's table of jobs, without Kafka:
 * lookup across growth, the shard-count rule, OPEN -> DONE, the done
 * window (by age on the monotonic clock the callers pass, and by count),
 * removal in every state, and the open list's order (oldest first, which
 * the commit watermark relies on). */
#include "testutil.h"

#include <stdio.h>
#include <string.h>

#include "jobtable.h"

static void test_add_find_grow(void **state)
{
    (void)state;
    struct bm_jobtable *t = bm_jobtable_new(1000, 100);
    assert_non_null(t);
    char id[32];
    /* Far more jobs than the first bucket array: every one stays findable. */
    for (int i = 0; i < 5000; i++) {
        snprintf(id, sizeof id, "job-%d", i);
        struct bm_job *j = bm_jobtable_add(t, id, i % 3, 100 + i, 0);
        assert_non_null(j);
        assert_int_equal(j->state, BM_JOB_OPEN);
        assert_int_equal(j->first_offset, 100 + i);
    }
    for (int i = 0; i < 5000; i++) {
        snprintf(id, sizeof id, "job-%d", i);
        struct bm_job *j = bm_jobtable_find(t, id);
        assert_non_null(j);
        assert_string_equal(j->id, id);
        assert_int_equal(j->partition, i % 3);
    }
    assert_null(bm_jobtable_find(t, "job-5000"));
    assert_int_equal(bm_jobtable_open_count(t), 5000);
    /* The open list keeps arrival order. */
    struct bm_job *j = bm_jobtable_first_open(t);
    assert_string_equal(j->id, "job-0");
    assert_string_equal(j->next->id, "job-1");
    bm_jobtable_free(t);
}

static void test_shard_count_is_set_once(void **state)
{
    (void)state;
    struct bm_jobtable *t = bm_jobtable_new(1000, 100);
    struct bm_job *j = bm_jobtable_add(t, "a", 0, 1, 0);
    assert_int_equal(j->shard_count, 0);
    assert_int_equal(bm_jobtable_set_shards(j, 4), 0);
    assert_int_equal(j->shard_count, 4);
    for (uint32_t s = 0; s < 4; s++)
        assert_null(j->shards[s]);
    assert_int_equal(bm_jobtable_set_shards(j, 4), 0);  /* the same again: fine */
    assert_int_equal(bm_jobtable_set_shards(j, 5), -1); /* a partial that disagrees */
    assert_int_equal(j->shard_count, 4);
    bm_jobtable_free(t);
}

static void test_finish_and_done_window(void **state)
{
    (void)state;
    struct bm_jobtable *t = bm_jobtable_new(1000, 100);
    struct bm_job *a = bm_jobtable_add(t, "a", 0, 1, 10);
    struct bm_job *b = bm_jobtable_add(t, "b", 0, 2, 20);
    bm_jobtable_add(t, "c", 0, 3, 30);
    bm_jobtable_finish(t, a, 100);
    assert_int_equal(a->state, BM_JOB_DONE);
    assert_int_equal(a->done_ms, 100);
    bm_jobtable_finish(t, a, 500); /* finishing twice changes nothing */
    assert_int_equal(a->done_ms, 100);
    bm_jobtable_finish(t, b, 600);
    assert_int_equal(bm_jobtable_open_count(t), 1);
    assert_int_equal(bm_jobtable_done_count(t), 2);
    assert_string_equal(bm_jobtable_first_open(t)->id, "c");
    /* A finished id is still found (so a late duplicate partial is
     * recognised) until the window has passed. */
    bm_jobtable_expire(t, 1099);
    assert_non_null(bm_jobtable_find(t, "a"));
    bm_jobtable_expire(t, 1100);
    assert_null(bm_jobtable_find(t, "a"));
    assert_non_null(bm_jobtable_find(t, "b"));
    bm_jobtable_expire(t, 1600);
    assert_null(bm_jobtable_find(t, "b"));
    assert_int_equal(bm_jobtable_done_count(t), 0);
    assert_non_null(bm_jobtable_find(t, "c"));
    bm_jobtable_free(t);
}

static void test_done_max(void **state)
{
    (void)state;
    struct bm_jobtable *t = bm_jobtable_new(1000000, 3);
    char id[16];
    for (int i = 0; i < 5; i++) {
        snprintf(id, sizeof id, "d%d", i);
        bm_jobtable_finish(t, bm_jobtable_add(t, id, 0, i, 0), i);
    }
    bm_jobtable_expire(t, 10);
    /* Only the three most recent are remembered, oldest forgotten first. */
    assert_int_equal(bm_jobtable_done_count(t), 3);
    assert_null(bm_jobtable_find(t, "d0"));
    assert_null(bm_jobtable_find(t, "d1"));
    assert_non_null(bm_jobtable_find(t, "d2"));
    assert_non_null(bm_jobtable_find(t, "d4"));
    bm_jobtable_free(t);
}

static void test_remove_in_any_state(void **state)
{
    (void)state;
    struct bm_jobtable *t = bm_jobtable_new(1000, 100);
    struct bm_job *a = bm_jobtable_add(t, "a", 0, 1, 0);
    struct bm_job *b = bm_jobtable_add(t, "b", 0, 2, 0);
    struct bm_job *c = bm_jobtable_add(t, "c", 0, 3, 0);
    assert_int_equal(bm_jobtable_set_shards(b, 2), 0);
    bm_jobtable_finish(t, c, 5);
    bm_jobtable_remove(t, b); /* the middle of the open list */
    assert_null(bm_jobtable_find(t, "b"));
    assert_ptr_equal(bm_jobtable_first_open(t), a);
    assert_null(a->next);
    bm_jobtable_remove(t, c); /* a DONE job */
    assert_int_equal(bm_jobtable_done_count(t), 0);
    bm_jobtable_remove(t, a);
    assert_int_equal(bm_jobtable_open_count(t), 0);
    assert_null(bm_jobtable_first_open(t));
    /* The table is usable again after being emptied. */
    assert_non_null(bm_jobtable_add(t, "a", 1, 9, 0));
    assert_non_null(bm_jobtable_find(t, "a"));
    bm_jobtable_free(t);
    bm_jobtable_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_add_find_grow),
        cmocka_unit_test(test_shard_count_is_set_once),
        cmocka_unit_test(test_finish_and_done_window),
        cmocka_unit_test(test_done_max),
        cmocka_unit_test(test_remove_in_any_state),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
