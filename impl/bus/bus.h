/* The bus: the public psrpc_bus handle, its loop, its counters, and the
 * internal transport interface that local, Redis and NATS implement. The core
 * (client.c, server.c) talks to transports only through this header. Every
 * function here runs on the bus's loop thread unless it says otherwise. */
#ifndef PSRPC_IMPL_BUS_H
#define PSRPC_IMPL_BUS_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "channel.h"
#include "common.h"
#include "loop.h"

typedef struct psrpc__bus_sub psrpc__bus_sub; /* a transport subscription */

/* Inbound transport bytes for one subscription; borrowed for the call. */
typedef void (*psrpc__deliver_fn)(void *ctx, const uint8_t *data, size_t len);
/* The broker confirmed (status 0) or refused a subscription. Once, never from
 * inside subscribe(). */
typedef void (*psrpc__ready_fn)(void *ctx, int status, const char *message);

typedef struct psrpc__transport {
    const char *scheme; /* "local", "redis", "nats" */
    /* Optional: starts connecting; runs on the loop thread right after the
     * loop started. Reports progress with psrpc__bus_set_state. */
    void (*start)(psrpc_bus *bus);
    /* Publishes bytes (a whole internal.Msg) on ch. Returns 0 or a status
     * (unavailable, resource_exhausted) with psrpc__error set. */
    int (*publish)(psrpc_bus *bus, const psrpc__channel *ch, psrpc_msg *bytes);
    /* Subscribes; queue = one subscriber of the channel gets each message.
     * NULL on immediate failure (psrpc__error set). */
    psrpc__bus_sub *(*subscribe)(psrpc_bus *bus, const psrpc__channel *ch, bool queue,
                                 psrpc__deliver_fn deliver, psrpc__ready_fn ready, void *ctx);
    /* No deliver or ready call for sub after this returns. */
    void (*unsubscribe)(psrpc_bus *bus, psrpc__bus_sub *sub);
    /* Closes connections; calls done(bus) once when finished. */
    void (*close)(psrpc_bus *bus, void (*done)(psrpc_bus *bus));
    /* Frees transport state (any thread, after the loop stopped). */
    void (*destroy)(psrpc_bus *bus);
} psrpc__transport;

/* A node in the bus's list of children (clients, servers) closed with it. */
typedef struct psrpc__child {
    struct psrpc__child *prev, *next;
    psrpc_bus *bus;
    /* Forced close on bus close; calls done(child) when finished. */
    void (*close)(struct psrpc__child *child, void (*done)(struct psrpc__child *));
    /* Optional: the bus (re)connected (loop thread). */
    void (*connected)(struct psrpc__child *child);
    /* Optional: the bus became disconnected, also when its first connection
     * attempt failed (loop thread); psrpc__bus_check_connected says why. */
    void (*disconnected)(struct psrpc__child *child);
} psrpc__child;

typedef struct psrpc__stats {
    atomic_uint_fast64_t connects, disconnects, reconnect_attempts, subscriptions;
    atomic_uint_fast64_t published, received;
    atomic_uint_fast64_t dropped_malformed, dropped_oversize, dropped_slow_consumer;
    atomic_uint_fast64_t dropped_expired, dropped_unknown;
    atomic_uint_fast64_t requests_in_flight, streams_open;
    atomic_uint_fast64_t dropped_held_limit;
} psrpc__stats;

#define PSRPC__STAT_ADD(bus, field, n) atomic_fetch_add(&(bus)->stats.field, (n))
#define PSRPC__STAT_SUB(bus, field, n) atomic_fetch_sub(&(bus)->stats.field, (n))

/* A message was dropped on bus for reason (a psrpc_bus_stats field name):
 * counted by the caller; logged here, the first of a reason at WARN, then at
 * most one summary per reason per 10 s, each drop at DEBUG. Any thread. */
void psrpc__log_drop(psrpc_bus *bus, int reason);
enum {
    PSRPC__DROP_MALFORMED,
    PSRPC__DROP_OVERSIZE,
    PSRPC__DROP_SLOW_CONSUMER,
    PSRPC__DROP_EXPIRED,
    PSRPC__DROP_UNKNOWN,
    PSRPC__DROP_HELD_LIMIT,
    PSRPC__DROP_REASONS
};

/* Counts a dropped message (psrpc_bus_stats.dropped_<field>) and logs it
 * (psrpc__log_drop, reason PSRPC__DROP_<FIELD>). */
#define PSRPC__DROP(bus, field, reason)               \
    do {                                              \
        psrpc_bus *drop_bus_ = (bus);                 \
        atomic_fetch_add(&drop_bus_->stats.field, 1); \
        psrpc__log_drop(drop_bus_, reason);           \
    } while (0)

enum { PSRPC__OPEN = 0, PSRPC__CLOSING = 1, PSRPC__CLOSED = 2 };

typedef struct psrpc__closed_waiter {
    struct psrpc__closed_waiter *next;
    psrpc_closed_cb cb;
    void *user_data;
} psrpc__closed_waiter;

/* A handle's list of closed callbacks (loop thread): one per close call, run
 * all (once each) when the handle has closed. The waiter is made by the close
 * call on the caller's thread (which fails with RESOURCE_EXHAUSTED if it
 * cannot), so the close task cannot lose a promised callback for lack of
 * memory. cb NULL: no waiter (NULL); *failed is set when cb could not get one. */
psrpc__closed_waiter *psrpc__waiter_new(psrpc_closed_cb cb, void *user_data, bool *failed);
/* Adds w (NULL: nothing) to the list (loop thread); freed when it runs. */
void psrpc__waiters_push(psrpc__closed_waiter **list, psrpc__closed_waiter *w);
void psrpc__waiters_run(psrpc__closed_waiter **list);

/* Drop logging of one reason (impl/core/hooks.c psrpc__log_drop). */
typedef struct psrpc__drop_log {
    _Atomic int64_t last_ns; /* monotonic time of the last report, 0 = never */
    atomic_uint_fast64_t suppressed;
} psrpc__drop_log;

struct psrpc_bus {
    uint32_t magic;
    atomic_int refs;   /* user + children + in-flight tasks */
    atomic_int state;  /* PSRPC__OPEN / CLOSING / CLOSED */
    atomic_bool freed; /* psrpc_bus_free was called */
    unsigned fork_gen; /* psrpc__fork_generation() when opened */
    psrpc__loop *loop;
    psrpc_bus_options opts;
    char *url_safe; /* the URL with secrets masked, for messages */
    const psrpc__transport *transport;
    void *transport_state;
    psrpc__stats stats;
    /* Loop thread only. */
    psrpc__child children; /* sentinel of a circular list */
    int children_closing;
    psrpc__closed_waiter *closed_waiters;
    /* Connection state (PSRPC_BUS_CONNECTED / DISCONNECTED, 0 = connecting
     * for the first time), written on the loop thread, read anywhere. */
    atomic_int conn_state;
    /* Why and since when it is disconnected; under state_mu. */
    pthread_mutex_t state_mu;
    pthread_cond_t state_cond;
    int down_status;       /* unavailable, unauthenticated, permission_denied */
    char down_reason[256]; /* secrets never appear here */
    int64_t down_since_ns;
    /* State watcher (loop thread). */
    psrpc_bus_state_cb watch_cb;
    void *watch_user_data;
    psrpc_release_cb watch_release;
    psrpc__drop_log drop_log[6]; /* per PSRPC__DROP_* reason */
};

#define PSRPC__BUS_MAGIC 0x50425553u /* "PBUS" */

/* fork(): every child process bumps a generation counter (pthread_atfork).
 * A bus opened under another generation was inherited from a parent: its
 * loop thread does not exist here, and its mutexes may have been held by
 * parent threads when the process forked. Every public function on such a
 * bus (or a handle on it) fails at once, before taking any lock or posting,
 * with PSRPC_FAILED_PRECONDITION; frees return at once, leaving the copied
 * memory as it is. Any thread. */
static inline bool psrpc__bus_forked(const psrpc_bus *bus) {
    return bus->fork_gen != psrpc__fork_generation();
}
/* Sets psrpc__error and returns PSRPC_FAILED_PRECONDITION. */
int psrpc__bus_fork_error(void);
#define PSRPC__CHECK_NOT_FORKED(bus)        \
    do {                                    \
        if (psrpc__bus_forked(bus))         \
            return psrpc__bus_fork_error(); \
    } while (0)

void psrpc__bus_retain(psrpc_bus *bus);
void psrpc__bus_release(psrpc_bus *bus);

/* Runs fn(arg) on the bus's loop thread. Any thread. Returns 0 or
 * PSRPC_CANCELED "bus is closed" (fn will not run). */
int psrpc__bus_post(psrpc_bus *bus, psrpc__task_fn fn, void *arg);

/* Children (loop thread). add_child sets child->bus. */
void psrpc__bus_add_child(psrpc_bus *bus, psrpc__child *child);
void psrpc__bus_remove_child(psrpc_bus *bus, psrpc__child *child);

/* Transport calls, with size checks and counters (loop thread). */
int psrpc__bus_publish(psrpc_bus *bus, const psrpc__channel *ch, psrpc_msg *bytes);
psrpc__bus_sub *psrpc__bus_subscribe(psrpc_bus *bus, const psrpc__channel *ch, bool queue,
                                     psrpc__deliver_fn deliver, psrpc__ready_fn ready, void *ctx);
void psrpc__bus_unsubscribe(psrpc_bus *bus, psrpc__bus_sub *sub);

/* Transports report their connection state (loop thread). state is
 * PSRPC_BUS_CONNECTED or PSRPC_BUS_DISCONNECTED; for DISCONNECTED, status is
 * unavailable, unauthenticated or permission_denied and reason says why (no
 * secrets). Updates the counters, wakes psrpc_bus_wait_ready, tells the
 * watcher and the children (calls waiting for the bus), on connecting and on
 * becoming disconnected (from connected or from the first attempt). */
void psrpc__bus_set_state(psrpc_bus *bus, int state, int status, const char *reason);

/* If the bus is known to be disconnected, sets psrpc__error to "<scheme>
 * unreachable since <time>: <reason>" and returns its status; else 0. Any
 * thread. */
int psrpc__bus_check_connected(psrpc_bus *bus);

/* TEST HOOK: publishes raw transport bytes on ch as if a peer had sent them.
 * Any thread; the bytes are copied. Returns 0 or a status. */
int psrpc__bus_inject(psrpc_bus *bus, const psrpc__channel *ch, const void *data, size_t len);

/* Percent-decodes n bytes of a URL part (user, password, token) into a new
 * string. NULL on a bad escape or an escaped NUL (*oom false) or on allocation
 * failure (*oom true); partial output is wiped. Any thread. */
char *psrpc__url_unescape(const char *s, size_t n, bool *oom);

/* A copy of a bus URL fit for messages: every credential block masked with
 * the rule its transport's parser uses (Redis: user information up to the
 * last '@'; NATS: the same, for each comma-separated server). The user name
 * stays, the password or token becomes "***". NULL on allocation failure.
 * Any thread. */
char *psrpc__url_mask(const char *url);

/* Transports. Each *_open parses its URL (and bus->opts), sets
 * bus->transport and bus->transport_state, and returns 0 or a status with
 * psrpc__error set; it runs on the caller's thread before the loop starts. */
extern const psrpc__transport psrpc__transport_local;
int psrpc__local_open(psrpc_bus *bus, const char *name);
int psrpc__redis_open(psrpc_bus *bus, const char *url); /* redis:// rediss:// */
int psrpc__nats_open(psrpc_bus *bus, const char *url);  /* nats:// tls:// */

#endif
