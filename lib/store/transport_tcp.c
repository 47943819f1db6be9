/* Plain-TCP (and any connected stream socket) implementation of
 * struct bm_transport.
 *
 * The socket is always non-blocking; every wait is a poll() bounded by the
 * caller's timeout and restarted on EINTR with the time that is left, so no
 * call can hang longer than its timeout. Invariant: fd is a connected stream
 * socket owned by the transport until close(). Writes use send() with
 * MSG_NOSIGNAL so a peer that went away yields EPIPE instead of killing the
 * process with SIGPIPE. */
#include "store/transport.h"

#include "common/clock.h"
#include "common/err.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct fd_impl {
    int fd;         /* connected, non-blocking stream socket */
};

/* poll() one fd for 'events' for up to timeout_ms, retrying on EINTR with the
 * remaining time. Returns 1 when ready, 0 on timeout, -1 on error (errno). */
static int wait_fd(int fd, short events, int timeout_ms)
{
    int64_t deadline = bm_mono_ms() + (timeout_ms > 0 ? timeout_ms : 0);
    for (;;) {
        struct pollfd p = { .fd = fd, .events = events, .revents = 0 };
        int64_t left = deadline - bm_mono_ms();
        int rc = poll(&p, 1, left > 0 ? (int)left : 0);
        if (rc > 0)
            return 1;
        if (rc == 0)
            return 0;
        if (errno != EINTR)
            return -1;
    }
}

static int fd_read(struct bm_transport *t, void *buf, size_t cap, size_t *got,
                   int timeout_ms, char *err, size_t errlen)
{
    struct fd_impl *im = t->impl;
    *got = 0;
    for (;;) {
        ssize_t n = recv(im->fd, buf, cap, 0);
        if (n > 0) {
            *got = (size_t)n;
            return BM_OK;
        }
        if (n == 0)
            return bm_seterr(err, errlen, BM_EIO, "connection closed by peer");
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return bm_seterr(err, errlen, BM_EIO, "recv: %s", strerror(errno));
        int w = wait_fd(im->fd, POLLIN, timeout_ms);
        if (w == 0)
            return bm_seterr(err, errlen, BM_ETIMEDOUT,
                             "no data from peer within %d ms", timeout_ms);
        if (w < 0)
            return bm_seterr(err, errlen, BM_EIO, "poll: %s", strerror(errno));
        /* Readable (or hung up): the next recv() tells which. */
    }
}

static int fd_write(struct bm_transport *t, const void *buf, size_t len,
                    int timeout_ms, char *err, size_t errlen)
{
    struct fd_impl *im = t->impl;
    const char *p = buf;
    while (len > 0) {
        ssize_t n = send(im->fd, p, len, MSG_NOSIGNAL);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
            return bm_seterr(err, errlen, BM_EIO, "send: %s", strerror(errno));
        int w = wait_fd(im->fd, POLLOUT, timeout_ms);
        if (w == 0)
            return bm_seterr(err, errlen, BM_ETIMEDOUT,
                             "peer accepted no data within %d ms", timeout_ms);
        if (w < 0)
            return bm_seterr(err, errlen, BM_EIO, "poll: %s", strerror(errno));
    }
    return BM_OK;
}

static void fd_close(struct bm_transport *t)
{
    if (t == NULL)
        return;
    struct fd_impl *im = t->impl;
    close(im->fd);
    free(im);
    free(t);
}

struct bm_transport *bm_transport_fd_wrap(int fd, char *err, size_t errlen)
{
    struct bm_transport *t = calloc(1, sizeof *t);
    struct fd_impl *im = calloc(1, sizeof *im);
    if (t == NULL || im == NULL) {
        free(t);
        free(im);
        bm_seterr(err, errlen, BM_ENOMEM, "out of memory for transport");
        return NULL;
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
        free(t);
        free(im);
        bm_seterr(err, errlen, BM_EIO, "fcntl: %s", strerror(errno));
        return NULL;
    }
    im->fd = fd;
    t->impl = im;
    t->read = fd_read;
    t->write = fd_write;
    t->close = fd_close;
    return t;
}

/* Non-blocking connect to one resolved address, bounded by timeout_ms.
 * Returns the fd or -1 with the reason in err. */
static int connect_one(const struct addrinfo *ai, int timeout_ms, char *err,
                       size_t errlen)
{
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                    ai->ai_protocol);
    if (fd < 0) {
        bm_seterr(err, errlen, BM_EIO, "socket: %s", strerror(errno));
        return -1;
    }
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        if (errno != EINPROGRESS) {
            bm_seterr(err, errlen, BM_EIO, "connect: %s", strerror(errno));
            close(fd);
            return -1;
        }
        int w = wait_fd(fd, POLLOUT, timeout_ms);
        int soerr = 0;
        socklen_t sl = sizeof soerr;
        if (w == 0) {
            bm_seterr(err, errlen, BM_ETIMEDOUT, "connect timed out after %d ms",
                      timeout_ms);
            close(fd);
            return -1;
        }
        if (w < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0 ||
            soerr != 0) {
            bm_seterr(err, errlen, BM_EIO, "connect: %s",
                      strerror(soerr != 0 ? soerr : errno));
            close(fd);
            return -1;
        }
    }
    /* Small request/reply traffic: never wait for Nagle. Keepalive lets the
     * kernel notice a peer that vanished without a FIN. Both are best effort. */
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    (void)setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    return fd;
}

struct bm_transport *bm_transport_tcp_dial(void *arg, const char *host, int port,
                                           int connect_timeout_ms, char *err,
                                           size_t errlen)
{
    (void)arg;
    char portstr[16];
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    snprintf(portstr, sizeof portstr, "%d", port);
    int rc = getaddrinfo(host, portstr, &hints, &res);
    if (rc != 0) {
        bm_seterr(err, errlen, BM_EIO, "resolve %s: %s", host, gai_strerror(rc));
        return NULL;
    }
    char last[200] = "no address";
    struct bm_transport *t = NULL;
    for (const struct addrinfo *ai = res; ai != NULL && t == NULL; ai = ai->ai_next) {
        int fd = connect_one(ai, connect_timeout_ms, last, sizeof last);
        if (fd < 0)
            continue;
        t = bm_transport_fd_wrap(fd, last, sizeof last);
        if (t == NULL)
            close(fd);
    }
    freeaddrinfo(res);
    if (t == NULL)
        bm_seterr(err, errlen, BM_EIO, "%s:%d: %s", host, port, last);
    return t;
}
