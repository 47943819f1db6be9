/* Shared plumbing of the `biomatch` command: a table-driven flag parser
 * that also prints each subcommand's --help, and the connection settings
 * every subcommand shares (--config, --brokers, --redis, --prefix, falling
 * back to the configuration file and BIOMATCH_* environment, conf/conf.h).
 *
 * Thread: the CLI is single-threaded. */
#ifndef BM_CLI_H
#define BM_CLI_H

#include <stddef.h>
#include <stdint.h>

#include "bus/bus.h"
#include "conf/conf.h"
#include "opts.h"
#include "store/redis.h"


/* The flags shared by every subcommand that talks to Kafka or Redis. */
struct cli_common {
    const char *config;
    const char *brokers;
    const char *redis;
    const char *prefix;
    struct bm_conf *conf;   /* loaded by cli_conf_load */
};

#define CLI_COMMON_OPTS(c)                                                                   \
    { "--config", "FILE", &(c)->config, "YAML configuration (docs/config.md)" },            \
    { "--brokers", "HOST:PORT,...", &(c)->brokers, "Kafka bootstrap servers "                \
      "(default: config / BIOMATCH_KAFKA_BROKERS)" },                                         \
    { "--redis", "URL", &(c)->redis, "Redis URL (default: config / BIOMATCH_REDIS_URL)" },   \
    { "--prefix", "PREFIX", &(c)->prefix, "topic prefix (default: config, \"biomatch.\")" }

/* bm_opts_parse (tools/opts.h) with the command's name in its messages. */
int cli_parse(int argc, char **argv, int first, const struct bm_opt *opts, size_t n,
              const char **pos, size_t maxpos, size_t *npos, const char *usage,
              const char *summary);

/* Strict number parsing; 0 on success, -1 (message printed) otherwise. */
int cli_u32(const char *flag, const char *s, uint32_t lo, uint32_t hi, uint32_t *out);
int cli_u64(const char *flag, const char *s, uint64_t *out);
int cli_double(const char *flag, const char *s, double lo, double hi, double *out);

/* Load the configuration and apply the flag overrides. 0 or -1 (printed). */
int cli_conf_load(struct cli_common *c);
void cli_conf_free(struct cli_common *c);
const char *cli_prefix(const struct cli_common *c);

/* Connect to Redis (NULL + message printed on failure). */
struct bm_redis *cli_redis(const struct cli_common *c);

/* Fill a bus configuration from the loaded conf; 'props' must hold
 * c->conf->kafka_n entries and outlive the use of 'bc'. -1 when no brokers
 * are configured (printed). */
int cli_bus_conf(const struct cli_common *c, struct bm_bus_conf *bc, struct bm_bus_prop *props);

/* Subcommands (argv[0] is the subcommand name). Each returns the process
 * exit code. */
int cli_gallery(int argc, char **argv);
int cli_topics(int argc, char **argv);
int cli_enroll(int argc, char **argv);
int cli_gen(int argc, char **argv);
int cli_submit(int argc, char **argv);
int cli_tail(int argc, char **argv);
int cli_up(int argc, char **argv);
int cli_keygen(int argc, char **argv);
int cli_audit(int argc, char **argv);

#endif /* BM_CLI_H */
