/* fuzz_redis (test plan J3): bytes from a Redis server -> the Redis bus's
 * receive path: the RESP framing filter (redis_conn.c), the hiredis reader as
 * the bus drives it, the bus's reply handling (handshake, SUBSCRIBE
 * confirmations, the queue lock's SET replies, pub/sub "message" pushes,
 * unexpected or erroneous replies) and, for pushes, the server core behind
 * it. Nothing is mocked on our side: a real psrpc_bus on redis://127.0.0.1:P
 * talks to a fake Redis in this process (fake_broker.h), which answers the
 * bus's commands correctly (PONG, subscribe confirmations, +OK for SET,
 * :0 for PUBLISH) and, once the server's three registrations are confirmed,
 * writes the fuzz bytes on the subscriber (byte 0 even) or publisher (odd)
 * connection and half-closes it. The input ends when the bus has read to
 * the end and dropped the connection (EOF or protocol error).
 *
 * max_message_size is 64 KiB (bulk strings beyond it never reach the reader).
 * Findings: crash, UB, leak, a hang (the bus must drop the connection within
 * 5 s of the end of input), or the server not coming up. */
#include <pthread.h>
#include <stdatomic.h>

#include "fuzz_server.h"

enum { ROLE_UNKNOWN = 0, ROLE_SUB = 1 };

static fake_broker fb;

/* One complete RESP command (array of bulk strings) at the start of c->in:
 * its length, or 0 if incomplete. argv receives up to 8 arguments. */
static size_t parse_cmd(fb_conn *c, const char **argv, size_t *lens, int *argc) {
    if (c->in_len == 0)
        return 0;
    const char *p = c->in, *end = c->in + c->in_len;
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    if (!nl)
        return 0;
    FUZZ_ASSERT(p[0] == '*');
    long n = strtol(p + 1, NULL, 10);
    FUZZ_ASSERT(n > 0 && n < 64);
    p = nl + 1;
    *argc = 0;
    for (long i = 0; i < n; i++) {
        nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl)
            return 0;
        FUZZ_ASSERT(p[0] == '$');
        long l = strtol(p + 1, NULL, 10);
        p = nl + 1;
        if (end - p < l + 2)
            return 0;
        if (*argc < 8) {
            argv[*argc] = p;
            lens[*argc] = (size_t)l;
            (*argc)++;
        }
        p += l + 2;
    }
    return (size_t)(p - c->in);
}

static bool is_cmd(const char *a, size_t n, const char *name) {
    return n == strlen(name) && strncasecmp(a, name, n) == 0;
}

/* Answers every complete command buffered on each connection. */
static void serve(void) {
    for (int i = 0; i < fb.nconns; i++) {
        fb_conn *c = &fb.conns[i];
        for (;;) {
            const char *argv[8];
            size_t lens[8];
            int argc = 0;
            size_t used = parse_cmd(c, argv, lens, &argc);
            if (!used)
                break;
            char out[1024];
            if (is_cmd(argv[0], lens[0], "PING")) {
                fb_write(c, "+PONG\r\n", 7);
            } else if (is_cmd(argv[0], lens[0], "SUBSCRIBE") ||
                       is_cmd(argv[0], lens[0], "UNSUBSCRIBE")) {
                bool sub = argv[0][0] == 'S' || argv[0][0] == 's';
                c->role = ROLE_SUB;
                for (int k = 1; k < argc; k++) {
                    int n = snprintf(out, sizeof out, "*3\r\n$%d\r\n%s\r\n$%zu\r\n%.*s\r\n:%d\r\n",
                                     sub ? 9 : 11, sub ? "subscribe" : "unsubscribe", lens[k],
                                     (int)lens[k], argv[k], k);
                    fb_write(c, out, (size_t)n);
                }
            } else if (is_cmd(argv[0], lens[0], "PUBLISH")) {
                fb_write(c, ":0\r\n", 4);
            } else {
                fb_write(c, "+OK\r\n", 5);
            }
            fb_consume(c, used);
        }
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    fb_listen(&fb);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (fb.lfd == 0)
        LLVMFuzzerInitialize(NULL, NULL);
    if (size < 1)
        return 0;
    bool to_pub = data[0] & 1;
    data++;
    size--;

    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", fb.port);
    fz_server fz;
    fz_server_open(&fz, &fb, serve, url);
    fb_conn *target = NULL;
    for (int i = 0; i < fb.nconns; i++)
        if ((fb.conns[i].role == ROLE_SUB) != to_pub)
            target = &fb.conns[i];
    FUZZ_ASSERT(target);
    fb_write(target, data, size);
    shutdown(target->fd, SHUT_WR);
    /* Serve until the bus dropped the connection. */
    fz_serve_until_eof(&fz, target);
    fz_server_close(&fz);
    return 0;
}
