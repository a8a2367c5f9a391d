#include "chan_cache.h"

#include "common.h"

#define CHAN_CACHE_SLOTS 64 /* a power of two */
#define METHOD_KEY_MAX 512

struct psrpc__chan_slot {
    size_t hash;
    psrpc__chan_kind kind;
    char *key; /* NULL: empty slot */
    size_t len;
    psrpc__channel ch;
};

static size_t key_hash(psrpc__chan_kind kind, const char *key, size_t len) {
    uint64_t h = 1469598103934665603ull ^ (uint64_t)kind; /* FNV-1a */
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)key[i];
        h *= 1099511628211ull;
    }
    return (size_t)h;
}

static void slot_clear(psrpc__chan_slot *s) {
    free(s->key);
    s->key = NULL;
    psrpc__channel_clear(&s->ch);
}

const psrpc__channel *psrpc__chan_cache_get(psrpc__chan_cache *c, psrpc__chan_kind kind,
                                            const char *key, size_t len) {
    if (!c->slots)
        return NULL;
    size_t h = key_hash(kind, key, len);
    psrpc__chan_slot *s = &c->slots[h & (CHAN_CACHE_SLOTS - 1)];
    if (s->key && s->hash == h && s->kind == kind && s->len == len && memcmp(s->key, key, len) == 0)
        return &s->ch;
    return NULL;
}

const psrpc__channel *psrpc__chan_cache_put(psrpc__chan_cache *c, psrpc__chan_kind kind,
                                            const char *key, size_t len, psrpc__channel *ch) {
    if (!c->slots && !(c->slots = calloc(CHAN_CACHE_SLOTS, sizeof *c->slots)))
        return NULL;
    size_t h = key_hash(kind, key, len);
    psrpc__chan_slot *s = &c->slots[h & (CHAN_CACHE_SLOTS - 1)];
    char *k = malloc(len ? len : 1);
    if (!k)
        return NULL;
    memcpy(k, key, len);
    slot_clear(s);
    s->hash = h;
    s->kind = kind;
    s->key = k;
    s->len = len;
    s->ch = *ch;
    memset(ch, 0, sizeof *ch);
    return &s->ch;
}

void psrpc__chan_cache_clear(psrpc__chan_cache *c) {
    if (!c->slots)
        return;
    for (size_t i = 0; i < CHAN_CACHE_SLOTS; i++)
        slot_clear(&c->slots[i]);
    free(c->slots);
    c->slots = NULL;
}

const psrpc__channel *psrpc__chan_cache_peer(psrpc__chan_cache *c, psrpc__chan_kind kind,
                                             const char *service, const char *client_id) {
    size_t len = strlen(client_id);
    const psrpc__channel *hit = psrpc__chan_cache_get(c, kind, client_id, len);
    if (hit)
        return hit;
    psrpc__channel ch;
    int rc;
    switch (kind) {
    case PSRPC__CHAN_CLIENT_RESPONSE:
        rc = psrpc__channel_client_response(&ch, service, client_id);
        break;
    case PSRPC__CHAN_CLIENT_CLAIM:
        rc = psrpc__channel_client_claim(&ch, service, client_id);
        break;
    case PSRPC__CHAN_CLIENT_STREAM:
        rc = psrpc__channel_client_stream(&ch, service, client_id);
        break;
    default:
        rc = PSRPC_INTERNAL;
        break;
    }
    if (rc != PSRPC_OK) {
        psrpc__error(rc, rc == PSRPC_INTERNAL ? "not a peer channel kind" : "out of memory");
        return NULL;
    }
    hit = psrpc__chan_cache_put(c, kind, client_id, len, &ch);
    if (!hit) {
        psrpc__channel_clear(&ch);
        psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
    }
    return hit;
}

/* method NUL topic NUL topic ...: the strings cannot hold NUL, so the key is
 * unambiguous. Returns the length, or 0 if it does not fit. */
static size_t method_key(char *buf, const char *method, const char *const *topics,
                         size_t topic_count) {
    size_t n = 0;
    size_t l = strlen(method);
    if (l + 1 > METHOD_KEY_MAX)
        return 0;
    memcpy(buf, method, l + 1);
    n = l + 1;
    for (size_t i = 0; i < topic_count; i++) {
        l = strlen(topics[i]);
        if (n + l + 1 > METHOD_KEY_MAX)
            return 0;
        memcpy(buf + n, topics[i], l + 1);
        n += l + 1;
    }
    return n;
}

const psrpc__channel *psrpc__chan_cache_method(psrpc__chan_cache *c, psrpc__chan_kind kind,
                                               const char *service, const char *method,
                                               const char *const *topics, size_t topic_count,
                                               psrpc__channel *scratch) {
    memset(scratch, 0, sizeof *scratch);
    char key[METHOD_KEY_MAX];
    size_t len = method_key(key, method, topics, topic_count);
    if (len) {
        const psrpc__channel *hit = psrpc__chan_cache_get(c, kind, key, len);
        if (hit)
            return hit;
    }
    int rc;
    switch (kind) {
    case PSRPC__CHAN_RPC:
    case PSRPC__CHAN_RPC_QUEUE:
        rc = psrpc__channel_rpc(scratch, service, method, topics, topic_count,
                                kind == PSRPC__CHAN_RPC_QUEUE);
        break;
    case PSRPC__CHAN_STREAM_SERVER:
        rc = psrpc__channel_stream_server(scratch, service, method, topics, topic_count);
        break;
    case PSRPC__CHAN_CLAIM_RESPONSE:
        rc = psrpc__channel_claim_response(scratch, service, method, topics, topic_count);
        break;
    default:
        rc = PSRPC_INTERNAL;
        break;
    }
    if (rc != PSRPC_OK) {
        psrpc__error(rc, rc == PSRPC_INTERNAL ? "not a method channel kind" : "out of memory");
        return NULL;
    }
    if (!len)
        return scratch; /* too long a key: not cached */
    /* Out of memory for the cache entry: the caller uses scratch once. */
    const psrpc__channel *stored = psrpc__chan_cache_put(c, kind, key, len, scratch);
    return stored ? stored : scratch;
}
