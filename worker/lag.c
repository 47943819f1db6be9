/* Consumer lag from broker watermarks, sampled by the loader thread.
 *
 * bus.h has no watermark query, so this file keeps its own small librdkafka
 * handle (same brokers and kafka: properties, no group) and calls
 * rd_kafka_query_watermark_offsets for each assigned partition. Lag is the
 * high watermark minus the next offset the worker will consume (last polled
 * + 1); partitions not polled yet are left out. The sum over a shard's
 * assigned replica partitions is the gauge biomatch_worker_consumer_lag
 * {gallery, shard}. Runs off the poll thread because the query blocks. */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <librdkafka/rdkafka.h>

#include "common/err.h"
#include "obs/metrics.h"
#include "worker.h"

struct wk_lag {
    rd_kafka_t *rk;
};

struct lag_item {
    const char *topic;
    int32_t partition;
    int64_t next;
    struct wk_shard *shard;
};

struct wk_lag *wk_lag_new(struct wk *w, char *err, size_t errlen)
{
    char msg[256];
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    if (rd_kafka_conf_set(c, "bootstrap.servers", w->busconf.bootstrap_servers, msg,
                          sizeof msg) != RD_KAFKA_CONF_OK)
        goto bad;
    for (size_t i = 0; i < w->busconf.nprops; i++)
        if (rd_kafka_conf_set(c, w->busconf.props[i].key, w->busconf.props[i].value, msg,
                              sizeof msg) != RD_KAFKA_CONF_OK)
            goto bad;
    rd_kafka_conf_set(c, "log_level", "3", msg, sizeof msg);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, c, msg, sizeof msg);
    if (rk == NULL) {
        bm_seterr(err, errlen, BM_EKAFKA, "lag handle: %s", msg);
        return NULL;
    }
    struct wk_lag *l = calloc(1, sizeof *l);
    if (l == NULL) {
        rd_kafka_destroy(rk);
        bm_seterr(err, errlen, BM_ENOMEM, "lag handle: out of memory");
        return NULL;
    }
    l->rk = rk;
    return l;
bad:
    rd_kafka_conf_destroy(c);
    bm_seterr(err, errlen, BM_EKAFKA, "lag handle: %s", msg);
    return NULL;
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
        if (rd_kafka_query_watermark_offsets(l->rk, items[i].topic, items[i].partition, &lo, &hi,
                                             1000) != RD_KAFKA_RESP_ERR_NO_ERROR)
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
    rd_kafka_destroy(l->rk);
    free(l);
}
