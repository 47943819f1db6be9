/* AES-256-GCM authenticated encryption for data at rest.
 *
 * One sealed message is laid out as nonce (12 bytes) | ciphertext (as long
 * as the plaintext) | tag (16 bytes). Every seal draws a fresh random 96-bit
 * nonce from OpenSSL's CSPRNG (RAND_bytes), so one key must not seal more
 * than about 2^32 messages (NIST SP 800-38D's bound for random nonces);
 * segment blobs are sealed a few times per second at most, so a key would
 * need centuries to get there. Tag comparison is OpenSSL's (constant time).
 *
 * Invariant: bm_aead_open writes plaintext only into the caller's buffer
 * and wipes it (OPENSSL_cleanse) when the tag does not verify, so no
 * unauthenticated byte ever escapes.
 *
 * Thread: any; the functions keep no state. */
#ifndef BM_AEAD_H
#define BM_AEAD_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

#define BM_AEAD_KEY_BYTES 32
#define BM_AEAD_NONCE_BYTES 12
#define BM_AEAD_TAG_BYTES 16
#define BM_AEAD_OVERHEAD (BM_AEAD_NONCE_BYTES + BM_AEAD_TAG_BYTES)
/* Largest plaintext accepted (GCM's own limit is 64 GiB; segment blobs
 * are at most 1 GiB). */
#define BM_AEAD_MAX_BYTES ((size_t)1 << 32)

/* Seal 'len' bytes of 'plaintext' (may be NULL when len is 0) under the
 * 32-byte 'key' with additional authenticated data 'aad' ('aadlen' bytes;
 * may be NULL when 0). 'out' must hold len + BM_AEAD_OVERHEAD bytes and
 * receives nonce | ciphertext | tag; it must not overlap the plaintext.
 * Returns BM_OK, BM_ERANGE (len over BM_AEAD_MAX_BYTES), BM_EIO (the
 * random generator failed) or BM_EUNSUPPORTED (OpenSSL refused; 'out' is
 * wiped). Nothing is allocated that outlives the call. */
int bm_aead_seal(const uint8_t key[BM_AEAD_KEY_BYTES], const uint8_t *aad, size_t aadlen,
                 const uint8_t *plaintext, size_t len, uint8_t *out, char *err, size_t errlen);

/* Open 'inlen' bytes of 'in' (nonce | ciphertext | tag) sealed under 'key'
 * with the same 'aad'. 'out' must hold inlen - BM_AEAD_OVERHEAD bytes and
 * must not overlap 'in'. Returns BM_OK with the plaintext in 'out';
 * BM_ECHECKSUM when the tag does not verify (wrong key, wrong AAD, any
 * changed byte; 'out' is wiped); BM_EPROTO when inlen < BM_AEAD_OVERHEAD;
 * BM_ERANGE or BM_EUNSUPPORTED as for seal. */
int bm_aead_open(const uint8_t key[BM_AEAD_KEY_BYTES], const uint8_t *aad, size_t aadlen,
                 const uint8_t *in, size_t inlen, uint8_t *out, char *err, size_t errlen);

#endif /* BM_AEAD_H */
