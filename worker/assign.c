/* Partition assignment -> shard loading.
 *
 * Partition p of tasks.<g> serves shard p % S (replica p / S). On assignment
 * the poll thread pauses the partition and takes a reference on its shard
 * (one struct wk_shard per (gallery, shard), however many replica
 * partitions point at it); the loader thread loads it from Redis and the
 * poll thread resumes the partition once it is loaded. The loader also
 * refreshes every loaded shard to follow new manifest versions, retries
 * lost shards with backoff, and frees a shard once no partition references
 * it and no task pins it.
 *
 * Invariant: a partition is fetched only while its shard is loaded, so a
 * task that reaches the scoring thread always finds a usable shard. The
 * poll thread never waits for Redis: loads run on the loader thread. */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "common/err.h"
#include "obs/http.h"
#include "obs/log.h"
#include "obs/metrics.h"
#include "obs/outage.h"
#include "store/loader.h"
#include "store/redis.h"
#include "store/redis_conf.h"
#include "worker.h"

#define WK_BACKOFF_MIN_MS 100
#define WK_BACKOFF_MAX_MS 5000

static struct wk_gallery *gallery_of(struct wk *w, struct bm_consumer *c)
{
    for (size_t i = 0; i < w->ngal; i++)
        if (w->gal[i].consumer == c)
            return &w->gal[i];
    return NULL;
}

/* Find or create the shard entry and take a reference. w->lock held. */
static struct wk_shard *shard_ref(struct wk *w, struct wk_gallery *g, uint32_t index)
{
    for (struct wk_shard *s = w->shards; s != NULL; s = s->next) {
        if (s->g == g && s->index == index) {
            s->refs++;
            return s;
        }
    }
    struct wk_shard *s = calloc(1, sizeof *s);
    if (s == NULL)
        return NULL;
    s->g = g;
    s->index = index;
    atomic_init(&s->loaded, 0);
    atomic_init(&s->version, 0);
    atomic_init(&s->refresh_now, 0);
    s->refs = 1;
    s->backoff_ms = WK_BACKOFF_MIN_MS;
    s->lag = wk_metrics_lag(w, g, index);
    s->next = w->shards;
    w->shards = s;
    return s;
}

struct wk_part *wk_part_find(struct wk_gallery *g, int32_t partition)
{
    for (struct wk_part *p = g->parts; p != NULL; p = p->next)
        if (p->partition == partition)
            return p;
    return NULL;
}

void wk_on_assign(struct bm_consumer *c, const struct bm_bus_tp *tps, size_t n, void *opaque)
{
    struct wk *w = opaque;
    struct wk_gallery *g = gallery_of(w, c);
    if (g == NULL)
        return;
    for (size_t i = 0; i < n; i++) {
        int32_t part = tps[i].partition;
        /* Pause first: nothing may reach us before the shard is loaded
         * (the bus defers the real pause to the first message, which it
         * holds back until the resume). */
        bm_consumer_pause(c, g->topic, part);
        if (wk_part_find(g, part) != NULL)
            continue;
        struct wk_part *p = calloc(1, sizeof *p);
        if (p == NULL) {
            BM_LOGF(BM_LOG_ERROR, "out of memory on assignment", BM_LF_STR("gallery", g->name));
            continue; /* stays paused: its tasks go to another worker later */
        }
        p->g = g;
        p->partition = part;
        p->paused = 1;
        atomic_init(&p->next_offset, -1);
        pthread_mutex_lock(&w->lock);
        p->shard = shard_ref(w, g, (uint32_t)part % g->shards);
        if (p->shard != NULL) {
            p->next = g->parts;
            g->parts = p;
        }
        pthread_cond_signal(&w->loader_cv);
        pthread_mutex_unlock(&w->lock);
        if (p->shard == NULL) {
            free(p);
            continue;
        }
        BM_LOGF(BM_LOG_INFO, "partition assigned", BM_LF_STR("gallery", g->name),
                BM_LF_INT("partition", part), BM_LF_INT("shard", p->shard->index));
    }
}

void wk_on_revoke(struct bm_consumer *c, const struct bm_bus_tp *tps, size_t n, int lost,
                  void *opaque)
{
    struct wk *w = opaque;
    struct wk_gallery *g = gallery_of(w, c);
    if (g == NULL)
        return;
    for (size_t i = 0; i < n; i++) {
        pthread_mutex_lock(&w->lock);
        struct wk_part *p = NULL;
        for (struct wk_part **pp = &g->parts; *pp != NULL; pp = &(*pp)->next) {
            if ((*pp)->partition == tps[i].partition) {
                p = *pp;
                *pp = p->next;
                break;
            }
        }
        if (p == NULL) {
            pthread_mutex_unlock(&w->lock);
            continue;
        }
        p->revoked = 1;
        p->shard->refs--;
        pthread_cond_signal(&w->loader_cv);
        if (p->head != NULL) {
            /* Answers still in flight: keep the queue until they are
             * delivered (wk_part_advance frees it). */
            p->next = w->zombies;
            w->zombies = p;
            p = NULL;
        }
        pthread_mutex_unlock(&w->lock);
        free(p);
        BM_LOGF(BM_LOG_INFO, lost ? "partition lost" : "partition revoked",
                BM_LF_STR("gallery", g->name), BM_LF_INT("partition", tps[i].partition));
    }
}

int wk_resume_ready(struct wk *w)
{
    int waiting = 0;
    int draining = atomic_load(&w->draining);
    for (size_t i = 0; i < w->ngal; i++) {
        struct wk_gallery *g = &w->gal[i];
        for (struct wk_part *p = g->parts; p != NULL; p = p->next) {
            if (!p->paused)
                continue;
            if (!atomic_load_explicit(&p->shard->loaded, memory_order_acquire)) {
                waiting++;
                continue;
            }
            if (draining)
                continue;
            if (bm_consumer_resume(g->consumer, g->topic, p->partition) == BM_OK) {
                p->paused = 0;
                BM_LOGF(BM_LOG_INFO, "partition resumed", BM_LF_STR("gallery", g->name),
                        BM_LF_INT("partition", p->partition),
                        BM_LF_INT("version", (int64_t)atomic_load(&p->shard->version)));
            }
        }
    }
    return waiting;
}

void wk_pause_all(struct wk *w)
{
    for (size_t i = 0; i < w->ngal; i++) {
        struct wk_gallery *g = &w->gal[i];
        for (struct wk_part *p = g->parts; p != NULL; p = p->next) {
            if (!p->paused && bm_consumer_pause(g->consumer, g->topic, p->partition) == BM_OK)
                p->paused = 1;
        }
    }
}

void wk_shard_unpin(struct wk *w, struct wk_shard *s)
{
    pthread_mutex_lock(&w->lock);
    s->pins--;
    if (s->pins == 0 && s->refs == 0)
        pthread_cond_signal(&w->loader_cv);
    pthread_mutex_unlock(&w->lock);
}

/* ------------------------------------------------------------ loader */

enum job_kind { JOB_NONE, JOB_LOAD, JOB_REFRESH };

static void backoff(struct wk_shard *s, int64_t now)
{
    s->next_attempt_ms = now + s->backoff_ms;
    s->backoff_ms *= 2;
    if (s->backoff_ms > WK_BACKOFF_MAX_MS)
        s->backoff_ms = WK_BACKOFF_MAX_MS;
}

/* Record whether the loader reaches Redis: an outage of any length is
 * waited out (loads and refreshes back off and retry; held versions keep
 * scoring) and reported like every outage (obs/outage.h: /readyz 503,
 * biomatch_outage_waiting{component="worker"}). Loader thread only. */
static void redis_reachable(struct wk *w, int up)
{
    if (up == !w->redis_down)
        return;
    w->redis_down = !up;
    bm_outage_report(&w->outage, !up, BM_EIO, "redis unreachable (shard loader)");
}

/* 1 when 'rc' from a load or refresh means Redis could not be reached
 * (as opposed to an answer we refuse). */
static int unreachable(int rc)
{
    return rc == BM_EIO || rc == BM_ETIMEDOUT || rc == BM_ECLOSED || rc == BM_EUNAVAIL;
}

static struct bm_redis *redis_connect(struct wk *w)
{
    char err[256];
    struct bm_redis *r = bm_redis_connect_conf(w->conf, err, sizeof err);
    if (r == NULL)
        BM_LOGF(BM_LOG_WARN, "redis connect failed; retrying", BM_LF_STR("error", err));
    redis_reachable(w, r != NULL);
    return r;
}

static void do_load(struct wk *w, struct bm_redis *r, struct wk_shard *s)
{
    char err[512];
    int rc;
    struct wk_gallery *g = s->g;
    struct bm_shard *sh =
        bm_shard_load_keyring(r, g->def, s->index, w->pool, w->keyring, &rc, err, sizeof err);
    int64_t now = bm_mono_ms();
    redis_reachable(w, sh != NULL || !unreachable(rc));
    if (sh == NULL) {
        if (rc == BM_ECHECKSUM || rc == BM_EUNSUPPORTED)
            bm_counter_inc(g->shards_refused);
        backoff(s, now);
        BM_LOGF(rc == BM_ENOTFOUND ? BM_LOG_INFO : BM_LOG_WARN,
                rc == BM_ENOTFOUND ? "shard not in redis; waiting for a rebuild"
                                   : "shard load failed; retrying",
                BM_LF_STR("gallery", g->name), BM_LF_INT("shard", s->index),
                BM_LF_STR("error", err), BM_LF_INT("retry_ms", s->next_attempt_ms - now));
        return;
    }
    struct bm_shard_stats st;
    bm_shard_stats(sh, &st);
    bm_histogram_observe(g->load_seconds, st.last_ms / 1000.0);
    bm_counter_add(g->load_bytes, st.last_bytes);
    bm_gauge_add(g->shards_loaded, 1);
    s->shard = sh;
    atomic_store(&s->version, bm_shard_version(sh));
    atomic_store_explicit(&s->loaded, 1, memory_order_release);
    s->backoff_ms = WK_BACKOFF_MIN_MS;
    s->next_attempt_ms = now + w->refresh_ms;
    BM_LOGF(BM_LOG_INFO, "shard loaded", BM_LF_STR("gallery", g->name),
            BM_LF_INT("shard", s->index), BM_LF_INT("version", (int64_t)st.version),
            BM_LF_INT("subjects", (int64_t)st.subjects), BM_LF_INT("bytes", (int64_t)st.last_bytes),
            BM_LF_DBL("seconds", st.last_ms / 1000.0));
}

static void do_refresh(struct wk *w, struct bm_redis *r, struct wk_shard *s)
{
    char err[512];
    int changed = 0;
    int rc = bm_shard_refresh(s->shard, r, &changed, err, sizeof err);
    int64_t now = bm_mono_ms();
    redis_reachable(w, !unreachable(rc));
    if (rc != BM_OK) {
        /* The held version stays usable; only following stalls. */
        if (rc == BM_ECHECKSUM || rc == BM_EUNSUPPORTED)
            bm_counter_inc(s->g->shards_refused);
        backoff(s, now);
        BM_LOGF(BM_LOG_WARN, "shard refresh failed; scoring continues on the held version",
                BM_LF_STR("gallery", s->g->name), BM_LF_INT("shard", s->index),
                BM_LF_STR("error", err));
        return;
    }
    s->backoff_ms = WK_BACKOFF_MIN_MS;
    s->next_attempt_ms = now + w->refresh_ms;
    if (!changed)
        return;
    struct bm_shard_stats st;
    bm_shard_stats(s->shard, &st);
    bm_counter_add(s->g->load_bytes, st.last_bytes);
    atomic_store(&s->version, st.version);
    BM_LOGF(BM_LOG_INFO, "shard refreshed", BM_LF_STR("gallery", s->g->name),
            BM_LF_INT("shard", s->index), BM_LF_INT("version", (int64_t)st.version),
            BM_LF_INT("subjects", (int64_t)st.subjects));
    /* Parked tasks may be waiting for exactly this version. */
    pthread_mutex_lock(&w->qlock);
    pthread_cond_broadcast(&w->qcv);
    pthread_mutex_unlock(&w->qlock);
}

static void free_shard(struct wk_shard *s)
{
    if (atomic_load(&s->loaded))
        bm_gauge_add(s->g->shards_loaded, -1);
    BM_LOGF(BM_LOG_INFO, "shard released", BM_LF_STR("gallery", s->g->name),
            BM_LF_INT("shard", s->index));
    bm_shard_free(s->shard);
    free(s);
}

static void *loader_main(void *arg)
{
    struct wk *w = arg;
    struct bm_redis *r = NULL;
    int64_t next_redis = 0, next_lag = bm_mono_ms() + 1000;
    char err[256];
    struct wk_lag *lag = wk_lag_new(w, err, sizeof err);
    if (lag == NULL)
        BM_LOGF(BM_LOG_WARN, "consumer lag metric disabled", BM_LF_STR("error", err));

    while (!atomic_load(&w->loader_stop)) {
        int64_t now = bm_mono_ms();
        if (r == NULL && now >= next_redis) {
            r = redis_connect(w);
            if (r == NULL)
                next_redis = now + 1000;
        }
        struct wk_shard *dead = NULL, *job = NULL;
        enum job_kind kind = JOB_NONE;
        int64_t wake = now + 200;
        pthread_mutex_lock(&w->lock);
        for (struct wk_shard **pp = &w->shards; *pp != NULL;) {
            struct wk_shard *s = *pp;
            if (s->refs == 0 && s->pins == 0) {
                *pp = s->next;
                s->next = dead;
                dead = s;
                continue;
            }
            pp = &s->next;
            if (job != NULL || r == NULL || s->refs == 0)
                continue;
            int loaded = atomic_load(&s->loaded);
            int urgent = loaded && atomic_exchange(&s->refresh_now, 0);
            if (urgent || now >= s->next_attempt_ms) {
                job = s;
                kind = loaded ? JOB_REFRESH : JOB_LOAD;
            } else if (s->next_attempt_ms < wake) {
                wake = s->next_attempt_ms;
            }
        }
        pthread_mutex_unlock(&w->lock);
        while (dead != NULL) {
            struct wk_shard *s = dead;
            dead = s->next;
            free_shard(s);
        }
        if (kind == JOB_LOAD)
            do_load(w, r, job);
        else if (kind == JOB_REFRESH)
            do_refresh(w, r, job);
        if (r != NULL && bm_redis_err(r) != BM_OK)
            bm_redis_clear_err(r);
        now = bm_mono_ms();
        if (lag != NULL && now >= next_lag) {
            wk_lag_sample(w, lag);
            next_lag = bm_mono_ms() + WK_LAG_INTERVAL_MS;
        }
        if (job != NULL)
            continue; /* look for more work at once */
        if (next_lag < wake)
            wake = next_lag;
        if (wake > now + 50)
            wake = now + 50; /* also notices refresh requests quickly */
        struct timespec ts = bm_mono_deadline_us((wake - now) * 1000);
        pthread_mutex_lock(&w->lock);
        if (!atomic_load(&w->loader_stop))
            pthread_cond_timedwait(&w->loader_cv, &w->lock, &ts);
        pthread_mutex_unlock(&w->lock);
    }
    wk_lag_free(lag);
    redis_reachable(w, 1); /* every reported wait ends (obs/outage.h) */
    bm_redis_close(r);
    return NULL;
}

int wk_loader_start(struct wk *w, char *err, size_t errlen)
{
    atomic_init(&w->loader_stop, 0);
    if (pthread_create(&w->loader, NULL, loader_main, w) != 0)
        return bm_seterr(err, errlen, BM_ENOMEM, "cannot start the loader thread");
    w->loader_started = 1;
    return BM_OK;
}

void wk_loader_stop(struct wk *w)
{
    if (!w->loader_started)
        return;
    pthread_mutex_lock(&w->lock);
    atomic_store(&w->loader_stop, 1);
    pthread_cond_broadcast(&w->loader_cv);
    pthread_mutex_unlock(&w->lock);
    pthread_join(w->loader, NULL);
    w->loader_started = 0;
}

static void free_part(struct wk_part *p)
{
    while (p->head != NULL) {
        struct wk_entry *e = p->head;
        p->head = e->next;
        wk_entry_free(e);
    }
    free(p);
}

void wk_assign_free(struct wk *w)
{
    for (size_t i = 0; w->gal != NULL && i < w->ngal; i++) {
        while (w->gal[i].parts != NULL) {
            struct wk_part *p = w->gal[i].parts;
            w->gal[i].parts = p->next;
            free_part(p);
        }
    }
    while (w->zombies != NULL) {
        struct wk_part *p = w->zombies;
        w->zombies = p->next;
        free_part(p);
    }
    while (w->shards != NULL) {
        struct wk_shard *s = w->shards;
        w->shards = s->next;
        bm_shard_free(s->shard);
        free(s);
    }
}
