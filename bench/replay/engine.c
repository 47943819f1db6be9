/* The replay engine (engine.h).
 *
 * Each step sends jobs s = 0, 1, ... at start + sched[s] and tracks them in
 * slots[s]. Job ids are rewritten to "<run>-<step>-<s>" so a result maps back
 * to its slot by parsing, and results of older steps or runs are ignored;
 * with keep_ids the recorded ids are kept and an open-addressing table maps
 * them to slots.
 *
 * Main invariant: a slot moves 0 (unsent) -> 1 (in flight) -> 2 (answered
 * or failed) exactly once, under 'mu'; counters change only on those moves,
 * so done + errors + in-flight == sent at every instant, and whatever is
 * still in flight when the grace period ends is counted lost. */
#include "engine.h"

#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "wire/decode.h"

#define HIST_DIGITS 3
#define HIST_MAX_US ((uint64_t)1 << 36) /* ~19 hours */
#define MAX_RESULT_BYTES (64u << 20)

struct slot {
    int64_t sched_us;      /* scheduled send time, relative to the step start */
    uint32_t rec;          /* record index */
    uint8_t state;         /* 0 unsent, 1 in flight, 2 finished */
    uint8_t measured;      /* scheduled after the warm-up */
};

struct rp_engine {
    const struct bm_replay *file;
    struct rp_engine_opts o;
    Biomatch__V1__MatchJob **jobs;   /* decoded records (NULL with keep_ids) */
    char **ids;                      /* keep_ids: the id of each record */
    struct bm_producer *prod;
    struct bm_consumer *cons;
    pthread_t thr;
    int thr_started;
    volatile int stop;

    pthread_mutex_t mu;              /* guards everything below */
    char prefix[48];                 /* "<run>-<step>-" of the current step */
    size_t prefix_len;
    struct slot *slots;
    size_t nslots;
    int64_t t0_us;                   /* monotonic start of the step */
    int64_t last_done_us;
    uint32_t *map;                   /* keep_ids: slot + 1 per bucket, 0 = empty */
    size_t mapcap;
    struct rp_step_result *res;      /* the step being run */
    uint64_t inflight;
    char run[16];
    unsigned step;
};

static uint64_t hash_str(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)s[i]) * 1099511628211ull;
    return h;
}

/* keep_ids: the slot of id (n bytes), or SIZE_MAX. Caller holds mu. */
static size_t map_find(struct rp_engine *e, const char *id, size_t n)
{
    if (e->map == NULL)
        return SIZE_MAX;
    for (size_t b = hash_str(id, n) & (e->mapcap - 1);; b = (b + 1) & (e->mapcap - 1)) {
        uint32_t v = e->map[b];
        if (v == 0)
            return SIZE_MAX;
        const char *k = e->ids[e->slots[v - 1].rec];
        if (strlen(k) == n && memcmp(k, id, n) == 0)
            return v - 1;
    }
}

/* Where a result for 'id' belongs, or SIZE_MAX. Caller holds mu. */
static size_t slot_of(struct rp_engine *e, const char *id)
{
    size_t n = strlen(id);
    if (e->o.keep_ids)
        return map_find(e, id, n);
    if (n <= e->prefix_len || memcmp(id, e->prefix, e->prefix_len) != 0)
        return SIZE_MAX;
    size_t s = 0;
    for (const char *p = id + e->prefix_len; *p; p++) {
        if (*p < '0' || *p > '9' || s > SIZE_MAX / 10 - 10)
            return SIZE_MAX;
        s = s * 10 + (size_t)(*p - '0');
    }
    return s < e->nslots ? s : SIZE_MAX;
}

/* Account one finished slot. 'status' < 0 is a failed send. Caller holds mu. */
static void finish(struct rp_engine *e, size_t s, int status, const Biomatch__V1__MatchResult *r)
{
    struct slot *sl = &e->slots[s];
    if (sl->state != 1)
        return; /* duplicate (at-least-once) or a result after we gave up */
    sl->state = 2;
    e->inflight--;
    int64_t now = bm_mono_us();
    e->last_done_us = now;
    if (!sl->measured)
        return;
    struct rp_step_result *res = e->res;
    if (status == BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_OK ||
        status == BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_PARTIAL) {
        res->done++;
        res->partial += status == BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_PARTIAL;
        int64_t lat = now - (e->t0_us + sl->sched_us);
        bm_hist_record(res->hist, lat > 0 ? (uint64_t)lat : 0);
    } else {
        res->errors++;
        res->timeouts += status == BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_TIMEOUT;
    }
    const char *expect = e->file->records[sl->rec].expect;
    if (expect == NULL || r == NULL || status < 0)
        return;
    /* Rank 1 of the first probe: candidates are sorted by probe, then score. */
    const Biomatch__V1__Candidate *top = NULL;
    for (size_t i = 0; i < r->n_candidates; i++)
        if (r->candidates[i]->probe_index == 0) {
            top = r->candidates[i];
            break;
        }
    int mated = strcmp(expect, "-") != 0;
    if (mated) {
        res->rank1_total++;
        if (top && top->subject_id && strcmp(top->subject_id, expect) == 0)
            res->rank1_hits++;
    } else {
        res->nonmated++;
    }
    if (top && top->score >= e->o.accept &&
        (!mated || top->subject_id == NULL || strcmp(top->subject_id, expect) != 0))
        res->false_matches++;
}

static void *results_main(void *arg)
{
    struct rp_engine *e = arg;
    char err[512];
    while (!e->stop) {
        struct bm_bus_msg *m = NULL;
        int rc = bm_consumer_poll(e->cons, 50, &m, err, sizeof err);
        if (rc != BM_OK)
            continue;
        Biomatch__V1__MatchResult *r =
            m->value ? bm_wire_decode_result(m->value, m->valuelen, MAX_RESULT_BYTES, err, sizeof err)
                     : NULL;
        if (r && r->job_id) {
            pthread_mutex_lock(&e->mu);
            if (e->slots) {
                size_t s = slot_of(e, r->job_id);
                if (s != SIZE_MAX)
                    finish(e, s, (int)r->status, r);
            }
            pthread_mutex_unlock(&e->mu);
        }
        bm_wire_free_result(r);
        bm_bus_msg_free(m);
    }
    return NULL;
}

/* The opaque of one send: which engine and slot it belongs to. */
struct sendref {
    struct rp_engine *e;
    size_t slot;
};

static void on_delivery(const struct bm_delivery *d, void *opaque)
{
    struct sendref *ref = opaque;
    struct rp_engine *e = ref->e;
    size_t s = ref->slot;
    free(ref);
    if (d->err == BM_OK)
        return;
    pthread_mutex_lock(&e->mu);
    if (e->slots && s < e->nslots)
        finish(e, s, -1, NULL);
    pthread_mutex_unlock(&e->mu);
}

struct rp_engine *rp_engine_new(const struct bm_replay *file, const struct rp_engine_opts *o,
                                char *err, size_t errlen)
{
    struct rp_engine *e = calloc(1, sizeof *e);
    if (e == NULL) {
        bm_seterr(err, errlen, BM_ENOMEM, "out of memory");
        return NULL;
    }
    e->file = file;
    e->o = *o;
    pthread_mutex_init(&e->mu, NULL);
    snprintf(e->run, sizeof e->run, "r%05x",
             (unsigned)((uint64_t)bm_wall_ms() ^ ((uint64_t)getpid() << 12)) & 0xfffffu);
    if (file->nrecords == 0) {
        bm_seterr(err, errlen, BM_EINVAL, "the replay file holds no records");
        goto fail;
    }
    if (o->keep_ids) {
        e->ids = calloc(file->nrecords, sizeof *e->ids);
        if (e->ids == NULL)
            goto oom;
        for (size_t i = 0; i < file->nrecords; i++) {
            const struct bm_replay_record *r = &file->records[i];
            if (r->key == NULL) {
                bm_seterr(err, errlen, BM_EINVAL, "--keep-ids: record %zu has no key", i);
                goto fail;
            }
            e->ids[i] = strndup((const char *)r->key, r->keylen);
            if (e->ids[i] == NULL)
                goto oom;
        }
    } else {
        e->jobs = calloc(file->nrecords, sizeof *e->jobs);
        if (e->jobs == NULL)
            goto oom;
        for (size_t i = 0; i < file->nrecords; i++) {
            const struct bm_replay_record *r = &file->records[i];
            e->jobs[i] = r->value ? bm_wire_decode_job(r->value, r->valuelen, MAX_RESULT_BYTES,
                                                       err, errlen)
                                  : NULL;
            if (e->jobs[i] == NULL) {
                bm_seterr(err, errlen, BM_EPROTO,
                          "record %zu is not a MatchJob, so its id cannot be rewritten "
                          "(use --keep-ids to send it verbatim)", i);
                goto fail;
            }
        }
    }
    e->prod = bm_producer_new(o->bus, err, errlen);
    if (e->prod == NULL)
        goto fail;
    e->cons = bm_consumer_new(o->bus_cons, NULL, NULL, NULL, err, errlen);
    if (e->cons == NULL)
        goto fail;
    int nparts;
    int64_t *hw;
    if (rp_topic_offsets(o->bus_cons, o->results_topic, &nparts, &hw, err, errlen) != BM_OK)
        goto fail;
    struct bm_bus_tp *tps = calloc((size_t)nparts, sizeof *tps);
    if (tps == NULL) {
        free(hw);
        goto oom;
    }
    for (int i = 0; i < nparts; i++)
        tps[i] = (struct bm_bus_tp){ o->results_topic, i, hw[i] };
    int rc = bm_consumer_assign(e->cons, tps, (size_t)nparts, err, errlen);
    free(tps);
    free(hw);
    if (rc != BM_OK)
        goto fail;
    if (pthread_create(&e->thr, NULL, results_main, e) != 0) {
        bm_seterr(err, errlen, BM_ENOMEM, "cannot start the results thread");
        goto fail;
    }
    e->thr_started = 1;
    return e;
oom:
    bm_seterr(err, errlen, BM_ENOMEM, "out of memory");
fail:
    rp_engine_free(e);
    return NULL;
}

void rp_engine_free(struct rp_engine *e)
{
    if (e == NULL)
        return;
    e->stop = 1;
    if (e->thr_started)
        pthread_join(e->thr, NULL);
    char err[256];
    if (e->prod) {
        bm_producer_flush(e->prod, 5000);
        bm_producer_free(e->prod);
    }
    if (e->cons) {
        bm_consumer_close(e->cons, err, sizeof err);
        bm_consumer_free(e->cons);
    }
    for (size_t i = 0; e->jobs && i < e->file->nrecords; i++)
        bm_wire_free_job(e->jobs[i]);
    for (size_t i = 0; e->ids && i < e->file->nrecords; i++)
        free(e->ids[i]);
    free(e->jobs);
    free(e->ids);
    free(e->slots);
    free(e->map);
    pthread_mutex_destroy(&e->mu);
    free(e);
}

/* Build the schedule of a step into e->slots (not yet visible to the
 * results thread: the caller publishes it under mu). */
static int schedule(struct rp_engine *e, const struct rp_step_spec *s, struct slot **out,
                    size_t *nout)
{
    const struct bm_replay *f = e->file;
    size_t n = f->nrecords, cap, cnt = 0;
    double dur_us = s->duration_s * 1e6;
    /* One pass of the file spans 'span' plus one mean gap, so cycling keeps
     * the file's own rhythm. */
    double span = (double)f->records[n - 1].t_us;
    double gap = n > 1 ? span / (double)(n - 1) : 1e6;
    if (e->o.keep_ids || s->duration_s <= 0)
        cap = n;
    else if (s->rate > 0)
        cap = (size_t)ceil(dur_us * s->rate / 1e6) + 1;
    else
        cap = (size_t)ceil(dur_us * s->speedup / (span + gap) + 1) * n + 1;
    struct slot *sl = calloc(cap ? cap : 1, sizeof *sl);
    if (sl == NULL)
        return BM_ENOMEM;
    for (size_t i = 0; i < cap; i++) {
        double t;
        if (s->rate > 0)
            t = (double)i * 1e6 / s->rate;
        else
            t = ((double)(i / n) * (span + gap) + (double)f->records[i % n].t_us) / s->speedup;
        if (s->duration_s > 0 && t >= dur_us)
            break;
        sl[cnt++] = (struct slot){ (int64_t)t, (uint32_t)(i % n), 0, t >= s->warmup_s * 1e6 };
    }
    *out = sl;
    *nout = cnt;
    return BM_OK;
}

static void sleep_us(int64_t us)
{
    struct timespec ts = { (time_t)(us / 1000000), (long)(us % 1000000) * 1000 };
    nanosleep(&ts, NULL);
}

static void progress(struct rp_engine *e, int final)
{
    pthread_mutex_lock(&e->mu);
    struct rp_step_result *r = e->res;
    double el = (double)(bm_mono_us() - e->t0_us) / 1e6;
    uint64_t sent = 0;
    for (size_t i = 0; i < e->nslots; i++)
        sent += e->slots[i].state != 0;
    printf("\r  sent %8" PRIu64 "  done %8" PRIu64 "  in flight %6" PRIu64
           "  rate %8.1f/s  p99 %9.2f ms   %s",
           sent, r->done, e->inflight, el > 0 ? (double)sent / el : 0.0,
           (double)bm_hist_percentile(r->hist, 99) / 1000.0, final ? "\n" : "");
    fflush(stdout);
    pthread_mutex_unlock(&e->mu);
}

/* Encode record 'rec' with a fresh id and times. Malloc'd. */
static uint8_t *rewrite(struct rp_engine *e, uint32_t rec, const char *id, size_t *len)
{
    Biomatch__V1__MatchJob *j = e->jobs[rec];
    char *old_id = j->job_id;
    int64_t old_sub = j->submitted_unix_ms, old_dl = j->deadline_unix_ms;
    int64_t now = bm_wall_ms();
    j->job_id = (char *)id;
    j->submitted_unix_ms = now;
    /* Keep the job's deadline budget (deadline - submitted), re-based on
     * now. Without a recorded submit time the budget is unknown, so the
     * coordinator's default deadline applies (0). The decoded job is shared
     * by every send of this record, so the fields are put back after. */
    j->deadline_unix_ms = old_dl > 0 && old_sub > 0 ? now + (old_dl - old_sub) : 0;
    uint8_t *buf = bm_wire_encode(&j->base, len);
    j->job_id = old_id;
    j->submitted_unix_ms = old_sub;
    j->deadline_unix_ms = old_dl;
    return buf;
}

int rp_engine_step(struct rp_engine *e, const struct rp_step_spec *s, struct rp_step_result *res,
                   char *err, size_t errlen)
{
    memset(res, 0, sizeof *res);
    res->hist = bm_hist_new(HIST_DIGITS, HIST_MAX_US, err, errlen);
    if (res->hist == NULL)
        return BM_ENOMEM;
    struct slot *sl = NULL;
    size_t n = 0;
    if (schedule(e, s, &sl, &n) != BM_OK || n == 0) {
        free(sl);
        bm_hist_free(res->hist);
        res->hist = NULL;
        return bm_seterr(err, errlen, n == 0 ? BM_EINVAL : BM_ENOMEM,
                         n == 0 ? "nothing to send" : "out of memory");
    }
    uint32_t *map = NULL;
    size_t mapcap = 0;
    pthread_mutex_lock(&e->mu);
    free(e->slots);
    free(e->map);
    e->map = NULL;
    e->slots = sl;
    e->nslots = n;
    e->res = res;
    e->inflight = 0;
    e->step++;
    e->prefix_len = (size_t)snprintf(e->prefix, sizeof e->prefix, "%s-%u-", e->run, e->step);
    if (e->o.keep_ids) {
        mapcap = 16;
        while (mapcap < 2 * n)
            mapcap *= 2;
        map = calloc(mapcap, sizeof *map);
        if (map == NULL) {
            pthread_mutex_unlock(&e->mu);
            return bm_seterr(err, errlen, BM_ENOMEM, "out of memory");
        }
        e->map = map;
        e->mapcap = mapcap;
        for (size_t i = 0; i < n; i++) {
            const char *id = e->ids[sl[i].rec];
            size_t b = hash_str(id, strlen(id)) & (mapcap - 1);
            while (map[b] != 0)
                b = (b + 1) & (mapcap - 1);
            map[b] = (uint32_t)i + 1;
        }
    }
    e->t0_us = bm_mono_us();
    pthread_mutex_unlock(&e->mu);

    int64_t last_progress = e->t0_us, first_send = 0, last_send = 0;
    uint64_t measured_sched = 0;
    int rc = BM_OK;
    for (size_t i = 0; i < n && rc == BM_OK; i++) {
        int64_t due = e->t0_us + sl[i].sched_us;
        for (;;) {
            int64_t now = bm_mono_us();
            if (e->o.progress && now - last_progress >= 1000000) {
                progress(e, 0);
                last_progress = now;
            }
            if (now >= due)
                break;
            bm_producer_poll(e->prod, 0);
            int64_t wait = due - now;
            sleep_us(wait > 1000 ? 1000 : wait);
        }
        const struct bm_replay_record *r = &e->file->records[sl[i].rec];
        char id[96];
        const void *key;
        size_t keylen, len;
        uint8_t *buf = NULL;
        const uint8_t *val;
        if (e->o.keep_ids) {
            key = r->key;
            keylen = r->keylen;
            val = r->value;
            len = r->valuelen;
        } else {
            snprintf(id, sizeof id, "%s%zu", e->prefix, i);
            key = id;
            keylen = strlen(id);
            buf = rewrite(e, sl[i].rec, id, &len);
            val = buf;
            if (buf == NULL) {
                rc = bm_seterr(err, errlen, BM_ENOMEM, "out of memory");
                break;
            }
        }
        struct bm_bus_header h[BM_REPLAY_MAX_HEADERS];
        for (size_t j = 0; j < r->nheaders; j++)
            h[j] = (struct bm_bus_header){ r->headers[j].name, r->headers[j].value,
                                           r->headers[j].len };
        struct sendref *op = malloc(sizeof *op);
        if (op == NULL) {
            free(buf);
            rc = bm_seterr(err, errlen, BM_ENOMEM, "out of memory");
            break;
        }
        op->e = e;
        op->slot = i;
        int64_t now = bm_mono_us();
        pthread_mutex_lock(&e->mu);
        sl[i].state = 1;
        e->inflight++;
        if (sl[i].measured) {
            res->sent++;
            measured_sched++;
            if (first_send == 0)
                first_send = now;
            last_send = now;
            if (now - due > 10000)
                res->late_sends++;
        }
        pthread_mutex_unlock(&e->mu);
        int src = bm_producer_send_wait(e->prod, e->o.jobs_topic, BM_PARTITION_ANY, key, keylen,
                                        val, len, h, r->nheaders, BM_SEND_SERVE, on_delivery, op);
        free(buf);
        if (src != BM_OK) {
            free(op);
            pthread_mutex_lock(&e->mu);
            finish(e, i, -1, NULL);
            pthread_mutex_unlock(&e->mu);
            if (src == BM_ENOTFOUND || src == BM_ECLOSED)
                rc = bm_seterr(err, errlen, src, "cannot send to %s: %s", e->o.jobs_topic,
                               bm_strerror(src));
        }
        bm_producer_poll(e->prod, 0);
    }
    bm_producer_flush(e->prod, 30000);
    /* Wait for stragglers: until nothing is in flight, or the grace period
     * after the last scheduled send has passed. */
    int64_t end_sched = e->t0_us + sl[n - 1].sched_us;
    int64_t deadline = (bm_mono_us() > end_sched ? bm_mono_us() : end_sched) +
                       (int64_t)(e->o.grace_s * 1e6);
    for (;;) {
        int64_t now = bm_mono_us();
        pthread_mutex_lock(&e->mu);
        uint64_t infl = e->inflight;
        pthread_mutex_unlock(&e->mu);
        if (infl == 0 || now >= deadline)
            break;
        if (e->o.progress && now - last_progress >= 1000000) {
            progress(e, 0);
            last_progress = now;
        }
        bm_producer_poll(e->prod, 10);
    }
    if (e->o.progress)
        progress(e, 1);
    pthread_mutex_lock(&e->mu);
    int64_t first_measured = -1;
    for (size_t i = 0; i < n; i++) {
        if (sl[i].measured && first_measured < 0)
            first_measured = sl[i].sched_us;
        if (sl[i].state == 1 && sl[i].measured)
            res->lost++;
    }
    res->elapsed_s = (double)(bm_mono_us() - e->t0_us) / 1e6;
    /* Throughput: results over the span from the first measured scheduled
     * send to the last result; publish rate: sends over the send span. */
    double span = first_measured >= 0 && e->last_done_us > e->t0_us + first_measured
                      ? (double)(e->last_done_us - e->t0_us - first_measured) / 1e6
                      : 0;
    res->throughput = span > 0 ? (double)res->done / span : 0;
    res->publish_rate = last_send > first_send && measured_sched > 1
                            ? (double)(measured_sched - 1) / ((double)(last_send - first_send) / 1e6)
                            : (double)measured_sched;
    double fspan = (double)e->file->records[e->file->nrecords - 1].t_us;
    res->target_rate = s->rate > 0 ? s->rate
                       : fspan > 0 ? (double)(e->file->nrecords - 1) / (fspan / 1e6) * s->speedup
                                   : 0;
    /* The slots stay so late duplicates are still recognised as this
     * step's and ignored (state 2), but the step no longer records. */
    e->res = NULL;
    for (size_t i = 0; i < n; i++)
        if (sl[i].state == 1)
            sl[i].state = 2; /* lost: a later result must not count anywhere */
    e->inflight = 0;
    pthread_mutex_unlock(&e->mu);
    return rc;
}
