/* Topic administration through librdkafka's admin API.
 *
 * Invariant: bm_admin_create_topics returns BM_OK only when every topic
 * exists with the requested partition count and shows up in the cluster
 * metadata, so a caller can produce to it immediately afterwards. */
#include "bus/internal.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "common/err.h"

struct bm_admin {
    struct bm_bus_base base; /* must stay first: librdkafka's opaque */
    rd_kafka_t *rk;
    rd_kafka_conf_t *probe_conf; /* a copy for bm_admin_cluster_info's probe */
    int replication;             /* for specs that leave it to us; 0 = the broker's */
    char min_insync[12];         /* min.insync.replicas to set; "" = the broker's */
    char max_message[24];        /* max.message.bytes to set; "" = the broker's */
};

struct bm_admin *bm_admin_new(const struct bm_bus_conf *conf, char *err,
                              size_t errlen)
{
    struct bm_admin *a = calloc(1, sizeof *a);
    if (a == NULL) {
        bm_seterr(err, errlen, BM_ENOMEM, "admin: out of memory");
        return NULL;
    }
    rd_kafka_conf_t *rc = bm_bus_conf_build(conf, BM_BUS_KIND_PRODUCER, NULL, &a->base, err, errlen);
    if (rc == NULL) {
        free(a);
        return NULL;
    }
    char msg[512];
    a->replication = conf->topic_replication > 0 ? conf->topic_replication : 0;
    if (conf->topic_min_insync > 0)
        snprintf(a->min_insync, sizeof a->min_insync, "%d", conf->topic_min_insync);
    if (conf->max_record_bytes > 0)
        snprintf(a->max_message, sizeof a->max_message, "%lld",
                 (long long)conf->max_record_bytes);
    a->probe_conf = rd_kafka_conf_dup(rc);
    a->rk = rd_kafka_new(RD_KAFKA_PRODUCER, rc, msg, sizeof msg);
    if (a->rk == NULL || a->probe_conf == NULL) {
        if (a->rk != NULL)
            rd_kafka_destroy(a->rk);
        else
            rd_kafka_conf_destroy(rc);
        if (a->probe_conf != NULL)
            rd_kafka_conf_destroy(a->probe_conf);
        free(a);
        bm_seterr(err, errlen, BM_EKAFKA, "admin: %s", msg);
        return NULL;
    }
    return a;
}

void bm_admin_free(struct bm_admin *a)
{
    if (a == NULL)
        return;
    rd_kafka_destroy(a->rk);
    rd_kafka_conf_destroy(a->probe_conf);
    free(a);
}

/* Partition count of 'topic' from one metadata request: BM_OK,
 * BM_ENOTFOUND (unknown, or known but not yet with leaders), or an error. */
static int partitions_once(struct bm_admin *a, const char *topic, int timeout_ms,
                           int *out, char *err, size_t errlen)
{
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t e = rd_kafka_metadata(a->rk, 1, NULL, &md, timeout_ms);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR)
        return bm_seterr(err, errlen,
                         e == RD_KAFKA_RESP_ERR__TIMED_OUT ? BM_ETIMEDOUT : BM_EKAFKA,
                         "metadata: %s", rd_kafka_err2str(e));
    int rc = bm_seterr(err, errlen, BM_ENOTFOUND, "topic %s: not found", topic);
    for (int i = 0; i < md->topic_cnt; i++) {
        const struct rd_kafka_metadata_topic *t = &md->topics[i];
        if (strcmp(t->topic, topic) != 0)
            continue;
        if (t->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
            rc = bm_seterr(err, errlen, BM_ENOTFOUND, "topic %s: %s", topic,
                           rd_kafka_err2str(t->err));
            break;
        }
        *out = t->partition_cnt;
        rc = BM_OK;
        for (int p = 0; p < t->partition_cnt; p++)
            if (t->partitions[p].leader < 0)
                rc = bm_seterr(err, errlen, BM_ENOTFOUND,
                               "topic %s: partition %d has no leader yet", topic, p);
        break;
    }
    rd_kafka_metadata_destroy(md);
    return rc;
}

int bm_admin_topic_partitions(struct bm_admin *a, const char *topic,
                              int timeout_ms, int *partitions, char *err,
                              size_t errlen)
{
    return partitions_once(a, topic, timeout_ms, partitions, err, errlen);
}

/* Poll metadata until 'topic' has 'want' partitions with leaders or the
 * deadline passes. A just-created topic takes a moment to reach every
 * broker's metadata cache. */
static int wait_topic(struct bm_admin *a, const char *topic, int want,
                      int64_t deadline, char *err, size_t errlen)
{
    for (;;) {
        int64_t left = deadline - bm_mono_ms();
        int have = 0;
        int rc = partitions_once(a, topic, left > 1000 ? 1000 : (left > 0 ? (int)left : 1),
                                 &have, err, errlen);
        if (rc == BM_OK && have == want)
            return BM_OK;
        if (rc == BM_OK)
            return bm_seterr(err, errlen, BM_ECONFLICT,
                             "topic %s exists with %d partitions, want %d", topic,
                             have, want);
        if (rc != BM_ENOTFOUND && rc != BM_ETIMEDOUT)
            return rc;
        if (bm_mono_ms() >= deadline)
            return bm_seterr(err, errlen, BM_ETIMEDOUT,
                             "topic %s: not in metadata in time", topic);
        struct timespec ts = {0, 50 * 1000000L};
        nanosleep(&ts, NULL);
    }
}

int bm_admin_create_topics(struct bm_admin *a,
                           const struct bm_bus_topic_spec *topics, size_t n,
                           int timeout_ms, char *err, size_t errlen)
{
    if (n == 0)
        return BM_OK;
    if (topics == NULL || n > 1024 || timeout_ms <= 0)
        return bm_seterr(err, errlen, BM_EINVAL, "create topics: bad arguments");
    int64_t deadline = bm_mono_ms() + timeout_ms;
    char msg[512];
    int rc = BM_OK;
    rd_kafka_NewTopic_t **nt = calloc(n, sizeof *nt);
    rd_kafka_AdminOptions_t *opts = NULL;
    rd_kafka_queue_t *q = NULL;
    rd_kafka_event_t *ev = NULL;
    if (nt == NULL)
        return bm_seterr(err, errlen, BM_ENOMEM, "create topics: out of memory");
    for (size_t i = 0; i < n; i++) {
        const struct bm_bus_topic_spec *s = &topics[i];
        if (s->name == NULL || s->partitions < 1 ||
            (s->nconfigs > 0 && s->configs == NULL)) {
            rc = bm_seterr(err, errlen, BM_EINVAL, "create topics: bad spec #%zu", i);
            goto out;
        }
        int replication = s->replication == -1 && a->replication > 0 ? a->replication
                                                                      : s->replication;
        nt[i] = rd_kafka_NewTopic_new(s->name, s->partitions, replication, msg,
                                      sizeof msg);
        if (nt[i] == NULL) {
            rc = bm_seterr(err, errlen, BM_EINVAL, "topic %s: %s", s->name, msg);
            goto out;
        }
        int insync_given = 0, max_given = 0;
        for (size_t k = 0; k < s->nconfigs; k++) {
            if (s->configs[k].key != NULL &&
                strcmp(s->configs[k].key, "min.insync.replicas") == 0)
                insync_given = 1;
            if (s->configs[k].key != NULL &&
                strcmp(s->configs[k].key, "max.message.bytes") == 0)
                max_given = 1;
        }
        if (a->max_message[0] != '\0' && !max_given &&
            rd_kafka_NewTopic_set_config(nt[i], "max.message.bytes", a->max_message) !=
                RD_KAFKA_RESP_ERR_NO_ERROR) {
            rc = bm_seterr(err, errlen, BM_EINVAL, "topic %s: bad max.message.bytes", s->name);
            goto out;
        }
        if (a->min_insync[0] != '\0' && !insync_given &&
            rd_kafka_NewTopic_set_config(nt[i], "min.insync.replicas", a->min_insync) !=
                RD_KAFKA_RESP_ERR_NO_ERROR) {
            rc = bm_seterr(err, errlen, BM_EINVAL, "topic %s: bad min.insync.replicas",
                           s->name);
            goto out;
        }
        for (size_t k = 0; k < s->nconfigs; k++) {
            if (rd_kafka_NewTopic_set_config(nt[i], s->configs[k].key,
                                             s->configs[k].value) !=
                RD_KAFKA_RESP_ERR_NO_ERROR) {
                rc = bm_seterr(err, errlen, BM_EINVAL, "topic %s: bad config %s",
                               s->name, s->configs[k].key ? s->configs[k].key : "?");
                goto out;
            }
        }
    }
    opts = rd_kafka_AdminOptions_new(a->rk, RD_KAFKA_ADMIN_OP_CREATETOPICS);
    q = rd_kafka_queue_new(a->rk);
    if (opts == NULL || q == NULL) {
        rc = bm_seterr(err, errlen, BM_ENOMEM, "create topics: out of memory");
        goto out;
    }
    if (rd_kafka_AdminOptions_set_request_timeout(opts, timeout_ms, msg, sizeof msg) ||
        rd_kafka_AdminOptions_set_operation_timeout(opts, timeout_ms, msg,
                                                    sizeof msg)) {
        rc = bm_seterr(err, errlen, BM_EINVAL, "create topics: %s", msg);
        goto out;
    }
    rd_kafka_CreateTopics(a->rk, nt, n, opts, q);
    /* The request itself times out at timeout_ms; the margin lets its
     * timeout event arrive rather than racing it. */
    ev = rd_kafka_queue_poll(q, timeout_ms + 2000);
    if (ev == NULL) {
        rc = bm_seterr(err, errlen, BM_ETIMEDOUT, "create topics: no answer");
        goto out;
    }
    if (rd_kafka_event_error(ev) != RD_KAFKA_RESP_ERR_NO_ERROR) {
        rc = bm_seterr(err, errlen,
                       bm_bus_err_map(rd_kafka_event_error(ev)) == BM_ETIMEDOUT
                           ? BM_ETIMEDOUT : BM_EKAFKA,
                       "create topics: %s", rd_kafka_event_error_string(ev));
        goto out;
    }
    size_t cnt = 0;
    const rd_kafka_topic_result_t **res = rd_kafka_CreateTopics_result_topics(
        rd_kafka_event_CreateTopics_result(ev), &cnt);
    for (size_t i = 0; i < cnt && rc == BM_OK; i++) {
        rd_kafka_resp_err_t e = rd_kafka_topic_result_error(res[i]);
        const char *name = rd_kafka_topic_result_name(res[i]);
        if (e != RD_KAFKA_RESP_ERR_NO_ERROR &&
            e != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) {
            const char *why = rd_kafka_topic_result_error_string(res[i]);
            rc = bm_seterr(err, errlen,
                           e == RD_KAFKA_RESP_ERR_INVALID_PARTITIONS ||
                                   e == RD_KAFKA_RESP_ERR_INVALID_REPLICATION_FACTOR ||
                                   e == RD_KAFKA_RESP_ERR_INVALID_CONFIG
                               ? BM_EINVAL : BM_EKAFKA,
                           "topic %s: %s", name, why ? why : rd_kafka_err2str(e));
        }
    }
    /* Created or pre-existing: either way it must now be visible with the
     * partition count asked for, or the caller's keys would map elsewhere. */
    for (size_t i = 0; i < n && rc == BM_OK; i++)
        rc = wait_topic(a, topics[i].name, topics[i].partitions, deadline, err,
                        errlen);
out:
    if (ev != NULL)
        rd_kafka_event_destroy(ev);
    if (q != NULL)
        rd_kafka_queue_destroy(q);
    if (opts != NULL)
        rd_kafka_AdminOptions_destroy(opts);
    for (size_t i = 0; i < n; i++)
        if (nt[i] != NULL)
            rd_kafka_NewTopic_destroy(nt[i]);
    free(nt);
    return rc;
}

/* What the probe handle's debug log told us about the broker's API ranges.
 * Written by librdkafka's broker threads, read after the handle is gone. */
struct api_probe {
    pthread_mutex_t lock;
    int keys;            /* API keys the broker advertised */
    char produce[24];    /* "min..max" */
    char fetch[24];
};

/* librdkafka 2.0.2 does not expose the ApiVersions answer, but with
 * debug=feature it logs it, one "ApiKey <Name> (<n>) Versions a..b" line per
 * key; that is the only broker-side fingerprint of its release. */
static void probe_log_cb(const rd_kafka_t *rk, int level, const char *fac,
                         const char *buf)
{
    (void)level;
    struct api_probe *pr = rd_kafka_opaque(rk);
    if (strcmp(fac, "APIVERSION") != 0)
        return;
    const char *k = strstr(buf, "ApiKey ");
    const char *v = k != NULL ? strstr(k, " Versions ") : NULL;
    if (v == NULL)
        return;
    v += strlen(" Versions ");
    pthread_mutex_lock(&pr->lock);
    pr->keys++;
    if (strncmp(k, "ApiKey Produce (0)", 18) == 0)
        snprintf(pr->produce, sizeof pr->produce, "%s", v);
    else if (strncmp(k, "ApiKey Fetch (1)", 16) == 0)
        snprintf(pr->fetch, sizeof pr->fetch, "%s", v);
    pthread_mutex_unlock(&pr->lock);
}

/* Connect a short-lived handle with debug=feature and collect the broker's
 * advertised Produce and Fetch version ranges into 'out'. Best effort. */
static void probe_api_versions(struct bm_admin *a, int timeout_ms,
                               struct api_probe *out)
{
    char msg[256];
    rd_kafka_conf_t *rc = rd_kafka_conf_dup(a->probe_conf);
    if (rc == NULL)
        return;
    rd_kafka_conf_set_opaque(rc, out);
    rd_kafka_conf_set_log_cb(rc, probe_log_cb);
    if (rd_kafka_conf_set(rc, "debug", "feature", msg, sizeof msg) !=
        RD_KAFKA_CONF_OK) {
        rd_kafka_conf_destroy(rc);
        return;
    }
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, rc, msg, sizeof msg);
    if (rk == NULL) {
        rd_kafka_conf_destroy(rc);
        return;
    }
    const struct rd_kafka_metadata *md = NULL;
    if (rd_kafka_metadata(rk, 0, NULL, &md, timeout_ms) == RD_KAFKA_RESP_ERR_NO_ERROR)
        rd_kafka_metadata_destroy(md);
    rd_kafka_destroy(rk); /* joins the broker threads: 'out' is ours again */
}

int bm_admin_cluster_info(struct bm_admin *a, int timeout_ms, char *buf,
                          size_t len, char *err, size_t errlen)
{
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t e = rd_kafka_metadata(a->rk, 0, NULL, &md, timeout_ms);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR)
        return bm_seterr(err, errlen,
                         e == RD_KAFKA_RESP_ERR__TIMED_OUT ? BM_ETIMEDOUT : BM_EKAFKA,
                         "metadata: %s", rd_kafka_err2str(e));
    struct api_probe pr = {.keys = 0};
    pthread_mutex_init(&pr.lock, NULL);
    snprintf(pr.produce, sizeof pr.produce, "?");
    snprintf(pr.fetch, sizeof pr.fetch, "?");
    probe_api_versions(a, timeout_ms, &pr);
    pthread_mutex_destroy(&pr.lock);
    snprintf(buf, len,
             "brokers=%d answered-by=%d (%s) api-keys=%d produce=%s fetch=%s "
             "librdkafka=%s",
             md->broker_cnt, (int)md->orig_broker_id,
             md->orig_broker_name ? md->orig_broker_name : "?", pr.keys,
             pr.produce, pr.fetch, rd_kafka_version_str());
    rd_kafka_metadata_destroy(md);
    return BM_OK;
}
