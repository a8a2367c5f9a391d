/* Redis Cluster: slot map, key slots and queue locks routed to the slot's
 * master (see redis_cluster.h).
 *
 * Nodes are kept by address in one array (seeds, then every master and
 * replica CLUSTER SLOTS named), never removed while the object lives: the
 * slot map holds indexes into it. A node has a connection only while locks go
 * to it. Each lock (lreq) is in exactly one list at a time: a node's `wait`
 * (its connection is being made), a node's `sent` (in reply order), or
 * `parked` (waiting for a slot map refresh); it leaves through finish(),
 * which reports its outcome once. */
#include "redis_cluster.h"

#include <openssl/crypto.h>
#include <stdio.h>

#include "common.h"
#include "redis_conn.h"

#define LOCK_EXPIRY_S "5"
#define LOCK_MAX_AGE_MS 5000 /* a lock older than its expiry means nothing */
#define MAX_REDIRECTS 16
#define MAX_NODES 1024
#define TICK_MS 100
#define REFRESH_MIN_MS 200 /* slot map refreshes for parked locks, at most this often */

uint16_t psrpc__redis_keyslot(const char *key, size_t len) {
    /* The hash tag: the part between the first '{' and the next '}', if
     * that part is not empty. */
    const char *open = memchr(key, '{', len);
    if (open) {
        size_t rest = len - (size_t)(open - key) - 1;
        const char *close = memchr(open + 1, '}', rest);
        if (close && close > open + 1) {
            key = open + 1;
            len = (size_t)(close - key);
        }
    }
    /* CRC16/XMODEM: polynomial 0x1021, initial value 0, no reflection. */
    uint16_t crc = 0;
    for (size_t i = 0; i < len; i++) {
        crc ^= (uint16_t)((uint8_t)key[i] << 8);
        for (int b = 0; b < 8; b++)
            crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
    }
    return crc & (PSRPC__CLUSTER_SLOTS - 1);
}

bool psrpc__cluster_parse_redirect(const char *err, int *slot, char *host, size_t host_cap,
                                   int *port, bool *ask) {
    const char *p;
    if (strncmp(err, "MOVED ", 6) == 0) {
        *ask = false;
        p = err + 6;
    } else if (strncmp(err, "ASK ", 4) == 0) {
        *ask = true;
        p = err + 4;
    } else {
        return false;
    }
    long s = 0;
    const char *q = p;
    while (*q >= '0' && *q <= '9' && s < PSRPC__CLUSTER_SLOTS)
        s = s * 10 + (*q++ - '0');
    if (q == p || *q != ' ' || s >= PSRPC__CLUSTER_SLOTS)
        return false;
    const char *addr = q + 1;
    const char *colon = strrchr(addr, ':');
    if (!colon || !colon[1])
        return false;
    long pt = 0;
    for (q = colon + 1; *q; q++) {
        if (*q < '0' || *q > '9' || pt > 65535)
            return false;
        pt = pt * 10 + (*q - '0');
    }
    if (pt < 1 || pt > 65535)
        return false;
    const char *hs = addr, *he = colon;
    if (he > hs && *hs == '[' && he[-1] == ']') {
        hs++;
        he--;
    }
    if ((size_t)(he - hs) >= host_cap)
        return false;
    memcpy(host, hs, (size_t)(he - hs));
    host[he - hs] = 0;
    *slot = (int)s;
    *port = (int)pt;
    return true;
}

/* ---- state ----------------------------------------------------------------- */

typedef struct lreq {
    struct lreq *next;
    void *a, *b;
    uint64_t born_ms, sent_ms;
    uint16_t slot;
    uint8_t redirects;
    bool asking;       /* an ASK redirect: ASKING + SET to ask_node, once */
    bool asking_reply; /* in flight: the ASKING reply comes before the SET's */
    int ask_node;
    char value[24];
    size_t klen;
    char key[];
} lreq;

typedef struct lq {
    lreq *head, *tail;
    size_t n;
} lq;

static void lq_push(lq *q, lreq *r) {
    r->next = NULL;
    if (q->tail)
        q->tail->next = r;
    else
        q->head = r;
    q->tail = r;
    q->n++;
}

static lreq *lq_pop(lq *q) {
    lreq *r = q->head;
    if (r) {
        q->head = r->next;
        if (!q->head)
            q->tail = NULL;
        q->n--;
        r->next = NULL;
    }
    return r;
}

/* Moves everything of src to the end of dst. */
static void lq_splice(lq *dst, lq *src) {
    if (!src->head)
        return;
    if (dst->tail)
        dst->tail->next = src->head;
    else
        dst->head = src->head;
    dst->tail = src->tail;
    dst->n += src->n;
    *src = (lq){0};
}

typedef struct cnode {
    psrpc__rcluster *cl;
    char *host;
    int port;
    psrpc__rconn *conn;
    bool connected;
    int auth_pending; /* AUTH replies still to come */
    uint64_t opened_ms;
    lq wait, sent;
} cnode;

struct psrpc__rcluster {
    psrpc__rcluster_config cfg;
    uv_loop_t *loop;
    bool started, closing;
    int handles;
    uv_timer_t tick;
    cnode **nodes;
    size_t nn, ncap;
    int16_t slot[PSRPC__CLUSTER_SLOTS]; /* node index, -1 = unknown */
    lq parked;
    /* Slot map discovery: one at a time. */
    psrpc__rconn *dconn;
    bool d_running, d_wanted;
    bool want_refresh; /* a MOVED came: the slot map is stale elsewhere too */
    int d_idx;         /* the node being asked */
    size_t d_next;     /* the next node to ask */
    size_t d_tried;    /* nodes asked in this discovery */
    int d_auth_pending;
    size_t d_auth_refused; /* nodes of this discovery that refused the AUTH */
    uint64_t d_started_ms, last_refresh_ms;
    int last_good; /* the node that answered last (-1: none yet) */
    char d_why[300];
};

static uint64_t now_ms(const psrpc__rcluster *cl) { return uv_now(cl->loop); }

static void finish(psrpc__rcluster *cl, lreq *r, int outcome) {
    void *a = r->a, *b = r->b;
    free(r);
    cl->cfg.on_lock(cl->cfg.owner, a, b, outcome);
}

static void route(psrpc__rcluster *cl, lreq *r);
static void discover_start(psrpc__rcluster *cl);

static int node_find(psrpc__rcluster *cl, const char *host, int port, bool add) {
    for (size_t i = 0; i < cl->nn; i++)
        if (cl->nodes[i]->port == port && strcmp(cl->nodes[i]->host, host) == 0)
            return (int)i;
    if (!add || cl->nn >= MAX_NODES)
        return -1;
    if (cl->nn == cl->ncap) {
        size_t cap = cl->ncap ? cl->ncap * 2 : 8;
        cnode **v = realloc(cl->nodes, cap * sizeof *v);
        if (!v)
            return -1;
        cl->nodes = v;
        cl->ncap = cap;
    }
    cnode *n = calloc(1, sizeof *n);
    if (!n || !(n->host = psrpc__strdup(host))) {
        free(n);
        return -1;
    }
    n->cl = cl;
    n->port = port;
    cl->nodes[cl->nn++] = n;
    return (int)(cl->nn - 1);
}

static void park(psrpc__rcluster *cl, lreq *r) {
    r->asking = false;
    r->asking_reply = false;
    lq_push(&cl->parked, r);
}

static void check_closed(psrpc__rcluster *cl) {
    if (!cl->closing || cl->handles > 0)
        return;
    void (*done)(void *) = cl->cfg.on_closed;
    void *owner = cl->cfg.owner;
    psrpc__rcluster_free(cl);
    if (done)
        done(owner);
}

/* ---- the connections to the masters ---------------------------------------- */

static void node_fail(cnode *n, const char *why) {
    (void)why;
    psrpc__rcluster *cl = n->cl;
    if (n->conn) {
        psrpc__rconn_close(n->conn);
        n->conn = NULL;
    }
    n->connected = false;
    n->auth_pending = 0;
    /* What it had not answered goes again after a slot map refresh (a SET
     * that did reach the dead master is lost with it, or is answered nil
     * by the promoted replica: then no server takes that request and its
     * caller times out, which is one outcome too). */
    lreq *r;
    while ((r = lq_pop(&n->sent)))
        park(cl, r);
    while ((r = lq_pop(&n->wait)))
        park(cl, r);
}

static void node_write(cnode *n, lreq *r) {
    psrpc__rcluster *cl = n->cl;
    int rc = PSRPC_OK;
    if (r->asking) {
        const char *argv[1] = {"ASKING"};
        size_t lens[1] = {6};
        rc = psrpc__rconn_send_command(n->conn, 1, argv, lens, false);
        r->asking_reply = rc == PSRPC_OK;
        r->asking = false;
    }
    if (rc == PSRPC_OK) {
        const char *argv[6] = {"SET", r->key, r->value, "EX", LOCK_EXPIRY_S, "NX"};
        size_t lens[6] = {3, r->klen, strlen(r->value), 2, 1, 2};
        rc = psrpc__rconn_send_command(n->conn, 6, argv, lens, false);
    }
    if (rc != PSRPC_OK) {
        /* The connection is failing (its error follows) or out of memory:
         * an ASKING already queued would be answered for nothing, so the
         * connection is not trusted any more either way. */
        park(cl, r);
        node_fail(n, "cannot send");
        return;
    }
    r->sent_ms = now_ms(cl);
    lq_push(&n->sent, r);
}

static void n_on_connected(psrpc__rconn *c) {
    cnode *n = psrpc__rconn_owner(c);
    psrpc__rcluster *cl = n->cl;
    if (n->conn != c)
        return;
    n->connected = true;
    if (cl->cfg.pass) {
        const char *argv[3] = {"AUTH", cl->cfg.user, cl->cfg.pass};
        size_t lens[3] = {4, cl->cfg.user ? strlen(cl->cfg.user) : 0, strlen(cl->cfg.pass)};
        int rc = cl->cfg.user
                     ? psrpc__rconn_send_command(c, 3, argv, lens, true)
                     : psrpc__rconn_send_command(c, 2, (const char *[]){"AUTH", cl->cfg.pass},
                                                 (size_t[]){4, lens[2]}, true);
        if (rc != PSRPC_OK) {
            node_fail(n, "cannot send AUTH");
            return;
        }
        n->auth_pending = 1;
    }
    lreq *r;
    while (n->conn == c && (r = lq_pop(&n->wait)))
        node_write(n, r);
}

static bool retryable(const char *e) {
    return strncmp(e, "CLUSTERDOWN", 11) == 0 || strncmp(e, "TRYAGAIN", 8) == 0 ||
           strncmp(e, "LOADING", 7) == 0 || strncmp(e, "MASTERDOWN", 10) == 0;
}

static void set_reply(psrpc__rcluster *cl, cnode *n, lreq *r, const redisReply *rep) {
    if (rep->type == REDIS_REPLY_STATUS && rep->str && strcmp(rep->str, "OK") == 0) {
        finish(cl, r, PSRPC__LOCK_ACQUIRED);
        return;
    }
    if (rep->type != REDIS_REPLY_ERROR || !rep->str) {
        finish(cl, r, PSRPC__LOCK_NOT_OURS); /* nil: another server holds it */
        return;
    }
    int slot = 0, port = 0;
    bool ask = false;
    char host[256];
    if (psrpc__cluster_parse_redirect(rep->str, &slot, host, sizeof host, &port, &ask)) {
        int idx = node_find(cl, host[0] ? host : n->host, port, true);
        if (idx < 0 || ++r->redirects > MAX_REDIRECTS) {
            finish(cl, r, PSRPC__LOCK_GIVEN_UP);
            return;
        }
        if (ask) {
            r->asking = true;
            r->ask_node = idx;
        } else {
            /* This slot at once; the rest of the map on the next tick
             * (slots move in ranges: learn them before they cost a MOVED
             * each). */
            cl->slot[slot] = (int16_t)idx;
            cl->want_refresh = true;
        }
        route(cl, r);
        return;
    }
    if (retryable(rep->str)) {
        park(cl, r);
        return;
    }
    /* NOPERM and the like: this server does not take the request. */
    finish(cl, r, PSRPC__LOCK_NOT_OURS);
}

static void n_on_reply(psrpc__rconn *c, redisReply *rep) {
    cnode *n = psrpc__rconn_owner(c);
    psrpc__rcluster *cl = n->cl;
    if (n->conn != c || cl->closing)
        return;
    if (n->auth_pending) {
        n->auth_pending--;
        if (rep->type == REDIS_REPLY_ERROR)
            node_fail(n, "AUTH refused");
        return;
    }
    lreq *r = n->sent.head;
    if (!r) {
        node_fail(n, "unexpected reply");
        return;
    }
    if (r->asking_reply) {
        r->asking_reply = false; /* the SET's own reply says how it went */
        return;
    }
    lq_pop(&n->sent);
    set_reply(cl, n, r, rep);
}

static void n_on_error(psrpc__rconn *c, const char *why) {
    cnode *n = psrpc__rconn_owner(c);
    if (n->conn == c)
        node_fail(n, why);
}

static void n_on_closed(psrpc__rconn *c) {
    cnode *n = psrpc__rconn_owner(c);
    psrpc__rcluster *cl = n->cl;
    cl->handles--;
    check_closed(cl);
}

static psrpc__rconn_config conn_config(psrpc__rcluster *cl, cnode *n, void *owner) {
    psrpc__rconn_config cfg = {
        .loop = cl->loop,
        .host = n->host,
        .port = n->port,
        .ssl_ctx = cl->cfg.ssl_ctx,
        .server_name = cl->cfg.server_name,
        .max_bulk = cl->cfg.max_bulk,
        .owner = owner,
    };
    return cfg;
}

static bool node_open(cnode *n) {
    psrpc__rcluster *cl = n->cl;
    psrpc__rconn_config cfg = conn_config(cl, n, n);
    cfg.on_connected = n_on_connected;
    cfg.on_reply = n_on_reply;
    cfg.on_error = n_on_error;
    cfg.on_closed = n_on_closed;
    const char *reason = NULL;
    if (psrpc__rconn_open(&n->conn, &cfg, &reason) != PSRPC_OK) {
        n->conn = NULL;
        return false;
    }
    cl->handles++;
    n->connected = false;
    n->auth_pending = 0;
    n->opened_ms = now_ms(cl);
    return true;
}

/* Sends a lock to the master of its slot (or, after ASK, to the node named). */
static void route(psrpc__rcluster *cl, lreq *r) {
    if (cl->closing || now_ms(cl) - r->born_ms > LOCK_MAX_AGE_MS) {
        finish(cl, r, PSRPC__LOCK_GIVEN_UP);
        return;
    }
    int idx = r->asking ? r->ask_node : cl->slot[r->slot];
    if (idx < 0) /* slot not covered: any node answers MOVED if it knows better */
        idx = cl->last_good >= 0 ? cl->last_good : cl->nn ? 0 : -1;
    if (idx < 0) {
        park(cl, r);
        return;
    }
    cnode *n = cl->nodes[idx];
    if (!n->conn && !node_open(n)) {
        park(cl, r);
        return;
    }
    if (!n->connected)
        lq_push(&n->wait, r);
    else
        node_write(n, r);
}

/* ---- slot map discovery ------------------------------------------------------ */

static void d_close(psrpc__rcluster *cl) {
    if (cl->dconn) {
        psrpc__rconn_close(cl->dconn);
        cl->dconn = NULL;
    }
    cl->d_auth_pending = 0;
}

/* Sends every parked lock again (after a refresh). */
static void reroute_parked(psrpc__rcluster *cl) {
    lq q = cl->parked;
    cl->parked = (lq){0};
    lreq *r;
    while ((r = lq_pop(&q)))
        route(cl, r);
}

static void d_finished(psrpc__rcluster *cl, const char *err) {
    cl->d_running = false;
    cl->last_refresh_ms = now_ms(cl);
    d_close(cl);
    if (cl->d_wanted) {
        cl->d_wanted = false;
        if (err) {
            char msg[400];
            if (snprintf(msg, sizeof msg, "redis cluster: no node gave the slot map (last: %s)",
                         cl->d_why) < 0)
                msg[0] = 0;
            cl->cfg.on_discovered(cl->cfg.owner, NULL, 0, msg,
                                  cl->d_tried > 0 && cl->d_auth_refused == cl->d_tried);
        } else {
            cnode *n = cl->nodes[cl->last_good];
            cl->cfg.on_discovered(cl->cfg.owner, n->host, n->port, NULL, false);
        }
    }
    if (!err && !cl->closing)
        reroute_parked(cl);
}

static void d_ask_next(psrpc__rcluster *cl);

static void d_fail(psrpc__rcluster *cl, const char *why) {
    cnode *n = cl->nodes[cl->d_idx];
    if (snprintf(cl->d_why, sizeof cl->d_why, "%s:%d: %s", n->host, n->port, why) < 0)
        cl->d_why[0] = 0;
    d_close(cl);
    d_ask_next(cl);
}

static void d_on_connected(psrpc__rconn *c) {
    psrpc__rcluster *cl = psrpc__rconn_owner(c);
    if (cl->dconn != c)
        return;
    int rc = PSRPC_OK;
    if (cl->cfg.pass) {
        const char *argv[3] = {"AUTH", cl->cfg.user, cl->cfg.pass};
        size_t lens[3] = {4, cl->cfg.user ? strlen(cl->cfg.user) : 0, strlen(cl->cfg.pass)};
        rc = cl->cfg.user ? psrpc__rconn_send_command(c, 3, argv, lens, true)
                          : psrpc__rconn_send_command(c, 2, (const char *[]){"AUTH", cl->cfg.pass},
                                                      (size_t[]){4, lens[2]}, true);
        cl->d_auth_pending = 1;
    }
    if (rc == PSRPC_OK) {
        const char *argv[2] = {"CLUSTER", "SLOTS"};
        size_t lens[2] = {7, 5};
        rc = psrpc__rconn_send_command(c, 2, argv, lens, false);
    }
    if (rc != PSRPC_OK)
        d_fail(cl, "out of memory");
}

static bool int_of(const redisReply *e, long long *v) {
    if (e->type == REDIS_REPLY_INTEGER) {
        *v = e->integer;
        return true;
    }
    return false;
}

/* A CLUSTER SLOTS reply into the slot map. Returns NULL or what is wrong. */
static const char *apply_slots(psrpc__rcluster *cl, const redisReply *rep) {
    if (rep->type != REDIS_REPLY_ARRAY)
        return "CLUSTER SLOTS: not an array";
    const char *asked = cl->nodes[cl->d_idx]->host;
    int16_t *map = malloc(sizeof cl->slot);
    if (!map)
        return "out of memory";
    for (size_t i = 0; i < PSRPC__CLUSTER_SLOTS; i++)
        map[i] = -1;
    size_t covered = 0;
    for (size_t i = 0; i < rep->elements; i++) {
        const redisReply *e = rep->element[i];
        long long lo, hi;
        if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 || !int_of(e->element[0], &lo) ||
            !int_of(e->element[1], &hi) || lo < 0 || hi < lo || hi >= PSRPC__CLUSTER_SLOTS)
            continue;
        int master = -1;
        for (size_t k = 2; k < e->elements; k++) {
            const redisReply *nd = e->element[k];
            long long port;
            if (nd->type != REDIS_REPLY_ARRAY || nd->elements < 2 ||
                nd->element[0]->type != REDIS_REPLY_STRING || !int_of(nd->element[1], &port) ||
                port < 1 || port > 65535)
                continue;
            const char *h = nd->element[0]->str;
            if (strcmp(h, "?") == 0)
                continue; /* unknown endpoint */
            int idx = node_find(cl, h[0] ? h : asked, (int)port, true);
            if (k == 2)
                master = idx;
        }
        if (master < 0)
            continue;
        for (long long s = lo; s <= hi; s++)
            map[s] = (int16_t)master;
        covered += (size_t)(hi - lo + 1);
    }
    if (covered == 0) {
        free(map);
        return "CLUSTER SLOTS: no slot is served";
    }
    memcpy(cl->slot, map, sizeof cl->slot);
    free(map);
    return NULL;
}

static void d_on_reply(psrpc__rconn *c, redisReply *rep) {
    psrpc__rcluster *cl = psrpc__rconn_owner(c);
    if (cl->dconn != c || cl->closing)
        return;
    char why[300];
    if (cl->d_auth_pending) {
        cl->d_auth_pending--;
        if (rep->type == REDIS_REPLY_ERROR) {
            if (snprintf(why, sizeof why, "AUTH refused: %.200s", rep->str) < 0)
                why[0] = 0;
            cl->d_auth_refused++;
            d_fail(cl, why);
        }
        return;
    }
    if (rep->type == REDIS_REPLY_ERROR) {
        if (snprintf(why, sizeof why, "CLUSTER SLOTS refused: %.200s", rep->str) < 0)
            why[0] = 0;
        d_fail(cl, why);
        return;
    }
    const char *err = apply_slots(cl, rep);
    if (err) {
        d_fail(cl, err);
        return;
    }
    cl->last_good = cl->d_idx;
    d_finished(cl, NULL);
}

static void d_on_error(psrpc__rconn *c, const char *why) {
    psrpc__rcluster *cl = psrpc__rconn_owner(c);
    if (cl->dconn == c)
        d_fail(cl, why);
}

static void d_on_closed(psrpc__rconn *c) {
    psrpc__rcluster *cl = psrpc__rconn_owner(c);
    cl->handles--;
    check_closed(cl);
}

static void d_ask_next(psrpc__rcluster *cl) {
    while (!cl->closing) {
        if (cl->d_tried >= cl->nn || cl->nn == 0) {
            d_finished(cl, cl->d_why[0] ? cl->d_why : "no node");
            return;
        }
        cl->d_tried++;
        cl->d_idx = (int)(cl->d_next % cl->nn);
        cl->d_next = (size_t)cl->d_idx + 1;
        cnode *n = cl->nodes[cl->d_idx];
        psrpc__rconn_config cfg = conn_config(cl, n, cl);
        cfg.max_bulk = 1 << 20;
        cfg.max_array = PSRPC__CLUSTER_SLOTS + 8; /* one element per slot range */
        cfg.on_connected = d_on_connected;
        cfg.on_reply = d_on_reply;
        cfg.on_error = d_on_error;
        cfg.on_closed = d_on_closed;
        const char *reason = NULL;
        if (psrpc__rconn_open(&cl->dconn, &cfg, &reason) == PSRPC_OK) {
            cl->handles++;
            cl->d_started_ms = now_ms(cl);
            return;
        }
        cl->dconn = NULL;
        if (snprintf(cl->d_why, sizeof cl->d_why, "%s:%d: %s", n->host, n->port, reason) < 0)
            cl->d_why[0] = 0;
    }
}

static void discover_start(psrpc__rcluster *cl) {
    if (cl->d_running || cl->closing)
        return;
    cl->d_running = true;
    cl->d_tried = 0;
    cl->d_auth_refused = 0;
    cl->d_why[0] = 0;
    cl->d_next = cl->last_good >= 0 ? (size_t)cl->last_good + 1 : 0;
    d_ask_next(cl);
}

/* ---- the tick: timeouts, parked locks --------------------------------------- */

static void tick(uv_timer_t *t) {
    psrpc__rcluster *cl = t->data;
    uint64_t now = now_ms(cl);
    uint64_t limit = (uint64_t)cl->cfg.timeout_ms;
    for (size_t i = 0; i < cl->nn; i++) {
        cnode *n = cl->nodes[i];
        if (!n->conn)
            continue;
        if (n->sent.head && now - n->sent.head->sent_ms > limit)
            node_fail(n, "no reply in time");
        else if (!n->connected && now - n->opened_ms > limit)
            node_fail(n, "connect timed out");
    }
    if (cl->d_running && cl->dconn && now - cl->d_started_ms > limit)
        d_fail(cl, "timed out");
    if (cl->want_refresh && !cl->d_running && now - cl->last_refresh_ms >= REFRESH_MIN_MS) {
        cl->want_refresh = false;
        discover_start(cl);
    }
    if (!cl->parked.n)
        return;
    /* Give up what is too old; refresh the slot map for the rest. */
    lq q = cl->parked;
    cl->parked = (lq){0};
    lreq *r;
    while ((r = lq_pop(&q))) {
        if (now - r->born_ms > LOCK_MAX_AGE_MS)
            finish(cl, r, PSRPC__LOCK_GIVEN_UP);
        else
            lq_push(&cl->parked, r);
    }
    if (cl->parked.n && !cl->d_running && now - cl->last_refresh_ms >= REFRESH_MIN_MS)
        discover_start(cl);
}

/* ---- entry points ------------------------------------------------------------- */

int psrpc__rcluster_new(psrpc__rcluster **out, const psrpc__rcluster_config *cfg) {
    psrpc__rcluster *cl = calloc(1, sizeof *cl);
    *out = cl;
    if (!cl)
        return PSRPC_RESOURCE_EXHAUSTED;
    cl->cfg = *cfg;
    cl->last_good = -1;
    for (size_t i = 0; i < PSRPC__CLUSTER_SLOTS; i++)
        cl->slot[i] = -1;
    return PSRPC_OK;
}

void psrpc__rcluster_configure(psrpc__rcluster *cl, const psrpc__rcluster_config *cfg) {
    cl->cfg = *cfg;
}

int psrpc__rcluster_add_seed(psrpc__rcluster *cl, const char *host, int port) {
    return node_find(cl, host, port, true) >= 0 ? PSRPC_OK : PSRPC_RESOURCE_EXHAUSTED;
}

void psrpc__rcluster_free(psrpc__rcluster *cl) {
    if (!cl)
        return;
    for (size_t i = 0; i < cl->nn; i++) {
        free(cl->nodes[i]->host);
        free(cl->nodes[i]);
    }
    free(cl->nodes);
    free(cl);
}

void psrpc__rcluster_start(psrpc__rcluster *cl, uv_loop_t *loop) {
    cl->loop = loop;
    uv_timer_init(loop, &cl->tick); /* cannot fail on Unix */
    cl->tick.data = cl;
    cl->handles++;
    uv_timer_start(&cl->tick, tick, TICK_MS, TICK_MS);
    cl->started = true;
}

void psrpc__rcluster_discover(psrpc__rcluster *cl) {
    cl->d_wanted = true;
    discover_start(cl);
}

void psrpc__rcluster_abandon(psrpc__rcluster *cl) { cl->d_wanted = false; }

int psrpc__rcluster_lock(psrpc__rcluster *cl, const char *key, size_t klen, const char *value,
                         void *a, void *b) {
    size_t vlen = strlen(value);
    if (vlen >= sizeof((lreq *)0)->value)
        return PSRPC_INVALID_ARGUMENT;
    lreq *r = calloc(1, sizeof *r + klen + 1);
    if (!r)
        return PSRPC_RESOURCE_EXHAUSTED;
    r->a = a;
    r->b = b;
    r->born_ms = now_ms(cl);
    r->slot = psrpc__redis_keyslot(key, klen);
    r->ask_node = -1;
    memcpy(r->value, value, vlen + 1);
    r->klen = klen;
    memcpy(r->key, key, klen);
    route(cl, r);
    return PSRPC_OK;
}

static void tick_closed(uv_handle_t *h) {
    psrpc__rcluster *cl = h->data;
    cl->handles--;
    check_closed(cl);
}

void psrpc__rcluster_close(psrpc__rcluster *cl) {
    if (cl->closing)
        return;
    cl->closing = true;
    cl->d_wanted = false;
    d_close(cl);
    lq all = {0};
    for (size_t i = 0; i < cl->nn; i++) {
        cnode *n = cl->nodes[i];
        if (n->conn) {
            psrpc__rconn_close(n->conn);
            n->conn = NULL;
        }
        lq_splice(&all, &n->sent);
        lq_splice(&all, &n->wait);
    }
    lq_splice(&all, &cl->parked);
    uv_close((uv_handle_t *)&cl->tick, tick_closed);
    lreq *r;
    while ((r = lq_pop(&all)))
        finish(cl, r, PSRPC__LOCK_GIVEN_UP);
}
