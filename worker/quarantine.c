/* Poison tasks: a task whose scoring crashes or hangs the worker is scored
 * at most worker.max_task_attempts times, then answered POISON unscored.
 *
 * The count must outlive the process that crashed, and the partition may
 * move to another worker, so it lives in Redis: before scoring, the
 * scoring thread INCRs bm:{<gallery>:<shard>}:attempts:<partition>:<offset>:<tag>
 * (store/keys.h) of every task of the batch in one pipeline, with a TTL;
 * once scoring returned (the partial is built), it DELs them in one more
 * pipeline. A key that is still there when the task comes back therefore
 * counts an attempt that never returned: a crash, a hang the watchdog
 * ended, or a kill of the worker mid-batch (which is why N defaults to 3,
 * not 1). A task seen again is scored alone, so an innocent task batched
 * with a poison one is never blamed for it.
 *
 * Redis being unreachable must not stop scoring: then the count is unknown
 * (0), the task is scored, and the next try to count waits a second.
 *
 * Thread: the scoring thread only (it owns the connection). */
#define _POSIX_C_SOURCE 200809L

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/err.h"
#include "obs/log.h"
#include "obs/metrics.h"
#include "store/keys.h"
#include "store/redis.h"
#include "store/redis_conf.h"
#include "wire/shard.h"
#include "worker.h"

/* Long enough to outlive any task's deadline (at most 300 s) and the
 * restarts it takes to reach the limit. */
#define ATTEMPTS_TTL_S "3600"
#define RETRY_AFTER_MS 1000

struct wk_attempts {
    struct wk *w;
    struct bm_redis *redis;        /* NULL until connected */
    int64_t retry_at_ms;           /* monotonic: no Redis before this */
    size_t pending_dels;           /* DEL replies owed */
};

struct wk_attempts *wk_attempts_new(struct wk *w)
{
    struct wk_attempts *a = calloc(1, sizeof *a);
    if (a != NULL)
        a->w = w;
    return a;
}

void wk_attempts_free(struct wk_attempts *a)
{
    if (a == NULL)
        return;
    bm_redis_close(a->redis);
    free(a);
}

/* A usable connection, or NULL (and no retry for a second). */
static struct bm_redis *conn(struct wk_attempts *a)
{
    if (a->redis != NULL && bm_redis_err(a->redis) != BM_OK) {
        bm_redis_close(a->redis);
        a->redis = NULL;
        a->pending_dels = 0;
    }
    if (a->redis != NULL)
        return a->redis;
    if (bm_mono_ms() < a->retry_at_ms)
        return NULL;
    char err[256];
    a->redis = bm_redis_connect_conf(a->w->conf, err, sizeof err);
    if (a->redis == NULL) {
        a->retry_at_ms = bm_mono_ms() + RETRY_AFTER_MS;
        BM_LOGF(BM_LOG_WARN, "cannot count task attempts; scoring without the poison check",
                BM_LF_STR("error", err));
    }
    return a->redis;
}

static void fail(struct wk_attempts *a, const char *what)
{
    BM_LOGF(BM_LOG_WARN, "cannot count task attempts; scoring without the poison check",
            BM_LF_STR("step", what),
            BM_LF_STR("error", a->redis ? bm_redis_errstr(a->redis) : ""));
    bm_redis_close(a->redis);
    a->redis = NULL;
    a->pending_dels = 0;
    a->retry_at_ms = bm_mono_ms() + RETRY_AFTER_MS;
}

int wk_attempts_begin(struct wk_attempts *a, struct wk_task **tasks, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        struct wk_task *t = tasks[i];
        t->attempt = 0;
        const char *id = t->msg->job_id;
        if (bm_key_attempts(t->attempt_key, sizeof t->attempt_key, t->shard->g->name,
                            t->shard->index, t->entry->part->partition, t->entry->offset,
                            bm_subject_key(id, strlen(id))) != BM_OK)
            t->attempt_key[0] = '\0';
    }
    struct bm_redis *r = conn(a);
    if (r == NULL)
        goto unknown;
    for (size_t i = 0; i < n; i++) {
        const char *key = tasks[i]->attempt_key;
        if (key[0] == '\0')
            continue;
        const char *incr[] = {"INCR", key};
        const char *exp[] = {"EXPIRE", key, ATTEMPTS_TTL_S};
        size_t il[] = {4, strlen(key)}, el[] = {6, strlen(key), strlen(ATTEMPTS_TTL_S)};
        if (bm_redis_append(r, 2, incr, il) != BM_OK || bm_redis_append(r, 3, exp, el) != BM_OK) {
            fail(a, "append");
            goto unknown;
        }
    }
    for (size_t i = 0; i < n; i++) {
        struct wk_task *t = tasks[i];
        if (t->attempt_key[0] == '\0')
            continue;
        struct bm_redis_reply *incr = NULL, *exp = NULL;
        int rc = bm_redis_get_reply(r, &incr);
        int rc2 = bm_redis_get_reply(r, &exp);
        if (rc == BM_OK && incr->type == BM_REDIS_INTEGER)
            t->attempt = incr->integer;
        bm_redis_reply_free(incr);
        bm_redis_reply_free(exp);
        if ((rc != BM_OK && rc != BM_EREDIS) || (rc2 != BM_OK && rc2 != BM_EREDIS)) {
            fail(a, "incr");
            goto unknown;
        }
    }
    return BM_OK;
unknown:
    for (size_t i = 0; i < n; i++) {
        tasks[i]->attempt = 0;
        tasks[i]->attempt_key[0] = '\0'; /* nothing to delete either */
    }
    return BM_EIO;
}

void wk_attempts_done(struct wk_attempts *a, struct wk_task *t)
{
    if (t->attempt_key[0] == '\0' || a->redis == NULL)
        return;
    const char *del[] = {"DEL", t->attempt_key};
    size_t dl[] = {3, strlen(t->attempt_key)};
    if (bm_redis_append(a->redis, 2, del, dl) != BM_OK) {
        fail(a, "append");
        return;
    }
    a->pending_dels++;
    t->attempt_key[0] = '\0';
}

void wk_attempts_flush(struct wk_attempts *a)
{
    while (a->redis != NULL && a->pending_dels > 0) {
        struct bm_redis_reply *r = NULL;
        int rc = bm_redis_get_reply(a->redis, &r);
        bm_redis_reply_free(r);
        a->pending_dels--;
        if (rc != BM_OK && rc != BM_EREDIS) {
            /* The keys expire on their own; a later retry of these tasks
             * would count one attempt too many, well inside the limit. */
            fail(a, "del");
            return;
        }
    }
}
