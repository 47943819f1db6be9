/* crypto: AES-256-GCM seal/open (round trips at several lengths, every
 * kind of tampering refused), key file parsing and permission rules, the
 * keyring (ids, current key, rotation lookup, building from bm_conf) and
 * the at-rest envelope (AAD binds gallery/shard/segment/key id, missing key
 * ids named, manifest agreement, rotation). No network. */
#include "testutil.h"

#include "common/err.h"
#include "conf/conf.h"
#include "crypto/aead.h"
#include "crypto/atrest.h"
#include "crypto/keyring.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char err[512];

static void fill(uint8_t *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(seed * 131u + i * 7u + (i >> 8));
}

static const uint8_t KEY1[32] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
                                 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32};
static const uint8_t KEY2[32] = {0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7,
                                 0xa8, 0xa9, 0xaa, 0xab, 0xac, 0xad, 0xae, 0xaf,
                                 0xb0, 0xb1, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7,
                                 0xb8, 0xb9, 0xba, 0xbb, 0xbc, 0xbd, 0xbe, 0xbf};

/* ---- aead ---------------------------------------------------------------- */

static void test_aead_round_trip(void **state)
{
    (void)state;
    static const size_t lens[] = {0, 1, 15, 16, 17, 255, 4096, 1u << 20};
    const uint8_t aad[] = "gallery/3/42";
    for (size_t t = 0; t < sizeof lens / sizeof lens[0]; t++) {
        size_t n = lens[t];
        uint8_t *pt = malloc(n + 1), *ct = malloc(n + BM_AEAD_OVERHEAD),
                *ct2 = malloc(n + BM_AEAD_OVERHEAD), *back = malloc(n + 1);
        assert_non_null(pt);
        assert_non_null(ct);
        assert_non_null(ct2);
        assert_non_null(back);
        fill(pt, n, (unsigned)t);
        assert_int_equal(bm_aead_seal(KEY1, aad, sizeof aad, pt, n, ct, err, sizeof err), BM_OK);
        assert_int_equal(bm_aead_seal(KEY1, aad, sizeof aad, pt, n, ct2, err, sizeof err), BM_OK);
        /* Fresh random nonce per seal, hence different ciphertexts. */
        assert_memory_not_equal(ct, ct2, BM_AEAD_NONCE_BYTES);
        if (n >= 16)
            assert_memory_not_equal(ct + BM_AEAD_NONCE_BYTES, pt, 16);
        assert_int_equal(bm_aead_open(KEY1, aad, sizeof aad, ct, n + BM_AEAD_OVERHEAD, back, err,
                                      sizeof err),
                         BM_OK);
        if (n > 0)
            assert_memory_equal(back, pt, n);
        free(pt);
        free(ct);
        free(ct2);
        free(back);
    }
}

static void test_aead_tamper(void **state)
{
    (void)state;
    enum { N = 300 };
    uint8_t pt[N], ct[N + BM_AEAD_OVERHEAD], bad[N + BM_AEAD_OVERHEAD], back[N];
    uint8_t aad[] = "aad-bytes";
    fill(pt, N, 9);
    assert_int_equal(bm_aead_seal(KEY1, aad, sizeof aad, pt, N, ct, err, sizeof err), BM_OK);
    /* One flipped bit anywhere: nonce, ciphertext, tag. */
    const size_t where[] = {0, 11, 12, 12 + N / 2, 12 + N - 1, 12 + N, sizeof ct - 1};
    for (size_t i = 0; i < sizeof where / sizeof where[0]; i++) {
        memcpy(bad, ct, sizeof ct);
        bad[where[i]] ^= 0x01;
        memset(back, 0x55, sizeof back);
        assert_int_equal(bm_aead_open(KEY1, aad, sizeof aad, bad, sizeof bad, back, err,
                                      sizeof err),
                         BM_ECHECKSUM);
        /* No unauthenticated plaintext escapes. */
        for (size_t j = 0; j < N; j++)
            assert_int_equal(back[j], 0);
    }
    /* Another AAD, a shorter AAD, no AAD, another key. */
    uint8_t aad2[] = "aad-bytez";
    assert_int_equal(bm_aead_open(KEY1, aad2, sizeof aad2, ct, sizeof ct, back, err, sizeof err),
                     BM_ECHECKSUM);
    assert_int_equal(bm_aead_open(KEY1, aad, sizeof aad - 1, ct, sizeof ct, back, err, sizeof err),
                     BM_ECHECKSUM);
    assert_int_equal(bm_aead_open(KEY1, NULL, 0, ct, sizeof ct, back, err, sizeof err),
                     BM_ECHECKSUM);
    assert_int_equal(bm_aead_open(KEY2, aad, sizeof aad, ct, sizeof ct, back, err, sizeof err),
                     BM_ECHECKSUM);
    /* Truncation: a shorter message moves the tag; too short for a tag. */
    assert_int_equal(bm_aead_open(KEY1, aad, sizeof aad, ct, sizeof ct - 1, back, err, sizeof err),
                     BM_ECHECKSUM);
    assert_int_equal(bm_aead_open(KEY1, aad, sizeof aad, ct, BM_AEAD_OVERHEAD - 1, back, err,
                                  sizeof err),
                     BM_EPROTO);
    /* And the original still opens. */
    assert_int_equal(bm_aead_open(KEY1, aad, sizeof aad, ct, sizeof ct, back, err, sizeof err),
                     BM_OK);
    assert_memory_equal(back, pt, N);
}

/* ---- key files ----------------------------------------------------------- */

static const char HEX1[] = "0102030405060708090a0b0c0d0e0f10"
                           "1112131415161718191A1B1C1D1E1F20"; /* KEY1, mixed case */

static void test_parse_key(void **state)
{
    (void)state;
    uint8_t key[32];
    assert_int_equal(bm_keyring_parse_key(KEY1, 32, key, err, sizeof err), BM_OK);
    assert_memory_equal(key, KEY1, 32);
    assert_int_equal(bm_keyring_parse_key((const uint8_t *)HEX1, 64, key, err, sizeof err), BM_OK);
    assert_memory_equal(key, KEY1, 32);
    char line[80];
    snprintf(line, sizeof line, "%s\n", HEX1);
    assert_int_equal(bm_keyring_parse_key((const uint8_t *)line, 65, key, err, sizeof err), BM_OK);
    assert_memory_equal(key, KEY1, 32);
    /* Everything else is refused. */
    static const size_t badlens[] = {0, 1, 16, 31, 33, 48, 63, 66, 128};
    uint8_t big[128];
    memset(big, '0', sizeof big);
    for (size_t i = 0; i < sizeof badlens / sizeof badlens[0]; i++) {
        assert_int_equal(bm_keyring_parse_key(big, badlens[i], key, err, sizeof err), BM_EPROTO);
        assert_non_null(strstr(err, "expected 32 raw bytes or 64 hex"));
    }
    snprintf(line, sizeof line, "%s\r\n", HEX1); /* 66 bytes */
    assert_int_equal(bm_keyring_parse_key((const uint8_t *)line, 66, key, err, sizeof err),
                     BM_EPROTO);
    snprintf(line, sizeof line, "%s ", HEX1); /* trailing space, not newline */
    assert_int_equal(bm_keyring_parse_key((const uint8_t *)line, 65, key, err, sizeof err),
                     BM_EPROTO);
    memcpy(line, HEX1, 64);
    line[10] = 'g';
    assert_int_equal(bm_keyring_parse_key((const uint8_t *)line, 64, key, err, sizeof err),
                     BM_EPROTO);
    assert_non_null(strstr(err, "not hexadecimal"));
}

static char tmpdir[64];

static void write_file(const char *path, const void *data, size_t len, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, data, len), (ssize_t)len);
    close(fd);
    assert_int_equal(chmod(path, mode), 0);
}

static int setup_dir(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/bm-crypto-test.XXXXXX");
    return mkdtemp(tmpdir) != NULL ? 0 : -1;
}

static int teardown_dir(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static void test_key_file(void **state)
{
    (void)state;
    char p[128];
    struct bm_keyring *kr = bm_keyring_new();
    assert_non_null(kr);

    snprintf(p, sizeof p, "%s/raw", tmpdir);
    write_file(p, KEY1, 32, 0600);
    assert_int_equal(bm_keyring_add_file(kr, "raw", p, 1, err, sizeof err), BM_OK);
    assert_null(bm_keyring_warning(kr));

    /* 0440 (the Kubernetes mount with defaultMode) is fine and quiet. */
    snprintf(p, sizeof p, "%s/hex", tmpdir);
    write_file(p, HEX1, 64, 0440);
    assert_int_equal(bm_keyring_add_file(kr, "hex", p, 0, err, sizeof err), BM_OK);
    assert_null(bm_keyring_warning(kr));
    assert_memory_equal(bm_keyring_find(kr, "hex"), KEY1, 32);

    /* World-readable (Kubernetes' default 0644): accepted with a warning. */
    snprintf(p, sizeof p, "%s/loose", tmpdir);
    write_file(p, KEY2, 32, 0644);
    assert_int_equal(bm_keyring_add_file(kr, "loose", p, 0, err, sizeof err), BM_OK);
    assert_non_null(bm_keyring_warning(kr));
    assert_non_null(strstr(bm_keyring_warning(kr), "readable by everyone"));
    assert_non_null(strstr(bm_keyring_warning(kr), "loose"));

    /* World-writable: refused. */
    snprintf(p, sizeof p, "%s/writable", tmpdir);
    write_file(p, KEY2, 32, 0602);
    assert_int_equal(bm_keyring_add_file(kr, "w", p, 0, err, sizeof err), BM_EINVAL);
    assert_non_null(strstr(err, "writable by everyone"));

    /* Wrong sizes, a directory, a missing file; errors name path and id. */
    uint8_t big[200];
    memset(big, 'a', sizeof big);
    snprintf(p, sizeof p, "%s/long", tmpdir);
    write_file(p, big, sizeof big, 0600);
    assert_int_equal(bm_keyring_add_file(kr, "long", p, 0, err, sizeof err), BM_EPROTO);
    assert_non_null(strstr(err, "'long'"));
    assert_non_null(strstr(err, p));
    snprintf(p, sizeof p, "%s/short", tmpdir);
    write_file(p, KEY1, 31, 0600);
    assert_int_equal(bm_keyring_add_file(kr, "short", p, 0, err, sizeof err), BM_EPROTO);
    assert_non_null(strstr(err, "31 bytes"));
    snprintf(p, sizeof p, "%s/empty", tmpdir);
    write_file(p, "", 0, 0600);
    assert_int_equal(bm_keyring_add_file(kr, "empty", p, 0, err, sizeof err), BM_EPROTO);
    assert_int_equal(bm_keyring_add_file(kr, "dir", tmpdir, 0, err, sizeof err), BM_EINVAL);
    assert_non_null(strstr(err, "not a regular file"));
    snprintf(p, sizeof p, "%s/none", tmpdir);
    assert_int_equal(bm_keyring_add_file(kr, "none", p, 0, err, sizeof err), BM_EIO);

    assert_int_equal(bm_keyring_count(kr), 3);
    assert_string_equal(bm_keyring_current_id(kr), "raw");
    bm_keyring_free(kr);
}

/* ---- keyring ------------------------------------------------------------- */

static void test_keyring_rules(void **state)
{
    (void)state;
    bm_keyring_free(NULL);
    assert_null(bm_keyring_current_id(NULL));
    assert_null(bm_keyring_find(NULL, "k1"));
    struct bm_keyring *kr = bm_keyring_new();
    assert_non_null(kr);
    assert_null(bm_keyring_current_id(kr));
    assert_int_equal(bm_keyring_add(kr, "k1", KEY1, 0, err, sizeof err), BM_OK);
    assert_null(bm_keyring_current_id(kr));
    assert_int_equal(bm_keyring_add(kr, "k2", KEY2, 1, err, sizeof err), BM_OK);
    assert_string_equal(bm_keyring_current_id(kr), "k2");
    assert_int_equal(bm_keyring_add(kr, "k1", KEY2, 0, err, sizeof err), BM_ECONFLICT);
    assert_int_equal(bm_keyring_add(kr, "k3", KEY2, 1, err, sizeof err), BM_ECONFLICT);
    assert_non_null(strstr(err, "'k2' already is"));
    assert_int_equal(bm_keyring_add(kr, "", KEY2, 0, err, sizeof err), BM_EINVAL);
    assert_int_equal(bm_keyring_add(kr, "bad id", KEY2, 0, err, sizeof err), BM_EINVAL);
    char longid[80];
    memset(longid, 'a', sizeof longid);
    longid[65] = '\0';
    assert_int_equal(bm_keyring_add(kr, longid, KEY2, 0, err, sizeof err), BM_EINVAL);
    longid[64] = '\0';
    assert_int_equal(bm_keyring_add(kr, longid, KEY2, 0, err, sizeof err), BM_OK);
    /* Growth keeps every key (more than the initial capacity). */
    for (int i = 0; i < 10; i++) {
        char id[16];
        uint8_t k[32];
        snprintf(id, sizeof id, "g%d", i);
        memset(k, i, sizeof k);
        assert_int_equal(bm_keyring_add(kr, id, k, 0, err, sizeof err), BM_OK);
    }
    assert_int_equal(bm_keyring_count(kr), 13);
    assert_memory_equal(bm_keyring_find(kr, "k1"), KEY1, 32);
    assert_memory_equal(bm_keyring_find(kr, "k2"), KEY2, 32);
    uint8_t k7[32];
    memset(k7, 7, sizeof k7);
    assert_memory_equal(bm_keyring_find(kr, "g7"), k7, 32);
    assert_null(bm_keyring_find(kr, "k9"));
    assert_string_equal(bm_keyring_current_id(kr), "k2");
    bm_keyring_free(kr);
}

static void test_keyring_from_conf(void **state)
{
    (void)state;
    char cur[128], old[128], env1[400], env2[400], env3[400];
    snprintf(cur, sizeof cur, "%s/cur", tmpdir);
    snprintf(old, sizeof old, "%s/old", tmpdir);
    write_file(cur, HEX1, 64, 0600);
    write_file(old, KEY2, 32, 0600);

    /* Nothing configured: no keyring, no error. */
    struct bm_conf *c = bm_conf_parse(NULL, 0, NULL, NULL, err, sizeof err);
    assert_non_null(c);
    int rc = -100;
    assert_null(bm_keyring_from_conf(c, &rc, err, sizeof err));
    assert_int_equal(rc, BM_OK);
    bm_conf_destroy(c);

    /* Current from the file keys, previous from the environment list. */
    char yaml[600];
    snprintf(yaml, sizeof yaml,
             "security:\n  at_rest_key_file: %s\n  at_rest_key_id: k2\n", cur);
    snprintf(env1, sizeof env1, "BIOMATCH_SECURITY_AT_REST_PREVIOUS_KEYS=k1=%s, k0=%s", old,
             old);
    const char *envp[] = {env1, NULL};
    c = bm_conf_parse(yaml, strlen(yaml), "t.yaml", envp, err, sizeof err);
    assert_non_null(c);
    assert_int_equal(c->security.at_rest_previous_keys_n, 2);
    struct bm_keyring *kr = bm_keyring_from_conf(c, &rc, err, sizeof err);
    assert_non_null(kr);
    assert_int_equal(rc, BM_OK);
    assert_string_equal(bm_keyring_current_id(kr), "k2");
    assert_memory_equal(bm_keyring_find(kr, "k2"), KEY1, 32);
    assert_memory_equal(bm_keyring_find(kr, "k1"), KEY2, 32);
    assert_memory_equal(bm_keyring_find(kr, "k0"), KEY2, 32);
    bm_keyring_free(kr);
    bm_conf_destroy(c);

    /* The YAML list form; previous keys alone (encryption turned off). */
    snprintf(yaml, sizeof yaml, "security:\n  at_rest_previous_keys: [\"k1=%s\"]\n", old);
    c = bm_conf_parse(yaml, strlen(yaml), "t.yaml", NULL, err, sizeof err);
    assert_non_null(c);
    kr = bm_keyring_from_conf(c, &rc, err, sizeof err);
    assert_non_null(kr);
    assert_null(bm_keyring_current_id(kr));
    assert_non_null(bm_keyring_find(kr, "k1"));
    bm_keyring_free(kr);
    bm_conf_destroy(c);

    /* A missing previous key file fails the whole keyring, naming it. */
    snprintf(env2, sizeof env2, "BIOMATCH_SECURITY_AT_REST_PREVIOUS_KEYS=k1=%s/missing", tmpdir);
    const char *envp2[] = {env2, NULL};
    c = bm_conf_parse(NULL, 0, NULL, envp2, err, sizeof err);
    assert_non_null(c);
    assert_null(bm_keyring_from_conf(c, &rc, err, sizeof err));
    assert_int_equal(rc, BM_EIO);
    assert_non_null(strstr(err, "'k1'"));
    bm_conf_destroy(c);

    /* The configuration itself refuses malformed entries. */
    const char *bad[] = {"BIOMATCH_SECURITY_AT_REST_PREVIOUS_KEYS=k1", NULL};
    assert_null(bm_conf_parse(NULL, 0, NULL, bad, err, sizeof err));
    assert_non_null(strstr(err, "<key id>=<key file>"));
    const char *bad2[] = {"BIOMATCH_SECURITY_AT_REST_PREVIOUS_KEYS=k1=/a,k1=/b", NULL};
    assert_null(bm_conf_parse(NULL, 0, NULL, bad2, err, sizeof err));
    assert_non_null(strstr(err, "twice"));
    const char *bad3[] = {"BIOMATCH_SECURITY_AT_REST_PREVIOUS_KEYS=bad id=/a", NULL};
    assert_null(bm_conf_parse(NULL, 0, NULL, bad3, err, sizeof err));
    const char *bad4[] = {"BIOMATCH_SECURITY_AT_REST_PREVIOUS_KEYS=k1=", NULL};
    assert_null(bm_conf_parse(NULL, 0, NULL, bad4, err, sizeof err));
    snprintf(env3, sizeof env3, "BIOMATCH_SECURITY_AT_REST_PREVIOUS_KEYS=k2=%s", old);
    const char *bad5[] = {env3, NULL};
    snprintf(yaml, sizeof yaml,
             "security:\n  at_rest_key_file: %s\n  at_rest_key_id: k2\n", cur);
    assert_null(bm_conf_parse(yaml, strlen(yaml), "t.yaml", bad5, err, sizeof err));
    assert_non_null(strstr(err, "current key id 'k2'"));
}

/* ---- the at-rest envelope ------------------------------------------------ */

static struct bm_keyring *ring(const char *cur_id, const uint8_t *cur, const char *prev_id,
                               const uint8_t *prev)
{
    struct bm_keyring *kr = bm_keyring_new();
    assert_non_null(kr);
    if (cur_id != NULL)
        assert_int_equal(bm_keyring_add(kr, cur_id, cur, 1, err, sizeof err), BM_OK);
    if (prev_id != NULL)
        assert_int_equal(bm_keyring_add(kr, prev_id, prev, 0, err, sizeof err), BM_OK);
    return kr;
}

/* Check an open's outcome: 'want', and on success the expected bytes;
 * on failure no plaintext. Frees what the open returned. */
static void check_opened(int rc, int want, const uint8_t *plain, size_t plainlen,
                         uint8_t *owned, const uint8_t *blob, size_t bloblen)
{
    if (rc != want)
        fail_msg("open: %s, wanted %s (%s)", bm_strerror(rc), bm_strerror(want), err);
    if (rc == BM_OK) {
        assert_int_equal(plainlen, bloblen);
        assert_memory_equal(plain, blob, bloblen);
    } else {
        assert_null(plain);
        assert_null(owned);
    }
    free(owned);
}

static void expect_open(const struct bm_keyring *kr, const char *g, uint32_t shard, uint64_t seg,
                        const char *expect, const uint8_t *env, size_t len, int want,
                        const uint8_t *blob, size_t bloblen)
{
    const uint8_t *plain = NULL;
    size_t plainlen = 0;
    uint8_t *owned = NULL;
    int rc = bm_atrest_open(kr, g, shard, seg, expect, env, len, &plain, &plainlen, &owned, err,
                            sizeof err);
    check_opened(rc, want, plain, plainlen, owned, blob, bloblen);
}

static void test_envelope(void **state)
{
    (void)state;
    enum { N = 1000 };
    uint8_t blob[N];
    fill(blob, N, 3);
    memcpy(blob, "BMSEG\r\n\x1a", 8);
    struct bm_keyring *kr = ring("k1", KEY1, NULL, NULL);
    uint8_t *env = NULL;
    size_t len = 0;
    assert_int_equal(bm_atrest_seal(kr, "faces", 3, 42, blob, N, &env, &len, err, sizeof err),
                     BM_OK);
    assert_int_equal(len, N + BM_ATREST_OVERHEAD(2));
    assert_true(bm_atrest_is_sealed(env, len));
    assert_false(bm_atrest_is_sealed(blob, N));
    assert_memory_equal(env, "BMENC\r\n\x1a", 8);
    assert_int_equal(env[8], 1);
    assert_int_equal(env[12], 2);
    assert_memory_equal(env + 13, "k1", 2);
    /* No plaintext run survives (the blob's own 16-byte windows). */
    for (size_t i = 0; i + 16 <= N; i += 16)
        for (size_t j = 0; j + 16 <= len; j++)
            assert_false(memcmp(env + j, blob + i, 16) == 0);
    char id[BM_KEYRING_ID_MAX + 1];
    assert_int_equal(bm_atrest_key_id(env, len, id, err, sizeof err), BM_OK);
    assert_string_equal(id, "k1");
    assert_int_equal(bm_atrest_key_id(blob, N, id, err, sizeof err), BM_ENOTFOUND);

    expect_open(kr, "faces", 3, 42, "k1", env, len, BM_OK, blob, N);
    expect_open(kr, "faces", 3, 42, NULL, env, len, BM_OK, blob, N);
    /* Moved to another segment, shard or gallery: AAD mismatch. */
    expect_open(kr, "faces", 3, 43, "k1", env, len, BM_ECHECKSUM, NULL, 0);
    expect_open(kr, "faces", 4, 42, "k1", env, len, BM_ECHECKSUM, NULL, 0);
    expect_open(kr, "faces2", 3, 42, "k1", env, len, BM_ECHECKSUM, NULL, 0);
    expect_open(kr, "face", 3, 42, "k1", env, len, BM_ECHECKSUM, NULL, 0);
    /* Every region tampered. */
    const size_t where[] = {20, 30, 15 + N / 2, len - 17, len - 1};
    for (size_t i = 0; i < sizeof where / sizeof where[0]; i++) {
        env[where[i]] ^= 0x80;
        expect_open(kr, "faces", 3, 42, "k1", env, len, BM_ECHECKSUM, NULL, 0);
        env[where[i]] ^= 0x80;
    }
    /* The manifest disagrees about the key or about encryption. */
    expect_open(kr, "faces", 3, 42, "k2", env, len, BM_EPROTO, NULL, 0);
    expect_open(kr, "faces", 3, 42, "", env, len, BM_EPROTO, NULL, 0);
    /* Truncated, bad key id length, newer version. */
    expect_open(kr, "faces", 3, 42, "k1", env, 12, BM_EPROTO, NULL, 0);
    expect_open(kr, "faces", 3, 42, "k1", env, 13 + 2 + BM_AEAD_OVERHEAD - 1, BM_EPROTO, NULL, 0);
    expect_open(kr, "faces", 3, 42, "k1", env, len - 1, BM_ECHECKSUM, NULL, 0);
    env[12] = 0;
    expect_open(kr, "faces", 3, 42, NULL, env, len, BM_EPROTO, NULL, 0);
    env[12] = 2;
    env[8] = 2;
    expect_open(kr, "faces", 3, 42, NULL, env, len, BM_EUNSUPPORTED, NULL, 0);
    env[8] = 1;
    /* The key id in the header is authenticated too: relabelled as "k2"
     * under a keyring where k2 exists, it fails authentication. */
    struct bm_keyring *both = ring("k2", KEY1, "k1", KEY1);
    env[14] = '2';
    expect_open(both, "faces", 3, 42, NULL, env, len, BM_ECHECKSUM, NULL, 0);
    env[14] = '1';
    expect_open(both, "faces", 3, 42, "k1", env, len, BM_OK, blob, N);

    /* Strict mode (a current key): a plaintext blob is refused. */
    assert_true(bm_atrest_plaintext_refused(kr, blob, N));
    assert_false(bm_atrest_plaintext_refused(kr, env, len));
    expect_open(kr, "faces", 3, 42, "", blob, N, BM_ECHECKSUM, NULL, 0);
    /* Allowed plaintext (migration) or no keys: plaintext blobs pass
     * through unless the manifest names a key. */
    bm_keyring_set_allow_plaintext(kr, 1);
    assert_false(bm_atrest_plaintext_refused(kr, blob, N));
    expect_open(kr, "faces", 3, 42, "", blob, N, BM_OK, blob, N);
    expect_open(NULL, "faces", 3, 42, NULL, blob, N, BM_OK, blob, N);
    expect_open(kr, "faces", 3, 42, "k1", blob, N, BM_EPROTO, NULL, 0);
    bm_keyring_set_allow_plaintext(kr, 0);

    /* A keyring without the key id (or none at all): named clearly. */
    struct bm_keyring *other = ring("k9", KEY2, NULL, NULL);
    expect_open(other, "faces", 3, 42, "k1", env, len, BM_EUNSUPPORTED, NULL, 0);
    assert_non_null(strstr(err, "'k1'"));
    expect_open(NULL, "faces", 3, 42, "k1", env, len, BM_EUNSUPPORTED, NULL, 0);
    assert_non_null(strstr(err, "'k1'"));
    /* Same id, wrong bytes: authentication fails. */
    struct bm_keyring *wrong = ring("k1", KEY2, NULL, NULL);
    expect_open(wrong, "faces", 3, 42, "k1", env, len, BM_ECHECKSUM, NULL, 0);

    /* Sealing needs a current key. */
    uint8_t *none = (uint8_t *)1;
    size_t nonelen = 1;
    struct bm_keyring *prev_only = ring(NULL, NULL, "k1", KEY1);
    assert_int_equal(bm_atrest_seal(prev_only, "faces", 3, 42, blob, N, &none, &nonelen, err,
                                    sizeof err),
                     BM_EINVAL);
    assert_null(none);
    assert_int_equal(bm_atrest_seal(NULL, "faces", 3, 42, blob, N, &none, &nonelen, err,
                                    sizeof err),
                     BM_EINVAL);
    /* ... but a previous-only keyring opens old blobs. */
    expect_open(prev_only, "faces", 3, 42, "k1", env, len, BM_OK, blob, N);

    free(env);
    bm_keyring_free(kr);
    bm_keyring_free(both);
    bm_keyring_free(other);
    bm_keyring_free(wrong);
    bm_keyring_free(prev_only);
}

static void test_rotation(void **state)
{
    (void)state;
    enum { N = 200 };
    uint8_t blob[N];
    fill(blob, N, 5);
    /* Before: k1 current. After: k2 current, k1 previous. */
    struct bm_keyring *before = ring("k1", KEY1, NULL, NULL);
    struct bm_keyring *after = ring("k2", KEY2, "k1", KEY1);
    uint8_t *old = NULL, *neu = NULL;
    size_t oldlen = 0, neulen = 0;
    assert_int_equal(bm_atrest_seal(before, "g", 0, 1, blob, N, &old, &oldlen, err, sizeof err),
                     BM_OK);
    assert_int_equal(bm_atrest_seal(after, "g", 0, 2, blob, N, &neu, &neulen, err, sizeof err),
                     BM_OK);
    char id[BM_KEYRING_ID_MAX + 1];
    assert_int_equal(bm_atrest_key_id(neu, neulen, id, err, sizeof err), BM_OK);
    assert_string_equal(id, "k2");
    expect_open(after, "g", 0, 1, "k1", old, oldlen, BM_OK, blob, N);
    expect_open(after, "g", 0, 2, "k2", neu, neulen, BM_OK, blob, N);
    /* A process that was not given the new key cannot read new blobs. */
    expect_open(before, "g", 0, 2, "k2", neu, neulen, BM_EUNSUPPORTED, NULL, 0);
    assert_non_null(strstr(err, "'k2'"));
    free(old);
    free(neu);
    bm_keyring_free(before);
    bm_keyring_free(after);
}

static void expect_open_record(const struct bm_keyring *kr, const char *g, uint32_t shard,
                               const char *subject, const uint8_t *env, size_t len, int want,
                               const uint8_t *val, size_t vallen)
{
    const uint8_t *plain = NULL;
    size_t plainlen = 0;
    uint8_t *owned = NULL;
    int rc = bm_atrest_open_record(kr, g, shard, subject, subject ? strlen(subject) : 0, env,
                                   len, &plain, &plainlen, &owned, err, sizeof err);
    check_opened(rc, want, plain, plainlen, owned, val, vallen);
}

/* Gallery log records: bound to gallery, shard and subject id; never
 * interchangeable with a segment envelope; plaintext passes through. */
static void test_record_envelope(void **state)
{
    (void)state;
    enum { N = 300 };
    uint8_t val[N];
    fill(val, N, 5);
    struct bm_keyring *kr = ring("k1", KEY1, NULL, NULL);
    uint8_t *env = NULL;
    size_t len = 0;
    const char *subj = "subject-0001";
    assert_int_equal(bm_atrest_seal_record(kr, "faces", 3, subj, strlen(subj), val, N, &env,
                                           &len, err, sizeof err),
                     BM_OK);
    assert_int_equal(len, N + BM_ATREST_OVERHEAD(2));
    assert_true(bm_atrest_is_sealed(env, len));
    for (size_t i = 0; i + 16 <= N; i += 16)
        for (size_t j = 0; j + 16 <= len; j++)
            assert_false(memcmp(env + j, val + i, 16) == 0);
    expect_open_record(kr, "faces", 3, subj, env, len, BM_OK, val, N);
    /* Another subject, shard or gallery: it does not authenticate. */
    expect_open_record(kr, "faces", 3, "subject-0002", env, len, BM_ECHECKSUM, NULL, 0);
    expect_open_record(kr, "faces", 3, "subject-000", env, len, BM_ECHECKSUM, NULL, 0);
    expect_open_record(kr, "faces", 2, subj, env, len, BM_ECHECKSUM, NULL, 0);
    expect_open_record(kr, "faces2", 3, subj, env, len, BM_ECHECKSUM, NULL, 0);
    /* A record envelope is not a segment envelope, nor the reverse. */
    expect_open(kr, "faces", 3, 0, NULL, env, len, BM_ECHECKSUM, NULL, 0);
    uint8_t *senv = NULL;
    size_t slen = 0;
    assert_int_equal(bm_atrest_seal(kr, "faces", 3, 7, val, N, &senv, &slen, err, sizeof err),
                     BM_OK);
    expect_open_record(kr, "faces", 3, subj, senv, slen, BM_ECHECKSUM, NULL, 0);
    free(senv);
    /* Tampered, truncated; a keyring without k1 names it. */
    env[len / 2] ^= 1;
    expect_open_record(kr, "faces", 3, subj, env, len, BM_ECHECKSUM, NULL, 0);
    env[len / 2] ^= 1;
    expect_open_record(kr, "faces", 3, subj, env, 14, BM_EPROTO, NULL, 0);
    expect_open_record(NULL, "faces", 3, subj, env, len, BM_EUNSUPPORTED, NULL, 0);
    assert_non_null(strstr(err, "'k1'"));
    /* A record written without a key is read as is. */
    expect_open_record(kr, "faces", 3, subj, val, N, BM_ECHECKSUM, NULL, 0); /* strict */
    bm_keyring_set_allow_plaintext(kr, 1);
    expect_open_record(kr, "faces", 3, subj, val, N, BM_OK, val, N);
    bm_keyring_set_allow_plaintext(kr, 0);
    expect_open_record(NULL, "faces", 3, subj, val, N, BM_OK, val, N);
    /* Bad arguments. */
    expect_open_record(kr, "faces", 3, NULL, env, len, BM_EINVAL, NULL, 0);
    expect_open_record(kr, "faces", 3, "", env, len, BM_EINVAL, NULL, 0);
    uint8_t *e2 = NULL;
    size_t l2 = 0;
    assert_int_equal(bm_atrest_seal_record(kr, "faces", 3, NULL, 0, val, N, &e2, &l2, err,
                                           sizeof err),
                     BM_EINVAL);
    assert_null(e2);
    assert_int_equal(bm_atrest_seal_record(NULL, "faces", 3, subj, strlen(subj), val, N, &e2,
                                           &l2, err, sizeof err),
                     BM_EINVAL);
    free(env);
    bm_keyring_free(kr);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_aead_round_trip),
        cmocka_unit_test(test_aead_tamper),
        cmocka_unit_test(test_parse_key),
        cmocka_unit_test(test_key_file),
        cmocka_unit_test(test_keyring_rules),
        cmocka_unit_test(test_keyring_from_conf),
        cmocka_unit_test(test_envelope),
        cmocka_unit_test(test_rotation),
        cmocka_unit_test(test_record_envelope),
    };
    return cmocka_run_group_tests(tests, setup_dir, teardown_dir);
}
