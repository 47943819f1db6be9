/* Names for enum bm_err and the one helper that fills a caller's error
 * buffer. Kept tiny on purpose: every module links it. */
#include "err.h"

#include <stdarg.h>
#include <stdio.h>

const char *bm_strerror(int err)
{
    switch ((enum bm_err)err) {
    case BM_OK: return "ok";
    case BM_ENOMEM: return "out of memory";
    case BM_EINVAL: return "invalid argument";
    case BM_ERANGE: return "over a size limit";
    case BM_EPROTO: return "malformed data";
    case BM_EIO: return "I/O error";
    case BM_ETIMEDOUT: return "timed out";
    case BM_ENOTFOUND: return "not found";
    case BM_ECONFLICT: return "conflict";
    case BM_ECHECKSUM: return "checksum mismatch";
    case BM_EKAFKA: return "Kafka error";
    case BM_EREDIS: return "Redis error";
    case BM_ECLOSED: return "closed";
    case BM_EUNSUPPORTED: return "unsupported";
    case BM_EFULL: return "queue full";
    case BM_EUNAVAIL: return "unavailable";
    case BM_EDENIED: return "access denied";
    }
    return "unknown error";
}

int bm_err_transient(int err)
{
    switch (err) {
    case BM_EFULL:
    case BM_EUNAVAIL:
    case BM_ETIMEDOUT:
    case BM_EIO:
    case BM_ENOMEM:
    case BM_EKAFKA:
        return 1;
    default:
        return 0;
    }
}

int bm_seterr(char *buf, size_t len, int err, const char *fmt, ...)
{
    if (buf != NULL && len > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(buf, len, fmt, ap);
        va_end(ap);
    }
    return err;
}
