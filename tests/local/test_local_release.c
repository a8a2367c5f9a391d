/* Freeing buses from loop threads and psrpc_bus_release (issue 20, item 5).
 * psrpc_bus_free on ANY loop thread (a callback of its own bus or of
 * another bus) must not wait for that bus's loop: two buses freeing each
 * other from their callbacks would deadlock. psrpc_bus_release never waits,
 * from any thread; the loop thread finishes the close and exits by itself.
 * Runs over local, Redis and NATS (PSRPC_TEST_BUS_URL). */

#include "util.h"

/* Opens and frees one bus first, so that library-wide threads (nats.c's)
 * exist before the baseline is taken. */
static int baseline_threads(void) {
    psrpc_bus *b[1] = {NULL};
    if (open_bus_group(b, 1) == 0)
        psrpc_bus_free(b[0]);
    return th_count_threads();
}

typedef struct closed_rec {
    atomic_int closed;
} closed_rec;

static void closed_cb(void *ud) { atomic_fetch_add(&((closed_rec *)ud)->closed, 1); }

/* ---- two buses freeing each other from their callbacks ---- */

typedef struct pair_state {
    psrpc_bus *bus[2];
    atomic_int entered[2];
    atomic_int done[2];
    atomic_int released; /* watchers released: no callback uses the state */
    long long took_ms[2];
} pair_state;

typedef struct pair_arg {
    pair_state *ps;
    int me;
} pair_arg;

static void pair_watch(int state, const psrpc_error *e, void *ud) {
    (void)e;
    pair_arg *a = (pair_arg *)ud;
    pair_state *ps = a->ps;
    if (state != PSRPC_BUS_CONNECTED || atomic_exchange(&ps->entered[a->me], 1))
        return;
    /* Both callbacks run at the same time, each on its own loop thread. */
    long long until = th_now_ms() + 2000;
    while (!atomic_load(&ps->entered[1 - a->me]) && th_now_ms() < until)
        th_sleep_ms(1);
    long long t0 = th_now_ms();
    psrpc_bus_free(ps->bus[1 - a->me]);
    ps->took_ms[a->me] = th_now_ms() - t0;
    atomic_store(&ps->done[a->me], 1);
}

static void pair_release(void *ud) { atomic_fetch_add(&((pair_arg *)ud)->ps->released, 1); }

TEST(two_buses_free_each_other_from_callbacks) {
    int base = baseline_threads();
    pair_state *ps = (pair_state *)calloc(1, sizeof *ps);
    pair_arg *args = (pair_arg *)calloc(2, sizeof *args);
    REQUIRE(open_bus_group(ps->bus, 1) == 0 && open_bus_group(ps->bus + 1, 1) == 0);
    for (int i = 0; i < 2; i++) {
        args[i].ps = ps;
        args[i].me = i;
    }
    REQUIRE(psrpc_bus_watch(ps->bus[0], pair_watch, &args[0], pair_release) == PSRPC_OK);
    REQUIRE(psrpc_bus_watch(ps->bus[1], pair_watch, &args[1], pair_release) == PSRPC_OK);
    bool both = WAIT_UNTIL(atomic_load(&ps->done[0]) && atomic_load(&ps->done[1]), 5000);
    if (!both) {
        /* The loop threads are stuck joining each other: nothing to clean. */
        fprintf(stderr, "  DEADLOCK: the callbacks' psrpc_bus_free calls never returned\n");
        fflush(stderr);
        _exit(1);
    }
    fprintf(stderr, "  frees in callbacks took %lld and %lld ms\n", ps->took_ms[0], ps->took_ms[1]);
    CHECK(ps->took_ms[0] < tu_ms(200));
    CHECK(ps->took_ms[1] < tu_ms(200));
    /* Both buses close (their watchers are released) and both loop threads
     * end by themselves. */
    CHECK(WAIT_UNTIL(atomic_load(&ps->released) == 2, 5000));
    CHECK(WAIT_UNTIL(th_count_threads() <= base, 5000));
    free(ps);
    free(args);
}

/* ---- psrpc_bus_release from the main thread ---- */

TEST(release_from_main_thread) {
    int base = baseline_threads();
    psrpc_bus *b[2];
    REQUIRE(open_bus_group(b, 2) == 0);
    char svc[64];
    tu_service(svc, sizeof svc);
    psrpc_method m = tu_method("Echo", PSRPC_ROUTING_QUEUE, 0);
    tu_srv *srv = tu_srv_new(b[0], svc, NULL, TU_ECHO);
    REQUIRE(srv->server && tu_srv_register(srv, &m, NULL, 0) == PSRPC_OK);
    psrpc_client *cl = tu_client(b[1], svc, 2000, 1000);
    tu_call *c = tu_calls_new(2);
    REQUIRE(tu_call_wait(cl, &m, "hello", NULL, &c[0], 5000));
    CHECK_EQ_INT(c[0].status, PSRPC_OK);

    closed_rec *cr = (closed_rec *)calloc(2, sizeof *cr);
    CHECK_EQ_INT(psrpc_bus_close(b[0], closed_cb, &cr[0]), PSRPC_OK);
    CHECK_EQ_INT(psrpc_bus_close(b[1], closed_cb, &cr[1]), PSRPC_OK);
    long long t0 = th_now_ms();
    psrpc_bus_release(b[0]);
    psrpc_bus_release(b[1]);
    psrpc_bus_release(NULL);
    long long took = th_now_ms() - t0;
    fprintf(stderr, "  two releases took %lld ms\n", took);
    CHECK(took < tu_ms(50));
    CHECK(WAIT_UNTIL(atomic_load(&cr[0].closed) == 1 && atomic_load(&cr[1].closed) == 1, 5000));
    /* The children outlive the bus handle: a call on them fails, freeing
     * them is fine. */
    if (tu_call_async(cl, &m, "after", NULL, &c[1]) == PSRPC_OK) {
        CHECK(tu_wait_count(&c[1].count, 1, 5000));
        CHECK(c[1].status != PSRPC_OK);
    } else {
        CHECK_EQ_INT(psrpc_last_error_status(), PSRPC_CANCELED);
    }
    psrpc_client_free(cl);
    psrpc_server_free(srv->server);
    tu_srv_destroy(srv);
    CHECK(WAIT_UNTIL(th_count_threads() <= base, 5000));
    free(c);
    free(cr);
}

/* ---- release and free inside callbacks ---- */

typedef struct self_rec {
    psrpc_bus *self, *other;
    int mode; /* 0: release self, 1: free self, 2: release other, 3: free other */
    atomic_int ran;
    atomic_llong took_ms; /* -1 until the free returned */
    atomic_int released;
} self_rec;

static void self_watch(int state, const psrpc_error *e, void *ud) {
    (void)e;
    self_rec *r = (self_rec *)ud;
    if (state != PSRPC_BUS_CONNECTED || atomic_exchange(&r->ran, 1))
        return;
    long long t0 = th_now_ms();
    switch (r->mode) {
    case 0:
        psrpc_bus_release(r->self);
        break;
    case 1:
        psrpc_bus_free(r->self);
        break;
    case 2:
        psrpc_bus_release(r->other);
        break;
    default:
        psrpc_bus_free(r->other);
        break;
    }
    atomic_store(&r->took_ms, th_now_ms() - t0);
}

static void self_release(void *ud) { atomic_store(&((self_rec *)ud)->released, 1); }

TEST(release_and_free_inside_callbacks) {
    int base = baseline_threads();
    for (int mode = 0; mode < 4; mode++) {
        psrpc_bus *b[2] = {NULL, NULL};
        REQUIRE(open_bus_group(b, 1) == 0 && open_bus_group(b + 1, 1) == 0);
        self_rec *r = (self_rec *)calloc(1, sizeof *r);
        r->self = b[0];
        r->other = b[1];
        r->mode = mode;
        atomic_store(&r->took_ms, -1);
        REQUIRE(psrpc_bus_watch(b[0], self_watch, r, self_release) == PSRPC_OK);
        CHECK(WAIT_UNTIL(atomic_load(&r->took_ms) >= 0, 5000));
        fprintf(stderr, "  mode %d: took %lld ms\n", mode, (long long)atomic_load(&r->took_ms));
        CHECK(atomic_load(&r->took_ms) < tu_ms(200));
        if (mode < 2) {
            /* b[0] released itself: its close runs the watcher's release. */
            CHECK(WAIT_UNTIL(atomic_load(&r->released) == 1, 5000));
            psrpc_bus_free(b[1]);
        } else {
            psrpc_bus_free(b[0]);
            CHECK(atomic_load(&r->released) == 1);
        }
        CHECK(WAIT_UNTIL(th_count_threads() <= base, 5000));
        free(r);
    }
}

/* A bus released from its own callback while calls are in flight on it:
 * the calls complete (canceled) and everything is freed. */
typedef struct inflight_rec {
    psrpc_bus *bus;
    atomic_int released_bus;
    atomic_int watcher_released;
} inflight_rec;

static void inflight_release(void *ud) { atomic_store(&((inflight_rec *)ud)->watcher_released, 1); }

static void inflight_watch(int state, const psrpc_error *e, void *ud) {
    (void)e;
    inflight_rec *r = (inflight_rec *)ud;
    if (state == PSRPC_BUS_CONNECTED && !atomic_exchange(&r->released_bus, 1))
        psrpc_bus_release(r->bus);
}

TEST(release_self_in_callback_with_calls_in_flight) {
    int base = baseline_threads();
    psrpc_bus *b[2];
    REQUIRE(open_bus_group(b, 2) == 0);
    char svc[64];
    tu_service(svc, sizeof svc);
    psrpc_method m = tu_method("Hold", PSRPC_ROUTING_QUEUE, 0);
    tu_srv *srv = tu_srv_new(b[0], svc, NULL, TU_HOLD);
    REQUIRE(srv->server && tu_srv_register(srv, &m, NULL, 0) == PSRPC_OK);
    psrpc_client *cl = tu_client(b[1], svc, 5000, 1000);
    tu_call *c = tu_calls_new(4);
    for (int i = 0; i < 4; i++)
        CHECK_EQ_INT(tu_call_async(cl, &m, "held", NULL, &c[i]), PSRPC_OK);
    CHECK(WAIT_UNTIL(tu_srv_nheld(srv) == 4, 5000));
    inflight_rec *r = (inflight_rec *)calloc(1, sizeof *r);
    r->bus = b[1];
    REQUIRE(psrpc_bus_watch(b[1], inflight_watch, r, inflight_release) == PSRPC_OK);
    for (int i = 0; i < 4; i++) {
        CHECK(tu_wait_count(&c[i].count, 1, 5000));
        CHECK_EQ_INT(c[i].status, PSRPC_CANCELED);
    }
    psrpc_client_free(cl);
    psrpc_request *q;
    while ((q = tu_srv_pop(srv)))
        psrpc_request_fail(q, PSRPC_CANCELED, "test over");
    psrpc_server_free(srv->server);
    psrpc_bus_free(b[0]);
    tu_srv_destroy(srv);
    CHECK(WAIT_UNTIL(atomic_load(&r->watcher_released) == 1, 5000));
    CHECK(WAIT_UNTIL(th_count_threads() <= base, 5000));
    free(c);
    free(r);
}

TEST_MAIN()
