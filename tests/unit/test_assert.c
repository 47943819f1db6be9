/* common/assert: BM_ASSERT in a debug build reports the broken
 * precondition (expression, file, line, function) and aborts; a true one
 * costs nothing visible. This file is compiled as a debug build whatever
 * the configuration, so the check runs in every test run; a child process
 * takes the abort. */
#undef NDEBUG
#define _POSIX_C_SOURCE 200809L
#include "testutil.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/assert.h"

static int precondition(int n)
{
    BM_ASSERT(n > 0);
    return n * 2;
}

static void test_true_passes(void **state)
{
    (void)state;
    assert_int_equal(precondition(3), 6);
}

static void test_false_aborts_with_a_message(void **state)
{
    (void)state;
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(fds[1], 2);
        close(fds[0]);
        precondition(0);
        _exit(0); /* not reached when the assertion works */
    }
    close(fds[1]);
    char buf[512] = {0};
    size_t n = 0;
    ssize_t r;
    while (n < sizeof buf - 1 && (r = read(fds[0], buf + n, sizeof buf - 1 - n)) > 0)
        n += (size_t)r;
    close(fds[0]);
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFSIGNALED(st));
    assert_int_equal(WTERMSIG(st), SIGABRT);
    assert_non_null(strstr(buf, "assertion failed: n > 0"));
    assert_non_null(strstr(buf, "test_assert.c"));
    assert_non_null(strstr(buf, "precondition"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_true_passes),
        cmocka_unit_test(test_false_aborts_with_a_message),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
