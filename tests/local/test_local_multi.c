/* Multi calls (MULTI routing, wire spec 9, interop plan 16.5): one result per
 * server as it arrives, then on_done exactly once when the timeout ends the
 * collection (error NULL), or with the cause (cancel, close). */
#include "util.h"

static psrpc_method fanout_method(void) { return tu_method("Fanout", PSRPC_ROUTING_MULTI, 0); }

#define MR_MAX 16

/* Collector for one multi call: results and the done outcome. */
typedef struct multi_rec {
    atomic_int results;
    atomic_int done;
    atomic_int after_done; /* results delivered after on_done: must stay 0 */
    atomic_int bad;
    tu_call res[MR_MAX];
    tu_call fin;
    uint64_t done_call_id;
} multi_rec;

static void multi_result_cb(uint64_t id, const psrpc_msg *resp, const psrpc_error *err,
                            const char *server_id, void *ud) {
    multi_rec *m = (multi_rec *)ud;
    tu_note_cb_thread();
    if (atomic_load(&m->done))
        atomic_fetch_add(&m->after_done, 1);
    int i = atomic_load(&m->results);
    if (i < MR_MAX)
        tu_call_cb(id, resp, err, server_id, &m->res[i]);
    else
        atomic_fetch_add(&m->bad, 1);
    atomic_fetch_add(&m->results, 1);
}

static void multi_done_cb(uint64_t id, const psrpc_msg *resp, const psrpc_error *err,
                          const char *server_id, void *ud) {
    multi_rec *m = (multi_rec *)ud;
    tu_note_cb_thread();
    (void)server_id;
    if (resp)
        atomic_fetch_add(&m->bad, 1); /* done carries no response */
    m->done_call_id = id;
    m->fin.status = PSRPC_OK;
    if (err)
        tu_copy_error(&m->fin, err);
    m->fin.at_ms = th_now_ms();
    atomic_fetch_add(&m->done, 1);
}

static int multi_start(psrpc_client *cl, const psrpc_method *m, const char *payload,
                       const psrpc_call_options *o, multi_rec *r, uint64_t *id) {
    int rc = psrpc_client_call_multi(id, cl, m, payload, strlen(payload), o, multi_result_cb,
                                     multi_done_cb, r);
    if (rc != PSRPC_OK)
        fprintf(stderr, "  psrpc_client_call_multi: %d %s\n", rc, psrpc_last_error());
    return rc;
}

typedef struct mfx {
    psrpc_bus *bus[5];
    int nbus;
    tu_srv *s[4];
    int n;
    psrpc_client *cl;
    char service[64];
} mfx;

/* n servers, each on its own bus; server i uses modes[i]; topics[i] may be
 * NULL (no topic). */
static mfx *mfx_new(int n, const int *modes, const char *const *topics) {
    mfx *f = (mfx *)calloc(1, sizeof *f);
    f->n = n;
    f->nbus = n + 1;
    tu_service(f->service, sizeof f->service);
    if (open_bus_group(f->bus, f->nbus) != 0)
        return f;
    psrpc_method m = fanout_method();
    if (topics)
        m.flags |= PSRPC_METHOD_TOPICS;
    for (int i = 0; i < n; i++) {
        f->s[i] = tu_srv_new(f->bus[i], f->service, NULL, modes[i]);
        if (!f->s[i]->server)
            return f;
        const char *t[1] = {topics ? topics[i] : NULL};
        if (tu_srv_register(f->s[i], &m, topics ? t : NULL, topics ? 1 : 0) != PSRPC_OK)
            return f;
    }
    f->cl = tu_client(f->bus[n], f->service, 3000, 0);
    return f;
}

static bool mfx_ok(mfx *f) {
    if (!f->cl)
        return false;
    for (int i = 0; i < f->n; i++)
        if (!f->s[i] || !f->s[i]->server)
            return false;
    return true;
}

static void mfx_free(mfx *f) {
    psrpc_client_free(f->cl);
    for (int i = 0; i < f->n; i++)
        if (f->s[i])
            psrpc_server_free(f->s[i]->server);
    for (int i = 0; i < f->nbus; i++)
        psrpc_bus_free(f->bus[i]);
    for (int i = 0; i < f->n; i++)
        tu_srv_destroy(f->s[i]);
    free(f);
}

/* ------------------------------------------------------------------------ */

/* M1: 3 servers, one failing: 3 results (2 ok, 1 error with code and
 * message), then on_done once with NULL error after the timeout, not
 * before. */
TEST(multi_three_servers_one_error) {
    const int modes[3] = {TU_ECHO_ID, TU_FAIL, TU_ECHO_ID};
    mfx *f = mfx_new(3, modes, NULL);
    REQUIRE(mfx_ok(f));
    f->s[1]->fail_status = PSRPC_NOT_FOUND;
    f->s[1]->fail_message = "not here";
    multi_rec *r = (multi_rec *)calloc(1, sizeof *r);
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.timeout_ms = 600;
    psrpc_method m = fanout_method();
    uint64_t id = 0;
    long long t0 = th_now_ms();
    REQUIRE(multi_start(f->cl, &m, "fan", &o, r, &id) == PSRPC_OK);
    CHECK(id != 0);
    CHECK(WAIT_UNTIL(atomic_load(&r->results) == 3, 3000));
    /* not before the timeout */
    CHECK(atomic_load(&r->done) == 0 || th_now_ms() - t0 >= 550);
    REQUIRE(WAIT_UNTIL(atomic_load(&r->done) == 1, 4000));
    CHECK(r->fin.at_ms - t0 >= 550);
    CHECK_EQ_INT(r->fin.status, PSRPC_OK); /* error NULL */
    CHECK_EQ_INT(r->done_call_id, id);
    th_sleep_ms(100);
    CHECK_EQ_INT(atomic_load(&r->results), 3);
    CHECK_EQ_INT(atomic_load(&r->done), 1);
    CHECK_EQ_INT(atomic_load(&r->after_done), 0);
    CHECK_EQ_INT(atomic_load(&r->bad), 0);
    int ok = 0, err = 0, seen[3] = {0, 0, 0};
    for (int i = 0; i < 3 && i < atomic_load(&r->results); i++) {
        tu_call *c = &r->res[i];
        CHECK_EQ_INT(atomic_load(&c->bad), 0);
        CHECK_EQ_INT(c->cb_call_id, id);
        if (c->status == PSRPC_OK) {
            ok++;
            CHECK_EQ_STR(c->server_id, c->response);
        } else {
            err++;
            CHECK_EQ_INT(c->status, PSRPC_NOT_FOUND);
            CHECK_EQ_STR(c->code, "not_found");
            CHECK_EQ_STR(c->message, "not here");
            if (c->server_id[0])
                CHECK_EQ_STR(c->server_id, f->s[1]->id);
        }
        for (int k = 0; k < 3; k++)
            if (strcmp(c->server_id, f->s[k]->id) == 0)
                seen[k]++;
    }
    CHECK_EQ_INT(ok, 2);
    CHECK_EQ_INT(err, 1);
    CHECK_EQ_INT(seen[0], 1);
    CHECK_EQ_INT(seen[2], 1);
    for (int k = 0; k < 3; k++)
        CHECK_EQ_INT(atomic_load(&f->s[k]->handled), 1);
    mfx_free(f);
    CHECK_EQ_INT(atomic_load(&r->done), 1);
    CHECK_EQ_INT(atomic_load(&r->results), 3);
    free(r);
    TU_CHECK_THREADS();
}

/* M3: no servers: zero results, done once (NULL error) after the timeout. */
TEST(multi_no_servers) {
    mfx *f = mfx_new(0, NULL, NULL);
    REQUIRE(f->cl);
    multi_rec *r = (multi_rec *)calloc(1, sizeof *r);
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.timeout_ms = 400;
    psrpc_method m = fanout_method();
    uint64_t id;
    long long t0 = th_now_ms();
    REQUIRE(multi_start(f->cl, &m, "none", &o, r, &id) == PSRPC_OK);
    REQUIRE(WAIT_UNTIL(atomic_load(&r->done) == 1, 3000));
    CHECK(r->fin.at_ms - t0 >= 350);
    CHECK_EQ_INT(r->fin.status, PSRPC_OK);
    th_sleep_ms(100);
    CHECK_EQ_INT(atomic_load(&r->results), 0);
    CHECK_EQ_INT(atomic_load(&r->done), 1);
    mfx_free(f);
    CHECK_EQ_INT(atomic_load(&r->done), 1);
    free(r);
}

/* M4: cancel mid-way: the results so far, then on_done promptly with CANCELED
 * "request canceled"; nothing after, not even the held server's answer. */
TEST(multi_cancel) {
    const int modes[3] = {TU_ECHO_ID, TU_ECHO_ID, TU_HOLD};
    mfx *f = mfx_new(3, modes, NULL);
    REQUIRE(mfx_ok(f));
    multi_rec *r = (multi_rec *)calloc(1, sizeof *r);
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.timeout_ms = 5000;
    psrpc_method m = fanout_method();
    uint64_t id;
    REQUIRE(multi_start(f->cl, &m, "c", &o, r, &id) == PSRPC_OK);
    REQUIRE(WAIT_UNTIL(atomic_load(&r->results) == 2 && tu_srv_nheld(f->s[2]) == 1, 3000));
    long long t0 = th_now_ms();
    CHECK_EQ_INT(psrpc_client_cancel(f->cl, id), PSRPC_OK);
    REQUIRE(WAIT_UNTIL(atomic_load(&r->done) == 1, 3000));
    CHECK(r->fin.at_ms - t0 < tu_ms(1000));
    CHECK_EQ_INT(r->fin.status, PSRPC_CANCELED);
    CHECK_EQ_STR(r->fin.code, "canceled");
    CHECK_EQ_STR(r->fin.message, "request canceled");
    int mism = 0;
    CHECK_EQ_INT(tu_answer_all_from_thread(f->s[2], PSRPC_OK, &mism), 1);
    CHECK_EQ_INT(mism, 0);
    th_sleep_ms(200);
    CHECK_EQ_INT(atomic_load(&r->results), 2);
    CHECK_EQ_INT(atomic_load(&r->done), 1);
    CHECK_EQ_INT(atomic_load(&r->after_done), 0);
    mfx_free(f);
    CHECK_EQ_INT(atomic_load(&r->done), 1);
    free(r);
}

/* M2: topics: servers on a, a, b; a call on a gets exactly 2 results. */
TEST(multi_topics) {
    const int modes[3] = {TU_ECHO_ID, TU_ECHO_ID, TU_ECHO_ID};
    const char *topics[3] = {"a", "a", "b"};
    mfx *f = mfx_new(3, modes, topics);
    REQUIRE(mfx_ok(f));
    multi_rec *r = (multi_rec *)calloc(1, sizeof *r);
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.timeout_ms = 400;
    const char *ta[] = {"a"};
    o.topics = ta;
    o.topic_count = 1;
    psrpc_method m = fanout_method();
    m.flags |= PSRPC_METHOD_TOPICS;
    uint64_t id;
    REQUIRE(multi_start(f->cl, &m, "t", &o, r, &id) == PSRPC_OK);
    REQUIRE(WAIT_UNTIL(atomic_load(&r->done) == 1, 3000));
    CHECK_EQ_INT(atomic_load(&r->results), 2);
    CHECK_EQ_INT(atomic_load(&f->s[0]->handled), 1);
    CHECK_EQ_INT(atomic_load(&f->s[1]->handled), 1);
    CHECK_EQ_INT(atomic_load(&f->s[2]->handled), 0);
    CHECK_EQ_STR(f->s[0]->last_topic, "a");
    mfx_free(f);
    free(r);
}

/* Several multi calls at once, each with its own results. */
TEST(multi_concurrent) {
    const int modes[3] = {TU_ECHO, TU_ECHO, TU_ECHO};
    mfx *f = mfx_new(3, modes, NULL);
    REQUIRE(mfx_ok(f));
    enum { N = 10 };
    multi_rec *r = (multi_rec *)calloc(N, sizeof *r);
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.timeout_ms = 500;
    psrpc_method m = fanout_method();
    for (int i = 0; i < N; i++) {
        char p[16];
        snprintf(p, sizeof p, "p%d", i);
        uint64_t id;
        REQUIRE(multi_start(f->cl, &m, p, &o, &r[i], &id) == PSRPC_OK);
    }
    for (int i = 0; i < N; i++) {
        REQUIRE(WAIT_UNTIL(atomic_load(&r[i].done) == 1, 4000));
        CHECK_EQ_INT(atomic_load(&r[i].results), 3);
        char p[16];
        snprintf(p, sizeof p, "p%d", i);
        for (int k = 0; k < 3 && k < atomic_load(&r[i].results); k++)
            CHECK_EQ_STR(r[i].res[k].response, p);
    }
    mfx_free(f);
    for (int i = 0; i < N; i++)
        CHECK_EQ_INT(atomic_load(&r[i].done), 1);
    free(r);
}

/* Closing the client ends an outstanding multi call: on_done once with
 * CANCELED. */
TEST(multi_client_close) {
    const int modes[1] = {TU_HOLD};
    mfx *f = mfx_new(1, modes, NULL);
    REQUIRE(mfx_ok(f));
    multi_rec *r = (multi_rec *)calloc(1, sizeof *r);
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.timeout_ms = 5000;
    psrpc_method m = fanout_method();
    uint64_t id;
    REQUIRE(multi_start(f->cl, &m, "x", &o, r, &id) == PSRPC_OK);
    REQUIRE(WAIT_UNTIL(tu_srv_nheld(f->s[0]) == 1, 3000));
    atomic_int *closed = (atomic_int *)calloc(1, sizeof *closed);
    CHECK_EQ_INT(psrpc_client_close(f->cl, tu_count_cb, closed), PSRPC_OK);
    REQUIRE(WAIT_UNTIL(atomic_load(&r->done) == 1, 3000));
    CHECK_EQ_INT(r->fin.status, PSRPC_CANCELED);
    CHECK(tu_contains_ci(r->fin.message, "closed"));
    CHECK(WAIT_UNTIL(atomic_load(closed) == 1, 3000));
    int mism = 0;
    tu_answer_all_from_thread(f->s[0], PSRPC_OK, &mism);
    th_sleep_ms(100);
    CHECK_EQ_INT(atomic_load(&r->results), 0);
    mfx_free(f);
    CHECK_EQ_INT(atomic_load(&r->done), 1);
    CHECK_EQ_INT(atomic_load(closed), 1);
    free(closed);
    free(r);
}

/* The routing kinds are not interchangeable: a multi call needs a MULTI
 * method, a unary call a unary one. */
TEST(multi_wrong_routing_refused) {
    mfx *f = mfx_new(0, NULL, NULL);
    REQUIRE(f->cl);
    multi_rec *r = (multi_rec *)calloc(1, sizeof *r);
    psrpc_method q = tu_method("Echo", PSRPC_ROUTING_QUEUE, 0);
    uint64_t id;
    psrpc_clear_error();
    CHECK_EQ_INT(
        psrpc_client_call_multi(&id, f->cl, &q, "x", 1, NULL, multi_result_cb, multi_done_cb, r),
        PSRPC_INVALID_ARGUMENT);
    CHECK(psrpc_last_error()[0] != 0);
    psrpc_method mm = fanout_method();
    tu_call *c = tu_calls_new(1);
    psrpc_clear_error();
    CHECK_EQ_INT(psrpc_client_call(&id, f->cl, &mm, "x", 1, NULL, tu_call_cb, c),
                 PSRPC_INVALID_ARGUMENT);
    CHECK(psrpc_last_error()[0] != 0);
    th_sleep_ms(50);
    mfx_free(f);
    CHECK_EQ_INT(atomic_load(&r->done), 0);
    CHECK_EQ_INT(atomic_load(&c->count), 0);
    free(c);
    free(r);
}

TEST_MAIN()
