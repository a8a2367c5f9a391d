/* nats_run EXE [ARGS...] — runs one tests/local executable over NATS.
 *
 * The server is PSRPC_TEST_NATS_URL (default nats://127.0.0.1:4222), read when
 * the test runs, not when it is configured. nats_run first opens a bus there
 * and waits until it is connected (5 s, scaled by PSRPC_TEST_TIME_FACTOR): a
 * missing or refusing server fails the test at once with the reason, it never
 * skips. Then it sets PSRPC_TEST_BUS_URL and execs the test unchanged. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "psrpc.h"

/* The URL without user information, for messages. */
static void print_url(FILE *to, const char *url) {
    const char *body = strstr(url, "://");
    body = body ? body + 3 : url;
    fprintf(to, "%.*s", (int)(body - url), url);
    while (*body) {
        const char *end = strchr(body, ',');
        size_t n = end ? (size_t)(end - body) : strlen(body);
        const char *at = memchr(body, '@', n);
        if (at) {
            fprintf(to, "***@");
            n -= (size_t)(at + 1 - body);
            body = at + 1;
        }
        fprintf(to, "%.*s%s", (int)n, body, end ? "," : "");
        body += n + (end ? 1 : 0);
    }
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: nats_run EXE [ARGS...]\n");
        return 2;
    }
    const char *url = getenv("PSRPC_TEST_NATS_URL");
    if (!url || !*url)
        url = "nats://127.0.0.1:4222";
    const char *f = getenv("PSRPC_TEST_TIME_FACTOR");
    double factor = f ? atof(f) : 1.0;
    if (factor < 1.0)
        factor = 1.0;

    psrpc_bus *bus = NULL;
    int rc = psrpc_bus_open(&bus, url, NULL);
    if (rc == PSRPC_OK)
        rc = psrpc_bus_wait_ready(bus, (int64_t)(5000 * factor));
    if (rc != PSRPC_OK) {
        fprintf(stderr, "FAIL: no usable NATS server at ");
        print_url(stderr, url);
        fprintf(stderr,
                " (%s: %s); start one (scripts/brokers.sh start, or "
                "nats-server -a 127.0.0.1 -p 4222) or set PSRPC_TEST_NATS_URL\n",
                psrpc_status_name(rc), psrpc_last_error());
        psrpc_bus_free(bus);
        return 1;
    }
    psrpc_bus_free(bus);
    if (setenv("PSRPC_TEST_BUS_URL", url, 1) != 0) {
        perror("setenv");
        return 1;
    }
    execv(argv[1], argv + 1);
    perror(argv[1]);
    return 1;
}
