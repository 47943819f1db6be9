/* Plain-pthread parallel-for used by the benchmark (see par.h). Threads are
 * created per call: every caller does at least tens of milliseconds of work,
 * so the ~50 us of thread start-up is noise, and no state outlives a call. */
#include "par.h"

#include <pthread.h>
#include <unistd.h>

#define BB_MAX_THREADS 256

struct job {
    bb_range_fn fn;
    void *arg;
    size_t begin, end;
    unsigned thread;
};

static void *run_job(void *p)
{
    struct job *j = p;
    j->fn(j->arg, j->begin, j->end, j->thread);
    return NULL;
}

int bb_parallel(unsigned nthreads, size_t n, bb_range_fn fn, void *arg)
{
    struct job jobs[BB_MAX_THREADS];
    pthread_t tids[BB_MAX_THREADS];
    int started[BB_MAX_THREADS] = {0};
    int rc = 0;

    if (nthreads < 1)
        nthreads = 1;
    if (nthreads > BB_MAX_THREADS)
        nthreads = BB_MAX_THREADS;
    for (unsigned t = 0; t < nthreads; t++) {
        jobs[t].fn = fn;
        jobs[t].arg = arg;
        jobs[t].begin = n * t / nthreads;
        jobs[t].end = n * (t + 1) / nthreads;
        jobs[t].thread = t;
    }
    for (unsigned t = 1; t < nthreads; t++) {
        if (pthread_create(&tids[t], NULL, run_job, &jobs[t]) == 0)
            started[t] = 1;
        else
            rc = -1;
    }
    run_job(&jobs[0]);
    for (unsigned t = 1; t < nthreads; t++) {
        if (started[t])
            pthread_join(tids[t], NULL);
        else
            run_job(&jobs[t]);
    }
    return rc;
}


unsigned bb_ncpus(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1u : (unsigned)n;
}
