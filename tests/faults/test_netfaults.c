/* Network faults through tests/faults/faultproxy.py (test plan group D), on
 * the bus named by PSRPC_NETFAULTS_BUS (redis or nats; the broker from
 * PSRPC_TEST_REDIS_URL / PSRPC_TEST_NATS_URL). PSRPC_NETFAULTS_SIDE says
 * whose bus goes through the proxy: "client" (the default; the server's goes
 * straight to the broker) or "server" (the other way round: the faults hit
 * the server's subscriptions, claims and responses). Under load (about 800
 * calls/s, each held 300 ms by the server: about 240 calls in flight), one
 * scenario after another: latency with jitter, resets at random byte offsets
 * (mid-frame), a black hole (no reset), a half-close, a bandwidth limit.
 * Every call must end with exactly one outcome, no later than its deadline
 * plus SLACK_MS; after each fault is lifted calls succeed again; descriptors
 * return to their baseline. Reconnect times (DISCONNECTED -> CONNECTED on the
 * proxied bus) are printed. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include "local/util.h"

extern char **environ;

#define MAX_CALLS 60000
#define TIMEOUT_MS 2000
#define HOLD_MS 300
#define SLACK_MS 300

/* ---- the proxy ---- */

typedef struct proxy {
    pid_t pid;
    int port, ctl_port;
    FILE *ctl;
} proxy;

static bool proxy_start(proxy *p, const char *target) {
    int out[2];
    if (pipe(out) != 0)
        return false;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    posix_spawn_file_actions_addclose(&fa, out[0]);
    char *argv[] = {"python3",  (char *)PSRPC_FAULTPROXY, "--listen", "0", "--control", "0",
                    "--target", (char *)target,           "--seed",   "7", NULL};
    int rc = posix_spawnp(&p->pid, "python3", &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(out[1]);
    if (rc != 0) {
        close(out[0]);
        return false;
    }
    FILE *f = fdopen(out[0], "r");
    bool ok = f && fscanf(f, "ports %d %d", &p->port, &p->ctl_port) == 2;
    if (f)
        fclose(f);
    if (!ok)
        return false;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons((uint16_t)p->ctl_port);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0)
        return false;
    p->ctl = fdopen(fd, "r+");
    return p->ctl != NULL;
}

/* Sends one command; true if answered "ok". */
static bool proxy_cmd(proxy *p, const char *cmd, char *reply, size_t n) {
    char line[256];
    fprintf(p->ctl, "%s\n", cmd);
    fflush(p->ctl);
    if (!fgets(line, sizeof line, p->ctl))
        return false;
    line[strcspn(line, "\n")] = 0;
    if (reply)
        snprintf(reply, n, "%s", line);
    return strncmp(line, "ok", 2) == 0;
}

static void proxy_stop(proxy *p) {
    if (p->ctl) {
        proxy_cmd(p, "quit", NULL, 0);
        fclose(p->ctl);
    }
    if (p->pid > 0) {
        int st;
        for (int i = 0; i < 50 && waitpid(p->pid, &st, WNOHANG) == 0; i++)
            th_sleep_ms(20);
        if (waitpid(p->pid, &st, WNOHANG) == 0) {
            kill(p->pid, SIGKILL);
            waitpid(p->pid, &st, 0);
        }
    }
}

/* ---- the server: holds each request HOLD_MS, answered by a thread ---- */

typedef struct held {
    psrpc_request *req;
    long long at;
} held;

typedef struct holder {
    pthread_mutex_t mu;
    held *q;
    size_t head, len, cap;
    atomic_bool stop;
    atomic_int handled;
} holder;

static void hold_handler(psrpc_request *req, void *ud) {
    holder *h = (holder *)ud;
    atomic_fetch_add(&h->handled, 1);
    pthread_mutex_lock(&h->mu);
    if (h->len == h->cap) {
        pthread_mutex_unlock(&h->mu);
        psrpc_request_fail(req, PSRPC_RESOURCE_EXHAUSTED, "test holder full");
        return;
    }
    h->q[(h->head + h->len) % h->cap] = (held){req, th_now_ms()};
    h->len++;
    pthread_mutex_unlock(&h->mu);
}

static void *holder_thread(void *arg) {
    holder *h = (holder *)arg;
    for (bool done = false; !done;) {
        pthread_mutex_lock(&h->mu);
        while (h->len && (atomic_load(&h->stop) || th_now_ms() - h->q[h->head].at >= HOLD_MS)) {
            psrpc_request *r = h->q[h->head].req;
            h->head = (h->head + 1) % h->cap;
            h->len--;
            pthread_mutex_unlock(&h->mu);
            const psrpc_msg *pl = psrpc_request_payload(r);
            psrpc_request_respond(r, psrpc_msg_data(pl), psrpc_msg_size(pl));
            pthread_mutex_lock(&h->mu);
        }
        done = atomic_load(&h->stop) && h->len == 0;
        pthread_mutex_unlock(&h->mu);
        if (!done)
            th_sleep_ms(5);
    }
    return NULL;
}

/* ---- load ---- */

typedef struct rec {
    long long issued, done;
    atomic_int count;
    int status;
} rec;

typedef struct load {
    psrpc_client *cl;
    psrpc_method m;
    rec *r;
    atomic_int n, inflight, max_inflight;
    atomic_bool stop;
} load;

static void load_cb(uint64_t id, const psrpc_msg *resp, const psrpc_error *e, const char *sid,
                    void *ud) {
    (void)id;
    (void)resp;
    (void)sid;
    rec *r = (rec *)ud;
    r->status = e ? e->status : PSRPC_OK;
    r->done = th_now_ms();
    atomic_fetch_add(&r->count, 1);
}

static load *g_load;

static void *load_thread(void *arg) {
    load *l = (load *)arg;
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.timeout_ms = TIMEOUT_MS;
    while (!atomic_load(&l->stop)) {
        for (int k = 0; k < 4; k++) {
            int i = atomic_load(&l->n);
            if (i >= MAX_CALLS)
                break;
            rec *r = &l->r[i];
            r->issued = th_now_ms();
            char payload[48];
            snprintf(payload, sizeof payload, "call-%d", i);
            if (psrpc_client_call(NULL, l->cl, &l->m, payload, strlen(payload), &o, load_cb, r) !=
                PSRPC_OK) {
                r->status = psrpc_last_error_status();
                r->done = th_now_ms();
                atomic_fetch_add(&r->count, 1);
            }
            atomic_store(&l->n, i + 1);
        }
        th_sleep_ms(5);
    }
    return NULL;
}

/* In flight now: issued, not completed. */
static int inflight(load *l) {
    int n = atomic_load(&l->n), c = 0;
    for (int i = n > 3000 ? n - 3000 : 0; i < n; i++)
        c += atomic_load(&l->r[i].count) == 0;
    return c;
}

/* ---- the watcher: reconnect times ---- */

typedef struct watch {
    pthread_mutex_t mu;
    long long down_at;
    int downs, ups;
    long long rec_ms[256];
    int nrec;
} watch;

static void watch_cb(int state, const psrpc_error *e, void *ud) {
    (void)e;
    watch *w = (watch *)ud;
    pthread_mutex_lock(&w->mu);
    if (state == PSRPC_BUS_DISCONNECTED && w->down_at == 0) {
        w->down_at = th_now_ms();
        w->downs++;
    } else if (state == PSRPC_BUS_CONNECTED) {
        w->ups++;
        if (w->down_at && w->nrec < 256)
            w->rec_ms[w->nrec++] = th_now_ms() - w->down_at;
        w->down_at = 0;
    }
    pthread_mutex_unlock(&w->mu);
}
static void watch_release(void *ud) { (void)ud; }

/* Checks the calls issued in [from, to): each has exactly one outcome, on
 * time; returns the number that succeeded (and the count in *total). */
static int check_calls(load *l, int from, int to, int *total, const char *what) {
    int ok = 0, late = 0, bad = 0, st_other = 0;
    long long worst = 0;
    for (int i = from; i < to; i++) {
        rec *r = &l->r[i];
        int c = atomic_load(&r->count);
        if (c != 1) {
            bad++;
            continue;
        }
        long long over = r->done - (r->issued + TIMEOUT_MS);
        if (over > worst)
            worst = over;
        if (over > tu_ms(SLACK_MS))
            late++;
        if (r->status == PSRPC_OK)
            ok++;
        else if (r->status != PSRPC_UNAVAILABLE && r->status != PSRPC_DEADLINE_EXCEEDED)
            st_other++;
    }
    *total = to - from;
    fprintf(stderr,
            "  %-34s calls %5d: ok %5d, failed %5d (other status %d); not exactly one "
            "outcome %d; late %d (worst %+lld ms vs deadline)\n",
            what, to - from, ok, to - from - ok, st_other, bad, late, worst);
    CHECK_EQ_INT(bad, 0);
    CHECK_EQ_INT(late, 0);
    CHECK_EQ_INT(st_other, 0);
    return ok;
}

/* Runs the load for ms; returns the index of the first call issued after. */
static int run_for(load *l, long ms, int *max_in_flight) {
    long long end = th_now_ms() + ms;
    while (th_now_ms() < end) {
        th_sleep_ms(250);
        int f = inflight(l);
        if (f > *max_in_flight)
            *max_in_flight = f;
    }
    return atomic_load(&l->n);
}

/* One scenario: fault for fault_ms, then pass and heal_ms more. The calls
 * issued in the last second of the healed phase must (almost) all succeed. */
static void scenario(proxy *p, load *l, watch *w, const char *name, const char *const *cmds,
                     long fault_ms, long heal_ms) {
    int max_if = 0;
    pthread_mutex_lock(&w->mu);
    int nrec0 = w->nrec;
    pthread_mutex_unlock(&w->mu);
    int a = atomic_load(&l->n);
    for (const char *const *c = cmds; *c; c++)
        CHECK(proxy_cmd(p, *c, NULL, 0));
    int b = run_for(l, fault_ms, &max_if);
    CHECK(proxy_cmd(p, "pass", NULL, 0));
    int c = run_for(l, heal_ms - 1000, &max_if);
    int d = run_for(l, 1000, &max_if);
    /* wait until every call of this scenario has ended */
    long long until = th_now_ms() + TIMEOUT_MS + tu_ms(SLACK_MS) + 500;
    while (th_now_ms() < until) {
        bool all = true;
        for (int i = a; i < d && all; i++)
            all = atomic_load(&l->r[i].count) != 0;
        if (all)
            break;
        th_sleep_ms(20);
    }
    int total;
    char what[128];
    snprintf(what, sizeof what, "%s (fault):", name);
    check_calls(l, a, b, &total, what);
    snprintf(what, sizeof what, "%s (healing):", name);
    check_calls(l, b, c, &total, what);
    snprintf(what, sizeof what, "%s (healed, last 1 s):", name);
    int ok = check_calls(l, c, d, &total, what);
    CHECK(total > 0 && ok * 100 >= total * 99);
    char stats[256] = "";
    proxy_cmd(p, "stats", stats, sizeof stats);
    pthread_mutex_lock(&w->mu);
    char recs[512] = "";
    size_t off = 0;
    for (int i = nrec0; i < w->nrec && off < sizeof recs - 16; i++)
        off += (size_t)snprintf(recs + off, sizeof recs - off, "%s%lld", i > nrec0 ? "," : "",
                                w->rec_ms[i]);
    pthread_mutex_unlock(&w->mu);
    fprintf(stderr, "  %s: max in flight %d; reconnects (ms) [%s]; proxy %s\n", name, max_if, recs,
            stats);
    CHECK(max_if >= 200);
}

TEST(network_faults_under_load) {
    const char *bus = getenv("PSRPC_NETFAULTS_BUS");
    REQUIRE(bus && (!strcmp(bus, "redis") || !strcmp(bus, "nats")));
    bool redis = !strcmp(bus, "redis");
    const char *side = getenv("PSRPC_NETFAULTS_SIDE");
    if (!side)
        side = "client";
    REQUIRE(!strcmp(side, "client") || !strcmp(side, "server"));
    bool server_side = !strcmp(side, "server");
    const char *url = getenv(redis ? "PSRPC_TEST_REDIS_URL" : "PSRPC_TEST_NATS_URL");
    if (!url)
        url = redis ? "redis://127.0.0.1:6379" : "nats://127.0.0.1:4222";
    const char *hp = strstr(url, "://");
    REQUIRE(hp);
    char target[128];
    snprintf(target, sizeof target, "%s", hp + 3);
    target[strcspn(target, "/")] = 0;

    /* Baseline after a first bus came and went (libraries keep a few
     * process-wide descriptors once initialised). */
    psrpc_bus *first = NULL;
    REQUIRE(psrpc_bus_open(&first, url, NULL) == PSRPC_OK);
    CHECK(psrpc_bus_wait_ready(first, tu_ms(5000)) == PSRPC_OK);
    psrpc_bus_free(first);
    th_sleep_ms(100);
    int fds0 = th_count_fds();
    proxy p = {0};
    REQUIRE(proxy_start(&p, target));
    char purl[128];
    snprintf(purl, sizeof purl, "%s://127.0.0.1:%d", redis ? "redis" : "nats", p.port);

    psrpc_bus_options o = PSRPC_BUS_OPTIONS_INIT;
    o.ping_interval_ms = 500;
    o.reconnect_wait_ms = 100;
    o.reconnect_wait_max_ms = 1000;
    o.connect_timeout_ms = 1000;
    psrpc_bus *cb = NULL, *sb = NULL;
    REQUIRE(psrpc_bus_open(&cb, server_side ? url : purl, &o) == PSRPC_OK);
    REQUIRE(psrpc_bus_open(&sb, server_side ? purl : url, &o) == PSRPC_OK);
    REQUIRE(psrpc_bus_wait_ready(cb, tu_ms(5000)) == PSRPC_OK);
    REQUIRE(psrpc_bus_wait_ready(sb, tu_ms(5000)) == PSRPC_OK);
    psrpc_bus *faulty = server_side ? sb : cb, *direct = server_side ? cb : sb;
    fprintf(stderr, "  the %s's bus goes through the proxy\n", side);
    watch *w = (watch *)calloc(1, sizeof *w);
    pthread_mutex_init(&w->mu, NULL);
    REQUIRE(psrpc_bus_watch(faulty, watch_cb, w, watch_release) == PSRPC_OK);

    char svc[64];
    tu_service(svc, sizeof svc);
    psrpc_method m = tu_method("Echo", PSRPC_ROUTING_QUEUE, 0);
    holder *h = (holder *)calloc(1, sizeof *h);
    pthread_mutex_init(&h->mu, NULL);
    h->cap = 8192;
    h->q = (held *)calloc(h->cap, sizeof *h->q);
    psrpc_server *srv = NULL;
    REQUIRE(psrpc_server_create(&srv, sb, svc, NULL) == PSRPC_OK);
    REQUIRE(psrpc_server_register(srv, &m, NULL, 0, hold_handler, NULL, NULL, h, NULL) == PSRPC_OK);
    REQUIRE(psrpc_server_wait_ready(srv, tu_ms(5000)) == PSRPC_OK);
    pthread_t ht;
    REQUIRE(pthread_create(&ht, NULL, holder_thread, h) == 0);

    load *l = (load *)calloc(1, sizeof *l);
    l->r = (rec *)calloc(MAX_CALLS, sizeof *l->r);
    l->m = m;
    l->cl = tu_client(cb, svc, TIMEOUT_MS, 1000);
    REQUIRE(l->cl);
    g_load = l;
    pthread_t lt;
    REQUIRE(pthread_create(&lt, NULL, load_thread, l) == 0);
    int max_if = 0;
    int warm = run_for(l, 2000, &max_if);
    (void)warm;

    /* The server's side gets the faults that break its connection (the
     * slow-link ones behave as on the client's side, only later). */
    if (!server_side) {
        const char *lat[] = {"delay 100 50", NULL};
        scenario(&p, l, w, "latency 100+-50 ms", lat, 5000, 2500);
    }
    const char *rst[] = {"reset_random 2000 300000", NULL};
    scenario(&p, l, w, "resets at random offsets", rst, 6000, 3500);
    const char *bh[] = {"blackhole on", NULL};
    scenario(&p, l, w, "black hole 3 s", bh, 3000, 4000);
    const char *hc[] = {"halfclose", NULL};
    scenario(&p, l, w, "half-close", hc, 2000, 3500);
    if (!server_side) {
        const char *bw[] = {"rate 20000", NULL};
        scenario(&p, l, w, "bandwidth 20 kB/s", bw, 3000, 4000);
    }

    atomic_store(&l->stop, true);
    pthread_join(lt, NULL);
    CHECK(WAIT_UNTIL(inflight(l) == 0, TIMEOUT_MS + 2000));
    int total;
    check_calls(l, 0, atomic_load(&l->n), &total, "all:");
    psrpc_bus_stats bs = tu_stats(faulty), ds = tu_stats(direct);
    fprintf(stderr,
            "  %s bus: connects %llu, disconnects %llu, reconnect attempts %llu; the other bus: "
            "disconnects %llu\n",
            side, (unsigned long long)bs.connects, (unsigned long long)bs.disconnects,
            (unsigned long long)bs.reconnect_attempts, (unsigned long long)ds.disconnects);
    CHECK(bs.disconnects >= 3); /* resets, black hole, half-close were noticed */
    CHECK(ds.disconnects == 0); /* the faults stayed on the proxied bus */

    psrpc_client_free(l->cl);
    psrpc_server_free(srv);
    atomic_store(&h->stop, true);
    pthread_join(ht, NULL);
    psrpc_bus_free(cb);
    psrpc_bus_free(sb);
    proxy_stop(&p);
    th_sleep_ms(200);
    int fds1 = th_count_fds();
    fprintf(stderr, "  fds: %d before, %d after\n", fds0, fds1);
    CHECK(fds1 <= fds0 + 1);
    pthread_mutex_destroy(&h->mu);
    free(h->q);
    free(h);
    pthread_mutex_destroy(&w->mu);
    free(w);
    free(l->r);
    free(l);
}

TEST_MAIN()
