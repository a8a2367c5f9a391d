/* raw_nats_uv — the NATS floor of bench/run.sh: the message patterns of a
 * psrpc call spoken as the NATS text protocol (CONNECT, PUB, SUB, MSG,
 * PING/PONG; no headers) directly over libuv, with nothing else in between.
 *
 *   raw_nats_uv --bus nats://H:P --role server|client|publisher|subscriber
 *               --scenario pingpong2|pingpong4|fanout [--inflight N] [--payload B]
 *               [--warmup S] [--duration S] [--credit-fd FD] [--credit-fds FD,..]
 *
 * The same design as libpsrpc's NATS bus: one connection, one thread, one
 * libuv loop; every message read in a turn is handled at once, and everything
 * it produced is written in one uv_try_write when the turn's I/O is done
 * (uv_check), uv_write only for what the kernel did not take. Messages are
 * parsed in place from the read buffer (no copy, no allocation per message).
 * Patterns, payloads and the line protocol as in raw_bench.c.
 *
 * Built a second time with -DRAW_NATSC as raw_natsc_uv: the same program on
 * nats.c instead of the hand-written protocol, attached to the same libuv
 * loop through nats.c's own libuv adapter (nats/adapters/libuv.h), with
 * synchronous subscriptions drained after each turn's reads (uv_check): the
 * comparator that tells whether nats.c on an event loop would be the faster
 * floor. */
#include <stdbool.h>
#include <uv.h>
#ifdef RAW_NATSC
#include <nats/adapters/libuv.h>
#include <nats/nats.h>
#endif

#include "bench_common.h"

#define SUBJ_REQ "raw.req"
#define SUBJ_RESP "raw.resp"
#define SUBJ_FAN "raw.fan"
#define MAX_SLOTS 4096

enum { T_REQ = 1, T_CLAIM_REQ = 2, T_CLAIM_RESP = 3, T_RESP = 4 };

static bench_config cfg = {NULL, NULL, "pingpong2", 1, 64, 1.0, 3.0, 0, 1, 3, -1, NULL};

static bool four_hops, is_client, is_server, is_sub, is_pub;
static uint8_t *big, *small, *big_body, *small_body;
static size_t big_len, small_len;

static uv_loop_t *loop;
#ifndef RAW_NATSC
static uv_tcp_t tcp;
#endif
static uv_check_t flusher;
static uv_poll_t stdin_poll;
static uv_timer_t phase_timer, pub_timer;

static void die(const char *what, const char *detail) {
    fprintf(stderr, "raw_nats_uv: %s: %s\n", what, detail ? detail : "");
    exit(1);
}

#ifdef RAW_NATSC
static natsConnection *nc;
static natsSubscription *nsub;

static void pub(const char *subj, const uint8_t *d, size_t len) {
    natsStatus s = natsConnection_Publish(nc, subj, d, (int)len);
    if (s != NATS_OK)
        die("publish", natsStatus_GetText(s));
}
#else
/* ------------------------------------------------------------------------ */
/* Byte buffers                                                              */
/* ------------------------------------------------------------------------ */

typedef struct buf {
    char *p;
    size_t len, cap, off; /* off: consumed prefix (input buffer) */
} buf;

static void buf_reserve(buf *b, size_t extra) {
    if (b->len + extra <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 65536;
    while (cap < b->len + extra)
        cap *= 2;
    b->p = realloc(b->p, cap);
    if (!b->p)
        die("out of memory", NULL);
    b->cap = cap;
}

static void buf_add(buf *b, const void *d, size_t n) {
    buf_reserve(b, n);
    memcpy(b->p + b->len, d, n);
    b->len += n;
}

/* ------------------------------------------------------------------------ */
/* Output: collected during a turn, written once at its end                 */
/* ------------------------------------------------------------------------ */

static buf out, inflight_out; /* inflight_out: owned by a pending uv_write */
static bool writing;
static uv_write_t wreq;

static void flush(void);

static void on_written(uv_write_t *req, int status) {
    (void)req;
    if (status < 0)
        die("write", uv_strerror(status));
    writing = false;
    inflight_out.len = 0;
    flush();
}

static void flush(void) {
    if (writing || out.len == 0)
        return;
    uv_buf_t b = uv_buf_init(out.p, (unsigned)out.len);
    int n = uv_try_write((uv_stream_t *)&tcp, &b, 1);
    if (n == UV_EAGAIN)
        n = 0;
    else if (n < 0)
        die("write", uv_strerror(n));
    if ((size_t)n == out.len) {
        out.len = 0;
        return;
    }
    /* the rest goes through uv_write; new output collects in `out` meanwhile */
    inflight_out.len = 0;
    buf_add(&inflight_out, out.p + n, out.len - (size_t)n);
    out.len = 0;
    writing = true;
    uv_buf_t rest = uv_buf_init(inflight_out.p, (unsigned)inflight_out.len);
    int rc = uv_write(&wreq, (uv_stream_t *)&tcp, &rest, 1, on_written);
    if (rc < 0)
        die("uv_write", uv_strerror(rc));
}

static void on_check(uv_check_t *h) {
    (void)h;
    flush();
}

static void pub(const char *subj, const uint8_t *d, size_t len) {
    char hdr[96];
    int n = snprintf(hdr, sizeof hdr, "PUB %s %zu\r\n", subj, len);
    buf_reserve(&out, (size_t)n + len + 2);
    memcpy(out.p + out.len, hdr, (size_t)n);
    memcpy(out.p + out.len + n, d, len);
    memcpy(out.p + out.len + n + len, "\r\n", 2);
    out.len += (size_t)n + len + 2;
}
#endif

/* ------------------------------------------------------------------------ */
/* Measurement state                                                         */
/* ------------------------------------------------------------------------ */

static int64_t slot_t0[MAX_SLOTS];
/* Client: what each slot waits for (a message that does not fit, e.g. from a
 * stray process of an earlier cell on the same subjects, is counted, not
 * answered: a duplicate must not multiply the calls in flight). */
static uint8_t slot_wait[MAX_SLOTS];
static uint64_t strays;
static bool measuring, stopping, started, ready;
static uint64_t ops, received, measured_rx, published, measured_pub;
static int64_t t0_ns;
static hist lat;
static credits cr;

static void issue(uint32_t slot) {
    slot_t0[slot] = mono_ns();
    slot_wait[slot] = four_hops ? T_CLAIM_REQ : T_RESP;
    put_u32(big_body + PAYLOAD_SLOT, slot);
    big_body[PAYLOAD_TYPE] = T_REQ;
    pub(SUBJ_REQ, big, big_len);
}

static void reply(uint8_t type, uint32_t slot, const char *subj) {
    bool is_big = type == T_RESP;
    uint8_t *body = is_big ? big_body : small_body;
    put_u32(body + PAYLOAD_SLOT, slot);
    body[PAYLOAD_TYPE] = type;
    pub(subj, is_big ? big : small, is_big ? big_len : small_len);
}

static void on_payload(const uint8_t *p, size_t n) {
    long off = bytesvalue_body(p, n);
    if (off < 0 || n - (size_t)off < PAYLOAD_MIN)
        return;
    const uint8_t *body = p + off;
    if (is_sub) {
        if (body[PAYLOAD_FLAG]) {
            hist_add_ns(&lat, wall_ns() - get_i64(body + PAYLOAD_TS));
            measured_rx++;
        }
        credit_tick(cfg.credit_fd, &received);
        return;
    }
    uint8_t type = body[PAYLOAD_TYPE];
    uint32_t slot = get_u32(body + PAYLOAD_SLOT);
    if (slot >= MAX_SLOTS)
        return;
    switch (type) {
    case T_REQ: /* server */
        reply(four_hops ? T_CLAIM_REQ : T_RESP, slot, SUBJ_RESP);
        break;
    case T_CLAIM_REQ: /* client */
        if (slot_wait[slot] != T_CLAIM_REQ) {
            strays++;
            break;
        }
        slot_wait[slot] = T_RESP;
        reply(T_CLAIM_RESP, slot, SUBJ_REQ);
        break;
    case T_CLAIM_RESP: /* server */
        reply(T_RESP, slot, SUBJ_RESP);
        break;
    case T_RESP: /* client: done, the next request in this slot */
        if (slot_wait[slot] != T_RESP) {
            strays++;
            break;
        }
        slot_wait[slot] = 0;
        if (measuring) {
            hist_add_ns(&lat, mono_ns() - slot_t0[slot]);
            ops++;
        }
        if (!stopping)
            issue(slot);
        break;
    default:
        break;
    }
}

static void start_measuring(void);

#ifdef RAW_NATSC
/* nats.c read the socket in the poll phase; its messages wait in the
 * synchronous subscription's queue until here. */
static void on_check(uv_check_t *h) {
    (void)h;
    natsMsg *m = NULL;
    while (nsub && natsSubscription_NextMsg(&m, nsub, 0) == NATS_OK) {
        on_payload((const uint8_t *)natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m));
        natsMsg_Destroy(m);
    }
}
#else
/* ------------------------------------------------------------------------ */
/* Input: the NATS protocol, parsed in place                                */
/* ------------------------------------------------------------------------ */

static buf in;

/* Parses what `in` holds; returns when a message or line is incomplete. */
static void parse(void) {
    for (;;) {
        char *s = in.p + in.off;
        size_t avail = in.len - in.off;
        char *nl = memchr(s, '\n', avail);
        if (!nl)
            return;
        size_t line = (size_t)(nl - s) + 1; /* with \r\n */
        if (avail >= 4 && memcmp(s, "MSG ", 4) == 0) {
            /* MSG <subject> <sid> [reply-to] <#bytes>\r\n<payload>\r\n */
            char *e = nl - 1; /* at \r */
            char *sp = e;
            while (sp > s && sp[-1] != ' ')
                sp--;
            size_t size = strtoul(sp, NULL, 10);
            if (avail < line + size + 2)
                return; /* payload not all here yet */
            on_payload((const uint8_t *)s + line, size);
            in.off += line + size + 2;
            continue;
        }
        if (avail >= 4 && memcmp(s, "PING", 4) == 0) {
            buf_add(&out, "PONG\r\n", 6);
        } else if (avail >= 4 && memcmp(s, "PONG", 4) == 0) {
            if (!ready) {
                ready = true;
                emit("READY");
                start_measuring();
            }
        } else if (avail >= 4 && memcmp(s, "-ERR", 4) == 0) {
            die("server", s);
        } /* INFO, +OK: nothing to do */
        in.off += line;
    }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b) {
    (void)h, (void)suggested;
    if (in.off > 0 && in.off == in.len) {
        in.off = in.len = 0;
    } else if (in.off > (in.cap >> 1)) {
        memmove(in.p, in.p + in.off, in.len - in.off);
        in.len -= in.off;
        in.off = 0;
    }
    buf_reserve(&in, 65536);
    *b = uv_buf_init(in.p + in.len, (unsigned)(in.cap - in.len));
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
    (void)s, (void)b;
    if (n < 0)
        die("read", uv_strerror((int)n));
    in.len += (size_t)n;
    parse();
}
#endif

/* ------------------------------------------------------------------------ */
/* Phases                                                                    */
/* ------------------------------------------------------------------------ */

static void pump(void);

static void finish_window(void) {
    double elapsed = (double)(mono_ns() - t0_ns) / 1e9;
    measuring = false;
    emit("END");
    if (is_client) {
        stopping = true;
        if (strays)
            fprintf(stderr, "raw_nats_uv: %llu unexpected messages\n", (unsigned long long)strays);
        emit_result("client", ops, elapsed, strays, &lat);
    } else {
        emit_result("publisher", measured_pub, elapsed, 0, NULL);
    }
    /* The figures are out: wait for bench.py to close stdin, then exit. */
    wait_stdin_eof();
    fflush(stdout);
    _exit(0);
}

static void on_phase(uv_timer_t *t) {
    if (!started) {
        started = true;
        measuring = true;
        t0_ns = mono_ns();
        emit("START");
        uv_timer_start(t, on_phase, (uint64_t)(cfg.duration * 1000), 0);
        return;
    }
    finish_window();
}

/* Publisher: publishes as far as the credit window allows; the rest of the
 * turn's output is written by the check handle. */
static uv_idle_t pub_idle;

static void pump(void) {
    if (!is_pub)
        return;
    int budget = 64; /* return to the loop now and then: read credits, timers */
    for (;;) {
        if (credits_outstanding(&cr, published) >= (uint64_t)cfg.inflight) {
            uv_idle_stop(&pub_idle); /* the window is full: block until credits come */
            return;
        }
        if (budget-- == 0)
            return;
        put_i64(big_body + PAYLOAD_TS, wall_ns());
        big_body[PAYLOAD_FLAG] = started;
        pub(SUBJ_FAN, big, big_len);
        published++;
        measured_pub += started;
    }
}

static uv_poll_t credit_poll[MAX_CREDIT_FDS];

static void on_pub_idle(uv_idle_t *h);

static void on_credit(uv_poll_t *h, int status, int events) {
    (void)status, (void)events;
    int i = (int)(h - credit_poll);
    char b[4096];
    ssize_t r = read(cr.fd[i], b, sizeof b);
    if (r > 0) {
        cr.got[i] += (uint64_t)r;
        uv_idle_start(&pub_idle, on_pub_idle);
    } else if (r == 0)
        uv_poll_stop(h);
}

static void on_pub_idle(uv_idle_t *h) {
    (void)h;
    pump();
}

static void on_pub_timer(uv_timer_t *t) {
    (void)t;
    uv_idle_start(&pub_idle, on_pub_idle); /* the write-off of lost messages needs time */
}

static void on_stdin(uv_poll_t *h, int status, int events) {
    (void)status, (void)events;
    char b[256];
    ssize_t r = read(0, b, sizeof b);
    if (r > 0)
        return;
    uv_poll_stop(h);
    if (is_sub)
        emit_result("subscriber", measured_rx, 0, 0, &lat);
    fflush(stdout);
    _exit(0);
}

static void start_measuring(void) {
    if (is_server || is_sub) {
        uv_poll_init(loop, &stdin_poll, 0);
        uv_poll_start(&stdin_poll, UV_READABLE | UV_DISCONNECT, on_stdin);
        return;
    }
    uv_timer_init(loop, &phase_timer);
    uv_timer_start(&phase_timer, on_phase, (uint64_t)(cfg.warmup * 1000), 0);
    if (is_client) {
        for (int i = 0; i < cfg.inflight; i++)
            issue((uint32_t)i);
        return;
    }
    for (int i = 0; i < cr.n; i++) {
        uv_poll_init(loop, &credit_poll[i], cr.fd[i]);
        uv_poll_start(&credit_poll[i], UV_READABLE, on_credit);
    }
    /* The idle handle keeps the loop polling without blocking while the
     * window is open; a timer covers the write-off of lost messages. */
    uv_idle_init(loop, &pub_idle);
    uv_idle_start(&pub_idle, on_pub_idle);
    uv_timer_init(loop, &pub_timer);
    uv_timer_start(&pub_timer, on_pub_timer, 5, 5);
}

/* ------------------------------------------------------------------------ */

#ifdef RAW_NATSC
static uv_timer_t ready_timer;

/* SUB went out with the connection's first writes; nats.c cannot flush (wait
 * for the PONG) before the loop runs, so READY follows after 100 ms. */
static void on_ready(uv_timer_t *t) {
    (void)t;
    ready = true;
    emit("READY");
    start_measuring();
}

static void nats_start(void) {
    natsLibuv_Init();
    natsLibuv_SetThreadLocalLoop(loop);
    natsOptions *o = NULL;
    natsStatus s = natsOptions_Create(&o);
    if (s == NATS_OK)
        s = natsOptions_SetURL(o, cfg.url);
    if (s == NATS_OK)
        s = natsOptions_SetEventLoop(o, loop, natsLibuv_Attach, natsLibuv_Read, natsLibuv_Write,
                                     natsLibuv_Detach);
    if (s == NATS_OK) /* without it each publish waits for nats.c's flusher (~1 ms) */
        s = natsOptions_SetSendAsap(o, true);
    if (s == NATS_OK)
        s = natsConnection_Connect(&nc, o);
    if (s != NATS_OK)
        die("nats connect", natsStatus_GetText(s));
    const char *subj = is_server ? SUBJ_REQ : is_client ? SUBJ_RESP : is_sub ? SUBJ_FAN : NULL;
    if (subj) {
        s = natsConnection_SubscribeSync(&nsub, nc, subj);
        if (s == NATS_OK)
            s = natsSubscription_SetPendingLimits(nsub, -1, -1);
        if (s != NATS_OK)
            die("subscribe", natsStatus_GetText(s));
    }
    uv_timer_init(loop, &ready_timer);
    uv_timer_start(&ready_timer, on_ready, 100, 0);
}
#else
static uv_connect_t creq;

static void on_connect(uv_connect_t *r, int status) {
    (void)r;
    if (status < 0)
        die("connect", uv_strerror(status));
    uv_tcp_nodelay(&tcp, 1);
    static const char connect[] =
        "CONNECT {\"verbose\":false,\"pedantic\":false,\"tls_required\":false,"
        "\"name\":\"raw_nats_uv\",\"lang\":\"c\",\"version\":\"0\",\"protocol\":1}\r\n";
    buf_add(&out, connect, sizeof connect - 1);
    const char *subj = is_server ? SUBJ_REQ : is_client ? SUBJ_RESP : is_sub ? SUBJ_FAN : NULL;
    if (subj) {
        char line[64];
        int n = snprintf(line, sizeof line, "SUB %s 1\r\n", subj);
        buf_add(&out, line, (size_t)n);
    }
    buf_add(&out, "PING\r\n", 6); /* its PONG: the subscription is in place */
    if (uv_read_start((uv_stream_t *)&tcp, on_alloc, on_read) != 0)
        die("read_start", NULL);
    flush();
}
#endif

int main(int argc, char **argv) {
    const char *bad = NULL;
    if (bench_parse_args(&cfg, argc, argv, &bad) != 0)
        die("unknown option or missing value", bad);
    if (!cfg.url || !cfg.role)
        die("usage", "raw_nats_uv --bus nats://H:P --role ROLE --scenario S ...");
    if (cfg.inflight < 1 || cfg.inflight > MAX_SLOTS)
        die("inflight", "1..4096");
    is_client = !strcmp(cfg.role, "client");
    is_server = !strcmp(cfg.role, "server");
    is_sub = !strcmp(cfg.role, "subscriber");
    is_pub = !strcmp(cfg.role, "publisher");
    if (!is_client && !is_server && !is_sub && !is_pub)
        die("role", cfg.role);
    four_hops = !strcmp(cfg.scenario, "pingpong4");
    big = make_payload(cfg.payload, &big_len, &big_body);
    small = make_payload(PAYLOAD_MIN, &small_len, &small_body);
    credits_parse(&cr, cfg.credit_fds);

    loop = uv_default_loop();
    uv_check_init(loop, &flusher);
    uv_check_start(&flusher, on_check);
    uv_unref((uv_handle_t *)&flusher);
#ifdef RAW_NATSC
    nats_start();
#else
    char host[256] = "127.0.0.1";
    int port = 4222;
    if (strncmp(cfg.url, "nats://", 7) != 0 ||
        sscanf(cfg.url, "nats://%255[^:/]:%d", host, &port) < 1)
        die("url", cfg.url);
    struct sockaddr_in addr;
    if (uv_ip4_addr(host, port, &addr) != 0)
        die("address (IPv4 literal expected)", host);

    uv_tcp_init(loop, &tcp);
    if (uv_tcp_connect(&creq, &tcp, (const struct sockaddr *)&addr, on_connect) != 0)
        die("connect", cfg.url);
#endif
    uv_run(loop, UV_RUN_DEFAULT);
    return 0;
}
