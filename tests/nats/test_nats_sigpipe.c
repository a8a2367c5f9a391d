/* SIGPIPE never kills the host process, over NATS (issue 20, item 1). This
 * program keeps the default SIGPIPE disposition. Under load (large payloads
 * in flight) its private nats-server is killed and restarted several times;
 * writes into the reset connections happen on the bus's loop thread and on
 * nats.c's threads. The process must survive, see the failures and recover. */
#include "nt.h"

#define PAYLOAD (256 * 1024)
#define WINDOW 48

typedef struct load {
    psrpc_client *cl;
    psrpc_method m;
    char *payload;
    atomic_int inflight, ok, failed;
    atomic_bool stop;
} load;

static void load_cb(uint64_t id, const psrpc_msg *resp, const psrpc_error *e, const char *server_id,
                    void *ud) {
    (void)id;
    (void)resp;
    (void)server_id;
    load *l = (load *)ud;
    atomic_fetch_add(e ? &l->failed : &l->ok, 1);
    atomic_fetch_sub(&l->inflight, 1);
}

static void *load_thread(void *arg) {
    load *l = (load *)arg;
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.timeout_ms = 1000;
    while (!atomic_load(&l->stop)) {
        if (atomic_load(&l->inflight) >= WINDOW) {
            th_sleep_ms(1);
            continue;
        }
        atomic_fetch_add(&l->inflight, 1);
        if (psrpc_client_call(NULL, l->cl, &l->m, l->payload, PAYLOAD, &o, load_cb, l) !=
            PSRPC_OK) {
            atomic_fetch_sub(&l->inflight, 1);
            atomic_fetch_add(&l->failed, 1);
            th_sleep_ms(1);
        }
    }
    return NULL;
}

TEST(sigpipe_default_disposition_survives_nats_restarts_under_load) {
    struct sigaction sa;
    REQUIRE(sigaction(SIGPIPE, NULL, &sa) == 0);
    REQUIRE(sa.sa_handler == SIG_DFL);
    nt_server s;
    nt_server_init(&s, NULL);
    REQUIRE(nt_server_start(&s));
    psrpc_bus_options o = nt_opts();
    o.reconnect_wait_ms = 50;
    o.reconnect_wait_max_ms = 200;
    psrpc_bus *sb = nt_bus(s.url, &o), *cb = nt_bus(s.url, &o);
    REQUIRE(sb && cb);
    REQUIRE(psrpc_bus_wait_ready(sb, nt_ms(5000)) == PSRPC_OK);
    REQUIRE(psrpc_bus_wait_ready(cb, nt_ms(5000)) == PSRPC_OK);
    nt_watch *wc = nt_watch_new(cb);
    char svc[64];
    nt_unique(svc, sizeof svc, "Pipe");
    psrpc_method m = nt_method("Echo", PSRPC_ROUTING_QUEUE, 0);
    nt_srv *srv = nt_srv_new(sb, svc, &m);
    REQUIRE(srv->server);
    load *l = (load *)calloc(1, sizeof *l);
    l->cl = nt_client(cb, svc, 1000);
    REQUIRE(l->cl);
    l->m = m;
    l->payload = (char *)malloc(PAYLOAD);
    memset(l->payload, 'p', PAYLOAD);
    pthread_t t;
    REQUIRE(pthread_create(&t, NULL, load_thread, l) == 0);
    CHECK(WAIT_UNTIL(atomic_load(&l->ok) >= 20, 5000));
    for (int round = 0; round < 6; round++) {
        th_sleep_ms(200);
        nt_server_kill(&s);
        th_sleep_ms(100);
        REQUIRE(nt_server_start(&s));
    }
    int ok_before = atomic_load(&l->ok);
    CHECK(WAIT_UNTIL(atomic_load(&l->ok) >= ok_before + 20, 15000));
    atomic_store(&l->stop, true);
    pthread_join(t, NULL);
    CHECK(WAIT_UNTIL(atomic_load(&l->inflight) == 0, 5000));
    fprintf(stderr, "  calls: %d ok, %d failed; client bus down %d times\n", atomic_load(&l->ok),
            atomic_load(&l->failed), atomic_load(&wc->downs));
    CHECK(atomic_load(&l->failed) > 0);
    CHECK(atomic_load(&wc->downs) >= 1);
    CHECK_EQ_INT(nt_roundtrip(l->cl, &m, "after"), PSRPC_OK);
    psrpc_client_free(l->cl);
    nt_srv_stop(srv);
    psrpc_bus_free(cb);
    psrpc_bus_free(sb);
    free(srv);
    free(wc);
    free(l->payload);
    free(l);
    nt_server_kill(&s);
}

TEST_MAIN()
