/* audit: the keyed chain (seal, resume, hashes recomputed here with OpenSSL
 * directly from the record's own encoding) and the verifier, which must
 * name each kind of tampering: a modified record, a deleted one, an
 * inserted (replayed or forged) one, and truncation at either end. No
 * network: records are sealed and fed in memory. */
#include "testutil.h"

#include "audit/chain.h"
#include "audit/verify.h"
#include "crypto/keyring.h"
#include "wire/decode.h"

#include <openssl/hmac.h>
#include <stdlib.h>
#include <string.h>

#define N 12

static const uint8_t KEY[32] = {9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 11, 12, 13, 14, 15, 16,
                                17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32};

struct enc {
    uint8_t *p;
    size_t n;
};

static struct enc recs[N + 1];
static int64_t now_ms;

/* N records of writer "node/intake", the last a final checkpoint. */
static void seal_all(struct bm_audit_chain *c, size_t from, size_t to)
{
    char err[256];
    for (size_t i = from; i < to; i++) {
        Biomatch__V1__AuditRecord r = BIOMATCH__V1__AUDIT_RECORD__INIT;
        char id[32];
        snprintf(id, sizeof id, "job-%zu", i);
        r.kind = i + 1 == N ? BIOMATCH__V1__AUDIT_RECORD__KIND__KIND_CHECKPOINT
                            : BIOMATCH__V1__AUDIT_RECORD__KIND__KIND_JOB;
        r.checkpoint_final = i + 1 == N;
        r.checkpoint_interval_ms = 1000;
        r.agency = (char *)"agency-a";
        r.id = id;
        r.time_unix_ms = now_ms - 1000 * (int64_t)(N - i);
        assert_int_equal(bm_audit_chain_seal(c, &r, &recs[i].p, &recs[i].n, err, sizeof err),
                         BM_OK);
    }
}

static struct bm_keyring *keyring(void)
{
    struct bm_keyring *kr = bm_keyring_new();
    char err[256];
    assert_int_equal(bm_keyring_add(kr, "audit-1", KEY, 1, err, sizeof err), BM_OK);
    return kr;
}

static int setup(void **state)
{
    (void)state;
    now_ms = 1700000000000LL;
    char err[256];
    struct bm_audit_chain *c = bm_audit_chain_new("node/intake", "audit-1", KEY, err, sizeof err);
    assert_non_null(c);
    seal_all(c, 0, N);
    bm_audit_chain_free(c);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    for (size_t i = 0; i < N + 1; i++) {
        free(recs[i].p);
        recs[i].p = NULL;
    }
    return 0;
}

/* Findings of a feed, as a string of kind letters in position order. */
static char found[64];
static int nfound;

static void on_finding(const struct bm_audit_finding *f, void *opaque)
{
    (void)opaque;
    if (nfound < (int)sizeof found - 1)
        found[nfound++] = bm_audit_finding_name(f->kind)[0];
    found[nfound] = '\0';
    print_message("  %s seq=%llu at %lld: %s\n", bm_audit_finding_name(f->kind),
                  (unsigned long long)f->seq, (long long)f->offset, f->detail);
}

/* Feed the records in 'order' (indexes into recs; -1 ends) at offsets
 * 0, 1, 2, ... and return the findings. */
static const char *check(const int *order, const struct bm_keyring *kr, int from_beginning)
{
    char err[256];
    struct bm_audit_verify_opts o = {kr, from_beginning, now_ms, 1000};
    struct bm_audit_verifier *v = bm_audit_verifier_new(&o, err, sizeof err);
    assert_non_null(v);
    for (int64_t off = 0; order[off] >= 0; off++)
        assert_int_equal(bm_audit_verifier_add(v, 0, off, recs[order[off]].p,
                                               recs[order[off]].n),
                         BM_OK);
    nfound = 0;
    found[0] = '\0';
    int n = bm_audit_verifier_finish(v, on_finding, NULL, NULL);
    assert_int_equal(n, nfound);
    bm_audit_verifier_free(v);
    return found;
}

static void test_intact(void **state)
{
    (void)state;
    struct bm_keyring *kr = keyring();
    int order[N + 1];
    for (int i = 0; i < N; i++)
        order[i] = i;
    order[N] = -1;
    assert_string_equal(check(order, kr, 1), "");
    /* Order in the topic does not matter: chains are ordered by seq. */
    int rev[N + 1];
    for (int i = 0; i < N; i++)
        rev[i] = N - 1 - i;
    rev[N] = -1;
    assert_string_equal(check(rev, kr, 1), "");
    bm_keyring_free(kr);
}

/* The hash, recomputed here from the record's bytes with OpenSSL alone:
 * HMAC-SHA-256(key, the record re-encoded with its hash field empty). */
static void test_hash_recomputed_independently(void **state)
{
    (void)state;
    for (int i = 0; i < N; i++) {
        Biomatch__V1__AuditRecord *r = biomatch__v1__audit_record__unpack(NULL, recs[i].n,
                                                                          recs[i].p);
        assert_non_null(r);
        assert_int_equal(r->seq, (uint64_t)i + 1);
        assert_string_equal(r->key_id, "audit-1");
        assert_int_equal(r->hash.len, 32);
        uint8_t stored[32];
        memcpy(stored, r->hash.data, 32);
        r->hash.len = 0;
        size_t len = biomatch__v1__audit_record__get_packed_size(r);
        uint8_t *buf = malloc(len);
        assert_non_null(buf);
        biomatch__v1__audit_record__pack(r, buf);
        uint8_t mac[32];
        unsigned int maclen = 0;
        assert_non_null(HMAC(EVP_sha256(), KEY, 32, buf, len, mac, &maclen));
        assert_memory_equal(mac, stored, 32);
        /* prev_hash is the previous record's hash. */
        if (i > 0) {
            Biomatch__V1__AuditRecord *p = biomatch__v1__audit_record__unpack(
                NULL, recs[i - 1].n, recs[i - 1].p);
            assert_int_equal(r->prev_hash.len, 32);
            assert_memory_equal(r->prev_hash.data, p->hash.data, 32);
            biomatch__v1__audit_record__free_unpacked(p, NULL);
        } else {
            assert_int_equal(r->prev_hash.len, 0);
        }
        free(buf);
        r->hash.len = 32;
        biomatch__v1__audit_record__free_unpacked(r, NULL);
    }
}

static void test_modified(void **state)
{
    (void)state;
    struct bm_keyring *kr = keyring();
    /* Change the agency of record 4 and keep its hash. */
    Biomatch__V1__AuditRecord *r = biomatch__v1__audit_record__unpack(NULL, recs[4].n, recs[4].p);
    char *agency = r->agency;
    r->agency = (char *)"agency-b";
    recs[N].n = biomatch__v1__audit_record__get_packed_size(r);
    recs[N].p = malloc(recs[N].n);
    biomatch__v1__audit_record__pack(r, recs[N].p);
    r->agency = agency;
    biomatch__v1__audit_record__free_unpacked(r, NULL);
    int order[] = {0, 1, 2, 3, N, 5, 6, 7, 8, 9, 10, 11, -1};
    assert_string_equal(check(order, kr, 1), "M");
    /* Without the key the same change is invisible to a keyed chain's
     * check only in that the hash cannot be checked: UNKEYED, never "ok". */
    const char *f = check(order, NULL, 1);
    assert_true(strlen(f) >= 1);
    bm_keyring_free(kr);
}

static void test_deleted(void **state)
{
    (void)state;
    struct bm_keyring *kr = keyring();
    int order[] = {0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11, -1};
    assert_string_equal(check(order, kr, 1), "D");
    bm_keyring_free(kr);
}

static void test_inserted(void **state)
{
    (void)state;
    struct bm_keyring *kr = keyring();
    /* A valid record replayed later in the topic. */
    int dup[] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 3, -1};
    assert_string_equal(check(dup, kr, 1), "I");
    /* A record forged without the key: sealed by another chain with the
     * same writer name but no key (or a guessed one). */
    char err[256];
    struct bm_audit_chain *forger = bm_audit_chain_new("node/intake", NULL, NULL, err, sizeof err);
    uint8_t h[32];
    Biomatch__V1__AuditRecord *r6 = biomatch__v1__audit_record__unpack(NULL, recs[6].n, recs[6].p);
    memcpy(h, r6->hash.data, 32);
    biomatch__v1__audit_record__free_unpacked(r6, NULL);
    bm_audit_chain_resume(forger, 7, h);
    Biomatch__V1__AuditRecord r = BIOMATCH__V1__AUDIT_RECORD__INIT;
    r.kind = BIOMATCH__V1__AUDIT_RECORD__KIND__KIND_JOB;
    r.agency = (char *)"agency-a";
    assert_int_equal(bm_audit_chain_seal(forger, &r, &recs[N].p, &recs[N].n, err, sizeof err),
                     BM_OK);
    bm_audit_chain_free(forger);
    int forged[] = {0, 1, 2, 3, 4, 5, 6, N, 7, 8, 9, 10, 11, -1};
    const char *f = check(forged, kr, 1);
    assert_non_null(strchr(f, 'U')); /* unkeyed where keys are in use */
    assert_non_null(strchr(f, 'I')); /* a second seq 8 */
    bm_keyring_free(kr);
}

static void test_truncated(void **state)
{
    (void)state;
    struct bm_keyring *kr = keyring();
    /* The tail (with the final checkpoint) removed: the chain ends in an
     * old record that is not a final checkpoint. */
    int tail[] = {0, 1, 2, 3, 4, 5, 6, 7, 8, -1};
    assert_string_equal(check(tail, kr, 1), "T");
    /* The head removed while reading from the beginning. */
    int head[] = {2, 3, 4, 5, 6, 7, 8, 9, 10, 11, -1};
    assert_string_equal(check(head, kr, 1), "T");
    /* ... which is fine when reading from an offset (--from). */
    assert_string_equal(check(head, kr, 0), "");
    bm_keyring_free(kr);
}

/* A restarted writer resumes after the recovered head: one chain. */
static void test_resume_continues_chain(void **state)
{
    (void)state;
    char err[256];
    struct bm_audit_chain *c = bm_audit_chain_new("node/intake", "audit-1", KEY, err, sizeof err);
    for (int i = 0; i < N; i++) {
        free(recs[i].p);
        recs[i].p = NULL;
    }
    seal_all(c, 0, 6);
    uint64_t seq;
    uint8_t head[32];
    bm_audit_chain_head(c, &seq, head);
    bm_audit_chain_free(c);
    c = bm_audit_chain_new("node/intake", "audit-1", KEY, err, sizeof err);
    bm_audit_chain_resume(c, seq, head);
    seal_all(c, 6, N);
    bm_audit_chain_free(c);
    struct bm_keyring *kr = keyring();
    int order[N + 1];
    for (int i = 0; i < N; i++)
        order[i] = i;
    order[N] = -1;
    assert_string_equal(check(order, kr, 1), "");
    bm_keyring_free(kr);
}

static void test_subject_hash(void **state)
{
    (void)state;
    char a[BM_AUDIT_SUBJECT_HASH_LEN], b[BM_AUDIT_SUBJECT_HASH_LEN];
    assert_int_equal(bm_audit_subject_hash(KEY, "faces", "subject-1", a), BM_OK);
    assert_int_equal(strlen(a), BM_AUDIT_SUBJECT_HASH_LEN - 1);
    assert_int_equal(strncmp(a, "h:", 2), 0);
    assert_null(strstr(a, "subject"));
    assert_int_equal(bm_audit_subject_hash(KEY, "faces", "subject-2", b), BM_OK);
    assert_string_not_equal(a, b);
    assert_int_equal(bm_audit_subject_hash(KEY, "faces", "subject-1", b), BM_OK);
    assert_string_equal(a, b);
    assert_int_equal(bm_audit_subject_hash(NULL, "faces", "subject-1", b), BM_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_intact, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hash_recomputed_independently, setup, teardown),
        cmocka_unit_test_setup_teardown(test_modified, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deleted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_inserted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_truncated, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resume_continues_chain, setup, teardown),
        cmocka_unit_test(test_subject_hash),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
