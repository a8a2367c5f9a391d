/* psrpc_bench — the libpsrpc side of bench/run.sh (bench.py drives it).
 *
 *   psrpc_bench --bus URL --role ROLE --scenario S [--inflight N] [--payload B]
 *               [--warmup S] [--duration S] [--id N] [--servers N] [--subs N]
 *               [--credit-fd FD] [--credit-fds FD,FD,..] [--buses N]
 *
 * Scenarios (service "Bench"; the Go program defines the same methods):
 *   single    Echo, QUEUE routing with the claim handshake (4 messages)
 *   affinity  Claim, AFFINITY routing; every server claims 1.0, the client
 *             takes the first claim (ACCEPT_FIRST_AVAILABLE)
 *   multi     Fanout, MULTI routing; a call ends when every server answered
 *   sub       Updates, a MULTI subscription: the publisher (server) publishes,
 *             every subscriber (client) receives every message
 *   stream    Chat, a stream; the client sends, the server acknowledges
 *   scale     Echo as single, for the scaling curve: with --buses N the
 *             client role opens N buses (one client on each) and spreads its
 *             --inflight calls over them round-robin; the server role opens
 *             N buses with one server on each
 * Roles:
 *   server     serves the scenario's method (sub: see publisher)
 *   client     the measuring side of single/affinity/multi/stream
 *   publisher  the measuring side of sub (credit pipes from the subscribers)
 *   subscriber a sub subscriber; reports one-way latency when stdin closes
 *   local      all of the above in this process (--servers servers or --subs
 *              subscribers, then the measuring role): the in-process bus
 * Requests keep --inflight calls outstanding; each completion, in its
 * callback on the loop thread, records its latency and issues the next call. */
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <unistd.h>

#include "bench_common.h"
#include "psrpc.h"

#define SERVICE "Bench"
#define MAX_ROLES 8

static bench_config cfg = {NULL, NULL, "single", 1, 64, 1.0, 3.0, 0, 1, 3, -1, NULL};

static void die(const char *what) {
    fprintf(stderr, "psrpc_bench: %s: %s (%s)\n", what, psrpc_last_error(),
            psrpc_status_name(psrpc_last_error_status()));
    exit(1);
}

#define MAX_BUSES 16
static int nbuses = 1;

static psrpc_method method_for(const char *scenario) {
    psrpc_method m = PSRPC_METHOD_INIT;
    if (strcmp(scenario, "single") == 0 || strcmp(scenario, "scale") == 0) {
        m.name = "Echo";
        m.routing = PSRPC_ROUTING_QUEUE;
    } else if (strcmp(scenario, "affinity") == 0) {
        m.name = "Claim";
        m.routing = PSRPC_ROUTING_AFFINITY;
    } else if (strcmp(scenario, "multi") == 0) {
        m.name = "Fanout";
        m.routing = PSRPC_ROUTING_MULTI;
    } else if (strcmp(scenario, "sub") == 0) {
        m.name = "Updates";
        m.routing = PSRPC_ROUTING_MULTI;
        m.flags = PSRPC_METHOD_SUBSCRIPTION;
        m.output_type = "google.protobuf.BytesValue";
    } else if (strcmp(scenario, "stream") == 0) {
        m.name = "Chat";
        m.routing = PSRPC_ROUTING_QUEUE;
        m.flags = PSRPC_METHOD_STREAM;
    } else {
        fprintf(stderr, "psrpc_bench: unknown scenario %s\n", scenario);
        exit(2);
    }
    return m;
}

/* "local://" is one private bus: every role of the process shares it (one
 * loop thread). Any other URL (also local://NAME) gives each role its own
 * bus, as separate processes would have. */
static psrpc_bus *shared_bus;

static psrpc_bus *open_bus(void) {
    bool private_local = strcmp(cfg.url, "local://") == 0;
    if (private_local && shared_bus)
        return shared_bus;
    psrpc_bus *b = NULL;
    if (psrpc_bus_open(&b, cfg.url, NULL) != PSRPC_OK)
        die("bus open");
    if (psrpc_bus_wait_ready(b, 10000) != PSRPC_OK)
        die("bus wait_ready");
    if (private_local)
        shared_bus = b;
    return b;
}

/* ------------------------------------------------------------------------ */
/* Servers                                                                   */
/* ------------------------------------------------------------------------ */

static void echo_handler(psrpc_request *r, void *ud) {
    (void)ud;
    const psrpc_msg *p = psrpc_request_payload(r);
    psrpc_request_respond(r, psrpc_msg_data(p), psrpc_msg_size(p));
}

static void claim_affinity(psrpc_request *r, void *ud) {
    (void)ud;
    psrpc_request_claim(r, 1.0f);
}

static int stream_on_message(psrpc_stream *s, const psrpc_msg *m, void *ud) {
    (void)s, (void)m, (void)ud;
    return 0; /* accepted: the library acknowledges it */
}

static void stream_on_close(psrpc_stream *s, const psrpc_error *cause, void *ud) {
    (void)cause, (void)ud;
    psrpc_stream_free(s);
}

static void stream_handler(psrpc_stream *s, void *ud) {
    (void)ud;
    if (psrpc_stream_set_callbacks(s, stream_on_message, stream_on_close, NULL, NULL) != PSRPC_OK)
        psrpc_stream_free(s);
}

static psrpc_server *start_server(int id) {
    psrpc_bus *bus = open_bus();
    psrpc_server_options so = PSRPC_SERVER_OPTIONS_INIT;
    char sid[32];
    snprintf(sid, sizeof sid, "SRV_bench%d", id);
    so.server_id = sid;
    psrpc_server *s = NULL;
    if (psrpc_server_create(&s, bus, SERVICE, &so) != PSRPC_OK)
        die("server_create");
    psrpc_method m = method_for(cfg.scenario);
    int rc = PSRPC_OK;
    if (strcmp(cfg.scenario, "stream") == 0)
        rc = psrpc_server_register_stream(s, &m, NULL, 0, stream_handler, NULL, NULL, NULL, NULL);
    else if (strcmp(cfg.scenario, "sub") != 0)
        rc = psrpc_server_register(s, &m, NULL, 0, echo_handler,
                                   m.routing == PSRPC_ROUTING_AFFINITY ? claim_affinity : NULL,
                                   NULL, NULL, NULL);
    if (rc != PSRPC_OK)
        die("server_register");
    if (psrpc_server_wait_ready(s, 10000) != PSRPC_OK)
        die("server_wait_ready");
    return s;
}

/* ------------------------------------------------------------------------ */
/* Subscribers                                                               */
/* ------------------------------------------------------------------------ */

typedef struct subscriber {
    psrpc_client *client;
    psrpc_sub *sub;
    int credit_fd;
    uint64_t received, measured;
    hist h;
} subscriber;

static void sub_on_message(psrpc_sub *sub, const psrpc_msg *msg, void *ud) {
    (void)sub;
    subscriber *s = ud;
    const uint8_t *p = psrpc_msg_data(msg);
    size_t n = psrpc_msg_size(msg);
    long off = bytesvalue_body(p, n);
    if (off >= 0 && n - (size_t)off >= PAYLOAD_MIN && p[off + PAYLOAD_FLAG]) {
        hist_add_ns(&s->h, wall_ns() - get_i64(p + off + PAYLOAD_TS));
        s->measured++;
    }
    credit_tick(s->credit_fd, &s->received);
}

static subscriber *start_subscriber(int credit_fd) {
    subscriber *s = calloc(1, sizeof *s);
    s->credit_fd = credit_fd;
    if (psrpc_client_create(&s->client, open_bus(), SERVICE, NULL) != PSRPC_OK)
        die("client_create");
    psrpc_method m = method_for("sub");
    if (psrpc_client_subscribe(&s->sub, s->client, &m, NULL, 0, sub_on_message, NULL, s, NULL) !=
        PSRPC_OK)
        die("subscribe");
    if (psrpc_sub_wait_ready(s->sub, 10000) != PSRPC_OK)
        die("sub_wait_ready");
    return s;
}

static void subscriber_report(subscriber *s) {
    psrpc_sub_close(s->sub, NULL, NULL); /* no callback runs after it returned... */
    sleep_s(0.05);                       /* ...once the loop got to it */
    emit_result("subscriber", s->measured, 0, 0, &s->h);
}

/* ------------------------------------------------------------------------ */
/* The measuring client                                                      */
/* ------------------------------------------------------------------------ */

static psrpc_client *clients[MAX_BUSES];
static psrpc_method method;
static psrpc_call_options call_opts = PSRPC_CALL_OPTIONS_INIT;
static psrpc_selection_options sel_opts = PSRPC_SELECTION_OPTIONS_INIT;
static uint8_t *payload;
static size_t payload_len;
static atomic_bool measuring, stopping;
static atomic_int outstanding;
static atomic_uint_fast64_t ops, errors;
static hist lat[MAX_BUSES]; /* one per bus: each is touched by its loop thread only */

typedef struct call_ctx {
    int64_t t0;
    int got;
    int bus;
    bool done;
} call_ctx;

static void finish_on(int bus, int64_t t0, bool ok) {
    if (atomic_load_explicit(&measuring, memory_order_relaxed)) {
        hist_add_ns(&lat[bus], mono_ns() - t0);
        atomic_fetch_add_explicit(&ops, 1, memory_order_relaxed);
        if (!ok)
            atomic_fetch_add_explicit(&errors, 1, memory_order_relaxed);
    }
}

static void finish(int64_t t0, bool ok) { finish_on(0, t0, ok); }

static void issue_on(int bus);
static void issue(void) { issue_on(0); }

static void on_unary(uint64_t id, const psrpc_msg *res, const psrpc_error *err, const char *srv,
                     void *ud) {
    (void)id, (void)res, (void)srv;
    call_ctx *c = ud;
    int bus = c->bus;
    finish_on(bus, c->t0, err == NULL);
    free(c);
    atomic_fetch_sub(&outstanding, 1);
    issue_on(bus);
}

static void on_multi_result(uint64_t id, const psrpc_msg *res, const psrpc_error *err,
                            const char *srv, void *ud) {
    (void)res, (void)srv;
    call_ctx *c = ud;
    if (c->done)
        return;
    if (err) {
        c->done = true;
        finish(c->t0, false);
    } else if (++c->got == cfg.servers) {
        c->done = true;
        finish(c->t0, true);
    }
    if (c->done) {
        psrpc_client_cancel(clients[0], id);
        atomic_fetch_sub(&outstanding, 1);
        issue();
    }
}

static void on_multi_done(uint64_t id, const psrpc_msg *res, const psrpc_error *err,
                          const char *srv, void *ud) {
    (void)id, (void)res, (void)err, (void)srv;
    call_ctx *c = ud;
    if (!c->done) { /* timed out before every server answered */
        finish(c->t0, false);
        atomic_fetch_sub(&outstanding, 1);
        free(c);
        issue();
        return;
    }
    free(c);
}

/* Streams */
static psrpc_stream *cstream;

static void on_send_done(const psrpc_error *err, void *ud) {
    call_ctx *c = ud;
    finish(c->t0, err == NULL);
    free(c);
    atomic_fetch_sub(&outstanding, 1);
    issue();
}

static int cstream_on_message(psrpc_stream *s, const psrpc_msg *m, void *ud) {
    (void)s, (void)m, (void)ud;
    return 0;
}
static void cstream_on_close(psrpc_stream *s, const psrpc_error *cause, void *ud) {
    (void)s, (void)ud;
    if (!atomic_load(&stopping))
        fprintf(stderr, "psrpc_bench: stream closed: %s\n", cause->message);
}

static void issue_on(int bus) {
    if (atomic_load_explicit(&stopping, memory_order_relaxed))
        return;
    call_ctx *c = calloc(1, sizeof *c);
    c->bus = bus;
    atomic_fetch_add(&outstanding, 1);
    c->t0 = mono_ns();
    int rc;
    if (strcmp(cfg.scenario, "multi") == 0)
        rc = psrpc_client_call_multi(NULL, clients[0], &method, payload, payload_len, &call_opts,
                                     on_multi_result, on_multi_done, c);
    else if (strcmp(cfg.scenario, "stream") == 0)
        rc = psrpc_stream_send(cstream, payload, payload_len, 0, on_send_done, c);
    else
        rc = psrpc_client_call(NULL, clients[bus], &method, payload, payload_len, &call_opts,
                               on_unary, c);
    if (rc != PSRPC_OK) {
        fprintf(stderr, "psrpc_bench: call: %s\n", psrpc_last_error());
        atomic_fetch_sub(&outstanding, 1);
        atomic_fetch_add(&errors, 1);
        free(c);
    }
}

static void window(double *elapsed, uint64_t *n) {
    sleep_s(cfg.warmup);
    uint64_t o0 = atomic_load(&ops);
    int64_t t0 = mono_ns();
    atomic_store(&measuring, true);
    emit("START");
    sleep_s(cfg.duration);
    atomic_store(&measuring, false);
    *n = atomic_load(&ops) - o0;
    *elapsed = (double)(mono_ns() - t0) / 1e9;
    emit("END");
}

static void run_client(void) {
    psrpc_client_options co = PSRPC_CLIENT_OPTIONS_INIT;
    co.timeout_ms = 5000;
    for (int b = 0; b < nbuses; b++)
        if (psrpc_client_create(&clients[b], open_bus(), SERVICE, &co) != PSRPC_OK)
            die("client_create");
    method = method_for(cfg.scenario);
    if (method.routing == PSRPC_ROUTING_AFFINITY) {
        sel_opts.flags = PSRPC_SELECT_ACCEPT_FIRST_AVAILABLE;
        sel_opts.affinity_timeout_ms = 1000;
        call_opts.selection = &sel_opts;
    }
    if (method.routing == PSRPC_ROUTING_MULTI)
        call_opts.timeout_ms = 5000;
    uint8_t *body;
    payload = make_payload(cfg.payload, &payload_len, &body);
    if (strcmp(cfg.scenario, "stream") == 0) {
        psrpc_call_options so = PSRPC_CALL_OPTIONS_INIT;
        so.timeout_ms = 5000;
        if (psrpc_client_open_stream(&cstream, clients[0], &method, &so, NULL, cstream_on_message,
                                     cstream_on_close, NULL, NULL) != PSRPC_OK)
            die("open_stream");
    } else {
        /* one call first: the client's reply subscriptions are up */
        for (int b = 0; b < nbuses; b++) {
            psrpc_msg *out = NULL;
            if (method.routing != PSRPC_ROUTING_MULTI &&
                psrpc_client_call_sync(&out, clients[b], &method, payload, payload_len,
                                       &call_opts) != PSRPC_OK)
                die("first call");
            psrpc_msg_release(out);
        }
    }
    for (int i = 0; i < cfg.inflight; i++)
        issue_on(i % nbuses);
    double elapsed;
    uint64_t n;
    window(&elapsed, &n);
    atomic_store(&stopping, true);
    for (int i = 0; i < 1000 && atomic_load(&outstanding) > 0; i++)
        sleep_s(0.005);
    for (int b = 1; b < nbuses; b++)
        for (int i = 0; i < HIST_BUCKETS; i++)
            lat[0].n[i] += lat[b].n[i];
    emit_result("client", n, elapsed, atomic_load(&errors), &lat[0]);
}

/* ------------------------------------------------------------------------ */
/* The measuring publisher                                                   */
/* ------------------------------------------------------------------------ */

static void run_publisher(psrpc_server *s, credits *cr) {
    method = method_for("sub");
    uint8_t *body;
    payload = make_payload(cfg.payload, &payload_len, &body);
    uint64_t published = 0, measured = 0;
    int64_t warm_end = mono_ns() + (int64_t)(cfg.warmup * 1e9), t0 = 0, end = 0;
    bool started = false;
    for (;;) {
        int64_t now = mono_ns();
        if (!started && now >= warm_end) {
            started = true;
            t0 = now;
            end = now + (int64_t)(cfg.duration * 1e9);
            emit("START");
        }
        if (started && now >= end)
            break;
        if (credits_outstanding(cr, published) >= (uint64_t)cfg.inflight) {
            credits_wait(cr, 100);
            continue;
        }
        put_i64(body + PAYLOAD_TS, wall_ns());
        body[PAYLOAD_FLAG] = started;
        if (psrpc_server_publish(s, &method, NULL, 0, payload, payload_len) != PSRPC_OK)
            die("publish");
        published++;
        measured += started;
    }
    double elapsed = (double)(mono_ns() - t0) / 1e9;
    emit("END");
    emit_result("publisher", measured, elapsed, 0, NULL);
}

/* ------------------------------------------------------------------------ */

static void usage(void) {
    fprintf(stderr, "usage: psrpc_bench --bus URL --role server|client|publisher|subscriber|"
                    "local --scenario single|affinity|multi|sub|stream [--inflight N] "
                    "[--payload B] [--warmup S] [--duration S] [--id N] [--servers N] "
                    "[--subs N] [--credit-fd FD] [--credit-fds FD,..] [--buses N]\n");
    exit(2);
}

int main(int argc, char **argv) {
    const char *bad = NULL;
    /* --buses N (this program only) is taken out before the common options */
    char **av = calloc((size_t)argc + 1, sizeof *av);
    int ac = 0;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--buses") && i + 1 < argc) {
            nbuses = atoi(argv[++i]);
            continue;
        }
        av[ac++] = argv[i];
    }
    if (nbuses < 1 || nbuses > MAX_BUSES)
        usage();
    if (bench_parse_args(&cfg, ac, av, &bad) != 0)
        usage();
    if (!cfg.url || !cfg.role)
        usage();
    (void)method_for(cfg.scenario);
    bool sub = strcmp(cfg.scenario, "sub") == 0;

    if (!strcmp(cfg.role, "server")) {
        for (int b = 0; b < nbuses; b++)
            start_server(cfg.id * MAX_BUSES + b); /* each on a bus of its own */
        emit("READY");
        wait_stdin_eof();
    } else if (!strcmp(cfg.role, "subscriber")) {
        subscriber *s = start_subscriber(cfg.credit_fd);
        emit("READY");
        wait_stdin_eof();
        subscriber_report(s);
    } else if (!strcmp(cfg.role, "publisher")) {
        psrpc_server *s = start_server(cfg.id);
        credits cr;
        credits_parse(&cr, cfg.credit_fds);
        emit("READY");
        run_publisher(s, &cr);
        wait_stdin_eof();
    } else if (!strcmp(cfg.role, "client")) {
        emit("READY");
        run_client();
        wait_stdin_eof();
    } else if (!strcmp(cfg.role, "local")) {
        if (sub) {
            credits cr;
            memset(&cr, 0, sizeof cr);
            subscriber *subs[MAX_CREDIT_FDS];
            for (int i = 0; i < cfg.subs && i < MAX_CREDIT_FDS; i++) {
                int p[2];
                if (pipe(p) != 0)
                    return 1;
                cr.fd[cr.n++] = p[0];
                subs[i] = start_subscriber(p[1]);
            }
            psrpc_server *s = start_server(0);
            emit("READY");
            run_publisher(s, &cr);
            wait_stdin_eof();
            for (int i = 0; i < cr.n; i++)
                subscriber_report(subs[i]);
        } else {
            for (int i = 0; i < cfg.servers; i++)
                start_server(i);
            emit("READY");
            run_client();
            wait_stdin_eof();
        }
    } else {
        usage();
    }
    /* Exit without tearing down: the figures are out, and closing buses with
     * calls in flight is not what is measured. */
    fflush(stdout);
    _exit(0);
}
