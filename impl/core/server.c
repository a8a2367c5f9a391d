/* psrpc_server: method registry, request dispatch, claims, answers from any
 * thread, graceful and forced close (wire-protocol.md 8.2, 9, 10). */
#include <pthread.h>
#include <stdio.h>

#include "chan_cache.h"
#include "core.h"
#include "hooks.h"
#include "live_set.h"
#include "map.h"
#include "stream.h"

#define SERVER_MAGIC 0x50535256u  /* "PSRV" */
#define REQUEST_MAGIC 0x50524551u /* "PREQ" */
#define EXPIRY_CLAMP_NS (5LL * 60 * 1000000000LL)

typedef struct reg reg;

struct psrpc_server {
    uint32_t magic;
    atomic_int refs;
    atomic_bool closing; /* close requested */
    atomic_bool killed;  /* answers are discarded from now on */
    atomic_bool freed;
    psrpc_bus *bus;
    char *service;
    char *id;
    int64_t timeout_ms;
    uint32_t flags;
    psrpc__child child;
    psrpc__task_node free_node; /* psrpc_server_free's close */

    /* Any thread, under mu: registered keys and readiness. */
    pthread_mutex_t mu;
    pthread_cond_t cond;
    psrpc__map keys; /* legacy RPC channel name → reg (until deregistered or closed) */
    int ready_pending;
    int ready_error;
    char ready_message[256];

    /* Loop thread. */
    int state; /* PSRPC__OPEN, CLOSING, CLOSED */
    bool started;
    bool forced;
    reg *regs;
    psrpc__map claims; /* request_id → psrpc_request waiting for a ClaimResponse */
    /* What the claims table holds, capped (PSRPC__HOLD_MAX_*): anyone who can
     * publish on a request channel parks requests here until their expiry.
     * Written on the loop thread, read by tests from any thread. */
    atomic_size_t held_count, held_bytes;
    size_t hold_max_count, hold_max_bytes;
    psrpc__map streams; /* stream_id → srv_stream (accepted, not yet ended) */
    /* Request ids whose ClaimResponse came before the request itself (the
     * client chose another server while this one was still behind): the
     * request is dropped on arrival instead of claimed and held until its
     * expiry. The last DECIDED_MAX ids, oldest forgotten first. */
    psrpc__map decided;
    char (*decided_ring)[48];
    size_t decided_next;
    psrpc__chan_cache peers; /* loop thread: the response, claim and stream
                                channels of the clients it answers */
    /* Requests in the handler stage. Raised on the loop thread; lowered by
     * the answer's task, or at once by an answer that cannot reach the loop
     * (out of memory), so it is atomic; a draining close polls it. */
    atomic_int inflight;
    int64_t latest_expiry_ns;
    uint64_t drain_until; /* loop time when a graceful close stops waiting */
    uv_timer_t drain_timer;
    bool drain_timer_on;
    psrpc__closed_waiter *closed_waiters;
    void (*child_done)(psrpc__child *);
    _Atomic(psrpc__hooks *) hooks; /* any thread; immutable chains */
};

struct reg {
    atomic_int refs;
    psrpc_server *server;
    psrpc__method method;
    char **topics;
    size_t topic_count;
    bool require_claim;
    psrpc__channel req_ch, rclaim_ch;
    psrpc__bus_sub *req_sub, *rclaim_sub, *str_sub;
    bool is_stream;
    psrpc_handler_cb handler;
    psrpc_stream_handler_cb stream_handler; /* set for stream methods */
    psrpc__channel str_ch;
    psrpc_affinity_cb affinity;
    psrpc_done_cb on_ready;
    void *user_data;
    psrpc_release_cb release;
    bool active;
    atomic_bool deregistered; /* set by psrpc_server_deregister, any thread */
    bool released;
    int ready_pending;
    bool ready_reported;
    reg *next;
};

enum { STAGE_AFFINITY = 1, STAGE_CLAIMING, STAGE_HANDLER, STAGE_DONE };

struct psrpc_request {
    uint32_t magic;
    atomic_int refs;
    atomic_int stage;
    psrpc_server *server; /* holds a reference */
    reg *reg;             /* holds a reference */
    char *request_id;
    char *client_id;
    char *method;
    char **topics;
    size_t topic_count;
    char **meta_keys;
    char **meta_values;
    size_t meta_count;
    int64_t sent_at;
    int64_t expiry;
    psrpc_msg *payload;
    float affinity;
    bool skip_claim; /* the caller allows an announcement instead of a claim */
    char *stream_id; /* a stream open (payload empty) */
    /* Claim wait (loop thread). */
    uv_timer_t claim_timer;
    bool claim_timer_on;
    bool in_claims;
    size_t held_bytes; /* counted in the server's held_bytes while in_claims */
    /* Hooks: the server's chain when the request arrived (NULL: none). */
    const psrpc__hooks *hooks;
    int64_t arrived_ns; /* monotonic, when hooks are set */
    bool hooked;        /* passed the before hooks: its answer is reported */
    bool rejecting;     /* answered in the affinity stage (psrpc_request_reject) */
};

static void server_release(psrpc_server *s);

/* ---------------------------------------------------------------- helpers */

static void server_retain(psrpc_server *s) { atomic_fetch_add(&s->refs, 1); }

static void server_destroy(psrpc_server *s) {
    psrpc__map_clear(&s->keys);
    psrpc__map_clear(&s->claims);
    psrpc__map_clear(&s->decided);
    free(s->decided_ring);
    psrpc__map_clear(&s->streams);
    psrpc__chan_cache_clear(&s->peers);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cond);
    psrpc__hooks_free(atomic_load(&s->hooks));
    free(s->service);
    free(s->id);
    psrpc_bus *bus = s->bus;
    s->magic = 0;
    free(s);
    psrpc__bus_release(bus);
}

static void server_release(psrpc_server *s) {
    if (atomic_fetch_sub(&s->refs, 1) == 1)
        server_destroy(s);
}

static void reg_release(reg *r) {
    if (atomic_fetch_sub(&r->refs, 1) != 1)
        return;
    psrpc__method_clear(&r->method);
    psrpc__strv_free(r->topics, r->topic_count);
    psrpc__channel_clear(&r->req_ch);
    psrpc__channel_clear(&r->rclaim_ch);
    psrpc__channel_clear(&r->str_ch);
    server_release(r->server);
    free(r);
}

static void request_free(psrpc_request *q) {
    psrpc__live_del(q); /* from now on calls on q are recognised as stale */
    q->magic = 0;
    free(q->stream_id);
    free(q->request_id);
    free(q->client_id);
    free(q->method);
    psrpc__strv_free(q->topics, q->topic_count);
    psrpc__strv_free(q->meta_keys, q->meta_count);
    psrpc__strv_free(q->meta_values, q->meta_count);
    psrpc_msg_release(q->payload);
    reg_release(q->reg);
    server_release(q->server);
    free(q);
}

static void request_release(psrpc_request *q) {
    if (atomic_fetch_sub(&q->refs, 1) == 1)
        request_free(q);
}

static void claim_timer_closed(uv_handle_t *h) {
    psrpc_request *q = h->data;
    request_release(q);
}

/* Takes q out of the claims table (loop thread). */
static void claims_remove(psrpc_request *q) {
    if (!q->in_claims)
        return;
    /* in_claims means the map entry under its id is q (send_claim drops a
     * duplicate id instead of replacing the entry). */
    psrpc_server *s = q->server;
    psrpc__map_del(&s->claims, q->request_id);
    q->in_claims = false;
    atomic_fetch_sub(&s->held_count, 1);
    atomic_fetch_sub(&s->held_bytes, q->held_bytes);
}

/* Roughly what a held request occupies: the request, its strings, payload. */
static size_t request_bytes(const psrpc_request *q) {
    size_t n = sizeof *q + strlen(q->request_id) + strlen(q->client_id) + strlen(q->method) + 3 +
               (q->payload ? sizeof(psrpc_msg) + q->payload->len : 0);
    for (size_t i = 0; i < q->meta_count; i++)
        n += strlen(q->meta_keys[i]) + strlen(q->meta_values[i]) + 2 + 2 * sizeof(char *);
    if (q->stream_id)
        n += strlen(q->stream_id) + 1;
    return n;
}

/* Drops the loop's hold on a request waiting for its claim (loop thread). */
static void claim_forget(psrpc_request *q) {
    claims_remove(q);
    if (q->claim_timer_on) {
        q->claim_timer_on = false;
        uv_timer_stop(&q->claim_timer);
        uv_close((uv_handle_t *)&q->claim_timer, claim_timer_closed);
    } else {
        request_release(q);
    }
}

static void report_ready(psrpc_server *s, reg *r, int status, const char *message) {
    if (r->ready_reported)
        return;
    r->ready_reported = true;
    if (r->on_ready) {
        if (status == PSRPC_OK) {
            r->on_ready(NULL, r->user_data);
        } else {
            psrpc__err *e = psrpc__err_new(status, "%s", message ? message : "subscribe failed");
            psrpc_error view = {
                status, 0, psrpc_status_code(status), message ? message : "subscribe failed",
                NULL,   0};
            if (e)
                psrpc__err_view(e, &view); /* else (out of memory) the static view */
            r->on_ready(&view, r->user_data);
            psrpc__err_free(e);
        }
    }
    pthread_mutex_lock(&s->mu);
    if (status != PSRPC_OK && s->ready_error == PSRPC_OK) {
        s->ready_error = status;
        snprintf(s->ready_message, sizeof s->ready_message, "%s",
                 message ? message : "subscribe failed");
    }
    s->ready_pending--;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->mu);
}

/* Runs the registration's release once, after its last callback. */
static void reg_finish(reg *r) {
    if (r->released)
        return;
    r->released = true;
    r->active = false;
    report_ready(r->server, r, PSRPC_CANCELED, "server is closed");
    if (r->release)
        r->release(r->user_data);
}

static void reg_unsubscribe(reg *r) {
    psrpc_bus *bus = r->server->bus;
    r->active = false;
    psrpc__bus_unsubscribe(bus, r->req_sub);
    psrpc__bus_unsubscribe(bus, r->rclaim_sub);
    psrpc__bus_unsubscribe(bus, r->str_sub);
    r->req_sub = r->rclaim_sub = r->str_sub = NULL;
}

/* ---------------------------------------------------------------- streams */

/* ---------------------------------------------------------------- hooks */

static psrpc_call_info request_info(const psrpc_request *q, unsigned kind) {
    psrpc_server *s = q->server;
    psrpc_call_info info = {sizeof info,
                            kind,
                            PSRPC_ROLE_SERVER,
                            0,
                            s->service,
                            q->method,
                            (const char *const *)q->topics,
                            q->topic_count,
                            0,
                            q->client_id,
                            s->id,
                            q->request_id,
                            q->expiry};
    return info;
}

static unsigned request_kind(const psrpc_request *q) {
    if (q->stream_id)
        return PSRPC_CALL_KIND_STREAM;
    return q->reg->method.routing == PSRPC_ROUTING_MULTI ? PSRPC_CALL_KIND_MULTI
                                                         : PSRPC_CALL_KIND_UNARY;
}

/* The before_handle hooks; 0 or the rejecting status (message in hc). */
static int run_before_hooks(psrpc_request *q, psrpc_hook_call *hc) {
    psrpc_call_info info = request_info(q, request_kind(q));
    psrpc__hook_call_init(hc, &q->meta_keys, &q->meta_values, &q->meta_count, true);
    return psrpc__hooks_run_before(q->hooks, &info, hc);
}

static void report(const psrpc__hooks *h, const psrpc_call_info *info, int64_t since,
                   const psrpc_error *error) {
    psrpc_call_outcome out = {sizeof out, 1, psrpc__mono_ns() - since, info->server_id, error,
                              0,          0};
    psrpc__hooks_run_outcome(h, info, &out);
}

/* q's answer (any thread): the on_outcome hooks. */
static void report_answer(psrpc_request *q, const Internal__Response *resp) {
    psrpc_call_info info = request_info(q, request_kind(q));
    bool failed = resp->error && resp->error[0];
    psrpc_error e;
    memset(&e, 0, sizeof e);
    if (failed) {
        e.status = psrpc_status_from_code(resp->code);
        e.code = resp->code && *resp->code ? resp->code : "unknown";
        e.message = resp->error;
    }
    report(q->hooks, &info, q->arrived_ns, failed ? &e : NULL);
}

typedef struct srv_stream {
    psrpc_stream *stream;
    reg *reg;
    /* Hooks (NULL: none): reported when the stream ends. */
    const psrpc__hooks *hooks;
    int64_t arrived_ns;
    char *request_id;
    int64_t expiry;
} srv_stream;

static void owner_retain(void *o) { server_retain(o); }
static void owner_release(void *o) { server_release(o); }
/* A hooked stream ended: its outcome (a clean close is a success). */
static void report_stream_end(psrpc_server *s, srv_stream *ss) {
    reg *r = ss->reg;
    psrpc_call_info info = {sizeof info,
                            PSRPC_CALL_KIND_STREAM,
                            PSRPC_ROLE_SERVER,
                            0,
                            s->service,
                            r->method.name,
                            (const char *const *)r->topics,
                            r->topic_count,
                            0,
                            psrpc_stream_node_id(ss->stream),
                            s->id,
                            ss->request_id,
                            ss->expiry};
    const psrpc__err *cause = psrpc__stream_cause(ss->stream);
    bool clean = !cause || (cause->status == PSRPC_CANCELED && cause->message &&
                            strcmp(cause->message, "stream closed") == 0);
    psrpc_error view;
    if (!clean)
        psrpc__err_view(cause, &view);
    report(ss->hooks, &info, ss->arrived_ns, clean ? NULL : &view);
}

static void owner_detach(void *o, psrpc_stream *st) {
    psrpc_server *s = o;
    srv_stream *ss = psrpc__map_get(&s->streams, psrpc__stream_id(st));
    if (ss && ss->stream == st) {
        psrpc__map_del(&s->streams, psrpc__stream_id(st));
        if (ss->hooks)
            report_stream_end(s, ss);
        free(ss->request_id);
        free(ss);
    }
}

/* Ends the open streams of r (all of them when r is NULL) with "EOF"
 * unavailable, as a Go server does when a handler goes away. */
static void end_streams(psrpc_server *s, reg *r) {
    size_t n = s->streams.count, i = 0;
    if (!n)
        return;
    psrpc_stream **list = calloc(n, sizeof *list);
    psrpc__err fallback = {PSRPC_UNAVAILABLE, "unavailable", "EOF", NULL, 0};
    if (!list) {
        /* Out of memory for the list: one at a time, from the start again
         * after each (ending one detaches it from the table). */
        for (bool again = true; again;) {
            again = false;
            psrpc__map_iter it;
            psrpc__map_iter_init(&it, &s->streams);
            for (psrpc__map_entry *e; (e = psrpc__map_iter_next(&it));) {
                srv_stream *ss = e->value;
                if (r && ss->reg != r)
                    continue;
                psrpc__stream_end(ss->stream, &fallback, true); /* detaches it */
                again = true;
                break;
            }
        }
        return;
    }
    psrpc__map_iter it;
    psrpc__map_iter_init(&it, &s->streams);
    for (psrpc__map_entry *e; (e = psrpc__map_iter_next(&it));) {
        srv_stream *ss = e->value;
        if (!r || ss->reg == r)
            list[i++] = ss->stream;
    }
    psrpc__err *eof = psrpc__err_new(PSRPC_UNAVAILABLE, "EOF");
    for (size_t j = 0; j < i; j++)
        psrpc__stream_end(list[j], eof ? eof : &fallback, true);
    psrpc__err_free(eof);
    free(list);
}

/* The open was claimed (or needed no claim): create the stream, ack the open,
 * hand the stream to the handler. Consumes the caller's reference to q. */
static void accept_stream(psrpc_request *q) {
    psrpc_server *s = q->server;
    reg *r = q->reg;
    if (psrpc__map_get(&s->streams, q->stream_id)) {
        /* A stream with this id is open already: a replayed (or forged)
         * open. Replacing the table entry would orphan the open stream (never
         * ended by close, keeping the server alive); the duplicate is dropped
         * and its client, unacknowledged, times out. */
        PSRPC__STAT_ADD(s->bus, dropped_malformed, 1);
        request_release(q);
        return;
    }
    const psrpc__channel *peer =
        psrpc__chan_cache_peer(&s->peers, PSRPC__CHAN_CLIENT_STREAM, s->service, q->client_id);
    if (!peer) {
        request_release(q);
        return;
    }
    /* The before_handle hooks see the open's metadata; a rejection closes
     * the stream with their error once it is acknowledged. */
    psrpc_hook_call hc;
    int verdict = q->hooks && q->hooks->before_count ? run_before_hooks(q, &hc) : PSRPC_OK;
    const psrpc__hooks *hooks = q->hooks;
    int64_t arrived_ns = q->arrived_ns;
    psrpc__stream_params p = {s->bus, true,          q->stream_id, q->client_id,   q->method,
                              peer,   s->timeout_ms, q->meta_keys, q->meta_values, q->meta_count,
                              {0}};
    p.owner.owner = s;
    p.owner.retain = owner_retain;
    p.owner.release = owner_release;
    p.owner.detach = owner_detach;
    q->meta_keys = q->meta_values = NULL; /* taken over by the stream */
    q->meta_count = 0;
    psrpc_stream *st = psrpc__stream_new(&p);
    srv_stream *ss = st ? calloc(1, sizeof *ss) : NULL;
    if (!ss || psrpc__map_put(&s->streams, q->stream_id, ss) != PSRPC_OK) {
        free(ss);
        if (st) {
            psrpc__stream_end(st, NULL, true);
            psrpc__stream_release(st); /* the user's reference, never handed out */
        }
        request_release(q);
        return;
    }
    ss->stream = st;
    ss->reg = r;
    psrpc__stream_set_expiry(st, q->expiry);
    if (q->hooks && verdict == PSRPC_OK) {
        ss->hooks = q->hooks;
        ss->arrived_ns = q->arrived_ns;
        ss->expiry = q->expiry;
        ss->request_id = psrpc__strdup(q->request_id); /* NULL (out of memory): reported so */
    }
    /* Ack the open, echoing its ids and times (11.3 step 4). */
    Internal__StreamAck ack = INTERNAL__STREAM_ACK__INIT;
    Internal__Stream is = INTERNAL__STREAM__INIT;
    is.stream_id = q->stream_id;
    is.request_id = q->request_id;
    is.sent_at = q->sent_at;
    is.expiry = q->expiry;
    is.body_case = INTERNAL__STREAM__BODY_ACK;
    is.ack = &ack;
    const psrpc__channel *ack_ch =
        psrpc__chan_cache_peer(&s->peers, PSRPC__CHAN_CLIENT_STREAM, s->service, q->client_id);
    int rc = ack_ch ? psrpc__publish_control(s->bus, ack_ch, &is.base) : PSRPC_RESOURCE_EXHAUSTED;
    request_release(q);
    if (rc != PSRPC_OK) {
        psrpc__err *e = psrpc__err_new(PSRPC_INTERNAL, "cannot acknowledge the open");
        psrpc__err fallback = {PSRPC_INTERNAL, "internal", "cannot acknowledge the open", NULL, 0};
        psrpc__stream_end(st, e ? e : &fallback, true);
        psrpc__err_free(e);
        psrpc__stream_release(st);
        return;
    }
    if (verdict != PSRPC_OK) {
        psrpc__err *e = psrpc__err_new(hc.status, "%s", hc.message);
        psrpc__err fallback = {hc.status, (char *)psrpc_status_code(hc.status), hc.message, NULL,
                               0};
        if (hooks) {
            /* Rejected: its one outcome, now (the handler never sees it). */
            psrpc_error view;
            psrpc__err_view(e ? e : &fallback, &view);
            psrpc_call_info info = {sizeof info,
                                    PSRPC_CALL_KIND_STREAM,
                                    PSRPC_ROLE_SERVER,
                                    0,
                                    s->service,
                                    r->method.name,
                                    (const char *const *)r->topics,
                                    r->topic_count,
                                    0,
                                    psrpc_stream_node_id(st),
                                    s->id,
                                    NULL,
                                    0};
            report(hooks, &info, arrived_ns, &view);
        }
        psrpc__stream_end(st, e ? e : &fallback, true);
        psrpc__err_free(e);
        psrpc__stream_release(st); /* the user's reference, never handed out */
        return;
    }
    r->stream_handler(st, r->user_data);
}

/* ---------------------------------------------------------------- close */

static void run_closed_waiters(psrpc_server *s) { psrpc__waiters_run(&s->closed_waiters); }

static void drain_timer_closed(uv_handle_t *h) {
    psrpc_server *s = h->data;
    server_release(s);
}

static void server_finish(psrpc_server *s) {
    if (s->state == PSRPC__CLOSED)
        return;
    s->state = PSRPC__CLOSED;
    atomic_store(&s->killed, true);
    if (s->drain_timer_on) {
        s->drain_timer_on = false;
        uv_timer_stop(&s->drain_timer);
        uv_close((uv_handle_t *)&s->drain_timer, drain_timer_closed);
    }
    pthread_mutex_lock(&s->mu);
    psrpc__map_clear(&s->keys); /* the regs below are released */
    pthread_mutex_unlock(&s->mu);
    reg *r = s->regs;
    s->regs = NULL;
    while (r) {
        reg *next = r->next;
        reg_finish(r);
        reg_release(r);
        r = next;
    }
    if (s->started)
        psrpc__bus_remove_child(s->bus, &s->child);
    run_closed_waiters(s);
    void (*done)(psrpc__child *) = s->child_done;
    s->child_done = NULL;
    if (done)
        done(&s->child);
    if (s->started) {
        s->started = false;
        server_release(s); /* the loop's reference */
    }
}

static void maybe_finish(psrpc_server *s) {
    if (s->state == PSRPC__CLOSING && (s->forced || atomic_load(&s->inflight) == 0))
        server_finish(s);
}

/* While a graceful close waits: every DRAIN_POLL_MS (an answer that failed
 * off the loop lowered inflight without a task), forced at drain_until. */
#define DRAIN_POLL_MS 50

static void drain_timeout(uv_timer_t *t) {
    psrpc_server *s = t->data;
    if (uv_now(t->loop) >= s->drain_until)
        s->forced = true;
    maybe_finish(s);
}

static void server_begin_close(psrpc_server *s, bool force) {
    if (force) {
        s->forced = true;
        atomic_store(&s->killed, true);
    }
    if (s->state == PSRPC__CLOSED)
        return;
    if (s->state == PSRPC__OPEN) {
        s->state = PSRPC__CLOSING;
        for (reg *r = s->regs; r; r = r->next)
            reg_unsubscribe(r);
        end_streams(s, NULL);
        /* Requests waiting for a claim response were never seen by a handler. */
        psrpc_request **pending = NULL;
        size_t n = s->claims.count, i = 0;
        if (n && (pending = calloc(n, sizeof *pending))) {
            psrpc__map_iter it;
            psrpc__map_iter_init(&it, &s->claims);
            for (psrpc__map_entry *e; (e = psrpc__map_iter_next(&it));)
                pending[i++] = e->value;
            for (i = 0; i < n; i++)
                claim_forget(pending[i]);
            free(pending);
        } else if (n) {
            /* Out of memory for the list: one at a time (forgetting removes each). */
            psrpc__map_iter it;
            psrpc__map_entry *e;
            while (psrpc__map_iter_init(&it, &s->claims), (e = psrpc__map_iter_next(&it)))
                claim_forget(e->value);
        }
        if (!s->forced && atomic_load(&s->inflight) > 0) {
            /* Wait for in-flight handlers, at most until the last expiry. */
            int64_t wait_ms = (s->latest_expiry_ns - psrpc__now_ns()) / 1000000 + 100;
            if (wait_ms < 100)
                wait_ms = 100;
            uv_timer_init(psrpc__loop_uv(s->bus->loop), &s->drain_timer);
            s->drain_timer.data = s;
            server_retain(s);
            s->drain_timer_on = true;
            s->drain_until = uv_now(s->drain_timer.loop) + (uint64_t)wait_ms;
            uv_timer_start(&s->drain_timer, drain_timeout, DRAIN_POLL_MS, DRAIN_POLL_MS);
        }
    }
    maybe_finish(s);
}

typedef struct close_req {
    psrpc_server *server;
    bool force;
    psrpc__closed_waiter *waiter;
} close_req;

static void close_task(void *arg) {
    close_req *c = arg;
    psrpc_server *s = c->server;
    psrpc__waiters_push(&s->closed_waiters, c->waiter);
    server_begin_close(s, c->force);
    if (s->state == PSRPC__CLOSED)
        run_closed_waiters(s);
    server_release(s);
    free(c);
}

/* psrpc_server_free's graceful close, on the server's own task node. */
static void free_close_task(void *arg) {
    psrpc_server *s = arg;
    server_begin_close(s, false);
    server_release(s);
}

static void child_close(psrpc__child *child, void (*done)(psrpc__child *)) {
    psrpc_server *s = PSRPC__CONTAINER_OF(child, psrpc_server, child);
    s->child_done = done;
    server_retain(s);
    server_begin_close(s, true);
    server_release(s);
}

/* ---------------------------------------------------------------- dispatch */

static void respond_error(psrpc_server *s, const char *client_id, const char *request_id,
                          const char *code, const char *message) {
    Internal__Response resp = INTERNAL__RESPONSE__INIT;
    resp.request_id = (char *)request_id;
    resp.server_id = s->id;
    resp.sent_at = psrpc__now_ns();
    resp.code = (char *)code;
    resp.error = (char *)message;
    const psrpc__channel *ch =
        psrpc__chan_cache_peer(&s->peers, PSRPC__CHAN_CLIENT_RESPONSE, s->service, client_id);
    if (ch)
        psrpc__publish_control(s->bus, ch, &resp.base);
}

static void call_handler(psrpc_request *q) {
    psrpc_server *s = q->server;
    reg *r = q->reg;
    atomic_store(&q->stage, STAGE_HANDLER);
    atomic_fetch_add(&s->inflight, 1);
    if (q->expiry > s->latest_expiry_ns)
        s->latest_expiry_ns = q->expiry;
    if (q->hooks) {
        q->hooked = true;
        psrpc_hook_call hc;
        if (q->hooks->before_count && run_before_hooks(q, &hc) != PSRPC_OK) {
            psrpc_request_fail(q, hc.status, hc.message); /* reported as its answer */
            return;
        }
    }
    r->handler(q, r->user_data);
}

static void claim_timeout(uv_timer_t *t) {
    psrpc_request *q = t->data;
    claim_forget(q); /* not chosen in time: drop silently */
}

#define DECIDED_MAX 1024

/* Remembers that the client already chose a server for request_id. */
static void remember_decided(psrpc_server *s, const char *request_id) {
    if (strlen(request_id) >= sizeof *s->decided_ring || psrpc__map_get(&s->decided, request_id))
        return;
    if (!s->decided_ring && !(s->decided_ring = calloc(DECIDED_MAX, sizeof *s->decided_ring)))
        return;
    char *slot = s->decided_ring[s->decided_next];
    if (slot[0])
        psrpc__map_del(&s->decided, slot);
    strcpy(slot, request_id);
    if (psrpc__map_put(&s->decided, slot, slot) != PSRPC_OK)
        slot[0] = '\0';
    s->decided_next = (s->decided_next + 1) % DECIDED_MAX;
}

/* Publishes the claim and waits for the ClaimResponse (loop thread). Takes
 * over the caller's reference to q. */
static void send_claim(psrpc_request *q) {
    psrpc_server *s = q->server;
    reg *r = q->reg;
    if (s->state != PSRPC__OPEN || !r->active || q->affinity < 0) {
        request_release(q);
        return;
    }
    int64_t now = psrpc__now_ns();
    if (now >= q->expiry) {
        PSRPC__DROP(s->bus, dropped_expired, PSRPC__DROP_EXPIRED);
        request_release(q);
        return;
    }
    if (q->skip_claim && (s->flags & PSRPC_SERVER_SKIP_CLAIM) &&
        r->method.routing == PSRPC_ROUTING_QUEUE) {
        /* Announce and handle at once (v0.8 "handling" claim). */
        Internal__ClaimRequest an = INTERNAL__CLAIM_REQUEST__INIT;
        an.request_id = q->request_id;
        an.server_id = s->id;
        an.affinity = q->affinity;
        an.handling = true;
        const psrpc__channel *ch =
            psrpc__chan_cache_peer(&s->peers, PSRPC__CHAN_CLIENT_CLAIM, s->service, q->client_id);
        if (!ch || psrpc__publish_control(s->bus, ch, &an.base) != PSRPC_OK) {
            request_release(q); /* as Go: fail rather than run a request the caller retries */
            return;
        }
        call_handler(q);
        return;
    }
    if (s->decided.count && psrpc__map_get(&s->decided, q->request_id)) {
        request_release(q); /* another server was chosen already */
        return;
    }
    if (psrpc__map_get(&s->claims, q->request_id)) {
        /* The same request id is already waiting for its claim response (a
         * replay, or a forged copy): replacing the entry would orphan the
         * first request's timer and let its timeout remove the second. */
        PSRPC__DROP(s->bus, dropped_malformed, PSRPC__DROP_MALFORMED);
        request_release(q);
        return;
    }
    size_t qb = request_bytes(q);
    if (atomic_load(&s->held_count) >= s->hold_max_count ||
        atomic_load(&s->held_bytes) + qb > s->hold_max_bytes) {
        /* Over the cap: not claimed (the client picks another server or
         * times out), counted. */
        PSRPC__DROP(s->bus, dropped_held_limit, PSRPC__DROP_HELD_LIMIT);
        request_release(q);
        return;
    }
    if (psrpc__map_put(&s->claims, q->request_id, q) != PSRPC_OK) {
        request_release(q);
        return;
    }
    q->in_claims = true;
    q->held_bytes = qb;
    atomic_fetch_add(&s->held_count, 1);
    atomic_fetch_add(&s->held_bytes, qb);
    uv_timer_init(psrpc__loop_uv(s->bus->loop), &q->claim_timer);
    q->claim_timer.data = q;
    q->claim_timer_on = true;
    int64_t wait_ns = q->expiry - now;
    uv_timer_start(&q->claim_timer, claim_timeout, (uint64_t)(wait_ns / 1000000 + 1), 0);

    Internal__ClaimRequest cr = INTERNAL__CLAIM_REQUEST__INIT;
    cr.request_id = q->request_id;
    cr.server_id = s->id;
    cr.affinity = q->affinity;
    const psrpc__channel *ch =
        psrpc__chan_cache_peer(&s->peers, PSRPC__CHAN_CLIENT_CLAIM, s->service, q->client_id);
    if (!ch || psrpc__publish_control(s->bus, ch, &cr.base) != PSRPC_OK)
        claim_forget(q);
}

/* What a request (or a stream open) brings from the wire. */
typedef struct request_fields {
    const char *request_id;
    const char *client_id;
    int64_t sent_at;
    int64_t expiry;
    bool skip_claim;
    const char **meta_keys; /* borrowed */
    const char **meta_values;
    size_t meta_count;
    const uint8_t *payload;
    size_t payload_len;
    const char *stream_id; /* stream opens only */
} request_fields;

static psrpc_request *request_new(reg *r, const request_fields *f) {
    psrpc_request *q = calloc(1, sizeof *q);
    if (!q)
        return NULL;
    q->magic = REQUEST_MAGIC;
    atomic_init(&q->refs, 1);
    q->server = r->server;
    server_retain(r->server);
    q->reg = r;
    atomic_fetch_add(&r->refs, 1);
    q->request_id = psrpc__strdup(f->request_id);
    q->client_id = psrpc__strdup(f->client_id);
    q->method = psrpc__strdup(r->method.name);
    q->sent_at = f->sent_at;
    q->expiry = f->expiry;
    q->skip_claim = f->skip_claim;
    q->hooks = atomic_load_explicit(&r->server->hooks, memory_order_acquire);
    if (q->hooks)
        q->arrived_ns = psrpc__mono_ns();
    int64_t clamp = psrpc__sat_add(psrpc__now_ns(), EXPIRY_CLAMP_NS);
    if (q->expiry > clamp)
        q->expiry = clamp;
    bool ok = q->request_id && q->client_id && q->method;
    if (ok && f->stream_id)
        ok = (q->stream_id = psrpc__strdup(f->stream_id)) != NULL;
    ok = ok &&
         psrpc__strv_dup(&q->topics, (const char *const *)r->topics, r->topic_count) == PSRPC_OK;
    if (ok)
        q->topic_count = r->topic_count;
    if (ok && f->meta_count) {
        ok = psrpc__strv_dup(&q->meta_keys, f->meta_keys, f->meta_count) == PSRPC_OK;
        if (ok && psrpc__strv_dup(&q->meta_values, f->meta_values, f->meta_count) != PSRPC_OK) {
            psrpc__strv_free(q->meta_keys, f->meta_count);
            q->meta_keys = NULL;
            ok = false;
        }
        if (ok)
            q->meta_count = f->meta_count;
    }
    if (ok)
        ok = psrpc_msg_new(&q->payload, f->payload, f->payload_len) == PSRPC_OK;
    if (ok)
        ok = psrpc__live_add(q);
    if (!ok) {
        request_free(q);
        return NULL;
    }
    return q;
}

/* Starts the claim stage of a new request or stream open (or hands it on
 * directly when the method needs no claim). Takes over q. */
static void dispatch(reg *r, psrpc_request *q) {
    if (!r->require_claim) {
        if (q->stream_id)
            accept_stream(q);
        else
            call_handler(q);
    } else if (r->affinity) {
        atomic_store(&q->stage, STAGE_AFFINITY);
        r->affinity(q, r->user_data);
    } else {
        q->affinity = 1.0f;
        atomic_store(&q->stage, STAGE_CLAIMING);
        send_claim(q);
    }
}

static void on_request(void *ctx, const uint8_t *data, size_t len) {
    reg *r = ctx;
    psrpc_server *s = r->server;
    /* Nothing reaches a handler once deregister or close returned. */
    if (!r->active || s->state != PSRPC__OPEN || atomic_load(&r->deregistered) ||
        atomic_load(&s->closing))
        return;
    Internal__Request *in = (Internal__Request *)psrpc__decode_control(
        s->bus, data, len, &internal__request__descriptor);
    if (!in)
        return;
    if (psrpc__now_ns() >= in->expiry) {
        PSRPC__DROP(s->bus, dropped_expired, PSRPC__DROP_EXPIRED);
        psrpc__wire_free(&in->base);
        return;
    }
    const char **keys = in->n_metadata ? calloc(in->n_metadata, sizeof *keys) : NULL;
    const char **values = in->n_metadata ? calloc(in->n_metadata, sizeof *values) : NULL;
    psrpc_request *q = NULL;
    if (!in->n_metadata || (keys && values)) {
        for (size_t i = 0; i < in->n_metadata; i++) {
            keys[i] = in->metadata[i]->key ? in->metadata[i]->key : "";
            values[i] = in->metadata[i]->value ? in->metadata[i]->value : "";
        }
        request_fields f = {in->request_id,
                            in->client_id,
                            in->sent_at,
                            in->expiry,
                            in->skip_claim,
                            keys,
                            values,
                            in->n_metadata,
                            in->raw_request.data,
                            in->raw_request.len,
                            NULL};
        q = request_new(r, &f);
    }
    free(keys);
    free(values);
    if (!q)
        respond_error(s, in->client_id, in->request_id, "resource_exhausted",
                      "server out of memory");
    psrpc__wire_free(&in->base);
    if (q)
        dispatch(r, q);
}

/* Inbound traffic on a stream method's server channel (11.3, 11.4). */
static void on_stream_inbound(void *ctx, const uint8_t *data, size_t len) {
    reg *r = ctx;
    psrpc_server *s = r->server;
    if (!r->active || s->state != PSRPC__OPEN)
        return;
    Internal__Stream *is =
        (Internal__Stream *)psrpc__decode_control(s->bus, data, len, &internal__stream__descriptor);
    if (!is)
        return;
    if (psrpc__now_ns() >= is->expiry) {
        PSRPC__DROP(s->bus, dropped_expired, PSRPC__DROP_EXPIRED);
    } else if (is->body_case == INTERNAL__STREAM__BODY_OPEN) {
        /* A draining handler ignores opens; an open for a stream id that is
         * open already (a replay) is dropped before claiming it. */
        if (psrpc__map_get(&s->streams, is->stream_id)) {
            PSRPC__STAT_ADD(s->bus, dropped_malformed, 1);
        } else if (!atomic_load(&r->deregistered) && !atomic_load(&s->closing)) {
            const Internal__StreamOpen *open = is->open;
            const char **keys = open->n_metadata ? calloc(open->n_metadata, sizeof *keys) : NULL;
            const char **values =
                open->n_metadata ? calloc(open->n_metadata, sizeof *values) : NULL;
            psrpc_request *q = NULL;
            if (!open->n_metadata || (keys && values)) {
                for (size_t i = 0; i < open->n_metadata; i++) {
                    keys[i] = open->metadata[i]->key ? open->metadata[i]->key : "";
                    values[i] = open->metadata[i]->value ? open->metadata[i]->value : "";
                }
                request_fields f = {
                    is->request_id, open->node_id,    is->sent_at, is->expiry, false,        keys,
                    values,         open->n_metadata, NULL,        0,          is->stream_id};
                q = request_new(r, &f);
            }
            free(keys);
            free(values);
            if (q)
                dispatch(r, q);
        }
    } else {
        srv_stream *ss = psrpc__map_get(&s->streams, is->stream_id);
        if (ss)
            psrpc__stream_handle(ss->stream, is);
        /* Other servers' streams travel on the same channel: not ours, not counted. */
    }
    psrpc__wire_free(&is->base);
}

static void on_claim_response(void *ctx, const uint8_t *data, size_t len) {
    reg *r = ctx;
    psrpc_server *s = r->server;
    Internal__ClaimResponse *cr = (Internal__ClaimResponse *)psrpc__decode_control(
        s->bus, data, len, &internal__claim_response__descriptor);
    if (!cr)
        return;
    psrpc_request *q = psrpc__map_get(&s->claims, cr->request_id);
    bool mine = q && q->reg == r && strcmp(cr->server_id, s->id) == 0;
    if (!q)
        remember_decided(s, cr->request_id);
    psrpc__wire_free(&cr->base);
    if (!q || q->reg != r)
        return;
    if (!mine || !r->active || s->state != PSRPC__OPEN || atomic_load(&r->deregistered) ||
        atomic_load(&s->closing)) {
        claim_forget(q);
        return;
    }
    /* Hand the loop's reference to the user for the handler stage. */
    claims_remove(q);
    atomic_fetch_add(&q->refs, 1);
    claim_forget(q);
    if (q->stream_id)
        accept_stream(q);
    else
        call_handler(q);
}

static void reg_ready(void *ctx, int status, const char *message) {
    reg *r = ctx;
    if (status != PSRPC_OK) {
        report_ready(r->server, r, status, message);
        return;
    }
    if (--r->ready_pending == 0)
        report_ready(r->server, r, PSRPC_OK, NULL);
}

/* ---------------------------------------------------------------- register */

typedef struct start_task_arg {
    psrpc_server *server;
} start_task_arg;

static void server_start(psrpc_server *s) {
    if (s->started || s->state != PSRPC__OPEN)
        return;
    if (atomic_load(&s->bus->state) != PSRPC__OPEN) {
        s->state = PSRPC__CLOSED;
        return;
    }
    s->started = true;
    server_retain(s); /* the loop's reference, dropped in server_finish */
    psrpc__bus_add_child(s->bus, &s->child);
}

static void register_task(void *arg) {
    reg *r = arg;
    psrpc_server *s = r->server;
    server_start(s);
    if (s->state != PSRPC__OPEN) {
        pthread_mutex_lock(&s->mu);
        if (psrpc__map_get(&s->keys, r->req_ch.legacy) == r)
            psrpc__map_del(&s->keys, r->req_ch.legacy);
        pthread_mutex_unlock(&s->mu);
        report_ready(s, r, PSRPC_CANCELED, "server is closed");
        reg_finish(r);
        reg_release(r);
        return;
    }
    r->next = s->regs;
    s->regs = r;
    r->active = true;
    r->ready_pending = r->require_claim ? 2 : 1;
    bool queue = r->method.routing == PSRPC_ROUTING_QUEUE;
    if (r->is_stream) /* opens go to every server: a plain subscription (11.1) */
        r->req_sub =
            psrpc__bus_subscribe(s->bus, &r->str_ch, false, on_stream_inbound, reg_ready, r);
    else
        r->req_sub = psrpc__bus_subscribe(s->bus, &r->req_ch, queue, on_request, reg_ready, r);
    if (r->req_sub && r->require_claim)
        r->rclaim_sub =
            psrpc__bus_subscribe(s->bus, &r->rclaim_ch, false, on_claim_response, reg_ready, r);
    if (!r->req_sub || (r->require_claim && !r->rclaim_sub)) {
        report_ready(s, r,
                     psrpc_last_error_status() ? psrpc_last_error_status() : PSRPC_UNAVAILABLE,
                     psrpc_last_error());
        reg_unsubscribe(r);
    }
}

#define CHECK_SERVER(s)                                                               \
    do {                                                                              \
        PSRPC__CHECK_ARG(s, "server is NULL");                                        \
        PSRPC__CHECK_ARG((s)->magic == SERVER_MAGIC, "handle is not a psrpc_server"); \
        PSRPC__CHECK_NOT_FORKED((s)->bus);                                            \
    } while (0)

psrpc_status psrpc_server_options_init(psrpc_server_options *opts, size_t struct_size) {
    psrpc_server_options d = PSRPC_SERVER_OPTIONS_INIT;
    return psrpc__options_init(opts, struct_size, &d, sizeof d);
}

psrpc_status psrpc_server_create(psrpc_server **out, psrpc_bus *bus, const char *service,
                                 const psrpc_server_options *opts) {
    int rc = psrpc__check_create(out, bus, service);
    if (rc != PSRPC_OK)
        return rc;
    psrpc_server_options o = PSRPC_SERVER_OPTIONS_INIT;
    if ((rc = psrpc__options_load(&o, sizeof o, opts, "psrpc_server_options")) != PSRPC_OK)
        return rc;
    PSRPC__CHECK_ARG(o.timeout_ms >= 0, "timeout_ms is negative");
    PSRPC__CHECK_ARG((o.flags & ~PSRPC_SERVER_SKIP_CLAIM) == 0, "unknown server flags 0x%x",
                     (unsigned)o.flags);
    if (o.server_id && !*o.server_id)
        o.server_id = NULL; /* as Go: an empty id means a generated one */
    if (o.server_id && (rc = psrpc__check_server_id(o.server_id)) != PSRPC_OK)
        return rc;
    if (atomic_load(&bus->state) != PSRPC__OPEN || atomic_load(&bus->freed))
        return psrpc__error(PSRPC_CANCELED, "bus is closed");

    psrpc_server *s = calloc(1, sizeof *s);
    if (!s)
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
    s->magic = SERVER_MAGIC;
    atomic_init(&s->refs, 1);
    s->service = psrpc__strdup(service);
    if (o.server_id) {
        s->id = psrpc__strdup(o.server_id);
    } else if ((s->id = malloc(4 + PSRPC__ID_RANDOM_LEN + 1))) {
        psrpc__new_id(s->id, "SRV_");
    }
    if (!s->service || !s->id) {
        free(s->service);
        free(s->id);
        free(s);
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
    }
    s->timeout_ms = o.timeout_ms ? psrpc__clamp_timeout_ms(o.timeout_ms) : 3000;
    s->hold_max_count = PSRPC__HOLD_MAX_COUNT;
    s->hold_max_bytes = PSRPC__HOLD_MAX_BYTES;
    s->flags = o.flags;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cond, NULL);
    psrpc__map_init(&s->keys);
    psrpc__map_init(&s->claims);
    psrpc__map_init(&s->decided);
    psrpc__map_init(&s->streams);
    s->child.close = child_close;
    s->state = PSRPC__OPEN;
    s->bus = bus;
    psrpc__bus_retain(bus);
    *out = s;
    return PSRPC_OK;
}

void psrpc__server_set_hold_limits(psrpc_server *s, size_t max_count, size_t max_bytes) {
    s->hold_max_count = max_count;
    s->hold_max_bytes = max_bytes;
}

void psrpc__server_held(const psrpc_server *s, size_t *count, size_t *bytes) {
    *count = atomic_load(&s->held_count);
    *bytes = atomic_load(&s->held_bytes);
}

const char *psrpc_server_id(const psrpc_server *server) {
    if (!server || server->magic != SERVER_MAGIC) {
        psrpc__error(PSRPC_INVALID_ARGUMENT, "server is NULL or not a psrpc_server");
        return NULL;
    }
    return server->id;
}

static int do_register(psrpc_server *server, const psrpc_method *method, const char *const *topics,
                       size_t topic_count, psrpc_handler_cb handler,
                       psrpc_stream_handler_cb stream_handler, psrpc_affinity_cb affinity,
                       psrpc_done_cb on_ready, void *user_data, psrpc_release_cb release) {
    CHECK_SERVER(server);
    PSRPC__CHECK_ARG(handler || stream_handler, "handler is NULL");
    int rc = psrpc__check_topics(topics, topic_count);
    if (rc != PSRPC_OK)
        return rc;
    if (atomic_load(&server->closing))
        return psrpc__error(PSRPC_CANCELED, "server is closed");
    reg *r = calloc(1, sizeof *r);
    if (!r)
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
    if ((rc = psrpc__method_copy(&r->method, method)) != PSRPC_OK) {
        free(r);
        return rc;
    }
    if (r->method.flags & (PSRPC_METHOD_SUBSCRIPTION)) {
        psrpc__method_clear(&r->method);
        free(r);
        return psrpc__error(PSRPC_INVALID_ARGUMENT,
                            "subscription methods are published, not registered");
    }
    bool is_stream = (r->method.flags & PSRPC_METHOD_STREAM) != 0;
    if (is_stream != (stream_handler != NULL)) {
        psrpc__method_clear(&r->method);
        free(r);
        return psrpc__error(PSRPC_INVALID_ARGUMENT,
                            is_stream ? "stream methods are registered with "
                                        "psrpc_server_register_stream"
                                      : "psrpc_server_register_stream needs a stream method "
                                        "(PSRPC_METHOD_STREAM)");
    }
    if (!is_stream && affinity && r->method.routing == PSRPC_ROUTING_QUEUE) {
        /* As v0.8.2: nothing to arbitrate once the queue has chosen. */
        psrpc__method_clear(&r->method);
        free(r);
        return psrpc__error(PSRPC_INVALID_ARGUMENT,
                            "an affinity callback is not valid on a queue method");
    }
    atomic_init(&r->refs, 1);
    r->server = server;
    r->require_claim = psrpc__method_require_claim(&r->method);
    r->handler = handler;
    r->stream_handler = stream_handler;
    r->is_stream = is_stream;
    r->affinity = affinity;
    r->on_ready = on_ready;
    r->user_data = user_data;
    r->release = release;
    bool queue = r->method.routing == PSRPC_ROUTING_QUEUE;
    if (psrpc__strv_dup(&r->topics, topics, topic_count) != PSRPC_OK ||
        psrpc__channel_rpc(&r->req_ch, server->service, r->method.name, topics, topic_count,
                           queue) != PSRPC_OK ||
        psrpc__channel_claim_response(&r->rclaim_ch, server->service, r->method.name, topics,
                                      topic_count) != PSRPC_OK ||
        (is_stream && psrpc__channel_stream_server(&r->str_ch, server->service, r->method.name,
                                                   topics, topic_count) != PSRPC_OK)) {
        psrpc__strv_free(r->topics, topic_count);
        psrpc__channel_clear(&r->req_ch);
        psrpc__channel_clear(&r->rclaim_ch);
        psrpc__channel_clear(&r->str_ch);
        psrpc__method_clear(&r->method);
        free(r);
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
    }
    r->topic_count = topic_count;

    pthread_mutex_lock(&server->mu);
    if (psrpc__map_get(&server->keys, r->req_ch.legacy)) {
        pthread_mutex_unlock(&server->mu);
        rc = psrpc__error(PSRPC_ALREADY_EXISTS, "method %s is already registered for these topics",
                          r->method.name);
        r->release = NULL;
        server_retain(server);
        reg_release(r);
        return rc;
    }
    if (psrpc__map_put(&server->keys, r->req_ch.legacy, r) != PSRPC_OK) {
        pthread_mutex_unlock(&server->mu);
        server_retain(server);
        r->release = NULL;
        reg_release(r);
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
    }
    server->ready_pending++;
    pthread_mutex_unlock(&server->mu);

    server_retain(server); /* held by the registration */
    rc = psrpc__bus_post(server->bus, register_task, r);
    if (rc != PSRPC_OK) {
        pthread_mutex_lock(&server->mu);
        psrpc__map_del(&server->keys, r->req_ch.legacy);
        server->ready_pending--;
        pthread_mutex_unlock(&server->mu);
        r->release = NULL;
        reg_release(r);
        return rc;
    }
    return PSRPC_OK;
}

psrpc_status psrpc_server_register(psrpc_server *server, const psrpc_method *method,
                                   const char *const *topics, size_t topic_count,
                                   psrpc_handler_cb handler, psrpc_affinity_cb affinity,
                                   psrpc_done_cb on_ready, void *user_data,
                                   psrpc_release_cb release) {
    return do_register(server, method, topics, topic_count, handler, NULL, affinity, on_ready,
                       user_data, release);
}

psrpc_status psrpc_server_register_stream(psrpc_server *server, const psrpc_method *method,
                                          const char *const *topics, size_t topic_count,
                                          psrpc_stream_handler_cb handler,
                                          psrpc_affinity_cb affinity, psrpc_done_cb on_ready,
                                          void *user_data, psrpc_release_cb release) {
    CHECK_SERVER(server);
    PSRPC__CHECK_ARG(handler, "handler is NULL");
    return do_register(server, method, topics, topic_count, NULL, handler, affinity, on_ready,
                       user_data, release);
}

typedef struct dereg_task_arg {
    psrpc_server *server;
    char *key;
} dereg_task_arg;

static void deregister_task(void *arg) {
    dereg_task_arg *d = arg;
    psrpc_server *s = d->server;
    for (reg **p = &s->regs; *p; p = &(*p)->next) {
        reg *r = *p;
        if (strcmp(r->req_ch.legacy, d->key) == 0) {
            *p = r->next;
            reg_unsubscribe(r);
            end_streams(s, r);
            reg_finish(r);
            reg_release(r);
            break;
        }
    }
    server_release(s);
    free(d->key);
    free(d);
}

psrpc_status psrpc_server_deregister(psrpc_server *server, const char *method,
                                     const char *const *topics, size_t topic_count) {
    CHECK_SERVER(server);
    int rc = psrpc__check_name("method", method);
    if (rc != PSRPC_OK || (rc = psrpc__check_topics(topics, topic_count)) != PSRPC_OK)
        return rc;
    /* The key does not depend on the queue flag (it is the legacy name). */
    psrpc__channel ch;
    if (psrpc__channel_rpc(&ch, server->service, method, topics, topic_count, false) != PSRPC_OK)
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
    dereg_task_arg *d = calloc(1, sizeof *d);
    if (!d) {
        psrpc__channel_clear(&ch);
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
    }
    d->server = server;
    d->key = ch.legacy;
    ch.legacy = NULL;
    psrpc__channel_clear(&ch);
    pthread_mutex_lock(&server->mu);
    reg *r = psrpc__map_del(&server->keys, d->key);
    if (r)
        atomic_store(&r->deregistered, true);
    bool found = r != NULL;
    pthread_mutex_unlock(&server->mu);
    if (!found) {
        free(d->key);
        free(d);
        return psrpc__error(PSRPC_NOT_FOUND, "method %s is not registered for these topics",
                            method);
    }
    server_retain(server);
    rc = psrpc__bus_post(server->bus, deregister_task, d);
    if (rc != PSRPC_OK) {
        server_release(server);
        free(d->key);
        free(d);
    }
    return rc;
}

psrpc_status psrpc_server_wait_ready(psrpc_server *server, int64_t timeout_ms) {
    CHECK_SERVER(server);
    if (psrpc__on_any_loop_thread())
        return psrpc__error(PSRPC_WOULD_DEADLOCK,
                            "psrpc_server_wait_ready called on a loop thread would deadlock");
    struct timespec until;
    psrpc__deadline_in(&until, timeout_ms);
    pthread_mutex_lock(&server->mu);
    int rc = 0;
    while (server->ready_pending > 0 && rc == 0)
        rc = pthread_cond_timedwait(&server->cond, &server->mu, &until);
    int status = server->ready_error;
    char msg[256];
    snprintf(msg, sizeof msg, "%s", server->ready_message);
    bool pending = server->ready_pending > 0;
    pthread_mutex_unlock(&server->mu);
    if (pending)
        return psrpc__error(PSRPC_DEADLINE_EXCEEDED, "registrations not confirmed within %lld ms",
                            (long long)timeout_ms);
    if (status != PSRPC_OK)
        return psrpc__error(status, "%s", msg);
    return PSRPC_OK;
}

/* ---------------------------------------------------------------- publish */

typedef struct publish_task_arg {
    psrpc_server *server;
    psrpc__channel ch;
    psrpc_msg *bytes;
} publish_task_arg;

static void publish_task(void *arg) {
    publish_task_arg *p = arg;
    psrpc__bus_publish(p->server->bus, &p->ch, p->bytes);
    psrpc_msg_release(p->bytes);
    psrpc__channel_clear(&p->ch);
    server_release(p->server);
    free(p);
}

psrpc_status psrpc_server_publish(psrpc_server *server, const psrpc_method *method,
                                  const char *const *topics, size_t topic_count, const void *data,
                                  size_t len) {
    CHECK_SERVER(server);
    PSRPC__CHECK_ARG(data || len == 0, "data is NULL with a non-zero length");
    int rc = psrpc__check_topics(topics, topic_count);
    if (rc != PSRPC_OK)
        return rc;
    psrpc__method m;
    if ((rc = psrpc__method_copy(&m, method)) != PSRPC_OK)
        return rc;
    if (!(m.flags & PSRPC_METHOD_SUBSCRIPTION) || !m.output_type) {
        psrpc__method_clear(&m);
        return psrpc__error(PSRPC_INVALID_ARGUMENT,
                            "publishing needs a subscription method with output_type set");
    }
    if (atomic_load(&server->closing)) {
        psrpc__method_clear(&m);
        return psrpc__error(PSRPC_CANCELED, "server is closed");
    }
    publish_task_arg *p = calloc(1, sizeof *p);
    if (!p) {
        psrpc__method_clear(&m);
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
    }
    rc = psrpc__channel_rpc(&p->ch, server->service, m.name, topics, topic_count,
                            m.routing == PSRPC_ROUTING_QUEUE);
    if (rc == PSRPC_OK)
        rc = psrpc__wire_wrap(&p->bytes, m.output_type, data, len, p->ch.local,
                              (size_t)server->bus->opts.compress_threshold);
    psrpc__method_clear(&m);
    if (rc != PSRPC_OK) {
        psrpc__channel_clear(&p->ch);
        free(p);
        return rc < 0 ? psrpc__error(rc, "cannot build the message") : rc;
    }
    if ((int64_t)p->bytes->len > server->bus->opts.max_message_size) {
        size_t n = p->bytes->len;
        psrpc_msg_release(p->bytes);
        psrpc__channel_clear(&p->ch);
        free(p);
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED,
                            "message of %zu bytes exceeds the maximum of %lld bytes", n,
                            (long long)server->bus->opts.max_message_size);
    }
    p->server = server;
    server_retain(server);
    rc = psrpc__bus_post(server->bus, publish_task, p);
    if (rc != PSRPC_OK) {
        server_release(server);
        psrpc_msg_release(p->bytes);
        psrpc__channel_clear(&p->ch);
        free(p);
    }
    return rc;
}

/* ---------------------------------------------------------------- close/free */

psrpc_status psrpc_server_close(psrpc_server *server, uint32_t flags, psrpc_closed_cb closed_cb,
                                void *user_data) {
    CHECK_SERVER(server);
    PSRPC__CHECK_ARG((flags & ~PSRPC_CLOSE_FORCE) == 0, "unknown close flags 0x%x",
                     (unsigned)flags);
    atomic_store(&server->closing, true);
    if (flags & PSRPC_CLOSE_FORCE)
        atomic_store(&server->killed, true);
    bool failed;
    close_req *c = calloc(1, sizeof *c);
    if (c)
        c->waiter = psrpc__waiter_new(closed_cb, user_data, &failed);
    if (!c || failed) {
        free(c);
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
    }
    c->server = server;
    c->force = flags & PSRPC_CLOSE_FORCE;
    server_retain(server);
    int rc = psrpc__bus_post(server->bus, close_task, c);
    if (rc != PSRPC_OK) {
        server_release(server);
        free(c->waiter);
        free(c);
        if (!closed_cb && rc == PSRPC_CANCELED)
            return PSRPC_OK; /* the bus closed everything already */
    }
    return rc;
}

void psrpc_server_free(psrpc_server *server) {
    if (!server || server->magic != SERVER_MAGIC)
        return;
    if (atomic_exchange(&server->freed, true))
        return;
    /* Always, even after psrpc_server_close (which may have failed for lack
     * of memory): closing twice is harmless, and this post cannot fail for it. */
    atomic_store(&server->closing, true);
    server_retain(server);
    if (psrpc__loop_post_node(server->bus->loop, &server->free_node, free_close_task, server) !=
        PSRPC_OK)
        server_release(server); /* the bus is closed: the server closed with it */
    server_release(server);
}

/* ---------------------------------------------------------------- requests */

#define CHECK_REQ(q)                                                                    \
    do {                                                                                \
        PSRPC__CHECK_ARG(q, "request is NULL");                                         \
        PSRPC__CHECK_ARG((q)->magic == REQUEST_MAGIC, "handle is not a psrpc_request"); \
    } while (0)

const psrpc_msg *psrpc_request_payload(const psrpc_request *q) {
    return q && q->magic == REQUEST_MAGIC ? q->payload : NULL;
}
const char *psrpc_request_id(const psrpc_request *q) {
    return q && q->magic == REQUEST_MAGIC ? q->request_id : NULL;
}
const char *psrpc_request_client_id(const psrpc_request *q) {
    return q && q->magic == REQUEST_MAGIC ? q->client_id : NULL;
}
const char *psrpc_request_method(const psrpc_request *q) {
    return q && q->magic == REQUEST_MAGIC ? q->method : NULL;
}
size_t psrpc_request_topic_count(const psrpc_request *q) {
    return q && q->magic == REQUEST_MAGIC ? q->topic_count : 0;
}
const char *psrpc_request_topic(const psrpc_request *q, size_t index) {
    return q && q->magic == REQUEST_MAGIC && index < q->topic_count ? q->topics[index] : NULL;
}
size_t psrpc_request_metadata_count(const psrpc_request *q) {
    return q && q->magic == REQUEST_MAGIC ? q->meta_count : 0;
}
psrpc_status psrpc_request_metadata_at(const psrpc_request *q, size_t index, const char **key,
                                       const char **value) {
    CHECK_REQ(q);
    PSRPC__CHECK_ARG(key && value, "key or value is NULL");
    if (index >= q->meta_count)
        return psrpc__error(PSRPC_OUT_OF_RANGE, "metadata index %zu past %zu entries", index,
                            q->meta_count);
    *key = q->meta_keys[index];
    *value = q->meta_values[index];
    return PSRPC_OK;
}
const char *psrpc_request_metadata_get(const psrpc_request *q, const char *key) {
    if (!q || q->magic != REQUEST_MAGIC || !key)
        return NULL;
    /* The last of duplicate keys wins, as in Go (a map filled in wire order). */
    for (size_t i = q->meta_count; i-- > 0;)
        if (strcmp(q->meta_keys[i], key) == 0)
            return q->meta_values[i];
    return NULL;
}
int64_t psrpc_request_sent_at_ns(const psrpc_request *q) {
    return q && q->magic == REQUEST_MAGIC ? q->sent_at : 0;
}
int64_t psrpc_request_expiry_ns(const psrpc_request *q) {
    return q && q->magic == REQUEST_MAGIC ? q->expiry : 0;
}
int64_t psrpc_request_remaining_ms(const psrpc_request *q) {
    if (!q || q->magic != REQUEST_MAGIC)
        return 0;
    return psrpc__sat_add(q->expiry, -psrpc__now_ns()) / 1000000;
}

typedef struct answer_task_arg {
    psrpc_request *req;
    psrpc_msg *bytes;
} answer_task_arg;

static void answer_task(void *arg) {
    answer_task_arg *a = arg;
    psrpc_server *s = a->req->server;
    if (!atomic_load(&s->killed) && s->state != PSRPC__CLOSED) {
        const psrpc__channel *ch = psrpc__chan_cache_peer(&s->peers, PSRPC__CHAN_CLIENT_RESPONSE,
                                                          s->service, a->req->client_id);
        if (ch)
            psrpc__bus_publish(s->bus, ch, a->bytes);
    }
    if (!a->req->rejecting)
        atomic_fetch_sub(&s->inflight, 1);
    maybe_finish(s);
    psrpc_msg_release(a->bytes);
    request_release(a->req);
    free(a);
}

/* Sends a packed Response for q, taken in its handler stage (request_take). */
static int answer(psrpc_request *q, Internal__Response *resp) {
    psrpc_server *s = q->server;
    if (q->hooked)
        report_answer(q, resp);
    answer_task_arg *a = calloc(1, sizeof *a);
    int rc = a ? PSRPC_OK : PSRPC_RESOURCE_EXHAUSTED;
    resp->request_id = q->request_id;
    resp->server_id = s->id;
    resp->sent_at = psrpc__now_ns();
    if (rc == PSRPC_OK) {
        rc = psrpc__wire_wrap_message(&a->bytes, &resp->base, NULL,
                                      (size_t)s->bus->opts.compress_threshold);
        if (rc == PSRPC_OK && (int64_t)a->bytes->len > s->bus->opts.max_message_size) {
            /* Too large to send: tell the caller instead of timing it out. */
            psrpc_msg_release(a->bytes);
            a->bytes = NULL;
            Internal__Response err = INTERNAL__RESPONSE__INIT;
            err.request_id = q->request_id;
            err.server_id = s->id;
            err.sent_at = resp->sent_at;
            err.code = "resource_exhausted";
            err.error = "response exceeds the maximum message size";
            rc = psrpc__wire_wrap_message(&a->bytes, &err.base, NULL, 0);
            if (rc == PSRPC_OK)
                rc = PSRPC_RESOURCE_EXHAUSTED;
        }
    }
    int result = rc;
    bool killed = atomic_load(&s->killed);
    if (a && a->bytes) {
        a->req = q;
        int prc = psrpc__bus_post(s->bus, answer_task, a);
        if (prc == PSRPC_OK) {
            if (killed)
                return psrpc__error(PSRPC_CANCELED, "server is closed; answer discarded");
            if (result != PSRPC_OK)
                return psrpc__error(result, "response exceeds the maximum message size");
            return PSRPC_OK;
        }
        result = prc == PSRPC_FAILED_PRECONDITION ? prc : PSRPC_CANCELED;
    }
    /* Could not hand it to the loop (out of memory, or the bus is gone): the
     * request leaves the handler stage here, or a graceful close would wait
     * for it until its expiry (the draining close polls inflight). */
    if (!q->rejecting)
        atomic_fetch_sub(&s->inflight, 1);
    if (a) {
        psrpc_msg_release(a->bytes);
        free(a);
    }
    request_release(q);
    if (result == PSRPC_FAILED_PRECONDITION)
        return psrpc__bus_fork_error(); /* a request inherited across fork() */
    if (result == PSRPC_CANCELED || killed)
        return psrpc__error(PSRPC_CANCELED, "server is closed; answer discarded");
    return psrpc__error(result, "cannot send the answer");
}

static void claim_answer_task(void *arg) {
    psrpc_request *q = arg;
    send_claim(q);
}

/* Takes q out of the stage in which the user holds it (any thread), under
 * the live-set lock so a consumed and freed request is never touched.
 * Returns STAGE_HANDLER (now DONE: the caller answers it), STAGE_AFFINITY
 * (now CLAIMING: the caller posts its claim) or 0: NULL, not a live request,
 * or already consumed (nothing to do). */
static int request_take(psrpc_request *q) {
    int got = 0;
    if (psrpc__live_lock(q) && q->magic == REQUEST_MAGIC) {
        int expected = STAGE_HANDLER;
        if (atomic_compare_exchange_strong(&q->stage, &expected, STAGE_DONE)) {
            got = STAGE_HANDLER;
        } else {
            expected = STAGE_AFFINITY;
            if (atomic_compare_exchange_strong(&q->stage, &expected, STAGE_CLAIMING))
                got = STAGE_AFFINITY;
        }
    }
    psrpc__live_unlock(q);
    return got;
}

static int not_live(const psrpc_request *q) {
    if (!q)
        return psrpc__error(PSRPC_INVALID_ARGUMENT, "request is NULL");
    return psrpc__error(PSRPC_INVALID_ARGUMENT,
                        "request is not waiting for an answer (already consumed, or not a "
                        "psrpc_request)");
}

/* q taken in its affinity stage: posts its claim (affinity < 0 declines). */
static int post_claim(psrpc_request *q, float affinity) {
    q->affinity = affinity != affinity ? -1.0f : affinity; /* NaN declines */
    int rc = psrpc__bus_post(q->server->bus, claim_answer_task, q);
    if (rc != PSRPC_OK)
        request_release(q);
    return rc;
}

/* Sends a failure for q, taken in its handler stage. code, message and
 * details must be valid (see psrpc_request_fail_details). */
static int send_failure(psrpc_request *q, const char *code, const char *message,
                        const psrpc_error_detail *details, size_t details_count) {
    Internal__Any *anys = details_count ? calloc(details_count, sizeof *anys) : NULL;
    Internal__Any **ptrs = details_count ? calloc(details_count, sizeof *ptrs) : NULL;
    bool oom = details_count && (!anys || !ptrs);
    for (size_t i = 0; !oom && i < details_count; i++) {
        internal__any__init(&anys[i]);
        anys[i].type_url = (char *)details[i].type_url;
        anys[i].value.data = (uint8_t *)details[i].value;
        anys[i].value.len = details[i].value_len;
        ptrs[i] = &anys[i];
    }
    Internal__Response resp = INTERNAL__RESPONSE__INIT;
    resp.code = (char *)code;
    resp.error = (char *)message;
    if (!oom) {
        resp.n_error_details = details_count;
        resp.error_details = ptrs;
    }
    int rc = answer(q, &resp);
    free(anys);
    free(ptrs);
    if (oom && rc == PSRPC_OK)
        rc = psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory: sent without the details");
    return rc;
}

/* A refused argument: consumes q all the same (handler stage: fails it with
 * PSRPC_INTERNAL saying what was wrong; affinity stage: declines) and returns
 * PSRPC_INVALID_ARGUMENT. */
static int refuse(psrpc_request *q, int stage, const char *fn, const char *what) {
    char msg[256];
    snprintf(msg, sizeof msg, "%s: %s", fn, what);
    if (stage == STAGE_HANDLER)
        send_failure(q, "internal", msg, NULL, 0);
    else
        post_claim(q, -1.0f);
    return psrpc__error(PSRPC_INVALID_ARGUMENT, "%s (the request was consumed: %s)", msg,
                        stage == STAGE_HANDLER ? "failed with PSRPC_INTERNAL" : "declined");
}

psrpc_status psrpc_request_respond(psrpc_request *request, const void *data, size_t len) {
    static const char fn[] = "psrpc_request_respond";
    int stage = request_take(request);
    if (!stage)
        return not_live(request);
    if (stage == STAGE_AFFINITY)
        return refuse(request, stage, fn,
                      "called in the affinity stage (answer it with psrpc_request_claim)");
    if (!data && len)
        return refuse(request, stage, fn, "data is NULL with a non-zero length");
    Internal__Response resp = INTERNAL__RESPONSE__INIT;
    resp.raw_response.data = (uint8_t *)data;
    resp.raw_response.len = len;
    return answer(request, &resp);
}

/* The checks of psrpc_request_fail_details; NULL when fine, else what is
 * wrong (in buf). Normalises an empty code and an empty message. */
static const char *check_failure(const char **code, const char **message,
                                 const psrpc_error_detail *details, size_t details_count, char *buf,
                                 size_t n) {
    if (!*code)
        return "code is NULL (use \"unknown\" or a psrpc code string)";
    if (!details && details_count)
        return "details is NULL with a non-zero count";
    if (!**code)
        *code = "unknown";
    if (!psrpc__utf8_valid(*code, strlen(*code)))
        return "code is not valid UTF-8";
    if (!*message || !**message)
        *message = psrpc_status_str(psrpc_status_from_code(*code));
    if (!psrpc__utf8_valid(*message, strlen(*message)))
        return "message is not valid UTF-8";
    for (size_t i = 0; i < details_count; i++) {
        if (!details[i].type_url ||
            !psrpc__utf8_valid(details[i].type_url, strlen(details[i].type_url))) {
            snprintf(buf, n, "detail %zu has no valid type_url", i);
            return buf;
        }
        if (!details[i].value && details[i].value_len) {
            snprintf(buf, n, "detail %zu has NULL value with a non-zero length", i);
            return buf;
        }
    }
    return NULL;
}

static int fail_common(psrpc_request *request, const char *fn, const char *code,
                       const char *message, const psrpc_error_detail *details,
                       size_t details_count) {
    int stage = request_take(request);
    if (!stage)
        return not_live(request);
    if (stage == STAGE_AFFINITY)
        return refuse(request, stage, fn,
                      "called in the affinity stage (answer it with psrpc_request_claim)");
    char buf[96];
    const char *wrong = check_failure(&code, &message, details, details_count, buf, sizeof buf);
    if (wrong)
        return refuse(request, stage, fn, wrong);
    return send_failure(request, code, message, details, details_count);
}

psrpc_status psrpc_request_fail(psrpc_request *request, int status, const char *message) {
    if (status >= 0) {
        int stage = request_take(request);
        if (!stage)
            return not_live(request);
        char what[64];
        snprintf(what, sizeof what, "status %d is not an error", status);
        return refuse(request, stage, "psrpc_request_fail", what);
    }
    return fail_common(request, "psrpc_request_fail", psrpc_status_code(status), message, NULL, 0);
}

psrpc_status psrpc_request_fail_details(psrpc_request *request, const char *code,
                                        const char *message, const psrpc_error_detail *details,
                                        size_t details_count) {
    return fail_common(request, "psrpc_request_fail_details", code, message, details,
                       details_count);
}

psrpc_status psrpc_request_claim(psrpc_request *request, float affinity) {
    int stage = request_take(request);
    if (!stage)
        return not_live(request);
    if (stage == STAGE_HANDLER)
        return refuse(request, stage, "psrpc_request_claim",
                      "called in the handler stage (answer it with psrpc_request_respond or "
                      "psrpc_request_fail)");
    return post_claim(request, affinity);
}

void psrpc_request_abandon(psrpc_request *request, int status, const char *message) {
    int stage = request_take(request);
    if (stage == STAGE_AFFINITY) {
        post_claim(request, -1.0f);
    } else if (stage == STAGE_HANDLER) {
        /* status 0, positive or not a psrpc status: internal */
        if (status >= 0 ||
            (status != PSRPC_UNKNOWN && strcmp(psrpc_status_name(status), "PSRPC_UNKNOWN") == 0))
            status = PSRPC_INTERNAL;
        if (!message || !*message || !psrpc__utf8_valid(message, strlen(message)))
            message = psrpc_status_str(status);
        send_failure(request, psrpc_status_code(status), message, NULL, 0);
    }
}

/* ---------------------------------------------------------------- issue 16 */

psrpc_status psrpc_server_add_hooks(psrpc_server *server, const psrpc_server_hooks *hooks) {
    PSRPC__CHECK_ARG(server && server->magic == SERVER_MAGIC,
                     "server is NULL or not a psrpc_server");
    PSRPC__CHECK_NOT_FORKED(server->bus);
    PSRPC__CHECK_ARG(hooks, "hooks is NULL");
    psrpc_server_hooks h = PSRPC_SERVER_HOOKS_INIT;
    int rc = psrpc__options_load(&h, sizeof h, hooks, "psrpc_server_hooks");
    if (rc != PSRPC_OK)
        return rc;
    PSRPC__CHECK_ARG(h.before_handle || h.on_outcome,
                     "hooks has neither before_handle nor on_outcome");
    psrpc__hook e = {h.before_handle, h.on_outcome, h.user_data, h.release};
    return psrpc__hooks_add(&server->hooks, &e);
}

psrpc_status psrpc_request_reject(psrpc_request *request, const char *code, const char *message,
                                  const psrpc_error_detail *details, size_t details_count) {
    static const char fn[] = "psrpc_request_reject";
    int stage = request_take(request);
    if (!stage)
        return not_live(request);
    char buf[96];
    const char *wrong = check_failure(&code, &message, details, details_count, buf, sizeof buf);
    if (wrong)
        return refuse(request, stage, fn, wrong);
    if (stage == STAGE_AFFINITY) {
        /* No claim: the caller gets this error (as Go answers a request it
         * cannot decode); answer() sends it without the handler stage. */
        request->rejecting = true;
    }
    return send_failure(request, code, message, details, details_count);
}
