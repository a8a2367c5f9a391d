/* Unary calls (QUEUE routing, claim handshake): results, every error path,
 * timeouts, no server, cancel, expiry, deadlines seen by the handler,
 * metadata, ids, topics, deregistration, queue spread.
 * Wire spec sections 8, 12, 13; test plan groups M and G. */
#include "util.h"

static const psrpc_method *echo_method(void) {
    static psrpc_method m = PSRPC_METHOD_INIT;
    m.name = "Echo";
    m.routing = PSRPC_ROUTING_QUEUE;
    return &m;
}

/* A standard fixture: a server bus with one echo server, a client bus with one
 * client. */
typedef struct fx {
    psrpc_bus *sbus, *cbus;
    tu_srv *srv;
    psrpc_client *cl;
    char service[64];
} fx;

static fx *fx_new(int mode, int64_t client_timeout, int64_t selection_timeout) {
    fx *f = (fx *)calloc(1, sizeof *f);
    tu_service(f->service, sizeof f->service);
    if (open_bus_pair(&f->sbus, &f->cbus) != 0)
        return f;
    f->srv = tu_srv_new(f->sbus, f->service, NULL, mode);
    if (!f->srv->server || tu_srv_register(f->srv, echo_method(), NULL, 0) != PSRPC_OK)
        return f;
    f->cl = tu_client(f->cbus, f->service, client_timeout, selection_timeout);
    return f;
}

static bool fx_ok(fx *f) { return f->sbus && f->cbus && f->srv && f->srv->server && f->cl; }

static void fx_free(fx *f) {
    psrpc_client_free(f->cl);
    if (f->srv)
        psrpc_server_free(f->srv->server);
    psrpc_bus_free(f->cbus);
    psrpc_bus_free(f->sbus);
    tu_srv_destroy(f->srv);
    free(f);
}

/* ------------------------------------------------------------------------ */

TEST(unary_result) {
    fx *f = fx_new(TU_ECHO, 0, 0);
    REQUIRE(fx_ok(f));
    tu_call *c = tu_calls_new(1);
    REQUIRE(tu_call_wait(f->cl, echo_method(), "hello", NULL, c, 5000));
    th_sleep_ms(50);
    CHECK_EQ_INT(atomic_load(&c->count), 1);
    CHECK_EQ_INT(atomic_load(&c->bad), 0);
    CHECK_EQ_INT(c->status, PSRPC_OK);
    CHECK(c->has_response);
    CHECK_EQ_STR(c->response, "hello");
    CHECK_EQ_INT(c->response_len, 5);
    CHECK_EQ_STR(c->server_id, f->srv->id);
    CHECK(c->call_id != 0);
    CHECK_EQ_INT(atomic_load(&f->srv->handled), 1);
    CHECK_EQ_STR(f->srv->last_method, "Echo");
    CHECK_EQ_INT(f->srv->last_topic_count, 0);
    CHECK_EQ_STR(f->srv->last_payload, "hello");
    CHECK_EQ_STR(f->srv->last_client_id, psrpc_client_id(f->cl));
    CHECK_EQ_INT(atomic_load(&f->srv->answer_errors), 0);
    fx_free(f);
    CHECK_EQ_INT(atomic_load(&c->count), 1);
    free(c);
    TU_CHECK_THREADS();
}

TEST(unary_empty_payload) {
    fx *f = fx_new(TU_ECHO, 0, 0);
    REQUIRE(fx_ok(f));
    tu_call *c = tu_calls_new(1);
    uint64_t id = 0;
    REQUIRE(psrpc_client_call(&id, f->cl, echo_method(), NULL, 0, NULL, tu_call_cb, c) == PSRPC_OK);
    CHECK(id != 0);
    REQUIRE(tu_wait_count(&c->count, 1, 5000));
    CHECK_EQ_INT(c->status, PSRPC_OK);
    CHECK(c->has_response);
    CHECK_EQ_INT(c->response_len, 0);
    CHECK_EQ_INT(c->cb_call_id, id);
    fx_free(f);
    CHECK_EQ_INT(atomic_load(&c->count), 1);
    free(c);
}

TEST(unary_sync_call) {
    fx *f = fx_new(TU_ECHO, 0, 0);
    REQUIRE(fx_ok(f));
    psrpc_msg *out = NULL;
    int rc = psrpc_client_call_sync(&out, f->cl, echo_method(), "sync", 4, NULL);
    CHECK_EQ_INT(rc, PSRPC_OK);
    REQUIRE(out != NULL);
    CHECK_EQ_INT(psrpc_msg_size(out), 4);
    CHECK(memcmp(psrpc_msg_data(out), "sync", 4) == 0);
    psrpc_msg_release(out);

    /* a failing sync call: status is the error's, last error its message */
    f->srv->mode = TU_FAIL;
    f->srv->fail_status = PSRPC_NOT_FOUND;
    f->srv->fail_message = "no such thing";
    out = (psrpc_msg *)0x1;
    rc = psrpc_client_call_sync(&out, f->cl, echo_method(), "x", 1, NULL);
    CHECK_EQ_INT(rc, PSRPC_NOT_FOUND);
    CHECK_EQ_STR(psrpc_last_error(), "no such thing");
    CHECK_EQ_INT(psrpc_last_error_status(), PSRPC_NOT_FOUND);
    CHECK(out == NULL);
    fx_free(f);
}

/* Every status of the map: the handler fails with it, the client sees the same
 * code string, status and exact message. Local-only statuses travel as
 * "internal". */
static void status_handler(psrpc_request *req, void *ud) {
    tu_srv *s = (tu_srv *)ud;
    const psrpc_msg *p = psrpc_request_payload(req);
    char buf[32] = {0};
    size_t n = psrpc_msg_size(p) < sizeof buf - 1 ? psrpc_msg_size(p) : sizeof buf - 1;
    memcpy(buf, psrpc_msg_data(p), n);
    int st = atoi(buf);
    char msg[128];
    snprintf(msg, sizeof msg, "failed with %s \xe2\x9c\x93 (%d)", psrpc_status_name(st), st);
    if (psrpc_request_fail(req, st, msg) != PSRPC_OK)
        atomic_fetch_add(&s->answer_errors, 1);
    atomic_fetch_add(&s->handled, 1);
}

typedef struct status_entry {
    int value;
    const char *wire;
} status_entry;

static const status_entry all_statuses[] = {
#define X(name, value, code, desc) {value, code},
    PSRPC_STATUS_MAP(X)
#undef X
};

TEST(unary_every_error_code) {
    psrpc_bus *sb, *cb;
    REQUIRE(open_bus_pair(&sb, &cb) == 0);
    char svc[64];
    tu_service(svc, sizeof svc);
    tu_srv *s = tu_srv_new(sb, svc, NULL, TU_ECHO);
    REQUIRE(s->server);
    REQUIRE(psrpc_server_register(s->server, echo_method(), NULL, 0, status_handler, NULL, NULL, s,
                                  tu_srv_release) == PSRPC_OK);
    REQUIRE(psrpc_server_wait_ready(s->server, tu_ms(5000)) == PSRPC_OK);
    psrpc_client *cl = tu_client(cb, svc, 0, 0);
    REQUIRE(cl);

    size_t n = sizeof all_statuses / sizeof all_statuses[0];
    tu_call *c = tu_calls_new(n);
    int started = 0;
    for (size_t i = 0; i < n; i++) {
        if (all_statuses[i].value == PSRPC_OK)
            continue;
        char p[16];
        snprintf(p, sizeof p, "%d", all_statuses[i].value);
        if (tu_call_async(cl, echo_method(), p, NULL, &c[i]) == PSRPC_OK)
            started++;
    }
    CHECK_EQ_INT(started, (int)n - 1);
    for (size_t i = 0; i < n; i++) {
        int v = all_statuses[i].value;
        if (v == PSRPC_OK)
            continue;
        if (!tu_wait_count(&c[i].count, 1, 5000)) {
            fprintf(stderr, "  %s: no completion\n", psrpc_status_name(v));
            CHECK(0);
            continue;
        }
        char msg[128];
        snprintf(msg, sizeof msg, "failed with %s \xe2\x9c\x93 (%d)", psrpc_status_name(v), v);
        const char *code = all_statuses[i].wire ? all_statuses[i].wire : "internal";
        int expect = all_statuses[i].wire ? v : PSRPC_INTERNAL;
        if (c[i].status != expect || strcmp(c[i].code, code) != 0 ||
            strcmp(c[i].message, msg) != 0 || c[i].has_response) {
            fprintf(stderr, "  %s: got status %d code \"%s\" message \"%s\"\n",
                    psrpc_status_name(v), c[i].status, c[i].code, c[i].message);
            CHECK(0);
        }
        CHECK_EQ_INT(c[i].details_count, 0);
        CHECK_EQ_INT(atomic_load(&c[i].bad), 0);
    }
    CHECK_EQ_INT(atomic_load(&s->handled), (int)n - 1);
    CHECK_EQ_INT(atomic_load(&s->answer_errors), 0);
    th_sleep_ms(50);
    psrpc_client_free(cl);
    psrpc_server_free(s->server);
    psrpc_bus_free(cb);
    psrpc_bus_free(sb);
    for (size_t i = 0; i < n; i++)
        CHECK_EQ_INT(atomic_load(&c[i].count), all_statuses[i].value == PSRPC_OK ? 0 : 1);
    CHECK_EQ_INT(atomic_load(&s->released), 1);
    free(c);
    tu_srv_destroy(s);
    TU_CHECK_THREADS();
}

/* message NULL or "" becomes the status description (an empty error would
 * read as success on the wire). */
TEST(unary_fail_default_message) {
    fx *f = fx_new(TU_FAIL, 0, 0);
    REQUIRE(fx_ok(f));
    f->srv->fail_status = PSRPC_NOT_FOUND;
    f->srv->fail_message = NULL;
    tu_call *c = tu_calls_new(2);
    REQUIRE(tu_call_wait(f->cl, echo_method(), "a", NULL, &c[0], 5000));
    CHECK_EQ_INT(c[0].status, PSRPC_NOT_FOUND);
    CHECK_EQ_STR(c[0].code, "not_found");
    CHECK_EQ_STR(c[0].message, psrpc_status_str(PSRPC_NOT_FOUND));
    f->srv->fail_message = "";
    REQUIRE(tu_call_wait(f->cl, echo_method(), "b", NULL, &c[1], 5000));
    CHECK_EQ_INT(c[1].status, PSRPC_NOT_FOUND);
    CHECK_EQ_STR(c[1].message, "not found");
    CHECK_EQ_INT(atomic_load(&f->srv->answer_errors), 0);
    fx_free(f);
    CHECK_EQ_INT(atomic_load(&c[0].count), 1);
    CHECK_EQ_INT(atomic_load(&c[1].count), 1);
    free(c);
}

/* psrpc_request_fail_details: any code string travels unchanged, the message
 * exactly, and every detail's type URL and bytes. */
static const uint8_t detail_a[] = {0x0a, 0x05, 'h', 'e', 'l', 'l', 'o'};
static const uint8_t detail_b[] = {0x00, 0xff, 0x00, 0x7f, 0x80};

static void details_handler(psrpc_request *req, void *ud) {
    tu_srv *s = (tu_srv *)ud;
    const psrpc_msg *p = psrpc_request_payload(req);
    psrpc_error_detail d[2] = {
        {"type.googleapis.com/google.protobuf.StringValue", detail_a, sizeof detail_a},
        {"type.googleapis.com/test.Binary", detail_b, sizeof detail_b},
    };
    int rc;
    if (psrpc_msg_size(p) == 6 && memcmp(psrpc_msg_data(p), "custom", 6) == 0)
        rc = psrpc_request_fail_details(req, "my_custom_code", "custom failure \xc3\xbc", d, 2);
    else if (psrpc_msg_size(p) == 5 && memcmp(psrpc_msg_data(p), "known", 5) == 0)
        rc = psrpc_request_fail_details(req, "permission_denied", "go away", d, 1);
    else
        rc = psrpc_request_fail_details(req, "aborted", "no details", NULL, 0);
    if (rc != PSRPC_OK)
        atomic_fetch_add(&s->answer_errors, 1);
    atomic_fetch_add(&s->handled, 1);
}

TEST(unary_fail_details_custom_code) {
    psrpc_bus *sb, *cb;
    REQUIRE(open_bus_pair(&sb, &cb) == 0);
    char svc[64];
    tu_service(svc, sizeof svc);
    tu_srv *s = tu_srv_new(sb, svc, NULL, TU_ECHO);
    REQUIRE(s->server);
    REQUIRE(psrpc_server_register(s->server, echo_method(), NULL, 0, details_handler, NULL, NULL, s,
                                  tu_srv_release) == PSRPC_OK);
    REQUIRE(psrpc_server_wait_ready(s->server, tu_ms(5000)) == PSRPC_OK);
    psrpc_client *cl = tu_client(cb, svc, 0, 0);
    REQUIRE(cl);
    tu_call *c = tu_calls_new(3);
    REQUIRE(tu_call_wait(cl, echo_method(), "custom", NULL, &c[0], 5000));
    REQUIRE(tu_call_wait(cl, echo_method(), "known", NULL, &c[1], 5000));
    REQUIRE(tu_call_wait(cl, echo_method(), "none", NULL, &c[2], 5000));

    /* unknown code: status UNKNOWN, the code string carried end to end */
    CHECK_EQ_INT(c[0].status, PSRPC_UNKNOWN);
    CHECK_EQ_STR(c[0].code, "my_custom_code");
    CHECK_EQ_STR(c[0].message, "custom failure \xc3\xbc");
    CHECK_EQ_INT(c[0].details_count, 2);
    CHECK_EQ_STR(c[0].detail_url[0], "type.googleapis.com/google.protobuf.StringValue");
    CHECK_EQ_INT(c[0].detail_len[0], sizeof detail_a);
    CHECK(memcmp(c[0].detail_val[0], detail_a, sizeof detail_a) == 0);
    CHECK_EQ_STR(c[0].detail_url[1], "type.googleapis.com/test.Binary");
    CHECK_EQ_INT(c[0].detail_len[1], sizeof detail_b);
    CHECK(memcmp(c[0].detail_val[1], detail_b, sizeof detail_b) == 0);
    CHECK(!c[0].has_response);

    CHECK_EQ_INT(c[1].status, PSRPC_PERMISSION_DENIED);
    CHECK_EQ_STR(c[1].code, "permission_denied");
    CHECK_EQ_STR(c[1].message, "go away");
    CHECK_EQ_INT(c[1].details_count, 1);

    CHECK_EQ_INT(c[2].status, PSRPC_ABORTED);
    CHECK_EQ_STR(c[2].code, "aborted");
    CHECK_EQ_STR(c[2].message, "no details");
    CHECK_EQ_INT(c[2].details_count, 0);

    CHECK_EQ_INT(atomic_load(&s->answer_errors), 0);
    psrpc_client_free(cl);
    psrpc_server_free(s->server);
    psrpc_bus_free(cb);
    psrpc_bus_free(sb);
    for (int i = 0; i < 3; i++) {
        CHECK_EQ_INT(atomic_load(&c[i].count), 1);
        CHECK_EQ_INT(atomic_load(&c[i].bad), 0);
    }
    free(c);
    tu_srv_destroy(s);
}

/* The handler never answers in time: one completion with DEADLINE_EXCEEDED
 * "request timed out", not before the timeout; the late answer is discarded
 * (and counted as a response for no pending request). */
TEST(unary_timeout_late_answer_discarded) {
    fx *f = fx_new(TU_HOLD, 0, 0);
    REQUIRE(fx_ok(f));
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.timeout_ms = 300;
    tu_call *c = tu_calls_new(1);
    long long t0 = th_now_ms();
    REQUIRE(tu_call_wait(f->cl, echo_method(), "slow", &o, c, 3000));
    long long el = c->at_ms - t0;
    CHECK_EQ_INT(c->status, PSRPC_DEADLINE_EXCEEDED);
    CHECK_EQ_STR(c->code, "deadline_exceeded");
    CHECK_EQ_STR(c->message, "request timed out");
    CHECK(!c->has_response);
    CHECK(el >= 280);
    CHECK(el < tu_ms(2000));
    CHECK_EQ_INT(atomic_load(&f->srv->handled), 1);
    uint64_t unknown0 = tu_stats(f->cbus).dropped_unknown;

    int mism = 0;
    CHECK_EQ_INT(tu_answer_all_from_thread(f->srv, PSRPC_OK, &mism), 1);
    CHECK_EQ_INT(mism, 0);
    CHECK(WAIT_UNTIL(tu_stats(f->cbus).dropped_unknown > unknown0, 2000));
    th_sleep_ms(100);
    CHECK_EQ_INT(atomic_load(&c->count), 1);
    CHECK_EQ_INT(c->status, PSRPC_DEADLINE_EXCEEDED);
    fx_free(f);
    CHECK_EQ_INT(atomic_load(&c->count), 1);
    free(c);
}

/* The client's timeout option is used when the call gives none. */
TEST(unary_client_default_timeout) {
    fx *f = fx_new(TU_HOLD, 400, 0);
    REQUIRE(fx_ok(f));
    tu_call *c = tu_calls_new(1);
    long long t0 = th_now_ms();
    REQUIRE(tu_call_wait(f->cl, echo_method(), "slow", NULL, c, 4000));
    CHECK_EQ_INT(c->status, PSRPC_DEADLINE_EXCEEDED);
    CHECK_EQ_STR(c->message, "request timed out");
    CHECK(c->at_ms - t0 >= 380);
    CHECK(c->at_ms - t0 < tu_ms(2500)); /* not the 3 s library default */
    /* the handler saw a deadline of about 400 ms */
    pthread_mutex_lock(&f->srv->mu);
    int64_t span_ms = (f->srv->last_expiry_ns - f->srv->last_sent_at_ns) / 1000000;
    pthread_mutex_unlock(&f->srv->mu);
    CHECK(span_ms >= 300 && span_ms <= 500);
    fx_free(f);
    CHECK_EQ_INT(atomic_load(&c->count), 1);
    free(c);
}

/* No server: UNAVAILABLE "no response from servers" after the selection
 * timeout, not the request timeout. */
TEST(unary_no_server_unavailable) {
    psrpc_bus *sb, *cb;
    REQUIRE(open_bus_pair(&sb, &cb) == 0);
    char svc[64];
    tu_service(svc, sizeof svc);
    psrpc_client *cl = tu_client(cb, svc, 5000, 300);
    REQUIRE(cl);
    tu_call *c = tu_calls_new(2);
    long long t0 = th_now_ms();
    REQUIRE(tu_call_wait(cl, echo_method(), "x", NULL, &c[0], 4000));
    long long el = c[0].at_ms - t0;
    CHECK_EQ_INT(c[0].status, PSRPC_UNAVAILABLE);
    CHECK_EQ_STR(c[0].code, "unavailable");
    CHECK_EQ_STR(c[0].message, "no response from servers");
    CHECK(el >= 280);
    CHECK(el < tu_ms(2500));

    /* the 1 s default selection timeout */
    psrpc_client *cl2 = tu_client(cb, svc, 5000, 0);
    REQUIRE(cl2);
    t0 = th_now_ms();
    REQUIRE(tu_call_wait(cl2, echo_method(), "x", NULL, &c[1], 6000));
    el = c[1].at_ms - t0;
    CHECK_EQ_INT(c[1].status, PSRPC_UNAVAILABLE);
    CHECK_EQ_STR(c[1].message, "no response from servers");
    CHECK(el >= 950);
    CHECK(el < tu_ms(4000));
    psrpc_client_free(cl);
    psrpc_client_free(cl2);
    psrpc_bus_free(cb);
    psrpc_bus_free(sb);
    CHECK_EQ_INT(atomic_load(&c[0].count), 1);
    CHECK_EQ_INT(atomic_load(&c[1].count), 1);
    free(c);
}

/* Cancel after a server was chosen: CANCELED "request canceled", exactly once;
 * the late answer is discarded; cancelling again or an unknown id is ignored. */
TEST(unary_cancel) {
    fx *f = fx_new(TU_HOLD, 0, 0);
    REQUIRE(fx_ok(f));
    tu_call *c = tu_calls_new(1);
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.timeout_ms = 5000;
    REQUIRE(tu_call_async(f->cl, echo_method(), "x", &o, c) == PSRPC_OK);
    REQUIRE(WAIT_UNTIL(atomic_load(&f->srv->handled) == 1, 3000));
    long long t0 = th_now_ms();
    CHECK_EQ_INT(psrpc_client_cancel(f->cl, c->call_id), PSRPC_OK);
    REQUIRE(tu_wait_count(&c->count, 1, 2000));
    CHECK(c->at_ms - t0 < tu_ms(1000));
    CHECK_EQ_INT(c->status, PSRPC_CANCELED);
    CHECK_EQ_STR(c->code, "canceled");
    CHECK_EQ_STR(c->message, "request canceled");
    CHECK_EQ_INT(psrpc_client_cancel(f->cl, c->call_id), PSRPC_OK);
    CHECK_EQ_INT(psrpc_client_cancel(f->cl, 0xdeadbeefULL), PSRPC_OK);
    int mism = 0;
    CHECK_EQ_INT(tu_answer_all_from_thread(f->srv, PSRPC_OK, &mism), 1);
    CHECK_EQ_INT(mism, 0);
    th_sleep_ms(150);
    CHECK_EQ_INT(atomic_load(&c->count), 1);
    CHECK_EQ_INT(c->status, PSRPC_CANCELED);
    fx_free(f);
    CHECK_EQ_INT(atomic_load(&c->count), 1);
    free(c);
}

/* Cancel while selection is still running (no server): the call ends once,
 * promptly. Wire spec 8.3 gives the selection outcome (unavailable), the
 * header says CANCELED: either is accepted, nothing else. */
TEST(unary_cancel_during_selection) {
    psrpc_bus *sb, *cb;
    REQUIRE(open_bus_pair(&sb, &cb) == 0);
    char svc[64];
    tu_service(svc, sizeof svc);
    psrpc_client *cl = tu_client(cb, svc, 10000, 5000);
    REQUIRE(cl);
    tu_call *c = tu_calls_new(1);
    REQUIRE(tu_call_async(cl, echo_method(), "x", NULL, c) == PSRPC_OK);
    th_sleep_ms(100);
    long long t0 = th_now_ms();
    CHECK_EQ_INT(psrpc_client_cancel(cl, c->call_id), PSRPC_OK);
    REQUIRE(tu_wait_count(&c->count, 1, 3000));
    CHECK(c->at_ms - t0 < tu_ms(1000));
    CHECK(c->status == PSRPC_CANCELED || c->status == PSRPC_UNAVAILABLE);
    th_sleep_ms(100);
    psrpc_client_free(cl);
    psrpc_bus_free(cb);
    psrpc_bus_free(sb);
    CHECK_EQ_INT(atomic_load(&c->count), 1);
    free(c);
}

/* Cancel issued right after the call: exactly one completion. */
TEST(unary_cancel_immediately) {
    fx *f = fx_new(TU_ECHO, 0, 0);
    REQUIRE(fx_ok(f));
    enum { N = 50 };
    tu_call *c = tu_calls_new(N);
    for (int i = 0; i < N; i++) {
        REQUIRE(tu_call_async(f->cl, echo_method(), "x", NULL, &c[i]) == PSRPC_OK);
        CHECK_EQ_INT(psrpc_client_cancel(f->cl, c[i].call_id), PSRPC_OK);
    }
    for (int i = 0; i < N; i++) {
        REQUIRE(tu_wait_count(&c[i].count, 1, 5000));
        CHECK(c[i].status == PSRPC_CANCELED || c[i].status == PSRPC_OK);
        if (c[i].status == PSRPC_CANCELED)
            CHECK_EQ_STR(c[i].message, "request canceled");
    }
    th_sleep_ms(100);
    fx_free(f);
    for (int i = 0; i < N; i++)
        CHECK_EQ_INT(atomic_load(&c[i].count), 1);
    free(c);
}

/* A 1 ms timeout with a server registered: one completion; if the handler
 * runs at all it sees at most the call's timeout left. */
TEST(unary_tiny_timeout) {
    fx *f = fx_new(TU_ECHO, 0, 0);
    REQUIRE(fx_ok(f));
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.timeout_ms = 1;
    enum { N = 20 };
    tu_call *c = tu_calls_new(N);
    for (int i = 0; i < N; i++)
        REQUIRE(tu_call_async(f->cl, echo_method(), "x", &o, &c[i]) == PSRPC_OK);
    for (int i = 0; i < N; i++) {
        REQUIRE(tu_wait_count(&c[i].count, 1, 3000));
        CHECK(c[i].status == PSRPC_DEADLINE_EXCEEDED || c[i].status == PSRPC_UNAVAILABLE ||
              c[i].status == PSRPC_OK);
    }
    th_sleep_ms(200);
    pthread_mutex_lock(&f->srv->mu);
    if (atomic_load(&f->srv->handled) > 0)
        CHECK(f->srv->last_remaining_ms <= 1);
    pthread_mutex_unlock(&f->srv->mu);
    fx_free(f);
    for (int i = 0; i < N; i++)
        CHECK_EQ_INT(atomic_load(&c[i].count), 1);
    free(c);
}

/* Expired requests never reach a handler (R11): the server's loop is held up
 * by another handler while a 100 ms request waits; when the server gets to
 * it, it is past its expiry and is dropped (and counted). */
static void blocking_handler(psrpc_request *req, void *ud) {
    tu_srv *s = (tu_srv *)ud;
    atomic_fetch_add(&s->affinity_calls, 1); /* "started" */
    th_sleep_ms(600);                        /* deliberately violates "callbacks must not block" */
    if (psrpc_request_respond(req, "done", 4) != PSRPC_OK)
        atomic_fetch_add(&s->answer_errors, 1);
    atomic_fetch_add(&s->handled, 1);
}

TEST(unary_expired_request_dropped) {
    psrpc_bus *sb, *cb;
    REQUIRE(open_bus_pair(&sb, &cb) == 0);
    char svc[64];
    tu_service(svc, sizeof svc);
    tu_srv *blk = tu_srv_new(sb, svc, NULL, TU_ECHO);
    REQUIRE(blk->server);
    psrpc_method bm = tu_method("Block", PSRPC_ROUTING_QUEUE, 0);
    REQUIRE(psrpc_server_register(blk->server, &bm, NULL, 0, blocking_handler, NULL, NULL, blk,
                                  tu_srv_release) == PSRPC_OK);
    tu_srv *victim = (tu_srv *)calloc(1, sizeof *victim);
    pthread_mutex_init(&victim->mu, NULL);
    REQUIRE(psrpc_server_register(blk->server, echo_method(), NULL, 0, tu_srv_handler, NULL, NULL,
                                  victim, tu_srv_release) == PSRPC_OK);
    REQUIRE(psrpc_server_wait_ready(blk->server, tu_ms(5000)) == PSRPC_OK);
    psrpc_client *cl = tu_client(cb, svc, 5000, 0);
    REQUIRE(cl);
    uint64_t expired0 = tu_stats(sb).dropped_expired;

    tu_call *c = tu_calls_new(2);
    REQUIRE(tu_call_async(cl, &bm, "block", NULL, &c[0]) == PSRPC_OK);
    REQUIRE(WAIT_UNTIL(atomic_load(&blk->affinity_calls) == 1, 3000));
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.timeout_ms = 100;
    REQUIRE(tu_call_async(cl, echo_method(), "victim", &o, &c[1]) == PSRPC_OK);
    REQUIRE(tu_wait_count(&c[1].count, 1, 3000));
    CHECK(c[1].status == PSRPC_DEADLINE_EXCEEDED || c[1].status == PSRPC_UNAVAILABLE);
    REQUIRE(tu_wait_count(&c[0].count, 1, 5000));
    CHECK_EQ_INT(c[0].status, PSRPC_OK);
    CHECK_EQ_STR(c[0].response, "done");
    CHECK(WAIT_UNTIL(tu_stats(sb).dropped_expired > expired0, 2000));
    th_sleep_ms(100);
    CHECK_EQ_INT(atomic_load(&victim->handled), 0);
    psrpc_client_free(cl);
    psrpc_server_free(blk->server);
    psrpc_bus_free(cb);
    psrpc_bus_free(sb);
    CHECK_EQ_INT(atomic_load(&c[0].count), 1);
    CHECK_EQ_INT(atomic_load(&c[1].count), 1);
    CHECK_EQ_INT(atomic_load(&victim->handled), 0);
    CHECK_EQ_INT(atomic_load(&blk->released), 1);
    CHECK_EQ_INT(atomic_load(&victim->released), 1);
    free(c);
    tu_srv_destroy(victim);
    tu_srv_destroy(blk);
}

/* The handler reads its deadline: expiry = sent_at + the call's timeout,
 * remaining close to it. */
TEST(unary_handler_deadline) {
    fx *f = fx_new(TU_ECHO, 0, 0);
    REQUIRE(fx_ok(f));
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.timeout_ms = 2000;
    tu_call *c = tu_calls_new(1);
    int64_t before = tu_now_ns();
    REQUIRE(tu_call_wait(f->cl, echo_method(), "d", &o, c, 5000));
    CHECK_EQ_INT(c->status, PSRPC_OK);
    tu_srv *s = f->srv;
    int64_t span_ms = (s->last_expiry_ns - s->last_sent_at_ns) / 1000000;
    CHECK(span_ms >= 1900 && span_ms <= 2100);
    CHECK(s->last_remaining_ms > 2000 - tu_ms(1000));
    CHECK(s->last_remaining_ms <= 2000);
    CHECK(s->last_sent_at_ns >= before - 50 * 1000000LL);
    CHECK(s->last_sent_at_ns <= s->last_seen_now_ns + 50 * 1000000LL);
    CHECK(s->last_expiry_ns > s->last_seen_now_ns);
    int64_t rem_from_expiry = (s->last_expiry_ns - s->last_seen_now_ns) / 1000000;
    CHECK(rem_from_expiry - s->last_remaining_ms <= 50 &&
          s->last_remaining_ms - rem_from_expiry <= 50);
    fx_free(f);
    free(c);
}

/* M5: a handler calls another service with the time it has left: the nested
 * request's expiry is not later than its parent's. */
typedef struct nest {
    psrpc_client *inner_cl; /* on the outer server's bus */
    tu_srv *inner;
    int64_t outer_expiry_ns;
    int64_t outer_remaining_ms;
    atomic_int outer_handled;
    int nested_rc;
} nest;

typedef struct nest_call {
    psrpc_request *outer_req;
    nest *n;
} nest_call;

static void nested_done(uint64_t id, const psrpc_msg *resp, const psrpc_error *err, const char *sid,
                        void *ud) {
    (void)id, (void)sid;
    nest_call *nc = (nest_call *)ud;
    if (err)
        psrpc_request_fail(nc->outer_req, err->status, err->message);
    else
        psrpc_request_respond(nc->outer_req, psrpc_msg_data(resp), psrpc_msg_size(resp));
    free(nc);
}

static void outer_handler(psrpc_request *req, void *ud) {
    nest *n = (nest *)ud;
    n->outer_expiry_ns = psrpc_request_expiry_ns(req);
    n->outer_remaining_ms = psrpc_request_remaining_ms(req);
    /* The nested call inherits the outer request's deadline (test plan M5). */
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.deadline_ns = psrpc_request_expiry_ns(req);
    nest_call *nc = (nest_call *)calloc(1, sizeof *nc);
    nc->outer_req = req;
    nc->n = n;
    n->nested_rc =
        psrpc_client_call(NULL, n->inner_cl, echo_method(), "inner", 5, &o, nested_done, nc);
    if (n->nested_rc != PSRPC_OK) {
        psrpc_request_fail(req, PSRPC_INTERNAL, "nested call refused");
        free(nc);
    }
    atomic_fetch_add(&n->outer_handled, 1);
}

static void nest_release(void *ud) { (void)ud; }

TEST(unary_nested_call_deadline) {
    psrpc_bus *b[3];
    REQUIRE(open_bus_group(b, 3) == 0);
    char outer_svc[64], inner_svc[64];
    tu_service(outer_svc, sizeof outer_svc);
    tu_service(inner_svc, sizeof inner_svc);
    nest *n = (nest *)calloc(1, sizeof *n);
    n->inner = tu_srv_new(b[1], inner_svc, NULL, TU_ECHO);
    REQUIRE(n->inner->server);
    REQUIRE(tu_srv_register(n->inner, echo_method(), NULL, 0) == PSRPC_OK);
    n->inner_cl = tu_client(b[0], inner_svc, 0, 0);
    REQUIRE(n->inner_cl);
    psrpc_server *outer = NULL;
    REQUIRE(psrpc_server_create(&outer, b[0], outer_svc, NULL) == PSRPC_OK);
    REQUIRE(psrpc_server_register(outer, echo_method(), NULL, 0, outer_handler, NULL, NULL, n,
                                  nest_release) == PSRPC_OK);
    REQUIRE(psrpc_server_wait_ready(outer, tu_ms(5000)) == PSRPC_OK);
    psrpc_client *cl = tu_client(b[2], outer_svc, 0, 0);
    REQUIRE(cl);
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.timeout_ms = 1500;
    tu_call *c = tu_calls_new(1);
    REQUIRE(tu_call_wait(cl, echo_method(), "outer", &o, c, 5000));
    CHECK_EQ_INT(c->status, PSRPC_OK);
    CHECK_EQ_STR(c->response, "inner");
    CHECK_EQ_INT(n->nested_rc, PSRPC_OK);
    CHECK(n->outer_remaining_ms > 0 && n->outer_remaining_ms <= 1500);
    pthread_mutex_lock(&n->inner->mu);
    int64_t inner_expiry = n->inner->last_expiry_ns;
    pthread_mutex_unlock(&n->inner->mu);
    CHECK(inner_expiry > 0);
    CHECK(inner_expiry <= n->outer_expiry_ns);
    CHECK(n->outer_expiry_ns - inner_expiry < 1000 * 1000000LL); /* and not much earlier */
    psrpc_client_free(cl);
    psrpc_client_free(n->inner_cl);
    psrpc_server_free(outer);
    psrpc_server_free(n->inner->server);
    for (int i = 0; i < 3; i++)
        psrpc_bus_free(b[i]);
    CHECK_EQ_INT(atomic_load(&c->count), 1);
    tu_srv_destroy(n->inner);
    free(n);
    free(c);
}

/* Metadata: 100 UTF-8 entries round-trip to the handler. */
typedef struct md_seen {
    atomic_int handled;
    atomic_int released;
    size_t count;
    int matched;      /* entries found with the expected value via _get */
    int matched_at;   /* entries returned by _at with the expected value */
    int out_of_range; /* status of _at(count) */
    int missing_is_null;
    char client_id[128];
} md_seen;

#define MD_N 100
static void md_key(char *b, size_t n, int i) { snprintf(b, n, "ключ-%03d-\xe2\x9c\x93", i); }
static void md_val(char *b, size_t n, int i) {
    snprintf(b, n, "значение %d \xf0\x9f\x98\x80 \"quoted\" | pipe . dot", i);
}

static void md_handler(psrpc_request *req, void *ud) {
    md_seen *m = (md_seen *)ud;
    m->count = psrpc_request_metadata_count(req);
    char k[64], v[128];
    for (int i = 0; i < MD_N; i++) {
        md_key(k, sizeof k, i);
        md_val(v, sizeof v, i);
        const char *got = psrpc_request_metadata_get(req, k);
        if (got && strcmp(got, v) == 0)
            m->matched++;
    }
    for (size_t i = 0; i < m->count; i++) {
        const char *key = NULL, *val = NULL;
        if (psrpc_request_metadata_at(req, i, &key, &val) != PSRPC_OK || !key || !val)
            continue;
        int idx = -1;
        if (sscanf(key, "ключ-%d", &idx) == 1 && idx >= 0 && idx < MD_N) {
            md_key(k, sizeof k, idx);
            md_val(v, sizeof v, idx);
            if (strcmp(key, k) == 0 && strcmp(val, v) == 0)
                m->matched_at++;
        }
    }
    const char *key = NULL, *val = NULL;
    m->out_of_range = psrpc_request_metadata_at(req, m->count, &key, &val);
    m->missing_is_null = psrpc_request_metadata_get(req, "no-such-key") == NULL;
    snprintf(m->client_id, sizeof m->client_id, "%s", psrpc_request_client_id(req));
    psrpc_request_respond(req, "ok", 2);
    atomic_fetch_add(&m->handled, 1);
}

TEST(unary_metadata_roundtrip) {
    psrpc_bus *sb, *cb;
    REQUIRE(open_bus_pair(&sb, &cb) == 0);
    char svc[64];
    tu_service(svc, sizeof svc);
    psrpc_server *srv = NULL;
    REQUIRE(psrpc_server_create(&srv, sb, svc, NULL) == PSRPC_OK);
    md_seen *m = (md_seen *)calloc(1, sizeof *m);
    REQUIRE(psrpc_server_register(srv, echo_method(), NULL, 0, md_handler, NULL, NULL, m,
                                  tu_count_cb) == PSRPC_OK);
    /* release is tu_count_cb on &m->handled's neighbour: count it separately */
    REQUIRE(psrpc_server_wait_ready(srv, tu_ms(5000)) == PSRPC_OK);
    psrpc_client *cl = tu_client(cb, svc, 0, 0);
    REQUIRE(cl);

    static char keys[MD_N][64], vals[MD_N][128];
    psrpc_kv kv[MD_N];
    for (int i = 0; i < MD_N; i++) {
        md_key(keys[i], sizeof keys[i], i);
        md_val(vals[i], sizeof vals[i], i);
        kv[i].key = keys[i];
        kv[i].value = vals[i];
    }
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.metadata = kv;
    o.metadata_count = MD_N;
    tu_call *c = tu_calls_new(1);
    uint64_t id;
    REQUIRE(psrpc_client_call(&id, cl, echo_method(), "m", 1, &o, tu_call_cb, c) == PSRPC_OK);
    /* the options are borrowed for the call only: scribble over them */
    memset(keys, 'x', sizeof keys);
    REQUIRE(tu_wait_count(&c->count, 1, 5000));
    CHECK_EQ_INT(c->status, PSRPC_OK);
    CHECK_EQ_INT(atomic_load(&m->handled), 1);
    CHECK_EQ_INT(m->count, MD_N);
    CHECK_EQ_INT(m->matched, MD_N);
    CHECK_EQ_INT(m->matched_at, MD_N);
    CHECK_EQ_INT(m->out_of_range, PSRPC_OUT_OF_RANGE);
    CHECK(m->missing_is_null);
    CHECK_EQ_STR(m->client_id, psrpc_client_id(cl));
    psrpc_client_free(cl);
    psrpc_server_free(srv);
    psrpc_bus_free(cb);
    psrpc_bus_free(sb);
    /* release ran once: it incremented m->handled (first member) */
    CHECK_EQ_INT(atomic_load(&m->handled), 2);
    CHECK_EQ_INT(atomic_load(&c->count), 1);
    free(c);
    free(m);
}

/* Custom client and server ids are used on the wire and reported. */
TEST(unary_custom_ids) {
    psrpc_bus *sb, *cb;
    REQUIRE(open_bus_pair(&sb, &cb) == 0);
    char svc[64], sid[64], cid[64];
    tu_service(svc, sizeof svc);
    tu_unique(sid, sizeof sid, "SRV_t");
    tu_unique(cid, sizeof cid, "CLI_t");
    tu_srv *s = tu_srv_new(sb, svc, sid, TU_ECHO_ID);
    REQUIRE(s->server);
    CHECK_EQ_STR(psrpc_server_id(s->server), sid);
    REQUIRE(tu_srv_register(s, echo_method(), NULL, 0) == PSRPC_OK);
    psrpc_client_options co = PSRPC_CLIENT_OPTIONS_INIT;
    co.client_id = cid;
    psrpc_client *cl = NULL;
    REQUIRE(psrpc_client_create(&cl, cb, svc, &co) == PSRPC_OK);
    CHECK_EQ_STR(psrpc_client_id(cl), cid);
    tu_call *c = tu_calls_new(1);
    REQUIRE(tu_call_wait(cl, echo_method(), "x", NULL, c, 5000));
    CHECK_EQ_INT(c->status, PSRPC_OK);
    CHECK_EQ_STR(c->response, sid);
    CHECK_EQ_STR(c->server_id, sid);
    CHECK_EQ_STR(s->last_client_id, cid);

    /* generated ids: "CLI_"/"SRV_" + 12 alphanumerics */
    psrpc_client *cl2 = tu_client(cb, svc, 0, 0);
    REQUIRE(cl2);
    const char *g = psrpc_client_id(cl2);
    REQUIRE(g);
    CHECK(strncmp(g, "CLI_", 4) == 0 && strlen(g) == 16);
    for (size_t i = 4; i < strlen(g); i++)
        CHECK(isalnum((unsigned char)g[i]));
    psrpc_server *srv2 = NULL;
    REQUIRE(psrpc_server_create(&srv2, sb, svc, NULL) == PSRPC_OK);
    const char *gs = psrpc_server_id(srv2);
    REQUIRE(gs);
    CHECK(strncmp(gs, "SRV_", 4) == 0 && strlen(gs) == 16);
    CHECK(strcmp(g, psrpc_client_id(cl)) != 0);
    psrpc_server_free(srv2);
    psrpc_client_free(cl2);
    psrpc_client_free(cl);
    psrpc_server_free(s->server);
    psrpc_bus_free(cb);
    psrpc_bus_free(sb);
    CHECK_EQ_INT(atomic_load(&c->count), 1);
    free(c);
    tu_srv_destroy(s);
}

/* Topics isolate servers: calls on "b" reach only the "b" server; after "b"
 * deregisters, calls on "b" find no server and "a" still works. */
TEST(unary_topics_isolate_and_deregister) {
    psrpc_bus *b[3];
    REQUIRE(open_bus_group(b, 3) == 0);
    char svc[64];
    tu_service(svc, sizeof svc);
    psrpc_method m = tu_method("RegionEcho", PSRPC_ROUTING_QUEUE, PSRPC_METHOD_TOPICS);
    const char *ta[] = {"a"}, *tb[] = {"b"};
    tu_srv *sa = tu_srv_new(b[0], svc, NULL, TU_ECHO_ID);
    tu_srv *sbb = tu_srv_new(b[1], svc, NULL, TU_ECHO_ID);
    REQUIRE(sa->server && sbb->server);
    REQUIRE(tu_srv_register(sa, &m, ta, 1) == PSRPC_OK);
    REQUIRE(tu_srv_register(sbb, &m, tb, 1) == PSRPC_OK);
    psrpc_client *cl = tu_client(b[2], svc, 5000, 300);
    REQUIRE(cl);

    enum { N = 10 };
    tu_call *c = tu_calls_new(N + 3);
    psrpc_call_options ob = PSRPC_CALL_OPTIONS_INIT;
    ob.topics = tb;
    ob.topic_count = 1;
    for (int i = 0; i < N; i++)
        REQUIRE(tu_call_async(cl, &m, "t", &ob, &c[i]) == PSRPC_OK);
    for (int i = 0; i < N; i++) {
        REQUIRE(tu_wait_count(&c[i].count, 1, 5000));
        CHECK_EQ_INT(c[i].status, PSRPC_OK);
        CHECK_EQ_STR(c[i].response, sbb->id);
    }
    CHECK_EQ_INT(atomic_load(&sbb->handled), N);
    CHECK_EQ_INT(atomic_load(&sa->handled), 0);
    CHECK_EQ_INT(sbb->last_topic_count, 1);
    CHECK_EQ_STR(sbb->last_topic, "b");
    CHECK_EQ_STR(sbb->last_method, "RegionEcho");

    /* deregister "b": its release runs once; "b" has no server any more */
    CHECK_EQ_INT(psrpc_server_deregister(sbb->server, "RegionEcho", tb, 1), PSRPC_OK);
    CHECK(WAIT_UNTIL(atomic_load(&sbb->released) == 1, 2000));
    REQUIRE(tu_call_wait(cl, &m, "t", &ob, &c[N], 4000));
    CHECK_EQ_INT(c[N].status, PSRPC_UNAVAILABLE);
    CHECK_EQ_STR(c[N].message, "no response from servers");
    CHECK_EQ_INT(atomic_load(&sbb->handled), N);

    psrpc_call_options oa = PSRPC_CALL_OPTIONS_INIT;
    oa.topics = ta;
    oa.topic_count = 1;
    REQUIRE(tu_call_wait(cl, &m, "t", &oa, &c[N + 1], 4000));
    CHECK_EQ_INT(c[N + 1].status, PSRPC_OK);
    CHECK_EQ_STR(c[N + 1].response, sa->id);
    CHECK_EQ_STR(sa->last_topic, "a");

    /* a topic nobody serves */
    const char *tc[] = {"c"};
    psrpc_call_options oc = PSRPC_CALL_OPTIONS_INIT;
    oc.topics = tc;
    oc.topic_count = 1;
    REQUIRE(tu_call_wait(cl, &m, "t", &oc, &c[N + 2], 4000));
    CHECK_EQ_INT(c[N + 2].status, PSRPC_UNAVAILABLE);

    /* deregistering again, or something never registered: NOT_FOUND, sync */
    psrpc_clear_error();
    CHECK_EQ_INT(psrpc_server_deregister(sbb->server, "RegionEcho", tb, 1), PSRPC_NOT_FOUND);
    CHECK(psrpc_last_error()[0] != 0);
    CHECK_EQ_INT(psrpc_server_deregister(sa->server, "RegionEcho", tb, 1), PSRPC_NOT_FOUND);
    CHECK_EQ_INT(psrpc_server_deregister(sa->server, "Nope", NULL, 0), PSRPC_NOT_FOUND);

    psrpc_client_free(cl);
    psrpc_server_free(sa->server);
    psrpc_server_free(sbb->server);
    for (int i = 0; i < 3; i++)
        psrpc_bus_free(b[i]);
    for (int i = 0; i < N + 3; i++)
        CHECK_EQ_INT(atomic_load(&c[i].count), 1);
    CHECK_EQ_INT(atomic_load(&sa->released), 1);
    CHECK_EQ_INT(atomic_load(&sbb->released), 1);
    free(c);
    tu_srv_destroy(sa);
    tu_srv_destroy(sbb);
}

/* A registration record for on_ready tests: on_ready, handler and release
 * share one user_data. */
typedef struct ready_rec {
    tu_done ready; /* first: tu_done_cb takes the whole struct */
    atomic_int handled;
    atomic_int released;
} ready_rec;

static void ready_handler(psrpc_request *req, void *ud) {
    ready_rec *r = (ready_rec *)ud;
    const psrpc_msg *p = psrpc_request_payload(req);
    psrpc_request_respond(req, psrpc_msg_data(p), psrpc_msg_size(p));
    atomic_fetch_add(&r->handled, 1);
}

static void ready_release(void *ud) { atomic_fetch_add(&((ready_rec *)ud)->released, 1); }

/* Registering the same method and topics twice fails with ALREADY_EXISTS; a
 * failed registration never takes the user data (no release, no on_ready). */
TEST(unary_register_twice) {
    psrpc_bus *v[1];
    REQUIRE(open_bus_group(v, 1) == 0);
    char svc[64];
    tu_service(svc, sizeof svc);
    tu_srv *s = tu_srv_new(v[0], svc, NULL, TU_ECHO);
    REQUIRE(s->server);
    REQUIRE(tu_srv_register(s, echo_method(), NULL, 0) == PSRPC_OK);
    ready_rec *d = (ready_rec *)calloc(1, sizeof *d);
    psrpc_clear_error();
    int rc = psrpc_server_register(s->server, echo_method(), NULL, 0, ready_handler, NULL,
                                   tu_done_cb, d, ready_release);
    CHECK_EQ_INT(rc, PSRPC_ALREADY_EXISTS);
    CHECK(psrpc_last_error()[0] != 0);
    /* same method, other topics: allowed */
    const char *t[] = {"x"};
    psrpc_method mt = tu_method("Echo", PSRPC_ROUTING_QUEUE, PSRPC_METHOD_TOPICS);
    CHECK_EQ_INT(
        psrpc_server_register(s->server, &mt, t, 1, tu_srv_handler, NULL, NULL, s, tu_srv_release),
        PSRPC_OK);
    psrpc_server_free(s->server);
    psrpc_bus_free(v[0]);
    CHECK_EQ_INT(atomic_load(&d->ready.count), 0);
    CHECK_EQ_INT(atomic_load(&d->released), 0);
    CHECK_EQ_INT(atomic_load(&s->released), 2);
    free(d);
    tu_srv_destroy(s);
}

/* on_ready runs once, with NULL error, when the registration is confirmed;
 * a call made right after it is served. */
TEST(unary_register_on_ready) {
    psrpc_bus *sb, *cb;
    REQUIRE(open_bus_pair(&sb, &cb) == 0);
    char svc[64];
    tu_service(svc, sizeof svc);
    psrpc_server *srv = NULL;
    REQUIRE(psrpc_server_create(&srv, sb, svc, NULL) == PSRPC_OK);
    ready_rec *d = (ready_rec *)calloc(2, sizeof *d);
    const char *t[] = {"x"};
    psrpc_method mt = tu_method("Echo", PSRPC_ROUTING_QUEUE, PSRPC_METHOD_TOPICS);
    REQUIRE(psrpc_server_register(srv, echo_method(), NULL, 0, ready_handler, NULL, tu_done_cb,
                                  &d[0], ready_release) == PSRPC_OK);
    REQUIRE(psrpc_server_register(srv, &mt, t, 1, ready_handler, NULL, tu_done_cb, &d[1],
                                  ready_release) == PSRPC_OK);
    CHECK(WAIT_UNTIL(atomic_load(&d[0].ready.count) == 1 && atomic_load(&d[1].ready.count) == 1,
                     5000));
    CHECK_EQ_INT(d[0].ready.status, PSRPC_OK);
    CHECK_EQ_INT(d[1].ready.status, PSRPC_OK);
    CHECK_EQ_INT(psrpc_server_wait_ready(srv, tu_ms(1000)), PSRPC_OK);
    psrpc_client *cl = tu_client(cb, svc, 0, 0);
    REQUIRE(cl);
    tu_call *c = tu_calls_new(2);
    REQUIRE(tu_call_wait(cl, echo_method(), "r", NULL, &c[0], 5000));
    CHECK_EQ_INT(c[0].status, PSRPC_OK);
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.topics = t;
    o.topic_count = 1;
    REQUIRE(tu_call_wait(cl, &mt, "t", &o, &c[1], 5000));
    CHECK_EQ_INT(c[1].status, PSRPC_OK);
    CHECK_EQ_INT(atomic_load(&d[0].handled), 1);
    CHECK_EQ_INT(atomic_load(&d[1].handled), 1);
    th_sleep_ms(50);
    psrpc_client_free(cl);
    psrpc_server_free(srv);
    psrpc_bus_free(cb);
    psrpc_bus_free(sb);
    for (int i = 0; i < 2; i++) {
        CHECK_EQ_INT(atomic_load(&d[i].ready.count), 1);
        CHECK_EQ_INT(atomic_load(&d[i].released), 1);
        CHECK_EQ_INT(atomic_load(&c[i].count), 1);
    }
    free(c);
    free(d);
}

/* Deregistration stops delivery; re-registering brings it back. */
TEST(unary_deregister_reregister) {
    fx *f = fx_new(TU_ECHO, 5000, 300);
    REQUIRE(fx_ok(f));
    tu_call *c = tu_calls_new(3);
    REQUIRE(tu_call_wait(f->cl, echo_method(), "1", NULL, &c[0], 5000));
    CHECK_EQ_INT(c[0].status, PSRPC_OK);
    CHECK_EQ_INT(psrpc_server_deregister(f->srv->server, "Echo", NULL, 0), PSRPC_OK);
    CHECK(WAIT_UNTIL(atomic_load(&f->srv->released) == 1, 2000));
    REQUIRE(tu_call_wait(f->cl, echo_method(), "2", NULL, &c[1], 4000));
    CHECK_EQ_INT(c[1].status, PSRPC_UNAVAILABLE);
    CHECK_EQ_STR(c[1].message, "no response from servers");
    CHECK_EQ_INT(atomic_load(&f->srv->handled), 1);
    REQUIRE(tu_srv_register(f->srv, echo_method(), NULL, 0) == PSRPC_OK);
    REQUIRE(tu_call_wait(f->cl, echo_method(), "3", NULL, &c[2], 5000));
    CHECK_EQ_INT(c[2].status, PSRPC_OK);
    CHECK_EQ_STR(c[2].response, "3");
    fx_free(f);
    for (int i = 0; i < 3; i++)
        CHECK_EQ_INT(atomic_load(&c[i].count), 1);
    free(c);
}

/* QUEUE routing with 3 servers ("processes"): each of 100 calls is handled by
 * exactly one server, and more than one server is used. Each handler keeps its
 * loop busy for 3 ms, as under load, and half the calls arrive spaced out, so
 * that the spread does not depend on who is fastest alone (on Redis the first
 * lock taker wins, wire spec 6.1). */
TEST(unary_queue_routing_three_servers) {
    psrpc_bus *b[4];
    REQUIRE(open_bus_group(b, 4) == 0);
    char svc[64];
    tu_service(svc, sizeof svc);
    tu_srv *s[3];
    for (int i = 0; i < 3; i++) {
        s[i] = tu_srv_new(b[i], svc, NULL, TU_ECHO_ID);
        REQUIRE(s[i]->server);
        s[i]->handler_sleep_ms = 3;
        REQUIRE(tu_srv_register(s[i], echo_method(), NULL, 0) == PSRPC_OK);
    }
    psrpc_client *cl = tu_client(b[3], svc, 10000, 0);
    REQUIRE(cl);
    enum { N = 100 };
    tu_call *c = tu_calls_new(N);
    for (int i = 0; i < N; i++) {
        char p[16];
        snprintf(p, sizeof p, "q%d", i);
        REQUIRE(tu_call_async(cl, echo_method(), p, NULL, &c[i]) == PSRPC_OK);
        if (i >= N / 2)
            th_sleep_ms(1); /* the second half spaced out, the first as a burst */
    }
    int per[3] = {0, 0, 0};
    for (int i = 0; i < N; i++) {
        REQUIRE(tu_wait_count(&c[i].count, 1, 10000));
        CHECK_EQ_INT(c[i].status, PSRPC_OK);
        CHECK_EQ_STR(c[i].server_id, c[i].response);
        for (int k = 0; k < 3; k++)
            if (strcmp(c[i].response, s[k]->id) == 0)
                per[k]++;
    }
    th_sleep_ms(100);
    int total = 0, used = 0;
    for (int k = 0; k < 3; k++) {
        CHECK_EQ_INT(atomic_load(&s[k]->handled), per[k]);
        total += atomic_load(&s[k]->handled);
        used += atomic_load(&s[k]->handled) > 0;
    }
    CHECK_EQ_INT(per[0] + per[1] + per[2], N);
    CHECK_EQ_INT(total, N);
    CHECK(used > 1);
    psrpc_client_free(cl);
    for (int k = 0; k < 3; k++)
        psrpc_server_free(s[k]->server);
    for (int i = 0; i < 4; i++)
        psrpc_bus_free(b[i]);
    for (int i = 0; i < N; i++)
        CHECK_EQ_INT(atomic_load(&c[i].count), 1);
    free(c);
    for (int k = 0; k < 3; k++)
        tu_srv_destroy(s[k]);
    TU_CHECK_THREADS();
}

/* A server on the same bus handle as the client (one process). */
TEST(unary_same_bus) {
    psrpc_bus *v[1];
    REQUIRE(open_bus_group(v, 1) == 0);
    char svc[64];
    tu_service(svc, sizeof svc);
    tu_srv *s = tu_srv_new(v[0], svc, NULL, TU_ECHO);
    REQUIRE(s->server);
    REQUIRE(tu_srv_register(s, echo_method(), NULL, 0) == PSRPC_OK);
    psrpc_client *cl = tu_client(v[0], svc, 0, 0);
    REQUIRE(cl);
    tu_call *c = tu_calls_new(1);
    REQUIRE(tu_call_wait(cl, echo_method(), "same", NULL, c, 5000));
    CHECK_EQ_INT(c->status, PSRPC_OK);
    CHECK_EQ_STR(c->response, "same");
    psrpc_bus_free(v[0]); /* before its client and server: order is free */
    psrpc_client_free(cl);
    psrpc_server_free(s->server);
    CHECK_EQ_INT(atomic_load(&c->count), 1);
    CHECK_EQ_INT(atomic_load(&s->released), 1);
    free(c);
    tu_srv_destroy(s);
}

/* "The client's reply subscriptions are set up in the background": creating a
 * client subscribes its reply channels without waiting for a first call. */
TEST(unary_client_subscribes_in_background) {
    psrpc_bus *v[1];
    REQUIRE(open_bus_group(v, 1) == 0);
    char svc[64];
    tu_service(svc, sizeof svc);
    uint64_t s0 = tu_stats(v[0]).subscriptions;
    psrpc_client *cl = tu_client(v[0], svc, 0, 0);
    REQUIRE(cl);
    CHECK(WAIT_UNTIL(tu_stats(v[0]).subscriptions >= s0 + 2, 2000)); /* RES and CLAIM */
    psrpc_client_free(cl);
    CHECK(WAIT_UNTIL(tu_stats(v[0]).subscriptions == s0, 2000));
    psrpc_bus_free(v[0]);
}

/* PSRPC_SERVER_SKIP_CLAIM servers answer queue requests without the claim
 * round trip: results, errors and exactly-once handling as before, also mixed
 * with claiming servers. */
static tu_srv *skip_claim_srv(psrpc_bus *bus, const char *svc, int mode) {
    tu_srv *s = (tu_srv *)calloc(1, sizeof *s);
    pthread_mutex_init(&s->mu, NULL);
    s->mode = mode;
    psrpc_server_options o = PSRPC_SERVER_OPTIONS_INIT;
    o.flags = PSRPC_SERVER_SKIP_CLAIM;
    if (psrpc_server_create(&s->server, bus, svc, &o) != PSRPC_OK) {
        fprintf(stderr, "  psrpc_server_create(SKIP_CLAIM): %s\n", psrpc_last_error());
        return s;
    }
    snprintf(s->id, sizeof s->id, "%s", psrpc_server_id(s->server));
    return s;
}

TEST(unary_skip_claim_server) {
    psrpc_bus *b[4];
    REQUIRE(open_bus_group(b, 4) == 0);
    char svc[64];
    tu_service(svc, sizeof svc);
    tu_srv *s[3];
    for (int i = 0; i < 3; i++) {
        s[i] =
            i < 2 ? skip_claim_srv(b[i], svc, TU_ECHO_ID) : tu_srv_new(b[i], svc, NULL, TU_ECHO_ID);
        REQUIRE(s[i]->server);
        REQUIRE(tu_srv_register(s[i], echo_method(), NULL, 0) == PSRPC_OK);
    }
    psrpc_client *cl = tu_client(b[3], svc, 5000, 0);
    REQUIRE(cl);
    enum { N = 60 };
    tu_call *c = tu_calls_new(N + 1);
    for (int i = 0; i < N; i++)
        REQUIRE(tu_call_async(cl, echo_method(), "s", NULL, &c[i]) == PSRPC_OK);
    int per[3] = {0, 0, 0};
    for (int i = 0; i < N; i++) {
        REQUIRE(tu_wait_count(&c[i].count, 1, 5000));
        CHECK_EQ_INT(c[i].status, PSRPC_OK);
        for (int k = 0; k < 3; k++)
            per[k] += strcmp(c[i].response, s[k]->id) == 0;
    }
    th_sleep_ms(100);
    int total = 0;
    for (int k = 0; k < 3; k++) {
        CHECK_EQ_INT(atomic_load(&s[k]->handled), per[k]);
        total += atomic_load(&s[k]->handled);
    }
    CHECK_EQ_INT(total, N);
    /* errors travel the same way */
    for (int k = 0; k < 3; k++) {
        s[k]->fail_status = PSRPC_FAILED_PRECONDITION;
        s[k]->fail_message = "skip says no";
        s[k]->mode = TU_FAIL;
    }
    REQUIRE(tu_call_wait(cl, echo_method(), "f", NULL, &c[N], 5000));
    CHECK_EQ_INT(c[N].status, PSRPC_FAILED_PRECONDITION);
    CHECK_EQ_STR(c[N].message, "skip says no");
    psrpc_client_free(cl);
    for (int k = 0; k < 3; k++)
        psrpc_server_free(s[k]->server);
    for (int i = 0; i < 4; i++)
        psrpc_bus_free(b[i]);
    for (int i = 0; i <= N; i++)
        CHECK_EQ_INT(atomic_load(&c[i].count), 1);
    free(c);
    for (int k = 0; k < 3; k++)
        tu_srv_destroy(s[k]);
}

/* A SKIP_CLAIM server whose handler never answers: the caller still gets one
 * DEADLINE_EXCEEDED; a cancel gives one CANCELED. */
TEST(unary_skip_claim_timeout_and_cancel) {
    psrpc_bus *sb, *cb;
    REQUIRE(open_bus_pair(&sb, &cb) == 0);
    char svc[64];
    tu_service(svc, sizeof svc);
    tu_srv *s = skip_claim_srv(sb, svc, TU_HOLD);
    REQUIRE(s->server);
    REQUIRE(tu_srv_register(s, echo_method(), NULL, 0) == PSRPC_OK);
    psrpc_client *cl = tu_client(cb, svc, 5000, 0);
    REQUIRE(cl);
    tu_call *c = tu_calls_new(2);
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.timeout_ms = 300;
    REQUIRE(tu_call_wait(cl, echo_method(), "t", &o, &c[0], 3000));
    CHECK_EQ_INT(c[0].status, PSRPC_DEADLINE_EXCEEDED);
    CHECK_EQ_STR(c[0].message, "request timed out");
    REQUIRE(tu_call_async(cl, echo_method(), "c", NULL, &c[1]) == PSRPC_OK);
    REQUIRE(WAIT_UNTIL(tu_srv_nheld(s) == 2, 3000));
    CHECK_EQ_INT(psrpc_client_cancel(cl, c[1].call_id), PSRPC_OK);
    REQUIRE(tu_wait_count(&c[1].count, 1, 3000));
    CHECK_EQ_INT(c[1].status, PSRPC_CANCELED);
    CHECK_EQ_STR(c[1].message, "request canceled");
    int mism = 0;
    CHECK_EQ_INT(tu_answer_all_from_thread(s, PSRPC_OK, &mism), 2);
    CHECK_EQ_INT(mism, 0);
    th_sleep_ms(100);
    psrpc_client_free(cl);
    psrpc_server_free(s->server);
    psrpc_bus_free(cb);
    psrpc_bus_free(sb);
    CHECK_EQ_INT(atomic_load(&c[0].count), 1);
    CHECK_EQ_INT(atomic_load(&c[1].count), 1);
    CHECK_EQ_INT(atomic_load(&s->released), 1);
    free(c);
    tu_srv_destroy(s);
}

TEST_MAIN()
