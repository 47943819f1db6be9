/* The coordinator's roles (docs/architecture.md §3): intake, aggregate and
 * gallery. Each role is one module with one entry point that main.c runs
 * on its own thread when the role's bit is set in coordinator.roles.
 *
 * Contract of a role's run function: it owns every Kafka and Redis handle
 * it opens, polls until ctx->stop becomes non-zero, then stops gracefully
 * (finishes in-flight work, flushes its producer, commits, closes its
 * consumers) and returns BM_OK; it returns a negative enum bm_err when it
 * cannot go on, after releasing everything (main then stops the others and
 * exits non-zero). A role never calls exit() and never installs signal
 * handlers.
 *
 * Thread: the context is shared read-only by all role threads except the
 * atomics (stop) and the registry/http handles, which are thread-safe. */
#ifndef BM_COORD_ROLE_H
#define BM_COORD_ROLE_H

#include <stdatomic.h>
#include <stddef.h>

#include "biomatch.pb-c.h"
#include "bus/bus.h"
#include "common/err.h"
#include "obs/outage.h"

struct bm_conf;
struct bm_metrics;
struct bm_http;
struct bm_redis;
struct bm_skew;

struct bm_coord_ctx {
    const struct bm_conf *conf;   /* loaded configuration; read-only */
    struct bm_metrics *metrics;   /* registry shared by all roles; thread-safe */
    struct bm_http *http;         /* health endpoint, NULL when disabled */
    struct bm_skew *skew;         /* clock skew estimate of every role; thread-safe */
    atomic_int stop;              /* set to 1 by main on SIGTERM/SIGINT */
    struct bm_outage outage;      /* readiness and metrics while a role waits
                                   * out a Kafka or Redis outage; a zeroed one
                                   * (tests) only logs */
};

/* A role's entry point; see the contract above. */
typedef int (*bm_role_run_fn)(struct bm_coord_ctx *ctx);

/* The gallery role (coordinator/gallery.c): enrollment intake on one thread
 * and the segment builder on the calling thread. */
int bm_role_gallery_run(struct bm_coord_ctx *ctx);

/* ------------------------------------------------ helpers shared by roles */

/* Kafka settings of ctx->conf as a bm_bus_conf: brokers, node id as
 * client id, topics.* for the topics an admin handle creates, the conf's
 * kafka: map as props, preceded by 'extra' (nextra
 * entries; the operator's kafka: map is applied after them, so it wins);
 * producers report waits to ctx->outage and stop waiting on ctx->stop.
 * On BM_OK *props is a malloc'd array the caller frees with free() after
 * the last handle was built from 'out' (strings are borrowed from the
 * conf and 'extra'). BM_ENOMEM otherwise. */
int bm_coord_bus_conf(const struct bm_coord_ctx *ctx, const struct bm_bus_prop *extra,
                      size_t nextra, struct bm_bus_conf *out,
                      struct bm_bus_prop **props, char *err, size_t errlen);

/* Connect to ctx->conf's Redis with the conf's timeouts and reply limit.
 * Returns the connection (caller closes) or NULL with the reason in err. */
struct bm_redis *bm_coord_redis(const struct bm_coord_ctx *ctx, char *err, size_t errlen);

/* 1 once ctx->stop is set. */
int bm_coord_stopping(const struct bm_coord_ctx *ctx);

/* Wait out a transient error (bm_err_transient) of a role's step: sleep
 * 'attempt'-scaled back-off (50 ms doubling to 2 s) while ctx->outage
 * shows the wait. Returns 1 to try again, 0 once ctx->stop is set.
 * Call bm_coord_wait_end after the step succeeded or gave up if any wait
 * was begun (*waiting != 0). Thread: the role's thread. */
int bm_coord_wait(struct bm_coord_ctx *ctx, int *waiting, int attempt, int err,
                  const char *why);
void bm_coord_wait_end(struct bm_coord_ctx *ctx, int *waiting);


#endif /* BM_COORD_ROLE_H */
