/* Configuration loading; see conf.h and docs/config.md.
 *
 * One table (KEYS) describes every scalar and list key: its dotted path,
 * environment variable, type, range and place in struct bm_conf. The YAML
 * walker, the environment pass, the destructor and the dump all iterate that
 * table, so adding a key is one line plus its default. The kafka: map is the
 * only part not in the table: its keys belong to librdkafka, which validates
 * them itself when the client is created.
 *
 * Invariant: every char * field of the table is either NULL or a malloc'd
 * string owned by the conf, at every point of loading, so any error path can
 * call bm_conf_destroy. */
#include "conf/conf.h"

#include "common/err.h"
#include "common/file.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <yaml.h>

#define MAX_FILE_BYTES (1u << 20)
#define MIB (1024 * 1024)

enum kind { K_STR, K_INT, K_I64, K_BOOL, K_LIST, K_ROLES, K_ENUM };

struct key {
    const char *path;     /* dotted YAML path */
    const char *env;      /* environment override */
    enum kind kind;
    size_t off;           /* field offset in struct bm_conf */
    size_t off_n;         /* K_LIST: offset of the size_t count */
    int64_t min, max;     /* K_INT, K_I64 */
    const char *const *choices; /* K_ENUM: NULL-terminated */
};

static const char *const levels[] = {"debug", "info", "warn", "error", "off", NULL};
static const char *const simds[] = {"auto", "scalar", "avx2", "avx512", NULL};
static const char *const roles[] = {"intake", "aggregate", "gallery", NULL};

#define F(m) offsetof(struct bm_conf, m)
static const struct key KEYS[] = {
    {"node_id", "BIOMATCH_NODE_ID", K_STR, F(node_id), 0, 0, 0, NULL},
    {"topic_prefix", "BIOMATCH_TOPIC_PREFIX", K_STR, F(topic_prefix), 0, 0, 0, NULL},
    {"brokers", "BIOMATCH_KAFKA_BROKERS", K_STR, F(brokers), 0, 0, 0, NULL},
    {"topics.replication_factor", "BIOMATCH_TOPICS_REPLICATION_FACTOR", K_INT,
     F(topics.replication_factor), 0, 0, 32, NULL},
    {"topics.min_insync_replicas", "BIOMATCH_TOPICS_MIN_INSYNC_REPLICAS", K_INT,
     F(topics.min_insync_replicas), 0, 0, 32, NULL},
    {"topics.max_record_bytes", "BIOMATCH_TOPICS_MAX_RECORD_BYTES", K_I64,
     F(topics.max_record_bytes), 0, 65536, 64LL * MIB, NULL},
    {"topics.dlq_stubs_only", "BIOMATCH_TOPICS_DLQ_STUBS_ONLY", K_BOOL, F(topics.dlq_stubs_only),
     0, 0, 0, NULL},
    {"redis.url", "BIOMATCH_REDIS_URL", K_STR, F(redis.url), 0, 0, 0, NULL},
    {"redis.cluster", "BIOMATCH_REDIS_CLUSTER", K_LIST, F(redis.cluster), F(redis.cluster_n),
     0, 0, NULL},
    {"redis.connect_timeout_ms", "BIOMATCH_REDIS_CONNECT_TIMEOUT_MS", K_INT,
     F(redis.connect_timeout_ms), 0, 1, 600000, NULL},
    {"redis.io_timeout_ms", "BIOMATCH_REDIS_IO_TIMEOUT_MS", K_INT, F(redis.io_timeout_ms), 0,
     1, 600000, NULL},
    {"redis.max_reply_bytes", "BIOMATCH_REDIS_MAX_REPLY_BYTES", K_I64,
     F(redis.max_reply_bytes), 0, 1024, 1024LL * MIB, NULL},
    {"redis.tls_ca_file", "BIOMATCH_REDIS_TLS_CA_FILE", K_STR, F(redis.tls_ca_file), 0, 0, 0,
     NULL},
    {"redis.tls_cert_file", "BIOMATCH_REDIS_TLS_CERT_FILE", K_STR, F(redis.tls_cert_file), 0,
     0, 0, NULL},
    {"redis.tls_key_file", "BIOMATCH_REDIS_TLS_KEY_FILE", K_STR, F(redis.tls_key_file), 0, 0,
     0, NULL},
    {"http.enabled", "BIOMATCH_HTTP_ENABLED", K_BOOL, F(http.enabled), 0, 0, 0, NULL},
    {"http.port", "BIOMATCH_HTTP_PORT", K_INT, F(http.port), 0, 0, 65535, NULL},
    {"http.bind", "BIOMATCH_HTTP_BIND", K_STR, F(http.bind), 0, 0, 0, NULL},
    {"http.livez_max_age_ms", "BIOMATCH_HTTP_LIVEZ_MAX_AGE_MS", K_INT,
     F(http.livez_max_age_ms), 0, 0, 3600000, NULL},
    {"log.level", "BIOMATCH_LOG_LEVEL", K_ENUM, F(log.level), 0, 0, 0, levels},
    {"worker.threads", "BIOMATCH_WORKER_THREADS", K_INT, F(worker.threads), 0, 1, 1024, NULL},
    {"worker.batch_max_probes", "BIOMATCH_WORKER_BATCH_MAX_PROBES", K_INT,
     F(worker.batch_max_probes), 0, 1, 4096, NULL},
    {"worker.batch_max_wait_ms", "BIOMATCH_WORKER_BATCH_MAX_WAIT_MS", K_INT,
     F(worker.batch_max_wait_ms), 0, 0, 10000, NULL},
    {"worker.galleries", "BIOMATCH_WORKER_GALLERIES", K_LIST, F(worker.galleries),
     F(worker.galleries_n), 0, 0, NULL},
    {"worker.min_version_wait_ms", "BIOMATCH_WORKER_MIN_VERSION_WAIT_MS", K_INT,
     F(worker.min_version_wait_ms), 0, 0, 600000, NULL},
    {"worker.refresh_interval_ms", "BIOMATCH_WORKER_REFRESH_INTERVAL_MS", K_INT,
     F(worker.refresh_interval_ms), 0, 10, 3600000, NULL},
    {"worker.drain_timeout_ms", "BIOMATCH_WORKER_DRAIN_TIMEOUT_MS", K_INT,
     F(worker.drain_timeout_ms), 0, 0, 3600000, NULL},
    {"worker.max_task_attempts", "BIOMATCH_WORKER_MAX_TASK_ATTEMPTS", K_INT,
     F(worker.max_task_attempts), 0, 1, 100, NULL},
    {"worker.max_scoring_ms", "BIOMATCH_WORKER_MAX_SCORING_MS", K_INT,
     F(worker.max_scoring_ms), 0, 100, 3600000, NULL},
    {"max_clock_skew_ms", "BIOMATCH_MAX_CLOCK_SKEW_MS", K_INT, F(max_clock_skew_ms), 0, 0,
     600000, NULL},
    {"coordinator.default_deadline_ms", "BIOMATCH_COORDINATOR_DEFAULT_DEADLINE_MS", K_INT,
     F(coordinator.default_deadline_ms), 0, 1, 3600000, NULL},
    {"coordinator.max_job_attempts", "BIOMATCH_COORDINATOR_MAX_JOB_ATTEMPTS", K_INT,
     F(coordinator.max_job_attempts), 0, 1, 100, NULL},
    {"coordinator.max_job_bytes", "BIOMATCH_COORDINATOR_MAX_JOB_BYTES", K_I64,
     F(coordinator.max_job_bytes), 0, 1024, 1024LL * MIB, NULL},
    {"coordinator.max_top_k", "BIOMATCH_COORDINATOR_MAX_TOP_K", K_INT,
     F(coordinator.max_top_k), 0, 1, 1000, NULL},
    {"coordinator.segment_max_bytes", "BIOMATCH_COORDINATOR_SEGMENT_MAX_BYTES", K_I64,
     F(coordinator.segment_max_bytes), 0, 4096, 512LL * MIB, NULL},
    {"coordinator.segment_max_age_ms", "BIOMATCH_COORDINATOR_SEGMENT_MAX_AGE_MS", K_INT,
     F(coordinator.segment_max_age_ms), 0, 1, 3600000, NULL},
    {"coordinator.roles", "BIOMATCH_COORDINATOR_ROLES", K_ROLES, F(coordinator.roles), 0, 0,
     0, NULL},
    {"security.at_rest_key_file", "BIOMATCH_SECURITY_AT_REST_KEY_FILE", K_STR,
     F(security.at_rest_key_file), 0, 0, 0, NULL},
    {"security.at_rest_key_id", "BIOMATCH_SECURITY_AT_REST_KEY_ID", K_STR,
     F(security.at_rest_key_id), 0, 0, 0, NULL},
    {"security.at_rest_previous_keys", "BIOMATCH_SECURITY_AT_REST_PREVIOUS_KEYS", K_LIST,
     F(security.at_rest_previous_keys), F(security.at_rest_previous_keys_n), 0, 0, NULL},
    {"security.at_rest_allow_plaintext", "BIOMATCH_SECURITY_AT_REST_ALLOW_PLAINTEXT", K_BOOL,
     F(security.at_rest_allow_plaintext), 0, 0, 0, NULL},
    {"security.policy_file", "BIOMATCH_SECURITY_POLICY_FILE", K_STR, F(security.policy_file), 0,
     0, 0, NULL},
    {"security.audit_key_file", "BIOMATCH_SECURITY_AUDIT_KEY_FILE", K_STR,
     F(security.audit_key_file), 0, 0, 0, NULL},
    {"security.audit_key_id", "BIOMATCH_SECURITY_AUDIT_KEY_ID", K_STR,
     F(security.audit_key_id), 0, 0, 0, NULL},
    {"audit.checkpoint_records", "BIOMATCH_AUDIT_CHECKPOINT_RECORDS", K_INT,
     F(audit.checkpoint_records), 0, 1, 1000000, NULL},
    {"audit.checkpoint_interval_ms", "BIOMATCH_AUDIT_CHECKPOINT_INTERVAL_MS", K_INT,
     F(audit.checkpoint_interval_ms), 0, 100, 3600000, NULL},
    {"audit.log_subject_ids", "BIOMATCH_AUDIT_LOG_SUBJECT_IDS", K_BOOL,
     F(audit.log_subject_ids), 0, 0, 0, NULL},
    {"security.dev_mode", "BIOMATCH_SECURITY_DEV_MODE", K_BOOL, F(security.dev_mode), 0, 0, 0,
     NULL},
    {"security.replay_window_ms", "BIOMATCH_SECURITY_REPLAY_WINDOW_MS", K_INT,
     F(security.replay_window_ms), 0, 1000, 3600000, NULL},
    {"simd", "BIOMATCH_SIMD", K_ENUM, F(simd), 0, 0, 0, simds},
};
#undef F
#define NKEYS (sizeof KEYS / sizeof KEYS[0])

/* Mapping sections that hold table keys. "kafka" is handled apart. */
static const char *const SECTIONS[] = {"topics", "redis", "http", "log", "worker",
                                       "coordinator", "audit", "security", NULL};
#define NSECTIONS (sizeof SECTIONS / sizeof SECTIONS[0] - 1)

#define FIELD(c, k, type) ((type *)(void *)((char *)(c) + (k)->off))

struct loader {
    struct bm_conf *c;
    const char *name;     /* file name for messages */
    bool seen[NKEYS];     /* duplicate detection within the file */
    char *err;
    size_t errlen;
};

static const struct key *find_key(const char *path)
{
    for (size_t i = 0; i < NKEYS; i++)
        if (strcmp(KEYS[i].path, path) == 0)
            return &KEYS[i];
    return NULL;
}

/* A scheme the store connects to (lib/store/redis.h). */
static bool redis_url_scheme(const char *url)
{
    return strncmp(url, "redis://", 8) == 0 || strncmp(url, "rediss://", 9) == 0 ||
           strncmp(url, "redis+cluster://", 16) == 0 || strncmp(url, "rediss+cluster://", 17) == 0;
}

static int set_str(char **dst, const char *v)
{
    char *d = NULL;
    if (v != NULL && (d = strdup(v)) == NULL)
        return BM_ENOMEM;
    free(*dst);
    *dst = d;
    return BM_OK;
}

static void free_list(char **items, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(items[i]);
    free(items);
}

/* Strict decimal: optional '-', digits only, no spaces, in [min, max]. */
static int parse_int(const char *s, int64_t min, int64_t max, int64_t *out)
{
    if (s == NULL || !(s[0] == '-' || (s[0] >= '0' && s[0] <= '9')))
        return BM_EINVAL;
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (end == s || *end != '\0')
        return BM_EINVAL;
    if (errno == ERANGE || v < min || v > max)
        return BM_ERANGE;
    *out = v;
    return BM_OK;
}

/* Apply one scalar 'v' (from file or environment, described by 'where') to
 * key 'k'. List kinds take the value as a comma-separated list (the
 * environment form). */
static int apply_list(struct loader *L, const struct key *k, char **items, size_t n,
                      const char *where);

static int apply_scalar(struct loader *L, const struct key *k, const char *v, const char *where)
{
    struct bm_conf *c = L->c;
    int64_t iv = 0;
    int rc;
    switch (k->kind) {
    case K_STR:
        if (set_str(FIELD(c, k, char *), v) != BM_OK)
            return bm_seterr(L->err, L->errlen, BM_ENOMEM, "out of memory");
        return BM_OK;
    case K_ENUM:
        for (const char *const *ch = k->choices; *ch != NULL; ch++) {
            if (strcmp(*ch, v) == 0) {
                if (set_str(FIELD(c, k, char *), v) != BM_OK)
                    return bm_seterr(L->err, L->errlen, BM_ENOMEM, "out of memory");
                return BM_OK;
            }
        }
        {
            char all[128] = "";
            for (const char *const *ch = k->choices; *ch != NULL; ch++) {
                size_t used = strlen(all);
                snprintf(all + used, sizeof all - used, "%s%s", used ? "|" : "", *ch);
            }
            return bm_seterr(L->err, L->errlen, BM_EINVAL, "%s: '%s' must be one of %s, not '%s'",
                             where, k->path, all, v);
        }
    case K_INT:
    case K_I64:
        rc = parse_int(v, k->min, k->max, &iv);
        if (rc == BM_EINVAL)
            return bm_seterr(L->err, L->errlen, BM_EINVAL, "%s: '%s' must be an integer, not '%s'",
                             where, k->path, v);
        if (rc != BM_OK)
            return bm_seterr(L->err, L->errlen, BM_ERANGE,
                             "%s: '%s' = %s is out of range [%lld, %lld]", where, k->path, v,
                             (long long)k->min, (long long)k->max);
        if (k->kind == K_INT)
            *FIELD(c, k, int) = (int)iv;
        else
            *FIELD(c, k, int64_t) = iv;
        return BM_OK;
    case K_BOOL:
        if (strcmp(v, "true") == 0)
            *FIELD(c, k, bool) = true;
        else if (strcmp(v, "false") == 0)
            *FIELD(c, k, bool) = false;
        else
            return bm_seterr(L->err, L->errlen, BM_EINVAL, "%s: '%s' must be true or false, not '%s'",
                             where, k->path, v);
        return BM_OK;
    case K_LIST:
    case K_ROLES: {
        /* Environment form: "a,b,c" with optional spaces; "" is unset. */
        size_t n = 0, cap = 8;
        char **items = calloc(cap, sizeof *items);
        const char *p = v;
        rc = items != NULL ? BM_OK : BM_ENOMEM;
        while (rc == BM_OK && *p != '\0') {
            const char *e = strchr(p, ',');
            size_t len = e != NULL ? (size_t)(e - p) : strlen(p);
            const char *s = p;
            while (len > 0 && *s == ' ') {
                s++;
                len--;
            }
            while (len > 0 && s[len - 1] == ' ')
                len--;
            if (n == cap) {
                char **bigger = realloc(items, 2 * cap * sizeof *items);
                if (bigger == NULL) {
                    rc = BM_ENOMEM;
                    break;
                }
                items = bigger;
                cap *= 2;
            }
            if ((items[n] = strndup(s, len)) == NULL) {
                rc = BM_ENOMEM;
                break;
            }
            n++;
            p = e != NULL ? e + 1 : p + strlen(p);
        }
        if (rc == BM_OK)
            rc = apply_list(L, k, items, n, where);
        else
            bm_seterr(L->err, L->errlen, BM_ENOMEM, "out of memory");
        free_list(items, n);
        return rc;
    }
    }
    return bm_seterr(L->err, L->errlen, BM_EINVAL, "internal: bad key kind");
}

static bool valid_name(const char *s, size_t maxlen)
{
    size_t n = strlen(s);
    if (n == 0 || n > maxlen)
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
              (*s >= '0' && *s <= '9') || *s == '.' || *s == '_' || *s == '-'))
            return false;
    return true;
}

/* 'items' stay the caller's; the conf gets copies. */
static int apply_list(struct loader *L, const struct key *k, char **items, size_t n,
                      const char *where)
{
    struct bm_conf *c = L->c;
    if (k->kind == K_ROLES) {
        unsigned bits = 0;
        for (size_t i = 0; i < n; i++) {
            unsigned bit = 0;
            for (unsigned r = 0; roles[r] != NULL; r++)
                if (strcmp(items[i], roles[r]) == 0)
                    bit = 1u << r;
            if (bit == 0)
                return bm_seterr(L->err, L->errlen, BM_EINVAL,
                                 "%s: '%s' entries must be intake, aggregate or gallery, not '%s'",
                                 where, k->path, items[i]);
            if (bits & bit)
                return bm_seterr(L->err, L->errlen, BM_EINVAL, "%s: '%s' lists '%s' twice",
                                 where, k->path, items[i]);
            bits |= bit;
        }
        if (bits == 0)
            return bm_seterr(L->err, L->errlen, BM_EINVAL, "%s: '%s' must name at least one role",
                             where, k->path);
        *FIELD(c, k, unsigned) = bits;
        return BM_OK;
    }
    /* redis.cluster holds seed URLs, not names. */
    bool urls = k->off == offsetof(struct bm_conf, redis.cluster);
    for (size_t i = 0; urls && i < n; i++)
        if (!redis_url_scheme(items[i]))
            return bm_seterr(L->err, L->errlen, BM_EINVAL,
                             "%s: '%s' entries must start with redis://, rediss://, "
                             "redis+cluster:// or rediss+cluster://", where, k->path);
    /* security.at_rest_previous_keys holds "id=path" entries, not names. */
    bool keys = urls || k->off == offsetof(struct bm_conf, security.at_rest_previous_keys);
    for (size_t i = 0; keys && !urls && i < n; i++) {
        const char *eq = strchr(items[i], '=');
        char id[65];
        snprintf(id, sizeof id, "%.*s", eq != NULL ? (int)(eq - items[i]) : 0, items[i]);
        if (eq == NULL || (size_t)(eq - items[i]) > 64 || !valid_name(id, 64) || eq[1] == '\0')
            return bm_seterr(L->err, L->errlen, BM_EINVAL,
                             "%s: '%s' entry '%s' must be <key id>=<key file>, the id 1-64 of "
                             "[A-Za-z0-9._-]", where, k->path, items[i]);
        for (size_t j = 0; j < i; j++)
            if (strncmp(items[j], items[i], (size_t)(eq - items[i]) + 1) == 0)
                return bm_seterr(L->err, L->errlen, BM_EINVAL, "%s: '%s' lists key id '%s' twice",
                                 where, k->path, id);
    }
    /* K_LIST: gallery names become topic names, so Kafka's topic rules. */
    for (size_t i = 0; !keys && i < n; i++) {
        if (!valid_name(items[i], 200))
            return bm_seterr(L->err, L->errlen, BM_EINVAL,
                             "%s: '%s' entry '%s' must be 1-200 of [A-Za-z0-9._-]", where,
                             k->path, items[i]);
        for (size_t j = 0; j < i; j++)
            if (strcmp(items[i], items[j]) == 0)
                return bm_seterr(L->err, L->errlen, BM_EINVAL, "%s: '%s' lists '%s' twice",
                                 where, k->path, items[i]);
    }
    char **copy = calloc(n + 1, sizeof *copy);
    if (copy == NULL)
        return bm_seterr(L->err, L->errlen, BM_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        if ((copy[i] = strdup(items[i])) == NULL) {
            free_list(copy, i);
            return bm_seterr(L->err, L->errlen, BM_ENOMEM, "out of memory");
        }
    }
    char ***dst = FIELD(c, k, char **);
    size_t *dst_n = (size_t *)(void *)((char *)c + k->off_n);
    free_list(*dst, *dst_n);
    *dst = copy;
    *dst_n = n;
    return BM_OK;
}

/* ---- YAML ---------------------------------------------------------------- */

static unsigned long line_of(const yaml_node_t *n)
{
    return (unsigned long)n->start_mark.line + 1;
}

static const char *scalar(const yaml_node_t *n)
{
    return n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

/* A plain empty, "~" or "null" scalar is YAML's null: a key with no value. */
static bool is_null(const yaml_node_t *n)
{
    if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return false;
    const char *v = scalar(n);
    return strcmp(v, "") == 0 || strcmp(v, "~") == 0 || strcmp(v, "null") == 0 ||
           strcmp(v, "Null") == 0 || strcmp(v, "NULL") == 0;
}

static int apply_node(struct loader *L, yaml_document_t *doc, const struct key *k,
                      yaml_node_t *v)
{
    char where[512];
    snprintf(where, sizeof where, "%s:%lu", L->name, line_of(v));
    if (is_null(v))
        return bm_seterr(L->err, L->errlen, BM_EINVAL, "%s: '%s' has no value", where, k->path);
    if (k->kind == K_LIST || k->kind == K_ROLES) {
        if (v->type != YAML_SEQUENCE_NODE)
            return bm_seterr(L->err, L->errlen, BM_EINVAL, "%s: '%s' must be a list", where,
                             k->path);
        size_t n = (size_t)(v->data.sequence.items.top - v->data.sequence.items.start);
        char **items = calloc(n + 1, sizeof *items);
        if (items == NULL)
            return bm_seterr(L->err, L->errlen, BM_ENOMEM, "out of memory");
        for (size_t i = 0; i < n; i++) {
            yaml_node_t *it = yaml_document_get_node(doc, v->data.sequence.items.start[i]);
            if (it == NULL || scalar(it) == NULL || is_null(it)) {
                free(items);
                return bm_seterr(L->err, L->errlen, BM_EINVAL,
                                 "%s:%lu: '%s' entries must be plain values", L->name,
                                 it ? line_of(it) : line_of(v), k->path);
            }
            items[i] = (char *)scalar(it); /* borrowed; apply_list copies */
        }
        int rc = apply_list(L, k, items, n, where);
        free(items);
        return rc;
    }
    if (scalar(v) == NULL)
        return bm_seterr(L->err, L->errlen, BM_EINVAL, "%s: '%s' must be a single value, not a %s",
                         where, k->path, v->type == YAML_MAPPING_NODE ? "map" : "list");
    return apply_scalar(L, k, scalar(v), where);
}

/* True for a kafka: entry that would turn off acks=all or idempotence
 * (librdkafka's aliases included): a record acknowledged by one broker is
 * lost when that broker dies before its followers copy it, and a retried
 * send without idempotence can be written twice. */
static bool weakens_durability(const char *key, const char *val)
{
    if (strcmp(key, "acks") == 0 || strcmp(key, "request.required.acks") == 0)
        return strcmp(val, "all") != 0 && strcmp(val, "-1") != 0;
    if (strcmp(key, "enable.idempotence") == 0)
        return strcmp(val, "true") != 0;
    return false;
}

static int load_kafka(struct loader *L, yaml_document_t *doc, yaml_node_t *map)
{
    struct bm_conf *c = L->c;
    if (map->type != YAML_MAPPING_NODE)
        return bm_seterr(L->err, L->errlen, BM_EINVAL, "%s:%lu: 'kafka' must be a map",
                         L->name, line_of(map));
    size_t n = (size_t)(map->data.mapping.pairs.top - map->data.mapping.pairs.start);
    c->kafka = calloc(n + 1, sizeof *c->kafka);
    if (c->kafka == NULL)
        return bm_seterr(L->err, L->errlen, BM_ENOMEM, "out of memory");
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top;
         p++) {
        yaml_node_t *kn = yaml_document_get_node(doc, p->key);
        yaml_node_t *vn = yaml_document_get_node(doc, p->value);
        const char *key = scalar(kn), *val = scalar(vn);
        if (key == NULL || *key == '\0')
            return bm_seterr(L->err, L->errlen, BM_EINVAL, "%s:%lu: kafka: keys must be names",
                             L->name, line_of(kn));
        if (val == NULL || is_null(vn))
            return bm_seterr(L->err, L->errlen, BM_EINVAL,
                             "%s:%lu: 'kafka.%s' must be a single value", L->name,
                             line_of(vn), key);
        if (strcmp(key, "bootstrap.servers") == 0 || strcmp(key, "metadata.broker.list") == 0)
            return bm_seterr(L->err, L->errlen, BM_EINVAL,
                             "%s:%lu: 'kafka.%s': set the top-level 'brokers' key instead",
                             L->name, line_of(kn), key);
        if (weakens_durability(key, val))
            return bm_seterr(L->err, L->errlen, BM_EINVAL,
                             "%s:%lu: 'kafka.%s: %s' would let a producer lose or duplicate "
                             "records: biomatch always uses acks=all with idempotence",
                             L->name, line_of(kn), key, val);
        for (size_t i = 0; i < c->kafka_n; i++)
            if (strcmp(c->kafka[i].key, key) == 0)
                return bm_seterr(L->err, L->errlen, BM_EINVAL, "%s:%lu: duplicate key 'kafka.%s'",
                                 L->name, line_of(kn), key);
        struct bm_conf_kv *kv = &c->kafka[c->kafka_n];
        kv->key = strdup(key);
        kv->value = strdup(val);
        if (kv->key == NULL || kv->value == NULL) {
            free(kv->key);
            free(kv->value);
            kv->key = kv->value = NULL;
            return bm_seterr(L->err, L->errlen, BM_ENOMEM, "out of memory");
        }
        c->kafka_n++;
    }
    return BM_OK;
}

static bool is_section(const char *s)
{
    for (size_t i = 0; SECTIONS[i] != NULL; i++)
        if (strcmp(SECTIONS[i], s) == 0)
            return true;
    return false;
}

/* Walk one mapping; 'prefix' is "" at the top or "redis" etc. */
static int load_map(struct loader *L, yaml_document_t *doc, yaml_node_t *map,
                    const char *prefix)
{
    bool seen_sections[NSECTIONS + 1] = {false}; /* the last one is "kafka" */
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top;
         p++) {
        yaml_node_t *kn = yaml_document_get_node(doc, p->key);
        yaml_node_t *vn = yaml_document_get_node(doc, p->value);
        const char *key = kn != NULL ? scalar(kn) : NULL;
        if (key == NULL || vn == NULL)
            return bm_seterr(L->err, L->errlen, BM_EINVAL, "%s:%lu: keys must be plain names",
                             L->name, kn ? line_of(kn) : 0ul);
        char path[256];
        snprintf(path, sizeof path, "%s%s%s", prefix, *prefix ? "." : "", key);
        if (*prefix == '\0' && (strcmp(key, "kafka") == 0 || is_section(key))) {
            size_t si = 0;
            if (strcmp(key, "kafka") != 0)
                while (strcmp(SECTIONS[si], key) != 0)
                    si++;
            else
                si = NSECTIONS;
            if (seen_sections[si])
                return bm_seterr(L->err, L->errlen, BM_EINVAL, "%s:%lu: duplicate key '%s'",
                                 L->name, line_of(kn), key);
            seen_sections[si] = true;
            int rc;
            if (strcmp(key, "kafka") == 0) {
                rc = load_kafka(L, doc, vn);
            } else if (vn->type != YAML_MAPPING_NODE) {
                rc = bm_seterr(L->err, L->errlen, BM_EINVAL, "%s:%lu: '%s' must be a map",
                               L->name, line_of(vn), key);
            } else {
                rc = load_map(L, doc, vn, key);
            }
            if (rc != BM_OK)
                return rc;
            continue;
        }
        const struct key *k = find_key(path);
        if (k == NULL)
            return bm_seterr(L->err, L->errlen, BM_EINVAL, "%s:%lu: unknown key '%s'", L->name,
                             line_of(kn), path);
        size_t ki = (size_t)(k - KEYS);
        if (L->seen[ki])
            return bm_seterr(L->err, L->errlen, BM_EINVAL, "%s:%lu: duplicate key '%s'", L->name,
                             line_of(kn), path);
        L->seen[ki] = true;
        int rc = apply_node(L, doc, k, vn);
        if (rc != BM_OK)
            return rc;
    }
    return BM_OK;
}

static int load_yaml(struct loader *L, const char *text, size_t len)
{
    yaml_parser_t parser;
    yaml_document_t doc;
    if (!yaml_parser_initialize(&parser))
        return bm_seterr(L->err, L->errlen, BM_ENOMEM, "out of memory");
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
    int rc = BM_OK;
    if (!yaml_parser_load(&parser, &doc)) {
        rc = bm_seterr(L->err, L->errlen, BM_EPROTO, "%s:%lu: YAML error: %s", L->name,
                       (unsigned long)parser.problem_mark.line + 1,
                       parser.problem ? parser.problem : "unknown");
        yaml_parser_delete(&parser);
        return rc;
    }
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (root != NULL && !(root->type == YAML_SCALAR_NODE && is_null(root))) {
        if (root->type != YAML_MAPPING_NODE)
            rc = bm_seterr(L->err, L->errlen, BM_EINVAL, "%s:%lu: the file must be a map of keys",
                           L->name, line_of(root));
        else
            rc = load_map(L, &doc, root, "");
    }
    yaml_document_delete(&doc);
    if (rc == BM_OK && root != NULL) {
        /* A second document would be silently ignored: refuse it. */
        yaml_document_t more;
        if (!yaml_parser_load(&parser, &more)) {
            rc = bm_seterr(L->err, L->errlen, BM_EPROTO, "%s:%lu: YAML error: %s", L->name,
                           (unsigned long)parser.problem_mark.line + 1,
                           parser.problem ? parser.problem : "unknown");
        } else {
            yaml_node_t *r2 = yaml_document_get_root_node(&more);
            if (r2 != NULL)
                rc = bm_seterr(L->err, L->errlen, BM_EINVAL,
                               "%s:%lu: only one YAML document is allowed", L->name,
                               line_of(r2));
            yaml_document_delete(&more);
        }
    }
    yaml_parser_delete(&parser);
    return rc;
}

/* ---- environment, defaults, checks -------------------------------------- */

static const char *env_get(const char *const *envp, const char *name)
{
    if (envp == NULL)
        return NULL;
    size_t n = strlen(name);
    for (const char *const *e = envp; *e != NULL; e++)
        if (strncmp(*e, name, n) == 0 && (*e)[n] == '=')
            return *e + n + 1;
    return NULL;
}

static int load_env(struct loader *L, const char *const *envp)
{
    for (size_t i = 0; i < NKEYS; i++) {
        const char *v = env_get(envp, KEYS[i].env);
        if (v == NULL || *v == '\0') /* empty counts as unset */
            continue;
        char where[128];
        snprintf(where, sizeof where, "environment %s", KEYS[i].env);
        int rc = apply_scalar(L, &KEYS[i], v, where);
        if (rc != BM_OK)
            return rc;
    }
    return BM_OK;
}

static int set_defaults(struct bm_conf *c)
{
    char host[256];
    if (gethostname(host, sizeof host) != 0 || host[0] == '\0')
        snprintf(host, sizeof host, "biomatch");
    host[sizeof host - 1] = '\0';
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    c->worker.threads = cpus < 1 ? 1 : cpus > 1024 ? 1024 : (int)cpus;
    c->redis.connect_timeout_ms = 2000;
    c->redis.io_timeout_ms = 5000;
    c->redis.max_reply_bytes = 64LL * MIB;
    c->http.enabled = true;
    c->http.port = 9464;
    c->http.livez_max_age_ms = 30000;
    c->worker.batch_max_probes = 64;
    c->worker.batch_max_wait_ms = 2;
    c->worker.min_version_wait_ms = 5000;
    c->worker.refresh_interval_ms = 500;
    c->worker.drain_timeout_ms = 30000;
    c->worker.max_task_attempts = 3;
    c->worker.max_scoring_ms = 120000;
    c->max_clock_skew_ms = 2000;
    c->coordinator.default_deadline_ms = 5000;
    c->coordinator.max_job_bytes = MIB;
    c->topics.max_record_bytes = MIB + 64 * 1024; /* a largest job plus headers */
    c->coordinator.max_job_attempts = 3;
    c->coordinator.max_top_k = 1000;
    c->coordinator.segment_max_bytes = 16LL * MIB;
    c->coordinator.segment_max_age_ms = 1000;
    c->coordinator.roles = BM_CONF_ROLE_ALL;
    c->audit.checkpoint_records = 1000;
    c->audit.checkpoint_interval_ms = 60000;
    c->security.replay_window_ms = 300000;
    if (set_str(&c->node_id, host) || set_str(&c->topic_prefix, "biomatch.") ||
        set_str(&c->brokers, "127.0.0.1:9092") ||
        set_str(&c->redis.url, "redis://127.0.0.1:6379") ||
        set_str(&c->http.bind, "0.0.0.0") || set_str(&c->log.level, "info") ||
        set_str(&c->simd, "auto"))
        return BM_ENOMEM;
    return BM_OK;
}

static int check(const struct bm_conf *c, char *err, size_t errlen)
{
    if (!valid_name(c->node_id, 253))
        return bm_seterr(err, errlen, BM_EINVAL, "node_id '%s' must be 1-253 of [A-Za-z0-9._-]",
                         c->node_id);
    if (c->topic_prefix[0] != '\0' && !valid_name(c->topic_prefix, 200))
        return bm_seterr(err, errlen, BM_EINVAL,
                         "topic_prefix '%s' must be at most 200 of [A-Za-z0-9._-]",
                         c->topic_prefix);
    if (c->brokers[0] == '\0')
        return bm_seterr(err, errlen, BM_EINVAL, "brokers must not be empty");
    if (!redis_url_scheme(c->redis.url))
        return bm_seterr(err, errlen, BM_EINVAL,
                         "redis.url must start with redis://, rediss://, redis+cluster:// or "
                         "rediss+cluster://");
    unsigned char addr[sizeof(struct in6_addr)];
    if (inet_pton(AF_INET, c->http.bind, addr) != 1 &&
        inet_pton(AF_INET6, c->http.bind, addr) != 1)
        return bm_seterr(err, errlen, BM_EINVAL,
                         "http.bind '%s' must be a numeric IPv4 or IPv6 address", c->http.bind);
    if ((c->security.at_rest_key_file == NULL) != (c->security.at_rest_key_id == NULL))
        return bm_seterr(err, errlen, BM_EINVAL,
                         "security.at_rest_key_file and security.at_rest_key_id go together");
    if (c->security.at_rest_key_id != NULL && !valid_name(c->security.at_rest_key_id, 64))
        return bm_seterr(err, errlen, BM_EINVAL,
                         "security.at_rest_key_id must be 1-64 of [A-Za-z0-9._-]");
    for (size_t i = 0; c->security.at_rest_key_id != NULL &&
                       i < c->security.at_rest_previous_keys_n; i++) {
        size_t idlen = strlen(c->security.at_rest_key_id);
        if (strncmp(c->security.at_rest_previous_keys[i], c->security.at_rest_key_id, idlen) == 0 &&
            c->security.at_rest_previous_keys[i][idlen] == '=')
            return bm_seterr(err, errlen, BM_EINVAL,
                             "security.at_rest_previous_keys names the current key id '%s'",
                             c->security.at_rest_key_id);
    }
    if (c->topics.replication_factor > 0 &&
        c->topics.min_insync_replicas > c->topics.replication_factor)
        return bm_seterr(err, errlen, BM_EINVAL,
                         "topics.min_insync_replicas (%d) must not exceed "
                         "topics.replication_factor (%d): no write could ever succeed",
                         c->topics.min_insync_replicas, c->topics.replication_factor);
    if ((c->security.audit_key_file == NULL) != (c->security.audit_key_id == NULL))
        return bm_seterr(err, errlen, BM_EINVAL,
                         "security.audit_key_file and security.audit_key_id go together");
    if (c->security.audit_key_id != NULL && !valid_name(c->security.audit_key_id, 64))
        return bm_seterr(err, errlen, BM_EINVAL,
                         "security.audit_key_id must be 1-64 of [A-Za-z0-9._-]");
    if (c->redis.tls_key_file != NULL && c->redis.tls_cert_file == NULL)
        return bm_seterr(err, errlen, BM_EINVAL,
                         "redis.tls_key_file needs redis.tls_cert_file");
    if (c->redis.max_reply_bytes < c->coordinator.segment_max_bytes)
        return bm_seterr(err, errlen, BM_EINVAL,
                         "redis.max_reply_bytes (%lld) must be at least "
                         "coordinator.segment_max_bytes (%lld) or segments cannot be read back",
                         (long long)c->redis.max_reply_bytes,
                         (long long)c->coordinator.segment_max_bytes);
    return BM_OK;
}

struct bm_conf *bm_conf_parse(const char *yaml, size_t len, const char *name,
                              const char *const *envp, char *err, size_t errlen)
{
    struct bm_conf *c = calloc(1, sizeof *c);
    if (c == NULL || set_defaults(c) != BM_OK) {
        bm_conf_destroy(c);
        bm_seterr(err, errlen, BM_ENOMEM, "out of memory");
        return NULL;
    }
    struct loader L;
    memset(&L, 0, sizeof L);
    L.c = c;
    L.name = name != NULL ? name : "<string>";
    L.err = err;
    L.errlen = errlen;
    if ((yaml != NULL && len > 0 && load_yaml(&L, yaml, len) != BM_OK) ||
        load_env(&L, envp) != BM_OK || check(c, err, errlen) != BM_OK) {
        bm_conf_destroy(c);
        return NULL;
    }
    return c;
}

extern char **environ;

struct bm_conf *bm_conf_load(const char *path, char *err, size_t errlen)
{
    if (path == NULL)
        return bm_conf_parse(NULL, 0, NULL, (const char *const *)environ, err, errlen);
    char *text;
    size_t n;
    if (bm_file_read(path, MAX_FILE_BYTES, &text, &n, err, errlen) != BM_OK)
        return NULL;
    struct bm_conf *c = bm_conf_parse(text, n, path, (const char *const *)environ, err, errlen);
    free(text);
    return c;
}

void bm_conf_destroy(struct bm_conf *c)
{
    if (c == NULL)
        return;
    for (size_t i = 0; i < NKEYS; i++) {
        const struct key *k = &KEYS[i];
        if (k->kind == K_STR || k->kind == K_ENUM)
            free(*FIELD(c, k, char *));
        else if (k->kind == K_LIST)
            free_list(*FIELD(c, k, char **), *(size_t *)(void *)((char *)c + k->off_n));
    }
    for (size_t i = 0; i < c->kafka_n; i++) {
        free(c->kafka[i].key);
        free(c->kafka[i].value);
    }
    free(c->kafka);
    free(c);
}

const char *bm_conf_kafka_get(const struct bm_conf *c, const char *key)
{
    for (size_t i = 0; c != NULL && i < c->kafka_n; i++)
        if (strcmp(c->kafka[i].key, key) == 0)
            return c->kafka[i].value;
    return NULL;
}

/* ---- dump ---------------------------------------------------------------- */

#define REDACTED "[redacted]"

static bool kafka_secret(const char *key)
{
    return strstr(key, "password") != NULL || strstr(key, "secret") != NULL ||
           strstr(key, "ssl.key.pem") != NULL || strstr(key, "sasl.oauthbearer.config") != NULL ||
           strstr(key, "ssl_key") != NULL;
}

/* redis://user:pass@host -> redis://user:[redacted]@host; a userinfo
 * without ':' is a bare password and goes whole. */
static char *redact_url(const char *url)
{
    const char *scheme = strstr(url, "://");
    const char *start = scheme != NULL ? scheme + 3 : url;
    const char *end = start + strcspn(start, "/?#");
    const char *at = NULL;
    for (const char *p = start; p < end; p++)
        if (*p == '@')
            at = p; /* the last '@' ends the userinfo */
    if (at == NULL)
        return strdup(url);
    const char *colon = memchr(start, ':', (size_t)(at - start));
    const char *cut = colon != NULL ? colon + 1 : start;
    size_t n = (size_t)(cut - url) + strlen(REDACTED) + strlen(at) + 1;
    char *out = malloc(n);
    if (out != NULL)
        snprintf(out, n, "%.*s%s%s", (int)(cut - url), url, REDACTED, at);
    return out;
}

static cJSON *section_obj(cJSON *root, const char *path, const char **leaf)
{
    const char *dot = strchr(path, '.');
    if (dot == NULL) {
        *leaf = path;
        return root;
    }
    char sec[32];
    snprintf(sec, sizeof sec, "%.*s", (int)(dot - path), path);
    *leaf = dot + 1;
    cJSON *o = cJSON_GetObjectItemCaseSensitive(root, sec);
    if (o == NULL)
        o = cJSON_AddObjectToObject(root, sec);
    return o;
}

int bm_conf_dump(const struct bm_conf *c, char **out)
{
    *out = NULL;
    cJSON *root = cJSON_CreateObject();
    bool ok = root != NULL;
    for (size_t i = 0; ok && i < NKEYS; i++) {
        const struct key *k = &KEYS[i];
        const char *leaf = NULL;
        cJSON *o = section_obj(root, k->path, &leaf);
        cJSON *v = NULL;
        const char *s;
        switch (k->kind) {
        case K_STR:
        case K_ENUM:
            s = *FIELD(c, k, char *const);
            if (s == NULL) {
                v = cJSON_CreateNull();
            } else if (strcmp(k->path, "redis.url") == 0) {
                char *r = redact_url(s);
                v = r != NULL ? cJSON_CreateString(r) : NULL;
                free(r);
            } else {
                v = cJSON_CreateString(s);
            }
            break;
        case K_INT:
            v = cJSON_CreateNumber(*FIELD(c, k, const int));
            break;
        case K_I64:
            v = cJSON_CreateNumber((double)*FIELD(c, k, const int64_t));
            break;
        case K_BOOL:
            v = cJSON_CreateBool(*FIELD(c, k, const bool));
            break;
        case K_LIST:
            v = cJSON_CreateArray();
            for (size_t j = 0; v != NULL && j < *(const size_t *)(const void *)((const char *)c + k->off_n); j++) {
                const char *item = (*FIELD(c, k, char **const))[j];
                char *r = k->off == offsetof(struct bm_conf, redis.cluster) ? redact_url(item)
                                                                             : NULL;
                cJSON_AddItemToArray(v, cJSON_CreateString(r != NULL ? r : item));
                free(r);
            }
            break;
        case K_ROLES:
            v = cJSON_CreateArray();
            for (unsigned r = 0; v != NULL && roles[r] != NULL; r++)
                if (*FIELD(c, k, const unsigned) & (1u << r))
                    cJSON_AddItemToArray(v, cJSON_CreateString(roles[r]));
            break;
        }
        ok = o != NULL && v != NULL && cJSON_AddItemToObject(o, leaf, v);
        if (!ok)
            cJSON_Delete(v);
    }
    cJSON *kafka = ok ? cJSON_AddObjectToObject(root, "kafka") : NULL;
    ok = kafka != NULL;
    for (size_t i = 0; ok && i < c->kafka_n; i++)
        ok = cJSON_AddStringToObject(kafka, c->kafka[i].key,
                                     kafka_secret(c->kafka[i].key) ? REDACTED
                                                                   : c->kafka[i].value) != NULL;
    char *text = ok ? cJSON_Print(root) : NULL;
    cJSON_Delete(root);
    if (text == NULL)
        return BM_ENOMEM;
    /* Hand back memory from malloc, whatever allocator cJSON was built with. */
    *out = strdup(text);
    cJSON_free(text);
    return *out != NULL ? BM_OK : BM_ENOMEM;
}
