/* Redis Cluster support of the Redis bus (redis+cluster://): the slot map,
 * key slots, and the queue locks sent to the node that owns their key.
 *
 * Classic PUBLISH / SUBSCRIBE is cluster-wide in Redis Cluster (every node
 * forwards a PUBLISH over the cluster bus), so bus_redis.c keeps its two
 * connections (subscriber, publisher) on one node, any node; only the queue
 * lock, SET key value EX 5 NX, is a keyed command that must reach the master
 * of the key's slot. This module keeps one connection per master it needs,
 * follows MOVED (and updates the slot map) and ASK (ASKING + SET, once), and
 * when a node fails or the cluster is down (CLUSTERDOWN, TRYAGAIN) it parks
 * the locks, refreshes the slot map (CLUSTER SLOTS) from any reachable node
 * and sends them again, until they are LOCK_MAX_AGE old. Everything runs on
 * the bus's loop thread except new / add_seed / free. */
#ifndef PSRPC_IMPL_REDIS_CLUSTER_H
#define PSRPC_IMPL_REDIS_CLUSTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>
#include <uv.h>

#define PSRPC__CLUSTER_SLOTS 16384

typedef struct psrpc__rcluster psrpc__rcluster;

/* A queue lock's outcome. */
enum {
    PSRPC__LOCK_GIVEN_UP = -1, /* no master answered in time, too many redirects, closing */
    PSRPC__LOCK_NOT_OURS = 0,  /* another server holds it, or Redis refused the SET */
    PSRPC__LOCK_ACQUIRED = 1,  /* deliver the message */
};

typedef struct psrpc__rcluster_config {
    SSL_CTX *ssl_ctx;        /* NULL = plain TCP; borrowed */
    const char *server_name; /* TLS name to verify (NULL = each node's host); borrowed */
    const char *user;        /* AUTH user (NULL = password only); borrowed */
    const char *pass;        /* AUTH password (NULL = no AUTH); borrowed */
    int64_t timeout_ms;      /* a node that does not answer within this is dropped */
    size_t max_bulk;
    void *owner;
    /* A lock's outcome (PSRPC__LOCK_*). Called exactly once per
     * psrpc__rcluster_lock that returned 0, also on close. */
    void (*on_lock)(void *owner, void *a, void *b, int outcome);
    /* The answer to psrpc__rcluster_discover: the node that gave the slot map
     * (host, port), or err (host NULL) with auth_refused: every node asked
     * refused the AUTH. */
    void (*on_discovered)(void *owner, const char *host, int port, const char *err,
                          bool auth_refused);
    /* After psrpc__rcluster_close: every handle is closed, the object freed. */
    void (*on_closed)(void *owner);
} psrpc__rcluster_config;

/* The slot of a key (CRC16/XMODEM mod 16384 of the key, or of the part
 * between the first '{' and the next '}' if that part is not empty). */
uint16_t psrpc__redis_keyslot(const char *key, size_t len);

/* Parses "MOVED 3999 127.0.0.1:6381" / "ASK ...". Returns true and fills
 * slot, host (NUL-terminated, at most host_cap - 1 bytes), port, ask. */
bool psrpc__cluster_parse_redirect(const char *err, int *slot, char *host, size_t host_cap,
                                   int *port, bool *ask);

/* On any thread, before start. */
int psrpc__rcluster_new(psrpc__rcluster **out, const psrpc__rcluster_config *cfg);
/* Replaces the configuration (before start). */
void psrpc__rcluster_configure(psrpc__rcluster *cl, const psrpc__rcluster_config *cfg);
int psrpc__rcluster_add_seed(psrpc__rcluster *cl, const char *host, int port);
/* Frees an object that was never started. */
void psrpc__rcluster_free(psrpc__rcluster *cl);

/* Loop thread from here on. */
void psrpc__rcluster_start(psrpc__rcluster *cl, uv_loop_t *loop);
/* Asks the nodes (from the one after the last that answered) for the slot
 * map; on_discovered comes once (unless abandoned). */
void psrpc__rcluster_discover(psrpc__rcluster *cl);
/* No on_discovered for the discovery in progress. */
void psrpc__rcluster_abandon(psrpc__rcluster *cl);
/* SET key value EX 5 NX on the key's master. Returns 0 (on_lock follows)
 * or PSRPC_RESOURCE_EXHAUSTED (nothing taken). */
int psrpc__rcluster_lock(psrpc__rcluster *cl, const char *key, size_t klen, const char *value,
                         void *a, void *b);
/* Gives up every pending lock (on_lock(false)), closes; on_closed later. */
void psrpc__rcluster_close(psrpc__rcluster *cl);

#endif
