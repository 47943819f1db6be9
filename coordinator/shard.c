/* The writer's view of one shard (shard.h, docs/storage.md section 7):
 * open, free, seal and the periodic check. The state and its invariant
 * are described in shard_int.h; each concern has its own shard_*.c. */
#define _POSIX_C_SOURCE 200809L
#include "shard_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "common/clock.h"
#include "keymap.h"
#include "obs/log.h"
#include "obs/metrics.h"
#include "store/galdef.h"
#include "store/redis.h"
#include "store/segment.h"

const char *bm_gshard_topic(const struct bm_gshard *sh)
{
    return sh->topic;
}

int32_t bm_gshard_partition(const struct bm_gshard *sh)
{
    return (int32_t)sh->shard;
}

int64_t bm_gshard_log_offset(const struct bm_gshard *sh)
{
    return sh->man != NULL ? sh->man->log_offset : 0;
}

int bm_gshard_pending(const struct bm_gshard *sh)
{
    return sh->buf.n > 0;
}

int bm_gshard_due(const struct bm_gshard *sh, long long now_ms)
{
    if (sh->buf.n == 0)
        return 0;
    /* Early seal at the end of a burst: when nothing arrived for a while
     * and the buffer is already a sizeable segment, waiting for the age
     * limit only delays the enrollments (a bulk import's tail). Small
     * buffers (a trickle) still wait for the age limit, so a trickle does
     * not turn into many tiny segments. */
    int idle = now_ms - sh->buf.last_ms >= SEAL_IDLE_MS &&
               sh->buf.est_bytes >= sh->env.segment_max_bytes / SEAL_IDLE_MIN_FRACTION;
    return idle || sh->buf.est_bytes + BM_SEGBLOB_HEADER_BYTES >= sh->env.segment_max_bytes ||
           now_ms - sh->buf.first_ms >= sh->env.segment_max_age_ms;
}


/* ------------------------------------------------------------ public */

static int register_metrics(struct bm_gshard *sh, char *err, size_t errlen)
{
    char shard[16];
    snprintf(shard, sizeof shard, "%u", sh->shard);
    const char *labels[] = {"gallery", sh->gallery, "shard", shard, NULL};
    struct bm_metrics *m = sh->env.metrics;
    sh->g_version = bm_metrics_gauge(m, "biomatch_gallery_manifest_version",
                                     "Published manifest version of the shard", labels, err,
                                     errlen);
    sh->g_subjects = bm_metrics_gauge(m, "biomatch_gallery_subjects",
                                      "Live subjects in the shard's sealed segments", labels,
                                      err, errlen);
    sh->g_segments = bm_metrics_gauge(m, "biomatch_gallery_segments",
                                      "Segments in the shard's manifest", labels, err, errlen);
    sh->g_tombstones = bm_metrics_gauge(m, "biomatch_gallery_tombstones",
                                        "Tombstones in the shard's manifest", labels, err,
                                        errlen);
    sh->c_sealed = bm_metrics_counter(m, "biomatch_gallery_segments_sealed_total",
                                      "Segments sealed and published (incl. compaction output)",
                                      labels, err, errlen);
    sh->c_rebuilds = bm_metrics_counter(m, "biomatch_gallery_rebuilds_total",
                                        "Shard rebuilds from the gallery log", labels, err,
                                        errlen);
    sh->c_compactions = bm_metrics_counter(m, "biomatch_gallery_compactions_total",
                                           "Shard compactions", labels, err, errlen);
    sh->c_skipped = bm_metrics_counter(m, "biomatch_gallery_records_skipped_total",
                                       "Gallery log records skipped as unusable", labels, err,
                                       errlen);
    sh->c_collisions = bm_metrics_counter(
        m, "biomatch_gallery_key_collisions_total",
        "Gallery log records refused: their subject key is another subject's", labels, err,
        errlen);
    const char *refused[3] = {"manifest", "segment", "record"};
    struct bm_counter **slot[3] = {&sh->c_refused_manifest, &sh->c_refused_segment,
                                   &sh->c_refused_record};
    for (int i = 0; i < 3; i++) {
        const char *rl[] = {"gallery", sh->gallery, "shard", shard, "what", refused[i], NULL};
        *slot[i] = bm_metrics_counter(m, "biomatch_store_refused_total",
                                      "Stored manifests, segments and gallery records refused "
                                      "as unauthenticated (strict at-rest mode, bad MAC)",
                                      rl, err, errlen);
    }
    sh->h_seal = bm_metrics_histogram(m, "biomatch_gallery_seal_seconds",
                                      "Time to seal a buffer and publish its manifest", NULL,
                                      NULL, 0, err, errlen);
    return BM_OK;
}

struct bm_gshard *bm_gshard_open(const struct bm_gshard_env *env,
                                 const Biomatch__V1__GalleryDefinition *def,
                                 const char *topic, int32_t partition, char *err,
                                 size_t errlen)
{
    struct bm_gshard *sh = calloc(1, sizeof *sh);
    if (sh == NULL) {
        bm_seterr(err, errlen, BM_ENOMEM, "shard: out of memory");
        return NULL;
    }
    sh->env = *env;
    sh->shard = (uint32_t)partition;
    snprintf(sh->gallery, sizeof sh->gallery, "%s", def->name);
    snprintf(sh->topic, sizeof sh->topic, "%s", topic);
    sh->def = bm_galdef_dup(def, NULL, err, errlen);
    if (sh->def == NULL || bm_galdef_to_spec(sh->def, &sh->spec, err, errlen) != BM_OK ||
        bm_key_manifest(sh->mkey, sizeof sh->mkey, sh->gallery, sh->shard) != BM_OK)
        goto fail;
    if (partition < 0 || (uint32_t)partition >= def->shards) {
        bm_seterr(err, errlen, BM_EINVAL, "partition %d outside the gallery's %u shards",
                  (int)partition, def->shards);
        goto fail;
    }
    sh->tbytes = bm_spec_template_bytes(&sh->spec);
    sh->stride = bm_segblob_stride(&sh->spec);
    sh->int8 = sh->spec.modality == BM_MODALITY_DENSE && sh->spec.dtype == BM_DTYPE_INT8;
    sh->row = malloc(sh->tbytes);
    sh->index = bm_keymap_new(4096);
    sh->tombs.idx = bm_keymap_new(64);
    sh->names.idx = bm_keymap_new(4096);
    if (sh->row == NULL || sh->index == NULL || sh->tombs.idx == NULL || sh->names.idx == NULL ||
        gs_sbuf_init(&sh->buf, sh->tbytes) != BM_OK) {
        bm_seterr(err, errlen, BM_ENOMEM, "shard: out of memory");
        goto fail;
    }
    gs_sbuf_clear(&sh->buf);
    register_metrics(sh, err, errlen);
    if (gs_sync_shard(sh, err, errlen) != BM_OK)
        goto fail;
    sh->last_publish_ms = bm_mono_ms();
    BM_LOGF(BM_LOG_INFO, "shard opened", BM_LF_STR("gallery", sh->gallery),
            BM_LF_INT("shard", sh->shard), BM_LF_INT("version", sh->man->version),
            BM_LF_INT("log_offset", sh->man->log_offset),
            BM_LF_INT("subjects", bm_keymap_count(sh->index)),
            BM_LF_INT("buffered", sh->buf.n));
    return sh;
fail:
    bm_gshard_free(sh);
    return NULL;
}

void bm_gshard_free(struct bm_gshard *sh)
{
    if (sh == NULL)
        return;
    bm_galdef_free(sh->def);
    bm_manifest_free(sh->man);
    bm_keymap_free(sh->index);
    free(sh->segs);
    gs_tomb_clear(&sh->tombs);
    bm_keymap_free(sh->tombs.idx);
    free(sh->tombs.s);
    free(sh->tombs.keys);
    gs_tomb_clear(&sh->names);
    bm_keymap_free(sh->names.idx);
    free(sh->names.s);
    free(sh->names.keys);
    gs_sbuf_free(&sh->buf);
    free(sh->row);
    free(sh);
}

int bm_gshard_seal(struct bm_gshard *sh)
{
    char err[512];
    if (sh->stale && gs_sync_shard(sh, err, sizeof err) != BM_OK) {
        BM_LOGF(BM_LOG_ERROR, "shard resync failed", BM_LF_STR("gallery", sh->gallery),
                BM_LF_INT("shard", sh->shard), BM_LF_STR("error", err));
        return BM_EIO;
    }
    if (sh->buf.n == 0)
        return BM_OK;
    int rc = gs_publish(sh, &sh->buf, 0, sh->man, 0, err, sizeof err);
    if (rc == BM_OK) {
        gs_sbuf_clear(&sh->buf);
        return BM_OK;
    }
    BM_LOGF(rc == BM_ECONFLICT ? BM_LOG_WARN : BM_LOG_ERROR, "seal not published; resyncing",
            BM_LF_STR("gallery", sh->gallery), BM_LF_INT("shard", sh->shard),
            BM_LF_STR("error", err));
    /* The buffer is not lost: resync re-reads the log from log_offset. */
    if (gs_sync_shard(sh, err, sizeof err) != BM_OK)
        BM_LOGF(BM_LOG_ERROR, "shard resync failed", BM_LF_STR("gallery", sh->gallery),
                BM_LF_INT("shard", sh->shard), BM_LF_STR("error", err));
    return rc;
}

/* ------------------------------------------------------------ checks */

int bm_gshard_check(struct bm_gshard *sh, long long now_ms)
{
    char err[512];
    struct bm_redis *r = sh->env.redis;
    sh->last_check_ms = now_ms;
    if (sh->stale) {
        int rc = gs_sync_shard(sh, err, sizeof err);
        if (rc != BM_OK)
            BM_LOGF(BM_LOG_ERROR, "shard resync failed", BM_LF_STR("gallery", sh->gallery),
                    BM_LF_INT("shard", sh->shard), BM_LF_STR("error", err));
        return rc;
    }
    /* The definition is immutable and cached here: put it back if a flush
     * took it, so workers and intake find the gallery again. */
    char gkey[BM_KEY_MAX];
    struct bm_redis_reply *rep = NULL;
    bm_key_gallery(gkey, sizeof gkey, sh->gallery);
    if (bm_redis_cmd(r, &rep, "EXISTS", gkey, (char *)NULL) == BM_OK &&
        rep->type == BM_REDIS_INTEGER && rep->integer == 0) {
        int created = 0;
        if (bm_galdef_put(r, sh->def, &created, err, sizeof err) == BM_OK && created)
            BM_LOGF(BM_LOG_WARN, "gallery definition was missing; restored",
                    BM_LF_STR("gallery", sh->gallery));
    }
    bm_redis_reply_free(rep);

    struct bm_manifest *m = NULL;
    int rc = gs_read_manifest(sh, &m, 1, err, sizeof err);
    if (rc == BM_ENOTFOUND || rc == BM_ECHECKSUM || rc == BM_EUNSUPPORTED) {
        gs_sbuf_clear(&sh->buf);
        rc = gs_sync_shard(sh, err, sizeof err);
        goto done;
    }
    if (rc != BM_OK)
        goto done;
    uint64_t version = m->version;
    int same_epoch = bm_manifest_same_epoch(m, sh->man);
    bm_manifest_free(m);
    if (version != sh->man->version || !same_epoch) {
        BM_LOGF(BM_LOG_WARN, "manifest changed under us; resyncing",
                BM_LF_STR("gallery", sh->gallery), BM_LF_INT("shard", sh->shard),
                BM_LF_INT("ours", sh->man->version), BM_LF_INT("stored", version));
        rc = gs_sync_shard(sh, err, sizeof err);
        goto done;
    }
    if (sh->man->nsegments > 0) {
        size_t argc = 1 + sh->man->nsegments;
        const char **argv = calloc(argc, sizeof *argv);
        size_t *lens = calloc(argc, sizeof *lens);
        char (*keys)[BM_KEY_MAX] = calloc(sh->man->nsegments, sizeof *keys);
        if (argv == NULL || lens == NULL || keys == NULL) {
            free(argv);
            free(lens);
            free(keys);
            return BM_ENOMEM;
        }
        argv[0] = "EXISTS";
        lens[0] = 6;
        for (size_t s = 0; s < sh->man->nsegments; s++) {
            bm_key_segment(keys[s], sizeof keys[s], sh->gallery, sh->shard,
                           sh->man->segments[s].id);
            argv[1 + s] = keys[s];
            lens[1 + s] = strlen(keys[s]);
        }
        rep = NULL;
        rc = bm_redis_command(r, (int)argc, argv, lens, &rep);
        int lost = rc == BM_OK && rep->type == BM_REDIS_INTEGER &&
                   rep->integer < (long long)sh->man->nsegments;
        bm_redis_reply_free(rep);
        free(argv);
        free(lens);
        free(keys);
        if (lost) {
            rc = gs_rebuild(sh, "segment missing", err, sizeof err);
            if (rc != BM_OK)
                sh->stale = 1;
            goto done;
        }
    }
    if (rc == BM_OK && gs_compact_worthwhile(sh, now_ms))
        rc = bm_gshard_compact(sh);
    return rc;
done:
    if (rc != BM_OK)
        BM_LOGF(BM_LOG_ERROR, "shard check failed", BM_LF_STR("gallery", sh->gallery),
                BM_LF_INT("shard", sh->shard), BM_LF_STR("error", err));
    return rc;
}
