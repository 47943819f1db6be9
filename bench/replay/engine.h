/* The replay engine: sends a replay file's jobs open-loop on a schedule and
 * matches the results that come back, one "step" (a rate or speed-up for a
 * duration) at a time. run.c builds `run`, `run --max` and `sweep` on it.
 *
 * Latency is measured from each job's *scheduled* send time, not from the
 * moment it was actually produced: a sender that falls behind a slow
 * cluster therefore charges the delay to the cluster instead of hiding it
 * (coordinated omission).
 *
 * Thread: an engine is driven from one thread; it owns one internal thread
 * that consumes results and takes the engine's mutex for every update. */
#ifndef BM_REPLAY_ENGINE_H
#define BM_REPLAY_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "hist.h"
#include "replay.h"
#include "replayfile.h"

struct rp_engine_opts {
    const struct bm_bus_conf *bus;       /* the producer's */
    const struct bm_bus_conf *bus_cons;  /* the results consumer's */
    const char *jobs_topic;       /* where jobs go */
    const char *results_topic;    /* where their results are read */
    int keep_ids;                 /* send the recorded bytes verbatim (ids unchanged) */
    double accept;                /* false-match score floor for accuracy */
    double grace_s;               /* wait for late results after the last send */
    int progress;                 /* live one-line progress on stdout */
};

/* What a step is asked to do. Exactly one of rate > 0 or speedup > 0. */
struct rp_step_spec {
    double rate;                  /* jobs/s, evenly spaced, cycling through the file */
    double speedup;               /* file schedule divided by this */
    double duration_s;            /* 0 = send the file once */
    double warmup_s;              /* jobs scheduled before this are not measured */
};

/* What a step measured; counts cover measured jobs only, so
 * done + lost + errors == sent always holds. */
struct rp_step_result {
    double target_rate;           /* rate asked for (or the file's rate x speedup) */
    double publish_rate;          /* measured jobs sent per second */
    double throughput;            /* measured results per second */
    double elapsed_s;             /* wall time of the step */
    uint64_t sent, done, errors, timeouts, partial, lost, late_sends;
    uint64_t rank1_total, rank1_hits, false_matches, nonmated;
    struct bm_hist *hist;         /* owned by the result: microseconds */
};

struct rp_engine;

/* Create an engine for 'file' (borrowed; must outlive the engine): decode
 * every job (unless keep_ids), connect a producer and a results consumer
 * assigned to all partitions at their current end, start the results thread.
 * Returns NULL with a message in err. */
struct rp_engine *rp_engine_new(const struct bm_replay *file, const struct rp_engine_opts *o,
                                char *err, size_t errlen);

/* Run one step; fills *res (res->hist owned by the caller: bm_hist_free).
 * BM_OK or an error (message in err). */
int rp_engine_step(struct rp_engine *e, const struct rp_step_spec *s, struct rp_step_result *res,
                   char *err, size_t errlen);

/* Stop the results thread, close everything. Accepts NULL. */
void rp_engine_free(struct rp_engine *e);

#endif /* BM_REPLAY_ENGINE_H */
