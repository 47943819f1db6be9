/* Issue 4 "Done when": a coordinator killed with SIGKILL while it is
 * sealing segments, and restarted, ends with no duplicate and no missing
 * subject. Small segments (64 KiB, 100 ms) keep the builder sealing and
 * publishing the whole time the kills land; each restart resumes from the
 * manifests' log_offset, and a re-sealed segment overwrites its orphan.
 * The check is strict: the live view holds every subject exactly once, in
 * its own shard, with the exact count, and once compaction has run no
 * referenced segment holds a second (shadowed) row of any subject. */
#include "test_gallery_util.h"

#define N 30000
#define SHARDS 4

static void test_sigkill_during_sealing(void **state)
{
    (void)state;
    struct gt g;
    gt_setup(&g, SHARDS, 64 << 10, 100);
    gt_start(&g);
    char id[64];
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof id, "crash-%05d", i);
        gt_enroll(&g, g.gallery, id, BIOMATCH__V1__ENROLL_REQUEST__OP__OP_UPSERT, (uint64_t)i,
                  0, NULL);
    }
    gt_flush(&g);

    /* Kill at increasing progress, while seals are in flight. */
    const long marks[] = {2000, 9000, 17000};
    for (size_t k = 0; k < sizeof marks / sizeof marks[0]; k++) {
        long long end = bm_test_now_ms() + 90000;
        long have = -1;
        while (bm_test_now_ms() < end) {
            have = gt_total_subjects(&g);
            if (have >= marks[k])
                break;
            gt_sleep_ms(20);
        }
        assert_true(have >= marks[k]);
        assert_int_equal(gt_stop(&g, SIGKILL), 128 + SIGKILL);
        gt_start(&g);
    }
    gt_wait_total(&g, N, 120000);
    /* Intake is at-least-once: a killed intake re-produces its last batch,
     * so a subject may have a second, identical row in a newer segment (it
     * shadows the older one; workers see the subject once). Compaction
     * then removes every shadowed row: wait for it, then demand exactly
     * one row per subject. */
    long long end = bm_test_now_ms() + 60000;
    int clean = 0;
    while (!clean && bm_test_now_ms() < end) {
        clean = 1;
        for (uint32_t s = 0; s < SHARDS && clean; s++) {
            struct gt_view v;
            if (gt_view_read(&g, s, &v) != 0 || v.copies != 0 || v.ntombstones != 0)
                clean = 0;
            gt_view_free(&v);
        }
        if (!clean)
            gt_sleep_ms(250);
    }
    assert_true(clean);

    size_t total = 0;
    for (uint32_t s = 0; s < SHARDS; s++) {
        struct gt_view v;
        assert_int_equal(gt_view_read(&g, s, &v), 0);
        assert_int_equal(v.copies, 0);
        assert_int_equal(v.ntombstones, 0);
        assert_int_equal(v.subjects, v.n);
        for (size_t r = 0; r < v.n; r++) {
            assert_int_equal(bm_shard_of(v.rows[r].id, strlen(v.rows[r].id), SHARDS), s);
            if (r > 0)
                assert_true(strcmp(v.rows[r - 1].id, v.rows[r].id) < 0);
        }
        total += v.n;
        gt_view_free(&v);
    }
    assert_int_equal(total, N);
    assert_int_equal(gt_stop(&g, SIGTERM), 0);
    gt_teardown(&g);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sigkill_during_sealing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
