/* Internals shared by the client's files (loop thread unless noted):
 *   client.c         the client: create, reply subscriptions, close, subscriptions
 *   call.c           the call engine every kind shares: build, send, selection,
 *                    responses, deadlines, completion, cancel
 *   client_unary.c   psrpc_client_call and the blocking calls
 *   client_multi.c   psrpc_client_call_multi
 *   client_stream.c  psrpc_client_open_stream and the client stream channel */
#ifndef PSRPC_IMPL_CORE_CLIENT_INTERNAL_H
#define PSRPC_IMPL_CORE_CLIENT_INTERNAL_H

#include <pthread.h>
#include <stdio.h>

#include "chan_cache.h"
#include "core.h"
#include "hooks.h"
#include "map.h"
#include "stream.h"

#define CLIENT_MAGIC 0x50434c49u    /* "PCLI" */
#define SUB_MAGIC 0x50535542u       /* "PSUB" */
#define SELECTION_MAGIC 0x50534c43u /* "PSLC" */

typedef struct call call;
typedef struct psrpc__retry psrpc__retry;
typedef struct psrpc_sub sub_t;

struct psrpc_client {
    uint32_t magic;
    atomic_int refs;
    atomic_bool closing;
    atomic_bool freed;
    atomic_uint_fast64_t next_call_id;
    psrpc_bus *bus;
    char *service;
    char *id;
    int64_t timeout_ms;
    int64_t selection_timeout_ms;
    psrpc__child child;
    psrpc__task_node free_node; /* psrpc_client_free's close */

    /* Loop thread. */
    int state;
    bool started;
    int ready_pending;
    bool ready;
    psrpc__channel res_ch, claim_ch;
    psrpc__bus_sub *res_sub, *claim_sub;
    psrpc__map by_request;   /* request_id → call */
    psrpc__chan_cache chans; /* loop thread: request and claim channels by method */
    psrpc__map by_id;        /* decimal call id → call */
    psrpc__map streams;      /* stream_id → psrpc_stream (opening or open) */
    psrpc__channel str_ch;   /* the client stream channel, once a stream was opened */
    psrpc__bus_sub *str_sub;
    bool str_ready;
    call *waiting; /* calls queued until the reply channels are confirmed */
    /* The broker refused the reply (or the stream) subscription: every later
     * call (stream open) fails at once with this refusal, as the calls that
     * waited did, instead of timing out (status 0 = not refused). */
    int refused_status, str_refused_status;
    char *refused_message, *str_refused_message;
    /* Deadlines: one timer for the client, armed for the earliest call of a
     * list kept in deadline order (calls mostly share a timeout, so a new
     * call goes to the tail in O(1)). */
    uv_timer_t dl_timer;
    bool dl_timer_on; /* initialized (while started) */
    call *dl_head, *dl_tail;
    sub_t *subs;
    psrpc__closed_waiter *closed_waiters;
    void (*child_done)(psrpc__child *);
    /* Hooks and retry policies (any thread): immutable, replaced whole. */
    _Atomic(psrpc__hooks *) hooks;
    _Atomic(psrpc__retry *) retry_unary, retry_stream;
    psrpc__retry *retired; /* replaced policies, freed with the client (under retry_mu) */
    pthread_mutex_t retry_mu;
};

enum {
    CALL_NEW,
    CALL_WAIT_READY,
    CALL_SELECTING,
    CALL_SELECT_CB,
    CALL_WAIT_RESPONSE,
    CALL_RETRY_WAIT, /* between two attempts (the select timer starts the next) */
    CALL_DONE
};

typedef struct claim_rec {
    char *server_id;
    float affinity;
} claim_rec;

struct call {
    psrpc_client *client;
    uint64_t id;
    char id_key[24];
    char request_id[4 + PSRPC__ID_RANDOM_LEN + 1];
    psrpc__method method;
    char **topics;
    size_t topic_count;
    char **meta_keys, **meta_values;
    size_t meta_count;
    psrpc_msg *payload;
    bool multi;
    bool require_claim;
    bool wait_for_ready;
    psrpc_stream *stream; /* a stream open (holds a reference) */
    psrpc_call_cb cb;
    psrpc_call_cb on_done;
    void *user_data;
    int64_t timeout_ms;
    int64_t deadline_ms; /* monotonic */
    int64_t deadline_ns; /* the caller's absolute deadline (wall clock), 0 = none */
    /* Selection. */
    psrpc_selection_options sel;
    char *best_id;
    float best;
    claim_rec *eligible;
    size_t eligible_count, eligible_cap;
    int claim_count;
    psrpc__err *last_err;
    bool shorted;
    bool ended_by_deadline;
    /* Hooks, retries (set when the call is built). */
    unsigned kind;             /* PSRPC_CALL_KIND_* */
    const psrpc__hooks *hooks; /* NULL: none (the chain lives as long as the client) */
    const psrpc__retry *retry; /* NULL: no retries */
    int64_t start_ns;          /* monotonic, when hooks are set */
    int64_t base_timeout_ms;   /* the caller's timeout, else the client's */
    int64_t msg_timeout_ms;    /* a stream's message timeout */
    int64_t next_timeout_ms;   /* the next attempt's own timeout (0 = none) */
    int64_t expiry_ns;         /* the expiry the last attempt sent */
    uint32_t attempt;          /* attempts sent */
    bool caller_timeout;       /* the caller set timeout_ms (it wins over the policy's) */
    bool canceled;             /* psrpc_client_cancel reached it */
    bool ends_at_deadline;     /* this attempt's timeout is the caller's deadline */
    bool deadline_hit;         /* the caller's deadline passed (its timer fired) */
    bool no_retry;             /* failed in a way never retried (publish) */
    int hook_status;           /* a before_send hook failed the call */
    char *hook_message;
    uint64_t responses, errors; /* multi results delivered */
    /* Loop thread. */
    int state;
    bool in_waiting;
    call *next_waiting;
    uint64_t due_ms; /* loop time of the deadline */
    call *dl_prev, *dl_next;
    bool in_dl;
    uv_timer_t select_timer; /* initialized when selection first needs it */
    bool select_on;
};

struct psrpc_selection {
    uint32_t magic;
    atomic_int refs;
    atomic_bool answered;
    psrpc_client *client;
    uint64_t call_id;
};

#define CHECK_CLIENT(c)                                                               \
    do {                                                                              \
        PSRPC__CHECK_ARG(c, "client is NULL");                                        \
        PSRPC__CHECK_ARG((c)->magic == CLIENT_MAGIC, "handle is not a psrpc_client"); \
        PSRPC__CHECK_NOT_FORKED((c)->bus);                                            \
    } while (0)

/* A retry policy as set (psrpc_client_set_retries); immutable. */
struct psrpc__retry {
    psrpc_retry_options o;
    bool enabled;
    psrpc__retry *older; /* the retired list */
};

/* client.c */
void psrpc__client_retain(psrpc_client *c);  /* any thread */
void psrpc__client_release(psrpc_client *c); /* any thread */
void psrpc__client_start(psrpc_client *c);
void psrpc__client_flush_waiting(psrpc_client *c);
/* Records the first refusal of a reply or stream subscription. */
void psrpc__client_note_refusal(int *status_out, char **message_out, int status,
                                const char *message, const char *fallback);

/* call.c */
/* What a caller asked for (psrpc_client_call, _call_multi, _open_stream). */
typedef struct psrpc__call_req {
    unsigned kind; /* PSRPC_CALL_KIND_* */
    const psrpc_method *method;
    const void *data;
    size_t len;
    const psrpc_call_options *opts;
} psrpc__call_req;

/* The checks every call function starts with (caller's thread). */
int psrpc__call_check(psrpc_client *client, const void *data, size_t len);
/* Validates req and builds its call (caller's thread); the caller sets the
 * outcome callbacks, then psrpc__call_start. */
int psrpc__call_new(call **out, psrpc_client *client, const psrpc__call_req *req);
/* Hands k to the loop thread; *call_id_out (may be NULL) gets its id. On
 * failure k is still the caller's (psrpc__call_free). */
int psrpc__call_start(call *k, uint64_t *call_id_out);
void psrpc__call_free(call *k);
void psrpc__call_send(call *k);
void psrpc__call_wait(call *k);
void psrpc__call_complete(call *k, const psrpc_msg *response, const psrpc__err *err,
                          const char *server_id);
void psrpc__call_fail(call *k, int status, const char *message);
/* The client's reply channels (bus subscription callbacks). */
void psrpc__call_on_response(void *ctx, const uint8_t *data, size_t len);
void psrpc__call_on_claim_request(void *ctx, const uint8_t *data, size_t len);

/* client_stream.c */
/* The open call's outcome callback: success opens the stream. */
void psrpc__client_stream_open_done(uint64_t id, const psrpc_msg *response,
                                    const psrpc_error *error, const char *server_id,
                                    void *user_data);
/* Subscribes the client stream channel once. */
void psrpc__client_stream_channel(psrpc_client *c);

#endif
