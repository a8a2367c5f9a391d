/* Bidirectional streams (wire spec section 11, test plan group L, issue 5):
 * open/send/receive/close both ways, ordered delivery with one ack per send,
 * close causes from either side, server handlers closing with an error,
 * close racing an incoming message, slow receivers (no ack, the stream stays
 * open), the hold buffer before callbacks are set, opens with no server,
 * affinity selection among servers, server close / deregister / client close
 * ending open streams, pending and early sends, metadata and ids, failed
 * opens leaving nothing behind, and argument checks on every stream
 * function. Every callback's user data lives on the heap; counts are atomics;
 * liveness bounds are loose and scaled by PSRPC_TEST_TIME_FACTOR. */
#include "util.h"

static psrpc_method chat_method(uint32_t routing) {
    return tu_method("Chat", routing, PSRPC_METHOD_STREAM);
}

/* ------------------------------------------------------------------------ */
/* One side of a stream: what its callbacks saw                              */
/* ------------------------------------------------------------------------ */

#define SR_THREADS 8

typedef struct srec {
    _Atomic(psrpc_stream *) handle;    /* the caller's reference (freed once) */
    _Atomic(psrpc_stream *) cb_stream; /* the stream the callbacks were given */
    bool cbs;                          /* callbacks were installed (OK returned) */
    bool free_in_close;                /* drop the handle inside on_close */
    atomic_int opens;
    int open_status;
    char open_code[64];
    char open_message[256];
    atomic_int msgs;     /* on_message invocations */
    atomic_int accepted; /* messages accepted (returned 0) */
    atomic_int reject;   /* non-zero: on_message returns 1 */
    atomic_int echo;     /* non-zero: every accepted message is sent back */
    atomic_int echo_failed;
    atomic_int echo_rc_errors;
    atomic_int order_errors; /* "#n" / "tK#n" messages out of sequence */
    int next_seq[SR_THREADS];
    atomic_int closes;
    int close_status;
    char close_code[64];
    char close_message[256];
    long long close_ms;
    atomic_int released;
    atomic_int bad; /* callback after close, NULL cause, another stream, release first */
    atomic_int greet_done;
    int greet_status;
    pthread_mutex_t mu;
    char last[256]; /* last accepted message */
    size_t last_len;
} srec;

static srec *sr_new(void) {
    srec *r = (srec *)calloc(1, sizeof *r);
    pthread_mutex_init(&r->mu, NULL);
    return r;
}

static void sr_free(srec *r) {
    if (!r)
        return;
    pthread_mutex_destroy(&r->mu);
    free(r);
}

static void sr_see(srec *r, psrpc_stream *st) {
    psrpc_stream *exp = NULL;
    if (!st || (!atomic_compare_exchange_strong(&r->cb_stream, &exp, st) && exp != st))
        atomic_fetch_add(&r->bad, 1);
}

static void sr_copy_err(const psrpc_error *e, int *status, char *code, size_t ncode, char *msg,
                        size_t nmsg) {
    *status = e ? e->status : PSRPC_OK;
    snprintf(code, ncode, "%s", e && e->code ? e->code : "");
    snprintf(msg, nmsg, "%s", e && e->message ? e->message : "");
}

static void sr_on_open(const psrpc_error *error, void *ud) {
    srec *r = (srec *)ud;
    tu_note_cb_thread();
    if (atomic_load(&r->closes))
        atomic_fetch_add(&r->bad, 1); /* on_open must precede on_close */
    if (error && (!error->code || !error->message))
        atomic_fetch_add(&r->bad, 1);
    sr_copy_err(error, &r->open_status, r->open_code, sizeof r->open_code, r->open_message,
                sizeof r->open_message);
    atomic_fetch_add(&r->opens, 1);
}

static void sr_echo_done(const psrpc_error *error, void *ud) {
    srec *r = (srec *)ud;
    tu_note_cb_thread();
    if (error)
        atomic_fetch_add(&r->echo_failed, 1);
}

/* "#n" (sender 0) or "tK#n" (sender K): checks per-sender order. */
static void sr_check_order(srec *r, const char *txt) {
    const char *hash = strchr(txt, '#');
    if (!hash)
        return;
    int k = 0;
    if (txt[0] == 't')
        k = atoi(txt + 1);
    if (k < 0 || k >= SR_THREADS) {
        atomic_fetch_add(&r->order_errors, 1);
        return;
    }
    int n = atoi(hash + 1);
    if (n != r->next_seq[k]) {
        if (atomic_fetch_add(&r->order_errors, 1) < 3)
            fprintf(stderr, "  order: got %s, expected sender %d #%d\n", txt, k, r->next_seq[k]);
        r->next_seq[k] = n + 1;
    } else {
        r->next_seq[k]++;
    }
}

static int sr_on_message(psrpc_stream *st, const psrpc_msg *msg, void *ud) {
    srec *r = (srec *)ud;
    tu_note_cb_thread();
    sr_see(r, st);
    if (atomic_load(&r->closes) || !msg)
        atomic_fetch_add(&r->bad, 1);
    atomic_fetch_add(&r->msgs, 1);
    if (atomic_load(&r->reject))
        return 1;
    size_t len = msg ? psrpc_msg_size(msg) : 0;
    pthread_mutex_lock(&r->mu);
    size_t l = len < sizeof r->last - 1 ? len : sizeof r->last - 1;
    if (l)
        memcpy(r->last, psrpc_msg_data(msg), l);
    r->last[l] = 0;
    r->last_len = len;
    sr_check_order(r, r->last);
    pthread_mutex_unlock(&r->mu);
    if (atomic_load(&r->echo) &&
        psrpc_stream_send(st, psrpc_msg_data(msg), len, 0, sr_echo_done, r) != PSRPC_OK)
        atomic_fetch_add(&r->echo_rc_errors, 1);
    atomic_fetch_add(&r->accepted, 1);
    return 0;
}

static void sr_on_close(psrpc_stream *st, const psrpc_error *cause, void *ud) {
    srec *r = (srec *)ud;
    tu_note_cb_thread();
    sr_see(r, st);
    if (!cause || !cause->code || !cause->message)
        atomic_fetch_add(&r->bad, 1);
    sr_copy_err(cause, &r->close_status, r->close_code, sizeof r->close_code, r->close_message,
                sizeof r->close_message);
    r->close_ms = th_now_ms();
    if (r->free_in_close)
        psrpc_stream_free(atomic_exchange(&r->handle, NULL));
    atomic_fetch_add(&r->closes, 1);
}

static void sr_release(void *ud) {
    srec *r = (srec *)ud;
    tu_note_cb_thread();
    if (atomic_load(&r->closes) == 0)
        atomic_fetch_add(&r->bad, 1); /* release runs after on_close */
    atomic_fetch_add(&r->released, 1);
}

static void sr_greet_done(const psrpc_error *error, void *ud) {
    srec *r = (srec *)ud;
    tu_note_cb_thread();
    r->greet_status = error ? error->status : PSRPC_OK;
    atomic_fetch_add(&r->greet_done, 1);
}

static void sr_last(srec *r, char *buf, size_t n) {
    pthread_mutex_lock(&r->mu);
    snprintf(buf, n, "%s", r->last);
    pthread_mutex_unlock(&r->mu);
}

/* ------------------------------------------------------------------------ */
/* Send completions                                                          */
/* ------------------------------------------------------------------------ */

typedef struct sends sends;
typedef struct send_slot {
    sends *s;
    int i;
} send_slot;

struct sends {
    int n;
    srec *owner; /* optional: completions before owner's on_open are counted */
    atomic_int done, ok, failed, dup, before_open, mismatch;
    atomic_int *once;
    send_slot *slots;
    pthread_mutex_t mu;
    bool have_err;
    int err_status;
    char err_code[64];
    char err_message[256];
};

static sends *sends_new(int n, srec *owner) {
    sends *s = (sends *)calloc(1, sizeof *s);
    s->n = n;
    s->owner = owner;
    s->once = (atomic_int *)calloc((size_t)n, sizeof *s->once);
    s->slots = (send_slot *)calloc((size_t)n, sizeof *s->slots);
    for (int i = 0; i < n; i++)
        s->slots[i] = (send_slot){s, i};
    pthread_mutex_init(&s->mu, NULL);
    return s;
}

static void sends_free(sends *s) {
    if (!s)
        return;
    pthread_mutex_destroy(&s->mu);
    free(s->once);
    free(s->slots);
    free(s);
}

static void sends_cb(const psrpc_error *error, void *ud) {
    send_slot *slot = (send_slot *)ud;
    sends *s = slot->s;
    tu_note_cb_thread();
    if (atomic_fetch_add(&s->once[slot->i], 1) != 0)
        atomic_fetch_add(&s->dup, 1);
    if (s->owner && atomic_load(&s->owner->opens) == 0)
        atomic_fetch_add(&s->before_open, 1);
    if (error) {
        pthread_mutex_lock(&s->mu);
        if (!s->have_err) {
            s->have_err = true;
            sr_copy_err(error, &s->err_status, s->err_code, sizeof s->err_code, s->err_message,
                        sizeof s->err_message);
        } else if (error->status != s->err_status || !error->message ||
                   strcmp(error->message, s->err_message) != 0) {
            atomic_fetch_add(&s->mismatch, 1);
        }
        pthread_mutex_unlock(&s->mu);
        atomic_fetch_add(&s->failed, 1);
    } else {
        atomic_fetch_add(&s->ok, 1);
    }
    atomic_fetch_add(&s->done, 1);
}

static int send_str(psrpc_stream *st, const char *txt, int64_t timeout_ms, sends *s, int i) {
    int rc = psrpc_stream_send(st, txt, strlen(txt), timeout_ms, sends_cb, &s->slots[i]);
    if (rc != PSRPC_OK)
        fprintf(stderr, "  psrpc_stream_send failed: %d %s\n", rc, psrpc_last_error());
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Stream servers                                                            */
/* ------------------------------------------------------------------------ */

#define SS_MAX 2048

enum { AFF_NONE = 0, AFF_SYNC = 1, AFF_THREAD = 2 };

typedef struct ssrv {
    psrpc_server *server;
    char id[128];
    /* what happens to each accepted stream */
    bool no_callbacks;     /* leave them unset: the test installs them */
    bool close_in_handler; /* close with close_status/close_message and free, in the handler */
    int close_status;
    const char *close_message;
    bool echo;
    int reject;
    bool free_in_close;
    const char *greet; /* sent from the handler */
    /* affinity */
    int aff_mode;
    float affinity;
    int affinity_delay_ms;
    atomic_int affinity_calls, claims_pending, answer_errors;
    char aff_client_id[128];
    char aff_room[64];
    long aff_payload_len; /* -1: payload NULL */
    /* bookkeeping */
    atomic_int accepted;
    atomic_int handler_errors;
    atomic_int handler_null;
    atomic_int reg_released;
    pthread_mutex_t mu;
    srec *recs[SS_MAX];
    int nrecs;
} ssrv;

static void ss_handler(psrpc_stream *st, void *ud) {
    ssrv *s = (ssrv *)ud;
    tu_note_cb_thread();
    if (!st) {
        atomic_fetch_add(&s->handler_null, 1);
        return;
    }
    srec *r = sr_new();
    atomic_store(&r->handle, st);
    atomic_store(&r->reject, s->reject);
    atomic_store(&r->echo, s->echo ? 1 : 0);
    r->free_in_close = s->free_in_close;
    pthread_mutex_lock(&s->mu);
    if (s->nrecs < SS_MAX)
        s->recs[s->nrecs++] = r;
    pthread_mutex_unlock(&s->mu);
    if (s->close_in_handler) {
        if (psrpc_stream_close(st, s->close_status, s->close_message) != PSRPC_OK)
            atomic_fetch_add(&s->handler_errors, 1);
        psrpc_stream_free(atomic_exchange(&r->handle, NULL));
    } else if (!s->no_callbacks) {
        r->cbs = true;
        if (psrpc_stream_set_callbacks(st, sr_on_message, sr_on_close, r, sr_release) != PSRPC_OK) {
            r->cbs = false;
            atomic_fetch_add(&s->handler_errors, 1);
        }
        if (s->greet &&
            psrpc_stream_send(st, s->greet, strlen(s->greet), 0, sr_greet_done, r) != PSRPC_OK)
            atomic_fetch_add(&s->handler_errors, 1);
    }
    atomic_fetch_add(&s->accepted, 1);
}

typedef struct ss_claim_job {
    psrpc_request *req;
    ssrv *srv;
} ss_claim_job;

static void *ss_claim_thread(void *arg) {
    ss_claim_job *j = (ss_claim_job *)arg;
    ssrv *s = j->srv;
    if (s->affinity_delay_ms > 0)
        th_sleep_ms(s->affinity_delay_ms);
    if (psrpc_request_claim(j->req, s->affinity) != PSRPC_OK)
        atomic_fetch_add(&s->answer_errors, 1);
    free(j);
    atomic_fetch_sub(&s->claims_pending, 1);
    return NULL;
}

static void ss_affinity(psrpc_request *req, void *ud) {
    ssrv *s = (ssrv *)ud;
    tu_note_cb_thread();
    pthread_mutex_lock(&s->mu);
    const char *v = psrpc_request_client_id(req);
    snprintf(s->aff_client_id, sizeof s->aff_client_id, "%s", v ? v : "(null)");
    v = psrpc_request_metadata_get(req, "room");
    snprintf(s->aff_room, sizeof s->aff_room, "%s", v ? v : "(null)");
    const psrpc_msg *p = psrpc_request_payload(req);
    s->aff_payload_len = p ? (long)psrpc_msg_size(p) : -1;
    pthread_mutex_unlock(&s->mu);
    atomic_fetch_add(&s->affinity_calls, 1);
    if (s->aff_mode == AFF_THREAD || s->affinity_delay_ms > 0) {
        atomic_fetch_add(&s->claims_pending, 1);
        ss_claim_job *j = (ss_claim_job *)malloc(sizeof *j);
        j->req = req;
        j->srv = s;
        pthread_t t;
        pthread_attr_t a;
        pthread_attr_init(&a);
        pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&t, &a, ss_claim_thread, j) != 0) {
            free(j);
            if (psrpc_request_claim(req, s->affinity) != PSRPC_OK)
                atomic_fetch_add(&s->answer_errors, 1);
            atomic_fetch_sub(&s->claims_pending, 1);
        }
        pthread_attr_destroy(&a);
        return;
    }
    if (psrpc_request_claim(req, s->affinity) != PSRPC_OK)
        atomic_fetch_add(&s->answer_errors, 1);
}

static void ss_reg_release(void *ud) {
    ssrv *s = (ssrv *)ud;
    tu_note_cb_thread();
    atomic_fetch_add(&s->reg_released, 1);
}

static ssrv *ss_new(psrpc_bus *bus, const char *service) {
    ssrv *s = (ssrv *)calloc(1, sizeof *s);
    pthread_mutex_init(&s->mu, NULL);
    s->affinity = 1.0f;
    int rc = psrpc_server_create(&s->server, bus, service, NULL);
    if (rc != PSRPC_OK) {
        fprintf(stderr, "  psrpc_server_create failed: %d %s\n", rc, psrpc_last_error());
        return s;
    }
    snprintf(s->id, sizeof s->id, "%s", psrpc_server_id(s->server));
    return s;
}

static int ss_register(ssrv *s, const psrpc_method *m) {
    int rc = psrpc_server_register_stream(s->server, m, NULL, 0, ss_handler,
                                          s->aff_mode != AFF_NONE ? ss_affinity : NULL, NULL, s,
                                          ss_reg_release);
    if (rc != PSRPC_OK) {
        fprintf(stderr, "  psrpc_server_register_stream failed: %d %s\n", rc, psrpc_last_error());
        return rc;
    }
    rc = psrpc_server_wait_ready(s->server, tu_ms(5000));
    if (rc != PSRPC_OK)
        fprintf(stderr, "  psrpc_server_wait_ready failed: %d %s\n", rc, psrpc_last_error());
    return rc;
}

static srec *ss_rec(ssrv *s, int i) {
    pthread_mutex_lock(&s->mu);
    srec *r = i < s->nrecs ? s->recs[i] : NULL;
    pthread_mutex_unlock(&s->mu);
    return r;
}

static int ss_count(ssrv *s) {
    pthread_mutex_lock(&s->mu);
    int n = s->nrecs;
    pthread_mutex_unlock(&s->mu);
    return n;
}

/* ------------------------------------------------------------------------ */
/* Fixture: n stream servers (each on its own bus) and one client            */
/* ------------------------------------------------------------------------ */

#define SFX_MAXS 3
#define SFX_MAXC 2048

typedef struct sfx {
    psrpc_bus *bus[SFX_MAXS + 1];
    int nbus;
    ssrv *srv[SFX_MAXS];
    int nsrv;
    psrpc_client *cl;
    psrpc_bus *cbus;
    char service[64];
    srec *crec[SFX_MAXC];
    int nc;
} sfx;

/* Buses, servers (not registered yet) and a client with the given timeouts. */
static sfx *sfx_new(int nsrv, int64_t client_timeout, int64_t selection_timeout) {
    sfx *f = (sfx *)calloc(1, sizeof *f);
    tu_service(f->service, sizeof f->service);
    f->nsrv = nsrv;
    f->nbus = nsrv + 1;
    if (open_bus_group(f->bus, f->nbus) != 0) {
        f->nbus = 0;
        return f;
    }
    for (int i = 0; i < nsrv; i++)
        f->srv[i] = ss_new(f->bus[i], f->service);
    f->cbus = f->bus[nsrv];
    f->cl = tu_client(f->cbus, f->service, client_timeout, selection_timeout);
    return f;
}

static bool sfx_ok(sfx *f) {
    if (!f->cl)
        return false;
    for (int i = 0; i < f->nsrv; i++)
        if (!f->srv[i] || !f->srv[i]->server)
            return false;
    return true;
}

static int sfx_register(sfx *f, uint32_t routing) {
    psrpc_method m = chat_method(routing);
    for (int i = 0; i < f->nsrv; i++) {
        int rc = ss_register(f->srv[i], &m);
        if (rc != PSRPC_OK)
            return rc;
    }
    return PSRPC_OK;
}

/* Opens a stream of method m; NULL (and a message) when the open was refused. */
static srec *sfx_open_m(sfx *f, const psrpc_method *m, const psrpc_call_options *o) {
    if (f->nc >= SFX_MAXC)
        return NULL;
    srec *r = sr_new();
    r->cbs = true;
    psrpc_stream *st = NULL;
    int rc = psrpc_client_open_stream(&st, f->cl, m, o, sr_on_open, sr_on_message, sr_on_close, r,
                                      sr_release);
    if (rc != PSRPC_OK || !st) {
        fprintf(stderr, "  psrpc_client_open_stream failed: %d %s\n", rc, psrpc_last_error());
        sr_free(r); /* no callback runs after a refused open */
        return NULL;
    }
    atomic_store(&r->handle, st);
    f->crec[f->nc++] = r;
    return r;
}

static srec *sfx_open(sfx *f, uint32_t routing, const psrpc_call_options *o) {
    psrpc_method m = chat_method(routing);
    return sfx_open_m(f, &m, o);
}

static psrpc_stream *H(srec *r) { return atomic_load(&r->handle); }

static bool sr_wait_open(srec *r) {
    if (!tu_wait_count(&r->opens, 1, 5000))
        return false;
    if (r->open_status != PSRPC_OK) {
        fprintf(stderr, "  open failed: %d %s %s\n", r->open_status, r->open_code, r->open_message);
        return false;
    }
    return true;
}

/* Opens a stream to server 0 and waits until both sides have it; *srv_rec
 * receives the server side's record. */
static srec *sfx_open_pair(sfx *f, uint32_t routing, const psrpc_call_options *o, srec **srv_rec) {
    int before = atomic_load(&f->srv[0]->accepted);
    srec *c = sfx_open(f, routing, o);
    if (!c || !sr_wait_open(c))
        return NULL;
    if (!tu_wait_count(&f->srv[0]->accepted, before + 1, 5000))
        return NULL;
    *srv_rec = ss_rec(f->srv[0], before);
    return *srv_rec ? c : NULL;
}

static void sr_check_final(srec *r, const char *side, int idx) {
    if (atomic_load(&r->bad) != 0 || atomic_load(&r->closes) != 1 || atomic_load(&r->released) != 1)
        fprintf(stderr, "  %s stream %d: bad %d closes %d released %d\n", side, idx,
                atomic_load(&r->bad), atomic_load(&r->closes), atomic_load(&r->released));
    CHECK_EQ_INT(atomic_load(&r->bad), 0);
    CHECK_EQ_INT(atomic_load(&r->closes), 1);
    CHECK_EQ_INT(atomic_load(&r->released), 1);
}

/* Frees everything; then every stream whose open returned OK must have seen
 * exactly one on_open, one on_close and one release, and every server-side
 * stream with callbacks one on_close and one release. */
static void sfx_free(sfx *f) {
    for (int i = 0; i < f->nc; i++)
        psrpc_stream_free(atomic_exchange(&f->crec[i]->handle, NULL));
    for (int i = 0; i < f->nsrv; i++) {
        if (!f->srv[i])
            continue;
        for (int j = 0; j < ss_count(f->srv[i]); j++)
            psrpc_stream_free(atomic_exchange(&ss_rec(f->srv[i], j)->handle, NULL));
    }
    psrpc_client_free(f->cl);
    for (int i = 0; i < f->nsrv; i++)
        if (f->srv[i])
            psrpc_server_free(f->srv[i]->server);
    for (int i = 0; i < f->nbus; i++)
        psrpc_bus_free(f->bus[i]);
    int reported = 0;
    for (int i = 0; i < f->nc; i++) {
        srec *r = f->crec[i];
        if (atomic_load(&r->opens) != 1 && reported++ < 3)
            fprintf(stderr, "  client stream %d: opens %d\n", i, atomic_load(&r->opens));
        CHECK_EQ_INT(atomic_load(&r->opens), 1);
        if (atomic_load(&r->bad) || atomic_load(&r->closes) != 1 ||
            atomic_load(&r->released) != 1) {
            if (reported++ < 3)
                sr_check_final(r, "client", i);
            else {
                CHECK_EQ_INT(atomic_load(&r->closes), 1);
                CHECK_EQ_INT(atomic_load(&r->released), 1);
            }
        }
        sr_free(r);
    }
    for (int i = 0; i < f->nsrv; i++) {
        ssrv *s = f->srv[i];
        if (!s)
            continue;
        WAIT_UNTIL(atomic_load(&s->claims_pending) == 0, 5000);
        CHECK_EQ_INT(atomic_load(&s->answer_errors), 0);
        CHECK_EQ_INT(atomic_load(&s->handler_errors), 0);
        CHECK_EQ_INT(atomic_load(&s->handler_null), 0);
        if (s->server)
            CHECK(atomic_load(&s->reg_released) <= 1);
        for (int j = 0; j < s->nrecs; j++) {
            srec *r = s->recs[j];
            if (r->cbs && (atomic_load(&r->bad) || atomic_load(&r->closes) != 1 ||
                           atomic_load(&r->released) != 1)) {
                if (reported++ < 3)
                    sr_check_final(r, "server", j);
                else
                    CHECK_EQ_INT(atomic_load(&r->closes), 1);
            }
            sr_free(r);
        }
        pthread_mutex_destroy(&s->mu);
        free(s);
    }
    free(f);
}

/* ------------------------------------------------------------------------ */
/* Open, send, receive, close                                                */
/* ------------------------------------------------------------------------ */

/* Client → server echo and a server-initiated greeting; a clean close from
 * the client reads canceled "stream closed" on both sides; sends after the
 * close complete with the close cause; a second close is a no-op. */
TEST(stream_echo_both_ways_and_client_close) {
    sfx *f = sfx_new(1, 3000, 500);
    REQUIRE(sfx_ok(f));
    f->srv[0]->echo = true;
    f->srv[0]->greet = "welcome";
    REQUIRE(sfx_register(f, PSRPC_ROUTING_QUEUE) == PSRPC_OK);
    srec *s = NULL;
    srec *c = sfx_open_pair(f, PSRPC_ROUTING_QUEUE, NULL, &s);
    REQUIRE(c);
    CHECK_EQ_STR(c->open_code, "");

    /* the server's greeting reaches the client, and its send is acknowledged */
    REQUIRE(tu_wait_count(&c->accepted, 1, 5000));
    char buf[256];
    sr_last(c, buf, sizeof buf);
    CHECK_EQ_STR(buf, "welcome");
    REQUIRE(tu_wait_count(&s->greet_done, 1, 5000));
    CHECK_EQ_INT(s->greet_status, PSRPC_OK);

    /* both sides count the stream as open */
    CHECK_EQ_INT(tu_stats(f->cbus).streams_open, 1);
    CHECK_EQ_INT(tu_stats(f->bus[0]).streams_open, 1);

    /* client → server, echoed back */
    sends *sd = sends_new(3, c);
    REQUIRE(send_str(H(c), "hello", 0, sd, 0) == PSRPC_OK);
    REQUIRE(tu_wait_count(&sd->done, 1, 5000));
    CHECK_EQ_INT(atomic_load(&sd->ok), 1);
    REQUIRE(tu_wait_count(&s->accepted, 1, 5000));
    sr_last(s, buf, sizeof buf);
    CHECK_EQ_STR(buf, "hello");
    REQUIRE(tu_wait_count(&c->accepted, 2, 5000));
    sr_last(c, buf, sizeof buf);
    CHECK_EQ_STR(buf, "hello");

    /* an empty message is a message */
    REQUIRE(psrpc_stream_send(H(c), NULL, 0, 0, sends_cb, &sd->slots[1]) == PSRPC_OK);
    REQUIRE(tu_wait_count(&sd->done, 2, 5000));
    CHECK_EQ_INT(atomic_load(&sd->ok), 2);
    REQUIRE(tu_wait_count(&s->accepted, 2, 5000));
    CHECK_EQ_INT(s->last_len, 0);
    REQUIRE(tu_wait_count(&c->accepted, 3, 5000));
    CHECK_EQ_INT(atomic_load(&s->echo_failed), 0);
    CHECK_EQ_INT(atomic_load(&s->echo_rc_errors), 0);

    /* the callbacks were given the stream handles */
    CHECK(atomic_load(&c->cb_stream) == H(c));
    CHECK(atomic_load(&s->cb_stream) == H(s));

    /* clean close from the client */
    CHECK_EQ_INT(psrpc_stream_close(H(c), 0, NULL), PSRPC_OK);
    REQUIRE(tu_wait_count(&c->closes, 1, 5000));
    CHECK_EQ_INT(c->close_status, PSRPC_CANCELED);
    CHECK_EQ_STR(c->close_code, "canceled");
    CHECK_EQ_STR(c->close_message, "stream closed");
    REQUIRE(tu_wait_count(&s->closes, 1, 5000));
    CHECK_EQ_INT(s->close_status, PSRPC_CANCELED);
    CHECK_EQ_STR(s->close_code, "canceled");
    CHECK_EQ_STR(s->close_message, "stream closed");
    CHECK(tu_wait_count(&c->released, 1, 2000));
    CHECK(tu_wait_count(&s->released, 1, 2000));
    CHECK(WAIT_UNTIL(tu_stats(f->cbus).streams_open == 0, 2000));
    CHECK(WAIT_UNTIL(tu_stats(f->bus[0]).streams_open == 0, 2000));

    /* closing again is a no-op; a send after the close completes with the cause */
    CHECK_EQ_INT(psrpc_stream_close(H(c), PSRPC_INTERNAL, "again"), PSRPC_OK);
    CHECK_EQ_INT(psrpc_stream_send(H(c), "late", 4, 0, sends_cb, &sd->slots[2]), PSRPC_OK);
    REQUIRE(tu_wait_count(&sd->done, 3, 2000));
    CHECK_EQ_INT(atomic_load(&sd->failed), 1);
    CHECK_EQ_INT(sd->err_status, PSRPC_CANCELED);
    CHECK_EQ_STR(sd->err_message, "stream closed");
    /* the server side's sends fail with its cause too */
    sends *ss = sends_new(1, NULL);
    CHECK_EQ_INT(send_str(H(s), "late", 0, ss, 0), PSRPC_OK);
    REQUIRE(tu_wait_count(&ss->done, 1, 2000));
    CHECK_EQ_INT(atomic_load(&ss->failed), 1);
    CHECK_EQ_INT(ss->err_status, PSRPC_CANCELED);
    th_sleep_ms(50);
    CHECK_EQ_INT(atomic_load(&c->closes), 1);
    CHECK_EQ_INT(atomic_load(&s->closes), 1);
    CHECK_EQ_INT(atomic_load(&s->accepted), 2);
    CHECK_EQ_INT(atomic_load(&sd->dup) + atomic_load(&ss->dup), 0);
    sfx_free(f);
    sends_free(sd);
    sends_free(ss);
    TU_CHECK_THREADS();
}

/* The server closes cleanly: the client reads canceled "stream closed". */
TEST(stream_server_clean_close) {
    sfx *f = sfx_new(1, 3000, 500);
    REQUIRE(sfx_ok(f));
    REQUIRE(sfx_register(f, PSRPC_ROUTING_QUEUE) == PSRPC_OK);
    srec *s = NULL;
    srec *c = sfx_open_pair(f, PSRPC_ROUTING_QUEUE, NULL, &s);
    REQUIRE(c);
    CHECK_EQ_INT(psrpc_stream_close(H(s), 0, NULL), PSRPC_OK);
    REQUIRE(tu_wait_count(&c->closes, 1, 5000));
    CHECK_EQ_INT(c->close_status, PSRPC_CANCELED);
    CHECK_EQ_STR(c->close_code, "canceled");
    CHECK_EQ_STR(c->close_message, "stream closed");
    REQUIRE(tu_wait_count(&s->closes, 1, 5000));
    CHECK_EQ_INT(s->close_status, PSRPC_CANCELED);
    CHECK_EQ_STR(s->close_message, "stream closed");
    CHECK(WAIT_UNTIL(tu_stats(f->cbus).streams_open == 0, 2000));
    CHECK(WAIT_UNTIL(tu_stats(f->bus[0]).streams_open == 0, 2000));
    sfx_free(f);
    TU_CHECK_THREADS();
}

/* Closing with a code and a message from either side: the peer's on_close
 * (and the closer's own) read exactly that code and message. */
static void check_close_with_error(bool from_client) {
    sfx *f = sfx_new(1, 3000, 500);
    REQUIRE(sfx_ok(f));
    REQUIRE(sfx_register(f, PSRPC_ROUTING_QUEUE) == PSRPC_OK);
    srec *s = NULL;
    srec *c = sfx_open_pair(f, PSRPC_ROUTING_QUEUE, NULL, &s);
    REQUIRE(c);
    srec *closer = from_client ? c : s, *peer = from_client ? s : c;
    int status = from_client ? PSRPC_NOT_FOUND : PSRPC_PERMISSION_DENIED;
    const char *code = from_client ? "not_found" : "permission_denied";
    const char *msg = from_client ? "room r1 is gone" : "kicked by moderator";
    CHECK_EQ_INT(psrpc_stream_close(H(closer), status, msg), PSRPC_OK);
    REQUIRE(tu_wait_count(&peer->closes, 1, 5000));
    CHECK_EQ_INT(peer->close_status, status);
    CHECK_EQ_STR(peer->close_code, code);
    CHECK_EQ_STR(peer->close_message, msg);
    REQUIRE(tu_wait_count(&closer->closes, 1, 5000));
    CHECK_EQ_INT(closer->close_status, status);
    CHECK_EQ_STR(closer->close_code, code);
    CHECK_EQ_STR(closer->close_message, msg);
    /* a later close by the peer changes nothing */
    CHECK_EQ_INT(psrpc_stream_close(H(peer), PSRPC_INTERNAL, "too late"), PSRPC_OK);
    th_sleep_ms(50);
    CHECK_EQ_INT(atomic_load(&peer->closes), 1);
    CHECK_EQ_STR(peer->close_message, msg);
    CHECK_EQ_INT(atomic_load(&closer->closes), 1);
    CHECK_EQ_STR(closer->close_message, msg);
    sfx_free(f);
    TU_CHECK_THREADS();
}

TEST(stream_client_closes_with_error) { check_close_with_error(true); }

TEST(stream_server_closes_with_error) { check_close_with_error(false); }

/* A negative status with no message closes with the status description. */
TEST(stream_close_error_without_message) {
    sfx *f = sfx_new(1, 3000, 500);
    REQUIRE(sfx_ok(f));
    REQUIRE(sfx_register(f, PSRPC_ROUTING_QUEUE) == PSRPC_OK);
    srec *s = NULL;
    srec *c = sfx_open_pair(f, PSRPC_ROUTING_QUEUE, NULL, &s);
    REQUIRE(c);
    CHECK_EQ_INT(psrpc_stream_close(H(c), PSRPC_ABORTED, NULL), PSRPC_OK);
    REQUIRE(tu_wait_count(&s->closes, 1, 5000));
    CHECK_EQ_INT(s->close_status, PSRPC_ABORTED);
    CHECK_EQ_STR(s->close_code, "aborted");
    CHECK(s->close_message[0] != 0);
    CHECK_EQ_STR(s->close_message, psrpc_status_str(PSRPC_ABORTED));
    sfx_free(f);
}

/* A handler that closes its new stream with an error at once (and drops its
 * reference): the open still succeeds, then the client reads the error. */
TEST(stream_handler_closes_with_error) {
    sfx *f = sfx_new(1, 3000, 500);
    REQUIRE(sfx_ok(f));
    f->srv[0]->close_in_handler = true;
    f->srv[0]->close_status = PSRPC_UNIMPLEMENTED;
    f->srv[0]->close_message = "chat is not implemented here";
    REQUIRE(sfx_register(f, PSRPC_ROUTING_QUEUE) == PSRPC_OK);
    srec *c = sfx_open(f, PSRPC_ROUTING_QUEUE, NULL);
    REQUIRE(c);
    REQUIRE(tu_wait_count(&c->closes, 1, 5000));
    CHECK_EQ_INT(atomic_load(&c->opens), 1);
    CHECK_EQ_INT(c->open_status, PSRPC_OK);
    CHECK_EQ_INT(c->close_status, PSRPC_UNIMPLEMENTED);
    CHECK_EQ_STR(c->close_code, "unimplemented");
    CHECK_EQ_STR(c->close_message, "chat is not implemented here");
    CHECK_EQ_INT(atomic_load(&f->srv[0]->accepted), 1);
    /* sends on the closed stream fail with that cause */
    sends *sd = sends_new(1, c);
    CHECK_EQ_INT(send_str(H(c), "anyone?", 0, sd, 0), PSRPC_OK);
    REQUIRE(tu_wait_count(&sd->done, 1, 2000));
    CHECK_EQ_INT(sd->err_status, PSRPC_UNIMPLEMENTED);
    CHECK_EQ_STR(sd->err_message, "chat is not implemented here");
    CHECK(WAIT_UNTIL(tu_stats(f->bus[0]).streams_open == 0, 2000));
    CHECK(WAIT_UNTIL(tu_stats(f->cbus).streams_open == 0, 2000));
    sfx_free(f);
    sends_free(sd);
    TU_CHECK_THREADS();
}

/* ------------------------------------------------------------------------ */
/* Volume and ordering                                                       */
/* ------------------------------------------------------------------------ */

/* L6: 10,000 messages on one stream arrive in order; each send's on_done runs
 * once, with success. At most 1,000 sends are in flight at a time. */
TEST(stream_10000_messages_in_order) {
    enum { N = 10000, WINDOW = 1000 };
    sfx *f = sfx_new(1, 10000, 500);
    REQUIRE(sfx_ok(f));
    REQUIRE(sfx_register(f, PSRPC_ROUTING_QUEUE) == PSRPC_OK);
    srec *s = NULL;
    srec *c = sfx_open_pair(f, PSRPC_ROUTING_QUEUE, NULL, &s);
    REQUIRE(c);
    sends *sd = sends_new(N, c);
    char txt[32];
    long long t0 = th_now_ms();
    for (int i = 0; i < N; i++) {
        if (i - atomic_load(&sd->done) >= WINDOW)
            REQUIRE(WAIT_UNTIL(i - atomic_load(&sd->done) < WINDOW, 10000));
        snprintf(txt, sizeof txt, "#%d", i);
        REQUIRE(send_str(H(c), txt, 0, sd, i) == PSRPC_OK);
    }
    REQUIRE(tu_wait_count(&sd->done, N, 20000));
    long long el = th_now_ms() - t0;
    fprintf(stderr, "  10000 acknowledged sends in %lld ms\n", el);
    REQUIRE(tu_wait_count(&s->accepted, N, 5000));
    th_sleep_ms(50);
    CHECK_EQ_INT(atomic_load(&sd->ok), N);
    CHECK_EQ_INT(atomic_load(&sd->failed), 0);
    CHECK_EQ_INT(atomic_load(&sd->dup), 0);
    CHECK_EQ_INT(atomic_load(&sd->done), N);
    CHECK_EQ_INT(atomic_load(&s->msgs), N);
    CHECK_EQ_INT(atomic_load(&s->accepted), N);
    CHECK_EQ_INT(atomic_load(&s->order_errors), 0);
    CHECK_EQ_INT(s->next_seq[0], N);
    char buf[256];
    sr_last(s, buf, sizeof buf);
    CHECK_EQ_STR(buf, "#9999");
    CHECK_EQ_INT(atomic_load(&c->closes), 0);
    CHECK_EQ_INT(atomic_load(&s->closes), 0);
    if (sd->have_err)
        fprintf(stderr, "  first send error: %s %s\n", sd->err_code, sd->err_message);
    sfx_free(f);
    sends_free(sd);
    TU_CHECK_THREADS();
}

/* Several threads send on one stream at once: all acknowledged once, each
 * thread's messages arrive in its order. The server also streams to the
 * client meanwhile (echo). */
typedef struct th_send_job {
    psrpc_stream *st;
    sends *sd;
    int k, n;
    atomic_int rc_errors;
} th_send_job;

static void *th_send_thread(void *arg) {
    th_send_job *j = (th_send_job *)arg;
    char txt[32];
    for (int i = 0; i < j->n; i++) {
        snprintf(txt, sizeof txt, "t%d#%d", j->k, i);
        if (psrpc_stream_send(j->st, txt, strlen(txt), 0, sends_cb,
                              &j->sd->slots[j->k * j->n + i]) != PSRPC_OK)
            atomic_fetch_add(&j->rc_errors, 1);
    }
    return NULL;
}

TEST(stream_concurrent_sends_from_threads) {
    enum { T = 4, PER = 500 };
    sfx *f = sfx_new(1, 10000, 500);
    REQUIRE(sfx_ok(f));
    f->srv[0]->echo = true;
    REQUIRE(sfx_register(f, PSRPC_ROUTING_QUEUE) == PSRPC_OK);
    srec *s = NULL;
    srec *c = sfx_open_pair(f, PSRPC_ROUTING_QUEUE, NULL, &s);
    REQUIRE(c);
    sends *sd = sends_new(T * PER, c);
    th_send_job *jobs = (th_send_job *)calloc(T, sizeof *jobs);
    pthread_t t[T];
    for (int k = 0; k < T; k++) {
        jobs[k].st = H(c);
        jobs[k].sd = sd;
        jobs[k].k = k;
        jobs[k].n = PER;
        pthread_create(&t[k], NULL, th_send_thread, &jobs[k]);
    }
    for (int k = 0; k < T; k++)
        pthread_join(t[k], NULL);
    for (int k = 0; k < T; k++)
        CHECK_EQ_INT(atomic_load(&jobs[k].rc_errors), 0);
    REQUIRE(tu_wait_count(&sd->done, T * PER, 20000));
    REQUIRE(tu_wait_count(&s->accepted, T * PER, 5000));
    REQUIRE(tu_wait_count(&c->accepted, T * PER, 10000));
    th_sleep_ms(50);
    CHECK_EQ_INT(atomic_load(&sd->ok), T * PER);
    CHECK_EQ_INT(atomic_load(&sd->dup), 0);
    CHECK_EQ_INT(atomic_load(&s->accepted), T * PER);
    CHECK_EQ_INT(atomic_load(&s->order_errors), 0);
    for (int k = 0; k < T; k++)
        CHECK_EQ_INT(s->next_seq[k], PER);
    /* the echoes come back in the order the server received them */
    CHECK_EQ_INT(atomic_load(&c->accepted), T * PER);
    CHECK_EQ_INT(atomic_load(&c->order_errors), 0);
    CHECK_EQ_INT(atomic_load(&s->echo_failed), 0);
    sfx_free(f);
    sends_free(sd);
    free(jobs);
    TU_CHECK_THREADS();
}

/* ------------------------------------------------------------------------ */
/* Races                                                                     */
/* ------------------------------------------------------------------------ */

static void spin_us(long us) {
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do {
        clock_gettime(CLOCK_MONOTONIC, &t);
    } while ((t.tv_sec - t0.tv_sec) * 1000000L + (t.tv_nsec - t0.tv_nsec) / 1000 < us);
}

/* The client closes while a server message is on its way, 1,000 times: the
 * message is either delivered (on_message ran, the server's send succeeded)
 * or dropped (no on_message, the send failed with the close cause), never
 * both; on_close runs once on each side and no message follows it. */
TEST(stream_close_races_incoming_message) {
    enum { N = 1000 };
    sfx *f = sfx_new(1, 3000, 500);
    REQUIRE(sfx_ok(f));
    REQUIRE(sfx_register(f, PSRPC_ROUTING_QUEUE) == PSRPC_OK);
    int delivered = 0, dropped = 0, inconsistent = 0;
    for (int i = 0; i < N; i++) {
        srec *s = NULL;
        srec *c = sfx_open_pair(f, PSRPC_ROUTING_QUEUE, NULL, &s);
        REQUIRE(c);
        sends *sd = sends_new(1, NULL);
        psrpc_stream *sst = H(s);
        if (i % 4 != 3) {
            /* the message leaves first; the close follows after 0 to ~2 ms */
            REQUIRE(send_str(sst, "race", 0, sd, 0) == PSRPC_OK);
            spin_us((i * 7) % 2000);
            REQUIRE(psrpc_stream_close(H(c), 0, NULL) == PSRPC_OK);
        } else {
            REQUIRE(psrpc_stream_close(H(c), 0, NULL) == PSRPC_OK);
            REQUIRE(send_str(sst, "race", 0, sd, 0) == PSRPC_OK);
        }
        REQUIRE(tu_wait_count(&c->closes, 1, 5000));
        REQUIRE(tu_wait_count(&sd->done, 1, 5000));
        REQUIRE(tu_wait_count(&s->closes, 1, 5000));
        int got = atomic_load(&c->msgs);
        bool ok = atomic_load(&sd->ok) == 1;
        if (got == 1 && ok) {
            delivered++;
        } else if (got == 0 && !ok && sd->err_status == PSRPC_CANCELED &&
                   strcmp(sd->err_message, "stream closed") == 0) {
            dropped++;
        } else {
            if (inconsistent++ < 5)
                fprintf(stderr, "  iteration %d: on_message %d, send %s (%s %s)\n", i, got,
                        ok ? "ok" : "failed", sd->err_code, sd->err_message);
        }
        CHECK_EQ_INT(atomic_load(&sd->dup), 0);
        CHECK_EQ_INT(c->close_status, PSRPC_CANCELED);
        CHECK_EQ_INT(s->close_status, PSRPC_CANCELED);
        psrpc_stream_free(atomic_exchange(&s->handle, NULL));
        psrpc_stream_free(atomic_exchange(&c->handle, NULL));
        sends_free(sd); /* done was counted last: the library is done with it */
        if (th_failed_current)
            break;
    }
    fprintf(stderr, "  delivered %d, dropped %d, inconsistent %d\n", delivered, dropped,
            inconsistent);
    CHECK_EQ_INT(inconsistent, 0);
    CHECK_EQ_INT(delivered + dropped, N);
    th_sleep_ms(50);
    for (int i = 0; i < f->nc; i++) {
        CHECK_EQ_INT(atomic_load(&f->crec[i]->closes), 1);
        CHECK(atomic_load(&f->crec[i]->msgs) <= 1);
    }
    CHECK(WAIT_UNTIL(tu_stats(f->cbus).streams_open == 0, 2000));
    CHECK(WAIT_UNTIL(tu_stats(f->bus[0]).streams_open == 0, 2000));
    sfx_free(f);
    TU_CHECK_THREADS();
}

/* ------------------------------------------------------------------------ */
/* Slow receivers and the hold buffer                                        */
/* ------------------------------------------------------------------------ */

/* Q21: a receiver that returns non-zero does not acknowledge: the sender's
 * send fails with deadline_exceeded "request timed out", the stream stays
 * open, the refusal is counted; once the receiver accepts, sends succeed. */
TEST(stream_receiver_refuses_then_accepts) {
    sfx *f = sfx_new(1, 3000, 500);
    REQUIRE(sfx_ok(f));
    f->srv[0]->reject = 1;
    REQUIRE(sfx_register(f, PSRPC_ROUTING_QUEUE) == PSRPC_OK);
    srec *s = NULL;
    srec *c = sfx_open_pair(f, PSRPC_ROUTING_QUEUE, NULL, &s);
    REQUIRE(c);
    uint64_t slow0 = tu_stats(f->bus[0]).dropped_slow_consumer;
    sends *sd = sends_new(3, c);
    long long t0 = th_now_ms();
    REQUIRE(send_str(H(c), "are you there", 200, sd, 0) == PSRPC_OK);
    REQUIRE(tu_wait_count(&sd->done, 1, 3000));
    long long el = th_now_ms() - t0;
    CHECK_EQ_INT(atomic_load(&sd->failed), 1);
    CHECK_EQ_INT(sd->err_status, PSRPC_DEADLINE_EXCEEDED);
    CHECK_EQ_STR(sd->err_code, "deadline_exceeded");
    CHECK_EQ_STR(sd->err_message, "request timed out");
    CHECK(el >= 190);
    CHECK(el < tu_ms(2000));
    CHECK_EQ_INT(atomic_load(&s->msgs), 1);
    CHECK_EQ_INT(atomic_load(&s->accepted), 0);
    CHECK(tu_stats(f->bus[0]).dropped_slow_consumer >= slow0 + 1);
    /* the stream is still open on both sides */
    CHECK_EQ_INT(atomic_load(&c->closes), 0);
    CHECK_EQ_INT(atomic_load(&s->closes), 0);

    atomic_store(&s->reject, 0);
    REQUIRE(send_str(H(c), "now?", 0, sd, 1) == PSRPC_OK);
    REQUIRE(tu_wait_count(&sd->done, 2, 3000));
    CHECK_EQ_INT(atomic_load(&sd->ok), 1);
    REQUIRE(tu_wait_count(&s->accepted, 1, 2000));
    char buf[256];
    sr_last(s, buf, sizeof buf);
    CHECK_EQ_STR(buf, "now?");

    /* the other direction: the client refuses, the server's send times out */
    atomic_store(&c->reject, 1);
    sends *ss = sends_new(2, NULL);
    REQUIRE(send_str(H(s), "push", 200, ss, 0) == PSRPC_OK);
    REQUIRE(tu_wait_count(&ss->done, 1, 3000));
    CHECK_EQ_INT(ss->err_status, PSRPC_DEADLINE_EXCEEDED);
    CHECK_EQ_STR(ss->err_message, "request timed out");
    atomic_store(&c->reject, 0);
    REQUIRE(send_str(H(s), "push2", 0, ss, 1) == PSRPC_OK);
    REQUIRE(tu_wait_count(&ss->done, 2, 3000));
    CHECK_EQ_INT(atomic_load(&ss->ok), 1);
    CHECK_EQ_INT(atomic_load(&c->accepted), 1);
    CHECK_EQ_INT(atomic_load(&c->closes), 0);
    CHECK_EQ_INT(atomic_load(&s->closes), 0);
    CHECK_EQ_INT(atomic_load(&sd->dup) + atomic_load(&ss->dup), 0);
    sfx_free(f);
    sends_free(sd);
    sends_free(ss);
    TU_CHECK_THREADS();
}

/* A server that sets its stream's callbacks later, from another thread:
 * messages that arrived before are held (up to 100) and delivered in order
 * once the callbacks are set; beyond 100 they are not acknowledged. */
TEST(stream_messages_held_until_callbacks_set) {
    enum { N = 105, HOLD = 100 };
    sfx *f = sfx_new(1, 3000, 500);
    REQUIRE(sfx_ok(f));
    f->srv[0]->no_callbacks = true;
    REQUIRE(sfx_register(f, PSRPC_ROUTING_QUEUE) == PSRPC_OK);
    srec *c = sfx_open(f, PSRPC_ROUTING_QUEUE, NULL);
    REQUIRE(c && sr_wait_open(c));
    REQUIRE(tu_wait_count(&f->srv[0]->accepted, 1, 5000));
    srec *s = ss_rec(f->srv[0], 0);
    REQUIRE(s);
    uint64_t slow0 = tu_stats(f->bus[0]).dropped_slow_consumer;
    sends *sd = sends_new(N + 1, c);
    char txt[32];
    for (int i = 0; i < N; i++) {
        snprintf(txt, sizeof txt, "#%d", i);
        REQUIRE(send_str(H(c), txt, tu_ms(800), sd, i) == PSRPC_OK);
    }
    /* all arrived: the 5 beyond the buffer are counted as refused */
    CHECK(WAIT_UNTIL(tu_stats(f->bus[0]).dropped_slow_consumer >= slow0 + (N - HOLD), 1000));
    CHECK_EQ_INT(atomic_load(&sd->done), 0);
    s->cbs = true;
    REQUIRE(psrpc_stream_set_callbacks(H(s), sr_on_message, sr_on_close, s, sr_release) ==
            PSRPC_OK);
    REQUIRE(tu_wait_count(&sd->done, N, 5000));
    CHECK_EQ_INT(atomic_load(&sd->ok), HOLD);
    CHECK_EQ_INT(atomic_load(&sd->failed), N - HOLD);
    CHECK_EQ_INT(sd->err_status, PSRPC_DEADLINE_EXCEEDED);
    CHECK_EQ_INT(atomic_load(&s->accepted), HOLD);
    CHECK_EQ_INT(atomic_load(&s->order_errors), 0);
    CHECK_EQ_INT(s->next_seq[0], HOLD);
    /* then messages flow directly */
    REQUIRE(send_str(H(c), "direct", 0, sd, N) == PSRPC_OK);
    REQUIRE(tu_wait_count(&sd->done, N + 1, 3000));
    CHECK_EQ_INT(atomic_load(&sd->ok), HOLD + 1);
    char buf[256];
    sr_last(s, buf, sizeof buf);
    CHECK_EQ_STR(buf, "direct");
    CHECK_EQ_INT(atomic_load(&c->closes), 0);
    sfx_free(f);
    sends_free(sd);
    TU_CHECK_THREADS();
}

/* ------------------------------------------------------------------------ */
/* Opening                                                                   */
/* ------------------------------------------------------------------------ */

/* No server: on_open reads unavailable "no response from servers" after the
 * selection timeout, on_close follows once with the same cause, release
 * once; a send made while opening completes with that cause. */
TEST(stream_open_no_server) {
    sfx *f = sfx_new(0, 3000, 200);
    REQUIRE(sfx_ok(f));
    long long t0 = th_now_ms();
    srec *c = sfx_open(f, PSRPC_ROUTING_QUEUE, NULL);
    REQUIRE(c);
    sends *sd = sends_new(1, c);
    REQUIRE(send_str(H(c), "early", 0, sd, 0) == PSRPC_OK);
    REQUIRE(tu_wait_count(&c->opens, 1, 5000));
    long long el = th_now_ms() - t0;
    CHECK_EQ_INT(c->open_status, PSRPC_UNAVAILABLE);
    CHECK_EQ_STR(c->open_code, "unavailable");
    CHECK_EQ_STR(c->open_message, "no response from servers");
    CHECK(el >= 180);
    CHECK(el < tu_ms(2500));
    REQUIRE(tu_wait_count(&c->closes, 1, 2000));
    CHECK_EQ_INT(c->close_status, PSRPC_UNAVAILABLE);
    CHECK_EQ_STR(c->close_code, "unavailable");
    CHECK_EQ_STR(c->close_message, "no response from servers");
    CHECK(tu_wait_count(&c->released, 1, 2000));
    REQUIRE(tu_wait_count(&sd->done, 1, 2000));
    CHECK_EQ_INT(sd->err_status, PSRPC_UNAVAILABLE);
    CHECK_EQ_STR(sd->err_message, "no response from servers");
    th_sleep_ms(50);
    CHECK_EQ_INT(atomic_load(&c->opens), 1);
    CHECK_EQ_INT(atomic_load(&c->closes), 1);
    CHECK_EQ_INT(atomic_load(&c->released), 1);
    CHECK_EQ_INT(atomic_load(&c->msgs), 0);
    CHECK_EQ_INT(tu_stats(f->cbus).streams_open, 0);
    CHECK_EQ_INT(tu_stats(f->cbus).requests_in_flight, 0);
    sfx_free(f);
    sends_free(sd);
    TU_CHECK_THREADS();
}

/* Every server declines (negative affinity): the open fails unavailable. */
TEST(stream_open_every_server_declines) {
    sfx *f = sfx_new(2, 3000, 200);
    REQUIRE(sfx_ok(f));
    for (int i = 0; i < 2; i++) {
        f->srv[i]->aff_mode = AFF_SYNC;
        f->srv[i]->affinity = -1.0f;
    }
    REQUIRE(sfx_register(f, PSRPC_ROUTING_AFFINITY) == PSRPC_OK);
    srec *c = sfx_open(f, PSRPC_ROUTING_AFFINITY, NULL);
    REQUIRE(c);
    REQUIRE(tu_wait_count(&c->closes, 1, 5000));
    CHECK_EQ_INT(c->open_status, PSRPC_UNAVAILABLE);
    CHECK_EQ_STR(c->open_message, "no response from servers");
    CHECK_EQ_INT(c->close_status, PSRPC_UNAVAILABLE);
    CHECK_EQ_INT(atomic_load(&f->srv[0]->affinity_calls), 1);
    CHECK_EQ_INT(atomic_load(&f->srv[1]->affinity_calls), 1);
    th_sleep_ms(100);
    CHECK_EQ_INT(atomic_load(&f->srv[0]->accepted) + atomic_load(&f->srv[1]->accepted), 0);
    CHECK_EQ_INT(tu_stats(f->bus[0]).streams_open + tu_stats(f->bus[1]).streams_open, 0);
    sfx_free(f);
}

/* AFFINITY routing among 3 servers of affinity 0.2, 0.9 and 0.5 (the best
 * answering from another thread): the best one gets every stream; the
 * affinity question carries the opener's id and metadata and no payload. */
TEST(stream_affinity_best_of_three) {
    enum { OPENS = 3 };
    sfx *f = sfx_new(3, 3000, 1000);
    REQUIRE(sfx_ok(f));
    const float aff[3] = {0.2f, 0.9f, 0.5f};
    for (int i = 0; i < 3; i++) {
        f->srv[i]->aff_mode = i == 1 ? AFF_THREAD : AFF_SYNC;
        f->srv[i]->affinity = aff[i];
        f->srv[i]->echo = true;
    }
    REQUIRE(sfx_register(f, PSRPC_ROUTING_AFFINITY) == PSRPC_OK);
    psrpc_kv md[1] = {{"room", "r1"}};
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.metadata = md;
    o.metadata_count = 1;
    for (int k = 0; k < OPENS; k++) {
        srec *c = sfx_open(f, PSRPC_ROUTING_AFFINITY, &o);
        REQUIRE(c && sr_wait_open(c));
        REQUIRE(tu_wait_count(&f->srv[1]->accepted, k + 1, 5000));
        /* the stream works end to end */
        sends *sd = sends_new(1, c);
        REQUIRE(send_str(H(c), "ping", 0, sd, 0) == PSRPC_OK);
        REQUIRE(tu_wait_count(&sd->done, 1, 3000));
        CHECK_EQ_INT(atomic_load(&sd->ok), 1);
        REQUIRE(tu_wait_count(&c->accepted, 1, 3000));
        sends_free(sd);
        srec *s = ss_rec(f->srv[1], k);
        REQUIRE(s);
        CHECK_EQ_STR(psrpc_stream_id(H(s)), psrpc_stream_id(H(c)));
    }
    th_sleep_ms(100);
    CHECK_EQ_INT(atomic_load(&f->srv[1]->accepted), OPENS);
    CHECK_EQ_INT(atomic_load(&f->srv[0]->accepted), 0);
    CHECK_EQ_INT(atomic_load(&f->srv[2]->accepted), 0);
    for (int i = 0; i < 3; i++) {
        CHECK_EQ_INT(atomic_load(&f->srv[i]->affinity_calls), OPENS);
        pthread_mutex_lock(&f->srv[i]->mu);
        CHECK_EQ_STR(f->srv[i]->aff_client_id, psrpc_client_id(f->cl));
        CHECK_EQ_STR(f->srv[i]->aff_room, "r1");
        CHECK_EQ_INT(f->srv[i]->aff_payload_len, 0);
        pthread_mutex_unlock(&f->srv[i]->mu);
    }
    CHECK_EQ_INT(tu_stats(f->bus[1]).streams_open, OPENS);
    CHECK_EQ_INT(tu_stats(f->bus[0]).streams_open, 0);
    CHECK_EQ_INT(tu_stats(f->bus[2]).streams_open, 0);
    sfx_free(f);
    TU_CHECK_THREADS();
}

/* Sends made before the open completes wait for it and are delivered after
 * it, in order; none completes before on_open. */
TEST(stream_sends_before_open_delivered_after) {
    enum { N = 5 };
    sfx *f = sfx_new(1, 3000, 1000);
    REQUIRE(sfx_ok(f));
    f->srv[0]->aff_mode = AFF_SYNC;
    f->srv[0]->affinity_delay_ms = 150; /* keeps the open in progress */
    REQUIRE(sfx_register(f, PSRPC_ROUTING_QUEUE) == PSRPC_OK);
    srec *c = sfx_open(f, PSRPC_ROUTING_QUEUE, NULL);
    REQUIRE(c);
    sends *sd = sends_new(N, c);
    char txt[32];
    for (int i = 0; i < N; i++) {
        snprintf(txt, sizeof txt, "#%d", i);
        REQUIRE(send_str(H(c), txt, 0, sd, i) == PSRPC_OK);
    }
    CHECK_EQ_INT(atomic_load(&c->opens), 0); /* still opening when they were sent */
    REQUIRE(tu_wait_count(&sd->done, N, 5000));
    CHECK_EQ_INT(atomic_load(&c->opens), 1);
    CHECK_EQ_INT(c->open_status, PSRPC_OK);
    CHECK_EQ_INT(atomic_load(&sd->ok), N);
    CHECK_EQ_INT(atomic_load(&sd->before_open), 0);
    REQUIRE(tu_wait_count(&f->srv[0]->accepted, 1, 2000));
    srec *s = ss_rec(f->srv[0], 0);
    REQUIRE(s);
    REQUIRE(tu_wait_count(&s->accepted, N, 2000));
    CHECK_EQ_INT(atomic_load(&s->order_errors), 0);
    CHECK_EQ_INT(s->next_seq[0], N);
    sfx_free(f);
    sends_free(sd);
    TU_CHECK_THREADS();
}

/* Metadata given on open is visible on the server side; ids and method name
 * agree on both sides; node id is the client's id. */
TEST(stream_metadata_and_ids) {
    sfx *f = sfx_new(1, 3000, 500);
    REQUIRE(sfx_ok(f));
    REQUIRE(sfx_register(f, PSRPC_ROUTING_QUEUE) == PSRPC_OK);
    psrpc_kv md[2] = {{"room", "r1"}, {"user", "alice \xc3\xa9"}};
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.metadata = md;
    o.metadata_count = 2;
    srec *s = NULL;
    srec *c = sfx_open_pair(f, PSRPC_ROUTING_QUEUE, &o, &s);
    REQUIRE(c);
    psrpc_stream *ss = H(s), *cs = H(c);
    CHECK_EQ_INT(psrpc_stream_metadata_count(ss), 2);
    CHECK_EQ_STR(psrpc_stream_metadata_get(ss, "room"), "r1");
    CHECK_EQ_STR(psrpc_stream_metadata_get(ss, "user"), "alice \xc3\xa9");
    CHECK(psrpc_stream_metadata_get(ss, "missing") == NULL);
    int seen_room = 0, seen_user = 0;
    for (size_t i = 0; i < 2; i++) {
        const char *k = NULL, *v = NULL;
        CHECK_EQ_INT(psrpc_stream_metadata_at(ss, i, &k, &v), PSRPC_OK);
        if (k && v && strcmp(k, "room") == 0 && strcmp(v, "r1") == 0)
            seen_room++;
        if (k && v && strcmp(k, "user") == 0 && strcmp(v, "alice \xc3\xa9") == 0)
            seen_user++;
    }
    CHECK_EQ_INT(seen_room, 1);
    CHECK_EQ_INT(seen_user, 1);
    const char *k = NULL, *v = NULL;
    psrpc_clear_error();
    CHECK_EQ_INT(psrpc_stream_metadata_at(ss, 2, &k, &v), PSRPC_OUT_OF_RANGE);
    CHECK(psrpc_last_error()[0] != 0);
    /* the client side holds what it sent */
    CHECK_EQ_INT(psrpc_stream_metadata_count(cs), 2);
    CHECK_EQ_STR(psrpc_stream_metadata_get(cs, "room"), "r1");
    /* ids */
    CHECK_EQ_STR(psrpc_stream_node_id(ss), psrpc_client_id(f->cl));
    CHECK_EQ_STR(psrpc_stream_node_id(cs), psrpc_client_id(f->cl));
    CHECK_EQ_STR(psrpc_stream_id(ss), psrpc_stream_id(cs));
    CHECK(psrpc_stream_id(cs) && strncmp(psrpc_stream_id(cs), "STR_", 4) == 0);
    CHECK_EQ_STR(psrpc_stream_method(ss), "Chat");
    CHECK_EQ_STR(psrpc_stream_method(cs), "Chat");
    /* no metadata: count 0 */
    srec *s2 = NULL;
    srec *c2 = sfx_open_pair(f, PSRPC_ROUTING_QUEUE, NULL, &s2);
    REQUIRE(c2);
    CHECK_EQ_INT(psrpc_stream_metadata_count(H(s2)), 0);
    CHECK(psrpc_stream_metadata_get(H(s2), "room") == NULL);
    CHECK(strcmp(psrpc_stream_id(H(c2)), psrpc_stream_id(cs)) != 0);
    sfx_free(f);
}

/* L3: 1,000 failed opens (no server; every 4th also closed by the user while
 * opening): each reports on_open and on_close once and releases once; no
 * stream stays counted open; nothing leaks (ASan/LSan runs). */
TEST(stream_1000_failed_opens_leave_nothing) {
    enum { N = 1000 };
    sfx *f = sfx_new(0, 2000, 100);
    REQUIRE(sfx_ok(f));
    for (int i = 0; i < N; i++) {
        srec *c = sfx_open(f, PSRPC_ROUTING_QUEUE, NULL);
        REQUIRE(c);
        if (i % 4 == 3)
            REQUIRE(psrpc_stream_close(H(c), 0, NULL) == PSRPC_OK);
    }
    for (int i = 0; i < N; i++)
        REQUIRE(tu_wait_count(&f->crec[i]->released, 1, 10000));
    int unavailable = 0, canceled = 0, other = 0;
    for (int i = 0; i < N; i++) {
        srec *c = f->crec[i];
        CHECK_EQ_INT(atomic_load(&c->opens), 1);
        CHECK_EQ_INT(atomic_load(&c->closes), 1);
        if (i % 4 == 3 && c->open_status == PSRPC_CANCELED &&
            strcmp(c->close_message, "stream closed") == 0)
            canceled++;
        else if (c->open_status == PSRPC_UNAVAILABLE && c->close_status == PSRPC_UNAVAILABLE)
            unavailable++;
        else if (other++ < 3)
            fprintf(stderr, "  open %d: on_open %s %s, on_close %s %s\n", i, c->open_code,
                    c->open_message, c->close_code, c->close_message);
    }
    CHECK_EQ_INT(other, 0);
    CHECK_EQ_INT(canceled + unavailable, N);
    CHECK_EQ_INT(tu_stats(f->cbus).streams_open, 0);
    CHECK(WAIT_UNTIL(tu_stats(f->cbus).requests_in_flight == 0, 3000));
    for (int i = 0; i < N; i++)
        psrpc_stream_free(atomic_exchange(&f->crec[i]->handle, NULL));
    CHECK_EQ_INT(tu_stats(f->cbus).streams_open, 0);
    sfx_free(f);
    TU_CHECK_THREADS();
}

/* ------------------------------------------------------------------------ */
/* Streams ended by their owners                                             */
/* ------------------------------------------------------------------------ */

/* L7-like: a server closing with 10 open streams ends each of them with
 * unavailable "EOF" on the client; the server's own streams see it too; later
 * opens find no server. */
TEST(stream_server_close_ends_streams_with_eof) {
    enum { N = 10 };
    sfx *f = sfx_new(1, 3000, 200);
    REQUIRE(sfx_ok(f));
    REQUIRE(sfx_register(f, PSRPC_ROUTING_QUEUE) == PSRPC_OK);
    srec *c[N], *s[N];
    for (int i = 0; i < N; i++)
        REQUIRE((c[i] = sfx_open_pair(f, PSRPC_ROUTING_QUEUE, NULL, &s[i])) != NULL);
    CHECK_EQ_INT(tu_stats(f->bus[0]).streams_open, N);
    CHECK_EQ_INT(tu_stats(f->cbus).streams_open, N);
    atomic_int *closed = (atomic_int *)calloc(1, sizeof *closed);
    REQUIRE(psrpc_server_close(f->srv[0]->server, 0, tu_count_cb, closed) == PSRPC_OK);
    for (int i = 0; i < N; i++) {
        REQUIRE(tu_wait_count(&c[i]->closes, 1, 5000));
        CHECK_EQ_INT(c[i]->close_status, PSRPC_UNAVAILABLE);
        CHECK_EQ_STR(c[i]->close_code, "unavailable");
        CHECK_EQ_STR(c[i]->close_message, "EOF");
        REQUIRE(tu_wait_count(&s[i]->closes, 1, 5000));
        CHECK_EQ_INT(s[i]->close_status, PSRPC_UNAVAILABLE);
        CHECK_EQ_STR(s[i]->close_message, "EOF");
        CHECK(tu_wait_count(&s[i]->released, 1, 2000));
        CHECK(tu_wait_count(&c[i]->released, 1, 2000));
    }
    CHECK(tu_wait_count(closed, 1, 5000));
    CHECK(tu_wait_count(&f->srv[0]->reg_released, 1, 5000));
    CHECK(WAIT_UNTIL(tu_stats(f->bus[0]).streams_open == 0, 2000));
    CHECK(WAIT_UNTIL(tu_stats(f->cbus).streams_open == 0, 2000));
    /* sends on an ended stream complete with its cause */
    sends *sd = sends_new(1, c[0]);
    REQUIRE(send_str(H(c[0]), "anyone?", 0, sd, 0) == PSRPC_OK);
    REQUIRE(tu_wait_count(&sd->done, 1, 2000));
    CHECK_EQ_INT(sd->err_status, PSRPC_UNAVAILABLE);
    CHECK_EQ_STR(sd->err_message, "EOF");
    /* new opens are refused: there is no server any more */
    srec *late = sfx_open(f, PSRPC_ROUTING_QUEUE, NULL);
    REQUIRE(late);
    REQUIRE(tu_wait_count(&late->closes, 1, 5000));
    CHECK_EQ_INT(late->open_status, PSRPC_UNAVAILABLE);
    th_sleep_ms(50);
    for (int i = 0; i < N; i++) {
        CHECK_EQ_INT(atomic_load(&c[i]->closes), 1);
        CHECK_EQ_INT(atomic_load(&s[i]->closes), 1);
    }
    CHECK_EQ_INT(atomic_load(&f->srv[0]->accepted), N);
    sfx_free(f);
    CHECK_EQ_INT(atomic_load(closed), 1);
    free(closed);
    sends_free(sd);
    TU_CHECK_THREADS();
}

/* Deregistering the method ends its 10 open streams with unavailable "EOF";
 * a stream of another method of the same server stays open and working. */
TEST(stream_deregister_ends_streams_with_eof) {
    enum { N = 10 };
    sfx *f = sfx_new(1, 3000, 200);
    REQUIRE(sfx_ok(f));
    REQUIRE(sfx_register(f, PSRPC_ROUTING_QUEUE) == PSRPC_OK);
    psrpc_method other = tu_method("Chat2", PSRPC_ROUTING_QUEUE, PSRPC_METHOD_STREAM);
    ssrv *s2 = ss_new(f->bus[0], f->service);
    REQUIRE(s2->server);
    REQUIRE(ss_register(s2, &other) == PSRPC_OK);
    srec *c[N], *s[N];
    for (int i = 0; i < N; i++)
        REQUIRE((c[i] = sfx_open_pair(f, PSRPC_ROUTING_QUEUE, NULL, &s[i])) != NULL);
    srec *oc = sfx_open_m(f, &other, NULL);
    REQUIRE(oc && sr_wait_open(oc));
    REQUIRE(tu_wait_count(&s2->accepted, 1, 5000));
    REQUIRE(psrpc_server_deregister(f->srv[0]->server, "Chat", NULL, 0) == PSRPC_OK);
    for (int i = 0; i < N; i++) {
        REQUIRE(tu_wait_count(&c[i]->closes, 1, 5000));
        CHECK_EQ_INT(c[i]->close_status, PSRPC_UNAVAILABLE);
        CHECK_EQ_STR(c[i]->close_code, "unavailable");
        CHECK_EQ_STR(c[i]->close_message, "EOF");
        REQUIRE(tu_wait_count(&s[i]->closes, 1, 5000));
        CHECK_EQ_INT(s[i]->close_status, PSRPC_UNAVAILABLE);
        CHECK_EQ_STR(s[i]->close_message, "EOF");
    }
    CHECK(tu_wait_count(&f->srv[0]->reg_released, 1, 5000));
    th_sleep_ms(100);
    /* the other method's stream is untouched */
    CHECK_EQ_INT(atomic_load(&oc->closes), 0);
    sends *sd = sends_new(1, oc);
    REQUIRE(send_str(H(oc), "still here", 0, sd, 0) == PSRPC_OK);
    REQUIRE(tu_wait_count(&sd->done, 1, 3000));
    CHECK_EQ_INT(atomic_load(&sd->ok), 1);
    CHECK_EQ_INT(tu_stats(f->cbus).streams_open, 1);
    /* the deregistered method takes no new streams */
    srec *late = sfx_open(f, PSRPC_ROUTING_QUEUE, NULL);
    REQUIRE(late);
    REQUIRE(tu_wait_count(&late->closes, 1, 5000));
    CHECK_EQ_INT(late->open_status, PSRPC_UNAVAILABLE);
    CHECK_EQ_INT(atomic_load(&f->srv[0]->accepted), N);
    /* s2 shares the fixture's first bus: free it before the buses go */
    psrpc_stream_free(atomic_exchange(&ss_rec(s2, 0)->handle, NULL));
    psrpc_server_free(s2->server);
    sfx_free(f);
    CHECK_EQ_INT(atomic_load(&s2->reg_released), 1);
    srec *r2 = s2->recs[0];
    CHECK_EQ_INT(atomic_load(&r2->closes), 1);
    CHECK_EQ_INT(atomic_load(&r2->released), 1);
    sr_free(r2);
    pthread_mutex_destroy(&s2->mu);
    free(s2);
    sends_free(sd);
    TU_CHECK_THREADS();
}

/* Closing the client ends its streams cleanly: the server side reads
 * canceled "stream closed". */
TEST(stream_client_close_cancels_streams) {
    enum { N = 3 };
    sfx *f = sfx_new(1, 3000, 500);
    REQUIRE(sfx_ok(f));
    REQUIRE(sfx_register(f, PSRPC_ROUTING_QUEUE) == PSRPC_OK);
    srec *c[N], *s[N];
    for (int i = 0; i < N; i++)
        REQUIRE((c[i] = sfx_open_pair(f, PSRPC_ROUTING_QUEUE, NULL, &s[i])) != NULL);
    atomic_int *closed = (atomic_int *)calloc(1, sizeof *closed);
    REQUIRE(psrpc_client_close(f->cl, tu_count_cb, closed) == PSRPC_OK);
    for (int i = 0; i < N; i++) {
        REQUIRE(tu_wait_count(&s[i]->closes, 1, 5000));
        CHECK_EQ_INT(s[i]->close_status, PSRPC_CANCELED);
        CHECK_EQ_STR(s[i]->close_code, "canceled");
        CHECK_EQ_STR(s[i]->close_message, "stream closed");
        REQUIRE(tu_wait_count(&c[i]->closes, 1, 5000));
        CHECK_EQ_INT(c[i]->close_status, PSRPC_CANCELED);
        CHECK(tu_wait_count(&c[i]->released, 1, 2000));
    }
    CHECK(tu_wait_count(closed, 1, 5000));
    CHECK(WAIT_UNTIL(tu_stats(f->bus[0]).streams_open == 0, 2000));
    CHECK(WAIT_UNTIL(tu_stats(f->cbus).streams_open == 0, 2000));
    /* opening on a closed client is refused synchronously */
    psrpc_method m = chat_method(PSRPC_ROUTING_QUEUE);
    psrpc_stream *st = (psrpc_stream *)0x1;
    atomic_int *rel = (atomic_int *)calloc(1, sizeof *rel);
    CHECK_EQ_INT(psrpc_client_open_stream(&st, f->cl, &m, NULL, NULL, sr_on_message, sr_on_close,
                                          rel, tu_count_cb),
                 PSRPC_CANCELED);
    CHECK(st == NULL);
    sfx_free(f);
    CHECK_EQ_INT(atomic_load(rel), 0);
    free(rel);
    free(closed);
    TU_CHECK_THREADS();
}

/* ------------------------------------------------------------------------ */
/* Pending sends                                                             */
/* ------------------------------------------------------------------------ */

/* L1: sends waiting for their acks complete with the close cause as soon as
 * the stream closes, from the peer (its error) or locally (canceled). */
static void check_pending_sends(bool remote) {
    enum { N = 5 };
    sfx *f = sfx_new(1, 3000, 500);
    REQUIRE(sfx_ok(f));
    f->srv[0]->reject = 1; /* never acknowledges */
    REQUIRE(sfx_register(f, PSRPC_ROUTING_QUEUE) == PSRPC_OK);
    srec *s = NULL;
    srec *c = sfx_open_pair(f, PSRPC_ROUTING_QUEUE, NULL, &s);
    REQUIRE(c);
    sends *sd = sends_new(N, c);
    for (int i = 0; i < N; i++)
        REQUIRE(send_str(H(c), "waiting", 10000, sd, i) == PSRPC_OK);
    REQUIRE(tu_wait_count(&s->msgs, N, 3000));
    th_sleep_ms(20);
    CHECK_EQ_INT(atomic_load(&sd->done), 0);
    long long t0 = th_now_ms();
    if (remote)
        REQUIRE(psrpc_stream_close(H(s), PSRPC_ABORTED, "room closed") == PSRPC_OK);
    else
        REQUIRE(psrpc_stream_close(H(c), 0, NULL) == PSRPC_OK);
    REQUIRE(tu_wait_count(&sd->done, N, 3000));
    long long el = th_now_ms() - t0;
    CHECK(el < tu_ms(1000)); /* far from the 10 s send timeout */
    CHECK_EQ_INT(atomic_load(&sd->failed), N);
    CHECK_EQ_INT(atomic_load(&sd->mismatch), 0);
    CHECK_EQ_INT(atomic_load(&sd->dup), 0);
    if (remote) {
        CHECK_EQ_INT(sd->err_status, PSRPC_ABORTED);
        CHECK_EQ_STR(sd->err_code, "aborted");
        CHECK_EQ_STR(sd->err_message, "room closed");
    } else {
        CHECK_EQ_INT(sd->err_status, PSRPC_CANCELED);
        CHECK_EQ_STR(sd->err_message, "stream closed");
    }
    REQUIRE(tu_wait_count(&c->closes, 1, 2000));
    CHECK_EQ_INT(c->close_status, sd->err_status);
    CHECK_EQ_STR(c->close_message, sd->err_message);
    sfx_free(f);
    sends_free(sd);
    TU_CHECK_THREADS();
}

TEST(stream_pending_sends_fail_on_remote_close) { check_pending_sends(true); }

TEST(stream_pending_sends_fail_on_local_close) { check_pending_sends(false); }

/* Sends queued while opening complete with canceled when the user closes the
 * stream before the open finished. */
TEST(stream_close_while_opening) {
    sfx *f = sfx_new(1, 3000, 1000);
    REQUIRE(sfx_ok(f));
    f->srv[0]->aff_mode = AFF_SYNC;
    f->srv[0]->affinity_delay_ms = 200;
    REQUIRE(sfx_register(f, PSRPC_ROUTING_QUEUE) == PSRPC_OK);
    srec *c = sfx_open(f, PSRPC_ROUTING_QUEUE, NULL);
    REQUIRE(c);
    sends *sd = sends_new(3, c);
    for (int i = 0; i < 3; i++)
        REQUIRE(send_str(H(c), "queued", 0, sd, i) == PSRPC_OK);
    REQUIRE(psrpc_stream_close(H(c), 0, NULL) == PSRPC_OK);
    REQUIRE(tu_wait_count(&c->closes, 1, 3000));
    CHECK_EQ_INT(atomic_load(&c->opens), 1);
    CHECK_EQ_INT(c->open_status, PSRPC_CANCELED);
    CHECK_EQ_INT(c->close_status, PSRPC_CANCELED);
    CHECK_EQ_STR(c->close_message, "stream closed");
    REQUIRE(tu_wait_count(&sd->done, 3, 3000));
    CHECK_EQ_INT(atomic_load(&sd->failed), 3);
    CHECK_EQ_INT(sd->err_status, PSRPC_CANCELED);
    /* whatever the server did with the open (its claim comes after the
     * close), nothing reaches it and nothing stays open there */
    th_sleep_ms(400);
    CHECK_EQ_INT(atomic_load(&c->closes), 1);
    CHECK(WAIT_UNTIL(tu_stats(f->bus[0]).streams_open == 0, 1000));
    srec *s = ss_rec(f->srv[0], 0);
    if (s) {
        fprintf(stderr, "  the server accepted the abandoned open\n");
        CHECK_EQ_INT(atomic_load(&s->msgs), 0);
        CHECK(tu_wait_count(&s->closes, 1, 1000));
    }
    sfx_free(f);
    sends_free(sd);
    TU_CHECK_THREADS();
}

/* ------------------------------------------------------------------------ */
/* Callbacks and arguments                                                   */
/* ------------------------------------------------------------------------ */

/* psrpc_stream_set_callbacks a second time: ALREADY_EXISTS, the second
 * release never runs; on a client stream: INVALID_ARGUMENT. */
TEST(stream_set_callbacks_twice) {
    sfx *f = sfx_new(1, 3000, 500);
    REQUIRE(sfx_ok(f));
    REQUIRE(sfx_register(f, PSRPC_ROUTING_QUEUE) == PSRPC_OK);
    srec *s = NULL;
    srec *c = sfx_open_pair(f, PSRPC_ROUTING_QUEUE, NULL, &s);
    REQUIRE(c);
    srec *other = sr_new();
    psrpc_clear_error();
    CHECK_EQ_INT(psrpc_stream_set_callbacks(H(s), sr_on_message, sr_on_close, other, sr_release),
                 PSRPC_ALREADY_EXISTS);
    CHECK(psrpc_last_error()[0] != 0);
    psrpc_clear_error();
    CHECK_EQ_INT(psrpc_stream_set_callbacks(H(c), sr_on_message, sr_on_close, other, sr_release),
                 PSRPC_INVALID_ARGUMENT);
    CHECK(psrpc_last_error()[0] != 0);
    /* the first callbacks stay in force */
    sends *sd = sends_new(1, c);
    REQUIRE(send_str(H(c), "to the first", 0, sd, 0) == PSRPC_OK);
    REQUIRE(tu_wait_count(&s->accepted, 1, 3000));
    sfx_free(f);
    CHECK_EQ_INT(atomic_load(&other->msgs), 0);
    CHECK_EQ_INT(atomic_load(&other->closes), 0);
    CHECK_EQ_INT(atomic_load(&other->released), 0);
    sr_free(other);
    sends_free(sd);
}

static void never_handler(psrpc_stream *st, void *ud) {
    (void)st;
    atomic_fetch_add((atomic_int *)ud, 100);
}

static void never_unary(psrpc_request *req, void *ud) {
    (void)ud;
    psrpc_request_fail(req, PSRPC_INTERNAL, "unexpected");
}

#define EXPECT_INVALID(call)                                                                \
    do {                                                                                    \
        psrpc_clear_error();                                                                \
        int rc_ = (call);                                                                   \
        if (rc_ != PSRPC_INVALID_ARGUMENT)                                                  \
            fprintf(stderr, "  %s returned %d (%s)\n", #call, rc_, psrpc_status_name(rc_)); \
        CHECK_EQ_INT(rc_, PSRPC_INVALID_ARGUMENT);                                          \
        CHECK(psrpc_last_error()[0] != 0);                                                  \
        nchecked++;                                                                         \
    } while (0)

/* NULL and wrong arguments on every stream function: INVALID_ARGUMENT with a
 * message, no crash, and no callback or release ever runs for a refused
 * call. */
TEST(stream_bad_arguments) {
    int nchecked = 0;
    sfx *f = sfx_new(1, 3000, 500);
    REQUIRE(sfx_ok(f));
    REQUIRE(sfx_register(f, PSRPC_ROUTING_QUEUE) == PSRPC_OK);
    srec *s = NULL;
    srec *c = sfx_open_pair(f, PSRPC_ROUTING_QUEUE, NULL, &s);
    REQUIRE(c);
    psrpc_stream *cs = H(c);
    srec *never = sr_new(); /* user data of every refused call */
    atomic_int *never_count = (atomic_int *)calloc(1, sizeof *never_count);
    psrpc_stream *junk = (psrpc_stream *)calloc(1, 512);
    psrpc_stream *wrong = (psrpc_stream *)f->cl; /* another kind of handle */
    psrpc_method m = chat_method(PSRPC_ROUTING_QUEUE);
    psrpc_method unary = tu_method("Chat", PSRPC_ROUTING_QUEUE, 0);
    psrpc_method unnamed = chat_method(PSRPC_ROUTING_QUEUE);
    unnamed.name = NULL;
    psrpc_method subst =
        tu_method("Feed", PSRPC_ROUTING_QUEUE, PSRPC_METHOD_STREAM | PSRPC_METHOD_SUBSCRIPTION);

    /* psrpc_client_open_stream */
    psrpc_stream *out = (psrpc_stream *)0x1;
    EXPECT_INVALID(psrpc_client_open_stream(NULL, f->cl, &m, NULL, sr_on_open, sr_on_message,
                                            sr_on_close, never, sr_release));
    EXPECT_INVALID(psrpc_client_open_stream(&out, NULL, &m, NULL, sr_on_open, sr_on_message,
                                            sr_on_close, never, sr_release));
    CHECK(out == NULL);
    out = (psrpc_stream *)0x1;
    EXPECT_INVALID(psrpc_client_open_stream(&out, f->cl, NULL, NULL, sr_on_open, sr_on_message,
                                            sr_on_close, never, sr_release));
    CHECK(out == NULL);
    EXPECT_INVALID(psrpc_client_open_stream(&out, (psrpc_client *)junk, &m, NULL, sr_on_open,
                                            sr_on_message, sr_on_close, never, sr_release));
    EXPECT_INVALID(psrpc_client_open_stream(&out, f->cl, &unary, NULL, sr_on_open, sr_on_message,
                                            sr_on_close, never, sr_release));
    EXPECT_INVALID(psrpc_client_open_stream(&out, f->cl, &unnamed, NULL, sr_on_open, sr_on_message,
                                            sr_on_close, never, sr_release));
    EXPECT_INVALID(psrpc_client_open_stream(&out, f->cl, &subst, NULL, sr_on_open, sr_on_message,
                                            sr_on_close, never, sr_release));
    {
        psrpc_kv bad_md[1] = {{"k", NULL}};
        psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
        o.metadata = bad_md;
        o.metadata_count = 1;
        EXPECT_INVALID(psrpc_client_open_stream(&out, f->cl, &m, &o, sr_on_open, sr_on_message,
                                                sr_on_close, never, sr_release));
        psrpc_call_options o2 = PSRPC_CALL_OPTIONS_INIT;
        o2.timeout_ms = -1;
        EXPECT_INVALID(psrpc_client_open_stream(&out, f->cl, &m, &o2, sr_on_open, sr_on_message,
                                                sr_on_close, never, sr_release));
        psrpc_call_options o3 = PSRPC_CALL_OPTIONS_INIT;
        o3.topic_count = 1; /* topics NULL */
        EXPECT_INVALID(psrpc_client_open_stream(&out, f->cl, &m, &o3, sr_on_open, sr_on_message,
                                                sr_on_close, never, sr_release));
        psrpc_call_options o4 = PSRPC_CALL_OPTIONS_INIT;
        o4.struct_size = 0;
        EXPECT_INVALID(psrpc_client_open_stream(&out, f->cl, &m, &o4, sr_on_open, sr_on_message,
                                                sr_on_close, never, sr_release));
    }
    CHECK(out == NULL);

    /* psrpc_server_register_stream / psrpc_server_register */
    psrpc_method other = tu_method("Other", PSRPC_ROUTING_QUEUE, PSRPC_METHOD_STREAM);
    psrpc_server *srv = f->srv[0]->server;
    EXPECT_INVALID(psrpc_server_register_stream(NULL, &other, NULL, 0, never_handler, NULL, NULL,
                                                never_count, tu_count_cb));
    EXPECT_INVALID(psrpc_server_register_stream((psrpc_server *)junk, &other, NULL, 0,
                                                never_handler, NULL, NULL, never_count,
                                                tu_count_cb));
    EXPECT_INVALID(psrpc_server_register_stream(srv, NULL, NULL, 0, never_handler, NULL, NULL,
                                                never_count, tu_count_cb));
    EXPECT_INVALID(psrpc_server_register_stream(srv, &other, NULL, 0, NULL, NULL, NULL, never_count,
                                                tu_count_cb));
    {
        psrpc_method o_unary = tu_method("Other", PSRPC_ROUTING_QUEUE, 0);
        EXPECT_INVALID(psrpc_server_register_stream(srv, &o_unary, NULL, 0, never_handler, NULL,
                                                    NULL, never_count, tu_count_cb));
        EXPECT_INVALID(psrpc_server_register(srv, &other, NULL, 0, never_unary, NULL, NULL,
                                             never_count, tu_count_cb));
        EXPECT_INVALID(psrpc_server_register_stream(srv, &other, NULL, 2, never_handler, NULL, NULL,
                                                    never_count, tu_count_cb));
    }
    /* the same stream method twice */
    psrpc_clear_error();
    CHECK_EQ_INT(psrpc_server_register_stream(srv, &m, NULL, 0, never_handler, NULL, NULL,
                                              never_count, tu_count_cb),
                 PSRPC_ALREADY_EXISTS);
    CHECK(psrpc_last_error()[0] != 0);

    /* psrpc_stream_set_callbacks */
    EXPECT_INVALID(psrpc_stream_set_callbacks(NULL, sr_on_message, sr_on_close, never, sr_release));
    EXPECT_INVALID(psrpc_stream_set_callbacks(junk, sr_on_message, sr_on_close, never, sr_release));
    EXPECT_INVALID(
        psrpc_stream_set_callbacks(wrong, sr_on_message, sr_on_close, never, sr_release));

    /* psrpc_stream_send */
    sends *sd = sends_new(1, NULL);
    EXPECT_INVALID(psrpc_stream_send(NULL, "x", 1, 0, sends_cb, &sd->slots[0]));
    EXPECT_INVALID(psrpc_stream_send(junk, "x", 1, 0, sends_cb, &sd->slots[0]));
    EXPECT_INVALID(psrpc_stream_send(wrong, "x", 1, 0, sends_cb, &sd->slots[0]));
    EXPECT_INVALID(psrpc_stream_send(cs, NULL, 5, 0, sends_cb, &sd->slots[0]));
    EXPECT_INVALID(psrpc_stream_send(cs, "x", 1, -1, sends_cb, &sd->slots[0]));
    {
        size_t big = 2u << 20; /* over the 1 MiB default maximum */
        char *buf = (char *)calloc(1, big);
        psrpc_clear_error();
        CHECK_EQ_INT(psrpc_stream_send(cs, buf, big, 0, sends_cb, &sd->slots[0]),
                     PSRPC_RESOURCE_EXHAUSTED);
        CHECK(psrpc_last_error()[0] != 0);
        free(buf);
    }

    /* psrpc_stream_close */
    EXPECT_INVALID(psrpc_stream_close(NULL, 0, NULL));
    EXPECT_INVALID(psrpc_stream_close(junk, 0, NULL));
    EXPECT_INVALID(psrpc_stream_close(wrong, 0, NULL));
    EXPECT_INVALID(psrpc_stream_close(cs, 5, "positive"));
    EXPECT_INVALID(psrpc_stream_close(cs, PSRPC_INTERNAL, "bad \xff utf-8"));

    /* psrpc_stream_free: NULL and foreign handles are ignored */
    psrpc_stream_free(NULL);
    psrpc_stream_free(junk);

    /* accessors */
    CHECK(psrpc_stream_id(NULL) == NULL);
    CHECK(psrpc_stream_node_id(NULL) == NULL);
    CHECK(psrpc_stream_method(NULL) == NULL);
    CHECK_EQ_INT(psrpc_stream_metadata_count(NULL), 0);
    CHECK(psrpc_stream_metadata_get(NULL, "k") == NULL);
    CHECK(psrpc_stream_id(junk) == NULL);
    CHECK(psrpc_stream_node_id(wrong) == NULL);
    CHECK(psrpc_stream_method(junk) == NULL);
    CHECK_EQ_INT(psrpc_stream_metadata_count(junk), 0);
    CHECK(psrpc_stream_metadata_get(junk, "k") == NULL);
    CHECK(psrpc_stream_metadata_get(cs, NULL) == NULL);
    const char *k = NULL, *v = NULL;
    EXPECT_INVALID(psrpc_stream_metadata_at(NULL, 0, &k, &v));
    EXPECT_INVALID(psrpc_stream_metadata_at(junk, 0, &k, &v));
    EXPECT_INVALID(psrpc_stream_metadata_at(cs, 0, NULL, &v));
    EXPECT_INVALID(psrpc_stream_metadata_at(cs, 0, &k, NULL));

    /* the stream is untouched by all this */
    th_sleep_ms(100);
    CHECK_EQ_INT(atomic_load(&c->closes), 0);
    CHECK_EQ_INT(atomic_load(&s->closes), 0);
    sends *ok = sends_new(1, c);
    REQUIRE(send_str(cs, "fine", 0, ok, 0) == PSRPC_OK);
    REQUIRE(tu_wait_count(&ok->done, 1, 3000));
    CHECK_EQ_INT(atomic_load(&ok->ok), 1);
    fprintf(stderr, "  %d refused calls checked\n", nchecked);
    sfx_free(f);
    /* nothing ran for any refused call */
    CHECK_EQ_INT(atomic_load(&never->opens), 0);
    CHECK_EQ_INT(atomic_load(&never->msgs), 0);
    CHECK_EQ_INT(atomic_load(&never->closes), 0);
    CHECK_EQ_INT(atomic_load(&never->released), 0);
    CHECK_EQ_INT(atomic_load(never_count), 0);
    CHECK_EQ_INT(atomic_load(&sd->done), 0);
    sr_free(never);
    free(never_count);
    free(junk);
    sends_free(sd);
    sends_free(ok);
}

/* Release functions run exactly once, after on_close, for both sides and the
 * registration, whatever ends the stream: here the caller simply frees its
 * handles (a free closes cleanly) and the server drops its reference inside
 * on_close. */
TEST(stream_free_closes_and_releases_once) {
    sfx *f = sfx_new(1, 3000, 500);
    REQUIRE(sfx_ok(f));
    f->srv[0]->free_in_close = true;
    REQUIRE(sfx_register(f, PSRPC_ROUTING_QUEUE) == PSRPC_OK);
    srec *s = NULL;
    srec *c = sfx_open_pair(f, PSRPC_ROUTING_QUEUE, NULL, &s);
    REQUIRE(c);
    psrpc_stream_free(atomic_exchange(&c->handle, NULL));
    REQUIRE(tu_wait_count(&s->closes, 1, 5000));
    CHECK_EQ_INT(s->close_status, PSRPC_CANCELED);
    CHECK_EQ_STR(s->close_message, "stream closed");
    REQUIRE(tu_wait_count(&c->closes, 1, 5000));
    CHECK_EQ_INT(c->close_status, PSRPC_CANCELED);
    CHECK(tu_wait_count(&c->released, 1, 2000));
    CHECK(tu_wait_count(&s->released, 1, 2000));
    CHECK(atomic_load(&s->handle) == NULL);
    CHECK(WAIT_UNTIL(tu_stats(f->bus[0]).streams_open == 0, 2000));
    CHECK(WAIT_UNTIL(tu_stats(f->cbus).streams_open == 0, 2000));
    ssrv *sv = f->srv[0];
    atomic_int *reg_rel = &sv->reg_released;
    CHECK_EQ_INT(atomic_load(reg_rel), 0);
    psrpc_server_free(sv->server);
    CHECK(tu_wait_count(reg_rel, 1, 3000));
    sv->server = NULL; /* sfx_free: psrpc_server_free(NULL) is a no-op */
    th_sleep_ms(50);
    CHECK_EQ_INT(atomic_load(reg_rel), 1);
    CHECK_EQ_INT(atomic_load(&c->released), 1);
    CHECK_EQ_INT(atomic_load(&s->released), 1);
    sfx_free(f);
    TU_CHECK_THREADS();
}

TEST_MAIN()
