/* conf: defaults, a full file, unknown keys with lines, wrong types, range
 * errors, environment precedence, the verbatim kafka: map (minus the
 * settings that would weaken acks=all and idempotence), topics.*, lists,
 * the Redis Cluster seeds, and redaction in the dump. */
#include "testutil.h"

#include "common/err.h"
#include "conf/conf.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char err[512];

static struct bm_conf *parse_env(const char *yaml, const char *const *envp)
{
    err[0] = '\0';
    return bm_conf_parse(yaml, yaml != NULL ? strlen(yaml) : 0, "test.yaml", envp, err,
                         sizeof err);
}

static struct bm_conf *parse(const char *yaml)
{
    return parse_env(yaml, NULL);
}

static void expect_error(const char *yaml, const char *const *envp, const char *needle)
{
    struct bm_conf *c = parse_env(yaml, envp);
    if (c != NULL)
        fail_msg("expected an error containing \"%s\" for:\n%s", needle, yaml);
    if (strstr(err, needle) == NULL)
        fail_msg("error \"%s\" lacks \"%s\"", err, needle);
}

static void test_defaults(void **state)
{
    (void)state;
    struct bm_conf *c = parse(NULL);
    assert_non_null(c);
    assert_true(strlen(c->node_id) > 0);
    assert_string_equal(c->topic_prefix, "biomatch.");
    assert_string_equal(c->brokers, "127.0.0.1:9092");
    assert_string_equal(c->redis.url, "redis://127.0.0.1:6379");
    assert_int_equal(c->redis.connect_timeout_ms, 2000);
    assert_int_equal(c->redis.max_reply_bytes, 64 * 1024 * 1024);
    assert_true(c->http.enabled);
    assert_int_equal(c->http.port, 9464);
    assert_string_equal(c->http.bind, "0.0.0.0");
    assert_string_equal(c->log.level, "info");
    assert_true(c->worker.threads >= 1);
    assert_int_equal(c->worker.batch_max_probes, 64);
    assert_int_equal(c->worker.batch_max_wait_ms, 2);
    assert_int_equal(c->worker.galleries_n, 0);
    assert_int_equal(c->worker.min_version_wait_ms, 5000);
    assert_int_equal(c->coordinator.default_deadline_ms, 5000);
    assert_int_equal(c->coordinator.max_job_bytes, 1024 * 1024);
    assert_int_equal(c->worker.max_task_attempts, 3);
    assert_int_equal(c->coordinator.max_job_attempts, 3);
    assert_int_equal(c->worker.max_scoring_ms, 120000);
    assert_int_equal(c->max_clock_skew_ms, 2000);
    assert_int_equal(c->coordinator.max_top_k, 1000);
    assert_int_equal(c->coordinator.segment_max_bytes, 16 * 1024 * 1024);
    assert_int_equal(c->coordinator.segment_max_age_ms, 1000);
    assert_int_equal(c->coordinator.roles, BM_CONF_ROLE_ALL);
    assert_null(c->security.at_rest_key_file);
    assert_string_equal(c->simd, "auto");
    assert_int_equal(c->kafka_n, 0);
    bm_conf_destroy(c);
    bm_conf_destroy(NULL);
    /* An empty file and a file of only comments are the defaults too. */
    c = parse("# nothing\n");
    assert_non_null(c);
    bm_conf_destroy(c);
    c = parse("---\n");
    assert_non_null(c);
    bm_conf_destroy(c);
}

static const char GOOD[] =
    "# a full configuration\n"
    "node_id: worker-7\n"
    "topic_prefix: test.\n"
    "brokers: k1:9092,k2:9092\n"
    "kafka:\n"
    "  security.protocol: SASL_SSL\n"
    "  sasl.password: 'hunter2'\n"
    "  enable.idempotence: true\n"
    "  linger.ms: 5\n"
    "  client.id: \"a b: c\"\n"
    "redis:\n"
    "  url: redis://app:s3cret@cache:6380/0\n"
    "  connect_timeout_ms: 100\n"
    "  io_timeout_ms: 200\n"
    "  max_reply_bytes: 33554432\n"
    "http: {port: 0, bind: 127.0.0.1, enabled: false, livez_max_age_ms: 0}\n"
    "log:\n"
    "  level: debug\n"
    "worker:\n"
    "  threads: 3\n"
    "  batch_max_probes: 16\n"
    "  batch_max_wait_ms: 0\n"
    "  galleries:\n"
    "    - eu-face\n"
    "    - \"iris.v2\"\n"
    "  min_version_wait_ms: 10\n"
    "  drain_timeout_ms: 1000\n"
    "coordinator:\n"
    "  default_deadline_ms: 250\n"
    "  max_job_bytes: 2097152\n"
    "  max_top_k: 50\n"
    "  segment_max_bytes: 8388608\n"
    "  segment_max_age_ms: 20\n"
    "  roles: [intake, gallery]\n"
    "security:\n"
    "  at_rest_key_file: /run/keys/k1\n"
    "  at_rest_key_id: k1\n"
    "simd: avx2\n";

static void test_good_file(void **state)
{
    (void)state;
    struct bm_conf *c = parse(GOOD);
    if (c == NULL)
        fail_msg("%s", err);
    assert_string_equal(c->node_id, "worker-7");
    assert_string_equal(c->topic_prefix, "test.");
    assert_string_equal(c->brokers, "k1:9092,k2:9092");
    assert_string_equal(c->redis.url, "redis://app:s3cret@cache:6380/0");
    assert_int_equal(c->redis.connect_timeout_ms, 100);
    assert_int_equal(c->redis.io_timeout_ms, 200);
    assert_int_equal(c->redis.max_reply_bytes, 33554432);
    assert_false(c->http.enabled);
    assert_int_equal(c->http.port, 0);
    assert_string_equal(c->http.bind, "127.0.0.1");
    assert_int_equal(c->http.livez_max_age_ms, 0);
    assert_string_equal(c->log.level, "debug");
    assert_int_equal(c->worker.threads, 3);
    assert_int_equal(c->worker.batch_max_probes, 16);
    assert_int_equal(c->worker.batch_max_wait_ms, 0);
    assert_int_equal(c->worker.galleries_n, 2);
    assert_string_equal(c->worker.galleries[0], "eu-face");
    assert_string_equal(c->worker.galleries[1], "iris.v2");
    assert_int_equal(c->worker.min_version_wait_ms, 10);
    assert_int_equal(c->worker.drain_timeout_ms, 1000);
    assert_int_equal(c->coordinator.default_deadline_ms, 250);
    assert_int_equal(c->coordinator.max_job_bytes, 2097152);
    assert_int_equal(c->coordinator.max_top_k, 50);
    assert_int_equal(c->coordinator.segment_max_bytes, 8388608);
    assert_int_equal(c->coordinator.segment_max_age_ms, 20);
    assert_int_equal(c->coordinator.roles, BM_CONF_ROLE_INTAKE | BM_CONF_ROLE_GALLERY);
    assert_string_equal(c->security.at_rest_key_file, "/run/keys/k1");
    assert_string_equal(c->security.at_rest_key_id, "k1");
    assert_string_equal(c->simd, "avx2");
    bm_conf_destroy(c);
}

static void test_kafka_verbatim(void **state)
{
    (void)state;
    struct bm_conf *c = parse(GOOD);
    assert_non_null(c);
    /* File order, values exactly as written (booleans and numbers as text). */
    assert_int_equal(c->kafka_n, 5);
    assert_string_equal(c->kafka[0].key, "security.protocol");
    assert_string_equal(c->kafka[0].value, "SASL_SSL");
    assert_string_equal(c->kafka[1].key, "sasl.password");
    assert_string_equal(c->kafka[1].value, "hunter2");
    assert_string_equal(c->kafka[2].value, "true");
    assert_string_equal(c->kafka[3].value, "5");
    assert_string_equal(c->kafka[4].value, "a b: c");
    assert_string_equal(bm_conf_kafka_get(c, "linger.ms"), "5");
    assert_null(bm_conf_kafka_get(c, "nope"));
    bm_conf_destroy(c);
    expect_error("kafka:\n  bootstrap.servers: x:1\n", NULL, "set the top-level 'brokers' key instead");
    expect_error("kafka:\n  bootstrap.servers: x:1\n", NULL, "test.yaml:2:");
    expect_error("kafka:\n  a: 1\n  a: 2\n", NULL, "test.yaml:3: duplicate key 'kafka.a'");
    expect_error("kafka:\n  a:\n    b: 1\n", NULL, "'kafka.a' must be a single value");
    expect_error("kafka: [a]\n", NULL, "'kafka' must be a map");
}

static void test_unknown_keys(void **state)
{
    (void)state;
    expect_error("node_id: a\n\nnodeid: b\n", NULL, "test.yaml:3: unknown key 'nodeid'");
    expect_error("redis:\n  url: redis://x:1\n  urll: x\n", NULL,
                 "test.yaml:3: unknown key 'redis.urll'");
    expect_error("bogus:\n  a: 1\n", NULL, "test.yaml:1: unknown key 'bogus'");
    expect_error("worker:\n  threads: 2\n  coordinator: {}\n", NULL,
                 "unknown key 'worker.coordinator'");
    expect_error("url: x\n", NULL, "unknown key 'url'");
    expect_error("http:\n  port: 1\n  port: 2\n", NULL, "test.yaml:3: duplicate key 'http.port'");
    expect_error("http: {}\nhttp: {}\n", NULL, "test.yaml:2: duplicate key 'http'");
}

static void test_wrong_types(void **state)
{
    (void)state;
    expect_error("http:\n  port: abc\n", NULL, "test.yaml:2: 'http.port' must be an integer");
    expect_error("http:\n  port: 1e3\n", NULL, "must be an integer");
    expect_error("http:\n  port: ' 5'\n", NULL, "must be an integer");
    expect_error("http:\n  port: +5\n", NULL, "must be an integer");
    expect_error("http:\n  port: 5.0\n", NULL, "must be an integer");
    expect_error("http:\n  port: [1]\n", NULL, "must be a single value");
    expect_error("http:\n  port:\n", NULL, "'http.port' has no value");
    expect_error("http:\n  enabled: yes\n", NULL, "must be true or false");
    expect_error("redis: 5\n", NULL, "'redis' must be a map");
    expect_error("worker:\n  galleries: eu\n", NULL, "'worker.galleries' must be a list");
    expect_error("worker:\n  galleries: [a, [b]]\n", NULL, "entries must be plain values");
    expect_error("log:\n  level: verbose\n", NULL,
                 "must be one of debug|info|warn|error|off, not 'verbose'");
    expect_error("simd: sse2\n", NULL, "'simd' must be one of auto|scalar|avx2|avx512");
    expect_error("- a\n- b\n", NULL, "must be a map of keys");
    expect_error("a: [\n", NULL, "YAML error");
    expect_error("node_id: a\n---\nnode_id: b\n", NULL, "only one YAML document");
}

static void test_ranges(void **state)
{
    (void)state;
    expect_error("http:\n  port: 65536\n", NULL, "'http.port' = 65536 is out of range [0, 65535]");
    expect_error("http:\n  port: -1\n", NULL, "out of range");
    expect_error("worker:\n  threads: 0\n", NULL, "'worker.threads' = 0 is out of range");
    expect_error("coordinator:\n  max_top_k: 100001\n", NULL, "out of range");
    expect_error("coordinator:\n  max_job_bytes: 99999999999999999999\n", NULL, "out of range");
    expect_error("redis:\n  max_reply_bytes: 1048576\n", NULL,
                 "must be at least coordinator.segment_max_bytes");
    expect_error("security:\n  at_rest_key_file: /k\n", NULL, "go together");
    expect_error("node_id: 'a b'\n", NULL, "node_id 'a b'");
    expect_error("redis:\n  url: http://x\n", NULL, "redis.url must start with");
    expect_error("http:\n  bind: localhost\n", NULL, "must be a numeric IPv4 or IPv6");
    expect_error("coordinator:\n  roles: []\n", NULL, "at least one role");
    expect_error("coordinator:\n  roles: [intake, intake]\n", NULL, "lists 'intake' twice");
    expect_error("coordinator:\n  roles: [judge]\n", NULL, "not 'judge'");
    expect_error("worker:\n  galleries: [a, a]\n", NULL, "lists 'a' twice");
    expect_error("worker:\n  galleries: ['a/b']\n", NULL, "entry 'a/b'");
    /* Edges are inside. */
    struct bm_conf *c = parse("http:\n  port: 65535\nworker:\n  threads: 1024\n");
    assert_non_null(c);
    assert_int_equal(c->http.port, 65535);
    bm_conf_destroy(c);
}

static void test_env_precedence(void **state)
{
    (void)state;
    const char *yaml = "http:\n  port: 1000\nlog:\n  level: warn\nworker:\n  threads: 2\n";
    const char *env1[] = {"BIOMATCH_HTTP_PORT=2000", "BIOMATCH_LOG_LEVEL=", "OTHER=1",
                    "BIOMATCH_HTTP_PORTX=5", "BIOMATCH_KAFKA_BROKERS=env:1",
                    "BIOMATCH_WORKER_GALLERIES= a, b ,c", "BIOMATCH_HTTP_ENABLED=false",
                    "BIOMATCH_COORDINATOR_ROLES=aggregate", "BIOMATCH_SIMD=scalar", NULL};
    struct bm_conf *c = parse_env(yaml, env1);
    if (c == NULL)
        fail_msg("%s", err);
    assert_int_equal(c->http.port, 2000);       /* env beats file */
    assert_string_equal(c->log.level, "warn");  /* empty env = unset: file wins */
    assert_int_equal(c->worker.threads, 2);     /* file beats default */
    assert_string_equal(c->brokers, "env:1");   /* env beats default */
    assert_false(c->http.enabled);
    assert_int_equal(c->worker.galleries_n, 3);
    assert_string_equal(c->worker.galleries[0], "a");
    assert_string_equal(c->worker.galleries[1], "b");
    assert_string_equal(c->worker.galleries[2], "c");
    assert_int_equal(c->coordinator.roles, BM_CONF_ROLE_AGGREGATE);
    assert_string_equal(c->simd, "scalar");
    bm_conf_destroy(c);

    /* Environment values are validated exactly like file values. */
    const char *bad1[] = {"BIOMATCH_HTTP_PORT=12x", NULL};
    expect_error(yaml, bad1, "environment BIOMATCH_HTTP_PORT: 'http.port' must be an integer");
    const char *bad2[] = {"BIOMATCH_WORKER_THREADS=100000", NULL};
    expect_error(NULL, bad2, "environment BIOMATCH_WORKER_THREADS: 'worker.threads' = 100000 is out of range");
    const char *bad3[] = {"BIOMATCH_HTTP_ENABLED=1", NULL};
    expect_error(NULL, bad3, "must be true or false");
    const char *bad4[] = {"BIOMATCH_LOG_LEVEL=loud", NULL};
    expect_error(NULL, bad4, "environment BIOMATCH_LOG_LEVEL");
    const char *bad5[] = {"BIOMATCH_COORDINATOR_ROLES=intake,,gallery", NULL};
    expect_error(NULL, bad5, "not ''");
}

static void test_dump_redacts(void **state)
{
    (void)state;
    struct bm_conf *c = parse(GOOD);
    assert_non_null(c);
    char *text = NULL;
    assert_int_equal(bm_conf_dump(c, &text), BM_OK);
    assert_non_null(text);
    assert_null(strstr(text, "hunter2"));
    assert_null(strstr(text, "s3cret"));
    cJSON *j = cJSON_Parse(text);
    assert_non_null(j);
    cJSON *redis = cJSON_GetObjectItem(j, "redis");
    assert_string_equal(cJSON_GetObjectItem(redis, "url")->valuestring,
                        "redis://app:[redacted]@cache:6380/0");
    cJSON *kafka = cJSON_GetObjectItem(j, "kafka");
    assert_string_equal(cJSON_GetObjectItem(kafka, "sasl.password")->valuestring, "[redacted]");
    assert_string_equal(cJSON_GetObjectItem(kafka, "linger.ms")->valuestring, "5");
    assert_int_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "worker"), "threads")->valueint, 3);
    cJSON *roles = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "coordinator"), "roles");
    assert_int_equal(cJSON_GetArraySize(roles), 2);
    assert_string_equal(cJSON_GetArrayItem(roles, 1)->valuestring, "gallery");
    assert_string_equal(cJSON_GetObjectItem(j, "simd")->valuestring, "avx2");
    assert_true(cJSON_IsFalse(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "http"), "enabled")));
    cJSON_Delete(j);
    free(text);
    bm_conf_destroy(c);

    /* A bare password in the userinfo goes whole; no userinfo stays. */
    const char *env[] = {"BIOMATCH_REDIS_URL=redis://pw@h:1", NULL};
    c = parse_env(NULL, env);
    assert_non_null(c);
    assert_int_equal(bm_conf_dump(c, &text), BM_OK);
    assert_non_null(strstr(text, "\"redis://[redacted]@h:1\""));
    assert_null(strstr(text, "pw@"));
    free(text);
    bm_conf_destroy(c);
}

/* Replication of the topics biomatch creates, from file and environment;
 * min.insync.replicas above the replication factor is refused. */
static void test_topics(void **state)
{
    (void)state;
    struct bm_conf *c = parse(NULL);
    assert_non_null(c);
    assert_int_equal(c->topics.replication_factor, 0);
    assert_int_equal(c->topics.min_insync_replicas, 0);
    bm_conf_destroy(c);
    c = parse("topics:\n  replication_factor: 3\n  min_insync_replicas: 2\n");
    if (c == NULL)
        fail_msg("%s", err);
    assert_int_equal(c->topics.replication_factor, 3);
    assert_int_equal(c->topics.min_insync_replicas, 2);
    bm_conf_destroy(c);
    const char *const env[] = {"BIOMATCH_TOPICS_REPLICATION_FACTOR=5", NULL};
    c = parse_env("topics: {replication_factor: 3}\n", env);
    assert_non_null(c);
    assert_int_equal(c->topics.replication_factor, 5);
    bm_conf_destroy(c);
    expect_error("topics: {replication_factor: 2, min_insync_replicas: 3}\n", NULL,
                 "must not exceed");
    expect_error("topics: {replication_factor: 33}\n", NULL, "topics.replication_factor");
    expect_error("topics: {replicas: 3}\n", NULL, "unknown key 'topics.replicas'");
}

/* acks=all and idempotence are not the operator's to turn off. */
static void test_kafka_durability(void **state)
{
    (void)state;
    expect_error("kafka:\n  acks: 1\n", NULL, "'kafka.acks: 1'");
    expect_error("kafka:\n  request.required.acks: 0\n", NULL, "acks=all");
    expect_error("kafka:\n  enable.idempotence: false\n", NULL, "idempotence");
    struct bm_conf *c = parse("kafka:\n  acks: all\n  enable.idempotence: true\n");
    if (c == NULL)
        fail_msg("%s", err);
    assert_string_equal(bm_conf_kafka_get(c, "acks"), "all");
    bm_conf_destroy(c);
    c = parse("kafka:\n  acks: -1\n");
    assert_non_null(c);
    bm_conf_destroy(c);
}

/* redis.cluster: seed URLs from the file or the environment, checked,
 * redacted in the dump; redis+cluster:// is a valid redis.url. */
static void test_redis_cluster(void **state)
{
    (void)state;
    const char *yaml = "redis:\n  cluster:\n    - redis://:s3cret@a:7000\n"
                       "    - redis://:s3cret@b:7001\n";
    struct bm_conf *c = parse(yaml);
    if (c == NULL)
        fail_msg("%s", err);
    assert_int_equal(c->redis.cluster_n, 2);
    assert_string_equal(c->redis.cluster[1], "redis://:s3cret@b:7001");
    char *text = NULL;
    assert_int_equal(bm_conf_dump(c, &text), BM_OK);
    assert_null(strstr(text, "s3cret"));
    assert_non_null(strstr(text, "\"redis://:[redacted]@a:7000\""));
    free(text);
    bm_conf_destroy(c);

    const char *env[] = {"BIOMATCH_REDIS_CLUSTER=rediss://x:1, rediss://y:2",
                         "BIOMATCH_REDIS_URL=redis+cluster://h:1,h:2", NULL};
    c = parse_env(NULL, env);
    if (c == NULL)
        fail_msg("%s", err);
    assert_int_equal(c->redis.cluster_n, 2);
    assert_string_equal(c->redis.cluster[1], "rediss://y:2");
    assert_string_equal(c->redis.url, "redis+cluster://h:1,h:2");
    bm_conf_destroy(c);

    expect_error("redis:\n  cluster: [http://a:1]\n", NULL,
                 "'redis.cluster' entries must start with redis://");
    const char *bad[] = {"BIOMATCH_REDIS_URL=cluster://h:1", NULL};
    expect_error(NULL, bad, "redis.url must start with");
}

static void test_load_file(void **state)
{
    (void)state;
    char path[] = "/tmp/bm_test_conf.XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *yaml = "node_id: from-file\nhttp:\n  port: 1234\n";
    assert_int_equal(write(fd, yaml, strlen(yaml)), (ssize_t)strlen(yaml));
    close(fd);
    unsetenv("BIOMATCH_NODE_ID");
    setenv("BIOMATCH_HTTP_PORT", "4321", 1);
    struct bm_conf *c = bm_conf_load(path, err, sizeof err);
    unsetenv("BIOMATCH_HTTP_PORT");
    if (c == NULL)
        fail_msg("%s", err);
    assert_string_equal(c->node_id, "from-file");
    assert_int_equal(c->http.port, 4321);
    bm_conf_destroy(c);
    unlink(path);
    assert_null(bm_conf_load(path, err, sizeof err));
    assert_non_null(strstr(err, "cannot open"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_good_file),
        cmocka_unit_test(test_kafka_verbatim),
        cmocka_unit_test(test_unknown_keys),
        cmocka_unit_test(test_wrong_types),
        cmocka_unit_test(test_ranges),
        cmocka_unit_test(test_env_precedence),
        cmocka_unit_test(test_dump_redacts),
        cmocka_unit_test(test_topics),
        cmocka_unit_test(test_kafka_durability),
        cmocka_unit_test(test_redis_cluster),
        cmocka_unit_test(test_load_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
