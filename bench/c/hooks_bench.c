/* Overhead of hooks (issue 16): unary calls over an in-process bus with no
 * hooks against the same with an empty hook chain (a client hook with
 * before_send + on_outcome and a server hook with before_handle +
 * on_outcome, all doing nothing), and with a metrics object attached.
 * Rounds alternate between the setups so machine load hits them alike; the
 * median per-call time of each is printed.
 *
 *   hooks_bench [--calls N] [--rounds R] [--inflight W] [--url URL]
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "psrpc.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void echo(psrpc_request *req, void *ud) {
    (void)ud;
    const psrpc_msg *p = psrpc_request_payload(req);
    psrpc_request_respond(req, psrpc_msg_data(p), psrpc_msg_size(p));
}

static int c_before(const psrpc_call_info *i, psrpc_hook_call *c, void *ud) {
    (void)i;
    (void)c;
    (void)ud;
    return 0;
}
static void c_outcome(const psrpc_call_info *i, const psrpc_call_outcome *o, void *ud) {
    (void)i;
    (void)o;
    (void)ud;
}

typedef struct window {
    pthread_mutex_t mu;
    pthread_cond_t cond;
    int inflight;
    long done;
    long failed;
} window;

static void call_done(uint64_t id, const psrpc_msg *r, const psrpc_error *e, const char *sid,
                      void *ud) {
    (void)id;
    (void)r;
    (void)sid;
    window *w = ud;
    pthread_mutex_lock(&w->mu);
    w->inflight--;
    w->done++;
    if (e)
        w->failed++;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->mu);
}

enum { PLAIN, EMPTY_HOOKS, METRICS, SETUPS };
static const char *const names[SETUPS] = {"no hooks", "empty hook chain", "metrics attached"};

/* One round: calls sequential-windowed calls; returns seconds per call. */
static double round_once(int setup, const char *url, long calls, int inflight) {
    psrpc_bus *bus = NULL;
    psrpc_server *srv = NULL;
    psrpc_client *cl = NULL;
    psrpc_metrics *m = NULL;
    psrpc_method meth = PSRPC_METHOD_INIT;
    meth.name = "Echo";
    if (psrpc_bus_open(&bus, url, NULL) != PSRPC_OK ||
        psrpc_server_create(&srv, bus, "HookBench", NULL) != PSRPC_OK ||
        psrpc_server_register(srv, &meth, NULL, 0, echo, NULL, NULL, NULL, NULL) != PSRPC_OK ||
        psrpc_server_wait_ready(srv, 5000) != PSRPC_OK ||
        psrpc_client_create(&cl, bus, "HookBench", NULL) != PSRPC_OK) {
        fprintf(stderr, "hooks_bench: setup: %s\n", psrpc_last_error());
        exit(1);
    }
    if (setup == EMPTY_HOOKS) {
        psrpc_client_hooks ch = PSRPC_CLIENT_HOOKS_INIT;
        ch.before_send = c_before;
        ch.on_outcome = c_outcome;
        psrpc_server_hooks sh = PSRPC_SERVER_HOOKS_INIT;
        sh.before_handle = c_before;
        sh.on_outcome = c_outcome;
        psrpc_client_add_hooks(cl, &ch);
        psrpc_server_add_hooks(srv, &sh);
    } else if (setup == METRICS) {
        psrpc_metrics_new(&m);
        psrpc_metrics_attach_client(m, cl);
        psrpc_metrics_attach_server(m, srv);
    }
    window w = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0};
    /* warm up */
    psrpc_msg *out = NULL;
    for (int i = 0; i < 200; i++) {
        if (psrpc_client_call_sync(&out, cl, &meth, "0123456789", 10, NULL) == PSRPC_OK)
            psrpc_msg_release(out);
    }
    double t0 = now_s();
    for (long i = 0; i < calls; i++) {
        pthread_mutex_lock(&w.mu);
        while (w.inflight >= inflight)
            pthread_cond_wait(&w.cond, &w.mu);
        w.inflight++;
        pthread_mutex_unlock(&w.mu);
        if (psrpc_client_call(NULL, cl, &meth, "0123456789", 10, NULL, call_done, &w) != PSRPC_OK) {
            fprintf(stderr, "hooks_bench: call: %s\n", psrpc_last_error());
            exit(1);
        }
    }
    pthread_mutex_lock(&w.mu);
    while (w.done < calls)
        pthread_cond_wait(&w.cond, &w.mu);
    pthread_mutex_unlock(&w.mu);
    double per = (now_s() - t0) / (double)calls;
    if (w.failed) {
        fprintf(stderr, "hooks_bench: %ld calls failed\n", w.failed);
        exit(1);
    }
    psrpc_client_free(cl);
    psrpc_server_free(srv);
    psrpc_bus_free(bus);
    psrpc_metrics_free(m);
    return per;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    long calls = 20000;
    int rounds = 7, inflight = 1;
    const char *url = "local://";
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--calls"))
            calls = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--rounds"))
            rounds = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--inflight"))
            inflight = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--url"))
            url = argv[i + 1];
    }
    if (calls < 1 || rounds < 1 || rounds > 101 || inflight < 1) {
        fprintf(stderr, "usage: hooks_bench [--calls N] [--rounds R<=101] [--inflight W] "
                        "[--url URL]\n");
        return 2;
    }
    double res[SETUPS][101];
    for (int r = 0; r < rounds; r++)
        for (int s = 0; s < SETUPS; s++) {
            int setup = (s + r) % SETUPS; /* rotate the order per round */
            res[setup][r] = round_once(setup, url, calls, inflight);
        }
    printf("hooks_bench: %s, %ld calls x %d rounds, %d in flight (median, min, max us/call)\n", url,
           calls, rounds, inflight);
    double base = 0;
    for (int s = 0; s < SETUPS; s++) {
        qsort(res[s], (size_t)rounds, sizeof(double), cmp);
        double med = res[s][rounds / 2];
        if (s == PLAIN)
            base = med;
        printf("  %-18s %8.2f %8.2f %8.2f   %+6.1f%%\n", names[s], med * 1e6, res[s][0] * 1e6,
               res[s][rounds - 1] * 1e6, (med / base - 1.0) * 100.0);
    }
    return 0;
}
