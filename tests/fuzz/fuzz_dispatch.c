/* fuzz_dispatch (test plan J1, the dispatch half): inbound envelopes on every
 * channel kind, through the real receive path of a live client and server on
 * an in-process bus: psrpc__bus_inject publishes the bytes on the channel as
 * a peer would, the bus delivers them to the subscriptions the core made
 * (server: request, queue request, claim response, stream; client: response,
 * claim, stream), and the core decodes and acts on them (claims, handler
 * calls, responses, stream opens/messages/acks/closes, call completion).
 *
 * Each input runs against a fresh server (Fuzz.Unary affinity method,
 * Fuzz.Queue queue method, Fuzz.Stream stream method; echoing handlers) and
 * a fresh client, both with the fixed ids of the golden vectors. Records
 * (fuzz_dispatch.h) inject bytes on one channel, or make the client start a
 * call or a stream (to the local server, or to "Ghost" methods no server
 * serves, which then wait for injected claims and responses). Before
 * injecting, the placeholders REQ_abcdefghijkl / STR_abcdefghijkl are
 * replaced by the newest request / stream id seen on the bus, so seeds can
 * answer live calls. max_message_size is 64 KiB (gzip bound), outbound
 * payloads of 64+ bytes are compressed.
 *
 * Findings: crashes, UB, leaks (ASan/LSan), a hang (libFuzzer -timeout), and
 * broken invariants: every call's callback runs exactly once (by the time the
 * client is closed), every stream's close callback exactly once, and the
 * bus's streams_open and requests_in_flight gauges are back to 0 once the
 * client and the server are closed. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bus.h"
#include "common.h"
#include "fuzz_assert.h"
#include "fuzz_dispatch.h"
#include "wire.h"

#define MAX_STREAMS 16
#define MAX_CALLS 64

static psrpc_bus *bus;
static psrpc__channel chans[OP_ACTION];
static psrpc__channel spy_chans[5];
static psrpc__bus_sub *spy_subs[5];

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static char live_req[FZ_ID_LEN + 1] = FZ_REQ_PLACEHOLDER;
static char live_str[FZ_ID_LEN + 1] = FZ_STR_PLACEHOLDER;
static int call_done[MAX_CALLS]; /* completions per call started in this input */
static int stream_closed[MAX_STREAMS];

/* ---- loop-thread helpers ---- */

typedef struct barrier {
    bool done;
} barrier;

static void barrier_task(void *arg) {
    barrier *b = arg;
    pthread_mutex_lock(&mu);
    b->done = true;
    pthread_cond_broadcast(&cond);
    pthread_mutex_unlock(&mu);
}

/* Lets the loop run everything queued so far, and what that queues, a few
 * hops deep (inject -> delivery -> publish -> delivery -> ...). */
static void settle(void) {
    for (int i = 0; i < 6; i++) {
        barrier b = {false};
        FUZZ_ASSERT(psrpc__bus_post(bus, barrier_task, &b) == PSRPC_OK);
        pthread_mutex_lock(&mu);
        while (!b.done)
            pthread_cond_wait(&cond, &mu);
        pthread_mutex_unlock(&mu);
    }
}

/* The spy: remembers the newest request and stream ids on the request and
 * stream channels (the client's own calls included). Loop thread. */
static void spy_deliver(void *ctx, const uint8_t *data, size_t len) {
    (void)ctx;
    psrpc__envelope env;
    if (psrpc__envelope_decode(&env, data, len, 0) != 0)
        return;
    ProtobufCMessage *m = NULL;
    const char *req = NULL, *str = NULL;
    if (psrpc__wire_unpack(&m, &env, &internal__request__descriptor) == 0) {
        req = ((Internal__Request *)m)->request_id;
    } else if (psrpc__wire_unpack(&m, &env, &internal__stream__descriptor) == 0) {
        req = ((Internal__Stream *)m)->request_id;
        str = ((Internal__Stream *)m)->stream_id;
    }
    pthread_mutex_lock(&mu);
    if (req && strlen(req) == FZ_ID_LEN)
        memcpy(live_req, req, FZ_ID_LEN);
    if (str && strlen(str) == FZ_ID_LEN)
        memcpy(live_str, str, FZ_ID_LEN);
    pthread_mutex_unlock(&mu);
    psrpc__wire_free(m);
    psrpc__envelope_clear(&env);
}

static void spy_ready(void *ctx, int status, const char *message) {
    (void)ctx;
    (void)status;
    (void)message;
}

static void spy_task(void *arg) {
    (void)arg;
    for (int i = 0; i < 5; i++) {
        spy_subs[i] = psrpc__bus_subscribe(bus, &spy_chans[i], false, spy_deliver, spy_ready, NULL);
        FUZZ_ASSERT(spy_subs[i]);
    }
}

/* ---- server ---- */

static void unary_handler(psrpc_request *r, void *ud) {
    (void)ud;
    const psrpc_msg *p = psrpc_request_payload(r);
    size_t n = p ? psrpc_msg_size(p) : 0;
    const uint8_t *d = p ? psrpc_msg_data(p) : NULL;
    if (n && (d[0] & 3) == 1)
        psrpc_request_fail(r, PSRPC_NOT_FOUND, "fuzz: not found");
    else if (n && (d[0] & 3) == 2)
        psrpc_request_abandon(r, PSRPC_UNAVAILABLE, "fuzz: abandoned");
    else
        psrpc_request_respond(r, d, n);
}

static void unary_affinity(psrpc_request *r, void *ud) {
    (void)ud;
    psrpc_request_claim(r, 1.0f);
}

static int srv_stream_message(psrpc_stream *st, const psrpc_msg *msg, void *ud) {
    (void)ud;
    psrpc_stream_send(st, psrpc_msg_data(msg), psrpc_msg_size(msg), 0, NULL, NULL);
    return 0;
}

static void srv_stream_close(psrpc_stream *st, const psrpc_error *cause, void *ud) {
    (void)st;
    (void)cause;
    (void)ud;
}

static void srv_stream_release(void *ud) { psrpc_stream_free(ud); }

static void stream_handler(psrpc_stream *st, void *ud) {
    (void)ud;
    if (psrpc_stream_set_callbacks(st, srv_stream_message, srv_stream_close, st,
                                   srv_stream_release) != PSRPC_OK)
        psrpc_stream_free(st);
}

/* ---- client ---- */

static void call_cb(uint64_t id, const psrpc_msg *response, const psrpc_error *error,
                    const char *server_id, void *ud) {
    (void)id;
    (void)server_id;
    FUZZ_ASSERT((response == NULL) != (error == NULL));
    pthread_mutex_lock(&mu);
    call_done[(intptr_t)ud]++;
    pthread_mutex_unlock(&mu);
}

static int cli_stream_message(psrpc_stream *st, const psrpc_msg *msg, void *ud) {
    (void)st;
    (void)msg;
    (void)ud;
    return 0;
}

static void cli_stream_close(psrpc_stream *st, const psrpc_error *cause, void *ud) {
    (void)st;
    FUZZ_ASSERT(cause != NULL);
    pthread_mutex_lock(&mu);
    stream_closed[(intptr_t)ud]++;
    pthread_mutex_unlock(&mu);
}

typedef struct closed_wait {
    bool done;
} closed_wait;

static void closed_cb(void *ud) {
    closed_wait *w = ud;
    pthread_mutex_lock(&mu);
    w->done = true;
    pthread_cond_broadcast(&cond);
    pthread_mutex_unlock(&mu);
}

static void wait_closed(closed_wait *w) {
    pthread_mutex_lock(&mu);
    while (!w->done)
        pthread_cond_wait(&cond, &mu);
    pthread_mutex_unlock(&mu);
}

static const psrpc_method m_unary = {
    sizeof(psrpc_method), PSRPC_ROUTING_AFFINITY, 0, 0, "Unary", NULL};
static const psrpc_method m_queue = {
    sizeof(psrpc_method), PSRPC_ROUTING_QUEUE, 0, 0, "Queue", NULL};
static const psrpc_method m_stream = {
    sizeof(psrpc_method), PSRPC_ROUTING_AFFINITY, PSRPC_METHOD_STREAM, 0, "Stream", NULL};
static const psrpc_method m_ghost = {
    sizeof(psrpc_method), PSRPC_ROUTING_AFFINITY, 0, 0, "Ghost", NULL};
static const psrpc_method m_ghost_stream = {
    sizeof(psrpc_method), PSRPC_ROUTING_AFFINITY, PSRPC_METHOD_STREAM, 0, "GhostStream", NULL};

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    psrpc_bus_options o = PSRPC_BUS_OPTIONS_INIT;
    o.max_message_size = 65536;
    o.compress_threshold = 64;
    FUZZ_ASSERT(psrpc_bus_open(&bus, "local://", &o) == PSRPC_OK);
    FUZZ_ASSERT(psrpc__channel_rpc(&chans[OP_SRV_REQUEST], FZ_SERVICE, "Unary", NULL, 0, false) ==
                0);
    FUZZ_ASSERT(psrpc__channel_rpc(&chans[OP_SRV_QUEUE], FZ_SERVICE, "Queue", NULL, 0, true) == 0);
    FUZZ_ASSERT(
        psrpc__channel_claim_response(&chans[OP_SRV_RCLAIM], FZ_SERVICE, "Unary", NULL, 0) == 0);
    FUZZ_ASSERT(
        psrpc__channel_stream_server(&chans[OP_SRV_STREAM], FZ_SERVICE, "Stream", NULL, 0) == 0);
    FUZZ_ASSERT(
        psrpc__channel_claim_response(&chans[OP_SRV_SRCLAIM], FZ_SERVICE, "Stream", NULL, 0) == 0);
    FUZZ_ASSERT(psrpc__channel_client_response(&chans[OP_CLI_RESPONSE], FZ_SERVICE, FZ_CLIENT_ID) ==
                0);
    FUZZ_ASSERT(psrpc__channel_client_claim(&chans[OP_CLI_CLAIM], FZ_SERVICE, FZ_CLIENT_ID) == 0);
    FUZZ_ASSERT(psrpc__channel_client_stream(&chans[OP_CLI_STREAM], FZ_SERVICE, FZ_CLIENT_ID) == 0);
    FUZZ_ASSERT(psrpc__channel_copy(&spy_chans[0], &chans[OP_SRV_REQUEST]) == 0);
    FUZZ_ASSERT(psrpc__channel_copy(&spy_chans[1], &chans[OP_SRV_QUEUE]) == 0);
    FUZZ_ASSERT(psrpc__channel_copy(&spy_chans[2], &chans[OP_SRV_STREAM]) == 0);
    FUZZ_ASSERT(psrpc__channel_rpc(&spy_chans[3], FZ_SERVICE, "Ghost", NULL, 0, false) == 0);
    FUZZ_ASSERT(psrpc__channel_stream_server(&spy_chans[4], FZ_SERVICE, "GhostStream", NULL, 0) ==
                0);
    FUZZ_ASSERT(psrpc__bus_post(bus, spy_task, NULL) == PSRPC_OK);
    settle();
    return 0;
}

/* Copies n bytes replacing the placeholders by the live ids. */
static uint8_t *substitute(const uint8_t *d, size_t n) {
    uint8_t *o = malloc(n ? n : 1);
    FUZZ_ASSERT(o);
    memcpy(o, d, n);
    pthread_mutex_lock(&mu);
    for (size_t i = 0; i + FZ_ID_LEN <= n; i++) {
        if (memcmp(o + i, FZ_REQ_PLACEHOLDER, FZ_ID_LEN) == 0)
            memcpy(o + i, live_req, FZ_ID_LEN);
        else if (memcmp(o + i, FZ_STR_PLACEHOLDER, FZ_ID_LEN) == 0)
            memcpy(o + i, live_str, FZ_ID_LEN);
    }
    pthread_mutex_unlock(&mu);
    return o;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!bus)
        LLVMFuzzerInitialize(NULL, NULL);
    psrpc_server_options so = PSRPC_SERVER_OPTIONS_INIT;
    so.server_id = FZ_SERVER_ID;
    so.timeout_ms = 500;
    psrpc_server *srv = NULL;
    FUZZ_ASSERT(psrpc_server_create(&srv, bus, FZ_SERVICE, &so) == PSRPC_OK);
    FUZZ_ASSERT(psrpc_server_register(srv, &m_unary, NULL, 0, unary_handler, unary_affinity, NULL,
                                      NULL, NULL) == PSRPC_OK);
    FUZZ_ASSERT(psrpc_server_register(srv, &m_queue, NULL, 0, unary_handler, NULL, NULL, NULL,
                                      NULL) == PSRPC_OK);
    FUZZ_ASSERT(psrpc_server_register_stream(srv, &m_stream, NULL, 0, stream_handler,
                                             unary_affinity, NULL, NULL, NULL) == PSRPC_OK);
    FUZZ_ASSERT(psrpc_server_wait_ready(srv, 5000) == PSRPC_OK);
    psrpc_client_options co = PSRPC_CLIENT_OPTIONS_INIT;
    co.client_id = FZ_CLIENT_ID;
    co.timeout_ms = 2000;
    co.selection_timeout_ms = 1000;
    psrpc_client *cli = NULL;
    FUZZ_ASSERT(psrpc_client_create(&cli, bus, FZ_SERVICE, &co) == PSRPC_OK);

    int calls = 0, nstreams = 0;
    psrpc_stream *streams[MAX_STREAMS];
    pthread_mutex_lock(&mu);
    memset(call_done, 0, sizeof call_done);
    memset(stream_closed, 0, sizeof stream_closed);
    memcpy(live_req, FZ_REQ_PLACEHOLDER, FZ_ID_LEN);
    memcpy(live_str, FZ_STR_PLACEHOLDER, FZ_ID_LEN);
    pthread_mutex_unlock(&mu);

    size_t off = 0;
    int records = 0;
    while (off + 3 <= size && records < 64) {
        unsigned op = data[off] % OP_COUNT;
        size_t len = (size_t)data[off + 1] | (size_t)data[off + 2] << 8;
        off += 3;
        if (len > size - off)
            len = size - off;
        const uint8_t *rec = data + off;
        off += len;
        records++;
        if (op == OP_ACTION) {
            unsigned act = len ? rec[0] % ACT_COUNT : 0;
            const uint8_t *pl = len ? rec + 1 : NULL;
            size_t pn = len ? len - 1 : 0;
            if (act == ACT_OPEN_GHOST_STREAM || act == ACT_OPEN_STREAM) {
                if (nstreams == MAX_STREAMS)
                    continue;
                psrpc_call_options copt = PSRPC_CALL_OPTIONS_INIT;
                copt.timeout_ms = 1000;
                psrpc_stream *st = NULL;
                int rc = psrpc_client_open_stream(
                    &st, cli, act == ACT_OPEN_STREAM ? &m_stream : &m_ghost_stream, &copt, NULL,
                    cli_stream_message, cli_stream_close, (void *)(intptr_t)nstreams, NULL);
                FUZZ_ASSERT(rc == PSRPC_OK);
                if (pn)
                    psrpc_stream_send(st, pl, pn, 0, NULL, NULL);
                streams[nstreams++] = st;
            } else {
                if (calls == MAX_CALLS)
                    continue;
                const psrpc_method *m = act == ACT_CALL_GHOST   ? &m_ghost
                                        : act == ACT_CALL_QUEUE ? &m_queue
                                                                : &m_unary;
                uint64_t id;
                int rc =
                    psrpc_client_call(&id, cli, m, pl, pn, NULL, call_cb, (void *)(intptr_t)calls);
                FUZZ_ASSERT(rc == PSRPC_OK);
                calls++;
            }
        } else {
            uint8_t *b = substitute(rec, len);
            FUZZ_ASSERT(psrpc__bus_inject(bus, &chans[op], b, len) == PSRPC_OK);
            free(b);
        }
        settle();
    }

    closed_wait cw = {false}, sw = {false};
    FUZZ_ASSERT(psrpc_client_close(cli, closed_cb, &cw) == PSRPC_OK);
    wait_closed(&cw);
    FUZZ_ASSERT(psrpc_server_close(srv, PSRPC_CLOSE_FORCE, closed_cb, &sw) == PSRPC_OK);
    wait_closed(&sw);
    settle();
    /* Nothing stays open once both sides are closed. */
    psrpc_bus_stats stats;
    memset(&stats, 0, sizeof stats);
    stats.struct_size = sizeof stats;
    FUZZ_ASSERT(psrpc_bus_get_stats(bus, &stats) == PSRPC_OK);
    if (stats.streams_open != 0 || stats.requests_in_flight != 0) {
        fprintf(stderr, "fuzz_dispatch: %llu streams open, %llu requests in flight after close\n",
                (unsigned long long)stats.streams_open,
                (unsigned long long)stats.requests_in_flight);
        abort();
    }
    pthread_mutex_lock(&mu);
    for (int i = 0; i < calls; i++)
        FUZZ_ASSERT(call_done[i] == 1);
    for (int i = 0; i < nstreams; i++)
        FUZZ_ASSERT(stream_closed[i] == 1);
    pthread_mutex_unlock(&mu);
    for (int i = 0; i < nstreams; i++)
        psrpc_stream_free(streams[i]);
    psrpc_client_free(cli);
    psrpc_server_free(srv);
    return 0;
}
