/* Wrong arguments on live request and selection objects (test plan G1).
 * Requests: respond/fail/fail_details/claim ALWAYS consume a request (issue
 * 20): a refused argument fails it with PSRPC_INTERNAL saying what was wrong
 * (handler stage) or declines it (affinity stage), and the call returns
 * PSRPC_INVALID_ARGUMENT; a second answer is then recognised as stale
 * without touching freed memory. Accessors with wrong arguments do not
 * consume. Selections: a refused choose/fail does not consume. */
#include "util.h"

typedef struct arg_rec {
    atomic_int handled;
    atomic_int affinity_calls;
    atomic_int released;
    int failures; /* calls that did not return what they should */
    char log[2048];
} arg_rec;

static void note(arg_rec *r, const char *what, int rc) {
    r->failures++;
    size_t l = strlen(r->log);
    snprintf(r->log + l, sizeof r->log - l, "  %s returned %d (%s) \"%s\"\n", what, rc,
             psrpc_status_name(rc), psrpc_last_error());
}

/* expr must return `code` (1: any failure) with a last error. */
#define EXPECT_RC(r, expr, code)                                \
    do {                                                        \
        psrpc_clear_error();                                    \
        int rc_ = (expr);                                       \
        if ((code) == 1 ? rc_ >= 0 : rc_ != (code))             \
            note(r, #expr, rc_);                                \
        else if (rc_ != PSRPC_OK && psrpc_last_error()[0] == 0) \
            note(r, #expr " (no last error)", rc_);             \
    } while (0)

static psrpc_error_detail d_no_url = {NULL, (const uint8_t *)"v", 1};
static psrpc_error_detail d_no_value = {"type.googleapis.com/x.Y", NULL, 3};

/* One wrong call per request, chosen by the payload; then a second answer,
 * which must find the request already consumed. The expected failure text
 * the caller sees is in wrong_calls[i].reason. */
typedef struct wrong_call {
    const char *name;
    const char *reason; /* part of the PSRPC_INTERNAL message the caller sees */
} wrong_call;

static const wrong_call wrong_calls[] = {
    {"respond_null_data", "data is NULL"},     {"fail_ok_status", "is not an error"},
    {"details_null_array", "details is NULL"}, {"detail_no_url", "no valid type_url"},
    {"detail_null_value", "NULL value"},       {"claim_in_handler", "handler stage"},
    {"details_null_code", "code is NULL"},     {"fail_bad_utf8", "not valid UTF-8"},
};
#define N_WRONG (sizeof wrong_calls / sizeof wrong_calls[0])

static void bad_handler(psrpc_request *req, void *ud) {
    arg_rec *r = (arg_rec *)ud;
    atomic_fetch_add(&r->handled, 1);
    const psrpc_msg *p = psrpc_request_payload(req);
    char which[64] = {0};
    snprintf(which, sizeof which, "%.*s", (int)psrpc_msg_size(p), (const char *)psrpc_msg_data(p));
    if (strcmp(which, "accessors") == 0) {
        /* wrong accessor arguments never consume */
        const char *k = NULL, *v = NULL;
        EXPECT_RC(r, psrpc_request_metadata_at(req, 0, NULL, &v), PSRPC_INVALID_ARGUMENT);
        EXPECT_RC(r, psrpc_request_metadata_at(req, 0, &k, NULL), PSRPC_INVALID_ARGUMENT);
        EXPECT_RC(r, psrpc_request_metadata_at(req, 5, &k, &v), PSRPC_OUT_OF_RANGE);
        if (psrpc_request_metadata_get(req, NULL) != NULL)
            note(r, "psrpc_request_metadata_get(req, NULL) != NULL", 0);
        if (psrpc_request_topic(req, 99) != NULL)
            note(r, "psrpc_request_topic(req, 99) != NULL", 0);
        EXPECT_RC(r, psrpc_request_respond(req, "fine", 4), PSRPC_OK);
        return;
    }
    if (strcmp(which, "respond_null_data") == 0)
        EXPECT_RC(r, psrpc_request_respond(req, NULL, 5), PSRPC_INVALID_ARGUMENT);
    else if (strcmp(which, "fail_ok_status") == 0)
        EXPECT_RC(r, psrpc_request_fail(req, PSRPC_OK, "not an error"), PSRPC_INVALID_ARGUMENT);
    else if (strcmp(which, "details_null_array") == 0)
        EXPECT_RC(r, psrpc_request_fail_details(req, "aborted", "m", NULL, 2),
                  PSRPC_INVALID_ARGUMENT);
    else if (strcmp(which, "detail_no_url") == 0)
        EXPECT_RC(r, psrpc_request_fail_details(req, "aborted", "m", &d_no_url, 1),
                  PSRPC_INVALID_ARGUMENT);
    else if (strcmp(which, "detail_null_value") == 0)
        EXPECT_RC(r, psrpc_request_fail_details(req, "aborted", "m", &d_no_value, 1),
                  PSRPC_INVALID_ARGUMENT);
    else if (strcmp(which, "claim_in_handler") == 0)
        EXPECT_RC(r, psrpc_request_claim(req, 1.0f), PSRPC_INVALID_ARGUMENT);
    else if (strcmp(which, "details_null_code") == 0)
        EXPECT_RC(r, psrpc_request_fail_details(req, NULL, "m", NULL, 0), PSRPC_INVALID_ARGUMENT);
    else if (strcmp(which, "fail_bad_utf8") == 0)
        EXPECT_RC(r, psrpc_request_fail(req, PSRPC_ABORTED, "bad \xff utf8"),
                  PSRPC_INVALID_ARGUMENT);
    else
        note(r, "unexpected payload", 0);
    /* consumed: a second answer is recognised as stale (never a use after
     * free under ASan, never a second response) */
    EXPECT_RC(r, psrpc_request_respond(req, "late", 4), PSRPC_INVALID_ARGUMENT);
    EXPECT_RC(r, psrpc_request_fail(req, PSRPC_ABORTED, "late"), PSRPC_INVALID_ARGUMENT);
    psrpc_request_abandon(req, PSRPC_ABORTED, "late");
}

/* Affinity stage: respond/fail do not fit it; they decline the request. */
static void bad_affinity(psrpc_request *req, void *ud) {
    arg_rec *r = (arg_rec *)ud;
    atomic_fetch_add(&r->affinity_calls, 1);
    const psrpc_msg *p = psrpc_request_payload(req);
    (void)p; /* affinity requests carry the payload too; the metadata says what to do */
    const char *how = psrpc_request_metadata_get(req, "how");
    if (how && strcmp(how, "respond") == 0)
        EXPECT_RC(r, psrpc_request_respond(req, "x", 1), PSRPC_INVALID_ARGUMENT);
    else if (how && strcmp(how, "fail") == 0)
        EXPECT_RC(r, psrpc_request_fail(req, PSRPC_ABORTED, "x"), PSRPC_INVALID_ARGUMENT);
    else {
        EXPECT_RC(r, psrpc_request_claim(req, 0.7f), PSRPC_OK);
        return;
    }
    EXPECT_RC(r, psrpc_request_claim(req, 0.7f), PSRPC_INVALID_ARGUMENT); /* stale */
}

static void rec_release(void *ud) { atomic_fetch_add(&((arg_rec *)ud)->released, 1); }

static void run(uint32_t routing) {
    psrpc_bus *sb, *cb;
    REQUIRE(open_bus_pair(&sb, &cb) == 0);
    char svc[64];
    tu_service(svc, sizeof svc);
    psrpc_server *srv = NULL;
    REQUIRE(psrpc_server_create(&srv, sb, svc, NULL) == PSRPC_OK);
    arg_rec *r = (arg_rec *)calloc(1, sizeof *r);
    psrpc_method m = tu_method("Echo", routing, 0);
    bool aff = routing == PSRPC_ROUTING_AFFINITY;
    REQUIRE(psrpc_server_register(srv, &m, NULL, 0, bad_handler, aff ? bad_affinity : NULL, NULL, r,
                                  rec_release) == PSRPC_OK);
    REQUIRE(psrpc_server_wait_ready(srv, tu_ms(5000)) == PSRPC_OK);
    psrpc_client *cl = tu_client(cb, svc, 2000, aff ? 300 : 0);
    REQUIRE(cl);
    tu_call *c = tu_calls_new(N_WRONG + 3);
    /* every wrong call: the caller sees PSRPC_INTERNAL naming the problem */
    for (size_t i = 0; i < N_WRONG; i++) {
        REQUIRE(tu_call_wait(cl, &m, wrong_calls[i].name, NULL, &c[i], 5000));
        CHECK_EQ_INT(c[i].status, PSRPC_INTERNAL);
        CHECK_EQ_STR(c[i].code, "internal");
        if (!tu_contains_ci(c[i].message, wrong_calls[i].reason)) {
            fprintf(stderr, "  %s: message \"%s\" does not say \"%s\"\n", wrong_calls[i].name,
                    c[i].message, wrong_calls[i].reason);
            th_failed_current = 1;
        }
    }
    /* wrong accessor arguments, then a proper answer */
    REQUIRE(tu_call_wait(cl, &m, "accessors", NULL, &c[N_WRONG], 5000));
    CHECK_EQ_INT(c[N_WRONG].status, PSRPC_OK);
    CHECK_EQ_STR(c[N_WRONG].response, "fine");
    if (aff) {
        /* respond / fail in the affinity stage decline: no server claims */
        const char *hows[2] = {"respond", "fail"};
        for (int i = 0; i < 2; i++) {
            psrpc_kv kv = {"how", hows[i]};
            psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
            o.metadata = &kv;
            o.metadata_count = 1;
            tu_call *x = &c[N_WRONG + 1 + i];
            REQUIRE(tu_call_wait(cl, &m, "accessors", &o, x, 5000));
            CHECK_EQ_INT(x->status, PSRPC_UNAVAILABLE);
        }
    }
    th_sleep_ms(50);
    if (r->failures)
        fprintf(stderr, "%s", r->log);
    CHECK_EQ_INT(r->failures, 0);
    CHECK_EQ_INT(atomic_load(&r->handled), (int)N_WRONG + 1);
    psrpc_client_free(cl);
    psrpc_server_free(srv);
    psrpc_bus_free(cb);
    psrpc_bus_free(sb);
    CHECK_EQ_INT(atomic_load(&r->released), 1);
    for (size_t i = 0; i < N_WRONG + (aff ? 3 : 1); i++)
        CHECK_EQ_INT(atomic_load(&c[i].count), 1);
    free(c);
    free(r);
}

TEST(args_live_request_queue) { run(PSRPC_ROUTING_QUEUE); }
TEST(args_live_request_affinity) { run(PSRPC_ROUTING_AFFINITY); }

/* Selection objects: a refused choose/fail does not consume the selection. */
typedef struct sel_arg {
    atomic_int calls;
    int failures;
    bool consumed_early;
    char log[512];
} sel_arg;

static void bad_select(psrpc_selection *sel, const psrpc_claim *claims, size_t n, void *ud) {
    sel_arg *s = (sel_arg *)ud;
    atomic_fetch_add(&s->calls, 1);
    psrpc_clear_error();
    int rc = psrpc_selection_choose(sel, NULL);
    if (rc == PSRPC_OK) {
        s->failures++;
        s->consumed_early = true;
        snprintf(s->log, sizeof s->log, "  psrpc_selection_choose(sel, NULL) returned OK\n");
        return;
    }
    if (rc != PSRPC_INVALID_ARGUMENT || psrpc_last_error()[0] == 0)
        s->failures++;
    psrpc_clear_error();
    rc = psrpc_selection_fail(sel, PSRPC_OK, "not an error");
    if (rc == PSRPC_OK) {
        s->failures++;
        s->consumed_early = true;
        snprintf(s->log, sizeof s->log, "  psrpc_selection_fail(sel, PSRPC_OK) returned OK\n");
        return;
    }
    if (rc != PSRPC_INVALID_ARGUMENT || psrpc_last_error()[0] == 0)
        s->failures++;
    if (n == 0 || psrpc_selection_choose(sel, claims[0].server_id) != PSRPC_OK)
        s->failures++;
}

TEST(args_live_selection) {
    psrpc_bus *sb, *cb;
    REQUIRE(open_bus_pair(&sb, &cb) == 0);
    char svc[64];
    tu_service(svc, sizeof svc);
    tu_srv *srv = tu_srv_new(sb, svc, NULL, TU_ECHO_ID);
    REQUIRE(srv->server);
    psrpc_method m = tu_method("Claim", PSRPC_ROUTING_AFFINITY, 0);
    REQUIRE(tu_srv_register(srv, &m, NULL, 0) == PSRPC_OK);
    psrpc_client *cl = tu_client(cb, svc, 2000, 0);
    REQUIRE(cl);
    sel_arg *s = (sel_arg *)calloc(1, sizeof *s);
    psrpc_selection_options so = PSRPC_SELECTION_OPTIONS_INIT;
    so.affinity_timeout_ms = 200;
    so.select = bad_select;
    so.select_user_data = s;
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.selection = &so;
    tu_call *c = tu_calls_new(1);
    REQUIRE(tu_call_wait(cl, &m, "x", &o, c, 5000));
    if (s->failures)
        fprintf(stderr, "%s", s->log);
    CHECK_EQ_INT(s->failures, 0);
    CHECK(!s->consumed_early);
    CHECK_EQ_INT(atomic_load(&s->calls), 1);
    CHECK_EQ_INT(c->status, PSRPC_OK);
    CHECK_EQ_STR(c->response, srv->id);
    psrpc_client_free(cl);
    psrpc_server_free(srv->server);
    psrpc_bus_free(cb);
    psrpc_bus_free(sb);
    CHECK_EQ_INT(atomic_load(&c->count), 1);
    free(c);
    free(s);
    tu_srv_destroy(srv);
}

TEST_MAIN()
