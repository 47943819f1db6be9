/* Enrollment intake: the first half of the gallery role.
 *
 * Consumes the `enroll` topic in batches, checks each request (size before
 * decoding; then authentication before any lookup: authn.h, a failure goes
 * to `dlq` only; then known gallery, subject id, op, template against the
 * gallery's definition, then the policy's grants: lib/conf/policy.h), and
 * either re-keys it onto gallery.<name> (partition = bm_shard_of(subject
 * id, S), key = subject id; a delete becomes a tombstone) or rejects it
 * with an EnrollResult to the request's reply topic (or the original
 * record to `dlq` with an `error` header). Every decision leaves an audit
 * record.
 *
 * Normalisation: a dense template is converted to the gallery's storage
 * format exactly once, here (L2-normalised, then f32/f16/int8 with a
 * per-vector scale, by the matcher's own bm_segment_add_dense), so the log
 * holds the stored bytes and the builder and every rebuild copy them
 * verbatim (docs/storage.md section 7). With an at-rest key configured the
 * record's value is sealed (crypto/atrest.h, bound to gallery, shard and
 * subject id), so the log holds no template in the clear either.
 *
 * Pipelining: records are cut into batches (ENROLL_BATCH_MAX records or
 * ENROLL_BATCH_MS), and up to ENROLL_INFLIGHT batches wait for their
 * delivery reports while the next ones are consumed, so the loop never
 * idles on a produce round trip (bulk imports run at the speed of the
 * per-record work, docs/benchmarks.md "Enrollment and shard loading").
 *
 * Invariant (no acknowledged enrollment lost): an `enroll` offset is stored
 * only after every gallery.<name> record (and rejection record) produced
 * for the messages before it has a successful delivery report: batches
 * retire strictly in order, and a batch stores its offsets only when it
 * and every batch before it were fully acknowledged. A batch with a failed
 * delivery stores nothing, nor does any batch after it; the consumer is
 * recreated and consumes again from the committed offsets (at-least-once;
 * a repeated upsert or delete is idempotent on the compacted log). */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "audit.h"
#include "authn.h"
#include "bus/dlq.h"
#include "bus/bus.h"
#include "common/clock.h"
#include "conf/conf.h"
#include "conf/policy.h"
#include "conf/topics.h"
#include "crypto/atrest.h"
#include "crypto/keyring.h"
#include "gallery.h"
#include "match/gallery.h"
#include "obs/log.h"
#include "obs/skew.h"
#include "obs/metrics.h"
#include "store/galdef.h"
#include "store/keys.h"
#include "store/redis.h"
#include "store/owners.h"
#include "store/subjects.h"
#include "wire/decode.h"
#include "wire/headers.h"
#include "wire/job.h"
#include "wire/shard.h"
#include "wire/template.h"

#define ENROLL_BATCH_MAX 4096      /* messages per batch */
#define ENROLL_BATCH_MS 20         /* longest a batch collects */
#define ENROLL_INFLIGHT 16         /* batches awaiting delivery reports */
#define ENROLL_ACK_TIMEOUT_MS 120000
#define ENROLL_NEG_CACHE_MS 1000   /* an unknown gallery is asked again after this */
#define ENROLL_CACHE_MAX 256
#define ENROLL_SCRATCH_ROWS 1024
#define ENROLL_MAX_TPS 256

struct galent {
    char name[BM_GALLERY_NAME_MAX + 1];
    Biomatch__V1__GalleryDefinition *def;   /* NULL: unknown gallery */
    struct bm_spec spec;
    long long expires_ms;                  /* negative entries only */
    char topic[BM_TOPIC_MAX];
    struct bm_segment *scratch;            /* converts dense rows; refilled when full */
};

struct tpoff {
    char topic[BM_TOPIC_MAX];
    int32_t partition;
    int64_t next;
};

/* One batch of consumed records and the deliveries that gate its offsets.
 * Delivery callbacks get the batch as their opaque pointer. */
struct batch {
    struct enroll *e;  /* the owner (for its metrics) */
    int outstanding;   /* critical sends not yet reported */
    int failed;        /* critical sends failed or refused */
    size_t n;          /* records consumed into the batch */
    long long deadline_ms;
    struct tpoff tps[ENROLL_MAX_TPS];
    size_t ntps;
};

struct enroll {
    struct bm_coord_ctx *ctx;
    struct bm_redis *redis;
    struct bm_consumer *consumer;
    struct bm_producer *producer;
    struct bm_audit *audit;
    struct bm_bus_conf bus;
    struct bm_bus_prop *props;
    char group[BM_TOPIC_MAX];
    char t_enroll[BM_TOPIC_MAX];
    char t_dlq[BM_TOPIC_MAX];
    struct galent cache[ENROLL_CACHE_MAX];
    size_t ncache;
    struct batch ring[ENROLL_INFLIGHT];  /* ring[head .. head+nbatch) in flight */
    size_t head, nbatch;
    struct batch *cur;         /* the batch being filled: the ring's last */
    float vec[BM_WIRE_MAX_DIM];
    uint8_t packed[BM_WIRE_MAX_DIM * 4];
    struct bm_counter *m_accepted;
    struct bm_counter *m_rejected;
    struct bm_counter *m_deleted;
    struct bm_counter *refused; /* records Kafka refused for good */
    struct bm_policy *policy;  /* NULL: development mode, every agency allowed */
    struct bm_keyring *keyring; /* at-rest keys; NULL: records in the clear */
};

/* ------------------------------------------------------------ galleries */

static void galent_clear(struct galent *g)
{
    bm_galdef_free(g->def);
    bm_segment_free(g->scratch);
    memset(g, 0, sizeof *g);
}

/* The cached definition of 'name': BM_OK with *out (def NULL = unknown
 * gallery) or a Redis error (the caller retries later; it must not reject
 * a valid enrollment because Redis blinked). */
static int gallery_lookup(struct enroll *e, const char *name, struct galent **out)
{
    long long now = bm_mono_ms();
    for (size_t i = 0; i < e->ncache; i++) {
        struct galent *g = &e->cache[i];
        if (strcmp(g->name, name) != 0)
            continue;
        if (g->def != NULL || now < g->expires_ms) {
            *out = g;
            return BM_OK;
        }
        galent_clear(g);
        e->cache[i] = e->cache[--e->ncache];
        break;
    }
    if (e->ncache == ENROLL_CACHE_MAX) {
        /* Bounded: hostile requests naming many galleries cannot grow it. */
        for (size_t i = 0; i < e->ncache; i++)
            galent_clear(&e->cache[i]);
        e->ncache = 0;
    }
    struct galent *g = &e->cache[e->ncache];
    memset(g, 0, sizeof *g);
    snprintf(g->name, sizeof g->name, "%s", name);
    int rc = BM_OK;
    char err[256];
    g->def = bm_galdef_get(e->redis, name, &rc, err, sizeof err);
    if (g->def == NULL && rc != BM_ENOTFOUND && rc != BM_EPROTO && rc != BM_EINVAL &&
        rc != BM_ERANGE) {
        BM_LOGF(BM_LOG_WARN, "gallery definition lookup failed", BM_LF_STR("gallery", name),
                BM_LF_STR("error", err));
        return rc;
    }
    if (g->def != NULL &&
        (bm_galdef_to_spec(g->def, &g->spec, err, sizeof err) != BM_OK ||
         bm_topic_gallery(g->topic, sizeof g->topic, e->ctx->conf->topic_prefix, name) != 0)) {
        BM_LOGF(BM_LOG_ERROR, "gallery definition unusable", BM_LF_STR("gallery", name),
                BM_LF_STR("error", err));
        bm_galdef_free(g->def);
        g->def = NULL;
    }
    g->expires_ms = now + ENROLL_NEG_CACHE_MS;
    e->ncache++;
    *out = g;
    return BM_OK;
}

/* ------------------------------------------------------------ delivery */

/* Transient failures never get here (lib/bus re-sends them). A permanent
 * refusal is that record's outcome (logged, counted); the batch goes on, or
 * one refused record would be consumed again forever. Only a purge (the
 * producer is going away) fails the batch. */
static void on_critical(const struct bm_delivery *d, void *opaque)
{
    struct batch *b = opaque;
    b->outstanding--;
    if (d->err == BM_ECLOSED) {
        b->failed++;
    } else if (d->err != BM_OK) {
        bm_counter_inc(b->e->refused);
        BM_LOGF(BM_LOG_ERROR, "enroll: record refused by Kafka", BM_LF_STR("topic", d->topic),
                BM_LF_STR("error", d->errstr));
    }
}

static void on_best_effort(const struct bm_delivery *d, void *opaque)
{
    (void)opaque;
    if (d->err != BM_OK)
        BM_LOGF(BM_LOG_WARN, "enroll: reply not delivered", BM_LF_STR("topic", d->topic),
                BM_LF_STR("error", d->errstr));
}

/* Queue one record, waiting out a full queue or an outage. 'critical'
 * sends gate the batch's offsets. A permanent refusal is that record's
 * outcome; stopping (BM_ECLOSED) fails the batch so it is consumed again. */
static int send(struct enroll *e, const char *topic, int32_t partition, const void *key,
                size_t keylen, const void *val, size_t vallen,
                const struct bm_bus_headers *h, int critical)
{
    int rc = bm_producer_send_wait(e->producer, topic, partition, key, keylen, val, vallen,
                                   h ? h->v : NULL, h ? h->n : 0, BM_SEND_SERVE,
                                   critical ? on_critical : on_best_effort,
                                   critical ? (void *)e->cur : (void *)e);
    if (rc == BM_OK) {
        if (critical)
            e->cur->outstanding++;
        return BM_OK;
    }
    if (rc == BM_ECLOSED && critical)
        e->cur->failed++;
    if (rc != BM_ECLOSED)
        bm_counter_inc(e->refused);
    BM_LOGF(BM_LOG_ERROR, "enroll: send refused", BM_LF_STR("topic", topic),
            BM_LF_STR("error", bm_strerror(rc)));
    return rc;
}

/* ------------------------------------------------------------ audit */

/* 'm' is the request record (its signature header names the key). */
static void audit(struct enroll *e, const struct bm_bus_msg *m,
                  const Biomatch__V1__EnrollRequest *req, Biomatch__V1__ResultStatus status,
                  Biomatch__V1__ErrorCode code)
{
    Biomatch__V1__AuditRecord rec = BIOMATCH__V1__AUDIT_RECORD__INIT;
    rec.kind = BIOMATCH__V1__AUDIT_RECORD__KIND__KIND_ENROLL;
    if (req != NULL) {
        rec.agency = req->agency;
        rec.gallery = req->gallery;
        rec.id = req->request_id;
        rec.op = req->op;
        rec.subject_id = req->subject_id;
        rec.reply_topic = req->reply_topic;
    }
    rec.status = status;
    rec.error_code = code;
    bm_audit_emit(e->audit, &rec, m);
}

/* ------------------------------------------------------------ rejection */

static void reject(struct enroll *e, const struct bm_bus_msg *m,
                   const Biomatch__V1__EnrollRequest *req, Biomatch__V1__ErrorCode code,
                   const char *why)
{
    bm_counter_inc(e->m_rejected);
    BM_LOGF(BM_LOG_INFO, "enrollment rejected",
            BM_LF_STR("gallery", req != NULL ? req->gallery : NULL),
            BM_LF_STR("code", bm_wire_error_code_name(code)), BM_LF_STR("error", why));
    if (req != NULL && req->reply_topic != NULL && req->reply_topic[0] != '\0') {
        Biomatch__V1__EnrollResult res = BIOMATCH__V1__ENROLL_RESULT__INIT;
        res.request_id = req->request_id;
        res.gallery = req->gallery;
        res.subject_id = req->subject_id;
        res.status = BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_REJECTED;
        res.error_code = code;
        res.error = (char *)why;
        size_t len = 0;
        uint8_t *buf = bm_wire_encode(&res.base, &len);
        if (buf != NULL) {
            char ct[160];
            struct bm_bus_headers h;
            bm_bus_headers_init(&h);
            bm_wire_content_type(&biomatch__v1__enroll_result__descriptor, ct, sizeof ct);
            bm_bus_headers_add_str(&h, BM_HDR_CONTENT_TYPE, ct);
            /* An agency's reply topic may not exist: its failure must not
             * hold back (or replay) everyone else's enrollments. */
            send(e, req->reply_topic, BM_PARTITION_ANY, req->request_id,
                 strlen(req->request_id), buf, len, &h, 0);
            free(buf);
        }
    } else {
        struct bm_dlq_rec r;
        bm_dlq_build(&r, m, code, why, (size_t)e->ctx->conf->topics.max_record_bytes,
                     e->ctx->conf->topics.dlq_stubs_only);
        send(e, e->t_dlq, BM_PARTITION_ANY, r.key, r.keylen, r.value, r.valuelen, &r.h, 1);
    }
    audit(e, m, req, BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_REJECTED, code);
}

/* ------------------------------------------------------------ checks */

int bm_gallery_stored_check(const struct bm_spec *spec, const Biomatch__V1__Template *t,
                            char *err, size_t errlen)
{
    if (t == NULL)
        return bm_seterr(err, errlen, BM_EINVAL, "no template");
    if (spec->modality == BM_MODALITY_DENSE) {
        const Biomatch__V1__DenseEmbedding *d = t->dense;
        static const Biomatch__V1__ElementType et[] = {
            [BM_DTYPE_F32] = BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_F32,
            [BM_DTYPE_F16] = BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_F16,
            [BM_DTYPE_INT8] = BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_INT8,
        };
        if (t->kind_case != BIOMATCH__V1__TEMPLATE__KIND_DENSE || d == NULL)
            return bm_seterr(err, errlen, BM_EINVAL, "not a dense template");
        if (d->dim != spec->dim || d->element_type != et[spec->dtype] ||
            d->data.len != bm_spec_template_bytes(spec))
            return bm_seterr(err, errlen, BM_EINVAL, "not in the gallery's storage format");
        if (spec->dtype == BM_DTYPE_INT8 && !(d->scale > 0.0f && d->scale < 1e30f))
            return bm_seterr(err, errlen, BM_EINVAL, "bad int8 scale");
        return BM_OK;
    }
    const Biomatch__V1__IrisCode *ic = t->iris;
    size_t nb = bm_spec_iris_bytes(spec);
    if (t->kind_case != BIOMATCH__V1__TEMPLATE__KIND_IRIS || ic == NULL ||
        ic->code.len != nb || ic->mask.len != nb)
        return bm_seterr(err, errlen, BM_EINVAL, "iris code or mask of the wrong size");
    return BM_OK;
}

float bm_gallery_template_row(const struct bm_spec *spec, const Biomatch__V1__Template *t,
                              uint8_t *row)
{
    if (spec->modality == BM_MODALITY_DENSE) {
        memcpy(row, t->dense->data.data, t->dense->data.len);
        return spec->dtype == BM_DTYPE_INT8 ? t->dense->scale : 1.0f;
    }
    size_t nb = bm_spec_iris_bytes(spec);
    memcpy(row, t->iris->code.data, nb);
    memcpy(row + nb, t->iris->mask.data, nb);
    return 1.0f;
}

/* Convert a validated dense template to the gallery's storage form in
 * e->packed; *scale gets the int8 scale. */
static int normalise_dense(struct enroll *e, struct galent *g,
                           const Biomatch__V1__DenseEmbedding *d, uint64_t key, float *scale,
                           char *err, size_t errlen)
{
    int rc = bm_wire_dense_to_f32(d, e->vec, g->spec.dim, err, errlen);
    if (rc != BM_OK)
        return rc;
    if (g->scratch != NULL && bm_segment_count(g->scratch) == ENROLL_SCRATCH_ROWS) {
        bm_segment_free(g->scratch);
        g->scratch = NULL;
    }
    if (g->scratch == NULL &&
        (g->scratch = bm_segment_new(&g->spec, 0, ENROLL_SCRATCH_ROWS, err, errlen)) == NULL)
        return BM_ENOMEM;
    rc = bm_segment_add_dense(g->scratch, key, e->vec, err, errlen);
    if (rc != BM_OK)
        return rc;
    size_t row = bm_segment_count(g->scratch) - 1;
    memcpy(e->packed, bm_segment_row(g->scratch, row), bm_spec_template_bytes(&g->spec));
    *scale = bm_segment_row_scale(g->scratch, row);
    return BM_OK;
}

static Biomatch__V1__ElementType element_of(enum bm_dtype t)
{
    switch (t) {
    case BM_DTYPE_F32:
        return BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_F32;
    case BM_DTYPE_F16:
        return BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_F16;
    default:
        return BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_INT8;
    }
}

/* ------------------------------------------------------------ policy */

/* Authorise a request that passed authentication and validation: may its
 * agency enroll (OP_UPSERT) or delete (OP_DELETE) on its gallery? */
static Biomatch__V1__ErrorCode authorise(const struct enroll *e,
                                         const Biomatch__V1__EnrollRequest *req, char *why,
                                         size_t whylen)
{
    if (e->policy == NULL)
        return BIOMATCH__V1__ERROR_CODE__ERROR_CODE_NONE;
    enum bm_policy_op op = req->op == BIOMATCH__V1__ENROLL_REQUEST__OP__OP_DELETE
                               ? BM_POLICY_OP_DELETE
                               : BM_POLICY_OP_ENROLL;
    if (bm_policy_permit(e->policy, req->agency, req->gallery, op, why, whylen) ==
        BM_POLICY_ALLOW)
        return BIOMATCH__V1__ERROR_CODE__ERROR_CODE_NONE;
    return BIOMATCH__V1__ERROR_CODE__ERROR_CODE_UNAUTHORIZED;
}

/* Only the owner of a subject, or an agency with the admin right on the
 * gallery, may replace or delete it (docs/security.md "Subject
 * ownership"): otherwise an agency could overwrite another's subject with
 * its own template and be matched as that person. FORBIDDEN in *code, or
 * a transient Redis error. */
static int check_owner(struct enroll *e, const Biomatch__V1__EnrollRequest *req,
                       Biomatch__V1__ErrorCode *code, char *why, size_t whylen)
{
    char owner[BM_OWNER_MAX], err[256];
    int rc = bm_owner_get(e->redis, req->gallery, req->subject_id, owner, sizeof owner, err,
                          sizeof err);
    if (rc == BM_ENOTFOUND)
        return BM_OK;
    if (rc != BM_OK) {
        BM_LOGF(BM_LOG_WARN, "enroll: owner lookup failed", BM_LF_STR("error", err));
        return rc;
    }
    if (strcmp(owner, req->agency) == 0 ||
        bm_policy_permit(e->policy, req->agency, req->gallery, BM_POLICY_OP_ADMIN, err,
                         sizeof err) == BM_POLICY_ALLOW)
        return BM_OK;
    *code = BIOMATCH__V1__ERROR_CODE__ERROR_CODE_FORBIDDEN;
    snprintf(why, whylen, "the subject belongs to another agency");
    return BM_OK;
}

/* Record the owner change of an accepted request (policy mode only). */
static int note_owner(struct enroll *e, const Biomatch__V1__EnrollRequest *req)
{
    if (e->policy == NULL)
        return BM_OK;
    char err[256];
    int rc = req->op == BIOMATCH__V1__ENROLL_REQUEST__OP__OP_DELETE
                 ? bm_owner_forget(e->redis, req->gallery, req->subject_id, err, sizeof err)
                 : bm_owner_claim(e->redis, req->gallery, req->subject_id, req->agency, err,
                                  sizeof err);
    if (rc != BM_OK)
        BM_LOGF(BM_LOG_WARN, "enroll: recording the owner failed", BM_LF_STR("error", err));
    return rc;
}

/* ------------------------------------------------------------ one message */

/* Handle one `enroll` record. Returns BM_OK when it was decided (accepted or
 * rejected) or a transient error (Redis down) when it must be retried. */
static int handle(struct enroll *e, const struct bm_bus_msg *m)
{
    char why[256];
    bm_skew_observe(e->ctx->skew, m->timestamp_ms, bm_wall_ms());
    if (m->value == NULL) {
        reject(e, m, NULL, BIOMATCH__V1__ERROR_CODE__ERROR_CODE_MALFORMED,
               "enroll record has no value");
        return BM_OK;
    }
    ProtobufCMessage *pm = NULL;
    int rc = bm_wire_decode(&biomatch__v1__enroll_request__descriptor, m->value, m->valuelen,
                            BM_WIRE_DEFAULT_MAX_BYTES, &pm, NULL, why, sizeof why);
    if (rc != BM_OK) {
        reject(e, m, NULL, bm_wire_error_of(rc), why);
        return BM_OK;
    }
    Biomatch__V1__EnrollRequest *req = (Biomatch__V1__EnrollRequest *)pm;
    Biomatch__V1__ErrorCode code = BIOMATCH__V1__ERROR_CODE__ERROR_CODE_NONE;
    /* Authenticate before any lookup or write. A failure is answered only
     * through dlq: the reply topic is the unauthenticated sender's choice. */
    rc = bm_authn_check(e->policy, e->ctx->conf->security.replay_window_ms, e->redis, m,
                        &biomatch__v1__enroll_request__descriptor, "enroll", req->agency,
                        req->request_id, &code, why, sizeof why);
    if (rc != BM_OK) {
        bm_wire_free(pm);
        return rc; /* Redis is down: retried */
    }
    if (code != BIOMATCH__V1__ERROR_CODE__ERROR_CODE_NONE) {
        bm_authn_count(e->ctx, "gallery", code);
        req->reply_topic[0] = '\0';
        reject(e, m, req, code, why);
        bm_wire_free(pm);
        return BM_OK;
    }
    size_t sidlen = strlen(req->subject_id);
    struct galent *g = NULL;
    if (req->reply_topic[0] != '\0' && !bm_wire_topic_valid(req->reply_topic)) {
        /* Not usable as a reply destination: answer through dlq instead. */
        req->reply_topic[0] = '\0';
        code = BIOMATCH__V1__ERROR_CODE__ERROR_CODE_INVALID_VALUE;
        snprintf(why, sizeof why, "reply_topic is not a valid topic name");
    } else if (!bm_topic_reply_allowed(e->ctx->conf->topic_prefix, req->reply_topic)) {
        /* Never write an answer into one of our own topics (the gallery
         * log, audit, jobs): answer through dlq instead. */
        req->reply_topic[0] = '\0';
        code = BIOMATCH__V1__ERROR_CODE__ERROR_CODE_INVALID_VALUE;
        snprintf(why, sizeof why, "reply_topic names an internal biomatch topic");
    } else if (strlen(req->request_id) < 1 || strlen(req->request_id) > 128) {
        code = BIOMATCH__V1__ERROR_CODE__ERROR_CODE_MISSING_FIELD;
        snprintf(why, sizeof why, "request_id must be 1..128 bytes");
    } else if (req->agency[0] == '\0') {
        code = BIOMATCH__V1__ERROR_CODE__ERROR_CODE_MISSING_FIELD;
        snprintf(why, sizeof why, "agency is required");
    } else if (sidlen < 1 || sidlen > BM_SUBJECT_ID_MAX ||
               !bm_wire_utf8_valid(req->subject_id, sidlen)) {
        code = BIOMATCH__V1__ERROR_CODE__ERROR_CODE_INVALID_VALUE;
        snprintf(why, sizeof why, "subject_id must be 1..128 bytes of UTF-8");
    } else if (req->op != BIOMATCH__V1__ENROLL_REQUEST__OP__OP_UPSERT &&
               req->op != BIOMATCH__V1__ENROLL_REQUEST__OP__OP_DELETE) {
        code = BIOMATCH__V1__ERROR_CODE__ERROR_CODE_MISSING_FIELD;
        snprintf(why, sizeof why, "op must be OP_UPSERT or OP_DELETE");
    } else if (!bm_topic_gallery_name_valid(req->gallery)) {
        code = BIOMATCH__V1__ERROR_CODE__ERROR_CODE_UNKNOWN_GALLERY;
        snprintf(why, sizeof why, "gallery name is not valid");
    } else {
        rc = gallery_lookup(e, req->gallery, &g);
        if (rc != BM_OK) {
            bm_wire_free(pm);
            return rc;
        }
        if (g->def == NULL) {
            code = BIOMATCH__V1__ERROR_CODE__ERROR_CODE_UNKNOWN_GALLERY;
            snprintf(why, sizeof why, "unknown gallery");
        } else if (req->op == BIOMATCH__V1__ENROLL_REQUEST__OP__OP_UPSERT) {
            code = bm_wire_validate_template(req->template_, g->def, why, sizeof why);
        }
    }
    if (code == BIOMATCH__V1__ERROR_CODE__ERROR_CODE_NONE)
        code = authorise(e, req, why, sizeof why);
    if (code == BIOMATCH__V1__ERROR_CODE__ERROR_CODE_NONE && e->policy != NULL) {
        rc = check_owner(e, req, &code, why, sizeof why);
        if (rc != BM_OK) {
            bm_wire_free(pm);
            return rc; /* Redis is down: retried */
        }
    }
    if (code != BIOMATCH__V1__ERROR_CODE__ERROR_CODE_NONE) {
        reject(e, m, req, code, why);
        bm_wire_free(pm);
        return BM_OK;
    }

    uint32_t shard = bm_shard_of(req->subject_id, sidlen, g->def->shards);
    if (req->op == BIOMATCH__V1__ENROLL_REQUEST__OP__OP_DELETE) {
        send(e, g->topic, (int32_t)shard, req->subject_id, sidlen, NULL, 0, NULL, 1);
        bm_counter_inc(e->m_deleted);
    } else {
        Biomatch__V1__GalleryChange ch = BIOMATCH__V1__GALLERY_CHANGE__INIT;
        Biomatch__V1__Template t = BIOMATCH__V1__TEMPLATE__INIT;
        Biomatch__V1__DenseEmbedding d = BIOMATCH__V1__DENSE_EMBEDDING__INIT;
        ch.subject_id = req->subject_id;
        ch.agency = req->agency;
        ch.request_id = req->request_id;
        ch.enrolled_unix_ms = bm_wall_ms();
        if (g->spec.modality == BM_MODALITY_DENSE) {
            float scale = 1.0f;
            rc = normalise_dense(e, g, req->template_->dense,
                                 bm_subject_key(req->subject_id, sidlen), &scale, why,
                                 sizeof why);
            if (rc != BM_OK) {
                reject(e, m, req, rc == BM_EINVAL
                                      ? BIOMATCH__V1__ERROR_CODE__ERROR_CODE_INVALID_VALUE
                                      : BIOMATCH__V1__ERROR_CODE__ERROR_CODE_INTERNAL,
                       why);
                bm_wire_free(pm);
                return BM_OK;
            }
            t.modality = req->template_->modality;
            t.kind_case = BIOMATCH__V1__TEMPLATE__KIND_DENSE;
            t.dense = &d;
            d.dim = g->spec.dim;
            d.element_type = element_of(g->spec.dtype);
            d.data.data = e->packed;
            d.data.len = bm_spec_template_bytes(&g->spec);
            d.scale = g->spec.dtype == BM_DTYPE_INT8 ? scale : 0.0f;
            ch.template_ = &t;
        } else {
            /* Iris codes are stored as sent: code and mask bits. */
            ch.template_ = req->template_;
        }
        size_t len = 0;
        uint8_t *buf = bm_wire_encode(&ch.base, &len);
        if (buf == NULL) {
            bm_wire_free(pm);
            return BM_ENOMEM;
        }
        if (bm_keyring_current_id(e->keyring) != NULL) {
            uint8_t *sealed = NULL;
            size_t slen = 0;
            rc = bm_atrest_seal_record(e->keyring, g->name, shard, req->subject_id, sidlen, buf,
                                       len, &sealed, &slen, why, sizeof why);
            free(buf);
            if (rc != BM_OK) { /* out of memory: a validated template always fits */
                BM_LOGF(BM_LOG_ERROR, "enroll: sealing a gallery record failed",
                        BM_LF_STR("gallery", g->name), BM_LF_STR("error", why));
                bm_wire_free(pm);
                return rc; /* transient: consumed again */
            }
            buf = sealed;
            len = slen;
        }
        char ct[160];
        struct bm_bus_headers h;
        bm_bus_headers_init(&h);
        bm_wire_content_type(&biomatch__v1__gallery_change__descriptor, ct, sizeof ct);
        bm_bus_headers_add_str(&h, BM_HDR_CONTENT_TYPE, ct);
        send(e, g->topic, (int32_t)shard, req->subject_id, sidlen, buf, len, &h, 1);
        free(buf);
    }
    /* A failure here is retried like a Redis outage: the change was sent,
     * and its repetition is idempotent (same owner, same record). */
    if ((rc = note_owner(e, req)) != BM_OK) {
        bm_wire_free(pm);
        return rc;
    }
    bm_counter_inc(e->m_accepted);
    audit(e, m, req, BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_OK,
          BIOMATCH__V1__ERROR_CODE__ERROR_CODE_NONE);
    bm_wire_free(pm);
    return BM_OK;
}

/* ------------------------------------------------------------ batches */

static void note_offset(struct batch *b, const struct bm_bus_msg *m)
{
    for (size_t i = 0; i < b->ntps; i++) {
        if (b->tps[i].partition == m->partition && strcmp(b->tps[i].topic, m->topic) == 0) {
            if (m->offset + 1 > b->tps[i].next)
                b->tps[i].next = m->offset + 1;
            return;
        }
    }
    if (b->ntps == ENROLL_MAX_TPS)
        return; /* cannot happen with one topic of <= 256 partitions */
    struct tpoff *t = &b->tps[b->ntps++];
    snprintf(t->topic, sizeof t->topic, "%s", m->topic);
    t->partition = m->partition;
    t->next = m->offset + 1;
}

static int open_consumer(struct enroll *e, char *err, size_t errlen)
{
    e->consumer = bm_consumer_new(&e->bus, e->group, NULL, NULL, err, errlen);
    if (e->consumer == NULL)
        return BM_EKAFKA;
    const char *topics[] = {e->t_enroll};
    int rc = bm_consumer_subscribe(e->consumer, topics, 1, err, errlen);
    if (rc != BM_OK) {
        bm_consumer_free(e->consumer);
        e->consumer = NULL;
    }
    return rc;
}

static void close_consumer(struct enroll *e)
{
    char err[256];
    if (e->consumer == NULL)
        return;
    if (bm_consumer_close(e->consumer, err, sizeof err) != BM_OK)
        BM_LOGF(BM_LOG_WARN, "enroll: consumer close", BM_LF_STR("error", err));
    bm_consumer_free(e->consumer);
    e->consumer = NULL;
}

/* Start filling a new batch at the ring's tail (the caller made room). */
static void batch_open(struct enroll *e)
{
    struct batch *b = &e->ring[(e->head + e->nbatch) % ENROLL_INFLIGHT];
    b->e = e;
    /* A slot forgotten by drain_all() with reports still owed (a delivery
     * slower than ENROLL_ACK_TIMEOUT_MS, or purged later) keeps its count
     * and is born failed: those late reports must not make it look
     * acknowledged, so it is consumed again instead of retired. */
    b->failed = b->outstanding != 0;
    b->n = 0;
    b->ntps = 0;
    b->deadline_ms = 0;
    e->nbatch++;
    e->cur = b;
}

/* Retire acknowledged batches in order, storing their offsets; the batch
 * being filled is never retired. Returns BM_EKAFKA when a batch failed
 * (nothing from it or after it is stored), else BM_OK. */
static int retire(struct enroll *e)
{
    while (e->nbatch > 1) {
        struct batch *b = &e->ring[e->head];
        if (b->failed > 0) {
            BM_LOGF(BM_LOG_ERROR, "enroll: batch not acknowledged; consuming it again",
                    BM_LF_INT("failed", b->failed), BM_LF_INT("outstanding", b->outstanding));
            return BM_EKAFKA;
        }
        if (b->outstanding > 0)
            return BM_OK;
        for (size_t i = 0; i < b->ntps; i++)
            bm_consumer_store_offset(e->consumer, b->tps[i].topic, b->tps[i].partition,
                                     b->tps[i].next);
        e->head = (e->head + 1) % ENROLL_INFLIGHT;
        e->nbatch--;
    }
    return BM_OK;
}

/* Close the batch being filled and open the next, first waiting (bounded)
 * for the oldest batch when the ring is full. BM_OK or BM_EKAFKA (a batch
 * failed or stayed unacknowledged: the caller rewinds). */
static int batch_cut(struct enroll *e)
{
    bm_producer_poll(e->producer, 0);
    int rc = retire(e);
    long long deadline = bm_mono_ms() + ENROLL_ACK_TIMEOUT_MS;
    while (rc == BM_OK && e->nbatch == ENROLL_INFLIGHT) {
        if (bm_mono_ms() >= deadline) {
            BM_LOGF(BM_LOG_ERROR, "enroll: deliveries not acknowledged in time",
                    BM_LF_INT("outstanding", e->ring[e->head].outstanding));
            return BM_EKAFKA;
        }
        bm_producer_poll(e->producer, 10);
        rc = retire(e);
    }
    if (rc == BM_OK)
        batch_open(e);
    return rc;
}

/* Close the batch being filled (if it holds anything) without waiting,
 * so retire() may store it; used on a graceful stop. */
static void batch_open_final(struct enroll *e)
{
    if (e->cur->n == 0)
        return;
    if (e->nbatch == ENROLL_INFLIGHT) {
        /* No slot for a new batch: the last one stays unretired and is
         * consumed again after the restart (at-least-once). */
        return;
    }
    batch_open(e);
}

/* Wait (bounded) until no critical send is outstanding, so no delivery
 * callback can reference a batch that is about to be forgotten, then
 * forget every batch. */
static void drain_all(struct enroll *e)
{
    long long deadline = bm_mono_ms() + ENROLL_ACK_TIMEOUT_MS;
    for (;;) {
        int outstanding = 0;
        for (size_t i = 0; i < e->nbatch; i++)
            outstanding += e->ring[(e->head + i) % ENROLL_INFLIGHT].outstanding;
        if (outstanding == 0 || bm_mono_ms() >= deadline)
            break;
        bm_producer_poll(e->producer, 50);
    }
    e->head = 0;
    e->nbatch = 0;
    batch_open(e);
}

/* Consume one record or wait for one, cutting batches as they fill or
 * age. Returns BM_OK, or an error after which the consumer must be
 * recreated (rewind to the committed offsets). */
static int step(struct enroll *e)
{
    char err[256];
    struct batch *b = e->cur;
    long long now = bm_mono_ms();
    int timeout = 100;
    if (b->n > 0) {
        long long left = b->deadline_ms - now;
        timeout = left < 0 ? 0 : (int)left;
    }
    struct bm_bus_msg *m = NULL;
    int prc = bm_consumer_poll(e->consumer, timeout, &m, err, sizeof err);
    if (prc == BM_OK) {
        int rc = handle(e, m);
        if (rc == BM_OK)
            note_offset(b, m);
        bm_bus_msg_free(m);
        if (rc != BM_OK)
            return rc; /* transient: this message and the rest are consumed again */
        if (b->n++ == 0)
            b->deadline_ms = now + ENROLL_BATCH_MS;
    } else if (prc != BM_ETIMEDOUT) {
        BM_LOGF(BM_LOG_WARN, "enroll: consumer", BM_LF_STR("error", err));
    }
    if (b->n >= ENROLL_BATCH_MAX || (b->n > 0 && bm_mono_ms() >= b->deadline_ms) ||
        (b->n == 0 && prc != BM_OK)) {
        /* An empty batch is cut too when idle, so older batches retire. */
        if (b->n == 0) {
            bm_producer_poll(e->producer, 0);
            return retire(e);
        }
        return batch_cut(e);
    }
    return BM_OK;
}

static void enroll_free(struct enroll *e)
{
    close_consumer(e);
    if (e->producer != NULL) {
        if (bm_producer_flush(e->producer, 30000) != BM_OK)
            BM_LOGF(BM_LOG_WARN, "enroll: producer flush timed out",
                    BM_LF_INT("outstanding", bm_producer_outstanding(e->producer)));
        bm_producer_free(e->producer);
    }
    for (size_t i = 0; i < e->ncache; i++)
        galent_clear(&e->cache[i]);
    bm_audit_close(e->audit);
    bm_redis_close(e->redis);
    bm_policy_destroy(e->policy);
    bm_keyring_free(e->keyring);
    free(e->props);
    free(e);
}

int bm_enroll_run(struct bm_coord_ctx *ctx)
{
    char err[512];
    const struct bm_conf *conf = ctx->conf;
    struct enroll *e = calloc(1, sizeof *e);
    if (e == NULL)
        return BM_ENOMEM;
    e->ctx = ctx;
    snprintf(e->group, sizeof e->group, "%scoordinator-enroll", conf->topic_prefix);
    int rc = BM_OK;
    if (bm_topic_name(e->t_enroll, sizeof e->t_enroll, conf->topic_prefix, BM_TOPIC_ENROLL) ||
        bm_topic_name(e->t_dlq, sizeof e->t_dlq, conf->topic_prefix, BM_TOPIC_DLQ)) {
        rc = bm_seterr(err, sizeof err, BM_EINVAL, "topic prefix too long");
        goto fail;
    }
    /* No policy (outside development mode) or one that does not parse
     * stops the role: never run open by accident. */
    if ((rc = bm_authn_policy(ctx, "gallery", &e->policy, err, sizeof err)) != BM_OK)
        goto fail;
    /* The builder (same role) logs the keyring's state and warnings. */
    e->keyring = bm_keyring_from_conf(conf, &rc, err, sizeof err);
    if (rc != BM_OK)
        goto fail;
    e->m_accepted = bm_metrics_counter(ctx->metrics, "biomatch_enroll_accepted_total",
                                       "Enrollment requests accepted onto gallery logs",
                                       NULL, err, sizeof err);
    e->m_rejected = bm_metrics_counter(ctx->metrics, "biomatch_enroll_rejected_total",
                                       "Enrollment requests rejected", NULL, err, sizeof err);
    e->m_deleted = bm_metrics_counter(ctx->metrics, "biomatch_enroll_deletes_total",
                                      "Accepted enrollment deletes (tombstones produced)",
                                      NULL, err, sizeof err);
    const char *refused_labels[] = {"role", "enroll", NULL};
    e->refused = bm_metrics_counter(ctx->metrics, "biomatch_records_refused_total",
                                    "Records Kafka refused for good (an outcome for that record)",
                                    refused_labels, err, sizeof err);
    /* Bulk imports: librdkafka 2.0 backs a partition's fetcher off for
     * fetch.error.backoff.ms (500 ms) whenever the local queue is over
     * queued.max.messages.kbytes, which stalled intake for ~0.4 s at a
     * time; back off briefly instead and fetch bigger pieces. */
    static const struct bm_bus_prop extra[] = {
        {"linger.ms", "10"},
        {"queue.buffering.max.messages", "1000000"},
        {"max.poll.interval.ms", "600000"},
        {"fetch.error.backoff.ms", "10"},
        {"max.partition.fetch.bytes", "4194304"},
    };
    if ((rc = bm_coord_bus_conf(ctx, extra, sizeof extra / sizeof extra[0], &e->bus,
                                &e->props, err, sizeof err)) != BM_OK)
        goto fail;
    if ((e->audit = bm_audit_open(ctx, "gallery", err, sizeof err)) == NULL ||
        (e->redis = bm_coord_redis(ctx, err, sizeof err)) == NULL ||
        (e->producer = bm_producer_new(&e->bus, err, sizeof err)) == NULL) {
        rc = BM_EINVAL;
        goto fail;
    }
    if ((rc = open_consumer(e, err, sizeof err)) != BM_OK)
        goto fail;
    BM_LOGF(BM_LOG_INFO, "enrollment intake started", BM_LF_STR("topic", e->t_enroll),
            BM_LF_STR("group", e->group));
    batch_open(e);
    while (!bm_coord_stopping(ctx)) {
        if (step(e) == BM_OK)
            continue;
        /* Forget the unacknowledged batches: a fresh consumer starts from
         * the committed offsets, which never passed them. */
        drain_all(e);
        close_consumer(e);
        struct timespec ts = {0, 500 * 1000000L};
        nanosleep(&ts, NULL);
        if (bm_producer_fatal(e->producer, err, sizeof err) != BM_OK) {
            BM_LOGF(BM_LOG_ERROR, "enroll: producer fatal, recreating",
                    BM_LF_STR("error", err));
            bm_producer_free(e->producer);
            if ((e->producer = bm_producer_new(&e->bus, err, sizeof err)) == NULL) {
                rc = BM_EKAFKA;
                goto fail;
            }
        }
        if ((rc = open_consumer(e, err, sizeof err)) != BM_OK)
            goto fail;
    }
    /* Graceful stop: wait (bounded) for the reports of what was consumed,
     * so its offsets are stored and committed by the consumer's close. */
    {
        long long deadline = bm_mono_ms() + 30000;
        batch_open_final(e);
        while (e->nbatch > 1 && bm_mono_ms() < deadline) {
            bm_producer_poll(e->producer, 20);
            if (retire(e) != BM_OK)
                break;
        }
    }
    BM_LOGF(BM_LOG_INFO, "enrollment intake stopping", BM_LF_STR("topic", e->t_enroll));
    enroll_free(e);
    return BM_OK;
fail:
    BM_LOGF(BM_LOG_ERROR, "enrollment intake failed", BM_LF_STR("error", err));
    enroll_free(e);
    return rc != BM_OK ? rc : BM_EINVAL;
}
