/* The fault hooks of biomatch-worker-fault (see fault.h); this file is
 * compiled into that test build only. */
#define _POSIX_C_SOURCE 200809L

#include "fault.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "obs/log.h"

/* 1 when 'rest' (what follows the marker) limits it to another shard:
 * "-s<n>..." names shard n. */
static int other_shard(const char *rest, uint32_t shard)
{
    if (rest[0] != '-' || rest[1] != 's' || rest[2] < '0' || rest[2] > '9')
        return 0;
    return strtoul(rest + 2, NULL, 10) != shard;
}

void wk_fault_on_score(const Biomatch__V1__MatchTask *t)
{
    if (t->job_id == NULL)
        return;
    if (strncmp(t->job_id, "bm-fault-abort", 14) == 0 && !other_shard(t->job_id + 14, t->shard)) {
        BM_LOGF(BM_LOG_WARN, "fault hook: aborting on a marked task",
                BM_LF_INT("shard", t->shard));
        abort();
    }
    if (strncmp(t->job_id, "bm-fault-hang", 13) == 0 && !other_shard(t->job_id + 13, t->shard)) {
        BM_LOGF(BM_LOG_WARN, "fault hook: hanging on a marked task",
                BM_LF_INT("shard", t->shard));
        for (;;)
            pause();
    }
}

int64_t wk_fault_clock_offset_ms(void)
{
    const char *v = getenv("BIOMATCH_FAULT_CLOCK_OFFSET_MS");
    return v != NULL ? strtoll(v, NULL, 10) : 0;
}
