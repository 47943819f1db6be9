/* Configuration for every biomatch process: built-in defaults, then a YAML
 * file, then BIOMATCH_* environment variables (each later source wins), plus
 * a `kafka:` map handed verbatim to librdkafka. docs/config.md lists every
 * key, its environment variable, default and range.
 *
 * Invariant: a struct bm_conf that a load function returns is complete and
 * valid: every key holds its default or a value that passed the same checks
 * whether it came from the file or the environment, and cross-key rules hold
 * (see docs/config.md). Unknown keys anywhere in the file are an error that
 * names the key and its line; nothing is silently ignored.
 *
 * Thread: loading and destroying from one thread; a loaded bm_conf is
 * read-only and may be shared by any number of threads. */
#ifndef BM_CONF_H
#define BM_CONF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Bits of coordinator.roles. */
enum bm_conf_role {
    BM_CONF_ROLE_INTAKE = 1,
    BM_CONF_ROLE_AGGREGATE = 2,
    BM_CONF_ROLE_GALLERY = 4,
    BM_CONF_ROLE_ALL = 7,
};

struct bm_conf_kv {
    char *key;
    char *value;
};

struct bm_conf {
    char *node_id;           /* node_id; default: the host name */
    char *topic_prefix;      /* topic_prefix; default "biomatch." */
    char *brokers;           /* brokers: librdkafka bootstrap.servers */
    struct bm_conf_kv *kafka; /* kafka: map, in file order, values verbatim */
    size_t kafka_n;
    struct {
        int replication_factor;    /* of every topic biomatch creates; 0 = the broker's default */
        int min_insync_replicas;   /* set on every topic biomatch creates; 0 = the broker's default */
        int64_t max_record_bytes;  /* the one record size limit: producers' message.max.bytes,
                                    * topics' max.message.bytes, results and dlq bounds */
        bool dlq_stubs_only;       /* dead letters never copy the original (docs/wire.md) */
    } topics;
    struct {
        char *url;                 /* redis://[user:password@]host:port, or
                                      redis+cluster://[creds@]h1:p1,h2:p2 */
        char **cluster;            /* Redis Cluster seed URLs; when set they
                                      are used instead of url */
        size_t cluster_n;
        int connect_timeout_ms;
        int io_timeout_ms;
        int64_t max_reply_bytes;
        char *tls_ca_file;         /* rediss:// only; NULL: system trust store */
        char *tls_cert_file;       /* client certificate (mutual TLS); NULL: none */
        char *tls_key_file;        /* its key; NULL: in tls_cert_file */
    } redis;
    struct {
        bool enabled;              /* serve /metrics, /livez, /readyz */
        int port;                  /* 0 = pick a free port */
        char *bind;                /* numeric address */
        int livez_max_age_ms;      /* heartbeat age that makes /livez 503 */
    } http;
    struct {
        char *level;               /* debug|info|warn|error|off */
    } log;
    struct {
        int threads;
        int batch_max_probes;
        int batch_max_wait_ms;
        char **galleries;          /* gallery names this worker serves */
        size_t galleries_n;
        int min_version_wait_ms;
        int refresh_interval_ms;   /* how often loaded shards follow their manifest */
        int drain_timeout_ms;
        int max_task_attempts;     /* a task is scored at most this often (poison) */
        int max_scoring_ms;        /* longer on one batch = hung: exit to be retried */
    } worker;
    int max_clock_skew_ms;         /* deadline checks tolerate this much clock skew */
    struct {
        int default_deadline_ms;
        int64_t max_job_bytes;
        int max_job_attempts;      /* a job's result is attempted at most this often (poison) */
        int max_top_k;
        int64_t segment_max_bytes;
        int segment_max_age_ms;
        unsigned roles;            /* enum bm_conf_role bits */
    } coordinator;
    struct {
        char *at_rest_key_file;    /* NULL: templates at rest unencrypted */
        char *at_rest_key_id;      /* NULL iff at_rest_key_file is NULL */
        char **at_rest_previous_keys; /* "id=path" keys that only decrypt (rotation) */
        size_t at_rest_previous_keys_n;
        bool at_rest_allow_plaintext; /* with a key: still accept plaintext segments,
                                         records and unsigned manifests (migration) */
        char *policy_file;         /* NULL: no policy; the coordinator then needs dev_mode */
        bool dev_mode;             /* run without a policy (every agency may do anything) */
        int replay_window_ms;      /* signed timestamps older or newer than this are refused */
        char *audit_key_file;      /* NULL: the audit chain is unkeyed SHA-256 */
        char *audit_key_id;        /* NULL iff audit_key_file is NULL */
    } security;
    struct {
        int checkpoint_records;    /* a checkpoint after this many records */
        int checkpoint_interval_ms; /* and at least this often */
        bool log_subject_ids;      /* false: returned ids are logged as keyed hashes */
    } audit;
    char *simd;                    /* auto|scalar|avx2|avx512 */
};

/* Load defaults, then the YAML file at 'path' (NULL: no file), then the
 * process environment. On success returns a conf the caller frees with
 * bm_conf_destroy. On failure returns NULL and writes to 'err' one message
 * naming the source, line and key, e.g.
 *   "/etc/biomatch.yaml:12: unknown key 'redis.urll'". */
struct bm_conf *bm_conf_load(const char *path, char *err, size_t errlen);

/* The same from YAML text in memory ('len' bytes; NULL/0 = no file) and an
 * explicit environment ('envp': NULL-terminated "NAME=value" strings, NULL =
 * no environment). 'name' labels error messages ("<string>" when NULL). The
 * text and envp are only read during the call. */
struct bm_conf *bm_conf_parse(const char *yaml, size_t len, const char *name,
                              const char *const *envp, char *err, size_t errlen);

/* Free 'c' and everything it owns. Accepts NULL. */
void bm_conf_destroy(struct bm_conf *c);

/* The value of 'key' in the kafka: map, or NULL. Borrowed from 'c'. */
const char *bm_conf_kafka_get(const struct bm_conf *c, const char *key);

/* Render 'c' as pretty JSON (which is also valid YAML) for --check-config,
 * with secrets redacted: the password in redis.url and kafka: values whose
 * key mentions a password, secret or private key. On BM_OK *out is a
 * malloc'd NUL-terminated string the caller frees with free(); on
 * BM_ENOMEM *out is NULL. */
int bm_conf_dump(const struct bm_conf *c, char **out);

#endif /* BM_CONF_H */
