#include "map.h"

#include <pthread.h>
#include <stdatomic.h>
#include <sys/random.h>
#include <time.h>

#include "common.h"

/* Keys come from the network (request and stream ids), and the buckets are a
 * power of two: an unkeyed hash would let a publisher craft ids that share a
 * chain and stall the loop thread. SipHash-1-3 with a per-process random key
 * (drawn once; a forked child keeps its parent's, as it keeps its maps). */
static uint64_t sip_k0, sip_k1;
static pthread_once_t sip_once = PTHREAD_ONCE_INIT;
static atomic_bool sip_ready;

static void sip_seed(void) {
    uint64_t k[2] = {0, 0};
    if (getrandom(k, sizeof k, 0) != (ssize_t)sizeof k) {
        /* No entropy source: the clock and an address, better than none. */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        k[0] ^= (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ull ^ (uint64_t)ts.tv_sec;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        k[1] ^= (uint64_t)ts.tv_nsec ^ (uint64_t)(uintptr_t)&ts;
    }
    sip_k0 = k[0];
    sip_k1 = k[1];
    atomic_store_explicit(&sip_ready, true, memory_order_release);
}

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND           \
    do {                   \
        v0 += v1;          \
        v1 = ROTL(v1, 13); \
        v1 ^= v0;          \
        v0 = ROTL(v0, 32); \
        v2 += v3;          \
        v3 = ROTL(v3, 16); \
        v3 ^= v2;          \
        v0 += v3;          \
        v3 = ROTL(v3, 21); \
        v3 ^= v0;          \
        v2 += v1;          \
        v1 = ROTL(v1, 17); \
        v1 ^= v2;          \
        v2 = ROTL(v2, 32); \
    } while (0)

/* SipHash-1-3 of a NUL-terminated string: its length first (strlen), then
 * whole 8-byte words, then the last 0-7 bytes with the length in the top byte
 * (SipHash's padding). */
static size_t hash(const char *s) {
    if (!atomic_load_explicit(&sip_ready, memory_order_acquire))
        pthread_once(&sip_once, sip_seed);
    uint64_t v0 = sip_k0 ^ 0x736f6d6570736575ull, v1 = sip_k1 ^ 0x646f72616e646f6dull;
    uint64_t v2 = sip_k0 ^ 0x6c7967656e657261ull, v3 = sip_k1 ^ 0x7465646279746573ull;
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s), full = n & ~(size_t)7;
    for (size_t i = 0; i < full; i += 8) {
        uint64_t m;
        memcpy(&m, p + i, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        m = __builtin_bswap64(m);
#endif
        v3 ^= m;
        SIPROUND;
        v0 ^= m;
    }
    uint64_t m = (uint64_t)n << 56;
    for (size_t i = full; i < n; i++)
        m |= (uint64_t)p[i] << (8 * (i - full));
    v3 ^= m;
    SIPROUND;
    v0 ^= m;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return (size_t)(v0 ^ v1 ^ v2 ^ v3);
}

uint64_t psrpc__map_hash(const char *key) { return hash(key); }

void psrpc__map_init(psrpc__map *m) { memset(m, 0, sizeof *m); }

void psrpc__map_clear(psrpc__map *m) {
    for (size_t i = 0; i < m->nbuckets; i++) {
        psrpc__map_entry *e = m->buckets[i];
        while (e) {
            psrpc__map_entry *n = e->next;
            free(e);
            e = n;
        }
    }
    free(m->buckets);
    memset(m, 0, sizeof *m);
}

/* The link that points at key's entry (or at the NULL ending its chain). */
static psrpc__map_entry **find(const psrpc__map *m, const char *key, size_t h) {
    if (!m->nbuckets)
        return NULL;
    psrpc__map_entry **p = &m->buckets[h & (m->nbuckets - 1)];
    while (*p && ((*p)->hash != h || strcmp((*p)->key, key) != 0))
        p = &(*p)->next;
    return p;
}

void *psrpc__map_get(const psrpc__map *m, const char *key) {
    psrpc__map_entry **p = find(m, key, hash(key));
    return p && *p ? (*p)->value : NULL;
}

static int grow(psrpc__map *m) {
    size_t n = m->nbuckets ? m->nbuckets * 2 : 16;
    psrpc__map_entry **b = calloc(n, sizeof *b);
    if (!b)
        return PSRPC_RESOURCE_EXHAUSTED;
    for (size_t i = 0; i < m->nbuckets; i++) {
        psrpc__map_entry *e = m->buckets[i];
        while (e) {
            psrpc__map_entry *next = e->next;
            size_t j = e->hash & (n - 1);
            e->next = b[j];
            b[j] = e;
            e = next;
        }
    }
    free(m->buckets);
    m->buckets = b;
    m->nbuckets = n;
    return PSRPC_OK;
}

int psrpc__map_put(psrpc__map *m, const char *key, void *value) {
    size_t h = hash(key);
    psrpc__map_entry **p = find(m, key, h);
    if (p && *p) {
        (*p)->value = value;
        return PSRPC_OK;
    }
    if (m->count + 1 > m->nbuckets && grow(m) != PSRPC_OK)
        return PSRPC_RESOURCE_EXHAUSTED;
    size_t klen = strlen(key) + 1;
    psrpc__map_entry *e = malloc(sizeof *e + klen);
    if (!e)
        return PSRPC_RESOURCE_EXHAUSTED;
    e->key = (char *)(e + 1);
    memcpy(e->key, key, klen);
    e->hash = h;
    e->value = value;
    size_t j = h & (m->nbuckets - 1);
    e->next = m->buckets[j];
    m->buckets[j] = e;
    m->count++;
    return PSRPC_OK;
}

void *psrpc__map_del(psrpc__map *m, const char *key) {
    psrpc__map_entry **p = find(m, key, hash(key));
    if (!p || !*p)
        return NULL;
    psrpc__map_entry *e = *p;
    void *v = e->value;
    *p = e->next;
    free(e);
    m->count--;
    return v;
}

void psrpc__map_iter_init(psrpc__map_iter *it, const psrpc__map *m) {
    it->m = m;
    it->bucket = 0;
    it->e = NULL;
}

psrpc__map_entry *psrpc__map_iter_next(psrpc__map_iter *it) {
    if (it->e && it->e->next) {
        it->e = it->e->next;
        return it->e;
    }
    for (size_t i = it->e ? it->bucket + 1 : 0; i < it->m->nbuckets; i++) {
        if (it->m->buckets[i]) {
            it->bucket = i;
            it->e = it->m->buckets[i];
            return it->e;
        }
    }
    it->e = NULL;
    it->bucket = it->m->nbuckets;
    return NULL;
}
