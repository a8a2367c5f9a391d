/* A small direct-mapped cache of channel names. Building a channel name
 * formats and sanitizes three strings; clients and servers publish to the
 * same few channels over and over (a server answers the same clients, a
 * client calls the same methods), so they keep the names they built here.
 * Bounded: CHAN_CACHE_SLOTS entries, a colliding entry replaces the older.
 * Not thread-safe: each cache belongs to one loop thread. */
#ifndef PSRPC_IMPL_CHAN_CACHE_H
#define PSRPC_IMPL_CHAN_CACHE_H

#include <stddef.h>

#include "channel.h"

typedef struct psrpc__chan_slot psrpc__chan_slot;

typedef struct psrpc__chan_cache {
    psrpc__chan_slot *slots; /* allocated on first use */
} psrpc__chan_cache;

/* What a cached channel is keyed by: a kind (the builder used) and a key
 * that, with the kind, determines the name (e.g. a client id). */
typedef enum psrpc__chan_kind {
    PSRPC__CHAN_CLIENT_RESPONSE,
    PSRPC__CHAN_CLIENT_CLAIM,
    PSRPC__CHAN_CLIENT_STREAM,
    PSRPC__CHAN_RPC,
    PSRPC__CHAN_RPC_QUEUE,
    PSRPC__CHAN_STREAM_SERVER,
    PSRPC__CHAN_CLAIM_RESPONSE,
} psrpc__chan_kind;

/* The channel of (kind, key), or NULL if not cached. key is len bytes (it may
 * hold NULs). The pointer stays valid until the next psrpc__chan_cache_put or
 * psrpc__chan_cache_clear. */
const psrpc__channel *psrpc__chan_cache_get(psrpc__chan_cache *c, psrpc__chan_kind kind,
                                            const char *key, size_t len);

/* Stores *ch under (kind, key), taking its strings (*ch is emptied), and
 * returns the stored channel; NULL when out of memory (then *ch is left as it
 * was, still the caller's). */
const psrpc__channel *psrpc__chan_cache_put(psrpc__chan_cache *c, psrpc__chan_kind kind,
                                            const char *key, size_t len, psrpc__channel *ch);

void psrpc__chan_cache_clear(psrpc__chan_cache *c);

/* The cached channel of a peer with the given client (or node) id: one of the
 * CLIENT_* kinds. Builds and caches it on a miss. NULL and psrpc__error set
 * when out of memory. */
const psrpc__channel *psrpc__chan_cache_peer(psrpc__chan_cache *c, psrpc__chan_kind kind,
                                             const char *service, const char *client_id);

/* The cached channel of a method (RPC, RPC_QUEUE, STREAM_SERVER or
 * CLAIM_RESPONSE kinds) with
 * topics. Names whose key would exceed 512 bytes are built into *scratch
 * instead of cached (the caller clears *scratch after use; it is emptied
 * when the cache served the name). NULL and psrpc__error set when out of
 * memory. */
const psrpc__channel *psrpc__chan_cache_method(psrpc__chan_cache *c, psrpc__chan_kind kind,
                                               const char *service, const char *method,
                                               const char *const *topics, size_t topic_count,
                                               psrpc__channel *scratch);

#endif
