/* One Redis connection: libuv TCP, optional TLS through memory BIOs, batched
 * writes, and a RESP framing filter in front of the hiredis redisReader.
 *
 * Lifetime: the connection always holds exactly one initialized uv_tcp_t until
 * it is closed (a failed connect to one address closes that handle and opens a
 * fresh one for the next address), so psrpc__rconn_close always has a handle
 * to close and on_closed always comes from a libuv callback. `pending` counts
 * the libuv callbacks still owed to us (handles being closed, the resolver,
 * the connect and the write requests); the memory goes when it reaches 0
 * after close. */
#include "redis_conn.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <stdio.h>

#include "common.h"
#include "loop.h"

#define RCONN_READ_CHUNK 65536
#define RCONN_MAX_LINE 65536 /* a status, error or length line */
#define RCONN_MAX_ARRAY 64   /* our replies have at most 3 elements (by default) */
/* Output buffers (see buf_written). */
#define RCONN_KEEP_MAX ((size_t)4 << 20)
#define RCONN_KEEP_WRITES 64

/* ---- the framing filter ------------------------------------------------ */

/* RESP2 is a flat sequence of tokens: a line ("+", "-", ":", "*", "$"), and
 * after "$N" N bytes + CRLF. The filter follows that sequence and feeds the
 * reader, replacing a bulk longer than max_bulk by a nil bulk and skipping its
 * bytes, so the reader never buffers more than max_bulk + one read chunk.
 * Arrays are limited to max_array elements (RCONN_MAX_ARRAY unless the
 * connection asks for more; the reader allocates the
 * element vector from the announced count). It also counts the items still
 * missing in the current reply, so it can stop right after a whole reply. */
enum { F_TYPE, F_LINE, F_BULK, F_SKIP };

typedef struct rfilter {
    int state;
    char *line; /* RCONN_MAX_LINE bytes */
    size_t line_len;
    int64_t remain; /* F_BULK / F_SKIP: bytes left, CRLF included */
    size_t max_bulk;
    size_t max_array;
    int64_t need; /* items of the current reply still to come; 0: between replies */
} rfilter;

struct psrpc__rin {
    rfilter filter;
    redisReader *reader;
};

struct psrpc__rconn {
    psrpc__rconn_config cfg;
    char *host;
    char *server_name;
    uv_loop_t *loop;
    int pending;
    bool closing, failed, connected, established;

    uv_getaddrinfo_t gai;
    bool resolving;
    struct addrinfo *ai_list, *ai_next;
    struct sockaddr_storage addr; /* numeric host */
    bool numeric;
    uv_tcp_t *tcp;
    uv_connect_t connect_req;
    char last_connect_error[96];

    SSL *ssl;
    BIO *rbio, *wbio; /* owned by ssl */
    bool tls_done;

    /* Output: `out` collects while `wbuf` is being written. */
    char *out;
    size_t out_len, out_cap;
    bool out_secret;
    size_t out_hint;  /* the last batch written (at most RCONN_KEEP_MAX) */
    int small_writes; /* writes in a row that used a quarter of a large buffer or less */
    char *wbuf;
    size_t wbuf_len, wbuf_cap;
    size_t wbuf_off; /* written so far */
    size_t wchunk;   /* the uv_write in flight: bytes from wbuf_off */
    bool wbuf_secret;
    bool writing;
    bool flush_posted; /* a flush task is queued on the loop */
    uv_write_t wreq;

    /* Input. */
    char rbuf[RCONN_READ_CHUNK];
    char plain[RCONN_READ_CHUNK];
    psrpc__rin *in;
};

static void rconn_fail(psrpc__rconn *c, const char *reason);
static void start_write(psrpc__rconn *c);

void *psrpc__rconn_owner(const psrpc__rconn *c) { return c->cfg.owner; }

size_t psrpc__rconn_queued(const psrpc__rconn *c) { return c->out_len; }

static void maybe_free(psrpc__rconn *c) {
    if (!c->closing || c->pending > 0)
        return;
    if (c->cfg.on_closed)
        c->cfg.on_closed(c);
    if (c->ai_list)
        uv_freeaddrinfo(c->ai_list);
    if (c->ssl)
        SSL_free(c->ssl);
    psrpc__rin_free(c->in);
    if (c->out) {
        if (c->out_secret)
            OPENSSL_cleanse(c->out, c->out_len);
        free(c->out);
    }
    if (c->wbuf) {
        if (c->wbuf_secret)
            OPENSSL_cleanse(c->wbuf, c->wbuf_len);
        free(c->wbuf);
    }
    free(c->host);
    free(c->server_name);
    free(c);
}

/* ---- output buffers -------------------------------------------------- */

/* Makes room for n more bytes in out. A buffer that holds a secret is never
 * realloc'd in place (the old block would keep the secret): copied and wiped. */
static int out_reserve(psrpc__rconn *c, size_t n) {
    if (c->out_cap - c->out_len >= n)
        return 0;
    /* A new buffer starts at twice the last batch written: under load it is
     * not grown (and copied) doubling by doubling from 4 KiB again. */
    size_t cap = c->out_cap ? c->out_cap : c->out_hint > 2048 ? 2 * c->out_hint : 4096;
    while (cap - c->out_len < n) {
        if (cap > SIZE_MAX / 2)
            return -1;
        cap *= 2;
    }
    char *p = malloc(cap);
    if (!p)
        return -1;
    if (c->out) {
        memcpy(p, c->out, c->out_len);
        if (c->out_secret)
            OPENSSL_cleanse(c->out, c->out_len);
        free(c->out);
    }
    c->out = p;
    c->out_cap = cap;
    return 0;
}

static int out_append(psrpc__rconn *c, const char *data, size_t len) {
    if (out_reserve(c, len) != 0)
        return -1;
    memcpy(c->out + c->out_len, data, len);
    c->out_len += len;
    return 0;
}

/* Moves what TLS produced into out. */
static int drain_wbio(psrpc__rconn *c) {
    if (!c->ssl)
        return 0;
    size_t n;
    while ((n = BIO_ctrl_pending(c->wbio)) > 0) {
        if (out_reserve(c, n) != 0)
            return -1;
        int got = BIO_read(c->wbio, c->out + c->out_len, (int)(n > INT32_MAX ? INT32_MAX : n));
        if (got <= 0)
            return -1;
        c->out_len += (size_t)got;
    }
    return 0;
}

/* Empties a written buffer: wipes it if it held a secret. A buffer that a
 * burst made large is not kept for the connection's lifetime: it is freed
 * once RCONN_KEEP_WRITES writes in a row used a quarter of it or less (or at
 * once above RCONN_KEEP_MAX). Under a steady load of large batches it is
 * kept, rather than grown again (and copied at each doubling) for every
 * batch. */
static void buf_written(psrpc__rconn *c, char **buf, size_t *len, size_t *cap, bool *secret) {
    if (*secret) {
        OPENSSL_cleanse(*buf, *len);
        *secret = false;
    }
    size_t written = *len;
    *len = 0;
    c->out_hint = written < RCONN_KEEP_MAX ? written : RCONN_KEEP_MAX;
    if (*cap <= (size_t)4 * RCONN_READ_CHUNK)
        return;
    if (written > *cap / 4 && *cap <= RCONN_KEEP_MAX) {
        c->small_writes = 0;
        return;
    }
    if (++c->small_writes >= RCONN_KEEP_WRITES || *cap > RCONN_KEEP_MAX) {
        c->small_writes = 0;
        free(*buf);
        *buf = NULL;
        *cap = 0;
    }
}

size_t psrpc__rconn_write_chunk(size_t n) {
    return n < PSRPC__RCONN_MAX_WRITE ? n : PSRPC__RCONN_MAX_WRITE;
}

/* Writes the next piece of wbuf (from wbuf_off) with uv_write. */
static int write_next(psrpc__rconn *c);

static void write_cb(uv_write_t *req, int status) {
    psrpc__rconn *c = req->data;
    c->pending--;
    c->writing = false;
    if (!c->closing && status >= 0) {
        c->wbuf_off += c->wchunk;
        if (c->wbuf_off < c->wbuf_len) {
            /* A buffer larger than one libuv write: the next piece. */
            int rc = write_next(c);
            if (rc < 0)
                rconn_fail(c, uv_strerror(rc));
            return;
        }
    }
    buf_written(c, &c->wbuf, &c->wbuf_len, &c->wbuf_cap, &c->wbuf_secret);
    c->wbuf_off = 0;
    if (c->closing) {
        maybe_free(c);
        return;
    }
    if (status < 0) {
        rconn_fail(c, uv_strerror(status));
        return;
    }
    start_write(c);
}

static int write_next(psrpc__rconn *c) {
    c->wchunk = psrpc__rconn_write_chunk(c->wbuf_len - c->wbuf_off);
    uv_buf_t buf = uv_buf_init(c->wbuf + c->wbuf_off, (unsigned int)c->wchunk);
    c->wreq.data = c;
    int rc = uv_write(&c->wreq, (uv_stream_t *)c->tcp, &buf, 1, write_cb);
    if (rc < 0)
        return rc;
    c->writing = true;
    c->pending++;
    return 0;
}

/* Writes what collected in out: at once with uv_try_write (no request, no
 * POLLOUT arming, no deferred callback: the common case costs one write(2)),
 * and whatever the socket did not take through uv_write. */
static void start_write(psrpc__rconn *c) {
    if (c->writing || c->out_len == 0 || c->closing || c->failed || !c->established)
        return;
    /* libuv buffer lengths are unsigned int: at most PSRPC__RCONN_MAX_WRITE
     * bytes per buffer; the rest goes through write_next. */
    uv_buf_t buf = uv_buf_init(c->out, (unsigned int)psrpc__rconn_write_chunk(c->out_len));
    int n = uv_try_write((uv_stream_t *)c->tcp, &buf, 1);
    if (n < 0 && n != UV_EAGAIN) {
        rconn_fail(c, uv_strerror(n));
        return;
    }
    size_t done = n > 0 ? (size_t)n : 0;
    if (done == c->out_len) {
        buf_written(c, &c->out, &c->out_len, &c->out_cap, &c->out_secret);
        return;
    }
    /* Swap: what collected becomes the write, the old write buffer collects. */
    char *b = c->wbuf;
    size_t cap = c->wbuf_cap;
    c->wbuf = c->out;
    c->wbuf_cap = c->out_cap;
    c->wbuf_len = c->out_len;
    c->wbuf_secret = c->out_secret;
    c->out = b;
    c->out_cap = cap;
    c->out_len = 0;
    c->out_secret = false;
    c->wbuf_off = done;
    int rc = write_next(c);
    if (rc < 0)
        rconn_fail(c, uv_strerror(rc));
}

static void flush_task(void *arg) {
    psrpc__rconn *c = arg;
    c->flush_posted = false;
    c->pending--;
    if (c->closing) {
        maybe_free(c);
        return;
    }
    start_write(c);
}

/* Everything sent during one turn of the loop goes out in one write, before
 * the loop next blocks: the flush is a task posted on the loop thread, which
 * runs after the callbacks and tasks of this turn (loop.c), not a turn later. */
static void schedule_write(psrpc__rconn *c) {
    if (c->flush_posted || c->writing)
        return; /* a flush is coming; or write_cb starts the next write */
    if (psrpc__loop_post(psrpc__loop_of(c->cfg.loop), flush_task, c) != PSRPC_OK) {
        start_write(c); /* the loop is stopping: write now */
        return;
    }
    c->flush_posted = true;
    c->pending++;
}

int psrpc__rconn_send(psrpc__rconn *c, const char *data, size_t len, bool secret) {
    if (c->closing || c->failed || !c->connected)
        return PSRPC_UNAVAILABLE;
    if (len == 0)
        return PSRPC_OK;
    if (c->ssl) {
        /* SSL_write takes an int length: in pieces. */
        for (size_t off = 0; off < len;) {
            size_t piece = psrpc__rconn_write_chunk(len - off);
            int n = SSL_write(c->ssl, data + off, (int)piece);
            if (n <= 0 || (size_t)n != piece) {
                /* A memory BIO never pushes back: this is out of memory or
                 * a broken TLS state. Either way the connection is unusable. */
                ERR_clear_error();
                rconn_fail(c, "TLS write failed");
                return PSRPC_UNAVAILABLE;
            }
            off += piece;
        }
        if (drain_wbio(c) != 0) {
            rconn_fail(c, "out of memory");
            return PSRPC_UNAVAILABLE;
        }
    } else {
        if (out_append(c, data, len) != 0)
            return PSRPC_RESOURCE_EXHAUSTED;
        if (secret)
            c->out_secret = true;
    }
    schedule_write(c);
    return PSRPC_OK;
}

/* ---- RESP commands ------------------------------------------------------ */

static size_t uint_digits(size_t v) {
    size_t d = 1;
    while (v >= 10) {
        v /= 10;
        d++;
    }
    return d;
}

static char *put_uint(char *p, size_t v) {
    size_t d = uint_digits(v);
    for (size_t i = d; i > 0; i--) {
        p[i - 1] = (char)('0' + v % 10);
        v /= 10;
    }
    return p + d;
}

size_t psrpc__resp_size(int argc, const char *const *argv, const size_t *lens) {
    (void)argv;
    size_t n = 1 + uint_digits((size_t)argc) + 2;
    for (int i = 0; i < argc; i++)
        n += 1 + uint_digits(lens[i]) + 2 + lens[i] + 2;
    return n;
}

size_t psrpc__resp_write(char *dst, int argc, const char *const *argv, const size_t *lens) {
    char *p = dst;
    *p++ = '*';
    p = put_uint(p, (size_t)argc);
    *p++ = '\r';
    *p++ = '\n';
    for (int i = 0; i < argc; i++) {
        *p++ = '$';
        p = put_uint(p, lens[i]);
        *p++ = '\r';
        *p++ = '\n';
        if (lens[i])
            memcpy(p, argv[i], lens[i]);
        p += lens[i];
        *p++ = '\r';
        *p++ = '\n';
    }
    return (size_t)(p - dst);
}

int psrpc__rconn_send_command(psrpc__rconn *c, int argc, const char *const *argv,
                              const size_t *lens, bool secret) {
    if (c->closing || c->failed || !c->connected)
        return PSRPC_UNAVAILABLE;
    size_t n = psrpc__resp_size(argc, argv, lens);
    if (c->ssl) {
        /* TLS encrypts from a plaintext buffer of its own. */
        char *tmp = malloc(n);
        if (!tmp)
            return PSRPC_RESOURCE_EXHAUSTED;
        psrpc__resp_write(tmp, argc, argv, lens);
        int rc = psrpc__rconn_send(c, tmp, n, secret);
        if (secret)
            OPENSSL_cleanse(tmp, n);
        free(tmp);
        return rc;
    }
    /* Plain TCP: formatted straight into the write buffer, no copy. */
    if (out_reserve(c, n) != 0)
        return PSRPC_RESOURCE_EXHAUSTED;
    psrpc__resp_write(c->out + c->out_len, argc, argv, lens);
    c->out_len += n;
    if (secret)
        c->out_secret = true;
    schedule_write(c);
    return PSRPC_OK;
}

/* ---- failure and close ------------------------------------------------ */

typedef struct fail_ev {
    uv_timer_t timer;
    psrpc__rconn *c;
    char reason[160];
} fail_ev;

static void fail_ev_closed(uv_handle_t *h) {
    fail_ev *ev = h->data;
    psrpc__rconn *c = ev->c;
    free(ev);
    c->pending--;
    maybe_free(c);
}

static void fail_ev_fire(uv_timer_t *t) {
    fail_ev *ev = t->data;
    psrpc__rconn *c = ev->c;
    if (!c->closing && c->cfg.on_error)
        c->cfg.on_error(c, ev->reason);
    uv_close((uv_handle_t *)&ev->timer, fail_ev_closed);
}

/* Marks the connection failed and tells the owner. The report goes through a
 * zero timer so that it never comes from inside a psrpc__rconn_* call or in
 * the middle of reply processing. */
static void rconn_fail(psrpc__rconn *c, const char *reason) {
    if (c->closing || c->failed)
        return;
    c->failed = true;
    if (c->tcp && c->established)
        uv_read_stop((uv_stream_t *)c->tcp);
    fail_ev *ev = calloc(1, sizeof *ev);
    if (ev && uv_timer_init(c->loop, &ev->timer) == 0) {
        ev->c = c;
        ev->timer.data = ev;
        snprintf(ev->reason, sizeof ev->reason, "%s", reason);
        c->pending++;
        if (uv_timer_start(&ev->timer, fail_ev_fire, 0, 0) == 0)
            return;
        uv_close((uv_handle_t *)&ev->timer, fail_ev_closed);
        return;
    }
    free(ev);
    /* Out of memory: nothing is reported, but the connection no longer reads,
     * so the owner's health check (PING) declares it dead. */
}

static void tcp_closed(uv_handle_t *h) {
    psrpc__rconn *c = h->data;
    free(h);
    c->pending--;
    maybe_free(c);
}

void psrpc__rconn_close(psrpc__rconn *c) {
    if (!c || c->closing)
        return;
    c->closing = true;
    if (c->resolving)
        uv_cancel((uv_req_t *)&c->gai); /* gai_cb still comes (UV_ECANCELED) */
    if (c->tcp) {
        uv_close((uv_handle_t *)c->tcp, tcp_closed);
        c->tcp = NULL;
    }
    maybe_free(c);
}

/* ---- TLS -------------------------------------------------------------- */

static void tls_reason(psrpc__rconn *c, char *buf, size_t n, const char *what) {
    long v = c->ssl ? SSL_get_verify_result(c->ssl) : X509_V_OK;
    unsigned long e = ERR_get_error();
    if (v != X509_V_OK) {
        snprintf(buf, n, "%s: certificate verify failed: %s", what,
                 X509_verify_cert_error_string(v));
    } else if (e) {
        char tmp[120];
        ERR_error_string_n(e, tmp, sizeof tmp);
        snprintf(buf, n, "%s: %s", what, tmp);
    } else {
        snprintf(buf, n, "%s", what);
    }
    ERR_clear_error();
}

static bool is_ip_literal(const char *s) {
    unsigned char b[16];
    return inet_pton(AF_INET, s, b) == 1 || inet_pton(AF_INET6, s, b) == 1;
}

static int tls_setup(psrpc__rconn *c) {
    c->ssl = SSL_new(c->cfg.ssl_ctx);
    if (!c->ssl)
        return -1;
    BIO *r = BIO_new(BIO_s_mem());
    BIO *w = BIO_new(BIO_s_mem());
    if (!r || !w) {
        BIO_free(r);
        BIO_free(w);
        return -1;
    }
    SSL_set_bio(c->ssl, r, w);
    c->rbio = r;
    c->wbio = w;
    SSL_set_connect_state(c->ssl);
    const char *name = c->server_name ? c->server_name : c->host;
    if (is_ip_literal(name)) {
        if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), name) != 1)
            return -1;
    } else {
        if (SSL_set_tlsext_host_name(c->ssl, name) != 1 || SSL_set1_host(c->ssl, name) != 1)
            return -1;
    }
    return 0;
}

/* ---- input ------------------------------------------------------------------
 * Two paths. The fast path takes a reply that lies whole in the bytes at hand
 * and is a scalar (status, error, integer, bulk, nil) or an array of at most
 * RCONN_MAX_ARRAY (and max_array) scalars: pub/sub messages, subscribe acknowledgements, the
 * PUBLISH and SET replies, nearly all the traffic. Its reply objects live on
 * the stack and point into the read buffer (each string's CR overwritten by
 * its terminating NUL): no allocation, no copy. Everything else (a reply cut
 * by the end of a read, nested arrays, anything unusual or malformed) goes
 * through the framing filter and the hiredis redisReader, one whole reply at a
 * time, and gets the replies and the errors it always got; then the fast path
 * resumes. The fast path accepts only what the slow one reads the same way. */

psrpc__rin *psrpc__rin_new(size_t max_bulk, size_t max_array) {
    psrpc__rin *in = calloc(1, sizeof *in);
    if (!in)
        return NULL;
    in->filter.line = malloc(RCONN_MAX_LINE);
    in->filter.max_bulk = max_bulk;
    in->filter.max_array = max_array ? max_array : RCONN_MAX_ARRAY;
    in->reader = redisReaderCreate();
    if (!in->filter.line || !in->reader) {
        psrpc__rin_free(in);
        return NULL;
    }
    return in;
}

void psrpc__rin_free(psrpc__rin *in) {
    if (!in)
        return;
    if (in->reader)
        redisReaderFree(in->reader);
    free(in->filter.line);
    free(in);
}

static int feed(psrpc__rin *in, const char *p, size_t n) {
    return redisReaderFeed(in->reader, p, n) == REDIS_OK ? 0 : -1;
}

/* Parses the length of a "$N" / "*N" line (without type byte and CRLF). */
static bool parse_len(const char *s, size_t n, int64_t *out) {
    if (n == 0 || n > 20)
        return false;
    bool neg = s[0] == '-';
    size_t i = neg ? 1 : 0;
    if (i == n)
        return false;
    int64_t v = 0;
    for (; i < n; i++) {
        if (s[i] < '0' || s[i] > '9' || v > (INT64_MAX - 9) / 10)
            return false;
        v = v * 10 + (s[i] - '0');
    }
    *out = neg ? -v : v;
    return true;
}

/* One item of the current reply is complete. */
static void item_done(rfilter *f) {
    if (f->need > 0)
        f->need--;
}

/* A complete line in f->line (CRLF included). Returns 0 or -1 (protocol). */
static int filter_line(psrpc__rin *in, const char **err) {
    rfilter *f = &in->filter;
    if (f->line_len < 3 || f->line[f->line_len - 2] != '\r') {
        *err = "protocol error: bad line ending";
        return -1;
    }
    char type = f->line[0];
    int64_t n = 0;
    if (type == '$' || type == '*') {
        if (!parse_len(f->line + 1, f->line_len - 3, &n) || n < -1) {
            *err = "protocol error: bad length";
            return -1;
        }
    }
    f->state = F_TYPE;
    if (type == '$' && n > (int64_t)f->max_bulk) {
        f->remain = n + 2;
        f->state = F_SKIP;
        f->line_len = 0;
        return feed(in, "$-1\r\n", 5);
    }
    if (type == '*' && n > (int64_t)f->max_array) {
        *err = "protocol error: array too long";
        return -1;
    }
    if (type == '$' && n >= 0) {
        f->remain = n + 2;
        f->state = F_BULK;
    } else if (type == '*' && n > 0) {
        f->need += n - 1; /* the array is this item; its elements follow */
    } else {
        item_done(f);
    }
    int rc = feed(in, f->line, f->line_len);
    f->line_len = 0;
    return rc;
}

/* Feeds the reader from p until n bytes are used or a whole reply has been
 * fed (*whole set); *used: the bytes taken. Returns 0 or -1 (*err). */
static int filter_feed(psrpc__rin *in, const char *p, size_t n, size_t *used, bool *whole,
                       const char **err) {
    rfilter *f = &in->filter;
    const char *start = p;
    *err = "out of memory";
    *whole = false;
    while (n > 0 && !*whole) {
        switch (f->state) {
        case F_TYPE:
            if (!strchr("+-:$*", *p) || *p == 0) {
                *err = "protocol error: unexpected byte";
                return -1;
            }
            if (f->need == 0)
                f->need = 1;
            f->line[0] = *p;
            f->line_len = 1;
            f->state = F_LINE;
            p++;
            n--;
            break;
        case F_LINE: {
            const char *nl = memchr(p, '\n', n);
            size_t take = nl ? (size_t)(nl - p) + 1 : n;
            if (f->line_len + take > RCONN_MAX_LINE) {
                *err = "protocol error: line too long";
                return -1;
            }
            memcpy(f->line + f->line_len, p, take);
            f->line_len += take;
            p += take;
            n -= take;
            if (nl) {
                if (filter_line(in, err) != 0)
                    return -1;
                *whole = f->state == F_TYPE && f->need == 0;
            }
            break;
        }
        case F_BULK:
        case F_SKIP: {
            size_t take = (int64_t)n < f->remain ? n : (size_t)f->remain;
            if (f->state == F_BULK && feed(in, p, take) != 0)
                return -1;
            f->remain -= (int64_t)take;
            p += take;
            n -= take;
            if (f->remain == 0) {
                f->state = F_TYPE;
                item_done(f);
                *whole = f->need == 0;
            }
            break;
        }
        }
    }
    *used = (size_t)(p - start);
    return 0;
}

/* A length or integer as the slow path surely reads it too: "-1", "0" or
 * up to 18 digits without a leading zero. */
static bool fast_num(const char *s, size_t n, int64_t *out) {
    if (n == 2 && s[0] == '-' && s[1] == '1') {
        *out = -1;
        return true;
    }
    if (n == 0 || n > 18 || (s[0] == '0' && n > 1))
        return false;
    int64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return true;
}

/* The line after a type byte at p: its content [p + 1, *eol) where *eol is
 * the CR of the first LF at or after p + 1 (the filter's rule). Returns the
 * bytes of type + line + CRLF, or 0 (incomplete, too long, no CR). */
static size_t fast_line(const char *p, const char *end, const char **eol) {
    size_t avail = (size_t)(end - p);
    if (avail > RCONN_MAX_LINE)
        avail = RCONN_MAX_LINE;
    const char *nl = memchr(p, '\n', avail);
    if (!nl || nl - p < 2 || nl[-1] != '\r')
        return 0;
    *eol = nl - 1;
    return (size_t)(nl - p) + 1;
}

/* One scalar at p: fills *r (*nul: where its string's NUL goes, or NULL).
 * Returns the bytes it takes, or 0 (for the slow path). */
static size_t fast_scalar(const psrpc__rin *in, char *p, const char *end, redisReply *r,
                          char **nul) {
    const char *eol;
    size_t hdr = fast_line(p, end, &eol);
    if (!hdr)
        return 0;
    memset(r, 0, sizeof *r);
    *nul = NULL;
    int64_t v;
    switch (*p) {
    case '+':
    case '-':
        r->type = *p == '+' ? REDIS_REPLY_STATUS : REDIS_REPLY_ERROR;
        r->str = p + 1;
        r->len = (size_t)(eol - (p + 1));
        *nul = p + (eol - p);
        return hdr;
    case ':':
        if (!fast_num(p + 1, (size_t)(eol - (p + 1)), &v))
            return 0;
        r->type = REDIS_REPLY_INTEGER;
        r->integer = v;
        return hdr;
    case '$':
        if (!fast_num(p + 1, (size_t)(eol - (p + 1)), &v))
            return 0;
        if (v < 0) {
            r->type = REDIS_REPLY_NIL;
            return hdr;
        }
        if ((uint64_t)v > (uint64_t)(end - p) || (size_t)(end - p) - hdr < (size_t)v + 2)
            return 0;
        if ((uint64_t)v > in->filter.max_bulk) {
            r->type = REDIS_REPLY_NIL; /* as the filter does */
            return hdr + (size_t)v + 2;
        }
        r->type = REDIS_REPLY_STRING;
        r->str = p + hdr;
        r->len = (size_t)v;
        *nul = p + hdr + v;
        return hdr + (size_t)v + 2;
    default:
        return 0;
    }
}

/* A whole reply at p handed to on_reply (*go: what it returned). Returns the
 * bytes it took, or 0: nothing was done, the slow path takes it. */
static size_t fast_reply(psrpc__rin *in, char *p, size_t n, psrpc__rin_reply_fn on_reply, void *ctx,
                         bool *go) {
    const char *end = p + n;
    redisReply top;
    char *nul;
    if (*p != '*') {
        size_t used = fast_scalar(in, p, end, &top, &nul);
        if (used) {
            if (nul)
                *nul = 0;
            *go = on_reply(ctx, &top);
        }
        return used;
    }
    const char *eol;
    size_t used = fast_line(p, end, &eol);
    int64_t count;
    if (!used || !fast_num(p + 1, (size_t)(eol - (p + 1)), &count) || count > RCONN_MAX_ARRAY ||
        count > (int64_t)in->filter.max_array)
        return 0;
    redisReply el[RCONN_MAX_ARRAY];
    redisReply *elp[RCONN_MAX_ARRAY];
    char *nuls[RCONN_MAX_ARRAY];
    for (int64_t i = 0; i < count; i++) {
        size_t u = fast_scalar(in, p + used, end, &el[i], &nuls[i]);
        if (!u)
            return 0;
        elp[i] = &el[i];
        used += u;
    }
    for (int64_t i = 0; i < count; i++)
        if (nuls[i])
            *nuls[i] = 0;
    memset(&top, 0, sizeof top);
    if (count < 0) {
        top.type = REDIS_REPLY_NIL;
    } else {
        top.type = REDIS_REPLY_ARRAY;
        top.elements = (size_t)count;
        top.element = count ? elp : NULL;
    }
    *go = on_reply(ctx, &top);
    return used;
}

int psrpc__rin_feed(psrpc__rin *in, char *p, size_t n, psrpc__rin_reply_fn on_reply, void *ctx,
                    const char **err) {
    bool go = true;
    while (n > 0) {
        if (in->filter.state == F_TYPE && in->filter.need == 0) {
            size_t used = fast_reply(in, p, n, on_reply, ctx, &go);
            if (used) {
                if (!go)
                    return 0;
                p += used;
                n -= used;
                continue;
            }
        }
        size_t used = 0;
        bool whole = false;
        if (filter_feed(in, p, n, &used, &whole, err) != 0)
            return -1;
        p += used;
        n -= used;
        while (whole) {
            void *reply = NULL;
            if (redisReaderGetReply(in->reader, &reply) != REDIS_OK) {
                *err =
                    in->reader->err == REDIS_ERR_OOM ? "out of memory" : "protocol error in reply";
                return -1;
            }
            if (!reply)
                break;
            go = on_reply(ctx, reply);
            freeReplyObject(reply);
            if (!go)
                return 0;
        }
    }
    return 0;
}

static bool conn_reply(void *ctx, redisReply *reply) {
    psrpc__rconn *c = ctx;
    c->cfg.on_reply(c, reply);
    return !c->closing && !c->failed;
}

/* Plaintext from the server: parse, hand every complete reply over. */
static void process_plain(psrpc__rconn *c, char *p, size_t n) {
    const char *err = NULL;
    if (c->closing || c->failed)
        return;
    if (psrpc__rin_feed(c->in, p, n, conn_reply, c, &err) != 0)
        rconn_fail(c, err);
}

static void tls_input(psrpc__rconn *c, const char *p, size_t n) {
    char reason[200];
    if (BIO_write(c->rbio, p, (int)n) != (int)n) {
        rconn_fail(c, "out of memory");
        return;
    }
    if (!c->tls_done) {
        int r = SSL_do_handshake(c->ssl);
        if (drain_wbio(c) != 0) {
            rconn_fail(c, "out of memory");
            return;
        }
        start_write(c);
        if (r != 1) {
            int e = SSL_get_error(c->ssl, r);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
                return;
            tls_reason(c, reason, sizeof reason, "TLS handshake failed");
            rconn_fail(c, reason);
            return;
        }
        c->tls_done = true;
        c->connected = true;
        c->cfg.on_connected(c);
    }
    while (!c->closing && !c->failed) {
        int got = SSL_read(c->ssl, c->plain, (int)sizeof c->plain);
        if (got > 0) {
            process_plain(c, c->plain, (size_t)got);
            continue;
        }
        int e = SSL_get_error(c->ssl, got);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
            break;
        if (e == SSL_ERROR_ZERO_RETURN) {
            rconn_fail(c, "TLS connection closed by server");
        } else {
            tls_reason(c, reason, sizeof reason, "TLS error");
            rconn_fail(c, reason);
        }
        return;
    }
    if (c->closing || c->failed)
        return;
    if (drain_wbio(c) != 0) {
        rconn_fail(c, "out of memory");
        return;
    }
    start_write(c);
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    (void)suggested;
    psrpc__rconn *c = h->data;
    *buf = uv_buf_init(c->rbuf, sizeof c->rbuf);
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
    (void)buf;
    psrpc__rconn *c = s->data;
    if (c->closing || c->failed)
        return;
    if (nread < 0) {
        rconn_fail(c, nread == UV_EOF ? "connection closed by server" : uv_strerror((int)nread));
        return;
    }
    if (nread == 0)
        return;
    if (c->ssl)
        tls_input(c, c->rbuf, (size_t)nread);
    else
        process_plain(c, c->rbuf, (size_t)nread);
}

/* ---- connecting --------------------------------------------------------- */

static void try_next(psrpc__rconn *c);

static void connect_cb(uv_connect_t *req, int status) {
    psrpc__rconn *c = req->data;
    c->pending--;
    if (c->closing) {
        maybe_free(c);
        return;
    }
    if (status < 0) {
        snprintf(c->last_connect_error, sizeof c->last_connect_error, "%s", uv_strerror(status));
        try_next(c);
        return;
    }
    c->established = true;
    uv_tcp_nodelay(c->tcp, 1);
    int rc = uv_read_start((uv_stream_t *)c->tcp, alloc_cb, read_cb);
    if (rc < 0) {
        rconn_fail(c, uv_strerror(rc));
        return;
    }
    if (c->ssl) {
        int r = SSL_do_handshake(c->ssl);
        int e = SSL_get_error(c->ssl, r);
        if (r == 1 || (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)) {
            char reason[200];
            tls_reason(c, reason, sizeof reason, "TLS handshake failed");
            rconn_fail(c, reason);
            return;
        }
        if (drain_wbio(c) != 0) {
            rconn_fail(c, "out of memory");
            return;
        }
        start_write(c);
        return;
    }
    c->connected = true;
    c->cfg.on_connected(c);
}

/* A fresh handle for the next address (the failed one is closed). */
static int new_tcp(psrpc__rconn *c) {
    uv_tcp_t *t = malloc(sizeof *t);
    if (!t)
        return UV_ENOMEM;
    int rc = uv_tcp_init(c->loop, t);
    if (rc < 0) {
        free(t);
        return rc;
    }
    t->data = c;
    c->pending++;
    if (c->tcp)
        uv_close((uv_handle_t *)c->tcp, tcp_closed);
    c->tcp = t;
    return 0;
}

static int start_connect(psrpc__rconn *c, const struct sockaddr *sa) {
    c->connect_req.data = c;
    int rc = uv_tcp_connect(&c->connect_req, c->tcp, sa, connect_cb);
    if (rc == 0)
        c->pending++;
    return rc;
}

static void try_next(psrpc__rconn *c) {
    while (c->ai_next) {
        struct addrinfo *ai = c->ai_next;
        c->ai_next = ai->ai_next;
        if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
            continue;
        int rc = new_tcp(c);
        if (rc == 0)
            rc = start_connect(c, ai->ai_addr);
        if (rc == 0)
            return;
        snprintf(c->last_connect_error, sizeof c->last_connect_error, "%s", uv_strerror(rc));
    }
    rconn_fail(c, c->last_connect_error[0] ? c->last_connect_error : "no usable address");
}

static void gai_cb(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
    psrpc__rconn *c = req->data;
    c->pending--;
    c->resolving = false;
    if (c->closing) {
        if (res)
            uv_freeaddrinfo(res);
        maybe_free(c);
        return;
    }
    if (status < 0) {
        char reason[120];
        snprintf(reason, sizeof reason, "cannot resolve host: %s", uv_strerror(status));
        rconn_fail(c, reason);
        return;
    }
    c->ai_list = c->ai_next = res;
    /* The handle made at open has not been used: connect it directly. */
    while (c->ai_next) {
        struct addrinfo *ai = c->ai_next;
        c->ai_next = ai->ai_next;
        if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
            continue;
        int rc = start_connect(c, ai->ai_addr);
        if (rc == 0)
            return;
        snprintf(c->last_connect_error, sizeof c->last_connect_error, "%s", uv_strerror(rc));
        try_next(c);
        return;
    }
    rconn_fail(c, "host has no IPv4 or IPv6 address");
}

int psrpc__rconn_open(psrpc__rconn **out, const psrpc__rconn_config *cfg, const char **reason) {
    *out = NULL;
    *reason = "out of memory";
    psrpc__rconn *c = calloc(1, sizeof *c);
    if (!c)
        return PSRPC_RESOURCE_EXHAUSTED;
    c->cfg = *cfg;
    c->loop = cfg->loop;
    c->host = psrpc__strdup(cfg->host);
    c->server_name = cfg->server_name ? psrpc__strdup(cfg->server_name) : NULL;
    c->in = psrpc__rin_new(cfg->max_bulk, cfg->max_array);
    int rc = PSRPC_RESOURCE_EXHAUSTED;
    if (!c->host || (cfg->server_name && !c->server_name) || !c->in)
        goto fail;
    c->cfg.host = c->host;
    c->cfg.server_name = c->server_name;
    if (cfg->ssl_ctx && tls_setup(c) != 0) {
        *reason = "cannot set up TLS";
        ERR_clear_error();
        goto fail;
    }
    struct sockaddr_in *v4 = (struct sockaddr_in *)&c->addr;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&c->addr;
    if (uv_ip4_addr(c->host, cfg->port, v4) == 0 || uv_ip6_addr(c->host, cfg->port, v6) == 0)
        c->numeric = true;
    int uvrc = new_tcp(c);
    if (uvrc < 0) {
        *reason = uv_strerror(uvrc);
        rc = PSRPC_UNAVAILABLE;
        goto fail;
    }
    if (c->numeric) {
        uvrc = start_connect(c, (const struct sockaddr *)&c->addr);
    } else {
        char port[16];
        snprintf(port, sizeof port, "%d", cfg->port);
        struct addrinfo hints;
        memset(&hints, 0, sizeof hints);
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        c->gai.data = c;
        uvrc = uv_getaddrinfo(c->loop, &c->gai, gai_cb, c->host, port, &hints);
        if (uvrc == 0) {
            c->pending++;
            c->resolving = true;
        }
    }
    if (uvrc < 0) {
        /* The handle is open: close it the libuv way; the struct goes in
         * tcp_closed. Nothing reaches the owner (on_closed is cleared). */
        *reason = uv_strerror(uvrc);
        c->cfg.on_closed = NULL;
        psrpc__rconn_close(c);
        return PSRPC_UNAVAILABLE;
    }
    *out = c;
    return PSRPC_OK;
fail:
    c->cfg.on_closed = NULL;
    c->closing = true;
    maybe_free(c);
    return rc;
}
