/* Hook chains, the before-hook handle, the log callback and the W3C trace
 * context helpers (capi/psrpc.h, issue 16). */
#include "hooks.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/random.h>
#include <time.h>

#define HOOK_CALL_MAGIC 0x50484b43u /* "PHKC" */

int64_t psrpc__mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* A negative psrpc status as given, anything else PSRPC_INTERNAL. */
static int norm_status(int status) {
    if (status < 0 &&
        (status == PSRPC_UNKNOWN || strcmp(psrpc_status_name(status), "PSRPC_UNKNOWN") != 0))
        return status;
    return PSRPC_INTERNAL;
}

/* ---------------------------------------------------------------- chains */

int psrpc__hooks_add(_Atomic(psrpc__hooks *) *slot, const psrpc__hook *h) {
    for (;;) {
        psrpc__hooks *old = atomic_load(slot);
        size_t n = old ? old->count : 0;
        psrpc__hooks *nw = malloc(sizeof *nw + (n + 1) * sizeof(psrpc__hook));
        if (!nw)
            return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
        nw->count = n + 1;
        nw->before_count = (old ? old->before_count : 0) + (h->before ? 1 : 0);
        nw->older = old;
        if (n)
            memcpy(nw->items, old->items, n * sizeof(psrpc__hook));
        nw->items[n] = *h;
        if (atomic_compare_exchange_strong(slot, &old, nw))
            return PSRPC_OK;
        free(nw); /* another add won: retry on top of it */
    }
}

void psrpc__hooks_free(psrpc__hooks *h) {
    if (!h)
        return;
    for (size_t i = 0; i < h->count; i++)
        if (h->items[i].release)
            h->items[i].release(h->items[i].user_data);
    while (h) {
        psrpc__hooks *older = h->older;
        free(h);
        h = older;
    }
}

void psrpc__hook_call_init(psrpc_hook_call *hc, char ***keys, char ***values, size_t *count,
                           bool read_only) {
    hc->magic = HOOK_CALL_MAGIC;
    hc->read_only = read_only;
    hc->keys = keys;
    hc->values = values;
    hc->count = count;
    hc->status = 0;
    hc->message[0] = 0;
}

int psrpc__hooks_run_before(const psrpc__hooks *h, const psrpc_call_info *info,
                            psrpc_hook_call *hc) {
    for (size_t i = 0; i < h->count; i++) {
        const psrpc__hook *e = &h->items[i];
        if (!e->before)
            continue;
        int rc = e->before(info, hc, e->user_data);
        if (rc == 0 && hc->status == 0)
            continue;
        int status = norm_status(hc->status ? hc->status : rc);
        if (!hc->message[0])
            snprintf(hc->message, sizeof hc->message, "%s", psrpc_status_str(status));
        hc->status = status;
        return status;
    }
    return 0;
}

void psrpc__hooks_run_outcome(const psrpc__hooks *h, const psrpc_call_info *info,
                              const psrpc_call_outcome *outcome) {
    for (size_t i = 0; i < h->count; i++) {
        const psrpc__hook *e = &h->items[i];
        if (e->outcome)
            e->outcome(info, outcome, e->user_data);
    }
}

/* ---------------------------------------------------------------- hook call API */

#define CHECK_HC(hc)                                         \
    PSRPC__CHECK_ARG((hc) && (hc)->magic == HOOK_CALL_MAGIC, \
                     "call is NULL or not a psrpc_hook_call (valid during its hook only)")

size_t psrpc_hook_call_metadata_count(const psrpc_hook_call *call) {
    return call && call->magic == HOOK_CALL_MAGIC ? *call->count : 0;
}

psrpc_status psrpc_hook_call_metadata_at(const psrpc_hook_call *call, size_t index,
                                         const char **key, const char **value) {
    CHECK_HC(call);
    if (index >= *call->count)
        return psrpc__error(PSRPC_OUT_OF_RANGE, "metadata index %zu out of range", index);
    if (key)
        *key = (*call->keys)[index];
    if (value)
        *value = (*call->values)[index];
    return PSRPC_OK;
}

const char *psrpc_hook_call_metadata_get(const psrpc_hook_call *call, const char *key) {
    if (!call || call->magic != HOOK_CALL_MAGIC || !key)
        return NULL;
    for (size_t i = *call->count; i-- > 0;)
        if (strcmp((*call->keys)[i], key) == 0)
            return (*call->values)[i];
    return NULL;
}

psrpc_status psrpc_hook_call_metadata_set(psrpc_hook_call *call, const char *key,
                                          const char *value) {
    CHECK_HC(call);
    if (call->read_only)
        return psrpc__error(PSRPC_FAILED_PRECONDITION,
                            "a server hook cannot change the request's metadata");
    PSRPC__CHECK_ARG(key, "key is NULL");
    PSRPC__CHECK_ARG(psrpc__utf8_valid(key, strlen(key)) &&
                         (!value || psrpc__utf8_valid(value, strlen(value))),
                     "key or value is not valid UTF-8");
    char **keys = *call->keys, **values = *call->values;
    size_t n = *call->count, w = 0;
    char *nv = value ? psrpc__strdup(value) : NULL;
    if (value && !nv)
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
    bool placed = false;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(keys[i], key) != 0) {
            keys[w] = keys[i];
            values[w++] = values[i];
        } else if (nv && !placed) {
            /* The first entry of key takes the new value, in place. */
            free(values[i]);
            keys[w] = keys[i];
            values[w++] = nv;
            placed = true;
        } else {
            free(keys[i]);
            free(values[i]);
        }
    }
    *call->count = w;
    if (!nv || placed)
        return PSRPC_OK;
    char *nk = psrpc__strdup(key);
    char **k2 = nk ? realloc(keys, (w + 1) * sizeof *k2) : NULL;
    if (k2)
        *call->keys = keys = k2;
    char **v2 = k2 ? realloc(values, (w + 1) * sizeof *v2) : NULL;
    if (v2)
        *call->values = values = v2;
    if (!nk || !k2 || !v2) {
        free(nk);
        free(nv);
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
    }
    keys[w] = nk;
    values[w] = nv;
    *call->count = w + 1;
    return PSRPC_OK;
}

int psrpc_hook_call_fail(psrpc_hook_call *call, int status, const char *message) {
    if (!call || call->magic != HOOK_CALL_MAGIC)
        return psrpc__error(PSRPC_INVALID_ARGUMENT, "call is NULL or not a psrpc_hook_call");
    status = norm_status(status);
    call->status = status;
    const char *m = message && *message && psrpc__utf8_valid(message, strlen(message))
                        ? message
                        : psrpc_status_str(status);
    snprintf(call->message, sizeof call->message, "%s", m);
    return status;
}

/* ---------------------------------------------------------------- inits */

psrpc_status psrpc_client_hooks_init(psrpc_client_hooks *hooks, size_t struct_size) {
    psrpc_client_hooks d = PSRPC_CLIENT_HOOKS_INIT;
    return psrpc__options_init(hooks, struct_size, &d, sizeof d);
}

psrpc_status psrpc_server_hooks_init(psrpc_server_hooks *hooks, size_t struct_size) {
    psrpc_server_hooks d = PSRPC_SERVER_HOOKS_INIT;
    return psrpc__options_init(hooks, struct_size, &d, sizeof d);
}

psrpc_status psrpc_retry_options_init(psrpc_retry_options *opts, size_t struct_size) {
    psrpc_retry_options d = PSRPC_RETRY_OPTIONS_INIT;
    return psrpc__options_init(opts, struct_size, &d, sizeof d);
}

/* ---------------------------------------------------------------- logs */

typedef struct log_sink {
    psrpc_log_cb cb;
    void *user_data;
    int max_level;
} log_sink;

static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static log_sink log_current;
static atomic_int log_max_level; /* 0 = off: the fast check */

psrpc_status psrpc_set_log_callback(psrpc_log_cb cb, int max_level, void *user_data) {
    PSRPC__CHECK_ARG(!cb || (max_level >= PSRPC_LOG_ERROR && max_level <= PSRPC_LOG_DEBUG),
                     "max_level %d is not a PSRPC_LOG_* level", max_level);
    pthread_mutex_lock(&log_mu);
    log_current.cb = cb;
    log_current.user_data = user_data;
    log_current.max_level = cb ? max_level : 0;
    atomic_store(&log_max_level, log_current.max_level);
    pthread_mutex_unlock(&log_mu);
    return PSRPC_OK;
}

bool psrpc__log_on(int level) {
    return level <= atomic_load_explicit(&log_max_level, memory_order_relaxed);
}

void psrpc__log(int level, const char *component, const char *fmt, ...) {
    if (!psrpc__log_on(level))
        return;
    pthread_mutex_lock(&log_mu);
    log_sink sink = log_current;
    pthread_mutex_unlock(&log_mu);
    if (!sink.cb || level > sink.max_level)
        return;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* Called without any library lock held (the copy above). */
    sink.cb(level, component, msg, sink.user_data);
}

static const char *const drop_names[PSRPC__DROP_REASONS] = {
    "malformed", "oversize", "slow_consumer", "expired", "unknown", "held_limit"};

#define DROP_SUMMARY_NS (10LL * 1000000000LL)

void psrpc__log_drop(psrpc_bus *bus, int reason) {
    if (!psrpc__log_on(PSRPC_LOG_WARN) || reason < 0 || reason >= PSRPC__DROP_REASONS)
        return;
    psrpc__drop_log *d = &bus->drop_log[reason];
    int64_t now = psrpc__mono_ns();
    int64_t last = atomic_load(&d->last_ns);
    if (last != 0 && now - last < DROP_SUMMARY_NS) {
        atomic_fetch_add(&d->suppressed, 1);
        psrpc__log(PSRPC_LOG_DEBUG, "drop", "%s: dropped a message (%s)", bus->url_safe,
                   drop_names[reason]);
        return;
    }
    if (!atomic_compare_exchange_strong(&d->last_ns, &last, now)) {
        atomic_fetch_add(&d->suppressed, 1); /* another thread logs this window */
        return;
    }
    uint64_t more = atomic_exchange(&d->suppressed, 0);
    if (last == 0)
        psrpc__log(PSRPC_LOG_WARN, "drop", "%s: dropped a message (%s)", bus->url_safe,
                   drop_names[reason]);
    else
        psrpc__log(PSRPC_LOG_WARN, "drop",
                   "%s: dropped a message (%s); %llu more dropped for this reason since the "
                   "last report",
                   bus->url_safe, drop_names[reason], (unsigned long long)more);
}

/* ---------------------------------------------------------------- trace context */

static int hexval(char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1; /* W3C: lowercase hex only */
}

static bool hex_run(const char *s, size_t n, bool *all_zero) {
    bool zero = true;
    for (size_t i = 0; i < n; i++) {
        if (hexval(s[i]) < 0)
            return false;
        if (s[i] != '0')
            zero = false;
    }
    if (all_zero)
        *all_zero = zero;
    return true;
}

/* W3C trace-context level 1: version-traceid-parentid-flags. A version
 * other than 00 may carry more fields after a '-' (forward compatible). */
static bool traceparent_valid(const char *p) {
    size_t n = strlen(p);
    if (n < 55)
        return false;
    bool zero;
    if (!hex_run(p, 2, NULL) || (p[0] == 'f' && p[1] == 'f') || p[2] != '-')
        return false;
    if (!hex_run(p + 3, 32, &zero) || zero || p[35] != '-')
        return false;
    if (!hex_run(p + 36, 16, &zero) || zero || p[52] != '-')
        return false;
    if (!hex_run(p + 53, 2, NULL))
        return false;
    if (p[0] == '0' && p[1] == '0')
        return n == 55;
    return n == 55 || p[55] == '-';
}

psrpc_status psrpc_trace_child(char *out, const char *parent) {
    PSRPC__CHECK_ARG(out, "out is NULL");
    out[0] = 0;
    PSRPC__CHECK_ARG(parent, "parent is NULL");
    PSRPC__CHECK_ARG(traceparent_valid(parent), "parent is not a valid W3C traceparent");
    uint8_t id[8];
    static const char hex[] = "0123456789abcdef";
    do {
        if (getrandom(id, sizeof id, 0) != (ssize_t)sizeof id)
            return psrpc__error(PSRPC_INTERNAL, "no random bytes for a span id");
    } while (!(id[0] | id[1] | id[2] | id[3] | id[4] | id[5] | id[6] | id[7]));
    /* A child is written in the version we speak (00), as otel's propagator does. */
    memcpy(out, "00-", 3);
    memcpy(out + 3, parent + 3, 32);
    out[35] = '-';
    for (int i = 0; i < 8; i++) {
        out[36 + 2 * i] = hex[id[i] >> 4];
        out[37 + 2 * i] = hex[id[i] & 15];
    }
    out[52] = '-';
    out[53] = parent[53];
    out[54] = parent[54];
    out[55] = 0;
    return PSRPC_OK;
}

size_t psrpc_trace_forward(psrpc_kv *kv, char *buf, const char *traceparent,
                           const char *tracestate) {
    if (!kv || !buf || !traceparent)
        return 0;
    if (psrpc_trace_child(buf, traceparent) != PSRPC_OK)
        return 0;
    kv[0].key = "traceparent";
    kv[0].value = buf;
    if (!tracestate || !*tracestate)
        return 1;
    kv[1].key = "tracestate";
    kv[1].value = tracestate;
    return 2;
}
