/* NumPy .npy files of float32 matrices: a strict decoder (format versions
 * 1.0, 2.0 and 3.0; dtype '<f4'; C order; exactly two dimensions) and a
 * writer of version 1.0 files.
 *
 * Invariant of the decoder: every length (magic, header length, header
 * text, data size = rows x cols x 4 with overflow checks) is checked against
 * the buffer size before it is used, and the data must fill the rest of the
 * buffer exactly: a truncated file or a header that lies about the shape is
 * refused, never read past.
 *
 * Thread: any; no shared state. */
#ifndef BM_NPY_H
#define BM_NPY_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

/* Largest header text we parse (the format allows 4 GiB in v2/v3; real
 * headers are under 200 bytes). */
#define BM_NPY_MAX_HEADER 65536
/* Largest file bm_npy_read() loads. */
#define BM_NPY_MAX_FILE ((uint64_t)16 << 30)

/* A parsed matrix. 'data' points into the buffer given to bm_npy_parse
 * (borrowed: valid as long as that buffer) or, from bm_npy_read, into
 * 'buf', which the struct owns (bm_npy_free). The floats are little-endian
 * binary32 and may be unaligned for a caller-supplied buffer. */
struct bm_npy {
    uint64_t rows;
    uint64_t cols;
    const uint8_t *data;     /* rows x cols x 4 bytes, row-major */
    uint8_t *buf;            /* owned file contents (bm_npy_read), else NULL */
    size_t buflen;
};

/* Parse 'len' bytes of an .npy file. BM_OK and *out filled (data borrowed
 * from buf), or BM_EPROTO (malformed, unsupported dtype/order/rank, or the
 * size does not match the shape; err says which), BM_ERANGE (over a limit). */
int bm_npy_parse(const uint8_t *buf, size_t len, struct bm_npy *out, char *err, size_t errlen);

/* Read and parse the file at 'path' (size checked against BM_NPY_MAX_FILE
 * before reading). On BM_OK *out owns the contents (bm_npy_free); on
 * failure there is nothing to free. Adds BM_EIO to bm_npy_parse's results. */
int bm_npy_read(const char *path, struct bm_npy *out, char *err, size_t errlen);

/* Free what bm_npy_read allocated and zero *m. Accepts NULL. */
void bm_npy_free(struct bm_npy *m);

/* Row 'r' column 'c' as a float (handles unaligned data). */
float bm_npy_at(const struct bm_npy *m, uint64_t r, uint64_t c);

/* Copy row 'r' into 'out' (cols floats). */
void bm_npy_row(const struct bm_npy *m, uint64_t r, float *out);

/* Write a version 1.0 '<f4' C-order file of rows x cols floats.
 * BM_OK, BM_EIO (with errno text) or BM_EINVAL. */
int bm_npy_write(const char *path, const float *data, uint64_t rows, uint64_t cols, char *err,
                 size_t errlen);

#endif /* BM_NPY_H */
