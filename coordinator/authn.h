/* Authentication of client records for the roles that consume them
 * (intake: jobs; gallery: enroll), docs/security.md and docs/wire.md
 * section 13.
 *
 * Invariant: a role runs with a policy, or in development mode only when
 * the operator asked for it (security.dev_mode), and then says so loudly
 * (an ERROR log line per role and the biomatch_security_dev_mode gauge).
 * A record is authenticated (agency known, signature over the record and
 * its timestamp, timestamp inside the window, (agency, id) not used by
 * another record within the window) before anything else is looked up or
 * written for it.
 *
 * Thread: the role's own thread. */
#ifndef BM_COORD_AUTHN_H
#define BM_COORD_AUTHN_H

#include <stddef.h>
#include <stdint.h>

#include "biomatch.pb-c.h"
#include "bus/bus.h"
#include "conf/policy.h"

struct bm_coord_ctx;
struct bm_redis;

/* The policy of ctx's configuration for role 'role' ("intake", ...). On
 * BM_OK *out is the loaded policy (caller frees with bm_policy_destroy) or
 * NULL in development mode. Without security.policy_file and without
 * security.dev_mode the role must not run: BM_EINVAL with the reason in err;
 * a policy file that does not load is its error. */
int bm_authn_policy(struct bm_coord_ctx *ctx, const char *role, struct bm_policy **out,
                    char *err, size_t errlen);

/* Authenticate the consumed record 'm' whose decoded message of type
 * 'type' names 'agency' and 'id' (job_id / request_id), then claim
 * (kind, agency, id) in the seen-set (store/seen.h) for twice the window.
 * 'policy' NULL (development mode) accepts everything. More than one
 * signature header is BAD_SIGNATURE (which one counts would otherwise
 * depend on the reader); a header with an empty value is a bad signature,
 * not "unsigned".
 * Returns BM_OK with *code NONE or UNAUTHORIZED, BAD_SIGNATURE, REPLAYED
 * (the reason in 'why'), or a transient Redis error (nothing decided: the
 * caller retries the record later). */
int bm_authn_check(const struct bm_policy *policy, int64_t window_ms, struct bm_redis *redis,
                   const struct bm_bus_msg *m, const ProtobufCMessageDescriptor *type,
                   const char *kind, const char *agency, const char *id,
                   Biomatch__V1__ErrorCode *code, char *why, size_t whylen);

/* Count one refused record in biomatch_auth_failures_total{role,reason}
 * (reason: the error code's name, lower case without the prefix). */
void bm_authn_count(struct bm_coord_ctx *ctx, const char *role, Biomatch__V1__ErrorCode code);

#endif /* BM_COORD_AUTHN_H */
