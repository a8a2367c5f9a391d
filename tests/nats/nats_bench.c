/* nats_bench URL [queue|affinity] — indicative numbers for docs/nats.md (not
 * a test): an echo server and a client on two buses of URL; N sequential
 * unary calls (mean round trip), then 20000 calls with 100 in flight
 * (calls/s). Run against an idle nats-server on loopback. */
#include <semaphore.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "psrpc.h"

static long long now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000LL + t.tv_nsec / 1000;
}

static void echo(psrpc_request *r, void *ud) {
    (void)ud;
    const psrpc_msg *p = psrpc_request_payload(r);
    psrpc_request_respond(r, psrpc_msg_data(p), psrpc_msg_size(p));
}

static sem_t window;
static atomic_int done, failed;

static void on_call(uint64_t id, const psrpc_msg *m, const psrpc_error *e, const char *s,
                    void *ud) {
    (void)id, (void)m, (void)s, (void)ud;
    if (e)
        atomic_fetch_add(&failed, 1);
    atomic_fetch_add(&done, 1);
    sem_post(&window);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: nats_bench URL [queue|affinity]\n");
        return 2;
    }
    const char *url = argv[1];
    bool affinity = argc > 2 && strcmp(argv[2], "affinity") == 0;
    psrpc_bus *sb = NULL, *cb = NULL;
    if (psrpc_bus_open(&sb, url, NULL) || psrpc_bus_open(&cb, url, NULL) ||
        psrpc_bus_wait_ready(sb, 5000) || psrpc_bus_wait_ready(cb, 5000)) {
        fprintf(stderr, "bus: %s\n", psrpc_last_error());
        return 1;
    }
    psrpc_method m = PSRPC_METHOD_INIT;
    m.name = "Echo";
    m.routing = affinity ? PSRPC_ROUTING_AFFINITY : PSRPC_ROUTING_QUEUE;
    psrpc_server *s = NULL;
    psrpc_client *c = NULL;
    if (psrpc_server_create(&s, sb, "BenchSvc", NULL) ||
        psrpc_server_register(s, &m, NULL, 0, echo, NULL, NULL, NULL, NULL) ||
        psrpc_server_wait_ready(s, 5000) || psrpc_client_create(&c, cb, "BenchSvc", NULL)) {
        fprintf(stderr, "setup: %s\n", psrpc_last_error());
        return 1;
    }
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    psrpc_selection_options sel = PSRPC_SELECTION_OPTIONS_INIT;
    if (affinity) { /* one server: take the first claim */
        sel.flags = PSRPC_SELECT_ACCEPT_FIRST_AVAILABLE;
        sel.affinity_timeout_ms = 1000;
        o.selection = &sel;
    }
    psrpc_msg *out = NULL;
    psrpc_client_call_sync(&out, c, &m, "warm", 4, &o);
    psrpc_msg_release(out);
    int n = 2000;
    long long t0 = now_us();
    for (int i = 0; i < n; i++) {
        if (psrpc_client_call_sync(&out, c, &m, "0123456789", 10, &o) != PSRPC_OK)
            atomic_fetch_add(&failed, 1);
        psrpc_msg_release(out);
    }
    long long t1 = now_us();
    printf("%s, sequential: %d calls, mean round trip %.0f us\n", affinity ? "affinity" : "queue",
           n, (double)(t1 - t0) / n);
    n = 20000;
    sem_init(&window, 0, 100);
    t0 = now_us();
    for (int i = 0; i < n; i++) {
        sem_wait(&window);
        if (psrpc_client_call(NULL, c, &m, "0123456789", 10, &o, on_call, NULL) != PSRPC_OK) {
            atomic_fetch_add(&failed, 1);
            atomic_fetch_add(&done, 1);
            sem_post(&window);
        }
    }
    while (atomic_load(&done) < n)
        usleep(1000);
    t1 = now_us();
    printf("%s, 100 in flight: %d calls in %.2f s = %.0f calls/s; %d failed in all\n",
           affinity ? "affinity" : "queue", n, (t1 - t0) / 1e6, n / ((t1 - t0) / 1e6),
           atomic_load(&failed));
    psrpc_client_free(c);
    psrpc_server_free(s);
    psrpc_bus_free(sb);
    psrpc_bus_free(cb);
    return 0;
}
