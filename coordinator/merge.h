/* Pure rules of aggregation: merging per-shard top-k lists into a job's
 * final candidate list, deciding a job's status from its shards' answers,
 * the VERIFY decision, and the partials offset watermark.
 *
 * Nothing here does I/O or keeps state, so every rule is unit-tested
 * (tests/unit/test_merge.c) without a broker. The aggregator
 * (aggregate.c) gathers the inputs and applies these functions.
 *
 * Ordering contract of a merged list (docs/wire.md, MatchResult.candidates):
 * probe_index ascending, then score descending, then subject id ascending
 * (bytewise, as strcmp); at most 'limit' per probe; ranks 1..n per probe.
 * Thread: any (no shared state). */
#ifndef BM_MERGE_H
#define BM_MERGE_H

#include <stddef.h>
#include <stdint.h>

#include "biomatch.pb-c.h"

/* One candidate as a shard reported it. 'subject_id' is borrowed from the
 * shard's decoded partial and must outlive the merged list. */
struct bm_merge_cand {
    const char *subject_id;
    float score;
    uint32_t probe_index;
    uint32_t shard;
    uint32_t rank;          /* set by bm_merge_select: 1-based within its probe */
};

/* What the merge needs to know about the job. */
struct bm_merge_opts {
    uint32_t limit;         /* most candidates per probe; 0 = no limit */
    uint32_t probe_count;   /* candidates with probe_index >= this are dropped */
    int has_threshold;      /* drop scores below 'threshold' */
    float threshold;
};

/* Sort 'c' (n entries, modified in place) into the final order and keep the
 * candidates that pass: finite score, probe_index < probe_count, score >=
 * threshold (when has_threshold), not a repeat of a subject already kept
 * for the same probe (the better score wins; a subject lives in one shard,
 * so a repeat means a redelivered or buggy partial), and within the first
 * 'limit' of its probe. Kept entries are moved to the front with their
 * rank set. Returns how many were kept. */
size_t bm_merge_select(struct bm_merge_cand *c, size_t n,
                       const struct bm_merge_opts *o);

/* The order used by bm_merge_select, as a qsort comparator over struct
 * bm_merge_cand: probe asc, score desc (NaN last), subject id asc. */
int bm_merge_cmp(const void *a, const void *b);

/* A job's shard answers, counted by the aggregator. */
struct bm_merge_tally {
    uint32_t total;         /* S: shards the job was fanned out to */
    uint32_t ok;            /* shards that answered OK (incl. VERIFY not-found) */
    uint32_t failed;        /* shards that answered ERROR */
    uint32_t not_found;     /* VERIFY: shards that answered SUBJECT_NOT_FOUND */
    int verify;             /* job mode is VERIFY */
    int deadline_passed;    /* the job's deadline is behind us */
    uint32_t quarantined;   /* shards that answered POISON (not scored) */
};

/* 1 when the job can be emitted now: every shard answered (ok, failed or
 * quarantined), or the deadline passed. */
int bm_merge_ready(const struct bm_merge_tally *t);

/* The status of a ready job (see docs/internals/coordinator.md,
 * "Aggregation"):
 *   any shard failed                          -> ERROR (first error's code)
 *   VERIFY, every shard answered not-found    -> ERROR (SUBJECT_NOT_FOUND)
 *   all shards ok                             -> OK
 *   some ok, the others quarantined or late   -> PARTIAL (POISON if any
 *                                                was quarantined)
 *   none ok, some quarantined                 -> ERROR (POISON)
 *   deadline passed, none answered            -> TIMEOUT
 * A quarantined shard counts as missing, not failed: the job still answers
 * from the other shards. *code gets SUBJECT_NOT_FOUND or POISON for those
 * cases, else is untouched (the caller supplies the failing shard's code). */
Biomatch__V1__ResultStatus bm_merge_status(const struct bm_merge_tally *t,
                                           Biomatch__V1__ErrorCode *code);

/* VERIFY decision over a merged list: 1 when has_threshold and some kept
 * candidate scored >= threshold. Without a threshold biomatch never
 * asserts a match (fail closed): the score is in the candidate list and
 * the client decides. */
int bm_merge_verified(const struct bm_merge_cand *c, size_t n, int has_threshold,
                      float threshold);

/* The offset to commit for one partials partition: the lowest first offset
 * among jobs that still hold the partition back ('pending', n entries),
 * or 'next' (last consumed offset + 1) when none does. Returns -1 when
 * nothing was consumed yet (next < 0) and nothing is pending. */
int64_t bm_merge_watermark(const int64_t *pending, size_t n, int64_t next);

/* The largest encoded MatchResult (and, per shard, PartialResult) a job of
 * 'probes' probes asking 'top_k' candidates per probe can produce, with
 * 'attributes_bytes' of encoded attributes: every candidate at its largest
 * (a subject id of BM_MERGE_MAX_ID_BYTES, the longest a gallery may hold,
 * and every varint at full width) plus the fixed fields at their largest.
 * Intake refuses a job whose bound is over the record size limit
 * (docs/wire.md "Size limits"). Saturates instead of overflowing. */
#define BM_MERGE_MAX_ID_BYTES 128
#define BM_MERGE_CAND_MAX_BYTES (3 + 3 + BM_MERGE_MAX_ID_BYTES + 5 + 6 + 6 + 6)
#define BM_MERGE_FIXED_MAX_BYTES 4096
size_t bm_merge_result_bound(size_t probes, size_t top_k, size_t attributes_bytes);

#endif /* BM_MERGE_H */
