/* The .npy codec of bm_tools (tools/npy.h): round trip through the writer,
 * versions 1/2/3, and refusal of every malformed or lying header:
 * truncation anywhere, a shape that claims more or fewer rows than the
 * data, wrong dtype, Fortran order, wrong rank, oversized header length. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "npy.h"

/* Build an .npy image with header text 'dict' (padded, newline added),
 * version 'major', followed by 'ndata' bytes of 'data'. */
static size_t build(uint8_t *out, size_t cap, int major, const char *dict, const void *data,
                    size_t ndata)
{
    size_t pre = major == 1 ? 10 : 12;
    size_t hl = strlen(dict) + 1;
    size_t total = (pre + hl + 63) / 64 * 64;
    hl = total - pre;
    assert_true(total + ndata <= cap);
    memcpy(out, "\x93NUMPY", 6);
    out[6] = (uint8_t)major;
    out[7] = 0;
    if (major == 1) {
        out[8] = (uint8_t)hl;
        out[9] = (uint8_t)(hl >> 8);
    } else {
        out[8] = (uint8_t)hl;
        out[9] = (uint8_t)(hl >> 8);
        out[10] = 0;
        out[11] = 0;
    }
    memcpy(out + pre, dict, strlen(dict));
    memset(out + pre + strlen(dict), ' ', hl - strlen(dict) - 1);
    out[total - 1] = '\n';
    if (ndata)
        memcpy(out + total, data, ndata);
    return total + ndata;
}

static void test_versions_and_values(void **state)
{
    (void)state;
    float v[6] = { 1, 2, 3, 4, 5, -6.5f };
    uint8_t buf[512];
    char err[256];
    struct bm_npy m;
    for (int major = 1; major <= 3; major++) {
        size_t n = build(buf, sizeof buf, major,
                         "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", v, sizeof v);
        assert_int_equal(bm_npy_parse(buf, n, &m, err, sizeof err), BM_OK);
        assert_int_equal(m.rows, 2);
        assert_int_equal(m.cols, 3);
        assert_true(bm_npy_at(&m, 1, 2) == -6.5f);
        float row[3];
        bm_npy_row(&m, 1, row);
        assert_true(row[0] == 4 && row[1] == 5);
    }
    /* Keys in another order, no trailing comma, double quotes. */
    size_t n = build(buf, sizeof buf, 1, "{\"shape\": (2,3), 'fortran_order': False, 'descr': '<f4'}", v,
                     sizeof v);
    assert_int_equal(bm_npy_parse(buf, n, &m, err, sizeof err), BM_OK);
    /* Zero rows is a valid empty matrix. */
    n = build(buf, sizeof buf, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (0, 3), }", NULL, 0);
    assert_int_equal(bm_npy_parse(buf, n, &m, err, sizeof err), BM_OK);
    assert_int_equal(m.rows, 0);
}

static void expect_bad(const char *dict, size_t ndata, int want)
{
    uint8_t buf[1024];
    uint8_t data[64] = { 0 };
    char err[256];
    struct bm_npy m;
    size_t n = build(buf, sizeof buf, 1, dict, data, ndata);
    int rc = bm_npy_parse(buf, n, &m, err, sizeof err);
    if (rc != want)
        fail_msg("'%s' + %zu bytes: got %d (%s), want %d", dict, ndata, rc, err, want);
}

static void test_lying_headers(void **state)
{
    (void)state;
    /* Shape says more/fewer rows than the data holds. */
    expect_bad("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 3), }", 24, BM_EPROTO);
    expect_bad("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 3), }", 24, BM_EPROTO);
    /* Shape so large the byte count overflows. */
    expect_bad("{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 8), }", 0,
               BM_ERANGE);
    expect_bad("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999, 8), }", 0,
               BM_EPROTO);
    /* Wrong dtype, order, rank. */
    expect_bad("{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }", 48, BM_EPROTO);
    expect_bad("{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }", 24, BM_EPROTO);
    expect_bad("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", 24, BM_EPROTO);
    expect_bad("{'descr': '<f4', 'fortran_order': False, 'shape': (6,), }", 24, BM_EPROTO);
    expect_bad("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2, 3), }", 24, BM_EPROTO);
    expect_bad("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 0), }", 0, BM_EPROTO);
    /* Missing, repeated or unknown keys; junk. */
    expect_bad("{'descr': '<f4', 'shape': (2, 3), }", 24, BM_EPROTO);
    expect_bad("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 24,
               BM_EPROTO);
    expect_bad("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), 'x': 1}", 24, BM_EPROTO);
    expect_bad("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), } junk", 24, BM_EPROTO);
    expect_bad("['descr']", 0, BM_EPROTO);
}

static void test_truncation_and_framing(void **state)
{
    (void)state;
    float v[6] = { 0 };
    uint8_t buf[512];
    char err[256];
    struct bm_npy m;
    size_t n = build(buf, sizeof buf, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }",
                     v, sizeof v);
    /* Every proper prefix is refused. */
    for (size_t k = 0; k < n; k++)
        assert_int_not_equal(bm_npy_parse(buf, k, &m, err, sizeof err), BM_OK);
    /* Extra trailing bytes too. */
    assert_int_equal(bm_npy_parse(buf, n + 1, &m, err, sizeof err), BM_EPROTO);
    /* Header length pointing past the end of the file. */
    uint8_t b2[512];
    memcpy(b2, buf, n);
    b2[8] = 0xff;
    b2[9] = 0x7f;
    assert_int_equal(bm_npy_parse(b2, n, &m, err, sizeof err), BM_EPROTO);
    /* Bad magic, unknown version. */
    memcpy(b2, buf, n);
    b2[1] = 'X';
    assert_int_equal(bm_npy_parse(b2, n, &m, err, sizeof err), BM_EPROTO);
    memcpy(b2, buf, n);
    b2[6] = 4;
    assert_int_equal(bm_npy_parse(b2, n, &m, err, sizeof err), BM_EPROTO);
    /* A v2 header length over the parser's limit is refused before use. */
    n = build(buf, sizeof buf, 2, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", v,
              sizeof v);
    buf[10] = 0x10;
    assert_int_equal(bm_npy_parse(buf, n, &m, err, sizeof err), BM_ERANGE);
}

static void test_write_read_file(void **state)
{
    (void)state;
    char path[] = "/tmp/bm_test_npy_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    float v[3 * 70];
    for (int i = 0; i < 3 * 70; i++)
        v[i] = (float)i * 0.25f;
    char err[256];
    assert_int_equal(bm_npy_write(path, v, 3, 70, err, sizeof err), BM_OK);
    struct bm_npy m;
    assert_int_equal(bm_npy_read(path, &m, err, sizeof err), BM_OK);
    assert_int_equal(m.rows, 3);
    assert_int_equal(m.cols, 70);
    /* The data starts 64-byte aligned within the file. */
    assert_int_equal((size_t)(m.data - m.buf) % 64, 0);
    for (int i = 0; i < 3 * 70; i++)
        assert_true(bm_npy_at(&m, (uint64_t)i / 70, (uint64_t)i % 70) == v[i]);
    bm_npy_free(&m);
    bm_npy_free(NULL);
    unlink(path);
    assert_int_equal(bm_npy_read(path, &m, err, sizeof err), BM_EIO);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_versions_and_values),
        cmocka_unit_test(test_lying_headers),
        cmocka_unit_test(test_truncation_and_framing),
        cmocka_unit_test(test_write_read_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
