/* Client streams: the open call and the client stream channel
 * (wire-protocol.md 11). The stream itself is stream.c. */
#include "client_internal.h"

static void on_stream_message(void *ctx, const uint8_t *data, size_t len) {
    psrpc_client *c = ctx;
    if (c->state != PSRPC__OPEN)
        return;
    Internal__Stream *is =
        (Internal__Stream *)psrpc__decode_control(c->bus, data, len, &internal__stream__descriptor);
    if (!is)
        return;
    if (psrpc__now_ns() >= is->expiry) {
        PSRPC__DROP(c->bus, dropped_expired, PSRPC__DROP_EXPIRED);
    } else if (is->body_case == INTERNAL__STREAM__BODY_ACK &&
               psrpc__map_get(&c->by_request, is->request_id)) {
        /* The ack of an open: the open call succeeds. */
        call *k = psrpc__map_get(&c->by_request, is->request_id);
        if (k->stream && k->state == CALL_WAIT_RESPONSE && is->stream_id &&
            strcmp(is->stream_id, psrpc__stream_id(k->stream)) == 0)
            psrpc__call_complete(k, NULL, NULL, NULL);
        else
            PSRPC__DROP(c->bus, dropped_unknown, PSRPC__DROP_UNKNOWN);
    } else if (is->body_case == INTERNAL__STREAM__BODY_OPEN) {
        PSRPC__DROP(c->bus, dropped_malformed,
                    PSRPC__DROP_MALFORMED); /* opens never go to clients */
    } else {
        psrpc_stream *st = psrpc__map_get(&c->streams, is->stream_id);
        if (st)
            psrpc__stream_handle(st, is);
        else
            PSRPC__DROP(c->bus, dropped_unknown, PSRPC__DROP_UNKNOWN);
    }
    psrpc__wire_free(&is->base);
}

static void str_ready(void *ctx, int status, const char *message) {
    psrpc_client *c = ctx;
    if (c->state != PSRPC__OPEN)
        return;
    if (status != PSRPC_OK) {
        psrpc__client_note_refusal(&c->str_refused_status, &c->str_refused_message, status, message,
                                   "cannot subscribe to streams");
        /* Fail the stream opens that wait for the channel. */
        call *k = c->waiting, *next;
        for (; k; k = next) {
            next = k->next_waiting;
            if (k->stream)
                psrpc__call_fail(k, status, message ? message : "cannot subscribe to streams");
        }
        return;
    }
    c->str_ready = true;
    if (c->ready)
        psrpc__client_flush_waiting(c);
}

/* The open call completed (loop thread): success opens the stream. */
void psrpc__client_stream_open_done(uint64_t id, const psrpc_msg *response,
                                    const psrpc_error *error, const char *server_id,
                                    void *user_data) {
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

static void owner_retain(void *o) { psrpc__client_retain(o); }
static void owner_release(void *o) { psrpc__client_release(o); }
static void owner_detach(void *o, psrpc_stream *st) {
    psrpc_client *c = o;
    if (psrpc__map_get(&c->streams, psrpc__stream_id(st)) == st)
        psrpc__map_del(&c->streams, psrpc__stream_id(st));
}

/* Subscribes the client stream channel once (loop thread). */
void psrpc__client_stream_channel(psrpc_client *c) {
    if (c->str_sub || c->state != PSRPC__OPEN || c->str_refused_status != PSRPC_OK)
        return;
    c->str_sub = psrpc__bus_subscribe(c->bus, &c->str_ch, false, on_stream_message, str_ready, c);
    if (!c->str_sub)
        psrpc__client_note_refusal(&c->str_refused_status, &c->str_refused_message,
                                   psrpc_last_error_status(), psrpc_last_error(),
                                   "cannot subscribe to streams");
}

/* The callbacks of a stream being opened. */
typedef struct stream_args {
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

/* Makes the stream of the open call k (its id, peer channel and a copy of
 * the metadata); k's outcome opens or ends it. NULL if memory ran out. */
static psrpc_stream *stream_attach(call *k, const stream_args *sa) {
    psrpc_client *client = k->client;
    char sid[4 + PSRPC__ID_RANDOM_LEN + 1];
    psrpc__new_id(sid, "STR_");
    psrpc__channel peer;
    char **mk = NULL, **mv = NULL;
    if (psrpc__channel_stream_server(&peer, client->service, k->method.name,
                                     (const char *const *)k->topics, k->topic_count) != PSRPC_OK ||
        psrpc__strv_dup(&mk, (const char *const *)k->meta_keys, k->meta_count) != PSRPC_OK ||
        psrpc__strv_dup(&mv, (const char *const *)k->meta_values, k->meta_count) != PSRPC_OK) {
        psrpc__channel_clear(&peer);
        psrpc__strv_free(mk, k->meta_count);
        return NULL;
    }
    psrpc__stream_params p = {
        client->bus, false, sid,           client->id, k->method.name, &peer, k->msg_timeout_ms,
        mk,          mv,    k->meta_count, {0}};
    stream_owner_init(&p.owner, client);
    psrpc_stream *st = psrpc__stream_new(&p);
    psrpc__channel_clear(&peer);
    if (!st)
        return NULL;
    psrpc__stream_set_client_callbacks(st, sa->on_open, sa->on_message, sa->on_close, sa->user_data,
                                       sa->release);
    psrpc__stream_retain(st); /* the open call's reference */
    k->stream = st;
    k->cb = psrpc__client_stream_open_done;
    k->user_data = st;
    return st;
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
    int rc = psrpc__call_check(client, NULL, 0);
    if (rc != PSRPC_OK)
        return rc;
    psrpc__call_req req = {PSRPC_CALL_KIND_STREAM, method, NULL, 0, opts};
    call *k;
    if ((rc = psrpc__call_new(&k, client, &req)) != PSRPC_OK)
        return rc;
    stream_args sa = {on_open, on_message, on_close, user_data, release};
    psrpc_stream *st = stream_attach(k, &sa);
    if (!st) {
        psrpc__call_free(k);
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
    }
    if ((rc = psrpc__call_start(k, NULL)) != PSRPC_OK) {
        /* Never started: no callback may run; drop the table's and the user's refs. */
        psrpc__stream_set_client_callbacks(st, NULL, NULL, NULL, NULL, NULL);
        psrpc__stream_release(st);
        psrpc__stream_release(st);
        psrpc__client_release(client); /* the owner reference taken by psrpc__stream_new */
        psrpc__call_free(k);
        return rc;
    }
    *out = st;
    return PSRPC_OK;
}
