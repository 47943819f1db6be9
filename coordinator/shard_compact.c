/* Compaction: rewrite a shard's live rows into fresh segments, dropping
 * dead rows and tombstones, published like any seal. */
#define _POSIX_C_SOURCE 200809L
#include "shard_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "common/clock.h"
#include "keymap.h"
#include "obs/log.h"
#include "obs/metrics.h"
#include "store/redis.h"
#include "store/segment.h"
#include "store/subjects.h"

int gs_compact_worthwhile(const struct bm_gshard *sh, long long now_ms)
{
    uint64_t rows = 0, dead = 0;
    size_t small = 0;
    for (size_t i = 0; i < sh->nsegs; i++) {
        rows += sh->segs[i].rows;
        dead += sh->segs[i].dead;
        if ((int64_t)sh->segs[i].bytes < sh->env.segment_max_bytes / 2)
            small++;
    }
    if (dead > 0 && dead * 4 >= rows)
        return 1;
    if (sh->nsegs > COMPACT_MAX_SEGMENTS && small >= 2)
        return 1;
    int quiet = sh->buf.n == 0 && now_ms - sh->last_publish_ms >= sh->env.compact_quiet_ms;
    return quiet && (dead > 0 || sh->tombs.n > 0 || small >= 2);
}

int bm_gshard_compact(struct bm_gshard *sh)
{
    char err[512];
    if (sh->stale || sh->nsegs == 0)
        return BM_OK;
    uint64_t newest = sh->man->segments[sh->man->nsegments - 1].id;
    size_t live = bm_keymap_count(sh->index);
    int64_t limit = sh->env.segment_max_bytes - BM_SEGBLOB_HEADER_BYTES;
    long long t0 = bm_mono_ms();
    int rc = BM_OK;
    struct bm_subjects *names = bm_subjects_new(live, err, sizeof err);
    struct outseg all = {0};
    struct bm_segref *refs = NULL;
    uint64_t *drop = NULL;
    size_t nrefs = 0;
    struct bm_manifest *next = NULL;
    if (names == NULL || gs_outseg_alloc(&all, live, sh->tbytes) != BM_OK) {
        rc = BM_ENOMEM;
        goto out;
    }
    /* Gather the live rows, segment by segment. */
    for (size_t s = 0; s < sh->man->nsegments; s++) {
        const struct bm_segref *ref = &sh->man->segments[s];
        char k[BM_KEY_MAX];
        bm_key_segment(k, sizeof k, sh->gallery, sh->shard, ref->id);
        void *blob = NULL;
        size_t len = 0;
        struct bm_segment *seg = NULL;
        rc = bm_redis_get(sh->env.redis, k, strlen(k), &blob, &len);
        if (rc == BM_OK)
            rc = gs_decode_stored(sh, ref, blob, len, &seg, names, err, sizeof err);
        else
            snprintf(err, sizeof err, "GET segment %llu: %s", (unsigned long long)ref->id,
                     bm_strerror(rc));
        free(blob);
        if (rc != BM_OK)
            goto out; /* a lost segment: the periodic check rebuilds */
        size_t n = bm_segment_count(seg);
        for (size_t r = 0; r < n && all.n < live; r++) {
            uint64_t key = bm_segment_row_id(seg, r), at;
            if (!bm_keymap_get(sh->index, key, &at) || at != ref->id)
                continue;
            size_t idlen = 0;
            all.ids[all.n] = bm_subjects_get(names, key, &idlen);
            all.lens[all.n] = idlen;
            all.keys[all.n] = key;
            all.scales[all.n] = bm_segment_row_scale(seg, r);
            memcpy(all.rows + all.n * sh->tbytes, bm_segment_row(seg, r), sh->tbytes);
            all.n++;
        }
        bm_segment_free(seg);
    }
    /* The subject table's strings moved while it grew? No: it was sized for
     * 'live' up front, but re-read the pointers anyway before encoding. */
    for (size_t r = 0; r < all.n; r++)
        all.ids[r] = bm_subjects_get(names, all.keys[r], &all.lens[r]);
    /* Cut into segments; ids follow the newest input (same first offset,
     * next generations), so they sort before every later seal. */
    size_t nout = 0;
    {
        int64_t bytes = 0;
        for (size_t r = 0; r < all.n; r++) {
            int64_t c = gs_row_cost(sh->stride, sh->int8, all.lens[r]);
            if (r == 0 || bytes + c > limit) {
                nout++;
                bytes = 0;
            }
            bytes += c;
        }
    }
    if ((newest & SEG_GEN_MASK) + nout > SEG_GEN_MASK) {
        BM_LOGF(BM_LOG_WARN, "compaction skipped: segment generations exhausted",
                BM_LF_STR("gallery", sh->gallery), BM_LF_INT("shard", sh->shard));
        goto out;
    }
    refs = calloc(nout ? nout : 1, sizeof *refs);
    drop = calloc(sh->man->nsegments, sizeof *drop);
    if (refs == NULL || drop == NULL) {
        rc = BM_ENOMEM;
        goto out;
    }
    {
        size_t r = 0;
        while (r < all.n) {
            size_t j = r;
            int64_t bytes = 0;
            while (j < all.n) {
                int64_t c = gs_row_cost(sh->stride, sh->int8, all.lens[j]);
                if (j > r && bytes + c > limit)
                    break;
                bytes += c;
                j++;
            }
            struct outseg o = {newest + 1 + nrefs, j - r, all.ids + r, all.lens + r,
                               all.keys + r, all.rows + r * sh->tbytes, all.scales + r};
            if ((rc = gs_write_segment(sh, &o, sh->man, 0, &refs[nrefs], err, sizeof err)) !=
                BM_OK) {
                sh->stale = rc == BM_ECONFLICT; /* another writer: reload */
                goto out;
            }
            nrefs++;
            r = j;
        }
    }
    for (size_t s = 0; s < sh->man->nsegments; s++)
        drop[s] = sh->man->segments[s].id;
    struct bm_manifest_change ch = {0};
    ch.add = refs;
    ch.nadd = nrefs;
    ch.drop = drop;
    ch.ndrop = sh->man->nsegments;
    ch.set_tombstones = 1;
    ch.tombstones = NULL;
    ch.ntombstones = 0;
    ch.log_offset = sh->man->log_offset;
    ch.subjects = (uint32_t)all.n;
    ch.updated_unix_ms = bm_wall_ms();
    if ((rc = bm_manifest_next(sh->man, &ch, &next, err, sizeof err)) != BM_OK)
        goto out;
    rc = gs_cas_publish(sh, sh->man->version, next, drop, sh->man->nsegments, err, sizeof err);
    if (rc != BM_OK) {
        sh->stale = rc == BM_ECONFLICT; /* someone else published: reload */
        goto out;
    }
    /* Published: the state now mirrors 'next'. */
    size_t before = sh->man->nsegments, tombs_before = sh->tombs.n;
    gs_state_reset(sh);
    size_t r0 = 0;
    for (size_t s = 0; s < nrefs; s++) {
        gs_segstat_add(sh, refs[s].id, refs[s].count, refs[s].bytes);
        for (size_t r = 0; r < refs[s].count; r++)
            if (bm_keymap_put(sh->index, all.keys[r0 + r], refs[s].id) != BM_OK ||
                gs_name_set(sh, all.keys[r0 + r], all.ids[r0 + r], all.lens[r0 + r]) != BM_OK)
                sh->stale = 1; /* out of memory: reload before the next change */
        r0 += refs[s].count;
    }
    bm_manifest_free(sh->man);
    sh->man = next;
    next = NULL;
    bm_counter_inc(sh->c_compactions);
    bm_counter_add(sh->c_sealed, nrefs);
    gs_update_gauges(sh);
    sh->last_publish_ms = bm_mono_ms();
    BM_LOGF(BM_LOG_INFO, "shard compacted", BM_LF_STR("gallery", sh->gallery),
            BM_LF_INT("shard", sh->shard), BM_LF_INT("segments_before", before),
            BM_LF_INT("segments", nrefs), BM_LF_INT("tombstones_dropped", tombs_before),
            BM_LF_INT("subjects", all.n), BM_LF_INT("version", sh->man->version),
            BM_LF_INT("ms", bm_mono_ms() - t0));
out:
    if (rc != BM_OK)
        BM_LOGF(BM_LOG_WARN, "compaction failed", BM_LF_STR("gallery", sh->gallery),
                BM_LF_INT("shard", sh->shard), BM_LF_STR("error", err));
    bm_manifest_free(next);
    free(refs);
    free(drop);
    gs_outseg_free(&all);
    bm_subjects_free(names);
    return rc;
}
