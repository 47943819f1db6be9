/* `biomatch gallery create|list|stats|load` and `biomatch topics create`.
 *
 * create writes the immutable definition (store/galdef.h: created, or an
 * identical one already there, or refused) and then makes sure the topics
 * exist: the shared ones (enroll, jobs, partials, results, audit, dlq;
 * created only when missing, so an operator's partition choice is kept;
 * galleries, compacted, one partition), gallery.NAME (compacted, S
 * partitions) and tasks.NAME (S x R), and finally records the definition
 * in the galleries topic, its durable copy. Every step is idempotent, so
 * re-running a create that failed half-way finishes it. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "common/clock.h"
#include "conf/topics.h"
#include "crypto/keyring.h"
#include "match/cpu.h"
#include "store/galdef.h"
#include "store/keys.h"
#include "store/loader.h"
#include "store/manifest.h"

#define ADMIN_TIMEOUT_MS 30000
#define DEFAULT_SHARED_PARTITIONS "6"

static const char *modality_name(Biomatch__V1__Modality m)
{
    switch (m) {
    case BIOMATCH__V1__MODALITY__MODALITY_FACE: return "face";
    case BIOMATCH__V1__MODALITY__MODALITY_FINGERPRINT: return "fingerprint";
    case BIOMATCH__V1__MODALITY__MODALITY_PALM: return "palm";
    case BIOMATCH__V1__MODALITY__MODALITY_IRIS: return "iris";
    default: return "?";
    }
}

static const char *dtype_name(enum bm_dtype t)
{
    return t == BM_DTYPE_F32 ? "f32" : t == BM_DTYPE_F16 ? "f16" : "int8";
}

static const char *scoring_name(enum bm_iris_scoring s)
{
    return s == BM_IRIS_NORMALISED ? "normalised" : s == BM_IRIS_OPENIRIS ? "openiris" : "fractional";
}

/* Create the shared topics that do not exist yet with 'partitions' each,
 * and the galleries topic: the gallery definitions' durable copy
 * (docs/storage.md §7.8), one partition (a handful of tiny records, read
 * whole at start), compacted so the latest definition of a name stays. */
static int ensure_shared_topics(struct bm_admin *a, const char *prefix, int partitions)
{
    static const struct { enum bm_topic topic; int compacted; } shared[] = {
        { BM_TOPIC_ENROLL, 0 }, { BM_TOPIC_JOBS, 0 }, { BM_TOPIC_PARTIALS, 0 },
        { BM_TOPIC_RESULTS, 0 }, { BM_TOPIC_AUDIT, 0 }, { BM_TOPIC_DLQ, 0 },
        { BM_TOPIC_GALLERIES, 1 },
    };
    static const struct bm_bus_prop compact[] = { { "cleanup.policy", "compact" } };
    char err[512];
    for (size_t i = 0; i < sizeof shared / sizeof shared[0]; i++) {
        char name[BM_TOPIC_MAX];
        int have = 0;
        if (bm_topic_name(name, sizeof name, prefix, shared[i].topic) != 0) {
            fprintf(stderr, "biomatch: topic prefix '%s' is too long\n", prefix);
            return -1;
        }
        int rc = bm_admin_topic_partitions(a, name, ADMIN_TIMEOUT_MS, &have, err, sizeof err);
        if (rc == BM_OK) {
            continue;
        } else if (rc != BM_ENOTFOUND) {
            fprintf(stderr, "biomatch: topic %s: %s\n", name, err);
            return -1;
        }
        int c = shared[i].compacted;
        struct bm_bus_topic_spec t = { .name = name, .partitions = c ? 1 : partitions,
                                       .replication = -1, .configs = c ? compact : NULL,
                                       .nconfigs = c ? 1 : 0 };
        rc = bm_admin_create_topics(a, &t, 1, ADMIN_TIMEOUT_MS, err, sizeof err);
        if (rc != BM_OK) {
            fprintf(stderr, "biomatch: create topic %s: %s\n", name, err);
            return -1;
        }
        fprintf(stderr, "created topic %s (%d partitions%s)\n", name, t.partitions,
                c ? ", compacted" : "");
    }
    return 0;
}

static void on_def_delivery(const struct bm_delivery *d, void *opaque)
{
    *(int *)opaque = d->err == BM_OK ? 1 : -1;
}

/* Append 'def' to the galleries topic, keyed by its name, and wait for
 * the delivery: the durable copy a coordinator restores Redis from. */
static int publish_definition(const struct cli_common *c,
                              const Biomatch__V1__GalleryDefinition *def)
{
    char err[512], topic[BM_TOPIC_MAX];
    struct bm_bus_conf bc;
    struct bm_bus_prop *props = calloc(c->conf->kafka_n + 1, sizeof *props);
    if (props == NULL || cli_bus_conf(c, &bc, props) != 0 ||
        bm_topic_name(topic, sizeof topic, cli_prefix(c), BM_TOPIC_GALLERIES) != 0) {
        free(props);
        return -1;
    }
    uint8_t *buf = NULL;
    size_t len = 0;
    if (bm_galdef_encode(def, &buf, &len, err, sizeof err) != BM_OK) {
        fprintf(stderr, "biomatch: %s\n", err);
        return -1;
    }
    struct bm_producer *p = bm_producer_new(&bc, err, sizeof err);
    int delivered = 0;
    int rc = p == NULL ? BM_EKAFKA
                       : bm_producer_send(p, topic, 0, def->name, strlen(def->name), buf, len,
                                          NULL, 0, on_def_delivery, &delivered);
    if (rc == BM_OK)
        rc = bm_producer_flush(p, ADMIN_TIMEOUT_MS);
    free(buf);
    bm_producer_free(p);
    free(props);
    if (rc != BM_OK || delivered != 1) {
        fprintf(stderr, "biomatch: gallery %s: not recorded in %s%s%s\n", def->name, topic,
                p == NULL ? ": " : "", p == NULL ? err : "");
        return -1;
    }
    return 0;
}

static struct bm_admin *open_admin(const struct cli_common *c)
{
    char err[512];
    struct bm_bus_conf bc;
    struct bm_bus_prop *props = calloc(c->conf->kafka_n + 1, sizeof *props);
    if (props == NULL || cli_bus_conf(c, &bc, props) != 0) {
        free(props);
        return NULL;
    }
    struct bm_admin *a = bm_admin_new(&bc, err, sizeof err);
    free(props);
    if (a == NULL)
        fprintf(stderr, "biomatch: kafka admin: %s\n", err);
    return a;
}

int cli_topics(int argc, char **argv)
{
    struct cli_common c = { 0 };
    const char *partitions = DEFAULT_SHARED_PARTITIONS;
    const char *pos[2];
    size_t npos = 0;
    const struct bm_opt opts[] = {
        CLI_COMMON_OPTS(&c),
        { "--partitions", "N", &partitions, "partitions of each shared topic created (default 6)" },
    };
    int p = cli_parse(argc, argv, 1, opts, sizeof opts / sizeof opts[0], pos, 1, &npos,
                      "biomatch topics create [flags]",
                      "Create the shared topics enroll, jobs, partials, results, audit and dlq,\n"
                      "and the compacted galleries topic (gallery definitions), with the topic\n"
                      "prefix, where they do not exist yet. Existing topics are left as they\n"
                      "are. `gallery create` does the same.");
    if (p != 0)
        return p > 0 ? 0 : 2;
    if (npos != 1 || strcmp(pos[0], "create") != 0) {
        fprintf(stderr, "biomatch: usage: biomatch topics create [--partitions N]\n");
        return 2;
    }
    uint32_t np;
    if (cli_u32("--partitions", partitions, 1, 10000, &np) != 0 || cli_conf_load(&c) != 0)
        return 2;
    struct bm_admin *a = open_admin(&c);
    int rc = a != NULL ? ensure_shared_topics(a, cli_prefix(&c), (int)np) : -1;
    bm_admin_free(a);
    cli_conf_free(&c);
    return rc == 0 ? 0 : 1;
}

static int parse_modality(const char *s, Biomatch__V1__Modality *m)
{
    if (strcmp(s, "face") == 0) *m = BIOMATCH__V1__MODALITY__MODALITY_FACE;
    else if (strcmp(s, "fingerprint") == 0) *m = BIOMATCH__V1__MODALITY__MODALITY_FINGERPRINT;
    else if (strcmp(s, "palm") == 0) *m = BIOMATCH__V1__MODALITY__MODALITY_PALM;
    else if (strcmp(s, "iris") == 0) *m = BIOMATCH__V1__MODALITY__MODALITY_IRIS;
    else return -1;
    return 0;
}

static int gallery_create(int argc, char **argv)
{
    struct cli_common c = { 0 };
    const char *modality = NULL, *dim = "512", *format = "int8", *shards = "1", *replicas = "1";
    const char *filters = "2", *rows = "16", *columns = "256", *bits = "2", *rotations = "15";
    const char *scoring = "fractional", *minbits = "1";
    const char *partitions = DEFAULT_SHARED_PARTITIONS;
    const char *pos[2];
    size_t npos = 0;
    const struct bm_opt opts[] = {
        CLI_COMMON_OPTS(&c),
        { "--modality", "face|fingerprint|palm|iris", &modality, "template kind (required)" },
        { "--dim", "D", &dim, "dense: embedding dimension, 64..4096 (default 512)" },
        { "--format", "int8|f16|f32", &format, "dense: storage format (default int8)" },
        { "--shards", "S", &shards, "shards = partitions of gallery.NAME (default 1)" },
        { "--replicas", "R", &replicas, "replicas; tasks.NAME gets S x R partitions (default 1)" },
        { "--filters", "N", &filters, "iris: filters (default 2)" },
        { "--rows", "N", &rows, "iris: rows (default 16)" },
        { "--columns", "N", &columns, "iris: columns (default 256)" },
        { "--bits", "N", &bits, "iris: bits per cell (default 2)" },
        { "--rotations", "R", &rotations, "iris: column shifts -R..+R, 1.. (default 15)" },
        { "--scoring", "fractional|normalised|openiris", &scoring, "iris: scoring (default fractional)" },
        { "--min-valid-bits", "N", &minbits, "iris: fewer valid bits = no decision (default 1)" },
        { "--partitions", "N", &partitions, "partitions of shared topics created now (default 6)" },
    };
    int p = cli_parse(argc, argv, 2, opts, sizeof opts / sizeof opts[0], pos, 1, &npos,
                      "biomatch gallery create NAME --modality M [flags]",
                      "Write the gallery definition to Redis (bm:gallery:NAME) and create the\n"
                      "topics gallery.NAME (compacted, S partitions), tasks.NAME (S x R) and\n"
                      "the shared topics if missing. Re-creating with the same definition is a\n"
                      "no-op; a different definition is refused.");
    if (p != 0)
        return p > 0 ? 0 : 2;
    if (npos != 1 || modality == NULL) {
        fprintf(stderr, "biomatch: gallery create needs NAME and --modality (see --help)\n");
        return 2;
    }
    Biomatch__V1__Modality mod;
    if (parse_modality(modality, &mod) != 0) {
        fprintf(stderr, "biomatch: --modality must be face, fingerprint, palm or iris\n");
        return 2;
    }
    struct bm_spec spec;
    uint32_t s, r, np;
    if (mod == BIOMATCH__V1__MODALITY__MODALITY_IRIS) {
        bm_spec_default(&spec, BM_MODALITY_IRIS);
        if (cli_u32("--filters", filters, 1, 64, &spec.iris_filters) ||
            cli_u32("--rows", rows, 1, 1024, &spec.iris_rows) ||
            cli_u32("--columns", columns, 1, 4096, &spec.iris_columns) ||
            cli_u32("--bits", bits, 1, 16, &spec.iris_bits_per_cell) ||
            /* 0 cannot be stored: the definition reads 0 as "default". */
            cli_u32("--rotations", rotations, 1, 2048, &spec.iris_rotations) ||
            cli_u32("--min-valid-bits", minbits, 1, 1u << 20, &spec.iris_min_valid_bits))
            return 2;
        if (strcmp(scoring, "fractional") == 0) spec.iris_scoring = BM_IRIS_FRACTIONAL;
        else if (strcmp(scoring, "normalised") == 0) spec.iris_scoring = BM_IRIS_NORMALISED;
        else if (strcmp(scoring, "openiris") == 0) spec.iris_scoring = BM_IRIS_OPENIRIS;
        else {
            fprintf(stderr, "biomatch: --scoring must be fractional, normalised or openiris\n");
            return 2;
        }
    } else {
        bm_spec_default(&spec, BM_MODALITY_DENSE);
        if (cli_u32("--dim", dim, 64, 4096, &spec.dim))
            return 2;
        if (strcmp(format, "int8") == 0) spec.dtype = BM_DTYPE_INT8;
        else if (strcmp(format, "f16") == 0) spec.dtype = BM_DTYPE_F16;
        else if (strcmp(format, "f32") == 0) spec.dtype = BM_DTYPE_F32;
        else {
            fprintf(stderr, "biomatch: --format must be int8, f16 or f32\n");
            return 2;
        }
    }
    if (cli_u32("--shards", shards, 1, BM_GALDEF_MAX_SHARDS, &s) ||
        cli_u32("--replicas", replicas, 1, BM_GALDEF_MAX_REPLICAS, &r) ||
        cli_u32("--partitions", partitions, 1, 10000, &np))
        return 2;
    char err[512];
    Biomatch__V1__GalleryDefinition *def = bm_galdef_from_spec(pos[0], mod, &spec, s, r, err,
                                                               sizeof err);
    if (def == NULL) {
        fprintf(stderr, "biomatch: %s\n", err);
        return 2;
    }
    def->created_unix_ms = (int64_t)time(NULL) * 1000;
    int ret = 1;
    struct bm_redis *rd = NULL;
    struct bm_admin *a = NULL;
    if (cli_conf_load(&c) != 0)
        goto out;
    rd = cli_redis(&c);
    if (rd == NULL)
        goto out;
    int created = 0;
    int rc = bm_galdef_put(rd, def, &created, err, sizeof err);
    if (rc != BM_OK) {
        fprintf(stderr, "biomatch: %s\n", err);
        goto out;
    }
    a = open_admin(&c);
    if (a == NULL || ensure_shared_topics(a, cli_prefix(&c), (int)np) != 0 ||
        publish_definition(&c, def) != 0)
        goto out;
    char gt[BM_TOPIC_MAX], tt[BM_TOPIC_MAX];
    if (bm_topic_gallery(gt, sizeof gt, cli_prefix(&c), def->name) != 0 ||
        bm_topic_tasks(tt, sizeof tt, cli_prefix(&c), def->name) != 0) {
        fprintf(stderr, "biomatch: topic names too long\n");
        goto out;
    }
    const struct bm_bus_prop compact[] = { { "cleanup.policy", "compact" } };
    struct bm_bus_topic_spec ts[2] = {
        { .name = gt, .partitions = (int)s, .replication = -1, .configs = compact, .nconfigs = 1 },
        { .name = tt, .partitions = (int)(s * r), .replication = -1 },
    };
    rc = bm_admin_create_topics(a, ts, 2, ADMIN_TIMEOUT_MS, err, sizeof err);
    if (rc != BM_OK) {
        fprintf(stderr, "biomatch: gallery topics: %s\n", err);
        goto out;
    }
    printf("gallery %s %s (%s, %u shards x %u replicas; topics %s, %s)\n", def->name,
           created ? "created" : "already exists, identical", modality_name(mod), s, r, gt, tt);
    ret = 0;
out:
    bm_admin_free(a);
    bm_redis_close(rd);
    bm_galdef_free(def);
    cli_conf_free(&c);
    return ret;
}

static cJSON *def_json(const Biomatch__V1__GalleryDefinition *d)
{
    struct bm_spec s;
    cJSON *o = cJSON_CreateObject();
    if (o == NULL || bm_galdef_to_spec(d, &s, NULL, 0) != BM_OK)
        return o;
    cJSON_AddStringToObject(o, "name", d->name);
    cJSON_AddStringToObject(o, "modality", modality_name(d->modality));
    if (s.modality == BM_MODALITY_DENSE) {
        cJSON_AddNumberToObject(o, "dim", s.dim);
        cJSON_AddStringToObject(o, "format", dtype_name(s.dtype));
    } else {
        cJSON_AddNumberToObject(o, "filters", s.iris_filters);
        cJSON_AddNumberToObject(o, "rows", s.iris_rows);
        cJSON_AddNumberToObject(o, "columns", s.iris_columns);
        cJSON_AddNumberToObject(o, "bits", s.iris_bits_per_cell);
        cJSON_AddNumberToObject(o, "rotations", s.iris_rotations);
        cJSON_AddStringToObject(o, "scoring", scoring_name(s.iris_scoring));
        cJSON_AddNumberToObject(o, "min_valid_bits", s.iris_min_valid_bits);
    }
    cJSON_AddNumberToObject(o, "shards", d->shards);
    cJSON_AddNumberToObject(o, "replicas", d->replicas);
    cJSON_AddNumberToObject(o, "created_unix_ms", (double)d->created_unix_ms);
    return o;
}

static void print_json(cJSON *o)
{
    char *s = cJSON_PrintUnformatted(o);
    if (s != NULL)
        printf("%s\n", s);
    free(s);
    cJSON_Delete(o);
}

static int gallery_list(int argc, char **argv)
{
    struct cli_common c = { 0 };
    const char *json = NULL;
    const char *pos[1];
    size_t npos = 0;
    const struct bm_opt opts[] = {
        CLI_COMMON_OPTS(&c),
        { "--json", NULL, &json, "one JSON array instead of a table" },
    };
    int p = cli_parse(argc, argv, 2, opts, sizeof opts / sizeof opts[0], pos, 0, &npos,
                      "biomatch gallery list [flags]", "List the gallery definitions in Redis.");
    if (p != 0)
        return p > 0 ? 0 : 2;
    if (cli_conf_load(&c) != 0)
        return 2;
    struct bm_redis *rd = cli_redis(&c);
    Biomatch__V1__GalleryDefinition **defs = NULL;
    size_t n = 0, bad = 0;
    char err[512];
    int ret = 1;
    if (rd == NULL)
        goto out;
    if (bm_galdef_list(rd, &defs, &n, &bad, err, sizeof err) != BM_OK) {
        fprintf(stderr, "biomatch: %s\n", err);
        goto out;
    }
    if (json) {
        cJSON *arr = cJSON_CreateArray();
        for (size_t i = 0; i < n; i++)
            cJSON_AddItemToArray(arr, def_json(defs[i]));
        print_json(arr);
    } else {
        printf("%-24s %-12s %-28s %6s %8s\n", "NAME", "MODALITY", "GEOMETRY", "SHARDS", "REPLICAS");
        for (size_t i = 0; i < n; i++) {
            struct bm_spec s;
            char geo[64] = "?";
            if (bm_galdef_to_spec(defs[i], &s, NULL, 0) == BM_OK) {
                if (s.modality == BM_MODALITY_DENSE)
                    snprintf(geo, sizeof geo, "d=%u %s", s.dim, dtype_name(s.dtype));
                else
                    snprintf(geo, sizeof geo, "%ux%ux%ux%u r=%u %s", s.iris_filters, s.iris_rows,
                             s.iris_columns, s.iris_bits_per_cell, s.iris_rotations,
                             scoring_name(s.iris_scoring));
            }
            printf("%-24s %-12s %-28s %6u %8u\n", defs[i]->name, modality_name(defs[i]->modality),
                   geo, defs[i]->shards, defs[i]->replicas);
        }
    }
    if (bad > 0)
        fprintf(stderr, "biomatch: %zu gallery key(s) did not decode and were skipped\n", bad);
    ret = 0;
out:
    bm_galdef_list_free(defs, n);
    bm_redis_close(rd);
    cli_conf_free(&c);
    return ret;
}

/* Load the definition named pos or print why not. */
static Biomatch__V1__GalleryDefinition *get_def(struct bm_redis *rd, const char *name)
{
    char err[512];
    int rc;
    Biomatch__V1__GalleryDefinition *d = bm_galdef_get(rd, name, &rc, err, sizeof err);
    if (d == NULL)
        fprintf(stderr, "biomatch: %s\n", err);
    return d;
}

static int gallery_stats(int argc, char **argv)
{
    struct cli_common c = { 0 };
    const char *json = NULL;
    const char *pos[2];
    size_t npos = 0;
    const struct bm_opt opts[] = {
        CLI_COMMON_OPTS(&c),
        { "--json", NULL, &json, "one JSON object instead of a table" },
    };
    int p = cli_parse(argc, argv, 2, opts, sizeof opts / sizeof opts[0], pos, 1, &npos,
                      "biomatch gallery stats NAME [flags]",
                      "Per shard: live subjects, segments, blob bytes, tombstones, manifest\n"
                      "version and covered log offset, read from the manifests in Redis.");
    if (p != 0)
        return p > 0 ? 0 : 2;
    if (npos != 1) {
        fprintf(stderr, "biomatch: gallery stats needs NAME\n");
        return 2;
    }
    if (cli_conf_load(&c) != 0)
        return 2;
    int ret = 1;
    struct bm_redis *rd = cli_redis(&c);
    Biomatch__V1__GalleryDefinition *d = rd ? get_def(rd, pos[0]) : NULL;
    cJSON *out = NULL, *arr = NULL;
    if (d == NULL)
        goto done;
    if (json) {
        out = def_json(d);
        arr = cJSON_AddArrayToObject(out, "per_shard");
    } else {
        printf("%5s %10s %8s %14s %10s %8s %12s\n", "SHARD", "SUBJECTS", "SEGMENTS", "BYTES",
               "TOMBSTONES", "VERSION", "LOG_OFFSET");
    }
    uint64_t tsub = 0, tbytes = 0, tseg = 0;
    int64_t newest = 0;
    for (uint32_t sh = 0; sh < d->shards; sh++) {
        char key[BM_KEY_MAX], err[512];
        void *val = NULL;
        size_t len = 0;
        struct bm_manifest *m = NULL;
        if (bm_key_manifest(key, sizeof key, d->name, sh) != BM_OK)
            goto done;
        int rc = bm_redis_get(rd, key, strlen(key), &val, &len);
        if (rc == BM_OK) {
            rc = bm_manifest_decode(val, len, 0, &m, err, sizeof err);
            free(val);
            if (rc != BM_OK) {
                fprintf(stderr, "biomatch: shard %u: %s\n", sh, err);
                goto done;
            }
        } else if (rc != BM_ENOTFOUND) {
            fprintf(stderr, "biomatch: shard %u: GET %s: %s\n", sh, key, bm_redis_errstr(rd));
            goto done;
        }
        uint64_t bytes = 0;
        for (size_t i = 0; m != NULL && i < m->nsegments; i++)
            bytes += m->segments[i].bytes;
        uint32_t subj = m ? m->subjects : 0;
        size_t nseg = m ? m->nsegments : 0, ntomb = m ? m->ntombstones : 0;
        uint64_t ver = m ? m->version : 0;
        long long off = m ? (long long)m->log_offset : 0;
        int64_t upd = m ? m->updated_unix_ms : 0;
        if (upd > newest)
            newest = upd;
        tsub += subj;
        tbytes += bytes;
        tseg += nseg;
        if (json) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddNumberToObject(o, "shard", sh);
            cJSON_AddNumberToObject(o, "subjects", subj);
            cJSON_AddNumberToObject(o, "segments", (double)nseg);
            cJSON_AddNumberToObject(o, "bytes", (double)bytes);
            cJSON_AddNumberToObject(o, "tombstones", (double)ntomb);
            cJSON_AddNumberToObject(o, "version", (double)ver);
            cJSON_AddNumberToObject(o, "log_offset", (double)off);
            cJSON_AddNumberToObject(o, "updated_unix_ms", (double)upd);
            cJSON_AddBoolToObject(o, "manifest", m != NULL);
            cJSON_AddItemToArray(arr, o);
        } else if (m == NULL) {
            printf("%5u %10s %8s %14s %10s %8s %12s\n", sh, "-", "-", "-", "-", "none", "-");
        } else {
            printf("%5u %10u %8zu %14llu %10zu %8llu %12lld\n", sh, subj, nseg,
                   (unsigned long long)bytes, ntomb, (unsigned long long)ver, off);
        }
        bm_manifest_free(m);
    }
    if (json) {
        cJSON_AddNumberToObject(out, "subjects", (double)tsub);
        cJSON_AddNumberToObject(out, "segments", (double)tseg);
        cJSON_AddNumberToObject(out, "bytes", (double)tbytes);
        cJSON_AddNumberToObject(out, "updated_unix_ms", (double)newest);
        print_json(out);
        out = NULL;
    } else {
        printf("%5s %10llu %8llu %14llu\n", "all", (unsigned long long)tsub,
               (unsigned long long)tseg, (unsigned long long)tbytes);
    }
    ret = 0;
done:
    cJSON_Delete(out);
    bm_galdef_free(d);
    bm_redis_close(rd);
    cli_conf_free(&c);
    return ret;
}

static int gallery_load(int argc, char **argv)
{
    struct cli_common c = { 0 };
    const char *json = NULL, *shard = NULL;
    const char *pos[2];
    size_t npos = 0;
    const struct bm_opt opts[] = {
        CLI_COMMON_OPTS(&c),
        { "--shard", "N", &shard, "load only this shard (default: every shard, one after another)" },
        { "--json", NULL, &json, "print one JSON object as the last line" },
    };
    int p = cli_parse(argc, argv, 2, opts, sizeof opts / sizeof opts[0], pos, 1, &npos,
                      "biomatch gallery load NAME [flags]",
                      "Load shards from Redis exactly as a worker does (pipelined GETs, digest\n"
                      "checks, matcher gallery, subject table) and report the load speed\n"
                      "(MB = 10^6 bytes of blobs per second) and the resident memory of the\n"
                      "loaded shard relative to its raw template bytes. Each shard is freed\n"
                      "before the next is loaded.");
    if (p != 0)
        return p > 0 ? 0 : 2;
    if (npos != 1) {
        fprintf(stderr, "biomatch: gallery load needs NAME\n");
        return 2;
    }
    if (cli_conf_load(&c) != 0)
        return 2;
    bm_cpu_init();
    int ret = 1;
    /* The at-rest keys of the configuration, as a worker loads them. */
    char kerr[512];
    int krc = BM_OK;
    struct bm_keyring *kr = bm_keyring_from_conf(c.conf, &krc, kerr, sizeof kerr);
    struct bm_redis *rd = krc == BM_OK ? cli_redis(&c) : NULL;
    if (krc != BM_OK)
        fprintf(stderr, "biomatch: %s\n", kerr);
    Biomatch__V1__GalleryDefinition *d = rd ? get_def(rd, pos[0]) : NULL;
    if (d == NULL)
        goto done;
    uint32_t first = 0, last = d->shards - 1;
    if (shard != NULL) {
        if (cli_u32("--shard", shard, 0, d->shards - 1, &first) != 0)
            goto done;
        last = first;
    }
    uint64_t bytes = 0, subjects = 0, tpl = 0, mem = 0;
    double secs = 0, worst_ratio = 0;
    for (uint32_t sh = first; sh <= last; sh++) {
        char err[512];
        int rc;
        double t0 = bm_mono_s();
        struct bm_shard *s = bm_shard_load_keyring(rd, d, sh, NULL, kr, &rc, err, sizeof err);
        double dt = bm_mono_s() - t0;
        if (s == NULL) {
            fprintf(stderr, "biomatch: shard %u: %s (%s)\n", sh, err, bm_strerror(rc));
            goto done;
        }
        struct bm_shard_stats st;
        bm_shard_stats(s, &st);
        double ratio = st.template_bytes ? (double)(st.gallery_memory + st.subjects_memory) /
                                               (double)st.template_bytes : 0;
        if (ratio > worst_ratio)
            worst_ratio = ratio;
        fprintf(stderr,
                "shard %u: version %llu, %zu subjects, %zu segments, %.1f MB in %.3f s "
                "(%.0f MB/s), memory %.1f MB gallery + %.1f MB subjects = %.3fx templates\n",
                sh, (unsigned long long)st.version, st.subjects, st.segments,
                (double)st.last_bytes / 1e6, dt, dt > 0 ? (double)st.last_bytes / 1e6 / dt : 0,
                (double)st.gallery_memory / 1e6, (double)st.subjects_memory / 1e6, ratio);
        bytes += st.last_bytes;
        subjects += st.subjects;
        tpl += st.template_bytes;
        mem += st.gallery_memory + st.subjects_memory;
        secs += dt;
        bm_shard_free(s);
    }
    double mbs = secs > 0 ? (double)bytes / 1e6 / secs : 0;
    double ratio = tpl ? (double)mem / (double)tpl : 0;
    if (json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "gallery", d->name);
        cJSON_AddNumberToObject(o, "shards", last - first + 1);
        cJSON_AddNumberToObject(o, "subjects", (double)subjects);
        cJSON_AddNumberToObject(o, "bytes", (double)bytes);
        cJSON_AddNumberToObject(o, "seconds", secs);
        cJSON_AddNumberToObject(o, "shard_load_mb_s", mbs);
        cJSON_AddNumberToObject(o, "worker_mem_ratio", ratio);
        cJSON_AddNumberToObject(o, "worst_shard_mem_ratio", worst_ratio);
        print_json(o);
    } else {
        printf("%llu subjects, %.1f MB in %.3f s: %.0f MB/s; memory %.3fx raw template bytes\n",
               (unsigned long long)subjects, (double)bytes / 1e6, secs, mbs, ratio);
    }
    ret = 0;
done:
    bm_galdef_free(d);
    bm_redis_close(rd);
    bm_keyring_free(kr);
    cli_conf_free(&c);
    return ret;
}

int cli_gallery(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        printf("usage: biomatch gallery create|list|stats|load ... (each has --help)\n");
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "create") == 0)
        return gallery_create(argc, argv);
    if (strcmp(argv[1], "list") == 0)
        return gallery_list(argc, argv);
    if (strcmp(argv[1], "stats") == 0)
        return gallery_stats(argc, argv);
    if (strcmp(argv[1], "load") == 0)
        return gallery_load(argc, argv);
    fprintf(stderr, "biomatch: unknown gallery command '%s'\n", argv[1]);
    return 2;
}
