/* policy: parsing (a good file with every key form, unknown keys with their
 * line, bad key material, bad operations and names), decisions per agency,
 * gallery and operation, and Ed25519 signatures (good, garbage, tampered,
 * wrong key id, wrong key, missing when required). Keys are generated here
 * with OpenSSL, so nothing secret is checked in. */
#include "testutil.h"

#include "common/err.h"
#include "conf/policy.h"

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char err[512];

/* Two fresh keys for agency "a" (ids a1, a2) and one for "b" (b1), as
 * signers plus the public forms the policy takes. */
static struct bm_signer *sa1, *sa2, *sb1, *sx;
static char pa1[BM_POLICY_PUB_B64_LEN], pa2_hex[65], pb1_pem[512];

static struct bm_signer *new_signer(const char *id, char *pub, size_t publen)
{
    char *pem = NULL;
    char b64[BM_POLICY_PUB_B64_LEN];
    assert_int_equal(bm_signer_keygen(&pem, b64, sizeof b64, err, sizeof err), BM_OK);
    struct bm_signer *s = bm_signer_from_pem(pem, strlen(pem), id, err, sizeof err);
    assert_non_null(s);
    free(pem);
    if (pub != NULL)
        snprintf(pub, publen, "%s", b64);
    return s;
}

/* The public key of 's' as 64 hex digits. */
static void hex_of(const struct bm_signer *s, char out[65])
{
    char b64[BM_POLICY_PUB_B64_LEN];
    assert_int_equal(bm_signer_public_b64(s, b64, sizeof b64), BM_OK);
    unsigned char raw[48];
    int n = EVP_DecodeBlock(raw, (const unsigned char *)b64, (int)strlen(b64));
    assert_true(n >= 32);
    for (int i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", raw[i]);
}

/* A PEM public key made with plain OpenSSL (not through the module). */
static struct bm_signer *openssl_key(const char *id, char *pem_pub, size_t len)
{
    EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    assert_non_null(k);
    BIO *b = BIO_new(BIO_s_mem());
    assert_int_equal(PEM_write_bio_PUBKEY(b, k), 1);
    char *data = NULL;
    long n = BIO_get_mem_data(b, &data);
    assert_true(n > 0 && (size_t)n < len);
    memcpy(pem_pub, data, (size_t)n);
    pem_pub[n] = '\0';
    BIO_free(b);
    b = BIO_new(BIO_s_mem());
    assert_int_equal(PEM_write_bio_PrivateKey(b, k, NULL, NULL, 0, NULL, NULL), 1);
    n = BIO_get_mem_data(b, &data);
    struct bm_signer *s = bm_signer_from_pem(data, (size_t)n, id, err, sizeof err);
    assert_non_null(s);
    BIO_free(b);
    EVP_PKEY_free(k);
    return s;
}

static int setup(void **state)
{
    (void)state;
    sa1 = new_signer("a1", pa1, sizeof pa1);
    sa2 = new_signer("a2", NULL, 0);
    hex_of(sa2, pa2_hex);
    sb1 = openssl_key("b1", pb1_pem, sizeof pb1_pem);
    sx = new_signer("a1", NULL, 0); /* claims a1 but is another key */
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    bm_signer_destroy(sa1);
    bm_signer_destroy(sa2);
    bm_signer_destroy(sb1);
    bm_signer_destroy(sx);
    return 0;
}

static struct bm_policy *good_policy(void)
{
    /* PEM as a YAML literal block: indent every line. */
    char pem[768] = "";
    for (const char *p = pb1_pem; *p;) {
        const char *e = strchr(p, '\n');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        size_t used = strlen(pem);
        snprintf(pem + used, sizeof pem - used, "        %.*s\n", (int)n, p);
        p += n + (e != NULL);
    }
    char yaml[4096];
    snprintf(yaml, sizeof yaml,
             "# test policy\n"
             "agencies:\n"
             "  a:\n"
             "    require_signature: true\n"
             "    keys:\n"
             "      a1: \"%s\"\n"
             "      a2: %s\n"
             "    galleries:\n"
             "      g1: [identify]\n"
             "      g2: [identify, verify, enroll, delete]\n"
             "  b:\n"
             "    require_signature: false\n"
             "    keys:\n"
             "      b1: |\n%s"
             "    galleries:\n"
             "      \"*\": [identify]\n"
             "      g1: [enroll]\n"
             "  c:\n"
             "    galleries: {}\n",
             pa1, pa2_hex, pem);
    struct bm_policy *p = bm_policy_parse(yaml, strlen(yaml), "test.yaml", err, sizeof err);
    if (p == NULL)
        fail_msg("policy: %s\n%s", err, yaml);
    return p;
}

static void expect_error(const char *yaml, const char *needle)
{
    struct bm_policy *p = bm_policy_parse(yaml, strlen(yaml), "test.yaml", err, sizeof err);
    if (p != NULL) {
        bm_policy_destroy(p);
        fail_msg("expected an error containing \"%s\" for:\n%s", needle, yaml);
    }
    if (strstr(err, needle) == NULL)
        fail_msg("error \"%s\" lacks \"%s\"", err, needle);
}

static void test_parse_good(void **state)
{
    (void)state;
    struct bm_policy *p = good_policy();
    assert_int_equal(bm_policy_agency_count(p), 3);
    bm_policy_destroy(p);
    bm_policy_destroy(NULL);
    assert_int_equal(bm_policy_agency_count(NULL), 0);
}

static void test_parse_errors(void **state)
{
    (void)state;
    expect_error("agencies:\n  a:\n    galleries:\n      g1: [identify]\n    galeries: {}\n",
                 "test.yaml:5: unknown key 'agencies.a.galeries'");
    expect_error("agency:\n  a: {}\n", "test.yaml:1: unknown key 'agency'");
    expect_error("agencies:\n  a:\n    galleries:\n      g1: [search]\n",
                 "test.yaml:4: 'agencies.a.galleries.g1': operations are identify, verify, "
                 "enroll, delete, not 'search'");
    expect_error("agencies:\n  a:\n    galleries:\n      g1: [identify, identify]\n",
                 "duplicate operation 'identify'");
    expect_error("agencies:\n  a:\n    galleries: {}\n  a:\n    galleries: {}\n",
                 "test.yaml:4: duplicate key 'agencies.a'");
    expect_error("agencies:\n  a:\n    galleries:\n      \"bad name\": [identify]\n",
                 "is not a gallery name");
    expect_error("agencies:\n  a:\n    require_signature: yes\n    galleries: {}\n",
                 "test.yaml:3: 'agencies.a.require_signature' must be true or false");
    expect_error("agencies:\n  a:\n    require_signature: true\n    galleries: {}\n",
                 "requires signatures but lists no keys");
    expect_error("agencies:\n  a:\n    keys: {}\n", "needs 'galleries'");
    expect_error("agencies:\n  a:\n    galleries:\n", "'agencies.a.galleries' has no value");
    expect_error("", "the policy is empty");
    expect_error("agencies: {}\n---\nagencies: {}\n", "only one YAML document");
    expect_error("agencies: [a]\n", "'agencies' must be a map");
}

static void test_parse_bad_keys(void **state)
{
    (void)state;
    const char *head = "agencies:\n  a:\n    galleries: {}\n    keys:\n      k: ";
    char yaml[2048];
    /* 31 bytes of base64, a non-hex 64-char string, garbage, padding bits set. */
    const char *bad[] = {
        "\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==\"",
        "zz00000000000000000000000000000000000000000000000000000000000000",
        "not-a-key",
        "\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB=\"",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(yaml, sizeof yaml, "%s%s\n", head, bad[i]);
        expect_error(yaml, "test.yaml:5: 'agencies.a.keys.k' is not an Ed25519 public key");
    }
    /* An X25519 key in PEM is a real key of the wrong type. */
    EVP_PKEY *x = EVP_PKEY_Q_keygen(NULL, NULL, "X25519");
    assert_non_null(x);
    BIO *b = BIO_new(BIO_s_mem());
    assert_int_equal(PEM_write_bio_PUBKEY(b, x), 1);
    char *data = NULL;
    long n = BIO_get_mem_data(b, &data);
    char quoted[512];
    size_t q = 0;
    for (long i = 0; i < n && q + 3 < sizeof quoted; i++) {
        if (data[i] == '\n') {
            quoted[q++] = '\\';
            quoted[q++] = 'n';
        } else {
            quoted[q++] = data[i];
        }
    }
    quoted[q] = '\0';
    snprintf(yaml, sizeof yaml, "%s\"%s\"\n", head, quoted);
    expect_error(yaml, "is not an Ed25519 public key");
    BIO_free(b);
    EVP_PKEY_free(x);
    /* Key ids are names. */
    snprintf(yaml, sizeof yaml, "agencies:\n  a:\n    galleries: {}\n    keys:\n      \"k 1\": %s\n",
             pa1);
    expect_error(yaml, "key id 'k 1' must be 1-64");
}

#define ID BM_POLICY_OP_IDENTIFY
#define VE BM_POLICY_OP_VERIFY
#define EN BM_POLICY_OP_ENROLL
#define DE BM_POLICY_OP_DELETE

static enum bm_policy_verdict check(const struct bm_policy *p, const char *agency,
                                    const char *gallery, enum bm_policy_op op, const char *value,
                                    const char *sig, char *why, size_t whylen)
{
    return bm_policy_check(p, agency, gallery, op, value, strlen(value), sig,
                           sig ? strlen(sig) : 0, why, whylen);
}

static void sign(const struct bm_signer *s, const char *value, char out[BM_POLICY_SIG_MAX])
{
    assert_int_equal(bm_signer_sign(s, value, strlen(value), out, BM_POLICY_SIG_MAX, err,
                                    sizeof err),
                     BM_OK);
}

static void test_decisions(void **state)
{
    (void)state;
    struct bm_policy *p = good_policy();
    char why[256];
    const char *v = "job bytes";
    char sig[BM_POLICY_SIG_MAX];
    sign(sa1, v, sig);
    /* No policy: everything goes, signed or not. */
    assert_int_equal(check(NULL, "anyone", "g9", DE, v, NULL, why, sizeof why), BM_POLICY_ALLOW);
    /* Agency a, signed: per gallery and operation. */
    assert_int_equal(check(p, "a", "g1", ID, v, sig, why, sizeof why), BM_POLICY_ALLOW);
    assert_int_equal(check(p, "a", "g1", VE, v, sig, why, sizeof why), BM_POLICY_UNAUTHORIZED);
    assert_non_null(strstr(why, "may not verify"));
    assert_int_equal(check(p, "a", "g1", EN, v, sig, why, sizeof why), BM_POLICY_UNAUTHORIZED);
    assert_int_equal(check(p, "a", "g2", VE, v, sig, why, sizeof why), BM_POLICY_ALLOW);
    assert_int_equal(check(p, "a", "g2", DE, v, sig, why, sizeof why), BM_POLICY_ALLOW);
    assert_int_equal(check(p, "a", "g3", ID, v, sig, why, sizeof why), BM_POLICY_UNAUTHORIZED);
    /* Agency b: unsigned is fine; "*" grants identify everywhere. */
    assert_int_equal(check(p, "b", "g7", ID, v, NULL, why, sizeof why), BM_POLICY_ALLOW);
    assert_int_equal(check(p, "b", "g7", VE, v, NULL, why, sizeof why), BM_POLICY_UNAUTHORIZED);
    assert_int_equal(check(p, "b", "g1", EN, v, NULL, why, sizeof why), BM_POLICY_ALLOW);
    assert_int_equal(check(p, "b", "g2", EN, v, NULL, why, sizeof why), BM_POLICY_UNAUTHORIZED);
    /* Agency c has no grants; unknown agencies nothing at all. */
    assert_int_equal(check(p, "c", "g1", ID, v, NULL, why, sizeof why), BM_POLICY_UNAUTHORIZED);
    assert_int_equal(check(p, "zz", "g1", ID, v, NULL, why, sizeof why), BM_POLICY_UNAUTHORIZED);
    assert_non_null(strstr(why, "not in the policy"));
    assert_int_equal(check(p, "", "g1", ID, v, NULL, why, sizeof why), BM_POLICY_UNAUTHORIZED);
    assert_int_equal(check(p, NULL, "g1", ID, v, NULL, why, sizeof why), BM_POLICY_UNAUTHORIZED);
    /* A long non-ASCII agency is clipped at a character boundary: 63 ASCII
     * bytes then a 2-byte character would be cut in half at 64. */
    char longname[80];
    memset(longname, 'x', 63);
    snprintf(longname + 63, sizeof longname - 63, "\xc3\xa9tail");
    assert_int_equal(check(p, longname, "g1", ID, v, NULL, why, sizeof why),
                     BM_POLICY_UNAUTHORIZED);
    assert_non_null(strstr(why, "xxx' is not in the policy"));
    assert_null(strchr(why, '\xc3'));
    /* A small buffer still ends on a boundary: "agency '" is 8 bytes, then
     * 2-byte characters; 15 bytes would end in half of the fourth. */
    char accents[41] = "";
    for (int i = 0; i < 20; i++)
        memcpy(accents + 2 * i, "\xc3\xa9", 3);
    char small[16];
    assert_int_equal(check(p, accents, "g1", ID, v, NULL, small, sizeof small),
                     BM_POLICY_UNAUTHORIZED);
    assert_int_equal(strlen(small), 14);
    assert_memory_equal(small, "agency '\xc3\xa9\xc3\xa9\xc3\xa9", 14);
    bm_policy_destroy(p);
}

static void test_signatures(void **state)
{
    (void)state;
    struct bm_policy *p = good_policy();
    char why[256];
    const char *v = "\x0a\x05job-1\x12\x01" "a";
    char s1[BM_POLICY_SIG_MAX], s2[BM_POLICY_SIG_MAX], sb[BM_POLICY_SIG_MAX],
        sxx[BM_POLICY_SIG_MAX];
    sign(sa1, v, s1);
    sign(sa2, v, s2);
    sign(sb1, v, sb);
    sign(sx, v, sxx);
    assert_memory_equal(s1, "a1:", 3);
    assert_int_equal(strlen(s1), 3 + 88);

    /* Good, by either of a's keys (base64 and hex forms), and b's PEM key. */
    assert_int_equal(check(p, "a", "g1", ID, v, s1, why, sizeof why), BM_POLICY_ALLOW);
    assert_int_equal(check(p, "a", "g1", ID, v, s2, why, sizeof why), BM_POLICY_ALLOW);
    assert_int_equal(check(p, "b", "g1", EN, v, sb, why, sizeof why), BM_POLICY_ALLOW);
    /* Missing when required. */
    assert_int_equal(check(p, "a", "g1", ID, v, NULL, why, sizeof why), BM_POLICY_BAD_SIGNATURE);
    assert_non_null(strstr(why, "requires signed records"));
    /* Tampered value: one byte changed, one byte appended. */
    assert_int_equal(check(p, "a", "g1", ID, "\x0a\x05job-2\x12\x01" "a", s1, why, sizeof why),
                     BM_POLICY_BAD_SIGNATURE);
    assert_non_null(strstr(why, "does not verify"));
    assert_int_equal(check(p, "a", "g1", ID, "\x0a\x05job-1\x12\x01" "ab", s1, why, sizeof why),
                     BM_POLICY_BAD_SIGNATURE);
    /* Tampered signature: flip one base64 character. */
    char t[BM_POLICY_SIG_MAX];
    snprintf(t, sizeof t, "%s", s1);
    t[10] = t[10] == 'A' ? 'B' : 'A';
    assert_int_equal(check(p, "a", "g1", ID, v, t, why, sizeof why), BM_POLICY_BAD_SIGNATURE);
    /* Wrong key id: b's key, or an id a does not have, or another key
     * claiming a1. */
    assert_int_equal(check(p, "a", "g1", ID, v, sb, why, sizeof why), BM_POLICY_BAD_SIGNATURE);
    assert_non_null(strstr(why, "key id 'b1' is not a key of agency 'a'"));
    snprintf(t, sizeof t, "a3:%s", s1 + 3);
    assert_int_equal(check(p, "a", "g1", ID, v, t, why, sizeof why), BM_POLICY_BAD_SIGNATURE);
    assert_int_equal(check(p, "a", "g1", ID, v, sxx, why, sizeof why), BM_POLICY_BAD_SIGNATURE);
    /* Right key id, signature of a's other key. */
    snprintf(t, sizeof t, "a1:%s", s2 + 3);
    assert_int_equal(check(p, "a", "g1", ID, v, t, why, sizeof why), BM_POLICY_BAD_SIGNATURE);
    /* Garbage headers. */
    const char *junk[] = {"", "a1", "a1:", "a1:!!!!", ":abcd", "a1:AAAA", "a 1:AAAA"};
    for (size_t i = 0; i < sizeof junk / sizeof junk[0]; i++)
        assert_int_equal(check(p, "a", "g1", ID, v, junk[i], why, sizeof why),
                         BM_POLICY_BAD_SIGNATURE);
    /* A signature offered where none is required must still be valid. */
    assert_int_equal(check(p, "b", "g7", ID, v, "b1:AAAA", why, sizeof why),
                     BM_POLICY_BAD_SIGNATURE);
    /* Authenticity is checked before authorisation: an unsigned job does not
     * learn what a may do. */
    assert_int_equal(check(p, "a", "g9", ID, v, NULL, why, sizeof why), BM_POLICY_BAD_SIGNATURE);
    /* The empty value signs and verifies too. */
    char se[BM_POLICY_SIG_MAX];
    sign(sa1, "", se);
    assert_int_equal(check(p, "a", "g1", ID, "", se, why, sizeof why), BM_POLICY_ALLOW);
    bm_policy_destroy(p);
}

/* RFC 8032 section 7.1 tests 1 and 2: the public keys as hex, the
 * signatures in base64 exactly as a client using Python's `cryptography`
 * sends them. Proves the header format with an independent implementation. */
static void test_rfc8032_vectors(void **state)
{
    (void)state;
    const char *yaml =
        "agencies:\n"
        "  rfc:\n"
        "    require_signature: true\n"
        "    keys:\n"
        "      t1: d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a\n"
        "      t2: 3D4017C3E843895A92B70AA74D1B7EBC9C982CCF2EC4968CC0CD55F12AF4660C\n"
        "    galleries:\n"
        "      g: [enroll]\n";
    struct bm_policy *p = bm_policy_parse(yaml, strlen(yaml), "rfc.yaml", err, sizeof err);
    if (p == NULL)
        fail_msg("%s", err);
    const char *s1 = "t1:5VZDAMNgrHKQhuLMgG6CioSHfx645dl02HPgZSJJAVVfuIIVkKM7rMYeOXAc+bRr0lv18Flb"
                     "viRlUUFDjnoQCw==";
    const char *s2 = "t2:kqAJqfDUyrhyDoILX2QlQKKye1QWUD+Ps3YiI+vbadoIWsHkPhWZbkWPNhPQ8R2MOHsurrQw"
                     "Ku6wDSkWErsMAA==";
    char why[256];
    assert_int_equal(check(p, "rfc", "g", EN, "", s1, why, sizeof why), BM_POLICY_ALLOW);
    assert_int_equal(check(p, "rfc", "g", EN, "\x72", s2, why, sizeof why), BM_POLICY_ALLOW);
    assert_int_equal(check(p, "rfc", "g", EN, "\x73", s2, why, sizeof why),
                     BM_POLICY_BAD_SIGNATURE);
    assert_int_equal(check(p, "rfc", "g", EN, "\x72", s1, why, sizeof why),
                     BM_POLICY_BAD_SIGNATURE);
    bm_policy_destroy(p);
}

static void test_signer_errors(void **state)
{
    (void)state;
    assert_null(bm_signer_from_pem("nope", 4, "k", err, sizeof err));
    char *pem = NULL;
    char pub[BM_POLICY_PUB_B64_LEN];
    assert_int_equal(bm_signer_keygen(&pem, pub, sizeof pub, err, sizeof err), BM_OK);
    assert_int_equal(strlen(pub), 44);
    assert_null(bm_signer_from_pem(pem, strlen(pem), "bad id", err, sizeof err));
    assert_null(bm_signer_from_pem(pem, strlen(pem), "", err, sizeof err));
    struct bm_signer *s = bm_signer_from_pem(pem, strlen(pem), "k", err, sizeof err);
    assert_non_null(s);
    char small[20];
    assert_int_equal(bm_signer_sign(s, "x", 1, small, sizeof small, err, sizeof err), BM_ERANGE);
    char again[BM_POLICY_PUB_B64_LEN];
    assert_int_equal(bm_signer_public_b64(s, again, sizeof again), BM_OK);
    assert_string_equal(again, pub);
    assert_null(bm_signer_load("/nonexistent/key.pem", "k", err, sizeof err));
    bm_signer_destroy(s);
    bm_signer_destroy(NULL);
    free(pem);
    assert_true(bm_policy_warn_once());
    assert_false(bm_policy_warn_once());
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_good),      cmocka_unit_test(test_parse_errors),
        cmocka_unit_test(test_parse_bad_keys),  cmocka_unit_test(test_decisions),
        cmocka_unit_test(test_signatures),      cmocka_unit_test(test_rfc8032_vectors),
        cmocka_unit_test(test_signer_errors),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
