/* The psrpc side shared by fuzz_redis and fuzz_nats: a real bus and server on
 * a fake broker in this process (fake_broker.h). fz_server_open opens them on
 * url and serves the broker (the target's serve()) until the server's three
 * registrations (affinity unary, queue unary, stream) are confirmed;
 * fz_serve_until_eof serves until the bus dropped conn; fz_server_close
 * force-closes the server, checks that no stream stays open, frees everything
 * and resets the broker for the next input. Each aborts (a finding) when the
 * bus does not get there within 5 s. */
#ifndef PSRPC_FUZZ_SERVER_H
#define PSRPC_FUZZ_SERVER_H

#include <stdatomic.h>

#include "fake_broker.h"
#include "fuzz_assert.h"
#include "fuzz_dispatch.h"
#include "psrpc.h"

typedef struct fz_server {
    fake_broker *fb;
    void (*serve)(void); /* answers what the bus sent the fake broker */
    psrpc_bus *bus;
    psrpc_server *srv;
} fz_server;

static atomic_int fz_ready;

static void fz_on_ready(const psrpc_error *error, void *ud) {
    (void)ud;
    atomic_fetch_add(&fz_ready, error ? 1000 : 1);
}

static void fz_unary_handler(psrpc_request *r, void *ud) {
    (void)ud;
    const psrpc_msg *p = psrpc_request_payload(r);
    psrpc_request_respond(r, psrpc_msg_data(p), psrpc_msg_size(p));
}

static void fz_stream_handler(psrpc_stream *st, void *ud) {
    (void)ud;
    psrpc_stream_free(st);
}

static void fz_closed(void *ud) { atomic_store((atomic_int *)ud, 1); }

/* Serves the fake broker until cond holds; aborts after 5 s. */
#define FZ_SERVE_UNTIL(s, cond, poll_ms)                                      \
    do {                                                                      \
        int64_t fz_deadline_ = fb_now_ms() + 5000;                            \
        while (!(cond)) {                                                     \
            FUZZ_ASSERT(fb_now_ms() < fz_deadline_); /* the bus hangs here */ \
            fb_poll((s)->fb, poll_ms);                                        \
            (s)->serve();                                                     \
        }                                                                     \
    } while (0)

static inline void fz_server_open(fz_server *s, fake_broker *fb, void (*serve)(void),
                                  const char *url) {
    s->fb = fb;
    s->serve = serve;
    psrpc_bus_options o = PSRPC_BUS_OPTIONS_INIT;
    o.max_message_size = 65536;
    o.reconnect_wait_ms = 60000;
    o.reconnect_wait_max_ms = 60000;
    o.ping_interval_ms = 60000;
    s->bus = NULL;
    FUZZ_ASSERT(psrpc_bus_open(&s->bus, url, &o) == PSRPC_OK);
    psrpc_server_options so = PSRPC_SERVER_OPTIONS_INIT;
    so.server_id = FZ_SERVER_ID;
    s->srv = NULL;
    FUZZ_ASSERT(psrpc_server_create(&s->srv, s->bus, FZ_SERVICE, &so) == PSRPC_OK);
    psrpc_method mu = {sizeof(psrpc_method), PSRPC_ROUTING_AFFINITY, 0, 0, "Unary", NULL};
    psrpc_method mq = {sizeof(psrpc_method), PSRPC_ROUTING_QUEUE, 0, 0, "Queue", NULL};
    psrpc_method ms = {
        sizeof(psrpc_method), PSRPC_ROUTING_AFFINITY, PSRPC_METHOD_STREAM, 0, "Stream", NULL};
    atomic_store(&fz_ready, 0);
    FUZZ_ASSERT(psrpc_server_register(s->srv, &mu, NULL, 0, fz_unary_handler, NULL, fz_on_ready,
                                      NULL, NULL) == PSRPC_OK);
    FUZZ_ASSERT(psrpc_server_register(s->srv, &mq, NULL, 0, fz_unary_handler, NULL, fz_on_ready,
                                      NULL, NULL) == PSRPC_OK);
    FUZZ_ASSERT(psrpc_server_register_stream(s->srv, &ms, NULL, 0, fz_stream_handler, NULL,
                                             fz_on_ready, NULL, NULL) == PSRPC_OK);
    FZ_SERVE_UNTIL(s, atomic_load(&fz_ready) >= 3, 5); /* the bus never came up */
    FUZZ_ASSERT(atomic_load(&fz_ready) == 3);
}

static inline void fz_serve_until_eof(fz_server *s, fb_conn *conn) {
    FZ_SERVE_UNTIL(s, conn->eof, 5);
}

static inline void fz_server_close(fz_server *s) {
    atomic_int closed = 0;
    FUZZ_ASSERT(psrpc_server_close(s->srv, PSRPC_CLOSE_FORCE, fz_closed, &closed) == PSRPC_OK);
    FZ_SERVE_UNTIL(s, atomic_load(&closed), 1);
    /* Nothing stays open once the server is closed. */
    psrpc_bus_stats stats;
    memset(&stats, 0, sizeof stats);
    stats.struct_size = sizeof stats;
    FUZZ_ASSERT(psrpc_bus_get_stats(s->bus, &stats) == PSRPC_OK);
    FUZZ_ASSERT(stats.streams_open == 0);
    psrpc_server_free(s->srv);
    psrpc_bus_free(s->bus);
    fb_reset(s->fb);
}

#endif
