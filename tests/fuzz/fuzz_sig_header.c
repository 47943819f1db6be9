/* Fuzz the biomatch-signature header check (bm_policy_authenticate) under
 * a fixed policy whose agency requires signatures.
 *
 * Byte 0 (mod 161) is the header length; the header follows, the record
 * value is the rest. Invariants: the parser never reads outside the header
 * or value (ASan); nothing the fuzzer can build verifies, since it holds
 * no private key: ALLOW here would be a forgery. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conf/policy.h"
#include "fuzz.h"

static const char POLICY[] =
    "agencies:\n"
    "  border-police:\n"
    "    require_signature: true\n"
    "    keys:\n"
    "      bp-2026: \"W7tDqXFnYJq+izAsxyHN26hWgvO8b8FfLv47bMMK8n4=\"\n"
    "    galleries:\n"
    "      eu-face: [identify, verify]\n";

int bm_fuzz_sig_header(const uint8_t *data, size_t size)
{
    static struct bm_policy *p;
    char why[256];
    if (p == NULL) {
        p = bm_policy_parse(POLICY, sizeof POLICY - 1, "fuzz", why, sizeof why);
        BM_FUZZ_CHECK(p != NULL);
    }
    if (size == 0)
        return 0;
    size_t hl = data[0] % (BM_POLICY_SIG_MAX + 1);
    if (hl > size - 1)
        hl = size - 1;
    /* Exact-size copies, so ASan sees a read past either end. */
    char *sig = malloc(hl ? hl : 1);
    uint8_t *value = malloc(size - 1 - hl ? size - 1 - hl : 1);
    BM_FUZZ_CHECK(sig != NULL && value != NULL);
    memcpy(sig, data + 1, hl);
    memcpy(value, data + 1 + hl, size - 1 - hl);
    struct bm_sig_record r = {"biomatch.v1.MatchJob", "biomatch.jobs", "job-1", 5, value,
                              size - 1 - hl, "border-police", "job-1"};
    int64_t ts = 0;
    enum bm_policy_verdict v = bm_policy_authenticate(p, &r, sig, hl, 1700000000000LL,
                                                      300000, &ts, why, sizeof why);
    BM_FUZZ_CHECK(v == BM_POLICY_BAD_SIGNATURE);
    /* An agency the policy does not list is refused before any parsing. */
    r.agency = "stranger";
    v = bm_policy_authenticate(p, &r, sig, hl, 1700000000000LL, 300000, &ts, why, sizeof why);
    BM_FUZZ_CHECK(v == BM_POLICY_UNAUTHORIZED);
    free(sig);
    free(value);
    return 0;
}

#ifndef BM_FUZZ_REPLAY
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return bm_fuzz_sig_header(data, size);
}
#endif
