/* MatchJob validation (job.h). Checks run cheapest first and stop at the
 * first failure, so a job is rejected for one clear reason; the probe scan,
 * the only step linear in the payload size, comes last. */
#include "wire/job.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common/err.h"
#include "wire/template.h"

#define EC(x) BIOMATCH__V1__ERROR_CODE__ERROR_CODE_##x

void bm_wire_limits_default(struct bm_wire_limits *l)
{
    l->max_probes = 16;
    l->max_top_k = 1000;
    l->max_deadline_ms = 300000;
    l->max_clock_skew_ms = 0;
    l->max_attributes = 32;
    l->max_attribute_bytes = 1024;
}

int bm_wire_utf8_valid(const char *str, size_t len)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < len) {
        unsigned c = s[i];
        size_t n;
        uint32_t cp, min;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            n = 1, cp = c & 0x1f, min = 0x80;
        } else if ((c & 0xf0) == 0xe0) {
            n = 2, cp = c & 0x0f, min = 0x800;
        } else if ((c & 0xf8) == 0xf0) {
            n = 3, cp = c & 0x07, min = 0x10000;
        } else {
            return 0;
        }
        if (len - i - 1 < n)
            return 0;
        for (size_t k = 1; k <= n; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += n + 1;
    }
    return 1;
}

int bm_wire_subject_id_valid(const char *id)
{
    size_t n = id ? strlen(id) : 0;
    return n >= 1 && n <= BM_WIRE_MAX_ID_BYTES && bm_wire_utf8_valid(id, n);
}

int bm_wire_topic_valid(const char *name)
{
    size_t n = name ? strlen(name) : 0;
    if (n == 0 || n > BM_WIRE_MAX_TOPIC_BYTES || strcmp(name, ".") == 0 ||
        strcmp(name, "..") == 0)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

static int reject(Biomatch__V1__ErrorCode *code, Biomatch__V1__ErrorCode c, char *err,
                  size_t errlen, const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* Record the ErrorCode and the reason, and return BM_EINVAL. */
static int reject(Biomatch__V1__ErrorCode *code, Biomatch__V1__ErrorCode c, char *err,
                  size_t errlen, const char *fmt, ...)
{
    *code = c;
    if (err != NULL && errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return BM_EINVAL;
}

/* Check one string field: required or not, at most 'max' bytes, UTF-8. */
static int check_str(const char *s, const char *field, int required, size_t max,
                     Biomatch__V1__ErrorCode *code, char *err, size_t errlen)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0)
        return required ? reject(code, EC(MISSING_FIELD), err, errlen, "%s is empty", field)
                        : BM_OK;
    if (n > max)
        return reject(code, EC(INVALID_VALUE), err, errlen, "%s is %zu bytes, limit %zu", field,
                      n, max);
    if (!bm_wire_utf8_valid(s, n))
        return reject(code, EC(INVALID_VALUE), err, errlen, "%s is not valid UTF-8", field);
    return BM_OK;
}

static const struct bm_wire_limits *limits_or_default(const struct bm_wire_limits *l,
                                                      struct bm_wire_limits *defl)
{
    if (l != NULL)
        return l;
    bm_wire_limits_default(defl);
    return defl;
}

/* The scoring options a job and its tasks share: mode, top_k for it, the
 * claimed subject of VERIFY and a finite threshold. */
static int check_scoring(Biomatch__V1__MatchMode mode, uint32_t top_k, const char *claimed,
                         protobuf_c_boolean has_threshold, float threshold,
                         const struct bm_wire_limits *limits, Biomatch__V1__ErrorCode *code,
                         char *err, size_t errlen)
{
    switch (mode) {
    case BIOMATCH__V1__MATCH_MODE__MATCH_MODE_IDENTIFY:
        if (top_k < 1 || top_k > limits->max_top_k)
            return reject(code, EC(INVALID_TOP_K), err, errlen, "top_k %u not in 1..%u", top_k,
                          limits->max_top_k);
        break;
    case BIOMATCH__V1__MATCH_MODE__MATCH_MODE_VERIFY:
        if (claimed == NULL || claimed[0] == '\0')
            return reject(code, EC(MISSING_FIELD), err, errlen, "VERIFY needs claimed_subject");
        /* top_k means nothing for VERIFY; 0 is accepted so clients can
         * leave it unset, anything else must still be in range. */
        if (top_k > limits->max_top_k)
            return reject(code, EC(INVALID_TOP_K), err, errlen, "top_k %u not in 0..%u", top_k,
                          limits->max_top_k);
        break;
    case BIOMATCH__V1__MATCH_MODE__MATCH_MODE_UNSPECIFIED:
        return reject(code, EC(MISSING_FIELD), err, errlen, "mode is unspecified");
    default:
        return reject(code, EC(UNSUPPORTED), err, errlen, "mode %d is not supported", (int)mode);
    }
    if (has_threshold && !isfinite(threshold))
        return reject(code, EC(INVALID_VALUE), err, errlen, "threshold is not finite");
    return BM_OK;
}

/* 1..max_probes probes, each valid for gallery 'g'. Last: the only check
 * linear in the payload size. */
static int check_probes(Biomatch__V1__Template *const *probes, size_t n,
                        const Biomatch__V1__GalleryDefinition *g,
                        const struct bm_wire_limits *limits, Biomatch__V1__ErrorCode *code,
                        char *err, size_t errlen)
{
    char why[160];
    if (n < 1)
        return reject(code, EC(MISSING_FIELD), err, errlen, "no probe");
    if (n > limits->max_probes)
        return reject(code, EC(TOO_LARGE), err, errlen, "%zu probes, limit %u", n,
                      limits->max_probes);
    for (size_t i = 0; i < n; i++) {
        Biomatch__V1__ErrorCode c = bm_wire_validate_template(probes[i], g, why, sizeof why);
        if (c != EC(NONE))
            return reject(code, c, err, errlen, "probe %zu: %s", i, why);
    }
    return BM_OK;
}

int bm_wire_validate_job(const Biomatch__V1__MatchJob *job,
                         const Biomatch__V1__GalleryDefinition *g, int64_t now_ms,
                         const struct bm_wire_limits *limits, Biomatch__V1__ErrorCode *code,
                         char *err, size_t errlen)
{
    struct bm_wire_limits defl;
    limits = limits_or_default(limits, &defl);
    *code = EC(NONE);
    if (job == NULL)
        return reject(code, EC(MALFORMED), err, errlen, "no job");

    int rc;
    if ((rc = check_str(job->job_id, "job_id", 1, BM_WIRE_MAX_ID_BYTES, code, err, errlen)) ||
        (rc = check_str(job->agency, "agency", 1, BM_WIRE_MAX_NAME_BYTES, code, err, errlen)) ||
        (rc = check_str(job->gallery, "gallery", 1, 64, code, err, errlen)) ||
        (rc = check_str(job->claimed_subject, "claimed_subject", 0, BM_WIRE_MAX_ID_BYTES, code,
                        err, errlen)))
        return rc;
    if (job->reply_topic && job->reply_topic[0] && !bm_wire_topic_valid(job->reply_topic))
        return reject(code, EC(INVALID_VALUE), err, errlen,
                      "reply_topic is not a legal Kafka topic name");
    if (job->n_attributes > limits->max_attributes)
        return reject(code, EC(TOO_LARGE), err, errlen, "%zu attributes, limit %u",
                      job->n_attributes, limits->max_attributes);
    for (size_t i = 0; i < job->n_attributes; i++) {
        const Biomatch__V1__MatchJob__AttributesEntry *a = job->attributes[i];
        size_t kl = a && a->key ? strlen(a->key) : 0, vl = a && a->value ? strlen(a->value) : 0;
        if (kl > limits->max_attribute_bytes || vl > limits->max_attribute_bytes)
            return reject(code, EC(TOO_LARGE), err, errlen,
                          "attribute %zu over %u bytes", i, limits->max_attribute_bytes);
        if (!bm_wire_utf8_valid(a && a->key ? a->key : "", kl) ||
            !bm_wire_utf8_valid(a && a->value ? a->value : "", vl))
            return reject(code, EC(INVALID_VALUE), err, errlen, "attribute %zu is not UTF-8", i);
    }

    if (g == NULL || g->name == NULL || strcmp(g->name, job->gallery) != 0)
        return reject(code, EC(UNKNOWN_GALLERY), err, errlen, "unknown gallery \"%s\"",
                      job->gallery);

    char why[160];
    if (bm_wire_validate_gallery_def(g, why, sizeof why) != EC(NONE))
        return reject(code, EC(INTERNAL), err, errlen, "gallery definition invalid: %s", why);

    if ((rc = check_scoring(job->mode, job->top_k, job->claimed_subject, job->has_threshold,
                            job->threshold, limits, code, err, errlen)) != BM_OK)
        return rc;

    /* A deadline up to max_clock_skew_ms in the past is the client's clock
     * running behind ours, not an expired job: it is accepted (and ends
     * TIMEOUT at once if it really passed). Unsigned difference: defined
     * for any int64 pair once deadline > now. */
    int64_t earliest = now_ms - limits->max_clock_skew_ms;
    if (job->deadline_unix_ms != 0 &&
        (job->deadline_unix_ms <= earliest ||
         (job->deadline_unix_ms > now_ms &&
          (uint64_t)job->deadline_unix_ms - (uint64_t)now_ms > (uint64_t)limits->max_deadline_ms)))
        return reject(code, EC(INVALID_DEADLINE), err, errlen,
                      "deadline must be 0 or within (now - %lld ms, now + %lld ms]",
                      (long long)limits->max_clock_skew_ms, (long long)limits->max_deadline_ms);

    return check_probes(job->probes, job->n_probes, g, limits, code, err, errlen);
}

int bm_wire_validate_task(const Biomatch__V1__MatchTask *t,
                          const Biomatch__V1__GalleryDefinition *g, uint32_t shard,
                          const struct bm_wire_limits *limits, Biomatch__V1__ErrorCode *code,
                          char *err, size_t errlen)
{
    struct bm_wire_limits defl;
    limits = limits_or_default(limits, &defl);
    *code = EC(NONE);
    if (t == NULL || g == NULL)
        return reject(code, EC(MALFORMED), err, errlen, "no task or no gallery");
    int rc;
    if ((rc = check_str(t->job_id, "job_id", 1, BM_WIRE_MAX_ID_BYTES, code, err, errlen)) ||
        (rc = check_str(t->claimed_subject, "claimed_subject", 0, BM_WIRE_MAX_ID_BYTES, code,
                        err, errlen)))
        return rc;
    if (t->gallery == NULL || g->name == NULL || strcmp(t->gallery, g->name) != 0)
        return reject(code, EC(UNKNOWN_GALLERY), err, errlen,
                      "task names another gallery than its topic");
    if (t->shard_count != g->shards || t->shard != shard)
        return reject(code, EC(INVALID_VALUE), err, errlen,
                      "task for shard %u of %u arrived for shard %u of %u", t->shard,
                      t->shard_count, shard, g->shards);
    if ((rc = check_scoring(t->mode, t->top_k, t->claimed_subject, t->has_threshold,
                            t->threshold, limits, code, err, errlen)) != BM_OK)
        return rc;
    return check_probes(t->probes, t->n_probes, g, limits, code, err, errlen);
}

size_t bm_wire_job_key(const char *agency, const char *job_id, char *out, size_t outlen)
{
    const char *a = agency ? agency : "", *j = job_id ? job_id : "";
    int n = snprintf(out, outlen, "%zu:%s%s", strlen(a), a, j);
    if (n < 0 || (size_t)n >= outlen) {
        if (outlen > 0)
            out[0] = '\0';
        return 0;
    }
    return (size_t)n;
}
