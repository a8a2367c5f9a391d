/* Edge cases of the RPC core (issue 20): duplicate metadata keys (the last
 * wins, as in Go), server stream callbacks set after the peer closed (the
 * close and the release still run, exactly once), timeouts up to INT64_MAX
 * (no overflow, no immediate expiry), the cap on requests held for a claim.
 * Runs over every bus (PSRPC_TEST_BUS_URL). */
#include <stdint.h>

#include "util.h"

static psrpc_method echo_m(void) { return tu_method("Echo", PSRPC_ROUTING_QUEUE, 0); }
static psrpc_method chat_m(void) {
    return tu_method("Chat", PSRPC_ROUTING_QUEUE, PSRPC_METHOD_STREAM);
}

/* ------------------------------------------------------------------------ */
/* Duplicate metadata keys                                                   */
/* ------------------------------------------------------------------------ */

typedef struct md_dup {
    atomic_int handled;
    char got[64];
    char got_other[64];
} md_dup;

static void md_dup_handler(psrpc_request *req, void *ud) {
    md_dup *m = (md_dup *)ud;
    const char *v = psrpc_request_metadata_get(req, "k");
    snprintf(m->got, sizeof m->got, "%s", v ? v : "(null)");
    v = psrpc_request_metadata_get(req, "other");
    snprintf(m->got_other, sizeof m->got_other, "%s", v ? v : "(null)");
    psrpc_request_respond(req, "ok", 2);
    atomic_fetch_add(&m->handled, 1);
}

static psrpc_kv md_dup_kv[] = {{"k", "first"}, {"other", "x"}, {"k", "middle"}, {"k", "last"}};

TEST(request_metadata_duplicate_key_last_wins) {
    psrpc_bus *sb, *cb;
    REQUIRE(open_bus_pair(&sb, &cb) == 0);
    char svc[64];
    tu_service(svc, sizeof svc);
    psrpc_server *srv = NULL;
    REQUIRE(psrpc_server_create(&srv, sb, svc, NULL) == PSRPC_OK);
    md_dup *m = (md_dup *)calloc(1, sizeof *m);
    psrpc_method em = echo_m();
    REQUIRE(psrpc_server_register(srv, &em, NULL, 0, md_dup_handler, NULL, NULL, m, NULL) ==
            PSRPC_OK);
    REQUIRE(psrpc_server_wait_ready(srv, tu_ms(5000)) == PSRPC_OK);
    psrpc_client *cl = tu_client(cb, svc, 0, 0);
    REQUIRE(cl);
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.metadata = md_dup_kv;
    o.metadata_count = 4;
    tu_call *c = tu_calls_new(1);
    REQUIRE(tu_call_wait(cl, &em, "m", &o, c, tu_ms(5000)));
    CHECK_EQ_INT(c->status, PSRPC_OK);
    CHECK_EQ_STR(m->got, "last");
    CHECK_EQ_STR(m->got_other, "x");
    psrpc_client_free(cl);
    psrpc_server_free(srv);
    psrpc_bus_free(cb);
    psrpc_bus_free(sb);
    free(c);
    free(m);
}

/* ------------------------------------------------------------------------ */
/* Server streams: callbacks set late, from another thread                   */
/* ------------------------------------------------------------------------ */

typedef struct late {
    _Atomic(psrpc_stream *) server_stream;
    atomic_int handler_calls;
    atomic_int closes;
    atomic_int released;
    atomic_int bad;
    atomic_int set_rc;
    int close_status;
    char close_message[128];
    char md[64];
    atomic_int go; /* the test tells the helper thread to set the callbacks */
    pthread_t thread;
    bool thread_on;
} late;

static int late_on_message(psrpc_stream *st, const psrpc_msg *msg, void *ud) {
    (void)st;
    (void)msg;
    (void)ud;
    return 0;
}

static void late_on_close(psrpc_stream *st, const psrpc_error *cause, void *ud) {
    late *l = (late *)ud;
    if (st != atomic_load(&l->server_stream) || atomic_load(&l->released))
        atomic_fetch_add(&l->bad, 1);
    l->close_status = cause ? cause->status : PSRPC_OK;
    snprintf(l->close_message, sizeof l->close_message, "%s",
             cause && cause->message ? cause->message : "");
    atomic_fetch_add(&l->closes, 1);
}

static void late_release(void *ud) {
    late *l = (late *)ud;
    atomic_fetch_add(&l->released, 1);
}

static void *late_thread(void *arg) {
    late *l = (late *)arg;
    while (!atomic_load(&l->go))
        th_sleep_ms(1);
    psrpc_stream *st = atomic_load(&l->server_stream);
    atomic_store(&l->set_rc,
                 psrpc_stream_set_callbacks(st, late_on_message, late_on_close, l, late_release));
    return NULL;
}

/* The handler hands the stream to another thread and returns. */
static void late_handler(psrpc_stream *st, void *ud) {
    late *l = (late *)ud;
    const char *v = psrpc_stream_metadata_get(st, "k");
    snprintf(l->md, sizeof l->md, "%s", v ? v : "(null)");
    atomic_store(&l->server_stream, st);
    if (pthread_create(&l->thread, NULL, late_thread, l) == 0)
        l->thread_on = true;
    atomic_fetch_add(&l->handler_calls, 1); /* last: publishes thread and thread_on */
}

/* The client side of a stream: its open result and closes. */
typedef struct cside {
    tu_done opened;
    atomic_int closed;
} cside;

static void cside_open(const psrpc_error *error, void *ud) {
    tu_done_cb(error, &((cside *)ud)->opened);
}

static void cside_close(psrpc_stream *st, const psrpc_error *cause, void *ud) {
    (void)st;
    (void)cause;
    atomic_fetch_add(&((cside *)ud)->closed, 1);
}

/* wait_for_end: the helper thread sets the callbacks only once the server
 * side has processed the client's close; otherwise the two race. */
static void late_round(psrpc_bus *sb, psrpc_bus *cb, bool wait_for_end) {
    char svc[64];
    tu_service(svc, sizeof svc);
    psrpc_server *srv = NULL;
    REQUIRE(psrpc_server_create(&srv, sb, svc, NULL) == PSRPC_OK);
    late *l = (late *)calloc(1, sizeof *l);
    psrpc_method cm = chat_m();
    REQUIRE(psrpc_server_register_stream(srv, &cm, NULL, 0, late_handler, NULL, NULL, l, NULL) ==
            PSRPC_OK);
    REQUIRE(psrpc_server_wait_ready(srv, tu_ms(5000)) == PSRPC_OK);
    psrpc_client *cl = tu_client(cb, svc, 0, 0);
    REQUIRE(cl);
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.metadata = md_dup_kv;
    o.metadata_count = 4;
    cside *cx = (cside *)calloc(1, sizeof *cx);
    psrpc_stream *cs = NULL;
    REQUIRE(psrpc_client_open_stream(&cs, cl, &cm, &o, cside_open, late_on_message, cside_close, cx,
                                     NULL) == PSRPC_OK);
    REQUIRE(tu_wait_count(&cx->opened.count, 1, 5000));
    CHECK_EQ_INT(cx->opened.status, PSRPC_OK);
    REQUIRE(WAIT_UNTIL(atomic_load(&l->handler_calls) == 1, tu_ms(5000)));
    CHECK_EQ_STR(l->md, "last");
    REQUIRE(psrpc_stream_close(cs, PSRPC_ABORTED, "bye") == PSRPC_OK);
    if (wait_for_end) {
        /* The server bus counts the stream as open until it processed the close. */
        CHECK(WAIT_UNTIL(tu_stats(sb).streams_open == 0, tu_ms(5000)));
    }
    atomic_store(&l->go, 1);
    CHECK(WAIT_UNTIL(atomic_load(&l->released) == 1, tu_ms(3000)));
    if (l->thread_on)
        pthread_join(l->thread, NULL);
    CHECK_EQ_INT(atomic_load(&l->set_rc), PSRPC_OK);
    CHECK_EQ_INT(atomic_load(&l->closes), 1);
    CHECK_EQ_INT(atomic_load(&l->released), 1);
    CHECK_EQ_INT(atomic_load(&l->bad), 0);
    CHECK_EQ_INT(l->close_status, PSRPC_ABORTED);
    CHECK_EQ_STR(l->close_message, "bye");
    CHECK_EQ_INT(atomic_load(&cx->closed), 1);
    psrpc_stream_free(cs);
    psrpc_stream_free(atomic_load(&l->server_stream));
    psrpc_client_free(cl);
    psrpc_server_free(srv);
    th_sleep_ms(20);
    /* nothing more after the release */
    CHECK_EQ_INT(atomic_load(&l->closes), 1);
    CHECK_EQ_INT(atomic_load(&l->released), 1);
    free(l);
    free(cx);
}

TEST(stream_callbacks_set_after_peer_closed) {
    psrpc_bus *sb, *cb;
    REQUIRE(open_bus_pair(&sb, &cb) == 0);
    late_round(sb, cb, true);
    psrpc_bus_free(cb);
    psrpc_bus_free(sb);
}

TEST(stream_callbacks_set_racing_peer_close) {
    psrpc_bus *sb, *cb;
    REQUIRE(open_bus_pair(&sb, &cb) == 0);
    for (int i = 0; i < 20 && !th_failed_current; i++)
        late_round(sb, cb, false);
    psrpc_bus_free(cb);
    psrpc_bus_free(sb);
}

/* ------------------------------------------------------------------------ */
/* Timeouts up to INT64_MAX                                                  */
/* ------------------------------------------------------------------------ */

typedef struct delayed_answer {
    tu_srv *srv;
    int delay_ms;
    int count;
} delayed_answer;

static void *delayed_answer_thread(void *arg) {
    delayed_answer *d = (delayed_answer *)arg;
    for (int i = 0; i < d->count; i++) {
        WAIT_UNTIL(tu_srv_nheld(d->srv) > 0, 5000);
        th_sleep_ms(d->delay_ms);
        psrpc_request *r = tu_srv_pop(d->srv);
        if (r)
            psrpc_request_respond(r, "late", 4);
    }
    return NULL;
}

TEST(huge_timeouts_do_not_expire) {
    psrpc_bus *sb, *cb;
    REQUIRE(open_bus_pair(&sb, &cb) == 0);
    char svc[64];
    tu_service(svc, sizeof svc);
    tu_srv *s = tu_srv_new(sb, svc, NULL, TU_HOLD);
    REQUIRE(s->server);
    psrpc_method em = echo_m();
    REQUIRE(tu_srv_register(s, &em, NULL, 0) == PSRPC_OK);
    /* waits accept any timeout */
    CHECK_EQ_INT(psrpc_server_wait_ready(s->server, INT64_MAX), PSRPC_OK);
    CHECK_EQ_INT(psrpc_server_wait_ready(s->server, INT64_MAX - 1), PSRPC_OK);
    CHECK_EQ_INT(psrpc_server_wait_ready(s->server, INT64_MIN), PSRPC_OK);
    CHECK_EQ_INT(psrpc_bus_wait_ready(cb, INT64_MAX), PSRPC_OK);

    const int64_t timeouts[] = {INT64_MAX, INT64_MAX - 1, INT64_MAX / 1000, INT64_MAX / 1000000};
    const int n = (int)(sizeof timeouts / sizeof timeouts[0]);
    delayed_answer d = {s, 150, 2 * n + 1};
    pthread_t t;
    REQUIRE(pthread_create(&t, NULL, delayed_answer_thread, &d) == 0);
    for (int i = 0; i < n; i++) {
        /* the call's own timeout */
        psrpc_client *cl = tu_client(cb, svc, 0, 0);
        psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
        o.timeout_ms = timeouts[i];
        tu_call *c = tu_calls_new(1);
        CHECK(tu_call_wait(cl, &em, "m", &o, c, 5000));
        CHECK_EQ_INT(c->status, PSRPC_OK);
        CHECK_EQ_STR(c->response, "late");
        free(c);
        psrpc_client_free(cl);
        /* the client's default timeout */
        cl = tu_client(cb, svc, timeouts[i], timeouts[i]);
        REQUIRE(cl);
        c = tu_calls_new(1);
        CHECK(tu_call_wait(cl, &em, "m", NULL, c, 5000));
        CHECK_EQ_INT(c->status, PSRPC_OK);
        free(c);
        psrpc_client_free(cl);
    }
    /* a deadline at the end of time */
    psrpc_client *cl = tu_client(cb, svc, 0, 0);
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.timeout_ms = INT64_MAX;
    o.deadline_ns = INT64_MAX;
    tu_call *c = tu_calls_new(1);
    CHECK(tu_call_wait(cl, &em, "m", &o, c, 5000));
    CHECK_EQ_INT(c->status, PSRPC_OK);
    free(c);
    /* negative timeouts are refused, not wrapped around */
    o.deadline_ns = 0;
    o.timeout_ms = INT64_MIN;
    c = tu_calls_new(1);
    CHECK_EQ_INT(psrpc_client_call(NULL, cl, &em, "m", 1, &o, tu_call_cb, c),
                 PSRPC_INVALID_ARGUMENT);
    o.timeout_ms = -1;
    CHECK_EQ_INT(psrpc_client_call(NULL, cl, &em, "m", 1, &o, tu_call_cb, c),
                 PSRPC_INVALID_ARGUMENT);
    free(c);
    pthread_join(t, NULL);
    psrpc_client_free(cl);
    psrpc_server_free(s->server);
    psrpc_bus_free(cb);
    psrpc_bus_free(sb);
    tu_srv_destroy(s);
}

typedef struct echo_stream {
    tu_done opened;
    atomic_int msgs;
    atomic_int closes;
    atomic_int released;
    _Atomic(psrpc_stream *) st;
} echo_stream;

static int es_on_message(psrpc_stream *st, const psrpc_msg *msg, void *ud) {
    echo_stream *e = (echo_stream *)ud;
    atomic_fetch_add(&e->msgs, 1);
    /* answer with the longest send timeout */
    psrpc_stream_send(st, psrpc_msg_data(msg), psrpc_msg_size(msg), INT64_MAX, NULL, NULL);
    return 0;
}

static void es_on_close(psrpc_stream *st, const psrpc_error *cause, void *ud) {
    (void)st;
    (void)cause;
    atomic_fetch_add(&((echo_stream *)ud)->closes, 1);
}

static void es_release(void *ud) { atomic_fetch_add(&((echo_stream *)ud)->released, 1); }

static void es_open(const psrpc_error *error, void *ud) {
    tu_done_cb(error, &((echo_stream *)ud)->opened);
}

static void es_handler(psrpc_stream *st, void *ud) {
    echo_stream *e = (echo_stream *)ud;
    atomic_store(&e->st, st);
    psrpc_stream_set_callbacks(st, es_on_message, es_on_close, e, es_release);
}

TEST(huge_timeouts_streams) {
    psrpc_bus *sb, *cb;
    REQUIRE(open_bus_pair(&sb, &cb) == 0);
    char svc[64];
    tu_service(svc, sizeof svc);
    psrpc_server_options so = PSRPC_SERVER_OPTIONS_INIT;
    so.timeout_ms = INT64_MAX;
    psrpc_server *srv = NULL;
    REQUIRE(psrpc_server_create(&srv, sb, svc, &so) == PSRPC_OK);
    echo_stream *se = (echo_stream *)calloc(1, sizeof *se);
    psrpc_method cm = chat_m();
    REQUIRE(psrpc_server_register_stream(srv, &cm, NULL, 0, es_handler, NULL, NULL, se, NULL) ==
            PSRPC_OK);
    REQUIRE(psrpc_server_wait_ready(srv, INT64_MAX) == PSRPC_OK);
    psrpc_client *cl = tu_client(cb, svc, INT64_MAX, 0);
    REQUIRE(cl);
    echo_stream *ce = (echo_stream *)calloc(1, sizeof *ce);
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.timeout_ms = INT64_MAX - 1;
    psrpc_stream *cs = NULL;
    REQUIRE(psrpc_client_open_stream(&cs, cl, &cm, &o, es_open, es_on_message, es_on_close, ce,
                                     es_release) == PSRPC_OK);
    REQUIRE(tu_wait_count(&ce->opened.count, 1, 5000));
    CHECK_EQ_INT(ce->opened.status, PSRPC_OK);
    tu_done *sent = (tu_done *)calloc(1, sizeof *sent);
    CHECK_EQ_INT(psrpc_stream_send(cs, "hi", 2, INT64_MAX, tu_done_cb, sent), PSRPC_OK);
    CHECK(tu_wait_count(&sent->count, 1, 5000));
    CHECK_EQ_INT(sent->status, PSRPC_OK);
    /* the server echoes (send timeout INT64_MAX), the client echoes back, ... */
    CHECK(WAIT_UNTIL(atomic_load(&ce->msgs) >= 3 && atomic_load(&se->msgs) >= 3, tu_ms(5000)));
    CHECK_EQ_INT(psrpc_stream_close(cs, 0, NULL), PSRPC_OK);
    CHECK(WAIT_UNTIL(atomic_load(&se->released) == 1 && atomic_load(&ce->released) == 1,
                     tu_ms(5000)));
    CHECK_EQ_INT(atomic_load(&se->closes), 1);
    CHECK_EQ_INT(atomic_load(&ce->closes), 1);
    psrpc_stream_free(cs);
    psrpc_stream_free(atomic_load(&se->st));
    psrpc_client_free(cl);
    psrpc_server_free(srv);
    psrpc_bus_free(cb);
    psrpc_bus_free(sb);
    free(se);
    free(ce);
    free(sent);
}

/* ------------------------------------------------------------------------ */
/* Ids Go accepts                                                            */
/* ------------------------------------------------------------------------ */

TEST(ids_go_accepts) {
    psrpc_bus *sb, *cb;
    REQUIRE(open_bus_pair(&sb, &cb) == 0);
    char svc[64];
    tu_service(svc, sizeof svc);
    const char *sids[] = {"srv-1.a", "srv|b c", "\xe8\xbd\xaf\xe4\xbb\xb6-\xc3\xa9"};
    const char *cids[] = {"cli-1.a", "\xe8\xbd\xaf.\xc3\xa9-x", "a|b"};
    psrpc_method claim = tu_method("Claim", PSRPC_ROUTING_AFFINITY, 0);
    for (int i = 0; i < 3; i++) {
        char sid[64], cid[64];
        snprintf(sid, sizeof sid, "%s%d", sids[i], (int)getpid());
        snprintf(cid, sizeof cid, "%s%d", cids[i], (int)getpid());
        tu_srv *s = tu_srv_new(sb, svc, sid, TU_ECHO_ID);
        REQUIRE(s->server);
        CHECK_EQ_STR(psrpc_server_id(s->server), sid);
        REQUIRE(tu_srv_register(s, &claim, NULL, 0) == PSRPC_OK);
        psrpc_client_options co = PSRPC_CLIENT_OPTIONS_INIT;
        co.client_id = cid;
        psrpc_client *cl = NULL;
        REQUIRE(psrpc_client_create(&cl, cb, svc, &co) == PSRPC_OK);
        tu_call *c = tu_calls_new(1);
        CHECK(tu_call_wait(cl, &claim, "m", NULL, c, 5000));
        CHECK_EQ_INT(c->status, PSRPC_OK);
        CHECK_EQ_STR(c->server_id, sid);
        CHECK_EQ_STR(c->response, sid);
        CHECK_EQ_STR(s->last_client_id, cid);
        free(c);
        psrpc_client_free(cl);
        psrpc_server_free(s->server);
        /* the registration's release runs on the loop: wait before freeing s */
        CHECK(WAIT_UNTIL(atomic_load(&s->released) == 1, tu_ms(5000)));
        tu_srv_destroy(s);
    }
    /* what would break or widen the NATS reply subject is refused */
    const char *bad[] = {"a b", "a\tb", "a.*.b", "a.>", "*", ">", "a..b", ".a", "a.", "\xff"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        psrpc_client_options co = PSRPC_CLIENT_OPTIONS_INIT;
        co.client_id = bad[i];
        psrpc_client *cl = NULL;
        CHECK_EQ_INT(psrpc_client_create(&cl, cb, svc, &co), PSRPC_INVALID_ARGUMENT);
        CHECK(cl == NULL);
    }
    psrpc_bus_free(cb);
    psrpc_bus_free(sb);
}

TEST_MAIN()
