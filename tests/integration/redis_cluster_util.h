/* Redis Cluster faults for integration tests on the cluster fixture
 * (scripts/services start --redis-cluster 3): find the master and a replica
 * of a slot from CLUSTER SHARDS, hand a master's slots to its replica with
 * CLUSTER FAILOVER, SIGKILL a master (its pid from INFO server: the fixture
 * started it) and start it again from its own redis.conf. Every wait is
 * bounded. Header-only (static functions) because tests/CMakeLists.txt
 * builds one file per test. */
#ifndef BM_TEST_REDIS_CLUSTER_UTIL_H
#define BM_TEST_REDIS_CLUSTER_UTIL_H

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

#include "common/err.h"
#include "store/redis.h"

#define RC_WAIT_MS 30000

struct rc_node {
    char host[64];
    int port;
    int tls_port;               /* 0: none */
};

static const struct bm_redis_reply *rc_map_get(const struct bm_redis_reply *m, const char *key)
{
    for (size_t i = 0; m != NULL && m->type == BM_REDIS_ARRAY && i + 1 < m->elements; i += 2)
        if (m->element[i]->type == BM_REDIS_STRING && strcmp(m->element[i]->str, key) == 0)
            return m->element[i + 1];
    return NULL;
}

static int rc_node_of(const struct bm_redis_reply *n, struct rc_node *out)
{
    const struct bm_redis_reply *ip = rc_map_get(n, "ip"), *port = rc_map_get(n, "port");
    if (ip == NULL || port == NULL || port->type != BM_REDIS_INTEGER)
        return -1;
    const struct bm_redis_reply *tls = rc_map_get(n, "tls-port");
    snprintf(out->host, sizeof out->host, "%s", ip->str);
    out->port = (int)port->integer;
    out->tls_port = tls != NULL && tls->type == BM_REDIS_INTEGER ? (int)tls->integer : 0;
    return 0;
}

/* The master of 'slot' and an online replica of it (port 0 if none). */
static __attribute__((unused)) void rc_slot_nodes(struct bm_redis *r, unsigned slot,
                                                  struct rc_node *master, struct rc_node *replica)
{
    struct bm_redis_reply *rep = NULL;
    memset(master, 0, sizeof *master);
    memset(replica, 0, sizeof *replica);
    assert_int_equal(bm_redis_cmd(r, &rep, "CLUSTER", "SHARDS", (const char *)NULL), BM_OK);
    for (size_t i = 0; i < rep->elements; i++) {
        const struct bm_redis_reply *slots = rc_map_get(rep->element[i], "slots");
        const struct bm_redis_reply *nodes = rc_map_get(rep->element[i], "nodes");
        int mine = 0;
        for (size_t j = 0; slots != NULL && j + 1 < slots->elements; j += 2)
            mine |= slot >= (unsigned)slots->element[j]->integer &&
                    slot <= (unsigned)slots->element[j + 1]->integer;
        for (size_t j = 0; mine && nodes != NULL && j < nodes->elements; j++) {
            const struct bm_redis_reply *role = rc_map_get(nodes->element[j], "role");
            const struct bm_redis_reply *health = rc_map_get(nodes->element[j], "health");
            if (role != NULL && strcmp(role->str, "master") == 0)
                rc_node_of(nodes->element[j], master);
            else if (health != NULL && strcmp(health->str, "online") == 0)
                rc_node_of(nodes->element[j], replica);
        }
    }
    bm_redis_reply_free(rep);
    if (master->port == 0)
        fail_msg("no master for slot %u in CLUSTER SHARDS", slot);
}

/* A short-lived connection to one node; NULL when it is down. */
static struct bm_redis *rc_try_connect(const struct rc_node *n)
{
    char url[128];
    struct bm_redis_opts o = { 0 };
    o.reconnect_attempts = -1;
    o.connect_timeout_ms = 1000;
    snprintf(url, sizeof url, "redis://%s:%d", n->host, n->port);
    return bm_redis_connect(url, &o, NULL, 0);
}

static struct bm_redis *rc_connect(const struct rc_node *n)
{
    struct bm_redis *c = rc_try_connect(n);
    if (c == NULL)
        fail_msg("cannot connect to %s:%d", n->host, n->port);
    return c;
}

/* "ROLE" of a node: 1 master, 0 replica, -1 unreachable. */
static int rc_is_master(const struct rc_node *n)
{
    struct bm_redis *c = rc_try_connect(n);
    struct bm_redis_reply *r = NULL;
    int rc = -1;
    if (c != NULL && bm_redis_cmd(c, &r, "ROLE", (const char *)NULL) == BM_OK &&
        r->type == BM_REDIS_ARRAY && r->elements > 0)
        rc = strcmp(r->element[0]->str, "master") == 0;
    bm_redis_reply_free(r);
    bm_redis_close(c);
    return rc;
}

/* cluster_state:ok as seen by node n. */
static int rc_state_ok(const struct rc_node *n)
{
    struct bm_redis *c = rc_try_connect(n);
    struct bm_redis_reply *r = NULL;
    int ok = c != NULL && bm_redis_cmd(c, &r, "CLUSTER", "INFO", (const char *)NULL) == BM_OK &&
             strstr(r->str, "cluster_state:ok") != NULL;
    bm_redis_reply_free(r);
    bm_redis_close(c);
    return ok;
}

/* Hand the slot's master role to its replica (CLUSTER FAILOVER, the
 * operator's planned switch-over) and wait until the replica is master.
 * Returns the new master. */
static __attribute__((unused)) struct rc_node rc_failover(struct bm_redis *r, unsigned slot)
{
    struct rc_node m, rep;
    rc_slot_nodes(r, slot, &m, &rep);
    if (rep.port == 0)
        fail_msg("slot %u: master %s:%d has no online replica", slot, m.host, m.port);
    struct bm_redis *c = rc_connect(&rep);
    assert_int_equal(bm_redis_cmd(c, NULL, "CLUSTER", "FAILOVER", (const char *)NULL), BM_OK);
    bm_redis_close(c);
    int64_t end = bm_test_now_ms() + RC_WAIT_MS;
    while (rc_is_master(&rep) != 1 || !rc_state_ok(&rep)) {
        if (bm_test_now_ms() > end)
            fail_msg("CLUSTER FAILOVER: %s:%d did not become master", rep.host, rep.port);
        usleep(50 * 1000);
    }
    printf("# CLUSTER FAILOVER: slot %u moved from %s:%d to %s:%d\n", slot, m.host, m.port,
           rep.host, rep.port);
    return rep;
}

/* A node killed by rc_kill_master, to start again. */
struct rc_killed {
    struct rc_node node;
    char conf[512];             /* its redis.conf (daemonize yes) */
};

/* SIGKILL the master of 'slot' (pid and config file from its INFO server). */
static __attribute__((unused)) struct rc_killed rc_kill_master(struct bm_redis *r, unsigned slot)
{
    struct rc_node m, rep;
    struct rc_killed k;
    memset(&k, 0, sizeof k);
    rc_slot_nodes(r, slot, &m, &rep);
    struct bm_redis *c = rc_connect(&m);
    struct bm_redis_reply *info = NULL;
    assert_int_equal(bm_redis_cmd(c, &info, "INFO", "server", (const char *)NULL), BM_OK);
    const char *p = strstr(info->str, "process_id:");
    const char *f = strstr(info->str, "config_file:");
    assert_non_null(p);
    assert_non_null(f);
    long pid = strtol(p + 11, NULL, 10);
    f += 12;
    snprintf(k.conf, sizeof k.conf, "%.*s", (int)strcspn(f, "\r\n"), f);
    bm_redis_reply_free(info);
    bm_redis_close(c);
    assert_true(pid > 1 && k.conf[0] == '/');
    k.node = m;
    assert_int_equal(kill((pid_t)pid, SIGKILL), 0);
    printf("# SIGKILL redis master %s:%d (pid %ld, slot %u)\n", m.host, m.port, pid, slot);
    return k;
}

/* Wait until the slot has a reachable master again (the replica took over)
 * and the cluster says ok. */
static __attribute__((unused)) void rc_wait_slot_served(struct bm_redis *r, unsigned slot)
{
    int64_t end = bm_test_now_ms() + RC_WAIT_MS;
    for (;;) {
        struct rc_node m, rep;
        rc_slot_nodes(r, slot, &m, &rep);
        if (rc_is_master(&m) == 1 && rc_state_ok(&m))
            return;
        if (bm_test_now_ms() > end)
            fail_msg("slot %u: no reachable master after %d ms", slot, RC_WAIT_MS);
        usleep(100 * 1000);
    }
}

/* Start a killed node again from its redis.conf and wait until it is back
 * in the cluster (as a replica of whoever took its slots). */
static __attribute__((unused)) void rc_restart(const struct rc_killed *k)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        execlp("redis-server", "redis-server", k->conf, (char *)NULL);
        _exit(127);
    }
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);   /* daemonize yes: returns at once */
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    int64_t end = bm_test_now_ms() + RC_WAIT_MS;
    while (rc_is_master(&k->node) != 0 || !rc_state_ok(&k->node)) {
        if (bm_test_now_ms() > end)
            fail_msg("%s:%d did not rejoin the cluster as a replica", k->node.host, k->node.port);
        usleep(100 * 1000);
    }
    printf("# redis node %s:%d restarted; rejoined as a replica\n", k->node.host, k->node.port);
}

#endif /* BM_TEST_REDIS_CLUSTER_UTIL_H */
