/* Flag parsing and Kafka plumbing shared by the biomatch-replay subcommands.
 * The one invariant worth stating: a parsed flag value always borrows from
 * argv (or a string literal default), so nothing here allocates. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <librdkafka/rdkafka.h>

#include "replay.h"

int rp_parse(int argc, char **argv, const struct bm_opt *opts, size_t n, const char **pos,
             size_t maxpos, size_t *npos, const char *usage)
{
    return bm_opts_parse("biomatch-replay", argc, argv, 1, opts, n, pos, maxpos, npos, usage,
                         NULL);
}

int rp_double(const char *flag, const char *s, double lo, double hi, double *out)
{
    char *e;
    errno = 0;
    double v = strtod(s, &e);
    if (errno != 0 || e == s || *e != '\0' || !isfinite(v) || v < lo || v > hi) {
        fprintf(stderr, "biomatch-replay: %s must be a number in %g..%g\n", flag, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

int rp_u64(const char *flag, const char *s, uint64_t lo, uint64_t hi, uint64_t *out)
{
    char *e;
    errno = 0;
    unsigned long long v = (*s >= '0' && *s <= '9') ? strtoull(s, &e, 10) : 0;
    if (*s < '0' || *s > '9' || errno != 0 || *e != '\0' || v < lo || v > hi) {
        fprintf(stderr, "biomatch-replay: %s must be an integer in %llu..%llu\n", flag,
                (unsigned long long)lo, (unsigned long long)hi);
        return -1;
    }
    *out = v;
    return 0;
}

int rp_kafka_conf(struct rp_kafka *k, const char *client_id)
{
    if (k->brokers == NULL)
        k->brokers = getenv("BIOMATCH_KAFKA_BROKERS");
    if (k->prefix == NULL)
        k->prefix = getenv("BIOMATCH_TOPIC_PREFIX");
    if (k->prefix == NULL)
        k->prefix = "biomatch.";
    if (k->brokers == NULL || *k->brokers == '\0') {
        fprintf(stderr, "biomatch-replay: no brokers (--brokers or BIOMATCH_KAFKA_BROKERS)\n");
        return -1;
    }
    /* A load generator wants each job on the wire at its scheduled time:
     * a short linger keeps batching (and so the broker's load) sane
     * without adding the default 5 ms to every latency. Results are read
     * with the smallest fetch wait for the same reason. */
    k->pprops[0] = (struct bm_bus_prop){ "linger.ms", "1" };
    k->pprops[1] = (struct bm_bus_prop){ "queue.buffering.max.messages", "1000000" };
    k->cprops[0] = (struct bm_bus_prop){ "fetch.wait.max.ms", "5" };
    memset(&k->conf, 0, sizeof k->conf);
    k->conf.bootstrap_servers = k->brokers;
    k->conf.client_id = client_id;
    k->cconf = k->conf;
    k->conf.props = k->pprops;
    k->conf.nprops = 2;
    k->cconf.props = k->cprops;
    k->cconf.nprops = 1;
    return 0;
}

void rp_topic(char *buf, size_t len, const struct rp_kafka *k, const char *explicit_name,
              const char *base)
{
    if (explicit_name)
        snprintf(buf, len, "%s", explicit_name);
    else
        snprintf(buf, len, "%s%s", k->prefix, base);
}

int rp_topic_offsets(const struct bm_bus_conf *conf, const char *topic, int *partitions,
                     int64_t **hw, char *err, size_t errlen)
{
    char e[512];
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    if (rd_kafka_conf_set(c, "bootstrap.servers", conf->bootstrap_servers, e, sizeof e) !=
        RD_KAFKA_CONF_OK) {
        rd_kafka_conf_destroy(c);
        return bm_seterr(err, errlen, BM_EINVAL, "%s", e);
    }
    /* Security settings and the like must apply to this handle too. */
    for (size_t i = 0; i < conf->nprops; i++)
        if (strncmp(conf->props[i].key, "security.", 9) == 0 ||
            strncmp(conf->props[i].key, "ssl.", 4) == 0 || strncmp(conf->props[i].key, "sasl.", 5) == 0)
            rd_kafka_conf_set(c, conf->props[i].key, conf->props[i].value, e, sizeof e);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, c, e, sizeof e);
    if (rk == NULL) {
        rd_kafka_conf_destroy(c);
        return bm_seterr(err, errlen, BM_EKAFKA, "%s", e);
    }
    int rc = BM_OK;
    rd_kafka_topic_t *t = rd_kafka_topic_new(rk, topic, NULL);
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t ke = rd_kafka_metadata(rk, 0, t, &md, 10000);
    if (ke != RD_KAFKA_RESP_ERR_NO_ERROR || md->topic_cnt != 1 || md->topics[0].err) {
        rc = bm_seterr(err, errlen, BM_ENOTFOUND, "topic %s: %s", topic,
                       rd_kafka_err2str(ke ? ke : md->topic_cnt ? md->topics[0].err
                                                                : RD_KAFKA_RESP_ERR_UNKNOWN));
        goto out;
    }
    *partitions = md->topics[0].partition_cnt;
    if (hw) {
        *hw = calloc((size_t)*partitions + 1, sizeof **hw);
        if (*hw == NULL) {
            rc = bm_seterr(err, errlen, BM_ENOMEM, "out of memory");
            goto out;
        }
        for (int p = 0; p < *partitions; p++) {
            int64_t lo, hi;
            ke = rd_kafka_query_watermark_offsets(rk, topic, p, &lo, &hi, 10000);
            if (ke) {
                free(*hw);
                *hw = NULL;
                rc = bm_seterr(err, errlen, BM_EKAFKA, "watermarks of %s[%d]: %s", topic, p,
                               rd_kafka_err2str(ke));
                goto out;
            }
            (*hw)[p] = hi;
        }
    }
out:
    if (md)
        rd_kafka_metadata_destroy(md);
    rd_kafka_topic_destroy(t);
    rd_kafka_destroy(rk);
    return rc;
}

