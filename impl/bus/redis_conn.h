/* One Redis connection of the Redis bus: a libuv TCP socket on the bus's loop
 * thread, optionally wrapped in TLS (OpenSSL through memory BIOs), batched
 * writes, and inbound RESP parsed by the hiredis redisReader behind a framing
 * filter that bounds what the reader may buffer. It knows nothing of pub/sub:
 * bus_redis.c sends formatted commands and gets replies in order. Everything
 * here runs on the loop thread. */
#ifndef PSRPC_IMPL_REDIS_CONN_H
#define PSRPC_IMPL_REDIS_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>
#include <openssl/ssl.h>
#include <uv.h>

typedef struct psrpc__rconn psrpc__rconn;

typedef struct psrpc__rconn_config {
    uv_loop_t *loop;
    const char *host; /* a name, an IPv4 or an IPv6 literal (no brackets); copied */
    int port;
    SSL_CTX *ssl_ctx;        /* NULL = plain TCP; borrowed, must outlive the connection */
    const char *server_name; /* TLS: SNI and the name verified (NULL = host); copied */
    size_t max_bulk;         /* inbound bulk strings longer than this reach the
                                reader as nil, and are never buffered */
    size_t max_array;        /* longest array a reply may announce (0: 64, what the
                                bus's replies need; CLUSTER SLOTS has one element
                                per slot range) */
    void *owner;
    /* The transport (and TLS) is established; commands may be sent. */
    void (*on_connected)(psrpc__rconn *c);
    /* One reply, in order. Borrowed: freed when the callback returns. */
    void (*on_reply)(psrpc__rconn *c, redisReply *reply);
    /* The connection failed (reason has no secrets). Called at most once, never
     * from inside psrpc__rconn_* calls; after it, nothing else arrives and the
     * owner must call psrpc__rconn_close. */
    void (*on_error)(psrpc__rconn *c, const char *reason);
    /* After psrpc__rconn_close: every handle is closed; c is freed on return. */
    void (*on_closed)(psrpc__rconn *c);
} psrpc__rconn_config;

/* Starts connecting (resolving the host first if it is a name). Returns 0, or
 * a psrpc status with *reason set (then nothing was started and no callback
 * will come). */
int psrpc__rconn_open(psrpc__rconn **out, const psrpc__rconn_config *cfg, const char **reason);

void *psrpc__rconn_owner(const psrpc__rconn *c);

/* Queues bytes (a formatted command) for writing; written as soon as no other
 * write is in flight, everything queued meanwhile in one batch. Only after
 * on_connected. secret: the bytes hold a credential; the plaintext buffers
 * that held them are wiped after use. Returns 0 or PSRPC_RESOURCE_EXHAUSTED /
 * PSRPC_UNAVAILABLE (the connection is failing: on_error follows or came). */
int psrpc__rconn_send(psrpc__rconn *c, const char *data, size_t len, bool secret);

/* Queues a command as a RESP array of bulk strings (what the Redis command
 * formatter of hiredis makes), formatted straight into the write buffer.
 * Same rules and results as psrpc__rconn_send. */
int psrpc__rconn_send_command(psrpc__rconn *c, int argc, const char *const *argv,
                              const size_t *lens, bool secret);

/* The RESP encoding of a command: its size, and writing it to dst (which
 * must hold psrpc__resp_size bytes); returns the bytes written. */
size_t psrpc__resp_size(int argc, const char *const *argv, const size_t *lens);
size_t psrpc__resp_write(char *dst, int argc, const char *const *argv, const size_t *lens);

/* The most bytes one libuv write buffer (an unsigned int length) or one
 * SSL_write (an int) takes; larger buffers are written in pieces of at most
 * this size. psrpc__rconn_write_chunk(n): the size of the next piece of n
 * bytes still to write. */
#define PSRPC__RCONN_MAX_WRITE ((size_t)1 << 30)
size_t psrpc__rconn_write_chunk(size_t n);

/* Bytes queued and not yet handed to the socket (excluding the write in
 * flight). */
size_t psrpc__rconn_queued(const psrpc__rconn *c);

/* Inbound RESP2 (what a connection does with the bytes it reads; separate
 * for the tests). psrpc__rin_feed parses n bytes at p, which it may modify
 * (string terminators are written in place), and calls on_reply for every
 * complete reply, in order, with a reply borrowed for the call (its strings
 * may point into p); on_reply returns false to stop at once. Bytes of an
 * incomplete reply are kept for the next feed; a bulk longer than max_bulk
 * arrives as nil and is never buffered. Returns 0 or -1 (*err: a protocol
 * error or out of memory; the stream cannot go on). */
typedef struct psrpc__rin psrpc__rin;
typedef bool (*psrpc__rin_reply_fn)(void *ctx, redisReply *reply);
psrpc__rin *psrpc__rin_new(size_t max_bulk, size_t max_array); /* max_array 0: 64 */
void psrpc__rin_free(psrpc__rin *in);
int psrpc__rin_feed(psrpc__rin *in, char *p, size_t n, psrpc__rin_reply_fn on_reply, void *ctx,
                    const char **err);

/* Closes (idempotent): no on_connected, on_reply or on_error afterwards, also
 * when called from inside one of them; on_closed comes later. */
void psrpc__rconn_close(psrpc__rconn *c);

#endif
