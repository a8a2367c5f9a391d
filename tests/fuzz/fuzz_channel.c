/* fuzz_channel (test plan J2): bytes -> the channel-name builders every
 * channel kind uses (RPC, queue RPC, claim response, stream server, client
 * response/claim/stream), the section 5.3 sanitizer, the UTF-8 check, the
 * CamelCase of proto names and the Redis queue-lock key.
 *
 * Input: NUL-separated parts: service, method, then up to 8 topics.
 * Properties (abort = finding):
 *   - psrpc__sanitize equals a slow, independently written reference of Go's
 *     rule (decode rune by rune; keep [A-Za-z0-9_], else u+XXXX / U+XXXXXXXX)
 *     and only ever writes [A-Za-z0-9_+];
 *   - psrpc__utf8_valid equals the reference UTF-8 validator;
 *   - the Redis/local name is the '|' join of sanitized parts (only
 *     [A-Za-z0-9_+|]), the NATS subject "SRV." service ("." topic)* [".Q"],
 *     the router key method "." suffix; every builder is deterministic. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "channel.h"
#include "common.h"
#include "fuzz_assert.h"

#define MAX_TOPICS 8

/* ---- reference: RFC 3629 table, one sequence at a time ---- */

/* Length of the valid UTF-8 sequence at s, or 0 if none starts there. */
static size_t ref_seq(const unsigned char *s, size_t n, unsigned long *cp) {
    static const struct {
        unsigned char b0lo, b0hi, b1lo, b1hi;
        size_t len;
    } rows[] = {
        {0x00, 0x7F, 0, 0, 1},       {0xC2, 0xDF, 0x80, 0xBF, 2}, {0xE0, 0xE0, 0xA0, 0xBF, 3},
        {0xE1, 0xEC, 0x80, 0xBF, 3}, {0xED, 0xED, 0x80, 0x9F, 3}, {0xEE, 0xEF, 0x80, 0xBF, 3},
        {0xF0, 0xF0, 0x90, 0xBF, 4}, {0xF1, 0xF3, 0x80, 0xBF, 4}, {0xF4, 0xF4, 0x80, 0x8F, 4},
    };
    for (size_t r = 0; r < sizeof rows / sizeof rows[0]; r++) {
        if (s[0] < rows[r].b0lo || s[0] > rows[r].b0hi)
            continue;
        size_t len = rows[r].len;
        if (len > n)
            return 0;
        if (len == 1) {
            *cp = s[0];
            return 1;
        }
        if (s[1] < rows[r].b1lo || s[1] > rows[r].b1hi)
            return 0;
        for (size_t k = 2; k < len; k++)
            if (s[k] < 0x80 || s[k] > 0xBF)
                return 0;
        unsigned long v = s[0] & (len == 2 ? 0x1F : len == 3 ? 0x0F : 0x07);
        for (size_t k = 1; k < len; k++)
            v = v << 6 | (s[k] & 0x3F);
        *cp = v;
        return len;
    }
    return 0;
}

static bool ref_valid(const char *s, size_t n) {
    size_t i = 0;
    unsigned long cp;
    while (i < n) {
        size_t l = ref_seq((const unsigned char *)s + i, n - i, &cp);
        if (!l)
            return false;
        i += l;
    }
    return true;
}

static char *ref_sanitize(const char *s, size_t n) {
    char *out = malloc(n * 10 + 1), *o = out;
    FUZZ_ASSERT(out);
    size_t i = 0;
    while (i < n) {
        unsigned long cp;
        size_t l = ref_seq((const unsigned char *)s + i, n - i, &cp);
        if (!l) {
            cp = 0xFFFD;
            l = 1;
        }
        i += l;
        if ((cp >= '0' && cp <= '9') || (cp >= 'A' && cp <= 'Z') || (cp >= 'a' && cp <= 'z') ||
            cp == '_')
            *o++ = (char)cp;
        else if (cp < 0x10000)
            o += sprintf(o, "u+%04lx", cp);
        else
            o += sprintf(o, "U+%08lx", cp);
    }
    *o = 0;
    return out;
}

static bool only(const char *s, const char *extra) {
    for (; *s; s++) {
        char c = *s;
        if (!((c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
              c == '_' || c == '+' || (extra && strchr(extra, c))))
            return false;
    }
    return true;
}

/* Reference legacy join (Go's appendChannelParts with the topics nested). */
static void ref_part(char *buf, bool *need, const char *s) {
    char *z = ref_sanitize(s, strlen(s));
    if (*need)
        strcat(buf, "|");
    strcat(buf, z);
    *need = z[0] != 0;
    free(z);
}

static char *ref_legacy(const char *service, const char *method, char **topics, size_t nt,
                        const char *suffix, size_t cap) {
    char *b = calloc(1, cap);
    FUZZ_ASSERT(b);
    bool need = false;
    ref_part(b, &need, service);
    if (method)
        ref_part(b, &need, method);
    if (topics) {
        if (need)
            strcat(b, "|");
        size_t mark = strlen(b);
        bool inner = false;
        for (size_t i = 0; i < nt; i++)
            ref_part(b, &inner, topics[i]);
        need = strlen(b) > mark;
    }
    ref_part(b, &need, suffix);
    return b;
}

static void check_method_channel(const psrpc__channel *ch, const char *service, const char *method,
                                 char **topics, size_t nt, bool queue, const char *suffix,
                                 size_t cap) {
    FUZZ_ASSERT(ch->legacy && ch->server && ch->local);
    FUZZ_ASSERT(only(ch->legacy, "|"));
    char *ref = ref_legacy(service, method, topics, nt, suffix, cap);
    FUZZ_ASSERT(strcmp(ch->legacy, ref) == 0);
    free(ref);
    /* SRV.<service>(.<sanitized topic>)*[.Q] */
    char *subj = calloc(1, cap);
    FUZZ_ASSERT(subj);
    strcat(subj, "SRV.");
    strcat(subj, service);
    for (size_t i = 0; i < nt; i++) {
        if (!topics[i][0])
            continue;
        char *z = ref_sanitize(topics[i], strlen(topics[i]));
        strcat(subj, ".");
        strcat(subj, z);
        free(z);
    }
    if (queue)
        strcat(subj, ".Q");
    FUZZ_ASSERT(strcmp(ch->server, subj) == 0);
    free(subj);
    FUZZ_ASSERT(strlen(ch->local) == strlen(method) + 1 + strlen(suffix));
    FUZZ_ASSERT(strncmp(ch->local, method, strlen(method)) == 0);
    FUZZ_ASSERT(ch->local[strlen(method)] == '.');
    FUZZ_ASSERT(strcmp(ch->local + strlen(method) + 1, suffix) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > 4096)
        return 0;
    /* Whole input: sanitizer and validator against the references. */
    char *s = psrpc__sanitize((const char *)data, size);
    char *r = ref_sanitize((const char *)data, size);
    FUZZ_ASSERT(s && strcmp(s, r) == 0);
    FUZZ_ASSERT(only(s, NULL));
    free(s);
    free(r);
    FUZZ_ASSERT(psrpc__utf8_valid((const char *)data, size) == ref_valid((const char *)data, size));

    /* Parts. */
    char *copy = malloc(size + 1);
    FUZZ_ASSERT(copy);
    memcpy(copy, data, size);
    copy[size] = 0;
    char *parts[2 + MAX_TOPICS];
    size_t np = 0;
    char *p = copy, *end = copy + size;
    while (np < 2 + MAX_TOPICS) {
        parts[np++] = p;
        char *z = memchr(p, 0, (size_t)(end - p));
        if (!z || z == end)
            break;
        p = z + 1;
    }
    while (np < 2)
        parts[np++] = "";
    const char *service = parts[0], *method = parts[1];
    char **topics = parts + 2;
    size_t nt = np - 2;
    size_t cap = size * 12 + 64;

    psrpc__channel a, b;
    static const char *const sfx[] = {"REQ", "REQ", "RCLAIM", "STR"};
    for (int kind = 0; kind < 4; kind++) {
        int rc;
        if (kind == 0 || kind == 1)
            rc = psrpc__channel_rpc(&a, service, method, (const char *const *)topics, nt, kind);
        else if (kind == 2)
            rc =
                psrpc__channel_claim_response(&a, service, method, (const char *const *)topics, nt);
        else
            rc = psrpc__channel_stream_server(&a, service, method, (const char *const *)topics, nt);
        FUZZ_ASSERT(rc == 0);
        check_method_channel(&a, service, method, topics, nt, kind == 1, sfx[kind], cap);
        FUZZ_ASSERT(psrpc__channel_copy(&b, &a) == 0);
        FUZZ_ASSERT(strcmp(a.legacy, b.legacy) == 0 && strcmp(a.server, b.server) == 0);
        psrpc__channel_clear(&a);
        psrpc__channel_clear(&b);
    }
    static const char *const csfx[] = {"RES", "CLAIM", "STR"};
    for (int kind = 0; kind < 3; kind++) {
        int rc = kind == 0   ? psrpc__channel_client_response(&a, service, method)
                 : kind == 1 ? psrpc__channel_client_claim(&a, service, method)
                             : psrpc__channel_client_stream(&a, service, method);
        FUZZ_ASSERT(rc == 0 && a.local == NULL);
        FUZZ_ASSERT(only(a.legacy, "|"));
        char *ref = ref_legacy(service, method, NULL, 0, csfx[kind], cap);
        FUZZ_ASSERT(strcmp(a.legacy, ref) == 0);
        free(ref);
        char *subj = calloc(1, cap);
        FUZZ_ASSERT(subj);
        sprintf(subj, "CLI.%s.%s.%s", service, method, csfx[kind]);
        FUZZ_ASSERT(strcmp(a.server, subj) == 0);
        free(subj);
        psrpc__channel_clear(&a);
    }

    char *cc = psrpc__camel_case(service);
    char *cc2 = psrpc__camel_case(service);
    FUZZ_ASSERT(cc && cc2 && strcmp(cc, cc2) == 0);
    free(cc);
    free(cc2);

    char k1[PSRPC__LOCK_KEY_LEN + 1], k2[PSRPC__LOCK_KEY_LEN + 1];
    psrpc__redis_lock_key(k1, data, size);
    psrpc__redis_lock_key(k2, data, size);
    FUZZ_ASSERT(strlen(k1) == PSRPC__LOCK_KEY_LEN && strcmp(k1, k2) == 0);
    free(copy);
    return 0;
}
