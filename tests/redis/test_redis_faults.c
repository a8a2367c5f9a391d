/* Redis faults on a private redis-server (test plan group B): kill -9 and
 * restart under load, SIGSTOP/SIGCONT, CLIENT KILL TYPE pubsub and exact
 * resubscription, a bus opened while Redis is down, ready-then-publish races,
 * queue-lock keys (B10), oversize inbound messages, the channel prefix.
 * White box only for channel names and raw injection. Every wait is bounded
 * and scaled by PSRPC_TEST_TIME_FACTOR. */
#include <openssl/evp.h>
#include <openssl/sha.h>

#include "bus.h"
#include "channel.h"
#include "failfast.h"
#include "rt.h"

static psrpc_method echo_method(void) { return tu_method("Echo", PSRPC_ROUTING_QUEUE, 0); }

/* ------------------------------------------------------------------------ */
/* B1: kill -9 and restart under load                                        */
/* ------------------------------------------------------------------------ */

#define LOAD_MAX 2000

/* Issues one call every period_ms for ms. */
static void load_run(rt_load *l, psrpc_client *cl, const psrpc_method *m, long ms, long period_ms) {
    long long end = th_now_ms() + ms;
    while (th_now_ms() < end) {
        rt_load_issue(l, cl, m);
        th_sleep_ms(period_ms);
    }
}

TEST(kill9_restart_under_load) {
    rs_server rs = {0};
    REQUIRE(rs_start(&rs));
    psrpc_bus_options o = rt_opts(500);
    psrpc_bus *sb = rt_bus_ready(rs.url, &o), *cb = rt_bus_ready(rs.url, &o);
    REQUIRE(sb && cb);
    rt_watch *w = rt_watch_new(cb);
    char svc[64];
    tu_service(svc, sizeof svc);
    psrpc_method m = echo_method();
    tu_srv *srv = tu_srv_new(sb, svc, NULL, TU_ECHO);
    REQUIRE(srv->server && tu_srv_register(srv, &m, NULL, 0) == PSRPC_OK);
    psrpc_client *cl = tu_client(cb, svc, 1000, 500);
    REQUIRE(cl);
    REQUIRE(rt_call(cl, &m, "warmup", NULL, 0, 2000) == PSRPC_OK);
    psrpc_bus_stats s0 = tu_stats(cb);

    rt_load *l = rt_load_new(LOAD_MAX);
    load_run(l, cl, &m, 1000, 10); /* ~100 requests/s */
    int before_kill = l->n;
    long long kill_ms = th_now_ms();
    int ev0 = rt_nevents(w);
    rs_kill9(&rs);
    load_run(l, cl, &m, 3000, 10);
    int before_restart = l->n;
    REQUIRE(rs_restart(&rs));
    long long restart_ms = th_now_ms();
    load_run(l, cl, &m, 4000, 10);
    int total = l->n;

    /* every request ends exactly once, within its deadline + margin */
    for (int i = 0; i < total; i++)
        if (l->rc[i] == PSRPC_OK)
            tu_wait_count(&l->calls[i].count, 1, 3000);
    int ok = 0, unavailable = 0, deadline = 0, other = 0, not_once = 0, fast_unavail = 0;
    long long first_ok_after_restart = -1, down_ms = rt_event_at(w, ev0, PSRPC_BUS_DISCONNECTED);
    long long up_ms = rt_event_at(w, ev0, PSRPC_BUS_CONNECTED);
    int late_failures = 0;
    char sample[600] = "";
    for (int i = 0; i < total; i++) {
        tu_call *c = &l->calls[i];
        int st = l->rc[i] != PSRPC_OK ? l->rc[i] : c->status;
        if (l->rc[i] == PSRPC_OK && atomic_load(&c->count) != 1)
            not_once++;
        if (l->rc[i] == PSRPC_OK && atomic_load(&c->bad))
            not_once++;
        if (st == PSRPC_OK) {
            ok++;
            if (l->issued_ms[i] >= restart_ms &&
                (first_ok_after_restart < 0 || c->at_ms < first_ok_after_restart))
                first_ok_after_restart = c->at_ms;
        } else if (st == PSRPC_UNAVAILABLE) {
            unavailable++;
            if (l->rc[i] == PSRPC_OK && c->at_ms - l->issued_ms[i] <= 100 &&
                tu_contains_ci(c->message, "unreachable")) {
                fast_unavail++;
                if (!sample[0])
                    snprintf(sample, sizeof sample, "%s", c->message);
            }
        } else if (st == PSRPC_DEADLINE_EXCEEDED) {
            deadline++;
        } else {
            other++;
            fprintf(stderr, "  request %d: %s %s\n", i, psrpc_status_name(st), c->message);
        }
        /* issued 1 s after the bus is back: must succeed */
        if (up_ms > 0 && l->issued_ms[i] > up_ms + tu_ms(1000) && st != PSRPC_OK)
            late_failures++;
    }
    fprintf(stderr,
            "  %d requests: %d ok, %d unavailable (%d failed fast), %d deadline, %d other; "
            "%d before kill, %d during outage\n",
            total, ok, unavailable, fast_unavail, deadline, other, before_kill,
            before_restart - before_kill);
    fprintf(stderr,
            "  outage noticed after %lld ms; bus back %lld ms after restart; first "
            "success %lld ms after restart\n",
            down_ms - kill_ms, up_ms - restart_ms, first_ok_after_restart - restart_ms);
    fprintf(stderr, "  fail-fast message: %s\n", sample);
    CHECK_EQ_INT(not_once, 0);
    CHECK_EQ_INT(other, 0);
    CHECK(fast_unavail > 0);
    CHECK(down_ms > 0 && down_ms - kill_ms <= tu_ms(1000));
    CHECK(first_ok_after_restart > 0 && first_ok_after_restart - restart_ms <= tu_ms(3000));
    CHECK_EQ_INT(late_failures, 0);
    for (int i = 0; i < before_kill - 5; i++)
        CHECK(l->calls[i].status == PSRPC_OK);
    psrpc_bus_stats s1 = tu_stats(cb);
    CHECK(s1.reconnect_attempts > s0.reconnect_attempts);
    CHECK(s1.disconnects >= s0.disconnects + 1);
    CHECK(s1.connects >= s0.connects + 1);
    CHECK_EQ_INT(atomic_load(&srv->answer_errors), 0);

    psrpc_client_free(cl);
    psrpc_server_free(srv->server);
    psrpc_bus_free(cb);
    psrpc_bus_free(sb);
    tu_srv_destroy(srv);
    rt_load_free(l);
    rs_stop(&rs);
}

/* ------------------------------------------------------------------------ */
/* A5-style burst: 1,000 requests issued back to back, pipelined             */
/* ------------------------------------------------------------------------ */

TEST(burst_of_requests_pipelined) {
    rs_server rs = {0};
    REQUIRE(rs_start(&rs));
    psrpc_bus_options o = rt_opts(1000);
    psrpc_bus *sb = rt_bus_ready(rs.url, &o), *cb = rt_bus_ready(rs.url, &o);
    REQUIRE(sb && cb);
    char svc[64];
    tu_service(svc, sizeof svc);
    psrpc_method m = echo_method();
    tu_srv *srv = tu_srv_new(sb, svc, NULL, TU_ECHO);
    REQUIRE(srv->server && tu_srv_register(srv, &m, NULL, 0) == PSRPC_OK);
    psrpc_client *cl = tu_client(cb, svc, 10000, 500);
    REQUIRE(rt_call(cl, &m, "warmup", NULL, 0, 2000) == PSRPC_OK);
    const int n = 1000;
    tu_call *c = tu_calls_new((size_t)n);
    long long t0 = th_now_ms();
    for (int i = 0; i < n; i++) {
        char p[32];
        snprintf(p, sizeof p, "b%d", i);
        REQUIRE(tu_call_async(cl, &m, p, NULL, &c[i]) == PSRPC_OK);
    }
    int done = 0, ok = 0;
    for (int i = 0; i < n; i++) {
        if (tu_wait_count(&c[i].count, 1, 10000))
            done++;
        char p[32];
        snprintf(p, sizeof p, "b%d", i);
        ok += c[i].status == PSRPC_OK && strcmp(c[i].response, p) == 0;
    }
    long long took = th_now_ms() - t0;
    fprintf(stderr, "  %d requests answered in %lld ms\n", ok, took);
    CHECK_EQ_INT(done, n);
    CHECK_EQ_INT(ok, n);
    CHECK_EQ_INT(atomic_load(&srv->handled), n + 1);
    psrpc_client_free(cl);
    psrpc_server_free(srv->server);
    psrpc_bus_free(cb);
    psrpc_bus_free(sb);
    tu_srv_destroy(srv);
    free(c);
    rs_stop(&rs);
}

/* ------------------------------------------------------------------------ */
/* B2: repeated kill -9 / restart cycles: no fd or handle leaks               */
/* ------------------------------------------------------------------------ */

TEST(restart_cycles_leave_no_fds) {
    rs_server rs = {0};
    REQUIRE(rs_start(&rs));
    psrpc_bus_options o = rt_opts(500);
    psrpc_bus *sb = rt_bus_ready(rs.url, &o), *cb = rt_bus_ready(rs.url, &o);
    REQUIRE(sb && cb);
    char svc[64];
    tu_service(svc, sizeof svc);
    psrpc_method m = echo_method();
    tu_srv *srv = tu_srv_new(sb, svc, NULL, TU_ECHO);
    REQUIRE(srv->server && tu_srv_register(srv, &m, NULL, 0) == PSRPC_OK);
    psrpc_client *cl = tu_client(cb, svc, 1000, 500);
    REQUIRE(rt_call(cl, &m, "base", NULL, 0, 2000) == PSRPC_OK);
    int fds0 = th_count_fds();
    const int cycles = 10;
    int recovered = 0;
    for (int i = 0; i < cycles; i++) {
        REQUIRE(rs_restart(&rs));
        if (WAIT_UNTIL(rt_call(cl, &m, "cycle", NULL, 0, 500) == PSRPC_OK, 3000))
            recovered++;
    }
    CHECK_EQ_INT(recovered, cycles);
    int fds1 = th_count_fds();
    fprintf(stderr, "  fds before %d, after %d restarts %d\n", fds0, cycles, fds1);
    CHECK(fds1 <= fds0 + 2 && fds1 >= fds0 - 2);
    psrpc_client_free(cl);
    psrpc_server_free(srv->server);
    psrpc_bus_free(cb);
    psrpc_bus_free(sb);
    tu_srv_destroy(srv);
    rs_stop(&rs);
}

/* ------------------------------------------------------------------------ */
/* B4: SIGSTOP / SIGCONT                                                     */
/* ------------------------------------------------------------------------ */

TEST(sigstop_noticed_by_ping) {
    rs_server rs = {0};
    REQUIRE(rs_start(&rs));
    const int64_t ping = 300;
    psrpc_bus_options o = rt_opts(ping);
    psrpc_bus *sb = rt_bus_ready(rs.url, &o), *cb = rt_bus_ready(rs.url, &o);
    REQUIRE(sb && cb);
    rt_watch *w = rt_watch_new(cb);
    char svc[64];
    tu_service(svc, sizeof svc);
    psrpc_method m = echo_method();
    tu_srv *srv = tu_srv_new(sb, svc, NULL, TU_ECHO);
    REQUIRE(srv->server && tu_srv_register(srv, &m, NULL, 0) == PSRPC_OK);
    psrpc_client *cl = tu_client(cb, svc, 1000, 500);
    REQUIRE(rt_call(cl, &m, "before", NULL, 0, 2000) == PSRPC_OK);

    int ev0 = rt_nevents(w);
    long long stop_ms = th_now_ms();
    rs_signal(&rs, SIGSTOP);
    /* dead after 2 intervals without a PONG; a tick is up to 1 interval late */
    long long down = rt_wait_event(w, ev0, PSRPC_BUS_DISCONNECTED, 5000);
    char msg[512];
    rt_last(w, NULL, msg, sizeof msg);
    fprintf(stderr, "  SIGSTOP noticed after %lld ms (ping %lld ms): %s\n", down - stop_ms,
            (long long)ping, msg);
    CHECK(down > 0 && down - stop_ms <= tu_ms(3 * ping + 400));
    CHECK(tu_contains_ci(msg, "PING"));
    /* while stopped: calls fail fast */
    tu_call *c = tu_calls_new(1);
    long long t = th_now_ms();
    CHECK(tu_call_wait(cl, &m, "during", NULL, c, 2000));
    CHECK_EQ_INT(c->status, PSRPC_UNAVAILABLE);
    CHECK(c->at_ms - t <= tu_ms(100));
    th_sleep_ms(1500);
    int ev1 = rt_nevents(w);
    long long cont_ms = th_now_ms();
    rs_signal(&rs, SIGCONT);
    long long up = rt_wait_event(w, ev1, PSRPC_BUS_CONNECTED, 5000);
    fprintf(stderr, "  reconnected %lld ms after SIGCONT\n", up - cont_ms);
    CHECK(up > 0 && up - cont_ms <= tu_ms(3000));
    /* the server's bus reconnects too; then calls work */
    CHECK(WAIT_UNTIL(rt_call(cl, &m, "after", NULL, 0, 1000) == PSRPC_OK, 5000));

    psrpc_client_free(cl);
    psrpc_server_free(srv->server);
    psrpc_bus_free(cb);
    psrpc_bus_free(sb);
    tu_srv_destroy(srv);
    free(c);
    rs_stop(&rs);
}

/* ------------------------------------------------------------------------ */
/* B5: exact resubscription after CLIENT KILL TYPE pubsub and a restart      */
/* ------------------------------------------------------------------------ */

/* Sorted, newline-joined PUBSUB CHANNELS matching pattern. */
static void pubsub_channels(const rs_server *rs, const char *pattern, char *out, size_t n) {
    out[0] = 0;
    redisReply *r = rs_cmd(rs, NULL, "PUBSUB CHANNELS %s", pattern);
    if (!r)
        return;
    if (r->type == REDIS_REPLY_ARRAY) {
        char **v = (char **)calloc(r->elements + 1, sizeof *v);
        for (size_t i = 0; i < r->elements; i++)
            v[i] = r->element[i]->str;
        for (size_t i = 0; i < r->elements; i++)
            for (size_t j = i + 1; j < r->elements; j++)
                if (strcmp(v[j], v[i]) < 0) {
                    char *t = v[i];
                    v[i] = v[j];
                    v[j] = t;
                }
        size_t len = 0;
        for (size_t i = 0; i < r->elements && len < n; i++)
            len += (size_t)snprintf(out + len, n - len, "%s\n", v[i]);
        free(v);
    }
    freeReplyObject(r);
}

static int count_lines(const char *s) {
    int n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

#define NTOPICS 20

TEST(resubscribe_exact_after_client_kill_and_restart) {
    rs_server rs = {0};
    REQUIRE(rs_start(&rs));
    psrpc_bus_options o = rt_opts(500);
    psrpc_bus *sb = rt_bus_ready(rs.url, &o), *cb = rt_bus_ready(rs.url, &o);
    REQUIRE(sb && cb);
    rt_watch *ws = rt_watch_new(sb);
    char svc[64];
    tu_service(svc, sizeof svc);
    psrpc_method m = tu_method("Topic", PSRPC_ROUTING_QUEUE, PSRPC_METHOD_TOPICS);
    tu_srv *srv = tu_srv_new(sb, svc, NULL, TU_ECHO);
    REQUIRE(srv->server);
    char topics[NTOPICS][16];
    for (int i = 0; i < NTOPICS; i++) {
        snprintf(topics[i], sizeof topics[i], "t%d", i);
        const char *tp[1] = {topics[i]};
        REQUIRE(tu_srv_register(srv, &m, tp, 1) == PSRPC_OK);
    }
    psrpc_client *cl = tu_client(cb, svc, 1000, 500);
    const char *t0[1] = {topics[0]};
    REQUIRE(rt_call(cl, &m, "x", t0, 1, 2000) == PSRPC_OK);

    /* what is subscribed now: the 20 request channels + the client's replies */
    char pattern[128], before[8192], after[8192];
    snprintf(pattern, sizeof pattern, "*%s*", svc);
    pubsub_channels(&rs, pattern, before, sizeof before);
    for (int i = 0; i < NTOPICS; i++) {
        psrpc__channel ch;
        const char *tp[1] = {topics[i]};
        REQUIRE(psrpc__channel_rpc(&ch, svc, "Topic", tp, 1, true) == PSRPC_OK);
        char line[300];
        snprintf(line, sizeof line, "%s\n", ch.legacy);
        CHECK(strstr(before, line) != NULL);
        psrpc__channel_clear(&ch);
    }
    CHECK(count_lines(before) >= NTOPICS + 2);

    /* CLIENT KILL TYPE pubsub: both buses' subscriber connections */
    int ev0 = rt_nevents(ws);
    redisReply *r = rs_cmd(&rs, NULL, "CLIENT KILL TYPE pubsub");
    REQUIRE(r && r->type == REDIS_REPLY_INTEGER);
    CHECK(r->integer == 2);
    freeReplyObject(r);
    long long kill_ms = th_now_ms();
    CHECK(rt_wait_event(ws, ev0, PSRPC_BUS_DISCONNECTED, 2000) > 0);
    CHECK(rt_wait_event(ws, ev0, PSRPC_BUS_CONNECTED, 2000) > 0);
    bool same = WAIT_UNTIL(
        (pubsub_channels(&rs, pattern, after, sizeof after), strcmp(before, after) == 0), 1000);
    fprintf(stderr, "  resubscribed %lld ms after CLIENT KILL\n", th_now_ms() - kill_ms);
    if (!same)
        fprintf(stderr, "  before:\n%s  after:\n%s", before, after);
    CHECK(same);
    for (int i = 0; i < NTOPICS; i++) {
        const char *tp[1] = {topics[i]};
        CHECK(WAIT_UNTIL(rt_call(cl, &m, topics[i], tp, 1, 1000) == PSRPC_OK, 3000));
    }

    /* restart: the same set within 3 s of redis accepting connections */
    REQUIRE(rs_restart(&rs));
    long long restart_ms = th_now_ms();
    same = WAIT_UNTIL(
        (pubsub_channels(&rs, pattern, after, sizeof after), strcmp(before, after) == 0), 3000);
    fprintf(stderr, "  resubscribed %lld ms after restart\n", th_now_ms() - restart_ms);
    CHECK(same);
    CHECK(WAIT_UNTIL(rt_call(cl, &m, "back", t0, 1, 1000) == PSRPC_OK, 3000));

    /* deregister: its channels (request and claim) go within 1 s, nothing else */
    REQUIRE(psrpc_server_deregister(srv->server, "Topic", t0, 1) == PSRPC_OK);
    char expect[8192] = "", tag[64];
    snprintf(tag, sizeof tag, "|Topic|t0|");
    size_t el = 0;
    for (const char *p = before; *p;) {
        const char *nl = strchr(p, '\n');
        size_t len = (size_t)(nl - p) + 1;
        char line[300];
        snprintf(line, sizeof line, "%.*s", (int)len, p);
        if (!strstr(line, tag))
            el += (size_t)snprintf(expect + el, sizeof expect - el, "%s", line);
        p = nl + 1;
    }
    CHECK_EQ_INT(count_lines(expect), count_lines(before) - 2);
    bool gone = WAIT_UNTIL(
        (pubsub_channels(&rs, pattern, after, sizeof after), strcmp(after, expect) == 0), 1000);
    if (!gone)
        fprintf(stderr, "  after deregistering t0, expected:\n%s  got:\n%s", expect, after);
    CHECK(gone);

    /* at most 2 connections per bus handle */
    r = rs_cmd(&rs, NULL, "CLIENT LIST");
    REQUIRE(r && r->type == REDIS_REPLY_STRING);
    int conns = count_lines(r->str) - 1; /* minus our own */
    freeReplyObject(r);
    CHECK_EQ_INT(conns, 4);

    psrpc_client_free(cl);
    psrpc_server_free(srv->server);
    psrpc_bus_free(cb);
    psrpc_bus_free(sb);
    tu_srv_destroy(srv);
    rs_stop(&rs);
}

/* ------------------------------------------------------------------------ */
/* B3: a bus opened while Redis is down                                      */
/* ------------------------------------------------------------------------ */

/* Fail fast from the first moment (issue 18): calls made right after the
 * open fail with the first attempt's error, not at their deadline. */
/* D5: a broker that accepts and never speaks, 20 attempts. */
TEST(no_greeting_attempts) { ff_no_greeting("redis"); }

TEST(first_attempt_failure_fails_waiting_calls) {
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", ff_refused_port());
    ff_check(url, 1000, "connection refused", 1500);
    int port = 0, fd = ff_silent_listener(&port);
    REQUIRE(fd >= 0);
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", port);
    ff_check(url, 800, "timed out", 2500);
    close(fd);
}

TEST(opened_while_down_then_started) {
    rs_server rs = {0};
    snprintf(rs.dir, sizeof rs.dir, "%s/psrpc-redis-XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    REQUIRE(mkdtemp(rs.dir));
    rs.port = rs_free_port();
    snprintf(rs.url, sizeof rs.url, "redis://127.0.0.1:%d", rs.port);
    psrpc_bus_options o = rt_opts(500);
    /* One bus for server and client (one process): its server subscription
     * is part of the resubscription that precedes CONNECTED, so the waiting
     * call, sent on CONNECTED, always finds the server. With two buses the
     * client's could connect first and its request reach nobody. */
    psrpc_bus *cb = rt_bus(rs.url, &o), *sb = cb;
    REQUIRE(cb);
    rt_watch *w = rt_watch_new(cb);
    char svc[64];
    tu_service(svc, sizeof svc);
    psrpc_method m = echo_method();
    tu_srv *srv = tu_srv_new(sb, svc, NULL, TU_ECHO);
    REQUIRE(srv->server);
    REQUIRE(psrpc_server_register(srv->server, &m, NULL, 0, tu_srv_handler, NULL, NULL, srv,
                                  tu_srv_release) == PSRPC_OK);
    psrpc_client *cl = tu_client(cb, svc, 1000, 500);
    REQUIRE(cl);
    /* creation succeeded; the bus reports the refusal */
    CHECK(rt_wait_event(w, 0, PSRPC_BUS_DISCONNECTED, 2000) > 0);
    char msg[512];
    rt_last(w, NULL, msg, sizeof msg);
    CHECK(tu_contains_ci(msg, "connection refused"));
    CHECK_EQ_INT(psrpc_bus_wait_ready(cb, 200), PSRPC_DEADLINE_EXCEEDED);
    /* requests fail fast */
    tu_call *c = tu_calls_new(2);
    long long t = th_now_ms();
    CHECK(tu_call_wait(cl, &m, "x", NULL, &c[0], 2000));
    fprintf(stderr, "  call on a client created while down: %s after %lld ms: %s\n",
            psrpc_status_name(c[0].status), c[0].at_ms - t, c[0].message);
    CHECK_EQ_INT(c[0].status, PSRPC_UNAVAILABLE);
    CHECK(c[0].at_ms - t <= tu_ms(50));
    CHECK(tu_contains_ci(c[0].message, "unreachable"));
    /* wait-for-ready: a request issued now succeeds once Redis is there */
    psrpc_call_options co = PSRPC_CALL_OPTIONS_INIT;
    co.flags = PSRPC_CALL_WAIT_FOR_READY;
    co.timeout_ms = 6000;
    CHECK(tu_call_async(cl, &m, "waited", &co, &c[1]) == PSRPC_OK);
    th_sleep_ms(1000);
    REQUIRE(rs_spawn(&rs));
    long long start_ms = th_now_ms();
    CHECK(psrpc_bus_wait_ready(cb, tu_ms(3000)) == PSRPC_OK);
    CHECK(psrpc_server_wait_ready(srv->server, tu_ms(3000)) == PSRPC_OK);
    CHECK(WAIT_UNTIL(rt_call(cl, &m, "after", NULL, 0, 1000) == PSRPC_OK, 3000));
    fprintf(stderr, "  first success %lld ms after redis started\n", th_now_ms() - start_ms);
    CHECK(th_now_ms() - start_ms <= tu_ms(3000));
    CHECK(tu_wait_count(&c[1].count, 1, 6000));
    CHECK_EQ_INT(c[1].status, PSRPC_OK);
    CHECK_EQ_STR(c[1].response, "waited");

    psrpc_client_free(cl);
    psrpc_server_free(srv->server);
    psrpc_bus_free(cb);
    tu_srv_destroy(srv);
    free(c);
    rs_stop(&rs);
}

/* ------------------------------------------------------------------------ */
/* Readiness: a message published right after "ready" is never lost         */
/* ------------------------------------------------------------------------ */

typedef struct got {
    atomic_int n;
} got;

static void got_cb(psrpc_sub *sub, const psrpc_msg *msg, void *ud) {
    (void)sub;
    (void)msg;
    atomic_fetch_add(&((got *)ud)->n, 1);
}

TEST(publish_right_after_ready_is_never_lost) {
    rs_server rs = {0};
    REQUIRE(rs_start(&rs));
    psrpc_bus_options o = rt_opts(1000);
    psrpc_bus *pb = rt_bus_ready(rs.url, &o), *sbus = rt_bus_ready(rs.url, &o);
    REQUIRE(pb && sbus);
    char svc[64];
    tu_service(svc, sizeof svc);
    psrpc_method m =
        tu_method("Updates", PSRPC_ROUTING_MULTI, PSRPC_METHOD_SUBSCRIPTION | PSRPC_METHOD_TOPICS);
    m.output_type = "test.Update";
    psrpc_server *pub = NULL;
    REQUIRE(psrpc_server_create(&pub, pb, svc, NULL) == PSRPC_OK);
    psrpc_client *cl = tu_client(sbus, svc, 1000, 500);
    REQUIRE(cl);
    const int iters = 200;
    got *g = (got *)calloc((size_t)iters, sizeof *g);
    int lost = 0;
    for (int i = 0; i < iters; i++) {
        char topic[32];
        snprintf(topic, sizeof topic, "r%d", i);
        const char *tp[1] = {topic};
        psrpc_sub *sub = NULL;
        REQUIRE(psrpc_client_subscribe(&sub, cl, &m, tp, 1, got_cb, NULL, &g[i], NULL) == PSRPC_OK);
        REQUIRE(psrpc_sub_wait_ready(sub, tu_ms(2000)) == PSRPC_OK);
        REQUIRE(psrpc_server_publish(pub, &m, tp, 1, "u", 1) == PSRPC_OK);
        if (!WAIT_UNTIL(atomic_load(&g[i].n) == 1, 2000))
            lost++;
        psrpc_sub_free(sub);
    }
    CHECK_EQ_INT(lost, 0);
    psrpc_client_free(cl);
    psrpc_server_free(pub);
    psrpc_bus_free(sbus);
    psrpc_bus_free(pb);
    free(g);
    rs_stop(&rs);
}

/* ------------------------------------------------------------------------ */
/* B10: queue-lock keys                                                      */
/* ------------------------------------------------------------------------ */

/* base64std(sha256(p)) computed here, independently of the library. */
static void lock_key(const void *p, size_t n, char out[45]) {
    unsigned char d[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)p, n, d);
    EVP_EncodeBlock((unsigned char *)out, d, SHA256_DIGEST_LENGTH);
}

static void noop_ready(const psrpc_error *e, void *ud) {
    (void)e;
    (void)ud;
}

static uint64_t sum_malformed(psrpc_bus **b, int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v += tu_stats(b[i]).dropped_malformed;
    return v;
}

#define NPAYLOADS 20
#define NQUEUE 3

TEST(queue_lock_keys_and_one_consumer) {
    rs_server rs = {0};
    REQUIRE(rs_start(&rs));
    psrpc_bus_options o = rt_opts(1000);
    psrpc_bus *pb = rt_bus_ready(rs.url, &o);
    psrpc_bus *qb[NQUEUE];
    for (int i = 0; i < NQUEUE; i++)
        REQUIRE((qb[i] = rt_bus_ready(rs.url, &o)) != NULL);
    REQUIRE(pb);
    char svc[64];
    tu_service(svc, sizeof svc);
    psrpc_method m = tu_method("Work", PSRPC_ROUTING_QUEUE, PSRPC_METHOD_SUBSCRIPTION);
    m.output_type = "test.Update";
    psrpc_client *cl[NQUEUE];
    psrpc_sub *sub[NQUEUE];
    got g[NQUEUE];
    memset(g, 0, sizeof g);
    for (int i = 0; i < NQUEUE; i++) {
        REQUIRE((cl[i] = tu_client(qb[i], svc, 1000, 500)) != NULL);
        REQUIRE(psrpc_client_subscribe(&sub[i], cl[i], &m, NULL, 0, got_cb, noop_ready, &g[i],
                                       NULL) == PSRPC_OK);
        REQUIRE(psrpc_sub_wait_ready(sub[i], tu_ms(2000)) == PSRPC_OK);
    }
    /* MONITOR shows the exact lock command */
    redisContext *mon = rs_connect(&rs, NULL);
    REQUIRE(mon);
    redisReply *r = redisCommand(mon, "MONITOR");
    REQUIRE(r && r->type == REDIS_REPLY_STATUS);
    freeReplyObject(r);

    psrpc__channel ch;
    REQUIRE(psrpc__channel_rpc(&ch, svc, "Work", NULL, 0, true) == PSRPC_OK);
    /* fixed payloads, not envelopes: the lock comes before decoding, and the
     * consumer then drops each as malformed (counted) */
    char payloads[NPAYLOADS][64];
    size_t lens[NPAYLOADS];
    uint64_t malformed0 = sum_malformed(qb, NQUEUE);
    for (int i = 0; i < NPAYLOADS; i++) {
        lens[i] =
            (size_t)snprintf(payloads[i], sizeof payloads[i], "psrpc queue-lock vector %d", i);
        REQUIRE(psrpc__bus_inject(pb, &ch, payloads[i], lens[i]) == PSRPC_OK);
    }
    /* every message consumed by exactly one of the three processes */
    CHECK(WAIT_UNTIL(sum_malformed(qb, NQUEUE) - malformed0 >= NPAYLOADS, 3000));
    th_sleep_ms(200);
    CHECK_EQ_INT(sum_malformed(qb, NQUEUE) - malformed0, NPAYLOADS);
    for (int i = 0; i < NPAYLOADS; i++) {
        char key[45];
        lock_key(payloads[i], lens[i], key);
        redisReply *v = rs_cmd(&rs, NULL, "GET %s", key);
        redisReply *t = rs_cmd(&rs, NULL, "TTL %s", key);
        CHECK(v && v->type == REDIS_REPLY_STRING && v->len > 0 &&
              strspn(v->str, "0123456789") == v->len);
        CHECK(t && t->type == REDIS_REPLY_INTEGER && t->integer >= 1 && t->integer <= 5);
        if (v)
            freeReplyObject(v);
        if (t)
            freeReplyObject(t);
    }
    /* the lock command itself, as Go sends it: SET key <int> EX 5 NX */
    char key0[45];
    lock_key(payloads[0], lens[0], key0);
    bool seen = false;
    long long until = th_now_ms() + tu_ms(2000);
    while (!seen && th_now_ms() < until) {
        redisReply *line = NULL;
        if (redisGetReply(mon, (void **)&line) != REDIS_OK || !line)
            break;
        if (line->type == REDIS_REPLY_STATUS && strstr(line->str, key0)) {
            char want[128];
            snprintf(want, sizeof want, "\"SET\" \"%s\" \"", key0);
            seen = strstr(line->str, want) && strstr(line->str, "\" \"EX\" \"5\" \"NX\"");
            if (!seen)
                fprintf(stderr, "  monitor: %s\n", line->str);
        }
        freeReplyObject(line);
    }
    CHECK(seen);
    redisFree(mon);
    /* known vectors */
    char k[45];
    lock_key("", 0, k);
    CHECK_EQ_STR(k, "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=");
    char lib[PSRPC__LOCK_KEY_LEN + 1];
    psrpc__redis_lock_key(lib, (const uint8_t *)"hello", 5);
    lock_key("hello", 5, k);
    CHECK_EQ_STR(lib, k);
    CHECK_EQ_STR(k, "LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=");

    psrpc__channel_clear(&ch);
    for (int i = 0; i < NQUEUE; i++) {
        psrpc_sub_free(sub[i]);
        psrpc_client_free(cl[i]);
        psrpc_bus_free(qb[i]);
    }
    psrpc_bus_free(pb);
    rs_stop(&rs);
}

/* ------------------------------------------------------------------------ */
/* Inbound size limit: an oversize bulk is dropped without buffering it      */
/* ------------------------------------------------------------------------ */

TEST(oversize_inbound_dropped_and_counted) {
    rs_server rs = {0};
    REQUIRE(rs_start(&rs));
    psrpc_bus_options o = rt_opts(1000);
    psrpc_bus *pb = rt_bus_ready(rs.url, &o);
    psrpc_bus_options small = o;
    small.max_message_size = 4096;
    psrpc_bus *sbus = rt_bus_ready(rs.url, &small);
    REQUIRE(pb && sbus);
    char svc[64];
    tu_service(svc, sizeof svc);
    psrpc_method m = tu_method("Updates", PSRPC_ROUTING_MULTI, PSRPC_METHOD_SUBSCRIPTION);
    m.output_type = "test.Update";
    psrpc_server *pub = NULL;
    REQUIRE(psrpc_server_create(&pub, pb, svc, NULL) == PSRPC_OK);
    psrpc_client *cl = tu_client(sbus, svc, 1000, 500);
    got g = {0};
    psrpc_sub *sub = NULL;
    REQUIRE(psrpc_client_subscribe(&sub, cl, &m, NULL, 0, got_cb, NULL, &g, NULL) == PSRPC_OK);
    REQUIRE(psrpc_sub_wait_ready(sub, tu_ms(2000)) == PSRPC_OK);
    psrpc_bus_stats s0 = tu_stats(sbus);
    psrpc__channel ch;
    REQUIRE(psrpc__channel_rpc(&ch, svc, "Updates", NULL, 0, false) == PSRPC_OK);
    /* 64 KiB and 8 MiB raw publishes (not even envelopes) */
    size_t sizes[2] = {65536, 8u << 20};
    for (int i = 0; i < 2; i++) {
        char *big = (char *)malloc(sizes[i]);
        memset(big, 'x', sizes[i]);
        redisReply *r = rs_cmd(&rs, NULL, "PUBLISH %s %b", ch.legacy, big, sizes[i]);
        CHECK(r && r->type == REDIS_REPLY_INTEGER && r->integer == 1);
        if (r)
            freeReplyObject(r);
        free(big);
    }
    CHECK(WAIT_UNTIL(tu_stats(sbus).dropped_oversize >= s0.dropped_oversize + 2, 3000));
    /* the connection survives and still delivers */
    REQUIRE(psrpc_server_publish(pub, &m, NULL, 0, "small", 5) == PSRPC_OK);
    CHECK(WAIT_UNTIL(atomic_load(&g.n) == 1, 2000));
    psrpc_bus_stats s1 = tu_stats(sbus);
    CHECK_EQ_INT(s1.connects, s0.connects);
    CHECK_EQ_INT(s1.disconnects, s0.disconnects);
    CHECK_EQ_INT(atomic_load(&g.n), 1);
    psrpc__channel_clear(&ch);
    psrpc_sub_free(sub);
    psrpc_client_free(cl);
    psrpc_server_free(pub);
    psrpc_bus_free(sbus);
    psrpc_bus_free(pb);
    rs_stop(&rs);
}

/* ------------------------------------------------------------------------ */
/* channel_prefix                                                            */
/* ------------------------------------------------------------------------ */

TEST(channel_prefix_applies_to_every_channel) {
    rs_server rs = {0};
    REQUIRE(rs_start(&rs));
    psrpc_bus_options o = rt_opts(1000);
    o.channel_prefix = "tenant7:";
    psrpc_bus *sb = rt_bus_ready(rs.url, &o), *cb = rt_bus_ready(rs.url, &o);
    psrpc_bus_options plain = rt_opts(1000);
    psrpc_bus *other = rt_bus_ready(rs.url, &plain);
    REQUIRE(sb && cb && other);
    char svc[64];
    tu_service(svc, sizeof svc);
    psrpc_method m = echo_method();
    tu_srv *srv = tu_srv_new(sb, svc, NULL, TU_ECHO);
    REQUIRE(srv->server && tu_srv_register(srv, &m, NULL, 0) == PSRPC_OK);
    psrpc_client *cl = tu_client(cb, svc, 1000, 500);
    CHECK_EQ_INT(rt_call(cl, &m, "prefixed", NULL, 0, 2000), PSRPC_OK);
    char all[8192], pattern[128];
    snprintf(pattern, sizeof pattern, "*%s*", svc);
    pubsub_channels(&rs, pattern, all, sizeof all);
    /* every line starts with the prefix */
    int lines = 0, prefixed = 0;
    for (char *p = all; *p; p = strchr(p, '\n') + 1) {
        lines++;
        prefixed += strncmp(p, "tenant7:", 8) == 0;
    }
    CHECK(lines >= 3);
    CHECK_EQ_INT(prefixed, lines);
    /* a client without the prefix does not reach the server */
    psrpc_client *cl2 = tu_client(other, svc, 500, 300);
    CHECK(rt_call(cl2, &m, "unprefixed", NULL, 0, 500) != PSRPC_OK);
    psrpc_client_free(cl2);
    psrpc_client_free(cl);
    psrpc_server_free(srv->server);
    psrpc_bus_free(other);
    psrpc_bus_free(cb);
    psrpc_bus_free(sb);
    tu_srv_destroy(srv);
    rs_stop(&rs);
}

TEST_MAIN()
