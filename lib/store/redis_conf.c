/* struct bm_conf -> struct bm_redis_opts (see redis_conf.h). Invariant: the
 * options never outlive the conf they borrow from except through
 * bm_redis_connect, which copies what it keeps. */
#include "store/redis_conf.h"

#include <string.h>

void bm_redis_opts_from_conf(struct bm_redis_opts *o, const struct bm_conf *c)
{
    memset(o, 0, sizeof *o);
    o->connect_timeout_ms = c->redis.connect_timeout_ms;
    o->io_timeout_ms = c->redis.io_timeout_ms;
    o->max_reply_bytes = c->redis.max_reply_bytes > 0 ? (size_t)c->redis.max_reply_bytes : 0;
    o->tls_ca_file = c->redis.tls_ca_file;
    o->tls_cert_file = c->redis.tls_cert_file;
    o->tls_key_file = c->redis.tls_key_file;
}

struct bm_redis *bm_redis_connect_conf(const struct bm_conf *c, char *err, size_t errlen)
{
    struct bm_redis_opts o;
    bm_redis_opts_from_conf(&o, c);
    return bm_redis_connect_opts(c, &o, err, errlen);
}

struct bm_redis *bm_redis_connect_opts(const struct bm_conf *c, const struct bm_redis_opts *o,
                                       char *err, size_t errlen)
{
    if (c->redis.cluster_n > 0)
        return bm_redis_connect_cluster((const char *const *)c->redis.cluster,
                                        c->redis.cluster_n, o, err, errlen);
    return bm_redis_connect(c->redis.url, o, err, errlen);
}
