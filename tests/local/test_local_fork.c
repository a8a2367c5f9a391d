/* fork() with open buses (issue 20, item 6): preforking servers (gunicorn
 * --preload, celery) fork after opening. In the child the bus's loop thread
 * does not exist: every call on an inherited handle must fail at once with
 * PSRPC_FAILED_PRECONDITION (a clear message), *_sync and *_wait_* included,
 * and the frees must return at once without touching the parent's threads
 * or sockets; the parent keeps working. Runs over local, Redis and NATS
 * (PSRPC_TEST_BUS_URL). */
#include <sys/wait.h>

#include "util.h"

/* ThreadSanitizer cannot start threads in the child of a multi-threaded
 * process: under it the child does not open a new bus. */
#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define CHILD_NO_NEW_THREADS 1
#endif
#endif
#if defined(__SANITIZE_THREAD__)
#define CHILD_NO_NEW_THREADS 1
#endif
#ifndef CHILD_NO_NEW_THREADS
#define CHILD_NO_NEW_THREADS 0
#endif

/* The child's checks; it exits 0 when all passed. A call that hangs is
 * caught by the watchdog alarm (abort: the parent sees a signal). */
#define CHILD_FAST_MS 200

static bool fast_fail(int rc, long long t0, const char *what) {
    long long took = th_now_ms() - t0;
    bool ok = rc == PSRPC_FAILED_PRECONDITION && took < CHILD_FAST_MS &&
              tu_contains_ci(psrpc_last_error(), "fork");
    if (!ok)
        fprintf(stderr, "  child: %s -> %s after %lld ms: %s\n", what, psrpc_status_name(rc), took,
                psrpc_last_error());
    return ok;
}

typedef struct handles {
    psrpc_bus *sb, *cb;
    psrpc_server *srv;
    psrpc_client *cl;
    psrpc_sub *sub;
    psrpc_method m, pub;
    const char *svc;
    psrpc_request *held;
} handles;

static void never_cb(uint64_t id, const psrpc_msg *r, const psrpc_error *e, const char *s,
                     void *ud) {
    (void)id, (void)r, (void)e, (void)s;
    atomic_fetch_add((atomic_int *)ud, 1);
}

static void sub_msg(psrpc_sub *s, const psrpc_msg *m, void *ud) { (void)s, (void)m, (void)ud; }
static void state_cb(int st, const psrpc_error *e, void *ud) { (void)st, (void)e, (void)ud; }
static void handler(psrpc_request *r, void *ud) {
    (void)ud;
    psrpc_request_respond(r, NULL, 0);
}

static int child_main(handles *h) {
    alarm(10); /* th_watchdog aborts a hung child */
    int bad = 0;
    long long t0;
    static atomic_int callbacks;
    psrpc_msg *resp = NULL;
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.timeout_ms = 5000;

    t0 = th_now_ms();
    bad += !fast_fail(psrpc_client_call_sync(&resp, h->cl, &h->m, "x", 1, &o), t0, "call_sync");
    bad += resp != NULL;
    t0 = th_now_ms();
    bad += !fast_fail(psrpc_client_call(NULL, h->cl, &h->m, "x", 1, &o, never_cb, &callbacks), t0,
                      "call");
    t0 = th_now_ms();
    bad += !fast_fail(
        psrpc_client_call_multi(NULL, h->cl, &h->m, "x", 1, &o, never_cb, never_cb, &callbacks), t0,
        "call_multi");
    t0 = th_now_ms();
    bad += !fast_fail(psrpc_client_cancel(h->cl, 1), t0, "cancel");
    t0 = th_now_ms();
    bad += !fast_fail(psrpc_bus_wait_ready(h->cb, 5000), t0, "bus_wait_ready");
    t0 = th_now_ms();
    bad += !fast_fail(psrpc_server_wait_ready(h->srv, 5000), t0, "server_wait_ready");
    t0 = th_now_ms();
    bad += !fast_fail(psrpc_sub_wait_ready(h->sub, 5000), t0, "sub_wait_ready");
    t0 = th_now_ms();
    bad += !fast_fail(psrpc_bus_watch(h->sb, state_cb, NULL, NULL), t0, "bus_watch");
    psrpc_bus_stats st;
    memset(&st, 0, sizeof st);
    st.struct_size = sizeof st;
    t0 = th_now_ms();
    bad += !fast_fail(psrpc_bus_get_stats(h->sb, &st), t0, "bus_get_stats");
    psrpc_client *c2 = NULL;
    t0 = th_now_ms();
    bad += !fast_fail(psrpc_client_create(&c2, h->cb, h->svc, NULL), t0, "client_create");
    bad += c2 != NULL;
    psrpc_server *s2 = NULL;
    t0 = th_now_ms();
    bad += !fast_fail(psrpc_server_create(&s2, h->sb, h->svc, NULL), t0, "server_create");
    psrpc_method m2 = tu_method("Other", PSRPC_ROUTING_QUEUE, 0);
    t0 = th_now_ms();
    bad += !fast_fail(psrpc_server_register(h->srv, &m2, NULL, 0, handler, NULL, NULL, NULL, NULL),
                      t0, "server_register");
    t0 = th_now_ms();
    bad += !fast_fail(psrpc_server_deregister(h->srv, "Echo", NULL, 0), t0, "server_deregister");
    t0 = th_now_ms();
    bad += !fast_fail(psrpc_server_publish(h->srv, &h->pub, NULL, 0, "p", 1), t0, "server_publish");
    psrpc_sub *sub2 = NULL;
    t0 = th_now_ms();
    bad += !fast_fail(
        psrpc_client_subscribe(&sub2, h->cl, &h->pub, NULL, 0, sub_msg, NULL, NULL, NULL), t0,
        "client_subscribe");
    /* A request the parent's server held when it forked. */
    if (h->held) {
        t0 = th_now_ms();
        bad += !fast_fail(psrpc_request_respond(h->held, "child", 5), t0, "request_respond");
    }
    t0 = th_now_ms();
    bad += !fast_fail(psrpc_bus_close(h->sb, NULL, NULL), t0, "bus_close");

    /* The frees return at once. */
    t0 = th_now_ms();
    psrpc_sub_free(h->sub);
    psrpc_client_free(h->cl);
    psrpc_server_free(h->srv);
    psrpc_bus_free(h->sb);
    psrpc_bus_release(h->cb);
    long long took = th_now_ms() - t0;
    if (took >= CHILD_FAST_MS) {
        fprintf(stderr, "  child: the frees took %lld ms\n", took);
        bad++;
    }
    /* No callback of the parent's calls ever runs here. */
    th_sleep_ms(50);
    if (atomic_load(&callbacks) != 0) {
        fprintf(stderr, "  child: %d callbacks ran\n", atomic_load(&callbacks));
        bad++;
    }
    /* A new bus opened in the child works (nats.c's library threads do not
     * survive fork, so NATS is left out; ThreadSanitizer cannot run it). */
    if (strncmp(tu_bus_url(), "nats", 4) != 0 && !CHILD_NO_NEW_THREADS) {
        psrpc_bus *nb[2] = {NULL, NULL};
        if (open_bus_group(nb, 2) != 0) {
            fprintf(stderr, "  child: cannot open a new bus: %s\n", psrpc_last_error());
            bad++;
        } else {
            char svc[64];
            tu_service(svc, sizeof svc);
            tu_srv *srv = tu_srv_new(nb[0], svc, NULL, TU_ECHO);
            psrpc_client *cl = tu_client(nb[1], svc, 2000, 1000);
            resp = NULL;
            int rc = srv->server && tu_srv_register(srv, &h->m, NULL, 0) == PSRPC_OK
                         ? psrpc_client_call_sync(&resp, cl, &h->m, "new", 3, NULL)
                         : PSRPC_INTERNAL;
            if (rc != PSRPC_OK) {
                fprintf(stderr, "  child: call on a new bus: %s %s\n", psrpc_status_name(rc),
                        psrpc_last_error());
                bad++;
            }
            psrpc_msg_release(resp);
            psrpc_client_free(cl);
            psrpc_server_free(srv->server);
            psrpc_bus_free(nb[0]);
            psrpc_bus_free(nb[1]);
            tu_srv_destroy(srv);
        }
    }
    alarm(0);
    return bad;
}

TEST(child_fails_fast_on_inherited_bus_parent_unaffected) {
    handles *h = (handles *)calloc(1, sizeof *h);
    psrpc_bus *b[2];
    REQUIRE(open_bus_group(b, 2) == 0);
    h->sb = b[0];
    h->cb = b[1];
    char svc[64];
    tu_service(svc, sizeof svc);
    h->svc = svc;
    h->m = tu_method("Echo", PSRPC_ROUTING_QUEUE, 0);
    h->pub = tu_method("Pub", PSRPC_ROUTING_MULTI, PSRPC_METHOD_SUBSCRIPTION);
    h->pub.output_type = "test.Pub";
    tu_srv *srv = tu_srv_new(h->sb, svc, NULL, TU_HOLD);
    REQUIRE(srv->server && tu_srv_register(srv, &h->m, NULL, 0) == PSRPC_OK);
    h->srv = srv->server;
    h->cl = tu_client(h->cb, svc, 5000, 1000);
    REQUIRE(psrpc_client_subscribe(&h->sub, h->cl, &h->pub, NULL, 0, sub_msg, NULL, NULL, NULL) ==
            PSRPC_OK);
    REQUIRE(psrpc_sub_wait_ready(h->sub, tu_ms(5000)) == PSRPC_OK);
    /* A call in flight (held by the server) when the process forks. */
    tu_call *c = tu_calls_new(2);
    CHECK_EQ_INT(tu_call_async(h->cl, &h->m, "held", NULL, &c[0]), PSRPC_OK);
    CHECK(WAIT_UNTIL(tu_srv_nheld(srv) == 1, 5000));
    h->held = tu_srv_pop(srv); /* the parent answers it after the child ended */
    REQUIRE(h->held);

    fflush(stdout);
    fflush(stderr);
    long long t0 = th_now_ms();
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0)
        _exit(child_main(h) ? 1 : 0); /* _exit: the inherited copies are left as they are */
    int status = 0;
    bool exited = false;
    long long until = th_now_ms() + tu_ms(15000);
    while (!(exited = waitpid(pid, &status, WNOHANG) == pid) && th_now_ms() < until)
        th_sleep_ms(2);
    if (!exited) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
    }
    fprintf(stderr, "  child ended after %lld ms: %s %d\n", th_now_ms() - t0,
            WIFEXITED(status) ? "exit" : "signal",
            WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
    CHECK(exited);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);

    /* The parent's bus is untouched: the held call completes, new calls work. */
    CHECK_EQ_INT(psrpc_request_respond(h->held, "held", 4), PSRPC_OK);
    psrpc_request *q;
    CHECK(tu_wait_count(&c[0].count, 1, 5000));
    CHECK_EQ_INT(c[0].status, PSRPC_OK);
    CHECK_EQ_INT(psrpc_bus_wait_ready(h->cb, 1000), PSRPC_OK);
    CHECK_EQ_INT(tu_call_async(h->cl, &h->m, "after", NULL, &c[1]), PSRPC_OK);
    CHECK(WAIT_UNTIL(tu_srv_nheld(srv) >= 1, 5000));
    q = tu_srv_pop(srv);
    if (q)
        psrpc_request_respond(q, "after", 5);
    CHECK(tu_wait_count(&c[1].count, 1, 5000));
    CHECK_EQ_INT(c[1].status, PSRPC_OK);

    psrpc_sub_free(h->sub);
    psrpc_client_free(h->cl);
    psrpc_server_free(h->srv);
    psrpc_bus_free(h->sb);
    psrpc_bus_free(h->cb);
    tu_srv_destroy(srv);
    free(c);
    free(h);
}

TEST_MAIN()
