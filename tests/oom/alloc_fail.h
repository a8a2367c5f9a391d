/* Allocation-failure injector for one test executable (never the library):
 * the executable is linked with -Wl,--wrap=malloc,--wrap=calloc,
 * --wrap=realloc, which routes every call to these functions made from the
 * objects of that link — libpsrpc.a's included, the system's shared
 * libraries (libuv, protobuf-c, hiredis, libnats) not — through the wrappers
 * below. Release builds are untouched: nothing here is compiled into the
 * library.
 *
 *   af_arm(n, thread)  the n-th allocation from now fails (n >= 1); with
 *                      thread only allocations on the calling thread count
 *   af_persist(on)     from the n-th on, every allocation fails (until
 *                      af_disarm): the failure paths themselves run out
 *   af_disarm()        no more failures; returns whether one was injected
 *
 * Include in exactly one translation unit of the executable. */
#ifndef PSRPC_TESTS_ALLOC_FAIL_H
#define PSRPC_TESTS_ALLOC_FAIL_H

#include <execinfo.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <unistd.h>

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t n);

static atomic_long af_countdown;     /* > 0: armed; the allocation taking it to 0 fails */
static atomic_int af_fired;          /* failures injected since af_arm */
static atomic_bool af_any_thread;    /* count allocations of every thread */
static _Atomic(pthread_t) af_thread; /* else only this one's */
static atomic_bool af_persistent;    /* keep failing after the n-th */

static inline bool af_fail_now(void) {
    long left = atomic_load_explicit(&af_countdown, memory_order_relaxed);
    if (left <= 0)
        return false;
    if (left == 1 && atomic_load(&af_persistent) &&
        (atomic_load(&af_any_thread) || pthread_equal(pthread_self(), atomic_load(&af_thread)))) {
        atomic_fetch_add(&af_fired, 1);
        return true;
    }
    if (!atomic_load(&af_any_thread) && !pthread_equal(pthread_self(), atomic_load(&af_thread)))
        return false;
    if (atomic_fetch_sub(&af_countdown, 1) == 1) {
        atomic_fetch_add(&af_fired, 1);
        if (getenv("PSRPC_AF_TRACE")) { /* where the failure was injected */
            void *frames[16];
            int n = backtrace(frames, 16);
            backtrace_symbols_fd(frames, n, 2);
            ssize_t w = write(2, "--\n", 3);
            (void)w;
        }
        return true;
    }
    return false;
}

void *__wrap_malloc(size_t n);
void *__wrap_malloc(size_t n) { return af_fail_now() ? NULL : __real_malloc(n); }
void *__wrap_calloc(size_t n, size_t size);
void *__wrap_calloc(size_t n, size_t size) { return af_fail_now() ? NULL : __real_calloc(n, size); }
void *__wrap_realloc(void *p, size_t n);
void *__wrap_realloc(void *p, size_t n) { return n && af_fail_now() ? NULL : __real_realloc(p, n); }

/* The n-th allocation from now fails: of any thread (on_thread false) or of
 * the calling thread only. */
static inline void af_arm(long n, bool on_thread) {
    atomic_store(&af_countdown, 0);
    atomic_store(&af_fired, 0);
    atomic_store(&af_thread, pthread_self());
    atomic_store(&af_any_thread, !on_thread);
    atomic_store(&af_countdown, n);
}

static inline void af_persist(bool on) { atomic_store(&af_persistent, on); }

static inline int af_disarm(void) {
    atomic_store(&af_countdown, 0);
    return atomic_load(&af_fired);
}

#endif
