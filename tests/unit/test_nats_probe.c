/* What the NATS transport adds to nats.c's "No server available for
 * connection" (bus_nats_opts.c): the URL's servers without credentials, and
 * why each one refuses a TCP connection. Loopback only, no broker. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bus_nats.h"
#include "harness.h"

/* A listening socket on a free loopback port (*port), or -1. */
static int listener(int *port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 8) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    *port = ntohs(a.sin_port);
    return fd;
}

TEST(server_list_has_no_credentials_and_no_scheme) {
    static const struct {
        const char *url, *want;
    } v[] = {
        {"nats://127.0.0.1", "127.0.0.1:4222"},
        {"nats://u:Secr3t@127.0.0.1:1,nats://u:Secr3t@localhost:2", "127.0.0.1:1,localhost:2"},
        {"nats://t0kenSecr3t@127.0.0.1:5", "127.0.0.1:5"},
        {"tls://[::1]:4443", "[::1]:4443"},
        {"nats://a:1, b:2", "a:1,b:2"},
    };
    for (size_t i = 0; i < sizeof v / sizeof *v; i++) {
        char *got = psrpc__nats_server_list(v[i].url);
        if (!got || strcmp(got, v[i].want) != 0)
            fprintf(stderr, "  %s: \"%s\", want \"%s\"\n", v[i].url, got ? got : "(null)",
                    v[i].want);
        CHECK(got && strcmp(got, v[i].want) == 0);
        free(got);
    }
    CHECK(psrpc__nats_server_list("redis://127.0.0.1") == NULL);
    CHECK(psrpc__nats_server_list("nats://127.0.0.1:99999") == NULL);
}

TEST(probe_says_which_server_refuses_and_why) {
    int open_port = 0, lfd = listener(&open_port);
    REQUIRE(lfd >= 0);
    int closed_port = 0, cfd = listener(&closed_port);
    REQUIRE(cfd >= 0);
    close(cfd); /* nothing listens there now */
    char servers[128], why[256];
    /* a server that takes the connection: nothing to say */
    snprintf(servers, sizeof servers, "127.0.0.1:%d", open_port);
    CHECK_EQ_INT((int)psrpc__nats_probe(servers, 500, why, sizeof why), 0);
    CHECK_EQ_INT(why[0], 0);
    /* one refuses, one takes it: only the first is named */
    snprintf(servers, sizeof servers, "127.0.0.1:%d,127.0.0.1:%d", closed_port, open_port);
    size_t n = psrpc__nats_probe(servers, 500, why, sizeof why);
    fprintf(stderr, "  %s -> \"%s\"\n", servers, why);
    char want[64];
    snprintf(want, sizeof want, "127.0.0.1:%d: connection refused", closed_port);
    CHECK(n == strlen(why));
    CHECK(strcmp(why, want) == 0);
    /* a small buffer: cut, still terminated */
    char small[8];
    n = psrpc__nats_probe(servers, 500, small, sizeof small);
    CHECK(n == strlen(small) && n < sizeof small);
    close(lfd);
}

TEST_MAIN()
