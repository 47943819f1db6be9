/* The at-rest keyring: the AES-256 keys a process may use for segment
 * blobs in Redis, each named by a key id.
 *
 * At most one key is *current*: new blobs are sealed under it. Any number
 * of *previous* keys only open blobs sealed before a rotation. A keyring
 * with no current key (only previous keys) opens old blobs and lets the
 * writer store new ones unencrypted, which is how encryption is turned off.
 *
 * Key files (docs/internals/crypto.md): exactly 32 raw bytes, or exactly
 * 64 hex digits optionally followed by one "\n" (what `openssl rand -hex
 * 32 > key` writes). Anything else is refused with BM_EPROTO, so a
 * truncated or pasted-with-spaces key can never become a weaker key.
 * Permissions: the file must be a regular file (symlinks to one, as in
 * Kubernetes secret volumes, are followed) and not writable by others
 * (BM_EINVAL otherwise); a world-readable file is accepted but recorded in
 * bm_keyring_warning(), because Kubernetes mounts secrets 0644 unless the
 * volume sets defaultMode. Group bits are not checked (defaultMode 0440
 * with an fsGroup is the recommended mount).
 *
 * Invariant: key bytes live only inside the keyring and are wiped with
 * OPENSSL_cleanse when it is freed (and in every temporary buffer that
 * held them); no function ever puts key bytes in an error message.
 *
 * Thread: building (new, add, from_conf) from one thread; a built keyring
 * is read-only and may be shared by any number of threads. */
#ifndef BM_KEYRING_H
#define BM_KEYRING_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "crypto/aead.h"

#define BM_KEYRING_ID_MAX 64 /* key ids: 1..64 of [A-Za-z0-9._-] */

struct bm_conf;
struct bm_keyring;

/* An empty keyring (caller frees with bm_keyring_free), or NULL when out
 * of memory. */
struct bm_keyring *bm_keyring_new(void);

/* Wipe every key and free. Accepts NULL. */
void bm_keyring_free(struct bm_keyring *kr);

/* Add key 'id' with the 32 bytes 'key' (copied). 'current' != 0 makes it
 * the key new blobs are sealed with. Returns BM_OK, BM_EINVAL (bad id),
 * BM_ECONFLICT (the id is already present, or a second current key) or
 * BM_ENOMEM; on failure the keyring is unchanged. */
int bm_keyring_add(struct bm_keyring *kr, const char *id, const uint8_t key[BM_AEAD_KEY_BYTES],
                   int current, char *err, size_t errlen);

/* Read the key file at 'path' (format and permission rules above) and add
 * it as bm_keyring_add does. Errors name the path and the key id, never
 * the bytes: BM_EIO (cannot open/read), BM_EINVAL (not a regular file,
 * writable by others), BM_EPROTO (bad length or not hex), or those of
 * bm_keyring_add. */
int bm_keyring_add_file(struct bm_keyring *kr, const char *id, const char *path, int current,
                        char *err, size_t errlen);

/* Parse key file contents 'data' ('len' bytes) into 'key'. BM_OK or
 * BM_EPROTO. Exposed for tests; bm_keyring_add_file uses it. */
int bm_keyring_parse_key(const uint8_t *data, size_t len, uint8_t key[BM_AEAD_KEY_BYTES],
                         char *err, size_t errlen);

/* Build the keyring a process's configuration asks for:
 * security.at_rest_key_file + security.at_rest_key_id as the current key,
 * and every security.at_rest_previous_keys entry ("id=path") as a previous
 * key. Returns NULL with *rc = BM_OK when nothing is configured (blobs are
 * neither sealed nor openable), the keyring (caller frees) with *rc =
 * BM_OK, or NULL with *rc = the error of the first key that failed. */
struct bm_keyring *bm_keyring_from_conf(const struct bm_conf *c, int *rc, char *err,
                                        size_t errlen);

/* Strict at-rest mode (docs/storage.md section 8.2): 1 when the keyring has
 * a current key and plaintext was not allowed, so every reader refuses
 * plaintext segments, plaintext gallery records and manifests without a
 * valid MAC. 0 for kr NULL. Thread: any (read-only after set-up). */
int bm_keyring_strict(const struct bm_keyring *kr);

/* Allow (1) or refuse (0, the default) plaintext next to a current key:
 * for migrating a gallery written without a key. bm_keyring_from_conf
 * sets it from security.at_rest_allow_plaintext. Call before sharing the
 * keyring between threads. */
void bm_keyring_set_allow_plaintext(struct bm_keyring *kr, int allow);

/* The current key's id, or NULL when there is none (also for kr NULL).
 * Borrowed from the keyring. */
const char *bm_keyring_current_id(const struct bm_keyring *kr);

/* The 32 bytes of key 'id', or NULL when the keyring (or kr NULL) lacks
 * it. Borrowed: valid until bm_keyring_free; never copy it elsewhere. */
const uint8_t *bm_keyring_find(const struct bm_keyring *kr, const char *id);

/* Number of keys held (0 for NULL). */
size_t bm_keyring_count(const struct bm_keyring *kr);

/* A human-readable note about key files accepted with loose permissions
 * (world-readable), for the caller to log at warn level once; NULL when
 * there is nothing to say. Borrowed from the keyring. */
const char *bm_keyring_warning(const struct bm_keyring *kr);

/* 1 when 'id' is a valid key id (1..64 of [A-Za-z0-9._-]). */
int bm_keyring_valid_id(const char *id);

#endif /* BM_KEYRING_H */
