/* psrpc_client: create, reply subscriptions, lifecycle, close, and
 * subscriptions (wire-protocol.md 10). The calls are in call.c and
 * client_{unary,multi,stream}.c. All state below "Loop thread" in
 * client_internal.h is touched on the loop only. */
#include "client_internal.h"

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

void psrpc__client_retain(psrpc_client *c) { atomic_fetch_add(&c->refs, 1); }

void psrpc__client_release(psrpc_client *c) {
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
    psrpc__hooks_free(atomic_load(&c->hooks));
    free(atomic_load(&c->retry_unary));
    free(atomic_load(&c->retry_stream));
    for (psrpc__retry *r = c->retired, *next; r; r = next) {
        next = r->older;
        free(r);
    }
    pthread_mutex_destroy(&c->retry_mu);
    free(c->service);
    free(c->id);
    psrpc_bus *bus = c->bus;
    c->magic = 0;
    free(c);
    psrpc__bus_release(bus);
}

/* ---------------------------------------------------------------- lifecycle */

/* Records the first refusal of a reply or stream subscription (loop thread). */
void psrpc__client_note_refusal(int *status_out, char **message_out, int status,
                                const char *message, const char *fallback) {
    if (*status_out != PSRPC_OK)
        return;
    *status_out = status < 0 ? status : PSRPC_UNAVAILABLE;
    /* On allocation failure the fallback text is used at each call instead. */
    *message_out = psrpc__strdup(message && *message ? message : fallback);
}

void psrpc__client_flush_waiting(psrpc_client *c) {
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
                psrpc__call_wait(rev); /* still waiting for the client stream channel */
            else
                psrpc__call_send(rev);
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
        psrpc__client_note_refusal(&c->refused_status, &c->refused_message, status, message,
                                   "cannot subscribe to replies");
        while (c->waiting)
            psrpc__call_fail(c->waiting, status, message ? message : "cannot subscribe to replies");
        return;
    }
    if (--c->ready_pending == 0) {
        c->ready = true;
        psrpc__client_flush_waiting(c);
    }
}

void psrpc__client_start(psrpc_client *c) {
    if (c->started || c->state != PSRPC__OPEN)
        return;
    if (atomic_load(&c->bus->state) != PSRPC__OPEN) {
        c->state = PSRPC__CLOSED;
        return;
    }
    c->started = true;
    psrpc__client_retain(c); /* the loop's reference, dropped when closed */
    uv_timer_init(psrpc__loop_uv(c->bus->loop), &c->dl_timer);
    c->dl_timer.data = c;
    c->dl_timer_on = true;
    psrpc__client_retain(c); /* the timer's, until its close callback */
    psrpc__bus_add_child(c->bus, &c->child);
    c->ready_pending = 2;
    c->res_sub =
        psrpc__bus_subscribe(c->bus, &c->res_ch, false, psrpc__call_on_response, reply_ready, c);
    c->claim_sub = psrpc__bus_subscribe(c->bus, &c->claim_ch, false, psrpc__call_on_claim_request,
                                        reply_ready, c);
    if (!c->res_sub || !c->claim_sub) {
        c->ready_pending = -1000; /* never ready: calls fail with the reason */
        psrpc__client_note_refusal(&c->refused_status, &c->refused_message,
                                   psrpc_last_error_status(), psrpc_last_error(),
                                   "cannot subscribe to replies");
    }
}

static void sub_finish(sub_t *s);

static void dl_timer_closed(uv_handle_t *h) { psrpc__client_release(h->data); }

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
                psrpc__call_fail(calls[i], PSRPC_CANCELED, "client is closed");
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
                psrpc__call_fail(k, PSRPC_CANCELED, "client is closed"); /* removes, may free */
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
        psrpc__client_release(c);
    }
}

static void child_connected(psrpc__child *child) {
    psrpc_client *c = PSRPC__CONTAINER_OF(child, psrpc_client, child);
    if (c->state == PSRPC__OPEN && c->ready)
        psrpc__client_flush_waiting(c);
}

/* The bus became disconnected (also: its first connection attempt failed):
 * the calls waiting for the client to get ready fail now with the bus's
 * reason, except those that asked to wait for ready. */
static void child_disconnected(psrpc__child *child) {
    psrpc_client *c = PSRPC__CONTAINER_OF(child, psrpc_client, child);
    if (c->state != PSRPC__OPEN)
        return;
    psrpc__client_retain(c);
    call *fail = NULL;
    for (call **p = &c->waiting; *p;) {
        call *k = *p;
        if (k->wait_for_ready || k->state != CALL_WAIT_READY) {
            p = &k->next_waiting;
            continue;
        }
        *p = k->next_waiting;
        k->in_waiting = false;
        k->next_waiting = fail;
        fail = k;
    }
    /* fail is in submission order (the waiting list was built by prepending). */
    while (fail) {
        call *k = fail;
        fail = k->next_waiting;
        k->next_waiting = NULL;
        if (psrpc__bus_check_connected(c->bus) != PSRPC_OK)
            psrpc__call_fail(k, psrpc_last_error_status(), psrpc_last_error());
        else
            psrpc__call_wait(k); /* reconnected meanwhile */
    }
    psrpc__client_release(c);
}

static void child_close(psrpc__child *child, void (*done)(psrpc__child *)) {
    psrpc_client *c = PSRPC__CONTAINER_OF(child, psrpc_client, child);
    c->child_done = done;
    psrpc__client_retain(c);
    client_do_close(c);
    psrpc__client_release(c);
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
    psrpc__client_release(c);
    free(r);
}

/* psrpc_client_free's close: posted with the client's own task node, so it
 * cannot fail for lack of memory. */
static void free_close_task(void *arg) {
    psrpc_client *c = arg;
    if (c->state == PSRPC__OPEN)
        client_do_close(c);
    psrpc__client_release(c);
}

static void start_task(void *arg) {
    psrpc_client *c = arg;
    psrpc__client_start(c);
    psrpc__client_release(c);
}

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
    pthread_mutex_init(&c->retry_mu, NULL);
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
    c->child.disconnected = child_disconnected;
    c->bus = bus;
    psrpc__bus_retain(bus);
    if (!c->service || !c->id ||
        psrpc__channel_client_response(&c->res_ch, service, c->id) != PSRPC_OK ||
        psrpc__channel_client_claim(&c->claim_ch, service, c->id) != PSRPC_OK ||
        psrpc__channel_client_stream(&c->str_ch, service, c->id) != PSRPC_OK) {
        psrpc__client_release(c);
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
    }
    /* Subscribe the reply channels now, so the first call finds them ready. */
    psrpc__client_retain(c);
    if (psrpc__bus_post(bus, start_task, c) != PSRPC_OK)
        psrpc__client_release(c);
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

/* ---------------------------------------------------------------- hooks, retries */

psrpc_status psrpc_client_add_hooks(psrpc_client *client, const psrpc_client_hooks *hooks) {
    CHECK_CLIENT(client);
    PSRPC__CHECK_ARG(hooks, "hooks is NULL");
    psrpc_client_hooks h = PSRPC_CLIENT_HOOKS_INIT;
    int rc = psrpc__options_load(&h, sizeof h, hooks, "psrpc_client_hooks");
    if (rc != PSRPC_OK)
        return rc;
    PSRPC__CHECK_ARG(h.before_send || h.on_outcome, "hooks has neither before_send nor on_outcome");
    psrpc__hook e = {h.before_send, h.on_outcome, h.user_data, h.release};
    return psrpc__hooks_add(&client->hooks, &e);
}

static void retry_replace(psrpc_client *c, _Atomic(psrpc__retry *) *slot, psrpc__retry *nw) {
    psrpc__retry *old = atomic_exchange(slot, nw);
    if (!old)
        return;
    /* Calls in flight may still read it: freed with the client. */
    pthread_mutex_lock(&c->retry_mu);
    old->older = c->retired;
    c->retired = old;
    pthread_mutex_unlock(&c->retry_mu);
}

psrpc_status psrpc_client_set_retries(psrpc_client *client, uint32_t kinds,
                                      const psrpc_retry_options *opts) {
    CHECK_CLIENT(client);
    PSRPC__CHECK_ARG(kinds && !(kinds & ~(PSRPC_RETRY_UNARY | PSRPC_RETRY_STREAM_OPEN)),
                     "kinds 0x%x is not a set of PSRPC_RETRY_* bits", (unsigned)kinds);
    psrpc_retry_options o = PSRPC_RETRY_OPTIONS_INIT;
    if (opts) {
        int rc = psrpc__options_load(&o, sizeof o, opts, "psrpc_retry_options");
        if (rc != PSRPC_OK)
            return rc;
        PSRPC__CHECK_ARG(o.timeout_ms >= 0 && o.backoff_ms >= 0,
                         "timeout_ms or backoff_ms is negative");
        o.timeout_ms = psrpc__clamp_timeout_ms(o.timeout_ms);
        o.backoff_ms = psrpc__clamp_timeout_ms(o.backoff_ms);
    }
    psrpc__retry *nw[2] = {NULL, NULL};
    for (int i = 0; i < 2; i++) {
        if (!(kinds & (1u << i)))
            continue;
        if (!(nw[i] = calloc(1, sizeof *nw[i]))) {
            free(nw[0]);
            return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
        }
        nw[i]->o = o;
        nw[i]->enabled = opts != NULL;
    }
    if (nw[0])
        retry_replace(client, &client->retry_unary, nw[0]);
    if (nw[1])
        retry_replace(client, &client->retry_stream, nw[1]);
    return PSRPC_OK;
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
    psrpc__client_release(c);
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
        PSRPC__DROP(bus, dropped_malformed, PSRPC__DROP_MALFORMED);
        return;
    }
    if (s->method.output_type && strcmp(env.type_name, s->method.output_type) != 0) {
        PSRPC__DROP(bus, dropped_malformed, PSRPC__DROP_MALFORMED);
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
    psrpc__client_start(c);
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
    psrpc__client_retain(client);
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
    psrpc__client_retain(client);
    int rc = psrpc__bus_post(client->bus, close_task, r);
    if (rc != PSRPC_OK) {
        psrpc__client_release(client);
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
    psrpc__client_retain(client);
    if (psrpc__loop_post_node(client->bus->loop, &client->free_node, free_close_task, client) !=
        PSRPC_OK)
        psrpc__client_release(client); /* the bus is closed: the client closed with it */
    psrpc__client_release(client);
}
