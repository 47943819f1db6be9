/* Redis Cluster routing under the public struct bm_redis (lib/store only;
 * callers use redis.h, which switches to this for redis+cluster:// URLs and
 * bm_redis_connect_cluster).
 *
 * A cluster keeps a slot map (CLUSTER SHARDS, or CLUSTER SLOTS on servers
 * without it) and one ordinary struct bm_redis per node, opened on first use
 * with the seed URL's scheme, credentials, TLS files and limits. Each command
 * goes to the master of its key's slot; MOVED updates the map and re-sends,
 * ASK re-sends once after ASKING, TRYAGAIN and CLUSTERDOWN are retried with
 * backoff (all three mean the command did not run). A command that reached a
 * node whose connection then broke is never re-sent (as for one node).
 * Pipelined commands are appended to their node's own pipeline, so one
 * round trip per node serves a batch. See docs/internals/store.md.
 *
 * Error convention: every function that fails writes the reason into the
 * caller's err/errlen; BM_EREDIS still hands over the ERROR reply.
 * Thread: as for struct bm_redis, one thread at a time. */
#ifndef BM_REDIS_CLUSTER_H
#define BM_REDIS_CLUSTER_H

#include <stddef.h>

#include "store/redis.h"

struct bm_cluster;

/* Open from 'nseeds' seed URLs (redis:// or rediss://, no database other
 * than 0; all with the same scheme and credentials) and load the slot map
 * from the first seed that answers. 'opts' as for bm_redis_connect (copied).
 * Returns the cluster (caller owns it; bm_cluster_close) or NULL with the
 * reason in err. */
struct bm_cluster *bm_cluster_open(const char *const *seeds, size_t nseeds,
                                   const struct bm_redis_opts *opts, char *err, size_t errlen);

/* Close every node connection and free the cluster. Accepts NULL. */
void bm_cluster_close(struct bm_cluster *cl);

/* bm_redis_command, bm_redis_append, bm_redis_get_reply, bm_redis_pending,
 * bm_redis_eval and bm_redis_reply_recycle for a cluster: same arguments,
 * results and ownership. */
int bm_cluster_command(struct bm_cluster *cl, int argc, const char *const *argv,
                       const size_t *argvlen, struct bm_redis_reply **reply, char *err,
                       size_t errlen);
int bm_cluster_append(struct bm_cluster *cl, int argc, const char *const *argv,
                      const size_t *argvlen, char *err, size_t errlen);
int bm_cluster_get_reply(struct bm_cluster *cl, struct bm_redis_reply **reply, char *err,
                         size_t errlen);
size_t bm_cluster_pending(const struct bm_cluster *cl);
int bm_cluster_eval(struct bm_cluster *cl, const char *script, int nkeys, int argc,
                    const char *const *argv, const size_t *argvlen,
                    struct bm_redis_reply **reply, char *err, size_t errlen);
void bm_cluster_recycle(struct bm_cluster *cl, struct bm_redis_reply *r);

/* bm_redis_each_master for a cluster (see redis.h), with the reason of a
 * failure in err. */
int bm_cluster_each_master(struct bm_cluster *cl, bm_redis_node_fn fn, void *arg, char *err,
                           size_t errlen);

#endif /* BM_REDIS_CLUSTER_H */
