/* raw_bench — the broker floor of bench/run.sh: the message patterns of a
 * psrpc call as plain pub/sub with the broker's C client (hiredis, nats.c)
 * and no RPC layer.
 *
 *   raw_bench --bus redis://H:P|nats://H:P --role server|client|publisher|subscriber
 *             --scenario pingpong2|pingpong4|fanout [--inflight N] [--payload B]
 *             [--warmup S] [--duration S] [--credit-fd FD] [--credit-fds FD,..]
 *
 *   pingpong2  request → response (a queue request without claims: 2 hops)
 *   pingpong4  request → claim request → claim response → response (4 hops);
 *              the claim messages are small, request and response carry the
 *              payload, as in psrpc
 *   fanout     one publisher, N subscribers (credit pipes as in psrpc_bench)
 *
 * Redis: two connections per process (subscriber, publisher), one thread, a
 * poll loop that writes at once after each batch of input (no next-turn
 * writes). NATS: one connection, send-ASAP (no flusher delay), nats.c's
 * callback thread answers at once. Same line protocol as psrpc_bench. */
#include <hiredis/hiredis.h>
#include <nats/nats.h>
#include <stdbool.h>

#include "bench_common.h"

#define CH_REQ "raw.req"
#define CH_RESP "raw.resp"
#define CH_FAN "raw.fan"
#define MAX_SLOTS 4096

enum { T_REQ = 1, T_CLAIM_REQ = 2, T_CLAIM_RESP = 3, T_RESP = 4 };

static bench_config cfg = {NULL, NULL, "pingpong2", 1, 64, 1.0, 3.0, 0, 1, 3, -1, NULL};

static bool four_hops;
static uint8_t *big, *small; /* message buffers: payload-sized, minimal */
static uint8_t *big_body, *small_body;
static size_t big_len, small_len;

/* Client state (one thread on Redis; nats.c's callback thread on NATS). */
static int64_t slot_t0[MAX_SLOTS];
static atomic_bool measuring, stopping;
static atomic_uint_fast64_t ops;
static hist lat;
static credits cr;
static uint64_t received, measured_rx;

static void die(const char *what, const char *detail) {
    fprintf(stderr, "raw_bench: %s: %s\n", what, detail ? detail : "");
    exit(1);
}

/* What to send in answer to a message of type t (server or client side);
 * returns false if nothing. */
static bool answer(uint8_t type, uint32_t slot, const uint8_t **data, size_t *len,
                   const char **ch) {
    uint8_t *msg, *body;
    size_t n;
    uint8_t out;
    switch (type) {
    case T_REQ: /* server */
        out = four_hops ? T_CLAIM_REQ : T_RESP;
        *ch = CH_RESP;
        break;
    case T_CLAIM_REQ: /* client */
        out = T_CLAIM_RESP;
        *ch = CH_REQ;
        break;
    case T_CLAIM_RESP: /* server */
        out = T_RESP;
        *ch = CH_RESP;
        break;
    default:
        return false;
    }
    bool is_big = out == T_RESP;
    msg = is_big ? big : small;
    body = is_big ? big_body : small_body;
    n = is_big ? big_len : small_len;
    put_u32(body + PAYLOAD_SLOT, slot);
    body[PAYLOAD_TYPE] = out;
    *data = msg;
    *len = n;
    return true;
}

static void record_response(uint32_t slot) {
    if (slot >= MAX_SLOTS)
        return;
    if (atomic_load_explicit(&measuring, memory_order_relaxed)) {
        hist_add_ns(&lat, mono_ns() - slot_t0[slot]);
        atomic_fetch_add_explicit(&ops, 1, memory_order_relaxed);
    }
}

static void record_fan(const uint8_t *body) {
    if (body[PAYLOAD_FLAG]) {
        hist_add_ns(&lat, wall_ns() - get_i64(body + PAYLOAD_TS));
        measured_rx++;
    }
    credit_tick(cfg.credit_fd, &received);
}

/* ------------------------------------------------------------------------ */
/* Redis                                                                     */
/* ------------------------------------------------------------------------ */

static redisContext *r_sub, *r_pub;
static size_t r_pending_pub; /* PUBLISH replies still to read */

static void r_connect(const char *url) {
    char host[256] = "127.0.0.1";
    int port = 6379;
    if (sscanf(url, "redis://%255[^:/]:%d", host, &port) < 1)
        die("url", url);
    r_sub = redisConnect(host, port);
    r_pub = redisConnect(host, port);
    if (!r_sub || r_sub->err || !r_pub || r_pub->err)
        die("redis connect", r_sub && r_sub->err ? r_sub->errstr : "");
}

static void r_subscribe(const char *ch) {
    redisReply *r = redisCommand(r_sub, "SUBSCRIBE %s", ch);
    if (!r)
        die("subscribe", r_sub->errstr);
    freeReplyObject(r);
}

static void r_publish(const char *ch, const uint8_t *data, size_t len) {
    redisAppendCommand(r_pub, "PUBLISH %s %b", ch, data, len);
    r_pending_pub++;
}

static void r_flush(void) {
    int done = 0;
    while (!done)
        if (redisBufferWrite(r_pub, &done) != REDIS_OK)
            die("write", r_pub->errstr);
}

typedef void (*publish_fn)(const char *ch, const uint8_t *data, size_t len);

/* One received payload (its body), either broker: a subscriber records it, a
 * client takes a response and reissues the request of that slot, a server
 * answers. */
static void on_body(const uint8_t *body, publish_fn publish) {
    if (!strcmp(cfg.role, "subscriber")) {
        record_fan(body);
        return;
    }
    uint8_t type = body[PAYLOAD_TYPE];
    uint32_t slot = get_u32(body + PAYLOAD_SLOT);
    if (type == T_RESP) { /* client: done, next request in this slot */
        record_response(slot);
        if (atomic_load_explicit(&stopping, memory_order_relaxed) || slot >= MAX_SLOTS)
            return;
        slot_t0[slot] = mono_ns();
        put_u32(big_body + PAYLOAD_SLOT, slot);
        big_body[PAYLOAD_TYPE] = T_REQ;
        publish(CH_REQ, big, big_len);
        return;
    }
    const uint8_t *d;
    size_t len;
    const char *ch;
    if (answer(type, slot, &d, &len, &ch))
        publish(ch, d, len);
}

/* A pub/sub message: [ "message", channel, payload ]. */
static void r_on_message(redisReply *r) {
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 3 ||
        r->element[2]->type != REDIS_REPLY_STRING)
        return;
    const uint8_t *p = (const uint8_t *)r->element[2]->str;
    size_t n = r->element[2]->len;
    long off = bytesvalue_body(p, n);
    if (off >= 0 && n - (size_t)off >= PAYLOAD_MIN)
        on_body(p + off, r_publish);
}

/* One turn: wait for input (or stdin/timeout), handle it all, write at once.
 * Returns false when stdin closed. */
static bool r_turn(int timeout_ms, bool watch_stdin) {
    struct pollfd pf[3] = {{r_sub->fd, POLLIN, 0}, {r_pub->fd, POLLIN, 0}, {0, POLLIN, 0}};
    int n = poll(pf, watch_stdin ? 3 : 2, timeout_ms);
    if (n <= 0)
        return true;
    if (pf[0].revents) {
        if (redisBufferRead(r_sub) != REDIS_OK)
            die("read", r_sub->errstr);
        void *rep;
        while (redisGetReplyFromReader(r_sub, &rep) == REDIS_OK && rep) {
            r_on_message(rep);
            freeReplyObject(rep);
        }
    }
    if (pf[1].revents) {
        if (redisBufferRead(r_pub) != REDIS_OK)
            die("read", r_pub->errstr);
        void *rep;
        while (redisGetReplyFromReader(r_pub, &rep) == REDIS_OK && rep) {
            freeReplyObject(rep);
            r_pending_pub--;
        }
    }
    r_flush();
    if (watch_stdin && pf[2].revents) {
        char buf[64];
        if (read(0, buf, sizeof buf) <= 0)
            return false;
    }
    return true;
}

static void redis_main(void) {
    r_connect(cfg.url);
    bool client = !strcmp(cfg.role, "client"), server = !strcmp(cfg.role, "server");
    if (server || client)
        r_subscribe(server ? CH_REQ : CH_RESP);
    else if (!strcmp(cfg.role, "subscriber"))
        r_subscribe(CH_FAN);
    emit("READY");
    if (server || !strcmp(cfg.role, "subscriber")) {
        while (r_turn(-1, true)) {
        }
        if (!server)
            emit_result("subscriber", measured_rx, 0, 0, &lat);
        return;
    }
    int64_t warm_end = mono_ns() + (int64_t)(cfg.warmup * 1e9), t0 = 0, end = INT64_MAX;
    uint64_t o0 = 0, published = 0, measured = 0;
    bool started = false;
    if (client) {
        for (int i = 0; i < cfg.inflight; i++) {
            slot_t0[i] = mono_ns();
            put_u32(big_body + PAYLOAD_SLOT, (uint32_t)i);
            big_body[PAYLOAD_TYPE] = T_REQ;
            r_publish(CH_REQ, big, big_len);
        }
        r_flush();
    }
    for (;;) {
        int64_t now = mono_ns();
        if (!started && now >= warm_end) {
            started = true;
            t0 = now;
            end = now + (int64_t)(cfg.duration * 1e9);
            o0 = atomic_load(&ops);
            atomic_store(&measuring, true);
            emit("START");
        }
        if (now >= end)
            break;
        if (client) {
            r_turn(5, false);
            continue;
        }
        /* publisher */
        if (credits_outstanding(&cr, published) >= (uint64_t)cfg.inflight) {
            r_turn(0, false); /* drain PUBLISH replies */
            credits_wait(&cr, 5);
            continue;
        }
        put_i64(big_body + PAYLOAD_TS, wall_ns());
        big_body[PAYLOAD_FLAG] = started;
        r_publish(CH_FAN, big, big_len);
        r_flush();
        published++;
        measured += started;
        if (r_pending_pub > 64)
            r_turn(0, false);
    }
    atomic_store(&measuring, false);
    double elapsed = (double)(mono_ns() - t0) / 1e9;
    emit("END");
    if (client)
        emit_result("client", atomic_load(&ops) - o0, elapsed, 0, &lat);
    else
        emit_result("publisher", measured, elapsed, 0, NULL);
    wait_stdin_eof();
}

/* ------------------------------------------------------------------------ */
/* NATS                                                                      */
/* ------------------------------------------------------------------------ */

static natsConnection *nc;

static void n_pub(const char *subj, const uint8_t *d, size_t len) {
    natsStatus s = natsConnection_Publish(nc, subj, d, (int)len);
    if (s != NATS_OK)
        die("publish", natsStatus_GetText(s));
}

static void n_on_msg(natsConnection *c, natsSubscription *sub, natsMsg *msg, void *closure) {
    (void)c, (void)sub, (void)closure;
    const uint8_t *p = (const uint8_t *)natsMsg_GetData(msg);
    size_t n = (size_t)natsMsg_GetDataLength(msg);
    long off = bytesvalue_body(p, n);
    if (off >= 0 && n - (size_t)off >= PAYLOAD_MIN)
        on_body(p + off, n_pub);
    natsMsg_Destroy(msg);
}

static void nats_main(void) {
    natsOptions *o = NULL;
    natsOptions_Create(&o);
    natsOptions_SetURL(o, cfg.url);
    natsOptions_SetSendAsap(o, true);
    natsStatus s = natsConnection_Connect(&nc, o);
    if (s != NATS_OK)
        die("nats connect", natsStatus_GetText(s));
    bool client = !strcmp(cfg.role, "client"), server = !strcmp(cfg.role, "server");
    natsSubscription *sub = NULL;
    const char *subj = server ? CH_REQ : client ? CH_RESP : CH_FAN;
    if (strcmp(cfg.role, "publisher")) {
        s = natsConnection_Subscribe(&sub, nc, subj, n_on_msg, NULL);
        if (s == NATS_OK)
            s = natsSubscription_SetPendingLimits(sub, -1, -1);
        if (s == NATS_OK)
            s = natsConnection_FlushTimeout(nc, 5000);
        if (s != NATS_OK)
            die("subscribe", natsStatus_GetText(s));
    }
    emit("READY");
    if (server || !strcmp(cfg.role, "subscriber")) {
        wait_stdin_eof();
        if (!server) {
            natsSubscription_Unsubscribe(sub);
            sleep_s(0.05);
            emit_result("subscriber", measured_rx, 0, 0, &lat);
        }
        return;
    }
    if (client) {
        /* The callback thread owns big/big_body from now on; the first
         * requests use their own copies. */
        for (int i = 0; i < cfg.inflight; i++) {
            uint8_t *b, *body;
            size_t len;
            b = make_payload(cfg.payload, &len, &body);
            put_u32(body + PAYLOAD_SLOT, (uint32_t)i);
            body[PAYLOAD_TYPE] = T_REQ;
            slot_t0[i] = mono_ns();
            n_pub(CH_REQ, b, len);
            free(b);
        }
        sleep_s(cfg.warmup);
        uint64_t o0 = atomic_load(&ops);
        int64_t t0 = mono_ns();
        atomic_store(&measuring, true);
        emit("START");
        sleep_s(cfg.duration);
        atomic_store(&measuring, false);
        uint64_t n = atomic_load(&ops) - o0;
        double elapsed = (double)(mono_ns() - t0) / 1e9;
        emit("END");
        atomic_store(&stopping, true);
        sleep_s(0.05);
        emit_result("client", n, elapsed, 0, &lat);
        wait_stdin_eof();
        return;
    }
    /* publisher */
    int64_t warm_end = mono_ns() + (int64_t)(cfg.warmup * 1e9), t0 = 0, end = INT64_MAX;
    uint64_t published = 0, measured = 0;
    bool started = false;
    for (;;) {
        int64_t now = mono_ns();
        if (!started && now >= warm_end) {
            started = true;
            t0 = now;
            end = now + (int64_t)(cfg.duration * 1e9);
            emit("START");
        }
        if (now >= end)
            break;
        if (credits_outstanding(&cr, published) >= (uint64_t)cfg.inflight) {
            credits_wait(&cr, 100);
            continue;
        }
        put_i64(big_body + PAYLOAD_TS, wall_ns());
        big_body[PAYLOAD_FLAG] = started;
        n_pub(CH_FAN, big, big_len);
        published++;
        measured += started;
    }
    double elapsed = (double)(mono_ns() - t0) / 1e9;
    emit("END");
    emit_result("publisher", measured, elapsed, 0, NULL);
    wait_stdin_eof();
}

int main(int argc, char **argv) {
    const char *bad = NULL;
    if (bench_parse_args(&cfg, argc, argv, &bad) != 0)
        die("unknown option or missing value", bad);
    if (!cfg.url || !cfg.role)
        die("usage", "raw_bench --bus URL --role ROLE --scenario S ...");
    if (cfg.inflight < 1 || cfg.inflight > MAX_SLOTS)
        die("inflight", "1..4096");
    four_hops = !strcmp(cfg.scenario, "pingpong4");
    big = make_payload(cfg.payload, &big_len, &big_body);
    small = make_payload(PAYLOAD_MIN, &small_len, &small_body);
    credits_parse(&cr, cfg.credit_fds);
    if (!strncmp(cfg.url, "redis://", 8))
        redis_main();
    else if (!strncmp(cfg.url, "nats://", 7))
        nats_main();
    else
        die("url", cfg.url);
    fflush(stdout);
    _exit(0);
}
