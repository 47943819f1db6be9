/* NumPy .npy float32 matrices (see npy.h).
 *
 * Layout: "\x93NUMPY", major, minor, header length (u16 LE for 1.0, u32 LE
 * for 2.0 and 3.0), then the header: a Python dict literal with exactly the
 * keys 'descr', 'fortran_order' and 'shape', padded with spaces and ending
 * in '\n'. The decoder accepts only '<f4', fortran_order False and a 2-tuple
 * shape, and requires the data to fill the rest of the file exactly. */
#include "npy.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const uint8_t npy_magic[6] = { 0x93, 'N', 'U', 'M', 'P', 'Y' };

/* A cursor over the header text. */
struct hp {
    const char *p, *end;
};

static void skip_ws(struct hp *h)
{
    while (h->p < h->end && (*h->p == ' ' || *h->p == '\t'))
        h->p++;
}

static int eat(struct hp *h, char c)
{
    skip_ws(h);
    if (h->p < h->end && *h->p == c) {
        h->p++;
        return 1;
    }
    return 0;
}

/* A quoted string ('...' or "...") without escapes, copied into buf. */
static int parse_str(struct hp *h, char *buf, size_t len)
{
    skip_ws(h);
    if (h->p >= h->end || (*h->p != '\'' && *h->p != '"'))
        return -1;
    char q = *h->p++;
    size_t n = 0;
    while (h->p < h->end && *h->p != q) {
        if (*h->p == '\\' || n + 1 >= len)
            return -1;
        buf[n++] = *h->p++;
    }
    if (h->p >= h->end)
        return -1;
    h->p++;
    buf[n] = '\0';
    return 0;
}

static int parse_uint(struct hp *h, uint64_t *v)
{
    skip_ws(h);
    uint64_t x = 0;
    int digits = 0;
    while (h->p < h->end && *h->p >= '0' && *h->p <= '9') {
        unsigned d = (unsigned)(*h->p - '0');
        if (x > (UINT64_MAX - d) / 10)
            return -1;
        x = x * 10 + d;
        h->p++;
        digits++;
    }
    /* Python may write 3L in very old files; accept the suffix. */
    if (h->p < h->end && *h->p == 'L')
        h->p++;
    if (digits == 0 || digits > 19)
        return -1;
    *v = x;
    return 0;
}

static int parse_word(struct hp *h, const char *w)
{
    skip_ws(h);
    size_t n = strlen(w);
    if ((size_t)(h->end - h->p) < n || memcmp(h->p, w, n) != 0)
        return -1;
    h->p += n;
    return 0;
}

int bm_npy_parse(const uint8_t *buf, size_t len, struct bm_npy *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (len < 10)
        return bm_seterr(err, errlen, BM_EPROTO, "npy: %zu bytes is too short for a header", len);
    if (memcmp(buf, npy_magic, sizeof npy_magic) != 0)
        return bm_seterr(err, errlen, BM_EPROTO, "npy: bad magic (not a .npy file)");
    uint8_t major = buf[6], minor = buf[7];
    size_t pre, hlen;
    if (major == 1 && minor == 0) {
        pre = 10;
        hlen = (size_t)buf[8] | (size_t)buf[9] << 8;
    } else if ((major == 2 || major == 3) && minor == 0) {
        if (len < 12)
            return bm_seterr(err, errlen, BM_EPROTO, "npy: truncated v%u header length", major);
        pre = 12;
        uint64_t l = (uint64_t)buf[8] | (uint64_t)buf[9] << 8 | (uint64_t)buf[10] << 16 |
                     (uint64_t)buf[11] << 24;
        if (l > BM_NPY_MAX_HEADER)
            return bm_seterr(err, errlen, BM_ERANGE, "npy: header of %llu bytes over the %d limit",
                             (unsigned long long)l, BM_NPY_MAX_HEADER);
        hlen = (size_t)l;
    } else {
        return bm_seterr(err, errlen, BM_EPROTO, "npy: unsupported format version %u.%u", major,
                         minor);
    }
    if (hlen > len - pre)
        return bm_seterr(err, errlen, BM_EPROTO, "npy: header of %zu bytes runs past the file (%zu)",
                         hlen, len);
    if (hlen == 0 || buf[pre + hlen - 1] != '\n')
        return bm_seterr(err, errlen, BM_EPROTO, "npy: header does not end in a newline");
    for (size_t i = pre; i < pre + hlen; i++)
        if (buf[i] < 0x20 && buf[i] != '\n' && buf[i] != '\t')
            return bm_seterr(err, errlen, BM_EPROTO, "npy: control byte in the header");

    struct hp h = { (const char *)buf + pre, (const char *)buf + pre + hlen - 1 };
    int have_descr = 0, have_order = 0, have_shape = 0;
    uint64_t dims[2] = { 0, 0 };
    size_t ndims = 0;
    if (!eat(&h, '{'))
        return bm_seterr(err, errlen, BM_EPROTO, "npy: header is not a dict");
    while (!eat(&h, '}')) {
        char key[32], val[32];
        if (parse_str(&h, key, sizeof key) != 0 || !eat(&h, ':'))
            return bm_seterr(err, errlen, BM_EPROTO, "npy: malformed header dict");
        if (strcmp(key, "descr") == 0 && !have_descr) {
            if (parse_str(&h, val, sizeof val) != 0)
                return bm_seterr(err, errlen, BM_EPROTO, "npy: malformed descr");
            if (strcmp(val, "<f4") != 0)
                return bm_seterr(err, errlen, BM_EPROTO,
                                 "npy: dtype '%s' is not supported (need little-endian float32 '<f4')",
                                 val);
            have_descr = 1;
        } else if (strcmp(key, "fortran_order") == 0 && !have_order) {
            if (parse_word(&h, "False") != 0)
                return bm_seterr(err, errlen, BM_EPROTO,
                                 "npy: fortran_order must be False (C order)");
            have_order = 1;
        } else if (strcmp(key, "shape") == 0 && !have_shape) {
            if (!eat(&h, '('))
                return bm_seterr(err, errlen, BM_EPROTO, "npy: malformed shape");
            while (!eat(&h, ')')) {
                uint64_t d;
                if (ndims == 2 || parse_uint(&h, &d) != 0)
                    return bm_seterr(err, errlen, BM_EPROTO,
                                     "npy: shape must be (rows, cols) of integers");
                dims[ndims++] = d;
                if (!eat(&h, ',')) {
                    if (!eat(&h, ')'))
                        return bm_seterr(err, errlen, BM_EPROTO, "npy: malformed shape");
                    break;
                }
            }
            have_shape = 1;
        } else {
            return bm_seterr(err, errlen, BM_EPROTO, "npy: unexpected or repeated header key '%s'",
                             key);
        }
        if (!eat(&h, ',')) {
            if (!eat(&h, '}'))
                return bm_seterr(err, errlen, BM_EPROTO, "npy: malformed header dict");
            break;
        }
    }
    skip_ws(&h);
    if (h.p != h.end)
        return bm_seterr(err, errlen, BM_EPROTO, "npy: bytes after the header dict");
    if (!have_descr || !have_order || !have_shape)
        return bm_seterr(err, errlen, BM_EPROTO, "npy: header lacks descr, fortran_order or shape");
    if (ndims != 2)
        return bm_seterr(err, errlen, BM_EPROTO, "npy: need a 2-D array, got %zu dimension(s)",
                         ndims);
    if (dims[1] == 0)
        return bm_seterr(err, errlen, BM_EPROTO, "npy: zero columns");
    if (dims[0] > UINT64_MAX / 4 / dims[1])
        return bm_seterr(err, errlen, BM_ERANGE, "npy: shape (%llu, %llu) overflows",
                         (unsigned long long)dims[0], (unsigned long long)dims[1]);
    uint64_t need = dims[0] * dims[1] * 4;
    uint64_t have = (uint64_t)(len - pre - hlen);
    if (need != have)
        return bm_seterr(err, errlen, BM_EPROTO,
                         "npy: shape (%llu, %llu) needs %llu data bytes, the file has %llu",
                         (unsigned long long)dims[0], (unsigned long long)dims[1],
                         (unsigned long long)need, (unsigned long long)have);
    out->rows = dims[0];
    out->cols = dims[1];
    out->data = buf + pre + hlen;
    return BM_OK;
}

int bm_npy_read(const char *path, struct bm_npy *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return bm_seterr(err, errlen, BM_EIO, "npy: %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return bm_seterr(err, errlen, BM_EIO, "npy: %s: not a regular file", path);
    }
    if ((uint64_t)st.st_size > BM_NPY_MAX_FILE) {
        fclose(f);
        return bm_seterr(err, errlen, BM_ERANGE, "npy: %s: %lld bytes over the size limit", path,
                         (long long)st.st_size);
    }
    size_t n = (size_t)st.st_size;
    uint8_t *buf = malloc(n ? n : 1);
    if (buf == NULL) {
        fclose(f);
        return bm_seterr(err, errlen, BM_ENOMEM, "npy: %s: out of memory for %zu bytes", path, n);
    }
    size_t got = fread(buf, 1, n, f);
    fclose(f);
    if (got != n) {
        free(buf);
        return bm_seterr(err, errlen, BM_EIO, "npy: %s: short read", path);
    }
    int rc = bm_npy_parse(buf, n, out, err, errlen);
    if (rc != BM_OK) {
        free(buf);
        memset(out, 0, sizeof *out);
        return rc;
    }
    out->buf = buf;
    out->buflen = n;
    return BM_OK;
}

void bm_npy_free(struct bm_npy *m)
{
    if (m == NULL)
        return;
    free(m->buf);
    memset(m, 0, sizeof *m);
}

float bm_npy_at(const struct bm_npy *m, uint64_t r, uint64_t c)
{
    const uint8_t *p = m->data + (r * m->cols + c) * 4;
    uint32_t u = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

void bm_npy_row(const struct bm_npy *m, uint64_t r, float *out)
{
    for (uint64_t c = 0; c < m->cols; c++)
        out[c] = bm_npy_at(m, r, c);
}

int bm_npy_write(const char *path, const float *data, uint64_t rows, uint64_t cols, char *err,
                 size_t errlen)
{
    char hdr[128];
    if (cols == 0 || (rows > 0 && data == NULL))
        return bm_seterr(err, errlen, BM_EINVAL, "npy: nothing to write");
    int n = snprintf(hdr, sizeof hdr, "{'descr': '<f4', 'fortran_order': False, 'shape': (%llu, %llu), }",
                     (unsigned long long)rows, (unsigned long long)cols);
    if (n < 0 || (size_t)n + 11 > sizeof hdr)
        return bm_seterr(err, errlen, BM_EINVAL, "npy: header too long");
    /* Pad with spaces so magic + length + header is a multiple of 64. */
    size_t total = 10 + (size_t)n + 1;
    size_t padded = (total + 63) / 64 * 64;
    size_t hlen = padded - 10;
    uint8_t pre[10 + 128];
    memcpy(pre, npy_magic, 6);
    pre[6] = 1;
    pre[7] = 0;
    pre[8] = (uint8_t)(hlen & 0xff);
    pre[9] = (uint8_t)(hlen >> 8);
    memcpy(pre + 10, hdr, (size_t)n);
    memset(pre + 10 + n, ' ', hlen - (size_t)n - 1);
    pre[padded - 1] = '\n';
    FILE *f = fopen(path, "wb");
    if (f == NULL)
        return bm_seterr(err, errlen, BM_EIO, "npy: %s: %s", path, strerror(errno));
    int ok = fwrite(pre, 1, padded, f) == padded;
    /* Floats are written as little-endian binary32; x86-64 and aarch64 are
     * little-endian hosts, which the build requires. */
    if (ok && rows > 0)
        ok = fwrite(data, sizeof(float) * cols, rows, f) == rows;
    if (fclose(f) != 0)
        ok = 0;
    if (!ok)
        return bm_seterr(err, errlen, BM_EIO, "npy: %s: write failed: %s", path, strerror(errno));
    return BM_OK;
}
