/* Channel names, ids and the Redis lock key (wire-protocol.md sections 4-6,
 * checked against livekit/psrpc v0.8.2 pkg/info/channels.go, pkg/rand/id.go
 * and pkg/bus/redisbus/redisbus.go). */
#include "channel.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "common.h"

/* ---- UTF-8, decoded exactly like Go's unicode/utf8 ---------------------- */

#define RUNE_ERROR 0xFFFDu

/* Decodes one code point from s (len > 0). Returns the bytes consumed: an
 * invalid, truncated, overlong or surrogate sequence yields U+FFFD and
 * consumes one byte, like utf8.DecodeRuneInString. */
static size_t utf8_decode(const unsigned char *s, size_t len, uint32_t *rune) {
    unsigned char c = s[0];
    if (c < 0x80) {
        *rune = c;
        return 1;
    }
    size_t need;
    unsigned char lo = 0x80, hi = 0xBF; /* accepted range of the second byte */
    uint32_t r;
    if (c >= 0xC2 && c <= 0xDF) {
        need = 2;
        r = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 3;
        r = c & 0x0F;
        if (c == 0xE0)
            lo = 0xA0; /* no overlongs */
        else if (c == 0xED)
            hi = 0x9F; /* no surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 4;
        r = c & 0x07;
        if (c == 0xF0)
            lo = 0x90; /* no overlongs */
        else if (c == 0xF4)
            hi = 0x8F; /* nothing above U+10FFFF */
    } else {
        *rune = RUNE_ERROR;
        return 1;
    }
    if (len < need || s[1] < lo || s[1] > hi) {
        *rune = RUNE_ERROR;
        return 1;
    }
    r = (r << 6) | (s[1] & 0x3F);
    for (size_t i = 2; i < need; i++) {
        if (s[i] < 0x80 || s[i] > 0xBF) {
            *rune = RUNE_ERROR;
            return 1;
        }
        r = (r << 6) | (s[i] & 0x3F);
    }
    *rune = r;
    return need;
}

bool psrpc__utf8_valid(const char *s, size_t len) {
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        /* ASCII, 8 bytes at a time (ids, names and channels are ASCII). */
        while (len - i >= 8) {
            uint64_t w8;
            memcpy(&w8, p + i, 8);
            if (w8 & 0x8080808080808080ull)
                break;
            i += 8;
        }
        if (i == len)
            break;
        if (p[i] < 0x80) {
            i++;
            continue;
        }
        uint32_t r;
        size_t w = utf8_decode(p + i, len - i, &r);
        if (w == 1) /* only an invalid byte decodes as one byte >= 0x80 */
            return false;
        i += w;
    }
    return true;
}

/* ---- a growable string ---------------------------------------------------- */

typedef struct sbuf {
    char *p;
    size_t len;
    size_t cap;
    bool oom;
} sbuf;

static void sb_reserve(sbuf *b, size_t extra) {
    if (b->oom)
        return;
    if (extra > SIZE_MAX / 2 - b->len) {
        b->oom = true;
        return;
    }
    size_t need = b->len + extra + 1;
    if (need <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
        b->oom = true;
        return;
    }
    b->p = p;
    b->cap = cap;
}

static void sb_putn(sbuf *b, const char *s, size_t n) {
    sb_reserve(b, n);
    if (b->oom)
        return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_puts(sbuf *b, const char *s) { sb_putn(b, s, strlen(s)); }

static void sb_putc(sbuf *b, char c) { sb_putn(b, &c, 1); }

/* Returns the finished string (never NULL unless out of memory). */
static char *sb_finish(sbuf *b) {
    if (!b->oom && !b->p)
        sb_reserve(b, 0);
    if (b->oom) {
        free(b->p);
        b->p = NULL;
        return NULL;
    }
    if (b->len == 0)
        b->p[0] = '\0';
    return b->p;
}

/* ---- sanitizing (section 5.3) --------------------------------------------- */

static bool is_channel_char(uint32_t r) {
    return (r >= '0' && r <= '9') || (r >= 'A' && r <= 'Z') || (r >= 'a' && r <= 'z') || r == '_';
}

static void sb_sanitized(sbuf *b, const char *s, size_t len) {
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        uint32_t r;
        i += utf8_decode(p + i, len - i, &r);
        if (is_channel_char(r)) {
            sb_putc(b, (char)r);
        } else if (r < 0x10000) {
            char t[6] = {'u', '+'};
            for (int k = 0; k < 4; k++)
                t[2 + k] = hex[(r >> (12 - 4 * k)) & 0xF];
            sb_putn(b, t, sizeof t);
        } else {
            char t[10] = {'U', '+'};
            for (int k = 0; k < 8; k++)
                t[2 + k] = hex[(r >> (28 - 4 * k)) & 0xF];
            sb_putn(b, t, sizeof t);
        }
    }
}

char *psrpc__sanitize(const char *s, size_t len) {
    sbuf b = {0};
    sb_sanitized(&b, s, len);
    return sb_finish(&b);
}

/* ---- the Legacy join (section 5.4, Go's appendChannelParts) --------------- */

/* One string part: the delimiter goes before it when the previous part wrote
 * something; need then records whether this part wrote anything. */
static void join_part(sbuf *b, bool *need, const char *s) {
    if (*need)
        sb_putc(b, '|');
    size_t mark = b->len;
    sb_sanitized(b, s, strlen(s));
    *need = b->len > mark;
}

/* A nested list part (the topics): joined on its own with a fresh need flag,
 * so a trailing empty topic leaves its delimiter behind (quirk Q7). */
static void join_list(sbuf *b, bool *need, const char *const *v, size_t n) {
    if (*need)
        sb_putc(b, '|');
    size_t mark = b->len;
    bool inner = false;
    for (size_t i = 0; i < n; i++)
        join_part(b, &inner, v[i]);
    *need = b->len > mark;
}

static char *legacy_method(const char *service, const char *method, const char *const *topics,
                           size_t topic_count, const char *suffix) {
    sbuf b = {0};
    bool need = false;
    join_part(&b, &need, service);
    join_part(&b, &need, method);
    join_list(&b, &need, topics, topic_count);
    join_part(&b, &need, suffix);
    return sb_finish(&b);
}

static char *legacy_client(const char *service, const char *id, const char *suffix) {
    sbuf b = {0};
    bool need = false;
    join_part(&b, &need, service);
    join_part(&b, &need, id);
    join_part(&b, &need, suffix);
    return sb_finish(&b);
}

/* "SRV." S, then "." sanitized(t) for each non-empty topic, then ".Q". */
static char *server_subject(const char *service, const char *const *topics, size_t topic_count,
                            bool queue) {
    sbuf b = {0};
    sb_puts(&b, "SRV.");
    sb_puts(&b, service);
    for (size_t i = 0; i < topic_count; i++) {
        if (topics[i][0] == '\0')
            continue;
        sb_putc(&b, '.');
        sb_sanitized(&b, topics[i], strlen(topics[i]));
    }
    if (queue)
        sb_puts(&b, ".Q");
    return sb_finish(&b);
}

/* "CLI." S "." id "." suffix, nothing sanitized. */
static char *client_subject(const char *service, const char *id, const char *suffix) {
    sbuf b = {0};
    sb_puts(&b, "CLI.");
    sb_puts(&b, service);
    sb_putc(&b, '.');
    sb_puts(&b, id);
    sb_putc(&b, '.');
    sb_puts(&b, suffix);
    return sb_finish(&b);
}

/* M "." suffix, unsanitized. */
static char *local_key(const char *method, const char *suffix) {
    sbuf b = {0};
    sb_puts(&b, method);
    sb_putc(&b, '.');
    sb_puts(&b, suffix);
    return sb_finish(&b);
}

static int channel_set(psrpc__channel *out, char *legacy, char *server, char *local,
                       bool want_local) {
    if (!legacy || !server || (want_local && !local)) {
        free(legacy);
        free(server);
        free(local);
        /* Left empty: psrpc__channel_clear on it is safe after a failure. */
        out->legacy = out->server = out->local = NULL;
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory building a channel name");
    }
    out->legacy = legacy;
    out->server = server;
    out->local = local;
    return 0;
}

static int method_channel(psrpc__channel *out, const char *service, const char *method,
                          const char *const *topics, size_t topic_count, bool queue,
                          const char *suffix) {
    return channel_set(out, legacy_method(service, method, topics, topic_count, suffix),
                       server_subject(service, topics, topic_count, queue),
                       local_key(method, suffix), true);
}

static int client_channel(psrpc__channel *out, const char *service, const char *id,
                          const char *suffix) {
    return channel_set(out, legacy_client(service, id, suffix), client_subject(service, id, suffix),
                       NULL, false);
}

int psrpc__channel_rpc(psrpc__channel *out, const char *service, const char *method,
                       const char *const *topics, size_t topic_count, bool queue) {
    return method_channel(out, service, method, topics, topic_count, queue, "REQ");
}

int psrpc__channel_claim_response(psrpc__channel *out, const char *service, const char *method,
                                  const char *const *topics, size_t topic_count) {
    return method_channel(out, service, method, topics, topic_count, false, "RCLAIM");
}

int psrpc__channel_stream_server(psrpc__channel *out, const char *service, const char *method,
                                 const char *const *topics, size_t topic_count) {
    return method_channel(out, service, method, topics, topic_count, false, "STR");
}

int psrpc__channel_client_response(psrpc__channel *out, const char *service,
                                   const char *client_id) {
    return client_channel(out, service, client_id, "RES");
}

int psrpc__channel_client_claim(psrpc__channel *out, const char *service, const char *client_id) {
    return client_channel(out, service, client_id, "CLAIM");
}

int psrpc__channel_client_stream(psrpc__channel *out, const char *service, const char *node_id) {
    return client_channel(out, service, node_id, "STR");
}

void psrpc__channel_clear(psrpc__channel *ch) {
    if (!ch)
        return;
    free(ch->legacy);
    free(ch->server);
    free(ch->local);
    ch->legacy = ch->server = ch->local = NULL;
}

static char *dup_or_null(const char *s, bool *failed) {
    if (!s)
        return NULL;
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (!d)
        *failed = true;
    else
        memcpy(d, s, n);
    return d;
}

int psrpc__channel_copy(psrpc__channel *dst, const psrpc__channel *src) {
    bool failed = false;
    psrpc__channel c = {
        .legacy = dup_or_null(src->legacy, &failed),
        .server = dup_or_null(src->server, &failed),
        .local = dup_or_null(src->local, &failed),
    };
    if (failed) {
        psrpc__channel_clear(&c);
        dst->legacy = dst->server = dst->local = NULL;
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory copying a channel");
    }
    *dst = c;
    return 0;
}

/* ---- CamelCase (section 4.1, protoc-gen-psrpc stringutils.CamelCase) ------ */

static bool is_lower(char c) { return c >= 'a' && c <= 'z'; }

static bool is_digit(char c) { return c >= '0' && c <= '9'; }

char *psrpc__camel_case(const char *s) {
    size_t n = strlen(s);
    char *t = malloc(n + 2); /* at most one byte longer ('_' -> "X") */
    if (!t)
        return NULL;
    size_t o = 0, i = 0;
    if (n > 0 && s[0] == '_') {
        t[o++] = 'X';
        i = 1;
    }
    for (; i < n; i++) {
        char c = s[i];
        if (c == '_' && i + 1 < n && is_lower(s[i + 1]))
            continue;
        if (is_digit(c)) {
            t[o++] = c;
            continue;
        }
        if (is_lower(c))
            c = (char)(c ^ ' ');
        t[o++] = c;
        while (i + 1 < n && is_lower(s[i + 1]))
            t[o++] = s[++i];
    }
    t[o] = '\0';
    return t;
}

/* ---- ids (section 4.2) ---------------------------------------------------- */

static void fill_random(unsigned char *buf, size_t len) {
    size_t got = 0;
    while (got < len) {
        ssize_t r = getrandom(buf + got, len - got, 0);
        if (r > 0) {
            got += (size_t)r;
            continue;
        }
        if (r < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        break; /* ENOSYS (very old kernel) or a seccomp filter */
    }
    if (got == len)
        return;
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    while (fd >= 0 && got < len) {
        ssize_t r = read(fd, buf + got, len - got);
        if (r > 0)
            got += (size_t)r;
        else if (!(r < 0 && errno == EINTR))
            break;
    }
    if (fd >= 0)
        close(fd);
    if (got < len) {
        /* Colliding ids would cross-deliver responses; refuse to go on. */
        fputs("psrpc: no source of randomness (getrandom, /dev/urandom)\n", stderr);
        abort();
    }
}

/* Random bytes for ids come from a per-thread buffer refilled 512 bytes at a
 * time (about 40 ids per getrandom call instead of one). A forked child must
 * not reuse the bytes its parent also holds: fork bumps a generation that
 * empties every buffer. */
#define RANDOM_POOL 512
static atomic_uint random_generation;
static pthread_once_t random_once = PTHREAD_ONCE_INIT;
static _Thread_local struct {
    unsigned char buf[RANDOM_POOL];
    size_t pos;
    unsigned generation;
    bool filled;
} pool;

static void random_after_fork(void) { atomic_fetch_add(&random_generation, 1); }
static void random_init(void) { pthread_atfork(NULL, NULL, random_after_fork); }

static unsigned char random_byte(void) {
    unsigned generation = atomic_load_explicit(&random_generation, memory_order_relaxed);
    if (!pool.filled || pool.pos == RANDOM_POOL || pool.generation != generation) {
        pthread_once(&random_once, random_init);
        fill_random(pool.buf, RANDOM_POOL);
        pool.pos = 0;
        pool.generation = generation;
        pool.filled = true;
    }
    unsigned char b = pool.buf[pool.pos];
    pool.buf[pool.pos++] = 0;
    return b;
}

void psrpc__new_id(char *out, const char *prefix) {
    static const char alphabet[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    size_t pl = strlen(prefix);
    memmove(out, prefix, pl);
    size_t n = 0;
    while (n < PSRPC__ID_RANDOM_LEN) {
        /* 6 uniform bits; rejecting 62 and 63 leaves 62 equally likely symbols. */
        unsigned v = random_byte() & 0x3F;
        if (v < 62)
            out[pl + n++] = alphabet[v];
    }
    out[pl + PSRPC__ID_RANDOM_LEN] = '\0';
}

/* ---- Redis queue lock key (section 6.1) ----------------------------------- */

/* OpenSSL 3 looks a digest named by EVP_sha256() up again on every use; fetch
 * it once. Kept for the life of the process (one small object). */
static EVP_MD *sha256_md;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;
static void sha256_fetch(void) { sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL); }

void psrpc__redis_lock_key(char out[PSRPC__LOCK_KEY_LEN + 1], const uint8_t *payload, size_t len) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;
    static const uint8_t empty[1];
    pthread_once(&sha256_once, sha256_fetch);
    const EVP_MD *type = sha256_md ? sha256_md : EVP_sha256();
    if (!EVP_Digest(len ? payload : empty, len, md, &md_len, type, NULL) || md_len != 32) {
        /* Only an unusable libcrypto (out of memory) gets here. The function
         * cannot fail, so hand back a key that is well-formed for Redis. */
        memset(out, '-', PSRPC__LOCK_KEY_LEN);
        out[PSRPC__LOCK_KEY_LEN] = '\0';
        return;
    }
    EVP_EncodeBlock((unsigned char *)out, md, 32); /* 44 characters + NUL */
}
