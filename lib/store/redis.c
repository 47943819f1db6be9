/* The Redis connection: URL parsing, (re)connect with AUTH and SELECT, the
 * pipeline (command buffer + owed replies), the reply-limit gate, and the
 * small typed helpers the rest of biomatch uses.
 *
 * Bytes flow transport -> gate -> hiredis reader -> struct bm_redis_reply.
 * The gate is a tiny RESP scanner that sees every byte before hiredis does:
 * it reads only type bytes and header lines and skips payloads by count, so
 * it can refuse a "$<len>" or "*<n>" header that breaks a limit before a
 * single payload byte is buffered. hiredis builds our reply type directly
 * through its object-function hooks (no hiredis type escapes, no copy).
 *
 * Large blobs (segment GETs of many MiB) bypass hiredis: when the gate meets
 * a top-level "$<len>" header with len >= DIRECT_MIN_BYTES it stops there,
 * the bytes before it (complete earlier replies) go to hiredis as usual, and
 * the payload is received straight into one malloc'd buffer of the announced
 * size, which becomes the reply's 'str'. That saves hiredis's growing buffer
 * (realloc) and two copies of every blob. The gate has already applied the
 * size limits to that header, so the limits hold on both paths. A header
 * split across two transport reads takes the hiredis path (correct, only
 * slower). Unlike hiredis 0.14, both paths check the CRLF after the
 * payload (the gate does it for bulks that hiredis parses).
 * bm_redis_reply_recycle() lets a pipelined run of big GETs reuse one such
 * buffer (pages already mapped) while replies are owed.
 *
 * Main invariant: either the connection is healthy (tr != NULL, reader and
 * gate in step with the byte stream, 'pending' replies owed) or it is broken
 * (tr == NULL, reader freed): nothing is ever read from a stream whose
 * position we no longer trust. Broken connections are reopened only at the
 * start of the next command, never in the middle of one. */
#include "store/redis.h"

#include "common/clock.h"
#include "common/err.h"
#include "store/redis_cluster.h"

#include <hiredis/hiredis.h>

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define RBUF_SIZE (64 * 1024)   /* one transport read */
#define DIRECT_MIN_BYTES (64 * 1024) /* top-level bulks this big skip hiredis */
#define GATE_MAX_DEPTH 7        /* nested arrays; hiredis 0.14 stops at 8 */
#define SCRIPT_CACHE_MAX 64
#define DEFAULT_CONNECT_TIMEOUT_MS 5000
#define DEFAULT_IO_TIMEOUT_MS 10000
#define DEFAULT_RECONNECT_ATTEMPTS 3

/* ---- the gate ---------------------------------------------------------- */

enum gate_state { G_TYPE, G_LINE, G_SKIPLINE, G_BULK };

struct resp_gate {
    size_t max_bytes;           /* reply limit, from the options */
    size_t max_elems;           /* element limit, from the options */
    unsigned long long bytes;   /* wire bytes of the current reply so far */
    unsigned long long elems;   /* elements announced in the current reply */
    long long remain[GATE_MAX_DEPTH]; /* elements left in each open array */
    int depth;                  /* open non-empty arrays */
    enum gate_state state;
    char type;                  /* type byte of the element being read */
    bool line_cr;               /* G_SKIPLINE: the last byte scanned was '\r' */
    char line[24];              /* header line of ':', '$', '*' (no '\n') */
    size_t linelen;
    unsigned long long skip;    /* G_BULK: payload + CRLF bytes still to pass */
    size_t direct_min;          /* top-level bulk size that stops the scan */
    bool direct;                /* stopped at such a header; payload unscanned */
    size_t direct_len;          /* its announced length */
};

static void gate_reset(struct resp_gate *g, size_t max_bytes, size_t max_elems)
{
    memset(g, 0, sizeof *g);
    g->max_bytes = max_bytes;
    g->max_elems = max_elems;
    g->direct_min = DIRECT_MIN_BYTES;
    g->state = G_TYPE;
}

/* An element finished: close every array it completes; when the outermost
 * one closes (or the element was top-level) the reply is complete and the
 * per-reply budgets start again. */
static void gate_elem_done(struct resp_gate *g)
{
    g->state = G_TYPE;
    while (g->depth > 0) {
        if (--g->remain[g->depth - 1] > 0)
            return;
        g->depth--;
    }
    g->bytes = 0;
    g->elems = 0;
}

/* The direct reader consumed the payload and CRLF of the bulk the scan
 * stopped at: that top-level reply is complete. */
static void gate_direct_done(struct resp_gate *g)
{
    g->direct = false;
    g->skip = 0;
    gate_elem_done(g);
}

/* Parse the header line "<int>\r" strictly: optional '-', 1-18 digits. */
static bool gate_parse_int(const struct resp_gate *g, long long *out)
{
    size_t n = g->linelen;
    if (n < 2 || g->line[n - 1] != '\r')
        return false;
    n--;
    size_t i = 0;
    bool neg = false;
    if (g->line[0] == '-') {
        neg = true;
        i = 1;
    }
    if (i == n || n - i > 18)   /* 18 digits cannot overflow long long */
        return false;
    long long v = 0;
    for (; i < n; i++) {
        if (g->line[i] < '0' || g->line[i] > '9')
            return false;
        v = v * 10 + (g->line[i] - '0');
    }
    *out = neg ? -v : v;
    return true;
}

static int gate_header(struct resp_gate *g, char *msg, size_t msglen)
{
    long long n;
    if (!gate_parse_int(g, &n))
        return bm_seterr(msg, msglen, BM_EPROTO,
                         "malformed RESP header after '%c'", g->type);
    if (g->type == ':' || n == -1) {    /* integer, nil bulk, nil array */
        gate_elem_done(g);
        return BM_OK;
    }
    if (n < 0)
        return bm_seterr(msg, msglen, BM_EPROTO, "negative RESP length %lld", n);
    if (g->type == '$') {
        if ((unsigned long long)n > g->max_bytes)
            return bm_seterr(msg, msglen, BM_ERANGE,
                             "reply refused: bulk string of %lld bytes is over the "
                             "%zu-byte reply limit", n, g->max_bytes);
        if (g->bytes + (unsigned long long)n + 2 > g->max_bytes)
            return bm_seterr(msg, msglen, BM_ERANGE,
                             "reply refused: total size would reach %llu bytes, over "
                             "the %zu-byte reply limit",
                             g->bytes + (unsigned long long)n + 2, g->max_bytes);
        g->bytes += (unsigned long long)n + 2;
        g->skip = (unsigned long long)n + 2;
        g->state = G_BULK;
        return BM_OK;
    }
    /* '*' */
    if ((unsigned long long)n > g->max_elems ||
        g->elems + (unsigned long long)n > g->max_elems)
        return bm_seterr(msg, msglen, BM_ERANGE,
                         "reply refused: array of %lld elements brings the reply to "
                         "%llu elements, over the limit of %zu", n,
                         g->elems + (unsigned long long)n, g->max_elems);
    g->elems += (unsigned long long)n;
    if (n == 0) {
        gate_elem_done(g);
        return BM_OK;
    }
    if (g->depth == GATE_MAX_DEPTH)
        return bm_seterr(msg, msglen, BM_EPROTO,
                         "reply nests arrays deeper than %d levels", GATE_MAX_DEPTH);
    g->remain[g->depth++] = n;
    g->state = G_TYPE;
    return BM_OK;
}

/* Scan 'len' new bytes. Returns BM_OK with *okp = *usedp = len, or the
 * first violation with *okp = the number of leading bytes that belong to
 * earlier, acceptable elements (those may still be fed to the parser, so
 * replies that arrived before the bad one are delivered). When it meets a
 * whole top-level bulk header of at least direct_min bytes it stops right
 * after that header with g->direct set: *okp = the bytes before the '$'
 * (for the parser), *usedp = the bytes up to the end of the header. */
static int gate_scan(struct resp_gate *g, const char *buf, size_t len, size_t *okp,
                     size_t *usedp, char *msg, size_t msglen)
{
    size_t i = 0, start = 0;
    bool start_here = false;    /* the current element's type byte is in buf */
    int rc = BM_OK;
    while (i < len && rc == BM_OK) {
        switch (g->state) {
        case G_TYPE: {
            char t = buf[i];
            start = i;
            if (t == '+' || t == '-') {
                g->state = G_SKIPLINE;
                g->line_cr = false;
            } else if (t == ':' || t == '$' || t == '*') {
                g->state = G_LINE;
                g->linelen = 0;
            } else {
                rc = bm_seterr(msg, msglen, BM_EPROTO,
                               "unexpected byte 0x%02x where a RESP type was expected",
                               (unsigned char)t);
                break;
            }
            g->type = t;
            g->bytes++;
            start_here = true;
            i++;
            break;
        }
        case G_SKIPLINE: {
            /* hiredis ends a status line at the first CRLF; a bare '\n'
             * would end it here but not there, and the two would then
             * disagree on where every later element starts (and on which
             * reply the element limit applies to). So refuse it. */
            const char *nl = memchr(buf + i, '\n', len - i);
            size_t n = nl != NULL ? (size_t)(nl - (buf + i)) + 1 : len - i;
            bool cr_before_nl = nl != NULL && (nl > buf + i ? nl[-1] == '\r' : g->line_cr);
            g->bytes += n;
            i += n;
            if (g->bytes > g->max_bytes)
                rc = bm_seterr(msg, msglen, BM_ERANGE,
                               "reply refused: status line over the %zu-byte reply limit",
                               g->max_bytes);
            else if (nl != NULL && !cr_before_nl)
                rc = bm_seterr(msg, msglen, BM_EPROTO, "status line not ended by CRLF");
            else if (nl != NULL)
                gate_elem_done(g);
            else
                g->line_cr = buf[i - 1] == '\r';
            break;
        }
        case G_LINE: {
            char ch = buf[i++];
            g->bytes++;
            if (ch != '\n') {
                if (g->linelen == sizeof g->line)
                    rc = bm_seterr(msg, msglen, BM_EPROTO, "RESP header line too long");
                else
                    g->line[g->linelen++] = ch;
                break;
            }
            rc = gate_header(g, msg, msglen);
            if (rc == BM_OK && g->state == G_BULK && g->type == '$' && g->depth == 0 &&
                start_here && g->direct_min > 0 && g->skip - 2 >= g->direct_min) {
                g->direct = true;
                g->direct_len = (size_t)(g->skip - 2);
                *okp = start;
                *usedp = i;
                return BM_OK;
            }
            break;
        }
        case G_BULK: {
            if (g->skip <= 2) {
                /* hiredis 0.14 never looks at the CRLF after a payload; we
                 * do, so both paths refuse the same streams. */
                if (buf[i] != (g->skip == 2 ? '\r' : '\n')) {
                    rc = bm_seterr(msg, msglen, BM_EPROTO,
                                   "bulk string not followed by CRLF");
                    break;
                }
                i++;
                if (--g->skip == 0)
                    gate_elem_done(g);
                break;
            }
            size_t n = len - i;
            if (n > g->skip - 2)
                n = (size_t)(g->skip - 2);
            i += n;
            g->skip -= n;
            break;
        }
        }
    }
    *okp = rc == BM_OK ? len : start;
    *usedp = i;
    return rc;
}

/* ---- replies, built by hiredis's reader through these hooks ------------- */

void bm_redis_reply_free(struct bm_redis_reply *r)
{
    if (r == NULL)
        return;
    if (r->element != NULL) {
        for (size_t i = 0; i < r->elements; i++)
            bm_redis_reply_free(r->element[i]);
        free(r->element);
    }
    free(r->str);
    free(r);
}

/* Hang a new element into its parent array (hiredis tells us the slot). */
static void *reply_attach(const redisReadTask *task, struct bm_redis_reply *r)
{
    if (task->parent != NULL) {
        struct bm_redis_reply *p = task->parent->obj;
        p->element[task->idx] = r;
    }
    return r;
}

static void *reply_new_string(const redisReadTask *task, char *str, size_t len)
{
    struct bm_redis_reply *r = calloc(1, sizeof *r);
    if (r == NULL)
        return NULL;
    r->str = malloc(len + 1);
    if (r->str == NULL) {
        free(r);
        return NULL;
    }
    memcpy(r->str, str, len);
    r->str[len] = '\0';
    r->len = len;
    r->type = task->type == REDIS_REPLY_STATUS ? BM_REDIS_STATUS
            : task->type == REDIS_REPLY_ERROR ? BM_REDIS_ERROR : BM_REDIS_STRING;
    return reply_attach(task, r);
}

static void *reply_new_array(const redisReadTask *task, int n)
{
    struct bm_redis_reply *r = calloc(1, sizeof *r);
    if (r == NULL)
        return NULL;
    r->type = BM_REDIS_ARRAY;
    if (n > 0) {
        /* calloc: on a parse error hiredis frees a half-filled tree. */
        r->element = calloc((size_t)n, sizeof *r->element);
        if (r->element == NULL) {
            free(r);
            return NULL;
        }
        r->elements = (size_t)n;
    }
    return reply_attach(task, r);
}

static void *reply_new_integer(const redisReadTask *task, long long v)
{
    struct bm_redis_reply *r = calloc(1, sizeof *r);
    if (r == NULL)
        return NULL;
    r->type = BM_REDIS_INTEGER;
    r->integer = v;
    return reply_attach(task, r);
}

static void *reply_new_nil(const redisReadTask *task)
{
    struct bm_redis_reply *r = calloc(1, sizeof *r);
    if (r == NULL)
        return NULL;
    r->type = BM_REDIS_NIL;
    return reply_attach(task, r);
}

static void reply_free_obj(void *obj)
{
    bm_redis_reply_free(obj);
}

static redisReplyObjectFunctions reply_fns = {
    reply_new_string, reply_new_array, reply_new_integer, reply_new_nil,
    reply_free_obj,
};

/* ---- the connection ----------------------------------------------------- */

struct script_entry {
    char *script;               /* owned copy of the Lua source */
    char sha[41];               /* what SCRIPT LOAD returned */
    struct script_entry *next;
};

struct bm_redis {
    int err;                    /* sticky: most recent failure */
    char errstr[256];
    char *host;                 /* from the URL */
    int port;
    char *user;                 /* NULL: AUTH without user name */
    char *password;             /* NULL: no AUTH */
    int db;
    struct bm_redis_opts opts;  /* with defaults filled in */
    struct bm_transport *tr;    /* NULL while broken */
    redisReader *reader;        /* NULL while broken */
    struct resp_gate gate;
    int gate_err;               /* a limit hit in bytes already read */
    char gate_msg[160];
    char *obuf;                 /* encoded commands not yet written */
    size_t olen, ocap;
    size_t pending;             /* replies owed for appended commands */
    int break_err;              /* why the connection broke */
    char break_msg[256];
    char *rbuf;                 /* RBUF_SIZE bytes */
    size_t rpos, rend;          /* rbuf[rpos..rend): read, not yet scanned */
    char *dbuf;                 /* direct bulk being received: dlen + CRLF */
    size_t dlen, dhave, dcap;   /* payload length; bytes received; capacity */
    char *given;                /* the last direct buffer handed out (only
                                   compared, never dereferenced; cleared
                                   when a hiredis reply could reuse it) */
    size_t given_cap;           /* its capacity */
    char *spare;                /* recycled buffer for the next direct bulk */
    size_t spare_cap;
    struct script_entry *scripts;
    size_t nscripts;
    struct bm_tls_conf tls;     /* dial_arg of the default TLS dialer; its
                                   strings point into tls_own */
    char *tls_own[4];           /* owned copies of opts.tls_* */
    struct bm_cluster *cl;      /* Redis Cluster: every call goes there and
                                   the fields above stay unused, except the
                                   sticky error */
};

static int set_err(struct bm_redis *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int set_err(struct bm_redis *c, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->errstr, sizeof c->errstr, fmt, ap);
    va_end(ap);
    c->err = code;
    return code;
}

int bm_redis_err(const struct bm_redis *c) { return c->err; }
const char *bm_redis_errstr(const struct bm_redis *c) { return c->errstr; }
size_t bm_redis_pending(const struct bm_redis *c)
{
    return c->cl != NULL ? bm_cluster_pending(c->cl) : c->pending;
}

/* A cluster call's outcome: failures become the sticky error. */
static int cluster_rc(struct bm_redis *c, int rc, const char *msg)
{
    if (rc != BM_OK)
        set_err(c, rc, "%s", msg);
    return rc;
}

void bm_redis_clear_err(struct bm_redis *c)
{
    c->err = BM_OK;
    c->errstr[0] = '\0';
}

/* Drop the stream: whatever it still carries can no longer be matched to
 * commands. Replies still owed will report 'code' / 'msg'. */
static void conn_break(struct bm_redis *c, int code, const char *msg)
{
    if (c->tr != NULL)
        c->tr->close(c->tr);
    c->tr = NULL;
    if (c->reader != NULL)
        redisReaderFree(c->reader);
    c->reader = NULL;
    c->olen = 0;
    c->rpos = c->rend = 0;
    free(c->dbuf);
    c->dbuf = NULL;
    free(c->spare);
    c->spare = NULL;
    c->spare_cap = 0;
    c->gate_err = BM_OK;
    c->break_err = code;
    snprintf(c->break_msg, sizeof c->break_msg, "%s", msg);
}

static int raw_command(struct bm_redis *c, int argc, const char *const *argv,
                       const size_t *argvlen, struct bm_redis_reply **reply);

/* Open a fresh stream (bounded attempts, backoff) and redo the session
 * state the URL asked for. On failure the connection stays broken. */
static int conn_open(struct bm_redis *c)
{
    char msg[200] = "";
    int attempts = 1 + (c->opts.reconnect_attempts > 0 ? c->opts.reconnect_attempts : 0);
    int backoff = 50;
    struct bm_transport *tr = NULL;
    for (int a = 0; a < attempts && tr == NULL; a++) {
        if (a > 0) {
            bm_sleep_ms(backoff);
            backoff = backoff * 2 > 1000 ? 1000 : backoff * 2;
        }
        tr = c->opts.dial(c->opts.dial_arg, c->host, c->port,
                          c->opts.connect_timeout_ms, msg, sizeof msg);
    }
    if (tr == NULL)
        return set_err(c, BM_EIO, "connect to %s:%d failed after %d attempt%s: %s",
                       c->host, c->port, attempts, attempts == 1 ? "" : "s", msg);
    c->reader = redisReaderCreateWithFunctions(&reply_fns);
    if (c->reader == NULL) {
        tr->close(tr);
        return set_err(c, BM_ENOMEM, "out of memory for the reply parser");
    }
    c->tr = tr;
    c->pending = 0;
    c->olen = 0;
    c->rpos = c->rend = 0;
    free(c->dbuf);
    c->dbuf = NULL;
    c->gate_err = BM_OK;
    c->break_err = BM_OK;
    gate_reset(&c->gate, c->opts.max_reply_bytes, c->opts.max_elements);

    struct bm_redis_reply *r = NULL;
    int rc = BM_OK;
    if (c->password != NULL) {
        const char *argv[3] = { "AUTH", c->user, c->password };
        size_t lens[3] = { 4, c->user ? strlen(c->user) : 0, strlen(c->password) };
        if (c->user == NULL) {
            argv[1] = c->password;
            lens[1] = lens[2];
        }
        rc = raw_command(c, c->user != NULL ? 3 : 2, argv, lens, &r);
        if (rc == BM_EREDIS)
            set_err(c, rc, "AUTH failed: %s", r->str);
        bm_redis_reply_free(r);
        r = NULL;
    }
    if (rc == BM_OK && c->db != 0) {
        char dbs[16];
        snprintf(dbs, sizeof dbs, "%d", c->db);
        const char *argv[2] = { "SELECT", dbs };
        size_t lens[2] = { 6, strlen(dbs) };
        rc = raw_command(c, 2, argv, lens, &r);
        if (rc == BM_EREDIS)
            set_err(c, rc, "SELECT %d failed: %s", c->db, r->str);
        bm_redis_reply_free(r);
    }
    if (rc != BM_OK)
        conn_break(c, rc, c->errstr);
    return rc;
}

/* Before a new command: a healthy, idle connection whose socket already has
 * something to say (EOF after CLIENT KILL or a server restart, or stray
 * bytes) is dropped here, so the command goes to a fresh connection instead
 * of failing after it was sent. Then reopen if broken. */
static int conn_ready(struct bm_redis *c)
{
    if (c->tr != NULL && c->pending == 0 && c->olen == 0 && c->rpos < c->rend)
        conn_break(c, BM_EIO, "unsolicited bytes from server");
    if (c->tr != NULL && c->pending == 0 && c->olen == 0) {
        size_t got = 0;
        char msg[64];
        int rc = c->tr->read(c->tr, c->rbuf, RBUF_SIZE, &got, 0, msg, sizeof msg);
        if (rc != BM_ETIMEDOUT)
            conn_break(c, BM_EIO, rc == BM_OK ? "unsolicited bytes from server" : msg);
    }
    if (c->tr != NULL)
        return BM_OK;
    return conn_open(c);
}

static int check_args(struct bm_redis *c, int argc, const char *const *argv,
                      const size_t *argvlen)
{
    if (argc < 1 || argv == NULL || argvlen == NULL)
        return set_err(c, BM_EINVAL, "a command needs at least one argument");
    size_t total = 0;
    for (int i = 0; i < argc; i++) {
        if (argv[i] == NULL)
            return set_err(c, BM_EINVAL, "argument %d is NULL", i);
        total += argvlen[i];
        /* hiredis 0.14 formats into an int-sized buffer. */
        if (argvlen[i] > INT_MAX / 2 || total > INT_MAX / 2)
            return set_err(c, BM_ERANGE, "command of more than %d bytes", INT_MAX / 2);
    }
    return BM_OK;
}

static int buffer_command(struct bm_redis *c, int argc, const char *const *argv,
                          const size_t *argvlen)
{
    char *cmd = NULL;
    int n = redisFormatCommandArgv(&cmd, argc, (const char **)argv, argvlen);
    if (n < 0)
        return set_err(c, BM_ENOMEM, "out of memory encoding a command");
    if (c->olen + (size_t)n > c->ocap) {
        size_t cap = c->ocap ? c->ocap : 4096;
        while (cap < c->olen + (size_t)n)
            cap *= 2;
        char *nb = realloc(c->obuf, cap);
        if (nb == NULL) {
            redisFreeCommand(cmd);
            return set_err(c, BM_ENOMEM, "out of memory buffering a command");
        }
        c->obuf = nb;
        c->ocap = cap;
    }
    memcpy(c->obuf + c->olen, cmd, (size_t)n);
    c->olen += (size_t)n;
    c->pending++;
    redisFreeCommand(cmd);
    return BM_OK;
}

/* Fail the reply being waited for because the stream broke. */
static int fail_reply(struct bm_redis *c, int code, const char *msg)
{
    conn_break(c, code, msg);
    c->pending--;
    return set_err(c, code, "%s", msg);
}

static int read_reply(struct bm_redis *c, struct bm_redis_reply **reply)
{
    if (reply != NULL)
        *reply = NULL;
    if (c->pending == 0)
        return set_err(c, BM_EINVAL, "no reply pending");
    if (c->tr == NULL) {
        c->pending--;
        return set_err(c, c->break_err, "connection lost before reply: %s", c->break_msg);
    }
    char msg[256];
    if (c->olen > 0) {
        int rc = c->tr->write(c->tr, c->obuf, c->olen, c->opts.io_timeout_ms, msg,
                              sizeof msg);
        if (rc != BM_OK)
            return fail_reply(c, rc, msg);
        c->olen = 0;
        if (c->ocap > (1u << 20)) {     /* do not keep a blob-sized buffer */
            free(c->obuf);
            c->obuf = NULL;
            c->ocap = 0;
        }
    }
    for (;;) {
        void *obj = NULL;
        if (redisReaderGetReply(c->reader, &obj) != REDIS_OK) {
            int code = c->reader->err == REDIS_ERR_OOM ? BM_ENOMEM : BM_EPROTO;
            snprintf(msg, sizeof msg, "bad reply from server: %s", c->reader->errstr);
            return fail_reply(c, code, msg);
        }
        if (obj == NULL && c->dbuf != NULL && c->dhave == c->dlen + 2) {
            /* hiredis holds no earlier reply, so the direct bulk is next. */
            if (c->dbuf[c->dlen] != '\r' || c->dbuf[c->dlen + 1] != '\n')
                return fail_reply(c, BM_EPROTO,
                                  "bad reply from server: bulk string not followed by CRLF");
            struct bm_redis_reply *r = calloc(1, sizeof *r);
            if (r == NULL)
                return fail_reply(c, BM_ENOMEM, "out of memory for a reply");
            r->type = BM_REDIS_STRING;
            r->len = c->dlen;
            r->str = c->dbuf;
            r->str[r->len] = '\0';
            c->given = c->dbuf;
            c->given_cap = c->dcap;
            c->dbuf = NULL;
            gate_direct_done(&c->gate);
            obj = r;
        } else if (obj != NULL) {
            /* A hiredis-built reply: its strings may sit where a freed
             * direct buffer was, so that buffer's capacity is forgotten
             * (recycle then assumes len + 1, which is always safe). */
            c->given = NULL;
        }
        if (obj != NULL) {
            struct bm_redis_reply *r = obj;
            int rc = BM_OK;
            if (--c->pending == 0) {
                /* The pipeline drained: do not hold a blob-sized buffer. */
                free(c->spare);
                c->spare = NULL;
                c->spare_cap = 0;
            }
            if (r->type == BM_REDIS_ERROR)
                rc = set_err(c, BM_EREDIS, "%s", r->str);
            if (reply != NULL)
                *reply = r;
            else
                bm_redis_reply_free(r);
            return rc;
        }
        if (c->gate_err != BM_OK) {
            snprintf(msg, sizeof msg, "%s; connection closed", c->gate_msg);
            return fail_reply(c, c->gate_err, msg);
        }
        size_t got = 0;
        int rc;
        if (c->dbuf != NULL) {
            /* Payload and CRLF of the direct bulk: first what the last read
             * brought along, then straight from the transport into place,
             * never past its end (the next reply stays in the stream). */
            size_t want = c->dlen + 2 - c->dhave;
            if (c->rpos < c->rend) {
                got = c->rend - c->rpos < want ? c->rend - c->rpos : want;
                memcpy(c->dbuf + c->dhave, c->rbuf + c->rpos, got);
                c->rpos += got;
            } else {
                rc = c->tr->read(c->tr, c->dbuf + c->dhave, want, &got,
                                 c->opts.io_timeout_ms, msg, sizeof msg);
                if (rc != BM_OK)
                    return fail_reply(c, rc, msg);
            }
            c->dhave += got;
            continue;
        }
        if (c->rpos == c->rend) {
            rc = c->tr->read(c->tr, c->rbuf, RBUF_SIZE, &got, c->opts.io_timeout_ms, msg,
                             sizeof msg);
            if (rc != BM_OK)
                return fail_reply(c, rc, msg);
            c->rpos = 0;
            c->rend = got;
        }
        size_t ok = 0, used = 0;
        c->gate_err = gate_scan(&c->gate, c->rbuf + c->rpos, c->rend - c->rpos, &ok, &used,
                                c->gate_msg, sizeof c->gate_msg);
        if (ok > 0 && redisReaderFeed(c->reader, c->rbuf + c->rpos, ok) != REDIS_OK)
            return fail_reply(c, BM_ENOMEM, "out of memory buffering a reply");
        /* After a violation nothing more is parsed: the stream is dropped
         * once the replies before it are delivered. */
        c->rpos = c->gate_err != BM_OK ? c->rend : c->rpos + used;
        if (c->gate_err == BM_OK && c->gate.direct) {
            /* The gate checked the length against the reply limit. */
            size_t need = c->gate.direct_len + 2;
            if (c->spare != NULL && c->spare_cap >= need) {
                c->dbuf = c->spare;
                c->dcap = c->spare_cap;
                c->spare = NULL;
                c->spare_cap = 0;
            } else {
                /* 1/8 slack, so a recycled buffer fits the next, slightly
                 * bigger, blob of a pipelined run (pages never touched cost
                 * no memory). A too small spare is freed first, not
                 * realloc'd: its contents are garbage, and copying them
                 * would only touch more fresh pages. */
                free(c->spare);
                c->spare = NULL;
                c->spare_cap = 0;
                c->dcap = (need + need / 8 + 4095) & ~(size_t)4095;
                c->dbuf = malloc(c->dcap);
                if (c->dbuf == NULL)
                    return fail_reply(c, BM_ENOMEM, "out of memory for a bulk reply");
            }
            c->dlen = c->gate.direct_len;
            c->dhave = 0;
        }
    }
}

static int raw_command(struct bm_redis *c, int argc, const char *const *argv,
                       const size_t *argvlen, struct bm_redis_reply **reply)
{
    int rc = buffer_command(c, argc, argv, argvlen);
    if (rc != BM_OK)
        return rc;
    return read_reply(c, reply);
}

int bm_redis_ensure(struct bm_redis *c)
{
    return c->cl != NULL ? BM_OK : conn_ready(c);
}

int bm_redis_append(struct bm_redis *c, int argc, const char *const *argv,
                    const size_t *argvlen)
{
    int rc = check_args(c, argc, argv, argvlen);
    if (rc == BM_OK && c->cl != NULL) {
        char msg[256];
        return cluster_rc(c, bm_cluster_append(c->cl, argc, argv, argvlen, msg, sizeof msg),
                          msg);
    }
    if (rc == BM_OK)
        rc = conn_ready(c);
    if (rc == BM_OK)
        rc = buffer_command(c, argc, argv, argvlen);
    return rc;
}

int bm_redis_get_reply(struct bm_redis *c, struct bm_redis_reply **reply)
{
    if (c->cl != NULL) {
        char msg[256];
        return cluster_rc(c, bm_cluster_get_reply(c->cl, reply, msg, sizeof msg), msg);
    }
    return read_reply(c, reply);
}

int bm_redis_command(struct bm_redis *c, int argc, const char *const *argv,
                     const size_t *argvlen, struct bm_redis_reply **reply)
{
    if (reply != NULL)
        *reply = NULL;
    /* On a healthy stream the next reply belongs to an appended command; on a
     * broken one the owed replies are gone and the reconnect drops them. */
    if (c->cl != NULL) {
        char msg[256];
        if (bm_cluster_pending(c->cl) > 0)
            return set_err(c, BM_EINVAL, "%zu pipelined replies still pending",
                           bm_cluster_pending(c->cl));
        int rc = check_args(c, argc, argv, argvlen);
        if (rc != BM_OK)
            return rc;
        return cluster_rc(c, bm_cluster_command(c->cl, argc, argv, argvlen, reply, msg,
                                                sizeof msg), msg);
    }
    if (c->pending > 0 && c->tr != NULL)
        return set_err(c, BM_EINVAL, "%zu pipelined replies still pending", c->pending);
    int rc = bm_redis_append(c, argc, argv, argvlen);
    if (rc != BM_OK)
        return rc;
    return read_reply(c, reply);
}

int bm_redis_cmd(struct bm_redis *c, struct bm_redis_reply **reply, const char *arg0, ...)
{
    va_list ap;
    int argc = 0;
    if (reply != NULL)
        *reply = NULL;
    if (arg0 == NULL)
        return set_err(c, BM_EINVAL, "a command needs at least one argument");
    va_start(ap, arg0);
    for (const char *a = arg0; a != NULL; a = va_arg(ap, const char *))
        argc++;
    va_end(ap);
    const char **argv = malloc((size_t)argc * sizeof *argv);
    size_t *lens = malloc((size_t)argc * sizeof *lens);
    if (argv == NULL || lens == NULL) {
        free(argv);
        free(lens);
        return set_err(c, BM_ENOMEM, "out of memory");
    }
    va_start(ap, arg0);
    argv[0] = arg0;
    for (int i = 1; i < argc; i++)
        argv[i] = va_arg(ap, const char *);
    va_end(ap);
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    int rc = bm_redis_command(c, argc, argv, lens, reply);
    free(argv);
    free(lens);
    return rc;
}

void bm_redis_reply_recycle(struct bm_redis *c, struct bm_redis_reply *r)
{
    if (r == NULL)
        return;
    if (c != NULL && c->cl != NULL) {
        bm_cluster_recycle(c->cl, r);
        return;
    }
    bool ours = c != NULL && r->str != NULL && r->str == c->given;
    if (ours)
        c->given = NULL;
    if (c != NULL && c->tr != NULL && c->pending > 0 && r->type == BM_REDIS_STRING &&
        r->str != NULL) {
        /* Capacity: known for our own direct buffer, else what hiredis's
         * hook allocated (len + 1). Keep the bigger of it and the spare. */
        size_t cap = ours ? c->given_cap : r->len + 1;
        if (cap > c->spare_cap) {
            free(c->spare);
            c->spare = r->str;
            c->spare_cap = cap;
            r->str = NULL;
        }
    }
    bm_redis_reply_free(r);
}

/* ---- URL ---------------------------------------------------------------- */

/* Strict decimal in [0, max] from s[0..n). */
static bool parse_uint(const char *s, size_t n, long max, long *out)
{
    long v = 0;
    if (n == 0 || n > 9)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (s[i] - '0');
    }
    if (v > max)
        return false;
    *out = v;
    return true;
}

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* malloc'd, %XX-decoded copy of s[0..n); NULL on bad escape or no memory. */
static char *pct_decode(const char *s, size_t n)
{
    char *out = malloc(n + 1);
    size_t o = 0;
    if (out == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '%') {
            out[o++] = s[i];
            continue;
        }
        int hi = i + 2 < n ? hexval(s[i + 1]) : -1;
        int lo = i + 2 < n ? hexval(s[i + 2]) : -1;
        if (hi >= 0 && lo >= 0) {
            out[o++] = (char)(hi * 16 + lo);
            i += 2;
            continue;
        }
        free(out);
        return NULL;
    }
    out[o] = '\0';
    return out;
}

static int parse_url(struct bm_redis *c, const char *url, bool *tls, char *err,
                     size_t errlen)
{
    const char *p;
    if (strncmp(url, "redis://", 8) == 0) {
        p = url + 8;
        *tls = false;
    } else if (strncmp(url, "rediss://", 9) == 0) {
        p = url + 9;
        *tls = true;
    } else {
        return bm_seterr(err, errlen, BM_EINVAL,
                         "Redis URL must start with redis:// or rediss://");
    }
    const char *slash = strchr(p, '/');
    const char *end = slash != NULL ? slash : p + strlen(p);
    const char *at = NULL;
    for (const char *q = p; q < end; q++)
        if (*q == '@')
            at = q;
    if (at != NULL) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        if (colon == NULL)
            return bm_seterr(err, errlen, BM_EINVAL,
                             "Redis URL credentials must be [user]:password@");
        if (colon > p && (c->user = pct_decode(p, (size_t)(colon - p))) == NULL)
            return bm_seterr(err, errlen, BM_EINVAL, "bad %%-escape in Redis URL user");
        c->password = pct_decode(colon + 1, (size_t)(at - colon - 1));
        if (c->password == NULL)
            return bm_seterr(err, errlen, BM_EINVAL,
                             "bad %%-escape in Redis URL password");
        p = at + 1;
    }
    const char *hend, *portp = NULL;
    if (*p == '[') {
        const char *rb = memchr(p, ']', (size_t)(end - p));
        if (rb == NULL)
            return bm_seterr(err, errlen, BM_EINVAL, "unclosed '[' in Redis URL host");
        hend = rb;
        p++;
        if (rb + 1 < end) {
            if (rb[1] != ':')
                return bm_seterr(err, errlen, BM_EINVAL, "junk after ']' in Redis URL");
            portp = rb + 2;
        }
    } else {
        const char *colon = memchr(p, ':', (size_t)(end - p));
        hend = colon != NULL ? colon : end;
        if (colon != NULL)
            portp = colon + 1;
    }
    if (hend == p)
        return bm_seterr(err, errlen, BM_EINVAL, "Redis URL has no host");
    c->host = strndup(p, (size_t)(hend - p));
    if (c->host == NULL)
        return bm_seterr(err, errlen, BM_ENOMEM, "out of memory");
    long v = 6379;
    if (portp != NULL && (!parse_uint(portp, (size_t)(end - portp), 65535, &v) || v == 0))
        return bm_seterr(err, errlen, BM_EINVAL, "bad port in Redis URL");
    c->port = (int)v;
    v = 0;
    if (slash != NULL && slash[1] != '\0' &&
        !parse_uint(slash + 1, strlen(slash + 1), INT_MAX, &v))
        return bm_seterr(err, errlen, BM_EINVAL, "bad database number in Redis URL");
    c->db = (int)v;
    return BM_OK;
}

/* ---- lifecycle ---------------------------------------------------------- */

void bm_redis_close(struct bm_redis *c)
{
    if (c == NULL)
        return;
    bm_cluster_close(c->cl);
    if (c->tr != NULL)
        c->tr->close(c->tr);
    if (c->reader != NULL)
        redisReaderFree(c->reader);
    while (c->scripts != NULL) {
        struct script_entry *e = c->scripts;
        c->scripts = e->next;
        free(e->script);
        free(e);
    }
    for (size_t i = 0; i < sizeof c->tls_own / sizeof c->tls_own[0]; i++)
        free(c->tls_own[i]);
    free(c->host);
    free(c->user);
    if (c->password != NULL) {
        /* Do not leave the secret in freed heap memory. */
        volatile char *pw = c->password;
        for (size_t i = 0; pw[i] != '\0'; i++)
            pw[i] = '\0';
    }
    free(c->password);
    free(c->obuf);
    free(c->rbuf);
    free(c->dbuf);
    free(c->spare);
    free(c);
}

struct bm_redis *bm_redis_connect(const char *url, const struct bm_redis_opts *opts,
                                  char *err, size_t errlen)
{
    if (url == NULL) {
        bm_seterr(err, errlen, BM_EINVAL, "no Redis URL");
        return NULL;
    }
    if (strncmp(url, "redis+cluster://", 16) == 0 || strncmp(url, "rediss+cluster://", 17) == 0)
        return bm_redis_connect_cluster(&url, 1, opts, err, errlen);
    struct bm_redis *c = calloc(1, sizeof *c);
    if (c == NULL) {
        bm_seterr(err, errlen, BM_ENOMEM, "out of memory");
        return NULL;
    }
    if (opts != NULL)
        c->opts = *opts;
    if (c->opts.connect_timeout_ms <= 0)
        c->opts.connect_timeout_ms = DEFAULT_CONNECT_TIMEOUT_MS;
    if (c->opts.io_timeout_ms <= 0)
        c->opts.io_timeout_ms = DEFAULT_IO_TIMEOUT_MS;
    if (c->opts.max_reply_bytes == 0)
        c->opts.max_reply_bytes = BM_REDIS_DEFAULT_MAX_REPLY_BYTES;
    if (c->opts.max_elements == 0)
        c->opts.max_elements = BM_REDIS_DEFAULT_MAX_ELEMENTS;
    if (c->opts.max_elements > INT_MAX)     /* hiredis 0.14 counts in int */
        c->opts.max_elements = INT_MAX;
    if (c->opts.reconnect_attempts == 0)
        c->opts.reconnect_attempts = DEFAULT_RECONNECT_ATTEMPTS;
    bool tls = false;
    if (parse_url(c, url, &tls, err, errlen) != BM_OK) {
        bm_redis_close(c);
        return NULL;
    }
    /* Copy the TLS strings: reconnects dial again long after the caller's
     * opts may be gone. The opts copy must not keep the caller's pointers. */
    const char **tls_in[4] = { &c->opts.tls_ca_file, &c->opts.tls_cert_file,
                               &c->opts.tls_key_file, &c->opts.tls_server_name };
    for (size_t i = 0; i < sizeof tls_in / sizeof tls_in[0]; i++) {
        if (*tls_in[i] != NULL && (c->tls_own[i] = strdup(*tls_in[i])) == NULL) {
            bm_seterr(err, errlen, BM_ENOMEM, "out of memory");
            bm_redis_close(c);
            return NULL;
        }
        *tls_in[i] = c->tls_own[i];
    }
    c->tls.ca_file = c->tls_own[0];
    c->tls.cert_file = c->tls_own[1];
    c->tls.key_file = c->tls_own[2];
    c->tls.server_name = c->tls_own[3];
    if (c->opts.dial == NULL) {
        /* The scheme alone decides: a rediss:// URL never falls back to
         * plain text, and TLS files given with redis:// are not used. */
        c->opts.dial = tls ? bm_transport_tls_dial : bm_transport_tcp_dial;
        c->opts.dial_arg = tls ? &c->tls : NULL;
    }
    c->rbuf = malloc(RBUF_SIZE);
    if (c->rbuf == NULL) {
        bm_seterr(err, errlen, BM_ENOMEM, "out of memory");
        bm_redis_close(c);
        return NULL;
    }
    int rc = conn_open(c);
    if (rc != BM_OK) {
        bm_seterr(err, errlen, rc, "%s", c->errstr);
        bm_redis_close(c);
        return NULL;
    }
    return c;
}

struct bm_redis *bm_redis_connect_cluster(const char *const *seeds, size_t nseeds,
                                          const struct bm_redis_opts *opts, char *err,
                                          size_t errlen)
{
    struct bm_redis *c = calloc(1, sizeof *c);
    if (c == NULL) {
        bm_seterr(err, errlen, BM_ENOMEM, "out of memory");
        return NULL;
    }
    if ((c->cl = bm_cluster_open(seeds, nseeds, opts, err, errlen)) == NULL) {
        free(c);
        return NULL;
    }
    return c;
}

int bm_redis_each_master(struct bm_redis *c, bm_redis_node_fn fn, void *arg)
{
    if (c->cl == NULL)
        return fn(c, arg);
    char msg[256];
    return cluster_rc(c, bm_cluster_each_master(c->cl, fn, arg, msg, sizeof msg), msg);
}

bool bm_redis_is_cluster(const struct bm_redis *c)
{
    return c->cl != NULL;
}

/* ---- helpers ------------------------------------------------------------ */

int bm_redis_ping(struct bm_redis *c)
{
    struct bm_redis_reply *r = NULL;
    int rc = bm_redis_cmd(c, &r, "PING", (const char *)NULL);
    if (rc == BM_OK && (r->type != BM_REDIS_STATUS || strcmp(r->str, "PONG") != 0))
        rc = set_err(c, BM_EPROTO, "PING was not answered with PONG");
    bm_redis_reply_free(r);
    return rc;
}

int bm_redis_get(struct bm_redis *c, const void *key, size_t keylen, void **val,
                 size_t *vallen)
{
    *val = NULL;
    *vallen = 0;
    const char *argv[2] = { "GET", key };
    size_t lens[2] = { 3, keylen };
    struct bm_redis_reply *r = NULL;
    int rc = bm_redis_command(c, 2, argv, lens, &r);
    if (rc == BM_OK) {
        if (r->type == BM_REDIS_NIL) {
            rc = BM_ENOTFOUND;
        } else if (r->type != BM_REDIS_STRING) {
            rc = set_err(c, BM_EPROTO, "GET answered with reply type %d", (int)r->type);
        } else {
            /* Hand over the parser's buffer: no second copy of a big blob. */
            *val = r->str;
            *vallen = r->len;
            r->str = NULL;
        }
    }
    bm_redis_reply_free(r);
    return rc;
}

int bm_redis_set(struct bm_redis *c, const void *key, size_t keylen, const void *val,
                 size_t vallen, long long ttl_ms)
{
    char ttl[24];
    const char *argv[5] = { "SET", key, val != NULL ? val : "", "PX", ttl };
    size_t lens[5] = { 3, keylen, vallen, 2, 0 };
    int argc = 3;
    if (ttl_ms > 0) {
        lens[4] = (size_t)snprintf(ttl, sizeof ttl, "%lld", ttl_ms);
        argc = 5;
    }
    struct bm_redis_reply *r = NULL;
    int rc = bm_redis_command(c, argc, argv, lens, &r);
    if (rc == BM_OK && r->type != BM_REDIS_STATUS)
        rc = set_err(c, BM_EPROTO, "SET answered with reply type %d", (int)r->type);
    bm_redis_reply_free(r);
    return rc;
}

int bm_redis_del(struct bm_redis *c, const void *key, size_t keylen)
{
    const char *argv[2] = { "DEL", key };
    size_t lens[2] = { 3, keylen };
    struct bm_redis_reply *r = NULL;
    int rc = bm_redis_command(c, 2, argv, lens, &r);
    if (rc == BM_OK) {
        if (r->type != BM_REDIS_INTEGER)
            rc = set_err(c, BM_EPROTO, "DEL answered with reply type %d", (int)r->type);
        else if (r->integer == 0)
            rc = BM_ENOTFOUND;
    }
    bm_redis_reply_free(r);
    return rc;
}

int bm_redis_script_load(struct bm_redis *c, const char *script, char sha[41])
{
    struct bm_redis_reply *r = NULL;
    sha[0] = '\0';
    int rc = bm_redis_cmd(c, &r, "SCRIPT", "LOAD", script, (const char *)NULL);
    if (rc == BM_OK) {
        if (r->type != BM_REDIS_STRING || r->len != 40)
            rc = set_err(c, BM_EPROTO, "SCRIPT LOAD did not answer with a SHA1");
        else
            memcpy(sha, r->str, 41);
    }
    bm_redis_reply_free(r);
    return rc;
}

int bm_redis_evalsha(struct bm_redis *c, const char *sha, int nkeys, int argc,
                     const char *const *argv, const size_t *argvlen,
                     struct bm_redis_reply **reply)
{
    if (reply != NULL)
        *reply = NULL;
    if (sha == NULL || argc < 0 || nkeys < 0 || nkeys > argc ||
        (argc > 0 && (argv == NULL || argvlen == NULL)))
        return set_err(c, BM_EINVAL, "EVALSHA: bad sha, key count or arguments");
    char nk[16];
    int n = argc + 3;
    const char **av = malloc((size_t)n * sizeof *av);
    size_t *al = malloc((size_t)n * sizeof *al);
    if (av == NULL || al == NULL) {
        free(av);
        free(al);
        return set_err(c, BM_ENOMEM, "out of memory");
    }
    snprintf(nk, sizeof nk, "%d", nkeys);
    av[0] = "EVALSHA";
    al[0] = 7;
    av[1] = sha;
    al[1] = strlen(sha);
    av[2] = nk;
    al[2] = strlen(nk);
    for (int i = 0; i < argc; i++) {
        av[3 + i] = argv[i];
        al[3 + i] = argvlen[i];
    }
    int rc = bm_redis_command(c, n, av, al, reply);
    free(av);
    free(al);
    return rc;
}

static struct script_entry *script_find(struct bm_redis *c, const char *script)
{
    for (struct script_entry *e = c->scripts; e != NULL; e = e->next)
        if (strcmp(e->script, script) == 0)
            return e;
    return NULL;
}

/* Remember script -> sha; when the cache is full the oldest entry goes (it
 * only costs one SCRIPT LOAD if used again). */
static void script_remember(struct bm_redis *c, const char *script, const char *sha)
{
    struct script_entry *e = calloc(1, sizeof *e);
    if (e == NULL || (e->script = strdup(script)) == NULL) {
        free(e);
        return;     /* no cache entry: the next call loads again */
    }
    memcpy(e->sha, sha, 41);
    e->next = c->scripts;
    c->scripts = e;
    if (++c->nscripts > SCRIPT_CACHE_MAX) {
        struct script_entry **pp = &c->scripts;
        while ((*pp)->next != NULL)
            pp = &(*pp)->next;
        free((*pp)->script);
        free(*pp);
        *pp = NULL;
        c->nscripts--;
    }
}

int bm_redis_eval(struct bm_redis *c, const char *script, int nkeys, int argc,
                  const char *const *argv, const size_t *argvlen,
                  struct bm_redis_reply **reply)
{
    if (reply != NULL)
        *reply = NULL;
    if (script == NULL)
        return set_err(c, BM_EINVAL, "EVAL: no script");
    if (c->cl != NULL) {
        /* Each node keeps its own script cache and NOSCRIPT retry. */
        char msg[256];
        return cluster_rc(c, bm_cluster_eval(c->cl, script, nkeys, argc, argv, argvlen, reply,
                                             msg, sizeof msg), msg);
    }
    struct script_entry *e = script_find(c, script);
    char sha[41];
    int rc;
    if (e != NULL) {
        memcpy(sha, e->sha, sizeof sha);
    } else {
        if ((rc = bm_redis_script_load(c, script, sha)) != BM_OK)
            return rc;
        script_remember(c, script, sha);
    }
    struct bm_redis_reply *r = NULL;
    rc = bm_redis_evalsha(c, sha, nkeys, argc, argv, argvlen, &r);
    if (rc == BM_EREDIS && r != NULL && strncmp(r->str, "NOSCRIPT", 8) == 0) {
        /* The server forgot it (restart, failover, SCRIPT FLUSH); nothing ran,
         * so loading and running again is safe. */
        bm_redis_reply_free(r);
        r = NULL;
        if ((rc = bm_redis_script_load(c, script, sha)) != BM_OK)
            return rc;
        if ((e = script_find(c, script)) != NULL)
            memcpy(e->sha, sha, sizeof sha);
        rc = bm_redis_evalsha(c, sha, nkeys, argc, argv, argvlen, &r);
    }
    if (reply != NULL)
        *reply = r;
    else
        bm_redis_reply_free(r);
    return rc;
}

int bm_redis_server_version(struct bm_redis *c, char *buf, size_t len)
{
    struct bm_redis_reply *r = NULL;
    if (len > 0)
        buf[0] = '\0';
    int rc = bm_redis_cmd(c, &r, "INFO", "server", (const char *)NULL);
    if (rc != BM_OK) {
        bm_redis_reply_free(r);
        return rc;
    }
    static const char key[] = "redis_version:";
    const char *v = NULL;
    if (r->type == BM_REDIS_STRING) {
        for (const char *line = r->str; line != NULL && v == NULL;) {
            if (strncmp(line, key, sizeof key - 1) == 0)
                v = line + sizeof key - 1;
            line = strchr(line, '\n');
            if (line != NULL)
                line++;
        }
    }
    if (v == NULL) {
        rc = set_err(c, BM_EPROTO, "INFO server has no redis_version");
    } else {
        size_t n = strcspn(v, "\r\n");
        if (n + 1 > len)
            rc = set_err(c, BM_ERANGE, "version buffer of %zu bytes is too small", len);
        else {
            memcpy(buf, v, n);
            buf[n] = '\0';
        }
    }
    bm_redis_reply_free(r);
    return rc;
}
