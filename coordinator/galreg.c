/* The gallery registry (see galreg.h). Entries are kept in a small array:
 * a deployment has tens of galleries, not thousands, and a lookup is a
 * strcmp per gallery. The newest record of a name wins, as compaction
 * would leave it. */
#define _POSIX_C_SOURCE 200809L
#include "galreg.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "logread.h"
#include "obs/log.h"
#include "store/galdef.h"
#include "store/redis.h"
#include "wire/decode.h"

#define FIRST_READ_TIMEOUT_MS 5000
/* A failed first read (Kafka down, topic not created) is retried after
 * 5 s, doubling up to a minute, so a deployment without the topic costs a
 * bounded wait now and then, never a stall per lookup. */
#define FIRST_READ_RETRY_MS 5000
#define FIRST_READ_RETRY_MAX_MS 60000
#define FOLLOW_MAX_RECORDS 256

struct entry {
    char *name;
    Biomatch__V1__GalleryDefinition *def; /* owned */
};

struct bm_galreg {
    struct bm_bus_conf bus;     /* copy; props points to 'props' */
    struct bm_bus_prop *props;
    char topic[256];
    struct entry *e;
    size_t n, cap;
    int loaded;                /* the first read succeeded */
    long long next_try_ms;
    long long retry_ms;        /* next backoff */
    struct bm_consumer *follow; /* from the first read's end on */
};

struct bm_galreg *bm_galreg_new(const struct bm_bus_conf *bus, const char *topic)
{
    struct bm_galreg *g = calloc(1, sizeof *g);
    if (g == NULL)
        return NULL;
    g->bus = *bus;
    if (bus->nprops > 0) {
        g->props = malloc(bus->nprops * sizeof *g->props);
        if (g->props == NULL) {
            free(g);
            return NULL;
        }
        memcpy(g->props, bus->props, bus->nprops * sizeof *g->props);
        g->bus.props = g->props;
    }
    snprintf(g->topic, sizeof g->topic, "%s", topic);
    return g;
}

void bm_galreg_free(struct bm_galreg *g)
{
    if (g == NULL)
        return;
    for (size_t i = 0; i < g->n; i++) {
        free(g->e[i].name);
        bm_galdef_free(g->e[i].def);
    }
    free(g->e);
    bm_consumer_free(g->follow);
    free(g->props);
    free(g);
}

/* Apply one record: a definition under its name, or a tombstone. A record
 * that does not decode, or whose key is not its definition's name, is
 * skipped (logged): the topic is written by biomatch's own tools. */
static int apply(int64_t offset, const void *key, size_t keylen, const void *value,
                 size_t valuelen, void *opaque)
{
    struct bm_galreg *g = opaque;
    char name[80], err[256];
    if (key == NULL || keylen == 0 || keylen >= sizeof name)
        return BM_OK;
    memcpy(name, key, keylen);
    name[keylen] = '\0';
    Biomatch__V1__GalleryDefinition *def = NULL;
    if (value != NULL) {
        int rc = BM_OK;
        def = bm_galdef_decode(value, valuelen, &rc, err, sizeof err);
        if (def == NULL || strcmp(def->name, name) != 0) {
            BM_LOGF(BM_LOG_WARN, "galleries record skipped", BM_LF_INT("offset", offset),
                    BM_LF_STR("error", def == NULL ? err : "key is not the gallery's name"));
            bm_galdef_free(def);
            return BM_OK;
        }
    }
    for (size_t i = 0; i < g->n; i++) {
        if (strcmp(g->e[i].name, name) != 0)
            continue;
        bm_galdef_free(g->e[i].def);
        if (def != NULL) {
            g->e[i].def = def;
        } else {
            free(g->e[i].name);
            g->e[i] = g->e[--g->n];
        }
        return BM_OK;
    }
    if (def == NULL)
        return BM_OK;
    if (g->n == g->cap) {
        size_t nc = g->cap ? g->cap * 2 : 16;
        struct entry *ne = realloc(g->e, nc * sizeof *ne);
        if (ne == NULL) {
            bm_galdef_free(def);
            return BM_ENOMEM;
        }
        g->e = ne;
        g->cap = nc;
    }
    g->e[g->n].name = strdup(name);
    if (g->e[g->n].name == NULL) {
        bm_galdef_free(def);
        return BM_ENOMEM;
    }
    g->e[g->n++].def = def;
    return BM_OK;
}

static int first_read(struct bm_galreg *g, char *err, size_t errlen)
{
    int64_t end = 0;
    int rc = bm_logread(&g->bus, g->topic, 0, 0, FIRST_READ_TIMEOUT_MS, apply, g, &end, err,
                        errlen);
    if (rc != BM_OK)
        return rc;
    g->follow = bm_consumer_new(&g->bus, NULL, NULL, NULL, err, errlen);
    if (g->follow == NULL)
        return BM_EKAFKA;
    struct bm_bus_tp tp = {g->topic, 0, end};
    rc = bm_consumer_assign(g->follow, &tp, 1, err, errlen);
    if (rc != BM_OK) {
        bm_consumer_free(g->follow);
        g->follow = NULL;
        return rc;
    }
    g->loaded = 1;
    BM_LOGF(BM_LOG_INFO, "gallery registry read", BM_LF_STR("topic", g->topic),
            BM_LF_INT("galleries", g->n), BM_LF_INT("end", end));
    return BM_OK;
}

int bm_galreg_sync(struct bm_galreg *g, long long now_ms, char *err, size_t errlen)
{
    if (!g->loaded) {
        if (now_ms < g->next_try_ms)
            return bm_seterr(err, errlen, BM_ENOTFOUND, "%s not read yet", g->topic);
        g->retry_ms = g->retry_ms == 0 ? FIRST_READ_RETRY_MS
                      : g->retry_ms * 2 > FIRST_READ_RETRY_MAX_MS ? FIRST_READ_RETRY_MAX_MS
                                                                  : g->retry_ms * 2;
        g->next_try_ms = now_ms + g->retry_ms;
        int rc = first_read(g, err, errlen);
        if (rc != BM_OK) {
            BM_LOGF(BM_LOG_WARN, "gallery registry unreadable; retrying",
                    BM_LF_STR("topic", g->topic), BM_LF_STR("error", err));
            return rc;
        }
    }
    /* Follow without waiting: at most a bounded batch per call. */
    for (int i = 0; i < FOLLOW_MAX_RECORDS; i++) {
        struct bm_bus_msg *m = NULL;
        char perr[256];
        if (bm_consumer_poll(g->follow, 0, &m, perr, sizeof perr) != BM_OK)
            break;
        apply(m->offset, m->key, m->keylen, m->value, m->valuelen, g);
        bm_bus_msg_free(m);
    }
    return BM_OK;
}

const Biomatch__V1__GalleryDefinition *bm_galreg_find(struct bm_galreg *g, const char *name,
                                                      long long now_ms)
{
    char err[256];
    bm_galreg_sync(g, now_ms, err, sizeof err);
    for (size_t i = 0; i < g->n; i++)
        if (strcmp(g->e[i].name, name) == 0)
            return g->e[i].def;
    return NULL;
}

int bm_galreg_restore(struct bm_galreg *g, struct bm_redis *r)
{
    char err[512];
    int restored = 0;
    for (size_t i = 0; i < g->n; i++) {
        int created = 0;
        int rc = bm_galdef_put(r, g->e[i].def, &created, err, sizeof err);
        if (rc == BM_OK && created) {
            restored++;
            BM_LOGF(BM_LOG_WARN, "gallery definition restored from the galleries topic",
                    BM_LF_STR("gallery", g->e[i].name));
        } else if (rc == BM_ECONFLICT || rc == BM_EINVAL || rc == BM_EPROTO) {
            /* Redis holds another definition under that name: never
             * overwritten (definitions are immutable); an operator decides. */
            BM_LOGF(BM_LOG_ERROR, "gallery definition differs from the galleries topic",
                    BM_LF_STR("gallery", g->e[i].name), BM_LF_STR("error", err));
        } else if (rc != BM_OK) {
            BM_LOGF(BM_LOG_WARN, "gallery definition restore failed",
                    BM_LF_STR("gallery", g->e[i].name), BM_LF_STR("error", err));
            return rc;
        }
    }
    return restored;
}
