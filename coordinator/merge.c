/* Aggregation rules as pure functions (see merge.h). The invariant every
 * function keeps: the same inputs give the same result whatever order the
 * shards answered in, so a replayed job yields an identical MatchResult. */
#include "merge.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int bm_merge_cmp(const void *a, const void *b)
{
    const struct bm_merge_cand *x = a, *y = b;
    if (x->probe_index != y->probe_index)
        return x->probe_index < y->probe_index ? -1 : 1;
    int xn = isnan(x->score), yn = isnan(y->score);
    if (xn || yn) {
        if (xn != yn)
            return xn ? 1 : -1;
    } else if (x->score != y->score) {
        return x->score > y->score ? -1 : 1;
    }
    int c = strcmp(x->subject_id ? x->subject_id : "", y->subject_id ? y->subject_id : "");
    if (c != 0)
        return c < 0 ? -1 : 1;
    /* Equal subject and score: order by shard so the sort stays total. */
    if (x->shard != y->shard)
        return x->shard < y->shard ? -1 : 1;
    return 0;
}

/* 1 when subject 's' was already kept for the current probe. The kept
 * entries of one probe are few (at most 'limit'), but a subject's repeats
 * need not be adjacent after sorting (they may differ in score), so look
 * back over the probe's kept entries. */
static int already_kept(const struct bm_merge_cand *c, size_t probe_start, size_t kept,
                        const char *s)
{
    for (size_t i = probe_start; i < kept; i++)
        if (strcmp(c[i].subject_id, s) == 0)
            return 1;
    return 0;
}

size_t bm_merge_select(struct bm_merge_cand *c, size_t n, const struct bm_merge_opts *o)
{
    if (c == NULL || n == 0)
        return 0;
    qsort(c, n, sizeof *c, bm_merge_cmp);
    size_t kept = 0, probe_start = 0;
    uint32_t cur_probe = UINT32_MAX, rank = 0;
    for (size_t i = 0; i < n; i++) {
        struct bm_merge_cand e = c[i];
        if (e.subject_id == NULL || e.subject_id[0] == '\0' || !isfinite(e.score))
            continue;
        if (e.probe_index >= o->probe_count)
            continue;
        if (o->has_threshold && !(e.score >= o->threshold))
            continue;
        if (e.probe_index != cur_probe) {
            cur_probe = e.probe_index;
            probe_start = kept;
            rank = 0;
        }
        if (o->limit != 0 && rank >= o->limit)
            continue;
        /* Sorted by score desc, so the first occurrence is the best one. */
        if (already_kept(c, probe_start, kept, e.subject_id))
            continue;
        e.rank = ++rank;
        c[kept++] = e;
    }
    return kept;
}

int bm_merge_ready(const struct bm_merge_tally *t)
{
    if (t->deadline_passed)
        return 1;
    return t->total > 0 && t->ok + t->failed + t->quarantined >= t->total;
}

Biomatch__V1__ResultStatus bm_merge_status(const struct bm_merge_tally *t,
                                           Biomatch__V1__ErrorCode *code)
{
    if (t->failed > 0)
        return BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_ERROR;
    if (t->verify && t->total > 0 && t->not_found >= t->total) {
        if (code)
            *code = BIOMATCH__V1__ERROR_CODE__ERROR_CODE_SUBJECT_NOT_FOUND;
        return BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_ERROR;
    }
    if (t->total > 0 && t->ok >= t->total)
        return BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_OK;
    if (t->quarantined > 0 && code)
        *code = BIOMATCH__V1__ERROR_CODE__ERROR_CODE_POISON;
    if (t->ok > 0)
        return BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_PARTIAL;
    if (t->quarantined > 0)
        return BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_ERROR;
    return BIOMATCH__V1__RESULT_STATUS__RESULT_STATUS_TIMEOUT;
}

int bm_merge_verified(const struct bm_merge_cand *c, size_t n, int has_threshold,
                      float threshold)
{
    if (!has_threshold)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (isfinite(c[i].score) && c[i].score >= threshold)
            return 1;
    return 0;
}

int64_t bm_merge_watermark(const int64_t *pending, size_t n, int64_t next)
{
    int64_t w = next < 0 ? -1 : next;
    for (size_t i = 0; i < n; i++)
        if (pending[i] >= 0 && (w < 0 || pending[i] < w))
            w = pending[i];
    return w;
}

size_t bm_merge_result_bound(size_t probes, size_t top_k, size_t attributes_bytes)
{
    /* Candidate: outer tag + length (3), id tag + length (3) + id, score
     * (5), rank, probe_index and shard (6 each at most). Fixed: ids,
     * agency, gallery, error text, timings and counters, generously. */
    size_t per = BM_MERGE_CAND_MAX_BYTES;
    if (probes != 0 && top_k > SIZE_MAX / probes / per)
        return SIZE_MAX;
    size_t n = probes * top_k * per;
    size_t fixed = BM_MERGE_FIXED_MAX_BYTES + attributes_bytes;
    return n > SIZE_MAX - fixed ? SIZE_MAX : n + fixed;
}
