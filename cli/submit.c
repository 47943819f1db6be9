/* `biomatch submit`: send one MatchJob (or one per probe with --each) built
 * from a .npy matrix or an iris file to the jobs topic, and with --wait
 * print the MatchResult that comes back on the reply topic.
 *
 * Invariant: with --wait the reply reader is positioned at the reply
 * topic's high watermarks before the first job is produced (matchjob.h),
 * so a result can never slip past us however fast the cluster answers. The
 * whole command is bounded by --timeout-ms (default the job deadline +
 * 10 s, or 30 s): opening the reader, delivering the jobs and waiting all
 * share that one budget, so an unreachable broker costs exactly it.
 * Exit status: 0 when every job was delivered and (with --wait) every
 * result arrived with status OK or PARTIAL; 1 otherwise; 2 usage error. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "common/clock.h"
#include "conf/topics.h"
#include "irisfile.h"
#include "matchjob.h"
#include "npy.h"
#include "wire/decode.h"
#include "wire/job.h"

/* What is left of the command's budget that ends at 'end' (monotonic ms),
 * at least 1 ms so a call that takes a timeout still looks once. */
static int left_ms(int64_t end)
{
    int64_t left = end - bm_mono_ms();
    return left > 1 ? (int)left : 1;
}

struct sent {
    char id[160];
    int delivered;        /* 1 ok, -1 failed, 0 pending */
    int64_t sent_ms;
    Biomatch__V1__MatchResult *result;
    int64_t got_ms;
};

static void on_delivery(const struct bm_delivery *d, void *opaque)
{
    struct sent *s = opaque;
    s->delivered = d->err == BM_OK ? 1 : -1;
    if (d->err != BM_OK)
        fprintf(stderr, "biomatch: job %s not delivered: %s\n", s->id, d->errstr);
}

static int parse_modality(const char *s, Biomatch__V1__Modality *m)
{
    if (strcmp(s, "face") == 0) *m = BIOMATCH__V1__MODALITY__MODALITY_FACE;
    else if (strcmp(s, "fingerprint") == 0) *m = BIOMATCH__V1__MODALITY__MODALITY_FINGERPRINT;
    else if (strcmp(s, "palm") == 0) *m = BIOMATCH__V1__MODALITY__MODALITY_PALM;
    else return -1;
    return 0;
}

/* Wait for the results of every delivered job in s[0..n). Returns how many
 * arrived. */
static size_t await_results(struct cli_reader *rd, struct sent *s, size_t n, int timeout_ms)
{
    size_t want = 0, got = 0;
    for (size_t i = 0; i < n; i++)
        want += s[i].delivered == 1;
    int64_t deadline = bm_mono_ms() + timeout_ms;
    char err[512];
    while (got < want) {
        int64_t left = deadline - bm_mono_ms();
        if (left <= 0)
            break;
        struct bm_bus_msg *m = NULL;
        int rc = cli_reader_next(rd, left > 200 ? 200 : (int)left, &m, err, sizeof err);
        if (rc != BM_OK || m == NULL)
            continue;
        Biomatch__V1__MatchResult *r = NULL;
        if (m->value != NULL)
            r = bm_wire_decode_result(m->value, m->valuelen, BM_WIRE_DEFAULT_MAX_BYTES * 16, err,
                                      sizeof err);
        bm_bus_msg_free(m);
        if (r == NULL)
            continue;
        int used = 0;
        for (size_t i = 0; i < n; i++) {
            /* Results are at-least-once: keep the first per job id. */
            if (s[i].result == NULL && strcmp(s[i].id, r->job_id) == 0) {
                s[i].result = r;
                s[i].got_ms = bm_mono_ms();
                got++;
                used = 1;
                break;
            }
        }
        if (!used)
            bm_wire_free_result(r);
    }
    return got;
}

int cli_submit(int argc, char **argv)
{
    struct cli_common c = { 0 };
    const char *gallery = NULL, *npyf = NULL, *irisf = NULL, *row_s = NULL, *each = NULL;
    const char *verify = NULL, *topk_s = "10", *thr_s = NULL, *deadline_s = NULL;
    const char *wait = NULL, *json = NULL, *jobid = NULL, *agency = NULL, *reply = NULL;
    const char *modality_s = "face", *timeout_s = NULL, *minver_s = NULL;
    const char *signkey = NULL, *keyid = NULL;
    const char *pos[1];
    size_t npos = 0;
    const struct bm_opt opts[] = {
        CLI_COMMON_OPTS(&c),
        { "--gallery", "NAME", &gallery, "gallery to search (required)" },
        { "--npy", "FILE", &npyf, "dense probes: float32 .npy, one row per probe" },
        { "--row", "I", &row_s, "use only row I of the .npy / record I of the iris file" },
        { "--iris", "FILE", &irisf, "iris probes: iris file (docs/formats.md)" },
        { "--modality", "face|fingerprint|palm", &modality_s, "dense probes' modality (default face)" },
        { "--each", NULL, &each, "one job per probe instead of one job with every probe" },
        { "--verify", "SUBJECT", &verify, "1:1 verification against SUBJECT instead of 1:N" },
        { "--top-k", "K", &topk_s, "candidates per probe, 1..1000 (default 10)" },
        { "--threshold", "T", &thr_s, "similarity floor (cosine; 1 - HD for iris)" },
        { "--deadline-ms", "D", &deadline_s, "deadline from now (default: the coordinator's)" },
        { "--min-version", "V", &minver_s, "minimum gallery manifest version to score" },
        { "--job-id", "ID", &jobid, "job id (default a random UUIDv4; with --each ID-<row>)" },
        { "--agency", "NAME", &agency, "submitting agency (default $BIOMATCH_AGENCY or \"cli\")" },
        { "--reply-topic", "TOPIC", &reply, "where the result goes (default the results topic)" },
        { "--wait", NULL, &wait, "wait for the result(s) and print them" },
        { "--timeout-ms", "MS", &timeout_s, "bound on the whole command: connect, deliver, --wait (default deadline + 10 s, or 30 s)" },
        { "--json", NULL, &json, "print JSON (one object per line) instead of a table" },
        { "--sign-key", "FILE", &signkey, "sign each job with this Ed25519 private key (PEM)" },
        { "--key-id", "ID", &keyid, "the key's id in the policy file (with --sign-key)" },
    };
    int p = cli_parse(argc, argv, 1, opts, sizeof opts / sizeof opts[0], pos, 0, &npos,
                      "biomatch submit --gallery NAME (--npy FILE | --iris FILE) [flags]",
                      "Submit a match job (key = job id, headers content-type and a fresh\n"
                      "traceparent) to the jobs topic. Every probe of the file goes into one\n"
                      "job unless --row or --each. With --wait, read the reply topic from its\n"
                      "end (positioned before sending) until the result arrives.");
    if (p != 0)
        return p > 0 ? 0 : 2;
    if (gallery == NULL || (!!npyf + !!irisf) != 1) {
        fprintf(stderr, "biomatch: submit needs --gallery and exactly one of --npy, --iris\n");
        return 2;
    }
    uint32_t topk, row = 0, deadline = 0, timeout = 0;
    uint64_t minver = 0;
    double thr = 0;
    Biomatch__V1__Modality mod = BIOMATCH__V1__MODALITY__MODALITY_IRIS;
    /* The coordinator's default limit; a deployment that raises it can
     * still be reached with a hand-built job. */
    struct bm_wire_limits limits;
    bm_wire_limits_default(&limits);
    if (cli_u32("--top-k", topk_s, 1, limits.max_top_k, &topk) ||
        (row_s && cli_u32("--row", row_s, 0, UINT32_MAX - 1, &row)) ||
        (thr_s && cli_double("--threshold", thr_s, -1, 1, &thr)) ||
        (deadline_s && cli_u32("--deadline-ms", deadline_s, 1, 3600000, &deadline)) ||
        (timeout_s && cli_u32("--timeout-ms", timeout_s, 1, 3600000, &timeout)) ||
        (minver_s && cli_u64("--min-version", minver_s, &minver)))
        return 2;
    if (npyf != NULL && parse_modality(modality_s, &mod) != 0) {
        fprintf(stderr, "biomatch: --modality must be face, fingerprint or palm\n");
        return 2;
    }
    if (!!signkey != !!keyid) {
        fprintf(stderr, "biomatch: --sign-key and --key-id go together\n");
        return 2;
    }
    if (agency == NULL)
        agency = getenv("BIOMATCH_AGENCY");
    if (agency == NULL || agency[0] == '\0')
        agency = "cli";
    if (timeout == 0)
        timeout = deadline ? deadline + 10000 : 30000;
    int64_t end = bm_mono_ms() + timeout;

    char err[512];
    int ret = 1;
    struct bm_npy m = { 0 };
    struct bm_irisfile irs = { 0 };
    struct bm_producer *pr = NULL;
    struct cli_reader *rd = NULL;
    struct bm_bus_prop *props = NULL;
    struct sent *s = NULL;
    Biomatch__V1__Template *tpl = NULL;
    Biomatch__V1__DenseEmbedding *de = NULL;
    Biomatch__V1__IrisCode *ic = NULL;
    Biomatch__V1__IrisGeometry *ig = NULL;
    Biomatch__V1__Template **tptr = NULL;
    struct bm_signer *signer = NULL;
    size_t nprobes = 0, njobs = 0;
    if (signkey != NULL && (signer = bm_signer_load(signkey, keyid, err, sizeof err)) == NULL) {
        fprintf(stderr, "biomatch: --sign-key: %s\n", err);
        return 1;
    }
    if (npyf != NULL) {
        if (bm_npy_read(npyf, &m, err, sizeof err) != BM_OK) {
            fprintf(stderr, "biomatch: %s\n", err);
            return 1;
        }
        nprobes = (size_t)m.rows;
    } else {
        if (bm_irisfile_read(irisf, &irs, err, sizeof err) != BM_OK) {
            fprintf(stderr, "biomatch: %s\n", err);
            return 1;
        }
        nprobes = irs.count;
    }
    size_t first = 0;
    if (row_s != NULL) {
        if (row >= nprobes) {
            fprintf(stderr, "biomatch: --row %u: the file holds %zu probe(s)\n", row, nprobes);
            goto out;
        }
        first = row;
        nprobes = 1;
    }
    if (nprobes == 0) {
        fprintf(stderr, "biomatch: no probes in the file\n");
        goto out;
    }
    njobs = each ? nprobes : 1;
    tpl = calloc(nprobes, sizeof *tpl);
    de = calloc(nprobes, sizeof *de);
    ic = calloc(nprobes, sizeof *ic);
    ig = calloc(nprobes, sizeof *ig);
    tptr = calloc(nprobes, sizeof *tptr);
    s = calloc(njobs, sizeof *s);
    props = calloc(1, sizeof *props);
    if (!tpl || !de || !ic || !ig || !tptr || !s || !props) {
        fprintf(stderr, "biomatch: out of memory\n");
        goto out;
    }
    for (size_t i = 0; i < nprobes; i++) {
        size_t r = first + i;
        if (npyf != NULL)
            cli_template_dense(&tpl[i], &de[i], mod, m.data + r * m.cols * 4, (uint32_t)m.cols);
        else
            cli_template_iris(&tpl[i], &ic[i], &ig[i], irs.filters, irs.rows, irs.columns,
                              irs.bits_per_cell, bm_irisfile_code(&irs, (uint32_t)r),
                              bm_irisfile_mask(&irs, (uint32_t)r), irs.code_bytes);
        tptr[i] = &tpl[i];
    }
    if (cli_conf_load(&c) != 0)
        goto out;
    free(props);
    props = calloc(c.conf->kafka_n + 1, sizeof *props);
    struct bm_bus_conf bc;
    if (props == NULL || cli_bus_conf(&c, &bc, props) != 0)
        goto out;
    char jobs_topic[BM_TOPIC_MAX], results_topic[BM_TOPIC_MAX];
    if (bm_topic_name(jobs_topic, sizeof jobs_topic, cli_prefix(&c), BM_TOPIC_JOBS) != 0 ||
        bm_topic_name(results_topic, sizeof results_topic, cli_prefix(&c), BM_TOPIC_RESULTS)) {
        fprintf(stderr, "biomatch: topic prefix too long\n");
        goto out;
    }
    const char *reply_topic = reply != NULL ? reply : results_topic;
    if (wait) {
        rd = cli_reader_open(&bc, reply_topic, 0, left_ms(end), err, sizeof err);
        if (rd == NULL) {
            fprintf(stderr, "biomatch: reply topic %s: %s (brokers %s, --timeout-ms %u)\n",
                    reply_topic, err, bc.bootstrap_servers, timeout);
            goto out;
        }
    }
    pr = bm_producer_new(&bc, err, sizeof err);
    if (pr == NULL) {
        fprintf(stderr, "biomatch: producer: %s\n", err);
        goto out;
    }
    for (size_t j = 0; j < njobs; j++) {
        Biomatch__V1__MatchJob job = BIOMATCH__V1__MATCH_JOB__INIT;
        char tp[CLI_TRACEPARENT_LEN];
        if (jobid != NULL && each)
            snprintf(s[j].id, sizeof s[j].id, "%s-%zu", jobid, first + j);
        else if (jobid != NULL)
            snprintf(s[j].id, sizeof s[j].id, "%s", jobid);
        else
            cli_uuid4(s[j].id);
        cli_traceparent(tp);
        job.job_id = s[j].id;
        job.agency = (char *)agency;
        job.gallery = (char *)gallery;
        job.mode = verify ? BIOMATCH__V1__MATCH_MODE__MATCH_MODE_VERIFY
                          : BIOMATCH__V1__MATCH_MODE__MATCH_MODE_IDENTIFY;
        job.claimed_subject = (char *)(verify ? verify : "");
        job.top_k = topk;
        job.has_threshold = thr_s != NULL;
        job.threshold = (float)thr;
        job.reply_topic = (char *)(reply ? reply : "");
        job.min_gallery_version = minver;
        job.probes = each ? &tptr[j] : tptr;
        job.n_probes = each ? 1 : nprobes;
        s[j].sent_ms = bm_mono_ms();
        job.submitted_unix_ms = bm_wall_ms();
        if (deadline)
            job.deadline_unix_ms = job.submitted_unix_ms + deadline;
        if (cli_job_send_signed(pr, jobs_topic, &job, tp, signer, on_delivery, &s[j], err,
                                sizeof err) != BM_OK) {
            fprintf(stderr, "biomatch: %s\n", err);
            njobs = j;
            break;
        }
        bm_producer_poll(pr, 0);
    }
    if (bm_producer_flush(pr, left_ms(end)) != BM_OK)
        fprintf(stderr, "biomatch: %d job(s) not delivered within --timeout-ms %u (is the broker at %s up?)\n",
                bm_producer_outstanding(pr), timeout, bc.bootstrap_servers);
    size_t delivered = 0;
    for (size_t j = 0; j < njobs; j++)
        delivered += s[j].delivered == 1;
    if (!wait) {
        for (size_t j = 0; j < njobs; j++) {
            if (json)
                printf("{\"job_id\":\"%s\",\"delivered\":%s}\n", s[j].id,
                       s[j].delivered == 1 ? "true" : "false");
            else
                printf("%s %s\n", s[j].id, s[j].delivered == 1 ? "submitted" : "NOT delivered");
        }
        ret = delivered == njobs && njobs > 0 ? 0 : 1;
        goto out;
    }
    size_t got = await_results(rd, s, njobs, left_ms(end));
    int bad = 0;
    for (size_t j = 0; j < njobs; j++) {
        if (s[j].result == NULL) {
            bad = 1;
            if (json)
                printf("{\"job_id\":\"%s\",\"status\":\"%s\"}\n", s[j].id,
                       s[j].delivered == 1 ? "NO_RESULT" : "NOT_DELIVERED");
            else
                printf("job %s: %s\n", s[j].id,
                       s[j].delivered == 1 ? "no result within the timeout" : "not delivered");
            continue;
        }
        Biomatch__V1__ResultStatus st = s[j].result->status;
        bad |= st != BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_OK &&
               st != BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_PARTIAL;
        int64_t rtt = s[j].got_ms - s[j].sent_ms;
        if (json) {
            cJSON *o = cli_result_json(s[j].result, rtt);
            char *txt = o ? cJSON_PrintUnformatted(o) : NULL;
            if (txt)
                printf("%s\n", txt);
            free(txt);
            cJSON_Delete(o);
        } else {
            if (j > 0)
                printf("\n");
            cli_result_print(s[j].result, rtt);
        }
    }
    if (got < delivered)
        fprintf(stderr, "biomatch: %zu of %zu result(s) arrived within %u ms\n", got, delivered,
                timeout);
    ret = bad ? 1 : 0;
out:
    for (size_t j = 0; s != NULL && j < njobs; j++)
        bm_wire_free_result(s[j].result);
    bm_signer_destroy(signer);
    bm_producer_free(pr);
    cli_reader_free(rd);
    free(props);
    free(s);
    free(tpl);
    free(de);
    free(ic);
    free(ig);
    free(tptr);
    bm_npy_free(&m);
    bm_irisfile_free(&irs);
    cli_conf_free(&c);
    return ret;
}
