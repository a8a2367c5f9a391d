/* The Redis bus (redis://, rediss://), wire compatible with livekit/psrpc's
 * Redis bus (wire-protocol.md section 6.1).
 *
 * Two connections per bus (redis_conn.c): the subscriber connection carries
 * SUBSCRIBE / UNSUBSCRIBE / PING and receives messages; the publisher
 * connection carries PUBLISH, the queue locks (SET key value EX 5 NX) and
 * PING. Each connection has a FIFO of the replies it expects; pub/sub
 * "message" pushes are the only replies outside that order.
 *
 * Sentinel (redis+sentinel://) finds the master through the sentinels before
 * each connection attempt; Cluster (redis+cluster://) asks the nodes for the
 * slot map and puts both connections on one node (pub/sub is cluster-wide),
 * while the queue locks go to their slot's master (redis_cluster.c).
 *
 * Connection cycle: open both, AUTH / SELECT / PING on each (the handshake),
 * then SUBSCRIBE every channel somebody wants; when Redis acknowledged all of
 * them the bus is CONNECTED. Any failure (socket error, protocol error, no
 * PING reply within two intervals, handshake refused, connect timeout) closes
 * both connections, reports DISCONNECTED and retries with exponential backoff
 * and jitter; two authentication refusals in a row stop the retries.
 *
 * Channels are refcounted: the first local subscription of a channel sends
 * SUBSCRIBE, the last unsubscribe sends UNSUBSCRIBE. A subscription is ready
 * when Redis acknowledged the SUBSCRIBE that covers it.
 *
 * Everything runs on the bus's loop thread, except open and destroy. */
#include <limits.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <sys/random.h>

#include "bus.h"
#include "map.h"
#include "redis_cluster.h"
#include "redis_conn.h"

#define LOCK_EXPIRY_S "5"
/* A channel Redis refused a PUBLISH on is refused locally for this long
 * (then tried again: ACLs can change), and at most this many are kept. */
#define DENY_TTL_NS ((int64_t)5 * 1000000000)
#define DENY_MAX 1024
#define DEFAULT_PORT 6379
#define DEFAULT_OUT_CAP ((size_t)8 << 20)

/* ---- expected replies ---------------------------------------------------- */

enum {
    X_AUTH = 1,
    X_SELECT,
    X_HSPING, /* the handshake's PING */
    X_PING,   /* health check */
    X_SUB,    /* a: rchan */
    X_UNSUB,  /* a: rchan */
    X_PUB,    /* a: the channel name (owned) */
    X_LOCK,   /* a: sub (a reference), b: psrpc_msg (a reference) */
    X_ROLE,   /* the handshake's ROLE (Sentinel mode: the server must be a master) */
};

typedef struct rexp {
    uint8_t kind;
    bool resub; /* X_SUB sent by the resubscription after a connect */
    void *a, *b;
} rexp;

/* A ring buffer of expected replies. */
typedef struct rq {
    rexp *v;
    size_t cap, head, len;
} rq;

static int rq_push(rq *q, rexp e) {
    if (q->len == q->cap) {
        size_t cap = q->cap ? q->cap * 2 : 64;
        rexp *v = malloc(cap * sizeof *v);
        if (!v)
            return -1;
        for (size_t i = 0; i < q->len; i++)
            v[i] = q->v[(q->head + i) % q->cap];
        free(q->v);
        q->v = v;
        q->cap = cap;
        q->head = 0;
    }
    q->v[(q->head + q->len) % q->cap] = e;
    q->len++;
    return 0;
}

static bool rq_pop(rq *q, rexp *out) {
    if (q->len == 0)
        return false;
    *out = q->v[q->head];
    q->head = (q->head + 1) % q->cap;
    q->len--;
    return true;
}

static void rq_unpush(rq *q) {
    if (q->len)
        q->len--;
}

/* Frees what an expectation holds that was never answered. */
static void sub_release(struct psrpc__bus_sub *s);
static void rexp_drop(rexp *e) {
    if (e->kind == X_LOCK) {
        psrpc_msg_release(e->b);
        sub_release(e->a);
    } else if (e->kind == X_PUB) {
        free(e->a);
    }
}

typedef struct deny_entry {
    int64_t until_ns;
    char reason[400];
} deny_entry;

/* ---- state ------------------------------------------------------------- */

enum { S_DOWN, S_CONNECTING, S_HANDSHAKE, S_READY };

typedef struct redis_t redis_t;

typedef struct side {
    redis_t *r;
    const char *what; /* "subscriber" / "publisher" */
    psrpc__rconn *conn;
    rq q;
    int state;
    int hs_pending;
    bool ping_pending;
    int ping_misses;
} side;

typedef struct rchan {
    char *name; /* prefix + legacy name; the map key */
    struct psrpc__bus_sub *subs;
    size_t nsubs, nqueue, rr;
    int inflight;  /* SUBSCRIBE / UNSUBSCRIBE sent, reply not yet seen */
    int busy;      /* callbacks running for this channel: do not free */
    bool sent_sub; /* the last command sent for it was SUBSCRIBE */
    bool acked;    /* ... and Redis acknowledged it */
} rchan;

struct psrpc__bus_sub {
    int refs;
    redis_t *r;
    rchan *ch;
    bool queue, active, ready_done;
    psrpc__deliver_fn deliver;
    psrpc__ready_fn ready;
    void *ctx;
    struct psrpc__bus_sub *next;
};

struct redis_t {
    psrpc_bus *bus;
    /* Configuration. */
    char *host;
    int port;
    char *user; /* NULL: AUTH with the password only */
    char *pass; /* NULL: no AUTH */
    long db;
    bool tls;
    SSL_CTX *ssl_ctx;
    char *server_name;
    char *prefix;
    size_t prefix_len;
    int64_t connect_timeout_ms, ping_ms, wait_min_ms, wait_max_ms;
    size_t out_cap;
    char where[300]; /* host:port for messages */
    /* Sentinel mode (redis+sentinel://): the master's address comes from
     * the sentinels (host/port above are then the current master). */
    bool sentinel;
    char *master_name;
    char **s_hosts;
    int *s_ports;
    size_t ns, s_idx, s_tried;
    psrpc__rconn *sconn;
    psrpc__rconn *wconn; /* subscribed to +switch-master on a sentinel */
    char s_why[300];
    /* Cluster mode (redis+cluster://): both connections go to one node
     * (classic pub/sub is cluster-wide), the queue locks to their slot's
     * master through redis_cluster.c. host/port above: the node in use. */
    psrpc__rcluster *cl;

    /* Loop thread state. */
    bool started, closing, stopped, connected, ever_connected;
    void (*close_done)(psrpc_bus *bus);
    int handles; /* timers and connections not yet closed */
    uv_timer_t retry_timer, attempt_timer, ping_timer;
    int64_t backoff_ms;
    uint64_t last_tick_ms;
    int auth_failures;
    uint64_t attempts;
    uint64_t gen; /* bumped whenever the connections are torn down */
    side sub, pub;
    int resub_outstanding;
    bool resubscribing;
    psrpc__map chans;
    /* Channels Redis refused a PUBLISH on (NOPERM): name -> deny_entry. */
    psrpc__map denied;
    /* Publishes made while connecting for the first time, and their
     * channel names (for a refusal). */
    char *pre;
    size_t pre_len, pre_cap, pre_count;
    char **pre_names;
    size_t pre_names_cap;
    uint64_t rng;
};

static const psrpc__transport psrpc__transport_redis;

static void conn_lost(redis_t *r, int status, const char *reason, bool auth);
static void attempt_start(redis_t *r);
static void sides_open(redis_t *r);
static void sentinel_down(redis_t *r);
static void sentinel_next(redis_t *r);
static void sentinel_watch(redis_t *r);

/* ---- small helpers --------------------------------------------------------- */

static uint64_t rnd(redis_t *r) {
    /* xorshift64*, seeded from getrandom(2): jitter and lock values only. */
    uint64_t x = r->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    r->rng = x;
    return x * 0x2545F4914F6CDD1DULL;
}

/* Never lets the password through into a message. */
static void scrub(const redis_t *r, char *msg) {
    if (r->pass && *r->pass && strstr(msg, r->pass))
        snprintf(msg, 64, "%s", "(message withheld: it contained the password)");
}

static int error_status(const char *msg) {
    if (strncmp(msg, "NOPERM", 6) == 0)
        return PSRPC_PERMISSION_DENIED;
    if (strncmp(msg, "WRONGPASS", 9) == 0 || strncmp(msg, "NOAUTH", 6) == 0 ||
        strncmp(msg, "ERR invalid password", 20) == 0 ||
        strncmp(msg, "ERR invalid username", 20) == 0 || strncmp(msg, "ERR AUTH", 8) == 0 ||
        strncmp(msg, "ERR Client sent AUTH", 20) == 0)
        return PSRPC_UNAUTHENTICATED;
    return PSRPC_UNAVAILABLE;
}

static const char *reply_text(const redisReply *rep) {
    return (rep->type == REDIS_REPLY_ERROR || rep->type == REDIS_REPLY_STATUS ||
            rep->type == REDIS_REPLY_STRING) &&
                   rep->str
               ? rep->str
               : "";
}

/* Formats argv and queues it on s with expectation e. */
static int send_cmd(side *s, int argc, const char **argv, const size_t *lens, rexp e, bool secret) {
    if (!s->conn)
        return PSRPC_UNAVAILABLE;
    if (rq_push(&s->q, e) != 0)
        return PSRPC_RESOURCE_EXHAUSTED;
    int rc = psrpc__rconn_send_command(s->conn, argc, argv, lens, secret);
    if (rc != PSRPC_OK)
        rq_unpush(&s->q);
    return rc;
}

static int send1(side *s, const char *a0, const char *a1, rexp e) {
    const char *argv[2] = {a0, a1};
    size_t lens[2] = {strlen(a0), a1 ? strlen(a1) : 0};
    return send_cmd(s, a1 ? 2 : 1, argv, lens, e, false);
}

/* ---- subscriptions --------------------------------------------------------- */

static void sub_release(struct psrpc__bus_sub *s) {
    if (--s->refs == 0)
        free(s);
}

static void chan_maybe_free(redis_t *r, rchan *ch) {
    if (ch->nsubs || ch->sent_sub || ch->inflight || ch->busy)
        return;
    psrpc__map_del(&r->chans, ch->name);
    free(ch->name);
    free(ch);
}

/* Calls ready once for every subscription of ch still waiting for it. */
static void fire_ready(redis_t *r, rchan *ch, int status, const char *message) {
    size_t n = 0;
    for (struct psrpc__bus_sub *s = ch->subs; s; s = s->next)
        if (s->active && !s->ready_done)
            n++;
    if (!n)
        return;
    struct psrpc__bus_sub *stack[8];
    struct psrpc__bus_sub **v = n <= 8 ? stack : malloc(n * sizeof *v);
    size_t i = 0;
    for (struct psrpc__bus_sub *s = ch->subs; s; s = s->next) {
        if (!s->active || s->ready_done)
            continue;
        s->ready_done = true;
        if (v) {
            s->refs++;
            v[i++] = s;
        } else if (s->ready) {
            /* Out of memory for the snapshot: one at a time, no further
             * reads of the list after a callback. */
            s->ready(s->ctx, status, message);
            return;
        }
    }
    ch->busy++;
    for (size_t j = 0; j < i; j++) {
        if (v[j]->active && !r->closing && v[j]->ready)
            v[j]->ready(v[j]->ctx, status, message);
        sub_release(v[j]);
    }
    ch->busy--;
    if (v != stack)
        free(v);
}

/* Returns 0, PSRPC_UNAVAILABLE (the connection is failing: its error report
 * follows, and the next connection subscribes the channel) or
 * PSRPC_RESOURCE_EXHAUSTED. */
static int send_subscribe(redis_t *r, rchan *ch, bool resub) {
    rexp e = {.kind = X_SUB, .resub = resub, .a = ch};
    int rc = send1(&r->sub, "SUBSCRIBE", ch->name, e);
    if (rc == PSRPC_OK) {
        ch->sent_sub = true;
        ch->acked = false;
        ch->inflight++;
        if (resub)
            r->resub_outstanding++;
    }
    return rc;
}

static void ready_task(void *arg) {
    struct psrpc__bus_sub *s = arg;
    redis_t *r = s->r;
    psrpc_bus *bus = r->bus;
    if (s->active && !s->ready_done && !r->closing) {
        s->ready_done = true;
        if (s->ready)
            s->ready(s->ctx, PSRPC_OK, NULL);
    }
    sub_release(s);
    psrpc__bus_release(bus);
}

/* Refuses a subscription on the next loop turn (the bus gave up: two
 * authentication failures in a row). */
typedef struct refuse_task {
    struct psrpc__bus_sub *sub;
    int status;
    char message[300];
} refuse_task;

static void refuse_run(void *arg) {
    refuse_task *t = arg;
    struct psrpc__bus_sub *s = t->sub;
    psrpc_bus *bus = s->r->bus;
    if (s->active && !s->ready_done && !s->r->closing) {
        s->ready_done = true;
        if (s->ready)
            s->ready(s->ctx, t->status, t->message);
    }
    sub_release(s);
    free(t);
    psrpc__bus_release(bus);
}

static void post_refusal(redis_t *r, struct psrpc__bus_sub *s) {
    refuse_task *t = calloc(1, sizeof *t);
    if (!t)
        return;
    t->sub = s;
    pthread_mutex_lock(&r->bus->state_mu);
    t->status = r->bus->down_status ? r->bus->down_status : PSRPC_UNAVAILABLE;
    snprintf(t->message, sizeof t->message, "%s", r->bus->down_reason);
    pthread_mutex_unlock(&r->bus->state_mu);
    s->refs++;
    psrpc__bus_retain(r->bus);
    if (psrpc__bus_post(r->bus, refuse_run, t) != PSRPC_OK) {
        s->refs--;
        psrpc__bus_release(r->bus);
        free(t);
    }
}

static psrpc__bus_sub *redis_subscribe(psrpc_bus *bus, const psrpc__channel *chd, bool queue,
                                       psrpc__deliver_fn deliver, psrpc__ready_fn ready,
                                       void *ctx) {
    redis_t *r = bus->transport_state;
    if (r->closing) {
        psrpc__error(PSRPC_CANCELED, "bus is closing");
        return NULL;
    }
    size_t llen = strlen(chd->legacy);
    char *name = malloc(r->prefix_len + llen + 1);
    struct psrpc__bus_sub *s = calloc(1, sizeof *s);
    if (!name || !s) {
        free(name);
        free(s);
        psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
        return NULL;
    }
    memcpy(name, r->prefix, r->prefix_len);
    memcpy(name + r->prefix_len, chd->legacy, llen + 1);
    rchan *ch = psrpc__map_get(&r->chans, name);
    if (!ch) {
        ch = calloc(1, sizeof *ch);
        if (!ch || psrpc__map_put(&r->chans, name, ch) != PSRPC_OK) {
            free(ch);
            free(name);
            free(s);
            psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
            return NULL;
        }
        ch->name = name;
    } else {
        free(name);
    }
    s->refs = 1; /* the channel's list */
    s->r = r;
    s->ch = ch;
    s->queue = queue;
    s->active = true;
    s->deliver = deliver;
    s->ready = ready;
    s->ctx = ctx;
    /* Append: the round-robin follows subscription order. */
    struct psrpc__bus_sub **p = &ch->subs;
    while (*p)
        p = &(*p)->next;
    *p = s;
    ch->nsubs++;
    if (queue)
        ch->nqueue++;

    if (r->stopped) {
        post_refusal(r, s);
    } else if (ch->sent_sub && ch->acked && ch->inflight == 0) {
        /* Already subscribed: ready on the next loop turn. */
        s->refs++;
        psrpc__bus_retain(bus);
        if (psrpc__bus_post(bus, ready_task, s) != PSRPC_OK) {
            s->refs--;
            psrpc__bus_release(bus);
        }
    } else if (!ch->sent_sub && r->sub.state == S_READY && r->pub.state == S_READY &&
               send_subscribe(r, ch, false) == PSRPC_RESOURCE_EXHAUSTED) {
        /* Undo; no callback from inside subscribe(). */
        s->active = false;
        for (struct psrpc__bus_sub **p = &ch->subs; *p; p = &(*p)->next) {
            if (*p == s) {
                *p = s->next;
                break;
            }
        }
        ch->nsubs--;
        if (queue)
            ch->nqueue--;
        chan_maybe_free(r, ch);
        free(s);
        psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
        return NULL;
    }
    /* Otherwise the pending SUBSCRIBE, or the next connect, covers it. */
    return s;
}

static void redis_unsubscribe(psrpc_bus *bus, psrpc__bus_sub *sub) {
    redis_t *r = bus->transport_state;
    struct psrpc__bus_sub *s = sub;
    rchan *ch = s->ch;
    s->active = false;
    for (struct psrpc__bus_sub **p = &ch->subs; *p; p = &(*p)->next) {
        if (*p == s) {
            *p = s->next;
            break;
        }
    }
    s->next = NULL;
    ch->nsubs--;
    if (s->queue)
        ch->nqueue--;
    if (ch->nsubs == 0 && ch->sent_sub && r->sub.state == S_READY && !r->closing) {
        rexp e = {.kind = X_UNSUB, .a = ch};
        if (send1(&r->sub, "UNSUBSCRIBE", ch->name, e) == PSRPC_OK) {
            ch->sent_sub = false;
            ch->acked = false;
            ch->inflight++;
        }
        /* Out of memory: stay subscribed; messages for nobody are ignored. */
    }
    chan_maybe_free(r, ch);
    sub_release(s);
}

/* ---- publishing -------------------------------------------------------------- */

static int pre_append(redis_t *r, const char *cmd, size_t n, char *name) {
    if (r->pre_count == r->pre_names_cap) {
        size_t cap = r->pre_names_cap ? r->pre_names_cap * 2 : 16;
        char **v = realloc(r->pre_names, cap * sizeof *v);
        if (!v)
            return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
        r->pre_names = v;
        r->pre_names_cap = cap;
    }
    if (r->pre_len + n > r->out_cap)
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED,
                            "redis: %zu bytes already wait for the first connection", r->pre_len);
    if (r->pre_cap - r->pre_len < n) {
        size_t cap = r->pre_cap ? r->pre_cap : 4096;
        while (cap - r->pre_len < n)
            cap *= 2;
        char *p = realloc(r->pre, cap);
        if (!p)
            return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
        r->pre = p;
        r->pre_cap = cap;
    }
    memcpy(r->pre + r->pre_len, cmd, n);
    r->pre_len += n;
    r->pre_names[r->pre_count++] = name;
    return PSRPC_OK;
}

static int redis_publish(psrpc_bus *bus, const psrpc__channel *chd, psrpc_msg *bytes) {
    redis_t *r = bus->transport_state;
    if (r->closing)
        return psrpc__error(PSRPC_CANCELED, "bus is closing");
    bool direct = r->pub.state == S_READY;
    if (!direct && (r->ever_connected || r->stopped))
        return psrpc__error(PSRPC_UNAVAILABLE, "redis %s: not connected", bus->url_safe);
    if (bytes->len > (size_t)INT_MAX / 2)
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "message too large for Redis");
    size_t llen = strlen(chd->legacy);
    /* The name goes with the expected reply: a refusal names its channel. */
    char *name = malloc(r->prefix_len + llen + 1);
    if (!name)
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
    memcpy(name, r->prefix, r->prefix_len);
    memcpy(name + r->prefix_len, chd->legacy, llen + 1);
    if (r->denied.count) {
        deny_entry *d = psrpc__map_get(&r->denied, name);
        if (d && d->until_ns > psrpc__now_ns()) {
            int rc = psrpc__error(PSRPC_PERMISSION_DENIED, "%s", d->reason);
            free(name);
            return rc;
        }
        if (d) {
            psrpc__map_del(&r->denied, name);
            free(d);
        }
    }
    const char *argv[3] = {"PUBLISH", name, (const char *)bytes->data};
    size_t lens[3] = {7, r->prefix_len + llen, bytes->len};
    int rc;
    if (direct) {
        size_t queued = psrpc__rconn_queued(r->pub.conn);
        if (queued + bytes->len > r->out_cap) {
            rc = psrpc__error(PSRPC_RESOURCE_EXHAUSTED,
                              "redis: %zu bytes already wait to be written", queued);
        } else {
            rexp e = {.kind = X_PUB, .a = name};
            rc = send_cmd(&r->pub, 3, argv, lens, e, false);
            if (rc == PSRPC_OK)
                name = NULL; /* the expectation owns it */
            else
                rc = psrpc__error(rc, rc == PSRPC_RESOURCE_EXHAUSTED ? "out of memory"
                                                                     : "redis: not connected");
        }
    } else {
        size_t n = psrpc__resp_size(3, argv, lens);
        char *cmd = malloc(n);
        if (!cmd) {
            rc = psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
        } else {
            psrpc__resp_write(cmd, 3, argv, lens);
            rc = pre_append(r, cmd, n, name);
            if (rc == PSRPC_OK)
                name = NULL;
            free(cmd);
        }
    }
    free(name);
    return rc;
}

/* Redis refused a PUBLISH on one channel (NOPERM: an ACL that allows some
 * channels only). Only that channel is refused: later publishes on it fail
 * at once with permission_denied and the reason, for DENY_TTL_NS (then they
 * are tried again), while every other channel of the bus goes on (one
 * forbidden service must not block the others, nor a server's answers). */
static void deny_channel(redis_t *r, const char *name, const char *msg) {
    if (r->closing || !name)
        return;
    deny_entry *d = psrpc__map_get(&r->denied, name);
    if (!d) {
        if (r->denied.count >= DENY_MAX)
            return; /* the next publishes there fail asynchronously again */
        d = calloc(1, sizeof *d);
        if (!d || psrpc__map_put(&r->denied, name, d) != PSRPC_OK) {
            free(d);
            return;
        }
    }
    d->until_ns = psrpc__now_ns() + DENY_TTL_NS;
    snprintf(d->reason, sizeof d->reason, "%s: redis refused PUBLISH to %s: %s", r->where, name,
             msg);
    scrub(r, d->reason);
}

static void denied_clear(redis_t *r) {
    psrpc__map_iter it;
    psrpc__map_iter_init(&it, &r->denied);
    for (psrpc__map_entry *e; (e = psrpc__map_iter_next(&it));)
        free(e->value);
    psrpc__map_clear(&r->denied);
}

/* ---- inbound messages -------------------------------------------------------- */

static bool is_message(const redisReply *rep) {
    return rep->type == REDIS_REPLY_ARRAY && rep->elements == 3 &&
           rep->element[0]->type == REDIS_REPLY_STRING && rep->element[0]->len == 7 &&
           memcmp(rep->element[0]->str, "message", 7) == 0;
}

static void send_lock(redis_t *r, struct psrpc__bus_sub *s, const redisReply *payload) {
    if (r->pub.state != S_READY && !r->cl) {
        PSRPC__DROP(r->bus, dropped_slow_consumer, PSRPC__DROP_SLOW_CONSUMER);
        return;
    }
    char key[PSRPC__LOCK_KEY_LEN + 1];
    psrpc__redis_lock_key(key, (const uint8_t *)payload->str, payload->len);
    char value[24];
    size_t value_len = psrpc__u64_str(value, rnd(r) >> 1);
    psrpc_msg *msg = NULL;
    if (psrpc_msg_new(&msg, payload->str, payload->len) != PSRPC_OK) {
        PSRPC__DROP(r->bus, dropped_slow_consumer, PSRPC__DROP_SLOW_CONSUMER);
        return;
    }
    s->refs++;
    if (r->cl) {
        /* To the key's master; the outcome comes to cluster_lock_done. */
        if (psrpc__rcluster_lock(r->cl, key, PSRPC__LOCK_KEY_LEN, value, s, msg) != PSRPC_OK) {
            s->refs--;
            psrpc_msg_release(msg);
            PSRPC__DROP(r->bus, dropped_slow_consumer, PSRPC__DROP_SLOW_CONSUMER);
        }
        return;
    }
    const char *argv[6] = {"SET", key, value, "EX", LOCK_EXPIRY_S, "NX"};
    size_t lens[6] = {3, PSRPC__LOCK_KEY_LEN, value_len, 2, 1, 2};
    rexp e = {.kind = X_LOCK, .a = s, .b = msg};
    if (send_cmd(&r->pub, 6, argv, lens, e, false) != PSRPC_OK) {
        s->refs--;
        psrpc_msg_release(msg);
        PSRPC__DROP(r->bus, dropped_slow_consumer, PSRPC__DROP_SLOW_CONSUMER);
    }
}

static void on_message(redis_t *r, const redisReply *rep) {
    const redisReply *chr = rep->element[1], *payload = rep->element[2];
    if (chr->type != REDIS_REPLY_STRING || strlen(chr->str) != chr->len)
        return;
    rchan *ch = psrpc__map_get(&r->chans, chr->str);
    if (!ch || ch->nsubs == 0)
        return;
    if (payload->type != REDIS_REPLY_STRING) {
        /* The framing filter replaced a bulk over max_message_size by nil. */
        PSRPC__STAT_ADD(r->bus, received, 1);
        PSRPC__DROP(r->bus, dropped_oversize, PSRPC__DROP_OVERSIZE);
        return;
    }
    ch->busy++;
    size_t n = ch->nsubs - ch->nqueue;
    if (n) {
        struct psrpc__bus_sub *stack[8];
        struct psrpc__bus_sub **v = n <= 8 ? stack : malloc(n * sizeof *v);
        if (!v) {
            PSRPC__STAT_ADD(r->bus, dropped_slow_consumer, n);
        } else {
            size_t i = 0;
            for (struct psrpc__bus_sub *s = ch->subs; s && i < n; s = s->next) {
                if (!s->queue) {
                    s->refs++;
                    v[i++] = s;
                }
            }
            for (size_t j = 0; j < i; j++) {
                if (v[j]->active && !r->closing)
                    v[j]->deliver(v[j]->ctx, (const uint8_t *)payload->str, payload->len);
                sub_release(v[j]);
            }
            if (v != stack)
                free(v);
        }
    }
    if (ch->nqueue && !r->closing) {
        /* Offer it to one local queue subscriber, round-robin; it takes the
         * lock and consumes the message only if the lock is ours. */
        size_t pick = ch->rr++ % ch->nqueue;
        for (struct psrpc__bus_sub *s = ch->subs; s; s = s->next) {
            if (s->queue && pick-- == 0) {
                send_lock(r, s, payload);
                break;
            }
        }
    }
    ch->busy--;
    chan_maybe_free(r, ch);
}

/* ---- connection cycle ------------------------------------------------------- */

static void become_connected(redis_t *r) {
    uv_timer_stop(&r->attempt_timer);
    r->backoff_ms = r->wait_min_ms;
    r->auth_failures = 0;
    r->ever_connected = true;
    r->connected = true;
    r->resubscribing = false;
    psrpc__bus_set_state(r->bus, PSRPC_BUS_CONNECTED, PSRPC_OK, NULL);
    if (r->sentinel && !r->wconn)
        sentinel_watch(r);
}

static void ping_tick(uv_timer_t *t) {
    redis_t *r = t->data;
    uint64_t now = uv_now(t->loop);
    /* The loop was held up (a slow callback): replies may sit unread in the
     * socket, so this tick judges nothing. */
    bool stalled = r->last_tick_ms && now - r->last_tick_ms > (uint64_t)(r->ping_ms * 3 / 2);
    r->last_tick_ms = now;
    side *sides[2] = {&r->sub, &r->pub};
    for (int i = 0; i < 2; i++) {
        side *s = sides[i];
        if (s->state != S_READY)
            continue;
        if (s->ping_pending) {
            if (stalled) {
                s->ping_misses = 0;
            } else if (++s->ping_misses >= 2) {
                char reason[400];
                snprintf(reason, sizeof reason, "%s (%s): no reply to PING within %lld ms",
                         r->where, s->what, (long long)(2 * r->ping_ms));
                conn_lost(r, PSRPC_UNAVAILABLE, reason, false);
                return;
            }
            continue;
        }
        rexp e = {.kind = X_PING};
        if (send1(s, "PING", NULL, e) == PSRPC_OK) {
            s->ping_pending = true;
            s->ping_misses = 0;
        }
    }
}

static void begin_resubscribe(redis_t *r) {
    r->resubscribing = true;
    r->resub_outstanding = 0;
    uint64_t gen = r->gen;
    size_t n = r->chans.count, i = 0;
    rchan **v = n ? malloc(n * sizeof *v) : NULL;
    if (n && !v) {
        conn_lost(r, PSRPC_UNAVAILABLE, "out of memory while resubscribing", false);
        return;
    }
    psrpc__map_iter it;
    psrpc__map_iter_init(&it, &r->chans);
    for (psrpc__map_entry *e; (e = psrpc__map_iter_next(&it));)
        v[i++] = e->value;
    int rc = PSRPC_OK;
    for (i = 0; i < n && rc == PSRPC_OK; i++)
        if (v[i]->nsubs && !v[i]->sent_sub)
            rc = send_subscribe(r, v[i], true);
    free(v);
    if (rc == PSRPC_RESOURCE_EXHAUSTED)
        conn_lost(r, PSRPC_UNAVAILABLE, "out of memory while resubscribing", false);
    if (rc != PSRPC_OK || gen != r->gen)
        return;
    r->last_tick_ms = 0;
    uv_timer_start(&r->ping_timer, ping_tick, (uint64_t)r->ping_ms, (uint64_t)r->ping_ms);
    if (r->resub_outstanding == 0)
        become_connected(r);
}

static void side_ready(side *s) {
    redis_t *r = s->r;
    s->state = S_READY;
    if (s == &r->pub && r->pre_len) {
        /* Publishes made before the first connection, in order. */
        int rc = psrpc__rconn_send(s->conn, r->pre, r->pre_len, false);
        for (size_t i = 0; i < r->pre_count; i++) {
            rexp e = {.kind = X_PUB, .a = r->pre_names[i]};
            if (rc == PSRPC_OK && rq_push(&s->q, e) != 0)
                rc = PSRPC_RESOURCE_EXHAUSTED;
            if (rc != PSRPC_OK)
                free(r->pre_names[i]);
        }
        free(r->pre);
        free(r->pre_names);
        r->pre = NULL;
        r->pre_names = NULL;
        r->pre_len = r->pre_cap = r->pre_count = r->pre_names_cap = 0;
        if (rc != PSRPC_OK) {
            conn_lost(r, PSRPC_UNAVAILABLE, "out of memory while connecting", false);
            return;
        }
    }
    if (r->sub.state == S_READY && r->pub.state == S_READY)
        begin_resubscribe(r);
}

static void on_connected(psrpc__rconn *c) {
    side *s = psrpc__rconn_owner(c);
    redis_t *r = s->r;
    s->state = S_HANDSHAKE;
    s->hs_pending = 0;
    int rc = PSRPC_OK;
    if (r->pass) {
        const char *argv[3] = {"AUTH", r->user, r->pass};
        size_t lens[3] = {4, r->user ? strlen(r->user) : 0, strlen(r->pass)};
        rexp e = {.kind = X_AUTH};
        rc = r->user ? send_cmd(s, 3, argv, lens, e, true)
                     : send_cmd(s, 2, (const char *[]){"AUTH", r->pass},
                                (size_t[]){4, strlen(r->pass)}, e, true);
        s->hs_pending += rc == PSRPC_OK;
    }
    if (rc == PSRPC_OK && r->db) {
        char db[24];
        snprintf(db, sizeof db, "%ld", r->db);
        rexp e = {.kind = X_SELECT};
        rc = send1(s, "SELECT", db, e);
        s->hs_pending += rc == PSRPC_OK;
    }
    if (rc == PSRPC_OK) {
        rexp e = {.kind = X_HSPING};
        rc = send1(s, "PING", NULL, e);
        s->hs_pending += rc == PSRPC_OK;
    }
    if (rc == PSRPC_OK && r->sentinel) {
        rexp e = {.kind = X_ROLE};
        rc = send1(s, "ROLE", NULL, e);
        s->hs_pending += rc == PSRPC_OK;
    }
    if (rc != PSRPC_OK)
        conn_lost(r, PSRPC_UNAVAILABLE, "out of memory while connecting", false);
}

static void handshake_reply(side *s, const rexp *e, const redisReply *rep) {
    redis_t *r = s->r;
    if (rep->type == REDIS_REPLY_ERROR) {
        const char *cmd = e->kind == X_AUTH     ? "AUTH"
                          : e->kind == X_SELECT ? "SELECT"
                          : e->kind == X_ROLE   ? "ROLE"
                                                : "PING";
        char reason[400];
        snprintf(reason, sizeof reason, "%s: redis refused %s: %s", r->where, cmd, reply_text(rep));
        scrub(r, reason);
        int status = error_status(reply_text(rep));
        conn_lost(r, status, reason, status != PSRPC_UNAVAILABLE);
        return;
    }
    if (e->kind == X_ROLE) {
        /* A sentinel may still name a master that has since been demoted
         * (or that came back as a replica): never publish to a replica. */
        const char *role = rep->type == REDIS_REPLY_ARRAY && rep->elements > 0 &&
                                   rep->element[0]->type == REDIS_REPLY_STRING
                               ? rep->element[0]->str
                               : "?";
        if (strcmp(role, "master") != 0) {
            char reason[400];
            snprintf(reason, sizeof reason,
                     "%s (%s): reports role \"%.40s\", not master (sentinel master %s)", r->where,
                     s->what, role, r->master_name);
            conn_lost(r, PSRPC_UNAVAILABLE, reason, false);
            return;
        }
    }
    if (--s->hs_pending == 0)
        side_ready(s);
}

static void sub_reply(redis_t *r, const rexp *e, const redisReply *rep) {
    rchan *ch = e->a;
    uint64_t gen = r->gen;
    ch->inflight--;
    if (e->kind == X_SUB) {
        if (rep->type == REDIS_REPLY_ERROR) {
            if (ch->inflight == 0 && ch->sent_sub) {
                ch->sent_sub = false;
                ch->acked = false;
            }
            char reason[400];
            snprintf(reason, sizeof reason, "%s: redis refused SUBSCRIBE %s: %s", r->where,
                     ch->name, reply_text(rep));
            scrub(r, reason);
            ch->busy++;
            fire_ready(r, ch, error_status(reply_text(rep)), reason);
            ch->busy--;
        } else if (ch->inflight == 0 && ch->sent_sub) {
            ch->acked = true;
            ch->busy++;
            fire_ready(r, ch, PSRPC_OK, NULL);
            ch->busy--;
        }
    }
    chan_maybe_free(r, ch);
    if (e->resub && gen == r->gen && r->resubscribing && --r->resub_outstanding == 0)
        become_connected(r);
}

/* A queue lock's outcome: the message goes to the subscription if the lock is
 * ours. */
static void lock_done(redis_t *r, struct psrpc__bus_sub *sub, psrpc_msg *msg, bool acquired) {
    if (acquired && sub->active && !r->closing)
        sub->deliver(sub->ctx, msg->data, msg->len);
    psrpc_msg_release(msg);
    sub_release(sub);
}

static void on_reply(psrpc__rconn *c, redisReply *rep) {
    side *s = psrpc__rconn_owner(c);
    redis_t *r = s->r;
    if (r->closing || s->conn != c)
        return;
    if (s == &r->sub && is_message(rep)) {
        on_message(r, rep);
        return;
    }
    rexp e;
    if (!rq_pop(&s->q, &e)) {
        char reason[400];
        snprintf(reason, sizeof reason, "%s (%s): unexpected reply from redis", r->where, s->what);
        conn_lost(r, PSRPC_UNAVAILABLE, reason, false);
        return;
    }
    switch (e.kind) {
    case X_AUTH:
    case X_SELECT:
    case X_HSPING:
    case X_ROLE:
        handshake_reply(s, &e, rep);
        break;
    case X_PING:
        s->ping_pending = false;
        s->ping_misses = 0;
        break;
    case X_SUB:
    case X_UNSUB:
        sub_reply(r, &e, rep);
        break;
    case X_PUB:
        if (rep->type == REDIS_REPLY_ERROR && strncmp(reply_text(rep), "NOPERM", 6) == 0)
            deny_channel(r, e.a, reply_text(rep));
        free(e.a);
        break;
    case X_LOCK:
        /* Not OK: another server holds the lock, or Redis refused the SET
         * (NOPERM: the user may not write the lock keys): either way this
         * server does not take the request. A refusal is not the bus's
         * failure: its other channels, and its answers, go on. */
        lock_done(r, e.a, e.b,
                  rep->type == REDIS_REPLY_STATUS && strcmp(reply_text(rep), "OK") == 0);
        break;
    default:
        break;
    }
}

static void on_error(psrpc__rconn *c, const char *why) {
    side *s = psrpc__rconn_owner(c);
    redis_t *r = s->r;
    if (s->conn != c)
        return;
    char reason[400];
    snprintf(reason, sizeof reason, "%s (%s): %s", r->where, s->what, why);
    conn_lost(r, PSRPC_UNAVAILABLE, reason, false);
}

static void check_closed(redis_t *r) {
    if (r->closing && r->handles == 0 && r->close_done) {
        void (*done)(psrpc_bus *) = r->close_done;
        r->close_done = NULL;
        done(r->bus);
    }
}

static void on_conn_closed(psrpc__rconn *c) {
    side *s = psrpc__rconn_owner(c);
    redis_t *r = s->r;
    r->handles--;
    check_closed(r);
}

/* Closes a side's connection and drops what it still expected. */
static void side_down(side *s) {
    if (s->conn) {
        psrpc__rconn_close(s->conn);
        s->conn = NULL;
    }
    rexp e;
    while (rq_pop(&s->q, &e))
        rexp_drop(&e);
    s->state = S_DOWN;
    s->hs_pending = 0;
    s->ping_pending = false;
    s->ping_misses = 0;
}

static bool side_open(side *s, char *why, size_t why_len) {
    redis_t *r = s->r;
    psrpc__rconn_config cfg = {
        .loop = psrpc__loop_uv(r->bus->loop),
        .host = r->host,
        .port = r->port,
        .ssl_ctx = r->ssl_ctx,
        .server_name = r->server_name,
        .max_bulk = (size_t)r->bus->opts.max_message_size,
        .owner = s,
        .on_connected = on_connected,
        .on_reply = on_reply,
        .on_error = on_error,
        .on_closed = on_conn_closed,
    };
    const char *reason = NULL;
    int rc = psrpc__rconn_open(&s->conn, &cfg, &reason);
    if (rc != PSRPC_OK) {
        snprintf(why, why_len, "%s (%s): %s", r->where, s->what, reason);
        s->conn = NULL;
        return false;
    }
    r->handles++;
    s->state = S_CONNECTING;
    return true;
}

/* ---- Sentinel: master discovery ---------------------------------------------
 * Each connection attempt first asks the sentinels, in turn from the last one
 * that answered, for the master's address (SENTINEL get-master-addr-by-name);
 * the first that names it wins, and both connections go there (and check
 * ROLE). After a failover the old master's connections break, and the next
 * attempt asks again: sentinels name the promoted replica once they agreed. */

static void sentinel_down(redis_t *r) {
    if (r->sconn) {
        psrpc__rconn_close(r->sconn);
        r->sconn = NULL;
    }
    if (r->wconn) {
        psrpc__rconn_close(r->wconn);
        r->wconn = NULL;
    }
}

/* The watch: SUBSCRIBE +switch-master on the sentinel that named the master.
 * A switch of our master ("NAME oldip oldport newip newport") to another
 * address drops the connections at once and reconnects without backoff, so a
 * master that is still reachable (a partition, a manual SENTINEL FAILOVER) is
 * left too. A failing watch is just dropped: the health PINGs and ROLE cover
 * the rest, and the next connection opens a new one. */
static void w_on_connected(psrpc__rconn *c) {
    redis_t *r = psrpc__rconn_owner(c);
    if (r->wconn != c)
        return;
    const char *argv[2] = {"SUBSCRIBE", "+switch-master"};
    size_t lens[2] = {9, 14};
    if (psrpc__rconn_send_command(c, 2, argv, lens, false) != PSRPC_OK) {
        psrpc__rconn_close(c);
        r->wconn = NULL;
    }
}

static void w_on_reply(psrpc__rconn *c, redisReply *rep) {
    redis_t *r = psrpc__rconn_owner(c);
    if (r->closing || r->wconn != c)
        return;
    if (!is_message(rep) || rep->element[2]->type != REDIS_REPLY_STRING)
        return;
    char name[256], oh[128], nh[128];
    int op = 0, np = 0;
    if (sscanf(rep->element[2]->str, "%255s %127s %d %127s %d", name, oh, &op, nh, &np) != 5 ||
        strcmp(name, r->master_name) != 0)
        return;
    if (np == r->port && strcmp(nh, r->host) == 0)
        return;
    char reason[400];
    snprintf(reason, sizeof reason, "sentinel: +switch-master %s from %s:%d to %s:%d",
             r->master_name, oh, op, nh, np);
    r->backoff_ms = 0;
    conn_lost(r, PSRPC_UNAVAILABLE, reason, false);
    r->backoff_ms = r->wait_min_ms;
}

static void w_on_error(psrpc__rconn *c, const char *why) {
    redis_t *r = psrpc__rconn_owner(c);
    (void)why;
    if (r->wconn != c)
        return;
    psrpc__rconn_close(c);
    r->wconn = NULL;
}

static void s_on_closed(psrpc__rconn *c);

/* Opens a connection to the current sentinel (r->s_idx) into *out, with the
 * given handlers (the lookup or the +switch-master watch). */
static psrpc_status sentinel_open(redis_t *r, psrpc__rconn **out,
                                  void (*on_connected)(psrpc__rconn *),
                                  void (*on_reply)(psrpc__rconn *, redisReply *),
                                  void (*on_error)(psrpc__rconn *, const char *),
                                  const char **reason) {
    psrpc__rconn_config cfg = {
        .loop = psrpc__loop_uv(r->bus->loop),
        .host = r->s_hosts[r->s_idx],
        .port = r->s_ports[r->s_idx],
        .ssl_ctx = r->ssl_ctx,
        .server_name = r->server_name,
        .max_bulk = 65536,
        .owner = r,
        .on_connected = on_connected,
        .on_reply = on_reply,
        .on_error = on_error,
        .on_closed = s_on_closed,
    };
    return psrpc__rconn_open(out, &cfg, reason);
}

static void sentinel_watch(redis_t *r) {
    const char *reason = NULL;
    if (sentinel_open(r, &r->wconn, w_on_connected, w_on_reply, w_on_error, &reason) != PSRPC_OK) {
        r->wconn = NULL;
        return;
    }
    r->handles++;
}

static void sentinel_next(redis_t *r);

static void sentinel_failed(redis_t *r, const char *why) {
    /* The reasons are for messages: cut to fit (a used return value tells
     * gcc's -Wformat-truncation that cutting is meant). */
    if (snprintf(r->s_why, sizeof r->s_why, "sentinel %s:%d: %s", r->s_hosts[r->s_idx],
                 r->s_ports[r->s_idx], why) < 0)
        r->s_why[0] = 0;
    sentinel_down(r);
    r->s_idx = (r->s_idx + 1) % r->ns;
    sentinel_next(r);
}

static void s_on_connected(psrpc__rconn *c) {
    redis_t *r = psrpc__rconn_owner(c);
    if (r->sconn != c)
        return;
    const char *argv[3] = {"SENTINEL", "get-master-addr-by-name", r->master_name};
    size_t lens[3] = {8, 23, strlen(r->master_name)};
    if (psrpc__rconn_send_command(c, 3, argv, lens, false) != PSRPC_OK)
        sentinel_failed(r, "out of memory");
}

static void s_on_reply(psrpc__rconn *c, redisReply *rep) {
    redis_t *r = psrpc__rconn_owner(c);
    if (r->closing || r->sconn != c)
        return;
    if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 2 &&
        rep->element[0]->type == REDIS_REPLY_STRING &&
        rep->element[1]->type == REDIS_REPLY_STRING) {
        long port = strtol(rep->element[1]->str, NULL, 10);
        char *host = psrpc__strdup(rep->element[0]->str);
        if (!host || port < 1 || port > 65535 || !*host) {
            free(host);
            sentinel_failed(r, "bad master address in the reply");
            return;
        }
        free(r->host);
        r->host = host;
        r->port = (int)port;
        snprintf(r->where, sizeof r->where, "%s%s%s:%d", strchr(host, ':') ? "[" : "", host,
                 strchr(host, ':') ? "]" : "", r->port);
        sentinel_down(r);
        sides_open(r);
        return;
    }
    char why[300];
    if (rep->type == REDIS_REPLY_ERROR)
        snprintf(why, sizeof why, "refused: %.200s", rep->str);
    else
        snprintf(why, sizeof why, "does not know master \"%.100s\"", r->master_name);
    sentinel_failed(r, why);
}

static void s_on_error(psrpc__rconn *c, const char *why) {
    redis_t *r = psrpc__rconn_owner(c);
    if (r->sconn != c)
        return;
    sentinel_failed(r, why);
}

static void s_on_closed(psrpc__rconn *c) {
    redis_t *r = psrpc__rconn_owner(c);
    r->handles--;
    check_closed(r);
}

static void sentinel_next(redis_t *r) {
    if (r->closing)
        return;
    if (r->s_tried++ >= r->ns) {
        char reason[400];
        if (snprintf(reason, sizeof reason, "sentinel master %s: no sentinel named it (last: %s)",
                     r->master_name, r->s_why) < 0)
            reason[0] = 0;
        conn_lost(r, PSRPC_UNAVAILABLE, reason, false);
        return;
    }
    const char *reason = NULL;
    if (sentinel_open(r, &r->sconn, s_on_connected, s_on_reply, s_on_error, &reason) != PSRPC_OK) {
        r->sconn = NULL;
        if (snprintf(r->s_why, sizeof r->s_why, "sentinel %s:%d: %s", r->s_hosts[r->s_idx],
                     r->s_ports[r->s_idx], reason ? reason : "cannot connect") < 0)
            r->s_why[0] = 0;
        r->s_idx = (r->s_idx + 1) % r->ns;
        sentinel_next(r);
        return;
    }
    r->handles++;
}

/* ---- Cluster: the node for the connections -----------------------------------
 * Each connection attempt asks the cluster nodes for the slot map (in turn,
 * from the one after the node last used); both connections go to the node
 * that answered. When that node fails, the next attempt goes to another. The
 * queue locks go their own way (redis_cluster.c). */

static void cluster_discovered(void *owner, const char *host, int port, const char *err,
                               bool auth_refused) {
    redis_t *r = owner;
    if (r->closing)
        return;
    if (err) {
        /* Every node refused the AUTH: as a plain redis:// bus, twice in a
         * row stops the retries. */
        conn_lost(r, auth_refused ? PSRPC_UNAUTHENTICATED : PSRPC_UNAVAILABLE, err, auth_refused);
        return;
    }
    char *h = psrpc__strdup(host);
    if (!h) {
        conn_lost(r, PSRPC_UNAVAILABLE, "out of memory while connecting", false);
        return;
    }
    free(r->host);
    r->host = h;
    r->port = port;
    snprintf(r->where, sizeof r->where, "cluster node %s%s%s:%d", strchr(h, ':') ? "[" : "", h,
             strchr(h, ':') ? "]" : "", port);
    sides_open(r);
}

static void cluster_lock_done(void *owner, void *a, void *b, int outcome) {
    redis_t *r = owner;
    /* Given up (no master took the SET within the lock's 5 s): this server
     * does not take the request; counted, as the request may be lost if no
     * other server took it either. */
    if (outcome == PSRPC__LOCK_GIVEN_UP && !r->closing)
        PSRPC__DROP(r->bus, dropped_expired, PSRPC__DROP_EXPIRED);
    lock_done(r, a, b, outcome == PSRPC__LOCK_ACQUIRED);
}

static void cluster_closed(void *owner) {
    redis_t *r = owner;
    r->cl = NULL; /* it freed itself */
    r->handles--;
    check_closed(r);
}

static void attempt_timeout(uv_timer_t *t) {
    redis_t *r = t->data;
    const char *stage = r->sconn ? "asking the sentinels for the master"
                        : r->cl && r->sub.state == S_DOWN
                            ? "asking the cluster nodes for the slot map"
                        : r->sub.state == S_CONNECTING || r->pub.state == S_CONNECTING
                            ? (r->tls ? "connecting (TCP and TLS)" : "connecting")
                        : r->sub.state == S_HANDSHAKE || r->pub.state == S_HANDSHAKE
                            ? "waiting for the AUTH/SELECT/PING replies"
                            : "waiting for the SUBSCRIBE replies";
    char reason[400];
    snprintf(reason, sizeof reason, "%s: timed out after %lld ms %s", r->where,
             (long long)r->connect_timeout_ms, stage);
    conn_lost(r, PSRPC_UNAVAILABLE, reason, false);
}

static void retry_fire(uv_timer_t *t) { attempt_start(t->data); }

static void attempt_start(redis_t *r) {
    if (r->closing || r->stopped)
        return;
    if (r->attempts++ > 0)
        PSRPC__STAT_ADD(r->bus, reconnect_attempts, 1);
    uv_timer_start(&r->attempt_timer, attempt_timeout, (uint64_t)r->connect_timeout_ms, 0);
    if (r->sentinel) {
        r->s_tried = 0;
        r->s_why[0] = 0;
        sentinel_next(r);
        return;
    }
    if (r->cl) {
        psrpc__rcluster_discover(r->cl); /* cluster_discovered follows */
        return;
    }
    sides_open(r);
}

static void sides_open(redis_t *r) {
    char why[400];
    if (!side_open(&r->sub, why, sizeof why) || !side_open(&r->pub, why, sizeof why))
        conn_lost(r, PSRPC_UNAVAILABLE, why, false);
}

/* The bus gave up: every subscription still waiting for its SUBSCRIBE
 * acknowledgement is refused with the bus's status (on the next loop turn). */
static void refuse_waiting(redis_t *r) {
    psrpc__map_iter it;
    psrpc__map_iter_init(&it, &r->chans);
    for (psrpc__map_entry *e; (e = psrpc__map_iter_next(&it));) {
        rchan *ch = e->value;
        for (struct psrpc__bus_sub *s = ch->subs; s; s = s->next)
            if (s->active && !s->ready_done)
                post_refusal(r, s);
    }
}

/* Tears both connections down, reports DISCONNECTED and schedules the next
 * attempt (unless authentication failed twice in a row). */
static void conn_lost(redis_t *r, int status, const char *reason, bool auth) {
    if (r->closing)
        return;
    r->gen++;
    sentinel_down(r);
    if (r->cl)
        psrpc__rcluster_abandon(r->cl);
    side_down(&r->sub);
    side_down(&r->pub);
    uv_timer_stop(&r->attempt_timer);
    uv_timer_stop(&r->ping_timer);
    r->resub_outstanding = 0;
    r->resubscribing = false;
    r->connected = false;
    denied_clear(r); /* ACLs may have changed: try those channels again */
    /* Nothing is subscribed any more. */
    size_t n = r->chans.count, i = 0;
    rchan **v = n ? malloc(n * sizeof *v) : NULL;
    psrpc__map_iter it;
    psrpc__map_iter_init(&it, &r->chans);
    for (psrpc__map_entry *e; (e = psrpc__map_iter_next(&it));) {
        rchan *ch = e->value;
        ch->sent_sub = ch->acked = false;
        ch->inflight = 0;
        if (v)
            v[i++] = ch;
    }
    for (size_t j = 0; j < i; j++)
        chan_maybe_free(r, v[j]);
    free(v);
    if (auth && ++r->auth_failures >= 2)
        r->stopped = true;
    if (!r->stopped) {
        int64_t d = r->backoff_ms * (80 + (int64_t)(rnd(r) % 41)) / 100;
        r->backoff_ms = r->backoff_ms * 2 > r->wait_max_ms ? r->wait_max_ms : r->backoff_ms * 2;
        uv_timer_start(&r->retry_timer, retry_fire, (uint64_t)(d > 0 ? d : 0), 0);
    }
    char msg[512];
    snprintf(msg, sizeof msg, "%s%s", reason,
             r->stopped ? " (not retrying after 2 authentication failures)" : "");
    scrub(r, msg);
    psrpc__bus_set_state(r->bus, PSRPC_BUS_DISCONNECTED, status, msg);
    if (r->stopped)
        refuse_waiting(r);
}

/* ---- transport entry points ---------------------------------------------- */

static void redis_start(psrpc_bus *bus) {
    redis_t *r = bus->transport_state;
    if (r->started || r->closing)
        return;
    uv_loop_t *loop = psrpc__loop_uv(bus->loop);
    uv_timer_t *timers[3] = {&r->retry_timer, &r->attempt_timer, &r->ping_timer};
    for (int i = 0; i < 3; i++) {
        uv_timer_init(loop, timers[i]); /* cannot fail on Unix */
        timers[i]->data = r;
        r->handles++;
    }
    if (r->cl) {
        psrpc__rcluster_start(r->cl, loop);
        r->handles++;
    }
    r->started = true;
    attempt_start(r);
}

static void timer_closed(uv_handle_t *h) {
    redis_t *r = h->data;
    r->handles--;
    check_closed(r);
}

static void redis_close(psrpc_bus *bus, void (*done)(psrpc_bus *bus)) {
    redis_t *r = bus->transport_state;
    if (r->closing)
        return;
    r->closing = true;
    r->close_done = done;
    if (!r->started) {
        r->close_done = NULL;
        done(bus);
        return;
    }
    sentinel_down(r);
    if (r->cl)
        psrpc__rcluster_close(r->cl); /* cluster_closed follows */
    side_down(&r->sub);
    side_down(&r->pub);
    uv_close((uv_handle_t *)&r->retry_timer, timer_closed);
    uv_close((uv_handle_t *)&r->attempt_timer, timer_closed);
    uv_close((uv_handle_t *)&r->ping_timer, timer_closed);
}

static void free_str_secret(char *s) {
    if (s) {
        OPENSSL_cleanse(s, strlen(s));
        free(s);
    }
}

static void redis_free(redis_t *r) {
    psrpc__map_iter it;
    psrpc__map_iter_init(&it, &r->chans);
    for (psrpc__map_entry *e; (e = psrpc__map_iter_next(&it));) {
        rchan *ch = e->value;
        while (ch->subs) {
            struct psrpc__bus_sub *s = ch->subs;
            ch->subs = s->next;
            free(s);
        }
        free(ch->name);
        free(ch);
    }
    psrpc__map_clear(&r->chans);
    free(r->sub.q.v);
    free(r->pub.q.v);
    free(r->pre);
    for (size_t i = 0; i < r->pre_count; i++)
        free(r->pre_names[i]);
    free(r->pre_names);
    denied_clear(r);
    if (r->ssl_ctx)
        SSL_CTX_free(r->ssl_ctx);
    free(r->host);
    free_str_secret(r->user);
    free_str_secret(r->pass);
    free(r->server_name);
    free(r->prefix);
    for (size_t i = 0; i < r->ns; i++)
        free(r->s_hosts[i]);
    free(r->s_hosts);
    free(r->s_ports);
    free(r->master_name);
    psrpc__rcluster_free(r->cl); /* NULL unless it never started */
    free(r);
}

static void redis_destroy(psrpc_bus *bus) {
    redis_t *r = bus->transport_state;
    if (!r)
        return;
    bus->transport_state = NULL;
    redis_free(r);
}

static const psrpc__transport psrpc__transport_redis = {
    .scheme = "redis",
    .start = redis_start,
    .publish = redis_publish,
    .subscribe = redis_subscribe,
    .unsubscribe = redis_unsubscribe,
    .close = redis_close,
    .destroy = redis_destroy,
};

/* ---- opening: URL, options, TLS -------------------------------------------- */

static int parse_url(redis_t *r, psrpc_bus *bus, const char *url) {
    const char *safe = bus->url_safe;
    const char *p;
    if (strncmp(url, "rediss://", 9) == 0) {
        r->tls = true;
        p = url + 9;
    } else {
        p = url + 8;
    }
    if (strpbrk(p, "?#"))
        return psrpc__error(PSRPC_INVALID_ARGUMENT,
                            "redis URL %s: query and fragment are not supported", safe);
    const char *slash = strchr(p, '/');
    const char *auth_end = slash ? slash : p + strlen(p);
    /* userinfo: up to the last '@' of the authority */
    const char *at = NULL;
    for (const char *q = p; q < auth_end; q++)
        if (*q == '@')
            at = q;
    const char *hp = p;
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        bool oom = false;
        if (colon) {
            if (colon > p) {
                r->user = psrpc__url_unescape(p, (size_t)(colon - p), &oom);
                if (!r->user)
                    goto bad_userinfo;
            }
            r->pass = psrpc__url_unescape(colon + 1, (size_t)(at - colon - 1), &oom);
        } else {
            r->pass = psrpc__url_unescape(p, (size_t)(at - p), &oom);
        }
        if (!r->pass)
            goto bad_userinfo;
        if (!*r->pass) {
            free_str_secret(r->pass);
            r->pass = NULL;
            if (r->user)
                return psrpc__error(PSRPC_INVALID_ARGUMENT, "redis URL %s: a user needs a password",
                                    safe);
        }
        hp = at + 1;
        goto userinfo_done;
    bad_userinfo:
        return oom ? psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory")
                   : psrpc__error(PSRPC_INVALID_ARGUMENT,
                                  "redis URL %s: bad percent-encoding in the user info", safe);
    }
userinfo_done:;
    const char *host_start = hp, *host_end, *port_start = NULL;
    if (*hp == '[') {
        const char *close = memchr(hp, ']', (size_t)(auth_end - hp));
        if (!close)
            return psrpc__error(PSRPC_INVALID_ARGUMENT, "redis URL %s: unclosed '['", safe);
        host_start = hp + 1;
        host_end = close;
        if (close + 1 < auth_end) {
            if (close[1] != ':')
                return psrpc__error(PSRPC_INVALID_ARGUMENT, "redis URL %s: bad host", safe);
            port_start = close + 2;
        }
    } else {
        const char *colon = memchr(hp, ':', (size_t)(auth_end - hp));
        host_end = colon ? colon : auth_end;
        if (colon)
            port_start = colon + 1;
    }
    if (host_end == host_start)
        return psrpc__error(PSRPC_INVALID_ARGUMENT, "redis URL %s: no host", safe);
    r->host = malloc((size_t)(host_end - host_start) + 1);
    if (!r->host)
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
    memcpy(r->host, host_start, (size_t)(host_end - host_start));
    r->host[host_end - host_start] = 0;
    r->port = DEFAULT_PORT;
    if (port_start) {
        long port = 0;
        const char *q = port_start;
        if (q == auth_end)
            return psrpc__error(PSRPC_INVALID_ARGUMENT, "redis URL %s: empty port", safe);
        for (; q < auth_end; q++) {
            if (*q < '0' || *q > '9' || port > 65535)
                return psrpc__error(PSRPC_INVALID_ARGUMENT, "redis URL %s: bad port", safe);
            port = port * 10 + (*q - '0');
        }
        if (port < 1 || port > 65535)
            return psrpc__error(PSRPC_INVALID_ARGUMENT, "redis URL %s: bad port", safe);
        r->port = (int)port;
    }
    r->db = 0;
    if (slash && slash[1]) {
        long db = 0;
        for (const char *q = slash + 1; *q; q++) {
            if (*q < '0' || *q > '9' || db > 1000000)
                return psrpc__error(PSRPC_INVALID_ARGUMENT,
                                    "redis URL %s: the path must be a database number", safe);
            db = db * 10 + (*q - '0');
        }
        r->db = db;
    }
    snprintf(r->where, sizeof r->where, "%s%s%s:%d", strchr(r->host, ':') ? "[" : "", r->host,
             strchr(r->host, ':') ? "]" : "", r->port);
    return PSRPC_OK;
}

/* redis+sentinel://[user:password@]host:port[,host:port...]/MASTER_NAME
 * (rediss+sentinel:// for TLS to the sentinels and the master). The user
 * information is the master's AUTH; each host:port is a sentinel. */
/* The credentials of a multi-host URL (sentinel, cluster): the USERINFO in
 * p..end before the last '@', parsed as those of "redis://USERINFO@h".
 * *list: where the host list starts. */
static int parse_userinfo(redis_t *r, psrpc_bus *bus, const char *p, const char *end,
                          const char **list) {
    const char *at = NULL;
    for (const char *q = p; q < end; q++)
        if (*q == '@')
            at = q;
    *list = at ? at + 1 : p;
    if (!at)
        return PSRPC_OK;
    size_t n = (size_t)(at - p);
    char *tmp = malloc(n + 16);
    if (!tmp)
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
    memcpy(tmp, "redis://", 8);
    memcpy(tmp + 8, p, n);
    memcpy(tmp + 8 + n, "@h", 3);
    int rc = parse_url(r, bus, tmp);
    OPENSSL_cleanse(tmp, n + 11);
    free(tmp);
    free(r->host);
    r->host = NULL;
    return rc;
}

static int parse_sentinel_url(redis_t *r, psrpc_bus *bus, const char *url) {
    const char *safe = bus->url_safe;
    bool tls = strncmp(url, "rediss+", 7) == 0;
    const char *p = url + (tls ? 18 : 17);
    if (strpbrk(p, "?#"))
        return psrpc__error(PSRPC_INVALID_ARGUMENT,
                            "redis URL %s: query and fragment are not supported", safe);
    const char *slash = strchr(p, '/');
    if (!slash || !slash[1] || strchr(slash + 1, '/'))
        return psrpc__error(PSRPC_INVALID_ARGUMENT,
                            "redis URL %s: a sentinel URL ends with /MASTER_NAME", safe);
    bool oom = false;
    r->master_name = psrpc__url_unescape(slash + 1, strlen(slash + 1), &oom);
    if (!r->master_name)
        return oom ? psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory")
                   : psrpc__error(PSRPC_INVALID_ARGUMENT,
                                  "redis URL %s: bad percent-encoding in the master name", safe);
    const char *list = p;
    int urc = parse_userinfo(r, bus, p, slash, &list);
    if (urc != PSRPC_OK)
        return urc;
    size_t cap = 1;
    for (const char *q = list; q < slash; q++)
        cap += *q == ',';
    r->s_hosts = calloc(cap, sizeof *r->s_hosts);
    r->s_ports = calloc(cap, sizeof *r->s_ports);
    if (!r->s_hosts || !r->s_ports)
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
    for (const char *q = list; q <= slash;) {
        const char *e = q;
        while (e < slash && *e != ',')
            e++;
        if (e == q || memchr(q, '@', (size_t)(e - q)))
            return psrpc__error(PSRPC_INVALID_ARGUMENT, "redis URL %s: bad sentinel address", safe);
        char tmp[300];
        if ((size_t)(e - q) > 250)
            return psrpc__error(PSRPC_INVALID_ARGUMENT, "redis URL %s: sentinel address too long",
                                safe);
        snprintf(tmp, sizeof tmp, "redis://%.*s", (int)(e - q), q);
        redis_t t = {0};
        int rc = parse_url(&t, bus, tmp);
        if (rc != PSRPC_OK) {
            free(t.host);
            return rc;
        }
        r->s_hosts[r->ns] = t.host;
        r->s_ports[r->ns++] =
            strchr(tmp + 8, ':') && !(tmp[8] == '[' && !strstr(tmp, "]:")) ? t.port : 26379;
        q = e + 1;
    }
    r->tls = tls;
    r->sentinel = true;
    r->host = psrpc__strdup("");
    if (!r->host)
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
    snprintf(r->where, sizeof r->where, "sentinel master %.200s", r->master_name);
    return PSRPC_OK;
}

/* redis+cluster://[user:password@]host:port[,host:port...] (rediss+cluster://
 * for TLS): the seed nodes; the others come from the slot map. */
static int parse_cluster_url(redis_t *r, psrpc_bus *bus, const char *url) {
    const char *safe = bus->url_safe;
    bool tls = strncmp(url, "rediss+", 7) == 0;
    const char *p = url + (tls ? 17 : 16);
    if (strpbrk(p, "?#"))
        return psrpc__error(PSRPC_INVALID_ARGUMENT,
                            "redis URL %s: query and fragment are not supported", safe);
    const char *end = p + strlen(p);
    const char *slash = strchr(p, '/');
    if (slash && (slash[1] && strcmp(slash + 1, "0") != 0))
        return psrpc__error(PSRPC_INVALID_ARGUMENT,
                            "redis URL %s: Redis Cluster has database 0 only (no path)", safe);
    if (slash)
        end = slash;
    const char *list = p;
    int urc = parse_userinfo(r, bus, p, end, &list);
    if (urc != PSRPC_OK)
        return urc;
    psrpc__rcluster_config cfg = {
        .user = NULL, /* set once the options are read (psrpc__redis_open) */
        .owner = r,
        .on_lock = cluster_lock_done,
        .on_discovered = cluster_discovered,
        .on_closed = cluster_closed,
    };
    if (psrpc__rcluster_new(&r->cl, &cfg) != PSRPC_OK)
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
    for (const char *q = list; q <= end;) {
        const char *e = q;
        while (e < end && *e != ',')
            e++;
        if (e == q || memchr(q, '@', (size_t)(e - q)))
            return psrpc__error(PSRPC_INVALID_ARGUMENT, "redis URL %s: bad cluster node address",
                                safe);
        if ((size_t)(e - q) > 250)
            return psrpc__error(PSRPC_INVALID_ARGUMENT,
                                "redis URL %s: cluster node address too long", safe);
        char tmp[300];
        snprintf(tmp, sizeof tmp, "redis://%.*s", (int)(e - q), q);
        redis_t t = {0};
        int rc = parse_url(&t, bus, tmp);
        if (rc == PSRPC_OK && psrpc__rcluster_add_seed(r->cl, t.host, t.port) != PSRPC_OK)
            rc = psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
        free(t.host);
        if (rc != PSRPC_OK)
            return rc;
        q = e + 1;
    }
    r->tls = tls;
    r->host = psrpc__strdup("");
    if (!r->host)
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
    snprintf(r->where, sizeof r->where, "redis cluster");
    return PSRPC_OK;
}

static int tls_error(const char *what, const char *file) {
    char tmp[160];
    unsigned long e = ERR_get_error();
    ERR_error_string_n(e, tmp, sizeof tmp);
    ERR_clear_error();
    return psrpc__error(PSRPC_INVALID_ARGUMENT, "redis TLS: cannot load %s %s: %s", what,
                        file ? file : "", e ? tmp : "unknown error");
}

static int tls_setup(redis_t *r, const psrpc_bus_options *o) {
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        ERR_clear_error();
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "redis TLS: cannot create a context");
    }
    r->ssl_ctx = ctx;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (o->tls_ca_file) {
        if (SSL_CTX_load_verify_locations(ctx, o->tls_ca_file, NULL) != 1)
            return tls_error("tls_ca_file", o->tls_ca_file);
    } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
        return tls_error("the system CA store", NULL);
    }
    if ((o->tls_cert_file != NULL) != (o->tls_key_file != NULL))
        return psrpc__error(PSRPC_INVALID_ARGUMENT,
                            "redis TLS: tls_cert_file and tls_key_file go together");
    if (o->tls_cert_file) {
        if (SSL_CTX_use_certificate_chain_file(ctx, o->tls_cert_file) != 1)
            return tls_error("tls_cert_file", o->tls_cert_file);
        if (SSL_CTX_use_PrivateKey_file(ctx, o->tls_key_file, SSL_FILETYPE_PEM) != 1)
            return tls_error("tls_key_file", o->tls_key_file);
        if (SSL_CTX_check_private_key(ctx) != 1)
            return tls_error("tls_key_file (does not match tls_cert_file)", o->tls_key_file);
    }
    return PSRPC_OK;
}

static int get_ms(int64_t v, int64_t dflt, const char *name, int64_t *out) {
    if (v < 0)
        return psrpc__error(PSRPC_INVALID_ARGUMENT, "%s is negative", name);
    *out = v ? v : dflt;
    return PSRPC_OK;
}

int psrpc__redis_open(psrpc_bus *bus, const char *url) {
    const psrpc_bus_options *o = &bus->opts;
    /* OpenSSL initializes itself lazily (configuration, error tables, per
     * thread state) on first use. Do it here, on the caller's thread, rather
     * than on the loop thread in the middle of the first queue lock. */
    if (OPENSSL_init_ssl(0, NULL) != 1) {
        ERR_clear_error();
        return psrpc__error(PSRPC_INTERNAL, "redis: OpenSSL failed to initialize");
    }
    redis_t *r = calloc(1, sizeof *r);
    if (!r)
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
    r->bus = bus;
    psrpc__map_init(&r->chans);
    psrpc__map_init(&r->denied);
    r->sub = (side){.r = r, .what = "subscriber"};
    r->pub = (side){.r = r, .what = "publisher"};
    int rc = strstr(url, "+sentinel://")  ? parse_sentinel_url(r, bus, url)
             : strstr(url, "+cluster://") ? parse_cluster_url(r, bus, url)
                                          : parse_url(r, bus, url);
    if (o->flags & PSRPC_BUS_TLS)
        r->tls = true;
    if (rc == PSRPC_OK)
        rc = get_ms(o->connect_timeout_ms, 5000, "connect_timeout_ms", &r->connect_timeout_ms);
    if (rc == PSRPC_OK)
        rc = get_ms(o->ping_interval_ms, 3000, "ping_interval_ms", &r->ping_ms);
    if (rc == PSRPC_OK)
        rc = get_ms(o->reconnect_wait_ms, 100, "reconnect_wait_ms", &r->wait_min_ms);
    if (rc == PSRPC_OK)
        rc = get_ms(o->reconnect_wait_max_ms, 1000, "reconnect_wait_max_ms", &r->wait_max_ms);
    if (rc == PSRPC_OK && o->reconnect_buffer_size < 0)
        rc = psrpc__error(PSRPC_INVALID_ARGUMENT, "reconnect_buffer_size is negative");
    if (rc == PSRPC_OK && !r->tls &&
        (o->tls_ca_file || o->tls_cert_file || o->tls_key_file || o->tls_server_name))
        rc = psrpc__error(PSRPC_INVALID_ARGUMENT,
                          "redis: TLS options are set but TLS is off (use rediss:// or "
                          "PSRPC_BUS_TLS)");
    if (rc == PSRPC_OK && r->tls)
        rc = tls_setup(r, o);
    if (rc == PSRPC_OK && o->tls_server_name &&
        !(r->server_name = psrpc__strdup(o->tls_server_name)))
        rc = psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
    if (rc == PSRPC_OK && o->channel_prefix && *o->channel_prefix) {
        r->prefix = psrpc__strdup(o->channel_prefix);
        if (!r->prefix)
            rc = psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
        else
            r->prefix_len = strlen(r->prefix);
    }
    if (rc != PSRPC_OK) {
        redis_free(r);
        return rc;
    }
    if (!r->prefix) {
        r->prefix = psrpc__strdup("");
        if (!r->prefix) {
            redis_free(r);
            return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
        }
    }
    if (r->wait_max_ms < r->wait_min_ms)
        r->wait_max_ms = r->wait_min_ms;
    if (r->cl) {
        /* The settings the lock connections share with the bus's (borrowed:
         * they live as long as r). */
        psrpc__rcluster_config cfg = {
            .ssl_ctx = r->ssl_ctx,
            .server_name = r->server_name,
            .user = r->user,
            .pass = r->pass,
            .timeout_ms = r->connect_timeout_ms,
            .max_bulk = 65536,
            .owner = r,
            .on_lock = cluster_lock_done,
            .on_discovered = cluster_discovered,
            .on_closed = cluster_closed,
        };
        psrpc__rcluster_configure(r->cl, &cfg);
    }
    r->backoff_ms = r->wait_min_ms;
    r->out_cap = o->reconnect_buffer_size > 0 ? (size_t)o->reconnect_buffer_size : DEFAULT_OUT_CAP;
    if (r->out_cap < 2 * (size_t)o->max_message_size + 1024)
        r->out_cap = 2 * (size_t)o->max_message_size + 1024;
    if (getrandom(&r->rng, sizeof r->rng, 0) != (ssize_t)sizeof r->rng || r->rng == 0)
        r->rng = (uint64_t)psrpc__now_ns() | 1;
    bus->transport = &psrpc__transport_redis;
    bus->transport_state = r;
    return PSRPC_OK;
}
