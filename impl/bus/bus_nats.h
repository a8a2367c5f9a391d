/* Private to the NATS transport (bus_nats*.c): URL and option handling. */
#ifndef PSRPC_IMPL_BUS_NATS_H
#define PSRPC_IMPL_BUS_NATS_H

#include <nats/nats.h>

#include "bus.h"

/* Defaults of psrpc_bus_options fields left 0, for NATS. */
#define PSRPC__NATS_CONNECT_TIMEOUT_MS 5000
#define PSRPC__NATS_PING_INTERVAL_MS 10000
#define PSRPC__NATS_MAX_PINGS_OUT 2
#define PSRPC__NATS_RECONNECT_WAIT_MS 100
#define PSRPC__NATS_RECONNECT_WAIT_MAX_MS 2000
#define PSRPC__NATS_RECONNECT_BUFFER (8 << 20)
#define PSRPC__NATS_WRITE_DEADLINE_MAX_MS 2000
#define PSRPC__NATS_QUEUE_GROUP "bus"

/* The effective settings of one NATS bus (bus->opts with defaults applied). */
typedef struct psrpc__nats_settings {
    int64_t connect_timeout_ms;
    int64_t ping_interval_ms;
    int64_t reconnect_wait_ms;
    int64_t reconnect_wait_max_ms;
    int64_t reconnect_buffer_size;
    int64_t queue_capacity;
} psrpc__nats_settings;

void psrpc__nats_settings_init(psrpc__nats_settings *s, const psrpc_bus_options *o);

/* Parses a nats:// or tls:// URL (see docs/nats.md) and the bus options into
 * a new natsOptions: servers, credentials, TLS, timeouts, reconnect policy,
 * buffers. Callbacks are left for the caller to set. Returns 0 or a status
 * with psrpc__error set (the message never contains a secret). Caller's
 * thread. */
int psrpc__nats_options_new(natsOptions **out, const char *url, const psrpc_bus_options *o,
                            const psrpc__nats_settings *s);

/* The servers of a nats:// or tls:// URL as "host:port,host:port" (no
 * scheme, no credentials), or NULL for a bad URL or no memory. */
char *psrpc__nats_server_list(const char *url);

/* Tries a TCP connection to each server of a psrpc__nats_server_list (at
 * most timeout_ms each; blocking: worker thread only) and writes why those
 * that refuse it do so ("127.0.0.1:1: connection refused; ..."), to explain
 * nats.c's "No server available for connection", which drops the errno.
 * Returns the length written, 0 when every server takes a connection. */
size_t psrpc__nats_probe(const char *servers, int timeout_ms, char *out, size_t n);

/* The NKey public key ("U..." for a user seed, 56 characters + NUL) of an
 * encoded NKey seed ("SU..."). Returns 0 or PSRPC_INVALID_ARGUMENT. */
#define PSRPC__NKEY_PUBLIC_LEN 56
int psrpc__nkey_public_from_seed(char out[PSRPC__NKEY_PUBLIC_LEN + 1], const char *seed);

/* Reads the first NKey seed of a seed or creds file (a line starting with
 * 'S', 58 base32 characters) into out (wiped on failure). Returns 0 or
 * PSRPC_INVALID_ARGUMENT. */
#define PSRPC__NKEY_SEED_LEN 58
int psrpc__nkey_seed_from_file(char out[PSRPC__NKEY_SEED_LEN + 1], const char *path);

/* A NATS subject we can subscribe or publish to: non-empty tokens separated
 * by '.', no whitespace or control characters. */
bool psrpc__nats_subject_valid(const char *subject);

/* Zeroes len bytes in a way the compiler keeps. */
void psrpc__nats_wipe(void *p, size_t len);

#endif
