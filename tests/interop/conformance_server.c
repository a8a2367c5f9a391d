/* conformance-server: the C server of the conformance service
 * (shared/docs/conformance.md, tests/interop/conformance.proto), public
 * libpsrpc API only; messages are protobuf-c structs.
 *
 *   conformance-server [--bus URL] [--server-id ID] [--affinity F]
 *                      [--topic T]... [--methods LIST]
 *   test hooks:        [--affinity-delay-ms N] [--skip-claim]
 *                      [--max-message-size N] [--compress-threshold N]
 *   tracing:           [--trace-next TOPIC] (issue 16, /work/coord/hooks-abi.md 5):
 *                      an Echo carrying a W3C traceparent first calls
 *                      RegionEcho under TOPIC with a child trace context
 *                      (same trace id, new span id, tracestate copied) within
 *                      the request's deadline, then answers Echo with the
 *                      extra metadata trace.sent and trace.next_server
 *
 * Prints "ready" once every registration is confirmed by the broker, serves
 * until SIGTERM or SIGINT, then closes gracefully (in-flight requests finish)
 * and exits 0. Events a test may want to see are printed as JSON lines:
 *   {"event":"chat-end","code":"...","message":"...","max_seq":"N"}
 *       a Chat stream ended (max_seq: the highest seq received on it)
 *
 * Behaviour beyond conformance.md (the same in the Go server,
 * tests/interop/go/cmd/conformance-server):
 *   - fail_code "CODE@SERVER_ID" fails only on the server with that id (the
 *     others answer normally): one failing member of a Fanout;
 *   - a failing Echo-like call carries error details: a
 *     google.protobuf.StringValue with the tag if tag is set, then a
 *     google.protobuf.BytesValue with the payload if payload is set;
 *   - --affinity-delay-ms delays every Claim affinity answer (test plan A10);
 *   - --skip-claim answers queue requests with a "handling" claim
 *     (livekit/psrpc's WithServerSkipClaim).
 */
#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "conformance_common.h"

#define PROG "conformance-server"
#define MAX_TOPICS 32

typedef struct srv_state {
    psrpc_server *server;
    psrpc_server *updates;
    const char *server_id;
    float affinity;
    int affinity_delay_ms;
    atomic_int counter;
    atomic_int open_jobs;       /* delayed answers still running */
    const char *trace_next;     /* --trace-next TOPIC: Echo forwards the trace context */
    psrpc_client *trace_client; /* calls RegionEcho under trace_next */
} srv_state;

static srv_state st;
static pthread_mutex_t out_mu = PTHREAD_MUTEX_INITIALIZER;

/* Per registration: which method, under which topic. */
typedef struct reg_ctx {
    const char *method;
    const char *topic; /* NULL without topics */
} reg_ctx;

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static void event_line(const char *event, const char *code, const char *message, uint32_t max_seq) {
    pthread_mutex_lock(&out_mu);
    printf("{\"event\":");
    conf_json_str(stdout, event);
    printf(",\"code\":");
    conf_json_str(stdout, code);
    printf(",\"message\":");
    conf_json_str(stdout, message);
    printf(",\"max_seq\":\"%u\"}\n", max_seq);
    fflush(stdout);
    pthread_mutex_unlock(&out_mu);
}

static void answer_or_log(psrpc_status rc, const char *what) {
    if (rc != PSRPC_OK)
        fprintf(stderr, PROG ": %s: %s\n", what, psrpc_last_error());
}

/* ------------------------------------------------------------------------ */
/* Echo, Claim, Fanout, RegionEcho, RegionFanout                            */
/* ------------------------------------------------------------------------ */

typedef struct echo_job {
    psrpc_request *req;
    Psrpc__Conformance__EchoRequest *in;
    const reg_ctx *reg;
} echo_job;

/* Whether fail_code applies here; *code gets the code part. */
static bool fails_here(const char *fail_code, char *code, size_t cap) {
    if (!fail_code || !*fail_code)
        return false;
    const char *at = strchr(fail_code, '@');
    size_t n = at ? (size_t)(at - fail_code) : strlen(fail_code);
    if (n >= cap)
        n = cap - 1;
    memcpy(code, fail_code, n);
    code[n] = 0;
    return !at || !strcmp(at + 1, st.server_id);
}

static void echo_answer(echo_job *job) {
    Psrpc__Conformance__EchoRequest *in = job->in;
    psrpc_request *req = job->req;
    char code[128];
    if (fails_here(in->fail_code, code, sizeof code)) {
        psrpc_error_detail details[2];
        uint8_t *bufs[2] = {NULL, NULL};
        size_t n = 0;
        if (in->tag && *in->tag) {
            bufs[n] = conf_wrapper(in->tag, strlen(in->tag), &details[n].value_len);
            details[n].type_url = "type.googleapis.com/google.protobuf.StringValue";
            details[n].value = bufs[n];
            n++;
        }
        if (in->payload.len) {
            bufs[n] = conf_wrapper(in->payload.data, in->payload.len, &details[n].value_len);
            details[n].type_url = "type.googleapis.com/google.protobuf.BytesValue";
            details[n].value = bufs[n];
            n++;
        }
        answer_or_log(psrpc_request_fail_details(req, code, in->fail_message, details, n), "fail");
        free(bufs[0]);
        free(bufs[1]);
    } else {
        Psrpc__Conformance__EchoResponse out = PSRPC__CONFORMANCE__ECHO_RESPONSE__INIT;
        out.payload = in->payload;
        out.server_id = (char *)st.server_id;
        out.tag = in->tag;
        out.topic = (char *)(job->reg->topic ? job->reg->topic : "");
        size_t nmd = psrpc_request_metadata_count(req);
        Psrpc__Conformance__EchoResponse__MetadataEntry *entries =
            calloc(nmd ? nmd : 1, sizeof *entries);
        Psrpc__Conformance__EchoResponse__MetadataEntry **ptrs =
            calloc(nmd ? nmd : 1, sizeof *ptrs);
        for (size_t i = 0; i < nmd; i++) {
            const char *k, *v;
            psrpc__conformance__echo_response__metadata_entry__init(&entries[i]);
            psrpc_request_metadata_at(req, i, &k, &v);
            entries[i].key = (char *)k;
            entries[i].value = (char *)v;
            ptrs[i] = &entries[i];
        }
        out.n_metadata = nmd;
        out.metadata = ptrs;
        size_t len = psrpc__conformance__echo_response__get_packed_size(&out);
        uint8_t *buf = malloc(len ? len : 1);
        psrpc__conformance__echo_response__pack(&out, buf);
        answer_or_log(psrpc_request_respond(req, buf, len), "respond");
        free(buf);
        free(entries);
        free(ptrs);
    }
    psrpc__conformance__echo_request__free_unpacked(in, NULL);
    free(job);
}

/* --trace-next: the answer to an Echo whose nested RegionEcho call ended. */
typedef struct trace_job {
    psrpc_request *req;
    Psrpc__Conformance__EchoRequest *in;
    char sent[PSRPC_TRACEPARENT_SIZE];
} trace_job;

static void trace_done(uint64_t id, const psrpc_msg *response, const psrpc_error *error,
                       const char *server_id, void *user_data) {
    (void)id;
    trace_job *j = user_data;
    if (error) {
        answer_or_log(psrpc_request_fail_details(j->req, error->code, error->message, NULL, 0),
                      "fail");
    } else {
        Psrpc__Conformance__EchoResponse out = PSRPC__CONFORMANCE__ECHO_RESPONSE__INIT;
        out.payload = j->in->payload;
        out.server_id = (char *)st.server_id;
        out.tag = j->in->tag;
        out.topic = "";
        (void)response;
        size_t nmd = psrpc_request_metadata_count(j->req);
        Psrpc__Conformance__EchoResponse__MetadataEntry *entries = calloc(nmd + 2, sizeof *entries);
        Psrpc__Conformance__EchoResponse__MetadataEntry **ptrs = calloc(nmd + 2, sizeof *ptrs);
        for (size_t i = 0; i < nmd + 2; i++) {
            const char *k = "trace.sent", *v = j->sent;
            if (i < nmd)
                psrpc_request_metadata_at(j->req, i, &k, &v);
            else if (i == nmd + 1)
                k = "trace.next_server", v = server_id ? server_id : "";
            psrpc__conformance__echo_response__metadata_entry__init(&entries[i]);
            entries[i].key = (char *)k;
            entries[i].value = (char *)v;
            ptrs[i] = &entries[i];
        }
        out.n_metadata = nmd + 2;
        out.metadata = ptrs;
        size_t len = psrpc__conformance__echo_response__get_packed_size(&out);
        uint8_t *buf = malloc(len ? len : 1);
        psrpc__conformance__echo_response__pack(&out, buf);
        answer_or_log(psrpc_request_respond(j->req, buf, len), "respond");
        free(buf);
        free(entries);
        free(ptrs);
    }
    psrpc__conformance__echo_request__free_unpacked(j->in, NULL);
    free(j);
}

/* Echo with a traceparent under --trace-next: calls RegionEcho under that
 * topic with a child of the trace context (psrpc_trace_forward), within the
 * request's deadline; answers when it ends. false: not forwarded. */
static bool trace_forward(psrpc_request *req, Psrpc__Conformance__EchoRequest *in) {
    const char *tp = psrpc_request_metadata_get(req, "traceparent");
    if (!st.trace_next || !tp)
        return false;
    trace_job *j = calloc(1, sizeof *j);
    psrpc_kv kv[2];
    size_t n = psrpc_trace_forward(kv, j->sent, tp, psrpc_request_metadata_get(req, "tracestate"));
    if (!n) {
        free(j);
        return false; /* not a valid traceparent: answered as a plain Echo */
    }
    j->req = req;
    j->in = in;
    fprintf(stderr, PROG ": trace: in=%s out=%s\n", tp, j->sent);
    psrpc_method m = conf_method(CONF_SERVICE, "RegionEcho");
    const char *topics[1] = {st.trace_next};
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.topics = topics;
    o.topic_count = 1;
    o.metadata = kv;
    o.metadata_count = n;
    o.deadline_ns = psrpc_request_expiry_ns(req);
    const psrpc_msg *p = psrpc_request_payload(req);
    if (psrpc_client_call(NULL, st.trace_client, &m, psrpc_msg_data(p), psrpc_msg_size(p), &o,
                          trace_done, j) != PSRPC_OK) {
        answer_or_log(psrpc_request_fail(req, PSRPC_INTERNAL, psrpc_last_error()), "fail");
        psrpc__conformance__echo_request__free_unpacked(in, NULL);
        free(j);
    }
    return true;
}

static void *delayed_echo(void *arg) {
    echo_job *job = arg;
    sleep_ms((int)job->in->delay_ms);
    echo_answer(job);
    atomic_fetch_sub(&st.open_jobs, 1);
    return NULL;
}

static void echo_handler(psrpc_request *req, void *user_data) {
    const psrpc_msg *m = psrpc_request_payload(req);
    Psrpc__Conformance__EchoRequest *in =
        psrpc__conformance__echo_request__unpack(NULL, psrpc_msg_size(m), psrpc_msg_data(m));
    if (!in) {
        answer_or_log(psrpc_request_fail(req, PSRPC_MALFORMED_REQUEST, "bad EchoRequest"), "fail");
        return;
    }
    const reg_ctx *rc = user_data;
    if (!strcmp(rc->method, "Echo") && trace_forward(req, in))
        return;
    echo_job *job = malloc(sizeof *job);
    job->req = req;
    job->in = in;
    job->reg = user_data;
    if (in->delay_ms == 0) {
        echo_answer(job);
        return;
    }
    /* The handler runs on the loop thread and must not block: sleep elsewhere. */
    pthread_t t;
    atomic_fetch_add(&st.open_jobs, 1);
    if (pthread_create(&t, NULL, delayed_echo, job) != 0) {
        atomic_fetch_sub(&st.open_jobs, 1);
        echo_answer(job);
        return;
    }
    pthread_detach(t);
}

static void *delayed_claim(void *arg) {
    psrpc_request *req = arg;
    sleep_ms(st.affinity_delay_ms);
    answer_or_log(psrpc_request_claim(req, st.affinity), "claim");
    atomic_fetch_sub(&st.open_jobs, 1);
    return NULL;
}

static void claim_affinity(psrpc_request *req, void *user_data) {
    (void)user_data;
    if (st.affinity_delay_ms > 0) {
        pthread_t t;
        atomic_fetch_add(&st.open_jobs, 1);
        if (pthread_create(&t, NULL, delayed_claim, req) == 0) {
            pthread_detach(t);
            return;
        }
        atomic_fetch_sub(&st.open_jobs, 1);
    }
    answer_or_log(psrpc_request_claim(req, st.affinity), "claim");
}

/* ------------------------------------------------------------------------ */
/* Add, Publish                                                              */
/* ------------------------------------------------------------------------ */

static void add_handler(psrpc_request *req, void *user_data) {
    (void)user_data;
    const psrpc_msg *m = psrpc_request_payload(req);
    Psrpc__Conformance__AddRequest *in =
        psrpc__conformance__add_request__unpack(NULL, psrpc_msg_size(m), psrpc_msg_data(m));
    if (!in) {
        answer_or_log(psrpc_request_fail(req, PSRPC_MALFORMED_REQUEST, "bad AddRequest"), "fail");
        return;
    }
    Psrpc__Conformance__AddResult out = PSRPC__CONFORMANCE__ADD_RESULT__INIT;
    out.value = atomic_fetch_add(&st.counter, in->increment) + in->increment;
    psrpc__conformance__add_request__free_unpacked(in, NULL);
    uint8_t buf[16];
    size_t len = psrpc__conformance__add_result__pack(&out, buf);
    answer_or_log(psrpc_request_respond(req, buf, len), "respond");
}

static void publish_handler(psrpc_request *req, void *user_data) {
    (void)user_data;
    const psrpc_msg *m = psrpc_request_payload(req);
    Psrpc__Conformance__PublishRequest *in =
        psrpc__conformance__publish_request__unpack(NULL, psrpc_msg_size(m), psrpc_msg_data(m));
    if (!in) {
        answer_or_log(psrpc_request_fail(req, PSRPC_MALFORMED_REQUEST, "bad PublishRequest"),
                      "fail");
        return;
    }
    const conf_method_def *d =
        in->method ? conf_method_def_find(CONF_UPDATES_SERVICE, in->method) : NULL;
    if (!d) {
        answer_or_log(psrpc_request_fail(req, PSRPC_INVALID_ARGUMENT, "unknown update method"),
                      "fail");
        psrpc__conformance__publish_request__free_unpacked(in, NULL);
        return;
    }
    psrpc_method pm = conf_method(CONF_UPDATES_SERVICE, in->method);
    uint32_t published = 0;
    psrpc_status rc = PSRPC_OK;
    for (uint32_t seq = 1; seq <= in->count; seq++) {
        char nonce[17];
        conf_nonce(nonce);
        Psrpc__Conformance__Update u = PSRPC__CONFORMANCE__UPDATE__INIT;
        u.seq = seq;
        u.payload = in->payload;
        u.server_id = (char *)st.server_id;
        u.nonce = nonce;
        size_t len = psrpc__conformance__update__get_packed_size(&u);
        uint8_t *buf = malloc(len ? len : 1);
        psrpc__conformance__update__pack(&u, buf);
        rc = psrpc_server_publish(st.updates, &pm, (const char *const *)in->topic, in->n_topic, buf,
                                  len);
        free(buf);
        if (rc != PSRPC_OK)
            break;
        published++;
    }
    psrpc__conformance__publish_request__free_unpacked(in, NULL);
    if (rc != PSRPC_OK) {
        char msg[512];
        snprintf(msg, sizeof msg, "publish %u failed: %s", published + 1, psrpc_last_error());
        answer_or_log(psrpc_request_fail(req, rc, msg), "fail");
        return;
    }
    Psrpc__Conformance__PublishResult out = PSRPC__CONFORMANCE__PUBLISH_RESULT__INIT;
    out.published = published;
    uint8_t buf[16];
    size_t len = psrpc__conformance__publish_result__pack(&out, buf);
    answer_or_log(psrpc_request_respond(req, buf, len), "respond");
}

/* ------------------------------------------------------------------------ */
/* Chat                                                                      */
/* ------------------------------------------------------------------------ */

/* One accepted Chat stream. */
typedef struct chat_ctx {
    psrpc_stream *stream; /* the server's reference */
    atomic_uint max_seq;  /* highest seq received, reported when it ends */
} chat_ctx;

static int chat_message(psrpc_stream *s, const psrpc_msg *msg, void *user_data) {
    chat_ctx *c = user_data;
    Psrpc__Conformance__ChatMessage *in =
        psrpc__conformance__chat_message__unpack(NULL, psrpc_msg_size(msg), psrpc_msg_data(msg));
    if (!in) {
        psrpc_stream_close(s, PSRPC_MALFORMED_REQUEST, "bad ChatMessage");
        return 0;
    }
    unsigned prev = atomic_load(&c->max_seq);
    while (in->seq > prev && !atomic_compare_exchange_weak(&c->max_seq, &prev, in->seq)) {
    }
    if (in->close_code && *in->close_code) {
        /* the code string travels unchanged (custom codes too) */
        const char *m = in->close_message && *in->close_message
                            ? in->close_message
                            : psrpc_status_str(psrpc_status_from_code(in->close_code));
        psrpc_stream_close_code(s, in->close_code, m);
    } else if (in->close_message && *in->close_message) {
        psrpc_stream_close(s, PSRPC_OK, NULL);
    } else {
        Psrpc__Conformance__ChatMessage out = PSRPC__CONFORMANCE__CHAT_MESSAGE__INIT;
        out.seq = in->seq + 1;
        out.payload = in->payload;
        size_t len = psrpc__conformance__chat_message__get_packed_size(&out);
        uint8_t *buf = malloc(len ? len : 1);
        psrpc__conformance__chat_message__pack(&out, buf);
        answer_or_log(psrpc_stream_send(s, buf, len, 0, NULL, NULL), "stream send");
        free(buf);
    }
    psrpc__conformance__chat_message__free_unpacked(in, NULL);
    return 0;
}

static void chat_closed(psrpc_stream *s, const psrpc_error *cause, void *user_data) {
    (void)s;
    chat_ctx *c = user_data;
    event_line("chat-end", cause ? cause->code : "", cause ? cause->message : "",
               atomic_load(&c->max_seq));
}

static void chat_release(void *user_data) {
    chat_ctx *c = user_data;
    psrpc_stream_free(c->stream);
    free(c);
}

static void chat_handler(psrpc_stream *s, void *user_data) {
    (void)user_data;
    chat_ctx *c = calloc(1, sizeof *c);
    c->stream = s;
    if (psrpc_stream_set_callbacks(s, chat_message, chat_closed, c, chat_release) != PSRPC_OK) {
        fprintf(stderr, PROG ": stream callbacks: %s\n", psrpc_last_error());
        psrpc_stream_free(s);
        free(c);
    }
}

/* ------------------------------------------------------------------------ */
/* main                                                                      */
/* ------------------------------------------------------------------------ */

static sem_t closed_sem;
static void on_closed(void *user_data) {
    (void)user_data;
    sem_post(&closed_sem);
}

static int wait_sem(sem_t *s, int seconds) {
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += seconds;
    while (sem_timedwait(s, &dl) != 0)
        if (errno != EINTR)
            return -1;
    return 0;
}

static bool method_enabled(const char *list, const char *name) {
    if (!list)
        return true;
    size_t n = strlen(name);
    for (const char *p = list; *p;) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == n && !strncmp(p, name, n))
            return true;
        if (!e)
            break;
        p = e + 1;
    }
    return false;
}

static int usage(void) {
    fprintf(stderr,
            "usage: " PROG " [--bus URL] [--server-id ID] [--affinity F] [--topic T]...\n"
            "       [--methods LIST] [--affinity-delay-ms N] [--skip-claim]\n"
            "       [--max-message-size N] [--compress-threshold N] [--trace-next TOPIC]\n");
    return 2;
}

static int reg(const char *name, const char *topic, reg_ctx *ctx) {
    psrpc_method m = conf_method(CONF_SERVICE, name);
    const char *topics[1] = {topic};
    psrpc_status rc;
    ctx->method = name;
    ctx->topic = topic;
    if (m.flags & PSRPC_METHOD_STREAM) {
        rc = psrpc_server_register_stream(st.server, &m, topics, topic ? 1 : 0, chat_handler, NULL,
                                          NULL, ctx, NULL);
    } else {
        psrpc_handler_cb h = echo_handler;
        if (!strcmp(name, "Add"))
            h = add_handler;
        else if (!strcmp(name, "Publish"))
            h = publish_handler;
        rc = psrpc_server_register(st.server, &m, topics, topic ? 1 : 0, h,
                                   m.routing == PSRPC_ROUTING_AFFINITY ? claim_affinity : NULL,
                                   NULL, ctx, NULL);
    }
    if (rc != PSRPC_OK) {
        fprintf(stderr, PROG ": register %s%s%s: %s\n", name, topic ? " topic " : "",
                topic ? topic : "", psrpc_last_error());
        return -1;
    }
    return 0;
}

int main(int argc, char **argv) {
    conf_bus_flags bf;
    conf_bus_flags_init(&bf);
    const char *server_id = NULL, *methods = NULL;
    const char *topics[MAX_TOPICS];
    size_t ntopics = 0;
    bool skip_claim = false;
    st.affinity = 1.0f;
    for (int i = 1; i < argc;) {
        int used = conf_parse_bus_flag(&bf, argc, argv, i);
        if (used) {
            i += used;
            continue;
        }
        if (!strcmp(argv[i], "--skip-claim")) {
            skip_claim = true;
            i++;
            continue;
        }
        if (i + 1 >= argc)
            return usage();
        if (!strcmp(argv[i], "--server-id"))
            server_id = argv[i + 1];
        else if (!strcmp(argv[i], "--affinity"))
            st.affinity = strtof(argv[i + 1], NULL);
        else if (!strcmp(argv[i], "--affinity-delay-ms"))
            st.affinity_delay_ms = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--methods"))
            methods = argv[i + 1];
        else if (!strcmp(argv[i], "--trace-next"))
            st.trace_next = argv[i + 1];
        else if (!strcmp(argv[i], "--topic") && ntopics < MAX_TOPICS)
            topics[ntopics++] = argv[i + 1];
        else
            return usage();
        i += 2;
    }

    /* Signals are taken by sigwait on the main thread only: block them before
     * the bus starts its loop thread, which inherits the mask. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
    sem_init(&closed_sem, 0, 0);

    psrpc_bus *bus;
    if (conf_open_bus(&bus, &bf, PROG) != 0)
        return 1;
    psrpc_server_options so = PSRPC_SERVER_OPTIONS_INIT;
    so.server_id = server_id;
    so.flags = skip_claim ? PSRPC_SERVER_SKIP_CLAIM : 0;
    if (psrpc_server_create(&st.server, bus, CONF_SERVICE, &so) != PSRPC_OK ||
        psrpc_server_create(&st.updates, bus, CONF_UPDATES_SERVICE, &so) != PSRPC_OK) {
        fprintf(stderr, PROG ": server: %s\n", psrpc_last_error());
        return 1;
    }
    st.server_id = psrpc_server_id(st.server);
    if (st.trace_next &&
        psrpc_client_create(&st.trace_client, bus, CONF_SERVICE, NULL) != PSRPC_OK) {
        fprintf(stderr, PROG ": client: %s\n", psrpc_last_error());
        return 1;
    }

    static reg_ctx regs[8 + 2 * MAX_TOPICS];
    size_t nreg = 0;
    static const char *const plain[] = {"Echo", "Add", "Claim", "Fanout", "Publish", "Chat"};
    static const char *const topical[] = {"RegionEcho", "RegionFanout"};
    int failed = 0;
    for (size_t i = 0; i < sizeof plain / sizeof plain[0]; i++) {
        if (!method_enabled(methods, plain[i]))
            continue;
        if (!strcmp(plain[i], "Chat") && !conf_streams_available()) {
            fprintf(stderr, PROG ": this libpsrpc has no streams: Chat not served\n");
            continue;
        }
        failed |= reg(plain[i], NULL, &regs[nreg++]);
    }
    for (size_t i = 0; i < sizeof topical / sizeof topical[0]; i++)
        for (size_t t = 0; t < ntopics && method_enabled(methods, topical[i]); t++)
            failed |= reg(topical[i], topics[t], &regs[nreg++]);
    if (failed)
        return 1;
    if (psrpc_server_wait_ready(st.server, 15000) != PSRPC_OK) {
        fprintf(stderr, PROG ": registrations not ready: %s\n", psrpc_last_error());
        return 1;
    }
    pthread_mutex_lock(&out_mu);
    printf("ready\n");
    fflush(stdout);
    pthread_mutex_unlock(&out_mu);

    int sig = 0;
    while (sigwait(&sigs, &sig) != 0) {
    }

    /* Graceful: in-flight requests (delayed answers included) finish. */
    int rc = 0;
    if (psrpc_server_close(st.server, 0, on_closed, NULL) != PSRPC_OK ||
        wait_sem(&closed_sem, 30) != 0) {
        fprintf(stderr, PROG ": graceful close failed: %s\n", psrpc_last_error());
        rc = 1;
    }
    for (int i = 0; i < 3000 && atomic_load(&st.open_jobs) > 0; i++)
        sleep_ms(10); /* a declined or lost claim thread may still be sleeping */
    psrpc_server_close(st.updates, 0, on_closed, NULL);
    wait_sem(&closed_sem, 10);
    psrpc_server_free(st.server);
    psrpc_server_free(st.updates);
    psrpc_client_free(st.trace_client);
    psrpc_bus_free(bus);
    return rc;
}
