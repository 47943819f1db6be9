/* The iris file codec of bm_tools (tools/irisfile.h): round trip, and
 * refusal of truncated files, extra bytes, bad magic or version, invalid
 * geometry, and headers whose count or geometry lies about the size. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "irisfile.h"

/* Little-endian u32, as the file stores its header fields. */
static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static size_t image(uint8_t *buf, uint32_t f, uint32_t r, uint32_t c, uint32_t b, uint32_t count,
                    size_t nrec_bytes)
{
    memcpy(buf, BM_IRISFILE_MAGIC, 8);
    put32(buf + 8, 1);
    put32(buf + 12, f);
    put32(buf + 16, r);
    put32(buf + 20, c);
    put32(buf + 24, b);
    put32(buf + 28, count);
    for (size_t i = 0; i < nrec_bytes; i++)
        buf[32 + i] = (uint8_t)(i * 7);
    return 32 + nrec_bytes;
}

static void test_round_trip(void **state)
{
    (void)state;
    char path[] = "/tmp/bm_test_iris_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    /* 1 x 2 x 8 x 2 = 32 bits = 4 bytes per code. */
    uint8_t codes[12], masks[12];
    for (int i = 0; i < 12; i++) {
        codes[i] = (uint8_t)i;
        masks[i] = (uint8_t)(0xf0 | i);
    }
    char err[256];
    assert_int_equal(bm_irisfile_write(path, 1, 2, 8, 2, 3, codes, masks, err, sizeof err), BM_OK);
    struct bm_irisfile f;
    assert_int_equal(bm_irisfile_read(path, &f, err, sizeof err), BM_OK);
    assert_int_equal(f.count, 3);
    assert_int_equal(f.code_bytes, 4);
    assert_int_equal(f.columns, 8);
    assert_memory_equal(bm_irisfile_code(&f, 2), codes + 8, 4);
    assert_memory_equal(bm_irisfile_mask(&f, 2), masks + 8, 4);
    bm_irisfile_free(&f);
    bm_irisfile_free(NULL);
    unlink(path);
    assert_int_equal(bm_irisfile_read(path, &f, err, sizeof err), BM_EIO);
}

static void test_lies_and_truncation(void **state)
{
    (void)state;
    uint8_t buf[32 + 3 * 8 + 16];
    char err[256];
    struct bm_irisfile f;
    size_t n = image(buf, 1, 2, 8, 2, 3, 3 * 8);
    assert_int_equal(bm_irisfile_parse(buf, n, &f, err, sizeof err), BM_OK);
    for (size_t k = 0; k < n; k++)
        assert_int_not_equal(bm_irisfile_parse(buf, k, &f, err, sizeof err), BM_OK);
    /* Extra bytes. */
    assert_int_equal(bm_irisfile_parse(buf, n + 1, &f, err, sizeof err), BM_EPROTO);
    /* Count lies (more, fewer). */
    put32(buf + 28, 4);
    assert_int_equal(bm_irisfile_parse(buf, n, &f, err, sizeof err), BM_EPROTO);
    put32(buf + 28, 2);
    assert_int_equal(bm_irisfile_parse(buf, n, &f, err, sizeof err), BM_EPROTO);
    /* Huge count: refused by the limit, no overflow. */
    put32(buf + 28, 0xffffffffu);
    assert_int_equal(bm_irisfile_parse(buf, n, &f, err, sizeof err), BM_ERANGE);
    put32(buf + 28, 3);
    /* Geometry lies: same byte count per record is fine only if it is the
     * same size; a different geometry changes the size. */
    put32(buf + 20, 16);
    assert_int_equal(bm_irisfile_parse(buf, n, &f, err, sizeof err), BM_EPROTO);
    /* Invalid geometry: zero factor, not whole bytes, over 2^20 bits,
     * factors whose product overflows 32 bits. */
    put32(buf + 20, 0);
    assert_int_equal(bm_irisfile_parse(buf, n, &f, err, sizeof err), BM_EPROTO);
    put32(buf + 20, 3);
    put32(buf + 24, 1);
    put32(buf + 16, 1);
    assert_int_equal(bm_irisfile_parse(buf, n, &f, err, sizeof err), BM_EPROTO);
    put32(buf + 12, 65536);
    put32(buf + 16, 65536);
    put32(buf + 20, 65536);
    put32(buf + 24, 65536);
    assert_int_equal(bm_irisfile_parse(buf, n, &f, err, sizeof err), BM_EPROTO);
    assert_int_equal(bm_irisfile_code_bytes(2048, 2048, 1, 1), 0);
    assert_int_equal(bm_irisfile_code_bytes(2, 16, 256, 2), 2048);
    /* Magic and version. */
    n = image(buf, 1, 2, 8, 2, 3, 3 * 8);
    buf[0] = 'X';
    assert_int_equal(bm_irisfile_parse(buf, n, &f, err, sizeof err), BM_EPROTO);
    n = image(buf, 1, 2, 8, 2, 3, 3 * 8);
    put32(buf + 8, 2);
    assert_int_equal(bm_irisfile_parse(buf, n, &f, err, sizeof err), BM_EPROTO);
    /* Zero records is a valid empty file. */
    n = image(buf, 1, 2, 8, 2, 0, 0);
    assert_int_equal(bm_irisfile_parse(buf, n, &f, err, sizeof err), BM_OK);
    assert_int_equal(f.count, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_lies_and_truncation),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
