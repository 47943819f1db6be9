/* Replay file writer and reader (format in replayfile.h and docs/formats.md).
 *
 * Main invariant of the reader: the cursor never moves past 'end'; each
 * length field is compared with its limit and with the bytes left before
 * the bytes it announces are touched. Strings (header names, expect) are
 * stored with a terminating NUL that the reader checks, so parsed records
 * can point into the file buffer without copying. */
#include "replayfile.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define TAG_RECORD 0x52u  /* 'R' */
#define TAG_END 0x45u     /* 'E' */

struct bm_replay_writer {
    FILE *f;
    char *path;
    uint64_t count;
    uint64_t last_t;
    int err;              /* sticky: first failure */
};

static void put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static int w_bytes(struct bm_replay_writer *w, const void *p, size_t n)
{
    if (n && fwrite(p, 1, n, w->f) != n)
        return BM_EIO;
    return BM_OK;
}

static int w_u32(struct bm_replay_writer *w, uint32_t v)
{
    uint8_t b[4];
    put_u32(b, v);
    return w_bytes(w, b, 4);
}

static int w_u64(struct bm_replay_writer *w, uint64_t v)
{
    uint8_t b[8];
    put_u64(b, v);
    return w_bytes(w, b, 8);
}

/* A length-prefixed blob; NULL is written as the null length. */
static int w_blob(struct bm_replay_writer *w, const void *p, size_t n)
{
    if (p == NULL)
        return w_u32(w, BM_REPLAY_NULL_LEN);
    int rc = w_u32(w, (uint32_t)n);
    return rc ? rc : w_bytes(w, p, n);
}

/* A length-prefixed string followed by its NUL. */
static int w_str(struct bm_replay_writer *w, const char *s, size_t n)
{
    int rc = w_u32(w, (uint32_t)n);
    if (rc == BM_OK)
        rc = w_bytes(w, s, n + 1);
    return rc;
}

struct bm_replay_writer *bm_replay_writer_open(const char *path, const char *topic,
                                               int64_t created_unix_ms, char *err,
                                               size_t errlen)
{
    size_t tl = topic ? strlen(topic) : 0;
    if (tl > BM_REPLAY_MAX_TOPIC) {
        bm_seterr(err, errlen, BM_ERANGE, "replay file: topic name longer than %u bytes",
                  BM_REPLAY_MAX_TOPIC);
        return NULL;
    }
    struct bm_replay_writer *w = calloc(1, sizeof *w);
    if (w == NULL || (w->path = strdup(path)) == NULL) {
        free(w);
        bm_seterr(err, errlen, BM_ENOMEM, "replay file: out of memory");
        return NULL;
    }
    w->f = fopen(path, "wb");
    if (w->f == NULL) {
        bm_seterr(err, errlen, BM_EIO, "%s: %s", path, strerror(errno));
        free(w->path);
        free(w);
        return NULL;
    }
    int rc = w_bytes(w, BM_REPLAY_MAGIC, 8);
    if (rc == BM_OK)
        rc = w_u32(w, BM_REPLAY_VERSION);
    if (rc == BM_OK)
        rc = w_u64(w, (uint64_t)created_unix_ms);
    if (rc == BM_OK)
        rc = w_str(w, topic ? topic : "", tl);
    if (rc != BM_OK) {
        bm_seterr(err, errlen, rc, "%s: write failed", path);
        bm_replay_writer_free(w);
        return NULL;
    }
    return w;
}

int bm_replay_writer_add(struct bm_replay_writer *w, const struct bm_replay_record *r, char *err,
                         size_t errlen)
{
    if (w->err)
        return bm_seterr(err, errlen, w->err, "replay file: writer failed earlier");
    if (r->t_us < w->last_t)
        return bm_seterr(err, errlen, w->err = BM_EINVAL,
                         "replay file: record times must not decrease");
    if ((r->key && r->keylen > BM_REPLAY_MAX_KEY) ||
        (r->value && r->valuelen > BM_REPLAY_MAX_VALUE) || r->nheaders > BM_REPLAY_MAX_HEADERS ||
        w->count >= BM_REPLAY_MAX_RECORDS)
        return bm_seterr(err, errlen, w->err = BM_ERANGE, "replay file: record over a size limit");
    for (size_t i = 0; i < r->nheaders; i++) {
        const struct bm_replay_hdr *h = &r->headers[i];
        if (strlen(h->name) > BM_REPLAY_MAX_HDR_NAME ||
            (h->value && h->len > BM_REPLAY_MAX_HDR_VALUE))
            return bm_seterr(err, errlen, w->err = BM_ERANGE,
                             "replay file: header over a size limit");
    }
    if (r->expect && strlen(r->expect) > BM_REPLAY_MAX_EXPECT)
        return bm_seterr(err, errlen, w->err = BM_ERANGE, "replay file: expect too long");
    uint8_t tag = TAG_RECORD;
    int rc = w_bytes(w, &tag, 1);
    if (rc == BM_OK)
        rc = w_u64(w, r->t_us);
    if (rc == BM_OK)
        rc = w_blob(w, r->key, r->keylen);
    if (rc == BM_OK)
        rc = w_blob(w, r->value, r->valuelen);
    if (rc == BM_OK)
        rc = w_u32(w, (uint32_t)r->nheaders);
    for (size_t i = 0; rc == BM_OK && i < r->nheaders; i++) {
        rc = w_str(w, r->headers[i].name, strlen(r->headers[i].name));
        if (rc == BM_OK)
            rc = w_blob(w, r->headers[i].value, r->headers[i].len);
    }
    if (rc == BM_OK)
        rc = r->expect ? w_str(w, r->expect, strlen(r->expect)) : w_u32(w, BM_REPLAY_NULL_LEN);
    if (rc != BM_OK)
        return bm_seterr(err, errlen, w->err = rc, "%s: write failed", w->path);
    w->count++;
    w->last_t = r->t_us;
    return BM_OK;
}

int bm_replay_writer_close(struct bm_replay_writer *w, char *err, size_t errlen)
{
    int rc = w->err;
    if (rc == BM_OK) {
        uint8_t tag = TAG_END;
        rc = w_bytes(w, &tag, 1);
        if (rc == BM_OK)
            rc = w_u64(w, w->count);
        if (rc == BM_OK && fflush(w->f) != 0)
            rc = BM_EIO;
    }
    if (fclose(w->f) != 0 && rc == BM_OK)
        rc = BM_EIO;
    w->f = NULL;
    if (rc != BM_OK)
        bm_seterr(err, errlen, rc, "%s: could not finish the replay file", w->path);
    free(w->path);
    free(w);
    return rc;
}

void bm_replay_writer_free(struct bm_replay_writer *w)
{
    if (w == NULL)
        return;
    if (w->f)
        fclose(w->f);
    free(w->path);
    free(w);
}

/* ------------------------------------------------------------- reading */

struct rd {
    const uint8_t *p, *end;
};

static int r_need(struct rd *r, size_t n)
{
    return (size_t)(r->end - r->p) >= n ? 0 : -1;
}

static int r_u32(struct rd *r, uint32_t *v)
{
    if (r_need(r, 4))
        return -1;
    *v = 0;
    for (int i = 0; i < 4; i++)
        *v |= (uint32_t)r->p[i] << (8 * i);
    r->p += 4;
    return 0;
}

static int r_u64(struct rd *r, uint64_t *v)
{
    if (r_need(r, 8))
        return -1;
    *v = 0;
    for (int i = 0; i < 8; i++)
        *v |= (uint64_t)r->p[i] << (8 * i);
    r->p += 8;
    return 0;
}

/* Blob with null length allowed; -1 truncated, -2 over 'max'. */
static int r_blob(struct rd *r, uint32_t max, const uint8_t **out, size_t *len)
{
    uint32_t n;
    if (r_u32(r, &n))
        return -1;
    if (n == BM_REPLAY_NULL_LEN) {
        *out = NULL;
        *len = 0;
        return 0;
    }
    if (n > max)
        return -2;
    if (r_need(r, n))
        return -1;
    *out = r->p;
    *len = n;
    r->p += n;
    return 0;
}

/* String with its NUL and no NUL inside; -1 truncated/malformed, -2 over max. */
static int r_str(struct rd *r, uint32_t max, const char **out)
{
    uint32_t n;
    if (r_u32(r, &n))
        return -1;
    if (n > max)
        return -2;
    if (r_need(r, (size_t)n + 1) || r->p[n] != 0 || memchr(r->p, 0, n) != NULL)
        return -1;
    *out = (const char *)r->p;
    r->p += (size_t)n + 1;
    return 0;
}

static int parse_fail(struct bm_replay *out, int rc, char *err, size_t errlen, const char *what,
                size_t at)
{
    free(out->records);
    free(out->hdrs);
    memset(out, 0, sizeof *out);
    return bm_seterr(err, errlen, rc, "replay file: %s at byte %zu", what, at);
}

/* Grow *arr (elements of 'size') to hold at least 'need'. */
static int grow(void **arr, size_t *cap, size_t need, size_t size)
{
    if (need <= *cap)
        return 0;
    size_t n = *cap ? *cap * 2 : 64;
    while (n < need)
        n *= 2;
    void *p = realloc(*arr, n * size);
    if (p == NULL)
        return -1;
    *arr = p;
    *cap = n;
    return 0;
}

int bm_replay_parse(const uint8_t *buf, size_t len, struct bm_replay *out, char *err,
                    size_t errlen)
{
    memset(out, 0, sizeof *out);
    struct rd r = { buf, buf + len };
    uint64_t created;
    const char *topic;
    if (r_need(&r, 8) || memcmp(r.p, BM_REPLAY_MAGIC, 8) != 0)
        return parse_fail(out, BM_EPROTO, err, errlen, "no BMREPLAY magic", 0);
    r.p += 8;
    if (r_u32(&r, &out->version))
        return parse_fail(out, BM_EPROTO, err, errlen, "truncated header", len);
    if (out->version != BM_REPLAY_VERSION) {
        uint32_t v = out->version;
        parse_fail(out, BM_EUNSUPPORTED, err, errlen, "", 8);
        return bm_seterr(err, errlen, BM_EUNSUPPORTED,
                         "replay file: format version %u, this build reads %u", v,
                         BM_REPLAY_VERSION);
    }
    if (r_u64(&r, &created))
        return parse_fail(out, BM_EPROTO, err, errlen, "truncated header", len);
    int s = r_str(&r, BM_REPLAY_MAX_TOPIC, &topic);
    if (s)
        return parse_fail(out, s == -2 ? BM_ERANGE : BM_EPROTO, err, errlen, "bad topic",
                    (size_t)(r.p - buf));
    out->created_unix_ms = (int64_t)created;
    memcpy(out->topic, topic, strlen(topic) + 1);

    size_t cap = 0, hcap = 0, nh = 0;
    uint64_t last_t = 0;
    /* Header pointers are resolved after parsing: hdrs may move on realloc,
     * so records first keep an index into it. */
    size_t *hstart = NULL, hscap = 0;
    for (;;) {
        size_t at = (size_t)(r.p - buf);
        if (r_need(&r, 1)) {
            free(hstart);
            return parse_fail(out, BM_EPROTO, err, errlen, "truncated (no trailer)", at);
        }
        uint8_t tag = *r.p++;
        if (tag == TAG_END) {
            uint64_t count;
            if (r_u64(&r, &count) || count != out->nrecords || r.p != r.end) {
                free(hstart);
                return parse_fail(out, BM_EPROTO, err, errlen, "bad trailer", at);
            }
            break;
        }
        if (tag != TAG_RECORD || out->nrecords >= BM_REPLAY_MAX_RECORDS) {
            free(hstart);
            return parse_fail(out, BM_EPROTO, err, errlen, "bad record tag", at);
        }
        if (grow((void **)&out->records, &cap, out->nrecords + 1, sizeof *out->records) ||
            grow((void **)&hstart, &hscap, out->nrecords + 1, sizeof *hstart)) {
            free(hstart);
            return parse_fail(out, BM_ENOMEM, err, errlen, "out of memory", at);
        }
        struct bm_replay_record *rec = &out->records[out->nrecords];
        memset(rec, 0, sizeof *rec);
        uint32_t nhdr;
        int e = 0;
        if (r_u64(&r, &rec->t_us))
            e = -1;
        if (!e)
            e = r_blob(&r, BM_REPLAY_MAX_KEY, &rec->key, &rec->keylen);
        if (!e)
            e = r_blob(&r, BM_REPLAY_MAX_VALUE, &rec->value, &rec->valuelen);
        if (!e && r_u32(&r, &nhdr))
            e = -1;
        if (!e && nhdr > BM_REPLAY_MAX_HEADERS)
            e = -2;
        if (!e && rec->t_us < last_t)
            e = -3;
        if (!e && grow((void **)&out->hdrs, &hcap, nh + nhdr, sizeof *out->hdrs))
            e = -4;
        hstart[out->nrecords] = nh;
        for (uint32_t i = 0; !e && i < nhdr; i++) {
            struct bm_replay_hdr *h = &out->hdrs[nh];
            e = r_str(&r, BM_REPLAY_MAX_HDR_NAME, &h->name);
            if (!e)
                e = r_blob(&r, BM_REPLAY_MAX_HDR_VALUE, &h->value, &h->len);
            nh++;
        }
        rec->nheaders = e ? 0 : nhdr;
        if (!e) {
            uint32_t n;
            struct rd save = r;
            if (r_u32(&r, &n))
                e = -1;
            else if (n == BM_REPLAY_NULL_LEN)
                rec->expect = NULL;
            else {
                r = save;
                e = r_str(&r, BM_REPLAY_MAX_EXPECT, &rec->expect);
            }
        }
        if (e) {
            free(hstart);
            return parse_fail(out, e == -2 ? BM_ERANGE : e == -4 ? BM_ENOMEM : BM_EPROTO, err, errlen,
                        e == -3 ? "record times decrease" : "malformed or truncated record", at);
        }
        last_t = rec->t_us;
        out->nrecords++;
    }
    for (size_t i = 0; i < out->nrecords; i++)
        out->records[i].headers = out->records[i].nheaders ? &out->hdrs[hstart[i]] : NULL;
    free(hstart);
    return BM_OK;
}

int bm_replay_read(const char *path, struct bm_replay *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return bm_seterr(err, errlen, BM_EIO, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || st.st_size < 0 ||
        (uint64_t)st.st_size > ((uint64_t)BM_REPLAY_MAX_VALUE * 1024)) {
        fclose(f);
        return bm_seterr(err, errlen, BM_EIO, "%s: not a regular file or too large", path);
    }
    size_t n = (size_t)st.st_size;
    uint8_t *buf = malloc(n ? n : 1);
    if (buf == NULL) {
        fclose(f);
        return bm_seterr(err, errlen, BM_ENOMEM, "%s: out of memory", path);
    }
    size_t got = fread(buf, 1, n, f);
    fclose(f);
    if (got != n) {
        free(buf);
        return bm_seterr(err, errlen, BM_EIO, "%s: short read", path);
    }
    int rc = bm_replay_parse(buf, n, out, err, errlen);
    if (rc != BM_OK) {
        free(buf);
        return rc;
    }
    out->buf = buf;
    return BM_OK;
}

void bm_replay_free(struct bm_replay *f)
{
    if (f == NULL)
        return;
    free(f->records);
    free(f->hdrs);
    free(f->buf);
    memset(f, 0, sizeof *f);
}
