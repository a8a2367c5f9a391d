/* Redis Cluster (issue 18): a cluster of 3 masters and 3 replicas
 * (redis-server --cluster-enabled yes, cluster-node-timeout 1000 ms) on free
 * loopback ports in temp dirs, made with redis-cli --cluster create. A C
 * server and a C client call each other across it through
 * redis+cluster:// URLs:
 *   - the queue locks go to the master of their key's slot (every master gets
 *     SETs, none answers MOVED while the slot map is right);
 *   - keyslot() agrees with CLUSTER KEYSLOT on many keys;
 *   - 1000 slots (every other one of 2000) move to another master (SETSLOT MIGRATING / IMPORTING,
 * then NODE): the bus follows ASK, then MOVED (and refreshes its slot map), and every call still
 * succeeds;
 *   - kill -9 of the master the buses are connected to, under load: every
 *     call ends exactly once, the replica takes over and the bus recovers;
 *     the time to the first success and to "all calls succeed" is printed.
 * Also (3 masters each): requirepass (the URL's password reaches every
 * node; a wrong one is unauthenticated, not retried), and TLS
 * (rediss+cluster://, tls-cluster yes; a wrong CA never connects).
 * All servers and temp dirs go at the end (also when a REQUIRE fails: atexit). */
#include "redis_cluster.h"
#include "rt.h"

#define NMASTERS 3
#define NNODES 6
#define LOAD_MAX 4000

typedef struct cluster {
    rs_server n[NNODES];
    int nn;
    char id[NNODES][48];
} cluster;

static cluster g_cl;
static const char *g_pass;                  /* the nodes' requirepass (the auth test) */
static const char *g_node_timeout = "1000"; /* cluster-node-timeout, ms */
/* The tls test: server.crt, server.key, ca.crt, client.crt, client.key;
 * [0][0] = 0: plain. */
static char g_tls[5][400];

static void cluster_stop(void) {
    for (int i = 0; i < g_cl.nn; i++)
        rs_stop(&g_cl.n[i]);
    g_cl.nn = 0;
}

static bool node_info_has(const rs_server *s, const char *cmd, const char *want) {
    redisReply *r = rs_cmd(s, g_pass, cmd);
    bool ok = r && r->str && strstr(r->str, want);
    if (r)
        freeReplyObject(r);
    return ok;
}

/* Every node up, sees all the others and reports cluster_state:ok; every
 * replica's link to its master is up. */
static bool cluster_settled(const cluster *c) {
    char known[64];
    snprintf(known, sizeof known, "cluster_known_nodes:%d", c->nn);
    for (int i = 0; i < c->nn; i++) {
        if (c->n[i].pid <= 0)
            continue;
        if (!node_info_has(&c->n[i], "CLUSTER INFO", "cluster_state:ok") ||
            !node_info_has(&c->n[i], "CLUSTER INFO", known))
            return false;
        if (node_info_has(&c->n[i], "INFO replication", "role:slave") &&
            !node_info_has(&c->n[i], "INFO replication", "master_link_status:up"))
            return false;
    }
    return true;
}

static bool cluster_start(cluster *c, int nodes, int replicas) {
    static bool registered;
    if (!registered)
        atexit(cluster_stop);
    registered = true;
    memset(c, 0, sizeof *c); /* no arguments left from the last test's nodes */
    c->nn = nodes;
    for (int i = 0; i < nodes; i++) {
        /* the cluster bus port (by default port + 10000) is chosen with the
         * others, and chosen again if redis-server cannot bind it */
        c->n[i].cluster = true;
        rs_args(&c->n[i], "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", g_node_timeout,
                /* replicas in sync at once (a replica that never synced
                 * refuses to take over: its data is "too old") */
                "--repl-diskless-sync-delay", "0", NULL);
        if (g_pass)
            rs_args(&c->n[i], "--requirepass", g_pass, "--masterauth", g_pass, NULL);
        /* TLS: clients and the cluster bus (whose peers always check each
         * other's certificate: the outgoing side shows the client one); the
         * plain port stays for the test's own commands */
        if (g_tls[0][0])
            rs_args(&c->n[i], "--tls-cert-file", g_tls[0], "--tls-key-file", g_tls[1],
                    "--tls-ca-cert-file", g_tls[2], "--tls-client-cert-file", g_tls[3],
                    "--tls-client-key-file", g_tls[4], "--tls-auth-clients", "no", "--tls-cluster",
                    "yes", "--tls-replication", "yes", NULL);
        if (!rs_start_opts(&c->n[i], g_tls[0][0] != 0))
            return false;
    }
    if (g_tls[0][0]) {
        /* What redis-cli --cluster create does, by hand on the plain ports
         * (no TLS client needed). */
        int per = PSRPC__CLUSTER_SLOTS / nodes;
        for (int i = 0; i < nodes; i++) {
            int lo = i * per, hi = i == nodes - 1 ? PSRPC__CLUSTER_SLOTS - 1 : lo + per - 1;
            if (!rs_ok(&c->n[i], g_pass, "CLUSTER ADDSLOTSRANGE %d %d", lo, hi) ||
                !rs_ok(&c->n[i], g_pass, "CLUSTER SET-CONFIG-EPOCH %d", i + 1))
                return false;
        }
        for (int i = 1; i < nodes; i++)
            if (!rs_ok(&c->n[0], g_pass, "CLUSTER MEET 127.0.0.1 %d %d", c->n[i].port,
                       c->n[i].cluster_port))
                return false;
    } else {
        char cmd[1024];
        int off = g_pass ? snprintf(cmd, sizeof cmd, "REDISCLI_AUTH='%s' ", g_pass) : 0;
        off +=
            snprintf(cmd + off, sizeof cmd - (size_t)off, "timeout 60 redis-cli --cluster create");
        for (int i = 0; i < nodes; i++)
            off += snprintf(cmd + off, sizeof cmd - (size_t)off, " 127.0.0.1:%d", c->n[i].port);
        snprintf(cmd + off, sizeof cmd - (size_t)off,
                 " --cluster-replicas %d --cluster-yes > %s/create.log 2>&1", replicas,
                 c->n[0].dir);
        if (system(cmd) != 0) {
            fprintf(stderr, "  %s failed (log in %s)\n", cmd, c->n[0].dir);
            return false;
        }
    }
    for (int i = 0; i < nodes; i++) {
        redisReply *r = rs_cmd(&c->n[i], g_pass, "CLUSTER MYID");
        if (!r || r->type != REDIS_REPLY_STRING) {
            if (r)
                freeReplyObject(r);
            return false;
        }
        snprintf(c->id[i], sizeof c->id[i], "%s", r->str);
        freeReplyObject(r);
    }
    long long t0 = th_now_ms();
    bool ok = false;
    WAIT_UNTIL((ok = cluster_settled(c)), 30000);
    if (!ok)
        fprintf(stderr, "  cluster not ok after 30 s\n");
    else
        fprintf(stderr, "  cluster of %d nodes settled in %lld ms\n", nodes, th_now_ms() - t0);
    return ok;
}

static bool is_master(const rs_server *s) {
    return s->pid > 0 && node_info_has(s, "INFO replication", "role:master");
}

/* A number from an INFO section: the value after "field" up to ',' or CRLF. */
static long long info_num(const rs_server *s, const char *section, const char *field) {
    redisReply *r = rs_cmd(s, g_pass, "INFO %s", section);
    long long v = 0;
    const char *p = r && r->str ? strstr(r->str, field) : NULL;
    if (p)
        v = atoll(p + strlen(field));
    if (r)
        freeReplyObject(r);
    return v;
}

static long long set_calls(const rs_server *s) {
    return info_num(s, "commandstats", "cmdstat_set:calls=");
}

static long long moved_errors(const rs_server *s) {
    return info_num(s, "errorstats", "errorstat_MOVED:count=");
}

/* n calls at once, with the client's timeouts (generous: sanitizer builds
 * under load); returns how many succeeded (each must end exactly once). */
static int burst(psrpc_client *cl, const psrpc_method *m, int n, int *not_once) {
    rt_load *l = rt_load_new(n);
    for (int i = 0; i < n; i++)
        rt_load_issue_t(l, cl, m, 0);
    int ok = 0;
    for (int i = 0; i < n; i++) {
        if (l->rc[i] != PSRPC_OK)
            continue;
        tu_wait_count(&l->calls[i].count, 1, 10000);
        if (atomic_load(&l->calls[i].count) != 1 || atomic_load(&l->calls[i].bad))
            (*not_once)++;
        else if (l->calls[i].status == PSRPC_OK)
            ok++;
        else
            fprintf(stderr, "  call %d: %s %s\n", i, psrpc_status_name(l->calls[i].status),
                    l->calls[i].message);
    }
    rt_load_free(l);
    return ok;
}

TEST(url_errors) {
    const char *bad[] = {
        "redis+cluster://",                 /* no node */
        "redis+cluster://127.0.0.1:1,",     /* empty node */
        "redis+cluster://127.0.0.1:99999",  /* bad port */
        "redis+cluster://127.0.0.1:1/3",    /* a database: cluster has 0 only */
        "redis+cluster://127.0.0.1:1?x=1",  /* query */
        "redis+cluster://h:1,h:x",          /* bad port in the second node */
        "redis+cluster://h:1,,h:2",         /* empty node in the middle */
        "redis+cluster://%zz:p@127.0.0.1:1" /* bad escape in the user */
    };
    TU_CHECK_BAD_URLS(bad, "redis+cluster://:s3cret@127.0.0.1:1/5", "s3cret");
    psrpc_bus *b = NULL;
    /* a cluster nobody answers for: reported, with the node tried */
    psrpc_bus_options o = rt_opts(500);
    CHECK_EQ_INT(psrpc_bus_open(&b, "redis+cluster://127.0.0.1:1,127.0.0.1:2/0", &o), PSRPC_OK);
    REQUIRE(b);
    rt_watch *w = rt_watch_new(b);
    CHECK(rt_wait_event(w, 0, PSRPC_BUS_DISCONNECTED, 3000) >= 0);
    char msg[512];
    rt_last(w, NULL, msg, sizeof msg);
    fprintf(stderr, "  no node: %s\n", msg);
    CHECK(strstr(msg, "no node gave the slot map") != NULL);
    CHECK(strstr(msg, "127.0.0.1:") != NULL);
    psrpc_bus_free(b);
}

TEST(cluster) {
    cluster *c = &g_cl;
    REQUIRE(cluster_start(c, NNODES, 1));

    /* keyslot() against the server, on keys like the lock keys and tags */
    {
        redisContext *rc = rs_connect(&c->n[0], NULL);
        REQUIRE(rc);
        int mismatches = 0;
        for (int i = 0; i < 300; i++) {
            char key[64];
            if (i % 3 == 0)
                snprintf(key, sizeof key, "k%d-%x", i, i * 2654435761u);
            else if (i % 3 == 1)
                snprintf(key, sizeof key, "{t%d}.rest-%d", i % 17, i);
            else
                snprintf(key, sizeof key, "a{%d}{b}c{}", i);
            redisReply *r = redisCommand(rc, "CLUSTER KEYSLOT %s", key);
            if (!r || r->type != REDIS_REPLY_INTEGER ||
                r->integer != psrpc__redis_keyslot(key, strlen(key)))
                mismatches++;
            if (r)
                freeReplyObject(r);
        }
        redisFree(rc);
        CHECK_EQ_INT(mismatches, 0);
    }

    /* The server bus knows one seed (the slot map names the rest), the
     * client two. */
    char surl[128], curl[160];
    snprintf(surl, sizeof surl, "redis+cluster://127.0.0.1:%d", c->n[0].port);
    snprintf(curl, sizeof curl, "redis+cluster://127.0.0.1:%d,127.0.0.1:%d", c->n[0].port,
             c->n[1].port);
    psrpc_bus_options o = rt_opts(500);
    psrpc_bus *sb = rt_bus_ready(surl, &o), *cb = rt_bus_ready(curl, &o);
    REQUIRE(sb && cb);
    rt_watch *w = rt_watch_new(cb);
    rt_watch *sw = rt_watch_new(sb);
    char svc[64];
    tu_service(svc, sizeof svc);
    psrpc_method m = tu_method("Echo", PSRPC_ROUTING_QUEUE, 0);
    tu_srv *srv = tu_srv_new(sb, svc, NULL, TU_ECHO);
    REQUIRE(srv->server && tu_srv_register(srv, &m, NULL, 0) == PSRPC_OK);
    psrpc_client *cl = tu_client(cb, svc, 1000, 500);
    psrpc_client *bcl = tu_client(cb, svc, tu_ms(3000), tu_ms(1500)); /* bursts */
    REQUIRE(cl && bcl);
    REQUIRE(rt_call(cl, &m, "warmup", NULL, 0, 2000) == PSRPC_OK);

    /* 1. The locks go to their slots' masters, all three of them, and none
     * is redirected. */
    for (int i = 0; i < NMASTERS; i++) {
        REQUIRE(is_master(&c->n[i]));
        CHECK(rs_ok(&c->n[i], NULL, "CONFIG RESETSTAT"));
    }
    int not_once = 0;
    int ok = burst(bcl, &m, 300, &not_once);
    CHECK_EQ_INT(ok, 300);
    CHECK_EQ_INT(not_once, 0);
    long long sets[NMASTERS], total = 0;
    for (int i = 0; i < NMASTERS; i++) {
        sets[i] = set_calls(&c->n[i]);
        total += sets[i];
        CHECK(sets[i] > 30); /* about 100 each */
        CHECK_EQ_INT(moved_errors(&c->n[i]), 0);
    }
    fprintf(stderr, "  300 calls: SETs per master %lld / %lld / %lld, no MOVED\n", sets[0], sets[1],
            sets[2]);
    CHECK_EQ_INT(total, 300);

    /* 2. 1000 slots of master 0 move to master 1 (every other slot: the
     * slot map then has over 1000 ranges, CLUSTER SLOTS as many elements),
     * the way resharding does
     * it: first MIGRATING / IMPORTING (a lock key not yet on the old owner
     * gets ASK: the bus sends ASKING + SET to the new one), then the slots
     * are the new owner's (the old one answers MOVED: the bus follows and
     * refreshes its slot map). FLUSHALL first: only new keys in those
     * slots. */
    for (int i = 0; i < NMASTERS; i++) {
        CHECK(rs_ok(&c->n[i], NULL, "FLUSHALL"));
        CHECK(rs_ok(&c->n[i], NULL, "CONFIG RESETSTAT"));
    }
    int lo = -1;
    {
        redisReply *r = rs_cmd(&c->n[0], NULL, "CLUSTER SLOTS");
        REQUIRE(r && r->type == REDIS_REPLY_ARRAY);
        for (size_t i = 0; i < r->elements; i++) {
            redisReply *e = r->element[i];
            if (e->element[2]->element[1]->integer == c->n[0].port &&
                e->element[1]->integer - e->element[0]->integer >= 1999)
                lo = (int)e->element[0]->integer;
        }
        freeReplyObject(r);
    }
    REQUIRE(lo >= 0);
    redisContext *ctx[NMASTERS];
    for (int i = 0; i < NMASTERS; i++)
        REQUIRE((ctx[i] = rs_connect(&c->n[i], NULL)));
    int refused = 0;
    for (int s = lo; s < lo + 2000; s += 2) {
        redisReply *r = redisCommand(ctx[1], "CLUSTER SETSLOT %d IMPORTING %s", s, c->id[0]);
        refused += !r || r->type != REDIS_REPLY_STATUS;
        if (r)
            freeReplyObject(r);
        r = redisCommand(ctx[0], "CLUSTER SETSLOT %d MIGRATING %s", s, c->id[1]);
        refused += !r || r->type != REDIS_REPLY_STATUS;
        if (r)
            freeReplyObject(r);
    }
    CHECK_EQ_INT(refused, 0);
    ok = burst(bcl, &m, 300, &not_once);
    CHECK_EQ_INT(ok, 300);
    CHECK_EQ_INT(not_once, 0);
    long long asks = info_num(&c->n[0], "errorstats", "errorstat_ASK:count=");
    fprintf(stderr,
            "  every other slot of %d-%d migrating to master 1: 300 calls ok, %lld ASK followed\n",
            lo, lo + 1999, asks);
    CHECK(asks > 0);
    /* the migration ends: the new owner first (it bumps its epoch) */
    for (int s = lo; s < lo + 2000; s += 2) {
        for (int k = 0; k < NMASTERS; k++) {
            int node = k == 0 ? 1 : k == 1 ? 0 : 2;
            redisReply *r = redisCommand(ctx[node], "CLUSTER SETSLOT %d NODE %s", s, c->id[1]);
            if (!r || r->type != REDIS_REPLY_STATUS) {
                if (refused++ < 3)
                    fprintf(stderr, "  SETSLOT %d NODE on %d: %s\n", s, node,
                            r && r->str ? r->str : "no reply");
            }
            if (r)
                freeReplyObject(r);
        }
    }
    CHECK_EQ_INT(refused, 0);
    for (int i = 0; i < NMASTERS; i++)
        redisFree(ctx[i]);
    bool settled = false;
    WAIT_UNTIL((settled = cluster_settled(c)), 10000);
    CHECK(settled);
    CHECK(rs_ok(&c->n[0], NULL, "CONFIG RESETSTAT"));
    ok = burst(bcl, &m, 300, &not_once);
    CHECK_EQ_INT(ok, 300);
    CHECK_EQ_INT(not_once, 0);
    long long moved = moved_errors(&c->n[0]);
    fprintf(stderr,
            "  every other slot of %d-%d now master 1's: 300 calls ok, %lld MOVED followed\n", lo,
            lo + 1999, moved);
    CHECK(moved > 0);
    /* a MOVED refreshes the whole map: the old owner is not asked again */
    th_sleep_ms(500);
    CHECK(rs_ok(&c->n[0], NULL, "CONFIG RESETSTAT"));
    ok = burst(bcl, &m, 300, &not_once);
    CHECK_EQ_INT(ok, 300);
    CHECK_EQ_INT(moved_errors(&c->n[0]), 0);

    /* 3. kill -9 of master 0, where both buses have their connections,
     * under load (a call every 5 ms, 1 s deadline). */
    int replica = -1;
    {
        char want[80];
        snprintf(want, sizeof want, "master_port:%d", c->n[0].port);
        for (int i = NMASTERS; i < NNODES; i++)
            if (node_info_has(&c->n[i], "INFO replication", want))
                replica = i;
    }
    REQUIRE(replica >= 0);
    rt_load *l = rt_load_new(LOAD_MAX);
    long long end = th_now_ms() + 1000;
    while (th_now_ms() < end) {
        rt_load_issue(l, cl, &m);
        th_sleep_ms(5);
    }
    int before_kill = l->n;
    int ev0 = rt_nevents(w), sev0 = rt_nevents(sw);
    long long kill_ms = th_now_ms();
    rs_kill9(&c->n[0]);
    long long stop_at = kill_ms + tu_ms(30000), promoted_ms = -1, next_poll = 0;
    while (th_now_ms() < stop_at && l->n < LOAD_MAX) {
        rt_load_issue(l, cl, &m);
        th_sleep_ms(5);
        if (promoted_ms < 0 && th_now_ms() >= next_poll) {
            next_poll = th_now_ms() + 50;
            if (is_master(&c->n[replica])) {
                promoted_ms = th_now_ms();
                stop_at = promoted_ms + 3000;
            }
        }
    }
    int n = l->n;
    for (int i = 0; i < n; i++)
        if (l->rc[i] == PSRPC_OK)
            tu_wait_count(&l->calls[i].count, 1, 3000);
    int nok = 0, unavailable = 0, deadline = 0, other = 0, late = 0;
    not_once = 0;
    long long first_ok = -1, last_fail_issued = -1;
    for (int i = 0; i < n; i++) {
        tu_call *k = &l->calls[i];
        int st = l->rc[i] != PSRPC_OK ? l->rc[i] : k->status;
        if (l->rc[i] == PSRPC_OK && (atomic_load(&k->count) != 1 || atomic_load(&k->bad)))
            not_once++;
        if (st == PSRPC_OK) {
            nok++;
            if (i >= before_kill && first_ok < 0)
                first_ok = k->at_ms;
        } else if (st == PSRPC_UNAVAILABLE) {
            unavailable++;
        } else if (st == PSRPC_DEADLINE_EXCEEDED) {
            deadline++;
        } else {
            other++;
            fprintf(stderr, "  request %d: %s %s\n", i, psrpc_status_name(st), k->message);
        }
        if (st != PSRPC_OK && l->issued_ms[i] > last_fail_issued)
            last_fail_issued = l->issued_ms[i];
        if (promoted_ms > 0 && l->issued_ms[i] > promoted_ms + tu_ms(1000) && st != PSRPC_OK)
            late++;
    }
    long long cup = rt_event_at(w, ev0, PSRPC_BUS_CONNECTED);
    long long sup = rt_event_at(sw, sev0, PSRPC_BUS_CONNECTED);
    fprintf(stderr,
            "  %d requests: %d ok, %d unavailable, %d deadline, %d other, %d not exactly "
            "once; %d before the kill\n",
            n, nok, unavailable, deadline, other, not_once, before_kill);
    fprintf(stderr,
            "  kill -9 master :%d: buses reconnected (client %lld ms, server %lld ms), first "
            "success %lld ms, replica :%d promoted %lld ms, last failing call issued %lld ms "
            "after the kill\n",
            c->n[0].port, cup > 0 ? cup - kill_ms : -1, sup > 0 ? sup - kill_ms : -1,
            first_ok > 0 ? first_ok - kill_ms : -1, c->n[replica].port,
            promoted_ms > 0 ? promoted_ms - kill_ms : -1,
            last_fail_issued > 0 ? last_fail_issued - kill_ms : -1);
    psrpc_bus_stats st = tu_stats(sb);
    /* dropped_expired: requests whose lock was taken after the failover
     * (parked, sent again) but whose deadline had passed, and locks given
     * up after 5 s */
    fprintf(stderr, "  server bus: dropped_expired %llu, reconnect attempts %llu\n",
            (unsigned long long)st.dropped_expired, (unsigned long long)st.reconnect_attempts);
    CHECK_EQ_INT(not_once, 0);
    CHECK_EQ_INT(other, 0);
    CHECK(first_ok > 0);
    CHECK(promoted_ms > 0);
    CHECK(cup > 0 && sup > 0);
    CHECK_EQ_INT(late, 0);
    for (int i = 0; i < before_kill - 5; i++)
        CHECK(l->calls[i].status == PSRPC_OK);
    /* recovered: a burst all ok, the dead master's slots at the replica */
    CHECK(rs_ok(&c->n[replica], NULL, "CONFIG RESETSTAT"));
    ok = burst(bcl, &m, 300, &not_once);
    CHECK_EQ_INT(ok, 300);
    CHECK_EQ_INT(not_once, 0);
    CHECK(set_calls(&c->n[replica]) > 30);

    psrpc_client_free(cl);
    psrpc_client_free(bcl);
    psrpc_server_free(srv->server);
    psrpc_bus_free(cb);
    psrpc_bus_free(sb);
    tu_srv_destroy(srv);
    rt_load_free(l);
    cluster_stop();
}

/* A master that hangs (SIGSTOP for 1.5 s; cluster-node-timeout 5 s, so the
 * cluster does not fail it over) while the buses' pub/sub node is another:
 * the locks sent to it get no reply, the master's connection is dropped
 * after connect_timeout_ms (1 s), the locks are parked and sent again (to a
 * new connection, which the kernel accepts for the stopped process) until it
 * answers after SIGCONT. Every call ends exactly once; the pub/sub
 * connections never notice; calls issued 1 s after SIGCONT all succeed. */
TEST(hung_master) {
    cluster *c = &g_cl;
    g_node_timeout = "5000";
    REQUIRE(cluster_start(c, NMASTERS, 0));
    char url[160];
    snprintf(url, sizeof url, "redis+cluster://127.0.0.1:%d", c->n[1].port);
    psrpc_bus_options o = rt_opts(500);
    psrpc_bus *sb = rt_bus_ready(url, &o), *cb = rt_bus_ready(url, &o);
    REQUIRE(sb && cb);
    char svc[64];
    tu_service(svc, sizeof svc);
    psrpc_method m = tu_method("Echo", PSRPC_ROUTING_QUEUE, 0);
    tu_srv *srv = tu_srv_new(sb, svc, NULL, TU_ECHO);
    REQUIRE(srv->server && tu_srv_register(srv, &m, NULL, 0) == PSRPC_OK);
    psrpc_client *cl = tu_client(cb, svc, 1000, 500);
    REQUIRE(cl);
    REQUIRE(rt_call(cl, &m, "warmup", NULL, 0, 2000) == PSRPC_OK);
    long long conns0 = info_num(&c->n[0], "stats", "total_connections_received:");
    rt_load *l = rt_load_new(LOAD_MAX);
    long long t0 = th_now_ms(), stop_ms = -1, cont_ms = -1;
    while (th_now_ms() < t0 + 4500 && l->n < LOAD_MAX) {
        long long now = th_now_ms();
        if (stop_ms < 0 && now >= t0 + 500) {
            rs_signal(&c->n[0], SIGSTOP);
            stop_ms = th_now_ms();
        }
        if (cont_ms < 0 && now >= t0 + 2000) {
            rs_signal(&c->n[0], SIGCONT);
            cont_ms = th_now_ms();
        }
        rt_load_issue(l, cl, &m);
        th_sleep_ms(5);
    }
    int n = l->n, nok = 0, failed = 0, other = 0, not_once = 0, late = 0;
    for (int i = 0; i < n; i++)
        if (l->rc[i] == PSRPC_OK)
            tu_wait_count(&l->calls[i].count, 1, 3000);
    long long first_ok_after = -1;
    for (int i = 0; i < n; i++) {
        tu_call *k = &l->calls[i];
        int st = l->rc[i] != PSRPC_OK ? l->rc[i] : k->status;
        if (l->rc[i] == PSRPC_OK && (atomic_load(&k->count) != 1 || atomic_load(&k->bad)))
            not_once++;
        if (st == PSRPC_OK)
            nok++;
        else if (st == PSRPC_UNAVAILABLE || st == PSRPC_DEADLINE_EXCEEDED)
            failed++;
        else
            other++;
        if (st == PSRPC_OK && l->issued_ms[i] > stop_ms && l->issued_ms[i] < cont_ms &&
            first_ok_after < 0)
            first_ok_after = k->at_ms;
        if (l->issued_ms[i] > cont_ms + tu_ms(1000) && st != PSRPC_OK)
            late++;
    }
    psrpc_bus_stats ss = tu_stats(sb), cs = tu_stats(cb);
    /* connections the stopped master accepted meanwhile (one is this
     * query's): the bus gave up on its connection and came again (a new
     * lock connection, or a slot map refresh) */
    long long conns = info_num(&c->n[0], "stats", "total_connections_received:") - conns0;
    fprintf(stderr, "  the hung master accepted %lld connections meanwhile (1 is this query)\n",
            conns);
    CHECK(conns >= 2);
    fprintf(stderr,
            "  master :%d stopped for %lld ms: %d requests, %d ok, %d failed (their lock's master "
            "hung), %d other, %d not exactly once; calls on other masters kept succeeding (first "
            "%lld ms after the stop); %d failures issued 1 s after SIGCONT; disconnects %llu / "
            "%llu\n",
            c->n[0].port, cont_ms - stop_ms, n, nok, failed, other, not_once,
            first_ok_after > 0 ? first_ok_after - stop_ms : -1, late,
            (unsigned long long)ss.disconnects, (unsigned long long)cs.disconnects);
    CHECK_EQ_INT(not_once, 0);
    CHECK_EQ_INT(other, 0);
    CHECK(failed > 0);         /* the hang was felt */
    CHECK(first_ok_after > 0); /* ... by the hung master's slots only */
    CHECK_EQ_INT(late, 0);
    CHECK_EQ_INT(ss.disconnects, 0);
    CHECK_EQ_INT(cs.disconnects, 0);
    psrpc_client_free(cl);
    psrpc_server_free(srv->server);
    psrpc_bus_free(cb);
    psrpc_bus_free(sb);
    tu_srv_destroy(srv);
    rt_load_free(l);
    cluster_stop();
    g_node_timeout = "1000";
}

/* A cluster with requirepass: the URL's password reaches every node (the
 * pub/sub node, the slot map discovery, each master's lock connection); a
 * wrong one is reported unauthenticated and, as on redis://, not retried
 * after two attempts. */
TEST(auth) {
    cluster *c = &g_cl;
    g_pass = "s3cret-pw";
    REQUIRE(cluster_start(c, NMASTERS, 0));
    char url[160];
    snprintf(url, sizeof url, "redis+cluster://:%s@127.0.0.1:%d", g_pass, c->n[1].port);
    psrpc_bus_options o = rt_opts(500);
    psrpc_bus *sb = rt_bus_ready(url, &o), *cb = rt_bus_ready(url, &o);
    REQUIRE(sb && cb);
    char svc[64];
    tu_service(svc, sizeof svc);
    psrpc_method m = tu_method("Echo", PSRPC_ROUTING_QUEUE, 0);
    tu_srv *srv = tu_srv_new(sb, svc, NULL, TU_ECHO);
    REQUIRE(srv->server && tu_srv_register(srv, &m, NULL, 0) == PSRPC_OK);
    psrpc_client *cl = tu_client(cb, svc, tu_ms(3000), tu_ms(1500));
    REQUIRE(cl);
    for (int i = 0; i < NMASTERS; i++)
        CHECK(rs_ok(&c->n[i], g_pass, "CONFIG RESETSTAT"));
    int not_once = 0;
    CHECK_EQ_INT(burst(cl, &m, 150, &not_once), 150);
    CHECK_EQ_INT(not_once, 0);
    for (int i = 0; i < NMASTERS; i++)
        CHECK(set_calls(&c->n[i]) > 10);

    /* the wrong password: unauthenticated, two attempts, the password
     * never shown */
    char bad[160];
    snprintf(bad, sizeof bad, "redis+cluster://:wrong-pw@127.0.0.1:%d,127.0.0.1:%d", c->n[0].port,
             c->n[2].port);
    psrpc_bus *b = rt_bus(bad, &o);
    REQUIRE(b);
    rt_watch *w = rt_watch_new(b);
    CHECK(rt_wait_event(w, 0, PSRPC_BUS_DISCONNECTED, 3000) >= 0);
    th_sleep_ms(1500); /* backoff 100 ms: a third attempt would be seen */
    int st = 0;
    char msg[512];
    rt_last(w, &st, msg, sizeof msg);
    fprintf(stderr, "  wrong password: %s %s\n", psrpc_status_name(st), msg);
    CHECK_EQ_INT(st, PSRPC_UNAUTHENTICATED);
    CHECK(strstr(msg, "WRONGPASS") != NULL);
    CHECK(strstr(msg, "wrong-pw") == NULL);
    psrpc_bus_stats bs = tu_stats(b);
    CHECK_EQ_INT(bs.reconnect_attempts, 1); /* two attempts in all, then it stops */
    psrpc_bus_free(b);

    psrpc_client_free(cl);
    psrpc_server_free(srv->server);
    psrpc_bus_free(cb);
    psrpc_bus_free(sb);
    tu_srv_destroy(srv);
    cluster_stop();
    g_pass = NULL;
}

/* rediss+cluster://: TLS to every node (tls-cluster yes: the slot map a TLS
 * client gets names the nodes' TLS ports), the CA checked; a wrong CA never
 * connects. */
TEST(tls) {
    char certs[300];
    snprintf(certs, sizeof certs, "%s/psrpc-certs-XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    REQUIRE(mkdtemp(certs));
    char cmd[800];
    snprintf(cmd, sizeof cmd, "sh '%s/gen_certs.sh' '%s'", PSRPC_REDIS_TEST_DIR, certs);
    bool made = system(cmd) == 0;
    snprintf(g_tls[0], sizeof g_tls[0], "%s/server.crt", certs);
    snprintf(g_tls[1], sizeof g_tls[1], "%s/server.key", certs);
    snprintf(g_tls[2], sizeof g_tls[2], "%s/ca.crt", certs);
    snprintf(g_tls[3], sizeof g_tls[3], "%s/client.crt", certs);
    snprintf(g_tls[4], sizeof g_tls[4], "%s/client.key", certs);
    cluster *c = &g_cl;
    bool up = made && cluster_start(c, NMASTERS, 0);
    CHECK(up);
    if (up) {
        char url[160], other[400];
        snprintf(url, sizeof url, "rediss+cluster://127.0.0.1:%d", c->n[2].tls_port);
        snprintf(other, sizeof other, "%s/other-ca.crt", certs);
        psrpc_bus_options o = rt_opts(500);
        o.tls_ca_file = g_tls[2];
        psrpc_bus *sb = rt_bus_ready(url, &o), *cb = rt_bus_ready(url, &o);
        CHECK(sb && cb);
        tu_srv *srv = NULL;
        if (sb && cb) {
            char svc[64];
            tu_service(svc, sizeof svc);
            psrpc_method m = tu_method("Echo", PSRPC_ROUTING_QUEUE, 0);
            srv = tu_srv_new(sb, svc, NULL, TU_ECHO);
            psrpc_client *cl = tu_client(cb, svc, tu_ms(3000), tu_ms(1500));
            CHECK(srv->server && tu_srv_register(srv, &m, NULL, 0) == PSRPC_OK && cl);
            for (int i = 0; i < NMASTERS; i++)
                CHECK(rs_ok(&c->n[i], NULL, "CONFIG RESETSTAT"));
            int not_once = 0;
            if (cl)
                CHECK_EQ_INT(burst(cl, &m, 150, &not_once), 150);
            CHECK_EQ_INT(not_once, 0);
            long long sets[NMASTERS];
            for (int i = 0; i < NMASTERS; i++) {
                sets[i] = set_calls(&c->n[i]);
                CHECK(sets[i] > 10);
            }
            fprintf(stderr, "  over TLS: 150 calls, SETs per master %lld / %lld / %lld\n", sets[0],
                    sets[1], sets[2]);
            psrpc_client_free(cl);
            psrpc_server_free(srv->server);
        }
        psrpc_bus_free(cb);
        psrpc_bus_free(sb);
        if (srv)
            tu_srv_destroy(srv); /* after its bus: the server's close uses it */
        /* the wrong CA */
        o.tls_ca_file = other;
        psrpc_bus *b = rt_bus(url, &o);
        CHECK(b);
        if (b) {
            rt_watch *w = rt_watch_new(b);
            CHECK(rt_wait_event(w, 0, PSRPC_BUS_DISCONNECTED, 3000) >= 0);
            char msg[512];
            rt_last(w, NULL, msg, sizeof msg);
            fprintf(stderr, "  wrong CA: %s\n", msg);
            CHECK(strstr(msg, "certificate verify failed") != NULL);
            CHECK(rt_event_at(w, 0, PSRPC_BUS_CONNECTED) < 0);
            psrpc_bus_free(b);
        }
    }
    cluster_stop();
    g_tls[0][0] = 0;
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", certs);
    if (system(cmd) != 0)
        fprintf(stderr, "  could not remove %s\n", certs);
}

TEST_MAIN()
