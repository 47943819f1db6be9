/* Micro-batching and scoring: the scoring thread.
 *
 * Tasks arrive from the poll thread in a FIFO. The scorer takes the oldest
 * task, then gathers more identify tasks of the same shard until the batch
 * holds worker.batch_max_probes probes or the oldest task has waited
 * worker.batch_max_wait_ms, and scores all their probes in one
 * bm_gallery_search call (one pass over the shard). Verify tasks need one
 * comparison per probe and are answered individually.
 *
 * Before scoring, each task is checked against its deadline (expired: an
 * ERROR partial, see docs/internals/worker.md) and its min_gallery_version:
 * a task whose shard is older is parked (the loader is asked to refresh at
 * once) and re-checked until the version arrives or worker.min_version_wait_ms
 * passes (then GALLERY_VERSION_UNAVAILABLE). Parked tasks never block the
 * queue behind them.
 *
 * Invariant: every task taken from the queue is answered exactly once (a
 * partial is sent), except parked tasks abandoned by a drain, whose offsets
 * are then never stored, so the next owner answers them. The shard a task
 * pins stays alive until the task is answered. */
#define _POSIX_C_SOURCE 200809L

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "common/err.h"
#include "obs/log.h"
#include "obs/metrics.h"
#include "store/loader.h"
#include "store/subjects.h"
#include "wire/decode.h"
#include "wire/shard.h"
#include "wire/template.h"
#include "fault.h"
#include "worker.h"

void wk_task_free(struct wk_task *t)
{
    if (t == NULL)
        return;
    bm_wire_free_task(t->msg);
    free(t);
}

void wk_scorer_submit(struct wk *w, struct wk_task *t)
{
    t->next = NULL;
    pthread_mutex_lock(&w->qlock);
    if (w->qtail != NULL)
        w->qtail->next = t;
    else
        w->qhead = t;
    w->qtail = t;
    pthread_cond_signal(&w->qcv);
    pthread_mutex_unlock(&w->qlock);
}

/* Scratch reused across batches (scoring thread only). */
struct scratch {
    struct bm_probe *probes;
    float *dense;
    struct bm_candidate *out;
    Biomatch__V1__Candidate *cands;
    Biomatch__V1__Candidate **candp;
    char *ids;                     /* ncand x (BM_SUBJECT_ID_MAX + 1) */
    size_t probes_cap, dense_cap, out_cap, cand_cap;
};

static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    void *q = realloc(*p, need * elem);
    if (q == NULL)
        return -1;
    *p = q;
    *cap = need;
    return 0;
}

static int reserve_cands(struct scratch *sc, size_t n)
{
    if (n <= sc->cand_cap)
        return 0;
    size_t cap = sc->cand_cap;
    size_t c1 = cap, c2 = cap;
    if (grow((void **)&sc->cands, &c1, n, sizeof *sc->cands) != 0 ||
        grow((void **)&sc->candp, &c2, n, sizeof *sc->candp) != 0)
        return -1;
    char *ids = realloc(sc->ids, n * (BM_SUBJECT_ID_MAX + 1));
    if (ids == NULL)
        return -1;
    sc->ids = ids;
    sc->cand_cap = n;
    return 0;
}

static void partial_init(Biomatch__V1__PartialResult *pr, const struct wk_task *t)
{
    biomatch__v1__partial_result__init(pr);
    pr->job_id = t->msg->job_id;
    pr->agency = t->msg->agency;
    pr->kind = BIOMATCH__V1__PARTIAL_RESULT__KIND__KIND_SHARD;
    pr->shard = t->shard->index;
    pr->shard_count = t->shard->g->shards;
    pr->status = BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_OK;
    pr->worker = t->shard->g->w->conf->node_id;
}

static uint32_t clamp_us(int64_t us)
{
    if (us < 0)
        return 0;
    return us > (int64_t)UINT32_MAX ? UINT32_MAX : (uint32_t)us;
}

static void finish(struct wk *w, struct wk_task *t)
{
    wk_attempts_done(w->attempts, t);
    wk_shard_unpin(w, t->shard);
    wk_task_free(t);
}

static void answer_error(struct wk *w, struct wk_task *t, Biomatch__V1__ErrorCode code,
                         const char *why, enum wk_status st)
{
    wk_publish_error(w, t->shard->g, t->entry, t->msg, t->shard->index, code, why, st);
    finish(w, t);
}

/* Fill probes[i] for the task's probes; dense ones are converted into
 * 'dense' (dim floats each). The probes were validated by the poll thread. */
static int fill_probes(const struct wk_task *t, const struct bm_spec *spec,
                       struct bm_probe *probes, float *dense)
{
    char err[128];
    for (size_t i = 0; i < t->msg->n_probes; i++) {
        const Biomatch__V1__Template *tp = t->msg->probes[i];
        memset(&probes[i], 0, sizeof probes[i]);
        if (spec->modality == BM_MODALITY_DENSE) {
            float *v = dense + i * spec->dim;
            if (bm_wire_dense_to_f32(tp->dense, v, spec->dim, err, sizeof err) != BM_OK)
                return -1;
            probes[i].dense = v;
        } else {
            probes[i].iris_code = tp->iris->code.data;
            probes[i].iris_mask = tp->iris->mask.data;
        }
    }
    return 0;
}

/* Append a candidate (subject id resolved through the shard). */
static int add_cand(struct scratch *sc, size_t *n, struct bm_shard *sh, uint64_t key,
                    float score, uint32_t rank, uint32_t probe, uint32_t shard)
{
    char *id = sc->ids + *n * (BM_SUBJECT_ID_MAX + 1);
    if (bm_shard_subject_id(sh, key, id, BM_SUBJECT_ID_MAX + 1) < 0)
        return -1; /* unknown key: cannot name it, so leave it out */
    Biomatch__V1__Candidate *c = &sc->cands[*n];
    biomatch__v1__candidate__init(c);
    c->subject_id = id;
    c->score = score;
    c->rank = rank;
    c->probe_index = probe;
    c->shard = shard;
    sc->candp[*n] = c;
    (*n)++;
    return 0;
}

static void score_verify(struct wk *w, struct scratch *sc, struct wk_task *t)
{
    struct wk_gallery *g = t->shard->g;
    const struct bm_spec *spec = &g->spec;
    size_t np = t->msg->n_probes;
    size_t dim = spec->modality == BM_MODALITY_DENSE ? spec->dim : 0;
    if (grow((void **)&sc->probes, &sc->probes_cap, np, sizeof *sc->probes) != 0 ||
        grow((void **)&sc->dense, &sc->dense_cap, np * dim + 1, sizeof *sc->dense) != 0 ||
        reserve_cands(sc, np) != 0) {
        answer_error(w, t, BIOMATCH__V1__ERROR_CODE__ERROR_CODE_INTERNAL, "out of memory",
                     WK_ST_ERROR);
        return;
    }
    if (fill_probes(t, spec, sc->probes, sc->dense) != 0) {
        answer_error(w, t, BIOMATCH__V1__ERROR_CODE__ERROR_CODE_INTERNAL,
                     "probe conversion failed", WK_ST_ERROR);
        return;
    }
    uint64_t version = atomic_load(&t->shard->version);
    int64_t t0 = bm_mono_us();
    const char *claimed = t->msg->claimed_subject;
    uint64_t key = bm_subject_key(claimed, strlen(claimed));
    struct bm_gallery *gal = bm_shard_gallery(t->shard->shard);
    size_t n = 0, absent = 0;
    uint64_t comparisons = 0;
    char err[256];
    for (size_t i = 0; i < np; i++) {
        float score = NAN;
        int rc = bm_gallery_verify(gal, &sc->probes[i], key, &score, err, sizeof err);
        if (rc == BM_ENOTFOUND) {
            absent++; /* the subject lives in another shard, or not at all */
            continue;
        }
        comparisons++;
        if (rc != BM_OK || isnan(score))
            continue;
        if (t->msg->has_threshold && !(score >= t->msg->threshold))
            continue;
        add_cand(sc, &n, t->shard->shard, key, score, 1, (uint32_t)i, t->shard->index);
    }
    int64_t t1 = bm_mono_us();
    Biomatch__V1__PartialResult pr;
    partial_init(&pr, t);
    pr.n_candidates = n;
    pr.candidates = n > 0 ? sc->candp : NULL;
    pr.gallery_version = version;
    pr.comparisons = comparisons;
    pr.queue_us = clamp_us(t0 - t->enqueued_us);
    pr.scoring_us = clamp_us(t1 - t0);
    if (absent == np) {
        /* "Not here": the aggregator answers ERROR/SUBJECT_NOT_FOUND when
         * every shard says so, i.e. when no shard holds the subject. */
        pr.status = BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_ERROR;
        pr.error_code = BIOMATCH__V1__ERROR_CODE__ERROR_CODE_SUBJECT_NOT_FOUND;
        pr.error = (char *)"claimed subject not in this shard";
    }
    bm_counter_add(g->comparisons, comparisons);
    bm_histogram_observe(g->scoring_seconds, (double)(t1 - t0) / 1e6);
    wk_publish_partial(w, g, t->entry, &pr, WK_ST_OK);
    finish(w, t);
}

/* Score the identify tasks of one shard in a single search. */
static void score_identify(struct wk *w, struct scratch *sc, struct wk_task **tasks, size_t nt)
{
    struct wk_shard *s = tasks[0]->shard;
    struct wk_gallery *g = s->g;
    const struct bm_spec *spec = &g->spec;
    size_t np = 0, k = 1;
    float thr = INFINITY;
    for (size_t i = 0; i < nt; i++) {
        const Biomatch__V1__MatchTask *m = tasks[i]->msg;
        np += m->n_probes;
        if (m->top_k > k)
            k = m->top_k;
        /* One floor for the batch: the lowest task floor (or none), so every
         * task's own top-k above its own floor is a prefix of the result. */
        float f = m->has_threshold ? m->threshold : -INFINITY;
        if (f < thr)
            thr = f;
    }
    size_t dim = spec->modality == BM_MODALITY_DENSE ? spec->dim : 0;
    if (grow((void **)&sc->probes, &sc->probes_cap, np, sizeof *sc->probes) != 0 ||
        grow((void **)&sc->dense, &sc->dense_cap, np * dim + 1, sizeof *sc->dense) != 0 ||
        grow((void **)&sc->out, &sc->out_cap, np * k, sizeof *sc->out) != 0 ||
        reserve_cands(sc, np * k) != 0) {
        for (size_t i = 0; i < nt; i++)
            answer_error(w, tasks[i], BIOMATCH__V1__ERROR_CODE__ERROR_CODE_INTERNAL,
                         "out of memory", WK_ST_ERROR);
        return;
    }
    size_t off = 0;
    for (size_t i = 0; i < nt; i++) {
        if (fill_probes(tasks[i], spec, sc->probes + off, sc->dense + off * dim) != 0) {
            for (size_t j = 0; j < nt; j++)
                answer_error(w, tasks[j], BIOMATCH__V1__ERROR_CODE__ERROR_CODE_INTERNAL,
                             "probe conversion failed", WK_ST_ERROR);
            return;
        }
        off += tasks[i]->msg->n_probes;
    }
    uint64_t version = atomic_load(&s->version);
    char err[256];
    uint64_t comparisons = 0;
    int64_t t0 = bm_mono_us();
    int rc = bm_gallery_search(bm_shard_gallery(s->shard), sc->probes, np, k, thr, sc->out,
                               &comparisons, err, sizeof err);
    int64_t t1 = bm_mono_us();
    if (rc != BM_OK) {
        for (size_t i = 0; i < nt; i++)
            answer_error(w, tasks[i], BIOMATCH__V1__ERROR_CODE__ERROR_CODE_INTERNAL, err,
                         WK_ST_ERROR);
        return;
    }
    bm_counter_add(g->comparisons, comparisons);
    bm_histogram_observe(g->batch_probes, (double)np);
    bm_histogram_observe(g->scoring_seconds, (double)(t1 - t0) / 1e6);
    off = 0;
    for (size_t i = 0; i < nt; i++) {
        struct wk_task *t = tasks[i];
        const Biomatch__V1__MatchTask *m = t->msg;
        size_t n = 0;
        for (size_t p = 0; p < m->n_probes; p++) {
            const struct bm_candidate *row = sc->out + (off + p) * k;
            uint32_t rank = 0;
            for (size_t j = 0; j < m->top_k && j < k; j++) {
                if (row[j].id == BM_NO_ID)
                    break;
                if (m->has_threshold && !(row[j].score >= m->threshold))
                    break; /* sorted best first: the rest is lower */
                if (add_cand(sc, &n, s->shard, row[j].id, row[j].score, rank + 1, (uint32_t)p,
                             s->index) == 0)
                    rank++;
            }
        }
        Biomatch__V1__PartialResult pr;
        partial_init(&pr, t);
        pr.n_candidates = n;
        pr.candidates = n > 0 ? sc->candp : NULL;
        pr.gallery_version = version;
        pr.comparisons = np > 0 ? comparisons / np * m->n_probes : 0;
        pr.queue_us = clamp_us(t0 - t->enqueued_us);
        pr.scoring_us = clamp_us(t1 - t0);
        wk_publish_partial(w, g, t->entry, &pr, WK_ST_OK);
        off += m->n_probes;
        finish(w, t);
    }
}

/* What to do with a task now: 0 score it, 1 answered (expired), 2 parked. */
static int triage(struct wk *w, struct wk_task *t, struct wk_task **parked)
{
    const Biomatch__V1__MatchTask *m = t->msg;
    /* The deadline was set on another host's clock: only a task more than
     * max_clock_skew_ms past it is taken as expired. */
    int64_t now_unix = bm_wall_ms() + wk_fault_clock_offset_ms();
    if (m->deadline_unix_ms > 0 &&
        now_unix - w->conf->max_clock_skew_ms > m->deadline_unix_ms) {
        char why[128];
        snprintf(why, sizeof why, "deadline passed %lld ms before scoring",
                 (long long)(now_unix - m->deadline_unix_ms));
        answer_error(w, t, BIOMATCH__V1__ERROR_CODE__ERROR_CODE_DEADLINE_EXCEEDED, why,
                     WK_ST_EXPIRED);
        return 1;
    }
    uint64_t have = atomic_load(&t->shard->version);
    if (m->min_gallery_version > have) {
        int64_t now = bm_mono_ms();
        if (t->park_until_ms == 0) {
            t->park_until_ms = now + w->conf->worker.min_version_wait_ms;
            atomic_store(&t->shard->refresh_now, 1);
            pthread_mutex_lock(&w->lock);
            pthread_cond_signal(&w->loader_cv);
            pthread_mutex_unlock(&w->lock);
        }
        if (now >= t->park_until_ms) {
            char why[160];
            snprintf(why, sizeof why, "gallery version %llu not reached in %d ms (shard holds %llu)",
                     (unsigned long long)m->min_gallery_version,
                     w->conf->worker.min_version_wait_ms, (unsigned long long)have);
            answer_error(w, t, BIOMATCH__V1__ERROR_CODE__ERROR_CODE_GALLERY_VERSION_UNAVAILABLE,
                         why, WK_ST_VERSION);
            return 1;
        }
        t->next = *parked;
        *parked = t;
        return 2;
    }
    return 0;
}

/* Score tasks already counted: identify ones in one pass, verify ones
 * each on its own. */
static void score_counted(struct wk *w, struct scratch *sc, struct wk_task **tasks, size_t n)
{
    for (size_t i = 0; i < n; i++)
        wk_fault_on_score(tasks[i]->msg);
    if (tasks[0]->msg->mode == BIOMATCH__V1__MATCH_MODE__MATCH_MODE_VERIFY) {
        for (size_t i = 0; i < n; i++)
            score_verify(w, sc, tasks[i]);
    } else {
        score_identify(w, sc, tasks, n);
    }
}

/* Score tasks together, counting an attempt of each right before. */
static void score_charged(struct wk *w, struct scratch *sc, struct wk_task **tasks, size_t n)
{
    wk_attempts_begin(w->attempts, tasks, n);
    score_counted(w, sc, tasks, n);
}

/* Read the attempts of each task (quarantine.c), answer POISON for those
 * started worker.max_task_attempts times and never finished, and score the
 * rest: together when none of them was started before, else each alone, so
 * a task that crashed a batch is the only one that keeps crashing. An
 * attempt is counted only right before the scoring it counts, so a task
 * waiting behind one that crashes is not charged for that crash. While a
 * pass runs, scoring_since_ms lets the poll thread's watchdog see a hang. */
static void score_tasks(struct wk *w, struct scratch *sc, struct wk_task **tasks, size_t n)
{
    wk_attempts_peek(w->attempts, tasks, n);
    size_t keep = 0;
    int retried = 0;
    for (size_t i = 0; i < n; i++) {
        struct wk_task *t = tasks[i];
        if (t->attempt >= w->conf->worker.max_task_attempts) {
            char why[160];
            snprintf(why, sizeof why,
                     "quarantined: scoring started %lld times and never finished (limit %d)",
                     t->attempt, w->conf->worker.max_task_attempts);
            /* Keep the count: a redelivery of this task is answered the
             * same way at once. */
            t->attempt_key[0] = '\0';
            BM_LOGF(BM_LOG_ERROR, "poison task quarantined", BM_LF_STR("gallery", t->shard->g->name),
                    BM_LF_INT("shard", t->shard->index),
                    BM_LF_INT("partition", t->entry->part->partition),
                    BM_LF_INT("offset", t->entry->offset), BM_LF_INT("attempts", t->attempt));
            answer_error(w, t, BIOMATCH__V1__ERROR_CODE__ERROR_CODE_POISON, why, WK_ST_POISON);
            continue;
        }
        retried |= t->attempt > 0;
        tasks[keep++] = t;
    }
    if (keep > 0) {
        atomic_store(&w->scoring_since_ms, bm_mono_ms());
        if (retried && keep > 1)
            for (size_t i = 0; i < keep; i++)
                score_charged(w, sc, &tasks[i], 1);
        else
            score_charged(w, sc, tasks, keep);
        atomic_store(&w->scoring_since_ms, 0);
    }
    bm_attempts_flush(w->attempts);
}

static size_t probes_of(const struct wk_task *t)
{
    return t->msg->n_probes;
}

static void *scorer_main(void *arg)
{
    struct wk *w = arg;
    struct scratch sc;
    memset(&sc, 0, sizeof sc);
    struct wk_task *parked = NULL;
    size_t max_probes = (size_t)w->conf->worker.batch_max_probes;
    int64_t max_wait_us = (int64_t)w->conf->worker.batch_max_wait_ms * 1000;
    struct wk_task **batch = NULL;
    size_t batch_cap = 0;

    for (;;) {
        /* Re-check parked tasks first: a refresh may have landed. */
        struct wk_task *still = NULL;
        while (parked != NULL) {
            struct wk_task *t = parked;
            parked = t->next;
            int r = triage(w, t, &still);
            if (r == 0) /* version reached: score it now */
                score_tasks(w, &sc, &t, 1);
        }
        parked = still;

        pthread_mutex_lock(&w->qlock);
        while (w->qhead == NULL && !atomic_load(&w->scorer_stop)) {
            if (parked != NULL) {
                struct timespec ts = bm_mono_deadline_us(10000);
                pthread_cond_timedwait(&w->qcv, &w->qlock, &ts);
                break;
            }
            pthread_cond_wait(&w->qcv, &w->qlock);
        }
        if (w->qhead == NULL) {
            int stop = atomic_load(&w->scorer_stop);
            pthread_mutex_unlock(&w->qlock);
            if (stop)
                break;
            continue;
        }
        /* Take the oldest task and gather same-shard identify tasks. */
        struct wk_task *first = w->qhead;
        w->qhead = first->next;
        if (w->qhead == NULL)
            w->qtail = NULL;
        first->next = NULL;
        struct wk_task *others = NULL, **others_tail = &others; /* verify/expired etc. */
        size_t nb = 0, np = probes_of(first);
        if (grow((void **)&batch, &batch_cap, 16, sizeof *batch) != 0) {
            pthread_mutex_unlock(&w->qlock);
            answer_error(w, first, BIOMATCH__V1__ERROR_CODE__ERROR_CODE_INTERNAL, "out of memory",
                         WK_ST_ERROR);
            continue;
        }
        int first_identify = first->msg->mode == BIOMATCH__V1__MATCH_MODE__MATCH_MODE_IDENTIFY;
        batch[nb++] = first;
        if (first_identify) {
            int64_t until = first->enqueued_us + max_wait_us;
            for (;;) {
                for (struct wk_task **pp = &w->qhead; *pp != NULL && np < max_probes;) {
                    struct wk_task *t = *pp;
                    if (t->shard != first->shard ||
                        t->msg->mode != BIOMATCH__V1__MATCH_MODE__MATCH_MODE_IDENTIFY ||
                        np + probes_of(t) > max_probes) {
                        pp = &t->next;
                        continue;
                    }
                    *pp = t->next;
                    if (w->qtail == t) {
                        w->qtail = NULL;
                        for (struct wk_task *q = w->qhead; q != NULL; q = q->next)
                            w->qtail = q;
                    }
                    t->next = NULL;
                    if (nb == batch_cap &&
                        grow((void **)&batch, &batch_cap, batch_cap * 2, sizeof *batch) != 0) {
                        *others_tail = t; /* scored on its own below */
                        others_tail = &t->next;
                        continue;
                    }
                    batch[nb++] = t;
                    np += probes_of(t);
                }
                int64_t now = bm_mono_us();
                if (np >= max_probes || now >= until || atomic_load(&w->scorer_stop))
                    break;
                struct timespec ts = bm_mono_deadline_us(until - now);
                pthread_cond_timedwait(&w->qcv, &w->qlock, &ts);
            }
        }
        pthread_mutex_unlock(&w->qlock);

        /* Triage outside the lock, then score what is left in one pass. */
        size_t keep = 0;
        for (size_t i = 0; i < nb; i++)
            if (triage(w, batch[i], &parked) == 0)
                batch[keep++] = batch[i];
        if (keep > 0)
            score_tasks(w, &sc, batch, keep);
        while (others != NULL) {
            struct wk_task *t = others;
            others = t->next;
            t->next = NULL;
            if (triage(w, t, &parked) == 0)
                score_tasks(w, &sc, &t, 1);
        }
    }
    /* Drain: parked tasks are abandoned unanswered; their offsets are never
     * stored, so the partition's next owner answers them. */
    while (parked != NULL) {
        struct wk_task *t = parked;
        parked = t->next;
        finish(w, t);
    }
    free(batch);
    free(sc.probes);
    free(sc.dense);
    free(sc.out);
    free(sc.cands);
    free(sc.candp);
    free(sc.ids);
    atomic_store(&w->scorer_done, 1);
    return NULL;
}

int wk_scorer_start(struct wk *w, char *err, size_t errlen)
{
    atomic_init(&w->scorer_stop, 0);
    atomic_init(&w->scorer_done, 0);
    atomic_init(&w->scoring_since_ms, 0);
    w->attempts = bm_attempts_new(w->conf, "task");
    if (w->attempts == NULL)
        return bm_seterr(err, errlen, BM_ENOMEM, "out of memory");
    if (pthread_create(&w->scorer, NULL, scorer_main, w) != 0)
        return bm_seterr(err, errlen, BM_ENOMEM, "cannot start the scoring thread");
    w->scorer_started = 1;
    return BM_OK;
}

void wk_scorer_finish(struct wk *w)
{
    pthread_mutex_lock(&w->qlock);
    atomic_store(&w->scorer_stop, 1);
    pthread_cond_broadcast(&w->qcv);
    pthread_mutex_unlock(&w->qlock);
}

void wk_scorer_join(struct wk *w)
{
    if (!w->scorer_started)
        return;
    wk_scorer_finish(w);
    pthread_join(w->scorer, NULL);
    w->scorer_started = 0;
    while (w->qhead != NULL) {
        struct wk_task *t = w->qhead;
        w->qhead = t->next;
        wk_task_free(t); /* only after a failed start; shards are freed next */
    }
    w->qtail = NULL;
    bm_attempts_free(w->attempts);
    w->attempts = NULL;
}
