/* The connection's RESP reader (redis_conn.c psrpc__rin): replies parsed from
 * random streams, fed whole, byte by byte and in random pieces (each piece in
 * its own exact-size buffer, so a sanitizer sees any read past it), must equal
 * what a plain hiredis redisReader makes of the same stream, with bulks over
 * max_bulk turned into nil; and malformed streams fail after the same replies. */
#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "redis_conn.h"

#define MAX_BULK 100

typedef struct buf {
    char *p;
    size_t len, cap;
} buf;

static void put(buf *b, const void *data, size_t n) {
    if (b->len + n > b->cap) {
        b->cap = (b->len + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        if (!b->p)
            abort();
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
}

static void putf(buf *b, const char *fmt, long long v) {
    char tmp[64];
    int n = snprintf(tmp, sizeof tmp, fmt, v);
    put(b, tmp, (size_t)n);
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(uint32_t n) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng % n);
}

/* One random reply into wire (what the server sends) and want (the same with
 * bulks over MAX_BULK as nil: what the reader must make of it). */
static void gen(buf *wire, buf *want, int depth) {
    int kind = (int)rnd(depth < 2 ? 9 : 7);
    switch (kind) {
    case 0:
    case 1: { /* status / error; a lone CR inside sometimes */
        const char *t = kind == 0 ? "+" : "-";
        char s[40];
        size_t n = rnd(sizeof s);
        for (size_t i = 0; i < n; i++)
            s[i] = rnd(20) == 0 ? '\r' : (char)('a' + rnd(26));
        if (n && s[n - 1] == '\r')
            s[n - 1] = 'x';
        put(wire, t, 1), put(want, t, 1);
        put(wire, s, n), put(want, s, n);
        put(wire, "\r\n", 2), put(want, "\r\n", 2);
        break;
    }
    case 2: { /* integer, also negative and large */
        long long v = rnd(4) == 0 ? -(long long)rnd(100000) : (long long)rnd(1000000);
        if (rnd(10) == 0)
            v = 9223372036854775807LL;
        putf(wire, ":%lld\r\n", v);
        putf(want, ":%lld\r\n", v);
        break;
    }
    case 3:
    case 4:
    case 5: { /* bulk: binary, sometimes over MAX_BULK */
        size_t n = rnd(8) == 0 ? MAX_BULK + 1 + rnd(300) : rnd(MAX_BULK + 1);
        char *s = malloc(n + 1);
        for (size_t i = 0; i < n; i++)
            s[i] = rnd(5) == 0 ? "\r\n$*:"[rnd(5)] : (char)rnd(256);
        putf(wire, "$%lld\r\n", (long long)n);
        put(wire, s, n);
        put(wire, "\r\n", 2);
        if (n > MAX_BULK) {
            put(want, "$-1\r\n", 5);
        } else {
            putf(want, "$%lld\r\n", (long long)n);
            put(want, s, n);
            put(want, "\r\n", 2);
        }
        free(s);
        break;
    }
    case 6: /* nil */
        put(wire, "$-1\r\n", 5), put(want, "$-1\r\n", 5);
        break;
    default: { /* an array (nested below the top), a pub/sub message, nil */
        if (rnd(8) == 0) {
            put(wire, "*-1\r\n", 5), put(want, "*-1\r\n", 5);
            break;
        }
        if (rnd(2) == 0) {
            char chan[32];
            int cn = snprintf(chan, sizeof chan, "svc|Method|REQ%u", rnd(1000));
            size_t n = rnd(3) == 0 ? MAX_BULK + rnd(50) : rnd(MAX_BULK);
            buf w = {0}, v = {0};
            putf(&w, "*3\r\n$7\r\nmessage\r\n$%lld\r\n", cn);
            put(&w, chan, (size_t)cn);
            put(&w, "\r\n", 2);
            put(&v, w.p, w.len);
            char *s = malloc(n + 1);
            for (size_t i = 0; i < n; i++)
                s[i] = (char)rnd(256);
            putf(&w, "$%lld\r\n", (long long)n);
            put(&w, s, n);
            put(&w, "\r\n", 2);
            if (n > MAX_BULK) {
                put(&v, "$-1\r\n", 5);
            } else {
                putf(&v, "$%lld\r\n", (long long)n);
                put(&v, s, n);
                put(&v, "\r\n", 2);
            }
            put(wire, w.p, w.len), put(want, v.p, v.len);
            free(s), free(w.p), free(v.p);
            break;
        }
        int n = (int)rnd(6);
        putf(wire, "*%lld\r\n", n), putf(want, "*%lld\r\n", n);
        for (int i = 0; i < n; i++)
            gen(wire, want, depth + 1);
        break;
    }
    }
}

static bool same(const redisReply *a, const redisReply *b) {
    if (a->type != b->type)
        return false;
    switch (a->type) {
    case REDIS_REPLY_INTEGER:
        return a->integer == b->integer;
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
    case REDIS_REPLY_ERROR:
        /* NUL-terminated as hiredis makes them */
        return a->len == b->len && memcmp(a->str, b->str, a->len) == 0 && b->str[b->len] == 0;
    case REDIS_REPLY_ARRAY:
        if (a->elements != b->elements)
            return false;
        for (size_t i = 0; i < a->elements; i++)
            if (!same(a->element[i], b->element[i]))
                return false;
        return true;
    default:
        return true;
    }
}

typedef struct ref {
    redisReply **v;
    size_t n, next;
    bool mismatch;
} ref;

static bool count_reply(void *ctx, redisReply *r) {
    (void)r;
    ++*(int *)ctx;
    return true;
}

static bool on_reply(void *ctx, redisReply *r) {
    ref *f = ctx;
    if (f->next >= f->n || !same(f->v[f->next], r))
        f->mismatch = true;
    f->next++;
    return true;
}

/* Replies of a plain hiredis reader; *failed: it stopped on an error. */
static ref reference(const buf *want, bool *failed) {
    ref f = {0};
    redisReader *rd = redisReaderCreate();
    redisReaderFeed(rd, want->p, want->len);
    *failed = false;
    for (;;) {
        void *r = NULL;
        if (redisReaderGetReply(rd, &r) != REDIS_OK) {
            *failed = true;
            break;
        }
        if (!r)
            break;
        f.v = realloc(f.v, (f.n + 1) * sizeof *f.v);
        f.v[f.n++] = r;
    }
    redisReaderFree(rd);
    return f;
}

static void ref_free(ref *f) {
    for (size_t i = 0; i < f->n; i++)
        freeReplyObject(f->v[i]);
    free(f->v);
}

/* Feeds wire in pieces of at most `piece` bytes (0: random sizes); returns
 * what psrpc__rin_feed returned last. */
static int feed_pieces(const buf *wire, ref *f, size_t piece) {
    psrpc__rin *in = psrpc__rin_new(MAX_BULK, 0);
    if (!in)
        abort();
    f->next = 0;
    f->mismatch = false;
    int rc = 0;
    for (size_t off = 0; off < wire->len && rc == 0;) {
        size_t n = piece ? piece : 1 + rnd(rnd(2) ? 16 : 600);
        if (n > wire->len - off)
            n = wire->len - off;
        char *p = malloc(n);
        memcpy(p, wire->p + off, n);
        const char *err = NULL;
        rc = psrpc__rin_feed(in, p, n, on_reply, f, &err);
        if (rc != 0 && !err)
            rc = -2; /* an error without a reason */
        free(p);
        off += n;
    }
    psrpc__rin_free(in);
    return rc;
}

TEST(random_streams_match_hiredis) {
    for (int round = 0; round < 300; round++) {
        buf wire = {0}, want = {0};
        int n = 1 + (int)rnd(60);
        for (int i = 0; i < n; i++)
            gen(&wire, &want, 0);
        bool failed;
        ref f = reference(&want, &failed);
        CHECK(!failed);
        CHECK_EQ_INT(f.n, n);
        size_t pieces[] = {wire.len, 1, 7, 0, 0, 0};
        for (size_t k = 0; k < sizeof pieces / sizeof pieces[0]; k++) {
            CHECK_EQ_INT(feed_pieces(&wire, &f, pieces[k]), 0);
            CHECK(!f.mismatch);
            CHECK_EQ_INT(f.next, f.n);
        }
        ref_free(&f);
        free(wire.p);
        free(want.p);
    }
}

/* Malformed input: the replies before it, then an error, whole or split. */
TEST(malformed_streams_fail_after_the_good_replies) {
    static const char *bad[] = {
        "+no carriage return\n",
        "?unknown type\r\n",
        "$abc\r\nxyz\r\n",
        "*65\r\n",
        "$-2\r\n",
        ":1\r\n*2\r\n+a\n",
        "*1\r\n$3\r\nabc\r\n\x01",
        "$3\r\nabc\r\n?\r\n",
        "*2\r\n*1\r\n:1\r\n!\r\n",
        "\0",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        buf wire = {0};
        const char *good = "+OK\r\n:5\r\n*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$2\r\nhi\r\n";
        put(&wire, good, strlen(good));
        put(&wire, bad[i], i == sizeof bad / sizeof bad[0] - 1 ? 1 : strlen(bad[i]));
        bool failed;
        ref f = reference(&wire, &failed);
        size_t pieces[] = {wire.len, 1, 5, 0, 0};
        for (size_t k = 0; k < sizeof pieces / sizeof pieces[0]; k++) {
            int rc = feed_pieces(&wire, &f, pieces[k]);
            CHECK(rc == -1);
            CHECK(!f.mismatch);
            CHECK(f.next >= 3); /* the good replies came first */
            if (rc != -1 || f.mismatch)
                fprintf(stderr, "  bad input %zu, pieces %zu\n", i, pieces[k]);
        }
        ref_free(&f);
        free(wire.p);
    }
}

/* A bulk over max_bulk is never buffered: fed in pieces, it costs nothing
 * however long it is, and arrives as nil. */
TEST(oversize_bulk_arrives_as_nil) {
    psrpc__rin *in = psrpc__rin_new(MAX_BULK, 0);
    REQUIRE(in);
    char head[] = "*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$100000000\r\n";
    ref f = {0};
    redisReply nil = {.type = REDIS_REPLY_NIL}, msg = {.type = REDIS_REPLY_STRING};
    redisReply chan = {.type = REDIS_REPLY_STRING, .str = "c", .len = 1};
    msg.str = "message";
    msg.len = 7;
    redisReply *els[3] = {&msg, &chan, &nil};
    redisReply top = {.type = REDIS_REPLY_ARRAY, .elements = 3, .element = els};
    redisReply *v[1] = {&top};
    f.v = v;
    f.n = 1;
    const char *err = NULL;
    CHECK_EQ_INT(psrpc__rin_feed(in, head, sizeof head - 1, on_reply, &f, &err), 0);
    char *chunk = malloc(65536);
    memset(chunk, 'x', 65536);
    size_t left = 100000000 + 2;
    while (left > 65536) {
        CHECK_EQ_INT(psrpc__rin_feed(in, chunk, 65536, on_reply, &f, &err), 0);
        left -= 65536;
    }
    CHECK_EQ_INT(f.next, 0);
    memcpy(chunk + left - 2, "\r\n", 2);
    CHECK_EQ_INT(psrpc__rin_feed(in, chunk, left, on_reply, &f, &err), 0);
    CHECK_EQ_INT(f.next, 1);
    CHECK(!f.mismatch);
    free(chunk);
    psrpc__rin_free(in);
}

/* The array limit: 64 elements by default, what the connection asks for
 * otherwise (arrays over 64 go through the hiredis reader). */
TEST(array_limit) {
    buf wire = {0};
    put(&wire, "*65\r\n", 5);
    for (int i = 0; i < 65; i++)
        put(&wire, ":1\r\n", 4);
    put(&wire, "*3\r\n:1\r\n:2\r\n:3\r\n", 16);
    size_t limits[] = {0, 2, 100};
    for (size_t k = 0; k < 3; k++) {
        psrpc__rin *in = psrpc__rin_new(MAX_BULK, limits[k]);
        REQUIRE(in);
        char *p = malloc(wire.len);
        memcpy(p, wire.p, wire.len);
        int n = 0;
        const char *err = NULL;
        int rc = psrpc__rin_feed(in, p, wire.len, count_reply, &n, &err);
        CHECK_EQ_INT(rc, limits[k] == 100 ? 0 : -1);
        CHECK_EQ_INT(n, limits[k] == 100 ? 2 : 0);
        free(p);
        psrpc__rin_free(in);
    }
    free(wire.p);
}

TEST_MAIN()
