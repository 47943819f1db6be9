/* Client side of the match pipeline, shared by `biomatch submit`, `tail`
 * and `up --demo`: building and sending MatchJob records, reading a topic
 * from a known position, and rendering MatchResult records as a table or
 * JSON.
 *
 * Main invariant of the reader (struct cli_reader): when it is opened "at
 * the end", its start offsets are the partitions' high watermarks queried
 * from the broker when the reader is created, not the symbolic END resolved
 * later by the fetcher. A job produced after cli_reader_open() returns can
 * therefore never be answered "before" the reader's position, so a --wait
 * that opens the reader first and sends second cannot miss its result.
 *
 * Thread: the CLI is single-threaded; none of this is shared. */
#ifndef BM_CLI_MATCHJOB_H
#define BM_CLI_MATCHJOB_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "biomatch.pb-c.h"
#include "bus/bus.h"
#include "conf/policy.h"

/* "xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx" + NUL. */
#define CLI_UUID_LEN 37
/* "00-<32 hex>-<16 hex>-01" + NUL. */
#define CLI_TRACEPARENT_LEN 56


/* Fill 'n' bytes from the kernel's random source (getrandom, with a
 * clock-seeded fallback that is only used if the syscall fails). */
void cli_random(void *buf, size_t n);

/* A random RFC 4122 version-4 UUID in 'out'. */
void cli_uuid4(char out[CLI_UUID_LEN]);

/* A fresh W3C traceparent (random trace and span ids, sampled). */
void cli_traceparent(char out[CLI_TRACEPARENT_LEN]);

/* Build a dense probe template of 'dim' float32 values at 'row' (may be
 * unaligned, little-endian). The template and its DenseEmbedding are
 * written into caller storage; 'row' is borrowed until the job is packed. */
void cli_template_dense(Biomatch__V1__Template *t, Biomatch__V1__DenseEmbedding *d,
                        Biomatch__V1__Modality modality, const void *row, uint32_t dim);

/* Same for an iris code and mask of 'nbytes' bytes each, geometry borrowed. */
void cli_template_iris(Biomatch__V1__Template *t, Biomatch__V1__IrisCode *ic,
                       Biomatch__V1__IrisGeometry *g, uint32_t filters, uint32_t rows,
                       uint32_t columns, uint32_t bits, const uint8_t *code,
                       const uint8_t *mask, size_t nbytes);

/* Encode 'job' and queue it on 'topic' with key = job id and the headers
 * content-type and traceparent ('traceparent' NULL = none). 'cb' as in
 * bm_producer_send. Retries while the local queue is full (serving delivery
 * reports meanwhile, bounded to ~10 s). Returns BM_OK or the send error
 * (message in err). */
int cli_job_send(struct bm_producer *p, const char *topic, const Biomatch__V1__MatchJob *job,
                 const char *traceparent, bm_delivery_fn cb, void *opaque, char *err,
                 size_t errlen);

/* The same, adding a biomatch-signature header made by 'signer' over the
 * encoded bytes when 'signer' is not NULL (borrowed for the call). */
int cli_job_send_signed(struct bm_producer *p, const char *topic,
                        const Biomatch__V1__MatchJob *job, const char *traceparent,
                        const struct bm_signer *signer, bm_delivery_fn cb, void *opaque,
                        char *err, size_t errlen);

/* ------------------------------------------------------------- reader */

struct cli_reader;

/* Open a consumer without a group on every partition of 'topic', starting
 * at the high watermarks queried now (from_beginning = 0) or at the
 * beginning. Returns the reader (caller frees with cli_reader_free) or NULL
 * with the reason in err (unknown topic, broker unreachable within
 * 'timeout_ms'). */
struct cli_reader *cli_reader_open(const struct bm_bus_conf *bc, const char *topic,
                                   int from_beginning, int timeout_ms, char *err,
                                   size_t errlen);

/* The next message, waiting up to 'timeout_ms'. BM_OK with *out (caller
 * frees with bm_bus_msg_free), BM_ETIMEDOUT, or BM_EKAFKA (transient; err
 * says why). */
int cli_reader_next(struct cli_reader *r, int timeout_ms, struct bm_bus_msg **out, char *err,
                    size_t errlen);

/* Close and free (NULL is fine). */
void cli_reader_free(struct cli_reader *r);

/* ------------------------------------------------------------- output */

/* Short names: "OK", "PARTIAL", ...; "IDENTIFY", "VERIFY". Never NULL. */
const char *cli_status_name(Biomatch__V1__ResultStatus s);
const char *cli_mode_name(Biomatch__V1__MatchMode m);

/* End-to-end latency of a result in ms: completed - submitted from its
 * timings, or -1 when either is missing. */
int64_t cli_result_latency_ms(const Biomatch__V1__MatchResult *r);

/* Print 'r' as a human-readable block: status, coverage, gallery version,
 * latency, then one row per candidate (probe, rank, subject, score, shard). */
void cli_result_print(const Biomatch__V1__MatchResult *r, int64_t client_latency_ms);

/* 'r' as a JSON object (caller owns it, cJSON_Delete), or NULL on ENOMEM.
 * 'client_latency_ms' < 0 is left out. */
cJSON *cli_result_json(const Biomatch__V1__MatchResult *r, int64_t client_latency_ms);

#endif /* BM_CLI_MATCHJOB_H */
