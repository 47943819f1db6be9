/* AES-256-GCM through OpenSSL's EVP interface (see aead.h).
 *
 * EVP takes int lengths, so data is fed in chunks of at most 1 GiB; GCM is
 * a stream mode, so chunking does not change a byte of the output. The one
 * invariant that matters: open never hands back plaintext whose tag failed,
 * because EVP_DecryptFinal_ex is the tag check and a failure wipes 'out'. */
#include "crypto/aead.h"

#include <limits.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#define CHUNK ((size_t)1 << 30)

/* Run 'len' bytes through an initialised context, chunk by chunk. */
static int update(EVP_CIPHER_CTX *ctx, int enc, const uint8_t *in, size_t len, uint8_t *out)
{
    size_t done = 0;
    while (done < len) {
        size_t n = len - done < CHUNK ? len - done : CHUNK;
        int outl = 0;
        int ok = enc ? EVP_EncryptUpdate(ctx, out + done, &outl, in + done, (int)n)
                     : EVP_DecryptUpdate(ctx, out + done, &outl, in + done, (int)n);
        if (!ok || (size_t)outl != n)
            return 0;
        done += n;
    }
    return 1;
}

/* Feed the AAD (output NULL means "authenticate only"). */
static int add_aad(EVP_CIPHER_CTX *ctx, int enc, const uint8_t *aad, size_t aadlen)
{
    size_t done = 0;
    while (done < aadlen) {
        size_t n = aadlen - done < CHUNK ? aadlen - done : CHUNK;
        int outl = 0;
        int ok = enc ? EVP_EncryptUpdate(ctx, NULL, &outl, aad + done, (int)n)
                     : EVP_DecryptUpdate(ctx, NULL, &outl, aad + done, (int)n);
        if (!ok)
            return 0;
        done += n;
    }
    return 1;
}

int bm_aead_seal(const uint8_t key[BM_AEAD_KEY_BYTES], const uint8_t *aad, size_t aadlen,
                 const uint8_t *plaintext, size_t len, uint8_t *out, char *err, size_t errlen)
{
    if (key == NULL || out == NULL || (len > 0 && plaintext == NULL) ||
        (aadlen > 0 && aad == NULL))
        return bm_seterr(err, errlen, BM_EINVAL, "aead seal: missing argument");
    if (len > BM_AEAD_MAX_BYTES || aadlen > BM_AEAD_MAX_BYTES)
        return bm_seterr(err, errlen, BM_ERANGE, "aead seal: %zu bytes is over the limit", len);
    uint8_t *nonce = out, *ct = out + BM_AEAD_NONCE_BYTES, *tag = ct + len;
    if (RAND_bytes(nonce, BM_AEAD_NONCE_BYTES) != 1)
        return bm_seterr(err, errlen, BM_EIO, "aead seal: the random generator failed");
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int outl = 0;
    int ok = ctx != NULL &&
             EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) == 1 &&
             EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, BM_AEAD_NONCE_BYTES, NULL) == 1 &&
             EVP_EncryptInit_ex(ctx, NULL, NULL, key, nonce) == 1 &&
             add_aad(ctx, 1, aad, aadlen) && update(ctx, 1, plaintext, len, ct) &&
             EVP_EncryptFinal_ex(ctx, ct + len, &outl) == 1 && outl == 0 &&
             EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, BM_AEAD_TAG_BYTES, tag) == 1;
    EVP_CIPHER_CTX_free(ctx); /* also cleanses the expanded key schedule */
    if (!ok) {
        OPENSSL_cleanse(out, len + BM_AEAD_OVERHEAD);
        return bm_seterr(err, errlen, BM_EUNSUPPORTED, "aead seal: OpenSSL AES-256-GCM failed");
    }
    return BM_OK;
}

int bm_aead_open(const uint8_t key[BM_AEAD_KEY_BYTES], const uint8_t *aad, size_t aadlen,
                 const uint8_t *in, size_t inlen, uint8_t *out, char *err, size_t errlen)
{
    if (key == NULL || in == NULL || (aadlen > 0 && aad == NULL))
        return bm_seterr(err, errlen, BM_EINVAL, "aead open: missing argument");
    if (inlen < BM_AEAD_OVERHEAD)
        return bm_seterr(err, errlen, BM_EPROTO,
                         "aead open: %zu bytes is shorter than nonce and tag", inlen);
    size_t len = inlen - BM_AEAD_OVERHEAD;
    if (len > BM_AEAD_MAX_BYTES || aadlen > BM_AEAD_MAX_BYTES)
        return bm_seterr(err, errlen, BM_ERANGE, "aead open: %zu bytes is over the limit", len);
    if (len > 0 && out == NULL)
        return bm_seterr(err, errlen, BM_EINVAL, "aead open: missing output buffer");
    const uint8_t *nonce = in, *ct = in + BM_AEAD_NONCE_BYTES, *tag = ct + len;
    /* EVP wants a writable tag buffer; copy the 16 bytes. */
    uint8_t tagbuf[BM_AEAD_TAG_BYTES];
    memcpy(tagbuf, tag, sizeof tagbuf);
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int outl = 0;
    int setup = ctx != NULL &&
                EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) == 1 &&
                EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, BM_AEAD_NONCE_BYTES, NULL) == 1 &&
                EVP_DecryptInit_ex(ctx, NULL, NULL, key, nonce) == 1 &&
                add_aad(ctx, 0, aad, aadlen) && update(ctx, 0, ct, len, out) &&
                EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, BM_AEAD_TAG_BYTES, tagbuf) == 1;
    /* The tag check itself: constant time inside OpenSSL. */
    int verified = setup && EVP_DecryptFinal_ex(ctx, out != NULL ? out + len : tagbuf, &outl) == 1;
    EVP_CIPHER_CTX_free(ctx);
    if (!verified) {
        if (out != NULL)
            OPENSSL_cleanse(out, len);
        if (!setup)
            return bm_seterr(err, errlen, BM_EUNSUPPORTED,
                             "aead open: OpenSSL AES-256-GCM failed");
        return bm_seterr(err, errlen, BM_ECHECKSUM,
                         "aead open: authentication failed (wrong key, wrong context or "
                         "altered bytes)");
    }
    return BM_OK;
}
