/* Helpers for the network transports' URLs. */
#include <openssl/crypto.h>

#include "bus.h"

static int hexval(char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

char *psrpc__url_unescape(const char *s, size_t n, bool *oom) {
    char *out = malloc(n + 1);
    *oom = !out;
    if (!out)
        return NULL;
    size_t j = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '%') {
            out[j++] = s[i];
            continue;
        }
        int a = i + 2 < n ? hexval(s[i + 1]) : -1;
        int b = i + 2 < n ? hexval(s[i + 2]) : -1;
        if (a < 0 || b < 0 || (a == 0 && b == 0)) {
            OPENSSL_cleanse(out, j); /* it may hold part of a secret */
            free(out);
            return NULL;
        }
        out[j++] = (char)(a * 16 + b);
        i += 2;
    }
    out[j] = 0;
    return out;
}

/* Masks the user information of one segment [s, e) of a URL: the part from
 * the segment's start (after its "://" if it has one) to its LAST '@' is
 * user information, as the transports' parsers read it (Redis: the last '@'
 * of the authority; NATS: the last '@' of each comma-separated server).
 * "user:secret@" keeps the user ("user:***@"); "secret@" (a token, or a
 * Redis password alone) becomes "***@". Appends to out, returns its end. */
static char *mask_segment(char *out, const char *s, const char *e) {
    const char *at = NULL;
    for (const char *q = s; q < e; q++)
        if (*q == '@')
            at = q;
    if (!at) {
        memcpy(out, s, (size_t)(e - s));
        return out + (e - s);
    }
    const char *ui = s;
    for (const char *q = s; q + 3 <= at; q++) {
        if (q[0] == ':' && q[1] == '/' && q[2] == '/') {
            ui = q + 3;
            break;
        }
    }
    const char *colon = memchr(ui, ':', (size_t)(at - ui));
    const char *keep_end = colon ? colon + 1 : ui;
    memcpy(out, s, (size_t)(keep_end - s));
    out += keep_end - s;
    memcpy(out, "***", 3);
    out += 3;
    memcpy(out, at, (size_t)(e - at));
    return out + (e - at);
}

/* A NATS server item without '@' is "[scheme://]host[:port][/]". One that
 * is not (a ',' inside a password splits "u:pa,ss@h" into "u:pa" and
 * "ss@h") is refused by the parser; mask all of it after the scheme anyway. */
static bool plain_server(const char *s, const char *e) {
    const char *sep = NULL;
    for (const char *q = s; q + 3 <= e; q++) {
        if (q[0] == ':' && q[1] == '/' && q[2] == '/') {
            sep = q + 3;
            break;
        }
    }
    const char *h = sep ? sep : s;
    if (e > h && e[-1] == '/')
        e--;
    if (h < e && *h == '[') {
        const char *rb = memchr(h, ']', (size_t)(e - h));
        if (!rb)
            return false;
        h = rb + 1;
        if (h == e)
            return true;
        if (*h != ':')
            return false;
    }
    const char *colon = NULL;
    for (const char *q = h; q < e; q++)
        if (*q == ':')
            colon = q;
    if (!colon)
        return true;
    if (colon + 1 == e)
        return false;
    for (const char *q = colon + 1; q < e; q++)
        if (*q < '0' || *q > '9')
            return false;
    return memchr(h, ':', (size_t)(colon - h)) == NULL;
}

char *psrpc__url_mask(const char *url) {
    size_t n = strlen(url);
    /* Each segment grows by at most 3 bytes ("@" -> "***@"); a segment is at
     * least one byte, or empty between two commas. */
    size_t cap = n * 4 + 4;
    char *out = malloc(cap);
    if (!out)
        return NULL;
    const char *end = url + n;
    char *o = out;
    bool nats = strncmp(url, "nats://", 7) == 0 || strncmp(url, "tls://", 6) == 0;
    if (nats) {
        /* nats.c style server lists: every server has its own user information. */
        const char *p = url;
        for (;;) {
            const char *comma = memchr(p, ',', (size_t)(end - p));
            const char *e = comma ? comma : end;
            if (!memchr(p, '@', (size_t)(e - p)) && !plain_server(p, e)) {
                const char *sep = NULL;
                for (const char *q = p; q + 3 <= e && !sep; q++)
                    if (q[0] == ':' && q[1] == '/' && q[2] == '/')
                        sep = q + 3;
                size_t keep = sep ? (size_t)(sep - p) : 0;
                memcpy(o, p, keep);
                o += keep;
                memcpy(o, "***", 3);
                o += 3;
            } else {
                o = mask_segment(o, p, e);
            }
            if (!comma)
                break;
            *o++ = ',';
            p = comma + 1;
        }
    } else {
        /* Redis (and anything else): one authority, user information up to
         * its last '@'. Anything after that '@' up to the end is kept, so a
         * malformed URL (an '@' after a '/', '?' or '#' in the password) is
         * masked too: the search runs to the end of the string. */
        o = mask_segment(o, url, end);
    }
    *o = 0;
    return out;
}
