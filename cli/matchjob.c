/* Client side of the match pipeline (see matchjob.h): job records out,
 * positioned readers in, results rendered.
 *
 * The reader asks the broker for each partition's high watermark
 * (bm_consumer_watermarks) and then assigns its consumer to those exact
 * numbers, so "from the end" means "after everything that existed when the
 * reader opened". */
#include "matchjob.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "wire/decode.h"
#include "wire/headers.h"



void cli_random(void *buf, size_t n)
{
    uint8_t *p = buf;
    size_t got = 0;
    while (got < n) {
        ssize_t r = getrandom(p + got, n - got, 0);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    if (got == n)
        return;
    /* Not expected on Linux >= 3.17; ids must still differ between runs. */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t s = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ ((uint64_t)getpid() << 40);
    for (; got < n; got++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        p[got] = (uint8_t)(s >> 56);
    }
}

static void hex(char *out, const uint8_t *b, size_t n)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[b[i] >> 4];
        out[2 * i + 1] = digits[b[i] & 15];
    }
}

void cli_uuid4(char out[CLI_UUID_LEN])
{
    uint8_t b[16];
    char h[32];
    cli_random(b, sizeof b);
    b[6] = (uint8_t)((b[6] & 0x0f) | 0x40);  /* version 4 */
    b[8] = (uint8_t)((b[8] & 0x3f) | 0x80);  /* RFC 4122 variant */
    hex(h, b, 16);
    snprintf(out, CLI_UUID_LEN, "%.8s-%.4s-%.4s-%.4s-%.12s", h, h + 8, h + 12, h + 16, h + 20);
}

void cli_traceparent(char out[CLI_TRACEPARENT_LEN])
{
    uint8_t b[24];
    char h[48];
    cli_random(b, sizeof b);
    b[0] |= 1;   /* all-zero ids are invalid; one set bit rules that out */
    b[16] |= 1;
    hex(h, b, 24);
    snprintf(out, CLI_TRACEPARENT_LEN, "00-%.32s-%.16s-01", h, h + 32);
}

void cli_template_dense(Biomatch__V1__Template *t, Biomatch__V1__DenseEmbedding *d,
                        Biomatch__V1__Modality modality, const void *row, uint32_t dim)
{
    biomatch__v1__template__init(t);
    biomatch__v1__dense_embedding__init(d);
    d->dim = dim;
    d->element_type = BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_F32;
    d->data.data = (uint8_t *)row;
    d->data.len = (size_t)dim * 4;
    t->modality = modality;
    t->kind_case = BIOMATCH__V1__TEMPLATE__KIND_DENSE;
    t->dense = d;
}

void cli_template_iris(Biomatch__V1__Template *t, Biomatch__V1__IrisCode *ic,
                       Biomatch__V1__IrisGeometry *g, uint32_t filters, uint32_t rows,
                       uint32_t columns, uint32_t bits, const uint8_t *code,
                       const uint8_t *mask, size_t nbytes)
{
    biomatch__v1__template__init(t);
    biomatch__v1__iris_code__init(ic);
    biomatch__v1__iris_geometry__init(g);
    g->filters = filters;
    g->rows = rows;
    g->columns = columns;
    g->bits_per_cell = bits;
    ic->geometry = g;
    ic->code.data = (uint8_t *)code;
    ic->code.len = nbytes;
    ic->mask.data = (uint8_t *)mask;
    ic->mask.len = nbytes;
    t->modality = BIOMATCH__V1__MODALITY__MODALITY_IRIS;
    t->kind_case = BIOMATCH__V1__TEMPLATE__KIND_IRIS;
    t->iris = ic;
}

int cli_job_send(struct bm_producer *p, const char *topic, const Biomatch__V1__MatchJob *job,
                 const char *traceparent, bm_delivery_fn cb, void *opaque, char *err,
                 size_t errlen)
{
    return cli_job_send_signed(p, topic, job, traceparent, NULL, cb, opaque, err, errlen);
}

int cli_job_send_signed(struct bm_producer *p, const char *topic,
                        const Biomatch__V1__MatchJob *job, const char *traceparent,
                        const struct bm_signer *signer, bm_delivery_fn cb, void *opaque,
                        char *err, size_t errlen)
{
    size_t len = 0;
    uint8_t *buf = bm_wire_encode(&job->base, &len);
    if (buf == NULL)
        return bm_seterr(err, errlen, BM_ENOMEM, "out of memory encoding the job");
    char ct[128];
    bm_wire_content_type(&biomatch__v1__match_job__descriptor, ct, sizeof ct);
    struct bm_bus_headers h;
    bm_bus_headers_init(&h);
    bm_bus_headers_add_str(&h, BM_HDR_CONTENT_TYPE, ct);
    if (traceparent != NULL)
        bm_bus_headers_add_str(&h, BM_HDR_TRACEPARENT, traceparent);
    char sig[BM_POLICY_SIG_MAX];
    if (signer != NULL) {
        /* Over the record exactly as produced (docs/wire.md "Signatures"). */
        struct bm_sig_record sr = {biomatch__v1__match_job__descriptor.name,
                                   topic, job->job_id, strlen(job->job_id), buf, len,
                                   job->agency, job->job_id};
        int src = bm_signer_sign_record(signer, &sr, bm_wall_ms(), sig, sizeof sig, err, errlen);
        if (src != BM_OK) {
            free(buf);
            return src;
        }
        bm_bus_headers_add_str(&h, BM_POLICY_SIG_HEADER, sig);
    }
    int rc = bm_producer_send_wait(p, topic, BM_PARTITION_ANY, job->job_id,
                                   strlen(job->job_id), buf, len, h.v, h.n, BM_SEND_SERVE, cb,
                                   opaque);
    free(buf);
    if (rc != BM_OK)
        return bm_seterr(err, errlen, rc, "send job %s to %s: %s", job->job_id, topic,
                         bm_strerror(rc));
    return BM_OK;
}

/* ------------------------------------------------------------- reader */

struct cli_reader {
    struct bm_consumer *c;
};

/* The start offset of every partition of 'topic' for reader 'c': its high
 * watermark, or BM_OFFSET_BEGINNING. Everything is bounded by 'deadline'
 * (monotonic ms). On BM_OK *tps is malloc'd (topic names borrowed from
 * 'topic'). */
static int start_offsets(const struct bm_bus_conf *bc, struct bm_consumer *c, const char *topic,
                         int from_beginning, int64_t deadline, struct bm_bus_tp **tps,
                         size_t *n, char *err, size_t errlen)
{
    struct bm_admin *a = bm_admin_new(bc, err, errlen);
    if (a == NULL)
        return BM_EKAFKA;
    int parts = 0, rc;
    /* A topic created a moment ago may take a little while to show up. */
    for (;;) {
        int64_t left = deadline - bm_mono_ms();
        rc = bm_admin_topic_partitions(a, topic, left > 1 ? (int)left : 1, &parts, err, errlen);
        if (rc == BM_OK || (rc != BM_ENOTFOUND && rc != BM_ETIMEDOUT) ||
            bm_mono_ms() >= deadline)
            break;
        usleep(100 * 1000);
    }
    bm_admin_free(a);
    if (rc == BM_OK && parts <= 0)
        rc = bm_seterr(err, errlen, BM_ENOTFOUND, "topic %s has no partitions", topic);
    if (rc != BM_OK)
        return rc;
    struct bm_bus_tp *v = calloc((size_t)parts, sizeof *v);
    if (v == NULL)
        return bm_seterr(err, errlen, BM_ENOMEM, "out of memory");
    for (int i = 0; i < parts; i++) {
        v[i].topic = topic;
        v[i].partition = i;
        v[i].offset = BM_OFFSET_BEGINNING;
        if (from_beginning)
            continue;
        int64_t lo = 0, hi = 0, left = deadline - bm_mono_ms();
        rc = bm_consumer_watermarks(c, topic, i, left > 1 ? (int)left : 1, &lo, &hi, err,
                                    errlen);
        if (rc != BM_OK) {
            free(v);
            return rc;
        }
        v[i].offset = hi;
    }
    *tps = v;
    *n = (size_t)parts;
    return BM_OK;
}

struct cli_reader *cli_reader_open(const struct bm_bus_conf *bc, const char *topic,
                                   int from_beginning, int timeout_ms, char *err,
                                   size_t errlen)
{
    int64_t deadline = bm_mono_ms() + timeout_ms;
    struct cli_reader *r = calloc(1, sizeof *r);
    if (r == NULL) {
        bm_seterr(err, errlen, BM_ENOMEM, "out of memory");
        return NULL;
    }
    struct bm_bus_tp *tps = NULL;
    size_t n = 0;
    r->c = bm_consumer_new(bc, NULL, NULL, NULL, err, errlen);
    if (r->c == NULL ||
        start_offsets(bc, r->c, topic, from_beginning, deadline, &tps, &n, err, errlen) != BM_OK ||
        bm_consumer_assign(r->c, tps, n, err, errlen) != BM_OK) {
        free(tps);
        cli_reader_free(r);
        return NULL;
    }
    free(tps);
    return r;
}

int cli_reader_next(struct cli_reader *r, int timeout_ms, struct bm_bus_msg **out, char *err,
                    size_t errlen)
{
    return bm_consumer_poll(r->c, timeout_ms, out, err, errlen);
}

void cli_reader_free(struct cli_reader *r)
{
    if (r == NULL)
        return;
    bm_consumer_free(r->c);
    free(r);
}

/* ------------------------------------------------------------- output */

const char *cli_status_name(Biomatch__V1__ResultStatus s)
{
    switch (s) {
    case BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_OK: return "OK";
    case BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_PARTIAL: return "PARTIAL";
    case BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_REJECTED: return "REJECTED";
    case BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_ERROR: return "ERROR";
    case BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_TIMEOUT: return "TIMEOUT";
    default: return "UNSPECIFIED";
    }
}

const char *cli_mode_name(Biomatch__V1__MatchMode m)
{
    switch (m) {
    case BIOMATCH__V1__MATCH_MODE__MATCH_MODE_IDENTIFY: return "IDENTIFY";
    case BIOMATCH__V1__MATCH_MODE__MATCH_MODE_VERIFY: return "VERIFY";
    default: return "UNSPECIFIED";
    }
}

int64_t cli_result_latency_ms(const Biomatch__V1__MatchResult *r)
{
    if (r->timings == NULL || r->timings->submitted_unix_ms <= 0 ||
        r->timings->completed_unix_ms <= 0)
        return -1;
    return r->timings->completed_unix_ms - r->timings->submitted_unix_ms;
}

void cli_result_print(const Biomatch__V1__MatchResult *r, int64_t client_latency_ms)
{
    printf("job %s  gallery %s  %s\n", r->job_id, r->gallery, cli_mode_name(r->mode));
    printf("status %s", cli_status_name(r->status));
    if (r->error_code != BIOMATCH__V1__ERROR_CODE__ERROR_CODE_NONE)
        printf(" (%s: %s)", bm_wire_error_code_name(r->error_code), r->error ? r->error : "");
    printf("  coverage %.0f%% (%u/%u shards)  gallery version %llu", (double)r->coverage * 100.0,
           r->shards_answered, r->shards_total, (unsigned long long)r->gallery_version);
    int64_t lat = cli_result_latency_ms(r);
    if (lat >= 0)
        printf("  latency %lld ms", (long long)lat);
    if (client_latency_ms >= 0)
        printf(" (round trip %lld ms)", (long long)client_latency_ms);
    printf("\n");
    if (r->mode == BIOMATCH__V1__MATCH_MODE__MATCH_MODE_VERIFY)
        printf("verified %s\n", r->verified ? "yes" : "no");
    if (r->n_candidates == 0) {
        printf("no candidates\n");
        return;
    }
    printf("%5s %4s  %-40s %10s %5s\n", "PROBE", "RANK", "SUBJECT", "SCORE", "SHARD");
    for (size_t i = 0; i < r->n_candidates; i++) {
        const Biomatch__V1__Candidate *c = r->candidates[i];
        printf("%5u %4u  %-40s %10.6f %5u\n", c->probe_index, c->rank, c->subject_id,
               (double)c->score, c->shard);
    }
}

cJSON *cli_result_json(const Biomatch__V1__MatchResult *r, int64_t client_latency_ms)
{
    cJSON *o = cJSON_CreateObject();
    if (o == NULL)
        return NULL;
    cJSON_AddStringToObject(o, "job_id", r->job_id);
    cJSON_AddStringToObject(o, "agency", r->agency);
    cJSON_AddStringToObject(o, "gallery", r->gallery);
    cJSON_AddStringToObject(o, "mode", cli_mode_name(r->mode));
    cJSON_AddStringToObject(o, "status", cli_status_name(r->status));
    if (r->error_code != BIOMATCH__V1__ERROR_CODE__ERROR_CODE_NONE) {
        cJSON_AddStringToObject(o, "error_code", bm_wire_error_code_name(r->error_code));
        cJSON_AddStringToObject(o, "error", r->error ? r->error : "");
    }
    cJSON_AddNumberToObject(o, "shards_answered", r->shards_answered);
    cJSON_AddNumberToObject(o, "shards_total", r->shards_total);
    cJSON_AddNumberToObject(o, "coverage", (double)r->coverage);
    cJSON_AddNumberToObject(o, "gallery_version", (double)r->gallery_version);
    cJSON_AddNumberToObject(o, "comparisons", (double)r->comparisons);
    if (r->mode == BIOMATCH__V1__MATCH_MODE__MATCH_MODE_VERIFY)
        cJSON_AddBoolToObject(o, "verified", r->verified);
    int64_t lat = cli_result_latency_ms(r);
    if (lat >= 0)
        cJSON_AddNumberToObject(o, "latency_ms", (double)lat);
    if (client_latency_ms >= 0)
        cJSON_AddNumberToObject(o, "round_trip_ms", (double)client_latency_ms);
    cJSON *arr = cJSON_AddArrayToObject(o, "candidates");
    for (size_t i = 0; arr != NULL && i < r->n_candidates; i++) {
        const Biomatch__V1__Candidate *c = r->candidates[i];
        cJSON *e = cJSON_CreateObject();
        if (e == NULL)
            break;
        cJSON_AddNumberToObject(e, "probe", c->probe_index);
        cJSON_AddNumberToObject(e, "rank", c->rank);
        cJSON_AddStringToObject(e, "subject_id", c->subject_id);
        cJSON_AddNumberToObject(e, "score", (double)c->score);
        cJSON_AddNumberToObject(e, "shard", c->shard);
        cJSON_AddItemToArray(arr, e);
    }
    if (r->n_attributes > 0) {
        cJSON *a = cJSON_AddObjectToObject(o, "attributes");
        for (size_t i = 0; a != NULL && i < r->n_attributes; i++)
            cJSON_AddStringToObject(a, r->attributes[i]->key, r->attributes[i]->value);
    }
    return o;
}
