/* Header helpers: a fixed-capacity, non-owning list for building outgoing
 * headers, and lookups over the header arrays of consumed messages.
 *
 * Invariant: nothing here allocates, so headers can never leak; a
 * bm_bus_headers only borrows its names and values, and bm_producer_send
 * copies them into librdkafka before returning. */
#include "bus/bus.h"

#include <string.h>

#include "common/err.h"

void bm_bus_headers_init(struct bm_bus_headers *h)
{
    h->n = 0;
}

int bm_bus_headers_add(struct bm_bus_headers *h, const char *name,
                       const void *value, size_t len)
{
    if (name == NULL || (value == NULL && len > 0))
        return BM_EINVAL;
    if (h->n >= BM_BUS_MAX_HEADERS)
        return BM_ERANGE;
    h->v[h->n].name = name;
    h->v[h->n].value = value;
    h->v[h->n].len = value == NULL ? 0 : len;
    h->n++;
    return BM_OK;
}

int bm_bus_headers_add_str(struct bm_bus_headers *h, const char *name,
                           const char *value)
{
    return bm_bus_headers_add(h, name, value, value == NULL ? 0 : strlen(value));
}

const struct bm_bus_header *bm_bus_header_find(const struct bm_bus_header *hdrs,
                                               size_t n, const char *name)
{
    for (size_t i = n; i > 0; i--)
        if (hdrs[i - 1].name != NULL && strcmp(hdrs[i - 1].name, name) == 0)
            return &hdrs[i - 1];
    return NULL;
}

int bm_bus_header_get_str(const struct bm_bus_header *hdrs, size_t n,
                          const char *name, char *buf, size_t len)
{
    if (len == 0)
        return BM_ERANGE;
    buf[0] = '\0';
    const struct bm_bus_header *h = bm_bus_header_find(hdrs, n, name);
    if (h == NULL)
        return BM_ENOTFOUND;
    if (h->len >= len || (h->len > 0 && memchr(h->value, '\0', h->len) != NULL))
        return BM_ERANGE;
    if (h->len > 0)
        memcpy(buf, h->value, h->len);
    buf[h->len] = '\0';
    return BM_OK;
}
