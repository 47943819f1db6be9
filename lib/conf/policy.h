/* Authorisation policy and Ed25519 record signatures (docs/architecture.md §6,
 * docs/wire.md "Signatures", docs/operations.md "Policy and signing keys").
 *
 * A policy is a YAML file (config key security.policy_file) that lists the
 * agencies allowed to use the cluster; per agency, the galleries it may use
 * with the operations allowed on each (identify, verify, enroll, delete),
 * its Ed25519 public keys by key id, and whether its records must be
 * signed. Agencies not listed may do nothing. Without a policy file every
 * agency may do everything (the roles log a warning once).
 *
 * A signature covers the exact bytes of a Kafka record value as they were
 * produced (never a re-encoding: protobuf serialisation is not canonical
 * across implementations) and travels in the record header
 * "biomatch-signature" as "<key id>:<base64 of the 64-byte signature>".
 *
 * Invariant: a struct bm_policy returned by a load function is complete
 * and valid (every key parsed into an OpenSSL key, every name checked);
 * it is read-only afterwards.
 *
 * Thread: loading and destroying from one thread; a loaded policy (and a
 * loaded signer) may be used by any number of threads at once. */
#ifndef BM_POLICY_H
#define BM_POLICY_H

#include <stdbool.h>
#include <stddef.h>

/* The Kafka header carrying a record's signature. */
#define BM_POLICY_SIG_HEADER "biomatch-signature"
/* Longest header value: 64-byte key id, ':', 88 base64 characters, NUL. */
#define BM_POLICY_SIG_MAX 160
/* Key ids are 1..64 of [A-Za-z0-9._-]. */
#define BM_POLICY_KEY_ID_MAX 64
/* Base64 (with padding) of a raw 32-byte Ed25519 public key, plus NUL. */
#define BM_POLICY_PUB_B64_LEN 45

/* Operations a policy grants per gallery (bits). */
enum bm_policy_op {
    BM_POLICY_OP_IDENTIFY = 1,
    BM_POLICY_OP_VERIFY = 2,
    BM_POLICY_OP_ENROLL = 4,
    BM_POLICY_OP_DELETE = 8,
};

/* Outcome of a check; the roles map it to ERROR_CODE_NONE,
 * ERROR_CODE_UNAUTHORIZED and ERROR_CODE_BAD_SIGNATURE. */
enum bm_policy_verdict {
    BM_POLICY_ALLOW = 0,
    BM_POLICY_UNAUTHORIZED = 1,
    BM_POLICY_BAD_SIGNATURE = 2,
};

struct bm_policy;

/* Parse a policy from 'len' bytes of YAML ('name' labels messages,
 * "<string>" when NULL). Strict like the configuration: unknown keys,
 * duplicate keys, bad names and bad key material are errors naming the
 * line, e.g. "policy.yaml:7: unknown key 'agencies.a.galeries'". On success
 * returns a policy the caller frees with bm_policy_destroy; on failure NULL
 * with the reason in err. The text is only read during the call. */
struct bm_policy *bm_policy_parse(const char *yaml, size_t len, const char *name, char *err,
                                  size_t errlen);

/* The same from the file at 'path' (at most 1 MiB). */
struct bm_policy *bm_policy_load(const char *path, char *err, size_t errlen);

/* Free 'p' and its keys. Accepts NULL. */
void bm_policy_destroy(struct bm_policy *p);

/* Number of agencies in 'p' (for the start-up log line); 0 for NULL. */
size_t bm_policy_agency_count(const struct bm_policy *p);

/* Decide one record: may 'agency' perform 'op' on 'gallery', and is the
 * record signed as the agency requires? 'value'/'len' are the record value
 * bytes exactly as received; 'sig'/'siglen' the biomatch-signature header
 * value (NULL when the record has none). Checks, in this order:
 *   1. p == NULL: BM_POLICY_ALLOW (no policy configured);
 *   2. the agency is listed, else BM_POLICY_UNAUTHORIZED;
 *   3. if the agency requires signatures or the record carries one: the
 *      header parses, names one of the agency's key ids and the Ed25519
 *      signature over the value verifies, else BM_POLICY_BAD_SIGNATURE
 *      (authenticity before authorisation: an unsigned record must not
 *      learn what the agency it claims to be may do);
 *   4. the gallery (or "*") is granted with 'op', else BM_POLICY_UNAUTHORIZED.
 * On anything but ALLOW a human-readable reason (no key material, ids
 * truncated) goes to 'why'. Thread: any. */
enum bm_policy_verdict bm_policy_check(const struct bm_policy *p, const char *agency,
                                       const char *gallery, enum bm_policy_op op,
                                       const void *value, size_t len, const char *sig,
                                       size_t siglen, char *why, size_t whylen);

/* "identify", "verify", "enroll", "delete" ("?" otherwise). */
const char *bm_policy_op_name(enum bm_policy_op op);

/* True for exactly one caller per process: the roles use it to log the
 * "no policy: every agency may do everything" warning once. Thread: any. */
bool bm_policy_warn_once(void);

/* ------------------------------------------------------------- signing */

struct bm_signer;

/* A signer from an Ed25519 private key in PEM ('pem', 'len' bytes; PKCS#8
 * as written by `openssl genpkey -algorithm ed25519` or `biomatch keygen`)
 * and the key id the policy knows its public key by. Returns the signer
 * (free with bm_signer_destroy) or NULL with the reason in err. */
struct bm_signer *bm_signer_from_pem(const char *pem, size_t len, const char *key_id, char *err,
                                     size_t errlen);

/* The same from a PEM file. */
struct bm_signer *bm_signer_load(const char *path, const char *key_id, char *err,
                                 size_t errlen);

/* Sign 'len' bytes of 'value' and write the biomatch-signature header value
 * "<key id>:<base64 signature>" into 'out' (at least BM_POLICY_SIG_MAX
 * bytes). Returns BM_OK, BM_ERANGE ('out' too small) or BM_EINVAL (OpenSSL
 * refused), with the reason in err and 'out' undefined. Thread: any. */
int bm_signer_sign(const struct bm_signer *s, const void *value, size_t len, char *out,
                   size_t outlen, char *err, size_t errlen);

/* The base64 of the signer's raw 32-byte public key (the form the policy
 * file takes) into 'out' (at least BM_POLICY_PUB_B64_LEN bytes). */
int bm_signer_public_b64(const struct bm_signer *s, char *out, size_t outlen);

/* Free 's'. Accepts NULL. */
void bm_signer_destroy(struct bm_signer *s);

/* Make a fresh Ed25519 key. On BM_OK *pem is a malloc'd NUL-terminated
 * PKCS#8 PEM private key (caller frees with free()) and 'pub' holds the
 * base64 raw public key (at least BM_POLICY_PUB_B64_LEN bytes). On failure
 * *pem is NULL and err says why. */
int bm_signer_keygen(char **pem, char *pub, size_t publen, char *err, size_t errlen);

#endif /* BM_POLICY_H */
