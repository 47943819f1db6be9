/* Runs the libFuzzer harnesses of tests/fuzz without libFuzzer: every seed
 * of tests/fuzz/corpus/<harness>/, every truncation of it, and a fixed
 * sequence of byte mutations (a seeded LCG, so runs are reproducible). This
 * keeps the harnesses compiling and their invariants checked in every gcc
 * build; the real fuzzing needs -DBM_FUZZ=ON with clang.
 *
 * The harness files are compiled into this test by tests/CMakeLists.txt
 * (with BM_FUZZ_REPLAY defined, so they define no LLVMFuzzerTestOneInput).
 * The corpus is BM_FUZZ_CORPUS_DIR (set by CMake) or $BM_FUZZ_CORPUS. */
#include "testutil.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../fuzz/fuzz.h"

#define MUTANTS_PER_SEED 300

typedef int harness_fn(const uint8_t *data, size_t size);

static void corpus_dir(char *buf, size_t len, const char *name)
{
    const char *env = getenv("BM_FUZZ_CORPUS");
    if (env != NULL) {
        snprintf(buf, len, "%s/%s", env, name);
        return;
    }
    snprintf(buf, len, "%s/%s", BM_FUZZ_CORPUS_DIR, name);
}

static uint8_t *read_file(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    uint8_t *b = malloc(1 << 20);
    assert_non_null(b);
    *n = fread(b, 1, 1 << 20, f);
    fclose(f);
    return b;
}

/* Run one harness over its seeds, their truncations and mutants. Returns
 * the number of seeds, which must be > 0 for the test to mean anything. */
static size_t replay(const char *name, harness_fn *fn)
{
    char dir[1024];
    corpus_dir(dir, sizeof dir, name);
    DIR *d = opendir(dir);
    if (d == NULL)
        fail_msg("no corpus at %s", dir);
    size_t seeds = 0;
    uint32_t lcg = 12345;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        char path[2048];
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        size_t n;
        uint8_t *seed = read_file(path, &n);
        seeds++;
        /* Each input in its own exact-size allocation, so ASan sees any
         * read past the end. */
        for (size_t len = 0; len <= n; len++) {
            uint8_t *in = malloc(len ? len : 1);
            if (len)
                memcpy(in, seed, len);
            fn(in, len);
            free(in);
        }
        for (int m = 0; m < MUTANTS_PER_SEED && n > 0; m++) {
            uint8_t *in = malloc(n);
            memcpy(in, seed, n);
            int edits = 1 + m % 4;
            for (int e = 0; e < edits; e++) {
                lcg = lcg * 1664525u + 1013904223u;
                size_t at = (lcg >> 8) % n;
                lcg = lcg * 1664525u + 1013904223u;
                uint8_t v = (uint8_t)(lcg >> 24);
                /* Mix random bytes with the values parsers care about. */
                static const uint8_t special[] = {0x00, 0x7f, 0x80, 0xff, 0x7e, 0x7c, 0x01};
                in[at] = (m & 1) ? v : special[v % sizeof special];
            }
            fn(in, n);
            free(in);
        }
        free(seed);
    }
    closedir(d);
    return seeds;
}

static void test_replay_envelope(void **state)
{
    (void)state;
    assert_true(replay("envelope", bm_fuzz_envelope) > 0);
}

static void test_replay_decode_job(void **state)
{
    (void)state;
    assert_true(replay("decode_job", bm_fuzz_decode_job) > 0);
}

static void test_replay_template(void **state)
{
    (void)state;
    assert_true(replay("template", bm_fuzz_template) > 0);
}

static void test_replay_atrest(void **state)
{
    (void)state;
    assert_true(replay("atrest", bm_fuzz_atrest) > 0);
}

static void test_replay_task(void **state)
{
    (void)state;
    assert_true(replay("task", bm_fuzz_task) > 0);
}

static void test_replay_partial(void **state)
{
    (void)state;
    assert_true(replay("partial", bm_fuzz_partial) > 0);
}

static void test_replay_enroll(void **state)
{
    (void)state;
    assert_true(replay("enroll", bm_fuzz_enroll) > 0);
}

static void test_replay_sig_header(void **state)
{
    (void)state;
    assert_true(replay("sig_header", bm_fuzz_sig_header) > 0);
}

static void test_replay_resp(void **state)
{
    (void)state;
    assert_true(replay("resp", bm_fuzz_resp) > 0);
}

static void test_replay_segment(void **state)
{
    (void)state;
    assert_true(replay("segment", bm_fuzz_segment) > 0);
}

static void test_replay_manifest(void **state)
{
    (void)state;
    assert_true(replay("manifest", bm_fuzz_manifest) > 0);
}

static void test_replay_policy(void **state)
{
    (void)state;
    assert_true(replay("policy", bm_fuzz_policy) > 0);
}

static void test_replay_config(void **state)
{
    (void)state;
    assert_true(replay("config", bm_fuzz_config) > 0);
}

static void test_replay_audit(void **state)
{
    (void)state;
    assert_true(replay("audit", bm_fuzz_audit) > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_replay_envelope),
        cmocka_unit_test(test_replay_decode_job),
        cmocka_unit_test(test_replay_template),
        cmocka_unit_test(test_replay_atrest),
        cmocka_unit_test(test_replay_task),
        cmocka_unit_test(test_replay_partial),
        cmocka_unit_test(test_replay_enroll),
        cmocka_unit_test(test_replay_sig_header),
        cmocka_unit_test(test_replay_resp),
        cmocka_unit_test(test_replay_segment),
        cmocka_unit_test(test_replay_manifest),
        cmocka_unit_test(test_replay_policy),
        cmocka_unit_test(test_replay_config),
        cmocka_unit_test(test_replay_audit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
