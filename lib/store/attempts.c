/* Durable attempt counts (attempts.h). */
#define _POSIX_C_SOURCE 200809L

#include "store/attempts.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/err.h"
#include "obs/log.h"
#include "store/redis.h"
#include "store/redis_conf.h"

#define RETRY_AFTER_MS 1000
#define STR_(x) #x
#define STR(x) STR_(x)

struct bm_attempts {
    const struct bm_conf *conf;
    const char *what;
    struct bm_redis *redis;        /* NULL until connected */
    int64_t retry_at_ms;           /* monotonic: no Redis before this */
    size_t pending_dels;           /* DEL replies owed */
};

struct bm_attempts *bm_attempts_new(const struct bm_conf *conf, const char *what)
{
    struct bm_attempts *a = calloc(1, sizeof *a);
    if (a != NULL) {
        a->conf = conf;
        a->what = what;
    }
    return a;
}

void bm_attempts_free(struct bm_attempts *a)
{
    if (a == NULL)
        return;
    bm_redis_close(a->redis);
    free(a);
}

static void warn(struct bm_attempts *a, const char *step, const char *error)
{
    BM_LOGF(BM_LOG_WARN, "cannot count attempts; going on without the poison check",
            BM_LF_STR("work", a->what), BM_LF_STR("step", step), BM_LF_STR("error", error));
}

/* A usable connection, or NULL (and no retry for a second). */
static struct bm_redis *conn(struct bm_attempts *a)
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
    a->redis = bm_redis_connect_conf(a->conf, err, sizeof err);
    if (a->redis == NULL) {
        a->retry_at_ms = bm_mono_ms() + RETRY_AFTER_MS;
        warn(a, "connect", err);
    }
    return a->redis;
}

static void fail(struct bm_attempts *a, const char *step)
{
    warn(a, step, a->redis ? bm_redis_errstr(a->redis) : "");
    bm_redis_close(a->redis);
    a->redis = NULL;
    a->pending_dels = 0;
    a->retry_at_ms = bm_mono_ms() + RETRY_AFTER_MS;
}

/* The count an INCR (an integer) or a GET (a decimal string; nil = 0)
 * answered, 0 for anything else. */
static long long count_of(const struct bm_redis_reply *r)
{
    if (r->type == BM_REDIS_INTEGER)
        return r->integer;
    if (r->type != BM_REDIS_STRING || r->len >= 24)
        return 0;
    char num[24];
    memcpy(num, r->str, r->len);
    num[r->len] = '\0';
    return strtoll(num, NULL, 10);
}

/* One pipeline over the non-empty keys: GET each (incr 0) or INCR and
 * EXPIRE each (incr 1), counts[i] from the replies. */
static int count_keys(struct bm_attempts *a, const char *const *keys, long long *counts,
                      size_t n, int incr)
{
    for (size_t i = 0; i < n; i++)
        counts[i] = 0;
    /* Queued DELs go out first, so the work they clear is charged no more. */
    bm_attempts_flush(a);
    struct bm_redis *r = conn(a);
    if (r == NULL)
        return BM_EIO;
    const char *ttl = STR(BM_ATTEMPTS_TTL_S);
    size_t per_key = incr ? 2 : 1;
    for (size_t i = 0; i < n; i++) {
        if (keys[i][0] == '\0')
            continue;
        const char *first[] = {incr ? "INCR" : "GET", keys[i]};
        const char *exp[] = {"EXPIRE", keys[i], ttl};
        size_t fl[] = {strlen(first[0]), strlen(keys[i])};
        size_t el[] = {6, strlen(keys[i]), strlen(ttl)};
        if (bm_redis_append(r, 2, first, fl) != BM_OK ||
            (incr && bm_redis_append(r, 3, exp, el) != BM_OK)) {
            fail(a, "append");
            return BM_EIO;
        }
    }
    for (size_t i = 0; i < n; i++) {
        if (keys[i][0] == '\0')
            continue;
        for (size_t k = 0; k < per_key; k++) {
            struct bm_redis_reply *rep = NULL;
            int rc = bm_redis_get_reply(r, &rep);
            if (rc == BM_OK && k == 0)
                counts[i] = count_of(rep);
            bm_redis_reply_free(rep);
            if (rc != BM_OK && rc != BM_EREDIS) {
                fail(a, incr ? "incr" : "get");
                for (size_t j = 0; j < n; j++)
                    counts[j] = 0;
                return BM_EIO;
            }
        }
    }
    return BM_OK;
}

int bm_attempts_peek(struct bm_attempts *a, const char *const *keys, long long *counts,
                     size_t n)
{
    return count_keys(a, keys, counts, n, 0);
}

int bm_attempts_begin(struct bm_attempts *a, const char *const *keys, long long *counts,
                      size_t n)
{
    return count_keys(a, keys, counts, n, 1);
}

int bm_attempts_done(struct bm_attempts *a, const char *key)
{
    if (key[0] == '\0' || a->redis == NULL)
        return 0;
    const char *del[] = {"DEL", key};
    size_t dl[] = {3, strlen(key)};
    if (bm_redis_append(a->redis, 2, del, dl) != BM_OK) {
        fail(a, "append");
        return 0;
    }
    a->pending_dels++;
    return 1;
}

void bm_attempts_flush(struct bm_attempts *a)
{
    while (a->redis != NULL && a->pending_dels > 0) {
        struct bm_redis_reply *r = NULL;
        int rc = bm_redis_get_reply(a->redis, &r);
        bm_redis_reply_free(r);
        a->pending_dels--;
        if (rc != BM_OK && rc != BM_EREDIS) {
            /* The keys expire on their own; a later retry of this work
             * would count one attempt too many, well inside the limit. */
            fail(a, "del");
            return;
        }
    }
}
