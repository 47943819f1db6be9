/* biomatch-replay internals shared by its subcommands: flag parsing, the
 * Kafka settings every subcommand takes, and the entry point of each
 * subcommand. The program is single-purpose and mostly single-threaded;
 * run.c adds one thread that consumes results (see there).
 *
 * Thread: everything here is called from the main thread. */
#ifndef BM_REPLAY_H
#define BM_REPLAY_H

#include <stddef.h>
#include <stdint.h>

#include "bus/bus.h"
#include "common/err.h"
#include "opts.h"

/* bm_opts_parse (tools/opts.h) from argv[1] with the tool's name in its
 * messages: 0, 1 after printing --help, or -1 after printing an error. */
int rp_parse(int argc, char **argv, const struct bm_opt *opts, size_t n, const char **pos,
             size_t maxpos, size_t *npos, const char *usage);

/* Strict numbers; 0 or -1 with a message printed. */
int rp_double(const char *flag, const char *s, double lo, double hi, double *out);
int rp_u64(const char *flag, const char *s, uint64_t lo, uint64_t hi, uint64_t *out);

/* The Kafka flags of every subcommand. */
struct rp_kafka {
    const char *brokers;   /* --brokers, else $BIOMATCH_KAFKA_BROKERS */
    const char *prefix;    /* --prefix, else $BIOMATCH_TOPIC_PREFIX, else "biomatch." */
    struct bm_bus_prop pprops[2], cprops[1];
    struct bm_bus_conf conf;     /* producers */
    struct bm_bus_conf cconf;    /* consumers and metadata */
};

#define RP_KAFKA_OPTS(k)                                                                 \
    { "--brokers", "HOST:PORT", &(k)->brokers,                                           \
      "Kafka bootstrap servers (default $BIOMATCH_KAFKA_BROKERS)" },                     \
    { "--prefix", "PREFIX", &(k)->prefix, "topic prefix (default \"biomatch.\")" }

/* Fill k->conf from the flags and environment with low-latency producer
 * settings. 0, or -1 (printed) when no brokers are known. */
int rp_kafka_conf(struct rp_kafka *k, const char *client_id);

/* "<prefix><base>" or 'explicit' when not NULL. */
void rp_topic(char *buf, size_t len, const struct rp_kafka *k, const char *explicit_name,
              const char *base);

/* The partition count of 'topic' (BM_OK) and, when hw is not NULL, each
 * partition's high watermark (the offset the next record will get) in a
 * malloc'd array the caller frees. Asking librdkafka directly, because an
 * assignment at BM_OFFSET_END is resolved lazily and could miss records
 * produced in between: the caller assigns at these exact offsets instead. */
int rp_topic_offsets(const struct bm_bus_conf *conf, const char *topic, int *partitions,
                     int64_t **hw, char *err, size_t errlen);


/* Subcommands; argv[0] is the subcommand. Return the exit code. */
int rp_record(int argc, char **argv);
int rp_gen(int argc, char **argv);
int rp_run(int argc, char **argv);
int rp_sweep(int argc, char **argv);
int rp_bare(int argc, char **argv);

#endif /* BM_REPLAY_H */
