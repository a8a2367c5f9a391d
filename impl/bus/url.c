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
