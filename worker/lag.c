/* Consumer lag from broker watermarks, sampled by the loader thread.
 *
 * A group-less bus consumer (same brokers and kafka: properties) asks each
 * assigned partition's leader for its high watermark. Lag is the high
 * watermark minus the next offset the worker will consume (last polled +
 * 1); partitions not polled yet are left out. The sum over a shard's
 * assigned replica partitions is the gauge biomatch_worker_consumer_lag
 * {gallery, shard}. Runs off the poll thread because the query blocks, on
 * its own handle so it never waits behind the poll loop. */
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

struct lag_item {
    const char *topic;
    int32_t partition;
    int64_t next;
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
            items[n].shard = p->shard;
            n++;
        }
    }
    /* Sum per shard; shards are freed only by this (the loader) thread, so
     * the pointers stay valid after the lock is dropped. */
    for (struct wk_shard *s = w->shards; s != NULL; s = s->next)
        bm_gauge_set(s->lag, 0);
    pthread_mutex_unlock(&w->lock);
    for (size_t i = 0; i < n; i++) {
        int64_t lo = 0, hi = 0;
        if (items[i].next < 0)
            continue;
        if (bm_consumer_watermarks(l->c, items[i].topic, items[i].partition, 1000, &lo, &hi,
                                   NULL, 0) != BM_OK)
            continue;
        if (hi > items[i].next)
            bm_gauge_add(items[i].shard->lag, (double)(hi - items[i].next));
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
