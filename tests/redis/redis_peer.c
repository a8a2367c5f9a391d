/* redis_peer — a C server or client in its own process, for the multi-process
 * test (public API only).
 *
 *   redis_peer serve URL SERVICE   registers Echo (queue), Claim (affinity),
 *                                  Fanout (multi) and Chat (a stream that
 *                                  answers each message with "re:" + it),
 *                                  publishes "tick N" on
 *                                  the Updates subscription every 50 ms,
 *                                  prints "ready", serves until SIGTERM, then
 *                                  closes gracefully and exits 0.
 *   redis_peer call URL SERVICE N  calls every kind against N serving
 *                                  processes: 20 Echo, 10 Claim, one Fanout
 *                                  (N results), and a subscription (3 ticks).
 *                                  Exits 0 if everything was as expected. */
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "psrpc.h"

static psrpc_method method(const char *name, uint32_t routing, uint32_t flags) {
    psrpc_method m = PSRPC_METHOD_INIT;
    m.name = name;
    m.routing = routing;
    m.flags = flags;
    return m;
}

static psrpc_method updates(void) {
    psrpc_method m = method("Updates", PSRPC_ROUTING_MULTI, PSRPC_METHOD_SUBSCRIPTION);
    m.output_type = "test.Tick";
    return m;
}

static int fail(const char *what) {
    fprintf(stderr, "redis_peer: %s failed: %s\n", what, psrpc_last_error());
    return 1;
}

/* ---- serve ---- */

typedef struct serve_ctx {
    const char *id;
} serve_ctx;

static void on_echo(psrpc_request *req, void *ud) {
    (void)ud;
    const psrpc_msg *p = psrpc_request_payload(req);
    psrpc_request_respond(req, psrpc_msg_data(p), psrpc_msg_size(p));
}

static void on_claim(psrpc_request *req, void *ud) {
    (void)ud;
    const psrpc_msg *p = psrpc_request_payload(req);
    char out[256];
    int n = snprintf(out, sizeof out, "claimed:%.*s", (int)psrpc_msg_size(p),
                     (const char *)psrpc_msg_data(p));
    psrpc_request_respond(req, out, (size_t)n);
}

static void on_affinity(psrpc_request *req, void *ud) {
    (void)ud;
    psrpc_request_claim(req, 1.0f);
}

static void on_fanout(psrpc_request *req, void *ud) {
    serve_ctx *c = ud;
    psrpc_request_respond(req, c->id, strlen(c->id));
}

static void on_closed(void *ud) { sem_post(ud); }

static int chat_message(psrpc_stream *st, const psrpc_msg *msg, void *ud) {
    (void)ud;
    char out[256];
    int n = snprintf(out, sizeof out, "re:%.*s", (int)psrpc_msg_size(msg),
                     (const char *)psrpc_msg_data(msg));
    psrpc_stream_send(st, out, (size_t)n, 0, NULL, NULL);
    return 0;
}

static void chat_closed(psrpc_stream *st, const psrpc_error *cause, void *ud) {
    (void)st;
    (void)cause;
    (void)ud;
}

static void chat_release(void *ud) { psrpc_stream_free(ud); }

static void on_chat(psrpc_stream *st, void *ud) {
    (void)ud;
    if (psrpc_stream_set_callbacks(st, chat_message, chat_closed, st, chat_release) != PSRPC_OK)
        psrpc_stream_free(st);
}

static psrpc_method chat(void) {
    return method("Chat", PSRPC_ROUTING_AFFINITY, PSRPC_METHOD_STREAM);
}

static int serve(const char *url, const char *service) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL); /* before the loop thread exists */
    psrpc_bus *bus = NULL;
    if (psrpc_bus_open(&bus, url, NULL) != PSRPC_OK)
        return fail("psrpc_bus_open");
    if (psrpc_bus_wait_ready(bus, 5000) != PSRPC_OK)
        return fail("psrpc_bus_wait_ready");
    psrpc_server *srv = NULL;
    if (psrpc_server_create(&srv, bus, service, NULL) != PSRPC_OK)
        return fail("psrpc_server_create");
    serve_ctx ctx = {psrpc_server_id(srv)};
    psrpc_method echo = method("Echo", PSRPC_ROUTING_QUEUE, 0);
    psrpc_method claim = method("Claim", PSRPC_ROUTING_AFFINITY, 0);
    psrpc_method fan = method("Fanout", PSRPC_ROUTING_MULTI, 0);
    if (psrpc_server_register(srv, &echo, NULL, 0, on_echo, NULL, NULL, &ctx, NULL) ||
        psrpc_server_register(srv, &claim, NULL, 0, on_claim, on_affinity, NULL, &ctx, NULL) ||
        psrpc_server_register(srv, &fan, NULL, 0, on_fanout, NULL, NULL, &ctx, NULL))
        return fail("psrpc_server_register");
    psrpc_method ch = chat();
    if (psrpc_server_register_stream(srv, &ch, NULL, 0, on_chat, NULL, NULL, NULL, NULL) !=
        PSRPC_OK)
        return fail("psrpc_server_register");
    if (psrpc_server_wait_ready(srv, 5000) != PSRPC_OK)
        return fail("psrpc_server_wait_ready");
    printf("ready\n");
    fflush(stdout);
    psrpc_method up = updates();
    struct timespec ts = {0, 50 * 1000000L};
    for (int i = 0;; i++) {
        char tick[32];
        int n = snprintf(tick, sizeof tick, "tick %d", i);
        psrpc_server_publish(srv, &up, NULL, 0, tick, (size_t)n);
        int sig = sigtimedwait(&set, NULL, &ts);
        if (sig == SIGTERM || sig == SIGINT)
            break;
    }
    sem_t closed;
    sem_init(&closed, 0, 0);
    if (psrpc_server_close(srv, 0, on_closed, &closed) != PSRPC_OK)
        return fail("psrpc_server_close");
    sem_wait(&closed);
    psrpc_server_free(srv);
    psrpc_bus_free(bus);
    return 0;
}

/* ---- call ---- */

typedef struct multi_rec {
    atomic_int results, errors, done;
    sem_t done_sem;
} multi_rec;

static void multi_result(uint64_t id, const psrpc_msg *resp, const psrpc_error *err,
                         const char *server_id, void *ud) {
    (void)id;
    (void)server_id;
    multi_rec *m = ud;
    if (resp)
        atomic_fetch_add(&m->results, 1);
    if (err)
        atomic_fetch_add(&m->errors, 1);
}

static void multi_done(uint64_t id, const psrpc_msg *resp, const psrpc_error *err,
                       const char *server_id, void *ud) {
    (void)id;
    (void)resp;
    (void)server_id;
    multi_rec *m = ud;
    if (err)
        atomic_fetch_add(&m->errors, 1);
    atomic_fetch_add(&m->done, 1);
    sem_post(&m->done_sem);
}

typedef struct sub_rec {
    atomic_int n;
    sem_t got;
} sub_rec;

static void on_tick(psrpc_sub *sub, const psrpc_msg *msg, void *ud) {
    (void)sub;
    sub_rec *s = ud;
    if (psrpc_msg_size(msg) > 5 && memcmp(psrpc_msg_data(msg), "tick ", 5) == 0) {
        atomic_fetch_add(&s->n, 1);
        sem_post(&s->got);
    }
}

typedef struct chat_rec {
    atomic_int replies, bad, closed, open_err, send_err;
    sem_t got, done, closed_sem, opened;
} chat_rec;

static int chat_reply(psrpc_stream *st, const psrpc_msg *msg, void *ud) {
    (void)st;
    chat_rec *c = ud;
    if (psrpc_msg_size(msg) > 3 && memcmp(psrpc_msg_data(msg), "re:", 3) == 0)
        atomic_fetch_add(&c->replies, 1);
    else
        atomic_fetch_add(&c->bad, 1);
    sem_post(&c->got);
    return 0;
}

static void chat_client_closed(psrpc_stream *st, const psrpc_error *cause, void *ud) {
    (void)st;
    (void)cause;
    chat_rec *c = ud;
    atomic_fetch_add(&c->closed, 1);
    sem_post(&c->closed_sem);
}

static void chat_opened(const psrpc_error *e, void *ud) {
    chat_rec *c = ud;
    if (e) {
        fprintf(stderr, "redis_peer: stream open failed: %s\n", e->message);
        atomic_fetch_add(&c->open_err, 1);
    }
    sem_post(&c->opened);
}

static void chat_sent(const psrpc_error *e, void *ud) {
    chat_rec *c = ud;
    if (e) {
        fprintf(stderr, "redis_peer: stream send failed: %s\n", e->message);
        atomic_fetch_add(&c->send_err, 1);
    }
    sem_post(&c->done);
}

static int timed_wait(sem_t *s, int ms);

/* Opens Chat, sends 5 messages (each acknowledged), gets 5 replies, closes. */
static int chat_run(psrpc_client *cl, chat_rec *c) {
    sem_init(&c->got, 0, 0);
    sem_init(&c->done, 0, 0);
    sem_init(&c->closed_sem, 0, 0);
    sem_init(&c->opened, 0, 0);
    psrpc_method m = chat();
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.timeout_ms = 3000;
    psrpc_stream *st = NULL;
    if (psrpc_client_open_stream(&st, cl, &m, &o, chat_opened, chat_reply, chat_client_closed, c,
                                 NULL) != PSRPC_OK)
        return fail("psrpc_client_open_stream");
    int bad = 0;
    if (timed_wait(&c->opened, 5000) != 0 || atomic_load(&c->open_err))
        bad++;
    for (int i = 0; !bad && i < 5; i++) {
        char p[32];
        int n = snprintf(p, sizeof p, "ping-%d", i);
        if (psrpc_stream_send(st, p, (size_t)n, 0, chat_sent, c) != PSRPC_OK ||
            timed_wait(&c->done, 5000) != 0 || timed_wait(&c->got, 5000) != 0)
            bad++;
    }
    if (atomic_load(&c->replies) != 5 || atomic_load(&c->bad) || atomic_load(&c->send_err)) {
        fprintf(stderr, "redis_peer: Chat: %d replies, %d bad, %d send errors\n",
                atomic_load(&c->replies), atomic_load(&c->bad), atomic_load(&c->send_err));
        bad++;
    }
    psrpc_stream_close(st, 0, NULL);
    if (timed_wait(&c->closed_sem, 5000) != 0)
        bad++;
    psrpc_stream_free(st);
    return bad;
}

static int timed_wait(sem_t *s, int ms) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return sem_timedwait(s, &ts);
}

static int call(const char *url, const char *service, int nservers) {
    psrpc_bus *bus = NULL;
    if (psrpc_bus_open(&bus, url, NULL) != PSRPC_OK)
        return fail("psrpc_bus_open");
    psrpc_client *cl = NULL;
    if (psrpc_client_create(&cl, bus, service, NULL) != PSRPC_OK)
        return fail("psrpc_client_create");
    int bad = 0;
    psrpc_method echo = method("Echo", PSRPC_ROUTING_QUEUE, 0);
    psrpc_method claim = method("Claim", PSRPC_ROUTING_AFFINITY, 0);
    psrpc_method fan = method("Fanout", PSRPC_ROUTING_MULTI, 0);
    psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
    o.timeout_ms = 3000;
    for (int i = 0; i < 20; i++) {
        char p[32];
        int n = snprintf(p, sizeof p, "echo-%d", i);
        psrpc_msg *r = NULL;
        if (psrpc_client_call_sync(&r, cl, &echo, p, (size_t)n, &o) != PSRPC_OK) {
            fail("Echo");
            bad++;
            continue;
        }
        if (psrpc_msg_size(r) != (size_t)n || memcmp(psrpc_msg_data(r), p, (size_t)n) != 0) {
            fprintf(stderr, "redis_peer: Echo answered something else\n");
            bad++;
        }
        psrpc_msg_release(r);
    }
    for (int i = 0; i < 10; i++) {
        char p[32], want[64];
        int n = snprintf(p, sizeof p, "c%d", i);
        int wn = snprintf(want, sizeof want, "claimed:%s", p);
        psrpc_msg *r = NULL;
        if (psrpc_client_call_sync(&r, cl, &claim, p, (size_t)n, &o) != PSRPC_OK) {
            fail("Claim");
            bad++;
            continue;
        }
        if (psrpc_msg_size(r) != (size_t)wn || memcmp(psrpc_msg_data(r), want, (size_t)wn) != 0) {
            fprintf(stderr, "redis_peer: Claim answered something else\n");
            bad++;
        }
        psrpc_msg_release(r);
    }
    multi_rec *m = calloc(1, sizeof *m);
    sem_init(&m->done_sem, 0, 0);
    psrpc_call_options mo = PSRPC_CALL_OPTIONS_INIT;
    mo.timeout_ms = 1000;
    if (psrpc_client_call_multi(NULL, cl, &fan, "f", 1, &mo, multi_result, multi_done, m) !=
            PSRPC_OK ||
        timed_wait(&m->done_sem, 5000) != 0) {
        fail("Fanout");
        bad++;
    } else if (atomic_load(&m->results) != nservers || atomic_load(&m->errors) != 0) {
        fprintf(stderr, "redis_peer: Fanout: %d results, %d errors, want %d results\n",
                atomic_load(&m->results), atomic_load(&m->errors), nservers);
        bad++;
    }
    sub_rec *s = calloc(1, sizeof *s);
    sem_init(&s->got, 0, 0);
    psrpc_method up = updates();
    psrpc_sub *sub = NULL;
    if (psrpc_client_subscribe(&sub, cl, &up, NULL, 0, on_tick, NULL, s, NULL) != PSRPC_OK ||
        psrpc_sub_wait_ready(sub, 3000) != PSRPC_OK) {
        fail("subscribe");
        bad++;
    } else {
        for (int i = 0; i < 3; i++) {
            if (timed_wait(&s->got, 3000) != 0) {
                fprintf(stderr, "redis_peer: only %d ticks\n", atomic_load(&s->n));
                bad++;
                break;
            }
        }
    }
    psrpc_sub_free(sub);
    chat_rec *c = calloc(1, sizeof *c);
    bad += chat_run(cl, c);
    psrpc_client_free(cl);
    psrpc_bus_free(bus);
    printf("%s: 20 Echo, 10 Claim, Fanout x%d, %d ticks, Chat %d replies\n", bad ? "FAILED" : "ok",
           nservers, atomic_load(&s->n), atomic_load(&c->replies));
    free(m);
    free(s);
    free(c);
    return bad ? 1 : 0;
}

int main(int argc, char **argv) {
    if (argc == 4 && strcmp(argv[1], "serve") == 0)
        return serve(argv[2], argv[3]);
    if (argc == 5 && strcmp(argv[1], "call") == 0)
        return call(argv[2], argv[3], atoi(argv[4]));
    fprintf(stderr, "usage: redis_peer serve URL SERVICE | call URL SERVICE NSERVERS\n");
    return 2;
}
