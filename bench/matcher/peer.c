/* Child-process plumbing and JSON parsing for the FAISS peer (see peer.h).
 * The child's stdout is read through a pipe with a deadline; its stderr is
 * left on ours so a Python traceback stays visible to the person running the
 * benchmark. */
#include "peer.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "par.h"
#include "common/clock.h"

#define PEER_MAX_OUTPUT (64u << 20)

static int peer_fail(struct bb_peer *p, const char *why)
{
    snprintf(p->error, sizeof p->error, "%s", why);
    return -1;
}

/* Read the child's stdout until EOF or the deadline. Returns the buffer
 * (caller frees) or NULL with the reason in 'why'. */
static char *read_all(int fd, double deadline, char *why, size_t whylen)
{
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    if (!buf) {
        snprintf(why, whylen, "out of memory");
        return NULL;
    }
    for (;;) {
        double left = deadline - bm_mono_s();
        if (left <= 0) {
            snprintf(why, whylen, "faiss peer timed out");
            free(buf);
            return NULL;
        }
        struct pollfd pfd = {fd, POLLIN, 0};
        int pr = poll(&pfd, 1, (int)(left * 1000) + 1);
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr <= 0)
            continue;
        if (len + 4096 + 1 > cap) {
            if (cap >= PEER_MAX_OUTPUT) {
                snprintf(why, whylen, "faiss peer output too large");
                free(buf);
                return NULL;
            }
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                snprintf(why, whylen, "out of memory");
                free(buf);
                return NULL;
            }
            buf = nb;
            cap *= 2;
        }
        ssize_t n = read(fd, buf + len, cap - len - 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        len += (size_t)n;
    }
    buf[len] = '\0';
    return buf;
}

static void copy_str(char *dst, size_t len, const cJSON *obj, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    snprintf(dst, len, "%s", cJSON_IsString(v) ? v->valuestring : "?");
}

static int64_t *parse_top(const cJSON *arr, size_t *ntop, size_t *k)
{
    if (!cJSON_IsArray(arr))
        return NULL;
    size_t n = (size_t)cJSON_GetArraySize(arr);
    if (n == 0)
        return NULL;
    size_t kk = (size_t)cJSON_GetArraySize(cJSON_GetArrayItem(arr, 0));
    if (kk == 0 || (*ntop && (*ntop != n || *k != kk)))
        return NULL;
    int64_t *out = calloc(n * kk, sizeof *out);
    if (!out)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        const cJSON *row = cJSON_GetArrayItem(arr, (int)i);
        for (size_t j = 0; j < kk; j++) {
            const cJSON *v = cJSON_GetArrayItem(row, (int)j);
            out[i * kk + j] = cJSON_IsNumber(v) ? (int64_t)v->valuedouble : -1;
        }
    }
    *ntop = n;
    *k = kk;
    return out;
}

static int parse(struct bb_peer *p, const char *text)
{
    cJSON *root = cJSON_Parse(text);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return peer_fail(p, "faiss peer printed no JSON object");
    }
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(root, "error");
    if (cJSON_IsString(e)) {
        peer_fail(p, e->valuestring);
        cJSON_Delete(root);
        return -1;
    }
    copy_str(p->version, sizeof p->version, root, "faiss_version");
    copy_str(p->simd, sizeof p->simd, root, "faiss_simd");
    copy_str(p->module, sizeof p->module, root, "faiss_module");
    copy_str(p->options, sizeof p->options, root, "compile_options");
    const cJSON *rows = cJSON_GetObjectItemCaseSensitive(root, "rows");
    const cJSON *r;
    cJSON_ArrayForEach(r, rows)
    {
        if (p->nrows >= BB_PEER_MAX_ROWS)
            break;
        const cJSON *b = cJSON_GetObjectItemCaseSensitive(r, "batch");
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(r, "threads");
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(r, "comparisons_per_s");
        if (!cJSON_IsNumber(b) || !cJSON_IsNumber(t) || !cJSON_IsNumber(c))
            continue;
        p->rows[p->nrows].batch = (unsigned)b->valuedouble;
        p->rows[p->nrows].threads = (unsigned)t->valuedouble;
        p->rows[p->nrows].comparisons_per_s = c->valuedouble;
        p->nrows++;
    }
    p->top = parse_top(cJSON_GetObjectItemCaseSensitive(root, "top10"), &p->ntop, &p->k);
    p->top_subset =
        parse_top(cJSON_GetObjectItemCaseSensitive(root, "top10_subset"), &p->ntop, &p->k);
    cJSON_Delete(root);
    if (!p->top || !p->top_subset || p->nrows == 0)
        return peer_fail(p, "faiss peer JSON lacks rows or top10 lists");
    return 0;
}

int bb_peer_run(struct bb_peer *p, const struct bb_peer_args *a)
{
    char subset[32], min_time[32], reps[16];
    memset(p, 0, sizeof *p);
    snprintf(subset, sizeof subset, "%zu", a->subset);
    snprintf(min_time, sizeof min_time, "%g", a->min_time);
    snprintf(reps, sizeof reps, "%d", a->reps);
    const char *argv[] = {a->python, a->script, "--gallery", a->gallery,
                          "--probes", a->probes, "--batches", a->batches,
                          "--threads", a->threads, "--subset", subset,
                          "--min-time", min_time, "--reps", reps, NULL};
    if (access(a->script, R_OK) != 0) {
        snprintf(p->error, sizeof p->error, "faiss peer script %s: %s", a->script,
                 strerror(errno));
        return -1;
    }
    int fds[2];
    if (pipe(fds) != 0)
        return peer_fail(p, "pipe failed");
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        close(fds[0]);
        close(fds[1]);
        return peer_fail(p, "fork failed");
    }
    if (pid == 0) {
        int devnull = open("/dev/null", O_RDONLY);
        if (devnull >= 0)
            dup2(devnull, STDIN_FILENO);
        dup2(fds[1], STDOUT_FILENO);
        close(fds[0]);
        close(fds[1]);
        /* execvp() does not modify argv; its prototype predates const. */
        execvp(a->python, (char *const *)argv);
        _exit(127);
    }
    close(fds[1]);
    char why[256] = "";
    char *out = read_all(fds[0], bm_mono_s() + a->timeout_s, why, sizeof why);
    close(fds[0]);
    if (!out)
        kill(pid, SIGKILL);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (!out)
        return peer_fail(p, why);
    int rc;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 127 && out[0] == '\0') {
        snprintf(p->error, sizeof p->error, "could not run python interpreter '%s'",
                 a->python);
        rc = -1;
    } else if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0) && out[0] == '\0') {
        snprintf(p->error, sizeof p->error, "faiss peer failed (status %d) without output",
                 status);
        rc = -1;
    } else {
        rc = parse(p, out);
    }
    free(out);
    return rc;
}

double bb_peer_rate(const struct bb_peer *p, unsigned batch, unsigned threads)
{
    for (size_t i = 0; i < p->nrows; i++)
        if (p->rows[i].batch == batch && p->rows[i].threads == threads)
            return p->rows[i].comparisons_per_s;
    return -1;
}

void bb_peer_free(struct bb_peer *p)
{
    if (!p)
        return;
    free(p->top);
    free(p->top_subset);
    p->top = p->top_subset = NULL;
}
