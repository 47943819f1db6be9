/* Log-linear histogram (see hist.h for the bucket layout).
 *
 * Main invariant: counts[] always sums to 'total', and every recorded value
 * v <= max_value lies in [lo, hi] of counter bm_hist_index(v), where
 * hi - lo + 1 <= max(1, lo / (S/2)). The text form is parsed as untrusted
 * input: nothing is used before it is range-checked. */
#include "hist.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HIST_MAGIC "biomatch-hist"
#define HIST_VERSION 1
#define HIST_MAX_FILE ((size_t)64 << 20)

static unsigned msb64(uint64_t v)
{
    return 63u - (unsigned)__builtin_clzll(v);
}

/* Bucket count so that the top bucket reaches max_value. */
static size_t ncounts_for(unsigned sub_bits, uint64_t max_value)
{
    size_t sub = (size_t)1 << sub_bits;
    if (max_value < sub)
        return sub;
    unsigned nb = msb64(max_value) - sub_bits + 1; /* highest bucket index */
    return sub + (size_t)nb * (sub / 2);
}

struct bm_hist *bm_hist_new(unsigned digits, uint64_t max_value, char *err, size_t errlen)
{
    if (digits < BM_HIST_MIN_DIGITS || digits > BM_HIST_MAX_DIGITS || max_value < 1 ||
        max_value > ((uint64_t)1 << 62)) {
        bm_seterr(err, errlen, BM_EINVAL, "histogram: digits must be %d..%d and max_value 1..2^62",
                  BM_HIST_MIN_DIGITS, BM_HIST_MAX_DIGITS);
        return NULL;
    }
    uint64_t need = 2;
    for (unsigned i = 0; i < digits; i++)
        need *= 10;
    unsigned sub_bits = 1;
    while (((uint64_t)1 << sub_bits) < need)
        sub_bits++;
    struct bm_hist *h = calloc(1, sizeof *h);
    if (h == NULL) {
        bm_seterr(err, errlen, BM_ENOMEM, "histogram: out of memory");
        return NULL;
    }
    h->digits = digits;
    h->sub_bits = sub_bits;
    h->max_value = max_value;
    h->ncounts = ncounts_for(sub_bits, max_value);
    h->counts = calloc(h->ncounts, sizeof *h->counts);
    if (h->counts == NULL) {
        free(h);
        bm_seterr(err, errlen, BM_ENOMEM, "histogram: out of memory");
        return NULL;
    }
    h->min = UINT64_MAX;
    return h;
}

void bm_hist_free(struct bm_hist *h)
{
    if (h == NULL)
        return;
    free(h->counts);
    free(h);
}

void bm_hist_reset(struct bm_hist *h)
{
    memset(h->counts, 0, h->ncounts * sizeof *h->counts);
    h->total = h->clamped = h->max = h->sum = 0;
    h->min = UINT64_MAX;
}

size_t bm_hist_index(const struct bm_hist *h, uint64_t v)
{
    size_t sub = (size_t)1 << h->sub_bits, half = sub / 2;
    if (v < sub)
        return (size_t)v;
    unsigned b = msb64(v) - h->sub_bits + 1;
    size_t s = (size_t)(v >> b); /* in [half, sub) */
    return sub + (size_t)(b - 1) * half + (s - half);
}

void bm_hist_range(const struct bm_hist *h, size_t idx, uint64_t *lo, uint64_t *hi)
{
    size_t sub = (size_t)1 << h->sub_bits, half = sub / 2;
    if (idx < sub) {
        *lo = *hi = idx;
        return;
    }
    unsigned b = (unsigned)((idx - sub) / half) + 1;
    uint64_t s = half + (idx - sub) % half;
    *lo = s << b;
    *hi = ((s + 1) << b) - 1;
}

void bm_hist_record(struct bm_hist *h, uint64_t v)
{
    if (v > h->max_value) {
        v = h->max_value;
        h->clamped++;
    }
    h->counts[bm_hist_index(h, v)]++;
    h->total++;
    if (v < h->min)
        h->min = v;
    if (v > h->max)
        h->max = v;
    h->sum = (h->sum > UINT64_MAX - v) ? UINT64_MAX : h->sum + v;
}

int bm_hist_merge(struct bm_hist *dst, const struct bm_hist *src)
{
    if (dst->digits != src->digits || dst->max_value != src->max_value)
        return BM_EINVAL;
    for (size_t i = 0; i < dst->ncounts; i++)
        dst->counts[i] += src->counts[i];
    dst->total += src->total;
    dst->clamped += src->clamped;
    if (src->min < dst->min)
        dst->min = src->min;
    if (src->max > dst->max)
        dst->max = src->max;
    dst->sum = (dst->sum > UINT64_MAX - src->sum) ? UINT64_MAX : dst->sum + src->sum;
    return BM_OK;
}

uint64_t bm_hist_percentile(const struct bm_hist *h, double p)
{
    if (h->total == 0)
        return 0;
    if (p >= 100.0)
        return h->max;
    if (p < 0)
        p = 0;
    /* The rank is computed in integers where possible so p99 of 100 values
     * is the 99th value, not the 100th through rounding. */
    double want = p / 100.0 * (double)h->total;
    uint64_t rank = (uint64_t)want;
    if ((double)rank < want)
        rank++;
    if (rank < 1)
        rank = 1;
    uint64_t seen = 0;
    for (size_t i = 0; i < h->ncounts; i++) {
        seen += h->counts[i];
        if (seen >= rank) {
            uint64_t lo, hi;
            bm_hist_range(h, i, &lo, &hi);
            if (hi > h->max)
                hi = h->max;
            if (hi < h->min)
                hi = h->min;
            return hi;
        }
    }
    return h->max; /* unreachable while counts sum to total */
}

double bm_hist_mean(const struct bm_hist *h)
{
    return h->total ? (double)h->sum / (double)h->total : 0.0;
}

int bm_hist_save(const struct bm_hist *h, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return bm_seterr(err, errlen, BM_EIO, "%s: %s", path, strerror(errno));
    fprintf(f, "%s %d\ndigits %u\nmax_value %" PRIu64 "\ncount %" PRIu64 "\nclamped %" PRIu64
               "\nmin %" PRIu64 "\nmax %" PRIu64 "\nsum %" PRIu64 "\n",
            HIST_MAGIC, HIST_VERSION, h->digits, h->max_value, h->total, h->clamped,
            h->total ? h->min : 0, h->max, h->sum);
    for (size_t i = 0; i < h->ncounts; i++)
        if (h->counts[i])
            fprintf(f, "c %zu %" PRIu64 "\n", i, h->counts[i]);
    fprintf(f, "end\n");
    if (ferror(f) != 0) {
        fclose(f);
        return bm_seterr(err, errlen, BM_EIO, "%s: write failed", path);
    }
    if (fclose(f) != 0)
        return bm_seterr(err, errlen, BM_EIO, "%s: %s", path, strerror(errno));
    return BM_OK;
}

/* A cursor over the text form: one line at a time, never past 'end'. */
struct cursor {
    const char *p, *end;
    unsigned line;
    char buf[128];
};

/* Copy the next line into c->buf. 0, or -1 at end of input or when a line
 * is too long or holds a NUL. */
static int next_line(struct cursor *c)
{
    const char *nl = memchr(c->p, '\n', (size_t)(c->end - c->p));
    if (nl == NULL)
        return -1; /* every line, the last included, ends with '\n' */
    size_t n = (size_t)(nl - c->p);
    if (n >= sizeof c->buf || memchr(c->p, '\0', n) != NULL)
        return -1;
    memcpy(c->buf, c->p, n);
    c->buf[n] = '\0';
    c->p = nl + 1;
    c->line++;
    return 0;
}

/* Strict decimal: digits only, no sign, no overflow. */
static int parse_u64(const char *s, uint64_t *out)
{
    if (*s < '0' || *s > '9')
        return -1;
    errno = 0;
    char *e;
    unsigned long long v = strtoull(s, &e, 10);
    if (errno != 0 || *e != '\0')
        return -1;
    *out = v;
    return 0;
}

/* "name value" with the expected name. */
static int keyed(struct cursor *c, const char *name, uint64_t *out)
{
    size_t n = strlen(name);
    if (next_line(c) != 0 || strncmp(c->buf, name, n) != 0 || c->buf[n] != ' ')
        return -1;
    return parse_u64(c->buf + n + 1, out);
}

struct bm_hist *bm_hist_parse(const char *buf, size_t len, int *rc, char *err, size_t errlen)
{
    struct cursor c = { buf, buf + len, 0, { 0 } };
    uint64_t version, digits, maxv, count, clamped, mn, mx, sum;
    struct bm_hist *h = NULL;
    int r = BM_EPROTO;
    if (next_line(&c) != 0 || strncmp(c.buf, HIST_MAGIC " ", sizeof HIST_MAGIC) != 0 ||
        parse_u64(c.buf + sizeof HIST_MAGIC, &version) != 0) {
        bm_seterr(err, errlen, BM_EPROTO, "histogram: not a biomatch histogram file");
        goto fail;
    }
    if (version != HIST_VERSION) {
        bm_seterr(err, errlen, BM_EPROTO, "histogram: unsupported version %" PRIu64, version);
        goto fail;
    }
    if (keyed(&c, "digits", &digits) || keyed(&c, "max_value", &maxv) ||
        keyed(&c, "count", &count) || keyed(&c, "clamped", &clamped) || keyed(&c, "min", &mn) ||
        keyed(&c, "max", &mx) || keyed(&c, "sum", &sum)) {
        bm_seterr(err, errlen, BM_EPROTO, "histogram: line %u: bad header line", c.line);
        goto fail;
    }
    if (digits < BM_HIST_MIN_DIGITS || digits > BM_HIST_MAX_DIGITS || maxv < 1 ||
        maxv > ((uint64_t)1 << 62) || clamped > count || mx > maxv || (count && mn > mx)) {
        bm_seterr(err, errlen, BM_EPROTO, "histogram: header values out of range");
        goto fail;
    }
    h = bm_hist_new((unsigned)digits, maxv, err, errlen);
    if (h == NULL) {
        r = BM_ENOMEM;
        goto fail;
    }
    uint64_t seen = 0;
    size_t last = 0;
    int any = 0;
    for (;;) {
        if (next_line(&c) != 0) {
            bm_seterr(err, errlen, BM_EPROTO, "histogram: truncated after line %u", c.line);
            goto fail;
        }
        if (strcmp(c.buf, "end") == 0)
            break;
        char *sp;
        uint64_t idx, n;
        if (c.buf[0] != 'c' || c.buf[1] != ' ' || (sp = strchr(c.buf + 2, ' ')) == NULL) {
            bm_seterr(err, errlen, BM_EPROTO, "histogram: line %u: expected 'c INDEX COUNT'", c.line);
            goto fail;
        }
        *sp = '\0';
        if (parse_u64(c.buf + 2, &idx) || parse_u64(sp + 1, &n) || idx >= h->ncounts || n == 0 ||
            (any && idx <= last) || n > count - seen) {
            bm_seterr(err, errlen, BM_EPROTO, "histogram: line %u: bad counter", c.line);
            goto fail;
        }
        h->counts[idx] = n;
        seen += n;
        last = (size_t)idx;
        any = 1;
    }
    if (seen != count || c.p != c.end) {
        bm_seterr(err, errlen, BM_EPROTO, "histogram: counters do not add up to count, or trailing data");
        goto fail;
    }
    h->total = count;
    h->clamped = clamped;
    h->min = count ? mn : UINT64_MAX;
    h->max = mx;
    h->sum = sum;
    if (rc)
        *rc = BM_OK;
    return h;
fail:
    bm_hist_free(h);
    if (rc)
        *rc = r;
    return NULL;
}

struct bm_hist *bm_hist_load(const char *path, int *rc, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        if (rc)
            *rc = BM_EIO;
        bm_seterr(err, errlen, BM_EIO, "%s: %s", path, strerror(errno));
        return NULL;
    }
    char *buf = malloc(HIST_MAX_FILE + 1);
    size_t n = buf ? fread(buf, 1, HIST_MAX_FILE + 1, f) : 0;
    int bad = ferror(f);
    fclose(f);
    if (buf == NULL || bad || n > HIST_MAX_FILE) {
        free(buf);
        if (rc)
            *rc = buf == NULL ? BM_ENOMEM : bad ? BM_EIO : BM_ERANGE;
        bm_seterr(err, errlen, BM_EIO, "%s: unreadable or larger than 64 MiB", path);
        return NULL;
    }
    struct bm_hist *h = bm_hist_parse(buf, n, rc, err, errlen);
    free(buf);
    return h;
}
