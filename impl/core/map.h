/* A string-keyed hash map with chaining (pending calls, claims, channels).
 * Keys are copied. Not thread-safe: each map belongs to one thread or lock. */
#ifndef PSRPC_IMPL_MAP_H
#define PSRPC_IMPL_MAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct psrpc__map_entry {
    struct psrpc__map_entry *next;
    char *key; /* points into the same allocation */
    void *value;
    size_t hash;
} psrpc__map_entry;

typedef struct psrpc__map {
    psrpc__map_entry **buckets;
    size_t nbuckets;
    size_t count;
} psrpc__map;

void psrpc__map_init(psrpc__map *m);
/* Frees the entries (not the values). */
void psrpc__map_clear(psrpc__map *m);
void *psrpc__map_get(const psrpc__map *m, const char *key);
/* Inserts or replaces. Returns 0 or PSRPC_RESOURCE_EXHAUSTED. */
int psrpc__map_put(psrpc__map *m, const char *key, void *value);
/* Removes and returns the value, or NULL. */
void *psrpc__map_del(psrpc__map *m, const char *key);

/* The keyed hash of key (SipHash-1-3, per-process random key). For tests. */
uint64_t psrpc__map_hash(const char *key);

/* Iteration: for (e = first; e; e = next(e)). Do not modify while iterating;
 * collect first. */
typedef struct psrpc__map_iter {
    const psrpc__map *m;
    size_t bucket;
    psrpc__map_entry *e;
} psrpc__map_iter;
void psrpc__map_iter_init(psrpc__map_iter *it, const psrpc__map *m);
psrpc__map_entry *psrpc__map_iter_next(psrpc__map_iter *it);

#endif
