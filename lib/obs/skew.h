/* Clock skew estimate from record timestamps: the gauge
 * biomatch_clock_skew_seconds, exported by every role.
 *
 * A record's timestamp was taken by its producer's clock (or the broker's);
 * local_now - timestamp is the skew between the clocks plus the delivery
 * delay, which is never negative. The smallest such difference over a
 * window is therefore the best estimate of the skew: positive when the
 * local clock runs ahead of the producers', negative when it lags. The
 * gauge shows the running minimum of the current window; each window
 * (30 s) starts over, so one odd record or a clock step is forgotten.
 *
 * Thread: any; observations take a mutex (one compare per record). */
#ifndef BM_OBS_SKEW_H
#define BM_OBS_SKEW_H

#include <stddef.h>
#include <stdint.h>

struct bm_metrics;
struct bm_skew;

#define BM_SKEW_WINDOW_MS 30000

/* Register the gauge in 'metrics'. Returns the estimator (caller frees with
 * bm_skew_free, before the registry) or NULL with the reason in err. */
struct bm_skew *bm_skew_new(struct bm_metrics *metrics, char *err, size_t errlen);

/* Account one record: 'record_ts_ms' (Unix ms; <= 0 = none, ignored) seen
 * at 'local_now_ms' (Unix ms by the local clock). 's' may be NULL. */
void bm_skew_observe(struct bm_skew *s, int64_t record_ts_ms, int64_t local_now_ms);

/* The current estimate in ms (0 before any record). */
int64_t bm_skew_ms(struct bm_skew *s);

void bm_skew_free(struct bm_skew *s);

#endif /* BM_OBS_SKEW_H */
