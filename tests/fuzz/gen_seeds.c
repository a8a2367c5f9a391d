/* Seed generator for the fuzz corpora (tests/fuzz/make_seeds.sh runs it):
 * captures the envelopes of a real exchange between a client and a server on
 * an in-process bus (unary calls that succeed, fail and are compressed, a
 * queue call, a stream with messages, acks and a close), each on the channel
 * it travelled, and writes:
 *   corpus/fuzz_envelope/cap_*   each captured envelope as it was
 *   corpus/fuzz_dispatch/cap_*   sessions replaying the server-bound and the
 *                                client-bound traffic (ids replaced by the
 *                                placeholders, expiry moved to 2100)
 *   corpus/fuzz_redis/cap_*      the rewritten envelopes as RESP pub/sub pushes
 *   corpus/fuzz_nats/cap_*       the rewritten envelopes as NATS MSG frames
 * Usage: fuzz_gen_seeds CORPUS_DIR. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bus.h"
#include "common.h"
#include "fuzz_dispatch.h"
#include "wire.h"

#define DIE(...)                                    \
    do {                                            \
        fprintf(stderr, "gen_seeds: " __VA_ARGS__); \
        fputc('\n', stderr);                        \
        exit(1);                                    \
    } while (0)

#define MAX_CAP 256
typedef struct cap {
    int op;
    psrpc_msg *bytes;
} cap;
static cap caps[MAX_CAP];
static int ncaps;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static psrpc_bus *bus;
static psrpc__channel chans[OP_ACTION];
static const char *dir;

static void spy_deliver(void *ctx, const uint8_t *data, size_t len) {
    pthread_mutex_lock(&mu);
    if (ncaps < MAX_CAP) {
        caps[ncaps].op = (int)(intptr_t)ctx;
        psrpc_msg_new(&caps[ncaps].bytes, data, len);
        ncaps++;
    }
    pthread_mutex_unlock(&mu);
}
static void spy_ready(void *ctx, int status, const char *message) {
    (void)ctx;
    (void)status;
    (void)message;
}
static psrpc__bus_sub *subs[OP_ACTION];
static void spy_task(void *arg) {
    (void)arg;
    for (int i = 0; i < OP_ACTION; i++)
        subs[i] = psrpc__bus_subscribe(bus, &chans[i], false, spy_deliver, spy_ready,
                                       (void *)(intptr_t)i);
}
static void unspy_task(void *arg) {
    (void)arg;
    for (int i = 0; i < OP_ACTION; i++)
        psrpc__bus_unsubscribe(bus, subs[i]);
}

static void handler(psrpc_request *r, void *ud) {
    (void)ud;
    const psrpc_msg *p = psrpc_request_payload(r);
    if (psrpc_msg_size(p) && psrpc_msg_data(p)[0] == 1)
        psrpc_request_fail(r, PSRPC_NOT_FOUND, "fuzz: not found");
    else
        psrpc_request_respond(r, psrpc_msg_data(p), psrpc_msg_size(p));
}
static void affinity(psrpc_request *r, void *ud) {
    (void)ud;
    psrpc_request_claim(r, 1.0f);
}
static int s_msg(psrpc_stream *st, const psrpc_msg *m, void *ud) {
    (void)ud;
    psrpc_stream_send(st, psrpc_msg_data(m), psrpc_msg_size(m), 0, NULL, NULL);
    return 0;
}
static void s_close(psrpc_stream *st, const psrpc_error *e, void *ud) {
    (void)st;
    (void)e;
    (void)ud;
}
static void s_release(void *ud) { psrpc_stream_free(ud); }
static void s_handler(psrpc_stream *st, void *ud) {
    (void)ud;
    psrpc_stream_set_callbacks(st, s_msg, s_close, st, s_release);
}
static int c_msg(psrpc_stream *st, const psrpc_msg *m, void *ud) {
    (void)st;
    (void)m;
    (void)ud;
    return 0;
}
static void c_close(psrpc_stream *st, const psrpc_error *e, void *ud) {
    (void)st;
    (void)e;
    (void)ud;
}

static void write_file(const char *sub, const char *name, const uint8_t *a, size_t an,
                       const uint8_t *b, size_t bn) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s/%s", dir, sub, name);
    FILE *f = fopen(path, "wb");
    if (!f)
        DIE("cannot write %s", path);
    fwrite(a, 1, an, f);
    if (bn)
        fwrite(b, 1, bn, f);
    fclose(f);
}

/* A captured envelope with its ids replaced by the placeholders and its
 * expiry moved to 2100. */
static psrpc_msg *rewrite(const psrpc_msg *in, int *kind) {
    psrpc__envelope env;
    if (psrpc__envelope_decode(&env, in->data, in->len, 0) != 0)
        DIE("captured bytes do not decode");
    static const ProtobufCMessageDescriptor *descs[] = {
        &internal__request__descriptor, &internal__response__descriptor,
        &internal__claim_request__descriptor, &internal__claim_response__descriptor,
        &internal__stream__descriptor};
    const int64_t far = 4102444800LL * 1000000000LL;
    ProtobufCMessage *m = NULL;
    for (int i = 0; i < 5 && !m; i++)
        if (psrpc__wire_unpack(&m, &env, descs[i]) == 0)
            *kind = i;
    if (!m)
        DIE("captured %s does not unpack", env.type_name);
    char req[] = FZ_REQ_PLACEHOLDER, str[] = FZ_STR_PLACEHOLDER;
    switch (*kind) {
    case 0:
        ((Internal__Request *)m)->request_id = req;
        ((Internal__Request *)m)->expiry = far;
        break;
    case 1:
        ((Internal__Response *)m)->request_id = req;
        break;
    case 2:
        ((Internal__ClaimRequest *)m)->request_id = req;
        break;
    case 3:
        ((Internal__ClaimResponse *)m)->request_id = req;
        break;
    case 4:
        ((Internal__Stream *)m)->request_id = req;
        ((Internal__Stream *)m)->stream_id = str;
        ((Internal__Stream *)m)->expiry = far;
        break;
    }
    psrpc_msg *out = NULL;
    if (psrpc__wire_wrap_message(&out, m, env.channel[0] ? env.channel : NULL, 64) != 0)
        DIE("re-wrap failed");
    psrpc__wire_free(m);
    psrpc__envelope_clear(&env);
    return out;
}

typedef struct buf {
    uint8_t *p;
    size_t n, cap;
} buf;
static void put(buf *b, const void *d, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2;
        b->p = realloc(b->p, b->cap);
        if (!b->p)
            DIE("out of memory");
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
}
static void record(buf *b, int op, const uint8_t *d, size_t n) {
    uint8_t h[3] = {(uint8_t)op, (uint8_t)(n & 0xFF), (uint8_t)(n >> 8)};
    put(b, h, 3);
    put(b, d, n);
}

int main(int argc, char **argv) {
    if (argc != 2)
        DIE("usage: fuzz_gen_seeds CORPUS_DIR");
    dir = argv[1];
    psrpc_bus_options o = PSRPC_BUS_OPTIONS_INIT;
    o.max_message_size = 65536;
    o.compress_threshold = 64;
    if (psrpc_bus_open(&bus, "local://", &o) != PSRPC_OK)
        DIE("bus");
    psrpc__channel_rpc(&chans[OP_SRV_REQUEST], FZ_SERVICE, "Unary", NULL, 0, false);
    psrpc__channel_rpc(&chans[OP_SRV_QUEUE], FZ_SERVICE, "Queue", NULL, 0, true);
    psrpc__channel_claim_response(&chans[OP_SRV_RCLAIM], FZ_SERVICE, "Unary", NULL, 0);
    psrpc__channel_stream_server(&chans[OP_SRV_STREAM], FZ_SERVICE, "Stream", NULL, 0);
    psrpc__channel_client_response(&chans[OP_CLI_RESPONSE], FZ_SERVICE, FZ_CLIENT_ID);
    psrpc__channel_client_claim(&chans[OP_CLI_CLAIM], FZ_SERVICE, FZ_CLIENT_ID);
    psrpc__channel_client_stream(&chans[OP_CLI_STREAM], FZ_SERVICE, FZ_CLIENT_ID);
    psrpc__channel_claim_response(&chans[OP_SRV_SRCLAIM], FZ_SERVICE, "Stream", NULL, 0);
    psrpc__bus_post(bus, spy_task, NULL);
    usleep(100000);

    psrpc_server_options so = PSRPC_SERVER_OPTIONS_INIT;
    so.server_id = FZ_SERVER_ID;
    psrpc_server *srv = NULL;
    psrpc_method mu_ = {sizeof(psrpc_method), PSRPC_ROUTING_AFFINITY, 0, 0, "Unary", NULL};
    psrpc_method mq = {sizeof(psrpc_method), PSRPC_ROUTING_QUEUE, 0, 0, "Queue", NULL};
    psrpc_method ms = {
        sizeof(psrpc_method), PSRPC_ROUTING_AFFINITY, PSRPC_METHOD_STREAM, 0, "Stream", NULL};
    if (psrpc_server_create(&srv, bus, FZ_SERVICE, &so) != PSRPC_OK ||
        psrpc_server_register(srv, &mu_, NULL, 0, handler, affinity, NULL, NULL, NULL) !=
            PSRPC_OK ||
        psrpc_server_register(srv, &mq, NULL, 0, handler, NULL, NULL, NULL, NULL) != PSRPC_OK ||
        psrpc_server_register_stream(srv, &ms, NULL, 0, s_handler, affinity, NULL, NULL, NULL) !=
            PSRPC_OK ||
        psrpc_server_wait_ready(srv, 5000) != PSRPC_OK)
        DIE("server");
    psrpc_client_options co = PSRPC_CLIENT_OPTIONS_INIT;
    co.client_id = FZ_CLIENT_ID;
    psrpc_client *cli = NULL;
    if (psrpc_client_create(&cli, bus, FZ_SERVICE, &co) != PSRPC_OK)
        DIE("client");
    psrpc_msg *out = NULL;
    uint8_t big[300];
    memset(big, 'z', sizeof big);
    big[0] = 0;
    psrpc_kv md = {"k", "v"};
    psrpc_call_options copt = PSRPC_CALL_OPTIONS_INIT;
    copt.metadata = &md;
    copt.metadata_count = 1;
    if (psrpc_client_call_sync(&out, cli, &mu_, "\0hi", 3, &copt) != PSRPC_OK)
        DIE("unary call: %s", psrpc_last_error());
    psrpc_msg_release(out);
    if (psrpc_client_call_sync(&out, cli, &mu_, "\1no", 3, NULL) == PSRPC_OK)
        DIE("failing call succeeded");
    if (psrpc_client_call_sync(&out, cli, &mu_, big, sizeof big, NULL) != PSRPC_OK)
        DIE("gzip call");
    psrpc_msg_release(out);
    if (psrpc_client_call_sync(&out, cli, &mq, "\0q", 2, NULL) != PSRPC_OK)
        DIE("queue call");
    psrpc_msg_release(out);
    psrpc_stream *st = NULL;
    if (psrpc_client_open_stream(&st, cli, &ms, &copt, NULL, c_msg, c_close, NULL, NULL) !=
        PSRPC_OK)
        DIE("stream");
    psrpc_stream_send(st, "hello", 5, 0, NULL, NULL);
    psrpc_stream_send(st, big, sizeof big, 0, NULL, NULL);
    usleep(300000);
    psrpc_stream_close(st, PSRPC_CANCELED, "done");
    usleep(200000);
    psrpc_stream_free(st);
    psrpc__bus_post(bus, unspy_task, NULL);
    usleep(100000);
    psrpc_client_free(cli);
    psrpc_server_free(srv);

    /* Outputs. */
    buf srv_s = {0}, cli_s = {0}, redis_s = {0}, nats_s = {0};
    put(&redis_s, "", 1);
    char name[64];
    int ghost_started = 0;
    for (int i = 0; i < ncaps; i++) {
        cap *c = &caps[i];
        uint8_t z = 0;
        snprintf(name, sizeof name, "cap_%02d_op%d", i, c->op);
        write_file("fuzz_envelope", name, &z, 1, c->bytes->data, c->bytes->len);
        int kind = -1;
        psrpc_msg *r = rewrite(c->bytes, &kind);
        bool to_server = c->op <= OP_SRV_STREAM || c->op == OP_SRV_SRCLAIM;
        buf one = {0};
        if (to_server) {
            record(&srv_s, c->op, r->data, r->len);
            record(&one, c->op, r->data, r->len);
        } else {
            /* Client-bound: a Ghost call or stream must be waiting for it. */
            uint8_t act = kind == 4 ? ACT_OPEN_GHOST_STREAM : ACT_CALL_GHOST;
            if (kind == 2 || (kind == 4 && !ghost_started) || (kind == 1 && ghost_started != 1)) {
                record(&cli_s, OP_ACTION, &act, 1);
                ghost_started = kind == 4 ? 2 : 1;
            }
            if (kind == 1)
                ghost_started = 0;
            record(&cli_s, c->op, r->data, r->len);
            record(&one, OP_ACTION, &act, 1);
            record(&one, c->op, r->data, r->len);
        }
        write_file("fuzz_dispatch", name, one.p, one.n, NULL, 0);
        free(one.p);

        /* Redis: a pub/sub push on the captured channel's Redis name. */
        char hdr[256];
        const char *chn = chans[c->op].legacy;
        int hn = snprintf(hdr, sizeof hdr, "*3\r\n$7\r\nmessage\r\n$%zu\r\n%s\r\n$%zu\r\n",
                          strlen(chn), chn, r->len);
        buf rb = {0};
        put(&rb, "", 1); /* byte 0: to the subscriber connection */
        put(&rb, hdr, (size_t)hn);
        put(&rb, r->data, r->len);
        put(&rb, "\r\n", 2);
        write_file("fuzz_redis", name, rb.p, rb.n, NULL, 0);
        bool server_bound = c->op <= OP_SRV_STREAM || c->op == OP_SRV_SRCLAIM;
        if (server_bound)
            put(&redis_s, rb.p + 1, rb.n - 1);
        free(rb.p);
        /* NATS: a MSG on the captured channel's subject (sid filled in by the
         * harness: "*"). */
        hn = snprintf(hdr, sizeof hdr, "MSG %s * %zu\r\n", chans[c->op].server, r->len);
        buf nb = {0};
        put(&nb, hdr, (size_t)hn);
        put(&nb, r->data, r->len);
        put(&nb, "\r\n", 2);
        write_file("fuzz_nats", name, nb.p, nb.n, NULL, 0);
        if (server_bound)
            put(&nats_s, nb.p, nb.n);
        free(nb.p);
        psrpc_msg_release(r);
        psrpc_msg_release(c->bytes);
    }
    write_file("fuzz_dispatch", "session_server", srv_s.p, srv_s.n, NULL, 0);
    write_file("fuzz_dispatch", "session_client", cli_s.p, cli_s.n, NULL, 0);
    /* The server-bound traffic in one connection's worth of bytes. */
    write_file("fuzz_redis", "session_server", redis_s.p, redis_s.n, NULL, 0);
    write_file("fuzz_nats", "session_server", nats_s.p, nats_s.n, NULL, 0);
    free(redis_s.p);
    free(nats_s.p);
    free(srv_s.p);
    free(cli_s.p);
    for (int i = 0; i < OP_ACTION; i++)
        psrpc__channel_clear(&chans[i]);
    psrpc_bus_free(bus);
    printf("gen_seeds: %d envelopes captured\n", ncaps);
    return ncaps >= 10 ? 0 : 1;
}
