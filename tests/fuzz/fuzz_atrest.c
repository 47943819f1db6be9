/* Fuzz the at-rest envelope reader: stored Redis values and gallery log
 * records are untrusted bytes until their tag verifies.
 *
 * The input is opened as a gallery log record and as a segment under a
 * fixed keyring. Invariants: the result is one of the documented codes;
 * a value that is not an envelope comes back as the same bytes, borrowed;
 * an envelope never opens (the fuzzer cannot forge a GCM tag), and a
 * failure returns no plaintext. Then the input is sealed as a record and
 * must open again to the same bytes at that place and at no other. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crypto/atrest.h"
#include "crypto/keyring.h"
#include "common/err.h"
#include "fuzz.h"

static const struct bm_keyring *fuzz_keyring(void)
{
    static struct bm_keyring *kr;
    if (kr == NULL) {
        static const uint8_t key[BM_AEAD_KEY_BYTES] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11};
        char err[128];
        kr = bm_keyring_new();
        BM_FUZZ_CHECK(kr != NULL);
        BM_FUZZ_CHECK(bm_keyring_add(kr, "k1", key, 1, err, sizeof err) == BM_OK);
    }
    return kr;
}

static void check_open(int rc, const uint8_t *data, size_t size, const uint8_t *plain,
                       size_t plainlen, const uint8_t *owned)
{
    BM_FUZZ_CHECK(rc == BM_OK || rc == BM_EPROTO || rc == BM_EUNSUPPORTED ||
                  rc == BM_ECHECKSUM);
    if (!bm_atrest_is_sealed(data, size)) {
        BM_FUZZ_CHECK(rc == BM_OK && plain == data && plainlen == size && owned == NULL);
    } else {
        BM_FUZZ_CHECK(rc != BM_OK);
        BM_FUZZ_CHECK(plain == NULL && owned == NULL);
    }
}

int bm_fuzz_atrest(const uint8_t *data, size_t size)
{
    const struct bm_keyring *kr = fuzz_keyring();
    char err[256];
    const uint8_t *plain = NULL;
    size_t plainlen = 0;
    uint8_t *owned = NULL;
    static const uint8_t none[1];
    const uint8_t *in = size > 0 ? data : none;

    int rc = bm_atrest_open_record(kr, "faces", 3, "subject-1", 9, in, size, &plain, &plainlen,
                                   &owned, err, sizeof err);
    check_open(rc, in, size, plain, plainlen, owned);
    free(owned);
    rc = bm_atrest_open(kr, "faces", 3, 7, NULL, in, size, &plain, &plainlen, &owned, err,
                        sizeof err);
    check_open(rc, in, size, plain, plainlen, owned);
    free(owned);

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
