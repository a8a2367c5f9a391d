/* psrpc_metrics: per (role, service, method) counters and latency
 * histograms, kept by on_outcome hooks (capi/psrpc.h, issue 16). */
#include <pthread.h>

#include "hooks.h"

#define METRICS_MAGIC 0x504d5452u /* "PMTR" */

static const double bounds_ms[PSRPC_METRICS_BUCKETS - 1] = {5,   10,   25,   50,   100,  250,
                                                            500, 1000, 2500, 5000, 10000};

typedef struct code_count {
    char *code;
    uint64_t count;
    struct code_count *next;
} code_count;

typedef struct row {
    uint32_t role, kind;
    char *service, *method;
    uint64_t calls, errors, attempts, latency_sum_ns;
    uint64_t buckets[PSRPC_METRICS_BUCKETS];
    code_count *codes;
    size_t code_kinds;
    struct row *next;
} row;

struct psrpc_metrics {
    uint32_t magic;
    atomic_int refs; /* the user's + one per attachment */
    atomic_bool freed;
    pthread_mutex_t mu; /* rows; held for a lookup and a few adds, never around a callback */
    row *rows;
    size_t row_count;
};

static void metrics_unref(void *p) {
    psrpc_metrics *m = p;
    if (atomic_fetch_sub(&m->refs, 1) != 1)
        return;
    for (row *r = m->rows, *rn; r; r = rn) {
        rn = r->next;
        for (code_count *c = r->codes, *cn; c; c = cn) {
            cn = c->next;
            free(c->code);
            free(c);
        }
        free(r->service);
        free(r->method);
        free(r);
    }
    pthread_mutex_destroy(&m->mu);
    m->magic = 0;
    free(m);
}

psrpc_status psrpc_metrics_new(psrpc_metrics **out) {
    PSRPC__CHECK_ARG(out, "out is NULL");
    psrpc_metrics *m = calloc(1, sizeof *m);
    *out = m;
    if (!m)
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
    m->magic = METRICS_MAGIC;
    atomic_init(&m->refs, 1);
    pthread_mutex_init(&m->mu, NULL);
    return PSRPC_OK;
}

void psrpc_metrics_free(psrpc_metrics *m) {
    if (!m || m->magic != METRICS_MAGIC || atomic_exchange(&m->freed, true))
        return;
    metrics_unref(m);
}

double psrpc_metrics_bucket_bound_ms(size_t index) {
    return index < PSRPC_METRICS_BUCKETS - 1 ? bounds_ms[index] : -1.0;
}

static size_t bucket_of(int64_t ns) {
    double ms = (double)ns / 1e6;
    size_t i = 0;
    while (i < PSRPC_METRICS_BUCKETS - 1 && ms > bounds_ms[i])
        i++;
    return i;
}

/* The row of (role, service, method), made on first use; NULL if memory ran
 * out. Under mu. */
static row *row_get(psrpc_metrics *m, uint32_t role, uint32_t kind, const char *service,
                    const char *method) {
    for (row *r = m->rows; r; r = r->next)
        if (r->role == role && strcmp(r->method, method) == 0 && strcmp(r->service, service) == 0)
            return r;
    row *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->role = role;
    r->kind = kind;
    r->service = psrpc__strdup(service);
    r->method = psrpc__strdup(method);
    if (!r->service || !r->method) {
        free(r->service);
        free(r->method);
        free(r);
        return NULL;
    }
    /* Appended: rows are read in the order they appeared. */
    row **tail = &m->rows;
    while (*tail)
        tail = &(*tail)->next;
    *tail = r;
    m->row_count++;
    return r;
}

static void count_code(row *r, const char *code) {
    for (code_count *c = r->codes; c; c = c->next) {
        if (strcmp(c->code, code) == 0) {
            c->count++;
            return;
        }
    }
    code_count *c = calloc(1, sizeof *c);
    if (!c || !(c->code = psrpc__strdup(code))) {
        free(c);
        return;
    }
    c->count = 1;
    code_count **tail = &r->codes;
    while (*tail)
        tail = &(*tail)->next;
    *tail = c;
    r->code_kinds++;
}

static void record(const psrpc_call_info *info, const psrpc_call_outcome *o, void *ud) {
    psrpc_metrics *m = ud;
    int64_t d = o->duration_ns > 0 ? o->duration_ns : 0;
    size_t b = bucket_of(d);
    pthread_mutex_lock(&m->mu);
    row *r = row_get(m, info->role, info->kind, info->service, info->method);
    if (r) {
        r->calls++;
        r->attempts += o->attempts;
        r->latency_sum_ns += (uint64_t)d;
        r->buckets[b]++;
        if (o->error) {
            r->errors++;
            count_code(r, o->error->code && *o->error->code ? o->error->code : "unknown");
        }
    }
    pthread_mutex_unlock(&m->mu);
}

#define CHECK_METRICS(m) \
    PSRPC__CHECK_ARG((m) && (m)->magic == METRICS_MAGIC, "metrics is NULL or not a psrpc_metrics")

psrpc_status psrpc_metrics_attach_client(psrpc_metrics *m, psrpc_client *client) {
    CHECK_METRICS(m);
    psrpc_client_hooks h = PSRPC_CLIENT_HOOKS_INIT;
    h.on_outcome = record;
    h.user_data = m;
    h.release = metrics_unref;
    atomic_fetch_add(&m->refs, 1);
    int rc = psrpc_client_add_hooks(client, &h);
    if (rc != PSRPC_OK)
        atomic_fetch_sub(&m->refs, 1); /* the user's reference remains */
    return rc;
}

psrpc_status psrpc_metrics_attach_server(psrpc_metrics *m, psrpc_server *server) {
    CHECK_METRICS(m);
    psrpc_server_hooks h = PSRPC_SERVER_HOOKS_INIT;
    h.on_outcome = record;
    h.user_data = m;
    h.release = metrics_unref;
    atomic_fetch_add(&m->refs, 1);
    int rc = psrpc_server_add_hooks(server, &h);
    if (rc != PSRPC_OK)
        atomic_fetch_sub(&m->refs, 1);
    return rc;
}

typedef struct snap {
    psrpc_method_metrics row;
    const char **codes;
    uint64_t *counts;
} snap;

psrpc_status psrpc_metrics_read(psrpc_metrics *m, psrpc_metrics_row_cb cb,
                                psrpc_metrics_code_cb code_cb, void *user_data) {
    CHECK_METRICS(m);
    PSRPC__CHECK_ARG(cb || code_cb, "cb and code_cb are both NULL");
    /* Copy under the lock, call back without it (rows and their strings
     * live as long as m). */
    pthread_mutex_lock(&m->mu);
    size_t n = m->row_count, codes = 0;
    for (row *r = m->rows; r; r = r->next)
        codes += r->code_kinds;
    snap *s = n ? calloc(n, sizeof *s) : NULL;
    const char **cv = codes ? calloc(codes, sizeof *cv) : NULL;
    uint64_t *cc = codes ? calloc(codes, sizeof *cc) : NULL;
    if ((n && !s) || (codes && (!cv || !cc))) {
        pthread_mutex_unlock(&m->mu);
        free(s);
        free(cv);
        free(cc);
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory");
    }
    size_t i = 0, j = 0;
    for (row *r = m->rows; r && i < n; r = r->next, i++) {
        psrpc_method_metrics *o = &s[i].row;
        o->struct_size = sizeof *o;
        o->role = r->role;
        o->kind = r->kind;
        o->service = r->service;
        o->method = r->method;
        o->calls = r->calls;
        o->errors = r->errors;
        o->attempts = r->attempts;
        o->latency_sum_ns = r->latency_sum_ns;
        memcpy(o->buckets, r->buckets, sizeof o->buckets);
        o->error_codes_count = r->code_kinds;
        s[i].codes = cv ? cv + j : NULL;
        s[i].counts = cc ? cc + j : NULL;
        for (code_count *c = r->codes; c; c = c->next, j++) {
            cv[j] = c->code;
            cc[j] = c->count;
        }
    }
    pthread_mutex_unlock(&m->mu);
    for (i = 0; i < n; i++) {
        if (cb)
            cb(&s[i].row, user_data);
        for (size_t k = 0; code_cb && k < s[i].row.error_codes_count; k++)
            code_cb(&s[i].row, s[i].codes[k], s[i].counts[k], user_data);
    }
    free(s);
    free(cv);
    free(cc);
    return PSRPC_OK;
}
