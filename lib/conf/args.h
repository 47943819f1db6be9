/* The command line every biomatch server program shares: --config FILE
 * (or --config=FILE), --check-config, --help/-h, --version. One parser, so
 * the coordinator and the worker cannot drift apart on flags or exit codes.
 * Everything else is configuration (docs/config.md), not flags. */
#ifndef BM_ARGS_H
#define BM_ARGS_H

#include <stdbool.h>
#include <stdio.h>

enum bm_args_action {
    BM_ARGS_RUN = 0,     /* load the configuration and run (or check it) */
    BM_ARGS_HELP,        /* print usage to stdout, exit 0 */
    BM_ARGS_VERSION,     /* print the version, exit 0 */
    BM_ARGS_BAD,         /* unknown or incomplete argument: usage to stderr, exit 2 */
};

struct bm_args {
    const char *config;  /* --config FILE; NULL: defaults and environment only */
    bool check;          /* --check-config: validate, print, exit 0/1 */
    const char *bad;     /* BM_ARGS_BAD: the argument refused (borrowed from argv) */
};

/* Parse argv into 'a' (strings borrowed from argv). Thread: main only. */
enum bm_args_action bm_args_parse(int argc, char **argv, struct bm_args *a);

/* What every main does with the parse: -1 means run with 'a'; otherwise
 * the exit code, after printing what the action asks for (usage via
 * 'usage' to stdout or, for a bad argument, with the refused argument to
 * stderr; or "<prog> <version>"). Thread: main only. */
int bm_args_main(int argc, char **argv, const char *prog, const char *version,
                 void (*usage)(FILE *), struct bm_args *a);

#endif /* BM_ARGS_H */
