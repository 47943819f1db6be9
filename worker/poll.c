/* Task intake on the poll thread: decode a polled record with the size
 * limit, validate it against the gallery definition and hand it to the
 * scoring thread.
 *
 * Invariant: every record polled from an assigned partition gets an
 * in-flight entry before anything else happens, and exactly one answer: a
 * dlq copy (undecodable), an ERROR partial (decodes but is not a valid task
 * for this shard), or the scoring thread's partial. Nothing here blocks:
 * the poll loop must keep polling within max.poll.interval.ms. */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/err.h"
#include "obs/log.h"
#include "obs/skew.h"
#include "wire/decode.h"
#include "wire/headers.h"
#include "wire/job.h"
#include "fault.h"
#include "worker.h"

void wk_handle_msg(struct wk *w, struct wk_gallery *g, struct bm_bus_msg *m)
{
    struct wk_part *p = wk_part_find(g, m->partition);
    if (p == NULL || atomic_load(&w->draining)) {
        /* Not ours (any more), or we are leaving: unstored, it is fetched
         * again by the partition's next owner. */
        bm_bus_msg_free(m);
        return;
    }
    if (p->paused) {
        /* The bus never hands out a message of a paused partition (it
         * holds them back). One here means that broke: its shard may not
         * be loaded, and dropping it would skip it when the partition
         * resumes. Stop, so it is redelivered. */
        BM_LOGF(BM_LOG_ERROR, "task polled from a paused partition; stopping",
                BM_LF_STR("gallery", g->name), BM_LF_INT("partition", m->partition));
        atomic_store(&w->stuck, 1);
        bm_bus_msg_free(m);
        return;
    }
    atomic_store(&p->next_offset, m->offset + 1);
    bm_skew_observe(w->skew, m->timestamp_ms, bm_wall_ms() + wk_fault_clock_offset_ms());
    struct wk_entry *e = wk_entry_push(p, m->offset);
    if (e == NULL) {
        /* No entry means no answer: later offsets must not be stored past
         * this one, so stop the worker and let the task be redelivered. */
        BM_LOGF(BM_LOG_ERROR, "out of memory; stopping", BM_LF_STR("gallery", g->name));
        atomic_store(&w->stuck, 1);
        bm_bus_msg_free(m);
        return;
    }
    char err[512];
    ProtobufCMessage *pm = NULL;
    static const uint8_t empty[1];
    const uint8_t *val = m->value != NULL ? m->value : empty;
    int rc = bm_wire_decode(&biomatch__v1__match_task__descriptor, val, m->valuelen,
                            w->max_task_bytes, &pm, NULL, err, sizeof err);
    if (rc == BM_OK) {
        const struct bm_bus_header *ct =
            bm_bus_header_find(m->headers, m->nheaders, BM_HDR_CONTENT_TYPE);
        if (ct != NULL && !bm_wire_content_type_ok(ct->value, ct->len,
                                                   &biomatch__v1__match_task__descriptor)) {
            snprintf(err, sizeof err, "content-type contradicts MatchTask");
            rc = BM_EPROTO;
        } else if (((Biomatch__V1__MatchTask *)pm)->job_id[0] == '\0') {
            snprintf(err, sizeof err, "task without job_id");
            rc = BM_EPROTO;
        }
    }
    if (rc != BM_OK) {
        bm_wire_free(pm);
        wk_publish_dlq(w, g, e, m, rc == BM_EPROTO || rc == BM_ERANGE
                                       ? bm_wire_error_of(rc)
                                       : BIOMATCH__V1__ERROR_CODE__ERROR_CODE_INTERNAL, err);
        bm_bus_msg_free(m);
        return;
    }
    Biomatch__V1__MatchTask *task = (Biomatch__V1__MatchTask *)pm;
    const struct bm_bus_header *tp = bm_bus_header_find(m->headers, m->nheaders, BM_HDR_TRACEPARENT);
    if (tp != NULL && tp->value != NULL && tp->len < sizeof e->traceparent &&
        bm_wire_traceparent_valid(tp->value, tp->len)) {
        memcpy(e->traceparent, tp->value, tp->len);
        e->traceparent[tp->len] = '\0';
    }
    e->submitted_unix_ms = task->submitted_unix_ms;
    int64_t now_us = bm_mono_us();
    bm_bus_msg_free(m);

    Biomatch__V1__ErrorCode code;
    if (bm_wire_validate_task(task, g->def, p->shard->index, &w->limits, &code, err,
                              sizeof err) != BM_OK) {
        wk_publish_error(w, g, e, task, p->shard->index, code, err, WK_ST_ERROR);
        bm_wire_free_task(task);
        return;
    }
    struct wk_task *t = calloc(1, sizeof *t);
    if (t == NULL) {
        wk_publish_error(w, g, e, task, p->shard->index,
                         BIOMATCH__V1__ERROR_CODE__ERROR_CODE_INTERNAL, "out of memory",
                         WK_ST_ERROR);
        bm_wire_free_task(task);
        return;
    }
    t->entry = e;
    t->shard = p->shard;
    t->msg = task;
    t->enqueued_us = now_us;
    pthread_mutex_lock(&w->lock);
    p->shard->pins++;
    pthread_mutex_unlock(&w->lock);
    wk_scorer_submit(w, t);
}
