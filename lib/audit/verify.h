/* Verifying audit chains (docs/wire.md "Audit records"). The records of a
 * topic are fed in any order with their position; finish() groups them by
 * writer, orders each chain by seq and reports every finding:
 *
 *   MODIFIED   the hash does not verify under the record's key: the record
 *              was changed after sealing, or forged without the key
 *   INSERTED   a record that is not part of its chain: undecodable, a second
 *              record with a seq already seen, or one whose prev_hash does
 *              not link to the record before it
 *   DELETED    a gap in the seqs of a chain
 *   TRUNCATED  a chain that does not start at seq 1 (when reading from the
 *              beginning), or that ends neither in a final checkpoint nor
 *              within two checkpoint intervals of 'now' (a live writer
 *              checkpoints at least that often)
 *   UNKEYED    the record's key is not available (unknown key id), or the
 *              record is unkeyed while the verifier was given keys, so its
 *              hash proves nothing
 *
 * Thread: one caller per verifier. */
#ifndef BM_AUDIT_VERIFY_H
#define BM_AUDIT_VERIFY_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

struct bm_keyring;

enum bm_audit_finding_kind {
    BM_AUDIT_MODIFIED = 1,
    BM_AUDIT_INSERTED,
    BM_AUDIT_DELETED,
    BM_AUDIT_TRUNCATED,
    BM_AUDIT_UNKEYED,
};

/* One finding; every pointer is valid during the callback only. The
 * position (partition, offset) is the record where the problem shows:
 * for DELETED the first record after the gap, for TRUNCATED at the end
 * the last record of the chain. */
struct bm_audit_finding {
    enum bm_audit_finding_kind kind;
    const char *writer;   /* "" when the record did not decode */
    uint64_t seq;
    int32_t partition;
    int64_t offset;
    const char *detail;   /* one sentence */
};

typedef void (*bm_audit_finding_fn)(const struct bm_audit_finding *f, void *opaque);

struct bm_audit_verify_opts {
    const struct bm_keyring *keys; /* audit keys by id; NULL: only unkeyed chains verify */
    int from_beginning;            /* 1: the records start at each partition's first */
    int64_t now_ms;                /* wall clock of the check */
    uint32_t default_interval_ms;  /* T for a chain without a checkpoint yet */
};

/* Totals of a finished verification. */
struct bm_audit_verify_stats {
    uint64_t records;
    uint64_t writers;
    uint64_t checkpoints;
    uint64_t findings;
};

struct bm_audit_verifier;

/* A verifier with options 'o' (copied; o->keys borrowed until free). NULL
 * on ENOMEM (reason in err). Caller frees with bm_audit_verifier_free. */
struct bm_audit_verifier *bm_audit_verifier_new(const struct bm_audit_verify_opts *o,
                                                char *err, size_t errlen);

/* Accepts NULL. */
void bm_audit_verifier_free(struct bm_audit_verifier *v);

/* Feed the record at (partition, offset): 'value' (borrowed for the call)
 * is decoded with a bound of 'len' bytes. A record that does not decode is
 * kept as a finding. BM_OK or BM_ENOMEM. */
int bm_audit_verifier_add(struct bm_audit_verifier *v, int32_t partition, int64_t offset,
                          const void *value, size_t len);

/* Check every chain and call 'fn' once per finding, in order of position
 * (partition, offset). Returns the number of findings; 'st' (may be NULL)
 * gets the totals. BM_ENOMEM (negative) when the check could not run. */
int bm_audit_verifier_finish(struct bm_audit_verifier *v, bm_audit_finding_fn fn,
                             void *opaque, struct bm_audit_verify_stats *st);

const char *bm_audit_finding_name(enum bm_audit_finding_kind k);

#endif /* BM_AUDIT_VERIFY_H */
