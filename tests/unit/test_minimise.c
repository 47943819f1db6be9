/* minimise: what each detail level, rounding and the internal-fields
 * switch leave of a result (coordinator/minimise.c). */
#include "testutil.h"

#include "minimise.h"

#include <string.h>

struct fixture {
    Biomatch__V1__MatchResult r;
    Biomatch__V1__Timings t;
    Biomatch__V1__Candidate c[2];
    Biomatch__V1__Candidate *cp[2];
};

static void fill(struct fixture *f)
{
    biomatch__v1__match_result__init(&f->r);
    biomatch__v1__timings__init(&f->t);
    for (int i = 0; i < 2; i++) {
        biomatch__v1__candidate__init(&f->c[i]);
        f->c[i].subject_id = (char *)(i ? "b" : "a");
        f->c[i].rank = (uint32_t)i + 1;
        f->c[i].shard = 3;
        f->cp[i] = &f->c[i];
    }
    f->c[0].score = 0.87654f;
    f->c[1].score = -0.25f;
    f->r.candidates = f->cp;
    f->r.n_candidates = 2;
    f->r.comparisons = 1000;
    f->r.gallery_version = 9;
    f->t.max_queue_us = 5;
    f->t.max_scoring_us = 6;
    f->t.completed_unix_ms = 42;
    f->r.timings = &f->t;
}

static void test_levels(void **state)
{
    (void)state;
    struct fixture f;
    struct bm_policy_results rules = {0};
    rules.score_decimals = -1;

    /* ids and scores, internal fields allowed: untouched but for hit. */
    fill(&f);
    rules.internal_fields = true;
    bm_minimise_result(&f.r, &rules);
    assert_true(f.r.hit);
    assert_int_equal(f.r.n_candidates, 2);
    assert_true(f.c[0].score == 0.87654f);
    assert_int_equal(f.c[0].shard, 3);
    assert_int_equal(f.r.comparisons, 1000);

    /* Internal fields left out; the client's own times stay. */
    fill(&f);
    rules.internal_fields = false;
    bm_minimise_result(&f.r, &rules);
    assert_int_equal(f.r.comparisons, 0);
    assert_int_equal(f.r.gallery_version, 0);
    assert_int_equal(f.c[0].shard, 0);
    assert_int_equal(f.c[1].shard, 0);
    assert_int_equal(f.t.max_queue_us, 0);
    assert_int_equal(f.t.max_scoring_us, 0);
    assert_int_equal(f.t.completed_unix_ms, 42);

    /* Rounding, both signs, and 0 decimals. */
    fill(&f);
    rules.score_decimals = 2;
    bm_minimise_result(&f.r, &rules);
    assert_true(f.c[0].score == 0.88f);
    assert_true(f.c[1].score == -0.25f);
    fill(&f);
    rules.score_decimals = 0;
    bm_minimise_result(&f.r, &rules);
    assert_true(f.c[0].score == 1.0f);
    assert_true(f.c[1].score == 0.0f);

    /* ids: no scores, ranks and ids stay. */
    fill(&f);
    rules.detail = BM_POLICY_DETAIL_IDS;
    bm_minimise_result(&f.r, &rules);
    assert_int_equal(f.r.n_candidates, 2);
    assert_true(f.c[0].score == 0.0f && f.c[1].score == 0.0f);
    assert_int_equal(f.c[1].rank, 2);
    assert_string_equal(f.c[1].subject_id, "b");

    /* hit_nohit: only whether there was one. */
    fill(&f);
    rules.detail = BM_POLICY_DETAIL_HIT_NOHIT;
    bm_minimise_result(&f.r, &rules);
    assert_true(f.r.hit);
    assert_int_equal(f.r.n_candidates, 0);
    fill(&f);
    f.r.n_candidates = 0;
    bm_minimise_result(&f.r, &rules);
    assert_false(f.r.hit);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_levels),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
