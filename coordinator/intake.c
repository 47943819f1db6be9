/* The intake role: jobs -> validation -> tasks.<gallery> + opened marker,
 * or a REJECTED result / a dlq record (docs/architecture.md §3, docs/wire.md
 * section 11, docs/internals/coordinator.md "Intake").
 *
 * Main invariant: the offset of a jobs record is stored only once every
 * record produced because of it was delivered, and offsets are stored in
 * consumption order (a FIFO of pending records; the head is stored when its
 * deliveries are done), so the committed offset never passes a job whose
 * tasks might be lost. Nothing a client sends can stop the loop: every
 * input ends as tasks, a rejection or a dlq record.
 *
 * Authentication (authn.h) runs right after decoding, before the gallery
 * lookup or anything else: a job that is not provably its agency's, or a
 * replay, goes to dlq (never to a topic it names) with an audit record.
 * Authorisation (may this agency run this mode on this gallery) runs after
 * validation: a denial is an ordinary rejection (UNAUTHORIZED).
 *
 * The opened marker is produced before the tasks, so the aggregator usually
 * knows the job before any shard answers (it copes with the other order). */
#include "intake.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audit.h"
#include "authn.h"
#include "bus/dlq.h"
#include "common/clock.h"
#include "conf/conf.h"
#include "conf/policy.h"
#include "conf/topics.h"
#include "galcache.h"
#include "galreg.h"
#include "merge.h"
#include "obs/log.h"
#include "obs/skew.h"
#include "obs/metrics.h"
#include "store/redis.h"
#include "wire/decode.h"
#include "wire/headers.h"
#include "wire/job.h"
#include "wire/shard.h"

#define POLL_MS 100
#define REVOKE_FLUSH_MS 10000

/* One consumed jobs record whose produced records are not all delivered. */
struct pend {
    struct bm_intake *in;
    struct pend *next;
    int32_t partition;
    int64_t offset;
    int outstanding;       /* sends without a delivery report yet */
    int failed;            /* some delivery failed for good */
    int revoked;           /* partition taken away: do not store */
};

struct bm_intake {
    struct bm_coord_ctx *ctx;
    const struct bm_conf *conf;
    struct bm_consumer *cons;
    struct bm_producer *prod;
    struct bm_admin *admin;
    struct bm_redis *redis;
    struct bm_galcache *cache;
    struct bm_galreg *reg;          /* <prefix>galleries, behind the cache */
    struct bm_audit *audit;
    struct bm_wire_limits limits;
    struct bm_policy *policy;  /* NULL: development mode, every agency allowed */
    char jobs[BM_TOPIC_MAX], partials[BM_TOPIC_MAX], results[BM_TOPIC_MAX];
    char dlq[BM_TOPIC_MAX];
    struct pend *head, *tail;  /* FIFO in consumption order */
    struct pend *cur;          /* the record being processed */
    char fatal[256];           /* non-empty: a delivery failed for good */
};

/* ----------------------------------------------------------------- metrics */

static void count_job(struct bm_intake *in, const char *name, const char *help,
                      const char *gallery, const char *status)
{
    if (in->ctx->metrics == NULL)
        return;
    const char *with_status[] = {"gallery", gallery, "status", status, NULL};
    const char *gallery_only[] = {"gallery", gallery, NULL};
    char err[128];
    bm_counter_inc(bm_metrics_counter(in->ctx->metrics, name, help,
                                      status ? with_status : gallery_only, err, sizeof err));
}

/* A record Kafka refused for good (too large, no such topic, no access). */
static void count_refused(struct bm_intake *in)
{
    if (in->ctx->metrics == NULL)
        return;
    const char *labels[] = {"role", "intake", NULL};
    char e[128];
    bm_counter_inc(bm_metrics_counter(in->ctx->metrics, "biomatch_records_refused_total",
                                      "Records Kafka refused for good (an outcome for that record)",
                                      labels, e, sizeof e));
}

/* Only a gallery that exists may become a label value: a client must not be
 * able to mint label values by naming galleries. */
static const char *label_gallery(const Biomatch__V1__GalleryDefinition *def)
{
    return def ? def->name : "_unknown";
}

/* ---------------------------------------------------------------- sending */

/* Transient failures never get here (lib/bus re-sends them). A permanent
 * refusal is an outcome for that record: counted and logged, and the jobs
 * offset moves on. Only a purge (the producer is going away) holds it. */
static void on_delivery(const struct bm_delivery *d, void *opaque)
{
    struct pend *p = opaque;
    p->outstanding--;
    if (d->err == BM_ECLOSED) {
        p->failed = 1;
        snprintf(p->in->fatal, sizeof p->in->fatal, "delivery to %s purged",
                 d->topic ? d->topic : "?");
    } else if (d->err != BM_OK) {
        count_refused(p->in);
        BM_LOGF(BM_LOG_ERROR, "record refused by Kafka",
                BM_LF_STR("topic", d->topic ? d->topic : "?"),
                BM_LF_STR("error", d->errstr ? d->errstr : "?"));
    }
}

/* Queue one record on behalf of the current jobs record, waiting out a
 * full queue or an outage. Returns BM_OK, a per-record permanent error
 * (an outcome for the caller) or BM_ECLOSED (stopping). */
static int send_rec(struct bm_intake *in, const char *topic, int32_t partition,
                    const void *key, size_t keylen, const void *val, size_t vallen,
                    const struct bm_bus_headers *h)
{
    int rc = bm_producer_send_wait(in->prod, topic, partition, key, keylen, val, vallen,
                                   h ? h->v : NULL, h ? h->n : 0, BM_SEND_SERVE, on_delivery,
                                   in->cur);
    if (rc == BM_OK)
        in->cur->outstanding++;
    return rc;
}

static int send_msg(struct bm_intake *in, const char *topic, int32_t partition,
                    const char *key, size_t keylen, const ProtobufCMessage *m,
                    const char *traceparent)
{
    size_t len = 0;
    uint8_t *buf = bm_wire_encode(m, &len);
    if (buf == NULL)
        return BM_ENOMEM;
    char ct[160];
    bm_wire_content_type(m->descriptor, ct, sizeof ct);
    struct bm_bus_headers h;
    bm_bus_headers_init(&h);
    bm_bus_headers_add_str(&h, BM_HDR_CONTENT_TYPE, ct);
    if (traceparent && traceparent[0])
        bm_bus_headers_add_str(&h, BM_HDR_TRACEPARENT, traceparent);
    int rc = send_rec(in, topic, partition, key, keylen, buf, len, &h);
    free(buf);
    return rc;
}

/* ---------------------------------------------------------------- outcomes */

/* One audit record (never templates, never scores) for a job intake
 * refused; 'm' is the job record (its signature header names the key). */
static int audit_job(struct bm_intake *in, const struct bm_bus_msg *m, const char *agency,
                     const char *gallery, const char *id, Biomatch__V1__MatchMode mode,
                     const char *subject, const char *reply_topic, Biomatch__V1__ErrorCode code)
{
    Biomatch__V1__AuditRecord a = BIOMATCH__V1__AUDIT_RECORD__INIT;
    a.kind = BIOMATCH__V1__AUDIT_RECORD__KIND__KIND_JOB;
    a.agency = (char *)agency;
    a.gallery = (char *)gallery;
    a.id = (char *)id;
    a.mode = mode;
    a.subject_id = (char *)subject;
    a.reply_topic = (char *)reply_topic;
    a.status = BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_REJECTED;
    a.error_code = code;
    return bm_audit_emit(in->audit, &a, m);
}

/* An undecodable (or oversized) record: the original key, value and
 * headers go to dlq with an 'error' header. */
static int to_dlq(struct bm_intake *in, const struct bm_bus_msg *m,
                  Biomatch__V1__ErrorCode code, const char *why)
{
    struct bm_dlq_rec r;
    bm_dlq_build(&r, m, code, why, (size_t)in->conf->topics.max_record_bytes,
                 in->conf->topics.dlq_stubs_only);
    int rc = send_rec(in, in->dlq, BM_PARTITION_ANY, r.key, r.keylen, r.value, r.valuelen, &r.h);
    count_job(in, "biomatch_jobs_total", "Jobs by outcome (intake rejections, aggregator results)",
              "_unknown", "dlq");
    BM_LOGF(BM_LOG_WARN, "job record sent to dlq", BM_LF_STR("error", r.error),
            BM_LF_INT("stub", r.stub));
    if (rc != BM_OK)
        return rc;
    return audit_job(in, m, "", "", "", BIOMATCH__V1__MATCH_MODE__MATCH_MODE_UNSPECIFIED, "", "",
                     code);
}

/* s when it is valid UTF-8 of at most max bytes, else "": a rejection must
 * decode in strict clients even when the job's strings were the problem. */
static const char *safe(const char *s, size_t max)
{
    if (s == NULL)
        return "";
    size_t n = strlen(s);
    return n <= max && bm_wire_utf8_valid(s, n) ? s : "";
}

static int reject(struct bm_intake *in, const struct bm_bus_msg *m,
                  const Biomatch__V1__MatchJob *job,
                  const Biomatch__V1__GalleryDefinition *def, Biomatch__V1__ErrorCode code,
                  const char *why, const char *traceparent, int reply_ok, int64_t now)
{
    Biomatch__V1__MatchResult r = BIOMATCH__V1__MATCH_RESULT__INIT;
    Biomatch__V1__Timings t = BIOMATCH__V1__TIMINGS__INIT;
    r.job_id = (char *)safe(job->job_id, BM_WIRE_MAX_ID_BYTES);
    r.agency = (char *)safe(job->agency, BM_WIRE_MAX_NAME_BYTES);
    r.gallery = (char *)safe(job->gallery, 64);
    r.mode = job->mode == BIOMATCH__V1__MATCH_MODE__MATCH_MODE_IDENTIFY ||
                     job->mode == BIOMATCH__V1__MATCH_MODE__MATCH_MODE_VERIFY
                 ? job->mode
                 : BIOMATCH__V1__MATCH_MODE__MATCH_MODE_UNSPECIFIED;
    r.status = BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_REJECTED;
    r.error_code = code;
    r.error = (char *)safe(why, 1024);
    t.submitted_unix_ms = job->submitted_unix_ms;
    t.received_unix_ms = now;
    t.completed_unix_ms = now;
    r.timings = &t;
    const char *topic = in->results;
    if (reply_ok && job->reply_topic && job->reply_topic[0])
        topic = job->reply_topic;
    /* A job without a usable job_id (an empty record value decodes as
     * one) is answered under its record key, in the key and in job_id
     * alike, so a client waiting by job_id finds it as it finds any other. */
    char keyid[BM_WIRE_MAX_ID_BYTES + 1];
    if (r.job_id[0] == '\0' && m->key != NULL && m->keylen > 0 &&
        m->keylen <= BM_WIRE_MAX_ID_BYTES && memchr(m->key, '\0', m->keylen) == NULL &&
        bm_wire_utf8_valid((const char *)m->key, m->keylen)) {
        memcpy(keyid, m->key, m->keylen);
        keyid[m->keylen] = '\0';
        r.job_id = keyid;
    }
    char jkey[BM_WIRE_JOB_KEY_MAX];
    const char *key = jkey;
    size_t keylen = r.job_id[0] ? bm_wire_job_key(r.agency, r.job_id, jkey, sizeof jkey) : 0;
    if (keylen == 0) {
        key = m->key;
        keylen = m->keylen;
    }
    int rc = send_msg(in, topic, BM_PARTITION_ANY, key, keylen, &r.base, traceparent);
    count_job(in, "biomatch_jobs_total", "Jobs by outcome (intake rejections, aggregator results)",
              label_gallery(def), "rejected");
    BM_LOGF(BM_LOG_INFO, "job rejected", BM_LF_STR("gallery", label_gallery(def)),
            BM_LF_STR("error_code", bm_wire_error_code_name(code)), BM_LF_STR("error", r.error));
    if (rc != BM_OK)
        return rc;
    return audit_job(in, m, r.agency, r.gallery, r.job_id, r.mode, safe(job->claimed_subject, 128),
                     topic, code);
}

/* ---------------------------------------------------------------- fan-out */

static int fan_out(struct bm_intake *in, const struct bm_bus_msg *m,
                   const Biomatch__V1__MatchJob *job,
                   const Biomatch__V1__GalleryDefinition *def, const char *tasks_topic,
                   const char *traceparent, int64_t now)
{
    uint32_t S = def->shards, R = def->replicas ? def->replicas : 1;
    /* Jobs are keyed by (agency, job id) everywhere downstream, so two
     * agencies using one job id never meet in the aggregator. */
    char key[BM_WIRE_JOB_KEY_MAX];
    size_t keylen = bm_wire_job_key(job->agency, job->job_id, key, sizeof key);
    if (keylen == 0)
        return BM_ERANGE; /* validated lengths always fit */
    /* The replica is a pure function of the job key, so a replayed job goes
     * to the same workers (whose shards are warm) and spreads evenly. */
    uint32_t replica = (uint32_t)(bm_subject_key(key, keylen) % R);
    int64_t deadline = job->deadline_unix_ms ? job->deadline_unix_ms
                                             : now + in->conf->coordinator.default_deadline_ms;

    Biomatch__V1__PartialResult o = BIOMATCH__V1__PARTIAL_RESULT__INIT;
    o.job_id = job->job_id;
    o.kind = BIOMATCH__V1__PARTIAL_RESULT__KIND__KIND_OPENED;
    o.shard_count = S;
    o.agency = job->agency;
    o.gallery = job->gallery;
    o.mode = job->mode;
    o.top_k = job->top_k;
    o.threshold = job->threshold;
    o.has_threshold = job->has_threshold;
    o.deadline_unix_ms = deadline;
    o.reply_topic = job->reply_topic;
    o.submitted_unix_ms = job->submitted_unix_ms;
    o.received_unix_ms = now;
    o.fanned_out_unix_ms = now;
    o.n_attributes = job->n_attributes;
    o.attributes = (Biomatch__V1__PartialResult__AttributesEntry **)job->attributes;
    o.traceparent = (char *)(traceparent ? traceparent : "");
    o.probe_count = (uint32_t)job->n_probes;
    o.claimed_subject = job->claimed_subject;
    char signer[65];
    bm_audit_signer_key_id(m, signer, sizeof signer);
    o.signer_key_id = signer;
    int rc = send_msg(in, in->partials, BM_PARTITION_ANY, key, keylen, &o.base, traceparent);
    if (rc != BM_OK)
        return rc;

    Biomatch__V1__MatchTask t = BIOMATCH__V1__MATCH_TASK__INIT;
    t.job_id = job->job_id;
    t.agency = job->agency;
    t.gallery = job->gallery;
    t.shard_count = S;
    t.replica = replica;
    t.mode = job->mode;
    t.n_probes = job->n_probes;
    t.probes = job->probes;
    t.claimed_subject = job->claimed_subject;
    t.top_k = job->top_k;
    t.threshold = job->threshold;
    t.has_threshold = job->has_threshold;
    t.deadline_unix_ms = deadline;
    t.min_gallery_version = job->min_gallery_version;
    t.submitted_unix_ms = job->submitted_unix_ms;
    t.fanned_out_unix_ms = now;
    for (uint32_t s = 0; s < S; s++) {
        t.shard = s;
        rc = send_msg(in, tasks_topic, (int32_t)(s + S * replica), key, keylen, &t.base,
                      traceparent);
        if (rc != BM_OK)
            return rc;
    }
    count_job(in, "biomatch_jobs_received_total", "Jobs accepted by intake and fanned out",
              def->name, NULL);
    return BM_OK;
}

/* ---------------------------------------------------------------- policy */

/* Authorise a job that passed validation and authentication: may its
 * agency run its mode on its gallery? UNAUTHORIZED in *code with the reason
 * in err, else BM_OK. */
static int authorise(const struct bm_intake *in, const Biomatch__V1__MatchJob *job,
                     Biomatch__V1__ErrorCode *code, char *err, size_t errlen)
{
    if (in->policy == NULL)
        return BM_OK;
    enum bm_policy_op op = job->mode == BIOMATCH__V1__MATCH_MODE__MATCH_MODE_VERIFY
                               ? BM_POLICY_OP_VERIFY
                               : BM_POLICY_OP_IDENTIFY;
    if (bm_policy_permit(in->policy, job->agency, job->gallery, op, err, errlen) ==
        BM_POLICY_ALLOW)
        return BM_OK;
    *code = BIOMATCH__V1__ERROR_CODE__ERROR_CODE_UNAUTHORIZED;
    return BM_EINVAL;
}

/* ---------------------------------------------------------------- size */

/* Refuse (TOO_LARGE) an identify job whose result could exceed the record
 * size limit before anything is fanned out, so no result or partial of an
 * accepted job has to be truncated unless the bound was wrong. The error
 * says the largest top_k that fits for this many probes. */
static int result_fits(const struct bm_intake *in, const Biomatch__V1__MatchJob *job,
                       Biomatch__V1__ErrorCode *code, char *err, size_t errlen)
{
    if (job->mode != BIOMATCH__V1__MATCH_MODE__MATCH_MODE_IDENTIFY)
        return BM_OK; /* VERIFY: one candidate per probe at most */
    size_t attrs = 0;
    for (size_t i = 0; i < job->n_attributes; i++)
        attrs += protobuf_c_message_get_packed_size(&job->attributes[i]->base) + 4;
    size_t limit = (size_t)in->conf->topics.max_record_bytes;
    size_t need = bm_merge_result_bound(job->n_probes, job->top_k, attrs);
    if (need <= limit)
        return BM_OK;
    size_t room = limit > BM_MERGE_FIXED_MAX_BYTES + attrs
                      ? limit - BM_MERGE_FIXED_MAX_BYTES - attrs : 0;
    size_t max_k = job->n_probes ? room / job->n_probes / BM_MERGE_CAND_MAX_BYTES : 0;
    *code = BIOMATCH__V1__ERROR_CODE__ERROR_CODE_TOO_LARGE;
    return bm_seterr(err, errlen, BM_EINVAL,
                     "a result of %zu probe(s) x top_k %u could reach %zu bytes, over the "
                     "record size limit of %zu; top_k at most %zu for %zu probe(s)",
                     job->n_probes, job->top_k, need, limit, max_k, job->n_probes);
}

/* The agency's result rules that a job must meet (docs/security.md
 * "Result minimisation"): at most its max_top_k, and a threshold of at
 * least its min_threshold. INVALID_TOP_K / INVALID_VALUE in *code. */
static int within_rules(const struct bm_intake *in, const Biomatch__V1__MatchJob *job,
                        Biomatch__V1__ErrorCode *code, char *err, size_t errlen)
{
    if (in->policy == NULL)
        return BM_OK;
    struct bm_policy_results r;
    bm_policy_results(in->policy, job->agency, &r);
    if (r.max_top_k != 0 && job->top_k > r.max_top_k) {
        *code = BIOMATCH__V1__ERROR_CODE__ERROR_CODE_INVALID_TOP_K;
        snprintf(err, errlen, "top_k %u is over the agency's limit of %u", job->top_k,
                 r.max_top_k);
        return BM_EINVAL;
    }
    if (r.has_min_threshold && (!job->has_threshold || job->threshold < r.min_threshold)) {
        *code = BIOMATCH__V1__ERROR_CODE__ERROR_CODE_INVALID_VALUE;
        snprintf(err, errlen, "the agency's jobs need a threshold of at least %g",
                 (double)r.min_threshold);
        return BM_EINVAL;
    }
    return BM_OK;
}

/* ---------------------------------------------------------------- one job */

static int handle(struct bm_intake *in, const struct bm_bus_msg *m)
{
    char err[512] = "";
    int64_t now = bm_wall_ms();
    int64_t mono = bm_mono_ms();
    size_t max = (size_t)in->conf->coordinator.max_job_bytes;
    bm_skew_observe(in->ctx->skew, m->timestamp_ms, now);

    /* Size first: nothing of an oversized value is read. */
    if (m->valuelen > max) {
        snprintf(err, sizeof err, "job of %zu bytes is over the limit of %zu", m->valuelen, max);
        return to_dlq(in, m, BIOMATCH__V1__ERROR_CODE__ERROR_CODE_TOO_LARGE, err);
    }
    const struct bm_bus_header *ct =
        bm_bus_header_find(m->headers, m->nheaders, BM_HDR_CONTENT_TYPE);
    if (ct && !bm_wire_content_type_ok(ct->value, ct->len, &biomatch__v1__match_job__descriptor))
        return to_dlq(in, m, BIOMATCH__V1__ERROR_CODE__ERROR_CODE_MALFORMED,
                      "content-type contradicts biomatch.v1.MatchJob");
    ProtobufCMessage *pm = NULL;
    int rc = bm_wire_decode(&biomatch__v1__match_job__descriptor, m->value, m->valuelen, max,
                            &pm, NULL, err, sizeof err);
    if (rc != BM_OK)
        return to_dlq(in, m, bm_wire_error_of(rc), err);
    Biomatch__V1__MatchJob *job = (Biomatch__V1__MatchJob *)pm;

    char tp[128] = "";
    const struct bm_bus_header *th =
        bm_bus_header_find(m->headers, m->nheaders, BM_HDR_TRACEPARENT);
    if (th && th->value && th->len < sizeof tp && bm_wire_traceparent_valid(th->value, th->len)) {
        memcpy(tp, th->value, th->len);
        tp[th->len] = '\0';
    }

    /* Authenticate before any lookup: an unauthenticated sender learns
     * nothing about galleries and can direct nothing to any topic. */
    Biomatch__V1__ErrorCode code = BIOMATCH__V1__ERROR_CODE__ERROR_CODE_NONE;
    rc = bm_authn_check(in->policy, in->conf->security.replay_window_ms, in->redis, m,
                        &biomatch__v1__match_job__descriptor, "job", job->agency, job->job_id,
                        &code, err, sizeof err);
    if (rc != BM_OK) {
        bm_wire_free_job(job);
        return rc; /* Redis is down: the caller waits and retries */
    }
    if (code != BIOMATCH__V1__ERROR_CODE__ERROR_CODE_NONE) {
        bm_wire_free_job(job);
        bm_authn_count(in->ctx, "intake", code);
        return to_dlq(in, m, code, err);
    }

    const Biomatch__V1__GalleryDefinition *def = NULL;
    if (job->gallery && bm_topic_gallery_name_valid(job->gallery)) {
        rc = bm_galcache_get(in->cache, job->gallery, mono, &def, err, sizeof err);
        if (rc != BM_OK && rc != BM_ENOTFOUND) {
            bm_wire_free_job(job);
            return rc; /* Redis is down: the caller waits and retries */
        }
    }
    rc = bm_wire_validate_job(job, def, now, &in->limits, &code, err, sizeof err);
    if (rc == BM_OK)
        rc = result_fits(in, job, &code, err, sizeof err);
    if (rc == BM_OK)
        rc = authorise(in, job, &code, err, sizeof err);
    if (rc == BM_OK)
        rc = within_rules(in, job, &code, err, sizeof err);
    /* The reply topic is checked whatever the verdict, because rejections
     * go there too: a missing topic would fail the delivery and, replayed,
     * stop intake for good; one of our own topics (the gallery log, audit)
     * must never receive a result. Either way the answer goes to results. */
    int reply_ok = job->reply_topic && job->reply_topic[0] &&
                   bm_wire_topic_valid(job->reply_topic);
    if (reply_ok && !bm_topic_reply_allowed(in->conf->topic_prefix, job->reply_topic)) {
        reply_ok = 0;
        if (rc == BM_OK) {
            code = BIOMATCH__V1__ERROR_CODE__ERROR_CODE_INVALID_VALUE;
            snprintf(err, sizeof err, "reply_topic names an internal biomatch topic");
            rc = BM_EINVAL;
        }
    }
    if (reply_ok) {
        char terr[256];
        int trc = bm_galcache_topic(in->cache, job->reply_topic, 1, 0, mono, terr, sizeof terr);
        if (trc == BM_ENOTFOUND) {
            reply_ok = 0;
            if (rc == BM_OK) {
                code = BIOMATCH__V1__ERROR_CODE__ERROR_CODE_INVALID_VALUE;
                snprintf(err, sizeof err, "reply_topic does not exist");
                rc = BM_EINVAL;
            }
        } else if (trc != BM_OK) {
            bm_wire_free_job(job);
            return bm_seterr(err, sizeof err, trc, "%s", terr);
        }
    }
    char tasks[BM_TOPIC_MAX];
    if (rc == BM_OK) {
        uint32_t parts = def->shards * (def->replicas ? def->replicas : 1);
        char terr[256];
        int trc = bm_topic_tasks(tasks, sizeof tasks, in->conf->topic_prefix, def->name) == 0
                      ? bm_galcache_topic(in->cache, tasks, (int)parts, 1, mono, terr, sizeof terr)
                      : BM_EINVAL;
        if (trc == BM_ERANGE || trc == BM_EINVAL) {
            code = BIOMATCH__V1__ERROR_CODE__ERROR_CODE_INTERNAL;
            snprintf(err, sizeof err, "tasks topic of the gallery is not usable");
            rc = BM_EINVAL;
            BM_LOGF(BM_LOG_ERROR, "tasks topic unusable", BM_LF_STR("gallery", def->name),
                    BM_LF_STR("error", terr));
        } else if (trc != BM_OK) {
            bm_wire_free_job(job);
            return trc;
        }
    }
    if (rc == BM_OK)
        rc = fan_out(in, m, job, def, tasks, tp, now);
    else
        rc = reject(in, m, job, def, code, err, tp, reply_ok, now);
    bm_wire_free_job(job);
    return rc;
}

/* ---------------------------------------------------------------- offsets */

/* Store the offsets of finished records at the head of the FIFO. */
static void drain(struct bm_intake *in)
{
    while (in->head && in->head->outstanding == 0) {
        struct pend *p = in->head;
        if (p->failed)
            return; /* the loop sees in->fatal and stops without storing */
        if (!p->revoked)
            bm_consumer_store_offset(in->cons, in->jobs, p->partition, p->offset + 1);
        in->head = p->next;
        if (in->head == NULL)
            in->tail = NULL;
        free(p);
    }
}

static void on_revoke(struct bm_consumer *c, const struct bm_bus_tp *tps, size_t n, int lost,
                      void *opaque)
{
    (void)c;
    struct bm_intake *in = opaque;
    /* Finish what was produced for the partitions we lose, so their offsets
     * can be stored before the wrapper commits; bounded, the rest replays. */
    if (!lost)
        bm_producer_flush(in->prod, REVOKE_FLUSH_MS);
    else
        bm_producer_poll(in->prod, 0);
    for (struct pend *p = in->head; p; p = p->next)
        for (size_t i = 0; i < n; i++)
            if (p->partition == tps[i].partition && (lost || p->outstanding > 0))
                p->revoked = 1;
    if (in->fatal[0] == '\0')
        drain(in);
}

/* ---------------------------------------------------------------- role */

static void intake_free(struct bm_intake *in)
{
    if (in == NULL)
        return;
    bm_consumer_free(in->cons);
    bm_producer_free(in->prod);
    /* pending entries were drained or are abandoned with the producer */
    while (in->head) {
        struct pend *p = in->head;
        in->head = p->next;
        free(p);
    }
    bm_galcache_free(in->cache);
    bm_galreg_free(in->reg);
    bm_audit_close(in->audit);
    bm_admin_free(in->admin);
    bm_redis_close(in->redis);
    bm_policy_destroy(in->policy);
    free(in);
}

static struct bm_intake *intake_new(struct bm_coord_ctx *ctx, char *err, size_t errlen)
{
    struct bm_intake *in = calloc(1, sizeof *in);
    if (in == NULL) {
        bm_seterr(err, errlen, BM_ENOMEM, "intake: out of memory");
        return NULL;
    }
    in->ctx = ctx;
    in->conf = ctx->conf;
    bm_wire_limits_default(&in->limits);
    in->limits.max_top_k = (uint32_t)ctx->conf->coordinator.max_top_k;
    in->limits.max_clock_skew_ms = ctx->conf->max_clock_skew_ms;
    if (bm_authn_policy(ctx, "intake", &in->policy, err, errlen) != BM_OK)
        goto fail;
    const char *pfx = ctx->conf->topic_prefix;
    bm_topic_name(in->jobs, sizeof in->jobs, pfx, BM_TOPIC_JOBS);
    bm_topic_name(in->partials, sizeof in->partials, pfx, BM_TOPIC_PARTIALS);
    bm_topic_name(in->results, sizeof in->results, pfx, BM_TOPIC_RESULTS);
    bm_topic_name(in->dlq, sizeof in->dlq, pfx, BM_TOPIC_DLQ);

    struct bm_bus_conf bc;
    struct bm_bus_prop *props = NULL;
    /* A crash replays the jobs stored but not yet committed, as duplicate
     * tasks: commit every second rather than librdkafka's default 5 s to
     * keep that window short (one OffsetCommit a second is nothing). */
    static const struct bm_bus_prop extra[] = {{"auto.commit.interval.ms", "1000"}};
    if (bm_coord_bus_conf(ctx, extra, 1, &bc, &props, err, errlen) != BM_OK)
        goto fail;
    char group[BM_TOPIC_MAX];
    snprintf(group, sizeof group, "%s%s", pfx, BM_INTAKE_GROUP_SUFFIX);
    struct bm_consumer_callbacks cbs = {NULL, on_revoke, in};
    in->prod = bm_producer_new(&bc, err, errlen);
    if (in->prod)
        in->cons = bm_consumer_new(&bc, group, NULL, &cbs, err, errlen);
    if (in->cons)
        in->admin = bm_admin_new(&bc, err, errlen);
    /* The definitions' durable copy, for a Redis that lost them (galreg.h);
     * it copies 'bc' and its props before they are freed. */
    char gtopic[BM_TOPIC_MAX];
    if (in->admin != NULL && bm_topic_name(gtopic, sizeof gtopic, pfx, BM_TOPIC_GALLERIES) == 0)
        in->reg = bm_galreg_new(&bc, gtopic);
    free(props);
    if (in->admin == NULL)
        goto fail;
    in->redis = bm_coord_redis(ctx, err, errlen);
    if (in->redis == NULL)
        goto fail;
    in->cache = bm_galcache_new(in->redis, in->admin, 30000, 1000);
    if (in->cache != NULL)
        bm_galcache_set_registry(in->cache, in->reg);
    if (in->cache == NULL || in->reg == NULL) {
        bm_seterr(err, errlen, BM_ENOMEM, "intake: out of memory");
        goto fail;
    }
    in->audit = bm_audit_open(ctx, "intake", err, errlen);
    if (in->audit == NULL)
        goto fail;
    const char *topics[] = {in->jobs};
    if (bm_consumer_subscribe(in->cons, topics, 1, err, errlen) != BM_OK)
        goto fail;
    return in;
fail:
    intake_free(in);
    return NULL;
}

int bm_role_intake_run(struct bm_coord_ctx *ctx)
{
    char err[512] = "";
    struct bm_intake *in = intake_new(ctx, err, sizeof err);
    if (in == NULL) {
        BM_LOGF(BM_LOG_ERROR, "intake failed to start", BM_LF_STR("error", err));
        return BM_EKAFKA;
    }
    BM_LOGF(BM_LOG_INFO, "intake started", BM_LF_STR("topic", in->jobs));
    int rc = BM_OK;
    while (!bm_coord_stopping(ctx)) {
        struct bm_bus_msg *m = NULL;
        int prc = bm_consumer_poll(in->cons, POLL_MS, &m, err, sizeof err);
        if (prc == BM_OK && m) {
            struct pend *p = calloc(1, sizeof *p);
            if (p == NULL) {
                bm_bus_msg_free(m);
                rc = BM_ENOMEM;
                break;
            }
            p->in = in;
            p->partition = m->partition;
            p->offset = m->offset;
            if (in->tail)
                in->tail->next = p;
            else
                in->head = p;
            in->tail = p;
            in->cur = p;
            /* A transient failure (Redis down during a cache miss, say) is
             * waited out by handling the record again; what it already
             * produced is produced again, which downstream dedups. */
            int hrc, waiting = 0;
            for (int attempt = 0;; attempt++) {
                hrc = handle(in, m);
                /* handle() returns BM_EREDIS only from a lookup (sends
                 * never do): an error reply such as LOADING, MASTERDOWN or
                 * OOM says nothing about this job, so it is waited out
                 * too, loudly, rather than turned into a dropped job. */
                if (!(bm_err_transient(hrc) || hrc == BM_EREDIS) ||
                    !bm_coord_wait(in->ctx, &waiting, attempt, hrc, "intake: handling a job"))
                    break;
            }
            bm_coord_wait_end(in->ctx, &waiting);
            in->cur = NULL;
            bm_bus_msg_free(m);
            if (hrc != BM_OK && hrc != BM_ECLOSED && hrc != BM_EREDIS &&
                !bm_err_transient(hrc)) {
                /* Refused for good: an outcome for this record only. */
                count_refused(in);
                BM_LOGF(BM_LOG_ERROR, "job record refused downstream; moving on",
                        BM_LF_STR("error", bm_strerror(hrc)));
                hrc = BM_OK;
            }
            if (hrc != BM_OK) {
                /* Stopping (or stopped while waiting): mark the record so
                 * neither drain() nor the close's commit moves the offset
                 * past it, and a restart replays it. */
                p->failed = 1;
                snprintf(in->fatal, sizeof in->fatal, "handling a job failed: %s",
                         bm_strerror(hrc));
                rc = bm_coord_stopping(in->ctx) ? BM_OK : hrc;
                break;
            }
        } else if (prc == BM_EKAFKA) {
            if (bm_consumer_fatal(in->cons, err, sizeof err) != BM_OK) {
                rc = BM_EKAFKA;
                break;
            }
        }
        bm_producer_poll(in->prod, 0);
        drain(in);
        if (in->fatal[0]) {
            BM_LOGF(BM_LOG_ERROR, "intake cannot go on", BM_LF_STR("error", in->fatal));
            rc = BM_EKAFKA;
            break;
        }
        if (bm_producer_fatal(in->prod, err, sizeof err) != BM_OK) {
            BM_LOGF(BM_LOG_ERROR, "intake producer failed", BM_LF_STR("error", err));
            rc = BM_EKAFKA;
            break;
        }
    }
    /* Graceful stop: deliver what was produced, store those offsets, leave
     * the group (which commits them). After a failure, store nothing more. */
    if (rc == BM_OK) {
        bm_producer_flush(in->prod, REVOKE_FLUSH_MS);
        drain(in);
    }
    if (rc == BM_OK && bm_consumer_close(in->cons, err, sizeof err) != BM_OK)
        BM_LOGF(BM_LOG_WARN, "intake: leaving the group failed", BM_LF_STR("error", err));
    intake_free(in);
    BM_LOGF(BM_LOG_INFO, "intake stopped", BM_LF_STR("status", bm_strerror(rc)));
    return rc;
}
