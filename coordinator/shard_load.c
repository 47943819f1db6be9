/* Loading a shard from Redis (manifest, then an index of its segments)
 * and rebuilding it from the gallery log when Redis lost any of it. */
#define _POSIX_C_SOURCE 200809L
#include "shard_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "common/clock.h"
#include "keymap.h"
#include "logread.h"
#include "obs/log.h"
#include "obs/metrics.h"
#include "store/manifest_mac.h"
#include "store/redis.h"
#include "store/segment.h"
#include "store/subjects.h"

struct readctx {
    struct bm_gshard *sh;
    struct sbuf *b;
};

static int on_record(int64_t offset, const void *key, size_t keylen, const void *value,
                     size_t valuelen, void *opaque)
{
    struct readctx *rc = opaque;
    return gs_buffer_record(rc->sh, rc->b, offset, key, keylen, value, valuelen);
}

/* Read the stored manifest: BM_OK with *m, BM_ENOTFOUND, or an error. */
int gs_read_manifest(struct bm_gshard *sh, struct bm_manifest **m, int verify, char *err,
                     size_t errlen)
{
    void *val = NULL;
    size_t len = 0;
    *m = NULL;
    int rc = bm_redis_get(sh->env.redis, sh->mkey, strlen(sh->mkey), &val, &len);
    if (rc == BM_ENOTFOUND)
        return rc;
    if (rc != BM_OK)
        return bm_seterr(err, errlen, rc, "GET manifest: %s", bm_redis_errstr(sh->env.redis));
    rc = bm_manifest_decode(val, len, 0, m, err, errlen);
    free(val);
    if (rc == BM_OK && verify && (rc = bm_manifest_verify(*m, sh->env.keyring, err, errlen)) != BM_OK) {
        bm_manifest_free(*m);
        *m = NULL;
        bm_counter_inc(sh->c_refused_manifest);
        BM_LOGF(BM_LOG_ERROR, "stored manifest refused; rebuilding the shard from the log",
                BM_LF_STR("gallery", sh->gallery), BM_LF_INT("shard", sh->shard),
                BM_LF_STR("error", err));
        if (rc != BM_EUNSUPPORTED && rc != BM_ENOMEM)
            rc = BM_ECHECKSUM;
    }
    return rc;
}

/* Rebuild the shard from its whole log into fresh segments. */
int gs_rebuild(struct bm_gshard *sh, const char *why, char *err, size_t errlen)
{
    BM_LOGF(BM_LOG_INFO, "rebuilding shard from the gallery log",
            BM_LF_STR("gallery", sh->gallery), BM_LF_INT("shard", sh->shard),
            BM_LF_STR("reason", why));
    bm_counter_inc(sh->c_rebuilds);
    long long t0 = bm_mono_ms();
    struct sbuf rb;
    int rc = gs_sbuf_init(&rb, sh->tbytes);
    if (rc != BM_OK)
        return bm_seterr(err, errlen, rc, "rebuild: out of memory");
    gs_sbuf_clear(&rb);
    struct readctx rctx = {sh, &rb};
    int64_t end = 0;
    rc = bm_logread(sh->env.bus, sh->topic, (int32_t)sh->shard, 0, LOGREAD_TIMEOUT_MS,
                    on_record, &rctx, &end, err, errlen);
    if (rc == BM_OK) {
        struct bm_manifest *base = NULL;
        rc = gs_read_manifest(sh, &base, 0, err, errlen);
        if (rc == BM_ENOTFOUND || rc == BM_EPROTO) {
            /* A corrupt stored manifest cannot be CAS'd over either; the
             * script refuses it. Only a missing one starts at version 0. */
            if (rc == BM_EPROTO)
                BM_LOGF(BM_LOG_ERROR, "stored manifest unreadable; rebuild needs an operator",
                        BM_LF_STR("gallery", sh->gallery), BM_LF_INT("shard", sh->shard));
            rc = BM_OK;
            base = bm_manifest_new(sh->gallery, sh->shard, err, errlen);
            if (base == NULL)
                rc = BM_ENOMEM;
        }
        if (rc == BM_OK) {
            rc = gs_publish(sh, &rb, 1, base, end, err, errlen);
            bm_manifest_free(base); /* read above: never sh->man */
        }
    }
    gs_sbuf_free(&rb);
    if (rc == BM_OK) {
        gs_sbuf_clear(&sh->buf); /* everything buffered was below 'end' */
        /* A brand-new shard (empty log) is built this way too: only a
         * rebuild that restored data is worth a warning. */
        BM_LOGF(end > 0 ? BM_LOG_WARN : BM_LOG_INFO, "shard rebuilt",
                BM_LF_STR("gallery", sh->gallery), BM_LF_STR("reason", why),
                BM_LF_INT("shard", sh->shard), BM_LF_INT("subjects", bm_keymap_count(sh->index)),
                BM_LF_INT("version", sh->man->version), BM_LF_INT("log_offset", end),
                BM_LF_INT("ms", bm_mono_ms() - t0));
    }
    return rc;
}

/* Load index, segment stats and tombstones from manifest 'm' (adopted on
 * success). BM_ENOTFOUND when a segment is missing or unreadable. */
static int load_index(struct bm_gshard *sh, struct bm_manifest *m, char *err, size_t errlen)
{
    gs_state_reset(sh);
    for (size_t s = 0; s < m->nsegments; s++) {
        const struct bm_segref *ref = &m->segments[s];
        char k[BM_KEY_MAX];
        bm_key_segment(k, sizeof k, sh->gallery, sh->shard, ref->id);
        void *blob = NULL;
        size_t len = 0;
        int rc = bm_redis_get(sh->env.redis, k, strlen(k), &blob, &len);
        if (rc == BM_ENOTFOUND)
            return bm_seterr(err, errlen, BM_ENOTFOUND, "segment %llu missing",
                             (unsigned long long)ref->id);
        if (rc != BM_OK)
            return bm_seterr(err, errlen, rc, "GET segment: %s", bm_redis_errstr(sh->env.redis));
        struct bm_segment *seg = NULL;
        /* Per segment: the ids of its rows for the collision check. */
        struct bm_subjects *ids = bm_subjects_new(ref->count, err, errlen);
        if (ids == NULL) {
            free(blob);
            return BM_ENOMEM;
        }
        rc = gs_decode_stored(sh, ref, blob, len, &seg, ids, err, errlen);
        free(blob);
        if (rc != BM_OK) {
            bm_subjects_free(ids);
            /* Rebuilt from the log (also for an at-rest key this process
             * lacks: the rebuild seals under the current key). */
            char why[256];
            snprintf(why, sizeof why, "%s", err);
            return bm_seterr(err, errlen, BM_ENOTFOUND, "segment %llu unusable: %s: %s",
                             (unsigned long long)ref->id, bm_strerror(rc), why);
        }
        rc = gs_segstat_add(sh, ref->id, ref->count, ref->bytes);
        size_t n = bm_segment_count(seg);
        for (size_t r = 0; r < n && rc == BM_OK; r++) {
            uint64_t key = bm_segment_row_id(seg, r);
            size_t idlen = 0;
            const char *sid = bm_subjects_get(ids, key, &idlen);
            rc = sid != NULL ? gs_index_upsert(sh, key, ref->id, sid, idlen) : BM_EPROTO;
        }
        bm_segment_free(seg);
        bm_subjects_free(ids);
        if (rc != BM_OK)
            return bm_seterr(err, errlen, rc, "segment %llu: indexing failed",
                             (unsigned long long)ref->id);
    }
    for (size_t t = 0; t < m->ntombstones; t++) {
        size_t len = strlen(m->tombstones[t]);
        int rc = gs_index_delete(sh, bm_subjects_key(m->tombstones[t], len), m->tombstones[t], len);
        if (rc != BM_OK)
            return rc;
    }
    bm_manifest_free(sh->man);
    sh->man = m;
    return BM_OK;
}

/* Bring the shard in line with Redis and the log: load the stored
 * manifest (rebuild when it or a segment is lost), then buffer the log's
 * unsealed tail. */
int gs_sync_shard(struct bm_gshard *sh, char *err, size_t errlen)
{
    struct bm_manifest *m = NULL;
    gs_sbuf_clear(&sh->buf);
    int rc = gs_read_manifest(sh, &m, 1, err, errlen);
    if (rc == BM_ENOTFOUND || rc == BM_ECHECKSUM || rc == BM_EUNSUPPORTED) {
        rc = gs_rebuild(sh, rc == BM_ENOTFOUND ? "manifest missing" : "manifest refused", err,
                        errlen);
    } else if (rc == BM_OK) {
        rc = load_index(sh, m, err, errlen);
        if (rc == BM_ENOTFOUND) {
            bm_manifest_free(m);
            char why[300];
            snprintf(why, sizeof why, "%s", err);
            rc = gs_rebuild(sh, why, err, errlen);
        } else if (rc != BM_OK) {
            bm_manifest_free(m);
        }
    }
    if (rc != BM_OK) {
        sh->stale = 1;
        return rc;
    }
    struct readctx rctx = {sh, &sh->buf};
    rc = bm_logread(sh->env.bus, sh->topic, (int32_t)sh->shard, sh->man->log_offset,
                    LOGREAD_TIMEOUT_MS, on_record, &rctx, NULL, err, errlen);
    sh->stale = rc != BM_OK;
    if (rc == BM_OK)
        gs_update_gauges(sh);
    return rc;
}
