/* Fault hooks of the test build: ways to make a worker misbehave on
 * purpose, so the quarantine of poison tasks and the fault matrix can be
 * tested against a real process.
 *
 * They exist only in build/tests/biomatch-worker-fault, a second build of
 * the worker compiled with BM_FAULT_HOOKS (worker/CMakeLists.txt); it takes
 * the same command line and configuration as build/bin/biomatch-worker and
 * is never installed or shipped. In the normal worker every hook below is
 * an empty inline function.
 *
 * How to trigger them (test build only):
 *  - a task whose job_id starts with "bm-fault-abort" makes the worker
 *    abort() (SIGABRT, core dump if enabled) when it starts scoring it: a
 *    crash in scoring. Submit such a MatchJob to jobs (or a MatchTask to
 *    tasks.<gallery>); every shard's task carries the job id, so every
 *    worker that scores it crashes, worker.max_task_attempts times per
 *    shard, after which the shard answers POISON and the job ends ERROR
 *    (every shard quarantined). "bm-fault-abort-s<n>" followed by anything
 *    (e.g. "bm-fault-abort-s1-job42") aborts on shard n's task only: the
 *    job then ends PARTIAL with POISON naming shard n.
 *  - a task whose job_id starts with "bm-fault-hang" (or
 *    "bm-fault-hang-s<n>") makes the scoring thread sleep forever when it
 *    starts scoring it: a hang, which the worker's watchdog
 *    (worker.max_scoring_ms) turns into an exit, counted as an attempt.
 *  - the environment variable BIOMATCH_FAULT_CLOCK_OFFSET_MS (an integer,
 *    may be negative) shifts the worker's wall clock by that many ms, as
 *    if its host's clock were off: deadline checks and the clock skew
 *    estimate use the shifted clock. */
#ifndef BM_WORKER_FAULT_H
#define BM_WORKER_FAULT_H

#include <stdint.h>

#include "biomatch.pb-c.h"

#ifdef BM_FAULT_HOOKS
/* Called by the scoring thread as it starts scoring 't'. */
void wk_fault_on_score(const Biomatch__V1__MatchTask *t);
/* The configured wall clock offset in ms (0 when unset). */
int64_t wk_fault_clock_offset_ms(void);
#else
static inline void wk_fault_on_score(const Biomatch__V1__MatchTask *t)
{
    (void)t;
}
static inline int64_t wk_fault_clock_offset_ms(void)
{
    return 0;
}
#endif

#endif /* BM_WORKER_FAULT_H */
