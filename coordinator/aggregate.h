/* The aggregate role (coordinator/aggregate.c): consume `partials`, merge
 * each job's per-shard top-k lists and emit one MatchResult per job when
 * every shard answered or its deadline passed.
 * docs/internals/coordinator.md ("Aggregation") has the rules.
 *
 * Contract: the role contract of role.h. The committed partials offset of
 * a partition never passes the first message of a job whose result has not
 * been delivered, so a crash (even SIGKILL) replays every unfinished job
 * and still emits its result; a replay may emit a result twice, and
 * consumers deduplicate by job id (docs/wire.md).
 * Thread: runs on its own thread; shares only ctx. */
#ifndef BM_COORD_AGGREGATE_H
#define BM_COORD_AGGREGATE_H

#include "role.h"

/* Consumer group: "<prefix>coordinator-aggregate" (see intake.h). */
#define BM_AGGREGATE_GROUP_SUFFIX "coordinator-aggregate"

/* How long shard partials of a job wait for its opened marker before they
 * are dropped (intake produces the marker first, so this only bounds
 * memory after an intake failure or a foreign producer). */
#define BM_AGGREGATE_ORPHAN_MS 60000

int bm_role_aggregate_run(struct bm_coord_ctx *ctx);

#endif /* BM_COORD_AGGREGATE_H */
