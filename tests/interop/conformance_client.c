/* conformance-client: the C client of the conformance service, driven by the
 * interop scenarios (tests/interop/go) over stdin/stdout. Public libpsrpc API
 * only; messages are protobuf-c structs.
 *
 *   conformance-client [--bus URL] [--client-id ID] [--timeout-ms N]
 *                      [--max-message-size N] [--compress-threshold N]
 *   conformance-client --print-methods      the method table, one line each
 *   conformance-client --has-streams        exit 0 if the loaded libpsrpc has streams
 *
 * Prints "ready" once the bus is connected, then reads one command per line.
 * A command is a word followed by key=value pairs, values %-encoded (a key
 * may repeat). Every outcome is one JSON line carrying the command's id:
 *
 *   call  id= method=Echo|Claim|RegionEcho [topic=] [timeout_ms=] [md=K:V]...
 *         [payload=HEX] [delay_ms=] [fail_code=] [fail_message=] [tag=]
 *         [sel_min= sel_max= sel_afa=1 sel_timeout_ms= sel_short_ms=
 *          sel_pick=lowest|highest]           (any sel_* replaces the defaults)
 *         [raw=HEX]     send these bytes instead of the request (test plan U12)
 *   call  id= method=Add increment=N
 *   call  id= method=Publish pmethod=Updates|Work|RegionUpdates [ptopic=]...
 *         count=N [payload=HEX]
 *         → {"id","kind":"result","ok":true,"resp":{...},"server_id"} or
 *           {"id","kind":"result","ok":false,"error":{"code","message","details"}}
 *   multi id= method=Fanout|RegionFanout [topic=] [timeout_ms=] ...echo fields
 *         → "multi-result" lines, then {"kind":"done"} (with "error" if any)
 *   cancel id=                                  cancels call/multi id
 *   sub   id= method=Updates|Work|RegionUpdates [topic=]
 *         → {"kind":"ready"} (or "ready-error"), then "update" lines
 *   unsub id=                                   → {"kind":"unsubscribed"}
 *   chat  id= [timeout_ms=] [md=K:V]...          → {"kind":"open"} (ok/error)
 *   chat_send id= send_id= [seq=] [payload=] [close_code=] [close_message=]
 *         → {"kind":"sent","send_id"} (ok/error); server messages arrive as
 *           {"kind":"message"}, the end as {"kind":"closed","error"}
 *   chat_close id= [code=] [message=]           closes from the client side
 *   quit
 */
#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "conformance_common.h"

#define PROG "conformance-client"
#define MAX_ARGS 256
#define MAX_SLOTS 4096

static pthread_mutex_t out_mu = PTHREAD_MUTEX_INITIALIZER;
static psrpc_client *client, *updates_client;

/* ------------------------------------------------------------------------ */
/* Output                                                                    */
/* ------------------------------------------------------------------------ */

static void out_begin(const char *id, const char *kind) {
    pthread_mutex_lock(&out_mu);
    printf("{\"id\":");
    conf_json_str(stdout, id);
    printf(",\"kind\":");
    conf_json_str(stdout, kind);
}

static void out_end(void) {
    printf("}\n");
    fflush(stdout);
    pthread_mutex_unlock(&out_mu);
}

static void out_bytes(const char *key, const uint8_t *data, size_t len) {
    char *hex = malloc(2 * len + 1);
    conf_hex(hex, data, len);
    printf(",\"%s\":\"%s\"", key, hex);
    free(hex);
}

static void out_str(const char *key, const char *v) {
    printf(",\"%s\":", key);
    conf_json_str(stdout, v);
}

static void out_error(const psrpc_error *e) {
    printf(",\"ok\":false,\"error\":{\"code\":");
    conf_json_str(stdout, e->code);
    printf(",\"message\":");
    conf_json_str(stdout, e->message);
    printf(",\"details\":[");
    for (size_t i = 0; i < e->details_count; i++) {
        printf(i ? ",{\"type_url\":" : "{\"type_url\":");
        conf_json_str(stdout, e->details[i].type_url);
        out_bytes("value", e->details[i].value, e->details[i].value_len);
        printf("}");
    }
    printf("]}");
}

/* A local failure (the API refused the call) as an error object. */
static void out_local_error(const char *id, const char *kind, int status, const char *message) {
    psrpc_error e = {0};
    e.status = status;
    e.code = psrpc_status_code(status);
    e.message = message;
    out_begin(id, kind);
    out_error(&e);
    printf(",\"local\":true");
    out_end();
}

/* Decodes a response of method into JSON fields ("resp":{...}). */
static void out_response(const char *method, const psrpc_msg *m) {
    const uint8_t *d = psrpc_msg_data(m);
    size_t n = psrpc_msg_size(m);
    printf(",\"ok\":true,\"resp\":{");
    if (!strcmp(method, "Add")) {
        Psrpc__Conformance__AddResult *r = psrpc__conformance__add_result__unpack(NULL, n, d);
        if (r) {
            printf("\"value\":%d", r->value);
            psrpc__conformance__add_result__free_unpacked(r, NULL);
        } else {
            printf("\"undecodable\":true");
        }
    } else if (!strcmp(method, "Publish")) {
        Psrpc__Conformance__PublishResult *r =
            psrpc__conformance__publish_result__unpack(NULL, n, d);
        if (r) {
            printf("\"published\":%u", r->published);
            psrpc__conformance__publish_result__free_unpacked(r, NULL);
        } else {
            printf("\"undecodable\":true");
        }
    } else {
        Psrpc__Conformance__EchoResponse *r = psrpc__conformance__echo_response__unpack(NULL, n, d);
        if (r) {
            printf("\"server_id\":");
            conf_json_str(stdout, r->server_id);
            out_bytes("payload", r->payload.data, r->payload.len);
            out_str("tag", r->tag);
            out_str("topic", r->topic);
            printf(",\"metadata\":{");
            for (size_t i = 0; i < r->n_metadata; i++) {
                if (i)
                    printf(",");
                conf_json_str(stdout, r->metadata[i]->key);
                printf(":");
                conf_json_str(stdout, r->metadata[i]->value);
            }
            printf("}");
            psrpc__conformance__echo_response__free_unpacked(r, NULL);
        } else {
            printf("\"undecodable\":true");
        }
    }
    printf("}");
}

/* ------------------------------------------------------------------------ */
/* Command arguments                                                         */
/* ------------------------------------------------------------------------ */

typedef struct args {
    size_t n;
    char *key[MAX_ARGS];
    char *val[MAX_ARGS];
} args;

static const char *arg(const args *a, const char *key) {
    for (size_t i = 0; i < a->n; i++)
        if (!strcmp(a->key[i], key))
            return a->val[i];
    return NULL;
}

static const char *arg_or(const args *a, const char *key, const char *def) {
    const char *v = arg(a, key);
    return v ? v : def;
}

/* All values of a repeated key, in order. */
static size_t arg_all(const args *a, const char *key, const char **out, size_t cap) {
    size_t n = 0;
    for (size_t i = 0; i < a->n && n < cap; i++)
        if (!strcmp(a->key[i], key))
            out[n++] = a->val[i];
    return n;
}

/* ------------------------------------------------------------------------ */
/* Slots: what a command id refers to                                        */
/* ------------------------------------------------------------------------ */

typedef enum { SLOT_FREE, SLOT_CALL, SLOT_SUB, SLOT_CHAT } slot_kind;

typedef struct slot {
    slot_kind kind;
    char id[64];
    char method[32];
    uint64_t call_id;
    psrpc_sub *sub;
    psrpc_stream *stream;
    /* selection */
    int pick; /* 0 default, 1 lowest, 2 highest */
} slot;

static slot slots[MAX_SLOTS];
static pthread_mutex_t slot_mu = PTHREAD_MUTEX_INITIALIZER;

static slot *slot_new(slot_kind kind, const char *id, const char *method) {
    pthread_mutex_lock(&slot_mu);
    for (size_t i = 0; i < MAX_SLOTS; i++) {
        if (slots[i].kind == SLOT_FREE) {
            memset(&slots[i], 0, sizeof slots[i]);
            slots[i].kind = kind;
            snprintf(slots[i].id, sizeof slots[i].id, "%s", id);
            snprintf(slots[i].method, sizeof slots[i].method, "%s", method ? method : "");
            pthread_mutex_unlock(&slot_mu);
            return &slots[i];
        }
    }
    pthread_mutex_unlock(&slot_mu);
    return NULL;
}

static slot *slot_find(const char *id) {
    slot *s = NULL;
    pthread_mutex_lock(&slot_mu);
    for (size_t i = 0; i < MAX_SLOTS && !s; i++)
        if (slots[i].kind != SLOT_FREE && !strcmp(slots[i].id, id))
            s = &slots[i];
    pthread_mutex_unlock(&slot_mu);
    return s;
}

static void slot_free(slot *s) {
    pthread_mutex_lock(&slot_mu);
    s->kind = SLOT_FREE;
    pthread_mutex_unlock(&slot_mu);
}

/* ------------------------------------------------------------------------ */
/* Calls                                                                     */
/* ------------------------------------------------------------------------ */

static void select_cb(psrpc_selection *sel, const psrpc_claim *claims, size_t count,
                      void *user_data) {
    slot *s = user_data;
    if (count == 0) {
        psrpc_selection_fail(sel, PSRPC_UNAVAILABLE, "no servers available");
        return;
    }
    size_t best = 0;
    for (size_t i = 1; i < count; i++) {
        bool better = s->pick == 1 ? claims[i].affinity < claims[best].affinity
                                   : claims[i].affinity > claims[best].affinity;
        if (better)
            best = i;
    }
    psrpc_selection_choose(sel, claims[best].server_id);
}

static void call_done(uint64_t call_id, const psrpc_msg *response, const psrpc_error *error,
                      const char *server_id, void *user_data) {
    (void)call_id;
    slot *s = user_data;
    out_begin(s->id, "result");
    if (error)
        out_error(error);
    else
        out_response(s->method, response);
    if (server_id)
        out_str("server_id", server_id);
    out_end();
    slot_free(s);
}

static void multi_result(uint64_t call_id, const psrpc_msg *response, const psrpc_error *error,
                         const char *server_id, void *user_data) {
    (void)call_id;
    slot *s = user_data;
    out_begin(s->id, "multi-result");
    if (error)
        out_error(error);
    else
        out_response(s->method, response);
    if (server_id)
        out_str("server_id", server_id);
    out_end();
}

static void multi_done(uint64_t call_id, const psrpc_msg *response, const psrpc_error *error,
                       const char *server_id, void *user_data) {
    (void)call_id;
    (void)response;
    (void)server_id;
    slot *s = user_data;
    out_begin(s->id, "done");
    if (error)
        out_error(error);
    else
        printf(",\"ok\":true");
    out_end();
    slot_free(s);
}

/* Serializes the request of an Echo-like, Add or Publish call. */
static uint8_t *build_request(const char *method, const args *a, size_t *len) {
    uint8_t *buf = NULL;
    const char *raw = arg(a, "raw");
    if (raw) {
        if (conf_unhex(&buf, len, raw) != 0)
            return NULL;
        return buf;
    }
    if (!strcmp(method, "Add")) {
        Psrpc__Conformance__AddRequest r = PSRPC__CONFORMANCE__ADD_REQUEST__INIT;
        r.increment = atoi(arg_or(a, "increment", "0"));
        *len = psrpc__conformance__add_request__get_packed_size(&r);
        buf = malloc(*len + 1);
        psrpc__conformance__add_request__pack(&r, buf);
        return buf;
    }
    uint8_t *payload = NULL;
    size_t plen = 0;
    if (conf_unhex(&payload, &plen, arg_or(a, "payload", "")) != 0)
        return NULL;
    if (!strcmp(method, "Publish")) {
        Psrpc__Conformance__PublishRequest r = PSRPC__CONFORMANCE__PUBLISH_REQUEST__INIT;
        const char *topics[64];
        r.method = (char *)arg_or(a, "pmethod", "");
        r.n_topic = arg_all(a, "ptopic", topics, 64);
        r.topic = (char **)topics;
        r.count = (uint32_t)strtoul(arg_or(a, "count", "0"), NULL, 10);
        r.payload.data = payload;
        r.payload.len = plen;
        *len = psrpc__conformance__publish_request__get_packed_size(&r);
        buf = malloc(*len + 1);
        psrpc__conformance__publish_request__pack(&r, buf);
    } else {
        Psrpc__Conformance__EchoRequest r = PSRPC__CONFORMANCE__ECHO_REQUEST__INIT;
        r.payload.data = payload;
        r.payload.len = plen;
        r.delay_ms = (uint32_t)strtoul(arg_or(a, "delay_ms", "0"), NULL, 10);
        r.fail_code = (char *)arg_or(a, "fail_code", "");
        r.fail_message = (char *)arg_or(a, "fail_message", "");
        r.tag = (char *)arg_or(a, "tag", "");
        *len = psrpc__conformance__echo_request__get_packed_size(&r);
        buf = malloc(*len + 1);
        psrpc__conformance__echo_request__pack(&r, buf);
    }
    free(payload);
    return buf;
}

/* Fills call options from the command; kv/topic storage is the caller's. */
static void build_opts(const args *a, slot *s, psrpc_call_options *o, psrpc_kv *kv, size_t kv_cap,
                       const char **topic, psrpc_selection_options *sel) {
    psrpc_call_options_init(o, sizeof *o);
    o->timeout_ms = strtoll(arg_or(a, "timeout_ms", "0"), NULL, 10);
    if ((*topic = arg(a, "topic")) != NULL) {
        o->topics = topic;
        o->topic_count = 1;
    }
    const char *md[MAX_ARGS];
    size_t nmd = arg_all(a, "md", md, kv_cap);
    for (size_t i = 0; i < nmd; i++) {
        /* K:V with both parts %-encoded: split before decoding */
        char *kv_s = (char *)md[i];
        char *colon = strchr(kv_s, ':');
        if (colon)
            *colon = 0;
        conf_unpercent(kv_s);
        if (colon)
            conf_unpercent(colon + 1);
        kv[i].key = kv_s;
        kv[i].value = colon ? colon + 1 : "";
    }
    o->metadata = kv;
    o->metadata_count = nmd;
    bool any_sel = false;
    psrpc_selection_options_init(sel, sizeof *sel);
    for (size_t i = 0; i < a->n; i++)
        if (!strncmp(a->key[i], "sel_", 4))
            any_sel = true;
    if (any_sel) {
        sel->minimum_affinity = strtof(arg_or(a, "sel_min", "0"), NULL);
        sel->maximum_affinity = strtof(arg_or(a, "sel_max", "0"), NULL);
        if (!strcmp(arg_or(a, "sel_afa", "0"), "1"))
            sel->flags |= PSRPC_SELECT_ACCEPT_FIRST_AVAILABLE;
        sel->affinity_timeout_ms = strtoll(arg_or(a, "sel_timeout_ms", "0"), NULL, 10);
        sel->short_circuit_timeout_ms = strtoll(arg_or(a, "sel_short_ms", "0"), NULL, 10);
        const char *pick = arg(a, "sel_pick");
        if (pick) {
            s->pick = !strcmp(pick, "lowest") ? 1 : 2;
            sel->select = select_cb;
            sel->select_user_data = s;
        }
        o->selection = sel;
    }
}

static void cmd_call(const char *id, const args *a, bool multi) {
    const char *method = arg_or(a, "method", "");
    if (!conf_method_def_find(CONF_SERVICE, method)) {
        out_local_error(id, multi ? "done" : "result", PSRPC_INVALID_ARGUMENT, "unknown method");
        return;
    }
    slot *s = slot_new(SLOT_CALL, id, method);
    if (!s) {
        out_local_error(id, "result", PSRPC_RESOURCE_EXHAUSTED, "too many commands in flight");
        return;
    }
    size_t len = 0;
    uint8_t *req = build_request(method, a, &len);
    if (!req) {
        slot_free(s);
        out_local_error(id, multi ? "done" : "result", PSRPC_INVALID_ARGUMENT, "bad payload");
        return;
    }
    psrpc_call_options o;
    psrpc_kv kv[MAX_ARGS];
    const char *topic = NULL;
    psrpc_selection_options sel;
    build_opts(a, s, &o, kv, MAX_ARGS, &topic, &sel);
    psrpc_method m = conf_method(CONF_SERVICE, method);
    uint64_t call_id = 0;
    psrpc_status rc;
    /* The slot's call id is set before any callback can look it up: the
     * callbacks never run inside the call that scheduled them. */
    pthread_mutex_lock(&slot_mu);
    if (multi)
        rc = psrpc_client_call_multi(&call_id, client, &m, req, len, &o, multi_result, multi_done,
                                     s);
    else
        rc = psrpc_client_call(&call_id, client, &m, req, len, &o, call_done, s);
    s->call_id = call_id;
    pthread_mutex_unlock(&slot_mu);
    free(req);
    if (rc != PSRPC_OK) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", psrpc_last_error());
        slot_free(s);
        out_local_error(id, multi ? "done" : "result", rc, msg);
    }
}

static void cmd_cancel(const char *id) {
    slot *s = slot_find(id);
    if (s && s->kind == SLOT_CALL) {
        pthread_mutex_lock(&slot_mu);
        uint64_t call_id = s->call_id;
        pthread_mutex_unlock(&slot_mu);
        psrpc_client_cancel(client, call_id);
    }
}

/* ------------------------------------------------------------------------ */
/* Subscriptions                                                             */
/* ------------------------------------------------------------------------ */

static void sub_message(psrpc_sub *sub, const psrpc_msg *msg, void *user_data) {
    (void)sub;
    slot *s = user_data;
    Psrpc__Conformance__Update *u =
        psrpc__conformance__update__unpack(NULL, psrpc_msg_size(msg), psrpc_msg_data(msg));
    out_begin(s->id, "update");
    if (u) {
        printf(",\"seq\":%u", u->seq);
        out_bytes("payload", u->payload.data, u->payload.len);
        out_str("server_id", u->server_id);
        out_str("nonce", u->nonce);
        psrpc__conformance__update__free_unpacked(u, NULL);
    } else {
        printf(",\"undecodable\":true");
    }
    out_end();
}

static void sub_ready(const psrpc_error *error, void *user_data) {
    slot *s = user_data;
    out_begin(s->id, error ? "ready-error" : "ready");
    if (error)
        out_error(error);
    out_end();
}

static void sub_release(void *user_data) {
    slot *s = user_data;
    out_begin(s->id, "unsubscribed");
    out_end();
    slot_free(s);
}

static void cmd_sub(const char *id, const args *a) {
    const char *method = arg_or(a, "method", "");
    if (!conf_method_def_find(CONF_UPDATES_SERVICE, method)) {
        out_local_error(id, "ready-error", PSRPC_INVALID_ARGUMENT, "unknown method");
        return;
    }
    slot *s = slot_new(SLOT_SUB, id, method);
    psrpc_method m = conf_method(CONF_UPDATES_SERVICE, method);
    const char *topic = arg(a, "topic");
    psrpc_sub *sub = NULL;
    pthread_mutex_lock(&slot_mu);
    psrpc_status rc = psrpc_client_subscribe(&sub, updates_client, &m, &topic, topic ? 1 : 0,
                                             sub_message, sub_ready, s, sub_release);
    s->sub = sub;
    pthread_mutex_unlock(&slot_mu);
    if (rc != PSRPC_OK) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", psrpc_last_error());
        slot_free(s);
        out_local_error(id, "ready-error", rc, msg);
    }
}

static void cmd_unsub(const char *id) {
    slot *s = slot_find(id);
    if (s && s->kind == SLOT_SUB) {
        pthread_mutex_lock(&slot_mu);
        psrpc_sub *sub = s->sub;
        s->sub = NULL;
        pthread_mutex_unlock(&slot_mu);
        psrpc_sub_free(sub); /* release (→ "unsubscribed") follows */
    }
}

/* ------------------------------------------------------------------------ */
/* Chat streams                                                              */
/* ------------------------------------------------------------------------ */

typedef struct send_ctx {
    slot *s;
    char send_id[64];
} send_ctx;

static void chat_opened(const psrpc_error *error, void *user_data) {
    slot *s = user_data;
    out_begin(s->id, "open");
    if (error)
        out_error(error);
    else
        printf(",\"ok\":true");
    out_end();
}

static int chat_message(psrpc_stream *stream, const psrpc_msg *msg, void *user_data) {
    (void)stream;
    slot *s = user_data;
    Psrpc__Conformance__ChatMessage *m =
        psrpc__conformance__chat_message__unpack(NULL, psrpc_msg_size(msg), psrpc_msg_data(msg));
    out_begin(s->id, "message");
    if (m) {
        printf(",\"seq\":%u", m->seq);
        out_bytes("payload", m->payload.data, m->payload.len);
        out_str("close_code", m->close_code);
        out_str("close_message", m->close_message);
        psrpc__conformance__chat_message__free_unpacked(m, NULL);
    } else {
        printf(",\"undecodable\":true");
    }
    out_end();
    return 0;
}

static void chat_closed(psrpc_stream *stream, const psrpc_error *cause, void *user_data) {
    (void)stream;
    slot *s = user_data;
    out_begin(s->id, "closed");
    out_error(cause);
    out_end();
}

static void chat_release(void *user_data) {
    slot *s = user_data;
    pthread_mutex_lock(&slot_mu);
    psrpc_stream *st = s->stream;
    s->stream = NULL;
    pthread_mutex_unlock(&slot_mu);
    psrpc_stream_free(st);
    slot_free(s);
}

static void chat_sent(const psrpc_error *error, void *user_data) {
    send_ctx *c = user_data;
    out_begin(c->s->id, "sent");
    out_str("send_id", c->send_id);
    if (error)
        out_error(error);
    else
        printf(",\"ok\":true");
    out_end();
    free(c);
}

static void cmd_chat(const char *id, const args *a) {
    if (!conf_streams_available()) {
        out_local_error(id, "open", PSRPC_NOT_SUPPORTED, "this libpsrpc has no streams");
        return;
    }
    slot *s = slot_new(SLOT_CHAT, id, "Chat");
    psrpc_call_options o;
    psrpc_kv kv[MAX_ARGS];
    const char *topic = NULL;
    psrpc_selection_options sel;
    build_opts(a, s, &o, kv, MAX_ARGS, &topic, &sel);
    psrpc_method m = conf_method(CONF_SERVICE, "Chat");
    psrpc_stream *stream = NULL;
    pthread_mutex_lock(&slot_mu);
    psrpc_status rc = psrpc_client_open_stream(&stream, client, &m, &o, chat_opened, chat_message,
                                               chat_closed, s, chat_release);
    s->stream = stream;
    pthread_mutex_unlock(&slot_mu);
    if (rc != PSRPC_OK) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", psrpc_last_error());
        slot_free(s);
        out_local_error(id, "open", rc, msg);
    }
}

static void cmd_chat_send(const char *id, const args *a) {
    slot *s = slot_find(id);
    const char *send_id = arg_or(a, "send_id", "");
    pthread_mutex_lock(&slot_mu);
    psrpc_stream *stream = s && s->kind == SLOT_CHAT ? s->stream : NULL;
    pthread_mutex_unlock(&slot_mu);
    if (!stream) {
        out_begin(id, "sent");
        out_str("send_id", send_id);
        printf(",\"ok\":false,\"error\":{\"code\":\"not_found\",\"message\":\"no such "
               "stream\",\"details\":[]},\"local\":true");
        out_end();
        return;
    }
    Psrpc__Conformance__ChatMessage msg = PSRPC__CONFORMANCE__CHAT_MESSAGE__INIT;
    uint8_t *payload = NULL;
    size_t plen = 0;
    conf_unhex(&payload, &plen, arg_or(a, "payload", ""));
    msg.seq = (uint32_t)strtoul(arg_or(a, "seq", "0"), NULL, 10);
    msg.payload.data = payload;
    msg.payload.len = plen;
    msg.close_code = (char *)arg_or(a, "close_code", "");
    msg.close_message = (char *)arg_or(a, "close_message", "");
    size_t len = psrpc__conformance__chat_message__get_packed_size(&msg);
    uint8_t *buf = malloc(len + 1);
    psrpc__conformance__chat_message__pack(&msg, buf);
    free(payload);
    send_ctx *c = calloc(1, sizeof *c);
    c->s = s;
    snprintf(c->send_id, sizeof c->send_id, "%s", send_id);
    psrpc_status rc = psrpc_stream_send(stream, buf, len, 0, chat_sent, c);
    free(buf);
    if (rc != PSRPC_OK) {
        char m[512];
        snprintf(m, sizeof m, "%s", psrpc_last_error());
        psrpc_error e = {0};
        e.code = psrpc_status_code(rc);
        e.message = m;
        out_begin(id, "sent");
        out_str("send_id", send_id);
        out_error(&e);
        printf(",\"local\":true");
        out_end();
        free(c);
    }
}

static void cmd_chat_close(const char *id, const args *a) {
    slot *s = slot_find(id);
    pthread_mutex_lock(&slot_mu);
    psrpc_stream *stream = s && s->kind == SLOT_CHAT ? s->stream : NULL;
    pthread_mutex_unlock(&slot_mu);
    if (!stream)
        return;
    const char *code = arg(a, "code");
    const char *message = arg(a, "message");
    if (code && *code && (!message || !*message))
        message = psrpc_status_str(psrpc_status_from_code(code));
    /* the code string travels unchanged (custom codes too) */
    psrpc_stream_close_code(stream, code, message);
}

/* ------------------------------------------------------------------------ */
/* main                                                                      */
/* ------------------------------------------------------------------------ */

static void print_methods(void) {
    for (size_t i = 0; i < conf_method_count; i++) {
        const conf_method_def *d = &conf_methods[i];
        printf("%s.%s affinity=%d multi=%d require_claim=%d queue=%d subscription=%d "
               "topics=%u stream=%d routing=%u input=%s output=%s\n",
               d->service, d->name, d->affinity, d->multi, d->require_claim, d->queue,
               !!(d->flags & PSRPC_METHOD_SUBSCRIPTION), d->topic_params,
               !!(d->flags & PSRPC_METHOD_STREAM), d->routing, d->input_type, d->output_type);
    }
}

static void parse_line(char *line, char **cmd, args *a) {
    a->n = 0;
    char *save = NULL;
    *cmd = strtok_r(line, " \t\r\n", &save);
    char *tok;
    while ((tok = strtok_r(NULL, " \t\r\n", &save)) != NULL && a->n < MAX_ARGS) {
        char *eq = strchr(tok, '=');
        if (!eq)
            continue;
        *eq = 0;
        a->key[a->n] = tok;
        a->val[a->n] = eq + 1;
        /* md values are split at ':' before decoding (build_opts) */
        if (strcmp(tok, "md") != 0)
            conf_unpercent(eq + 1);
        a->n++;
    }
}

static sem_t closed_sem;
static void on_closed(void *user_data) {
    (void)user_data;
    sem_post(&closed_sem);
}

int main(int argc, char **argv) {
    conf_bus_flags bf;
    conf_bus_flags_init(&bf);
    const char *client_id = NULL;
    int64_t timeout_ms = 0;
    for (int i = 1; i < argc;) {
        int used = conf_parse_bus_flag(&bf, argc, argv, i);
        if (used) {
            i += used;
        } else if (!strcmp(argv[i], "--print-methods")) {
            print_methods();
            return 0;
        } else if (!strcmp(argv[i], "--has-streams")) {
            return conf_streams_available() ? 0 : 1;
        } else if (!strcmp(argv[i], "--client-id") && i + 1 < argc) {
            client_id = argv[i + 1];
            i += 2;
        } else if (!strcmp(argv[i], "--timeout-ms") && i + 1 < argc) {
            timeout_ms = strtoll(argv[i + 1], NULL, 10);
            i += 2;
        } else {
            fprintf(stderr, "usage: " PROG " [--bus URL] [--client-id ID] [--timeout-ms N]\n"
                            "       [--max-message-size N] [--compress-threshold N]\n"
                            "       | --print-methods\n");
            return 2;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    sem_init(&closed_sem, 0, 0);

    psrpc_bus *bus;
    if (conf_open_bus(&bus, &bf, PROG) != 0)
        return 1;
    psrpc_client_options co = PSRPC_CLIENT_OPTIONS_INIT;
    co.client_id = client_id;
    co.timeout_ms = timeout_ms;
    if (psrpc_client_create(&client, bus, CONF_SERVICE, &co) != PSRPC_OK) {
        fprintf(stderr, PROG ": client: %s\n", psrpc_last_error());
        return 1;
    }
    co.client_id = NULL; /* two clients must not share an id */
    if (psrpc_client_create(&updates_client, bus, CONF_UPDATES_SERVICE, &co) != PSRPC_OK) {
        fprintf(stderr, PROG ": client: %s\n", psrpc_last_error());
        return 1;
    }
    pthread_mutex_lock(&out_mu);
    printf("ready\n");
    fflush(stdout);
    pthread_mutex_unlock(&out_mu);

    size_t cap = 0;
    char *line = NULL;
    static args a;
    while (getline(&line, &cap, stdin) > 0) {
        char *cmd;
        parse_line(line, &cmd, &a);
        if (!cmd)
            continue;
        const char *id = arg_or(&a, "id", "");
        if (!strcmp(cmd, "quit"))
            break;
        else if (!strcmp(cmd, "call"))
            cmd_call(id, &a, false);
        else if (!strcmp(cmd, "multi"))
            cmd_call(id, &a, true);
        else if (!strcmp(cmd, "cancel"))
            cmd_cancel(id);
        else if (!strcmp(cmd, "sub"))
            cmd_sub(id, &a);
        else if (!strcmp(cmd, "unsub"))
            cmd_unsub(id);
        else if (!strcmp(cmd, "chat"))
            cmd_chat(id, &a);
        else if (!strcmp(cmd, "chat_send"))
            cmd_chat_send(id, &a);
        else if (!strcmp(cmd, "chat_close"))
            cmd_chat_close(id, &a);
        else
            out_local_error(id, "bad-command", PSRPC_INVALID_ARGUMENT, cmd);
    }
    free(line);

    psrpc_client_close(client, on_closed, NULL);
    psrpc_client_close(updates_client, on_closed, NULL);
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += 10;
    sem_timedwait(&closed_sem, &dl);
    sem_timedwait(&closed_sem, &dl);
    psrpc_client_free(client);
    psrpc_client_free(updates_client);
    psrpc_bus_free(bus);
    return 0;
}
