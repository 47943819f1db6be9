/* biomatch-worker internals: the state shared by the worker's threads.
 *
 * Threads (docs/internals/worker.md):
 *  - the poll thread (main) polls one group consumer per gallery and the
 *    producer, so every rebalance callback and every delivery report runs
 *    on it; it owns the partition table and the in-flight offset queues;
 *  - the scoring thread batches decoded tasks per shard and scores them
 *    with the matcher pool, then sends the partials itself (sending is
 *    thread-safe; delivery reports come back on the poll thread);
 *  - the loader thread loads, refreshes and frees shards, and samples
 *    consumer lag; it is the only thread that touches Redis.
 *
 * Main invariant: a task's offset is stored only after the record answering
 * it (partial or dlq record) was delivered, and per partition only the
 * contiguous prefix of answered offsets is ever stored, so a crash at any
 * point redelivers every unanswered task.
 *
 * Locks: w->lock guards the shard table (refs, pins, list) and the
 * partition lists (the poll thread changes them under it; the loader reads
 * them for lag). w->qlock guards the scoring queue. Neither is held while
 * calling Kafka, Redis or the matcher. */
#ifndef BM_WORKER_H
#define BM_WORKER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "biomatch.pb-c.h"
#include "bus/bus.h"
#include "conf/conf.h"
#include "conf/topics.h"
#include "match/gallery.h"
#include "obs/outage.h"
#include "store/attempts.h"
#include "store/keys.h"
#include "wire/job.h"

#define WK_VERSION "0.1.0"
#define WK_LAG_INTERVAL_MS 5000
/* A task is its job re-encoded without attributes, plus a few shard
 * fields: it is never more than this larger than the job was. */
#define WK_TASK_SLACK_BYTES 1024

struct bm_metrics;
struct bm_skew;
struct bm_http;
struct bm_shard;
struct bm_counter;
struct bm_gauge;
struct bm_histogram;
struct wk;

/* Task outcomes, the 'status' label of biomatch_worker_tasks_total. */
enum wk_status {
    WK_ST_OK,            /* scored, partial OK */
    WK_ST_ERROR,         /* ERROR partial (invalid task, internal failure) */
    WK_ST_EXPIRED,       /* deadline passed before scoring */
    WK_ST_VERSION,       /* min_gallery_version not reached in time */
    WK_ST_DLQ,           /* undecodable: sent to the dlq */
    WK_ST_POISON,        /* quarantined: POISON partial, not scored */
    WK_ST_N
};

/* One gallery this worker serves: its definition, consumer and metrics. */
struct wk_gallery {
    struct wk *w;
    char name[BM_TOPIC_MAX];
    char topic[BM_TOPIC_MAX];          /* <prefix>tasks.<name> */
    char group[BM_TOPIC_MAX + 16];     /* <prefix>workers.<name> */
    Biomatch__V1__GalleryDefinition *def; /* owned */
    struct bm_spec spec;
    uint32_t shards;                   /* S */
    struct bm_consumer *consumer;
    struct wk_part *parts;             /* assigned partitions (poll thread; w->lock) */
    struct bm_counter *tasks[WK_ST_N];
    struct bm_counter *comparisons;
    struct bm_histogram *batch_probes;
    struct bm_histogram *scoring_seconds;
    struct bm_histogram *e2e_seconds;
    struct bm_histogram *load_seconds;
    struct bm_counter *load_bytes;
    struct bm_gauge *shards_loaded;
    struct bm_counter *shards_refused; /* loads/refreshes refused as unauthenticated */
};

/* One shard held (or being loaded) for the partitions that map to it. */
struct wk_shard {
    struct wk_gallery *g;
    uint32_t index;
    struct bm_shard *shard;        /* set once by the loader, then read-only */
    atomic_int loaded;             /* 1 once 'shard' is usable (release/acquire) */
    atomic_ullong version;         /* manifest version held (loader writes) */
    atomic_int refresh_now;        /* scoring thread asks for an early refresh */
    int refs;                      /* assigned partitions using it (w->lock) */
    int pins;                      /* tasks queued or being scored (w->lock) */
    int64_t next_attempt_ms;       /* loader: next load/refresh (monotonic) */
    int64_t backoff_ms;            /* loader: current retry backoff */
    struct bm_gauge *lag;
    struct wk_shard *next;
};

/* A polled task record whose answer is not yet delivered. */
struct wk_entry {
    struct wk_part *part;
    int64_t offset;
    int done;                      /* answer delivered (poll thread) */
    /* The answer, kept until delivered so a failed delivery can be resent
     * (written by the thread that builds it, before the send). */
    const char *dest;              /* topic: w->partials or w->dlq */
    uint8_t *value;
    size_t valuelen;
    char *key;
    size_t keylen;
    char traceparent[128];         /* "" = none */
    struct bm_bus_header *dlq_hdrs; /* dlq only: the dlq record's headers */
    size_t ndlq_hdrs;              /* (names and values in the same block) */
    int64_t submitted_unix_ms;     /* for the end-to-end histogram; 0 = unknown */
    struct wk_entry *next;
};

/* An assigned partition (poll thread; list changes under w->lock). */
struct wk_part {
    struct wk_gallery *g;
    int32_t partition;
    struct wk_shard *shard;
    int paused;                    /* waiting for its shard or draining */
    int revoked;
    atomic_llong next_offset;      /* last polled + 1, -1 = none yet (lag) */
    struct wk_entry *head, *tail;  /* in-flight, ascending offsets */
    struct wk_part *next;
};

/* A decoded, validated task on its way through the scoring thread. */
struct wk_task {
    struct wk_entry *entry;
    struct wk_shard *shard;        /* pinned */
    Biomatch__V1__MatchTask *msg;  /* owned */
    int64_t enqueued_us;           /* monotonic, when polled */
    int64_t park_until_ms;         /* monotonic; 0 = not parked */
    long long attempt;             /* scoring attempts counted (0 = none or unknown) */
    char attempt_key[BM_KEY_MAX];  /* Redis key of the count; "" = nothing to delete */
    struct wk_task *next;
};

struct wk {
    struct bm_conf *conf;
    atomic_int stuck;              /* an answer could not be sent: restart */
    int refresh_ms;
    struct wk_gallery *gal;
    size_t ngal;
    struct bm_bus_conf busconf;
    struct bm_outage outage;       /* readiness and metrics while waiting out an outage */
    pthread_t poller;              /* the poll thread (serves delivery reports) */
    struct bm_counter *refused;    /* answers Kafka refused for good */
    struct bm_bus_prop *props;
    struct bm_producer *producer;
    struct bm_pool *pool;
    struct bm_keyring *keyring;    /* at-rest keys from the conf; NULL = none */
    struct bm_metrics *metrics;
    struct bm_skew *skew;          /* clock skew estimate (poll thread observes) */
    struct bm_http *http;
    char partials[BM_TOPIC_MAX];
    char dlq[BM_TOPIC_MAX];
    char content_type[128];
    struct bm_wire_limits limits;  /* task validation: the wire defaults */
    size_t max_task_bytes;         /* coordinator.max_job_bytes + WK_TASK_SLACK_BYTES */

    pthread_mutex_t lock;          /* shard table and partition lists */
    pthread_cond_t loader_cv;
    struct wk_shard *shards;
    struct wk_part *zombies;       /* revoked, answers still in flight */
    pthread_t loader;
    atomic_int loader_stop;
    int redis_down;                /* loader thread: Redis not reached (an outage) */
    int loader_started;

    pthread_mutex_t qlock;         /* scoring queue */
    pthread_cond_t qcv;
    struct wk_task *qhead, *qtail;
    pthread_t scorer;
    atomic_int scorer_stop;        /* finish the queue, abandon parked, exit */
    atomic_int scorer_done;
    int scorer_started;
    struct bm_attempts *attempts;  /* poison counting (scoring thread) */
    atomic_llong scoring_since_ms; /* monotonic start of the pass being scored; 0 = idle */

    atomic_int draining;
};


/* assign.c: rebalance callbacks, resume of loaded partitions, readiness,
 * and the loader thread. */
void wk_on_assign(struct bm_consumer *c, const struct bm_bus_tp *tps, size_t n,
                  void *opaque);
void wk_on_revoke(struct bm_consumer *c, const struct bm_bus_tp *tps, size_t n,
                  int lost, void *opaque);
struct wk_part *wk_part_find(struct wk_gallery *g, int32_t partition);
/* Resume partitions whose shard is loaded; returns the number still
 * waiting (0 = ready). Poll thread. */
int wk_resume_ready(struct wk *w);
/* Pause every assigned partition (drain). Poll thread. */
void wk_pause_all(struct wk *w);
void wk_shard_unpin(struct wk *w, struct wk_shard *s);
int wk_loader_start(struct wk *w, char *err, size_t errlen);
void wk_loader_stop(struct wk *w);
/* Free the shard table, partitions and entries (after every thread and
 * client is gone). */
void wk_assign_free(struct wk *w);

/* batch.c: the scoring thread. */
int wk_scorer_start(struct wk *w, char *err, size_t errlen);
/* Hand a task to the scoring thread (ownership moves). Thread: poll. */
void wk_scorer_submit(struct wk *w, struct wk_task *t);
/* Ask the scorer to finish its queue and exit; returns at once. */
void wk_scorer_finish(struct wk *w);
void wk_scorer_join(struct wk *w);
void wk_task_free(struct wk_task *t);

/* quarantine.c: attempts of each task, counted in Redis (scoring thread;
 * store/attempts.h). Read the attempts of each task that never finished:
 * sets t->attempt_key and t->attempt (0 when none, or when Redis could not
 * be asked: then BM_EIO or BM_ENOMEM, t->attempt_key "" and the tasks are
 * scored unchecked). */
int wk_attempts_peek(struct bm_attempts *a, struct wk_task **tasks, size_t n);
/* Count one more attempt of each task (keys from wk_attempts_peek), right
 * before scoring exactly these tasks: sets t->attempt to the new count (0
 * and t->attempt_key "" when Redis could not be asked: BM_EIO or
 * BM_ENOMEM, the tasks are scored unchecked). */
int wk_attempts_begin(struct bm_attempts *a, struct wk_task **tasks, size_t n);
/* Scoring of 't' returned: queue the deletion of its count (pipelined;
 * bm_attempts_flush reads the replies). */
void wk_attempts_done(struct bm_attempts *a, struct wk_task *t);

/* publish.c: partials, dlq records and the offset bookkeeping. */
struct wk_entry *wk_entry_push(struct wk_part *p, int64_t offset);
/* Encode 'pr' as the answer of 'e', send it to the partials topic and
 * count it under 'status'. Thread: any. */
void wk_publish_partial(struct wk *w, struct wk_gallery *g, struct wk_entry *e,
                        const Biomatch__V1__PartialResult *pr, enum wk_status status);
/* An ERROR partial for a task ('job_id' may not be empty). Thread: any. */
void wk_publish_error(struct wk *w, struct wk_gallery *g, struct wk_entry *e,
                      const Biomatch__V1__MatchTask *task, uint32_t shard,
                      Biomatch__V1__ErrorCode code, const char *why,
                      enum wk_status status);
/* Copy an undecodable record to the dlq with an 'error' header. Poll thread. */
void wk_publish_dlq(struct wk *w, struct wk_gallery *g, struct wk_entry *e,
                    const struct bm_bus_msg *m, Biomatch__V1__ErrorCode code,
                    const char *why);
/* Store the contiguous delivered prefix of 'p' (poll thread). May free a
 * revoked partition whose queue drained: do not use 'p' afterwards. */
void wk_part_advance(struct wk *w, struct wk_part *p);
void wk_entry_free(struct wk_entry *e);

/* poll.c: task intake on the poll thread and the drain. */
void wk_handle_msg(struct wk *w, struct wk_gallery *g, struct bm_bus_msg *m);

/* metrics.c */
int wk_metrics_init(struct wk *w, char *err, size_t errlen);
struct bm_gauge *wk_metrics_lag(struct wk *w, struct wk_gallery *g, uint32_t shard);

/* lag.c: consumer lag from broker watermarks (loader thread). */
struct wk_lag;
struct wk_lag *wk_lag_new(struct wk *w, char *err, size_t errlen);
void wk_lag_sample(struct wk *w, struct wk_lag *l);
void wk_lag_free(struct wk_lag *l);

#endif /* BM_WORKER_H */
