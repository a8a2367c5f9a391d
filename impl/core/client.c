/* psrpc_client: unary calls with server selection (wire-protocol.md 8.1, 8.3),
 * multi calls (9), subscriptions (10), cancel, deadlines, exactly-once
 * completion. All state below "Loop thread" is touched on the loop only. */
#include <pthread.h>
#include <stdio.h>

#include "chan_cache.h"
#include "core.h"
#include "map.h"
#include "stream.h"

#define CLIENT_MAGIC 0x50434c49u    /* "PCLI" */
#define SUB_MAGIC 0x50535542u       /* "PSUB" */
#define SELECTION_MAGIC 0x50534c43u /* "PSLC" */

typedef struct call call;
typedef struct psrpc_sub sub_t;

struct psrpc_client {
    uint32_t magic;
    atomic_int refs;
    atomic_bool closing;
    atomic_bool freed;
    atomic_uint_fast64_t next_call_id;
    psrpc_bus *bus;
    char *service;
    char *id;
    int64_t timeout_ms;
    int64_t selection_timeout_ms;
    psrpc__child child;
    psrpc__task_node free_node; /* psrpc_client_free's close */

    /* Loop thread. */
    int state;
    bool started;
    int ready_pending;
    bool ready;
    psrpc__channel res_ch, claim_ch;
    psrpc__bus_sub *res_sub, *claim_sub;
    psrpc__map by_request;   /* request_id → call */
    psrpc__chan_cache chans; /* loop thread: request and claim channels by method */
    psrpc__map by_id;        /* decimal call id → call */
    psrpc__map streams;      /* stream_id → psrpc_stream (opening or open) */
    psrpc__channel str_ch;   /* the client stream channel, once a stream was opened */
    psrpc__bus_sub *str_sub;
    bool str_ready;
    call *waiting; /* calls queued until the reply channels are confirmed */
    /* The broker refused the reply (or the stream) subscription: every later
     * call (stream open) fails at once with this refusal, as the calls that
     * waited did, instead of timing out (status 0 = not refused). */
    int refused_status, str_refused_status;
    char *refused_message, *str_refused_message;
    /* Deadlines: one timer for the client, armed for the earliest call of a
     * list kept in deadline order (calls mostly share a timeout, so a new
     * call goes to the tail in O(1)). */
    uv_timer_t dl_timer;
    bool dl_timer_on; /* initialized (while started) */
    call *dl_head, *dl_tail;
    sub_t *subs;
    psrpc__closed_waiter *closed_waiters;
    void (*child_done)(psrpc__child *);
};

enum { CALL_NEW, CALL_WAIT_READY, CALL_SELECTING, CALL_SELECT_CB, CALL_WAIT_RESPONSE, CALL_DONE };

typedef struct claim_rec {
    char *server_id;
    float affinity;
} claim_rec;

struct call {
    psrpc_client *client;
    uint64_t id;
    char id_key[24];
    char request_id[4 + PSRPC__ID_RANDOM_LEN + 1];
    psrpc__method method;
    char **topics;
    size_t topic_count;
    char **meta_keys, **meta_values;
    size_t meta_count;
    psrpc_msg *payload;
    bool multi;
    bool require_claim;
    bool wait_for_ready;
    psrpc_stream *stream; /* a stream open (holds a reference) */
    psrpc_call_cb cb;
    psrpc_call_cb on_done;
    void *user_data;
    int64_t timeout_ms;
    int64_t deadline_ms; /* monotonic */
    int64_t deadline_ns; /* the caller's absolute deadline (wall clock), 0 = none */
    /* Selection. */
    psrpc_selection_options sel;
    char *best_id;
    float best;
    claim_rec *eligible;
    size_t eligible_count, eligible_cap;
    int claim_count;
    psrpc__err *last_err;
    bool shorted;
    bool ended_by_deadline;
    /* Loop thread. */
    int state;
    bool in_waiting;
    call *next_waiting;
    uint64_t due_ms; /* loop time of the deadline */
    call *dl_prev, *dl_next;
    bool in_dl;
    uv_timer_t select_timer; /* initialized when selection first needs it */
    bool select_on;
};

struct psrpc_selection {
    uint32_t magic;
    atomic_int refs;
    atomic_bool answered;
    psrpc_client *client;
    uint64_t call_id;
};

struct psrpc_sub {
    uint32_t magic;
    atomic_int refs;
    atomic_bool closing;
    atomic_bool freed;
    psrpc_client *client;
    psrpc__method method;
    psrpc__channel ch;
    bool queue;
    psrpc_message_cb on_message;
    psrpc_done_cb on_ready;
    void *user_data;
    psrpc_release_cb release;
    /* Readiness, any thread under mu. */
    pthread_mutex_t mu;
    pthread_cond_t cond;
    bool ready_done;
    int ready_status;
    char ready_message[256];
    /* Loop thread. */
    bool active;
    bool finished;
    psrpc__bus_sub *bus_sub;
    psrpc__closed_waiter *closed_waiters;
    sub_t *next;
    psrpc__task_node free_node; /* psrpc_sub_free's close */
};

/* ---------------------------------------------------------------- refs */

static void client_retain(psrpc_client *c) { atomic_fetch_add(&c->refs, 1); }

static void client_release(psrpc_client *c) {
    if (atomic_fetch_sub(&c->refs, 1) != 1)
        return;
    psrpc__map_clear(&c->by_request);
    psrpc__map_clear(&c->by_id);
    psrpc__map_clear(&c->streams);
    psrpc__channel_clear(&c->str_ch);
    psrpc__channel_clear(&c->res_ch);
    psrpc__channel_clear(&c->claim_ch);
    psrpc__chan_cache_clear(&c->chans);
    free(c->refused_message);
    free(c->str_refused_message);
    free(c->service);
    free(c->id);
    psrpc_bus *bus = c->bus;
    c->magic = 0;
    free(c);
    psrpc__bus_release(bus);
}

/* ---------------------------------------------------------------- calls */

static void call_free(call *k) {
    psrpc__method_clear(&k->method);
    psrpc__strv_free(k->topics, k->topic_count);
    psrpc__strv_free(k->meta_keys, k->meta_count);
    psrpc__strv_free(k->meta_values, k->meta_count);
    psrpc_msg_release(k->payload);
    free(k->best_id);
    for (size_t i = 0; i < k->eligible_count; i++)
        free(k->eligible[i].server_id);
    free(k->eligible);
    psrpc__err_free(k->last_err);
    if (k->stream)
        psrpc__stream_release(k->stream);
    psrpc_client *c = k->client;
    free(k);
    client_release(c);
}

static void select_timer_closed(uv_handle_t *h) { call_free(h->data); }

static void call_free_task(void *arg) { call_free(arg); }

/* ---------------------------------------------------------------- deadlines */

static void dl_fired(uv_timer_t *t);

static void dl_arm(psrpc_client *c) {
    if (!c->dl_timer_on)
        return;
    if (!c->dl_head) {
        uv_timer_stop(&c->dl_timer);
        return;
    }
    uint64_t now = uv_now(c->dl_timer.loop);
    uint64_t due = c->dl_head->due_ms;
    uint64_t in = due > now ? due - now : 0;
    /* Re-armed only when the earliest deadline moved earlier; a timer firing
     * for a call that already completed just re-arms for the next. */
    if (!uv_is_active((uv_handle_t *)&c->dl_timer) || in < uv_timer_get_due_in(&c->dl_timer))
        uv_timer_start(&c->dl_timer, dl_fired, in, 0);
}

static void dl_insert(call *k, uint64_t due_ms) {
    psrpc_client *c = k->client;
    k->due_ms = due_ms;
    call *after = c->dl_tail;
    while (after && after->due_ms > due_ms)
        after = after->dl_prev;
    k->dl_prev = after;
    k->dl_next = after ? after->dl_next : c->dl_head;
    if (k->dl_next)
        k->dl_next->dl_prev = k;
    else
        c->dl_tail = k;
    if (after)
        after->dl_next = k;
    else
        c->dl_head = k;
    k->in_dl = true;
    if (c->dl_head == k)
        dl_arm(c);
}

static void dl_remove(call *k) {
    if (!k->in_dl)
        return;
    psrpc_client *c = k->client;
    if (k->dl_prev)
        k->dl_prev->dl_next = k->dl_next;
    else
        c->dl_head = k->dl_next;
    if (k->dl_next)
        k->dl_next->dl_prev = k->dl_prev;
    else
        c->dl_tail = k->dl_prev;
    k->dl_prev = k->dl_next = NULL;
    k->in_dl = false;
}

static void deadline_fired(call *k);

static void dl_fired(uv_timer_t *t) {
    psrpc_client *c = t->data;
    uint64_t now = uv_now(t->loop);
    client_retain(c);
    while (c->dl_head && c->dl_head->due_ms <= now) {
        call *k = c->dl_head;
        dl_remove(k);
        deadline_fired(k);
    }
    dl_arm(c);
    client_release(c);
}

static void dl_timer_closed(uv_handle_t *h) { client_release(h->data); }

static void select_timeout(uv_timer_t *t);

static void select_timer_start(call *k, uint64_t due) {
    if (!k->select_on) {
        uv_timer_init(psrpc__loop_uv(k->client->bus->loop), &k->select_timer);
        k->select_timer.data = k;
        k->select_on = true;
    }
    uv_timer_start(&k->select_timer, select_timeout, due, 0);
}

static void select_timer_stop(call *k) {
    if (k->select_on)
        uv_timer_stop(&k->select_timer);
}

static void unlink_waiting(call *k) {
    if (!k->in_waiting)
        return;
    for (call **p = &k->client->waiting; *p; p = &(*p)->next_waiting) {
        if (*p == k) {
            *p = k->next_waiting;
            break;
        }
    }
    k->in_waiting = false;
    k->next_waiting = NULL;
}

/* Removes the call from every table and frees it once its timers closed. */
static void call_dispose(call *k) {
    psrpc_client *c = k->client;
    unlink_waiting(k);
    if (k->request_id[0] && psrpc__map_get(&c->by_request, k->request_id) == k)
        psrpc__map_del(&c->by_request, k->request_id);
    if (psrpc__map_get(&c->by_id, k->id_key) == k)
        psrpc__map_del(&c->by_id, k->id_key);
    dl_remove(k);
    /* Freed on a later task, never under the caller: the code that completed
     * the call may still read it when this returns. */
    if (k->select_on) {
        k->select_on = false;
        uv_close((uv_handle_t *)&k->select_timer, select_timer_closed);
    } else if (psrpc__bus_post(c->bus, call_free_task, k) != PSRPC_OK) {
        call_free(k); /* the loop is stopping: no callback runs any more */
    }
}

/* Completes a call exactly once: unary → cb; multi → on_done. */
static void call_complete(call *k, const psrpc_msg *response, const psrpc__err *err,
                          const char *server_id) {
    if (k->state == CALL_DONE)
        return;
    k->state = CALL_DONE;
    unlink_waiting(k);
    PSRPC__STAT_SUB(k->client->bus, requests_in_flight, 1);
    psrpc_error view;
    if (err)
        psrpc__err_view(err, &view);
    psrpc_call_cb cb = k->multi ? k->on_done : k->cb;
    /* Dispose first so a callback that closes the client finds no stale call. */
    psrpc__map_del(&k->client->by_id, k->id_key);
    if (k->request_id[0])
        psrpc__map_del(&k->client->by_request, k->request_id);
    cb(k->id, response, err ? &view : NULL, server_id, k->user_data);
    call_dispose(k);
}

static void call_fail(call *k, int status, const char *message) {
    psrpc__err *e = psrpc__err_new(status, "%s", message);
    if (!e) {
        /* Out of memory: still complete exactly once, with a static error. */
        psrpc_error view = {status, 0, psrpc_status_code(status), message, NULL, 0};
        if (k->state == CALL_DONE)
            return;
        k->state = CALL_DONE;
        unlink_waiting(k);
        PSRPC__STAT_SUB(k->client->bus, requests_in_flight, 1);
        psrpc__map_del(&k->client->by_id, k->id_key);
        if (k->request_id[0])
            psrpc__map_del(&k->client->by_request, k->request_id);
        (k->multi ? k->on_done : k->cb)(k->id, NULL, &view, NULL, k->user_data);
        call_dispose(k);
        return;
    }
    call_complete(k, NULL, e, NULL);
    psrpc__err_free(e);
}

/* The status a call fails with when a publish fails: what the bus said for
 * transport conditions (unavailable, size, auth), internal otherwise (as Go). */
static int publish_failure_status(int rc) {
    switch (rc) {
    case PSRPC_RESOURCE_EXHAUSTED:
    case PSRPC_UNAVAILABLE:
    case PSRPC_INVALID_ARGUMENT:
    case PSRPC_PERMISSION_DENIED:
    case PSRPC_UNAUTHENTICATED:
        return rc;
    default:
        return PSRPC_INTERNAL;
    }
}

static void send_claim_response(call *k, const char *server_id) {
    Internal__ClaimResponse cr = INTERNAL__CLAIM_RESPONSE__INIT;
    cr.request_id = k->request_id;
    cr.server_id = (char *)server_id;
    psrpc_client *c = k->client;
    psrpc__channel scratch;
    const psrpc__channel *ch =
        psrpc__chan_cache_method(&c->chans, PSRPC__CHAN_CLAIM_RESPONSE, c->service, k->method.name,
                                 (const char *const *)k->topics, k->topic_count, &scratch);
    int rc = ch ? psrpc__publish_control(c->bus, ch, &cr.base) : PSRPC_RESOURCE_EXHAUSTED;
    psrpc__channel_clear(&scratch);
    if (rc != PSRPC_OK) {
        call_fail(k, publish_failure_status(rc), psrpc_last_error());
        return;
    }
    k->state = CALL_WAIT_RESPONSE;
}

static void selection_result(call *k);

static void select_timeout(uv_timer_t *t) {
    call *k = t->data;
    if (k->state == CALL_SELECTING)
        selection_result(k);
}

/* Selection ended (wire spec 8.3 "When the selection ends"). */
static void selection_result(call *k) {
    select_timer_stop(k);
    if (k->sel.select) {
        psrpc_selection *s = calloc(1, sizeof *s);
        psrpc_claim *claims = k->eligible_count ? calloc(k->eligible_count, sizeof *claims) : NULL;
        if (!s || (k->eligible_count && !claims)) {
            free(s);
            free(claims);
            call_fail(k, PSRPC_RESOURCE_EXHAUSTED, "out of memory");
            return;
        }
        for (size_t i = 0; i < k->eligible_count; i++)
            claims[i] = (psrpc_claim){k->eligible[i].server_id, k->eligible[i].affinity, 0};
        s->magic = SELECTION_MAGIC;
        atomic_init(&s->refs, 1);
        s->client = k->client;
        client_retain(k->client);
        s->call_id = k->id;
        k->state = CALL_SELECT_CB;
        k->sel.select(s, claims, k->eligible_count, k->sel.select_user_data);
        free(claims);
        return;
    }
    if (k->best_id) {
        bool late = k->ended_by_deadline;
        send_claim_response(k, k->best_id);
        if (late && k->state != CALL_DONE)
            call_fail(k, PSRPC_DEADLINE_EXCEEDED, "request timed out");
        return;
    }
    if (k->last_err) {
        psrpc__err *e = k->last_err;
        k->last_err = NULL;
        call_complete(k, NULL, e, NULL);
        psrpc__err_free(e);
        return;
    }
    if (k->claim_count > 0) {
        char msg[96];
        snprintf(msg, sizeof msg, "no servers available (received %d responses)", k->claim_count);
        call_fail(k, PSRPC_UNAVAILABLE, msg);
        return;
    }
    call_fail(k, PSRPC_UNAVAILABLE, "no response from servers");
}

static void on_claim(call *k, const char *server_id, float affinity, bool handling) {
    if (handling) {
        /* Announced, not bid (v0.8): the server already runs the request. */
        select_timer_stop(k);
        k->state = CALL_WAIT_RESPONSE;
        return;
    }
    k->claim_count++;
    const psrpc_selection_options *o = &k->sel;
    bool eligible = o->minimum_affinity <= 0 || affinity >= o->minimum_affinity;
    if (eligible && ((o->flags & PSRPC_SELECT_ACCEPT_FIRST_AVAILABLE) ||
                     (o->maximum_affinity > 0 && affinity >= o->maximum_affinity))) {
        select_timer_stop(k);
        send_claim_response(k, server_id);
        return;
    }
    if (eligible && o->select) {
        if (k->eligible_count == k->eligible_cap) {
            size_t cap = k->eligible_cap ? k->eligible_cap * 2 : 4;
            claim_rec *n = realloc(k->eligible, cap * sizeof *n);
            if (!n)
                return;
            k->eligible = n;
            k->eligible_cap = cap;
        }
        char *id = psrpc__strdup(server_id);
        if (!id)
            return;
        k->eligible[k->eligible_count++] = (claim_rec){id, affinity};
    } else if (eligible && affinity > k->best) {
        char *id = psrpc__strdup(server_id);
        if (id) {
            free(k->best_id);
            k->best_id = id;
            k->best = affinity;
        }
    }
    if (eligible && o->short_circuit_timeout_ms > 0 && !k->shorted) {
        k->shorted = true;
        uint64_t due = (uint64_t)o->short_circuit_timeout_ms;
        if (!k->select_on || !uv_is_active((uv_handle_t *)&k->select_timer) ||
            due < uv_timer_get_due_in(&k->select_timer))
            select_timer_start(k, due);
    }
}

static void deadline_fired(call *k) {
    switch (k->state) {
    case CALL_SELECTING:
        if (k->multi)
            break;
        k->ended_by_deadline = true;
        selection_result(k);
        if (k->state == CALL_SELECT_CB)
            call_fail(k, PSRPC_DEADLINE_EXCEEDED, "request timed out");
        return;
    case CALL_WAIT_RESPONSE:
        if (k->multi) {
            call_complete(k, NULL, NULL, NULL);
            return;
        }
        break;
    default:
        break;
    }
    call_fail(k, PSRPC_DEADLINE_EXCEEDED, "request timed out");
}

static void call_wait(call *k) {
    psrpc_client *c = k->client;
    k->state = CALL_WAIT_READY;
    k->in_waiting = true;
    k->next_waiting = c->waiting;
    c->waiting = k;
}

/* Publishes the Request (loop thread, client ready). */
static void call_send(call *k) {
    psrpc_client *c = k->client;
    if (k->wait_for_ready && atomic_load(&c->bus->conn_state) == PSRPC_BUS_DISCONNECTED) {
        call_wait(k); /* sent when the bus reconnects, within the deadline */
        return;
    }
    psrpc__new_id(k->request_id, "REQ_");
    if (psrpc__map_put(&c->by_request, k->request_id, k) != PSRPC_OK) {
        k->request_id[0] = 0;
        call_fail(k, PSRPC_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    int64_t now = psrpc__now_ns();
    int64_t left_ms = k->deadline_ms - psrpc__mono_ms();
    if (left_ms <= 0) {
        call_fail(k, PSRPC_DEADLINE_EXCEEDED, "request timed out");
        return;
    }
    Internal__Request req = INTERNAL__REQUEST__INIT;
    req.request_id = k->request_id;
    req.client_id = c->id;
    req.sent_at = now;
    req.expiry = psrpc__sat_add(now, psrpc__ms_to_ns(left_ms));
    if (k->deadline_ns > 0 && req.expiry > k->deadline_ns)
        req.expiry = k->deadline_ns; /* never outlive the caller's deadline */
    req.multi = k->multi;
    req.skip_claim = !k->stream && k->method.routing == PSRPC_ROUTING_QUEUE;
    req.raw_request.data = k->payload->data;
    req.raw_request.len = k->payload->len;
    Internal__Request__MetadataEntry *entries = NULL, **eptrs = NULL;
    if (k->meta_count) {
        entries = calloc(k->meta_count, sizeof *entries);
        eptrs = calloc(k->meta_count, sizeof *eptrs);
        if (!entries || !eptrs) {
            free(entries);
            free(eptrs);
            call_fail(k, PSRPC_RESOURCE_EXHAUSTED, "out of memory");
            return;
        }
        for (size_t i = 0; i < k->meta_count; i++) {
            internal__request__metadata_entry__init(&entries[i]);
            entries[i].key = k->meta_keys[i];
            entries[i].value = k->meta_values[i];
            eptrs[i] = &entries[i];
        }
        req.n_metadata = k->meta_count;
        req.metadata = eptrs;
    }
    psrpc__channel scratch;
    const psrpc__channel *ch;
    int rc;
    if (k->stream) {
        /* A stream open: Stream{open} on the stream server channel (11.3). */
        Internal__StreamOpen open = INTERNAL__STREAM_OPEN__INIT;
        open.node_id = c->id;
        Internal__StreamOpen__MetadataEntry *se = NULL, **sp = NULL;
        if (k->meta_count) {
            se = calloc(k->meta_count, sizeof *se);
            sp = calloc(k->meta_count, sizeof *sp);
            if (!se || !sp) {
                free(se);
                free(sp);
                free(entries);
                free(eptrs);
                call_fail(k, PSRPC_RESOURCE_EXHAUSTED, "out of memory");
                return;
            }
            for (size_t i = 0; i < k->meta_count; i++) {
                internal__stream_open__metadata_entry__init(&se[i]);
                se[i].key = k->meta_keys[i];
                se[i].value = k->meta_values[i];
                sp[i] = &se[i];
            }
        }
        open.n_metadata = k->meta_count;
        open.metadata = sp;
        Internal__Stream is = INTERNAL__STREAM__INIT;
        is.stream_id = (char *)psrpc__stream_id(k->stream);
        is.request_id = k->request_id;
        is.sent_at = req.sent_at;
        is.expiry = req.expiry;
        is.body_case = INTERNAL__STREAM__BODY_OPEN;
        is.open = &open;
        ch = psrpc__chan_cache_method(&c->chans, PSRPC__CHAN_STREAM_SERVER, c->service,
                                      k->method.name, (const char *const *)k->topics,
                                      k->topic_count, &scratch);
        rc = ch ? psrpc__publish_control(c->bus, ch, &is.base) : PSRPC_RESOURCE_EXHAUSTED;
        psrpc__channel_clear(&scratch);
        free(se);
        free(sp);
    } else {
        psrpc__chan_kind kind =
            k->method.routing == PSRPC_ROUTING_QUEUE ? PSRPC__CHAN_RPC_QUEUE : PSRPC__CHAN_RPC;
        ch = psrpc__chan_cache_method(&c->chans, kind, c->service, k->method.name,
                                      (const char *const *)k->topics, k->topic_count, &scratch);
        rc = ch ? psrpc__publish_control(c->bus, ch, &req.base) : PSRPC_RESOURCE_EXHAUSTED;
        psrpc__channel_clear(&scratch);
    }
    free(entries);
    free(eptrs);
    if (rc != PSRPC_OK) {
        call_fail(k, publish_failure_status(rc), psrpc_last_error());
        return;
    }
    /* The payload is on the wire; keep no copy. */
    psrpc_msg_release(k->payload);
    k->payload = NULL;
    if (k->require_claim) {
        k->state = CALL_SELECTING;
        if (k->sel.affinity_timeout_ms > 0)
            select_timer_start(k, (uint64_t)k->sel.affinity_timeout_ms);
    } else {
        k->state = CALL_WAIT_RESPONSE;
    }
}

static void on_response(void *ctx, const uint8_t *data, size_t len) {
    psrpc_client *c = ctx;
    if (c->state != PSRPC__OPEN)
        return;
    Internal__Response *r = (Internal__Response *)psrpc__decode_control(
        c->bus, data, len, &internal__response__descriptor);
    if (!r)
        return;
    call *k = psrpc__map_get(&c->by_request, r->request_id);
    if (!k || k->state == CALL_DONE) {
        PSRPC__STAT_ADD(c->bus, dropped_unknown, 1);
        psrpc__wire_free(&r->base);
        return;
    }
    bool failed = r->error && r->error[0];
    /* v0.8: a response during selection is final if it is a success, or on a
     * queue method (the sole responder); on a broadcast an early error may yet
     * be outbid, so it is held back. */
    if (k->state == CALL_SELECTING && (!failed || k->method.routing == PSRPC_ROUTING_QUEUE)) {
        select_timer_stop(k);
        k->state = CALL_WAIT_RESPONSE;
    }
    if (k->state == CALL_SELECTING || k->state == CALL_SELECT_CB) {
        if (failed) {
            psrpc__err *e = psrpc__err_from_response(r);
            if (e) {
                psrpc__err_free(k->last_err);
                k->last_err = e;
            }
        } else {
            PSRPC__STAT_ADD(c->bus, dropped_unknown, 1);
        }
    } else if (k->state == CALL_WAIT_RESPONSE) {
        psrpc__err *made = failed ? psrpc__err_from_response(r) : NULL;
        psrpc_msg *msg = NULL;
        if (!failed && psrpc_msg_new(&msg, r->raw_response.data, r->raw_response.len) != 0)
            made = psrpc__err_new(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
        if (failed && !made)
            made = psrpc__err_new(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
        /* Out of memory even for that: a static error, never a NULL pair. */
        psrpc__err oom = {PSRPC_RESOURCE_EXHAUSTED, "resource_exhausted", "out of memory", NULL, 0};
        psrpc__err *e = made ? made : (failed || !msg) ? &oom : NULL;
        if (k->multi) {
            psrpc_error view;
            if (e)
                psrpc__err_view(e, &view);
            k->cb(k->id, e ? NULL : msg, e ? &view : NULL, r->server_id, k->user_data);
        } else {
            call_complete(k, e ? NULL : msg, e, r->server_id);
        }
        psrpc_msg_release(msg);
        psrpc__err_free(made);
    }
    psrpc__wire_free(&r->base);
}

static void on_claim_request(void *ctx, const uint8_t *data, size_t len) {
    psrpc_client *c = ctx;
    if (c->state != PSRPC__OPEN)
        return;
    Internal__ClaimRequest *cr = (Internal__ClaimRequest *)psrpc__decode_control(
        c->bus, data, len, &internal__claim_request__descriptor);
    if (!cr)
        return;
    call *k = psrpc__map_get(&c->by_request, cr->request_id);
    if (k && k->state == CALL_SELECTING)
        on_claim(k, cr->server_id, cr->affinity, cr->handling);
    else
        PSRPC__STAT_ADD(c->bus, dropped_unknown, 1);
    psrpc__wire_free(&cr->base);
}

/* ---------------------------------------------------------------- streams */

static void flush_waiting(psrpc_client *c);

static void on_stream_message(void *ctx, const uint8_t *data, size_t len) {
    psrpc_client *c = ctx;
    if (c->state != PSRPC__OPEN)
        return;
    Internal__Stream *is =
        (Internal__Stream *)psrpc__decode_control(c->bus, data, len, &internal__stream__descriptor);
    if (!is)
        return;
    if (psrpc__now_ns() >= is->expiry) {
        PSRPC__STAT_ADD(c->bus, dropped_expired, 1);
    } else if (is->body_case == INTERNAL__STREAM__BODY_ACK &&
               psrpc__map_get(&c->by_request, is->request_id)) {
        /* The ack of an open: the open call succeeds. */
        call *k = psrpc__map_get(&c->by_request, is->request_id);
        if (k->stream && k->state == CALL_WAIT_RESPONSE && is->stream_id &&
            strcmp(is->stream_id, psrpc__stream_id(k->stream)) == 0)
            call_complete(k, NULL, NULL, NULL);
        else
            PSRPC__STAT_ADD(c->bus, dropped_unknown, 1);
    } else if (is->body_case == INTERNAL__STREAM__BODY_OPEN) {
        PSRPC__STAT_ADD(c->bus, dropped_malformed, 1); /* opens never go to clients */
    } else {
        psrpc_stream *st = psrpc__map_get(&c->streams, is->stream_id);
        if (st)
            psrpc__stream_handle(st, is);
        else
            PSRPC__STAT_ADD(c->bus, dropped_unknown, 1);
    }
    psrpc__wire_free(&is->base);
}

/* Records the first refusal of a reply or stream subscription (loop thread). */
static void note_refusal(int *status_out, char **message_out, int status, const char *message,
                         const char *fallback) {
    if (*status_out != PSRPC_OK)
        return;
    *status_out = status < 0 ? status : PSRPC_UNAVAILABLE;
    /* On allocation failure the fallback text is used at each call instead. */
    *message_out = psrpc__strdup(message && *message ? message : fallback);
}

static void str_ready(void *ctx, int status, const char *message) {
    psrpc_client *c = ctx;
    if (c->state != PSRPC__OPEN)
        return;
    if (status != PSRPC_OK) {
        note_refusal(&c->str_refused_status, &c->str_refused_message, status, message,
                     "cannot subscribe to streams");
        /* Fail the stream opens that wait for the channel. */
        call *k = c->waiting, *next;
        for (; k; k = next) {
            next = k->next_waiting;
            if (k->stream)
                call_fail(k, status, message ? message : "cannot subscribe to streams");
        }
        return;
    }
    c->str_ready = true;
    if (c->ready)
        flush_waiting(c);
}

/* The open call completed (loop thread): success opens the stream. */
static void stream_open_done(uint64_t id, const psrpc_msg *response, const psrpc_error *error,
                             const char *server_id, void *user_data) {
    (void)id;
    (void)response;
    (void)server_id;
    psrpc_stream *st = user_data;
    if (psrpc__stream_state(st) != PSRPC__STREAM_OPENING) {
        /* Closed while opening, and a server accepted it after all. */
        if (!error)
            psrpc__stream_close_late_open(st);
        return;
    }
    if (!error) {
        psrpc__stream_opened(st);
        return;
    }
    psrpc__err *e = psrpc__err_from_code(error->code, error->message);
    if (e)
        e->status = error->status;
    psrpc__err fallback = {error->status, (char *)error->code, (char *)error->message, NULL, 0};
    psrpc__stream_end(st, e ? e : &fallback, true);
    psrpc__err_free(e);
}

static void owner_retain(void *o) { client_retain(o); }
static void owner_release(void *o) { client_release(o); }
static void owner_detach(void *o, psrpc_stream *st) {
    psrpc_client *c = o;
    if (psrpc__map_get(&c->streams, psrpc__stream_id(st)) == st)
        psrpc__map_del(&c->streams, psrpc__stream_id(st));
}

/* Subscribes the client stream channel once (loop thread). */
static void ensure_stream_channel(psrpc_client *c) {
    if (c->str_sub || c->state != PSRPC__OPEN || c->str_refused_status != PSRPC_OK)
        return;
    c->str_sub = psrpc__bus_subscribe(c->bus, &c->str_ch, false, on_stream_message, str_ready, c);
    if (!c->str_sub)
        note_refusal(&c->str_refused_status, &c->str_refused_message, psrpc_last_error_status(),
                     psrpc_last_error(), "cannot subscribe to streams");
}

/* ---------------------------------------------------------------- lifecycle */

static void flush_waiting(psrpc_client *c) {
    call *k = c->waiting;
    c->waiting = NULL;
    /* Keep submission order: the list was built by prepending. */
    call *rev = NULL;
    while (k) {
        call *next = k->next_waiting;
        k->next_waiting = rev;
        k->in_waiting = false;
        rev = k;
        k = next;
    }
    /* Sending can complete (and free) a call: detach each before sending. */
    while (rev) {
        call *next = rev->next_waiting;
        rev->next_waiting = NULL;
        if (rev->state == CALL_WAIT_READY) {
            if (rev->stream && !c->str_ready)
                call_wait(rev); /* still waiting for the client stream channel */
            else
                call_send(rev);
        }
        rev = next;
    }
}

static void reply_ready(void *ctx, int status, const char *message) {
    psrpc_client *c = ctx;
    if (c->state != PSRPC__OPEN)
        return;
    if (status != PSRPC_OK) {
        /* Fail what waits; later calls fail at once with the same refusal. */
        note_refusal(&c->refused_status, &c->refused_message, status, message,
                     "cannot subscribe to replies");
        while (c->waiting)
            call_fail(c->waiting, status, message ? message : "cannot subscribe to replies");
        return;
    }
    if (--c->ready_pending == 0) {
        c->ready = true;
        flush_waiting(c);
    }
}

static void client_start(psrpc_client *c) {
    if (c->started || c->state != PSRPC__OPEN)
        return;
    if (atomic_load(&c->bus->state) != PSRPC__OPEN) {
        c->state = PSRPC__CLOSED;
        return;
    }
    c->started = true;
    client_retain(c); /* the loop's reference, dropped when closed */
    uv_timer_init(psrpc__loop_uv(c->bus->loop), &c->dl_timer);
    c->dl_timer.data = c;
    c->dl_timer_on = true;
    client_retain(c); /* the timer's, until its close callback */
    psrpc__bus_add_child(c->bus, &c->child);
    c->ready_pending = 2;
    c->res_sub = psrpc__bus_subscribe(c->bus, &c->res_ch, false, on_response, reply_ready, c);
    c->claim_sub =
        psrpc__bus_subscribe(c->bus, &c->claim_ch, false, on_claim_request, reply_ready, c);
    if (!c->res_sub || !c->claim_sub) {
        c->ready_pending = -1000; /* never ready: calls fail with the reason */
        note_refusal(&c->refused_status, &c->refused_message, psrpc_last_error_status(),
                     psrpc_last_error(), "cannot subscribe to replies");
    }
}

static void sub_finish(sub_t *s);

static void run_closed_waiters(psrpc__closed_waiter **list) { psrpc__waiters_run(list); }

static void client_do_close(psrpc_client *c) {
    if (c->state != PSRPC__OPEN)
        return;
    c->state = PSRPC__CLOSING;
    atomic_store(&c->closing, true);
    psrpc__bus_unsubscribe(c->bus, c->res_sub);
    psrpc__bus_unsubscribe(c->bus, c->claim_sub);
    c->res_sub = c->claim_sub = NULL;
    /* Complete every outstanding call. Collect first: callbacks may touch the maps. */
    size_t n = c->by_id.count, i = 0;
    call **calls = n ? calloc(n, sizeof *calls) : NULL;
    if (calls) {
        psrpc__map_iter it;
        psrpc__map_iter_init(&it, &c->by_id);
        for (psrpc__map_entry *e; (e = psrpc__map_iter_next(&it));)
            calls[i++] = e->value;
        for (i = 0; i < n; i++)
            if (calls[i]->state != CALL_DONE)
                call_fail(calls[i], PSRPC_CANCELED, "client is closed");
        free(calls);
    } else {
        /* Out of memory for the list: one at a time (completing removes each). */
        psrpc__map_iter it;
        psrpc__map_entry *e;
        while (psrpc__map_iter_init(&it, &c->by_id), (e = psrpc__map_iter_next(&it))) {
            call *k = e->value;
            if (k->state == CALL_DONE) /* not expected: completing removes it */
                psrpc__map_del(&c->by_id, k->id_key);
            else
                call_fail(k, PSRPC_CANCELED, "client is closed"); /* removes, may free */
        }
    }
    /* Open streams end cleanly, as a closing Go client does ("stream closed"). */
    n = c->streams.count;
    psrpc_stream **streams = n ? calloc(n, sizeof *streams) : NULL;
    if (streams) {
        i = 0;
        psrpc__map_iter it;
        psrpc__map_iter_init(&it, &c->streams);
        for (psrpc__map_entry *e; (e = psrpc__map_iter_next(&it));)
            streams[i++] = e->value;
        for (i = 0; i < n; i++)
            psrpc__stream_end(streams[i], NULL, true);
        free(streams);
    } else {
        psrpc__map_iter it;
        psrpc__map_entry *e;
        while (psrpc__map_iter_init(&it, &c->streams), (e = psrpc__map_iter_next(&it))) {
            psrpc__stream_end(e->value, NULL, true); /* detaches it, may free it */
        }
    }
    psrpc__bus_unsubscribe(c->bus, c->str_sub);
    c->str_sub = NULL;
    while (c->subs) {
        sub_t *s = c->subs;
        c->subs = s->next;
        s->next = NULL;
        sub_finish(s);
    }
    c->state = PSRPC__CLOSED;
    if (c->dl_timer_on) {
        c->dl_timer_on = false;
        uv_close((uv_handle_t *)&c->dl_timer, dl_timer_closed);
    }
    if (c->started)
        psrpc__bus_remove_child(c->bus, &c->child);
    run_closed_waiters(&c->closed_waiters);
    void (*done)(psrpc__child *) = c->child_done;
    c->child_done = NULL;
    if (done)
        done(&c->child);
    if (c->started) {
        c->started = false;
        client_release(c);
    }
}

static void child_connected(psrpc__child *child) {
    psrpc_client *c = PSRPC__CONTAINER_OF(child, psrpc_client, child);
    if (c->state == PSRPC__OPEN && c->ready)
        flush_waiting(c);
}

static void child_close(psrpc__child *child, void (*done)(psrpc__child *)) {
    psrpc_client *c = PSRPC__CONTAINER_OF(child, psrpc_client, child);
    c->child_done = done;
    client_retain(c);
    client_do_close(c);
    client_release(c);
}

typedef struct close_req {
    psrpc_client *client;
    psrpc__closed_waiter *waiter;
} close_req;

static void close_task(void *arg) {
    close_req *r = arg;
    psrpc_client *c = r->client;
    psrpc__waiters_push(&c->closed_waiters, r->waiter);
    if (c->state == PSRPC__OPEN)
        client_do_close(c);
    else
        run_closed_waiters(&c->closed_waiters);
    client_release(c);
    free(r);
}

/* psrpc_client_free's close: posted with the client's own task node, so it
 * cannot fail for lack of memory. */
static void free_close_task(void *arg) {
    psrpc_client *c = arg;
    if (c->state == PSRPC__OPEN)
        client_do_close(c);
    client_release(c);
}

static void start_task(void *arg) {
    psrpc_client *c = arg;
    client_start(c);
    client_release(c);
}

#define CHECK_CLIENT(c)                                                               \
    do {                                                                              \
        PSRPC__CHECK_ARG(c, "client is NULL");                                        \
        PSRPC__CHECK_ARG((c)->magic == CLIENT_MAGIC, "handle is not a psrpc_client"); \
        PSRPC__CHECK_NOT_FORKED((c)->bus);                                            \
    } while (0)

psrpc_status psrpc_client_options_init(psrpc_client_options *opts, size_t struct_size) {
    psrpc_client_options d = PSRPC_CLIENT_OPTIONS_INIT;
    return psrpc__options_init(opts, struct_size, &d, sizeof d);
}

psrpc_status psrpc_call_options_init(psrpc_call_options *opts, size_t struct_size) {
    psrpc_call_options d = PSRPC_CALL_OPTIONS_INIT;
    return psrpc__options_init(opts, struct_size, &d, sizeof d);
}

psrpc_status psrpc_selection_options_init(psrpc_selection_options *opts, size_t struct_size) {
    psrpc_selection_options d = PSRPC_SELECTION_OPTIONS_INIT;
    return psrpc__options_init(opts, struct_size, &d, sizeof d);
}

psrpc_status psrpc_client_create(psrpc_client **out, psrpc_bus *bus, const char *service,
                                 const psrpc_client_options *opts) {
    int rc = psrpc__check_create(out, bus, service);
    if (rc != PSRPC_OK)
        return rc;
    psrpc_client_options o = PSRPC_CLIENT_OPTIONS_INIT;
    if ((rc = psrpc__options_load(&o, sizeof o, opts, "psrpc_client_options")) != PSRPC_OK)
        return rc;
    PSRPC__CHECK_ARG(o.timeout_ms >= 0, "timeout_ms is negative");
    PSRPC__CHECK_ARG(o.selection_timeout_ms >= 0, "selection_timeout_ms is negative");
    if (o.client_id && !*o.client_id)
        o.client_id = NULL; /* as Go: an empty id means a generated one */
    if (o.client_id && (rc = psrpc__check_client_id(o.client_id)) != PSRPC_OK)
        return rc;
    if (atomic_load(&bus->state) != PSRPC__OPEN || atomic_load(&bus->freed))
        return psrpc__error(PSRPC_CANCELED, "bus is closed");

    psrpc_client *c = calloc(1, sizeof *c);
    if (!c)
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
    c->magic = CLIENT_MAGIC;
    atomic_init(&c->refs, 1);
    atomic_init(&c->next_call_id, 1);
    c->service = psrpc__strdup(service);
    if (o.client_id)
        c->id = psrpc__strdup(o.client_id);
    else if ((c->id = malloc(4 + PSRPC__ID_RANDOM_LEN + 1)))
        psrpc__new_id(c->id, "CLI_");
    c->timeout_ms = o.timeout_ms ? psrpc__clamp_timeout_ms(o.timeout_ms) : 3000;
    c->selection_timeout_ms =
        o.selection_timeout_ms ? psrpc__clamp_timeout_ms(o.selection_timeout_ms) : 1000;
    psrpc__map_init(&c->by_request);
    psrpc__map_init(&c->by_id);
    psrpc__map_init(&c->streams);
    c->child.close = child_close;
    c->child.connected = child_connected;
    c->bus = bus;
    psrpc__bus_retain(bus);
    if (!c->service || !c->id ||
        psrpc__channel_client_response(&c->res_ch, service, c->id) != PSRPC_OK ||
        psrpc__channel_client_claim(&c->claim_ch, service, c->id) != PSRPC_OK ||
        psrpc__channel_client_stream(&c->str_ch, service, c->id) != PSRPC_OK) {
        client_release(c);
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
    }
    /* Subscribe the reply channels now, so the first call finds them ready. */
    client_retain(c);
    if (psrpc__bus_post(bus, start_task, c) != PSRPC_OK)
        client_release(c);
    *out = c;
    return PSRPC_OK;
}

const char *psrpc_client_id(const psrpc_client *client) {
    if (!client || client->magic != CLIENT_MAGIC) {
        psrpc__error(PSRPC_INVALID_ARGUMENT, "client is NULL or not a psrpc_client");
        return NULL;
    }
    return client->id;
}

/* ---------------------------------------------------------------- calling */

static void call_task(void *arg) {
    call *k = arg;
    psrpc_client *c = k->client;
    client_start(c);
    PSRPC__STAT_ADD(c->bus, requests_in_flight, 1);
    if (c->state != PSRPC__OPEN) {
        call_fail(k, PSRPC_CANCELED, "client is closed");
        return;
    }
    snprintf(k->id_key, sizeof k->id_key, "%llu", (unsigned long long)k->id);
    if (psrpc__map_put(&c->by_id, k->id_key, k) != PSRPC_OK) {
        call_fail(k, PSRPC_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    dl_insert(k, uv_now(psrpc__loop_uv(c->bus->loop)) + (uint64_t)k->timeout_ms);
    if (c->refused_status != PSRPC_OK) {
        call_fail(k, c->refused_status,
                  c->refused_message ? c->refused_message : "cannot subscribe to replies");
        return;
    }
    if (k->stream) {
        if (psrpc__map_put(&c->streams, psrpc__stream_id(k->stream), k->stream) != PSRPC_OK) {
            call_fail(k, PSRPC_RESOURCE_EXHAUSTED, "out of memory");
            return;
        }
        ensure_stream_channel(c);
        if (c->str_refused_status != PSRPC_OK) {
            call_fail(k, c->str_refused_status,
                      c->str_refused_message ? c->str_refused_message
                                             : "cannot subscribe to streams");
            return;
        }
    }
    if (c->ready && (!k->stream || c->str_ready)) {
        call_send(k);
    } else if (!k->wait_for_ready && psrpc__bus_check_connected(c->bus) != PSRPC_OK) {
        /* Known to be disconnected: fail now rather than at the deadline. */
        call_fail(k, psrpc_last_error_status(), psrpc_last_error());
    } else {
        call_wait(k);
    }
}

typedef struct stream_args {
    psrpc_stream **out;
    psrpc_done_cb on_open;
    psrpc_stream_message_cb on_message;
    psrpc_stream_close_cb on_close;
    void *user_data;
    psrpc_release_cb release;
} stream_args;

static void stream_owner_init(psrpc__stream_owner *o, psrpc_client *c) {
    o->owner = c;
    o->retain = owner_retain;
    o->release = owner_release;
    o->detach = owner_detach;
    o->abort_open = NULL; /* the open call runs out by itself; its result is ignored */
}

static int submit(uint64_t *call_id_out, psrpc_client *client, const psrpc_method *method,
                  const void *data, size_t len, const psrpc_call_options *opts, bool multi,
                  psrpc_call_cb cb, psrpc_call_cb on_done, void *user_data, const stream_args *sa) {
    if (call_id_out)
        *call_id_out = 0;
    CHECK_CLIENT(client);
    PSRPC__CHECK_ARG(data || len == 0, "data is NULL with a non-zero length");
    PSRPC__CHECK_ARG(cb || sa, "callback is NULL");
    PSRPC__CHECK_ARG(!multi || on_done, "on_done is NULL");
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    int rc = psrpc__options_load(&o, sizeof o, opts, "psrpc_call_options");
    if (rc != PSRPC_OK)
        return rc;
    PSRPC__CHECK_ARG(o.timeout_ms >= 0, "timeout_ms is negative");
    PSRPC__CHECK_ARG((o.flags & ~PSRPC_CALL_WAIT_FOR_READY) == 0, "unknown call flags 0x%x",
                     (unsigned)o.flags);
    if ((rc = psrpc__check_topics(o.topics, o.topic_count)) != PSRPC_OK)
        return rc;
    PSRPC__CHECK_ARG(o.metadata || o.metadata_count == 0, "metadata is NULL with a non-zero count");
    for (size_t i = 0; i < o.metadata_count; i++) {
        const psrpc_kv *kv = &o.metadata[i];
        PSRPC__CHECK_ARG(kv->key && kv->value, "metadata entry %zu has a NULL key or value", i);
        PSRPC__CHECK_ARG(psrpc__utf8_valid(kv->key, strlen(kv->key)) &&
                             psrpc__utf8_valid(kv->value, strlen(kv->value)),
                         "metadata entry %zu is not valid UTF-8", i);
    }
    psrpc_selection_options sel = PSRPC_SELECTION_OPTIONS_INIT;
    if (o.selection && (rc = psrpc__options_load(&sel, sizeof sel, o.selection,
                                                 "psrpc_selection_options")) != PSRPC_OK)
        return rc;
    if (o.selection) {
        PSRPC__CHECK_ARG(sel.affinity_timeout_ms >= 0 && sel.short_circuit_timeout_ms >= 0,
                         "selection timeouts are negative");
        PSRPC__CHECK_ARG((sel.flags & ~PSRPC_SELECT_ACCEPT_FIRST_AVAILABLE) == 0,
                         "unknown selection flags 0x%x", (unsigned)sel.flags);
    }
    if ((int64_t)len > client->bus->opts.max_message_size)
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED,
                            "request of %zu bytes exceeds the maximum of %lld bytes", len,
                            (long long)client->bus->opts.max_message_size);

    call *k = calloc(1, sizeof *k);
    if (!k)
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
    if ((rc = psrpc__method_copy(&k->method, method)) != PSRPC_OK) {
        free(k);
        return rc;
    }
    const char *kind_error = NULL;
    if (k->method.flags & PSRPC_METHOD_SUBSCRIPTION)
        kind_error = "subscription methods are subscribed to, not called";
    else if (!sa && (k->method.flags & PSRPC_METHOD_STREAM))
        kind_error = "stream methods are opened with psrpc_client_open_stream, not called";
    else if (sa && !(k->method.flags & PSRPC_METHOD_STREAM))
        kind_error = "psrpc_client_open_stream needs a stream method (PSRPC_METHOD_STREAM)";
    else if (multi && k->method.routing != PSRPC_ROUTING_MULTI)
        kind_error = "psrpc_client_call_multi needs a MULTI method";
    else if (!multi && k->method.routing == PSRPC_ROUTING_MULTI)
        kind_error = "MULTI methods are called with psrpc_client_call_multi";
    /* As v0.8.2: a queue method has one bidder, so there is nothing to select on. */
    if (!kind_error && o.selection && k->method.routing == PSRPC_ROUTING_QUEUE &&
        (sel.select || sel.minimum_affinity > 0 || sel.maximum_affinity > 0))
        kind_error = "affinity selection is not valid on a queue method";
    if (kind_error) {
        psrpc__method_clear(&k->method);
        free(k);
        return psrpc__error(PSRPC_INVALID_ARGUMENT, "%s", kind_error);
    }
    if (atomic_load(&client->closing)) {
        psrpc__method_clear(&k->method);
        free(k);
        return psrpc__error(PSRPC_CANCELED, "client is closed");
    }
    k->client = client;
    k->multi = multi;
    k->wait_for_ready = o.flags & PSRPC_CALL_WAIT_FOR_READY;
    k->require_claim = !multi && psrpc__method_require_claim(&k->method);
    k->cb = cb;
    k->on_done = on_done;
    k->user_data = user_data;
    k->timeout_ms = o.timeout_ms ? psrpc__clamp_timeout_ms(o.timeout_ms) : client->timeout_ms;
    if (o.deadline_ns > 0) {
        /* As Go with a context deadline: the call ends by then. */
        int64_t left = psrpc__sat_add(o.deadline_ns, -psrpc__now_ns()) / 1000000;
        if (left < k->timeout_ms)
            k->timeout_ms = left > 0 ? left : 0;
        k->deadline_ns = o.deadline_ns;
    }
    k->deadline_ms = psrpc__sat_add(psrpc__mono_ms(), k->timeout_ms);
    if (o.selection) {
        sel.affinity_timeout_ms = psrpc__clamp_timeout_ms(sel.affinity_timeout_ms);
        sel.short_circuit_timeout_ms = psrpc__clamp_timeout_ms(sel.short_circuit_timeout_ms);
        k->sel = sel;
    } else {
        bool affinity = k->method.routing == PSRPC_ROUTING_AFFINITY;
        k->sel.flags = affinity ? 0 : PSRPC_SELECT_ACCEPT_FIRST_AVAILABLE;
        k->sel.affinity_timeout_ms = client->selection_timeout_ms;
        k->sel.short_circuit_timeout_ms = affinity ? 200 : 0;
    }
    bool ok = psrpc__strv_dup(&k->topics, o.topics, o.topic_count) == PSRPC_OK;
    if (ok)
        k->topic_count = o.topic_count;
    if (ok && o.metadata_count) {
        k->meta_keys = calloc(o.metadata_count, sizeof(char *));
        k->meta_values = calloc(o.metadata_count, sizeof(char *));
        ok = k->meta_keys && k->meta_values;
        for (size_t i = 0; ok && i < o.metadata_count; i++) {
            k->meta_keys[i] = psrpc__strdup(o.metadata[i].key);
            k->meta_values[i] = psrpc__strdup(o.metadata[i].value);
            k->meta_count = i + 1;
            ok = k->meta_keys[i] && k->meta_values[i];
        }
    }
    ok = ok && psrpc_msg_new(&k->payload, data, len) == PSRPC_OK;
    client_retain(client);
    if (!ok) {
        if (!k->meta_count) {
            free(k->meta_keys);
            free(k->meta_values);
            k->meta_keys = k->meta_values = NULL;
        }
        call_free(k);
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
    }
    psrpc_stream *st = NULL;
    if (sa) {
        char sid[4 + PSRPC__ID_RANDOM_LEN + 1];
        psrpc__new_id(sid, "STR_");
        psrpc__channel peer;
        char **mk = NULL, **mv = NULL;
        if (psrpc__channel_stream_server(&peer, client->service, k->method.name, o.topics,
                                         o.topic_count) != PSRPC_OK ||
            psrpc__strv_dup(&mk, (const char *const *)k->meta_keys, k->meta_count) != PSRPC_OK ||
            psrpc__strv_dup(&mv, (const char *const *)k->meta_values, k->meta_count) != PSRPC_OK) {
            psrpc__channel_clear(&peer);
            psrpc__strv_free(mk, k->meta_count);
            call_free(k);
            return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
        }
        psrpc__stream_params p = {client->bus, false,         sid, client->id, k->method.name,
                                  &peer,       k->timeout_ms, mk,  mv,         k->meta_count,
                                  {0}};
        stream_owner_init(&p.owner, client);
        st = psrpc__stream_new(&p);
        psrpc__channel_clear(&peer);
        if (!st) {
            call_free(k);
            return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
        }
        psrpc__stream_set_client_callbacks(st, sa->on_open, sa->on_message, sa->on_close,
                                           sa->user_data, sa->release);
        psrpc__stream_retain(st); /* the open call's reference */
        k->stream = st;
        k->cb = stream_open_done;
        k->user_data = st;
    }
    k->id = atomic_fetch_add(&client->next_call_id, 1);
    uint64_t id = k->id;
    rc = psrpc__bus_post(client->bus, call_task, k);
    if (rc != PSRPC_OK) {
        if (st) {
            /* Never started: no callback may run; drop the table's and the user's refs. */
            psrpc__stream_set_client_callbacks(st, NULL, NULL, NULL, NULL, NULL);
            psrpc__stream_release(st);
            psrpc__stream_release(st);
            client_release(client); /* the owner reference taken by psrpc__stream_new */
        }
        call_free(k);
        return rc;
    }
    if (call_id_out)
        *call_id_out = id;
    if (sa)
        *sa->out = st;
    return PSRPC_OK;
}

psrpc_status psrpc_client_open_stream(psrpc_stream **out, psrpc_client *client,
                                      const psrpc_method *method, const psrpc_call_options *opts,
                                      psrpc_done_cb on_open, psrpc_stream_message_cb on_message,
                                      psrpc_stream_close_cb on_close, void *user_data,
                                      psrpc_release_cb release) {
    PSRPC__CHECK_ARG(out, "out is NULL");
    *out = NULL;
    PSRPC__CHECK_ARG(on_message, "on_message is NULL");
    PSRPC__CHECK_ARG(on_close, "on_close is NULL");
    stream_args sa = {out, on_open, on_message, on_close, user_data, release};
    return submit(NULL, client, method, NULL, 0, opts, false, NULL, NULL, NULL, &sa);
}

psrpc_status psrpc_client_call(uint64_t *call_id_out, psrpc_client *client,
                               const psrpc_method *method, const void *data, size_t len,
                               const psrpc_call_options *opts, psrpc_call_cb cb, void *user_data) {
    return submit(call_id_out, client, method, data, len, opts, false, cb, NULL, user_data, NULL);
}

psrpc_status psrpc_client_call_multi(uint64_t *call_id_out, psrpc_client *client,
                                     const psrpc_method *method, const void *data, size_t len,
                                     const psrpc_call_options *opts, psrpc_call_cb on_result,
                                     psrpc_call_cb on_done, void *user_data) {
    return submit(call_id_out, client, method, data, len, opts, true, on_result, on_done, user_data,
                  NULL);
}

typedef struct cancel_arg {
    psrpc_client *client;
    uint64_t id;
} cancel_arg;

static void cancel_task(void *arg) {
    cancel_arg *a = arg;
    char key[24];
    snprintf(key, sizeof key, "%llu", (unsigned long long)a->id);
    call *k = psrpc__map_get(&a->client->by_id, key);
    if (k && k->state != CALL_DONE)
        call_fail(k, PSRPC_CANCELED, "request canceled");
    client_release(a->client);
    free(a);
}

psrpc_status psrpc_client_cancel(psrpc_client *client, uint64_t call_id) {
    CHECK_CLIENT(client);
    PSRPC__CHECK_ARG(call_id != 0, "call_id is 0");
    cancel_arg *a = malloc(sizeof *a);
    if (!a)
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
    a->client = client;
    a->id = call_id;
    client_retain(client);
    int rc = psrpc__bus_post(client->bus, cancel_task, a);
    if (rc != PSRPC_OK) {
        client_release(client);
        free(a);
        return PSRPC_OK; /* the bus is closed: every call already completed */
    }
    return PSRPC_OK;
}

/* ---- blocking call ---- */

typedef struct sync_slot {
    pthread_mutex_t mu;
    pthread_cond_t cond;
    bool done;
    bool want_error; /* keep an owned copy of the error object */
    int status;
    char message[512];
    psrpc_error *error; /* owned copy (want_error), NULL if the copy failed */
    psrpc_msg *response;
} sync_slot;

static void sync_done(uint64_t id, const psrpc_msg *response, const psrpc_error *error,
                      const char *server_id, void *user_data) {
    (void)id;
    (void)server_id;
    sync_slot *s = user_data;
    psrpc_error *copy = NULL;
    if (error && s->want_error && psrpc_error_copy(&copy, error) != PSRPC_OK)
        copy = NULL; /* out of memory: the caller builds one from status + message */
    pthread_mutex_lock(&s->mu);
    if (error) {
        s->status = error->status;
        s->error = copy;
        snprintf(s->message, sizeof s->message, "%s", error->message);
    } else {
        s->response = psrpc_msg_retain(response);
    }
    s->done = true;
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->mu);
}

/* An owned error object for a failure that has no wire error (a local
 * refusal, or a copy that ran out of memory): the status's wire code
 * ("internal" for local-only statuses). NULL if memory ran out. */
static psrpc_error *local_error(int status, const char *message) {
    psrpc_error view;
    memset(&view, 0, sizeof view);
    view.status = status;
    view.code = psrpc_status_code(status);
    view.message = message;
    psrpc_error *e = NULL;
    if (psrpc_error_copy(&e, &view) != PSRPC_OK)
        return NULL;
    return e;
}

static int call_sync(psrpc_msg **out, psrpc_error **error_out, psrpc_client *client,
                     const psrpc_method *method, const void *data, size_t len,
                     const psrpc_call_options *opts) {
    if (psrpc__on_any_loop_thread())
        return psrpc__error(PSRPC_WOULD_DEADLOCK,
                            "psrpc_client_call_sync called on a loop thread (inside a callback) "
                            "would deadlock; use psrpc_client_call");
    sync_slot s;
    memset(&s, 0, sizeof s);
    s.want_error = error_out != NULL;
    pthread_mutex_init(&s.mu, NULL);
    pthread_cond_init(&s.cond, NULL);
    int rc = psrpc_client_call(NULL, client, method, data, len, opts, sync_done, &s);
    if (rc == PSRPC_OK) {
        pthread_mutex_lock(&s.mu);
        while (!s.done)
            pthread_cond_wait(&s.cond, &s.mu);
        pthread_mutex_unlock(&s.mu);
        if (s.status != PSRPC_OK) {
            if (error_out)
                *error_out = s.error ? s.error : local_error(s.status, s.message);
            rc = psrpc__error(s.status, "%s", s.message);
        } else {
            *out = s.response;
        }
    }
    pthread_mutex_destroy(&s.mu);
    pthread_cond_destroy(&s.cond);
    return rc;
}

psrpc_status psrpc_client_call_sync(psrpc_msg **out, psrpc_client *client,
                                    const psrpc_method *method, const void *data, size_t len,
                                    const psrpc_call_options *opts) {
    PSRPC__CHECK_ARG(out, "out is NULL");
    *out = NULL;
    return call_sync(out, NULL, client, method, data, len, opts);
}

psrpc_status psrpc_client_call_sync_ex(psrpc_msg **out, psrpc_error **error_out,
                                       psrpc_client *client, const psrpc_method *method,
                                       const void *data, size_t len,
                                       const psrpc_call_options *opts) {
    if (error_out)
        *error_out = NULL;
    if (out)
        *out = NULL;
    int rc = out ? call_sync(out, error_out, client, method, data, len, opts)
                 : psrpc__error(PSRPC_INVALID_ARGUMENT, "out is NULL");
    if (rc != PSRPC_OK && error_out && !*error_out) {
        /* refused before anything was sent: the last error says why */
        char msg[512];
        snprintf(msg, sizeof msg, "%s", psrpc_last_error());
        *error_out = local_error(rc, msg);
        psrpc__error(rc, "%s", msg);
    }
    return rc;
}

/* ---- selection answers ---- */

typedef struct selection_answer {
    psrpc_selection *sel;
    char *server_id; /* NULL → failure */
    psrpc__err *err;
} selection_answer;

static void selection_release(psrpc_selection *s) {
    if (atomic_fetch_sub(&s->refs, 1) == 1) {
        client_release(s->client);
        s->magic = 0;
        free(s);
    }
}

static void selection_task(void *arg) {
    selection_answer *a = arg;
    psrpc_client *c = a->sel->client;
    char key[24];
    snprintf(key, sizeof key, "%llu", (unsigned long long)a->sel->call_id);
    call *k = psrpc__map_get(&c->by_id, key);
    if (k && k->state == CALL_SELECT_CB) {
        if (a->server_id) {
            send_claim_response(k, a->server_id);
        } else {
            call_complete(k, NULL, a->err, NULL);
        }
    }
    psrpc__err_free(a->err);
    free(a->server_id);
    selection_release(a->sel);
    free(a);
}

static int selection_answer_post(psrpc_selection *s, char *server_id, psrpc__err *err) {
    selection_answer *a = calloc(1, sizeof *a);
    if (!a) {
        free(server_id);
        psrpc__err_free(err);
        selection_release(s);
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
    }
    a->sel = s;
    a->server_id = server_id;
    a->err = err;
    int rc = psrpc__bus_post(s->client->bus, selection_task, a);
    if (rc != PSRPC_OK) {
        free(server_id);
        psrpc__err_free(err);
        selection_release(s);
        free(a);
    }
    return rc;
}

psrpc_status psrpc_selection_choose(psrpc_selection *selection, const char *server_id) {
    PSRPC__CHECK_ARG(selection && selection->magic == SELECTION_MAGIC,
                     "selection is NULL or not a psrpc_selection");
    PSRPC__CHECK_ARG(server_id, "server_id is NULL");
    PSRPC__CHECK_ARG(psrpc__utf8_valid(server_id, strlen(server_id)),
                     "server_id is not valid UTF-8");
    if (atomic_exchange(&selection->answered, true))
        return psrpc__error(PSRPC_INVALID_ARGUMENT, "selection already answered");
    char *id = psrpc__strdup(server_id);
    if (!id) {
        selection_release(selection);
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
    }
    return selection_answer_post(selection, id, NULL);
}

psrpc_status psrpc_selection_fail(psrpc_selection *selection, int status, const char *message) {
    PSRPC__CHECK_ARG(selection && selection->magic == SELECTION_MAGIC,
                     "selection is NULL or not a psrpc_selection");
    PSRPC__CHECK_ARG(status < 0, "status %d is not an error", status);
    if (atomic_exchange(&selection->answered, true))
        return psrpc__error(PSRPC_INVALID_ARGUMENT, "selection already answered");
    psrpc__err *e =
        psrpc__err_new(status, "%s", message && *message ? message : psrpc_status_str(status));
    if (!e) {
        selection_release(selection);
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
    }
    return selection_answer_post(selection, NULL, e);
}

/* ---------------------------------------------------------------- subscriptions */

static void sub_release(sub_t *s) {
    if (atomic_fetch_sub(&s->refs, 1) != 1)
        return;
    psrpc__method_clear(&s->method);
    psrpc__channel_clear(&s->ch);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cond);
    psrpc_client *c = s->client;
    s->magic = 0;
    free(s);
    client_release(c);
}

static void sub_set_ready(sub_t *s, int status, const char *message) {
    pthread_mutex_lock(&s->mu);
    bool first = !s->ready_done;
    if (first) {
        s->ready_done = true;
        s->ready_status = status;
        snprintf(s->ready_message, sizeof s->ready_message, "%s", message ? message : "");
        pthread_cond_broadcast(&s->cond);
    }
    pthread_mutex_unlock(&s->mu);
    if (!first || !s->on_ready)
        return;
    if (status == PSRPC_OK) {
        s->on_ready(NULL, s->user_data);
        return;
    }
    psrpc__err *e = psrpc__err_new(status, "%s", message ? message : "subscribe failed");
    psrpc_error view = {
        status, 0, psrpc_status_code(status), message ? message : "subscribe failed", NULL, 0};
    if (e)
        psrpc__err_view(e, &view); /* else (out of memory) the static view */
    s->on_ready(&view, s->user_data);
    psrpc__err_free(e);
}

/* Stops delivery and runs release and closed callbacks (loop thread). */
static void sub_finish(sub_t *s) {
    if (s->finished)
        return;
    s->finished = true;
    s->active = false;
    psrpc__bus_unsubscribe(s->client->bus, s->bus_sub);
    s->bus_sub = NULL;
    sub_set_ready(s, PSRPC_CANCELED, "subscription is closed");
    if (s->release)
        s->release(s->user_data);
    run_closed_waiters(&s->closed_waiters);
    sub_release(s); /* the loop's reference */
}

static void sub_deliver(void *ctx, const uint8_t *data, size_t len) {
    sub_t *s = ctx;
    /* closing: no delivery once psrpc_sub_close returned, also for messages
     * already queued (e.g. close called inside on_message). */
    if (!s->active || atomic_load(&s->closing))
        return;
    psrpc_bus *bus = s->client->bus;
    psrpc__envelope env;
    if (psrpc__envelope_decode(&env, data, len, (size_t)bus->opts.max_message_size) != 0) {
        PSRPC__STAT_ADD(bus, dropped_malformed, 1);
        return;
    }
    if (s->method.output_type && strcmp(env.type_name, s->method.output_type) != 0) {
        PSRPC__STAT_ADD(bus, dropped_malformed, 1);
        psrpc__envelope_clear(&env);
        return;
    }
    psrpc_msg *msg = NULL;
    if (psrpc_msg_new(&msg, env.value, env.value_len) == PSRPC_OK) {
        atomic_fetch_add(&s->refs, 1);
        s->on_message(s, msg, s->user_data);
        psrpc_msg_release(msg);
        sub_release(s);
    }
    psrpc__envelope_clear(&env);
}

static void sub_ready(void *ctx, int status, const char *message) {
    sub_t *s = ctx;
    if (s->active)
        sub_set_ready(s, status, message);
}

static void subscribe_task(void *arg) {
    sub_t *s = arg;
    psrpc_client *c = s->client;
    client_start(c);
    if (c->state != PSRPC__OPEN || atomic_load(&s->closing)) {
        sub_set_ready(s, PSRPC_CANCELED,
                      c->state != PSRPC__OPEN ? "client is closed" : "subscription is closed");
        sub_finish(s);
        return;
    }
    s->active = true;
    s->next = c->subs;
    c->subs = s;
    s->bus_sub = psrpc__bus_subscribe(c->bus, &s->ch, s->queue, sub_deliver, sub_ready, s);
    if (!s->bus_sub) {
        s->active = false;
        sub_set_ready(s, psrpc_last_error_status() ? psrpc_last_error_status() : PSRPC_UNAVAILABLE,
                      psrpc_last_error());
    }
}

psrpc_status psrpc_client_subscribe(psrpc_sub **out, psrpc_client *client,
                                    const psrpc_method *method, const char *const *topics,
                                    size_t topic_count, psrpc_message_cb on_message,
                                    psrpc_done_cb on_ready, void *user_data,
                                    psrpc_release_cb release) {
    PSRPC__CHECK_ARG(out, "out is NULL");
    *out = NULL;
    CHECK_CLIENT(client);
    PSRPC__CHECK_ARG(on_message, "on_message is NULL");
    int rc = psrpc__check_topics(topics, topic_count);
    if (rc != PSRPC_OK)
        return rc;
    sub_t *s = calloc(1, sizeof *s);
    if (!s)
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
    if ((rc = psrpc__method_copy(&s->method, method)) != PSRPC_OK) {
        free(s);
        return rc;
    }
    if (!(s->method.flags & PSRPC_METHOD_SUBSCRIPTION)) {
        psrpc__method_clear(&s->method);
        free(s);
        return psrpc__error(PSRPC_INVALID_ARGUMENT, "method is not a subscription method");
    }
    if (atomic_load(&client->closing)) {
        psrpc__method_clear(&s->method);
        free(s);
        return psrpc__error(PSRPC_CANCELED, "client is closed");
    }
    bool queue = s->method.routing != PSRPC_ROUTING_MULTI;
    if (psrpc__channel_rpc(&s->ch, client->service, s->method.name, topics, topic_count,
                           s->method.routing == PSRPC_ROUTING_QUEUE) != PSRPC_OK) {
        psrpc__method_clear(&s->method);
        free(s);
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
    }
    s->magic = SUB_MAGIC;
    atomic_init(&s->refs, 2); /* the user's and the loop's */
    s->client = client;
    client_retain(client);
    s->queue = queue;
    s->on_message = on_message;
    s->on_ready = on_ready;
    s->user_data = user_data;
    s->release = release;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cond, NULL);
    rc = psrpc__bus_post(client->bus, subscribe_task, s);
    if (rc != PSRPC_OK) {
        s->release = NULL;
        atomic_store(&s->refs, 1);
        sub_release(s);
        return rc;
    }
    *out = s;
    return PSRPC_OK;
}

#define CHECK_SUB(s)                                                            \
    do {                                                                        \
        PSRPC__CHECK_ARG(s, "sub is NULL");                                     \
        PSRPC__CHECK_ARG((s)->magic == SUB_MAGIC, "handle is not a psrpc_sub"); \
        PSRPC__CHECK_NOT_FORKED((s)->client->bus);                              \
    } while (0)

psrpc_status psrpc_sub_wait_ready(psrpc_sub *sub, int64_t timeout_ms) {
    CHECK_SUB(sub);
    if (psrpc__on_any_loop_thread())
        return psrpc__error(PSRPC_WOULD_DEADLOCK,
                            "psrpc_sub_wait_ready called on a loop thread would deadlock");
    struct timespec until;
    psrpc__deadline_in(&until, timeout_ms);
    pthread_mutex_lock(&sub->mu);
    int rc = 0;
    while (!sub->ready_done && rc == 0)
        rc = pthread_cond_timedwait(&sub->cond, &sub->mu, &until);
    bool done = sub->ready_done;
    int status = sub->ready_status;
    char msg[256];
    snprintf(msg, sizeof msg, "%s", sub->ready_message);
    pthread_mutex_unlock(&sub->mu);
    if (!done)
        return psrpc__error(PSRPC_DEADLINE_EXCEEDED, "subscription not confirmed within %lld ms",
                            (long long)timeout_ms);
    if (status != PSRPC_OK)
        return psrpc__error(status, "%s", msg);
    return PSRPC_OK;
}

typedef struct sub_close_req {
    sub_t *sub;
    psrpc__closed_waiter *waiter;
} sub_close_req;

static void sub_close_now(sub_t *s) {
    if (!s->finished) {
        psrpc_client *c = s->client;
        for (sub_t **p = &c->subs; *p; p = &(*p)->next) {
            if (*p == s) {
                *p = s->next;
                break;
            }
        }
        sub_finish(s);
    } else {
        run_closed_waiters(&s->closed_waiters);
    }
}

static void sub_close_task(void *arg) {
    sub_close_req *r = arg;
    sub_t *s = r->sub;
    psrpc__waiters_push(&s->closed_waiters, r->waiter);
    sub_close_now(s);
    sub_release(s);
    free(r);
}

/* psrpc_sub_free's close, on the subscription's own task node. */
static void sub_free_close_task(void *arg) {
    sub_t *s = arg;
    sub_close_now(s);
    sub_release(s);
}

psrpc_status psrpc_sub_close(psrpc_sub *sub, psrpc_closed_cb closed_cb, void *user_data) {
    CHECK_SUB(sub);
    atomic_store(&sub->closing, true);
    bool failed;
    sub_close_req *r = calloc(1, sizeof *r);
    if (r)
        r->waiter = psrpc__waiter_new(closed_cb, user_data, &failed);
    if (!r || failed) {
        free(r);
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
    }
    r->sub = sub;
    atomic_fetch_add(&sub->refs, 1);
    int rc = psrpc__bus_post(sub->client->bus, sub_close_task, r);
    if (rc != PSRPC_OK) {
        sub_release(sub);
        free(r->waiter);
        free(r);
        if (!closed_cb && rc == PSRPC_CANCELED)
            return PSRPC_OK; /* the bus is closed: the subscription finished with it */
    }
    return rc;
}

void psrpc_sub_free(psrpc_sub *sub) {
    if (!sub || sub->magic != SUB_MAGIC)
        return;
    if (atomic_exchange(&sub->freed, true))
        return;
    /* Always, even after psrpc_sub_close (which may have failed for lack of
     * memory): closing twice is harmless, and this post cannot fail for it. */
    atomic_store(&sub->closing, true);
    atomic_fetch_add(&sub->refs, 1);
    if (psrpc__loop_post_node(sub->client->bus->loop, &sub->free_node, sub_free_close_task, sub) !=
        PSRPC_OK)
        sub_release(sub);
    sub_release(sub);
}

/* ---------------------------------------------------------------- close/free */

psrpc_status psrpc_client_close(psrpc_client *client, psrpc_closed_cb closed_cb, void *user_data) {
    CHECK_CLIENT(client);
    atomic_store(&client->closing, true);
    bool failed;
    close_req *r = calloc(1, sizeof *r);
    if (r)
        r->waiter = psrpc__waiter_new(closed_cb, user_data, &failed);
    if (!r || failed) {
        free(r);
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
    }
    r->client = client;
    client_retain(client);
    int rc = psrpc__bus_post(client->bus, close_task, r);
    if (rc != PSRPC_OK) {
        client_release(client);
        free(r->waiter);
        free(r);
        if (!closed_cb && rc == PSRPC_CANCELED)
            return PSRPC_OK; /* the bus is closed: the client closed with it */
    }
    return rc;
}

void psrpc_client_free(psrpc_client *client) {
    if (!client || client->magic != CLIENT_MAGIC)
        return;
    if (atomic_exchange(&client->freed, true))
        return;
    /* Always, even after psrpc_client_close (which may have failed for lack
     * of memory): closing twice is harmless, and this post cannot fail for it. */
    atomic_store(&client->closing, true);
    client_retain(client);
    if (psrpc__loop_post_node(client->bus->loop, &client->free_node, free_close_task, client) !=
        PSRPC_OK)
        client_release(client); /* the bus is closed: the client closed with it */
    client_release(client);
}
