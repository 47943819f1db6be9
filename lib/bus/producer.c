/* The idempotent producer.
 *
 * Each accepted send carries a small heap record (callback + opaque) as its
 * librdkafka message opaque; the delivery-report callback, which librdkafka
 * runs inside rd_kafka_poll/rd_kafka_flush on the caller's thread, invokes
 * it and frees it. Invariant: a record exists exactly for messages that
 * librdkafka accepted, so each accepted send reports exactly once and a
 * refused send never reports (its record is freed on the spot). */
#include "bus/internal.h"

#include <stdlib.h>
#include <string.h>

#include "common/err.h"

struct bm_producer {
    struct bm_bus_base base; /* must stay first: librdkafka's opaque */
    rd_kafka_t *rk;
};

struct pending {
    bm_delivery_fn cb;
    void *opaque;
};

static void dr_msg_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    (void)opaque;
    struct pending *pd = m->_private;
    if (pd == NULL)
        return;
    struct bm_delivery d;
    if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR)
        d.err = BM_OK;
    else if (m->err == RD_KAFKA_RESP_ERR__PURGE_QUEUE ||
             m->err == RD_KAFKA_RESP_ERR__PURGE_INFLIGHT)
        d.err = BM_ECLOSED;
    else
        d.err = BM_EKAFKA;
    d.errstr = d.err == BM_OK ? "" : rd_kafka_err2str(m->err);
    d.topic = m->rkt != NULL ? rd_kafka_topic_name(m->rkt) : "";
    d.partition = m->partition;
    d.offset = d.err == BM_OK ? m->offset : -1;
    pd->cb(&d, pd->opaque);
    free(pd);
}

/* Only installed when the application gave a log function; otherwise
 * librdkafka logs these itself. */
static void error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    (void)rk;
    struct bm_bus_base *base = opaque;
    base->log(base->log_opaque, err == RD_KAFKA_RESP_ERR__FATAL ? 2 : 3,
              "ERROR", reason);
}

struct bm_producer *bm_producer_new(const struct bm_bus_conf *conf, char *err,
                                    size_t errlen)
{
    /* linger.ms=5 batches a burst of partials without adding latency a
     * person would notice; lz4 is cheap and shrinks protobuf well. */
    static const struct bm_bus_prop defaults[] = {
        {"enable.idempotence", "true"},
        {"acks", "all"},
        {"compression.type", "lz4"},
        {"linger.ms", "5"},
        {NULL, NULL},
    };
    struct bm_producer *p = calloc(1, sizeof *p);
    if (p == NULL) {
        bm_seterr(err, errlen, BM_ENOMEM, "producer: out of memory");
        return NULL;
    }
    rd_kafka_conf_t *rc = bm_bus_conf_build(conf, defaults, &p->base, err, errlen);
    if (rc == NULL) {
        free(p);
        return NULL;
    }
    rd_kafka_conf_set_dr_msg_cb(rc, dr_msg_cb);
    if (conf->log != NULL)
        rd_kafka_conf_set_error_cb(rc, error_cb);
    char msg[512];
    p->rk = rd_kafka_new(RD_KAFKA_PRODUCER, rc, msg, sizeof msg);
    if (p->rk == NULL) {
        rd_kafka_conf_destroy(rc); /* rd_kafka_new owns it only on success */
        free(p);
        bm_seterr(err, errlen, BM_EKAFKA, "producer: %s", msg);
        return NULL;
    }
    return p;
}

int bm_producer_send(struct bm_producer *p, const char *topic, int32_t partition,
                     const void *key, size_t keylen, const void *value,
                     size_t valuelen, const struct bm_bus_header *headers,
                     size_t nheaders, bm_delivery_fn cb, void *opaque)
{
    if (p == NULL || topic == NULL || partition < BM_PARTITION_ANY ||
        (nheaders > 0 && headers == NULL))
        return BM_EINVAL;
    rd_kafka_headers_t *hdrs = NULL;
    if (nheaders > 0) {
        hdrs = rd_kafka_headers_new(nheaders);
        if (hdrs == NULL)
            return BM_ENOMEM;
        for (size_t i = 0; i < nheaders; i++) {
            if (headers[i].name == NULL ||
                rd_kafka_header_add(hdrs, headers[i].name, -1, headers[i].value,
                                    (ssize_t)headers[i].len) != 0) {
                rd_kafka_headers_destroy(hdrs);
                return BM_EINVAL;
            }
        }
    }
    struct pending *pd = NULL;
    if (cb != NULL) {
        pd = malloc(sizeof *pd);
        if (pd == NULL) {
            if (hdrs != NULL)
                rd_kafka_headers_destroy(hdrs);
            return BM_ENOMEM;
        }
        pd->cb = cb;
        pd->opaque = opaque;
    }
    rd_kafka_resp_err_t e;
    if (hdrs != NULL)
        e = rd_kafka_producev(p->rk, RD_KAFKA_V_TOPIC(topic),
                              RD_KAFKA_V_PARTITION(partition),
                              RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                              RD_KAFKA_V_KEY(key, keylen),
                              RD_KAFKA_V_VALUE((void *)value, valuelen),
                              RD_KAFKA_V_HEADERS(hdrs), RD_KAFKA_V_OPAQUE(pd),
                              RD_KAFKA_V_END);
    else
        e = rd_kafka_producev(p->rk, RD_KAFKA_V_TOPIC(topic),
                              RD_KAFKA_V_PARTITION(partition),
                              RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                              RD_KAFKA_V_KEY(key, keylen),
                              RD_KAFKA_V_VALUE((void *)value, valuelen),
                              RD_KAFKA_V_OPAQUE(pd), RD_KAFKA_V_END);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
        /* librdkafka takes the headers only on success; and its destroy
         * is not NULL-safe. */
        if (hdrs != NULL)
            rd_kafka_headers_destroy(hdrs);
        free(pd);
        return bm_bus_err_map(e);
    }
    return BM_OK;
}

int bm_producer_poll(struct bm_producer *p, int timeout_ms)
{
    return rd_kafka_poll(p->rk, timeout_ms);
}

int bm_producer_flush(struct bm_producer *p, int timeout_ms)
{
    rd_kafka_resp_err_t e = rd_kafka_flush(p->rk, timeout_ms);
    if (e == RD_KAFKA_RESP_ERR__TIMED_OUT)
        return BM_ETIMEDOUT;
    return bm_bus_err_map(e);
}

int bm_producer_outstanding(const struct bm_producer *p)
{
    return rd_kafka_outq_len(p->rk);
}

int bm_producer_fatal(const struct bm_producer *p, char *err, size_t errlen)
{
    char msg[512];
    rd_kafka_resp_err_t e = rd_kafka_fatal_error(p->rk, msg, sizeof msg);
    if (e == RD_KAFKA_RESP_ERR_NO_ERROR)
        return BM_OK;
    return bm_seterr(err, errlen, BM_EKAFKA, "producer fatal error %s: %s",
                     rd_kafka_err2name(e), msg);
}

void bm_producer_free(struct bm_producer *p)
{
    if (p == NULL)
        return;
    /* Purging turns every outstanding message into a delivery report with a
     * purge error, which the flush below serves, so no record leaks and
     * every accepted send still reports exactly once. The bound only
     * matters if librdkafka itself is stuck. */
    rd_kafka_purge(p->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    rd_kafka_flush(p->rk, 5000);
    rd_kafka_destroy(p->rk);
    free(p);
}
