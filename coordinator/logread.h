/* Reading one partition of a gallery log outside the consumer group: the
 * segment builder's rebuild (from offset 0) and resync (from a manifest's
 * log_offset) read [from, end) where end is the partition's high watermark
 * when the read starts.
 *
 * It uses librdkafka directly because the bus wrapper has no watermark
 * query and no end-of-partition signal (reported to the bus owner). A
 * reader never joins a group and never commits. Thread: one caller. */
#ifndef BM_COORD_LOGREAD_H
#define BM_COORD_LOGREAD_H

#include <stddef.h>
#include <stdint.h>

#include "bus/bus.h"

/* One record: borrowed views valid during the callback only. 'value' is
 * NULL for a tombstone. */
typedef int (*bm_logread_fn)(int64_t offset, const void *key, size_t keylen,
                             const void *value, size_t valuelen, void *opaque);

/* Read 'topic'/'partition' from 'from' (>= 0) up to the high watermark at
 * the time of the call, calling 'fn' in offset order (compaction may leave
 * gaps). A non-zero return from 'fn' stops the read and is returned.
 * *end (may be NULL) gets the watermark: the offset after the last record
 * the read covered. Returns BM_OK, BM_ETIMEDOUT (no progress for
 * 'timeout_ms'), BM_EKAFKA or BM_ENOMEM with the reason in err. */
int bm_logread(const struct bm_bus_conf *conf, const char *topic, int32_t partition,
               int64_t from, int timeout_ms, bm_logread_fn fn, void *opaque, int64_t *end,
               char *err, size_t errlen);

#endif /* BM_COORD_LOGREAD_H */
