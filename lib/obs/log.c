/* JSON log lines; see log.h for the format and the personal data rule.
 *
 * Invariant: a line is built completely in a private buffer, then written
 * with one write() loop while holding 'write_lock', so concurrent lines never
 * interleave even when they exceed PIPE_BUF. The threshold and fd are atomics
 * so the hot "is this level enabled" check takes no lock. */
#include "obs/log.h"

#include "common/err.h"
#include "obs/buf.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

static atomic_int log_level = BM_LOG_INFO;
static atomic_int log_fd = 2;
static atomic_uint_fast64_t log_dropped;
static pthread_mutex_t write_lock = PTHREAD_MUTEX_INITIALIZER;

/* The component is written once under init_lock, then published with a
 * release store of component_set; readers never see a half-written name. */
static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;
static char component[64];
static atomic_bool component_set;

static pthread_mutex_t key_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t pseudo_k0, pseudo_k1;
static bool pseudo_keyed;

int bm_log_level_parse(const char *s, enum bm_log_level *out)
{
    static const struct { const char *name; enum bm_log_level level; } names[] = {
        {"debug", BM_LOG_DEBUG}, {"info", BM_LOG_INFO}, {"warn", BM_LOG_WARN},
        {"error", BM_LOG_ERROR}, {"off", BM_LOG_OFF},
    };
    if (s == NULL)
        return BM_EINVAL;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (strcmp(s, names[i].name) == 0) {
            *out = names[i].level;
            return BM_OK;
        }
    }
    return BM_EINVAL;
}

const char *bm_log_level_name(enum bm_log_level level)
{
    switch (level) {
    case BM_LOG_DEBUG: return "debug";
    case BM_LOG_INFO: return "info";
    case BM_LOG_WARN: return "warn";
    case BM_LOG_ERROR: return "error";
    case BM_LOG_OFF: return "off";
    }
    return "unknown";
}

int bm_log_init(const char *comp)
{
    pthread_mutex_lock(&init_lock);
    if (atomic_load_explicit(&component_set, memory_order_acquire)) {
        pthread_mutex_unlock(&init_lock);
        return BM_ECONFLICT;
    }
    snprintf(component, sizeof component, "%s", comp != NULL ? comp : "-");
    atomic_store_explicit(&component_set, true, memory_order_release);
    pthread_mutex_unlock(&init_lock);

    const char *env = getenv("BIOMATCH_LOG_LEVEL");
    if (env == NULL || *env == '\0')
        return BM_OK;
    enum bm_log_level level;
    if (bm_log_level_parse(env, &level) != BM_OK) {
        BM_LOGF(BM_LOG_WARN, "BIOMATCH_LOG_LEVEL is not debug|info|warn|error|off; using info",
                BM_LF_STR("value", env));
        return BM_EINVAL;
    }
    bm_log_set_level(level);
    return BM_OK;
}

void bm_log_set_level(enum bm_log_level level)
{
    atomic_store_explicit(&log_level, (int)level, memory_order_relaxed);
}

enum bm_log_level bm_log_get_level(void)
{
    return (enum bm_log_level)atomic_load_explicit(&log_level, memory_order_relaxed);
}

bool bm_log_enabled(enum bm_log_level level)
{
    return level != BM_LOG_OFF &&
           (int)level >= atomic_load_explicit(&log_level, memory_order_relaxed);
}

void bm_log_set_fd(int fd)
{
    atomic_store_explicit(&log_fd, fd, memory_order_relaxed);
}

uint64_t bm_log_dropped(void)
{
    return atomic_load_explicit(&log_dropped, memory_order_relaxed);
}

/* SipHash-2-4 (Aumasson and Bernstein), written from the paper's
 * description: a keyed PRF, so pseudonyms of low-entropy ids (national id
 * numbers) cannot be reversed by hashing every candidate without the key. */
static uint64_t rotl64(uint64_t x, int b)
{
    return (x << b) | (x >> (64 - b));
}

#define SIPROUND                                                               \
    do {                                                                       \
        v0 += v1; v1 = rotl64(v1, 13); v1 ^= v0; v0 = rotl64(v0, 32);         \
        v2 += v3; v3 = rotl64(v3, 16); v3 ^= v2;                               \
        v0 += v3; v3 = rotl64(v3, 21); v3 ^= v0;                               \
        v2 += v1; v1 = rotl64(v1, 17); v1 ^= v2; v2 = rotl64(v2, 32);         \
    } while (0)

static uint64_t siphash24(uint64_t k0, uint64_t k1, const unsigned char *m, size_t n)
{
    uint64_t v0 = k0 ^ 0x736f6d6570736575ULL, v1 = k1 ^ 0x646f72616e646f6dULL;
    uint64_t v2 = k0 ^ 0x6c7967656e657261ULL, v3 = k1 ^ 0x7465646279746573ULL;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w = 0;
        for (int j = 7; j >= 0; j--)
            w = (w << 8) | m[i + (size_t)j];
        v3 ^= w;
        SIPROUND;
        SIPROUND;
        v0 ^= w;
    }
    uint64_t last = (uint64_t)(n & 0xff) << 56;
    for (size_t j = 0; i + j < n; j++)
        last |= (uint64_t)m[i + j] << (8 * j);
    v3 ^= last;
    SIPROUND;
    SIPROUND;
    v0 ^= last;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

static uint64_t load_le64(const uint8_t *p)
{
    uint64_t w = 0;
    for (int j = 7; j >= 0; j--)
        w = (w << 8) | p[j];
    return w;
}

void bm_log_set_pseudonym_key(const uint8_t key[16])
{
    pthread_mutex_lock(&key_lock);
    pseudo_k0 = load_le64(key);
    pseudo_k1 = load_le64(key + 8);
    pseudo_keyed = true;
    pthread_mutex_unlock(&key_lock);
}

void bm_log_pseudonym(const char *id, size_t len, char out[BM_LOG_PSEUDONYM_LEN])
{
    pthread_mutex_lock(&key_lock);
    if (!pseudo_keyed) {
        uint8_t key[16];
        /* Without randomness we fall back to a time-derived key: weaker, but
         * never the same fixed key in every process. */
        if (getrandom(key, sizeof key, 0) != (ssize_t)sizeof key) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            uint64_t t = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
            for (size_t i = 0; i < sizeof key; i++)
                key[i] = (uint8_t)((t >> (8 * (i % 8))) ^ (uint64_t)getpid() ^ i);
        }
        pseudo_k0 = load_le64(key);
        pseudo_k1 = load_le64(key + 8);
        pseudo_keyed = true;
    }
    uint64_t k0 = pseudo_k0, k1 = pseudo_k1;
    pthread_mutex_unlock(&key_lock);
    uint64_t h = siphash24(k0, k1, (const unsigned char *)(id != NULL ? id : ""),
                           id != NULL ? len : 0);
    snprintf(out, BM_LOG_PSEUDONYM_LEN, "%016llx", (unsigned long long)h);
}

enum field_class { FIELD_PLAIN, FIELD_NEVER, FIELD_ID };

static enum field_class classify(const char *key)
{
    static const char *const never[] = {"template", "templates", "probe", "probes"};
    static const char *const ids[] = {"subject", "subject_id", "claimed_subject",
                                      "job", "job_id"};
    for (size_t i = 0; i < sizeof never / sizeof never[0]; i++)
        if (strcmp(key, never[i]) == 0)
            return FIELD_NEVER;
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++)
        if (strcmp(key, ids[i]) == 0)
            return FIELD_ID;
    return FIELD_PLAIN;
}

static bool reserved_key(const char *key)
{
    return strcmp(key, "ts") == 0 || strcmp(key, "level") == 0 ||
           strcmp(key, "component") == 0 || strcmp(key, "msg") == 0;
}

static void put_value_str(struct bm_obs_buf *b, const char *s)
{
    if (s == NULL) {
        bm_obs_buf_puts(b, "null");
        return;
    }
    size_t n = strlen(s);
    if (n <= BM_LOG_MAX_VALUE) {
        bm_obs_buf_json_str(b, s, n);
        return;
    }
    /* A cut in the middle of a UTF-8 sequence only costs one U+FFFD. */
    bm_obs_buf_json_str(b, s, BM_LOG_MAX_VALUE);
    if (!b->oom)
        b->len--; /* drop the closing quote */
    bm_obs_buf_puts(b, "...[truncated]\"");
}

static void put_field(struct bm_obs_buf *b, enum bm_log_level level,
                      const struct bm_log_field *f)
{
    const char *key = f->key != NULL ? f->key : "";
    bm_obs_buf_append(b, ",", 1);
    if (reserved_key(key)) {
        struct bm_obs_buf k = BM_OBS_BUF_INIT;
        bm_obs_buf_puts(&k, "f_");
        bm_obs_buf_puts(&k, key);
        bm_obs_buf_json_str(b, k.p, k.oom ? 0 : k.len);
        bm_obs_buf_free(&k);
    } else {
        bm_obs_buf_json_str(b, key, strlen(key));
    }
    bm_obs_buf_append(b, ":", 1);

    enum field_class cls = classify(key);
    if (cls == FIELD_NEVER || (cls == FIELD_ID && level != BM_LOG_DEBUG)) {
        bm_obs_buf_puts(b, "\"[redacted]\"");
        return;
    }
    char tmp[32];
    if (cls == FIELD_ID) {
        /* Numbers are pseudonymised through their decimal text. */
        const char *id = f->s;
        if (f->type != BM_LOG_F_STR) {
            snprintf(tmp, sizeof tmp, "%lld", (long long)f->i);
            id = tmp;
        }
        if (id == NULL) {
            bm_obs_buf_puts(b, "null");
            return;
        }
        char p[BM_LOG_PSEUDONYM_LEN];
        bm_log_pseudonym(id, strlen(id), p);
        bm_obs_buf_printf(b, "\"p:%s\"", p);
        return;
    }
    switch (f->type) {
    case BM_LOG_F_STR:
        put_value_str(b, f->s);
        break;
    case BM_LOG_F_INT:
        bm_obs_buf_printf(b, "%lld", (long long)f->i);
        break;
    case BM_LOG_F_DBL:
        if (isfinite(f->d))
            bm_obs_buf_double(b, f->d, "null", "null");
        else
            bm_obs_buf_puts(b, "null"); /* JSON has no NaN or infinity */
        break;
    case BM_LOG_F_BOOL:
        bm_obs_buf_puts(b, f->i ? "true" : "false");
        break;
    default:
        bm_obs_buf_puts(b, "null");
        break;
    }
}

static void format_line(struct bm_obs_buf *b, enum bm_log_level level, const char *msg,
                        const struct bm_log_field *fields, size_t n)
{
    struct timespec ts;
    struct tm tm;
    char when[40];
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t w = strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(when + w, sizeof when - w, ".%03ldZ", ts.tv_nsec / 1000000L);

    const char *comp = atomic_load_explicit(&component_set, memory_order_acquire)
                           ? component : "-";
    bm_obs_buf_printf(b, "{\"ts\":\"%s\",\"level\":\"%s\",\"component\":", when,
                      bm_log_level_name(level));
    bm_obs_buf_json_str(b, comp, strlen(comp));
    bm_obs_buf_puts(b, ",\"msg\":");
    put_value_str(b, msg != NULL ? msg : "");
    for (size_t i = 0; i < n; i++)
        put_field(b, level, &fields[i]);
    bm_obs_buf_puts(b, "}\n");
}

char *bm_log_format(enum bm_log_level level, const char *msg,
                    const struct bm_log_field *fields, size_t n)
{
    struct bm_obs_buf b = BM_OBS_BUF_INIT;
    format_line(&b, level, msg, fields, n);
    return bm_obs_buf_take(&b, NULL);
}

static void write_line(const char *p, size_t n)
{
    int fd = atomic_load_explicit(&log_fd, memory_order_relaxed);
    bool ok = true;
    pthread_mutex_lock(&write_lock);
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            ok = false;
            break;
        }
        p += w;
        n -= (size_t)w;
    }
    pthread_mutex_unlock(&write_lock);
    if (!ok)
        atomic_fetch_add_explicit(&log_dropped, 1, memory_order_relaxed);
}

void bm_log_fields(enum bm_log_level level, const char *msg,
                   const struct bm_log_field *fields, size_t n)
{
    if (!bm_log_enabled(level))
        return;
    int saved = errno; /* callers often log right before reporting errno */
    struct bm_obs_buf b = BM_OBS_BUF_INIT;
    format_line(&b, level, msg, fields, n);
    if (b.oom)
        atomic_fetch_add_explicit(&log_dropped, 1, memory_order_relaxed);
    else
        write_line(b.p, b.len);
    bm_obs_buf_free(&b);
    errno = saved;
}

void bm_log_kafka(void *opaque, int level, const char *fac, const char *msg)
{
    enum bm_log_level l = level <= 3 ? BM_LOG_ERROR
                          : level == 4 ? BM_LOG_WARN
                          : level <= 6 ? BM_LOG_INFO
                                       : BM_LOG_DEBUG;
    const enum bm_log_level *cap = opaque;
    if (cap != NULL && l > *cap)
        l = *cap;
    BM_LOGF(l, "librdkafka", BM_LF_STR("facility", fac), BM_LF_STR("kafka", msg));
}
