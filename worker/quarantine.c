/* Poison tasks: a task whose scoring crashes or hangs the worker is scored
 * at most worker.max_task_attempts times, then answered POISON unscored.
 *
 * The count must outlive the process that crashed, and the partition may
 * move to another worker, so it lives in Redis (store/attempts.h) under
 * bm:{<gallery>:<shard>}:attempts:<partition>:<offset>:<tag> (store/keys.h).
 * The scoring thread first reads the counts of a batch, then counts an
 * attempt only of the tasks it is about to score, right before scoring
 * them; once scoring returned (the partial is built), the keys are
 * deleted. A key that is still there when the task comes back therefore
 * counts an attempt that never returned: a crash, a hang the watchdog
 * ended, or a kill of the worker mid-batch (which is why N defaults to 3,
 * not 1).
 *
 * Only the tasks being scored when the worker dies are charged: a batch of
 * fresh tasks is charged one attempt each, and from then on each of them is
 * scored alone (batch.c), its count raised just before its own scoring.
 * Tasks redelivered but not reached before the next crash keep their
 * count, so an innocent task batched with a poison one is charged at most
 * once, whatever the number of crashes.
 *
 * Thread: the scoring thread only (it owns the counter). */
#define _POSIX_C_SOURCE 200809L

#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "store/attempts.h"
#include "store/keys.h"
#include "wire/shard.h"
#include "worker.h"

/* Read (incr 0) or count one more (incr 1) attempt of each task's key. */
static int count_tasks(struct bm_attempts *a, struct wk_task **tasks, size_t n, int incr)
{
    const char **keys = malloc((n ? n : 1) * sizeof *keys);
    long long *counts = malloc((n ? n : 1) * sizeof *counts);
    int rc = keys != NULL && counts != NULL ? BM_OK : BM_ENOMEM;
    for (size_t i = 0; rc == BM_OK && i < n; i++)
        keys[i] = tasks[i]->attempt_key;
    if (rc == BM_OK)
        rc = incr ? bm_attempts_begin(a, keys, counts, n) : bm_attempts_peek(a, keys, counts, n);
    for (size_t i = 0; i < n; i++) {
        tasks[i]->attempt = rc == BM_OK ? counts[i] : 0;
        if (rc != BM_OK)
            tasks[i]->attempt_key[0] = '\0'; /* unknown, nothing to delete either */
    }
    free(keys);
    free(counts);
    return rc;
}

int wk_attempts_peek(struct bm_attempts *a, struct wk_task **tasks, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        struct wk_task *t = tasks[i];
        const char *id = t->msg->job_id;
        if (bm_key_attempts(t->attempt_key, sizeof t->attempt_key, t->shard->g->name,
                            t->shard->index, t->entry->part->partition, t->entry->offset,
                            bm_subject_key(id, strlen(id))) != BM_OK)
            t->attempt_key[0] = '\0';
    }
    return count_tasks(a, tasks, n, 0);
}

int wk_attempts_begin(struct bm_attempts *a, struct wk_task **tasks, size_t n)
{
    return count_tasks(a, tasks, n, 1);
}

void wk_attempts_done(struct bm_attempts *a, struct wk_task *t)
{
    bm_attempts_done(a, t->attempt_key);
    t->attempt_key[0] = '\0';
}
