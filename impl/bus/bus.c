/* The public psrpc_bus API, the bus's lifecycle, and the checks every
 * transport shares (size limits, counters). */
#include "bus.h"

#include <stdio.h>
#include <time.h>

typedef struct sub_wrap {
    psrpc_bus *bus;
    psrpc__deliver_fn deliver;
    psrpc__ready_fn ready;
    void *ctx;
} sub_wrap;

/* ---- fork (the generation counter lives in loop.c) ---- */

int psrpc__bus_fork_error(void) { return psrpc__fork_error(); }

void psrpc__bus_retain(psrpc_bus *bus) { atomic_fetch_add(&bus->refs, 1); }

static void bus_destroy(psrpc_bus *bus) {
    /* Inherited across fork(): the transport state and the loop belong to
     * threads and sockets of the parent. Leave the copy as it is. */
    if (psrpc__bus_forked(bus))
        return;
    if (bus->transport && bus->transport->destroy)
        bus->transport->destroy(bus);
    psrpc__loop *loop = bus->loop;
    bus->magic = 0;
    pthread_mutex_destroy(&bus->state_mu);
    pthread_cond_destroy(&bus->state_cond);
    free(bus->url_safe);
    free(bus);
    /* Never join on a loop thread (this one's, from its exit hook, or another
     * bus's, where a child handle dropped the last reference): the thread
     * frees its loop itself. Elsewhere the loop has stopped (the last
     * reference goes after the close), so the join is short. */
    if (psrpc__on_any_loop_thread())
        psrpc__loop_release(loop);
    else
        psrpc__loop_free(loop);
}

void psrpc__bus_release(psrpc_bus *bus) {
    if (atomic_fetch_sub(&bus->refs, 1) == 1)
        bus_destroy(bus);
}

int psrpc__bus_post(psrpc_bus *bus, psrpc__task_fn fn, void *arg) {
    PSRPC__CHECK_NOT_FORKED(bus);
    return psrpc__loop_post(bus->loop, fn, arg);
}

void psrpc__bus_add_child(psrpc_bus *bus, psrpc__child *child) {
    child->bus = bus;
    child->next = &bus->children;
    child->prev = bus->children.prev;
    bus->children.prev->next = child;
    bus->children.prev = child;
}

void psrpc__bus_remove_child(psrpc_bus *bus, psrpc__child *child) {
    (void)bus;
    if (!child->next)
        return;
    child->prev->next = child->next;
    child->next->prev = child->prev;
    child->next = child->prev = NULL;
}

/* ---- transport wrappers ---- */

/* ---- connection state ---- */

static bool auth_status(int status) {
    return status == PSRPC_UNAUTHENTICATED || status == PSRPC_PERMISSION_DENIED;
}

/* Logs a state change once per event (psrpc_set_log_callback). */
static void log_state(psrpc_bus *bus, int old, int state, int old_status, int64_t down_since) {
    if (state == PSRPC_BUS_CONNECTED) {
        if (old == PSRPC_BUS_DISCONNECTED)
            psrpc__log(PSRPC_LOG_INFO, "bus", "%s: reconnected after %lld ms", bus->url_safe,
                       (long long)((psrpc__now_ns() - down_since) / 1000000));
        else if (old != PSRPC_BUS_CONNECTED)
            psrpc__log(PSRPC_LOG_INFO, "bus", "%s: connected", bus->url_safe);
        return;
    }
    if (state != PSRPC_BUS_DISCONNECTED)
        return;
    bool auth = auth_status(bus->down_status);
    if (old != PSRPC_BUS_DISCONNECTED || (auth && !auth_status(old_status)))
        psrpc__log(auth ? PSRPC_LOG_ERROR : PSRPC_LOG_WARN, "bus", "%s: %s%s: %s", bus->url_safe,
                   auth                         ? "refused by the broker"
                   : old == PSRPC_BUS_CONNECTED ? "connection lost"
                                                : "cannot connect",
                   auth ? "" : ", reconnecting", bus->down_reason);
    else
        psrpc__log(PSRPC_LOG_DEBUG, "bus", "%s: reconnect failed: %s", bus->url_safe,
                   bus->down_reason);
}

void psrpc__bus_set_state(psrpc_bus *bus, int state, int status, const char *reason) {
    int old = atomic_load(&bus->conn_state);
    int old_status = bus->down_status;
    int64_t down_since = bus->down_since_ns;
    pthread_mutex_lock(&bus->state_mu);
    if (state == PSRPC_BUS_DISCONNECTED) {
        if (old != PSRPC_BUS_DISCONNECTED)
            bus->down_since_ns = psrpc__now_ns();
        bus->down_status = status ? status : PSRPC_UNAVAILABLE;
        snprintf(bus->down_reason, sizeof bus->down_reason, "%s", reason ? reason : "");
    }
    atomic_store(&bus->conn_state, state);
    pthread_cond_broadcast(&bus->state_cond);
    pthread_mutex_unlock(&bus->state_mu);
    if (psrpc__log_on(PSRPC_LOG_ERROR))
        log_state(bus, old, state, old_status, down_since);
    if (state == old && state == PSRPC_BUS_CONNECTED)
        return;
    if (state == PSRPC_BUS_CONNECTED)
        PSRPC__STAT_ADD(bus, connects, 1);
    else if (old == PSRPC_BUS_CONNECTED)
        PSRPC__STAT_ADD(bus, disconnects, 1);
    if (bus->watch_cb && state != old) {
        if (state == PSRPC_BUS_DISCONNECTED) {
            psrpc__err *e = psrpc__err_new(bus->down_status, "%s", bus->down_reason);
            psrpc_error view;
            if (e) {
                psrpc__err_view(e, &view);
                bus->watch_cb(state, &view, bus->watch_user_data);
                psrpc__err_free(e);
            }
        } else {
            bus->watch_cb(state, NULL, bus->watch_user_data);
        }
    }
    if (state == PSRPC_BUS_CONNECTED) {
        for (psrpc__child *c = bus->children.next; c != &bus->children;) {
            psrpc__child *next = c->next;
            if (c->connected)
                c->connected(c);
            c = next;
        }
    } else if (state == PSRPC_BUS_DISCONNECTED && old != PSRPC_BUS_DISCONNECTED) {
        /* Calls waiting for the bus fail now with this reason (fail fast,
         * from the first attempt on), not at their deadline. */
        for (psrpc__child *c = bus->children.next; c != &bus->children;) {
            psrpc__child *next = c->next;
            if (c->disconnected)
                c->disconnected(c);
            c = next;
        }
    }
}

int psrpc__bus_check_connected(psrpc_bus *bus) {
    if (atomic_load(&bus->conn_state) != PSRPC_BUS_DISCONNECTED)
        return PSRPC_OK;
    pthread_mutex_lock(&bus->state_mu);
    int status = bus->down_status ? bus->down_status : PSRPC_UNAVAILABLE;
    char reason[256];
    snprintf(reason, sizeof reason, "%s", bus->down_reason);
    int64_t since = bus->down_since_ns;
    pthread_mutex_unlock(&bus->state_mu);
    time_t secs = (time_t)(since / 1000000000);
    struct tm tm;
    char when[32];
    gmtime_r(&secs, &tm);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return psrpc__error(status, "%s unreachable since %s (%.1f s): %s", bus->transport->scheme,
                        when, (double)(psrpc__now_ns() - since) / 1e9, reason);
}

int psrpc__bus_publish(psrpc_bus *bus, const psrpc__channel *ch, psrpc_msg *bytes) {
    int rc = psrpc__bus_check_connected(bus);
    if (rc != PSRPC_OK)
        return rc;
    if ((int64_t)bytes->len > bus->opts.max_message_size)
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED,
                            "message of %zu bytes exceeds the maximum of %lld bytes", bytes->len,
                            (long long)bus->opts.max_message_size);
    if (atomic_load(&bus->state) == PSRPC__CLOSED)
        return psrpc__error(PSRPC_CANCELED, "bus is closed");
    rc = bus->transport->publish(bus, ch, bytes);
    if (rc == PSRPC_OK)
        PSRPC__STAT_ADD(bus, published, 1);
    return rc;
}

static void wrapped_deliver(void *ctx, const uint8_t *data, size_t len) {
    sub_wrap *w = ctx;
    PSRPC__STAT_ADD(w->bus, received, 1);
    if ((int64_t)len > w->bus->opts.max_message_size) {
        PSRPC__DROP(w->bus, dropped_oversize, PSRPC__DROP_OVERSIZE);
        return;
    }
    w->deliver(w->ctx, data, len);
}

static void wrapped_ready(void *ctx, int status, const char *message) {
    sub_wrap *w = ctx;
    if (w->ready)
        w->ready(w->ctx, status, message);
}

/* What the core holds: the transport's subscription plus our wrapper. */
typedef struct wrapped_sub {
    psrpc__bus_sub *inner;
    sub_wrap wrap;
} wrapped_sub;

psrpc__bus_sub *psrpc__bus_subscribe(psrpc_bus *bus, const psrpc__channel *ch, bool queue,
                                     psrpc__deliver_fn deliver, psrpc__ready_fn ready, void *ctx) {
    wrapped_sub *ws = calloc(1, sizeof *ws);
    if (!ws) {
        psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
        return NULL;
    }
    ws->wrap = (sub_wrap){bus, deliver, ready, ctx};
    ws->inner =
        bus->transport->subscribe(bus, ch, queue, wrapped_deliver, wrapped_ready, &ws->wrap);
    if (!ws->inner) {
        free(ws);
        return NULL;
    }
    PSRPC__STAT_ADD(bus, subscriptions, 1);
    return (psrpc__bus_sub *)ws;
}

void psrpc__bus_unsubscribe(psrpc_bus *bus, psrpc__bus_sub *sub) {
    if (!sub)
        return;
    wrapped_sub *ws = (wrapped_sub *)sub;
    bus->transport->unsubscribe(bus, ws->inner);
    PSRPC__STAT_SUB(bus, subscriptions, 1);
    free(ws);
}

/* ---- test hook ---- */

typedef struct inject_task {
    psrpc_bus *bus;
    psrpc__channel ch;
    psrpc_msg *bytes;
} inject_task;

static void inject_run(void *arg) {
    inject_task *t = arg;
    if (atomic_load(&t->bus->state) == PSRPC__OPEN)
        t->bus->transport->publish(t->bus, &t->ch, t->bytes);
    psrpc_msg_release(t->bytes);
    psrpc__channel_clear(&t->ch);
    psrpc__bus_release(t->bus);
    free(t);
}

int psrpc__bus_inject(psrpc_bus *bus, const psrpc__channel *ch, const void *data, size_t len) {
    inject_task *t = calloc(1, sizeof *t);
    if (!t)
        return PSRPC_RESOURCE_EXHAUSTED;
    if (psrpc__channel_copy(&t->ch, ch) != PSRPC_OK ||
        psrpc_msg_new(&t->bytes, data, len) != PSRPC_OK) {
        psrpc__channel_clear(&t->ch);
        free(t);
        return PSRPC_RESOURCE_EXHAUSTED;
    }
    t->bus = bus;
    psrpc__bus_retain(bus);
    int rc = psrpc__bus_post(bus, inject_run, t);
    if (rc != PSRPC_OK) {
        psrpc_msg_release(t->bytes);
        psrpc__channel_clear(&t->ch);
        psrpc__bus_release(bus);
        free(t);
    }
    return rc;
}

/* ---- lifecycle ---- */

psrpc_status psrpc_bus_options_init(psrpc_bus_options *opts, size_t struct_size) {
    psrpc_bus_options d = PSRPC_BUS_OPTIONS_INIT;
    return psrpc__options_init(opts, struct_size, &d, sizeof d);
}

static void start_task(void *arg) {
    psrpc_bus *bus = arg;
    if (atomic_load(&bus->state) == PSRPC__OPEN)
        bus->transport->start(bus);
    psrpc__bus_release(bus);
}

psrpc_status psrpc_bus_open(psrpc_bus **out, const char *url, const psrpc_bus_options *opts) {
    PSRPC__CHECK_ARG(out, "out is NULL");
    *out = NULL;
    if (!url || !*url)
        url = "local://";
    psrpc_bus_options o = PSRPC_BUS_OPTIONS_INIT;
    int rc = psrpc__options_load(&o, sizeof o, opts, "psrpc_bus_options");
    if (rc != PSRPC_OK)
        return rc;
    PSRPC__CHECK_ARG(o.max_message_size >= 0, "max_message_size is negative");
    PSRPC__CHECK_ARG(o.queue_capacity >= 0, "queue_capacity is negative");
    PSRPC__CHECK_ARG(o.compress_threshold >= 0, "compress_threshold is negative");
    if (o.max_message_size == 0)
        o.max_message_size = 1 << 20;
    if (o.queue_capacity == 0)
        o.queue_capacity = 10000;

    psrpc__fork_watch();
    psrpc_bus *bus = calloc(1, sizeof *bus);
    if (!bus)
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
    bus->magic = PSRPC__BUS_MAGIC;
    bus->fork_gen = psrpc__fork_generation();
    atomic_init(&bus->refs, 1);
    bus->opts = o;
    bus->children.next = bus->children.prev = &bus->children;
    pthread_mutex_init(&bus->state_mu, NULL);
    pthread_cond_init(&bus->state_cond, NULL);
    bus->url_safe = psrpc__url_mask(url);
    if (!bus->url_safe) {
        free(bus);
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
    }

    if (strncmp(url, "local://", 8) == 0) {
        rc = psrpc__local_open(bus, url + 8);
#ifdef PSRPC_WITH_REDIS
    } else if (strncmp(url, "redis://", 8) == 0 || strncmp(url, "rediss://", 9) == 0 ||
               strncmp(url, "redis+sentinel://", 17) == 0 ||
               strncmp(url, "rediss+sentinel://", 18) == 0 ||
               strncmp(url, "redis+cluster://", 16) == 0 ||
               strncmp(url, "rediss+cluster://", 17) == 0) {
        rc = psrpc__redis_open(bus, url);
#endif
#ifdef PSRPC_WITH_NATS
    } else if (strncmp(url, "nats://", 7) == 0 || strncmp(url, "tls://", 6) == 0) {
        rc = psrpc__nats_open(bus, url);
#endif
    } else {
        /* Only the scheme is named: the rest may hold a secret. */
        const char *sep = strstr(url, "://");
        if (sep && sep - url <= 32 && !memchr(url, '@', (size_t)(sep - url)))
            rc = psrpc__error(PSRPC_INVALID_ARGUMENT, "unsupported bus URL scheme \"%.*s\"",
                              (int)(sep - url), url);
        else
            rc = psrpc__error(
                PSRPC_INVALID_ARGUMENT,
                "bus URL without a supported scheme (local://, redis://, redis+sentinel://, "
                "redis+cluster://, rediss://, nats://, tls://)");
    }
    if (rc != PSRPC_OK) {
        pthread_mutex_destroy(&bus->state_mu);
        pthread_cond_destroy(&bus->state_cond);
        free(bus->url_safe);
        free(bus);
        return rc;
    }
    rc = psrpc__loop_start(&bus->loop);
    if (rc != PSRPC_OK) {
        bus->transport->destroy(bus);
        pthread_mutex_destroy(&bus->state_mu);
        pthread_cond_destroy(&bus->state_cond);
        free(bus->url_safe);
        free(bus);
        return rc;
    }
    if (bus->transport->start) {
        psrpc__bus_retain(bus);
        if (psrpc__bus_post(bus, start_task, bus) != PSRPC_OK)
            psrpc__bus_release(bus);
    }
    *out = bus;
    return PSRPC_OK;
}

/* ---- state watching ---- */

typedef struct watch_req {
    psrpc_bus *bus;
    psrpc_bus_state_cb cb;
    void *user_data;
    psrpc_release_cb release;
} watch_req;

static void drop_watcher(psrpc_bus *bus) {
    psrpc_release_cb release = bus->watch_release;
    void *ud = bus->watch_user_data;
    bus->watch_cb = NULL;
    bus->watch_release = NULL;
    bus->watch_user_data = NULL;
    if (release)
        release(ud);
}

static void watch_task(void *arg) {
    watch_req *w = arg;
    psrpc_bus *bus = w->bus;
    drop_watcher(bus);
    if (atomic_load(&bus->state) == PSRPC__CLOSED) {
        w->cb(PSRPC_BUS_CLOSED, NULL, w->user_data);
        if (w->release)
            w->release(w->user_data);
    } else {
        bus->watch_cb = w->cb;
        bus->watch_user_data = w->user_data;
        bus->watch_release = w->release;
        int st = atomic_load(&bus->conn_state);
        if (st == PSRPC_BUS_CONNECTED) {
            w->cb(st, NULL, w->user_data);
        } else if (st == PSRPC_BUS_DISCONNECTED) {
            psrpc__err *e = psrpc__err_new(bus->down_status, "%s", bus->down_reason);
            if (e) {
                psrpc_error view;
                psrpc__err_view(e, &view);
                w->cb(st, &view, w->user_data);
                psrpc__err_free(e);
            }
        }
    }
    psrpc__bus_release(bus);
    free(w);
}

psrpc_status psrpc_bus_watch(psrpc_bus *bus, psrpc_bus_state_cb cb, void *user_data,
                             psrpc_release_cb release) {
    PSRPC__CHECK_ARG(bus && bus->magic == PSRPC__BUS_MAGIC, "bus is NULL or not a psrpc_bus");
    PSRPC__CHECK_ARG(cb, "cb is NULL");
    PSRPC__CHECK_NOT_FORKED(bus);
    watch_req *w = calloc(1, sizeof *w);
    if (!w)
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
    *w = (watch_req){bus, cb, user_data, release};
    psrpc__bus_retain(bus);
    int rc = psrpc__bus_post(bus, watch_task, w);
    if (rc != PSRPC_OK) {
        psrpc__bus_release(bus);
        free(w);
    }
    return rc;
}

psrpc_status psrpc_bus_wait_ready(psrpc_bus *bus, int64_t timeout_ms) {
    PSRPC__CHECK_ARG(bus && bus->magic == PSRPC__BUS_MAGIC, "bus is NULL or not a psrpc_bus");
    PSRPC__CHECK_ARG(timeout_ms >= 0, "timeout_ms is negative");
    PSRPC__CHECK_NOT_FORKED(bus);
    if (psrpc__on_any_loop_thread())
        return psrpc__error(PSRPC_WOULD_DEADLOCK,
                            "psrpc_bus_wait_ready called on a loop thread would deadlock");
    struct timespec until;
    psrpc__deadline_in(&until, timeout_ms);
    pthread_mutex_lock(&bus->state_mu);
    int rc = 0;
    /* Wait through the first attempt; then an auth refusal is final. */
    while (rc == 0 && atomic_load(&bus->conn_state) != PSRPC_BUS_CONNECTED &&
           !(atomic_load(&bus->conn_state) == PSRPC_BUS_DISCONNECTED &&
             (bus->down_status == PSRPC_UNAUTHENTICATED ||
              bus->down_status == PSRPC_PERMISSION_DENIED)) &&
           atomic_load(&bus->state) == PSRPC__OPEN)
        rc = pthread_cond_timedwait(&bus->state_cond, &bus->state_mu, &until);
    int st = atomic_load(&bus->conn_state);
    int down = bus->down_status;
    pthread_mutex_unlock(&bus->state_mu);
    if (st == PSRPC_BUS_CONNECTED)
        return PSRPC_OK;
    if (atomic_load(&bus->state) != PSRPC__OPEN)
        return psrpc__error(PSRPC_CANCELED, "bus is closed");
    if (st == PSRPC_BUS_DISCONNECTED &&
        (down == PSRPC_UNAUTHENTICATED || down == PSRPC_PERMISSION_DENIED))
        return psrpc__bus_check_connected(bus);
    if (st == PSRPC_BUS_DISCONNECTED) {
        psrpc__bus_check_connected(bus);
        char why[384];
        snprintf(why, sizeof why, "%s", psrpc_last_error());
        return psrpc__error(PSRPC_DEADLINE_EXCEEDED, "bus not connected within %lld ms: %s",
                            (long long)timeout_ms, why);
    }
    return psrpc__error(PSRPC_DEADLINE_EXCEEDED, "bus not connected within %lld ms",
                        (long long)timeout_ms);
}

typedef struct close_req {
    psrpc_bus *bus;
    psrpc__closed_waiter *waiter;
    bool then_stop;
} close_req;

psrpc__closed_waiter *psrpc__waiter_new(psrpc_closed_cb cb, void *user_data, bool *failed) {
    *failed = false;
    if (!cb)
        return NULL;
    psrpc__closed_waiter *w = calloc(1, sizeof *w);
    if (!w) {
        *failed = true;
        return NULL;
    }
    w->cb = cb;
    w->user_data = user_data;
    return w;
}

void psrpc__waiters_push(psrpc__closed_waiter **list, psrpc__closed_waiter *w) {
    if (!w)
        return;
    w->next = *list;
    *list = w;
}

void psrpc__waiters_run(psrpc__closed_waiter **list) {
    psrpc__closed_waiter *w = *list;
    *list = NULL;
    while (w) {
        psrpc__closed_waiter *next = w->next;
        if (w->cb)
            w->cb(w->user_data);
        free(w);
        w = next;
    }
}

static void run_closed_waiters(psrpc_bus *bus) { psrpc__waiters_run(&bus->closed_waiters); }

static bool stop_when_closed(psrpc_bus *bus) { return atomic_load(&bus->freed); }

static void transport_closed(psrpc_bus *bus) {
    pthread_mutex_lock(&bus->state_mu);
    atomic_store(&bus->state, PSRPC__CLOSED);
    pthread_cond_broadcast(&bus->state_cond);
    pthread_mutex_unlock(&bus->state_mu);
    if (bus->watch_cb)
        bus->watch_cb(PSRPC_BUS_CLOSED, NULL, bus->watch_user_data);
    drop_watcher(bus);
    run_closed_waiters(bus);
    if (stop_when_closed(bus))
        psrpc__loop_stop(bus->loop);
}

static void one_child_done(psrpc__child *child) {
    psrpc_bus *bus = child->bus;
    if (--bus->children_closing == 0)
        bus->transport->close(bus, transport_closed);
}

static void close_children(psrpc_bus *bus) {
    /* Snapshot the list first: children remove themselves as they close, and
     * may finish synchronously. */
    int n = 0;
    for (psrpc__child *c = bus->children.next; c != &bus->children; c = c->next)
        n++;
    psrpc__child **list = n ? calloc((size_t)n, sizeof *list) : NULL;
    if (n == 0 || !list) {
        bus->transport->close(bus, transport_closed);
        return;
    }
    int i = 0;
    for (psrpc__child *c = bus->children.next; c != &bus->children; c = c->next)
        list[i++] = c;
    bus->children_closing = n;
    for (i = 0; i < n; i++)
        list[i]->close(list[i], one_child_done);
    free(list);
}

static void close_task(void *arg) {
    close_req *r = arg;
    psrpc_bus *bus = r->bus;
    psrpc__waiters_push(&bus->closed_waiters, r->waiter);
    int state = atomic_load(&bus->state);
    if (state == PSRPC__CLOSED) {
        run_closed_waiters(bus);
        if (stop_when_closed(bus))
            psrpc__loop_stop(bus->loop);
    } else if (state == PSRPC__OPEN) {
        atomic_store(&bus->state, PSRPC__CLOSING);
        close_children(bus);
    }
    free(r);
    psrpc__bus_release(bus);
}

static int post_close(psrpc_bus *bus, psrpc_closed_cb cb, void *user_data) {
    bool failed;
    close_req *r = calloc(1, sizeof *r);
    if (r)
        r->waiter = psrpc__waiter_new(cb, user_data, &failed);
    if (!r || failed) {
        free(r);
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
    }
    r->bus = bus;
    psrpc__bus_retain(bus);
    int rc = psrpc__bus_post(bus, close_task, r);
    if (rc != PSRPC_OK) {
        psrpc__bus_release(bus);
        free(r->waiter);
        free(r);
    }
    return rc;
}

#define CHECK_BUS(bus)                                                                   \
    do {                                                                                 \
        PSRPC__CHECK_ARG(bus, "bus is NULL");                                            \
        PSRPC__CHECK_ARG((bus)->magic == PSRPC__BUS_MAGIC, "handle is not a psrpc_bus"); \
    } while (0)

psrpc_status psrpc_bus_close(psrpc_bus *bus, psrpc_closed_cb closed_cb, void *user_data) {
    CHECK_BUS(bus);
    PSRPC__CHECK_NOT_FORKED(bus);
    return post_close(bus, closed_cb, user_data);
}

/* The loop thread's exit hook of a released bus: drops the caller's
 * reference once the loop has ended (every handle closed). */
static void release_at_exit(void *arg) { psrpc__bus_release(arg); }

void psrpc_bus_release(psrpc_bus *bus) {
    if (!bus || bus->magic != PSRPC__BUS_MAGIC)
        return;
    if (psrpc__bus_forked(bus)) {
        atomic_store(&bus->freed, true); /* nothing here to close or join */
        return;
    }
    /* Ours until we return: the loop may end (and drop the caller's
     * reference) as soon as freed is set. */
    psrpc__bus_retain(bus);
    if (!atomic_exchange(&bus->freed, true)) {
        if (!psrpc__loop_on_exit(bus->loop, release_at_exit, bus))
            psrpc__bus_release(bus); /* the loop already ended */
        else if (post_close(bus, NULL, NULL) != PSRPC_OK)
            psrpc__loop_stop(bus->loop);
    }
    psrpc__bus_release(bus);
}

void psrpc_bus_free(psrpc_bus *bus) {
    if (!bus || bus->magic != PSRPC__BUS_MAGIC)
        return;
    /* On any loop thread (a callback of this bus or of another one) waiting
     * for this loop could stall that loop for the whole close, or deadlock
     * (two buses freeing each other): detach instead. */
    if (psrpc__on_any_loop_thread() || psrpc__bus_forked(bus)) {
        psrpc_bus_release(bus);
        return;
    }
    if (atomic_exchange(&bus->freed, true))
        return;
    if (post_close(bus, NULL, NULL) != PSRPC_OK)
        psrpc__loop_stop(bus->loop);
    psrpc__loop_wait(bus->loop);
    psrpc__bus_release(bus);
}

psrpc_status psrpc_bus_get_stats(psrpc_bus *bus, psrpc_bus_stats *out) {
    CHECK_BUS(bus);
    PSRPC__CHECK_NOT_FORKED(bus);
    PSRPC__CHECK_ARG(out, "out is NULL");
    PSRPC__CHECK_ARG(out->struct_size >= 2 * sizeof(uint32_t), "out->struct_size is not set");
    psrpc_bus_stats s;
    memset(&s, 0, sizeof s);
    s.struct_size = out->struct_size < sizeof s ? out->struct_size : (uint32_t)sizeof s;
    s.connects = atomic_load(&bus->stats.connects);
    s.disconnects = atomic_load(&bus->stats.disconnects);
    s.reconnect_attempts = atomic_load(&bus->stats.reconnect_attempts);
    s.subscriptions = atomic_load(&bus->stats.subscriptions);
    s.messages_published = atomic_load(&bus->stats.published);
    s.messages_received = atomic_load(&bus->stats.received);
    s.dropped_malformed = atomic_load(&bus->stats.dropped_malformed);
    s.dropped_oversize = atomic_load(&bus->stats.dropped_oversize);
    s.dropped_slow_consumer = atomic_load(&bus->stats.dropped_slow_consumer);
    s.dropped_expired = atomic_load(&bus->stats.dropped_expired);
    s.dropped_unknown = atomic_load(&bus->stats.dropped_unknown);
    s.requests_in_flight = atomic_load(&bus->stats.requests_in_flight);
    s.streams_open = atomic_load(&bus->stats.streams_open);
    s.dropped_held_limit = atomic_load(&bus->stats.dropped_held_limit);
    memcpy(out, &s, s.struct_size);
    return PSRPC_OK;
}
