/* Issue 16: hooks (client and server, order, metadata, failing and
 * rejecting), exactly one outcome per call, retries (v0.8.2 middleware
 * semantics: attempts, non-retryable codes, max attempts, the caller's
 * deadline and timeout, cancel, stream opens), the log callback (once per
 * event), metrics, trace context helpers, psrpc_request_reject in the
 * affinity stage, psrpc_stream_expiry_ns, and bad arguments to every new
 * function. Runs over every bus (PSRPC_TEST_BUS_URL). */
#include "util.h"

/* ------------------------------------------------------------------------ */
/* A scripted server                                                         */
/* ------------------------------------------------------------------------ */

enum { HS_META = 0, HS_FAIL_FIRST = 1, HS_HOLD = 2 };

typedef struct hsrv {
    psrpc_server *server;
    int mode;
    int fail_first;  /* HS_FAIL_FIRST: fail this many requests, then answer */
    int fail_status; /* with this status */
    atomic_int requests;
    pthread_mutex_t mu;
    psrpc_request *held[64];
    int nheld;
} hsrv;

/* HS_META answers "k=v;" for the metadata keys a, b, k, traceparent. */
static void hs_handler(psrpc_request *req, void *ud) {
    hsrv *h = (hsrv *)ud;
    int n = atomic_fetch_add(&h->requests, 1);
    if (h->mode == HS_HOLD) {
        pthread_mutex_lock(&h->mu);
        if (h->nheld < 64)
            h->held[h->nheld++] = req;
        else
            psrpc_request_fail(req, PSRPC_RESOURCE_EXHAUSTED, "full");
        pthread_mutex_unlock(&h->mu);
        return;
    }
    if (h->mode == HS_FAIL_FIRST && n < h->fail_first) {
        psrpc_request_fail(req, h->fail_status, "scripted failure");
        return;
    }
    char out[512] = "";
    const char *keys[] = {"a", "b", "k"};
    for (size_t i = 0; i < 3; i++) {
        const char *v = psrpc_request_metadata_get(req, keys[i]);
        size_t l = strlen(out);
        snprintf(out + l, sizeof out - l, "%s=%s;", keys[i], v ? v : "-");
    }
    psrpc_request_respond(req, out, strlen(out));
}

static void hs_release_held(hsrv *h) {
    pthread_mutex_lock(&h->mu);
    for (int i = 0; i < h->nheld; i++)
        psrpc_request_fail(h->held[i], PSRPC_CANCELED, "test over");
    h->nheld = 0;
    pthread_mutex_unlock(&h->mu);
}

static const psrpc_method *queue_method(void) {
    static psrpc_method m = PSRPC_METHOD_INIT;
    m.name = "Hooked";
    m.routing = PSRPC_ROUTING_QUEUE;
    return &m;
}

typedef struct fx {
    psrpc_bus *sbus, *cbus;
    hsrv *srv;
    psrpc_client *cl;
    char service[64];
} fx;

static fx *fx_new(int mode) {
    fx *f = (fx *)calloc(1, sizeof *f);
    tu_service(f->service, sizeof f->service);
    if (open_bus_pair(&f->sbus, &f->cbus) != 0)
        return f;
    f->srv = (hsrv *)calloc(1, sizeof *f->srv);
    pthread_mutex_init(&f->srv->mu, NULL);
    f->srv->mode = mode;
    if (psrpc_server_create(&f->srv->server, f->sbus, f->service, NULL) != PSRPC_OK)
        return f;
    f->cl = tu_client(f->cbus, f->service, 3000, 1000);
    return f;
}

static bool fx_register(fx *f) {
    return psrpc_server_register(f->srv->server, queue_method(), NULL, 0, hs_handler, NULL, NULL,
                                 f->srv, NULL) == PSRPC_OK &&
           psrpc_server_wait_ready(f->srv->server, tu_ms(5000)) == PSRPC_OK;
}

static bool fx_ok(fx *f) { return f->sbus && f->cbus && f->srv && f->srv->server && f->cl; }

static void fx_free(fx *f) {
    if (f->srv)
        hs_release_held(f->srv);
    psrpc_client_free(f->cl);
    if (f->srv)
        psrpc_server_free(f->srv->server);
    psrpc_bus_free(f->cbus);
    psrpc_bus_free(f->sbus);
    if (f->srv) {
        pthread_mutex_destroy(&f->srv->mu);
        free(f->srv);
    }
    free(f);
}

/* ------------------------------------------------------------------------ */
/* Hook recorders                                                            */
/* ------------------------------------------------------------------------ */

typedef struct rec {
    const char *name;
    char *log; /* shared order log */
    pthread_mutex_t *mu;
    int fail_status; /* != 0: the before hook fails with it */
    const char *set_key, *set_value;
    atomic_int before, outcome, released;
    /* the last outcome */
    int last_status;
    char last_code[64];
    uint32_t last_attempts;
    uint32_t last_kind;
    int64_t last_duration_ns;
    char last_server[128];
    char saw_a[64]; /* before hook: the value of "a" it saw */
} rec;

static void rec_log(rec *r, const char *what) {
    pthread_mutex_lock(r->mu);
    size_t l = strlen(r->log);
    snprintf(r->log + l, 256 - l, "%s.%s,", r->name, what);
    pthread_mutex_unlock(r->mu);
}

static int rec_before(const psrpc_call_info *info, psrpc_hook_call *call, void *ud) {
    rec *r = (rec *)ud;
    (void)info;
    atomic_fetch_add(&r->before, 1);
    rec_log(r, "before");
    const char *a = psrpc_hook_call_metadata_get(call, "a");
    snprintf(r->saw_a, sizeof r->saw_a, "%s", a ? a : "-");
    if (r->set_key && psrpc_hook_call_metadata_set(call, r->set_key, r->set_value) != PSRPC_OK)
        return PSRPC_INTERNAL;
    if (r->fail_status)
        return psrpc_hook_call_fail(call, r->fail_status, "hook says no");
    return 0;
}

static void rec_outcome(const psrpc_call_info *info, const psrpc_call_outcome *o, void *ud) {
    rec *r = (rec *)ud;
    rec_log(r, "outcome");
    r->last_status = o->error ? o->error->status : 0;
    snprintf(r->last_code, sizeof r->last_code, "%s", o->error ? o->error->code : "");
    r->last_attempts = o->attempts;
    r->last_kind = info->kind;
    r->last_duration_ns = o->duration_ns;
    snprintf(r->last_server, sizeof r->last_server, "%s", o->server_id ? o->server_id : "");
    atomic_fetch_add(&r->outcome, 1);
}

static void rec_release(void *ud) { atomic_fetch_add(&((rec *)ud)->released, 1); }

static void rec_init(rec *r, const char *name, char *log, pthread_mutex_t *mu) {
    memset(r, 0, sizeof *r);
    r->name = name;
    r->log = log;
    r->mu = mu;
}

static int add_client_rec(psrpc_client *c, rec *r) {
    psrpc_client_hooks h;
    psrpc_client_hooks_init(&h, sizeof h);
    h.before_send = rec_before;
    h.on_outcome = rec_outcome;
    h.user_data = r;
    h.release = rec_release;
    return psrpc_client_add_hooks(c, &h);
}

static int add_server_rec(psrpc_server *s, rec *r) {
    psrpc_server_hooks h;
    psrpc_server_hooks_init(&h, sizeof h);
    h.before_handle = rec_before;
    h.on_outcome = rec_outcome;
    h.user_data = r;
    h.release = rec_release;
    return psrpc_server_add_hooks(s, &h);
}

/* Stream callbacks shared by the tests. */
static int hk_msg_cb(psrpc_stream *st, const psrpc_msg *msg, void *ud) {
    (void)st;
    (void)msg;
    (void)ud;
    return 0;
}

typedef struct stream_side {
    atomic_int accepted;
    atomic_int closed;
    int close_status;
    int64_t expiry_ns;
    psrpc_stream *held;
} stream_side;

static void ss_close(psrpc_stream *st, const psrpc_error *cause, void *ud) {
    (void)st;
    stream_side *s = (stream_side *)ud;
    s->close_status = cause ? cause->status : 0;
    atomic_fetch_add(&s->closed, 1);
}

static void ss_handler(psrpc_stream *st, void *ud) {
    stream_side *s = (stream_side *)ud;
    s->expiry_ns = psrpc_stream_expiry_ns(st);
    psrpc_stream_set_callbacks(st, hk_msg_cb, ss_close, s, NULL);
    s->held = st;
    atomic_fetch_add(&s->accepted, 1);
}

typedef struct open_res {
    atomic_int opened;
    atomic_int closed;
    int open_status;
    int close_status;
    char close_code[64];
} open_res;

static void or_open(const psrpc_error *e, void *ud) {
    open_res *r = (open_res *)ud;
    r->open_status = e ? e->status : 0;
    atomic_fetch_add(&r->opened, 1);
}
static void or_close(psrpc_stream *st, const psrpc_error *cause, void *ud) {
    (void)st;
    open_res *r = (open_res *)ud;
    r->close_status = cause ? cause->status : 0;
    snprintf(r->close_code, sizeof r->close_code, "%s", cause && cause->code ? cause->code : "");
    atomic_fetch_add(&r->closed, 1);
}

/* ------------------------------------------------------------------------ */

TEST(hooks_order_metadata_and_release) {
    fx *f = fx_new(HS_META);
    REQUIRE(fx_ok(f) && fx_register(f));
    char log[256] = "";
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    rec a, b, s1;
    rec_init(&a, "A", log, &mu);
    rec_init(&b, "B", log, &mu);
    a.set_key = "a";
    a.set_value = "1";
    b.set_key = "k";
    b.set_value = "v2"; /* replaces the caller's k=v */
    REQUIRE(add_client_rec(f->cl, &a) == PSRPC_OK);
    REQUIRE(add_client_rec(f->cl, &b) == PSRPC_OK);
    char slog[256] = "";
    rec_init(&s1, "S", slog, &mu);
    REQUIRE(add_server_rec(f->srv->server, &s1) == PSRPC_OK);

    psrpc_kv md[] = {{"k", "v"}, {"b", "B"}};
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.metadata = md;
    o.metadata_count = 2;
    tu_call *c = tu_calls_new(1);
    REQUIRE(tu_call_wait(f->cl, queue_method(), "x", &o, c, tu_ms(5000)));
    CHECK_EQ_INT(c->status, PSRPC_OK);
    /* metadata added and replaced by the hooks reached the server */
    CHECK_EQ_STR(c->response, "a=1;b=B;k=v2;");
    CHECK_EQ_STR(b.saw_a, "1"); /* B runs after A and sees its change */
    CHECK_EQ_STR(log, "A.before,B.before,A.outcome,B.outcome,");
    CHECK_EQ_INT(a.last_kind, PSRPC_CALL_KIND_UNARY);
    CHECK_EQ_INT(a.last_attempts, 1);
    CHECK(a.last_duration_ns > 0);
    CHECK_EQ_STR(a.last_server, psrpc_server_id(f->srv->server));
    CHECK(WAIT_UNTIL(atomic_load(&s1.outcome) == 1, 2000));
    CHECK_EQ_STR(s1.saw_a, "1"); /* the server hook reads the request's metadata */
    CHECK_EQ_STR(slog, "S.before,S.outcome,");
    CHECK_EQ_INT(s1.last_status, 0);
    CHECK_EQ_INT(atomic_load(&c->count), 1);
    CHECK_EQ_INT(atomic_load(&c->bad), 0);
    free(c);
    fx_free(f);
    CHECK_EQ_INT(atomic_load(&a.released), 1);
    CHECK_EQ_INT(atomic_load(&b.released), 1);
    CHECK_EQ_INT(atomic_load(&s1.released), 1);
}

static int meta_set_server_refused(const psrpc_call_info *info, psrpc_hook_call *call, void *ud) {
    (void)info;
    atomic_store((atomic_int *)ud, psrpc_hook_call_metadata_set(call, "x", "y"));
    return 0;
}

TEST(server_hook_metadata_is_read_only) {
    fx *f = fx_new(HS_META);
    REQUIRE(fx_ok(f) && fx_register(f));
    atomic_int rc;
    atomic_init(&rc, 1);
    psrpc_server_hooks h = PSRPC_SERVER_HOOKS_INIT;
    h.before_handle = meta_set_server_refused;
    h.user_data = &rc;
    REQUIRE(psrpc_server_add_hooks(f->srv->server, &h) == PSRPC_OK);
    tu_call *c = tu_calls_new(1);
    REQUIRE(tu_call_wait(f->cl, queue_method(), "x", NULL, c, tu_ms(5000)));
    CHECK_EQ_INT(c->status, PSRPC_OK);
    CHECK_EQ_INT(atomic_load(&rc), PSRPC_FAILED_PRECONDITION);
    free(c);
    fx_free(f);
}

TEST(client_hook_fails_call) {
    fx *f = fx_new(HS_META);
    REQUIRE(fx_ok(f) && fx_register(f));
    char log[256] = "";
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    rec a, b;
    rec_init(&a, "A", log, &mu);
    rec_init(&b, "B", log, &mu);
    a.fail_status = PSRPC_PERMISSION_DENIED;
    REQUIRE(add_client_rec(f->cl, &a) == PSRPC_OK);
    REQUIRE(add_client_rec(f->cl, &b) == PSRPC_OK);
    tu_call *c = tu_calls_new(1);
    REQUIRE(tu_call_wait(f->cl, queue_method(), "x", NULL, c, tu_ms(5000)));
    CHECK_EQ_INT(c->status, PSRPC_PERMISSION_DENIED);
    CHECK_EQ_STR(c->code, "permission_denied");
    CHECK_EQ_STR(c->message, "hook says no");
    th_sleep_ms(100);
    CHECK_EQ_INT(atomic_load(&c->count), 1);
    CHECK_EQ_INT(atomic_load(&f->srv->requests), 0); /* nothing was sent */
    CHECK_EQ_INT(atomic_load(&b.before), 0);         /* the chain stopped */
    CHECK_EQ_INT(atomic_load(&a.outcome), 1);
    CHECK_EQ_INT(atomic_load(&b.outcome), 1);
    CHECK_EQ_INT(a.last_attempts, 0);
    CHECK_EQ_INT(a.last_status, PSRPC_PERMISSION_DENIED);

    /* The blocking call returns the hook's error object. */
    psrpc_msg *out = NULL;
    psrpc_error *err = NULL;
    CHECK_EQ_INT(psrpc_client_call_sync_ex(&out, &err, f->cl, queue_method(), "x", 1, NULL),
                 PSRPC_PERMISSION_DENIED);
    REQUIRE(err != NULL);
    CHECK_EQ_STR(err->code, "permission_denied");
    CHECK_EQ_STR(err->message, "hook says no");
    psrpc_error_free(err);

    /* A stream open: on_open gets the error, then on_close, once each. */
    psrpc_method sm = tu_method("Chat", PSRPC_ROUTING_QUEUE, PSRPC_METHOD_STREAM);
    open_res res;
    memset(&res, 0, sizeof res);
    psrpc_stream *st = NULL;
    REQUIRE(psrpc_client_open_stream(&st, f->cl, &sm, NULL, or_open, hk_msg_cb, or_close, &res,
                                     NULL) == PSRPC_OK);
    CHECK(tu_wait_count(&res.closed, 1, tu_ms(3000)));
    th_sleep_ms(50);
    CHECK_EQ_INT(atomic_load(&res.opened), 1);
    CHECK_EQ_INT(atomic_load(&res.closed), 1);
    CHECK_EQ_INT(res.open_status, PSRPC_PERMISSION_DENIED);
    CHECK_EQ_INT(res.close_status, PSRPC_PERMISSION_DENIED);
    psrpc_stream_free(st);
    CHECK_EQ_INT(atomic_load(&a.outcome), 3);
    CHECK_EQ_INT(a.last_kind, PSRPC_CALL_KIND_STREAM);
    free(c);
    fx_free(f);
}

static int reject_if_deny(const psrpc_call_info *info, psrpc_hook_call *call, void *ud) {
    (void)info;
    atomic_fetch_add((atomic_int *)ud, 1);
    if (psrpc_hook_call_metadata_get(call, "deny"))
        return psrpc_hook_call_fail(call, PSRPC_UNAUTHENTICATED, "denied by hook");
    return 0;
}

TEST(server_hook_rejects_request_and_stream) {
    fx *f = fx_new(HS_META);
    REQUIRE(fx_ok(f) && fx_register(f));
    psrpc_method sm = tu_method("Chat", PSRPC_ROUTING_QUEUE, PSRPC_METHOD_STREAM);
    stream_side side;
    memset(&side, 0, sizeof side);
    REQUIRE(psrpc_server_register_stream(f->srv->server, &sm, NULL, 0, ss_handler, NULL, NULL,
                                         &side, NULL) == PSRPC_OK);
    REQUIRE(psrpc_server_wait_ready(f->srv->server, tu_ms(5000)) == PSRPC_OK);
    atomic_int seen;
    atomic_init(&seen, 0);
    psrpc_server_hooks h = PSRPC_SERVER_HOOKS_INIT;
    h.before_handle = reject_if_deny;
    h.user_data = &seen;
    REQUIRE(psrpc_server_add_hooks(f->srv->server, &h) == PSRPC_OK);
    char slog[256] = "";
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    rec so;
    rec_init(&so, "S", slog, &mu);
    REQUIRE(add_server_rec(f->srv->server, &so) == PSRPC_OK);

    psrpc_kv deny[] = {{"deny", "1"}};
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.metadata = deny;
    o.metadata_count = 1;
    tu_call *c = tu_calls_new(2);
    REQUIRE(tu_call_wait(f->cl, queue_method(), "x", &o, &c[0], tu_ms(5000)));
    CHECK_EQ_INT(c[0].status, PSRPC_UNAUTHENTICATED);
    CHECK_EQ_STR(c[0].code, "unauthenticated");
    CHECK_EQ_STR(c[0].message, "denied by hook");
    CHECK_EQ_INT(atomic_load(&f->srv->requests), 0); /* the handler never ran */
    CHECK(WAIT_UNTIL(atomic_load(&so.outcome) == 1, 2000));
    CHECK_EQ_INT(so.last_status, PSRPC_UNAUTHENTICATED);
    /* allowed */
    REQUIRE(tu_call_wait(f->cl, queue_method(), "x", NULL, &c[1], tu_ms(5000)));
    CHECK_EQ_INT(c[1].status, PSRPC_OK);
    CHECK_EQ_INT(atomic_load(&f->srv->requests), 1);

    /* A rejected stream: acknowledged, then closed with the hook's error. */
    open_res r;
    memset(&r, 0, sizeof r);
    psrpc_stream *st = NULL;
    psrpc_call_options so_opts = PSRPC_CALL_OPTIONS_INIT;
    so_opts.metadata = deny;
    so_opts.metadata_count = 1;
    REQUIRE(psrpc_client_open_stream(&st, f->cl, &sm, &so_opts, or_open, hk_msg_cb, or_close, &r,
                                     NULL) == PSRPC_OK);
    CHECK(tu_wait_count(&r.closed, 1, tu_ms(5000)));
    CHECK_EQ_INT(atomic_load(&r.opened), 1);
    CHECK_EQ_INT(r.close_status, PSRPC_UNAUTHENTICATED);
    CHECK_EQ_INT(atomic_load(&side.accepted), 0);
    psrpc_stream_free(st);
    CHECK(WAIT_UNTIL(atomic_load(&so.outcome) == 3, 2000));
    CHECK_EQ_INT(so.last_kind, PSRPC_CALL_KIND_STREAM);
    CHECK_EQ_INT(so.last_status, PSRPC_UNAUTHENTICATED);

    /* An accepted stream: its expiry is readable; its outcome comes at its end. */
    memset(&r, 0, sizeof r);
    int64_t before = tu_now_ns();
    REQUIRE(psrpc_client_open_stream(&st, f->cl, &sm, NULL, or_open, hk_msg_cb, or_close, &r,
                                     NULL) == PSRPC_OK);
    CHECK(tu_wait_count(&r.opened, 1, tu_ms(5000)));
    CHECK_EQ_INT(r.open_status, 0);
    CHECK(WAIT_UNTIL(atomic_load(&side.accepted) == 1, 2000));
    CHECK(side.expiry_ns > before);
    CHECK_EQ_INT(psrpc_stream_expiry_ns(st), 0); /* client side */
    CHECK_EQ_INT(atomic_load(&so.outcome), 3);   /* not yet: the stream is open */
    psrpc_stream_close(st, 0, NULL);
    CHECK(tu_wait_count(&r.closed, 1, tu_ms(5000)));
    CHECK(WAIT_UNTIL(atomic_load(&so.outcome) == 4, 2000));
    CHECK_EQ_INT(so.last_status, 0); /* a clean close is a success */
    psrpc_stream_free(st);
    if (side.held)
        psrpc_stream_free(side.held);
    free(c);
    fx_free(f);
}

static atomic_int outcome_per_call[200];
static void count_outcome(const psrpc_call_info *info, const psrpc_call_outcome *o, void *ud) {
    (void)o;
    (void)ud;
    if (info->call_id < 200)
        atomic_fetch_add(&outcome_per_call[info->call_id], 1);
}

TEST(exactly_one_outcome_per_call) {
    fx *f = fx_new(HS_FAIL_FIRST);
    f->srv->fail_first = 20;
    f->srv->fail_status = PSRPC_NOT_FOUND;
    REQUIRE(fx_ok(f) && fx_register(f));
    for (int i = 0; i < 200; i++)
        atomic_store(&outcome_per_call[i], 0);
    psrpc_client_hooks h = PSRPC_CLIENT_HOOKS_INIT;
    h.on_outcome = count_outcome;
    REQUIRE(psrpc_client_add_hooks(f->cl, &h) == PSRPC_OK);
    /* retries too: not_found is not retried, so still one attempt each */
    psrpc_retry_options ro = PSRPC_RETRY_OPTIONS_INIT;
    ro.max_attempts = 3;
    REQUIRE(psrpc_client_set_retries(f->cl, PSRPC_RETRY_UNARY, &ro) == PSRPC_OK);
    enum { N = 60 };
    tu_call *c = tu_calls_new(N);
    psrpc_call_options shortopt = PSRPC_CALL_OPTIONS_INIT;
    for (int i = 0; i < N; i++) {
        /* every 10th is canceled right away, the rest run */
        REQUIRE(tu_call_async(f->cl, queue_method(), "x", &shortopt, &c[i]) == PSRPC_OK);
        if (i % 10 == 9)
            psrpc_client_cancel(f->cl, c[i].call_id);
    }
    for (int i = 0; i < N; i++)
        CHECK(tu_wait_count(&c[i].count, 1, tu_ms(8000)));
    th_sleep_ms(200);
    int ok = 0, nf = 0, canceled = 0;
    for (int i = 0; i < N; i++) {
        CHECK_EQ_INT(atomic_load(&c[i].count), 1);
        CHECK_EQ_INT(atomic_load(&c[i].bad), 0);
        REQUIRE(c[i].call_id < 200);
        CHECK_EQ_INT(atomic_load(&outcome_per_call[c[i].call_id]), 1);
        ok += c[i].status == PSRPC_OK;
        nf += c[i].status == PSRPC_NOT_FOUND;
        canceled += c[i].status == PSRPC_CANCELED;
    }
    CHECK_EQ_INT(ok + nf + canceled, N);
    CHECK(nf >= 1);
    free(c);
    fx_free(f);
}

/* ------------------------------------------------------------------------ */
/* Retries                                                                   */
/* ------------------------------------------------------------------------ */

static fx *retry_fx(int mode, int fail_first, int status, uint32_t max, int64_t t, int64_t b,
                    rec *r, char *log, pthread_mutex_t *mu) {
    fx *f = fx_new(mode);
    f->srv->fail_first = fail_first;
    f->srv->fail_status = status;
    if (!fx_ok(f) || !fx_register(f))
        return f;
    psrpc_retry_options ro;
    psrpc_retry_options_init(&ro, sizeof ro);
    ro.max_attempts = max;
    ro.timeout_ms = t;
    ro.backoff_ms = b;
    psrpc_client_set_retries(f->cl, PSRPC_RETRY_UNARY | PSRPC_RETRY_STREAM_OPEN, &ro);
    rec_init(r, "R", log, mu);
    add_client_rec(f->cl, r);
    return f;
}

TEST(retry_until_success) {
    char log[256] = "";
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    rec r;
    fx *f = retry_fx(HS_FAIL_FIRST, 2, PSRPC_UNAVAILABLE, 5, 0, 0, &r, log, &mu);
    REQUIRE(fx_ok(f));
    tu_call *c = tu_calls_new(1);
    REQUIRE(tu_call_wait(f->cl, queue_method(), "x", NULL, c, tu_ms(8000)));
    CHECK_EQ_INT(c->status, PSRPC_OK);
    CHECK_EQ_INT(atomic_load(&f->srv->requests), 3);
    CHECK_EQ_INT(r.last_attempts, 3);
    CHECK_EQ_INT(atomic_load(&r.before), 1); /* before_send once per call */
    CHECK_EQ_INT(atomic_load(&r.outcome), 1);
    free(c);
    fx_free(f);
}

TEST(retry_stops_on_non_retryable_code) {
    char log[256] = "";
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    rec r;
    fx *f = retry_fx(HS_FAIL_FIRST, 100, PSRPC_NOT_FOUND, 5, 0, 0, &r, log, &mu);
    REQUIRE(fx_ok(f));
    tu_call *c = tu_calls_new(1);
    REQUIRE(tu_call_wait(f->cl, queue_method(), "x", NULL, c, tu_ms(8000)));
    CHECK_EQ_INT(c->status, PSRPC_NOT_FOUND);
    CHECK_EQ_INT(atomic_load(&f->srv->requests), 1);
    CHECK_EQ_INT(r.last_attempts, 1);
    free(c);
    fx_free(f);
}

TEST(retry_stops_at_max_attempts) {
    char log[256] = "";
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    rec r;
    fx *f = retry_fx(HS_FAIL_FIRST, 100, PSRPC_UNAVAILABLE, 3, 0, 0, &r, log, &mu);
    REQUIRE(fx_ok(f));
    tu_call *c = tu_calls_new(1);
    REQUIRE(tu_call_wait(f->cl, queue_method(), "x", NULL, c, tu_ms(8000)));
    CHECK_EQ_INT(c->status, PSRPC_UNAVAILABLE);
    CHECK_EQ_STR(c->message, "scripted failure");
    th_sleep_ms(100);
    CHECK_EQ_INT(atomic_load(&f->srv->requests), 3);
    CHECK_EQ_INT(r.last_attempts, 3);
    CHECK_EQ_INT(atomic_load(&c->count), 1);
    free(c);
    fx_free(f);
}

TEST(retry_stops_at_callers_deadline) {
    char log[256] = "";
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    rec r;
    /* never answered: every attempt times out; attempts of 100, 150, 200 ms
     * (timeout + n*backoff), unlimited attempts: the deadline ends it */
    fx *f = retry_fx(HS_HOLD, 0, 0, 0, 100, 50, &r, log, &mu);
    REQUIRE(fx_ok(f));
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.deadline_ns = tu_now_ns() + 600LL * 1000000;
    tu_call *c = tu_calls_new(1);
    long long t0 = th_now_ms();
    REQUIRE(tu_call_wait(f->cl, queue_method(), "x", &o, c, tu_ms(8000)));
    long long took = c->at_ms - t0;
    CHECK_EQ_INT(c->status, PSRPC_CANCELED); /* as Go: ErrRequestCanceled at ctx.Done */
    CHECK_EQ_STR(c->message, "request canceled");
    CHECK(took >= 550 && took < 600 + tu_ms(400));
    /* 100 + 150 + 200 = 450 ms, then the 4th is cut by the deadline (a
     * loaded machine may fit one attempt fewer) */
    CHECK(r.last_attempts >= 3 && r.last_attempts <= 4);
    CHECK_EQ_INT(atomic_load(&f->srv->requests), (int)r.last_attempts);
    free(c);
    fx_free(f);
}

TEST(retry_callers_timeout_wins) {
    char log[256] = "";
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    rec r;
    fx *f = retry_fx(HS_HOLD, 0, 0, 3, 50, 0, &r, log, &mu);
    REQUIRE(fx_ok(f));
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.timeout_ms = 200; /* each attempt 200 ms, not the policy's 50 */
    tu_call *c = tu_calls_new(1);
    long long t0 = th_now_ms();
    REQUIRE(tu_call_wait(f->cl, queue_method(), "x", &o, c, tu_ms(8000)));
    long long took = c->at_ms - t0;
    CHECK_EQ_INT(c->status, PSRPC_DEADLINE_EXCEEDED);
    CHECK_EQ_INT(r.last_attempts, 3);
    CHECK(took >= 580 && took < 600 + tu_ms(500));
    free(c);
    fx_free(f);
}

TEST(retry_cancel_stops_attempts) {
    char log[256] = "";
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    rec r;
    fx *f = retry_fx(HS_HOLD, 0, 0, 0, 100, 0, &r, log, &mu);
    REQUIRE(fx_ok(f));
    tu_call *c = tu_calls_new(1);
    REQUIRE(tu_call_async(f->cl, queue_method(), "x", NULL, c) == PSRPC_OK);
    CHECK(WAIT_UNTIL(atomic_load(&f->srv->requests) >= 2, 3000));
    psrpc_client_cancel(f->cl, c->call_id);
    CHECK(tu_wait_count(&c->count, 1, tu_ms(3000)));
    CHECK_EQ_INT(c->status, PSRPC_CANCELED);
    int n = atomic_load(&f->srv->requests);
    th_sleep_ms(300);
    CHECK_EQ_INT(atomic_load(&f->srv->requests), n); /* no attempt after the cancel */
    CHECK_EQ_INT(atomic_load(&c->count), 1);
    free(c);
    fx_free(f);
}

static int params_two_waits(const psrpc_error *e, uint32_t attempt, int64_t *timeout_ms,
                            int64_t *wait_ms, void *ud) {
    (void)e;
    atomic_fetch_add((atomic_int *)ud, 1);
    *timeout_ms = 0;
    *wait_ms = 100;
    return attempt < 3;
}

TEST(retry_params_callback_waits) {
    fx *f = fx_new(HS_FAIL_FIRST);
    f->srv->fail_first = 100;
    f->srv->fail_status = PSRPC_INTERNAL; /* not recoverable by default: the callback decides */
    REQUIRE(fx_ok(f) && fx_register(f));
    atomic_int asked;
    atomic_init(&asked, 0);
    psrpc_retry_options ro = PSRPC_RETRY_OPTIONS_INIT;
    ro.retry_params = params_two_waits;
    ro.user_data = &asked;
    REQUIRE(psrpc_client_set_retries(f->cl, PSRPC_RETRY_UNARY, &ro) == PSRPC_OK);
    tu_call *c = tu_calls_new(1);
    long long t0 = th_now_ms();
    REQUIRE(tu_call_wait(f->cl, queue_method(), "x", NULL, c, tu_ms(8000)));
    CHECK_EQ_INT(c->status, PSRPC_INTERNAL);
    CHECK_EQ_INT(atomic_load(&f->srv->requests), 3);
    CHECK_EQ_INT(atomic_load(&asked), 3);
    CHECK(c->at_ms - t0 >= 200); /* two waits of 100 ms */
    /* cleared: one attempt again */
    REQUIRE(psrpc_client_set_retries(f->cl, PSRPC_RETRY_UNARY, NULL) == PSRPC_OK);
    tu_call *d = tu_calls_new(1);
    REQUIRE(tu_call_wait(f->cl, queue_method(), "x", NULL, d, tu_ms(8000)));
    CHECK_EQ_INT(atomic_load(&f->srv->requests), 4);
    free(c);
    free(d);
    fx_free(f);
}

typedef struct late_reg {
    psrpc_server *server;
    stream_side *side;
    int delay_ms;
} late_reg;

static void *register_later(void *arg) {
    late_reg *l = (late_reg *)arg;
    th_sleep_ms(l->delay_ms);
    psrpc_method sm = tu_method("Chat", PSRPC_ROUTING_QUEUE, PSRPC_METHOD_STREAM);
    psrpc_server_register_stream(l->server, &sm, NULL, 0, ss_handler, NULL, NULL, l->side, NULL);
    return NULL;
}

TEST(retry_stream_open) {
    char log[256] = "";
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    rec r;
    fx *f = retry_fx(HS_META, 0, 0, 0, 300, 0, &r, log, &mu);
    REQUIRE(fx_ok(f));
    stream_side side;
    memset(&side, 0, sizeof side);
    late_reg l = {f->srv->server, &side, 500};
    pthread_t t;
    pthread_create(&t, NULL, register_later, &l);
    open_res res;
    memset(&res, 0, sizeof res);
    psrpc_method sm = tu_method("Chat", PSRPC_ROUTING_QUEUE, PSRPC_METHOD_STREAM);
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.deadline_ns = tu_now_ns() + 5000LL * 1000000;
    psrpc_stream *st = NULL;
    REQUIRE(psrpc_client_open_stream(&st, f->cl, &sm, &o, or_open, hk_msg_cb, or_close, &res,
                                     NULL) == PSRPC_OK);
    CHECK(tu_wait_count(&res.opened, 1, tu_ms(6000)));
    pthread_join(t, NULL);
    CHECK_EQ_INT(res.open_status, 0);
    CHECK(r.last_attempts >= 2);
    CHECK_EQ_INT(r.last_kind, PSRPC_CALL_KIND_STREAM);
    CHECK(WAIT_UNTIL(atomic_load(&side.accepted) == 1, 2000));
    psrpc_stream_free(st);
    CHECK(tu_wait_count(&res.closed, 1, tu_ms(3000)));
    if (side.held)
        psrpc_stream_free(side.held);
    fx_free(f);
}

/* ------------------------------------------------------------------------ */
/* Logs                                                                      */
/* ------------------------------------------------------------------------ */

typedef struct logrec {
    pthread_mutex_t mu;
    int lines[5];   /* per level */
    int drop_warn;  /* "drop" lines at WARN */
    int drop_debug; /* "drop" lines at DEBUG */
    int connected;  /* "bus" INFO lines with "connected" */
    char last[512];
} logrec;

static void log_cb(int level, const char *component, const char *message, void *ud) {
    logrec *l = (logrec *)ud;
    pthread_mutex_lock(&l->mu);
    if (level >= 1 && level <= 4)
        l->lines[level]++;
    if (!strcmp(component, "drop") && level == PSRPC_LOG_WARN)
        l->drop_warn++;
    if (!strcmp(component, "drop") && level == PSRPC_LOG_DEBUG)
        l->drop_debug++;
    if (!strcmp(component, "bus") && level == PSRPC_LOG_INFO && strstr(message, "connected"))
        l->connected++;
    snprintf(l->last, sizeof l->last, "%s: %s", component, message);
    pthread_mutex_unlock(&l->mu);
}

static int refuse_all(psrpc_stream *st, const psrpc_msg *msg, void *ud) {
    (void)st;
    (void)msg;
    atomic_fetch_add((atomic_int *)ud, 1);
    return 1; /* slow consumer: not acknowledged, counted, logged */
}

static void refusing_handler(psrpc_stream *st, void *ud) {
    stream_side *s = (stream_side *)ud;
    s->held = st;
    psrpc_stream_set_callbacks(st, refuse_all, ss_close, &s->accepted, NULL);
}

TEST(log_once_per_event) {
    logrec *l = (logrec *)calloc(1, sizeof *l);
    pthread_mutex_init(&l->mu, NULL);
    REQUIRE(psrpc_set_log_callback(log_cb, PSRPC_LOG_INFO, l) == PSRPC_OK);
    fx *f = fx_new(HS_META); /* opening the buses logs "connected" once each */
    REQUIRE(fx_ok(f) && fx_register(f));
    REQUIRE(psrpc_bus_wait_ready(f->cbus, tu_ms(5000)) == PSRPC_OK);
    REQUIRE(psrpc_bus_wait_ready(f->sbus, tu_ms(5000)) == PSRPC_OK);
    th_sleep_ms(100);
    pthread_mutex_lock(&l->mu);
    int connected = l->connected;
    pthread_mutex_unlock(&l->mu);
    /* one per broker bus (local:// has no connection to log) */
    if (!tu_is_local())
        CHECK_EQ_INT(connected, 2);

    psrpc_method sm = tu_method("Chat", PSRPC_ROUTING_QUEUE, PSRPC_METHOD_STREAM);
    stream_side side;
    memset(&side, 0, sizeof side);
    REQUIRE(psrpc_server_register_stream(f->srv->server, &sm, NULL, 0, refusing_handler, NULL, NULL,
                                         &side, NULL) == PSRPC_OK);
    REQUIRE(psrpc_server_wait_ready(f->srv->server, tu_ms(5000)) == PSRPC_OK);
    open_res res;
    memset(&res, 0, sizeof res);
    psrpc_stream *st = NULL;
    REQUIRE(psrpc_client_open_stream(&st, f->cl, &sm, NULL, or_open, hk_msg_cb, or_close, &res,
                                     NULL) == PSRPC_OK);
    REQUIRE(tu_wait_count(&res.opened, 1, tu_ms(5000)));
    REQUIRE(res.open_status == 0);
    /* 10 refused messages: 10 drops, one WARN line at INFO, none per message */
    tu_done sends[10];
    memset(sends, 0, sizeof sends);
    for (int i = 0; i < 10; i++)
        REQUIRE(psrpc_stream_send(st, "m", 1, 300, tu_done_cb, &sends[i]) == PSRPC_OK);
    for (int i = 0; i < 10; i++)
        CHECK(tu_wait_count(&sends[i].count, 1, tu_ms(3000)));
    CHECK_EQ_INT(atomic_load(&side.accepted), 10);
    pthread_mutex_lock(&l->mu);
    CHECK_EQ_INT(l->drop_warn, 1);
    CHECK_EQ_INT(l->drop_debug, 0); /* above max_level: not even formatted */
    pthread_mutex_unlock(&l->mu);
    /* at DEBUG each drop is a line too */
    REQUIRE(psrpc_set_log_callback(log_cb, PSRPC_LOG_DEBUG, l) == PSRPC_OK);
    tu_done more[3];
    memset(more, 0, sizeof more);
    for (int i = 0; i < 3; i++)
        REQUIRE(psrpc_stream_send(st, "m", 1, 300, tu_done_cb, &more[i]) == PSRPC_OK);
    for (int i = 0; i < 3; i++)
        CHECK(tu_wait_count(&more[i].count, 1, tu_ms(3000)));
    pthread_mutex_lock(&l->mu);
    CHECK_EQ_INT(l->drop_warn, 1);
    CHECK_EQ_INT(l->drop_debug, 3);
    pthread_mutex_unlock(&l->mu);
    REQUIRE(psrpc_set_log_callback(NULL, 0, NULL) == PSRPC_OK);
    psrpc_stream_free(st);
    CHECK(tu_wait_count(&res.closed, 1, tu_ms(3000)));
    if (side.held)
        psrpc_stream_free(side.held);
    fx_free(f);
    pthread_mutex_destroy(&l->mu);
    free(l);
}

/* ------------------------------------------------------------------------ */
/* Metrics                                                                   */
/* ------------------------------------------------------------------------ */

typedef struct mread {
    int rows;
    uint64_t client_calls, client_errors, server_calls, bucket_sum, attempts;
    uint64_t not_found;
} mread;

static void m_row(const psrpc_method_metrics *r, void *ud) {
    mread *m = (mread *)ud;
    m->rows++;
    uint64_t sum = 0;
    for (int i = 0; i < PSRPC_METRICS_BUCKETS; i++)
        sum += r->buckets[i];
    if (sum != r->calls)
        m->bucket_sum = (uint64_t)-1;
    if (r->role == PSRPC_ROLE_CLIENT) {
        m->client_calls += r->calls;
        m->client_errors += r->errors;
        m->attempts += r->attempts;
    } else {
        m->server_calls += r->calls;
    }
}

static void m_code(const psrpc_method_metrics *r, const char *code, uint64_t n, void *ud) {
    mread *m = (mread *)ud;
    if (r->role == PSRPC_ROLE_CLIENT && !strcmp(code, "not_found"))
        m->not_found += n;
}

TEST(metrics_counters_and_histogram) {
    fx *f = fx_new(HS_FAIL_FIRST);
    f->srv->fail_first = 2;
    f->srv->fail_status = PSRPC_NOT_FOUND;
    REQUIRE(fx_ok(f) && fx_register(f));
    psrpc_metrics *m = NULL;
    REQUIRE(psrpc_metrics_new(&m) == PSRPC_OK);
    REQUIRE(psrpc_metrics_attach_client(m, f->cl) == PSRPC_OK);
    REQUIRE(psrpc_metrics_attach_server(m, f->srv->server) == PSRPC_OK);
    for (int i = 0; i < 5; i++) {
        tu_call *c = tu_calls_new(1);
        REQUIRE(tu_call_wait(f->cl, queue_method(), "x", NULL, c, tu_ms(5000)));
        free(c);
    }
    th_sleep_ms(100);
    mread r;
    memset(&r, 0, sizeof r);
    REQUIRE(psrpc_metrics_read(m, m_row, m_code, &r) == PSRPC_OK);
    CHECK_EQ_INT(r.rows, 2);
    CHECK_EQ_INT(r.client_calls, 5);
    CHECK_EQ_INT(r.client_errors, 2);
    CHECK_EQ_INT(r.attempts, 5);
    CHECK_EQ_INT(r.not_found, 2);
    CHECK_EQ_INT(r.server_calls, 5);
    CHECK(r.bucket_sum != (uint64_t)-1);
    CHECK(psrpc_metrics_bucket_bound_ms(0) == 5.0);
    CHECK(psrpc_metrics_bucket_bound_ms(PSRPC_METRICS_BUCKETS - 2) == 10000.0);
    CHECK(psrpc_metrics_bucket_bound_ms(PSRPC_METRICS_BUCKETS - 1) < 0);
    psrpc_metrics_free(m); /* the client and server keep their references */
    tu_call *c = tu_calls_new(1);
    REQUIRE(tu_call_wait(f->cl, queue_method(), "x", NULL, c, tu_ms(5000)));
    CHECK_EQ_INT(c->status, PSRPC_OK);
    free(c);
    fx_free(f);
}

/* ------------------------------------------------------------------------ */
/* Trace context                                                             */
/* ------------------------------------------------------------------------ */

TEST(trace_child_and_forward) {
    const char *parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    char out[PSRPC_TRACEPARENT_SIZE];
    REQUIRE(psrpc_trace_child(out, parent) == PSRPC_OK);
    CHECK_EQ_INT(strlen(out), 55);
    CHECK(strncmp(out, parent, 36) == 0);           /* version and trace id */
    CHECK(strncmp(out + 36, parent + 36, 16) != 0); /* a new span id */
    CHECK(strcmp(out + 52, "-01") == 0);            /* flags kept */
    char out2[PSRPC_TRACEPARENT_SIZE];
    REQUIRE(psrpc_trace_child(out2, out) == PSRPC_OK);
    CHECK(strncmp(out2 + 36, out + 36, 16) != 0);
    const char *bad[] = {
        "",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK_EQ_INT(psrpc_trace_child(out, bad[i]), PSRPC_INVALID_ARGUMENT);
        CHECK_EQ_STR(out, "");
    }
    /* a future version may carry more fields */
    CHECK_EQ_INT(
        psrpc_trace_child(out, "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz"),
        PSRPC_OK);
    CHECK(strncmp(out, "00-4bf92f", 9) == 0);
    psrpc_kv kv[2];
    char buf[PSRPC_TRACEPARENT_SIZE];
    CHECK_EQ_INT(psrpc_trace_forward(kv, buf, parent, "a=1"), 2);
    CHECK_EQ_STR(kv[0].key, "traceparent");
    CHECK(kv[0].value == buf);
    CHECK_EQ_STR(kv[1].key, "tracestate");
    CHECK_EQ_STR(kv[1].value, "a=1");
    CHECK_EQ_INT(psrpc_trace_forward(kv, buf, parent, ""), 1);
    CHECK_EQ_INT(psrpc_trace_forward(kv, buf, parent, NULL), 1);
    CHECK_EQ_INT(psrpc_trace_forward(kv, buf, "garbage", "a=1"), 0);
    CHECK_EQ_INT(psrpc_trace_forward(kv, buf, NULL, NULL), 0);
}

/* ------------------------------------------------------------------------ */
/* psrpc_request_reject in the affinity stage                                */
/* ------------------------------------------------------------------------ */

static void reject_affinity(psrpc_request *req, void *ud) {
    atomic_fetch_add((atomic_int *)ud, 1);
    psrpc_error_detail d = {"type.googleapis.com/google.protobuf.StringValue",
                            (const uint8_t *)"\x0a\x03"
                                             "bad",
                            5};
    psrpc_request_reject(req, "malformed_request", "cannot decode", &d, 1);
}

static void never_handler(psrpc_request *req, void *ud) {
    atomic_fetch_add((atomic_int *)ud, 100);
    psrpc_request_respond(req, "no", 2);
}

TEST(reject_in_affinity_stage) {
    fx *f = fx_new(HS_META);
    REQUIRE(fx_ok(f));
    atomic_int calls;
    atomic_init(&calls, 0);
    psrpc_method am = tu_method("Pick", PSRPC_ROUTING_AFFINITY, 0);
    REQUIRE(psrpc_server_register(f->srv->server, &am, NULL, 0, never_handler, reject_affinity,
                                  NULL, &calls, NULL) == PSRPC_OK);
    REQUIRE(psrpc_server_wait_ready(f->srv->server, tu_ms(5000)) == PSRPC_OK);
    psrpc_selection_options sel = PSRPC_SELECTION_OPTIONS_INIT;
    sel.affinity_timeout_ms = 300;
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.selection = &sel;
    tu_call *c = tu_calls_new(1);
    REQUIRE(tu_call_wait(f->cl, &am, "x", &o, c, tu_ms(5000)));
    CHECK_EQ_INT(c->status, PSRPC_MALFORMED_REQUEST);
    CHECK_EQ_STR(c->code, "malformed_request");
    CHECK_EQ_STR(c->message, "cannot decode");
    CHECK_EQ_INT(c->details_count, 1);
    CHECK_EQ_STR(c->detail_url[0], "type.googleapis.com/google.protobuf.StringValue");
    CHECK_EQ_INT(atomic_load(&calls), 1); /* never claimed, never handled */
    free(c);
    fx_free(f);
}

/* ------------------------------------------------------------------------ */
/* Bad arguments (test_local_abi.c counts these functions as covered here)   */
/* ------------------------------------------------------------------------ */

TEST(issue16_bad_arguments) {
    psrpc_client_hooks ch;
    CHECK_EQ_INT(psrpc_client_hooks_init(NULL, sizeof ch), PSRPC_INVALID_ARGUMENT);
    CHECK(psrpc_client_hooks_init(&ch, 4) != PSRPC_OK);
    CHECK_EQ_INT(psrpc_client_hooks_init(&ch, PSRPC_CLIENT_HOOKS_SIZE_V1), PSRPC_OK);
    psrpc_server_hooks sh;
    CHECK_EQ_INT(psrpc_server_hooks_init(&sh, sizeof sh), PSRPC_OK);
    CHECK_EQ_INT(psrpc_server_hooks_init(NULL, sizeof sh), PSRPC_INVALID_ARGUMENT);
    psrpc_retry_options ro;
    CHECK_EQ_INT(psrpc_retry_options_init(&ro, sizeof ro), PSRPC_OK);
    CHECK_EQ_INT(psrpc_retry_options_init(NULL, sizeof ro), PSRPC_INVALID_ARGUMENT);
    CHECK_EQ_INT(psrpc_client_add_hooks(NULL, &ch), PSRPC_INVALID_ARGUMENT);
    CHECK_EQ_INT(psrpc_server_add_hooks(NULL, &sh), PSRPC_INVALID_ARGUMENT);
    CHECK_EQ_INT(psrpc_client_set_retries(NULL, PSRPC_RETRY_UNARY, &ro), PSRPC_INVALID_ARGUMENT);
    CHECK_EQ_INT(psrpc_hook_call_metadata_count(NULL), 0);
    CHECK_EQ_INT(psrpc_hook_call_metadata_at(NULL, 0, NULL, NULL), PSRPC_INVALID_ARGUMENT);
    CHECK(psrpc_hook_call_metadata_get(NULL, "k") == NULL);
    CHECK_EQ_INT(psrpc_hook_call_metadata_set(NULL, "k", "v"), PSRPC_INVALID_ARGUMENT);
    CHECK_EQ_INT(psrpc_hook_call_fail(NULL, PSRPC_INTERNAL, "x"), PSRPC_INVALID_ARGUMENT);
    CHECK_EQ_INT(psrpc_set_log_callback(log_cb, 0, NULL), PSRPC_INVALID_ARGUMENT);
    CHECK_EQ_INT(psrpc_set_log_callback(log_cb, 9, NULL), PSRPC_INVALID_ARGUMENT);
    CHECK_EQ_INT(psrpc_set_log_callback(NULL, 0, NULL), PSRPC_OK);
    CHECK_EQ_INT(psrpc_metrics_new(NULL), PSRPC_INVALID_ARGUMENT);
    CHECK_EQ_INT(psrpc_metrics_attach_client(NULL, NULL), PSRPC_INVALID_ARGUMENT);
    CHECK_EQ_INT(psrpc_metrics_attach_server(NULL, NULL), PSRPC_INVALID_ARGUMENT);
    CHECK_EQ_INT(psrpc_metrics_read(NULL, m_row, NULL, NULL), PSRPC_INVALID_ARGUMENT);
    psrpc_metrics_free(NULL);
    CHECK(psrpc_metrics_bucket_bound_ms(1000) < 0);
    CHECK_EQ_INT(psrpc_trace_child(NULL, "x"), PSRPC_INVALID_ARGUMENT);
    char tp[PSRPC_TRACEPARENT_SIZE];
    CHECK_EQ_INT(psrpc_trace_child(tp, NULL), PSRPC_INVALID_ARGUMENT);
    CHECK_EQ_INT(psrpc_trace_forward(NULL, tp, "x", NULL), 0);
    CHECK_EQ_INT(psrpc_request_reject(NULL, "x", "y", NULL, 0), PSRPC_INVALID_ARGUMENT);
    CHECK_EQ_INT(psrpc_stream_expiry_ns(NULL), 0);

    /* on real handles */
    psrpc_bus *bus = tu_open_bus_opts(tu_bus_url(), NULL);
    REQUIRE(bus);
    char svc[64];
    tu_service(svc, sizeof svc);
    psrpc_client *cl = tu_client(bus, svc, 0, 0);
    REQUIRE(cl);
    psrpc_server *srv = NULL;
    REQUIRE(psrpc_server_create(&srv, bus, svc, NULL) == PSRPC_OK);
    CHECK_EQ_INT(psrpc_client_add_hooks(cl, NULL), PSRPC_INVALID_ARGUMENT);
    psrpc_client_hooks_init(&ch, sizeof ch);
    CHECK_EQ_INT(psrpc_client_add_hooks(cl, &ch), PSRPC_INVALID_ARGUMENT); /* both NULL */
    CHECK_EQ_INT(psrpc_server_add_hooks(srv, &sh), PSRPC_INVALID_ARGUMENT);
    CHECK_EQ_INT(psrpc_client_add_hooks((psrpc_client *)srv, &ch), PSRPC_INVALID_ARGUMENT);
    CHECK_EQ_INT(psrpc_client_set_retries(cl, 0, &ro), PSRPC_INVALID_ARGUMENT);
    CHECK_EQ_INT(psrpc_client_set_retries(cl, 0x10, &ro), PSRPC_INVALID_ARGUMENT);
    ro.timeout_ms = -1;
    CHECK_EQ_INT(psrpc_client_set_retries(cl, PSRPC_RETRY_UNARY, &ro), PSRPC_INVALID_ARGUMENT);
    ro.timeout_ms = INT64_MAX; /* clamped, accepted */
    CHECK_EQ_INT(psrpc_client_set_retries(cl, PSRPC_RETRY_UNARY, &ro), PSRPC_OK);
    psrpc_metrics *m = NULL;
    REQUIRE(psrpc_metrics_new(&m) == PSRPC_OK);
    CHECK_EQ_INT(psrpc_metrics_attach_client(m, NULL), PSRPC_INVALID_ARGUMENT);
    CHECK_EQ_INT(psrpc_metrics_attach_server(m, NULL), PSRPC_INVALID_ARGUMENT);
    CHECK_EQ_INT(psrpc_metrics_read(m, NULL, NULL, NULL), PSRPC_INVALID_ARGUMENT);
    psrpc_metrics_free(m);
    psrpc_server_free(srv);
    psrpc_client_free(cl);
    psrpc_bus_free(bus);
}

TEST_MAIN()
