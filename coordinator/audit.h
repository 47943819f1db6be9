/* The coordinator's audit writer: one AuditRecord per job outcome and per
 * gallery change, sealed into a keyed chain (lib/audit/chain.h) and
 * produced to the audit topic, keyed by the writer id.
 *
 * One chain per writer: a writer is one role of one coordinator,
 * "<node id>/<role>", so coordinators running side by side write
 * independent chains and node ids must be unique per coordinator (two live
 * processes with one node id fork a chain, which `biomatch audit verify`
 * reports). All records of a writer share its key and so one partition, in
 * seq order. On open the writer reads the audit topic for the last record
 * of its id and continues that chain (a restart never starts a new one);
 * it writes a CHECKPOINT record after audit.checkpoint_records records and
 * at least every audit.checkpoint_interval_ms, and a final checkpoint when
 * it is closed, so a verifier can tell a truncated chain from a live one.
 *
 * The writer has its own idempotent producer and a thread that serves its
 * delivery reports and writes the timed checkpoints, so a role's own
 * offsets never wait on audit delivery; a failed delivery is logged and
 * counted (biomatch_audit_failed_total) and shows up in a verification as
 * a gap. Thread: bm_audit_emit from any thread (a mutex orders seal and
 * send); open and close from the role's thread. */
#ifndef BM_COORD_AUDIT_H
#define BM_COORD_AUDIT_H

#include <stddef.h>

#include "biomatch.pb-c.h"
#include "bus/bus.h"
#include "common/err.h"

struct bm_coord_ctx;
struct bm_audit;

/* Open the writer of role 'role' ("intake", "aggregate", "gallery") under
 * ctx's configuration: load the audit key (security.audit_key_file; none:
 * an unkeyed chain and a warning), create the producer, recover the chain
 * head from the audit topic and start the checkpoint thread. Returns the
 * writer (the caller closes it with bm_audit_close) or NULL with the reason
 * in err (bad key file, Kafka unreachable or the head unreadable within
 * the timeout); nothing to release then. */
struct bm_audit *bm_audit_open(const struct bm_coord_ctx *ctx, const char *role, char *err,
                               size_t errlen);

/* Write the final checkpoint, wait (bounded) for every record's delivery,
 * stop the thread and free. Accepts NULL. */
void bm_audit_close(struct bm_audit *a);

/* Seal 'rec' (kind and content filled by the caller; borrowed) into the
 * chain and produce it. When rec->signer_key_id is empty and 'src' (the
 * request record, may be NULL) carries a signature header, the key id it
 * names is recorded. Unless audit.log_subject_ids, every rec->subjects
 * entry is replaced by its keyed hash in the record (rec's array itself is
 * left as it was). Returns BM_OK (delivery then happens in the
 * background) or the error, which is also logged and counted. */
int bm_audit_emit(struct bm_audit *a, Biomatch__V1__AuditRecord *rec,
                  const struct bm_bus_msg *src);

/* The key id that the biomatch-signature header of 'src' (may be NULL)
 * names ("<key id>:..."), into 'out' (outlen >= 65); "" when there is no
 * header or it does not start with a key id. The signature itself is not
 * checked here: this is what the request claimed, for the audit. */
void bm_audit_signer_key_id(const struct bm_bus_msg *src, char *out, size_t outlen);

#endif /* BM_COORD_AUDIT_H */
