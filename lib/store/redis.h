/* biomatch's own thin Redis client: one synchronous connection speaking
 * RESP2 over a struct bm_transport (plain TCP, or TLS for rediss://), with hard
 * limits on what a reply may cost us.
 *
 * hiredis is used only to encode commands and to parse replies; no hiredis
 * type appears here. Every reply is checked against the connection's limits
 * (bulk length, total reply bytes, element count) from its RESP headers
 * BEFORE its payload is buffered, so a hostile or confused server cannot
 * make us allocate more than max_reply_bytes (plus one read buffer) per
 * reply. See docs/internals/store.md.
 *
 * Errors: functions return BM_OK or a negative enum bm_err (common/err.h).
 * The connection keeps a sticky err + errstr (bm_redis_err/bm_redis_errstr)
 * describing the most recent failure; success does not clear it
 * (bm_redis_clear_err does). Expected outcomes (a missing key ->
 * BM_ENOTFOUND) are not failures and leave it alone.
 *
 * Connection failures: after an I/O error, a timeout, a protocol error or a
 * refused (over-limit) reply the connection is "broken": the socket is closed
 * at once (we never read the rest of an oversized reply) and the NEXT command
 * reconnects (bounded attempts with backoff), re-AUTHs and re-SELECTs the db.
 * A command whose reply was lost returns the error; it is never re-sent
 * behind the caller's back.
 *
 * Redis Cluster: a redis+cluster:// URL or bm_redis_connect_cluster gives a
 * struct bm_redis that routes every command to the master of its key's slot
 * over one connection per node (each as above: TLS, AUTH, limits,
 * reconnect), following MOVED and ASK and retrying TRYAGAIN and CLUSTERDOWN;
 * the functions below behave the same on both kinds. A command must touch
 * one slot (hash tags); per-node commands (SCAN, FLUSHALL, ...) are refused
 * and run through bm_redis_each_master instead.
 *
 * Thread: a connection is used by one thread at a time; it has no locks.
 * Different connections are independent. */
#ifndef BM_REDIS_H
#define BM_REDIS_H

#include <stdbool.h>
#include <stddef.h>

#include "store/transport.h"

struct bm_redis;

/* Connection options. Zero in any field selects its default, so
 * "struct bm_redis_opts o = {0};" is a valid start. */
struct bm_redis_opts {
    int connect_timeout_ms;     /* per connect attempt; default 5000 */
    int io_timeout_ms;          /* longest silence while reading or writing a
                                   command; default 10000 */
    size_t max_reply_bytes;     /* largest reply (wire bytes, all nested
                                   elements together); default 512 MiB */
    size_t max_elements;        /* most elements in one reply, counted over all
                                   its (nested) aggregates; default 1 Mi,
                                   at most INT_MAX */
    int reconnect_attempts;     /* extra connect attempts after the first one
                                   fails, with backoff 50 ms doubling to 1 s;
                                   default 3; negative = no extra attempts */
    bm_transport_dial_fn dial;  /* opens the transport; default
                                   bm_transport_tcp_dial for redis:// and
                                   bm_transport_tls_dial (with the tls_*
                                   fields below) for rediss:// URLs */
    void *dial_arg;             /* passed to dial; not owned */
    /* TLS, used only for rediss:// URLs with the default dialer (see
     * struct bm_tls_conf). The strings are copied by bm_redis_connect. The
     * server certificate is always verified; NULL tls_ca_file = the system
     * trust store. */
    const char *tls_ca_file;    /* PEM CAs to trust */
    const char *tls_cert_file;  /* PEM client certificate (mutual TLS) */
    const char *tls_key_file;   /* its private key; NULL: in tls_cert_file */
    const char *tls_server_name; /* name to verify and send as SNI instead
                                    of the URL host */
};

#define BM_REDIS_DEFAULT_MAX_REPLY_BYTES ((size_t)512 << 20)
#define BM_REDIS_DEFAULT_MAX_ELEMENTS ((size_t)1 << 20)

enum bm_redis_reply_type {
    BM_REDIS_STRING = 1,        /* bulk string: str, len (binary safe) */
    BM_REDIS_ARRAY = 2,         /* elements, element[] */
    BM_REDIS_INTEGER = 3,       /* integer */
    BM_REDIS_NIL = 4,           /* nil bulk or nil array */
    BM_REDIS_STATUS = 5,        /* simple string such as "OK": str, len */
    BM_REDIS_ERROR = 6,         /* server error such as "ERR ...": str, len */
};

/* One reply. For STRING, STATUS and ERROR, 'str' holds 'len' bytes followed
 * by a NUL that is not counted (so text replies can be used as C strings;
 * a binary STRING may contain NULs). Ownership: the caller owns a reply
 * returned to it, including every nested element, and frees the whole tree
 * with bm_redis_reply_free(). A caller may steal 'str' (set it to NULL before
 * freeing; it was allocated with malloc). */
struct bm_redis_reply {
    enum bm_redis_reply_type type;
    long long integer;          /* INTEGER */
    size_t len;                 /* STRING, STATUS, ERROR: bytes in str */
    char *str;                  /* STRING, STATUS, ERROR; else NULL */
    size_t elements;            /* ARRAY: number of entries in element */
    struct bm_redis_reply **element; /* ARRAY; else NULL */
};

/* Free a reply and everything below it. Accepts NULL. */
void bm_redis_reply_free(struct bm_redis_reply *r);

/* Connect to 'url': redis://[[user]:password@]host[:port][/db]
 * (port default 6379, db default 0; user and password may be %XX-encoded;
 * an IPv6 host is written [::1]) or rediss://... for TLS (verified against
 * opts->tls_ca_file or the system trust store; see struct bm_tls_conf).
 * 'opts' may be NULL (all defaults); it is copied, its strings too.
 * Connecting tries up to 1 + reconnect_attempts times, then AUTHs and
 * SELECTs the db when the URL asks for them.
 * Returns the connection, owned by the caller (bm_redis_close), or NULL with
 * the reason in err (nothing to free). Thread: any. */
struct bm_redis *bm_redis_connect(const char *url, const struct bm_redis_opts *opts,
                                  char *err, size_t errlen);

/* Connect to a Redis Cluster through 'nseeds' seed URLs: redis:// or
 * rediss:// with one host each, or redis+cluster:// / rediss+cluster://
 * with a comma-separated host list (redis+cluster://:pw@h1:7000,h2:7001).
 * All seeds share one scheme and one set of credentials, which every node
 * connection then uses with 'opts' (copied); the database must be 0. The
 * slot map is read from the first seed that answers (CLUSTER SHARDS, or
 * CLUSTER SLOTS before Redis 7). bm_redis_connect calls this for a
 * redis+cluster:// or rediss+cluster:// URL.
 * Returns the connection, owned by the caller (bm_redis_close), or NULL with
 * the reason in err. Thread: any. */
struct bm_redis *bm_redis_connect_cluster(const char *const *seeds, size_t nseeds,
                                          const struct bm_redis_opts *opts, char *err,
                                          size_t errlen);

/* True when 'c' is a Redis Cluster connection. */
bool bm_redis_is_cluster(const struct bm_redis *c);

/* The Redis Cluster slot (0..16383) of a key: CRC16 of the key, or of its
 * hash tag (the bytes between the first '{' and the next '}', if any). */
unsigned bm_redis_key_slot(const void *key, size_t len);

/* What bm_redis_each_master calls for each master: 'node' is that master's
 * own connection and belongs to the connection given to
 * bm_redis_each_master (use it during the call only; never close it).
 * Return BM_OK to go on, anything else to stop. */
typedef int (*bm_redis_node_fn)(struct bm_redis *node, void *arg);

/* Call fn(node, arg) once per master: for one server, fn(c, arg); for a
 * cluster, with each master's own connection, after refreshing the slot map
 * and connecting to every master (if one cannot be reached, BM_EIO and fn
 * is never called). For per-node commands such as SCAN or FLUSHALL. Stops
 * at the first result of fn other than BM_OK and returns it (errstr names
 * the node). Not allowed while pipelined replies are pending (BM_EINVAL). */
int bm_redis_each_master(struct bm_redis *c, bm_redis_node_fn fn, void *arg);

/* Make sure the connection is open, reconnecting (with the usual attempts
 * and backoff) when it is broken or the server closed it; nothing is sent.
 * BM_OK, or the connect failure (BM_EIO, ...) with errstr set. A cluster
 * connection opens nodes on demand: BM_OK. */
int bm_redis_ensure(struct bm_redis *c);

/* Close the connection and free it, with any buffered commands and unread
 * replies. Accepts NULL. */
void bm_redis_close(struct bm_redis *c);

/* The sticky error: the enum bm_err of the most recent failure (BM_OK if
 * none since connect or bm_redis_clear_err) and its message ("" if none).
 * The string belongs to the connection and changes with the next failure. */
int bm_redis_err(const struct bm_redis *c);
const char *bm_redis_errstr(const struct bm_redis *c);
void bm_redis_clear_err(struct bm_redis *c);

/* Send one command (argc arguments, argv[i] of argvlen[i] bytes; binary
 * safe; no argv[i] may be NULL, use "" for an empty argument) and wait for
 * its reply. Not allowed while pipelined replies are pending on a healthy
 * connection (BM_EINVAL); on a broken one it reconnects and drops them.
 * Nothing in argv is retained.
 *
 * Returns BM_OK with the reply in *reply (caller frees), or BM_EREDIS when
 * the server answered with an error reply: then *reply holds that ERROR reply
 * (caller frees) and errstr its message; the connection stays healthy. On
 * any other failure *reply is NULL: BM_EINVAL (bad arguments), BM_ERANGE
 * (reply over a limit), BM_EPROTO (malformed reply), BM_EIO (connection lost
 * or could not be re-established; the command may or may not have run),
 * BM_ETIMEDOUT, BM_ENOMEM. 'reply' may be NULL to discard the reply. */
int bm_redis_command(struct bm_redis *c, int argc, const char *const *argv,
                     const size_t *argvlen, struct bm_redis_reply **reply);

/* Convenience for C-string arguments: bm_redis_cmd(c, &r, "SET", k, v, NULL).
 * The argument list ends with NULL. Same results as bm_redis_command. */
int bm_redis_cmd(struct bm_redis *c, struct bm_redis_reply **reply, const char *arg0,
                 ...) __attribute__((sentinel));

/* Pipelining: bm_redis_append encodes and buffers a command; argv is not
 * retained and nothing is sent yet. If the connection is broken it
 * reconnects first, which drops replies still owed from before the break.
 * bm_redis_get_reply sends everything buffered in one write, then returns
 * the oldest pending reply, with the same results and ownership as
 * bm_redis_command. Once the connection breaks, each reply still owed
 * returns the error that broke it. BM_EINVAL when no reply is pending. */
int bm_redis_append(struct bm_redis *c, int argc, const char *const *argv,
                    const size_t *argvlen);
int bm_redis_get_reply(struct bm_redis *c, struct bm_redis_reply **reply);

/* Free 'r' like bm_redis_reply_free (NULL accepted), but while replies are
 * still owed on 'c' keep the memory of a top-level STRING reply's 'str' in
 * 'c' for the next large bulk reply, so a pipelined run of big GETs reuses
 * one already-faulted buffer instead of fresh pages per blob. At most one
 * buffer is kept; it is freed as soon as no reply is owed any more (or the
 * connection breaks or closes), so nothing stays held after a pipeline
 * drains. 'r' must not be used afterwards. Thread: as for 'c'. */
void bm_redis_reply_recycle(struct bm_redis *c, struct bm_redis_reply *r);

/* Number of replies still owed by the server for appended commands. */
size_t bm_redis_pending(const struct bm_redis *c);

/* PING; BM_OK when the server answered PONG. */
int bm_redis_ping(struct bm_redis *c);

/* GET key. On BM_OK *val is a malloc'd buffer of *vallen bytes (plus one NUL
 * not counted) owned by the caller. BM_ENOTFOUND when the key does not
 * exist, BM_EREDIS for e.g. WRONGTYPE; on any failure *val is NULL and
 * *vallen 0. */
int bm_redis_get(struct bm_redis *c, const void *key, size_t keylen, void **val,
                 size_t *vallen);

/* SET key val (val may be NULL when vallen is 0), with a time to live in
 * milliseconds when ttl_ms > 0. Nothing is retained. */
int bm_redis_set(struct bm_redis *c, const void *key, size_t keylen, const void *val,
                 size_t vallen, long long ttl_ms);

/* DEL key: BM_OK when it existed, BM_ENOTFOUND when it did not. */
int bm_redis_del(struct bm_redis *c, const void *key, size_t keylen);

/* SCRIPT LOAD 'script'; on BM_OK 'sha' holds the 40-hex-digit SHA1 and a NUL. */
int bm_redis_script_load(struct bm_redis *c, const char *script, char sha[41]);

/* EVALSHA sha nkeys argv...: argv holds the nkeys keys followed by the other
 * arguments (argc in total, binary safe). Results and reply ownership as
 * bm_redis_command; an unknown script is BM_EREDIS with "NOSCRIPT ..." in
 * errstr. */
int bm_redis_evalsha(struct bm_redis *c, const char *sha, int nkeys, int argc,
                     const char *const *argv, const size_t *argvlen,
                     struct bm_redis_reply **reply);

/* Run a Lua script by its SHA1: the connection caches script -> SHA1 after
 * the first SCRIPT LOAD and sends EVALSHA; on NOSCRIPT (server restarted or
 * SCRIPT FLUSH) it loads the script again and retries once (safe: NOSCRIPT
 * means nothing ran). Arguments, results and ownership as bm_redis_evalsha.
 * 'script' is copied into the cache. */
int bm_redis_eval(struct bm_redis *c, const char *script, int nkeys, int argc,
                  const char *const *argv, const size_t *argvlen,
                  struct bm_redis_reply **reply);

/* The server's redis_version from INFO server (e.g. "7.0.15") into buf
 * (always NUL-terminated when len > 0). BM_EPROTO if INFO lacks it,
 * BM_ERANGE if buf is too small. */
int bm_redis_server_version(struct bm_redis *c, char *buf, size_t len);

#endif /* BM_REDIS_H */
