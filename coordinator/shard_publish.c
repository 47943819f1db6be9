/* Sealing and publication: segment blobs are written without ever
 * replacing a published one, then the next manifest is published by
 * compare-and-set on its version (docs/storage.md section 7). */
#define _POSIX_C_SOURCE 200809L
#include "shard_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "common/clock.h"
#include "crypto/atrest.h"
#include "keymap.h"
#include "obs/metrics.h"
#include "store/manifest_mac.h"
#include "store/redis.h"
#include "store/segment.h"

/* Segment blob write: mode "nx" sets KEYS[1] only when it is absent;
 * mode "if" sets it only while the manifest KEYS[2] still holds exactly
 * the bytes ARGV[3] ("" = no manifest). 1 = written, 0 = refused. */
static const char seg_set_lua[] =
    "if ARGV[2] == 'nx' then\n"
    "  if redis.call('SET', KEYS[1], ARGV[1], 'NX') then return 1 end\n"
    "  return 0\n"
    "end\n"
    "local cur = redis.call('GET', KEYS[2]) or ''\n"
    "if cur ~= ARGV[3] then return 0 end\n"
    "redis.call('SET', KEYS[1], ARGV[1])\n"
    "return 1\n";

static int seg_set(struct bm_gshard *sh, const char *k, const void *blob, size_t len,
                   const char *mode, const void *man, size_t manlen, int *written)
{
    const char *argv[5] = {k, sh->mkey, blob, mode, man != NULL ? man : ""};
    size_t lens[5] = {strlen(k), strlen(sh->mkey), len, strlen(mode), manlen};
    struct bm_redis_reply *r = NULL;
    int rc = bm_redis_eval(sh->env.redis, seg_set_lua, 2, 5, argv, lens, &r);
    if (rc == BM_OK && r->type != BM_REDIS_INTEGER)
        rc = BM_EPROTO;
    if (rc == BM_OK)
        *written = r->integer == 1;
    bm_redis_reply_free(r);
    return rc;
}

/* Store blob 'k' of segment 'id' without ever replacing a published blob
 * (docs/storage.md §7). SET NX covers a new id. An existing blob is an
 * orphan of a crashed seal (same writer state, same id) or a blob someone
 * else wrote: it is replaced only while the stored manifest is still
 * 'base' (the version this seal builds on) and 'base' does not reference
 * 'id', unless 'reuse' (a rebuild replacing every segment of 'base'). The
 * check and the SET run in one script against the exact manifest bytes
 * read, so a publication in between refuses the write. Anything else is
 * BM_ECONFLICT: another writer moved on, resync. */
static int store_segment(struct bm_gshard *sh, const char *k, uint64_t id, const void *blob,
                         size_t len, const struct bm_manifest *base, int reuse, char *err,
                         size_t errlen)
{
    int written = 0;
    int rc = seg_set(sh, k, blob, len, "nx", NULL, 0, &written);
    if (rc != BM_OK)
        return bm_seterr(err, errlen, rc, "SET segment: %s", bm_redis_errstr(sh->env.redis));
    if (written)
        return BM_OK;
    void *man = NULL;
    size_t manlen = 0;
    struct bm_manifest *cur = NULL;
    rc = bm_redis_get(sh->env.redis, sh->mkey, strlen(sh->mkey), &man, &manlen);
    if (rc == BM_OK) {
        char derr[256];
        if (bm_manifest_decode(man, manlen, 0, &cur, derr, sizeof derr) != BM_OK)
            cur = NULL;
    } else if (rc != BM_ENOTFOUND) {
        return bm_seterr(err, errlen, rc, "GET manifest: %s", bm_redis_errstr(sh->env.redis));
    }
    uint64_t have = rc == BM_ENOTFOUND ? 0 : cur != NULL ? cur->version : UINT64_MAX;
    int ok = have == base->version;
    for (size_t s = 0; ok && !reuse && cur != NULL && s < cur->nsegments; s++)
        ok = cur->segments[s].id != id;
    bm_manifest_free(cur);
    if (ok)
        rc = seg_set(sh, k, blob, len, "if", man, manlen, &written);
    free(man);
    if (rc != BM_OK && rc != BM_ENOTFOUND)
        return bm_seterr(err, errlen, rc, "SET segment: %s", bm_redis_errstr(sh->env.redis));
    if (!ok || !written)
        return bm_seterr(err, errlen, BM_ECONFLICT,
                         "segment %llu exists and the manifest moved past version %llu",
                         (unsigned long long)id, (unsigned long long)base->version);
    return BM_OK;
}

/* Encode 'o' and store it (store_segment: never over a published blob).
 * On BM_OK 'ref' describes the stored blob. */
int gs_write_segment(struct bm_gshard *sh, const struct outseg *o,
                     const struct bm_manifest *base, int reuse, struct bm_segref *ref,
                     char *err, size_t errlen)
{
    uint8_t *blob = NULL;
    size_t len = 0;
    int rc = bm_segblob_encode(&sh->spec, o->id, o->n, o->ids, o->lens, o->rows,
                               sh->int8 ? o->scales : NULL, &blob, &len, ref->sha256, err,
                               errlen);
    if (rc != BM_OK)
        return rc;
    /* With a current at-rest key the stored value is the sealed envelope
     * (docs/storage.md §8); ref->sha256 stays the plaintext's digest. */
    const char *kid = bm_keyring_current_id(sh->env.keyring);
    if (kid != NULL) {
        uint8_t *env = NULL;
        size_t envlen = 0;
        rc = bm_atrest_seal(sh->env.keyring, sh->gallery, sh->shard, o->id, blob, len, &env,
                            &envlen, err, errlen);
        free(blob);
        if (rc != BM_OK)
            return rc;
        blob = env;
        len = envlen;
    }
    char k[BM_KEY_MAX];
    bm_key_segment(k, sizeof k, sh->gallery, sh->shard, o->id);
    rc = store_segment(sh, k, o->id, blob, len, base, reuse, err, errlen);
    free(blob);
    if (rc != BM_OK)
        return rc;
    memset(ref->key_id, 0, sizeof ref->key_id);
    if (kid != NULL)
        memcpy(ref->key_id, kid, strlen(kid) + 1);
    ref->id = o->id;
    ref->count = (uint32_t)o->n;
    ref->bytes = len;
    return BM_OK;
}

/* Open (when encrypted) and decode the stored value of segment 'ref'. */
int gs_decode_stored(struct bm_gshard *sh, const struct bm_segref *ref, const void *val,
                     size_t len, struct bm_segment **seg, struct bm_subjects *names,
                     char *err, size_t errlen)
{
    if (bm_atrest_plaintext_refused(sh->env.keyring, val, len))
        bm_counter_inc(sh->c_refused_segment); /* bm_atrest_open refuses it below */
    const uint8_t *plain = NULL;
    size_t plainlen = 0;
    uint8_t *owned = NULL;
    int rc = bm_atrest_open(sh->env.keyring, sh->gallery, sh->shard, ref->id, ref->key_id, val,
                            len, &plain, &plainlen, &owned, err, errlen);
    if (rc == BM_OK)
        rc = bm_segblob_decode(plain, plainlen, &sh->spec, ref->sha256, seg, names, err, errlen);
    free(owned);
    return rc;
}

/* Compare-and-set 'next' over base version 'base', expiring 'drop' keys.
 * BM_OK (published), BM_ECONFLICT (lost) or an error. */
int gs_cas_publish(struct bm_gshard *sh, uint64_t base, struct bm_manifest *next,
                   const uint64_t *drop, size_t ndrop, char *err, size_t errlen)
{
    uint8_t *enc = NULL;
    size_t enclen = 0;
    int rc = bm_manifest_sign(next, sh->env.keyring, err, errlen);
    if (rc == BM_OK)
        rc = bm_manifest_encode(next, &enc, &enclen, err, errlen);
    if (rc != BM_OK)
        return rc;
    size_t argc = 1 + ndrop + 3;
    const char **argv = calloc(argc, sizeof *argv);
    size_t *lens = calloc(argc, sizeof *lens);
    char (*keys)[BM_KEY_MAX] = calloc(ndrop + 1, sizeof *keys);
    char basebuf[32], gracebuf[32];
    if (argv == NULL || lens == NULL || keys == NULL) {
        rc = bm_seterr(err, errlen, BM_ENOMEM, "publish: out of memory");
        goto out;
    }
    argv[0] = sh->mkey;
    for (size_t i = 0; i < ndrop; i++) {
        bm_key_segment(keys[i], sizeof keys[i], sh->gallery, sh->shard, drop[i]);
        argv[1 + i] = keys[i];
    }
    snprintf(basebuf, sizeof basebuf, "%llu", (unsigned long long)base);
    snprintf(gracebuf, sizeof gracebuf, "%lld", (long long)sh->env.grace_ms);
    argv[1 + ndrop] = basebuf;
    argv[2 + ndrop] = (const char *)enc;
    argv[3 + ndrop] = gracebuf;
    for (size_t i = 0; i < argc; i++)
        lens[i] = i == 2 + ndrop ? enclen : strlen(argv[i]);
    struct bm_redis_reply *r = NULL;
    rc = bm_redis_eval(sh->env.redis, bm_manifest_cas_lua, (int)(1 + ndrop), (int)argc, argv,
                       lens, &r);
    if (rc != BM_OK) {
        rc = bm_seterr(err, errlen, rc, "manifest CAS: %s", bm_redis_errstr(sh->env.redis));
    } else if (r->type != BM_REDIS_INTEGER) {
        rc = bm_seterr(err, errlen, BM_EPROTO, "manifest CAS: unexpected reply");
    } else if (r->integer != 1) {
        rc = bm_seterr(err, errlen, BM_ECONFLICT,
                       "manifest CAS lost: version %llu is no longer current",
                       (unsigned long long)base);
    }
    bm_redis_reply_free(r);
out:
    free(enc);
    free(argv);
    free(lens);
    free(keys);
    return rc;
}

/* Sort helper without qsort_r (not C11): entries carry their offsets. */
struct ord {
    int64_t offset;
    size_t slot;
};

static int ord_cmp(const void *a, const void *b)
{
    const struct ord *x = a, *y = b;
    return (x->offset > y->offset) - (x->offset < y->offset);
}

void gs_outseg_free(struct outseg *o)
{
    free(o->ids);
    free(o->lens);
    free(o->keys);
    free(o->rows);
    free(o->scales);
    memset(o, 0, sizeof *o);
}

int gs_outseg_alloc(struct outseg *o, size_t cap, size_t tbytes)
{
    memset(o, 0, sizeof *o);
    o->ids = calloc(cap ? cap : 1, sizeof *o->ids);
    o->lens = calloc(cap ? cap : 1, sizeof *o->lens);
    o->keys = calloc(cap ? cap : 1, sizeof *o->keys);
    o->rows = malloc((cap ? cap : 1) * tbytes);
    o->scales = calloc(cap ? cap : 1, sizeof *o->scales);
    if (o->ids == NULL || o->lens == NULL || o->keys == NULL || o->rows == NULL ||
        o->scales == NULL) {
        gs_outseg_free(o);
        return BM_ENOMEM;
    }
    return BM_OK;
}

/* Publish buffer 'b' as the next manifest.
 *
 * replace = 0: append its upserts as new segments (ids from their first
 * offsets) and apply its deletes as tombstones; log_offset = last + 1.
 * replace = 1 (rebuild): the buffer is the whole log [0, end); the new
 * manifest drops every old segment and has no tombstones; log_offset = end.
 * 'base' is the manifest built upon: sh->man for a seal, or the stored
 * manifest the rebuild read. It is borrowed on success and on failure
 * (the caller frees a manifest of its own; when 'base' is sh->man, the
 * shard does, and on success sh->man is replaced by the published
 * manifest, so the caller must not use 'base' after it). */
int gs_publish(struct bm_gshard *sh, struct sbuf *b, int replace, struct bm_manifest *base,
               int64_t end, char *err, size_t errlen)
{
    long long t0 = bm_mono_ms();
    int rc = BM_OK;
    struct ord *ord = malloc((b->n ? b->n : 1) * sizeof *ord);
    struct bm_segref *refs = NULL;
    size_t nrefs = 0, caprefs = 0;
    uint64_t *drop = NULL, *cas_drop = NULL;
    size_t ndrop = 0, ncas_drop = 0;
    const char **tombs = NULL;
    struct bm_manifest *next = NULL;
    struct outseg o = {0};
    if (ord == NULL)
        return bm_seterr(err, errlen, BM_ENOMEM, "publish: out of memory");
    size_t nup = 0;
    for (size_t i = 0; i < b->n; i++)
        if (!b->e[i].del)
            ord[nup++] = (struct ord){b->e[i].offset, i};
    qsort(ord, nup, sizeof *ord, ord_cmp);

    if (replace) {
        gs_state_reset(sh);
    }
    sh->stale = 1; /* from here on the state runs ahead of the manifest */

    /* Upserts, in offset order, cut into segments of at most
     * segment_max_bytes; each takes the id of its first offset. */
    int64_t limit = sh->env.segment_max_bytes - BM_SEGBLOB_HEADER_BYTES;
    size_t i = 0;
    while (i < nup) {
        size_t j = i;
        int64_t bytes = 0;
        while (j < nup) {
            int64_t c = gs_row_cost(sh->stride, sh->int8, b->e[ord[j].slot].idlen);
            if (j > i && bytes + c > limit)
                break;
            bytes += c;
            j++;
        }
        if ((rc = gs_outseg_alloc(&o, j - i, sh->tbytes)) != BM_OK) {
            bm_seterr(err, errlen, rc, "publish: out of memory");
            goto out;
        }
        o.id = (uint64_t)b->e[ord[i].slot].offset << SEG_GEN_BITS;
        for (size_t r = i; r < j; r++) {
            const struct bent *e = &b->e[ord[r].slot];
            o.ids[o.n] = e->id;
            o.lens[o.n] = e->idlen;
            o.keys[o.n] = e->key;
            o.scales[o.n] = e->scale;
            memcpy(o.rows + o.n * sh->tbytes, b->rows + ord[r].slot * b->tbytes, sh->tbytes);
            o.n++;
        }
        if (nrefs == caprefs) {
            size_t nc = caprefs ? caprefs * 2 : 4;
            struct bm_segref *nr = realloc(refs, nc * sizeof *nr);
            if (nr == NULL) {
                rc = bm_seterr(err, errlen, BM_ENOMEM, "publish: out of memory");
                goto out;
            }
            refs = nr;
            caprefs = nc;
        }
        if ((rc = gs_write_segment(sh, &o, base, replace, &refs[nrefs], err, errlen)) != BM_OK)
            goto out;
        if ((rc = gs_segstat_add(sh, o.id, (uint32_t)o.n, refs[nrefs].bytes)) != BM_OK)
            goto out;
        nrefs++;
        for (size_t r = 0; r < o.n; r++)
            if ((rc = gs_index_upsert(sh, o.keys[r], o.id, o.ids[r], o.lens[r])) != BM_OK) {
                bm_seterr(err, errlen, rc, "publish: out of memory");
                goto out;
            }
        gs_outseg_free(&o);
        i = j;
    }
    /* Deletes. */
    for (size_t k = 0; k < b->n; k++)
        if (b->e[k].del &&
            (rc = gs_index_delete(sh, b->e[k].key, b->e[k].id, b->e[k].idlen)) != BM_OK)
            goto out;

    if (replace && base->nsegments > 0) {
        drop = malloc(base->nsegments * sizeof *drop);
        cas_drop = malloc(base->nsegments * sizeof *cas_drop);
        if (drop == NULL || cas_drop == NULL) {
            rc = bm_seterr(err, errlen, BM_ENOMEM, "publish: out of memory");
            goto out;
        }
        for (size_t s = 0; s < base->nsegments; s++) {
            uint64_t id = base->segments[s].id;
            drop[ndrop++] = id;
            /* A rebuilt segment may reuse an old id: its fresh blob must not
             * be expired by the publication that references it. */
            int reused = 0;
            for (size_t r = 0; r < nrefs; r++)
                reused |= refs[r].id == id;
            if (!reused)
                cas_drop[ncas_drop++] = id;
        }
    }
    tombs = malloc((sh->tombs.n ? sh->tombs.n : 1) * sizeof *tombs);
    if (tombs == NULL) {
        rc = bm_seterr(err, errlen, BM_ENOMEM, "publish: out of memory");
        goto out;
    }
    for (size_t k = 0; k < sh->tombs.n; k++)
        tombs[k] = sh->tombs.s[k];
    struct bm_manifest_change ch = {0};
    ch.add = refs;
    ch.nadd = nrefs;
    ch.drop = drop;
    ch.ndrop = ndrop;
    ch.set_tombstones = 1;
    ch.tombstones = tombs;
    ch.ntombstones = sh->tombs.n;
    ch.log_offset = replace ? end : b->last_offset + 1;
    if (ch.log_offset < base->log_offset)
        ch.log_offset = base->log_offset;
    ch.subjects = (uint32_t)bm_keymap_count(sh->index);
    ch.updated_unix_ms = bm_wall_ms();
    if ((rc = bm_manifest_next(base, &ch, &next, err, errlen)) != BM_OK)
        goto out;
    /* A rebuild starts a new history of the shard: workers holding any
     * other epoch reload it whole, whatever its version (Redis may have
     * lost the old manifest, so versions may restart at 1). */
    if (replace && (rc = bm_manifest_new_epoch(next, err, errlen)) != BM_OK)
        goto out;
    if ((rc = gs_cas_publish(sh, base->version, next, cas_drop, ncas_drop, err, errlen)) != BM_OK)
        goto out;
    bm_manifest_free(sh->man);
    sh->man = next;
    next = NULL;
    sh->stale = 0;
    sh->last_publish_ms = bm_mono_ms();
    bm_counter_add(sh->c_sealed, nrefs);
    bm_histogram_observe(sh->h_seal, (double)(sh->last_publish_ms - t0) / 1000.0);
    gs_update_gauges(sh);
out:
    gs_outseg_free(&o);
    bm_manifest_free(next);
    free(ord);
    free(refs);
    free(drop);
    free(cas_drop);
    free(tombs);
    return rc;
}
