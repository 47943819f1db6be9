/* Reading a whole audit topic (see read.h). Invariant: a partition counts
 * as done once a record at or past its end offset (the high watermark when
 * the read began) was seen or its start already is that end, so records
 * produced during the read are never waited for. */
#define _POSIX_C_SOURCE 200809L
#include "audit/read.h"

#include <stdlib.h>
#include <time.h>

#include "common/clock.h"
#include "common/err.h"

int bm_audit_read(const struct bm_bus_conf *conf, const char *topic, int64_t from,
                  int64_t tail, int timeout_ms, bm_audit_read_fn fn, void *opaque,
                  int *partitions, char *err, size_t errlen)
{
    if (partitions != NULL)
        *partitions = 0;
    struct bm_admin *adm = bm_admin_new(conf, err, errlen);
    if (adm == NULL)
        return BM_EKAFKA;
    int np = 0;
    int rc = bm_admin_topic_partitions(adm, topic, timeout_ms, &np, err, errlen);
    bm_admin_free(adm);
    if (rc != BM_OK)
        return rc;
    if (partitions != NULL)
        *partitions = np;
    struct bm_consumer *c = bm_consumer_new(conf, NULL, NULL, NULL, err, errlen);
    if (c == NULL)
        return BM_EKAFKA;
    struct bm_bus_tp *tps = calloc((size_t)np, sizeof *tps);
    int64_t *end = calloc((size_t)np, sizeof *end);
    if (tps == NULL || end == NULL) {
        rc = bm_seterr(err, errlen, BM_ENOMEM, "audit read: out of memory");
        goto out;
    }
    size_t nassign = 0;
    for (int p = 0; p < np; p++) {
        int64_t low = 0, high = 0;
        /* A topic created moments ago may not have a leader yet: transient
         * errors are retried until the deadline. */
        int64_t deadline = bm_mono_ms() + timeout_ms;
        while ((rc = bm_consumer_watermarks(c, topic, p, timeout_ms, &low, &high, err,
                                            errlen)) == BM_EKAFKA &&
               bm_mono_ms() < deadline) {
            struct timespec ts = {0, 200 * 1000000L};
            nanosleep(&ts, NULL);
        }
        if (rc != BM_OK)
            goto out;
        int64_t start = tail > 0 ? high - tail : from;
        if (start < low)
            start = low;
        end[p] = high;
        if (start < high)
            tps[nassign++] = (struct bm_bus_tp){topic, p, start};
    }
    size_t open = nassign;
    if (nassign > 0 && (rc = bm_consumer_assign(c, tps, nassign, err, errlen)) != BM_OK)
        goto out;
    int64_t idle_since = bm_mono_ms();
    while (open > 0) {
        struct bm_bus_msg *m = NULL;
        rc = bm_consumer_poll(c, 200, &m, err, errlen);
        if (rc == BM_ETIMEDOUT || rc == BM_EKAFKA) {
            /* Transient consumer errors are retried until the deadline. */
            if (bm_mono_ms() - idle_since > timeout_ms) {
                rc = bm_seterr(err, errlen, BM_ETIMEDOUT,
                               "audit read: %s: no progress for %d ms (%zu partitions open)",
                               topic, timeout_ms, open);
                goto out;
            }
            continue;
        }
        if (rc != BM_OK)
            goto out;
        idle_since = bm_mono_ms();
        int32_t p = m->partition;
        if (p >= 0 && p < np && m->offset < end[p]) {
            int frc = fn(p, m->offset, m->value, m->value ? m->valuelen : 0, opaque);
            if (frc != 0) {
                bm_bus_msg_free(m);
                rc = frc;
                goto out;
            }
        }
        if (p >= 0 && p < np && end[p] >= 0 && m->offset >= end[p] - 1) {
            end[p] = -1; /* done: later records of p are ignored */
            open--;
        }
        bm_bus_msg_free(m);
    }
    rc = BM_OK;
out:
    free(tps);
    free(end);
    bm_consumer_free(c);
    return rc;
}
