/* The Kafka bus: thin wrappers over librdkafka for everything biomatch puts
 * on or takes off Kafka (docs/architecture.md §1-3).
 *
 * The wrappers exist to fix the policy in one place, not to hide Kafka:
 *  - producers are idempotent (enable.idempotence=true, acks=all), compress
 *    with lz4 and linger a few milliseconds; every accepted send gets exactly
 *    one delivery report, served on the thread that polls the producer;
 *  - group consumers use cooperative-sticky assignment, commit automatically
 *    but only offsets the application stored after finishing a message's
 *    work (enable.auto.offset.store=false), and see assignment changes as
 *    incremental on_assign/on_revoke callbacks from their own poll call, so a
 *    worker can pause a partition while it loads a shard;
 *  - topics are created through the admin API with an explicit partition
 *    count, and an existing topic with a different count is a conflict.
 *
 * Every librdkafka property can still be set through bm_bus_conf.props,
 * applied verbatim after the defaults above (TLS, SASL, timeouts, debug).
 *
 * Errors are enum bm_err values (common/err.h); messages go to the caller's
 * err/errlen buffer. docs/internals/bus.md explains the choices. */
#ifndef BM_BUS_H
#define BM_BUS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* Let librdkafka pick the partition (its murmur2-random partitioner on the
 * key; keyless messages are spread). Same value as RD_KAFKA_PARTITION_UA. */
#define BM_PARTITION_ANY (-1)

/* Special offsets for bm_consumer_assign(); same values as librdkafka's. */
#define BM_OFFSET_BEGINNING (-2)
#define BM_OFFSET_END (-1)
#define BM_OFFSET_STORED (-1000) /* the group's committed offset */
#define BM_OFFSET_INVALID (-1001)

/* Header names biomatch uses (docs/architecture.md §2). */
#define BM_HDR_CONTENT_TYPE "content-type"
#define BM_HDR_TRACEPARENT "traceparent"
#define BM_HDR_ERROR "error"

/* Most headers one message may carry through the helpers below. */
#define BM_BUS_MAX_HEADERS 16

/* One librdkafka property, e.g. {"security.protocol", "ssl"}. */
struct bm_bus_prop {
    const char *key;
    const char *value;
};

/* librdkafka's own log lines: 'level' is syslog-style (0 emerg .. 7 debug),
 * 'fac' a short facility name. Called from librdkafka's internal threads,
 * so the function must be thread-safe and must not call back into the bus. */
typedef void (*bm_bus_log_fn)(void *opaque, int level, const char *fac,
                              const char *msg);

/* A producer started (waiting = 1) or stopped (0) waiting out a transient
 * error: its records are held up by a full queue, a broker outage or
 * re-sends after a transient delivery failure. 'err' is the enum bm_err
 * that started the wait and 'why' says where (only meaningful when
 * waiting = 1). Called on every transition, in order, from whichever bus
 * thread saw it (the polling thread or a thread in bm_producer_send_wait),
 * under the producer's lock: it must be thread-safe, quick, and must not
 * call back into the bus. Applications turn /readyz false and raise a
 * gauge with it. */
typedef void (*bm_bus_wait_fn)(void *opaque, int waiting, int err, const char *why);

/* What every producer, consumer and admin handle is built from. All strings
 * are borrowed: they are copied into librdkafka's configuration by the
 * constructor and need not outlive it. */
struct bm_bus_conf {
    const char *bootstrap_servers;   /* "host:port[,host:port...]", required */
    const char *client_id;           /* NULL = "biomatch" */
    const struct bm_bus_prop *props; /* extra properties, applied last, verbatim */
    size_t nprops;
    bm_bus_log_fn log;               /* NULL = librdkafka's default (stderr) */
    void *log_opaque;
    /* Admin handles only: what bm_admin_create_topics gives a topic whose
     * spec leaves it to the cluster (topics.* in the configuration). */
    int topic_replication;           /* 0 = the broker's default.replication.factor */
    int topic_min_insync;            /* 0 = the broker's min.insync.replicas */
    /* The record size limit (conf topics.max_record_bytes): every handle's
     * message.max.bytes, and max.message.bytes of topics an admin handle
     * creates. 0 = librdkafka's and the broker's defaults. */
    int64_t max_record_bytes;
    bm_bus_wait_fn on_wait;          /* producers: NULL = nobody is told */
    void *wait_opaque;
    const atomic_int *stop;          /* producers: bm_producer_send_wait gives
                                      * up (BM_ECLOSED) once *stop != 0; NULL =
                                      * never. Must outlive the producer. */
};

/* A message header. 'value' may be NULL (a null header, len 0). In a
 * consumed message the header points into that message and lives as long
 * as it does. */
struct bm_bus_header {
    const char *name;
    const void *value;
    size_t len;
};

/* A fixed-capacity header list that owns nothing: names and values are
 * borrowed and must stay valid until bm_producer_send() returns (the send
 * copies them). Lives on the stack; there is nothing to free. */
struct bm_bus_headers {
    struct bm_bus_header v[BM_BUS_MAX_HEADERS];
    size_t n;
};

/* Empty 'h'. Thread: any. */
void bm_bus_headers_init(struct bm_bus_headers *h);

/* Append header 'name' with 'len' bytes of 'value' (borrowed). Returns BM_OK
 * or BM_ERANGE when 'h' is full (nothing added). Thread: the owner of 'h'. */
int bm_bus_headers_add(struct bm_bus_headers *h, const char *name,
                       const void *value, size_t len);

/* Append a NUL-terminated string value (without its NUL). Same returns. */
int bm_bus_headers_add_str(struct bm_bus_headers *h, const char *name,
                           const char *value);

/* The last header called 'name' in 'hdrs' (Kafka allows repeats; the last
 * one wins, as for HTTP-style overrides), or NULL. Thread: any. */
const struct bm_bus_header *bm_bus_header_find(const struct bm_bus_header *hdrs,
                                               size_t n, const char *name);

/* Copy the value of header 'name' into 'buf' as a NUL-terminated string.
 * Returns BM_OK, BM_ENOTFOUND (buf = ""), or BM_ERANGE when the value does
 * not fit or holds a NUL byte (buf = ""). Thread: any. */
int bm_bus_header_get_str(const struct bm_bus_header *hdrs, size_t n,
                          const char *name, char *buf, size_t len);

/* ------------------------------------------------------------- producer */

struct bm_producer;

/* The outcome of one send, valid only during the callback. */
struct bm_delivery {
    int err;              /* BM_OK, a per-record permanent error (BM_ERANGE too
                           * large, BM_ENOTFOUND unknown topic or partition,
                           * BM_EDENIED no write access, BM_EINVAL invalid topic
                           * or record, BM_EPROTO corrupt), BM_ENOMEM (a
                           * transient failure could not be kept for re-send)
                           * or BM_ECLOSED (purged by free). Transient failures
                           * never reach the callback: they are re-sent. */
    const char *errstr;   /* "" on success */
    const char *topic;
    int32_t partition;
    int64_t offset;       /* the message's offset when err == BM_OK, else -1 */
};

/* Called exactly once per accepted send, on the thread that called
 * bm_producer_poll(), bm_producer_flush() or bm_producer_free(). */
typedef void (*bm_delivery_fn)(const struct bm_delivery *d, void *opaque);

/* Create an idempotent producer. Defaults (overridable through conf->props):
 * enable.idempotence=true, acks=all, compression.type=lz4, linger.ms=5,
 * message.timeout.ms=2147483647 (librdkafka's maximum, ~24.8 days: it does
 * not give up on a record during any realistic outage; docs/config.md).
 *
 * A producer never gives up on a transient error: a delivery that failed
 * for a transient reason (bm_err_transient: a timed-out record when an
 * operator set a finite message.timeout.ms, not enough replicas, no
 * leader) is kept and re-sent from bm_producer_poll/flush with a back-off
 * (100 ms doubling to 5 s), and its callback runs only with the final
 * outcome. conf->on_wait hears when the producer starts and stops waiting.
 * Returns the producer (owned by the caller, release with bm_producer_free)
 * or NULL with a message in err (nothing to release). Thread: any. */
struct bm_producer *bm_producer_new(const struct bm_bus_conf *conf, char *err,
                                    size_t errlen);

/* Queue one message. Key, value and headers are copied before the call
 * returns. 'partition' is a partition number or BM_PARTITION_ANY. 'cb' may be
 * NULL; otherwise it is called exactly once with 'opaque' when the message is
 * delivered or has failed for good (see bm_delivery_fn for the thread).
 *
 * Returns BM_OK; a transient refusal: BM_EFULL (local queue full: poll and
 * retry), BM_ETIMEDOUT, BM_EUNAVAIL, BM_EKAFKA; a per-record permanent one:
 * BM_ERANGE (larger than message.max.bytes), BM_ENOTFOUND (unknown topic or
 * partition), BM_EINVAL; or BM_ECLOSED (the producer hit a fatal error, see
 * bm_producer_fatal). bm_producer_send_wait does the waiting. On any error
 * nothing was queued and 'cb' will never be called.
 * Thread: any (librdkafka's produce call is thread-safe). */
int bm_producer_send(struct bm_producer *p, const char *topic, int32_t partition,
                     const void *key, size_t keylen, const void *value,
                     size_t valuelen, const struct bm_bus_header *headers,
                     size_t nheaders, bm_delivery_fn cb, void *opaque);

/* Flags of bm_producer_send_wait. */
#define BM_SEND_SERVE 1 /* serve delivery reports while waiting (the caller
                         * is the producer's polling thread); without it the
                         * caller sleeps while another thread polls */

/* bm_producer_send that waits out transient refusals for as long as it
 * takes: a full local queue (BM_EFULL), a timeout or an unreachable broker
 * make it back off (1 ms doubling to 100 ms) and try again, telling
 * conf->on_wait while it does. Same arguments, ownership and callback
 * contract as bm_producer_send.
 *
 * Returns BM_OK (queued; 'cb' will report the final outcome), a per-record
 * permanent error (BM_ERANGE, BM_ENOTFOUND, BM_EDENIED, BM_EINVAL, BM_EPROTO:
 * this record can never be sent as it is; nothing queued, 'cb' never
 * called), or BM_ECLOSED (the producer hit a fatal error, or conf->stop was
 * set while waiting; nothing queued). Thread: with BM_SEND_SERVE only the
 * polling thread; without it any thread other than the polling one. */
int bm_producer_send_wait(struct bm_producer *p, const char *topic, int32_t partition,
                          const void *key, size_t keylen, const void *value,
                          size_t valuelen, const struct bm_bus_header *headers,
                          size_t nheaders, int flags, bm_delivery_fn cb, void *opaque);

/* Serve delivery reports and error events for up to 'timeout_ms' (0 = do not
 * wait). Returns the number of events served. Callbacks run on this thread.
 * Thread: call from one thread at a time. */
int bm_producer_poll(struct bm_producer *p, int timeout_ms);

/* Wait up to 'timeout_ms' until every queued message has its delivery
 * report, serving callbacks on this thread. Returns BM_OK or BM_ETIMEDOUT
 * (messages still outstanding). Thread: as bm_producer_poll. */
int bm_producer_flush(struct bm_producer *p, int timeout_ms);

/* Messages queued and not yet reported (re-sends waiting for their
 * back-off included). Thread: any. */
int bm_producer_outstanding(const struct bm_producer *p);

/* BM_OK while the producer is healthy. After librdkafka raised a fatal
 * error (an idempotence guarantee could not be kept: e.g. the broker fenced
 * the producer id or sequence numbers went out of order) returns BM_EKAFKA
 * with the reason in err; the producer must then be freed and recreated.
 * Thread: any. */
int bm_producer_fatal(const struct bm_producer *p, char *err, size_t errlen);

/* Destroy 'p' (NULL is fine). Does not wait: messages still queued are
 * purged and their callbacks run here with BM_ECLOSED. Call
 * bm_producer_flush first for a clean shutdown. Thread: the polling thread. */
void bm_producer_free(struct bm_producer *p);

/* ------------------------------------------------------------- consumer */

struct bm_consumer;

/* A topic partition, with an offset where the call needs one (assign,
 * store, committed), else BM_OFFSET_INVALID. */
struct bm_bus_tp {
    const char *topic;
    int32_t partition;
    int64_t offset;
};

/* A consumed message: a read-only view valid until bm_bus_msg_free(). */
struct bm_bus_msg {
    const char *topic;
    int32_t partition;
    int64_t offset;
    const void *key;       /* NULL when the message has no key */
    size_t keylen;
    const void *value;     /* NULL for a tombstone */
    size_t valuelen;
    const struct bm_bus_header *headers;
    size_t nheaders;
    int64_t timestamp_ms;  /* -1 when the broker gave none */
    void *priv;            /* the librdkafka message; not for callers */
};

/* Release a message from bm_consumer_poll (NULL is fine). Thread: any, but
 * before the consumer that produced it is freed. */
void bm_bus_msg_free(struct bm_bus_msg *m);

/* Partitions newly assigned to, or about to be taken from, this consumer.
 * 'tps' (offsets BM_OFFSET_INVALID) is valid only during the call. */
typedef void (*bm_consumer_assign_fn)(struct bm_consumer *c,
                                      const struct bm_bus_tp *tps, size_t n,
                                      void *opaque);
/* 'lost' is 1 when the partitions were lost (session timed out, fenced):
 * another member may already own them, so storing offsets is pointless. */
typedef void (*bm_consumer_revoke_fn)(struct bm_consumer *c,
                                      const struct bm_bus_tp *tps, size_t n,
                                      int lost, void *opaque);

/* Rebalance callbacks, called from bm_consumer_poll() on the polling thread.
 * on_assign runs after the partitions were added to the assignment, so it
 * may pause them (bm_consumer_pause) before any of their messages is
 * returned. on_revoke runs before they are removed: it is the last chance to
 * store offsets for finished work; the wrapper then commits stored offsets
 * (unless lost) and removes the partitions. Both may be NULL. */
struct bm_consumer_callbacks {
    bm_consumer_assign_fn on_assign;
    bm_consumer_revoke_fn on_revoke;
    void *opaque;
};

/* Create a consumer. With 'group_id' it may subscribe (group mode,
 * cooperative-sticky, auto commit of stored offsets every
 * auto.commit.interval.ms) or assign partitions itself and still commit to
 * the group; with NULL it can only bm_consumer_assign() and never commits
 * (BM_OFFSET_STORED then means auto.offset.reset).
 * 'group_instance_id' (may be NULL) turns on static membership. 'cbs' may be
 * NULL and is copied. auto.offset.reset defaults to earliest.
 * Returns the consumer (caller owns it: bm_consumer_close then
 * bm_consumer_free) or NULL with a message in err. Thread: any. */
struct bm_consumer *bm_consumer_new(const struct bm_bus_conf *conf,
                                    const char *group_id,
                                    const char *group_instance_id,
                                    const struct bm_consumer_callbacks *cbs,
                                    char *err, size_t errlen);

/* Join the group for 'topics' (replaces any previous subscription).
 * Returns BM_OK, BM_EINVAL (no group id) or BM_EKAFKA. Thread: poller. */
int bm_consumer_subscribe(struct bm_consumer *c, const char *const *topics,
                          size_t ntopics, char *err, size_t errlen);

/* Manual mode: consume exactly these partitions from their offsets (a
 * number, BM_OFFSET_BEGINNING, BM_OFFSET_END or BM_OFFSET_STORED), replacing
 * any earlier manual assignment; n = 0 clears it. Not for subscribed
 * consumers. Returns BM_OK, BM_EINVAL or BM_EKAFKA. Thread: poller. */
int bm_consumer_assign(struct bm_consumer *c, const struct bm_bus_tp *tps,
                       size_t n, char *err, size_t errlen);

/* Wait up to 'timeout_ms' for a message, serving rebalance callbacks on this
 * thread meanwhile. Returns BM_OK with *out set (caller owns it: free with
 * bm_bus_msg_free), BM_ETIMEDOUT with *out NULL when nothing arrived (or
 * only a message held back for a paused partition, possibly early),
 * BM_EKAFKA with *out NULL for a consumer error (err says which; most are
 * transient, see bm_consumer_fatal), or BM_ENOMEM.
 * Thread: one polling thread. */
int bm_consumer_poll(struct bm_consumer *c, int timeout_ms,
                     struct bm_bus_msg **out, char *err, size_t errlen);

/* Record that all work for 'm' is done: offset m->offset + 1 will be
 * committed by the next (auto or explicit) commit. Returns BM_OK,
 * BM_ECONFLICT when the partition is no longer assigned to this consumer
 * (another member will redo the message), or BM_EKAFKA. Thread: any. */
int bm_consumer_store(struct bm_consumer *c, const struct bm_bus_msg *m);

/* Same with an explicit next offset (the offset of the next message to
 * process, i.e. last done + 1). Thread: any. */
int bm_consumer_store_offset(struct bm_consumer *c, const char *topic,
                             int32_t partition, int64_t next_offset);

/* Commit the stored offsets now; sync waits for the broker's answer.
 * Returns BM_OK (also when nothing was stored), BM_EKAFKA. Thread: any. */
int bm_consumer_commit(struct bm_consumer *c, int sync, char *err,
                       size_t errlen);

/* The group's committed offsets for tps[i] written to tps[i].offset
 * (BM_OFFSET_INVALID when none). Returns BM_OK, BM_ETIMEDOUT or BM_EKAFKA.
 * Thread: any. */
int bm_consumer_committed(struct bm_consumer *c, struct bm_bus_tp *tps,
                          size_t n, int timeout_ms, char *err, size_t errlen);

/* Stop / restart fetching one assigned partition. Messages already fetched
 * for it are discarded and fetched again after resume, so pausing loses
 * nothing. A partition that has delivered nothing yet (paused in on_assign,
 * say) is paused for real only when its first message arrives: that
 * message is held back and is the first one bm_consumer_poll returns after
 * the resume (librdkafka may otherwise never fetch a partition paused
 * before its fetch started). Held messages of a revoked partition are
 * dropped unstored, so its next owner gets them. Returns BM_OK, BM_ENOMEM
 * or BM_EKAFKA (e.g. not assigned). Thread: poller. */
int bm_consumer_pause(struct bm_consumer *c, const char *topic,
                      int32_t partition);
int bm_consumer_resume(struct bm_consumer *c, const char *topic,
                       int32_t partition);

/* The current assignment as one malloc'd block in *out (topic names live in
 * the same block, so free(*out) releases everything), count in *n.
 * Returns BM_OK, BM_ENOMEM or BM_EKAFKA. Thread: any. */
int bm_consumer_assignment(struct bm_consumer *c, struct bm_bus_tp **out,
                           size_t *n);

/* The low and high watermarks of 'topic' [partition], asked of its leader
 * (any partition, assigned or not): *high is the offset the next record
 * will get, so high minus a consumer's next offset is its lag. Returns
 * BM_OK, BM_ETIMEDOUT or BM_EKAFKA. Blocks up to 'timeout_ms'.
 * Thread: any. */
int bm_consumer_watermarks(struct bm_consumer *c, const char *topic,
                           int32_t partition, int timeout_ms, int64_t *low,
                           int64_t *high, char *err, size_t errlen);

/* Like bm_producer_fatal: a fatal consumer error (e.g. a static member was
 * fenced by another instance with the same group.instance.id). Thread: any. */
int bm_consumer_fatal(const struct bm_consumer *c, char *err, size_t errlen);

/* Leave the group cleanly: revoke callbacks run here, stored offsets are
 * committed, the group rebalances at once instead of waiting for the
 * session timeout. Idempotent. Returns BM_OK or BM_EKAFKA. Thread: poller. */
int bm_consumer_close(struct bm_consumer *c, char *err, size_t errlen);

/* Destroy 'c' (NULL is fine); closes it first if needed. Every message from
 * it must have been freed. Thread: poller. */
void bm_consumer_free(struct bm_consumer *c);

/* ------------------------------------------------------------- admin */

struct bm_admin;

/* A topic to create. 'configs' are topic-level properties such as
 * {"cleanup.policy", "compact"}; borrowed for the call. */
struct bm_bus_topic_spec {
    const char *name;
    int partitions;
    int replication;      /* -1 = the admin's topic_replication, else the broker's default */
    const struct bm_bus_prop *configs;
    size_t nconfigs;
};

/* Open an admin handle. Returns it (caller owns; bm_admin_free) or NULL
 * with a message in err. Thread: any. */
struct bm_admin *bm_admin_new(const struct bm_bus_conf *conf, char *err,
                              size_t errlen);

/* Create the topics. A spec with replication -1 gets the admin conf's
 * topic_replication when set, and min.insync.replicas = topic_min_insync
 * when set and the spec's configs do not name it (so every topic biomatch
 * creates follows the configuration, docs/config.md "topics").
 * A topic that already exists counts as created when it
 * has the requested partition count, and is BM_ECONFLICT otherwise (the
 * partition of a key is part of our contract, so it must not silently
 * differ). Returns BM_OK, BM_ECONFLICT, BM_ETIMEDOUT, BM_EINVAL or
 * BM_EKAFKA; the first failing topic is named in err. Topics are created
 * independently: on error some of them may exist. Thread: any. */
int bm_admin_create_topics(struct bm_admin *a,
                           const struct bm_bus_topic_spec *topics, size_t n,
                           int timeout_ms, char *err, size_t errlen);

/* The partition count of 'topic' in *partitions. Returns BM_OK,
 * BM_ENOTFOUND, BM_ETIMEDOUT or BM_EKAFKA. Thread: any. */
int bm_admin_topic_partitions(struct bm_admin *a, const char *topic,
                              int timeout_ms, int *partitions, char *err,
                              size_t errlen);

/* One line for logs about the cluster: broker count, the broker that
 * answered, and a fingerprint of its release. The Kafka protocol carries no
 * version string and librdkafka 2.0.2 does not expose the ApiVersions
 * answer, so a short-lived probe handle logs it (debug=feature) and the
 * advertised Produce and Fetch version ranges and the number of API keys
 * are reported (Kafka 4.1 advertises Fetch 4..18, Produce up to 13).
 * Returns BM_OK, BM_ETIMEDOUT or BM_EKAFKA; the fingerprint is best effort
 * ("?" when the probe failed). Thread: any. */
int bm_admin_cluster_info(struct bm_admin *a, int timeout_ms, char *buf,
                          size_t len, char *err, size_t errlen);

/* Destroy 'a' (NULL is fine). Thread: any. */
void bm_admin_free(struct bm_admin *a);

#endif /* BM_BUS_H */
