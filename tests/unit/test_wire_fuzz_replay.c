/* Runs the libFuzzer harnesses of tests/fuzz without libFuzzer: every seed
 * of tests/fuzz/corpus/<harness>/, every truncation of it, and a fixed
 * sequence of byte mutations (a seeded LCG, so runs are reproducible). This
 * keeps the harnesses compiling and their invariants checked in every gcc
 * build; the real fuzzing needs -DBM_FUZZ=ON with clang.
 *
 * The corpus is found next to this file (__FILE__ is absolute in CMake
 * builds) or at $BM_FUZZ_CORPUS. */
#include "testutil.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BM_FUZZ_REPLAY 1
#include "../fuzz/fuzz.h"
#include "../fuzz/fuzz_atrest.c"
#include "../fuzz/fuzz_decode_job.c"
#include "../fuzz/fuzz_envelope.c"
#include "../fuzz/fuzz_template.c"

#define MUTANTS_PER_SEED 300

typedef int harness_fn(const uint8_t *data, size_t size);

static void corpus_dir(char *buf, size_t len, const char *name)
{
    const char *env = getenv("BM_FUZZ_CORPUS");
    if (env != NULL) {
        snprintf(buf, len, "%s/%s", env, name);
        return;
    }
    const char *file = __FILE__;
    const char *slash = strrchr(file, '/');
    int dirlen = slash ? (int)(slash - file) : 1;
    snprintf(buf, len, "%.*s/../fuzz/corpus/%s", dirlen, slash ? file : ".", name);
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

static void test_replay_atrest(void **state)
{
    (void)state;
    assert_true(replay("atrest", bm_fuzz_atrest) > 0);
}

static void test_replay_template(void **state)
{
    (void)state;
    assert_true(replay("template", bm_fuzz_template) > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_replay_envelope),
        cmocka_unit_test(test_replay_decode_job),
        cmocka_unit_test(test_replay_template),
        cmocka_unit_test(test_replay_atrest),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
