/* Unit tests of the subject table (lib/store/subjects.h): the FNV-1a 64
 * subject key against published test vectors, round trips, collision
 * detection, and the memory bound per subject. */
#include "testutil.h"

#include <stdio.h>
#include <string.h>

#include "store/subjects.h"

static void test_key_vectors(void **state)
{
    (void)state;
    /* Published FNV-1a 64 vectors; the key is part of the storage format. */
    assert_true(bm_subjects_key("", 0) == UINT64_C(0xcbf29ce484222325));
    assert_true(bm_subjects_key("a", 1) == UINT64_C(0xaf63dc4c8601ec8c));
    assert_true(bm_subjects_key("foobar", 6) == UINT64_C(0x85944171f73967e8));
}

static void test_round_trip(void **state)
{
    (void)state;
    char err[256];
    struct bm_subjects *t = bm_subjects_new(0, err, sizeof err);
    assert_non_null(t);
    enum { N = 50000 };
    char id[64];
    for (int i = 0; i < N; i++) {
        int n = snprintf(id, sizeof id, "subject-%d", i);
        uint64_t key = 0;
        assert_int_equal(bm_subjects_put(t, id, (size_t)n, &key, err, sizeof err), BM_OK);
        assert_true(key == bm_subjects_key(id, (size_t)n));
    }
    assert_int_equal(bm_subjects_count(t), N);
    for (int i = 0; i < N; i++) {
        int n = snprintf(id, sizeof id, "subject-%d", i);
        size_t len = 0;
        const char *got = bm_subjects_get(t, bm_subjects_key(id, (size_t)n), &len);
        assert_non_null(got);
        assert_int_equal(len, (size_t)n);
        assert_memory_equal(got, id, len);
    }
    /* The same string again is fine and changes nothing. */
    assert_int_equal(bm_subjects_put(t, "subject-7", 9, NULL, err, sizeof err), BM_OK);
    assert_int_equal(bm_subjects_count(t), N);
    assert_null(bm_subjects_get(t, bm_subjects_key("nobody", 6), NULL));
    bm_subjects_free(t);
    bm_subjects_free(NULL);
}

static void test_collision(void **state)
{
    (void)state;
    char err[256];
    struct bm_subjects *t = bm_subjects_new(4, err, sizeof err);
    assert_non_null(t);
    uint64_t key = bm_subjects_key("alice", 5);
    assert_int_equal(bm_subjects_put(t, "alice", 5, NULL, err, sizeof err), BM_OK);
    /* "mallory" forced onto alice's key: a 64-bit collision. */
    assert_int_equal(bm_subjects_put_key(t, key, "mallory", 7, err, sizeof err),
                     BM_ECONFLICT);
    assert_non_null(strstr(err, "collision"));
    size_t len = 0;
    const char *got = bm_subjects_get(t, key, &len);
    assert_int_equal(len, 5);
    assert_memory_equal(got, "alice", 5);
    assert_int_equal(bm_subjects_count(t), 1);
    /* A prefix of the stored id is a different string too. */
    assert_int_equal(bm_subjects_put_key(t, key, "alic", 4, err, sizeof err), BM_ECONFLICT);
    /* Key 0 and UINT64_MAX are ordinary keys. */
    assert_int_equal(bm_subjects_put_key(t, 0, "zero", 4, err, sizeof err), BM_OK);
    assert_int_equal(bm_subjects_put_key(t, UINT64_MAX, "max", 3, err, sizeof err), BM_OK);
    assert_non_null(bm_subjects_get(t, 0, NULL));
    assert_non_null(bm_subjects_get(t, UINT64_MAX, NULL));
    bm_subjects_free(t);
}

static void test_bad_lengths(void **state)
{
    (void)state;
    char err[256];
    char big[BM_SUBJECT_ID_MAX + 1];
    memset(big, 'x', sizeof big);
    struct bm_subjects *t = bm_subjects_new(0, err, sizeof err);
    assert_non_null(t);
    assert_int_equal(bm_subjects_put(t, "", 0, NULL, err, sizeof err), BM_EINVAL);
    assert_int_equal(bm_subjects_put(t, big, sizeof big, NULL, err, sizeof err), BM_EINVAL);
    assert_int_equal(bm_subjects_put(t, big, BM_SUBJECT_ID_MAX, NULL, err, sizeof err), BM_OK);
    assert_int_equal(bm_subjects_count(t), 1);
    bm_subjects_free(t);
}

static void test_memory_bound(void **state)
{
    (void)state;
    char err[256];
    enum { N = 100000 };
    char id[64];
    /* The way the segment decoder fills it: reserve, then put. */
    struct bm_subjects *t = bm_subjects_new(0, err, sizeof err);
    assert_non_null(t);
    size_t bytes = 0;
    for (int i = 0; i < N; i++)
        bytes += (size_t)snprintf(id, sizeof id, "P-%08d", i);
    assert_int_equal(bm_subjects_reserve(t, N, bytes, err, sizeof err), BM_OK);
    for (int i = 0; i < N; i++) {
        int n = snprintf(id, sizeof id, "P-%08d", i);
        assert_int_equal(bm_subjects_put(t, id, (size_t)n, NULL, err, sizeof err), BM_OK);
    }
    size_t overhead = bm_subjects_memory(t) - bytes;
    print_message("subject table: %.1f bytes/subject overhead (reserved)\n",
                  (double)overhead / N);
    assert_true(overhead < (size_t)40 * N);
    bm_subjects_free(t);

    /* Grown one put at a time it is looser but still bounded. */
    t = bm_subjects_new(0, err, sizeof err);
    assert_non_null(t);
    for (int i = 0; i < N; i++) {
        int n = snprintf(id, sizeof id, "P-%08d", i);
        assert_int_equal(bm_subjects_put(t, id, (size_t)n, NULL, err, sizeof err), BM_OK);
    }
    overhead = bm_subjects_memory(t) - bytes;
    print_message("subject table: %.1f bytes/subject overhead (grown)\n",
                  (double)overhead / N);
    assert_true(overhead < (size_t)64 * N);
    bm_subjects_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_key_vectors),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_collision),
        cmocka_unit_test(test_bad_lengths),
        cmocka_unit_test(test_memory_bound),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
