/* The FAISS peer: runs bench/faiss_peer.py as a child process on the .npy
 * files the benchmark wrote and reads back its JSON (throughput per batch
 * and thread count, exact top-10 ids, the FAISS build and SIMD level).
 *
 * Invariant: bb_peer_run() never fails the benchmark. Whatever goes wrong
 * (no python, no faiss, a crash, a timeout, bad JSON) ends with p->error set
 * to the reason and every FAISS figure absent. */
#ifndef BM_BENCH_PEER_H
#define BM_BENCH_PEER_H

#include <stddef.h>
#include <stdint.h>

#define BB_PEER_MAX_ROWS 64

struct bb_peer_row {
    unsigned batch, threads;
    double comparisons_per_s;
};

struct bb_peer {
    char error[512];        /* empty when FAISS ran */
    char version[32];
    char simd[48];
    char module[64];
    char options[160];
    struct bb_peer_row rows[BB_PEER_MAX_ROWS];
    size_t nrows;
    size_t ntop, k;         /* probes with top-k lists, and k */
    int64_t *top;           /* ntop x k, exact top-k over the whole gallery */
    int64_t *top_subset;    /* ntop x k, over the first 'subset' rows */
};

struct bb_peer_args {
    const char *python;     /* interpreter, looked up in PATH */
    const char *script;     /* path of faiss_peer.py */
    const char *gallery;    /* .npy paths */
    const char *probes;
    const char *batches;    /* "1,8,64" */
    const char *threads;    /* "1,2" */
    size_t subset;
    double min_time;
    int reps;
    int timeout_s;          /* the child is killed after this long */
};

/* Run the peer and fill 'p' (which the caller owns; release the lists with
 * bb_peer_free). Returns 0 when FAISS figures are available, -1 otherwise
 * (p->error says why). */
int bb_peer_run(struct bb_peer *p, const struct bb_peer_args *a);

/* FAISS comparisons/s for (batch, threads), or a negative value. */
double bb_peer_rate(const struct bb_peer *p, unsigned batch, unsigned threads);

/* Free the top-k lists. Accepts NULL. */
void bb_peer_free(struct bb_peer *p);

#endif /* BM_BENCH_PEER_H */
