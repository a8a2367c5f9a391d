/* The in-process bus (local://). Behaves like the brokers: delivery is
 * asynchronous (through the subscriber's loop queue), plain subscribers each
 * get every message, queue subscribers of a channel share it round-robin.
 * "local://" is private to one bus handle; "local://NAME" is shared by every
 * bus opened with that NAME in the process, across their loop threads. */
#include <pthread.h>

#include "bus.h"
#include "map.h"

typedef struct hub hub;

struct psrpc__bus_sub {
    atomic_int refs;
    psrpc_bus *bus; /* the subscriber's bus (holds a reference) */
    hub *hub;
    char *key;
    bool queue;
    bool active; /* loop thread of bus */
    psrpc__deliver_fn deliver;
    psrpc__ready_fn ready;
    void *ctx;
    atomic_long queued;
    struct psrpc__bus_sub *next; /* in the channel's list, under hub->mu */
};

typedef struct chan {
    struct psrpc__bus_sub *subs;
    size_t rr;
} chan;

struct hub {
    char *name; /* NULL for a private hub */
    int refs;   /* under registry_mu (shared hubs) */
    pthread_mutex_t mu;
    psrpc__map chans; /* legacy name → chan */
    hub *next;
};

/* One-time state: the registry of named hubs. */
static pthread_mutex_t registry_mu = PTHREAD_MUTEX_INITIALIZER;
static hub *registry;

static hub *hub_new(const char *name) {
    hub *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    if (name) {
        h->name = psrpc__strdup(name);
        if (!h->name) {
            free(h);
            return NULL;
        }
    }
    h->refs = 1;
    pthread_mutex_init(&h->mu, NULL);
    psrpc__map_init(&h->chans);
    return h;
}

static void hub_free(hub *h) {
    psrpc__map_iter it;
    psrpc__map_iter_init(&it, &h->chans);
    for (psrpc__map_entry *e; (e = psrpc__map_iter_next(&it));)
        free(e->value);
    psrpc__map_clear(&h->chans);
    pthread_mutex_destroy(&h->mu);
    free(h->name);
    free(h);
}

int psrpc__local_open(psrpc_bus *bus, const char *name) {
    hub *h = NULL;
    if (!*name) {
        h = hub_new(NULL);
    } else {
        pthread_mutex_lock(&registry_mu);
        for (h = registry; h && strcmp(h->name, name) != 0; h = h->next) {
        }
        if (h) {
            h->refs++;
        } else if ((h = hub_new(name))) {
            h->next = registry;
            registry = h;
        }
        pthread_mutex_unlock(&registry_mu);
    }
    if (!h)
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
    bus->transport = &psrpc__transport_local;
    bus->transport_state = h;
    atomic_fetch_add(&bus->stats.connects, 1);
    atomic_store(&bus->conn_state, PSRPC_BUS_CONNECTED);
    return PSRPC_OK;
}

static void local_destroy(psrpc_bus *bus) {
    hub *h = bus->transport_state;
    if (!h)
        return;
    bus->transport_state = NULL;
    if (!h->name) {
        hub_free(h);
        return;
    }
    pthread_mutex_lock(&registry_mu);
    if (--h->refs == 0) {
        for (hub **p = &registry; *p; p = &(*p)->next) {
            if (*p == h) {
                *p = h->next;
                break;
            }
        }
    } else {
        h = NULL;
    }
    pthread_mutex_unlock(&registry_mu);
    if (h)
        hub_free(h);
}

static void sub_release(struct psrpc__bus_sub *s) {
    if (atomic_fetch_sub(&s->refs, 1) == 1) {
        psrpc__bus_release(s->bus);
        free(s->key);
        free(s);
    }
}

typedef struct delivery {
    struct psrpc__bus_sub *sub;
    psrpc_msg *bytes;
} delivery;

static void deliver_task(void *arg) {
    delivery *d = arg;
    atomic_fetch_sub(&d->sub->queued, 1);
    if (d->sub->active)
        d->sub->deliver(d->sub->ctx, d->bytes->data, d->bytes->len);
    psrpc_msg_release(d->bytes);
    sub_release(d->sub);
    free(d);
}

/* Under hub->mu. */
static void post_delivery(struct psrpc__bus_sub *s, psrpc_msg *bytes) {
    if (atomic_load(&s->queued) >= s->bus->opts.queue_capacity) {
        PSRPC__DROP(s->bus, dropped_slow_consumer, PSRPC__DROP_SLOW_CONSUMER);
        return;
    }
    delivery *d = malloc(sizeof *d);
    if (!d) {
        PSRPC__DROP(s->bus, dropped_slow_consumer, PSRPC__DROP_SLOW_CONSUMER);
        return;
    }
    d->sub = s;
    d->bytes = psrpc_msg_retain(bytes);
    atomic_fetch_add(&s->refs, 1);
    atomic_fetch_add(&s->queued, 1);
    if (psrpc__bus_post(s->bus, deliver_task, d) != PSRPC_OK) {
        atomic_fetch_sub(&s->queued, 1);
        atomic_fetch_sub(&s->refs, 1); /* cannot be the last: the channel list holds one */
        psrpc_msg_release(bytes);
        free(d);
    }
}

static int local_publish(psrpc_bus *bus, const psrpc__channel *ch, psrpc_msg *bytes) {
    hub *h = bus->transport_state;
    pthread_mutex_lock(&h->mu);
    chan *c = psrpc__map_get(&h->chans, ch->legacy);
    if (c) {
        size_t nqueue = 0;
        for (struct psrpc__bus_sub *s = c->subs; s; s = s->next) {
            if (s->queue)
                nqueue++;
            else
                post_delivery(s, bytes);
        }
        if (nqueue) {
            size_t pick = c->rr++ % nqueue;
            for (struct psrpc__bus_sub *s = c->subs; s; s = s->next) {
                if (s->queue && pick-- == 0) {
                    post_delivery(s, bytes);
                    break;
                }
            }
        }
    }
    pthread_mutex_unlock(&h->mu);
    return PSRPC_OK;
}

static void ready_task(void *arg) {
    struct psrpc__bus_sub *s = arg;
    if (s->active && s->ready)
        s->ready(s->ctx, PSRPC_OK, NULL);
    sub_release(s);
}

static psrpc__bus_sub *local_subscribe(psrpc_bus *bus, const psrpc__channel *ch, bool queue,
                                       psrpc__deliver_fn deliver, psrpc__ready_fn ready,
                                       void *ctx) {
    hub *h = bus->transport_state;
    struct psrpc__bus_sub *s = calloc(1, sizeof *s);
    if (!s || !(s->key = psrpc__strdup(ch->legacy))) {
        free(s);
        psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
        return NULL;
    }
    atomic_init(&s->refs, 2); /* the channel list + the ready task */
    s->bus = bus;
    psrpc__bus_retain(bus);
    s->hub = h;
    s->queue = queue;
    s->active = true;
    s->deliver = deliver;
    s->ready = ready;
    s->ctx = ctx;

    pthread_mutex_lock(&h->mu);
    chan *c = psrpc__map_get(&h->chans, ch->legacy);
    if (!c) {
        c = calloc(1, sizeof *c);
        if (!c || psrpc__map_put(&h->chans, ch->legacy, c) != PSRPC_OK) {
            pthread_mutex_unlock(&h->mu);
            free(c);
            psrpc__bus_release(bus);
            free(s->key);
            free(s);
            psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
            return NULL;
        }
    }
    /* Append, so round-robin follows subscription order. */
    struct psrpc__bus_sub **p = &c->subs;
    while (*p)
        p = &(*p)->next;
    *p = s;
    pthread_mutex_unlock(&h->mu);

    if (psrpc__bus_post(bus, ready_task, s) != PSRPC_OK)
        sub_release(s);
    return s;
}

static void local_unsubscribe(psrpc_bus *bus, psrpc__bus_sub *sub) {
    (void)bus;
    struct psrpc__bus_sub *s = sub;
    hub *h = s->hub;
    s->active = false;
    pthread_mutex_lock(&h->mu);
    chan *c = psrpc__map_get(&h->chans, s->key);
    if (c) {
        for (struct psrpc__bus_sub **p = &c->subs; *p; p = &(*p)->next) {
            if (*p == s) {
                *p = s->next;
                break;
            }
        }
        if (!c->subs) {
            psrpc__map_del(&h->chans, s->key);
            free(c);
        }
    }
    pthread_mutex_unlock(&h->mu);
    sub_release(s);
}

static void local_close(psrpc_bus *bus, void (*done)(psrpc_bus *bus)) {
    atomic_fetch_add(&bus->stats.disconnects, 1);
    done(bus);
}

const psrpc__transport psrpc__transport_local = {
    .scheme = "local",
    .publish = local_publish,
    .subscribe = local_subscribe,
    .unsubscribe = local_unsubscribe,
    .close = local_close,
    .destroy = local_destroy,
};
