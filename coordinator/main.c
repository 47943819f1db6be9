/* biomatch-coordinator: the coordinator process (docs/architecture.md §3).
 *
 * Loads the configuration, starts the health/metrics endpoint, and runs
 * each role whose bit is set in coordinator.roles on its own thread (the
 * role table below lists which roles this binary has). SIGTERM or SIGINT
 * asks every role to stop gracefully; the process exits 0 when all roles
 * stopped cleanly and 1 when one failed (the others are then stopped too).
 *
 * Invariant: main never touches Kafka or Redis itself; roles own their
 * handles (role.h). */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "conf/args.h"
#include "conf/conf.h"
#include "obs/http.h"
#include "obs/log.h"
#include "obs/skew.h"
#include "obs/metrics.h"
#include "aggregate.h"
#include "intake.h"
#include "role.h"

#ifndef BM_VERSION
#define BM_VERSION "0.0.0"
#endif

/* The roles of this binary. A role another engineer has not built yet has
 * run == NULL: it is reported and skipped when configured. */
static const struct role_def {
    const char *name;
    unsigned bit;
    bm_role_run_fn run;
} roles[] = {
    {"intake", BM_CONF_ROLE_INTAKE, bm_role_intake_run},
    {"aggregate", BM_CONF_ROLE_AGGREGATE, bm_role_aggregate_run},
    {"gallery", BM_CONF_ROLE_GALLERY, bm_role_gallery_run},
};
#define NROLES (sizeof roles / sizeof roles[0])

struct role_thread {
    const struct role_def *def;
    struct bm_coord_ctx *ctx;
    pthread_t tid;
    int started;
    atomic_int done;
    int rc;
};

static volatile sig_atomic_t g_signal;

static void on_signal(int sig)
{
    g_signal = sig;
}

static void *role_main(void *arg)
{
    struct role_thread *t = arg;
    t->rc = t->def->run(t->ctx);
    atomic_store(&t->done, 1);
    return NULL;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: biomatch-coordinator [--config FILE] [--check-config]\n"
            "       biomatch-coordinator --help | --version\n"
            "\n"
            "  --config FILE   YAML configuration (docs/config.md); BIOMATCH_* environment\n"
            "                  variables override it\n"
            "  --check-config  load and validate the configuration, print it (secrets\n"
            "                  redacted) and exit 0, or print the error and exit 1\n"
            "  --help          this text\n"
            "  --version       print the version\n"
            "\n"
            "Roles (coordinator.roles): intake, aggregate, gallery.\n");
}

int main(int argc, char **argv)
{
    struct bm_args args;
    int early = bm_args_main(argc, argv, "biomatch-coordinator", BM_VERSION, usage, &args);
    if (early >= 0)
        return early;
    const char *config = args.config;
    int check = args.check;

    bm_log_init("coordinator");
    char err[1024];
    struct bm_conf *conf = bm_conf_load(config, err, sizeof err);
    if (conf == NULL) {
        fprintf(stderr, "biomatch-coordinator: %s\n", err);
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
    if (conf->log.level != NULL && bm_log_level_parse(conf->log.level, &lvl) == BM_OK)
        bm_log_set_level(lvl);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    int exit_code = 0;
    struct bm_coord_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    atomic_init(&ctx.stop, 0);
    ctx.conf = conf;
    ctx.metrics = bm_metrics_new();
    if (ctx.metrics != NULL)
        ctx.skew = bm_skew_new(ctx.metrics, err, sizeof err);
    if (ctx.metrics == NULL || ctx.skew == NULL) {
        fprintf(stderr, "biomatch-coordinator: out of memory\n");
        bm_metrics_destroy(ctx.metrics);
        bm_conf_destroy(conf);
        return 1;
    }
    if (conf->http.enabled) {
        struct bm_http_opts ho = {conf->http.bind, conf->http.port, ctx.metrics,
                                  conf->http.livez_max_age_ms};
        ctx.http = bm_http_start(&ho, err, sizeof err);
        if (ctx.http == NULL) {
            BM_LOGF(BM_LOG_ERROR, "health endpoint failed", BM_LF_STR("error", err));
            bm_skew_free(ctx.skew);
            bm_metrics_destroy(ctx.metrics);
            bm_conf_destroy(conf);
            return 1;
        }
        BM_LOGF(BM_LOG_INFO, "health endpoint listening", BM_LF_INT("port", bm_http_port(ctx.http)));
    }
    bm_outage_init(&ctx.outage, ctx.http, ctx.metrics, "coordinator");

    struct role_thread threads[NROLES];
    memset(threads, 0, sizeof threads);
    size_t running = 0;
    for (size_t i = 0; i < NROLES; i++) {
        if (!(conf->coordinator.roles & roles[i].bit))
            continue;
        if (roles[i].run == NULL) {
            BM_LOGF(BM_LOG_WARN, "role not built into this binary; skipped",
                    BM_LF_STR("role", roles[i].name));
            continue;
        }
        threads[i].def = &roles[i];
        threads[i].ctx = &ctx;
        atomic_init(&threads[i].done, 0);
        if (pthread_create(&threads[i].tid, NULL, role_main, &threads[i]) != 0) {
            BM_LOGF(BM_LOG_ERROR, "cannot start role thread", BM_LF_STR("role", roles[i].name));
            exit_code = 1;
            atomic_store(&ctx.stop, 1);
            break;
        }
        threads[i].started = 1;
        running++;
        BM_LOGF(BM_LOG_INFO, "role started", BM_LF_STR("role", roles[i].name));
    }
    if (running == 0 && exit_code == 0) {
        BM_LOGF(BM_LOG_ERROR, "no configured role is available",
                BM_LF_INT("roles", conf->coordinator.roles));
        exit_code = 1;
    }
    if (ctx.http != NULL && exit_code == 0)
        bm_http_set_ready(ctx.http, true, NULL);

    /* Supervise: heartbeat, signals, a role that ended on its own. */
    while (exit_code == 0 && !atomic_load(&ctx.stop)) {
        if (g_signal != 0) {
            BM_LOGF(BM_LOG_INFO, "stopping on signal", BM_LF_INT("signal", g_signal));
            break;
        }
        for (size_t i = 0; i < NROLES; i++) {
            if (threads[i].started && atomic_load(&threads[i].done)) {
                BM_LOGF(threads[i].rc == BM_OK ? BM_LOG_INFO : BM_LOG_ERROR, "role ended",
                        BM_LF_STR("role", threads[i].def->name),
                        BM_LF_STR("result", bm_strerror(threads[i].rc)));
                atomic_store(&ctx.stop, 1);
            }
        }
        if (ctx.http != NULL)
            bm_http_heartbeat(ctx.http);
        bm_sleep_ms(100);
    }
    atomic_store(&ctx.stop, 1);
    if (ctx.http != NULL)
        bm_http_set_ready(ctx.http, false, "stopping");
    for (size_t i = 0; i < NROLES; i++) {
        if (!threads[i].started)
            continue;
        pthread_join(threads[i].tid, NULL);
        if (threads[i].rc != BM_OK)
            exit_code = 1;
    }
    BM_LOGF(BM_LOG_INFO, "coordinator stopped", BM_LF_INT("exit_code", exit_code));
    bm_http_stop(ctx.http);
    bm_skew_free(ctx.skew);
    bm_metrics_destroy(ctx.metrics);
    bm_conf_destroy(conf);
    return exit_code;
}
