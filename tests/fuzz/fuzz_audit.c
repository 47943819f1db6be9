/* Fuzz the audit verifier (lib/audit/verify.h), which reads whatever
 * anyone wrote to the audit topic. The input is split into records at
 * 0xff 0x00 separators (so one input is a whole topic) and fed to a keyed
 * verifier. Invariants: nothing crashes or leaks; every finding is counted
 * once; bytes that do not decode are findings, never silence. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audit/verify.h"
#include "crypto/keyring.h"
#include "common/err.h"
#include "fuzz.h"

static const uint8_t KEY[32] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
                                17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32};

static void on_finding(const struct bm_audit_finding *f, void *opaque)
{
    BM_FUZZ_CHECK(f->detail != NULL && f->writer != NULL);
    (*(size_t *)opaque)++;
}

int bm_fuzz_audit(const uint8_t *data, size_t size)
{
    static struct bm_keyring *kr;
    char err[256];
    if (kr == NULL) {
        kr = bm_keyring_new();
        BM_FUZZ_CHECK(kr != NULL && bm_keyring_add(kr, "audit-1", KEY, 1, err, sizeof err) ==
                                        BM_OK);
    }
    struct bm_audit_verify_opts o = {kr, data != NULL && size > 0 && (data[0] & 1),
                                     1700000000000LL, 1000};
    struct bm_audit_verifier *v = bm_audit_verifier_new(&o, err, sizeof err);
    BM_FUZZ_CHECK(v != NULL);
    size_t start = 0;
    int64_t offset = 0;
    for (size_t i = 0; i <= size; i++) {
        if (i < size && !(i + 1 < size && data[i] == 0xff && data[i + 1] == 0x00))
            continue;
        size_t n = i - start;
        uint8_t *rec = malloc(n ? n : 1); /* exact size, for ASan */
        BM_FUZZ_CHECK(rec != NULL);
        memcpy(rec, data + start, n);
        BM_FUZZ_CHECK(bm_audit_verifier_add(v, (int32_t)(offset % 3), offset, rec, n) == BM_OK);
        free(rec);
        offset++;
        start = i + 2;
        i++;
    }
    size_t seen = 0;
    struct bm_audit_verify_stats st;
    int nf = bm_audit_verifier_finish(v, on_finding, &seen, &st);
    BM_FUZZ_CHECK(nf >= 0 && (size_t)nf == seen && st.findings == seen);
    bm_audit_verifier_free(v);
    return 0;
}

#ifndef BM_FUZZ_REPLAY
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return bm_fuzz_audit(data, size);
}
#endif
