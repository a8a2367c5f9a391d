/* Shared helpers of the tests/local suite. Every test reads the bus URL from
 * PSRPC_TEST_BUS_URL (default "local://"), so the same executables run over
 * Redis and NATS. Everything handed to the library as user_data lives on the
 * heap, so an early REQUIRE return never leaves a callback pointing at a dead
 * stack frame (it leaks instead). */
#ifndef PSRPC_TESTS_LOCAL_UTIL_H
#define PSRPC_TESTS_LOCAL_UTIL_H

#include <ctype.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "psrpc.h"

/* ------------------------------------------------------------------------ */
/* Bus URL, unique names, bus groups                                         */
/* ------------------------------------------------------------------------ */

static inline const char *tu_bus_url(void) {
    const char *u = getenv("PSRPC_TEST_BUS_URL");
    return (u && *u) ? u : "local://";
}

static inline bool tu_is_local(void) { return strncmp(tu_bus_url(), "local://", 8) == 0; }

static atomic_int tu_seq_counter;

/* prefix + pid + sequence; a valid psrpc identifier ([A-Za-z_][A-Za-z0-9_]*). */
static inline void tu_unique(char *buf, size_t n, const char *prefix) {
    snprintf(buf, n, "%s%d_%d", prefix, (int)getpid(), atomic_fetch_add(&tu_seq_counter, 1));
}

/* A unique service name per test, so runs against a shared broker never see
 * each other's servers. */
static inline void tu_service(char *buf, size_t n) { tu_unique(buf, n, "Svc"); }

static inline psrpc_bus *tu_open_bus_opts(const char *url, const psrpc_bus_options *opts) {
    psrpc_bus *bus = NULL;
    int rc = psrpc_bus_open(&bus, url, opts);
    if (rc != PSRPC_OK) {
        fprintf(stderr, "  psrpc_bus_open(%s) failed: %d %s\n", url ? url : "(null)", rc,
                psrpc_last_error());
        return NULL;
    }
    return bus;
}

/* Opens n buses connected to each other, as if in n processes: on local, each
 * opens "local://<unique name>" (a name shared by two handles connects them);
 * otherwise every one opens the broker URL. opts may be NULL. */
static inline int open_bus_group_opts(psrpc_bus **out, int n, const psrpc_bus_options *opts) {
    char url[256];
    if (tu_is_local()) {
        char name[64];
        tu_unique(name, sizeof name, "tb");
        snprintf(url, sizeof url, "local://%s", name);
    } else {
        snprintf(url, sizeof url, "%s", tu_bus_url());
    }
    for (int i = 0; i < n; i++) {
        out[i] = tu_open_bus_opts(url, opts);
        if (!out[i]) {
            for (int j = 0; j < i; j++) {
                psrpc_bus_free(out[j]);
                out[j] = NULL;
            }
            return -1;
        }
    }
    /* connected before use: the tests are about RPC, not connection setup */
    for (int i = 0; i < n; i++) {
        int rc = psrpc_bus_wait_ready(out[i], (int64_t)(5000 * th_time_factor()));
        if (rc != PSRPC_OK) {
            fprintf(stderr, "  psrpc_bus_wait_ready(%s): %d %s\n", url, rc, psrpc_last_error());
            for (int j = 0; j < n; j++) {
                psrpc_bus_free(out[j]);
                out[j] = NULL;
            }
            return -1;
        }
    }
    return 0;
}

static inline int open_bus_group(psrpc_bus **out, int n) {
    return open_bus_group_opts(out, n, NULL);
}

/* The pair most tests use: one bus for servers, one for clients. */
static inline int open_bus_pair(psrpc_bus **a, psrpc_bus **b) {
    psrpc_bus *v[2] = {NULL, NULL};
    int rc = open_bus_group(v, 2);
    *a = v[0];
    *b = v[1];
    return rc;
}

static inline psrpc_bus_stats tu_stats(psrpc_bus *bus) {
    psrpc_bus_stats s;
    memset(&s, 0, sizeof s);
    s.struct_size = sizeof s;
    if (psrpc_bus_get_stats(bus, &s) != PSRPC_OK)
        fprintf(stderr, "  psrpc_bus_get_stats failed: %s\n", psrpc_last_error());
    return s;
}

static inline long tu_ms(long ms) { return (long)(ms * th_time_factor()); }

static inline bool tu_contains_ci(const char *hay, const char *needle) {
    if (!hay || !needle)
        return false;
    size_t n = strlen(needle);
    for (const char *p = hay; *p; p++) {
        size_t i = 0;
        while (i < n && p[i] && tolower((unsigned char)p[i]) == tolower((unsigned char)needle[i]))
            i++;
        if (i == n)
            return true;
    }
    return n == 0;
}

/* ------------------------------------------------------------------------ */
/* Method definitions                                                        */
/* ------------------------------------------------------------------------ */

static inline psrpc_method tu_method(const char *name, uint32_t routing, uint32_t flags) {
    psrpc_method m = PSRPC_METHOD_INIT;
    m.name = name;
    m.routing = routing;
    m.flags = flags;
    return m;
}

/* ------------------------------------------------------------------------ */
/* Thread bookkeeping: callbacks must never run on the test's own thread     */
/* ------------------------------------------------------------------------ */

static pthread_t tu_main_thread;
static atomic_int tu_cb_on_main; /* callbacks observed on the main (API-calling) thread */

__attribute__((constructor)) static void tu_init_main_thread(void) {
    tu_main_thread = pthread_self();
}

static inline void tu_note_cb_thread(void) {
    if (pthread_equal(pthread_self(), tu_main_thread))
        atomic_fetch_add(&tu_cb_on_main, 1);
}

/* ------------------------------------------------------------------------ */
/* Call records                                                              */
/* ------------------------------------------------------------------------ */

#define TU_MAX_DETAILS 4

typedef struct tu_call {
    atomic_int count;    /* completions (must end at exactly 1) */
    atomic_int bad;      /* contract violations seen in the callback */
    uint64_t call_id;    /* id from psrpc_client_call (test thread) */
    uint64_t cb_call_id; /* id reported by the callback (loop thread) */
    int status;          /* PSRPC_OK or the error's status */
    char code[128];
    char message[512];
    size_t details_count;
    char detail_url[TU_MAX_DETAILS][128];
    uint8_t detail_val[TU_MAX_DETAILS][128];
    size_t detail_len[TU_MAX_DETAILS];
    bool has_response;
    char response[1024];
    size_t response_len;
    char server_id[128];
    long long at_ms; /* th_now_ms() at completion */
    /* optional hook run at the end of the callback */
    void (*hook)(struct tu_call *c, void *arg);
    void *hook_arg;
} tu_call;

static inline tu_call *tu_calls_new(size_t n) {
    return (tu_call *)calloc(n ? n : 1, sizeof(tu_call));
}

static inline void tu_copy_error(tu_call *c, const psrpc_error *e) {
    c->status = e->status;
    snprintf(c->code, sizeof c->code, "%s", e->code ? e->code : "(null)");
    snprintf(c->message, sizeof c->message, "%s", e->message ? e->message : "(null)");
    if (!e->code || !e->message)
        atomic_fetch_add(&c->bad, 1);
    c->details_count = e->details_count;
    for (size_t i = 0; i < e->details_count && i < TU_MAX_DETAILS; i++) {
        snprintf(c->detail_url[i], sizeof c->detail_url[i], "%s",
                 e->details[i].type_url ? e->details[i].type_url : "(null)");
        size_t l = e->details[i].value_len;
        if (l > sizeof c->detail_val[i])
            l = sizeof c->detail_val[i];
        if (l)
            memcpy(c->detail_val[i], e->details[i].value, l);
        c->detail_len[i] = e->details[i].value_len;
    }
}

/* The completion callback for unary calls (and multi results/done). */
__attribute__((unused)) static void tu_call_cb(uint64_t call_id, const psrpc_msg *response,
                                               const psrpc_error *error, const char *server_id,
                                               void *user_data) {
    tu_call *c = (tu_call *)user_data;
    tu_note_cb_thread();
    c->cb_call_id = call_id;
    if ((response == NULL) == (error == NULL))
        atomic_fetch_add(&c->bad, 1); /* exactly one of them must be set */
    if (error) {
        tu_copy_error(c, error);
    } else {
        c->status = PSRPC_OK;
    }
    if (response) {
        c->has_response = true;
        size_t l = psrpc_msg_size(response);
        c->response_len = l;
        if (l >= sizeof c->response)
            l = sizeof c->response - 1;
        memcpy(c->response, psrpc_msg_data(response), l);
        c->response[l] = 0;
    }
    snprintf(c->server_id, sizeof c->server_id, "%s", server_id ? server_id : "");
    c->at_ms = th_now_ms();
    if (c->hook)
        c->hook(c, c->hook_arg);
    atomic_fetch_add(&c->count, 1);
}

static inline bool tu_wait_count(atomic_int *v, int n, long ms) {
    return WAIT_UNTIL(atomic_load(v) >= n, ms);
}

/* Calls method and returns the psrpc_client_call status; on OK, *c completes. */
static inline int tu_call_async(psrpc_client *cl, const psrpc_method *m, const char *payload,
                                const psrpc_call_options *o, tu_call *c) {
    int rc = psrpc_client_call(&c->call_id, cl, m, payload, payload ? strlen(payload) : 0, o,
                               tu_call_cb, c);
    if (rc != PSRPC_OK)
        fprintf(stderr, "  psrpc_client_call failed: %d %s\n", rc, psrpc_last_error());
    return rc;
}

/* Calls and waits for the completion (liveness bound wait_ms). true if it
 * completed. */
static inline bool tu_call_wait(psrpc_client *cl, const psrpc_method *m, const char *payload,
                                const psrpc_call_options *o, tu_call *c, long wait_ms) {
    if (tu_call_async(cl, m, payload, o, c) != PSRPC_OK)
        return false;
    return tu_wait_count(&c->count, 1, wait_ms);
}

/* ------------------------------------------------------------------------ */
/* One-shot done / closed / release counters                                 */
/* ------------------------------------------------------------------------ */

typedef struct tu_done {
    atomic_int count;
    int status;
    char code[128];
    char message[512];
} tu_done;

__attribute__((unused)) static void tu_done_cb(const psrpc_error *error, void *user_data) {
    tu_done *d = (tu_done *)user_data;
    tu_note_cb_thread();
    d->status = error ? error->status : PSRPC_OK;
    snprintf(d->code, sizeof d->code, "%s", error && error->code ? error->code : "");
    snprintf(d->message, sizeof d->message, "%s", error && error->message ? error->message : "");
    atomic_fetch_add(&d->count, 1);
}

__attribute__((unused)) static void tu_count_cb(void *user_data) {
    tu_note_cb_thread();
    atomic_fetch_add((atomic_int *)user_data, 1);
}

/* ------------------------------------------------------------------------ */
/* Clients                                                                   */
/* ------------------------------------------------------------------------ */

static inline psrpc_client *tu_client(psrpc_bus *bus, const char *service, int64_t timeout_ms,
                                      int64_t selection_timeout_ms) {
    psrpc_client_options o = PSRPC_CLIENT_OPTIONS_INIT;
    o.timeout_ms = timeout_ms;
    o.selection_timeout_ms = selection_timeout_ms;
    psrpc_client *c = NULL;
    int rc = psrpc_client_create(&c, bus, service, &o);
    if (rc != PSRPC_OK) {
        fprintf(stderr, "  psrpc_client_create failed: %d %s\n", rc, psrpc_last_error());
        return NULL;
    }
    return c;
}

/* ------------------------------------------------------------------------ */
/* Servers with a configurable handler                                       */
/* ------------------------------------------------------------------------ */

enum {
    TU_ECHO = 0,    /* respond with the payload */
    TU_HOLD = 1,    /* keep the request for the test to answer */
    TU_FAIL = 2,    /* psrpc_request_fail(fail_status, fail_message) */
    TU_ECHO_ID = 3, /* respond with the server id */
};

#define TU_MAX_HELD 4096

typedef struct tu_srv {
    psrpc_server *server;
    char id[128];
    int mode;
    int fail_status;
    const char *fail_message;
    int handler_sleep_ms; /* > 0: the handler blocks its loop this long (load) */
    /* affinity: when use_affinity, the affinity callback claims with
     * `affinity` (after affinity_delay_ms on another thread when > 0, or from
     * another thread at once when affinity_async) */
    bool use_affinity;
    bool affinity_async;
    int affinity_delay_ms;
    float affinity;
    atomic_int handled;
    atomic_int affinity_calls;
    atomic_int released;
    atomic_int answer_errors;  /* respond/fail/claim that did not return OK */
    atomic_int claims_pending; /* asynchronous claim threads still running */
    /* what the last handler invocation saw */
    pthread_mutex_t mu;
    char last_client_id[128];
    char last_method[128];
    char last_topic[128];
    char last_payload[256];
    size_t last_topic_count;
    int64_t last_remaining_ms;
    int64_t last_expiry_ns;
    int64_t last_sent_at_ns;
    int64_t last_seen_now_ns;
    psrpc_request *held[TU_MAX_HELD];
    int nheld;
} tu_srv;

static inline int64_t tu_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

__attribute__((unused)) static void tu_srv_handler(psrpc_request *req, void *user_data) {
    tu_srv *s = (tu_srv *)user_data;
    tu_note_cb_thread();
    pthread_mutex_lock(&s->mu);
    const char *v = psrpc_request_client_id(req);
    snprintf(s->last_client_id, sizeof s->last_client_id, "%s", v ? v : "(null)");
    v = psrpc_request_method(req);
    snprintf(s->last_method, sizeof s->last_method, "%s", v ? v : "(null)");
    s->last_topic_count = psrpc_request_topic_count(req);
    v = s->last_topic_count ? psrpc_request_topic(req, 0) : "";
    snprintf(s->last_topic, sizeof s->last_topic, "%s", v ? v : "(null)");
    const psrpc_msg *p = psrpc_request_payload(req);
    size_t pl = p ? psrpc_msg_size(p) : 0;
    if (pl >= sizeof s->last_payload)
        pl = sizeof s->last_payload - 1;
    if (p)
        memcpy(s->last_payload, psrpc_msg_data(p), pl);
    s->last_payload[pl] = 0;
    s->last_remaining_ms = psrpc_request_remaining_ms(req);
    s->last_expiry_ns = psrpc_request_expiry_ns(req);
    s->last_sent_at_ns = psrpc_request_sent_at_ns(req);
    s->last_seen_now_ns = tu_now_ns();
    if (s->handler_sleep_ms > 0)
        th_sleep_ms(s->handler_sleep_ms);
    int rc = PSRPC_OK;
    switch (s->mode) {
    case TU_HOLD:
        if (s->nheld < TU_MAX_HELD) {
            s->held[s->nheld++] = req;
        } else {
            rc = psrpc_request_fail(req, PSRPC_RESOURCE_EXHAUSTED, "test hold list full");
        }
        break;
    case TU_FAIL:
        rc = psrpc_request_fail(req, s->fail_status, s->fail_message);
        break;
    case TU_ECHO_ID:
        rc = psrpc_request_respond(req, s->id, strlen(s->id));
        break;
    default:
        rc = psrpc_request_respond(req, p ? psrpc_msg_data(p) : NULL, p ? psrpc_msg_size(p) : 0);
        break;
    }
    pthread_mutex_unlock(&s->mu);
    if (rc != PSRPC_OK)
        atomic_fetch_add(&s->answer_errors, 1);
    atomic_fetch_add(&s->handled, 1);
}

typedef struct tu_claim_job {
    psrpc_request *req;
    tu_srv *srv;
} tu_claim_job;

__attribute__((unused)) static void *tu_claim_thread(void *arg) {
    tu_claim_job *j = (tu_claim_job *)arg;
    if (j->srv->affinity_delay_ms > 0)
        th_sleep_ms(j->srv->affinity_delay_ms);
    tu_srv *s = j->srv;
    if (psrpc_request_claim(j->req, s->affinity) != PSRPC_OK)
        atomic_fetch_add(&s->answer_errors, 1);
    free(j);
    atomic_fetch_sub(&s->claims_pending, 1);
    return NULL;
}

__attribute__((unused)) static void tu_srv_affinity(psrpc_request *req, void *user_data) {
    tu_srv *s = (tu_srv *)user_data;
    tu_note_cb_thread();
    atomic_fetch_add(&s->affinity_calls, 1);
    if (s->affinity_async || s->affinity_delay_ms > 0) {
        atomic_fetch_add(&s->claims_pending, 1);
        tu_claim_job *j = (tu_claim_job *)malloc(sizeof *j);
        j->req = req;
        j->srv = s;
        pthread_t t;
        pthread_attr_t a;
        pthread_attr_init(&a);
        pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&t, &a, tu_claim_thread, j) != 0) {
            free(j);
            psrpc_request_claim(req, s->affinity);
            atomic_fetch_sub(&s->claims_pending, 1);
        }
        pthread_attr_destroy(&a);
        return;
    }
    if (psrpc_request_claim(req, s->affinity) != PSRPC_OK)
        atomic_fetch_add(&s->answer_errors, 1);
}

__attribute__((unused)) static void tu_srv_release(void *user_data) {
    tu_srv *s = (tu_srv *)user_data;
    tu_note_cb_thread();
    atomic_fetch_add(&s->released, 1);
}

/* Creates a server on bus (server_id NULL = generated). Never freed by the
 * helpers: the test frees the server, then (after its bus is freed) the
 * struct. */
static inline tu_srv *tu_srv_new(psrpc_bus *bus, const char *service, const char *server_id,
                                 int mode) {
    tu_srv *s = (tu_srv *)calloc(1, sizeof *s);
    pthread_mutex_init(&s->mu, NULL);
    s->mode = mode;
    s->affinity = 1.0f;
    psrpc_server_options o = PSRPC_SERVER_OPTIONS_INIT;
    o.server_id = server_id;
    int rc = psrpc_server_create(&s->server, bus, service, &o);
    if (rc != PSRPC_OK) {
        fprintf(stderr, "  psrpc_server_create failed: %d %s\n", rc, psrpc_last_error());
        return s; /* s->server NULL: the caller's REQUIRE catches it */
    }
    const char *id = psrpc_server_id(s->server);
    snprintf(s->id, sizeof s->id, "%s", id ? id : "");
    return s;
}

/* Registers the helper handler (and affinity callback if s->use_affinity),
 * then waits for the registration to be confirmed. Returns the status. */
static inline int tu_srv_register(tu_srv *s, const psrpc_method *m, const char *const *topics,
                                  size_t ntopics) {
    int rc =
        psrpc_server_register(s->server, m, topics, ntopics, tu_srv_handler,
                              s->use_affinity ? tu_srv_affinity : NULL, NULL, s, tu_srv_release);
    if (rc != PSRPC_OK) {
        fprintf(stderr, "  psrpc_server_register failed: %d %s\n", rc, psrpc_last_error());
        return rc;
    }
    rc = psrpc_server_wait_ready(s->server, tu_ms(5000));
    if (rc != PSRPC_OK)
        fprintf(stderr, "  psrpc_server_wait_ready failed: %d %s\n", rc, psrpc_last_error());
    return rc;
}

/* Pops one held request (NULL if none). */
static inline psrpc_request *tu_srv_pop(tu_srv *s) {
    pthread_mutex_lock(&s->mu);
    psrpc_request *r = s->nheld ? s->held[--s->nheld] : NULL;
    pthread_mutex_unlock(&s->mu);
    return r;
}

static inline int tu_srv_nheld(tu_srv *s) {
    pthread_mutex_lock(&s->mu);
    int n = s->nheld;
    pthread_mutex_unlock(&s->mu);
    return n;
}

/* Frees the struct once no helper thread uses it; answers (and so
 * consumes) any request still held, whatever the server's state. */
static inline void tu_srv_destroy(tu_srv *s) {
    if (!s)
        return;
    WAIT_UNTIL(atomic_load(&s->claims_pending) == 0, 5000);
    psrpc_request *r;
    while ((r = tu_srv_pop(s)) != NULL)
        psrpc_request_respond(r, "x", 1);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

/* Answers every held request from a separate thread (respond with payload
 * "late"); returns how many answers did not return `expect`. */
typedef struct tu_answer_job {
    tu_srv *srv;
    int expect;
    atomic_int mismatches;
    atomic_int answered;
} tu_answer_job;

__attribute__((unused)) static void *tu_answer_thread(void *arg) {
    tu_answer_job *j = (tu_answer_job *)arg;
    psrpc_request *r;
    while ((r = tu_srv_pop(j->srv)) != NULL) {
        int rc = psrpc_request_respond(r, "late", 4);
        if (rc != j->expect) {
            fprintf(stderr, "  late respond returned %d (%s), expected %d\n", rc,
                    psrpc_status_name(rc), j->expect);
            atomic_fetch_add(&j->mismatches, 1);
        }
        atomic_fetch_add(&j->answered, 1);
    }
    return NULL;
}

/* Answers all held requests of s from another thread and joins it. Returns
 * the number answered; *mismatches counts answers not returning expect. */
static inline int tu_answer_all_from_thread(tu_srv *s, int expect, int *mismatches) {
    tu_answer_job *j = (tu_answer_job *)calloc(1, sizeof *j);
    j->srv = s;
    j->expect = expect;
    pthread_t t;
    pthread_create(&t, NULL, tu_answer_thread, j);
    pthread_join(t, NULL);
    int n = atomic_load(&j->answered);
    if (mismatches)
        *mismatches = atomic_load(&j->mismatches);
    free(j);
    return n;
}

/* Each of the n URLs is refused by psrpc_bus_open with PSRPC_INVALID_ARGUMENT
 * and no bus; then secret_url is refused too, and its secret does not show
 * in psrpc_last_error(). */
static inline void tu_check_bad_urls(const char *const *urls, size_t n, const char *secret_url,
                                     const char *secret) {
    for (size_t i = 0; i < n; i++) {
        psrpc_bus *b = NULL;
        int rc = psrpc_bus_open(&b, urls[i], NULL);
        if (rc != PSRPC_INVALID_ARGUMENT)
            fprintf(stderr, "  %s -> %s\n", urls[i], psrpc_status_name(rc));
        CHECK_EQ_INT(rc, PSRPC_INVALID_ARGUMENT);
        CHECK(b == NULL);
        psrpc_bus_free(b);
    }
    psrpc_bus *b = NULL;
    CHECK_EQ_INT(psrpc_bus_open(&b, secret_url, NULL), PSRPC_INVALID_ARGUMENT);
    CHECK(b == NULL);
    if (strstr(psrpc_last_error(), secret)) {
        fprintf(stderr, "  the secret shows: %s\n", psrpc_last_error());
        th_failed_current = 1;
    }
}
#define TU_CHECK_BAD_URLS(urls, secret_url, secret) \
    tu_check_bad_urls(urls, sizeof urls / sizeof *urls, secret_url, secret)

/* Callbacks must run on a loop thread, never on the thread calling the API. */
#define TU_CHECK_THREADS() CHECK_EQ_INT(atomic_load(&tu_cb_on_main), 0)

#endif
