/* Wrong arguments on live request and selection objects (test plan G1): a
 * call refused with INVALID_ARGUMENT (or another failure status) must not
 * consume the object, which is then answered properly. Kept apart from
 * test_local_abi.c because a library that wrongly consumes the object on a
 * refused call would make the proper answer a use after free. */
#include "util.h"

typedef struct arg_rec {
    atomic_int handled;
    atomic_int affinity_calls;
    atomic_int released;
    int failures; /* wrong calls that did not fail as expected */
    bool consumed_early;
    char log[1024];
} arg_rec;

static void note(arg_rec *r, const char *what, int rc) {
    r->failures++;
    size_t l = strlen(r->log);
    snprintf(r->log + l, sizeof r->log - l, "  %s returned %d (%s)\n", what, rc,
             psrpc_status_name(rc));
}

/* Wrong call expected to fail with `code` (or any failure when code == 1);
 * if it returned OK the object is gone: stop touching it. */
#define WRONG(r, expr, code)                                                                 \
    do {                                                                                     \
        psrpc_clear_error();                                                                 \
        int rc_ = (expr);                                                                    \
        if (rc_ == PSRPC_OK) {                                                               \
            note(r, #expr, rc_);                                                             \
            (r)->consumed_early = true;                                                      \
            return;                                                                          \
        }                                                                                    \
        if (((code) != 1 && rc_ != (code)) || psrpc_last_error()[0] == 0)                    \
            note(r, #expr, rc_);                                                             \
    } while (0)

static void bad_handler(psrpc_request *req, void *ud) {
    arg_rec *r = (arg_rec *)ud;
    atomic_fetch_add(&r->handled, 1);
    WRONG(r, psrpc_request_respond(req, NULL, 5), PSRPC_INVALID_ARGUMENT);
    WRONG(r, psrpc_request_fail(req, PSRPC_OK, "not an error"), PSRPC_INVALID_ARGUMENT);
    WRONG(r, psrpc_request_fail_details(req, "aborted", "m", NULL, 2), PSRPC_INVALID_ARGUMENT);
    psrpc_error_detail d1 = {NULL, (const uint8_t *)"v", 1};
    WRONG(r, psrpc_request_fail_details(req, "aborted", "m", &d1, 1), PSRPC_INVALID_ARGUMENT);
    psrpc_error_detail d2 = {"type.googleapis.com/x.Y", NULL, 3};
    WRONG(r, psrpc_request_fail_details(req, "aborted", "m", &d2, 1), PSRPC_INVALID_ARGUMENT);
    /* a claim answers the affinity stage only */
    WRONG(r, psrpc_request_claim(req, 1.0f), 1);
    const char *k = NULL, *v = NULL;
    WRONG(r, psrpc_request_metadata_at(req, 0, NULL, &v), PSRPC_INVALID_ARGUMENT);
    WRONG(r, psrpc_request_metadata_at(req, 0, &k, NULL), PSRPC_INVALID_ARGUMENT);
    WRONG(r, psrpc_request_metadata_at(req, 5, &k, &v), PSRPC_OUT_OF_RANGE);
    if (psrpc_request_metadata_get(req, NULL) != NULL)
        note(r, "psrpc_request_metadata_get(req, NULL) != NULL", 0);
    if (psrpc_request_topic(req, 99) != NULL)
        note(r, "psrpc_request_topic(req, 99) != NULL", 0);
    /* NULL for a pointer argument (test plan G1); last, as a library that
     * takes NULL for "unknown" consumes the request here */
    WRONG(r, psrpc_request_fail_details(req, NULL, "m", NULL, 0), PSRPC_INVALID_ARGUMENT);
    /* still ours: answer it */
    int rc = psrpc_request_respond(req, "fine", 4);
    if (rc != PSRPC_OK)
        note(r, "final psrpc_request_respond", rc);
}

static void bad_affinity(psrpc_request *req, void *ud) {
    arg_rec *r = (arg_rec *)ud;
    atomic_fetch_add(&r->affinity_calls, 1);
    /* respond/fail answer the handler stage only */
    WRONG(r, psrpc_request_respond(req, "x", 1), 1);
    WRONG(r, psrpc_request_fail(req, PSRPC_ABORTED, "x"), 1);
    int rc = psrpc_request_claim(req, 0.7f);
    if (rc != PSRPC_OK)
        note(r, "final psrpc_request_claim", rc);
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
    REQUIRE(psrpc_server_register(srv, &m, NULL, 0, bad_handler,
                                  routing == PSRPC_ROUTING_AFFINITY ? bad_affinity : NULL, NULL,
                                  r, rec_release) == PSRPC_OK);
    REQUIRE(psrpc_server_wait_ready(srv, tu_ms(5000)) == PSRPC_OK);
    psrpc_client *cl = tu_client(cb, svc, 2000, 0);
    REQUIRE(cl);
    tu_call *c = tu_calls_new(1);
    REQUIRE(tu_call_wait(cl, &m, "x", NULL, c, 5000));
    th_sleep_ms(50);
    if (r->failures)
        fprintf(stderr, "%s", r->log);
    CHECK_EQ_INT(r->failures, 0);
    CHECK(!r->consumed_early);
    CHECK_EQ_INT(c->status, PSRPC_OK);
    CHECK_EQ_STR(c->response, "fine");
    if (c->status != PSRPC_OK || strcmp(c->response, "fine") != 0)
        fprintf(stderr, "  call: status %d code \"%s\" message \"%s\" response \"%s\" (%zu bytes)\n",
                c->status, c->code, c->message, c->response, c->response_len);
    CHECK_EQ_INT(atomic_load(&r->handled), 1);
    psrpc_client_free(cl);
    psrpc_server_free(srv);
    psrpc_bus_free(cb);
    psrpc_bus_free(sb);
    CHECK_EQ_INT(atomic_load(&r->released), 1);
    CHECK_EQ_INT(atomic_load(&c->count), 1);
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
