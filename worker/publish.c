/* Answers and offsets: every polled task record gets exactly one answer (a
 * PartialResult on the partials topic, or for undecodable bytes a copy on the
 * dlq), and its offset is stored only once that answer was delivered.
 *
 * Invariant: per partition, entries sit in a queue in offset order; a
 * delivery marks its entry done and the longest done prefix is popped and
 * its next offset stored. So a stored offset never skips an unanswered
 * task, whatever order the scoring thread and the broker finish in. Entries
 * and queues are touched only on the poll thread (delivery reports are
 * served there); the answer bytes are written by whichever thread builds
 * them before the send that hands them to the poll thread. */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/assert.h"
#include "common/clock.h"
#include "common/err.h"
#include "obs/log.h"
#include "obs/metrics.h"
#include "wire/decode.h"
#include "wire/headers.h"
#include "worker.h"

struct wk_entry *wk_entry_push(struct wk_part *p, int64_t offset)
{
    BM_ASSERT(p != NULL && offset >= 0);
    struct wk_entry *e = calloc(1, sizeof *e);
    if (e == NULL)
        return NULL;
    e->part = p;
    e->offset = offset;
    if (p->tail != NULL)
        p->tail->next = e;
    else
        p->head = e;
    p->tail = e;
    return e;
}

void wk_entry_free(struct wk_entry *e)
{
    if (e == NULL)
        return;
    free(e->value);
    free(e->key);
    free(e->orig_hdrs);
    free(e);
}

/* Copy a record's headers into one block: the array, then each name and
 * value. Returns 0, or -1 on ENOMEM (nothing kept). */
static int copy_headers(struct wk_entry *e, const struct bm_bus_msg *m)
{
    size_t n = m->nheaders < BM_BUS_MAX_HEADERS ? m->nheaders : BM_BUS_MAX_HEADERS;
    if (n == 0)
        return 0;
    size_t bytes = n * sizeof(struct bm_bus_header);
    for (size_t i = 0; i < n; i++)
        bytes += strlen(m->headers[i].name) + 1 + m->headers[i].len;
    struct bm_bus_header *h = malloc(bytes);
    if (h == NULL)
        return -1;
    char *p = (char *)(h + n);
    for (size_t i = 0; i < n; i++) {
        size_t nl = strlen(m->headers[i].name) + 1;
        memcpy(p, m->headers[i].name, nl);
        h[i].name = p;
        p += nl;
        h[i].len = m->headers[i].len;
        h[i].value = NULL;
        if (m->headers[i].value != NULL) {
            memcpy(p, m->headers[i].value, h[i].len);
            h[i].value = p;
            p += h[i].len;
        }
    }
    e->orig_hdrs = h;
    e->norig_hdrs = n;
    return 0;
}

static void on_delivery(const struct bm_delivery *d, void *opaque);

/* Send the answer held by 'e', waiting out a full queue or an outage: on
 * the poll thread by serving delivery reports (they are what frees the
 * queue), on the scoring thread by sleeping while the poll thread does. */
static int send_entry(struct wk *w, struct wk_entry *e)
{
    struct bm_bus_headers h;
    bm_bus_headers_init(&h);
    if (e->dest == w->dlq) {
        /* Keep the record's own headers (room is left for 'error'). */
        for (size_t i = 0; i < e->norig_hdrs && h.n + 1 < BM_BUS_MAX_HEADERS; i++)
            if (strcmp(e->orig_hdrs[i].name, BM_HDR_ERROR) != 0)
                bm_bus_headers_add(&h, e->orig_hdrs[i].name, e->orig_hdrs[i].value,
                                   e->orig_hdrs[i].len);
        bm_bus_headers_add_str(&h, BM_HDR_ERROR, e->error_hdr);
    } else {
        bm_bus_headers_add_str(&h, BM_HDR_CONTENT_TYPE, w->content_type);
        if (e->traceparent[0] != '\0')
            bm_bus_headers_add_str(&h, BM_HDR_TRACEPARENT, e->traceparent);
    }
    int flags = pthread_equal(pthread_self(), w->poller) ? BM_SEND_SERVE : 0;
    int rc = bm_producer_send_wait(w->producer, e->dest, BM_PARTITION_ANY, e->key, e->keylen,
                                   e->value, e->valuelen, h.v, h.n, flags, on_delivery, e);
    if (rc == BM_ECLOSED && bm_producer_fatal(w->producer, NULL, 0) != BM_OK) {
        /* The producer is gone for good: restart, and the task is
         * redelivered to whoever owns the partition next. */
        BM_LOGF(BM_LOG_ERROR, "cannot send answer; restarting so the task is redelivered",
                BM_LF_STR("topic", e->dest), BM_LF_STR("error", bm_strerror(rc)));
        atomic_store(&w->stuck, 1);
    } else if (rc != BM_OK && rc != BM_ECLOSED) {
        /* Refused for good before it was queued (answers are bounded to
         * fit, so this is a missing or forbidden topic): the entry stays
         * undone, its partition's offsets stop here and the task is
         * redelivered after a rebalance; the process goes on. */
        bm_counter_inc(w->refused);
        BM_LOGF(BM_LOG_ERROR, "answer refused by Kafka", BM_LF_STR("topic", e->dest),
                BM_LF_STR("error", bm_strerror(rc)));
    }
    return rc;
}

static void on_delivery(const struct bm_delivery *d, void *opaque)
{
    struct wk_entry *e = opaque;
    struct wk_part *p = e->part;
    struct wk *w = p->g->w;
    if (d->err == BM_ECLOSED)
        return; /* shutting down: the entry is freed with its partition */
    if (d->err != BM_OK) {
        /* Transient failures never get here (lib/bus re-sends them). A
         * permanent refusal is this task's outcome: counted and logged,
         * and the offset moves on (the aggregator sees the shard missing:
         * PARTIAL). Nothing here may block: this is the poll thread. */
        bm_counter_inc(w->refused);
        BM_LOGF(BM_LOG_ERROR, "answer refused by Kafka; task answered without it",
                BM_LF_STR("topic", e->dest), BM_LF_STR("error", d->errstr));
    } else if (e->submitted_unix_ms > 0) {
        int64_t now = bm_wall_ms();
        if (now >= e->submitted_unix_ms)
            bm_histogram_observe(p->g->e2e_seconds, (double)(now - e->submitted_unix_ms) / 1000.0);
    }
    free(e->value);
    e->value = NULL;
    e->done = 1;
    wk_part_advance(w, p);
}

static void unlink_zombie(struct wk *w, struct wk_part *p)
{
    pthread_mutex_lock(&w->lock);
    for (struct wk_part **pp = &w->zombies; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == p) {
            *pp = p->next;
            break;
        }
    }
    pthread_mutex_unlock(&w->lock);
}

void wk_part_advance(struct wk *w, struct wk_part *p)
{
    int64_t next = -1;
    while (p->head != NULL && p->head->done) {
        struct wk_entry *e = p->head;
        p->head = e->next;
        if (p->head == NULL)
            p->tail = NULL;
        next = e->offset + 1;
        wk_entry_free(e);
    }
    if (p->revoked) {
        /* The new owner redoes whatever we did not store before the
         * revoke; storing now would be refused (BM_ECONFLICT) anyway. */
        if (p->head == NULL) {
            unlink_zombie(w, p);
            free(p);
        }
        return;
    }
    if (next >= 0) {
        int rc = bm_consumer_store_offset(p->g->consumer, p->g->topic, p->partition, next);
        if (rc != BM_OK && rc != BM_ECONFLICT)
            BM_LOGF(BM_LOG_WARN, "offset store failed", BM_LF_STR("gallery", p->g->name),
                    BM_LF_INT("partition", p->partition), BM_LF_STR("error", bm_strerror(rc)));
    }
}

static void take_key(struct wk_entry *e, const char *job_id)
{
    size_t n = strlen(job_id);
    e->key = malloc(n + 1);
    if (e->key != NULL) {
        memcpy(e->key, job_id, n + 1);
        e->keylen = n;
    }
}

void wk_publish_partial(struct wk *w, struct wk_gallery *g, struct wk_entry *e,
                        const Biomatch__V1__PartialResult *pr, enum wk_status status)
{
    bm_counter_inc(g->tasks[status]);
    e->dest = w->partials;
    take_key(e, pr->job_id);
    e->value = bm_wire_encode(&pr->base, &e->valuelen);
    if (e->value == NULL || e->key == NULL) {
        BM_LOGF(BM_LOG_ERROR, "out of memory encoding a partial", BM_LF_STR("gallery", g->name));
        return; /* undone: redelivered after a restart */
    }
    send_entry(w, e);
}

void wk_publish_error(struct wk *w, struct wk_gallery *g, struct wk_entry *e,
                      const Biomatch__V1__MatchTask *task, uint32_t shard,
                      Biomatch__V1__ErrorCode code, const char *why, enum wk_status status)
{
    Biomatch__V1__PartialResult pr = BIOMATCH__V1__PARTIAL_RESULT__INIT;
    pr.job_id = task->job_id;
    pr.kind = BIOMATCH__V1__PARTIAL_RESULT__KIND__KIND_SHARD;
    pr.shard = shard;
    pr.shard_count = g->shards;
    pr.status = BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_ERROR;
    pr.error_code = code;
    pr.error = (char *)why;
    pr.worker = g->w->conf->node_id;
    BM_LOGF(BM_LOG_INFO, "task answered with an error", BM_LF_STR("gallery", g->name),
            BM_LF_INT("shard", shard), BM_LF_STR("code", bm_wire_error_code_name(code)),
            BM_LF_STR("error", why));
    wk_publish_partial(w, g, e, &pr, status);
}

void wk_publish_dlq(struct wk *w, struct wk_gallery *g, struct wk_entry *e,
                    const struct bm_bus_msg *m, Biomatch__V1__ErrorCode code, const char *why)
{
    bm_counter_inc(g->tasks[WK_ST_DLQ]);
    BM_LOGF(BM_LOG_WARN, "undecodable task sent to the dlq", BM_LF_STR("gallery", g->name),
            BM_LF_INT("partition", m->partition), BM_LF_INT("offset", m->offset),
            BM_LF_STR("code", bm_wire_error_code_name(code)), BM_LF_STR("error", why));
    e->dest = w->dlq;
    bm_wire_dlq_error(code, why, e->error_hdr, sizeof e->error_hdr);
    if (copy_headers(e, m) != 0)
        BM_LOGF(BM_LOG_WARN, "out of memory copying headers; dlq record goes without them",
                BM_LF_STR("gallery", g->name));
    if (m->keylen > 0) {
        e->key = malloc(m->keylen);
        if (e->key != NULL) {
            memcpy(e->key, m->key, m->keylen);
            e->keylen = m->keylen;
        }
    }
    e->value = malloc(m->valuelen > 0 ? m->valuelen : 1);
    if (e->value == NULL || (m->keylen > 0 && e->key == NULL))
        return;
    if (m->valuelen > 0)
        memcpy(e->value, m->value, m->valuelen);
    e->valuelen = m->valuelen;
    send_entry(w, e);
}
