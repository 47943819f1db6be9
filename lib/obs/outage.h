/* What an operator sees while a process waits out an outage: /readyz turns
 * 503 with the reason, the gauge biomatch_outage_waiting{component} counts
 * the parts currently waiting, biomatch_outage_waits_total{component} counts
 * waits begun, and one WARN line starts and one INFO line ends each wait.
 *
 * The report function has the shape of lib/bus's bm_bus_wait_fn (and of a
 * Redis retry hook), so a role passes bm_outage_report with a struct
 * bm_outage as opaque; obs itself knows nothing about Kafka or Redis.
 *
 * Invariant: every "waiting = 1" is followed by exactly one "waiting = 0"
 * from the same source (lib/bus guarantees it), so the gauge and the
 * readiness hold return to zero when the outage ends. */
#ifndef BM_OBS_OUTAGE_H
#define BM_OBS_OUTAGE_H

struct bm_http;
struct bm_metrics;
struct bm_gauge;
struct bm_counter;

struct bm_outage {
    struct bm_http *http;      /* borrowed; NULL = no readiness to hold */
    struct bm_gauge *waiting;  /* NULL when there is no registry */
    struct bm_counter *waits;
    char component[32];        /* a fixed role name, never an id */
};

/* Fill 'o' for 'component' (copied; a fixed name such as "intake"). 'http'
 * and 'metrics' are borrowed, may be NULL, and must outlive every call of
 * bm_outage_report with 'o'. Cannot fail (a metric that cannot be
 * registered is left NULL and ignored). Thread: any. */
void bm_outage_init(struct bm_outage *o, struct bm_http *http, struct bm_metrics *metrics,
                    const char *component);

/* A wait began (waiting = 1, 'err' an enum bm_err and 'why' the reason) or
 * ended (0). 'opaque' is a struct bm_outage. Thread: any. */
void bm_outage_report(void *opaque, int waiting, int err, const char *why);

#endif /* BM_OBS_OUTAGE_H */
