/* Structured logging: one JSON object per line on stderr.
 *
 *   {"ts":"2025-01-02T03:04:05.678Z","level":"info","component":"worker",
 *    "msg":"shard loaded","gallery":"eu-face","shard":3}
 *
 * Invariant: every line is complete, valid UTF-8 JSON and reaches the file
 * descriptor in one write() under a process-wide lock, so lines from many
 * threads never interleave. Nothing is ever used as a format string: the
 * message and every field value are data and are JSON-escaped.
 *
 * PERSONAL DATA RULE (enforced here, documented in docs/internals/obs.md):
 *  - templates (and probes) are never logged, at any level. A field named
 *    "template", "templates", "probe" or "probes" is written as "[redacted]".
 *  - subject ids and job ids are not logged at info level or above. A field
 *    named "subject", "subject_id", "claimed_subject", "job" or "job_id"
 *    is written as "[redacted]" at info/warn/error, and as a pseudonym
 *    (see bm_log_pseudonym) at debug. Code must not smuggle such ids into
 *    'msg' or other field names; reviewers check for it.
 *
 * Thread: every function may be called from any thread. bm_log_init should
 * run once, early in main, before other threads log. */
#ifndef BM_LOG_H
#define BM_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum bm_log_level {
    BM_LOG_DEBUG = 0,
    BM_LOG_INFO = 1,
    BM_LOG_WARN = 2,
    BM_LOG_ERROR = 3,
    BM_LOG_OFF = 4, /* threshold only: log nothing */
};

/* A typed field for bm_log_fields / BM_LOGF. 'key' must be a string literal
 * (or otherwise outlive the call); it is escaped but should be [a-z0-9_]. */
enum bm_log_ftype { BM_LOG_F_STR, BM_LOG_F_INT, BM_LOG_F_DBL, BM_LOG_F_BOOL };
struct bm_log_field {
    const char *key;
    enum bm_log_ftype type;
    const char *s; /* BM_LOG_F_STR: NUL-terminated, NULL writes null */
    int64_t i;     /* BM_LOG_F_INT, BM_LOG_F_BOOL (0 = false) */
    double d;      /* BM_LOG_F_DBL: NaN/inf are written as null */
};

#define BM_LF_STR(k, v) ((struct bm_log_field){(k), BM_LOG_F_STR, (v), 0, 0.0})
#define BM_LF_INT(k, v) ((struct bm_log_field){(k), BM_LOG_F_INT, NULL, (int64_t)(v), 0.0})
#define BM_LF_DBL(k, v) ((struct bm_log_field){(k), BM_LOG_F_DBL, NULL, 0, (double)(v)})
#define BM_LF_BOOL(k, v) ((struct bm_log_field){(k), BM_LOG_F_BOOL, NULL, (v) ? 1 : 0, 0.0})

/* Log with typed fields; at least one field is required:
 *   BM_LOGF(BM_LOG_INFO, "shard loaded", BM_LF_STR("gallery", g),
 *           BM_LF_INT("shard", 3), BM_LF_DBL("seconds", 0.25)); */
#define BM_LOGF(level, msg, ...)                                              \
    do {                                                                      \
        if (bm_log_enabled(level)) {                                          \
            const struct bm_log_field bm_lf_[] = {__VA_ARGS__};               \
            bm_log_fields((level), (msg), bm_lf_,                             \
                          sizeof bm_lf_ / sizeof bm_lf_[0]);                  \
        }                                                                     \
    } while (0)

/* Set the process's component name ("worker", "coordinator", "cli"; at most
 * 63 bytes) and read the threshold from BIOMATCH_LOG_LEVEL when it is set.
 * The first call wins; later calls change nothing and return BM_ECONFLICT.
 * Returns BM_EINVAL (threshold left at info, component still set) when
 * BIOMATCH_LOG_LEVEL holds something other than debug|info|warn|error|off. */
int bm_log_init(const char *component);

/* Parse "debug", "info", "warn", "error", "off" (exactly the values conf's
 * log.level accepts). Returns BM_OK or BM_EINVAL (*out untouched). */
int bm_log_level_parse(const char *s, enum bm_log_level *out);
const char *bm_log_level_name(enum bm_log_level level);

/* The threshold: lines below it are dropped. Default BM_LOG_INFO. */
void bm_log_set_level(enum bm_log_level level);
enum bm_log_level bm_log_get_level(void);
bool bm_log_enabled(enum bm_log_level level);

/* Where lines go; default 2 (stderr). For tests and for a CLI that wants its
 * logs elsewhere. The fd stays owned by the caller. */
void bm_log_set_fd(int fd);

/* Log 'msg' with 'n' typed fields. Fields named ts, level, component or msg
 * are written with an "f_" prefix so they cannot shadow the envelope.
 * String values longer than BM_LOG_MAX_VALUE bytes are cut and end in
 * "...[truncated]". */
void bm_log_fields(enum bm_log_level level, const char *msg,
                   const struct bm_log_field *fields, size_t n);

#define BM_LOG_MAX_VALUE 4096

/* librdkafka's own log lines as JSON log lines. The signature is the bus's
 * log callback (bm_bus_log_fn: 'level' syslog-style 0..7, 'fac' the
 * facility), so a program sets it as bm_bus_conf.log instead of letting
 * librdkafka print raw "%3|...|FAIL|..." lines to stderr. Levels 0..3 log
 * as error, 4 as warn, 5..6 as info, 7 as debug; 'opaque', when not NULL,
 * points to an enum bm_log_level that caps the level (a command-line tool
 * that reports failures itself passes BM_LOG_DEBUG). Thread: any. */
void bm_log_kafka(void *opaque, int level, const char *fac, const char *msg);

/* Format one line into a malloc'd NUL-terminated string ending in '\n'
 * (exactly what bm_log_fields would write), ignoring the threshold. NULL on
 * out-of-memory. The caller frees it with free(). Used by tests. */
char *bm_log_format(enum bm_log_level level, const char *msg,
                    const struct bm_log_field *fields, size_t n);

/* A pseudonym for an identifier: 16 lowercase hex digits of SipHash-2-4 of
 * 'id' under the process's pseudonym key, written to 'out' (17 bytes with the
 * NUL). The key is random per process unless bm_log_set_pseudonym_key set
 * one; a deployment that wants pseudonyms to match across processes sets the
 * same key everywhere. Pseudonyms let an operator follow one job through the
 * debug log without the log holding the id itself. */
#define BM_LOG_PSEUDONYM_LEN 17
void bm_log_pseudonym(const char *id, size_t len, char out[BM_LOG_PSEUDONYM_LEN]);
void bm_log_set_pseudonym_key(const uint8_t key[16]);

/* Lines dropped because memory ran out or write() failed, since start. */
uint64_t bm_log_dropped(void);

#endif /* BM_LOG_H */
