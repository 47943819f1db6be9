/* `biomatch-replay bare`: the bare matcher on exactly what the cluster
 * serves. Loads every shard of a gallery from Redis with the workers' own
 * loader (store/loader.h), then times bm_gallery_search over the given
 * probes in batches of --batch probes (the workers' micro-batch size),
 * every batch against every shard, on one pool of --threads threads. A job
 * is one probe searched against all shards, so jobs/s here is the ceiling
 * the pipeline is compared with (pipeline efficiency, bench/e2e).
 *
 * Invariant: probes cycle in order, and only whole batches are timed. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "match/gallery.h"
#include "match/pool.h"
#include "npy.h"
#include "replay.h"
#include "store/galdef.h"
#include "store/loader.h"
#include "store/redis.h"

int rp_bare(int argc, char **argv)
{
    const char *gallery = NULL, *redis_url = NULL, *npy_s = NULL, *batch_s = "64";
    const char *threads_s = "0", *seconds_s = "5", *topk_s = "10", *json = NULL;
    const char *pos[1];
    size_t npos;
    const struct bm_opt opts[] = {
        { "--gallery", "NAME", &gallery, "gallery to load (required)" },
        { "--redis", "URL", &redis_url, "Redis URL (default $BIOMATCH_REDIS_URL)" },
        { "--npy", "FILE", &npy_s, "probe vectors, float32 .npy (required)" },
        { "--batch", "B", &batch_s, "probes per search call (default 64, the workers' default)" },
        { "--threads", "T", &threads_s, "matcher threads (default 0 = all CPUs)" },
        { "--seconds", "S", &seconds_s, "time at least this long (default 5)" },
        { "--top-k", "K", &topk_s, "candidates per probe (default 10)" },
        { "--json", NULL, &json, "print one JSON object" },
    };
    int p = rp_parse(argc, argv, opts, sizeof opts / sizeof opts[0], pos, 0, &npos,
                     "biomatch-replay bare --gallery NAME --npy FILE [--redis URL] [flags]");
    if (p)
        return p > 0 ? 0 : 2;
    if (redis_url == NULL)
        redis_url = getenv("BIOMATCH_REDIS_URL");
    if (gallery == NULL || npy_s == NULL || redis_url == NULL) {
        fprintf(stderr, "biomatch-replay: bare needs --gallery, --npy and --redis\n");
        return 2;
    }
    uint64_t batch, threads, topk;
    double seconds;
    if (rp_u64("--batch", batch_s, 1, 4096, &batch) ||
        rp_u64("--threads", threads_s, 0, 256, &threads) ||
        rp_u64("--top-k", topk_s, 1, 1000, &topk) ||
        rp_double("--seconds", seconds_s, 0.01, 1e6, &seconds))
        return 2;
    char err[512];
    int rc, ret = 1;
    struct bm_npy m = { 0 };
    struct bm_redis *r = NULL;
    Biomatch__V1__GalleryDefinition *def = NULL;
    struct bm_pool *pool = NULL;
    struct bm_shard **shards = NULL;
    float *vecs = NULL;
    struct bm_probe *probes = NULL;
    struct bm_candidate *out = NULL;
    uint32_t ns = 0;
    if (bm_npy_read(npy_s, &m, err, sizeof err) != BM_OK || m.rows == 0) {
        fprintf(stderr, "biomatch-replay: %s\n", m.rows ? err : "no probes");
        goto done;
    }
    struct bm_redis_opts ro = { 0 };  /* TLS files as the config keys take them */
    ro.tls_ca_file = getenv("BIOMATCH_REDIS_TLS_CA_FILE");
    ro.tls_cert_file = getenv("BIOMATCH_REDIS_TLS_CERT_FILE");
    ro.tls_key_file = getenv("BIOMATCH_REDIS_TLS_KEY_FILE");
    r = bm_redis_connect(redis_url, &ro, err, sizeof err);
    if (r == NULL || (def = bm_galdef_get(r, gallery, &rc, err, sizeof err)) == NULL) {
        fprintf(stderr, "biomatch-replay: %s\n", err);
        goto done;
    }
    if (def->dim != m.cols) {
        fprintf(stderr, "biomatch-replay: probes have %llu columns, gallery %s has dim %u\n",
                (unsigned long long)m.cols, gallery, def->dim);
        goto done;
    }
    pool = bm_pool_new((unsigned)threads, err, sizeof err);
    shards = calloc(def->shards, sizeof *shards);
    vecs = malloc(m.rows * m.cols * sizeof *vecs);
    probes = calloc(batch, sizeof *probes);
    out = malloc(batch * topk * sizeof *out);
    if (pool == NULL || shards == NULL || vecs == NULL || probes == NULL || out == NULL) {
        fprintf(stderr, "biomatch-replay: %s\n", pool ? "out of memory" : err);
        goto done;
    }
    for (uint64_t i = 0; i < m.rows; i++)
        bm_npy_row(&m, i, vecs + i * m.cols);
    size_t subjects = 0;
    for (ns = 0; ns < def->shards; ns++) {
        shards[ns] = bm_shard_load(r, def, ns, pool, &rc, err, sizeof err);
        if (shards[ns] == NULL) {
            fprintf(stderr, "biomatch-replay: shard %u: %s\n", ns, err);
            goto done;
        }
        subjects += bm_gallery_count(bm_shard_gallery(shards[ns]));
    }
    /* One untimed batch warms caches and the pool. */
    uint64_t next = 0, jobs = 0, comps = 0;
    int64_t t0 = 0;
    for (int warm = 1;; warm = 0) {
        for (uint64_t b = 0; b < batch; b++, next++)
            probes[b].dense = vecs + (next % m.rows) * m.cols;
        for (uint32_t s = 0; s < ns; s++) {
            uint64_t c = 0;
            if (bm_gallery_search(bm_shard_gallery(shards[s]), probes, batch, topk, -INFINITY,
                                  out, &c, err, sizeof err) != BM_OK) {
                fprintf(stderr, "biomatch-replay: search: %s\n", err);
                goto done;
            }
            comps += warm ? 0 : c;
        }
        if (warm) {
            t0 = bm_mono_us();
            continue;
        }
        jobs += batch;
        if (bm_mono_us() - t0 >= (int64_t)(seconds * 1e6))
            break;
    }
    double el = (double)(bm_mono_us() - t0) / 1e6;
    double jps = (double)jobs / el;
    if (json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "bare_jobs_per_s", jps);
        cJSON_AddNumberToObject(o, "jobs", (double)jobs);
        cJSON_AddNumberToObject(o, "seconds", el);
        cJSON_AddNumberToObject(o, "batch", (double)batch);
        cJSON_AddNumberToObject(o, "threads", bm_pool_size(pool));
        cJSON_AddNumberToObject(o, "shards", ns);
        cJSON_AddNumberToObject(o, "subjects", (double)subjects);
        cJSON_AddNumberToObject(o, "comparisons_per_s", (double)comps / el);
        char *s = cJSON_PrintUnformatted(o);
        if (s)
            printf("%s\n", s);
        cJSON_free(s);
        cJSON_Delete(o);
    } else {
        printf("bare matcher: %s, %u shards, %zu subjects, batch %llu, %u threads\n"
               "  %.1f jobs/s (%llu jobs in %.2f s), %.3g comparisons/s\n",
               gallery, ns, subjects, (unsigned long long)batch, bm_pool_size(pool), jps,
               (unsigned long long)jobs, el, (double)comps / el);
    }
    ret = 0;
done:
    for (uint32_t s = 0; shards && s < ns; s++)
        bm_shard_free(shards[s]);
    free(shards);
    bm_pool_free(pool);
    bm_galdef_free(def);
    bm_redis_close(r);
    bm_npy_free(&m);
    free(vecs);
    free(probes);
    free(out);
    return ret;
}
