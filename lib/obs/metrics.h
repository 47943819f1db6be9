/* A small Prometheus registry: counters, gauges and histograms, rendered in
 * the text exposition format 0.0.4.
 *
 * A metric family is a name with a help text and a type; each registration
 * adds one series to it, identified by constant label pairs fixed at
 * registration. Updates are C11 atomics (no lock), so any number of threads
 * may update any metric; registration and rendering take the registry lock.
 * Metrics live until the registry is destroyed, so the pointers returned by
 * registration stay valid that long and need no reference counting.
 *
 * CARDINALITY RULE: labels are for small, bounded sets (gallery, shard,
 * status, role, topic). Subject ids and job ids must never be label values;
 * registration rejects the label names job, job_id, subject and subject_id
 * (in any letter case) so the mistake fails loudly. ("job" is also the label
 * Prometheus itself attaches to every scraped series.)
 *
 * Thread: all functions may be called from any thread. */
#ifndef BM_METRICS_H
#define BM_METRICS_H

#include <stddef.h>
#include <stdint.h>

struct bm_metrics;
struct bm_counter;
struct bm_gauge;
struct bm_histogram;

/* Default histogram bounds for latencies, in seconds: 0.5 ms .. 10 s. */
extern const double bm_metrics_latency_buckets[];
extern const size_t bm_metrics_latency_nbuckets;

#define BM_METRICS_MAX_LABELS 8
#define BM_METRICS_MAX_BUCKETS 64

/* An empty registry, or NULL on out-of-memory. Destroy with
 * bm_metrics_destroy. */
struct bm_metrics *bm_metrics_new(void);

/* Free the registry and every metric registered in it: pointers returned by
 * the registration functions become invalid. Accepts NULL. No thread may be
 * updating or rendering at the time. */
void bm_metrics_destroy(struct bm_metrics *m);

/* Register (or find) one series.
 *
 * 'name' must match [a-zA-Z_:][a-zA-Z0-9_:]* (counters by convention end in
 * _total, durations in _seconds). 'help' is the family's help text (the
 * first registration's text is kept). 'labels' is NULL or a NULL-terminated
 * array of name, value pairs: {"gallery", "eu-face", "shard", "3", NULL};
 * label names match [a-zA-Z_][a-zA-Z0-9_]*, must not start with "__", must
 * not be "le" or a forbidden id label (see above), at most
 * BM_METRICS_MAX_LABELS, no duplicates. Series identity is the name plus the
 * labels in the order given.
 *
 * Registering the same name and labels again returns the existing metric.
 * Returns NULL and fills 'err' on an invalid name or label (BM_EINVAL kind),
 * a name already registered with another type or other histogram bounds
 * (conflict) or out-of-memory. Strings are copied; the caller keeps its own.
 *
 * 'bounds' (histograms) are strictly increasing finite upper bounds in the
 * metric's unit, at most BM_METRICS_MAX_BUCKETS; NULL (with nbounds 0) means
 * bm_metrics_latency_buckets. +Inf is implicit. */
struct bm_counter *bm_metrics_counter(struct bm_metrics *m, const char *name,
                                      const char *help, const char *const *labels,
                                      char *err, size_t errlen);
struct bm_gauge *bm_metrics_gauge(struct bm_metrics *m, const char *name,
                                  const char *help, const char *const *labels,
                                  char *err, size_t errlen);
struct bm_histogram *bm_metrics_histogram(struct bm_metrics *m, const char *name,
                                          const char *help, const char *const *labels,
                                          const double *bounds, size_t nbounds,
                                          char *err, size_t errlen);

/* Updates: lock-free, any thread; a NULL metric is ignored so a failed
 * registration cannot crash the hot path. */
void bm_counter_inc(struct bm_counter *c);
void bm_counter_add(struct bm_counter *c, uint64_t n);
uint64_t bm_counter_get(const struct bm_counter *c);

void bm_gauge_set(struct bm_gauge *g, double v);
void bm_gauge_add(struct bm_gauge *g, double delta); /* negative to decrease */
double bm_gauge_get(const struct bm_gauge *g);

/* Count 'v' in the first bucket whose upper bound is >= v (Prometheus "le"
 * semantics: a value equal to a bound belongs to that bound's bucket) and
 * add it to the sum. NaN is counted in +Inf only. */
void bm_histogram_observe(struct bm_histogram *h, double v);
uint64_t bm_histogram_count(const struct bm_histogram *h);

/* Render every family in registration order (series in registration order)
 * as text exposition 0.0.4: # HELP, # TYPE, samples; histograms as
 * cumulative _bucket{le="..."} lines ending with le="+Inf", then _sum and
 * _count. On BM_OK, *out is a malloc'd NUL-terminated string the caller
 * frees with free(), *len its length. On failure (BM_ENOMEM) *out is NULL.
 * Concurrent updates may land between two lines; each histogram's buckets
 * and _count are read once so they agree with each other. */
int bm_metrics_render(struct bm_metrics *m, char **out, size_t *len);

#endif /* BM_METRICS_H */
