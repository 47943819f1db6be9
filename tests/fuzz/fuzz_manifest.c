/* Fuzz the shard manifest reader (bm_manifest_decode): the bytes a worker
 * or the builder GETs from Redis. Invariants: never crashes or leaks; a
 * manifest that decodes encodes again, and that encoding decodes to a
 * manifest with no difference from the first. */
#include <stdio.h>
#include <stdlib.h>

#include "common/err.h"
#include "fuzz.h"
#include "store/manifest.h"

int bm_fuzz_manifest(const uint8_t *data, size_t size)
{
    char err[256];
    struct bm_manifest *m = NULL;
    int rc = bm_manifest_decode(data, size, 0, &m, err, sizeof err);
    BM_FUZZ_CHECK((rc == BM_OK) == (m != NULL));
    if (m == NULL)
        return 0;
    uint8_t *b = NULL;
    size_t n = 0;
    BM_FUZZ_CHECK(bm_manifest_encode(m, &b, &n, err, sizeof err) == BM_OK);
    struct bm_manifest *again = NULL;
    BM_FUZZ_CHECK(bm_manifest_decode(b, n, 0, &again, err, sizeof err) == BM_OK);
    /* Re-reading the same manifest changes nothing. */
    struct bm_manifest_diff d;
    BM_FUZZ_CHECK(bm_manifest_diff(m, again, &d, err, sizeof err) == BM_OK);
    BM_FUZZ_CHECK(d.nadded == 0 && d.nremoved == 0 && d.nnew_tombstones == 0 &&
                  d.ngone_tombstones == 0);
    bm_manifest_diff_free(&d);
    bm_manifest_free(again);
    free(b);
    bm_manifest_free(m);
    return 0;
}

#ifndef BM_FUZZ_REPLAY
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return bm_fuzz_manifest(data, size);
}
#endif
