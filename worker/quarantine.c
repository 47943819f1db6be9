/* Poison tasks: a task whose scoring crashes or hangs the worker is scored
 * at most worker.max_task_attempts times, then answered POISON unscored.
 *
 * The count must outlive the process that crashed, and the partition may
 * move to another worker, so it lives in Redis (store/attempts.h): before
 * scoring, the scoring thread counts an attempt of every task of the batch
 * under bm:{<gallery>:<shard>}:attempts:<partition>:<offset>:<tag>
 * (store/keys.h); once scoring returned (the partial is built), the keys
 * are deleted. A key that is still there when the task comes back
 * therefore counts an attempt that never returned: a crash, a hang the
 * watchdog ended, or a kill of the worker mid-batch (which is why N
 * defaults to 3, not 1). A task seen again is scored alone, so an innocent
 * task batched with a poison one is never blamed for it.
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

int wk_attempts_begin(struct bm_attempts *a, struct wk_task **tasks, size_t n)
{
    const char **keys = malloc((n ? n : 1) * sizeof *keys);
    long long *counts = malloc((n ? n : 1) * sizeof *counts);
    int rc = keys != NULL && counts != NULL ? BM_OK : BM_ENOMEM;
    for (size_t i = 0; rc == BM_OK && i < n; i++) {
        struct wk_task *t = tasks[i];
        const char *id = t->msg->job_id;
        if (bm_key_attempts(t->attempt_key, sizeof t->attempt_key, t->shard->g->name,
                            t->shard->index, t->entry->part->partition, t->entry->offset,
                            bm_subject_key(id, strlen(id))) != BM_OK)
            t->attempt_key[0] = '\0';
        keys[i] = t->attempt_key;
    }
    if (rc == BM_OK)
        rc = bm_attempts_begin(a, keys, counts, n);
    for (size_t i = 0; i < n; i++) {
        tasks[i]->attempt = rc == BM_OK ? counts[i] : 0;
        if (rc != BM_OK)
            tasks[i]->attempt_key[0] = '\0'; /* nothing to delete either */
    }
    free(keys);
    free(counts);
    return rc;
}

void wk_attempts_done(struct bm_attempts *a, struct wk_task *t)
{
    bm_attempts_done(a, t->attempt_key);
    t->attempt_key[0] = '\0';
}
