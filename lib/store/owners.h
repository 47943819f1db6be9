/* Subject ownership: which agency enrolled each subject of a gallery
 * (docs/security.md "Subject ownership", docs/storage.md).
 *
 * One Redis hash per gallery, "bm:gallery:<name>:owners", field = subject
 * id, value = the owning agency. The gallery role reads it before it
 * accepts an update or delete and writes it when it accepts one. Every
 * request for one subject is decided by one thread in Kafka order (the
 * enroll topic is keyed by subject id), so a read followed by a write
 * needs no transaction.
 *
 * Invariant: a subject's owner is the agency whose upsert first created
 * it; an upsert never changes an existing owner (not even an admin's), a
 * delete removes it.
 *
 * Thread: as for the connection. */
#ifndef BM_OWNERS_H
#define BM_OWNERS_H

#include <stddef.h>

#include "common/err.h"

struct bm_redis;

/* Longest owner: an agency name (MatchJob/EnrollRequest limit) and a NUL. */
#define BM_OWNER_MAX 129

/* The owner of 'subject' in 'gallery' into 'out' (BM_OWNER_MAX bytes).
 * Returns BM_OK, BM_ENOTFOUND (no owner recorded; out = ""), BM_EINVAL (bad
 * gallery name) or a Redis error (transient) with the reason in err. */
int bm_owner_get(struct bm_redis *c, const char *gallery, const char *subject, char *out,
                 size_t outlen, char *err, size_t errlen);

/* Record 'agency' as the owner of 'subject' unless it has one already.
 * Returns BM_OK or an error as above. */
int bm_owner_claim(struct bm_redis *c, const char *gallery, const char *subject,
                   const char *agency, char *err, size_t errlen);

/* Forget the owner of 'subject' (after an accepted delete). */
int bm_owner_forget(struct bm_redis *c, const char *gallery, const char *subject, char *err,
                    size_t errlen);

#endif /* BM_OWNERS_H */
