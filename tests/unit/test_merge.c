/* Unit tests of the aggregation rules (coordinator/merge.c) and the
 * aggregator's job table (coordinator/jobtable.c): merge order, ties,
 * threshold, ranks, per-probe limits, repeated subjects, status and
 * coverage rules, the VERIFY decision, the offset watermark, duplicate
 * shard detection and the bounded memory of finished job ids.
 *
 * The coordinator's sources are not a library the test build links, so
 * the two pure modules are compiled into this test directly. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#include "jobtable.h"
#include "merge.h"
#include "wire/decode.h"

#define S_OK BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_OK
#define S_PARTIAL BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_PARTIAL
#define S_ERROR BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_ERROR
#define S_TIMEOUT BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_TIMEOUT

static struct bm_merge_cand C(const char *id, float score, uint32_t probe, uint32_t shard)
{
    struct bm_merge_cand c = {id, score, probe, shard, 0};
    return c;
}

static void test_order_and_ranks(void **state)
{
    (void)state;
    /* Two shards' lists, interleaved, out of order. */
    struct bm_merge_cand c[] = {
        C("s3", 0.50f, 0, 1), C("s1", 0.90f, 0, 0), C("s9", 0.70f, 1, 1),
        C("s2", 0.80f, 0, 1), C("s4", 0.10f, 1, 0), C("s5", 0.95f, 1, 0),
    };
    struct bm_merge_opts o = {0, 2, 0, 0};
    size_t n = bm_merge_select(c, 6, &o);
    assert_int_equal(n, 6);
    const char *want[] = {"s1", "s2", "s3", "s5", "s9", "s4"};
    uint32_t rank[] = {1, 2, 3, 1, 2, 3};
    for (size_t i = 0; i < n; i++) {
        assert_string_equal(c[i].subject_id, want[i]);
        assert_int_equal(c[i].rank, rank[i]);
    }
}

static void test_ties_by_subject_id(void **state)
{
    (void)state;
    struct bm_merge_cand c[] = {
        C("b", 0.5f, 0, 2), C("a", 0.5f, 0, 1), C("c", 0.5f, 0, 0), C("aa", 0.5f, 0, 3),
    };
    struct bm_merge_opts o = {3, 1, 0, 0};
    size_t n = bm_merge_select(c, 4, &o);
    assert_int_equal(n, 3);
    assert_string_equal(c[0].subject_id, "a");
    assert_string_equal(c[1].subject_id, "aa");
    assert_string_equal(c[2].subject_id, "b");
}

static void test_limit_threshold_and_junk(void **state)
{
    (void)state;
    struct bm_merge_cand c[] = {
        C("a", 0.9f, 0, 0), C("b", 0.8f, 0, 0), C("c", 0.7f, 0, 1), C("d", 0.2f, 0, 1),
        C("e", NAN, 0, 0), C("f", INFINITY, 0, 0), C("g", 0.99f, 5, 0), /* probe out of range */
        C("", 0.95f, 0, 0), C("h", 0.6f, 1, 0), C("i", 0.59f, 1, 1),
    };
    struct bm_merge_opts o = {2, 2, 1, 0.6f};
    size_t n = bm_merge_select(c, 10, &o);
    assert_int_equal(n, 3);
    assert_string_equal(c[0].subject_id, "a");
    assert_string_equal(c[1].subject_id, "b");
    assert_string_equal(c[2].subject_id, "h"); /* exactly at the threshold passes */
    assert_int_equal(c[2].rank, 1);
}

static void test_repeated_subject_keeps_best(void **state)
{
    (void)state;
    struct bm_merge_cand c[] = {
        C("x", 0.4f, 0, 1), C("y", 0.5f, 0, 0), C("x", 0.6f, 0, 1), C("x", 0.6f, 0, 1),
        C("x", 0.3f, 1, 1),
    };
    struct bm_merge_opts o = {10, 2, 0, 0};
    size_t n = bm_merge_select(c, 5, &o);
    assert_int_equal(n, 3);
    assert_string_equal(c[0].subject_id, "x");
    assert_true(c[0].score == 0.6f);
    assert_string_equal(c[1].subject_id, "y");
    assert_int_equal(c[1].rank, 2);
    assert_string_equal(c[2].subject_id, "x"); /* another probe may repeat it */
    assert_int_equal(c[2].probe_index, 1);
    assert_int_equal(bm_merge_select(NULL, 0, &o), 0);
}

static void test_order_independent(void **state)
{
    (void)state;
    /* Every rotation of the input gives the same output. */
    const char *ids[] = {"k", "j", "i", "h", "g", "f", "e", "d"};
    float sc[] = {0.1f, 0.5f, 0.5f, 0.9f, 0.3f, 0.5f, 0.7f, 0.2f};
    struct bm_merge_cand ref[8];
    size_t nref = 0;
    for (int rot = 0; rot < 8; rot++) {
        struct bm_merge_cand c[8];
        for (int i = 0; i < 8; i++)
            c[i] = C(ids[(i + rot) % 8], sc[(i + rot) % 8], 0, (uint32_t)((i + rot) % 3));
        struct bm_merge_opts o = {5, 1, 0, 0};
        size_t n = bm_merge_select(c, 8, &o);
        if (rot == 0) {
            memcpy(ref, c, sizeof c);
            nref = n;
            assert_string_equal(c[0].subject_id, "h");
            assert_string_equal(c[2].subject_id, "f"); /* 0.5 ties: f, i, j */
            continue;
        }
        assert_int_equal(n, nref);
        for (size_t i = 0; i < n; i++)
            assert_string_equal(c[i].subject_id, ref[i].subject_id);
    }
}

static void test_status_rules(void **state)
{
    (void)state;
    Biomatch__V1__ErrorCode code = BIOMATCH__V1__ERROR_CODE__ERROR_CODE_NONE;
    struct bm_merge_tally t = {4, 4, 0, 0, 0, 0, 0};
    assert_true(bm_merge_ready(&t));
    assert_int_equal(bm_merge_status(&t, &code), S_OK);

    t = (struct bm_merge_tally){4, 3, 0, 0, 0, 0, 0};
    assert_false(bm_merge_ready(&t)); /* one shard missing, deadline ahead */
    t.deadline_passed = 1;
    assert_true(bm_merge_ready(&t));
    assert_int_equal(bm_merge_status(&t, &code), S_PARTIAL);

    t = (struct bm_merge_tally){4, 0, 0, 0, 0, 1, 0};
    assert_int_equal(bm_merge_status(&t, &code), S_TIMEOUT);

    t = (struct bm_merge_tally){4, 3, 1, 0, 0, 0, 0};
    assert_true(bm_merge_ready(&t)); /* all answered, one failed */
    assert_int_equal(bm_merge_status(&t, &code), S_ERROR);
    t = (struct bm_merge_tally){4, 1, 1, 0, 0, 1, 0};
    assert_int_equal(bm_merge_status(&t, &code), S_ERROR); /* error beats partial */
    assert_int_equal(code, BIOMATCH__V1__ERROR_CODE__ERROR_CODE_NONE);

    /* VERIFY: not-found shards count as answered; all not-found = error. */
    t = (struct bm_merge_tally){3, 3, 0, 2, 1, 0, 0};
    assert_int_equal(bm_merge_status(&t, &code), S_OK);
    t = (struct bm_merge_tally){3, 3, 0, 3, 1, 0, 0};
    assert_int_equal(bm_merge_status(&t, &code), S_ERROR);
    assert_int_equal(code, BIOMATCH__V1__ERROR_CODE__ERROR_CODE_SUBJECT_NOT_FOUND);

    /* A quarantined shard is missing, not failed: the job is PARTIAL with
     * POISON as soon as every shard answered; with no OK shard, ERROR. */
    code = BIOMATCH__V1__ERROR_CODE__ERROR_CODE_NONE;
    t = (struct bm_merge_tally){4, 3, 0, 0, 0, 0, 1};
    assert_true(bm_merge_ready(&t));
    assert_int_equal(bm_merge_status(&t, &code), S_PARTIAL);
    assert_int_equal(code, BIOMATCH__V1__ERROR_CODE__ERROR_CODE_POISON);
    code = BIOMATCH__V1__ERROR_CODE__ERROR_CODE_NONE;
    t = (struct bm_merge_tally){2, 0, 0, 0, 0, 0, 2};
    assert_true(bm_merge_ready(&t));
    assert_int_equal(bm_merge_status(&t, &code), S_ERROR);
    assert_int_equal(code, BIOMATCH__V1__ERROR_CODE__ERROR_CODE_POISON);
    code = BIOMATCH__V1__ERROR_CODE__ERROR_CODE_NONE;
    t = (struct bm_merge_tally){4, 2, 0, 0, 0, 1, 1};
    assert_int_equal(bm_merge_status(&t, &code), S_PARTIAL); /* one late, one quarantined */
    assert_int_equal(code, BIOMATCH__V1__ERROR_CODE__ERROR_CODE_POISON);
    code = BIOMATCH__V1__ERROR_CODE__ERROR_CODE_NONE;
    t = (struct bm_merge_tally){4, 2, 1, 0, 0, 0, 1};
    assert_int_equal(bm_merge_status(&t, &code), S_ERROR); /* a failure still wins */
    assert_int_equal(code, BIOMATCH__V1__ERROR_CODE__ERROR_CODE_NONE);

    t = (struct bm_merge_tally){0, 0, 0, 0, 0, 0, 0};
    assert_false(bm_merge_ready(&t));
}

static void test_verified(void **state)
{
    (void)state;
    struct bm_merge_cand c[] = {C("s", 0.41f, 0, 0), C("s", 0.62f, 1, 0)};
    assert_true(bm_merge_verified(c, 2, 1, 0.6f));
    assert_false(bm_merge_verified(c, 2, 1, 0.7f));
    assert_false(bm_merge_verified(c, 2, 0, 0.0f)); /* no threshold: never asserted */
    assert_false(bm_merge_verified(c, 0, 1, 0.0f));
}

static void test_watermark(void **state)
{
    (void)state;
    int64_t pend[] = {17, 12, 30};
    assert_int_equal(bm_merge_watermark(pend, 3, 40), 12);
    assert_int_equal(bm_merge_watermark(NULL, 0, 40), 40);
    assert_int_equal(bm_merge_watermark(NULL, 0, -1), -1);
    int64_t one = 5;
    assert_int_equal(bm_merge_watermark(&one, 1, -1), 5);
}

static Biomatch__V1__PartialResult *shard_partial(const char *id, uint32_t shard)
{
    /* Build through encode/decode so the table frees what it owns the way
     * it does in production. */
    Biomatch__V1__PartialResult p = BIOMATCH__V1__PARTIAL_RESULT__INIT;
    p.job_id = (char *)id;
    p.kind = BIOMATCH__V1__PARTIAL_RESULT__KIND__KIND_SHARD;
    p.shard = shard;
    p.shard_count = 3;
    size_t len;
    uint8_t *buf = bm_wire_encode(&p.base, &len);
    assert_non_null(buf);
    char err[128];
    Biomatch__V1__PartialResult *d = bm_wire_decode_partial(buf, len, 4096, err, sizeof err);
    free(buf);
    assert_non_null(d);
    return d;
}

static void test_jobtable_watermark_and_done(void **state)
{
    (void)state;
    struct bm_jobtable *t = bm_jobtable_new(1000, 2);
    assert_non_null(t);
    char id[32];
    /* Many jobs force the hash to grow. */
    for (int i = 0; i < 600; i++) {
        snprintf(id, sizeof id, "job-%d", i);
        assert_non_null(bm_jobtable_add(t, id, i % 2, 100 + i, 0));
    }
    assert_int_equal(bm_jobtable_open_count(t), 600);
    struct bm_job *j = bm_jobtable_find(t, "job-0");
    assert_non_null(j);
    assert_int_equal(bm_jobtable_set_shards(j, 3), 0);
    assert_int_equal(bm_jobtable_set_shards(j, 4), -1);
    j->shards[1] = shard_partial("job-0", 1);
    j->answered = 1;
    /* A duplicate (job, shard) is detected by the filled slot. */
    assert_non_null(j->shards[1]);
    assert_null(j->shards[2]);

    /* Partition 0's watermark is its oldest open job: job-0 at 100. Finish
     * it and the next one (job-2 at 102) holds the partition. */
    int64_t low = -1;
    for (struct bm_job *k = bm_jobtable_first_open(t); k; k = k->next)
        if (k->partition == 0 && (low < 0 || k->first_offset < low))
            low = k->first_offset;
    assert_int_equal(bm_merge_watermark(&low, 1, 700), 100);
    bm_jobtable_finish(t, j, 10);
    assert_int_equal(j->state, BM_JOB_DONE);
    assert_null(j->shards);
    low = -1;
    for (struct bm_job *k = bm_jobtable_first_open(t); k; k = k->next)
        if (k->partition == 0 && (low < 0 || k->first_offset < low))
            low = k->first_offset;
    assert_int_equal(low, 102);
    /* The finished id is still known (late duplicates are dropped)... */
    assert_non_null(bm_jobtable_find(t, "job-0"));
    /* ...until the window passes or more than done_max are remembered. */
    bm_jobtable_finish(t, bm_jobtable_find(t, "job-1"), 20);
    bm_jobtable_finish(t, bm_jobtable_find(t, "job-2"), 30);
    bm_jobtable_expire(t, 500);
    assert_int_equal(bm_jobtable_done_count(t), 2);
    assert_null(bm_jobtable_find(t, "job-0"));
    bm_jobtable_expire(t, 1025);
    assert_int_equal(bm_jobtable_done_count(t), 1);
    bm_jobtable_expire(t, 5000);
    assert_int_equal(bm_jobtable_done_count(t), 0);
    assert_int_equal(bm_jobtable_open_count(t), 597);
    bm_jobtable_remove(t, bm_jobtable_find(t, "job-599"));
    assert_null(bm_jobtable_find(t, "job-599"));
    assert_non_null(bm_jobtable_find(t, "job-598"));
    bm_jobtable_free(t);
    bm_jobtable_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_order_and_ranks),
        cmocka_unit_test(test_ties_by_subject_id),
        cmocka_unit_test(test_limit_threshold_and_junk),
        cmocka_unit_test(test_repeated_subject_keeps_best),
        cmocka_unit_test(test_order_independent),
        cmocka_unit_test(test_status_rules),
        cmocka_unit_test(test_verified),
        cmocka_unit_test(test_watermark),
        cmocka_unit_test(test_jobtable_watermark_and_done),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
