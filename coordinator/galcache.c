/* Cache of gallery definitions and topic checks for intake (galcache.h).
 * Two small arrays searched linearly: a coordinator serves a handful of
 * galleries and reply topics, and the arrays are capped at
 * BM_GALCACHE_MAX entries. Invariant: an entry's 'until' is the monotonic
 * time after which it must be fetched again. */
#include "galcache.h"

#include <stdlib.h>
#include <string.h>

#include "bus/bus.h"
#include "common/err.h"
#include "galreg.h"
#include "store/galdef.h"

struct gentry {
    char *name;
    Biomatch__V1__GalleryDefinition *def; /* NULL = known missing */
    int64_t until;
};

struct tentry {
    char *topic;
    int partitions;                       /* 0 = known missing */
    int64_t until;
};

struct bm_galcache {
    struct bm_galreg *reg;                /* NULL: Redis only */
    struct bm_redis *redis;
    struct bm_admin *admin;
    int64_t ttl_ms, neg_ttl_ms;
    struct gentry g[BM_GALCACHE_MAX];
    size_t ng;
    struct tentry t[BM_GALCACHE_MAX];
    size_t nt;
};

struct bm_galcache *bm_galcache_new(struct bm_redis *r, struct bm_admin *a, int64_t ttl_ms,
                                    int64_t negative_ttl_ms)
{
    struct bm_galcache *c = calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    c->redis = r;
    c->admin = a;
    c->ttl_ms = ttl_ms;
    c->neg_ttl_ms = negative_ttl_ms;
    return c;
}

void bm_galcache_set_registry(struct bm_galcache *c, struct bm_galreg *reg)
{
    c->reg = reg;
}

static void gentry_clear(struct gentry *e)
{
    free(e->name);
    bm_galdef_free(e->def);
    memset(e, 0, sizeof *e);
}

void bm_galcache_free(struct bm_galcache *c)
{
    if (c == NULL)
        return;
    for (size_t i = 0; i < c->ng; i++)
        gentry_clear(&c->g[i]);
    for (size_t i = 0; i < c->nt; i++)
        free(c->t[i].topic);
    free(c);
}

int bm_galcache_get(struct bm_galcache *c, const char *name, int64_t now_ms,
                    const Biomatch__V1__GalleryDefinition **def, char *err, size_t errlen)
{
    *def = NULL;
    struct gentry *e = NULL;
    for (size_t i = 0; i < c->ng; i++)
        if (strcmp(c->g[i].name, name) == 0) {
            e = &c->g[i];
            break;
        }
    if (e && now_ms < e->until) {
        *def = e->def;
        return e->def ? BM_OK : BM_ENOTFOUND;
    }
    int rc = BM_OK;
    Biomatch__V1__GalleryDefinition *d = bm_galdef_get(c->redis, name, &rc, err, errlen);
    /* A stored definition that does not decode is as good as missing for a
     * job (the gallery role reports it); only transport errors are not
     * cached, so the next job retries. */
    if (d == NULL && rc != BM_ENOTFOUND && rc != BM_EPROTO && rc != BM_ERANGE &&
        rc != BM_EINVAL)
        return rc;
    if (d == NULL && rc == BM_ENOTFOUND && c->reg != NULL) {
        /* Missing from Redis but in the galleries topic: Redis lost it.
         * Put it back (best effort: the gallery role does too) and serve. */
        const Biomatch__V1__GalleryDefinition *rd = bm_galreg_find(c->reg, name, now_ms);
        if (rd != NULL && (d = bm_galdef_dup(rd, NULL, err, errlen)) != NULL) {
            char perr[256];
            bm_galdef_put(c->redis, d, NULL, perr, sizeof perr);
        }
    }
    if (e == NULL) {
        if (c->ng == BM_GALCACHE_MAX) {
            for (size_t i = 0; i < c->ng; i++)
                gentry_clear(&c->g[i]);
            c->ng = 0;
        }
        e = &c->g[c->ng];
        e->name = strdup(name);
        if (e->name == NULL) {
            bm_galdef_free(d);
            return bm_seterr(err, errlen, BM_ENOMEM, "out of memory");
        }
        c->ng++;
    }
    bm_galdef_free(e->def);
    e->def = d;
    e->until = now_ms + (d ? c->ttl_ms : c->neg_ttl_ms);
    *def = d;
    return d ? BM_OK : BM_ENOTFOUND;
}

int bm_galcache_topic(struct bm_galcache *c, const char *topic, int min_partitions,
                      int create, int64_t now_ms, char *err, size_t errlen)
{
    struct tentry *e = NULL;
    for (size_t i = 0; i < c->nt; i++)
        if (strcmp(c->t[i].topic, topic) == 0) {
            e = &c->t[i];
            break;
        }
    if (e == NULL || now_ms >= e->until || (e->partitions == 0 && create)) {
        int parts = 0;
        int rc = bm_admin_topic_partitions(c->admin, topic, 10000, &parts, err, errlen);
        if (rc == BM_ENOTFOUND && create) {
            struct bm_bus_topic_spec spec = {topic, min_partitions, -1, NULL, 0};
            rc = bm_admin_create_topics(c->admin, &spec, 1, 10000, err, errlen);
            if (rc == BM_OK)
                parts = min_partitions;
        }
        if (rc == BM_ENOTFOUND)
            parts = 0;
        else if (rc != BM_OK)
            return rc;
        if (e == NULL) {
            if (c->nt == BM_GALCACHE_MAX) {
                for (size_t i = 0; i < c->nt; i++)
                    free(c->t[i].topic);
                c->nt = 0;
            }
            e = &c->t[c->nt];
            e->topic = strdup(topic);
            if (e->topic == NULL)
                return bm_seterr(err, errlen, BM_ENOMEM, "out of memory");
            c->nt++;
        }
        e->partitions = parts;
        e->until = now_ms + (parts ? c->ttl_ms : c->neg_ttl_ms);
    }
    if (e->partitions == 0)
        return bm_seterr(err, errlen, BM_ENOTFOUND, "topic %s does not exist", topic);
    if (e->partitions < min_partitions)
        return bm_seterr(err, errlen, BM_ERANGE, "topic %s has %d partitions, needs %d",
                         topic, e->partitions, min_partitions);
    return BM_OK;
}
