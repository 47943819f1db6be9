/* Helpers every coordinator role needs: Kafka settings and a Redis
 * connection built the same way from the configuration, and clocks.
 * Invariant: no role spells librdkafka properties or Redis options that the
 * configuration already decides. */
#define _POSIX_C_SOURCE 200809L
#include "role.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "conf/conf.h"
#include "obs/log.h"
#include "store/redis.h"
#include "store/redis_conf.h"

int bm_coord_bus_conf(const struct bm_coord_ctx *ctx, const struct bm_bus_prop *extra,
                      size_t nextra, struct bm_bus_conf *out,
                      struct bm_bus_prop **props, char *err, size_t errlen)
{
    const struct bm_conf *c = ctx->conf;
    size_t n = nextra + c->kafka_n;
    struct bm_bus_prop *p = calloc(n > 0 ? n : 1, sizeof *p);
    if (p == NULL)
        return bm_seterr(err, errlen, BM_ENOMEM, "kafka props: out of memory");
    for (size_t i = 0; i < nextra; i++)
        p[i] = extra[i];
    for (size_t i = 0; i < c->kafka_n; i++) {
        p[nextra + i].key = c->kafka[i].key;
        p[nextra + i].value = c->kafka[i].value;
    }
    *out = (struct bm_bus_conf){0};
    out->bootstrap_servers = c->brokers;
    out->client_id = c->node_id;
    out->topic_replication = c->topics.replication_factor;
    out->topic_min_insync = c->topics.min_insync_replicas;
    out->max_record_bytes = c->topics.max_record_bytes;
    out->props = p;
    out->nprops = n;
    out->on_wait = bm_outage_report;
    out->wait_opaque = (void *)&ctx->outage;
    out->stop = &ctx->stop;
    out->log = bm_log_kafka;
    *props = p;
    return BM_OK;
}

struct bm_redis *bm_coord_redis(const struct bm_coord_ctx *ctx, char *err, size_t errlen)
{
    return bm_redis_connect_conf(ctx->conf, err, errlen);
}

int bm_coord_stopping(const struct bm_coord_ctx *ctx)
{
    return atomic_load(&((struct bm_coord_ctx *)ctx)->stop) != 0;
}


int bm_coord_wait(struct bm_coord_ctx *ctx, int *waiting, int attempt, int err,
                  const char *why)
{
    if (bm_coord_stopping(ctx))
        return 0;
    if (!*waiting) {
        *waiting = 1;
        bm_outage_report(&ctx->outage, 1, err, why);
    }
    int64_t ms = 50;
    for (int i = 0; i < attempt && ms < 2000; i++)
        ms *= 2;
    if (ms > 2000)
        ms = 2000;
    /* Sleep in slices so a stop is seen quickly. */
    for (int64_t slept = 0; slept < ms && !bm_coord_stopping(ctx); slept += 50)
        bm_sleep_ms(50);
    return !bm_coord_stopping(ctx);
}

void bm_coord_wait_end(struct bm_coord_ctx *ctx, int *waiting)
{
    if (*waiting) {
        *waiting = 0;
        bm_outage_report(&ctx->outage, 0, BM_OK, "");
    }
}
