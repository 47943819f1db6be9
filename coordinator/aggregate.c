/* The aggregate role: partials -> one MatchResult per job (docs/architecture.md
 * §3, docs/internals/coordinator.md "Aggregation").
 *
 * Main invariant: for every assigned partials partition the stored offset
 * is at most the first offset of any job whose result has not been
 * delivered yet (bm_merge_watermark over the open jobs), so a crash at any
 * point replays every unfinished job from its opened marker. A job leaves
 * the open list only when its result's delivery report is positive; only
 * then does it stop holding the offset back. Messages of jobs already
 * finished in this run are dropped (the done list remembers their ids), so
 * a run emits at most one result per job.
 *
 * All partials of a job share its key (job id), hence one partition and
 * one aggregator; per-shard duplicates are dropped by (job id, shard).
 *
 * Poison jobs: because a crash replays the job, a job whose merge crashes
 * the process would crash every aggregator forever. So before the first
 * emit of a job in a run, an attempt is counted in Redis
 * (store/attempts.h, key bm_key_job_attempts of its first partial's
 * offset) and deleted once the result is delivered; a job counted more
 * than coordinator.max_job_attempts times is answered ERROR/POISON without
 * merging, and its offsets move on as for any delivered result. */
#include "aggregate.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audit.h"
#include "authn.h"
#include "bus/dlq.h"
#include "common/clock.h"
#include "fault.h"
#include "conf/conf.h"
#include "conf/topics.h"
#include "jobtable.h"
#include "merge.h"
#include "minimise.h"
#include "obs/log.h"
#include "obs/skew.h"
#include "obs/metrics.h"
#include "store/attempts.h"
#include "store/keys.h"
#include "wire/decode.h"
#include "wire/shard.h"
#include "wire/template.h"
#include "wire/headers.h"
#include "wire/job.h"

#define POLL_MS 50
#define FLUSH_MS 10000
#define DONE_WINDOW_MS (10 * 60 * 1000)
#define DONE_MAX 200000
/* Partials carry up to top_k candidates per probe: 16 probes x 1000 x
 * ~60 bytes is about 1 MiB; allow headroom. */
#define MAX_PARTIAL_BYTES (8u * 1024u * 1024u)

struct ptrack {
    int assigned;
    int64_t next;           /* last consumed offset + 1, or -1 */
    int64_t stored;         /* last offset stored, or -1 */
};

struct bm_agg {
    struct bm_coord_ctx *ctx;
    const struct bm_conf *conf;
    struct bm_consumer *cons;
    struct bm_producer *prod;
    struct bm_audit *audit;
    struct bm_jobtable *jobs;
    struct bm_attempts *attempts; /* poison jobs: attempts counted in Redis */
    struct ptrack *parts;
    size_t nparts;
    char partials[BM_TOPIC_MAX], results[BM_TOPIC_MAX], dlq[BM_TOPIC_MAX];
    char fatal[256];
    struct bm_counter *dup;     /* duplicate partials dropped */
    struct bm_counter *orphans; /* shard partials whose marker never came */
    struct bm_counter *refused; /* records Kafka refused for good */
    struct bm_gauge *inflight;
    struct bm_policy *policy;   /* result rules per agency; NULL: development mode */
};

/* A delivery report's context: the job id (the job may be gone by then,
 * e.g. its partition was revoked), or none for audit and dlq records. */
struct sent {
    struct bm_agg *ag;
    int is_result;
    char id[];
};

/* ----------------------------------------------------------------- helpers */

static const char *status_label(Biomatch__V1__ResultStatus s)
{
    switch (s) {
    case BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_OK: return "ok";
    case BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_PARTIAL: return "partial";
    case BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_REJECTED: return "rejected";
    case BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_ERROR: return "error";
    case BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_TIMEOUT: return "timeout";
    default: return "unspecified";
    }
}

static struct ptrack *track(struct bm_agg *ag, int32_t p)
{
    if (p < 0)
        return NULL;
    if ((size_t)p >= ag->nparts) {
        size_t n = (size_t)p + 1;
        struct ptrack *np = realloc(ag->parts, n * sizeof *np);
        if (np == NULL)
            return NULL;
        for (size_t i = ag->nparts; i < n; i++)
            np[i] = (struct ptrack){0, -1, -1};
        ag->parts = np;
        ag->nparts = n;
    }
    return &ag->parts[p];
}

/* Transient failures never get here (lib/bus re-sends them); a purge means
 * the producer is going away. A permanent refusal of a result is an outcome
 * for that job: emit() sends the fallback (bm_job.refused). */
static void on_delivery(const struct bm_delivery *d, void *opaque)
{
    struct sent *s = opaque;
    struct bm_agg *ag = s->ag;
    if (d->err == BM_ECLOSED) {
        snprintf(ag->fatal, sizeof ag->fatal, "delivery to %s purged",
                 d->topic ? d->topic : "?");
    } else if (d->err != BM_OK) {
        bm_counter_inc(ag->refused);
        BM_LOGF(BM_LOG_ERROR, "record refused by Kafka",
                BM_LF_STR("topic", d->topic ? d->topic : "?"),
                BM_LF_STR("error", d->errstr ? d->errstr : "?"));
        struct bm_job *j = s->is_result ? bm_jobtable_find(ag->jobs, s->id) : NULL;
        if (j && j->state == BM_JOB_SENT)
            j->refused = d->err;
    } else if (s->is_result) {
        struct bm_job *j = bm_jobtable_find(ag->jobs, s->id);
        /* Only mark it: this may run inside a scan of the open list (a
         * full queue makes a send poll), which must not see it move. */
        if (j && j->state == BM_JOB_SENT)
            j->delivered = 1;
    }
    free(s);
}

static int send_rec(struct bm_agg *ag, const char *topic, const char *key, size_t keylen,
                    const void *val, size_t vallen, const ProtobufCMessageDescriptor *desc,
                    const char *traceparent, const char *result_id,
                    const struct bm_bus_headers *extra)
{
    size_t idlen = result_id ? strlen(result_id) : 0;
    struct sent *s = malloc(sizeof *s + idlen + 1);
    if (s == NULL)
        return BM_ENOMEM;
    s->ag = ag;
    s->is_result = result_id != NULL;
    memcpy(s->id, result_id ? result_id : "", idlen + 1);
    struct bm_bus_headers h;
    char ct[160];
    if (extra) {
        h = *extra;
    } else {
        bm_bus_headers_init(&h);
        bm_wire_content_type(desc, ct, sizeof ct);
        bm_bus_headers_add_str(&h, BM_HDR_CONTENT_TYPE, ct);
        if (traceparent && traceparent[0])
            bm_bus_headers_add_str(&h, BM_HDR_TRACEPARENT, traceparent);
    }
    int rc = bm_producer_send_wait(ag->prod, topic, BM_PARTITION_ANY, key, keylen, val, vallen,
                                   h.v, h.n, BM_SEND_SERVE, on_delivery, s);
    if (rc != BM_OK)
        free(s);
    return rc;
}

static int send_msg(struct bm_agg *ag, const char *topic, const char *key,
                    const ProtobufCMessage *m, const char *traceparent, const char *result_id)
{
    size_t len = 0;
    uint8_t *buf = bm_wire_encode(m, &len);
    if (buf == NULL)
        return BM_ENOMEM;
    int rc = send_rec(ag, topic, key, strlen(key), buf, len, m->descriptor, traceparent,
                      result_id, NULL);
    free(buf);
    return rc;
}

/* A partial that does not decode or makes no sense: to dlq, never blocking
 * the partition (it holds no offset back). */
static int to_dlq(struct bm_agg *ag, const struct bm_bus_msg *m, Biomatch__V1__ErrorCode code,
                  const char *why)
{
    struct bm_dlq_rec r;
    bm_dlq_build(&r, m, code, why, (size_t)ag->conf->topics.max_record_bytes,
                 ag->conf->topics.dlq_stubs_only);
    BM_LOGF(BM_LOG_WARN, "partial sent to dlq", BM_LF_STR("error", r.error),
            BM_LF_INT("stub", r.stub));
    return send_rec(ag, ag->dlq, r.key, r.keylen, r.value, r.valuelen, NULL, NULL, NULL, &r.h);
}

/* ----------------------------------------------------------------- emit */

/* How a result Kafka refused for good (j->refused) is sent instead, at most
 * twice per job: too large -> the same result without candidates,
 * RESULT_TRUNCATED and the count left out; any other refusal of a reply
 * topic -> the result on `results` with REPLY_TOPIC_REFUSED naming the
 * reply topic (the audit record that follows carries that code). Returns 1
 * with r and *topic adjusted, or 0 when nothing is left to try. */
static int fallback(struct bm_agg *ag, struct bm_job *j, Biomatch__V1__MatchResult *r,
                    const char **topic, size_t kept, char *why, size_t whylen)
{
    if (j->fallbacks >= 2)
        return 0;
    if (j->refused == BM_ERANGE) {
        r->n_candidates = 0;
        r->candidates = NULL;
        r->candidates_left_out += (uint32_t)kept;
        r->error_code = BIOMATCH__V1__ERROR_CODE__ERROR_CODE_RESULT_TRUNCATED;
        snprintf(why, whylen, "result over the record size limit: %zu candidate(s) left out",
                 kept);
        r->error = why;
    } else if (strcmp(*topic, ag->results) != 0) {
        snprintf(why, whylen, "reply topic %s refused the result: %s", *topic,
                 bm_strerror(j->refused));
        *topic = ag->results;
        r->error_code = BIOMATCH__V1__ERROR_CODE__ERROR_CODE_REPLY_TOPIC_REFUSED;
        r->error = why;
    } else {
        return 0;
    }
    j->fallbacks++;
    BM_LOGF(BM_LOG_WARN, "result refused; sending the fallback", BM_LF_STR("gallery", r->gallery),
            BM_LF_STR("error", why));
    return 1;
}

/* The Redis key counting the attempts at j's result. */
static int attempts_key(const struct bm_job *j, char *key, size_t keylen)
{
    return bm_key_job_attempts(key, keylen, j->partition, j->first_offset,
                               bm_subject_key(j->id, strlen(j->id)));
}

/* Count this run's attempt at j's result, once per run; marks j poisoned
 * when it is over the limit (then the count is kept, so a replay of the
 * job is answered the same way at once). */
static void count_attempt(struct bm_agg *ag, struct bm_job *j)
{
    if (j->counted)
        return;
    j->counted = 1;
    char key[BM_KEY_MAX];
    long long attempt = 0;
    if (attempts_key(j, key, sizeof key) == BM_OK) {
        const char *keys[] = {key};
        bm_attempts_begin(ag->attempts, keys, &attempt, 1);
    }
    int limit = ag->conf->coordinator.max_job_attempts;
    if (attempt > limit) {
        j->poisoned = 1;
        BM_LOGF(BM_LOG_ERROR, "poison job: answered POISON without merging",
                BM_LF_STR("gallery", j->opened->gallery), BM_LF_INT("partition", j->partition),
                BM_LF_INT("offset", j->first_offset), BM_LF_INT("attempts", attempt - 1));
    }
}

/* j's result was delivered: its attempt count goes (a poisoned job keeps
 * it until the TTL). */
static void forget_attempts(struct bm_agg *ag, struct bm_job *j)
{
    char key[BM_KEY_MAX];
    if (!j->counted || j->poisoned || attempts_key(j, key, sizeof key) != BM_OK)
        return;
    if (bm_attempts_done(ag->attempts, key))
        bm_attempts_flush(ag->attempts);
}

static int emit(struct bm_agg *ag, struct bm_job *j, int64_t now)
{
    const Biomatch__V1__PartialResult *o = j->opened;
    count_attempt(ag, j);
    if (!j->poisoned)
        bm_coord_fault_on_emit(o->job_id);
    int verify = o->mode == BIOMATCH__V1__MATCH_MODE__MATCH_MODE_VERIFY;
    struct bm_merge_tally t = {0};
    t.total = j->shard_count;
    t.verify = verify;
    t.deadline_passed = now >= o->deadline_unix_ms;
    Biomatch__V1__ErrorCode code = BIOMATCH__V1__ERROR_CODE__ERROR_CODE_NONE;
    const char *error = "";
    char poisoned[96] = "", poison_error[160];
    uint64_t version = 0, comparisons = 0;
    uint32_t max_q = 0, max_s = 0;
    size_t ncand = 0;
    for (uint32_t s = 0; s < j->shard_count && !j->poisoned; s++) {
        const Biomatch__V1__PartialResult *p = j->shards[s];
        if (p == NULL)
            continue;
        comparisons += p->comparisons;
        if (p->queue_us > max_q)
            max_q = p->queue_us;
        if (p->scoring_us > max_s)
            max_s = p->scoring_us;
        if (p->status != BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_OK) {
            /* A shard that saw the task only after the deadline did not
             * fail: it is missing, as if it had not answered, so the job
             * is PARTIAL or TIMEOUT whatever the arrival order. */
            if (p->error_code == BIOMATCH__V1__ERROR_CODE__ERROR_CODE_DEADLINE_EXCEEDED)
                continue;
            /* A quarantined task is missing too, but named: the job still
             * answers from the other shards (PARTIAL) and says which. */
            if (p->error_code == BIOMATCH__V1__ERROR_CODE__ERROR_CODE_POISON) {
                if (t.quarantined++ == 0)
                    snprintf(poisoned, sizeof poisoned, "shard %u", (unsigned)s);
                else if (strlen(poisoned) + 12 < sizeof poisoned)
                    snprintf(poisoned + strlen(poisoned), sizeof poisoned - strlen(poisoned),
                             ", %u", (unsigned)s);
                continue;
            }
            if (verify && p->error_code == BIOMATCH__V1__ERROR_CODE__ERROR_CODE_SUBJECT_NOT_FOUND) {
                t.ok++;
                t.not_found++;
                continue;
            }
            if (t.failed++ == 0) {
                code = p->error_code ? p->error_code
                                     : BIOMATCH__V1__ERROR_CODE__ERROR_CODE_INTERNAL;
                error = p->error && bm_wire_utf8_valid(p->error, strlen(p->error)) ? p->error
                                                                                   : "shard failed";
            }
            continue;
        }
        t.ok++;
        if (version == 0 || p->gallery_version < version)
            version = p->gallery_version;
        ncand += p->n_candidates;
    }
    Biomatch__V1__ResultStatus status = bm_merge_status(&t, &code);
    if (code == BIOMATCH__V1__ERROR_CODE__ERROR_CODE_POISON) {
        snprintf(poison_error, sizeof poison_error,
                 "%s of %u quarantined: its task failed every attempt", poisoned,
                 (unsigned)j->shard_count);
        error = poison_error;
    }
    if (j->poisoned) {
        status = BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_ERROR;
        code = BIOMATCH__V1__ERROR_CODE__ERROR_CODE_POISON;
        snprintf(poison_error, sizeof poison_error,
                 "aggregator gave up: producing this result failed %d times "
                 "(coordinator.max_job_attempts)",
                 ag->conf->coordinator.max_job_attempts);
        error = poison_error;
    }
    if (status == BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_ERROR && error[0] == '\0')
        error = "claimed subject not found in any shard";

    struct bm_merge_cand *mc = calloc(ncand ? ncand : 1, sizeof *mc);
    Biomatch__V1__Candidate *cv = calloc(ncand ? ncand : 1, sizeof *cv);
    Biomatch__V1__Candidate **cp = calloc(ncand ? ncand : 1, sizeof *cp);
    if (mc == NULL || cv == NULL || cp == NULL) {
        free(mc);
        free(cv);
        free(cp);
        return BM_ENOMEM;
    }
    size_t n = 0;
    for (uint32_t s = 0; s < j->shard_count && !j->poisoned; s++) {
        const Biomatch__V1__PartialResult *p = j->shards[s];
        if (p == NULL || p->status != BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_OK)
            continue;
        for (size_t i = 0; i < p->n_candidates; i++) {
            const Biomatch__V1__Candidate *c = p->candidates[i];
            if (c == NULL || c->subject_id == NULL ||
                !bm_wire_subject_id_valid(c->subject_id))
                continue;
            mc[n].subject_id = c->subject_id;
            mc[n].score = c->score;
            mc[n].probe_index = c->probe_index;
            mc[n].shard = s;
            n++;
        }
    }
    struct bm_policy_results rules;
    bm_policy_results(ag->policy, o->agency, &rules);
    struct bm_merge_opts mo = {0};
    mo.limit = verify ? 0 : o->top_k;
    if (rules.max_top_k != 0 && mo.limit > rules.max_top_k)
        mo.limit = rules.max_top_k; /* intake refuses more; a marker is re-checked */
    mo.probe_count = o->probe_count ? o->probe_count : UINT32_MAX;
    mo.has_threshold = o->has_threshold;
    mo.threshold = o->threshold;
    size_t kept = bm_merge_select(mc, n, &mo);
    for (size_t i = 0; i < kept; i++) {
        biomatch__v1__candidate__init(&cv[i]);
        cv[i].subject_id = (char *)mc[i].subject_id;
        cv[i].score = mc[i].score;
        cv[i].rank = mc[i].rank;
        cv[i].probe_index = mc[i].probe_index;
        cv[i].shard = mc[i].shard;
        cp[i] = &cv[i];
    }

    Biomatch__V1__MatchResult r = BIOMATCH__V1__MATCH_RESULT__INIT;
    Biomatch__V1__Timings tm = BIOMATCH__V1__TIMINGS__INIT;
    r.job_id = o->job_id;
    r.agency = o->agency;
    r.gallery = o->gallery;
    r.mode = o->mode;
    r.status = status;
    if (status == BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_ERROR ||
        code == BIOMATCH__V1__ERROR_CODE__ERROR_CODE_POISON) {
        r.error_code = code;
        r.error = (char *)error;
    }
    r.n_candidates = kept;
    r.candidates = cp;
    r.shards_answered = t.ok;
    r.shards_total = t.total;
    r.coverage = t.total ? (float)t.ok / (float)t.total : 0.0f;
    r.gallery_version = version;
    tm.submitted_unix_ms = o->submitted_unix_ms;
    tm.received_unix_ms = o->received_unix_ms;
    tm.fanned_out_unix_ms = o->fanned_out_unix_ms;
    tm.completed_unix_ms = now;
    tm.max_queue_us = max_q;
    tm.max_scoring_us = max_s;
    r.timings = &tm;
    r.verified = verify && bm_merge_verified(mc, kept, o->has_threshold, o->threshold);
    r.comparisons = comparisons;
    r.n_attributes = o->n_attributes;
    r.attributes = (Biomatch__V1__MatchResult__AttributesEntry **)o->attributes;
    bm_minimise_result(&r, &rules);
    const char *topic = o->reply_topic && o->reply_topic[0] ? o->reply_topic : ag->results;
    char why[BM_TOPIC_MAX + 160];
    uint32_t left_out = 0;
    for (uint32_t s = 0; s < j->shard_count; s++)
        if (j->shards[s] != NULL)
            left_out += j->shards[s]->candidates_left_out;
    if (left_out > 0 && r.error_code == BIOMATCH__V1__ERROR_CODE__ERROR_CODE_NONE) {
        /* A shard truncated its partial: say so, with its count. */
        r.error_code = BIOMATCH__V1__ERROR_CODE__ERROR_CODE_RESULT_TRUNCATED;
        r.candidates_left_out = left_out;
        r.error = (char *)"a shard's partial was over the record size limit";
    }
    /* Too large to send: go straight to the fallback instead of waiting
     * for Kafka's refusal (headroom for headers and framing). */
    size_t limit = (size_t)ag->conf->topics.max_record_bytes;
    if (j->refused == 0 && protobuf_c_message_get_packed_size(&r.base) + 4096 > limit)
        j->refused = BM_ERANGE;
    if (j->refused != 0 && !fallback(ag, j, &r, &topic, kept, why, sizeof why)) {
        free(mc);
        free(cv);
        free(cp);
        BM_LOGF(BM_LOG_ERROR, "result refused with no fallback left; job finished without it",
                BM_LF_STR("gallery", o->gallery), BM_LF_STR("error", bm_strerror(j->refused)));
        bm_jobtable_finish(ag->jobs, j, bm_mono_ms());
        return BM_OK;
    }
    int rc = send_msg(ag, topic, j->id, &r.base, o->traceparent, j->id);
    if (rc != BM_OK) {
        free(mc);
        free(cv);
        free(cp);
        if (rc == BM_ECLOSED || bm_err_transient(rc))
            return rc;
        /* Refused before it was queued (larger than message.max.bytes):
         * the next tick sends the fallback, as for a refused delivery. */
        bm_counter_inc(ag->refused);
        j->state = BM_JOB_SENT;
        j->refused = rc;
        return BM_OK;
    }
    j->state = BM_JOB_SENT;
    j->delivered = 0;
    j->refused = 0;

    /* Audit: who searched what, where the answer went, how it ended, which
     * subjects came back (keyed hashes unless ids may be logged); never
     * templates, never scores. */
    Biomatch__V1__AuditRecord a = BIOMATCH__V1__AUDIT_RECORD__INIT;
    a.kind = BIOMATCH__V1__AUDIT_RECORD__KIND__KIND_JOB;
    a.agency = o->agency;
    a.gallery = o->gallery;
    a.id = o->job_id;
    a.mode = o->mode;
    a.subject_id = o->claimed_subject;
    a.signer_key_id = o->signer_key_id;
    a.reply_topic = (char *)topic;
    a.status = status;
    a.error_code = r.error_code;
    a.candidates = (uint32_t)kept;
    /* Out of memory here leaves the ids out, not the record. */
    a.subjects = kept ? malloc(kept * sizeof *a.subjects) : NULL;
    a.n_subjects = a.subjects ? kept : 0;
    for (size_t i = 0; i < a.n_subjects; i++)
        a.subjects[i] = cv[i].subject_id;
    bm_audit_emit(ag->audit, &a, NULL);
    free(a.subjects);
    free(mc);
    free(cv);
    free(cp);
    char err[256];

    if (ag->ctx->metrics) {
        const char *sl[] = {"gallery", o->gallery, "status", status_label(status), NULL};
        const char *gl[] = {"gallery", o->gallery, NULL};
        bm_counter_inc(bm_metrics_counter(ag->ctx->metrics, "biomatch_jobs_total",
                                          "Jobs by outcome (intake rejections, aggregator results)",
                                          sl, err, sizeof err));
        if (o->received_unix_ms > 0)
            bm_histogram_observe(
                bm_metrics_histogram(ag->ctx->metrics, "biomatch_job_duration_seconds",
                                     "Time from intake to the result being produced", gl, NULL,
                                     0, err, sizeof err),
                (double)(now - o->received_unix_ms) / 1000.0);
        if (o->submitted_unix_ms > 0 && now >= o->submitted_unix_ms)
            bm_histogram_observe(
                bm_metrics_histogram(ag->ctx->metrics, "biomatch_job_e2e_seconds",
                                     "Time from the client's submission to the result", gl,
                                     NULL, 0, err, sizeof err),
                (double)(now - o->submitted_unix_ms) / 1000.0);
    }
    return rc;
}

/* ----------------------------------------------------------------- input */

static int handle(struct bm_agg *ag, const struct bm_bus_msg *m)
{
    bm_skew_observe(ag->ctx->skew, m->timestamp_ms, bm_wall_ms());
    struct ptrack *pt = track(ag, m->partition);
    if (pt == NULL)
        return BM_ENOMEM;
    pt->next = m->offset + 1;
    char err[512];
    ProtobufCMessage *pm = NULL;
    int rc = bm_wire_decode(&biomatch__v1__partial_result__descriptor, m->value, m->valuelen,
                            MAX_PARTIAL_BYTES, &pm, NULL, err, sizeof err);
    if (rc != BM_OK)
        return to_dlq(ag, m, bm_wire_error_of(rc), err);
    Biomatch__V1__PartialResult *p = (Biomatch__V1__PartialResult *)pm;
    int opened = p->kind == BIOMATCH__V1__PARTIAL_RESULT__KIND__KIND_OPENED;
    if (p->job_id == NULL || !bm_wire_subject_id_valid(p->job_id) ||
        (!opened && p->kind != BIOMATCH__V1__PARTIAL_RESULT__KIND__KIND_SHARD) ||
        p->shard_count == 0 || p->shard_count > BM_WIRE_MAX_SHARDS ||
        (!opened && p->shard >= p->shard_count)) {
        bm_wire_free_partial(p);
        return to_dlq(ag, m, BIOMATCH__V1__ERROR_CODE__ERROR_CODE_INVALID_VALUE,
                      "partial without a valid job id, kind or shard");
    }
    /* Jobs are keyed by (agency, job id): two agencies using one job id
     * are two jobs (docs/wire.md section 1). */
    char key[BM_WIRE_JOB_KEY_MAX];
    if (bm_wire_job_key(p->agency, p->job_id, key, sizeof key) == 0) {
        bm_wire_free_partial(p);
        return to_dlq(ag, m, BIOMATCH__V1__ERROR_CODE__ERROR_CODE_INVALID_VALUE,
                      "partial with an over-long agency");
    }
    int64_t mono = bm_mono_ms();
    struct bm_job *j = bm_jobtable_find(ag->jobs, key);
    if (j && j->state != BM_JOB_OPEN) {
        /* Finished in this run: a late shard, a redelivery, or a replayed
         * marker. Nothing to hold back. */
        bm_wire_free_partial(p);
        return BM_OK;
    }
    if (j == NULL) {
        j = bm_jobtable_add(ag->jobs, key, m->partition, m->offset, mono);
        if (j == NULL) {
            bm_wire_free_partial(p);
            return BM_ENOMEM;
        }
    }
    if (j->shard_count == 0 && bm_jobtable_set_shards(j, p->shard_count) != 0) {
        bm_wire_free_partial(p);
        return BM_ENOMEM;
    }
    if (p->shard_count != j->shard_count) {
        BM_LOGF(BM_LOG_WARN, "partial with a different shard count dropped",
                BM_LF_STR("gallery", j->opened ? j->opened->gallery : ""));
        bm_wire_free_partial(p);
        return BM_OK;
    }
    if (opened) {
        if (j->opened) {
            bm_wire_free_partial(p); /* intake replayed the job */
            return BM_OK;
        }
        j->opened = p;
    } else {
        if (j->shards[p->shard]) {
            bm_counter_inc(ag->dup);
            bm_wire_free_partial(p);
            return BM_OK;
        }
        j->shards[p->shard] = p;
        j->answered++;
    }
    if (j->opened && j->answered >= j->shard_count)
        return emit(ag, j, bm_wall_ms());
    return BM_OK;
}

/* ----------------------------------------------------------------- ticks */

/* Emit jobs whose deadline passed, drop orphans, store watermarks. */
static int tick(struct bm_agg *ag)
{
    int64_t now = bm_wall_ms(), mono = bm_mono_ms();
    struct bm_job *j = bm_jobtable_first_open(ag->jobs);
    while (j) {
        struct bm_job *next = j->next;
        if (j->state == BM_JOB_SENT && j->delivered) {
            forget_attempts(ag, j);
            bm_jobtable_finish(ag->jobs, j, mono);
        } else if (j->state == BM_JOB_SENT && j->refused) {
            int rc = emit(ag, j, now);
            if (rc != BM_OK)
                return rc;
        } else if (j->state == BM_JOB_OPEN) {
            if (j->opened && now >= j->opened->deadline_unix_ms) {
                int rc = emit(ag, j, now);
                if (rc != BM_OK)
                    return rc;
            } else if (j->opened == NULL && mono - j->created_ms >= BM_AGGREGATE_ORPHAN_MS) {
                bm_counter_inc(ag->orphans);
                BM_LOGF(BM_LOG_WARN, "shard partials without an opened marker dropped",
                        BM_LF_STR("topic", ag->partials));
                bm_jobtable_remove(ag->jobs, j);
            }
        }
        j = next;
    }
    /* Watermarks: the first offset of the oldest undelivered job per
     * partition, else everything consumed. */
    for (size_t p = 0; p < ag->nparts; p++) {
        struct ptrack *pt = &ag->parts[p];
        if (!pt->assigned)
            continue;
        int64_t low = -1;
        for (j = bm_jobtable_first_open(ag->jobs); j; j = j->next)
            if ((size_t)j->partition == p && (low < 0 || j->first_offset < low))
                low = j->first_offset;
        int64_t w = bm_merge_watermark(&low, low >= 0 ? 1 : 0, pt->next);
        if (w >= 0 && w != pt->stored &&
            bm_consumer_store_offset(ag->cons, ag->partials, (int32_t)p, w) == BM_OK)
            pt->stored = w;
    }
    bm_jobtable_expire(ag->jobs, mono);
    bm_gauge_set(ag->inflight, (double)bm_jobtable_open_count(ag->jobs));
    return BM_OK;
}

static void on_assign(struct bm_consumer *c, const struct bm_bus_tp *tps, size_t n, void *opaque)
{
    (void)c;
    struct bm_agg *ag = opaque;
    for (size_t i = 0; i < n; i++) {
        struct ptrack *pt = track(ag, tps[i].partition);
        if (pt)
            *pt = (struct ptrack){1, -1, -1};
    }
}

static void on_revoke(struct bm_consumer *c, const struct bm_bus_tp *tps, size_t n, int lost,
                      void *opaque)
{
    (void)c;
    struct bm_agg *ag = opaque;
    /* Deliver what we produced, store the watermarks, then forget the
     * partitions' jobs: their next owner replays them from the watermark. */
    if (!lost && ag->fatal[0] == '\0') {
        bm_producer_flush(ag->prod, FLUSH_MS);
        if (ag->fatal[0] == '\0')
            tick(ag);
    }
    for (size_t i = 0; i < n; i++) {
        struct ptrack *pt = track(ag, tps[i].partition);
        if (pt)
            *pt = (struct ptrack){0, -1, -1};
        struct bm_job *j = bm_jobtable_first_open(ag->jobs);
        while (j) {
            struct bm_job *next = j->next;
            if (j->partition == tps[i].partition)
                bm_jobtable_remove(ag->jobs, j);
            j = next;
        }
    }
}

/* ----------------------------------------------------------------- role */

static void agg_free(struct bm_agg *ag)
{
    if (ag == NULL)
        return;
    bm_consumer_free(ag->cons);
    bm_producer_free(ag->prod);
    bm_jobtable_free(ag->jobs);
    bm_attempts_free(ag->attempts);
    bm_audit_close(ag->audit);
    bm_policy_destroy(ag->policy);
    free(ag->parts);
    free(ag);
}

static struct bm_agg *agg_new(struct bm_coord_ctx *ctx, char *err, size_t errlen)
{
    struct bm_agg *ag = calloc(1, sizeof *ag);
    if (ag == NULL) {
        bm_seterr(err, errlen, BM_ENOMEM, "aggregate: out of memory");
        return NULL;
    }
    ag->ctx = ctx;
    ag->conf = ctx->conf;
    const char *pfx = ctx->conf->topic_prefix;
    bm_topic_name(ag->partials, sizeof ag->partials, pfx, BM_TOPIC_PARTIALS);
    bm_topic_name(ag->results, sizeof ag->results, pfx, BM_TOPIC_RESULTS);
    bm_topic_name(ag->dlq, sizeof ag->dlq, pfx, BM_TOPIC_DLQ);
    ag->jobs = bm_jobtable_new(DONE_WINDOW_MS, DONE_MAX);
    ag->attempts = bm_attempts_new(ctx->conf, "job");
    if (ag->jobs == NULL || ag->attempts == NULL) {
        bm_seterr(err, errlen, BM_ENOMEM, "aggregate: out of memory");
        goto fail;
    }
    ag->audit = bm_audit_open(ctx, "aggregate", err, errlen);
    if (ag->audit == NULL)
        goto fail;
    if (bm_authn_policy(ctx, "aggregate", &ag->policy, err, errlen) != BM_OK)
        goto fail;
    if (ctx->metrics) {
        char merr[128];
        ag->dup = bm_metrics_counter(ctx->metrics, "biomatch_partials_duplicate_total",
                                     "Shard partials dropped as duplicates of (job, shard)",
                                     NULL, merr, sizeof merr);
        ag->orphans = bm_metrics_counter(ctx->metrics, "biomatch_partials_orphaned_total",
                                         "Jobs dropped because their opened marker never came",
                                         NULL, merr, sizeof merr);
        const char *refused_labels[] = {"role", "aggregate", NULL};
        ag->refused = bm_metrics_counter(ctx->metrics, "biomatch_records_refused_total",
                                         "Records Kafka refused for good (an outcome for that record)",
                                         refused_labels, merr, sizeof merr);
        ag->inflight = bm_metrics_gauge(ctx->metrics, "biomatch_jobs_in_flight",
                                        "Jobs the aggregator holds open", NULL, merr,
                                        sizeof merr);
    }
    struct bm_bus_conf bc;
    struct bm_bus_prop *props = NULL;
    if (bm_coord_bus_conf(ctx, NULL, 0, &bc, &props, err, errlen) != BM_OK)
        goto fail;
    char group[BM_TOPIC_MAX];
    snprintf(group, sizeof group, "%s%s", pfx, BM_AGGREGATE_GROUP_SUFFIX);
    struct bm_consumer_callbacks cbs = {on_assign, on_revoke, ag};
    ag->prod = bm_producer_new(&bc, err, errlen);
    if (ag->prod)
        ag->cons = bm_consumer_new(&bc, group, NULL, &cbs, err, errlen);
    free(props);
    if (ag->cons == NULL)
        goto fail;
    const char *topics[] = {ag->partials};
    if (bm_consumer_subscribe(ag->cons, topics, 1, err, errlen) != BM_OK)
        goto fail;
    return ag;
fail:
    agg_free(ag);
    return NULL;
}

/* A per-record permanent refusal (an audit or dlq record Kafka will never
 * take) is that record's outcome, not the role's end. */
static int settle(struct bm_agg *ag, int rc)
{
    if (rc == BM_OK || rc == BM_ECLOSED || rc == BM_ENOMEM || bm_err_transient(rc))
        return rc;
    bm_counter_inc(ag->refused);
    BM_LOGF(BM_LOG_ERROR, "record refused by Kafka; moving on",
            BM_LF_STR("error", bm_strerror(rc)));
    return BM_OK;
}

int bm_role_aggregate_run(struct bm_coord_ctx *ctx)
{
    char err[512] = "";
    struct bm_agg *ag = agg_new(ctx, err, sizeof err);
    if (ag == NULL) {
        BM_LOGF(BM_LOG_ERROR, "aggregate failed to start", BM_LF_STR("error", err));
        return BM_EKAFKA;
    }
    BM_LOGF(BM_LOG_INFO, "aggregate started", BM_LF_STR("topic", ag->partials));
    int rc = BM_OK;
    int64_t last_tick = 0;
    while (!bm_coord_stopping(ctx)) {
        struct bm_bus_msg *m = NULL;
        int prc = bm_consumer_poll(ag->cons, POLL_MS, &m, err, sizeof err);
        if (prc == BM_OK && m) {
            rc = settle(ag, handle(ag, m));
            bm_bus_msg_free(m);
        } else if (prc == BM_EKAFKA && bm_consumer_fatal(ag->cons, err, sizeof err) != BM_OK) {
            rc = BM_EKAFKA;
        }
        bm_producer_poll(ag->prod, 0);
        int64_t mono = bm_mono_ms();
        if (rc == BM_OK && ag->fatal[0] == '\0' && mono - last_tick >= POLL_MS) {
            rc = settle(ag, tick(ag));
            last_tick = mono;
        }
        if (rc == BM_OK && ag->fatal[0])
            rc = BM_EKAFKA;
        if (rc == BM_OK && bm_producer_fatal(ag->prod, err, sizeof err) != BM_OK)
            rc = BM_EKAFKA;
        if (rc == BM_ECLOSED && bm_coord_stopping(ctx)) {
            rc = BM_OK; /* stopped while waiting out an outage */
            break;
        }
        if (rc != BM_OK) {
            BM_LOGF(BM_LOG_ERROR, "aggregate cannot go on",
                    BM_LF_STR("error", ag->fatal[0] ? ag->fatal : bm_strerror(rc)));
            break;
        }
    }
    if (rc == BM_OK) {
        bm_producer_flush(ag->prod, FLUSH_MS);
        if (ag->fatal[0] == '\0')
            tick(ag);
        if (bm_consumer_close(ag->cons, err, sizeof err) != BM_OK)
            BM_LOGF(BM_LOG_WARN, "aggregate: leaving the group failed", BM_LF_STR("error", err));
    }
    agg_free(ag);
    BM_LOGF(BM_LOG_INFO, "aggregate stopped", BM_LF_STR("status", bm_strerror(rc)));
    return rc;
}
