/* The consumer: a group member (cooperative-sticky, offsets stored by the
 * application after its work is done, auto-committed) or a manual reader of
 * chosen partitions.
 *
 * Everything librdkafka wants to tell the application (rebalances, errors,
 * commit results) is routed to the consumer queue, so it all happens inside
 * bm_consumer_poll (or bm_consumer_close) on the one polling thread.
 * Invariant: on_assign sees partitions only after they joined the
 * assignment, on_revoke only before they leave it, and stored offsets of
 * revoked partitions are committed before they leave (unless they were
 * lost), so the next owner starts exactly after the last finished message.
 *
 * Deferred pauses: librdkafka may lose a partition that is paused before
 * its fetch has started (the pause and the fetch start race on the
 * partition's op version; confluentinc/librdkafka#2190, #5591): after the
 * resume it never fetches again, silently. So a pause of a partition that
 * has delivered nothing yet (in on_assign, typically) is only recorded
 * here. The first message that arrives for it is held back and the real
 * pause made then, when the fetch is running and the resume restarts right
 * after the held message; the resume hands the held messages out first, in
 * order. Revocation drops them unprocessed and unstored, like any message
 * the application never saw, and lifts librdkafka's pause. Every pause
 * made through this API is recorded (struct paused), deferred or not, so
 * a revoke never leaves a pause flag behind for a later assignment. */
#include "bus/internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"

/* A message view with a link for the queues below, in one allocation
 * (the header array follows it), so holding a message back cannot fail.
 * bm_bus_msg_free(&b->m) frees the block: 'm' is its first member. */
struct held {
    struct bm_bus_msg m;
    struct held *next;
};

/* A partition the application paused. 'real' is 0 while the pause is
 * deferred (nothing delivered yet, see the top of this file). */
struct paused {
    char *topic;
    int32_t partition;
    int real;                /* librdkafka's pause is made */
    struct held *head, *tail; /* held back, in offset order */
};

struct bm_consumer {
    struct bm_bus_base base; /* must stay first: librdkafka's opaque */
    rd_kafka_t *rk;
    struct bm_consumer_callbacks cbs;
    int grouped;  /* created with a group id */
    int closing;  /* bm_consumer_close has begun */
    int closed;   /* bm_consumer_close has finished */
    int in_assign;           /* on_assign is running */
    struct paused *paused;   /* every partition paused through this API */
    size_t npaused, cappaused;
    struct held *ready, *ready_tail; /* resumed held messages, served first */
};

static struct paused *paused_find(struct bm_consumer *c, const char *topic,
                                  int32_t partition)
{
    for (size_t i = 0; i < c->npaused; i++)
        if (c->paused[i].partition == partition && strcmp(c->paused[i].topic, topic) == 0)
            return &c->paused[i];
    return NULL;
}

static void held_free(struct held *h)
{
    while (h != NULL) {
        struct held *next = h->next;
        bm_bus_msg_free(&h->m);
        h = next;
    }
}

static int pause_resume(struct bm_consumer *c, const char *topic,
                        int32_t partition, int pause);

/* Forget pause 'd': its held messages go to the ready queue with 'keep',
 * else they are dropped, and so is librdkafka's pause (the partition is
 * leaving: a pause flag left behind would survive into a later assignment
 * of it, where a deferred pause never lifts it). */
static void paused_remove(struct bm_consumer *c, struct paused *d, int keep)
{
    if (!keep && d->real)
        pause_resume(c, d->topic, d->partition, 0);
    if (keep && d->head != NULL) {
        if (c->ready_tail != NULL)
            c->ready_tail->next = d->head;
        else
            c->ready = d->head;
        c->ready_tail = d->tail;
    } else {
        held_free(d->head);
    }
    free(d->topic);
    *d = c->paused[--c->npaused];
}

/* Take the messages of 'topic' [partition] out of the ready queue, in
 * order, as a list. */
static struct held *ready_take(struct bm_consumer *c, const char *topic, int32_t partition)
{
    struct held *out = NULL, **out_tail = &out;
    struct held **pp = &c->ready;
    c->ready_tail = NULL;
    while (*pp != NULL) {
        struct held *h = *pp;
        if (h->m.partition == partition && strcmp(h->m.topic, topic) == 0) {
            *pp = h->next;
            h->next = NULL;
            *out_tail = h;
            out_tail = &h->next;
        } else {
            c->ready_tail = h;
            pp = &h->next;
        }
    }
    return out;
}

/* Drop every held or ready message of 'topic' [partition] (revoked). */
static void forget_partition(struct bm_consumer *c, const char *topic, int32_t partition)
{
    struct paused *d = paused_find(c, topic, partition);
    if (d != NULL)
        paused_remove(c, d, 0);
    held_free(ready_take(c, topic, partition));
}

static void forget_all(struct bm_consumer *c)
{
    while (c->npaused > 0)
        paused_remove(c, &c->paused[c->npaused - 1], 0);
    held_free(c->ready);
    c->ready = c->ready_tail = NULL;
}

/* "what: detail" to the application's log function, if any. */
static void log_line(struct bm_consumer *c, int level, const char *what,
                     const char *detail)
{
    if (c->base.log == NULL)
        return;
    char line[512];
    snprintf(line, sizeof line, "%s: %s", what, detail);
    c->base.log(c->base.log_opaque, level, "BUS", line);
}

static void call_user(struct bm_consumer *c, rd_kafka_topic_partition_list_t *parts,
                      int revoke, int lost)
{
    bm_consumer_assign_fn fa = c->cbs.on_assign;
    bm_consumer_revoke_fn fr = c->cbs.on_revoke;
    if ((revoke && fr == NULL) || (!revoke && fa == NULL))
        return;
    struct bm_bus_tp *tps;
    size_t n;
    if (bm_bus_tps_from_list(parts, &tps, &n) != BM_OK) {
        log_line(c, 2, "rebalance", "out of memory, callback skipped");
        return;
    }
    for (size_t i = 0; i < n; i++)
        tps[i].offset = BM_OFFSET_INVALID;
    if (revoke) {
        fr(c, tps, n, lost, c->cbs.opaque);
    } else {
        c->in_assign = 1;
        fa(c, tps, n, c->cbs.opaque);
        c->in_assign = 0;
    }
    free(tps);
}

static void rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    struct bm_consumer *c = opaque;
    int coop = strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;
    rd_kafka_error_t *error = NULL;
    rd_kafka_resp_err_t e = RD_KAFKA_RESP_ERR_NO_ERROR;

    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        if (coop)
            error = rd_kafka_incremental_assign(rk, parts);
        else
            e = rd_kafka_assign(rk, parts);
        if (error == NULL && e == RD_KAFKA_RESP_ERR_NO_ERROR)
            call_user(c, parts, 0, 0);
    } else if (err == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS) {
        int lost = rd_kafka_assignment_lost(rk);
        call_user(c, parts, 1, lost);
        for (int i = 0; i < parts->cnt; i++)
            forget_partition(c, parts->elems[i].topic, parts->elems[i].partition);
        /* Commit what on_revoke and earlier work stored, synchronously,
         * before the partitions go, so the next owner resumes after the
         * last finished message. NULL means "the stored offsets of the
         * current assignment", which still includes 'parts'; passing
         * 'parts' would commit its offsets as is, and they are all
         * INVALID here, so nothing would be committed. librdkafka's own
         * close path commits for us, and a lost partition may already
         * belong to someone else. */
        if (!lost && !c->closing) {
            rd_kafka_resp_err_t ce = rd_kafka_commit(rk, NULL, 0);
            if (ce != RD_KAFKA_RESP_ERR_NO_ERROR &&
                ce != RD_KAFKA_RESP_ERR__NO_OFFSET)
                log_line(c, 4, "commit on revoke", rd_kafka_err2str(ce));
        }
        if (coop)
            error = rd_kafka_incremental_unassign(rk, parts);
        else
            e = rd_kafka_assign(rk, NULL);
    } else {
        log_line(c, 3, "rebalance failed", rd_kafka_err2str(err));
        if (coop && rd_kafka_assignment_lost(rk)) {
            for (int i = 0; i < parts->cnt; i++)
                forget_partition(c, parts->elems[i].topic, parts->elems[i].partition);
            error = rd_kafka_incremental_unassign(rk, parts);
        } else {
            forget_all(c);
            e = rd_kafka_assign(rk, NULL);
        }
    }
    if (error != NULL) {
        log_line(c, 3, "rebalance", rd_kafka_error_string(error));
        rd_kafka_error_destroy(error);
    } else if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
        log_line(c, 3, "rebalance", rd_kafka_err2str(e));
    }
}

static void error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    (void)rk;
    struct bm_bus_base *base = opaque;
    base->log(base->log_opaque, err == RD_KAFKA_RESP_ERR__FATAL ? 2 : 3,
              "ERROR", reason);
}

struct bm_consumer *bm_consumer_new(const struct bm_bus_conf *conf,
                                    const char *group_id,
                                    const char *group_instance_id,
                                    const struct bm_consumer_callbacks *cbs,
                                    char *err, size_t errlen)
{
    static const struct bm_bus_prop group_defaults[] = {
        {"partition.assignment.strategy", "cooperative-sticky"},
        {"enable.auto.commit", "true"},
        {"enable.auto.offset.store", "false"},
        {"auto.offset.reset", "earliest"},
        {"enable.partition.eof", "false"},
        {NULL, NULL},
    };
    static const struct bm_bus_prop manual_defaults[] = {
        {"enable.auto.commit", "false"},
        {"enable.auto.offset.store", "false"},
        {"auto.offset.reset", "earliest"},
        {"enable.partition.eof", "false"},
        {NULL, NULL},
    };
    if (group_id != NULL && group_id[0] == '\0') {
        bm_seterr(err, errlen, BM_EINVAL, "consumer: empty group id");
        return NULL;
    }
    if (group_id == NULL && group_instance_id != NULL) {
        bm_seterr(err, errlen, BM_EINVAL,
                  "consumer: group instance id without group id");
        return NULL;
    }
    struct bm_consumer *c = calloc(1, sizeof *c);
    if (c == NULL) {
        bm_seterr(err, errlen, BM_ENOMEM, "consumer: out of memory");
        return NULL;
    }
    if (cbs != NULL)
        c->cbs = *cbs;
    c->grouped = group_id != NULL;
    rd_kafka_conf_t *rc = bm_bus_conf_build(
        conf, BM_BUS_KIND_CONSUMER, c->grouped ? group_defaults : manual_defaults, &c->base, err, errlen);
    if (rc == NULL) {
        free(c);
        return NULL;
    }
    /* librdkafka 2.0.2 refuses rd_kafka_assign() without a group.id
     * ("Local: Unknown group"), so a manual consumer gets a placeholder id.
     * It never joins or commits (auto commit is off, subscribe refuses), so
     * the broker never records the group. */
    if (bm_bus_conf_set(rc, "group.id", c->grouped ? group_id : "biomatch.manual",
                        err, errlen) != BM_OK ||
        (group_instance_id != NULL &&
         bm_bus_conf_set(rc, "group.instance.id", group_instance_id, err,
                         errlen) != BM_OK)) {
        rd_kafka_conf_destroy(rc);
        free(c);
        return NULL;
    }
    /* bm_bus_conf_build made the opaque &c->base, which is also c. */
    if (c->grouped)
        rd_kafka_conf_set_rebalance_cb(rc, rebalance_cb);
    if (conf->log != NULL)
        rd_kafka_conf_set_error_cb(rc, error_cb);
    char msg[512];
    c->rk = rd_kafka_new(RD_KAFKA_CONSUMER, rc, msg, sizeof msg);
    if (c->rk == NULL) {
        rd_kafka_conf_destroy(rc);
        free(c);
        bm_seterr(err, errlen, BM_EKAFKA, "consumer: %s", msg);
        return NULL;
    }
    /* Serve errors and logs from bm_consumer_poll too. */
    rd_kafka_poll_set_consumer(c->rk);
    return c;
}

int bm_consumer_subscribe(struct bm_consumer *c, const char *const *topics,
                          size_t ntopics, char *err, size_t errlen)
{
    if (!c->grouped)
        return bm_seterr(err, errlen, BM_EINVAL,
                         "subscribe: consumer has no group id");
    if (ntopics == 0 || ntopics > 4096)
        return bm_seterr(err, errlen, BM_EINVAL, "subscribe: %zu topics", ntopics);
    rd_kafka_topic_partition_list_t *l =
        rd_kafka_topic_partition_list_new((int)ntopics);
    if (l == NULL)
        return bm_seterr(err, errlen, BM_ENOMEM, "subscribe: out of memory");
    for (size_t i = 0; i < ntopics; i++)
        rd_kafka_topic_partition_list_add(l, topics[i], RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t e = rd_kafka_subscribe(c->rk, l);
    rd_kafka_topic_partition_list_destroy(l);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR)
        return bm_seterr(err, errlen, BM_EKAFKA, "subscribe: %s",
                         rd_kafka_err2str(e));
    return BM_OK;
}

int bm_consumer_assign(struct bm_consumer *c, const struct bm_bus_tp *tps,
                       size_t n, char *err, size_t errlen)
{
    if (n > 0 && tps == NULL)
        return bm_seterr(err, errlen, BM_EINVAL, "assign: no partitions");
    rd_kafka_topic_partition_list_t *l = NULL;
    if (n > 0) {
        l = bm_bus_list_from_tps(tps, n);
        if (l == NULL)
            return bm_seterr(err, errlen, BM_ENOMEM, "assign: out of memory");
    }
    forget_all(c); /* the assignment is replaced: so are its pauses */
    rd_kafka_resp_err_t e = rd_kafka_assign(c->rk, l);
    if (l != NULL)
        rd_kafka_topic_partition_list_destroy(l);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR)
        return bm_seterr(err, errlen, BM_EKAFKA, "assign: %s", rd_kafka_err2str(e));
    return BM_OK;
}

void bm_bus_msg_free(struct bm_bus_msg *m)
{
    if (m == NULL)
        return;
    rd_kafka_message_destroy(m->priv);
    free(m);
}

/* The first message of a partition whose pause was deferred: keep it and
 * make the real pause now that the partition's fetch is running. */
static void hold(struct bm_consumer *c, struct paused *d, struct held *h)
{
    h->next = NULL;
    if (d->tail != NULL)
        d->tail->next = h;
    else
        d->head = h;
    d->tail = h;
    /* Until it succeeds, later messages are held too. */
    if (!d->real && pause_resume(c, d->topic, d->partition, 1) == BM_OK)
        d->real = 1;
}

int bm_consumer_poll(struct bm_consumer *c, int timeout_ms,
                     struct bm_bus_msg **out, char *err, size_t errlen)
{
    *out = NULL;
    if (c->ready != NULL) {
        struct held *h = c->ready;
        c->ready = h->next;
        if (c->ready == NULL)
            c->ready_tail = NULL;
        *out = &h->m;
        return BM_OK;
    }
    rd_kafka_message_t *rkm = rd_kafka_consumer_poll(c->rk, timeout_ms);
    if (rkm == NULL)
        return BM_ETIMEDOUT;
    if (rkm->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        int rc = bm_seterr(err, errlen, BM_EKAFKA, "consume %s [%d]: %s (%s)",
                           rkm->rkt != NULL ? rd_kafka_topic_name(rkm->rkt) : "-",
                           (int)rkm->partition, rd_kafka_message_errstr(rkm),
                           rd_kafka_err2name(rkm->err));
        rd_kafka_message_destroy(rkm);
        return rc;
    }
    rd_kafka_headers_t *hdrs = NULL;
    size_t nh = 0;
    if (rd_kafka_message_headers(rkm, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR)
        nh = rd_kafka_header_cnt(hdrs);
    /* The view and its header array in one block; names and values point
     * into the librdkafka message, which the view keeps alive. */
    struct held *b = malloc(sizeof *b + nh * sizeof(struct bm_bus_header));
    if (b == NULL) {
        rd_kafka_message_destroy(rkm);
        return bm_seterr(err, errlen, BM_ENOMEM, "consume: out of memory");
    }
    struct bm_bus_msg *m = &b->m;
    struct bm_bus_header *hv = (struct bm_bus_header *)(b + 1);
    for (size_t i = 0; i < nh; i++) {
        const char *name = NULL;
        const void *val = NULL;
        size_t size = 0;
        rd_kafka_header_get_all(hdrs, i, &name, &val, &size);
        hv[i].name = name;
        hv[i].value = val;
        hv[i].len = size;
    }
    rd_kafka_timestamp_type_t tstype;
    int64_t ts = rd_kafka_message_timestamp(rkm, &tstype);
    m->topic = rd_kafka_topic_name(rkm->rkt);
    m->partition = rkm->partition;
    m->offset = rkm->offset;
    m->key = rkm->key;
    m->keylen = rkm->key_len;
    m->value = rkm->payload;
    m->valuelen = rkm->len;
    m->headers = nh > 0 ? hv : NULL;
    m->nheaders = nh;
    m->timestamp_ms = tstype == RD_KAFKA_TIMESTAMP_NOT_AVAILABLE ? -1 : ts;
    m->priv = rkm;
    if (c->npaused > 0) {
        struct paused *d = paused_find(c, m->topic, m->partition);
        if (d != NULL) {
            hold(c, d, b);
            return BM_ETIMEDOUT; /* nothing for the application yet */
        }
    }
    *out = m;
    return BM_OK;
}

int bm_consumer_store_offset(struct bm_consumer *c, const char *topic,
                             int32_t partition, int64_t next_offset)
{
    if (topic == NULL || partition < 0 || next_offset < 0)
        return BM_EINVAL;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    if (l == NULL)
        return BM_ENOMEM;
    rd_kafka_topic_partition_list_add(l, topic, partition)->offset = next_offset;
    rd_kafka_resp_err_t e = rd_kafka_offsets_store(c->rk, l);
    if (e == RD_KAFKA_RESP_ERR_NO_ERROR)
        e = l->elems[0].err;
    rd_kafka_topic_partition_list_destroy(l);
    if (e == RD_KAFKA_RESP_ERR__STATE || e == RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION)
        return BM_ECONFLICT;
    return e == RD_KAFKA_RESP_ERR_NO_ERROR ? BM_OK : BM_EKAFKA;
}

int bm_consumer_store(struct bm_consumer *c, const struct bm_bus_msg *m)
{
    return bm_consumer_store_offset(c, m->topic, m->partition, m->offset + 1);
}

int bm_consumer_commit(struct bm_consumer *c, int sync, char *err, size_t errlen)
{
    rd_kafka_resp_err_t e = rd_kafka_commit(c->rk, NULL, sync ? 0 : 1);
    if (e == RD_KAFKA_RESP_ERR_NO_ERROR || e == RD_KAFKA_RESP_ERR__NO_OFFSET)
        return BM_OK;
    return bm_seterr(err, errlen, BM_EKAFKA, "commit: %s", rd_kafka_err2str(e));
}

int bm_consumer_committed(struct bm_consumer *c, struct bm_bus_tp *tps, size_t n,
                          int timeout_ms, char *err, size_t errlen)
{
    if (n == 0)
        return BM_OK;
    rd_kafka_topic_partition_list_t *l = bm_bus_list_from_tps(tps, n);
    if (l == NULL)
        return bm_seterr(err, errlen, BM_ENOMEM, "committed: out of memory");
    rd_kafka_resp_err_t e = rd_kafka_committed(c->rk, l, timeout_ms);
    if (e == RD_KAFKA_RESP_ERR_NO_ERROR) {
        /* The list keeps our order: it was built from tps one by one. */
        for (size_t i = 0; i < n; i++)
            tps[i].offset = l->elems[i].offset < 0 ? BM_OFFSET_INVALID
                                                   : l->elems[i].offset;
    }
    rd_kafka_topic_partition_list_destroy(l);
    if (e == RD_KAFKA_RESP_ERR_NO_ERROR)
        return BM_OK;
    return bm_seterr(err, errlen, bm_bus_err_map(e) == BM_ETIMEDOUT ? BM_ETIMEDOUT
                                                                    : BM_EKAFKA,
                     "committed: %s", rd_kafka_err2str(e));
}

static int pause_resume(struct bm_consumer *c, const char *topic,
                        int32_t partition, int pause)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    if (l == NULL)
        return BM_ENOMEM;
    rd_kafka_topic_partition_list_add(l, topic, partition);
    rd_kafka_resp_err_t e = pause ? rd_kafka_pause_partitions(c->rk, l)
                                  : rd_kafka_resume_partitions(c->rk, l);
    if (e == RD_KAFKA_RESP_ERR_NO_ERROR)
        e = l->elems[0].err;
    rd_kafka_topic_partition_list_destroy(l);
    return e == RD_KAFKA_RESP_ERR_NO_ERROR ? BM_OK : BM_EKAFKA;
}

/* Is 'topic' [partition] assigned here without having delivered anything
 * to the application yet? (Its position is the offset after the last
 * message consumed, negative before the first.) */
static int assigned_and_fresh(struct bm_consumer *c, const char *topic, int32_t partition)
{
    rd_kafka_topic_partition_list_t *a = NULL;
    if (rd_kafka_assignment(c->rk, &a) != RD_KAFKA_RESP_ERR_NO_ERROR)
        return 0;
    int assigned = rd_kafka_topic_partition_list_find(a, topic, partition) != NULL;
    rd_kafka_topic_partition_list_destroy(a);
    if (!assigned)
        return 0;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    if (l == NULL)
        return 0;
    rd_kafka_topic_partition_list_add(l, topic, partition);
    int fresh = rd_kafka_position(c->rk, l) == RD_KAFKA_RESP_ERR_NO_ERROR &&
                l->elems[0].offset < 0;
    rd_kafka_topic_partition_list_destroy(l);
    return fresh;
}

/* A new pause entry, not real yet and holding nothing; NULL when out of
 * memory. */
static struct paused *paused_add(struct bm_consumer *c, const char *topic,
                                 int32_t partition)
{
    if (c->npaused == c->cappaused) {
        size_t nc = c->cappaused ? c->cappaused * 2 : 8;
        struct paused *nd = realloc(c->paused, nc * sizeof *nd);
        if (nd == NULL)
            return NULL;
        c->paused = nd;
        c->cappaused = nc;
    }
    char *t = strdup(topic);
    if (t == NULL)
        return NULL;
    c->paused[c->npaused] = (struct paused){t, partition, 0, NULL, NULL};
    return &c->paused[c->npaused++];
}

int bm_consumer_pause(struct bm_consumer *c, const char *topic, int32_t partition)
{
    if (paused_find(c, topic, partition) != NULL)
        return BM_OK; /* already paused */
    /* Messages a resume left in the ready queue were consumed from
     * librdkafka already (a real pause alone would resume after them):
     * they go back to being held. In on_assign the position may still be
     * the one of an earlier assignment of the same partition: defer there
     * whatever it says. */
    int ready = 0;
    for (struct held *h = c->ready; h != NULL && !ready; h = h->next)
        ready = h->m.partition == partition && strcmp(h->m.topic, topic) == 0;
    int defer = !ready && (c->in_assign || assigned_and_fresh(c, topic, partition));
    struct paused *d = paused_add(c, topic, partition);
    if (d == NULL)
        return BM_ENOMEM;
    if (ready) {
        d->head = ready_take(c, topic, partition);
        for (d->tail = d->head; d->tail->next != NULL; d->tail = d->tail->next)
            ;
    }
    if (!defer) {
        int rc = pause_resume(c, topic, partition, 1);
        if (rc != BM_OK && !ready) {
            paused_remove(c, d, 0);
            return rc;
        }
        d->real = rc == BM_OK; /* else the next message held tries again */
    }
    return BM_OK;
}

int bm_consumer_resume(struct bm_consumer *c, const char *topic, int32_t partition)
{
    struct paused *d = paused_find(c, topic, partition);
    if (d == NULL)
        return pause_resume(c, topic, partition, 0);
    if (d->real) {
        int rc = pause_resume(c, topic, partition, 0);
        if (rc != BM_OK)
            return rc;
    }
    paused_remove(c, d, 1); /* its held messages are served next */
    return BM_OK;
}

int bm_consumer_assignment(struct bm_consumer *c, struct bm_bus_tp **out,
                           size_t *n)
{
    rd_kafka_topic_partition_list_t *l = NULL;
    *out = NULL;
    *n = 0;
    if (rd_kafka_assignment(c->rk, &l) != RD_KAFKA_RESP_ERR_NO_ERROR)
        return BM_EKAFKA;
    int rc = bm_bus_tps_from_list(l, out, n);
    rd_kafka_topic_partition_list_destroy(l);
    return rc;
}

int bm_consumer_watermarks(struct bm_consumer *c, const char *topic, int32_t partition,
                           int timeout_ms, int64_t *low, int64_t *high, char *err,
                           size_t errlen)
{
    int64_t lo = 0, hi = 0;
    rd_kafka_resp_err_t e =
        rd_kafka_query_watermark_offsets(c->rk, topic, partition, &lo, &hi, timeout_ms);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR)
        return bm_seterr(err, errlen,
                         bm_bus_err_map(e) == BM_ETIMEDOUT ? BM_ETIMEDOUT : BM_EKAFKA,
                         "watermarks of %s [%d]: %s", topic, (int)partition,
                         rd_kafka_err2str(e));
    *low = lo;
    *high = hi;
    return BM_OK;
}

int bm_consumer_fatal(const struct bm_consumer *c, char *err, size_t errlen)
{
    char msg[512];
    rd_kafka_resp_err_t e = rd_kafka_fatal_error(c->rk, msg, sizeof msg);
    if (e == RD_KAFKA_RESP_ERR_NO_ERROR)
        return BM_OK;
    return bm_seterr(err, errlen, BM_EKAFKA, "consumer fatal error %s: %s",
                     rd_kafka_err2name(e), msg);
}

int bm_consumer_close(struct bm_consumer *c, char *err, size_t errlen)
{
    if (c->closed)
        return BM_OK;
    c->closing = 1;
    /* Commit what was stored before leaving, whatever enable.auto.commit
     * says; the revoke during close then has nothing left to commit. */
    if (c->grouped) {
        rd_kafka_resp_err_t ce = rd_kafka_commit(c->rk, NULL, 0);
        if (ce != RD_KAFKA_RESP_ERR_NO_ERROR && ce != RD_KAFKA_RESP_ERR__NO_OFFSET)
            log_line(c, 4, "commit on close", rd_kafka_err2str(ce));
    }
    rd_kafka_resp_err_t e = rd_kafka_consumer_close(c->rk);
    c->closed = 1;
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR)
        return bm_seterr(err, errlen, BM_EKAFKA, "close: %s", rd_kafka_err2str(e));
    return BM_OK;
}

void bm_consumer_free(struct bm_consumer *c)
{
    if (c == NULL)
        return;
    bm_consumer_close(c, NULL, 0);
    forget_all(c); /* librdkafka messages: before their handle goes */
    free(c->paused);
    rd_kafka_destroy(c->rk);
    free(c);
}
