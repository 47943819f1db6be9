/* common/clock: condition variables whose timed waits run on the monotonic
 * clock. A deadline from bm_mono_deadline_us() is a small number (time
 * since boot); on a condition measured on CLOCK_REALTIME it would lie
 * decades in the past and the wait would return at once. So a wait that
 * lasts at least its requested span proves the clock. Only a lower bound
 * is checked, which no machine can undercut however slow it is. */
#define _POSIX_C_SOURCE 200809L
#include "testutil.h"

#include <errno.h>
#include <pthread.h>

#include "common/clock.h"
#include "common/err.h"

static void test_timed_wait_is_monotonic(void **state)
{
    (void)state;
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t cv;
    assert_int_equal(bm_cond_init_mono(&cv), BM_OK);
    pthread_mutex_lock(&mu);
    int64_t start = bm_mono_us();
    struct timespec ts = bm_mono_deadline_us(200000);
    int rc = 0;
    /* Spurious wake-ups are allowed: wait until the deadline is reported. */
    while ((rc = pthread_cond_timedwait(&cv, &mu, &ts)) == 0)
        ;
    int64_t waited = bm_mono_us() - start;
    pthread_mutex_unlock(&mu);
    pthread_cond_destroy(&cv);
    assert_int_equal(rc, ETIMEDOUT);
    if (waited < 200000)
        fail_msg("the wait ended after %lld us, before its 200000 us deadline",
                 (long long)waited);
}

static void test_deadline_arithmetic(void **state)
{
    (void)state;
    struct timespec a = bm_mono_deadline_us(0);
    struct timespec b = bm_mono_deadline_us(2500000); /* carries into tv_sec */
    assert_true(b.tv_nsec >= 0 && b.tv_nsec < 1000000000);
    int64_t diff = ((int64_t)b.tv_sec - a.tv_sec) * 1000000 + (b.tv_nsec - a.tv_nsec) / 1000;
    assert_true(diff >= 2500000);
    struct timespec c = bm_mono_deadline_us(-5); /* "now" */
    assert_true(c.tv_nsec >= 0 && c.tv_nsec < 1000000000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_timed_wait_is_monotonic),
        cmocka_unit_test(test_deadline_arithmetic),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
