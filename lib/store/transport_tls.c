/* TLS (OpenSSL 3) implementation of struct bm_transport, for rediss:// URLs.
 *
 * The socket is non-blocking and OpenSSL never blocks on it: every SSL call
 * that reports SSL_ERROR_WANT_READ or SSL_ERROR_WANT_WRITE is followed by a
 * poll() for THAT direction (a read may need to write during a key update, a
 * write may need to read), bounded by the caller's deadline, and then
 * retried. OpenSSL talks to the socket through our own small BIO that uses
 * send(MSG_NOSIGNAL), so a vanished peer is an error, never SIGPIPE.
 *
 * Invariants: the server certificate is always verified (chain to a trusted
 * CA, and name or IP address) -- there is deliberately no switch to turn
 * that off; the protocol is TLS 1.2 or newer; fd and ssl are owned by the
 * transport until close(). The SSL_CTX is built at every dial (files are
 * re-read, so rotated certificates take effect at the next reconnect) and
 * is kept alive only by the SSL object's reference to it.
 *
 * OpenSSL keeps errors in a per-thread queue; every SSL call here starts
 * with an empty queue (ERR_clear_error) so SSL_get_error() describes that
 * call and nothing stale. */
#include "store/transport.h"

#include "common/clock.h"
#include "common/err.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct tls_impl {
    int fd;         /* connected, non-blocking stream socket */
    SSL *ssl;       /* owns its BIO (which borrows this struct) */
    bool eof;       /* the peer closed the TCP stream (recv returned 0) */
};

/* poll() fd for 'events' until 'deadline' (monotonic ms), retrying on EINTR.
 * Returns 1 when ready, 0 on timeout, -1 on error (errno). A deadline in the
 * past still polls once with timeout 0, so "timeout 0" means "only what is
 * already there". */
static int wait_until(int fd, short events, int64_t deadline)
{
    for (;;) {
        struct pollfd p = { .fd = fd, .events = events, .revents = 0 };
        int64_t left = deadline - bm_mono_ms();
        int rc = poll(&p, 1, left > 0 ? (left > INT32_MAX ? INT32_MAX : (int)left) : 0);
        if (rc > 0)
            return 1;
        if (rc == 0)
            return 0;
        if (errno != EINTR)
            return -1;
    }
}

/* ---- the socket BIO: recv/send(MSG_NOSIGNAL) on a non-blocking fd ------- */

static int bio_write_ex(BIO *b, const char *buf, size_t len, size_t *written)
{
    struct tls_impl *im = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    *written = 0;
    for (;;) {
        ssize_t n = send(im->fd, buf, len, MSG_NOSIGNAL);
        if (n >= 0) {
            *written = (size_t)n;
            return 1;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            BIO_set_retry_write(b);
        return 0;   /* errno tells SSL_ERROR_SYSCALL callers why */
    }
}

static int bio_read_ex(BIO *b, char *buf, size_t cap, size_t *got)
{
    struct tls_impl *im = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    *got = 0;
    for (;;) {
        ssize_t n = recv(im->fd, buf, cap, 0);
        if (n > 0) {
            *got = (size_t)n;
            return 1;
        }
        if (n == 0) {
            im->eof = true;
            return 0;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            BIO_set_retry_read(b);
        return 0;
    }
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)num;
    (void)ptr;
    struct tls_impl *im = BIO_get_data(b);
    switch (cmd) {
    case BIO_CTRL_FLUSH:
        return 1;   /* send() buffers nothing of ours */
    case BIO_CTRL_EOF:
        /* Lets OpenSSL tell a truncated stream from a would-block. */
        return im != NULL && im->eof ? 1 : 0;
    default:
        return 0;   /* not supported: OpenSSL falls back (e.g. no kTLS) */
    }
}

static BIO_METHOD *g_bio_method;
static CRYPTO_ONCE g_bio_once = CRYPTO_ONCE_STATIC_INIT;

static void bio_method_init(void)
{
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK,
                                 "biomatch socket");
    if (m == NULL)
        return;
    if (!BIO_meth_set_write_ex(m, bio_write_ex) || !BIO_meth_set_read_ex(m, bio_read_ex) ||
        !BIO_meth_set_ctrl(m, bio_ctrl)) {
        BIO_meth_free(m);
        return;
    }
    g_bio_method = m;   /* lives for the process; never freed */
}

/* ---- errors ------------------------------------------------------------- */

/* Describe why an SSL call failed with SSL_get_error() == 'e' and return
 * BM_EIO. 'what' names the step ("read", "handshake with host:port"). */
static int ssl_fail(struct tls_impl *im, int e, int saved_errno, const char *what,
                    char *err, size_t errlen)
{
    char detail[256] = "";
    unsigned long code = ERR_peek_last_error();
    if (code != 0)
        ERR_error_string_n(code, detail, sizeof detail);
    ERR_clear_error();
    if (im->ssl != NULL && SSL_get_verify_result(im->ssl) != X509_V_OK) {
        long v = SSL_get_verify_result(im->ssl);
        return bm_seterr(err, errlen, BM_EIO,
                         "TLS %s: certificate verify failed: %s (X509 error %ld)", what,
                         X509_verify_cert_error_string(v), v);
    }
    if (e == SSL_ERROR_ZERO_RETURN)
        return bm_seterr(err, errlen, BM_EIO, "TLS %s: connection closed by peer", what);
    if (im->eof)
        return bm_seterr(err, errlen, BM_EIO,
                         "TLS %s: connection closed by peer%s%s", what,
                         detail[0] != '\0' ? ": " : "", detail);
    if (detail[0] != '\0')
        return bm_seterr(err, errlen, BM_EIO, "TLS %s: %s", what, detail);
    if (e == SSL_ERROR_SYSCALL && saved_errno != 0)
        return bm_seterr(err, errlen, BM_EIO, "TLS %s: %s", what, strerror(saved_errno));
    return bm_seterr(err, errlen, BM_EIO, "TLS %s: SSL error %d", what, e);
}

/* After an SSL call failed with 'e': wait for what it wants until 'deadline'.
 * Returns BM_OK (retry the call), BM_ETIMEDOUT, or BM_EIO (with err set). */
static int ssl_wait(struct tls_impl *im, int e, int64_t deadline, const char *what,
                    char *err, size_t errlen)
{
    int saved = errno;
    if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
        return ssl_fail(im, e, saved, what, err, errlen);
    int w = wait_until(im->fd, e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, deadline);
    if (w == 0)
        return BM_ETIMEDOUT;
    if (w < 0)
        return bm_seterr(err, errlen, BM_EIO, "TLS %s: poll: %s", what, strerror(errno));
    return BM_OK;   /* ready (or hung up): the next SSL call tells which */
}

/* ---- the transport ------------------------------------------------------ */

static int tls_read(struct bm_transport *t, void *buf, size_t cap, size_t *got,
                    int timeout_ms, char *err, size_t errlen)
{
    struct tls_impl *im = t->impl;
    int64_t deadline = bm_mono_ms() + (timeout_ms > 0 ? timeout_ms : 0);
    *got = 0;
    for (;;) {
        /* SSL_read_ex first hands out bytes it already decrypted, so no
         * separate SSL_pending() check is needed before polling. */
        ERR_clear_error();
        errno = 0;
        if (SSL_read_ex(im->ssl, buf, cap, got) == 1)
            return BM_OK;
        int e = SSL_get_error(im->ssl, 0);
        int rc = ssl_wait(im, e, deadline, "read", err, errlen);
        if (rc == BM_ETIMEDOUT)
            return bm_seterr(err, errlen, BM_ETIMEDOUT, "no data from peer within %d ms",
                             timeout_ms);
        if (rc != BM_OK)
            return rc;
    }
}

/* After a failed write: did the peer say why before it hung up? Under
 * TLS 1.3 a server judges our client certificate only after our side of
 * the handshake is done, so its refusal (an alert) may be waiting unread
 * while our next write meets a reset; the alert is the useful message.
 * Reads without waiting; true with the alert's text in 'why'. */
static bool peer_alert(struct tls_impl *im, char *why, size_t len)
{
    char scratch[256];
    size_t got = 0;
    ERR_clear_error();
    bool found = false;
    if (SSL_read_ex(im->ssl, scratch, sizeof scratch, &got) != 1 &&
        SSL_get_error(im->ssl, 0) == SSL_ERROR_SSL && ERR_peek_last_error() != 0) {
        ERR_error_string_n(ERR_peek_last_error(), why, len);
        found = strstr(why, "alert") != NULL;
    }
    ERR_clear_error();
    return found;
}

static int tls_write(struct bm_transport *t, const void *buf, size_t len, int timeout_ms,
                     char *err, size_t errlen)
{
    struct tls_impl *im = t->impl;
    const char *p = buf;
    int64_t deadline = bm_mono_ms() + timeout_ms;
    while (len > 0) {
        size_t n = 0;
        ERR_clear_error();
        errno = 0;
        /* Partial writes are on, so n may be less than len. */
        if (SSL_write_ex(im->ssl, p, len, &n) == 1) {
            p += n;
            len -= n;
            deadline = bm_mono_ms() + timeout_ms;   /* progress: a fresh wait */
            continue;
        }
        int e = SSL_get_error(im->ssl, 0);
        int rc = ssl_wait(im, e, deadline, "write", err, errlen);
        if (rc == BM_ETIMEDOUT)
            return bm_seterr(err, errlen, BM_ETIMEDOUT,
                             "peer accepted no data within %d ms", timeout_ms);
        char why[256];
        if (rc == BM_EIO && peer_alert(im, why, sizeof why))
            return bm_seterr(err, errlen, BM_EIO, "TLS write: peer refused: %s", why);
        if (rc != BM_OK)
            return rc;
    }
    return BM_OK;
}

static void tls_close(struct bm_transport *t)
{
    if (t == NULL)
        return;
    struct tls_impl *im = t->impl;
    if (im->ssl != NULL) {
        /* Best effort close_notify; never wait for the peer's answer. A
         * broken stream is simply dropped. */
        if (!im->eof) {
            ERR_clear_error();
            (void)SSL_shutdown(im->ssl);
        }
        ERR_clear_error();
        SSL_free(im->ssl);
    }
    if (im->fd >= 0)
        close(im->fd);
    free(im);
    free(t);
}

/* ---- dial --------------------------------------------------------------- */

/* Non-blocking connect to one resolved address within timeout_ms. Returns
 * the connected fd or -1 with the reason in err. */
static int connect_one(const struct addrinfo *ai, int timeout_ms, char *err, size_t errlen)
{
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                    ai->ai_protocol);
    if (fd < 0) {
        bm_seterr(err, errlen, BM_EIO, "socket: %s", strerror(errno));
        return -1;
    }
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        int soerr = 0;
        socklen_t sl = sizeof soerr;
        int w = errno == EINPROGRESS ? wait_until(fd, POLLOUT, bm_mono_ms() + timeout_ms) : -1;
        if (w == 0)
            bm_seterr(err, errlen, BM_ETIMEDOUT, "connect timed out after %d ms", timeout_ms);
        else if (w < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0 || soerr != 0)
            bm_seterr(err, errlen, BM_EIO, "connect: %s", strerror(soerr != 0 ? soerr : errno));
        if (w != 1 || soerr != 0) {
            close(fd);
            return -1;
        }
    }
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    (void)setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    return fd;
}

static int tcp_connect(const char *host, int port, int timeout_ms, char *err, size_t errlen)
{
    char portstr[16];
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    snprintf(portstr, sizeof portstr, "%d", port);
    int rc = getaddrinfo(host, portstr, &hints, &res);
    if (rc != 0) {
        bm_seterr(err, errlen, BM_EIO, "resolve %s: %s", host, gai_strerror(rc));
        return -1;
    }
    char last[160] = "no address";
    int fd = -1;
    for (const struct addrinfo *ai = res; ai != NULL && fd < 0; ai = ai->ai_next)
        fd = connect_one(ai, timeout_ms, last, sizeof last);
    freeaddrinfo(res);
    if (fd < 0)
        bm_seterr(err, errlen, BM_EIO, "%s", last);
    return fd;
}

/* The TLS client context for one dial: verification on, TLS >= 1.2, CAs and
 * the optional client certificate from 'tc'. NULL with err set on failure. */
static SSL_CTX *make_ctx(const struct bm_tls_conf *tc, char *err, size_t errlen)
{
    /* OpenSSL reports a missing file as "system lib"; say what is wrong. */
    const char *files[3] = { tc != NULL ? tc->ca_file : NULL, tc != NULL ? tc->cert_file : NULL,
                             tc != NULL ? tc->key_file : NULL };
    static const char *const roles[3] = { "CA file", "client certificate", "client key" };
    for (int i = 0; i < 3; i++) {
        if (files[i] != NULL && access(files[i], R_OK) != 0) {
            bm_seterr(err, errlen, BM_EINVAL, "TLS: %s %s: %s", roles[i], files[i],
                      strerror(errno));
            return NULL;
        }
    }
    char detail[256] = "";
    const char *step = "create context";
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL)
        goto fail;
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    step = "set minimum protocol TLS 1.2";
    if (!SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION))
        goto fail;
    if (tc != NULL && tc->ca_file != NULL) {
        step = "load CA file";
        if (!SSL_CTX_load_verify_locations(ctx, tc->ca_file, NULL))
            goto fail;
    } else {
        step = "load the system trust store";
        if (!SSL_CTX_set_default_verify_paths(ctx))
            goto fail;
    }
    if (tc != NULL && tc->cert_file != NULL) {
        const char *key = tc->key_file != NULL ? tc->key_file : tc->cert_file;
        step = "load client certificate";
        if (!SSL_CTX_use_certificate_chain_file(ctx, tc->cert_file))
            goto fail;
        step = "load client key";
        if (!SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM))
            goto fail;
        step = "match client key and certificate";
        if (!SSL_CTX_check_private_key(ctx))
            goto fail;
    } else if (tc != NULL && tc->key_file != NULL) {
        SSL_CTX_free(ctx);
        bm_seterr(err, errlen, BM_EINVAL, "TLS: a client key file needs a certificate file");
        return NULL;
    }
    return ctx;
fail:
    ERR_error_string_n(ERR_peek_last_error(), detail, sizeof detail);
    ERR_clear_error();
    SSL_CTX_free(ctx);
    const char *file = NULL;
    if (strcmp(step, "load CA file") == 0)
        file = tc->ca_file;
    else if (strcmp(step, "load client certificate") == 0)
        file = tc->cert_file;
    else if (strcmp(step, "load client key") == 0)
        file = tc->key_file != NULL ? tc->key_file : tc->cert_file;
    bm_seterr(err, errlen, BM_EINVAL, "TLS: %s%s%s: %s", step, file != NULL ? " " : "",
              file != NULL ? file : "", detail);
    return NULL;
}

static bool is_ip_literal(const char *s)
{
    unsigned char buf[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

/* Tell OpenSSL which identity the server must prove: an IP address is
 * matched against the certificate's IP SANs (and sent as no SNI, RFC 6066),
 * a name against its DNS SANs (wildcards only as a whole left label). */
static bool set_peer_identity(SSL *ssl, const char *name)
{
    if (is_ip_literal(name))
        return X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name) == 1;
    SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    return SSL_set_tlsext_host_name(ssl, name) == 1 && SSL_set1_host(ssl, name) == 1;
}

struct bm_transport *bm_transport_tls_dial(void *arg, const char *host, int port,
                                           int connect_timeout_ms, char *err,
                                           size_t errlen)
{
    const struct bm_tls_conf *tc = arg;
    const char *name = tc != NULL && tc->server_name != NULL ? tc->server_name : host;
    char what[300];
    snprintf(what, sizeof what, "handshake with %s:%d", host, port);

    CRYPTO_THREAD_run_once(&g_bio_once, bio_method_init);
    if (g_bio_method == NULL) {
        bm_seterr(err, errlen, BM_ENOMEM, "TLS: cannot create the socket BIO method");
        return NULL;
    }
    SSL_CTX *ctx = make_ctx(tc, err, errlen);
    if (ctx == NULL)
        return NULL;
    struct bm_transport *t = calloc(1, sizeof *t);
    struct tls_impl *im = calloc(1, sizeof *im);
    SSL *ssl = SSL_new(ctx);
    SSL_CTX_free(ctx);  /* ssl holds its own reference */
    BIO *bio = BIO_new(g_bio_method);
    if (t == NULL || im == NULL || ssl == NULL || bio == NULL) {
        BIO_free(bio);
        SSL_free(ssl);
        free(im);
        free(t);
        ERR_clear_error();
        bm_seterr(err, errlen, BM_ENOMEM, "TLS: out of memory");
        return NULL;
    }
    im->fd = -1;
    BIO_set_data(bio, im);
    BIO_set_init(bio, 1);
    SSL_set_bio(ssl, bio, bio);   /* ssl owns bio from here */
    im->ssl = ssl;
    t->impl = im;
    t->read = tls_read;
    t->write = tls_write;
    t->close = tls_close;
    SSL_set_mode(ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    if (!set_peer_identity(ssl, name)) {
        ERR_clear_error();
        tls_close(t);
        bm_seterr(err, errlen, BM_EINVAL, "TLS: cannot verify against server name '%s'",
                  name);
        return NULL;
    }

    char msg[200];
    im->fd = tcp_connect(host, port, connect_timeout_ms, msg, sizeof msg);
    if (im->fd < 0) {
        tls_close(t);
        bm_seterr(err, errlen, BM_EIO, "TLS to %s:%d: %s", host, port, msg);
        return NULL;
    }
    int64_t deadline = bm_mono_ms() + connect_timeout_ms;
    for (;;) {
        ERR_clear_error();
        errno = 0;
        int r = SSL_connect(ssl);
        if (r == 1)
            break;
        int rc = ssl_wait(im, SSL_get_error(ssl, r), deadline, what, err, errlen);
        if (rc == BM_ETIMEDOUT)
            bm_seterr(err, errlen, BM_ETIMEDOUT, "TLS %s: timed out after %d ms", what,
                      connect_timeout_ms);
        if (rc != BM_OK) {
            im->eof = true;     /* no close_notify on a failed handshake */
            tls_close(t);
            return NULL;
        }
    }
    return t;
}
