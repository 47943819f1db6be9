/* Shared plumbing of the `biomatch` command (see cli.h): the flag parser
 * (bm_tools' opts.c under the command's name), strict number parsing, and
 * the connection settings. */
#include "cli.h"
#include "obs/log.h"
#include "store/redis_conf.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int cli_parse(int argc, char **argv, int first, const struct bm_opt *opts, size_t n,
              const char **pos, size_t maxpos, size_t *npos, const char *usage,
              const char *summary)
{
    return bm_opts_parse("biomatch", argc, argv, first, opts, n, pos, maxpos, npos, usage,
                         summary);
}

int cli_u64(const char *flag, const char *s, uint64_t *out)
{
    char *end = NULL;
    errno = 0;
    if (s == NULL || *s < '0' || *s > '9') {
        fprintf(stderr, "biomatch: %s needs a non-negative integer\n", flag);
        return -1;
    }
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0') {
        fprintf(stderr, "biomatch: %s: '%s' is not a valid integer\n", flag, s);
        return -1;
    }
    *out = (uint64_t)v;
    return 0;
}

int cli_u32(const char *flag, const char *s, uint32_t lo, uint32_t hi, uint32_t *out)
{
    uint64_t v;
    if (cli_u64(flag, s, &v) != 0)
        return -1;
    if (v < lo || v > hi) {
        fprintf(stderr, "biomatch: %s must be in %u..%u\n", flag, lo, hi);
        return -1;
    }
    *out = (uint32_t)v;
    return 0;
}

int cli_double(const char *flag, const char *s, double lo, double hi, double *out)
{
    char *end = NULL;
    errno = 0;
    double v = s ? strtod(s, &end) : 0;
    if (s == NULL || errno != 0 || end == s || *end != '\0' || !(v >= lo && v <= hi)) {
        fprintf(stderr, "biomatch: %s must be a number in %g..%g\n", flag, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

int cli_conf_load(struct cli_common *c)
{
    char err[512];
    c->conf = bm_conf_load(c->config, err, sizeof err);
    if (c->conf == NULL) {
        fprintf(stderr, "biomatch: configuration: %s\n", err);
        return -1;
    }
    return 0;
}

void cli_conf_free(struct cli_common *c)
{
    bm_conf_destroy(c->conf);
    c->conf = NULL;
}

const char *cli_prefix(const struct cli_common *c)
{
    return c->prefix != NULL ? c->prefix : c->conf->topic_prefix;
}

struct bm_redis *cli_redis(const struct cli_common *c)
{
    char err[512];
    struct bm_redis_opts o;
    const char *url = c->redis != NULL ? c->redis : c->conf->redis.url;
    bm_redis_opts_from_conf(&o, c->conf);    /* timeouts, TLS files */
    /* Shard loads move big replies; the CLI is patient. */
    o.io_timeout_ms = c->conf->redis.io_timeout_ms > 30000 ? c->conf->redis.io_timeout_ms : 30000;
    o.max_reply_bytes = BM_REDIS_DEFAULT_MAX_REPLY_BYTES;
    struct bm_redis *r = c->redis != NULL ? bm_redis_connect(url, &o, err, sizeof err)
                                          : bm_redis_connect_opts(c->conf, &o, err, sizeof err);
    if (r == NULL)
        fprintf(stderr, "biomatch: redis: %s\n", err);
    return r;
}

int cli_bus_conf(const struct cli_common *c, struct bm_bus_conf *bc, struct bm_bus_prop *props)
{
    memset(bc, 0, sizeof *bc);
    bc->bootstrap_servers = c->brokers != NULL ? c->brokers : c->conf->brokers;
    if (bc->bootstrap_servers == NULL || bc->bootstrap_servers[0] == '\0') {
        fprintf(stderr, "biomatch: no Kafka brokers (--brokers or BIOMATCH_KAFKA_BROKERS)\n");
        return -1;
    }
    bc->client_id = "biomatch-cli";
    bc->topic_replication = c->conf->topics.replication_factor;
    bc->topic_min_insync = c->conf->topics.min_insync_replicas;
    bc->max_record_bytes = c->conf->topics.max_record_bytes;
    for (size_t i = 0; i < c->conf->kafka_n; i++) {
        props[i].key = c->conf->kafka[i].key;
        props[i].value = c->conf->kafka[i].value;
    }
    bc->props = props;
    bc->nprops = c->conf->kafka_n;
    /* librdkafka's lines (a broker it cannot reach, say) only at debug:
     * each command reports its own failure in one sentence. */
    static enum bm_log_level kafka_cap = BM_LOG_DEBUG;
    bc->log = bm_log_kafka;
    bc->log_opaque = &kafka_cap;
    return 0;
}
