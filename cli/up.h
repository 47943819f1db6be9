/* `biomatch up` and its --demo: a whole cluster on one machine.
 *
 * up.c owns the processes (embedded mock Kafka, a redis-server child, one
 * coordinator and N workers), demo.c drives a synthetic workload through
 * them. They meet in struct cli_up_env: the addresses of a cluster that is
 * running, with its galleries defined and every topic created.
 *
 * Thread: single-threaded (the mock cluster has its own threads, but
 * nothing here is shared with them). */
#ifndef BM_CLI_UP_H
#define BM_CLI_UP_H

#include <signal.h>
#include <stdint.h>

struct bm_signer;

/* The agencies of the policy `up` generates: the demo's and one for
 * trying the command line by hand. */
#define CLI_UP_DEMO_AGENCY "demo"
#define CLI_UP_CLI_AGENCY "cli"

/* The galleries `up` defines. */
#define CLI_UP_FACE "face"
#define CLI_UP_IRIS "iris"
#define CLI_UP_FACE_DIM 512u

struct cli_up_env {
    const char *brokers;        /* bootstrap servers the children use */
    const char *redis_url;
    const char *prefix;         /* topic prefix */
    uint32_t face_shards;
    uint32_t iris_shards;
    const int *worker_ports;    /* /readyz and /metrics of each worker */
    int nworkers;
    volatile sig_atomic_t *stop; /* set by SIGINT/SIGTERM */
    /* Signs the demo agency's jobs and enrollments (the key `up` made for
     * its generated policy). */
    const struct bm_signer *signer;
    /* Non-zero when a child died; checked while waiting so a crash ends the
     * demo at once instead of at a timeout. */
    int (*children_ok)(void *opaque);
    void *opaque;
};

struct cli_demo_opts {
    uint32_t faces;             /* face gallery subjects */
    uint32_t irises;            /* iris gallery subjects */
    uint32_t face_probes;
    uint32_t iris_probes;
    double mated;               /* fraction of mated probes */
    double rate;                /* jobs per second, open loop; 0 = all at once */
    uint64_t seed;
    int json;                   /* print the summary as JSON too */
};

/* Generate, enroll, wait for the shards, submit, collect, print the table.
 * Returns the exit code: 0 when every job got a result with status OK,
 * 1 otherwise (the reason is printed). */
int cli_demo_run(const struct cli_up_env *env, const struct cli_demo_opts *o);

/* GET http://127.0.0.1:port/path: the HTTP status code, or -1 when the
 * server could not be reached within timeout_ms. */
int cli_http_status(int port, const char *path, int timeout_ms);

#endif /* BM_CLI_UP_H */
