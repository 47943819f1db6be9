/* Authorisation policy and Ed25519 record signatures (docs/architecture.md §6,
 * docs/wire.md "Signatures", docs/operations.md "Policy and signing keys",
 * docs/security.md).
 *
 * A policy is a YAML file (config key security.policy_file) that lists the
 * agencies allowed to use the cluster; per agency, the galleries it may use
 * with the operations allowed on each (identify, verify, enroll, delete,
 * admin),
 * its Ed25519 public keys by key id, and whether its records must be
 * signed (the default). Agencies not listed may do nothing.
 *
 * A signature binds one record: the message type, the topic it was
 * produced to, its key and value bytes exactly as produced (never a
 * re-encoding: protobuf serialisation is not canonical across
 * implementations), the agency and the job or request id the message
 * names, and the signer's timestamp. It travels in the record header
 * "biomatch-signature" as "<key id>:<unix ms>:<base64 of the 64-byte
 * signature>".
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
#include <stdint.h>

/* The Kafka header carrying a record's signature. */
#define BM_POLICY_SIG_HEADER "biomatch-signature"
/* Longest header value: 64-byte key id, ':', a timestamp of at most 20
 * characters, ':', 88 base64 characters, NUL. */
#define BM_POLICY_SIG_MAX 176
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
    /* Update or delete subjects other agencies own (docs/security.md). */
    BM_POLICY_OP_ADMIN = 16,
};

/* Outcome of a check; the roles map it to ERROR_CODE_NONE,
 * ERROR_CODE_UNAUTHORIZED, ERROR_CODE_BAD_SIGNATURE and ERROR_CODE_REPLAYED. */
enum bm_policy_verdict {
    BM_POLICY_ALLOW = 0,
    BM_POLICY_UNAUTHORIZED = 1,
    BM_POLICY_BAD_SIGNATURE = 2,
    BM_POLICY_STALE = 3,       /* signed timestamp outside the replay window */
};

/* What a record signature covers (docs/wire.md section 13). Every pointer
 * is borrowed for the call; a NULL string counts as "". */
struct bm_sig_record {
    const char *type;          /* full message name, "biomatch.v1.MatchJob" */
    const char *topic;         /* topic produced to, prefix included */
    const void *key;           /* record key bytes (NULL when keylen is 0) */
    size_t keylen;
    const void *value;         /* record value bytes exactly as produced */
    size_t len;
    const char *agency;        /* the message's agency */
    const char *id;            /* the message's job_id or request_id */
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

/* Authenticate one record: is 'r' signed by a key of the agency it names,
 * at a time within 'window_ms' of 'now_ms' (either side: clocks are not
 * synchronised)? 'sig'/'siglen' are the biomatch-signature header value
 * (NULL when the record has none). Checks, in this order:
 *   1. the agency is listed, else BM_POLICY_UNAUTHORIZED;
 *   2. if the agency requires signatures or the record carries one: the
 *      header parses, names one of the agency's key ids and the Ed25519
 *      signature over the record and the timestamp verifies, else
 *      BM_POLICY_BAD_SIGNATURE;
 *   3. the signed timestamp is in [now - window, now + window], else
 *      BM_POLICY_STALE.
 * An unsigned record of an agency with require_signature: false passes
 * with *ts_ms = 0. On ALLOW *ts_ms is the signed timestamp; otherwise a
 * human-readable reason (no key material, strings clipped) goes to 'why'.
 * 'p' must not be NULL. Thread: any. */
enum bm_policy_verdict bm_policy_authenticate(const struct bm_policy *p,
                                              const struct bm_sig_record *r, const char *sig,
                                              size_t siglen, int64_t now_ms, int64_t window_ms,
                                              int64_t *ts_ms, char *why, size_t whylen);

/* May 'agency' (already authenticated) perform 'op' on 'gallery'? The
 * gallery or "*" must be granted with the operation, else
 * BM_POLICY_UNAUTHORIZED with the reason in 'why'. 'p' must not be NULL.
 * Thread: any. */
enum bm_policy_verdict bm_policy_permit(const struct bm_policy *p, const char *agency,
                                        const char *gallery, enum bm_policy_op op, char *why,
                                        size_t whylen);

/* How much of a result an agency receives (the `results` map of its
 * policy entry; docs/security.md "Result minimisation"). */
enum bm_policy_detail {
    BM_POLICY_DETAIL_IDS_SCORES = 0, /* subject ids and scores (the default) */
    BM_POLICY_DETAIL_IDS = 1,        /* subject ids and ranks, no scores */
    BM_POLICY_DETAIL_HIT_NOHIT = 2,  /* only whether there was a candidate */
};

struct bm_policy_results {
    uint32_t max_top_k;        /* 0: only coordinator.max_top_k applies */
    bool has_min_threshold;    /* every job must carry threshold >= min_threshold */
    float min_threshold;
    enum bm_policy_detail detail;
    int score_decimals;        /* scores rounded to this many decimals; -1: not rounded */
    bool internal_fields;      /* comparisons, shard, gallery version, worker timings */
};

/* The result rules of 'agency' into 'out'. Without a policy (development
 * mode) or for an agency not listed: nothing is limited and internal
 * fields are kept. A listed agency without a `results` map gets the
 * secure defaults: no limits, ids and scores, no rounding, internal fields
 * left out. Thread: any. */
void bm_policy_results(const struct bm_policy *p, const char *agency,
                       struct bm_policy_results *out);

/* "identify", "verify", "enroll", "delete", "admin" ("?" otherwise). */
const char *bm_policy_op_name(enum bm_policy_op op);

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

/* Sign record 'r' at time 'ts_ms' (unix ms, >= 0) and write the
 * biomatch-signature header value "<key id>:<ts_ms>:<base64 signature>"
 * into 'out' (at least BM_POLICY_SIG_MAX bytes). Returns BM_OK, BM_ERANGE
 * ('out' too small), BM_ENOMEM or BM_EINVAL (OpenSSL refused), with the
 * reason in err and 'out' undefined. Thread: any. */
int bm_signer_sign_record(const struct bm_signer *s, const struct bm_sig_record *r,
                          int64_t ts_ms, char *out, size_t outlen, char *err, size_t errlen);

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
