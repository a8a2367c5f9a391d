/* nats.c on the bus's loop thread (natsOptions_SetEventLoop). nats.c then
 * has no reader thread: the loop polls its socket and calls
 * natsConnection_ProcessReadEvent, after which the transport pulls the
 * messages of its (synchronous) subscriptions on the same thread, so an
 * inbound message crosses no thread. Outbound, what nats.c buffered during
 * one loop turn is written by one natsConnection_ProcessWriteEvent at the end
 * of that turn (a task posted on the loop thread); the socket is polled for
 * writability only when the kernel did not take everything.
 *
 * nats.c calls the adapter from any thread (the thread that connects, its
 * reconnect and timer threads, the loop thread). Off the loop thread every
 * call posts a task to the loop; detach, which nats.c calls just before it
 * may free the connection, also waits for that task, so no poll callback can
 * reach a freed connection. */
#ifndef PSRPC_IMPL_NATS_EVLOOP_H
#define PSRPC_IMPL_NATS_EVLOOP_H

#include <nats/nats.h>

#include "loop.h"

typedef struct psrpc__nats_ev_ctx {
    psrpc__loop *loop;
    /* Loop thread, after each read event: pull what the subscriptions got. */
    void (*after_read)(void *arg);
    void *arg;
} psrpc__nats_ev_ctx;

/* Makes connections made with o run on ctx->loop. ctx must outlive every
 * connection made with o. */
natsStatus psrpc__nats_set_event_loop(natsOptions *o, psrpc__nats_ev_ctx *ctx);

#endif
