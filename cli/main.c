/* `biomatch`: the operator's command line. Dispatches to one subcommand per
 * source file (gallery.c, enroll.c, gen.c); every subcommand lists its
 * flags with --help. Exit status: 0 success, 1 failure, 2 usage error. */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "obs/log.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: biomatch <command> [flags]   (biomatch <command> --help for its flags)\n\n"
            "commands:\n"
            "  gallery create NAME    define a gallery and create its topics\n"
            "  gallery list           list the gallery definitions\n"
            "  gallery stats NAME     per-shard subjects, segments, bytes, manifest version\n"
            "  gallery load NAME      load every shard as a worker would (speed, memory)\n"
            "  topics create          create the shared topics (enroll, jobs, partials,\n"
            "                         results, audit, dlq, galleries) if missing\n"
            "  enroll                 send enrollment requests from .npy / iris files\n"
            "  gen                    write a seeded synthetic gallery and probe set\n"
            "  submit                 send a match job, optionally wait for its result\n"
            "  keygen                 make an Ed25519 signing key and its policy line\n"
            "  tail TOPIC             follow results, partials, dlq, audit or jobs\n"
            "  audit verify           check the audit chains for modified, inserted,\n"
            "                         deleted or truncated records\n"
            "  up                     run a local cluster (embedded Kafka, Redis, coordinator,\n"
            "                         workers); --demo runs a synthetic workload\n\n"
            "Connection flags shared by the commands that need them:\n"
            "  --config FILE, --brokers HOST:PORT, --redis URL, --prefix PREFIX\n"
            "(defaults: the configuration file, then BIOMATCH_KAFKA_BROKERS,\n"
            "BIOMATCH_REDIS_URL, BIOMATCH_TOPIC_PREFIX; see docs/config.md)\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    /* The component of any JSON log line, and BIOMATCH_LOG_LEVEL=debug to
     * see librdkafka's own lines (cli_bus_conf). */
    (void)bm_log_init("cli");
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(cmd, "gallery") == 0)
        return cli_gallery(argc - 1, argv + 1);
    if (strcmp(cmd, "topics") == 0)
        return cli_topics(argc - 1, argv + 1);
    if (strcmp(cmd, "enroll") == 0)
        return cli_enroll(argc - 1, argv + 1);
    if (strcmp(cmd, "gen") == 0)
        return cli_gen(argc - 1, argv + 1);
    if (strcmp(cmd, "submit") == 0)
        return cli_submit(argc - 1, argv + 1);
    if (strcmp(cmd, "keygen") == 0)
        return cli_keygen(argc - 1, argv + 1);
    if (strcmp(cmd, "tail") == 0)
        return cli_tail(argc - 1, argv + 1);
    if (strcmp(cmd, "audit") == 0)
        return cli_audit(argc - 1, argv + 1);
    if (strcmp(cmd, "up") == 0)
        return cli_up(argc - 1, argv + 1);
    fprintf(stderr, "biomatch: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
