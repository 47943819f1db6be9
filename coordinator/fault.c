/* The fault hooks of biomatch-coordinator-fault (see fault.h); this file is
 * compiled into that test build only. */
#include "fault.h"

#include <stdlib.h>
#include <string.h>

#include "obs/log.h"

void bm_coord_fault_on_emit(const char *job_id)
{
    if (job_id != NULL && strncmp(job_id, "bm-fault-agg-abort", 18) == 0) {
        BM_LOGF(BM_LOG_WARN, "fault hook: aborting on a marked job", BM_LF_STR("role", "aggregate"));
        abort();
    }
}
