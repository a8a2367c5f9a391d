/* NATS faults, security, cluster and processes (test plan groups C and K),
 * each against private nats-server processes on free loopback ports with
 * their own config files in a temp dir (nt.h). Time bounds are liveness
 * bounds, scaled by PSRPC_TEST_TIME_FACTOR. */
#include "nt.h"

#include "bus_nats.h"
#include "failfast.h"

#ifndef PSRPC_NATS_TEST_DIR
#error "PSRPC_NATS_TEST_DIR must name tests/nats"
#endif
#ifndef PSRPC_NATS_PEER
#error "PSRPC_NATS_PEER must name the nats_peer executable"
#endif

/* ------------------------------------------------------------------------ */
/* Load bookkeeping                                                          */
/* ------------------------------------------------------------------------ */

typedef struct load_stats {
    int n, ok, unavailable, deadline, other, not_once, bad_payload;
} load_stats;

static bool all_done(nt_call *c, int n) {
    for (int i = 0; i < n; i++)
        if (atomic_load(&c[i].count) == 0)
            return false;
    return true;
}

static load_stats summarize(nt_call *c, int n, const char *what) {
    load_stats s = {.n = n};
    for (int i = 0; i < n; i++) {
        if (atomic_load(&c[i].count) != 1)
            s.not_once++;
        int st = atomic_load(&c[i].status);
        if (st == PSRPC_OK) {
            s.ok++;
            if (!c[i].payload_ok)
                s.bad_payload++;
        } else if (st == PSRPC_UNAVAILABLE) {
            s.unavailable++;
        } else if (st == PSRPC_DEADLINE_EXCEEDED) {
            s.deadline++;
        } else {
            s.other++;
        }
    }
    fprintf(stderr,
            "  (%s: %d calls: %d ok, %d unavailable, %d deadline_exceeded, %d other; %d not "
            "exactly once)\n",
            what, s.n, s.ok, s.unavailable, s.deadline, s.other, s.not_once);
    return s;
}

/* Completion time of the first successful call sent at or after t, or -1. */
static long long first_ok_after(nt_call *c, int n, long long t) {
    long long best = -1;
    for (int i = 0; i < n; i++)
        if (c[i].sent_ms >= t && atomic_load(&c[i].status) == PSRPC_OK &&
            (best < 0 || atomic_load(&c[i].at_ms) < best))
            best = atomic_load(&c[i].at_ms);
    return best;
}

static int failures_sent_after(nt_call *c, int n, long long t) {
    int f = 0;
    for (int i = 0; i < n; i++)
        if (c[i].sent_ms >= t && atomic_load(&c[i].status) != PSRPC_OK)
            f++;
    return f;
}

static int sent_after(nt_call *c, int n, long long t) {
    int k = 0;
    for (int i = 0; i < n; i++)
        k += c[i].sent_ms >= t;
    return k;
}

/* Sends one call; a synchronous refusal counts as its one completion. */
static void send_one(psrpc_client *cl, const psrpc_method *m, nt_call *c, int seq) {
    int rc = nt_call_start(cl, m, c, seq, NULL);
    if (rc != PSRPC_OK) {
        atomic_store(&c->status, rc);
        atomic_store(&c->at_ms, th_now_ms());
        atomic_fetch_add(&c->count, 1);
    }
}

static bool contains(const char *hay, const char *needle) {
    return hay && needle && strstr(hay, needle) != NULL;
}

/* Handler user data that also records the registration's outcome. */
typedef struct ready_srv {
    nt_srv srv;       /* first: nt_echo's view */
    atomic_int ready; /* 1000 = confirmed, else the error status */
} ready_srv;

static void on_ready_status(const psrpc_error *e, void *ud) {
    atomic_store(&((ready_srv *)ud)->ready, e ? e->status : 1000);
}

/* ------------------------------------------------------------------------ */
/* C1: restart under load                                                    */
/* ------------------------------------------------------------------------ */

/* kill -9 the server under load, restart it on the same port after 3 s:
 * clear unavailable errors while it is down, every call completes exactly
 * once, calls succeed again within 3 s of the restart, no handler sees an
 * expired request. */
TEST(restart_under_load) {
    nt_server s;
    nt_server_init(&s, NULL);
    REQUIRE(nt_server_start(&s));
    psrpc_bus_options o = nt_opts();
    psrpc_bus *sb = nt_bus(s.url, &o), *cb = nt_bus(s.url, &o);
    REQUIRE(sb && cb);
    REQUIRE(psrpc_bus_wait_ready(sb, nt_ms(5000)) == PSRPC_OK);
    REQUIRE(psrpc_bus_wait_ready(cb, nt_ms(5000)) == PSRPC_OK);
    nt_watch *w = nt_watch_new(cb);
    char svc[64];
    nt_unique(svc, sizeof svc, "Restart");
    psrpc_method m = nt_method("Echo", PSRPC_ROUTING_QUEUE, 0);
    nt_srv *srv = nt_srv_new(sb, svc, &m);
    REQUIRE(srv->server);
    psrpc_client *cl = nt_client(cb, svc, 1000);
    REQUIRE(cl);
    REQUIRE(nt_until_roundtrip(cl, &m, nt_ms(5000)) >= 0);

    enum { PERIOD_MS = 5, RUN_MS = 9000, KILL_AT = 2000, RESTART_AT = 5000 };
    int max = RUN_MS / PERIOD_MS + 16;
    nt_call *calls = (nt_call *)calloc((size_t)max, sizeof *calls);
    long long t0 = th_now_ms(), killed_at = 0, restarted_at = 0;
    bool restarted = true;
    int n = 0;
    while (th_now_ms() - t0 < RUN_MS && n < max) {
        long long el = th_now_ms() - t0;
        if (!killed_at && el >= KILL_AT) {
            nt_server_kill(&s);
            killed_at = th_now_ms();
        }
        if (killed_at && !restarted_at && el >= RESTART_AT) {
            restarted = nt_server_start(&s);
            restarted_at = th_now_ms();
        }
        send_one(cl, &m, &calls[n], n);
        n++;
        th_sleep_ms(PERIOD_MS);
    }
    CHECK(restarted);
    CHECK(WAIT_UNTIL(all_done(calls, n), 5000));
    th_sleep_ms(300);
    load_stats st = summarize(calls, n, "restart");
    CHECK_EQ_INT(st.not_once, 0);
    CHECK_EQ_INT(st.bad_payload, 0);
    CHECK_EQ_INT(st.other, 0);
    CHECK(st.unavailable > 0); /* fail fast while down */
    CHECK(atomic_load(&w->downs) >= 1);
    long long rec = first_ok_after(calls, n, restarted_at);
    fprintf(stderr,
            "  (down reported %lld ms after the kill; first success %lld ms after the "
            "restart)\n",
            atomic_load(&w->down_at_ms) - killed_at, rec < 0 ? -1 : rec - restarted_at);
    CHECK(rec > 0 && rec - restarted_at <= nt_ms(3000));
    if (rec > 0) {
        CHECK(sent_after(calls, n, rec + 500) > 100);
        CHECK_EQ_INT(failures_sent_after(calls, n, rec + 500), 0);
    }
    CHECK_EQ_INT(atomic_load(&srv->expired_seen), 0);
    /* The server's bus came back as well. */
    CHECK(nt_roundtrip(cl, &m, "after") == PSRPC_OK);
    psrpc_client_free(cl);
    nt_srv_stop(srv);
    psrpc_bus_free(sb);
    psrpc_bus_free(cb);
    free(srv);
    free(calls);
    free(w);
    nt_server_kill(&s);
}

/* ------------------------------------------------------------------------ */
/* C4: a silent server                                                       */
/* ------------------------------------------------------------------------ */

/* SIGSTOP: TCP stays up, the server says nothing. With a 500 ms ping
 * interval (2 pings outstanding) the link is declared dead within seconds,
 * calls fail fast meanwhile, and after SIGCONT everything recovers. */
TEST(sigstop_noticed) {
    nt_server s;
    nt_server_init(&s, NULL);
    REQUIRE(nt_server_start(&s));
    psrpc_bus_options o = nt_opts();
    o.ping_interval_ms = 500;
    psrpc_bus *b = nt_bus(s.url, &o);
    REQUIRE(b);
    REQUIRE(psrpc_bus_wait_ready(b, nt_ms(5000)) == PSRPC_OK);
    nt_watch *w = nt_watch_new(b);
    char svc[64];
    nt_unique(svc, sizeof svc, "Stop");
    psrpc_method m = nt_method("Echo", PSRPC_ROUTING_QUEUE, 0);
    nt_srv *srv = nt_srv_new(b, svc, &m);
    REQUIRE(srv->server);
    psrpc_client *cl = nt_client(b, svc, 1000);
    REQUIRE(cl);
    REQUIRE(nt_until_roundtrip(cl, &m, nt_ms(5000)) >= 0);

    long long t0 = th_now_ms();
    nt_server_signal(&s, SIGSTOP);
    CHECK(WAIT_UNTIL(atomic_load(&w->state) == PSRPC_BUS_DISCONNECTED, 3500));
    long long detect = atomic_load(&w->down_at_ms) - t0;
    fprintf(stderr, "  (silent server noticed after %lld ms)\n", detect);
    CHECK_EQ_INT(atomic_load(&w->status), PSRPC_UNAVAILABLE);
    long long tc = th_now_ms();
    CHECK_EQ_INT(nt_roundtrip(cl, &m, "while stopped"), PSRPC_UNAVAILABLE);
    CHECK(th_now_ms() - tc < nt_ms(500));
    th_sleep_ms(1000);
    long long tcont = th_now_ms();
    nt_server_signal(&s, SIGCONT);
    CHECK(WAIT_UNTIL(atomic_load(&w->state) == PSRPC_BUS_CONNECTED, 5000));
    long long back = nt_until_roundtrip(cl, &m, nt_ms(5000));
    fprintf(stderr, "  (connected %lld ms after SIGCONT)\n", atomic_load(&w->up_at_ms) - tcont);
    CHECK(back >= 0);
    psrpc_client_free(cl);
    nt_srv_stop(srv);
    psrpc_bus_free(b);
    free(srv);
    free(w);
    nt_server_kill(&s);
}

/* ------------------------------------------------------------------------ */
/* C6: max_payload                                                           */
/* ------------------------------------------------------------------------ */

/* A request larger than the server's max_payload is refused locally with
 * resource_exhausted (the connection stays up); one that fits works. */
TEST(max_payload_refused_locally) {
    nt_server s;
    nt_server_init(&s, "max_payload: 65536\n");
    REQUIRE(nt_server_start(&s));
    psrpc_bus_options o = nt_opts();
    psrpc_bus *sb = nt_bus(s.url, &o), *cb = nt_bus(s.url, &o);
    REQUIRE(sb && cb);
    REQUIRE(psrpc_bus_wait_ready(sb, nt_ms(5000)) == PSRPC_OK);
    REQUIRE(psrpc_bus_wait_ready(cb, nt_ms(5000)) == PSRPC_OK);
    char svc[64];
    nt_unique(svc, sizeof svc, "Big");
    psrpc_method m = nt_method("Echo", PSRPC_ROUTING_AFFINITY, 0);
    nt_srv *srv = nt_srv_new(sb, svc, &m);
    REQUIRE(srv->server);
    psrpc_client *cl = nt_client(cb, svc, 3000);
    REQUIRE(cl);
    size_t big = 65537, fits = 60000;
    char *data = (char *)malloc(big);
    memset(data, 'x', big);
    psrpc_msg *out = NULL;
    long long t0 = th_now_ms();
    int rc = psrpc_client_call_sync(&out, cl, &m, data, big, NULL);
    long long took = th_now_ms() - t0;
    CHECK_EQ_INT(rc, PSRPC_RESOURCE_EXHAUSTED);
    fprintf(stderr, "  (%d after %lld ms: %s)\n", rc, took, psrpc_last_error());
    CHECK(contains(psrpc_last_error(), "max_payload"));
    CHECK(took < nt_ms(1000));
    psrpc_msg_release(out);
    out = NULL;
    rc = psrpc_client_call_sync(&out, cl, &m, data, fits, NULL);
    CHECK_EQ_INT(rc, PSRPC_OK);
    CHECK(out && psrpc_msg_size(out) == fits);
    psrpc_msg_release(out);
    CHECK_EQ_INT(nt_stats(cb).disconnects, 0);
    CHECK_EQ_INT(nt_stats(sb).disconnects, 0);
    CHECK_EQ_INT(atomic_load(&srv->handled), 1);
    free(data);
    psrpc_client_free(cl);
    nt_srv_stop(srv);
    psrpc_bus_free(sb);
    psrpc_bus_free(cb);
    free(srv);
    nt_server_kill(&s);
}

/* ------------------------------------------------------------------------ */
/* K4: credentials                                                           */
/* ------------------------------------------------------------------------ */

/* An echo round trip through a server and a client on one bus opened with
 * url/o. Returns the first failing status. */
static int echo_works(const char *url, const psrpc_bus_options *o) {
    psrpc_bus *b = nt_bus(url, o);
    if (!b)
        return PSRPC_INVALID_ARGUMENT;
    int rc = psrpc_bus_wait_ready(b, nt_ms(5000));
    if (rc != PSRPC_OK) {
        fprintf(stderr, "  wait_ready: %s %s\n", psrpc_status_name(rc), psrpc_last_error());
        psrpc_bus_free(b);
        return rc;
    }
    char svc[64];
    nt_unique(svc, sizeof svc, "Sec");
    psrpc_method m = nt_method("Echo", PSRPC_ROUTING_QUEUE, 0);
    nt_srv *srv = nt_srv_new(b, svc, &m);
    psrpc_client *cl = srv->server ? nt_client(b, svc, 3000) : NULL;
    rc = cl ? nt_roundtrip(cl, &m, "secure hello") : PSRPC_INTERNAL;
    if (rc != PSRPC_OK)
        fprintf(stderr, "  round trip: %s %s\n", psrpc_status_name(rc), psrpc_last_error());
    psrpc_client_free(cl);
    nt_srv_stop(srv);
    psrpc_bus_free(b);
    free(srv);
    return rc;
}

/* Opens a bus that must be refused: wait_ready's status (after at most 5 s),
 * its message, how long it took; checks the secret appears nowhere. */
static int refused(const char *url, const psrpc_bus_options *o, const char *secret, long long *took,
                   uint64_t *attempts) {
    psrpc_bus *b = nt_bus(url, o);
    if (!b)
        return PSRPC_INVALID_ARGUMENT;
    nt_watch *w = nt_watch_new(b);
    long long t0 = th_now_ms();
    int rc = psrpc_bus_wait_ready(b, nt_ms(5000));
    *took = th_now_ms() - t0;
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", psrpc_last_error());
    fprintf(stderr, "  (refused: %s after %lld ms: %s)\n", psrpc_status_name(rc), *took, msg);
    if (secret) {
        CHECK(!contains(msg, secret));
        th_sleep_ms(50);
        pthread_mutex_lock(&w->mu);
        CHECK(!contains(w->message, secret));
        pthread_mutex_unlock(&w->mu);
    }
    /* A call fails at once with the same status. */
    if (rc == PSRPC_UNAUTHENTICATED) {
        psrpc_client *cl = nt_client(b, "Nobody", 1000);
        psrpc_method m = nt_method("Echo", PSRPC_ROUTING_QUEUE, 0);
        long long tc = th_now_ms();
        if (cl)
            CHECK_EQ_INT(nt_roundtrip(cl, &m, "x"), PSRPC_UNAUTHENTICATED);
        CHECK(th_now_ms() - tc < nt_ms(500));
        if (secret)
            CHECK(!contains(psrpc_last_error(), secret));
        psrpc_client_free(cl);
        /* Retries stop after two refusals in a row. */
        th_sleep_ms(1500);
        *attempts = nt_stats(b).reconnect_attempts;
    }
    psrpc_bus_free(b);
    free(w);
    return rc;
}

TEST(auth_user_password) {
    nt_server s;
    nt_server_init(&s, "authorization { user: alice, password: \"pw-S3cret/:@\" }\n");
    REQUIRE(nt_server_start(&s));
    char url[256];
    psrpc_bus_options o = nt_opts();
    snprintf(url, sizeof url, "nats://alice:pw-S3cret%%2F%%3A%%40@127.0.0.1:%d", s.port);
    CHECK_EQ_INT(echo_works(url, &o), PSRPC_OK);

    long long took = 0;
    uint64_t attempts = 0;
    snprintf(url, sizeof url, "nats://alice:Wr0ngPassw0rd@127.0.0.1:%d", s.port);
    CHECK_EQ_INT(refused(url, &o, "Wr0ngPassw0rd", &took, &attempts), PSRPC_UNAUTHENTICATED);
    CHECK(took <= nt_ms(2000));
    CHECK_EQ_INT(attempts, 1);
    snprintf(url, sizeof url, "nats://127.0.0.1:%d", s.port);
    CHECK_EQ_INT(refused(url, &o, NULL, &took, &attempts), PSRPC_UNAUTHENTICATED);
    CHECK(took <= nt_ms(2000));
    nt_server_kill(&s);
}

TEST(auth_token) {
    nt_server s;
    nt_server_init(&s, "authorization { token: \"tok-Xy7Zq\" }\n");
    REQUIRE(nt_server_start(&s));
    char url[256];
    psrpc_bus_options o = nt_opts();
    snprintf(url, sizeof url, "nats://tok-Xy7Zq@127.0.0.1:%d", s.port);
    CHECK_EQ_INT(echo_works(url, &o), PSRPC_OK);
    long long took = 0;
    uint64_t attempts = 0;
    snprintf(url, sizeof url, "nats://tok-Wr0ng@127.0.0.1:%d", s.port);
    CHECK_EQ_INT(refused(url, &o, "tok-Wr0ng", &took, &attempts), PSRPC_UNAUTHENTICATED);
    CHECK(took <= nt_ms(2000));
    nt_server_kill(&s);
}

/* A user who may not subscribe to SRV. subjects: registering a method fails
 * with permission_denied (the server's -ERR arrives before the readiness
 * flush's PONG); the connection stays up and the client side keeps working. */
TEST(permissions_violation_fails_registration) {
    nt_server s;
    nt_server_init(&s, "authorization {\n  users = [\n"
                       "    { user: full, password: pw1 }\n"
                       "    { user: limited, password: pw2, permissions: { subscribe: { deny: "
                       "[\"SRV.>\"] } } }\n  ]\n}\n");
    REQUIRE(nt_server_start(&s));
    char url[256];
    psrpc_bus_options o = nt_opts();
    snprintf(url, sizeof url, "nats://limited:pw2@127.0.0.1:%d", s.port);
    psrpc_bus *b = nt_bus(url, &o);
    snprintf(url, sizeof url, "nats://full:pw1@127.0.0.1:%d", s.port);
    psrpc_bus *fb = nt_bus(url, &o);
    REQUIRE(b && fb);
    REQUIRE(psrpc_bus_wait_ready(b, nt_ms(5000)) == PSRPC_OK);
    char svc[64];
    nt_unique(svc, sizeof svc, "Perm");
    psrpc_method m = nt_method("Echo", PSRPC_ROUTING_QUEUE, 0);
    psrpc_server *srv = NULL;
    REQUIRE(psrpc_server_create(&srv, b, svc, NULL) == PSRPC_OK);
    ready_srv *r = (ready_srv *)calloc(1, sizeof *r);
    REQUIRE(psrpc_server_register(srv, &m, NULL, 0, nt_echo, NULL, on_ready_status, r, NULL) ==
            PSRPC_OK);
    CHECK(WAIT_UNTIL(atomic_load(&r->ready) != 0, 5000));
    CHECK_EQ_INT(atomic_load(&r->ready), PSRPC_PERMISSION_DENIED);
    CHECK_EQ_INT(psrpc_server_wait_ready(srv, nt_ms(1000)), PSRPC_PERMISSION_DENIED);
    fprintf(stderr, "  (%s)\n", psrpc_last_error());
    CHECK(contains(psrpc_last_error(), "Permissions Violation"));
    /* The limited user's client still works against a server elsewhere. */
    nt_srv *full = nt_srv_new(fb, svc, &m);
    REQUIRE(full->server);
    psrpc_client *cl = nt_client(b, svc, 3000);
    CHECK(cl && nt_roundtrip(cl, &m, "allowed") == PSRPC_OK);
    CHECK_EQ_INT(nt_stats(b).disconnects, 0);
    psrpc_client_free(cl);
    nt_srv_stop(full);
    psrpc_server_free(srv);
    psrpc_bus_free(b);
    psrpc_bus_free(fb);
    free(full);
    free(r);
    nt_server_kill(&s);
}

/* NKey seeds made here: base32(prefix bytes, 32 random bytes, crc16). */
static uint16_t crc16(const uint8_t *p, size_t n) {
    uint16_t crc = 0;
    for (size_t i = 0; i < n; i++) {
        crc ^= (uint16_t)(p[i] << 8);
        for (int b = 0; b < 8; b++)
            crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
    }
    return crc;
}

static void make_user_seed(char out[59]) {
    static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    uint8_t raw[36];
    raw[0] = (18 << 3) | ((20 << 3) >> 5); /* seed, user */
    raw[1] = (uint8_t)(((20 << 3) & 31) << 3);
    FILE *f = fopen("/dev/urandom", "r");
    if (!f || fread(raw + 2, 1, 32, f) != 32)
        abort();
    fclose(f);
    uint16_t c = crc16(raw, 34);
    raw[34] = (uint8_t)(c & 0xff);
    raw[35] = (uint8_t)(c >> 8);
    uint32_t acc = 0;
    int bits = 0, j = 0;
    for (int i = 0; i < 36; i++) {
        acc = (acc << 8) | raw[i];
        bits += 8;
        while (bits >= 5) {
            bits -= 5;
            out[j++] = a[(acc >> bits) & 31];
        }
    }
    if (bits)
        out[j++] = a[(acc << (5 - bits)) & 31];
    out[j] = 0;
}

/* The public key of the NKey seed in the NATS documentation's example. */
TEST(nkey_public_key_derivation) {
    char pub[PSRPC__NKEY_PUBLIC_LEN + 1];
    CHECK_EQ_INT(psrpc__nkey_public_from_seed(
                     pub, "SUACSSL3UAHUDXKFSNVUZRF5UHPMWZ6BFDTJ7M6USDXIEDNPPQYYYCU3VY"),
                 PSRPC_OK);
    CHECK_EQ_STR(pub, "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4");
    /* A changed character breaks the checksum. */
    CHECK_EQ_INT(psrpc__nkey_public_from_seed(
                     pub, "SUACSSL3UBHUDXKFSNVUZRF5UHPMWZ6BFDTJ7M6USDXIEDNPPQYYYCU3VY"),
                 PSRPC_INVALID_ARGUMENT);
    CHECK_EQ_INT(psrpc__nkey_public_from_seed(pub, "SUAC"), PSRPC_INVALID_ARGUMENT);
}

TEST(auth_nkey) {
    char seed[59], other[59], pub[PSRPC__NKEY_PUBLIC_LEN + 1];
    make_user_seed(seed);
    make_user_seed(other);
    REQUIRE(psrpc__nkey_public_from_seed(pub, seed) == PSRPC_OK);
    nt_server s;
    nt_server_init(&s, "authorization { users = [ { nkey: %s } ] }\n", pub);
    REQUIRE(nt_server_start(&s));
    /* The seed file in the usual decorated format. */
    REQUIRE(nt_write("user.nk",
                     "-----BEGIN USER NKEY SEED-----\n%s\n------END USER NKEY "
                     "SEED------\n",
                     seed));
    REQUIRE(nt_write("other.nk", "%s\n", other));
    char path[512], opath[512];
    nt_path(path, sizeof path, "user.nk");
    nt_path(opath, sizeof opath, "other.nk");
    psrpc_bus_options o = nt_opts();
    o.nats_nkey_seed_file = path;
    CHECK_EQ_INT(echo_works(s.url, &o), PSRPC_OK);
    o.nats_nkey_seed_file = opath;
    long long took = 0;
    uint64_t attempts = 0;
    CHECK_EQ_INT(refused(s.url, &o, other, &took, &attempts), PSRPC_UNAUTHENTICATED);
    CHECK(took <= nt_ms(2000));
    /* A missing file is refused when the bus is opened. */
    o.nats_nkey_seed_file = "/nonexistent/seed.nk";
    psrpc_bus *b = NULL;
    CHECK_EQ_INT(psrpc_bus_open(&b, s.url, &o), PSRPC_INVALID_ARGUMENT);
    nt_server_kill(&s);
}

/* ------------------------------------------------------------------------ */
/* K5: TLS                                                                   */
/* ------------------------------------------------------------------------ */

static bool certs_ready;
static bool make_certs(void) {
    if (certs_ready)
        return true;
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "sh '%s/gen_certs.sh' '%s'", PSRPC_NATS_TEST_DIR, nt_dir());
    certs_ready = system(cmd) == 0;
    return certs_ready;
}

/* A bus that must not come up: the state it reports within 2 s. */
static int tls_refused(const char *url, const psrpc_bus_options *o, char *why, size_t n) {
    psrpc_bus *b = nt_bus(url, o);
    if (!b)
        return PSRPC_INVALID_ARGUMENT;
    nt_watch *w = nt_watch_new(b);
    long long t0 = th_now_ms();
    bool down = WAIT_UNTIL(atomic_load(&w->state) == PSRPC_BUS_DISCONNECTED, 2000);
    int st = down ? atomic_load(&w->status) : -1;
    pthread_mutex_lock(&w->mu);
    snprintf(why, n, "%s", w->message);
    pthread_mutex_unlock(&w->mu);
    fprintf(stderr, "  (refused after %lld ms: %s)\n", th_now_ms() - t0, why);
    /* and it never comes up */
    th_sleep_ms(300);
    if (atomic_load(&w->state) == PSRPC_BUS_CONNECTED)
        st = -2;
    psrpc_bus_free(b);
    free(w);
    return st;
}

static bool tls_reason(const char *why) {
    return contains(why, "SSL") || contains(why, "TLS") || contains(why, "certificate") ||
           contains(why, "ssl") || contains(why, "handshake");
}

TEST(tls_verification) {
    REQUIRE(make_certs());
    const char *d = nt_dir();
    nt_server s;
    nt_server_init(&s,
                   "tls {\n  cert_file: \"%s/server.crt\"\n  key_file: \"%s/server.key\"\n"
                   "  timeout: 2\n}\n",
                   d, d);
    REQUIRE(nt_server_start(&s));
    char ca[512], other[512], url[256], why[512];
    nt_path(ca, sizeof ca, "ca.crt");
    nt_path(other, sizeof other, "other-ca.crt");
    psrpc_bus_options o = nt_opts();

    /* right CA, host name checked */
    o.tls_ca_file = ca;
    snprintf(url, sizeof url, "tls://localhost:%d", s.port);
    CHECK_EQ_INT(echo_works(url, &o), PSRPC_OK);
    /* right CA over an IP literal */
    snprintf(url, sizeof url, "tls://127.0.0.1:%d", s.port);
    CHECK_EQ_INT(echo_works(url, &o), PSRPC_OK);
    /* wrong CA */
    o.tls_ca_file = other;
    snprintf(url, sizeof url, "tls://localhost:%d", s.port);
    CHECK_EQ_INT(tls_refused(url, &o, why, sizeof why), PSRPC_UNAVAILABLE);
    CHECK(tls_reason(why));
    /* system CAs only, and a nats:// URL: upgraded to TLS, still verified */
    o.tls_ca_file = NULL;
    snprintf(url, sizeof url, "nats://localhost:%d", s.port);
    CHECK_EQ_INT(tls_refused(url, &o, why, sizeof why), PSRPC_UNAVAILABLE);
    CHECK(tls_reason(why));
    /* right CA, wrong name */
    o.tls_ca_file = ca;
    o.tls_server_name = "wrong.example";
    snprintf(url, sizeof url, "tls://localhost:%d", s.port);
    CHECK_EQ_INT(tls_refused(url, &o, why, sizeof why), PSRPC_UNAVAILABLE);
    CHECK(tls_reason(why));
    nt_server_kill(&s);
}

TEST(tls_mutual) {
    REQUIRE(make_certs());
    const char *d = nt_dir();
    nt_server s;
    nt_server_init(&s,
                   "tls {\n  cert_file: \"%s/server.crt\"\n  key_file: \"%s/server.key\"\n"
                   "  ca_file: \"%s/ca.crt\"\n  verify: true\n  timeout: 2\n}\n",
                   d, d, d);
    REQUIRE(nt_server_start(&s));
    char ca[512], cert[512], key[512], url[256], why[512];
    nt_path(ca, sizeof ca, "ca.crt");
    nt_path(cert, sizeof cert, "client.crt");
    nt_path(key, sizeof key, "client.key");
    psrpc_bus_options o = nt_opts();
    o.tls_ca_file = ca;
    o.tls_cert_file = cert;
    o.tls_key_file = key;
    snprintf(url, sizeof url, "tls://localhost:%d", s.port);
    CHECK_EQ_INT(echo_works(url, &o), PSRPC_OK);
    o.tls_cert_file = o.tls_key_file = NULL;
    CHECK_EQ_INT(tls_refused(url, &o, why, sizeof why), PSRPC_UNAVAILABLE);
    /* A certificate without its key is refused when the bus is opened. */
    o.tls_cert_file = cert;
    psrpc_bus *b = NULL;
    CHECK_EQ_INT(psrpc_bus_open(&b, url, &o), PSRPC_INVALID_ARGUMENT);
    nt_server_kill(&s);
}

/* ------------------------------------------------------------------------ */
/* Cluster                                                                   */
/* ------------------------------------------------------------------------ */

/* Three nodes with routes on loopback. The server's bus is on node 1; the
 * client's URL lists nodes 2 and 3. Under load, node 2 is killed (and
 * restarted), then node 3: whichever node the client is on dies once, and
 * it moves on; calls succeed again within 3 s of each kill, each completes
 * exactly once. */
TEST(cluster_node_killed_under_load) {
    nt_server n[3];
    int cport[3];
    for (int i = 0; i < 3; i++)
        cport[i] = nt_free_port();
    for (int i = 0; i < 3; i++)
        nt_server_init(&n[i],
                       "cluster {\n  name: psrpc_test\n  listen: 127.0.0.1:%d\n"
                       "  routes: [ nats-route://127.0.0.1:%d, nats-route://127.0.0.1:%d ]\n}\n",
                       cport[i], cport[(i + 1) % 3], cport[(i + 2) % 3]);
    for (int i = 0; i < 3; i++)
        REQUIRE(nt_server_start(&n[i]));
    char curl[300];
    snprintf(curl, sizeof curl, "nats://127.0.0.1:%d,nats://127.0.0.1:%d", n[1].port, n[2].port);
    psrpc_bus_options o = nt_opts();
    psrpc_bus *sb = nt_bus(n[0].url, &o), *cb = nt_bus(curl, &o);
    REQUIRE(sb && cb);
    REQUIRE(psrpc_bus_wait_ready(sb, nt_ms(5000)) == PSRPC_OK);
    REQUIRE(psrpc_bus_wait_ready(cb, nt_ms(5000)) == PSRPC_OK);
    char svc[64];
    nt_unique(svc, sizeof svc, "Cluster");
    psrpc_method m = nt_method("Echo", PSRPC_ROUTING_QUEUE, 0);
    nt_srv *srv = nt_srv_new(sb, svc, &m);
    REQUIRE(srv->server);
    psrpc_client *cl = nt_client(cb, svc, 1000);
    REQUIRE(cl);
    /* Routes propagate interest asynchronously: wait for the first answer. */
    REQUIRE(nt_until_roundtrip(cl, &m, nt_ms(10000)) >= 0);

    enum { PERIOD_MS = 5, RUN_MS = 11000, KILL2 = 2000, RESTART2 = 5000, KILL3 = 6000 };
    int max = RUN_MS / PERIOD_MS + 16;
    nt_call *calls = (nt_call *)calloc((size_t)max, sizeof *calls);
    long long t0 = th_now_ms(), k2 = 0, r2 = 0, k3 = 0;
    bool restarted = true;
    int cnt = 0;
    while (th_now_ms() - t0 < RUN_MS && cnt < max) {
        long long el = th_now_ms() - t0;
        if (!k2 && el >= KILL2) {
            nt_server_kill(&n[1]);
            k2 = th_now_ms();
        }
        if (k2 && !r2 && el >= RESTART2) {
            restarted = nt_server_start(&n[1]);
            r2 = th_now_ms();
        }
        if (r2 && !k3 && el >= KILL3) {
            nt_server_kill(&n[2]);
            k3 = th_now_ms();
        }
        send_one(cl, &m, &calls[cnt], cnt);
        cnt++;
        th_sleep_ms(PERIOD_MS);
    }
    CHECK(restarted);
    CHECK(WAIT_UNTIL(all_done(calls, cnt), 5000));
    th_sleep_ms(300);
    load_stats st = summarize(calls, cnt, "cluster");
    CHECK_EQ_INT(st.not_once, 0);
    CHECK_EQ_INT(st.bad_payload, 0);
    CHECK_EQ_INT(st.other, 0);
    long long a2 = first_ok_after(calls, cnt, k2), a3 = first_ok_after(calls, cnt, k3);
    fprintf(stderr, "  (first success %lld ms after killing node 2, %lld ms after node 3)\n",
            a2 < 0 ? -1 : a2 - k2, a3 < 0 ? -1 : a3 - k3);
    CHECK(a2 > 0 && a2 - k2 <= nt_ms(3000));
    CHECK(a3 > 0 && a3 - k3 <= nt_ms(3000));
    /* After the last kill settled, everything works. */
    if (a3 > 0)
        CHECK(failures_sent_after(calls, cnt, a3 + 1000) <= 2);
    CHECK(nt_roundtrip(cl, &m, "after") == PSRPC_OK);
    psrpc_client_free(cl);
    nt_srv_stop(srv);
    psrpc_bus_free(sb);
    psrpc_bus_free(cb);
    free(srv);
    free(calls);
    for (int i = 0; i < 3; i++)
        nt_server_kill(&n[i]);
}

/* ------------------------------------------------------------------------ */
/* Quirks Q10, Q11 and the bounded inbound queue                             */
/* ------------------------------------------------------------------------ */

static void count_msg(psrpc_sub *sub, const psrpc_msg *msg, void *ud) {
    (void)sub, (void)msg;
    atomic_fetch_add((atomic_int *)ud, 1);
}

/* Q10: two queue subscriptions of one method on ONE bus both get every
 * message (as in Go); on two buses each message reaches one of them. */
TEST(q10_queue_subscribers_share_per_bus) {
    nt_server s;
    nt_server_init(&s, NULL);
    REQUIRE(nt_server_start(&s));
    psrpc_bus_options o = nt_opts();
    psrpc_bus *pb = nt_bus(s.url, &o), *b1 = nt_bus(s.url, &o), *b2 = nt_bus(s.url, &o);
    REQUIRE(pb && b1 && b2);
    char svc[64];
    nt_unique(svc, sizeof svc, "Q10");
    psrpc_method m = nt_method("Work", PSRPC_ROUTING_QUEUE, PSRPC_METHOD_SUBSCRIPTION);
    m.output_type = "test.Work";
    psrpc_server *pub = NULL;
    REQUIRE(psrpc_server_create(&pub, pb, svc, NULL) == PSRPC_OK);
    psrpc_client *c1 = nt_client(b1, svc, 0), *c2 = nt_client(b2, svc, 0);
    REQUIRE(c1 && c2);
    atomic_int *got = (atomic_int *)calloc(3, sizeof *got);
    psrpc_sub *s1 = NULL, *s2 = NULL, *s3 = NULL;
    REQUIRE(psrpc_client_subscribe(&s1, c1, &m, NULL, 0, count_msg, NULL, &got[0], NULL) ==
            PSRPC_OK);
    REQUIRE(psrpc_client_subscribe(&s2, c1, &m, NULL, 0, count_msg, NULL, &got[1], NULL) ==
            PSRPC_OK);
    REQUIRE(psrpc_client_subscribe(&s3, c2, &m, NULL, 0, count_msg, NULL, &got[2], NULL) ==
            PSRPC_OK);
    REQUIRE(psrpc_sub_wait_ready(s1, nt_ms(5000)) == PSRPC_OK);
    REQUIRE(psrpc_sub_wait_ready(s2, nt_ms(5000)) == PSRPC_OK);
    REQUIRE(psrpc_sub_wait_ready(s3, nt_ms(5000)) == PSRPC_OK);
    REQUIRE(psrpc_bus_wait_ready(pb, nt_ms(5000)) == PSRPC_OK);
    enum { N = 200 };
    for (int i = 0; i < N; i++) {
        char msg[32];
        snprintf(msg, sizeof msg, "work-%d", i);
        CHECK_EQ_INT(psrpc_server_publish(pub, &m, NULL, 0, msg, strlen(msg)), PSRPC_OK);
    }
    /* bus 1 gets k messages, each to both of its subscriptions; bus 2 the rest */
    CHECK(WAIT_UNTIL(atomic_load(&got[0]) + atomic_load(&got[2]) == N, 5000));
    th_sleep_ms(200);
    fprintf(stderr, "  (bus 1: %d + %d, bus 2: %d)\n", atomic_load(&got[0]), atomic_load(&got[1]),
            atomic_load(&got[2]));
    CHECK_EQ_INT(atomic_load(&got[0]), atomic_load(&got[1]));
    CHECK_EQ_INT(atomic_load(&got[0]) + atomic_load(&got[2]), N);
    CHECK(atomic_load(&got[0]) > 0 && atomic_load(&got[2]) > 0);
    psrpc_sub_free(s1);
    psrpc_sub_free(s2);
    psrpc_sub_free(s3);
    psrpc_client_free(c1);
    psrpc_client_free(c2);
    psrpc_server_free(pub);
    psrpc_bus_free(pb);
    psrpc_bus_free(b1);
    psrpc_bus_free(b2);
    free(got);
    nt_server_kill(&s);
}

/* Q11 (with the Q27 subject ambiguity): a queue method of S and a plain
 * method of S under the topic "Q" share the subject SRV.S.Q; one bus cannot
 * have both, the second registration fails with failed_precondition. */
TEST(q11_queue_and_plain_on_one_subject) {
    nt_server s;
    nt_server_init(&s, NULL);
    REQUIRE(nt_server_start(&s));
    psrpc_bus_options o = nt_opts();
    psrpc_bus *b = nt_bus(s.url, &o);
    REQUIRE(b);
    char svc[64];
    nt_unique(svc, sizeof svc, "Q11");
    psrpc_server *srv = NULL;
    REQUIRE(psrpc_server_create(&srv, b, svc, NULL) == PSRPC_OK);
    psrpc_method q = nt_method("Queued", PSRPC_ROUTING_QUEUE, 0);
    psrpc_method p = nt_method("Broadcast", PSRPC_ROUTING_MULTI, PSRPC_METHOD_TOPICS);
    ready_srv *st = (ready_srv *)calloc(2, sizeof *st);
    const char *topic = "Q";
    REQUIRE(psrpc_server_register(srv, &q, NULL, 0, nt_echo, NULL, on_ready_status, &st[0], NULL) ==
            PSRPC_OK);
    int rc =
        psrpc_server_register(srv, &p, &topic, 1, nt_echo, NULL, on_ready_status, &st[1], NULL);
    CHECK(rc == PSRPC_FAILED_PRECONDITION ||
          (rc == PSRPC_OK && WAIT_UNTIL(atomic_load(&st[1].ready) != 0, 5000) &&
           atomic_load(&st[1].ready) == PSRPC_FAILED_PRECONDITION));
    CHECK(WAIT_UNTIL(atomic_load(&st[0].ready) == 1000, 5000));
    psrpc_server_free(srv);
    psrpc_bus_free(b);
    free(st);
    nt_server_kill(&s);
}

typedef struct slow_sub {
    atomic_int got;
    atomic_int blocked;
} slow_sub;

static void slow_msg(psrpc_sub *sub, const psrpc_msg *msg, void *ud) {
    (void)sub, (void)msg;
    slow_sub *s = (slow_sub *)ud;
    if (atomic_fetch_add(&s->got, 1) == 0) {
        atomic_store(&s->blocked, 1);
        th_sleep_ms(1000); /* a consumer that stalls its loop (never do this) */
    }
}

/* A subscriber whose loop stalls: its inbound queue is bounded
 * (queue_capacity), the overflow is dropped and counted as slow consumer,
 * delivered + dropped = published, and it works normally afterwards. */
TEST(slow_consumer_bounded_and_counted) {
    nt_server s;
    nt_server_init(&s, NULL);
    REQUIRE(nt_server_start(&s));
    psrpc_bus_options o = nt_opts();
    psrpc_bus *pb = nt_bus(s.url, &o);
    o.queue_capacity = 50;
    psrpc_bus *sb = nt_bus(s.url, &o);
    REQUIRE(pb && sb);
    char svc[64];
    nt_unique(svc, sizeof svc, "Slow");
    psrpc_method m = nt_method("Feed", PSRPC_ROUTING_MULTI, PSRPC_METHOD_SUBSCRIPTION);
    m.output_type = "test.Feed";
    psrpc_server *pub = NULL;
    REQUIRE(psrpc_server_create(&pub, pb, svc, NULL) == PSRPC_OK);
    psrpc_client *cl = nt_client(sb, svc, 0);
    REQUIRE(cl);
    slow_sub *ss = (slow_sub *)calloc(1, sizeof *ss);
    psrpc_sub *sub = NULL;
    REQUIRE(psrpc_client_subscribe(&sub, cl, &m, NULL, 0, slow_msg, NULL, ss, NULL) == PSRPC_OK);
    REQUIRE(psrpc_sub_wait_ready(sub, nt_ms(5000)) == PSRPC_OK);
    REQUIRE(psrpc_bus_wait_ready(pb, nt_ms(5000)) == PSRPC_OK);
    uint64_t d0 = nt_stats(sb).dropped_slow_consumer;
    CHECK_EQ_INT(psrpc_server_publish(pub, &m, NULL, 0, "first", 5), PSRPC_OK);
    CHECK(WAIT_UNTIL(atomic_load(&ss->blocked) == 1, 3000));
    enum { N = 1000 };
    for (int i = 0; i < N; i++)
        CHECK_EQ_INT(psrpc_server_publish(pub, &m, NULL, 0, "burst", 5), PSRPC_OK);
    /* settles once the loop is free again */
    CHECK(WAIT_UNTIL(
        atomic_load(&ss->got) - 1 + (int)(nt_stats(sb).dropped_slow_consumer - d0) == N, 10000));
    int got = atomic_load(&ss->got) - 1;
    uint64_t dropped = nt_stats(sb).dropped_slow_consumer - d0;
    fprintf(stderr, "  (%d delivered, %llu dropped as slow consumer)\n", got,
            (unsigned long long)dropped);
    CHECK(dropped > 0);
    CHECK(got >= 50);
    CHECK_EQ_INT((uint64_t)got + dropped, N);
    int before = atomic_load(&ss->got);
    CHECK_EQ_INT(psrpc_server_publish(pub, &m, NULL, 0, "after", 5), PSRPC_OK);
    CHECK(WAIT_UNTIL(atomic_load(&ss->got) == before + 1, 3000));
    psrpc_sub_free(sub);
    psrpc_client_free(cl);
    psrpc_server_free(pub);
    psrpc_bus_free(pb);
    psrpc_bus_free(sb);
    free(ss);
    nt_server_kill(&s);
}

/* Publishes made right before psrpc_bus_free reach the server: close
 * flushes before it closes the connection; free is quick. */
TEST(close_delivers_what_was_published) {
    nt_server s;
    nt_server_init(&s, NULL);
    REQUIRE(nt_server_start(&s));
    psrpc_bus_options o = nt_opts();
    psrpc_bus *pb = nt_bus(s.url, &o), *sb = nt_bus(s.url, &o);
    REQUIRE(pb && sb);
    char svc[64];
    nt_unique(svc, sizeof svc, "Flush");
    psrpc_method m = nt_method("Feed", PSRPC_ROUTING_MULTI, PSRPC_METHOD_SUBSCRIPTION);
    m.output_type = "test.Feed";
    psrpc_client *cl = nt_client(sb, svc, 0);
    REQUIRE(cl);
    atomic_int *got = (atomic_int *)calloc(1, sizeof *got);
    psrpc_sub *sub = NULL;
    REQUIRE(psrpc_client_subscribe(&sub, cl, &m, NULL, 0, count_msg, NULL, got, NULL) == PSRPC_OK);
    REQUIRE(psrpc_sub_wait_ready(sub, nt_ms(5000)) == PSRPC_OK);
    REQUIRE(psrpc_bus_wait_ready(pb, nt_ms(5000)) == PSRPC_OK);
    psrpc_server *pub = NULL;
    REQUIRE(psrpc_server_create(&pub, pb, svc, NULL) == PSRPC_OK);
    enum { N = 500 };
    static char payload[2048];
    memset(payload, 'f', sizeof payload);
    for (int i = 0; i < N; i++)
        CHECK_EQ_INT(psrpc_server_publish(pub, &m, NULL, 0, payload, sizeof payload), PSRPC_OK);
    long long t0 = th_now_ms();
    psrpc_server_free(pub);
    psrpc_bus_free(pb);
    long long took = th_now_ms() - t0;
    fprintf(stderr, "  (bus freed in %lld ms)\n", took);
    CHECK(took < nt_ms(1500));
    CHECK(WAIT_UNTIL(atomic_load(got) == N, 5000));
    th_sleep_ms(100);
    CHECK_EQ_INT(atomic_load(got), N);
    psrpc_sub_free(sub);
    psrpc_client_free(cl);
    psrpc_bus_free(sb);
    free(got);
    nt_server_kill(&s);
}

/* ------------------------------------------------------------------------ */
/* Bus URLs and startup                                                      */
/* ------------------------------------------------------------------------ */

/* Bad URLs and options are refused when the bus is opened. */
TEST(url_and_options_refused) {
    static const char *const bad[] = {
        "nats://",
        "nats://host:0",
        "nats://host:99999",
        "nats://host:12ab",
        "nats://host:4222/path",
        "nats://host:4222?x=1",
        "nats://a:4222,,b:4222",
        "nats://u:p@a:4222,v:q@b:4222",
        "nats://[::1:4222",
        "nats://%zz@host:4222",
        "nats://a:4222,redis://b:6379",
    };
    /* ... and secrets never in the message */
    TU_CHECK_BAD_URLS(bad, "nats://user:Hunter2Secret@host:4222/x", "Hunter2Secret");
    psrpc_bus *b = NULL;
    psrpc_bus_options o = PSRPC_BUS_OPTIONS_INIT;
    o.tls_ca_file = "/nonexistent/ca.pem";
    CHECK_EQ_INT(psrpc_bus_open(&b, "tls://localhost:4222", &o), PSRPC_INVALID_ARGUMENT);
    o.tls_ca_file = NULL;
    o.nats_creds_file = "/nonexistent/user.creds";
    CHECK_EQ_INT(psrpc_bus_open(&b, "nats://localhost:4222", &o), PSRPC_INVALID_ARGUMENT);
    o.nats_creds_file = NULL;
    o.ping_interval_ms = -1;
    CHECK_EQ_INT(psrpc_bus_open(&b, "nats://localhost:4222", &o), PSRPC_INVALID_ARGUMENT);
    /* good ones open (and connect to nothing) */
    static const char *const good[] = {
        "nats://127.0.0.1:1",
        "nats://127.0.0.1",
        "nats://tok@127.0.0.1:1",
        "nats://u:p%40@127.0.0.1:1,127.0.0.1:2,nats://u:p%40@127.0.0.1:3/",
        "nats://[::1]:1",
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        b = NULL;
        int rc = psrpc_bus_open(&b, good[i], NULL);
        if (rc != PSRPC_OK)
            fprintf(stderr, "  %s -> %s %s\n", good[i], psrpc_status_name(rc), psrpc_last_error());
        CHECK_EQ_INT(rc, PSRPC_OK);
        psrpc_bus_free(b);
    }
}

/* No server yet: the bus reports unavailable, retries with backoff, comes up
 * when the server appears, and a registration made while waiting completes
 * then. Closing a bus that never connected is quick. */
/* Fail fast from the first moment (issue 18): calls made right after the
 * open fail with the first attempt's error, not at their deadline. */
/* D5: a broker that accepts and never speaks, 20 attempts. */
TEST(no_greeting_attempts) { ff_no_greeting("nats"); }

TEST(first_attempt_failure_fails_waiting_calls) {
    char url[64];
    snprintf(url, sizeof url, "nats://127.0.0.1:%d", ff_refused_port());
    ff_check(url, 1000, "connection refused", 1500);
    int port = 0, fd = ff_silent_listener(&port);
    REQUIRE(fd >= 0);
    snprintf(url, sizeof url, "nats://127.0.0.1:%d", port);
    ff_check(url, 800, "timeout", 2500);
    close(fd);
}

TEST(server_appears_later) {
    nt_server s;
    nt_server_init(&s, NULL);
    psrpc_bus_options o = nt_opts();
    psrpc_bus *b = nt_bus(s.url, &o);
    REQUIRE(b);
    nt_watch *w = nt_watch_new(b);
    CHECK(WAIT_UNTIL(atomic_load(&w->state) == PSRPC_BUS_DISCONNECTED, 2000));
    CHECK_EQ_INT(atomic_load(&w->status), PSRPC_UNAVAILABLE);
    char svc[64];
    nt_unique(svc, sizeof svc, "Later");
    psrpc_method m = nt_method("Echo", PSRPC_ROUTING_QUEUE, 0);
    psrpc_server *srv = NULL;
    REQUIRE(psrpc_server_create(&srv, b, svc, NULL) == PSRPC_OK);
    ready_srv *ready = (ready_srv *)calloc(1, sizeof *ready);
    REQUIRE(psrpc_server_register(srv, &m, NULL, 0, nt_echo, NULL, on_ready_status, ready, NULL) ==
            PSRPC_OK);
    th_sleep_ms(1500);
    CHECK_EQ_INT(atomic_load(&ready->ready), 0);
    CHECK(nt_stats(b).reconnect_attempts >= 1);
    long long t0 = th_now_ms();
    REQUIRE(nt_server_start(&s));
    CHECK(WAIT_UNTIL(atomic_load(&w->state) == PSRPC_BUS_CONNECTED, 3000));
    CHECK(WAIT_UNTIL(atomic_load(&ready->ready) == 1000, 3000));
    fprintf(stderr, "  (connected %lld ms after the server started)\n",
            atomic_load(&w->up_at_ms) - t0);
    psrpc_client *cl = nt_client(b, svc, 2000);
    CHECK(cl && nt_roundtrip(cl, &m, "late") == PSRPC_OK);
    psrpc_client_free(cl);
    psrpc_server_free(srv);
    psrpc_bus_free(b);
    free(w);
    free(ready);

    /* a bus pointed at nothing closes at once */
    nt_server_kill(&s);
    b = nt_bus(s.url, &o);
    REQUIRE(b);
    th_sleep_ms(300);
    t0 = th_now_ms();
    psrpc_bus_free(b);
    CHECK(th_now_ms() - t0 < nt_ms(1000));
}

/* ------------------------------------------------------------------------ */
/* Processes                                                                 */
/* ------------------------------------------------------------------------ */

typedef struct proc {
    pid_t pid;
    FILE *out;
} proc;

static bool spawn(proc *p, char *const argv[]) {
    int fds[2];
    if (pipe(fds) != 0)
        return false;
    pid_t pid = fork();
    if (pid < 0)
        return false;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(fds[1], 1);
        close(fds[0]);
        close(fds[1]);
        execv(argv[0], argv);
        _exit(127);
    }
    close(fds[1]);
    p->pid = pid;
    p->out = fdopen(fds[0], "r");
    return p->out != NULL;
}

/* Waits for the process to exit within ms; its exit status, or -1. */
static int reap(proc *p, long ms) {
    long long deadline = th_now_ms() + (long long)(ms * nt_factor());
    int st = 0;
    while (th_now_ms() < deadline) {
        if (waitpid(p->pid, &st, WNOHANG) == p->pid) {
            p->pid = 0;
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        }
        th_sleep_ms(10);
    }
    kill(p->pid, SIGKILL);
    waitpid(p->pid, NULL, 0);
    p->pid = 0;
    return -1;
}

static void drain(proc *p, const char *who) {
    char line[256];
    while (p->out && fgets(line, sizeof line, p->out))
        fprintf(stderr, "  [%s] %s", who, line);
    if (p->out)
        fclose(p->out);
    p->out = NULL;
}

/* Two C servers and a C client in three processes over one nats-server (TLS
 * with the test CA): queue, affinity, multi and a subscription. */
TEST(processes_every_kind) {
    REQUIRE(make_certs());
    const char *d = nt_dir();
    nt_server s;
    nt_server_init(&s, "tls {\n  cert_file: \"%s/server.crt\"\n  key_file: \"%s/server.key\"\n}\n",
                   d, d);
    REQUIRE(nt_server_start(&s));
    char ca[512], url[256];
    nt_path(ca, sizeof ca, "ca.crt");
    setenv("PSRPC_PEER_CA", ca, 1);
    snprintf(url, sizeof url, "tls://localhost:%d", s.port);
    char *serve_argv[] = {(char *)PSRPC_NATS_PEER, url, (char *)"serve", NULL};
    char *call_argv[] = {(char *)PSRPC_NATS_PEER, url, (char *)"call", (char *)"2", NULL};
    proc sv[2] = {{0, NULL}, {0, NULL}}, cp = {0, NULL};
    for (int i = 0; i < 2; i++) {
        REQUIRE(spawn(&sv[i], serve_argv));
        char line[64] = "";
        CHECK(fgets(line, sizeof line, sv[i].out) != NULL && strcmp(line, "ready\n") == 0);
    }
    REQUIRE(spawn(&cp, call_argv));
    int rc = reap(&cp, 30000);
    drain(&cp, "call");
    CHECK_EQ_INT(rc, 0);
    for (int i = 0; i < 2; i++) {
        kill(sv[i].pid, SIGTERM);
        CHECK_EQ_INT(reap(&sv[i], 10000), 0);
        drain(&sv[i], "serve");
    }
    unsetenv("PSRPC_PEER_CA");
    nt_server_kill(&s);
}

TEST_MAIN()
