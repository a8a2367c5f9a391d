/* retry-compare (C half of the side-by-side retry test, issue 16): the
 * scenarios of tests/interop/go/cmd/retry-compare, with libpsrpc's retries
 * (psrpc_client_set_retries) instead of Go's middleware.WithRPCRetries. One
 * line per scenario: <scenario> attempts=<n> code=<code or ok> ms=<elapsed>.
 *
 *   retry-compare --bus URL */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "conformance_common.h"

typedef struct scenario {
    const char *name;
    const char *fail_code;
    uint32_t delay_ms;
    uint32_t max_attempts;
    int64_t timeout_ms, backoff_ms;
    int64_t caller_timeout_ms; /* call option timeout_ms, 0 = none */
    int64_t deadline_ms;       /* call option deadline_ns from now, 0 = none */
} scenario;

static const scenario scenarios[] = {
    {"unavailable-max3", "unavailable", 0, 3, 0, 0, 0, 0},
    {"not_found-max3", "not_found", 0, 3, 0, 0, 0, 0},
    {"timeouts-deadline", NULL, 2000, 0, 100, 50, 0, 550},
    {"caller-timeout-wins", NULL, 2000, 3, 50, 0, 150, 0},
    {"timeouts-max2-backoff", NULL, 2000, 2, 100, 100, 0, 0},
};

static uint32_t attempts;
static void on_outcome(const psrpc_call_info *info, const psrpc_call_outcome *o, void *ud) {
    (void)info;
    (void)ud;
    attempts = o->attempts;
}

static int64_t now_ns(int clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv) {
    conf_bus_flags bf;
    conf_bus_flags_init(&bf);
    for (int i = 1; i < argc;) {
        int used = conf_parse_bus_flag(&bf, argc, argv, i);
        if (!used) {
            fprintf(stderr, "usage: retry-compare --bus URL\n");
            return 2;
        }
        i += used;
    }
    psrpc_bus *bus;
    if (conf_open_bus(&bus, &bf, "retry-compare") != 0)
        return 1;
    psrpc_method m = conf_method(CONF_SERVICE, "Echo");
    for (size_t s = 0; s < sizeof scenarios / sizeof scenarios[0]; s++) {
        const scenario *sc = &scenarios[s];
        psrpc_client_options co = PSRPC_CLIENT_OPTIONS_INIT;
        co.timeout_ms = 3000;
        psrpc_client *cl;
        if (psrpc_client_create(&cl, bus, CONF_SERVICE, &co) != PSRPC_OK) {
            fprintf(stderr, "retry-compare: %s\n", psrpc_last_error());
            return 1;
        }
        psrpc_retry_options ro = PSRPC_RETRY_OPTIONS_INIT;
        ro.max_attempts = sc->max_attempts;
        ro.timeout_ms = sc->timeout_ms;
        ro.backoff_ms = sc->backoff_ms;
        psrpc_client_set_retries(cl, PSRPC_RETRY_UNARY, &ro);
        psrpc_client_hooks h = PSRPC_CLIENT_HOOKS_INIT;
        h.on_outcome = on_outcome;
        psrpc_client_add_hooks(cl, &h);
        Psrpc__Conformance__EchoRequest in = PSRPC__CONFORMANCE__ECHO_REQUEST__INIT;
        in.fail_code = (char *)(sc->fail_code ? sc->fail_code : "");
        in.fail_message = "scripted";
        in.delay_ms = sc->delay_ms;
        uint8_t buf[256];
        size_t len = psrpc__conformance__echo_request__pack(&in, buf);
        psrpc_call_options o = PSRPC_CALL_OPTIONS_INIT;
        o.timeout_ms = sc->caller_timeout_ms;
        if (sc->deadline_ms)
            o.deadline_ns = now_ns(CLOCK_REALTIME) + sc->deadline_ms * 1000000LL;
        psrpc_msg *out = NULL;
        psrpc_error *err = NULL;
        attempts = 0;
        int64_t t0 = now_ns(CLOCK_MONOTONIC);
        int rc = psrpc_client_call_sync_ex(&out, &err, cl, &m, buf, len, &o);
        long long ms = (long long)((now_ns(CLOCK_MONOTONIC) - t0) / 1000000);
        printf("%s attempts=%u code=%s ms=%lld\n", sc->name, attempts,
               rc == PSRPC_OK ? "ok"
               : err          ? err->code
                              : psrpc_status_code(rc),
               ms);
        fflush(stdout);
        psrpc_msg_release(out);
        psrpc_error_free(err);
        psrpc_client_free(cl);
    }
    psrpc_bus_free(bus);
    return 0;
}
