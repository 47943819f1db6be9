/* Result minimisation; see minimise.h. Scores are the only graded
 * signal a result carries, so coarser detail is what stops an agency from
 * hill-climbing a template towards a gallery subject; internal fields
 * (gallery size through comparisons, shard layout, versions, timings)
 * help enumerate a gallery and are nobody else's business. */
#include "minimise.h"

#include <math.h>

void bm_minimise_result(Biomatch__V1__MatchResult *r, const struct bm_policy_results *rules)
{
    r->hit = r->n_candidates > 0;
    if (rules->detail == BM_POLICY_DETAIL_HIT_NOHIT)
        r->n_candidates = 0;
    double scale = rules->score_decimals >= 0 ? pow(10.0, rules->score_decimals) : 0;
    for (size_t i = 0; i < r->n_candidates; i++) {
        Biomatch__V1__Candidate *c = r->candidates[i];
        if (rules->detail == BM_POLICY_DETAIL_IDS)
            c->score = 0.0f;
        else if (scale > 0)
            c->score = (float)(round((double)c->score * scale) / scale);
        if (!rules->internal_fields)
            c->shard = 0;
    }
    if (!rules->internal_fields) {
        r->comparisons = 0;
        r->gallery_version = 0;
        if (r->timings != NULL) {
            r->timings->max_queue_us = 0;
            r->timings->max_scoring_us = 0;
        }
    }
}
