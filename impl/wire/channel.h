/* Channel names of livekit/psrpc (wire-protocol.md section 5), psrpc ids
 * (section 4.2), and the Redis queue-lock key (section 6.1). Pure functions,
 * any thread. */
#ifndef PSRPC_IMPL_CHANNEL_H
#define PSRPC_IMPL_CHANNEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* One logical channel in its three forms. All strings owned (malloc). */
typedef struct psrpc__channel {
    char *legacy; /* Redis channel / local bus key: '|'-joined, sanitized */
    char *server; /* NATS subject */
    char *local;  /* NATS router key written into Msg.channel; NULL for CLI. subjects */
} psrpc__channel;

/* Each returns 0, or PSRPC_RESOURCE_EXHAUSTED on allocation failure (and sets
 * nothing). topics may be NULL when topic_count is 0. */
int psrpc__channel_rpc(psrpc__channel *out, const char *service, const char *method,
                       const char *const *topics, size_t topic_count, bool queue);
int psrpc__channel_claim_response(psrpc__channel *out, const char *service, const char *method,
                                  const char *const *topics, size_t topic_count);
int psrpc__channel_stream_server(psrpc__channel *out, const char *service, const char *method,
                                 const char *const *topics, size_t topic_count);
int psrpc__channel_client_response(psrpc__channel *out, const char *service, const char *client_id);
int psrpc__channel_client_claim(psrpc__channel *out, const char *service, const char *client_id);
int psrpc__channel_client_stream(psrpc__channel *out, const char *service, const char *node_id);
void psrpc__channel_clear(psrpc__channel *ch);
int psrpc__channel_copy(psrpc__channel *dst, const psrpc__channel *src);

/* Section 5.3 sanitizing of len bytes (Go's UTF-8 decoding rules). Returns a
 * malloc'd NUL-terminated string or NULL on allocation failure. */
char *psrpc__sanitize(const char *s, size_t len);

/* Section 4.1 CamelCase of a proto name; malloc'd, NULL on allocation failure. */
char *psrpc__camel_case(const char *s);

/* True if len bytes are valid UTF-8 as Go's utf8.Valid defines it. */
bool psrpc__utf8_valid(const char *s, size_t len);

/* prefix (e.g. "REQ_") + 12 characters from [a-zA-Z0-9], drawn uniformly from
 * getrandom(2) (through a per-thread pool, emptied on fork). out must hold strlen(prefix) + 13
 * bytes. */
#define PSRPC__ID_RANDOM_LEN 12
void psrpc__new_id(char *out, const char *prefix);

/* base64std(sha256(payload)) with '=' padding: 44 characters + NUL. */
#define PSRPC__LOCK_KEY_LEN 44
void psrpc__redis_lock_key(char out[PSRPC__LOCK_KEY_LEN + 1], const uint8_t *payload, size_t len);

#endif
