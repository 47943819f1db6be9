/* Growable buffer and JSON string escaping; see buf.h for the invariant.
 * Growth doubles the capacity so appends are amortised O(1); the escaper
 * validates UTF-8 itself because log fields may carry bytes from peers. */
#include "obs/buf.h"

#include "common/err.h"

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int buf_reserve(struct bm_obs_buf *b, size_t extra)
{
    if (b->oom)
        return BM_ENOMEM;
    if (extra >= SIZE_MAX / 2 - b->len) {
        b->oom = true;
        return BM_ENOMEM;
    }
    size_t need = b->len + extra + 1;
    if (need <= b->cap)
        return BM_OK;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (p == NULL) {
        b->oom = true;
        return BM_ENOMEM;
    }
    b->p = p;
    b->cap = cap;
    return BM_OK;
}

int bm_obs_buf_append(struct bm_obs_buf *b, const void *data, size_t n)
{
    int rc = buf_reserve(b, n);
    if (rc != BM_OK)
        return rc;
    if (n > 0)
        memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = '\0';
    return BM_OK;
}

int bm_obs_buf_puts(struct bm_obs_buf *b, const char *s)
{
    return bm_obs_buf_append(b, s, strlen(s));
}

int bm_obs_buf_printf(struct bm_obs_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char small[128];
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0)
        return BM_EINVAL;
    if ((size_t)n < sizeof small)
        return bm_obs_buf_append(b, small, (size_t)n);
    int rc = buf_reserve(b, (size_t)n);
    if (rc != BM_OK)
        return rc;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return BM_OK;
}

/* Length of the well-formed UTF-8 sequence starting at s[0] (n bytes left),
 * or 0 when the bytes there are not one (RFC 3629 table 3-7). */
static size_t utf8_seq_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF; /* allowed range of the 2nd byte */
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0)
            lo = 0xA0;          /* no overlong forms */
        else if (c == 0xED)
            hi = 0x9F;          /* no UTF-16 surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0)
            lo = 0x90;          /* no overlong forms */
        else if (c == 0xF4)
            hi = 0x8F;          /* nothing above U+10FFFF */
    } else {
        return 0;
    }
    if (n < len || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if (s[i] < 0x80 || s[i] > 0xBF)
            return 0;
    return len;
}

int bm_obs_buf_json_str(struct bm_obs_buf *b, const char *s, size_t n)
{
    if (s == NULL)
        return bm_obs_buf_append(b, "null", 4);
    static const char hex[] = "0123456789abcdef";
    const unsigned char *u = (const unsigned char *)s;
    bm_obs_buf_append(b, "\"", 1);
    size_t run = 0; /* start of the pending run of bytes copied verbatim */
    size_t i = 0;
    while (i < n) {
        unsigned char c = u[i];
        if (c >= 0x20 && c < 0x7F && c != '"' && c != '\\') {
            i++;
            continue;
        }
        if (c >= 0x80) {
            size_t len = utf8_seq_len(u + i, n - i);
            if (len > 0) {
                i += len;
                continue;
            }
        }
        bm_obs_buf_append(b, s + run, i - run);
        char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
        switch (c) {
        case '"': bm_obs_buf_append(b, "\\\"", 2); break;
        case '\\': bm_obs_buf_append(b, "\\\\", 2); break;
        case '\n': bm_obs_buf_append(b, "\\n", 2); break;
        case '\r': bm_obs_buf_append(b, "\\r", 2); break;
        case '\t': bm_obs_buf_append(b, "\\t", 2); break;
        case '\b': bm_obs_buf_append(b, "\\b", 2); break;
        case '\f': bm_obs_buf_append(b, "\\f", 2); break;
        default:
            if (c >= 0x80)
                bm_obs_buf_append(b, "\\ufffd", 6);
            else
                bm_obs_buf_append(b, esc, sizeof esc);
            break;
        }
        i++;
        run = i;
    }
    bm_obs_buf_append(b, s + run, n - run);
    return bm_obs_buf_append(b, "\"", 1);
}

int bm_obs_buf_double(struct bm_obs_buf *b, double v, const char *nan_text,
                      const char *inf_text)
{
    if (isnan(v))
        return bm_obs_buf_puts(b, nan_text);
    if (isinf(v)) {
        if (v < 0)
            bm_obs_buf_append(b, "-", 1);
        return bm_obs_buf_puts(b, inf_text);
    }
    char tmp[40];
    snprintf(tmp, sizeof tmp, "%.15g", v);
    if (strtod(tmp, NULL) != v)
        snprintf(tmp, sizeof tmp, "%.17g", v);
    return bm_obs_buf_puts(b, tmp);
}

char *bm_obs_buf_take(struct bm_obs_buf *b, size_t *len)
{
    if (!b->oom && b->p == NULL)
        bm_obs_buf_append(b, "", 0);
    char *p = NULL;
    if (b->oom) {
        free(b->p);
    } else {
        p = b->p;
        if (len != NULL)
            *len = b->len;
    }
    b->p = NULL;
    b->len = b->cap = 0;
    b->oom = false;
    return p;
}

void bm_obs_buf_free(struct bm_obs_buf *b)
{
    if (b == NULL)
        return;
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
    b->oom = false;
}
