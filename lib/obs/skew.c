/* Clock skew estimate (skew.h). Invariant: 'min' is the smallest
 * local - record difference seen since 'window_start', and the gauge
 * holds it once any record was seen. */
#include "obs/skew.h"

#include <pthread.h>
#include <stdlib.h>

#include "common/err.h"
#include "obs/metrics.h"

struct bm_skew {
    pthread_mutex_t lock;
    struct bm_gauge *gauge;
    int64_t window_start;      /* local Unix ms of the window's first record; 0 = none */
    int64_t min;               /* ms */
};

struct bm_skew *bm_skew_new(struct bm_metrics *metrics, char *err, size_t errlen)
{
    struct bm_skew *s = calloc(1, sizeof *s);
    if (s == NULL) {
        bm_seterr(err, errlen, BM_ENOMEM, "out of memory");
        return NULL;
    }
    s->gauge = bm_metrics_gauge(metrics, "biomatch_clock_skew_seconds",
                                "Local clock minus record timestamps, smallest difference over "
                                "the last 30 s (positive: this host's clock runs ahead).",
                                NULL, err, errlen);
    if (s->gauge == NULL) {
        free(s);
        return NULL;
    }
    pthread_mutex_init(&s->lock, NULL);
    return s;
}

void bm_skew_observe(struct bm_skew *s, int64_t record_ts_ms, int64_t local_now_ms)
{
    if (s == NULL || record_ts_ms <= 0)
        return;
    int64_t d = local_now_ms - record_ts_ms;
    pthread_mutex_lock(&s->lock);
    if (s->window_start == 0 || local_now_ms - s->window_start >= BM_SKEW_WINDOW_MS ||
        local_now_ms < s->window_start) {
        s->window_start = local_now_ms;
        s->min = d;
    } else if (d < s->min) {
        s->min = d;
    }
    bm_gauge_set(s->gauge, (double)s->min / 1000.0);
    pthread_mutex_unlock(&s->lock);
}

int64_t bm_skew_ms(struct bm_skew *s)
{
    pthread_mutex_lock(&s->lock);
    int64_t v = s->window_start != 0 ? s->min : 0;
    pthread_mutex_unlock(&s->lock);
    return v;
}

void bm_skew_free(struct bm_skew *s)
{
    if (s == NULL)
        return;
    pthread_mutex_destroy(&s->lock);
    free(s);
}
