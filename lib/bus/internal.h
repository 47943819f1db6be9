/* Private to lib/bus: the configuration builder and conversions shared by
 * the producer, consumer, admin and mock files. Nothing here is public API.
 *
 * Invariant: every rd_kafka_t made by this module has, as its opaque, a
 * pointer to a struct bm_bus_base that outlives the handle, so librdkafka
 * callbacks can find the application's log function and our sticky state. */
#ifndef BM_BUS_INTERNAL_H
#define BM_BUS_INTERNAL_H

#include <librdkafka/rdkafka.h>
#include <stdbool.h>

#include "bus/bus.h"

/* The first member of every handle struct of this module. */
struct bm_bus_base {
    bm_bus_log_fn log;  /* the application's log function, or NULL */
    void *log_opaque;
};

/* Set one property; on failure fill err and return BM_EINVAL. */
int bm_bus_conf_set(rd_kafka_conf_t *rc, const char *key, const char *value,
                    char *err, size_t errlen);

/* The kind of librdkafka client a configuration is for. Admin handles are
 * producer-type clients in librdkafka. */
enum bm_bus_kind { BM_BUS_KIND_PRODUCER, BM_BUS_KIND_CONSUMER };

/* False when librdkafka documents 'key' as a property of the other kind of
 * client only (session.timeout.ms for a producer, linger.ms for a
 * consumer); true for shared and unknown names, so a typo still fails
 * where it is set. Thread: any. */
bool bm_bus_prop_applies(const char *key, enum bm_bus_kind kind);

/* Build a librdkafka configuration for a client of 'kind': bootstrap
 * servers and client id from 'conf', then 'defaults' (NULL-key terminated,
 * may be NULL), then those of conf->props that apply to 'kind'
 * (bm_bus_prop_applies), verbatim, and wire the log callback to 'base'.
 * Returns the configuration (caller owns it until rd_kafka_new takes it) or
 * NULL with a message in err. */
rd_kafka_conf_t *bm_bus_conf_build(const struct bm_bus_conf *conf,
                                   enum bm_bus_kind kind,
                                   const struct bm_bus_prop *defaults,
                                   struct bm_bus_base *base, char *err,
                                   size_t errlen);

/* Map a librdkafka error code to enum bm_err. */
int bm_bus_err_map(rd_kafka_resp_err_t e);

/* Copy a partition list into one malloc'd block of bm_bus_tp (names inside
 * the block). Returns BM_OK or BM_ENOMEM; *out is NULL when the list is
 * empty. */
int bm_bus_tps_from_list(const rd_kafka_topic_partition_list_t *l,
                         struct bm_bus_tp **out, size_t *n);

/* A new librdkafka list holding tps[0..n) with their offsets, or NULL. */
rd_kafka_topic_partition_list_t *bm_bus_list_from_tps(const struct bm_bus_tp *tps,
                                                      size_t n);

#endif /* BM_BUS_INTERNAL_H */
