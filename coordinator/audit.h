/* Hash-chained audit records (docs/architecture.md §6): one AuditRecord per
 * job and per gallery change, produced to the audit topic keyed by agency.
 *
 * Records of one writer form a chain: seq counts 1, 2, 3, ... and
 *   hash = SHA-256(prev_hash || the record encoded with 'hash' empty)
 * where prev_hash is the previous record's hash (empty for seq 1). An
 * auditor sorts one writer's records by seq (they may sit on different
 * partitions) and recomputes the hashes; a missing, altered or reordered
 * record breaks the chain. A writer id names one process incarnation (the
 * coordinator uses "<node id>/<role>/<start ms>"), so a restarted process
 * starts a new chain instead of forking an old one.
 *
 * Thread: a struct bm_audit may be shared; bm_audit_seal takes its mutex,
 * so seq order equals the order of the seal calls. Callers that care about
 * partition order produce the record before they seal the next one. */
#ifndef BM_COORD_AUDIT_H
#define BM_COORD_AUDIT_H

#include <stddef.h>
#include <stdint.h>

#include "biomatch.pb-c.h"
#include "common/err.h"

struct bm_audit;

/* A chain for 'writer' (copied, 1..128 bytes). NULL with the reason in err
 * on a bad writer or ENOMEM. The caller owns it (bm_audit_free). */
struct bm_audit *bm_audit_new(const char *writer, char *err, size_t errlen);

/* Accepts NULL. */
void bm_audit_free(struct bm_audit *a);

/* Chain 'rec' (filled by the caller: kind, agency, gallery, id, op, subject,
 * status, error_code, ...): sets writer, seq, prev_hash, hash and, when 0,
 * time_unix_ms, then encodes it. 'rec' is borrowed; on return its writer
 * points into 'a' and its hash fields are cleared (the encoding has them).
 * On BM_OK *out is a malloc'd encoding of *len bytes (caller frees). On
 * failure (BM_ENOMEM) the chain is unchanged and *out is NULL. */
int bm_audit_seal(struct bm_audit *a, Biomatch__V1__AuditRecord *rec, uint8_t **out,
                  size_t *len, char *err, size_t errlen);

/* Recompute the hash of a received record (its prev_hash as stored) into
 * 'hash'. BM_OK or BM_ENOMEM. For auditors and tests. */
int bm_audit_hash(const Biomatch__V1__AuditRecord *rec, uint8_t hash[32]);

/* Records sealed so far. */
uint64_t bm_audit_seq(const struct bm_audit *a);

#endif /* BM_COORD_AUDIT_H */
