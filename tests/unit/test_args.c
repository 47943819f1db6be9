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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_forms),
        cmocka_unit_test(test_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
