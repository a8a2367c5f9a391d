/*
 * libpsrpc — protobuf RPC over pub/sub (Redis, NATS, in-process), wire
 * compatible with livekit/psrpc (Go).
 *
 * This is the only header a user includes. It depends on <stddef.h> and
 * <stdint.h> alone, and compiles as C99 and as C++.
 *
 * THREADS
 *   A bus owns one internal thread running a libuv loop (the "loop thread").
 *   Clients, servers and subscriptions created on a bus share it.
 *
 *   | function                                   | may be called from                         |
 *   |--------------------------------------------|--------------------------------------------|
 *   | psrpc_version*, psrpc_status_*, *_init     | any thread, any time (pure)                |
 *   | psrpc_last_error, psrpc_clear_error        | any thread; per-thread state               |
 *   | open/create, call, cancel, register,       | any thread, also inside callbacks; they    |
 *   | publish, subscribe, respond, fail, claim   | enqueue work and never wait for the loop   |
 *   | psrpc_msg_*                                | any thread (immutable, atomic refcount)    |
 *   | *_close                                    | any thread, also inside callbacks;         |
 *   |                                            | idempotent                                 |
 *   | *_free                                     | any thread; the caller's last use of it    |
 *   | *_sync, *_wait_*                           | any thread EXCEPT a loop thread: there     |
 *   |                                            | they fail at once with                     |
 *   |                                            | PSRPC_WOULD_DEADLOCK                       |
 *
 *   Every callback runs on the loop thread of the bus it belongs to, never
 *   while the library holds a lock, and never from inside the API call that
 *   scheduled it. Callbacks must not block: they stall every handle on the bus.
 *
 *   Library threads block SIGPIPE: a connection the broker resets makes a
 *   write fail (and the bus reconnect) instead of killing the process; the
 *   application's own threads and signal dispositions are left alone.
 *
 *   fork(): handles opened before a fork are unusable in the child (their
 *   loop threads exist only in the parent); every call on them fails at once
 *   with PSRPC_FAILED_PRECONDITION. See psrpc_bus_release.
 *
 * OWNERSHIP
 *   - Handles are opaque. Bytes and strings passed in are copied before the
 *     call returns. Bytes and strings passed to a callback are borrowed for the
 *     duration of that callback (retain a psrpc_msg to keep it).
 *   - A one-shot callback (call completion, a multi call's done, a ready
 *     callback, a closed callback) fires EXACTLY ONCE if the function that took
 *     it returned PSRPC_OK, and NEVER if it returned an error.
 *   - A long-lived registration (a method handler, a subscription) takes
 *     (cb, user_data, release): release(user_data) runs exactly once, on the
 *     loop thread, after the last invocation of cb has returned.
 *   - A psrpc_request handed to a handler must be answered exactly once, with
 *     psrpc_request_respond() or psrpc_request_fail(), from any thread, at any
 *     later time. An affinity callback answers with psrpc_request_claim() in
 *     the same way. psrpc_request_abandon() answers either stage (a binding's
 *     finalizer). See "Requests are always consumed" below.
 *   - *_free may be called in any order (a bus before its clients is fine):
 *     memory is reclaimed when the last internal reference drops.
 *
 * STRUCT SIZES
 *   Option and stats structs start with struct_size (sizeof as the caller
 *   compiled it); fields are only ever added at the end. The
 *   PSRPC_*_SIZE_V1 constants are the sizes of the first version of each
 *   struct ON THIS PLATFORM: they follow this platform's C struct layout
 *   (pointer size, alignment; the values written here are those of LP64
 *   Linux/macOS) and are not portable numbers. A binding that builds the
 *   structs itself must compute them from the platform's layout.
 *
 * LINKING
 *   libpsrpc.so exports only psrpc_* symbols. libpsrpc.a is one object
 *   whose only global symbols are psrpc_*: its internals (and the protobuf-c
 *   code generated from its wire schema) cannot collide with the program's
 *   own symbols. Linking it statically needs the dependencies listed by
 *   `pkg-config --static --libs psrpc` (protobuf-c's runtime included).
 *
 * ERRORS
 *   Functions return psrpc_status: 0 on success, a negative code on failure.
 *   Every failing call sets a per-thread message readable with
 *   psrpc_last_error(). Asynchronous outcomes reach callbacks as a
 *   const psrpc_error * (NULL on success) that carries the code string exactly
 *   as it travelled on the wire, the message and the details.
 */
#ifndef PSRPC_H
#define PSRPC_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#if defined(PSRPC_BUILDING_SHARED)
#define PSRPC_API __declspec(dllexport)
#elif defined(PSRPC_USING_SHARED)
#define PSRPC_API __declspec(dllimport)
#else
#define PSRPC_API
#endif
#elif defined(__GNUC__) && __GNUC__ >= 4
#define PSRPC_API __attribute__((visibility("default")))
#else
#define PSRPC_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------ */
/* Version                                                                   */
/* ------------------------------------------------------------------------ */

#define PSRPC_VERSION_MAJOR 0
#define PSRPC_VERSION_MINOR 1
#define PSRPC_VERSION_PATCH 0
#define PSRPC_VERSION_HEX \
    ((PSRPC_VERSION_MAJOR << 16) | (PSRPC_VERSION_MINOR << 8) | (PSRPC_VERSION_PATCH))
#define PSRPC_VERSION_STRING "0.1.0"

/** The livekit/psrpc release whose wire protocol this library speaks. */
#define PSRPC_WIRE_VERSION_STRING "v0.8.2"

/** PSRPC_VERSION_HEX of the library actually loaded. */
PSRPC_API unsigned int psrpc_version(void);
/** "MAJOR.MINOR.PATCH" of the library actually loaded; static storage. */
PSRPC_API const char *psrpc_version_string(void);

/* ------------------------------------------------------------------------ */
/* Status codes                                                              */
/* ------------------------------------------------------------------------ */

/*
 * XX(NAME, value, wire code string, description). One entry per psrpc error
 * code of the wire protocol (section 13.1), in its order, then the codes only
 * local API misuse can produce (wire string NULL: they travel as "internal").
 */
#define PSRPC_STATUS_MAP(XX)                                                          \
    XX(OK, 0, "", "success")                                                          \
    XX(CANCELED, -1, "canceled", "request canceled")                                  \
    XX(UNKNOWN, -2, "unknown", "unknown error")                                       \
    XX(INVALID_ARGUMENT, -3, "invalid_argument", "invalid argument")                  \
    XX(MALFORMED_REQUEST, -4, "malformed_request", "malformed request")               \
    XX(DEADLINE_EXCEEDED, -5, "deadline_exceeded", "deadline exceeded")               \
    XX(NOT_FOUND, -6, "not_found", "not found")                                       \
    XX(ALREADY_EXISTS, -7, "already_exists", "already exists")                        \
    XX(PERMISSION_DENIED, -8, "permission_denied", "permission denied")               \
    XX(RESOURCE_EXHAUSTED, -9, "resource_exhausted", "resource exhausted")            \
    XX(FAILED_PRECONDITION, -10, "failed_precondition", "failed precondition")        \
    XX(ABORTED, -11, "aborted", "aborted")                                            \
    XX(OUT_OF_RANGE, -12, "out_of_range", "out of range")                             \
    XX(UNIMPLEMENTED, -13, "unimplemented", "unimplemented")                          \
    XX(INTERNAL, -14, "internal", "internal error")                                   \
    XX(MALFORMED_RESULT, -15, "malformed_result", "malformed result")                 \
    XX(UNAVAILABLE, -16, "unavailable", "unavailable")                                \
    XX(DATA_LOSS, -17, "data_loss", "data loss")                                      \
    XX(UNAUTHENTICATED, -18, "unauthenticated", "unauthenticated")                    \
    XX(NOT_ACCEPTABLE, -19, "not_acceptable", "not acceptable")                       \
    XX(UNPROCESSABLE_ENTITY, -20, "unprocessable_entity", "unprocessable entity")     \
    XX(UPSTREAM_SERVER_ERROR, -21, "upstream_server_error", "upstream server error")  \
    XX(UPSTREAM_CLIENT_ERROR, -22, "upstream_client_error", "upstream client error")  \
    XX(WOULD_DEADLOCK, -100, NULL, "blocking call on the loop thread would deadlock") \
    XX(NOT_SUPPORTED, -101, NULL, "not supported by this library version")

typedef enum psrpc_status {
#define PSRPC__STATUS_ENUM(name, value, code, desc) PSRPC_##name = value,
    PSRPC_STATUS_MAP(PSRPC__STATUS_ENUM)
#undef PSRPC__STATUS_ENUM
} psrpc_status;

/** "PSRPC_DEADLINE_EXCEEDED"; "PSRPC_UNKNOWN" for values not in the map. */
PSRPC_API const char *psrpc_status_name(int status);
/** Human description ("deadline exceeded"); static storage. */
PSRPC_API const char *psrpc_status_str(int status);
/** The psrpc wire code ("deadline_exceeded"; "" for OK; "internal" for local-only codes). */
PSRPC_API const char *psrpc_status_code(int status);
/** Wire code string to status; NULL, "" → PSRPC_OK; unknown strings → PSRPC_UNKNOWN. */
PSRPC_API int psrpc_status_from_code(const char *code);

/**
 * The message of the calling thread's last failed psrpc call ("" if none).
 * Valid until the next psrpc call on this thread. Never NULL.
 */
PSRPC_API const char *psrpc_last_error(void);
/** The status of the calling thread's last failed call (PSRPC_OK if none). */
PSRPC_API int psrpc_last_error_status(void);
PSRPC_API void psrpc_clear_error(void);

/** One error detail: a google.protobuf.Any (type URL + serialized bytes). */
typedef struct psrpc_error_detail {
    const char *type_url;
    const uint8_t *value;
    size_t value_len;
} psrpc_error_detail;

/**
 * An error delivered to a callback. Everything it points to is borrowed for
 * the duration of the callback. Library-allocated: may grow at the end.
 */
typedef struct psrpc_error {
    int32_t status; /* psrpc_status; PSRPC_UNKNOWN for a code string we do not know */
    uint32_t reserved;
    const char *code;    /* the code string exactly as received, e.g. "not_found" */
    const char *message; /* never NULL */
    const psrpc_error_detail *details;
    size_t details_count;
} psrpc_error;

/**
 * An owned deep copy of error (status, code, message, details with their
 * type URLs and bytes), e.g. to keep an error delivered to a callback after
 * the callback returned. One allocation; free it with psrpc_error_free.
 * error NULL or out NULL: PSRPC_INVALID_ARGUMENT (*out is NULL on failure).
 * NULL code/message/type_url in the source are copied as "". Any thread.
 */
PSRPC_API psrpc_status psrpc_error_copy(psrpc_error **out, const psrpc_error *error);
/**
 * Frees an error made by psrpc_error_copy or returned by
 * psrpc_client_call_sync_ex (never one borrowed in a callback). NULL: no-op.
 */
PSRPC_API void psrpc_error_free(psrpc_error *error);

/* ------------------------------------------------------------------------ */
/* Messages: immutable, refcounted byte buffers                              */
/* ------------------------------------------------------------------------ */

typedef struct psrpc_msg psrpc_msg;

/** Copy len bytes into a new message (refcount 1). data may be NULL if len is 0. */
PSRPC_API psrpc_status psrpc_msg_new(psrpc_msg **out, const void *data, size_t len);
/** The bytes; never NULL (a zero-length message points at a valid empty buffer). */
PSRPC_API const uint8_t *psrpc_msg_data(const psrpc_msg *msg);
PSRPC_API size_t psrpc_msg_size(const psrpc_msg *msg);
/** Takes a reference; returns msg. Any thread. */
PSRPC_API psrpc_msg *psrpc_msg_retain(const psrpc_msg *msg);
/** Drops a reference; NULL is a no-op. Any thread. */
PSRPC_API void psrpc_msg_release(const psrpc_msg *msg);

/* ------------------------------------------------------------------------ */
/* Common callback types                                                     */
/* ------------------------------------------------------------------------ */

/** Releases user data; runs once, on the loop thread. */
typedef void (*psrpc_release_cb)(void *user_data);
/** A handle finished closing. Runs once, on the loop thread. */
typedef void (*psrpc_closed_cb)(void *user_data);
/** A one-shot outcome: error is NULL on success. */
typedef void (*psrpc_done_cb)(const psrpc_error *error, void *user_data);

/** A string key/value pair (request metadata). Borrowed, copied by the callee. */
typedef struct psrpc_kv {
    const char *key;
    const char *value;
} psrpc_kv;

/* ------------------------------------------------------------------------ */
/* Method definitions                                                        */
/* ------------------------------------------------------------------------ */

/* Routing type of a method (livekit/psrpc's psrpc.Routing). */
#define PSRPC_ROUTING_QUEUE 0u
#define PSRPC_ROUTING_AFFINITY 1u
#define PSRPC_ROUTING_MULTI 2u

/* Method flags (livekit/psrpc's method options). */
#define PSRPC_METHOD_SUBSCRIPTION 0x1u  /* server publishes, clients subscribe */
#define PSRPC_METHOD_TOPICS 0x2u        /* the method takes topics */
#define PSRPC_METHOD_STREAM 0x4u        /* bidirectional stream */
#define PSRPC_METHOD_SINGLE_SERVER 0x8u /* topic_params.single_server: no claim handshake */

/**
 * What both sides must agree on about a method (as protoc-gen-psrpc derives it
 * from the method's options). Borrowed for the duration of the call that
 * takes it.
 */
typedef struct psrpc_method {
    uint32_t struct_size; /* sizeof(psrpc_method) */
    uint32_t routing;     /* PSRPC_ROUTING_* */
    uint32_t flags;       /* PSRPC_METHOD_* */
    uint32_t reserved;    /* 0 */
    const char *name;     /* method name on the wire, e.g. "AddValue" */
    /* Full protobuf name of the method's output message
     * ("pkg.AddResult"). Subscriptions need it: published messages carry it as
     * their type URL and subscribers drop other types. NULL: subscribers
     * accept any type, publishing is refused. */
    const char *output_type;
} psrpc_method;

#define PSRPC_METHOD_INIT \
    { sizeof(psrpc_method), 0, 0, 0, NULL, NULL }
#define PSRPC_METHOD_SIZE_V1 32

/* ------------------------------------------------------------------------ */
/* Bus                                                                       */
/* ------------------------------------------------------------------------ */

typedef struct psrpc_bus psrpc_bus;

/* Bus flags. */
#define PSRPC_BUS_TLS 0x1u /* use TLS even if the URL scheme does not say so */

typedef struct psrpc_bus_options {
    uint32_t struct_size;            /* sizeof(psrpc_bus_options) */
    uint32_t flags;                  /* PSRPC_BUS_* */
    int64_t max_message_size;        /* bytes; 0 = 1 MiB. Larger messages are refused
                                        (resource_exhausted) and inbound ones dropped */
    int64_t queue_capacity;          /* per-subscription inbound queue; 0 = 10000. Overflow
                                        is dropped and counted as slow_consumer */
    int64_t connect_timeout_ms;      /* per connection attempt; 0 = 5000 */
    int64_t ping_interval_ms;        /* health check interval; 0 = 3000 (Redis), 10000 (NATS) */
    int64_t reconnect_wait_ms;       /* first reconnect delay; 0 = 100, doubling */
    int64_t reconnect_wait_max_ms;   /* backoff cap; 0 = 1000 (Redis), 2000 (NATS) */
    int64_t compress_threshold;      /* gzip outbound payloads at least this large; 0 = never */
    int64_t reconnect_buffer_size;   /* bytes of publishes buffered while (re)connecting;
                                        0 = 8 MiB */
    const char *tls_ca_file;         /* PEM CA bundle to verify the server; NULL = system */
    const char *tls_cert_file;       /* PEM client certificate (mutual TLS) */
    const char *tls_key_file;        /* PEM client key */
    const char *tls_server_name;     /* SNI / verification name; NULL = the URL's host */
    const char *nats_creds_file;     /* NATS: JWT + NKey seed credentials file */
    const char *nats_nkey_seed_file; /* NATS: NKey seed file */
    const char *channel_prefix;      /* Redis: prepended to every channel name; NULL = none
                                        (Go peers use none) */
} psrpc_bus_options;

#define PSRPC_BUS_OPTIONS_INIT                                                                    \
    {                                                                                             \
        sizeof(psrpc_bus_options), 0, 0, 0, 0, 0, 0, 0, 0, 0, NULL, NULL, NULL, NULL, NULL, NULL, \
            NULL                                                                                  \
    }
#define PSRPC_BUS_OPTIONS_SIZE_V1 128

/** Fills opts with defaults for a caller compiled with struct_size. */
PSRPC_API psrpc_status psrpc_bus_options_init(psrpc_bus_options *opts, size_t struct_size);

/**
 * Opens a bus. url: NULL or "local://" (a bus private to this handle),
 * "local://NAME" (shared by every bus opened with the same NAME in this
 * process), "redis://..." (also rediss://, redis+sentinel://, redis+cluster://:
 * docs/redis.md) or "nats://..." where compiled in. opts may be NULL.
 * Starts the loop thread. Returns at once; on failure *out is NULL.
 */
PSRPC_API psrpc_status psrpc_bus_open(psrpc_bus **out, const char *url,
                                      const psrpc_bus_options *opts);

/**
 * Closes the bus and everything created on it (clients, servers and
 * subscriptions close as if forced: outstanding calls complete with
 * PSRPC_CANCELED). closed_cb (may be NULL) runs on the loop thread after the
 * last callback of anything on this bus returned. Idempotent: a second close
 * returns PSRPC_OK and its closed_cb also runs once.
 */
PSRPC_API psrpc_status psrpc_bus_close(psrpc_bus *bus, psrpc_closed_cb closed_cb, void *user_data);

/**
 * Drops the caller's reference, closing first if needed. NULL is a no-op.
 * On a thread that is not a loop thread: waits until the bus has closed and
 * its loop thread has stopped and been joined, so no callback of this bus
 * runs after it returns (the close is bounded: a NATS bus flushes for at most
 * about 0.5 s and waits at most about 3 s for nats.c's last callbacks).
 * On ANY loop thread (inside a callback of this bus or of another bus) it
 * never waits: it behaves like psrpc_bus_release. In a child process after
 * fork() it returns at once (see psrpc_bus_release).
 */
PSRPC_API void psrpc_bus_free(psrpc_bus *bus);

/**
 * Non-blocking psrpc_bus_free: closes the bus and drops the caller's
 * reference without waiting for the loop thread, which finishes the close,
 * frees the bus and exits by itself. Safe on any thread, including any bus's
 * loop thread, inside callbacks. NULL: no-op. After it returns the caller
 * must not use the handle; callbacks of this bus may still run until its
 * close completes (pass a closed_cb to psrpc_bus_close first to know when).
 * A process that exits right after it may end while the loop thread is
 * still closing; use psrpc_bus_free off the loop threads for a clean exit.
 *
 * fork(): a bus (and every handle on it) inherited from the parent process
 * is unusable in the child: its loop thread does not exist there. Every call
 * on it fails at once with PSRPC_FAILED_PRECONDITION ("bus was opened in the
 * parent process (fork)"), *_sync and *_wait_* included; callbacks of calls
 * made before the fork never run in the child. psrpc_bus_free and
 * psrpc_bus_release (and the other *_free) return at once in the child and
 * touch neither the parent's threads nor its sockets: the inherited memory is
 * left as it is (a copy, reclaimed when the child exits or execs). Open a new
 * bus in the child instead (local or Redis; nats.c's own library threads do
 * not survive fork either, so a process that used NATS before forking cannot
 * use NATS in the child: open NATS buses only after forking).
 */
PSRPC_API void psrpc_bus_release(psrpc_bus *bus);

/* Bus states reported to a state callback. */
#define PSRPC_BUS_CONNECTED 1    /* the transport is connected and subscribed */
#define PSRPC_BUS_DISCONNECTED 2 /* lost; reconnecting (error says why) */
#define PSRPC_BUS_CLOSED 3       /* closed; the last state reported */

/** A bus state change; error is NULL for CONNECTED and CLOSED. */
typedef void (*psrpc_bus_state_cb)(int state, const psrpc_error *error, void *user_data);

/**
 * Watches the bus's connection state. The callback runs on the loop thread
 * for every change, first with the current state. A second call replaces the
 * first watcher (whose release runs). release(user_data) runs once after the
 * last invocation (replacement or bus close).
 */
PSRPC_API psrpc_status psrpc_bus_watch(psrpc_bus *bus, psrpc_bus_state_cb cb, void *user_data,
                                       psrpc_release_cb release);

/**
 * Blocks until the bus is connected (local: at once). PSRPC_DEADLINE_EXCEEDED
 * after timeout_ms, PSRPC_UNAUTHENTICATED / PERMISSION_DENIED when the broker
 * refuses us, PSRPC_WOULD_DEADLOCK on a loop thread.
 */
PSRPC_API psrpc_status psrpc_bus_wait_ready(psrpc_bus *bus, int64_t timeout_ms);

/** Counters of a bus. Caller sets struct_size; fields it does not know are left out. */
typedef struct psrpc_bus_stats {
    uint32_t struct_size;
    uint32_t reserved;
    uint64_t connects;
    uint64_t disconnects;
    uint64_t reconnect_attempts;
    uint64_t subscriptions; /* broker subscriptions currently active */
    uint64_t messages_published;
    uint64_t messages_received;
    uint64_t dropped_malformed; /* undecodable, wrong-typed, or a request whose id is
                                   already waiting for its claim */
    uint64_t dropped_oversize;
    uint64_t dropped_slow_consumer; /* inbound queue full */
    uint64_t dropped_expired;       /* requests/stream messages past expiry */
    uint64_t dropped_unknown;       /* responses/claims for no pending request */
    uint64_t requests_in_flight;    /* client calls outstanding */
    uint64_t streams_open;
    /* V2: requests a server dropped instead of claiming because it already
     * held 10,000 requests or 64 MiB awaiting their ClaimResponse (anyone who
     * can publish on a request channel could otherwise park requests there
     * until their expiry, at most 5 minutes each). */
    uint64_t dropped_held_limit;
} psrpc_bus_stats;

#define PSRPC_BUS_STATS_SIZE_V1 112
#define PSRPC_BUS_STATS_SIZE_V2 120

/** Reads the counters. Any thread. */
PSRPC_API psrpc_status psrpc_bus_get_stats(psrpc_bus *bus, psrpc_bus_stats *out);

/* ------------------------------------------------------------------------ */
/* Client                                                                    */
/* ------------------------------------------------------------------------ */

typedef struct psrpc_client psrpc_client;

typedef struct psrpc_client_options {
    uint32_t struct_size;         /* sizeof(psrpc_client_options) */
    uint32_t flags;               /* reserved, 0 */
    int64_t timeout_ms;           /* default request timeout; 0 = 3000 */
    int64_t selection_timeout_ms; /* default AffinityTimeout; 0 = 1000 */
    const char *client_id;        /* NULL or "" = "CLI_" + 12 random alphanumerics; any
                                     UTF-8 without whitespace, control characters, empty
                                     or wildcard ("*", ">") dot-separated parts */
} psrpc_client_options;

#define PSRPC_CLIENT_OPTIONS_INIT \
    { sizeof(psrpc_client_options), 0, 0, 0, NULL }
#define PSRPC_CLIENT_OPTIONS_SIZE_V1 32

PSRPC_API psrpc_status psrpc_client_options_init(psrpc_client_options *opts, size_t struct_size);

/** One claim seen during server selection. Borrowed for the callback. */
typedef struct psrpc_claim {
    const char *server_id;
    float affinity;
    uint32_t reserved;
} psrpc_claim;

typedef struct psrpc_selection psrpc_selection;

/**
 * Custom server selection (livekit/psrpc's SelectionFunc). Called at most
 * once per call, on the loop thread, when selection ends, with every eligible
 * claim (possibly none). Answer exactly once, from any thread, with
 * psrpc_selection_choose() or psrpc_selection_fail(). The call's deadline
 * keeps running meanwhile. user_data is the call option's selection_user_data;
 * it is never used after the call's completion callback ran.
 */
typedef void (*psrpc_select_cb)(psrpc_selection *selection, const psrpc_claim *claims, size_t count,
                                void *user_data);

/** Chooses a server (any string; an unknown id makes the call time out). Consumes selection. */
PSRPC_API psrpc_status psrpc_selection_choose(psrpc_selection *selection, const char *server_id);
/** Fails the call with status/message. Consumes selection. */
PSRPC_API psrpc_status psrpc_selection_fail(psrpc_selection *selection, int status,
                                            const char *message);

/* Selection flags. */
#define PSRPC_SELECT_ACCEPT_FIRST_AVAILABLE 0x1u

/**
 * Server selection options (livekit/psrpc's SelectionOpts). Passing them
 * replaces all defaults, as in Go: fields left zero mean "off". On QUEUE
 * methods select, minimum_affinity and maximum_affinity are refused
 * (PSRPC_INVALID_ARGUMENT): one server bids, there is nothing to select.
 */
typedef struct psrpc_selection_options {
    uint32_t struct_size;             /* sizeof(psrpc_selection_options) */
    uint32_t flags;                   /* PSRPC_SELECT_* */
    float minimum_affinity;           /* > 0: claims below are ineligible */
    float maximum_affinity;           /* > 0: an eligible claim >= it is taken at once */
    int64_t affinity_timeout_ms;      /* selection deadline; 0 = none */
    int64_t short_circuit_timeout_ms; /* after the first eligible claim; 0 = none */
    psrpc_select_cb select;           /* NULL = built-in choice */
    void *select_user_data;
} psrpc_selection_options;

#define PSRPC_SELECTION_OPTIONS_INIT \
    { sizeof(psrpc_selection_options), 0, 0, 0, 0, 0, NULL, NULL }
#define PSRPC_SELECTION_OPTIONS_SIZE_V1 48

/* Timeouts (every *_timeout_ms of this header, and the waits'): any value up
 * to INT64_MAX is accepted; more than 50 years counts as 50 years, i.e. no
 * practical deadline (a binding's Duration::MAX or Infinity mapped to
 * INT64_MAX). Negative values are refused (PSRPC_INVALID_ARGUMENT), except by
 * psrpc_server_wait_ready and psrpc_sub_wait_ready, which then do not wait. */

/* Call flags. */
#define PSRPC_CALL_WAIT_FOR_READY 0x1u /* wait for a disconnected bus within the deadline */

typedef struct psrpc_call_options {
    uint32_t struct_size; /* sizeof(psrpc_call_options) */
    uint32_t flags;       /* PSRPC_CALL_* */
    int64_t timeout_ms;   /* 0 = the client's timeout */
    const char *const *topics;
    size_t topic_count;
    const psrpc_kv *metadata;
    size_t metadata_count;
    const psrpc_selection_options *selection; /* NULL = defaults of the method's kind */
    /* Absolute deadline, Unix ns (e.g. psrpc_request_expiry_ns of the request
     * being handled, so a nested call never outlives its parent); 0 = none.
     * The call ends by then, and the expiry it sends never exceeds it. */
    int64_t deadline_ns;
} psrpc_call_options;

#define PSRPC_CALL_OPTIONS_INIT \
    { sizeof(psrpc_call_options), 0, 0, NULL, 0, NULL, 0, NULL, 0 }
#define PSRPC_CALL_OPTIONS_SIZE_V1 64

PSRPC_API psrpc_status psrpc_call_options_init(psrpc_call_options *opts, size_t struct_size);
PSRPC_API psrpc_status psrpc_selection_options_init(psrpc_selection_options *opts,
                                                    size_t struct_size);

/**
 * A call's outcome. Unary calls: exactly one invocation, with response (error
 * NULL) or error (response NULL). Multi calls: see psrpc_client_call_multi.
 * server_id names the answering server when known (else NULL). Everything is
 * borrowed for the callback.
 */
typedef void (*psrpc_call_cb)(uint64_t call_id, const psrpc_msg *response, const psrpc_error *error,
                              const char *server_id, void *user_data);

/**
 * Creates a client of service (the wire service name, e.g. "MyService") on
 * bus. The client's reply subscriptions are set up in the background; calls
 * made before they are confirmed wait for them (within their deadline).
 */
/* Names: service, method and server ids must match [A-Za-z_][A-Za-z0-9_]*,
 * client ids [A-Za-z0-9_.-]+ (they go into NATS subjects unescaped);
 * anything else is PSRPC_INVALID_ARGUMENT. Topics may be any UTF-8. */
PSRPC_API psrpc_status psrpc_client_create(psrpc_client **out, psrpc_bus *bus, const char *service,
                                           const psrpc_client_options *opts);

/** The client id used on the wire; valid for the client's lifetime. */
PSRPC_API const char *psrpc_client_id(const psrpc_client *client);

/**
 * Sends a unary request (QUEUE or AFFINITY routing) and reports the outcome to
 * cb exactly once, on the loop thread. call_id_out (may be NULL) receives an
 * id for psrpc_client_cancel. data is copied.
 */
PSRPC_API psrpc_status psrpc_client_call(uint64_t *call_id_out, psrpc_client *client,
                                         const psrpc_method *method, const void *data, size_t len,
                                         const psrpc_call_options *opts, psrpc_call_cb cb,
                                         void *user_data);

/**
 * Sends a multi request (MULTI routing). on_result runs once per response or
 * error received, as it arrives; then on_done runs exactly once, with error
 * NULL when the timeout ended the collection normally, or the cause
 * (canceled, closed, a publish failure). Nothing runs after on_done.
 */
PSRPC_API psrpc_status psrpc_client_call_multi(uint64_t *call_id_out, psrpc_client *client,
                                               const psrpc_method *method, const void *data,
                                               size_t len, const psrpc_call_options *opts,
                                               psrpc_call_cb on_result, psrpc_call_cb on_done,
                                               void *user_data);

/**
 * Cancels a call. Asynchronous: if the call is still outstanding when the loop
 * thread gets to it, it completes with PSRPC_CANCELED "request canceled"
 * (a multi call's on_done gets the error). Unknown or finished ids are
 * ignored.
 */
PSRPC_API psrpc_status psrpc_client_cancel(psrpc_client *client, uint64_t call_id);

/**
 * Blocking unary call for plain C programs. On success *out is a message the
 * caller releases. On failure the status is the error's and
 * psrpc_last_error() holds its message. Fails at once with
 * PSRPC_WOULD_DEADLOCK on a loop thread.
 */
PSRPC_API psrpc_status psrpc_client_call_sync(psrpc_msg **out, psrpc_client *client,
                                              const psrpc_method *method, const void *data,
                                              size_t len, const psrpc_call_options *opts);

/**
 * psrpc_client_call_sync that also returns the error object. On PSRPC_OK:
 * *out is the response (release with psrpc_msg_release) and *error_out is
 * NULL. On failure: *out is NULL and, when error_out is not NULL, *error_out
 * is an owned psrpc_error to free with psrpc_error_free: the code string
 * exactly as received, the message and the details of a server's error;
 * failures of our own (timeout, no servers, cancel, a refused argument)
 * carry their status's wire code, or "internal" for local-only statuses
 * (PSRPC_WOULD_DEADLOCK, PSRPC_NOT_SUPPORTED). The return value is the
 * error's status, and psrpc_last_error() holds its message. *error_out is
 * NULL after a failure only if memory ran out. out NULL:
 * PSRPC_INVALID_ARGUMENT (nothing is sent).
 */
PSRPC_API psrpc_status psrpc_client_call_sync_ex(psrpc_msg **out, psrpc_error **error_out,
                                                 psrpc_client *client, const psrpc_method *method,
                                                 const void *data, size_t len,
                                                 const psrpc_call_options *opts);

typedef struct psrpc_sub psrpc_sub;

/** A subscription message; msg is borrowed for the callback. */
typedef void (*psrpc_message_cb)(psrpc_sub *sub, const psrpc_msg *msg, void *user_data);

/**
 * Subscribes to a subscription method (PSRPC_METHOD_SUBSCRIPTION). MULTI
 * routing: every subscriber gets every message; other routings: each message
 * reaches one subscriber. on_ready (may be NULL) runs once when the broker
 * confirmed the subscription (error NULL) or it failed. release(user_data) runs
 * once after the last on_message, when the subscription is closed.
 */
PSRPC_API psrpc_status psrpc_client_subscribe(psrpc_sub **out, psrpc_client *client,
                                              const psrpc_method *method, const char *const *topics,
                                              size_t topic_count, psrpc_message_cb on_message,
                                              psrpc_done_cb on_ready, void *user_data,
                                              psrpc_release_cb release);

/** Blocks until the subscription is confirmed; PSRPC_DEADLINE_EXCEEDED after timeout_ms. */
PSRPC_API psrpc_status psrpc_sub_wait_ready(psrpc_sub *sub, int64_t timeout_ms);
/** Stops delivery. Idempotent; safe inside on_message. */
PSRPC_API psrpc_status psrpc_sub_close(psrpc_sub *sub, psrpc_closed_cb closed_cb, void *user_data);
/** Closes if needed and drops the caller's reference. NULL is a no-op. */
PSRPC_API void psrpc_sub_free(psrpc_sub *sub);

/**
 * Closes the client: its subscriptions close and every outstanding call
 * completes with PSRPC_CANCELED "client is closed". Idempotent.
 */
PSRPC_API psrpc_status psrpc_client_close(psrpc_client *client, psrpc_closed_cb closed_cb,
                                          void *user_data);
PSRPC_API void psrpc_client_free(psrpc_client *client);

/* ------------------------------------------------------------------------ */
/* Server                                                                    */
/* ------------------------------------------------------------------------ */

typedef struct psrpc_server psrpc_server;
typedef struct psrpc_request psrpc_request;

/* Server flags. */
/* Answer queue requests that allow it (every v0.8 client's do) with an
 * announcement instead of a claim: the handler runs at once, saving the claim
 * round trip (livekit/psrpc's WithServerSkipClaim). */
#define PSRPC_SERVER_SKIP_CLAIM 0x1u

typedef struct psrpc_server_options {
    uint32_t struct_size;  /* sizeof(psrpc_server_options) */
    uint32_t flags;        /* PSRPC_SERVER_* */
    int64_t timeout_ms;    /* server stream timeout; 0 = 3000 */
    const char *server_id; /* NULL or "" = "SRV_" + 12 random alphanumerics; any UTF-8
                              string (as Go: it travels in messages, not channel names) */
} psrpc_server_options;

#define PSRPC_SERVER_OPTIONS_INIT \
    { sizeof(psrpc_server_options), 0, 0, NULL }
#define PSRPC_SERVER_OPTIONS_SIZE_V1 24

PSRPC_API psrpc_status psrpc_server_options_init(psrpc_server_options *opts, size_t struct_size);

PSRPC_API psrpc_status psrpc_server_create(psrpc_server **out, psrpc_bus *bus, const char *service,
                                           const psrpc_server_options *opts);

/** The server id used on the wire; valid for the server's lifetime. */
PSRPC_API const char *psrpc_server_id(const psrpc_server *server);

/** A request to handle. Answer it exactly once (respond/fail/abandon), from any thread. */
typedef void (*psrpc_handler_cb)(psrpc_request *request, void *user_data);

/**
 * An affinity question for a claim method. Answer exactly once with
 * psrpc_request_claim(request, affinity), from any thread; a negative
 * affinity (or psrpc_request_abandon) declines (no claim is sent). If this server is then chosen,
 * the same request is handed to the handler.
 */
typedef void (*psrpc_affinity_cb)(psrpc_request *request, void *user_data);

/**
 * Registers a handler for method under topics (topic_count 0 for none).
 * affinity may be NULL (every claim says 1.0); it must be NULL for QUEUE
 * methods (PSRPC_INVALID_ARGUMENT, as in livekit/psrpc v0.8: the queue already
 * chose the server). on_ready (may be NULL) runs once
 * when the broker confirmed the subscriptions, or registration failed.
 * release(user_data) runs once after the handler and affinity callbacks can
 * no longer be called (deregistration, server close). Registering the same
 * method and topics twice fails with PSRPC_ALREADY_EXISTS.
 */
PSRPC_API psrpc_status psrpc_server_register(psrpc_server *server, const psrpc_method *method,
                                             const char *const *topics, size_t topic_count,
                                             psrpc_handler_cb handler, psrpc_affinity_cb affinity,
                                             psrpc_done_cb on_ready, void *user_data,
                                             psrpc_release_cb release);

/**
 * Stops serving method under topics. Requests already handed to the handler
 * can still be answered. PSRPC_NOT_FOUND (synchronously) if it was never
 * registered.
 */
PSRPC_API psrpc_status psrpc_server_deregister(psrpc_server *server, const char *method,
                                               const char *const *topics, size_t topic_count);

/** Blocks until every registration made so far is confirmed (or failed). */
PSRPC_API psrpc_status psrpc_server_wait_ready(psrpc_server *server, int64_t timeout_ms);

/**
 * Publishes data on a subscription method (PSRPC_METHOD_SUBSCRIPTION, with
 * output_type set) under topics. Fire and forget, as in Go.
 */
PSRPC_API psrpc_status psrpc_server_publish(psrpc_server *server, const psrpc_method *method,
                                            const char *const *topics, size_t topic_count,
                                            const void *data, size_t len);

/* Server close flags. */
#define PSRPC_CLOSE_FORCE 0x1u /* do not wait for in-flight requests */

/**
 * Closes the server: stops receiving, then (unless PSRPC_CLOSE_FORCE) waits
 * until every request handed to a handler was answered or expired, then
 * releases every handler's user data and runs closed_cb. Answers given after
 * a forced close are discarded (respond/fail return PSRPC_CANCELED).
 * Idempotent; a later forced close hurries an ongoing graceful one.
 */
PSRPC_API psrpc_status psrpc_server_close(psrpc_server *server, uint32_t flags,
                                          psrpc_closed_cb closed_cb, void *user_data);
PSRPC_API void psrpc_server_free(psrpc_server *server);

/* Request accessors: valid until the request is consumed. */
PSRPC_API const psrpc_msg *psrpc_request_payload(const psrpc_request *request);
PSRPC_API const char *psrpc_request_id(const psrpc_request *request);
/** The caller's client id (the incoming header's remote id). */
PSRPC_API const char *psrpc_request_client_id(const psrpc_request *request);
PSRPC_API const char *psrpc_request_method(const psrpc_request *request);
PSRPC_API size_t psrpc_request_topic_count(const psrpc_request *request);
PSRPC_API const char *psrpc_request_topic(const psrpc_request *request, size_t index);
PSRPC_API size_t psrpc_request_metadata_count(const psrpc_request *request);
/** The index-th metadata pair; PSRPC_OUT_OF_RANGE past the end. */
PSRPC_API psrpc_status psrpc_request_metadata_at(const psrpc_request *request, size_t index,
                                                 const char **key, const char **value);
/** The value for key, or NULL; of duplicate keys, the last (as Go's map). */
PSRPC_API const char *psrpc_request_metadata_get(const psrpc_request *request, const char *key);
/** Unix time in nanoseconds when the caller sent the request. */
PSRPC_API int64_t psrpc_request_sent_at_ns(const psrpc_request *request);
/** Unix time in nanoseconds of the request's deadline (its expiry). */
PSRPC_API int64_t psrpc_request_expiry_ns(const psrpc_request *request);
/** Milliseconds left until the deadline (negative once past). */
PSRPC_API int64_t psrpc_request_remaining_ms(const psrpc_request *request);

/*
 * Requests are always consumed. psrpc_request_respond, _fail, _fail_details,
 * _claim and _abandon consume a non-NULL request WHATEVER THEY RETURN; the
 * handle must not be used after any of them. When an argument is refused
 * (or the call does not fit the request's stage: respond/fail in the
 * affinity stage, claim in the handler stage) the request is still
 * consumed: in the handler stage it is failed with PSRPC_INTERNAL and a
 * message saying what was wrong (the caller sees that), in the affinity
 * stage it is declined; the call returns PSRPC_INVALID_ARGUMENT. A request
 * already consumed is recognised without touching freed memory (the library
 * keeps a set of live requests): the call does nothing and returns
 * PSRPC_INVALID_ARGUMENT (abandon: no-op). As a freed request's address may
 * later be reused by a new request, call them at most once per request.
 */

/** Answers with a serialized response. Consumes the request. */
PSRPC_API psrpc_status psrpc_request_respond(psrpc_request *request, const void *data, size_t len);
/**
 * Fails the request with a status and message (message NULL or "" becomes the
 * status description, since an empty error reads as success on the wire).
 * Consumes the request.
 */
PSRPC_API psrpc_status psrpc_request_fail(psrpc_request *request, int status, const char *message);
/**
 * Fails the request with any code string (carried unchanged; "" means
 * "unknown"; NULL is refused), a message and details (google.protobuf.Any
 * values). Consumes the request (also when it refuses an argument: then
 * the request fails with PSRPC_INTERNAL saying why).
 */
PSRPC_API psrpc_status psrpc_request_fail_details(psrpc_request *request, const char *code,
                                                  const char *message,
                                                  const psrpc_error_detail *details,
                                                  size_t details_count);
/**
 * Answers an affinity question (see psrpc_affinity_cb). Consumes this stage of
 * the request: if the server is chosen, the handler receives it again.
 */
PSRPC_API psrpc_status psrpc_request_claim(psrpc_request *request, float affinity);

/**
 * Gives up a request, in any stage, from any thread (a binding's finalizer
 * or Drop). Handler stage: fails it with status and message (status 0,
 * positive or not a psrpc status: PSRPC_INTERNAL; message NULL, "" or not
 * UTF-8: the status description). Affinity stage: declines (no claim for
 * this server; another server may answer). Already consumed or NULL: no-op.
 * Always consumes.
 */
PSRPC_API void psrpc_request_abandon(psrpc_request *request, int status, const char *message);

/* ------------------------------------------------------------------------ */
/* Bidirectional streams (methods with PSRPC_METHOD_STREAM)                  */
/* ------------------------------------------------------------------------ */

typedef struct psrpc_stream psrpc_stream;

/**
 * A message received on a stream; msg is borrowed for the callback. Return 0
 * to accept it (the peer's send completes); return non-zero when you cannot
 * take it now: it is not acknowledged, the peer's send fails with
 * deadline_exceeded and the stream stays open (livekit/psrpc's slow consumer;
 * counted as dropped_slow_consumer). To decide later (on another thread),
 * call psrpc_stream_defer inside the callback and psrpc_stream_ack after.
 */
typedef int (*psrpc_stream_message_cb)(psrpc_stream *stream, const psrpc_msg *msg, void *user_data);

/**
 * The stream ended; cause is never NULL: a clean close reads as PSRPC_CANCELED
 * "stream closed", a server going away as PSRPC_UNAVAILABLE "EOF". Runs exactly
 * once per stream whose open returned PSRPC_OK (also when the open failed),
 * after which no message callback runs; then release(user_data) runs.
 */
typedef void (*psrpc_stream_close_cb)(psrpc_stream *stream, const psrpc_error *cause,
                                      void *user_data);

/**
 * Opens a stream to one server of a stream method (topics, metadata, timeout
 * and selection from opts, as for calls; the timeout is also the stream's
 * message timeout). on_message and on_close are required. on_open (may be NULL) runs once: error
 * NULL when a server acknowledged the open, else why it failed (then on_close follows with the same
 * cause). Sends made before the open completes wait for it. *out is the caller's reference,
 * released with psrpc_stream_free.
 */
PSRPC_API psrpc_status psrpc_client_open_stream(
    psrpc_stream **out, psrpc_client *client, const psrpc_method *method,
    const psrpc_call_options *opts, psrpc_done_cb on_open, psrpc_stream_message_cb on_message,
    psrpc_stream_close_cb on_close, void *user_data, psrpc_release_cb release);

/**
 * A new stream accepted by a server (the open was claimed and acknowledged).
 * The server's reference is passed to the handler: keep it and release it with
 * psrpc_stream_free. Set the stream's callbacks with
 * psrpc_stream_set_callbacks; messages that arrive before are held (up to 100,
 * then they are not acknowledged).
 */
typedef void (*psrpc_stream_handler_cb)(psrpc_stream *stream, void *user_data);

/**
 * Registers a stream method (PSRPC_METHOD_STREAM) under topics. affinity (may
 * be NULL: 1.0) is asked per open with a request whose payload is empty and
 * whose metadata and client id are the opener's; answer with
 * psrpc_request_claim. Deregistering or closing the server closes its open
 * streams with PSRPC_UNAVAILABLE "EOF".
 */
PSRPC_API psrpc_status psrpc_server_register_stream(
    psrpc_server *server, const psrpc_method *method, const char *const *topics, size_t topic_count,
    psrpc_stream_handler_cb handler, psrpc_affinity_cb affinity, psrpc_done_cb on_ready,
    void *user_data, psrpc_release_cb release);

/**
 * Sets a server-side stream's callbacks (once; PSRPC_ALREADY_EXISTS after).
 * Any thread. release(user_data) runs once after on_close. If the stream
 * already ended (the peer closed it, the server closed) before this call,
 * on_close runs with that cause, then release, on the loop thread (or on
 * this thread when the bus is already closed), exactly once.
 */
PSRPC_API psrpc_status psrpc_stream_set_callbacks(psrpc_stream *stream,
                                                  psrpc_stream_message_cb on_message,
                                                  psrpc_stream_close_cb on_close, void *user_data,
                                                  psrpc_release_cb release);

/**
 * Sends a message; on_done (may be NULL) runs once: error NULL when the peer
 * acknowledged it, PSRPC_DEADLINE_EXCEEDED "request timed out" after
 * timeout_ms (0 = the stream's timeout; the stream stays open), or the close
 * cause if the stream closes first. data is copied. Several sends may be in
 * flight at once, from any threads.
 */
PSRPC_API psrpc_status psrpc_stream_send(psrpc_stream *stream, const void *data, size_t len,
                                         int64_t timeout_ms, psrpc_done_cb on_done,
                                         void *user_data);

/**
 * Closes the stream: status 0 closes cleanly (the peer sees PSRPC_CANCELED
 * "stream closed"), a negative status with message closes with that error.
 * The local on_close runs with the same cause. Idempotent: once closed (by
 * either side) nothing more is sent.
 */
PSRPC_API psrpc_status psrpc_stream_close(psrpc_stream *stream, int status, const char *message);

/**
 * Deferred acks: inside a stream's on_message callback (client or server
 * side), for the message being delivered, takes a token; the callback's
 * return value is then ignored and the message is acknowledged (accept != 0:
 * the peer's send completes) or refused (accept == 0: not acknowledged, the
 * peer's send fails as for a slow consumer, counted as
 * dropped_slow_consumer) when psrpc_stream_ack is called, from any thread,
 * at any later time, while the caller still holds its stream reference.
 * Outside on_message (or for another stream): PSRPC_FAILED_PRECONDITION.
 * Deferring twice in one callback returns the same token. Messages keep
 * being delivered meanwhile; acks are sent in the order of the
 * psrpc_stream_ack calls. A deferred message not acked before the peer's
 * send timeout makes the peer's send fail with deadline_exceeded (the
 * stream stays open; a later accept sends nothing). Tokens live until they
 * are acked or the stream ends.
 */
PSRPC_API psrpc_status psrpc_stream_defer(psrpc_stream *stream, uint64_t *token_out);
/**
 * Acknowledges (accept != 0) or refuses (accept == 0) a deferred message. A
 * token is valid once: acking it twice, or after the stream closed, returns
 * PSRPC_NOT_FOUND and sends nothing.
 */
PSRPC_API psrpc_status psrpc_stream_ack(psrpc_stream *stream, uint64_t token, int accept);

/**
 * psrpc_stream_close with any wire code string: code NULL or "" closes
 * cleanly (message ignored; the peer sees PSRPC_CANCELED "stream closed");
 * otherwise code is carried unchanged (the peer's cause has that code and
 * its status, PSRPC_UNKNOWN for codes it does not know) with message (NULL
 * -> ""). code and message must be valid UTF-8. Idempotent as
 * psrpc_stream_close.
 */
PSRPC_API psrpc_status psrpc_stream_close_code(psrpc_stream *stream, const char *code,
                                               const char *message);

/** Closes cleanly if still open and drops the caller's reference. NULL is a no-op. */
PSRPC_API void psrpc_stream_free(psrpc_stream *stream);

/* Stream accessors: valid while the caller holds its reference. */
PSRPC_API const char *psrpc_stream_id(const psrpc_stream *stream);
/** The opener's client id (server side) or the client's own id (client side). */
PSRPC_API const char *psrpc_stream_node_id(const psrpc_stream *stream);
PSRPC_API const char *psrpc_stream_method(const psrpc_stream *stream);
/** Server side: the opener's metadata (client side: what it sent). */
PSRPC_API size_t psrpc_stream_metadata_count(const psrpc_stream *stream);
PSRPC_API psrpc_status psrpc_stream_metadata_at(const psrpc_stream *stream, size_t index,
                                                const char **key, const char **value);
/* The value for key, or NULL; of duplicate keys, the last (as Go's map). */
PSRPC_API const char *psrpc_stream_metadata_get(const psrpc_stream *stream, const char *key);

/* ------------------------------------------------------------------------ */
/* Hooks (interceptors), retries, logs, metrics, trace context (issue 16)    */
/* ------------------------------------------------------------------------ */

/*
 * Hooks see every call a client makes and every request a server handles.
 * They are added to a client or server (any thread, any time; they apply to
 * calls made / requests received after psrpc_*_add_hooks returned) and run
 * in registration order. A client or server without hooks pays one atomic
 * load per call (an acquire load: a plain load on x86-64) and nothing else.
 *
 * | hook                        | runs on                                     |
 * |-----------------------------|---------------------------------------------|
 * | client before_send          | the thread calling psrpc_client_call,        |
 * |                             | _call_multi, _open_stream (_sync: the caller)|
 * | client on_outcome           | the loop thread, just before the call's own  |
 * |                             | outcome callback (cb / on_done / on_open)    |
 * | server before_handle        | the loop thread, just before the handler     |
 * |                             | (or the stream handler)                      |
 * | server on_outcome           | unary/multi: the thread that answers         |
 * |                             | (respond/fail/abandon); streams: the loop    |
 * |                             | thread when the stream ends                  |
 *
 * Hooks must not block (before_send blocks the caller; the others stall the
 * bus) and must not call psrpc_*_sync on a loop thread. Everything they get
 * is borrowed for the duration of the hook.
 */

/* Call kinds (psrpc_call_info.kind). */
#define PSRPC_CALL_KIND_UNARY 1u  /* psrpc_client_call (QUEUE / AFFINITY) */
#define PSRPC_CALL_KIND_MULTI 2u  /* psrpc_client_call_multi (MULTI) */
#define PSRPC_CALL_KIND_STREAM 3u /* psrpc_client_open_stream / a stream a server accepts */

/* Which side a hook or metric is on. */
#define PSRPC_ROLE_CLIENT 1u
#define PSRPC_ROLE_SERVER 2u

/** What a hook knows about a call or a handled request. Borrowed; may grow at the end. */
typedef struct psrpc_call_info {
    uint32_t struct_size; /* sizeof as the library compiled it */
    uint32_t kind;        /* PSRPC_CALL_KIND_* */
    uint32_t role;        /* PSRPC_ROLE_* */
    uint32_t reserved;
    const char *service;
    const char *method;
    const char *const *topics;
    size_t topic_count;
    uint64_t call_id;       /* client: the call id (as returned); server: 0 */
    const char *client_id;  /* client: its own id; server: the caller's id */
    const char *server_id;  /* server: its own id; client: NULL */
    const char *request_id; /* server: the request (stream open) id; client: NULL */
    int64_t expiry_ns;      /* the deadline (Unix ns) the request carries / will carry; 0 if
                               not yet known (client before_send with no deadline_ns) */
} psrpc_call_info;

/** A call's (or a handled request's) outcome. Borrowed; may grow at the end. */
typedef struct psrpc_call_outcome {
    uint32_t struct_size;
    uint32_t attempts;        /* client: attempts made (1 without retries; 0 when it
                                 failed before sending); server: 1 */
    int64_t duration_ns;      /* client: from the call to its outcome; server: from the
                                 request's arrival to its answer (streams: to their end) */
    const char *server_id;    /* the answering server when known, else NULL */
    const psrpc_error *error; /* NULL on success (a clean stream close is success) */
    uint64_t responses;       /* multi (client): results delivered; else 0 */
    uint64_t errors;          /* multi (client): error results delivered; else 0 */
} psrpc_call_outcome;

/** What a before-hook may do with the call; valid only during the hook. */
typedef struct psrpc_hook_call psrpc_hook_call;

/**
 * Client hook run before a call is sent (once per call, not per retry
 * attempt). It may read and change the metadata the call will send
 * (psrpc_hook_call_metadata_*). Return 0 to go on; a negative psrpc status
 * (or the value of psrpc_hook_call_fail) fails the call: no later hook runs,
 * nothing is sent, and the call's outcome callback still runs exactly once
 * (on the loop thread) with that error, as do the on_outcome hooks (with
 * attempts 0). The call function itself returns PSRPC_OK.
 */
typedef int (*psrpc_client_before_cb)(const psrpc_call_info *info, psrpc_hook_call *call,
                                      void *user_data);
/** Client hook run once per call with its final outcome (after all retries). */
typedef void (*psrpc_client_outcome_cb)(const psrpc_call_info *info,
                                        const psrpc_call_outcome *outcome, void *user_data);

typedef struct psrpc_client_hooks {
    uint32_t struct_size;               /* sizeof(psrpc_client_hooks) */
    uint32_t reserved;                  /* 0 */
    psrpc_client_before_cb before_send; /* may be NULL */
    psrpc_client_outcome_cb on_outcome; /* may be NULL */
    void *user_data;
    psrpc_release_cb release; /* may be NULL; runs once when the client is freed, after
                                 the last hook invocation */
} psrpc_client_hooks;

#define PSRPC_CLIENT_HOOKS_INIT \
    { sizeof(psrpc_client_hooks), 0, NULL, NULL, NULL, NULL }
#define PSRPC_CLIENT_HOOKS_SIZE_V1 40

PSRPC_API psrpc_status psrpc_client_hooks_init(psrpc_client_hooks *hooks, size_t struct_size);
/** Appends hooks to the client's chain (any thread). Both callbacks NULL: invalid. */
PSRPC_API psrpc_status psrpc_client_add_hooks(psrpc_client *client,
                                              const psrpc_client_hooks *hooks);

/**
 * Server hook run before the handler of each request (in its handler stage:
 * after the claim, if any) and before the stream handler of each accepted
 * stream (after the open was acknowledged: a rejected stream open is then
 * closed with the error). It may read the request's metadata
 * (psrpc_hook_call_metadata_count/_at/_get; psrpc_hook_call_metadata_set is
 * refused on the server side) and reject: return a negative status (or
 * psrpc_hook_call_fail's value): the caller gets that error, the handler
 * never sees the request, the on_outcome hooks run with it.
 */
typedef int (*psrpc_server_before_cb)(const psrpc_call_info *info, psrpc_hook_call *call,
                                      void *user_data);
/** Server hook run once per handled request / accepted stream with its outcome. */
typedef void (*psrpc_server_outcome_cb)(const psrpc_call_info *info,
                                        const psrpc_call_outcome *outcome, void *user_data);

typedef struct psrpc_server_hooks {
    uint32_t struct_size;                 /* sizeof(psrpc_server_hooks) */
    uint32_t reserved;                    /* 0 */
    psrpc_server_before_cb before_handle; /* may be NULL */
    psrpc_server_outcome_cb on_outcome;   /* may be NULL */
    void *user_data;
    psrpc_release_cb release; /* may be NULL; runs once when the server is freed */
} psrpc_server_hooks;

#define PSRPC_SERVER_HOOKS_INIT \
    { sizeof(psrpc_server_hooks), 0, NULL, NULL, NULL, NULL }
#define PSRPC_SERVER_HOOKS_SIZE_V1 40

PSRPC_API psrpc_status psrpc_server_hooks_init(psrpc_server_hooks *hooks, size_t struct_size);
/** Appends hooks to the server's chain (any thread). Both callbacks NULL: invalid. */
PSRPC_API psrpc_status psrpc_server_add_hooks(psrpc_server *server,
                                              const psrpc_server_hooks *hooks);

/* Inside a before-hook. */
PSRPC_API size_t psrpc_hook_call_metadata_count(const psrpc_hook_call *call);
PSRPC_API psrpc_status psrpc_hook_call_metadata_at(const psrpc_hook_call *call, size_t index,
                                                   const char **key, const char **value);
/** The value for key or NULL (the last of duplicates). */
PSRPC_API const char *psrpc_hook_call_metadata_get(const psrpc_hook_call *call, const char *key);
/**
 * Client side only: sets key to value (replacing every existing entry of
 * key, appended at the end otherwise); value NULL removes key. Both copied,
 * valid UTF-8. Server side: PSRPC_FAILED_PRECONDITION.
 */
PSRPC_API psrpc_status psrpc_hook_call_metadata_set(psrpc_hook_call *call, const char *key,
                                                    const char *value);
/**
 * Fails the call (client) or rejects the request (server) with status
 * (negative psrpc status; other values -> PSRPC_INTERNAL) and message (NULL
 * or "" -> the status description). Returns the status, for
 * `return psrpc_hook_call_fail(call, PSRPC_PERMISSION_DENIED, "no");`.
 */
PSRPC_API int psrpc_hook_call_fail(psrpc_hook_call *call, int status, const char *message);

/*
 * Retries, with livekit/psrpc v0.8.2 middleware.RetryOptions semantics
 * (pkg/middleware/retry.go), for unary calls (WithRPCRetries) and, beyond Go,
 * stream opens. Attempt n (1-based) of a call:
 *   - its timeout is timeout_ms + (n-1) * backoff_ms when that is > 0 AND the
 *     caller set no timeout_ms in its psrpc_call_options (a caller's timeout
 *     wins and applies to every attempt); else the client's timeout;
 *   - the caller's deadline_ns bounds every attempt and the whole call;
 *   - after a failed attempt: no retry (the attempt's error is the outcome) if
 *     the error is not recoverable or n == max_attempts; else, if the
 *     caller's deadline passed or the call was canceled, the outcome is
 *     PSRPC_CANCELED "request canceled" (as Go's ErrRequestCanceled);
 *     else the next attempt starts at once (Go waits 0 between attempts:
 *     "backoff" grows the attempt timeout, it is not a sleep), or after
 *     wait_ms when a retry_params callback asks for it.
 *   - recoverable (default, Go's isTimeout): PSRPC_DEADLINE_EXCEEDED and
 *     PSRPC_UNAVAILABLE (e.g. "no response from servers").
 *   - max_attempts 0 means no limit, as Go's zero value: only the deadline,
 *     a cancel or a non-recoverable error ends the call.
 * Each attempt is a new request (new request id, same payload and the
 * metadata the before_send hooks produced). The before_send hooks run once
 * per call; on_outcome once, with outcome->attempts. Multi calls are never
 * retried (as Go).
 */
typedef struct psrpc_retry_options {
    uint32_t struct_size;  /* sizeof(psrpc_retry_options) */
    uint32_t max_attempts; /* 0 = no limit (Go's zero value) */
    int64_t timeout_ms;    /* first attempt's timeout; 0 = see above */
    int64_t backoff_ms;    /* added to the attempt timeout after each failed attempt */
    /* NULL = PSRPC_DEADLINE_EXCEEDED or PSRPC_UNAVAILABLE. Loop thread. */
    int (*is_recoverable)(const psrpc_error *error, void *user_data);
    /* Go's GetRetryParameters (overrides max_attempts, timeout_ms, backoff_ms
     * and is_recoverable): return non-zero to retry after failed attempt
     * `attempt`, with *timeout_ms (0 = the client's timeout) for the next one,
     * after *wait_ms. NULL = the rule above. Loop thread. */
    int (*retry_params)(const psrpc_error *error, uint32_t attempt, int64_t *timeout_ms,
                        int64_t *wait_ms, void *user_data);
    void *user_data;
} psrpc_retry_options;

#define PSRPC_RETRY_OPTIONS_INIT \
    { sizeof(psrpc_retry_options), 0, 0, 0, NULL, NULL, NULL }
#define PSRPC_RETRY_OPTIONS_SIZE_V1 48

/* psrpc_client_set_retries kinds. */
#define PSRPC_RETRY_UNARY 0x1u
#define PSRPC_RETRY_STREAM_OPEN 0x2u

PSRPC_API psrpc_status psrpc_retry_options_init(psrpc_retry_options *opts, size_t struct_size);
/**
 * Sets (opts non-NULL) or clears (opts NULL) the retry policy of the calls of
 * the given kinds (PSRPC_RETRY_* bits) made after it returns. Any thread.
 * The callbacks' user_data must stay valid until the client is freed.
 */
PSRPC_API psrpc_status psrpc_client_set_retries(psrpc_client *client, uint32_t kinds,
                                                const psrpc_retry_options *opts);

/*
 * Logs. Off by default. One process-wide callback (psrpc_set_log_callback);
 * it runs on the thread where the event happens (mostly a loop thread), never
 * while the library holds a lock, and must not block or call back into the
 * library except psrpc_msg_* and accessors. Events, each logged once:
 *   - PSRPC_LOG_INFO  "bus": connected, reconnected (after a loss).
 *   - PSRPC_LOG_WARN  "bus": connection lost (with why), reconnect failed
 *                     (once per outage, then at DEBUG).
 *   - PSRPC_LOG_ERROR "bus": authentication / permission refused by the broker.
 *   - PSRPC_LOG_WARN  "drop": messages dropped, by reason (malformed, oversize,
 *                     expired, unknown, slow_consumer, held_limit): the first
 *                     drop of a reason on a bus, then at most one summary
 *                     line per reason per 10 s ("N more since"); every single
 *                     drop at DEBUG.
 * Never one line per message at INFO or above.
 */
#define PSRPC_LOG_ERROR 1
#define PSRPC_LOG_WARN 2
#define PSRPC_LOG_INFO 3
#define PSRPC_LOG_DEBUG 4

typedef void (*psrpc_log_cb)(int level, const char *component, const char *message,
                             void *user_data);
/**
 * Installs (cb non-NULL) or removes (cb NULL) the log callback; events above
 * max_level (PSRPC_LOG_*) are not formatted at all. Any thread. The previous
 * callback may still be running on another thread when this returns.
 */
PSRPC_API psrpc_status psrpc_set_log_callback(psrpc_log_cb cb, int max_level, void *user_data);

/*
 * Metrics: per (role, service, method) counters and latency histograms, kept
 * by a psrpc_metrics object attached to clients and servers (it is a pair of
 * built-in on_outcome hooks). Counting costs one short mutex-held update per
 * outcome; nothing when no metrics object is attached.
 */
typedef struct psrpc_metrics psrpc_metrics;

/** Latency bucket upper bounds (ms), as Prometheus DefBuckets: 5,10,25,50,100,250,500,
 * 1000,2500,5000,10000, then +Inf. */
#define PSRPC_METRICS_BUCKETS 12

typedef struct psrpc_method_metrics {
    uint32_t struct_size; /* the caller's sizeof */
    uint32_t role;        /* PSRPC_ROLE_* */
    uint32_t kind;        /* PSRPC_CALL_KIND_* */
    uint32_t reserved;
    const char *service;
    const char *method;
    uint64_t calls;    /* outcomes counted */
    uint64_t errors;   /* outcomes with an error */
    uint64_t attempts; /* client: attempts (retries included) */
    uint64_t latency_sum_ns;
    uint64_t buckets[PSRPC_METRICS_BUCKETS]; /* NON-cumulative counts per bucket */
    uint64_t error_codes_count;              /* number of distinct error codes below */
} psrpc_method_metrics;

#define PSRPC_METHOD_METRICS_SIZE_V1 168

PSRPC_API psrpc_status psrpc_metrics_new(psrpc_metrics **out);
/** Counts calls of client / requests of server from now on (any thread). */
PSRPC_API psrpc_status psrpc_metrics_attach_client(psrpc_metrics *m, psrpc_client *client);
PSRPC_API psrpc_status psrpc_metrics_attach_server(psrpc_metrics *m, psrpc_server *server);
/** The bucket bounds in ms (index < PSRPC_METRICS_BUCKETS - 1), else -1 (+Inf). */
PSRPC_API double psrpc_metrics_bucket_bound_ms(size_t index);
/** A row of psrpc_metrics_read (borrowed for the callback). */
typedef void (*psrpc_metrics_row_cb)(const psrpc_method_metrics *row, void *user_data);
/** One error code's count of a row (borrowed for the callback). */
typedef void (*psrpc_metrics_code_cb)(const psrpc_method_metrics *row, const char *code,
                                      uint64_t count, void *user_data);
/**
 * Visits a consistent-enough snapshot of every (role, service, method) row:
 * cb(row, user_data) per row, on the calling thread; the row is borrowed for
 * the callback. Also per error code: code_cb(row, code, count, user_data)
 * (may be NULL). Any thread.
 */
PSRPC_API psrpc_status psrpc_metrics_read(psrpc_metrics *m, psrpc_metrics_row_cb cb,
                                          psrpc_metrics_code_cb code_cb, void *user_data);
/** Frees m; the clients and servers it is attached to keep a reference until freed. */
PSRPC_API void psrpc_metrics_free(psrpc_metrics *m);

/*
 * W3C trace context (https://www.w3.org/TR/trace-context/), carried in the
 * request metadata under "traceparent" and "tracestate" exactly as
 * livekit/psrpc's otelpsrpc writes them (its TextMapPropagator, default
 * propagation.TraceContext{}): traceparent "00-<32 hex trace id>-<16 hex
 * span id>-<2 hex flags>", tracestate omitted when empty.
 */
#define PSRPC_TRACEPARENT_SIZE 56 /* 55 characters + NUL */

/**
 * A child of parent (a traceparent string): same version, trace id and flags,
 * a new random non-zero span id, written to out (PSRPC_TRACEPARENT_SIZE
 * bytes). parent invalid (per W3C: version ff, all-zero ids, bad hex or
 * length) or NULL: PSRPC_INVALID_ARGUMENT, out = "". Any thread.
 */
PSRPC_API psrpc_status psrpc_trace_child(char *out, const char *parent);
/**
 * For a handler forwarding its request's trace context into the calls it
 * makes: fills kv (room for 2) with "traceparent" = a child of traceparent
 * (written into buf, PSRPC_TRACEPARENT_SIZE bytes) and, when tracestate is
 * non-NULL and non-empty, "tracestate" unchanged. Returns the number of
 * entries written: 0 when traceparent is NULL or invalid. Any thread.
 */
PSRPC_API size_t psrpc_trace_forward(psrpc_kv *kv, char *buf, const char *traceparent,
                                     const char *tracestate);

/*
 * The ABI gaps noted when the core landed.
 *  - psrpc_client_call_sync losing the code string and details: closed by
 *    psrpc_client_call_sync_ex (above).
 *  - custom close codes on streams: psrpc_stream_close_code (above). The
 *    wire's StreamClose has no details field, so none can be sent.
 */

/**
 * Answers a request with an error in ANY stage. Handler stage: as
 * psrpc_request_fail_details. Affinity stage: the caller gets the error at
 * once, without this server claiming the request (as Go answers a request it
 * cannot decode); the caller's call fails with it, unless another server's
 * claim was already chosen. Consumes the request; arguments as
 * psrpc_request_fail_details (code NULL refused, "" = "unknown").
 */
PSRPC_API psrpc_status psrpc_request_reject(psrpc_request *request, const char *code,
                                            const char *message, const psrpc_error_detail *details,
                                            size_t details_count);

/**
 * The deadline a handler works under, uniformly for every kind: a request
 * (either stage): its expiry (= psrpc_request_expiry_ns); a server-side
 * stream: the expiry its open request carried (the opener's deadline for the
 * open; Go gives stream handlers no deadline, the stream lives on); a
 * client-side stream: 0. Unix ns; 0 = none. Pass it as
 * psrpc_call_options.deadline_ns for nested calls.
 */
PSRPC_API int64_t psrpc_stream_expiry_ns(const psrpc_stream *stream);

#ifdef __cplusplus
}
#endif

#endif /* PSRPC_H */
