/* Redis Cluster key slots (redis_cluster.c) against the values a real Redis
 * 7.0 server gave for CLUSTER KEYSLOT, and the MOVED / ASK parser. */
#include <string.h>

#include "harness.h"
#include "redis_cluster.h"

static unsigned slot_of(const char *k) { return psrpc__redis_keyslot(k, strlen(k)); }

TEST(keyslot_matches_redis) {
    static const struct {
        const char *key;
        unsigned slot;
    } v[] = {
        /* redis-cli -p PORT CLUSTER KEYSLOT KEY, redis-server 7.0.15 */
        {"foo", 12182},
        {"bar", 5061},
        {"hello", 866},
        {"{user1000}.following", 3443},
        {"{user1000}.followers", 3443},
        {"foo{}{bar}", 8363},    /* empty first tag: the whole key */
        {"foo{{bar}}zap", 4015}, /* tag "{bar" */
        {"foo{bar}{zap}", 5061}, /* first tag only: "bar" */
        {"{}", 15257},
        {"", 0},
        {"a", 15495},
        {"123456789", 12739}, /* also CRC16/XMODEM's check value 0x31C3 mod 16384 */
        {"psrpc{", 4184},     /* no closing brace: the whole key */
        {"}{x}", 16287},
        {"lock-0123456789abcdef", 3109},
        /* the queue lock key of the golden Redis message (section 6.1) */
        {"RqBmrW1TbdJBNER66ehF2IaPNzTcJ1o6sHkrACWswGA=", 11059},
    };
    for (size_t i = 0; i < sizeof v / sizeof *v; i++) {
        if (slot_of(v[i].key) != v[i].slot)
            fprintf(stderr, "  %s: %u, want %u\n", v[i].key, slot_of(v[i].key), v[i].slot);
        CHECK_EQ_INT(slot_of(v[i].key), v[i].slot);
    }
    /* binary keys: the length counts, not a NUL */
    CHECK_EQ_INT(psrpc__redis_keyslot("a\0b", 3) == psrpc__redis_keyslot("a", 1), 0);
}

TEST(redirect_parse) {
    int slot = -1, port = -1;
    bool ask = true;
    char host[64];
    CHECK(psrpc__cluster_parse_redirect("MOVED 3999 127.0.0.1:6381", &slot, host, sizeof host,
                                        &port, &ask));
    CHECK_EQ_INT(slot, 3999);
    CHECK_EQ_STR(host, "127.0.0.1");
    CHECK_EQ_INT(port, 6381);
    CHECK(!ask);
    CHECK(psrpc__cluster_parse_redirect("ASK 16383 [::1]:7002", &slot, host, sizeof host, &port,
                                        &ask));
    CHECK_EQ_INT(slot, 16383);
    CHECK_EQ_STR(host, "::1");
    CHECK_EQ_INT(port, 7002);
    CHECK(ask);
    /* an unknown endpoint: empty host (the node asked) */
    CHECK(psrpc__cluster_parse_redirect("MOVED 1 :7003", &slot, host, sizeof host, &port, &ask));
    CHECK_EQ_STR(host, "");
    const char *bad[] = {"MOVED",           "MOVED 16384 h:1",
                         "MOVED x h:1",     "MOVED 1 h",
                         "MOVED 1 h:",      "MOVED 1 h:0",
                         "MOVED 1 h:70000", "ASK 1 h:1x",
                         "ERR MOVED 1 h:1", "CLUSTERDOWN The cluster is down"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        CHECK(!psrpc__cluster_parse_redirect(bad[i], &slot, host, sizeof host, &port, &ask));
    /* a host longer than the buffer is refused, not cut */
    CHECK(!psrpc__cluster_parse_redirect("MOVED 1 abcdefghij:1", &slot, host, 8, &port, &ask));
}

TEST_MAIN()
