/* Fuzz the Redis reply path: the RESP gate (limits applied from the
 * headers, the direct path for big bulks) and the hiredis reader behind
 * it, fed through an in-memory transport exactly as a socket would.
 *
 * Byte 0 sets the read chunk size (so every header and payload split is
 * tried), byte 1 the reply limits; the rest is what the "server" sends.
 * The client then asks for replies until the connection breaks or 32
 * replies came. Invariants: nothing crashes, reads out of bounds or leaks;
 * a reply never holds more elements than the limit; a broken connection
 * stays broken. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "common/err.h"
#include "store/redis.h"
#include "store/transport.h"

struct feed {
    const uint8_t *data;
    size_t len, pos, chunk;
    int dials;
};

static int feed_read(struct bm_transport *t, void *buf, size_t cap, size_t *got,
                     int timeout_ms, char *err, size_t errlen)
{
    struct feed *f = t->impl;
    *got = 0;
    if (timeout_ms == 0) /* the liveness probe: a server says nothing unasked */
        return BM_ETIMEDOUT;
    if (f->pos == f->len)
        return bm_seterr(err, errlen, BM_EIO, "feed: closed");
    size_t n = f->len - f->pos;
    if (n > f->chunk)
        n = f->chunk;
    if (n > cap)
        n = cap;
    memcpy(buf, f->data + f->pos, n);
    f->pos += n;
    *got = n;
    return BM_OK;
}

static int feed_write(struct bm_transport *t, const void *buf, size_t len, int timeout_ms,
                      char *err, size_t errlen)
{
    (void)t, (void)buf, (void)len, (void)timeout_ms, (void)err, (void)errlen;
    return BM_OK;
}

static void feed_close(struct bm_transport *t)
{
    free(t);
}

static struct bm_transport *feed_dial(void *arg, const char *host, int port,
                                      int connect_timeout_ms, char *err, size_t errlen)
{
    struct feed *f = arg;
    (void)host, (void)port, (void)connect_timeout_ms;
    if (f->dials++ > 0) { /* one stream per input: no reconnect */
        bm_seterr(err, errlen, BM_EIO, "feed: refused");
        return NULL;
    }
    struct bm_transport *t = calloc(1, sizeof *t);
    BM_FUZZ_CHECK(t != NULL);
    t->read = feed_read;
    t->write = feed_write;
    t->close = feed_close;
    t->impl = f;
    return t;
}

static size_t count_elements(const struct bm_redis_reply *r)
{
    size_t n = 0;
    if (r->type == BM_REDIS_ARRAY)
        for (size_t i = 0; i < r->elements; i++)
            n += 1 + count_elements(r->element[i]);
    return n;
}

int bm_fuzz_resp(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    static const size_t chunks[] = {1, 2, 3, 7, 16, 64, 4096, 1 << 20};
    static const size_t max_bytes[] = {64, 1024, 1 << 16, 1 << 24};
    static const size_t max_elems[] = {4, 64, 1024};
    /* An exact-size copy of the stream, so ASan sees any read past it. */
    uint8_t *stream = malloc(size - 2 ? size - 2 : 1);
    BM_FUZZ_CHECK(stream != NULL);
    memcpy(stream, data + 2, size - 2);
    struct feed f = {stream, size - 2, 0, chunks[data[0] % 8], 0};
    struct bm_redis_opts o = {0};
    o.dial = feed_dial;
    o.dial_arg = &f;
    o.max_reply_bytes = max_bytes[data[1] % 4];
    o.max_elements = max_elems[(data[1] >> 2) % 3];
    o.reconnect_attempts = -1;
    o.io_timeout_ms = 10;
    char err[256];
    struct bm_redis *c = bm_redis_connect("redis://fuzz:7000", &o, err, sizeof err);
    BM_FUZZ_CHECK(c != NULL);
    for (int i = 0; i < 32; i++) {
        struct bm_redis_reply *r = NULL;
        int rc = bm_redis_cmd(c, &r, "GET", "k", (const char *)NULL);
        if (r != NULL) {
            BM_FUZZ_CHECK(count_elements(r) <= o.max_elements);
            bm_redis_reply_free(r);
        }
        if (rc != BM_OK && rc != BM_EREDIS)
            break;
    }
    bm_redis_close(c);
    free(stream);
    return 0;
}

#ifndef BM_FUZZ_REPLAY
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return bm_fuzz_resp(data, size);
}
#endif
