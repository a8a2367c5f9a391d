/* Redis Sentinel (issue 18): a master, a replica and three sentinels
 * (redis-server --sentinel) on loopback, each on a free port in a temp dir.
 * The bus finds the master through the sentinels, refuses a "master" that
 * reports itself a replica, and after kill -9 of the master under load
 * reconnects to the promoted replica; every call ends exactly once. Sentinel
 * timeouts are small (down-after 1 s) so the test takes ~15 s. */
#include "rt.h"

#define NSENT 3
#define LOAD_MAX 3000

typedef struct sentinel {
    pid_t pid;
    int port;
    char dir[256];
} sentinel;

static bool sentinel_start(sentinel *s, int master_port) {
    snprintf(s->dir, sizeof s->dir, "%s/psrpc-sentinel-XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(s->dir))
        return false;
    s->port = rs_free_port();
    char conf[300];
    snprintf(conf, sizeof conf, "%s/sentinel.conf", s->dir);
    FILE *f = fopen(conf, "w");
    if (!f)
        return false;
    fprintf(f,
            "port %d\nbind 127.0.0.1\ndaemonize no\ndir %s\nlogfile %s/sentinel.log\n"
            "sentinel monitor m1 127.0.0.1 %d 2\n"
            "sentinel down-after-milliseconds m1 1000\n"
            "sentinel failover-timeout m1 4000\n"
            "sentinel parallel-syncs m1 1\n",
            s->port, s->dir, s->dir, master_port);
    fclose(f);
    pid_t pid = fork();
    if (pid < 0)
        return false;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int null = open("/dev/null", O_RDWR);
        if (null >= 0) {
            dup2(null, 0);
            dup2(null, 1);
            dup2(null, 2);
        }
        execlp("redis-server", "redis-server", conf, "--sentinel", (char *)NULL);
        _exit(127);
    }
    s->pid = pid;
    long long until = th_now_ms() + 10000;
    while (th_now_ms() < until) {
        if (rs_port_open(s->port))
            return true;
        th_sleep_ms(10);
    }
    return false;
}

static void sentinel_stop(sentinel *s) {
    if (s->pid > 0) {
        kill(s->pid, SIGKILL);
        waitpid(s->pid, NULL, 0);
        s->pid = 0;
    }
    if (s->dir[0]) {
        char cmd[400];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", s->dir);
        if (system(cmd) != 0)
            fprintf(stderr, "  could not remove %s\n", s->dir);
    }
}

/* A command to a sentinel; the reply (caller frees) or NULL. */
static redisReply *sentinel_cmd(const sentinel *s, const char *fmt, ...) {
    struct timeval tv = {2, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", s->port, tv);
    if (!c || c->err) {
        if (c)
            redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, tv);
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    redisFree(c);
    return r;
}

/* The master port a sentinel names for m1, or -1. */
static int sentinel_master_port(const sentinel *s) {
    redisReply *r = sentinel_cmd(s, "SENTINEL get-master-addr-by-name m1");
    int port = -1;
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 2)
        port = atoi(r->element[1]->str);
    if (r)
        freeReplyObject(r);
    return port;
}

/* True when every sentinel sees the two others and the replica. */
static bool sentinels_settled(const sentinel *s) {
    for (int i = 0; i < NSENT; i++) {
        redisReply *r = sentinel_cmd(&s[i], "SENTINEL master m1");
        bool ok = false;
        if (r && r->type == REDIS_REPLY_ARRAY) {
            int others = -1, slaves = -1;
            for (size_t k = 0; k + 1 < r->elements; k += 2) {
                if (strcmp(r->element[k]->str, "num-other-sentinels") == 0)
                    others = atoi(r->element[k + 1]->str);
                if (strcmp(r->element[k]->str, "num-slaves") == 0)
                    slaves = atoi(r->element[k + 1]->str);
            }
            ok = others == NSENT - 1 && slaves >= 1;
        }
        if (r)
            freeReplyObject(r);
        if (!ok)
            return false;
    }
    return true;
}

/* A replica whose link to its master is up. */
static bool replica_synced(const rs_server *rs) {
    redisReply *r = rs_cmd(rs, NULL, "INFO replication");
    bool ok =
        r && r->str && strstr(r->str, "role:slave") && strstr(r->str, "master_link_status:up");
    if (r)
        freeReplyObject(r);
    return ok;
}

TEST(url_errors) {
    const char *bad[] = {
        "redis+sentinel://127.0.0.1:1",       /* no master name */
        "redis+sentinel://127.0.0.1:1/",      /* empty master name */
        "redis+sentinel://127.0.0.1:1/a/b",   /* path with '/' */
        "redis+sentinel://127.0.0.1:1,/m",    /* empty sentinel */
        "redis+sentinel://127.0.0.1:99999/m", /* bad port */
        "redis+sentinel://127.0.0.1:1/m?x=1", /* query */
        "redis+sentinel://h:1,h:x/m",         /* bad port in the second sentinel */
        "redis+sentinel://127.0.0.1:1/m%zz",  /* bad escape */
    };
    /* ... and the password never shows */
    TU_CHECK_BAD_URLS(bad, "redis+sentinel://:s3cret@127.0.0.1:1/", "s3cret");
}

TEST(failover_under_load) {
    rs_server master = {0}, replica = {0};
    REQUIRE(rs_start(&master));
    static char mport[16];
    snprintf(mport, sizeof mport, "%d", master.port);
    rs_args(&replica, "--replicaof", "127.0.0.1", mport, NULL);
    REQUIRE(rs_start(&replica));
    sentinel s[NSENT] = {{0}};
    for (int i = 0; i < NSENT; i++)
        REQUIRE(sentinel_start(&s[i], master.port));
    long long t0 = th_now_ms();
    bool settled = false;
    WAIT_UNTIL((settled = sentinels_settled(s)), 20000);
    REQUIRE(settled);
    fprintf(stderr, "  sentinels settled in %lld ms\n", th_now_ms() - t0);

    char url[300];
    snprintf(url, sizeof url, "redis+sentinel://127.0.0.1:%d,127.0.0.1:%d,127.0.0.1:%d/m1",
             s[0].port, s[1].port, s[2].port);

    /* unknown master name: reported, no crash; a sentinel that is down is skipped */
    {
        char u2[300];
        snprintf(u2, sizeof u2, "redis+sentinel://127.0.0.1:1,127.0.0.1:%d/nosuch", s[0].port);
        psrpc_bus_options o = rt_opts(500);
        psrpc_bus *b = rt_bus(u2, &o);
        REQUIRE(b);
        rt_watch *w = rt_watch_new(b);
        CHECK(rt_wait_event(w, 0, PSRPC_BUS_DISCONNECTED, 3000) >= 0);
        char msg[512];
        int st = 0;
        rt_last(w, &st, msg, sizeof msg);
        fprintf(stderr, "  unknown master: %s\n", msg);
        CHECK(strstr(msg, "does not know master") != NULL);
        CHECK(strstr(msg, "nosuch") != NULL);
        psrpc_bus_free(b);
    }
    /* a "master" that is a replica is refused (ROLE) */
    {
        redisReply *r = sentinel_cmd(&s[0], "SENTINEL MONITOR fake 127.0.0.1 %d 3", replica.port);
        CHECK(r && r->type == REDIS_REPLY_STATUS);
        if (r)
            freeReplyObject(r);
        char u2[300];
        snprintf(u2, sizeof u2, "redis+sentinel://127.0.0.1:%d/fake", s[0].port);
        psrpc_bus_options o = rt_opts(500);
        psrpc_bus *b = rt_bus(u2, &o);
        REQUIRE(b);
        rt_watch *w = rt_watch_new(b);
        CHECK(rt_wait_event(w, 0, PSRPC_BUS_DISCONNECTED, 3000) >= 0);
        char msg[512];
        rt_last(w, NULL, msg, sizeof msg);
        fprintf(stderr, "  replica named as master: %s\n", msg);
        CHECK(strstr(msg, "not master") != NULL);
        CHECK(rt_event_at(w, 0, PSRPC_BUS_CONNECTED) < 0);
        psrpc_bus_free(b);
        r = sentinel_cmd(&s[0], "SENTINEL REMOVE fake");
        if (r)
            freeReplyObject(r);
    }

    psrpc_bus_options o = rt_opts(500);
    psrpc_bus *sb = rt_bus_ready(url, &o), *cb = rt_bus_ready(url, &o);
    REQUIRE(sb && cb);
    rt_watch *w = rt_watch_new(cb);
    char svc[64];
    tu_service(svc, sizeof svc);
    psrpc_method m = tu_method("Echo", PSRPC_ROUTING_QUEUE, 0);
    tu_srv *srv = tu_srv_new(sb, svc, NULL, TU_ECHO);
    REQUIRE(srv->server && tu_srv_register(srv, &m, NULL, 0) == PSRPC_OK);
    psrpc_client *cl = tu_client(cb, svc, 1000, 500);
    REQUIRE(cl);
    REQUIRE(rt_call(cl, &m, "warmup", NULL, 0, 2000) == PSRPC_OK);

    /* A manual failover (the old master stays up, demoted): the buses follow
     * +switch-master and move to the new master; calls go on working. */
    {
        int ev = rt_nevents(w);
        long long t = th_now_ms();
        redisReply *r = sentinel_cmd(&s[1], "SENTINEL FAILOVER m1");
        CHECK(r && r->type == REDIS_REPLY_STATUS);
        if (r)
            freeReplyObject(r);
        CHECK(rt_wait_event(w, ev, PSRPC_BUS_DISCONNECTED, 10000) >= 0);
        char msg[512];
        rt_last(w, NULL, msg, sizeof msg);
        fprintf(stderr, "  disconnect reason: %s\n", msg);
        long long up = rt_wait_event(w, ev, PSRPC_BUS_CONNECTED, 10000);
        CHECK(up > 0);
        int st = rt_call(cl, &m, "after-switch", NULL, 0, 2000);
        long long ok_ms = th_now_ms();
        fprintf(stderr,
                "  SENTINEL FAILOVER: bus back on :%d %lld ms after the command; a call "
                "%s %lld ms after it\n",
                sentinel_master_port(&s[0]), up - t, psrpc_status_name(st), ok_ms - t);
        CHECK_EQ_INT(st, PSRPC_OK);
        CHECK_EQ_INT(sentinel_master_port(&s[0]), replica.port);
        /* let the demoted master become a synced replica the sentinels know */
        bool again = false;
        WAIT_UNTIL((again = sentinels_settled(s) && replica_synced(&master)), 20000);
        REQUIRE(again);
        /* swap roles: "master" is the current master from here on */
        rs_server tmp = master;
        master = replica;
        replica = tmp;
    }

    rt_load *l = rt_load_new(LOAD_MAX);
    long long end = th_now_ms() + 1000;
    while (th_now_ms() < end) {
        rt_load_issue(l, cl, &m);
        th_sleep_ms(10);
    }
    int before_kill = l->n;
    int ev0 = rt_nevents(w);
    long long kill_ms = th_now_ms();
    rs_kill9(&master);
    /* load until 2 s after the first success of a call issued after the kill */
    long long stop_at = kill_ms + tu_ms(25000);
    long long first_ok = -1;
    while (th_now_ms() < stop_at && l->n < LOAD_MAX) {
        rt_load_issue(l, cl, &m);
        th_sleep_ms(10);
        if (first_ok < 0) {
            for (int i = before_kill; i < l->n; i++) {
                if (l->rc[i] == PSRPC_OK && atomic_load(&l->calls[i].count) == 1 &&
                    l->calls[i].status == PSRPC_OK) {
                    first_ok = l->calls[i].at_ms;
                    stop_at = th_now_ms() + 2000;
                    break;
                }
            }
        }
    }
    int total = l->n;
    for (int i = 0; i < total; i++)
        if (l->rc[i] == PSRPC_OK)
            tu_wait_count(&l->calls[i].count, 1, 3000);
    int ok = 0, unavailable = 0, deadline = 0, other = 0, not_once = 0, late = 0;
    long long up_ms = rt_event_at(w, ev0, PSRPC_BUS_CONNECTED);
    for (int i = 0; i < total; i++) {
        tu_call *c = &l->calls[i];
        int st = l->rc[i] != PSRPC_OK ? l->rc[i] : c->status;
        if (l->rc[i] == PSRPC_OK && (atomic_load(&c->count) != 1 || atomic_load(&c->bad)))
            not_once++;
        if (st == PSRPC_OK)
            ok++;
        else if (st == PSRPC_UNAVAILABLE)
            unavailable++;
        else if (st == PSRPC_DEADLINE_EXCEEDED)
            deadline++;
        else {
            other++;
            fprintf(stderr, "  request %d: %s %s\n", i, psrpc_status_name(st), c->message);
        }
        if (up_ms > 0 && l->issued_ms[i] > up_ms + tu_ms(1000) && st != PSRPC_OK)
            late++;
    }
    int new_port = sentinel_master_port(&s[0]);
    fprintf(stderr,
            "  %d requests: %d ok, %d unavailable, %d deadline, %d other, %d not exactly once; "
            "%d before the kill\n",
            total, ok, unavailable, deadline, other, not_once, before_kill);
    fprintf(stderr,
            "  kill -9 master :%d; sentinels now name :%d (replica :%d); bus back %lld ms and "
            "first success %lld ms after the kill\n",
            master.port, new_port, replica.port, up_ms > 0 ? up_ms - kill_ms : -1,
            first_ok > 0 ? first_ok - kill_ms : -1);
    CHECK_EQ_INT(not_once, 0);
    CHECK_EQ_INT(other, 0);
    CHECK_EQ_INT(new_port, replica.port);
    CHECK(first_ok > 0);
    CHECK(up_ms > 0);
    CHECK_EQ_INT(late, 0);
    for (int i = 0; i < before_kill - 5; i++)
        CHECK(l->calls[i].status == PSRPC_OK);
    /* the replica is now the master: both connections of each bus are there */
    redisReply *r = rs_cmd(&replica, NULL, "CLIENT LIST");
    int conns = 0;
    for (const char *p = r && r->str ? r->str : ""; (p = strstr(p, "id=")); p++)
        conns++;
    if (r)
        freeReplyObject(r);
    CHECK(conns >= 4 + 1);

    psrpc_client_free(cl);
    psrpc_server_free(srv->server);
    psrpc_bus_free(cb);
    psrpc_bus_free(sb);
    tu_srv_destroy(srv);
    rt_load_free(l);
    for (int i = 0; i < NSENT; i++)
        sentinel_stop(&s[i]);
    rs_stop(&replica);
    rs_stop(&master);
}

TEST_MAIN()
