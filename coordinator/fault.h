/* Fault hooks of the test build: ways to make a coordinator misbehave on
 * purpose, so the aggregator's bound on poison jobs can be tested against
 * a real process.
 *
 * They exist only in build/tests/biomatch-coordinator-fault, a second build
 * of the coordinator compiled with BM_FAULT_HOOKS (coordinator/CMakeLists.txt);
 * it takes the same command line and configuration as
 * build/bin/biomatch-coordinator and is never installed or shipped. In the
 * normal coordinator every hook below is an empty inline function.
 *
 * How to trigger them (test build only):
 *  - a job whose job_id starts with "bm-fault-agg-abort" makes the
 *    aggregator abort() (SIGABRT) as it starts producing the job's result,
 *    after the attempt was counted: a crash in the merge. The partials are
 *    replayed on restart, so it crashes again, coordinator.max_job_attempts
 *    times, after which the job is answered ERROR/POISON without merging. */
#ifndef BM_COORD_FAULT_H
#define BM_COORD_FAULT_H

#ifdef BM_FAULT_HOOKS
/* Called by the aggregator as it starts producing the result of 'job_id'. */
void bm_coord_fault_on_emit(const char *job_id);
#else
static inline void bm_coord_fault_on_emit(const char *job_id)
{
    (void)job_id;
}
#endif

#endif /* BM_COORD_FAULT_H */
