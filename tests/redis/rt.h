/* Helpers shared by the Redis fault, security and process tests: buses with
 * short timers, a state watcher that records transitions with times, and
 * waiting for states. Built on the tests/local helpers. */
#ifndef PSRPC_TESTS_REDIS_RT_H
#define PSRPC_TESTS_REDIS_RT_H

#include "local/util.h"
#include "rs.h"

/* Options the fault tests use: health PING every ping_ms, dead after two
 * intervals; backoff 100 ms doubling to 1 s; connect timeout 1 s. */
static inline psrpc_bus_options rt_opts(int64_t ping_ms) {
    psrpc_bus_options o = PSRPC_BUS_OPTIONS_INIT;
    o.ping_interval_ms = ping_ms;
    o.reconnect_wait_ms = 100;
    o.reconnect_wait_max_ms = 1000;
    o.connect_timeout_ms = 1000;
    return o;
}

#define RT_MAX_EVENTS 256

typedef struct rt_watch {
    pthread_mutex_t mu;
    int state; /* last state reported (0 = none yet) */
    int status;
    char message[512];
    int nevents;
    int ev_state[RT_MAX_EVENTS];
    int ev_status[RT_MAX_EVENTS];
    long long ev_ms[RT_MAX_EVENTS];
} rt_watch;

static void rt_watch_cb(int state, const psrpc_error *e, void *ud) {
    rt_watch *w = (rt_watch *)ud;
    pthread_mutex_lock(&w->mu);
    w->state = state;
    w->status = e ? e->status : PSRPC_OK;
    snprintf(w->message, sizeof w->message, "%s", e && e->message ? e->message : "");
    if (w->nevents < RT_MAX_EVENTS) {
        w->ev_state[w->nevents] = state;
        w->ev_status[w->nevents] = w->status;
        w->ev_ms[w->nevents] = th_now_ms();
        w->nevents++;
    }
    pthread_mutex_unlock(&w->mu);
}

/* The watcher goes with its bus: do not use it after psrpc_bus_free. */
static void rt_watch_release(void *ud) {
    rt_watch *w = (rt_watch *)ud;
    pthread_mutex_destroy(&w->mu);
    free(w);
}

static inline rt_watch *rt_watch_new(psrpc_bus *bus) {
    rt_watch *w = (rt_watch *)calloc(1, sizeof *w);
    pthread_mutex_init(&w->mu, NULL);
    if (psrpc_bus_watch(bus, rt_watch_cb, w, rt_watch_release) != PSRPC_OK)
        fprintf(stderr, "  psrpc_bus_watch failed: %s\n", psrpc_last_error());
    return w;
}

static inline int rt_state(rt_watch *w) {
    pthread_mutex_lock(&w->mu);
    int s = w->state;
    pthread_mutex_unlock(&w->mu);
    return s;
}

static inline void rt_last(rt_watch *w, int *status, char *msg, size_t n) {
    pthread_mutex_lock(&w->mu);
    if (status)
        *status = w->status;
    if (msg)
        snprintf(msg, n, "%s", w->message);
    pthread_mutex_unlock(&w->mu);
}

/* Time (th_now_ms) of the first event with state at or after index from;
 * -1 if none. */
static inline long long rt_event_at(rt_watch *w, int from, int state) {
    long long t = -1;
    pthread_mutex_lock(&w->mu);
    for (int i = from; i < w->nevents; i++) {
        if (w->ev_state[i] == state) {
            t = w->ev_ms[i];
            break;
        }
    }
    pthread_mutex_unlock(&w->mu);
    return t;
}

static inline int rt_nevents(rt_watch *w) {
    pthread_mutex_lock(&w->mu);
    int n = w->nevents;
    pthread_mutex_unlock(&w->mu);
    return n;
}

/* Waits (ms, scaled) until the watcher saw state at or after event index
 * from; returns its time or -1. */
static inline long long rt_wait_event(rt_watch *w, int from, int state, long ms) {
    long long t = -1;
    WAIT_UNTIL((t = rt_event_at(w, from, state)) >= 0, ms);
    return t;
}

static inline psrpc_bus *rt_bus(const char *url, const psrpc_bus_options *o) {
    psrpc_bus *b = tu_open_bus_opts(url, o);
    return b;
}

/* Opens a bus and waits until it is connected. */
static inline psrpc_bus *rt_bus_ready(const char *url, const psrpc_bus_options *o) {
    psrpc_bus *b = rt_bus(url, o);
    if (b && psrpc_bus_wait_ready(b, tu_ms(5000)) != PSRPC_OK) {
        fprintf(stderr, "  bus did not connect: %s\n", psrpc_last_error());
        psrpc_bus_free(b);
        return NULL;
    }
    return b;
}

/* Calls under load: each issued call's return (rc), issue time and callback
 * record (calls[i], tu_call_cb), up to max calls. */
typedef struct rt_load {
    tu_call *calls;
    long long *issued_ms;
    int *rc; /* psrpc_client_call's return */
    int n, max;
} rt_load;

static inline rt_load *rt_load_new(int max) {
    rt_load *l = (rt_load *)calloc(1, sizeof *l);
    l->calls = tu_calls_new((size_t)max);
    l->issued_ms = (long long *)calloc((size_t)max, sizeof *l->issued_ms);
    l->rc = (int *)calloc((size_t)max, sizeof *l->rc);
    l->max = max;
    return l;
}

static inline void rt_load_free(rt_load *l) {
    free(l->calls);
    free(l->issued_ms);
    free(l->rc);
    free(l);
}

/* Issues one call "load-<i>" with timeout_ms (0: the client's timeout). */
static inline void rt_load_issue_t(rt_load *l, psrpc_client *cl, const psrpc_method *m,
                                   int64_t timeout_ms) {
    if (l->n >= l->max)
        return;
    int i = l->n++;
    char payload[64];
    snprintf(payload, sizeof payload, "load-%d", i);
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.timeout_ms = timeout_ms;
    l->issued_ms[i] = th_now_ms();
    uint64_t id = 0;
    l->rc[i] =
        psrpc_client_call(&id, cl, m, payload, strlen(payload), &o, tu_call_cb, &l->calls[i]);
}

/* One call with a 1 s deadline. */
static inline void rt_load_issue(rt_load *l, psrpc_client *cl, const psrpc_method *m) {
    rt_load_issue_t(l, cl, m, 1000);
}

/* One synchronous unary call; returns the status (0 on an echo of payload). */
static inline int rt_call(psrpc_client *cl, const psrpc_method *m, const char *payload,
                          const char *const *topics, size_t ntopics, int64_t timeout_ms) {
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.timeout_ms = timeout_ms;
    o.topics = topics;
    o.topic_count = ntopics;
    psrpc_msg *resp = NULL;
    int rc = psrpc_client_call_sync(&resp, cl, m, payload, strlen(payload), &o);
    if (rc == PSRPC_OK) {
        bool same = psrpc_msg_size(resp) == strlen(payload) &&
                    memcmp(psrpc_msg_data(resp), payload, strlen(payload)) == 0;
        psrpc_msg_release(resp);
        return same ? PSRPC_OK : PSRPC_INTERNAL;
    }
    return rc;
}

#endif
