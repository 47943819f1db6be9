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
             "    require_signature: false\n"
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
                 "enroll, delete, admin, not 'search'");
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

#define NOW 1700000000000LL
#define WINDOW 300000LL

/* A job record of 'agency' with id 'id' and value 'value' on topic t.jobs. */
static struct bm_sig_record rec(const char *agency, const char *id, const char *value)
{
    struct bm_sig_record r = {"biomatch.v1.MatchJob", "t.jobs", id,     strlen(id),
                              value,                  strlen(value), agency, id};
    return r;
}

static enum bm_policy_verdict auth_at(const struct bm_policy *p, const struct bm_sig_record *r,
                                      const char *sig, int64_t now, char *why, size_t whylen)
{
    int64_t ts = -1;
    enum bm_policy_verdict v =
        bm_policy_authenticate(p, r, sig, sig ? strlen(sig) : 0, now, WINDOW, &ts, why, whylen);
    if (v != BM_POLICY_ALLOW)
        assert_int_equal(ts, 0);
    return v;
}

static enum bm_policy_verdict auth(const struct bm_policy *p, const struct bm_sig_record *r,
                                   const char *sig, char *why, size_t whylen)
{
    return auth_at(p, r, sig, NOW, why, whylen);
}

static void sign_at(const struct bm_signer *s, const struct bm_sig_record *r, int64_t ts,
                    char out[BM_POLICY_SIG_MAX])
{
    assert_int_equal(bm_signer_sign_record(s, r, ts, out, BM_POLICY_SIG_MAX, err, sizeof err),
                     BM_OK);
}

static void test_decisions(void **state)
{
    (void)state;
    struct bm_policy *p = good_policy();
    char why[256];
    /* Agency a: per gallery and operation. */
    assert_int_equal(bm_policy_permit(p, "a", "g1", ID, why, sizeof why), BM_POLICY_ALLOW);
    assert_int_equal(bm_policy_permit(p, "a", "g1", VE, why, sizeof why),
                     BM_POLICY_UNAUTHORIZED);
    assert_non_null(strstr(why, "may not verify"));
    assert_int_equal(bm_policy_permit(p, "a", "g1", EN, why, sizeof why),
                     BM_POLICY_UNAUTHORIZED);
    assert_int_equal(bm_policy_permit(p, "a", "g2", VE, why, sizeof why), BM_POLICY_ALLOW);
    assert_int_equal(bm_policy_permit(p, "a", "g2", DE, why, sizeof why), BM_POLICY_ALLOW);
    assert_int_equal(bm_policy_permit(p, "a", "g3", ID, why, sizeof why),
                     BM_POLICY_UNAUTHORIZED);
    /* Agency b: "*" grants identify everywhere. */
    assert_int_equal(bm_policy_permit(p, "b", "g7", ID, why, sizeof why), BM_POLICY_ALLOW);
    assert_int_equal(bm_policy_permit(p, "b", "g7", VE, why, sizeof why),
                     BM_POLICY_UNAUTHORIZED);
    assert_int_equal(bm_policy_permit(p, "b", "g1", EN, why, sizeof why), BM_POLICY_ALLOW);
    assert_int_equal(bm_policy_permit(p, "b", "g2", EN, why, sizeof why),
                     BM_POLICY_UNAUTHORIZED);
    /* Agency c has no grants; unknown agencies nothing at all. */
    assert_int_equal(bm_policy_permit(p, "c", "g1", ID, why, sizeof why),
                     BM_POLICY_UNAUTHORIZED);
    assert_int_equal(bm_policy_permit(p, "zz", "g1", ID, why, sizeof why),
                     BM_POLICY_UNAUTHORIZED);
    /* Unknown agencies do not authenticate, whatever they send. */
    struct bm_sig_record r = rec("zz", "j", "v");
    assert_int_equal(auth(p, &r, NULL, why, sizeof why), BM_POLICY_UNAUTHORIZED);
    assert_non_null(strstr(why, "not in the policy"));
    r = rec("", "j", "v");
    assert_int_equal(auth(p, &r, NULL, why, sizeof why), BM_POLICY_UNAUTHORIZED);
    r.agency = NULL;
    assert_int_equal(auth(p, &r, NULL, why, sizeof why), BM_POLICY_UNAUTHORIZED);
    /* A long non-ASCII agency is clipped at a character boundary: 63 ASCII
     * bytes then a 2-byte character would be cut in half at 64. */
    char longname[80];
    memset(longname, 'x', 63);
    snprintf(longname + 63, sizeof longname - 63, "\xc3\xa9tail");
    r = rec(longname, "j", "v");
    assert_int_equal(auth(p, &r, NULL, why, sizeof why), BM_POLICY_UNAUTHORIZED);
    assert_non_null(strstr(why, "xxx' is not in the policy"));
    assert_null(strchr(why, '\xc3'));
    /* A small buffer still ends on a boundary: "agency '" is 8 bytes, then
     * 2-byte characters; 15 bytes would end in half of the fourth. */
    char accents[41] = "";
    for (int i = 0; i < 20; i++)
        memcpy(accents + 2 * i, "\xc3\xa9", 3);
    char small[16];
    r = rec(accents, "j", "v");
    assert_int_equal(auth(p, &r, NULL, small, sizeof small), BM_POLICY_UNAUTHORIZED);
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
    struct bm_sig_record r = rec("a", "job-1", v);
    char s1[BM_POLICY_SIG_MAX], s2[BM_POLICY_SIG_MAX], sxx[BM_POLICY_SIG_MAX];
    sign_at(sa1, &r, NOW, s1);
    sign_at(sa2, &r, NOW, s2);
    sign_at(sx, &r, NOW, sxx);
    assert_memory_equal(s1, "a1:1700000000000:", 17);
    assert_int_equal(strlen(s1), 17 + 88);

    /* Good, by either of a's keys (base64 and hex forms); the signed time
     * comes back. */
    int64_t ts = 0;
    assert_int_equal(bm_policy_authenticate(p, &r, s1, strlen(s1), NOW, WINDOW, &ts, why,
                                            sizeof why),
                     BM_POLICY_ALLOW);
    assert_int_equal(ts, NOW);
    assert_int_equal(auth(p, &r, s2, why, sizeof why), BM_POLICY_ALLOW);
    /* b's PEM key. */
    struct bm_sig_record rb = rec("b", "job-1", v);
    char sb[BM_POLICY_SIG_MAX];
    sign_at(sb1, &rb, NOW, sb);
    assert_int_equal(auth(p, &rb, sb, why, sizeof why), BM_POLICY_ALLOW);
    /* Missing when required (the default: c opted out, a said so). */
    assert_int_equal(auth(p, &r, NULL, why, sizeof why), BM_POLICY_BAD_SIGNATURE);
    assert_non_null(strstr(why, "requires signed records"));
    /* b opted out: unsigned passes with no time; a bad signature does not. */
    assert_int_equal(auth(p, &rb, NULL, why, sizeof why), BM_POLICY_ALLOW);
    assert_int_equal(auth(p, &rb, "b1:1:AAAA", why, sizeof why), BM_POLICY_BAD_SIGNATURE);

    /* Every bound field: changing any one breaks the signature. */
    struct bm_sig_record t = r;
    t.type = "biomatch.v1.EnrollRequest";
    assert_int_equal(auth(p, &t, s1, why, sizeof why), BM_POLICY_BAD_SIGNATURE);
    assert_non_null(strstr(why, "does not verify"));
    t = r;
    t.topic = "other.jobs";
    assert_int_equal(auth(p, &t, s1, why, sizeof why), BM_POLICY_BAD_SIGNATURE);
    t = r;
    t.key = "job-2";
    assert_int_equal(auth(p, &t, s1, why, sizeof why), BM_POLICY_BAD_SIGNATURE);
    t = r;
    t.value = "\x0a\x05job-2\x12\x01" "a";
    assert_int_equal(auth(p, &t, s1, why, sizeof why), BM_POLICY_BAD_SIGNATURE);
    t.value = "\x0a\x05job-1\x12\x01" "ab";
    t.len++;
    assert_int_equal(auth(p, &t, s1, why, sizeof why), BM_POLICY_BAD_SIGNATURE);
    t = r;
    t.id = "job-2";
    assert_int_equal(auth(p, &t, s1, why, sizeof why), BM_POLICY_BAD_SIGNATURE);
    /* Field boundaries are bound too: a byte moved from the key to the end
     * of the topic leaves the concatenation unchanged, not the signature. */
    struct bm_sig_record u = {"T", "t", "ab", 2, "", 0, "a", "i"};
    struct bm_sig_record w = {"T", "ta", "b", 1, "", 0, "a", "i"};
    char su[BM_POLICY_SIG_MAX];
    sign_at(sa1, &u, NOW, su);
    assert_int_equal(auth(p, &u, su, why, sizeof why), BM_POLICY_ALLOW);
    assert_int_equal(auth(p, &w, su, why, sizeof why), BM_POLICY_BAD_SIGNATURE);
    /* The timestamp is signed: changing it in the header breaks it. */
    char tt[BM_POLICY_SIG_MAX];
    snprintf(tt, sizeof tt, "a1:1700000000001:%s", s1 + 17);
    assert_int_equal(auth(p, &r, tt, why, sizeof why), BM_POLICY_BAD_SIGNATURE);
    /* Tampered signature: flip one base64 character. */
    snprintf(tt, sizeof tt, "%s", s1);
    tt[20] = tt[20] == 'A' ? 'B' : 'A';
    assert_int_equal(auth(p, &r, tt, why, sizeof why), BM_POLICY_BAD_SIGNATURE);
    /* Wrong key id: b's key, an id a does not have, another key claiming a1. */
    char sbr[BM_POLICY_SIG_MAX];
    sign_at(sb1, &r, NOW, sbr);
    assert_int_equal(auth(p, &r, sbr, why, sizeof why), BM_POLICY_BAD_SIGNATURE);
    assert_non_null(strstr(why, "key id 'b1' is not a key of agency 'a'"));
    snprintf(tt, sizeof tt, "a3:%s", s1 + 3);
    assert_int_equal(auth(p, &r, tt, why, sizeof why), BM_POLICY_BAD_SIGNATURE);
    assert_int_equal(auth(p, &r, sxx, why, sizeof why), BM_POLICY_BAD_SIGNATURE);
    snprintf(tt, sizeof tt, "a1:%s", s2 + 3);
    assert_int_equal(auth(p, &r, tt, why, sizeof why), BM_POLICY_BAD_SIGNATURE);
    /* Garbage headers, including timestamps with a sign, leading zeros or
     * too many digits. */
    const char *junk[] = {"",       "a1",          "a1:",        "a1:1:",  "a1::AAAA",
                          "a1:!!!", ":1:abcd",     "a1:1:AAAA",  "a 1:1:A", "a1:-1:AAAA",
                          "a1:01:AAAA", "a1:99999999999999999999:AAAA", "a1:1x:AAAA"};
    for (size_t i = 0; i < sizeof junk / sizeof junk[0]; i++)
        assert_int_equal(auth(p, &r, junk[i], why, sizeof why), BM_POLICY_BAD_SIGNATURE);
    /* The window, both sides (clocks are not synchronised), edges included. */
    char sold[BM_POLICY_SIG_MAX];
    sign_at(sa1, &r, NOW - WINDOW, sold);
    assert_int_equal(auth(p, &r, sold, why, sizeof why), BM_POLICY_ALLOW);
    sign_at(sa1, &r, NOW - WINDOW - 1, sold);
    assert_int_equal(auth(p, &r, sold, why, sizeof why), BM_POLICY_STALE);
    assert_non_null(strstr(why, "outside 300000 ms"));
    sign_at(sa1, &r, NOW + WINDOW, sold);
    assert_int_equal(auth(p, &r, sold, why, sizeof why), BM_POLICY_ALLOW);
    sign_at(sa1, &r, NOW + WINDOW + 1, sold);
    assert_int_equal(auth(p, &r, sold, why, sizeof why), BM_POLICY_STALE);
    /* The same record captured and replayed an hour later. */
    assert_int_equal(auth_at(p, &r, s1, NOW + 3600000, why, sizeof why), BM_POLICY_STALE);
    /* A stale signature that does not verify is a bad signature: the
     * window is only told to a real signer. */
    snprintf(tt, sizeof tt, "%s", sold);
    tt[strlen(tt) - 5] = tt[strlen(tt) - 5] == 'A' ? 'B' : 'A';
    assert_int_equal(auth(p, &r, tt, why, sizeof why), BM_POLICY_BAD_SIGNATURE);
    /* The empty value and key sign and verify too. */
    struct bm_sig_record e = {"T", "t", NULL, 0, NULL, 0, "a", ""};
    char se[BM_POLICY_SIG_MAX];
    sign_at(sa1, &e, 0, se);
    assert_int_equal(auth_at(p, &e, se, 0, why, sizeof why), BM_POLICY_ALLOW);
    assert_int_equal(bm_signer_sign_record(sa1, &e, -1, se, sizeof se, err, sizeof err),
                     BM_EINVAL);
    bm_policy_destroy(p);
}

/* A known answer made outside biomatch: the signed bytes laid out by a
 * Python script following docs/wire.md section 13, signed by the OpenSSL
 * command line with the secret key of RFC 8032 section 7.1 test 1 (Ed25519
 * is deterministic). Pins the layout against an independent construction. */
static void test_known_answer(void **state)
{
    (void)state;
    const char *yaml = "agencies:\n"
                       "  rfc:\n"
                       "    keys:\n"
                       "      t1: d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a\n"
                       "    galleries:\n"
                       "      g: [identify]\n";
    struct bm_policy *p = bm_policy_parse(yaml, strlen(yaml), "rfc.yaml", err, sizeof err);
    if (p == NULL)
        fail_msg("%s", err);
    const char *sig = "t1:1700000000000:sltjKBIR3ci99n0dWZBOb4Do652I0xDajnfr0CaRcivBOgAJuq3cqBPC"
                      "KgYsJDygeXtDiPXiMTVmo9ekqZnjAA==";
    const char *v = "\x0a\x05job-1\x12\x03rfc";
    struct bm_sig_record r = {"biomatch.v1.MatchJob", "biomatch.jobs", "job-1", 5,
                              v,                      strlen(v),       "rfc",   "job-1"};
    char why[256];
    assert_int_equal(auth(p, &r, sig, why, sizeof why), BM_POLICY_ALLOW);
    r.topic = "biomatch.job";
    assert_int_equal(auth(p, &r, sig, why, sizeof why), BM_POLICY_BAD_SIGNATURE);
    bm_policy_destroy(p);
}

/* The `results` map and the admin operation: parsed values, secure
 * defaults for a listed agency, everything for development mode. */
static void test_results_rules(void **state)
{
    (void)state;
    const char *yaml = "agencies:\n"
                       "  a:\n    require_signature: false\n    galleries: {g: [enroll, admin]}\n"
                       "    results: {max_top_k: 5, min_threshold: -0.5, detail: hit_nohit,\n"
                       "              score_decimals: 3, internal_fields: true}\n"
                       "  b:\n    require_signature: false\n    galleries: {g: [enroll]}\n";
    struct bm_policy *p = bm_policy_parse(yaml, strlen(yaml), "r.yaml", err, sizeof err);
    if (p == NULL)
        fail_msg("%s", err);
    struct bm_policy_results r;
    bm_policy_results(p, "a", &r);
    assert_int_equal(r.max_top_k, 5);
    assert_true(r.has_min_threshold && r.min_threshold == -0.5f);
    assert_int_equal(r.detail, BM_POLICY_DETAIL_HIT_NOHIT);
    assert_int_equal(r.score_decimals, 3);
    assert_true(r.internal_fields);
    bm_policy_results(p, "b", &r);
    assert_int_equal(r.max_top_k, 0);
    assert_false(r.has_min_threshold);
    assert_int_equal(r.detail, BM_POLICY_DETAIL_IDS_SCORES);
    assert_int_equal(r.score_decimals, -1);
    assert_false(r.internal_fields);
    bm_policy_results(NULL, "a", &r);
    assert_true(r.internal_fields);
    char why[128];
    assert_int_equal(bm_policy_permit(p, "a", "g", BM_POLICY_OP_ADMIN, why, sizeof why),
                     BM_POLICY_ALLOW);
    assert_int_equal(bm_policy_permit(p, "b", "g", BM_POLICY_OP_ADMIN, why, sizeof why),
                     BM_POLICY_UNAUTHORIZED);
    bm_policy_destroy(p);
    const char *head = "agencies:\n  a:\n    require_signature: false\n    galleries: {}\n"
                       "    results:\n";
    const char *bad[][2] = {
        {"      max_top_k: 0\n", "max_top_k' must be an integer 1..1000"},
        {"      max_top_k: 2.5\n", "max_top_k' must be an integer 1..1000"},
        {"      min_threshold: high\n", "min_threshold' must be a number"},
        {"      detail: everything\n", "detail' must be hit_nohit, ids or ids_scores"},
        {"      score_decimals: 7\n", "score_decimals' must be an integer 0..6"},
        {"      internal_fields: yes\n", "internal_fields' must be true or false"},
        {"      detial: ids\n", "unknown key 'agencies.a.results.detial'"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char y[512];
        snprintf(y, sizeof y, "%s%s", head, bad[i][0]);
        expect_error(y, bad[i][1]);
    }
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
    struct bm_sig_record r = {"T", "t", NULL, 0, "x", 1, "a", "i"};
    assert_int_equal(bm_signer_sign_record(s, &r, 1, small, sizeof small, err, sizeof err),
                     BM_ERANGE);
    char again[BM_POLICY_PUB_B64_LEN];
    assert_int_equal(bm_signer_public_b64(s, again, sizeof again), BM_OK);
    assert_string_equal(again, pub);
    assert_null(bm_signer_load("/nonexistent/key.pem", "k", err, sizeof err));
    bm_signer_destroy(s);
    bm_signer_destroy(NULL);
    free(pem);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_good),      cmocka_unit_test(test_parse_errors),
        cmocka_unit_test(test_parse_bad_keys),  cmocka_unit_test(test_decisions),
        cmocka_unit_test(test_signatures),      cmocka_unit_test(test_known_answer),
        cmocka_unit_test(test_results_rules),
        cmocka_unit_test(test_signer_errors),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
