/* See testutil.h. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

const char *bm_test_env(const char *name)
{
    const char *v = getenv(name);
    if (v == NULL || *v == '\0')
        fail_msg("environment variable %s is not set: run integration tests "
                 "through ctest (the bm_services fixture sets it)", name);
    return v;
}

void bm_test_unique(char *buf, size_t len, const char *prefix)
{
    static unsigned counter;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    snprintf(buf, len, "%s.%ld.%u.%lx", prefix, (long)getpid(), ++counter,
             (unsigned long)(ts.tv_nsec ^ ts.tv_sec));
}

int64_t bm_test_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
