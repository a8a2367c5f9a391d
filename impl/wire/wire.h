/* The psrpc envelopes (wire-protocol.md sections 2-3). The core builds and
 * reads control messages with the protobuf-c types generated from
 * internal.proto; only wire.c knows how they are wrapped in internal.Msg,
 * checked (UTF-8, type URL, size) and (de)compressed. */
#ifndef PSRPC_IMPL_WIRE_H
#define PSRPC_IMPL_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "internal.pb-c.h"
#include "psrpc.h"

#define PSRPC__TYPE_URL_PREFIX "type.googleapis.com/"

/* Wraps an already-serialized payload of protobuf type type_name (full name,
 * e.g. "internal.Request") in an internal.Msg. channel_key may be NULL (Redis,
 * local, CLI. subjects). compress_threshold > 0 gzips values at least that
 * large when that makes them smaller (0 = never). *out is a new psrpc_msg
 * holding the transport bytes. Returns 0 or a psrpc_status. */
int psrpc__wire_wrap(psrpc_msg **out, const char *type_name, const uint8_t *payload,
                     size_t payload_len, const char *channel_key, size_t compress_threshold);

/* Packs a generated control message (its descriptor's full name is the type)
 * and wraps it. Fails with PSRPC_INVALID_ARGUMENT if a string field is not
 * valid UTF-8 (Go would drop the message). */
int psrpc__wire_wrap_message(psrpc_msg **out, const ProtobufCMessage *message,
                             const char *channel_key, size_t compress_threshold);

/* A decoded internal.Msg. */
typedef struct psrpc__envelope {
    const char *type_name; /* text after the last '/' of type_url ("internal.Request") */
    const uint8_t *value;  /* the payload, decompressed when it was compressed */
    size_t value_len;
    const char *channel; /* Msg.channel, "" when absent */
    void *priv_;         /* owned decode state */
} psrpc__envelope;

/* Decodes transport bytes. max_value_size bounds the payload, compressed or
 * not (a gzip value is never inflated beyond it); 0 means no bound, like Go's
 * MaxDecompressedSize.
 * Returns 0, PSRPC_MALFORMED_REQUEST for bytes that are not a valid Msg
 * (including invalid UTF-8 in its strings), or PSRPC_RESOURCE_EXHAUSTED when
 * the payload exceeds max_value_size. On failure env needs no clearing. */
int psrpc__envelope_decode(psrpc__envelope *env, const uint8_t *data, size_t len,
                           size_t max_value_size);
void psrpc__envelope_clear(psrpc__envelope *env);

/* Unpacks env's payload as the control message described by desc, checking
 * that type_name matches desc and that every string (map keys and values
 * included) is valid UTF-8. Returns 0 with *out to be freed with
 * psrpc__wire_free (one arena: not protobuf_c_message_free_unpacked), or
 * PSRPC_MALFORMED_REQUEST. */
int psrpc__wire_unpack(ProtobufCMessage **out, const psrpc__envelope *env,
                       const ProtobufCMessageDescriptor *desc);

/* Frees a message from psrpc__wire_unpack (NULL is ignored). */
void psrpc__wire_free(ProtobufCMessage *m);

/* NATS router: reads only field 3 of a Msg (section 3.3) without decoding the
 * rest. Returns 0 with *key (malloc'd; "" when absent), or
 * PSRPC_MALFORMED_REQUEST. */
int psrpc__wire_peek_channel(char **key, const uint8_t *data, size_t len);

/* Current wall clock, Unix nanoseconds. */
int64_t psrpc__now_ns(void);

#endif
