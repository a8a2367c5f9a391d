/* Small shared helpers: strings, clocks, options loading, messages, version. */
#include <time.h>

#include "common.h"

size_t psrpc__u64_str(char *buf, uint64_t v) {
    char tmp[20];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++)
        buf[i] = tmp[n - 1 - i];
    buf[n] = 0;
    return n;
}

char *psrpc__strdup(const char *s) {
    if (!s)
        return NULL;
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

int psrpc__strv_dup(char ***out, const char *const *v, size_t n) {
    *out = NULL;
    if (n == 0)
        return PSRPC_OK;
    char **d = calloc(n, sizeof *d);
    if (!d)
        return PSRPC_RESOURCE_EXHAUSTED;
    for (size_t i = 0; i < n; i++) {
        d[i] = psrpc__strdup(v[i]);
        if (!d[i]) {
            psrpc__strv_free(d, i);
            return PSRPC_RESOURCE_EXHAUSTED;
        }
    }
    *out = d;
    return PSRPC_OK;
}

void psrpc__strv_free(char **v, size_t n) {
    if (!v)
        return;
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

int64_t psrpc__now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t psrpc__mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int psrpc__options_load(void *dst, size_t dst_size, const void *src, const char *what) {
    if (!src)
        return PSRPC_OK;
    uint32_t src_size;
    memcpy(&src_size, src, sizeof src_size);
    if (src_size < 2 * sizeof(uint32_t))
        return psrpc__error(PSRPC_INVALID_ARGUMENT, "%s: struct_size %u is too small", what,
                            (unsigned)src_size);
    if (src_size > dst_size) {
        const unsigned char *tail = (const unsigned char *)src + dst_size;
        for (size_t i = 0; i < src_size - dst_size; i++)
            if (tail[i])
                return psrpc__error(PSRPC_NOT_SUPPORTED,
                                    "%s: fields beyond the %zu bytes this library knows are set",
                                    what, dst_size);
        src_size = (uint32_t)dst_size;
    }
    memcpy(dst, src, src_size);
    memcpy(dst, &(uint32_t){(uint32_t)dst_size}, sizeof(uint32_t));
    return PSRPC_OK;
}

int psrpc__options_init(void *opts, size_t struct_size, const void *defaults,
                        size_t defaults_size) {
    PSRPC__CHECK_ARG(opts, "opts is NULL");
    PSRPC__CHECK_ARG(struct_size >= 2 * sizeof(uint32_t), "struct_size is too small");
    memset(opts, 0, struct_size);
    memcpy(opts, defaults, struct_size < defaults_size ? struct_size : defaults_size);
    uint32_t size = (uint32_t)struct_size;
    memcpy(opts, &size, sizeof size);
    return PSRPC_OK;
}

void psrpc__deadline_in(struct timespec *ts, int64_t timeout_ms) {
    clock_gettime(CLOCK_REALTIME, ts);
    if (timeout_ms < 0)
        timeout_ms = 0;
    timeout_ms = psrpc__clamp_timeout_ms(timeout_ms);
    int64_t ns = ts->tv_nsec + (timeout_ms % 1000) * 1000000;
    ts->tv_sec += (time_t)(timeout_ms / 1000 + ns / 1000000000);
    ts->tv_nsec = ns % 1000000000;
}

/* ---- messages ---- */

static const uint8_t empty_bytes[1];

psrpc_msg *psrpc__msg_alloc(size_t len) {
    if (len > SIZE_MAX - sizeof(psrpc_msg) - 1)
        return NULL;
    psrpc_msg *m = malloc(sizeof *m + len + 1);
    if (!m)
        return NULL;
    atomic_init(&m->refs, 1);
    m->len = len;
    m->data[len] = 0;
    return m;
}

psrpc_status psrpc_msg_new(psrpc_msg **out, const void *data, size_t len) {
    PSRPC__CHECK_ARG(out, "out is NULL");
    *out = NULL;
    PSRPC__CHECK_ARG(data || len == 0, "data is NULL with a non-zero length");
    psrpc_msg *m = psrpc__msg_alloc(len);
    if (!m)
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
    if (len)
        memcpy(m->data, data, len);
    *out = m;
    return PSRPC_OK;
}

const uint8_t *psrpc_msg_data(const psrpc_msg *msg) { return msg ? msg->data : empty_bytes; }

size_t psrpc_msg_size(const psrpc_msg *msg) { return msg ? msg->len : 0; }

psrpc_msg *psrpc_msg_retain(const psrpc_msg *msg) {
    psrpc_msg *m = (psrpc_msg *)msg;
    if (m)
        atomic_fetch_add_explicit(&m->refs, 1, memory_order_relaxed);
    return m;
}

void psrpc_msg_release(const psrpc_msg *msg) {
    psrpc_msg *m = (psrpc_msg *)msg;
    if (m && atomic_fetch_sub_explicit(&m->refs, 1, memory_order_acq_rel) == 1)
        free(m);
}

/* ---- version ---- */

unsigned int psrpc_version(void) { return PSRPC_VERSION_HEX; }

const char *psrpc_version_string(void) { return PSRPC_VERSION_STRING; }
