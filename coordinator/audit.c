/* The coordinator's audit writer (see audit.h). Invariant: under 'mu' a
 * record is sealed and handed to the producer in one step, so the order of
 * a writer's records in its partition is their seq order, and the chain
 * head never runs ahead of what was queued (a record that could not be
 * queued is unsealed: the chain does not advance). */
#define _POSIX_C_SOURCE 200809L
#include "audit.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "audit/chain.h"
#include "audit/read.h"
#include "common/clock.h"
#include "conf/conf.h"
#include "conf/policy.h"
#include "conf/topics.h"
#include "crypto/keyring.h"
#include "obs/log.h"
#include "obs/metrics.h"
#include "role.h"
#include "wire/decode.h"
#include "wire/headers.h"

#define RECOVER_TAIL 10000   /* records per partition read first for the head */
#define RECOVER_TIMEOUT_MS 30000
#define CLOSE_FLUSH_MS 10000
#define SEND_RETRIES 200     /* x 10 ms while the local queue is full */

struct bm_audit {
    pthread_mutex_t mu;
    struct bm_audit_chain *chain;
    struct bm_producer *prod;
    struct bm_bus_prop *props;
    uint8_t key[BM_AUDIT_KEY_BYTES];
    int keyed;
    int log_ids;
    uint32_t cp_records;          /* checkpoint after this many records */
    uint32_t cp_interval_ms;      /* and at least this often */
    uint32_t since_cp;            /* records since the last checkpoint (under mu) */
    int64_t last_cp_ms;           /* monotonic time of the last checkpoint (under mu) */
    char topic[BM_TOPIC_MAX];
    struct bm_counter *failed;
    pthread_t thread;
    int thread_started;
    atomic_int stop;
};

/* Delivery reports run on the writer's thread. */
static void on_delivery(const struct bm_delivery *d, void *opaque)
{
    struct bm_audit *a = opaque;
    if (d->err == BM_OK)
        return;
    bm_counter_inc(a->failed);
    BM_LOGF(BM_LOG_ERROR, "audit record not delivered: the chain will show a gap",
            BM_LF_STR("topic", d->topic), BM_LF_STR("error", d->errstr));
}

/* Seal and queue under a->mu. On failure the chain is left unchanged. */
static int seal_and_send(struct bm_audit *a, Biomatch__V1__AuditRecord *rec)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    char err[256];
    uint64_t head_seq = 0;
    uint8_t head[BM_AUDIT_HASH_BYTES];
    bm_audit_chain_head(a->chain, &head_seq, head);
    int rc = bm_audit_chain_seal(a->chain, rec, &buf, &len, err, sizeof err);
    if (rc != BM_OK)
        return rc;
    char ct[160];
    bm_wire_content_type(&biomatch__v1__audit_record__descriptor, ct, sizeof ct);
    struct bm_bus_headers h;
    bm_bus_headers_init(&h);
    bm_bus_headers_add_str(&h, BM_HDR_CONTENT_TYPE, ct);
    const char *w = bm_audit_chain_writer(a->chain);
    for (int attempt = 0;; attempt++) {
        rc = bm_producer_send(a->prod, a->topic, BM_PARTITION_ANY, w, strlen(w), buf, len, h.v,
                              h.n, on_delivery, a);
        if (rc != BM_ERANGE || attempt >= SEND_RETRIES)
            break;
        /* The writer's thread serves the queue; give it time. */
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    free(buf);
    if (rc != BM_OK) /* not queued: take the seq back so the chain has no hole */
        bm_audit_chain_resume(a->chain, head_seq, head);
    return rc;
}

static int checkpoint_locked(struct bm_audit *a, int final)
{
    Biomatch__V1__AuditRecord rec = BIOMATCH__V1__AUDIT_RECORD__INIT;
    rec.kind = BIOMATCH__V1__AUDIT_RECORD__KIND__KIND_CHECKPOINT;
    rec.checkpoint_records = a->since_cp;
    rec.checkpoint_interval_ms = a->cp_interval_ms;
    rec.checkpoint_final = final != 0;
    int rc = seal_and_send(a, &rec);
    if (rc == BM_OK) {
        a->since_cp = 0;
        a->last_cp_ms = bm_mono_ms();
    }
    return rc;
}

static void *writer_main(void *arg)
{
    struct bm_audit *a = arg;
    while (!atomic_load(&a->stop)) {
        bm_producer_poll(a->prod, 100);
        pthread_mutex_lock(&a->mu);
        if (bm_mono_ms() - a->last_cp_ms >= a->cp_interval_ms &&
            checkpoint_locked(a, 0) != BM_OK)
            BM_LOGF(BM_LOG_ERROR, "audit checkpoint not queued",
                    BM_LF_STR("writer", bm_audit_chain_writer(a->chain)));
        pthread_mutex_unlock(&a->mu);
    }
    return NULL;
}

/* ------------------------------------------------------------ recovery */

struct head {
    const char *writer;
    const uint8_t *key;   /* NULL: unkeyed chain, hashes checked unkeyed */
    uint64_t seq;
    uint8_t hash[BM_AUDIT_HASH_BYTES];
    uint64_t forged;      /* records of this writer whose hash did not verify */
};

static int on_head_record(int32_t partition, int64_t offset, const void *value, size_t len,
                          void *opaque)
{
    (void)partition;
    (void)offset;
    struct head *h = opaque;
    if (value == NULL)
        return 0;
    char err[128];
    Biomatch__V1__AuditRecord *r = bm_wire_decode_audit(value, len, 1u << 20, err, sizeof err);
    if (r == NULL)
        return 0;
    if (r->writer != NULL && strcmp(r->writer, h->writer) == 0 && r->seq > h->seq &&
        r->hash.len == BM_AUDIT_HASH_BYTES) {
        /* Only a record this writer could have sealed may become the head:
         * a forged one would make the restarted chain continue a forgery. */
        uint8_t mac[BM_AUDIT_HASH_BYTES];
        int same_key = (h->key != NULL) == (r->key_id != NULL && r->key_id[0] != '\0');
        if (same_key && bm_audit_mac(r, h->key, mac) == BM_OK &&
            memcmp(mac, r->hash.data, BM_AUDIT_HASH_BYTES) == 0) {
            h->seq = r->seq;
            memcpy(h->hash, r->hash.data, BM_AUDIT_HASH_BYTES);
        } else {
            h->forged++;
        }
    }
    bm_wire_free_audit(r);
    return 0;
}

/* The last record of this writer in the topic: the tail of each partition
 * first (where a live writer's checkpoints keep it), then everything. */
static int recover_head(struct bm_audit *a, const struct bm_bus_conf *bc, char *err,
                        size_t errlen)
{
    struct head h = {bm_audit_chain_writer(a->chain), a->keyed ? a->key : NULL, 0, {0}, 0};
    int rc = bm_audit_read(bc, a->topic, 0, RECOVER_TAIL, RECOVER_TIMEOUT_MS, on_head_record,
                           &h, NULL, err, errlen);
    if (rc == BM_OK && h.seq == 0)
        rc = bm_audit_read(bc, a->topic, 0, 0, RECOVER_TIMEOUT_MS, on_head_record, &h, NULL,
                           err, errlen);
    if (rc == BM_ENOTFOUND)
        rc = BM_OK; /* no audit topic yet: a new chain */
    if (rc != BM_OK)
        return rc;
    if (h.forged > 0)
        BM_LOGF(BM_LOG_ERROR, "audit topic holds records in this writer's name that it did not "
                              "seal (or sealed under another key); continuing after the last "
                              "valid one",
                BM_LF_STR("writer", h.writer), BM_LF_INT("records", h.forged));
    bm_audit_chain_resume(a->chain, h.seq, h.hash);
    BM_LOGF(BM_LOG_INFO, "audit chain resumed", BM_LF_STR("writer", h.writer),
            BM_LF_INT("after_seq", h.seq), BM_LF_BOOL("keyed", a->keyed));
    return BM_OK;
}

/* ------------------------------------------------------------ open/close */

static int load_key(struct bm_audit *a, const struct bm_conf *conf, const char *writer,
                    char *err, size_t errlen)
{
    if (conf->security.audit_key_file == NULL) {
        BM_LOGF(BM_LOG_WARN, "no security.audit_key_file: the audit chain is unkeyed, so "
                             "anyone who can write to the audit topic can forge it",
                BM_LF_STR("writer", writer));
        return BM_OK;
    }
    struct bm_keyring *kr = bm_keyring_new();
    if (kr == NULL)
        return bm_seterr(err, errlen, BM_ENOMEM, "audit: out of memory");
    int rc = bm_keyring_add_file(kr, conf->security.audit_key_id,
                                 conf->security.audit_key_file, 1, err, errlen);
    if (rc == BM_OK) {
        memcpy(a->key, bm_keyring_find(kr, conf->security.audit_key_id), BM_AUDIT_KEY_BYTES);
        a->keyed = 1;
    }
    bm_keyring_free(kr);
    return rc;
}

static void release(struct bm_audit *a)
{
    bm_producer_free(a->prod);
    free(a->props);
    bm_audit_chain_free(a->chain);
    memset(a->key, 0, sizeof a->key);
    pthread_mutex_destroy(&a->mu);
    free(a);
}

struct bm_audit *bm_audit_open(const struct bm_coord_ctx *ctx, const char *role, char *err,
                               size_t errlen)
{
    const struct bm_conf *conf = ctx->conf;
    struct bm_audit *a = calloc(1, sizeof *a);
    if (a == NULL) {
        bm_seterr(err, errlen, BM_ENOMEM, "audit: out of memory");
        return NULL;
    }
    pthread_mutex_init(&a->mu, NULL);
    atomic_init(&a->stop, 0);
    a->log_ids = conf->audit.log_subject_ids;
    a->cp_records = (uint32_t)conf->audit.checkpoint_records;
    a->cp_interval_ms = (uint32_t)conf->audit.checkpoint_interval_ms;
    a->last_cp_ms = bm_mono_ms();
    if (ctx->metrics != NULL)
        a->failed = bm_metrics_counter(ctx->metrics, "biomatch_audit_failed_total",
                                       "Audit records that could not be queued or delivered",
                                       NULL, NULL, 0);
    char writer[BM_AUDIT_WRITER_MAX + 1];
    snprintf(writer, sizeof writer, "%.100s/%.20s", conf->node_id, role);
    struct bm_bus_conf bc;
    if (load_key(a, conf, writer, err, errlen) != BM_OK ||
        (a->chain = bm_audit_chain_new(writer, a->keyed ? conf->security.audit_key_id : NULL,
                                       a->keyed ? a->key : NULL, err, errlen)) == NULL ||
        bm_topic_name(a->topic, sizeof a->topic, conf->topic_prefix, BM_TOPIC_AUDIT) != 0 ||
        bm_coord_bus_conf(ctx, NULL, 0, &bc, &a->props, err, errlen) != BM_OK ||
        recover_head(a, &bc, err, errlen) != BM_OK ||
        (a->prod = bm_producer_new(&bc, err, errlen)) == NULL) {
        release(a);
        return NULL;
    }
    if (pthread_create(&a->thread, NULL, writer_main, a) != 0) {
        bm_seterr(err, errlen, BM_ENOMEM, "audit: cannot start its thread");
        release(a);
        return NULL;
    }
    a->thread_started = 1;
    return a;
}

void bm_audit_close(struct bm_audit *a)
{
    if (a == NULL)
        return;
    if (a->thread_started) {
        atomic_store(&a->stop, 1);
        pthread_join(a->thread, NULL);
    }
    pthread_mutex_lock(&a->mu);
    if (checkpoint_locked(a, 1) != BM_OK)
        BM_LOGF(BM_LOG_ERROR, "final audit checkpoint not queued",
                BM_LF_STR("writer", bm_audit_chain_writer(a->chain)));
    pthread_mutex_unlock(&a->mu);
    if (bm_producer_flush(a->prod, CLOSE_FLUSH_MS) != BM_OK)
        BM_LOGF(BM_LOG_ERROR, "audit records still undelivered at close",
                BM_LF_INT("outstanding", bm_producer_outstanding(a->prod)));
    release(a);
}

/* ------------------------------------------------------------ emit */

void bm_audit_signer_key_id(const struct bm_bus_msg *src, char *out, size_t outlen)
{
    out[0] = '\0';
    if (src == NULL)
        return;
    const struct bm_bus_header *sig =
        bm_bus_header_find(src->headers, src->nheaders, BM_POLICY_SIG_HEADER);
    if (sig == NULL || sig->value == NULL)
        return;
    const char *v = sig->value;
    size_t n = 0;
    while (n < sig->len && n + 1 < outlen && v[n] != ':') {
        char ch = v[n];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '_' || ch == '-'))
            return;
        n++;
    }
    if (n == 0 || n >= sig->len || v[n] != ':')
        return;
    memcpy(out, v, n);
    out[n] = '\0';
}

int bm_audit_emit(struct bm_audit *a, Biomatch__V1__AuditRecord *rec,
                  const struct bm_bus_msg *src)
{
    char signer[65];
    if (rec->signer_key_id == NULL || rec->signer_key_id[0] == '\0') {
        bm_audit_signer_key_id(src, signer, sizeof signer);
        rec->signer_key_id = signer;
    }
    /* Returned subject ids as keyed hashes unless they may be logged. */
    char **orig = rec->subjects;
    size_t norig = rec->n_subjects;
    char **hashed = NULL;
    char (*hs)[BM_AUDIT_SUBJECT_HASH_LEN] = NULL;
    int rc = BM_OK;
    if (rec->n_subjects > 0 && !a->log_ids) {
        if (!a->keyed) {
            rec->n_subjects = 0; /* no key to hide them with: leave them out */
        } else {
            hashed = calloc(rec->n_subjects, sizeof *hashed);
            hs = calloc(rec->n_subjects, sizeof *hs);
            if (hashed == NULL || hs == NULL)
                rc = BM_ENOMEM;
            for (size_t i = 0; rc == BM_OK && i < rec->n_subjects; i++) {
                rc = bm_audit_subject_hash(a->key, rec->gallery ? rec->gallery : "",
                                           orig[i] ? orig[i] : "", hs[i]);
                hashed[i] = hs[i];
            }
            rec->subjects = hashed;
        }
    }
    if (rc == BM_OK) {
        pthread_mutex_lock(&a->mu);
        rc = seal_and_send(a, rec);
        if (rc == BM_OK && ++a->since_cp >= a->cp_records && checkpoint_locked(a, 0) != BM_OK)
            BM_LOGF(BM_LOG_ERROR, "audit checkpoint not queued",
                    BM_LF_STR("writer", bm_audit_chain_writer(a->chain)));
        pthread_mutex_unlock(&a->mu);
    }
    rec->subjects = orig;
    rec->n_subjects = norig;
    free(hashed);
    free(hs);
    if (rc != BM_OK) {
        bm_counter_inc(a->failed);
        BM_LOGF(BM_LOG_ERROR, "audit record not queued: the chain will show a gap",
                BM_LF_STR("error", bm_strerror(rc)));
    }
    return rc;
}
