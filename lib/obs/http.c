/* libmicrohttpd glue for /metrics, /livez and /readyz; see http.h.
 *
 * Bodies are small and built per request: /metrics renders the registry into
 * a malloc'd buffer that MHD frees after sending (MHD_RESPMEM_MUST_FREE). The
 * heartbeat is a monotonic-clock millisecond stamp in an atomic. */
#include "obs/http.h"

#include "common/clock.h"
#include "common/err.h"
#include "obs/metrics.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

struct bm_http {
    struct MHD_Daemon *daemon;
    struct bm_metrics *metrics;   /* borrowed */
    int port;                     /* bound port */
    int64_t max_age_ms;
    atomic_int_fast64_t heartbeat_ms; /* CLOCK_MONOTONIC ms of the last beat */
    atomic_bool ready;
    atomic_int waiting;           /* parts waiting out an outage (bm_http_waiting) */
    pthread_mutex_t reason_lock;  /* guards 'reason' and 'wait_reason' */
    char reason[256];
    char wait_reason[256];
};

/* Queue a response whose body is a malloc'd buffer MHD takes over. */
static enum MHD_Result reply(struct MHD_Connection *conn, unsigned status, char *body,
                             size_t len, const char *ctype)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    if (r == NULL) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    enum MHD_Result ret = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result reply_text(struct MHD_Connection *conn, unsigned status,
                                  const char *text)
{
    char *body = strdup(text);
    if (body == NULL)
        return MHD_NO;
    return reply(conn, status, body, strlen(body), "text/plain; charset=utf-8");
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *conn, const char *url,
                              const char *method, const char *version,
                              const char *upload_data, size_t *upload_size, void **con_cls)
{
    (void)version;
    (void)upload_data;
    struct bm_http *h = cls;
    /* MHD calls us once with the headers, then per body chunk; answering on
     * the first call is fine for bodiless GETs, and any uploaded body is
     * discarded by marking it consumed. */
    if (*con_cls == NULL) {
        *con_cls = h;
        if (*upload_size == 0)
            goto answer;
        return MHD_YES;
    }
    if (*upload_size != 0) {
        *upload_size = 0;
        return MHD_YES;
    }
answer:
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
        return reply_text(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed\n");

    if (strcmp(url, "/metrics") == 0) {
        char *text = NULL;
        size_t len = 0;
        if (h->metrics == NULL) {
            text = strdup("");
        } else if (bm_metrics_render(h->metrics, &text, &len) != BM_OK) {
            text = NULL;
        }
        if (text == NULL)
            return reply_text(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
        return reply(conn, MHD_HTTP_OK, text, len, "text/plain; version=0.0.4; charset=utf-8");
    }
    if (strcmp(url, "/livez") == 0) {
        int64_t age = bm_mono_ms() - atomic_load(&h->heartbeat_ms);
        if (h->max_age_ms > 0 && age > h->max_age_ms) {
            char msg[96];
            snprintf(msg, sizeof msg, "stale: last heartbeat %lld ms ago\n", (long long)age);
            return reply_text(conn, MHD_HTTP_SERVICE_UNAVAILABLE, msg);
        }
        return reply_text(conn, MHD_HTTP_OK, "ok\n");
    }
    if (strcmp(url, "/readyz") == 0) {
        int waiting = atomic_load(&h->waiting) > 0;
        if (atomic_load(&h->ready) && !waiting)
            return reply_text(conn, MHD_HTTP_OK, "ready\n");
        char msg[300];
        pthread_mutex_lock(&h->reason_lock);
        snprintf(msg, sizeof msg, "not ready: %s\n", waiting ? h->wait_reason : h->reason);
        pthread_mutex_unlock(&h->reason_lock);
        return reply_text(conn, MHD_HTTP_SERVICE_UNAVAILABLE, msg);
    }
    return reply_text(conn, MHD_HTTP_NOT_FOUND, "not found\n");
}

struct bm_http *bm_http_start(const struct bm_http_opts *opts, char *err, size_t errlen)
{
    if (opts == NULL || opts->port < 0 || opts->port > 65535 || opts->max_heartbeat_age_ms < 0) {
        bm_seterr(err, errlen, BM_EINVAL, "http: bad options");
        return NULL;
    }
    const char *bind = opts->bind != NULL ? opts->bind : "127.0.0.1";
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD;
    struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, bind, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)opts->port);
    } else if (inet_pton(AF_INET6, bind, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)opts->port);
        flags |= MHD_USE_IPv6;
    } else {
        bm_seterr(err, errlen, BM_EINVAL, "http: bind address '%s' is not a numeric IP", bind);
        return NULL;
    }

    struct bm_http *h = calloc(1, sizeof *h);
    if (h == NULL) {
        bm_seterr(err, errlen, BM_ENOMEM, "out of memory");
        return NULL;
    }
    h->metrics = opts->metrics;
    h->max_age_ms = opts->max_heartbeat_age_ms;
    atomic_init(&h->heartbeat_ms, bm_mono_ms());
    atomic_init(&h->ready, false);
    atomic_init(&h->waiting, 0);
    pthread_mutex_init(&h->reason_lock, NULL);
    snprintf(h->reason, sizeof h->reason, "starting");

    h->daemon = MHD_start_daemon(flags, (uint16_t)opts->port, NULL, NULL, handle, h,
                                 MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
                                 MHD_OPTION_CONNECTION_LIMIT, (unsigned)64,
                                 MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10,
                                 MHD_OPTION_END);
    if (h->daemon == NULL) {
        bm_seterr(err, errlen, BM_EIO, "http: cannot listen on %s:%d (in use or not permitted)",
                  bind, opts->port);
        pthread_mutex_destroy(&h->reason_lock);
        free(h);
        return NULL;
    }
    /* Ask the socket itself: with port 0 only the kernel knows the port. */
    const union MHD_DaemonInfo *info =
        MHD_get_daemon_info(h->daemon, MHD_DAEMON_INFO_LISTEN_FD);
    struct sockaddr_storage bound;
    socklen_t blen = sizeof bound;
    if (info == NULL || getsockname(info->listen_fd, (struct sockaddr *)&bound, &blen) != 0) {
        bm_seterr(err, errlen, BM_EIO, "http: cannot read the bound port");
        bm_http_stop(h);
        return NULL;
    }
    h->port = bound.ss_family == AF_INET6
                  ? ntohs(((struct sockaddr_in6 *)&bound)->sin6_port)
                  : ntohs(((struct sockaddr_in *)&bound)->sin_port);
    return h;
}

int bm_http_port(const struct bm_http *h)
{
    return h != NULL ? h->port : 0;
}

void bm_http_heartbeat(struct bm_http *h)
{
    if (h != NULL)
        atomic_store(&h->heartbeat_ms, bm_mono_ms());
}

void bm_http_set_ready(struct bm_http *h, bool ready, const char *reason)
{
    if (h == NULL)
        return;
    pthread_mutex_lock(&h->reason_lock);
    snprintf(h->reason, sizeof h->reason, "%s", reason != NULL ? reason : "not ready");
    pthread_mutex_unlock(&h->reason_lock);
    atomic_store(&h->ready, ready);
}

void bm_http_waiting(struct bm_http *h, int delta, const char *reason)
{
    if (h == NULL)
        return;
    if (delta > 0 && reason != NULL) {
        pthread_mutex_lock(&h->reason_lock);
        snprintf(h->wait_reason, sizeof h->wait_reason, "%s", reason);
        pthread_mutex_unlock(&h->reason_lock);
    }
    atomic_fetch_add(&h->waiting, delta);
}

void bm_http_stop(struct bm_http *h)
{
    if (h == NULL)
        return;
    if (h->daemon != NULL)
        MHD_stop_daemon(h->daemon);
    pthread_mutex_destroy(&h->reason_lock);
    free(h);
}
