#include "nats_evloop.h"

#include <fcntl.h>
#include <pthread.h>
#include <unistd.h>

#include "common.h"

typedef struct ev_conn ev_conn;

/* The poll of one socket (a reconnect brings a new socket and a new poll).
 * It polls its own duplicate of nats.c's descriptor: nats.c closes its
 * descriptor on its own threads, possibly before the loop has stopped
 * polling, and the number could then be reused by another socket while the
 * loop still registers or unregisters it with epoll. The duplicate is closed
 * on the loop thread once the poll is closed. */
typedef struct ev_poll {
    uv_poll_t h;
    ev_conn *ec;
    int fd; /* ours */
} ev_poll;

enum { T_ATTACH, T_READ, T_WRITE, T_DETACH, T_FLUSH };

typedef struct waiter {
    pthread_mutex_t mu;
    pthread_cond_t cond;
    bool done;
} waiter;

typedef struct ev_task {
    ev_conn *ec;
    int kind;
    bool add;
    natsSock fd;
    waiter *w;     /* T_DETACH from another thread: signalled when applied */
    bool embedded; /* ev_conn's own detach task: not freed */
} ev_task;

/* nats.c's "user data" of one connection. */
struct ev_conn {
    atomic_int refs; /* nats.c's attachment, each queued task, each open poll */
    psrpc__nats_ev_ctx *ctx;
    natsConnection *nc;
    /* Loop thread only. */
    ev_poll *poll;   /* the current socket's poll, or NULL */
    int events;      /* what the poll is started with */
    bool want_read;  /* nats.c: poll for reads */
    bool want_write; /* nats.c: there is buffered output */
    bool poll_write; /* the last write left output behind: poll for writability */
    bool flush_posted;
    psrpc__task_node flush_node; /* the pending flush (one at a time): cannot fail to post */
    bool detached;
    /* The detach from another thread, posted with memory of its own: if it
     * were lost (out of memory), nats.c would free the connection while the
     * loop still polls it. */
    psrpc__task_node detach_node;
    ev_task detach_task;
    /* Read and write interest changes from another thread that could not be
     * posted (out of memory): the latest of each (-1: none), applied by one
     * task on the connection's own node. A lost write ADD would leave
     * nats.c's output (a flush's PING) unsent for good. */
    atomic_int pending_read, pending_write;
    atomic_bool pending_posted;
    psrpc__task_node pending_node;
};

static void ec_release(ev_conn *ec) {
    if (atomic_fetch_sub(&ec->refs, 1) == 1)
        free(ec);
}

static void poll_closed(uv_handle_t *h) {
    ev_poll *p = h->data;
    ev_conn *ec = p->ec;
    close(p->fd);
    free(p);
    ec_release(ec);
}

static void close_poll(ev_conn *ec) {
    if (!ec->poll)
        return;
    uv_close((uv_handle_t *)&ec->poll->h, poll_closed);
    ec->poll = NULL;
    ec->events = 0;
    ec->poll_write = false;
}

static void poll_cb(uv_poll_t *h, int status, int events);

/* Polls for what nats.c wants to read and for writability only while output
 * is stuck. */
static void update_poll(ev_conn *ec) {
    if (!ec->poll)
        return;
    int want = (ec->want_read ? UV_READABLE : 0) | (ec->poll_write ? UV_WRITABLE : 0);
    if (want == ec->events)
        return;
    if (want)
        uv_poll_start(&ec->poll->h, want, poll_cb);
    else
        uv_poll_stop(&ec->poll->h);
    ec->events = want;
}

static void task_run(void *arg);

static int post(ev_conn *ec, int kind, bool add, natsSock fd, waiter *w) {
    ev_task *t = malloc(sizeof *t);
    if (!t)
        return PSRPC_RESOURCE_EXHAUSTED;
    *t = (ev_task){ec, kind, add, fd, w, false};
    atomic_fetch_add(&ec->refs, 1);
    int rc = psrpc__loop_post(ec->ctx->loop, task_run, t);
    if (rc != PSRPC_OK) {
        atomic_fetch_sub(&ec->refs, 1); /* not the last: the caller holds one */
        free(t);
    }
    return rc;
}

static void apply(ev_conn *ec, int kind, bool add, natsSock fd);

static void flush_task(void *arg) {
    ev_conn *ec = arg;
    apply(ec, T_FLUSH, true, (natsSock)-1);
    ec_release(ec);
}

/* Everything nats.c buffered during this loop turn goes out in one write,
 * before the loop blocks (a task posted on the loop thread runs then). On the
 * connection's own task node: a flush lost for lack of memory would leave
 * the output unsent (and a closing bus waiting for it). */
static void schedule_flush(ev_conn *ec) {
    if (ec->flush_posted || ec->detached || !ec->poll)
        return;
    atomic_fetch_add(&ec->refs, 1);
    if (psrpc__loop_post_node(ec->ctx->loop, &ec->flush_node, flush_task, ec) == PSRPC_OK)
        ec->flush_posted = true;
    else
        atomic_fetch_sub(&ec->refs, 1); /* not the last: the caller holds one */
}

/* Loop thread. */
static void apply(ev_conn *ec, int kind, bool add, natsSock fd) {
    switch (kind) {
    case T_ATTACH: {
        /* fd is our duplicate (ev_attach): this owns it. */
        if (ec->detached) {
            close(fd);
            return;
        }
        close_poll(ec); /* the old socket's, on a reconnect */
        ev_poll *p = calloc(1, sizeof *p);
        uv_loop_t *uv = psrpc__loop_uv(ec->ctx->loop);
        if (!p || uv_poll_init_socket(uv, &p->h, fd) != 0) {
            /* Unpolled, the connection hears nothing: nats.c's pings fail it
             * and it reconnects. */
            free(p);
            close(fd);
            return;
        }
        p->h.data = p;
        p->ec = ec;
        p->fd = fd;
        atomic_fetch_add(&ec->refs, 1);
        ec->poll = p;
        ec->events = 0;
        ec->want_read = true;
        update_poll(ec);
        if (ec->want_write)
            schedule_flush(ec);
        break;
    }
    case T_READ:
        ec->want_read = add;
        update_poll(ec);
        break;
    case T_WRITE:
        ec->want_write = add;
        if (add) {
            schedule_flush(ec);
        } else {
            ec->poll_write = false;
            update_poll(ec);
        }
        break;
    case T_FLUSH:
        ec->flush_posted = false;
        if (ec->detached || !ec->poll || !ec->want_write)
            return;
        /* May call back (write REMOVE when all went out, or read and write
         * REMOVE and even detach on an error): all on this thread. */
        natsConnection_ProcessWriteEvent(ec->nc);
        if (!ec->detached && ec->want_write) {
            ec->poll_write = true; /* the kernel did not take everything */
            update_poll(ec);
        }
        break;
    case T_DETACH:
        if (ec->detached)
            return;
        ec->detached = true;
        ec->want_read = ec->want_write = false;
        close_poll(ec);
        ec_release(ec); /* nats.c's attachment */
        break;
    }
}

static void task_run(void *arg) {
    ev_task *t = arg;
    ev_conn *ec = t->ec;
    bool embedded = t->embedded;
    apply(ec, t->kind, t->add, t->fd);
    if (t->w) {
        pthread_mutex_lock(&t->w->mu);
        t->w->done = true;
        pthread_cond_signal(&t->w->cond);
        pthread_mutex_unlock(&t->w->mu);
    }
    if (!embedded)
        free(t);
    ec_release(ec); /* may free ec, and with it an embedded t */
}

static void poll_cb(uv_poll_t *h, int status, int events) {
    ev_poll *p = h->data;
    ev_conn *ec = p->ec;
    if (ec->detached || ec->poll != p)
        return;
    atomic_fetch_add(&ec->refs, 1); /* nats.c may detach from inside */
    if (status < 0)
        ec->events = 0; /* libuv stopped the poll */
    if (status < 0 || (events & (UV_READABLE | UV_DISCONNECT))) {
        /* An error is read as one: nats.c then sees the socket fail. */
        natsConnection_ProcessReadEvent(ec->nc);
        if (ec->ctx->after_read)
            ec->ctx->after_read(ec->ctx->arg);
    }
    if (status >= 0 && (events & UV_WRITABLE) && !ec->detached && ec->poll == p)
        natsConnection_ProcessWriteEvent(ec->nc);
    ec_release(ec);
}

/* ---- nats.c's callbacks (any thread) ---- */

static natsStatus ev_attach(void **user, void *loop, natsConnection *nc, natsSock fd) {
    psrpc__nats_ev_ctx *ctx = loop;
    ev_conn *ec = *user;
    if (!ec) {
        ec = calloc(1, sizeof *ec);
        if (!ec)
            return NATS_NO_MEMORY;
        atomic_init(&ec->refs, 1); /* nats.c's, until detach */
        atomic_init(&ec->pending_read, -1);
        atomic_init(&ec->pending_write, -1);
        ec->ctx = ctx;
        ec->nc = nc;
        *user = ec;
    }
    int dfd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (dfd < 0)
        return NATS_SYS_ERROR;
    if (psrpc__loop_on_thread(ctx->loop)) {
        apply(ec, T_ATTACH, true, dfd);
        return NATS_OK;
    }
    if (post(ec, T_ATTACH, true, dfd, NULL) != PSRPC_OK) {
        close(dfd);
        return NATS_ERR;
    }
    return NATS_OK;
}

static void pending_task(void *arg) {
    ev_conn *ec = arg;
    atomic_store(&ec->pending_posted, false); /* later changes post the node again */
    int r = atomic_exchange(&ec->pending_read, -1);
    if (r >= 0)
        apply(ec, T_READ, r == 1, (natsSock)-1);
    int w = atomic_exchange(&ec->pending_write, -1);
    if (w >= 0)
        apply(ec, T_WRITE, w == 1, (natsSock)-1);
    ec_release(ec);
}

static natsStatus ev_update(void *user, int kind, bool add) {
    ev_conn *ec = user;
    if (psrpc__loop_on_thread(ec->ctx->loop)) {
        apply(ec, kind, add, (natsSock)-1);
        return NATS_OK;
    }
    if (post(ec, kind, add, (natsSock)-1, NULL) == PSRPC_OK)
        return NATS_OK;
    /* Out of memory (or a stopping loop, which polls nothing any more): the
     * change goes on the connection's own node, which cannot fail to post. */
    atomic_store(kind == T_READ ? &ec->pending_read : &ec->pending_write, add ? 1 : 0);
    if (!atomic_exchange(&ec->pending_posted, true)) {
        atomic_fetch_add(&ec->refs, 1);
        if (psrpc__loop_post_node(ec->ctx->loop, &ec->pending_node, pending_task, ec) != PSRPC_OK) {
            atomic_store(&ec->pending_posted, false);
            atomic_fetch_sub(&ec->refs, 1); /* not the last: nats.c's attachment holds one */
        }
    }
    return NATS_OK;
}

static natsStatus ev_read(void *user, bool add) { return ev_update(user, T_READ, add); }

static natsStatus ev_write(void *user, bool add) { return ev_update(user, T_WRITE, add); }

/* nats.c may free the connection when this returns: off the loop thread,
 * wait until the loop has stopped polling it. */
static natsStatus ev_detach(void *user) {
    ev_conn *ec = user;
    if (psrpc__loop_on_thread(ec->ctx->loop)) {
        apply(ec, T_DETACH, true, (natsSock)-1);
        return NATS_OK;
    }
    waiter w = {.done = false};
    pthread_mutex_init(&w.mu, NULL);
    pthread_cond_init(&w.cond, NULL);
    ec->detach_task = (ev_task){ec, T_DETACH, true, (natsSock)-1, &w, true};
    atomic_fetch_add(&ec->refs, 1);
    int rc = psrpc__loop_post_node(ec->ctx->loop, &ec->detach_node, task_run, &ec->detach_task);
    if (rc != PSRPC_OK)
        atomic_fetch_sub(&ec->refs, 1); /* not the last: nats.c's attachment holds one */
    if (rc == PSRPC_OK) {
        pthread_mutex_lock(&w.mu);
        while (!w.done)
            pthread_cond_wait(&w.cond, &w.mu);
        pthread_mutex_unlock(&w.mu);
    }
    /* Else the loop has stopped and runs no poll callback any more. */
    pthread_mutex_destroy(&w.mu);
    pthread_cond_destroy(&w.cond);
    return NATS_OK;
}

natsStatus psrpc__nats_set_event_loop(natsOptions *o, psrpc__nats_ev_ctx *ctx) {
    return natsOptions_SetEventLoop(o, ctx, ev_attach, ev_read, ev_write, ev_detach);
}
