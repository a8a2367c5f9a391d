/* Sharded open-addressing pointer sets (linear probing, backward-shift
 * deletion), one mutex per shard. */
#include "live_set.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

#define SHARDS 16

typedef struct shard {
    pthread_mutex_t mu;
    const void **slots;
    size_t cap; /* power of two, or 0 */
    size_t count;
} shard;

static shard shards[SHARDS] = {
#define S \
    { PTHREAD_MUTEX_INITIALIZER, NULL, 0, 0 }
    S, S, S, S, S, S, S, S, S,
    S, S, S, S, S, S, S
#undef S
};

/* fork(): no shard lock may be held by another thread at the fork, or the
 * child would block forever on it. */
static void fork_prepare(void) {
    for (int i = 0; i < SHARDS; i++)
        pthread_mutex_lock(&shards[i].mu);
}

static void fork_after(void) {
    for (int i = SHARDS - 1; i >= 0; i--)
        pthread_mutex_unlock(&shards[i].mu);
}

static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void atfork_init(void) { pthread_atfork(fork_prepare, fork_after, fork_after); }

static size_t hash_ptr(const void *p) {
    uint64_t x = (uint64_t)(uintptr_t)p;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return (size_t)x;
}

static shard *shard_of(const void *p) { return &shards[(hash_ptr(p) >> 7) % SHARDS]; }

static size_t find(const shard *s, const void *p) {
    size_t mask = s->cap - 1;
    for (size_t i = hash_ptr(p) & mask;; i = (i + 1) & mask)
        if (s->slots[i] == p || s->slots[i] == NULL)
            return i;
}

static bool grow(shard *s) {
    size_t ncap = s->cap ? s->cap * 2 : 64;
    const void **old = s->slots;
    size_t ocap = s->cap;
    const void **n = calloc(ncap, sizeof *n);
    if (!n)
        return false;
    s->slots = n;
    s->cap = ncap;
    for (size_t i = 0; i < ocap; i++)
        if (old[i])
            s->slots[find(s, old[i])] = old[i];
    free((void *)old);
    return true;
}

bool psrpc__live_add(const void *p) {
    pthread_once(&atfork_once, atfork_init);
    shard *s = shard_of(p);
    pthread_mutex_lock(&s->mu);
    bool ok = true;
    if ((s->count + 1) * 2 > s->cap)
        ok = grow(s);
    if (ok) {
        size_t i = find(s, p);
        if (!s->slots[i]) {
            s->slots[i] = p;
            s->count++;
        }
    }
    pthread_mutex_unlock(&s->mu);
    return ok;
}

void psrpc__live_del(const void *p) {
    shard *s = shard_of(p);
    pthread_mutex_lock(&s->mu);
    if (s->cap) {
        size_t mask = s->cap - 1;
        size_t i = find(s, p);
        if (s->slots[i]) {
            s->slots[i] = NULL;
            s->count--;
            /* shift back the entries of the probe run that follows */
            for (size_t j = (i + 1) & mask; s->slots[j]; j = (j + 1) & mask) {
                size_t home = hash_ptr(s->slots[j]) & mask;
                /* move slots[j] to the hole i if its home is not in (i, j] */
                bool between = i <= j ? (home > i && home <= j) : (home > i || home <= j);
                if (!between) {
                    s->slots[i] = s->slots[j];
                    s->slots[j] = NULL;
                    i = j;
                }
            }
        }
    }
    pthread_mutex_unlock(&s->mu);
}

bool psrpc__live_lock(const void *p) {
    if (!p)
        return false;
    shard *s = shard_of(p);
    pthread_mutex_lock(&s->mu);
    return s->cap && s->slots[find(s, p)] == p;
}

void psrpc__live_unlock(const void *p) {
    if (p)
        pthread_mutex_unlock(&shard_of(p)->mu);
}
