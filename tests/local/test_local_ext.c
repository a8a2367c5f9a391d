/* The ABI additions of issue 20: owned error copies, the sync call that
 * returns the error object, request abandon and the "always consumes" rule,
 * deferred stream acks and stream close with a code string. Runs over
 * PSRPC_TEST_BUS_URL like the rest of the local suite. */
#include "util.h"

static const psrpc_method *echo_method(void) {
    static psrpc_method m = PSRPC_METHOD_INIT;
    m.name = "Echo";
    m.routing = PSRPC_ROUTING_QUEUE;
    return &m;
}

static const uint8_t detail_a[] = {0x0a, 0x05, 'h', 'e', 'l', 'l', 'o'};
static const uint8_t detail_b[] = {0x00, 0xff, 0x00, 0x7f, 0x80};

/* Fails every request with a custom code, a message and two details; a
 * payload "ok" is echoed. */
static void custom_fail_handler(psrpc_request *req, void *ud) {
    tu_srv *s = (tu_srv *)ud;
    const psrpc_msg *p = psrpc_request_payload(req);
    int rc;
    if (psrpc_msg_size(p) == 2 && memcmp(psrpc_msg_data(p), "ok", 2) == 0) {
        rc = psrpc_request_respond(req, "fine", 4);
    } else {
        psrpc_error_detail d[2] = {
            {"type.googleapis.com/google.protobuf.StringValue", detail_a, sizeof detail_a},
            {"type.googleapis.com/test.Binary", detail_b, sizeof detail_b},
        };
        rc = psrpc_request_fail_details(req, "my_custom_code", "custom failure \xc3\xbc", d, 2);
    }
    if (rc != PSRPC_OK)
        atomic_fetch_add(&s->answer_errors, 1);
    atomic_fetch_add(&s->handled, 1);
}

/* A server bus with one server (handler h), a client bus with one client. */
typedef struct fx {
    psrpc_bus *sbus, *cbus;
    tu_srv *srv;
    psrpc_client *cl;
    char service[64];
} fx;

static fx *fx_new_handler(psrpc_handler_cb h, psrpc_affinity_cb aff, const psrpc_method *m,
                          int64_t client_timeout) {
    fx *f = (fx *)calloc(1, sizeof *f);
    tu_service(f->service, sizeof f->service);
    if (open_bus_pair(&f->sbus, &f->cbus) != 0)
        return f;
    f->srv = tu_srv_new(f->sbus, f->service, NULL, TU_HOLD);
    if (!f->srv->server)
        return f;
    if (psrpc_server_register(f->srv->server, m, NULL, 0, h ? h : tu_srv_handler, aff, NULL, f->srv,
                              tu_srv_release) != PSRPC_OK ||
        psrpc_server_wait_ready(f->srv->server, tu_ms(5000)) != PSRPC_OK) {
        psrpc_server_free(f->srv->server);
        f->srv->server = NULL;
        return f;
    }
    f->cl = tu_client(f->cbus, f->service, client_timeout, 0);
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
/* psrpc_error_copy / psrpc_error_free                                       */
/* ------------------------------------------------------------------------ */

typedef struct copy_slot {
    atomic_int count;
    int copy_rc;
    psrpc_error *copy;
} copy_slot;

static void copy_call_cb(uint64_t id, const psrpc_msg *response, const psrpc_error *error,
                         const char *server_id, void *ud) {
    (void)id, (void)response, (void)server_id;
    copy_slot *c = (copy_slot *)ud;
    c->copy_rc = error ? psrpc_error_copy(&c->copy, error) : PSRPC_OK;
    atomic_fetch_add(&c->count, 1);
}

TEST(error_copy_outlives_callback) {
    fx *f = fx_new_handler(custom_fail_handler, NULL, echo_method(), 0);
    REQUIRE(fx_ok(f));
    copy_slot *c = (copy_slot *)calloc(1, sizeof *c);
    REQUIRE(psrpc_client_call(NULL, f->cl, echo_method(), "x", 1, NULL, copy_call_cb, c) ==
            PSRPC_OK);
    REQUIRE(tu_wait_count(&c->count, 1, 5000));
    /* the callback returned; the borrowed error is gone, the copy is ours */
    fx_free(f);
    CHECK_EQ_INT(c->copy_rc, PSRPC_OK);
    REQUIRE(c->copy);
    CHECK_EQ_INT(c->copy->status, PSRPC_UNKNOWN);
    CHECK_EQ_STR(c->copy->code, "my_custom_code");
    CHECK_EQ_STR(c->copy->message, "custom failure \xc3\xbc");
    REQUIRE(c->copy->details_count == 2);
    CHECK_EQ_STR(c->copy->details[0].type_url, "type.googleapis.com/google.protobuf.StringValue");
    CHECK_EQ_INT(c->copy->details[0].value_len, sizeof detail_a);
    CHECK(memcmp(c->copy->details[0].value, detail_a, sizeof detail_a) == 0);
    CHECK_EQ_STR(c->copy->details[1].type_url, "type.googleapis.com/test.Binary");
    CHECK_EQ_INT(c->copy->details[1].value_len, sizeof detail_b);
    CHECK(memcmp(c->copy->details[1].value, detail_b, sizeof detail_b) == 0);
    /* a copy of the copy is independent of it */
    psrpc_error *again = NULL;
    CHECK_EQ_INT(psrpc_error_copy(&again, c->copy), PSRPC_OK);
    psrpc_error_free(c->copy);
    REQUIRE(again);
    CHECK_EQ_STR(again->code, "my_custom_code");
    CHECK_EQ_INT(again->details_count, 2);
    CHECK(memcmp(again->details[1].value, detail_b, sizeof detail_b) == 0);
    psrpc_error_free(again);
    free(c);
}

TEST(error_copy_arguments) {
    psrpc_error src;
    memset(&src, 0, sizeof src);
    src.status = PSRPC_NOT_FOUND;
    src.code = "not_found";
    src.message = "gone";
    psrpc_error *out = (psrpc_error *)(uintptr_t)1;
    psrpc_clear_error();
    CHECK_EQ_INT(psrpc_error_copy(&out, NULL), PSRPC_INVALID_ARGUMENT);
    CHECK(out == NULL);
    CHECK(psrpc_last_error()[0] != 0);
    CHECK_EQ_INT(psrpc_error_copy(NULL, &src), PSRPC_INVALID_ARGUMENT);
    CHECK_EQ_INT(psrpc_error_copy(NULL, NULL), PSRPC_INVALID_ARGUMENT);
    /* details NULL with a count is refused, not read */
    src.details_count = 3;
    CHECK_EQ_INT(psrpc_error_copy(&out, &src), PSRPC_INVALID_ARGUMENT);
    CHECK(out == NULL);
    /* no details, NULL strings become "" */
    src.details_count = 0;
    src.code = NULL;
    src.message = NULL;
    REQUIRE(psrpc_error_copy(&out, &src) == PSRPC_OK);
    REQUIRE(out);
    CHECK_EQ_INT(out->status, PSRPC_NOT_FOUND);
    CHECK_EQ_STR(out->code, "");
    CHECK_EQ_STR(out->message, "");
    CHECK_EQ_INT(out->details_count, 0);
    CHECK(out->details == NULL);
    psrpc_error_free(out);
    /* empty values and a NULL type URL */
    psrpc_error_detail d[2] = {{NULL, NULL, 0}, {"t/x", (const uint8_t *)"", 0}};
    src.code = "aborted";
    src.message = "m";
    src.details = d;
    src.details_count = 2;
    REQUIRE(psrpc_error_copy(&out, &src) == PSRPC_OK);
    CHECK_EQ_STR(out->details[0].type_url, "");
    CHECK_EQ_INT(out->details[0].value_len, 0);
    CHECK(out->details[0].value != NULL);
    CHECK_EQ_STR(out->details[1].type_url, "t/x");
    CHECK(out->details != d);
    psrpc_error_free(out);
    psrpc_error_free(NULL); /* no-op */
}

/* ------------------------------------------------------------------------ */
/* psrpc_client_call_sync_ex                                                 */
/* ------------------------------------------------------------------------ */

TEST(sync_ex_custom_code_and_details) {
    fx *f = fx_new_handler(custom_fail_handler, NULL, echo_method(), 0);
    REQUIRE(fx_ok(f));
    psrpc_msg *out = (psrpc_msg *)(uintptr_t)1;
    psrpc_error *err = (psrpc_error *)(uintptr_t)1;
    int rc = psrpc_client_call_sync_ex(&out, &err, f->cl, echo_method(), "x", 1, NULL);
    CHECK_EQ_INT(rc, PSRPC_UNKNOWN);
    CHECK(out == NULL);
    REQUIRE(err != NULL);
    CHECK_EQ_INT(err->status, PSRPC_UNKNOWN);
    CHECK_EQ_STR(err->code, "my_custom_code");
    CHECK_EQ_STR(err->message, "custom failure \xc3\xbc");
    CHECK_EQ_STR(psrpc_last_error(), "custom failure \xc3\xbc");
    CHECK_EQ_INT(psrpc_last_error_status(), PSRPC_UNKNOWN);
    REQUIRE(err->details_count == 2);
    CHECK_EQ_STR(err->details[0].type_url, "type.googleapis.com/google.protobuf.StringValue");
    CHECK_EQ_INT(err->details[0].value_len, sizeof detail_a);
    CHECK(memcmp(err->details[0].value, detail_a, sizeof detail_a) == 0);
    CHECK_EQ_STR(err->details[1].type_url, "type.googleapis.com/test.Binary");
    CHECK(memcmp(err->details[1].value, detail_b, sizeof detail_b) == 0);
    psrpc_error_free(err);

    /* success: a response, no error object */
    err = (psrpc_error *)(uintptr_t)1;
    rc = psrpc_client_call_sync_ex(&out, &err, f->cl, echo_method(), "ok", 2, NULL);
    CHECK_EQ_INT(rc, PSRPC_OK);
    CHECK(err == NULL);
    REQUIRE(out);
    CHECK_EQ_INT(psrpc_msg_size(out), 4);
    CHECK(memcmp(psrpc_msg_data(out), "fine", 4) == 0);
    psrpc_msg_release(out);

    /* error_out NULL: behaves as psrpc_client_call_sync */
    rc = psrpc_client_call_sync_ex(&out, NULL, f->cl, echo_method(), "x", 1, NULL);
    CHECK_EQ_INT(rc, PSRPC_UNKNOWN);
    CHECK(out == NULL);
    CHECK_EQ_INT(atomic_load(&f->srv->answer_errors), 0);
    fx_free(f);
}

TEST(sync_ex_deadline_and_no_servers) {
    fx *f = fx_new_handler(NULL, NULL, echo_method(), 0); /* TU_HOLD: never answers */
    REQUIRE(fx_ok(f));
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.timeout_ms = tu_ms(300);
    psrpc_msg *out = NULL;
    psrpc_error *err = NULL;
    int rc = psrpc_client_call_sync_ex(&out, &err, f->cl, echo_method(), "x", 1, &o);
    CHECK_EQ_INT(rc, PSRPC_DEADLINE_EXCEEDED);
    CHECK(out == NULL);
    REQUIRE(err);
    CHECK_EQ_INT(err->status, PSRPC_DEADLINE_EXCEEDED);
    CHECK_EQ_STR(err->code, "deadline_exceeded");
    CHECK(err->message[0] != 0);
    CHECK_EQ_INT(err->details_count, 0);
    psrpc_error_free(err);

    /* a method nobody serves */
    psrpc_method other = tu_method("Nobody", PSRPC_ROUTING_QUEUE, 0);
    o.timeout_ms = tu_ms(2000);
    err = NULL;
    rc = psrpc_client_call_sync_ex(&out, &err, f->cl, &other, "x", 1, &o);
    CHECK_EQ_INT(rc, PSRPC_UNAVAILABLE);
    REQUIRE(err);
    CHECK_EQ_INT(err->status, PSRPC_UNAVAILABLE);
    CHECK_EQ_STR(err->code, "unavailable");
    CHECK(tu_contains_ci(err->message, "no "));
    psrpc_error_free(err);
    fx_free(f);
}

typedef struct closer_job {
    psrpc_client *cl;
    tu_srv *srv;
} closer_job;

static void *close_client_later(void *arg) {
    closer_job *j = (closer_job *)arg;
    WAIT_UNTIL(tu_srv_nheld(j->srv) == 1, 5000);
    psrpc_client_close(j->cl, NULL, NULL);
    return NULL;
}

TEST(sync_ex_canceled_by_close) {
    fx *f = fx_new_handler(NULL, NULL, echo_method(), 0);
    REQUIRE(fx_ok(f));
    closer_job j = {f->cl, f->srv};
    pthread_t t;
    REQUIRE(pthread_create(&t, NULL, close_client_later, &j) == 0);
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.timeout_ms = tu_ms(10000);
    psrpc_msg *out = NULL;
    psrpc_error *err = NULL;
    int rc = psrpc_client_call_sync_ex(&out, &err, f->cl, echo_method(), "x", 1, &o);
    pthread_join(t, NULL);
    CHECK_EQ_INT(rc, PSRPC_CANCELED);
    REQUIRE(err);
    CHECK_EQ_INT(err->status, PSRPC_CANCELED);
    CHECK_EQ_STR(err->code, "canceled");
    CHECK(err->message[0] != 0);
    psrpc_error_free(err);
    fx_free(f);
}

/* Refusals before anything is sent also produce an error object. */
typedef struct loop_sync {
    psrpc_client *cl;
    atomic_int done;
    int rc;
    int status;
    char code[64];
} loop_sync;

static void sync_in_handler(psrpc_request *req, void *ud) {
    loop_sync *l = (loop_sync *)ud;
    psrpc_msg *out = NULL;
    psrpc_error *err = NULL;
    l->rc = psrpc_client_call_sync_ex(&out, &err, l->cl, echo_method(), "x", 1, NULL);
    if (err) {
        l->status = err->status;
        snprintf(l->code, sizeof l->code, "%s", err->code);
    }
    psrpc_error_free(err);
    psrpc_request_respond(req, NULL, 0);
    atomic_fetch_add(&l->done, 1);
}

TEST(sync_ex_local_refusals) {
    fx *f = fx_new_handler(NULL, NULL, echo_method(), 0);
    REQUIRE(fx_ok(f));
    psrpc_msg *out = (psrpc_msg *)(uintptr_t)1;
    psrpc_error *err = NULL;
    int rc = psrpc_client_call_sync_ex(&out, &err, f->cl, NULL, "x", 1, NULL);
    CHECK_EQ_INT(rc, PSRPC_INVALID_ARGUMENT);
    CHECK(out == NULL);
    REQUIRE(err);
    CHECK_EQ_INT(err->status, PSRPC_INVALID_ARGUMENT);
    CHECK_EQ_STR(err->code, "invalid_argument");
    CHECK_EQ_STR(err->message, psrpc_last_error());
    CHECK(err->message[0] != 0);
    psrpc_error_free(err);
    err = NULL;
    CHECK_EQ_INT(psrpc_client_call_sync_ex(NULL, &err, f->cl, echo_method(), "x", 1, NULL),
                 PSRPC_INVALID_ARGUMENT);
    REQUIRE(err);
    CHECK_EQ_STR(err->code, "invalid_argument");
    psrpc_error_free(err);

    /* on a loop thread: WOULD_DEADLOCK, a local-only status: code "internal" */
    psrpc_server *s2 = NULL;
    REQUIRE(psrpc_server_create(&s2, f->sbus, f->service, NULL) == PSRPC_OK);
    loop_sync *l = (loop_sync *)calloc(1, sizeof *l);
    l->cl = f->cl;
    psrpc_method m2 = tu_method("Nested", PSRPC_ROUTING_QUEUE, 0);
    REQUIRE(psrpc_server_register(s2, &m2, NULL, 0, sync_in_handler, NULL, NULL, l, NULL) ==
            PSRPC_OK);
    REQUIRE(psrpc_server_wait_ready(s2, tu_ms(5000)) == PSRPC_OK);
    out = NULL;
    CHECK_EQ_INT(psrpc_client_call_sync(&out, f->cl, &m2, NULL, 0, NULL), PSRPC_OK);
    psrpc_msg_release(out);
    REQUIRE(tu_wait_count(&l->done, 1, 5000));
    CHECK_EQ_INT(l->rc, PSRPC_WOULD_DEADLOCK);
    CHECK_EQ_INT(l->status, PSRPC_WOULD_DEADLOCK);
    CHECK_EQ_STR(l->code, "internal");
    psrpc_server_free(s2);
    fx_free(f);
    free(l);
}

TEST_MAIN()
