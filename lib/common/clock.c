/* See clock.h. */
#define _POSIX_C_SOURCE 200809L

#include "common/clock.h"

#include <errno.h>
#include <time.h>

#include "common/err.h"

static struct timespec now(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return ts;
}

int64_t bm_mono_ms(void)
{
    struct timespec ts = now(CLOCK_MONOTONIC);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t bm_mono_us(void)
{
    struct timespec ts = now(CLOCK_MONOTONIC);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

double bm_mono_s(void)
{
    struct timespec ts = now(CLOCK_MONOTONIC);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int64_t bm_wall_ms(void)
{
    struct timespec ts = now(CLOCK_REALTIME);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void bm_sleep_ms(int64_t ms)
{
    if (ms <= 0)
        return;
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    while (clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, &ts) != 0)
        ; /* EINTR: sleep the rest */
}

int bm_cond_init_mono(pthread_cond_t *cv)
{
    pthread_condattr_t a;
    int rc = pthread_condattr_init(&a);
    if (rc != 0)
        return rc == ENOMEM ? BM_ENOMEM : BM_EINVAL;
    rc = pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    if (rc == 0)
        rc = pthread_cond_init(cv, &a);
    pthread_condattr_destroy(&a);
    if (rc != 0)
        return rc == ENOMEM || rc == EAGAIN ? BM_ENOMEM : BM_EINVAL;
    return BM_OK;
}

struct timespec bm_mono_deadline_us(int64_t us_from_now)
{
    struct timespec ts = now(CLOCK_MONOTONIC);
    if (us_from_now < 0)
        us_from_now = 0;
    int64_t ns = ts.tv_nsec + (us_from_now % 1000000) * 1000;
    ts.tv_sec += (time_t)(us_from_now / 1000000 + ns / 1000000000);
    ts.tv_nsec = (long)(ns % 1000000000);
    return ts;
}
