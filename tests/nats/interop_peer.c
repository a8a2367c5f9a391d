/* nats_interop_peer — the C side of the manual interop check with the real
 * livekit/psrpc natsbus (go_interop/run.sh, docs/nats.md). Same service as
 * go_interop/main.go: InteropSvc with Echo (queue), Pick (affinity), Gather
 * (multi), google.protobuf.StringValue payloads (encoded by hand).
 *
 *   nats_interop_peer serve URL     serve until SIGTERM; prints "ready"
 *   nats_interop_peer call URL N    Echo, Pick, Gather (expects N answers) */
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "psrpc.h"

static psrpc_method method(const char *name, uint32_t routing) {
    psrpc_method m = PSRPC_METHOD_INIT;
    m.name = name;
    m.routing = routing;
    return m;
}

/* StringValue{value = s} for short s: field 1, length-delimited. */
static size_t sv_encode(uint8_t *out, size_t cap, const char *s) {
    size_t n = strlen(s);
    if (n > 127 || n + 2 > cap)
        return 0;
    out[0] = 0x0a;
    out[1] = (uint8_t)n;
    memcpy(out + 2, s, n);
    return n + 2;
}

static int sv_decode(char *out, size_t cap, const psrpc_msg *m) {
    const uint8_t *d = psrpc_msg_data(m);
    size_t n = psrpc_msg_size(m);
    if (n == 0) {
        out[0] = 0;
        return 0;
    }
    if (n < 2 || d[0] != 0x0a || d[1] != n - 2 || n - 2 >= cap)
        return -1;
    memcpy(out, d + 2, n - 2);
    out[n - 2] = 0;
    return 0;
}

static char server_id[64];

static void respond_text(psrpc_request *r, const char *text) {
    uint8_t buf[200];
    size_t n = sv_encode(buf, sizeof buf, text);
    psrpc_request_respond(r, buf, n);
}

static void echo(psrpc_request *r, void *ud) {
    (void)ud;
    char v[128], out[160];
    if (sv_decode(v, sizeof v, psrpc_request_payload(r)) != 0) {
        psrpc_request_fail(r, PSRPC_MALFORMED_REQUEST, "not a StringValue");
        return;
    }
    snprintf(out, sizeof out, "c:%s", v);
    respond_text(r, out);
}

static void ident(psrpc_request *r, void *ud) {
    (void)ud;
    respond_text(r, server_id);
}

static void claim(psrpc_request *r, void *ud) {
    (void)ud;
    psrpc_request_claim(r, 1.0f);
}

static atomic_int answers, errors, finished;

static void on_result(uint64_t id, const psrpc_msg *m, const psrpc_error *e, const char *srv,
                      void *ud) {
    (void)id, (void)srv, (void)ud;
    char v[128];
    if (m && sv_decode(v, sizeof v, m) == 0) {
        printf("Gather: %s\n", v);
        atomic_fetch_add(&answers, 1);
    } else {
        printf("Gather error: %s\n", e && e->message ? e->message : "bad answer");
        atomic_fetch_add(&errors, 1);
    }
}

static void on_done(uint64_t id, const psrpc_msg *m, const psrpc_error *e, const char *srv,
                    void *ud) {
    (void)id, (void)m, (void)srv, (void)ud;
    if (e)
        atomic_fetch_add(&errors, 1);
    atomic_store(&finished, 1);
}

static int call_one(psrpc_client *c, const psrpc_method *m, const char *name) {
    uint8_t req[64];
    size_t n = sv_encode(req, sizeof req, "from c");
    psrpc_msg *out = NULL;
    char v[128];
    int rc = psrpc_client_call_sync(&out, c, m, req, n, NULL);
    if (rc == PSRPC_OK && sv_decode(v, sizeof v, out) == 0)
        printf("%s: %s\n", name, v);
    else
        printf("%s: FAILED %s\n", name, psrpc_last_error());
    psrpc_msg_release(out);
    return rc == PSRPC_OK ? 0 : 1;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 3 || (strcmp(argv[1], "serve") != 0 && strcmp(argv[1], "call") != 0)) {
        fprintf(stderr, "usage: nats_interop_peer serve URL | nats_interop_peer call URL N\n");
        return 2;
    }
    psrpc_bus *bus = NULL;
    if (psrpc_bus_open(&bus, argv[2], NULL) != PSRPC_OK ||
        psrpc_bus_wait_ready(bus, 10000) != PSRPC_OK) {
        fprintf(stderr, "bus: %s\n", psrpc_last_error());
        psrpc_bus_free(bus);
        return 1;
    }
    psrpc_method e = method("Echo", PSRPC_ROUTING_QUEUE);
    psrpc_method p = method("Pick", PSRPC_ROUTING_AFFINITY);
    psrpc_method g = method("Gather", PSRPC_ROUTING_MULTI);
    int failures = 0;
    if (strcmp(argv[1], "serve") == 0) {
        sigset_t stop;
        sigemptyset(&stop);
        sigaddset(&stop, SIGTERM);
        sigaddset(&stop, SIGINT);
        pthread_sigmask(SIG_BLOCK, &stop, NULL);
        psrpc_server *s = NULL;
        if (psrpc_server_create(&s, bus, "InteropSvc", NULL) != PSRPC_OK ||
            psrpc_server_register(s, &e, NULL, 0, echo, NULL, NULL, NULL, NULL) != PSRPC_OK ||
            psrpc_server_register(s, &p, NULL, 0, ident, claim, NULL, NULL, NULL) != PSRPC_OK ||
            psrpc_server_register(s, &g, NULL, 0, ident, NULL, NULL, NULL, NULL) != PSRPC_OK ||
            psrpc_server_wait_ready(s, 10000) != PSRPC_OK) {
            fprintf(stderr, "server: %s\n", psrpc_last_error());
            failures++;
        } else {
            snprintf(server_id, sizeof server_id, "%s", psrpc_server_id(s));
            printf("ready\n");
            int sig;
            sigwait(&stop, &sig);
        }
        psrpc_server_free(s);
    } else {
        int want = argc > 3 ? atoi(argv[3]) : 1;
        psrpc_client *c = NULL;
        if (psrpc_client_create(&c, bus, "InteropSvc", NULL) != PSRPC_OK) {
            fprintf(stderr, "client: %s\n", psrpc_last_error());
            psrpc_bus_free(bus);
            return 1;
        }
        failures += call_one(c, &e, "Echo");
        failures += call_one(c, &p, "Pick");
        psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
        o.timeout_ms = 1000;
        uint8_t req[64];
        size_t n = sv_encode(req, sizeof req, "g");
        if (psrpc_client_call_multi(NULL, c, &g, req, n, &o, on_result, on_done, NULL) !=
            PSRPC_OK) {
            failures++;
        } else {
            struct timespec ts = {0, 10000000};
            for (int i = 0; i < 500 && !atomic_load(&finished); i++)
                nanosleep(&ts, NULL);
            printf("Gather answers: %d\n", atomic_load(&answers));
            if (atomic_load(&answers) != want || atomic_load(&errors))
                failures++;
        }
        psrpc_client_free(c);
    }
    psrpc_bus_free(bus);
    return failures ? 1 : 0;
}
