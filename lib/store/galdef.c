/* Gallery definitions in Redis (see galdef.h).
 *
 * Invariant: every definition this file hands out or writes has passed
 * bm_galdef_validate(), and equality is decided on the normalised matcher
 * spec (proto zeros replaced by the matcher defaults), so "created with
 * defaults" and "created with the same values spelled out" are the same
 * gallery and an identical re-create is a no-op. */
#include "store/galdef.h"

#include <stdlib.h>
#include <string.h>

#include "store/keys.h"
#include "store/redis.h"

#define GALDEF_NAME_MAX 64          /* conf/topics.h rule */
#define GALDEF_MAX_PARTITIONS 100000u

static int name_ok(const char *name)
{
    if (name == NULL)
        return 0;
    size_t n = strlen(name);
    if (n == 0 || n > GALDEF_NAME_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '_' || c == '-';
        if (!ok)
            return 0;
    }
    return 1;
}

int bm_galdef_to_spec(const Biomatch__V1__GalleryDefinition *def, struct bm_spec *spec,
                      char *err, size_t errlen)
{
    if (def == NULL || spec == NULL)
        return bm_seterr(err, errlen, BM_EINVAL, "gallery definition: missing");
    switch (def->modality) {
    case BIOMATCH__V1__MODALITY__MODALITY_FACE:
    case BIOMATCH__V1__MODALITY__MODALITY_FINGERPRINT:
    case BIOMATCH__V1__MODALITY__MODALITY_PALM:
        bm_spec_default(spec, BM_MODALITY_DENSE);
        spec->dim = def->dim;
        switch (def->element_type) {
        case BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_F32: spec->dtype = BM_DTYPE_F32; break;
        case BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_F16: spec->dtype = BM_DTYPE_F16; break;
        case BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_INT8: spec->dtype = BM_DTYPE_INT8; break;
        default:
            return bm_seterr(err, errlen, BM_EINVAL,
                             "gallery definition: dense gallery needs element_type f32, f16 or int8 (got %d)",
                             (int)def->element_type);
        }
        break;
    case BIOMATCH__V1__MODALITY__MODALITY_IRIS: {
        bm_spec_default(spec, BM_MODALITY_IRIS);
        const Biomatch__V1__IrisGeometry *g = def->iris_geometry;
        /* Zero means "not given": proto3 cannot tell 0 from absent, and a
         * zero dimension is never valid anyway. */
        if (g != NULL) {
            if (g->filters) spec->iris_filters = g->filters;
            if (g->rows) spec->iris_rows = g->rows;
            if (g->columns) spec->iris_columns = g->columns;
            if (g->bits_per_cell) spec->iris_bits_per_cell = g->bits_per_cell;
        }
        if (def->iris_rotations)
            spec->iris_rotations = def->iris_rotations;
        if (def->iris_min_valid_bits)
            spec->iris_min_valid_bits = def->iris_min_valid_bits;
        switch (def->iris_scoring) {
        case BIOMATCH__V1__IRIS_SCORING__IRIS_SCORING_UNSPECIFIED:
        case BIOMATCH__V1__IRIS_SCORING__IRIS_SCORING_FRACTIONAL:
            spec->iris_scoring = BM_IRIS_FRACTIONAL; break;
        case BIOMATCH__V1__IRIS_SCORING__IRIS_SCORING_NORMALISED:
            spec->iris_scoring = BM_IRIS_NORMALISED; break;
        case BIOMATCH__V1__IRIS_SCORING__IRIS_SCORING_OPENIRIS:
            spec->iris_scoring = BM_IRIS_OPENIRIS; break;
        default:
            return bm_seterr(err, errlen, BM_EINVAL, "gallery definition: unknown iris scoring %d",
                             (int)def->iris_scoring);
        }
        break;
    }
    default:
        return bm_seterr(err, errlen, BM_EINVAL, "gallery definition: unknown modality %d",
                         (int)def->modality);
    }
    return bm_spec_validate(spec, err, errlen);
}

int bm_galdef_validate(const Biomatch__V1__GalleryDefinition *def, char *err, size_t errlen)
{
    struct bm_spec spec;
    if (def == NULL)
        return bm_seterr(err, errlen, BM_EINVAL, "gallery definition: missing");
    if (!name_ok(def->name))
        return bm_seterr(err, errlen, BM_EINVAL,
                         "gallery definition: name must be 1..%d bytes of [A-Za-z0-9_-]",
                         GALDEF_NAME_MAX);
    int rc = bm_galdef_to_spec(def, &spec, err, errlen);
    if (rc != BM_OK)
        return rc;
    if (def->shards < 1 || def->shards > BM_GALDEF_MAX_SHARDS)
        return bm_seterr(err, errlen, BM_EINVAL, "gallery definition: shards %u outside 1..%u",
                         def->shards, (unsigned)BM_GALDEF_MAX_SHARDS);
    if (def->replicas < 1 || def->replicas > BM_GALDEF_MAX_REPLICAS)
        return bm_seterr(err, errlen, BM_EINVAL, "gallery definition: replicas %u outside 1..%u",
                         def->replicas, (unsigned)BM_GALDEF_MAX_REPLICAS);
    if ((uint64_t)def->shards * def->replicas > GALDEF_MAX_PARTITIONS)
        return bm_seterr(err, errlen, BM_EINVAL,
                         "gallery definition: shards x replicas = %llu over %u task partitions",
                         (unsigned long long)def->shards * def->replicas, GALDEF_MAX_PARTITIONS);
    return BM_OK;
}

int bm_galdef_encode(const Biomatch__V1__GalleryDefinition *def, uint8_t **out, size_t *len,
                     char *err, size_t errlen)
{
    size_t n = biomatch__v1__gallery_definition__get_packed_size(def);
    *out = malloc(n ? n : 1);
    *len = 0;
    if (*out == NULL)
        return bm_seterr(err, errlen, BM_ENOMEM, "gallery definition: out of memory");
    *len = biomatch__v1__gallery_definition__pack(def, *out);
    return BM_OK;
}

Biomatch__V1__GalleryDefinition *bm_galdef_dup(const Biomatch__V1__GalleryDefinition *def,
                                               int *rc, char *err, size_t errlen)
{
    size_t len = 0;
    uint8_t *enc = NULL;
    int erc = bm_galdef_encode(def, &enc, &len, err, errlen);
    if (erc != BM_OK) {
        if (rc != NULL)
            *rc = erc;
        return NULL;
    }
    Biomatch__V1__GalleryDefinition *d = bm_galdef_decode(enc, len, rc, err, errlen);
    free(enc);
    return d;
}

void bm_galdef_free(Biomatch__V1__GalleryDefinition *def)
{
    if (def == NULL)
        return;
    /* Everything we hand out is either unpacked by protobuf-c with the
     * default allocator or built by bm_galdef_from_spec() with malloc in
     * the same shape, so one free function serves both. */
    biomatch__v1__gallery_definition__free_unpacked(def, NULL);
}

static char *dupstr(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d != NULL)
        memcpy(d, s, n);
    return d;
}

Biomatch__V1__GalleryDefinition *bm_galdef_from_spec(const char *name,
                                                     Biomatch__V1__Modality modality,
                                                     const struct bm_spec *spec,
                                                     uint32_t shards, uint32_t replicas,
                                                     char *err, size_t errlen)
{
    if (spec == NULL || name == NULL) {
        bm_seterr(err, errlen, BM_EINVAL, "gallery definition: missing name or spec");
        return NULL;
    }
    int dense_mod = modality == BIOMATCH__V1__MODALITY__MODALITY_FACE ||
                    modality == BIOMATCH__V1__MODALITY__MODALITY_FINGERPRINT ||
                    modality == BIOMATCH__V1__MODALITY__MODALITY_PALM;
    if ((spec->modality == BM_MODALITY_DENSE && !dense_mod) ||
        (spec->modality == BM_MODALITY_IRIS && modality != BIOMATCH__V1__MODALITY__MODALITY_IRIS)) {
        bm_seterr(err, errlen, BM_EINVAL, "gallery definition: modality %d does not fit the spec",
                  (int)modality);
        return NULL;
    }
    Biomatch__V1__GalleryDefinition *d = malloc(sizeof *d);
    Biomatch__V1__IrisGeometry *g = NULL;
    if (d == NULL)
        goto nomem;
    biomatch__v1__gallery_definition__init(d);
    d->name = dupstr(name);
    if (d->name == NULL)
        goto nomem;
    d->modality = modality;
    d->shards = shards;
    d->replicas = replicas;
    if (spec->modality == BM_MODALITY_DENSE) {
        d->dim = spec->dim;
        switch (spec->dtype) {
        case BM_DTYPE_F32: d->element_type = BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_F32; break;
        case BM_DTYPE_F16: d->element_type = BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_F16; break;
        case BM_DTYPE_INT8: d->element_type = BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_INT8; break;
        default: d->element_type = BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_UNSPECIFIED; break;
        }
    } else {
        g = malloc(sizeof *g);
        if (g == NULL)
            goto nomem;
        biomatch__v1__iris_geometry__init(g);
        g->filters = spec->iris_filters;
        g->rows = spec->iris_rows;
        g->columns = spec->iris_columns;
        g->bits_per_cell = spec->iris_bits_per_cell;
        d->iris_geometry = g;
        d->iris_rotations = spec->iris_rotations;
        d->iris_min_valid_bits = spec->iris_min_valid_bits;
        switch (spec->iris_scoring) {
        case BM_IRIS_NORMALISED: d->iris_scoring = BIOMATCH__V1__IRIS_SCORING__IRIS_SCORING_NORMALISED; break;
        case BM_IRIS_OPENIRIS: d->iris_scoring = BIOMATCH__V1__IRIS_SCORING__IRIS_SCORING_OPENIRIS; break;
        default: d->iris_scoring = BIOMATCH__V1__IRIS_SCORING__IRIS_SCORING_FRACTIONAL; break;
        }
    }
    int rc = bm_galdef_validate(d, err, errlen);
    if (rc != BM_OK) {
        bm_galdef_free(d);
        return NULL;
    }
    return d;
nomem:
    bm_galdef_free(d);
    bm_seterr(err, errlen, BM_ENOMEM, "gallery definition: out of memory");
    return NULL;
}

/* The first field in which a and b differ, or NULL when they describe the
 * same gallery. Both must be valid. */
static const char *first_difference(const Biomatch__V1__GalleryDefinition *a,
                                    const Biomatch__V1__GalleryDefinition *b)
{
    struct bm_spec sa, sb;
    if (strcmp(a->name, b->name) != 0) return "name";
    if (a->modality != b->modality) return "modality";
    if (a->shards != b->shards) return "shards";
    if (a->replicas != b->replicas) return "replicas";
    if (bm_galdef_to_spec(a, &sa, NULL, 0) != BM_OK || bm_galdef_to_spec(b, &sb, NULL, 0) != BM_OK)
        return "geometry";
    if (sa.modality == BM_MODALITY_DENSE) {
        if (sa.dim != sb.dim) return "dim";
        if (sa.dtype != sb.dtype) return "format";
        return NULL;
    }
    if (sa.iris_filters != sb.iris_filters) return "filters";
    if (sa.iris_rows != sb.iris_rows) return "rows";
    if (sa.iris_columns != sb.iris_columns) return "columns";
    if (sa.iris_bits_per_cell != sb.iris_bits_per_cell) return "bits";
    if (sa.iris_rotations != sb.iris_rotations) return "rotations";
    if (sa.iris_scoring != sb.iris_scoring) return "scoring";
    if (sa.iris_min_valid_bits != sb.iris_min_valid_bits) return "min-valid-bits";
    return NULL;
}

int bm_galdef_equal(const Biomatch__V1__GalleryDefinition *a,
                    const Biomatch__V1__GalleryDefinition *b)
{
    if (a == NULL || b == NULL)
        return a == b;
    if (bm_galdef_validate(a, NULL, 0) != BM_OK || bm_galdef_validate(b, NULL, 0) != BM_OK)
        return 0;
    return first_difference(a, b) == NULL;
}

Biomatch__V1__GalleryDefinition *bm_galdef_decode(const void *buf, size_t len, int *rc,
                                                  char *err, size_t errlen)
{
    int dummy;
    if (rc == NULL)
        rc = &dummy;
    if (len > BM_GALDEF_MAX_BYTES) {
        *rc = bm_seterr(err, errlen, BM_ERANGE, "gallery definition: %zu bytes over the %d-byte limit",
                        len, BM_GALDEF_MAX_BYTES);
        return NULL;
    }
    if (buf == NULL && len > 0) {
        *rc = bm_seterr(err, errlen, BM_EINVAL, "gallery definition: no bytes");
        return NULL;
    }
    Biomatch__V1__GalleryDefinition *d =
        biomatch__v1__gallery_definition__unpack(NULL, len, (const uint8_t *)buf);
    if (d == NULL) {
        *rc = bm_seterr(err, errlen, BM_EPROTO, "gallery definition: not a GalleryDefinition");
        return NULL;
    }
    int v = bm_galdef_validate(d, err, errlen);
    if (v != BM_OK) {
        bm_galdef_free(d);
        *rc = v;
        return NULL;
    }
    *rc = BM_OK;
    return d;
}

int bm_galdef_put(struct bm_redis *r, const Biomatch__V1__GalleryDefinition *def,
                  int *created, char *err, size_t errlen)
{
    char key[BM_KEY_MAX];
    if (created != NULL)
        *created = 0;
    int rc = bm_galdef_validate(def, err, errlen);
    if (rc != BM_OK)
        return rc;
    rc = bm_key_gallery(key, sizeof key, def->name);
    if (rc != BM_OK)
        return bm_seterr(err, errlen, rc, "gallery definition: bad key for '%s'", def->name);
    size_t n = 0;
    uint8_t *buf = NULL;
    if ((rc = bm_galdef_encode(def, &buf, &n, err, errlen)) != BM_OK)
        return rc;

    /* Two rounds at most: if the key vanished between SET NX and GET
     * (someone deleted it by hand), try the create once more. */
    for (int round = 0; round < 2; round++) {
        const char *argv[] = {"SET", key, (const char *)buf, "NX"};
        size_t argvlen[] = {3, strlen(key), n, 2};
        struct bm_redis_reply *rep = NULL;
        rc = bm_redis_command(r, 4, argv, argvlen, &rep);
        if (rc != BM_OK) {
            bm_seterr(err, errlen, rc, "gallery definition: SET %s: %s", key, bm_redis_errstr(r));
            bm_redis_reply_free(rep);
            free(buf);
            return rc;
        }
        int won = rep->type == BM_REDIS_STATUS;
        bm_redis_reply_free(rep);
        if (won) {
            free(buf);
            if (created != NULL)
                *created = 1;
            return BM_OK;
        }
        int grc;
        Biomatch__V1__GalleryDefinition *cur = bm_galdef_get(r, def->name, &grc, err, errlen);
        if (cur == NULL && grc == BM_ENOTFOUND)
            continue;
        free(buf);
        if (cur == NULL)
            return grc;
        const char *diff = first_difference(def, cur);
        bm_galdef_free(cur);
        if (diff != NULL)
            return bm_seterr(err, errlen, BM_ECONFLICT,
                             "gallery '%s' already exists with a different definition (%s differs)",
                             def->name, diff);
        return BM_OK;
    }
    free(buf);
    return bm_seterr(err, errlen, BM_ECONFLICT, "gallery '%s': definition key keeps vanishing",
                     def->name);
}

Biomatch__V1__GalleryDefinition *bm_galdef_get(struct bm_redis *r, const char *name, int *rc,
                                               char *err, size_t errlen)
{
    char key[BM_KEY_MAX];
    if (!name_ok(name)) {
        *rc = bm_seterr(err, errlen, BM_EINVAL, "gallery name '%s' is not valid",
                        name ? name : "(null)");
        return NULL;
    }
    *rc = bm_key_gallery(key, sizeof key, name);
    if (*rc != BM_OK) {
        bm_seterr(err, errlen, *rc, "gallery name '%s' is not valid", name);
        return NULL;
    }
    void *val = NULL;
    size_t len = 0;
    *rc = bm_redis_get(r, key, strlen(key), &val, &len);
    if (*rc == BM_ENOTFOUND) {
        bm_seterr(err, errlen, BM_ENOTFOUND, "no gallery named '%s'", name);
        return NULL;
    }
    if (*rc != BM_OK) {
        bm_seterr(err, errlen, *rc, "gallery '%s': GET %s: %s", name, key, bm_redis_errstr(r));
        return NULL;
    }
    Biomatch__V1__GalleryDefinition *d = bm_galdef_decode(val, len, rc, err, errlen);
    free(val);
    if (d != NULL && strcmp(d->name, name) != 0) {
        bm_galdef_free(d);
        *rc = bm_seterr(err, errlen, BM_EPROTO, "gallery '%s': stored definition names another gallery",
                        name);
        return NULL;
    }
    return d;
}

void bm_galdef_list_free(Biomatch__V1__GalleryDefinition **defs, size_t ndefs)
{
    if (defs == NULL)
        return;
    for (size_t i = 0; i < ndefs; i++)
        bm_galdef_free(defs[i]);
    free(defs);
}

static int cmp_def(const void *a, const void *b)
{
    const Biomatch__V1__GalleryDefinition *const *x = a, *const *y = b;
    return strcmp((*x)->name, (*y)->name);
}

/* What one gallery-list SCAN collects, node by node. */
struct galdef_scan {
    struct bm_redis *r;         /* reads the definitions (routes by key) */
    Biomatch__V1__GalleryDefinition **v;
    size_t n, cap, bad;
    char *err;
    size_t errlen;
    bool err_set;               /* scan_node wrote err */
};

/* SCAN one node's "bm:gallery:*" keys and read each definition. On Redis
 * Cluster the definitions are spread over all masters (one key each, any
 * slot), so bm_galdef_list runs this once per master. */
static int scan_node(struct bm_redis *node, void *arg)
{
    static const char prefix[] = "bm:gallery:";
    struct galdef_scan *sc = arg;
    sc->err_set = true;     /* every failure below writes err */
    char cursor[32] = "0";
    /* SCAN may return a key more than once; duplicates are dropped after
     * sorting. The loop ends when the cursor comes back to 0. */
    for (int guard = 0; guard < 1000000; guard++) {
        struct bm_redis_reply *rep = NULL;
        int rc = bm_redis_cmd(node, &rep, "SCAN", cursor, "MATCH", "bm:gallery:*", "COUNT",
                              "1000", NULL);
        if (rc != BM_OK) {
            bm_seterr(sc->err, sc->errlen, rc, "gallery list: SCAN: %s", bm_redis_errstr(node));
            bm_redis_reply_free(rep);
            return rc;
        }
        if (rep->type != BM_REDIS_ARRAY || rep->elements != 2 ||
            rep->element[0]->type != BM_REDIS_STRING || rep->element[0]->len >= sizeof cursor ||
            rep->element[1]->type != BM_REDIS_ARRAY) {
            bm_redis_reply_free(rep);
            return bm_seterr(sc->err, sc->errlen, BM_EPROTO, "gallery list: unexpected SCAN reply");
        }
        memcpy(cursor, rep->element[0]->str, rep->element[0]->len);
        cursor[rep->element[0]->len] = '\0';
        struct bm_redis_reply *keys = rep->element[1];
        for (size_t i = 0; i < keys->elements; i++) {
            const struct bm_redis_reply *k = keys->element[i];
            if (k->type != BM_REDIS_STRING || k->len <= sizeof prefix - 1 ||
                k->len - (sizeof prefix - 1) > GALDEF_NAME_MAX)
                continue;
            char name[GALDEF_NAME_MAX + 1];
            memcpy(name, k->str + sizeof prefix - 1, k->len - (sizeof prefix - 1));
            name[k->len - (sizeof prefix - 1)] = '\0';
            int grc;
            Biomatch__V1__GalleryDefinition *d = bm_galdef_get(sc->r, name, &grc, NULL, 0);
            if (d == NULL) {
                if (grc == BM_EPROTO || grc == BM_ERANGE || grc == BM_EINVAL) {
                    sc->bad++;
                    continue;
                }
                if (grc == BM_ENOTFOUND)
                    continue;
                bm_redis_reply_free(rep);
                return bm_seterr(sc->err, sc->errlen, grc, "gallery list: GET %s: %s", name,
                                 bm_redis_errstr(sc->r));
            }
            if (sc->n == sc->cap) {
                size_t ncap = sc->cap ? sc->cap * 2 : 16;
                void *nv = realloc(sc->v, ncap * sizeof *sc->v);
                if (nv == NULL) {
                    bm_galdef_free(d);
                    bm_redis_reply_free(rep);
                    return bm_seterr(sc->err, sc->errlen, BM_ENOMEM, "gallery list: out of memory");
                }
                sc->v = nv;
                sc->cap = ncap;
            }
            sc->v[sc->n++] = d;
        }
        bm_redis_reply_free(rep);
        if (strcmp(cursor, "0") == 0)
            break;
    }
    sc->err_set = false;
    return BM_OK;
}

int bm_galdef_list(struct bm_redis *r, Biomatch__V1__GalleryDefinition ***defs, size_t *ndefs,
                   size_t *nbad, char *err, size_t errlen)
{
    struct galdef_scan sc = { .r = r, .err = err, .errlen = errlen };
    *defs = NULL;
    *ndefs = 0;
    if (nbad != NULL)
        *nbad = 0;
    int rc = bm_redis_each_master(r, scan_node, &sc);
    if (rc != BM_OK) {
        if (!sc.err_set)    /* the cluster could not reach a master */
            bm_seterr(err, errlen, rc, "gallery list: %s", bm_redis_errstr(r));
        bm_galdef_list_free(sc.v, sc.n);
        return rc;
    }
    size_t n = sc.n;
    if (n > 1) {
        qsort(sc.v, n, sizeof *sc.v, cmp_def);
        size_t w = 1;
        for (size_t i = 1; i < n; i++) {
            if (strcmp(sc.v[i]->name, sc.v[w - 1]->name) == 0)
                bm_galdef_free(sc.v[i]);
            else
                sc.v[w++] = sc.v[i];
        }
        n = w;
    }
    *defs = sc.v;
    *ndefs = n;
    if (nbad != NULL)
        *nbad = sc.bad;
    return BM_OK;
}
