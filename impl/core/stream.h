/* The stream object shared by both ends of a bidirectional stream
 * (wire-protocol.md section 11). The client and the server own the routing
 * (which subscription delivers to which stream); this file owns sends, acks,
 * receives, close and the public psrpc_stream_* functions. Loop thread unless
 * noted. */
#ifndef PSRPC_IMPL_STREAM_H
#define PSRPC_IMPL_STREAM_H

#include "core.h"

enum { PSRPC__STREAM_OPENING = 1, PSRPC__STREAM_OPEN, PSRPC__STREAM_CLOSED };

/* What a stream needs from its owner (client or server). */
typedef struct psrpc__stream_owner {
    void *owner;
    void (*retain)(void *owner);
    void (*release)(void *owner);
    /* The stream ended: drop it from the owner's routing table (loop thread). */
    void (*detach)(void *owner, psrpc_stream *stream);
    /* Client side: the user closed the stream while it was opening. */
    void (*abort_open)(void *owner, psrpc_stream *stream);
} psrpc__stream_owner;

typedef struct psrpc__stream_params {
    psrpc_bus *bus;
    bool server_side;
    const char *stream_id;
    const char *node_id;
    const char *method;
    const psrpc__channel *peer; /* where this side sends (copied) */
    int64_t timeout_ms;
    char **meta_keys; /* taken over */
    char **meta_values;
    size_t meta_count;
    psrpc__stream_owner owner;
} psrpc__stream_params;

/* A new stream with one reference for the owner's table and one for the user
 * (refs = 2). NULL on allocation failure (the metadata is freed). */
psrpc_stream *psrpc__stream_new(const psrpc__stream_params *p);

/* Client side: callbacks given at open time. */
void psrpc__stream_set_client_callbacks(psrpc_stream *s, psrpc_done_cb on_open,
                                        psrpc_stream_message_cb on_message,
                                        psrpc_stream_close_cb on_close, void *user_data,
                                        psrpc_release_cb release);

/* The open was acknowledged (client side): OPEN, on_open(NULL), queued sends go. */
void psrpc__stream_opened(psrpc_stream *s);

/* Handles an inbound Stream whose body is message, ack or close. */
void psrpc__stream_handle(psrpc_stream *s, const Internal__Stream *is);

/* Ends the stream once with cause (NULL = clean "stream closed"): sends a
 * Close to the peer if send_close, fails pending sends, runs on_open (if the
 * open was pending) and on_close, releases user data, detaches from the owner
 * and drops the owner's reference. */
void psrpc__stream_end(psrpc_stream *s, const psrpc__err *cause, bool send_close);

/* Client side: an open was acknowledged after the stream had already ended
 * (closed while opening): tell the server again, now that it knows it. */
void psrpc__stream_close_late_open(psrpc_stream *s);

int psrpc__stream_state(const psrpc_stream *s);
/* Why it ended (NULL: a clean close, or not ended). Loop thread. */
const psrpc__err *psrpc__stream_cause(const psrpc_stream *s);
/* Server side: the expiry its open request carried (psrpc_stream_expiry_ns). */
void psrpc__stream_set_expiry(psrpc_stream *s, int64_t expiry_ns);
const char *psrpc__stream_id(const psrpc_stream *s);

/* Reference counting (any thread). */
void psrpc__stream_retain(psrpc_stream *s);
void psrpc__stream_release(psrpc_stream *s);

#endif
