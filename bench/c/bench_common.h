/* Shared by psrpc_bench.c and raw_bench.c: clocks, the latency histogram,
 * the stdout line protocol bench.py reads, payload framing, credit pipes.
 *
 * Line protocol (stdout, one line each, flushed):
 *   READY                 every role of this process is set up
 *   START / END           the measuring role's window (bench.py samples CPU)
 *   RESULT {json}         {"role":..,"ops":N,"elapsed_s":x,"errors":k,"hist":[[us,n],..]}
 * After its work a process waits for stdin to close, then (subscribers) prints
 * RESULT and exits: bench.py reads peak RSS before closing stdin. */
#ifndef BENCH_COMMON_H
#define BENCH_COMMON_H

#include <errno.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* The options both benchmark programs take (raw_bench ignores --id,
 * --servers and --subs: bench.py passes the same set to every program). */
typedef struct bench_config {
    const char *url, *role, *scenario;
    int inflight;
    size_t payload;
    double warmup, duration;
    int id, servers, subs;
    int credit_fd;
    const char *credit_fds;
} bench_config;

/* Parses "--flag value" pairs into c. Returns 0, or -1 with *bad naming a
 * flag that is unknown or has no value. */
static inline int bench_parse_args(bench_config *c, int argc, char **argv, const char **bad) {
    for (int i = 1; i < argc; i += 2) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        *bad = a;
        if (!v)
            return -1;
        if (!strcmp(a, "--bus"))
            c->url = v;
        else if (!strcmp(a, "--role"))
            c->role = v;
        else if (!strcmp(a, "--scenario"))
            c->scenario = v;
        else if (!strcmp(a, "--inflight"))
            c->inflight = atoi(v);
        else if (!strcmp(a, "--payload"))
            c->payload = (size_t)atol(v);
        else if (!strcmp(a, "--warmup"))
            c->warmup = atof(v);
        else if (!strcmp(a, "--duration"))
            c->duration = atof(v);
        else if (!strcmp(a, "--id"))
            c->id = atoi(v);
        else if (!strcmp(a, "--servers"))
            c->servers = atoi(v);
        else if (!strcmp(a, "--subs"))
            c->subs = atoi(v);
        else if (!strcmp(a, "--credit-fd"))
            c->credit_fd = atoi(v);
        else if (!strcmp(a, "--credit-fds"))
            c->credit_fds = v;
        else
            return -1;
    }
    return 0;
}

static inline int64_t mono_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* Wall clock: the one-way latency of fan-out messages crosses processes and
 * languages (Go's time.Now().UnixNano()). */
static inline int64_t wall_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static inline void sleep_s(double s) {
    struct timespec t = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&t, &t) != 0 && errno == EINTR) {
    }
}

/* Log-linear histogram in microseconds: 1 us buckets below 1 ms, 10 us below
 * 10 ms, 100 us below 100 ms, 1 ms below 1 s, 10 ms below 10 s. */
#define HIST_BUCKETS 4600
typedef struct hist {
    uint64_t n[HIST_BUCKETS];
} hist;

static inline int hist_index(int64_t us) {
    if (us < 0)
        us = 0;
    if (us < 1000)
        return (int)us;
    if (us < 10000)
        return 1000 + (int)((us - 1000) / 10);
    if (us < 100000)
        return 1900 + (int)((us - 10000) / 100);
    if (us < 1000000)
        return 2800 + (int)((us - 100000) / 1000);
    if (us < 10000000)
        return 3700 + (int)((us - 1000000) / 10000);
    return HIST_BUCKETS - 1;
}

/* The middle of bucket i, in microseconds. */
static inline double hist_value(int i) {
    if (i < 1000)
        return i + 0.5;
    if (i < 1900)
        return 1000 + (i - 1000) * 10 + 5;
    if (i < 2800)
        return 10000 + (i - 1900) * 100 + 50;
    if (i < 3700)
        return 100000 + (i - 2800) * 1000 + 500;
    return 1000000 + (i - 3700) * 10000 + 5000;
}

static inline void hist_add_ns(hist *h, int64_t ns) { h->n[hist_index(ns / 1000)]++; }

static inline void emit(const char *line) {
    fputs(line, stdout);
    fputc('\n', stdout);
    fflush(stdout);
}

static inline void emit_result(const char *role, uint64_t ops, double elapsed_s, uint64_t errors,
                               const hist *h) {
    printf("RESULT {\"role\":\"%s\",\"ops\":%llu,\"elapsed_s\":%.6f,\"errors\":%llu,\"hist\":[",
           role, (unsigned long long)ops, elapsed_s, (unsigned long long)errors);
    int first = 1;
    for (int i = 0; h && i < HIST_BUCKETS; i++) {
        if (!h->n[i])
            continue;
        printf("%s[%.1f,%llu]", first ? "" : ",", hist_value(i), (unsigned long long)h->n[i]);
        first = 0;
    }
    printf("]}\n");
    fflush(stdout);
}

/* Blocks until stdin is closed (bench.py's signal to exit). */
static inline void wait_stdin_eof(void) {
    char buf[256];
    for (;;) {
        ssize_t r = read(0, buf, sizeof buf);
        if (r == 0 || (r < 0 && errno != EINTR))
            return;
    }
}

/* Payload framing, identical in C, Go and raw: the request body is a
 * serialized google.protobuf.BytesValue (0x0a, varint length, bytes), as
 * Go's psrpc sends it. Inside the bytes: [0..8) wall-clock ns of the send,
 * [8] 1 when the message is inside the measured window, [9..13) a slot
 * number (raw) and the rest filler. */
#define PAYLOAD_TS 0
#define PAYLOAD_FLAG 8
#define PAYLOAD_SLOT 9
#define PAYLOAD_TYPE 13 /* raw: 1 request, 2 claim request, 3 claim response, 4 response */
#define PAYLOAD_MIN 16

static inline size_t bytesvalue_header(uint8_t *out, size_t len) {
    size_t n = 0;
    out[n++] = 0x0a;
    while (len >= 0x80) {
        out[n++] = (uint8_t)(len | 0x80);
        len >>= 7;
    }
    out[n++] = (uint8_t)len;
    return n;
}

/* A BytesValue of `inner` bytes; *body points at its value. */
static inline uint8_t *make_payload(size_t inner, size_t *total, uint8_t **body) {
    if (inner < PAYLOAD_MIN)
        inner = PAYLOAD_MIN;
    uint8_t *b = malloc(inner + 8);
    size_t h = bytesvalue_header(b, inner);
    memset(b + h, 'x', inner);
    *total = h + inner;
    *body = b + h;
    return b;
}

/* Offset of the value inside a BytesValue message, or -1. */
static inline long bytesvalue_body(const uint8_t *p, size_t len) {
    if (len < 2 || p[0] != 0x0a)
        return -1;
    size_t i = 1;
    while (i < len && (p[i] & 0x80))
        i++;
    return i + 1 <= len ? (long)(i + 1) : -1;
}

static inline void put_i64(uint8_t *p, int64_t v) { memcpy(p, &v, 8); }
static inline int64_t get_i64(const uint8_t *p) {
    int64_t v;
    memcpy(&v, p, 8);
    return v;
}
static inline void put_u32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static inline uint32_t get_u32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* Fan-out flow control: each subscriber writes one byte to its credit pipe
 * per CREDIT_EVERY messages received; the publisher keeps at most `window`
 * messages beyond what the slowest subscriber confirmed. */
#define CREDIT_EVERY 8
#define MAX_CREDIT_FDS 16

typedef struct credits {
    int n;
    int fd[MAX_CREDIT_FDS];
    uint64_t got[MAX_CREDIT_FDS];
    uint64_t lost, last_min; /* messages given up on; progress tracking */
    int64_t last_ns;
} credits;

static inline int credits_parse(credits *c, const char *list) {
    memset(c, 0, sizeof *c);
    if (!list)
        return 0;
    const char *p = list;
    while (*p && c->n < MAX_CREDIT_FDS) {
        c->fd[c->n++] = atoi(p);
        p = strchr(p, ',');
        if (!p)
            break;
        p++;
    }
    return c->n;
}

static inline uint64_t credits_min(const credits *c) {
    uint64_t m = UINT64_MAX;
    for (int i = 0; i < c->n; i++)
        if (c->got[i] < m)
            m = c->got[i];
    return c->n ? m * CREDIT_EVERY : UINT64_MAX;
}

/* Waits up to timeout_ms for credit bytes and counts them. */
static inline void credits_wait(credits *c, int timeout_ms) {
    struct pollfd pf[MAX_CREDIT_FDS];
    for (int i = 0; i < c->n; i++) {
        pf[i].fd = c->fd[i];
        pf[i].events = POLLIN;
        pf[i].revents = 0;
    }
    if (poll(pf, (nfds_t)c->n, timeout_ms) <= 0)
        return;
    for (int i = 0; i < c->n; i++) {
        if (!(pf[i].revents & (POLLIN | POLLHUP)))
            continue;
        char buf[4096];
        ssize_t r = read(c->fd[i], buf, sizeof buf);
        if (r > 0)
            c->got[i] += (uint64_t)r;
    }
}

/* Messages published and not yet confirmed by every subscriber. A message a
 * subscriber never got (dropped, or published before its subscription was
 * up) would shrink the window for good: after 200 ms without progress the
 * unconfirmed ones are written off. */
static inline uint64_t credits_outstanding(credits *c, uint64_t published) {
    uint64_t m = credits_min(c);
    if (c->n == 0)
        return 0;
    int64_t now = mono_ns();
    if (m != c->last_min || c->last_ns == 0) {
        c->last_min = m;
        c->last_ns = now;
    } else if (now - c->last_ns > 200000000) {
        c->lost = published > m ? published - m : 0;
        c->last_ns = now;
    }
    uint64_t done = m + c->lost;
    return published > done ? published - done : 0;
}

/* Subscriber side: called per message received. */
static inline void credit_tick(int fd, uint64_t *count) {
    if (++*count % CREDIT_EVERY == 0 && fd >= 0) {
        char b = 1;
        ssize_t r = write(fd, &b, 1);
        (void)r;
    }
}

#endif
