/* Helpers of the NATS fault tests: private nats-server processes (free
 * loopback ports, config files in a temp dir, kill/stop/continue/restart on
 * the same port), and a small echo service with per-call completion records.
 * A server that does not start fails the test. */
#ifndef PSRPC_TESTS_NATS_NT_H
#define PSRPC_TESTS_NATS_NT_H

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
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
#include "psrpc.h"

/* ------------------------------------------------------------------------ */
/* Temp dir and files                                                        */
/* ------------------------------------------------------------------------ */

static char nt_tmp[256];

/* The test run's temp dir (created once, removed at exit). */
static void nt_rm_tmp(void) {
    if (nt_tmp[0] && strncmp(nt_tmp, "/tmp/", 5) == 0 && !getenv("PSRPC_TEST_KEEP_TMP")) {
        char cmd[300];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", nt_tmp);
        if (system(cmd) != 0)
            fprintf(stderr, "  cannot remove %s\n", nt_tmp);
    }
}

static inline const char *nt_dir(void) {
    if (!nt_tmp[0]) {
        snprintf(nt_tmp, sizeof nt_tmp, "/tmp/psrpc-nats-test.XXXXXX");
        if (!mkdtemp(nt_tmp)) {
            perror("mkdtemp");
            abort();
        }
        atexit(nt_rm_tmp);
    }
    return nt_tmp;
}

/* path = temp dir + "/" + name. */
static inline void nt_path(char *out, size_t n, const char *name) {
    snprintf(out, n, "%s/%s", nt_dir(), name);
}

static inline bool nt_write(const char *name, const char *fmt, ...) {
    char path[512];
    nt_path(path, sizeof path, name);
    FILE *f = fopen(path, "w");
    if (!f)
        return false;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(f, fmt, ap);
    va_end(ap);
    return fclose(f) == 0;
}

/* ------------------------------------------------------------------------ */
/* nats-server processes                                                     */
/* ------------------------------------------------------------------------ */

static inline int nt_free_port(void) {
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

/* True once a NATS server on port greets with an INFO line naming it
 * (another test run's server on a reused port does not count). */
static inline bool nt_greets(int port, const char *name) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return false;
    struct timeval tv = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    char buf[2048];
    size_t n = 0;
    bool ok = false;
    if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0) {
        while (n < sizeof buf - 1) {
            ssize_t r = recv(fd, buf + n, sizeof buf - 1 - n, 0);
            if (r <= 0)
                break;
            n += (size_t)r;
            buf[n] = 0;
            if (strchr(buf, '\n'))
                break;
        }
        char want[64];
        snprintf(want, sizeof want, "\"server_name\":\"%s\"", name);
        ok = n >= 4 && memcmp(buf, "INFO", 4) == 0 && strstr(buf, want) != NULL;
    }
    close(fd);
    return ok;
}

typedef struct nt_server {
    pid_t pid;
    int port;         /* client port */
    int cluster_port; /* 0 without a cluster block */
    char name[32];
    char conf[512];
    char log[512];
    char url[128]; /* nats://127.0.0.1:port */
    char extra[4096];
    bool started_once;
} nt_server;

static int nt_server_seq;

static inline void nt_server_write_conf(nt_server *s) {
    snprintf(s->url, sizeof s->url, "nats://127.0.0.1:%d", s->port);
    FILE *f = fopen(s->conf, "w");
    if (f) {
        fprintf(f, "listen: 127.0.0.1:%d\nserver_name: %s\n%s\n", s->port, s->name, s->extra);
        fclose(f);
    }
}

/* Writes the config: "listen" plus extra (may be NULL), on a fresh port. */
static inline void nt_server_init(nt_server *s, const char *extra_fmt, ...) {
    memset(s, 0, sizeof s[0]);
    snprintf(s->name, sizeof s->name, "ns%d_%d", (int)getpid(), nt_server_seq++);
    s->port = nt_free_port();
    char file[64];
    snprintf(file, sizeof file, "%s.conf", s->name);
    nt_path(s->conf, sizeof s->conf, file);
    snprintf(file, sizeof file, "%s.log", s->name);
    nt_path(s->log, sizeof s->log, file);
    if (extra_fmt) {
        va_list ap;
        va_start(ap, extra_fmt);
        vsnprintf(s->extra, sizeof s->extra, extra_fmt, ap);
        va_end(ap);
    }
    nt_server_write_conf(s);
}

static inline void nt_print_log(const nt_server *s) {
    char cmd[600];
    snprintf(cmd, sizeof cmd, "tail -n 15 '%s' >&2", s->log);
    if (system(cmd) != 0)
        fprintf(stderr, "  (no log)\n");
}

/* One attempt: 1 = up, 0 = it exited (port taken?), -1 = no answer. */
static inline int nt_server_try(nt_server *s) {
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int null = open("/dev/null", O_RDWR);
        if (null >= 0) {
            dup2(null, 0);
            dup2(null, 1);
            dup2(null, 2);
        }
        execlp("nats-server", "nats-server", "-c", s->conf, "-l", s->log, (char *)NULL);
        _exit(127);
    }
    s->pid = pid;
    long long deadline = th_now_ms() + 10000;
    while (th_now_ms() < deadline) {
        if (nt_greets(s->port, s->name))
            return 1;
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            fprintf(stderr, "  nats-server %s exited (status %d) before it answered\n", s->name,
                    st);
            nt_print_log(s);
            s->pid = 0;
            return 0;
        }
        th_sleep_ms(20);
    }
    fprintf(stderr, "  nats-server %s does not answer on port %d\n", s->name, s->port);
    nt_print_log(s);
    return -1;
}

/* Starts (or restarts, same port and config) the server; waits until it
 * greets. A first start whose port was taken meanwhile moves to another
 * port. false (with its log) if it does not come up within 10 s. */
static inline bool nt_server_start(nt_server *s) {
    for (int i = 0; i < 3; i++) {
        int r = nt_server_try(s);
        if (r == 1) {
            s->started_once = true;
            return true;
        }
        if (r < 0 || s->started_once)
            return false;
        s->port = nt_free_port();
        nt_server_write_conf(s);
    }
    return false;
}

static inline void nt_server_signal(nt_server *s, int sig) {
    if (s->pid > 0)
        kill(s->pid, sig);
}

/* kill -9 and reap. */
static inline void nt_server_kill(nt_server *s) {
    if (s->pid <= 0)
        return;
    kill(s->pid, SIGCONT);
    kill(s->pid, SIGKILL);
    waitpid(s->pid, NULL, 0);
    s->pid = 0;
}

/* ------------------------------------------------------------------------ */
/* Bus options and state                                                     */
/* ------------------------------------------------------------------------ */

static inline double nt_factor(void) { return th_time_factor(); }
static inline long nt_ms(long ms) { return (long)(ms * nt_factor()); }

/* The test defaults (test plan 3.0): reconnect wait 250 ms, ping 1 s. */
static inline psrpc_bus_options nt_opts(void) {
    psrpc_bus_options o = PSRPC_BUS_OPTIONS_INIT;
    o.reconnect_wait_ms = 250;
    o.reconnect_wait_max_ms = 1000;
    o.ping_interval_ms = 1000;
    o.connect_timeout_ms = 2000;
    return o;
}

static inline psrpc_bus *nt_bus(const char *url, const psrpc_bus_options *o) {
    psrpc_bus *bus = NULL;
    int rc = psrpc_bus_open(&bus, url, o);
    if (rc != PSRPC_OK) {
        fprintf(stderr, "  psrpc_bus_open failed: %s %s\n", psrpc_status_name(rc),
                psrpc_last_error());
        return NULL;
    }
    return bus;
}

static inline psrpc_bus_stats nt_stats(psrpc_bus *bus) {
    psrpc_bus_stats s;
    memset(&s, 0, sizeof s);
    s.struct_size = sizeof s;
    psrpc_bus_get_stats(bus, &s);
    return s;
}

/* A state watcher: last state, its status and message, and when each state
 * was last entered. */
typedef struct nt_watch {
    atomic_int state;
    atomic_int status;
    atomic_int downs, ups;
    atomic_llong down_at_ms, up_at_ms;
    pthread_mutex_t mu;
    char message[512];
} nt_watch;

static void nt_watch_cb(int state, const psrpc_error *error, void *user_data) {
    nt_watch *w = (nt_watch *)user_data;
    pthread_mutex_lock(&w->mu);
    snprintf(w->message, sizeof w->message, "%s", error && error->message ? error->message : "");
    pthread_mutex_unlock(&w->mu);
    atomic_store(&w->status, error ? error->status : 0);
    if (state == PSRPC_BUS_DISCONNECTED && atomic_load(&w->state) != PSRPC_BUS_DISCONNECTED) {
        atomic_store(&w->down_at_ms, th_now_ms());
        atomic_fetch_add(&w->downs, 1);
    }
    if (state == PSRPC_BUS_CONNECTED && atomic_load(&w->state) != PSRPC_BUS_CONNECTED) {
        atomic_store(&w->up_at_ms, th_now_ms());
        atomic_fetch_add(&w->ups, 1);
    }
    atomic_store(&w->state, state);
}

static void nt_watch_release(void *user_data) { (void)user_data; }

static inline nt_watch *nt_watch_new(psrpc_bus *bus) {
    nt_watch *w = (nt_watch *)calloc(1, sizeof *w);
    pthread_mutex_init(&w->mu, NULL);
    if (psrpc_bus_watch(bus, nt_watch_cb, w, nt_watch_release) != PSRPC_OK)
        fprintf(stderr, "  psrpc_bus_watch failed: %s\n", psrpc_last_error());
    return w;
}

/* ------------------------------------------------------------------------ */
/* An echo service and call records                                          */
/* ------------------------------------------------------------------------ */

typedef struct nt_srv {
    psrpc_server *server;
    atomic_int handled;
    atomic_int expired_seen; /* handled although its expiry had passed */
    atomic_int released;
} nt_srv;

static void nt_echo(psrpc_request *req, void *user_data) {
    nt_srv *s = (nt_srv *)user_data;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t now = (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    if (psrpc_request_expiry_ns(req) && psrpc_request_expiry_ns(req) < now)
        atomic_fetch_add(&s->expired_seen, 1);
    const psrpc_msg *p = psrpc_request_payload(req);
    psrpc_request_respond(req, p ? psrpc_msg_data(p) : NULL, p ? psrpc_msg_size(p) : 0);
    atomic_fetch_add(&s->handled, 1);
}

static void nt_srv_release(void *user_data) {
    atomic_fetch_add(&((nt_srv *)user_data)->released, 1);
}

static inline psrpc_method nt_method(const char *name, uint32_t routing, uint32_t flags) {
    psrpc_method m = PSRPC_METHOD_INIT;
    m.name = name;
    m.routing = routing;
    m.flags = flags;
    return m;
}

/* A server of service with method m (echo), registered and confirmed. */
static inline nt_srv *nt_srv_new(psrpc_bus *bus, const char *service, const psrpc_method *m) {
    nt_srv *s = (nt_srv *)calloc(1, sizeof *s);
    if (psrpc_server_create(&s->server, bus, service, NULL) != PSRPC_OK ||
        psrpc_server_register(s->server, m, NULL, 0, nt_echo, NULL, NULL, s, nt_srv_release) !=
            PSRPC_OK ||
        psrpc_server_wait_ready(s->server, nt_ms(10000)) != PSRPC_OK) {
        fprintf(stderr, "  echo server: %s\n", psrpc_last_error());
        psrpc_server_free(s->server);
        s->server = NULL;
    }
    return s;
}

/* Frees the server; the record itself is freed by the caller once the bus
 * is freed (the release callback may still run until then). */
static inline void nt_srv_stop(nt_srv *s) {
    if (s && s->server)
        psrpc_server_free(s->server);
    if (s)
        s->server = NULL;
}

typedef struct nt_call {
    atomic_int count;
    atomic_int status;
    atomic_llong at_ms;
    long long sent_ms;
    bool payload_ok;
    char expect[32];
} nt_call;

static void nt_call_cb(uint64_t id, const psrpc_msg *response, const psrpc_error *error,
                       const char *server_id, void *user_data) {
    (void)id, (void)server_id;
    nt_call *c = (nt_call *)user_data;
    if (response)
        c->payload_ok = psrpc_msg_size(response) == strlen(c->expect) &&
                        memcmp(psrpc_msg_data(response), c->expect, strlen(c->expect)) == 0;
    atomic_store(&c->status, error ? error->status : PSRPC_OK);
    atomic_store(&c->at_ms, th_now_ms());
    atomic_fetch_add(&c->count, 1);
}

static inline psrpc_client *nt_client(psrpc_bus *bus, const char *service, int64_t timeout_ms) {
    psrpc_client_options o = PSRPC_CLIENT_OPTIONS_INIT;
    o.timeout_ms = timeout_ms;
    psrpc_client *c = NULL;
    if (psrpc_client_create(&c, bus, service, &o) != PSRPC_OK) {
        fprintf(stderr, "  psrpc_client_create: %s\n", psrpc_last_error());
        return NULL;
    }
    return c;
}

/* One call with a unique payload; returns the psrpc_client_call status. */
static inline int nt_call_start(psrpc_client *cl, const psrpc_method *m, nt_call *c, int seq,
                                const psrpc_call_options *o) {
    snprintf(c->expect, sizeof c->expect, "req-%d", seq);
    c->sent_ms = th_now_ms();
    return psrpc_client_call(NULL, cl, m, c->expect, strlen(c->expect), o, nt_call_cb, c);
}

/* A synchronous echo round trip; the status. */
static inline int nt_roundtrip(psrpc_client *cl, const psrpc_method *m, const char *payload) {
    psrpc_msg *out = NULL;
    int rc = psrpc_client_call_sync(&out, cl, m, payload, strlen(payload), NULL);
    if (rc == PSRPC_OK) {
        if (psrpc_msg_size(out) != strlen(payload) ||
            memcmp(psrpc_msg_data(out), payload, strlen(payload)) != 0)
            rc = PSRPC_INTERNAL;
        psrpc_msg_release(out);
    }
    return rc;
}

/* Polls round trips until one succeeds; the time it took (ms), or -1. */
static inline long long nt_until_roundtrip(psrpc_client *cl, const psrpc_method *m, long ms) {
    long long t0 = th_now_ms(), deadline = t0 + ms;
    while (th_now_ms() < deadline) {
        if (nt_roundtrip(cl, m, "probe") == PSRPC_OK)
            return th_now_ms() - t0;
        th_sleep_ms(20);
    }
    return -1;
}

static inline void nt_unique(char *buf, size_t n, const char *prefix) {
    static atomic_int seq;
    snprintf(buf, n, "%s%d_%d", prefix, (int)getpid(), atomic_fetch_add(&seq, 1));
}

#endif
