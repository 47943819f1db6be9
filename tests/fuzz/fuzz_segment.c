/* Fuzz the segment blob reader (bm_segblob_peek, bm_segblob_decode): the
 * bytes a worker or the builder GETs from Redis.
 *
 * Byte 0 picks the route; the blob is the rest. Route 1 (odd byte 0)
 * rewrites the header's SHA-256 to match the blob, as an attacker with
 * write access to Redis (and no at-rest key) can, so the fuzzer reaches the
 * section parsing behind the digest check. Invariants: nothing reads
 * outside the blob (exact-size copy under ASan); a decode that succeeds
 * returns a segment and adds its subjects; peek and decode agree on the
 * header. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "common/err.h"
#include "fuzz.h"
#include "match/gallery.h"
#include "store/segment.h"
#include "store/subjects.h"

#define SHA_AT 160 /* the header's digest field (lib/store/segment.c) */

static void fix_digest(uint8_t *b, size_t n)
{
    if (n < BM_SEGBLOB_HEADER_BYTES)
        return;
    unsigned int len = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    BM_FUZZ_CHECK(ctx != NULL);
    BM_FUZZ_CHECK(EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1 &&
                  EVP_DigestUpdate(ctx, b, SHA_AT) == 1 &&
                  EVP_DigestUpdate(ctx, b + BM_SEGBLOB_HEADER_BYTES,
                                   n - BM_SEGBLOB_HEADER_BYTES) == 1 &&
                  EVP_DigestFinal_ex(ctx, b + SHA_AT, &len) == 1);
    EVP_MD_CTX_free(ctx);
}

int bm_fuzz_segment(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    size_t n = size - 1;
    uint8_t *b = malloc(n ? n : 1);
    BM_FUZZ_CHECK(b != NULL);
    memcpy(b, data + 1, n);
    if (data[0] & 1)
        fix_digest(b, n);
    char err[256];
    struct bm_segblob_info info;
    int prc = bm_segblob_peek(b, n, &info, err, sizeof err);
    struct bm_subjects *subs = bm_subjects_new(16, err, sizeof err);
    BM_FUZZ_CHECK(subs != NULL);
    struct bm_segment *seg = NULL;
    int rc = bm_segblob_decode(b, n, NULL, NULL, &seg, subs, err, sizeof err);
    BM_FUZZ_CHECK((rc == BM_OK) == (seg != NULL));
    if (rc == BM_OK)
        BM_FUZZ_CHECK(prc == BM_OK);
    bm_segment_free(seg);
    bm_subjects_free(subs);
    free(b);
    return 0;
}

#ifndef BM_FUZZ_REPLAY
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return bm_fuzz_segment(data, size);
}
#endif
