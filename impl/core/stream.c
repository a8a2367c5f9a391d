/* Bidirectional streams: sends acknowledged by request id, receives with a
 * bounded hold buffer, close from either side with a cause the other side
 * sees (wire-protocol.md section 11). */
#include "stream.h"

#include <pthread.h>
#include <stdio.h>

#include "map.h"

#define STREAM_MAGIC 0x5053544du /* "PSTM" */
#define HOLD_CAPACITY 100

typedef struct send_op send_op;

typedef struct held_msg {
    psrpc_msg *msg;
    char request_id[32];
    int64_t sent_at, expiry;
} held_msg;

struct psrpc_stream {
    uint32_t magic;
    atomic_int refs;
    atomic_bool freed;
    atomic_bool close_requested;
    psrpc_bus *bus;
    bool server_side;
    char *stream_id;
    char *node_id;
    char *method;
    psrpc__channel peer;
    int64_t timeout_ms;
    char **meta_keys, **meta_values;
    size_t meta_count;
    psrpc__stream_owner owner;
    psrpc__task_node free_node; /* psrpc_stream_free's close */
    psrpc__err oom_cause;       /* the cause when copying one failed (static strings) */
    int64_t expiry_ns;          /* server side: the open request's expiry */

    /* Callbacks: set once (server side from any thread, under mu). */
    pthread_mutex_t mu;
    bool cbs_set;
    /* The stream ended before its callbacks were set (under mu): the close
     * and the release are owed to the callbacks set later. */
    bool close_owed;
    psrpc_done_cb on_open;
    psrpc_stream_message_cb on_message;
    psrpc_stream_close_cb on_close;
    void *user_data;
    psrpc_release_cb release;

    /* Loop thread. */
    int state;
    bool ended;
    psrpc__err *cause;
    psrpc__map acks; /* request_id → send_op awaiting its ack */
    send_op *queued; /* sends made while opening (FIFO) */
    send_op *queued_tail;
    held_msg held[HOLD_CAPACITY];
    size_t held_count;

    /* Deferred acks (psrpc_stream_defer), under mu: token → deferred_ack. */
    psrpc__map deferred;
    uint64_t next_token;
};

/* A received message whose ack waits for psrpc_stream_ack. */
typedef struct deferred_ack {
    char request_id[32];
    int64_t sent_at, expiry;
} deferred_ack;

/* The message being delivered to on_message on this (loop) thread, so
 * psrpc_stream_defer knows what to defer. */
typedef struct delivery {
    psrpc_stream *stream;
    const char *request_id;
    int64_t sent_at, expiry;
    uint64_t token; /* 0: not deferred */
} delivery;

static _Thread_local delivery *tl_delivery;

/* Frees every deferred ack (under mu): their tokens are no longer valid. */
static void deferred_clear(psrpc_stream *s) {
    psrpc__map_iter it;
    psrpc__map_iter_init(&it, &s->deferred);
    for (psrpc__map_entry *e; (e = psrpc__map_iter_next(&it));)
        free(e->value);
    psrpc__map_clear(&s->deferred);
}

struct send_op {
    psrpc_stream *stream;
    send_op *next;
    char request_id[4 + PSRPC__ID_RANDOM_LEN + 1];
    psrpc_msg *payload;
    int64_t timeout_ms;
    psrpc_done_cb cb;
    void *user_data;
    bool done;
    bool timer_on;
    uv_timer_t timer;
};

/* ---------------------------------------------------------------- refs */

void psrpc__stream_retain(psrpc_stream *s) { atomic_fetch_add(&s->refs, 1); }

void psrpc__stream_release(psrpc_stream *s) {
    if (atomic_fetch_sub(&s->refs, 1) != 1)
        return;
    for (size_t i = 0; i < s->held_count; i++)
        psrpc_msg_release(s->held[i].msg);
    psrpc__map_clear(&s->acks);
    deferred_clear(s);
    if (s->cause != &s->oom_cause)
        psrpc__err_free(s->cause);
    psrpc__strv_free(s->meta_keys, s->meta_count);
    psrpc__strv_free(s->meta_values, s->meta_count);
    psrpc__channel_clear(&s->peer);
    free(s->stream_id);
    free(s->node_id);
    free(s->method);
    pthread_mutex_destroy(&s->mu);
    psrpc_bus *bus = s->bus;
    s->magic = 0;
    free(s);
    psrpc__bus_release(bus);
}

psrpc_stream *psrpc__stream_new(const psrpc__stream_params *p) {
    psrpc_stream *s = calloc(1, sizeof *s);
    if (!s) {
        psrpc__strv_free(p->meta_keys, p->meta_count);
        psrpc__strv_free(p->meta_values, p->meta_count);
        return NULL;
    }
    s->magic = STREAM_MAGIC;
    atomic_init(&s->refs, 2);
    s->bus = p->bus;
    psrpc__bus_retain(p->bus);
    s->server_side = p->server_side;
    s->stream_id = psrpc__strdup(p->stream_id);
    s->node_id = psrpc__strdup(p->node_id);
    s->method = psrpc__strdup(p->method);
    s->timeout_ms = psrpc__clamp_timeout_ms(p->timeout_ms);
    s->meta_keys = p->meta_keys;
    s->meta_values = p->meta_values;
    s->meta_count = p->meta_count;
    s->owner = p->owner;
    s->state = p->server_side ? PSRPC__STREAM_OPEN : PSRPC__STREAM_OPENING;
    pthread_mutex_init(&s->mu, NULL);
    psrpc__map_init(&s->acks);
    psrpc__map_init(&s->deferred);
    if (!s->stream_id || !s->node_id || !s->method ||
        psrpc__channel_copy(&s->peer, p->peer) != PSRPC_OK) {
        atomic_store(&s->refs, 1);
        psrpc__stream_release(s);
        return NULL;
    }
    s->owner.retain(s->owner.owner);
    if (p->server_side)
        PSRPC__STAT_ADD(p->bus, streams_open, 1);
    return s;
}

void psrpc__stream_set_client_callbacks(psrpc_stream *s, psrpc_done_cb on_open,
                                        psrpc_stream_message_cb on_message,
                                        psrpc_stream_close_cb on_close, void *user_data,
                                        psrpc_release_cb release) {
    s->on_open = on_open;
    s->on_message = on_message;
    s->on_close = on_close;
    s->user_data = user_data;
    s->release = release;
    s->cbs_set = true;
}

int psrpc__stream_state(const psrpc_stream *s) { return s->state; }

const char *psrpc__stream_id(const psrpc_stream *s) { return s->stream_id; }

/* ---------------------------------------------------------------- publishing */

static int publish_stream(psrpc_stream *s, Internal__Stream *is) {
    return psrpc__publish_control(s->bus, &s->peer, &is->base);
}

static void send_ack(psrpc_stream *s, const char *request_id, int64_t sent_at, int64_t expiry) {
    Internal__StreamAck ack = INTERNAL__STREAM_ACK__INIT;
    Internal__Stream is = INTERNAL__STREAM__INIT;
    is.stream_id = s->stream_id;
    is.request_id = (char *)request_id;
    is.sent_at = sent_at;
    is.expiry = expiry;
    is.body_case = INTERNAL__STREAM__BODY_ACK;
    is.ack = &ack;
    publish_stream(s, &is);
}

/* ---------------------------------------------------------------- sends */

static void send_timer_closed(uv_handle_t *h) {
    send_op *op = h->data;
    psrpc_stream *s = op->stream;
    psrpc_msg_release(op->payload);
    free(op);
    psrpc__stream_release(s);
}

/* Completes a send once and disposes of it. */
static void send_finish(send_op *op, const psrpc__err *err) {
    if (op->done)
        return;
    op->done = true;
    psrpc_stream *s = op->stream;
    if (op->request_id[0] && psrpc__map_get(&s->acks, op->request_id) == op)
        psrpc__map_del(&s->acks, op->request_id);
    if (op->cb) {
        psrpc_error view;
        if (err)
            psrpc__err_view(err, &view);
        op->cb(err ? &view : NULL, op->user_data);
    }
    if (op->timer_on) {
        op->timer_on = false;
        uv_timer_stop(&op->timer);
        uv_close((uv_handle_t *)&op->timer, send_timer_closed);
    } else {
        psrpc_msg_release(op->payload);
        free(op);
        psrpc__stream_release(s);
    }
}

static void send_fail(send_op *op, int status, const char *message) {
    psrpc__err *e = psrpc__err_new(status, "%s", message);
    if (e) {
        send_finish(op, e);
        psrpc__err_free(e);
    } else {
        psrpc__err fallback = {status, (char *)psrpc_status_code(status), (char *)message, NULL, 0};
        send_finish(op, &fallback);
    }
}

static void send_timeout(uv_timer_t *t) {
    send_op *op = t->data;
    send_fail(op, PSRPC_DEADLINE_EXCEEDED, "request timed out");
}

static void send_now(send_op *op) {
    psrpc_stream *s = op->stream;
    psrpc__new_id(op->request_id, "REQ_");
    int64_t timeout = op->timeout_ms > 0 ? op->timeout_ms : s->timeout_ms;
    int64_t now = psrpc__now_ns();
    if (psrpc__map_put(&s->acks, op->request_id, op) != PSRPC_OK) {
        op->request_id[0] = 0;
        send_fail(op, PSRPC_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    uv_timer_init(psrpc__loop_uv(s->bus->loop), &op->timer);
    op->timer.data = op;
    op->timer_on = true;
    uv_timer_start(&op->timer, send_timeout, (uint64_t)timeout, 0);

    Internal__StreamMessage body = INTERNAL__STREAM_MESSAGE__INIT;
    body.raw_message.data = op->payload->data;
    body.raw_message.len = op->payload->len;
    Internal__Stream is = INTERNAL__STREAM__INIT;
    is.stream_id = s->stream_id;
    is.request_id = op->request_id;
    is.sent_at = now;
    is.expiry = psrpc__sat_add(now, psrpc__ms_to_ns(timeout));
    is.body_case = INTERNAL__STREAM__BODY_MESSAGE;
    is.message = &body;
    int rc = publish_stream(s, &is);
    if (rc != PSRPC_OK)
        send_fail(op,
                  rc == PSRPC_RESOURCE_EXHAUSTED || rc == PSRPC_UNAVAILABLE ? rc : PSRPC_INTERNAL,
                  psrpc_last_error());
}

static void send_task(void *arg) {
    send_op *op = arg;
    psrpc_stream *s = op->stream;
    if (s->state == PSRPC__STREAM_CLOSED) {
        send_finish(op, s->cause);
    } else if (s->state == PSRPC__STREAM_OPENING) {
        if (s->queued_tail)
            s->queued_tail->next = op;
        else
            s->queued = op;
        s->queued_tail = op;
    } else {
        send_now(op);
    }
}

/* ---------------------------------------------------------------- receive */

/* Hands msg to on_message and acknowledges it if accepted (unless the
 * callback deferred the ack with psrpc_stream_defer). */
static void deliver(psrpc_stream *s, psrpc_msg *msg, const char *request_id, int64_t sent_at,
                    int64_t expiry) {
    delivery d = {s, request_id, sent_at, expiry, 0};
    delivery *outer = tl_delivery;
    tl_delivery = &d;
    int rc = s->on_message ? s->on_message(s, msg, s->user_data) : 0;
    tl_delivery = outer;
    if (d.token)
        return; /* psrpc_stream_ack decides */
    if (rc != 0)
        PSRPC__DROP(s->bus, dropped_slow_consumer, PSRPC__DROP_SLOW_CONSUMER);
    else
        send_ack(s, request_id, sent_at, expiry);
}

static void flush_held(psrpc_stream *s) {
    size_t n = s->held_count, i = 0;
    for (; i < n && s->state == PSRPC__STREAM_OPEN; i++) {
        held_msg *h = &s->held[i];
        deliver(s, h->msg, h->request_id, h->sent_at, h->expiry);
        psrpc_msg_release(h->msg);
        h->msg = NULL;
    }
    for (; i < n; i++) {
        psrpc_msg_release(s->held[i].msg);
        s->held[i].msg = NULL;
    }
    s->held_count = 0;
}

void psrpc__stream_handle(psrpc_stream *s, const Internal__Stream *is) {
    if (s->state == PSRPC__STREAM_CLOSED)
        return;
    switch (is->body_case) {
    case INTERNAL__STREAM__BODY_ACK: {
        send_op *op = psrpc__map_get(&s->acks, is->request_id);
        if (op)
            send_finish(op, NULL);
        else
            PSRPC__DROP(s->bus, dropped_unknown, PSRPC__DROP_UNKNOWN);
        break;
    }
    case INTERNAL__STREAM__BODY_MESSAGE: {
        if (s->state != PSRPC__STREAM_OPEN)
            break; /* a message before the open completed: nothing to hand it to yet */
        psrpc_msg *msg = NULL;
        const ProtobufCBinaryData *raw = &is->message->raw_message;
        if (psrpc_msg_new(&msg, raw->data, raw->len) != PSRPC_OK)
            break;
        bool callbacks;
        pthread_mutex_lock(&s->mu);
        callbacks = s->cbs_set;
        pthread_mutex_unlock(&s->mu);
        if (callbacks && s->held_count == 0) {
            deliver(s, msg, is->request_id, is->sent_at, is->expiry);
            psrpc_msg_release(msg);
        } else if (s->held_count < HOLD_CAPACITY) {
            held_msg *h = &s->held[s->held_count++];
            h->msg = msg;
            snprintf(h->request_id, sizeof h->request_id, "%s", is->request_id);
            h->sent_at = is->sent_at;
            h->expiry = is->expiry;
            if (callbacks)
                flush_held(s);
        } else {
            PSRPC__DROP(s->bus, dropped_slow_consumer, PSRPC__DROP_SLOW_CONSUMER);
            psrpc_msg_release(msg);
        }
        break;
    }
    case INTERNAL__STREAM__BODY_CLOSE: {
        const char *code = is->close->code && *is->close->code ? is->close->code : "unknown";
        psrpc__err *e = psrpc__err_from_code(code, is->close->error);
        if (e) {
            psrpc__stream_end(s, e, false);
            psrpc__err_free(e);
        } else {
            psrpc__err fallback = {PSRPC_UNKNOWN, "unknown", "stream closed by peer", NULL, 0};
            psrpc__stream_end(s, &fallback, false);
        }
        break;
    }
    default:
        break;
    }
}

/* ---------------------------------------------------------------- open/close */

void psrpc__stream_opened(psrpc_stream *s) {
    if (s->state != PSRPC__STREAM_OPENING)
        return;
    s->state = PSRPC__STREAM_OPEN;
    PSRPC__STAT_ADD(s->bus, streams_open, 1);
    psrpc_done_cb on_open = s->on_open;
    s->on_open = NULL;
    if (on_open)
        on_open(NULL, s->user_data);
    /* A close requested meanwhile (any thread, e.g. one woken by on_open) has
     * its task posted already: that task ends the stream with the caller's
     * cause. Ending it here would close it cleanly instead (the error a
     * binding's close right after the open asked for was lost); just do not
     * send the queued messages. */
    if (atomic_load(&s->close_requested))
        return;
    while (s->queued && s->state == PSRPC__STREAM_OPEN) {
        send_op *op = s->queued;
        s->queued = op->next;
        if (!s->queued)
            s->queued_tail = NULL;
        op->next = NULL;
        send_now(op);
    }
}

static void publish_close(psrpc_stream *s, const psrpc__err *c) {
    Internal__StreamClose body = INTERNAL__STREAM_CLOSE__INIT;
    body.error = c && c->message ? c->message : "stream closed";
    body.code = c && c->code ? c->code : "canceled";
    Internal__Stream is = INTERNAL__STREAM__INIT;
    char rid[4 + PSRPC__ID_RANDOM_LEN + 1];
    psrpc__new_id(rid, "REQ_");
    int64_t now = psrpc__now_ns();
    is.stream_id = s->stream_id;
    is.request_id = rid;
    is.sent_at = now;
    is.expiry = psrpc__sat_add(now, psrpc__ms_to_ns(s->timeout_ms));
    is.body_case = INTERNAL__STREAM__BODY_CLOSE;
    is.close = &body;
    publish_stream(s, &is);
}

void psrpc__stream_close_late_open(psrpc_stream *s) {
    if (s->state == PSRPC__STREAM_CLOSED)
        publish_close(s, s->cause);
}

void psrpc__stream_end(psrpc_stream *s, const psrpc__err *cause, bool send_close) {
    if (s->ended)
        return;
    s->ended = true;
    pthread_mutex_lock(&s->mu);
    deferred_clear(s); /* acks after the close: PSRPC_NOT_FOUND */
    pthread_mutex_unlock(&s->mu);
    bool was_open = s->state == PSRPC__STREAM_OPEN;
    s->state = PSRPC__STREAM_CLOSED;
    if (was_open)
        PSRPC__STAT_SUB(s->bus, streams_open, 1);
    psrpc__err *c =
        cause ? psrpc__err_copy(cause) : psrpc__err_new(PSRPC_CANCELED, "stream closed");
    if (!c) {
        /* Out of memory: a cause held in the stream, so callbacks still see one. */
        s->oom_cause =
            (psrpc__err){cause ? cause->status : PSRPC_CANCELED,
                         (char *)psrpc_status_code(cause ? cause->status : PSRPC_CANCELED),
                         "stream closed (out of memory copying the cause)", NULL, 0};
        c = &s->oom_cause;
    }
    s->cause = c;
    if (send_close)
        publish_close(s, c);
    /* Pending sends (in flight and queued) complete with the cause. */
    size_t n = s->acks.count, i = 0;
    send_op **ops = n ? calloc(n, sizeof *ops) : NULL;
    if (ops) {
        psrpc__map_iter it;
        psrpc__map_iter_init(&it, &s->acks);
        for (psrpc__map_entry *e; (e = psrpc__map_iter_next(&it));)
            ops[i++] = e->value;
        for (i = 0; i < n; i++)
            send_finish(ops[i], s->cause);
        free(ops);
    } else {
        /* Out of memory for the list: one at a time (send_finish removes each). */
        psrpc__map_iter it;
        psrpc__map_entry *e;
        while (psrpc__map_iter_init(&it, &s->acks), (e = psrpc__map_iter_next(&it))) {
            send_finish(e->value, s->cause); /* removes it first, then may free it */
        }
    }
    while (s->queued) {
        send_op *op = s->queued;
        s->queued = op->next;
        send_finish(op, s->cause);
    }
    s->queued_tail = NULL;
    for (i = 0; i < s->held_count; i++)
        psrpc_msg_release(s->held[i].msg);
    s->held_count = 0;

    psrpc_error view;
    if (s->cause)
        psrpc__err_view(s->cause, &view);
    psrpc_done_cb on_open = s->on_open;
    s->on_open = NULL;
    if (on_open)
        on_open(s->cause ? &view : NULL, s->user_data);
    pthread_mutex_lock(&s->mu);
    bool cbs = s->cbs_set;
    psrpc_stream_close_cb on_close = s->on_close;
    psrpc_release_cb release = s->release;
    void *ud = s->user_data;
    s->on_close = NULL;
    s->on_message = NULL;
    s->release = NULL;
    if (!cbs)
        s->close_owed = true; /* delivered by psrpc_stream_set_callbacks */
    pthread_mutex_unlock(&s->mu);
    if (cbs && on_close)
        on_close(s, s->cause ? &view : NULL, ud);
    if (cbs && release)
        release(ud);
    s->owner.detach(s->owner.owner, s);
    s->owner.release(s->owner.owner);
    psrpc__stream_release(s); /* the owner table's reference */
}

const psrpc__err *psrpc__stream_cause(const psrpc_stream *s) { return s->cause; }

void psrpc__stream_set_expiry(psrpc_stream *s, int64_t expiry_ns) { s->expiry_ns = expiry_ns; }

/* ---------------------------------------------------------------- public API */

#define CHECK_STREAM(s)                                                               \
    do {                                                                              \
        PSRPC__CHECK_ARG(s, "stream is NULL");                                        \
        PSRPC__CHECK_ARG((s)->magic == STREAM_MAGIC, "handle is not a psrpc_stream"); \
        PSRPC__CHECK_NOT_FORKED((s)->bus);                                            \
    } while (0)

psrpc_status psrpc_stream_send(psrpc_stream *stream, const void *data, size_t len,
                               int64_t timeout_ms, psrpc_done_cb on_done, void *user_data) {
    CHECK_STREAM(stream);
    PSRPC__CHECK_ARG(data || len == 0, "data is NULL with a non-zero length");
    PSRPC__CHECK_ARG(timeout_ms >= 0, "timeout_ms is negative");
    if ((int64_t)len > stream->bus->opts.max_message_size)
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED,
                            "message of %zu bytes exceeds the maximum of %lld bytes", len,
                            (long long)stream->bus->opts.max_message_size);
    send_op *op = calloc(1, sizeof *op);
    if (!op || psrpc_msg_new(&op->payload, data, len) != PSRPC_OK) {
        free(op);
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
    }
    op->stream = stream;
    op->timeout_ms = psrpc__clamp_timeout_ms(timeout_ms);
    op->cb = on_done;
    op->user_data = user_data;
    psrpc__stream_retain(stream);
    int rc = psrpc__bus_post(stream->bus, send_task, op);
    if (rc != PSRPC_OK) {
        psrpc_msg_release(op->payload);
        free(op);
        psrpc__stream_release(stream);
    }
    return rc;
}

typedef struct close_arg {
    psrpc_stream *stream;
    psrpc__err *cause; /* NULL = clean */
} close_arg;

/* Ends the stream with cause (NULL: clean), loop thread. */
static void close_now(psrpc_stream *s, const psrpc__err *cause) {
    if (s->state == PSRPC__STREAM_OPENING) {
        /* The open is still in progress: end it now; the owner stops the open. */
        psrpc__err *made = cause ? NULL : psrpc__err_new(PSRPC_CANCELED, "stream closed");
        psrpc__err fallback = {PSRPC_CANCELED, "canceled", "stream closed", NULL, 0};
        if (s->owner.abort_open)
            s->owner.abort_open(s->owner.owner, s);
        psrpc__stream_end(s, cause ? cause : made ? made : &fallback, true);
        psrpc__err_free(made);
    } else if (s->state == PSRPC__STREAM_OPEN) {
        psrpc__stream_end(s, cause, true);
    }
}

static void close_task(void *arg) {
    close_arg *a = arg;
    psrpc_stream *s = a->stream;
    close_now(s, a->cause);
    psrpc__err_free(a->cause);
    psrpc__stream_release(s);
    free(a);
}

/* psrpc_stream_free's clean close, on the stream's own task node. */
static void free_close_task(void *arg) {
    psrpc_stream *s = arg;
    close_now(s, NULL);
    psrpc__stream_release(s);
}

psrpc_status psrpc_stream_close(psrpc_stream *stream, int status, const char *message) {
    CHECK_STREAM(stream);
    PSRPC__CHECK_ARG(status <= 0, "status %d is not an error", status);
    if (message)
        PSRPC__CHECK_ARG(psrpc__utf8_valid(message, strlen(message)), "message is not valid UTF-8");
    close_arg *a = calloc(1, sizeof *a);
    if (!a)
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
    a->stream = stream;
    if (status < 0) {
        a->cause =
            psrpc__err_new(status, "%s", message && *message ? message : psrpc_status_str(status));
        if (!a->cause) {
            free(a);
            return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
        }
    }
    atomic_store(&stream->close_requested, true);
    psrpc__stream_retain(stream);
    int rc = psrpc__bus_post(stream->bus, close_task, a);
    if (rc != PSRPC_OK) {
        psrpc__err_free(a->cause);
        free(a);
        psrpc__stream_release(stream);
        if (rc != PSRPC_CANCELED)
            return rc;   /* out of memory: not closed (psrpc_stream_free still closes it) */
        return PSRPC_OK; /* the bus is closed: the stream already ended */
    }
    return PSRPC_OK;
}

psrpc_status psrpc_stream_close_code(psrpc_stream *stream, const char *code, const char *message) {
    CHECK_STREAM(stream);
    if (!code || !*code)
        return psrpc_stream_close(stream, 0, NULL);
    PSRPC__CHECK_ARG(psrpc__utf8_valid(code, strlen(code)), "code is not valid UTF-8");
    if (!message)
        message = "";
    PSRPC__CHECK_ARG(psrpc__utf8_valid(message, strlen(message)), "message is not valid UTF-8");
    close_arg *a = calloc(1, sizeof *a);
    if (!a || !(a->cause = psrpc__err_from_code(code, message))) {
        free(a);
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
    }
    a->stream = stream;
    atomic_store(&stream->close_requested, true);
    psrpc__stream_retain(stream);
    if (psrpc__bus_post(stream->bus, close_task, a) != PSRPC_OK) {
        psrpc__err_free(a->cause);
        free(a);
        psrpc__stream_release(stream); /* the bus is closed: the stream already ended */
    }
    return PSRPC_OK;
}

static void flush_held_task(void *arg) {
    psrpc_stream *s = arg;
    if (s->state == PSRPC__STREAM_OPEN)
        flush_held(s);
    psrpc__stream_release(s);
}

/* Runs the close and the release the stream owes to callbacks set after it
 * ended (once: they are taken under mu). The cause was set before close_owed
 * and never changes afterwards. */
static void deliver_owed_close(psrpc_stream *s) {
    pthread_mutex_lock(&s->mu);
    psrpc_stream_close_cb on_close = s->on_close;
    psrpc_release_cb release = s->release;
    void *ud = s->user_data;
    s->on_close = NULL;
    s->on_message = NULL;
    s->release = NULL;
    pthread_mutex_unlock(&s->mu);
    psrpc_error view;
    if (s->cause)
        psrpc__err_view(s->cause, &view);
    if (on_close)
        on_close(s, s->cause ? &view : NULL, ud);
    if (release)
        release(ud);
}

static void owed_close_task(void *arg) {
    psrpc_stream *s = arg;
    deliver_owed_close(s);
    psrpc__stream_release(s);
}

psrpc_status psrpc_stream_set_callbacks(psrpc_stream *stream, psrpc_stream_message_cb on_message,
                                        psrpc_stream_close_cb on_close, void *user_data,
                                        psrpc_release_cb release) {
    CHECK_STREAM(stream);
    PSRPC__CHECK_ARG(stream->server_side,
                     "client streams take their callbacks in psrpc_client_open_stream");
    PSRPC__CHECK_ARG(on_message, "on_message is NULL");
    PSRPC__CHECK_ARG(on_close, "on_close is NULL");
    pthread_mutex_lock(&stream->mu);
    if (stream->cbs_set) {
        pthread_mutex_unlock(&stream->mu);
        return psrpc__error(PSRPC_ALREADY_EXISTS, "stream callbacks are already set");
    }
    stream->cbs_set = true;
    stream->on_message = on_message;
    stream->on_close = on_close;
    stream->user_data = user_data;
    stream->release = release;
    bool owed = stream->close_owed;
    pthread_mutex_unlock(&stream->mu);
    psrpc__stream_retain(stream);
    if (owed) {
        /* The peer (or the server) ended the stream before the callbacks
         * were set: the close still runs, on the loop thread as always, or
         * here when the bus is already gone. */
        if (psrpc__bus_post(stream->bus, owed_close_task, stream) != PSRPC_OK) {
            deliver_owed_close(stream);
            psrpc__stream_release(stream);
        }
        return PSRPC_OK;
    }
    if (psrpc__bus_post(stream->bus, flush_held_task, stream) != PSRPC_OK)
        psrpc__stream_release(stream);
    return PSRPC_OK;
}

psrpc_status psrpc_stream_defer(psrpc_stream *stream, uint64_t *token_out) {
    PSRPC__CHECK_ARG(token_out, "token_out is NULL");
    *token_out = 0;
    CHECK_STREAM(stream);
    delivery *d = tl_delivery;
    if (!d || d->stream != stream)
        return psrpc__error(PSRPC_FAILED_PRECONDITION,
                            "psrpc_stream_defer is only valid inside this stream's on_message "
                            "callback, for the message it delivers");
    if (d->token) {
        *token_out = d->token; /* deferred already: the same token */
        return PSRPC_OK;
    }
    deferred_ack *a = calloc(1, sizeof *a);
    if (!a)
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
    snprintf(a->request_id, sizeof a->request_id, "%s", d->request_id);
    a->sent_at = d->sent_at;
    a->expiry = d->expiry;
    char key[24];
    pthread_mutex_lock(&stream->mu);
    uint64_t token = ++stream->next_token;
    snprintf(key, sizeof key, "%llu", (unsigned long long)token);
    int rc = psrpc__map_put(&stream->deferred, key, a);
    pthread_mutex_unlock(&stream->mu);
    if (rc != PSRPC_OK) {
        free(a);
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
    }
    d->token = token;
    *token_out = token;
    return PSRPC_OK;
}

typedef struct ack_arg {
    psrpc_stream *stream;
    deferred_ack ack;
} ack_arg;

static void ack_task(void *arg) {
    ack_arg *a = arg;
    psrpc_stream *s = a->stream;
    if (s->state == PSRPC__STREAM_OPEN) {
        if (psrpc__now_ns() < a->ack.expiry)
            send_ack(s, a->ack.request_id, a->ack.sent_at, a->ack.expiry);
        else
            PSRPC__DROP(s->bus, dropped_expired,
                        PSRPC__DROP_EXPIRED); /* the peer gave up already */
    }
    psrpc__stream_release(s);
    free(a);
}

psrpc_status psrpc_stream_ack(psrpc_stream *stream, uint64_t token, int accept) {
    CHECK_STREAM(stream);
    char key[24];
    snprintf(key, sizeof key, "%llu", (unsigned long long)token);
    pthread_mutex_lock(&stream->mu);
    deferred_ack *d = token ? psrpc__map_del(&stream->deferred, key) : NULL;
    pthread_mutex_unlock(&stream->mu);
    if (!d)
        return psrpc__error(PSRPC_NOT_FOUND,
                            "no deferred message with token %llu on this stream (acknowledged "
                            "already, or the stream closed)",
                            (unsigned long long)token);
    if (!accept) {
        PSRPC__DROP(stream->bus, dropped_slow_consumer, PSRPC__DROP_SLOW_CONSUMER);
        free(d);
        return PSRPC_OK;
    }
    ack_arg *a = malloc(sizeof *a);
    if (!a) {
        free(d);
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED,
                            "out of memory; the message is not acknowledged");
    }
    a->stream = stream;
    a->ack = *d;
    free(d);
    psrpc__stream_retain(stream);
    if (psrpc__bus_post(stream->bus, ack_task, a) != PSRPC_OK) {
        psrpc__stream_release(stream);
        free(a);
        return psrpc__error(PSRPC_NOT_FOUND, "the stream is closed (its bus is closed)");
    }
    return PSRPC_OK;
}

void psrpc_stream_free(psrpc_stream *stream) {
    if (!stream || stream->magic != STREAM_MAGIC)
        return;
    if (atomic_exchange(&stream->freed, true))
        return;
    /* Always, even after psrpc_stream_close (which may have failed for lack
     * of memory): closing twice is harmless, and this post cannot fail for it. */
    atomic_store(&stream->close_requested, true);
    psrpc__stream_retain(stream);
    if (psrpc__loop_post_node(stream->bus->loop, &stream->free_node, free_close_task, stream) !=
        PSRPC_OK)
        psrpc__stream_release(stream); /* the bus is closed: the stream ended with it */
    psrpc__stream_release(stream);
}

const char *psrpc_stream_id(const psrpc_stream *s) {
    return s && s->magic == STREAM_MAGIC ? s->stream_id : NULL;
}
const char *psrpc_stream_node_id(const psrpc_stream *s) {
    return s && s->magic == STREAM_MAGIC ? s->node_id : NULL;
}
const char *psrpc_stream_method(const psrpc_stream *s) {
    return s && s->magic == STREAM_MAGIC ? s->method : NULL;
}
size_t psrpc_stream_metadata_count(const psrpc_stream *s) {
    return s && s->magic == STREAM_MAGIC ? s->meta_count : 0;
}
psrpc_status psrpc_stream_metadata_at(const psrpc_stream *s, size_t index, const char **key,
                                      const char **value) {
    CHECK_STREAM(s);
    PSRPC__CHECK_ARG(key && value, "key or value is NULL");
    if (index >= s->meta_count)
        return psrpc__error(PSRPC_OUT_OF_RANGE, "metadata index %zu past %zu entries", index,
                            s->meta_count);
    *key = s->meta_keys[index];
    *value = s->meta_values[index];
    return PSRPC_OK;
}
const char *psrpc_stream_metadata_get(const psrpc_stream *s, const char *key) {
    if (!s || s->magic != STREAM_MAGIC || !key)
        return NULL;
    /* The last of duplicate keys wins, as in Go (a map filled in wire order). */
    for (size_t i = s->meta_count; i-- > 0;)
        if (strcmp(s->meta_keys[i], key) == 0)
            return s->meta_values[i];
    return NULL;
}

int64_t psrpc_stream_expiry_ns(const psrpc_stream *stream) {
    return stream && stream->magic == STREAM_MAGIC ? stream->expiry_ns : 0;
}
