/* The aggregator's table of jobs: open jobs (waiting for shards or their
 * deadline) and recently finished ones (remembered so a late duplicate
 * partial does not re-open them), keyed by job id.
 *
 * Invariant: a job id is in the table at most once. An open job owns the
 * decoded partials it has collected (the opened marker and at most one
 * partial per shard); a finished job keeps only its id and the time it
 * finished, and is forgotten after the table's 'done window' or when more
 * than 'done_max' finished jobs are remembered (oldest first).
 *
 * Thread: one thread (the aggregator's poll loop); no locks. */
#ifndef BM_JOBTABLE_H
#define BM_JOBTABLE_H

#include <stddef.h>
#include <stdint.h>

#include "biomatch.pb-c.h"

enum bm_job_state {
    BM_JOB_OPEN = 0,        /* collecting partials */
    BM_JOB_SENT = 1,        /* result produced, delivery report pending */
    BM_JOB_DONE = 2,        /* result delivered; only the id is kept */
};

struct bm_job {
    char *id;                          /* owned */
    enum bm_job_state state;
    int32_t partition;                 /* partials partition of its messages */
    int64_t first_offset;              /* lowest offset of its messages; holds the commit */
    int64_t created_ms;                /* monotonic ms (bm_mono_ms) when first seen */
    int64_t done_ms;                   /* monotonic ms when it became DONE */
    Biomatch__V1__PartialResult *opened; /* owned; NULL until the marker arrives */
    uint32_t shard_count;              /* 0 until known (from any partial) */
    Biomatch__V1__PartialResult **shards; /* owned, shard_count entries, NULL = missing */
    uint32_t answered;                 /* non-NULL entries of shards */
    int delivered;                     /* SENT: the result's delivery report was positive */
    int refused;                       /* SENT: enum bm_err of a permanent refusal of the
                                        * result (0 = none): emit its fallback */
    int fallbacks;                     /* fallbacks emitted so far (bounded) */
    int counted;                       /* this run counted an attempt of its result */
    int poisoned;                      /* over coordinator.max_job_attempts: answer POISON */
    struct bm_job *next, *prev;        /* list: open jobs, or done jobs oldest first */
    struct bm_job *hnext;              /* hash chain */
};

struct bm_jobtable;

/* An empty table. done_window_ms: how long a finished id is remembered;
 * done_max: most finished ids remembered. NULL on ENOMEM. */
struct bm_jobtable *bm_jobtable_new(int64_t done_window_ms, size_t done_max);

/* Free the table and every job (and the partials they own). NULL is fine. */
void bm_jobtable_free(struct bm_jobtable *t);

/* The job with id 'id', or NULL. Borrowed; valid until removed. */
struct bm_job *bm_jobtable_find(struct bm_jobtable *t, const char *id);

/* Every now_ms below is monotonic time (bm_mono_ms): the done window is a
 * duration, so a step of the wall clock must not stretch or empty it.
 *
 * Add an OPEN job for 'id' (copied) first seen at 'offset' of 'partition'.
 * The caller has checked it is not present. NULL on ENOMEM. */
struct bm_job *bm_jobtable_add(struct bm_jobtable *t, const char *id, int32_t partition,
                               int64_t offset, int64_t now_ms);

/* Set the shard count of a job that has none yet (allocating its shard
 * slots). Returns 0, or -1 on ENOMEM. */
int bm_jobtable_set_shards(struct bm_job *j, uint32_t shard_count);

/* Mark 'j' DONE at now_ms: free its partials, move it to the done list. */
void bm_jobtable_finish(struct bm_jobtable *t, struct bm_job *j, int64_t now_ms);

/* Remove and free 'j' whatever its state. */
void bm_jobtable_remove(struct bm_jobtable *t, struct bm_job *j);

/* Forget done jobs older than the window or beyond done_max. */
void bm_jobtable_expire(struct bm_jobtable *t, int64_t now_ms);

/* The open list (OPEN and SENT jobs), for deadline scans: first job, and
 * the next after 'j' (NULL at the end). The caller may finish or remove 'j'
 * after reading its next. */
struct bm_job *bm_jobtable_first_open(struct bm_jobtable *t);

/* Number of OPEN/SENT jobs, and of remembered DONE jobs. */
size_t bm_jobtable_open_count(const struct bm_jobtable *t);
size_t bm_jobtable_done_count(const struct bm_jobtable *t);

#endif /* BM_JOBTABLE_H */
