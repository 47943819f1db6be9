/* The Redis connection layer over TLS against the real redis-server's TLS
 * port (BIOMATCH_REDIS_TLS_URL, with BIOMATCH_REDIS_TLS_CA_FILE / _CERT_FILE
 * / _KEY_FILE from scripts/services; the server requires client
 * certificates there): big blobs, pipelining, the reply limit, reconnect
 * after CLIENT KILL, and every way verification must refuse a server (wrong
 * CA, system store, name and IP mismatch, plain port) or the server must
 * refuse us (no client certificate, one from a foreign CA). Foreign CAs and
 * certificates are made here with OpenSSL, in a temporary folder. */
#include "testutil.h"

#include "common/err.h"
#include "conf/conf.h"
#include "store/redis.h"
#include "store/redis_conf.h"

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char g_tmp[] = "/tmp/bm-test-redis-tls.XXXXXX";
static char g_other_ca[300];     /* a self-signed CA that signed nothing of ours */
static char g_other_key[300];    /* its key: also a "client cert" from a foreign CA */

/* The TLS options the services hand out: our CA, our client certificate. */
static struct bm_redis_opts tls_opts(void)
{
    struct bm_redis_opts o = { 0 };
    o.connect_timeout_ms = 5000;
    o.io_timeout_ms = 20000;
    o.reconnect_attempts = 2;
    o.tls_ca_file = bm_test_env("BIOMATCH_REDIS_TLS_CA_FILE");
    o.tls_cert_file = bm_test_env("BIOMATCH_REDIS_TLS_CERT_FILE");
    o.tls_key_file = bm_test_env("BIOMATCH_REDIS_TLS_KEY_FILE");
    return o;
}

static struct bm_redis *connect_tls(const struct bm_redis_opts *o)
{
    char err[256];
    struct bm_redis *c = bm_redis_connect(bm_test_env("BIOMATCH_REDIS_TLS_URL"), o, err,
                                          sizeof err);
    if (c == NULL)
        fail_msg("connect %s: %s", bm_test_env("BIOMATCH_REDIS_TLS_URL"), err);
    return c;
}

/* "rediss://<host>:<TLS port>" */
static void tls_url_host(char *buf, size_t len, const char *host)
{
    const char *u = bm_test_env("BIOMATCH_REDIS_TLS_URL");
    const char *colon = strrchr(u, ':');
    assert_true(strncmp(u, "rediss://", 9) == 0 && colon != NULL);
    snprintf(buf, len, "rediss://%s%s", host, colon);
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

static void fill_random(unsigned char *p, size_t n, uint64_t seed)
{
    uint64_t x = seed * 0x9E3779B97F4A7C15ull | 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p[i] = (unsigned char)x;
    }
}

/* A self-signed EC certificate 'cn' and its key into PEM files. */
static void write_self_signed(const char *crt, const char *key, const char *cn)
{
    EVP_PKEY *k = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    assert_non_null(k);
    assert_non_null(x);
    assert_int_equal(X509_set_version(x, 2), 1);
    assert_int_equal(ASN1_INTEGER_set(X509_get_serialNumber(x), 1), 1);
    assert_non_null(X509_gmtime_adj(X509_getm_notBefore(x), -60));
    assert_non_null(X509_gmtime_adj(X509_getm_notAfter(x), 3600));
    assert_int_equal(X509_set_pubkey(x, k), 1);
    X509_NAME *n = X509_get_subject_name(x);
    assert_int_equal(X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC,
                                                (const unsigned char *)cn, -1, -1, 0), 1);
    assert_int_equal(X509_set_issuer_name(x, n), 1);
    assert_true(X509_sign(x, k, EVP_sha256()) > 0);
    FILE *f = fopen(crt, "w");
    assert_non_null(f);
    assert_int_equal(PEM_write_X509(f, x), 1);
    assert_int_equal(fclose(f), 0);
    f = fopen(key, "w");
    assert_non_null(f);
    assert_int_equal(PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL), 1);
    assert_int_equal(fclose(f), 0);
    X509_free(x);
    EVP_PKEY_free(k);
}

static int setup(void **state)
{
    (void)state;
    if (mkdtemp(g_tmp) == NULL)
        return -1;
    snprintf(g_other_ca, sizeof g_other_ca, "%s/other-ca.crt", g_tmp);
    snprintf(g_other_key, sizeof g_other_key, "%s/other-ca.key", g_tmp);
    write_self_signed(g_other_ca, g_other_key, "biomatch test: some other CA");
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    unlink(g_other_ca);
    unlink(g_other_key);
    rmdir(g_tmp);
    return 0;
}

/* A connect that must fail; its message must contain 'want'. */
static void expect_refused(const char *url, const struct bm_redis_opts *o, const char *want)
{
    char err[256] = "";
    struct bm_redis *c = bm_redis_connect(url, o, err, sizeof err);
    if (c != NULL) {
        /* Under TLS 1.3 the server judges our certificate after our side of
         * the handshake is done: its refusal arrives with the first reply. */
        int rc = bm_redis_ping(c);
        snprintf(err, sizeof err, "%s", bm_redis_errstr(c));
        bm_redis_close(c);
        if (rc == BM_OK)
            fail_msg("%s was accepted (wanted a failure with '%s')", url, want);
    }
    print_message("refused as expected: %s\n", err);
    if (strstr(err, want) == NULL)
        fail_msg("error '%s' lacks '%s'", err, want);
}

static void test_ping_big_blob(void **state)
{
    (void)state;
    struct bm_redis_opts o = tls_opts();
    struct bm_redis *c = connect_tls(&o);
    assert_int_equal(bm_redis_ping(c), BM_OK);
    char ver[32];
    assert_int_equal(bm_redis_server_version(c, ver, sizeof ver), BM_OK);
    print_message("redis version %s over TLS\n", ver);

    char key[128];
    bm_test_unique(key, sizeof key, "tls.blob");
    size_t n = (size_t)10 << 20;
    unsigned char *blob = malloc(n);
    assert_non_null(blob);
    fill_random(blob, n, 42);
    assert_int_equal(bm_redis_set(c, key, strlen(key), blob, n, 60000), BM_OK);
    void *v = NULL;
    size_t vl = 0;
    assert_int_equal(bm_redis_get(c, key, strlen(key), &v, &vl), BM_OK);
    assert_int_equal(vl, n);
    assert_memory_equal(v, blob, n);
    free(v);
    assert_int_equal(bm_redis_del(c, key, strlen(key)), BM_OK);
    free(blob);
    bm_redis_close(c);
}

static void test_pipeline(void **state)
{
    (void)state;
    struct bm_redis_opts o = tls_opts();
    struct bm_redis *c = connect_tls(&o);
    char key[128];
    bm_test_unique(key, sizeof key, "tls.pipe");
    enum { N = 2000 };
    for (int i = 0; i < N; i++) {
        char val[32];
        snprintf(val, sizeof val, "v%d", i);
        const char *argv[4] = { "RPUSH", key, val };
        size_t lens[3] = { 5, strlen(key), strlen(val) };
        assert_int_equal(bm_redis_append(c, 3, argv, lens), BM_OK);
    }
    assert_int_equal(bm_redis_pending(c), N);
    for (int i = 0; i < N; i++) {
        struct bm_redis_reply *r = NULL;
        assert_int_equal(bm_redis_get_reply(c, &r), BM_OK);
        assert_int_equal(r->type, BM_REDIS_INTEGER);
        assert_true(r->integer == i + 1);
        bm_redis_reply_free(r);
    }
    struct bm_redis_reply *r = NULL;
    assert_int_equal(bm_redis_cmd(c, &r, "LRANGE", key, "0", "-1", (const char *)NULL),
                     BM_OK);
    assert_int_equal(r->type, BM_REDIS_ARRAY);
    assert_int_equal(r->elements, N);
    assert_string_equal(r->element[N - 1]->str, "v1999");
    bm_redis_reply_free(r);
    assert_int_equal(bm_redis_del(c, key, strlen(key)), BM_OK);
    bm_redis_close(c);
}

static void test_reply_limit(void **state)
{
    (void)state;
    struct bm_redis_opts o = tls_opts();
    struct bm_redis *big = connect_tls(&o);
    o.max_reply_bytes = (size_t)1 << 20;
    struct bm_redis *small = connect_tls(&o);
    char key[128];
    bm_test_unique(key, sizeof key, "tls.limit");
    size_t n = (size_t)2 << 20;
    unsigned char *blob = malloc(n);
    assert_non_null(blob);
    fill_random(blob, n, 7);
    assert_int_equal(bm_redis_set(big, key, strlen(key), blob, n, 60000), BM_OK);

    long long id = client_id(small);
    void *v = NULL;
    size_t vl = 0;
    assert_int_equal(bm_redis_get(small, key, strlen(key), &v, &vl), BM_ERANGE);
    assert_null(v);
    /* The oversized reply was never read: the connection was dropped and
     * the next command gets a fresh TLS session. */
    assert_int_equal(bm_redis_ping(small), BM_OK);
    assert_true(client_id(small) != id);
    assert_int_equal(bm_redis_del(big, key, strlen(key)), BM_OK);
    free(blob);
    bm_redis_close(small);
    bm_redis_close(big);
}

static void test_reconnect_after_kill(void **state)
{
    (void)state;
    struct bm_redis_opts o = tls_opts();
    struct bm_redis *c = connect_tls(&o);
    struct bm_redis *killer = connect_tls(&o);
    long long id = client_id(c);
    char ids[32];
    snprintf(ids, sizeof ids, "%lld", id);
    struct bm_redis_reply *r = NULL;
    assert_int_equal(bm_redis_cmd(killer, &r, "CLIENT", "KILL", "ID", ids, (const char *)NULL),
                     BM_OK);
    assert_true(r->type == BM_REDIS_INTEGER && r->integer == 1);
    bm_redis_reply_free(r);
    /* The idle check notices the closed TLS stream before sending, so the
     * command itself succeeds on a new session. */
    assert_int_equal(bm_redis_ping(c), BM_OK);
    assert_true(client_id(c) != id);
    bm_redis_close(killer);
    bm_redis_close(c);
}

static void test_wrong_ca(void **state)
{
    (void)state;
    const char *url = bm_test_env("BIOMATCH_REDIS_TLS_URL");
    struct bm_redis_opts o = tls_opts();
    o.reconnect_attempts = -1;
    o.tls_ca_file = g_other_ca;
    expect_refused(url, &o, "certificate verify failed");
    /* The system trust store does not know the throwaway CA either. */
    o.tls_ca_file = NULL;
    expect_refused(url, &o, "certificate verify failed");
    o.tls_ca_file = "/nonexistent/ca.pem";
    expect_refused(url, &o, "CA file /nonexistent/ca.pem: No such file");
}

static void test_name_mismatch(void **state)
{
    (void)state;
    char url[256];
    struct bm_redis_opts o = tls_opts();
    o.reconnect_attempts = -1;
    /* The server certificate names only IP 127.0.0.1. */
    tls_url_host(url, sizeof url, "localhost");
    expect_refused(url, &o, "hostname mismatch");
    o.tls_server_name = "redis.example.com";
    expect_refused(bm_test_env("BIOMATCH_REDIS_TLS_URL"), &o, "hostname mismatch");
    o.tls_server_name = "127.0.0.2";
    expect_refused(bm_test_env("BIOMATCH_REDIS_TLS_URL"), &o, "IP address mismatch");
    /* The override in the other direction: dial a name, verify the IP. */
    o.tls_server_name = "127.0.0.1";
    struct bm_redis *c = bm_redis_connect(url, &o, NULL, 0);
    assert_non_null(c);
    assert_int_equal(bm_redis_ping(c), BM_OK);
    bm_redis_close(c);
}

static void test_client_certificates(void **state)
{
    (void)state;
    const char *url = bm_test_env("BIOMATCH_REDIS_TLS_URL");
    struct bm_redis_opts o = tls_opts();
    o.reconnect_attempts = -1;
    /* No client certificate: the server (tls-auth-clients yes) refuses. */
    o.tls_cert_file = NULL;
    o.tls_key_file = NULL;
    expect_refused(url, &o, "certificate");
    /* One the server's CA did not sign: refused too. */
    o.tls_cert_file = g_other_ca;
    o.tls_key_file = g_other_key;
    expect_refused(url, &o, "alert");
    /* A key that does not belong to the certificate: caught locally. */
    o.tls_cert_file = bm_test_env("BIOMATCH_REDIS_TLS_CERT_FILE");
    expect_refused(url, &o, "load client key");
    o.tls_cert_file = NULL;
    expect_refused(url, &o, "needs a certificate");
}

/* rediss:// to the plain port fails the handshake, and redis:// to the TLS
 * port gets no answer it can parse: no silent fallback either way. */
static void test_no_plaintext_fallback(void **state)
{
    (void)state;
    const char *plain = bm_test_env("BIOMATCH_REDIS_URL");
    char url[256];
    assert_true(strncmp(plain, "redis://", 8) == 0);
    snprintf(url, sizeof url, "rediss://%s", plain + 8);
    struct bm_redis_opts o = tls_opts();
    o.reconnect_attempts = -1;
    o.connect_timeout_ms = 3000;
    expect_refused(url, &o, "TLS handshake");

    const char *tls = bm_test_env("BIOMATCH_REDIS_TLS_URL");
    snprintf(url, sizeof url, "redis://%s", tls + 9);
    o.io_timeout_ms = 2000;
    char err[256];
    struct bm_redis *c = bm_redis_connect(url, &o, err, sizeof err);
    assert_non_null(c);     /* TCP connects; no AUTH to send */
    assert_int_not_equal(bm_redis_ping(c), BM_OK);
    bm_redis_close(c);
}

/* The config keys end to end: redis.url + redis.tls_* from the environment,
 * through bm_redis_connect_conf. */
static void test_from_conf(void **state)
{
    (void)state;
    char e[4][400];
    snprintf(e[0], sizeof e[0], "BIOMATCH_REDIS_URL=%s", bm_test_env("BIOMATCH_REDIS_TLS_URL"));
    snprintf(e[1], sizeof e[1], "BIOMATCH_REDIS_TLS_CA_FILE=%s",
             bm_test_env("BIOMATCH_REDIS_TLS_CA_FILE"));
    snprintf(e[2], sizeof e[2], "BIOMATCH_REDIS_TLS_CERT_FILE=%s",
             bm_test_env("BIOMATCH_REDIS_TLS_CERT_FILE"));
    snprintf(e[3], sizeof e[3], "BIOMATCH_REDIS_TLS_KEY_FILE=%s",
             bm_test_env("BIOMATCH_REDIS_TLS_KEY_FILE"));
    const char *envp[5] = { e[0], e[1], e[2], e[3], NULL };
    char err[256];
    struct bm_conf *conf = bm_conf_parse(NULL, 0, NULL, envp, err, sizeof err);
    if (conf == NULL)
        fail_msg("conf: %s", err);
    assert_string_equal(conf->redis.tls_ca_file, bm_test_env("BIOMATCH_REDIS_TLS_CA_FILE"));
    struct bm_redis *c = bm_redis_connect_conf(conf, err, sizeof err);
    if (c == NULL)
        fail_msg("connect from conf: %s", err);
    assert_int_equal(bm_redis_ping(c), BM_OK);
    bm_redis_close(c);

    /* Without the CA file the same conf fails verification. */
    const char *envp2[4] = { e[0], e[2], e[3], NULL };
    bm_conf_destroy(conf);
    conf = bm_conf_parse(NULL, 0, NULL, envp2, err, sizeof err);
    assert_non_null(conf);
    conf->redis.connect_timeout_ms = 3000;
    struct bm_redis_opts o;
    bm_redis_opts_from_conf(&o, conf);
    o.reconnect_attempts = -1;
    expect_refused(conf->redis.url, &o, "certificate verify failed");
    bm_conf_destroy(conf);

    /* A key without a certificate is a config error. */
    const char *envp3[3] = { e[0], e[3], NULL };
    assert_null(bm_conf_parse(NULL, 0, NULL, envp3, err, sizeof err));
    assert_non_null(strstr(err, "redis.tls_key_file"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ping_big_blob),
        cmocka_unit_test(test_pipeline),
        cmocka_unit_test(test_reply_limit),
        cmocka_unit_test(test_reconnect_after_kill),
        cmocka_unit_test(test_wrong_ca),
        cmocka_unit_test(test_name_mismatch),
        cmocka_unit_test(test_client_certificates),
        cmocka_unit_test(test_no_plaintext_fallback),
        cmocka_unit_test(test_from_conf),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
