/* The NATS transport (nats://, tls://) on nats.c, wire compatible with
 * livekit/psrpc's natsbus (wire-protocol.md 6.2). docs/nats.md has the
 * design; in short:
 *
 * Threads. The transport's own state lives on the bus's loop thread, and so
 * does nats.c's socket I/O (nats_evloop.c): after each read the loop pulls
 * the messages of its synchronous subscriptions and delivers them at once,
 * with no thread in between. nats.c's connection callbacks arrive on its own
 * threads; they only post to the loop, through a gate (cb_mu + detached)
 * that close shuts.
 * The blocking nats.c calls (Connect, FlushTimeout, Close/Destroy) run on a
 * per-bus worker thread (a psrpc__loop used as a job queue) that posts each
 * result back to the loop. Publish, Subscribe and Unsubscribe do not block
 * and run on the loop thread.
 *
 * Subjects. One nsub per NATS subscription: a router per SRV. subject
 * (demultiplexing by Msg.channel to every local subscription of that key) or
 * a plain one per CLI. subscription. A router is queue or plain (quirk Q11).
 *
 * Readiness. A subscription's ready fires after a FlushTimeout (PING/PONG)
 * that was sent after its SUB came back. The bus reports CONNECTED only after
 * such a flush on the (re)connected link.
 *
 * Connections. Every connection is made by our own retry loop with backoff:
 * the first one, and the replacement of each one that is lost (nats.c's own
 * reconnects are off, see bus_nats_opts.c: a reconnected natsConnection can
 * keep a parser stuck in the lost link's last message). Two consecutive
 * authentication refusals stop the retries. */
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <time.h>

#include "bus_nats.h"
#include "map.h"
#include "nats_evloop.h"
#include "wire.h"

/* nats.c's own pending limit in bytes per subscription. */
#define NATS_PENDING_BYTES (64 << 20)
/* Close: flush what is buffered for at most this long, and wait at most
 * CLOSE_WAIT_MS for nats.c's last callbacks. */
#define CLOSE_FLUSH_MS 500
#define CLOSE_WAIT_MS 3000
/* Consecutive authentication refusals after which we stop connecting. */
#define MAX_AUTH_FAILURES 2

typedef struct nats_state nats_state;
typedef struct nsub nsub;

typedef struct early_pub {
    struct early_pub *next;
    char *subject;
    psrpc_msg *bytes;
} early_pub;

/* One subscription of the core (loop thread only). */
struct psrpc__bus_sub {
    int refs;
    nsub *ns;
    char *key; /* router key; NULL on a plain subscription */
    bool active;
    bool ready_done;
    psrpc__deliver_fn deliver;
    psrpc__ready_fn ready;
    void *ctx;
    struct psrpc__bus_sub *next; /* in its route */
};

/* One NATS subscription: a router (SRV. subjects) or a plain subscription. */
struct nsub {
    atomic_int refs; /* the loop while attached, a delivery in progress */
    nats_state *st;
    char *subject;
    bool queue, router;
    /* Loop thread. */
    natsSubscription *sub;
    uint64_t seq;
    bool confirmed;
    bool dead;
    int denied;
    char *denied_msg;
    psrpc__map routes;            /* router: key -> first psrpc__bus_sub */
    struct psrpc__bus_sub *plain; /* plain: the one subscription */
    nsub *prev, *next;
    long long dropped_seen; /* natsSubscription_GetDropped already counted */
};

struct nats_state {
    atomic_int refs; /* the bus, each live connection, each live nats.c subscription */
    psrpc_bus *bus;
    natsOptions *opts;
    psrpc__nats_settings set;
    /* Gate for everything nats.c threads do to the bus. */
    pthread_mutex_t cb_mu;
    bool detached;
    /* nats.c connection callbacks still to come (close waits for 0). */
    pthread_mutex_t mu;
    pthread_cond_t cond;
    int live_conns;
    psrpc__nats_ev_ctx evctx; /* nats.c's I/O on the loop thread */
    /* Worker thread only. */
    natsConnection *w_nc;
    /* Loop thread only. */
    psrpc__loop *worker;
    natsConnection *nc; /* the connection the loop uses, or NULL */
    bool closing, final, connect_inflight, holds_bus, timer_init;
    int final_status; /* why we stopped connecting */
    char final_reason[256];
    psrpc__map routers; /* subject -> router nsub */
    nsub *nsubs;        /* every attached nsub */
    uint64_t sub_seq, epoch;
    bool up_pending, flush_inflight, flush_again, pull_posted, flush_timer_init;
    bool settle_timer_init;
    uv_timer_t timer;
    uv_timer_t flush_timer;  /* request_flush again after running out of memory */
    uv_timer_t settle_timer; /* settle_timer_cb: on_ready lost to out of memory */
    int attempt, auth_failures;
    /* Publishes made before the first connection exists (bus state still
     * "connecting"): sent once it does, dropped if that attempt fails. */
    struct early_pub *early_head, **early_tail;
    int64_t early_bytes;
    void (*done)(psrpc_bus *bus);
    /* The close's two hops (to the worker, back to the loop) cannot fail
     * for lack of memory: a lost one would leave the close unfinished. */
    psrpc__task_node close_node, final_node;
    char *servers; /* "host:port,..." of the URL, to explain refused connects */
};

/* ---- references ---- */

static void st_retain(nats_state *st) { atomic_fetch_add(&st->refs, 1); }

static void st_release(nats_state *st) {
    if (atomic_fetch_sub(&st->refs, 1) != 1)
        return;
    pthread_mutex_destroy(&st->cb_mu);
    pthread_mutex_destroy(&st->mu);
    pthread_cond_destroy(&st->cond);
    free(st->servers);
    free(st);
}

static void nsub_release(nsub *ns) {
    if (atomic_fetch_sub(&ns->refs, 1) != 1)
        return;
    psrpc__map_clear(&ns->routes);
    free(ns->subject);
    free(ns->denied_msg);
    free(ns);
}

static void bsub_release(struct psrpc__bus_sub *b) {
    if (--b->refs == 0) {
        free(b->key);
        free(b);
    }
}

/* ---- the gate: posting from nats.c and worker threads ---- */

/* nats.c's error texts start with "(file.c:line): "; keep the rest. */
static const char *clean_text(const char *s) {
    if (s && s[0] == '(') {
        const char *e = strstr(s, "): ");
        if (e)
            return e + 3;
    }
    return s ? s : "";
}

static char *dup_text(const char *s) { return psrpc__strdup(clean_text(s)); }

/* ---- events (loop thread) ---- */

enum { EV_CONNECT_RESULT, EV_FLUSHED, EV_DOWN, EV_CLOSED, EV_AUTH, EV_PERM };

typedef struct nats_event {
    psrpc__task_node node; /* posting cannot fail for lack of memory */
    nats_state *st;
    int kind;
    natsConnection *nc;
    natsStatus status;
    char *text;
    uint64_t upto, epoch;
} nats_event;

static void event_task(void *arg);

/* Posts ev to the loop on its own node (event_task frees it), or frees it if
 * the bus is gone. Any thread. */
static void deliver_event(nats_state *st, nats_event *ev) {
    pthread_mutex_lock(&st->cb_mu);
    int rc = st->detached ? PSRPC_CANCELED
                          : psrpc__loop_post_node(st->bus->loop, &ev->node, event_task, ev);
    pthread_mutex_unlock(&st->cb_mu);
    if (rc != PSRPC_OK) {
        free(ev->text);
        free(ev);
    }
}

static void post_event(nats_state *st, int kind, natsConnection *nc, natsStatus status,
                       const char *text) {
    nats_event *ev = calloc(1, sizeof *ev);
    if (!ev)
        return;
    ev->st = st;
    ev->kind = kind;
    ev->nc = nc;
    ev->status = status;
    ev->text = text ? dup_text(text) : NULL;
    deliver_event(st, ev);
}

static int classify(natsStatus s, const char *text) {
    if (s == NATS_CONNECTION_AUTH_FAILED || (text && (strcasestr(text, "authorization violation") ||
                                                      strcasestr(text, "authentication expired") ||
                                                      strcasestr(text, "authentication revoked"))))
        return PSRPC_UNAUTHENTICATED;
    if (s == NATS_NOT_PERMITTED || (text && strcasestr(text, "permissions violation")))
        return PSRPC_PERMISSION_DENIED;
    return PSRPC_UNAVAILABLE;
}

/* ---- nats.c connection callbacks (nats.c threads) ---- */

static const char *conn_error(natsConnection *nc, natsStatus *status) {
    const char *txt = NULL;
    natsStatus s = natsConnection_GetLastError(nc, &txt);
    if (status)
        *status = s;
    return s == NATS_OK ? NULL : txt;
}

static void on_disconnected(natsConnection *nc, void *closure) {
    natsStatus s;
    const char *txt = conn_error(nc, &s);
    post_event(closure, EV_DOWN, nc, s, txt);
}

static void on_closed(natsConnection *nc, void *closure) {
    nats_state *st = closure;
    natsStatus s;
    const char *txt = conn_error(nc, &s);
    post_event(st, EV_CLOSED, nc, s, txt);
    pthread_mutex_lock(&st->mu);
    st->live_conns--;
    pthread_cond_broadcast(&st->cond);
    pthread_mutex_unlock(&st->mu);
    st_release(st);
}

static void on_async_error(natsConnection *nc, natsSubscription *sub, natsStatus err,
                           void *closure) {
    (void)sub;
    /* Slow consumers are counted from natsSubscription_GetDropped. */
    if (err == NATS_NOT_PERMITTED || err == NATS_CONNECTION_AUTH_FAILED) {
        const char *txt = nats_GetLastError(NULL);
        post_event(closure, err == NATS_NOT_PERMITTED ? EV_PERM : EV_AUTH, nc, err, txt);
    }
}

static int64_t backoff_ms(const psrpc__nats_settings *set, int attempt) {
    int64_t d = set->reconnect_wait_ms;
    for (int i = 0; i < attempt && d < set->reconnect_wait_max_ms; i++)
        d *= 2;
    if (d > set->reconnect_wait_max_ms)
        d = set->reconnect_wait_max_ms;
    /* -20 % .. +0 % jitter, so the cap holds. */
    uint64_t x = (uint64_t)psrpc__now_ns() * 0x9e3779b97f4a7c15ull;
    x ^= x >> 29;
    int64_t j = d / 5;
    if (j > 0)
        d -= (int64_t)(x % (uint64_t)(j + 1));
    return d > 0 ? d : 1;
}

/* ---- inbound messages (loop thread) ---- */

static void take_dropped(nsub *ns) {
    int64_t dropped = 0;
    if (ns->sub && natsSubscription_GetDropped(ns->sub, &dropped) == NATS_OK &&
        dropped > ns->dropped_seen) {
        PSRPC__STAT_ADD(ns->st->bus, dropped_slow_consumer,
                        (uint_fast64_t)(dropped - ns->dropped_seen));
        ns->dropped_seen = dropped;
    }
}

/* Delivers one message to a plain subscription, or to every subscription of
 * its key on a router (quirk Q10: all of them, also on a queue router). */
static void deliver(nsub *ns, natsMsg *msg) {
    nats_state *st = ns->st;
    psrpc_bus *bus = st->bus;
    const uint8_t *data = (const uint8_t *)natsMsg_GetData(msg);
    int ilen = natsMsg_GetDataLength(msg);
    size_t len = ilen > 0 ? (size_t)ilen : 0;
    if (!data)
        data = (const uint8_t *)"";
    /* Size first, before anything looks inside (R7). */
    if ((int64_t)len > bus->opts.max_message_size) {
        PSRPC__DROP(bus, dropped_oversize, PSRPC__DROP_OVERSIZE);
        return;
    }
    if (!ns->router) {
        struct psrpc__bus_sub *b = ns->plain;
        if (b && b->active)
            b->deliver(b->ctx, data, len);
        return;
    }
    char *key = NULL;
    /* On a SRV. subject every message carries its Local key (wire spec 6.2):
     * bytes without one are not a NATS psrpc message. */
    if (psrpc__wire_peek_channel(&key, data, len) != PSRPC_OK || !key[0]) {
        PSRPC__DROP(bus, dropped_malformed, PSRPC__DROP_MALFORMED);
        free(key);
        return;
    }
    struct psrpc__bus_sub *head = psrpc__map_get(&ns->routes, key);
    free(key);
    if (!head) {
        PSRPC__DROP(bus, dropped_unknown, PSRPC__DROP_UNKNOWN);
        return;
    }
    /* Snapshot: callbacks may (un)subscribe. */
    struct psrpc__bus_sub *small[8], **list = small;
    size_t n = 0;
    for (struct psrpc__bus_sub *b = head; b; b = b->next)
        n++;
    if (n > PSRPC__ARRAY_SIZE(small) && !(list = malloc(n * sizeof *list))) {
        PSRPC__DROP(bus, dropped_slow_consumer, PSRPC__DROP_SLOW_CONSUMER);
        return;
    }
    size_t i = 0;
    for (struct psrpc__bus_sub *b = head; b; b = b->next) {
        b->refs++;
        list[i++] = b;
    }
    for (i = 0; i < n; i++) {
        if (list[i]->active)
            list[i]->deliver(list[i]->ctx, data, len);
        bsub_release(list[i]);
    }
    if (list != small)
        free(list);
}

/* Messages one subscription may deliver per pull; the rest waits for the
 * next loop turn (a pull task), so timers and other I/O keep running. */
#define PULL_BUDGET 512

static void pull_task(void *arg);

/* Delivered messages are destroyed in batches: nats.c hands each one to its
 * garbage-collector thread (a mutex, and a condition signal while that thread
 * sleeps), so destroying them one by one wakes that thread per message;
 * a batch wakes it about once. */
#define DEAD_BATCH 64

static void destroy_msgs(natsMsg **dead, size_t *n) {
    for (size_t i = 0; i < *n; i++)
        natsMsg_Destroy(dead[i]);
    *n = 0;
}

/* After each read event: deliver what nats.c queued on our subscriptions
 * (they are synchronous ones, pulled here instead of pushed by a thread). */
static void nats_pull(void *arg) {
    nats_state *st = arg;
    if (st->closing)
        return;
    /* Snapshot with references: deliveries may (un)subscribe. */
    nsub *small[16], **list = small;
    size_t n = 0;
    for (nsub *ns = st->nsubs; ns; ns = ns->next)
        n++;
    if (n > PSRPC__ARRAY_SIZE(small) && !(list = malloc(n * sizeof *list)))
        return; /* pulled on the next read event */
    size_t k = 0;
    for (nsub *ns = st->nsubs; ns; ns = ns->next) {
        atomic_fetch_add(&ns->refs, 1);
        list[k++] = ns;
    }
    bool more = false;
    natsMsg *dead[DEAD_BATCH];
    size_t ndead = 0;
    for (size_t i = 0; i < n; i++) {
        nsub *ns = list[i];
        for (int got = 0; !ns->dead && ns->sub && !st->closing; got++) {
            int pending = 0;
            if (natsSubscription_GetPending(ns->sub, &pending, NULL) != NATS_OK || pending <= 0)
                break;
            if (got == PULL_BUDGET) {
                more = true;
                break;
            }
            natsMsg *msg = NULL;
            natsStatus s = natsSubscription_NextMsg(&msg, ns->sub, 0);
            if (s == NATS_SLOW_CONSUMER) {
                take_dropped(ns);
                continue;
            }
            if (s != NATS_OK)
                break;
            deliver(ns, msg);
            dead[ndead++] = msg;
            if (ndead == DEAD_BATCH)
                destroy_msgs(dead, &ndead);
        }
        nsub_release(list[i]);
    }
    destroy_msgs(dead, &ndead);
    if (list != small)
        free(list);
    if (more && !st->pull_posted) {
        st_retain(st);
        if (psrpc__bus_post(st->bus, pull_task, st) == PSRPC_OK)
            st->pull_posted = true;
        else
            st_release(st);
    }
}

static void pull_task(void *arg) {
    nats_state *st = arg;
    st->pull_posted = false;
    nats_pull(st);
    st_release(st);
}

/* ---- readiness (loop thread) ---- */

typedef struct ready_req {
    struct psrpc__bus_sub *b;
    int status;
    char *message;
} ready_req;

static void call_ready(struct psrpc__bus_sub *b, int status, const char *message) {
    if (b->active && !b->ready_done) {
        b->ready_done = true;
        if (b->ready)
            b->ready(b->ctx, status, message);
    }
}

static void ready_task(void *arg) {
    ready_req *r = arg;
    call_ready(r->b, r->status, r->message);
    bsub_release(r->b);
    free(r->message);
    free(r);
}

/* Readiness of a subscription made while its NATS subscription already had
 * an answer: reported from a task, never from inside subscribe(). */
static void settle_later(nats_state *st);

static void post_ready(nats_state *st, struct psrpc__bus_sub *b, int status, const char *message) {
    ready_req *r = calloc(1, sizeof *r);
    if (!r) {
        settle_later(st);
        return;
    }
    r->b = b;
    r->status = status;
    r->message = message ? psrpc__strdup(message) : NULL;
    b->refs++;
    if (psrpc__bus_post(st->bus, ready_task, r) != PSRPC_OK) {
        b->refs--;
        free(r->message);
        free(r);
        settle_later(st);
    }
}

/* Appends the not yet ready subscriptions of ns to *list (retained). */
static int collect_unready(nsub *ns, struct psrpc__bus_sub ***list, size_t *n, size_t *cap) {
    struct psrpc__bus_sub *one[1] = {ns->plain};
    psrpc__map_iter it;
    psrpc__map_entry *e = NULL;
    if (ns->router) {
        psrpc__map_iter_init(&it, &ns->routes);
        e = psrpc__map_iter_next(&it);
    }
    for (;;) {
        struct psrpc__bus_sub *b;
        if (ns->router) {
            if (!e)
                break;
            b = e->value;
            e = psrpc__map_iter_next(&it);
        } else {
            b = one[0];
            one[0] = NULL;
            if (!b)
                break;
        }
        for (; b; b = ns->router ? b->next : NULL) {
            if (b->ready_done || !b->active)
                continue;
            if (*n == *cap) {
                size_t nc = *cap ? *cap * 2 : 16;
                struct psrpc__bus_sub **g = realloc(*list, nc * sizeof *g);
                if (!g)
                    return PSRPC_RESOURCE_EXHAUSTED;
                *list = g;
                *cap = nc;
            }
            b->refs++;
            (*list)[(*n)++] = b;
        }
    }
    return PSRPC_OK;
}

static void ready_list(struct psrpc__bus_sub **list, size_t n, int status, const char *message) {
    for (size_t i = 0; i < n; i++) {
        call_ready(list[i], status, message);
        bsub_release(list[i]);
    }
    free(list);
}

/* Subscriptions whose SUB went out before a successful flush of the same
 * connection are confirmed. */
static void confirm_upto(nats_state *st, uint64_t upto) {
    struct psrpc__bus_sub **list = NULL;
    size_t n = 0, cap = 0;
    bool short_of_memory = false;
    for (nsub *ns = st->nsubs; ns; ns = ns->next) {
        if (ns->sub && !ns->confirmed && !ns->denied && ns->seq <= upto) {
            ns->confirmed = true;
            if (collect_unready(ns, &list, &n, &cap) != PSRPC_OK)
                short_of_memory = true;
        }
    }
    ready_list(list, n, PSRPC_OK, NULL);
    if (short_of_memory)
        settle_later(st);
}

/* The subscription can never be confirmed: its waiting subscriptions (and
 * any later one) fail with status and msg. */
static void deny(nsub *ns, int status, const char *msg) {
    if (ns->denied)
        return;
    ns->denied = status;
    ns->denied_msg = psrpc__strdup(msg);
    struct psrpc__bus_sub **list = NULL;
    size_t n = 0, cap = 0;
    int rc = collect_unready(ns, &list, &n, &cap);
    ready_list(list, n, status, msg);
    if (rc != PSRPC_OK)
        settle_later(ns->st);
}

#define SETTLE_RETRY_MS 20

/* A subscription whose NATS subscription has its answer (confirmed or
 * denied) but did not get its on_ready because memory ran out on the way
 * (the list to call, the ready task): settle_timer_cb tells it shortly, so no
 * on_ready waits until the subscription is freed. One nsub per pass, from the
 * head again (the callbacks may free subscriptions). */
static void settle_timer_cb(uv_timer_t *t) {
    nats_state *st = t->data;
    for (;;) {
        struct psrpc__bus_sub **list = NULL;
        size_t n = 0, cap = 0;
        int rc = PSRPC_OK;
        nsub *ns = st->nsubs;
        for (; ns; ns = ns->next) {
            if ((ns->confirmed || ns->denied) &&
                ((rc = collect_unready(ns, &list, &n, &cap)) != PSRPC_OK || n > 0))
                break;
        }
        if (!ns)
            return;
        int status = ns->denied ? ns->denied : PSRPC_OK;
        char msg[512];
        snprintf(msg, sizeof msg, "%s",
                 ns->denied_msg ? ns->denied_msg : "NATS refused the subscription");
        ready_list(list, n, status, status ? msg : NULL);
        if (rc != PSRPC_OK) {
            settle_later(st);
            return;
        }
    }
}

static void settle_later(nats_state *st) {
    if (st->settle_timer_init && !st->closing)
        uv_timer_start(&st->settle_timer, settle_timer_cb, SETTLE_RETRY_MS, 0);
}

/* We stopped connecting for good (repeated refusals): nothing waiting for
 * confirmation will get it. */
static void give_up(nats_state *st, int status, const char *reason) {
    st->final = true;
    st->final_status = status;
    snprintf(st->final_reason, sizeof st->final_reason, "%s", reason);
    for (nsub *ns = st->nsubs; ns; ns = ns->next)
        if (!ns->confirmed)
            deny(ns, status, reason);
}

/* "Permissions Violation for Subscription to "SUBJECT"[ using queue "bus"]" */
static void apply_permission_error(nats_state *st, const char *text, bool only_unconfirmed,
                                   uint64_t upto) {
    const char *p = strcasestr(text, "subscription to \"");
    if (!p)
        return;
    p += strlen("subscription to \"");
    const char *q = strchr(p, '"');
    if (!q)
        return;
    size_t n = (size_t)(q - p);
    for (nsub *ns = st->nsubs; ns; ns = ns->next) {
        if (strlen(ns->subject) != n || memcmp(ns->subject, p, n) != 0)
            continue;
        if (only_unconfirmed && (ns->confirmed || !ns->sub || ns->seq > upto))
            continue;
        char msg[512];
        snprintf(msg, sizeof msg, "NATS refused the subscription to %s: %s", ns->subject, text);
        deny(ns, PSRPC_PERMISSION_DENIED, msg);
    }
}

/* ---- worker jobs ---- */

typedef struct flush_job {
    nats_state *st;
    natsConnection *nc;
    uint64_t upto, epoch;
    nats_event *ev; /* EV_FLUSHED, allocated with the job */
} flush_job;

#define FLUSH_RETRY_MS 20

/* flush_inflight stays set until EV_FLUSHED arrives: it must not be lost for
 * lack of memory (no subscription would be confirmed again), so it is
 * allocated with the job and posted on its own node. */
static void flush_run(void *arg) {
    flush_job *j = arg;
    nats_state *st = j->st;
    nats_event *ev = j->ev;
    natsStatus s = natsConnection_FlushTimeout(j->nc, st->set.connect_timeout_ms);
    ev->st = st;
    ev->kind = EV_FLUSHED;
    ev->nc = j->nc;
    ev->status = s;
    ev->upto = j->upto;
    ev->epoch = j->epoch;
    const char *txt = NULL;
    if (s == NATS_OK && natsConnection_GetLastError(j->nc, &txt) == NATS_NOT_PERMITTED)
        ev->text = dup_text(txt);
    free(j);
    deliver_event(st, ev);
}

static void request_flush(nats_state *st);

static void flush_timer_cb(uv_timer_t *t) { request_flush(t->data); }

static void request_flush(nats_state *st) {
    if (!st->nc || st->closing || !st->worker)
        return;
    if (st->flush_inflight) {
        st->flush_again = true;
        return;
    }
    flush_job *j = malloc(sizeof *j);
    nats_event *ev = j ? calloc(1, sizeof *ev) : NULL;
    if (ev) {
        *j = (flush_job){st, st->nc, st->sub_seq, st->epoch, ev};
        if (psrpc__loop_post(st->worker, flush_run, j) == PSRPC_OK) {
            st->flush_inflight = true;
            return;
        }
    }
    free(ev);
    free(j);
    /* Out of memory: the subscriptions waiting for this flush would wait for
     * good; try again shortly. */
    if (st->flush_timer_init)
        uv_timer_start(&st->flush_timer, flush_timer_cb, FLUSH_RETRY_MS, 0);
}

/* connect_inflight stays set until EV_CONNECT_RESULT arrives (the bus would
 * never connect again without it): the event is allocated by start_connect
 * and is the job's argument. */
static void connect_run(void *arg) {
    nats_event *ev = arg;
    nats_state *st = ev->st;
    if (st->w_nc) {
        natsConnection_Destroy(st->w_nc);
        st->w_nc = NULL;
    }
    /* Counted before Connect: its callbacks may run before it returns. */
    st_retain(st);
    pthread_mutex_lock(&st->mu);
    st->live_conns++;
    pthread_mutex_unlock(&st->mu);
    natsConnection *nc = NULL;
    natsStatus s = natsConnection_Connect(&nc, st->opts);
    const char *txt = NULL;
    char why[384], full[512];
    if (s == NATS_OK) {
        st->w_nc = nc;
    } else {
        txt = nats_GetLastError(NULL);
        if (!txt || !*txt)
            txt = natsStatus_GetText(s);
        /* nats.c says only "No server available for connection" and drops
         * the errno: find out why (refused, unresolvable host, timeout). */
        int64_t probe_ms = st->set.connect_timeout_ms < 500 ? st->set.connect_timeout_ms : 500;
        if (s == NATS_NO_SERVER && st->servers &&
            psrpc__nats_probe(st->servers, (int)probe_ms, why, sizeof why) > 0) {
            snprintf(full, sizeof full, "%s (%s)", txt, why);
            txt = full;
        }
        nc = NULL;
        pthread_mutex_lock(&st->mu);
        st->live_conns--;
        pthread_mutex_unlock(&st->mu);
        st_release(st); /* not the last: the bus holds one */
    }
    ev->kind = EV_CONNECT_RESULT;
    ev->nc = nc;
    ev->status = s;
    ev->text = txt ? dup_text(txt) : NULL;
    deliver_event(st, ev);
}

static void schedule_retry(nats_state *st);

static void start_connect(nats_state *st) {
    if (!st->worker || st->connect_inflight || st->closing || st->final)
        return;
    nats_event *ev = calloc(1, sizeof *ev);
    if (ev) {
        ev->st = st;
        if (psrpc__loop_post(st->worker, connect_run, ev) == PSRPC_OK) {
            st->connect_inflight = true;
            return;
        }
        free(ev);
    }
    schedule_retry(st); /* out of memory: try again after the backoff */
}

static void retry_timer_cb(uv_timer_t *t) {
    nats_state *st = t->data;
    if (st->closing)
        return;
    PSRPC__STAT_ADD(st->bus, reconnect_attempts, 1);
    start_connect(st);
}

static void schedule_retry(nats_state *st) {
    if (st->closing || st->final || !st->timer_init)
        return;
    uv_timer_start(&st->timer, retry_timer_cb, (uint64_t)backoff_ms(&st->set, st->attempt++), 0);
}

static void final_task(void *arg);

static void close_run(void *arg) {
    nats_state *st = arg;
    if (st->w_nc) {
        if (natsConnection_Status(st->w_nc) == NATS_CONN_STATUS_CONNECTED)
            natsConnection_FlushTimeout(st->w_nc, CLOSE_FLUSH_MS);
        natsConnection_Destroy(st->w_nc); /* closes; on_closed follows */
        st->w_nc = NULL;
    }
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += CLOSE_WAIT_MS / 1000;
    pthread_mutex_lock(&st->mu);
    int rc = 0;
    while (st->live_conns > 0 && rc == 0)
        rc = pthread_cond_timedwait(&st->cond, &st->mu, &until);
    pthread_mutex_unlock(&st->mu);
    /* From here on nats.c cannot reach the bus (late callbacks after a
     * timed-out wait find the gate shut and only touch st, which they hold). */
    pthread_mutex_lock(&st->cb_mu);
    st->detached = true;
    pthread_mutex_unlock(&st->cb_mu);
    /* The loop cannot be stopping: it waits for this close. */
    psrpc__loop_post_node(st->bus->loop, &st->final_node, final_task, st);
}

/* ---- subscriptions on the connection (loop thread) ---- */

static void nsub_unsubscribe_nats(nsub *ns) {
    if (!ns->sub)
        return;
    take_dropped(ns);
    natsSubscription_Destroy(ns->sub); /* UNSUB; what it had queued is dropped */
    ns->sub = NULL;
}

static void nsub_subscribe_nats(nats_state *st, nsub *ns) {
    if (!st->nc || ns->sub || ns->dead || st->closing)
        return;
    /* Synchronous: nats.c queues, nats_pull delivers on this thread. */
    natsSubscription *sub = NULL;
    natsStatus s = ns->queue ? natsConnection_QueueSubscribeSync(&sub, st->nc, ns->subject,
                                                                 PSRPC__NATS_QUEUE_GROUP)
                             : natsConnection_SubscribeSync(&sub, st->nc, ns->subject);
    if (s != NATS_OK)
        return; /* connection going away: the next connection subscribes again */
    int cap = st->set.queue_capacity > INT_MAX ? INT_MAX : (int)st->set.queue_capacity;
    natsSubscription_SetPendingLimits(sub, cap, NATS_PENDING_BYTES);
    ns->dropped_seen = 0;
    ns->sub = sub;
    ns->seq = ++st->sub_seq;
    request_flush(st);
}

static void drop_all_nats_subs(nats_state *st) {
    for (nsub *ns = st->nsubs; ns; ns = ns->next)
        nsub_unsubscribe_nats(ns);
}

/* ---- events (loop thread) ---- */

static void set_down(nats_state *st, int status, const char *fmt, const char *text) {
    char reason[256];
    snprintf(reason, sizeof reason, fmt, st->bus->url_safe, text && *text ? text : "-");
    psrpc__bus_set_state(st->bus, PSRPC_BUS_DISCONNECTED, status, reason);
    if (st->final)
        give_up(st, status, reason);
}

static void early_drop(nats_state *st) {
    while (st->early_head) {
        early_pub *e = st->early_head;
        st->early_head = e->next;
        psrpc_msg_release(e->bytes);
        free(e->subject);
        free(e);
    }
    st->early_tail = &st->early_head;
    st->early_bytes = 0;
}

static void early_send(nats_state *st) {
    for (early_pub *e = st->early_head; e; e = e->next)
        natsConnection_Publish(st->nc, e->subject, e->bytes->data, (int)e->bytes->len);
    early_drop(st);
}

static void on_connect_result(nats_state *st, nats_event *ev) {
    st->connect_inflight = false;
    if (st->closing || st->final)
        return;
    if (ev->status == NATS_OK) {
        st->nc = ev->nc;
        st->attempt = 0;
        st->auth_failures = 0;
        st->epoch++;
        st->up_pending = true;
        for (nsub *ns = st->nsubs; ns; ns = ns->next)
            nsub_subscribe_nats(st, ns);
        early_send(st);
        request_flush(st);
        return;
    }
    early_drop(st);
    int status = classify(ev->status, ev->text);
    st->auth_failures = status == PSRPC_UNAUTHENTICATED ? st->auth_failures + 1 : 0;
    if (st->auth_failures >= MAX_AUTH_FAILURES) {
        st->final = true; /* set_down fails what waits */
        set_down(st, status, "cannot connect to %s: %s (not retrying after repeated refusals)",
                 ev->text);
        return;
    }
    set_down(st, status, "cannot connect to %s: %s", ev->text);
    schedule_retry(st);
}

static void on_flushed(nats_state *st, nats_event *ev) {
    st->flush_inflight = false;
    if (st->closing)
        return;
    if (st->nc && ev->nc == st->nc) {
        if (ev->status == NATS_OK) {
            if (ev->text)
                apply_permission_error(st, ev->text, true, ev->upto);
            confirm_upto(st, ev->upto);
            if (st->up_pending && ev->epoch == st->epoch &&
                natsConnection_Status(st->nc) == NATS_CONN_STATUS_CONNECTED) {
                st->up_pending = false;
                psrpc__bus_set_state(st->bus, PSRPC_BUS_CONNECTED, 0, NULL);
            }
        } else if (natsConnection_Status(st->nc) == NATS_CONN_STATUS_CONNECTED) {
            st->flush_again = true; /* timed out on a live link: again */
        }
    }
    if (st->flush_again) {
        st->flush_again = false;
        request_flush(st);
    }
}

static void on_closed_event(nats_state *st, nats_event *ev) {
    if (st->closing || !st->nc || ev->nc != st->nc)
        return;
    /* The connection is gone (a lost link: nats.c does not reconnect it, see
     * bus_nats_opts.c; or a fatal -ERR): a new one replaces it. */
    st->nc = NULL;
    st->epoch++;
    st->up_pending = false;
    drop_all_nats_subs(st);
    int status = classify(ev->status, ev->text);
    if (status == PSRPC_UNAUTHENTICATED) {
        st->final = true; /* set_down fails what waits */
        set_down(st, status, "connection to %s closed: %s (not retrying after repeated refusals)",
                 ev->text);
        return;
    }
    set_down(st, status, "connection to %s closed: %s; connecting again", ev->text);
    schedule_retry(st);
}

static void event_task(void *arg) {
    nats_event *ev = arg;
    nats_state *st = ev->st;
    switch (ev->kind) {
    case EV_CONNECT_RESULT:
        on_connect_result(st, ev);
        break;
    case EV_FLUSHED:
        on_flushed(st, ev);
        break;
    case EV_DOWN:
        if (!st->closing && st->nc && ev->nc == st->nc) {
            st->epoch++;
            st->up_pending = false;
            set_down(st, PSRPC_UNAVAILABLE, "lost the connection to %s (%s); reconnecting",
                     ev->text);
        }
        break;
    case EV_AUTH:
        if (!st->closing && st->nc && ev->nc == st->nc)
            set_down(st, PSRPC_UNAUTHENTICATED, "%s refused the credentials: %s", ev->text);
        break;
    case EV_PERM:
        if (!st->closing && st->nc && ev->nc == st->nc && ev->text)
            apply_permission_error(st, ev->text, false, 0);
        break;
    case EV_CLOSED:
        on_closed_event(st, ev);
        break;
    }
    free(ev->text);
    free(ev);
}

/* ---- the transport interface (loop thread) ---- */

static void nats_start(psrpc_bus *bus) {
    nats_state *st = bus->transport_state;
    psrpc__bus_retain(bus); /* until close is done: nats.c may still call in */
    st->holds_bus = true;
    if (uv_timer_init(psrpc__loop_uv(bus->loop), &st->timer) == 0) {
        st->timer.data = st;
        st->timer_init = true;
    }
    if (uv_timer_init(psrpc__loop_uv(bus->loop), &st->flush_timer) == 0) {
        st->flush_timer.data = st;
        st->flush_timer_init = true;
    }
    if (uv_timer_init(psrpc__loop_uv(bus->loop), &st->settle_timer) == 0) {
        st->settle_timer.data = st;
        st->settle_timer_init = true;
    }
    st->evctx.loop = bus->loop;
    if (psrpc__loop_start(&st->worker) != PSRPC_OK) {
        st->worker = NULL;
        psrpc__bus_set_state(bus, PSRPC_BUS_DISCONNECTED, PSRPC_UNAVAILABLE,
                             "cannot start the NATS worker thread");
        give_up(st, PSRPC_UNAVAILABLE, "cannot start the NATS worker thread");
        return;
    }
    start_connect(st);
}

static int nats_publish(psrpc_bus *bus, const psrpc__channel *ch, psrpc_msg *bytes) {
    nats_state *st = bus->transport_state;
    if (st->closing)
        return psrpc__error(PSRPC_CANCELED, "bus is closed");
    if (!psrpc__nats_subject_valid(ch->server))
        return psrpc__error(PSRPC_INVALID_ARGUMENT, "\"%s\" is not a valid NATS subject",
                            ch->server ? ch->server : "");
    if (!st->nc) {
        /* The first connection is being made: keep it for then, bounded like
         * nats.c's reconnect buffer. */
        if (st->final || atomic_load(&bus->conn_state) != 0)
            return psrpc__error(PSRPC_UNAVAILABLE, "nats: not connected to %s", bus->url_safe);
        if (st->early_bytes + (int64_t)bytes->len > st->set.reconnect_buffer_size ||
            bytes->len > INT_MAX)
            return psrpc__error(PSRPC_UNAVAILABLE,
                                "nats: connecting to %s and the reconnect buffer (%lld bytes) is "
                                "full",
                                bus->url_safe, (long long)st->set.reconnect_buffer_size);
        early_pub *e = calloc(1, sizeof *e);
        if (!e || !(e->subject = psrpc__strdup(ch->server))) {
            free(e);
            return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
        }
        e->bytes = psrpc_msg_retain(bytes);
        *st->early_tail = e;
        st->early_tail = &e->next;
        st->early_bytes += (int64_t)bytes->len;
        return PSRPC_OK;
    }
    int64_t max = natsConnection_GetMaxPayload(st->nc);
    if (bytes->len > INT_MAX || (max > 0 && (int64_t)bytes->len > max))
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED,
                            "message of %zu bytes exceeds the NATS server's max_payload of %lld "
                            "bytes",
                            bytes->len, (long long)max);
    natsStatus s = natsConnection_Publish(st->nc, ch->server, bytes->data, (int)bytes->len);
    if (s == NATS_OK)
        return PSRPC_OK;
    const char *txt = clean_text(nats_GetLastError(NULL));
    int rc;
    if (s == NATS_MAX_PAYLOAD)
        rc = psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "nats: publish to %s refused: %s", ch->server,
                          *txt ? txt : natsStatus_GetText(s));
    else if (s == NATS_INSUFFICIENT_BUFFER)
        rc = psrpc__error(PSRPC_UNAVAILABLE,
                          "nats: reconnecting to %s and the reconnect buffer (%lld bytes) is full",
                          bus->url_safe, (long long)st->set.reconnect_buffer_size);
    else
        rc = psrpc__error(PSRPC_UNAVAILABLE, "nats: publish to %s failed: %s", ch->server,
                          *txt ? txt : natsStatus_GetText(s));
    return rc;
}

static nsub *nsub_new(nats_state *st, const char *subject, bool queue, bool router) {
    nsub *ns = calloc(1, sizeof *ns);
    if (!ns || !(ns->subject = psrpc__strdup(subject))) {
        free(ns);
        return NULL;
    }
    atomic_init(&ns->refs, 1);
    ns->st = st;
    ns->queue = queue;
    ns->router = router;
    psrpc__map_init(&ns->routes);
    return ns;
}

static void nsub_link(nats_state *st, nsub *ns) {
    ns->prev = NULL;
    ns->next = st->nsubs;
    if (st->nsubs)
        st->nsubs->prev = ns;
    st->nsubs = ns;
}

static void nsub_unlink(nats_state *st, nsub *ns) {
    if (ns->prev)
        ns->prev->next = ns->next;
    else if (st->nsubs == ns)
        st->nsubs = ns->next;
    if (ns->next)
        ns->next->prev = ns->prev;
    ns->prev = ns->next = NULL;
}

/* Removes a NATS subscription nobody uses any more. */
static void nsub_drop(nats_state *st, nsub *ns) {
    if (ns->router && psrpc__map_get(&st->routers, ns->subject) == ns)
        psrpc__map_del(&st->routers, ns->subject);
    nsub_unlink(st, ns);
    ns->dead = true;
    nsub_unsubscribe_nats(ns);
    nsub_release(ns);
}

static psrpc__bus_sub *nats_subscribe(psrpc_bus *bus, const psrpc__channel *ch, bool queue,
                                      psrpc__deliver_fn deliver, psrpc__ready_fn ready, void *ctx) {
    nats_state *st = bus->transport_state;
    if (st->closing) {
        psrpc__error(PSRPC_CANCELED, "bus is closed");
        return NULL;
    }
    const char *subject = ch->server;
    if (!psrpc__nats_subject_valid(subject)) {
        psrpc__error(PSRPC_INVALID_ARGUMENT,
                     "\"%s\" is not a valid NATS subject (names must be subject-safe, quirk Q8)",
                     subject ? subject : "");
        return NULL;
    }
    bool router = ch->local && ch->local[0];
    nsub *ns = router ? psrpc__map_get(&st->routers, subject) : NULL;
    if (ns && ns->queue != queue) {
        psrpc__error(PSRPC_FAILED_PRECONDITION,
                     "NATS subject %s already has a %s subscription on this bus; one bus cannot "
                     "queue-subscribe and plain-subscribe the same subject (quirk Q11)",
                     subject, ns->queue ? "queue" : "plain");
        return NULL;
    }
    struct psrpc__bus_sub *b = calloc(1, sizeof *b);
    if (!b || (router && !(b->key = psrpc__strdup(ch->local)))) {
        free(b);
        psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
        return NULL;
    }
    b->refs = 1;
    b->active = true;
    b->deliver = deliver;
    b->ready = ready;
    b->ctx = ctx;
    bool fresh = ns == NULL;
    if (fresh) {
        ns = nsub_new(st, subject, queue, router);
        if (!ns || (router && psrpc__map_put(&st->routers, subject, ns) != PSRPC_OK)) {
            if (ns)
                nsub_release(ns);
            bsub_release(b);
            psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
            return NULL;
        }
        nsub_link(st, ns);
    }
    b->ns = ns;
    if (router) {
        struct psrpc__bus_sub *head = psrpc__map_get(&ns->routes, b->key);
        if (head) {
            while (head->next)
                head = head->next;
            head->next = b;
        } else if (psrpc__map_put(&ns->routes, b->key, b) != PSRPC_OK) {
            if (fresh)
                nsub_drop(st, ns);
            bsub_release(b);
            psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
            return NULL;
        }
    } else {
        ns->plain = b;
    }
    if (fresh && st->final) {
        ns->denied = st->final_status;
        ns->denied_msg = psrpc__strdup(st->final_reason);
    }
    if (fresh && !ns->denied)
        nsub_subscribe_nats(st, ns);
    else if (ns->denied)
        post_ready(st, b, ns->denied, ns->denied_msg);
    else if (ns->confirmed)
        post_ready(st, b, PSRPC_OK, NULL);
    return b;
}

static void nats_unsubscribe(psrpc_bus *bus, psrpc__bus_sub *sub) {
    nats_state *st = bus->transport_state;
    struct psrpc__bus_sub *b = sub;
    nsub *ns = b->ns;
    b->active = false;
    bool empty;
    if (ns->router) {
        struct psrpc__bus_sub *head = psrpc__map_get(&ns->routes, b->key);
        if (head == b) {
            if (b->next)
                psrpc__map_put(&ns->routes, b->key, b->next); /* replaces: no allocation */
            else
                psrpc__map_del(&ns->routes, b->key);
        } else {
            for (struct psrpc__bus_sub *p = head; p; p = p->next) {
                if (p->next == b) {
                    p->next = b->next;
                    break;
                }
            }
        }
        b->next = NULL;
        empty = ns->routes.count == 0;
    } else {
        ns->plain = NULL;
        empty = true;
    }
    if (empty && !ns->dead)
        nsub_drop(st, ns);
    bsub_release(b);
}

static void final_task(void *arg) {
    nats_state *st = arg;
    psrpc_bus *bus = st->bus;
    if (st->worker) {
        psrpc__loop_free(st->worker); /* joins the idle worker thread */
        st->worker = NULL;
    }
    if (atomic_load(&bus->conn_state) == PSRPC_BUS_CONNECTED)
        PSRPC__STAT_ADD(bus, disconnects, 1);
    void (*done)(psrpc_bus *) = st->done;
    bool holds = st->holds_bus;
    st->holds_bus = false;
    done(bus);
    if (holds)
        psrpc__bus_release(bus);
}

static void nats_close(psrpc_bus *bus, void (*done)(psrpc_bus *bus)) {
    nats_state *st = bus->transport_state;
    if (st->closing)
        return;
    st->closing = true;
    st->done = done;
    early_drop(st);
    if (st->timer_init) {
        uv_timer_stop(&st->timer);
        uv_close((uv_handle_t *)&st->timer, NULL);
        st->timer_init = false;
    }
    if (st->flush_timer_init) {
        uv_timer_stop(&st->flush_timer);
        uv_close((uv_handle_t *)&st->flush_timer, NULL);
        st->flush_timer_init = false;
    }
    if (st->settle_timer_init) {
        uv_timer_stop(&st->settle_timer);
        uv_close((uv_handle_t *)&st->settle_timer, NULL);
        st->settle_timer_init = false;
    }
    for (nsub *ns = st->nsubs; ns; ns = ns->next) {
        nsub_unsubscribe_nats(ns);
        ns->dead = true;
    }
    st->nc = NULL;
    if (!st->worker ||
        psrpc__loop_post_node(st->worker, &st->close_node, close_run, st) != PSRPC_OK) {
        pthread_mutex_lock(&st->cb_mu);
        st->detached = true;
        pthread_mutex_unlock(&st->cb_mu);
        if (psrpc__loop_post_node(bus->loop, &st->final_node, final_task, st) != PSRPC_OK)
            final_task(st);
    }
}

static void free_route_list(struct psrpc__bus_sub *b) {
    while (b) {
        struct psrpc__bus_sub *next = b->next;
        b->active = false;
        b->next = NULL;
        bsub_release(b);
        b = next;
    }
}

static void nats_destroy(psrpc_bus *bus) {
    nats_state *st = bus->transport_state;
    if (!st)
        return;
    bus->transport_state = NULL;
    if (st->worker) {
        psrpc__loop_free(st->worker);
        st->worker = NULL;
    }
    if (st->w_nc) { /* only if the bus was never closed */
        natsConnection_Destroy(st->w_nc);
        st->w_nc = NULL;
    }
    /* Subscriptions the core never released. */
    while (st->nsubs) {
        nsub *ns = st->nsubs;
        nsub_unlink(st, ns);
        ns->dead = true;
        nsub_unsubscribe_nats(ns);
        if (ns->router) {
            psrpc__map_iter it;
            psrpc__map_iter_init(&it, &ns->routes);
            for (psrpc__map_entry *e; (e = psrpc__map_iter_next(&it));)
                free_route_list(e->value);
            psrpc__map_clear(&ns->routes);
        } else {
            free_route_list(ns->plain);
            ns->plain = NULL;
        }
        nsub_release(ns);
    }
    psrpc__map_clear(&st->routers);
    early_drop(st);
    natsOptions_Destroy(st->opts);
    st->opts = NULL;
    pthread_mutex_lock(&st->cb_mu);
    st->detached = true;
    pthread_mutex_unlock(&st->cb_mu);
    st_release(st);
}

static const psrpc__transport psrpc__transport_nats = {
    .scheme = "nats",
    .start = nats_start,
    .publish = nats_publish,
    .subscribe = nats_subscribe,
    .unsubscribe = nats_unsubscribe,
    .close = nats_close,
    .destroy = nats_destroy,
};

int psrpc__nats_open(psrpc_bus *bus, const char *url) {
    /* nats.c starts its library threads (timers, asynchronous callbacks,
     * garbage collection) on first use, from the calling thread: open it
     * with SIGPIPE blocked so that they inherit the mask. (The threads it
     * creates later come from our loop and worker threads, which block it.)
     * Idempotent: later calls only check. */
    sigset_t old;
    psrpc__sigpipe_block(&old);
    natsStatus os = nats_Open(-1);
    psrpc__sigmask_restore(&old);
    if (os != NATS_OK)
        return psrpc__error(PSRPC_INTERNAL, "nats: the nats.c library failed to initialize: %s",
                            natsStatus_GetText(os));
    nats_state *st = calloc(1, sizeof *st);
    if (!st)
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
    psrpc__nats_settings_init(&st->set, &bus->opts);
    int rc = psrpc__nats_options_new(&st->opts, url, &bus->opts, &st->set);
    if (rc != PSRPC_OK) {
        free(st);
        return rc;
    }
    st->servers = psrpc__nats_server_list(url); /* NULL: errors less precise */
    natsStatus s = natsOptions_SetClosedCB(st->opts, on_closed, st);
    if (s == NATS_OK)
        s = natsOptions_SetDisconnectedCB(st->opts, on_disconnected, st);
    if (s == NATS_OK)
        s = natsOptions_SetErrorHandler(st->opts, on_async_error, st);
    st->evctx.after_read = nats_pull;
    st->evctx.arg = st;
    if (s == NATS_OK)
        s = psrpc__nats_set_event_loop(st->opts, &st->evctx);
    if (s != NATS_OK) {
        natsOptions_Destroy(st->opts);
        free(st->servers);
        free(st);
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "cannot set the NATS callbacks");
    }
    atomic_init(&st->refs, 1);
    st->bus = bus;
    pthread_mutex_init(&st->cb_mu, NULL);
    pthread_mutex_init(&st->mu, NULL);
    pthread_cond_init(&st->cond, NULL);
    psrpc__map_init(&st->routers);
    st->early_tail = &st->early_head;
    bus->transport = &psrpc__transport_nats;
    bus->transport_state = st;
    return PSRPC_OK;
}
