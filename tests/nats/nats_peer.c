/* nats_peer — a C server and a C client of one service, for the
 * multi-process NATS test (public API only).
 *
 *   nats_peer URL serve   serves PeerSvc until SIGTERM/SIGINT; prints "ready"
 *                         once every registration is confirmed:
 *                           Echo    QUEUE     answers with the payload
 *                           Pick    AFFINITY  claims with 1.0, answers with its server id
 *                           Gather  MULTI     answers with its server id
 *                           Updates MULTI subscription: publishes "tick-N" every 50 ms
 *   nats_peer URL call N  one client: Echo, Pick, Gather (expects N answers),
 *                         and a subscription to Updates (expects a message);
 *                         prints what it got, exits 0 if everything held.
 *
 * Bus options come from the environment: PSRPC_PEER_CA (tls_ca_file). */
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "psrpc.h"

#define SERVICE "PeerSvc"

static psrpc_method method(const char *name, uint32_t routing, uint32_t flags) {
    psrpc_method m = PSRPC_METHOD_INIT;
    m.name = name;
    m.routing = routing;
    m.flags = flags;
    if (flags & PSRPC_METHOD_SUBSCRIPTION)
        m.output_type = "test.Update";
    return m;
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

static psrpc_bus *open_bus(const char *url) {
    psrpc_bus_options o = PSRPC_BUS_OPTIONS_INIT;
    o.tls_ca_file = getenv("PSRPC_PEER_CA");
    o.reconnect_wait_ms = 250;
    psrpc_bus *bus = NULL;
    if (psrpc_bus_open(&bus, url, &o) != PSRPC_OK || psrpc_bus_wait_ready(bus, 10000) != PSRPC_OK) {
        fprintf(stderr, "nats_peer: bus: %s\n", psrpc_last_error());
        psrpc_bus_free(bus);
        return NULL;
    }
    return bus;
}

/* ---- serve ---- */

static volatile sig_atomic_t stop;
static void on_signal(int sig) {
    (void)sig;
    stop = 1;
}

static void echo(psrpc_request *req, void *ud) {
    (void)ud;
    const psrpc_msg *p = psrpc_request_payload(req);
    psrpc_request_respond(req, psrpc_msg_data(p), psrpc_msg_size(p));
}

static void answer_id(psrpc_request *req, void *ud) {
    const char *id = ud;
    psrpc_request_respond(req, id, strlen(id));
}

static void claim_one(psrpc_request *req, void *ud) {
    (void)ud;
    psrpc_request_claim(req, 1.0f);
}

static int serve(const char *url) {
    psrpc_bus *bus = open_bus(url);
    if (!bus)
        return 1;
    psrpc_server *srv = NULL;
    if (psrpc_server_create(&srv, bus, SERVICE, NULL) != PSRPC_OK) {
        fprintf(stderr, "nats_peer: server: %s\n", psrpc_last_error());
        psrpc_bus_free(bus);
        return 1;
    }
    char *id = strdup(psrpc_server_id(srv));
    psrpc_method e = method("Echo", PSRPC_ROUTING_QUEUE, 0);
    psrpc_method p = method("Pick", PSRPC_ROUTING_AFFINITY, 0);
    psrpc_method g = method("Gather", PSRPC_ROUTING_MULTI, 0);
    psrpc_method u = method("Updates", PSRPC_ROUTING_MULTI, PSRPC_METHOD_SUBSCRIPTION);
    int rc = psrpc_server_register(srv, &e, NULL, 0, echo, NULL, NULL, NULL, NULL);
    if (rc == PSRPC_OK)
        rc = psrpc_server_register(srv, &p, NULL, 0, answer_id, claim_one, NULL, id, NULL);
    if (rc == PSRPC_OK)
        rc = psrpc_server_register(srv, &g, NULL, 0, answer_id, NULL, NULL, id, NULL);
    if (rc == PSRPC_OK)
        rc = psrpc_server_wait_ready(srv, 10000);
    if (rc != PSRPC_OK) {
        fprintf(stderr, "nats_peer: register: %s\n", psrpc_last_error());
        psrpc_server_free(srv);
        psrpc_bus_free(bus);
        free(id);
        return 1;
    }
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    printf("ready\n");
    fflush(stdout);
    for (int n = 0; !stop; n++) {
        char tick[32];
        snprintf(tick, sizeof tick, "tick-%d", n);
        psrpc_server_publish(srv, &u, NULL, 0, tick, strlen(tick));
        sleep_ms(50);
    }
    psrpc_server_free(srv);
    psrpc_bus_free(bus);
    free(id);
    return 0;
}

/* ---- call ---- */

typedef struct multi_state {
    atomic_int results, errors, done;
    sem_t sem;
} multi_state;

static void on_result(uint64_t id, const psrpc_msg *r, const psrpc_error *e, const char *srv,
                      void *ud) {
    (void)id, (void)srv;
    multi_state *m = ud;
    if (r && !e)
        atomic_fetch_add(&m->results, 1);
    else
        atomic_fetch_add(&m->errors, 1);
}

static void on_done(uint64_t id, const psrpc_msg *r, const psrpc_error *e, const char *srv,
                    void *ud) {
    (void)id, (void)r, (void)srv;
    multi_state *m = ud;
    if (e)
        atomic_fetch_add(&m->errors, 1);
    atomic_fetch_add(&m->done, 1);
    sem_post(&m->sem);
}

static atomic_int sub_msgs;
static void on_update(psrpc_sub *sub, const psrpc_msg *msg, void *ud) {
    (void)sub, (void)ud;
    if (psrpc_msg_size(msg) > 5 && memcmp(psrpc_msg_data(msg), "tick-", 5) == 0)
        atomic_fetch_add(&sub_msgs, 1);
}

static int call(const char *url, int servers) {
    psrpc_bus *bus = open_bus(url);
    if (!bus)
        return 1;
    psrpc_client *cl = NULL;
    psrpc_client_options co = PSRPC_CLIENT_OPTIONS_INIT;
    co.timeout_ms = 3000;
    if (psrpc_client_create(&cl, bus, SERVICE, &co) != PSRPC_OK) {
        fprintf(stderr, "nats_peer: client: %s\n", psrpc_last_error());
        psrpc_bus_free(bus);
        return 1;
    }
    int failures = 0;
    psrpc_method e = method("Echo", PSRPC_ROUTING_QUEUE, 0);
    psrpc_method p = method("Pick", PSRPC_ROUTING_AFFINITY, 0);
    psrpc_method g = method("Gather", PSRPC_ROUTING_MULTI, 0);
    psrpc_method u = method("Updates", PSRPC_ROUTING_MULTI, PSRPC_METHOD_SUBSCRIPTION);

    psrpc_msg *out = NULL;
    if (psrpc_client_call_sync(&out, cl, &e, "hello", 5, NULL) == PSRPC_OK &&
        psrpc_msg_size(out) == 5 && memcmp(psrpc_msg_data(out), "hello", 5) == 0) {
        printf("Echo: hello\n");
    } else {
        printf("Echo: FAILED %s\n", psrpc_last_error());
        failures++;
    }
    psrpc_msg_release(out);
    out = NULL;

    if (psrpc_client_call_sync(&out, cl, &p, "x", 1, NULL) == PSRPC_OK && psrpc_msg_size(out) > 4 &&
        memcmp(psrpc_msg_data(out), "SRV_", 4) == 0) {
        printf("Pick: %.*s\n", (int)psrpc_msg_size(out), (const char *)psrpc_msg_data(out));
    } else {
        printf("Pick: FAILED %s\n", psrpc_last_error());
        failures++;
    }
    psrpc_msg_release(out);

    multi_state *m = calloc(1, sizeof *m);
    sem_init(&m->sem, 0, 0);
    psrpc_call_options mo = PSRPC_CALL_OPTIONS_INIT;
    mo.timeout_ms = 1000;
    if (psrpc_client_call_multi(NULL, cl, &g, "g", 1, &mo, on_result, on_done, m) != PSRPC_OK) {
        printf("Gather: FAILED %s\n", psrpc_last_error());
        failures++;
    } else {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += 10;
        while (sem_timedwait(&m->sem, &until) != 0 && atomic_load(&m->done) == 0) {
            if (time(NULL) > until.tv_sec)
                break;
        }
        printf("Gather: %d answers, %d errors, done %d\n", atomic_load(&m->results),
               atomic_load(&m->errors), atomic_load(&m->done));
        if (atomic_load(&m->results) != servers || atomic_load(&m->errors) ||
            atomic_load(&m->done) != 1)
            failures++;
    }

    psrpc_sub *sub = NULL;
    if (psrpc_client_subscribe(&sub, cl, &u, NULL, 0, on_update, NULL, NULL, NULL) != PSRPC_OK ||
        psrpc_sub_wait_ready(sub, 10000) != PSRPC_OK) {
        printf("Updates: FAILED %s\n", psrpc_last_error());
        failures++;
    } else {
        for (int i = 0; i < 200 && atomic_load(&sub_msgs) < 3; i++)
            sleep_ms(25);
        printf("Updates: %d messages\n", atomic_load(&sub_msgs));
        if (atomic_load(&sub_msgs) < 3)
            failures++;
    }
    psrpc_sub_free(sub);
    psrpc_client_free(cl);
    psrpc_bus_free(bus);
    if (atomic_load(&m->done) == 1) {
        sem_destroy(&m->sem);
        free(m); /* finished: no callback can follow */
    }
    return failures ? 1 : 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 3 && strcmp(argv[2], "serve") == 0)
        return serve(argv[1]);
    if (argc == 4 && strcmp(argv[2], "call") == 0)
        return call(argv[1], atoi(argv[3]));
    fprintf(stderr, "usage: nats_peer URL serve | nats_peer URL call N\n");
    return 2;
}
