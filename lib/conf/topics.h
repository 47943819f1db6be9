/* Topic names, derived in one place from the configured prefix
 * (docs/architecture.md §2), so no program spells a topic name by hand.
 *
 * Per-gallery topics append the gallery name: gallery.<name>, tasks.<name>.
 * Gallery names are limited to [A-Za-z0-9_-]{1,64} so every derived topic is
 * a legal Kafka topic name (bm_topic_gallery_name_valid checks it). */
#ifndef BM_TOPICS_H
#define BM_TOPICS_H

#include <stdbool.h>
#include <stddef.h>

enum bm_topic {
    BM_TOPIC_ENROLL,    /* agencies -> coordinator: enrollment requests */
    BM_TOPIC_JOBS,      /* agencies -> coordinator: MatchJob */
    BM_TOPIC_PARTIALS,  /* workers, intake -> aggregator: PartialResult */
    BM_TOPIC_RESULTS,   /* coordinator -> agencies: MatchResult */
    BM_TOPIC_AUDIT,     /* coordinator -> auditors: AuditRecord */
    BM_TOPIC_DLQ,       /* any -> operators: undecodable or rejected input */
    BM_TOPIC_GALLERIES, /* gallery definitions, compacted, key = gallery name */
};

/* Longest name any helper below produces, including the terminator. */
#define BM_TOPIC_MAX 256

/* Write "<prefix><base>" into buf. Returns 0, or -1 if it does not fit. */
int bm_topic_name(char *buf, size_t len, const char *prefix, enum bm_topic t);

/* "<prefix>gallery.<gallery>": the gallery's compacted change log. */
int bm_topic_gallery(char *buf, size_t len, const char *prefix, const char *gallery);

/* "<prefix>tasks.<gallery>": per-shard match tasks, S x R partitions. */
int bm_topic_tasks(char *buf, size_t len, const char *prefix, const char *gallery);

/* True when a client may name 'topic' as its reply topic. An allow-list,
 * so a topic biomatch adds later is refused until listed here: under
 * 'prefix' only `results`, `results.<x>`, `replies` and `replies.<x>`; never a topic
 * starting with '_' (Kafka's and Confluent's own: __consumer_offsets,
 * _schemas); anything else (an agency's own topic) is allowed. With an
 * empty prefix every topic is "under" it. Thread: any. */
bool bm_topic_reply_allowed(const char *prefix, const char *topic);

/* True when 'name' is a usable gallery name: 1..64 of [A-Za-z0-9_-]. */
bool bm_topic_gallery_name_valid(const char *name);

#endif /* BM_TOPICS_H */
