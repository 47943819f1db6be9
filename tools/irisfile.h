/* biomatch iris files: a batch of iris codes and masks of one geometry in a
 * small binary container (docs/formats.md, "Iris code files").
 *
 *   offset  size  field
 *   0       8     magic "BMIRIS\r\n"
 *   8       4     format version (u32 LE) = 1
 *   12      4     filters        (u32 LE)
 *   16      4     rows           (u32 LE)
 *   20      4     columns        (u32 LE)
 *   24      4     bits_per_cell  (u32 LE)
 *   28      4     count          (u32 LE) records that follow
 *   32      ...   count records: code (B bytes) then mask (B bytes),
 *                 B = filters x rows x columns x bits_per_cell / 8,
 *                 bit order as docs/internals/match.md
 *
 * Invariant of the decoder: the geometry is checked (each factor >= 1,
 * total bits a multiple of 8 and at most 2^20) and the file size must equal
 * 32 + count x 2B exactly, computed with overflow checks, before any record
 * is touched: a truncated file or a header that lies is refused.
 *
 * Thread: any; no shared state. */
#ifndef BM_IRISFILE_H
#define BM_IRISFILE_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

#define BM_IRISFILE_MAGIC "BMIRIS\r\n"
#define BM_IRISFILE_VERSION 1u
#define BM_IRISFILE_HEADER 32u
#define BM_IRISFILE_MAX_BITS (1u << 20)
#define BM_IRISFILE_MAX_COUNT (1u << 26)

struct bm_irisfile {
    uint32_t filters, rows, columns, bits_per_cell;
    uint32_t count;
    size_t code_bytes;       /* B: bytes of one code (= of one mask) */
    const uint8_t *records;  /* count x (code, mask); borrowed or in 'buf' */
    uint8_t *buf;            /* owned file contents (bm_irisfile_read) */
};

/* Parse 'len' bytes. BM_OK with *out filled (records borrowed from buf), or
 * BM_EPROTO (bad magic, version, geometry, or size mismatch) / BM_ERANGE. */
int bm_irisfile_parse(const uint8_t *buf, size_t len, struct bm_irisfile *out, char *err,
                      size_t errlen);

/* Read and parse a file (size checked before reading). On BM_OK *out owns
 * the contents (bm_irisfile_free); nothing to free on failure. */
int bm_irisfile_read(const char *path, struct bm_irisfile *out, char *err, size_t errlen);

void bm_irisfile_free(struct bm_irisfile *f);

/* Code and mask of record i (i < count). */
const uint8_t *bm_irisfile_code(const struct bm_irisfile *f, uint32_t i);
const uint8_t *bm_irisfile_mask(const struct bm_irisfile *f, uint32_t i);

/* Write a file of 'count' records from 'codes' and 'masks' (each count x B
 * bytes, B from the geometry). BM_OK, BM_EINVAL or BM_EIO. */
int bm_irisfile_write(const char *path, uint32_t filters, uint32_t rows, uint32_t columns,
                      uint32_t bits_per_cell, uint32_t count, const uint8_t *codes,
                      const uint8_t *masks, char *err, size_t errlen);

/* Code bytes of a geometry, or 0 when the geometry is invalid. */
size_t bm_irisfile_code_bytes(uint32_t filters, uint32_t rows, uint32_t columns,
                              uint32_t bits_per_cell);

#endif /* BM_IRISFILE_H */
