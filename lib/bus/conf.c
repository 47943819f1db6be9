/* Configuration building and small conversions shared by the bus handles.
 *
 * The order of bm_bus_conf_build is the contract: our connection settings,
 * then the module's defaults, then the operator's properties, so an operator
 * can override any default (say, linger.ms) but a typo in a property name
 * fails the constructor instead of being silently ignored.
 *
 * One kafka: map serves every handle of a process, so an operator's
 * consumer-only property (session.timeout.ms) reaches its producers too,
 * and librdkafka would warn (CONFWARN) at every start. Each property is
 * applied only to the kinds of client it is for, by librdkafka's own
 * property table (rd_kafka_conf_properties_show, column C/P), read once. */
#define _POSIX_C_SOURCE 200809L
#include "bus/internal.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"

int bm_bus_conf_set(rd_kafka_conf_t *rc, const char *key, const char *value,
                    char *err, size_t errlen)
{
    char msg[256];
    if (key == NULL || value == NULL)
        return bm_seterr(err, errlen, BM_EINVAL, "kafka property with NULL %s",
                         key == NULL ? "name" : "value");
    if (rd_kafka_conf_set(rc, key, value, msg, sizeof msg) != RD_KAFKA_CONF_OK)
        return bm_seterr(err, errlen, BM_EINVAL, "kafka property %s: %s", key,
                         msg);
    return BM_OK;
}

/* Properties librdkafka documents as for one kind of client only. */
#define SCOPE_MAX 256
#define SCOPE_NAME_MAX 64
static struct scoped_prop {
    char name[SCOPE_NAME_MAX];
    char kind; /* 'C' consumer or 'P' producer */
} scoped[SCOPE_MAX];
static size_t nscoped;
static pthread_once_t scoped_once = PTHREAD_ONCE_INIT;

/* Parse "name | C/P | range | ..." rows of the property table. A property
 * listed twice (global and topic level) with different scopes counts for
 * both kinds, so it is never dropped. */
static void scoped_load(void)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (f == NULL)
        return;
    rd_kafka_conf_properties_show(f);
    if (fclose(f) != 0) {
        free(buf);
        return;
    }
    char *save = NULL;
    for (char *line = strtok_r(buf, "\n", &save); line != NULL;
         line = strtok_r(NULL, "\n", &save)) {
        char *bar = strchr(line, '|');
        if (bar == NULL)
            continue;
        size_t n = (size_t)(bar - line);
        while (n > 0 && line[n - 1] == ' ')
            n--;
        char *col = bar + 1;
        while (*col == ' ')
            col++;
        char kind = col[0];
        if ((kind != 'C' && kind != 'P') || col[1] != ' ' || n == 0 ||
            n >= SCOPE_NAME_MAX)
            continue;
        size_t i = 0;
        while (i < nscoped && !(strlen(scoped[i].name) == n &&
                                memcmp(scoped[i].name, line, n) == 0))
            i++;
        if (i < nscoped) {
            if (scoped[i].kind != kind)
                scoped[i].kind = '*';
            continue;
        }
        if (nscoped == SCOPE_MAX)
            break;
        memcpy(scoped[nscoped].name, line, n);
        scoped[nscoped].name[n] = '\0';
        scoped[nscoped].kind = kind;
        nscoped++;
    }
    free(buf);
}

bool bm_bus_prop_applies(const char *key, enum bm_bus_kind kind)
{
    pthread_once(&scoped_once, scoped_load);
    char own = kind == BM_BUS_KIND_CONSUMER ? 'C' : 'P';
    for (size_t i = 0; i < nscoped; i++)
        if (strcmp(scoped[i].name, key) == 0)
            return scoped[i].kind == '*' || scoped[i].kind == own;
    return true;
}

/* librdkafka calls this from its own threads; 'base' is immutable after the
 * handle is built, so reading it needs no lock. */
static void log_cb(const rd_kafka_t *rk, int level, const char *fac,
                   const char *buf)
{
    struct bm_bus_base *base = rd_kafka_opaque(rk);
    if (base != NULL && base->log != NULL)
        base->log(base->log_opaque, level, fac, buf);
}

rd_kafka_conf_t *bm_bus_conf_build(const struct bm_bus_conf *conf,
                                   enum bm_bus_kind kind,
                                   const struct bm_bus_prop *defaults,
                                   struct bm_bus_base *base, char *err,
                                   size_t errlen)
{
    if (conf == NULL || conf->bootstrap_servers == NULL ||
        conf->bootstrap_servers[0] == '\0') {
        bm_seterr(err, errlen, BM_EINVAL, "kafka: no bootstrap servers");
        return NULL;
    }
    if (conf->nprops > 0 && conf->props == NULL) {
        bm_seterr(err, errlen, BM_EINVAL, "kafka: nprops without props");
        return NULL;
    }
    rd_kafka_conf_t *rc = rd_kafka_conf_new();
    if (rc == NULL) {
        bm_seterr(err, errlen, BM_ENOMEM, "kafka: out of memory");
        return NULL;
    }
    const char *cid = conf->client_id != NULL ? conf->client_id : "biomatch";
    if (bm_bus_conf_set(rc, "bootstrap.servers", conf->bootstrap_servers, err,
                        errlen) != BM_OK ||
        bm_bus_conf_set(rc, "client.id", cid, err, errlen) != BM_OK)
        goto fail;
    for (size_t i = 0; defaults != NULL && defaults[i].key != NULL; i++)
        if (bm_bus_conf_set(rc, defaults[i].key, defaults[i].value, err,
                            errlen) != BM_OK)
            goto fail;
    if (conf->max_record_bytes > 0) {
        /* One limit for what we produce and what the topics accept; a
         * fetch always returns at least one whole record, so consumers
         * need no matching setting below librdkafka's 50 MiB fetch.max.bytes. */
        char v[24];
        snprintf(v, sizeof v, "%lld", (long long)conf->max_record_bytes);
        if (bm_bus_conf_set(rc, "message.max.bytes", v, err, errlen) != BM_OK)
            goto fail;
    }
    for (size_t i = 0; i < conf->nprops; i++)
        if ((conf->props[i].key == NULL ||
             bm_bus_prop_applies(conf->props[i].key, kind)) &&
            bm_bus_conf_set(rc, conf->props[i].key, conf->props[i].value, err,
                            errlen) != BM_OK)
            goto fail;
    base->log = conf->log;
    base->log_opaque = conf->log_opaque;
    rd_kafka_conf_set_opaque(rc, base);
    if (conf->log != NULL)
        rd_kafka_conf_set_log_cb(rc, log_cb);
    return rc;
fail:
    rd_kafka_conf_destroy(rc);
    return NULL;
}

/* The classification is the contract of bm_err_transient(): every code a
 * produce call or a delivery report can carry lands either on a per-record
 * permanent code (the record itself can never be written as it is) or on a
 * transient one (waiting cures it). librdkafka retries the transient ones
 * internally until message.timeout.ms; what still reaches us is re-sent. */
int bm_bus_err_map(rd_kafka_resp_err_t e)
{
    switch (e) {
    case RD_KAFKA_RESP_ERR_NO_ERROR:
        return BM_OK;
    /* per-record permanent */
    case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_INVALID_MSG_SIZE:
        return BM_ERANGE;
    case RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC:
    case RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION:
    case RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART:
        return BM_ENOTFOUND;
    case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED:
        return BM_EDENIED;
    case RD_KAFKA_RESP_ERR__INVALID_ARG:
    case RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION:
    case RD_KAFKA_RESP_ERR_INVALID_RECORD:
        return BM_EINVAL;
    case RD_KAFKA_RESP_ERR_INVALID_MSG:
    case RD_KAFKA_RESP_ERR__BAD_MSG:
        return BM_EPROTO;
    /* transient */
    case RD_KAFKA_RESP_ERR__QUEUE_FULL:
        return BM_EFULL;
    case RD_KAFKA_RESP_ERR__TIMED_OUT:
    case RD_KAFKA_RESP_ERR__TIMED_OUT_QUEUE:
    case RD_KAFKA_RESP_ERR__MSG_TIMED_OUT:
    case RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT:
        return BM_ETIMEDOUT;
    case RD_KAFKA_RESP_ERR__TRANSPORT:
    case RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN:
    case RD_KAFKA_RESP_ERR__RESOLVE:
    case RD_KAFKA_RESP_ERR__AUTHENTICATION:
    case RD_KAFKA_RESP_ERR_SASL_AUTHENTICATION_FAILED:
    case RD_KAFKA_RESP_ERR_BROKER_NOT_AVAILABLE:
    case RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE:
    case RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION:
    case RD_KAFKA_RESP_ERR_FENCED_LEADER_EPOCH:
    case RD_KAFKA_RESP_ERR_UNKNOWN_LEADER_EPOCH:
    case RD_KAFKA_RESP_ERR_REPLICA_NOT_AVAILABLE:
    case RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS:
    case RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS_AFTER_APPEND:
    case RD_KAFKA_RESP_ERR_NETWORK_EXCEPTION:
    case RD_KAFKA_RESP_ERR_KAFKA_STORAGE_ERROR:
    case RD_KAFKA_RESP_ERR_THROTTLING_QUOTA_EXCEEDED:
        return BM_EUNAVAIL;
    /* the handle, not the record */
    case RD_KAFKA_RESP_ERR__FATAL:
    case RD_KAFKA_RESP_ERR__DESTROY:
    case RD_KAFKA_RESP_ERR__PURGE_QUEUE:
    case RD_KAFKA_RESP_ERR__PURGE_INFLIGHT:
        return BM_ECLOSED;
    default:
        return BM_EKAFKA; /* transient by bm_err_transient: wait, loudly */
    }
}

int bm_bus_tps_from_list(const rd_kafka_topic_partition_list_t *l,
                         struct bm_bus_tp **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    if (l == NULL || l->cnt <= 0)
        return BM_OK;
    size_t cnt = (size_t)l->cnt, names = 0;
    for (size_t i = 0; i < cnt; i++)
        names += strlen(l->elems[i].topic) + 1;
    struct bm_bus_tp *v = malloc(cnt * sizeof *v + names);
    if (v == NULL)
        return BM_ENOMEM;
    char *p = (char *)(v + cnt);
    for (size_t i = 0; i < cnt; i++) {
        size_t len = strlen(l->elems[i].topic) + 1;
        memcpy(p, l->elems[i].topic, len);
        v[i].topic = p;
        v[i].partition = l->elems[i].partition;
        v[i].offset = l->elems[i].offset;
        p += len;
    }
    *out = v;
    *n = cnt;
    return BM_OK;
}

rd_kafka_topic_partition_list_t *bm_bus_list_from_tps(const struct bm_bus_tp *tps,
                                                      size_t n)
{
    if (n > (size_t)(1 << 20))
        return NULL;
    rd_kafka_topic_partition_list_t *l =
        rd_kafka_topic_partition_list_new((int)(n > 0 ? n : 1));
    if (l == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        rd_kafka_topic_partition_t *e =
            rd_kafka_topic_partition_list_add(l, tps[i].topic, tps[i].partition);
        e->offset = tps[i].offset;
    }
    return l;
}
