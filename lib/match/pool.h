/* A persistent pthread pool running parallel-for jobs for the matcher.
 *
 * The pool owns nthreads - 1 worker threads; the thread calling
 * bm_pool_run() is the remaining participant, so a pool of size 1 has no
 * workers and runs everything inline. Tasks of one job are handed out by an
 * atomic counter, so uneven tasks balance themselves. Invariant: at most one
 * job is in flight; concurrent callers of bm_pool_run() are serialised by a
 * mutex (a second caller waits until the first job has finished). */
#ifndef BM_POOL_H
#define BM_POOL_H

#include <stddef.h>

struct bm_pool;

/* Function run once per task. 'task' is in [0, ntasks); 'thread' is in
 * [0, bm_pool_size()) and identifies the executing participant (0 is the
 * calling thread), so per-thread scratch can be indexed by it. */
typedef void (*bm_pool_task_fn)(void *arg, size_t task, unsigned thread);

/* A pool of 'nthreads' participants (0 means the number of online CPUs;
 * clamped to 256). Returns NULL on failure with the reason in err.
 * Ownership: the caller owns the pool; free it with bm_pool_free(). */
struct bm_pool *bm_pool_new(unsigned nthreads, char *err, size_t errlen);

/* Stop and join the workers, then free. No job may be running. Accepts NULL. */
void bm_pool_free(struct bm_pool *p);

/* Number of participants (workers + the caller), >= 1. */
unsigned bm_pool_size(const struct bm_pool *p);

/* Run fn(arg, task, thread) for every task in [0, ntasks) and return when
 * all have finished. The calling thread participates as thread 0. A NULL
 * pool runs every task inline on the caller as thread 0. Returns BM_OK, or
 * BM_EINVAL when fn is NULL. Must not be called from inside a task of the
 * same pool (it would wait for itself). Thread: any; callers are serialised. */
int bm_pool_run(struct bm_pool *p, size_t ntasks, bm_pool_task_fn fn, void *arg);

#endif /* BM_POOL_H */
