/* Result minimisation: what an agency's policy lets it see of a result
 * (docs/security.md "Result minimisation"). A pure function of the
 * result and the agency's rules, unit-tested without Kafka or Redis.
 *
 * Thread: any; no shared state. */
#ifndef BM_COORD_MINIMISE_H
#define BM_COORD_MINIMISE_H

#include "biomatch.pb-c.h"
#include "conf/policy.h"

/* Apply 'rules' to 'r' in place, after the merge: sets r->hit (a
 * candidate was kept); with detail hit_nohit drops every candidate, with
 * ids zeroes the scores (proto3 leaves them out), otherwise rounds them to
 * score_decimals when that is >= 0; without internal_fields clears
 * comparisons, gallery_version, each candidate's shard and the worker
 * timings (max_queue_us, max_scoring_us). The candidates stay owned by the
 * caller (only their fields and r->n_candidates change). */
void bm_minimise_result(Biomatch__V1__MatchResult *r, const struct bm_policy_results *rules);

#endif /* BM_COORD_MINIMISE_H */
