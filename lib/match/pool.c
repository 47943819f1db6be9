/* A persistent pthread pool for parallel-for jobs.
 *
 * One job at a time: bm_pool_run() takes 'run_lock' for its whole duration,
 * publishes the job under 'lock' with a new generation number, and the
 * caller and the workers claim task indexes from an atomic counter until
 * they run out. Invariant: 'pending' counts workers that have not yet
 * finished the current generation; the caller returns only when it is zero,
 * so no worker ever touches a job's 'fn'/'arg' after bm_pool_run returns. */
#include "match/pool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#include "common/err.h"

#define POOL_MAX 256

struct bm_pool {
    unsigned size;               /* participants: workers + caller */
    pthread_t *threads;          /* size - 1 workers */
    unsigned started;            /* workers actually created */
    pthread_mutex_t run_lock;    /* serialises bm_pool_run callers */
    pthread_mutex_t lock;        /* protects the fields below */
    pthread_cond_t wake;         /* workers wait for a new generation */
    pthread_cond_t done;         /* caller waits for pending == 0 */
    unsigned long generation;    /* bumped per job */
    unsigned pending;            /* workers still in the current job */
    int stop;                    /* workers exit */
    bm_pool_task_fn fn;          /* current job */
    void *arg;
    size_t ntasks;
    atomic_size_t next;          /* next unclaimed task */
};

struct worker_arg {
    struct bm_pool *pool;
    unsigned index;
};

static void drain(struct bm_pool *p, bm_pool_task_fn fn, void *arg, size_t ntasks,
                  unsigned thread)
{
    for (;;) {
        size_t t = atomic_fetch_add_explicit(&p->next, 1, memory_order_relaxed);
        if (t >= ntasks)
            break;
        fn(arg, t, thread);
    }
}

static void *worker_main(void *vp)
{
    struct worker_arg *wa = vp;
    struct bm_pool *p = wa->pool;
    unsigned index = wa->index;
    free(wa);
    unsigned long seen = 0;
    pthread_mutex_lock(&p->lock);
    for (;;) {
        while (!p->stop && p->generation == seen)
            pthread_cond_wait(&p->wake, &p->lock);
        if (p->stop)
            break;
        seen = p->generation;
        bm_pool_task_fn fn = p->fn;
        void *arg = p->arg;
        size_t ntasks = p->ntasks;
        pthread_mutex_unlock(&p->lock);
        drain(p, fn, arg, ntasks, index);
        pthread_mutex_lock(&p->lock);
        if (--p->pending == 0)
            pthread_cond_signal(&p->done);
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

struct bm_pool *bm_pool_new(unsigned nthreads, char *err, size_t errlen)
{
    if (nthreads == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        nthreads = n > 0 ? (unsigned)n : 1;
    }
    if (nthreads > POOL_MAX)
        nthreads = POOL_MAX;
    struct bm_pool *p = calloc(1, sizeof *p);
    if (p == NULL) {
        bm_seterr(err, errlen, BM_ENOMEM, "pool: out of memory");
        return NULL;
    }
    p->size = nthreads;
    pthread_mutex_init(&p->run_lock, NULL);
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done, NULL);
    atomic_init(&p->next, 0);
    if (nthreads > 1) {
        p->threads = calloc(nthreads - 1, sizeof *p->threads);
        if (p->threads == NULL) {
            bm_seterr(err, errlen, BM_ENOMEM, "pool: out of memory");
            bm_pool_free(p);
            return NULL;
        }
    }
    for (unsigned i = 0; i + 1 < nthreads; i++) {
        struct worker_arg *wa = malloc(sizeof *wa);
        if (wa == NULL) {
            bm_seterr(err, errlen, BM_ENOMEM, "pool: out of memory");
            bm_pool_free(p);
            return NULL;
        }
        wa->pool = p;
        wa->index = i + 1;
        if (pthread_create(&p->threads[i], NULL, worker_main, wa) != 0) {
            free(wa);
            bm_seterr(err, errlen, BM_ENOMEM, "pool: cannot create thread %u", i + 1);
            bm_pool_free(p);
            return NULL;
        }
        p->started++;
    }
    return p;
}

void bm_pool_free(struct bm_pool *p)
{
    if (p == NULL)
        return;
    pthread_mutex_lock(&p->lock);
    p->stop = 1;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
    for (unsigned i = 0; i < p->started; i++)
        pthread_join(p->threads[i], NULL);
    free(p->threads);
    pthread_cond_destroy(&p->done);
    pthread_cond_destroy(&p->wake);
    pthread_mutex_destroy(&p->lock);
    pthread_mutex_destroy(&p->run_lock);
    free(p);
}

unsigned bm_pool_size(const struct bm_pool *p)
{
    return p == NULL ? 1 : p->size;
}

int bm_pool_run(struct bm_pool *p, size_t ntasks, bm_pool_task_fn fn, void *arg)
{
    if (fn == NULL)
        return BM_EINVAL;
    if (ntasks == 0)
        return BM_OK;
    if (p == NULL || p->started == 0 || ntasks == 1) {
        for (size_t t = 0; t < ntasks; t++)
            fn(arg, t, 0);
        return BM_OK;
    }
    pthread_mutex_lock(&p->run_lock);
    pthread_mutex_lock(&p->lock);
    p->fn = fn;
    p->arg = arg;
    p->ntasks = ntasks;
    atomic_store(&p->next, 0);
    p->pending = p->started;
    p->generation++;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);

    drain(p, fn, arg, ntasks, 0);

    pthread_mutex_lock(&p->lock);
    while (p->pending > 0)
        pthread_cond_wait(&p->done, &p->lock);
    pthread_mutex_unlock(&p->lock);
    pthread_mutex_unlock(&p->run_lock);
    return BM_OK;
}
