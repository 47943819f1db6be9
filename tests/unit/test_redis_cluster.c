/* Unit tests of the Redis Cluster routing in lib/store without a network:
 * key slots, the slot map (CLUSTER SHARDS and the CLUSTER SLOTS fallback),
 * MOVED, ASK, TRYAGAIN/CLUSTERDOWN, a slot map that changes while a
 * pipeline is in flight, and a node that disappears (before and after its
 * replica takes over).
 *
 * The transport is a fake cluster in memory: each fake node parses the RESP
 * commands written to it and answers them the way a cluster node does for
 * the few commands used here (AUTH, PING, GET, SET, DEL, ASKING, SCRIPT
 * LOAD, EVALSHA, EVAL, CLUSTER SHARDS/SLOTS), from a slot-owner table the
 * test changes at will. Behaviour against real redis-server nodes is in the
 * cluster.* integration tests (tests/CMakeLists.txt). */
#include "testutil.h"

#include "common/err.h"
#include "store/redis.h"
#include "store/transport.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define NSLOTS 16384
#define NNODES 4
#define NKEYS 256

/* ---- the fake cluster ---- */

struct fnode {
    int port;
    bool down;              /* dials refused; open streams fail */
    int gen;                /* bumped when the node dies: older streams fail */
    char *out;              /* reply bytes not yet read */
    size_t olen, opos, ocap;
    char in[1 << 16];       /* command bytes not yet parsed */
    size_t ilen;
    bool asking;            /* ASKING seen; good for the next command */
    bool script;            /* SCRIPT LOAD seen on this node */
    int dials, commands, authed;
    int keyed;              /* keyed commands received (MOVED ones too) */
    char *keys[NKEYS], *vals[NKEYS];
};

struct fcluster {
    struct fnode node[NNODES];
    int owner[NSLOTS];      /* node index per slot */
    int ask_slot;           /* -1: none. Else keys of this slot missing on */
    int ask_from, ask_to;   /* ask_from are answered with ASK to ask_to */
    int tryagain;           /* answer this many keyed commands TRYAGAIN */
    int clusterdown;        /* ... or CLUSTERDOWN */
    bool no_shards;         /* CLUSTER SHARDS unknown (old server) */
    const char *password;   /* AUTH expected */
};

struct ftr {
    struct fcluster *fc;
    int n, gen;
};

static void out_put(struct fnode *nd, const char *p, size_t n)
{
    if (nd->olen + n > nd->ocap) {
        size_t cap = nd->ocap ? nd->ocap : 4096;
        while (cap < nd->olen + n)
            cap *= 2;
        nd->out = realloc(nd->out, cap);
        assert_non_null(nd->out);
        nd->ocap = cap;
    }
    memcpy(nd->out + nd->olen, p, n);
    nd->olen += n;
}

static void out_fmt(struct fnode *nd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void out_fmt(struct fnode *nd, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    out_put(nd, buf, (size_t)n);
}

static void out_bulk(struct fnode *nd, const char *s)
{
    out_fmt(nd, "$%zu\r\n%s\r\n", strlen(s), s);
}

static int kv_find(struct fnode *nd, const char *k)
{
    for (int i = 0; i < NKEYS; i++)
        if (nd->keys[i] != NULL && strcmp(nd->keys[i], k) == 0)
            return i;
    return -1;
}

static void kv_set(struct fnode *nd, const char *k, const char *v)
{
    int i = kv_find(nd, k);
    if (i < 0)
        for (i = 0; i < NKEYS && nd->keys[i] != NULL; i++)
            ;
    assert_true(i < NKEYS);
    free(nd->keys[i]);
    free(nd->vals[i]);
    nd->keys[i] = strdup(k);
    nd->vals[i] = strdup(v);
}

static void kv_del(struct fnode *nd, int i)
{
    free(nd->keys[i]);
    free(nd->vals[i]);
    nd->keys[i] = nd->vals[i] = NULL;
}

/* Move every key of 'slot' from node a to node b (resharding, failover). */
static void move_slot(struct fcluster *fc, int slot, int a, int b)
{
    for (int i = 0; i < NKEYS; i++) {
        struct fnode *na = &fc->node[a];
        if (na->keys[i] != NULL &&
            (int)bm_redis_key_slot(na->keys[i], strlen(na->keys[i])) == slot) {
            kv_set(&fc->node[b], na->keys[i], na->vals[i]);
            kv_del(na, i);
        }
    }
    fc->owner[slot] = b;
}

static void shards_reply(struct fcluster *fc, struct fnode *nd, bool slots_form)
{
    /* One range list per node that owns slots. */
    int ranges[NNODES][64], nr[NNODES] = { 0 }, owners = 0;
    for (int s = 0; s < NSLOTS;) {
        int o = fc->owner[s], e = s;
        while (e + 1 < NSLOTS && fc->owner[e + 1] == o)
            e++;
        assert_true(nr[o] < 62);
        ranges[o][nr[o]++] = s;
        ranges[o][nr[o]++] = e;
        s = e + 1;
    }
    for (int n = 0; n < NNODES; n++)
        owners += nr[n] > 0;
    if (slots_form) {
        int total = 0;
        for (int n = 0; n < NNODES; n++)
            total += nr[n] / 2;
        out_fmt(nd, "*%d\r\n", total);
        for (int n = 0; n < NNODES; n++)
            for (int r = 0; r < nr[n]; r += 2)
                out_fmt(nd, "*3\r\n:%d\r\n:%d\r\n*3\r\n$9\r\n127.0.0.1\r\n:%d\r\n$2\r\nn%d\r\n",
                        ranges[n][r], ranges[n][r + 1], fc->node[n].port, n);
        return;
    }
    out_fmt(nd, "*%d\r\n", owners);
    for (int n = 0; n < NNODES; n++) {
        if (nr[n] == 0)
            continue;
        out_fmt(nd, "*4\r\n$5\r\nslots\r\n*%d\r\n", nr[n]);
        for (int r = 0; r < nr[n]; r++)
            out_fmt(nd, ":%d\r\n", ranges[n][r]);
        /* A master and a failed replica that must not be used. */
        out_fmt(nd, "$5\r\nnodes\r\n*2\r\n");
        out_fmt(nd, "*10\r\n$2\r\nid\r\n$2\r\nn%d\r\n$4\r\nport\r\n:%d\r\n$2\r\nip\r\n"
                    "$9\r\n127.0.0.1\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$6\r\nhealth\r\n"
                    "$6\r\nonline\r\n", n, fc->node[n].port);
        out_fmt(nd, "*8\r\n$2\r\nid\r\n$2\r\nr%d\r\n$4\r\nport\r\n:1\r\n$4\r\nrole\r\n"
                    "$7\r\nreplica\r\n$6\r\nhealth\r\n$6\r\nfailed\r\n", n);
    }
}

/* Answer one command the way a cluster node would. */
static void node_exec(struct fcluster *fc, struct fnode *nd, int argc, char **argv)
{
    nd->commands++;
    const char *cmd = argv[0];
    bool asking = nd->asking;
    nd->asking = false;
    if (strcasecmp(cmd, "AUTH") == 0) {
        nd->authed = fc->password != NULL && strcmp(argv[argc - 1], fc->password) == 0;
        out_fmt(nd, nd->authed ? "+OK\r\n" : "-WRONGPASS invalid password\r\n");
        return;
    }
    if (fc->password != NULL && !nd->authed) {
        out_fmt(nd, "-NOAUTH Authentication required.\r\n");
        return;
    }
    if (strcasecmp(cmd, "PING") == 0) {
        out_fmt(nd, "+PONG\r\n");
        return;
    }
    if (strcasecmp(cmd, "ASKING") == 0) {
        nd->asking = true;
        out_fmt(nd, "+OK\r\n");
        return;
    }
    if (strcasecmp(cmd, "CLUSTER") == 0) {
        if (strcasecmp(argv[1], "SHARDS") == 0 && fc->no_shards)
            out_fmt(nd, "-ERR unknown subcommand 'SHARDS'. Try CLUSTER HELP.\r\n");
        else
            shards_reply(fc, nd, strcasecmp(argv[1], "SLOTS") == 0);
        return;
    }
    if (strcasecmp(cmd, "SCRIPT") == 0) {
        nd->script = true;
        out_bulk(nd, "0123456789012345678901234567890123456789");
        return;
    }
    /* Keyed: GET k, SET k v, DEL k, EVALSHA sha 1 k v, EVAL src 1 k v. */
    bool script = strcasecmp(cmd, "EVALSHA") == 0 || strcasecmp(cmd, "EVAL") == 0;
    const char *key = argv[script ? 3 : 1];
    int slot = (int)bm_redis_key_slot(key, strlen(key));
    int me = (int)(nd - fc->node);
    nd->keyed++;
    if (fc->tryagain > 0) {
        fc->tryagain--;
        out_fmt(nd, "-TRYAGAIN Multiple keys request during rehashing of slot\r\n");
        return;
    }
    if (fc->clusterdown > 0) {
        fc->clusterdown--;
        out_fmt(nd, "-CLUSTERDOWN The cluster is down\r\n");
        return;
    }
    bool importing = slot == fc->ask_slot && me == fc->ask_to && asking;
    if (fc->owner[slot] != me && !importing) {
        out_fmt(nd, "-MOVED %d 127.0.0.1:%d\r\n", slot, fc->node[fc->owner[slot]].port);
        return;
    }
    if (slot == fc->ask_slot && me == fc->ask_from && kv_find(nd, key) < 0) {
        out_fmt(nd, "-ASK %d 127.0.0.1:%d\r\n", slot, fc->node[fc->ask_to].port);
        return;
    }
    if (strcasecmp(cmd, "EVALSHA") == 0 && !nd->script) {
        out_fmt(nd, "-NOSCRIPT No matching script. Please use EVAL.\r\n");
        return;
    }
    if (script) {
        kv_set(nd, key, argv[4]);
        out_fmt(nd, ":1\r\n");
    } else if (strcasecmp(cmd, "SET") == 0) {
        kv_set(nd, key, argv[2]);
        out_fmt(nd, "+OK\r\n");
    } else if (strcasecmp(cmd, "DEL") == 0) {
        int i = kv_find(nd, key);
        if (i >= 0)
            kv_del(nd, i);
        out_fmt(nd, ":%d\r\n", i >= 0);
    } else {
        int i = kv_find(nd, key);
        if (i < 0)
            out_fmt(nd, "$-1\r\n");
        else
            out_bulk(nd, nd->vals[i]);
    }
}

/* Parse whole "*N\r\n$L\r\n...\r\n" commands from the input buffer. */
static void node_parse(struct fcluster *fc, struct fnode *nd)
{
    for (;;) {
        char *argv[16];
        int argc = 0;
        size_t p = 0;
        if (nd->ilen == 0 || nd->in[0] != '*')
            return;
        char *end;
        long n = strtol(nd->in + 1, &end, 10);
        if ((size_t)(end - nd->in) + 2 > nd->ilen)
            return;
        p = (size_t)(end - nd->in) + 2;
        bool whole = true;
        for (long i = 0; i < n && whole; i++) {
            if (p >= nd->ilen || nd->in[p] != '$') {
                whole = false;
                break;
            }
            long l = strtol(nd->in + p + 1, &end, 10);
            size_t hdr = (size_t)(end - (nd->in + p)) + 2;
            if (p + hdr + (size_t)l + 2 > nd->ilen) {
                whole = false;
                break;
            }
            assert_true(argc < 16);
            argv[argc] = malloc((size_t)l + 1);
            memcpy(argv[argc], nd->in + p + hdr, (size_t)l);
            argv[argc++][l] = '\0';
            p += hdr + (size_t)l + 2;
        }
        if (whole)
            node_exec(fc, nd, argc, argv);
        for (int i = 0; i < argc; i++)
            free(argv[i]);
        if (!whole)
            return;
        memmove(nd->in, nd->in + p, nd->ilen - p);
        nd->ilen -= p;
    }
}

static int f_read(struct bm_transport *t, void *buf, size_t cap, size_t *got, int timeout_ms,
                  char *err, size_t errlen)
{
    struct ftr *tr = t->impl;
    struct fnode *nd = &tr->fc->node[tr->n];
    *got = 0;
    if (nd->down || nd->gen != tr->gen)
        return bm_seterr(err, errlen, BM_EIO, "fake: connection reset by peer");
    if (nd->opos == nd->olen)
        return timeout_ms == 0 ? BM_ETIMEDOUT
                               : bm_seterr(err, errlen, BM_ETIMEDOUT, "fake: no reply");
    size_t n = nd->olen - nd->opos < cap ? nd->olen - nd->opos : cap;
    memcpy(buf, nd->out + nd->opos, n);
    nd->opos += n;
    if (nd->opos == nd->olen)
        nd->opos = nd->olen = 0;
    *got = n;
    return BM_OK;
}

static int f_write(struct bm_transport *t, const void *buf, size_t len, int timeout_ms,
                   char *err, size_t errlen)
{
    struct ftr *tr = t->impl;
    struct fnode *nd = &tr->fc->node[tr->n];
    (void)timeout_ms;
    if (nd->down || nd->gen != tr->gen)
        return bm_seterr(err, errlen, BM_EIO, "fake: broken pipe");
    assert_true(nd->ilen + len <= sizeof nd->in);
    memcpy(nd->in + nd->ilen, buf, len);
    nd->ilen += len;
    node_parse(tr->fc, nd);
    return BM_OK;
}

static void f_close(struct bm_transport *t)
{
    free(t->impl);
    free(t);
}

static struct bm_transport *f_dial(void *arg, const char *host, int port, int timeout_ms,
                                   char *err, size_t errlen)
{
    struct fcluster *fc = arg;
    (void)timeout_ms;
    assert_string_equal(host, "127.0.0.1");
    for (int n = 0; n < NNODES; n++) {
        struct fnode *nd = &fc->node[n];
        if (nd->port != port)
            continue;
        if (nd->down) {
            bm_seterr(err, errlen, BM_EIO, "fake: connection refused");
            return NULL;
        }
        /* A new stream: the server's view of the old one is gone. */
        nd->ilen = nd->olen = nd->opos = 0;
        nd->asking = false;
        nd->authed = 0;
        nd->dials++;
        struct bm_transport *t = calloc(1, sizeof *t);
        struct ftr *tr = calloc(1, sizeof *tr);
        assert_non_null(t);
        assert_non_null(tr);
        tr->fc = fc;
        tr->n = n;
        tr->gen = nd->gen;
        t->read = f_read;
        t->write = f_write;
        t->close = f_close;
        t->impl = tr;
        return t;
    }
    bm_seterr(err, errlen, BM_EIO, "fake: no node on port %d", port);
    return NULL;
}

/* Nodes 0..2 own a third of the slots each; node 3 owns none (a spare that
 * takes over from a dead master). */
static void fc_init(struct fcluster *fc)
{
    memset(fc, 0, sizeof *fc);
    for (int n = 0; n < NNODES; n++)
        fc->node[n].port = 7000 + n;
    for (int s = 0; s < NSLOTS; s++)
        fc->owner[s] = s < 5461 ? 0 : s < 10923 ? 1 : 2;
    fc->ask_slot = -1;
}

static void fc_free(struct fcluster *fc)
{
    for (int n = 0; n < NNODES; n++) {
        free(fc->node[n].out);
        for (int i = 0; i < NKEYS; i++)
            kv_del(&fc->node[n], i);
    }
}

static void fc_kill(struct fcluster *fc, int n)
{
    fc->node[n].down = true;
    fc->node[n].gen++;
}

static struct bm_redis *fc_connect(struct fcluster *fc, const char *url)
{
    struct bm_redis_opts o = { 0 };
    char err[256];
    o.dial = f_dial;
    o.dial_arg = fc;
    o.reconnect_attempts = -1;
    struct bm_redis *c = bm_redis_connect(url, &o, err, sizeof err);
    if (c == NULL)
        fail_msg("connect %s: %s", url, err);
    return c;
}

/* A key of the given slot range's owner: "k<i>" for the first i whose slot
 * is owned by node n. */
static void key_on(const struct fcluster *fc, int n, int nth, char *buf, size_t len)
{
    for (int i = 0, found = 0;; i++) {
        snprintf(buf, len, "k%d", i);
        if (fc->owner[bm_redis_key_slot(buf, strlen(buf))] == n && found++ == nth)
            return;
    }
}

static void set_ok(struct bm_redis *c, const char *k, const char *v)
{
    if (bm_redis_set(c, k, strlen(k), v, strlen(v), 0) != BM_OK)
        fail_msg("SET %s: %s", k, bm_redis_errstr(c));
}

static void get_is(struct bm_redis *c, const char *k, const char *want)
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

/* ---- tests ---- */

/* bm_redis_each_master callback: PING the node and count it. */
static int ping_count(struct bm_redis *node, void *arg)
{
    (*(int *)arg)++;
    return bm_redis_ping(node);
}

static void test_key_slot(void **state)
{
    (void)state;
    /* Values from a real redis-server's CLUSTER KEYSLOT. */
    static const struct { const char *key; unsigned slot; } cases[] = {
        { "foo", 12182 }, { "bar", 5061 }, { "hello", 866 }, { "somekey", 11058 },
        { "{user1000}.following", 3443 }, { "{user1000}.followers", 3443 },
        { "bm:{g1:0}:manifest", 9831 }, { "foo{}{bar}", 8363 }, { "foo{{bar}}zap", 4015 },
        { "{}foo", 9500 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        assert_int_equal(bm_redis_key_slot(cases[i].key, strlen(cases[i].key)), cases[i].slot);
}

static void test_routing_and_auth(void **state)
{
    (void)state;
    struct fcluster fc;
    fc_init(&fc);
    fc.password = "s3cret";
    struct bm_redis *c = fc_connect(&fc, "redis+cluster://:s3cret@127.0.0.1:7001");
    assert_true(bm_redis_is_cluster(c));
    char k[3][16];
    for (int n = 0; n < 3; n++) {
        key_on(&fc, n, 0, k[n], sizeof k[n]);
        set_ok(c, k[n], k[n]);
    }
    /* Each key went straight to its owner: no MOVED was needed. */
    for (int n = 0; n < 3; n++) {
        assert_int_equal(kv_find(&fc.node[n], k[n]) >= 0, 1);
        assert_int_equal(fc.node[n].authed, 1);
        get_is(c, k[n], k[n]);
    }
    assert_int_equal(fc.node[3].dials, 0);
    /* Keys in two slots, or a per-node command: refused before sending. */
    const char *del[3] = { "DEL", k[0], k[1] };
    size_t dl[3] = { 3, strlen(k[0]), strlen(k[1]) };
    assert_int_equal(bm_redis_command(c, 3, del, dl, NULL), BM_EINVAL);
    assert_non_null(strstr(bm_redis_errstr(c), "different Redis Cluster slots"));
    assert_int_equal(bm_redis_cmd(c, NULL, "SCAN", "0", (const char *)NULL), BM_EINVAL);
    assert_int_equal(bm_redis_ping(c), BM_OK);
    /* Per-node work reaches each of the three masters once, not node 3. */
    int masters = 0;
    int pings = fc.node[0].commands + fc.node[1].commands + fc.node[2].commands;
    assert_int_equal(bm_redis_each_master(c, ping_count, &masters), BM_OK);
    assert_int_equal(masters, 3);
    assert_true(fc.node[0].commands + fc.node[1].commands + fc.node[2].commands >= pings + 3);
    assert_int_equal(fc.node[3].dials, 0);
    bm_redis_close(c);
    fc_free(&fc);
}

static void test_slots_fallback_and_seeds(void **state)
{
    (void)state;
    struct fcluster fc;
    fc_init(&fc);
    fc.no_shards = true;
    /* The first seed is dead: the second one gives the map. */
    fc_kill(&fc, 3);
    const char *seeds[2] = { "redis://127.0.0.1:7003", "redis://127.0.0.1:7002" };
    struct bm_redis_opts o = { 0 };
    char err[256], k[16];
    o.dial = f_dial;
    o.dial_arg = &fc;
    o.reconnect_attempts = -1;
    struct bm_redis *c = bm_redis_connect_cluster(seeds, 2, &o, err, sizeof err);
    if (c == NULL)
        fail_msg("%s", err);
    key_on(&fc, 1, 0, k, sizeof k);
    set_ok(c, k, "v");
    assert_int_equal(kv_find(&fc.node[1], k) >= 0, 1);
    bm_redis_close(c);
    /* Seeds must agree on scheme and credentials; no database but 0. */
    const char *mixed[2] = { "redis://127.0.0.1:7001", "redis://:pw@127.0.0.1:7002" };
    assert_null(bm_redis_connect_cluster(mixed, 2, &o, err, sizeof err));
    assert_null(bm_redis_connect("redis+cluster://127.0.0.1:7001/2", &o, err, sizeof err));
    assert_non_null(strstr(err, "database 0"));
    fc_free(&fc);
}

static void test_moved_and_ask(void **state)
{
    (void)state;
    struct fcluster fc;
    fc_init(&fc);
    struct bm_redis *c = fc_connect(&fc, "redis+cluster://127.0.0.1:7000,127.0.0.1:7001");
    char k[16];
    key_on(&fc, 0, 0, k, sizeof k);
    set_ok(c, k, "v1");
    /* Resharding moved the slot to node 2: MOVED, then the new owner. */
    int slot = (int)bm_redis_key_slot(k, strlen(k));
    move_slot(&fc, slot, 0, 2);
    int before = fc.node[0].keyed;
    get_is(c, k, "v1");
    assert_int_equal(fc.node[0].keyed, before + 1);        /* one MOVED */
    /* The map learnt it: the next command goes straight to node 2. */
    before = fc.node[0].keyed;
    get_is(c, k, "v1");
    assert_int_equal(fc.node[0].keyed, before);
    /* A slot being migrated from node 1 to node 2: a key already moved is
     * served by node 2 after ASKING, and the map is NOT changed by ASK. */
    char m[16];
    key_on(&fc, 1, 0, m, sizeof m);
    set_ok(c, m, "v2");
    int ms = (int)bm_redis_key_slot(m, strlen(m));
    kv_set(&fc.node[2], m, "v2");
    kv_del(&fc.node[1], kv_find(&fc.node[1], m));
    fc.ask_slot = ms;
    fc.ask_from = 1;
    fc.ask_to = 2;
    get_is(c, m, "v2");
    int n1 = fc.node[1].keyed;
    get_is(c, m, "v2");
    assert_int_equal(fc.node[1].keyed, n1 + 1);            /* still asked first */
    /* A script through ASK (sent as EVAL: ASKING covers one command) and
     * through MOVED to a node that never loaded it (NOSCRIPT -> reload). */
    const char *av[2] = { m, "v3" };
    size_t al[2] = { strlen(m), 2 };
    struct bm_redis_reply *r = NULL;
    assert_int_equal(bm_redis_eval(c, "return 1", 1, 2, av, al, &r), BM_OK);
    assert_int_equal(r->integer, 1);
    bm_redis_reply_free(r);
    get_is(c, m, "v3");
    fc.ask_slot = -1;
    move_slot(&fc, ms, 1, 3);
    av[1] = "v4";
    assert_int_equal(bm_redis_eval(c, "return 1", 1, 2, av, al, NULL), BM_OK);
    assert_true(fc.node[3].script);
    get_is(c, m, "v4");
    bm_redis_close(c);
    fc_free(&fc);
}

static void test_transient_retried(void **state)
{
    (void)state;
    struct fcluster fc;
    fc_init(&fc);
    struct bm_redis *c = fc_connect(&fc, "redis+cluster://127.0.0.1:7000");
    char k[16];
    key_on(&fc, 2, 0, k, sizeof k);
    fc.tryagain = 2;
    fc.clusterdown = 2;
    set_ok(c, k, "v");
    assert_int_equal(fc.tryagain + fc.clusterdown, 0);
    get_is(c, k, "v");
    /* Past the retry budget the error reaches the caller. */
    fc.clusterdown = 1000;
    assert_int_equal(bm_redis_set(c, k, strlen(k), "w", 1, 0), BM_EREDIS);
    assert_non_null(strstr(bm_redis_errstr(c), "CLUSTERDOWN"));
    fc.clusterdown = 0;
    get_is(c, k, "v");
    bm_redis_close(c);
    fc_free(&fc);
}

/* A pipeline over all nodes; before its commands are written, slots move
 * under it. Every reply comes back in order and right. */
static void test_pipeline_map_changes(void **state)
{
    (void)state;
    struct fcluster fc;
    fc_init(&fc);
    struct bm_redis *c = fc_connect(&fc, "redis+cluster://127.0.0.1:7000");
    enum { N = 24 };
    char keys[N][16];
    for (int i = 0; i < N; i++) {
        key_on(&fc, i % 3, i / 3, keys[i], sizeof keys[i]);
        set_ok(c, keys[i], keys[i]);
    }
    for (int i = 0; i < N; i++) {
        const char *argv[2] = { "GET", keys[i] };
        size_t lens[2] = { 3, strlen(keys[i]) };
        assert_int_equal(bm_redis_append(c, 2, argv, lens), BM_OK);
    }
    assert_int_equal(bm_redis_pending(c), N);
    /* Move the slots of keys 0 (node 0) and 4 (node 1) to node 2, and of
     * key 8 (node 2) to node 0: node 2 still owes replies for keys 2, 5,
     * ... when key 0 is re-sent there. */
    int moved[3] = { 0, 4, 8 }, to[3] = { 2, 2, 0 };
    for (int j = 0; j < 3; j++) {
        const char *k = keys[moved[j]];
        int s = (int)bm_redis_key_slot(k, strlen(k));
        move_slot(&fc, s, fc.owner[s], to[j]);
    }
    for (int i = 0; i < N; i++) {
        struct bm_redis_reply *r = NULL;
        if (bm_redis_get_reply(c, &r) != BM_OK)
            fail_msg("reply %d: %s", i, bm_redis_errstr(c));
        assert_int_equal(r->type, BM_REDIS_STRING);
        assert_string_equal(r->str, keys[i]);
        bm_redis_reply_recycle(c, r);
    }
    assert_int_equal(bm_redis_pending(c), 0);
    assert_int_equal(bm_redis_get_reply(c, NULL), BM_EINVAL);
    /* A single command works after the pipeline (nothing is left owed). */
    get_is(c, keys[0], keys[0]);
    bm_redis_close(c);
    fc_free(&fc);
}

static void test_node_disappears(void **state)
{
    (void)state;
    struct fcluster fc;
    fc_init(&fc);
    struct bm_redis *c = fc_connect(&fc, "redis+cluster://127.0.0.1:7000");
    char k1[16], k2[16], k0[16], k3[16];
    key_on(&fc, 1, 0, k1, sizeof k1);
    key_on(&fc, 1, 1, k2, sizeof k2);
    key_on(&fc, 0, 0, k0, sizeof k0);
    key_on(&fc, 2, 0, k3, sizeof k3);
    set_ok(c, k1, "a");
    set_ok(c, k2, "b");
    set_ok(c, k0, "z");
    set_ok(c, k3, "y");
    /* Node 1 dies and its replica (node 3) takes over its slots, with the
     * data it replicated. The client's map still names node 1: the connect
     * fails (nothing sent), the map is read again, node 3 answers. */
    fc_kill(&fc, 1);
    for (int s = 0; s < NSLOTS; s++)
        if (fc.owner[s] == 1)
            fc.owner[s] = 3;
    for (int i = 0; i < NKEYS; i++)
        if (fc.node[1].keys[i] != NULL) {
            kv_set(&fc.node[3], fc.node[1].keys[i], fc.node[1].vals[i]);
            kv_del(&fc.node[1], i);
        }
    get_is(c, k1, "a");
    /* Node 2 dies and nobody takes over: its keys fail with BM_EIO once
     * the retries are spent (the caller waits the outage out); the other
     * nodes' keys still work. */
    fc_kill(&fc, 2);
    void *v = NULL;
    size_t n = 0;
    assert_int_equal(bm_redis_get(c, k3, strlen(k3), &v, &n), BM_EIO);
    assert_null(v);
    get_is(c, k0, "z");
    /* In a pipeline: node 3 dies after the commands were written. Replies
     * lost with it are BM_EIO (they may have run: never re-sent); the
     * commands to live nodes are answered. */
    const char *g1[2] = { "GET", k1 }, *g0[2] = { "GET", k0 }, *g2[2] = { "GET", k2 };
    size_t l1[2] = { 3, strlen(k1) }, l0[2] = { 3, strlen(k0) }, l2[2] = { 3, strlen(k2) };
    assert_int_equal(bm_redis_append(c, 2, g1, l1), BM_OK);
    assert_int_equal(bm_redis_append(c, 2, g0, l0), BM_OK);
    assert_int_equal(bm_redis_append(c, 2, g2, l2), BM_OK);
    struct bm_redis_reply *r = NULL;
    assert_int_equal(bm_redis_get_reply(c, &r), BM_OK);    /* writes all; k1 answered */
    assert_string_equal(r->str, "a");
    bm_redis_reply_free(r);
    fc_kill(&fc, 3);
    assert_int_equal(bm_redis_get_reply(c, &r), BM_OK);    /* k0 on node 0 */
    assert_string_equal(r->str, "z");
    bm_redis_reply_free(r);
    /* k2's reply was owed by node 3 and already written before it died;
     * its reply happened to be queued, so it may arrive or be lost: both
     * are allowed, a wrong answer is not. */
    int rc = bm_redis_get_reply(c, &r);
    assert_true(rc == BM_OK || rc == BM_EIO);
    if (rc == BM_OK)
        assert_string_equal(r->str, "b");
    bm_redis_reply_free(r);
    assert_int_equal(bm_redis_pending(c), 0);
    bm_redis_close(c);
    fc_free(&fc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_key_slot),
        cmocka_unit_test(test_routing_and_auth),
        cmocka_unit_test(test_slots_fallback_and_seeds),
        cmocka_unit_test(test_moved_and_ask),
        cmocka_unit_test(test_transient_retried),
        cmocka_unit_test(test_pipeline_map_changes),
        cmocka_unit_test(test_node_disappears),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
