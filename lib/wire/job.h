/* Validation of a decoded MatchJob, shared by intake and by clients that
 * want to reject a job before sending it, and of a decoded MatchTask, used
 * by workers: one set of rules and limits for both.
 *
 * The rules, in the order they are checked, and the ErrorCode of each are
 * the table in docs/wire.md ("MatchJob validation"). A job that passes may
 * be fanned out as is: every string is valid UTF-8 within its limit (so
 * results built from it decode in strict clients such as Python's
 * protobuf), every probe passed bm_wire_validate_template(), and top_k and
 * the deadline are within the limits given.
 *
 * Nothing is allocated; messages never contain template data.
 * Thread: any. */
#ifndef BM_WIRE_JOB_H
#define BM_WIRE_JOB_H

#include <stddef.h>
#include <stdint.h>

#include "biomatch.pb-c.h"

#define BM_WIRE_MAX_ID_BYTES 128   /* job_id, subject ids, request ids */
#define BM_WIRE_MAX_NAME_BYTES 128 /* agency */
#define BM_WIRE_MAX_TOPIC_BYTES 249 /* Kafka's own limit on topic names */

/* Limits a deployment may tune (conf). */
struct bm_wire_limits {
    uint32_t max_probes;          /* probes per job (default 16) */
    uint32_t max_top_k;           /* default 1000 */
    int64_t max_deadline_ms;      /* a deadline at most now + this (default 300000) */
    int64_t max_clock_skew_ms;    /* a deadline down to now - this is still accepted: the
                                   * client's clock may be behind (default 0; 0 .. 600000) */
    uint32_t max_attributes;      /* attribute entries (default 32) */
    uint32_t max_attribute_bytes; /* per key and per value (default 1024) */
};

/* Fill 'l' with the defaults above. */
void bm_wire_limits_default(struct bm_wire_limits *l);

/* Validate 'job' against 'gallery_def' (the definition of the gallery the
 * job names, NULL when it is unknown) at time 'now_ms' (Unix ms).
 * Returns BM_OK, or BM_EINVAL with *code set to the ErrorCode to put in the
 * REJECTED result and the reason in 'err'. *code is ERROR_CODE_NONE on
 * success. 'limits' NULL means the defaults. */
int bm_wire_validate_job(const Biomatch__V1__MatchJob *job,
                         const Biomatch__V1__GalleryDefinition *gallery_def, int64_t now_ms,
                         const struct bm_wire_limits *limits, Biomatch__V1__ErrorCode *code,
                         char *err, size_t errlen);

/* Validate 'task' as a task for shard 'shard' of the gallery defined by
 * 'gallery_def' (the definition the worker serves; not NULL). The rules are
 * those of bm_wire_validate_job() that a task carries (ids, mode, top_k,
 * threshold, probes), checked against the same 'limits', plus: the task
 * names that gallery (UNKNOWN_GALLERY) and that shard of its shard count
 * (INVALID_VALUE). The deadline is not checked: an expired task is answered
 * DEADLINE_EXCEEDED by the worker, not refused. Returns BM_OK, or
 * BM_EINVAL with *code and the reason in 'err'. 'limits' NULL means the
 * defaults. */
int bm_wire_validate_task(const Biomatch__V1__MatchTask *task,
                          const Biomatch__V1__GalleryDefinition *gallery_def, uint32_t shard,
                          const struct bm_wire_limits *limits, Biomatch__V1__ErrorCode *code,
                          char *err, size_t errlen);

/* 1 when s[0..len) is well-formed UTF-8 (no overlongs, no surrogates,
 * nothing above U+10FFFF), else 0. */
int bm_wire_utf8_valid(const char *s, size_t len);

/* Longest job key: 3 digits, ':', agency and job id at their limits, NUL. */
#define BM_WIRE_JOB_KEY_MAX (4 + BM_WIRE_MAX_NAME_BYTES + BM_WIRE_MAX_ID_BYTES + 1)

/* The key of a job inside biomatch (docs/wire.md section 1): job ids are
 * namespaced by agency, so two agencies may use the same job id at once.
 * Writes "<decimal byte length of agency>:<agency><job_id>" (the length
 * makes the split unambiguous, e.g. "2:A1job-7") into 'out'. Used as the
 * Kafka key of tasks, partials and results and as the aggregator's job
 * table key. Returns the key's length, or 0 when it does not fit 'outlen'
 * (then 'out' holds ""). NULL strings count as "". Thread: any. */
size_t bm_wire_job_key(const char *agency, const char *job_id, char *out, size_t outlen);

/* 1 when 'id' is a valid subject id: 1..128 bytes of UTF-8. */
int bm_wire_subject_id_valid(const char *id);

/* 1 when 'name' is a legal Kafka topic name (1..249 of [A-Za-z0-9._-],
 * not "." or ".."). */
int bm_wire_topic_valid(const char *name);

#endif /* BM_WIRE_JOB_H */
