/* Shared by fuzz_dispatch.c and gen_seeds.c: the record format of the
 * dispatch target's input and the ids its seeds carry as placeholders. */
#ifndef PSRPC_FUZZ_DISPATCH_H
#define PSRPC_FUZZ_DISPATCH_H

/* Input: records of [op (1 byte)][length (2 bytes, little-endian)][bytes]. */
enum {
    OP_SRV_REQUEST = 0,  /* server: request channel of Fuzz.Unary (affinity) */
    OP_SRV_QUEUE = 1,    /* server: request channel of Fuzz.Queue (queue) */
    OP_SRV_RCLAIM = 2,   /* server: claim-response channel of Fuzz.Unary */
    OP_SRV_STREAM = 3,   /* server: stream channel of Fuzz.Stream */
    OP_CLI_RESPONSE = 4, /* client: response channel */
    OP_CLI_CLAIM = 5,    /* client: claim channel */
    OP_CLI_STREAM = 6,   /* client: stream channel */
    OP_SRV_SRCLAIM = 7,  /* server: claim-response channel of Fuzz.Stream */
    OP_ACTION = 8,       /* the client starts something (byte 0 says what) */
    OP_COUNT = 9
};

enum {
    ACT_CALL_GHOST = 0,
    ACT_CALL_UNARY = 1,
    ACT_OPEN_GHOST_STREAM = 2,
    ACT_CALL_QUEUE = 3,
    ACT_OPEN_STREAM = 4,
    ACT_COUNT = 5
};

/* Fixed ids (the golden vectors' ids) and placeholders the harness replaces
 * with the newest live request / stream id before injecting. */
#define FZ_SERVICE "Fuzz"
#define FZ_CLIENT_ID "CLI_mnopqrstuvwx"
#define FZ_SERVER_ID "SRV_x9Y8z7W6v5U4"
#define FZ_REQ_PLACEHOLDER "REQ_abcdefghijkl"
#define FZ_STR_PLACEHOLDER "STR_abcdefghijkl"
#define FZ_ID_LEN 16

#endif
