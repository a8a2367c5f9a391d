/* Status tables, the per-thread last error, and error objects for callbacks. */
#include <stdarg.h>
#include <stdio.h>

#include "common.h"

typedef struct {
    int status;
    const char *name;
    const char *code;
    const char *desc;
} status_entry;

static const status_entry status_table[] = {
#define XX(name, value, code, desc) {value, "PSRPC_" #name, code, desc},
    PSRPC_STATUS_MAP(XX)
#undef XX
};

static const status_entry *find_status(int status) {
    for (size_t i = 0; i < PSRPC__ARRAY_SIZE(status_table); i++)
        if (status_table[i].status == status)
            return &status_table[i];
    return NULL;
}

const char *psrpc_status_name(int status) {
    const status_entry *e = find_status(status);
    return e ? e->name : "PSRPC_UNKNOWN";
}

const char *psrpc_status_str(int status) {
    const status_entry *e = find_status(status);
    return e ? e->desc : "unknown error";
}

const char *psrpc_status_code(int status) {
    const status_entry *e = find_status(status);
    if (!e)
        return "unknown";
    return e->code ? e->code : "internal";
}

int psrpc_status_from_code(const char *code) {
    if (!code || !*code)
        return PSRPC_OK;
    for (size_t i = 0; i < PSRPC__ARRAY_SIZE(status_table); i++)
        if (status_table[i].code && strcmp(status_table[i].code, code) == 0)
            return status_table[i].status;
    return PSRPC_UNKNOWN;
}

/* ---- per-thread last error ---- */

#define LAST_ERROR_MAX 512
static _Thread_local char last_error_msg[LAST_ERROR_MAX];
static _Thread_local int last_error_status;

const char *psrpc_last_error(void) { return last_error_msg; }

int psrpc_last_error_status(void) { return last_error_status; }

void psrpc_clear_error(void) {
    last_error_msg[0] = '\0';
    last_error_status = PSRPC_OK;
}

int psrpc__error(int status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error_msg, sizeof last_error_msg, fmt, ap);
    va_end(ap);
    last_error_status = status;
    return status;
}

/* ---- error objects ---- */

static psrpc__err *err_alloc(const char *code, char *message) {
    psrpc__err *e = calloc(1, sizeof *e);
    if (!e) {
        free(message);
        return NULL;
    }
    e->status = psrpc_status_from_code(code);
    if (e->status == PSRPC_OK)
        e->status = PSRPC_UNKNOWN;
    e->code = psrpc__strdup(code && *code ? code : "unknown");
    e->message = message ? message : psrpc__strdup("");
    if (!e->code || !e->message) {
        psrpc__err_free(e);
        return NULL;
    }
    return e;
}

psrpc__err *psrpc__err_new(int status, const char *fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    psrpc__err *e = err_alloc(psrpc_status_code(status), psrpc__strdup(buf));
    if (e)
        e->status = status;
    return e;
}

psrpc__err *psrpc__err_from_code(const char *code, const char *message) {
    return err_alloc(code, psrpc__strdup(message ? message : ""));
}

psrpc__err *psrpc__err_copy(const psrpc__err *src) {
    if (!src)
        return NULL;
    psrpc__err *e = err_alloc(src->code, psrpc__strdup(src->message));
    if (!e)
        return NULL;
    e->status = src->status;
    if (src->details_count) {
        e->details = calloc(src->details_count, sizeof *e->details);
        if (!e->details) {
            psrpc__err_free(e);
            return NULL;
        }
        for (size_t i = 0; i < src->details_count; i++) {
            const psrpc_error_detail *d = &src->details[i];
            uint8_t *v = malloc(d->value_len ? d->value_len : 1);
            char *t = psrpc__strdup(d->type_url ? d->type_url : "");
            if (!v || !t) {
                free(v);
                free(t);
                psrpc__err_free(e);
                return NULL;
            }
            if (d->value_len)
                memcpy(v, d->value, d->value_len);
            e->details[i] = (psrpc_error_detail){t, v, d->value_len};
            e->details_count = i + 1;
        }
    }
    return e;
}

void psrpc__err_free(psrpc__err *e) {
    if (!e)
        return;
    for (size_t i = 0; i < e->details_count; i++) {
        free((char *)e->details[i].type_url);
        free((uint8_t *)e->details[i].value);
    }
    free(e->details);
    free(e->code);
    free(e->message);
    free(e);
}

void psrpc__err_view(const psrpc__err *e, psrpc_error *view) {
    memset(view, 0, sizeof *view);
    view->status = e->status;
    view->code = e->code;
    view->message = e->message;
    view->details = e->details;
    view->details_count = e->details_count;
}

/* ---- owned copies of public error objects ---- */

/* One allocation: the psrpc_error, its details array, then every string and
 * byte value, so psrpc_error_free is a single free(). */
psrpc_status psrpc_error_copy(psrpc_error **out, const psrpc_error *error) {
    PSRPC__CHECK_ARG(out, "out is NULL");
    *out = NULL;
    PSRPC__CHECK_ARG(error, "error is NULL");
    PSRPC__CHECK_ARG(error->details || error->details_count == 0,
                     "error has NULL details with a non-zero count");
    const char *code = error->code ? error->code : "";
    const char *message = error->message ? error->message : "";
    size_t n = error->details_count;
    if (n > (SIZE_MAX - sizeof(psrpc_error)) / sizeof(psrpc_error_detail))
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "error has too many details");
    size_t head = sizeof(psrpc_error) + n * sizeof(psrpc_error_detail);
    size_t total = head;
    size_t code_len = strlen(code), msg_len = strlen(message);
#define ADD_SIZE(x)                                                                      \
    do {                                                                                 \
        if ((x) > SIZE_MAX - total)                                                      \
            return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "error is too large to copy"); \
        total += (x);                                                                    \
    } while (0)
    ADD_SIZE(code_len + 1);
    ADD_SIZE(msg_len + 1);
    for (size_t i = 0; i < n; i++) {
        const psrpc_error_detail *d = &error->details[i];
        PSRPC__CHECK_ARG(d->value || d->value_len == 0,
                         "detail %zu has NULL value with a non-zero length", i);
        ADD_SIZE(strlen(d->type_url ? d->type_url : "") + 1);
        ADD_SIZE(d->value_len);
    }
    ADD_SIZE(1); /* so even an empty last value points inside the block */
#undef ADD_SIZE
    char *mem = malloc(total);
    if (!mem)
        return psrpc__error(PSRPC_RESOURCE_EXHAUSTED, "out of memory copying an error");
    psrpc_error *e = (psrpc_error *)mem;
    psrpc_error_detail *dd = n ? (psrpc_error_detail *)(mem + sizeof(psrpc_error)) : NULL;
    char *p = mem + head;
    memset(e, 0, sizeof *e);
    e->status = error->status;
    e->code = p;
    memcpy(p, code, code_len + 1);
    p += code_len + 1;
    e->message = p;
    memcpy(p, message, msg_len + 1);
    p += msg_len + 1;
    for (size_t i = 0; i < n; i++) {
        const psrpc_error_detail *d = &error->details[i];
        const char *url = d->type_url ? d->type_url : "";
        size_t ul = strlen(url) + 1;
        memcpy(p, url, ul);
        dd[i].type_url = p;
        p += ul;
        dd[i].value = (const uint8_t *)p;
        dd[i].value_len = d->value_len;
        if (d->value_len)
            memcpy(p, d->value, d->value_len);
        p += d->value_len;
    }
    e->details = dd;
    e->details_count = n;
    *out = e;
    return PSRPC_OK;
}

void psrpc_error_free(psrpc_error *error) { free(error); }
