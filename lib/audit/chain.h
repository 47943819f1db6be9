/* The audit chain of one writer: seals AuditRecords so that each carries
 * its seq, the previous record's hash and its own hash (docs/wire.md
 * "Audit records"):
 *
 *   hash = HMAC-SHA-256(key, record encoded with 'hash' empty)
 *
 * with the record's key_id naming the key, or SHA-256 of the same bytes
 * when no key is configured (key_id empty: integrity against accidents
 * only, since anyone can recompute it). prev_hash is inside the encoding,
 * so each hash covers the whole chain before it.
 *
 * A chain continues across restarts: bm_audit_chain_resume() sets the head
 * recovered from the audit topic, so the next record links to it.
 *
 * Thread: one caller at a time per chain (the coordinator's writer holds a
 * mutex); bm_audit_mac and bm_audit_subject_hash are reentrant. */
#ifndef BM_AUDIT_CHAIN_H
#define BM_AUDIT_CHAIN_H

#include <stddef.h>
#include <stdint.h>

#include "biomatch.pb-c.h"
#include "common/err.h"

#define BM_AUDIT_HASH_BYTES 32
#define BM_AUDIT_KEY_BYTES 32
#define BM_AUDIT_WRITER_MAX 128
/* "h:" + 32 hex digits of a keyed subject id hash, and its NUL. */
#define BM_AUDIT_SUBJECT_HASH_LEN 35

struct bm_audit_chain;

/* A chain for 'writer' (1..BM_AUDIT_WRITER_MAX bytes, copied), with the
 * audit key 'key' (BM_AUDIT_KEY_BYTES, copied; wiped on free) named
 * 'key_id' (copied), or unkeyed with key and key_id NULL. Starts before
 * seq 1. Returns the chain (caller frees with bm_audit_chain_free) or NULL
 * with BM_EINVAL / BM_ENOMEM in err. */
struct bm_audit_chain *bm_audit_chain_new(const char *writer, const char *key_id,
                                          const uint8_t *key, char *err, size_t errlen);

/* Accepts NULL. */
void bm_audit_chain_free(struct bm_audit_chain *c);

/* Continue after the record 'seq' whose hash is 'hash' (recovered from the
 * audit topic). seq 0 restarts before seq 1 (hash ignored). */
void bm_audit_chain_resume(struct bm_audit_chain *c, uint64_t seq,
                           const uint8_t hash[BM_AUDIT_HASH_BYTES]);

/* Seal 'rec' (kind and content filled by the caller): sets writer, seq,
 * prev_hash, key_id, hash and, when 0, time_unix_ms, then encodes it.
 * 'rec' is borrowed; on return its writer/key_id point into 'c' and its
 * hash fields are cleared (the encoding has them). On BM_OK *out is a
 * malloc'd encoding of *len bytes (caller frees) and the chain advanced.
 * On failure (BM_ENOMEM) the chain is unchanged and *out is NULL. */
int bm_audit_chain_seal(struct bm_audit_chain *c, Biomatch__V1__AuditRecord *rec,
                        uint8_t **out, size_t *len, char *err, size_t errlen);

/* The head: the last sealed (or resumed) seq (0 before the first) and its
 * hash (zeros before the first). Saved and passed back to
 * bm_audit_chain_resume, it undoes a seal whose record was never sent. */
void bm_audit_chain_head(const struct bm_audit_chain *c, uint64_t *seq,
                         uint8_t hash[BM_AUDIT_HASH_BYTES]);

/* The last sealed (or resumed) seq; 0 before the first. */
uint64_t bm_audit_chain_seq(const struct bm_audit_chain *c);

/* The writer id (borrowed from c). */
const char *bm_audit_chain_writer(const struct bm_audit_chain *c);

/* 1 when the chain has a key. */
int bm_audit_chain_keyed(const struct bm_audit_chain *c);

/* The hash of 'rec' as the chain defines it (its hash field ignored):
 * HMAC-SHA-256 under 'key' (BM_AUDIT_KEY_BYTES) or, with key NULL,
 * SHA-256. BM_OK or BM_ENOMEM. */
int bm_audit_mac(const Biomatch__V1__AuditRecord *rec, const uint8_t *key,
                 uint8_t out[BM_AUDIT_HASH_BYTES]);

/* The keyed hash that stands for a subject id when ids must not be
 * logged: "h:" + hex of the first 16 bytes of
 * HMAC-SHA-256(key, "biomatch-audit-subject\0" gallery "\0" id), written
 * to 'out' (BM_AUDIT_SUBJECT_HASH_LEN). Someone holding the key can check
 * whether a given id was returned; without it the value says nothing.
 * With key NULL the id cannot be hidden: BM_EINVAL. BM_OK otherwise. */
int bm_audit_subject_hash(const uint8_t *key, const char *gallery, const char *id,
                          char out[BM_AUDIT_SUBJECT_HASH_LEN]);

#endif /* BM_AUDIT_CHAIN_H */
