/* Shard manifest codec and version arithmetic (see manifest.h).
 *
 * The in-memory form keeps two orders the protobuf does not promise:
 * segments sorted by id and tombstones sorted (strcmp) without duplicates.
 * Both are restored on decode, so "next" and "diff" are linear merges and
 * encoding a decoded manifest is canonical (same manifest, same bytes). */
#include "store/manifest.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/rand.h>

#include "biomatch.pb-c.h"
#include "store/subjects.h"

static int oom(char *err, size_t errlen)
{
    return bm_seterr(err, errlen, BM_ENOMEM, "manifest: out of memory");
}

static char *dupstr(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d != NULL)
        memcpy(d, s, n);
    return d;
}

static int cmp_segref(const void *a, const void *b)
{
    uint64_t x = ((const struct bm_segref *)a)->id, y = ((const struct bm_segref *)b)->id;
    return x < y ? -1 : x > y;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int check_tombstone(const char *t, char *err, size_t errlen)
{
    size_t n = t != NULL ? strlen(t) : 0;
    if (n == 0 || n > BM_SUBJECT_ID_MAX)
        return bm_seterr(err, errlen, BM_EINVAL,
                         "manifest: tombstone must be 1..%d bytes (got %zu)",
                         BM_SUBJECT_ID_MAX, n);
    return BM_OK;
}

static int check_key_id(const char *k, char *err, size_t errlen)
{
    if (k != NULL && strlen(k) > BM_KEY_ID_MAX)
        return bm_seterr(err, errlen, BM_EINVAL, "manifest: key id over %d bytes",
                         BM_KEY_ID_MAX);
    return BM_OK;
}

struct bm_manifest *bm_manifest_new(const char *gallery, uint32_t shard, char *err,
                                    size_t errlen)
{
    if (bm_key_check_gallery(gallery, err, errlen) != BM_OK)
        return NULL;
    struct bm_manifest *m = calloc(1, sizeof *m);
    if (m == NULL) {
        oom(err, errlen);
        return NULL;
    }
    memcpy(m->gallery, gallery, strlen(gallery) + 1);
    m->shard = shard;
    if (bm_manifest_new_epoch(m, err, errlen) != BM_OK) {
        free(m);
        return NULL;
    }
    return m;
}

int bm_manifest_new_epoch(struct bm_manifest *m, char *err, size_t errlen)
{
    if (RAND_bytes(m->epoch, (int)sizeof m->epoch) != 1)
        return bm_seterr(err, errlen, BM_EIO, "manifest: no random bytes for an epoch");
    return BM_OK;
}

int bm_manifest_same_epoch(const struct bm_manifest *a, const struct bm_manifest *b)
{
    return memcmp(a->epoch, b->epoch, sizeof a->epoch) == 0;
}

void bm_manifest_free(struct bm_manifest *m)
{
    if (m == NULL)
        return;
    for (size_t i = 0; i < m->ntombstones; i++)
        free(m->tombstones[i]);
    free(m->tombstones);
    free(m->segments);
    free(m);
}

/* Set m's tombstones to copies of 'src' (any order, duplicates allowed),
 * sorted and deduplicated. On failure m's tombstones are empty. */
static int set_tombstones(struct bm_manifest *m, const char *const *src, size_t n,
                          char *err, size_t errlen)
{
    m->tombstones = NULL;
    m->ntombstones = 0;
    if (n == 0)
        return BM_OK;
    char **t = calloc(n, sizeof *t);
    if (t == NULL)
        return oom(err, errlen);
    for (size_t i = 0; i < n; i++) {
        int rc = check_tombstone(src[i], err, errlen);
        if (rc == BM_OK && (t[i] = dupstr(src[i])) == NULL)
            rc = oom(err, errlen);
        if (rc != BM_OK) {
            for (size_t j = 0; j < i; j++)
                free(t[j]);
            free(t);
            return rc;
        }
    }
    qsort(t, n, sizeof *t, cmp_str);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (k > 0 && strcmp(t[k - 1], t[i]) == 0)
            free(t[i]);
        else
            t[k++] = t[i];
    }
    m->tombstones = t;
    m->ntombstones = k;
    return BM_OK;
}

struct bm_manifest *bm_manifest_dup(const struct bm_manifest *m, char *err, size_t errlen)
{
    struct bm_manifest *d = malloc(sizeof *d);
    if (d == NULL) {
        oom(err, errlen);
        return NULL;
    }
    *d = *m;
    d->segments = NULL;
    if (m->nsegments > 0) {
        d->segments = malloc(m->nsegments * sizeof *d->segments);
        if (d->segments == NULL) {
            free(d);
            oom(err, errlen);
            return NULL;
        }
        memcpy(d->segments, m->segments, m->nsegments * sizeof *d->segments);
    }
    if (set_tombstones(d, (const char *const *)m->tombstones, m->ntombstones, err,
                       errlen) != BM_OK) {
        free(d->segments);
        free(d);
        return NULL;
    }
    return d;
}

/* --------------------------------------------------------------- codec */

int bm_manifest_decode(const uint8_t *buf, size_t len, size_t max_len,
                       struct bm_manifest **out, char *err, size_t errlen)
{
    *out = NULL;
    if (max_len == 0)
        max_len = BM_MANIFEST_MAX_BYTES;
    if (len > max_len)
        return bm_seterr(err, errlen, BM_ERANGE, "manifest: %zu bytes over the limit of %zu",
                         len, max_len);
    if (buf == NULL && len > 0)
        return bm_seterr(err, errlen, BM_EINVAL, "manifest: no bytes");
    Biomatch__V1__ShardManifest *pb =
        biomatch__v1__shard_manifest__unpack(NULL, len, buf != NULL ? buf : (const uint8_t *)"");
    if (pb == NULL)
        return bm_seterr(err, errlen, BM_EPROTO, "manifest: not a valid ShardManifest");

    int rc = BM_OK;
    struct bm_manifest *m = NULL;
    if (bm_key_check_gallery(pb->gallery, err, errlen) != BM_OK) {
        rc = bm_seterr(err, errlen, BM_EPROTO, "manifest: bad gallery name");
        goto done;
    }
    m = bm_manifest_new(pb->gallery, pb->shard, err, errlen);
    if (m == NULL) {
        rc = BM_ENOMEM;
        goto done;
    }
    m->version = pb->version;
    m->log_offset = pb->log_offset;
    m->subjects = pb->subjects;
    m->updated_unix_ms = pb->updated_unix_ms;
    /* An empty epoch (an older writer) stays all zero. */
    memset(m->epoch, 0, sizeof m->epoch);
    if (pb->epoch.len != 0 && pb->epoch.len != sizeof m->epoch) {
        rc = bm_seterr(err, errlen, BM_EPROTO, "manifest: epoch is %zu bytes, not %d",
                       pb->epoch.len, BM_MANIFEST_EPOCH_BYTES);
        goto done;
    }
    if (pb->epoch.len != 0)
        memcpy(m->epoch, pb->epoch.data, sizeof m->epoch);
    if ((pb->mac.len != 0 && pb->mac.len != sizeof m->mac) ||
        (pb->mac.len == 0) != (pb->mac_key_id == NULL || pb->mac_key_id[0] == '\0') ||
        check_key_id(pb->mac_key_id, err, errlen) != BM_OK) {
        rc = bm_seterr(err, errlen, BM_EPROTO, "manifest: malformed MAC or MAC key id");
        goto done;
    }
    if (pb->mac.len != 0) {
        memcpy(m->mac, pb->mac.data, sizeof m->mac);
        memcpy(m->mac_key_id, pb->mac_key_id, strlen(pb->mac_key_id) + 1);
        m->has_mac = 1;
    }
    if (pb->n_segments > 0) {
        m->segments = calloc(pb->n_segments, sizeof *m->segments);
        if (m->segments == NULL) {
            rc = oom(err, errlen);
            goto done;
        }
    }
    for (size_t i = 0; i < pb->n_segments; i++) {
        const Biomatch__V1__SegmentRef *s = pb->segments[i];
        struct bm_segref *r = &m->segments[i];
        if (s->sha256.len != 32) {
            rc = bm_seterr(err, errlen, BM_EPROTO,
                           "manifest: segment %llu digest is %zu bytes, not 32",
                           (unsigned long long)s->id, s->sha256.len);
            goto done;
        }
        if (check_key_id(s->key_id, err, errlen) != BM_OK) {
            rc = BM_EPROTO;
            goto done;
        }
        r->id = s->id;
        r->count = s->count;
        r->bytes = s->bytes;
        memcpy(r->sha256, s->sha256.data, 32);
        if (s->key_id != NULL)
            memcpy(r->key_id, s->key_id, strlen(s->key_id) + 1);
    }
    m->nsegments = pb->n_segments;
    if (m->nsegments > 1)
        qsort(m->segments, m->nsegments, sizeof *m->segments, cmp_segref);
    for (size_t i = 1; i < m->nsegments; i++) {
        if (m->segments[i].id == m->segments[i - 1].id) {
            rc = bm_seterr(err, errlen, BM_EPROTO, "manifest: segment %llu listed twice",
                           (unsigned long long)m->segments[i].id);
            goto done;
        }
    }
    rc = set_tombstones(m, (const char *const *)pb->tombstones, pb->n_tombstones, err,
                        errlen);
    if (rc == BM_EINVAL)
        rc = BM_EPROTO;
done:
    biomatch__v1__shard_manifest__free_unpacked(pb, NULL);
    if (rc != BM_OK) {
        bm_manifest_free(m);
        return rc;
    }
    *out = m;
    return BM_OK;
}

int bm_manifest_encode(const struct bm_manifest *m, uint8_t **out, size_t *len,
                       char *err, size_t errlen)
{
    *out = NULL;
    *len = 0;
    int rc = bm_key_check_gallery(m->gallery, err, errlen);
    if (rc != BM_OK)
        return rc;
    for (size_t i = 0; i < m->nsegments; i++) {
        if (i > 0 && m->segments[i].id <= m->segments[i - 1].id)
            return bm_seterr(err, errlen, BM_EINVAL,
                             "manifest: segments not sorted by unique id");
        if (memchr(m->segments[i].key_id, 0, sizeof m->segments[i].key_id) == NULL)
            return bm_seterr(err, errlen, BM_EINVAL, "manifest: key id not terminated");
    }
    for (size_t i = 0; i < m->ntombstones; i++)
        if ((rc = check_tombstone(m->tombstones[i], err, errlen)) != BM_OK)
            return rc;
    if (m->has_mac && (memchr(m->mac_key_id, 0, sizeof m->mac_key_id) == NULL ||
                       m->mac_key_id[0] == '\0'))
        return bm_seterr(err, errlen, BM_EINVAL, "manifest: MAC without a key id");

    Biomatch__V1__ShardManifest pb = BIOMATCH__V1__SHARD_MANIFEST__INIT;
    Biomatch__V1__SegmentRef *refs = NULL;
    Biomatch__V1__SegmentRef **ptrs = NULL;
    if (m->nsegments > 0) {
        refs = calloc(m->nsegments, sizeof *refs);
        ptrs = calloc(m->nsegments, sizeof *ptrs);
        if (refs == NULL || ptrs == NULL) {
            free(refs);
            free(ptrs);
            return oom(err, errlen);
        }
    }
    for (size_t i = 0; i < m->nsegments; i++) {
        const struct bm_segref *s = &m->segments[i];
        biomatch__v1__segment_ref__init(&refs[i]);
        refs[i].id = s->id;
        refs[i].count = s->count;
        refs[i].bytes = s->bytes;
        refs[i].sha256.data = (uint8_t *)s->sha256;  /* protobuf-c only reads it */
        refs[i].sha256.len = 32;
        refs[i].key_id = (char *)s->key_id;
        ptrs[i] = &refs[i];
    }
    pb.gallery = (char *)m->gallery;
    pb.shard = m->shard;
    pb.version = m->version;
    pb.log_offset = m->log_offset;
    pb.n_segments = m->nsegments;
    pb.segments = ptrs;
    pb.n_tombstones = m->ntombstones;
    pb.tombstones = m->tombstones;
    pb.subjects = m->subjects;
    pb.updated_unix_ms = m->updated_unix_ms;
    static const uint8_t zero_epoch[BM_MANIFEST_EPOCH_BYTES];
    if (memcmp(m->epoch, zero_epoch, sizeof zero_epoch) != 0) {
        pb.epoch.data = (uint8_t *)m->epoch;  /* protobuf-c only reads it */
        pb.epoch.len = sizeof m->epoch;
    }
    if (m->has_mac) {
        pb.mac.data = (uint8_t *)m->mac;
        pb.mac.len = sizeof m->mac;
        pb.mac_key_id = (char *)m->mac_key_id;
    }

    size_t n = biomatch__v1__shard_manifest__get_packed_size(&pb);
    uint8_t *b = malloc(n > 0 ? n : 1);
    if (b == NULL) {
        free(refs);
        free(ptrs);
        return oom(err, errlen);
    }
    *len = biomatch__v1__shard_manifest__pack(&pb, b);
    *out = b;
    free(refs);
    free(ptrs);
    return BM_OK;
}

/* ------------------------------------------------------ version arithmetic */

static int in_ids(const uint64_t *ids, size_t n, uint64_t id)
{
    for (size_t i = 0; i < n; i++)
        if (ids[i] == id)
            return 1;
    return 0;
}

int bm_manifest_next(const struct bm_manifest *old, const struct bm_manifest_change *c,
                     struct bm_manifest **out, char *err, size_t errlen)
{
    *out = NULL;
    if (old == NULL || c == NULL || (c->nadd > 0 && c->add == NULL) ||
        (c->ndrop > 0 && c->drop == NULL))
        return bm_seterr(err, errlen, BM_EINVAL, "manifest: missing argument");
    if (c->log_offset < old->log_offset)
        return bm_seterr(err, errlen, BM_EINVAL,
                         "manifest: log offset %lld goes back from %lld",
                         (long long)c->log_offset, (long long)old->log_offset);
    if (old->version == UINT64_MAX)
        return bm_seterr(err, errlen, BM_ERANGE, "manifest: version overflow");
    for (size_t i = 0; i < c->ndrop; i++)
        if (bm_manifest_segment(old, c->drop[i]) == NULL)
            return bm_seterr(err, errlen, BM_ENOTFOUND,
                             "manifest: segment %llu to drop is not in version %llu",
                             (unsigned long long)c->drop[i],
                             (unsigned long long)old->version);
    for (size_t i = 0; i < c->nadd; i++) {
        int rc = check_key_id(c->add[i].key_id, err, errlen);
        if (rc != BM_OK)
            return rc;
        if (memchr(c->add[i].key_id, 0, sizeof c->add[i].key_id) == NULL)
            return bm_seterr(err, errlen, BM_EINVAL, "manifest: key id not terminated");
        /* Re-adding an id that this change also drops is a replacement. */
        if (bm_manifest_segment(old, c->add[i].id) != NULL &&
            !in_ids(c->drop, c->ndrop, c->add[i].id))
            return bm_seterr(err, errlen, BM_ECONFLICT,
                             "manifest: segment %llu already in version %llu",
                             (unsigned long long)c->add[i].id,
                             (unsigned long long)old->version);
    }

    struct bm_manifest *m = malloc(sizeof *m);
    if (m == NULL)
        return oom(err, errlen);
    *m = *old;
    m->segments = NULL;
    m->nsegments = 0;
    m->tombstones = NULL;
    m->ntombstones = 0;
    m->version = old->version + 1;
    m->has_mac = 0; /* the MAC was old's: the caller signs the new content */
    memset(m->mac, 0, sizeof m->mac);
    m->mac_key_id[0] = '\0';
    m->log_offset = c->log_offset;
    m->subjects = c->subjects;
    m->updated_unix_ms = c->updated_unix_ms;

    size_t cap = old->nsegments + c->nadd;
    if (cap > 0 && (m->segments = malloc(cap * sizeof *m->segments)) == NULL) {
        bm_manifest_free(m);
        return oom(err, errlen);
    }
    for (size_t i = 0; i < old->nsegments; i++)
        if (!in_ids(c->drop, c->ndrop, old->segments[i].id))
            m->segments[m->nsegments++] = old->segments[i];
    for (size_t i = 0; i < c->nadd; i++)
        m->segments[m->nsegments++] = c->add[i];
    if (m->nsegments > 1)
        qsort(m->segments, m->nsegments, sizeof *m->segments, cmp_segref);
    for (size_t i = 1; i < m->nsegments; i++) {
        if (m->segments[i].id == m->segments[i - 1].id) {
            unsigned long long id = (unsigned long long)m->segments[i].id;
            bm_manifest_free(m);
            return bm_seterr(err, errlen, BM_ECONFLICT, "manifest: segment %llu added twice",
                             id);
        }
    }
    int rc = c->set_tombstones
                 ? set_tombstones(m, c->tombstones, c->ntombstones, err, errlen)
                 : set_tombstones(m, (const char *const *)old->tombstones,
                                  old->ntombstones, err, errlen);
    if (rc != BM_OK) {
        bm_manifest_free(m);
        return rc;
    }
    *out = m;
    return BM_OK;
}

const struct bm_segref *bm_manifest_segment(const struct bm_manifest *m, uint64_t id)
{
    size_t lo = 0, hi = m->nsegments;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (m->segments[mid].id < id)
            lo = mid + 1;
        else if (m->segments[mid].id > id)
            hi = mid;
        else
            return &m->segments[mid];
    }
    return NULL;
}

static int same_segment(const struct bm_segref *a, const struct bm_segref *b)
{
    return a->count == b->count && a->bytes == b->bytes &&
           memcmp(a->sha256, b->sha256, 32) == 0 && strcmp(a->key_id, b->key_id) == 0;
}

void bm_manifest_diff_free(struct bm_manifest_diff *d)
{
    if (d == NULL)
        return;
    free(d->added);
    free(d->removed);
    free(d->new_tombstones);
    free(d->gone_tombstones);
    memset(d, 0, sizeof *d);
}

int bm_manifest_diff(const struct bm_manifest *from, const struct bm_manifest *to,
                     struct bm_manifest_diff *d, char *err, size_t errlen)
{
    memset(d, 0, sizeof *d);
    if (to == NULL)
        return bm_seterr(err, errlen, BM_EINVAL, "manifest: nothing to diff against");
    if (from != NULL && (strcmp(from->gallery, to->gallery) != 0 || from->shard != to->shard))
        return bm_seterr(err, errlen, BM_EINVAL, "manifest: diff across shards (%s:%u, %s:%u)",
                         from->gallery, from->shard, to->gallery, to->shard);
    /* Another epoch: another history, so nothing of 'from' carries over
     * and the versions do not compare. */
    int fresh = from != NULL && !bm_manifest_same_epoch(from, to);
    if (from != NULL && !fresh && to->version < from->version)
        return bm_seterr(err, errlen, BM_EINVAL, "manifest: version %llu is older than %llu",
                         (unsigned long long)to->version,
                         (unsigned long long)from->version);
    size_t nf = from != NULL ? from->nsegments : 0;
    size_t tf = from != NULL ? from->ntombstones : 0;
    d->added = malloc((to->nsegments ? to->nsegments : 1) * sizeof *d->added);
    d->removed = malloc((nf ? nf : 1) * sizeof *d->removed);
    d->new_tombstones = malloc((to->ntombstones ? to->ntombstones : 1) *
                               sizeof *d->new_tombstones);
    d->gone_tombstones = malloc((tf ? tf : 1) * sizeof *d->gone_tombstones);
    if (d->added == NULL || d->removed == NULL || d->new_tombstones == NULL ||
        d->gone_tombstones == NULL) {
        bm_manifest_diff_free(d);
        return oom(err, errlen);
    }
    if (fresh) {
        for (size_t i = 0; i < nf; i++)
            d->removed[d->nremoved++] = from->segments[i].id;
        for (size_t j = 0; j < to->nsegments; j++)
            d->added[d->nadded++] = &to->segments[j];
        for (size_t i = 0; i < tf; i++)
            d->gone_tombstones[d->ngone_tombstones++] = from->tombstones[i];
        for (size_t j = 0; j < to->ntombstones; j++)
            d->new_tombstones[d->nnew_tombstones++] = to->tombstones[j];
        return BM_OK;
    }
    /* Both segment lists and both tombstone lists are sorted: merge. */
    size_t i = 0, j = 0;
    while (i < nf || j < to->nsegments) {
        const struct bm_segref *a = i < nf ? &from->segments[i] : NULL;
        const struct bm_segref *b = j < to->nsegments ? &to->segments[j] : NULL;
        if (b == NULL || (a != NULL && a->id < b->id)) {
            d->removed[d->nremoved++] = a->id;
            i++;
        } else if (a == NULL || b->id < a->id) {
            d->added[d->nadded++] = b;
            j++;
        } else {
            if (!same_segment(a, b)) {
                d->removed[d->nremoved++] = a->id;
                d->added[d->nadded++] = b;
            }
            i++;
            j++;
        }
    }
    i = 0;
    j = 0;
    while (i < tf || j < to->ntombstones) {
        int c = i >= tf ? 1 : j >= to->ntombstones ? -1
                                : strcmp(from->tombstones[i], to->tombstones[j]);
        if (c < 0)
            d->gone_tombstones[d->ngone_tombstones++] = from->tombstones[i++];
        else if (c > 0)
            d->new_tombstones[d->nnew_tombstones++] = to->tombstones[j++];
        else {
            i++;
            j++;
        }
    }
    return BM_OK;
}

int bm_manifest_tombstone_keys(const struct bm_manifest *m, uint64_t **keys, char *err,
                               size_t errlen)
{
    *keys = NULL;
    if (m->ntombstones == 0)
        return BM_OK;
    uint64_t *k = malloc(m->ntombstones * sizeof *k);
    if (k == NULL)
        return oom(err, errlen);
    for (size_t i = 0; i < m->ntombstones; i++)
        k[i] = bm_subjects_key(m->tombstones[i], strlen(m->tombstones[i]));
    *keys = k;
    return BM_OK;
}

/* Kept in C so every writer runs the same bytes (EVALSHA of one digest). */
const char bm_manifest_cas_lua[] =
    "local function version_of(b)\n"
    "  local i, n = 1, #b\n"
    "  local function varint()\n"
    "    local v, mul = 0, 1\n"
    "    while true do\n"
    "      if i > n or mul > 2^63 then return nil end\n"
    "      local c = string.byte(b, i)\n"
    "      i = i + 1\n"
    "      v = v + (c % 128) * mul\n"
    "      if c < 128 then return v end\n"
    "      mul = mul * 128\n"
    "    end\n"
    "  end\n"
    "  while i <= n do\n"
    "    local tag = varint()\n"
    "    if not tag then return nil end\n"
    "    local field, wt = math.floor(tag / 8), tag % 8\n"
    "    if wt == 0 then\n"
    "      local v = varint()\n"
    "      if not v then return nil end\n"
    "      if field == 3 then return v end\n"
    "    elseif wt == 1 then i = i + 8\n"
    "    elseif wt == 2 then\n"
    "      local l = varint()\n"
    "      if not l then return nil end\n"
    "      i = i + l\n"
    "    elseif wt == 5 then i = i + 4\n"
    "    else return nil end\n"
    "  end\n"
    "  if i ~= n + 1 then return nil end\n"
    "  return 0\n"
    "end\n"
    "local have = 0\n"
    "local cur = redis.call('GET', KEYS[1])\n"
    "if cur then\n"
    "  have = version_of(cur)\n"
    "  if not have then return redis.error_reply('BM stored manifest is unreadable') end\n"
    "end\n"
    "local base = tonumber(ARGV[1])\n"
    "if have ~= base then return 0 end\n"
    "if version_of(ARGV[2]) ~= base + 1 then\n"
    "  return redis.error_reply('BM new manifest version must be base + 1')\n"
    "end\n"
    "redis.call('SET', KEYS[1], ARGV[2])\n"
    "local grace = tonumber(ARGV[3]) or 0\n"
    "for k = 2, #KEYS do\n"
    "  if grace > 0 then redis.call('PEXPIRE', KEYS[k], grace)\n"
    "  else redis.call('DEL', KEYS[k]) end\n"
    "end\n"
    "return 1\n";
