/* Fuzz the at-rest envelope reader: stored Redis values and gallery log
 * records are untrusted bytes until their tag verifies.
 *
 * The input is opened as a gallery log record and as a segment under a
 * fixed keyring, once in strict mode (the default with a key) and once with
 * plaintext allowed. Invariants: the result is one of the documented codes;
 * a value that is not an envelope is refused in strict mode and otherwise
 * comes back as the same bytes, borrowed; an envelope never opens (the
 * fuzzer cannot forge a GCM tag), and a failure returns no plaintext. Then
 * the input is sealed as a record and must open again to the same bytes at
 * that place and at no other. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crypto/atrest.h"
#include "crypto/keyring.h"
#include "common/err.h"
#include "fuzz.h"

/* The keyring with one key; 'allow_plaintext' selects the lenient twin. */
static const struct bm_keyring *fuzz_keyring(int allow_plaintext)
{
    static struct bm_keyring *kr[2];
    if (kr[allow_plaintext] == NULL) {
        static const uint8_t key[BM_AEAD_KEY_BYTES] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11};
        char err[128];
        struct bm_keyring *k = bm_keyring_new();
        BM_FUZZ_CHECK(k != NULL);
        BM_FUZZ_CHECK(bm_keyring_add(k, "k1", key, 1, err, sizeof err) == BM_OK);
        bm_keyring_set_allow_plaintext(k, allow_plaintext);
        kr[allow_plaintext] = k;
    }
    return kr[allow_plaintext];
}

static void check_open(const struct bm_keyring *kr, int rc, const uint8_t *data, size_t size,
                       const uint8_t *plain, size_t plainlen, const uint8_t *owned)
{
    BM_FUZZ_CHECK(rc == BM_OK || rc == BM_EPROTO || rc == BM_EUNSUPPORTED ||
                  rc == BM_ECHECKSUM);
    if (!bm_atrest_is_sealed(data, size) && bm_keyring_strict(kr)) {
        BM_FUZZ_CHECK(rc == BM_ECHECKSUM && plain == NULL && owned == NULL);
    } else if (!bm_atrest_is_sealed(data, size)) {
        BM_FUZZ_CHECK(rc == BM_OK && plain == data && plainlen == size && owned == NULL);
    } else {
        BM_FUZZ_CHECK(rc != BM_OK);
        BM_FUZZ_CHECK(plain == NULL && owned == NULL);
    }
}

int bm_fuzz_atrest(const uint8_t *data, size_t size)
{
    char err[256];
    const uint8_t *plain = NULL;
    size_t plainlen = 0;
    uint8_t *owned = NULL;
    static const uint8_t none[1];
    const uint8_t *in = size > 0 ? data : none;
    int rc;

    for (int lenient = 0; lenient <= 1; lenient++) {
        const struct bm_keyring *k = fuzz_keyring(lenient);
        plain = NULL;
        owned = NULL;
        rc = bm_atrest_open_record(k, "faces", 3, "subject-1", 9, in, size, &plain, &plainlen,
                                   &owned, err, sizeof err);
        check_open(k, rc, in, size, plain, plainlen, owned);
        free(owned);
        plain = NULL;
        owned = NULL;
        rc = bm_atrest_open(k, "faces", 3, 7, NULL, in, size, &plain, &plainlen, &owned, err,
                            sizeof err);
        check_open(k, rc, in, size, plain, plainlen, owned);
        free(owned);
    }

    const struct bm_keyring *kr = fuzz_keyring(0);

    uint8_t *env = NULL;
    size_t envlen = 0;
    BM_FUZZ_CHECK(bm_atrest_seal_record(kr, "faces", 3, "subject-1", 9, in, size, &env, &envlen,
                                        err, sizeof err) == BM_OK);
    rc = bm_atrest_open_record(kr, "faces", 3, "subject-1", 9, env, envlen, &plain, &plainlen,
                               &owned, err, sizeof err);
    BM_FUZZ_CHECK(rc == BM_OK && plainlen == size && owned != NULL);
    BM_FUZZ_CHECK(size == 0 || memcmp(plain, in, size) == 0);
    free(owned);
    rc = bm_atrest_open_record(kr, "faces", 3, "subject-2", 9, env, envlen, &plain, &plainlen,
                               &owned, err, sizeof err);
    BM_FUZZ_CHECK(rc == BM_ECHECKSUM && plain == NULL && owned == NULL);
    free(env);
    return 0;
}

#ifndef BM_FUZZ_REPLAY
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return bm_fuzz_atrest(data, size);
}
#endif
