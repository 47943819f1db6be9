/* Readiness, metrics and logs for outages that are being waited out; see
 * outage.h. */
#include "outage.h"

#include <stdio.h>
#include <string.h>

#include "common/err.h"
#include "http.h"
#include "log.h"
#include "metrics.h"

void bm_outage_init(struct bm_outage *o, struct bm_http *http, struct bm_metrics *metrics,
                    const char *component)
{
    memset(o, 0, sizeof *o);
    o->http = http;
    snprintf(o->component, sizeof o->component, "%s", component);
    if (metrics == NULL)
        return;
    const char *labels[] = {"component", o->component, NULL};
    char err[128];
    o->waiting = bm_metrics_gauge(metrics, "biomatch_outage_waiting",
                                  "Parts of a component waiting out a Kafka or Redis outage",
                                  labels, err, sizeof err);
    o->waits = bm_metrics_counter(metrics, "biomatch_outage_waits_total",
                                  "Waits for a Kafka or Redis outage begun", labels, err,
                                  sizeof err);
}

void bm_outage_report(void *opaque, int waiting, int err, const char *why)
{
    struct bm_outage *o = opaque;
    if (waiting) {
        char reason[256];
        snprintf(reason, sizeof reason, "%s waiting out an outage: %s", o->component,
                 why != NULL ? why : "?");
        bm_http_waiting(o->http, 1, reason);
        bm_gauge_add(o->waiting, 1);
        bm_counter_inc(o->waits);
        BM_LOGF(BM_LOG_WARN, "waiting out an outage", BM_LF_STR("who", o->component),
                BM_LF_STR("error", bm_strerror(err)), BM_LF_STR("reason", why ? why : ""));
    } else {
        bm_http_waiting(o->http, -1, NULL);
        bm_gauge_add(o->waiting, -1);
        BM_LOGF(BM_LOG_INFO, "outage over", BM_LF_STR("who", o->component));
    }
}
