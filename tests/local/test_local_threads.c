/* Concurrency (test plan H1, H5, G3): calls from many threads at once,
 * blocking calls from a loop thread, cancel racing responses, close racing
 * calls, psrpc_msg retain/release across threads, per-thread last error. */
#include "util.h"

static psrpc_method echo(void) { return tu_method("Echo", PSRPC_ROUTING_QUEUE, 0); }

/* A light completion record for bulk calls. */
typedef struct mini {
    atomic_int count;
    atomic_int ok;
    atomic_int status;
    char expect[24];
} mini;

static void mini_cb(uint64_t id, const psrpc_msg *resp, const psrpc_error *err,
                    const char *server_id, void *ud) {
    (void)id;
    (void)server_id;
    mini *m = (mini *)ud;
    tu_note_cb_thread();
    atomic_store(&m->status, err ? err->status : 0);
    if (!err && resp && psrpc_msg_size(resp) == strlen(m->expect) &&
        memcmp(psrpc_msg_data(resp), m->expect, psrpc_msg_size(resp)) == 0)
        atomic_store(&m->ok, 1);
    atomic_fetch_add(&m->count, 1);
}

static int minis_done(mini *r, int n) {
    int d = 0;
    for (int i = 0; i < n; i++)
        d += atomic_load(&r[i].count) > 0;
    return d;
}

typedef struct tfx {
    psrpc_bus *bus[3]; /* two server buses, one client bus */
    tu_srv *s[2];
    psrpc_client *cl;
    char service[64];
} tfx;

static tfx *tfx_new(int64_t queue_capacity) {
    tfx *f = (tfx *)calloc(1, sizeof *f);
    tu_service(f->service, sizeof f->service);
    psrpc_bus_options bo = PSRPC_BUS_OPTIONS_INIT;
    bo.queue_capacity = queue_capacity;
    if (open_bus_group_opts(f->bus, 3, &bo) != 0)
        return f;
    psrpc_method m = echo();
    for (int i = 0; i < 2; i++) {
        f->s[i] = tu_srv_new(f->bus[i], f->service, NULL, TU_ECHO);
        if (!f->s[i]->server || tu_srv_register(f->s[i], &m, NULL, 0) != PSRPC_OK)
            return f;
    }
    /* generous timeouts: these are load tests, and sanitizers slow them */
    f->cl = tu_client(f->bus[2], f->service, tu_ms(20000), tu_ms(5000));
    return f;
}

static bool tfx_ok(tfx *f) { return f->cl && f->s[1] && f->s[1]->server; }

static void tfx_free(tfx *f) {
    psrpc_client_free(f->cl);
    for (int i = 0; i < 2; i++)
        if (f->s[i])
            psrpc_server_free(f->s[i]->server);
    for (int i = 0; i < 3; i++)
        psrpc_bus_free(f->bus[i]);
    for (int i = 0; i < 2; i++)
        tu_srv_destroy(f->s[i]);
    free(f);
}

/* ------------------------------------------------------------------------ */

enum { NT = 8, PER = 500, NSYNC_T = 2, PER_SYNC = 50 };

typedef struct thr_arg {
    tfx *f;
    mini *recs;
    int idx;
    atomic_int *start;
    int rejected;
    int sync_ok;
} thr_arg;

static void *async_thread(void *a) {
    thr_arg *t = (thr_arg *)a;
    psrpc_method m = echo();
    while (!atomic_load(t->start))
        ;
    for (int i = 0; i < PER; i++) {
        mini *r = &t->recs[t->idx * PER + i];
        snprintf(r->expect, sizeof r->expect, "t%d-%d", t->idx, i);
        if (psrpc_client_call(NULL, t->f->cl, &m, r->expect, strlen(r->expect), NULL, mini_cb, r) !=
            PSRPC_OK)
            t->rejected++;
    }
    return NULL;
}

static void *sync_thread(void *a) {
    thr_arg *t = (thr_arg *)a;
    psrpc_method m = echo();
    while (!atomic_load(t->start))
        ;
    for (int i = 0; i < PER_SYNC; i++) {
        char p[32];
        snprintf(p, sizeof p, "s%d-%d", t->idx, i);
        psrpc_msg *out = NULL;
        int rc = psrpc_client_call_sync(&out, t->f->cl, &m, p, strlen(p), NULL);
        if (rc == PSRPC_OK && out && psrpc_msg_size(out) == strlen(p) &&
            memcmp(psrpc_msg_data(out), p, strlen(p)) == 0)
            t->sync_ok++;
        else
            fprintf(stderr, "  sync call %s: %d %s\n", p, rc, psrpc_last_error());
        psrpc_msg_release(out);
    }
    return NULL;
}

/* 8 threads x 500 async calls plus 2 threads of blocking calls, 2 servers:
 * every call completes once, with its own payload. */
TEST(threads_many_callers) {
    tfx *f = tfx_new(20000);
    REQUIRE(tfx_ok(f));
    mini *recs = (mini *)calloc(NT * PER, sizeof *recs);
    atomic_int *start = (atomic_int *)calloc(1, sizeof *start);
    pthread_t th[NT + NSYNC_T];
    thr_arg args[NT + NSYNC_T];
    for (int i = 0; i < NT + NSYNC_T; i++) {
        args[i] = (thr_arg){f, recs, i, start, 0, 0};
        pthread_create(&th[i], NULL, i < NT ? async_thread : sync_thread, &args[i]);
    }
    atomic_store(start, 1);
    for (int i = 0; i < NT + NSYNC_T; i++)
        pthread_join(th[i], NULL);
    int rejected = 0, sync_ok = 0;
    for (int i = 0; i < NT + NSYNC_T; i++) {
        rejected += args[i].rejected;
        sync_ok += args[i].sync_ok;
    }
    CHECK_EQ_INT(rejected, 0);
    CHECK_EQ_INT(sync_ok, NSYNC_T * PER_SYNC);
    int n = NT * PER;
    CHECK(WAIT_UNTIL(minis_done(recs, n) == n, 30000));
    th_sleep_ms(100);
    int once = 0, ok = 0;
    for (int i = 0; i < n; i++) {
        once += atomic_load(&recs[i].count) == 1;
        ok += atomic_load(&recs[i].ok);
    }
    CHECK_EQ_INT(once, n);
    CHECK_EQ_INT(ok, n);
    if (ok != n) {
        int by[128] = {0};
        for (int i = 0; i < n; i++)
            if (!atomic_load(&recs[i].ok))
                by[-atomic_load(&recs[i].status) & 127]++;
        for (int k = 0; k < 128; k++)
            if (by[k])
                fprintf(stderr, "  %d calls failed with %s\n", by[k], psrpc_status_name(-k));
    }
    int handled = atomic_load(&f->s[0]->handled) + atomic_load(&f->s[1]->handled);
    CHECK_EQ_INT(handled, n + NSYNC_T * PER_SYNC);
    tfx_free(f);
    once = 0;
    for (int i = 0; i < n; i++)
        once += atomic_load(&recs[i].count) == 1;
    CHECK_EQ_INT(once, n);
    free(start);
    free(recs);
    TU_CHECK_THREADS();
}

/* ------------------------------------------------------------------------ */

/* Blocking calls on a loop thread fail at once with PSRPC_WOULD_DEADLOCK and
 * a message saying so; the asynchronous form from the same callback works. */
typedef struct dl {
    tfx *f;
    psrpc_client *other_cl; /* a client on another bus */
    psrpc_sub *sub;
    int sync_rc, sync_other_rc, wait_rc, sub_wait_rc, bus_wait_rc, async_rc;
    long long sync_ms;
    char msg[256];
    bool out_null;
    mini nested;
    atomic_int ran;
} dl;

static void deadlock_hook(tu_call *c, void *arg) {
    (void)c;
    dl *d = (dl *)arg;
    psrpc_method m = echo();
    psrpc_msg *out = (psrpc_msg *)0x1;
    long long t0 = th_now_ms();
    d->sync_rc = psrpc_client_call_sync(&out, d->f->cl, &m, "x", 1, NULL);
    d->sync_ms = th_now_ms() - t0;
    snprintf(d->msg, sizeof d->msg, "%s", psrpc_last_error());
    d->out_null = out == NULL;
    out = NULL;
    d->sync_other_rc = psrpc_client_call_sync(&out, d->other_cl, &m, "x", 1, NULL);
    d->wait_rc = psrpc_server_wait_ready(d->f->s[0]->server, 1000);
    d->sub_wait_rc = psrpc_sub_wait_ready(d->sub, 1000);
    d->bus_wait_rc = psrpc_bus_wait_ready(d->f->bus[0], 1000);
    snprintf(d->nested.expect, sizeof d->nested.expect, "nested");
    d->async_rc = psrpc_client_call(NULL, d->f->cl, &m, "nested", 6, NULL, mini_cb, &d->nested);
    atomic_fetch_add(&d->ran, 1);
}

static void noop_msg(psrpc_sub *s, const psrpc_msg *m, void *u) {
    (void)s;
    (void)m;
    (void)u;
}
static void noop_release(void *u) { (void)u; }

TEST(sync_call_on_loop_thread_would_deadlock) {
    tfx *f = tfx_new(0);
    REQUIRE(tfx_ok(f));
    dl *d = (dl *)calloc(1, sizeof *d);
    d->f = f;
    psrpc_bus *ob = tu_open_bus_opts(tu_bus_url(), NULL);
    REQUIRE(ob);
    d->other_cl = tu_client(ob, f->service, 0, 0);
    REQUIRE(d->other_cl);
    psrpc_method sm = tu_method("Updates", PSRPC_ROUTING_MULTI, PSRPC_METHOD_SUBSCRIPTION);
    sm.output_type = "test.Update";
    REQUIRE(psrpc_client_subscribe(&d->sub, f->cl, &sm, NULL, 0, noop_msg, NULL, NULL,
                                   noop_release) == PSRPC_OK);
    tu_call *c = tu_calls_new(1);
    c->hook = deadlock_hook;
    c->hook_arg = d;
    psrpc_method m = echo();
    REQUIRE(tu_call_wait(f->cl, &m, "outer", NULL, c, 5000));
    CHECK_EQ_INT(atomic_load(&d->ran), 1);
    CHECK_EQ_INT(d->sync_rc, PSRPC_WOULD_DEADLOCK);
    CHECK(d->sync_ms < 100);
    CHECK(tu_contains_ci(d->msg, "deadlock"));
    CHECK(d->out_null);
    CHECK_EQ_INT(d->sync_other_rc, PSRPC_WOULD_DEADLOCK);
    CHECK_EQ_INT(d->wait_rc, PSRPC_WOULD_DEADLOCK);
    CHECK_EQ_INT(d->sub_wait_rc, PSRPC_WOULD_DEADLOCK);
    CHECK_EQ_INT(d->bus_wait_rc, PSRPC_WOULD_DEADLOCK);
    CHECK_EQ_INT(d->async_rc, PSRPC_OK);
    CHECK(tu_wait_count(&d->nested.count, 1, 5000));
    CHECK_EQ_INT(atomic_load(&d->nested.ok), 1);
    /* also from a handler (the server's loop thread) */
    th_sleep_ms(50);
    psrpc_sub_free(d->sub);
    psrpc_client_free(d->other_cl);
    psrpc_bus_free(ob);
    tfx_free(f);
    CHECK_EQ_INT(atomic_load(&d->nested.count), 1);
    CHECK_EQ_INT(atomic_load(&c->count), 1);
    free(c);
    free(d);
}

/* A blocking call inside a request handler also refuses. */
typedef struct hdl {
    psrpc_client *cl;
    int rc;
    char msg[256];
    atomic_int ran;
} hdl;

static void sync_in_handler(psrpc_request *req, void *ud) {
    hdl *h = (hdl *)ud;
    psrpc_method m = echo();
    psrpc_msg *out = NULL;
    h->rc = psrpc_client_call_sync(&out, h->cl, &m, "x", 1, NULL);
    snprintf(h->msg, sizeof h->msg, "%s", psrpc_last_error());
    psrpc_msg_release(out);
    atomic_fetch_add(&h->ran, 1); /* before the answer: the caller checks it then */
    psrpc_request_respond(req, "h", 1);
}

TEST(sync_call_in_handler_would_deadlock) {
    psrpc_bus *sb, *cb;
    REQUIRE(open_bus_pair(&sb, &cb) == 0);
    char svc[64];
    tu_service(svc, sizeof svc);
    hdl *h = (hdl *)calloc(1, sizeof *h);
    h->cl = tu_client(sb, svc, 0, 0); /* a client on the server's own bus */
    REQUIRE(h->cl);
    psrpc_server *srv = NULL;
    REQUIRE(psrpc_server_create(&srv, sb, svc, NULL) == PSRPC_OK);
    psrpc_method m = echo();
    REQUIRE(psrpc_server_register(srv, &m, NULL, 0, sync_in_handler, NULL, NULL, h, noop_release) ==
            PSRPC_OK);
    REQUIRE(psrpc_server_wait_ready(srv, tu_ms(5000)) == PSRPC_OK);
    psrpc_client *cl = tu_client(cb, svc, 0, 0);
    REQUIRE(cl);
    psrpc_msg *out = NULL;
    long long t0 = th_now_ms();
    CHECK_EQ_INT(psrpc_client_call_sync(&out, cl, &m, "x", 1, NULL), PSRPC_OK);
    CHECK(th_now_ms() - t0 < tu_ms(2000));
    psrpc_msg_release(out);
    CHECK_EQ_INT(atomic_load(&h->ran), 1);
    CHECK_EQ_INT(h->rc, PSRPC_WOULD_DEADLOCK);
    CHECK(tu_contains_ci(h->msg, "deadlock"));
    psrpc_client_free(cl);
    psrpc_client_free(h->cl);
    psrpc_server_free(srv);
    psrpc_bus_free(cb);
    psrpc_bus_free(sb);
    free(h);
}

/* ------------------------------------------------------------------------ */

/* H5: cancel racing the response, from another thread: each call completes
 * exactly once, OK or CANCELED. */
typedef struct cancel_arg {
    tfx *f;
    mini *recs;
    uint64_t *ids;
    int n;
    atomic_int *issued;
} cancel_arg;

static void *cancel_thread(void *a) {
    cancel_arg *c = (cancel_arg *)a;
    unsigned seed = 12345;
    for (int i = 0; i < c->n; i++) {
        while (atomic_load(c->issued) <= i)
            ;
        if (rand_r(&seed) % 4 == 0)
            th_sleep_ms(rand_r(&seed) % 2);
        psrpc_client_cancel(c->f->cl, c->ids[i]);
    }
    return NULL;
}

TEST(cancel_races_response) {
    tfx *f = tfx_new(5000);
    REQUIRE(tfx_ok(f));
    enum { N = 1000 };
    mini *recs = (mini *)calloc(N, sizeof *recs);
    uint64_t *ids = (uint64_t *)calloc(N, sizeof *ids);
    atomic_int *issued = (atomic_int *)calloc(1, sizeof *issued);
    cancel_arg ca = {f, recs, ids, N, issued};
    pthread_t t;
    pthread_create(&t, NULL, cancel_thread, &ca);
    psrpc_method m = echo();
    int rejected = 0;
    for (int i = 0; i < N; i++) {
        snprintf(recs[i].expect, sizeof recs[i].expect, "c%d", i);
        if (psrpc_client_call(&ids[i], f->cl, &m, recs[i].expect, strlen(recs[i].expect), NULL,
                              mini_cb, &recs[i]) != PSRPC_OK)
            rejected++;
        atomic_store(issued, i + 1);
    }
    pthread_join(t, NULL);
    CHECK_EQ_INT(rejected, 0);
    CHECK(WAIT_UNTIL(minis_done(recs, N) == N, 20000));
    th_sleep_ms(200);
    tfx_free(f);
    int once = 0, ok = 0;
    for (int i = 0; i < N; i++) {
        once += atomic_load(&recs[i].count) == 1;
        ok += atomic_load(&recs[i].ok);
    }
    CHECK_EQ_INT(once, N);
    fprintf(stderr, "  (%d of %d answered before their cancel)\n", ok, N);
    free(issued);
    free(ids);
    free(recs);
}

/* Calls from several threads racing a client close: every accepted call
 * completes exactly once; the rest are refused with CANCELED. */
typedef struct race_arg {
    tfx *f;
    mini *recs;
    int base, n;
    atomic_int *start;
    int refused, wrong_refusal;
} race_arg;

static void *race_thread(void *a) {
    race_arg *r = (race_arg *)a;
    psrpc_method m = echo();
    while (!atomic_load(r->start))
        ;
    for (int i = 0; i < r->n; i++) {
        mini *x = &r->recs[r->base + i];
        snprintf(x->expect, sizeof x->expect, "r%d", r->base + i);
        int rc =
            psrpc_client_call(NULL, r->f->cl, &m, x->expect, strlen(x->expect), NULL, mini_cb, x);
        if (rc != PSRPC_OK) {
            r->refused++;
            if (rc != PSRPC_CANCELED)
                r->wrong_refusal++;
            atomic_store(&x->count, -1000); /* mark: never accepted */
        }
    }
    return NULL;
}

TEST(calls_race_client_close) {
    tfx *f = tfx_new(5000);
    REQUIRE(tfx_ok(f));
    enum { T = 4, PERT = 300 };
    mini *recs = (mini *)calloc(T * PERT, sizeof *recs);
    atomic_int *start = (atomic_int *)calloc(1, sizeof *start);
    atomic_int *closed = (atomic_int *)calloc(1, sizeof *closed);
    pthread_t th[T];
    race_arg ra[T];
    for (int i = 0; i < T; i++) {
        ra[i] = (race_arg){f, recs, i * PERT, PERT, start, 0, 0};
        pthread_create(&th[i], NULL, race_thread, &ra[i]);
    }
    atomic_store(start, 1);
    th_sleep_ms(2);
    CHECK_EQ_INT(psrpc_client_close(f->cl, tu_count_cb, closed), PSRPC_OK);
    for (int i = 0; i < T; i++)
        pthread_join(th[i], NULL);
    CHECK(WAIT_UNTIL(atomic_load(closed) == 1, 5000));
    th_sleep_ms(100);
    tfx_free(f);
    int wrong = 0, accepted = 0, refused = 0;
    for (int i = 0; i < T; i++) {
        wrong += ra[i].wrong_refusal;
        refused += ra[i].refused;
    }
    for (int i = 0; i < T * PERT; i++) {
        int c = atomic_load(&recs[i].count);
        if (c < -100)
            continue;
        accepted++;
        if (c != 1)
            wrong++;
    }
    CHECK_EQ_INT(wrong, 0);
    CHECK_EQ_INT(accepted + refused, T * PERT);
    CHECK_EQ_INT(atomic_load(closed), 1);
    fprintf(stderr, "  (%d accepted, %d refused)\n", accepted, refused);
    free(closed);
    free(start);
    free(recs);
}

/* H2/G8: a thread registers and deregisters a method over and over while
 * other threads call it: every call completes exactly once (OK, or
 * UNAVAILABLE when no registration was live), a register right after a
 * deregister never reports ALREADY_EXISTS, and every registration's release
 * runs exactly once. */
typedef struct rr_arg {
    tfx *f;
    atomic_int *stop;
    int registered, reg_errors;
} rr_arg;

static void rr_handler(psrpc_request *req, void *ud) {
    (void)ud;
    const psrpc_msg *p = psrpc_request_payload(req);
    psrpc_request_respond(req, psrpc_msg_data(p), psrpc_msg_size(p));
}

static atomic_int rr_released;
static void rr_release(void *ud) {
    (void)ud;
    atomic_fetch_add(&rr_released, 1);
}

static void *rr_thread(void *a) {
    rr_arg *r = (rr_arg *)a;
    psrpc_method m = tu_method("Flip", PSRPC_ROUTING_QUEUE, 0);
    for (int i = 0; i < 200; i++) {
        int rc = psrpc_server_register(r->f->s[0]->server, &m, NULL, 0, rr_handler, NULL, NULL,
                                       NULL, rr_release);
        if (rc != PSRPC_OK) {
            fprintf(stderr, "  register #%d: %d %s\n", i, rc, psrpc_last_error());
            r->reg_errors++;
            continue;
        }
        r->registered++;
        if (i % 2)
            th_sleep_ms(1);
        rc = psrpc_server_deregister(r->f->s[0]->server, "Flip", NULL, 0);
        if (rc != PSRPC_OK) {
            fprintf(stderr, "  deregister #%d: %d %s\n", i, rc, psrpc_last_error());
            r->reg_errors++;
        }
    }
    atomic_store(r->stop, 1);
    return NULL;
}

TEST(register_deregister_race) {
    tfx *f = tfx_new(5000);
    REQUIRE(tfx_ok(f));
    atomic_store(&rr_released, 0);
    enum { MAXC = 4000 };
    mini *recs = (mini *)calloc(MAXC, sizeof *recs);
    atomic_int *stop = (atomic_int *)calloc(1, sizeof *stop);
    rr_arg ra = {f, stop, 0, 0};
    pthread_t t;
    pthread_create(&t, NULL, rr_thread, &ra);
    psrpc_method m = tu_method("Flip", PSRPC_ROUTING_QUEUE, 0);
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.timeout_ms = 2000;
    int n = 0;
    while (!atomic_load(stop) && n < MAXC) {
        snprintf(recs[n].expect, sizeof recs[n].expect, "f%d", n);
        if (psrpc_client_call(NULL, f->cl, &m, recs[n].expect, strlen(recs[n].expect), &o, mini_cb,
                              &recs[n]) == PSRPC_OK)
            n++;
        if (n % 20 == 0)
            th_sleep_ms(1);
    }
    pthread_join(t, NULL);
    CHECK_EQ_INT(ra.reg_errors, 0);
    CHECK(WAIT_UNTIL(minis_done(recs, n) == n, 10000));
    th_sleep_ms(100);
    tfx_free(f);
    int once = 0, ok = 0;
    for (int i = 0; i < n; i++) {
        once += atomic_load(&recs[i].count) == 1;
        ok += atomic_load(&recs[i].ok);
    }
    CHECK_EQ_INT(once, n);
    CHECK_EQ_INT(atomic_load(&rr_released), ra.registered);
    fprintf(stderr, "  (%d registrations, %d calls, %d answered)\n", ra.registered, n, ok);
    free(stop);
    free(recs);
}

/* ------------------------------------------------------------------------ */

/* psrpc_msg: retain/release from many threads; the bytes stay intact. */
typedef struct msg_arg {
    psrpc_msg *msg;
    int bad;
} msg_arg;

static void *msg_thread(void *a) {
    msg_arg *m = (msg_arg *)a;
    for (int i = 0; i < 20000; i++) {
        psrpc_msg *r = psrpc_msg_retain(m->msg);
        if (r != m->msg)
            m->bad++;
        if (i % 1000 == 0) {
            const uint8_t *d = psrpc_msg_data(r);
            for (size_t k = 0; k < psrpc_msg_size(r); k++)
                if (d[k] != (uint8_t)(k * 7))
                    m->bad++;
        }
        psrpc_msg_release(r);
    }
    return NULL;
}

TEST(msg_retain_release_threads) {
    uint8_t buf[1000];
    for (size_t k = 0; k < sizeof buf; k++)
        buf[k] = (uint8_t)(k * 7);
    psrpc_msg *m = NULL;
    REQUIRE(psrpc_msg_new(&m, buf, sizeof buf) == PSRPC_OK);
    memset(buf, 0, sizeof buf); /* copied */
    CHECK_EQ_INT(psrpc_msg_size(m), 1000);
    enum { T = 8 };
    pthread_t th[T];
    msg_arg a[T];
    for (int i = 0; i < T; i++) {
        a[i] = (msg_arg){m, 0};
        pthread_create(&th[i], NULL, msg_thread, &a[i]);
    }
    for (int i = 0; i < T; i++) {
        pthread_join(th[i], NULL);
        CHECK_EQ_INT(a[i].bad, 0);
    }
    CHECK_EQ_INT(psrpc_msg_data(m)[999], (uint8_t)(999 * 7));
    psrpc_msg_release(m);

    psrpc_msg *e = NULL;
    REQUIRE(psrpc_msg_new(&e, NULL, 0) == PSRPC_OK);
    CHECK(psrpc_msg_data(e) != NULL);
    CHECK_EQ_INT(psrpc_msg_size(e), 0);
    psrpc_msg_release(e);
    psrpc_msg_release(NULL);
}

/* A response retained in the call callback outlives the callback, the client
 * and the bus, and is released on another thread. */
typedef struct keep {
    psrpc_msg *kept;
    atomic_int count;
} keep;

static void keep_cb(uint64_t id, const psrpc_msg *resp, const psrpc_error *err,
                    const char *server_id, void *ud) {
    (void)id;
    (void)err;
    (void)server_id;
    keep *k = (keep *)ud;
    if (resp)
        k->kept = psrpc_msg_retain(resp);
    atomic_fetch_add(&k->count, 1);
}

static void *release_thread(void *a) {
    keep *k = (keep *)a;
    psrpc_msg_release(k->kept);
    return NULL;
}

TEST(msg_retained_from_callback_released_elsewhere) {
    tfx *f = tfx_new(0);
    REQUIRE(tfx_ok(f));
    keep *k = (keep *)calloc(1, sizeof *k);
    psrpc_method m = echo();
    REQUIRE(psrpc_client_call(NULL, f->cl, &m, "keep me", 7, NULL, keep_cb, k) == PSRPC_OK);
    REQUIRE(WAIT_UNTIL(atomic_load(&k->count) == 1, 5000));
    REQUIRE(k->kept);
    tfx_free(f);
    CHECK_EQ_INT(psrpc_msg_size(k->kept), 7);
    CHECK(memcmp(psrpc_msg_data(k->kept), "keep me", 7) == 0);
    pthread_t t;
    pthread_create(&t, NULL, release_thread, k);
    pthread_join(t, NULL);
    CHECK_EQ_INT(atomic_load(&k->count), 1);
    free(k);
}

/* The last error is per thread. */
typedef struct le_arg {
    char seen[256];
    int status;
} le_arg;

static void *le_thread(void *a) {
    le_arg *l = (le_arg *)a;
    snprintf(l->seen, sizeof l->seen, "%s", psrpc_last_error());
    l->status = psrpc_last_error_status();
    return NULL;
}

TEST(last_error_is_per_thread) {
    psrpc_clear_error();
    CHECK_EQ_STR(psrpc_last_error(), "");
    CHECK_EQ_INT(psrpc_last_error_status(), PSRPC_OK);
    CHECK_EQ_INT(psrpc_bus_open(NULL, "local://", NULL), PSRPC_INVALID_ARGUMENT);
    CHECK(psrpc_last_error()[0] != 0);
    CHECK_EQ_INT(psrpc_last_error_status(), PSRPC_INVALID_ARGUMENT);
    le_arg l = {{0}, 99};
    pthread_t t;
    pthread_create(&t, NULL, le_thread, &l);
    pthread_join(t, NULL);
    CHECK_EQ_STR(l.seen, "");
    CHECK_EQ_INT(l.status, PSRPC_OK);
    CHECK(psrpc_last_error()[0] != 0); /* ours is untouched */
    psrpc_clear_error();
    CHECK_EQ_STR(psrpc_last_error(), "");
    CHECK_EQ_INT(psrpc_last_error_status(), PSRPC_OK);
}

TEST_MAIN()
