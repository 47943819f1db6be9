/* The worker's Prometheus series (docs/internals/worker.md lists them).
 *
 * Every series is registered once per gallery at start-up (the lag gauge
 * per shard, when a shard is first assigned), so the hot path only does
 * lock-free atomic updates. Labels are gallery, shard and status only:
 * never job or subject ids. */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <string.h>

#include "common/err.h"
#include "obs/metrics.h"
#include "worker.h"

static const char *const status_names[WK_ST_N] = {"ok", "error", "expired",
                                                  "version_unavailable", "dlq", "poison"};

/* Batch sizes in probes: powers of two up to the largest configurable batch. */
static const double probe_buckets[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096};

int wk_metrics_init(struct wk *w, char *err, size_t errlen)
{
    for (size_t i = 0; i < w->ngal; i++) {
        struct wk_gallery *g = &w->gal[i];
        const char *gl[] = {"gallery", g->name, NULL};
        for (int s = 0; s < WK_ST_N; s++) {
            const char *sl[] = {"gallery", g->name, "status", status_names[s], NULL};
            g->tasks[s] = bm_metrics_counter(w->metrics, "biomatch_worker_tasks_total",
                                             "Tasks answered, by outcome.", sl, err, errlen);
            if (g->tasks[s] == NULL)
                return BM_EINVAL;
        }
        g->comparisons = bm_metrics_counter(w->metrics, "biomatch_worker_comparisons_total",
                                            "Templates compared.", gl, err, errlen);
        g->batch_probes = bm_metrics_histogram(
            w->metrics, "biomatch_worker_batch_probes", "Probes scored per shard pass.", gl,
            probe_buckets, sizeof probe_buckets / sizeof probe_buckets[0], err, errlen);
        g->scoring_seconds = bm_metrics_histogram(w->metrics, "biomatch_worker_scoring_seconds",
                                                  "Time of one scoring pass.", gl, NULL, 0, err,
                                                  errlen);
        g->e2e_seconds = bm_metrics_histogram(
            w->metrics, "biomatch_worker_end_to_end_seconds",
            "Job submitted_unix_ms to the delivery of this worker's partial (client clock).", gl,
            NULL, 0, err, errlen);
        g->load_seconds = bm_metrics_histogram(w->metrics, "biomatch_worker_shard_load_seconds",
                                               "Time to load a shard from Redis.", gl, NULL, 0,
                                               err, errlen);
        g->load_bytes = bm_metrics_counter(w->metrics, "biomatch_worker_shard_load_bytes_total",
                                           "Segment bytes fetched from Redis (loads and refreshes).",
                                           gl, err, errlen);
        g->shards_loaded = bm_metrics_gauge(w->metrics, "biomatch_worker_shards_loaded",
                                            "Shards held in memory.", gl, err, errlen);
        g->shards_refused = bm_metrics_counter(
            w->metrics, "biomatch_worker_shards_refused_total",
            "Shard loads and refreshes refused as unauthenticated (strict at-rest mode: "
            "plaintext segment or manifest MAC; segment digest).",
            gl, err, errlen);
        if (g->comparisons == NULL || g->batch_probes == NULL || g->scoring_seconds == NULL ||
            g->e2e_seconds == NULL || g->load_seconds == NULL || g->load_bytes == NULL ||
            g->shards_loaded == NULL || g->shards_refused == NULL)
            return BM_EINVAL;
    }
    return BM_OK;
}

struct bm_gauge *wk_metrics_lag(struct wk *w, struct wk_gallery *g, uint32_t shard)
{
    char num[16], err[128];
    snprintf(num, sizeof num, "%u", shard);
    const char *l[] = {"gallery", g->name, "shard", num, NULL};
    return bm_metrics_gauge(w->metrics, "biomatch_worker_consumer_lag",
                            "Task records behind the partition end, summed over the shard's "
                            "assigned replica partitions.",
                            l, err, sizeof err);
}
