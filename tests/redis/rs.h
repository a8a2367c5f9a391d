/* A private redis-server for one test: started on a free loopback port in a
 * temp dir (hiredis test.sh pattern), killed, stopped/continued, restarted
 * on the same port, and removed at the end. Raw commands go through a
 * hiredis synchronous connection (the test's own, not the library's). A
 * server that does not start fails the test. */
#ifndef PSRPC_TESTS_REDIS_RS_H
#define PSRPC_TESTS_REDIS_RS_H

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

#define RS_MAX_ARGS 48

typedef struct rs_server {
    pid_t pid;
    int port;     /* plain port, 0 if TLS only */
    int tls_port; /* 0 = none */
    bool cluster; /* set before rs_start: a cluster bus port is chosen with the others */
    int cluster_port;
    char dir[256];
    const char *extra[RS_MAX_ARGS]; /* extra redis-server arguments (borrowed) */
    int nextra;
    char url[300]; /* redis://127.0.0.1:port or rediss://... */
} rs_server;

static inline int rs_free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    int port = -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

static inline bool rs_port_open(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return false;
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bool ok = connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
    close(fd);
    return ok;
}

/* Adds extra arguments (NULL-terminated list) before rs_start. */
static inline void rs_args(rs_server *s, ...) {
    va_list ap;
    va_start(ap, s);
    const char *a;
    while ((a = va_arg(ap, const char *)) != NULL && s->nextra < RS_MAX_ARGS)
        s->extra[s->nextra++] = a;
    va_end(ap);
}

static inline bool rs_spawn(rs_server *s) {
    char port[16], tls_port[16], cluster_port[16], log[300];
    snprintf(port, sizeof port, "%d", s->port);
    snprintf(tls_port, sizeof tls_port, "%d", s->tls_port);
    snprintf(cluster_port, sizeof cluster_port, "%d", s->cluster_port);
    snprintf(log, sizeof log, "%s/redis.log", s->dir);
    const char *argv[RS_MAX_ARGS + 32];
    int n = 0;
    argv[n++] = "redis-server";
    argv[n++] = "--port";
    argv[n++] = port;
    if (s->tls_port) {
        argv[n++] = "--tls-port";
        argv[n++] = tls_port;
    }
    if (s->cluster_port) {
        argv[n++] = "--cluster-port";
        argv[n++] = cluster_port;
    }
    argv[n++] = "--bind";
    argv[n++] = "127.0.0.1";
    argv[n++] = "--save";
    argv[n++] = "";
    argv[n++] = "--appendonly";
    argv[n++] = "no";
    argv[n++] = "--daemonize";
    argv[n++] = "no";
    argv[n++] = "--dir";
    argv[n++] = s->dir;
    argv[n++] = "--logfile";
    argv[n++] = log;
    for (int i = 0; i < s->nextra; i++)
        argv[n++] = s->extra[i];
    argv[n] = NULL;
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
        execvp("redis-server", (char *const *)argv);
        _exit(127);
    }
    s->pid = pid;
    int p = s->port;
    long long until = th_now_ms() + 10000;
    while (th_now_ms() < until) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            fprintf(stderr, "  redis-server exited at start (status %d); log %s\n", st, log);
            s->pid = 0;
            return false;
        }
        if (rs_port_open(p) && (!s->tls_port || rs_port_open(s->tls_port)))
            return true;
        th_sleep_ms(10);
    }
    fprintf(stderr, "  redis-server does not listen on %d after 10 s\n", p);
    return false;
}

/* Starts a server (tls: also on a TLS port, which the URL names; the plain
 * port stays for raw commands; the TLS file arguments are the caller's). Returns false (and prints
 * why) if it does not come up. */
static inline bool rs_start_opts(rs_server *s, bool tls) {
    snprintf(s->dir, sizeof s->dir, "%s/psrpc-redis-XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(s->dir)) {
        perror("  mkdtemp");
        return false;
    }
    /* A free port can be taken by a test running beside this one before
     * redis-server binds it (it then exits at start): new ports, up to 3
     * tries. */
    for (int attempt = 1;; attempt++) {
        s->port = rs_free_port();
        if (s->port <= 0)
            return false;
        if (tls) {
            do
                s->tls_port = rs_free_port();
            while (s->tls_port == s->port);
            if (s->tls_port <= 0)
                return false;
        }
        if (s->cluster) {
            do
                s->cluster_port = rs_free_port();
            while (s->cluster_port == s->port || s->cluster_port == s->tls_port);
            if (s->cluster_port <= 0)
                return false;
        }
        snprintf(s->url, sizeof s->url, "%s://127.0.0.1:%d", tls ? "rediss" : "redis",
                 tls ? s->tls_port : s->port);
        if (rs_spawn(s))
            return true;
        if (s->pid > 0) { /* up but not listening: not ours to keep */
            kill(s->pid, SIGKILL);
            waitpid(s->pid, NULL, 0);
            s->pid = 0;
        }
        if (attempt == 3)
            return false;
        fprintf(stderr, "  trying again on other ports\n");
    }
}

static inline bool rs_start(rs_server *s) { return rs_start_opts(s, false); }

static inline void rs_kill9(rs_server *s) {
    if (s->pid <= 0)
        return;
    kill(s->pid, SIGKILL);
    waitpid(s->pid, NULL, 0);
    s->pid = 0;
}

/* Restarts on the same port(s) with the same arguments. */
static inline bool rs_restart(rs_server *s) {
    rs_kill9(s);
    return rs_spawn(s);
}

static inline void rs_signal(rs_server *s, int sig) {
    if (s->pid > 0)
        kill(s->pid, sig);
}

static inline void rs_stop(rs_server *s) {
    if (s->pid > 0) {
        kill(s->pid, SIGCONT);
        rs_kill9(s);
    }
    if (s->dir[0]) {
        char cmd[400];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", s->dir);
        if (system(cmd) != 0)
            fprintf(stderr, "  could not remove %s\n", s->dir);
        s->dir[0] = 0;
    }
}

/* A raw connection to the plain port (optionally AUTH with a password). */
static inline redisContext *rs_connect(const rs_server *s, const char *password) {
    struct timeval tv = {2, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", s->port, tv);
    if (!c || c->err) {
        fprintf(stderr, "  raw connect to %d failed: %s\n", s->port, c ? c->errstr : "oom");
        if (c)
            redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, tv);
    if (password) {
        redisReply *r = redisCommand(c, "AUTH %s", password);
        bool ok = r && r->type == REDIS_REPLY_STATUS;
        if (r)
            freeReplyObject(r);
        if (!ok) {
            redisFree(c);
            return NULL;
        }
    }
    return c;
}

/* Runs one command on a fresh raw connection; returns the reply (caller
 * frees) or NULL. */
static inline redisReply *rs_cmd(const rs_server *s, const char *password, const char *fmt, ...) {
    redisContext *c = rs_connect(s, password);
    if (!c)
        return NULL;
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    redisFree(c);
    return r;
}

/* A command whose reply must be +OK. */
static inline bool rs_ok(const rs_server *s, const char *password, const char *fmt, ...) {
    redisContext *c = rs_connect(s, password);
    if (!c)
        return false;
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    bool ok = r && r->type == REDIS_REPLY_STATUS && strcmp(r->str, "OK") == 0;
    if (!ok)
        fprintf(stderr, "  redis command %s: %s\n", fmt, r && r->str ? r->str : "(no reply)");
    if (r)
        freeReplyObject(r);
    redisFree(c);
    return ok;
}

#endif
