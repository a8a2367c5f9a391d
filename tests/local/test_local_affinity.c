/* Server selection for AFFINITY routing (wire spec 8.3, interop plan 16.4
 * A1-A10, test plan M3): defaults, minimum/maximum affinity, accept first
 * available, affinity 0, declining servers, custom selection callbacks,
 * selection_fail, and affinity answered asynchronously from other threads. */
#include "util.h"

static psrpc_method claim_method(void) { return tu_method("Claim", PSRPC_ROUTING_AFFINITY, 0); }

#define MAXS 4

typedef struct afx {
    psrpc_bus *bus[MAXS + 1];
    tu_srv *s[MAXS];
    int n;
    psrpc_client *cl;
    char service[64];
} afx;

/* n servers (each on its own bus, as separate processes) with the given
 * affinities, answering the claim asynchronously when async; and a client
 * with the given selection timeout. */
static afx *afx_new(int n, const float *aff, bool async, int64_t selection_timeout) {
    afx *f = (afx *)calloc(1, sizeof *f);
    f->n = n;
    tu_service(f->service, sizeof f->service);
    if (open_bus_group(f->bus, n + 1) != 0)
        return f;
    psrpc_method m = claim_method();
    for (int i = 0; i < n; i++) {
        f->s[i] = tu_srv_new(f->bus[i], f->service, NULL, TU_ECHO_ID);
        if (!f->s[i]->server)
            return f;
        f->s[i]->use_affinity = true;
        f->s[i]->affinity = aff[i];
        f->s[i]->affinity_async = async;
        if (tu_srv_register(f->s[i], &m, NULL, 0) != PSRPC_OK)
            return f;
    }
    f->cl = tu_client(f->bus[n], f->service, 5000, selection_timeout);
    return f;
}

static bool afx_ok(afx *f) {
    if (!f->cl)
        return false;
    for (int i = 0; i < f->n; i++)
        if (!f->s[i] || !f->s[i]->server)
            return false;
    return true;
}

static void afx_free(afx *f) {
    psrpc_client_free(f->cl);
    for (int i = 0; i < f->n; i++)
        if (f->s[i])
            psrpc_server_free(f->s[i]->server);
    for (int i = 0; i <= f->n; i++)
        psrpc_bus_free(f->bus[i]);
    for (int i = 0; i < f->n; i++) {
        if (f->s[i])
            CHECK_EQ_INT(atomic_load(&f->s[i]->answer_errors), 0);
        tu_srv_destroy(f->s[i]);
    }
    free(f);
}

static int handled_total(afx *f) {
    int t = 0;
    for (int i = 0; i < f->n; i++)
        t += atomic_load(&f->s[i]->handled);
    return t;
}

/* Calls Claim with opts and waits for the completion. */
static bool afx_call(afx *f, const psrpc_call_options *o, tu_call *c, long wait_ms) {
    psrpc_method m = claim_method();
    return tu_call_wait(f->cl, &m, "pick", o, c, wait_ms);
}

/* ------------------------------------------------------------------------ */

static void check_best_wins(bool async) {
    const float aff[3] = {0.2f, 0.9f, 0.5f};
    afx *f = afx_new(3, aff, async, 0);
    REQUIRE(afx_ok(f));
    tu_call *c = tu_calls_new(1);
    REQUIRE(afx_call(f, NULL, c, 5000));
    CHECK_EQ_INT(c->status, PSRPC_OK);
    CHECK_EQ_STR(c->response, f->s[1]->id);
    CHECK_EQ_STR(c->server_id, f->s[1]->id);
    th_sleep_ms(100);
    CHECK_EQ_INT(atomic_load(&f->s[1]->handled), 1);
    CHECK_EQ_INT(atomic_load(&f->s[0]->handled), 0);
    CHECK_EQ_INT(atomic_load(&f->s[2]->handled), 0);
    for (int i = 0; i < 3; i++)
        CHECK_EQ_INT(atomic_load(&f->s[i]->affinity_calls), 1);
    afx_free(f);
    CHECK_EQ_INT(atomic_load(&c->count), 1);
    free(c);
    TU_CHECK_THREADS();
}

/* A1: default AFFINITY options, the best claim wins; every affinity callback
 * is asked once. */
TEST(affinity_best_wins_default_options) { check_best_wins(false); }

/* The same with every affinity answered from another thread. */
TEST(affinity_best_wins_async_claims) { check_best_wins(true); }

/* A2: MinimumAffinity above every claim. */
TEST(affinity_minimum_affinity) {
    const float aff[3] = {0.2f, 0.9f, 0.5f};
    afx *f = afx_new(3, aff, false, 0);
    REQUIRE(afx_ok(f));
    psrpc_selection_options so = PSRPC_SELECTION_OPTIONS_INIT;
    so.minimum_affinity = 0.95f;
    so.affinity_timeout_ms = 500;
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.selection = &so;
    tu_call *c = tu_calls_new(1);
    long long t0 = th_now_ms();
    REQUIRE(afx_call(f, &o, c, 5000));
    CHECK_EQ_INT(c->status, PSRPC_UNAVAILABLE);
    CHECK_EQ_STR(c->code, "unavailable");
    CHECK_EQ_STR(c->message, "no servers available (received 3 responses)");
    CHECK(c->at_ms - t0 >= 450);
    th_sleep_ms(100);
    CHECK_EQ_INT(handled_total(f), 0);
    afx_free(f);
    CHECK_EQ_INT(atomic_load(&c->count), 1);
    free(c);
}

/* A3: MaximumAffinity: the first claim at or above it is taken at once, long
 * before the 5 s affinity timeout. */
TEST(affinity_maximum_affinity) {
    const float aff[2] = {0.6f, 0.9f};
    afx *f = afx_new(2, aff, false, 0);
    REQUIRE(afx_ok(f));
    psrpc_selection_options so = PSRPC_SELECTION_OPTIONS_INIT;
    so.maximum_affinity = 0.5f;
    so.affinity_timeout_ms = 5000;
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.selection = &so;
    o.timeout_ms = 8000;
    tu_call *c = tu_calls_new(1);
    long long t0 = th_now_ms();
    REQUIRE(afx_call(f, &o, c, 8000));
    CHECK_EQ_INT(c->status, PSRPC_OK);
    CHECK(c->at_ms - t0 < tu_ms(2500));
    CHECK(strcmp(c->response, f->s[0]->id) == 0 || strcmp(c->response, f->s[1]->id) == 0);
    th_sleep_ms(100);
    CHECK_EQ_INT(handled_total(f), 1);
    afx_free(f);
    CHECK_EQ_INT(atomic_load(&c->count), 1);
    free(c);
}

/* A4: AcceptFirstAvailable: the first claimant handles, at once. */
TEST(affinity_accept_first_available) {
    const float aff[3] = {0.2f, 0.9f, 0.5f};
    afx *f = afx_new(3, aff, false, 0);
    REQUIRE(afx_ok(f));
    psrpc_selection_options so = PSRPC_SELECTION_OPTIONS_INIT;
    so.flags = PSRPC_SELECT_ACCEPT_FIRST_AVAILABLE;
    so.affinity_timeout_ms = 5000;
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.selection = &so;
    o.timeout_ms = 8000;
    tu_call *c = tu_calls_new(1);
    long long t0 = th_now_ms();
    REQUIRE(afx_call(f, &o, c, 8000));
    CHECK_EQ_INT(c->status, PSRPC_OK);
    CHECK(c->at_ms - t0 < tu_ms(2500));
    th_sleep_ms(100);
    CHECK_EQ_INT(handled_total(f), 1);
    CHECK_EQ_STR(c->server_id, c->response);
    afx_free(f);
    CHECK_EQ_INT(atomic_load(&c->count), 1);
    free(c);
}

/* Custom selection callbacks. */
enum { SEL_LOWEST, SEL_FAIL, SEL_HOLD, SEL_UNKNOWN_ID };

typedef struct sel_rec {
    atomic_int calls;
    int mode;
    size_t count;
    char ids[8][128];
    float aff[8];
    void *seen_user_data;
    psrpc_selection *held;
    int answer_rc;
} sel_rec;

static void select_cb(psrpc_selection *sel, const psrpc_claim *claims, size_t count, void *ud) {
    sel_rec *r = (sel_rec *)ud;
    tu_note_cb_thread();
    r->seen_user_data = ud;
    r->count = count;
    size_t lowest = 0;
    for (size_t i = 0; i < count && i < 8; i++) {
        snprintf(r->ids[i], sizeof r->ids[i], "%s", claims[i].server_id ? claims[i].server_id : "");
        r->aff[i] = claims[i].affinity;
        if (claims[i].affinity < claims[lowest].affinity)
            lowest = i;
    }
    switch (r->mode) {
    case SEL_LOWEST:
        r->answer_rc = count ? psrpc_selection_choose(sel, claims[lowest].server_id)
                             : psrpc_selection_fail(sel, PSRPC_UNAVAILABLE, "none");
        break;
    case SEL_FAIL:
        r->answer_rc = psrpc_selection_fail(sel, PSRPC_RESOURCE_EXHAUSTED, "nope \xe2\x9c\x97");
        break;
    case SEL_UNKNOWN_ID:
        r->answer_rc = psrpc_selection_choose(sel, "SRV_nobodyatall");
        break;
    default:
        r->held = sel;
        break;
    }
    atomic_fetch_add(&r->calls, 1);
}

static psrpc_selection_options custom_sel(sel_rec *r) {
    psrpc_selection_options so = PSRPC_SELECTION_OPTIONS_INIT;
    so.affinity_timeout_ms = 500;
    so.select = select_cb;
    so.select_user_data = r;
    return so;
}

/* A9: a selection callback choosing the lowest affinity; it sees every
 * eligible claim once, the lowest server handles. */
TEST(affinity_custom_select_lowest) {
    const float aff[3] = {0.2f, 0.9f, 0.5f};
    afx *f = afx_new(3, aff, false, 0);
    REQUIRE(afx_ok(f));
    sel_rec *r = (sel_rec *)calloc(1, sizeof *r);
    r->mode = SEL_LOWEST;
    psrpc_selection_options so = custom_sel(r);
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.selection = &so;
    tu_call *c = tu_calls_new(1);
    REQUIRE(afx_call(f, &o, c, 5000));
    CHECK_EQ_INT(c->status, PSRPC_OK);
    CHECK_EQ_STR(c->response, f->s[0]->id);
    CHECK_EQ_INT(atomic_load(&r->calls), 1);
    CHECK(r->seen_user_data == r);
    CHECK_EQ_INT(r->answer_rc, PSRPC_OK);
    CHECK_EQ_INT(r->count, 3);
    for (int k = 0; k < 3; k++) {
        int found = 0;
        for (size_t i = 0; i < r->count && i < 8; i++)
            if (strcmp(r->ids[i], f->s[k]->id) == 0 && r->aff[i] == aff[k])
                found++;
        CHECK_EQ_INT(found, 1);
    }
    th_sleep_ms(100);
    CHECK_EQ_INT(atomic_load(&f->s[0]->handled), 1);
    CHECK_EQ_INT(handled_total(f), 1);
    afx_free(f);
    CHECK_EQ_INT(atomic_load(&c->count), 1);
    CHECK_EQ_INT(atomic_load(&r->calls), 1);
    free(c);
    free(r);
}

/* psrpc_selection_fail: the call fails with that status and message; no
 * handler runs. */
TEST(affinity_selection_fail) {
    const float aff[2] = {0.4f, 0.7f};
    afx *f = afx_new(2, aff, false, 0);
    REQUIRE(afx_ok(f));
    sel_rec *r = (sel_rec *)calloc(1, sizeof *r);
    r->mode = SEL_FAIL;
    psrpc_selection_options so = custom_sel(r);
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.selection = &so;
    tu_call *c = tu_calls_new(1);
    REQUIRE(afx_call(f, &o, c, 5000));
    CHECK_EQ_INT(c->status, PSRPC_RESOURCE_EXHAUSTED);
    CHECK_EQ_STR(c->code, "resource_exhausted");
    CHECK_EQ_STR(c->message, "nope \xe2\x9c\x97");
    CHECK_EQ_INT(r->answer_rc, PSRPC_OK);
    th_sleep_ms(200);
    CHECK_EQ_INT(handled_total(f), 0);
    afx_free(f);
    CHECK_EQ_INT(atomic_load(&c->count), 1);
    CHECK_EQ_INT(atomic_load(&r->calls), 1);
    free(c);
    free(r);
}

/* The selection callback runs even with no claim at all (empty list). */
TEST(affinity_custom_select_no_claims) {
    const float aff[1] = {-1.0f};
    afx *f = afx_new(1, aff, false, 0);
    REQUIRE(afx_ok(f));
    sel_rec *r = (sel_rec *)calloc(1, sizeof *r);
    r->mode = SEL_LOWEST; /* fails "none" on an empty list */
    psrpc_selection_options so = custom_sel(r);
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.selection = &so;
    tu_call *c = tu_calls_new(1);
    REQUIRE(afx_call(f, &o, c, 5000));
    CHECK_EQ_INT(atomic_load(&r->calls), 1);
    CHECK_EQ_INT(r->count, 0);
    CHECK_EQ_INT(c->status, PSRPC_UNAVAILABLE);
    CHECK_EQ_STR(c->message, "none");
    afx_free(f);
    CHECK_EQ_INT(atomic_load(&c->count), 1);
    free(c);
    free(r);
}

/* The selection is answered later from another thread; an unknown server id
 * makes the call time out. */
typedef struct choose_job {
    psrpc_selection *sel;
    char id[128];
    int delay_ms;
    int rc;
} choose_job;

static void *choose_thread(void *arg) {
    choose_job *j = (choose_job *)arg;
    th_sleep_ms(j->delay_ms);
    j->rc = psrpc_selection_choose(j->sel, j->id);
    return NULL;
}

TEST(affinity_select_answered_from_thread) {
    const float aff[3] = {0.2f, 0.9f, 0.5f};
    afx *f = afx_new(3, aff, true, 0);
    REQUIRE(afx_ok(f));
    sel_rec *r = (sel_rec *)calloc(1, sizeof *r);
    r->mode = SEL_HOLD;
    psrpc_selection_options so = custom_sel(r);
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.selection = &so;
    o.timeout_ms = 5000;
    tu_call *c = tu_calls_new(1);
    psrpc_method m = claim_method();
    REQUIRE(tu_call_async(f->cl, &m, "x", &o, c) == PSRPC_OK);
    REQUIRE(WAIT_UNTIL(atomic_load(&r->calls) == 1, 3000));
    REQUIRE(r->held != NULL);
    CHECK_EQ_INT(atomic_load(&c->count), 0);
    choose_job *j = (choose_job *)calloc(1, sizeof *j);
    j->sel = r->held;
    snprintf(j->id, sizeof j->id, "%s", f->s[2]->id);
    j->delay_ms = 100;
    pthread_t t;
    pthread_create(&t, NULL, choose_thread, j);
    pthread_join(t, NULL);
    CHECK_EQ_INT(j->rc, PSRPC_OK);
    REQUIRE(tu_wait_count(&c->count, 1, 3000));
    CHECK_EQ_INT(c->status, PSRPC_OK);
    CHECK_EQ_STR(c->response, f->s[2]->id);
    th_sleep_ms(100);
    CHECK_EQ_INT(handled_total(f), 1);
    afx_free(f);
    CHECK_EQ_INT(atomic_load(&c->count), 1);
    free(j);
    free(c);
    free(r);
}

TEST(affinity_select_unknown_server_times_out) {
    const float aff[2] = {0.2f, 0.9f};
    afx *f = afx_new(2, aff, false, 0);
    REQUIRE(afx_ok(f));
    sel_rec *r = (sel_rec *)calloc(1, sizeof *r);
    r->mode = SEL_UNKNOWN_ID;
    psrpc_selection_options so = custom_sel(r);
    so.affinity_timeout_ms = 200;
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.selection = &so;
    o.timeout_ms = 600;
    tu_call *c = tu_calls_new(1);
    long long t0 = th_now_ms();
    REQUIRE(afx_call(f, &o, c, 5000));
    CHECK_EQ_INT(c->status, PSRPC_DEADLINE_EXCEEDED);
    CHECK_EQ_STR(c->message, "request timed out");
    CHECK(c->at_ms - t0 >= 550);
    CHECK_EQ_INT(handled_total(f), 0);
    afx_free(f);
    CHECK_EQ_INT(atomic_load(&c->count), 1);
    free(c);
    free(r);
}

/* A selection never answered: the call's deadline keeps running; answering
 * after the completion is harmless. */
TEST(affinity_select_never_answered) {
    const float aff[1] = {0.5f};
    afx *f = afx_new(1, aff, false, 0);
    REQUIRE(afx_ok(f));
    sel_rec *r = (sel_rec *)calloc(1, sizeof *r);
    r->mode = SEL_HOLD;
    psrpc_selection_options so = custom_sel(r);
    so.affinity_timeout_ms = 100;
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.selection = &so;
    o.timeout_ms = 500;
    tu_call *c = tu_calls_new(1);
    long long t0 = th_now_ms();
    REQUIRE(afx_call(f, &o, c, 5000));
    CHECK_EQ_INT(c->status, PSRPC_DEADLINE_EXCEEDED);
    CHECK(c->at_ms - t0 >= 450);
    REQUIRE(r->held != NULL);
    int rc = psrpc_selection_choose(r->held, f->s[0]->id); /* late: discarded */
    (void)rc;
    th_sleep_ms(200);
    CHECK_EQ_INT(atomic_load(&c->count), 1);
    CHECK_EQ_INT(handled_total(f), 0);
    afx_free(f);
    CHECK_EQ_INT(atomic_load(&c->count), 1);
    free(c);
    free(r);
}

/* A5: a declining server (negative affinity) never claims; 0.3 handles. */
TEST(affinity_declining_server) {
    const float aff[2] = {-1.0f, 0.3f};
    afx *f = afx_new(2, aff, false, 0);
    REQUIRE(afx_ok(f));
    tu_call *c = tu_calls_new(2);
    REQUIRE(afx_call(f, NULL, &c[0], 5000));
    CHECK_EQ_INT(c[0].status, PSRPC_OK);
    CHECK_EQ_STR(c[0].response, f->s[1]->id);
    /* the claim list a selection callback sees holds only the 0.3 server */
    sel_rec *r = (sel_rec *)calloc(1, sizeof *r);
    r->mode = SEL_LOWEST;
    psrpc_selection_options so = custom_sel(r);
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.selection = &so;
    REQUIRE(afx_call(f, &o, &c[1], 5000));
    CHECK_EQ_INT(c[1].status, PSRPC_OK);
    CHECK_EQ_STR(c[1].response, f->s[1]->id);
    CHECK_EQ_INT(r->count, 1);
    CHECK_EQ_STR(r->ids[0], f->s[1]->id);
    th_sleep_ms(100);
    CHECK_EQ_INT(atomic_load(&f->s[0]->handled), 0);
    CHECK_EQ_INT(atomic_load(&f->s[0]->affinity_calls), 2);
    CHECK_EQ_INT(atomic_load(&f->s[1]->handled), 2);
    afx_free(f);
    CHECK_EQ_INT(atomic_load(&c[0].count), 1);
    CHECK_EQ_INT(atomic_load(&c[1].count), 1);
    free(c);
    free(r);
}

/* A6: affinity 0 is never "best" but AcceptFirstAvailable takes it. */
TEST(affinity_zero) {
    const float aff[1] = {0.0f};
    afx *f = afx_new(1, aff, false, 300);
    REQUIRE(afx_ok(f));
    tu_call *c = tu_calls_new(2);
    REQUIRE(afx_call(f, NULL, &c[0], 5000));
    CHECK_EQ_INT(c[0].status, PSRPC_UNAVAILABLE);
    CHECK_EQ_STR(c[0].message, "no servers available (received 1 responses)");
    psrpc_selection_options so = PSRPC_SELECTION_OPTIONS_INIT;
    so.flags = PSRPC_SELECT_ACCEPT_FIRST_AVAILABLE;
    so.affinity_timeout_ms = 1000;
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.selection = &so;
    REQUIRE(afx_call(f, &o, &c[1], 5000));
    CHECK_EQ_INT(c[1].status, PSRPC_OK);
    CHECK_EQ_STR(c[1].response, f->s[0]->id);
    th_sleep_ms(100);
    CHECK_EQ_INT(atomic_load(&f->s[0]->handled), 1);
    afx_free(f);
    CHECK_EQ_INT(atomic_load(&c[0].count), 1);
    CHECK_EQ_INT(atomic_load(&c[1].count), 1);
    free(c);
}

/* A7: only a declining server: no claim at all. */
TEST(affinity_only_declining) {
    const float aff[1] = {-0.5f};
    afx *f = afx_new(1, aff, true, 300);
    REQUIRE(afx_ok(f));
    tu_call *c = tu_calls_new(1);
    long long t0 = th_now_ms();
    REQUIRE(afx_call(f, NULL, c, 5000));
    CHECK_EQ_INT(c->status, PSRPC_UNAVAILABLE);
    CHECK_EQ_STR(c->message, "no response from servers");
    CHECK(c->at_ms - t0 >= 280);
    CHECK(c->at_ms - t0 < tu_ms(2500));
    CHECK_EQ_INT(atomic_load(&f->s[0]->affinity_calls), 1);
    CHECK_EQ_INT(atomic_load(&f->s[0]->handled), 0);
    afx_free(f);
    CHECK_EQ_INT(atomic_load(&c->count), 1);
    free(c);
}

/* A8 (quirk Q17): explicit options with only MinimumAffinity: selection uses
 * the whole request timeout and the call times out. */
TEST(affinity_explicit_options_replace_defaults) {
    const float aff[1] = {0.5f};
    afx *f = afx_new(1, aff, false, 0);
    REQUIRE(afx_ok(f));
    psrpc_selection_options so = PSRPC_SELECTION_OPTIONS_INIT;
    so.minimum_affinity = 0.1f;
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.selection = &so;
    o.timeout_ms = 500;
    tu_call *c = tu_calls_new(1);
    long long t0 = th_now_ms();
    REQUIRE(afx_call(f, &o, c, 5000));
    CHECK_EQ_INT(c->status, PSRPC_DEADLINE_EXCEEDED);
    CHECK_EQ_STR(c->message, "request timed out");
    CHECK(c->at_ms - t0 >= 450);
    afx_free(f);
    CHECK_EQ_INT(atomic_load(&c->count), 1);
    free(c);
}

/* A10: short circuit (200 ms by default for AFFINITY methods): a better claim
 * arriving 700 ms after the first loses. */
TEST(affinity_short_circuit_default) {
    const float aff[2] = {0.5f, 0.9f};
    afx *f = afx_new(2, aff, false, 0);
    REQUIRE(afx_ok(f));
    f->s[1]->affinity_delay_ms = 700;
    tu_call *c = tu_calls_new(1);
    long long t0 = th_now_ms();
    REQUIRE(afx_call(f, NULL, c, 5000));
    CHECK_EQ_INT(c->status, PSRPC_OK);
    CHECK_EQ_STR(c->response, f->s[0]->id);
    CHECK(c->at_ms - t0 >= 180);
    WAIT_UNTIL(atomic_load(&f->s[1]->claims_pending) == 0, 3000);
    th_sleep_ms(100);
    CHECK_EQ_INT(atomic_load(&f->s[1]->handled), 0);
    CHECK_EQ_INT(atomic_load(&f->s[0]->handled), 1);
    afx_free(f);
    CHECK_EQ_INT(atomic_load(&c->count), 1);
    free(c);
}

/* Ties keep the earliest claim; a server without an affinity callback claims
 * 1.0. Here: one callback-less server, one at 0.99: the 1.0 server wins. */
TEST(affinity_default_claim_is_one) {
    psrpc_bus *b[3];
    REQUIRE(open_bus_group(b, 3) == 0);
    char svc[64];
    tu_service(svc, sizeof svc);
    psrpc_method m = claim_method();
    tu_srv *plain = tu_srv_new(b[0], svc, NULL, TU_ECHO_ID);
    tu_srv *lower = tu_srv_new(b[1], svc, NULL, TU_ECHO_ID);
    REQUIRE(plain->server && lower->server);
    lower->use_affinity = true;
    lower->affinity = 0.99f;
    REQUIRE(tu_srv_register(plain, &m, NULL, 0) == PSRPC_OK);
    REQUIRE(tu_srv_register(lower, &m, NULL, 0) == PSRPC_OK);
    psrpc_client *cl = tu_client(b[2], svc, 0, 0);
    REQUIRE(cl);
    tu_call *c = tu_calls_new(1);
    REQUIRE(tu_call_wait(cl, &m, "x", NULL, c, 5000));
    CHECK_EQ_INT(c->status, PSRPC_OK);
    CHECK_EQ_STR(c->response, plain->id);
    psrpc_client_free(cl);
    psrpc_server_free(plain->server);
    psrpc_server_free(lower->server);
    for (int i = 0; i < 3; i++)
        psrpc_bus_free(b[i]);
    CHECK_EQ_INT(atomic_load(&c->count), 1);
    CHECK_EQ_INT(atomic_load(&lower->affinity_calls), 1);
    free(c);
    tu_srv_destroy(plain);
    tu_srv_destroy(lower);
}

/* Many affinity calls at once with asynchronous claims: each completes once
 * with the best server. */
TEST(affinity_many_concurrent_async) {
    const float aff[3] = {0.3f, 0.6f, 0.8f};
    afx *f = afx_new(3, aff, true, 0);
    REQUIRE(afx_ok(f));
    enum { N = 30 };
    tu_call *c = tu_calls_new(N);
    psrpc_method m = claim_method();
    /* The default options (short circuit 200 ms after the first claim), with the
     * windows scaled for slow runs (sanitizers, valgrind): 90 claims answered
     * from other threads may otherwise trail the first by more than 200 ms. */
    psrpc_selection_options sel = PSRPC_SELECTION_OPTIONS_INIT;
    sel.short_circuit_timeout_ms = tu_ms(200);
    sel.affinity_timeout_ms = tu_ms(1000);
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.selection = &sel;
    o.timeout_ms = tu_ms(3000);
    for (int i = 0; i < N; i++)
        REQUIRE(tu_call_async(f->cl, &m, "x", &o, &c[i]) == PSRPC_OK);
    for (int i = 0; i < N; i++) {
        REQUIRE(tu_wait_count(&c[i].count, 1, 8000));
        CHECK_EQ_INT(c[i].status, PSRPC_OK);
        CHECK_EQ_STR(c[i].response, f->s[2]->id);
    }
    th_sleep_ms(100);
    CHECK_EQ_INT(atomic_load(&f->s[2]->handled), N);
    CHECK_EQ_INT(handled_total(f), N);
    for (int i = 0; i < 3; i++)
        CHECK_EQ_INT(atomic_load(&f->s[i]->affinity_calls), N);
    afx_free(f);
    for (int i = 0; i < N; i++)
        CHECK_EQ_INT(atomic_load(&c[i].count), 1);
    free(c);
}

TEST_MAIN()
