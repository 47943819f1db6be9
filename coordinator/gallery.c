/* The gallery role (docs/architecture.md §3): enrollment intake and the
 * segment builder, run as two threads of one role. They share nothing but
 * the context; each owns its Kafka and Redis handles. If either half fails
 * for good, the role asks the process to stop (so an orchestrator restarts
 * it whole) and reports the first failure. */
#include <pthread.h>

#include "gallery.h"
#include "obs/log.h"

struct half {
    struct bm_coord_ctx *ctx;
    int rc;
};

static void *enroll_thread(void *arg)
{
    struct half *h = arg;
    h->rc = bm_enroll_run(h->ctx);
    if (h->rc != BM_OK)
        atomic_store(&h->ctx->stop, 1);
    return NULL;
}

int bm_role_gallery_run(struct bm_coord_ctx *ctx)
{
    struct half enroll = {ctx, BM_OK};
    pthread_t t;
    if (pthread_create(&t, NULL, enroll_thread, &enroll) != 0) {
        BM_LOGF(BM_LOG_ERROR, "gallery role: cannot start intake thread",
                BM_LF_STR("role", "gallery"));
        return BM_ENOMEM;
    }
    int rc = bm_builder_run(ctx);
    if (rc != BM_OK)
        atomic_store(&ctx->stop, 1);
    pthread_join(t, NULL);
    return rc != BM_OK ? rc : enroll.rc;
}
