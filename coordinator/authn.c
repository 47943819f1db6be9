/* Authentication of client records; see authn.h. */
#include "authn.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include "common/clock.h"
#include "conf/conf.h"
#include "obs/log.h"
#include "obs/metrics.h"
#include "role.h"
#include "store/seen.h"
#include "wire/headers.h"

int bm_authn_policy(struct bm_coord_ctx *ctx, const char *role, struct bm_policy **out,
                    char *err, size_t errlen)
{
    const struct bm_conf *c = ctx->conf;
    *out = NULL;
    if (c->security.policy_file != NULL) {
        *out = bm_policy_load(c->security.policy_file, err, errlen);
        if (*out == NULL)
            return BM_EINVAL;
        BM_LOGF(BM_LOG_INFO, "policy loaded", BM_LF_STR("role", role),
                BM_LF_STR("file", c->security.policy_file),
                BM_LF_INT("agencies", (long long)bm_policy_agency_count(*out)));
        return BM_OK;
    }
    if (!c->security.dev_mode)
        return bm_seterr(err, errlen, BM_EINVAL,
                         "%s: no security.policy_file: refusing to run without a policy "
                         "(set security.dev_mode: true for a development cluster)",
                         role);
    BM_LOGF(BM_LOG_ERROR,
            "DEVELOPMENT MODE: no policy, records are not authenticated and every agency may "
            "do everything; never run like this with real data",
            BM_LF_STR("role", role));
    if (ctx->metrics != NULL) {
        char merr[128];
        bm_gauge_set(bm_metrics_gauge(ctx->metrics, "biomatch_security_dev_mode",
                                      "1 when the coordinator runs without a policy "
                                      "(security.dev_mode)",
                                      NULL, merr, sizeof merr),
                     1);
    }
    return BM_OK;
}

int bm_authn_check(const struct bm_policy *policy, int64_t window_ms, struct bm_redis *redis,
                   const struct bm_bus_msg *m, const ProtobufCMessageDescriptor *type,
                   const char *kind, const char *agency, const char *id,
                   Biomatch__V1__ErrorCode *code, char *why, size_t whylen)
{
    *code = BIOMATCH__V1__ERROR_CODE__ERROR_CODE_NONE;
    if (policy == NULL)
        return BM_OK;
    const struct bm_bus_header *sig = NULL;
    size_t nsig = 0;
    for (size_t i = 0; i < m->nheaders; i++)
        if (strcmp(m->headers[i].name, BM_POLICY_SIG_HEADER) == 0) {
            sig = &m->headers[i];
            nsig++;
        }
    if (nsig > 1) {
        *code = BIOMATCH__V1__ERROR_CODE__ERROR_CODE_BAD_SIGNATURE;
        snprintf(why, whylen, "more than one %s header", BM_POLICY_SIG_HEADER);
        return BM_OK;
    }
    struct bm_sig_record r = {type->name, m->topic, m->key,  m->keylen,
                              m->value,   m->valuelen, agency, id};
    const char *sv = sig ? (sig->value ? (const char *)sig->value : "") : NULL;
    int64_t ts = 0;
    enum bm_policy_verdict v = bm_policy_authenticate(policy, &r, sv, sig ? sig->len : 0,
                                                      bm_wall_ms(), window_ms, &ts, why, whylen);
    switch (v) {
    case BM_POLICY_ALLOW:
        break;
    case BM_POLICY_UNAUTHORIZED:
        *code = BIOMATCH__V1__ERROR_CODE__ERROR_CODE_UNAUTHORIZED;
        return BM_OK;
    case BM_POLICY_BAD_SIGNATURE:
        *code = BIOMATCH__V1__ERROR_CODE__ERROR_CODE_BAD_SIGNATURE;
        return BM_OK;
    case BM_POLICY_STALE:
        *code = BIOMATCH__V1__ERROR_CODE__ERROR_CODE_REPLAYED;
        return BM_OK;
    }
    if (sig == NULL)
        return BM_OK; /* an agency that opted out of signing: nothing binds a time */
    char rec[320];
    snprintf(rec, sizeof rec, "%.249s:%d:%lld", m->topic ? m->topic : "", (int)m->partition,
             (long long)m->offset);
    enum bm_seen seen = BM_SEEN_NEW;
    int rc = bm_seen_claim(redis, kind, m->topic, agency, id, rec, 2 * window_ms, &seen, why,
                           whylen);
    if (rc != BM_OK)
        return rc;
    if (seen == BM_SEEN_REPLAY) {
        *code = BIOMATCH__V1__ERROR_CODE__ERROR_CODE_REPLAYED;
        snprintf(why, whylen, "this %s id was already used by the agency within the replay window",
                 kind);
    }
    return BM_OK;
}

void bm_authn_count(struct bm_coord_ctx *ctx, const char *role, Biomatch__V1__ErrorCode code)
{
    if (ctx->metrics == NULL)
        return;
    const char *name = bm_wire_error_code_name(code);
    const char *pfx = "ERROR_CODE_";
    if (strncmp(name, pfx, strlen(pfx)) == 0)
        name += strlen(pfx);
    char reason[48];
    size_t i = 0;
    for (; name[i] && i + 1 < sizeof reason; i++)
        reason[i] = (char)tolower((unsigned char)name[i]);
    reason[i] = '\0';
    const char *labels[] = {"role", role, "reason", reason, NULL};
    char err[128];
    bm_counter_inc(bm_metrics_counter(ctx->metrics, "biomatch_auth_failures_total",
                                      "Client records refused before any lookup, by reason",
                                      labels, err, sizeof err));
}
