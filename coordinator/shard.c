/* The writer's view of one shard: sealing, compare-and-set publication,
 * compaction, rebuild and resync (see shard.h and docs/storage.md
 * section 7).
 *
 * State, all mirroring the published manifest 'man':
 *   index   subject key -> id of the segment holding its live row
 *           (absent: never enrolled, or deleted)
 *   segs    per segment: rows, and rows no longer live (shadowed by a
 *           newer row or deleted), which drive compaction
 *   tombs   subjects whose latest change is a delete while some segment
 *           still holds a row of theirs (the manifest's tombstones)
 *   names   subject key -> subject id of every indexed subject, so a
 *           change whose key is another id's (an FNV-1a collision) is
 *           refused instead of replacing or deleting that subject
 *   buf     changes at offsets >= man->log_offset, one per subject
 * Invariant: outside a call, index/segs/tombs describe exactly 'man'. A
 * call that changed them and then failed to publish marks the shard
 * 'stale', and the next call reloads everything from Redis and the log
 * before doing anything else. */
#define _POSIX_C_SOURCE 200809L
#include "shard.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "crypto/atrest.h"
#include "gallery.h"
#include "keymap.h"
#include "logread.h"
#include "match/gallery.h"
#include "obs/log.h"
#include "obs/metrics.h"
#include "role.h"
#include "store/galdef.h"
#include "store/keys.h"
#include "store/manifest.h"
#include "store/redis.h"
#include "store/segment.h"
#include "store/subjects.h"
#include "wire/decode.h"

#define LOGREAD_TIMEOUT_MS 30000
/* Segment ids: (first log offset of the segment) << 16 | generation. */
#define SEG_GEN_BITS 16
#define SEG_GEN_MASK ((UINT64_C(1) << SEG_GEN_BITS) - 1)
#define COMPACT_MAX_SEGMENTS 32
/* A buffer of at least segment_max_bytes / SEAL_IDLE_MIN_FRACTION that got
 * no change for SEAL_IDLE_MS is sealed without waiting for its age. */
#define SEAL_IDLE_MS 100
#define SEAL_IDLE_MIN_FRACTION 32

/* ------------------------------------------------------------ buffer */

struct bent {
    uint64_t key;
    int64_t offset;
    float scale;
    uint8_t del;
    uint8_t idlen;
    char id[BM_SUBJECT_ID_MAX + 1];
};

struct sbuf {
    struct bent *e;
    uint8_t *rows;          /* cap x tbytes; row i belongs to e[i] */
    size_t n, cap, tbytes;
    struct bm_keymap *idx;  /* key -> slot */
    int64_t est_bytes;      /* blob bytes the upserts would take */
    long long first_ms;     /* when the oldest buffered change arrived */
    long long last_ms;      /* when the newest buffered change arrived */
    int64_t last_offset;
};

static int sbuf_init(struct sbuf *b, size_t tbytes)
{
    memset(b, 0, sizeof *b);
    b->tbytes = tbytes;
    b->idx = bm_keymap_new(1024);
    return b->idx != NULL ? BM_OK : BM_ENOMEM;
}

static void sbuf_clear(struct sbuf *b)
{
    b->n = 0;
    b->est_bytes = 0;
    b->first_ms = 0;
    b->last_ms = 0;
    b->last_offset = -1;
    if (b->idx != NULL)
        bm_keymap_clear(b->idx);
}

static void sbuf_free(struct sbuf *b)
{
    free(b->e);
    free(b->rows);
    bm_keymap_free(b->idx);
    memset(b, 0, sizeof *b);
}

static int64_t row_cost(size_t stride, int int8, size_t idlen)
{
    return (int64_t)(stride + (int8 ? 4 : 0) + 2 + idlen);
}

/* ------------------------------------------------------------ tombstones */

struct tombset {
    struct bm_keymap *idx;  /* key -> slot */
    char **s;
    uint64_t *keys;
    size_t n, cap;
};

static int tomb_add(struct tombset *t, uint64_t key, const char *id, size_t len)
{
    if (bm_keymap_get(t->idx, key, NULL))
        return BM_OK;
    if (t->n == t->cap) {
        size_t nc = t->cap ? t->cap * 2 : 64;
        char **s = realloc(t->s, nc * sizeof *s);
        if (s == NULL)
            return BM_ENOMEM;
        t->s = s;
        uint64_t *k = realloc(t->keys, nc * sizeof *k);
        if (k == NULL)
            return BM_ENOMEM;
        t->keys = k;
        t->cap = nc;
    }
    char *c = malloc(len + 1);
    if (c == NULL || bm_keymap_put(t->idx, key, t->n) != BM_OK) {
        free(c);
        return BM_ENOMEM;
    }
    memcpy(c, id, len);
    c[len] = '\0';
    t->s[t->n] = c;
    t->keys[t->n] = key;
    t->n++;
    return BM_OK;
}

static void tomb_del(struct tombset *t, uint64_t key)
{
    uint64_t slot;
    if (!bm_keymap_get(t->idx, key, &slot))
        return;
    bm_keymap_del(t->idx, key);
    free(t->s[slot]);
    t->n--;
    if (slot != t->n) {
        t->s[slot] = t->s[t->n];
        t->keys[slot] = t->keys[t->n];
        bm_keymap_put(t->idx, t->keys[slot], slot);
    }
}

static void tomb_clear(struct tombset *t)
{
    for (size_t i = 0; i < t->n; i++)
        free(t->s[i]);
    t->n = 0;
    if (t->idx != NULL)
        bm_keymap_clear(t->idx);
}

/* ------------------------------------------------------------ shard */

struct segstat {
    uint64_t id;
    uint32_t rows;
    uint32_t dead;
    uint64_t bytes;
};

struct bm_gshard {
    struct bm_gshard_env env;
    Biomatch__V1__GalleryDefinition *def;
    struct bm_spec spec;
    size_t tbytes, stride;
    int int8;
    char gallery[BM_GALLERY_NAME_MAX + 1];
    uint32_t shard;
    char topic[256];
    char mkey[BM_KEY_MAX];
    struct bm_manifest *man;
    struct bm_keymap *index;
    struct segstat *segs;
    size_t nsegs, capsegs;
    struct tombset tombs;
    struct tombset names;      /* key -> subject id of every indexed subject */
    struct sbuf buf;
    int stale;                 /* state may differ from 'man': reload first */
    long long last_publish_ms;
    long long last_check_ms;
    uint8_t *row;              /* scratch row of tbytes */
    struct bm_gauge *g_version, *g_subjects, *g_segments, *g_tombstones;
    struct bm_counter *c_sealed, *c_rebuilds, *c_compactions, *c_skipped, *c_collisions;
    struct bm_histogram *h_seal;
};

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

static struct segstat *segstat_find(struct bm_gshard *sh, uint64_t id)
{
    for (size_t i = 0; i < sh->nsegs; i++)
        if (sh->segs[i].id == id)
            return &sh->segs[i];
    return NULL;
}

static int segstat_add(struct bm_gshard *sh, uint64_t id, uint32_t rows, uint64_t bytes)
{
    if (sh->nsegs == sh->capsegs) {
        size_t nc = sh->capsegs ? sh->capsegs * 2 : 16;
        struct segstat *s = realloc(sh->segs, nc * sizeof *s);
        if (s == NULL)
            return BM_ENOMEM;
        sh->segs = s;
        sh->capsegs = nc;
    }
    sh->segs[sh->nsegs++] = (struct segstat){id, rows, 0, bytes};
    return BM_OK;
}

static void state_reset(struct bm_gshard *sh)
{
    bm_keymap_clear(sh->index);
    sh->nsegs = 0;
    tomb_clear(&sh->tombs);
    tomb_clear(&sh->names);
}

/* The subject id indexed under 'key' (its length in *len), or NULL. */
static const char *name_get(const struct bm_gshard *sh, uint64_t key, size_t *len)
{
    uint64_t slot;
    if (!bm_keymap_get(sh->names.idx, key, &slot))
        return NULL;
    *len = strlen(sh->names.s[slot]);
    return sh->names.s[slot];
}

/* Record 'id' as the subject indexed under 'key' (replacing a deleted
 * subject's id, the only way a key changes hands). */
static int name_set(struct bm_gshard *sh, uint64_t key, const char *id, size_t len)
{
    size_t have = 0;
    const char *cur = name_get(sh, key, &have);
    if (cur != NULL && have == len && memcmp(cur, id, len) == 0)
        return BM_OK;
    tomb_del(&sh->names, key);
    return tomb_add(&sh->names, key, id, len);
}

static void update_gauges(struct bm_gshard *sh)
{
    bm_gauge_set(sh->g_version, (double)sh->man->version);
    bm_gauge_set(sh->g_subjects, (double)bm_keymap_count(sh->index));
    bm_gauge_set(sh->g_segments, (double)sh->man->nsegments);
    bm_gauge_set(sh->g_tombstones, (double)sh->man->ntombstones);
}

/* Make subject 'sid' ('len' bytes)'s row in segment 'id' the live row of
 * 'key'. BM_OK or BM_ENOMEM. */
static int index_upsert(struct bm_gshard *sh, uint64_t key, uint64_t id, const char *sid,
                        size_t len)
{
    uint64_t old;
    if (bm_keymap_get(sh->index, key, &old)) {
        struct segstat *s = segstat_find(sh, old);
        if (s != NULL)
            s->dead++;
    }
    if (bm_keymap_put(sh->index, key, id) != BM_OK)
        return BM_ENOMEM;
    tomb_del(&sh->tombs, key);
    return name_set(sh, key, sid, len);
}

static int index_delete(struct bm_gshard *sh, uint64_t key, const char *id, size_t len)
{
    uint64_t old;
    if (!bm_keymap_get(sh->index, key, &old))
        return BM_OK; /* no live row: nothing to hide */
    struct segstat *s = segstat_find(sh, old);
    if (s != NULL)
        s->dead++;
    bm_keymap_del(sh->index, key);
    tomb_del(&sh->names, key);
    return tomb_add(&sh->tombs, key, id, len);
}

/* ------------------------------------------------------------ records */

static int buffer_keyed(struct bm_gshard *sh, struct sbuf *b, int64_t offset, uint64_t k,
                        const char *key, size_t keylen, const void *value, size_t valuelen);

/* Parse one log record into buffer 'b'. */
static int buffer_record(struct bm_gshard *sh, struct sbuf *b, int64_t offset,
                         const void *key, size_t keylen, const void *value, size_t valuelen)
{
    if (key == NULL || keylen < 1 || keylen > BM_SUBJECT_ID_MAX) {
        bm_counter_inc(sh->c_skipped);
        BM_LOGF(BM_LOG_WARN, "gallery record without a valid key skipped",
                BM_LF_STR("gallery", sh->gallery), BM_LF_INT("shard", sh->shard),
                BM_LF_INT("offset", offset));
        return BM_OK;
    }
    return buffer_keyed(sh, b, offset, bm_subjects_key(key, keylen), key, keylen, value,
                        valuelen);
}

/* 1 when subject 'id' may not take 'key' because another subject holds
 * it (an FNV-1a collision): a buffered upsert or delete of another id, or
 * (for the shard's own buffer, whose base is the index) another id's live
 * sealed row. An upsert may take over a key whose buffered change is
 * another id's delete: that subject is gone by then. */
static int collides(const struct bm_gshard *sh, const struct sbuf *b, uint64_t k,
                    const char *id, size_t len, int del)
{
    uint64_t slot;
    if (bm_keymap_get(b->idx, k, &slot)) {
        const struct bent *e = &b->e[slot];
        if (e->idlen == len && memcmp(e->id, id, len) == 0)
            return 0;
        return del || !e->del;
    }
    size_t have = 0;
    const char *cur = b == &sh->buf && bm_keymap_get(sh->index, k, NULL)
                          ? name_get(sh, k, &have)
                          : NULL;
    return cur != NULL && (have != len || memcmp(cur, id, len) != 0);
}

/* buffer_record with the key given (tests forge it, see
 * bm_gshard_add_keyed). */
static int buffer_keyed(struct bm_gshard *sh, struct sbuf *b, int64_t offset, uint64_t k,
                        const char *key, size_t keylen, const void *value, size_t valuelen)
{
    char err[256];
    uint64_t slot;
    int have = bm_keymap_get(b->idx, k, &slot);
    if (have && b->e[slot].offset >= offset)
        return BM_OK; /* read twice (resync and group consumer): keep the newer */
    int del = value == NULL;
    if (collides(sh, b, k, key, keylen, del)) {
        /* Refused: applying it would replace or delete another subject.
         * The id stays out of the record (info-level logs carry no
         * subject ids); the offset finds it in the log. */
        bm_counter_inc(sh->c_collisions);
        BM_LOGF(BM_LOG_WARN, "gallery record skipped: subject key collision",
                BM_LF_STR("gallery", sh->gallery), BM_LF_INT("shard", sh->shard),
                BM_LF_INT("offset", offset));
        return BM_OK;
    }
    float scale = 1.0f;
    if (!del) {
        /* Sealed by intake when an at-rest key is configured. */
        const uint8_t *plain = NULL;
        size_t plainlen = 0;
        uint8_t *owned = NULL;
        int orc = bm_atrest_open_record(sh->env.keyring, sh->gallery, sh->shard, key, keylen,
                                        value, valuelen, &plain, &plainlen, &owned, err,
                                        sizeof err);
        if (orc == BM_EUNSUPPORTED || orc == BM_ENOMEM) {
            /* A key this process lacks: skipping would build shards
             * without these subjects. Fail loudly until it is configured. */
            BM_LOGF(BM_LOG_ERROR, "gallery record cannot be opened",
                    BM_LF_STR("gallery", sh->gallery), BM_LF_INT("shard", sh->shard),
                    BM_LF_INT("offset", offset), BM_LF_STR("error", err));
            return orc;
        }
        Biomatch__V1__GalleryChange *ch = NULL;
        if (orc == BM_OK)
            ch = bm_wire_decode_gallery_change(plain, plainlen, BM_WIRE_DEFAULT_MAX_BYTES, err,
                                               sizeof err);
        free(owned);
        if (ch != NULL && bm_gallery_stored_check(&sh->spec, ch->template_, err, sizeof err) ==
                              BM_OK) {
            scale = bm_gallery_template_row(&sh->spec, ch->template_, sh->row);
        } else {
            /* Undecodable, not in storage form, or sealed for another
             * place (altered or moved): reading it again cannot help. */
            bm_wire_free_gallery_change(ch);
            bm_counter_inc(sh->c_skipped);
            BM_LOGF(BM_LOG_WARN, "gallery record not in storage form skipped",
                    BM_LF_STR("gallery", sh->gallery), BM_LF_INT("shard", sh->shard),
                    BM_LF_INT("offset", offset), BM_LF_STR("error", err));
            return BM_OK;
        }
        bm_wire_free_gallery_change(ch);
    }
    if (!have) {
        if (b->n == b->cap) {
            size_t nc = b->cap ? b->cap * 2 : 1024;
            struct bent *e = realloc(b->e, nc * sizeof *e);
            if (e == NULL)
                return BM_ENOMEM;
            b->e = e;
            uint8_t *r = realloc(b->rows, nc * b->tbytes);
            if (r == NULL)
                return BM_ENOMEM;
            b->rows = r;
            b->cap = nc;
        }
        if (bm_keymap_put(b->idx, k, b->n) != BM_OK)
            return BM_ENOMEM;
        slot = b->n++;
        if (b->n == 1)
            b->first_ms = bm_mono_ms();
    } else if (!b->e[slot].del) {
        b->est_bytes -= row_cost(sh->stride, sh->int8, b->e[slot].idlen);
    }
    struct bent *e = &b->e[slot];
    e->key = k;
    e->offset = offset;
    e->scale = scale;
    e->del = (uint8_t)del;
    e->idlen = (uint8_t)keylen;
    memcpy(e->id, key, keylen);
    e->id[keylen] = '\0';
    if (!del) {
        memcpy(b->rows + slot * b->tbytes, sh->row, b->tbytes);
        b->est_bytes += row_cost(sh->stride, sh->int8, keylen);
    }
    if (offset > b->last_offset)
        b->last_offset = offset;
    b->last_ms = bm_mono_ms();
    return BM_OK;
}

int bm_gshard_add(struct bm_gshard *sh, int64_t offset, const void *key, size_t keylen,
                  const void *value, size_t valuelen)
{
    if (offset < sh->man->log_offset)
        return BM_OK; /* already sealed (a replay after a crash or rebuild) */
    return buffer_record(sh, &sh->buf, offset, key, keylen, value, valuelen);
}

int bm_gshard_add_keyed(struct bm_gshard *sh, int64_t offset, uint64_t subject_key,
                        const char *id, size_t idlen, const void *value, size_t valuelen)
{
    if (offset < sh->man->log_offset || id == NULL || idlen < 1 || idlen > BM_SUBJECT_ID_MAX)
        return BM_OK;
    return buffer_keyed(sh, &sh->buf, offset, subject_key, id, idlen, value, valuelen);
}

/* ------------------------------------------------------------ publication */

/* One output segment being assembled. */
struct outseg {
    uint64_t id;
    size_t n;
    const char **ids;
    size_t *lens;
    uint64_t *keys;
    uint8_t *rows;
    float *scales;
};

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
static int write_segment(struct bm_gshard *sh, const struct outseg *o,
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
static int decode_stored(struct bm_gshard *sh, const struct bm_segref *ref, const void *val,
                         size_t len, struct bm_segment **seg, struct bm_subjects *names,
                         char *err, size_t errlen)
{
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
static int cas_publish(struct bm_gshard *sh, uint64_t base, const struct bm_manifest *next,
                       const uint64_t *drop, size_t ndrop, char *err, size_t errlen)
{
    uint8_t *enc = NULL;
    size_t enclen = 0;
    int rc = bm_manifest_encode(next, &enc, &enclen, err, errlen);
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

static void outseg_free(struct outseg *o)
{
    free(o->ids);
    free(o->lens);
    free(o->keys);
    free(o->rows);
    free(o->scales);
    memset(o, 0, sizeof *o);
}

static int outseg_alloc(struct outseg *o, size_t cap, size_t tbytes)
{
    memset(o, 0, sizeof *o);
    o->ids = calloc(cap ? cap : 1, sizeof *o->ids);
    o->lens = calloc(cap ? cap : 1, sizeof *o->lens);
    o->keys = calloc(cap ? cap : 1, sizeof *o->keys);
    o->rows = malloc((cap ? cap : 1) * tbytes);
    o->scales = calloc(cap ? cap : 1, sizeof *o->scales);
    if (o->ids == NULL || o->lens == NULL || o->keys == NULL || o->rows == NULL ||
        o->scales == NULL) {
        outseg_free(o);
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
 * 'base' is the manifest built upon (sh->man, or the stored one for a
 * rebuild). On success sh->man is the published manifest. */
static int publish(struct bm_gshard *sh, struct sbuf *b, int replace, struct bm_manifest *base,
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
        state_reset(sh);
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
            int64_t c = row_cost(sh->stride, sh->int8, b->e[ord[j].slot].idlen);
            if (j > i && bytes + c > limit)
                break;
            bytes += c;
            j++;
        }
        if ((rc = outseg_alloc(&o, j - i, sh->tbytes)) != BM_OK) {
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
        if ((rc = write_segment(sh, &o, base, replace, &refs[nrefs], err, errlen)) != BM_OK)
            goto out;
        if ((rc = segstat_add(sh, o.id, (uint32_t)o.n, refs[nrefs].bytes)) != BM_OK)
            goto out;
        nrefs++;
        for (size_t r = 0; r < o.n; r++)
            if ((rc = index_upsert(sh, o.keys[r], o.id, o.ids[r], o.lens[r])) != BM_OK) {
                bm_seterr(err, errlen, rc, "publish: out of memory");
                goto out;
            }
        outseg_free(&o);
        i = j;
    }
    /* Deletes. */
    for (size_t k = 0; k < b->n; k++)
        if (b->e[k].del && (rc = index_delete(sh, b->e[k].key, b->e[k].id, b->e[k].idlen)) != BM_OK)
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
    if ((rc = cas_publish(sh, base->version, next, cas_drop, ncas_drop, err, errlen)) != BM_OK)
        goto out;
    if (base != sh->man)
        bm_manifest_free(base);
    bm_manifest_free(sh->man);
    sh->man = next;
    next = NULL;
    sh->stale = 0;
    sh->last_publish_ms = bm_mono_ms();
    bm_counter_add(sh->c_sealed, nrefs);
    bm_histogram_observe(sh->h_seal, (double)(sh->last_publish_ms - t0) / 1000.0);
    update_gauges(sh);
out:
    outseg_free(&o);
    bm_manifest_free(next);
    free(ord);
    free(refs);
    free(drop);
    free(cas_drop);
    free(tombs);
    return rc;
}

/* ------------------------------------------------------------ load / rebuild */

struct readctx {
    struct bm_gshard *sh;
    struct sbuf *b;
};

static int on_record(int64_t offset, const void *key, size_t keylen, const void *value,
                     size_t valuelen, void *opaque)
{
    struct readctx *rc = opaque;
    return buffer_record(rc->sh, rc->b, offset, key, keylen, value, valuelen);
}

/* Read the stored manifest: BM_OK with *m, BM_ENOTFOUND, or an error. */
static int read_manifest(struct bm_gshard *sh, struct bm_manifest **m, char *err, size_t errlen)
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
    return rc;
}

/* Rebuild the shard from its whole log into fresh segments. */
static int rebuild(struct bm_gshard *sh, const char *why, char *err, size_t errlen)
{
    BM_LOGF(BM_LOG_INFO, "rebuilding shard from the gallery log",
            BM_LF_STR("gallery", sh->gallery), BM_LF_INT("shard", sh->shard),
            BM_LF_STR("reason", why));
    bm_counter_inc(sh->c_rebuilds);
    long long t0 = bm_mono_ms();
    struct sbuf rb;
    int rc = sbuf_init(&rb, sh->tbytes);
    if (rc != BM_OK)
        return bm_seterr(err, errlen, rc, "rebuild: out of memory");
    sbuf_clear(&rb);
    struct readctx rctx = {sh, &rb};
    int64_t end = 0;
    rc = bm_logread(sh->env.bus, sh->topic, (int32_t)sh->shard, 0, LOGREAD_TIMEOUT_MS,
                    on_record, &rctx, &end, err, errlen);
    if (rc == BM_OK) {
        struct bm_manifest *base = NULL;
        rc = read_manifest(sh, &base, err, errlen);
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
            rc = publish(sh, &rb, 1, base, end, err, errlen);
            if (rc != BM_OK && base != sh->man)
                bm_manifest_free(base);
        }
    }
    sbuf_free(&rb);
    if (rc == BM_OK) {
        sbuf_clear(&sh->buf); /* everything buffered was below 'end' */
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
    state_reset(sh);
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
        rc = decode_stored(sh, ref, blob, len, &seg, ids, err, errlen);
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
        rc = segstat_add(sh, ref->id, ref->count, ref->bytes);
        size_t n = bm_segment_count(seg);
        for (size_t r = 0; r < n && rc == BM_OK; r++) {
            uint64_t key = bm_segment_row_id(seg, r);
            size_t idlen = 0;
            const char *sid = bm_subjects_get(ids, key, &idlen);
            rc = sid != NULL ? index_upsert(sh, key, ref->id, sid, idlen) : BM_EPROTO;
        }
        bm_segment_free(seg);
        bm_subjects_free(ids);
        if (rc != BM_OK)
            return bm_seterr(err, errlen, rc, "segment %llu: indexing failed",
                             (unsigned long long)ref->id);
    }
    for (size_t t = 0; t < m->ntombstones; t++) {
        size_t len = strlen(m->tombstones[t]);
        int rc = index_delete(sh, bm_subjects_key(m->tombstones[t], len), m->tombstones[t], len);
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
static int sync_shard(struct bm_gshard *sh, char *err, size_t errlen)
{
    struct bm_manifest *m = NULL;
    sbuf_clear(&sh->buf);
    int rc = read_manifest(sh, &m, err, errlen);
    if (rc == BM_ENOTFOUND) {
        rc = rebuild(sh, "manifest missing", err, errlen);
    } else if (rc == BM_OK) {
        rc = load_index(sh, m, err, errlen);
        if (rc == BM_ENOTFOUND) {
            bm_manifest_free(m);
            char why[300];
            snprintf(why, sizeof why, "%s", err);
            rc = rebuild(sh, why, err, errlen);
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
        update_gauges(sh);
    return rc;
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
    size_t len = 0;
    uint8_t *enc = bm_wire_encode(&def->base, &len);
    int rc = BM_ENOMEM;
    if (enc != NULL)
        sh->def = bm_galdef_decode(enc, len, &rc, err, errlen);
    free(enc);
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
        sbuf_init(&sh->buf, sh->tbytes) != BM_OK) {
        bm_seterr(err, errlen, BM_ENOMEM, "shard: out of memory");
        goto fail;
    }
    sbuf_clear(&sh->buf);
    register_metrics(sh, err, errlen);
    if (sync_shard(sh, err, errlen) != BM_OK)
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
    tomb_clear(&sh->tombs);
    bm_keymap_free(sh->tombs.idx);
    free(sh->tombs.s);
    free(sh->tombs.keys);
    tomb_clear(&sh->names);
    bm_keymap_free(sh->names.idx);
    free(sh->names.s);
    free(sh->names.keys);
    sbuf_free(&sh->buf);
    free(sh->row);
    free(sh);
}

int bm_gshard_seal(struct bm_gshard *sh)
{
    char err[512];
    if (sh->stale && sync_shard(sh, err, sizeof err) != BM_OK) {
        BM_LOGF(BM_LOG_ERROR, "shard resync failed", BM_LF_STR("gallery", sh->gallery),
                BM_LF_INT("shard", sh->shard), BM_LF_STR("error", err));
        return BM_EIO;
    }
    if (sh->buf.n == 0)
        return BM_OK;
    int rc = publish(sh, &sh->buf, 0, sh->man, 0, err, sizeof err);
    if (rc == BM_OK) {
        sbuf_clear(&sh->buf);
        return BM_OK;
    }
    BM_LOGF(rc == BM_ECONFLICT ? BM_LOG_WARN : BM_LOG_ERROR, "seal not published; resyncing",
            BM_LF_STR("gallery", sh->gallery), BM_LF_INT("shard", sh->shard),
            BM_LF_STR("error", err));
    /* The buffer is not lost: resync re-reads the log from log_offset. */
    if (sync_shard(sh, err, sizeof err) != BM_OK)
        BM_LOGF(BM_LOG_ERROR, "shard resync failed", BM_LF_STR("gallery", sh->gallery),
                BM_LF_INT("shard", sh->shard), BM_LF_STR("error", err));
    return rc;
}

/* ------------------------------------------------------------ compaction */

static int compact_worthwhile(const struct bm_gshard *sh, long long now_ms)
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
    if (names == NULL || outseg_alloc(&all, live, sh->tbytes) != BM_OK) {
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
            rc = decode_stored(sh, ref, blob, len, &seg, names, err, sizeof err);
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
            int64_t c = row_cost(sh->stride, sh->int8, all.lens[r]);
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
                int64_t c = row_cost(sh->stride, sh->int8, all.lens[j]);
                if (j > r && bytes + c > limit)
                    break;
                bytes += c;
                j++;
            }
            struct outseg o = {newest + 1 + nrefs, j - r, all.ids + r, all.lens + r,
                               all.keys + r, all.rows + r * sh->tbytes, all.scales + r};
            if ((rc = write_segment(sh, &o, sh->man, 0, &refs[nrefs], err, sizeof err)) !=
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
    rc = cas_publish(sh, sh->man->version, next, drop, sh->man->nsegments, err, sizeof err);
    if (rc != BM_OK) {
        sh->stale = rc == BM_ECONFLICT; /* someone else published: reload */
        goto out;
    }
    /* Published: the state now mirrors 'next'. */
    size_t before = sh->man->nsegments, tombs_before = sh->tombs.n;
    state_reset(sh);
    size_t r0 = 0;
    for (size_t s = 0; s < nrefs; s++) {
        segstat_add(sh, refs[s].id, refs[s].count, refs[s].bytes);
        for (size_t r = 0; r < refs[s].count; r++)
            if (bm_keymap_put(sh->index, all.keys[r0 + r], refs[s].id) != BM_OK ||
                name_set(sh, all.keys[r0 + r], all.ids[r0 + r], all.lens[r0 + r]) != BM_OK)
                sh->stale = 1; /* out of memory: reload before the next change */
        r0 += refs[s].count;
    }
    bm_manifest_free(sh->man);
    sh->man = next;
    next = NULL;
    bm_counter_inc(sh->c_compactions);
    bm_counter_add(sh->c_sealed, nrefs);
    update_gauges(sh);
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
    outseg_free(&all);
    bm_subjects_free(names);
    return rc;
}

/* ------------------------------------------------------------ checks */

int bm_gshard_check(struct bm_gshard *sh, long long now_ms)
{
    char err[512];
    struct bm_redis *r = sh->env.redis;
    sh->last_check_ms = now_ms;
    if (sh->stale) {
        int rc = sync_shard(sh, err, sizeof err);
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
    int rc = read_manifest(sh, &m, err, sizeof err);
    if (rc == BM_ENOTFOUND) {
        sbuf_clear(&sh->buf);
        rc = sync_shard(sh, err, sizeof err);
        goto done;
    }
    if (rc != BM_OK)
        goto done;
    uint64_t version = m->version;
    bm_manifest_free(m);
    if (version != sh->man->version) {
        BM_LOGF(BM_LOG_WARN, "manifest changed under us; resyncing",
                BM_LF_STR("gallery", sh->gallery), BM_LF_INT("shard", sh->shard),
                BM_LF_INT("ours", sh->man->version), BM_LF_INT("stored", version));
        rc = sync_shard(sh, err, sizeof err);
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
            rc = rebuild(sh, "segment missing", err, sizeof err);
            if (rc != BM_OK)
                sh->stale = 1;
            goto done;
        }
    }
    if (rc == BM_OK && compact_worthwhile(sh, now_ms))
        rc = bm_gshard_compact(sh);
    return rc;
done:
    if (rc != BM_OK)
        BM_LOGF(BM_LOG_ERROR, "shard check failed", BM_LF_STR("gallery", sh->gallery),
                BM_LF_INT("shard", sh->shard), BM_LF_STR("error", err));
    return rc;
}
