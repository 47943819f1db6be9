/* Shared state of biomatch-bench: the options, the machine's measured
 * limits and the result rows, plus the sweep entry points (dense.c, iris.c)
 * and the output (report.c).
 *
 * Invariant: every figure in a row was measured in this run; a figure that
 * does not apply or could not be measured is negative and prints as null. */
#ifndef BM_BENCH_H
#define BM_BENCH_H

#include <stddef.h>
#include <stdint.h>

#include "match/cpu.h"
#include "match/gallery.h"
#include "peer.h"

#define BB_MAX_LIST 8
#define BB_K 10

struct bb_opts {
    int json, quick, quiet, keep_data, no_faiss;
    int dense, iris;                     /* modalities selected */
    int formats[3];                      /* f32, f16, int8 selected */
    int simd[3];                         /* indexed by enum bm_simd */
    unsigned threads[BB_MAX_LIST];       /* 0 = all cores, resolved at start */
    size_t nthreads;
    unsigned batches[BB_MAX_LIST];
    size_t nbatches;
    size_t gallery, iris_gallery;        /* 0 = default for the mode */
    size_t scalar_gallery;               /* 0 = default (gallery/10, iris/50) */
    unsigned dim;
    uint64_t seed;
    const char *python, *faiss_script, *workdir;
    double min_time;                     /* seconds per repetition */
    int reps;                            /* repetitions per row (best kept) */
    double row_budget;                   /* stop repeating once a row took this long */
    size_t bw_bytes;                     /* bandwidth buffer */
    int bw_runs;
};

struct bb_row {
    const char *modality, *format, *simd;
    size_t dim, gallery;
    unsigned batch, threads;
    double comparisons_per_s;
    double bandwidth_fraction;           /* single-probe rows only */
    double recall_at_10;
    double faiss_comparisons_per_s;
    double ratio_vs_faiss;
    double popcount_fraction;            /* iris rows only */
    double mate_at_1;                    /* share of probes whose top-1 is the mate */
    int shifts;                          /* iris rows only */
    size_t ti;                           /* index of 'threads' in opts.threads */
    double stream_bytes_per_s;           /* batch-1 rows: gallery bytes read per second */
    double shift_rate;                   /* iris rows: comparisons/s x shifts */
};

struct bb_machine {
    char cpu[128];
    unsigned cores;
    const char *simd, *features;
    double bw_gbs[BB_MAX_LIST];          /* per entry of opts.threads */
    double pop_rate[BB_MAX_LIST];        /* iris: rows x shifts per second */
    double pop_gbs[BB_MAX_LIST];
    const char *pop_level;
    double loadavg[2];                   /* 1-minute load at start and end; -1 unknown */
};

struct bb_ctx {
    struct bb_opts o;
    struct bb_machine m;
    struct bb_peer peer;
    int peer_ok;
    const char *recall_reference;        /* "faiss", "ours-f32-scalar" or NULL */
    struct bb_row *rows;
    size_t nrows, caprows;
    double t0;                           /* bm_mono_s() at start */
    char notes[8][256];
    size_t nnotes;
};

/* Append a row (all optional figures start at -1); NULL on ENOMEM. */
struct bb_row *bb_row_add(struct bb_ctx *c);
void bb_note(struct bb_ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Progress on stderr unless --quiet. */
void bb_progress(const struct bb_ctx *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Measure the read bandwidth at thread count index 'ti' again and keep the
 * best figure seen. The limits are re-measured during the run because the
 * CI machine is shared: one measurement taken while another process ran
 * would understate the limit and overstate every fraction. */
void bb_refresh_bandwidth(struct bb_ctx *c, size_t ti);

/* Fill every row's bandwidth_fraction and popcount_fraction from the best
 * limits measured in the whole run, made non-decreasing in the thread count
 * (call once, after the sweeps). */
void bb_finish_fractions(struct bb_ctx *c);

/* Run the time-boxed repetitions of one row: search 'batch' probes at a
 * time (cycling through 'probes') and return the best comparisons/s. */
double bb_measure(const struct bb_ctx *c, struct bm_gallery *g, const struct bm_probe *probes,
                  size_t nprobes, unsigned batch);

/* Recall@k of 'got' (nprobes x k candidates) against 'ref' ids (nprobes x
 * k), and the share of probes whose first candidate is their mate. */
double bb_recall(const struct bm_candidate *got, const int64_t *ref, size_t nprobes, size_t k);
double bb_mate_at_1(const struct bm_candidate *got, const uint64_t *mates, size_t nprobes,
                    size_t k);

/* Adds template 'row' to segment 's'; BM_OK or an error with the reason. */
typedef int (*bb_add_fn)(void *arg, struct bm_segment *s, size_t row, char *err,
                         size_t errlen);

/* Build a gallery of rows [0, n) in segments of 'seg_rows', filled in
 * parallel with 'threads' threads. 'pool' is borrowed by the gallery. On
 * success '*segs' (may be NULL) receives the segment pointers, which stay
 * valid while the gallery lives (the array is the caller's to free). NULL on
 * error, reported on stderr. */
struct bm_gallery *bb_build(const struct bm_spec *spec, struct bm_pool *pool, size_t n,
                            size_t seg_rows, bb_add_fn add, void *arg, unsigned threads,
                            struct bm_segment ***segs, size_t *nsegs);

/* The sweeps. 0, or -1 on a fatal error (reported on stderr). */
int bb_run_dense(struct bb_ctx *c);
int bb_run_iris(struct bb_ctx *c);

/* Print the results: one JSON object, or the human table. */
int bb_report_json(const struct bb_ctx *c, double elapsed);
void bb_report_table(const struct bb_ctx *c, double elapsed);

#endif /* BM_BENCH_H */
