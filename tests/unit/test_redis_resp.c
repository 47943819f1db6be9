/* Unit tests of the Redis connection layer without a network: reply parsing,
 * the reply limits (refused from the RESP header, before the payload is
 * read), broken-connection and reconnect bookkeeping, command encoding, URL
 * parsing and the typed helpers.
 *
 * A scripted in-memory transport replays canned RESP bytes in chunks of a
 * chosen size (so every header and payload split is exercised) and records
 * what the client wrote. This tests our parser and state machine against
 * exact bytes; behaviour against a real server is in
 * tests/integration/test_redis.c. One test also drives the real fd transport
 * over a socketpair. The test_direct_* cases cover big top-level bulks (64 KiB
 * up to 16 MiB) that skip hiredis, and bm_redis_reply_recycle; run them in an
 * -DBM_SANITIZE=address,undefined build to catch leaks and double frees. */
#include "testutil.h"

#include "common/err.h"
#include "store/redis.h"
#include "store/transport.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* ---- the scripted transport ---- */

struct fake {
    const char *data;       /* canned server bytes */
    size_t len, pos;
    size_t chunk;           /* most bytes handed out per read */
    size_t split_at;        /* if > 0: no read crosses this offset */
    bool timeout_at_end;    /* drained: BM_ETIMEDOUT instead of EOF */
    char written[65536];    /* what the client sent (truncated) */
    size_t wlen;
    int writes;             /* write calls */
    int dials;              /* successful dials */
    bool refuse_dial;
    char host[64];
    int port;
};

static int fake_read(struct bm_transport *t, void *buf, size_t cap, size_t *got,
                     int timeout_ms, char *err, size_t errlen)
{
    struct fake *f = t->impl;
    *got = 0;
    /* The liveness probe (timeout 0): a real server says nothing unasked. */
    if (timeout_ms == 0)
        return BM_ETIMEDOUT;
    if (f->pos == f->len) {
        if (f->timeout_at_end)
            return bm_seterr(err, errlen, BM_ETIMEDOUT, "fake: timed out");
        return bm_seterr(err, errlen, BM_EIO, "fake: closed");
    }
    size_t n = f->len - f->pos;
    if (n > f->chunk)
        n = f->chunk;
    if (n > cap)
        n = cap;
    if (f->pos < f->split_at && n > f->split_at - f->pos)
        n = f->split_at - f->pos;
    memcpy(buf, f->data + f->pos, n);
    f->pos += n;
    *got = n;
    return BM_OK;
}

static int fake_write(struct bm_transport *t, const void *buf, size_t len,
                      int timeout_ms, char *err, size_t errlen)
{
    struct fake *f = t->impl;
    (void)timeout_ms;
    (void)err;
    (void)errlen;
    size_t n = len;
    if (n > sizeof f->written - f->wlen)
        n = sizeof f->written - f->wlen;
    memcpy(f->written + f->wlen, buf, n);
    f->wlen += n;
    f->writes++;
    return BM_OK;
}

static void fake_close(struct bm_transport *t)
{
    free(t);
}

static struct bm_transport *fake_dial(void *arg, const char *host, int port,
                                      int connect_timeout_ms, char *err, size_t errlen)
{
    struct fake *f = arg;
    (void)connect_timeout_ms;
    if (f->refuse_dial) {
        bm_seterr(err, errlen, BM_EIO, "fake: refused");
        return NULL;
    }
    struct bm_transport *t = calloc(1, sizeof *t);
    assert_non_null(t);
    t->read = fake_read;
    t->write = fake_write;
    t->close = fake_close;
    t->impl = f;
    snprintf(f->host, sizeof f->host, "%s", host);
    f->port = port;
    f->dials++;
    return t;
}

static void fake_feed(struct fake *f, const char *data, size_t len)
{
    f->data = data;
    f->len = len;
    f->pos = 0;
}

#define FEED(f, lit) fake_feed((f), (lit), sizeof(lit) - 1)

static struct bm_redis *fake_connect(struct fake *f, size_t max_bytes, size_t max_elems)
{
    struct bm_redis_opts o = { 0 };
    char err[256];
    o.dial = fake_dial;
    o.dial_arg = f;
    o.max_reply_bytes = max_bytes;
    o.max_elements = max_elems;
    o.reconnect_attempts = -1;
    if (f->chunk == 0)
        f->chunk = 65536;
    struct bm_redis *c = bm_redis_connect("redis://fake:7000", &o, err, sizeof err);
    if (c == NULL)
        fail_msg("connect: %s", err);
    return c;
}

/* Send one dummy command and return its result; the canned bytes decide. */
static int roundtrip(struct bm_redis *c, struct bm_redis_reply **r)
{
    return bm_redis_cmd(c, r, "X", (const char *)NULL);
}

/* ---- parsing ---- */

static const char all_types[] =
    "+OK\r\n"
    "-ERR wrong\r\n"
    ":-42\r\n"
    "$6\r\na\0b\r\nc\r\n"
    "$-1\r\n"
    "$0\r\n\r\n"
    "*3\r\n$1\r\nx\r\n*2\r\n:1\r\n*0\r\n*-1\r\n"
    "+PONG\r\n";

static void check_all_types(size_t chunk)
{
    struct fake f = { .chunk = chunk };
    FEED(&f, all_types);
    struct bm_redis *c = fake_connect(&f, 0, 0);
    const char *argv[1] = { "X" };
    size_t lens[1] = { 1 };
    for (int i = 0; i < 8; i++)
        assert_int_equal(bm_redis_append(c, 1, argv, lens), BM_OK);
    assert_int_equal(bm_redis_pending(c), 8);
    struct bm_redis_reply *r;

    assert_int_equal(bm_redis_get_reply(c, &r), BM_OK);
    assert_int_equal(r->type, BM_REDIS_STATUS);
    assert_string_equal(r->str, "OK");
    bm_redis_reply_free(r);

    assert_int_equal(bm_redis_get_reply(c, &r), BM_EREDIS);
    assert_non_null(r);
    assert_int_equal(r->type, BM_REDIS_ERROR);
    assert_string_equal(r->str, "ERR wrong");
    assert_string_equal(bm_redis_errstr(c), "ERR wrong");
    assert_int_equal(bm_redis_err(c), BM_EREDIS);
    bm_redis_reply_free(r);

    assert_int_equal(bm_redis_get_reply(c, &r), BM_OK);
    assert_int_equal(r->type, BM_REDIS_INTEGER);
    assert_true(r->integer == -42);
    bm_redis_reply_free(r);

    assert_int_equal(bm_redis_get_reply(c, &r), BM_OK);
    assert_int_equal(r->type, BM_REDIS_STRING);
    assert_int_equal(r->len, 6);
    assert_memory_equal(r->str, "a\0b\r\nc", 6);
    assert_int_equal(r->str[6], '\0');
    bm_redis_reply_free(r);

    assert_int_equal(bm_redis_get_reply(c, &r), BM_OK);
    assert_int_equal(r->type, BM_REDIS_NIL);
    bm_redis_reply_free(r);

    assert_int_equal(bm_redis_get_reply(c, &r), BM_OK);
    assert_int_equal(r->type, BM_REDIS_STRING);
    assert_int_equal(r->len, 0);
    bm_redis_reply_free(r);

    assert_int_equal(bm_redis_get_reply(c, &r), BM_OK);
    assert_int_equal(r->type, BM_REDIS_ARRAY);
    assert_int_equal(r->elements, 3);
    assert_int_equal(r->element[0]->type, BM_REDIS_STRING);
    assert_string_equal(r->element[0]->str, "x");
    assert_int_equal(r->element[1]->type, BM_REDIS_ARRAY);
    assert_int_equal(r->element[1]->elements, 2);
    assert_true(r->element[1]->element[0]->integer == 1);
    assert_int_equal(r->element[1]->element[1]->type, BM_REDIS_ARRAY);
    assert_int_equal(r->element[1]->element[1]->elements, 0);
    assert_int_equal(r->element[2]->type, BM_REDIS_NIL);
    bm_redis_reply_free(r);

    assert_int_equal(bm_redis_get_reply(c, NULL), BM_OK);   /* discarded PONG */
    assert_int_equal(bm_redis_pending(c), 0);
    assert_int_equal(bm_redis_get_reply(c, &r), BM_EINVAL); /* nothing owed */
    assert_null(r);
    /* Error replies never break the connection. */
    assert_int_equal(f.dials, 1);
    assert_int_equal(f.writes, 1);  /* eight commands, one write */
    bm_redis_close(c);
}

static void test_parse_all_types(void **state)
{
    (void)state;
    static const size_t chunks[] = { 1, 2, 3, 4, 5, 7, 11, 64, 65536 };
    for (size_t i = 0; i < sizeof chunks / sizeof chunks[0]; i++)
        check_all_types(chunks[i]);
}

/* Corrupted streams must end in a clean error or a reply, never a crash,
 * hang or leak (run under the sanitizer build). Deterministic PRNG. */
static void test_mutations(void **state)
{
    (void)state;
    static const char junk[] = "$*:+-\r\n0123456789-";
    char buf[sizeof all_types];
    uint32_t x = 12345;
    for (int iter = 0; iter < 3000; iter++) {
        memcpy(buf, all_types, sizeof buf);
        int flips = 1 + iter % 4;
        for (int k = 0; k < flips; k++) {
            x = x * 1664525u + 1013904223u;
            size_t at = (x >> 8) % (sizeof buf - 1);
            x = x * 1664525u + 1013904223u;
            buf[at] = junk[(x >> 8) % (sizeof junk - 1)];
        }
        struct fake f = { .chunk = 1 + (size_t)iter % 13 };
        fake_feed(&f, buf, sizeof buf - 1);
        struct bm_redis *c = fake_connect(&f, 64, 16);
        const char *argv[1] = { "X" };
        size_t lens[1] = { 1 };
        for (int i = 0; i < 8; i++)
            assert_int_equal(bm_redis_append(c, 1, argv, lens), BM_OK);
        for (int i = 0; i < 8; i++) {
            struct bm_redis_reply *r = NULL;
            int rc = bm_redis_get_reply(c, &r);
            assert_true(rc == BM_OK || rc == BM_EREDIS || rc == BM_EPROTO ||
                        rc == BM_ERANGE || rc == BM_EIO);
            assert_true((rc == BM_OK || rc == BM_EREDIS) == (r != NULL));
            bm_redis_reply_free(r);
        }
        assert_int_equal(bm_redis_pending(c), 0);
        bm_redis_close(c);
    }
}

/* ---- limits ---- */

static void test_bulk_over_limit_not_buffered(void **state)
{
    (void)state;
    /* Header announces 1,000,000 bytes; the payload is really there, so a
     * reader that buffered first would happily swallow it. */
    size_t plen = 1000000;
    char *big = malloc(plen + 32);
    assert_non_null(big);
    int h = snprintf(big, 32, "$%zu\r\n", plen);
    memset(big + h, 'x', plen);
    memcpy(big + h + plen, "\r\n", 2);

    struct fake f = { .chunk = 4096 };
    fake_feed(&f, big, (size_t)h + plen + 2);
    struct bm_redis *c = fake_connect(&f, 1024, 0);
    struct bm_redis_reply *r = (struct bm_redis_reply *)&f; /* must be reset */
    assert_int_equal(roundtrip(c, &r), BM_ERANGE);
    assert_null(r);
    assert_int_equal(bm_redis_err(c), BM_ERANGE);
    assert_non_null(strstr(bm_redis_errstr(c), "1000000"));
    assert_non_null(strstr(bm_redis_errstr(c), "1024-byte reply limit"));
    /* One read of one chunk, then the stream was dropped. */
    assert_true(f.pos <= 4096);

    /* Broken: the next command dials again and works. */
    FEED(&f, "+OK\r\n");
    assert_int_equal(roundtrip(c, &r), BM_OK);
    assert_string_equal(r->str, "OK");
    bm_redis_reply_free(r);
    assert_int_equal(f.dials, 2);
    bm_redis_close(c);
    free(big);
}

static char *make_array_of_bulks(int n, size_t each, size_t *len)
{
    char *s = malloc(32 + (size_t)n * (each + 32));
    assert_non_null(s);
    size_t o = (size_t)snprintf(s, 32, "*%d\r\n", n);
    for (int i = 0; i < n; i++) {
        o += (size_t)snprintf(s + o, 32, "$%zu\r\n", each);
        memset(s + o, 'a' + i, each);
        o += each;
        memcpy(s + o, "\r\n", 2);
        o += 2;
    }
    *len = o;
    return s;
}

static void test_total_over_limit(void **state)
{
    (void)state;
    size_t len;
    char *s = make_array_of_bulks(3, 400, &len);    /* 1228 wire bytes */
    static const size_t chunks[] = { 1, 13, 65536 };
    for (size_t i = 0; i < 3; i++) {
        struct fake f = { .chunk = chunks[i] };
        struct bm_redis_reply *r;
        fake_feed(&f, s, len);
        struct bm_redis *c = fake_connect(&f, 1024, 0);
        assert_int_equal(roundtrip(c, &r), BM_ERANGE);
        assert_non_null(strstr(bm_redis_errstr(c), "total size"));
        bm_redis_close(c);

        /* The same reply fits a 2000-byte limit. */
        f.dials = 0;
        fake_feed(&f, s, len);
        c = fake_connect(&f, 2000, 0);
        assert_int_equal(roundtrip(c, &r), BM_OK);
        assert_int_equal(r->elements, 3);
        assert_int_equal(r->element[2]->len, 400);
        assert_int_equal(r->element[2]->str[399], 'c');
        bm_redis_reply_free(r);
        bm_redis_close(c);
    }
    free(s);
}

static void test_elements_over_limit(void **state)
{
    (void)state;
    struct fake f = { .chunk = 3 };
    struct bm_redis_reply *r;
    struct bm_redis *c = fake_connect(&f, 0, 10);

    FEED(&f, "*11\r\n:1\r\n");
    assert_int_equal(roundtrip(c, &r), BM_ERANGE);
    assert_non_null(strstr(bm_redis_errstr(c), "11 elements"));

    /* Nested arrays count together: 2 + 5 + 6 > 10. */
    FEED(&f, "*2\r\n*5\r\n:1\r\n:1\r\n:1\r\n:1\r\n:1\r\n*6\r\n");
    assert_int_equal(roundtrip(c, &r), BM_ERANGE);

    /* Exactly at the limit is fine, and budgets restart with each reply. */
    FEED(&f, "*10\r\n:1\r\n:1\r\n:1\r\n:1\r\n:1\r\n:1\r\n:1\r\n:1\r\n:1\r\n:1\r\n"
             "*10\r\n:1\r\n:1\r\n:1\r\n:1\r\n:1\r\n:1\r\n:1\r\n:1\r\n:1\r\n:9\r\n");
    assert_int_equal(roundtrip(c, &r), BM_OK);
    assert_int_equal(r->elements, 10);
    bm_redis_reply_free(r);
    assert_int_equal(roundtrip(c, &r), BM_OK);
    assert_true(r->element[9]->integer == 9);
    bm_redis_reply_free(r);
    assert_int_equal(f.dials, 3);
    bm_redis_close(c);

    /* The default limit refuses a two-billion-element header at once. */
    struct fake g = { .chunk = 65536 };
    FEED(&g, "*2000000000\r\n");
    c = fake_connect(&g, 0, 0);
    assert_int_equal(roundtrip(c, &r), BM_ERANGE);
    bm_redis_close(c);
}

static void expect_proto(const char *bytes, size_t len)
{
    struct fake f = { .chunk = 2 };
    struct bm_redis_reply *r;
    fake_feed(&f, bytes, len);
    struct bm_redis *c = fake_connect(&f, 0, 0);
    int rc = roundtrip(c, &r);
    if (rc != BM_EPROTO)
        fail_msg("%.*s: got %d (%s)", (int)len, bytes, rc, bm_redis_errstr(c));
    assert_null(r);
    bm_redis_close(c);
}

#define EXPECT_PROTO(lit) expect_proto((lit), sizeof(lit) - 1)

static void test_malformed(void **state)
{
    (void)state;
    EXPECT_PROTO("?what\r\n");
    EXPECT_PROTO("$-5\r\n");
    EXPECT_PROTO("$12a\r\nabc\r\n");
    EXPECT_PROTO("$\r\n");
    EXPECT_PROTO("$5\n");
    EXPECT_PROTO(":abc\r\n");
    EXPECT_PROTO("$9999999999999999999\r\n");     /* 19 digits */
    EXPECT_PROTO("$1111111111111111111111111111111111111111\r\n");
    EXPECT_PROTO("*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n");
    /* hiredis 0.14 would take any two bytes after a payload. */
    EXPECT_PROTO("$3\r\nabcXY+OK\r\n");
    EXPECT_PROTO("$3\r\nabc\n\r+OK\r\n");
    EXPECT_PROTO("*2\r\n$1\r\na\r\r:1\r\n");
    /* Seven levels are fine. */
    struct fake f = { .chunk = 5 };
    struct bm_redis_reply *r;
    FEED(&f, "*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:5\r\n");
    struct bm_redis *c = fake_connect(&f, 0, 0);
    assert_int_equal(roundtrip(c, &r), BM_OK);
    bm_redis_reply_free(r);
    bm_redis_close(c);
}

static void test_pipeline_before_bad_reply(void **state)
{
    (void)state;
    struct fake f = { .chunk = 65536 };
    FEED(&f, "+A\r\n+B\r\n$100000\r\nxxxx");
    struct bm_redis *c = fake_connect(&f, 1000, 0);
    const char *argv[1] = { "X" };
    size_t lens[1] = { 1 };
    struct bm_redis_reply *r;
    for (int i = 0; i < 5; i++)
        assert_int_equal(bm_redis_append(c, 1, argv, lens), BM_OK);
    assert_int_equal(bm_redis_get_reply(c, &r), BM_OK);
    assert_string_equal(r->str, "A");
    bm_redis_reply_free(r);
    assert_int_equal(bm_redis_get_reply(c, &r), BM_OK);
    assert_string_equal(r->str, "B");
    bm_redis_reply_free(r);
    assert_int_equal(bm_redis_get_reply(c, &r), BM_ERANGE);
    /* The fourth reply is lost with the stream. */
    assert_int_equal(bm_redis_get_reply(c, &r), BM_ERANGE);
    assert_non_null(strstr(bm_redis_errstr(c), "connection lost before reply"));
    assert_int_equal(bm_redis_pending(c), 1);
    /* The fifth is still owed but lost: a new command reconnects and drops it. */
    FEED(&f, "+C\r\n");
    assert_int_equal(bm_redis_command(c, 1, argv, lens, &r), BM_OK);
    assert_string_equal(r->str, "C");
    bm_redis_reply_free(r);
    assert_int_equal(bm_redis_pending(c), 0);
    assert_int_equal(f.dials, 2);
    /* On a healthy stream bm_redis_command refuses while replies are owed. */
    assert_int_equal(bm_redis_append(c, 1, argv, lens), BM_OK);
    assert_int_equal(bm_redis_command(c, 1, argv, lens, &r), BM_EINVAL);
    assert_null(r);
    bm_redis_close(c);
}

/* ---- broken streams ---- */

static void test_eof_and_timeout_mid_reply(void **state)
{
    (void)state;
    struct fake f = { .chunk = 65536 };
    struct bm_redis_reply *r;
    FEED(&f, "$10\r\nabc");
    struct bm_redis *c = fake_connect(&f, 0, 0);
    assert_int_equal(roundtrip(c, &r), BM_EIO);
    assert_null(r);
    assert_non_null(strstr(bm_redis_errstr(c), "fake: closed"));

    f.timeout_at_end = true;
    FEED(&f, "*2\r\n:1\r\n");
    assert_int_equal(roundtrip(c, &r), BM_ETIMEDOUT);
    assert_int_equal(f.dials, 2);

    /* After a timeout the late bytes cannot be trusted: new stream. */
    FEED(&f, ":7\r\n");
    assert_int_equal(roundtrip(c, &r), BM_OK);
    assert_true(r->integer == 7);
    bm_redis_reply_free(r);
    assert_int_equal(f.dials, 3);

    /* Reconnect failing is reported, and retried by the next command. */
    FEED(&f, "$5\r\nab");
    f.timeout_at_end = false;
    assert_int_equal(roundtrip(c, &r), BM_EIO);
    f.refuse_dial = true;
    FEED(&f, ":1\r\n");
    assert_int_equal(roundtrip(c, &r), BM_EIO);
    assert_non_null(strstr(bm_redis_errstr(c), "fake: refused"));
    assert_int_equal(f.pos, 0);
    f.refuse_dial = false;
    assert_int_equal(roundtrip(c, &r), BM_OK);
    assert_true(r->integer == 1);
    bm_redis_reply_free(r);
    assert_int_equal(f.dials, 4);
    bm_redis_close(c);
}

/* ---- large bulks: the direct path ----
 *
 * A top-level "$<len>" of at least 64 KiB whose header arrives whole in one
 * read is received straight into its own buffer instead of through hiredis;
 * a header split across reads takes the hiredis path. Both must deliver the
 * same bytes and enforce the same rules, so every case runs at many read
 * sizes (1 byte splits every header; the whole stream splits none). */

#define KIB ((size_t)1 << 10)
#define MIB ((size_t)1 << 20)

/* A growable byte string for building canned server streams. */
struct sbuf {
    char *p;
    size_t len, cap;
};

static void sb_put(struct sbuf *b, const void *data, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n)
            cap *= 2;
        b->p = realloc(b->p, cap);
        assert_non_null(b->p);
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
}

static void sb_str(struct sbuf *b, const char *s)
{
    sb_put(b, s, strlen(s));
}

static void sb_bulk(struct sbuf *b, const char *data, size_t n)
{
    char h[32];
    int hl = snprintf(h, sizeof h, "$%zu\r\n", n);
    sb_put(b, h, (size_t)hl);
    sb_put(b, data, n);
    sb_put(b, "\r\n", 2);
}

/* 'n' pseudo-random bytes (never periodic, so a shifted or stale copy
 * cannot compare equal), including CR, LF, '$' and NUL. */
static char *make_payload(size_t n, uint32_t seed)
{
    char *p = malloc(n > 0 ? n : 1);
    assert_non_null(p);
    uint32_t x = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        x = x * 1664525u + 1013904223u;
        p[i] = (char)(x >> 24);
    }
    return p;
}

/* One expected reply of a scripted pipeline. */
struct want {
    enum bm_redis_reply_type type;
    const char *data;           /* STRING/STATUS/ERROR bytes; ARRAY: [0] */
    size_t len;
    long long integer;          /* INTEGER; ARRAY: integer of element [1] */
};

static void append_n(struct bm_redis *c, size_t n)
{
    const char *argv[1] = { "GET" };
    size_t lens[1] = { 3 };
    for (size_t i = 0; i < n; i++)
        assert_int_equal(bm_redis_append(c, 1, argv, lens), BM_OK);
}

static void check_reply(const struct bm_redis_reply *r, const struct want *w, size_t chunk,
                        size_t idx)
{
    if (r == NULL || r->type != w->type)
        fail_msg("chunk %zu reply %zu: type %d, want %d", chunk, idx,
                 r != NULL ? (int)r->type : -1, (int)w->type);
    switch (w->type) {
    case BM_REDIS_STRING:
    case BM_REDIS_STATUS:
    case BM_REDIS_ERROR:
        if (r->len != w->len || memcmp(r->str, w->data, w->len) != 0)
            fail_msg("chunk %zu reply %zu: %zu bytes differ from the %zu sent", chunk,
                     idx, r->len, w->len);
        assert_int_equal(r->str[r->len], '\0');
        break;
    case BM_REDIS_INTEGER:
        assert_true(r->integer == w->integer);
        break;
    case BM_REDIS_ARRAY:
        assert_int_equal(r->elements, 2);
        assert_int_equal(r->element[0]->type, BM_REDIS_STRING);
        assert_int_equal(r->element[0]->len, w->len);
        assert_memory_equal(r->element[0]->str, w->data, w->len);
        assert_true(r->element[1]->integer == w->integer);
        break;
    case BM_REDIS_NIL:
        break;
    }
}

/* Replay 'stream' at read size 'chunk' as the answers to n pipelined
 * commands and compare every reply; 'recycle' returns them through
 * bm_redis_reply_recycle instead of bm_redis_reply_free. */
static void run_pipeline(const struct sbuf *stream, const struct want *w, size_t n,
                         size_t chunk, bool recycle)
{
    struct fake f = { .chunk = chunk };
    fake_feed(&f, stream->p, stream->len);
    struct bm_redis *c = fake_connect(&f, 0, 0);
    append_n(c, n);
    for (size_t i = 0; i < n; i++) {
        struct bm_redis_reply *r = NULL;
        int rc = bm_redis_get_reply(c, &r);
        int want_rc = w[i].type == BM_REDIS_ERROR ? BM_EREDIS : BM_OK;
        if (rc != want_rc)
            fail_msg("chunk %zu reply %zu: rc %d (%s)", chunk, i, rc, bm_redis_errstr(c));
        check_reply(r, &w[i], chunk, i);
        if (recycle)
            bm_redis_reply_recycle(c, r);
        else
            bm_redis_reply_free(r);
    }
    assert_int_equal(bm_redis_pending(c), 0);
    assert_int_equal(f.pos, f.len);     /* every byte consumed, none extra */
    assert_int_equal(f.dials, 1);       /* never broke */
    bm_redis_close(c);
}

static void test_direct_pipeline(void **state)
{
    (void)state;
    const size_t sizes[] = { 64 * KIB, 64 * KIB + 1, MIB, 64 * KIB - 1, 64 * KIB };
    char *p[5];
    for (size_t i = 0; i < 5; i++)
        p[i] = make_payload(sizes[i], (uint32_t)i + 1);

    /* Small replies, bulks just under, at and over the threshold, a big bulk
     * nested in an array (never direct), back-to-back big bulks. */
    struct sbuf s = { 0 };
    sb_str(&s, "+OK\r\n");
    sb_bulk(&s, p[0], sizes[0]);
    sb_str(&s, ":5\r\n");
    sb_bulk(&s, p[1], sizes[1]);
    sb_str(&s, "-ERR x\r\n");
    sb_str(&s, "*2\r\n");
    sb_bulk(&s, p[1], sizes[1]);
    sb_str(&s, ":9\r\n");
    sb_bulk(&s, p[2], sizes[2]);
    sb_str(&s, "$3\r\nabc\r\n$-1\r\n");
    sb_bulk(&s, p[3], sizes[3]);
    sb_bulk(&s, p[4], sizes[4]);
    sb_bulk(&s, p[2], sizes[2]);
    sb_str(&s, ":1\r\n");
    const struct want w[] = {
        { BM_REDIS_STATUS, "OK", 2, 0 },
        { BM_REDIS_STRING, p[0], sizes[0], 0 },
        { BM_REDIS_INTEGER, NULL, 0, 5 },
        { BM_REDIS_STRING, p[1], sizes[1], 0 },
        { BM_REDIS_ERROR, "ERR x", 5, 0 },
        { BM_REDIS_ARRAY, p[1], sizes[1], 9 },
        { BM_REDIS_STRING, p[2], sizes[2], 0 },
        { BM_REDIS_STRING, "abc", 3, 0 },
        { BM_REDIS_NIL, NULL, 0, 0 },
        { BM_REDIS_STRING, p[3], sizes[3], 0 },
        { BM_REDIS_STRING, p[4], sizes[4], 0 },
        { BM_REDIS_STRING, p[2], sizes[2], 0 },
        { BM_REDIS_INTEGER, NULL, 0, 1 },
    };
    const size_t nw = sizeof w / sizeof w[0];
    static const size_t chunks[] = { 1, 2, 3, 7, 13, 4093, 65535, 65536, 65537, MIB, 0 };
    for (size_t i = 0; i < sizeof chunks / sizeof chunks[0]; i++) {
        size_t chunk = chunks[i] != 0 ? chunks[i] : s.len;     /* 0: whole */
        run_pipeline(&s, w, nw, chunk, false);
        run_pipeline(&s, w, nw, chunk, true);
    }

    /* 16 MiB blobs between small replies; byte-sized reads of 16 MiB would
     * only test the same code more slowly. */
    size_t big = 16 * MIB;
    char *pb = make_payload(big, 99);
    struct sbuf s2 = { 0 };
    sb_str(&s2, ":1\r\n");
    sb_bulk(&s2, pb, big);
    sb_bulk(&s2, p[0], sizes[0]);
    sb_bulk(&s2, pb, big);
    sb_str(&s2, "+OK\r\n");
    const struct want w2[] = {
        { BM_REDIS_INTEGER, NULL, 0, 1 },
        { BM_REDIS_STRING, pb, big, 0 },
        { BM_REDIS_STRING, p[0], sizes[0], 0 },
        { BM_REDIS_STRING, pb, big, 0 },
        { BM_REDIS_STATUS, "OK", 2, 0 },
    };
    static const size_t chunks2[] = { 4093, 65536, MIB + 3, 0 };
    for (size_t i = 0; i < sizeof chunks2 / sizeof chunks2[0]; i++) {
        size_t chunk = chunks2[i] != 0 ? chunks2[i] : s2.len;
        run_pipeline(&s2, w2, 5, chunk, i % 2 == 1);
    }
    free(pb);
    free(s2.p);
    free(s.p);
    for (size_t i = 0; i < 5; i++)
        free(p[i]);
}

static void test_direct_header_split(void **state)
{
    (void)state;
    size_t n = 70000;
    char *p = make_payload(n, 7);
    struct sbuf s = { 0 };
    sb_str(&s, "+OK\r\n");
    size_t hdr = s.len;                 /* offset of the '$' */
    sb_bulk(&s, p, n);
    sb_str(&s, ":3\r\n");
    const struct want w[] = {
        { BM_REDIS_STATUS, "OK", 2, 0 },
        { BM_REDIS_STRING, p, n, 0 },
        { BM_REDIS_INTEGER, NULL, 0, 3 },
    };
    /* Every cut from just before the '$' to just after the '\n' of
     * "$70000\r\n", then cuts inside the payload and in its CRLF; each
     * with reads of the whole rest and of odd sizes. */
    size_t cuts[16], nc = 0;
    for (size_t k = 0; k <= 8; k++)
        cuts[nc++] = hdr + k;
    cuts[nc++] = hdr + 8 + 1;
    cuts[nc++] = hdr + 8 + n / 2;
    cuts[nc++] = hdr + 8 + n;
    cuts[nc++] = hdr + 8 + n + 1;
    for (size_t i = 0; i < nc; i++) {
        static const size_t chunks[] = { 7, 65536, 0 };
        for (size_t j = 0; j < 3; j++) {
            struct fake f = { .chunk = chunks[j] != 0 ? chunks[j] : s.len,
                              .split_at = cuts[i] };
            fake_feed(&f, s.p, s.len);
            struct bm_redis *c = fake_connect(&f, 0, 0);
            append_n(c, 3);
            for (size_t k = 0; k < 3; k++) {
                struct bm_redis_reply *r = NULL;
                int rc = bm_redis_get_reply(c, &r);
                if (rc != BM_OK)
                    fail_msg("cut %zu reply %zu: rc %d (%s)", cuts[i], k, rc,
                             bm_redis_errstr(c));
                check_reply(r, &w[k], cuts[i], k);
                bm_redis_reply_free(r);
            }
            assert_int_equal(f.pos, f.len);
            bm_redis_close(c);
        }
    }
    free(s.p);
    free(p);
}

static void test_direct_over_limit(void **state)
{
    (void)state;
    size_t n = MIB;
    char *p = make_payload(n, 3);
    struct sbuf s = { 0 };
    sb_str(&s, ":7\r\n");
    sb_bulk(&s, p, n);
    sb_str(&s, "+NEVER\r\n");
    static const size_t chunks[] = { 1, 7, 65536, 0 };
    for (size_t i = 0; i < sizeof chunks / sizeof chunks[0]; i++) {
        struct fake f = { .chunk = chunks[i] != 0 ? chunks[i] : s.len };
        fake_feed(&f, s.p, s.len);
        struct bm_redis *c = fake_connect(&f, 500000, 0);
        append_n(c, 3);
        struct bm_redis_reply *r = NULL;
        assert_int_equal(bm_redis_get_reply(c, &r), BM_OK);
        assert_true(r->integer == 7);
        bm_redis_reply_free(r);
        r = (struct bm_redis_reply *)&f;        /* must be reset */
        assert_int_equal(bm_redis_get_reply(c, &r), BM_ERANGE);
        assert_null(r);
        assert_non_null(strstr(bm_redis_errstr(c), "1048576"));
        assert_non_null(strstr(bm_redis_errstr(c), "500000-byte reply limit"));
        /* Refused from the header: at most one read buffer was taken. */
        assert_true(f.pos <= 65536);
        /* The reply after it was lost with the stream. */
        assert_int_equal(bm_redis_get_reply(c, &r), BM_ERANGE);
        assert_non_null(strstr(bm_redis_errstr(c), "connection lost before reply"));
        assert_int_equal(bm_redis_pending(c), 0);
        /* The next command reconnects. */
        FEED(&f, "+OK\r\n");
        assert_int_equal(roundtrip(c, &r), BM_OK);
        assert_string_equal(r->str, "OK");
        bm_redis_reply_free(r);
        assert_int_equal(f.dials, 2);
        bm_redis_close(c);
    }

    /* The exact boundary on the direct path: "$65536\r\n" + payload + CRLF
     * is 65546 wire bytes. */
    struct sbuf e = { 0 };
    sb_bulk(&e, p, 64 * KIB);
    assert_int_equal(e.len, 65546);
    for (size_t limit = 65545; limit <= 65546; limit++) {
        struct fake f = { .chunk = e.len };
        fake_feed(&f, e.p, e.len);
        struct bm_redis *c = fake_connect(&f, limit, 0);
        struct bm_redis_reply *r = NULL;
        int rc = roundtrip(c, &r);
        if (limit == 65545) {
            assert_int_equal(rc, BM_ERANGE);
            assert_null(r);
        } else {
            assert_int_equal(rc, BM_OK);
            assert_int_equal(r->len, 64 * KIB);
            assert_memory_equal(r->str, p, 64 * KIB);
            bm_redis_reply_free(r);
        }
        bm_redis_close(c);
    }
    free(e.p);
    free(s.p);
    free(p);
}

/* Run one command against 'stream' at read size 'chunk'; expect 'want_rc'
 * and then that the next command works on a new connection. */
static void expect_broken(const struct sbuf *stream, size_t chunk, bool timeout,
                          int want_rc, const char *want_msg)
{
    struct fake f = { .chunk = chunk != 0 ? chunk : stream->len,
                      .timeout_at_end = timeout };
    fake_feed(&f, stream->p, stream->len);
    struct bm_redis *c = fake_connect(&f, 0, 0);
    struct bm_redis_reply *r = (struct bm_redis_reply *)&f;
    int rc = roundtrip(c, &r);
    if (rc != want_rc)
        fail_msg("chunk %zu: rc %d, want %d (%s)", chunk, rc, want_rc, bm_redis_errstr(c));
    assert_null(r);
    if (want_msg != NULL && strstr(bm_redis_errstr(c), want_msg) == NULL)
        fail_msg("chunk %zu: errstr \"%s\" lacks \"%s\"", chunk, bm_redis_errstr(c),
                 want_msg);
    /* A big reply on the new connection arrives intact. */
    size_t n = 100000;
    char *p = make_payload(n, 11);
    struct sbuf ok = { 0 };
    sb_bulk(&ok, p, n);
    f.timeout_at_end = false;
    fake_feed(&f, ok.p, ok.len);
    assert_int_equal(roundtrip(c, &r), BM_OK);
    assert_int_equal(r->len, n);
    assert_memory_equal(r->str, p, n);
    bm_redis_reply_free(r);
    assert_int_equal(f.dials, 2);
    bm_redis_close(c);
    free(ok.p);
    free(p);
}

static void test_direct_bad_terminator(void **state)
{
    (void)state;
    size_t n = 70000;
    char *p = make_payload(n, 5);
    static const char *const ends[] = { "XY", "\rX", "X\n", "\n\r", "\r\r" };
    static const size_t chunks[] = { 1, 3, 7, 4096, 65536, 0 };
    for (size_t e = 0; e < sizeof ends / sizeof ends[0]; e++) {
        struct sbuf s = { 0 };
        char h[32];
        int hl = snprintf(h, sizeof h, "$%zu\r\n", n);
        sb_put(&s, h, (size_t)hl);
        sb_put(&s, p, n);
        sb_str(&s, ends[e]);
        sb_str(&s, ":1\r\n");
        for (size_t i = 0; i < sizeof chunks / sizeof chunks[0]; i++)
            expect_broken(&s, chunks[i], false, BM_EPROTO, "CRLF");
        free(s.p);
    }
    free(p);
}

static void test_direct_eof_mid_payload(void **state)
{
    (void)state;
    size_t n = MIB;
    char *p = make_payload(n, 9);
    /* Cut after the header, mid payload, right before the CRLF, between
     * CR and LF. */
    const size_t keep[] = { 0, 1, n / 2, n, n + 1 };
    static const size_t chunks[] = { 4096, 65536, 0 };
    for (size_t k = 0; k < sizeof keep / sizeof keep[0]; k++) {
        struct sbuf s = { 0 };
        sb_str(&s, "$1048576\r\n");
        sb_put(&s, p, keep[k] <= n ? keep[k] : n);
        if (keep[k] > n)
            sb_str(&s, "\r");
        for (size_t i = 0; i < sizeof chunks / sizeof chunks[0]; i++) {
            expect_broken(&s, chunks[i], false, BM_EIO, "fake: closed");
            expect_broken(&s, chunks[i], true, BM_ETIMEDOUT, NULL);
        }
        free(s.p);
    }
    /* Byte-sized reads too (the hiredis path), on a shorter cut. */
    struct sbuf s = { 0 };
    sb_str(&s, "$1048576\r\n");
    sb_put(&s, p, 5000);
    expect_broken(&s, 1, false, BM_EIO, "fake: closed");
    free(s.p);
    free(p);
}

/* Get the next reply of a pipeline, check it is a STRING equal to
 * p[0..n), and return it. */
static struct bm_redis_reply *next_blob(struct bm_redis *c, const char *p, size_t n)
{
    struct bm_redis_reply *r = NULL;
    assert_int_equal(bm_redis_get_reply(c, &r), BM_OK);
    assert_int_equal(r->type, BM_REDIS_STRING);
    assert_int_equal(r->len, n);
    assert_memory_equal(r->str, p, n);
    assert_int_equal(r->str[n], '\0');
    return r;
}

static void test_direct_recycle(void **state)
{
    (void)state;
    const size_t n = MIB;
    char *p[4];
    for (size_t i = 0; i < 4; i++)
        p[i] = make_payload(n, 20 + (uint32_t)i);
    char *small = make_payload(64 * KIB, 30);

    /* A run of equal blobs reuses one buffer; each reply still carries its
     * own bytes (different payloads, so stale data would show). Then a
     * smaller blob fits the spare too; a bigger one needs a new buffer. */
    struct sbuf s = { 0 };
    for (size_t i = 0; i < 4; i++)
        sb_bulk(&s, p[i], n);
    sb_bulk(&s, small, 64 * KIB);
    sb_str(&s, ":1\r\n");
    static const size_t chunks[] = { 4093, 65536, 0 };
    for (size_t ci = 0; ci < sizeof chunks / sizeof chunks[0]; ci++) {
        struct fake f = { .chunk = chunks[ci] != 0 ? chunks[ci] : s.len };
        fake_feed(&f, s.p, s.len);
        struct bm_redis *c = fake_connect(&f, 0, 0);
        append_n(c, 6);
        struct bm_redis_reply *r = next_blob(c, p[0], n);
        uintptr_t buf = (uintptr_t)r->str;
        bm_redis_reply_recycle(c, r);
        for (size_t i = 1; i < 4; i++) {
            r = next_blob(c, p[i], n);
            assert_true((uintptr_t)r->str == buf);
            bm_redis_reply_recycle(c, r);
        }
        r = next_blob(c, small, 64 * KIB);
        assert_true((uintptr_t)r->str == buf);
        bm_redis_reply_recycle(c, r);
        /* The last reply drains the pipeline: the spare is released (the
         * sanitizer build checks nothing leaks or is freed twice). */
        assert_int_equal(bm_redis_get_reply(c, &r), BM_OK);
        assert_true(r->integer == 1);
        bm_redis_reply_recycle(c, r);
        assert_int_equal(bm_redis_pending(c), 0);
        bm_redis_close(c);
    }

    /* Recycling with nothing owed frees at once; so does recycling on a
     * broken connection; NULL and non-strings are accepted. */
    struct sbuf s2 = { 0 };
    sb_bulk(&s2, p[0], n);
    sb_bulk(&s2, p[1], n);
    sb_put(&s2, "$1048576\r\nabc", 13);     /* EOF mid payload */
    struct fake f = { .chunk = 65536 };
    fake_feed(&f, s2.p, s2.len);
    struct bm_redis *c = fake_connect(&f, 0, 0);
    append_n(c, 4);
    struct bm_redis_reply *r1 = next_blob(c, p[0], n);    /* held */
    struct bm_redis_reply *r2 = next_blob(c, p[1], n);
    bm_redis_reply_recycle(c, r2);                  /* kept as the spare */
    struct bm_redis_reply *r3 = NULL;
    assert_int_equal(bm_redis_get_reply(c, &r3), BM_EIO);
    assert_null(r3);
    bm_redis_reply_recycle(c, r1);                  /* broken: freed */
    assert_int_equal(bm_redis_get_reply(c, &r3), BM_EIO);
    assert_int_equal(bm_redis_pending(c), 0);
    /* A new stream: a single big reply; recycling it with nothing owed
     * frees it at once. */
    struct sbuf s3 = { 0 };
    sb_bulk(&s3, p[2], n);
    fake_feed(&f, s3.p, s3.len);
    append_n(c, 1);
    struct bm_redis_reply *r4 = next_blob(c, p[2], n);
    assert_int_equal(bm_redis_pending(c), 0);
    bm_redis_reply_recycle(c, r4);
    assert_int_equal(f.dials, 2);
    free(s3.p);

    FEED(&f, ":4\r\n+OK\r\n");
    append_n(c, 2);
    assert_int_equal(bm_redis_get_reply(c, &r1), BM_OK);
    bm_redis_reply_recycle(c, r1);                  /* an integer */
    bm_redis_reply_recycle(c, NULL);
    assert_int_equal(bm_redis_get_reply(c, &r1), BM_OK);
    assert_string_equal(r1->str, "OK");
    bm_redis_reply_recycle(NULL, r1);               /* no connection: freed */

    /* A spare still held when the connection closes is freed with it. */
    fake_feed(&f, s.p, s.len);
    append_n(c, 6);
    r1 = next_blob(c, p[0], n);
    bm_redis_reply_recycle(c, r1);
    bm_redis_close(c);

    free(s2.p);
    free(s.p);
    free(small);
    for (size_t i = 0; i < 4; i++)
        free(p[i]);
}

/* ---- encoding ---- */

static void test_encoding(void **state)
{
    (void)state;
    struct fake f = { .chunk = 65536 };
    struct bm_redis_reply *r;
    FEED(&f, "+OK\r\n+1\r\n+2\r\n+3\r\n");
    struct bm_redis *c = fake_connect(&f, 0, 0);
    assert_int_equal(bm_redis_cmd(c, &r, "SET", "k", "v", (const char *)NULL), BM_OK);
    bm_redis_reply_free(r);
    static const char want[] = "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n";
    assert_int_equal(f.wlen, sizeof want - 1);
    assert_memory_equal(f.written, want, sizeof want - 1);

    /* Binary arguments, three pipelined commands, one write. */
    f.wlen = 0;
    f.writes = 0;
    const char *argv[2] = { "GET", "a\0\r\nb" };
    size_t lens[2] = { 3, 5 };
    for (int i = 0; i < 3; i++)
        assert_int_equal(bm_redis_append(c, 2, argv, lens), BM_OK);
    assert_int_equal(f.writes, 0);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(bm_redis_get_reply(c, &r), BM_OK);
        assert_int_equal(r->str[0], '1' + i);
        bm_redis_reply_free(r);
    }
    assert_int_equal(f.writes, 1);
    static const char one[] = "*2\r\n$3\r\nGET\r\n$5\r\na\0\r\nb\r\n";
    assert_int_equal(f.wlen, 3 * (sizeof one - 1));
    for (int i = 0; i < 3; i++)
        assert_memory_equal(f.written + (size_t)i * (sizeof one - 1), one, sizeof one - 1);

    assert_int_equal(bm_redis_command(c, 0, argv, lens, &r), BM_EINVAL);
    assert_int_equal(bm_redis_cmd(c, &r, (const char *)NULL, (const char *)NULL), BM_EINVAL);
    bm_redis_close(c);
}

/* ---- URL and handshake ---- */

static void test_url(void **state)
{
    (void)state;
    struct fake f = { .chunk = 65536 };
    struct bm_redis_opts o = { 0 };
    char err[256];
    o.dial = fake_dial;
    o.dial_arg = &f;
    o.reconnect_attempts = -1;

    FEED(&f, "+OK\r\n+OK\r\n");
    struct bm_redis *c =
        bm_redis_connect("redis://us%40er:p%3Aw@myhost:6380/3", &o, err, sizeof err);
    assert_non_null(c);
    assert_string_equal(f.host, "myhost");
    assert_int_equal(f.port, 6380);
    static const char hs[] = "*3\r\n$4\r\nAUTH\r\n$5\r\nus@er\r\n$3\r\np:w\r\n"
                             "*2\r\n$6\r\nSELECT\r\n$1\r\n3\r\n";
    assert_int_equal(f.wlen, sizeof hs - 1);
    assert_memory_equal(f.written, hs, sizeof hs - 1);
    bm_redis_close(c);

    f.wlen = 0;
    FEED(&f, "+OK\r\n");
    c = bm_redis_connect("redis://:secret@[::1]:7001", &o, err, sizeof err);
    assert_non_null(c);
    assert_string_equal(f.host, "::1");
    assert_int_equal(f.port, 7001);
    static const char hs2[] = "*2\r\n$4\r\nAUTH\r\n$6\r\nsecret\r\n";
    assert_memory_equal(f.written, hs2, sizeof hs2 - 1);
    bm_redis_close(c);

    f.wlen = 0;
    c = bm_redis_connect("redis://plainhost", &o, err, sizeof err);
    assert_non_null(c);
    assert_string_equal(f.host, "plainhost");
    assert_int_equal(f.port, 6379);
    assert_int_equal(f.wlen, 0);    /* no AUTH, no SELECT */
    bm_redis_close(c);

    /* A wrong password fails the connect with the server's words. */
    FEED(&f, "-WRONGPASS invalid username-password pair\r\n");
    c = bm_redis_connect("redis://:bad@h:1", &o, err, sizeof err);
    assert_null(c);
    assert_non_null(strstr(err, "AUTH failed"));
    assert_non_null(strstr(err, "WRONGPASS"));

    static const char *const bad[] = {
        "http://h", "redis://", "redis://:1", "redis://h:0", "redis://h:99999",
        "redis://h:12:13", "redis://h/x", "redis://h/1?x=1", "redis://pw@h",
        "redis://[::1", "redis://[::1]x", "redis://:%zz@h", "redis://:%4@h",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        c = bm_redis_connect(bad[i], &o, err, sizeof err);
        if (c != NULL)
            fail_msg("accepted %s", bad[i]);
        assert_true(err[0] != '\0');
    }

    /* TLS needs a dialer; without one: unsupported, no connection tried. */
    c = bm_redis_connect("rediss://h:1", NULL, err, sizeof err);
    assert_null(c);
    assert_non_null(strstr(err, "TLS"));

    /* A refused dial: connect gives up after its attempts. */
    f.refuse_dial = true;
    c = bm_redis_connect("redis://h:1", &o, err, sizeof err);
    assert_null(c);
    assert_non_null(strstr(err, "fake: refused"));

    bm_redis_reply_free(NULL);
    bm_redis_close(NULL);
}

/* ---- the real fd transport over a socketpair ---- */

static struct bm_transport *pair_dial(void *arg, const char *host, int port,
                                      int connect_timeout_ms, char *err, size_t errlen)
{
    int *fd = arg;
    (void)host;
    (void)port;
    (void)connect_timeout_ms;
    if (*fd < 0) {
        bm_seterr(err, errlen, BM_EIO, "pair: already used");
        return NULL;
    }
    struct bm_transport *t = bm_transport_fd_wrap(*fd, err, errlen);
    if (t != NULL)
        *fd = -1;
    return t;
}

static void test_socketpair_transport(void **state)
{
    (void)state;
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    int fd = sv[0];
    struct bm_redis_opts o = { 0 };
    char err[256];
    o.dial = pair_dial;
    o.dial_arg = &fd;
    o.reconnect_attempts = -1;
    o.io_timeout_ms = 5000;
    struct bm_redis *c = bm_redis_connect("redis://pair", &o, err, sizeof err);
    assert_non_null(c);

    const char *argv[2] = { "GET", "k" };
    size_t lens[2] = { 3, 1 };
    assert_int_equal(bm_redis_append(c, 2, argv, lens), BM_OK);
    static const char rep[] = "$3\r\na\0c\r\n";
    assert_int_equal(write(sv[1], rep, sizeof rep - 1), (ssize_t)(sizeof rep - 1));
    struct bm_redis_reply *r;
    assert_int_equal(bm_redis_get_reply(c, &r), BM_OK);
    assert_int_equal(r->len, 3);
    assert_memory_equal(r->str, "a\0c", 3);
    bm_redis_reply_free(r);
    char got[64];
    static const char want[] = "*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
    assert_int_equal(read(sv[1], got, sizeof got), (ssize_t)(sizeof want - 1));
    assert_memory_equal(got, want, sizeof want - 1);

    /* The server end goes away while idle: the next command notices before
     * sending, drops the stream and tries to reconnect (which this dialer
     * refuses), so nothing is written into a dead socket. */
    close(sv[1]);
    assert_int_equal(bm_redis_append(c, 2, argv, lens), BM_EIO);
    assert_non_null(strstr(bm_redis_errstr(c), "pair: already used"));
    assert_int_equal(bm_redis_pending(c), 0);
    bm_redis_close(c);
}

/* ---- typed helpers ---- */

static void test_helpers(void **state)
{
    (void)state;
    static const char sha[] = "0123456789abcdef0123456789abcdef01234567";
    static const char info[] = "# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\n";
    static const char head[] = "$3\r\nv\0x\r\n$-1\r\n:1\r\n:0\r\n+OK\r\n+PONG\r\n";
    char stream[1024];
    size_t o = sizeof head - 1;
    memcpy(stream, head, o);
    o += (size_t)snprintf(stream + o, sizeof stream - o, "$%zu\r\n%s\r\n",
                          sizeof info - 1, info);
    o += (size_t)snprintf(stream + o, sizeof stream - o,
                          "$40\r\n%s\r\n:7\r\n:8\r\n"
                          "-NOSCRIPT No matching script\r\n$40\r\n%s\r\n:9\r\n"
                          "-ERR boom\r\n",
                          sha, sha);
    struct fake f = { .chunk = 9 };
    fake_feed(&f, stream, o);
    struct bm_redis *c = fake_connect(&f, 0, 0);

    void *val;
    size_t vlen;
    assert_int_equal(bm_redis_get(c, "k", 1, &val, &vlen), BM_OK);
    assert_int_equal(vlen, 3);
    assert_memory_equal(val, "v\0x", 3);
    free(val);
    assert_int_equal(bm_redis_get(c, "k", 1, &val, &vlen), BM_ENOTFOUND);
    assert_null(val);
    assert_int_equal(vlen, 0);
    assert_int_equal(bm_redis_del(c, "k", 1), BM_OK);
    assert_int_equal(bm_redis_del(c, "k", 1), BM_ENOTFOUND);
    size_t before = f.wlen;
    assert_int_equal(bm_redis_set(c, "k", 1, "v", 1, 1500), BM_OK);
    static const char setpx[] =
        "*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n$2\r\nPX\r\n$4\r\n1500\r\n";
    assert_memory_equal(f.written + before, setpx, sizeof setpx - 1);
    assert_int_equal(bm_redis_ping(c), BM_OK);
    char ver[32];
    assert_int_equal(bm_redis_server_version(c, ver, sizeof ver), BM_OK);
    assert_string_equal(ver, "7.0.15");

    /* eval: SCRIPT LOAD once, then EVALSHA; NOSCRIPT reloads and retries. */
    struct bm_redis_reply *r;
    const char *argv[2] = { "key", "arg" };
    size_t lens[2] = { 3, 3 };
    before = f.wlen;
    assert_int_equal(bm_redis_eval(c, "return 7", 1, 2, argv, lens, &r), BM_OK);
    assert_true(r->integer == 7);
    bm_redis_reply_free(r);
    assert_int_equal(bm_redis_eval(c, "return 7", 1, 2, argv, lens, &r), BM_OK);
    assert_true(r->integer == 8);
    bm_redis_reply_free(r);
    assert_int_equal(bm_redis_eval(c, "return 7", 1, 2, argv, lens, &r), BM_OK);
    assert_true(r->integer == 9);
    bm_redis_reply_free(r);
    f.written[f.wlen < sizeof f.written ? f.wlen : sizeof f.written - 1] = '\0';
    int loads = 0, evals = 0;
    for (const char *p = f.written + before; (p = strstr(p, "SCRIPT")) != NULL; p++)
        loads++;
    for (const char *p = f.written + before; (p = strstr(p, "EVALSHA")) != NULL; p++)
        evals++;
    assert_int_equal(loads, 2);
    assert_int_equal(evals, 4);

    assert_int_equal(bm_redis_ping(c), BM_EREDIS);
    assert_string_equal(bm_redis_errstr(c), "ERR boom");
    bm_redis_clear_err(c);
    assert_int_equal(bm_redis_err(c), BM_OK);
    assert_string_equal(bm_redis_errstr(c), "");
    assert_int_equal(f.dials, 1);
    bm_redis_close(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_all_types),
        cmocka_unit_test(test_mutations),
        cmocka_unit_test(test_bulk_over_limit_not_buffered),
        cmocka_unit_test(test_total_over_limit),
        cmocka_unit_test(test_elements_over_limit),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_pipeline_before_bad_reply),
        cmocka_unit_test(test_eof_and_timeout_mid_reply),
        cmocka_unit_test(test_direct_pipeline),
        cmocka_unit_test(test_direct_header_split),
        cmocka_unit_test(test_direct_over_limit),
        cmocka_unit_test(test_direct_bad_terminator),
        cmocka_unit_test(test_direct_eof_mid_payload),
        cmocka_unit_test(test_direct_recycle),
        cmocka_unit_test(test_encoding),
        cmocka_unit_test(test_url),
        cmocka_unit_test(test_socketpair_transport),
        cmocka_unit_test(test_helpers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
