/* `biomatch tail`: follow one biomatch topic and print one line per record,
 * decoded (results, partials, audit, jobs) or described (dlq: key and the
 * error header), as text or one JSON object per line.
 *
 * Invariant: a record that does not decode is reported as such on its own
 * line and never stops the tail; the command ends on SIGINT/SIGTERM, after
 * --count records, or after --idle-ms without a record (so scripts and
 * tests can bound it). Starts at the end of the topic unless
 * --from-beginning. */
#define _POSIX_C_SOURCE 200809L

#include <cjson/cJSON.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "common/clock.h"
#include "conf/topics.h"
#include "matchjob.h"
#include "wire/decode.h"
#include "wire/headers.h"

#define OPEN_MS 15000
#define MAX_VALUE (64u << 20)

static volatile sig_atomic_t g_stop;

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

enum kind { K_RESULTS, K_PARTIALS, K_DLQ, K_AUDIT, K_JOBS };

static void key_str(const struct bm_bus_msg *m, char *buf, size_t len)
{
    size_t n = m->key ? m->keylen : 0;
    if (n >= len)
        n = len - 1;
    for (size_t i = 0; i < n; i++) {
        char ch = ((const char *)m->key)[i];
        buf[i] = ch >= 0x20 && ch < 0x7f ? ch : '?';   /* keep the terminal sane */
    }
    buf[n] = '\0';
}

static const char *partial_kind(Biomatch__V1__PartialResult__Kind k)
{
    return k == BIOMATCH__V1__PARTIAL_RESULT__KIND__KIND_OPENED  ? "OPENED"
           : k == BIOMATCH__V1__PARTIAL_RESULT__KIND__KIND_SHARD ? "SHARD"
                                                                  : "UNSPECIFIED";
}

static const char *audit_kind(Biomatch__V1__AuditRecord__Kind k)
{
    switch (k) {
    case BIOMATCH__V1__AUDIT_RECORD__KIND__KIND_JOB: return "JOB";
    case BIOMATCH__V1__AUDIT_RECORD__KIND__KIND_ENROLL: return "ENROLL";
    case BIOMATCH__V1__AUDIT_RECORD__KIND__KIND_GALLERY_DEFINITION: return "GALLERY_DEFINITION";
    case BIOMATCH__V1__AUDIT_RECORD__KIND__KIND_CHECKPOINT: return "CHECKPOINT";
    default: return "UNSPECIFIED";
    }
}

/* One record as JSON or text. Returns 0, or -1 when it did not decode. */
static int show(enum kind k, const struct bm_bus_msg *m, int json)
{
    char err[256], key[160];
    key_str(m, key, sizeof key);
    const uint8_t *v = m->value;
    size_t vl = m->value ? m->valuelen : 0;
    cJSON *o = json ? cJSON_CreateObject() : NULL;
    if (o != NULL) {
        cJSON_AddNumberToObject(o, "partition", m->partition);
        cJSON_AddNumberToObject(o, "offset", (double)m->offset);
        cJSON_AddStringToObject(o, "key", key);
    } else {
        printf("[%d@%lld] ", (int)m->partition, (long long)m->offset);
    }
    int rc = 0;
    if (k == K_DLQ) {
        char e[512];
        bm_bus_header_get_str(m->headers, m->nheaders, BM_HDR_ERROR, e, sizeof e);
        if (o) {
            cJSON_AddStringToObject(o, "error", e);
            cJSON_AddNumberToObject(o, "bytes", (double)vl);
        } else {
            printf("key=%s bytes=%zu error=%s\n", key, vl, e[0] ? e : "(no error header)");
        }
    } else if (k == K_RESULTS) {
        Biomatch__V1__MatchResult *r = bm_wire_decode_result(v, vl, MAX_VALUE, err, sizeof err);
        if (r == NULL) {
            rc = -1;
        } else if (o) {
            cJSON_Delete(o);
            o = cli_result_json(r, -1);
        } else {
            printf("job=%s status=%s", r->job_id, cli_status_name(r->status));
            if (r->n_candidates > 0)
                printf(" top=%s(%.4f)", r->candidates[0]->subject_id,
                       (double)r->candidates[0]->score);
            else
                printf(" top=-");
            printf(" candidates=%zu coverage=%.0f%%", r->n_candidates,
                   (double)r->coverage * 100.0);
            int64_t lat = cli_result_latency_ms(r);
            if (lat >= 0)
                printf(" latency=%lldms", (long long)lat);
            if (r->error_code != BIOMATCH__V1__ERROR_CODE__ERROR_CODE_NONE)
                printf(" error=%s(%s)", bm_wire_error_code_name(r->error_code),
                       r->error ? r->error : "");
            printf("\n");
        }
        bm_wire_free_result(r);
    } else if (k == K_PARTIALS) {
        Biomatch__V1__PartialResult *r = bm_wire_decode_partial(v, vl, MAX_VALUE, err, sizeof err);
        if (r == NULL) {
            rc = -1;
        } else if (o) {
            cJSON_AddStringToObject(o, "job_id", r->job_id);
            cJSON_AddStringToObject(o, "kind", partial_kind(r->kind));
            cJSON_AddNumberToObject(o, "shard", r->shard);
            cJSON_AddNumberToObject(o, "shard_count", r->shard_count);
            cJSON_AddStringToObject(o, "status", cli_status_name(r->status));
            cJSON_AddNumberToObject(o, "candidates", (double)r->n_candidates);
            cJSON_AddNumberToObject(o, "gallery_version", (double)r->gallery_version);
            cJSON_AddStringToObject(o, "worker", r->worker);
        } else {
            printf("job=%s kind=%s shard=%u/%u status=%s candidates=%zu version=%llu worker=%s\n",
                   r->job_id, partial_kind(r->kind), r->shard, r->shard_count,
                   cli_status_name(r->status), r->n_candidates,
                   (unsigned long long)r->gallery_version, r->worker[0] ? r->worker : "-");
        }
        bm_wire_free_partial(r);
    } else if (k == K_AUDIT) {
        Biomatch__V1__AuditRecord *r = bm_wire_decode_audit(v, vl, MAX_VALUE, err, sizeof err);
        if (r == NULL) {
            rc = -1;
        } else if (o) {
            cJSON_AddStringToObject(o, "kind", audit_kind(r->kind));
            cJSON_AddStringToObject(o, "writer", r->writer);
            cJSON_AddNumberToObject(o, "seq", (double)r->seq);
            cJSON_AddNumberToObject(o, "time_unix_ms", (double)r->time_unix_ms);
            cJSON_AddStringToObject(o, "agency", r->agency);
            cJSON_AddStringToObject(o, "gallery", r->gallery);
            cJSON_AddStringToObject(o, "id", r->id);
            cJSON_AddStringToObject(o, "status", cli_status_name(r->status));
            cJSON_AddNumberToObject(o, "candidates", r->candidates);
        } else {
            printf("%s writer=%s seq=%llu agency=%s gallery=%s id=%s status=%s candidates=%u\n",
                   audit_kind(r->kind), r->writer, (unsigned long long)r->seq, r->agency,
                   r->gallery, r->id, cli_status_name(r->status), r->candidates);
        }
        bm_wire_free_audit(r);
    } else {
        Biomatch__V1__MatchJob *j = bm_wire_decode_job(v, vl, MAX_VALUE, err, sizeof err);
        if (j == NULL) {
            rc = -1;
        } else if (o) {
            cJSON_AddStringToObject(o, "job_id", j->job_id);
            cJSON_AddStringToObject(o, "agency", j->agency);
            cJSON_AddStringToObject(o, "gallery", j->gallery);
            cJSON_AddStringToObject(o, "mode", cli_mode_name(j->mode));
            cJSON_AddNumberToObject(o, "probes", (double)j->n_probes);
            cJSON_AddNumberToObject(o, "top_k", j->top_k);
        } else {
            printf("job=%s agency=%s gallery=%s mode=%s probes=%zu top_k=%u\n", j->job_id,
                   j->agency, j->gallery, cli_mode_name(j->mode), j->n_probes, j->top_k);
        }
        bm_wire_free_job(j);
    }
    if (rc != 0) {
        if (o)
            cJSON_AddStringToObject(o, "undecodable", err);
        else
            printf("key=%s bytes=%zu undecodable: %s\n", key, vl, err);
    }
    if (o) {
        char *txt = cJSON_PrintUnformatted(o);
        if (txt)
            printf("%s\n", txt);
        free(txt);
        cJSON_Delete(o);
    }
    fflush(stdout);
    return rc;
}

int cli_tail(int argc, char **argv)
{
    struct cli_common c = { 0 };
    const char *from = NULL, *json = NULL, *count_s = NULL, *idle_s = NULL;
    const char *pos[1];
    size_t npos = 0;
    const struct bm_opt opts[] = {
        CLI_COMMON_OPTS(&c),
        { "--from-beginning", NULL, &from, "start at the oldest record instead of the end" },
        { "--json", NULL, &json, "one JSON object per record" },
        { "--count", "N", &count_s, "stop after N records" },
        { "--idle-ms", "MS", &idle_s, "stop after MS without a record" },
    };
    int p = cli_parse(argc, argv, 1, opts, sizeof opts / sizeof opts[0], pos, 1, &npos,
                      "biomatch tail results|partials|dlq|audit|jobs [flags]",
                      "Follow a topic and print one line per record: results (job, status, top\n"
                      "candidate, coverage, latency), partials, audit, jobs, or dlq (key and\n"
                      "error header). Runs until Ctrl-C, --count or --idle-ms.");
    if (p != 0)
        return p > 0 ? 0 : 2;
    enum kind k;
    enum bm_topic t;
    if (npos != 1) {
        fprintf(stderr, "biomatch: tail needs a topic: results, partials, dlq, audit or jobs\n");
        return 2;
    }
    if (strcmp(pos[0], "results") == 0) { k = K_RESULTS; t = BM_TOPIC_RESULTS; }
    else if (strcmp(pos[0], "partials") == 0) { k = K_PARTIALS; t = BM_TOPIC_PARTIALS; }
    else if (strcmp(pos[0], "dlq") == 0) { k = K_DLQ; t = BM_TOPIC_DLQ; }
    else if (strcmp(pos[0], "audit") == 0) { k = K_AUDIT; t = BM_TOPIC_AUDIT; }
    else if (strcmp(pos[0], "jobs") == 0) { k = K_JOBS; t = BM_TOPIC_JOBS; }
    else {
        fprintf(stderr, "biomatch: unknown topic '%s' (results, partials, dlq, audit, jobs)\n",
                pos[0]);
        return 2;
    }
    uint64_t count = 0;
    uint32_t idle = 0;
    if ((count_s && cli_u64("--count", count_s, &count)) ||
        (idle_s && cli_u32("--idle-ms", idle_s, 1, 86400000, &idle)))
        return 2;
    if (cli_conf_load(&c) != 0)
        return 2;
    int ret = 1;
    char topic[BM_TOPIC_MAX], err[512];
    struct bm_bus_prop *props = calloc(c.conf->kafka_n + 1, sizeof *props);
    struct cli_reader *rd = NULL;
    struct bm_bus_conf bc;
    if (props == NULL || cli_bus_conf(&c, &bc, props) != 0)
        goto out;
    if (bm_topic_name(topic, sizeof topic, cli_prefix(&c), t) != 0)
        goto out;
    rd = cli_reader_open(&bc, topic, from != NULL, OPEN_MS, err, sizeof err);
    if (rd == NULL) {
        fprintf(stderr, "biomatch: %s\n", err);
        goto out;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    uint64_t seen = 0;
    int64_t last = bm_mono_ms();
    while (!g_stop && (count == 0 || seen < count)) {
        struct bm_bus_msg *m = NULL;
        int rc = cli_reader_next(rd, 200, &m, err, sizeof err);
        if (rc == BM_OK && m != NULL) {
            show(k, m, json != NULL);
            bm_bus_msg_free(m);
            seen++;
            last = bm_mono_ms();
        } else if (idle && bm_mono_ms() - last >= idle) {
            break;
        }
    }
    ret = 0;
out:
    cli_reader_free(rd);
    free(props);
    cli_conf_free(&c);
    return ret;
}
