/* biomatch-worker: consumes per-shard match tasks, scores them against the
 * shards it owns and publishes one partial result per task
 * (docs/architecture.md §3, docs/internals/worker.md).
 *
 * This file is the process: flags, configuration, start-up, the poll loop
 * and the SIGTERM drain. Invariant of the poll loop: no iteration blocks
 * for more than a few milliseconds (loads run on the loader thread, scoring
 * on the scoring thread), so the consumers stay well inside
 * max.poll.interval.ms and rebalances are served promptly. */
#define _POSIX_C_SOURCE 200809L

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/err.h"
#include "conf/args.h"
#include "crypto/keyring.h"
#include "match/cpu.h"
#include "match/pool.h"
#include "obs/http.h"
#include "obs/log.h"
#include "obs/metrics.h"
#include "obs/skew.h"
#include "store/galdef.h"
#include "store/loader.h"
#include "store/redis.h"
#include "store/redis_conf.h"
#include "wire/headers.h"
#include "worker.h"

static volatile sig_atomic_t g_stop;

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}


static void usage(FILE *f)
{
    fputs("usage: biomatch-worker [--config FILE] [--check-config] [--help] [--version]\n"
          "\n"
          "Consumes <prefix>tasks.<gallery> for every gallery in worker.galleries\n"
          "(consumer group <prefix>workers.<gallery>), loads the assigned shards\n"
          "from Redis and publishes one PartialResult per task to <prefix>partials.\n"
          "\n"
          "  --config FILE     (or --config=FILE) YAML configuration (docs/config.md); BIOMATCH_*\n"
          "                    environment variables override it\n"
          "  --check-config    load and validate the configuration, print it\n"
          "                    (secrets redacted) and exit 0, or 1 when invalid\n"
          "  --help            this text\n"
          "  --version         print the version\n"
          "\n"
          "SIGTERM or SIGINT drain: stop fetching, finish in-flight batches,\n"
          "flush, commit offsets, leave the group, exit 0.\n",
          f);
}

static int check_config(const struct bm_conf *c, char *err, size_t errlen)
{
    if (c->worker.galleries_n == 0)
        return bm_seterr(err, errlen, BM_EINVAL, "worker.galleries is empty: nothing to serve");
    for (size_t i = 0; i < c->worker.galleries_n; i++)
        if (!bm_topic_gallery_name_valid(c->worker.galleries[i]))
            return bm_seterr(err, errlen, BM_EINVAL,
                             "worker.galleries: '%s' is not a valid gallery name",
                             c->worker.galleries[i]);
    return BM_OK;
}

/* Read every served gallery's definition, retrying until the coordinator
 * has created them (or a signal arrives). */
static int load_definitions(struct wk *w)
{
    char err[512];
    struct bm_redis *r = NULL;
    size_t done = 0;
    int64_t last_log = 0;
    while (!g_stop) {
        if (r == NULL)
            r = bm_redis_connect_conf(w->conf, err, sizeof err);
        while (r != NULL && done < w->ngal) {
            struct wk_gallery *g = &w->gal[done];
            int rc;
            g->def = bm_galdef_get(r, g->name, &rc, err, sizeof err);
            if (g->def == NULL)
                break;
            if (bm_galdef_to_spec(g->def, &g->spec, err, sizeof err) != BM_OK) {
                BM_LOGF(BM_LOG_ERROR, "gallery definition unusable", BM_LF_STR("gallery", g->name),
                        BM_LF_STR("error", err));
                bm_redis_close(r);
                return BM_EINVAL;
            }
            g->shards = g->def->shards;
            BM_LOGF(BM_LOG_INFO, "gallery definition loaded", BM_LF_STR("gallery", g->name),
                    BM_LF_INT("shards", g->shards), BM_LF_INT("replicas", g->def->replicas));
            done++;
        }
        if (done == w->ngal) {
            bm_redis_close(r);
            return BM_OK;
        }
        int64_t now = bm_mono_ms();
        if (now - last_log >= 10000) {
            BM_LOGF(BM_LOG_WARN, "waiting for gallery definitions",
                    BM_LF_STR("gallery", w->gal[done].name), BM_LF_STR("error", err));
            last_log = now;
        }
        if (r != NULL && bm_redis_err(r) != BM_OK) {
            bm_redis_close(r);
            r = NULL;
        }
        struct timespec ts = {0, 200 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    bm_redis_close(r);
    return BM_ECLOSED;
}

static int setup(struct wk *w, char *err, size_t errlen)
{
    const struct bm_conf *c = w->conf;
    w->ngal = c->worker.galleries_n;
    w->gal = calloc(w->ngal, sizeof *w->gal);
    w->props = calloc(c->kafka_n + 1, sizeof *w->props);
    if (w->gal == NULL || w->props == NULL)
        return bm_seterr(err, errlen, BM_ENOMEM, "out of memory");
    for (size_t i = 0; i < c->kafka_n; i++) {
        w->props[i].key = c->kafka[i].key;
        w->props[i].value = c->kafka[i].value;
    }
    w->busconf.bootstrap_servers = c->brokers;
    w->busconf.client_id = c->node_id;
    w->busconf.props = w->props;
    w->busconf.nprops = c->kafka_n;
    w->busconf.log = bm_log_kafka;
    w->busconf.max_record_bytes = c->topics.max_record_bytes;
    if (bm_topic_name(w->partials, sizeof w->partials, c->topic_prefix, BM_TOPIC_PARTIALS) != 0 ||
        bm_topic_name(w->dlq, sizeof w->dlq, c->topic_prefix, BM_TOPIC_DLQ) != 0)
        return bm_seterr(err, errlen, BM_ERANGE, "topic prefix too long");
    bm_wire_content_type(&biomatch__v1__partial_result__descriptor, w->content_type,
                         sizeof w->content_type);
    bm_wire_limits_default(&w->limits);
    w->max_task_bytes = (size_t)c->coordinator.max_job_bytes + WK_TASK_SLACK_BYTES;
    for (size_t i = 0; i < w->ngal; i++) {
        struct wk_gallery *g = &w->gal[i];
        g->w = w;
        snprintf(g->name, sizeof g->name, "%s", c->worker.galleries[i]);
        if (bm_topic_tasks(g->topic, sizeof g->topic, c->topic_prefix, g->name) != 0)
            return bm_seterr(err, errlen, BM_ERANGE, "topic name too long");
        snprintf(g->group, sizeof g->group, "%sworkers.%s", c->topic_prefix, g->name);
    }
    /* Both conditions are waited on with monotonic deadlines. */
    pthread_mutex_init(&w->lock, NULL);
    pthread_mutex_init(&w->qlock, NULL);
    if (bm_cond_init_mono(&w->loader_cv) != BM_OK || bm_cond_init_mono(&w->qcv) != BM_OK)
        return bm_seterr(err, errlen, BM_ENOMEM, "cannot create condition variables");
    atomic_init(&w->draining, 0);

    w->metrics = bm_metrics_new();
    if (w->metrics == NULL)
        return bm_seterr(err, errlen, BM_ENOMEM, "out of memory");
    int rc = wk_metrics_init(w, err, errlen);
    if (rc != BM_OK)
        return rc;
    w->skew = bm_skew_new(w->metrics, err, errlen);
    if (w->skew == NULL)
        return BM_ENOMEM;
    if (c->http.enabled) {
        struct bm_http_opts ho = {0};
        ho.bind = c->http.bind;
        ho.port = c->http.port;
        ho.metrics = w->metrics;
        ho.max_heartbeat_age_ms = c->http.livez_max_age_ms;
        w->http = bm_http_start(&ho, err, errlen);
        if (w->http == NULL)
            return BM_EIO;
        bm_http_set_ready(w->http, false, "loading gallery definitions");
        BM_LOGF(BM_LOG_INFO, "http listening", BM_LF_STR("bind", c->http.bind),
                BM_LF_INT("port", bm_http_port(w->http)));
    }
    w->pool = bm_pool_new((unsigned)c->worker.threads, err, errlen);
    if (w->pool == NULL)
        return BM_ENOMEM;
    /* Segments sealed under an at-rest key open with these keys. */
    w->keyring = bm_keyring_from_conf(c, &rc, err, errlen);
    if (rc != BM_OK)
        return rc;
    if (bm_keyring_warning(w->keyring) != NULL)
        BM_LOGF(BM_LOG_WARN, "at-rest key file permissions",
                BM_LF_STR("warning", bm_keyring_warning(w->keyring)));
    return BM_OK;
}

static int start_clients(struct wk *w, char *err, size_t errlen)
{
    /* The producer tells readiness and metrics when it waits out an outage;
     * this thread is the poll thread (publish.c decides how to wait by it). */
    bm_outage_init(&w->outage, w->http, w->metrics, "worker");
    w->busconf.on_wait = bm_outage_report;
    w->busconf.wait_opaque = &w->outage;
    w->poller = pthread_self();
    const char *rl[] = {"role", "worker", NULL};
    w->refused = bm_metrics_counter(w->metrics, "biomatch_records_refused_total",
                                    "Records Kafka refused for good (an outcome for that record)",
                                    rl, err, errlen);
    w->producer = bm_producer_new(&w->busconf, err, errlen);
    if (w->producer == NULL)
        return BM_EKAFKA;
    int rc = wk_loader_start(w, err, errlen);
    if (rc == BM_OK)
        rc = wk_scorer_start(w, err, errlen);
    if (rc != BM_OK)
        return rc;
    struct bm_consumer_callbacks cbs = {wk_on_assign, wk_on_revoke, w};
    for (size_t i = 0; i < w->ngal; i++) {
        struct wk_gallery *g = &w->gal[i];
        g->consumer = bm_consumer_new(&w->busconf, g->group, NULL, &cbs, err, errlen);
        if (g->consumer == NULL)
            return BM_EKAFKA;
        const char *topics[1] = {g->topic};
        rc = bm_consumer_subscribe(g->consumer, topics, 1, err, errlen);
        if (rc != BM_OK)
            return rc;
        BM_LOGF(BM_LOG_INFO, "subscribed", BM_LF_STR("gallery", g->name),
                BM_LF_STR("topic", g->topic), BM_LF_STR("group", g->group));
    }
    return BM_OK;
}

/* One pass over the consumers: take what is there, waiting at most
 * 'wait_ms' on the first consumer when nothing came. Returns messages
 * handled. */
static int poll_once(struct wk *w, int wait_ms)
{
    int got = 0;
    char err[256];
    for (size_t i = 0; i < w->ngal; i++) {
        struct wk_gallery *g = &w->gal[i];
        for (int n = 0; n < 256; n++) {
            struct bm_bus_msg *m = NULL;
            int rc = bm_consumer_poll(g->consumer, 0, &m, err, sizeof err);
            if (rc == BM_OK) {
                wk_handle_msg(w, g, m);
                got++;
                continue;
            }
            if (rc == BM_EKAFKA)
                BM_LOGF(BM_LOG_WARN, "consumer error", BM_LF_STR("gallery", g->name),
                        BM_LF_STR("error", err));
            break;
        }
    }
    bm_producer_poll(w->producer, 0);
    if (got == 0 && wait_ms > 0) {
        struct bm_bus_msg *m = NULL;
        if (bm_consumer_poll(w->gal[0].consumer, wait_ms, &m, err, sizeof err) == BM_OK) {
            wk_handle_msg(w, &w->gal[0], m);
            got++;
        }
        bm_producer_poll(w->producer, 0);
    }
    return got;
}

static int fatal_error(struct wk *w)
{
    char err[256];
    if (atomic_load(&w->stuck)) {
        BM_LOGF(BM_LOG_ERROR, "an answer could not be sent; stopping", BM_LF_STR("node", w->conf->node_id));
        return 1;
    }
    if (bm_producer_fatal(w->producer, err, sizeof err) != BM_OK) {
        BM_LOGF(BM_LOG_ERROR, "producer fatal error", BM_LF_STR("error", err));
        return 1;
    }
    for (size_t i = 0; i < w->ngal; i++) {
        if (bm_consumer_fatal(w->gal[i].consumer, err, sizeof err) != BM_OK) {
            BM_LOGF(BM_LOG_ERROR, "consumer fatal error", BM_LF_STR("gallery", w->gal[i].name),
                    BM_LF_STR("error", err));
            return 1;
        }
    }
    return 0;
}

static int run(struct wk *w)
{
    int64_t last_ready_check = 0;
    int ready = -1;
    int fatal = 0;
    while (!g_stop) {
        poll_once(w, 5);
        if (w->http != NULL)
            bm_http_heartbeat(w->http);
        int64_t now = bm_mono_ms();
        int waiting = wk_resume_ready(w);
        if (w->http != NULL && (waiting == 0) != (ready == 1)) {
            char why[64];
            snprintf(why, sizeof why, "loading %d partition(s)", waiting);
            bm_http_set_ready(w->http, waiting == 0, why);
            ready = waiting == 0;
        }
        int64_t since = atomic_load(&w->scoring_since_ms);
        if (since != 0 && now - since > w->conf->worker.max_scoring_ms) {
            /* A hung pass never returns, so neither drain nor teardown
             * could finish. Leave at once: the tasks are redelivered, and
             * the hang counts as an attempt (quarantine.c). */
            BM_LOGF(BM_LOG_ERROR, "scoring hung; exiting so its tasks are retried",
                    BM_LF_INT("scoring_ms", now - since),
                    BM_LF_INT("max_scoring_ms", w->conf->worker.max_scoring_ms));
            _exit(1);
        }
        if (now - last_ready_check >= 1000) {
            last_ready_check = now;
            if (fatal_error(w)) {
                fatal = 1;
                break;
            }
        }
    }
    return fatal;
}

/* SIGTERM: stop fetching, finish in-flight batches, flush, commit, leave. */
static void drain(struct wk *w)
{
    char err[256];
    int64_t deadline = bm_mono_ms() + w->conf->worker.drain_timeout_ms;
    BM_LOGF(BM_LOG_INFO, "draining", BM_LF_INT("timeout_ms", w->conf->worker.drain_timeout_ms));
    atomic_store(&w->draining, 1);
    if (w->http != NULL)
        bm_http_set_ready(w->http, false, "draining");
    wk_pause_all(w);
    wk_scorer_finish(w);
    while (bm_mono_ms() < deadline) {
        poll_once(w, 0);
        if (atomic_load(&w->scorer_done) && bm_producer_outstanding(w->producer) == 0)
            break;
        bm_producer_poll(w->producer, 5);
        if (w->http != NULL)
            bm_http_heartbeat(w->http);
    }
    int64_t left = deadline - bm_mono_ms();
    if (bm_producer_flush(w->producer, left > 0 ? (int)left : 0) != BM_OK ||
        !atomic_load(&w->scorer_done))
        BM_LOGF(BM_LOG_WARN, "drain timed out; unanswered tasks will be redelivered",
                BM_LF_INT("outstanding", bm_producer_outstanding(w->producer)));
    for (size_t i = 0; i < w->ngal; i++) {
        struct wk_gallery *g = &w->gal[i];
        if (g->consumer == NULL)
            continue;
        if (bm_consumer_commit(g->consumer, 1, err, sizeof err) != BM_OK)
            BM_LOGF(BM_LOG_WARN, "final commit failed", BM_LF_STR("gallery", g->name),
                    BM_LF_STR("error", err));
        if (bm_consumer_close(g->consumer, err, sizeof err) != BM_OK)
            BM_LOGF(BM_LOG_WARN, "leaving the group failed", BM_LF_STR("gallery", g->name),
                    BM_LF_STR("error", err));
    }
}

static void teardown(struct wk *w)
{
    wk_scorer_join(w);
    wk_loader_stop(w);
    for (size_t i = 0; w->gal != NULL && i < w->ngal; i++) {
        if (w->gal[i].consumer != NULL) {
            char err[128];
            bm_consumer_close(w->gal[i].consumer, err, sizeof err);
        }
    }
    /* Purged sends call back with BM_ECLOSED, which touches nothing. */
    bm_producer_free(w->producer);
    for (size_t i = 0; w->gal != NULL && i < w->ngal; i++)
        bm_consumer_free(w->gal[i].consumer);
    wk_assign_free(w);
    for (size_t i = 0; w->gal != NULL && i < w->ngal; i++)
        bm_galdef_free(w->gal[i].def);
    bm_pool_free(w->pool);
    bm_keyring_free(w->keyring);
    bm_http_stop(w->http);
    bm_skew_free(w->skew);
    bm_metrics_destroy(w->metrics);
    free(w->gal);
    free(w->props);
}

int main(int argc, char **argv)
{
    struct bm_args args;
    int early = bm_args_main(argc, argv, "biomatch-worker", WK_VERSION, usage, &args);
    if (early >= 0)
        return early;
    const char *config = args.config;
    int check = args.check;

    char err[1024];
    bm_log_init("worker");
    struct bm_conf *conf = bm_conf_load(config, err, sizeof err);
    if (conf == NULL || check_config(conf, err, sizeof err) != BM_OK) {
        fprintf(stderr, "biomatch-worker: %s\n", err);
        bm_conf_destroy(conf);
        return 1;
    }
    if (check) {
        char *dump = NULL;
        int rc = bm_conf_dump(conf, &dump);
        if (rc == BM_OK)
            printf("%s\n", dump);
        free(dump);
        bm_conf_destroy(conf);
        return rc == BM_OK ? 0 : 1;
    }
    enum bm_log_level lvl;
    if (getenv("BIOMATCH_LOG_LEVEL") == NULL && bm_log_level_parse(conf->log.level, &lvl) == BM_OK)
        bm_log_set_level(lvl);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (strcmp(conf->simd, "auto") != 0) {
        enum bm_simd level;
        if (bm_simd_parse(conf->simd, &level) == BM_OK)
            bm_simd_force(level);
    }
    if (bm_cpu_init() != BM_OK)
        BM_LOGF(BM_LOG_WARN, "BIOMATCH_SIMD not usable; using the detected level",
                BM_LF_STR("simd", bm_simd_name(bm_simd_active())));

    struct wk w;
    memset(&w, 0, sizeof w);
    w.conf = conf;
    w.refresh_ms = conf->worker.refresh_interval_ms;
    int code = 1;
    if (setup(&w, err, sizeof err) != BM_OK) {
        BM_LOGF(BM_LOG_ERROR, "start-up failed", BM_LF_STR("error", err));
        goto out;
    }
    BM_LOGF(BM_LOG_INFO, "starting", BM_LF_STR("version", WK_VERSION),
            BM_LF_STR("node", conf->node_id), BM_LF_STR("simd", bm_simd_name(bm_simd_active())),
            BM_LF_INT("threads", conf->worker.threads),
            BM_LF_INT("batch_max_probes", conf->worker.batch_max_probes),
            BM_LF_INT("batch_max_wait_ms", conf->worker.batch_max_wait_ms),
            BM_LF_INT("refresh_ms", w.refresh_ms));
    int rc = load_definitions(&w);
    if (rc == BM_ECLOSED) {
        code = 0; /* stopped before there was anything to drain */
        goto out;
    }
    if (rc != BM_OK)
        goto out;
    if (start_clients(&w, err, sizeof err) != BM_OK) {
        BM_LOGF(BM_LOG_ERROR, "start-up failed", BM_LF_STR("error", err));
        goto out;
    }
    int fatal = run(&w);
    drain(&w);
    code = fatal ? 1 : 0;
    BM_LOGF(BM_LOG_INFO, "stopped", BM_LF_INT("exit", code));
out:
    teardown(&w);
    bm_conf_destroy(conf);
    return code;
}
