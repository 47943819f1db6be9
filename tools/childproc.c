/* See childproc.h. */
#define _GNU_SOURCE
#include "childproc.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

pid_t bm_spawn(char *const argv[], char *const envp[], const struct bm_spawn_opts *opts,
               char *err, size_t errlen)
{
    struct bm_spawn_opts o = {0};
    if (opts != NULL)
        o = *opts;
    int logfd = -1;
    if (o.log_path != NULL) {
        logfd = open(o.log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (logfd < 0) {
            snprintf(err, errlen, "%s: %s", o.log_path, strerror(errno));
            return -1;
        }
    }
    int sig = o.death_signal != 0 ? o.death_signal : SIGKILL;
    pid_t parent = getpid();
    fflush(NULL); /* nothing buffered is written twice */
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(err, errlen, "fork: %s", strerror(errno));
        if (logfd >= 0)
            close(logfd);
        return -1;
    }
    if (pid == 0) {
        /* Async-signal-safe calls only from here to exec. */
        if (o.new_group)
            setpgid(0, 0);
        if (prctl(PR_SET_PDEATHSIG, sig) != 0 || getppid() != parent)
            _exit(126);
        if (logfd >= 0) {
            int nul = open("/dev/null", O_RDONLY);
            if (nul >= 0)
                dup2(nul, 0);
            dup2(logfd, 1);
            dup2(logfd, 2);
        }
        execve(argv[0], argv, envp != NULL ? envp : environ);
        static const char msg[] = "exec failed\n";
        ssize_t w = write(2, msg, sizeof msg - 1);
        (void)w;
        _exit(127);
    }
    if (logfd >= 0)
        close(logfd);
    return pid;
}

char **bm_spawn_env(const char *const extra[], size_t nextra, int (*keep)(const char *entry))
{
    size_t n = 0;
    while (environ[n] != NULL)
        n++;
    char **e = calloc(n + nextra + 1, sizeof *e);
    if (e == NULL)
        return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const char *eq = strchr(environ[i], '=');
        size_t nl = eq != NULL ? (size_t)(eq - environ[i]) + 1 : strlen(environ[i]);
        int overridden = 0;
        for (size_t j = 0; j < nextra && !overridden; j++)
            overridden = strncmp(extra[j], environ[i], nl) == 0;
        if (!overridden && (keep == NULL || keep(environ[i])))
            e[k++] = environ[i];
    }
    for (size_t j = 0; j < nextra; j++)
        e[k++] = (char *)extra[j];
    e[k] = NULL;
    return e;
}

int bm_spawn_wait(pid_t pid, int timeout_ms)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    long long end = (long long)now.tv_sec * 1000 + now.tv_nsec / 1000000 + timeout_ms;
    for (;;) {
        int st = 0;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            return st;
        if (r < 0)
            return -1;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if ((long long)now.tv_sec * 1000 + now.tv_nsec / 1000000 >= end)
            return -1;
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

int bm_spawn_stop(pid_t pid, int sig, int grace_ms)
{
    kill(pid, sig);
    int st = bm_spawn_wait(pid, grace_ms);
    if (st != -1)
        return st;
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    return st;
}

int bm_spawn_self_dir(char *out, size_t len)
{
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0)
        return -1;
    self[n] = '\0';
    char *slash = strrchr(self, '/');
    if (slash == NULL)
        return -1;
    *slash = '\0';
    int w = snprintf(out, len, "%s", self);
    return w < 0 || (size_t)w >= len ? -1 : 0;
}

int bm_spawn_sibling(char *out, size_t len, const char *rel, const char *name)
{
    char self[4096];
    if (bm_spawn_self_dir(self, sizeof self) != 0)
        return -1;
    int w = snprintf(out, len, "%s/%s/%s", self, rel, name);
    if (w < 0 || (size_t)w >= len)
        return -1;
    return access(out, X_OK) == 0 ? 0 : -1;
}
