/* The call engine every kind of call shares: building a call, sending its
 * Request, server selection (wire-protocol.md 8.1, 8.3), responses, multi
 * collection (9), deadlines, cancel, exactly-once completion. The kinds'
 * entry points are in client_unary.c, client_multi.c and client_stream.c. */
#include "client_internal.h"

/* ---------------------------------------------------------------- calls */

void psrpc__call_free(call *k) {
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
    free(k->hook_message);
    if (k->stream)
        psrpc__stream_release(k->stream);
    psrpc_client *c = k->client;
    free(k);
    psrpc__client_release(c);
}

static void select_timer_closed(uv_handle_t *h) { psrpc__call_free(h->data); }

static void call_free_task(void *arg) { psrpc__call_free(arg); }

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
    psrpc__client_retain(c);
    while (c->dl_head && c->dl_head->due_ms <= now) {
        call *k = c->dl_head;
        dl_remove(k);
        deadline_fired(k);
    }
    dl_arm(c);
    psrpc__client_release(c);
}

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
        psrpc__call_free(k); /* the loop is stopping: no callback runs any more */
    }
}

/* ---------------------------------------------------------------- hooks, retries */

static psrpc_call_info call_info(const call *k) {
    psrpc_client *c = k->client;
    psrpc_call_info info = {sizeof info,
                            k->kind,
                            PSRPC_ROLE_CLIENT,
                            0,
                            c->service,
                            k->method.name,
                            (const char *const *)k->topics,
                            k->topic_count,
                            k->id,
                            c->id,
                            NULL,
                            NULL,
                            k->expiry_ns};
    return info;
}

/* The on_outcome hooks, just before the call's own outcome callback. */
static void report_outcome(call *k, const psrpc_error *error, const char *server_id) {
    psrpc_call_info info = call_info(k);
    psrpc_call_outcome out = {sizeof out, k->attempt, psrpc__mono_ns() - k->start_ns,
                              server_id,  error,      k->responses,
                              k->errors};
    psrpc__hooks_run_outcome(k->hooks, &info, &out);
}

/* Sets the timeout of the next attempt: its own (policy) timeout unless the
 * caller gave one, bounded by the caller's deadline. */
static void attempt_timing(call *k, int64_t own_ms) {
    int64_t t =
        own_ms > 0 && !k->caller_timeout ? psrpc__clamp_timeout_ms(own_ms) : k->base_timeout_ms;
    if (k->deadline_ns > 0) {
        int64_t left = psrpc__sat_add(k->deadline_ns, -psrpc__now_ns()) / 1000000;
        k->ends_at_deadline = left < t;
        if (left < t)
            t = left > 0 ? left : 0;
    }
    k->timeout_ms = t;
    k->deadline_ms = psrpc__sat_add(psrpc__mono_ms(), t);
}

static bool deadline_passed(const call *k) {
    return k->deadline_hit || (k->deadline_ns > 0 && psrpc__now_ns() >= k->deadline_ns - 1000000);
}

static bool recoverable(const psrpc_retry_options *o, const psrpc_error *e) {
    if (o->is_recoverable)
        return o->is_recoverable(e, o->user_data) != 0;
    /* v0.8.2 middleware isTimeout */
    return e->status == PSRPC_DEADLINE_EXCEEDED || e->status == PSRPC_UNAVAILABLE;
}

/* Forgets the finished attempt's request, claims and timers. */
static void attempt_reset(call *k) {
    psrpc_client *c = k->client;
    if (k->request_id[0] && psrpc__map_get(&c->by_request, k->request_id) == k)
        psrpc__map_del(&c->by_request, k->request_id);
    k->request_id[0] = 0;
    free(k->best_id);
    k->best_id = NULL;
    k->best = 0;
    for (size_t i = 0; i < k->eligible_count; i++)
        free(k->eligible[i].server_id);
    k->eligible_count = 0;
    k->claim_count = 0;
    psrpc__err_free(k->last_err);
    k->last_err = NULL;
    k->shorted = false;
    k->ended_by_deadline = false;
    select_timer_stop(k);
    dl_remove(k);
}

static void retry_timer_fired(call *k) {
    attempt_timing(k, k->next_timeout_ms);
    dl_remove(k); /* the wait's entry (the caller's deadline) */
    dl_insert(k, uv_now(psrpc__loop_uv(k->client->bus->loop)) + (uint64_t)k->timeout_ms);
    k->state = CALL_NEW;
    psrpc__call_send(k);
}

/* A failed attempt (err): true if it is absorbed (a next attempt is
 * scheduled, or already pending), false to complete the call with err.
 * livekit/psrpc v0.8.2 pkg/middleware/retry.go, see capi/psrpc.h. */
static bool retry_absorb(call *k, const psrpc__err *err) {
    psrpc_client *c = k->client;
    bool stop = k->canceled || c->state != PSRPC__OPEN;
    if (k->state == CALL_RETRY_WAIT) {
        if (!stop && !deadline_passed(k))
            return true; /* a second report of the finished attempt */
    } else {
        if (stop || k->attempt == 0 || k->no_retry)
            return false;
        const psrpc_retry_options *o = &k->retry->o;
        psrpc_error view;
        psrpc__err_view(err, &view);
        int64_t timeout = 0, wait = 0;
        bool again;
        if (o->retry_params) {
            again = o->retry_params(&view, k->attempt, &timeout, &wait, o->user_data) != 0;
            if (timeout < 0 || wait < 0)
                timeout = wait = 0;
        } else {
            again = recoverable(o, &view) && k->attempt != o->max_attempts;
            int64_t grow;
            if (__builtin_mul_overflow(o->backoff_ms, (int64_t)k->attempt, &grow))
                grow = INT64_MAX;
            timeout = psrpc__sat_add(o->timeout_ms, grow);
        }
        if (!again || c->state != PSRPC__OPEN)
            return false;
        k->next_timeout_ms = timeout;
        attempt_reset(k);
        k->state = CALL_RETRY_WAIT;
        wait = psrpc__clamp_timeout_ms(wait);
        if (!deadline_passed(k)) {
            /* The caller's deadline still bounds the wait. */
            if (k->deadline_ns > 0) {
                int64_t left = psrpc__sat_add(k->deadline_ns, -psrpc__now_ns()) / 1000000;
                dl_insert(k,
                          uv_now(psrpc__loop_uv(c->bus->loop)) + (uint64_t)(left > 0 ? left : 0));
            }
            select_timer_start(k, (uint64_t)wait);
            return true;
        }
    }
    if (stop)
        return false;
    /* The caller's deadline passed: as Go's ctx.Done() between attempts. */
    k->retry = NULL;
    psrpc__call_fail(k, PSRPC_CANCELED, "request canceled");
    return true;
}

/* Completes a call exactly once: unary → cb; multi → on_done. */
void psrpc__call_complete(call *k, const psrpc_msg *response, const psrpc__err *err,
                          const char *server_id) {
    if (k->state == CALL_DONE)
        return;
    if (k->retry && err && retry_absorb(k, err))
        return;
    k->state = CALL_DONE;
    unlink_waiting(k);
    PSRPC__STAT_SUB(k->client->bus, requests_in_flight, 1);
    psrpc_error view;
    if (err)
        psrpc__err_view(err, &view);
    if (k->hooks)
        report_outcome(k, err ? &view : NULL, server_id);
    psrpc_call_cb cb = k->multi ? k->on_done : k->cb;
    /* Dispose first so a callback that closes the client finds no stale call. */
    psrpc__map_del(&k->client->by_id, k->id_key);
    if (k->request_id[0])
        psrpc__map_del(&k->client->by_request, k->request_id);
    cb(k->id, response, err ? &view : NULL, server_id, k->user_data);
    call_dispose(k);
}

void psrpc__call_fail(call *k, int status, const char *message) {
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
        if (k->hooks)
            report_outcome(k, &view, NULL);
        (k->multi ? k->on_done : k->cb)(k->id, NULL, &view, NULL, k->user_data);
        call_dispose(k);
        return;
    }
    psrpc__call_complete(k, NULL, e, NULL);
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
        k->no_retry = true;
        psrpc__call_fail(k, publish_failure_status(rc), psrpc_last_error());
        return;
    }
    k->state = CALL_WAIT_RESPONSE;
}

static void selection_result(call *k);

static void select_timeout(uv_timer_t *t) {
    call *k = t->data;
    if (k->state == CALL_SELECTING)
        selection_result(k);
    else if (k->state == CALL_RETRY_WAIT)
        retry_timer_fired(k);
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
            psrpc__call_fail(k, PSRPC_RESOURCE_EXHAUSTED, "out of memory");
            return;
        }
        for (size_t i = 0; i < k->eligible_count; i++)
            claims[i] = (psrpc_claim){k->eligible[i].server_id, k->eligible[i].affinity, 0};
        s->magic = SELECTION_MAGIC;
        atomic_init(&s->refs, 1);
        s->client = k->client;
        psrpc__client_retain(k->client);
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
            psrpc__call_fail(k, PSRPC_DEADLINE_EXCEEDED, "request timed out");
        return;
    }
    if (k->last_err) {
        psrpc__err *e = k->last_err;
        k->last_err = NULL;
        psrpc__call_complete(k, NULL, e, NULL);
        psrpc__err_free(e);
        return;
    }
    if (k->claim_count > 0) {
        char msg[96];
        snprintf(msg, sizeof msg, "no servers available (received %d responses)", k->claim_count);
        psrpc__call_fail(k, PSRPC_UNAVAILABLE, msg);
        return;
    }
    psrpc__call_fail(k, PSRPC_UNAVAILABLE, "no response from servers");
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
    /* The timer runs on loop time, which may lag the wall clock a little:
     * an attempt cut short by the caller's deadline (or a retry wait's entry,
     * which is that deadline) means the deadline passed, whatever the clock. */
    if (k->ends_at_deadline || k->state == CALL_RETRY_WAIT)
        k->deadline_hit = true;
    switch (k->state) {
    case CALL_SELECTING:
        if (k->multi)
            break;
        k->ended_by_deadline = true;
        selection_result(k);
        if (k->state == CALL_SELECT_CB)
            psrpc__call_fail(k, PSRPC_DEADLINE_EXCEEDED, "request timed out");
        return;
    case CALL_WAIT_RESPONSE:
        if (k->multi) {
            psrpc__call_complete(k, NULL, NULL, NULL);
            return;
        }
        break;
    default:
        break;
    }
    psrpc__call_fail(k, PSRPC_DEADLINE_EXCEEDED, "request timed out");
}

void psrpc__call_wait(call *k) {
    psrpc_client *c = k->client;
    k->state = CALL_WAIT_READY;
    k->in_waiting = true;
    k->next_waiting = c->waiting;
    c->waiting = k;
}

/* Publishes the Request (loop thread, client ready). */
void psrpc__call_send(call *k) {
    psrpc_client *c = k->client;
    if (k->wait_for_ready && atomic_load(&c->bus->conn_state) == PSRPC_BUS_DISCONNECTED) {
        psrpc__call_wait(k); /* sent when the bus reconnects, within the deadline */
        return;
    }
    psrpc__new_id(k->request_id, "REQ_");
    k->attempt++;
    if (psrpc__map_put(&c->by_request, k->request_id, k) != PSRPC_OK) {
        k->request_id[0] = 0;
        psrpc__call_fail(k, PSRPC_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    int64_t now = psrpc__now_ns();
    int64_t left_ms = k->deadline_ms - psrpc__mono_ms();
    if (left_ms <= 0) {
        psrpc__call_fail(k, PSRPC_DEADLINE_EXCEEDED, "request timed out");
        return;
    }
    Internal__Request req = INTERNAL__REQUEST__INIT;
    req.request_id = k->request_id;
    req.client_id = c->id;
    req.sent_at = now;
    req.expiry = psrpc__sat_add(now, psrpc__ms_to_ns(left_ms));
    if (k->deadline_ns > 0 && req.expiry > k->deadline_ns)
        req.expiry = k->deadline_ns; /* never outlive the caller's deadline */
    k->expiry_ns = req.expiry;
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
            psrpc__call_fail(k, PSRPC_RESOURCE_EXHAUSTED, "out of memory");
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
                psrpc__call_fail(k, PSRPC_RESOURCE_EXHAUSTED, "out of memory");
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
        k->no_retry = true; /* as Go: a publish error is internal, not retried */
        psrpc__call_fail(k, publish_failure_status(rc), psrpc_last_error());
        return;
    }
    if (!k->retry) {
        /* The payload is on the wire; keep no copy (a retry sends it again). */
        psrpc_msg_release(k->payload);
        k->payload = NULL;
    }
    if (k->require_claim) {
        k->state = CALL_SELECTING;
        if (k->sel.affinity_timeout_ms > 0)
            select_timer_start(k, (uint64_t)k->sel.affinity_timeout_ms);
    } else {
        k->state = CALL_WAIT_RESPONSE;
    }
}

void psrpc__call_on_response(void *ctx, const uint8_t *data, size_t len) {
    psrpc_client *c = ctx;
    if (c->state != PSRPC__OPEN)
        return;
    Internal__Response *r = (Internal__Response *)psrpc__decode_control(
        c->bus, data, len, &internal__response__descriptor);
    if (!r)
        return;
    call *k = psrpc__map_get(&c->by_request, r->request_id);
    if (!k || k->state == CALL_DONE) {
        PSRPC__DROP(c->bus, dropped_unknown, PSRPC__DROP_UNKNOWN);
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
            PSRPC__DROP(c->bus, dropped_unknown, PSRPC__DROP_UNKNOWN);
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
            if (e)
                k->errors++;
            else
                k->responses++;
            k->cb(k->id, e ? NULL : msg, e ? &view : NULL, r->server_id, k->user_data);
        } else {
            psrpc__call_complete(k, e ? NULL : msg, e, r->server_id);
        }
        psrpc_msg_release(msg);
        psrpc__err_free(made);
    }
    psrpc__wire_free(&r->base);
}

void psrpc__call_on_claim_request(void *ctx, const uint8_t *data, size_t len) {
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
        PSRPC__DROP(c->bus, dropped_unknown, PSRPC__DROP_UNKNOWN);
    psrpc__wire_free(&cr->base);
}

/* ---------------------------------------------------------------- calling */

static void call_task(void *arg) {
    call *k = arg;
    psrpc_client *c = k->client;
    psrpc__client_start(c);
    PSRPC__STAT_ADD(c->bus, requests_in_flight, 1);
    if (c->state != PSRPC__OPEN) {
        psrpc__call_fail(k, PSRPC_CANCELED, "client is closed");
        return;
    }
    psrpc__u64_str(k->id_key, k->id);
    if (psrpc__map_put(&c->by_id, k->id_key, k) != PSRPC_OK) {
        psrpc__call_fail(k, PSRPC_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    dl_insert(k, uv_now(psrpc__loop_uv(c->bus->loop)) + (uint64_t)k->timeout_ms);
    if (k->hook_status != PSRPC_OK) {
        /* A before_send hook failed it: nothing is sent, one outcome. */
        psrpc__call_fail(k, k->hook_status,
                         k->hook_message ? k->hook_message : psrpc_status_str(k->hook_status));
        return;
    }
    if (c->refused_status != PSRPC_OK) {
        psrpc__call_fail(k, c->refused_status,
                         c->refused_message ? c->refused_message : "cannot subscribe to replies");
        return;
    }
    if (k->stream) {
        if (psrpc__map_put(&c->streams, psrpc__stream_id(k->stream), k->stream) != PSRPC_OK) {
            psrpc__call_fail(k, PSRPC_RESOURCE_EXHAUSTED, "out of memory");
            return;
        }
        psrpc__client_stream_channel(c);
        if (c->str_refused_status != PSRPC_OK) {
            psrpc__call_fail(k, c->str_refused_status,
                             c->str_refused_message ? c->str_refused_message
                                                    : "cannot subscribe to streams");
            return;
        }
    }
    if (c->ready && (!k->stream || c->str_ready)) {
        psrpc__call_send(k);
    } else if (!k->wait_for_ready && psrpc__bus_check_connected(c->bus) != PSRPC_OK) {
        /* Known to be disconnected: fail now rather than at the deadline. */
        psrpc__call_fail(k, psrpc_last_error_status(), psrpc_last_error());
    } else {
        psrpc__call_wait(k);
    }
}

int psrpc__call_check(psrpc_client *client, const void *data, size_t len) {
    CHECK_CLIENT(client);
    PSRPC__CHECK_ARG(data || len == 0, "data is NULL with a non-zero length");
    return PSRPC_OK;
}

/* Loads and checks the caller's call options (and their selection options). */
static int load_call_options(psrpc_call_options *o, psrpc_selection_options *sel,
                             const psrpc_call_options *opts) {
    int rc = psrpc__options_load(o, sizeof *o, opts, "psrpc_call_options");
    if (rc != PSRPC_OK)
        return rc;
    PSRPC__CHECK_ARG(o->timeout_ms >= 0, "timeout_ms is negative");
    PSRPC__CHECK_ARG((o->flags & ~PSRPC_CALL_WAIT_FOR_READY) == 0, "unknown call flags 0x%x",
                     (unsigned)o->flags);
    if ((rc = psrpc__check_topics(o->topics, o->topic_count)) != PSRPC_OK)
        return rc;
    PSRPC__CHECK_ARG(o->metadata || o->metadata_count == 0,
                     "metadata is NULL with a non-zero count");
    for (size_t i = 0; i < o->metadata_count; i++) {
        const psrpc_kv *kv = &o->metadata[i];
        PSRPC__CHECK_ARG(kv->key && kv->value, "metadata entry %zu has a NULL key or value", i);
        PSRPC__CHECK_ARG(psrpc__utf8_valid(kv->key, strlen(kv->key)) &&
                             psrpc__utf8_valid(kv->value, strlen(kv->value)),
                         "metadata entry %zu is not valid UTF-8", i);
    }
    if (o->selection && (rc = psrpc__options_load(sel, sizeof *sel, o->selection,
                                                  "psrpc_selection_options")) != PSRPC_OK)
        return rc;
    if (o->selection) {
        PSRPC__CHECK_ARG(sel->affinity_timeout_ms >= 0 && sel->short_circuit_timeout_ms >= 0,
                         "selection timeouts are negative");
        PSRPC__CHECK_ARG((sel->flags & ~PSRPC_SELECT_ACCEPT_FIRST_AVAILABLE) == 0,
                         "unknown selection flags 0x%x", (unsigned)sel->flags);
    }
    return PSRPC_OK;
}

/* Why a method cannot be called as kind, or NULL. */
static const char *kind_error(const psrpc__method *m, unsigned kind, const psrpc_call_options *o,
                              const psrpc_selection_options *sel) {
    if (m->flags & PSRPC_METHOD_SUBSCRIPTION)
        return "subscription methods are subscribed to, not called";
    if (kind != PSRPC_CALL_KIND_STREAM && (m->flags & PSRPC_METHOD_STREAM))
        return "stream methods are opened with psrpc_client_open_stream, not called";
    if (kind == PSRPC_CALL_KIND_STREAM && !(m->flags & PSRPC_METHOD_STREAM))
        return "psrpc_client_open_stream needs a stream method (PSRPC_METHOD_STREAM)";
    if (kind == PSRPC_CALL_KIND_MULTI && m->routing != PSRPC_ROUTING_MULTI)
        return "psrpc_client_call_multi needs a MULTI method";
    if (kind != PSRPC_CALL_KIND_MULTI && m->routing == PSRPC_ROUTING_MULTI)
        return "MULTI methods are called with psrpc_client_call_multi";
    /* As v0.8.2: a queue method has one bidder, so there is nothing to select on. */
    if (o->selection && m->routing == PSRPC_ROUTING_QUEUE &&
        (sel->select || sel->minimum_affinity > 0 || sel->maximum_affinity > 0))
        return "affinity selection is not valid on a queue method";
    return NULL;
}

/* The call's timeout, deadline and selection from the options. */
static void set_timing(call *k, const psrpc_call_options *o, const psrpc_selection_options *sel) {
    psrpc_client *client = k->client;
    k->timeout_ms = o->timeout_ms ? psrpc__clamp_timeout_ms(o->timeout_ms) : client->timeout_ms;
    k->base_timeout_ms = k->timeout_ms;
    if (o->deadline_ns > 0) {
        /* As Go with a context deadline: the call ends by then. */
        int64_t left = psrpc__sat_add(o->deadline_ns, -psrpc__now_ns()) / 1000000;
        k->ends_at_deadline = left < k->timeout_ms;
        if (left < k->timeout_ms)
            k->timeout_ms = left > 0 ? left : 0;
        k->deadline_ns = o->deadline_ns;
    }
    k->deadline_ms = psrpc__sat_add(psrpc__mono_ms(), k->timeout_ms);
    k->msg_timeout_ms = k->timeout_ms;
    if (o->selection) {
        k->sel = *sel;
        k->sel.affinity_timeout_ms = psrpc__clamp_timeout_ms(sel->affinity_timeout_ms);
        k->sel.short_circuit_timeout_ms = psrpc__clamp_timeout_ms(sel->short_circuit_timeout_ms);
    } else {
        bool affinity = k->method.routing == PSRPC_ROUTING_AFFINITY;
        k->sel.flags = affinity ? 0 : PSRPC_SELECT_ACCEPT_FIRST_AVAILABLE;
        k->sel.affinity_timeout_ms = client->selection_timeout_ms;
        k->sel.short_circuit_timeout_ms = affinity ? 200 : 0;
    }
}

/* Copies topics, metadata and payload into k; false if memory ran out. */
static bool copy_inputs(call *k, const psrpc_call_options *o, const void *data, size_t len) {
    bool ok = psrpc__strv_dup(&k->topics, o->topics, o->topic_count) == PSRPC_OK;
    if (ok)
        k->topic_count = o->topic_count;
    if (ok && o->metadata_count) {
        k->meta_keys = calloc(o->metadata_count, sizeof(char *));
        k->meta_values = calloc(o->metadata_count, sizeof(char *));
        ok = k->meta_keys && k->meta_values;
        for (size_t i = 0; ok && i < o->metadata_count; i++) {
            k->meta_keys[i] = psrpc__strdup(o->metadata[i].key);
            k->meta_values[i] = psrpc__strdup(o->metadata[i].value);
            k->meta_count = i + 1;
            ok = k->meta_keys[i] && k->meta_values[i];
        }
    }
    ok = ok && psrpc_msg_new(&k->payload, data, len) == PSRPC_OK;
    if (!ok && !k->meta_count) {
        free(k->meta_keys);
        free(k->meta_values);
        k->meta_keys = k->meta_values = NULL;
    }
    return ok;
}

/* Takes the client's hooks and retry policy for k (one atomic load each;
 * nothing more when none is set). */
static void set_policies(call *k, const psrpc_call_options *o) {
    psrpc_client *c = k->client;
    k->hooks = atomic_load_explicit(&c->hooks, memory_order_acquire);
    if (k->hooks)
        k->start_ns = psrpc__mono_ns();
    _Atomic(psrpc__retry *) *slot = k->kind == PSRPC_CALL_KIND_UNARY    ? &c->retry_unary
                                    : k->kind == PSRPC_CALL_KIND_STREAM ? &c->retry_stream
                                                                        : NULL;
    const psrpc__retry *r = slot ? atomic_load_explicit(slot, memory_order_acquire) : NULL;
    if (!r || !r->enabled)
        return;
    k->retry = r;
    k->caller_timeout = o->timeout_ms != 0;
    attempt_timing(k, r->o.retry_params ? 0 : r->o.timeout_ms);
}

/* The before_send hooks (caller's thread): they may edit k's metadata or
 * fail it (then call_task completes it with their error). */
static void run_before_hooks(call *k) {
    psrpc_call_info info = call_info(k);
    if (!info.expiry_ns) {
        info.expiry_ns = psrpc__sat_add(psrpc__now_ns(), psrpc__ms_to_ns(k->timeout_ms));
        if (k->deadline_ns > 0 && info.expiry_ns > k->deadline_ns)
            info.expiry_ns = k->deadline_ns;
    }
    psrpc_hook_call hc;
    psrpc__hook_call_init(&hc, &k->meta_keys, &k->meta_values, &k->meta_count, false);
    int status = psrpc__hooks_run_before(k->hooks, &info, &hc);
    if (status != PSRPC_OK) {
        k->hook_status = status;
        k->hook_message = psrpc__strdup(hc.message);
    }
}

int psrpc__call_new(call **out, psrpc_client *client, const psrpc__call_req *req) {
    *out = NULL;
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    psrpc_selection_options sel = PSRPC_SELECTION_OPTIONS_INIT;
    int rc = load_call_options(&o, &sel, req->opts);
    if (rc != PSRPC_OK)
        return rc;
    if ((int64_t)req->len > client->bus->opts.max_message_size)
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED,
                            "request of %zu bytes exceeds the maximum of %lld bytes", req->len,
                            (long long)client->bus->opts.max_message_size);
    call *k = calloc(1, sizeof *k);
    if (!k)
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
    if ((rc = psrpc__method_copy(&k->method, req->method)) != PSRPC_OK) {
        free(k);
        return rc;
    }
    const char *why = kind_error(&k->method, req->kind, &o, &sel);
    if (why || atomic_load(&client->closing)) {
        psrpc__method_clear(&k->method);
        free(k);
        return why ? psrpc__error(PSRPC_INVALID_ARGUMENT, "%s", why)
                   : psrpc__error(PSRPC_CANCELED, "client is closed");
    }
    k->client = client;
    k->kind = req->kind;
    k->multi = req->kind == PSRPC_CALL_KIND_MULTI;
    k->wait_for_ready = o.flags & PSRPC_CALL_WAIT_FOR_READY;
    k->require_claim = !k->multi && psrpc__method_require_claim(&k->method);
    set_timing(k, &o, &sel);
    bool ok = copy_inputs(k, &o, req->data, req->len);
    psrpc__client_retain(client);
    if (!ok) {
        psrpc__call_free(k);
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
    }
    k->id = atomic_fetch_add(&client->next_call_id, 1);
    set_policies(k, &o);
    if (k->hooks && k->hooks->before_count)
        run_before_hooks(k);
    *out = k;
    return PSRPC_OK;
}

int psrpc__call_start(call *k, uint64_t *call_id_out) {
    uint64_t id = k->id;
    int rc = psrpc__bus_post(k->client->bus, call_task, k);
    if (rc == PSRPC_OK && call_id_out)
        *call_id_out = id;
    return rc;
}

typedef struct cancel_arg {
    psrpc_client *client;
    uint64_t id;
} cancel_arg;

static void cancel_task(void *arg) {
    cancel_arg *a = arg;
    char key[24];
    psrpc__u64_str(key, a->id);
    call *k = psrpc__map_get(&a->client->by_id, key);
    if (k && k->state != CALL_DONE) {
        k->canceled = true;
        psrpc__call_fail(k, PSRPC_CANCELED, "request canceled");
    }
    psrpc__client_release(a->client);
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
    psrpc__client_retain(client);
    int rc = psrpc__bus_post(client->bus, cancel_task, a);
    if (rc != PSRPC_OK) {
        psrpc__client_release(client);
        free(a);
        return PSRPC_OK; /* the bus is closed: every call already completed */
    }
    return PSRPC_OK;
}

/* ---- selection answers ---- */

typedef struct selection_answer {
    psrpc_selection *sel;
    char *server_id; /* NULL → failure */
    psrpc__err *err;
} selection_answer;

static void selection_release(psrpc_selection *s) {
    if (atomic_fetch_sub(&s->refs, 1) == 1) {
        psrpc__client_release(s->client);
        s->magic = 0;
        free(s);
    }
}

static void selection_task(void *arg) {
    selection_answer *a = arg;
    psrpc_client *c = a->sel->client;
    char key[24];
    psrpc__u64_str(key, a->sel->call_id);
    call *k = psrpc__map_get(&c->by_id, key);
    if (k && k->state == CALL_SELECT_CB) {
        if (a->server_id) {
            send_claim_response(k, a->server_id);
        } else {
            psrpc__call_complete(k, NULL, a->err, NULL);
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
