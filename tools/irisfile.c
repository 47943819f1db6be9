/* biomatch iris files (see irisfile.h for the layout).
 *
 * Invariant: no record byte is addressed before the header's geometry and
 * count have been validated and the exact file size they imply has been
 * compared with the real size. */
#include "irisfile.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

size_t bm_irisfile_code_bytes(uint32_t filters, uint32_t rows, uint32_t columns,
                              uint32_t bits_per_cell)
{
    if (filters == 0 || rows == 0 || columns == 0 || bits_per_cell == 0)
        return 0;
    /* Each factor is below 2^32; stop as soon as the product passes the
     * limit so it can never overflow. */
    uint64_t bits = filters;
    const uint32_t more[3] = { rows, columns, bits_per_cell };
    for (int i = 0; i < 3; i++) {
        if (bits > BM_IRISFILE_MAX_BITS || more[i] > BM_IRISFILE_MAX_BITS)
            return 0;
        bits *= more[i];
    }
    if (bits > BM_IRISFILE_MAX_BITS || bits % 8 != 0)
        return 0;
    return (size_t)(bits / 8);
}

int bm_irisfile_parse(const uint8_t *buf, size_t len, struct bm_irisfile *out, char *err,
                      size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (len < BM_IRISFILE_HEADER)
        return bm_seterr(err, errlen, BM_EPROTO, "iris file: %zu bytes is shorter than the header",
                         len);
    if (memcmp(buf, BM_IRISFILE_MAGIC, 8) != 0)
        return bm_seterr(err, errlen, BM_EPROTO, "iris file: bad magic");
    uint32_t version = get32(buf + 8);
    if (version != BM_IRISFILE_VERSION)
        return bm_seterr(err, errlen, BM_EPROTO, "iris file: unsupported version %u", version);
    uint32_t f = get32(buf + 12), r = get32(buf + 16), c = get32(buf + 20), b = get32(buf + 24);
    uint32_t count = get32(buf + 28);
    size_t cb = bm_irisfile_code_bytes(f, r, c, b);
    if (cb == 0)
        return bm_seterr(err, errlen, BM_EPROTO,
                         "iris file: geometry %ux%ux%ux%u is invalid (factors >= 1, whole bytes, "
                         "at most 2^20 bits)", f, r, c, b);
    if (count > BM_IRISFILE_MAX_COUNT)
        return bm_seterr(err, errlen, BM_ERANGE, "iris file: %u records over the limit %u", count,
                         BM_IRISFILE_MAX_COUNT);
    /* count <= 2^26 and 2 * cb <= 2^18, so the product fits in 64 bits. */
    uint64_t need = (uint64_t)BM_IRISFILE_HEADER + (uint64_t)count * 2 * cb;
    if (need != (uint64_t)len)
        return bm_seterr(err, errlen, BM_EPROTO,
                         "iris file: header says %u records of %zu bytes (%llu bytes in all), the "
                         "file has %zu", count, 2 * cb, (unsigned long long)need, len);
    out->filters = f;
    out->rows = r;
    out->columns = c;
    out->bits_per_cell = b;
    out->count = count;
    out->code_bytes = cb;
    out->records = buf + BM_IRISFILE_HEADER;
    return BM_OK;
}

int bm_irisfile_read(const char *path, struct bm_irisfile *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    FILE *fp = fopen(path, "rb");
    if (fp == NULL)
        return bm_seterr(err, errlen, BM_EIO, "iris file: %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(fp), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(fp);
        return bm_seterr(err, errlen, BM_EIO, "iris file: %s: not a regular file", path);
    }
    uint64_t max = BM_IRISFILE_HEADER + (uint64_t)BM_IRISFILE_MAX_COUNT * 2 * (BM_IRISFILE_MAX_BITS / 8);
    if ((uint64_t)st.st_size > max) {
        fclose(fp);
        return bm_seterr(err, errlen, BM_ERANGE, "iris file: %s is too large", path);
    }
    size_t n = (size_t)st.st_size;
    uint8_t *buf = malloc(n ? n : 1);
    if (buf == NULL) {
        fclose(fp);
        return bm_seterr(err, errlen, BM_ENOMEM, "iris file: %s: out of memory", path);
    }
    size_t got = fread(buf, 1, n, fp);
    fclose(fp);
    if (got != n) {
        free(buf);
        return bm_seterr(err, errlen, BM_EIO, "iris file: %s: short read", path);
    }
    int rc = bm_irisfile_parse(buf, n, out, err, errlen);
    if (rc != BM_OK) {
        free(buf);
        memset(out, 0, sizeof *out);
        return rc;
    }
    out->buf = buf;
    return BM_OK;
}

void bm_irisfile_free(struct bm_irisfile *f)
{
    if (f == NULL)
        return;
    free(f->buf);
    memset(f, 0, sizeof *f);
}

const uint8_t *bm_irisfile_code(const struct bm_irisfile *f, uint32_t i)
{
    return f->records + (size_t)i * 2 * f->code_bytes;
}

const uint8_t *bm_irisfile_mask(const struct bm_irisfile *f, uint32_t i)
{
    return f->records + (size_t)i * 2 * f->code_bytes + f->code_bytes;
}

int bm_irisfile_write(const char *path, uint32_t filters, uint32_t rows, uint32_t columns,
                      uint32_t bits_per_cell, uint32_t count, const uint8_t *codes,
                      const uint8_t *masks, char *err, size_t errlen)
{
    size_t cb = bm_irisfile_code_bytes(filters, rows, columns, bits_per_cell);
    if (cb == 0 || count > BM_IRISFILE_MAX_COUNT || (count > 0 && (codes == NULL || masks == NULL)))
        return bm_seterr(err, errlen, BM_EINVAL, "iris file: bad geometry or records");
    uint8_t h[BM_IRISFILE_HEADER];
    memcpy(h, BM_IRISFILE_MAGIC, 8);
    put32(h + 8, BM_IRISFILE_VERSION);
    put32(h + 12, filters);
    put32(h + 16, rows);
    put32(h + 20, columns);
    put32(h + 24, bits_per_cell);
    put32(h + 28, count);
    FILE *fp = fopen(path, "wb");
    if (fp == NULL)
        return bm_seterr(err, errlen, BM_EIO, "iris file: %s: %s", path, strerror(errno));
    int ok = fwrite(h, 1, sizeof h, fp) == sizeof h;
    for (uint32_t i = 0; ok && i < count; i++)
        ok = fwrite(codes + (size_t)i * cb, 1, cb, fp) == cb &&
             fwrite(masks + (size_t)i * cb, 1, cb, fp) == cb;
    if (fclose(fp) != 0)
        ok = 0;
    if (!ok)
        return bm_seterr(err, errlen, BM_EIO, "iris file: %s: write failed", path);
    return BM_OK;
}
