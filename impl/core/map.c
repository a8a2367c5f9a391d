#include "map.h"

#include "common.h"

static size_t hash(const char *s) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ull;
    }
    return (size_t)h;
}

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
