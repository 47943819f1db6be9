/* Shard loading for workers (see loader.h).
 *
 * A load is: GET the manifest, fetch its segments with pipelined GETs in
 * bounded batches, decode each blob (the decoder verifies the digest against
 * the manifest's SegmentRef.sha256 and fills the subject table), then one
 * bm_gallery_update() with every segment and the tombstone keys. A refresh
 * does the same for bm_manifest_diff()'s added segments only.
 *
 * Main invariant: the gallery and 'man' always describe the same manifest
 * version; every step that can fail runs before the single gallery update
 * that publishes a version, and a failure frees what it decoded, so a failed
 * load or refresh changes nothing the caller can observe (the subject table
 * may have gained correct key -> id pairs, which are harmless). */
#include "store/loader.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "crypto/atrest.h"
#include "match/gallery.h"
#include "store/galdef.h"
#include "store/keys.h"
#include "store/manifest.h"
#include "store/manifest_mac.h"
#include "store/redis.h"
#include "store/segment.h"
#include "store/subjects.h"

/* A manifest may have been replaced (and the old segments expired after
 * the publication grace) between our GET of the manifest and the GETs of
 * its segments; then we start over with the newer manifest this often. */
#define LOAD_ATTEMPTS 3

struct bm_shard {
    char name[BM_GALLERY_NAME_MAX + 1]; /* gallery name */
    uint32_t shard;
    struct bm_spec spec;
    struct bm_gallery *gallery;      /* owned */
    struct bm_subjects *subjects;    /* owned; guarded by 'lock' */
    pthread_rwlock_t lock;           /* subjects: readers look up, refresh writes */
    struct bm_manifest *man;         /* owned: the version the gallery mirrors */
    uint64_t last_bytes, last_segments, total_bytes;
    double last_ms;
    const struct bm_keyring *kr;     /* borrowed at-rest keys; NULL = none */
};

/* GET and decode the shard's manifest. BM_ENOTFOUND when absent. */
static int get_manifest(struct bm_redis *r, const struct bm_keyring *kr, const char *gallery,
                        uint32_t shard, struct bm_manifest **out, char *err, size_t errlen)
{
    char key[BM_KEY_MAX];
    *out = NULL;
    int rc = bm_key_manifest(key, sizeof key, gallery, shard);
    if (rc != BM_OK)
        return bm_seterr(err, errlen, rc, "shard %s/%u: bad manifest key", gallery, shard);
    void *val = NULL;
    size_t len = 0;
    rc = bm_redis_get(r, key, strlen(key), &val, &len);
    if (rc == BM_ENOTFOUND)
        return bm_seterr(err, errlen, rc, "shard %s/%u: manifest %s is missing", gallery, shard, key);
    if (rc != BM_OK)
        return bm_seterr(err, errlen, rc, "shard %s/%u: GET %s: %s", gallery, shard, key,
                         bm_redis_errstr(r));
    rc = bm_manifest_decode(val, len, 0, out, err, errlen);
    free(val);
    if (rc != BM_OK)
        return rc;
    if (strcmp((*out)->gallery, gallery) != 0 || (*out)->shard != shard) {
        bm_manifest_free(*out);
        *out = NULL;
        return bm_seterr(err, errlen, BM_EPROTO, "shard %s/%u: manifest at %s names another shard",
                         gallery, shard, key);
    }
    /* Strict at-rest mode: a manifest written by anyone without the key
     * (straight into Redis) is refused before any of it is used. */
    rc = bm_manifest_verify(*out, kr, err, errlen);
    if (rc != BM_OK) {
        bm_manifest_free(*out);
        *out = NULL;
    }
    return rc;
}

/* Upper bound of the id bytes in a blob of 'ref' (from the segment layout:
 * header, 64-byte-aligned template rows, int8 scales, then u16 length +
 * bytes per id), so the subject table can be reserved once and exactly
 * enough; a wrong guess costs only a later arena growth. */
static size_t id_bytes_bound(const struct bm_spec *spec, const struct bm_segref *ref)
{
    uint64_t fixed = BM_SEGBLOB_HEADER_BYTES + (uint64_t)ref->count * bm_segblob_stride(spec) +
                     (spec->modality == BM_MODALITY_DENSE && spec->dtype == BM_DTYPE_INT8
                          ? 4ull * ref->count : 0) + 2ull * ref->count;
    if (ref->bytes <= fixed)
        return 0;
    uint64_t b = ref->bytes - fixed;
    uint64_t cap = (uint64_t)ref->count * BM_SUBJECT_ID_MAX;
    return (size_t)(b < cap ? b : cap);
}

/* Fetch and decode refs[0..n) in bounded pipelined batches into segs[0..n).
 * On failure every decoded segment is freed and segs[] is zeroed. */
static int fetch_segments(struct bm_shard *s, struct bm_redis *r,
                          const struct bm_segref *const *refs, size_t n,
                          struct bm_segment **segs, uint64_t *bytes, char *err, size_t errlen)
{
    int rc = BM_OK;
    size_t i = 0;
    *bytes = 0;
    memset(segs, 0, n * sizeof *segs);
    while (i < n && rc == BM_OK) {
        /* One batch: at least one segment, then as many as fit the bounds. */
        size_t end = i, inflight = 0;
        char key[BM_KEY_MAX];
        while (end < n && end - i < BM_SHARD_BATCH_SEGMENTS &&
               (end == i || inflight + refs[end]->bytes <= BM_SHARD_BATCH_BYTES)) {
            rc = bm_key_segment(key, sizeof key, s->name, s->shard, refs[end]->id);
            if (rc != BM_OK) {
                bm_seterr(err, errlen, rc, "shard %s/%u: bad segment key", s->name, s->shard);
                break;
            }
            const char *argv[] = {"GET", key};
            size_t argvlen[] = {3, strlen(key)};
            rc = bm_redis_append(r, 2, argv, argvlen);
            if (rc != BM_OK) {
                bm_seterr(err, errlen, rc, "shard %s/%u: GET %s: %s", s->name, s->shard, key,
                          bm_redis_errstr(r));
                break;
            }
            inflight += refs[end]->bytes;
            end++;
        }
        /* Read every reply owed, even after a failure, so the connection is
         * left with nothing pending. */
        for (size_t j = i; j < end; j++) {
            struct bm_redis_reply *rep = NULL;
            int grc = bm_redis_get_reply(r, &rep);
            if (rc != BM_OK) {
                bm_redis_reply_free(rep);
                continue;
            }
            if (grc != BM_OK) {
                rc = bm_seterr(err, errlen, grc, "shard %s/%u: GET segment %llu: %s", s->name,
                               s->shard, (unsigned long long)refs[j]->id, bm_redis_errstr(r));
            } else if (rep->type == BM_REDIS_NIL) {
                rc = bm_seterr(err, errlen, BM_ENOTFOUND, "shard %s/%u: segment %llu is missing",
                               s->name, s->shard, (unsigned long long)refs[j]->id);
            } else if (rep->type != BM_REDIS_STRING) {
                rc = bm_seterr(err, errlen, BM_EPROTO,
                               "shard %s/%u: segment %llu: unexpected reply type %d", s->name,
                               s->shard, (unsigned long long)refs[j]->id, (int)rep->type);
            } else {
                *bytes += rep->len;
                /* An encrypted value is opened first (docs/storage.md §8);
                 * the digest check below is then on the plaintext blob. */
                const uint8_t *plain = NULL;
                size_t plainlen = 0;
                uint8_t *owned = NULL;
                rc = bm_atrest_open(s->kr, s->name, s->shard, refs[j]->id, refs[j]->key_id,
                                    rep->str, rep->len, &plain, &plainlen, &owned, err, errlen);
                if (rc == BM_OK) {
                    pthread_rwlock_wrlock(&s->lock);
                    rc = bm_segblob_decode(plain, plainlen, &s->spec, refs[j]->sha256, &segs[j],
                                           s->subjects, err, errlen);
                    pthread_rwlock_unlock(&s->lock);
                }
                free(owned);
                if (rc == BM_OK && bm_segment_id(segs[j]) != refs[j]->id)
                    rc = bm_seterr(err, errlen, BM_EPROTO,
                                   "shard %s/%u: blob at segment %llu says segment %llu", s->name,
                                   s->shard, (unsigned long long)refs[j]->id,
                                   (unsigned long long)bm_segment_id(segs[j]));
            }
            /* The blob is released right after decoding (at most one raw
             * blob is alive at a time); its buffer goes back to the
             * connection for the next GET of the batch, whose pages are
             * then already mapped (the connection drops it when the batch
             * is drained). */
            bm_redis_reply_recycle(r, rep);
        }
        i = end;
    }
    if (rc != BM_OK) {
        for (size_t j = 0; j < n; j++) {
            bm_segment_free(segs[j]);
            segs[j] = NULL;
        }
    }
    return rc;
}

/* Apply manifest 'to' on top of the held one (s->man may be NULL for the
 * first load). Takes ownership of 'to' on BM_OK. */
static int apply(struct bm_shard *s, struct bm_redis *r, struct bm_manifest *to, char *err,
                 size_t errlen)
{
    struct bm_manifest_diff d;
    struct bm_segment **segs = NULL;
    uint64_t *tomb = NULL, bytes = 0;
    double t0 = bm_mono_s();
    int rc = bm_manifest_diff(s->man, to, &d, err, errlen);
    if (rc != BM_OK)
        return rc;
    if (s->man == NULL) {
        /* First load: reserve the subject table once for the whole shard so
         * it is sized exactly instead of growing by doubling. */
        size_t nsub = 0, nbytes = 0;
        for (size_t i = 0; i < d.nadded; i++) {
            nsub += d.added[i]->count;
            nbytes += id_bytes_bound(&s->spec, d.added[i]);
        }
        pthread_rwlock_wrlock(&s->lock);
        rc = bm_subjects_reserve(s->subjects, nsub, nbytes, err, errlen);
        pthread_rwlock_unlock(&s->lock);
        if (rc != BM_OK)
            goto out;
    }
    segs = calloc(d.nadded ? d.nadded : 1, sizeof *segs);
    if (segs == NULL) {
        rc = bm_seterr(err, errlen, BM_ENOMEM, "shard: out of memory");
        goto out;
    }
    rc = fetch_segments(s, r, d.added, d.nadded, segs, &bytes, err, errlen);
    if (rc != BM_OK)
        goto out;
    rc = bm_manifest_tombstone_keys(to, &tomb, err, errlen);
    if (rc != BM_OK)
        goto out;
    rc = bm_gallery_update(s->gallery, segs, d.nadded, d.removed, d.nremoved, tomb,
                           to->ntombstones, err, errlen);
    if (rc != BM_OK)
        goto out;
    /* The gallery owns the segments now. */
    memset(segs, 0, d.nadded * sizeof *segs);
    s->last_bytes = bytes;
    s->last_segments = d.nadded;
    s->total_bytes += bytes;
    s->last_ms = (bm_mono_s() - t0) * 1e3;
out:
    if (segs != NULL) {
        for (size_t i = 0; i < d.nadded; i++)
            bm_segment_free(segs[i]);
        free(segs);
    }
    free(tomb);
    /* The diff borrows strings from both manifests: free it before them. */
    bm_manifest_diff_free(&d);
    if (rc == BM_OK) {
        bm_manifest_free(s->man);
        s->man = to;
    }
    return rc;
}

/* Read the newest manifest and apply it, starting over when a segment
 * vanished because the manifest moved on meanwhile. *changed = 0 when the
 * stored version is not newer than the held one. */
static int follow(struct bm_shard *s, struct bm_redis *r, int *changed, char *err, size_t errlen)
{
    uint64_t seen = 0;
    int rc = BM_OK;
    *changed = 0;
    for (int attempt = 0; attempt < LOAD_ATTEMPTS; attempt++) {
        struct bm_manifest *m = NULL;
        rc = get_manifest(r, s->kr, s->name, s->shard, &m, err, errlen);
        if (rc != BM_OK)
            return rc;
        /* Versions only compare within one epoch: a manifest of another
         * epoch is the shard rebuilt after Redis lost it, and replaces
         * what we hold whatever its version. */
        if (s->man != NULL && bm_manifest_same_epoch(m, s->man) &&
            m->version <= s->man->version) {
            bm_manifest_free(m);
            return BM_OK;
        }
        if (attempt > 0 && m->version == seen) {
            /* Same manifest as the failed attempt: the segment is really
             * gone (flushed cache); report it. */
            bm_manifest_free(m);
            return rc = bm_seterr(err, errlen, BM_ENOTFOUND,
                                  "shard %s/%u: manifest version %llu references a missing segment",
                                  s->name, s->shard, (unsigned long long)seen);
        }
        seen = m->version;
        rc = apply(s, r, m, err, errlen);
        if (rc == BM_OK) {
            *changed = 1;
            return BM_OK;
        }
        bm_manifest_free(m);
        if (rc != BM_ENOTFOUND)
            return rc;
    }
    return rc;
}

struct bm_shard *bm_shard_load(struct bm_redis *r, const Biomatch__V1__GalleryDefinition *def,
                               uint32_t shard, struct bm_pool *pool, int *rc, char *err,
                               size_t errlen)
{
    return bm_shard_load_keyring(r, def, shard, pool, NULL, rc, err, errlen);
}

struct bm_shard *bm_shard_load_keyring(struct bm_redis *r,
                                       const Biomatch__V1__GalleryDefinition *def, uint32_t shard,
                                       struct bm_pool *pool, const struct bm_keyring *kr, int *rc,
                                       char *err, size_t errlen)
{
    int dummy, changed = 0;
    if (rc == NULL)
        rc = &dummy;
    if (r == NULL || def == NULL) {
        *rc = bm_seterr(err, errlen, BM_EINVAL, "shard load: missing connection or definition");
        return NULL;
    }
    *rc = bm_galdef_validate(def, err, errlen);
    if (*rc != BM_OK)
        return NULL;
    if (shard >= def->shards) {
        *rc = bm_seterr(err, errlen, BM_EINVAL, "shard load: shard %u of a %u-shard gallery", shard,
                        def->shards);
        return NULL;
    }
    struct bm_shard *s = calloc(1, sizeof *s);
    if (s == NULL) {
        *rc = bm_seterr(err, errlen, BM_ENOMEM, "shard load: out of memory");
        return NULL;
    }
    if (pthread_rwlock_init(&s->lock, NULL) != 0) {
        free(s);
        *rc = bm_seterr(err, errlen, BM_ENOMEM, "shard load: cannot create lock");
        return NULL;
    }
    /* Name length was checked by validate (<= 64 bytes). */
    memcpy(s->name, def->name, strlen(def->name) + 1);
    s->shard = shard;
    s->kr = kr;
    *rc = bm_galdef_to_spec(def, &s->spec, err, errlen);
    if (*rc != BM_OK)
        goto fail;
    s->subjects = bm_subjects_new(0, err, errlen);
    if (s->subjects == NULL) {
        *rc = BM_ENOMEM;
        goto fail;
    }
    s->gallery = bm_gallery_new(&s->spec, pool, err, errlen);
    if (s->gallery == NULL) {
        *rc = BM_ENOMEM;
        goto fail;
    }
    *rc = follow(s, r, &changed, err, errlen);
    if (*rc != BM_OK)
        goto fail;
    return s;
fail:
    bm_shard_free(s);
    return NULL;
}

int bm_shard_refresh(struct bm_shard *s, struct bm_redis *r, int *changed, char *err,
                     size_t errlen)
{
    int dummy;
    if (changed == NULL)
        changed = &dummy;
    *changed = 0;
    if (s == NULL || r == NULL)
        return bm_seterr(err, errlen, BM_EINVAL, "shard refresh: missing shard or connection");
    return follow(s, r, changed, err, errlen);
}

struct bm_gallery *bm_shard_gallery(const struct bm_shard *s)
{
    return s->gallery;
}

uint64_t bm_shard_version(const struct bm_shard *s)
{
    return s->man != NULL ? s->man->version : 0;
}

const struct bm_manifest *bm_shard_manifest(const struct bm_shard *s)
{
    return s->man;
}

uint32_t bm_shard_index(const struct bm_shard *s)
{
    return s->shard;
}

int bm_shard_subject_id(struct bm_shard *s, uint64_t key, char *buf, size_t len)
{
    size_t n = 0;
    int rc;
    pthread_rwlock_rdlock(&s->lock);
    const char *id = bm_subjects_get(s->subjects, key, &n);
    if (id == NULL) {
        rc = BM_ENOTFOUND;
    } else if (n + 1 > len) {
        rc = BM_ERANGE;
    } else {
        memcpy(buf, id, n);
        buf[n] = '\0';
        rc = (int)n;
    }
    pthread_rwlock_unlock(&s->lock);
    if (rc < 0 && len > 0)
        buf[0] = '\0';
    return rc;
}

void bm_shard_stats(struct bm_shard *s, struct bm_shard_stats *st)
{
    memset(st, 0, sizeof *st);
    st->version = bm_shard_version(s);
    st->subjects = bm_gallery_count(s->gallery);
    st->gallery_memory = bm_gallery_memory(s->gallery);
    pthread_rwlock_rdlock(&s->lock);
    st->subjects_memory = bm_subjects_memory(s->subjects);
    pthread_rwlock_unlock(&s->lock);
    if (s->man != NULL) {
        size_t tb = bm_spec_template_bytes(&s->spec);
        st->segments = s->man->nsegments;
        st->tombstones = s->man->ntombstones;
        for (size_t i = 0; i < s->man->nsegments; i++)
            st->template_bytes += (size_t)s->man->segments[i].count * tb;
    }
    st->last_bytes = s->last_bytes;
    st->last_segments = s->last_segments;
    st->last_ms = s->last_ms;
    st->total_bytes = s->total_bytes;
}

void bm_shard_free(struct bm_shard *s)
{
    if (s == NULL)
        return;
    bm_gallery_free(s->gallery);
    bm_subjects_free(s->subjects);
    bm_manifest_free(s->man);
    pthread_rwlock_destroy(&s->lock);
    free(s);
}
