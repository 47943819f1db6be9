/* The Redis connection layer against a real redis-server
 * (BIOMATCH_REDIS_URL): binary round trips, pipelining, reply limits on real
 * replies, reconnect after the server kills our connection (with AUTH and
 * SELECT redone), Lua scripts and server error replies. Keys are unique per
 * run so tests sharing the server never collide. */
#include "testutil.h"

#include "common/err.h"
#include "store/redis.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static struct bm_redis *connect_url(const char *url, size_t max_bytes, size_t max_elems)
{
    struct bm_redis_opts o = { 0 };
    char err[256];
    o.max_reply_bytes = max_bytes;
    o.max_elements = max_elems;
    o.io_timeout_ms = 20000;
    struct bm_redis *c = bm_redis_connect(url, &o, err, sizeof err);
    if (c == NULL)
        fail_msg("connect %s: %s", url, err);
    return c;
}

static struct bm_redis *connect_env(size_t max_bytes, size_t max_elems)
{
    return connect_url(bm_test_env("BIOMATCH_REDIS_URL"), max_bytes, max_elems);
}

/* "redis://<prefix>host:port<suffix>" from the environment's URL. */
static void env_url_with(char *buf, size_t len, const char *prefix, const char *suffix)
{
    const char *u = bm_test_env("BIOMATCH_REDIS_URL");
    assert_true(strncmp(u, "redis://", 8) == 0);
    snprintf(buf, len, "redis://%s%s%s", prefix, u + 8, suffix);
}

static long long client_id(struct bm_redis *c)
{
    struct bm_redis_reply *r = NULL;
    assert_int_equal(bm_redis_cmd(c, &r, "CLIENT", "ID", (const char *)NULL), BM_OK);
    assert_int_equal(r->type, BM_REDIS_INTEGER);
    long long id = r->integer;
    bm_redis_reply_free(r);
    return id;
}

static void kill_client(struct bm_redis *killer, long long id)
{
    char ids[32];
    struct bm_redis_reply *r = NULL;
    snprintf(ids, sizeof ids, "%lld", id);
    assert_int_equal(bm_redis_cmd(killer, &r, "CLIENT", "KILL", "ID", ids,
                                  (const char *)NULL), BM_OK);
    assert_int_equal(r->type, BM_REDIS_INTEGER);
    assert_true(r->integer == 1);
    bm_redis_reply_free(r);
}

static void fill_random(unsigned char *p, size_t n)
{
    uint64_t x = (uint64_t)time(NULL) * 0x9E3779B97F4A7C15ull | 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p[i] = (unsigned char)(x >> 24);
    }
}

static void test_version(void **state)
{
    (void)state;
    struct bm_redis *c = connect_env(0, 0);
    char ver[64];
    assert_int_equal(bm_redis_ping(c), BM_OK);
    assert_int_equal(bm_redis_server_version(c, ver, sizeof ver), BM_OK);
    printf("redis version %s\n", ver);
    assert_true(ver[0] >= '1' && ver[0] <= '9');
    assert_non_null(strchr(ver, '.'));
    char tiny[2];
    assert_int_equal(bm_redis_server_version(c, tiny, sizeof tiny), BM_ERANGE);
    bm_redis_close(c);
}

static void test_blob_roundtrip(void **state)
{
    (void)state;
    size_t n = 10u << 20;
    unsigned char *blob = malloc(n);
    assert_non_null(blob);
    fill_random(blob, n);
    blob[0] = 0;                /* binary safety: NULs and CRLFs inside */
    blob[1] = '\r';
    blob[2] = '\n';
    char key[96];
    bm_test_unique(key, sizeof key, "bm:test:blob");
    struct bm_redis *c = connect_env(0, 0);
    assert_int_equal(bm_redis_set(c, key, strlen(key), blob, n, 60000), BM_OK);
    void *back = NULL;
    size_t blen = 0;
    assert_int_equal(bm_redis_get(c, key, strlen(key), &back, &blen), BM_OK);
    assert_int_equal(blen, n);
    assert_true(memcmp(back, blob, n) == 0);
    free(back);
    assert_int_equal(bm_redis_del(c, key, strlen(key)), BM_OK);
    assert_int_equal(bm_redis_get(c, key, strlen(key), &back, &blen), BM_ENOTFOUND);
    assert_null(back);
    assert_int_equal(bm_redis_del(c, key, strlen(key)), BM_ENOTFOUND);
    bm_redis_close(c);
    free(blob);
}

static void test_pipeline(void **state)
{
    (void)state;
    char key[96];
    bm_test_unique(key, sizeof key, "bm:test:pipe");
    struct bm_redis *c = connect_env(0, 0);
    for (int i = 0; i < 1000; i++) {
        char v[16];
        int vl = snprintf(v, sizeof v, "%d", i);
        const char *argv[3] = { "RPUSH", key, v };
        size_t lens[3] = { 5, strlen(key), (size_t)vl };
        assert_int_equal(bm_redis_append(c, 3, argv, lens), BM_OK);
    }
    assert_int_equal(bm_redis_pending(c), 1000);
    for (int i = 0; i < 1000; i++) {
        struct bm_redis_reply *r = NULL;
        assert_int_equal(bm_redis_get_reply(c, &r), BM_OK);
        assert_int_equal(r->type, BM_REDIS_INTEGER);
        assert_true(r->integer == i + 1);
        bm_redis_reply_free(r);
    }
    struct bm_redis_reply *r = NULL;
    assert_int_equal(bm_redis_cmd(c, &r, "LRANGE", key, "0", "-1", (const char *)NULL),
                     BM_OK);
    assert_int_equal(r->elements, 1000);
    assert_string_equal(r->element[999]->str, "999");
    bm_redis_reply_free(r);
    assert_int_equal(bm_redis_del(c, key, strlen(key)), BM_OK);
    bm_redis_close(c);
}

static void test_reply_over_limit(void **state)
{
    (void)state;
    size_t n = 4u << 20;
    char *val = malloc(n);
    assert_non_null(val);
    memset(val, 'z', n);
    char key[96];
    bm_test_unique(key, sizeof key, "bm:test:big");
    struct bm_redis *c = connect_env(1u << 20, 0);
    /* Sending a big value is fine; only replies are limited. */
    assert_int_equal(bm_redis_set(c, key, strlen(key), val, n, 60000), BM_OK);
    long long id1 = client_id(c);
    void *back = NULL;
    size_t blen = 0;
    assert_int_equal(bm_redis_get(c, key, strlen(key), &back, &blen), BM_ERANGE);
    assert_null(back);
    assert_int_equal(bm_redis_err(c), BM_ERANGE);
    assert_non_null(strstr(bm_redis_errstr(c), "4194304"));
    assert_non_null(strstr(bm_redis_errstr(c), "1048576-byte reply limit"));
    /* Still usable: the next command runs on a fresh connection. */
    assert_int_equal(bm_redis_ping(c), BM_OK);
    assert_true(client_id(c) != id1);
    char small[8];
    assert_int_equal(bm_redis_cmd(c, NULL, "SETRANGE", key, "0", "abc",
                                  (const char *)NULL), BM_OK);
    struct bm_redis_reply *r = NULL;
    assert_int_equal(bm_redis_cmd(c, &r, "GETRANGE", key, "0", "2", (const char *)NULL),
                     BM_OK);
    snprintf(small, sizeof small, "%s", r->str);
    assert_string_equal(small, "abc");
    bm_redis_reply_free(r);
    assert_int_equal(bm_redis_del(c, key, strlen(key)), BM_OK);
    bm_redis_close(c);
    free(val);
}

static void test_aggregate_over_limit(void **state)
{
    (void)state;
    char key[96];
    bm_test_unique(key, sizeof key, "bm:test:agg");
    struct bm_redis *c = connect_env(0, 100);
    for (int i = 0; i < 150; i++)
        assert_int_equal(bm_redis_cmd(c, NULL, "RPUSH", key, "e", (const char *)NULL),
                         BM_OK);
    struct bm_redis_reply *r = NULL;
    assert_int_equal(bm_redis_cmd(c, &r, "LRANGE", key, "0", "99", (const char *)NULL),
                     BM_OK);
    assert_int_equal(r->elements, 100);
    bm_redis_reply_free(r);
    assert_int_equal(bm_redis_cmd(c, &r, "LRANGE", key, "0", "-1", (const char *)NULL),
                     BM_ERANGE);
    assert_null(r);
    assert_non_null(strstr(bm_redis_errstr(c), "150 elements"));
    assert_int_equal(bm_redis_cmd(c, &r, "LLEN", key, (const char *)NULL), BM_OK);
    assert_true(r->integer == 150);
    bm_redis_reply_free(r);
    assert_int_equal(bm_redis_del(c, key, strlen(key)), BM_OK);
    bm_redis_close(c);
}

static void test_reconnect_after_kill(void **state)
{
    (void)state;
    char url[256], key[96];
    env_url_with(url, sizeof url, "", "/2");
    bm_test_unique(key, sizeof key, "bm:test:db2");
    struct bm_redis *c = connect_url(url, 0, 0);
    struct bm_redis *killer = connect_env(0, 0);
    assert_int_equal(bm_redis_set(c, key, strlen(key), "x", 1, 60000), BM_OK);

    /* Killed while idle: the next command notices and reconnects, in db 2.
     * Redis closes the victim's socket before it answers the killer, so on
     * loopback the FIN is already queued on our side when kill_client
     * returns. */
    long long id1 = client_id(c);
    kill_client(killer, id1);
    void *v = NULL;
    size_t vl = 0;
    assert_int_equal(bm_redis_get(c, key, strlen(key), &v, &vl), BM_OK);
    assert_int_equal(vl, 1);
    free(v);
    long long id2 = client_id(c);
    assert_true(id2 != id1);
    /* The key really is only in db 2. */
    assert_int_equal(bm_redis_get(killer, key, strlen(key), &v, &vl), BM_ENOTFOUND);

    /* Killed with a command in flight: that command fails with BM_EIO and
     * is not re-sent; the one after reconnects. */
    char ids[32];
    snprintf(ids, sizeof ids, "%lld", id2);
    /* SKIPME no: by default CLIENT KILL spares the calling connection. */
    const char *kill[6] = { "CLIENT", "KILL", "ID", ids, "SKIPME", "no" };
    size_t kl[6] = { 6, 4, 2, strlen(ids), 6, 2 };
    const char *incr[2] = { "INCR", key };
    char ckey[128];
    snprintf(ckey, sizeof ckey, "%s:n", key);
    incr[1] = ckey;
    size_t il[2] = { 4, strlen(ckey) };
    assert_int_equal(bm_redis_append(c, 6, kill, kl), BM_OK);
    assert_int_equal(bm_redis_append(c, 2, incr, il), BM_OK);
    struct bm_redis_reply *r = NULL;
    assert_int_equal(bm_redis_get_reply(c, &r), BM_OK);
    assert_true(r->integer == 1);
    bm_redis_reply_free(r);
    assert_int_equal(bm_redis_get_reply(c, &r), BM_EIO);
    assert_null(r);
    assert_int_equal(bm_redis_get(c, ckey, strlen(ckey), &v, &vl), BM_ENOTFOUND);
    assert_true(client_id(c) != id2);
    assert_int_equal(bm_redis_del(c, key, strlen(key)), BM_OK);
    bm_redis_close(killer);
    bm_redis_close(c);
}

static void test_auth(void **state)
{
    (void)state;
    char user[64], url[256], err[256];
    bm_test_unique(user, sizeof user, "bmuser");
    struct bm_redis *admin = connect_env(0, 0);
    assert_int_equal(bm_redis_cmd(admin, NULL, "ACL", "SETUSER", user, "on", ">s3cr:t",
                                  "~*", "&*", "+@all", (const char *)NULL), BM_OK);
    char prefix[128];
    snprintf(prefix, sizeof prefix, "%s:s3cr%%3At@", user);
    env_url_with(url, sizeof url, prefix, "");
    struct bm_redis *c = connect_url(url, 0, 0);
    struct bm_redis_reply *r = NULL;
    assert_int_equal(bm_redis_cmd(c, &r, "ACL", "WHOAMI", (const char *)NULL), BM_OK);
    assert_string_equal(r->str, user);
    bm_redis_reply_free(r);
    /* Re-AUTH on reconnect: after a kill we are still that user. */
    kill_client(admin, client_id(c));
    assert_int_equal(bm_redis_cmd(c, &r, "ACL", "WHOAMI", (const char *)NULL), BM_OK);
    assert_string_equal(r->str, user);
    bm_redis_reply_free(r);
    bm_redis_close(c);

    snprintf(prefix, sizeof prefix, "%s:wrong@", user);
    env_url_with(url, sizeof url, prefix, "");
    assert_null(bm_redis_connect(url, NULL, err, sizeof err));
    assert_non_null(strstr(err, "AUTH failed"));
    assert_non_null(strstr(err, "WRONGPASS"));
    assert_int_equal(bm_redis_cmd(admin, NULL, "ACL", "DELUSER", user, (const char *)NULL),
                     BM_OK);
    bm_redis_close(admin);
}

static void test_eval(void **state)
{
    (void)state;
    static const char script[] =
        "redis.call('SET', KEYS[1], ARGV[1]) return redis.call('STRLEN', KEYS[1])";
    char key[96];
    bm_test_unique(key, sizeof key, "bm:test:lua");
    struct bm_redis *c = connect_env(0, 0);
    const char *argv[2] = { key, "a\0b" };
    size_t lens[2] = { strlen(key), 3 };
    struct bm_redis_reply *r = NULL;
    for (int i = 0; i < 2; i++) {
        assert_int_equal(bm_redis_eval(c, script, 1, 2, argv, lens, &r), BM_OK);
        assert_int_equal(r->type, BM_REDIS_INTEGER);
        assert_true(r->integer == 3);
        bm_redis_reply_free(r);
    }
    /* The server forgets every script: eval loads it again by itself. */
    assert_int_equal(bm_redis_cmd(c, NULL, "SCRIPT", "FLUSH", (const char *)NULL), BM_OK);
    assert_int_equal(bm_redis_eval(c, script, 1, 2, argv, lens, &r), BM_OK);
    assert_true(r->integer == 3);
    bm_redis_reply_free(r);

    char sha[41];
    assert_int_equal(bm_redis_script_load(c, "return {1, 'two'}", sha), BM_OK);
    assert_int_equal(bm_redis_evalsha(c, sha, 0, 0, NULL, NULL, &r), BM_OK);
    assert_int_equal(r->elements, 2);
    assert_string_equal(r->element[1]->str, "two");
    bm_redis_reply_free(r);
    assert_int_equal(bm_redis_evalsha(c, "0000000000000000000000000000000000000000", 0, 0,
                                      NULL, NULL, &r), BM_EREDIS);
    assert_non_null(strstr(bm_redis_errstr(c), "NOSCRIPT"));
    bm_redis_reply_free(r);
    /* A script error is a server error reply. */
    assert_int_equal(bm_redis_eval(c, "return redis.error_reply('BMFAIL nope')", 0, 0,
                                   NULL, NULL, &r), BM_EREDIS);
    assert_int_equal(r->type, BM_REDIS_ERROR);
    assert_non_null(strstr(bm_redis_errstr(c), "BMFAIL nope"));
    bm_redis_reply_free(r);
    assert_int_equal(bm_redis_del(c, key, strlen(key)), BM_OK);
    bm_redis_close(c);
}

static void test_server_errors(void **state)
{
    (void)state;
    char key[96];
    bm_test_unique(key, sizeof key, "bm:test:err");
    struct bm_redis *c = connect_env(0, 0);
    long long id = client_id(c);
    struct bm_redis_reply *r = NULL;
    assert_int_equal(bm_redis_cmd(c, &r, "BMNOSUCHCOMMAND", "x", (const char *)NULL),
                     BM_EREDIS);
    assert_non_null(r);
    assert_int_equal(r->type, BM_REDIS_ERROR);
    assert_non_null(strstr(r->str, "unknown command"));
    assert_non_null(strstr(bm_redis_errstr(c), "unknown command"));
    bm_redis_reply_free(r);

    assert_int_equal(bm_redis_cmd(c, NULL, "RPUSH", key, "x", (const char *)NULL), BM_OK);
    void *v = NULL;
    size_t vl = 0;
    assert_int_equal(bm_redis_get(c, key, strlen(key), &v, &vl), BM_EREDIS);
    assert_null(v);
    assert_non_null(strstr(bm_redis_errstr(c), "WRONGTYPE"));
    /* Error replies leave the connection as it was. */
    assert_int_equal(client_id(c), id);
    assert_int_equal(bm_redis_del(c, key, strlen(key)), BM_OK);
    bm_redis_close(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_version),
        cmocka_unit_test(test_blob_roundtrip),
        cmocka_unit_test(test_pipeline),
        cmocka_unit_test(test_reply_over_limit),
        cmocka_unit_test(test_aggregate_over_limit),
        cmocka_unit_test(test_reconnect_after_kill),
        cmocka_unit_test(test_auth),
        cmocka_unit_test(test_eval),
        cmocka_unit_test(test_server_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
