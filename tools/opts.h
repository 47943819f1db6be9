/* The long-flag parser of the command-line tools (`biomatch`,
 * `biomatch-replay`): "--flag value", "--flag=value" and switches, "--help"
 * with a man-page-like usage block, positional arguments counted.
 *
 * Invariant: a tool never sees a flag it did not declare; an unknown flag
 * or a missing argument stops it with a message naming the flag. Values
 * borrow from argv (or stay the caller's defaults): nothing is allocated. */
#ifndef BM_OPTS_H
#define BM_OPTS_H

#include <stddef.h>

/* One flag. 'val' receives the argument (borrowed from argv) or, for a
 * switch (arg NULL), the string "1". */
struct bm_opt {
    const char *name; /* "--dim" */
    const char *arg;  /* argument name for --help, NULL for a switch */
    const char **val;
    const char *help;
};

/* Parse argv[first..argc) against 'opts' (n entries). Positional arguments
 * go to pos[] (at most maxpos; *npos receives the count). "--help" or "-h"
 * prints the usage (bm_opts_usage) to stdout and returns 1; an error prints
 * "<prog>: <what>" to stderr and returns -1; success returns 0. */
int bm_opts_parse(const char *prog, int argc, char **argv, int first, const struct bm_opt *opts,
                  size_t n, const char **pos, size_t maxpos, size_t *npos, const char *usage,
                  const char *summary);

/* Print "usage: <usage>", the summary (may be NULL) and every flag. */
void bm_opts_usage(const char *usage, const char *summary, const struct bm_opt *opts, size_t n);

#endif /* BM_OPTS_H */
