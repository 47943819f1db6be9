/* The byte-stream transport under the Redis connection layer.
 *
 * store/redis.c speaks RESP over a struct bm_transport and never touches a
 * socket itself, so plain TCP (transport_tcp.c) and TLS (transport_tls.c,
 * OpenSSL 3, same three operations) are interchangeable: each fills the same
 * vtable and provides a bm_transport_dial_fn; redis.c picks the TLS one for
 * rediss:// URLs. Invariant: a transport is a connected,
 * ordered, reliable byte stream; once read or write has failed it is only
 * good for close.
 *
 * Thread: a transport is used by one thread at a time (the thread using the
 * connection that owns it). */
#ifndef BM_TRANSPORT_H
#define BM_TRANSPORT_H

#include <stddef.h>

struct bm_transport {
    /* Read between 1 and 'cap' bytes into 'buf', waiting at most
     * 'timeout_ms' (0 = do not wait, only take what is already there) for
     * the first byte. Stores the count in *got and returns BM_OK, or returns
     * BM_ETIMEDOUT (nothing arrived; the stream is still good), or BM_EIO
     * (the peer closed the stream or the socket failed; message in err). */
    int (*read)(struct bm_transport *t, void *buf, size_t cap, size_t *got,
                int timeout_ms, char *err, size_t errlen);
    /* Write all 'len' bytes of 'buf', waiting at most 'timeout_ms' each time
     * the peer stops accepting bytes. Returns BM_OK, BM_ETIMEDOUT or BM_EIO;
     * after a failure an unknown prefix of 'buf' may have been sent. */
    int (*write)(struct bm_transport *t, const void *buf, size_t len,
                 int timeout_ms, char *err, size_t errlen);
    /* Close the stream and free 't' (the struct itself included). */
    void (*close)(struct bm_transport *t);
    void *impl;     /* the implementation's private state */
};

/* How a connection opens its transport: connect to host:port within
 * 'connect_timeout_ms' and return a transport the caller owns (free it with
 * t->close(t)), or NULL with the reason in err. 'arg' is
 * bm_redis_opts.dial_arg (for TLS: certificates, SNI name, ...). The Redis
 * layer calls it again for every reconnect. */
typedef struct bm_transport *(*bm_transport_dial_fn)(void *arg, const char *host,
                                                     int port, int connect_timeout_ms,
                                                     char *err, size_t errlen);

/* Plain TCP: resolve 'host' (name, IPv4 or IPv6 literal), try each address
 * with a non-blocking connect bounded by 'connect_timeout_ms', set
 * TCP_NODELAY and SO_KEEPALIVE. 'arg' is ignored. Ownership as for
 * bm_transport_dial_fn. Thread: any. */
struct bm_transport *bm_transport_tcp_dial(void *arg, const char *host, int port,
                                           int connect_timeout_ms, char *err,
                                           size_t errlen);

/* Wrap an already connected stream socket 'fd' (TCP or AF_UNIX, e.g. one end
 * of a socketpair in tests). The fd is switched to non-blocking mode. On
 * success the transport owns fd and close() closes it; on failure (NULL,
 * BM_ENOMEM in err) the caller still owns fd. */
struct bm_transport *bm_transport_fd_wrap(int fd, char *err, size_t errlen);

/* What the TLS dialer needs besides host and port. Every field may be NULL.
 * The strings are borrowed: they must stay valid for as long as a dialer may
 * be called with this struct (for a Redis connection: until bm_redis_close;
 * redis.c keeps its own copies). Files are read at every dial, so a renewed
 * certificate is picked up by the next reconnect. */
struct bm_tls_conf {
    const char *ca_file;      /* PEM file of the CAs to trust; NULL: the
                                 system trust store */
    const char *cert_file;    /* PEM client certificate (chain) for mutual
                                 TLS; NULL: present none */
    const char *key_file;     /* PEM private key of cert_file; NULL: the key
                                 is in cert_file too. Set without cert_file
                                 it is an error (BM_EINVAL). */
    const char *server_name;  /* the name the server certificate must carry
                                 (and the SNI name); NULL: the dialled host.
                                 An IPv4/IPv6 literal is checked against the
                                 certificate's IP addresses and sends no SNI. */
};

/* TLS over TCP with OpenSSL 3: connect as bm_transport_tcp_dial does, then a
 * TLS handshake (TLS 1.2 or newer) bounded by 'connect_timeout_ms', with the
 * server certificate ALWAYS verified against the CAs of 'arg' (a const
 * struct bm_tls_conf *, or NULL for the system trust store and no client
 * certificate) and the server name. There is no way to skip verification.
 * On failure err says which step failed, e.g. "TLS handshake with
 * 127.0.0.1:6380: certificate verify failed: ...". Reads and writes have the
 * bounded-wait semantics of struct bm_transport; writes never raise SIGPIPE.
 * Ownership as for bm_transport_dial_fn. Thread: any (OpenSSL 3 needs no
 * global locking set-up). */
struct bm_transport *bm_transport_tls_dial(void *arg, const char *host, int port,
                                           int connect_timeout_ms, char *err,
                                           size_t errlen);

#endif /* BM_TRANSPORT_H */
