/* Redis connection options from the process configuration: the one place
 * that maps the redis.* keys of struct bm_conf (docs/config.md) onto
 * struct bm_redis_opts, so every program connects the same way (timeouts,
 * reply limit, TLS files for rediss:// URLs). */
#ifndef BM_REDIS_CONF_H
#define BM_REDIS_CONF_H

#include <stddef.h>

#include "conf/conf.h"
#include "store/redis.h"

/* Fill 'o' from 'c': zero everything, then connect_timeout_ms,
 * io_timeout_ms, max_reply_bytes and the tls_* files. The strings in 'o'
 * are borrowed from 'c' (bm_redis_connect copies them). A caller may adjust
 * fields afterwards. Thread: any; 'c' is only read. */
void bm_redis_opts_from_conf(struct bm_redis_opts *o, const struct bm_conf *c);

/* bm_redis_connect_opts(c, options from 'c'). */
struct bm_redis *bm_redis_connect_conf(const struct bm_conf *c, char *err, size_t errlen);

/* Connect where 'c' says, with options 'o': the redis.cluster seeds when
 * the list is set (bm_redis_connect_cluster), else redis.url (which may be
 * a redis+cluster:// URL). Returns the connection (caller owns it;
 * bm_redis_close) or NULL with the reason in err. */
struct bm_redis *bm_redis_connect_opts(const struct bm_conf *c, const struct bm_redis_opts *o,
                                       char *err, size_t errlen);

#endif /* BM_REDIS_CONF_H */
