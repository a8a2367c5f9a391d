/* A client whose reply subscriptions the broker refuses (issue 20 item 8):
 * every call fails promptly with the refusal (permission_denied and the
 * server's message), never "request timed out" at each call's deadline. The
 * user may publish requests but not subscribe to CLI.> (the client's
 * response, claim and stream subjects); private nats-server (nt.h). */
#include "nt.h"

static void sync_call(psrpc_client *cl, const psrpc_method *m, int *status, char *msg, size_t n,
                      long long *took) {
    psrpc_msg *out = NULL;
    long long t0 = th_now_ms();
    *status = psrpc_client_call_sync(&out, cl, m, "x", 1, NULL);
    *took = th_now_ms() - t0;
    snprintf(msg, n, "%s", *status == PSRPC_OK ? "" : psrpc_last_error());
    psrpc_msg_release(out);
}

typedef struct open_rec {
    atomic_int opened;
    int status;
    atomic_int closed;
} open_rec;

static void or_open(const psrpc_error *e, void *ud) {
    open_rec *r = (open_rec *)ud;
    r->status = e ? e->status : PSRPC_OK;
    atomic_fetch_add(&r->opened, 1);
}
static int or_msg(psrpc_stream *st, const psrpc_msg *m, void *ud) {
    (void)st, (void)m, (void)ud;
    return 0;
}
static void or_close(psrpc_stream *st, const psrpc_error *e, void *ud) {
    (void)st, (void)e;
    atomic_fetch_add(&((open_rec *)ud)->closed, 1);
}

TEST(reply_subscription_refused_fails_calls_with_the_refusal) {
    nt_server s;
    nt_server_init(&s, "authorization {\n  users = [\n"
                       "    { user: full, password: pw1 }\n"
                       "    { user: norep, password: pw2, permissions: { subscribe: { deny: "
                       "[\"CLI.>\"] } } }\n  ]\n}\n");
    REQUIRE(nt_server_start(&s));
    char url[256];
    psrpc_bus_options o = nt_opts();
    snprintf(url, sizeof url, "nats://norep:pw2@127.0.0.1:%d", s.port);
    psrpc_bus *b = nt_bus(url, &o);
    snprintf(url, sizeof url, "nats://full:pw1@127.0.0.1:%d", s.port);
    psrpc_bus *fb = nt_bus(url, &o);
    REQUIRE(b && fb);
    REQUIRE(psrpc_bus_wait_ready(b, nt_ms(5000)) == PSRPC_OK);
    char svc[64];
    nt_unique(svc, sizeof svc, "NoRep");
    psrpc_method m = nt_method("Echo", PSRPC_ROUTING_QUEUE, 0);
    nt_srv *srv = nt_srv_new(fb, svc, &m);
    REQUIRE(srv->server);
    psrpc_client *cl = nt_client(b, svc, 3000);
    REQUIRE(cl);
    int st;
    char msg[512];
    long long took;
    /* the first call waits for the reply subscriptions and gets the refusal */
    sync_call(cl, &m, &st, msg, sizeof msg, &took);
    fprintf(stderr, "  first call: %s after %lld ms: %s\n", psrpc_status_name(st), took, msg);
    CHECK_EQ_INT(st, PSRPC_PERMISSION_DENIED);
    CHECK(took < nt_ms(2000));
    /* later calls fail at once with the same refusal (before: request timed out after 3 s) */
    th_sleep_ms(200);
    for (int i = 0; i < 3; i++) {
        sync_call(cl, &m, &st, msg, sizeof msg, &took);
        fprintf(stderr, "  call %d: %s after %lld ms: %s\n", i + 2, psrpc_status_name(st), took,
                msg);
        CHECK_EQ_INT(st, PSRPC_PERMISSION_DENIED);
        CHECK(took < nt_ms(500));
        CHECK(strstr(msg, "Permissions Violation") != NULL);
    }
    /* a stream open (also needs the client stream subject) fails the same way */
    psrpc_method chat = nt_method("Chat", PSRPC_ROUTING_QUEUE, PSRPC_METHOD_STREAM);
    for (int i = 0; i < 2; i++) {
        open_rec *r = (open_rec *)calloc(1, sizeof *r);
        psrpc_stream *cs = NULL;
        long long t0 = th_now_ms();
        REQUIRE(psrpc_client_open_stream(&cs, cl, &chat, NULL, or_open, or_msg, or_close, r,
                                         NULL) == PSRPC_OK);
        CHECK(WAIT_UNTIL(atomic_load(&r->opened) == 1, nt_ms(2000)));
        fprintf(stderr, "  stream open %d: %s after %lld ms\n", i + 1, psrpc_status_name(r->status),
                th_now_ms() - t0);
        CHECK_EQ_INT(r->status, PSRPC_PERMISSION_DENIED);
        CHECK(th_now_ms() - t0 < nt_ms(1000));
        psrpc_stream_free(cs);
        WAIT_UNTIL(atomic_load(&r->closed) == 1, nt_ms(2000));
        free(r);
        th_sleep_ms(100);
    }
    /* the server side of the same bus is unaffected: a full client still gets answers */
    psrpc_client *fc = nt_client(fb, svc, 3000);
    CHECK(fc && nt_roundtrip(fc, &m, "ok") == PSRPC_OK);
    psrpc_client_free(fc);
    psrpc_client_free(cl);
    nt_srv_stop(srv);
    psrpc_bus_free(b);
    psrpc_bus_free(fb);
    free(srv);
    nt_server_kill(&s);
}

TEST_MAIN()
