/* Consumer lag from broker watermarks, sampled by the loader thread.
 *
 * A group-less bus consumer (same brokers and kafka: properties) asks each
 * assigned partition's leader for its high watermark. Lag is the high
 * watermark minus the next offset the worker will consume: last polled + 1,
 * or, for a partition that has delivered nothing yet (its shard may be
 * failing to load), the group's committed offset (the low watermark when
 * there is none). So a stuck partition shows its backlog instead of
 * nothing. The sum over a shard's assigned replica partitions is the gauge
 * biomatch_worker_consumer_lag{gallery, shard}. Runs off the poll thread
 * because the queries block, on its own handle so they never wait behind
 * the poll loop (the committed-offset query goes through the gallery's
 * group consumer, which is safe from any thread). */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bus/bus.h"
#include "common/err.h"
#include "obs/metrics.h"
#include "worker.h"

struct wk_lag {
    struct bm_consumer *c;
};

#define LAG_UNKNOWN (-2)    /* committed offset unavailable: skip */
#define LAG_FROM_START (-3) /* nothing committed: from the low watermark */

struct lag_item {
    const char *topic;
    int32_t partition;
    int64_t next;                  /* -1: nothing polled yet, or LAG_* */
    struct bm_consumer *group;     /* the gallery's consumer */
    struct wk_shard *shard;
};

struct wk_lag *wk_lag_new(struct wk *w, char *err, size_t errlen)
{
    struct wk_lag *l = calloc(1, sizeof *l);
    if (l == NULL) {
        bm_seterr(err, errlen, BM_ENOMEM, "lag handle: out of memory");
        return NULL;
    }
    l->c = bm_consumer_new(&w->busconf, NULL, NULL, NULL, err, errlen);
    if (l->c == NULL) {
        free(l);
        return NULL;
    }
    return l;
}

/* Replace next = -1 (nothing polled yet) by the group's committed offset,
 * with one query per gallery. 'items' are grouped by gallery. */
static void committed_offsets(struct lag_item *items, size_t n)
{
    for (size_t from = 0, to; from < n; from = to) {
        size_t unpolled = 0;
        for (to = from; to < n && items[to].group == items[from].group; to++)
            unpolled += items[to].next < 0;
        if (unpolled == 0)
            continue;
        struct bm_bus_tp *tps = calloc(unpolled, sizeof *tps);
        size_t k = 0;
        for (size_t i = from; tps != NULL && i < to; i++)
            if (items[i].next < 0)
                tps[k++] = (struct bm_bus_tp){items[i].topic, items[i].partition,
                                              BM_OFFSET_INVALID};
        int ok = tps != NULL &&
                 bm_consumer_committed(items[from].group, tps, k, 1000, NULL, 0) == BM_OK;
        k = 0;
        for (size_t i = from; i < to; i++) {
            if (items[i].next >= 0)
                continue;
            int64_t c = ok ? tps[k++].offset : BM_OFFSET_INVALID;
            items[i].next = !ok ? LAG_UNKNOWN : c == BM_OFFSET_INVALID ? LAG_FROM_START : c;
        }
        free(tps);
    }
}

void wk_lag_sample(struct wk *w, struct wk_lag *l)
{
    size_t n = 0, cap = 0;
    struct lag_item *items = NULL;
    pthread_mutex_lock(&w->lock);
    for (size_t i = 0; i < w->ngal; i++)
        for (struct wk_part *p = w->gal[i].parts; p != NULL; p = p->next)
            cap++;
    items = cap > 0 ? calloc(cap, sizeof *items) : NULL;
    for (size_t i = 0; items != NULL && i < w->ngal; i++) {
        for (struct wk_part *p = w->gal[i].parts; p != NULL; p = p->next) {
            items[n].topic = w->gal[i].topic;
            items[n].partition = p->partition;
            items[n].next = atomic_load(&p->next_offset);
            items[n].group = w->gal[i].consumer;
            items[n].shard = p->shard;
            n++;
        }
    }
    /* Sum per shard; shards are freed only by this (the loader) thread, so
     * the pointers stay valid after the lock is dropped. */
    for (struct wk_shard *s = w->shards; s != NULL; s = s->next)
        bm_gauge_set(s->lag, 0);
    pthread_mutex_unlock(&w->lock);
    committed_offsets(items, n);
    for (size_t i = 0; i < n; i++) {
        int64_t lo = 0, hi = 0;
        if (items[i].next == LAG_UNKNOWN ||
            bm_consumer_watermarks(l->c, items[i].topic, items[i].partition, 1000, &lo, &hi,
                                   NULL, 0) != BM_OK)
            continue;
        int64_t next = items[i].next == LAG_FROM_START ? lo : items[i].next;
        if (hi > next)
            bm_gauge_add(items[i].shard->lag, (double)(hi - next));
    }
    free(items);
}

void wk_lag_free(struct wk_lag *l)
{
    if (l == NULL)
        return;
    bm_consumer_free(l->c);
    free(l);
}
