#include "conformance_common.h"

#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

const conf_method_def conf_methods[] = {
#include "conformance_methods.inc"
};
const size_t conf_method_count = sizeof conf_methods / sizeof conf_methods[0];

int conf_streams_available(void) {
    return psrpc_client_open_stream && psrpc_server_register_stream && psrpc_stream_set_callbacks &&
           psrpc_stream_send && psrpc_stream_close && psrpc_stream_free;
}

const conf_method_def *conf_method_def_find(const char *service, const char *name) {
    for (size_t i = 0; i < conf_method_count; i++)
        if (!strcmp(conf_methods[i].service, service) && !strcmp(conf_methods[i].name, name))
            return &conf_methods[i];
    return NULL;
}

psrpc_method conf_method(const char *service, const char *name) {
    const conf_method_def *d = conf_method_def_find(service, name);
    if (!d) {
        fprintf(stderr, "conformance: no rpc %s.%s in conformance.proto\n", service, name);
        abort();
    }
    psrpc_method m = PSRPC_METHOD_INIT;
    m.routing = d->routing;
    m.flags = d->flags;
    m.name = d->name;
    m.output_type = d->output_type;
    return m;
}

void conf_bus_flags_init(conf_bus_flags *f) {
    f->url = "redis://127.0.0.1:6379";
    /* livekit/psrpc has no message size cap (Redis); the conformance programs
     * allow 16 MiB instead of libpsrpc's 1 MiB default so that a 1 MiB
     * payload plus its envelope passes, as it does between Go peers. */
    f->max_message_size = 16 << 20;
    f->compress_threshold = 0;
}

int conf_parse_bus_flag(conf_bus_flags *f, int argc, char **argv, int i) {
    if (i + 1 >= argc)
        return 0;
    if (!strcmp(argv[i], "--bus")) {
        f->url = argv[i + 1];
        return 2;
    }
    if (!strcmp(argv[i], "--max-message-size")) {
        f->max_message_size = strtoll(argv[i + 1], NULL, 10);
        return 2;
    }
    if (!strcmp(argv[i], "--compress-threshold")) {
        f->compress_threshold = strtoll(argv[i + 1], NULL, 10);
        return 2;
    }
    return 0;
}

int conf_open_bus(psrpc_bus **out, const conf_bus_flags *f, const char *prog) {
    psrpc_bus_options o = PSRPC_BUS_OPTIONS_INIT;
    o.max_message_size = f->max_message_size;
    o.compress_threshold = f->compress_threshold;
    if (psrpc_bus_open(out, f->url, &o) != PSRPC_OK) {
        fprintf(stderr, "%s: bus %s: %s\n", prog, f->url, psrpc_last_error());
        return -1;
    }
    if (psrpc_bus_wait_ready(*out, 10000) != PSRPC_OK) {
        fprintf(stderr, "%s: bus %s not ready: %s\n", prog, f->url, psrpc_last_error());
        psrpc_bus_free(*out);
        *out = NULL;
        return -1;
    }
    return 0;
}

void conf_hex(char *out, const uint8_t *data, size_t len) {
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = digits[data[i] >> 4];
        out[2 * i + 1] = digits[data[i] & 15];
    }
    out[2 * len] = 0;
}

static int hexval(char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int conf_unhex(uint8_t **out, size_t *out_len, const char *hex) {
    size_t n = strlen(hex);
    if (n % 2)
        return -1;
    uint8_t *b = malloc(n / 2 + 1);
    if (!b)
        return -1;
    for (size_t i = 0; i < n / 2; i++) {
        int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            free(b);
            return -1;
        }
        b[i] = (uint8_t)(hi << 4 | lo);
    }
    *out = b;
    *out_len = n / 2;
    return 0;
}

void conf_unpercent(char *s) {
    char *o = s;
    for (; *s; s++) {
        if (*s == '%' && hexval(s[1]) >= 0 && hexval(s[2]) >= 0) {
            *o++ = (char)(hexval(s[1]) << 4 | hexval(s[2]));
            s += 2;
        } else {
            *o++ = *s;
        }
    }
    *o = 0;
}

void conf_json_str(FILE *f, const char *s) {
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(f, "\\%c", *p);
        else if (*p < 0x20)
            fprintf(f, "\\u%04x", *p);
        else
            fputc(*p, f);
    }
    fputc('"', f);
}

void conf_nonce(char out[17]) {
    uint8_t b[8];
    size_t got = 0;
    while (got < sizeof b) {
        ssize_t n = getrandom(b + got, sizeof b - got, 0);
        if (n > 0)
            got += (size_t)n;
    }
    conf_hex(out, b, sizeof b);
}

uint8_t *conf_wrapper(const void *data, size_t len, size_t *out_len) {
    uint8_t *b = malloc(len + 11);
    size_t o = 0;
    if (!b)
        return NULL;
    if (len) { /* proto3: an empty value is not encoded */
        b[o++] = 0x0a;
        size_t v = len;
        while (v >= 0x80) {
            b[o++] = (uint8_t)(v | 0x80);
            v >>= 7;
        }
        b[o++] = (uint8_t)v;
        memcpy(b + o, data, len);
        o += len;
    }
    *out_len = o;
    return b;
}

int64_t conf_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
