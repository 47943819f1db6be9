/* See args.h. */
#include "args.h"

#include <string.h>

enum bm_args_action bm_args_parse(int argc, char **argv, struct bm_args *a)
{
    a->config = NULL;
    a->check = false;
    a->bad = NULL;
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        if (strcmp(s, "--config") == 0 && i + 1 < argc) {
            a->config = argv[++i];
        } else if (strncmp(s, "--config=", 9) == 0 && s[9] != '\0') {
            a->config = s + 9;
        } else if (strcmp(s, "--check-config") == 0) {
            a->check = true;
        } else if (strcmp(s, "--help") == 0 || strcmp(s, "-h") == 0) {
            return BM_ARGS_HELP;
        } else if (strcmp(s, "--version") == 0) {
            return BM_ARGS_VERSION;
        } else {
            a->bad = s;
            return BM_ARGS_BAD;
        }
    }
    return BM_ARGS_RUN;
}

int bm_args_main(int argc, char **argv, const char *prog, const char *version,
                 void (*usage)(FILE *), struct bm_args *a)
{
    switch (bm_args_parse(argc, argv, a)) {
    case BM_ARGS_HELP:
        usage(stdout);
        return 0;
    case BM_ARGS_VERSION:
        printf("%s %s\n", prog, version);
        return 0;
    case BM_ARGS_BAD:
        fprintf(stderr, "%s: unknown argument '%s'\n", prog, a->bad);
        usage(stderr);
        return 2;
    case BM_ARGS_RUN:
        break;
    }
    return -1;
}
