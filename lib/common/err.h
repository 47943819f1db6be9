/* Error codes shared by every biomatch module.
 *
 * Functions return BM_OK (0) or a negative enum bm_err. Long-lived objects
 * (connections, producers) also keep a sticky err + errstr, hiredis-style,
 * so a caller can report the first failure after a chain of calls. */
#ifndef BM_ERR_H
#define BM_ERR_H

#include <stddef.h>

enum bm_err {
    BM_OK = 0,
    BM_ENOMEM = -1,      /* allocation failed */
    BM_EINVAL = -2,      /* bad argument or bad input value */
    BM_ERANGE = -3,      /* a size or count is over its limit (never "full") */
    BM_EPROTO = -4,      /* malformed bytes from a peer or a file */
    BM_EIO = -5,         /* socket or file I/O failed */
    BM_ETIMEDOUT = -6,   /* a bounded wait ran out */
    BM_ENOTFOUND = -7,   /* no such key, subject, gallery or topic */
    BM_ECONFLICT = -8,   /* compare-and-set lost, or definition differs */
    BM_ECHECKSUM = -9,   /* integrity check failed */
    BM_EKAFKA = -10,     /* librdkafka reported an error */
    BM_EREDIS = -11,     /* the Redis server replied with an error */
    BM_ECLOSED = -12,    /* the object was closed or is shutting down */
    BM_EUNSUPPORTED = -13, /* not available on this CPU or build */
    BM_EFULL = -14,      /* a local queue is full: wait for room, then retry */
    BM_EUNAVAIL = -15,   /* a broker, leader, replica set or Redis is
                          * unreachable or not ready: wait, then retry */
    BM_EDENIED = -16,    /* the server refused us access (ACL, authorisation) */
};

/* A static, human-readable name for 'err'; never NULL. Thread: any. */
const char *bm_strerror(int err);

/* 1 when waiting can cure 'err', so the caller backs off and retries for as
 * long as it takes: BM_EFULL, BM_EUNAVAIL, BM_ETIMEDOUT, BM_EIO (a dropped
 * connection), BM_ENOMEM, and BM_EKAFKA (an error librdkafka did not name
 * more precisely: waiting loudly is safer than dropping a record). 0 for
 * BM_OK, BM_ECLOSED (the handle is gone, not the record's fault) and every
 * per-record permanent error (BM_ERANGE too large, BM_ENOTFOUND unknown
 * topic, BM_EDENIED, BM_EINVAL invalid topic or record, BM_EPROTO corrupt,
 * BM_EREDIS a Redis error reply that names the request). Thread: any. */
int bm_err_transient(int err);

/* Copy a formatted message into 'buf' of 'len' bytes (always terminated when
 * len > 0) and return 'err', so error paths read "return bm_seterr(...)". */
int bm_seterr(char *buf, size_t len, int err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif /* BM_ERR_H */
