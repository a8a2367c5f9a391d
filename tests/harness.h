/* A tiny test runner. Each test file defines tests with TEST(name) and ends
 * with TEST_MAIN(); the runner prints "N passed, N failed" and exits non-zero
 * on any failure. A watchdog (PSRPC_TEST_WATCHDOG_S, default 120 s, scaled by
 * PSRPC_TEST_TIME_FACTOR) aborts a hung test so it fails instead of stalling. */
#ifndef PSRPC_TEST_HARNESS_H
#define PSRPC_TEST_HARNESS_H

#include <dirent.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef void (*th_test_fn)(void);
typedef struct {
    const char *name;
    th_test_fn fn;
} th_test;

#define TH_MAX_TESTS 512
static th_test th_tests[TH_MAX_TESTS];
static int th_ntests;
static int th_failed_current;
static const char *th_current;

#define TEST(name)                                                      \
    static void test_##name(void);                                      \
    __attribute__((constructor)) static void th_register_##name(void) { \
        if (th_ntests < TH_MAX_TESTS)                                   \
            th_tests[th_ntests++] = (th_test){#name, test_##name};      \
    }                                                                   \
    static void test_##name(void)

#define CHECK(cond)                                                                            \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            fprintf(stderr, "  %s:%d: %s: CHECK(%s) failed\n", __FILE__, __LINE__, th_current, \
                    #cond);                                                                    \
            th_failed_current = 1;                                                             \
        }                                                                                      \
    } while (0)

#define REQUIRE(cond)                                                                            \
    do {                                                                                         \
        if (!(cond)) {                                                                           \
            fprintf(stderr, "  %s:%d: %s: REQUIRE(%s) failed\n", __FILE__, __LINE__, th_current, \
                    #cond);                                                                      \
            th_failed_current = 1;                                                               \
            return;                                                                              \
        }                                                                                        \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                                       \
    do {                                                                                         \
        long long th_a = (long long)(a), th_b = (long long)(b);                                  \
        if (th_a != th_b) {                                                                      \
            fprintf(stderr, "  %s:%d: %s: %s == %s failed (%lld vs %lld)\n", __FILE__, __LINE__, \
                    th_current, #a, #b, th_a, th_b);                                             \
            th_failed_current = 1;                                                               \
        }                                                                                        \
    } while (0)

#define CHECK_EQ_STR(a, b)                                                                         \
    do {                                                                                           \
        const char *th_a = (a), *th_b = (b);                                                       \
        if (!th_a || !th_b || strcmp(th_a, th_b) != 0) {                                           \
            fprintf(stderr, "  %s:%d: %s: %s == %s failed (\"%s\" vs \"%s\")\n", __FILE__,         \
                    __LINE__, th_current, #a, #b, th_a ? th_a : "(null)", th_b ? th_b : "(null)"); \
            th_failed_current = 1;                                                                 \
        }                                                                                          \
    } while (0)

/* Multiplier for liveness bounds: sanitizer and valgrind runs set it. */
static inline double th_time_factor(void) {
    const char *f = getenv("PSRPC_TEST_TIME_FACTOR");
    double v = f ? atof(f) : 1.0;
    return v > 0 ? v : 1.0;
}

static inline long long th_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline void th_sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

/* Polls cond every millisecond for up to ms (scaled); true if it became true. */
#define WAIT_UNTIL(cond, ms)                                                      \
    ({                                                                            \
        long long th_deadline = th_now_ms() + (long long)((ms)*th_time_factor()); \
        while (!(cond) && th_now_ms() < th_deadline)                              \
            th_sleep_ms(1);                                                       \
        (cond);                                                                   \
    })

static void th_watchdog(int sig) {
    (void)sig;
    static const char msg[] = "watchdog: test hung, aborting: ";
    const char *name = th_current ? th_current : "?";
    ssize_t w = write(2, msg, sizeof msg - 1);
    w = write(2, name, strlen(name));
    w = write(2, "\n", 1);
    (void)w;
    abort();
}

static inline int th_run(int argc, char **argv) {
    int passed = 0, failed = 0;
    const char *wd = getenv("PSRPC_TEST_WATCHDOG_S");
    unsigned secs = (unsigned)((wd ? atoi(wd) : 120) * th_time_factor());
    signal(SIGALRM, th_watchdog);
    /* Arguments filter: a test runs if its name contains any of them. A
     * filter that matches no test fails (a renamed test is not silently
     * skipped). */
    for (int i = 0; i < th_ntests; i++) {
        int match = argc <= 1;
        for (int a = 1; a < argc && !match; a++)
            match = strstr(th_tests[i].name, argv[a]) != NULL;
        if (!match)
            continue;
        th_current = th_tests[i].name;
        th_failed_current = 0;
        alarm(secs);
        long long t0 = th_now_ms();
        th_tests[i].fn();
        alarm(0);
        fprintf(stderr, "%s %s (%lld ms)\n", th_failed_current ? "FAIL" : "ok  ", th_tests[i].name,
                th_now_ms() - t0);
        if (th_failed_current)
            failed++;
        else
            passed++;
    }
    printf("%d passed, %d failed\n", passed, failed);
    if (passed + failed == 0) {
        fprintf(stderr, "no test matches the arguments\n");
        return 1;
    }
    return failed ? 1 : 0;
}

#define TEST_MAIN() \
    int main(int argc, char **argv) { return th_run(argc, argv); }

/* This process's descriptors and threads (/proc/self/fd, /proc/self/task).
 * Both directories are opened once, before any bus exists, and re-read:
 * opening one while loop threads close their epoll descriptors would reuse
 * their numbers, which ThreadSanitizer reports as a race on the descriptor.
 * The descriptor count leaves out these two; they are closed at exit. */
static DIR *th_fd_dir, *th_task_dir;

__attribute__((constructor)) static void th_open_proc_dirs(void) {
    th_fd_dir = opendir("/proc/self/fd");
    th_task_dir = opendir("/proc/self/task");
}

__attribute__((destructor)) static void th_close_proc_dirs(void) {
    if (th_fd_dir)
        closedir(th_fd_dir);
    if (th_task_dir)
        closedir(th_task_dir);
    th_fd_dir = th_task_dir = NULL;
}

static inline int th_count_entries(DIR *d) {
    if (!d)
        return -1;
    rewinddir(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        n += e->d_name[0] != '.';
    return n;
}

static inline int th_count_fds(void) {
    int n = th_count_entries(th_fd_dir);
    return n < 0 ? n : n - 1 - (th_task_dir != NULL);
}

static inline int th_count_threads(void) { return th_count_entries(th_task_dir); }

#endif
