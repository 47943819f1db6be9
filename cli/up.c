/* `biomatch up`: a whole biomatch cluster on one machine, for trying it out
 * and for the demo (docs/architecture.md §8: the embedded mock cluster).
 *
 * Kafka is librdkafka's mock cluster inside this process (--embedded, the
 * default; the children reach it over loopback) or a real broker
 * (--kafka). Redis is a redis-server child on a free port (no persistence,
 * a temporary directory) unless --redis. Then the face and iris galleries
 * are defined, every topic is created, and one coordinator and N workers
 * run as separate processes, found next to this binary, with a generated
 * configuration file. Without --demo it waits for Ctrl-C; with --demo it
 * runs demo.c's workload and stops.
 *
 * Invariant: every process this command starts is stopped before it
 * returns, whatever happened: SIGTERM, a bounded wait, then SIGKILL.
 * Children also get PR_SET_PDEATHSIG, so even a SIGKILL of `biomatch up`
 * does not leave them running. Children are started in their own process
 * group, so a terminal's Ctrl-C reaches only this process, which then stops
 * them in order (workers, coordinator, Redis). */
#define _GNU_SOURCE

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <time.h>
#include <unistd.h>

#include "bus/mock.h"
#include "cli.h"
#include "common/clock.h"
#include "conf/policy.h"
#include "conf/topics.h"
#include "matchjob.h"
#include "childproc.h"
#include "store/galdef.h"
#include "store/redis.h"
#include "up.h"

#define MAX_WORKERS 16
#define STOP_GRACE_MS 20000       /* SIGTERM -> SIGKILL */
#define REDIS_START_MS 10000
#define READY_MS 60000
#define ADMIN_MS 30000
#define SHARED_PARTITIONS 4
#define IRIS_DEFAULT_SHARDS 2
#define FACE_DEFAULT_SHARDS 4
#define CLI_UP_MOCK_FETCH_WAIT_MS 10

static volatile sig_atomic_t g_stop;

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

struct child {
    const char *name;
    pid_t pid;                 /* 0 = not running */
    int port;                  /* http port, 0 = none */
    int status;                /* wait status once reaped */
    char log[PATH_MAX];
};

struct up {
    char dir[1024];            /* temporary directory (config, logs, redis) */
    char bindir[1024];
    char config[PATH_MAX];
    char brokers[512];
    char redis_url[256];
    const char *prefix;
    struct bm_mock_cluster *mock;
    struct child redis;
    struct child coord;
    struct child workers[MAX_WORKERS];
    int nworkers;
    uint32_t face_shards, iris_shards;
    int failed;                /* a child died unexpectedly */
    char policy[PATH_MAX];     /* the generated policy file */
    struct bm_signer *demo_signer; /* the demo agency's key */
};

static void sleep_ms(int ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

/* A loopback TCP port nobody listens on right now (the kernel's choice). */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    int port = -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

int cli_http_status(int port, const char *path, int timeout_ms)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct timeval tv = { timeout_ms / 1000, (timeout_ms % 1000) * 1000 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int code = -1;
    if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0) {
        char req[256], resp[64];
        int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", path);
        if (write(fd, req, (size_t)n) == n) {
            ssize_t got = read(fd, resp, sizeof resp - 1);
            if (got > 12) {
                resp[got] = '\0';
                /* "HTTP/1.x NNN ..." */
                if (strncmp(resp, "HTTP/1.", 7) == 0)
                    code = (int)strtol(resp + 9, NULL, 10);
            }
        }
    }
    close(fd);
    return code;
}

/* Which of our environment variables a child gets: not the BIOMATCH_*
 * settings that would override the generated configuration (the test
 * harness exports BIOMATCH_KAFKA_BROKERS, for one), except these. */
static int child_keeps(const char *entry)
{
    static const char *const keep[] = { "BIOMATCH_SIMD=", "BIOMATCH_LOG_LEVEL=",
                                        "BIOMATCH_WORKER_THREADS=" };
    if (strncmp(entry, "BIOMATCH_", 9) != 0)
        return 1;
    for (size_t j = 0; j < sizeof keep / sizeof keep[0]; j++)
        if (strncmp(entry, keep[j], strlen(keep[j])) == 0)
            return 1;
    return 0;
}

/* The environment of a child: ours as child_keeps filters it, plus
 * 'extra' (bm_spawn_env; free() it). */
static char **child_env(const char *const *extra, size_t nextra)
{
    return bm_spawn_env(extra, nextra, child_keeps);
}

/* Start 'argv' (argv[0] a path) with stdout/stderr to ch->log, in its own
 * process group (Ctrl-C reaches only us; we stop the children in order),
 * sent SIGTERM if we die. */
static int spawn(struct child *ch, char *const argv[], char **envp)
{
    char err[256];
    struct bm_spawn_opts o = { .log_path = ch->log, .new_group = 1, .death_signal = SIGTERM };
    pid_t pid = bm_spawn(argv, envp, &o, err, sizeof err);
    if (pid < 0) {
        fprintf(stderr, "biomatch: %s\n", err);
        return -1;
    }
    ch->pid = pid;
    return 0;
}

/* Reap 'ch' if it exited. 1 = still running, 0 = gone (status kept). */
static int alive(struct child *ch)
{
    if (ch->pid <= 0)
        return 0;
    int st;
    pid_t r = waitpid(ch->pid, &st, WNOHANG);
    if (r == ch->pid) {
        ch->status = st;
        ch->pid = 0;
        return 0;
    }
    return 1;
}

static void describe_exit(const struct child *ch)
{
    if (WIFEXITED(ch->status))
        fprintf(stderr, "biomatch up: %s exited with status %d (log: %s)\n", ch->name,
                WEXITSTATUS(ch->status), ch->log);
    else if (WIFSIGNALED(ch->status))
        fprintf(stderr, "biomatch up: %s was killed by signal %d (log: %s)\n", ch->name,
                WTERMSIG(ch->status), ch->log);
}

/* Print the last lines of a child's log, to explain a failure. */
static void show_log_tail(const char *path, int lines)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return;
    char buf[8192];
    if (fseek(f, 0, SEEK_END) == 0) {
        long sz = ftell(f);
        fseek(f, sz > (long)sizeof buf - 1 ? sz - (long)sizeof buf + 1 : 0, SEEK_SET);
    }
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = buf + n;
    int seen = 0;
    while (p > buf && seen <= lines)
        if (*--p == '\n')
            seen++;
    fprintf(stderr, "--- last lines of %s ---\n%s\n", path, p == buf ? p : p + 1);
}

static int children_ok(void *opaque)
{
    struct up *u = opaque;
    struct child *all[MAX_WORKERS + 2];
    int n = 0;
    all[n++] = &u->coord;
    for (int i = 0; i < u->nworkers; i++)
        all[n++] = &u->workers[i];
    if (u->redis.log[0] != '\0')
        all[n++] = &u->redis;
    for (int i = 0; i < n; i++) {
        if (all[i]->pid > 0 && !alive(all[i])) {
            describe_exit(all[i]);
            show_log_tail(all[i]->log, 20);
            u->failed = 1;
        }
    }
    return !u->failed;
}

/* SIGTERM every child in 'v', wait up to STOP_GRACE_MS, SIGKILL the rest. */
static void stop_children(struct child **v, int n)
{
    for (int i = 0; i < n; i++)
        if (v[i]->pid > 0)
            kill(v[i]->pid, SIGTERM);
    int64_t deadline = bm_mono_ms() + STOP_GRACE_MS;
    for (;;) {
        int running = 0;
        for (int i = 0; i < n; i++)
            running += alive(v[i]);
        if (running == 0)
            return;
        if (bm_mono_ms() >= deadline)
            break;
        sleep_ms(50);
    }
    for (int i = 0; i < n; i++) {
        if (v[i]->pid > 0) {
            fprintf(stderr, "biomatch up: %s did not stop within %d s; killing it\n", v[i]->name,
                    STOP_GRACE_MS / 1000);
            kill(v[i]->pid, SIGKILL);
            int st;
            waitpid(v[i]->pid, &st, 0);
            v[i]->status = st;
            v[i]->pid = 0;
        }
    }
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

static int start_redis(struct up *u)
{
    int port = free_port();
    if (port <= 0) {
        fprintf(stderr, "biomatch: no free port for redis-server\n");
        return -1;
    }
    char portstr[16], dirpath[PATH_MAX + 8];
    snprintf(portstr, sizeof portstr, "%d", port);
    snprintf(dirpath, sizeof dirpath, "%s", u->dir);
    const char *cands[] = { "/usr/bin/redis-server", "/usr/local/bin/redis-server" };
    const char *exe = NULL;
    for (size_t i = 0; i < 2 && exe == NULL; i++)
        if (access(cands[i], X_OK) == 0)
            exe = cands[i];
    if (exe == NULL) {
        fprintf(stderr, "biomatch: redis-server not found (install redis-server, or --redis URL)\n");
        return -1;
    }
    char *argv[] = { (char *)exe, (char *)"--port", portstr, (char *)"--bind",
                     (char *)"127.0.0.1", (char *)"--save", (char *)"", (char *)"--appendonly",
                     (char *)"no", (char *)"--dir", dirpath, (char *)"--protected-mode",
                     (char *)"no", NULL };
    u->redis.name = "redis-server";
    snprintf(u->redis.log, sizeof u->redis.log, "%s/redis.log", u->dir);
    char **env = child_env(NULL, 0);
    if (env == NULL)
        return -1;
    int rc = spawn(&u->redis, argv, env);
    free(env);
    if (rc != 0)
        return -1;
    snprintf(u->redis_url, sizeof u->redis_url, "redis://127.0.0.1:%d", port);
    int64_t deadline = bm_mono_ms() + REDIS_START_MS;
    char err[256];
    while (bm_mono_ms() < deadline && !g_stop) {
        struct bm_redis_opts o = { 0 };
        o.connect_timeout_ms = 500;
        o.io_timeout_ms = 1000;
        struct bm_redis *r = bm_redis_connect(u->redis_url, &o, err, sizeof err);
        int ok = r != NULL && bm_redis_ping(r) == BM_OK;
        bm_redis_close(r);
        if (ok)
            return 0;
        if (!alive(&u->redis)) {
            describe_exit(&u->redis);
            show_log_tail(u->redis.log, 20);
            return -1;
        }
        sleep_ms(50);
    }
    fprintf(stderr, "biomatch: redis-server did not answer within %d s\n", REDIS_START_MS / 1000);
    return -1;
}

/* Define the face and iris galleries (idempotent on an identical
 * definition; a different existing one is an error). */
static int define_galleries(struct up *u)
{
    char err[512];
    struct bm_redis_opts o = { 0 };
    o.connect_timeout_ms = 2000;
    o.io_timeout_ms = 5000;
    struct bm_redis *r = bm_redis_connect(u->redis_url, &o, err, sizeof err);
    if (r == NULL) {
        fprintf(stderr, "biomatch: redis %s: %s\n", u->redis_url, err);
        return -1;
    }
    int ret = 0;
    for (int g = 0; g < 2 && ret == 0; g++) {
        struct bm_spec spec;
        Biomatch__V1__Modality mod;
        uint32_t shards;
        const char *name;
        if (g == 0) {
            bm_spec_default(&spec, BM_MODALITY_DENSE);
            spec.dim = CLI_UP_FACE_DIM;
            spec.dtype = BM_DTYPE_INT8;
            mod = BIOMATCH__V1__MODALITY__MODALITY_FACE;
            shards = u->face_shards;
            name = CLI_UP_FACE;
        } else {
            bm_spec_default(&spec, BM_MODALITY_IRIS);
            mod = BIOMATCH__V1__MODALITY__MODALITY_IRIS;
            shards = u->iris_shards;
            name = CLI_UP_IRIS;
        }
        Biomatch__V1__GalleryDefinition *def =
            bm_galdef_from_spec(name, mod, &spec, shards, 1, err, sizeof err);
        if (def == NULL) {
            fprintf(stderr, "biomatch: gallery %s: %s\n", name, err);
            ret = -1;
            break;
        }
        def->created_unix_ms = bm_wall_ms();
        if (bm_galdef_put(r, def, NULL, err, sizeof err) != BM_OK) {
            fprintf(stderr, "biomatch: gallery %s: %s\n", name, err);
            ret = -1;
        }
        bm_galdef_free(def);
    }
    bm_redis_close(r);
    return ret;
}

/* Every topic: the shared ones and gallery.<g> / tasks.<g> of both
 * galleries. On the mock through its own call (it has no admin API); on a
 * real broker through the admin API, creating only what is missing. */
static int create_topics(struct up *u)
{
    static const enum bm_topic shared[] = { BM_TOPIC_ENROLL, BM_TOPIC_JOBS, BM_TOPIC_PARTIALS,
                                            BM_TOPIC_RESULTS, BM_TOPIC_AUDIT, BM_TOPIC_DLQ };
    char names[11][BM_TOPIC_MAX];
    int parts[11], compact[11];
    int n = 0;
    for (size_t i = 0; i < sizeof shared / sizeof shared[0]; i++, n++) {
        if (bm_topic_name(names[n], BM_TOPIC_MAX, u->prefix, shared[i]) != 0)
            return -1;
        parts[n] = SHARED_PARTITIONS;
        compact[n] = 0;
    }
    /* The gallery definitions' topic, so the coordinator's first read of
     * it succeeds (docs/storage.md §7.8). */
    if (bm_topic_name(names[n], BM_TOPIC_MAX, u->prefix, BM_TOPIC_GALLERIES) != 0)
        return -1;
    parts[n] = 1;
    compact[n++] = 1;
    const char *gal[2] = { CLI_UP_FACE, CLI_UP_IRIS };
    uint32_t sh[2] = { u->face_shards, u->iris_shards };
    for (int g = 0; g < 2; g++) {
        if (bm_topic_gallery(names[n], BM_TOPIC_MAX, u->prefix, gal[g]) != 0)
            return -1;
        parts[n] = (int)sh[g];
        compact[n++] = 1;
        if (bm_topic_tasks(names[n], BM_TOPIC_MAX, u->prefix, gal[g]) != 0)
            return -1;
        parts[n] = (int)sh[g];
        compact[n++] = 0;
    }
    char err[512];
    if (u->mock != NULL) {
        for (int i = 0; i < n; i++)
            if (bm_mock_cluster_create_topic(u->mock, names[i], parts[i], err, sizeof err) !=
                BM_OK) {
                fprintf(stderr, "biomatch: topic %s: %s\n", names[i], err);
                return -1;
            }
        return 0;
    }
    struct bm_bus_conf bc = { 0 };
    bc.bootstrap_servers = u->brokers;
    bc.client_id = "biomatch-up";
    struct bm_admin *a = bm_admin_new(&bc, err, sizeof err);
    if (a == NULL) {
        fprintf(stderr, "biomatch: kafka admin: %s\n", err);
        return -1;
    }
    int ret = 0;
    const struct bm_bus_prop cp[] = { { "cleanup.policy", "compact" } };
    for (int i = 0; i < n && ret == 0; i++) {
        int have = 0;
        int rc = bm_admin_topic_partitions(a, names[i], ADMIN_MS, &have, err, sizeof err);
        /* An operator's shared topics are kept as they are; a gallery's
         * partition count is part of its contract. */
        if (rc == BM_OK && (i < 6 || have == parts[i]))
            continue;
        if (rc == BM_OK) {
            fprintf(stderr, "biomatch: topic %s has %d partitions, the gallery needs %d\n",
                    names[i], have, parts[i]);
            ret = -1;
            break;
        }
        if (rc != BM_ENOTFOUND) {
            fprintf(stderr, "biomatch: topic %s: %s\n", names[i], err);
            ret = -1;
            break;
        }
        struct bm_bus_topic_spec t = { .name = names[i], .partitions = parts[i],
                                       .replication = -1, .configs = compact[i] ? cp : NULL,
                                       .nconfigs = compact[i] ? 1 : 0 };
        if (bm_admin_create_topics(a, &t, 1, ADMIN_MS, err, sizeof err) != BM_OK) {
            fprintf(stderr, "biomatch: create topic %s: %s\n", names[i], err);
            ret = -1;
        }
    }
    bm_admin_free(a);
    return ret;
}

/* Make a signing key for 'agency' (private key to <dir>/<agency>.pem, mode
 * 0600) and append its policy entry to 'f': every operation on every
 * gallery. On success *signer (when not NULL) signs for it. */
static int policy_agency(struct up *u, FILE *f, const char *agency, struct bm_signer **signer)
{
    char *pem = NULL, pub[BM_POLICY_PUB_B64_LEN], err[256], path[PATH_MAX], kid[64];
    if (bm_signer_keygen(&pem, pub, sizeof pub, err, sizeof err) != BM_OK) {
        fprintf(stderr, "biomatch: key for %s: %s\n", agency, err);
        return -1;
    }
    snprintf(kid, sizeof kid, "%s-1", agency);
    snprintf(path, sizeof path, "%s/%s.pem", u->dir, agency);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
    size_t n = strlen(pem);
    int ok = fd >= 0 && write(fd, pem, n) == (ssize_t)n;
    if (fd >= 0 && close(fd) != 0)
        ok = 0;
    if (ok && signer != NULL && (*signer = bm_signer_from_pem(pem, n, kid, err, sizeof err)) == NULL)
        ok = 0;
    free(pem);
    if (!ok) {
        fprintf(stderr, "biomatch: %s: cannot write the signing key\n", path);
        return -1;
    }
    fprintf(f,
            "  %s:\n"
            "    keys:\n"
            "      %s: \"%s\"\n"
            "    galleries:\n"
            "      \"*\": [identify, verify, enroll, delete]\n"
            "    results:\n"
            "      internal_fields: true   # the demo's warm-up reads comparisons\n",
            agency, kid, pub);
    return 0;
}

/* The cluster runs with a policy like any other (docs/security.md): one
 * generated here for the demo's agency and for the command line's. */
static int write_policy(struct up *u)
{
    snprintf(u->policy, sizeof u->policy, "%s/policy.yaml", u->dir);
    FILE *f = fopen(u->policy, "w");
    if (f == NULL) {
        fprintf(stderr, "biomatch: %s: %s\n", u->policy, strerror(errno));
        return -1;
    }
    fprintf(f, "# Generated by `biomatch up`, beside the biomatch.yaml that uses it.\nagencies:\n");
    int rc = policy_agency(u, f, CLI_UP_DEMO_AGENCY, &u->demo_signer);
    if (rc == 0)
        rc = policy_agency(u, f, CLI_UP_CLI_AGENCY, NULL);
    if (fclose(f) != 0 || rc != 0) {
        fprintf(stderr, "biomatch: %s: write failed\n", u->policy);
        return -1;
    }
    return 0;
}

static int write_config(struct up *u, const char *log_level, int keep)
{
    snprintf(u->config, sizeof u->config, "%s/biomatch.yaml", u->dir);
    FILE *f = fopen(u->config, "w");
    if (f == NULL) {
        fprintf(stderr, "biomatch: %s: %s\n", u->config, strerror(errno));
        return -1;
    }
    fprintf(f,
            "# Generated by `biomatch up`; %s.\n"
            "topic_prefix: \"%s\"\n"
            "brokers: \"%s\"\n"
            "redis:\n"
            "  url: \"%s\"\n"
            "http:\n"
            "  bind: 127.0.0.1\n"
            "log:\n"
            "  level: %s\n"
            "worker:\n"
            "  galleries: [%s, %s]\n"
            "coordinator:\n"
            "  default_deadline_ms: 30000\n"
            "security:\n"
            "  policy_file: \"%s\"\n",
            keep ? "kept with its directory when it stops (--keep-dir)"
                 : "removed with its directory when it stops (kept if it fails)",
            u->prefix, u->brokers, u->redis_url, log_level, CLI_UP_FACE, CLI_UP_IRIS, u->policy);
    /* Two concessions to librdkafka 2.0.2's mock cluster: it answers an
     * empty fetch only when fetch.wait.max.ms (default 500) runs out, which
     * would add that much per hop; and when the workers join their groups
     * together it was seen to leave a task partition unassigned until a
     * member's session timed out (45 s by default, sometimes twice), so
     * sessions are short here. Real brokers keep the defaults. */
    if (u->mock != NULL)
        fprintf(f,
                "kafka:\n"
                "  fetch.wait.max.ms: \"%d\"\n"
                "  session.timeout.ms: \"6000\"\n"
                "  heartbeat.interval.ms: \"500\"\n"
                "  fetch.max.bytes: \"4194304\"\n",
                CLI_UP_MOCK_FETCH_WAIT_MS);
    if (fclose(f) != 0) {
        fprintf(stderr, "biomatch: %s: write failed\n", u->config);
        return -1;
    }
    return 0;
}

static int start_program(struct up *u, struct child *ch, const char *prog, const char *node)
{
    char exe[PATH_MAX + 64], nodeenv[128], portenv[64];
    snprintf(exe, sizeof exe, "%s/%s", u->bindir, prog);
    if (access(exe, X_OK) != 0) {
        fprintf(stderr, "biomatch: %s not found next to biomatch (build it first)\n", exe);
        return -1;
    }
    ch->port = free_port();
    snprintf(ch->log, sizeof ch->log, "%s/%s.log", u->dir, node);
    snprintf(nodeenv, sizeof nodeenv, "BIOMATCH_NODE_ID=%s", node);
    snprintf(portenv, sizeof portenv, "BIOMATCH_HTTP_PORT=%d", ch->port > 0 ? ch->port : 0);
    const char *extra[] = { nodeenv, portenv };
    char **env = child_env(extra, 2);
    if (env == NULL)
        return -1;
    char *argv[] = { exe, (char *)"--config", u->config, NULL };
    int rc = spawn(ch, argv, env);
    free(env);
    return rc;
}

/* Wait until every child answers /readyz with 200 (bounded). */
static int wait_ready(struct up *u)
{
    int64_t deadline = bm_mono_ms() + READY_MS;
    while (!g_stop && bm_mono_ms() < deadline) {
        if (!children_ok(u))
            return -1;
        int ready = cli_http_status(u->coord.port, "/readyz", 1000) == 200;
        for (int i = 0; ready && i < u->nworkers; i++)
            ready = cli_http_status(u->workers[i].port, "/readyz", 1000) == 200;
        if (ready)
            return 0;
        sleep_ms(200);
    }
    if (!g_stop)
        fprintf(stderr, "biomatch up: not every process was ready within %d s\n", READY_MS / 1000);
    return -1;
}

static int bin_dir(char *out, size_t len)
{
    const char *env = getenv("BIOMATCH_BIN_DIR");
    if (env != NULL && env[0] != '\0') {
        snprintf(out, len, "%s", env);
        return 0;
    }
    return bm_spawn_self_dir(out, len);
}

int cli_up(int argc, char **argv)
{
    const char *embedded = NULL, *kafka = NULL, *redis = NULL, *workers_s = "2", *demo = NULL;
    const char *faces_s = "100000", *irises_s = "10000", *fprobes_s = "200", *iprobes_s = "50";
    const char *fshards_s = NULL, *ishards_s = NULL, *rate_s = "100", *seed_s = "1";
    const char *mated_s = "0.5", *prefix = "biomatch.", *keep = NULL, *json = NULL;
    const char *log_level = "warn";
    const char *pos[1];
    size_t npos = 0;
    const struct bm_opt opts[] = {
        { "--embedded", NULL, &embedded, "Kafka = librdkafka's mock cluster in this process (default)" },
        { "--kafka", "HOST:PORT", &kafka, "use a real Kafka broker instead" },
        { "--redis", "URL", &redis, "use this Redis instead of a redis-server child" },
        { "--workers", "N", &workers_s, "worker processes, 1..16 (default 2)" },
        { "--prefix", "PREFIX", &prefix, "topic prefix (default \"biomatch.\")" },
        { "--log-level", "LEVEL", &log_level, "children's log level (default warn)" },
        { "--keep-dir", NULL, &keep, "keep the temporary directory (config, logs)" },
        { "--demo", NULL, &demo, "run the synthetic workload, print the results, stop" },
        { "--faces", "N", &faces_s, "demo: face gallery subjects (default 100000)" },
        { "--irises", "N", &irises_s, "demo: iris gallery subjects (default 10000)" },
        { "--face-probes", "N", &fprobes_s, "demo: face jobs (default 200)" },
        { "--iris-probes", "N", &iprobes_s, "demo: iris jobs (default 50)" },
        { "--face-shards", "S", &fshards_s, "face gallery shards (default 4)" },
        { "--iris-shards", "S", &ishards_s, "iris gallery shards (default 2)" },
        { "--mated", "F", &mated_s, "demo: fraction of mated probes (default 0.5)" },
        { "--rate", "JOBS/S", &rate_s, "demo: open-loop submission rate, 0 = at once (default 100)" },
        { "--seed", "S", &seed_s, "demo: random seed (default 1)" },
        { "--json", NULL, &json, "demo: also print the summary as one JSON line" },
    };
    int p = cli_parse(argc, argv, 1, opts, sizeof opts / sizeof opts[0], pos, 0, &npos,
                      "biomatch up [--embedded | --kafka HOST:PORT] [--redis URL] [--workers N] "
                      "[--demo]",
                      "Run a whole cluster on this machine: embedded Kafka (or --kafka), a\n"
                      "redis-server child (or --redis), one biomatch-coordinator and N\n"
                      "biomatch-worker processes, with the galleries 'face' (512-d int8) and\n"
                      "'iris' (open-iris codes) defined. Runs until Ctrl-C, or with --demo\n"
                      "enrolls synthetic galleries, submits mated and non-mated probes, prints\n"
                      "throughput, latency and accuracy, and stops.");
    if (p != 0)
        return p > 0 ? 0 : 2;
    if (embedded && kafka) {
        fprintf(stderr, "biomatch: --embedded and --kafka exclude each other\n");
        return 2;
    }
    uint32_t nworkers, fsh = FACE_DEFAULT_SHARDS, ish = IRIS_DEFAULT_SHARDS;
    struct cli_demo_opts d = { 0 };
    if (cli_u32("--workers", workers_s, 1, MAX_WORKERS, &nworkers) ||
        (fshards_s && cli_u32("--face-shards", fshards_s, 1, 64, &fsh)) ||
        (ishards_s && cli_u32("--iris-shards", ishards_s, 1, 64, &ish)) ||
        cli_u32("--faces", faces_s, 1, 10000000, &d.faces) ||
        cli_u32("--irises", irises_s, 1, 1000000, &d.irises) ||
        cli_u32("--face-probes", fprobes_s, 0, 1000000, &d.face_probes) ||
        cli_u32("--iris-probes", iprobes_s, 0, 1000000, &d.iris_probes) ||
        cli_double("--mated", mated_s, 0, 1, &d.mated) ||
        cli_double("--rate", rate_s, 0, 1e6, &d.rate) || cli_u64("--seed", seed_s, &d.seed))
        return 2;
    if (strlen(prefix) > 200) {
        fprintf(stderr, "biomatch: --prefix is too long\n");
        return 2;
    }
    d.json = json != NULL;

    struct up u;
    memset(&u, 0, sizeof u);
    u.prefix = prefix;
    u.face_shards = fsh;
    u.iris_shards = ish;
    u.nworkers = (int)nworkers;
    u.coord.name = "biomatch-coordinator";
    for (int i = 0; i < u.nworkers; i++)
        u.workers[i].name = "biomatch-worker";
    int ret = 1;
    if (bin_dir(u.bindir, sizeof u.bindir) != 0) {
        fprintf(stderr, "biomatch: cannot locate this binary's directory\n");
        return 1;
    }
    const char *tmp = getenv("TMPDIR");
    snprintf(u.dir, sizeof u.dir, "%s/biomatch-up-XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
    if (mkdtemp(u.dir) == NULL) {
        fprintf(stderr, "biomatch: mkdtemp %s: %s\n", u.dir, strerror(errno));
        return 1;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    int64_t t0 = bm_mono_ms();
    char err[512];

    if (kafka != NULL) {
        snprintf(u.brokers, sizeof u.brokers, "%s", kafka);
    } else {
        u.mock = bm_mock_cluster_new(1, err, sizeof err);
        if (u.mock == NULL) {
            fprintf(stderr, "biomatch: embedded kafka: %s\n", err);
            goto out;
        }
        snprintf(u.brokers, sizeof u.brokers, "%s", bm_mock_cluster_bootstraps(u.mock));
    }
    if (redis != NULL)
        snprintf(u.redis_url, sizeof u.redis_url, "%s", redis);
    else if (start_redis(&u) != 0)
        goto out;
    if (define_galleries(&u) != 0 || create_topics(&u) != 0 || write_policy(&u) != 0 ||
        write_config(&u, log_level, keep != NULL) != 0)
        goto out;
    if (start_program(&u, &u.coord, "biomatch-coordinator", "up-coordinator") != 0)
        goto out;
    for (int i = 0; i < u.nworkers; i++) {
        char node[32];
        snprintf(node, sizeof node, "up-worker-%d", i + 1);
        if (start_program(&u, &u.workers[i], "biomatch-worker", node) != 0)
            goto out;
    }
    if (wait_ready(&u) != 0)
        goto out;
    fprintf(stderr, "biomatch up: cluster ready in %.1f s (kafka %s%s, redis %s, %d worker(s))\n",
            (double)(bm_mono_ms() - t0) / 1e3, u.brokers, u.mock ? " embedded" : "",
            u.redis_url, u.nworkers);
    int wports[MAX_WORKERS];
    for (int i = 0; i < u.nworkers; i++)
        wports[i] = u.workers[i].port;
    if (demo) {
        struct cli_up_env env = { .brokers = u.brokers, .redis_url = u.redis_url,
                                  .prefix = u.prefix, .face_shards = u.face_shards,
                                  .iris_shards = u.iris_shards, .worker_ports = wports,
                                  .nworkers = u.nworkers, .stop = &g_stop,
                                  .children_ok = children_ok, .opaque = &u,
                                  .signer = u.demo_signer };
        ret = cli_demo_run(&env, &d);
    } else {
        printf("biomatch cluster is up (Ctrl-C to stop)\n"
               "  kafka       %s%s\n"
               "  redis       %s\n"
               "  coordinator pid %d, http://127.0.0.1:%d/metrics\n",
               u.brokers, u.mock ? " (embedded mock cluster)" : "", u.redis_url,
               (int)u.coord.pid, u.coord.port);
        for (int i = 0; i < u.nworkers; i++)
            printf("  worker %d    pid %d, http://127.0.0.1:%d/metrics\n", i + 1,
                   (int)u.workers[i].pid, u.workers[i].port);
        printf("  config      %s (logs in %s)\n"
               "  galleries   %s (%u-d int8, %u shards), %s (open-iris codes, %u shards)\n\n"
               "Try (in another shell):\n"
               "  export BIOMATCH_KAFKA_BROKERS=%s BIOMATCH_REDIS_URL=%s BIOMATCH_TOPIC_PREFIX=%s\n"
               "  %s/biomatch gen --modality face --count 1000 --out %s/try-face\n"
               "  %s/biomatch enroll --gallery %s --ids %s/try-face/gallery.ids "
               "--npy %s/try-face/gallery.npy --sign-key %s/%s.pem --key-id %s-1\n"
               "  %s/biomatch submit --gallery %s --npy %s/try-face/probes.npy --row 0 --wait "
               "--sign-key %s/%s.pem --key-id %s-1\n"
               "  %s/biomatch tail results --from-beginning --count 1\n",
               u.config, u.dir, CLI_UP_FACE, CLI_UP_FACE_DIM, u.face_shards, CLI_UP_IRIS,
               u.iris_shards, u.brokers, u.redis_url, u.prefix, u.bindir, u.dir, u.bindir,
               CLI_UP_FACE, u.dir, u.dir, u.dir, CLI_UP_CLI_AGENCY, CLI_UP_CLI_AGENCY, u.bindir,
               CLI_UP_FACE, u.dir, u.dir, CLI_UP_CLI_AGENCY, CLI_UP_CLI_AGENCY, u.bindir);
        fflush(stdout);
        while (!g_stop && children_ok(&u))
            sleep_ms(200);
        ret = u.failed ? 1 : 0;
        if (!u.failed)
            fprintf(stderr, "biomatch up: stopping\n");
    }
out:;
    /* Workers first (they drain into partials), then the coordinator
     * (which emits what it can), then Redis. */
    struct child *w[MAX_WORKERS];
    for (int i = 0; i < u.nworkers; i++)
        w[i] = &u.workers[i];
    stop_children(w, u.nworkers);
    struct child *cp = &u.coord;
    stop_children(&cp, 1);
    struct child *rp = &u.redis;
    stop_children(&rp, 1);
    bm_mock_cluster_free(u.mock);
    bm_signer_destroy(u.demo_signer);
    if (u.failed)
        ret = 1;
    if (keep || ret != 0) {
        fprintf(stderr, "biomatch up: logs kept in %s\n", u.dir);
    } else {
        nftw(u.dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    }
    fprintf(stderr, "biomatch up: stopped after %.1f s\n", (double)(bm_mono_ms() - t0) / 1e3);
    return ret;
}
