/* Malformed input injection (white box; test plan F1, F3, F4, K7, K10; wire
 * spec 16.8 R1-R4). Raw bytes are published with the bus test hook
 * psrpc__bus_inject on every channel kind the core listens on: a server's
 * request channel (REQ) and claim-response channel (RCLAIM), a client's
 * response (RES) and claim (CLAIM) channels, and a subscription's channel.
 * Undecodable or wrong-typed messages must be dropped and counted exactly
 * (dropped_malformed grows by the number injected), never crash, and the
 * next valid request must still work. */
#include "util.h"

#include "bus.h"
#include "channel.h"
#include "internal.pb-c.h"
#include "wire.h"

enum { K_REQ, K_RCLAIM, K_RES, K_CLAIM, K_SUB, K_COUNT };
static const char *const kind_name[K_COUNT] = {"REQ", "RCLAIM", "RES", "CLAIM", "SUB"};

typedef struct mfx {
    psrpc_bus *bus[4]; /* 0 server + publisher, 1 client, 2 subscriber, 3 rogue peer */
    tu_srv *srv;
    psrpc_client *cl;
    psrpc_server *pub;
    psrpc_client *subcl;
    psrpc_sub *sub;
    atomic_int sub_msgs;
    atomic_int sub_released;
    char svc[64], subsvc[64];
    psrpc__channel ch[K_COUNT];
    psrpc_bus *receiver[K_COUNT];
} mfx;

static psrpc_method echo(void) { return tu_method("Echo", PSRPC_ROUTING_QUEUE, 0); }
static psrpc_method updates(void) {
    psrpc_method m = tu_method("Updates", PSRPC_ROUTING_MULTI, PSRPC_METHOD_SUBSCRIPTION);
    m.output_type = "test.Update";
    return m;
}

static void sub_cb(psrpc_sub *s, const psrpc_msg *m, void *ud) {
    (void)s, (void)m;
    atomic_fetch_add(&((mfx *)ud)->sub_msgs, 1);
}
static void sub_release(void *ud) { atomic_fetch_add(&((mfx *)ud)->sub_released, 1); }

static mfx *mfx_new(const psrpc_bus_options *server_bus_opts) {
    mfx *f = (mfx *)calloc(1, sizeof *f);
    tu_service(f->svc, sizeof f->svc);
    tu_service(f->subsvc, sizeof f->subsvc);
    if (server_bus_opts) {
        /* the server bus gets its own options; all four still connected */
        char url[256];
        if (tu_is_local()) {
            char name[64];
            tu_unique(name, sizeof name, "mb");
            snprintf(url, sizeof url, "local://%s", name);
        } else {
            snprintf(url, sizeof url, "%s", tu_bus_url());
        }
        for (int i = 0; i < 4; i++)
            if (!(f->bus[i] = tu_open_bus_opts(url, i == 0 ? server_bus_opts : NULL)))
                return f;
    } else if (open_bus_group(f->bus, 4) != 0) {
        return f;
    }
    f->srv = tu_srv_new(f->bus[0], f->svc, NULL, TU_ECHO);
    psrpc_method m = echo();
    if (!f->srv->server || tu_srv_register(f->srv, &m, NULL, 0) != PSRPC_OK)
        return f;
    if (!(f->cl = tu_client(f->bus[1], f->svc, 3000, 500)))
        return f;
    if (psrpc_server_create(&f->pub, f->bus[0], f->subsvc, NULL) != PSRPC_OK)
        return f;
    if (!(f->subcl = tu_client(f->bus[2], f->subsvc, 0, 0)))
        return f;
    psrpc_method um = updates();
    if (psrpc_client_subscribe(&f->sub, f->subcl, &um, NULL, 0, sub_cb, NULL, f, sub_release) !=
            PSRPC_OK ||
        psrpc_sub_wait_ready(f->sub, tu_ms(5000)) != PSRPC_OK) {
        f->sub = NULL;
        return f;
    }
    const char *cid = psrpc_client_id(f->cl);
    if (psrpc__channel_rpc(&f->ch[K_REQ], f->svc, "Echo", NULL, 0, true) ||
        psrpc__channel_claim_response(&f->ch[K_RCLAIM], f->svc, "Echo", NULL, 0) ||
        psrpc__channel_client_response(&f->ch[K_RES], f->svc, cid) ||
        psrpc__channel_client_claim(&f->ch[K_CLAIM], f->svc, cid) ||
        psrpc__channel_rpc(&f->ch[K_SUB], f->subsvc, "Updates", NULL, 0, false)) {
        f->sub = NULL;
        return f;
    }
    /* one call first, so the client's reply channels are surely subscribed */
    tu_call *c = tu_calls_new(1);
    psrpc_method em = echo();
    bool warm = tu_call_wait(f->cl, &em, "warm-up", NULL, c, 5000) && c->status == PSRPC_OK;
    free(c); /* completed: no later callback */
    /* the handler counts a request after answering it: wait for that count
     * before starting from zero */
    WAIT_UNTIL(atomic_load(&f->srv->handled) >= 1, 2000);
    atomic_store(&f->srv->handled, 0);
    if (!warm) {
        f->sub = NULL;
        return f;
    }
    f->receiver[K_REQ] = f->bus[0];
    f->receiver[K_RCLAIM] = f->bus[0];
    f->receiver[K_RES] = f->bus[1];
    f->receiver[K_CLAIM] = f->bus[1];
    f->receiver[K_SUB] = f->bus[2];
    return f;
}

static bool mfx_ok(mfx *f) { return f->sub != NULL; }

static void mfx_free(mfx *f) {
    for (int k = 0; k < K_COUNT; k++)
        psrpc__channel_clear(&f->ch[k]);
    psrpc_sub_free(f->sub);
    psrpc_client_free(f->subcl);
    psrpc_client_free(f->cl);
    psrpc_server_free(f->pub);
    if (f->srv)
        psrpc_server_free(f->srv->server);
    for (int i = 0; i < 4; i++)
        psrpc_bus_free(f->bus[i]);
    tu_srv_destroy(f->srv);
    free(f);
}

static int inject(mfx *f, int kind, const void *data, size_t len) {
    int rc = psrpc__bus_inject(f->bus[3], &f->ch[kind], data, len);
    if (rc != PSRPC_OK)
        fprintf(stderr, "  inject on %s failed: %d\n", kind_name[kind], rc);
    return rc;
}

/* After injections: a unary call works and a publication arrives. */
static void check_still_working(mfx *f) {
    tu_call *c = tu_calls_new(1);
    psrpc_method m = echo();
    CHECK(tu_call_wait(f->cl, &m, "still alive", NULL, c, 5000));
    CHECK_EQ_INT(c->status, PSRPC_OK);
    CHECK_EQ_STR(c->response, "still alive");
    int before = atomic_load(&f->sub_msgs);
    psrpc_method um = updates();
    CHECK_EQ_INT(psrpc_server_publish(f->pub, &um, NULL, 0, "update", 6), PSRPC_OK);
    CHECK(WAIT_UNTIL(atomic_load(&f->sub_msgs) == before + 1, 3000));
    th_sleep_ms(50);
    CHECK_EQ_INT(atomic_load(&c->count), 1);
    free(c);
}

/* Waits until the receiver's counter field grew by exactly n (and stays). */
#define STAT_FIELD(bus, field) (tu_stats(bus).field)
static bool grew_by(psrpc_bus *bus, size_t off, uint64_t base, uint64_t n) {
    long long deadline = th_now_ms() + tu_ms(5000);
    uint64_t v = 0;
    for (;;) {
        psrpc_bus_stats s = tu_stats(bus);
        memcpy(&v, (const char *)&s + off, sizeof v);
        if (v - base >= n || th_now_ms() > deadline)
            break;
        th_sleep_ms(2);
    }
    th_sleep_ms(100);
    psrpc_bus_stats s = tu_stats(bus);
    memcpy(&v, (const char *)&s + off, sizeof v);
    if (v - base != n)
        fprintf(stderr, "  counter grew by %llu, expected %llu\n", (unsigned long long)(v - base),
                (unsigned long long)n);
    return v - base == n;
}
#define OFF(field) offsetof(psrpc_bus_stats, field)

static uint32_t seed_now(void) { return (uint32_t)getpid() * 2654435761u ^ (uint32_t)th_now_ms(); }

/* ------------------------------------------------------------------------ */
/* Golden (valid) envelopes per channel kind                                  */
/* ------------------------------------------------------------------------ */

static int64_t now_ns(void) { return tu_now_ns(); }

/* key: the NATS router key to write into Msg.channel, as the core does for
 * SRV channels (NULL: none; such a message cannot be routed on NATS). */
static psrpc_msg *wrap_key(const ProtobufCMessage *m, const char *key) {
    psrpc_msg *out = NULL;
    if (psrpc__wire_wrap_message(&out, m, key, 0) != 0)
        return NULL;
    return out;
}

/* A valid envelope of the channel's own type. routed: with the channel's
 * router key, exactly as a peer would publish it; otherwise without (only
 * type URL and value, so that every truncation is invalid). */
static psrpc_msg *golden_r(mfx *f, int kind, const char *rid, bool routed) {
    const char *key = routed ? f->ch[kind].local : NULL;
#define wrap(m) wrap_key((m), key)
    switch (kind) {
    case K_REQ: {
        Internal__Request r = INTERNAL__REQUEST__INIT;
        r.request_id = (char *)rid;
        r.client_id = (char *)psrpc_client_id(f->cl);
        r.sent_at = now_ns();
        r.expiry = now_ns() + 5000000000LL;
        r.raw_request.data = (uint8_t *)"golden";
        r.raw_request.len = 6;
        return wrap(&r.base);
    }
    case K_RCLAIM: {
        Internal__ClaimResponse r = INTERNAL__CLAIM_RESPONSE__INIT;
        r.request_id = (char *)rid;
        r.server_id = (char *)"SRV_nobodynobody";
        return wrap(&r.base);
    }
    case K_RES: {
        Internal__Response r = INTERNAL__RESPONSE__INIT;
        r.request_id = (char *)rid;
        r.server_id = (char *)"SRV_nobodynobody";
        r.sent_at = now_ns();
        r.raw_response.data = (uint8_t *)"golden";
        r.raw_response.len = 6;
        return wrap(&r.base);
    }
    case K_CLAIM: {
        Internal__ClaimRequest r = INTERNAL__CLAIM_REQUEST__INIT;
        r.request_id = (char *)rid;
        r.server_id = (char *)"SRV_nobodynobody";
        r.affinity = 1.0f;
        return wrap(&r.base);
    }
    default: {
        psrpc_msg *out = NULL;
        if (psrpc__wire_wrap(&out, "test.Update", (const uint8_t *)"golden update", 13, key, 0))
            return NULL;
        return out;
    }
    }
#undef wrap
}

static psrpc_msg *golden(mfx *f, int kind, const char *rid) { return golden_r(f, kind, rid, true); }

/* Encodes internal.Msg{type_url = raw bytes (not checked), value} by hand. */
static size_t put_varint(uint8_t *o, size_t v) {
    size_t i = 0;
    while (v >= 0x80) {
        o[i++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    o[i++] = (uint8_t)v;
    return i;
}

static psrpc_msg *raw_msg(const char *type_url, const uint8_t *value, size_t vlen) {
    size_t tl = strlen(type_url);
    uint8_t *b = (uint8_t *)malloc(tl + vlen + 32);
    size_t n = 0;
    b[n++] = 0x0a;
    n += put_varint(b + n, tl);
    memcpy(b + n, type_url, tl);
    n += tl;
    b[n++] = 0x12;
    n += put_varint(b + n, vlen);
    if (vlen)
        memcpy(b + n, value, vlen);
    n += vlen;
    psrpc_msg *m = NULL;
    psrpc_msg_new(&m, b, n);
    free(b);
    return m;
}

/* Prepends an unknown field (15, bytes) holding a per-injection nonce, so
 * that no two injections are byte-identical: on Redis, queue subscribers get
 * identical payloads once per 5 s (quirk Q12), across runs too. Consumes m. */
static atomic_int nonce_counter;
#define NONCE_FIELD_LEN 22 /* tag + length + 20 characters */
static psrpc_msg *with_nonce(psrpc_msg *m) {
    if (!m)
        return NULL;
    size_t n = psrpc_msg_size(m);
    uint8_t *b = (uint8_t *)malloc(n + NONCE_FIELD_LEN);
    char nonce[32];
    snprintf(nonce, sizeof nonce, "%08x%06x%06d", (unsigned)getpid(),
             (unsigned)(th_now_ms() & 0xffffff), atomic_fetch_add(&nonce_counter, 1) % 1000000);
    b[0] = 0x7a;
    b[1] = 20;
    memcpy(b + 2, nonce, 20);
    memcpy(b + NONCE_FIELD_LEN, psrpc_msg_data(m), n);
    psrpc_msg *out = NULL;
    psrpc_msg_new(&out, b, n + NONCE_FIELD_LEN);
    free(b);
    psrpc_msg_release(m);
    return out;
}

/* Length of the Msg's leading type_url field (tag + varint length + bytes). */
static size_t type_url_field_len(const psrpc_msg *m) {
    const uint8_t *d = psrpc_msg_data(m);
    size_t n = psrpc_msg_size(m);
    if (n < 2 || d[0] != 0x0a)
        return 0;
    size_t len = 0, i = 1;
    int shift = 0;
    while (i < n) {
        len |= (size_t)(d[i] & 0x7f) << shift;
        shift += 7;
        if (!(d[i++] & 0x80))
            break;
    }
    return i + len;
}

/* ------------------------------------------------------------------------ */

/* F1: random blobs (0-4 KiB) on every channel kind: each dropped and counted
 * as malformed on the receiving bus. */
TEST(malformed_random_blobs_every_channel) {
    mfx *f = mfx_new(NULL);
    REQUIRE(mfx_ok(f));
    unsigned seed = seed_now();
    enum { N = 200 };
    static uint8_t buf[4096];
    for (int k = 0; k < K_COUNT; k++) {
        uint64_t base = tu_stats(f->receiver[k]).dropped_malformed;
        int sent = 0;
        for (int i = 0; i < N; i++) {
            /* unique bytes (quirk Q12): at least 16 random ones, except one
             * empty message on the channels that are not queue-subscribed */
            size_t len = 16 + (size_t)(rand_r(&seed) % (sizeof buf - 16));
            if (i == 0 && k != K_REQ)
                len = 0;
            for (size_t j = 0; j < len; j++)
                buf[j] = (uint8_t)rand_r(&seed);
            /* never a well-formed Msg by accident: start with an invalid tag */
            if (len)
                buf[0] = (uint8_t)(0x07 | (rand_r(&seed) & 0xf0)); /* wire type 7 */
            sent += inject(f, k, buf, len) == PSRPC_OK;
        }
        CHECK_EQ_INT(sent, N);
        if (!grew_by(f->receiver[k], OFF(dropped_malformed), base, (uint64_t)sent)) {
            fprintf(stderr, "  kind %s\n", kind_name[k]);
            CHECK(0);
        }
    }
    CHECK_EQ_INT(atomic_load(&f->srv->handled), 0);
    CHECK_EQ_INT(atomic_load(&f->sub_msgs), 0);
    check_still_working(f);
    mfx_free(f);
}

/* Fully random bytes (any first byte): never a crash, at most one drop per
 * injection, and everything keeps working. */
TEST(malformed_unconstrained_random_bytes) {
    mfx *f = mfx_new(NULL);
    REQUIRE(mfx_ok(f));
    unsigned seed = seed_now();
    static uint8_t buf[2048];
    for (int k = 0; k < K_COUNT; k++) {
        uint64_t base = tu_stats(f->receiver[k]).dropped_malformed;
        for (int i = 0; i < 300; i++) {
            size_t len = (size_t)(rand_r(&seed) % sizeof buf);
            for (size_t j = 0; j < len; j++)
                buf[j] = (uint8_t)rand_r(&seed);
            inject(f, k, buf, len);
        }
        th_sleep_ms(200);
        uint64_t grew = tu_stats(f->receiver[k]).dropped_malformed - base;
        CHECK(grew <= 300);
        CHECK(grew >= 250); /* random bytes are almost never a valid envelope */
    }
    check_still_working(f);
    mfx_free(f);
}

/* F1: every truncation of a valid envelope of the channel's own type (except
 * the cut right after the type URL, which leaves a well-formed envelope with
 * an empty payload): dropped and counted. */
TEST(malformed_truncated_envelopes) {
    mfx *f = mfx_new(NULL);
    REQUIRE(mfx_ok(f));
    for (int k = 0; k < K_COUNT; k++) {
        char rid[64];
        tu_unique(rid, sizeof rid, "REQ_trunc");
        psrpc_msg *g = golden_r(f, k, rid, false);
        REQUIRE(g);
        size_t boundary = type_url_field_len(g);
        CHECK(boundary > 0 && boundary < psrpc_msg_size(g));
        boundary += NONCE_FIELD_LEN;
        g = with_nonce(g);
        REQUIRE(g);
        size_t n = psrpc_msg_size(g);
        uint64_t base = tu_stats(f->receiver[k]).dropped_malformed;
        int sent = 0;
        for (size_t len = 1; len < n; len++) {
            if (len == boundary)
                continue;
            sent += inject(f, k, psrpc_msg_data(g), len) == PSRPC_OK;
        }
        if (!grew_by(f->receiver[k], OFF(dropped_malformed), base, (uint64_t)sent)) {
            fprintf(stderr, "  kind %s (%d truncations of %zu bytes)\n", kind_name[k], sent, n);
            CHECK(0);
        }
        psrpc_msg_release(g);
    }
    CHECK_EQ_INT(atomic_load(&f->srv->handled), 0);
    CHECK_EQ_INT(atomic_load(&f->sub_msgs), 0);
    check_still_working(f);
    mfx_free(f);
}

/* Wrong-typed, well-formed envelopes: every other type on each channel is
 * dropped and counted (wire spec Q1/R2). */
TEST(malformed_wrong_typed_envelopes) {
    mfx *f = mfx_new(NULL);
    REQUIRE(mfx_ok(f));
    const char *types[] = {"internal.Request",
                           "internal.Response",
                           "internal.ClaimRequest",
                           "internal.ClaimResponse",
                           "internal.Stream",
                           "test.Update",
                           "test.Other",
                           "google.protobuf.Empty",
                           ""};
    const char *own[K_COUNT] = {"internal.Request", "internal.ClaimResponse", "internal.Response",
                                "internal.ClaimRequest", "test.Update"};
    for (int k = 0; k < K_COUNT; k++) {
        uint64_t base = tu_stats(f->receiver[k]).dropped_malformed;
        int sent = 0;
        for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
            if (strcmp(types[t], own[k]) == 0)
                continue;
            /* a payload that is a valid message of most types: empty */
            char url[128];
            snprintf(url, sizeof url, "type.googleapis.com/%s", types[t]);
            psrpc_msg *m = with_nonce(raw_msg(url, (const uint8_t *)"", 0));
            REQUIRE(m);
            sent += inject(f, k, psrpc_msg_data(m), psrpc_msg_size(m)) == PSRPC_OK;
            psrpc_msg_release(m);
            /* and the golden message of the channel, relabelled */
            char rid[64];
            tu_unique(rid, sizeof rid, "REQ_wt");
            psrpc_msg *g = golden(f, (k + 1) % K_COUNT, rid);
            REQUIRE(g);
            psrpc__envelope env;
            REQUIRE(psrpc__envelope_decode(&env, psrpc_msg_data(g), psrpc_msg_size(g), 1 << 20) ==
                    0);
            m = with_nonce(raw_msg(url, env.value, env.value_len));
            REQUIRE(m);
            psrpc__envelope_clear(&env);
            psrpc_msg_release(g);
            sent += inject(f, k, psrpc_msg_data(m), psrpc_msg_size(m)) == PSRPC_OK;
            psrpc_msg_release(m);
        }
        if (!grew_by(f->receiver[k], OFF(dropped_malformed), base, (uint64_t)sent)) {
            fprintf(stderr, "  kind %s\n", kind_name[k]);
            CHECK(0);
        }
    }
    CHECK_EQ_INT(atomic_load(&f->srv->handled), 0);
    CHECK_EQ_INT(atomic_load(&f->sub_msgs), 0);
    check_still_working(f);
    mfx_free(f);
}

/* Right type, undecodable payload (garbage inside the Any value) and invalid
 * UTF-8 in the control messages' strings: dropped and counted. */
TEST(malformed_bad_inner_payload_and_utf8) {
    mfx *f = mfx_new(NULL);
    REQUIRE(mfx_ok(f));
    const char *own[4] = {"internal.Request", "internal.ClaimResponse", "internal.Response",
                          "internal.ClaimRequest"};
    static const uint8_t garbage[] = {0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01};
    for (int k = 0; k < 4; k++) {
        uint64_t base = tu_stats(f->receiver[k]).dropped_malformed;
        psrpc_msg *m = NULL;
        REQUIRE(psrpc__wire_wrap(&m, own[k], garbage, sizeof garbage, NULL, 0) == 0);
        m = with_nonce(m);
        REQUIRE(m);
        int sent = inject(f, k, psrpc_msg_data(m), psrpc_msg_size(m)) == PSRPC_OK;
        psrpc_msg_release(m);

        /* invalid UTF-8 in a string field, packed by hand */
        uint8_t inner[256];
        size_t il = 0;
        ProtobufCMessage *pm = NULL;
        Internal__Request rq = INTERNAL__REQUEST__INIT;
        Internal__ClaimResponse crs = INTERNAL__CLAIM_RESPONSE__INIT;
        Internal__Response rs = INTERNAL__RESPONSE__INIT;
        Internal__ClaimRequest crq = INTERNAL__CLAIM_REQUEST__INIT;
        char bad[] = "REQ_\xff\xfe\xc0\xaf";
        char cid[64];
        snprintf(cid, sizeof cid, "%s", psrpc_client_id(f->cl));
        switch (k) {
        case K_REQ:
            rq.request_id = bad;
            rq.client_id = cid;
            rq.sent_at = now_ns();
            rq.expiry = now_ns() + 5000000000LL;
            pm = &rq.base;
            break;
        case K_RCLAIM:
            crs.request_id = bad;
            crs.server_id = (char *)"SRV_x";
            pm = &crs.base;
            break;
        case K_RES:
            rs.request_id = bad;
            rs.server_id = (char *)"SRV_x";
            pm = &rs.base;
            break;
        default:
            crq.request_id = bad;
            crq.server_id = (char *)"SRV_x";
            crq.affinity = 1;
            pm = &crq.base;
            break;
        }
        il = protobuf_c_message_pack(pm, inner);
        REQUIRE(psrpc__wire_wrap(&m, own[k], inner, il, NULL, 0) == 0);
        m = with_nonce(m);
        REQUIRE(m);
        sent += inject(f, k, psrpc_msg_data(m), psrpc_msg_size(m)) == PSRPC_OK;
        psrpc_msg_release(m);

        /* invalid UTF-8 in the envelope's own type URL */
        m = with_nonce(raw_msg("type.googleapis.com/internal.\xff", inner, il));
        REQUIRE(m);
        sent += inject(f, k, psrpc_msg_data(m), psrpc_msg_size(m)) == PSRPC_OK;
        psrpc_msg_release(m);
        if (!grew_by(f->receiver[k], OFF(dropped_malformed), base, (uint64_t)sent)) {
            fprintf(stderr, "  kind %s\n", kind_name[k]);
            CHECK(0);
        }
    }
    CHECK_EQ_INT(atomic_load(&f->srv->handled), 0);
    check_still_working(f);
    mfx_free(f);
}

/* Bit-flip mutants of valid envelopes: no crash, each counted at most once,
 * and everything keeps working. (Some mutants are valid messages, so there
 * is no exact count.) */
TEST(malformed_bit_flips) {
    mfx *f = mfx_new(NULL);
    REQUIRE(mfx_ok(f));
    unsigned seed = seed_now();
    for (int k = 0; k < K_COUNT; k++) {
        uint64_t base = tu_stats(f->receiver[k]).dropped_malformed;
        for (int i = 0; i < 200; i++) {
            char rid[64];
            tu_unique(rid, sizeof rid, "REQ_bf");
            psrpc_msg *g = golden(f, k, rid);
            REQUIRE(g);
            uint8_t buf[1024];
            size_t n = psrpc_msg_size(g);
            REQUIRE(n <= sizeof buf);
            memcpy(buf, psrpc_msg_data(g), n);
            int flips = 1 + rand_r(&seed) % 3;
            for (int j = 0; j < flips; j++)
                buf[rand_r(&seed) % n] ^= (uint8_t)(1u << (rand_r(&seed) % 8));
            inject(f, k, buf, n);
            psrpc_msg_release(g);
        }
        th_sleep_ms(200);
        CHECK(tu_stats(f->receiver[k]).dropped_malformed - base <= 200);
    }
    /* a mutated request may be a valid one for our client: then its call is
     * unknown to the client and dropped there. Just keep working. */
    th_sleep_ms(300);
    check_still_working(f);
    mfx_free(f);
}

/* K10/R4: valid Responses and ClaimRequests for request ids nobody is waiting
 * for are dropped and counted as unknown, with no callback; an outstanding
 * call is not disturbed. */
/* A request id that is already waiting for its claim response arrives again
 * (a replay or a forged copy, here with a far later expiry): the copy is
 * dropped and counted, the first times out as usual, and nothing outlives
 * the server: closing it and its bus returns at once, not when the copy's
 * expiry passes. */
TEST(malformed_duplicate_request_id_waiting_for_claim) {
    mfx *f = mfx_new(NULL);
    REQUIRE(mfx_ok(f));
    char rid[64];
    tu_unique(rid, sizeof rid, "REQ_dup");
    const char *key = f->ch[K_REQ].local;
    Internal__Request r = INTERNAL__REQUEST__INIT;
    r.request_id = rid;
    r.client_id = (char *)psrpc_client_id(f->cl); /* our client ignores the claim */
    r.raw_request.data = (uint8_t *)"golden";
    r.raw_request.len = 6;
    r.sent_at = now_ns();
    r.expiry = r.sent_at + 300000000LL; /* 300 ms */
    psrpc_msg *first = wrap_key(&r.base, key);
    r.expiry = r.sent_at + 60000000000LL; /* 60 s */
    psrpc_msg *copy = wrap_key(&r.base, key);
    REQUIRE(first && copy);
    uint64_t base = tu_stats(f->bus[0]).dropped_malformed;
    CHECK_EQ_INT(inject(f, K_REQ, psrpc_msg_data(first), psrpc_msg_size(first)), PSRPC_OK);
    th_sleep_ms(50);
    CHECK_EQ_INT(inject(f, K_REQ, psrpc_msg_data(copy), psrpc_msg_size(copy)), PSRPC_OK);
    psrpc_msg_release(first);
    psrpc_msg_release(copy);
    CHECK(WAIT_UNTIL(tu_stats(f->bus[0]).dropped_malformed == base + 1, 3000));
    th_sleep_ms(600); /* the first request's claim wait ends */
    CHECK_EQ_INT(atomic_load(&f->srv->handled), 0);
    check_still_working(f);
    long long t0 = th_now_ms();
    mfx_free(f);
    long long took = th_now_ms() - t0;
    CHECK(took < 10000);
}

/* A ClaimResponse can overtake its request: the client chose another server
 * while this one was still behind. The request must then be dropped on
 * arrival, not claimed and held until its expiry (with three servers under
 * load that held hundreds of MB). Control: the same request without the
 * early ClaimResponse is claimed (the claim reaches our client, which knows
 * no such call and counts it as unknown). */
TEST(malformed_claim_response_before_request) {
    mfx *f = mfx_new(NULL);
    REQUIRE(mfx_ok(f));
    const char *key = f->ch[K_REQ].local;
    char decided[64], control[64];
    tu_unique(decided, sizeof decided, "REQ_dec");
    tu_unique(control, sizeof control, "REQ_ctl");

    Internal__ClaimResponse cr = INTERNAL__CLAIM_RESPONSE__INIT;
    cr.request_id = decided;
    cr.server_id = (char *)"SRV_someoneelse1";
    psrpc_msg *early = wrap_key(&cr.base, f->ch[K_RCLAIM].local);
    REQUIRE(early);
    CHECK_EQ_INT(inject(f, K_RCLAIM, psrpc_msg_data(early), psrpc_msg_size(early)), PSRPC_OK);
    psrpc_msg_release(early);
    th_sleep_ms(100);

    uint64_t unknown = tu_stats(f->bus[1]).dropped_unknown;
    Internal__Request r = INTERNAL__REQUEST__INIT;
    r.client_id = (char *)psrpc_client_id(f->cl);
    r.raw_request.data = (uint8_t *)"golden";
    r.raw_request.len = 6;
    r.sent_at = now_ns();
    r.expiry = r.sent_at + 5000000000LL;
    r.request_id = decided;
    psrpc_msg *m = wrap_key(&r.base, key);
    REQUIRE(m);
    CHECK_EQ_INT(inject(f, K_REQ, psrpc_msg_data(m), psrpc_msg_size(m)), PSRPC_OK);
    psrpc_msg_release(m);
    th_sleep_ms(300);
    CHECK_EQ_INT(tu_stats(f->bus[1]).dropped_unknown, unknown); /* no claim was sent */

    r.request_id = control;
    m = wrap_key(&r.base, key);
    REQUIRE(m);
    CHECK_EQ_INT(inject(f, K_REQ, psrpc_msg_data(m), psrpc_msg_size(m)), PSRPC_OK);
    psrpc_msg_release(m);
    CHECK(WAIT_UNTIL(tu_stats(f->bus[1]).dropped_unknown == unknown + 1, 3000));
    CHECK_EQ_INT(atomic_load(&f->srv->handled), 0);
    check_still_working(f);
    long long t0 = th_now_ms();
    mfx_free(f);
    CHECK(th_now_ms() - t0 < 3000); /* the claimed control request is not held either */
}

TEST(malformed_unknown_ids_dropped) {
    mfx *f = mfx_new(NULL);
    REQUIRE(mfx_ok(f));
    f->srv->mode = TU_HOLD;
    tu_call *c = tu_calls_new(1);
    psrpc_method m = echo();
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.timeout_ms = 5000;
    REQUIRE(tu_call_async(f->cl, &m, "pending", &o, c) == PSRPC_OK);
    REQUIRE(WAIT_UNTIL(tu_srv_nheld(f->srv) == 1, 3000));
    uint64_t base = tu_stats(f->bus[1]).dropped_unknown;
    uint64_t mal = tu_stats(f->bus[1]).dropped_malformed;
    enum { N = 20 };
    int sent = 0;
    for (int i = 0; i < N; i++) {
        char rid[64];
        tu_unique(rid, sizeof rid, "REQ_unknown");
        psrpc_msg *g = golden(f, i % 2 ? K_RES : K_CLAIM, rid);
        REQUIRE(g);
        sent +=
            inject(f, i % 2 ? K_RES : K_CLAIM, psrpc_msg_data(g), psrpc_msg_size(g)) == PSRPC_OK;
        psrpc_msg_release(g);
    }
    CHECK(grew_by(f->bus[1], OFF(dropped_unknown), base, (uint64_t)sent));
    CHECK_EQ_INT(tu_stats(f->bus[1]).dropped_malformed, mal);
    CHECK_EQ_INT(atomic_load(&c->count), 0);
    int mism = 0;
    CHECK_EQ_INT(tu_answer_all_from_thread(f->srv, PSRPC_OK, &mism), 1);
    CHECK(tu_wait_count(&c->count, 1, 3000));
    CHECK_EQ_INT(c->status, PSRPC_OK);
    CHECK_EQ_STR(c->response, "late");
    f->srv->mode = TU_ECHO;
    check_still_working(f);
    mfx_free(f);
    CHECK_EQ_INT(atomic_load(&c->count), 1);
    free(c);
}

/* F3: an unknown extra field is ignored and the message processed (Go uses
 * DiscardUnknown): a request with one reaches the server, which claims it
 * towards our client (which knows no such call: counted as unknown there); a
 * response with one reaches the client. Nothing is counted as malformed. */
TEST(malformed_unknown_field_ignored) {
    mfx *f = mfx_new(NULL);
    REQUIRE(mfx_ok(f));
    uint64_t mal0 = tu_stats(f->bus[0]).dropped_malformed;
    uint64_t cmal0 = tu_stats(f->bus[1]).dropped_malformed;
    uint64_t unk0 = tu_stats(f->bus[1]).dropped_unknown;
    char rid[64];
    tu_unique(rid, sizeof rid, "REQ_unkf");
    psrpc_msg *g = with_nonce(golden(f, K_REQ, rid));
    REQUIRE(g);
    inject(f, K_REQ, psrpc_msg_data(g), psrpc_msg_size(g));
    psrpc_msg_release(g);
    CHECK(grew_by(f->bus[1], OFF(dropped_unknown), unk0, 1)); /* its claim */
    tu_unique(rid, sizeof rid, "REQ_unkf");
    g = with_nonce(golden(f, K_RES, rid));
    REQUIRE(g);
    inject(f, K_RES, psrpc_msg_data(g), psrpc_msg_size(g));
    psrpc_msg_release(g);
    CHECK(grew_by(f->bus[1], OFF(dropped_unknown), unk0, 2));
    CHECK_EQ_INT(tu_stats(f->bus[0]).dropped_malformed, mal0);
    CHECK_EQ_INT(tu_stats(f->bus[1]).dropped_malformed, cmal0);
    check_still_working(f);
    mfx_free(f);
}

/* K7/R11: a valid request whose expiry has passed never reaches the handler
 * and gets no claim; it is counted as expired. */
TEST(malformed_expired_request_injected) {
    mfx *f = mfx_new(NULL);
    REQUIRE(mfx_ok(f));
    uint64_t exp0 = tu_stats(f->bus[0]).dropped_expired;
    uint64_t unk0 = tu_stats(f->bus[1]).dropped_unknown;
    enum { N = 5 };
    for (int i = 0; i < N; i++) {
        Internal__Request r = INTERNAL__REQUEST__INIT;
        char rid[64];
        tu_unique(rid, sizeof rid, "REQ_exp");
        r.request_id = rid;
        r.client_id = (char *)psrpc_client_id(f->cl);
        r.sent_at = now_ns() - 2000000000LL;
        r.expiry = now_ns() - 1000000000LL * (i + 1);
        r.raw_request.data = (uint8_t *)"old";
        r.raw_request.len = 3;
        psrpc_msg *m = wrap_key(&r.base, f->ch[K_REQ].local);
        REQUIRE(m);
        inject(f, K_REQ, psrpc_msg_data(m), psrpc_msg_size(m));
        psrpc_msg_release(m);
    }
    CHECK(grew_by(f->bus[0], OFF(dropped_expired), exp0, N));
    CHECK_EQ_INT(atomic_load(&f->srv->handled), 0);
    CHECK_EQ_INT(atomic_load(&f->srv->affinity_calls), 0);
    /* no claim reached the client either */
    CHECK_EQ_INT(tu_stats(f->bus[1]).dropped_unknown, unk0);
    check_still_working(f);
    mfx_free(f);
}

/* F4: an inbound message above max_message_size is dropped before decoding
 * and counted as oversize (not malformed); the bus keeps working. */
TEST(malformed_oversize_inbound) {
    psrpc_bus_options bo = PSRPC_BUS_OPTIONS_INIT;
    bo.max_message_size = 4096;
    mfx *f = mfx_new(&bo);
    REQUIRE(mfx_ok(f));
    uint64_t over0 = tu_stats(f->bus[0]).dropped_oversize;
    uint64_t mal0 = tu_stats(f->bus[0]).dropped_malformed;
    /* a valid request envelope padded beyond the limit */
    Internal__Request r = INTERNAL__REQUEST__INIT;
    char rid[64];
    tu_unique(rid, sizeof rid, "REQ_big");
    static uint8_t pad[8192];
    memset(pad, 'p', sizeof pad);
    r.request_id = rid;
    r.client_id = (char *)psrpc_client_id(f->cl);
    r.sent_at = now_ns();
    r.expiry = now_ns() + 5000000000LL;
    r.raw_request.data = pad;
    r.raw_request.len = sizeof pad;
    psrpc_msg *m = wrap_key(&r.base, f->ch[K_REQ].local);
    REQUIRE(m);
    inject(f, K_REQ, psrpc_msg_data(m), psrpc_msg_size(m));
    psrpc_msg_release(m);
    CHECK(grew_by(f->bus[0], OFF(dropped_oversize), over0, 1));
    CHECK_EQ_INT(tu_stats(f->bus[0]).dropped_malformed, mal0);
    CHECK_EQ_INT(atomic_load(&f->srv->handled), 0);
    /* undecodable and oversize: the size check comes before any decoding
     * (R7), so it counts as oversize */
    static uint8_t junk[8192];
    memset(junk, 0xff, sizeof junk);
    inject(f, K_REQ, junk, sizeof junk);
    CHECK(grew_by(f->bus[0], OFF(dropped_oversize), over0, 2));
    CHECK_EQ_INT(tu_stats(f->bus[0]).dropped_malformed, mal0);

    /* outgoing: a request above the client's own limit is refused locally */
    psrpc_bus_options cbo = PSRPC_BUS_OPTIONS_INIT;
    cbo.max_message_size = 4096;
    psrpc_bus *small = tu_open_bus_opts(tu_bus_url(), &cbo);
    REQUIRE(small);
    psrpc_client *cl = tu_client(small, f->svc, 0, 0);
    REQUIRE(cl);
    tu_call *c = tu_calls_new(1);
    psrpc_method em = echo();
    uint64_t id;
    int rc = psrpc_client_call(&id, cl, &em, pad, sizeof pad, NULL, tu_call_cb, c);
    if (rc == PSRPC_OK) {
        CHECK(tu_wait_count(&c->count, 1, 3000));
        CHECK_EQ_INT(c->status, PSRPC_RESOURCE_EXHAUSTED);
    } else {
        CHECK_EQ_INT(rc, PSRPC_RESOURCE_EXHAUSTED);
    }
    psrpc_client_free(cl);
    psrpc_bus_free(small);
    check_still_working(f);
    mfx_free(f);
    CHECK(atomic_load(&c->count) <= 1);
    free(c);
}

TEST_MAIN()
