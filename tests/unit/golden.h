/* Helpers shared by the wire unit tests: hex decoding and the golden vector
 * file printed by tests/interop/golden (the real livekit/psrpc module). */
#ifndef PSRPC_TEST_GOLDEN_H
#define PSRPC_TEST_GOLDEN_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Decodes hex (whitespace ignored; "-" = empty) into a malloc'd buffer,
 * NUL-terminated for convenience. Returns NULL on bad input. */
static inline uint8_t *unhex(const char *hex, size_t *len) {
    size_t n = strlen(hex);
    uint8_t *out = malloc(n / 2 + 1);
    size_t o = 0;
    int hi = -1;
    if (len)
        *len = 0;
    if (!out)
        return NULL;
    if (strcmp(hex, "-") == 0)
        n = 0;
    for (size_t i = 0; i < n; i++) {
        char c = hex[i];
        int v;
        if (c == ' ' || c == '\n' || c == '\t')
            continue;
        if (c >= '0' && c <= '9')
            v = c - '0';
        else if (c >= 'a' && c <= 'f')
            v = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            v = c - 'A' + 10;
        else {
            free(out);
            return NULL;
        }
        if (hi < 0) {
            hi = v;
        } else {
            out[o++] = (uint8_t)(hi << 4 | v);
            hi = -1;
        }
    }
    if (hi >= 0) {
        free(out);
        return NULL;
    }
    out[o] = 0;
    if (len)
        *len = o;
    return out;
}

/* Hex of a string as a malloc'd C string (for decoded text fields). */
static inline char *unhex_str(const char *hex) { return (char *)unhex(hex, NULL); }

#define GOLDEN_MAX_FIELDS 8

typedef struct golden_line {
    char *buf;
    char *f[GOLDEN_MAX_FIELDS];
    int n;
} golden_line;

/* Reads the next line of fp split at tabs; returns 0 at end of file. */
static inline int golden_next(FILE *fp, golden_line *l) {
    static char line[1 << 20];
    free(l->buf);
    l->buf = NULL;
    if (!fgets(line, sizeof line, fp))
        return 0;
    line[strcspn(line, "\r\n")] = '\0';
    l->buf = strdup(line);
    l->n = 0;
    char *p = l->buf;
    while (l->n < GOLDEN_MAX_FIELDS) {
        l->f[l->n++] = p;
        char *t = strchr(p, '\t');
        if (!t)
            break;
        *t = '\0';
        p = t + 1;
    }
    return 1;
}

static inline FILE *golden_open(void) {
    FILE *fp = fopen(PSRPC_GOLDEN_FILE, "r");
    if (!fp)
        fprintf(stderr, "  cannot open %s\n", PSRPC_GOLDEN_FILE);
    return fp;
}

#endif
