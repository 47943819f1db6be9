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

#include "bus/dlq.h"
#include "common/assert.h"
#include "common/clock.h"
#include "common/err.h"
#include "obs/log.h"
#include "obs/metrics.h"
#include "wire/decode.h"
#include "wire/headers.h"
#include "wire/job.h"
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
    free(e->dlq_hdrs);
    free(e);
}

/* Copy the dlq record's headers into one block: the array, then each name
 * and value. Returns 0, or -1 on ENOMEM (nothing kept). */
static int copy_headers(struct wk_entry *e, const struct bm_bus_headers *src)
{
    size_t n = src->n;
    if (n == 0)
        return 0;
    size_t bytes = n * sizeof(struct bm_bus_header);
    for (size_t i = 0; i < n; i++)
        bytes += strlen(src->v[i].name) + 1 + src->v[i].len;
    struct bm_bus_header *h = malloc(bytes);
    if (h == NULL)
        return -1;
    char *p = (char *)(h + n);
    for (size_t i = 0; i < n; i++) {
        size_t nl = strlen(src->v[i].name) + 1;
        memcpy(p, src->v[i].name, nl);
        h[i].name = p;
        p += nl;
        h[i].len = src->v[i].len;
        h[i].value = NULL;
        if (src->v[i].value != NULL) {
            memcpy(p, src->v[i].value, h[i].len);
            h[i].value = p;
            p += h[i].len;
        }
    }
    e->dlq_hdrs = h;
    e->ndlq_hdrs = n;
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
        for (size_t i = 0; i < e->ndlq_hdrs; i++)
            bm_bus_headers_add(&h, e->dlq_hdrs[i].name, e->dlq_hdrs[i].value, e->dlq_hdrs[i].len);
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

/* A partial's key is its job's key, (agency, job id): all partials of a
 * job share the aggregator partition of its opened marker. */
static void take_key(struct wk_entry *e, const Biomatch__V1__PartialResult *pr)
{
    char key[BM_WIRE_JOB_KEY_MAX];
    size_t n = bm_wire_job_key(pr->agency, pr->job_id, key, sizeof key);
    e->key = n > 0 ? malloc(n + 1) : NULL;
    if (e->key != NULL) {
        memcpy(e->key, key, n + 1);
        e->keylen = n;
    }
}

/* Encode 'pr' within 'limit' bytes. Intake refuses jobs whose answers
 * could exceed the record size limit, so this only matters when that
 * bound was wrong: the lowest-ranked candidates of every probe go first
 * (keeping ranks below a shrinking cut), and the partial says how many
 * were left out (RESULT_TRUNCATED, docs/wire.md). Returns the malloc'd
 * bytes or NULL on ENOMEM. */
static uint8_t *encode_bounded(const Biomatch__V1__PartialResult *pr, size_t limit, size_t *len)
{
    if (protobuf_c_message_get_packed_size(&pr->base) <= limit)
        return bm_wire_encode(&pr->base, len);
    Biomatch__V1__PartialResult t = *pr;
    Biomatch__V1__Candidate **kept = malloc((pr->n_candidates + 1) * sizeof *kept);
    if (kept == NULL)
        return NULL;
    uint32_t cut = 0;
    for (size_t i = 0; i < pr->n_candidates; i++)
        if (pr->candidates[i]->rank > cut)
            cut = pr->candidates[i]->rank;
    do {
        cut = cut * 3 / 4;
        t.n_candidates = 0;
        for (size_t i = 0; i < pr->n_candidates; i++)
            if (pr->candidates[i]->rank <= cut)
                kept[t.n_candidates++] = pr->candidates[i];
        t.candidates = kept;
    } while (cut > 0 && protobuf_c_message_get_packed_size(&t.base) > limit);
    t.candidates_left_out = (uint32_t)(pr->n_candidates - t.n_candidates);
    t.error_code = BIOMATCH__V1__ERROR_CODE__ERROR_CODE_RESULT_TRUNCATED;
    t.error = (char *)"partial over the record size limit: lowest-ranked candidates left out";
    uint8_t *out = bm_wire_encode(&t.base, len);
    free(kept);
    return out;
}

void wk_publish_partial(struct wk *w, struct wk_gallery *g, struct wk_entry *e,
                        const Biomatch__V1__PartialResult *pr, enum wk_status status)
{
    bm_counter_inc(g->tasks[status]);
    e->dest = w->partials;
    take_key(e, pr);
    /* Headroom for headers and Kafka's record framing. */
    size_t limit = (size_t)w->conf->topics.max_record_bytes;
    e->value = encode_bounded(pr, limit > 8192 ? limit - 4096 : limit / 2, &e->valuelen);
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
    pr.agency = task->agency;
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
    /* The entry keeps its own copy: 'm' is gone before a re-send. */
    struct bm_dlq_rec r;
    bm_dlq_build(&r, m, code, why, (size_t)w->conf->topics.max_record_bytes,
                 w->conf->topics.dlq_stubs_only);
    if (copy_headers(e, &r.h) != 0)
        BM_LOGF(BM_LOG_WARN, "out of memory copying headers; dlq record goes without them",
                BM_LF_STR("gallery", g->name));
    if (r.keylen > 0) {
        e->key = malloc(r.keylen);
        if (e->key != NULL) {
            memcpy(e->key, r.key, r.keylen);
            e->keylen = r.keylen;
        }
    }
    e->value = malloc(r.valuelen > 0 ? r.valuelen : 1);
    if (e->value == NULL || (r.keylen > 0 && e->key == NULL))
        return;
    if (r.valuelen > 0)
        memcpy(e->value, r.value, r.valuelen);
    e->valuelen = r.valuelen;
    send_entry(w, e);
}
