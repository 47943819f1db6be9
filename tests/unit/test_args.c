/* The shared command line of biomatch-coordinator and biomatch-worker. */
#include "testutil.h"

#include "conf/args.h"

static enum bm_args_action run(struct bm_args *a, int argc, const char **argv)
{
    return bm_args_parse(argc, (char **)argv, a);
}

static void test_forms(void **state)
{
    (void)state;
    struct bm_args a;
    const char *none[] = {"prog"};
    assert_int_equal(run(&a, 1, none), BM_ARGS_RUN);
    assert_null(a.config);
    assert_false(a.check);

    const char *sep[] = {"prog", "--config", "/etc/b.yaml", "--check-config"};
    assert_int_equal(run(&a, 4, sep), BM_ARGS_RUN);
    assert_string_equal(a.config, "/etc/b.yaml");
    assert_true(a.check);

    const char *eq[] = {"prog", "--config=/tmp/x.yaml"};
    assert_int_equal(run(&a, 2, eq), BM_ARGS_RUN);
    assert_string_equal(a.config, "/tmp/x.yaml");

    const char *help[] = {"prog", "-h", "--bogus"};
    assert_int_equal(run(&a, 3, help), BM_ARGS_HELP);
    const char *ver[] = {"prog", "--version"};
    assert_int_equal(run(&a, 2, ver), BM_ARGS_VERSION);
}

static void test_refused(void **state)
{
    (void)state;
    struct bm_args a;
    const char *unknown[] = {"prog", "--refresh-ms", "5"};
    assert_int_equal(run(&a, 3, unknown), BM_ARGS_BAD);
    assert_string_equal(a.bad, "--refresh-ms");
    const char *dangling[] = {"prog", "--config"};
    assert_int_equal(run(&a, 2, dangling), BM_ARGS_BAD);
    assert_string_equal(a.bad, "--config");
    const char *empty[] = {"prog", "--config="};
    assert_int_equal(run(&a, 2, empty), BM_ARGS_BAD);
}

static FILE *usage_to;
static int usage_calls;

static void usage(FILE *f)
{
    usage_to = f;
    usage_calls++;
}

/* What a main does with each action: exit codes 0 / 0 / 2, usage on the
 * right stream, -1 to go on running. */
static void test_main_exit_codes(void **state)
{
    (void)state;
    struct bm_args a;
    const char *help[] = {"prog", "--help"};
    usage_calls = 0;
    assert_int_equal(bm_args_main(2, (char **)help, "prog", "1.0", usage, &a), 0);
    assert_int_equal(usage_calls, 1);
    assert_ptr_equal(usage_to, stdout);
    const char *bad[] = {"prog", "--nope"};
    assert_int_equal(bm_args_main(2, (char **)bad, "prog", "1.0", usage, &a), 2);
    assert_int_equal(usage_calls, 2);
    assert_ptr_equal(usage_to, stderr);
    const char *ver[] = {"prog", "--version"};
    assert_int_equal(bm_args_main(2, (char **)ver, "prog", "1.0", usage, &a), 0);
    assert_int_equal(usage_calls, 2);
    const char *go[] = {"prog", "--config=/x.yaml"};
    assert_int_equal(bm_args_main(2, (char **)go, "prog", "1.0", usage, &a), -1);
    assert_string_equal(a.config, "/x.yaml");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_forms),
        cmocka_unit_test(test_refused),
        cmocka_unit_test(test_main_exit_codes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
