/* Internal helpers shared by every impl/ file. Never installed. */
#ifndef PSRPC_IMPL_COMMON_H
#define PSRPC_IMPL_COMMON_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "psrpc.h"

#if defined(__GNUC__)
#define PSRPC__PRINTF(a, b) __attribute__((format(printf, a, b)))
#define PSRPC__UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define PSRPC__PRINTF(a, b)
#define PSRPC__UNLIKELY(x) (x)
#endif

#define PSRPC__CONTAINER_OF(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))
#define PSRPC__ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* Sets the calling thread's last error and returns status, so error sites are
 * one line: return psrpc__error(PSRPC_INVALID_ARGUMENT, "method is NULL"); */
int psrpc__error(int status, const char *fmt, ...) PSRPC__PRINTF(2, 3);

/* Shorthand for the common NULL checks of the ABI layer. */
#define PSRPC__CHECK_ARG(cond, ...)                                   \
    do {                                                              \
        if (PSRPC__UNLIKELY(!(cond)))                                 \
            return psrpc__error(PSRPC_INVALID_ARGUMENT, __VA_ARGS__); \
    } while (0)

/* Logs (psrpc_set_log_callback, impl/core/hooks.c). psrpc__log_on is false when no callback
 * takes that level: test it before formatting anything costly. */
bool psrpc__log_on(int level);
void psrpc__log(int level, const char *component, const char *fmt, ...) PSRPC__PRINTF(3, 4);

/* An error object built on the loop thread to hand to callbacks. All strings
 * owned. */
typedef struct psrpc__err {
    int status;
    char *code;
    char *message;
    psrpc_error_detail *details; /* type_url and value owned */
    size_t details_count;
} psrpc__err;

/* Builds from a status and printf message; code = psrpc_status_code(status). */
psrpc__err *psrpc__err_new(int status, const char *fmt, ...) PSRPC__PRINTF(2, 3);
/* Builds from a wire code string (unknown codes kept) and message. */
psrpc__err *psrpc__err_from_code(const char *code, const char *message);
psrpc__err *psrpc__err_copy(const psrpc__err *e);
void psrpc__err_free(psrpc__err *e);
/* A view of e for a callback; valid while e lives. */
void psrpc__err_view(const psrpc__err *e, psrpc_error *view);

/* Options loading (style.md 2.5): copy the caller's struct (its own
 * struct_size first) into dst of our size; the caller's fields beyond ours
 * must be zero (else PSRPC_NOT_SUPPORTED). src NULL leaves dst as given
 * (defaults). */
int psrpc__options_load(void *dst, size_t dst_size, const void *src, const char *what);

/* Fills a caller's options struct of struct_size bytes with defaults (ours
 * are defaults_size bytes); the shared body of every *_options_init. */
int psrpc__options_init(void *opts, size_t struct_size, const void *defaults, size_t defaults_size);

/* The CLOCK_REALTIME instant timeout_ms from now, for pthread_cond_timedwait. */
struct timespec;
void psrpc__deadline_in(struct timespec *ts, int64_t timeout_ms);

char *psrpc__strdup(const char *s);
/* v in decimal, NUL-terminated, into buf (at least 21 bytes): what "%llu"
 * prints, without the cost of printf. Returns the length. */
size_t psrpc__u64_str(char *buf, uint64_t v);
/* Duplicates an array of n strings (each must be non-NULL). NULL + 0 → NULL. */
int psrpc__strv_dup(char ***out, const char *const *v, size_t n);
void psrpc__strv_free(char **v, size_t n);

/* Internal refcounted message: header + inline bytes. */
struct psrpc_msg {
    atomic_size_t refs;
    size_t len;
    uint8_t data[];
};
/* A message of len bytes, uninitialized contents; NULL on allocation failure. */
psrpc_msg *psrpc__msg_alloc(size_t len);

int64_t psrpc__now_ns(void);
int64_t psrpc__mono_ms(void);

/* Deadline arithmetic. A timeout is clamped at the API to 50 years ("no
 * practical deadline": INT64_MAX from a binding's Duration::MAX or Infinity),
 * so now + timeout never overflows in milliseconds or nanoseconds; sums and
 * products of times saturate instead of wrapping (signed overflow is UB). */
#define PSRPC__TIMEOUT_MAX_MS ((int64_t)50 * 365 * 24 * 3600 * 1000)

static inline int64_t psrpc__clamp_timeout_ms(int64_t ms) {
    return ms > PSRPC__TIMEOUT_MAX_MS ? PSRPC__TIMEOUT_MAX_MS : ms;
}

static inline int64_t psrpc__sat_add(int64_t a, int64_t b) {
    int64_t r;
    if (__builtin_add_overflow(a, b, &r))
        return b > 0 ? INT64_MAX : INT64_MIN;
    return r;
}

/* ms in nanoseconds, saturated. */
static inline int64_t psrpc__ms_to_ns(int64_t ms) {
    int64_t r;
    if (__builtin_mul_overflow(ms, (int64_t)1000000, &r))
        return ms > 0 ? INT64_MAX : INT64_MIN;
    return r;
}

#endif
