/* Partition reads for rebuild and resync (see logread.h). Invariant: the
 * callback sees each record at most once, in offset order, and only
 * records below the watermark taken at the start, so a read always ends. */
#include "logread.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <librdkafka/rdkafka.h>

#include "common/err.h"

static rd_kafka_t *open_reader(const struct bm_bus_conf *conf, char *err, size_t errlen)
{
    char msg[512];
    rd_kafka_conf_t *rc = rd_kafka_conf_new();
    if (rc == NULL) {
        bm_seterr(err, errlen, BM_ENOMEM, "logread: out of memory");
        return NULL;
    }
    const struct bm_bus_prop base[] = {
        {"bootstrap.servers", conf->bootstrap_servers},
        {"client.id", conf->client_id ? conf->client_id : "biomatch"},
        {"group.id", "biomatch.logread"},  /* required by assign; never joined */
        {"enable.auto.commit", "false"},
        {"enable.auto.offset.store", "false"},
        {"enable.partition.eof", "true"},
        {"fetch.max.bytes", "67108864"},
        {"max.partition.fetch.bytes", "16777216"},
    };
    for (size_t i = 0; i < sizeof base / sizeof base[0] + conf->nprops; i++) {
        const struct bm_bus_prop *p = i < sizeof base / sizeof base[0]
                                          ? &base[i]
                                          : &conf->props[i - sizeof base / sizeof base[0]];
        /* Producer-only or group-only properties of the shared map do not
         * apply to a reader; librdkafka warns about them and goes on. */
        if (rd_kafka_conf_set(rc, p->key, p->value, msg, sizeof msg) == RD_KAFKA_CONF_INVALID) {
            rd_kafka_conf_destroy(rc);
            bm_seterr(err, errlen, BM_EINVAL, "logread: %s", msg);
            return NULL;
        }
    }
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, rc, msg, sizeof msg);
    if (rk == NULL) {
        rd_kafka_conf_destroy(rc);
        bm_seterr(err, errlen, BM_EKAFKA, "logread: %s", msg);
        return NULL;
    }
    rd_kafka_poll_set_consumer(rk);
    return rk;
}

int bm_logread(const struct bm_bus_conf *conf, const char *topic, int32_t partition,
               int64_t from, int timeout_ms, bm_logread_fn fn, void *opaque, int64_t *end,
               char *err, size_t errlen)
{
    rd_kafka_t *rk = open_reader(conf, err, errlen);
    if (rk == NULL)
        return BM_EKAFKA;
    int rc = BM_OK;
    int64_t lo = 0, hi = 0;
    rd_kafka_resp_err_t e =
        rd_kafka_query_watermark_offsets(rk, topic, partition, &lo, &hi, timeout_ms);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
        rc = bm_seterr(err, errlen, BM_EKAFKA, "logread: watermarks of %s/%d: %s", topic,
                       (int)partition, rd_kafka_err2str(e));
        goto out;
    }
    if (end != NULL)
        *end = hi;
    if (from < lo)
        from = lo;
    if (from >= hi)
        goto out;
    rd_kafka_topic_partition_list_t *tl = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(tl, topic, partition)->offset = from;
    e = rd_kafka_assign(rk, tl);
    rd_kafka_topic_partition_list_destroy(tl);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
        rc = bm_seterr(err, errlen, BM_EKAFKA, "logread: assign: %s", rd_kafka_err2str(e));
        goto out;
    }
    int64_t next = from;
    int idle = 0;
    while (next < hi) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 200);
        if (m == NULL) {
            idle += 200;
            if (idle >= timeout_ms) {
                rc = bm_seterr(err, errlen, BM_ETIMEDOUT,
                               "logread: %s/%d stalled at offset %lld of %lld", topic,
                               (int)partition, (long long)next, (long long)hi);
                break;
            }
            continue;
        }
        idle = 0;
        if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
            /* Compaction may have removed the records before hi. */
            if (m->offset >= hi)
                next = hi;
            else if (m->offset > next)
                next = m->offset;
            rd_kafka_message_destroy(m);
            if (next >= hi)
                break;
            continue;
        }
        if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
            rc = bm_seterr(err, errlen, BM_EKAFKA, "logread: %s", rd_kafka_message_errstr(m));
            rd_kafka_message_destroy(m);
            break;
        }
        if (m->offset >= next && m->offset < hi) {
            int r = fn(m->offset, m->key, m->key_len, m->payload, m->len, opaque);
            next = m->offset + 1;
            if (r != 0) {
                rd_kafka_message_destroy(m);
                rc = r;
                break;
            }
        }
        rd_kafka_message_destroy(m);
    }
out:
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    return rc;
}
