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

/* ------------------------------------------------------------------------ */
/* psrpc_request_abandon                                                     */
/* ------------------------------------------------------------------------ */

/* Held requests abandoned from the test thread (not the loop thread): the
 * caller sees the status and message; status 0 / unknown values become
 * internal, a NULL message the status description. */
TEST(abandon_handler_stage_from_another_thread) {
    fx *f = fx_new_handler(NULL, NULL, echo_method(), 5000);
    REQUIRE(fx_ok(f));
    enum { N = 4 };
    tu_call *c = tu_calls_new(N);
    for (int i = 0; i < N; i++) {
        REQUIRE(tu_call_async(f->cl, echo_method(), "x", NULL, &c[i]) == PSRPC_OK);
        REQUIRE(WAIT_UNTIL(tu_srv_nheld(f->srv) == 1, 5000));
        psrpc_request *q = tu_srv_pop(f->srv);
        REQUIRE(q);
        switch (i) {
        case 0:
            psrpc_request_abandon(q, PSRPC_UNAVAILABLE, "handler went away");
            break;
        case 1:
            psrpc_request_abandon(q, 0, NULL);
            break;
        case 2:
            psrpc_request_abandon(q, -555, "odd status");
            break;
        default:
            psrpc_request_abandon(q, PSRPC_WOULD_DEADLOCK, "");
            break;
        }
        REQUIRE(tu_wait_count(&c[i].count, 1, 5000));
    }
    CHECK_EQ_INT(c[0].status, PSRPC_UNAVAILABLE);
    CHECK_EQ_STR(c[0].code, "unavailable");
    CHECK_EQ_STR(c[0].message, "handler went away");
    CHECK_EQ_INT(c[1].status, PSRPC_INTERNAL);
    CHECK_EQ_STR(c[1].code, "internal");
    CHECK_EQ_STR(c[1].message, psrpc_status_str(PSRPC_INTERNAL));
    CHECK_EQ_INT(c[2].status, PSRPC_INTERNAL);
    CHECK_EQ_STR(c[2].message, "odd status");
    /* a local-only status travels as "internal" */
    CHECK_EQ_INT(c[3].status, PSRPC_INTERNAL);
    CHECK_EQ_STR(c[3].code, "internal");
    CHECK_EQ_STR(c[3].message, psrpc_status_str(PSRPC_WOULD_DEADLOCK));
    fx_free(f);
    for (int i = 0; i < N; i++)
        CHECK_EQ_INT(atomic_load(&c[i].count), 1);
    free(c);
}

/* Once consumed, every further answer is recognised as stale: abandon is a
 * no-op, respond/fail/claim return INVALID_ARGUMENT, the caller gets the first
 * answer only, and (ASan) nothing is read after free or freed twice. */
TEST(abandon_after_consumed_is_noop) {
    fx *f = fx_new_handler(NULL, NULL, echo_method(), 5000);
    REQUIRE(fx_ok(f));
    tu_call *c = tu_calls_new(2);
    /* respond, then abandon twice: still pending or already freed */
    REQUIRE(tu_call_async(f->cl, echo_method(), "x", NULL, &c[0]) == PSRPC_OK);
    REQUIRE(WAIT_UNTIL(tu_srv_nheld(f->srv) == 1, 5000));
    psrpc_request *q = tu_srv_pop(f->srv);
    REQUIRE(psrpc_request_respond(q, "first", 5) == PSRPC_OK);
    psrpc_request_abandon(q, PSRPC_ABORTED, "second");
    REQUIRE(tu_wait_count(&c[0].count, 1, 5000));
    th_sleep_ms(50); /* the loop has freed it by now */
    psrpc_request_abandon(q, PSRPC_ABORTED, "third");
    psrpc_clear_error();
    CHECK_EQ_INT(psrpc_request_respond(q, "fourth", 6), PSRPC_INVALID_ARGUMENT);
    CHECK(psrpc_last_error()[0] != 0);
    CHECK_EQ_INT(psrpc_request_fail(q, PSRPC_ABORTED, "fifth"), PSRPC_INVALID_ARGUMENT);
    CHECK_EQ_INT(psrpc_request_claim(q, 1.0f), PSRPC_INVALID_ARGUMENT);
    CHECK_EQ_INT(c[0].status, PSRPC_OK);
    CHECK_EQ_STR(c[0].response, "first");
    /* abandon, then abandon and respond */
    REQUIRE(tu_call_async(f->cl, echo_method(), "x", NULL, &c[1]) == PSRPC_OK);
    REQUIRE(WAIT_UNTIL(tu_srv_nheld(f->srv) == 1, 5000));
    q = tu_srv_pop(f->srv);
    psrpc_request_abandon(q, PSRPC_NOT_FOUND, "gone");
    psrpc_request_abandon(q, PSRPC_ABORTED, "again");
    CHECK_EQ_INT(psrpc_request_respond(q, "late", 4), PSRPC_INVALID_ARGUMENT);
    REQUIRE(tu_wait_count(&c[1].count, 1, 5000));
    CHECK_EQ_INT(c[1].status, PSRPC_NOT_FOUND);
    CHECK_EQ_STR(c[1].message, "gone");
    th_sleep_ms(100);
    fx_free(f);
    CHECK_EQ_INT(atomic_load(&c[0].count), 1);
    CHECK_EQ_INT(atomic_load(&c[1].count), 1);
    free(c);
}

/* Many threads race to consume the same requests: exactly one answer each. */
typedef struct race_arg {
    psrpc_request *q;
    int kind;
    atomic_int *oks;
} race_arg;

static void *race_thread(void *arg) {
    race_arg *a = (race_arg *)arg;
    if (a->kind == 0)
        psrpc_request_abandon(a->q, PSRPC_ABORTED, "abandoned");
    else if (psrpc_request_respond(a->q, "won", 3) == PSRPC_OK)
        atomic_fetch_add(a->oks, 1);
    return NULL;
}

TEST(abandon_races_with_respond) {
    fx *f = fx_new_handler(NULL, NULL, echo_method(), 5000);
    REQUIRE(fx_ok(f));
    enum { N = 20, T = 4 };
    tu_call *c = tu_calls_new(N);
    atomic_int oks = 0;
    int responded = 0;
    for (int i = 0; i < N; i++) {
        REQUIRE(tu_call_async(f->cl, echo_method(), "x", NULL, &c[i]) == PSRPC_OK);
        REQUIRE(WAIT_UNTIL(tu_srv_nheld(f->srv) == 1, 5000));
        psrpc_request *q = tu_srv_pop(f->srv);
        pthread_t t[T];
        race_arg a[T];
        for (int k = 0; k < T; k++) {
            a[k] = (race_arg){q, k % 2, &oks};
            REQUIRE(pthread_create(&t[k], NULL, race_thread, &a[k]) == 0);
        }
        for (int k = 0; k < T; k++)
            pthread_join(t[k], NULL);
        REQUIRE(tu_wait_count(&c[i].count, 1, 5000));
        if (c[i].status == PSRPC_OK) {
            responded++;
            CHECK_EQ_STR(c[i].response, "won");
        } else {
            CHECK_EQ_INT(c[i].status, PSRPC_ABORTED);
        }
    }
    CHECK_EQ_INT(atomic_load(&oks), responded);
    th_sleep_ms(100);
    fx_free(f);
    for (int i = 0; i < N; i++)
        CHECK_EQ_INT(atomic_load(&c[i].count), 1);
    free(c);
}

/* Affinity stage: an abandoning server does not claim; another server
 * answers, or (alone) the caller gets no servers. */
typedef struct aff_srv {
    psrpc_server *server;
    char id[128];
    bool abandon;
    atomic_int affinity_calls;
    atomic_int handled;
} aff_srv;

static void aff_cb(psrpc_request *req, void *ud) {
    aff_srv *a = (aff_srv *)ud;
    atomic_fetch_add(&a->affinity_calls, 1);
    if (a->abandon)
        psrpc_request_abandon(req, PSRPC_ABORTED, "not me");
    else
        psrpc_request_claim(req, 1.0f);
}

static void aff_handler(psrpc_request *req, void *ud) {
    aff_srv *a = (aff_srv *)ud;
    atomic_fetch_add(&a->handled, 1);
    psrpc_request_respond(req, a->id, strlen(a->id));
}

static aff_srv *aff_srv_new(psrpc_bus *bus, const char *svc, const psrpc_method *m, bool ab) {
    aff_srv *a = (aff_srv *)calloc(1, sizeof *a);
    a->abandon = ab;
    if (psrpc_server_create(&a->server, bus, svc, NULL) != PSRPC_OK)
        return a;
    snprintf(a->id, sizeof a->id, "%s", psrpc_server_id(a->server));
    if (psrpc_server_register(a->server, m, NULL, 0, aff_handler, aff_cb, NULL, a, NULL) !=
            PSRPC_OK ||
        psrpc_server_wait_ready(a->server, tu_ms(5000)) != PSRPC_OK) {
        psrpc_server_free(a->server);
        a->server = NULL;
    }
    return a;
}

TEST(abandon_affinity_stage) {
    psrpc_bus *b[3];
    REQUIRE(open_bus_group(b, 3) == 0);
    char svc[64];
    tu_service(svc, sizeof svc);
    psrpc_method m = tu_method("Pick", PSRPC_ROUTING_AFFINITY, 0);
    aff_srv *quitter = aff_srv_new(b[0], svc, &m, true);
    REQUIRE(quitter->server);
    psrpc_client *cl = tu_client(b[2], svc, 3000, 300);
    REQUIRE(cl);
    /* alone: nobody claims */
    tu_call *c = tu_calls_new(2);
    REQUIRE(tu_call_wait(cl, &m, "x", NULL, &c[0], 5000));
    CHECK_EQ_INT(c[0].status, PSRPC_UNAVAILABLE);
    CHECK_EQ_INT(atomic_load(&quitter->affinity_calls), 1);
    /* with a second server: it answers */
    aff_srv *taker = aff_srv_new(b[1], svc, &m, false);
    REQUIRE(taker->server);
    REQUIRE(tu_call_wait(cl, &m, "x", NULL, &c[1], 5000));
    CHECK_EQ_INT(c[1].status, PSRPC_OK);
    CHECK_EQ_STR(c[1].response, taker->id);
    CHECK_EQ_INT(atomic_load(&quitter->handled), 0);
    CHECK_EQ_INT(atomic_load(&taker->handled), 1);
    psrpc_client_free(cl);
    psrpc_server_free(quitter->server);
    psrpc_server_free(taker->server);
    for (int i = 0; i < 3; i++)
        psrpc_bus_free(b[i]);
    CHECK_EQ_INT(atomic_load(&c[0].count), 1);
    CHECK_EQ_INT(atomic_load(&c[1].count), 1);
    free(c);
    free(quitter);
    free(taker);
}

/* A held request abandoned after a forced server close: no crash, no leak. */
TEST(abandon_after_forced_close) {
    fx *f = fx_new_handler(NULL, NULL, echo_method(), tu_ms(500));
    REQUIRE(fx_ok(f));
    tu_call *c = tu_calls_new(1);
    REQUIRE(tu_call_async(f->cl, echo_method(), "x", NULL, c) == PSRPC_OK);
    REQUIRE(WAIT_UNTIL(tu_srv_nheld(f->srv) == 1, 5000));
    psrpc_request *q = tu_srv_pop(f->srv);
    REQUIRE(psrpc_server_close(f->srv->server, PSRPC_CLOSE_FORCE, NULL, NULL) == PSRPC_OK);
    psrpc_server_free(f->srv->server);
    f->srv->server = NULL;
    psrpc_request_abandon(q, PSRPC_ABORTED, "too late");
    REQUIRE(tu_wait_count(&c->count, 1, 5000));
    CHECK(c->status != PSRPC_OK);
    fx_free(f);
    free(c);
}

/* ------------------------------------------------------------------------ */
/* Deferred stream acks: psrpc_stream_defer / psrpc_stream_ack              */
/* ------------------------------------------------------------------------ */

#define D_MAX 2048

/* One side of a stream whose on_message defers every ack. */
typedef struct dside {
    pthread_mutex_t mu;
    uint64_t tokens[D_MAX];
    int ntok;
    bool defer;                  /* on_message defers (and returns 1, which must be ignored) */
    _Atomic(psrpc_stream *) own; /* the stream the callbacks belong to */
    psrpc_stream *other;         /* if set, on_message also tries to defer on it */
    int other_rc;
    int defer_rc;
    atomic_int msgs;
    atomic_int order_errors;
    int next;
    atomic_int opens;
    int open_status;
    int close_status;
    char close_code[64];
    char close_message[128];
    atomic_int closes;
    atomic_int released;
} dside;

static dside *dside_new(bool defer) {
    dside *d = (dside *)calloc(1, sizeof *d);
    pthread_mutex_init(&d->mu, NULL);
    d->defer = defer;
    d->defer_rc = 1;
    d->other_rc = 1;
    return d;
}

static int d_on_message(psrpc_stream *st, const psrpc_msg *msg, void *ud) {
    dside *d = (dside *)ud;
    char txt[64] = {0};
    snprintf(txt, sizeof txt, "%.*s", (int)psrpc_msg_size(msg), (const char *)psrpc_msg_data(msg));
    const char *hash = strchr(txt, '#');
    if (hash) {
        if (atoi(hash + 1) != d->next)
            atomic_fetch_add(&d->order_errors, 1);
        d->next = atoi(hash + 1) + 1;
    }
    atomic_fetch_add(&d->msgs, 1);
    if (d->other) {
        uint64_t t = 99;
        d->other_rc = psrpc_stream_defer(d->other, &t);
    }
    if (!d->defer)
        return 0;
    uint64_t tok = 0, again = 0;
    d->defer_rc = psrpc_stream_defer(st, &tok);
    if (d->defer_rc == PSRPC_OK && (psrpc_stream_defer(st, &again) != PSRPC_OK || again != tok))
        d->defer_rc = -999; /* deferring twice must give the same token */
    pthread_mutex_lock(&d->mu);
    if (d->defer_rc == PSRPC_OK && d->ntok < D_MAX)
        d->tokens[d->ntok++] = tok;
    pthread_mutex_unlock(&d->mu);
    return 1; /* ignored once deferred */
}

static void d_on_close(psrpc_stream *st, const psrpc_error *cause, void *ud) {
    (void)st;
    dside *d = (dside *)ud;
    d->close_status = cause ? cause->status : 1;
    snprintf(d->close_code, sizeof d->close_code, "%s", cause ? cause->code : "(none)");
    snprintf(d->close_message, sizeof d->close_message, "%s", cause ? cause->message : "(none)");
    atomic_fetch_add(&d->closes, 1);
}

static void d_on_open(const psrpc_error *e, void *ud) {
    dside *d = (dside *)ud;
    d->open_status = e ? e->status : PSRPC_OK;
    atomic_fetch_add(&d->opens, 1);
}

static void d_release(void *ud) { atomic_fetch_add(&((dside *)ud)->released, 1); }

static int d_ntok(dside *d) {
    pthread_mutex_lock(&d->mu);
    int n = d->ntok;
    pthread_mutex_unlock(&d->mu);
    return n;
}

static uint64_t d_token(dside *d, int i) {
    pthread_mutex_lock(&d->mu);
    uint64_t t = i < d->ntok ? d->tokens[i] : 0;
    pthread_mutex_unlock(&d->mu);
    return t;
}

static void d_server_handler(psrpc_stream *st, void *ud) {
    dside *d = (dside *)ud;
    atomic_store(&d->own, st);
    if (psrpc_stream_set_callbacks(st, d_on_message, d_on_close, d, d_release) != PSRPC_OK)
        psrpc_stream_free(st);
}

/* Send completions. */
typedef struct sdone {
    atomic_int n;
    atomic_int ok;
    int status[D_MAX];
    long long at_ms[D_MAX];
} sdone;

typedef struct sdone_slot {
    sdone *d;
    int i;
} sdone_slot;

static void sdone_cb(const psrpc_error *e, void *ud) {
    sdone_slot *s = (sdone_slot *)ud;
    s->d->status[s->i] = e ? e->status : PSRPC_OK;
    s->d->at_ms[s->i] = th_now_ms();
    if (!e)
        atomic_fetch_add(&s->d->ok, 1);
    atomic_fetch_add(&s->d->n, 1);
    free(s);
}

static int send_i(psrpc_stream *st, sdone *d, int i, int64_t timeout_ms) {
    char txt[32];
    snprintf(txt, sizeof txt, "#%d", i);
    sdone_slot *s = (sdone_slot *)malloc(sizeof *s);
    s->d = d;
    s->i = i;
    int rc = psrpc_stream_send(st, txt, strlen(txt), timeout_ms, sdone_cb, s);
    if (rc != PSRPC_OK)
        free(s);
    return rc;
}

/* A server whose stream side is srv_side, a client stream whose side is
 * cli_side. */
typedef struct sfx {
    psrpc_bus *sbus, *cbus;
    psrpc_server *server;
    psrpc_client *cl;
    psrpc_stream *cst; /* the client's stream */
    dside *srv_side, *cli_side;
} sfx;

static sfx *sfx_new(bool srv_defer, bool cli_defer) {
    sfx *f = (sfx *)calloc(1, sizeof *f);
    f->srv_side = dside_new(srv_defer);
    f->cli_side = dside_new(cli_defer);
    char svc[64];
    tu_service(svc, sizeof svc);
    if (open_bus_pair(&f->sbus, &f->cbus) != 0)
        return f;
    psrpc_method m = tu_method("Chat", PSRPC_ROUTING_QUEUE, PSRPC_METHOD_STREAM);
    if (psrpc_server_create(&f->server, f->sbus, svc, NULL) != PSRPC_OK ||
        psrpc_server_register_stream(f->server, &m, NULL, 0, d_server_handler, NULL, NULL,
                                     f->srv_side, NULL) != PSRPC_OK ||
        psrpc_server_wait_ready(f->server, tu_ms(5000)) != PSRPC_OK)
        return f;
    f->cl = tu_client(f->cbus, svc, 5000, 0);
    if (!f->cl)
        return f;
    if (psrpc_client_open_stream(&f->cst, f->cl, &m, NULL, d_on_open, d_on_message, d_on_close,
                                 f->cli_side, d_release) != PSRPC_OK) {
        f->cst = NULL;
        return f;
    }
    atomic_store(&f->cli_side->own, f->cst);
    if (!tu_wait_count(&f->cli_side->opens, 1, 5000) || f->cli_side->open_status != PSRPC_OK ||
        !WAIT_UNTIL(atomic_load(&f->srv_side->own) != NULL, 5000)) {
        fprintf(stderr, "  stream open failed: %d\n", f->cli_side->open_status);
        psrpc_stream_free(f->cst);
        f->cst = NULL;
    }
    return f;
}

static bool sfx_ok(sfx *f) { return f->cl && f->cst && atomic_load(&f->srv_side->own); }

static void sfx_free(sfx *f) {
    psrpc_stream_free(f->cst);
    psrpc_stream *ss = atomic_load(&f->srv_side->own);
    if (ss)
        psrpc_stream_free(ss);
    psrpc_client_free(f->cl);
    psrpc_server_free(f->server);
    psrpc_bus_free(f->cbus);
    psrpc_bus_free(f->sbus);
    pthread_mutex_destroy(&f->srv_side->mu);
    pthread_mutex_destroy(&f->cli_side->mu);
    free(f->srv_side);
    free(f->cli_side);
    free(f);
}

typedef struct acker {
    psrpc_stream *st;
    dside *d;
    int n;
    int accept;
    int delay_ms;
    atomic_int bad_rc;
} acker;

static void *acker_thread(void *arg) {
    acker *a = (acker *)arg;
    if (a->delay_ms)
        th_sleep_ms(a->delay_ms);
    for (int i = 0; i < a->n; i++) {
        if (!WAIT_UNTIL(d_ntok(a->d) > i, 10000)) {
            atomic_fetch_add(&a->bad_rc, 1);
            break;
        }
        if (psrpc_stream_ack(a->st, d_token(a->d, i), a->accept) != PSRPC_OK)
            atomic_fetch_add(&a->bad_rc, 1);
    }
    return NULL;
}

TEST(defer_ack_accept_later_from_another_thread) {
    sfx *f = sfx_new(true, false);
    REQUIRE(sfx_ok(f));
    sdone *d = (sdone *)calloc(1, sizeof *d);
    long long t0 = th_now_ms();
    REQUIRE(send_i(f->cst, d, 0, tu_ms(5000)) == PSRPC_OK);
    REQUIRE(WAIT_UNTIL(d_ntok(f->srv_side) == 1, 5000));
    CHECK_EQ_INT(f->srv_side->defer_rc, PSRPC_OK);
    th_sleep_ms(200);
    CHECK_EQ_INT(atomic_load(&d->n), 0); /* not acked yet: the send waits */
    acker a = {atomic_load(&f->srv_side->own), f->srv_side, 1, 1, 0, 0};
    pthread_t t;
    REQUIRE(pthread_create(&t, NULL, acker_thread, &a) == 0);
    pthread_join(t, NULL);
    CHECK_EQ_INT(atomic_load(&a.bad_rc), 0);
    REQUIRE(tu_wait_count(&d->n, 1, 5000));
    CHECK_EQ_INT(d->status[0], PSRPC_OK);
    CHECK(d->at_ms[0] - t0 >= 200);
    /* the token was used: a second ack finds nothing */
    psrpc_clear_error();
    CHECK_EQ_INT(psrpc_stream_ack(atomic_load(&f->srv_side->own), d_token(f->srv_side, 0), 1),
                 PSRPC_NOT_FOUND);
    CHECK(psrpc_last_error()[0] != 0);
    CHECK_EQ_INT(psrpc_stream_ack(f->cst, 12345, 1), PSRPC_NOT_FOUND);
    sfx_free(f);
    free(d);
}

/* The client side defers too (server sends, client acks later). */
TEST(defer_ack_client_side) {
    sfx *f = sfx_new(false, true);
    REQUIRE(sfx_ok(f));
    sdone *d = (sdone *)calloc(1, sizeof *d);
    psrpc_stream *ss = atomic_load(&f->srv_side->own);
    REQUIRE(send_i(ss, d, 0, tu_ms(5000)) == PSRPC_OK);
    REQUIRE(WAIT_UNTIL(d_ntok(f->cli_side) == 1, 5000));
    th_sleep_ms(100);
    CHECK_EQ_INT(atomic_load(&d->n), 0);
    CHECK_EQ_INT(psrpc_stream_ack(f->cst, d_token(f->cli_side, 0), 1), PSRPC_OK);
    REQUIRE(tu_wait_count(&d->n, 1, 5000));
    CHECK_EQ_INT(d->status[0], PSRPC_OK);
    sfx_free(f);
    free(d);
}

/* Refused: the peer's send fails as for a slow consumer (deadline exceeded);
 * never acked: the same, and the stream stays usable. */
TEST(defer_refuse_and_never_acked) {
    sfx *f = sfx_new(true, false);
    REQUIRE(sfx_ok(f));
    psrpc_stream *ss = atomic_load(&f->srv_side->own);
    uint64_t slow0 = tu_stats(f->sbus).dropped_slow_consumer;
    sdone *d = (sdone *)calloc(1, sizeof *d);
    REQUIRE(send_i(f->cst, d, 0, tu_ms(400)) == PSRPC_OK);
    REQUIRE(WAIT_UNTIL(d_ntok(f->srv_side) == 1, 5000));
    CHECK_EQ_INT(psrpc_stream_ack(ss, d_token(f->srv_side, 0), 0), PSRPC_OK);
    CHECK_EQ_INT(psrpc_stream_ack(ss, d_token(f->srv_side, 0), 0), PSRPC_NOT_FOUND);
    REQUIRE(tu_wait_count(&d->n, 1, 5000));
    CHECK_EQ_INT(d->status[0], PSRPC_DEADLINE_EXCEEDED);
    CHECK_EQ_INT(tu_stats(f->sbus).dropped_slow_consumer, slow0 + 1);
    /* never acked */
    REQUIRE(send_i(f->cst, d, 1, tu_ms(300)) == PSRPC_OK);
    REQUIRE(tu_wait_count(&d->n, 2, 5000));
    CHECK_EQ_INT(d->status[1], PSRPC_DEADLINE_EXCEEDED);
    CHECK_EQ_INT(d_ntok(f->srv_side), 2);
    /* an accept after the peer gave up is accepted (nothing useful to send) */
    CHECK_EQ_INT(psrpc_stream_ack(ss, d_token(f->srv_side, 1), 1), PSRPC_OK);
    /* the stream still works */
    f->srv_side->defer = false;
    REQUIRE(send_i(f->cst, d, 2, tu_ms(5000)) == PSRPC_OK);
    REQUIRE(tu_wait_count(&d->n, 3, 5000));
    CHECK_EQ_INT(d->status[2], PSRPC_OK);
    CHECK_EQ_INT(atomic_load(&f->srv_side->closes), 0);
    CHECK_EQ_INT(atomic_load(&f->cli_side->closes), 0);
    sfx_free(f);
    free(d);
}

TEST(defer_ack_after_close_not_found) {
    sfx *f = sfx_new(true, false);
    REQUIRE(sfx_ok(f));
    psrpc_stream *ss = atomic_load(&f->srv_side->own);
    sdone *d = (sdone *)calloc(1, sizeof *d);
    REQUIRE(send_i(f->cst, d, 0, tu_ms(5000)) == PSRPC_OK);
    REQUIRE(WAIT_UNTIL(d_ntok(f->srv_side) == 1, 5000));
    REQUIRE(psrpc_stream_close(f->cst, 0, NULL) == PSRPC_OK);
    REQUIRE(tu_wait_count(&d->n, 1, 5000)); /* the close completes the pending send */
    CHECK(d->status[0] != PSRPC_OK);
    REQUIRE(WAIT_UNTIL(atomic_load(&f->srv_side->closes) == 1, 5000));
    psrpc_clear_error();
    CHECK_EQ_INT(psrpc_stream_ack(ss, d_token(f->srv_side, 0), 1), PSRPC_NOT_FOUND);
    CHECK(psrpc_last_error()[0] != 0);
    sfx_free(f);
    free(d);
}

TEST(defer_outside_on_message) {
    sfx *f = sfx_new(true, false);
    REQUIRE(sfx_ok(f));
    uint64_t tok = 7;
    psrpc_clear_error();
    CHECK_EQ_INT(psrpc_stream_defer(f->cst, &tok), PSRPC_FAILED_PRECONDITION);
    CHECK_EQ_INT(tok, 0);
    CHECK(psrpc_last_error()[0] != 0);
    CHECK_EQ_INT(psrpc_stream_defer(f->cst, NULL), PSRPC_INVALID_ARGUMENT);
    CHECK_EQ_INT(psrpc_stream_defer(NULL, &tok), PSRPC_INVALID_ARGUMENT);
    CHECK_EQ_INT(psrpc_stream_ack(NULL, 1, 1), PSRPC_INVALID_ARGUMENT);
    CHECK_EQ_INT(psrpc_stream_ack(f->cst, 0, 1), PSRPC_NOT_FOUND);
    /* inside on_message, but for another stream */
    f->srv_side->other = f->cst;
    sdone *d = (sdone *)calloc(1, sizeof *d);
    REQUIRE(send_i(f->cst, d, 0, tu_ms(5000)) == PSRPC_OK);
    REQUIRE(WAIT_UNTIL(d_ntok(f->srv_side) == 1, 5000));
    CHECK_EQ_INT(f->srv_side->other_rc, PSRPC_FAILED_PRECONDITION);
    CHECK_EQ_INT(psrpc_stream_ack(atomic_load(&f->srv_side->own), d_token(f->srv_side, 0), 1),
                 PSRPC_OK);
    REQUIRE(tu_wait_count(&d->n, 1, 5000));
    CHECK_EQ_INT(d->status[0], PSRPC_OK);
    sfx_free(f);
    free(d);
}

TEST(defer_thousand_acked_in_order_on_another_thread) {
    sfx *f = sfx_new(true, false);
    REQUIRE(sfx_ok(f));
    enum { N = 1000 };
    sdone *d = (sdone *)calloc(1, sizeof *d);
    acker a = {atomic_load(&f->srv_side->own), f->srv_side, N, 1, 0, 0};
    pthread_t t;
    REQUIRE(pthread_create(&t, NULL, acker_thread, &a) == 0);
    for (int i = 0; i < N; i++)
        REQUIRE(send_i(f->cst, d, i, tu_ms(20000)) == PSRPC_OK);
    pthread_join(t, NULL);
    CHECK_EQ_INT(atomic_load(&a.bad_rc), 0);
    REQUIRE(tu_wait_count(&d->n, N, 20000));
    CHECK_EQ_INT(atomic_load(&d->ok), N);
    CHECK_EQ_INT(atomic_load(&f->srv_side->msgs), N);
    CHECK_EQ_INT(atomic_load(&f->srv_side->order_errors), 0);
    CHECK_EQ_INT(f->srv_side->defer_rc, PSRPC_OK);
    /* the acks went out in order: the sends completed in order */
    int inversions = 0;
    for (int i = 1; i < N; i++)
        inversions += d->at_ms[i] < d->at_ms[i - 1];
    CHECK_EQ_INT(inversions, 0);
    sfx_free(f);
    free(d);
}

/* ------------------------------------------------------------------------ */
/* psrpc_stream_close_code                                                   */
/* ------------------------------------------------------------------------ */

static void close_code_case(bool from_client, const char *code, const char *message,
                            int want_status, const char *want_code, const char *want_message) {
    sfx *f = sfx_new(false, false);
    REQUIRE(sfx_ok(f));
    psrpc_stream *closer = from_client ? f->cst : atomic_load(&f->srv_side->own);
    dside *local = from_client ? f->cli_side : f->srv_side;
    dside *peer = from_client ? f->srv_side : f->cli_side;
    CHECK_EQ_INT(psrpc_stream_close_code(closer, code, message), PSRPC_OK);
    REQUIRE(tu_wait_count(&peer->closes, 1, 5000));
    REQUIRE(tu_wait_count(&local->closes, 1, 5000));
    CHECK_EQ_INT(peer->close_status, want_status);
    CHECK_EQ_STR(peer->close_code, want_code);
    CHECK_EQ_STR(peer->close_message, want_message);
    CHECK_EQ_INT(local->close_status, want_status);
    CHECK_EQ_STR(local->close_code, want_code);
    CHECK_EQ_STR(local->close_message, want_message);
    /* idempotent: a second close changes nothing */
    CHECK_EQ_INT(psrpc_stream_close_code(closer, "other", "x"), PSRPC_OK);
    th_sleep_ms(50);
    CHECK_EQ_INT(atomic_load(&peer->closes), 1);
    CHECK_EQ_INT(atomic_load(&local->closes), 1);
    sfx_free(f);
}

TEST(close_code_custom_from_client) {
    close_code_case(true, "my_custom_close", "bye \xc3\xbc", PSRPC_UNKNOWN, "my_custom_close",
                    "bye \xc3\xbc");
}
TEST(close_code_custom_from_server) {
    close_code_case(false, "quota_gone", "no more", PSRPC_UNKNOWN, "quota_gone", "no more");
}
TEST(close_code_known_code) {
    close_code_case(true, "not_found", NULL, PSRPC_NOT_FOUND, "not_found", "");
}
TEST(close_code_clean) {
    close_code_case(false, NULL, "ignored", PSRPC_CANCELED, "canceled", "stream closed");
    close_code_case(true, "", "ignored", PSRPC_CANCELED, "canceled", "stream closed");
}

TEST(close_code_arguments) {
    sfx *f = sfx_new(false, false);
    REQUIRE(sfx_ok(f));
    psrpc_clear_error();
    CHECK_EQ_INT(psrpc_stream_close_code(NULL, "x", "y"), PSRPC_INVALID_ARGUMENT);
    CHECK(psrpc_last_error()[0] != 0);
    CHECK_EQ_INT(psrpc_stream_close_code(f->cst, "bad \xff", "y"), PSRPC_INVALID_ARGUMENT);
    CHECK_EQ_INT(psrpc_stream_close_code(f->cst, "x", "bad \xfe"), PSRPC_INVALID_ARGUMENT);
    th_sleep_ms(50);
    CHECK_EQ_INT(atomic_load(&f->cli_side->closes), 0); /* refused calls closed nothing */
    sfx_free(f);
}

TEST_MAIN()
