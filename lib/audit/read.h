/* Reading a whole audit topic outside any consumer group: every partition
 * from a start offset up to its high watermark at the time of the call.
 * Used by the coordinator's writer to recover its chain head on start and
 * by `biomatch audit verify`. Never joins a group, never commits.
 * Thread: one caller. */
#ifndef BM_AUDIT_READ_H
#define BM_AUDIT_READ_H

#include <stddef.h>
#include <stdint.h>

#include "bus/bus.h"

/* One record: 'value' (NULL for a tombstone) is borrowed for the call.
 * A non-zero return stops the read and is returned by bm_audit_read. */
typedef int (*bm_audit_read_fn)(int32_t partition, int64_t offset, const void *value,
                                size_t len, void *opaque);

/* Call 'fn' for every record of every partition of 'topic' at offsets
 * >= from(partition) (see below) and below the partition's high watermark
 * as it was when the read began, each partition in offset order.
 *
 * The start of partition p is max(low watermark, 'from') when 'tail' is 0,
 * else max(low, high - tail): the last 'tail' records. *partitions (may be
 * NULL) gets the partition count. Returns BM_OK, BM_ENOTFOUND (no such
 * topic: nothing was read), BM_ETIMEDOUT (no progress for 'timeout_ms'),
 * BM_EKAFKA, BM_ENOMEM, or fn's non-zero value; the reason is in err. */
int bm_audit_read(const struct bm_bus_conf *conf, const char *topic, int64_t from,
                  int64_t tail, int timeout_ms, bm_audit_read_fn fn, void *opaque,
                  int *partitions, char *err, size_t errlen);

#endif /* BM_AUDIT_READ_H */
