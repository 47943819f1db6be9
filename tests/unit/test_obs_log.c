/* obs/log and obs/buf: JSON escaping of hostile strings, the line format
 * (parsed back with cJSON), the personal data rule, thread-safe writes. */
#include "testutil.h"

#include "common/err.h"
#include "obs/buf.h"
#include "obs/log.h"

#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char *escape(const char *s, size_t n)
{
    struct bm_obs_buf b = BM_OBS_BUF_INIT;
    bm_obs_buf_json_str(&b, s, n);
    char *out = bm_obs_buf_take(&b, NULL);
    assert_non_null(out);
    return out;
}

static void expect_escape(const char *in, size_t n, const char *want)
{
    char *got = escape(in, n);
    assert_string_equal(got, want);
    /* Whatever we write must be valid JSON that cJSON reads back. */
    cJSON *j = cJSON_Parse(got);
    assert_non_null(j);
    assert_true(cJSON_IsString(j));
    cJSON_Delete(j);
    free(got);
}

static void test_escape_nasty(void **state)
{
    (void)state;
    expect_escape("plain", 5, "\"plain\"");
    expect_escape("a\"b\\c", 5, "\"a\\\"b\\\\c\"");
    expect_escape("\n\r\t\b\f", 5, "\"\\n\\r\\t\\b\\f\"");
    expect_escape("\x01\x1f\x7f", 3, "\"\\u0001\\u001f\\u007f\"");
    expect_escape("nul\0in", 6, "\"nul\\u0000in\"");
    expect_escape("", 0, "\"\"");
    /* Valid UTF-8 passes through untouched: e-acute, euro, an emoji. */
    expect_escape("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", 9,
                  "\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"");
    /* Invalid UTF-8 becomes U+FFFD, one per offending byte. */
    expect_escape("\xff", 1, "\"\\ufffd\"");
    expect_escape("\xc0\xaf", 2, "\"\\ufffd\\ufffd\"");          /* overlong '/' */
    expect_escape("\xe0\x80\xaf", 3, "\"\\ufffd\\ufffd\\ufffd\""); /* overlong */
    expect_escape("\xed\xa0\x80", 3, "\"\\ufffd\\ufffd\\ufffd\""); /* surrogate */
    expect_escape("\xf4\x90\x80\x80", 4,
                  "\"\\ufffd\\ufffd\\ufffd\\ufffd\"");               /* > U+10FFFF */
    expect_escape("x\xe2\x82", 3, "\"x\\ufffd\\ufffd\"");           /* truncated */
    expect_escape("\x80z", 2, "\"\\ufffdz\"");                      /* lone continuation */
    char *n = escape(NULL, 0);
    assert_string_equal(n, "null");
    free(n);
}

static cJSON *parse_line(char *line)
{
    size_t n = strlen(line);
    assert_true(n > 0);
    assert_int_equal(line[n - 1], '\n');
    assert_null(memchr(line, '\n', n - 1)); /* exactly one line */
    cJSON *j = cJSON_Parse(line);
    assert_non_null(j);
    return j;
}

static const char *jstr(cJSON *j, const char *key)
{
    cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    assert_non_null(v);
    assert_true(cJSON_IsString(v));
    return v->valuestring;
}

static void test_line_format(void **state)
{
    (void)state;
    struct bm_log_field f[] = {
        BM_LF_STR("gallery", "eu \"face\"\n"),
        BM_LF_INT("shard", -3),
        BM_LF_DBL("seconds", 0.25),
        BM_LF_BOOL("ok", 1),
        BM_LF_STR("nothing", NULL),
        BM_LF_DBL("nan", 0.0 / 0.0),
        BM_LF_STR("msg", "shadow"),
        BM_LF_STR("bad", "\xff\xfe"),
    };
    char *line = bm_log_format(BM_LOG_WARN, "shard \"loaded\"", f, sizeof f / sizeof f[0]);
    assert_non_null(line);
    cJSON *j = parse_line(line);
    const char *ts = jstr(j, "ts");
    /* 2025-01-02T03:04:05.678Z */
    assert_int_equal(strlen(ts), 24);
    assert_int_equal(ts[4], '-');
    assert_int_equal(ts[10], 'T');
    assert_int_equal(ts[19], '.');
    assert_int_equal(ts[23], 'Z');
    assert_string_equal(jstr(j, "level"), "warn");
    assert_string_equal(jstr(j, "msg"), "shard \"loaded\"");
    assert_string_equal(jstr(j, "gallery"), "eu \"face\"\n");
    assert_int_equal(cJSON_GetObjectItem(j, "shard")->valuedouble, -3);
    assert_true(cJSON_GetObjectItem(j, "seconds")->valuedouble == 0.25);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItem(j, "ok")));
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(j, "nothing")));
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(j, "nan")));
    assert_string_equal(jstr(j, "f_msg"), "shadow");
    assert_string_equal(jstr(j, "bad"), "\xef\xbf\xbd\xef\xbf\xbd");
    assert_non_null(cJSON_GetObjectItem(j, "component"));
    cJSON_Delete(j);
    free(line);
}

static void test_personal_data(void **state)
{
    (void)state;
    struct bm_log_field f[] = {
        BM_LF_STR("template", "AAAA"),
        BM_LF_STR("subject_id", "S-12345"),
        BM_LF_STR("job_id", "J-1"),
        BM_LF_INT("subject", 42),
    };
    /* Info: templates and ids are redacted. */
    char *line = bm_log_format(BM_LOG_INFO, "m", f, 4);
    assert_null(strstr(line, "S-12345"));
    assert_null(strstr(line, "J-1"));
    assert_null(strstr(line, "AAAA"));
    cJSON *j = parse_line(line);
    assert_string_equal(jstr(j, "template"), "[redacted]");
    assert_string_equal(jstr(j, "subject_id"), "[redacted]");
    assert_string_equal(jstr(j, "job_id"), "[redacted]");
    assert_string_equal(jstr(j, "subject"), "[redacted]");
    cJSON_Delete(j);
    free(line);

    /* Debug: ids become stable pseudonyms, templates stay redacted. */
    line = bm_log_format(BM_LOG_DEBUG, "m", f, 4);
    assert_null(strstr(line, "S-12345"));
    assert_null(strstr(line, "AAAA"));
    j = parse_line(line);
    assert_string_equal(jstr(j, "template"), "[redacted]");
    const char *p = jstr(j, "subject_id");
    assert_int_equal(strlen(p), 2 + 16);
    assert_memory_equal(p, "p:", 2);
    char want[BM_LOG_PSEUDONYM_LEN];
    bm_log_pseudonym("S-12345", 7, want);
    assert_string_equal(p + 2, want);
    cJSON_Delete(j);
    free(line);
}

static void test_siphash_vectors(void **state)
{
    (void)state;
    /* Reference vectors of SipHash-2-4 with key 00 01 .. 0f. */
    uint8_t key[16];
    unsigned char msg[15];
    for (int i = 0; i < 16; i++)
        key[i] = (uint8_t)i;
    for (int i = 0; i < 15; i++)
        msg[i] = (unsigned char)i;
    bm_log_set_pseudonym_key(key);
    char out[BM_LOG_PSEUDONYM_LEN];
    bm_log_pseudonym("", 0, out);
    assert_string_equal(out, "726fdb47dd0e0e31");
    bm_log_pseudonym((const char *)msg, 15, out);
    assert_string_equal(out, "a129ca6149be45e5");
}

static void test_truncation(void **state)
{
    (void)state;
    size_t n = BM_LOG_MAX_VALUE * 2;
    char *big = malloc(n + 1);
    memset(big, 'x', n);
    big[n] = '\0';
    struct bm_log_field f[] = {BM_LF_STR("big", big)};
    char *line = bm_log_format(BM_LOG_INFO, "m", f, 1);
    cJSON *j = parse_line(line);
    const char *v = jstr(j, "big");
    assert_int_equal(strlen(v), BM_LOG_MAX_VALUE + strlen("...[truncated]"));
    assert_non_null(strstr(v, "...[truncated]"));
    cJSON_Delete(j);
    free(line);
    free(big);
}

static void test_levels(void **state)
{
    (void)state;
    enum bm_log_level l;
    assert_int_equal(bm_log_level_parse("debug", &l), BM_OK);
    assert_int_equal(l, BM_LOG_DEBUG);
    assert_int_equal(bm_log_level_parse("warn", &l), BM_OK);
    assert_int_equal(l, BM_LOG_WARN);
    assert_int_equal(bm_log_level_parse("warning", &l), BM_EINVAL);
    assert_int_equal(bm_log_level_parse("DEBUG", &l), BM_EINVAL);
    assert_int_equal(bm_log_level_parse("", &l), BM_EINVAL);
}

static int tmp_fd(void)
{
    char path[] = "/tmp/bm_test_obs_log.XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    unlink(path);
    return fd;
}

static char *read_all(int fd)
{
    off_t end = lseek(fd, 0, SEEK_END);
    assert_true(end >= 0);
    char *p = malloc((size_t)end + 1);
    assert_int_equal(pread(fd, p, (size_t)end, 0), end);
    p[end] = '\0';
    return p;
}

static void test_init_and_threshold(void **state)
{
    (void)state;
    setenv("BIOMATCH_LOG_LEVEL", "warn", 1);
    assert_int_equal(bm_log_init("unit-test"), BM_OK);
    assert_int_equal(bm_log_get_level(), BM_LOG_WARN);
    assert_int_equal(bm_log_init("other"), BM_ECONFLICT);
    int fd = tmp_fd();
    bm_log_set_fd(fd);
    BM_LOGF(BM_LOG_INFO, "dropped", BM_LF_STR("k", "v"));
    BM_LOGF(BM_LOG_ERROR, "kept", BM_LF_STR("k", "v"), BM_LF_STR("n", NULL));
    bm_log_set_level(BM_LOG_OFF);
    bm_log_fields(BM_LOG_ERROR, "off", NULL, 0);
    bm_log_set_fd(2);
    bm_log_set_level(BM_LOG_INFO);
    char *text = read_all(fd);
    assert_null(strstr(text, "dropped"));
    assert_null(strstr(text, "\"off\""));
    cJSON *j = parse_line(text);
    assert_string_equal(jstr(j, "component"), "unit-test");
    assert_string_equal(jstr(j, "msg"), "kept");
    assert_string_equal(jstr(j, "k"), "v");
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(j, "n")));
    cJSON_Delete(j);
    free(text);
    close(fd);
}

#define THREADS 4
#define LINES 300

static void *log_thread(void *arg)
{
    long id = (long)(intptr_t)arg;
    for (int i = 0; i < LINES; i++)
        BM_LOGF(BM_LOG_INFO, "from a thread", BM_LF_INT("thread", id), BM_LF_INT("i", i),
                BM_LF_STR("pad", "................................................"));
    return NULL;
}

static void test_threads_do_not_interleave(void **state)
{
    (void)state;
    int fd = tmp_fd();
    bm_log_set_fd(fd);
    pthread_t t[THREADS];
    for (long i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, log_thread, (void *)(intptr_t)i), 0);
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    bm_log_set_fd(2);
    char *text = read_all(fd);
    int seen[THREADS] = {0};
    int lines = 0;
    for (char *line = text, *nl; (nl = strchr(line, '\n')) != NULL; line = nl + 1) {
        *nl = '\0';
        cJSON *j = cJSON_Parse(line);
        assert_non_null(j);
        int id = (int)cJSON_GetObjectItem(j, "thread")->valuedouble;
        assert_true(id >= 0 && id < THREADS);
        seen[id]++;
        lines++;
        cJSON_Delete(j);
    }
    assert_int_equal(lines, THREADS * LINES);
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(seen[i], LINES);
    free(text);
    close(fd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_escape_nasty),
        cmocka_unit_test(test_line_format),
        cmocka_unit_test(test_personal_data),
        cmocka_unit_test(test_siphash_vectors),
        cmocka_unit_test(test_truncation),
        cmocka_unit_test(test_levels),
        cmocka_unit_test(test_init_and_threshold),
        cmocka_unit_test(test_threads_do_not_interleave),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
