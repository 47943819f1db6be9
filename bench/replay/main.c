/* biomatch-replay: record live job traffic, write synthetic workloads with
 * known mates, and replay either against a cluster open-loop, measuring
 * end-to-end latency from each job's scheduled send time (bench/replay/run.c).
 * docs/benchmarks.md shows the commands; docs/formats.md the files. */
#include <stdio.h>
#include <string.h>

#include "replay.h"

static void usage(void)
{
    puts("usage: biomatch-replay COMMAND [flags]   (COMMAND --help for its flags)\n\n"
         "  record   capture a live topic into a replay file\n"
         "  gen      write a synthetic workload whose mates are known\n"
         "  run      replay a file open-loop and report end-to-end latency\n"
         "  sweep    run a rate sweep and plot latency vs throughput (gnuplot)\n"
         "  bare     time the bare matcher on a gallery's shards loaded from Redis");
}

int main(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        usage();
        return argc < 2 ? 2 : 0;
    }
    const char *c = argv[1];
    if (strcmp(c, "record") == 0)
        return rp_record(argc - 1, argv + 1);
    if (strcmp(c, "gen") == 0)
        return rp_gen(argc - 1, argv + 1);
    if (strcmp(c, "run") == 0)
        return rp_run(argc - 1, argv + 1);
    if (strcmp(c, "sweep") == 0)
        return rp_sweep(argc - 1, argv + 1);
    if (strcmp(c, "bare") == 0)
        return rp_bare(argc - 1, argv + 1);
    fprintf(stderr, "biomatch-replay: unknown command '%s'\n", c);
    usage();
    return 2;
}
