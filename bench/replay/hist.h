/* A log-linear latency histogram in the spirit of HdrHistogram, written for
 * biomatch-replay: constant relative precision over a wide range with a fixed,
 * small number of counters, cheap enough to record every job.
 *
 * Layout: with 'digits' significant decimal digits, each bucket is split into
 * S = 2^ceil(log2(2 * 10^digits)) sub-buckets (digits 2 -> 256). Bucket 0
 * counts values 0..S-1 exactly; bucket b >= 1 covers [S/2 << b, S << b) in
 * S/2 steps of width 2^b. A value therefore lands in a counter whose width
 * is at most value / (S/2), i.e. the relative error of a reported percentile
 * is below 2 / S (< 1% for 2 digits). Values above 'max_value' are clamped
 * to it and counted in 'clamped'.
 *
 * Values are plain uint64 (biomatch-replay records microseconds: an hour is
 * 3.6e9 us, so max_value 2^36 us ~ 19 hours covers every sane run).
 *
 * Serialised form (docs/formats.md, "latency histogram"): a line-oriented
 * text file, so runs can be merged by tools or by bm_hist_merge.
 *
 * Thread: a histogram is not locked; the caller serialises access. */
#ifndef BM_HIST_H
#define BM_HIST_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

#define BM_HIST_MIN_DIGITS 1
#define BM_HIST_MAX_DIGITS 5

struct bm_hist {
    unsigned digits;        /* significant decimal digits (1..5) */
    unsigned sub_bits;      /* log2 of the sub-buckets per bucket */
    uint64_t max_value;     /* largest trackable value; larger ones are clamped */
    size_t ncounts;         /* counters in 'counts' */
    uint64_t *counts;       /* owned */
    uint64_t total;         /* values recorded */
    uint64_t clamped;       /* of which were above max_value */
    uint64_t min;           /* exact smallest value (UINT64_MAX when empty) */
    uint64_t max;           /* exact largest value (after clamping) */
    uint64_t sum;           /* for the mean (saturates at UINT64_MAX) */
};

/* A histogram for values 0..max_value (>= 1) with 'digits' precision.
 * Returns it (caller owns; bm_hist_free) or NULL with a message in err
 * (BM_EINVAL for bad parameters, or out of memory). */
struct bm_hist *bm_hist_new(unsigned digits, uint64_t max_value, char *err, size_t errlen);

/* Free 'h' (NULL is fine). */
void bm_hist_free(struct bm_hist *h);

/* Forget every value, keeping the configuration. */
void bm_hist_reset(struct bm_hist *h);

/* Count 'v' once (clamped to max_value). */
void bm_hist_record(struct bm_hist *h, uint64_t v);

/* Add every count of 'src' to 'dst'. Both must have the same digits and
 * max_value: BM_EINVAL otherwise (dst unchanged). */
int bm_hist_merge(struct bm_hist *dst, const struct bm_hist *src);

/* The value at percentile 'p' (0..100): the highest value equivalent to the
 * counter that holds the ceil(p/100 * total)-th smallest value (at least the
 * first), capped to the exact max. p >= 100 gives the exact max; an empty
 * histogram gives 0. The true value v satisfies v <= result <= v + v * 2/S. */
uint64_t bm_hist_percentile(const struct bm_hist *h, double p);

/* Mean of the recorded values (0 when empty). */
double bm_hist_mean(const struct bm_hist *h);

/* The counter index of 'v' and the range [lo, hi] of values it holds. */
size_t bm_hist_index(const struct bm_hist *h, uint64_t v);
void bm_hist_range(const struct bm_hist *h, size_t idx, uint64_t *lo, uint64_t *hi);

/* Write 'h' as text to 'path'. BM_OK or BM_EIO (message in err). */
int bm_hist_save(const struct bm_hist *h, const char *path, char *err, size_t errlen);

/* Parse the text form ('len' bytes at 'buf'). Every line is checked: the
 * header and version, the ranges of digits and max_value, counter indexes
 * within range, strictly increasing, and counts that add up to 'count'.
 * Returns a new histogram (caller owns) or NULL with *rc = BM_EPROTO /
 * BM_ENOMEM and a message in err. 'rc' may be NULL. */
struct bm_hist *bm_hist_parse(const char *buf, size_t len, int *rc, char *err, size_t errlen);

/* Read and parse the file at 'path' (at most 64 MiB). As bm_hist_parse,
 * plus BM_EIO. */
struct bm_hist *bm_hist_load(const char *path, int *rc, char *err, size_t errlen);

#endif /* BM_HIST_H */
