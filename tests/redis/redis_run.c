/* redis_run EXE [ARGS...] — runs one of the tests/local executables over Redis.
 *
 * The server comes from PSRPC_TEST_REDIS_URL (default redis://127.0.0.1:6379),
 * read when the test runs. The launcher first opens a bus there and waits for
 * it to connect (5 s, scaled by PSRPC_TEST_TIME_FACTOR): an unreachable server
 * fails the test at once with the reason, never skips it. Then it sets
 * PSRPC_TEST_BUS_URL and execs the test, which runs unchanged. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "psrpc.h"

static const char *shown(const char *url) {
    /* Never print credentials: show what follows the user info. */
    const char *at = strrchr(url, '@');
    return at ? at + 1 : url;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: redis_run EXE [ARGS...]\n");
        return 2;
    }
    const char *url = getenv("PSRPC_TEST_REDIS_URL");
    if (!url || !*url)
        url = "redis://127.0.0.1:6379";
    const char *f = getenv("PSRPC_TEST_TIME_FACTOR");
    double factor = f ? atof(f) : 1.0;
    if (factor < 1.0)
        factor = 1.0;

    psrpc_bus *bus = NULL;
    int rc = psrpc_bus_open(&bus, url, NULL);
    if (rc == PSRPC_OK)
        rc = psrpc_bus_wait_ready(bus, (int64_t)(5000 * factor));
    if (rc != PSRPC_OK) {
        fprintf(stderr,
                "FAIL: the Redis server at %s is not usable (%s: %s); start one, e.g. "
                "scripts/brokers.sh start, or set PSRPC_TEST_REDIS_URL\n",
                shown(url), psrpc_status_name(rc), psrpc_last_error());
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
