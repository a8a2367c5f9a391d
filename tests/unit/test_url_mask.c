/* Secrets never reach error texts (issue 20, item 10). Every credential
 * block of a bus URL is masked with the rule its transport's parser uses:
 * NATS lists several servers, each with its own user information; Redis
 * reads the user information up to the LAST '@', so a raw '@' in a password
 * must not leak the password's tail. Checked on the masking function itself
 * and, black box, on psrpc_last_error() after failed opens and on the
 * bus-state errors a watcher receives (buses pointed at closed loopback
 * ports: no broker needed). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bus.h"
#include "harness.h"
#include "psrpc.h"

/* A URL and the fragments of its secret that must never appear. */
typedef struct url_case {
    const char *url;
    const char *secrets[4];
} url_case;

static bool leaks(const char *text, const url_case *c, const char **which) {
    for (int i = 0; i < 4 && c->secrets[i]; i++) {
        if (text && strstr(text, c->secrets[i])) {
            *which = c->secrets[i];
            return true;
        }
    }
    return false;
}

#define CHECK_NO_SECRET(text, c)                                                          \
    do {                                                                                  \
        const char *w_ = NULL;                                                            \
        if (leaks((text), (c), &w_)) {                                                    \
            fprintf(stderr, "  %s: secret \"%s\" leaked in: %s\n", (c)->url, w_, (text)); \
            th_failed_current = 1;                                                        \
        }                                                                                 \
    } while (0)

static const url_case redis_cases[] = {
    {"redis://user:Sa1x@Sb2y@127.0.0.1:0", {"Sa1x", "Sb2y"}},
    {"redis://:Sc3x:Sd4y@127.0.0.1:0", {"Sc3x", "Sd4y"}},
    {"redis://Se5x%40Sf6y@127.0.0.1:0", {"Se5x", "Sf6y", "%40"}},
    {"redis://u:Sg7x/Sh8y@127.0.0.1", {"Sg7x", "Sh8y"}},
    {"redis://u:Si9x?Sj0y@127.0.0.1:6379", {"Si9x", "Sj0y"}},
    {"redis://u:Sk1x#Sl2y@127.0.0.1:1", {"Sk1x", "Sl2y"}},
    {"redis://u:\xc3\x9cn\xc3\xaf\xc2\xa9-Sm3x@127.0.0.1:0", {"\xc3\x9cn\xc3\xaf", "Sm3x"}},
    {"rediss://u:Sn4x@Sn5y@127.0.0.1:0", {"Sn4x", "Sn5y"}},
    {"redis://u:So6x@127.0.0.1:6379/0@x", {"So6x"}},
    {"redis://u:Sp7x@Sq8y@127.0.0.1:1/99x", {"Sp7x", "Sq8y"}},
    {"redis://u:Sr9x,Ss0y@127.0.0.1:0", {"Sr9x", "Ss0y"}},
    /* Redis Cluster: one user information for the list of nodes */
    {"redis+cluster://u:Ct1x@Ct2y@127.0.0.1:1,127.0.0.1:0", {"Ct1x", "Ct2y"}},
    {"rediss+cluster://:Cu3x,Cu4y@127.0.0.1:1/5", {"Cu3x", "Cu4y"}},
    {"redis+cluster://Cv5x@127.0.0.1:0,127.0.0.1:1", {"Cv5x"}},
};

/* NATS URLs that parse: each server has credentials (shared, as the parser
 * requires) and the ports are closed, so the bus reports DISCONNECTED with
 * its masked URL. */
static const url_case nats_cases[] = {
    {"nats://u:Na1x@127.0.0.1:1,nats://u:Na1x@127.0.0.1:2", {"Na1x"}},
    {"nats://u:Nb2x@Nc3y@127.0.0.1:1,nats://u:Nb2x@Nc3y@127.0.0.1:2", {"Nb2x", "Nc3y"}},
    {"nats://tokNd4x@127.0.0.1:1,tokNd4x@127.0.0.1:2", {"tokNd4x"}},
    {"nats://u:Ne5x%40Nf6y:Ng7z@127.0.0.1:1", {"Ne5x", "Nf6y", "Ng7z"}},
    {"nats://u:p\xc3\xa4ss-Nm3x@127.0.0.1:1,nats://u:p\xc3\xa4ss-Nm3x@127.0.0.1:2",
     {"p\xc3\xa4ss", "Nm3x"}},
    {"nats://127.0.0.1:1,nats://u:Nn4x:Nn5y@127.0.0.1:2", {"Nn4x", "Nn5y"}},
};

/* URLs refused at open (NATS parse errors, schemes, no scheme). */
static const url_case refused_cases[] = {
    {"nats://u:Nh8x@127.0.0.1:1,nats://u:Ni9y@127.0.0.1:2", {"Nh8x", "Ni9y"}},
    {"nats://u:Nj0x,Nk1y@127.0.0.1:1", {"Nj0x", "Nk1y"}},
    {"nats://u:Nl2x@127.0.0.1:1/path", {"Nl2x"}},
    {"u:Xa1x@127.0.0.1:1", {"Xa1x"}},
    {"foo://u:Xb2x@127.0.0.1:1", {"Xb2x"}},
    {"user:Xc3x@host://x", {"Xc3x"}},
    {"redis://u:Xd4x@", {"Xd4x"}},
};

TEST(mask_every_credential_block) {
    struct {
        const char *in, *out;
    } exact[] = {
        {"nats://u:p@a:1,nats://u:p@b:2", "nats://u:***@a:1,nats://u:***@b:2"},
        {"nats://u:p@a,u:p@b", "nats://u:***@a,u:***@b"},
        {"nats://tok@a,tok@b", "nats://***@a,***@b"},
        {"nats://a:1,nats://b:2", "nats://a:1,nats://b:2"},
        {"nats://[::1]:4222,nats://[::1]/", "nats://[::1]:4222,nats://[::1]/"},
        {"nats://u:pa,ss@h:1", "nats://***,***@h:1"},
        {"tls://u:x@y@a:1", "tls://u:***@a:1"},
        {"redis://u:p@q@h:1", "redis://u:***@h:1"},
        {"redis://tok@h", "redis://***@h"},
        {"redis://:pw@h/2", "redis://:***@h/2"},
        {"redis://h:6379/0", "redis://h:6379/0"},
        {"local://name", "local://name"},
        {"", ""},
        {"@", "***@"},
    };
    for (size_t i = 0; i < sizeof exact / sizeof exact[0]; i++) {
        char *m = psrpc__url_mask(exact[i].in);
        REQUIRE(m);
        CHECK_EQ_STR(m, exact[i].out);
        free(m);
    }
    const url_case *lists[] = {redis_cases, nats_cases, refused_cases};
    size_t counts[] = {sizeof redis_cases / sizeof redis_cases[0],
                       sizeof nats_cases / sizeof nats_cases[0],
                       sizeof refused_cases / sizeof refused_cases[0]};
    for (int l = 0; l < 3; l++) {
        for (size_t i = 0; i < counts[l]; i++) {
            char *m = psrpc__url_mask(lists[l][i].url);
            REQUIRE(m);
            CHECK_NO_SECRET(m, &lists[l][i]);
            free(m);
        }
    }
}

/* ---- black box ---- */

typedef struct watch_rec {
    pthread_mutex_t mu;
    int disconnects;
    char messages[4096];
} watch_rec;

static void watch_cb(int state, const psrpc_error *e, void *ud) {
    watch_rec *w = ud;
    pthread_mutex_lock(&w->mu);
    if (state == PSRPC_BUS_DISCONNECTED) {
        w->disconnects++;
        size_t n = strlen(w->messages);
        snprintf(w->messages + n, sizeof w->messages - n, "%s\n",
                 e && e->message ? e->message : "");
    }
    pthread_mutex_unlock(&w->mu);
}

static int disconnects(watch_rec *w) {
    pthread_mutex_lock(&w->mu);
    int n = w->disconnects;
    pthread_mutex_unlock(&w->mu);
    return n;
}

static void call_done(uint64_t id, const psrpc_msg *resp, const psrpc_error *e,
                      const char *server_id, void *ud) {
    (void)id;
    (void)resp;
    (void)server_id;
    watch_rec *w = ud;
    pthread_mutex_lock(&w->mu);
    size_t n = strlen(w->messages);
    snprintf(w->messages + n, sizeof w->messages - n, "call: %s\n",
             e && e->message ? e->message : "");
    pthread_mutex_unlock(&w->mu);
}

/* Opens url; a refused open is checked through psrpc_last_error, an open bus
 * through wait_ready's error, the watcher's DISCONNECTED errors and a call's
 * error. Returns whether the open succeeded. */
static bool check_url(const url_case *c) {
    psrpc_bus_options o = PSRPC_BUS_OPTIONS_INIT;
    o.connect_timeout_ms = 200;
    o.reconnect_wait_ms = 50;
    o.reconnect_wait_max_ms = 100;
    psrpc_bus *bus = NULL;
    if (psrpc_bus_open(&bus, c->url, &o) != PSRPC_OK) {
        CHECK(bus == NULL);
        CHECK(strlen(psrpc_last_error()) > 0);
        CHECK_NO_SECRET(psrpc_last_error(), c);
        return false;
    }
    watch_rec *w = calloc(1, sizeof *w);
    pthread_mutex_init(&w->mu, NULL);
    CHECK_EQ_INT(psrpc_bus_watch(bus, watch_cb, w, NULL), PSRPC_OK);
    int rc = psrpc_bus_wait_ready(bus, 300);
    CHECK(rc != PSRPC_OK);
    CHECK_NO_SECRET(psrpc_last_error(), c);
    CHECK(WAIT_UNTIL(disconnects(w) >= 1, 3000));
    /* A call while disconnected fails with the bus's reason. */
    psrpc_client *cl = NULL;
    psrpc_client_options co = PSRPC_CLIENT_OPTIONS_INIT;
    co.timeout_ms = 200;
    CHECK_EQ_INT(psrpc_client_create(&cl, bus, "Mask", &co), PSRPC_OK);
    psrpc_method m = {0};
    m.struct_size = sizeof m;
    m.name = "Echo";
    m.routing = PSRPC_ROUTING_QUEUE;
    if (cl && psrpc_client_call(NULL, cl, &m, "x", 1, NULL, call_done, w) != PSRPC_OK)
        CHECK_NO_SECRET(psrpc_last_error(), c);
    psrpc_client_free(cl);
    psrpc_bus_free(bus);
    pthread_mutex_lock(&w->mu);
    CHECK(strlen(w->messages) > 0);
    CHECK_NO_SECRET(w->messages, c);
    pthread_mutex_unlock(&w->mu);
    pthread_mutex_destroy(&w->mu);
    free(w);
    return true;
}

TEST(no_secret_in_open_errors) {
    for (size_t i = 0; i < sizeof redis_cases / sizeof redis_cases[0]; i++)
        CHECK(!check_url(&redis_cases[i])); /* every one is refused at open */
    for (size_t i = 0; i < sizeof refused_cases / sizeof refused_cases[0]; i++)
        CHECK(!check_url(&refused_cases[i]));
}

#ifdef PSRPC_WITH_NATS
TEST(no_secret_in_nats_state_errors) {
    for (size_t i = 0; i < sizeof nats_cases / sizeof nats_cases[0]; i++) {
        bool opened = check_url(&nats_cases[i]);
        if (!opened)
            fprintf(stderr, "  %s refused: %s\n", nats_cases[i].url, psrpc_last_error());
        CHECK(opened);
    }
}
#endif

TEST_MAIN()
