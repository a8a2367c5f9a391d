/* Lifecycle (test plan G2, G4, G5, G6; R1, R9): graceful and forced server
 * close with requests in flight, closing buses, clients and servers with 100
 * calls in flight, double close, use after close, and close/free from inside
 * callbacks. Every one-shot callback must run exactly once, every release
 * exactly once. */
#include "util.h"

static psrpc_method echo(void) { return tu_method("Echo", PSRPC_ROUTING_QUEUE, 0); }

typedef struct lfx {
    psrpc_bus *sbus, *cbus;
    tu_srv *srv;
    psrpc_client *cl;
    char service[64];
    bool sbus_freed, cbus_freed, cl_freed, srv_freed;
} lfx;

static lfx *lfx_new(int mode, int64_t selection_timeout) {
    lfx *f = (lfx *)calloc(1, sizeof *f);
    tu_service(f->service, sizeof f->service);
    if (open_bus_pair(&f->sbus, &f->cbus) != 0)
        return f;
    f->srv = tu_srv_new(f->sbus, f->service, NULL, mode);
    psrpc_method m = echo();
    if (!f->srv->server || tu_srv_register(f->srv, &m, NULL, 0) != PSRPC_OK)
        return f;
    f->cl = tu_client(f->cbus, f->service, 5000, selection_timeout);
    return f;
}

static bool lfx_ok(lfx *f) { return f->sbus && f->cbus && f->srv && f->srv->server && f->cl; }

static void lfx_free(lfx *f) {
    if (!f->cl_freed)
        psrpc_client_free(f->cl);
    if (f->srv && !f->srv_freed)
        psrpc_server_free(f->srv->server);
    if (!f->cbus_freed)
        psrpc_bus_free(f->cbus);
    if (!f->sbus_freed)
        psrpc_bus_free(f->sbus);
    tu_srv_destroy(f->srv);
    free(f);
}

/* Starts n held calls (timeout_ms each) and waits until the server holds all. */
static bool start_held(lfx *f, tu_call *c, int n, int64_t timeout_ms) {
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.timeout_ms = timeout_ms;
    psrpc_method m = echo();
    for (int i = 0; i < n; i++)
        if (tu_call_async(f->cl, &m, "held", &o, &c[i]) != PSRPC_OK)
            return false;
    return WAIT_UNTIL(tu_srv_nheld(f->srv) == n, 5000);
}

static int count_done(tu_call *c, int n) {
    int t = 0;
    for (int i = 0; i < n; i++)
        t += atomic_load(&c[i].count) > 0;
    return t;
}

static void check_all_once(tu_call *c, int n) {
    int bad = 0;
    for (int i = 0; i < n; i++)
        if (atomic_load(&c[i].count) != 1 || atomic_load(&c[i].bad) != 0)
            bad++;
    CHECK_EQ_INT(bad, 0);
}

/* A closed callback that records how many of a set of calls had completed
 * when it ran (everything on the handle must be finished by then). */
typedef struct closed_rec {
    atomic_int count;
    tu_call *calls;
    int ncalls;
    int done_at_close;
    atomic_int *release_counter;
    int released_at_close;
} closed_rec;

static void closed_rec_cb(void *ud) {
    closed_rec *r = (closed_rec *)ud;
    tu_note_cb_thread();
    if (r->calls)
        r->done_at_close = count_done(r->calls, r->ncalls);
    if (r->release_counter)
        r->released_at_close = atomic_load(r->release_counter);
    atomic_fetch_add(&r->count, 1);
}

static void tu_noop_release(void *u) { (void)u; }

static void dummy_msg_cb(psrpc_sub *s, const psrpc_msg *m, void *u) {
    (void)s;
    (void)m;
    (void)u;
}
static void dummy_handler(psrpc_request *r, void *u) {
    (void)u;
    psrpc_request_respond(r, NULL, 0);
}
static void multi_noop(uint64_t id, const psrpc_msg *r, const psrpc_error *e, const char *s,
                       void *u) {
    (void)id;
    (void)r;
    (void)e;
    (void)s;
    (void)u;
}

/* ------------------------------------------------------------------------ */

/* Graceful close: stops receiving, waits for the requests in flight; they are
 * answered later from another thread and delivered; then release and
 * closed_cb, once each. */
TEST(server_close_graceful_in_flight) {
    lfx *f = lfx_new(TU_HOLD, 300);
    REQUIRE(lfx_ok(f));
    enum { N = 100 };
    tu_call *c = tu_calls_new(N + 1);
    REQUIRE(start_held(f, c, N, 5000));
    closed_rec *cr = (closed_rec *)calloc(1, sizeof *cr);
    cr->release_counter = &f->srv->released;
    CHECK_EQ_INT(psrpc_server_close(f->srv->server, 0, closed_rec_cb, cr), PSRPC_OK);
    th_sleep_ms(150);
    CHECK_EQ_INT(atomic_load(&cr->count), 0);
    CHECK_EQ_INT(atomic_load(&f->srv->released), 0);
    /* a new call finds no server */
    psrpc_method m = echo();
    REQUIRE(tu_call_wait(f->cl, &m, "new", NULL, &c[N], 4000));
    CHECK_EQ_INT(c[N].status, PSRPC_UNAVAILABLE);
    CHECK_EQ_INT(count_done(c, N), 0);
    CHECK_EQ_INT(atomic_load(&cr->count), 0);
    /* answers from another thread are delivered */
    int mism = 0;
    CHECK_EQ_INT(tu_answer_all_from_thread(f->srv, PSRPC_OK, &mism), N);
    CHECK_EQ_INT(mism, 0);
    for (int i = 0; i < N; i++) {
        CHECK(tu_wait_count(&c[i].count, 1, 3000));
        CHECK_EQ_INT(c[i].status, PSRPC_OK);
        CHECK_EQ_STR(c[i].response, "late");
    }
    CHECK(WAIT_UNTIL(atomic_load(&cr->count) == 1, 3000));
    CHECK_EQ_INT(atomic_load(&f->srv->released), 1);
    CHECK_EQ_INT(cr->released_at_close, 1); /* release before closed_cb */
    th_sleep_ms(100);
    lfx_free(f);
    check_all_once(c, N + 1);
    CHECK_EQ_INT(atomic_load(&cr->count), 1);
    free(cr);
    free(c);
    TU_CHECK_THREADS();
}

/* Forced close: closed_cb at once; late answers return CANCELED and are
 * discarded; the callers run into their deadline, once each. */
TEST(server_close_forced_in_flight) {
    lfx *f = lfx_new(TU_HOLD, 0);
    REQUIRE(lfx_ok(f));
    enum { N = 100 };
    tu_call *c = tu_calls_new(N);
    REQUIRE(start_held(f, c, N, 800));
    closed_rec *cr = (closed_rec *)calloc(1, sizeof *cr);
    cr->release_counter = &f->srv->released;
    long long t0 = th_now_ms();
    CHECK_EQ_INT(psrpc_server_close(f->srv->server, PSRPC_CLOSE_FORCE, closed_rec_cb, cr),
                 PSRPC_OK);
    CHECK(WAIT_UNTIL(atomic_load(&cr->count) == 1, 2000));
    CHECK(th_now_ms() - t0 < tu_ms(500));
    CHECK_EQ_INT(cr->released_at_close, 1);
    int mism = 0;
    CHECK_EQ_INT(tu_answer_all_from_thread(f->srv, PSRPC_CANCELED, &mism), N);
    CHECK_EQ_INT(mism, 0);
    for (int i = 0; i < N; i++) {
        CHECK(tu_wait_count(&c[i].count, 1, 3000));
        CHECK_EQ_INT(c[i].status, PSRPC_DEADLINE_EXCEEDED);
    }
    th_sleep_ms(100);
    lfx_free(f);
    check_all_once(c, N);
    CHECK_EQ_INT(atomic_load(&cr->count), 1);
    free(cr);
    free(c);
}

/* A forced close hurries an ongoing graceful one: both closed callbacks run,
 * once each. */
TEST(server_close_forced_hurries_graceful) {
    lfx *f = lfx_new(TU_HOLD, 0);
    REQUIRE(lfx_ok(f));
    enum { N = 3 };
    tu_call *c = tu_calls_new(N);
    REQUIRE(start_held(f, c, N, 800));
    atomic_int *closed = (atomic_int *)calloc(2, sizeof *closed);
    CHECK_EQ_INT(psrpc_server_close(f->srv->server, 0, tu_count_cb, &closed[0]), PSRPC_OK);
    th_sleep_ms(100);
    CHECK_EQ_INT(atomic_load(&closed[0]), 0);
    CHECK_EQ_INT(psrpc_server_close(f->srv->server, PSRPC_CLOSE_FORCE, tu_count_cb, &closed[1]),
                 PSRPC_OK);
    CHECK(WAIT_UNTIL(atomic_load(&closed[0]) == 1 && atomic_load(&closed[1]) == 1, 2000));
    CHECK_EQ_INT(atomic_load(&f->srv->released), 1);
    int mism = 0;
    CHECK_EQ_INT(tu_answer_all_from_thread(f->srv, PSRPC_CANCELED, &mism), N);
    CHECK_EQ_INT(mism, 0);
    for (int i = 0; i < N; i++)
        CHECK(tu_wait_count(&c[i].count, 1, 3000));
    th_sleep_ms(100);
    lfx_free(f);
    check_all_once(c, N);
    CHECK_EQ_INT(atomic_load(&closed[0]), 1);
    CHECK_EQ_INT(atomic_load(&closed[1]), 1);
    free(closed);
    free(c);
}

/* Closing the client with 100 calls in flight: each completes once with
 * CANCELED "client is closed" before closed_cb. */
TEST(client_close_100_in_flight) {
    lfx *f = lfx_new(TU_HOLD, 0);
    REQUIRE(lfx_ok(f));
    enum { N = 100 };
    tu_call *c = tu_calls_new(N);
    REQUIRE(start_held(f, c, N, 5000));
    closed_rec *cr = (closed_rec *)calloc(1, sizeof *cr);
    cr->calls = c;
    cr->ncalls = N;
    CHECK_EQ_INT(psrpc_client_close(f->cl, closed_rec_cb, cr), PSRPC_OK);
    CHECK(WAIT_UNTIL(atomic_load(&cr->count) == 1, 3000));
    CHECK_EQ_INT(cr->done_at_close, N);
    for (int i = 0; i < N; i++) {
        if (c[i].status != PSRPC_CANCELED || strcmp(c[i].message, "client is closed") != 0) {
            fprintf(stderr, "  call %d: %d \"%s\"\n", i, c[i].status, c[i].message);
            CHECK(0);
            break;
        }
    }
    /* the server still answers: discarded */
    int mism = 0;
    CHECK_EQ_INT(tu_answer_all_from_thread(f->srv, PSRPC_OK, &mism), N);
    CHECK_EQ_INT(mism, 0);
    th_sleep_ms(200);
    check_all_once(c, N);
    lfx_free(f);
    check_all_once(c, N);
    CHECK_EQ_INT(atomic_load(&cr->count), 1);
    free(cr);
    free(c);
}

/* Closing the client's bus with 100 calls in flight: each completes once with
 * CANCELED, before the bus's closed_cb. */
TEST(client_bus_close_100_in_flight) {
    lfx *f = lfx_new(TU_HOLD, 0);
    REQUIRE(lfx_ok(f));
    enum { N = 100 };
    tu_call *c = tu_calls_new(N);
    REQUIRE(start_held(f, c, N, 5000));
    closed_rec *cr = (closed_rec *)calloc(1, sizeof *cr);
    cr->calls = c;
    cr->ncalls = N;
    CHECK_EQ_INT(psrpc_bus_close(f->cbus, closed_rec_cb, cr), PSRPC_OK);
    CHECK(WAIT_UNTIL(atomic_load(&cr->count) == 1, 3000));
    CHECK_EQ_INT(cr->done_at_close, N);
    int wrong = 0;
    for (int i = 0; i < N; i++)
        if (c[i].status != PSRPC_CANCELED || c[i].message[0] == 0)
            wrong++;
    CHECK_EQ_INT(wrong, 0);
    int mism = 0;
    CHECK_EQ_INT(tu_answer_all_from_thread(f->srv, PSRPC_OK, &mism), N);
    CHECK_EQ_INT(mism, 0);
    th_sleep_ms(100);
    lfx_free(f);
    check_all_once(c, N);
    CHECK_EQ_INT(atomic_load(&cr->count), 1);
    free(cr);
    free(c);
}

/* Closing the server's bus with 100 requests in flight: the handler's release
 * runs once before closed_cb, late answers return CANCELED, callers hit their
 * deadline once each. */
TEST(server_bus_close_100_in_flight) {
    lfx *f = lfx_new(TU_HOLD, 0);
    REQUIRE(lfx_ok(f));
    enum { N = 100 };
    tu_call *c = tu_calls_new(N);
    REQUIRE(start_held(f, c, N, 1000));
    closed_rec *cr = (closed_rec *)calloc(1, sizeof *cr);
    cr->release_counter = &f->srv->released;
    CHECK_EQ_INT(psrpc_bus_close(f->sbus, closed_rec_cb, cr), PSRPC_OK);
    CHECK(WAIT_UNTIL(atomic_load(&cr->count) == 1, 3000));
    CHECK_EQ_INT(cr->released_at_close, 1);
    int mism = 0;
    CHECK_EQ_INT(tu_answer_all_from_thread(f->srv, PSRPC_CANCELED, &mism), N);
    CHECK_EQ_INT(mism, 0);
    for (int i = 0; i < N; i++)
        CHECK(tu_wait_count(&c[i].count, 1, 4000));
    int wrong = 0;
    for (int i = 0; i < N; i++)
        wrong += c[i].status != PSRPC_DEADLINE_EXCEEDED;
    CHECK_EQ_INT(wrong, 0);
    th_sleep_ms(100);
    lfx_free(f);
    check_all_once(c, N);
    CHECK_EQ_INT(atomic_load(&cr->count), 1);
    free(cr);
    free(c);
}

/* psrpc_bus_free from a non-loop thread with 100 calls in flight: when it
 * returns, every call has completed (once) and nothing runs afterwards. */
TEST(bus_free_100_in_flight) {
    lfx *f = lfx_new(TU_HOLD, 0);
    REQUIRE(lfx_ok(f));
    enum { N = 100 };
    tu_call *c = tu_calls_new(N);
    REQUIRE(start_held(f, c, N, 5000));
    psrpc_bus_free(f->cbus);
    f->cbus_freed = true;
    CHECK_EQ_INT(count_done(c, N), N); /* no waiting: free joined the loop */
    psrpc_client_free(f->cl);
    f->cl_freed = true;
    psrpc_server_free(f->srv->server);
    f->srv_freed = true;
    psrpc_bus_free(f->sbus);
    f->sbus_freed = true;
    int rel = atomic_load(&f->srv->released);
    CHECK_EQ_INT(rel, 1);
    th_sleep_ms(100);
    CHECK_EQ_INT(atomic_load(&f->srv->released), rel);
    int mism = 0;
    CHECK_EQ_INT(tu_answer_all_from_thread(f->srv, PSRPC_CANCELED, &mism), N);
    CHECK_EQ_INT(mism, 0);
    check_all_once(c, N);
    lfx_free(f);
    free(c);
}

/* Double close of every handle: OK, and each closed_cb runs once. */
TEST(double_close_everything) {
    psrpc_bus *b[2];
    REQUIRE(open_bus_group(b, 2) == 0);
    char svc[64];
    tu_service(svc, sizeof svc);
    psrpc_server *srv = NULL;
    REQUIRE(psrpc_server_create(&srv, b[0], svc, NULL) == PSRPC_OK);
    psrpc_client *cl = tu_client(b[1], svc, 0, 0);
    REQUIRE(cl);
    psrpc_method sm = tu_method("Updates", PSRPC_ROUTING_MULTI, PSRPC_METHOD_SUBSCRIPTION);
    sm.output_type = "test.Update";
    psrpc_sub *sub = NULL;
    atomic_int *rel = (atomic_int *)calloc(1, sizeof *rel);
    REQUIRE(psrpc_client_subscribe(&sub, cl, &sm, NULL, 0, dummy_msg_cb, NULL, rel, tu_count_cb) ==
            PSRPC_OK);
    atomic_int *cnt = (atomic_int *)calloc(8, sizeof *cnt);
    CHECK_EQ_INT(psrpc_sub_close(sub, tu_count_cb, &cnt[0]), PSRPC_OK);
    CHECK_EQ_INT(psrpc_sub_close(sub, tu_count_cb, &cnt[1]), PSRPC_OK);
    CHECK_EQ_INT(psrpc_client_close(cl, tu_count_cb, &cnt[2]), PSRPC_OK);
    CHECK_EQ_INT(psrpc_client_close(cl, tu_count_cb, &cnt[3]), PSRPC_OK);
    CHECK_EQ_INT(psrpc_server_close(srv, 0, tu_count_cb, &cnt[4]), PSRPC_OK);
    CHECK_EQ_INT(psrpc_server_close(srv, 0, tu_count_cb, &cnt[5]), PSRPC_OK);
    CHECK_EQ_INT(psrpc_bus_close(b[1], tu_count_cb, &cnt[6]), PSRPC_OK);
    CHECK_EQ_INT(psrpc_bus_close(b[1], tu_count_cb, &cnt[7]), PSRPC_OK);
    for (int i = 0; i < 8; i++)
        CHECK(WAIT_UNTIL(atomic_load(&cnt[i]) == 1, 3000));
    /* closing the closed bus again (after its closed_cb): still OK, once */
    atomic_int *late = (atomic_int *)calloc(1, sizeof *late);
    CHECK_EQ_INT(psrpc_bus_close(b[1], tu_count_cb, late), PSRPC_OK);
    CHECK(WAIT_UNTIL(atomic_load(late) == 1, 3000));
    th_sleep_ms(100);
    psrpc_sub_free(sub);
    psrpc_client_free(cl);
    psrpc_server_free(srv);
    psrpc_bus_free(b[1]);
    psrpc_bus_free(b[0]);
    for (int i = 0; i < 8; i++)
        CHECK_EQ_INT(atomic_load(&cnt[i]), 1);
    CHECK_EQ_INT(atomic_load(late), 1);
    CHECK_EQ_INT(atomic_load(rel), 1);
    free(late);
    free(cnt);
    free(rel);
}

/* Use after close: each kind of call on a closed handle fails with CANCELED
 * and a "closed" message, either at once or through its one callback. */
static void check_closed_status(int rc, tu_call *c, const char *what) {
    if (rc == PSRPC_OK) {
        if (!tu_wait_count(&c->count, 1, 3000)) {
            fprintf(stderr, "  %s: accepted but never completed\n", what);
            CHECK(0);
            return;
        }
        if (c->status != PSRPC_CANCELED || !tu_contains_ci(c->message, "closed")) {
            fprintf(stderr, "  %s: completed with %d \"%s\"\n", what, c->status, c->message);
            CHECK(0);
        }
    } else {
        if (rc != PSRPC_CANCELED || !tu_contains_ci(psrpc_last_error(), "closed")) {
            fprintf(stderr, "  %s: returned %d \"%s\"\n", what, rc, psrpc_last_error());
            CHECK(0);
        }
    }
}

TEST(calls_after_close) {
    lfx *f = lfx_new(TU_ECHO, 0);
    REQUIRE(lfx_ok(f));
    atomic_int *closed = (atomic_int *)calloc(3, sizeof *closed);
    CHECK_EQ_INT(psrpc_client_close(f->cl, tu_count_cb, &closed[0]), PSRPC_OK);
    CHECK(WAIT_UNTIL(atomic_load(&closed[0]) == 1, 3000));
    psrpc_method m = echo();
    tu_call *c = tu_calls_new(8);
    uint64_t id;
    psrpc_clear_error();
    int rc = psrpc_client_call(&id, f->cl, &m, "x", 1, NULL, tu_call_cb, &c[0]);
    check_closed_status(rc, &c[0], "client_call");

    psrpc_msg *out = (psrpc_msg *)0x1;
    psrpc_clear_error();
    rc = psrpc_client_call_sync(&out, f->cl, &m, "x", 1, NULL);
    CHECK_EQ_INT(rc, PSRPC_CANCELED);
    CHECK(tu_contains_ci(psrpc_last_error(), "closed"));
    CHECK(out == NULL);

    psrpc_method fm = tu_method("Fanout", PSRPC_ROUTING_MULTI, 0);
    psrpc_clear_error();
    rc = psrpc_client_call_multi(&id, f->cl, &fm, "x", 1, NULL, multi_noop, tu_call_cb, &c[1]);
    check_closed_status(rc, &c[1], "client_call_multi");

    psrpc_method sm = tu_method("Updates", PSRPC_ROUTING_MULTI, PSRPC_METHOD_SUBSCRIPTION);
    sm.output_type = "test.Update";
    psrpc_sub *sub = NULL;
    tu_done *rd = (tu_done *)calloc(1, sizeof *rd);
    psrpc_clear_error();
    rc = psrpc_client_subscribe(&sub, f->cl, &sm, NULL, 0, dummy_msg_cb, tu_done_cb, rd,
                                tu_noop_release);
    if (rc == PSRPC_OK) {
        CHECK(WAIT_UNTIL(atomic_load(&rd->count) == 1, 3000));
        CHECK_EQ_INT(rd->status, PSRPC_CANCELED);
        CHECK(tu_contains_ci(rd->message, "closed"));
        psrpc_sub_free(sub);
    } else {
        CHECK_EQ_INT(rc, PSRPC_CANCELED);
        CHECK(tu_contains_ci(psrpc_last_error(), "closed"));
        CHECK(sub == NULL);
    }

    /* server */
    CHECK_EQ_INT(psrpc_server_close(f->srv->server, 0, tu_count_cb, &closed[1]), PSRPC_OK);
    CHECK(WAIT_UNTIL(atomic_load(&closed[1]) == 1, 3000));
    psrpc_method m2 = tu_method("Other", PSRPC_ROUTING_QUEUE, 0);
    tu_done *rd2 = (tu_done *)calloc(1, sizeof *rd2);
    psrpc_clear_error();
    rc = psrpc_server_register(f->srv->server, &m2, NULL, 0, dummy_handler, NULL, tu_done_cb, rd2,
                               tu_noop_release);
    if (rc == PSRPC_OK) {
        CHECK(WAIT_UNTIL(atomic_load(&rd2->count) == 1, 3000));
        CHECK_EQ_INT(rd2->status, PSRPC_CANCELED);
        CHECK_EQ_STR(rd2->message, "server is closed");
    } else {
        CHECK_EQ_INT(rc, PSRPC_CANCELED);
        CHECK_EQ_STR(psrpc_last_error(), "server is closed");
    }
    psrpc_clear_error();
    rc = psrpc_server_publish(f->srv->server, &sm, NULL, 0, "x", 1);
    CHECK(rc == PSRPC_CANCELED && tu_contains_ci(psrpc_last_error(), "closed"));

    /* bus */
    CHECK_EQ_INT(psrpc_bus_close(f->cbus, tu_count_cb, &closed[2]), PSRPC_OK);
    CHECK(WAIT_UNTIL(atomic_load(&closed[2]) == 1, 3000));
    psrpc_client *cl2 = (psrpc_client *)0x1;
    psrpc_clear_error();
    rc = psrpc_client_create(&cl2, f->cbus, f->service, NULL);
    CHECK_EQ_INT(rc, PSRPC_CANCELED);
    CHECK(tu_contains_ci(psrpc_last_error(), "closed"));
    CHECK(cl2 == NULL);
    psrpc_server *s2 = (psrpc_server *)0x1;
    rc = psrpc_server_create(&s2, f->cbus, f->service, NULL);
    CHECK_EQ_INT(rc, PSRPC_CANCELED);
    CHECK(s2 == NULL);

    th_sleep_ms(100);
    lfx_free(f);
    CHECK(atomic_load(&c[0].count) <= 1);
    CHECK(atomic_load(&c[1].count) <= 1);
    CHECK(atomic_load(&rd->count) <= 1);
    CHECK(atomic_load(&rd2->count) <= 1);
    for (int i = 0; i < 3; i++)
        CHECK_EQ_INT(atomic_load(&closed[i]), 1);
    free(rd);
    free(rd2);
    free(closed);
    free(c);
}

/* ------------------------------------------------------------------------ */
/* Close and free from inside callbacks                                      */
/* ------------------------------------------------------------------------ */

typedef struct incb {
    lfx *f;
    atomic_int closed;
    atomic_int hook_ran;
    int close_rc;
} incb;

static void close_client_hook(tu_call *c, void *arg) {
    (void)c;
    incb *x = (incb *)arg;
    x->close_rc = psrpc_client_close(x->f->cl, tu_count_cb, &x->closed);
    psrpc_client_free(x->f->cl);
    atomic_fetch_add(&x->hook_ran, 1);
}

/* Close and free the client from its own call's completion callback while
 * other calls are in flight: they complete once with CANCELED. */
TEST(close_client_in_call_cb) {
    lfx *f = lfx_new(TU_HOLD, 0);
    REQUIRE(lfx_ok(f));
    enum { N = 10 };
    tu_call *c = tu_calls_new(N + 1);
    REQUIRE(start_held(f, c, N, 5000));
    incb *x = (incb *)calloc(1, sizeof *x);
    x->f = f;
    c[N].hook = close_client_hook;
    c[N].hook_arg = x;
    /* this one fails fast: a method nobody serves, 100 ms selection */
    psrpc_method nobody = tu_method("Nobody", PSRPC_ROUTING_QUEUE, 0);
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.timeout_ms = 200;
    REQUIRE(tu_call_async(f->cl, &nobody, "x", &o, &c[N]) == PSRPC_OK);
    CHECK(WAIT_UNTIL(atomic_load(&x->closed) == 1, 4000));
    f->cl_freed = true;
    CHECK_EQ_INT(atomic_load(&x->hook_ran), 1);
    CHECK_EQ_INT(x->close_rc, PSRPC_OK);
    for (int i = 0; i < N; i++) {
        CHECK(tu_wait_count(&c[i].count, 1, 2000));
        CHECK_EQ_INT(c[i].status, PSRPC_CANCELED);
    }
    int mism = 0;
    tu_answer_all_from_thread(f->srv, PSRPC_OK, &mism);
    th_sleep_ms(100);
    lfx_free(f);
    check_all_once(c, N + 1);
    CHECK_EQ_INT(atomic_load(&x->closed), 1);
    free(x);
    free(c);
}

static void free_bus_hook(tu_call *c, void *arg) {
    (void)c;
    incb *x = (incb *)arg;
    psrpc_client_free(x->f->cl);
    psrpc_bus_free(x->f->cbus); /* on the loop thread: detaches */
    atomic_fetch_add(&x->hook_ran, 1);
}

/* Free the client and its bus from inside a call callback: the other calls in
 * flight still complete exactly once. */
TEST(free_bus_in_call_cb) {
    lfx *f = lfx_new(TU_HOLD, 0);
    REQUIRE(lfx_ok(f));
    enum { N = 10 };
    tu_call *c = tu_calls_new(N + 1);
    REQUIRE(start_held(f, c, N, 5000));
    incb *x = (incb *)calloc(1, sizeof *x);
    x->f = f;
    c[N].hook = free_bus_hook;
    c[N].hook_arg = x;
    psrpc_method nobody = tu_method("Nobody", PSRPC_ROUTING_QUEUE, 0);
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.timeout_ms = 200;
    REQUIRE(tu_call_async(f->cl, &nobody, "x", &o, &c[N]) == PSRPC_OK);
    CHECK(WAIT_UNTIL(atomic_load(&x->hook_ran) == 1, 4000));
    f->cl_freed = true;
    f->cbus_freed = true;
    for (int i = 0; i < N; i++) {
        CHECK(tu_wait_count(&c[i].count, 1, 2000));
        CHECK_EQ_INT(c[i].status, PSRPC_CANCELED);
    }
    int mism = 0;
    tu_answer_all_from_thread(f->srv, PSRPC_OK, &mism);
    th_sleep_ms(200);
    check_all_once(c, N + 1);
    lfx_free(f);
    check_all_once(c, N + 1);
    free(x);
    free(c);
}

/* The server closes itself (gracefully) from inside its handler, answers,
 * and is freed in its own closed callback. */
typedef struct self_close {
    psrpc_server *server;
    atomic_int handled;
    atomic_int closed;
    atomic_int released;
    int close_rc;
    int respond_rc;
    int force;
} self_close;

static void self_close_closed(void *ud) {
    self_close *s = (self_close *)ud;
    psrpc_server_free(s->server);
    atomic_fetch_add(&s->closed, 1);
}

static void self_close_release(void *ud) { atomic_fetch_add(&((self_close *)ud)->released, 1); }

static void self_close_handler(psrpc_request *req, void *ud) {
    self_close *s = (self_close *)ud;
    s->close_rc =
        psrpc_server_close(s->server, s->force ? PSRPC_CLOSE_FORCE : 0, self_close_closed, s);
    s->respond_rc = psrpc_request_respond(req, "bye", 3);
    atomic_fetch_add(&s->handled, 1);
}

static void run_self_close(int force) {
    psrpc_bus *sb, *cb;
    REQUIRE(open_bus_pair(&sb, &cb) == 0);
    char svc[64];
    tu_service(svc, sizeof svc);
    self_close *s = (self_close *)calloc(1, sizeof *s);
    s->force = force;
    REQUIRE(psrpc_server_create(&s->server, sb, svc, NULL) == PSRPC_OK);
    psrpc_method m = echo();
    REQUIRE(psrpc_server_register(s->server, &m, NULL, 0, self_close_handler, NULL, NULL, s,
                                  self_close_release) == PSRPC_OK);
    REQUIRE(psrpc_server_wait_ready(s->server, tu_ms(5000)) == PSRPC_OK);
    psrpc_client *cl = tu_client(cb, svc, 0, 0);
    REQUIRE(cl);
    tu_call *c = tu_calls_new(1);
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.timeout_ms = 600;
    REQUIRE(tu_call_wait(cl, &m, "x", &o, c, 4000));
    CHECK(WAIT_UNTIL(atomic_load(&s->closed) == 1, 3000));
    CHECK_EQ_INT(s->close_rc, PSRPC_OK);
    if (force) {
        CHECK_EQ_INT(s->respond_rc, PSRPC_CANCELED);
        CHECK_EQ_INT(c->status, PSRPC_DEADLINE_EXCEEDED);
    } else {
        CHECK_EQ_INT(s->respond_rc, PSRPC_OK);
        CHECK_EQ_INT(c->status, PSRPC_OK);
        CHECK_EQ_STR(c->response, "bye");
    }
    CHECK_EQ_INT(atomic_load(&s->released), 1);
    psrpc_client_free(cl);
    psrpc_bus_free(cb);
    psrpc_bus_free(sb);
    CHECK_EQ_INT(atomic_load(&s->handled), 1);
    CHECK_EQ_INT(atomic_load(&s->closed), 1);
    CHECK_EQ_INT(atomic_load(&s->released), 1);
    CHECK_EQ_INT(atomic_load(&c->count), 1);
    free(c);
    free(s);
}

TEST(server_close_in_handler_graceful) { run_self_close(0); }
TEST(server_close_in_handler_forced) { run_self_close(1); }

/* psrpc_bus_free inside the bus's own closed callback. */
typedef struct bus_self {
    psrpc_bus *bus;
    atomic_int closed;
} bus_self;

static void bus_self_closed(void *ud) {
    bus_self *b = (bus_self *)ud;
    psrpc_bus_free(b->bus);
    atomic_fetch_add(&b->closed, 1);
}

TEST(bus_free_in_closed_cb) {
    bus_self *b = (bus_self *)calloc(1, sizeof *b);
    psrpc_bus *v[1];
    REQUIRE(open_bus_group(v, 1) == 0);
    b->bus = v[0];
    char svc[64];
    tu_service(svc, sizeof svc);
    psrpc_client *cl = tu_client(b->bus, svc, 0, 0);
    REQUIRE(cl);
    CHECK_EQ_INT(psrpc_bus_close(b->bus, bus_self_closed, b), PSRPC_OK);
    CHECK(WAIT_UNTIL(atomic_load(&b->closed) == 1, 3000));
    psrpc_client_free(cl); /* after its bus: fine */
    th_sleep_ms(100);
    CHECK_EQ_INT(atomic_load(&b->closed), 1);
    free(b);
}

/* Free the client inside its own closed callback, and a client free with
 * no close at all while calls are in flight. */
typedef struct cl_self {
    psrpc_client *cl;
    atomic_int closed;
} cl_self;

static void cl_self_closed(void *ud) {
    cl_self *c = (cl_self *)ud;
    psrpc_client_free(c->cl);
    atomic_fetch_add(&c->closed, 1);
}

TEST(client_free_in_closed_cb_and_free_in_flight) {
    lfx *f = lfx_new(TU_HOLD, 0);
    REQUIRE(lfx_ok(f));
    cl_self *x = (cl_self *)calloc(1, sizeof *x);
    x->cl = tu_client(f->cbus, f->service, 0, 0);
    REQUIRE(x->cl);
    CHECK_EQ_INT(psrpc_client_close(x->cl, cl_self_closed, x), PSRPC_OK);
    CHECK(WAIT_UNTIL(atomic_load(&x->closed) == 1, 3000));

    enum { N = 20 };
    tu_call *c = tu_calls_new(N);
    REQUIRE(start_held(f, c, N, 5000));
    psrpc_client_free(f->cl); /* closes: calls complete CANCELED */
    f->cl_freed = true;
    for (int i = 0; i < N; i++) {
        CHECK(tu_wait_count(&c[i].count, 1, 3000));
        CHECK_EQ_INT(c[i].status, PSRPC_CANCELED);
    }
    int mism = 0;
    tu_answer_all_from_thread(f->srv, PSRPC_OK, &mism);
    th_sleep_ms(100);
    lfx_free(f);
    check_all_once(c, N);
    CHECK_EQ_INT(atomic_load(&x->closed), 1);
    free(x);
    free(c);
}

/* Many create/use/free cycles: nothing leaks into the next cycle, every
 * callback once. */
TEST(create_use_free_cycles) {
    enum { CYCLES = 30 };
    for (int k = 0; k < CYCLES; k++) {
        lfx *f = lfx_new(TU_ECHO, 0);
        REQUIRE(lfx_ok(f));
        tu_call *c = tu_calls_new(3);
        psrpc_method m = echo();
        for (int i = 0; i < 3; i++)
            REQUIRE(tu_call_async(f->cl, &m, "cycle", NULL, &c[i]) == PSRPC_OK);
        /* free with the calls possibly still in flight */
        if (k % 2)
            REQUIRE(tu_wait_count(&c[0].count, 1, 5000));
        psrpc_bus_free(f->cbus);
        f->cbus_freed = true;
        for (int i = 0; i < 3; i++)
            CHECK_EQ_INT(atomic_load(&c[i].count), 1);
        lfx_free(f);
        free(c);
    }
}

/* G5: work in flight from 4 threads (calls to a holding server and
 * subscriptions), then psrpc_bus_free from the main thread: every call
 * completes exactly once before free returns, every subscription's release
 * runs once, nothing runs afterwards. */
typedef struct g5_arg {
    lfx *f;
    tu_call *calls;
    int base;
    int started;
} g5_arg;

static void *g5_thread(void *a) {
    g5_arg *g = (g5_arg *)a;
    psrpc_method m = echo();
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.timeout_ms = 10000;
    for (int i = 0; i < 250; i++)
        if (tu_call_async(g->f->cl, &m, "g5", &o, &g->calls[g->base + i]) == PSRPC_OK)
            g->started++;
    return NULL;
}

static void g5_msg(psrpc_sub *s, const psrpc_msg *m, void *u) { (void)s, (void)m, (void)u; }

TEST(free_with_work_from_threads) {
    lfx *f = lfx_new(TU_HOLD, 0);
    REQUIRE(lfx_ok(f));
    enum { T = 4, N = T * 250, S = 10 };
    tu_call *c = tu_calls_new(N);
    pthread_t th[T];
    g5_arg ga[T];
    for (int i = 0; i < T; i++) {
        ga[i] = (g5_arg){f, c, i * 250, 0};
        pthread_create(&th[i], NULL, g5_thread, &ga[i]);
    }
    psrpc_method sm = tu_method("Updates", PSRPC_ROUTING_MULTI, PSRPC_METHOD_SUBSCRIPTION);
    sm.output_type = "test.Update";
    atomic_int *rel = (atomic_int *)calloc(S, sizeof *rel);
    psrpc_sub *subs[S];
    for (int i = 0; i < S; i++)
        REQUIRE(psrpc_client_subscribe(&subs[i], f->cl, &sm, NULL, 0, g5_msg, NULL, &rel[i],
                                       tu_count_cb) == PSRPC_OK);
    int started = 0;
    for (int i = 0; i < T; i++) {
        pthread_join(th[i], NULL);
        started += ga[i].started;
    }
    CHECK_EQ_INT(started, N);
    if (!WAIT_UNTIL(tu_srv_nheld(f->srv) == N, 5000))
        fprintf(stderr, "  only %d of %d requests reached the handler (slow consumer drops %llu)\n",
                tu_srv_nheld(f->srv), N,
                (unsigned long long)tu_stats(f->sbus).dropped_slow_consumer);
    long long t0 = th_now_ms();
    psrpc_bus_free(f->cbus);
    f->cbus_freed = true;
    CHECK(th_now_ms() - t0 < tu_ms(1000));
    CHECK_EQ_INT(count_done(c, N), N);
    for (int i = 0; i < S; i++)
        CHECK_EQ_INT(atomic_load(&rel[i]), 1);
    for (int i = 0; i < S; i++)
        psrpc_sub_free(subs[i]);
    th_sleep_ms(50);
    check_all_once(c, N);
    int mism = 0;
    tu_answer_all_from_thread(f->srv, PSRPC_OK, &mism);
    lfx_free(f);
    check_all_once(c, N);
    for (int i = 0; i < S; i++)
        CHECK_EQ_INT(atomic_load(&rel[i]), 1);
    free(rel);
    free(c);
}

/* psrpc_bus_watch: the current state first (CONNECTED, error NULL); a second
 * watcher replaces the first (whose release runs once); closing the bus
 * reports CLOSED last, then the release. */
typedef struct watch_rec {
    atomic_int calls;
    atomic_int released;
    atomic_int after_release;
    int states[16];
    int errors_non_null;
} watch_rec;

static void watch_cb(int state, const psrpc_error *e, void *ud) {
    watch_rec *w = (watch_rec *)ud;
    tu_note_cb_thread();
    if (atomic_load(&w->released))
        atomic_fetch_add(&w->after_release, 1);
    int i = atomic_load(&w->calls);
    if (i < 16)
        w->states[i] = state;
    if (e && state != PSRPC_BUS_DISCONNECTED)
        w->errors_non_null++;
    atomic_fetch_add(&w->calls, 1);
}

static void watch_release(void *ud) {
    watch_rec *w = (watch_rec *)ud;
    tu_note_cb_thread();
    atomic_fetch_add(&w->released, 1);
}

TEST(bus_watch_states) {
    psrpc_bus *v[1];
    REQUIRE(open_bus_group(v, 1) == 0);
    CHECK_EQ_INT(psrpc_bus_wait_ready(v[0], tu_ms(5000)), PSRPC_OK);
    watch_rec *w = (watch_rec *)calloc(2, sizeof *w);
    CHECK_EQ_INT(psrpc_bus_watch(v[0], watch_cb, &w[0], watch_release), PSRPC_OK);
    CHECK(WAIT_UNTIL(atomic_load(&w[0].calls) >= 1, 3000));
    CHECK_EQ_INT(w[0].states[0], PSRPC_BUS_CONNECTED);
    CHECK_EQ_INT(psrpc_bus_watch(v[0], watch_cb, &w[1], watch_release), PSRPC_OK);
    CHECK(WAIT_UNTIL(atomic_load(&w[0].released) == 1, 3000));
    CHECK(WAIT_UNTIL(atomic_load(&w[1].calls) >= 1, 3000));
    CHECK_EQ_INT(w[1].states[0], PSRPC_BUS_CONNECTED);
    atomic_int *closed = (atomic_int *)calloc(1, sizeof *closed);
    CHECK_EQ_INT(psrpc_bus_close(v[0], tu_count_cb, closed), PSRPC_OK);
    CHECK(WAIT_UNTIL(atomic_load(closed) == 1, 3000));
    CHECK(WAIT_UNTIL(atomic_load(&w[1].released) == 1, 3000));
    int n1 = atomic_load(&w[1].calls);
    CHECK(n1 >= 2);
    if (n1 >= 2 && n1 <= 16)
        CHECK_EQ_INT(w[1].states[n1 - 1], PSRPC_BUS_CLOSED);
    psrpc_bus_free(v[0]);
    for (int i = 0; i < 2; i++) {
        CHECK_EQ_INT(atomic_load(&w[i].released), 1);
        CHECK_EQ_INT(atomic_load(&w[i].after_release), 0);
        CHECK_EQ_INT(w[i].errors_non_null, 0);
    }
    /* on a closed bus: refused, never called */
    free(closed);
    free(w);
    TU_CHECK_THREADS();
}

TEST_MAIN()
