/* The segment builder: the second half of the gallery role.
 *
 * One consumer in group "<prefix>coordinator-gallery" subscribes to every
 * gallery log (regex ^<prefix>gallery\..*); cooperative-sticky assignment
 * makes this process the single writer of the shards whose partitions it
 * holds. A newly assigned partition is paused until its shard is opened
 * (manifest and index loaded from Redis, or rebuilt from the log), then
 * resumed. Records go into the shard's buffer; the loop seals a shard when
 * its buffer reaches segment_max_bytes or segment_max_age_ms, and after
 * each publication stores the shard's manifest log_offset as the group
 * offset and commits. Every few seconds each shard checks Redis for loss
 * and compacts when worthwhile.
 *
 * Invariant: the offset stored for a partition is never above its
 * shard's published log_offset, so the group's committed position never
 * skips an unsealed record; the manifest's log_offset, not the committed
 * offset, decides what is sealed (records below it are ignored). */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "conf/conf.h"
#include "conf/topics.h"
#include "crypto/atrest.h"
#include "gallery.h"
#include "galreg.h"
#include "obs/log.h"
#include "obs/outage.h"
#include "shard.h"
#include "store/galdef.h"
#include "store/redis.h"

#define CHECK_INTERVAL_MS 2000
#define PENDING_RETRY_MS 1000
#define TIMER_INTERVAL_MS 20
#define MAX_PENDING 4096

struct owned {
    struct bm_gshard *sh;
    int64_t stored;          /* last offset stored for the partition */
};

struct pending {
    char topic[BM_TOPIC_MAX];
    int32_t partition;
};

struct builder {
    struct bm_coord_ctx *ctx;
    struct bm_redis *redis;
    struct bm_consumer *consumer;
    struct bm_bus_conf bus;
    struct bm_bus_prop *props;
    struct bm_gshard_env env;
    struct bm_keyring *keyring;  /* at-rest keys from the conf; NULL = none */
    struct owned *own;
    size_t nown, capown;
    struct pending pend[MAX_PENDING];
    size_t npend;
    char group[BM_TOPIC_MAX];
    char prefix[BM_TOPIC_MAX];   /* "<topic prefix>gallery." */
    int need_commit;
    struct bm_galreg *reg;       /* definitions from <prefix>galleries */
    int redis_down;              /* the last PING failed: shards wait (an outage
                                    reported to ctx->outage) */
};

/* ------------------------------------------------------------ redis */

/* Record whether Redis answers. During an outage of any length nothing is
 * sealed, opened or checked (every record stays in its buffer and in the
 * log; no offset moves); it is reported like every outage a role waits
 * out (obs/outage.h: /readyz 503, biomatch_outage_waiting{component}), and
 * the builder resumes by itself when Redis answers again. */
static void redis_state(struct builder *b, int up)
{
    if (up == !b->redis_down)
        return;
    b->redis_down = !up;
    bm_outage_report(&b->ctx->outage, !up, BM_EIO, "redis unreachable (segment builder)");
    /* Back, maybe empty: definitions first, so workers and intake find
     * their galleries before the shards are rebuilt. */
    if (up && b->reg != NULL)
        bm_galreg_restore(b->reg, b->redis);
    /* Hold the owned partitions meanwhile, so buffers stay bounded; the
     * pending ones stay paused until their shard opens anyway. */
    for (size_t i = 0; i < b->nown; i++) {
        const char *topic = bm_gshard_topic(b->own[i].sh);
        int32_t part = bm_gshard_partition(b->own[i].sh);
        if (up)
            bm_consumer_resume(b->consumer, topic, part);
        else
            bm_consumer_pause(b->consumer, topic, part);
    }
    BM_LOGF(up ? BM_LOG_INFO : BM_LOG_WARN,
            up ? "redis reachable again; builder resumes" : "redis unreachable; builder waits",
            BM_LF_INT("shards", b->nown));
}

/* PING Redis (the connection reconnects by itself); 1 when it answered. */
static int redis_ping(struct builder *b)
{
    int rc = bm_redis_ping(b->redis);
    if (rc != BM_OK)
        bm_redis_clear_err(b->redis);
    return rc == BM_OK;
}

static struct owned *find_owned(struct builder *b, const char *topic, int32_t partition,
                                size_t *at)
{
    for (size_t i = 0; i < b->nown; i++) {
        if (bm_gshard_partition(b->own[i].sh) == partition &&
            strcmp(bm_gshard_topic(b->own[i].sh), topic) == 0) {
            if (at != NULL)
                *at = i;
            return &b->own[i];
        }
    }
    return NULL;
}

static void store_progress(struct builder *b, struct owned *o)
{
    int64_t off = bm_gshard_log_offset(o->sh);
    if (off <= o->stored)
        return;
    int rc = bm_consumer_store_offset(b->consumer, bm_gshard_topic(o->sh),
                                      bm_gshard_partition(o->sh), off);
    if (rc == BM_OK) {
        o->stored = off;
        b->need_commit = 1;
    }
}

static void seal(struct builder *b, struct owned *o)
{
    if (bm_gshard_seal(o->sh) == BM_OK)
        store_progress(b, o);
}

/* ------------------------------------------------------------ rebalance */

static void on_assign(struct bm_consumer *c, const struct bm_bus_tp *tps, size_t n,
                      void *opaque)
{
    struct builder *b = opaque;
    for (size_t i = 0; i < n; i++) {
        /* Hold the partition until its shard is open: records must not be
         * consumed before we know the manifest's log_offset. */
        bm_consumer_pause(c, tps[i].topic, tps[i].partition);
        if (b->npend == MAX_PENDING) {
            BM_LOGF(BM_LOG_ERROR, "too many pending partitions", BM_LF_STR("topic", tps[i].topic));
            continue;
        }
        struct pending *p = &b->pend[b->npend++];
        snprintf(p->topic, sizeof p->topic, "%s", tps[i].topic);
        p->partition = tps[i].partition;
        BM_LOGF(BM_LOG_INFO, "gallery partition assigned", BM_LF_STR("topic", tps[i].topic),
                BM_LF_INT("partition", tps[i].partition));
    }
}

static void on_revoke(struct bm_consumer *c, const struct bm_bus_tp *tps, size_t n, int lost,
                      void *opaque)
{
    (void)c;
    struct builder *b = opaque;
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < b->npend; j++) {
            if (b->pend[j].partition == tps[i].partition &&
                strcmp(b->pend[j].topic, tps[i].topic) == 0) {
                b->pend[j] = b->pend[--b->npend];
                break;
            }
        }
        size_t at;
        struct owned *o = find_owned(b, tps[i].topic, tps[i].partition, &at);
        if (o == NULL)
            continue;
        /* Seal what we have so the next owner starts from a fresh manifest;
         * when the partition was lost another member may already write it,
         * and our compare-and-set would lose anyway. */
        if (!lost)
            seal(b, o);
        BM_LOGF(BM_LOG_INFO, "gallery partition released", BM_LF_STR("topic", tps[i].topic),
                BM_LF_INT("partition", tps[i].partition), BM_LF_BOOL("lost", lost));
        bm_gshard_free(o->sh);
        b->own[at] = b->own[--b->nown];
    }
}

/* Open the shards of pending partitions; resume the ones that opened. */
static void open_pending(struct builder *b)
{
    char err[512];
    size_t plen = strlen(b->prefix);
    for (size_t i = 0; i < b->npend;) {
        struct pending *p = &b->pend[i];
        const char *name = p->topic + (strncmp(p->topic, b->prefix, plen) == 0 ? plen : 0);
        int rc = BM_OK;
        Biomatch__V1__GalleryDefinition *def = bm_galdef_get(b->redis, name, &rc, err, sizeof err);
        const Biomatch__V1__GalleryDefinition *use = def;
        if (def == NULL && rc == BM_ENOTFOUND) {
            /* Redis lost it (or never had it): the galleries topic is the
             * durable copy; put it back and go on. */
            use = bm_galreg_find(b->reg, name, bm_mono_ms());
            if (use != NULL && bm_galdef_put(b->redis, use, NULL, err, sizeof err) == BM_OK)
                BM_LOGF(BM_LOG_WARN, "gallery definition restored from the galleries topic",
                        BM_LF_STR("gallery", name));
        }
        struct bm_gshard *sh = NULL;
        if (use == NULL) {
            BM_LOGF(BM_LOG_WARN, "gallery partition waits for its definition",
                    BM_LF_STR("gallery", name), BM_LF_INT("partition", p->partition),
                    BM_LF_STR("error", err));
        } else {
            sh = bm_gshard_open(&b->env, use, p->topic, p->partition, err, sizeof err);
            if (sh == NULL)
                BM_LOGF(BM_LOG_ERROR, "shard open failed; retrying", BM_LF_STR("gallery", name),
                        BM_LF_INT("shard", p->partition), BM_LF_STR("error", err));
        }
        bm_galdef_free(def);
        if (sh == NULL) {
            i++;
            continue;
        }
        if (b->nown == b->capown) {
            size_t nc = b->capown ? b->capown * 2 : 16;
            struct owned *no = realloc(b->own, nc * sizeof *no);
            if (no == NULL) {
                bm_gshard_free(sh);
                i++;
                continue;
            }
            b->own = no;
            b->capown = nc;
        }
        b->own[b->nown++] = (struct owned){sh, -1};
        store_progress(b, &b->own[b->nown - 1]);
        bm_consumer_resume(b->consumer, p->topic, p->partition);
        b->pend[i] = b->pend[--b->npend];
    }
}

/* ------------------------------------------------------------ loop */

static void builder_free(struct builder *b)
{
    char err[256];
    if (b->consumer != NULL) {
        /* Seal everything first: close runs the revoke callbacks too, but
         * sealing here keeps the order explicit (seal, store, commit). */
        for (size_t i = 0; i < b->nown; i++)
            seal(b, &b->own[i]);
        if (bm_consumer_commit(b->consumer, 1, err, sizeof err) != BM_OK)
            BM_LOGF(BM_LOG_WARN, "builder: final commit", BM_LF_STR("error", err));
        if (bm_consumer_close(b->consumer, err, sizeof err) != BM_OK)
            BM_LOGF(BM_LOG_WARN, "builder: consumer close", BM_LF_STR("error", err));
        bm_consumer_free(b->consumer);
    }
    for (size_t i = 0; i < b->nown; i++)
        bm_gshard_free(b->own[i].sh);
    free(b->own);
    if (b->redis_down) /* every reported wait ends (obs/outage.h) */
        bm_outage_report(&b->ctx->outage, 0, BM_OK, "");
    bm_galreg_free(b->reg);
    bm_redis_close(b->redis);
    bm_keyring_free(b->keyring);
    free(b->props);
    free(b);
}

int bm_builder_run(struct bm_coord_ctx *ctx)
{
    char err[512];
    const struct bm_conf *conf = ctx->conf;
    struct builder *b = calloc(1, sizeof *b);
    if (b == NULL)
        return BM_ENOMEM;
    b->ctx = ctx;
    int rc = BM_OK;
    snprintf(b->group, sizeof b->group, "%scoordinator-gallery", conf->topic_prefix);
    snprintf(b->prefix, sizeof b->prefix, "%sgallery.", conf->topic_prefix);
    /* "^<prefix>gallery\..*" with the prefix's regex metacharacters escaped. */
    char regex[2 * BM_TOPIC_MAX + 16];
    size_t k = 0;
    regex[k++] = '^';
    for (const char *s = b->prefix; *s != '\0' && k + 8 < sizeof regex; s++) {
        if (strchr(".^$|()[]{}*+?\\", *s) != NULL)
            regex[k++] = '\\';
        regex[k++] = *s;
    }
    memcpy(regex + k, ".*", 3);

    static const struct bm_bus_prop extra[] = {
        /* New galleries are found by the regex within this time. */
        {"topic.metadata.refresh.interval.ms", "5000"},
        {"max.poll.interval.ms", "600000"},
        {"fetch.max.bytes", "67108864"},
        {"max.partition.fetch.bytes", "16777216"},
    };
    if ((rc = bm_coord_bus_conf(ctx, extra, 4, &b->bus, &b->props, err, sizeof err)) != BM_OK)
        goto fail;
    /* Redis down at start is an outage like any other: wait for it. */
    int waiting = 0;
    for (int attempt = 0; (b->redis = bm_coord_redis(ctx, err, sizeof err)) == NULL; attempt++) {
        if (!bm_coord_wait(ctx, &waiting, attempt, BM_EIO, err)) {
            bm_coord_wait_end(ctx, &waiting);
            builder_free(b);
            return BM_OK; /* stopped while waiting */
        }
    }
    bm_coord_wait_end(ctx, &waiting);
    char gtopic[BM_TOPIC_MAX];
    if (bm_topic_name(gtopic, sizeof gtopic, conf->topic_prefix, BM_TOPIC_GALLERIES) != 0 ||
        (b->reg = bm_galreg_new(&b->bus, gtopic)) == NULL) {
        snprintf(err, sizeof err, "gallery registry: out of memory or prefix too long");
        rc = BM_ENOMEM;
        goto fail;
    }
    if (bm_galreg_sync(b->reg, bm_mono_ms(), err, sizeof err) == BM_OK)
        bm_galreg_restore(b->reg, b->redis);
    b->keyring = bm_keyring_from_conf(conf, &rc, err, sizeof err);
    if (rc != BM_OK)
        goto fail;
    if (bm_keyring_warning(b->keyring) != NULL)
        BM_LOGF(BM_LOG_WARN, "at-rest key file permissions",
                BM_LF_STR("warning", bm_keyring_warning(b->keyring)));
    if (b->keyring != NULL)
        BM_LOGF(BM_LOG_INFO, "at-rest encryption",
                BM_LF_STR("current_key_id", bm_keyring_current_id(b->keyring)),
                BM_LF_INT("keys", bm_keyring_count(b->keyring)));
    b->env.keyring = b->keyring;
    b->env.redis = b->redis;
    b->env.bus = &b->bus;
    b->env.metrics = ctx->metrics;
    b->env.segment_max_bytes = conf->coordinator.segment_max_bytes;
    /* Room for the envelope, so a sealed value is never larger than
     * segment_max_bytes (redis.max_reply_bytes may equal it). */
    if (bm_keyring_current_id(b->keyring) != NULL)
        b->env.segment_max_bytes -= BM_ATREST_OVERHEAD(BM_KEYRING_ID_MAX);
    b->env.segment_max_age_ms = conf->coordinator.segment_max_age_ms;
    b->env.grace_ms = 30000;
    b->env.compact_quiet_ms = 2000;
    struct bm_consumer_callbacks cbs = {on_assign, on_revoke, b};
    if ((b->consumer = bm_consumer_new(&b->bus, b->group, NULL, &cbs, err, sizeof err)) == NULL) {
        rc = BM_EKAFKA;
        goto fail;
    }
    const char *topics[] = {regex};
    if ((rc = bm_consumer_subscribe(b->consumer, topics, 1, err, sizeof err)) != BM_OK)
        goto fail;
    BM_LOGF(BM_LOG_INFO, "segment builder started", BM_LF_STR("subscription", regex),
            BM_LF_STR("group", b->group));

    long long last_timer = 0, last_check = bm_mono_ms(), last_pending = 0, last_ping = 0;
    while (!bm_coord_stopping(ctx)) {
        struct bm_bus_msg *m = NULL;
        int prc = bm_consumer_poll(b->consumer, TIMER_INTERVAL_MS, &m, err, sizeof err);
        if (prc == BM_OK) {
            struct owned *o = find_owned(b, m->topic, m->partition, NULL);
            if (o != NULL) {
                rc = bm_gshard_add(o->sh, m->offset, m->key, m->keylen, m->value, m->valuelen);
                if (rc != BM_OK) {
                    bm_bus_msg_free(m);
                    snprintf(err, sizeof err, "buffering a record: %s", bm_strerror(rc));
                    goto fail;
                }
            }
            bm_bus_msg_free(m);
        } else if (prc != BM_ETIMEDOUT) {
            BM_LOGF(BM_LOG_WARN, "builder: consumer", BM_LF_STR("error", err));
        }
        long long now = bm_mono_ms();
        if (b->redis_down || now - last_check >= CHECK_INTERVAL_MS) {
            if (b->redis_down && now - last_ping < PENDING_RETRY_MS)
                continue;
            last_ping = now;
            redis_state(b, redis_ping(b));
            if (b->redis_down)
                continue;
        }
        if (b->npend > 0 && now - last_pending >= PENDING_RETRY_MS) {
            open_pending(b);
            last_pending = now;
        }
        if (now - last_timer >= TIMER_INTERVAL_MS) {
            last_timer = now;
            for (size_t i = 0; i < b->nown; i++)
                if (bm_gshard_due(b->own[i].sh, now))
                    seal(b, &b->own[i]);
        }
        if (now - last_check >= CHECK_INTERVAL_MS) {
            last_check = now;
            char rerr[256];
            bm_galreg_sync(b->reg, now, rerr, sizeof rerr);
            for (size_t i = 0; i < b->nown; i++) {
                bm_gshard_check(b->own[i].sh, now);
                store_progress(b, &b->own[i]);
            }
        }
        if (b->need_commit) {
            b->need_commit = 0;
            bm_consumer_commit(b->consumer, 0, err, sizeof err);
        }
    }
    BM_LOGF(BM_LOG_INFO, "segment builder stopping", BM_LF_INT("shards", b->nown));
    builder_free(b);
    return BM_OK;
fail:
    BM_LOGF(BM_LOG_ERROR, "segment builder failed", BM_LF_STR("error", err));
    builder_free(b);
    return rc != BM_OK ? rc : BM_EINVAL;
}
