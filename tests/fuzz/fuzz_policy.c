/* Fuzz the policy file parser (bm_policy_parse): YAML from an operator's
 * file, including key material in base64, hex or PEM. Invariants: never
 * crashes or leaks; a policy that parses answers checks without crashing. */
#include <stdio.h>
#include <stdlib.h>

#include "conf/policy.h"
#include "fuzz.h"

int bm_fuzz_policy(const uint8_t *data, size_t size)
{
    char err[512];
    struct bm_policy *p = bm_policy_parse((const char *)data, size, "fuzz", err, sizeof err);
    if (p == NULL)
        return 0;
    (void)bm_policy_agency_count(p);
    static const char *const agencies[] = {"a", "border-police", "*", ""};
    for (size_t i = 0; i < sizeof agencies / sizeof *agencies; i++)
        (void)bm_policy_permit(p, agencies[i], "g", BM_POLICY_OP_ENROLL, err, sizeof err);
    bm_policy_destroy(p);
    return 0;
}

#ifndef BM_FUZZ_REPLAY
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return bm_fuzz_policy(data, size);
}
#endif
