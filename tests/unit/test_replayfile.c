/* Replay files (bench/replay/replayfile.c, compiled in): a written file
 * reads back byte for byte, a file cut at every length is refused cleanly,
 * another format version and over-limit lengths are refused, and the writer
 * enforces the ordering and limits the reader relies on. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "replayfile.h"

static void tmpname(char *buf, size_t len)
{
    snprintf(buf, len, "/tmp/test_replayfile.XXXXXX");
    int fd = mkstemp(buf);
    assert_true(fd >= 0);
    close(fd);
}

static uint8_t *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    uint8_t *buf = malloc(1 << 20);
    assert_non_null(buf);
    *len = fread(buf, 1, 1 << 20, f);
    fclose(f);
    return buf;
}

#define NREC 6

/* Records exercising every optional part: null key, null value, null
 * header value, empty strings, no expect. */
static void write_sample(const char *path)
{
    char err[256];
    static const uint8_t val[] = { 0x0a, 0x03, 'j', 'o', 'b', 0x00, 0xff };
    struct bm_replay_hdr h[3] = {
        { "content-type", (const uint8_t *)"application/x-protobuf", 22 },
        { "traceparent", NULL, 0 },
        { "empty", (const uint8_t *)"", 0 },
    };
    struct bm_replay_writer *w = bm_replay_writer_open(path, "biomatch.jobs", 1700000000123, err,
                                                       sizeof err);
    assert_non_null(w);
    for (int i = 0; i < NREC; i++) {
        char key[16];
        snprintf(key, sizeof key, "job-%d", i);
        struct bm_replay_record r = {
            .t_us = (uint64_t)i * 1500,
            .key = i == 2 ? NULL : (const uint8_t *)key, .keylen = strlen(key),
            .value = i == 3 ? NULL : val, .valuelen = sizeof val,
            .headers = h, .nheaders = (size_t)(i % 4),
            .expect = i == 1 ? NULL : i == 4 ? "-" : i == 5 ? "" : "s00000042",
        };
        assert_int_equal(bm_replay_writer_add(w, &r, err, sizeof err), BM_OK);
    }
    assert_int_equal(bm_replay_writer_close(w, err, sizeof err), BM_OK);
}

static void test_roundtrip(void **state)
{
    (void)state;
    char path[64], err[256];
    tmpname(path, sizeof path);
    write_sample(path);
    struct bm_replay f;
    assert_int_equal(bm_replay_read(path, &f, err, sizeof err), BM_OK);
    assert_int_equal(f.version, BM_REPLAY_VERSION);
    assert_int_equal(f.created_unix_ms, 1700000000123);
    assert_string_equal(f.topic, "biomatch.jobs");
    assert_int_equal(f.nrecords, NREC);
    for (size_t i = 0; i < NREC; i++) {
        const struct bm_replay_record *r = &f.records[i];
        char key[16];
        snprintf(key, sizeof key, "job-%zu", i);
        assert_int_equal(r->t_us, i * 1500);
        if (i == 2) {
            assert_null(r->key);
        } else {
            assert_int_equal(r->keylen, strlen(key));
            assert_memory_equal(r->key, key, r->keylen);
        }
        if (i == 3)
            assert_null(r->value);
        else
            assert_int_equal(r->valuelen, 7);
        assert_int_equal(r->nheaders, i % 4);
        if (r->nheaders >= 1) {
            assert_string_equal(r->headers[0].name, "content-type");
            assert_memory_equal(r->headers[0].value, "application/x-protobuf", 22);
        }
        if (r->nheaders >= 2)
            assert_null(r->headers[1].value);
        if (r->nheaders >= 3) {
            assert_non_null(r->headers[2].value);
            assert_int_equal(r->headers[2].len, 0);
        }
        if (i == 1)
            assert_null(r->expect);
        else
            assert_string_equal(r->expect, i == 4 ? "-" : i == 5 ? "" : "s00000042");
    }
    bm_replay_free(&f);
    bm_replay_free(NULL);
    unlink(path);
}

static void test_truncation(void **state)
{
    (void)state;
    char path[64], err[256];
    tmpname(path, sizeof path);
    write_sample(path);
    size_t len;
    uint8_t *buf = slurp(path, &len);
    struct bm_replay f;
    assert_int_equal(bm_replay_parse(buf, len, &f, err, sizeof err), BM_OK);
    bm_replay_free(&f);
    /* Every prefix, including those ending exactly between records, is
     * refused; the parse reads only the prefix (a copy of exactly 'cut'
     * bytes lets a memory checker catch any over-read). */
    for (size_t cut = 0; cut < len; cut++) {
        uint8_t *part = malloc(cut ? cut : 1);
        memcpy(part, buf, cut);
        int rc = bm_replay_parse(part, cut, &f, err, sizeof err);
        assert_true(rc == BM_EPROTO || rc == BM_ERANGE);
        assert_null(f.records);
        assert_int_equal(f.nrecords, 0);
        free(part);
    }
    /* Trailing garbage and a trailer with the wrong count are refused. */
    uint8_t *more = malloc(len + 1);
    memcpy(more, buf, len);
    more[len] = 0;
    assert_int_equal(bm_replay_parse(more, len + 1, &f, err, sizeof err), BM_EPROTO);
    more[len - 8] ^= 1; /* count, little-endian low byte */
    assert_int_equal(bm_replay_parse(more, len, &f, err, sizeof err), BM_EPROTO);
    free(more);
    free(buf);
    unlink(path);
}

static void test_bad_version_and_limits(void **state)
{
    (void)state;
    char path[64], err[256];
    tmpname(path, sizeof path);
    write_sample(path);
    size_t len;
    uint8_t *buf = slurp(path, &len);
    struct bm_replay f;
    buf[8] = 2; /* version field follows the 8-byte magic */
    assert_int_equal(bm_replay_parse(buf, len, &f, err, sizeof err), BM_EUNSUPPORTED);
    assert_non_null(strstr(err, "version 2"));
    buf[8] = 1;
    buf[0] = 'X';
    assert_int_equal(bm_replay_parse(buf, len, &f, err, sizeof err), BM_EPROTO);
    buf[0] = 'B';
    /* A key length over the limit (first record: tag, t_us, then key len). */
    size_t first = 8 + 4 + 8 + 4 + strlen("biomatch.jobs") + 1;
    assert_int_equal(buf[first], 0x52);
    uint8_t save[4];
    memcpy(save, buf + first + 9, 4);
    uint32_t big = BM_REPLAY_MAX_KEY + 1;
    for (int i = 0; i < 4; i++)
        buf[first + 9 + i] = (uint8_t)(big >> (8 * i));
    assert_int_equal(bm_replay_parse(buf, len, &f, err, sizeof err), BM_ERANGE);
    /* A length that runs past the end. */
    big = 1000;
    for (int i = 0; i < 4; i++)
        buf[first + 9 + i] = (uint8_t)(big >> (8 * i));
    assert_int_equal(bm_replay_parse(buf, len, &f, err, sizeof err), BM_EPROTO);
    memcpy(buf + first + 9, save, 4);
    assert_int_equal(bm_replay_parse(buf, len, &f, err, sizeof err), BM_OK);
    bm_replay_free(&f);
    free(buf);
    assert_int_equal(bm_replay_read("/nonexistent/x", &f, err, sizeof err), BM_EIO);
    unlink(path);
}

static void test_writer_rules(void **state)
{
    (void)state;
    char path[64], err[256];
    tmpname(path, sizeof path);
    struct bm_replay_writer *w = bm_replay_writer_open(path, "t", 1, err, sizeof err);
    assert_non_null(w);
    struct bm_replay_record r = { .t_us = 10 };
    assert_int_equal(bm_replay_writer_add(w, &r, err, sizeof err), BM_OK);
    r.t_us = 9; /* times must not go back */
    assert_int_equal(bm_replay_writer_add(w, &r, err, sizeof err), BM_EINVAL);
    bm_replay_writer_free(w);
    /* An abandoned file has no trailer, so readers refuse it. */
    struct bm_replay f;
    assert_int_equal(bm_replay_read(path, &f, err, sizeof err), BM_EPROTO);

    w = bm_replay_writer_open(path, "t", 1, err, sizeof err);
    uint8_t *huge = calloc(1, BM_REPLAY_MAX_KEY + 1);
    struct bm_replay_record k = { .t_us = 0, .key = huge, .keylen = BM_REPLAY_MAX_KEY + 1 };
    assert_int_equal(bm_replay_writer_add(w, &k, err, sizeof err), BM_ERANGE);
    free(huge);
    bm_replay_writer_free(w);
    bm_replay_writer_free(NULL);

    /* An empty file (header + trailer) is valid and has no records. */
    w = bm_replay_writer_open(path, "", 1, err, sizeof err);
    assert_int_equal(bm_replay_writer_close(w, err, sizeof err), BM_OK);
    assert_int_equal(bm_replay_read(path, &f, err, sizeof err), BM_OK);
    assert_int_equal(f.nrecords, 0);
    bm_replay_free(&f);
    unlink(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_truncation),
        cmocka_unit_test(test_bad_version_and_limits),
        cmocka_unit_test(test_writer_rules),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
