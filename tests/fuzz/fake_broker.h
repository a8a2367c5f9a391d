/* A minimal in-process broker peer for the network fuzz targets: a loopback
 * listening socket, accepted connections, line/RESP input buffers. Used from
 * the fuzzing thread while the bus runs on its own loop thread. */
#ifndef PSRPC_FUZZ_FAKE_BROKER_H
#define PSRPC_FUZZ_FAKE_BROKER_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define FB_MAX_CONNS 8

typedef struct fb_conn {
    int fd;
    char *in;
    size_t in_len, in_cap;
    bool eof;
    int role; /* set by the target */
} fb_conn;

typedef struct fake_broker {
    int lfd;
    int port;
    fb_conn conns[FB_MAX_CONNS];
    int nconns;
} fake_broker;

static inline void fb_die(const char *what) {
    fprintf(stderr, "fake broker: %s: %s\n", what, strerror(errno));
    abort();
}

static inline void fb_listen(fake_broker *b) {
    memset(b, 0, sizeof *b);
    b->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (b->lfd < 0)
        fb_die("socket");
    int one = 1;
    setsockopt(b->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(b->lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(b->lfd, 16) != 0)
        fb_die("bind/listen");
    socklen_t l = sizeof a;
    getsockname(b->lfd, (struct sockaddr *)&a, &l);
    b->port = ntohs(a.sin_port);
}

static inline int64_t fb_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline void fb_write(fb_conn *c, const void *p, size_t n) {
    const char *q = p;
    while (n > 0 && c->fd >= 0) {
        ssize_t w = send(c->fd, q, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                struct pollfd pf = {c->fd, POLLOUT, 0};
                poll(&pf, 1, 100);
                continue;
            }
            return; /* the bus closed it */
        }
        q += w;
        n -= (size_t)w;
    }
}

/* Waits up to timeout_ms for activity: accepts, reads into the buffers.
 * Returns true if anything happened. */
static inline bool fb_poll(fake_broker *b, int timeout_ms) {
    struct pollfd pf[FB_MAX_CONNS + 1];
    int n = 0;
    pf[n++] = (struct pollfd){b->lfd, POLLIN, 0};
    for (int i = 0; i < b->nconns; i++)
        pf[n++] = (struct pollfd){b->conns[i].eof ? -1 : b->conns[i].fd, POLLIN, 0};
    int r = poll(pf, (nfds_t)n, timeout_ms);
    if (r <= 0)
        return false;
    if ((pf[0].revents & POLLIN) && b->nconns < FB_MAX_CONNS) {
        int fd = accept4(b->lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd >= 0) {
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            b->conns[b->nconns++] = (fb_conn){.fd = fd};
        }
    }
    for (int i = 0; i < n - 1; i++) {
        fb_conn *c = &b->conns[i];
        if (!(pf[i + 1].revents & (POLLIN | POLLHUP | POLLERR)))
            continue;
        if (c->in_len + 65536 > c->in_cap) {
            c->in_cap = c->in_len + 65536 * 2;
            c->in = realloc(c->in, c->in_cap);
            if (!c->in)
                fb_die("realloc");
        }
        ssize_t got = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
        if (got <= 0)
            c->eof = true;
        else
            c->in_len += (size_t)got;
    }
    return true;
}

static inline void fb_consume(fb_conn *c, size_t n) {
    memmove(c->in, c->in + n, c->in_len - n);
    c->in_len -= n;
}

static inline void fb_reset(fake_broker *b) {
    for (int i = 0; i < b->nconns; i++) {
        if (b->conns[i].fd >= 0)
            close(b->conns[i].fd);
        free(b->conns[i].in);
    }
    b->nconns = 0;
    memset(b->conns, 0, sizeof b->conns);
}

#endif
