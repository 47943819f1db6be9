/* Child processes for the tools that start biomatch programs: `biomatch
 * up` and the integration tests (and what they need to find the programs).
 *
 * Invariant: a child started here never outlives its parent by accident
 * (it gets a death signal when the parent dies, and exits at once if the
 * parent is already gone), and everything between fork and exec is
 * async-signal-safe, so a multithreaded parent (librdkafka's threads) may
 * call bm_spawn. */
#ifndef BM_CHILDPROC_H
#define BM_CHILDPROC_H

#include <stddef.h>
#include <sys/types.h>

struct bm_spawn_opts {
    const char *log_path; /* stdout and stderr appended here; NULL = inherited */
    int new_group;        /* 1: the child leads its own process group (Ctrl-C
                           * in a terminal then reaches only the parent) */
    int death_signal;     /* sent to the child when the parent dies (0 = SIGKILL) */
};

/* Start argv[0] (a path) with 'argv' (NULL-terminated) and the environment
 * 'envp' (NULL-terminated; NULL = this process's). stdin is /dev/null when
 * a log is given. Returns the child's pid, or -1 with the reason in err
 * (no child exists then). 'opts' may be NULL (defaults above). */
pid_t bm_spawn(char *const argv[], char *const envp[], const struct bm_spawn_opts *opts,
               char *err, size_t errlen);

/* This process's environment, less the entries 'keep' refuses (NULL: keep
 * all; it gets "NAME=VALUE" and returns non-zero to keep), plus the
 * 'nextra' strings "NAME=VALUE" of 'extra' (which win over the same names).
 * The array is malloc'd (free() it); its strings are borrowed from environ
 * and 'extra'. NULL on ENOMEM. Build it before bm_spawn: the child may not
 * allocate. */
char **bm_spawn_env(const char *const extra[], size_t nextra, int (*keep)(const char *entry));

/* Wait up to 'timeout_ms' for 'pid' to exit: its wait status, or -1 when
 * it is still running then (or is not our child). */
int bm_spawn_wait(pid_t pid, int timeout_ms);

/* Send 'sig', wait up to 'grace_ms', then SIGKILL and reap: the wait
 * status. */
int bm_spawn_stop(pid_t pid, int sig, int grace_ms);

/* The directory of this executable (from /proc/self/exe) into out. 0, or
 * -1 when it cannot be read or does not fit. */
int bm_spawn_self_dir(char *out, size_t len);

/* "<dir of this executable>/<rel>/<name>" into out (e.g. rel "../bin" from
 * build/tests finds build/bin/biomatch-worker). 0, or -1 when it does not
 * fit or is not an executable file. */
int bm_spawn_sibling(char *out, size_t len, const char *rel, const char *name);

#endif /* BM_CHILDPROC_H */
