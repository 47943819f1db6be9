/* The idempotent producer that never gives up on a transient error.
 *
 * Each accepted send carries a small heap record (callback + opaque) as its
 * librdkafka message opaque; the delivery-report callback, which librdkafka
 * runs inside rd_kafka_poll/rd_kafka_flush on the caller's thread, invokes
 * it and frees it. Invariant: a record exists exactly for messages that
 * librdkafka accepted or that wait in our re-send list, so each accepted
 * send reports exactly once and a refused send never reports (its record
 * is freed on the spot).
 *
 * A delivery that failed for a transient reason is not reported: the
 * delivery callback copies the message into the re-send list (it must not
 * block or produce from there: it runs on the poll thread, and a full queue
 * would make it wait), and the next poll or flush past the back-off hands
 * it to librdkafka again with the same record. */
#define _POSIX_C_SOURCE 200809L

#include "bus/internal.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/err.h"

#define RESEND_FIRST_MS 100
#define RESEND_MAX_MS 5000
#define SEND_WAIT_MAX_MS 100

struct pending {
    bm_delivery_fn cb;
    void *opaque;
};

/* A transiently failed message, copied out of librdkafka's report. */
struct resend {
    struct resend *next;
    struct pending *pd;      /* NULL for a send without a callback */
    rd_kafka_headers_t *hdrs; /* NULL when none; ours until producev takes it */
    int32_t partition;
    size_t keylen, valuelen;
    char *key, *value;       /* inside this block (key NULL when none) */
    char topic[];
};

struct bm_producer {
    struct bm_bus_base base; /* must stay first: librdkafka's opaque */
    rd_kafka_t *rk;
    bm_bus_wait_fn on_wait;
    void *wait_opaque;
    const atomic_int *stop;
    pthread_mutex_t lock;    /* guards everything below */
    struct resend *rs_head, *rs_tail;
    atomic_int nresend;      /* entries in the list; read without the lock */
    int64_t resend_at_ms;    /* monotonic time the list may be sent again */
    int64_t resend_delay_ms; /* current back-off */
    int senders_waiting;     /* threads backing off in bm_producer_send_wait */
    int broker_down;         /* librdkafka reported every broker down */
    int waiting;             /* the state last reported to on_wait */
    int wait_err;
    char wait_why[160];
};

/* Recompute the waiting state and report a change. Caller holds p->lock. */
static void wait_update(struct bm_producer *p, int err, const char *why)
{
    if (err != BM_OK) {
        p->wait_err = err;
        snprintf(p->wait_why, sizeof p->wait_why, "%s", why);
    }
    int w = p->senders_waiting > 0 || p->nresend > 0 ||
            (p->broker_down && rd_kafka_outq_len(p->rk) > 0);
    if (w == p->waiting)
        return;
    p->waiting = w;
    if (p->on_wait != NULL)
        p->on_wait(p->wait_opaque, w, p->wait_err, p->wait_why);
}

static void report(struct pending *pd, int err, const char *errstr, const char *topic,
                   int32_t partition, int64_t offset)
{
    if (pd == NULL)
        return;
    struct bm_delivery d = {err, errstr, topic, partition, offset};
    pd->cb(&d, pd->opaque);
    free(pd);
}

/* Keep a transiently failed message for re-send. Returns 0, or -1 when it
 * could not be copied (the caller reports it). */
static int resend_keep(struct bm_producer *p, const rd_kafka_message_t *m,
                       struct pending *pd, int err)
{
    const char *topic = rd_kafka_topic_name(m->rkt);
    size_t tlen = strlen(topic) + 1;
    struct resend *r = malloc(sizeof *r + tlen + m->key_len + m->len + 1);
    if (r == NULL)
        return -1;
    r->next = NULL;
    r->pd = pd;
    r->hdrs = NULL;
    rd_kafka_headers_t *h = NULL;
    if (rd_kafka_message_headers(m, &h) == RD_KAFKA_RESP_ERR_NO_ERROR && h != NULL) {
        r->hdrs = rd_kafka_headers_copy(h);
        if (r->hdrs == NULL) {
            free(r);
            return -1;
        }
    }
    /* A message that never got a partition goes back to the partitioner. */
    r->partition = m->partition;
    memcpy(r->topic, topic, tlen);
    r->key = m->key != NULL ? r->topic + tlen : NULL;
    r->keylen = m->key != NULL ? m->key_len : 0;
    if (r->keylen > 0)
        memcpy(r->key, m->key, r->keylen);
    r->value = r->topic + tlen + r->keylen;
    r->valuelen = m->payload != NULL ? m->len : 0;
    if (r->valuelen > 0)
        memcpy(r->value, m->payload, r->valuelen);
    pthread_mutex_lock(&p->lock);
    if (p->nresend == 0) {
        p->resend_at_ms = bm_mono_ms() + p->resend_delay_ms;
        p->resend_delay_ms = p->resend_delay_ms * 2 < RESEND_MAX_MS ? p->resend_delay_ms * 2
                                                                    : RESEND_MAX_MS;
    }
    if (p->rs_tail != NULL)
        p->rs_tail->next = r;
    else
        p->rs_head = r;
    p->rs_tail = r;
    p->nresend++;
    char why[160];
    snprintf(why, sizeof why, "delivery to %s failed, re-sending: %s", topic,
             rd_kafka_err2str(m->err));
    wait_update(p, err, why);
    pthread_mutex_unlock(&p->lock);
    return 0;
}

static void dr_msg_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    struct bm_producer *p = opaque;
    struct pending *pd = m->_private;
    int err = bm_bus_err_map(m->err);
    const char *topic = m->rkt != NULL ? rd_kafka_topic_name(m->rkt) : "";
    if (bm_err_transient(err)) {
        if (m->rkt != NULL && resend_keep(p, m, pd, err) == 0)
            return;
        err = BM_ENOMEM;
    }
    if (err == BM_OK) {
        pthread_mutex_lock(&p->lock);
        p->broker_down = 0;
        if (p->nresend == 0)
            p->resend_delay_ms = RESEND_FIRST_MS;
        wait_update(p, BM_OK, "");
        pthread_mutex_unlock(&p->lock);
    }
    report(pd, err, err == BM_OK ? "" : rd_kafka_err2str(m->err), topic, m->partition,
           err == BM_OK ? m->offset : -1);
}

/* Served on the polling thread. Besides logging, it notes an outage, so
 * the producer counts as waiting while it holds records. */
static void error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    (void)rk;
    struct bm_producer *p = opaque;
    if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN) {
        pthread_mutex_lock(&p->lock);
        p->broker_down = 1;
        wait_update(p, BM_EUNAVAIL, reason);
        pthread_mutex_unlock(&p->lock);
    }
    if (p->base.log != NULL)
        p->base.log(p->base.log_opaque, err == RD_KAFKA_RESP_ERR__FATAL ? 2 : 3, "ERROR",
                    reason);
}

/* Hand the re-send list back to librdkafka once its back-off passed.
 * Polling thread. */
static void resend_serve(struct bm_producer *p)
{
    pthread_mutex_lock(&p->lock);
    if (p->nresend == 0 || bm_mono_ms() < p->resend_at_ms) {
        wait_update(p, BM_OK, "");
        pthread_mutex_unlock(&p->lock);
        return;
    }
    struct resend *r = p->rs_head;
    p->rs_head = p->rs_tail = NULL;
    p->nresend = 0;
    pthread_mutex_unlock(&p->lock);
    struct resend *keep = NULL, *keep_last = NULL;
    int nkeep = 0, kept_err = BM_OK;
    while (r != NULL) {
        struct resend *next = r->next;
        r->next = NULL;
        rd_kafka_resp_err_t e = rd_kafka_producev(
            p->rk, RD_KAFKA_V_TOPIC(r->topic), RD_KAFKA_V_PARTITION(r->partition),
            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_KEY(r->key, r->keylen),
            RD_KAFKA_V_VALUE(r->value, r->valuelen), RD_KAFKA_V_HEADERS(r->hdrs),
            RD_KAFKA_V_OPAQUE(r->pd), RD_KAFKA_V_END);
        int err = bm_bus_err_map(e);
        if (err == BM_OK) {
            free(r); /* librdkafka owns the headers now */
        } else if (bm_err_transient(err)) {
            if (keep_last != NULL)
                keep_last->next = r;
            else
                keep = r;
            keep_last = r;
            nkeep++;
            kept_err = err;
        } else {
            if (r->hdrs != NULL)
                rd_kafka_headers_destroy(r->hdrs);
            report(r->pd, err, rd_kafka_err2str(e), r->topic, r->partition, -1);
            free(r);
        }
        r = next;
    }
    pthread_mutex_lock(&p->lock);
    if (nkeep > 0) {
        /* Put them back in front: they are older than anything added since. */
        keep_last->next = p->rs_head;
        if (p->rs_head == NULL)
            p->rs_tail = keep_last;
        p->rs_head = keep;
        p->nresend += nkeep;
        p->resend_at_ms = bm_mono_ms() + p->resend_delay_ms;
    }
    wait_update(p, kept_err, kept_err != BM_OK ? "re-send refused: local queue full" : "");
    pthread_mutex_unlock(&p->lock);
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
        /* librdkafka's largest value (~24.8 days): it keeps retrying a
         * record through an outage instead of failing it after its default
         * 300 s. Not 0 ("infinite"): with 0, librdkafka 2.0.2 stamped
         * records several ms late (test_replay's timing check caught it).
         * A finite value set by an operator still loses nothing: the
         * timed-out record is re-sent (dr_msg_cb). */
        {"message.timeout.ms", "2147483647"},
        {NULL, NULL},
    };
    struct bm_producer *p = calloc(1, sizeof *p);
    if (p == NULL) {
        bm_seterr(err, errlen, BM_ENOMEM, "producer: out of memory");
        return NULL;
    }
    rd_kafka_conf_t *rc = bm_bus_conf_build(conf, BM_BUS_KIND_PRODUCER, defaults, &p->base, err, errlen);
    if (rc == NULL) {
        free(p);
        return NULL;
    }
    p->on_wait = conf->on_wait;
    p->wait_opaque = conf->wait_opaque;
    p->stop = conf->stop;
    p->resend_delay_ms = RESEND_FIRST_MS;
    pthread_mutex_init(&p->lock, NULL);
    rd_kafka_conf_set_dr_msg_cb(rc, dr_msg_cb);
    rd_kafka_conf_set_error_cb(rc, error_cb);
    char msg[512];
    p->rk = rd_kafka_new(RD_KAFKA_PRODUCER, rc, msg, sizeof msg);
    if (p->rk == NULL) {
        rd_kafka_conf_destroy(rc); /* rd_kafka_new owns it only on success */
        pthread_mutex_destroy(&p->lock);
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

int bm_producer_send_wait(struct bm_producer *p, const char *topic, int32_t partition,
                          const void *key, size_t keylen, const void *value,
                          size_t valuelen, const struct bm_bus_header *headers,
                          size_t nheaders, int flags, bm_delivery_fn cb, void *opaque)
{
    int64_t delay = 1;
    int waited = 0, rc;
    for (;;) {
        rc = bm_producer_send(p, topic, partition, key, keylen, value, valuelen, headers,
                              nheaders, cb, opaque);
        if (rc == BM_OK || !bm_err_transient(rc))
            break;
        if (p->stop != NULL && atomic_load(p->stop)) {
            rc = BM_ECLOSED;
            break;
        }
        if (!waited) {
            waited = 1;
            char why[160];
            snprintf(why, sizeof why, "send to %s waits: %s", topic, bm_strerror(rc));
            pthread_mutex_lock(&p->lock);
            p->senders_waiting++;
            wait_update(p, rc, why);
            pthread_mutex_unlock(&p->lock);
        }
        if (flags & BM_SEND_SERVE)
            bm_producer_poll(p, (int)delay);
        else
            bm_sleep_ms(delay);
        delay = delay * 2 < SEND_WAIT_MAX_MS ? delay * 2 : SEND_WAIT_MAX_MS;
    }
    if (waited) {
        pthread_mutex_lock(&p->lock);
        p->senders_waiting--;
        wait_update(p, BM_OK, "");
        pthread_mutex_unlock(&p->lock);
    }
    return rc;
}

int bm_producer_poll(struct bm_producer *p, int timeout_ms)
{
    resend_serve(p);
    return rd_kafka_poll(p->rk, timeout_ms);
}

int bm_producer_flush(struct bm_producer *p, int timeout_ms)
{
    /* rd_kafka_flush alone would not see the re-send list: flush in slices
     * and hand re-sends back between them. */
    int64_t end = bm_mono_ms() + (timeout_ms > 0 ? timeout_ms : 0);
    for (;;) {
        resend_serve(p);
        int64_t left = end - bm_mono_ms();
        int slice = left > 100 ? 100 : (left > 0 ? (int)left : 0);
        rd_kafka_resp_err_t e = rd_kafka_flush(p->rk, slice);
        if (e != RD_KAFKA_RESP_ERR_NO_ERROR && e != RD_KAFKA_RESP_ERR__TIMED_OUT)
            return bm_bus_err_map(e);
        if (bm_producer_outstanding(p) == 0)
            return BM_OK;
        if (left <= 0)
            return BM_ETIMEDOUT;
    }
}

int bm_producer_outstanding(const struct bm_producer *p)
{
    return rd_kafka_outq_len(p->rk) + atomic_load(&p->nresend);
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
    /* No poll is left to re-send: those report as purged too. */
    while (p->rs_head != NULL) {
        struct resend *r = p->rs_head;
        p->rs_head = r->next;
        if (r->hdrs != NULL)
            rd_kafka_headers_destroy(r->hdrs);
        report(r->pd, BM_ECLOSED, "purged while waiting for a re-send", r->topic, r->partition,
               -1);
        free(r);
    }
    rd_kafka_destroy(p->rk);
    pthread_mutex_destroy(&p->lock);
    free(p);
}
