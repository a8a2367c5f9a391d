/* "Fail fast from the first moment" (issue 18), shared by the Redis and NATS
 * tests: calls made right after psrpc_bus_open, while the bus's first
 * connection attempt is still under way, fail with that attempt's error as
 * soon as it fails, not at their deadline; calls that asked to wait for ready
 * keep waiting (until their deadline). Two brokers that are not there:
 *   - a refused port (the attempt fails within a millisecond or so: the calls
 *     fail at once, whichever side of the failure they were issued on);
 *   - a silent listener (TCP accepts, the broker never speaks): the attempt
 *     fails at the connect timeout, so the calls certainly waited for it.
 * Public API only; every wait bounded and scaled. */
#ifndef PSRPC_TESTS_FAILFAST_H
#define PSRPC_TESTS_FAILFAST_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "local/util.h"

/* A listening loopback socket that never accepts: connects complete in the
 * kernel's backlog, nothing is ever said. Returns the fd (port in *port). */
static inline int ff_silent_listener(int *port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t l = sizeof a;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 64) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &l) != 0) {
        close(fd);
        return -1;
    }
    *port = ntohs(a.sin_port);
    return fd;
}

/* A port nothing listens on (bound, then closed). */
static inline int ff_refused_port(void) {
    int port = 0, fd = ff_silent_listener(&port);
    if (fd >= 0)
        close(fd);
    return port;
}

static int ff_stream_msg(psrpc_stream *s, const psrpc_msg *m, void *ud) {
    (void)s;
    (void)m;
    (void)ud;
    return 0;
}
static void ff_stream_close(psrpc_stream *s, const psrpc_error *e, void *ud) {
    (void)s;
    (void)e;
    (void)ud;
}

/* Opens url (connect timeout connect_ms) and at once makes a unary call, a
 * stream open and a wait-for-ready call (deadlines 5 s, 5 s, wfr_ms). The
 * first two must fail with PSRPC_UNAVAILABLE whose message contains
 * want_reason, within connect_ms + slack of the open; the wait-for-ready
 * call must still be pending then, and end with deadline_exceeded at its
 * deadline. */
static inline void ff_check(const char *url, int64_t connect_ms, const char *want_reason,
                            long wfr_ms) {
    psrpc_bus_options o = PSRPC_BUS_OPTIONS_INIT;
    o.connect_timeout_ms = connect_ms;
    o.reconnect_wait_ms = 100;
    o.reconnect_wait_max_ms = 1000;
    long long t0 = th_now_ms();
    psrpc_bus *bus = NULL;
    REQUIRE(psrpc_bus_open(&bus, url, &o) == PSRPC_OK);
    char svc[64];
    tu_service(svc, sizeof svc);
    psrpc_client *cl = tu_client(bus, svc, 5000, 1000);
    REQUIRE(cl);
    psrpc_method m = tu_method("Echo", PSRPC_ROUTING_QUEUE, 0);
    psrpc_method sm = tu_method("Chat", PSRPC_ROUTING_QUEUE, PSRPC_METHOD_STREAM);
    tu_call *c = tu_calls_new(2);
    tu_done opened = {0};
    CHECK_EQ_INT(tu_call_async(cl, &m, "first", NULL, &c[0]), PSRPC_OK);
    psrpc_stream *st = NULL;
    CHECK_EQ_INT(psrpc_client_open_stream(&st, cl, &sm, NULL, tu_done_cb, ff_stream_msg,
                                          ff_stream_close, &opened, NULL),
                 PSRPC_OK);
    psrpc_call_options wo = PSRPC_CALL_OPTIONS_INIT;
    wo.flags = PSRPC_CALL_WAIT_FOR_READY;
    wo.timeout_ms = wfr_ms;
    CHECK_EQ_INT(tu_call_async(cl, &m, "patient", &wo, &c[1]), PSRPC_OK);
    long long issued = th_now_ms() - t0;
    long bound = (long)connect_ms + tu_ms(700);
    CHECK(tu_wait_count(&c[0].count, 1, bound));
    fprintf(stderr, "  %s: call issued %lld ms after open: %s after %lld ms: %s\n", url, issued,
            psrpc_status_name(c[0].status), c[0].at_ms - t0, c[0].message);
    CHECK_EQ_INT(c[0].status, PSRPC_UNAVAILABLE);
    CHECK(tu_contains_ci(c[0].message, want_reason));
    CHECK(c[0].at_ms - t0 <= bound);
    /* the stream open fails the same way (on_open with the error) */
    CHECK(tu_wait_count(&opened.count, 1, bound));
    CHECK_EQ_INT(opened.status, PSRPC_UNAVAILABLE);
    CHECK(tu_contains_ci(opened.message, want_reason));
    /* the wait-for-ready call is still waiting */
    CHECK_EQ_INT(atomic_load(&c[1].count), 0);
    CHECK(tu_wait_count(&c[1].count, 1, wfr_ms + tu_ms(2000)));
    CHECK_EQ_INT(c[1].status, PSRPC_DEADLINE_EXCEEDED);
    fprintf(stderr, "  wait-for-ready call (deadline %ld ms): %s after %lld ms\n", wfr_ms,
            psrpc_status_name(c[1].status), c[1].at_ms - t0);
    CHECK(c[1].at_ms - t0 >= wfr_ms - 50);
    CHECK(c[1].at_ms - t0 <= wfr_ms + issued + tu_ms(500));
    CHECK_EQ_INT(atomic_load(&c[0].count), 1);
    CHECK_EQ_INT(atomic_load(&c[0].bad) + atomic_load(&c[1].bad), 0);
    if (st)
        psrpc_stream_free(st);
    psrpc_client_free(cl);
    psrpc_bus_free(bus);
    free(c);
}

/* Test plan D5, a broker that accepts TCP and never speaks (url: the scheme
 * and the silent listener's port follow): each connection attempt fails at
 * the connect timeout (connect_ms), not later and not at once, and is
 * retried with backoff (reconnect_wait_ms 50, max 100); over 20 attempts the
 * process's descriptors and threads do not grow, and freeing the bus gives
 * the descriptors back. Prints the attempts' pace. */
static inline void ff_no_greeting(const char *scheme) {
    int port = 0, lfd = ff_silent_listener(&port);
    REQUIRE(lfd >= 0);
    char url[64];
    snprintf(url, sizeof url, "%s://127.0.0.1:%d", scheme, port);
    const int64_t connect_ms = 200, wait_max_ms = 100;
    const uint64_t want = 20;
    psrpc_bus_options o = PSRPC_BUS_OPTIONS_INIT;
    /* a first bus sets up what libuv and nats.c keep for the process (libuv's
     * signal pipe, nats.c's library threads), so those do not count */
    char refused[64];
    snprintf(refused, sizeof refused, "%s://127.0.0.1:%d", scheme, ff_refused_port());
    psrpc_bus *warm = NULL;
    REQUIRE(psrpc_bus_open(&warm, refused, &o) == PSRPC_OK);
    psrpc_bus_wait_ready(warm, 100);
    psrpc_bus_free(warm);
    int fds0 = th_count_fds();
    o.connect_timeout_ms = connect_ms;
    o.reconnect_wait_ms = 50;
    o.reconnect_wait_max_ms = wait_max_ms;
    long long t0 = th_now_ms();
    psrpc_bus *bus = NULL;
    REQUIRE(psrpc_bus_open(&bus, url, &o) == PSRPC_OK);
    /* the first failure comes at the connect timeout */
    CHECK_EQ_INT(psrpc_bus_wait_ready(bus, connect_ms / 2), PSRPC_DEADLINE_EXCEEDED);
    REQUIRE(
        WAIT_UNTIL(tu_stats(bus).reconnect_attempts >= 5, 5 * (connect_ms + wait_max_ms + 200)));
    long long t5 = th_now_ms();
    uint64_t a5 = tu_stats(bus).reconnect_attempts;
    int fds5 = th_count_fds(), threads5 = th_count_threads();
    REQUIRE(WAIT_UNTIL(tu_stats(bus).reconnect_attempts >= want,
                       (long)(want - a5 + 1) * (connect_ms + wait_max_ms + 200)));
    long long t20 = th_now_ms();
    uint64_t a20 = tu_stats(bus).reconnect_attempts;
    int fds20 = th_count_fds(), threads20 = th_count_threads();
    double per = (double)(t20 - t5) / (double)(a20 - a5);
    fprintf(stderr,
            "  %s no greeting: %llu attempts in %lld ms (%.0f ms each from the 5th; connect "
            "timeout %lld, backoff 50-%lld); fds %d -> %d, threads %d -> %d\n",
            scheme, (unsigned long long)a20, t20 - t0, per, (long long)connect_ms,
            (long long)wait_max_ms, fds5, fds20, threads5, threads20);
    /* not a spin (each attempt waited out the connect timeout) and not
     * stuck (each ended within the timeout, the backoff and 200 ms) */
    CHECK(per >= (double)connect_ms * 0.9);
    CHECK(per <= (double)(connect_ms + wait_max_ms + tu_ms(200)));
    CHECK_EQ_INT(psrpc_bus_wait_ready(bus, 0), PSRPC_DEADLINE_EXCEEDED);
    /* nothing accumulates: at most the one attempt's socket differs */
    CHECK(fds20 <= fds5 + 1);
    CHECK_EQ_INT(threads20, threads5);
    psrpc_bus_free(bus);
    int fds_end = -1;
    WAIT_UNTIL((fds_end = th_count_fds()) <= fds0, 2000);
    fprintf(stderr, "  fds: %d before the open, %d after the free\n", fds0, fds_end);
    CHECK(fds_end <= fds0);
    close(lfd);
}

#endif
