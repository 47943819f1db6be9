/* The health and metrics endpoint: a libmicrohttpd server with its own
 * polling thread, serving
 *
 *   GET /metrics  the registry in Prometheus text format 0.0.4
 *   GET /livez    200 "ok" while the main loop's heartbeat is fresh,
 *                 503 "stale: ..." when it is older than max_heartbeat_age_ms
 *   GET /readyz   200 "ready" once the application said so (shards loaded,
 *                 consumers assigned), 503 with the application's reason
 *   anything else 404; methods other than GET and HEAD get 405.
 *
 * Invariant: the request handler only reads atomics, the readiness reason
 * (under a mutex) and the registry (which has its own lock), so it never
 * blocks the application and the application never blocks it for long.
 *
 * Thread: bm_http_heartbeat, bm_http_set_ready and bm_http_port may be
 * called from any thread; bm_http_stop from one thread, once. */
#ifndef BM_HTTP_H
#define BM_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct bm_metrics;
struct bm_http;

struct bm_http_opts {
    const char *bind;             /* numeric IPv4 or IPv6 address; NULL = "127.0.0.1".
                                   * Deployments pass "0.0.0.0" (conf http.bind). */
    int port;                     /* 0 = let the kernel pick a free port */
    struct bm_metrics *metrics;   /* borrowed; NULL serves an empty /metrics.
                                   * Must outlive the server. */
    int64_t max_heartbeat_age_ms; /* /livez turns 503 past this; 0 = never stale */
};

/* Start the server. On success returns a handle (destroy with bm_http_stop);
 * the heartbeat is fresh and readiness is false with reason "starting". On
 * failure returns NULL and fills 'err' (bad address, port in use). */
struct bm_http *bm_http_start(const struct bm_http_opts *opts, char *err, size_t errlen);

/* The TCP port actually bound (useful with port 0). */
int bm_http_port(const struct bm_http *h);

/* Mark the main loop alive now. Call it once per loop iteration. */
void bm_http_heartbeat(struct bm_http *h);

/* Set readiness. 'reason' (copied, at most 255 bytes kept) is shown in the
 * 503 body when not ready; NULL means "not ready". */
void bm_http_set_ready(struct bm_http *h, bool ready, const char *reason);

/* One more (delta +1) or one fewer (-1) part of the application is
 * waiting out an outage (a producer held up by a broker outage, a Redis
 * call retrying). While any is, /readyz answers 503 with the latest
 * 'reason' (copied) whatever bm_http_set_ready said; the count never
 * changes the application's own readiness. NULL 'h' is fine. */
void bm_http_waiting(struct bm_http *h, int delta, const char *reason);

/* Stop the server, waiting for in-flight requests, and free it. Accepts
 * NULL. */
void bm_http_stop(struct bm_http *h);

#endif /* BM_HTTP_H */
