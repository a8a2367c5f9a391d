/* Pieces shared by the client and the server. Loop thread unless noted. */
#ifndef PSRPC_IMPL_CORE_H
#define PSRPC_IMPL_CORE_H

#include "bus.h"
#include "wire.h"

/* A copy of a psrpc_method. */
typedef struct psrpc__method {
    char *name;
    char *output_type; /* may be NULL */
    uint32_t routing;
    uint32_t flags;
} psrpc__method;

/* Validates and copies m (any thread); sets psrpc__error on failure. */
int psrpc__method_copy(psrpc__method *dst, const psrpc_method *m);
void psrpc__method_clear(psrpc__method *m);
/* require_claim of wire-protocol.md 7.2. */
bool psrpc__method_require_claim(const psrpc__method *m);

/* Validates a topic array (any thread). */
int psrpc__check_topics(const char *const *topics, size_t count);
/* Validates a service or method name: [A-Za-z_][A-Za-z0-9_]*
 * (test plan F6: Go puts them into subjects unescaped). Any thread. */
int psrpc__check_name(const char *what, const char *s);
/* Validates a custom client id: UTF-8 without whitespace, control characters,
 * empty or wildcard dot-separated parts (a dot adds a NATS subject token on
 * both sides, as with Go). */
int psrpc__check_client_id(const char *s);
/* A server id: valid UTF-8 ("" = generated). */
int psrpc__check_server_id(const char *s);

/* The cap on requests a server holds while waiting for their ClaimResponse
 * (documented in capi/psrpc.h, psrpc_bus_stats.dropped_held_limit). */
#define PSRPC__HOLD_MAX_COUNT 10000
#define PSRPC__HOLD_MAX_BYTES ((size_t)64 << 20)
/* Tests: other limits (before the first registration), and what is held now. */
void psrpc__server_set_hold_limits(psrpc_server *s, size_t max_count, size_t max_bytes);
void psrpc__server_held(const psrpc_server *s, size_t *count, size_t *bytes);

/* The checks every psrpc_X_create(out, bus, service, ...) starts with. */
int psrpc__check_create(void *out, psrpc_bus *bus, const char *service);

/* Decodes transport bytes as the control message desc; counts and drops
 * (returns NULL) anything else. */
ProtobufCMessage *psrpc__decode_control(psrpc_bus *bus, const uint8_t *data, size_t len,
                                        const ProtobufCMessageDescriptor *desc);

/* Wraps and publishes a control message; returns 0 or a status. */
int psrpc__publish_control(psrpc_bus *bus, const psrpc__channel *ch,
                           const ProtobufCMessage *message);

/* Builds an error from a Response (code, error, error_details). */
psrpc__err *psrpc__err_from_response(const Internal__Response *r);

#endif
