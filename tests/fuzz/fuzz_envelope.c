/* fuzz_envelope (test plan J1): transport bytes -> internal.Msg decode (with
 * gzip, bounded by max_message_size) -> every control message type, exactly
 * as psrpc__decode_control does on each channel kind (request, claim request,
 * claim response, response, stream open/message/ack/close), plus the NATS
 * router's channel peek.
 *
 * Input: byte 0 selects the value bound (the bus's max_message_size), the
 * rest is the envelope. Properties checked (abort = finding):
 *   - a decoded value is never larger than the bound, compressed or not;
 *   - the router peek agrees with the decoder on Msg.channel;
 *   - a control message that unpacks re-wraps (with and without gzip),
 *     decodes and unpacks again to the same packed bytes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "fuzz_assert.h"
#include "wire.h"

static const size_t bounds[] = {1 << 20, 65536, 4096, 100, 1};

static const ProtobufCMessageDescriptor *const kinds[] = {
    &internal__request__descriptor,        /* server request channel */
    &internal__claim_request__descriptor,  /* client claim channel */
    &internal__claim_response__descriptor, /* server claim-response channel */
    &internal__response__descriptor,       /* client response channel */
    &internal__stream__descriptor,         /* stream channels, both sides */
};

static uint8_t *pack(const ProtobufCMessage *m, size_t *len) {
    *len = protobuf_c_message_get_packed_size(m);
    uint8_t *b = malloc(*len ? *len : 1);
    FUZZ_ASSERT(b);
    protobuf_c_message_pack(m, b);
    return b;
}

/* m unpacked from an envelope: wrap it again and read it back. */
static void round_trip(const ProtobufCMessage *m, const char *channel, size_t threshold) {
    psrpc_msg *bytes = NULL;
    if (psrpc__wire_wrap_message(&bytes, m, channel[0] ? channel : NULL, threshold) != PSRPC_OK)
        return; /* out of memory only: every string was checked on the way in */
    psrpc__envelope env;
    FUZZ_ASSERT(psrpc__envelope_decode(&env, bytes->data, bytes->len, 0) == 0);
    FUZZ_ASSERT(strcmp(env.type_name, m->descriptor->name) == 0);
    FUZZ_ASSERT(strcmp(env.channel, channel) == 0);
    ProtobufCMessage *again = NULL;
    FUZZ_ASSERT(psrpc__wire_unpack(&again, &env, m->descriptor) == 0);
    size_t la, lb;
    uint8_t *a = pack(m, &la), *b = pack(again, &lb);
    FUZZ_ASSERT(la == lb && memcmp(a, b, la) == 0);
    free(a);
    free(b);
    psrpc__wire_free(again);
    psrpc__envelope_clear(&env);
    psrpc_msg_release(bytes);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1)
        return 0;
    size_t bound = bounds[data[0] % (sizeof bounds / sizeof bounds[0])];
    data++;
    size--;

    psrpc__envelope env;
    int rc = psrpc__envelope_decode(&env, data, size, bound);
    char *key = NULL;
    int prc = psrpc__wire_peek_channel(&key, data, size);
    if (rc != 0) {
        FUZZ_ASSERT(rc == PSRPC_MALFORMED_REQUEST || rc == PSRPC_RESOURCE_EXHAUSTED);
        FUZZ_ASSERT(env.priv_ == NULL);
        free(key);
        return 0;
    }
    FUZZ_ASSERT(env.value_len <= bound);
    FUZZ_ASSERT(env.type_name[0] != '\0');
    /* A Msg the decoder accepts is one the router can route. */
    FUZZ_ASSERT(prc == 0 && strcmp(key, env.channel) == 0);
    free(key);

    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        ProtobufCMessage *m = NULL;
        if (psrpc__wire_unpack(&m, &env, kinds[i]) != 0) {
            FUZZ_ASSERT(m == NULL);
            continue;
        }
        FUZZ_ASSERT(strcmp(env.type_name, kinds[i]->name) == 0);
        round_trip(m, env.channel, 0);
        round_trip(m, env.channel, 1);
        psrpc__wire_free(m);
    }
    psrpc__envelope_clear(&env);
    return 0;
}
