/* Attempts of a unit of work that may crash its process (a worker's task,
 * an aggregator's job), counted durably in Redis so a poison record is
 * tried a bounded number of times whichever process gets it next.
 *
 * Protocol: before the work starts, bm_attempts_begin INCRs the caller's
 * keys (each with a TTL) in one pipeline and reports the counts; once the
 * work returned, bm_attempts_done queues a DEL of each key and
 * bm_attempts_flush reads the replies. A key still there when the work
 * comes back therefore counts an attempt that never returned: a crash, a
 * hang a watchdog ended, or a kill of the process mid-work. The key names
 * are the caller's (store/keys.h: bm_key_attempts, bm_key_job_attempts).
 *
 * Redis being unreachable never stops the work: the counts are then
 * unknown (0) and the next try to connect waits a second.
 *
 * Thread: one thread per counter (it owns its connection). */
#ifndef BM_STORE_ATTEMPTS_H
#define BM_STORE_ATTEMPTS_H

#include <stddef.h>

#include "conf/conf.h"

/* Long enough to outlive any deadline (at most 300 s) and the restarts it
 * takes to reach any limit. */
#define BM_ATTEMPTS_TTL_S 3600

struct bm_attempts;

/* A counter that connects to the Redis of 'conf' (borrowed; must outlive
 * the counter) when first used. 'what' names the work in log lines
 * ("task", "job"; a static string). NULL on ENOMEM. */
struct bm_attempts *bm_attempts_new(const struct bm_conf *conf, const char *what);

/* Close the connection and free. NULL is fine. */
void bm_attempts_free(struct bm_attempts *a);

/* Read the count of each non-empty keys[i] without counting: counts[i] is
 * the number of attempts that never returned (0 when none, or unknown:
 * Redis unreachable or the key empty). Lets a caller decide which work to
 * start before charging it. Returns BM_OK, or BM_EIO when Redis could not
 * be asked (every count 0). */
int bm_attempts_peek(struct bm_attempts *a, const char *const *keys, long long *counts,
                     size_t n);

/* Count one more attempt of each non-empty keys[i]: counts[i] is the count
 * including this attempt, or 0 when unknown (Redis unreachable or the key
 * empty). The DELs queued before are sent and read first, so the work they
 * clear is not charged if this attempt crashes. Returns BM_OK, or BM_EIO
 * when Redis could not be asked (every count 0). */
int bm_attempts_begin(struct bm_attempts *a, const char *const *keys, long long *counts,
                      size_t n);

/* Queue a DEL of 'key' (the work it counts returned). Returns 1 when
 * queued, 0 when there is no connection (the key expires on its own). */
int bm_attempts_done(struct bm_attempts *a, const char *key);

/* Read the replies of the queued DELs. */
void bm_attempts_flush(struct bm_attempts *a);

#endif /* BM_STORE_ATTEMPTS_H */
