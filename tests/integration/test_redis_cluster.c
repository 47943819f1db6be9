/* The Redis Cluster routing of lib/store against real redis-server nodes
 * (the cluster.test_redis_cluster CTest on the scripts/services
 * --redis-cluster 3 fixture):
 *
 * - keys over the whole key space, written and read back in pipelines, land
 *   on every master;
 * - a slot migrated for real (CLUSTER SETSLOT IMPORTING/MIGRATING, MIGRATE,
 *   SETSLOT NODE, as redis-cli does a reshard) while it is read and written:
 *   ASK for the keys already moved, MOVED once it is done, never a wrong or
 *   missing value; then moved back;
 * - the same cluster through its TLS ports (rediss+cluster://, client
 *   certificates): the slot map names the TLS ports and every node is
 *   reached over TLS.
 *
 * On the single-server fixture (integration.test_redis_cluster) the same
 * binary checks what holds there: the keys and pipelines, and that
 * bm_redis_each_master visits exactly that one server. */
#include "testutil.h"
#include "redis_cluster_util.h"

#include "common/err.h"
#include "store/redis.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NKEYS 600
#define NMIG 20

static char uniq[64];

static struct bm_redis *connect_url(const char *url, int tls)
{
    char err[256];
    struct bm_redis_opts o = { 0 };
    if (tls) {
        o.tls_ca_file = bm_test_env("BIOMATCH_REDIS_TLS_CA_FILE");
        o.tls_cert_file = bm_test_env("BIOMATCH_REDIS_TLS_CERT_FILE");
        o.tls_key_file = bm_test_env("BIOMATCH_REDIS_TLS_KEY_FILE");
    }
    struct bm_redis *c = bm_redis_connect(url, &o, err, sizeof err);
    if (c == NULL)
        fail_msg("%s: %s", url, err);
    return c;
}

static void key_name(char *buf, size_t len, int i)
{
    snprintf(buf, len, "rc:%s:%d", uniq, i);
}

/* Pipelined SETs of every key, then pipelined GETs checked in order. */
static void write_read_all(struct bm_redis *c)
{
    char k[96], v[96];
    for (int i = 0; i < NKEYS; i++) {
        key_name(k, sizeof k, i);
        const char *argv[3] = { "SET", k, k };
        size_t lens[3] = { 3, strlen(k), strlen(k) };
        assert_int_equal(bm_redis_append(c, 3, argv, lens), BM_OK);
    }
    for (int i = 0; i < NKEYS; i++)
        if (bm_redis_get_reply(c, NULL) != BM_OK)
            fail_msg("SET %d: %s", i, bm_redis_errstr(c));
    for (int i = 0; i < NKEYS; i++) {
        key_name(k, sizeof k, i);
        const char *argv[2] = { "GET", k };
        size_t lens[2] = { 3, strlen(k) };
        assert_int_equal(bm_redis_append(c, 2, argv, lens), BM_OK);
    }
    for (int i = 0; i < NKEYS; i++) {
        struct bm_redis_reply *r = NULL;
        if (bm_redis_get_reply(c, &r) != BM_OK)
            fail_msg("GET %d: %s", i, bm_redis_errstr(c));
        key_name(v, sizeof v, i);
        assert_int_equal(r->type, BM_REDIS_STRING);
        assert_string_equal(r->str, v);
        bm_redis_reply_free(r);
    }
}

/* bm_redis_each_master: count the masters holding at least one test key. */
struct census {
    int masters, holding;
};

static int count_keys(struct bm_redis *node, void *arg)
{
    struct census *cs = arg;
    char pattern[96];
    snprintf(pattern, sizeof pattern, "rc:%s:*", uniq);
    struct bm_redis_reply *r = NULL;
    int rc = bm_redis_cmd(node, &r, "SCAN", "0", "MATCH", pattern, "COUNT", "100000",
                          (const char *)NULL);
    if (rc == BM_OK) {
        cs->masters++;
        cs->holding += r->element[1]->elements > 0;
    }
    bm_redis_reply_free(r);
    return rc;
}

static void test_keys_everywhere(void **state)
{
    (void)state;
    struct bm_redis *c = connect_url(bm_test_env("BIOMATCH_REDIS_URL"), 0);
    write_read_all(c);
    struct census cs = { 0, 0 };
    assert_int_equal(bm_redis_each_master(c, count_keys, &cs), BM_OK);
    printf("# %d keys on %d of %d masters\n", NKEYS, cs.holding, cs.masters);
    if (bm_redis_is_cluster(c)) {
        assert_true(cs.masters >= 3);
        assert_int_equal(cs.holding, cs.masters);
    } else {
        assert_int_equal(cs.masters, 1);
        assert_int_equal(cs.holding, 1);
    }
    bm_redis_close(c);
}

/* ---- a real slot migration ---- */

static void node_id(const struct rc_node *n, char id[64])
{
    struct bm_redis *c = rc_connect(n);
    struct bm_redis_reply *r = NULL;
    assert_int_equal(bm_redis_cmd(c, &r, "CLUSTER", "MYID", (const char *)NULL), BM_OK);
    snprintf(id, 64, "%s", r->str);
    bm_redis_reply_free(r);
    bm_redis_close(c);
}

/* Another master than 'm'. */
static struct rc_node other_master(struct bm_redis *c, const struct rc_node *m)
{
    for (unsigned s = 0; s < 16384; s += 1000) {
        struct rc_node o, rep;
        rc_slot_nodes(c, s, &o, &rep);
        if (o.port != m->port)
            return o;
    }
    fail_msg("only one master");
    return *m;
}

static void value_is(struct bm_redis *c, const char *k, const char *want)
{
    void *v = NULL;
    size_t n = 0;
    int rc = bm_redis_get(c, k, strlen(k), &v, &n);
    if (rc != BM_OK)
        fail_msg("GET %s: %d %s", k, rc, bm_redis_errstr(c));
    assert_int_equal(n, strlen(want));
    assert_memory_equal(v, want, n);
    free(v);
}

/* MIGRATE the given keys (all of the slot's when keys is NULL, looping as
 * redis-cli's reshard does, since other tests may write there meanwhile). */
static void migrate(struct bm_redis *src, const struct rc_node *dst, unsigned slot,
                    char keys[][96], int nkeys)
{
    char port[16], slotbuf[16];
    /* MIGRATE connects like the cluster bus: over TLS when it does. */
    snprintf(port, sizeof port, "%d", dst->tls_port > 0 ? dst->tls_port : dst->port);
    snprintf(slotbuf, sizeof slotbuf, "%u", slot);
    for (int round = 0; round < 1000; round++) {
        struct bm_redis_reply *r = NULL;
        const char *argv[8 + 100] = { "MIGRATE", dst->host, port, "", "0", "5000", "KEYS" };
        size_t lens[8 + 100];
        int argc = 7;
        if (keys != NULL) {
            for (int i = 0; i < nkeys; i++)
                argv[argc++] = keys[i];
        } else {
            assert_int_equal(bm_redis_cmd(src, &r, "CLUSTER", "GETKEYSINSLOT", slotbuf, "100",
                                          (const char *)NULL),
                             BM_OK);
            for (size_t i = 0; i < r->elements; i++)
                argv[argc++] = r->element[i]->str;
        }
        for (int i = 0; i < argc; i++)
            lens[i] = strlen(argv[i]);
        if (argc > 7) {
            struct bm_redis_reply *m = NULL;
            if (bm_redis_command(src, argc, argv, lens, &m) != BM_OK)
                fail_msg("MIGRATE: %s", bm_redis_errstr(src));
            bm_redis_reply_free(m);
        }
        bm_redis_reply_free(r);
        if (keys != NULL || argc == 7)
            return;
    }
    fail_msg("slot %u never emptied", slot);
}

/* CLUSTER SETSLOT slot <how> id on node n. */
static void setslot(const struct rc_node *n, unsigned slot, const char *how, const char *id)
{
    char s[16];
    snprintf(s, sizeof s, "%u", slot);
    struct bm_redis *c = rc_connect(n);
    if (bm_redis_cmd(c, NULL, "CLUSTER", "SETSLOT", s, how, id, (const char *)NULL) != BM_OK)
        fail_msg("SETSLOT %s %s on %s:%d: %s", s, how, n->host, n->port, bm_redis_errstr(c));
    bm_redis_close(c);
}

/* Move 'slot' from master a to master b the way a reshard does. 'moved'
 * runs between the first MIGRATE (of 'early' keys) and the end. */
static void reshard(struct bm_redis *c, unsigned slot, const struct rc_node *a,
                    const struct rc_node *b, char early[][96], int nearly,
                    void (*moved)(struct bm_redis *c))
{
    char ida[64], idb[64];
    node_id(a, ida);
    node_id(b, idb);
    setslot(b, slot, "IMPORTING", ida);
    setslot(a, slot, "MIGRATING", idb);
    struct bm_redis *src = rc_connect(a);
    migrate(src, b, slot, early, nearly);
    if (moved != NULL)
        moved(c);
    migrate(src, b, slot, NULL, 0);
    bm_redis_close(src);
    setslot(b, slot, "NODE", idb);
    setslot(a, slot, "NODE", idb);
    /* The other masters learn it through the cluster bus; tell them too so
     * the test does not wait for gossip. */
    for (unsigned s = 0; s < 16384; s += 1000) {
        struct rc_node o, rep;
        rc_slot_nodes(c, s, &o, &rep);
        if (o.port != a->port && o.port != b->port)
            setslot(&o, slot, "NODE", idb);
    }
}

static char mkeys[NMIG][96];

/* Halfway through the migration: half the keys are on the target (ASK),
 * half on the source; a new key goes to the target (ASK). Checked one by
 * one and in a pipeline. */
static void while_migrating(struct bm_redis *c)
{
    for (int i = 0; i < NMIG; i++)
        value_is(c, mkeys[i], mkeys[i]);
    for (int i = 0; i < NMIG; i++) {
        const char *argv[2] = { "GET", mkeys[i] };
        size_t lens[2] = { 3, strlen(mkeys[i]) };
        assert_int_equal(bm_redis_append(c, 2, argv, lens), BM_OK);
    }
    for (int i = 0; i < NMIG; i++) {
        struct bm_redis_reply *r = NULL;
        if (bm_redis_get_reply(c, &r) != BM_OK)
            fail_msg("pipelined GET %d: %s", i, bm_redis_errstr(c));
        assert_string_equal(r->str, mkeys[i]);
        bm_redis_reply_free(r);
    }
    char k[96];
    snprintf(k, sizeof k, "{rcmig:%s}:new", uniq);
    assert_int_equal(bm_redis_set(c, k, strlen(k), "fresh", 5, 0), BM_OK);
    value_is(c, k, "fresh");
}

static void test_live_reshard(void **state)
{
    (void)state;
    struct bm_redis *c = connect_url(bm_test_env("BIOMATCH_REDIS_URL"), 0);
    if (!bm_redis_is_cluster(c)) {
        printf("# not a Redis Cluster: no slots to migrate\n");
        bm_redis_close(c);
        return;
    }
    for (int i = 0; i < NMIG; i++) {
        snprintf(mkeys[i], sizeof mkeys[i], "{rcmig:%s}:%d", uniq, i);
        assert_int_equal(bm_redis_set(c, mkeys[i], strlen(mkeys[i]), mkeys[i], strlen(mkeys[i]), 0),
                         BM_OK);
    }
    unsigned slot = bm_redis_key_slot(mkeys[0], strlen(mkeys[0]));
    struct rc_node a, rep;
    rc_slot_nodes(c, slot, &a, &rep);
    struct rc_node b = other_master(c, &a);
    reshard(c, slot, &a, &b, mkeys, NMIG / 2, while_migrating);
    /* Done: the old owner answers MOVED; every value is where it belongs. */
    for (int i = 0; i < NMIG; i++)
        value_is(c, mkeys[i], mkeys[i]);
    printf("# slot %u moved %s:%d -> %s:%d under reads and writes\n", slot, a.host, a.port,
           b.host, b.port);
    /* And back, so the fixture's layout is as it was. */
    reshard(c, slot, &b, &a, NULL, 0, NULL);
    for (int i = 0; i < NMIG; i++)
        value_is(c, mkeys[i], mkeys[i]);
    bm_redis_close(c);
}

/* ---- TLS ---- */

static int ping_node(struct bm_redis *node, void *arg)
{
    (*(int *)arg)++;
    return bm_redis_ping(node);
}

static void test_tls(void **state)
{
    (void)state;
    const char *url = getenv("BIOMATCH_REDIS_TLS_URL");
    if (url == NULL || strncmp(url, "rediss+cluster://", 17) != 0) {
        printf("# no TLS Redis Cluster in this fixture (test_redis_tls covers one server)\n");
        return;
    }
    struct bm_redis *c = connect_url(url, 1);
    assert_true(bm_redis_is_cluster(c));
    write_read_all(c);
    int n = 0;
    assert_int_equal(bm_redis_each_master(c, ping_node, &n), BM_OK);
    assert_true(n >= 3);
    /* Without the client certificate every node refuses. */
    char err[256];
    struct bm_redis_opts o = { 0 };
    o.tls_ca_file = bm_test_env("BIOMATCH_REDIS_TLS_CA_FILE");
    o.reconnect_attempts = -1;
    assert_null(bm_redis_connect(url, &o, err, sizeof err));
    printf("# TLS cluster: %d masters over TLS; without a client certificate: %s\n", n, err);
    bm_redis_close(c);
}

static int setup(void **state)
{
    (void)state;
    bm_test_unique(uniq, sizeof uniq, "rc");
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_keys_everywhere),
        cmocka_unit_test(test_live_reshard),
        cmocka_unit_test(test_tls),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
