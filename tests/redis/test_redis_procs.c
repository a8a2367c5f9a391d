/* C servers and a C client in different processes over one private
 * redis-server (redis_peer): queue, affinity, multi, subscription and stream calls
 * cross process boundaries; the servers exit cleanly on SIGTERM. Also the
 * same through a redis-server restart. */
#include "rt.h"

typedef struct peer {
    pid_t pid;
    FILE *out;
} peer;

static bool peer_start(peer *p, const char *const *argv) {
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
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(fds[1]);
    p->pid = pid;
    p->out = fdopen(fds[0], "r");
    return p->out != NULL;
}

/* Reads lines until one equals want (bounded by the peer's own timeouts). */
static bool peer_expect(peer *p, const char *want) {
    char line[256];
    while (fgets(line, sizeof line, p->out)) {
        line[strcspn(line, "\n")] = 0;
        if (strcmp(line, want) == 0)
            return true;
        fprintf(stderr, "  peer: %s\n", line);
    }
    return false;
}

static int peer_wait(peer *p, long ms) {
    long long until = th_now_ms() + (long long)(ms * th_time_factor());
    int st = 0;
    while (th_now_ms() < until) {
        pid_t r = waitpid(p->pid, &st, WNOHANG);
        if (r == p->pid) {
            if (p->out)
                fclose(p->out);
            p->out = NULL;
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

static int run_call(const char *url, const char *svc, const char *nservers) {
    const char *argv[] = {PSRPC_REDIS_PEER, "call", url, svc, nservers, NULL};
    peer c = {0};
    if (!peer_start(&c, argv))
        return -1;
    char line[256];
    while (fgets(line, sizeof line, c.out))
        fprintf(stderr, "  call: %s", line);
    return peer_wait(&c, 30000);
}

TEST(servers_and_client_in_separate_processes) {
    rs_server rs = {0};
    REQUIRE(rs_start(&rs));
    char svc[64];
    tu_service(svc, sizeof svc);
    peer s[2] = {{0}, {0}};
    for (int i = 0; i < 2; i++) {
        const char *argv[] = {PSRPC_REDIS_PEER, "serve", rs.url, svc, NULL};
        REQUIRE(peer_start(&s[i], argv));
        REQUIRE(peer_expect(&s[i], "ready"));
    }
    CHECK_EQ_INT(run_call(rs.url, svc, "2"), 0);

    /* the servers reconnect after a restart; a new client process works */
    REQUIRE(rs_restart(&rs));
    th_sleep_ms(1500); /* backoff is at most 1 s; resubscription follows */
    CHECK_EQ_INT(run_call(rs.url, svc, "2"), 0);

    for (int i = 0; i < 2; i++) {
        kill(s[i].pid, SIGTERM);
        CHECK_EQ_INT(peer_wait(&s[i], 10000), 0);
    }
    rs_stop(&rs);
}

TEST_MAIN()
