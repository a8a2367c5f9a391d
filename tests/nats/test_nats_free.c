/* psrpc_bus_free of a NATS bus inside a callback of another bus (issue 20,
 * item 5). A NATS bus's close flushes (up to 0.5 s) and waits for nats.c's
 * last callbacks (up to 3 s): with its server stopped (SIGSTOP) the close
 * takes that long. Freeing it on another bus's loop thread must not make
 * that loop wait for it; the freed bus still closes and its thread ends. */

#include "nt.h"

typedef struct free_rec {
    psrpc_bus *victim;
    bool release; /* psrpc_bus_release instead of psrpc_bus_free */
    atomic_int ran;
    atomic_llong took_ms;
} free_rec;

static void free_in_watch(int state, const psrpc_error *e, void *ud) {
    (void)e;
    free_rec *r = (free_rec *)ud;
    if (state != PSRPC_BUS_CONNECTED || atomic_exchange(&r->ran, 1))
        return;
    long long t0 = th_now_ms();
    if (r->release)
        psrpc_bus_release(r->victim);
    else
        psrpc_bus_free(r->victim);
    atomic_store(&r->took_ms, th_now_ms() - t0);
}

TEST(free_stalled_nats_bus_inside_other_bus_callback) {
    nt_server s;
    nt_server_init(&s, NULL);
    REQUIRE(nt_server_start(&s));
    /* Library-wide nats.c threads exist before the baseline. */
    psrpc_bus_options o = nt_opts();
    psrpc_bus *warm = nt_bus(s.url, &o);
    REQUIRE(warm && psrpc_bus_wait_ready(warm, nt_ms(5000)) == PSRPC_OK);
    psrpc_bus_free(warm);
    int base = th_count_threads();

    for (int release = 0; release < 2; release++) {
        psrpc_bus *b = nt_bus(s.url, &o);
        REQUIRE(b && psrpc_bus_wait_ready(b, nt_ms(5000)) == PSRPC_OK);
        /* Something buffered for the close to flush, then a silent server. */
        char svc[64];
        nt_unique(svc, sizeof svc, "Free");
        psrpc_method m = nt_method("Echo", PSRPC_ROUTING_QUEUE, 0);
        psrpc_client *cl = nt_client(b, svc, 1000);
        REQUIRE(cl);
        nt_server_signal(&s, SIGSTOP);
        psrpc_call_options co = PSRPC_CALL_OPTIONS_INIT;
        co.timeout_ms = 100;
        psrpc_msg *resp = NULL;
        psrpc_client_call_sync(&resp, cl, &m, "x", 1, &co);
        psrpc_client_free(cl);

        /* How long that close takes when nobody waits for it elsewhere:
         * measured on a second bus freed from the main thread. */
        psrpc_bus *a = nt_bus("local://", NULL);
        REQUIRE(a);
        free_rec *r = (free_rec *)calloc(1, sizeof *r);
        r->victim = b;
        r->release = release;
        atomic_store(&r->took_ms, -1);
        REQUIRE(psrpc_bus_watch(a, free_in_watch, r, NULL) == PSRPC_OK);
        CHECK(WAIT_UNTIL(atomic_load(&r->ran) == 1, 5000));
        CHECK(WAIT_UNTIL(atomic_load(&r->took_ms) >= 0, 5000));
        long long took = atomic_load(&r->took_ms);
        fprintf(stderr, "  psrpc_bus_%s of the stalled NATS bus on another loop: %lld ms\n",
                release ? "release" : "free", took);
        CHECK(took < nt_ms(100));
        /* The other bus's loop is not held up: its own free is quick. */
        long long t0 = th_now_ms();
        psrpc_bus_free(a);
        CHECK(th_now_ms() - t0 < nt_ms(100));
        /* The stalled bus finishes its close by itself once the server
         * answers again, and its threads end. */
        long long tc = th_now_ms();
        nt_server_signal(&s, SIGCONT);
        CHECK(WAIT_UNTIL(th_count_threads() <= base, 8000));
        fprintf(stderr, "  its threads ended %lld ms after SIGCONT\n", th_now_ms() - tc);
        free(r);
    }
    nt_server_kill(&s);
}

/* The same bus freed from the main thread waits for its close (bounded). */
TEST(free_stalled_nats_bus_from_main_waits_bounded) {
    nt_server s;
    nt_server_init(&s, NULL);
    REQUIRE(nt_server_start(&s));
    psrpc_bus_options o = nt_opts();
    psrpc_bus *b = nt_bus(s.url, &o);
    REQUIRE(b && psrpc_bus_wait_ready(b, nt_ms(5000)) == PSRPC_OK);
    nt_server_signal(&s, SIGSTOP);
    long long t0 = th_now_ms();
    psrpc_bus_free(b);
    long long took = th_now_ms() - t0;
    fprintf(stderr, "  psrpc_bus_free from main with the server stopped: %lld ms\n", took);
    CHECK(took < nt_ms(5000));
    nt_server_signal(&s, SIGCONT);
    nt_server_kill(&s);
}

TEST_MAIN()
