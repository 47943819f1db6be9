/* The workload of `biomatch up --demo`: synthetic face and iris galleries
 * with known mates, enrolled through the enroll topic like `biomatch
 * enroll`, then an open-loop stream of mated and non-mated probe jobs whose
 * results are checked and summarised (status counts, throughput, p50/p99
 * round-trip latency, rank-1 accuracy, false matches).
 *
 * Data (everything from one splitmix64 stream seeded by --seed):
 *  - face: 512-d vectors of i.i.d. N(0,1) elements, enrolled as int8 with
 *    scale 1/32; a mated probe is its mate (dequantised) plus N(0, 0.5^2)
 *    per element (cosine about 0.9), a non-mated probe a fresh N(0,1)
 *    vector (cosine with anyone about N(0, 1/512));
 *  - iris: open-iris codes (2 x 16 x 256 x 2 bits) of uniform bits, masks
 *    with about 6% invalid bits; a mated probe is its mate rotated by
 *    -8..+8 columns with 12.5% of the code bits flipped (1 - HD about
 *    0.875), a non-mated probe fresh bits (1 - HD about 0.5).
 * The thresholds (cosine 0.5, 1 - HD 0.65) sit far from both populations,
 * so a correct pipeline scores rank-1 = 100% and 0 false matches.
 *
 * Invariant: every wait is bounded and also ends when a child process dies
 * or a signal arrives; the result is 0 only when every job was answered
 * with status OK. BIOMATCH_DEMO_DEBUG=1 reports each unfinished warm-up
 * attempt (for a cluster that takes long to become ready). */
#define _POSIX_C_SOURCE 200809L

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bus/bus.h"
#include "cli.h"
#include "common/clock.h"
#include "conf/policy.h"
#include "conf/topics.h"
#include "matchjob.h"
#include "synth.h"
#include "store/manifest.h"
#include "store/redis.h"
#include "up.h"
#include "wire/decode.h"
#include "wire/headers.h"

#define IRIS_F 2u
#define IRIS_R 16u
#define IRIS_C 256u
#define IRIS_B 2u
#define IRIS_BYTES (IRIS_F * IRIS_R * IRIS_C * IRIS_B / 8u)
#define IRIS_MAX_SHIFT 8
#define FACE_THRESHOLD 0.5f
#define IRIS_THRESHOLD 0.65f
#define FACE_NOISE 0.5
#define INT8_SCALE (1.0f / 32.0f)
#define TOP_K 5
#define JOB_DEADLINE_MS 60000
#define ENROLL_FLUSH_MS 180000
#define SEAL_WAIT_MS 240000
#define WARMUP_MS 120000
#define COLLECT_MS 90000
/* Enrolment is chunked for librdkafka 2.0.2's mock cluster, which keeps
 * at most 5 MiB per partition and silently drops the oldest records beyond
 * that (docs/internals/coordinator.md, "A backlog in the enroll topic"):
 * a chunk puts at most CHUNK_PARTITION_BYTES on any partition of the
 * enroll topic (ENROLL_PARTITIONS, as cli/up.c creates it) or of the
 * gallery topic (one partition per shard), and is sealed before the next
 * is sent, so no record is dropped before the coordinator has read it.
 * tests/integration/test_gallery_backlog.c checks the mock keeps this
 * much. */
#define CHUNK_PARTITION_BYTES (3u << 20)
#define ENROLL_PARTITIONS 4u
#define CHUNK_RECORD_OVERHEAD 192u /* ids, fields, header, record framing */

static void fill_normal(struct bm_synth *r, float *out, size_t n)
{
    for (size_t i = 0; i < n; i += 2) {
        double a, b;
        bm_synth_normal2(r, &a, &b);
        out[i] = (float)a;
        if (i + 1 < n)
            out[i + 1] = (float)b;
    }
}

struct data {
    uint32_t nf, ni;          /* gallery sizes */
    int8_t *face;             /* nf x 512 */
    uint8_t *iris;            /* ni x (code, mask) */
    uint32_t fp, ip;          /* probe counts */
    float *fprobe;            /* fp x 512 */
    uint8_t *iprobe;          /* ip x (code, mask) */
    int64_t *fmate, *imate;   /* subject index or -1 */
};

static void data_free(struct data *d)
{
    free(d->face);
    free(d->iris);
    free(d->fprobe);
    free(d->iprobe);
    free(d->fmate);
    free(d->imate);
}

static int get_bit(const uint8_t *p, size_t i)
{
    return (p[i / 8] >> (i % 8)) & 1;
}

static void put_bit(uint8_t *p, size_t i, int v)
{
    if (v)
        p[i / 8] |= (uint8_t)(1u << (i % 8));
    else
        p[i / 8] &= (uint8_t)~(1u << (i % 8));
}

/* out = in rotated by s columns: out column c = in column (c - s) mod C,
 * bit index ((f * R + r) * C + c) * B + b (docs/internals/match.md). */
static void iris_rotate(const uint8_t *in, uint8_t *out, int s)
{
    for (uint32_t line = 0; line < IRIS_F * IRIS_R; line++)
        for (uint32_t c = 0; c < IRIS_C; c++) {
            uint32_t src = (uint32_t)(((int)c - s + (int)IRIS_C * 4) % (int)IRIS_C);
            for (uint32_t b = 0; b < IRIS_B; b++)
                put_bit(out, ((size_t)line * IRIS_C + c) * IRIS_B + b,
                        get_bit(in, ((size_t)line * IRIS_C + src) * IRIS_B + b));
        }
}

static void iris_random(struct bm_synth *r, uint8_t *code, uint8_t *mask)
{
    for (size_t w = 0; w < IRIS_BYTES / 8; w++) {
        uint64_t c = bm_synth_next(r);
        /* A bit is invalid when four random bits are all 1: p = 1/16. */
        uint64_t m = ~(bm_synth_next(r) & bm_synth_next(r) & bm_synth_next(r) & bm_synth_next(r));
        memcpy(code + 8 * w, &c, 8);
        memcpy(mask + 8 * w, &m, 8);
    }
}

static int generate(struct data *d, const struct cli_demo_opts *o)
{
    struct bm_synth r = { o->seed };
    d->nf = o->faces;
    d->ni = o->irises;
    d->fp = o->face_probes;
    d->ip = o->iris_probes;
    d->face = malloc((size_t)d->nf * CLI_UP_FACE_DIM);
    d->iris = malloc((size_t)d->ni * 2 * IRIS_BYTES);
    d->fprobe = malloc(((size_t)d->fp + 1) * CLI_UP_FACE_DIM * sizeof(float));
    d->iprobe = malloc(((size_t)d->ip + 1) * 2 * IRIS_BYTES);
    d->fmate = malloc(((size_t)d->fp + 1) * sizeof(int64_t));
    d->imate = malloc(((size_t)d->ip + 1) * sizeof(int64_t));
    float *row = malloc(CLI_UP_FACE_DIM * sizeof(float));
    if (!d->face || !d->iris || !d->fprobe || !d->iprobe || !d->fmate || !d->imate || !row) {
        free(row);
        return -1;
    }
    for (uint32_t i = 0; i < d->nf; i++) {
        fill_normal(&r, row, CLI_UP_FACE_DIM);
        for (uint32_t k = 0; k < CLI_UP_FACE_DIM; k++) {
            float q = roundf(row[k] / INT8_SCALE);
            d->face[(size_t)i * CLI_UP_FACE_DIM + k] = (int8_t)(q > 127 ? 127 : q < -127 ? -127 : q);
        }
    }
    for (uint32_t q = 0; q < d->fp; q++) {
        float *p = d->fprobe + (size_t)q * CLI_UP_FACE_DIM;
        int mated = bm_synth_uniform(&r) < o->mated;
        d->fmate[q] = mated ? (int64_t)(bm_synth_next(&r) % d->nf) : -1;
        fill_normal(&r, row, CLI_UP_FACE_DIM);
        for (uint32_t k = 0; k < CLI_UP_FACE_DIM; k++) {
            if (mated)
                p[k] = (float)d->face[(size_t)d->fmate[q] * CLI_UP_FACE_DIM + k] * INT8_SCALE +
                       (float)FACE_NOISE * row[k];
            else
                p[k] = row[k];
        }
    }
    free(row);
    for (uint32_t i = 0; i < d->ni; i++)
        iris_random(&r, d->iris + (size_t)i * 2 * IRIS_BYTES,
                    d->iris + (size_t)i * 2 * IRIS_BYTES + IRIS_BYTES);
    for (uint32_t q = 0; q < d->ip; q++) {
        uint8_t *c = d->iprobe + (size_t)q * 2 * IRIS_BYTES, *m = c + IRIS_BYTES;
        int mated = bm_synth_uniform(&r) < o->mated;
        d->imate[q] = mated ? (int64_t)(bm_synth_next(&r) % d->ni) : -1;
        if (!mated) {
            iris_random(&r, c, m);
            continue;
        }
        const uint8_t *gc = d->iris + (size_t)d->imate[q] * 2 * IRIS_BYTES;
        int s = (int)(bm_synth_next(&r) % (2 * IRIS_MAX_SHIFT + 1)) - IRIS_MAX_SHIFT;
        iris_rotate(gc, c, s);
        iris_rotate(gc + IRIS_BYTES, m, s);
        for (size_t w = 0; w < IRIS_BYTES / 8; w++) {
            uint64_t v, flip = bm_synth_next(&r) & bm_synth_next(&r) & bm_synth_next(&r);   /* 1/8 of the bits */
            memcpy(&v, c + 8 * w, 8);
            v ^= flip;
            memcpy(c + 8 * w, &v, 8);
        }
    }
    return 0;
}

static void face_id(char *buf, size_t len, int64_t i)
{
    snprintf(buf, len, "face-%07lld", (long long)i);
}

static void iris_id(char *buf, size_t len, int64_t i)
{
    snprintf(buf, len, "iris-%07lld", (long long)i);
}

struct dstats {
    uint64_t ok, failed;
    char first[256];
};

static void on_enroll_delivery(const struct bm_delivery *dl, void *opaque)
{
    struct dstats *s = opaque;
    if (dl->err == BM_OK) {
        s->ok++;
    } else {
        if (s->failed++ == 0)
            snprintf(s->first, sizeof s->first, "%s", dl->errstr);
    }
}

/* Produce subjects [from, to) of both galleries (faces first, then
 * irises) to the enroll topic and wait for their delivery. */
static int enroll(struct bm_producer *p, const char *topic, const struct data *d, uint64_t from,
                  uint64_t to, const char *tag, const struct bm_signer *signer,
                  volatile sig_atomic_t *stop)
{
    struct dstats st = { 0 };
    char ct[128];
    bm_wire_content_type(&biomatch__v1__enroll_request__descriptor, ct, sizeof ct);
    struct bm_bus_headers h;
    bm_bus_headers_init(&h);
    bm_bus_headers_add_str(&h, BM_HDR_CONTENT_TYPE, ct);
    uint8_t buf[2 * IRIS_BYTES + 1024];
    uint64_t total = to - from;
    int64_t now = bm_wall_ms();
    for (uint64_t i = from; i < to && !*stop; i++) {
        char subject[32], reqid[48];
        Biomatch__V1__EnrollRequest req = BIOMATCH__V1__ENROLL_REQUEST__INIT;
        Biomatch__V1__Template t = BIOMATCH__V1__TEMPLATE__INIT;
        Biomatch__V1__DenseEmbedding de = BIOMATCH__V1__DENSE_EMBEDDING__INIT;
        Biomatch__V1__IrisCode ic;
        Biomatch__V1__IrisGeometry ig;
        if (i < d->nf) {
            face_id(subject, sizeof subject, (int64_t)i);
            req.gallery = (char *)CLI_UP_FACE;
            de.dim = CLI_UP_FACE_DIM;
            de.element_type = BIOMATCH__V1__ELEMENT_TYPE__ELEMENT_TYPE_INT8;
            de.scale = INT8_SCALE;
            de.data.data = (uint8_t *)(d->face + i * CLI_UP_FACE_DIM);
            de.data.len = CLI_UP_FACE_DIM;
            t.modality = BIOMATCH__V1__MODALITY__MODALITY_FACE;
            t.kind_case = BIOMATCH__V1__TEMPLATE__KIND_DENSE;
            t.dense = &de;
        } else {
            uint64_t k = i - d->nf;
            iris_id(subject, sizeof subject, (int64_t)k);
            req.gallery = (char *)CLI_UP_IRIS;
            const uint8_t *c = d->iris + k * 2 * IRIS_BYTES;
            cli_template_iris(&t, &ic, &ig, IRIS_F, IRIS_R, IRIS_C, IRIS_B, c, c + IRIS_BYTES,
                              IRIS_BYTES);
        }
        /* Request ids are unique per run: the coordinator refuses an id
         * its agency used within the replay window (docs/security.md). */
        snprintf(reqid, sizeof reqid, "demo-%s-%llu", tag, (unsigned long long)i);
        req.request_id = reqid;
        req.agency = (char *)CLI_UP_DEMO_AGENCY;
        req.op = BIOMATCH__V1__ENROLL_REQUEST__OP__OP_UPSERT;
        req.subject_id = subject;
        req.template_ = &t;
        req.submitted_unix_ms = now;
        size_t len = biomatch__v1__enroll_request__pack(&req, buf);
        struct bm_bus_headers hs = h;
        char sig[BM_POLICY_SIG_MAX], err[256];
        struct bm_sig_record sr = {biomatch__v1__enroll_request__descriptor.name,
                                   topic, subject, strlen(subject), buf, len, req.agency,
                                   reqid};
        if (bm_signer_sign_record(signer, &sr, bm_wall_ms(), sig, sizeof sig, err,
                                  sizeof err) != BM_OK) {
            fprintf(stderr, "demo: sign %s: %s\n", reqid, err);
            return -1;
        }
        bm_bus_headers_add_str(&hs, BM_POLICY_SIG_HEADER, sig);
        int rc = bm_producer_send_wait(p, topic, BM_PARTITION_ANY, subject, strlen(subject), buf,
                                       len, hs.v, hs.n, BM_SEND_SERVE, on_enroll_delivery, &st);
        if (rc != BM_OK) {
            fprintf(stderr, "demo: enroll %s: %s\n", subject, bm_strerror(rc));
            return -1;
        }
        bm_producer_poll(p, 0);
    }
    if (bm_producer_flush(p, ENROLL_FLUSH_MS) != BM_OK || st.ok != total) {
        fprintf(stderr, "demo: %llu of %llu enrollments delivered%s%s\n",
                (unsigned long long)st.ok, (unsigned long long)total,
                st.failed ? "; first failure: " : "", st.first);
        return -1;
    }
    return 0;
}

/* Subjects of one chunk for a gallery of 'shards' shards whose templates
 * take 'template_bytes' each (see CHUNK_PARTITION_BYTES). */
static uint64_t chunk_subjects(uint32_t shards, size_t template_bytes)
{
    uint64_t parts = shards < ENROLL_PARTITIONS ? shards : ENROLL_PARTITIONS;
    uint64_t n = (uint64_t)CHUNK_PARTITION_BYTES * (parts > 0 ? parts : 1) /
                 (template_bytes + CHUNK_RECORD_OVERHEAD);
    return n > 0 ? n : 1;
}

/* Live subjects over every shard of 'gallery' per the manifests in Redis;
 * -1 on a Redis error. */
static int64_t sealed_subjects(struct bm_redis *r, const char *gallery, uint32_t shards)
{
    int64_t sum = 0;
    for (uint32_t s = 0; s < shards; s++) {
        char key[BM_KEY_MAX], err[256];
        void *val = NULL;
        size_t len = 0;
        if (bm_key_manifest(key, sizeof key, gallery, s) != BM_OK)
            return -1;
        int rc = bm_redis_get(r, key, strlen(key), &val, &len);
        if (rc == BM_ENOTFOUND)
            continue;
        if (rc != BM_OK)
            return -1;
        struct bm_manifest *m = NULL;
        rc = bm_manifest_decode(val, len, 0, &m, err, sizeof err);
        free(val);
        if (rc != BM_OK)
            return -1;
        sum += m->subjects;
        bm_manifest_free(m);
    }
    return sum;
}

static int keep_going(const struct cli_up_env *env)
{
    return !*env->stop && env->children_ok(env->opaque);
}

static int wait_sealed(const struct cli_up_env *env, int64_t want_f, int64_t want_i)
{
    char err[256];
    struct bm_redis_opts o = { 0 };
    o.connect_timeout_ms = 2000;
    o.io_timeout_ms = 5000;
    struct bm_redis *r = bm_redis_connect(env->redis_url, &o, err, sizeof err);
    if (r == NULL) {
        fprintf(stderr, "demo: redis: %s\n", err);
        return -1;
    }
    int64_t deadline = bm_mono_ms() + SEAL_WAIT_MS, f = 0, i = 0;
    while (keep_going(env) && bm_mono_ms() < deadline) {
        f = sealed_subjects(r, CLI_UP_FACE, env->face_shards);
        i = sealed_subjects(r, CLI_UP_IRIS, env->iris_shards);
        if (f < 0 || i < 0) {
            fprintf(stderr, "demo: reading manifests failed\n");
            break;
        }
        if (f >= want_f && i >= want_i) {
            bm_redis_close(r);
            return 0;
        }
        struct timespec ts = { 0, 200 * 1000000L };
        nanosleep(&ts, NULL);
    }
    bm_redis_close(r);
    if (!*env->stop)
        fprintf(stderr, "demo: shards hold %lld/%lld face and %lld/%lld iris subjects; giving up\n",
                (long long)f, (long long)want_f, (long long)i, (long long)want_i);
    return -1;
}

/* One job per tracked probe. */
struct job {
    int iris;                 /* gallery: 0 face, 1 iris */
    uint32_t probe;           /* index into that gallery's probes */
    int64_t sent_ms;          /* monotonic */
    int64_t got_ms;           /* 0 = no result yet */
    int delivered;            /* 1 ok, -1 failed */
    Biomatch__V1__ResultStatus status;
    uint64_t comparisons;
    int rank1;                /* candidates[0] of probe 0 is the mate */
    int any;                  /* at least one candidate (above the threshold) */
};

struct run {
    char tag[16];             /* job ids are demo-<tag>-<index> */
    struct job *jobs;
    size_t njobs;
    struct cli_reader *rd;
    struct bm_producer *p;
    const char *jobs_topic;
    const struct data *d;
    const struct bm_signer *signer;
};

static void on_job_delivery(const struct bm_delivery *dl, void *opaque)
{
    struct job *j = opaque;
    j->delivered = dl->err == BM_OK ? 1 : -1;
}

/* Build and send job 'idx' (or a warm-up job when idx is SIZE_MAX). */
static int send_job(struct run *run, const char *id, int iris, uint32_t probe, struct job *track,
                    char *err, size_t errlen)
{
    const struct data *d = run->d;
    Biomatch__V1__MatchJob job = BIOMATCH__V1__MATCH_JOB__INIT;
    Biomatch__V1__Template t, *tp = &t;
    Biomatch__V1__DenseEmbedding de;
    Biomatch__V1__IrisCode ic;
    Biomatch__V1__IrisGeometry ig;
    if (iris) {
        const uint8_t *c = d->iprobe + (size_t)probe * 2 * IRIS_BYTES;
        cli_template_iris(&t, &ic, &ig, IRIS_F, IRIS_R, IRIS_C, IRIS_B, c, c + IRIS_BYTES,
                          IRIS_BYTES);
    } else {
        cli_template_dense(&t, &de, BIOMATCH__V1__MODALITY__MODALITY_FACE,
                           d->fprobe + (size_t)probe * CLI_UP_FACE_DIM, CLI_UP_FACE_DIM);
    }
    char trace[CLI_TRACEPARENT_LEN];
    cli_traceparent(trace);
    job.job_id = (char *)id;
    job.agency = (char *)CLI_UP_DEMO_AGENCY;
    job.gallery = (char *)(iris ? CLI_UP_IRIS : CLI_UP_FACE);
    job.mode = BIOMATCH__V1__MATCH_MODE__MATCH_MODE_IDENTIFY;
    job.probes = &tp;
    job.n_probes = 1;
    job.top_k = TOP_K;
    job.has_threshold = 1;
    job.threshold = iris ? IRIS_THRESHOLD : FACE_THRESHOLD;
    job.submitted_unix_ms = bm_wall_ms();
    job.deadline_unix_ms = job.submitted_unix_ms + JOB_DEADLINE_MS;
    track->iris = iris;
    track->probe = probe;
    track->sent_ms = bm_mono_ms();
    return cli_job_send_signed(run->p, run->jobs_topic, &job, trace, run->signer,
                               on_job_delivery, track, err, errlen);
}

/* Read results for up to 'wait_ms' and file the ones that are ours.
 * 'warm' (may be NULL) receives a warm-up result with id 'warm_id'. */
static void pump(struct run *run, int wait_ms, const char *warm_id, struct job *warm)
{
    struct bm_bus_msg *m = NULL;
    char err[256];
    bm_producer_poll(run->p, 0);
    if (cli_reader_next(run->rd, wait_ms, &m, err, sizeof err) != BM_OK || m == NULL)
        return;
    Biomatch__V1__MatchResult *r = NULL;
    if (m->value != NULL)
        r = bm_wire_decode_result(m->value, m->valuelen, BM_WIRE_DEFAULT_MAX_BYTES * 16, err,
                                  sizeof err);
    bm_bus_msg_free(m);
    if (r == NULL)
        return;
    struct job *j = NULL;
    size_t taglen = strlen(run->tag);
    if (warm_id != NULL && strcmp(r->job_id, warm_id) == 0) {
        j = warm;
    } else if (strncmp(r->job_id, "demo-", 5) == 0 &&
               strncmp(r->job_id + 5, run->tag, taglen) == 0 && r->job_id[5 + taglen] == '-') {
        char *end = NULL;
        unsigned long long idx = strtoull(r->job_id + 6 + taglen, &end, 10);
        if (end != NULL && *end == '\0' && idx < run->njobs)
            j = &run->jobs[idx];
    }
    if (j != NULL && j->got_ms == 0) {   /* results are at-least-once: first wins */
        j->got_ms = bm_mono_ms();
        j->status = r->status;
        j->comparisons = r->comparisons;
        j->any = r->n_candidates > 0;
        int64_t mate = j->iris ? run->d->imate[j->probe] : run->d->fmate[j->probe];
        if (mate >= 0 && r->n_candidates > 0 && r->candidates[0]->probe_index == 0) {
            char want[32];
            if (j->iris)
                iris_id(want, sizeof want, mate);
            else
                face_id(want, sizeof want, mate);
            j->rank1 = strcmp(r->candidates[0]->subject_id, want) == 0;
        }
    }
    bm_wire_free_result(r);
}

/* Send one job per gallery until it comes back OK having compared the
 * probe with every subject (all shards loaded the sealed segments). */
static int warm_up(const struct cli_up_env *env, struct run *run)
{
    int64_t deadline = bm_mono_ms() + WARMUP_MS;
    for (int g = 0; g < 2; g++) {
        uint32_t want = g ? run->d->ni : run->d->nf;
        if ((g ? run->d->ip : run->d->fp) == 0)
            continue;
        int attempt = 0;
        for (;;) {
            if (!keep_going(env) || bm_mono_ms() >= deadline) {
                if (!*env->stop)
                    fprintf(stderr, "demo: the %s gallery did not answer a full search in %d s\n",
                            g ? CLI_UP_IRIS : CLI_UP_FACE, WARMUP_MS / 1000);
                return -1;
            }
            char id[64], err[256];
            struct job w;
            memset(&w, 0, sizeof w);
            snprintf(id, sizeof id, "demo-warm-%s-%d-%d", run->tag, g, attempt++);
            if (send_job(run, id, g, 0, &w, err, sizeof err) != BM_OK) {
                fprintf(stderr, "demo: %s\n", err);
                return -1;
            }
            int64_t until = bm_mono_ms() + 10000;
            while (w.got_ms == 0 && bm_mono_ms() < until && keep_going(env))
                pump(run, 100, id, &w);
            /* Drain the delivery callback before 'w' goes out of scope. */
            bm_producer_flush(run->p, 10000);
            if (w.got_ms != 0 && w.status == BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_OK &&
                w.comparisons >= want)
                break;
            if (getenv("BIOMATCH_DEMO_DEBUG") != NULL)
                fprintf(stderr, "demo: warm-up %s #%d: %s, status %s, %llu comparisons\n",
                        g ? CLI_UP_IRIS : CLI_UP_FACE, attempt, w.got_ms ? "answered" : "no answer",
                        cli_status_name(w.status), (unsigned long long)w.comparisons);
            struct timespec ts = { 0, 300 * 1000000L };
            nanosleep(&ts, NULL);
        }
    }
    return 0;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static double pct(int64_t *v, size_t n, double q)
{
    if (n == 0)
        return 0;
    qsort(v, n, sizeof *v, cmp_i64);
    size_t i = (size_t)ceil(q * (double)n);
    return (double)v[i == 0 ? 0 : (i > n ? n : i) - 1];
}

struct row {
    size_t jobs, ok, partial, other, lost, mated, rank1, nonmated, fm;
    int64_t *lat;
    size_t nlat;
};

static void tally(const struct run *run, int which, struct row *rw)
{
    memset(rw, 0, sizeof *rw);
    rw->lat = malloc((run->njobs + 1) * sizeof *rw->lat);
    for (size_t i = 0; i < run->njobs; i++) {
        const struct job *j = &run->jobs[i];
        if (which >= 0 && j->iris != which)
            continue;
        rw->jobs++;
        if (j->got_ms == 0) {
            rw->lost++;
            continue;
        }
        if (rw->lat)
            rw->lat[rw->nlat++] = j->got_ms - j->sent_ms;
        if (j->status == BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_OK)
            rw->ok++;
        else if (j->status == BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_PARTIAL)
            rw->partial++;
        else
            rw->other++;
        int64_t mate = j->iris ? run->d->imate[j->probe] : run->d->fmate[j->probe];
        if (mate >= 0) {
            rw->mated++;
            rw->rank1 += j->rank1;
        } else {
            rw->nonmated++;
            rw->fm += j->any;
        }
    }
}

static void print_row(const char *name, struct row *rw, cJSON *arr)
{
    double r1 = rw->mated ? 100.0 * (double)rw->rank1 / (double)rw->mated : 0;
    double p50 = pct(rw->lat, rw->nlat, 0.50), p99 = pct(rw->lat, rw->nlat, 0.99);
    printf("%-8s %6zu %6zu %8zu %6zu %5zu %8.1f%% (%zu/%zu) %6zu/%-6zu %8.0f %8.0f\n", name,
           rw->jobs, rw->ok, rw->partial, rw->other, rw->lost, r1, rw->rank1, rw->mated, rw->fm,
           rw->nonmated, p50, p99);
    if (arr != NULL) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "gallery", name);
        cJSON_AddNumberToObject(o, "jobs", (double)rw->jobs);
        cJSON_AddNumberToObject(o, "ok", (double)rw->ok);
        cJSON_AddNumberToObject(o, "partial", (double)rw->partial);
        cJSON_AddNumberToObject(o, "other", (double)rw->other);
        cJSON_AddNumberToObject(o, "lost", (double)rw->lost);
        cJSON_AddNumberToObject(o, "mated", (double)rw->mated);
        cJSON_AddNumberToObject(o, "rank1", (double)rw->rank1);
        cJSON_AddNumberToObject(o, "nonmated", (double)rw->nonmated);
        cJSON_AddNumberToObject(o, "false_matches", (double)rw->fm);
        cJSON_AddNumberToObject(o, "p50_ms", p50);
        cJSON_AddNumberToObject(o, "p99_ms", p99);
        cJSON_AddItemToArray(arr, o);
    }
    free(rw->lat);
    rw->lat = NULL;
}

int cli_demo_run(const struct cli_up_env *env, const struct cli_demo_opts *o)
{
    struct data d;
    memset(&d, 0, sizeof d);
    struct run run;
    memset(&run, 0, sizeof run);
    int ret = 1;
    char err[512], enroll_topic[BM_TOPIC_MAX], jobs_topic[BM_TOPIC_MAX], res_topic[BM_TOPIC_MAX];
    int64_t t_gen = bm_mono_ms();
    if (bm_topic_name(enroll_topic, sizeof enroll_topic, env->prefix, BM_TOPIC_ENROLL) != 0 ||
        bm_topic_name(jobs_topic, sizeof jobs_topic, env->prefix, BM_TOPIC_JOBS) != 0 ||
        bm_topic_name(res_topic, sizeof res_topic, env->prefix, BM_TOPIC_RESULTS) != 0)
        return 1;
    if (generate(&d, o) != 0) {
        fprintf(stderr, "demo: out of memory generating the galleries\n");
        data_free(&d);
        return 1;
    }
    int64_t t_enroll = bm_mono_ms();
    fprintf(stderr, "demo: generated %u face and %u iris subjects, %u + %u probes in %.1f s\n",
            d.nf, d.ni, d.fp, d.ip, (double)(t_enroll - t_gen) / 1e3);
    struct bm_bus_conf bc = { 0 };
    bc.bootstrap_servers = env->brokers;
    bc.client_id = "biomatch-demo";
    run.d = &d;
    uint8_t tagb[4];
    cli_random(tagb, sizeof tagb);
    snprintf(run.tag, sizeof run.tag, "%02x%02x%02x%02x", tagb[0], tagb[1], tagb[2], tagb[3]);
    run.jobs_topic = jobs_topic;
    run.signer = env->signer;
    run.p = bm_producer_new(&bc, err, sizeof err);
    if (run.p == NULL) {
        fprintf(stderr, "demo: producer: %s\n", err);
        goto out;
    }
    /* Enrol in chunks and let each one be sealed before the next (see
     * CHUNK_PARTITION_BYTES): a bigger backlog loses its head on the mock
     * cluster, and the shards never reach the expected counts. */
    uint64_t total = (uint64_t)d.nf + d.ni;
    for (uint64_t from = 0, to; from < total; from = to) {
        if (from < d.nf) {
            to = from + chunk_subjects(env->face_shards, CLI_UP_FACE_DIM);
            to = to < d.nf ? to : d.nf;
        } else {
            to = from + chunk_subjects(env->iris_shards, 2 * IRIS_BYTES);
            to = to < total ? to : total;
        }
        if (enroll(run.p, enroll_topic, &d, from, to, run.tag, env->signer, env->stop) != 0 ||
            wait_sealed(env, to < d.nf ? (int64_t)to : d.nf,
                        to > d.nf ? (int64_t)(to - d.nf) : 0) != 0)
            goto out;
        fprintf(stderr, "demo: %llu/%llu subjects enrolled and sealed\n", (unsigned long long)to,
                (unsigned long long)total);
    }
    int64_t t_warm = bm_mono_ms();
    fprintf(stderr, "demo: enrolled and sealed %llu subjects in %.1f s; warming up\n",
            (unsigned long long)total, (double)(t_warm - t_enroll) / 1e3);
    run.rd = cli_reader_open(&bc, res_topic, 0, 15000, err, sizeof err);
    if (run.rd == NULL) {
        fprintf(stderr, "demo: results: %s\n", err);
        goto out;
    }
    if (warm_up(env, &run) != 0)
        goto out;
    int64_t t_jobs = bm_mono_ms();
    fprintf(stderr, "demo: workers ready after %.1f s; submitting %u jobs at %s\n",
            (double)(t_jobs - t_warm) / 1e3, d.fp + d.ip, o->rate > 0 ? "a fixed rate" : "once");
    run.njobs = (size_t)d.fp + d.ip;
    run.jobs = calloc(run.njobs + 1, sizeof *run.jobs);
    if (run.jobs == NULL)
        goto out;
    uint32_t fi = 0, ii = 0;
    for (size_t i = 0; i < run.njobs && keep_going(env); i++) {
        /* Spread the iris jobs evenly among the face jobs. */
        int iris = (uint64_t)(i + 1) * d.ip / run.njobs > (uint64_t)i * d.ip / run.njobs;
        if (iris ? ii >= d.ip : fi >= d.fp)
            iris = !iris;
        if (o->rate > 0) {
            int64_t due = t_jobs + (int64_t)((double)i * 1000.0 / o->rate);
            for (int64_t now = bm_mono_ms(); now < due; now = bm_mono_ms())
                pump(&run, (int)(due - now > 20 ? 20 : due - now), NULL, NULL);
        }
        char id[64];
        snprintf(id, sizeof id, "demo-%s-%zu", run.tag, i);
        if (send_job(&run, id, iris, iris ? ii++ : fi++, &run.jobs[i], err, sizeof err) != BM_OK) {
            fprintf(stderr, "demo: %s\n", err);
            break;
        }
        pump(&run, 0, NULL, NULL);
    }
    int64_t t_sent = bm_mono_ms(), deadline = t_sent + COLLECT_MS, check = 0;
    for (;;) {
        size_t done = 0;
        for (size_t i = 0; i < run.njobs; i++)
            done += run.jobs[i].got_ms != 0 || run.jobs[i].delivered < 0;
        if (done == run.njobs || bm_mono_ms() >= deadline || *env->stop)
            break;
        int64_t now = bm_mono_ms();
        if (now - check >= 500) {
            check = now;
            if (!env->children_ok(env->opaque))
                break;
        }
        pump(&run, 100, NULL, NULL);
    }
    bm_producer_flush(run.p, 10000);
    int64_t first = INT64_MAX, last = 0;
    for (size_t i = 0; i < run.njobs; i++) {
        if (run.jobs[i].sent_ms > 0 && run.jobs[i].sent_ms < first)
            first = run.jobs[i].sent_ms;
        if (run.jobs[i].got_ms > last)
            last = run.jobs[i].got_ms;
    }
    double span = last > first ? (double)(last - first) / 1e3 : 0;
    struct row all, face, iris;
    tally(&run, -1, &all);
    tally(&run, 0, &face);
    tally(&run, 1, &iris);
    size_t answered = all.ok + all.partial + all.other;
    printf("\nbiomatch demo: %u face subjects (%u shards), %u iris subjects (%u shards), %d "
           "worker(s)\n\n",
           d.nf, env->face_shards, d.ni, env->iris_shards, env->nworkers);
    printf("%-8s %6s %6s %8s %6s %5s %20s %13s %8s %8s\n", "GALLERY", "JOBS", "OK", "PARTIAL",
           "OTHER", "LOST", "RANK-1 (MATED)", "FALSE MATCH", "P50 ms", "P99 ms");
    cJSON *js = o->json ? cJSON_CreateObject() : NULL;
    cJSON *arr = js ? cJSON_AddArrayToObject(js, "galleries") : NULL;
    print_row(CLI_UP_FACE, &face, arr);
    print_row(CLI_UP_IRIS, &iris, arr);
    print_row("all", &all, arr);
    printf("\nthroughput %.1f jobs/s (%zu results in %.2f s, open loop at %s)\n",
           span > 0 ? (double)answered / span : 0, answered, span,
           o->rate > 0 ? "the --rate" : "once");
    printf("thresholds: face cosine >= %.2f, iris 1-HD >= %.2f; top-%d per job\n",
           (double)FACE_THRESHOLD, (double)IRIS_THRESHOLD, TOP_K);
    printf("phases: generate %.1f s, enroll + seal %.1f s, warm-up %.1f s, jobs %.1f s\n",
           (double)(t_enroll - t_gen) / 1e3, (double)(t_warm - t_enroll) / 1e3,
           (double)(t_jobs - t_warm) / 1e3,
           (double)(bm_mono_ms() - t_jobs) / 1e3);
    if (js != NULL) {
        cJSON_AddNumberToObject(js, "throughput_jobs_per_s", span > 0 ? (double)answered / span : 0);
        cJSON_AddNumberToObject(js, "jobs", (double)all.jobs);
        cJSON_AddNumberToObject(js, "ok", (double)all.ok);
        cJSON_AddNumberToObject(js, "lost", (double)all.lost);
        char *txt = cJSON_PrintUnformatted(js);
        if (txt)
            printf("%s\n", txt);
        free(txt);
        cJSON_Delete(js);
    }
    fflush(stdout);
    ret = all.ok == all.jobs && all.jobs == run.njobs && !*env->stop ? 0 : 1;
    if (ret != 0 && !*env->stop)
        fprintf(stderr, "demo: %zu of %zu jobs did not end OK (%zu lost)\n", all.jobs - all.ok,
                all.jobs, all.lost);
out:
    if (run.p != NULL)
        bm_producer_flush(run.p, 10000);
    bm_producer_free(run.p);
    cli_reader_free(run.rd);
    free(run.jobs);
    data_free(&d);
    return ret;
}
