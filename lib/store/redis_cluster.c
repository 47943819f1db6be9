/* Redis Cluster routing (see redis_cluster.h and docs/internals/store.md).
 *
 * Three parts: which slot a command touches (key_slot, cmd_slot), the slot
 * map and the node table (refresh, route, node_conn), and the send loop that
 * follows MOVED/ASK and waits out TRYAGAIN/CLUSTERDOWN (run_op). Pipelined
 * commands sit in a FIFO of entries, each remembering the node its reply is
 * owed by; each node's own connection keeps its replies in order, so the
 * FIFO head's reply is always the oldest one owed by its node. Before a
 * command is re-sent to another node, the replies that node still owes for
 * later entries are read and kept with those entries (drain), so the re-sent
 * command's reply is the next one on that node.
 *
 * Invariants: owner[] only names nodes in nodes[] (which never shrinks while
 * the cluster lives, so indexes in entries stay valid); an entry that is not
 * 'ready' has exactly one reply owed on its node's connection. */
#include "store/redis_cluster.h"

#include "common/clock.h"
#include "common/err.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define NSLOTS 16384
#define MAX_NODES 1024
#define MAX_REDIRECTS 16        /* MOVED/ASK hops for one command */
#define MAX_RETRIES 10          /* TRYAGAIN/CLUSTERDOWN/unreachable: ~6.5 s */
#define SKIP_FAILED_MS 2000     /* refresh asks recently failed nodes last */

/* ---- slots -------------------------------------------------------------- */

/* CRC16-CCITT (XMODEM: polynomial 0x1021, initial 0), the checksum Redis
 * Cluster uses for key slots. */
static uint16_t crc16(const unsigned char *p, size_t n)
{
    uint16_t crc = 0;
    for (size_t i = 0; i < n; i++) {
        crc ^= (uint16_t)(p[i] << 8);
        for (int b = 0; b < 8; b++)
            crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
    }
    return crc;
}

unsigned bm_redis_key_slot(const void *key, size_t len)
{
    const unsigned char *k = key;
    /* Hash tag: the bytes between the first '{' and the first '}' after
     * it, when there is at least one. */
    const unsigned char *open = memchr(k, '{', len);
    if (open != NULL) {
        size_t rest = len - (size_t)(open - k) - 1;
        const unsigned char *close = memchr(open + 1, '}', rest);
        if (close != NULL && close > open + 1)
            return crc16(open + 1, (size_t)(close - open - 1)) % NSLOTS;
    }
    return crc16(k, len) % NSLOTS;
}

static bool cmd_is(const char *name, size_t len, const char *const *list)
{
    for (size_t i = 0; list[i] != NULL; i++)
        if (strlen(list[i]) == len && strncasecmp(name, list[i], len) == 0)
            return true;
    return false;
}

/* Commands that name no key: any node answers them. */
static const char *const KEYLESS[] = {
    "PING", "ECHO", "INFO", "TIME", "CLUSTER", "CLIENT", "CONFIG", "ACL", "COMMAND",
    "SCRIPT", "AUTH", "HELLO", "READONLY", "READWRITE", "ASKING", "ROLE", "LASTSAVE",
    "SLOWLOG", "LATENCY", NULL,
};
/* Commands whose meaning is one node's key space or one connection's
 * state: sent to "the" server they would silently cover a part of the data,
 * so they are refused here (bm_redis_each_master runs them per master). */
static const char *const PER_NODE[] = {
    "SCAN", "KEYS", "FLUSHALL", "FLUSHDB", "DBSIZE", "RANDOMKEY", "SELECT", "SWAPDB",
    "MULTI", "EXEC", "DISCARD", "WATCH", "UNWATCH", "SUBSCRIBE", "PSUBSCRIBE", "MONITOR",
    "WAIT", NULL,
};
/* Every argument after the name is a key. */
static const char *const ALL_KEYS[] = {
    "DEL", "UNLINK", "EXISTS", "MGET", "TOUCH", "SINTER", "SUNION", "SDIFF", "PFCOUNT", NULL,
};
/* Two keys: argv[1] and argv[2]. */
static const char *const TWO_KEYS[] = {
    "RENAME", "RENAMENX", "SMOVE", "LMOVE", "RPOPLPUSH", "COPY", NULL,
};
/* numkeys in argv[2], keys from argv[3]. */
static const char *const SCRIPTS[] = {
    "EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO", NULL,
};

/* Add key argv[i] to the running slot; a second slot is refused (Redis
 * would answer CROSSSLOT; saying which keys is more useful). */
static int add_key(int *slot, const char *const *argv, const size_t *lens, int i, int first,
                   char *err, size_t errlen)
{
    int s = (int)bm_redis_key_slot(argv[i], lens[i]);
    if (*slot >= 0 && s != *slot)
        return bm_seterr(err, errlen, BM_EINVAL,
                         "%.*s: keys '%.*s' and '%.*s' are in different Redis Cluster slots",
                         (int)lens[0], argv[0], (int)lens[first], argv[first], (int)lens[i],
                         argv[i]);
    *slot = s;
    return BM_OK;
}

/* The one slot a command touches (-1: none), or BM_EINVAL when it touches
 * several or only makes sense per node. */
static int cmd_slot(int argc, const char *const *argv, const size_t *lens, int *slot,
                    char *err, size_t errlen)
{
    const char *name = argv[0];
    size_t n = lens[0];
    int rc = BM_OK, first = 1, step = 1, from = 1, to = argc > 1 ? 2 : 1;
    *slot = -1;
    if (cmd_is(name, n, PER_NODE))
        return bm_seterr(err, errlen, BM_EINVAL,
                         "%.*s covers one node on Redis Cluster; use bm_redis_each_master",
                         (int)n, name);
    if (cmd_is(name, n, KEYLESS))
        return BM_OK;
    if (cmd_is(name, n, ALL_KEYS)) {
        to = argc;
    } else if (n == 4 && strncasecmp(name, "MSET", 4) == 0) {
        to = argc;
        step = 2;
    } else if (n == 6 && strncasecmp(name, "MSETNX", 6) == 0) {
        to = argc;
        step = 2;
    } else if (cmd_is(name, n, TWO_KEYS)) {
        to = argc > 3 ? 3 : argc;
    } else if (cmd_is(name, n, SCRIPTS)) {
        if (argc < 3)
            return BM_OK;
        char nk[16];
        snprintf(nk, sizeof nk, "%.*s", lens[2] < 15 ? (int)lens[2] : 15, argv[2]);
        long k = strtol(nk, NULL, 10);
        if (k < 0 || k > argc - 3)
            return bm_seterr(err, errlen, BM_EINVAL, "%.*s: bad number of keys", (int)n, name);
        from = first = 3;
        to = 3 + (int)k;
    }
    for (int i = from; i < to && rc == BM_OK; i += step)
        rc = add_key(slot, argv, lens, i, first, err, errlen);
    return rc;
}

/* ---- nodes and the slot map --------------------------------------------- */

struct node {
    char *host;                 /* as dialled (IPv6 without brackets) */
    int port;
    struct bm_redis *conn;      /* NULL until first used or after a failed open */
    bool master;                /* owns slots in the current map */
    int64_t failed_ms;        /* when it last could not be reached; 0: never */
};

struct entry {                  /* one pipelined command, in send order */
    int slot;                   /* -1: keyless */
    int node;                   /* the node its reply is owed by */
    int argc;
    char **argv;                /* owned copy, for a re-send */
    size_t *lens;
    bool ready;                 /* reply already read and kept here */
    int rc;
    struct bm_redis_reply *reply;
    char msg[256];
};

struct bm_cluster {
    char *scheme;               /* "redis://" or "rediss://" */
    char *creds;                /* "user:password@" as written, or "" */
    struct bm_redis_opts opts;  /* strings point into tls_own */
    char *tls_own[4];
    struct node *nodes;
    size_t nnodes, capnodes;
    int16_t owner[NSLOTS];      /* master node of each slot; -1 unknown */
    bool stale;                 /* the map may be wrong: refresh when idle */
    struct entry *q;            /* q[qhead .. qhead+qlen) */
    size_t qhead, qlen, qcap;
    int last_node;              /* where the last reply came from */
};

static void wipe_free(char *s)
{
    if (s == NULL)
        return;
    volatile char *p = s;
    for (size_t i = 0; p[i] != '\0'; i++)
        p[i] = '\0';
    free(s);
}

/* The node at host:port, added when new. -1 when the table is full or out
 * of memory. */
static int node_find_add(struct bm_cluster *cl, const char *host, size_t hostlen, int port)
{
    for (size_t i = 0; i < cl->nnodes; i++)
        if (cl->nodes[i].port == port && strlen(cl->nodes[i].host) == hostlen &&
            memcmp(cl->nodes[i].host, host, hostlen) == 0)
            return (int)i;
    if (cl->nnodes == MAX_NODES || port <= 0 || port > 65535 || hostlen == 0)
        return -1;
    if (cl->nnodes == cl->capnodes) {
        size_t cap = cl->capnodes ? cl->capnodes * 2 : 8;
        struct node *nn = realloc(cl->nodes, cap * sizeof *nn);
        if (nn == NULL)
            return -1;
        cl->nodes = nn;
        cl->capnodes = cap;
    }
    struct node *nd = &cl->nodes[cl->nnodes];
    memset(nd, 0, sizeof *nd);
    if ((nd->host = strndup(host, hostlen)) == NULL)
        return -1;
    nd->port = port;
    return (int)cl->nnodes++;
}

/* The node's connection, opened on first use with the seeds' scheme,
 * credentials and options. NULL with err set when it cannot be reached. */
static struct bm_redis *node_conn(struct bm_cluster *cl, int i, char *err, size_t errlen)
{
    struct node *nd = &cl->nodes[i];
    if (nd->conn != NULL)
        return nd->conn;
    bool v6 = strchr(nd->host, ':') != NULL;
    size_t n = strlen(cl->scheme) + strlen(cl->creds) + strlen(nd->host) + 16;
    char *url = malloc(n);
    if (url == NULL) {
        bm_seterr(err, errlen, BM_ENOMEM, "out of memory");
        return NULL;
    }
    snprintf(url, n, "%s%s%s%s%s:%d", cl->scheme, cl->creds, v6 ? "[" : "", nd->host,
             v6 ? "]" : "", nd->port);
    nd->conn = bm_redis_connect(url, &cl->opts, err, errlen);
    wipe_free(url);
    if (nd->conn == NULL)
        nd->failed_ms = bm_mono_ms();
    return nd->conn;
}

static int copy_conn_err(struct bm_redis *c, int rc, char *err, size_t errlen)
{
    return bm_seterr(err, errlen, rc, "%s", bm_redis_errstr(c));
}

/* The string value of "key" in a RESP2 flat map (array of key, value). */
static const struct bm_redis_reply *map_get(const struct bm_redis_reply *m, const char *key)
{
    if (m == NULL || m->type != BM_REDIS_ARRAY)
        return NULL;
    for (size_t i = 0; i + 1 < m->elements; i += 2)
        if (m->element[i]->type == BM_REDIS_STRING && strcmp(m->element[i]->str, key) == 0)
            return m->element[i + 1];
    return NULL;
}

/* A node address from a map reply; "" or "?" means "the node we asked". */
static int node_from(struct bm_cluster *cl, int asked, const struct bm_redis_reply *host,
                     long long port)
{
    if (host == NULL || host->type != BM_REDIS_STRING || host->len == 0 ||
        strcmp(host->str, "?") == 0)
        return node_find_add(cl, cl->nodes[asked].host, strlen(cl->nodes[asked].host),
                             (int)port);
    return node_find_add(cl, host->str, host->len, (int)port);
}

static bool set_range(int16_t *owner, long long a, long long b, int node)
{
    if (a < 0 || b < a || b >= NSLOTS || node < 0)
        return false;
    for (long long s = a; s <= b; s++)
        owner[s] = (int16_t)node;
    return true;
}

/* CLUSTER SHARDS (Redis 7): one entry per shard with its slot ranges and
 * nodes; the node whose role is "master" owns the ranges. */
static int parse_shards(struct bm_cluster *cl, int asked, const struct bm_redis_reply *r,
                        int16_t *owner)
{
    bool tls = strcmp(cl->scheme, "rediss://") == 0;
    if (r->type != BM_REDIS_ARRAY)
        return BM_EPROTO;
    for (size_t i = 0; i < r->elements; i++) {
        const struct bm_redis_reply *slots = map_get(r->element[i], "slots");
        const struct bm_redis_reply *nodes = map_get(r->element[i], "nodes");
        if (slots == NULL || nodes == NULL || slots->type != BM_REDIS_ARRAY ||
            nodes->type != BM_REDIS_ARRAY || slots->elements % 2 != 0)
            return BM_EPROTO;
        int master = -1;
        for (size_t j = 0; j < nodes->elements && master < 0; j++) {
            const struct bm_redis_reply *n = nodes->element[j];
            const struct bm_redis_reply *role = map_get(n, "role");
            if (role == NULL || role->type != BM_REDIS_STRING || strcmp(role->str, "master") != 0)
                continue;
            /* A TLS-only node may announce its one port as "port". */
            const struct bm_redis_reply *port = tls ? map_get(n, "tls-port") : NULL;
            if (port == NULL)
                port = map_get(n, "port");
            const struct bm_redis_reply *host = map_get(n, "endpoint");
            if (host == NULL)
                host = map_get(n, "ip");
            if (port == NULL || port->type != BM_REDIS_INTEGER)
                return BM_EPROTO;
            master = node_from(cl, asked, host, port->integer);
        }
        for (size_t j = 0; j < slots->elements; j += 2) {
            const struct bm_redis_reply *a = slots->element[j], *b = slots->element[j + 1];
            if (a->type != BM_REDIS_INTEGER || b->type != BM_REDIS_INTEGER)
                return BM_EPROTO;
            if (master >= 0 && !set_range(owner, a->integer, b->integer, master))
                return BM_EPROTO;
        }
    }
    return BM_OK;
}

/* CLUSTER SLOTS (before Redis 7): [start, end, [host, port, id], replicas...]. */
static int parse_slots(struct bm_cluster *cl, int asked, const struct bm_redis_reply *r,
                       int16_t *owner)
{
    if (r->type != BM_REDIS_ARRAY)
        return BM_EPROTO;
    for (size_t i = 0; i < r->elements; i++) {
        const struct bm_redis_reply *e = r->element[i];
        if (e->type != BM_REDIS_ARRAY || e->elements < 3 ||
            e->element[0]->type != BM_REDIS_INTEGER || e->element[1]->type != BM_REDIS_INTEGER ||
            e->element[2]->type != BM_REDIS_ARRAY || e->element[2]->elements < 2 ||
            e->element[2]->element[1]->type != BM_REDIS_INTEGER)
            return BM_EPROTO;
        const struct bm_redis_reply *m = e->element[2];
        int node = node_from(cl, asked, m->element[0], m->element[1]->integer);
        if (!set_range(owner, e->element[0]->integer, e->element[1]->integer, node))
            return BM_EPROTO;
    }
    return BM_OK;
}

/* Ask node 'i' for the slot map; on success it replaces the current one. */
static int load_map(struct bm_cluster *cl, int i, char *err, size_t errlen)
{
    struct bm_redis *c = node_conn(cl, i, err, errlen);
    if (c == NULL)
        return BM_EIO;
    int16_t *owner = malloc(sizeof cl->owner);
    if (owner == NULL)
        return bm_seterr(err, errlen, BM_ENOMEM, "out of memory");
    for (size_t s = 0; s < NSLOTS; s++)
        owner[s] = -1;
    struct bm_redis_reply *r = NULL;
    int rc = bm_redis_cmd(c, &r, "CLUSTER", "SHARDS", (const char *)NULL);
    if (rc == BM_OK) {
        rc = parse_shards(cl, i, r, owner);
    } else if (rc == BM_EREDIS) {
        /* Older servers: unknown subcommand. */
        bm_redis_reply_free(r);
        r = NULL;
        rc = bm_redis_cmd(c, &r, "CLUSTER", "SLOTS", (const char *)NULL);
        if (rc == BM_OK)
            rc = parse_slots(cl, i, r, owner);
    }
    bm_redis_reply_free(r);
    if (rc == BM_EPROTO)
        bm_seterr(err, errlen, rc, "%s:%d: malformed cluster slot map", cl->nodes[i].host,
                  cl->nodes[i].port);
    else if (rc != BM_OK)
        copy_conn_err(c, rc, err, errlen);
    if (rc != BM_OK) {
        if (rc == BM_EIO || rc == BM_ETIMEDOUT)
            cl->nodes[i].failed_ms = bm_mono_ms();
        free(owner);
        return rc;
    }
    memcpy(cl->owner, owner, sizeof cl->owner);
    free(owner);
    for (size_t n = 0; n < cl->nnodes; n++)
        cl->nodes[n].master = false;
    for (size_t s = 0; s < NSLOTS; s++)
        if (cl->owner[s] >= 0)
            cl->nodes[cl->owner[s]].master = true;
    cl->stale = false;
    return BM_OK;
}

/* Load the map from the first node that answers: masters first, nodes that
 * just failed last, never one with replies owed (its stream is busy). */
static int refresh(struct bm_cluster *cl, char *err, size_t errlen)
{
    int64_t now = bm_mono_ms();
    int rc = bm_seterr(err, errlen, BM_EIO, "no Redis Cluster node to ask for the slot map");
    for (int pass = 0; pass < 3; pass++) {
        for (size_t i = 0; i < cl->nnodes; i++) {
            struct node *nd = &cl->nodes[i];
            bool recent = nd->failed_ms != 0 && now - nd->failed_ms < SKIP_FAILED_MS;
            if ((pass == 0 && (!nd->master || recent)) || (pass == 1 && (nd->master || recent)) ||
                (pass == 2 && !recent))
                continue;
            if (nd->conn != NULL && bm_redis_pending(nd->conn) > 0)
                continue;
            if ((rc = load_map(cl, (int)i, err, errlen)) == BM_OK)
                return BM_OK;
        }
    }
    return rc;
}

/* The node for 'slot': its master, or for a keyless command or an unknown
 * slot any master (that node's MOVED then tells the truth). */
static int route(const struct bm_cluster *cl, int slot)
{
    if (slot >= 0 && cl->owner[slot] >= 0)
        return cl->owner[slot];
    for (size_t i = 0; i < cl->nnodes; i++)
        if (cl->nodes[i].master && cl->nodes[i].failed_ms == 0)
            return (int)i;
    for (size_t i = 0; i < cl->nnodes; i++)
        if (cl->nodes[i].master)
            return (int)i;
    return 0;
}

enum redirect { R_NONE, R_MOVED, R_ASK, R_RETRY };

/* What an error reply asks of us. For MOVED/ASK: *slot and the target node
 * ("MOVED 3999 127.0.0.1:6381"; an empty host means the replying node). */
static enum redirect classify(struct bm_cluster *cl, int from, const struct bm_redis_reply *r,
                              int *slot, int *target)
{
    if (r == NULL || r->type != BM_REDIS_ERROR)
        return R_NONE;
    if (strncmp(r->str, "TRYAGAIN", 8) == 0 || strncmp(r->str, "CLUSTERDOWN", 11) == 0)
        return R_RETRY;
    enum redirect kind;
    const char *p;
    if (strncmp(r->str, "MOVED ", 6) == 0) {
        kind = R_MOVED;
        p = r->str + 6;
    } else if (strncmp(r->str, "ASK ", 4) == 0) {
        kind = R_ASK;
        p = r->str + 4;
    } else {
        return R_NONE;
    }
    char *end;
    long s = strtol(p, &end, 10);
    if (end == p || *end != ' ' || s < 0 || s >= NSLOTS)
        return R_NONE;
    const char *addr = end + 1;
    const char *colon = strrchr(addr, ':');
    if (colon == NULL)
        return R_NONE;
    long port = strtol(colon + 1, &end, 10);
    if (end == colon + 1 || *end != '\0' || port <= 0 || port > 65535)
        return R_NONE;
    const char *host = addr;
    size_t hostlen = (size_t)(colon - addr);
    if (hostlen >= 2 && host[0] == '[' && host[hostlen - 1] == ']') {
        host++;
        hostlen -= 2;
    }
    if (hostlen == 0) {
        host = cl->nodes[from].host;
        hostlen = strlen(host);
    }
    *slot = (int)s;
    *target = node_find_add(cl, host, hostlen, (int)port);
    return *target >= 0 ? kind : R_NONE;
}

/* ---- sending ------------------------------------------------------------ */

/* A command, or a script run (script != NULL: bm_redis_eval's arguments). */
struct op {
    int slot;
    int argc;
    const char *const *argv;
    const size_t *lens;
    const char *script;
    int nkeys;
};

/* Read the replies node 'n' still owes for queued entries after the head
 * and keep them there, so the next reply on 'n' is for a new command. */
static void drain(struct bm_cluster *cl, int n)
{
    for (size_t k = 1; k < cl->qlen; k++) {
        struct entry *e = &cl->q[cl->qhead + k];
        if (e->node != n || e->ready)
            continue;
        struct bm_redis *c = cl->nodes[n].conn;
        e->ready = true;
        if (c == NULL || bm_redis_pending(c) == 0) {
            e->rc = BM_EIO;
            snprintf(e->msg, sizeof e->msg, "connection lost before reply");
            continue;
        }
        e->rc = bm_redis_get_reply(c, &e->reply);
        if (e->rc != BM_OK)
            snprintf(e->msg, sizeof e->msg, "%s", bm_redis_errstr(c));
    }
}

/* Send 'op' to node 'n' (after ASKING when 'asking') and read its reply.
 * *sent is false when the node could not be reached: nothing ran. */
static int send_op(struct bm_cluster *cl, int n, const struct op *op, bool asking,
                   struct bm_redis_reply **r, bool *sent, char *err, size_t errlen)
{
    *sent = false;
    *r = NULL;
    drain(cl, n);
    struct bm_redis *c = node_conn(cl, n, err, errlen);
    if (c == NULL)
        return BM_EIO;
    int rc = bm_redis_ensure(c);
    if (rc != BM_OK) {
        cl->nodes[n].failed_ms = bm_mono_ms();
        return copy_conn_err(c, rc, err, errlen);
    }
    cl->nodes[n].failed_ms = 0;
    *sent = true;
    if (!asking && op->script != NULL) {
        rc = bm_redis_eval(c, op->script, op->nkeys, op->argc, op->argv, op->lens, r);
    } else if (!asking) {
        rc = bm_redis_command(c, op->argc, op->argv, op->lens, r);
    } else {
        /* ASKING covers the next command only, so a script goes as EVAL
         * with its source (a SCRIPT LOAD in between would use it up). */
        const char *ask[1] = { "ASKING" };
        size_t asklen[1] = { 6 };
        int argc = op->argc + (op->script != NULL ? 3 : 0);
        const char **av = malloc((size_t)argc * sizeof *av);
        size_t *al = malloc((size_t)argc * sizeof *al);
        char nk[16];
        if (av == NULL || al == NULL) {
            free(av);
            free(al);
            return bm_seterr(err, errlen, BM_ENOMEM, "out of memory");
        }
        int o = 0;
        if (op->script != NULL) {
            snprintf(nk, sizeof nk, "%d", op->nkeys);
            av[0] = "EVAL";
            al[0] = 4;
            av[1] = op->script;
            al[1] = strlen(op->script);
            av[2] = nk;
            al[2] = strlen(nk);
            o = 3;
        }
        for (int i = 0; i < op->argc; i++) {
            av[o + i] = op->argv[i];
            al[o + i] = op->lens[i];
        }
        rc = bm_redis_append(c, 1, ask, asklen);
        if (rc == BM_OK)
            rc = bm_redis_append(c, argc, av, al);
        free(av);
        free(al);
        if (rc == BM_OK) {
            struct bm_redis_reply *ar = NULL;
            int arc = bm_redis_get_reply(c, &ar);
            bm_redis_reply_free(ar);
            rc = bm_redis_get_reply(c, r);
            if (rc == BM_OK && arc != BM_OK)
                rc = arc;
        }
    }
    if (rc != BM_OK)
        copy_conn_err(c, rc, err, errlen);
    return rc;
}

/* The send loop for one command whose first attempt may already have been
 * made: when first_node >= 0, (first_rc, *r) is that attempt's outcome on
 * first_node. Follows MOVED (map updated, refreshed when idle) and ASK,
 * waits out TRYAGAIN/CLUSTERDOWN and unreachable masters (map refreshed)
 * within MAX_RETRIES, and never re-sends a command whose fate is unknown. */
static int run_op(struct bm_cluster *cl, const struct op *op, int first_node, int first_rc,
                  struct bm_redis_reply **r, char *err, size_t errlen)
{
    int node = first_node >= 0 ? first_node : route(cl, op->slot);
    int rc = first_rc;
    bool have = first_node >= 0, asking = false;
    int redirects = 0, retries = 0, backoff = 50;
    for (;;) {
        bool sent = true;
        if (!have)
            rc = send_op(cl, node, op, asking, r, &sent, err, errlen);
        have = false;
        asking = false;
        cl->last_node = node;
        int slot = -1, target = -1;
        enum redirect what = rc == BM_EREDIS ? classify(cl, node, *r, &slot, &target) : R_NONE;
        if (!sent || what == R_RETRY) {
            /* Nothing ran. A failover may be under way: look at the map
             * again and try whichever master it names, after a pause. */
            cl->stale = true;
            if (retries++ >= MAX_RETRIES)
                return rc;
            bm_redis_reply_free(*r);
            *r = NULL;
            bm_sleep_ms(backoff);
            backoff = backoff * 2 > 1000 ? 1000 : backoff * 2;
            char ignored[64];
            refresh(cl, ignored, sizeof ignored);   /* skips busy nodes */
            node = route(cl, op->slot);
            continue;
        }
        if ((what == R_MOVED || what == R_ASK) && redirects++ < MAX_REDIRECTS) {
            bm_redis_reply_free(*r);
            *r = NULL;
            if (what == R_MOVED) {
                cl->owner[slot] = (int16_t)target;
                cl->nodes[target].master = true;
                cl->stale = true;
            }
            asking = what == R_ASK;
            node = target;
            continue;
        }
        if (rc == BM_EIO || rc == BM_ETIMEDOUT)
            cl->stale = true;   /* a node may have died: look again next time */
        return rc;
    }
}

static void refresh_if_stale(struct bm_cluster *cl)
{
    char ignored[64];
    if (cl->stale)
        refresh(cl, ignored, sizeof ignored);   /* skips nodes with replies owed */
}

int bm_cluster_command(struct bm_cluster *cl, int argc, const char *const *argv,
                       const size_t *argvlen, struct bm_redis_reply **reply, char *err,
                       size_t errlen)
{
    struct op op = { .argc = argc, .argv = argv, .lens = argvlen };
    struct bm_redis_reply *r = NULL;
    int rc = cmd_slot(argc, argv, argvlen, &op.slot, err, errlen);
    if (rc != BM_OK)
        return rc;
    refresh_if_stale(cl);
    rc = run_op(cl, &op, -1, BM_OK, &r, err, errlen);
    if (reply != NULL)
        *reply = r;
    else
        bm_redis_reply_free(r);
    return rc;
}

int bm_cluster_eval(struct bm_cluster *cl, const char *script, int nkeys, int argc,
                    const char *const *argv, const size_t *argvlen,
                    struct bm_redis_reply **reply, char *err, size_t errlen)
{
    struct op op = { .slot = -1, .argc = argc, .argv = argv, .lens = argvlen,
                     .script = script, .nkeys = nkeys };
    struct bm_redis_reply *r = NULL;
    if (script == NULL || nkeys < 0 || nkeys > argc)
        return bm_seterr(err, errlen, BM_EINVAL, "EVAL: no script or bad key count");
    for (int i = 0; i < nkeys; i++) {
        int rc = add_key(&op.slot, argv, argvlen, i, 0, err, errlen);
        if (rc != BM_OK)
            return rc;
    }
    refresh_if_stale(cl);
    int rc = run_op(cl, &op, -1, BM_OK, &r, err, errlen);
    if (reply != NULL)
        *reply = r;
    else
        bm_redis_reply_free(r);
    return rc;
}

/* ---- the pipeline ------------------------------------------------------- */

static void entry_clear(struct entry *e)
{
    for (int i = 0; e->argv != NULL && i < e->argc; i++)
        free(e->argv[i]);
    free(e->argv);
    free(e->lens);
    bm_redis_reply_free(e->reply);
    memset(e, 0, sizeof *e);
}

static int entry_push(struct bm_cluster *cl, int slot, int node, int argc,
                      const char *const *argv, const size_t *lens)
{
    if (cl->qlen == 0)
        cl->qhead = 0;
    if (cl->qhead + cl->qlen == cl->qcap) {
        if (cl->qhead > 0) {
            memmove(cl->q, cl->q + cl->qhead, cl->qlen * sizeof *cl->q);
            cl->qhead = 0;
        } else {
            size_t cap = cl->qcap ? cl->qcap * 2 : 16;
            struct entry *nq = realloc(cl->q, cap * sizeof *nq);
            if (nq == NULL)
                return BM_ENOMEM;
            cl->q = nq;
            cl->qcap = cap;
        }
    }
    struct entry *e = &cl->q[cl->qhead + cl->qlen];
    memset(e, 0, sizeof *e);
    e->slot = slot;
    e->node = node;
    e->argc = argc;
    e->argv = calloc((size_t)argc, sizeof *e->argv);
    e->lens = malloc((size_t)argc * sizeof *e->lens);
    if (e->argv == NULL || e->lens == NULL) {
        entry_clear(e);
        return BM_ENOMEM;
    }
    for (int i = 0; i < argc; i++) {
        if ((e->argv[i] = malloc(lens[i] + 1)) == NULL) {
            entry_clear(e);
            return BM_ENOMEM;
        }
        memcpy(e->argv[i], argv[i], lens[i]);
        e->argv[i][lens[i]] = '\0';
        e->lens[i] = lens[i];
    }
    cl->qlen++;
    return BM_OK;
}

int bm_cluster_append(struct bm_cluster *cl, int argc, const char *const *argv,
                      const size_t *argvlen, char *err, size_t errlen)
{
    int slot;
    int rc = cmd_slot(argc, argv, argvlen, &slot, err, errlen);
    if (rc != BM_OK)
        return rc;
    refresh_if_stale(cl);
    int node = route(cl, slot);
    struct bm_redis *c = node_conn(cl, node, err, errlen);
    if (c == NULL) {
        cl->nodes[node].failed_ms = bm_mono_ms();
        cl->stale = true;
        return BM_EIO;
    }
    /* Copy first: once appended the command must be re-sendable. */
    if (entry_push(cl, slot, node, argc, argv, argvlen) != BM_OK)
        return bm_seterr(err, errlen, BM_ENOMEM, "out of memory");
    rc = bm_redis_append(c, argc, argv, argvlen);
    if (rc != BM_OK) {
        entry_clear(&cl->q[cl->qhead + --cl->qlen]);
        cl->nodes[node].failed_ms = bm_mono_ms();
        cl->stale = true;
        return copy_conn_err(c, rc, err, errlen);
    }
    return BM_OK;
}

int bm_cluster_get_reply(struct bm_cluster *cl, struct bm_redis_reply **reply, char *err,
                         size_t errlen)
{
    if (reply != NULL)
        *reply = NULL;
    if (cl->qlen == 0)
        return bm_seterr(err, errlen, BM_EINVAL, "no reply pending");
    struct entry *e = &cl->q[cl->qhead];
    struct bm_redis_reply *r = NULL;
    int rc;
    if (e->ready) {
        rc = e->rc;
        r = e->reply;
        e->reply = NULL;
        if (rc != BM_OK)
            bm_seterr(err, errlen, rc, "%s", e->msg);
    } else {
        struct bm_redis *c = cl->nodes[e->node].conn;
        if (c == NULL || bm_redis_pending(c) == 0) {
            /* The node's connection was reopened by a later command,
             * which dropped the replies owed from before. */
            rc = bm_seterr(err, errlen, BM_EIO, "connection lost before reply");
        } else {
            rc = bm_redis_get_reply(c, &r);
            if (rc != BM_OK)
                copy_conn_err(c, rc, err, errlen);
        }
    }
    cl->last_node = e->node;
    if (rc == BM_EREDIS || rc == BM_EIO || rc == BM_ETIMEDOUT) {
        struct op op = { .slot = e->slot, .argc = e->argc,
                         .argv = (const char *const *)e->argv, .lens = e->lens };
        rc = run_op(cl, &op, e->node, rc, &r, err, errlen);
    }
    entry_clear(e);
    cl->qhead++;
    cl->qlen--;
    if (reply != NULL)
        *reply = r;
    else
        bm_redis_reply_free(r);
    return rc;
}

size_t bm_cluster_pending(const struct bm_cluster *cl)
{
    return cl->qlen;
}

void bm_cluster_recycle(struct bm_cluster *cl, struct bm_redis_reply *r)
{
    struct bm_redis *c = cl->last_node >= 0 && (size_t)cl->last_node < cl->nnodes
                             ? cl->nodes[cl->last_node].conn : NULL;
    if (c != NULL)
        bm_redis_reply_recycle(c, r);
    else
        bm_redis_reply_free(r);
}

int bm_cluster_each_master(struct bm_cluster *cl, bm_redis_node_fn fn, void *arg, char *err,
                           size_t errlen)
{
    if (cl->qlen > 0)
        return bm_seterr(err, errlen, BM_EINVAL, "%zu pipelined replies still pending",
                         cl->qlen);
    int rc = refresh(cl, err, errlen);
    if (rc != BM_OK)
        return rc;
    /* Every master reachable first, so a failure never leaves fn run on
     * only some of them. */
    for (size_t i = 0; i < cl->nnodes; i++)
        if (cl->nodes[i].master && node_conn(cl, (int)i, err, errlen) == NULL)
            return BM_EIO;
    for (size_t i = 0; i < cl->nnodes; i++) {
        if (!cl->nodes[i].master)
            continue;
        struct bm_redis *c = cl->nodes[i].conn;
        if ((rc = fn(c, arg)) != BM_OK)
            return bm_seterr(err, errlen, rc, "%s:%d: %s", cl->nodes[i].host,
                             cl->nodes[i].port, bm_redis_errstr(c));
    }
    return BM_OK;
}

/* ---- open and close ----------------------------------------------------- */

void bm_cluster_close(struct bm_cluster *cl)
{
    if (cl == NULL)
        return;
    for (size_t k = 0; k < cl->qlen; k++)
        entry_clear(&cl->q[cl->qhead + k]);
    free(cl->q);
    for (size_t i = 0; i < cl->nnodes; i++) {
        bm_redis_close(cl->nodes[i].conn);
        free(cl->nodes[i].host);
    }
    free(cl->nodes);
    for (size_t i = 0; i < sizeof cl->tls_own / sizeof cl->tls_own[0]; i++)
        free(cl->tls_own[i]);
    free(cl->scheme);
    wipe_free(cl->creds);
    free(cl);
}

/* Split "scheme://[creds@]host[:port][/db]" into its parts (pointers into
 * 'url'). The credentials end at the last '@' before the path. */
struct url_parts {
    const char *scheme_end;     /* just after "://" */
    const char *hosts, *hosts_end;
    const char *path;           /* "" or "/..." */
};

static int split_url(const char *url, struct url_parts *u, char *err, size_t errlen)
{
    const char *p = strstr(url, "://");
    if (p == NULL)
        return bm_seterr(err, errlen, BM_EINVAL, "Redis URL has no scheme");
    u->scheme_end = p + 3;
    u->path = u->scheme_end + strcspn(u->scheme_end, "/");
    u->hosts = u->scheme_end;
    for (const char *q = u->scheme_end; q < u->path; q++)
        if (*q == '@')
            u->hosts = q + 1;
    u->hosts_end = u->path;
    if (u->path[0] != '\0' && strcmp(u->path, "/") != 0 && strcmp(u->path, "/0") != 0)
        return bm_seterr(err, errlen, BM_EINVAL, "Redis Cluster has only database 0");
    if (u->hosts == u->hosts_end)
        return bm_seterr(err, errlen, BM_EINVAL, "Redis URL has no host");
    return BM_OK;
}

/* "host:port", "[v6]:port" or "host" (port 6379) -> a node. */
static int add_seed(struct bm_cluster *cl, const char *h, size_t n, char *err, size_t errlen)
{
    const char *port = NULL, *host = h;
    size_t hostlen = n;
    if (n > 0 && h[0] == '[') {
        const char *rb = memchr(h, ']', n);
        if (rb == NULL)
            return bm_seterr(err, errlen, BM_EINVAL, "unclosed '[' in Redis URL host");
        host = h + 1;
        hostlen = (size_t)(rb - host);
        if (rb + 1 < h + n) {
            if (rb[1] != ':')
                return bm_seterr(err, errlen, BM_EINVAL, "junk after ']' in Redis URL");
            port = rb + 2;
        }
    } else {
        const char *colon = memchr(h, ':', n);
        if (colon != NULL) {
            hostlen = (size_t)(colon - h);
            port = colon + 1;
        }
    }
    long pv = 6379;
    if (port != NULL) {
        char buf[8];
        size_t pl = (size_t)(h + n - port);
        char *end;
        if (pl == 0 || pl >= sizeof buf)
            return bm_seterr(err, errlen, BM_EINVAL, "bad port in Redis URL");
        memcpy(buf, port, pl);
        buf[pl] = '\0';
        pv = strtol(buf, &end, 10);
        if (*end != '\0' || pv <= 0 || pv > 65535)
            return bm_seterr(err, errlen, BM_EINVAL, "bad port in Redis URL");
    }
    if (hostlen == 0)
        return bm_seterr(err, errlen, BM_EINVAL, "Redis URL has no host");
    if (node_find_add(cl, host, hostlen, (int)pv) < 0)
        return bm_seterr(err, errlen, BM_ENOMEM, "out of memory");
    return BM_OK;
}

/* Scheme and credentials of one seed; every seed must agree on them. */
static int take_scheme(struct bm_cluster *cl, const struct url_parts *u,
                       const char *scheme, char *err, size_t errlen)
{
    size_t credlen = (size_t)(u->hosts - u->scheme_end);
    if (cl->scheme == NULL) {
        cl->scheme = strdup(scheme);
        cl->creds = strndup(u->scheme_end, credlen);
        if (cl->scheme == NULL || cl->creds == NULL)
            return bm_seterr(err, errlen, BM_ENOMEM, "out of memory");
        return BM_OK;
    }
    if (strcmp(cl->scheme, scheme) != 0 || strlen(cl->creds) != credlen ||
        memcmp(cl->creds, u->scheme_end, credlen) != 0)
        return bm_seterr(err, errlen, BM_EINVAL,
                         "Redis Cluster seeds must share one scheme and one set of credentials");
    return BM_OK;
}

/* One seed URL: redis://, rediss:// (one host) or redis+cluster://,
 * rediss+cluster:// (a comma-separated list of hosts). */
static int add_seed_url(struct bm_cluster *cl, const char *url, char *err, size_t errlen)
{
    static const struct { const char *prefix, *scheme; bool list; } kinds[] = {
        { "redis://", "redis://", false },
        { "rediss://", "rediss://", false },
        { "redis+cluster://", "redis://", true },
        { "rediss+cluster://", "rediss://", true },
    };
    size_t k = 0;
    while (k < 4 && strncmp(url, kinds[k].prefix, strlen(kinds[k].prefix)) != 0)
        k++;
    if (k == 4)
        return bm_seterr(err, errlen, BM_EINVAL,
                         "Redis Cluster seed must start with redis://, rediss://, "
                         "redis+cluster:// or rediss+cluster://");
    struct url_parts u = { 0 };
    int rc = split_url(url, &u, err, errlen);
    if (rc == BM_OK)
        rc = take_scheme(cl, &u, kinds[k].scheme, err, errlen);
    for (const char *h = u.hosts; rc == BM_OK && h < u.hosts_end;) {
        const char *comma = kinds[k].list ? memchr(h, ',', (size_t)(u.hosts_end - h)) : NULL;
        const char *e = comma != NULL ? comma : u.hosts_end;
        rc = add_seed(cl, h, (size_t)(e - h), err, errlen);
        h = comma != NULL ? comma + 1 : u.hosts_end;
    }
    return rc;
}

struct bm_cluster *bm_cluster_open(const char *const *seeds, size_t nseeds,
                                   const struct bm_redis_opts *opts, char *err, size_t errlen)
{
    if (seeds == NULL || nseeds == 0) {
        bm_seterr(err, errlen, BM_EINVAL, "no Redis Cluster seed");
        return NULL;
    }
    struct bm_cluster *cl = calloc(1, sizeof *cl);
    if (cl == NULL) {
        bm_seterr(err, errlen, BM_ENOMEM, "out of memory");
        return NULL;
    }
    for (size_t s = 0; s < NSLOTS; s++)
        cl->owner[s] = -1;
    cl->last_node = -1;
    if (opts != NULL)
        cl->opts = *opts;
    /* Node connections open long after the caller's strings may be gone. */
    const char **tls_in[4] = { &cl->opts.tls_ca_file, &cl->opts.tls_cert_file,
                               &cl->opts.tls_key_file, &cl->opts.tls_server_name };
    int rc = BM_OK;
    for (size_t i = 0; i < 4 && rc == BM_OK; i++) {
        if (*tls_in[i] != NULL && (cl->tls_own[i] = strdup(*tls_in[i])) == NULL)
            rc = bm_seterr(err, errlen, BM_ENOMEM, "out of memory");
        *tls_in[i] = cl->tls_own[i];
    }
    for (size_t i = 0; i < nseeds && rc == BM_OK; i++)
        rc = seeds[i] == NULL ? bm_seterr(err, errlen, BM_EINVAL, "NULL Redis Cluster seed")
                              : add_seed_url(cl, seeds[i], err, errlen);
    /* Every seed is a candidate to ask; the map decides who is master. */
    for (size_t i = 0; i < cl->nnodes; i++)
        cl->nodes[i].master = true;
    if (rc == BM_OK && (rc = refresh(cl, err, errlen)) != BM_OK) {
        char why[200];
        snprintf(why, sizeof why, "%s", err);
        bm_seterr(err, errlen, rc, "Redis Cluster: no seed gave a slot map: %s", why);
    }
    if (rc != BM_OK) {
        bm_cluster_close(cl);
        return NULL;
    }
    return cl;
}
